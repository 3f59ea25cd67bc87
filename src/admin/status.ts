/**
 * `/status` and `/backends`: the seeds' shape (`total_backends`, `active_backends`,
 * `backends: [{url, alive, current_connections, requests}]`) with Fulcrum's state beside it.
 */
import type { Pool } from '../upstream/pool.ts';
import type { Upstream } from '../upstream/upstream.ts';
import type { RuntimeChanges } from './runtime-changes.ts';
import type { BackendStatus, PoolStatus, StatusResponse, UpstreamState } from './types.ts';

/** An upstream's state, as /status and the live samples both show it. */
export function upstreamState(u: Upstream): UpstreamState {
  return {
    alive: u.eligible(),
    health: u.health,
    enabled: u.enabled,
    draining: u.draining,
    ejected: u.ejected,
    ejections: u.ejections,
    circuit: u.circuit,
    panic: u.panic,
    weight: u.weight,
    requests: u.served,
  };
}

/** One upstream of one pool. */
export function backendStatus(pool: Pool, u: Upstream, changes: RuntimeChanges): BackendStatus {
  const status: BackendStatus = {
    url: u.origin,
    id: u.id,
    pool: pool.name,
    ...upstreamState(u),
    healthy: u.health === 'healthy',
    current_connections: u.inFlight,
    failures: u.failures,
    runtime_only: changes.touches(pool.name, u.id, u),
  };
  // A tcp pool's upstream counts its open connections in flight (src/proxy/tcp-proxy.ts).
  if (pool.settings.protocol === 'tcp') status.open_connections = u.inFlight;
  return status;
}

/** One pool: its protocol, policy and upstreams; a tcp pool's open connections. */
export function poolStatus(p: Pool): PoolStatus {
  const status: PoolStatus = {
    name: p.name,
    protocol: p.settings.protocol,
    policy: p.policyFactory.name,
    upstreams: p.upstreams.length,
    available: p.eligible().length,
    backup: p.settings.backup ?? null,
  };
  if (p.settings.protocol === 'tcp') status.tcp_connections = p.upstreams.reduce((n, u) => n + u.inFlight, 0);
  return status;
}

/** What `/status` is built from. */
export interface StatusSources {
  pools: ReadonlyMap<string, Pool>;
  listeners: StatusResponse['listeners'];
  certificates: StatusResponse['certificates'];
  acme: StatusResponse['acme'];
  runtimeChanges: RuntimeChanges;
  configFile: string | null;
  loadedAt: Date;
  persisted: boolean;
  startedAt: number;
  version: string;
  restartNeeded: string[];
}

export function buildStatus(s: StatusSources): StatusResponse {
  const backends: BackendStatus[] = [];
  for (const pool of s.pools.values()) for (const u of pool.upstreams) backends.push(backendStatus(pool, u, s.runtimeChanges));
  return {
    total_backends: backends.length,
    active_backends: backends.filter((b) => b.alive).length,
    backends,
    pools: [...s.pools.values()].map(poolStatus),
    listeners: s.listeners,
    certificates: s.certificates,
    acme: s.acme,
    config_file: s.configFile,
    config_loaded_at: s.loadedAt.toISOString(),
    persisted: s.persisted,
    runtime_changes: s.runtimeChanges.list(s.pools),
    restart_needed: s.restartNeeded,
    uptime_seconds: Math.round((Date.now() - s.startedAt) / 1000),
    version: s.version,
  };
}
