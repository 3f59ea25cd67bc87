/**
 * Fulcrum under test, run as its own process by bench/run.ts:
 *   node bench/proxy-fulcrum.ts <backend-url> <http1|undici|node-http>
 * A realistic configuration with logging on: level info, JSON access log line per request.
 * The parent points our stdout at /dev/null, so the cost of building and writing every line is
 * paid without a terminal or a disk in the way.
 */
import { createBalancer } from '../src/index.ts';

const [backendUrl, transport] = process.argv.slice(2);
if (!backendUrl || (transport !== 'http1' && transport !== 'undici' && transport !== 'node-http')) {
  console.error('usage: node bench/proxy-fulcrum.ts <backend-url> <http1|undici|node-http>');
  process.exit(2);
}

const balancer = createBalancer({
  listeners: [{ name: 'bench', host: '127.0.0.1', port: 0 }],
  pools: { backend: { upstreams: [backendUrl], transport } },
  log: { level: 'info', format: 'json', access_log: true },
  shutdown: { grace_period: 1000 },
});

const [address] = await balancer.start();
process.send?.({ port: address.port });

process.on('disconnect', () => process.exit(0));
