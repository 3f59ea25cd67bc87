/**
 * What metrics and the dashboard's live numbers cost per request: synthetic request-end events
 * published to the channel the proxy uses, with no subscriber, with the Prometheus metrics, and
 * with the live stats too. CPU time per event, not a throughput figure.
 *
 *   npm run bench:metrics
 */
import { Metrics } from '../src/observe/metrics.ts';
import { LiveStats } from '../src/observe/live-stats.ts';
import { requestEnd } from '../src/core/events.ts';
import { Pool } from '../src/upstream/pool.ts';
import { ConnectionPools } from '../src/transport/connection-pools.ts';
import { PoolConfig } from '../src/config/schema.ts';
import type { RateLimitStores } from '../src/middleware/rate-limit-stores.ts';

const pool = new Pool('web', PoolConfig.parse({ upstreams: ['http://127.0.0.1:1', 'http://127.0.0.1:2', 'http://127.0.0.1:3'] }), new ConnectionPools());
pool.adopt();
const pools = new Map([['web', pool]]);
// Mixed methods, statuses and latencies, as a real request-end stream has.
const events = Array.from({ length: 300 }, (_, i) => ({
  ctx: { req: { method: i % 7 ? 'GET' : 'POST' }, status: i % 50 ? 200 : 503, pool, upstream: pool.upstreams[i % 3], route: { name: 'default' }, error: null, duration: (i % 37) * 0.7 },
}));

function run(label: string, n = 2_000_000): void {
  for (let i = 0; i < 200_000; i++) if (requestEnd.hasSubscribers) requestEnd.publish(events[i % 300]); // warm up
  const start = performance.now();
  for (let i = 0; i < n; i++) if (requestEnd.hasSubscribers) requestEnd.publish(events[i % 300]);
  process.stdout.write(`${label.padEnd(28)} ${(((performance.now() - start) * 1e6) / n).toFixed(0).padStart(5)} ns per request\n`);
}

run('no subscriber');
const stores = { fallbacks: 0, evictions: 0, redisStatus: 'off' } as unknown as RateLimitStores;
const metrics = new Metrics({ pools: () => pools, stores: () => stores, listeners: () => [], routes: () => ['default'] });
run('metrics');
const live = new LiveStats(() => pools);
live.start();
run('metrics + live stats');
await metrics.scrape(); // the batched counts reach prom-client here
metrics.close();
live.stop();
await pool.close();
