/**
 * Upstream connection pools, owned by the balancer rather than by a configuration: one client
 * (keep-alive sockets) per upstream, protocol and connection settings. A reload, a weight
 * change, a drain or a pool rebuilt through the admin API finds the same client for every
 * surviving upstream, so its warm sockets are kept. Clients no committed pool uses any more are
 * closed (idle sockets now, busy ones when their exchange ends); a closed client never opens a
 * pooled socket again (a straggler, such as a retry still running on a replaced pool, gets a
 * one-off connection that closes with its exchange).
 *
 * Keys are `protocol|host:port|settings`: `http1` (Fulcrum's own), `http1-undici` and
 * `http1-node`, and `h2` / `h2c` for a pool's `protocol: h2 | h2c` (Http2Client, whose key adds
 * the pool's `http2` settings), each with `+tls:FINGERPRINT` for an `https://` upstream (the
 * pool's TLS settings and the contents of its PEM files, see upstream-tls.ts): a pool rebuilt
 * with other TLS or HTTP/2 settings or renewed files gets new connections.
 */
import type { PoolSettings } from '../config/schema.ts';
import { upstreamIdOf, type Upstream } from '../upstream/upstream.ts';
import type { ClientSettings, Transport, UpstreamAttempt, UpstreamClient } from './transport.ts';
import { Http1Client } from './http1.ts';
import { UndiciClient } from './undici.ts';
import { NodeHttpClient } from './node-http.ts';
import { Http2Client } from './http2.ts';
import { readUpstreamTls, type UpstreamTls } from './upstream-tls.ts';

/** A pool's view of what it may ask for: its settings, its upstreams and the TLS it read for its https ones. */
export interface PoolConnections {
  readonly settings: PoolSettings;
  readonly upstreams: readonly Upstream[];
  /** Null or absent: read from `settings.tls` when an https upstream needs it. */
  readonly upstreamTls?: UpstreamTls | null;
}

/** The client protocol a pool's settings ask for: `protocol` for HTTP/2, else the HTTP/1.1 `transport`. */
function protocolOf(settings: PoolSettings): string {
  if (settings.protocol === 'h2' || settings.protocol === 'h2c') return settings.protocol;
  return settings.transport === 'node-http' ? 'http1-node' : settings.transport === 'undici' ? 'http1-undici' : 'http1';
}

/** A new client of `protocol` toward `upstream` (undici itself loads only when an undici client is made). */
function newClient(protocol: string, upstream: Upstream, s: ClientSettings): UpstreamClient {
  if (protocol === 'http1-node') return new NodeHttpClient(upstream, s);
  if (protocol === 'http1-undici') return new UndiciClient(upstream, s);
  if (protocol === 'h2' || protocol === 'h2c') return new Http2Client(upstream, s);
  return new Http1Client(upstream, s);
}

/**
 * What a client toward `upstream` is built from, under `settings` (the upstream's own
 * max_connections included); an https upstream gets `tls` (read from `settings.tls` if null).
 */
function clientSettings(settings: PoolSettings, upstream: Upstream, tls: UpstreamTls | null): ClientSettings {
  const entry = settings.upstreams.find((u) => upstreamIdOf(u.url) === upstream.id);
  const maxConnections = entry !== undefined && entry.max_connections > 0 ? entry.max_connections : Infinity;
  const limit = Math.min(settings.keepalive.max_sockets > 0 ? settings.keepalive.max_sockets : Infinity, maxConnections);
  return {
    keepalive: settings.keepalive,
    timeouts: settings.timeouts,
    maxSockets: Number.isFinite(limit) ? limit : null,
    tls: upstream.secure ? (tls ?? readUpstreamTls(settings.tls)) : null,
    http2: settings.http2,
  };
}

function keyOf(protocol: string, id: string, s: ClientSettings): string {
  const { keepalive: k, timeouts: t } = s;
  const tls = s.tls === null ? '' : `+tls:${s.tls.fingerprint}`;
  const key = `${protocol}${tls}|${id}|${k.idle_timeout},${k.safety_margin},${k.max_sockets},${t.connect},${t.response_headers},${t.idle_body},${s.maxSockets ?? ''}`;
  if (protocol !== 'h2' && protocol !== 'h2c') return key;
  const h = s.http2;
  return `${key}|${h.max_concurrent_streams},${h.max_sessions},${h.ping_interval},${h.ping_timeout},${h.initial_window_bytes}`;
}

/** Every upstream client of one balancer; outlives runtimes (reloads, API writes). */
export class ConnectionPools {
  private readonly clients = new Map<string, UpstreamClient>();
  private closed = false;
  /** Keys the committed pools use (null before the first commit: every key may be kept). */
  private liveKeys: ReadonlySet<string> | null = null;

  /**
   * The transport a pool with `settings` forwards through: it finds each upstream's client here.
   * `tls`: what the pool read from `settings.tls` for its https upstreams (null: read when needed).
   */
  transportFor(settings: PoolSettings, tls: UpstreamTls | null = null): Transport {
    return new PoolTransport(this, settings, tls);
  }

  /** The client for `upstream` under `settings` (and `tls`, for an https upstream): the running one, or a new one. */
  clientFor(upstream: Upstream, settings: PoolSettings, tls: UpstreamTls | null = null): UpstreamClient {
    const protocol = protocolOf(settings);
    const s = clientSettings(settings, upstream, tls);
    const key = keyOf(protocol, upstream.id, s);
    let client = this.clients.get(key);
    if (client !== undefined) return client;
    client = newClient(protocol, upstream, s);
    // After shutdown, or for a key no committed pool uses (a retry on a replaced pool), nothing is
    // kept: the client serves its one exchange and closes behind it.
    if (this.closed || (this.liveKeys !== null && !this.liveKeys.has(key))) void client.close();
    else this.clients.set(key, client);
    return client;
  }

  /** Clients open now (for tests and status). */
  get size(): number {
    return this.clients.size;
  }

  /**
   * After a commit: clients that no pool of `live` uses close (idle sockets now, busy ones when
   * their exchange ends). The others, and their warm sockets, go on.
   */
  retain(live: Iterable<PoolConnections>): void {
    const keep = new Set<string>();
    for (const pool of live) {
      const protocol = protocolOf(pool.settings);
      for (const u of pool.upstreams) keep.add(keyOf(protocol, u.id, clientSettings(pool.settings, u, pool.upstreamTls ?? null)));
    }
    this.liveKeys = keep;
    for (const [key, client] of this.clients) {
      if (keep.has(key)) continue;
      this.clients.delete(key);
      void client.close();
    }
  }

  /** Shutdown: idle connections close now, busy ones when their exchange ends. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.clients.values()];
    this.clients.clear();
    await Promise.all(all.map((c) => c.close()));
  }
}

/** One pool's transport: each upstream's client, looked up once and then kept per Upstream. */
class PoolTransport implements Transport {
  private readonly connections: ConnectionPools;
  private readonly settings: PoolSettings;
  private readonly tls: UpstreamTls | null;
  private readonly clients = new Map<Upstream, UpstreamClient>();

  constructor(connections: ConnectionPools, settings: PoolSettings, tls: UpstreamTls | null) {
    this.connections = connections;
    this.settings = settings;
    this.tls = tls;
  }

  forward(attempt: UpstreamAttempt): void {
    const upstream = attempt.upstream;
    let client = this.clients.get(upstream);
    if (client === undefined) {
      client = this.connections.clientFor(upstream, this.settings, this.tls);
      this.clients.set(upstream, client);
    }
    client.forward(attempt);
  }
}
