/**
 * The runtime in force, changed only by build-then-commit (Pingora's habit): `build` makes the
 * next runtime beside the running one and touches nothing of it, so a failed build needs no
 * undo; `commit` puts the built one in charge and swaps one reference.
 */
import type { FulcrumConfig } from '../config/schema.ts';
import type { Logger } from '../observe/logger.ts';
import type { ConnectionPools } from '../transport/connection-pools.ts';
import type { Pool } from '../upstream/pool.ts';
import { buildRuntime, type Runtime } from './runtime.ts';

/** Told of every commit after the swap, with the runtime it replaced; must not throw. */
export type CommitListener = (next: Runtime, previous: Runtime) => void;

/** The runtime of one balancer, from its first configuration to shutdown. */
export class RuntimeStore {
  private runtime: Runtime;
  private readonly connections: ConnectionPools;
  private readonly logger: Logger;
  private readonly listeners: CommitListener[] = [];
  private started = false;

  /** Builds and commits the runtime of `config` (throws as `build` does); its pools start with `start()`. */
  constructor(config: FulcrumConfig, connections: ConnectionPools, logger: Logger) {
    this.connections = connections;
    this.logger = logger;
    this.runtime = buildRuntime(config, null, connections, logger);
    this.install(this.runtime, new Set());
  }

  /** The runtime in force. */
  get current(): Runtime {
    return this.runtime;
  }

  /**
   * The runtime of `config` next to the current one, which it does not change: kept pools,
   * guards and stores are shared, running upstreams are only gathered. Commit it before anything
   * else is built. Throws what the build throws (`pool a: upstream 10.0.0.1:80 is listed twice`).
   */
  build(config: FulcrumConfig): Runtime {
    return buildRuntime(config, this.runtime, this.connections, this.logger);
  }

  /**
   * Puts `next` (the last `build`) in force; never throws. In order: new pools adopt their
   * upstreams and every pool links its backup, the reference is swapped, the connection pools
   * keep what the committed pools use, listeners are told, new pools start (once the store
   * started), replaced pools stop their health work and replaced stores close.
   */
  commit(next: Runtime): void {
    const previous = this.runtime;
    const added = this.install(next, new Set(previous.pools.values()));
    this.runtime = next;
    this.connections.retain(next.pools.values());
    for (const listener of this.listeners) listener(next, previous);
    if (this.started) for (const pool of added) pool.start();
    // Replaced pools only stop health work: requests they carry finish on the connections the balancer keeps.
    const kept = new Set(next.pools.values());
    for (const pool of previous.pools.values()) if (!kept.has(pool)) void pool.close();
    if (next.stores !== previous.stores) void previous.stores.close();
  }

  /** Calls `listener` after every later commit. */
  onCommit(listener: CommitListener): void {
    this.listeners.push(listener);
  }

  /** Starts the current pools' health work; pools committed from now on start as they come. */
  start(): void {
    this.started = true;
    for (const pool of this.runtime.pools.values()) pool.start();
  }

  /** Shutdown: stops every pool's health work and closes the rate-limit stores. */
  async close(): Promise<void> {
    await Promise.all([...this.runtime.pools.values()].map((p) => p.close()));
    await this.runtime.stores.close();
  }

  /** Has the pools of `runtime` not in `running` adopt their upstreams and links every backup; returns those pools. */
  private install(runtime: Runtime, running: ReadonlySet<Pool>): Pool[] {
    const added = [...runtime.pools.values()].filter((p) => !running.has(p));
    for (const pool of added) pool.adopt();
    for (const pool of runtime.pools.values()) pool.backup = pool.settings.backup ? (runtime.pools.get(pool.settings.backup) ?? null) : null;
    return added;
  }
}
