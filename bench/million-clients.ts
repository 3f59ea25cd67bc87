/**
 * Memory bound of the rate-limit table through a real Fulcrum process: one million distinct
 * client addresses (X-Forwarded-For from a trusted proxy), one hot client among them.
 *   node bench/million-clients.ts [--clients N] [--max-entries N]
 * Prints Fulcrum's RSS before and after, and whether the hot client was still limited.
 * Not part of npm test (it takes a minute or two); its figure is quoted in the issue notes.
 */
import http from 'node:http';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

const { values } = parseArgs({ options: { clients: { type: 'string', default: '1000000' }, 'max-entries': { type: 'string', default: '100000' } } });
const clients = Number(values.clients);
const maxEntries = Number(values['max-entries']);

const backend = http.createServer((_req, res) => res.end('ok'));
await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
const backendPort = (backend.address() as { port: number }).port;

const dir = mkdtempSync(join(tmpdir(), 'fulcrum-million-'));
const config = join(dir, 'fulcrum.yaml');
writeFileSync(
  config,
  `listeners: [{host: 127.0.0.1, port: 0, trusted_proxies: ["127.0.0.1"]}]
log: {level: info, access_log: false, format: json}
rate_limit: {max_entries: ${maxEntries}}
routes: [{pool: web${process.env.NO_LIMIT ? "" : ", rate_limits: [{rate: 10, per: 1s, burst: 10}]"}}]
pools: {web: {upstreams: ["http://127.0.0.1:${backendPort}"]}}
`,
);
// With the V8 flags bin/fulcrum.js gives `fulcrum start`.
const fulcrum = spawn(process.execPath, ['--max-semi-space-size=8', new URL('../src/cli.ts', import.meta.url).pathname, 'start', '-c', config], { stdio: ['ignore', 'pipe', 'inherit'] });
process.on('exit', () => fulcrum.kill('SIGKILL'));
let out = '';
fulcrum.stdout.on('data', (d) => (out += d));
const deadline = Date.now() + 15_000;
while (!/listening on http:\/\/[^:]+:(\d+)/.test(out)) {
  if (Date.now() > deadline) throw new Error(`fulcrum did not start:\n${out}`);
  await new Promise((r) => setTimeout(r, 20));
}
const port = Number(/listening on http:\/\/[^:]+:(\d+)/.exec(out)![1]);
const memory = (): { rss: number; hwm: number } => {
  const status = readFileSync(`/proc/${fulcrum.pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)![1]) / 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
};

const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 64, pipelining: 1 });
const ip = (n: number): string => (process.env.SAME_IP ? '10.0.0.1' : `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`);
async function drive(count: number, offset: number, hot: { allowed: number; sent: number } | null): Promise<number[]> {
  const statuses = [0, 0, 0, 0, 0, 0];
  let next = 0;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < count) {
        const n = next++;
        const isHot = hot !== null && n % 100 === 0;
        const res = await pool.request({ path: '/', method: 'GET', headers: { 'x-forwarded-for': isHot ? '192.0.2.1' : ip(offset + n) } });
        await res.body.dump();
        statuses[Math.floor(res.statusCode / 100)]++;
        if (isHot) {
          hot.sent++;
          if (res.statusCode === 200) hot.allowed++;
        }
      }
    }),
  );
  return statuses;
}

await drive(5000, 1 << 23, null);
const before = memory();
const hot = { allowed: 0, sent: 0 };
const started = performance.now();
const statuses = await drive(clients, 0, hot);
const seconds = (performance.now() - started) / 1000;
const after = memory();
const hotCeiling = 10 + 10 * seconds;
console.log(`clients: ${clients} distinct addresses in ${seconds.toFixed(1)} s (${Math.round(clients / seconds)} req/s); statuses 2xx ${statuses[2]}, 4xx ${statuses[4]}, 5xx ${statuses[5]}`);
console.log(`fulcrum RSS: ${before.rss.toFixed(0)} MiB before, ${after.rss.toFixed(0)} MiB after (+${(after.rss - before.rss).toFixed(1)} MiB); peak +${(after.hwm - before.hwm).toFixed(1)} MiB; table bound ${maxEntries} entries`);
console.log(`hot client: ${hot.allowed} of ${hot.sent} allowed; ceiling burst + rate x time = ${hotCeiling.toFixed(0)} -> ${hot.allowed <= hotCeiling ? 'limited correctly' : 'NOT LIMITED'}`);
await pool.close();
fulcrum.kill('SIGTERM');
backend.close();
process.exit(hot.allowed <= hotCeiling ? 0 : 1);
