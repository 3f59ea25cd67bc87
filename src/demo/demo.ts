/**
 * `fulcrum demo` (what `npm start` runs): three sample backends on free ports behind one
 * balancer, and a printout of what to try.
 */
import { createBalancer, type Balancer } from '../index.ts';
import { startSampleBackend, type SampleBackend } from './sample-backend.ts';
import type { FulcrumConfigInput } from '../config/schema.ts';
import { isPortFree } from './ports.ts';

/** A running demo. */
export interface Demo {
  balancer: Balancer;
  backends: SampleBackend[];
  url: string;
  close(): Promise<void>;
}

/** Starts the demo; `port` is where the balancer listens (default 8080, or a free one if taken). */
export async function startDemo(options: { port?: number; backends?: number; policy?: string; host?: string } = {}): Promise<Demo> {
  const count = options.backends ?? 3;
  const backends: SampleBackend[] = [];
  for (let i = 1; i <= count; i++) backends.push(await startSampleBackend({ id: String(i), port: 0 }));
  const host = options.host ?? '127.0.0.1';
  let port = options.port ?? 8080;
  if (options.port === undefined && !(await isPortFree(port, host))) port = 0;
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
  };
  const balancer = createBalancer(config);
  const [address] = await balancer.start();
  return {
    balancer,
    backends,
    url: address.url,
    async close() {
      await balancer.close(2000);
      await Promise.all(backends.map((b) => b.close()));
    },
  };
}

/** The text printed when the demo is up. */
export function demoBanner(demo: Demo): string {
  const u = demo.url;
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
    '  Ctrl-C stops it gracefully.',
    '',
  ];
  return lines.join('\n');
}
