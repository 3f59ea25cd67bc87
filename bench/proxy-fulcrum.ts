/**
 * Fulcrum under test, run as its own process by bench/run.ts:
 *   node bench/proxy-fulcrum.ts <backend-url> <http1|undici|node-http> [--cert F --key F [--no-session-tickets]]
 *                               [--h2c] [--upstream-protocol http1|h2|h2c]
 * A realistic configuration with logging on: level info, JSON access log line per request.
 * With a certificate and key the listener is HTTPS (`protocol: https`, the default
 * "intermediate" profile, session tickets on unless --no-session-tickets, ALPN offering h2 and
 * http/1.1 as by default). --h2c lets a plain listener also serve HTTP/2 with prior knowledge
 * (`http2.h2c`); --upstream-protocol sets the pool's `protocol` (default http1, through the
 * transport given; h2c wants an http:// backend, h2 an https:// one, and both leave the transport
 * argument unused: it names an HTTP/1.1 client). The parent points our stdout
 * at /dev/null, so the cost of building and writing every line is paid without a terminal or a
 * disk in the way.
 */
import { parseArgs } from 'node:util';
import { createBalancer } from '../src/index.ts';

const usage =
  'usage: node bench/proxy-fulcrum.ts <backend-url> <http1|undici|node-http> [--cert F --key F [--no-session-tickets]] [--h2c] [--upstream-protocol http1|h2|h2c]';
const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    'no-session-tickets': { type: 'boolean', default: false },
    h2c: { type: 'boolean', default: false },
    'upstream-protocol': { type: 'string', default: 'http1' },
  },
});
const [backendUrl, transport] = positionals;
const { cert, key } = values;
const protocol = values['upstream-protocol'];
if (
  !backendUrl ||
  (transport !== 'http1' && transport !== 'undici' && transport !== 'node-http') ||
  (cert === undefined) !== (key === undefined) ||
  (protocol !== 'http1' && protocol !== 'h2' && protocol !== 'h2c')
) {
  console.error(usage);
  process.exit(2);
}
const https = cert !== undefined && key !== undefined;
const tls = { certificates: [{ cert: cert!, key }], session_tickets: !values['no-session-tickets'] };

const balancer = createBalancer({
  listeners: [
    https ? { name: 'bench', host: '127.0.0.1', port: 0, protocol: 'https', tls } : { name: 'bench', host: '127.0.0.1', port: 0, http2: { h2c: values.h2c } },
  ],
  // The config refuses `transport` beside an HTTP/2 protocol: it names the HTTP/1.1 client only.
  pools: { backend: protocol === 'http1' ? { upstreams: [backendUrl], transport } : { upstreams: [backendUrl], protocol } },
  log: { level: 'info', format: 'json', access_log: true },
  shutdown: { grace_period: 1000 },
});

const [address] = await balancer.start();
process.send?.({ port: address.port, scheme: https ? 'https' : 'http' });

process.on('disconnect', () => process.exit(0));
