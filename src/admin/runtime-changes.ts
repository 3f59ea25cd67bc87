/**
 * Changes made through the admin API on top of the configuration file: backends added, removed
 * or re-weighted (configuration, applied through the same validate-then-swap path as a reload)
 * and backends drained or disabled (state). They are kept as "ensure" operations, re-applied
 * after every reload of the file, and listed in `/status`, so a restart never loses one
 * silently: an operation the file already satisfies is dropped as done.
 */
import type { FulcrumConfig, UpstreamSettings } from '../config/schema.ts';
import type { RuntimeChange } from './types.ts';
import { upstreamIdOf } from '../upstream/upstream.ts';

/** A configuration change: ensure an upstream is present (with this weight), absent, or weighted. */
export type RuntimeOp =
  | { action: 'add'; pool: string; id: string; upstream: UpstreamSettings; at: string }
  | { action: 'remove'; pool: string; id: string; at: string }
  | { action: 'weight'; pool: string; id: string; weight: number; at: string };

/** A state change kept for the report (the state itself lives on the upstream and survives reloads). */
interface StateOp {
  action: 'drain' | 'disable';
  pool: string;
  id: string;
  at: string;
}

/** `host:port` of an upstream URL (the id everywhere else). */
export function upstreamId(url: string): string {
  return upstreamIdOf(url);
}

/** The runtime layer over the file's configuration. */
export class RuntimeChanges {
  private ops: RuntimeOp[] = [];
  private readonly states = new Map<string, StateOp>();

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
    if (op.action === 'remove') this.forgetState(op.pool, op.id);
  }

  /** Undoes the last `record` (the swap it led to failed). */
  restore(snapshot: RuntimeOp[]): void {
    this.ops = snapshot;
  }

  snapshot(): RuntimeOp[] {
    return this.ops.map((o) => ({ ...o }));
  }

  /** Notes a drain/disable (true) or its undoing (false) for the report. */
  recordState(action: 'drain' | 'disable', pool: string, id: string, on: boolean): void {
    const key = `${action} ${pool} ${id}`;
    if (on) this.states.set(key, { action, pool, id, at: new Date().toISOString() });
    else this.states.delete(key);
  }

  private forgetState(pool: string, id: string): void {
    for (const [key, s] of this.states) if (s.pool === pool && s.id === id) this.states.delete(key);
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
      const i = pool.upstreams.findIndex((u) => upstreamId(u.url) === op.id);
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
    for (const [key, s] of this.states) if (config.pools[s.pool]?.upstreams.every((u) => upstreamId(u.url) !== s.id) ?? true) this.states.delete(key);
    return { config, dropped };
  }

  /** Forgets the configuration operations of `pool` (they were written to the file). */
  clearOps(pool: string): void {
    this.ops = this.ops.filter((o) => o.pool !== pool);
  }

  /** Every change a restart would lose, oldest first. */
  list(): RuntimeChange[] {
    const rows: RuntimeChange[] = this.ops.map((op) => ({
      at: op.at,
      action: op.action,
      pool: op.pool,
      upstream: op.id,
      ...(op.action === 'add' ? { weight: op.upstream.weight } : op.action === 'weight' ? { weight: op.weight } : {}),
    }));
    for (const s of this.states.values()) rows.push({ at: s.at, action: s.action, pool: s.pool, upstream: s.id });
    return rows.sort((a, b) => a.at.localeCompare(b.at));
  }

  /** True when this upstream differs from the file because of the API. */
  touches(pool: string, id: string): boolean {
    return this.ops.some((o) => o.pool === pool && o.id === id) || [...this.states.values()].some((s) => s.pool === pool && s.id === id);
  }
}
