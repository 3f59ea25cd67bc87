/**
 * The forward proxy's connections toward destinations: one `Http1Client` (Fulcrum's own
 * HTTP/1.1 client, keep-alive sockets) per resolved address, port and connection settings, in a
 * table of at most `max` clients (256 by default). Destinations are chosen by clients, so the
 * table is an LRU: using a destination makes it the most recent, and a new one beyond `max`
 * closes the least recently used (its idle sockets at once, busy ones when their exchange ends;
 * a request still holding it gets a one-off socket, as any closed client gives).
 *
 * Sockets to one destination are reused for `keepalive.idle_timeout - safety_margin` (4 s with
 * the defaults), so the open sockets are bounded by the requests in flight plus what became idle
 * in the last few seconds, and the clients by `max`.
 */
import type { PoolSettings } from '../config/schema.ts';
import { KeepAliveConfig, UpstreamHttp2Config } from '../config/schema.ts';
import { Http1Client } from '../transport/http1.ts';
import type { ClientSettings, Transport, UpstreamAttempt, UpstreamClient } from '../transport/transport.ts';
import { Upstream } from '../upstream/upstream.ts';

/** Clients kept at most by default. */
export const DEFAULT_MAX_DESTINATIONS = 256;

/** Keep-alive toward destinations: the pools' defaults (5 s idle, 1 s margin, no socket limit). */
const destinationKeepalive = KeepAliveConfig.parse({});
const unusedHttp2 = UpstreamHttp2Config.parse({});

/** One destination: the Upstream the core counts on (`host:port` of the resolved address) and the transport to it. */
export interface Destination {
  readonly upstream: Upstream;
  readonly transport: Transport;
}

interface Entry extends Destination {
  readonly client: UpstreamClient;
}

/** The bounded table of destination clients of one balancer. */
export class DestinationClients {
  /** Most clients kept. */
  readonly max: number;
  /** Map order is use order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry>();
  private closed = false;
  /** Clients closed to make room, since start (for tests and status). */
  evicted = 0;

  constructor(max = DEFAULT_MAX_DESTINATIONS) {
    this.max = Math.max(1, max);
  }

  /** Clients open now. */
  get size(): number {
    return this.entries.size;
  }

  /**
   * The destination for `address` (an IP address, never a name: it is connected to as it is)
   * and `port` under `timeouts`: the open one (now the most recently used), or a new one that
   * may close the least recently used. After `close()` every destination is a one-off.
   */
  lease(address: string, family: 4 | 6, port: number, timeouts: PoolSettings['timeouts']): Destination {
    const host = family === 6 ? `[${address}]` : address;
    const key = `${host}:${port}|${timeouts.connect},${timeouts.response_headers},${timeouts.idle_body}`;
    const found = this.entries.get(key);
    if (found !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, found);
      return found;
    }
    const upstream = new Upstream({ url: `http://${host}:${port}`, weight: 1, maxConnections: 0 });
    const settings: ClientSettings = { keepalive: destinationKeepalive, timeouts, maxSockets: null, tls: null, http2: unusedHttp2 };
    const client = new Http1Client(upstream, settings);
    const entry: Entry = { upstream, client, transport: { forward: (attempt: UpstreamAttempt) => client.forward(attempt) } };
    if (this.closed) {
      // Serves its one exchange and closes behind it.
      void client.close();
      return entry;
    }
    this.entries.set(key, entry);
    while (this.entries.size > this.max) {
      const [oldest, gone] = this.entries.entries().next().value!;
      this.entries.delete(oldest);
      this.evicted++;
      void gone.client.close();
    }
    return entry;
  }

  /** Shutdown: idle sockets close now, busy ones when their exchange ends. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(all.map((e) => e.client.close()));
  }
}
