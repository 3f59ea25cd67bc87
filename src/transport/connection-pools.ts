/**
 * Upstream connection pools, kept by the balancer across configuration changes (placeholder
 * wiring: replaced by per-upstream clients keyed by upstream and protocol).
 */
import type { PoolSettings } from '../config/schema.ts';
import type { Upstream } from '../upstream/upstream.ts';
import type { Transport } from './transport.ts';
import { UndiciTransport } from './undici.ts';
import { NodeHttpTransport } from './node-http.ts';

/** Every upstream connection pool of one balancer; outlives runtimes (reloads, API writes). */
export class ConnectionPools {
  private readonly transports = new Set<Transport>();

  /** The transport a pool with `settings` forwards through. */
  transportFor(settings: PoolSettings): Transport {
    const t = settings.transport === 'node-http' ? new NodeHttpTransport(settings) : new UndiciTransport(settings);
    this.transports.add(t);
    return t;
  }

  /** After a commit: connections no pool of `live` can use close once their exchanges end. */
  retain(_live: Iterable<{ readonly settings: PoolSettings; readonly upstreams: readonly Upstream[] }>): void {}

  /** Shutdown: idle connections close now, busy ones when their exchange ends. */
  async close(): Promise<void> {
    await Promise.all([...this.transports].map((t) => t.close()));
    this.transports.clear();
  }
}
