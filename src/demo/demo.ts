/**
 * `fulcrum demo` (what `npm start` runs): three sample backends on free ports behind one
 * balancer, and a printout of what to try.
 */
import { createBalancer, type Balancer } from '../index.ts';
import { startSampleBackend, type SampleBackend } from './sample-backend.ts';
import type { FulcrumConfigInput } from '../config/schema.ts';
import { isPortFree } from './ports.ts';
import { randomBytes } from 'node:crypto';

/** A running demo. */
export interface Demo {
  balancer: Balancer;
  backends: SampleBackend[];
  url: string;
  /** The admin API and dashboard. */
  adminUrl: string;
  /** The admin token of this run (writes need it; the dashboard link carries it). */
  adminToken: string;
  close(): Promise<void>;
}

/** Starts the demo; `port` is where the balancer listens (default 8080, or a free one if taken). */
export async function startDemo(options: { port?: number; backends?: number; policy?: string; host?: string; adminPort?: number } = {}): Promise<Demo> {
  const count = options.backends ?? 3;
  const backends: SampleBackend[] = [];
  for (let i = 1; i <= count; i++) backends.push(await startSampleBackend({ id: String(i), port: 0 }));
  const host = options.host ?? '127.0.0.1';
  let port = options.port ?? 8080;
  if (options.port === undefined && !(await isPortFree(port, host))) port = 0;
  let adminPort = options.adminPort ?? 9901;
  if (options.adminPort === undefined && !(await isPortFree(adminPort, '127.0.0.1'))) adminPort = 0;
  const adminToken = randomBytes(16).toString('hex');
  const config: FulcrumConfigInput = {
    listeners: [{ name: 'demo', host, port }],
    // Quick checks so that telling a backend to fail shows it leave the rotation in seconds.
    pools: {
      demo: {
        policy: options.policy ?? 'round-robin',
        upstreams: backends.map((b) => b.url),
        health_check: { path: '/health', interval: '2s', fast_interval: '500ms', timeout: '1s' },
      },
    },
    admin: { host: '127.0.0.1', port: adminPort, token: adminToken },
  };
  const balancer = createBalancer(config);
  const [address] = await balancer.start();
  return {
    balancer,
    backends,
    url: address.url,
    adminUrl: balancer.adminAddress()!.url,
    adminToken,
    async close() {
      await balancer.close(2000);
      await Promise.all(backends.map((b) => b.close()));
    },
  };
}

/** The text printed when the demo is up. */
export function demoBanner(demo: Demo): string {
  const u = demo.url;
  const ws = u.replace(/^http/, 'ws');
  const lines = [
    '',
    `  Fulcrum demo is running: ${u}`,
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
    '',
    '  Ctrl-C stops it gracefully.',
    '',
  ];
  return lines.join('\n');
}
