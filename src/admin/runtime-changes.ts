/**
 * Changes made through the admin API on top of the configuration file: backends added, removed
 * or re-weighted (configuration, applied through the same validate-then-swap path as a reload)
 * and backends drained or disabled (state). Configuration changes are kept as "ensure"
 * operations, re-applied after every reload of the file; an operation the file already
 * satisfies is dropped as done. Drains and disables are read from the upstreams themselves
 * (the file cannot say them, and they follow an upstream across reloads and pool renames).
 * Both are listed in `/status`, so a restart never loses one silently.
 */
import type { FulcrumConfig, UpstreamSettings } from '../config/schema.ts';
import type { RuntimeChange } from './types.ts';
import { upstreamIdOf, type Upstream } from '../upstream/upstream.ts';
import type { Pool } from '../upstream/pool.ts';

/** A configuration change: ensure an upstream is present (with this weight), absent, or weighted. */
export type RuntimeOp =
  | { action: 'add'; pool: string; id: string; upstream: UpstreamSettings; at: string }
  | { action: 'remove'; pool: string; id: string; at: string }
  | { action: 'weight'; pool: string; id: string; weight: number; at: string };


/** The runtime layer over the file's configuration. */
export class RuntimeChanges {
  private ops: RuntimeOp[] = [];
  /** When an upstream was drained or disabled through the API (the report's time). */
  private readonly stateTimes = new WeakMap<Upstream, { drain?: string; disable?: string }>();

  /** Adds a configuration operation; an earlier one on the same upstream is superseded. */
  record(op: RuntimeOp): void {
    this.ops = this.ops.filter((o) => !(o.pool === op.pool && o.id === op.id && (op.action !== 'weight' || o.action === 'weight')));
    if (op.action === 'weight') {
      // A weight on an upstream added at runtime belongs in its add.
      const add = this.ops.find((o) => o.action === 'add' && o.pool === op.pool && o.id === op.id);
      if (add && add.action === 'add') {
        add.upstream = { ...add.upstream, weight: op.weight };
        return;
      }
    }
    this.ops.push(op);
  }

  /** Undoes the last `record` (the swap it led to failed). */
  restore(snapshot: RuntimeOp[]): void {
    this.ops = snapshot;
  }

  snapshot(): RuntimeOp[] {
    return this.ops.map((o) => ({ ...o }));
  }

  /** Notes when an upstream was drained or disabled, for the report. */
  recordState(action: 'drain' | 'disable', upstream: Upstream): void {
    const times = this.stateTimes.get(upstream) ?? {};
    times[action] = new Date().toISOString();
    this.stateTimes.set(upstream, times);
  }

  /**
   * The file's configuration with the operations applied (the input is not changed). Operations
   * the file already satisfies, or that no longer apply (their pool is gone), are dropped and
   * described in `dropped`.
   */
  apply(base: FulcrumConfig, commit = true): { config: FulcrumConfig; dropped: string[] } {
    const config = structuredClone(base);
    const dropped: string[] = [];
    const kept = this.ops.filter((op) => {
      const pool = config.pools[op.pool];
      if (pool === undefined) {
        dropped.push(`${op.action} ${op.id}: pool ${op.pool} is no longer in the configuration`);
        return false;
      }
      const i = pool.upstreams.findIndex((u) => upstreamIdOf(u.url) === op.id);
      switch (op.action) {
        case 'add':
          if (i >= 0 && pool.upstreams[i].weight === op.upstream.weight && pool.upstreams[i].max_connections === op.upstream.max_connections) {
            dropped.push(`add ${op.id} to pool ${op.pool}: the file has it now`);
            return false;
          }
          if (i >= 0) pool.upstreams[i] = { ...op.upstream };
          else pool.upstreams.push({ ...op.upstream });
          return true;
        case 'remove':
          if (i < 0) {
            dropped.push(`remove ${op.id} from pool ${op.pool}: the file does not have it any more`);
            return false;
          }
          if (pool.upstreams.length === 1) {
            dropped.push(`remove ${op.id} from pool ${op.pool}: it is the pool's only upstream in the file`);
            return false;
          }
          pool.upstreams.splice(i, 1);
          return true;
        case 'weight':
          if (i < 0) {
            dropped.push(`weight of ${op.id} in pool ${op.pool}: the file does not have it any more`);
            return false;
          }
          if (pool.upstreams[i].weight === op.weight) {
            dropped.push(`weight of ${op.id} in pool ${op.pool}: the file has it now`);
            return false;
          }
          pool.upstreams[i] = { ...pool.upstreams[i], weight: op.weight };
          return true;
      }
    });
    if (!commit) return { config, dropped };
    this.ops = kept;
    return { config, dropped };
  }

  /** Forgets the configuration operations of `pool` (they were written to the file). */
  clearOps(pool: string): void {
    this.ops = this.ops.filter((o) => o.pool !== pool);
  }

  /** Every change a restart would lose, oldest first: the operations, and the upstreams drained or disabled now. */
  list(pools: ReadonlyMap<string, Pool>): RuntimeChange[] {
    const rows: RuntimeChange[] = this.ops.map((op) => ({
      at: op.at,
      action: op.action,
      pool: op.pool,
      upstream: op.id,
      ...(op.action === 'add' ? { weight: op.upstream.weight } : op.action === 'weight' ? { weight: op.weight } : {}),
    }));
    for (const pool of pools.values()) {
      for (const u of pool.upstreams) {
        const times = this.stateTimes.get(u);
        if (u.draining) rows.push({ at: times?.drain ?? '', action: 'drain', pool: pool.name, upstream: u.id });
        if (!u.enabled) rows.push({ at: times?.disable ?? '', action: 'disable', pool: pool.name, upstream: u.id });
      }
    }
    return rows.sort((a, b) => a.at.localeCompare(b.at));
  }

  /** True when this upstream differs from the file because of the API (a change, a drain, a disable). */
  touches(pool: string, id: string, upstream?: Upstream): boolean {
    return this.ops.some((o) => o.pool === pool && o.id === id) || (upstream !== undefined && (upstream.draining || !upstream.enabled));
  }
}
