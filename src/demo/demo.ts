/**
 * `fulcrum demo` (what `npm start` runs): three sample backends on free ports behind one
 * balancer, over http and https (a self-signed certificate made at start, in a temporary
 * directory removed at close), and a printout of what to try.
 */
import { createBalancer, type Balancer } from '../index.ts';
import { startSampleBackend, type SampleBackend } from './sample-backend.ts';
import type { FulcrumConfigInput } from '../config/schema.ts';
import { isPortFree } from './ports.ts';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { makeCertificate } from '../tls/make-certificate.ts';

/** A running demo. */
export interface Demo {
  balancer: Balancer;
  backends: SampleBackend[];
  url: string;
  /** The https listener, by a name its certificate covers (`https://localhost:8443`). */
  httpsUrl: string;
  /** The demo's self-signed certificate (PEM): what `curl --cacert` trusts. Removed at close. */
  certificateFile: string;
  /** The tcp listener (`tcp://localhost:8081`): the same backends balanced per connection, not per request. */
  tcpUrl: string;
  /** The admin API and dashboard. */
  adminUrl: string;
  /** The admin token of this run (writes need it; the dashboard link carries it). */
  adminToken: string;
  close(): Promise<void>;
}

/** Addresses that mean "this machine": the certificate names localhost and 127.0.0.1 reach them. */
const localHosts = new Set(['127.0.0.1', '::1', 'localhost', '0.0.0.0', '::']);

/** The demo's certificate files: a new self-signed ECDSA certificate in a new private temporary directory. */
async function demoCertificate(host: string): Promise<{ dir: string; cert: string; key: string }> {
  const names = ['localhost', '127.0.0.1', '::1', ...(localHosts.has(host) ? [] : [host])];
  const pair = await makeCertificate({ names, commonName: 'Fulcrum demo', days: 30 });
  // mkdtemp makes the directory 0700; the key is 0600 as well, for the record.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fulcrum-demo-'));
  const cert = path.join(dir, 'demo-cert.pem');
  const key = path.join(dir, 'demo-key.pem');
  writeFileSync(cert, pair.cert, { mode: 0o644, flag: 'wx' });
  writeFileSync(key, pair.key, { mode: 0o600, flag: 'wx' });
  return { dir, cert, key };
}

/**
 * Starts the demo; `port` is where the balancer listens (default 8080, or a free one if taken),
 * `httpsPort` its https listener (default 8443, or a free one if taken; a free one when `port` is 0).
 */
export async function startDemo(options: { port?: number; httpsPort?: number; backends?: number; policy?: string; host?: string; adminPort?: number } = {}): Promise<Demo> {
  const count = options.backends ?? 3;
  const host = options.host ?? '127.0.0.1';
  // Made while the backends start: it is most of the start-up time (loading the X.509 library).
  const certificate = demoCertificate(host);
  const backends: SampleBackend[] = [];
  const cleanUp = async (): Promise<void> => {
    await Promise.all(backends.map((b) => b.close()));
    const made = await certificate.catch(() => null);
    if (made !== null) rmSync(made.dir, { recursive: true, force: true });
  };
  try {
    for (let i = 1; i <= count; i++) backends.push(await startSampleBackend({ id: String(i), port: 0 }));
    let port = options.port ?? 8080;
    if (options.port === undefined && !(await isPortFree(port, host))) port = 0;
    let httpsPort = options.httpsPort ?? (options.port === 0 ? 0 : 8443);
    if (options.httpsPort === undefined && httpsPort !== 0 && !(await isPortFree(httpsPort, host))) httpsPort = 0;
    let tcpPort = options.port === 0 ? 0 : 8081;
    if (tcpPort !== 0 && !(await isPortFree(tcpPort, host))) tcpPort = 0;
    let adminPort = options.adminPort ?? 9901;
    if (options.adminPort === undefined && !(await isPortFree(adminPort, '127.0.0.1'))) adminPort = 0;
    const { cert, key } = await certificate;
    return await startDemoBalancer({ backends, host, port, httpsPort, tcpPort, adminPort, cert, key, policy: options.policy, cleanUp });
  } catch (err) {
    await cleanUp();
    throw err;
  }
}

/** The balancer in front of the started backends: http and https listeners, admin API with a new token. */
async function startDemoBalancer(o: { backends: SampleBackend[]; host: string; port: number; httpsPort: number; tcpPort: number; adminPort: number; cert: string; key: string; policy?: string; cleanUp: () => Promise<void> }): Promise<Demo> {
  const { backends, host } = o;
  const adminToken = randomBytes(16).toString('hex');
  const config: FulcrumConfigInput = {
    listeners: [
      // h2c too, so HTTP/2 can be tried without a certificate (curl --http2-prior-knowledge).
      { name: 'demo', host, port: o.port, http2: { h2c: true } },
      // The files never change while the demo runs: nothing to watch.
      { name: 'demo-https', host, port: o.httpsPort, protocol: 'https', tls: { certificates: [{ cert: o.cert, key: o.key }], watch: false } },
      // Layer 4: the same backends behind a tcp listener, each connection balanced (by open connections) and relayed unparsed.
      { name: 'demo-tcp', host, port: o.tcpPort, protocol: 'tcp', pool: 'demo-tcp' },
    ],
    // Quick checks so that telling a backend to fail shows it leave the rotation in seconds.
    pools: {
      demo: {
        policy: o.policy ?? 'round-robin',
        upstreams: backends.map((b) => b.url),
        health_check: { path: '/health', interval: '2s', fast_interval: '500ms', timeout: '1s' },
      },
      'demo-tcp': {
        protocol: 'tcp',
        policy: 'least-connections',
        upstreams: backends.map((b) => b.url.replace(/^http:/, 'tcp:')),
        health_check: { type: 'tcp', interval: '2s', fast_interval: '500ms', timeout: '1s' },
      },
    },
    admin: { host: '127.0.0.1', port: o.adminPort, token: adminToken },
  };
  const balancer = createBalancer(config);
  let addresses;
  try {
    addresses = await balancer.start();
  } catch (err) {
    await balancer.close(0);
    throw err;
  }
  const [address, secure, tcp] = addresses;
  const httpsHost = localHosts.has(host) ? 'localhost' : isIP(host) === 6 ? `[${host}]` : host;
  return {
    balancer,
    backends,
    url: address.url,
    httpsUrl: `https://${httpsHost}:${secure.port}`,
    tcpUrl: `tcp://${httpsHost}:${tcp.port}`,
    certificateFile: o.cert,
    adminUrl: balancer.adminAddress()!.url,
    adminToken,
    async close() {
      await balancer.close(2000);
      await o.cleanUp();
    },
  };
}

/** `text` as one shell word (quoted only when it has to be). */
function shellWord(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}

/** The text printed when the demo is up. */
export function demoBanner(demo: Demo): string {
  const u = demo.url;
  const ws = u.replace(/^http/, 'ws');
  const lines = [
    '',
    `  Fulcrum demo is running: ${u} and ${demo.httpsUrl}`,
    '',
    `  backends (${demo.backends.length}, policy round-robin):`,
    ...demo.backends.map((b) => `    backend ${b.id}  ${b.url}`),
    '',
    '  try:',
    `    curl ${u}/                       # which backend answered; repeat to see them take turns`,
    `    curl ${u}/bytes?n=10000000 -o /dev/null   # a streamed 10 MB download`,
    `    curl -X POST ${demo.backends[0].url}/control?fail=1   # backend 1 fails its health checks and leaves within ~3 s (fail=0: back)`,
    `    curl -X POST ${demo.backends[1].url}/control?delay=500  # make backend 2 slow`,
    '',
    '  WebSocket (/ws echoes each message with the name of the backend that holds the connection; Node 24 has WebSocket built in):',
    `    node -e 'const ws = new WebSocket("${ws}/ws"); ws.onopen = () => ws.send("hello"); ws.onmessage = (e) => { console.log(e.data); ws.close(); }'`,
    `    node -e 'const ws = new WebSocket("${ws}/ws"); ws.onmessage = (e) => console.log(e.data); ws.onclose = () => process.exit(); ws.onopen = () => require("readline").createInterface({ input: process.stdin }).on("line", (l) => ws.send(l)).on("close", () => ws.close())'`,
    '        # the first says which backend answered (repeat to see them take turns); the second stays open:',
    '        # type lines to have them echoed, see the tunnel on the dashboard (Tunnels), Ctrl-D closes it',
    '',
    `  dashboard:   ${demo.adminUrl}/dashboard/#token=${demo.adminToken}`,
    `  admin API:   ${demo.adminUrl}/status   (writes need: -H 'Authorization: Bearer ${demo.adminToken}')`,
    `  metrics:     ${demo.adminUrl}/metrics`,
    `  CLI:         FULCRUM_ADMIN_URL=${demo.adminUrl} FULCRUM_ADMIN_TOKEN=${demo.adminToken} npx fulcrum status`,
    `  HTTPS:       curl --cacert ${shellWord(demo.certificateFile)} ${demo.httpsUrl}/`,
    '               # a self-signed certificate made at start for localhost and 127.0.0.1 (removed when the demo stops)',
    `  HTTP/2:      curl -s -o /dev/null -w '%{http_version}\\n' --cacert ${shellWord(demo.certificateFile)} ${demo.httpsUrl}/   # h2 by ALPN`,
    `               curl --http2-prior-knowledge ${u}/   # h2c on the plain port; each stream is balanced on its own`,
    `  TCP (L4):    curl ${demo.tcpUrl.replace(/^tcp:/, 'http:')}/   # the same backends through a tcp listener: bytes relayed as they are,`,
    '               # each connection balanced by open connections (least-connections), not each request',
    '',
    '  Ctrl-C stops it gracefully.',
    '',
  ];
  return lines.join('\n');
}
