/**
 * Fulcrum under test, run as its own process by bench/run.ts:
 *   node bench/proxy-fulcrum.ts <backend-url> <http1|undici|node-http> [--cert F --key F [--no-session-tickets]]
 * A realistic configuration with logging on: level info, JSON access log line per request.
 * With a certificate and key the listener is HTTPS (`protocol: https`, the default
 * "intermediate" profile, session tickets on unless --no-session-tickets). The parent points our
 * stdout at /dev/null, so the cost of building and writing every line is paid without a terminal
 * or a disk in the way.
 */
import { parseArgs } from 'node:util';
import { createBalancer } from '../src/index.ts';

const usage = 'usage: node bench/proxy-fulcrum.ts <backend-url> <http1|undici|node-http> [--cert F --key F [--no-session-tickets]]';
const { positionals, values } = parseArgs({ allowPositionals: true, options: { cert: { type: 'string' }, key: { type: 'string' }, 'no-session-tickets': { type: 'boolean', default: false } } });
const [backendUrl, transport] = positionals;
const { cert, key } = values;
if (!backendUrl || (transport !== 'http1' && transport !== 'undici' && transport !== 'node-http') || (cert === undefined) !== (key === undefined)) {
  console.error(usage);
  process.exit(2);
}
const https = cert !== undefined && key !== undefined;
const tls = { certificates: [{ cert: cert!, key }], session_tickets: !values['no-session-tickets'] };

const balancer = createBalancer({
  listeners: [https ? { name: 'bench', host: '127.0.0.1', port: 0, protocol: 'https', tls } : { name: 'bench', host: '127.0.0.1', port: 0 }],
  pools: { backend: { upstreams: [backendUrl], transport } },
  log: { level: 'info', format: 'json', access_log: true },
  shutdown: { grace_period: 1000 },
});

const [address] = await balancer.start();
process.send?.({ port: address.port, scheme: https ? 'https' : 'http' });

process.on('disconnect', () => process.exit(0));
