/**
 * Edge cases found in review: breaker state across a reload that turns the breaker off, series
 * of a backend removed and added again, persisting with runtime changes in several pools,
 * token files, prototype-named pools, DNS rebinding, reloads after close, event-stream
 * backpressure, odd upstream URLs and a CLI pointed at a file it cannot read.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { AdminClient, createBalancer, loadConfigText } from '../../src/index.ts';
import { createLogger } from '../../src/observe/logger.ts';

const token = 'edge-case-admin-token-0123456789';
const quiet = () => createLogger({ level: 'silent', format: 'json' });

test('a reload that turns the circuit breaker off closes an open circuit', { timeout: 20_000 }, async (t) => {
  let fail = true;
  const b = await startBackend(t, (_req, res) => {
    res.statusCode = fail ? 503 : 200;
    res.end();
  });
  const pool = (enabled: boolean) => ({ upstreams: [b.url], retry: { max_attempts: 1 }, outlier_detection: { enabled: false }, circuit_breaker: { enabled, min_requests: 2, error_rate: 0.5, open_time: '200ms', half_open_requests: 1 } });
  const lb = await startBalancer(t, { pools: { web: pool(true) } });
  const u = () => lb.balancer.pools().get('web')!.upstreams[0];
  for (let i = 0; i < 5 && u().circuit !== 'open'; i++) await fetch(lb.url).then((r) => r.arrayBuffer());
  assert.equal(u().circuit, 'open');
  fail = false;
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: pool(false) } });
  assert.equal(u().circuit, 'closed', 'closed at once');
  const statuses = await Promise.all(Array.from({ length: 10 }, () => fetch(lb.url).then((r) => r.status)));
  assert.deepEqual(statuses, Array(10).fill(200), 'no half-open cap left behind');
});

test('metrics: a backend removed and added again keeps one series', async (t) => {
  const a = await startBackend(t, (_req, res) => res.end('a'));
  const b = await startBackend(t, (_req, res) => res.end('b'));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url, b.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  for (let i = 0; i < 4; i++) await fetch(lb.url).then((r) => r.text());
  await admin.removeBackend({ url: b.url });
  await admin.addBackend({ url: b.url });
  for (let i = 0; i < 4; i++) await fetch(lb.url).then((r) => r.text());
  const scrape = await admin.metrics();
  const id = new URL(b.url).host;
  const lines = scrape.split('\n').filter((l) => l.startsWith(`lb_request_duration_seconds_count{pool="web",backend="${id}"}`));
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.equal(lines[0].split(' ')[1], '4');
});

test('persist writes every pool with runtime changes, not only the one just changed', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-edge-'));
  const file = path.join(dir, 'f.yaml');
  const [a, b] = await Promise.all([startBackend(t, (_q, r) => r.end('a')), startBackend(t, (_q, r) => r.end('b'))]);
  const text = (persist: boolean) => `listeners: [{host: 127.0.0.1, port: 0}]
pools:
  a: {upstreams: [http://127.0.0.1:1]}
  b: {upstreams: [http://127.0.0.1:2]}
routes: [{path_prefix: /a, pool: a}, {pool: b}]
admin: {host: 127.0.0.1, port: 0, token: ${token}, persist: ${persist}}
`;
  writeFileSync(file, text(false));
  const lb = await startBalancer(t, loadConfigText(text(false), file).config, { configFile: file });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  await admin.addBackend({ url: a.url, pool: 'a' });
  writeFileSync(file, text(true));
  await lb.balancer.reloadFile('signal');
  assert.equal(lb.balancer.status().runtime_changes.length, 1, 'the runtime add to pool a survived the reload');
  await admin.addBackend({ url: b.url, pool: 'b' });
  const written = loadConfigText(readFileSync(file, 'utf8'), file).config;
  assert.deepEqual(written.pools.a.upstreams.map((u) => u.url), ['http://127.0.0.1:1', a.url]);
  assert.deepEqual(written.pools.b.upstreams.map((u) => u.url), ['http://127.0.0.1:2', b.url]);
  assert.equal(lb.balancer.status().runtime_changes.length, 0);
  await lb.balancer.reloadFile('signal');
  assert.deepEqual(lb.balancer.pools().get('a')!.upstreams.map((u) => u.origin), ['http://127.0.0.1:1', a.url], 'nothing vanished');
});

test('admin: a token file with a space is refused at start; pools named like Object members are 404; reloads after close are refused', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-edge-'));
  writeFileSync(path.join(dir, 'token'), 'correct horse battery staple\n');
  const bad = createBalancer({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } }, admin: { host: '127.0.0.1', port: 0, token_file: path.join(dir, 'token') } }, { logger: quiet() });
  await assert.rejects(bad.start(), /printable ASCII without spaces/);
  await bad.close(0);

  const lb = await startBalancer(t, { pools: { web: { upstreams: ['http://127.0.0.1:1'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const url = lb.balancer.adminAddress()!.url;
  for (const pool of ['toString', '__proto__', 'constructor', 'hasOwnProperty']) {
    const res = await fetch(`${url}/backends`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: JSON.stringify({ url: 'http://127.0.0.1:3', pool }) });
    assert.equal(res.status, 404, pool);
  }
  const other = createBalancer({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } }, { logger: quiet() });
  await other.start();
  await other.close(0);
  await assert.rejects(other.reload({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: ['http://127.0.0.1:2'] } } }), /shutting down/);
});

test('admin: reads that arrive under a non-loopback Host name need the token (DNS rebinding)', async (t) => {
  const lb = await startBalancer(t, { pools: { web: { upstreams: ['http://127.0.0.1:1'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const { port } = lb.balancer.adminAddress()!;
  const status = (host: string, auth?: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(`GET /status HTTP/1.1\r\nHost: ${host}\r\n${auth ? `Authorization: Bearer ${auth}\r\n` : ''}Connection: close\r\n\r\n`));
      let data = '';
      s.on('data', (c) => (data += c));
      s.on('end', () => resolve(Number(data.split(' ')[1])));
      s.on('error', reject);
    });
  assert.equal(await status(`127.0.0.1:${port}`), 200);
  assert.equal(await status(`localhost:${port}`), 200);
  assert.equal(await status(`[::1]:${port}`), 200);
  assert.equal(await status(`attacker.example:${port}`), 401);
  assert.equal(await status(`attacker.example:${port}`, token), 200);
});

test('admin: an event stream whose reader stalls is closed instead of buffered without end', { timeout: 60_000 }, async (t) => {
  // Many upstreams make each sample large, so the socket buffers fill within seconds.
  const upstreams = Array.from({ length: 3000 }, (_, i) => `http://127.0.0.1:${20000 + i}`);
  const lb = await startBalancer(t, { pools: { web: { upstreams } }, admin: { host: '127.0.0.1', port: 0, token } });
  const { port } = lb.balancer.adminAddress()!;
  const socket = net.connect(port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.pause(); // never read
  socket.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  // A paused socket reads nothing, so it cannot see the server close it until it reads again.
  await new Promise((resolve) => setTimeout(resolve, 15_000));
  let bytes = 0;
  const ended = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => (bytes += chunk.length));
    socket.on('close', () => resolve());
    socket.on('error', () => {});
  });
  socket.resume();
  const outcome = await Promise.race([ended.then(() => 'closed'), new Promise((resolve) => setTimeout(resolve, 10_000, 'still open'))]);
  t.diagnostic(`${(bytes / 1e6).toFixed(1)} MB were buffered before the server closed the stream`);
  assert.equal(outcome, 'closed', 'the server closed the stream of a reader that stopped');
});

test('upstream URLs that would be changed silently are refused: port 0, a newline, a fragment', () => {
  for (const url of ['http://127.0.0.1:0', 'http://a\nb:1', 'http://127.0.0.1:1#f', 'http://127.0.0.1 :1']) {
    assert.throws(() => loadConfigText(`pools: {web: {upstreams: [${JSON.stringify(url)}]}}`, 'x.yaml'), /upstream|port 0/, url);
  }
});

test('CLI: a config file it cannot read or parse is an error, not a fallback to the default port', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-edge-'));
  writeFileSync(path.join(dir, 'broken.yaml'), 'admin: {port: 19999\n  bad: [\n');
  const run = (args: string[]): Promise<{ code: number; stderr: string }> =>
    new Promise((resolve) => execFile(process.execPath, [path.resolve(import.meta.dirname, '../../src/cli.ts'), ...args], { cwd: dir, timeout: 20_000 }, (err, _out, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr })));
  const missing = await run(['status', '-c', 'nope.yaml']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /nope\.yaml: no such file/);
  const broken = await run(['status', '-c', 'broken.yaml']);
  assert.equal(broken.code, 1);
  assert.match(broken.stderr, /cannot find the admin API from broken\.yaml/);
  const scheme = await run(['status', '--admin', 'ftp://127.0.0.1:1']);
  assert.equal(scheme.code, 1);
  assert.match(scheme.stderr, /must be http/);
});

test('watch: a Kubernetes-style ConfigMap update (a ..data symlink swapped next to the file) reloads', { timeout: 20_000 }, async (t) => {
  const { mkdirSync, symlinkSync, renameSync } = await import('node:fs');
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-cm-'));
  const [a, b] = await Promise.all([startBackend(t, (_q, r) => r.end('a')), startBackend(t, (_q, r) => r.end('b'))]);
  const version = (name: string, upstreams: string[]): void => {
    mkdirSync(path.join(dir, name));
    writeFileSync(path.join(dir, name, 'fulcrum.yaml'), `listeners: [{host: 127.0.0.1, port: 0}]\npools: {web: {upstreams: ${JSON.stringify(upstreams)}}}\nreload: {watch: true, debounce: 50ms}\n`);
  };
  version('..2026_v1', [a.url]);
  symlinkSync('..2026_v1', path.join(dir, '..data'));
  symlinkSync('..data/fulcrum.yaml', path.join(dir, 'fulcrum.yaml'));
  const file = path.join(dir, 'fulcrum.yaml');
  const lb = await startBalancer(t, loadConfigText(readFileSync(file, 'utf8'), file).config, { configFile: file });
  version('..2026_v2', [a.url, b.url]);
  symlinkSync('..2026_v2', path.join(dir, '..data_tmp'));
  renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  await eventually(() => lb.balancer.pools().get('web')!.upstreams.length === 2, { timeout: 5000, what: 'the swapped ConfigMap reloaded' });
  assert.ok(lb.logs.some((l) => l.includes('configuration reloaded (watch): pool web: +1 upstream')));
});

test('admin writes are logged with the caller and the outcome', async (t) => {
  const lb = await startBalancer(t, { pools: { web: { upstreams: ['http://127.0.0.1:1', 'http://127.0.0.1:2'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const url = lb.balancer.adminAddress()!.url;
  await fetch(`${url}/backends/drain`, { method: 'POST', body: JSON.stringify({ url: 'http://127.0.0.1:2' }) });
  await fetch(`${url}/backends/drain`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: JSON.stringify({ url: 'http://127.0.0.1:2' }) });
  await eventually(() => lb.logs.filter((l) => l.includes('"admin":true')).length === 2, { what: 'two audit lines' });
  const lines = lb.logs.filter((l) => l.includes('"admin":true')).map((l) => JSON.parse(l) as { level: number; status: number; client: string; path: string });
  assert.deepEqual(lines.map((l) => [l.level, l.status, l.path]), [[40, 401, '/backends/drain'], [30, 200, '/backends/drain']]);
  assert.match(lines[0].client, /127\.0\.0\.1/);
});

test('a request without Host is refused with 400 by Fulcrum itself, so it is counted', async (t) => {
  const seen: string[] = [];
  const b = await startBackend(t, (req, res) => {
    seen.push(req.url ?? '');
    res.end('ok');
  });
  const lb = await startBalancer(t, { pools: { web: { upstreams: [b.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const raw = (text: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const s = net.connect(lb.port, '127.0.0.1', () => s.write(text));
      let data = '';
      s.on('data', (c) => (data += c));
      s.on('end', () => resolve(data));
      s.on('error', reject);
    });
  assert.match(await raw('GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 400 /);
  assert.match(await raw('GET /http10 HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 200 /, 'HTTP/1.0 needs no Host');
  assert.deepEqual(seen, ['/http10']);
  const scrape = await new AdminClient({ url: lb.balancer.adminAddress()!.url }).metrics();
  assert.match(scrape, /^lb_request_errors_total\{code="FUL_BAD_REQUEST"\} 1$/m);
  assert.match(scrape, /^lb_requests_total\{pool="none",backend="none",method="GET",status="400"\} 1$/m);
});

test('a reload that moves a listener says a restart is needed (answer, /status) and the old port keeps serving', async (t) => {
  const b = await startBackend(t, (_q, r) => r.end('b'));
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-edge-'));
  const file = path.join(dir, 'f.yaml');
  const text = (port: number) => `listeners: [{host: 127.0.0.1, port: ${port}}]\npools: {web: {upstreams: ["${b.url}"]}}\nadmin: {host: 127.0.0.1, port: 0, token: ${token}}\n`;
  writeFileSync(file, text(0));
  const lb = await startBalancer(t, loadConfigText(text(0), file).config, { configFile: file });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  assert.deepEqual(lb.balancer.status().restart_needed, []);
  writeFileSync(file, text(lb.port + 1 > 65535 ? lb.port - 1 : lb.port + 1));
  const result = await admin.reload();
  assert.equal(result.warnings?.length, 2, JSON.stringify(result));
  assert.match(result.warnings![0], /is new or moved: it starts listening on restart/);
  assert.match(result.warnings![1], /keeps listening until restart/);
  assert.equal(lb.balancer.status().restart_needed.length, 2);
  assert.equal(await fetch(lb.url).then((r) => r.text()), 'b', 'the old port still serves');
  const again = await admin.reload();
  assert.equal(again.warnings?.length, 2, 'still pending on the next reload');
});

test('a renamed pool keeps its upstreams\' state; the runtime changes of the old name are reported as dropped', async (t) => {
  const [a, b] = await Promise.all([startBackend(t, (_q, r) => r.end('a')), startBackend(t, (_q, r) => r.end('b'))]);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  await admin.addBackend({ url: b.url });
  for (let i = 0; i < 4; i++) await fetch(lb.url).then((r) => r.text());
  const before = lb.balancer.pools().get('web')!.upstreams[0];
  const result = await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { site: { upstreams: [a.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const after = lb.balancer.pools().get('site')!.upstreams[0];
  assert.equal(after, before, 'the same upstream object, with its counters');
  assert.equal(after.served, 2);
  assert.equal(result.dropped?.length, 1);
  assert.match(result.dropped![0], /pool web is no longer in the configuration/);
});

test('metrics: per-backend failure counters show at 0 from the first scrape; /ready names pools with nothing available; /status has seed 002\'s healthy', async (t) => {
  const a = await startBackend(t, (_q, r) => r.end('a'));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url] }, spare: { upstreams: ['http://127.0.0.1:1'] } }, routes: [{ path_prefix: '/spare', pool: 'spare' }, { pool: 'web' }], admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  const scrape = await admin.metrics();
  const id = new URL(a.url).host;
  assert.match(scrape, new RegExp(`^lb_retries_total\\{pool="web",backend="${id}"\\} 0$`, 'm'));
  assert.match(scrape, new RegExp(`^lb_backend_ejections_total\\{pool="web",backend="${id}"\\} 0$`, 'm'));
  await admin.disable({ url: 'http://127.0.0.1:1' });
  const ready = await (await fetch(`${lb.balancer.adminAddress()!.url}/ready`)).json();
  assert.deepEqual(ready, { ready: true, active_backends: 1, unavailable_pools: ['spare'] });
  assert.equal((await admin.status()).backends.find((x) => x.id === id)!.healthy, true);
});

test('metrics: a request the backup pool could not take is counted under the pool of the upstream that failed', async (t) => {
  const dead = 'http://127.0.0.1:1';
  const lb = await startBalancer(t, { pools: { main: { upstreams: [dead], backup: 'spare', retry: { max_attempts: 2 } }, spare: { upstreams: ['http://127.0.0.1:2'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  await admin.disable({ url: 'http://127.0.0.1:2' });
  assert.equal((await fetch(lb.url)).status, 502);
  const scrape = await admin.metrics();
  assert.match(scrape, /^lb_requests_total\{pool="main",backend="127\.0\.0\.1:1",method="GET",status="502"\} 1$/m);
  assert.doesNotMatch(scrape, /lb_requests_total\{pool="spare",backend="127\.0\.0\.1:1"/);
});

test('watch: a busy file next to the configuration does not put a reload off', { timeout: 20_000 }, async (t) => {
  const [a, b] = await Promise.all([startBackend(t, (_q, r) => r.end('a')), startBackend(t, (_q, r) => r.end('b'))]);
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-edge-'));
  const file = path.join(dir, 'fulcrum.yaml');
  const text = (ups: string[]) => `listeners: [{host: 127.0.0.1, port: 0}]\npools: {web: {upstreams: ${JSON.stringify(ups)}}}\nreload: {watch: true, debounce: 200ms}\n`;
  writeFileSync(file, text([a.url]));
  const lb = await startBalancer(t, loadConfigText(text([a.url]), file).config, { configFile: file });
  const { appendFileSync } = await import('node:fs');
  const busy = setInterval(() => appendFileSync(path.join(dir, 'access.log'), 'line\n'), 50);
  t.after(() => clearInterval(busy));
  await new Promise((r) => setTimeout(r, 300));
  const saved = Date.now();
  writeFileSync(file, text([a.url, b.url]));
  await eventually(() => lb.balancer.pools().get('web')!.upstreams.length === 2, { timeout: 5000, what: 'reloaded while the neighbour keeps writing' });
  t.diagnostic(`reloaded ${Date.now() - saved} ms after the save`);
  assert.ok(Date.now() - saved < 2000);
});

test('listeners pair one to one on reload: two port-0 listeners keep their own settings', async (t) => {
  const b = await startBackend(t, (_q, r) => r.end('b'));
  const two = [{ host: '127.0.0.1', port: 0, name: 'one' }, { host: '127.0.0.1', port: 0, name: 'two' }];
  const lb = await startBalancer(t, { listeners: two, pools: { web: { upstreams: [b.url] } } });
  const [one, second] = lb.balancer.addresses();
  const result = await lb.balancer.reload({ listeners: [two[0], { ...two[1], firewall: { deny: ['127.0.0.0/8'] } }], pools: { web: { upstreams: [b.url] } } });
  assert.deepEqual(result.warnings ?? [], [], 'nothing waits for a restart');
  assert.equal(await fetch(one.url).then((r) => r.text()), 'b', 'the first listener still serves');
  await assert.rejects(fetch(second.url), 'the second one took the firewall');
  const third = await lb.balancer.reload({ listeners: [...two, { host: '127.0.0.1', port: 0, name: 'three' }], pools: { web: { upstreams: [b.url] } } });
  assert.deepEqual(third.warnings, ['listener 127.0.0.1:0 is new or moved: it starts listening on restart (the running listeners keep their addresses)']);
});

test('a drained upstream in a renamed pool stays drained and listed as runtime-only', async (t) => {
  const lb = await startBalancer(t, { pools: { a: { upstreams: ['http://127.0.0.1:1', 'http://127.0.0.1:2'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  await admin.drain({ url: 'http://127.0.0.1:1' });
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { b: { upstreams: ['http://127.0.0.1:1', 'http://127.0.0.1:2'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const status = await admin.status();
  assert.equal(status.backends.find((x) => x.id === '127.0.0.1:1')!.draining, true);
  assert.equal(status.backends.find((x) => x.id === '127.0.0.1:1')!.runtime_only, true);
  assert.deepEqual(status.runtime_changes.map((c) => [c.action, c.pool, c.upstream]), [['drain', 'b', '127.0.0.1:1']]);
});

test('watch: a symlink re-pointed to a new target keeps being followed', { timeout: 20_000 }, async (t) => {
  const { symlinkSync, renameSync, appendFileSync } = await import('node:fs');
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((id) => startBackend(t, (_q, r) => r.end(id))));
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-edge-'));
  const text = (ups: string[]) => `listeners: [{host: 127.0.0.1, port: 0}]\nreload: {watch: true, debounce: 50ms}\npools:\n  web:\n    upstreams: ${JSON.stringify(ups)}\n`;
  writeFileSync(path.join(dir, 'real1.yaml'), text([a.url]));
  writeFileSync(path.join(dir, 'real2.yaml'), text([a.url, b.url]));
  symlinkSync('real1.yaml', path.join(dir, 'config.yaml'));
  const file = path.join(dir, 'config.yaml');
  const lb = await startBalancer(t, loadConfigText(readFileSync(file, 'utf8'), file).config, { configFile: file });
  const count = () => lb.balancer.pools().get('web')!.upstreams.length;
  symlinkSync('real2.yaml', path.join(dir, 'config.tmp'));
  renameSync(path.join(dir, 'config.tmp'), file);
  await eventually(() => count() === 2, { timeout: 5000, what: 'the re-pointed link reloaded' });
  writeFileSync(path.join(dir, 'real2.yaml'), text([a.url, b.url, c.url]));
  await eventually(() => count() === 3, { timeout: 5000, what: 'an edit of the new target reloaded' });
  appendFileSync(path.join(dir, 'real1.yaml'), '# old target\n');
});

test('metrics: zero series of backends added and removed many times do not pile up', async (t) => {
  const lb = await startBalancer(t, { pools: { web: { upstreams: ['http://127.0.0.1:1'] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  for (let i = 0; i < 20; i++) {
    await admin.addBackend({ url: `http://127.0.0.1:${1000 + i}` });
    await admin.metrics();
    await admin.removeBackend({ url: `http://127.0.0.1:${1000 + i}` });
  }
  const scrape = await admin.metrics();
  assert.equal(scrape.split('\n').filter((l) => l.startsWith('lb_retries_total{')).length, 1, 'only the current backend');
  assert.equal(scrape.split('\n').filter((l) => l.startsWith('lb_backend_ejections_total{')).length, 1);
});
