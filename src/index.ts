/**
 * The public API: `createBalancer(config)` -> `{ start, reload, close }`. The CLI is a thin
 * layer over this; tests and embedders use it directly.
 */
import './require-node.ts';
import { configReload, poolPanic, requestRetry, upstreamState, type PoolPanicEvent, type RequestRetryEvent, type UpstreamStateEvent } from './core/events.ts';
import { formatPath, validateConfig, type LoadedConfig } from './config/load.ts';
import { ConfigError } from './errors.ts';
import type { FulcrumConfig, FulcrumConfigInput } from './config/schema.ts';
import { HttpListener, type ListenerAddress } from './listeners/http-listener.ts';
import { startAccessLog } from './observe/access-log.ts';
import { createLogger, type Logger } from './observe/logger.ts';
import { HttpProxy } from './proxy/http-proxy.ts';
import { Router } from './router/router.ts';
import { Pool } from './upstream/pool.ts';
import type { RouteSettings } from './config/schema.ts';
import type { Closable, RequestGuard } from './core/pipeline.ts';
import { Firewall, firewallGuard } from './middleware/firewall.ts';
import { createRateLimitGuard, createRateLimitStores, type RateLimitStores } from './middleware/rate-limit.ts';
import { upstreamIdOf, type Upstream } from './upstream/upstream.ts';
import { UpstreamConfig, type UpstreamSettings } from './config/schema.ts';
import { loadConfigFile } from './config/load.ts';
import { diffConfigs, formatChanges, pairListeners, restartNotes } from './config/diff.ts';
import { watchConfigFile } from './config/watch.ts';
import { Metrics } from './observe/metrics.ts';
import { LiveStats } from './observe/live-stats.ts';
import { RuntimeChanges, type RuntimeOp } from './admin/runtime-changes.ts';
import { persistUpstreams } from './admin/persist.ts';
import { AdminServer } from './admin/server.ts';
import { buildStatus, backendStatus } from './admin/status.ts';
import type { BackendStatus, StatusResponse } from './admin/types.ts';
import { AdminRequestError } from './admin/errors.ts';
import { version } from './version.ts';

export { loadConfigFile, loadConfigText, validateConfig } from './config/load.ts';
export type { FulcrumConfig, FulcrumConfigInput } from './config/schema.ts';
export { ConfigError, FulcrumError, ErrorCode } from './errors.ts';
export type { ListenerAddress } from './listeners/http-listener.ts';
export { AdminClient, AdminError, type AdminClientOptions } from './admin/client.ts';
export type * from './admin/types.ts';
export { diffConfigs, formatChanges } from './config/diff.ts';

/** Options beyond the configuration. */
export interface BalancerOptions {
  /** A logger to use instead of one built from `config.log`. */
  logger?: Logger;
  /** The file the configuration came from: reloads (SIGHUP, watch, admin API) read it again. */
  configFile?: string;
  /** Reload when the file changes, whatever `reload.watch` says. */
  watch?: boolean;
}

/** What a reload did: one line per changed area ("pool api: +1 upstream 10.0.0.4:80"). */
export interface ReloadResult {
  changes: string[];
  /** What the new configuration asks that only a restart applies (a moved listener, the admin address, log.format). */
  warnings?: string[];
  /** Runtime changes from the admin API that no longer apply to the new file (their pool is gone, ...). */
  dropped?: string[];
  /** For backend writes: true when the upstream now differs from the file (a restart would lose it). */
  runtime_only?: boolean;
}

/** Where a reload came from (a label of lb_config_reloads_total and the log line). */
export type ReloadSource = 'file' | 'signal' | 'watch' | 'admin' | 'api';

/** A backend write through the admin API: the upstream by URL (or host:port), in `pool` if several have it. */
export interface BackendTarget {
  url: string;
  pool?: string;
}

/** A running (or ready to run) Fulcrum. */
export interface Balancer {
  /** Binds every listener (and the admin listener); resolves with the public listeners' addresses. */
  start(): Promise<ListenerAddress[]>;
  /** Validates a new configuration and swaps routes and pools; upstream state carries over. */
  reload(config: FulcrumConfig | FulcrumConfigInput | LoadedConfig, source?: ReloadSource): Promise<ReloadResult>;
  /** Reads the configuration file again and reloads it (throws without a file). */
  reloadFile(source?: ReloadSource): Promise<ReloadResult>;
  /** Graceful shutdown: stop accepting, finish in-flight requests within the grace period. */
  close(graceMs?: number): Promise<void>;
  /** The bound listener addresses. */
  addresses(): ListenerAddress[];
  /** The admin listener's address, or null when there is none. */
  adminAddress(): ListenerAddress | null;
  /** The pools by name (read their upstreams' state). */
  pools(): ReadonlyMap<string, Pool>;
  /** The configuration in force: the file's, with the admin API's runtime changes applied. */
  config(): FulcrumConfig;
  /** The file the configuration came from, or null. */
  readonly configFile: string | null;
  /** `config` as a reload would run it: with the admin API's runtime changes on top (nothing is applied). */
  withRuntimeChanges(config: FulcrumConfig): FulcrumConfig;
  /** What applying `config` would leave waiting for a restart. */
  restartNotesFor(config: FulcrumConfig): string[];
  /** `/status`: every upstream, pool and listener, and the runtime-only changes. */
  status(): StatusResponse;
  /** Adds an upstream to a pool (through the same validate-then-swap path as a reload). */
  addBackend(target: BackendTarget & { weight?: number; max_connections?: number }, source?: ReloadSource): Promise<ReloadResult & { backend: BackendStatus }>;
  /** Removes an upstream; its requests in flight finish first. */
  removeBackend(target: BackendTarget, source?: ReloadSource): Promise<ReloadResult>;
  /** Changes an upstream's weight, or its enabled and draining state. */
  updateBackend(target: BackendTarget & { weight?: number; enabled?: boolean; draining?: boolean }, source?: ReloadSource): Promise<ReloadResult & { backend: BackendStatus }>;
  readonly metrics: Metrics;
  readonly logger: Logger;
}

function toConfig(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig): FulcrumConfig {
  if (input && typeof input === 'object' && 'config' in input && 'source' in input) return (input as LoadedConfig).config;
  return validateConfig(input).config;
}

/**
 * A bind that failed, as a ConfigError naming the key and where it was written:
 * `fulcrum.yaml:3:11: listeners[0].port: 0.0.0.0:8080 is already in use ...`. Other errors pass as they are.
 */
function listenError(err: NodeJS.ErrnoException, at: { path: (string | number)[]; host: string; port: number }, placeOf: LoadedConfig['placeOf']): Error {
  const address = `${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`;
  const problems: Record<string, [string, string]> = {
    EADDRINUSE: ['port', `${address} is already in use (by another program, or another Fulcrum): stop it, or choose another port`],
    EACCES: ['port', `no permission to bind ${address} (ports below 1024 need root or CAP_NET_BIND_SERVICE): choose a port from 1024 up`],
    EADDRNOTAVAIL: ['host', `${at.host} is not an address of this machine: use one it has, 0.0.0.0 for all, or 127.0.0.1`],
  };
  const problem = err.code === undefined ? undefined : problems[err.code];
  if (problem === undefined) return err;
  const path = [...at.path, problem[0]];
  const place = placeOf?.(path) ?? { file: '<inline>', line: 0, column: 0, path: formatPath(path), message: '' };
  const unset = place.line === 0 && place.message === '(default)' ? ` (${formatPath(path)} is not set: this is its default)` : '';
  return Object.assign(new ConfigError([{ ...place, message: `${problem[1]}${unset}` }]), { cause: err });
}

/**
 * The pools of a new configuration. A pool whose settings did not change is kept as it is (its
 * sockets, timers and state); a changed one is rebuilt around the same Upstream objects, so
 * upstream state of unchanged addresses carries over.
 */
function buildPools(config: FulcrumConfig, previous: ReadonlyMap<string, Pool> | null): Map<string, Pool> {
  const pools = new Map<string, Pool>();
  // Upstreams of pools that are gone (a renamed pool, most often) go to new pools that list the same address.
  const orphans = new Map<string, Upstream>();
  if (previous) for (const [name, p] of previous) if (!Object.hasOwn(config.pools, name)) for (const u of p.upstreams) if (!orphans.has(u.id)) orphans.set(u.id, u);
  for (const [name, settings] of Object.entries(config.pools)) {
    const old = previous?.get(name);
    if (old && JSON.stringify(old.settings) === JSON.stringify(settings)) pools.set(name, old);
    else if (old) pools.set(name, new Pool(name, settings, new Map(old.upstreams.map((u) => [u.id, u]))));
    else {
      const lent = new Map<string, Upstream>();
      for (const u of settings.upstreams) {
        const id = upstreamIdOf(u.url);
        const orphan = orphans.get(id);
        if (orphan !== undefined) {
          lent.set(id, orphan);
          orphans.delete(id);
        }
      }
      pools.set(name, new Pool(name, settings, lent));
    }
  }
  for (const pool of pools.values()) pool.backup = pool.settings.backup ? (pools.get(pool.settings.backup) ?? null) : null;
  return pools;
}
/** The guards of one route: its firewall, then its rate limits. */
function routeGuards(route: RouteSettings, name: string, stores: RateLimitStores): RequestGuard[] {
  const guards: RequestGuard[] = [];
  if (route.firewall) guards.push(firewallGuard(new Firewall(route.firewall), 'route'));
  for (const limit of route.rate_limits) guards.push(createRateLimitGuard(limit, name, stores));
  return guards;
}

/** Routes, pools and rate-limit stores of one configuration: built together, swapped together. */
interface Runtime {
  router: Router;
  pools: Map<string, Pool>;
  stores: RateLimitStores & Closable;
  /** Route guards by route name, while routes and rate_limit stay as they are. */
  guards: Map<string, RequestGuard[]>;
  /** routes and rate_limit as JSON: equal means the guards (and their buckets) can be kept. */
  guardKey: string;
}

/**
 * Routes, pools and stores for `config`. When routes and rate_limit did not change (a backend
 * added through the API, a timeout changed), the rate-limit stores and route guards are kept,
 * so token buckets do not start over.
 */
function buildRuntime(config: FulcrumConfig, previous: Runtime | null, logger: Logger): Runtime {
  const pools = buildPools(config, previous?.pools ?? null);
  const guardKey = JSON.stringify([config.routes, config.rate_limit]);
  const keep = previous !== null && previous.guardKey === guardKey;
  const stores = keep ? previous.stores : createRateLimitStores(config.rate_limit, logger);
  const guards = new Map<string, RequestGuard[]>();
  const router = new Router(config.routes, pools, (route, name) => {
    const g = (keep ? previous.guards.get(name) : undefined) ?? routeGuards(route, name, stores);
    guards.set(name, g);
    return g;
  });
  return { router, pools, stores, guards, guardKey };
}

/** Builds a balancer from a configuration (validated here if it is not already). */
export function createBalancer(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig, options: BalancerOptions = {}): Balancer {
  /** The configuration as the file (or caller) gave it; `config` adds the runtime changes. */
  let base = toConfig(input);
  /** Where the file set a key, for a listen error that names it (`fulcrum.yaml:3:11: listeners[0].port`). */
  const placeOf = input && typeof input === 'object' && 'placeOf' in input ? (input as LoadedConfig).placeOf : undefined;
  const runtimeChanges = new RuntimeChanges();
  let config = base;
  /** The configuration the process started with: what listeners, the admin listener and the log stream really use. */
  const startConfig = base;
  const configFile = options.configFile ?? null;
  const logger = options.logger ?? createLogger(config.log);
  let runtime = buildRuntime(config, null, logger);
  let pools = runtime.pools;
  let loadedAt = new Date();
  const startedAt = Date.now();
  const proxy = new HttpProxy({ router: runtime.router });
  const listeners = config.listeners.map((l) => new HttpListener(l, proxy, logger));
  const metrics = new Metrics({
    pools: () => pools,
    stores: () => runtime.stores,
    listeners: () => listeners.map((l) => ({ name: l.info.name, open: l.openConnections, refused: l.refusedConnections, malformed: l.malformed })),
    routes: () => runtime.router.routes.map((r) => r.name),
  });
  for (const l of listeners) l.serveMetrics(metrics);
  let live: LiveStats | null = null;
  let admin: AdminServer | null = null;
  let stopWatch: (() => void) | null = null;
  let stopAccessLog: (() => void) | null = null;
  let started = false;
  let closing: Promise<void> | null = null;
  /** Reloads and API writes apply one at a time, in order. */
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(work: () => Promise<T> | T): Promise<T> => {
    const guarded = (): Promise<T> | T => {
      // After close() nothing may start pools (and their health checks) again.
      if (closing !== null) throw new AdminRequestError(503, 'the balancer is shutting down');
      return work();
    };
    const next = queue.then(guarded, guarded);
    queue = next.catch(() => {});
    return next;
  };

  const onState = (message: unknown): void => {
    const c = message as UpstreamStateEvent;
    // Losing an upstream is a warning an operator should see; getting it back is news.
    const worse = (c.field === 'health' && c.to === 'unhealthy') || (c.field === 'ejected' && c.to === true) || (c.field === 'circuit' && c.to === 'open');
    logger[worse ? 'warn' : 'info'](
      { pool: c.pool, upstream: c.upstream.id, field: c.field, from: c.from, to: c.to, reason: c.reason },
      `upstream ${c.upstream.id} in pool ${c.pool}: ${c.field} ${c.from} -> ${c.to} (${c.reason})`,
    );
  };

  const onPanic = (message: unknown): void => {
    const p = message as PoolPanicEvent;
    if (pools.get(p.pool)?.upstreams !== p.upstreams) return;
    const fields = { pool: p.pool, panic: p.panic, available: p.available, allowed: p.allowed, threshold: p.threshold };
    if (p.panic) {
      logger.warn(fields, `pool ${p.pool} in panic mode: ${p.available} of ${p.allowed} upstreams available (under panic_threshold_percent ${p.threshold}), so requests go to all ${p.allowed}, healthy or not`);
    } else logger.info(fields, `pool ${p.pool} out of panic mode: ${p.available} of ${p.allowed} upstreams available`);
  };

  const onRetry = (message: unknown): void => {
    const { ctx, upstream, reason } = message as RequestRetryEvent;
    logger.info({ request_id: ctx.requestIdForUpstream ?? ctx.id, upstream: upstream.id, attempt: ctx.attempts, reason }, `retrying ${ctx.req.method} ${ctx.upstreamPath} after ${upstream.id} failed (${reason})`);
  };

  /** What waits for a restart: `next` against what is really bound (listeners, admin, log stream). */
  const bound = () => ({
    listeners: listeners.map((l) => l.address() ?? { host: l.settings.host, port: l.settings.port }),
    admin: admin?.address() ?? null,
  });
  const pendingRestart = (next: FulcrumConfig): string[] => restartNotes(startConfig, next, bound());

  /** Builds and swaps in `next` (already validated); returns the semantic diff. Throws and keeps the running one on failure. */
  const swap = (next: FulcrumConfig): string[] => {
    let built: Runtime;
    try {
      built = buildRuntime(next, runtime, logger);
    } catch (err) {
      // A pool built half-way may have re-pointed shared upstreams, and kept pools their backup.
      for (const pool of pools.values()) {
        pool.reclaim();
        pool.backup = pool.settings.backup ? (pools.get(pool.settings.backup) ?? null) : null;
      }
      throw err;
    }
    const old = runtime;
    const changes = formatChanges(diffConfigs(config, next));
    // Only new pools start: a kept pool's checks and passive health are already running.
    const running = new Set(old.pools.values());
    for (const pool of built.pools.values()) if (!running.has(pool)) pool.start();
    proxy.runtime = { router: built.router };
    runtime = built;
    pools = built.pools;
    config = next;
    loadedAt = new Date();
    // Replaced pools finish the requests they carry, then close their sockets; kept pools go on.
    const kept = new Set(built.pools.values());
    void Promise.all([...old.pools.values()].filter((p) => !kept.has(p)).map((p) => p.close()));
    if (built.stores !== old.stores) void old.stores.close();
    // Listeners keep their sockets and take new firewall, limits and timeouts: each running listener
    // the entry paired with it (one to one); a new or moved address waits for a restart.
    const pairs = pairListeners(startConfig.listeners, next.listeners, bound().listeners);
    pairs.forEach((j, i) => {
      if (j >= 0) listeners[j].update(next.listeners[i]);
    });
    if (admin !== null && next.admin !== undefined) admin.update(next.admin);
    // Log level and the access log switch at once; the format (a different stream) needs a restart.
    // An embedder's own logger is theirs to configure.
    if (options.logger === undefined && logger.level !== next.log.level) logger.level = next.log.level;
    if (next.log.access_log && stopAccessLog === null && started) stopAccessLog = startAccessLog(logger);
    if (!next.log.access_log && stopAccessLog !== null) {
      stopAccessLog();
      stopAccessLog = null;
    }
    return changes;
  };

  /** A configuration that could not be applied: said in the log and counted; the running one stays. */
  const refused = (source: ReloadSource, err: Error): void => {
    if (configReload.hasSubscribers) configReload.publish({ ok: false, source, error: err });
    logger.error({ source, err: err.message }, `reload refused (${source}); the running configuration stays:\n${err.message}`);
  };

  /** A new base configuration (the file's): runtime changes go on top, then swap. */
  const applyBase = (nextBase: FulcrumConfig, source: ReloadSource): ReloadResult => {
    const opsBefore = runtimeChanges.snapshot();
    try {
      const { config: next, dropped } = runtimeChanges.apply(nextBase);
      for (const d of dropped) logger.info({ source }, `runtime change dropped: ${d}`);
      const changes = swap(next);
      const warnings = pendingRestart(next);
      for (const w of warnings) logger.warn({ source }, `restart needed: ${w}`);
      base = nextBase;
      if (configReload.hasSubscribers) configReload.publish({ ok: true, source });
      logger.info({ source, changes }, `configuration reloaded (${source}): ${changes.length > 0 ? changes.join('; ') : 'no changes'}`);
      const kept = runtimeChanges.list(pools);
      if (kept.length > 0) logger.info({ runtime_changes: kept.length }, `${kept.length} runtime change(s) from the admin API stay on top of the file (GET /status lists them)`);
      return { changes, ...(warnings.length > 0 ? { warnings } : {}), ...(dropped.length > 0 ? { dropped } : {}) };
    } catch (err) {
      // Refused: the runtime changes stay as they were (apply() dropped the ones the new file satisfied).
      runtimeChanges.restore(opsBefore);
      refused(source, err as Error);
      throw err;
    }
  };

  const reloadFile = (source: ReloadSource): Promise<ReloadResult> =>
    serial(() => {
      if (configFile === null) throw new AdminRequestError(409, 'this balancer was started without a configuration file (demo or embedded): there is nothing to reload from');
      let loaded: LoadedConfig;
      try {
        loaded = loadConfigFile(configFile);
      } catch (err) {
        refused(source, err as Error);
        throw err;
      }
      for (const w of loaded.warnings) logger.warn(`${configFile}: ${w}`);
      return applyBase(loaded.config, source);
    });

  /** Finds the pool and upstream an admin write means; throws a 4xx that says what is wrong. */
  const locate = (target: BackendTarget, mustExist: boolean): { pool: string; id: string } => {
    if (typeof target.url !== 'string' || target.url === '') throw new AdminRequestError(400, 'missing "url": the upstream, e.g. {"url": "http://10.0.0.4:8080"}');
    let id: string;
    try {
      id = /^[a-z][a-z0-9+.-]*:\/\//i.test(target.url) ? upstreamIdOf(target.url) : upstreamIdOf(`http://${target.url}`);
    } catch {
      throw new AdminRequestError(400, `"url" is not a URL: ${JSON.stringify(target.url)} (expected e.g. "http://10.0.0.4:8080")`);
    }
    const names = Object.keys(config.pools);
    if (target.pool !== undefined) {
      if (typeof target.pool !== 'string' || !Object.hasOwn(config.pools, target.pool)) throw new AdminRequestError(404, `no pool named ${JSON.stringify(target.pool)}; pools: ${names.join(', ')}`);
      if (mustExist && !config.pools[target.pool].upstreams.some((u) => upstreamIdOf(u.url) === id)) throw new AdminRequestError(404, `no upstream ${id} in pool ${target.pool}`);
      return { pool: target.pool, id };
    }
    const holding = names.filter((n) => config.pools[n].upstreams.some((u) => upstreamIdOf(u.url) === id));
    if (mustExist) {
      if (holding.length === 0) throw new AdminRequestError(404, `no upstream ${id} in any pool (${names.join(', ')})`);
      if (holding.length > 1) throw new AdminRequestError(400, `${id} is in pools ${holding.join(' and ')}: say which with "pool"`);
      return { pool: holding[0], id };
    }
    if (names.length > 1) throw new AdminRequestError(400, `there are ${names.length} pools (${names.join(', ')}): say which with "pool"`);
    return { pool: names[0], id };
  };

  /** Applies one configuration operation; undone if the swap fails. */
  const applyOp = (op: RuntimeOp, source: ReloadSource): ReloadResult => {
    const before = runtimeChanges.snapshot();
    runtimeChanges.record(op);
    let result: ReloadResult;
    try {
      const { config: next } = runtimeChanges.apply(base);
      result = { changes: swap(next) };
    } catch (err) {
      runtimeChanges.restore(before);
      throw err;
    }
    if (configReload.hasSubscribers) configReload.publish({ ok: true, source });
    if (config.admin?.persist && configFile !== null) {
      // Every pool with runtime changes is written, not only this one: then none is left behind.
      // Pool by pool, so one that cannot be written (an anchor shared with another pool, a file
      // edited since it was loaded) does not hold the others back.
      const touched = [...new Set(runtimeChanges.snapshot().map((o) => o.pool))].filter((p) => Object.hasOwn(config.pools, p));
      for (const pool of touched) {
        try {
          persistUpstreams(configFile, config, [pool], base);
          base = structuredClone(base);
          base.pools[pool] = structuredClone(config.pools[pool]);
          runtimeChanges.clearOps(pool);
          logger.info({ file: configFile, pool }, `wrote the upstreams of pool ${pool} to ${configFile}`);
        } catch (err) {
          logger.error({ file: configFile, pool, err: (err as Error).message }, `could not write pool ${pool} to ${configFile} (${(err as Error).message}); the change is runtime-only (GET /status lists it)`);
        }
      }
    }
    logger.info({ source, changes: result.changes }, `admin API: ${result.changes.join('; ') || 'no changes'}`);
    return result;
  };

  const upstreamOf = (pool: string, id: string): Upstream => pools.get(pool)!.upstreams.find((u) => u.id === id)!;
  const describe = (pool: string, id: string): BackendStatus => backendStatus(pools.get(pool)!, upstreamOf(pool, id), runtimeChanges);

  const balancer: Balancer = {
    logger,
    metrics,
    configFile,
    async start() {
      started = true;
      if (config.log.access_log) stopAccessLog = startAccessLog(logger);
      upstreamState.subscribe(onState);
      poolPanic.subscribe(onPanic);
      requestRetry.subscribe(onRetry);
      const bound: ListenerAddress[] = [];
      let binding: { path: (string | number)[]; host: string; port: number } | null = null;
      try {
        for (const [i, l] of listeners.entries()) {
          binding = { path: ['listeners', i], host: l.settings.host, port: l.settings.port };
          bound.push(await l.listen());
        }
        if (config.admin !== undefined) {
          binding = { path: ['admin'], host: config.admin.host, port: config.admin.port };
          live = new LiveStats(() => pools);
          admin = new AdminServer(config.admin, { balancer, live, logger });
          await admin.listen();
        }
      } catch (err) {
        await Promise.all(listeners.map((l) => l.drain(0)));
        await admin?.close();
        throw binding ? listenError(err as NodeJS.ErrnoException, binding, placeOf) : err;
      }
      live?.start();
      for (const pool of pools.values()) pool.start();
      for (const a of bound) logger.info({ listener: a.name, url: a.url }, `listening on ${a.url}`);
      for (const pool of pools.values()) {
        logger.info({ pool: pool.name, policy: pool.policyFactory.name, upstreams: pool.upstreams.map((u) => u.id) }, `pool ${pool.name}: ${pool.upstreams.length} upstream${pool.upstreams.length === 1 ? "" : "s"}, ${pool.policyFactory.name}`);
      }
      if (configFile !== null && (options.watch || config.reload.watch)) {
        stopWatch = watchConfigFile(configFile, config.reload.debounce, () => void reloadFile('watch').catch(() => {}), logger);
        logger.info({ file: configFile }, `watching ${configFile}: saving it reloads the configuration`);
      }
      return bound;
    },
    reload(next, source = 'api') {
      return serial(() => {
        let nextBase: FulcrumConfig;
        try {
          nextBase = toConfig(next);
        } catch (err) {
          refused(source, err as Error);
          throw err;
        }
        return applyBase(nextBase, source);
      });
    },
    reloadFile(source = 'file') {
      return reloadFile(source);
    },
    addBackend(target, source = 'admin') {
      return serial(() => {
        const { pool, id } = locate(target, false);
        // A bare host:port means http://host:port, as it does for the other backend writes.
        const url = /^[a-z][a-z0-9+.-]*:\/\//i.test(target.url) ? target.url : `http://${target.url}`;
        const parsed = UpstreamConfig.safeParse({ url, weight: target.weight ?? 1, max_connections: target.max_connections ?? 0 });
        if (!parsed.success) throw new AdminRequestError(400, parsed.error.issues.map((i) => `${i.path.join('.') || 'url'}: ${i.message}`).join('; '));
        if (config.pools[pool].upstreams.some((u) => upstreamIdOf(u.url) === id)) throw new AdminRequestError(409, `${id} is already in pool ${pool}`);
        const upstream: UpstreamSettings = parsed.data;
        const result = applyOp({ action: 'add', pool, id, upstream, at: new Date().toISOString() }, source);
        return { ...result, backend: describe(pool, id), runtime_only: runtimeChanges.touches(pool, id, upstreamOf(pool, id)) };
      });
    },
    removeBackend(target, source = 'admin') {
      return serial(() => {
        const { pool, id } = locate(target, true);
        if (config.pools[pool].upstreams.length === 1) throw new AdminRequestError(409, `${id} is the only upstream of pool ${pool}; a pool needs at least one (add another first)`);
        const result = applyOp({ action: 'remove', pool, id, at: new Date().toISOString() }, source);
        return { ...result, runtime_only: runtimeChanges.touches(pool, id) };
      });
    },
    updateBackend(target, source = 'admin') {
      return serial(() => {
        const { pool, id } = locate(target, true);
        const { weight, enabled, draining } = target;
        if (weight === undefined && enabled === undefined && draining === undefined) throw new AdminRequestError(400, 'nothing to change: give "weight", "enabled" or "draining"');
        if (weight !== undefined && (typeof weight !== 'number' || !(weight > 0) || weight > 1_000_000)) throw new AdminRequestError(400, `"weight" must be a number above 0 and at most 1000000, got ${typeof weight === 'number' ? String(weight) : JSON.stringify(weight)}`);
        if (enabled !== undefined && typeof enabled !== 'boolean') throw new AdminRequestError(400, `"enabled" must be true or false, got ${JSON.stringify(enabled)}`);
        if (draining !== undefined && typeof draining !== 'boolean') throw new AdminRequestError(400, `"draining" must be true or false, got ${JSON.stringify(draining)}`);
        let changes: string[] = [];
        if (weight !== undefined && weight !== upstreamOf(pool, id).weight) changes = applyOp({ action: 'weight', pool, id, weight, at: new Date().toISOString() }, source).changes;
        const u = upstreamOf(pool, id);
        if (enabled !== undefined && u.enabled !== enabled) {
          u.setEnabled(enabled, `${enabled ? 'enabled' : 'disabled'} through the admin API`);
          if (!enabled) runtimeChanges.recordState('disable', u);
          changes.push(`pool ${pool}: ${id} ${enabled ? 'enabled' : 'disabled'}`);
        }
        if (draining !== undefined && u.draining !== draining) {
          u.setDraining(draining, draining ? `drained through the admin API (${u.inFlight} requests in flight finish)` : 'back in rotation through the admin API');
          if (draining) runtimeChanges.recordState('drain', u);
          changes.push(`pool ${pool}: ${id} ${draining ? 'draining' : 'no longer draining'}`);
        }
        return { changes, backend: describe(pool, id), runtime_only: changes.length > 0 && runtimeChanges.touches(pool, id, u) };
      });
    },
    status() {
      return buildStatus({
        pools,
        listeners: listeners.map((l) => ({ name: l.info.name, url: l.address()?.url ?? '', open_connections: l.openConnections, refused_connections: l.refusedConnections })),
        runtimeChanges,
        configFile,
        loadedAt,
        persisted: Boolean(config.admin?.persist && configFile !== null),
        restartNeeded: pendingRestart(config),
        startedAt,
        version,
      });
    },
    close(graceMs = config.shutdown.grace_period) {
      closing ??= (async () => {
        proxy.draining = true;
        stopWatch?.();
        await Promise.all([...listeners.map((l) => l.drain(graceMs)), admin?.close()]);
        live?.stop();
        await Promise.all([...pools.values()].map((p) => p.close()));
        await runtime.stores.close();
        stopAccessLog?.();
        metrics.close();
        upstreamState.unsubscribe(onState);
        poolPanic.unsubscribe(onPanic);
        requestRetry.unsubscribe(onRetry);
        logger.flush();
      })();
      return closing;
    },
    addresses: () => listeners.map((l) => l.address()).filter((a): a is ListenerAddress => a !== null),
    adminAddress: () => admin?.address() ?? null,
    pools: () => pools,
    config: () => config,
    withRuntimeChanges: (next) => runtimeChanges.apply(next, false).config,
    restartNotesFor: (next) => pendingRestart(next),
  };
  return balancer;
}
