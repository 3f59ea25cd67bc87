/**
 * The access log of a real Fulcrum: the JSON keys and types consumers read, the combined
 * format, batching (`flush` without more traffic, a burst in several writes, stop and exit
 * write the rest), levels, reload switching it on, off, to another format or file, SIGUSR1
 * reopening, and a stdout nobody reads: bounded memory, dropped lines counted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { TestContext } from 'node:test';
import { Client } from 'undici';
import { createBalancer, type FulcrumConfigInput } from '../../src/index.ts';
import { createLogger } from '../../src/observe/logger.ts';
import { closedPort, get, startBackend, startBalancer } from '../helpers/servers.ts';
import { startFulcrumProcess } from '../helpers/fulcrum-process.ts';
import { eventually } from '../helpers/eventually.ts';

const cli = new URL('../../src/cli.ts', import.meta.url).pathname;

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'fulcrum-access-'));
}

/** The lines of a file (none while it does not exist); it must always end with a whole line. */
function fileLines(file: string): string[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  assert.ok(text === '' || text.endsWith('\n'), `${file} ends with a whole line`);
  return text === '' ? [] : text.slice(0, -1).split('\n');
}

/** Access lines (parsed) among JSON log lines. */
function accessRecords(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l.includes('"log":"access"') && l.includes('"msg"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** A balancer whose logger writes into `logs`, built from config (a reload changes its level). */
async function balancerWithLogger(t: TestContext, config: FulcrumConfigInput, level: string) {
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      logs.push(String(chunk));
      callback();
    },
  });
  const logger = createLogger({ level: level as 'info', format: 'json' }, { destination: sink });
  const balancer = createBalancer(config, { logger });
  const [address] = await balancer.start();
  t.after(() => balancer.close(1000));
  return { balancer, logs, url: `http://127.0.0.1:${address.port}`, port: address.port };
}

test('json: the keys and value types consumers read, level 30 and 40, undefined fields left out', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const dead = `http://127.0.0.1:${await closedPort()}`;
  const lb = await startBalancer(t, {
    listeners: [{ name: 'json-keys', host: '127.0.0.1', port: 0 }],
    pools: { web: { upstreams: [backend.url] }, dead: { upstreams: [dead], retry: { max_attempts: 1 } } },
    routes: [{ path_prefix: '/dead', pool: 'dead' }, { pool: 'web' }],
  });
  assert.equal((await get(`${lb.url}/ok?q="x"\\`)).status, 200);
  assert.equal((await get(`${lb.url}/dead/x`)).status, 502);
  const records = (await eventually(() => {
    const r = accessRecords(lb.logs.join('')).filter((l) => l.listener === 'json-keys');
    return r.length === 2 ? r : null;
  }, { what: 'two access lines' }))!;
  const ok = records.find((r) => r.status === 200)!;
  assert.deepEqual(Object.keys(ok), ['level', 'time', 'pid', 'log', 'request_id', 'method', 'path', 'status', 'upstream', 'pool', 'duration_ms', 'bytes_in', 'bytes_out', 'client', 'listener', 'attempts', 'msg']);
  assert.equal(ok.level, 30);
  assert.match(ok.time as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(ok.pid, process.pid);
  assert.equal(ok.log, 'access');
  assert.equal(typeof ok.request_id, 'string');
  assert.equal(ok.method, 'GET');
  const target = new URL(`${lb.url}/ok?q="x"\\`);
  assert.equal(ok.path, target.pathname + target.search);
  assert.equal(ok.upstream, backend.url.slice(7));
  assert.equal(ok.pool, 'web');
  assert.equal(typeof ok.duration_ms, 'number');
  assert.equal(ok.bytes_in, 0);
  assert.equal(ok.bytes_out, 2);
  assert.equal(ok.client, '127.0.0.1');
  assert.equal(ok.attempts, 1);
  assert.equal(ok.msg, `GET ${ok.path as string} 200`);
  const failed = records.find((r) => r.status === 502)!;
  assert.equal(failed.level, 40, '5xx is a warning');
  assert.equal(failed.pool, 'dead');
  assert.equal(typeof failed.error, 'string');
  assert.equal(typeof failed.reason, 'string');
  assert.deepEqual(Object.keys(failed).slice(-4), ['attempts', 'error', 'reason', 'msg']);
});

test('a file: lines are written `flush` after the first one, with no more traffic', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const file = join(tempDir(), 'access.log');
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } }, log: { access_log: { path: file, flush: '500ms' } } });
  for (let i = 0; i < 3; i++) assert.equal((await get(`${lb.url}/flush/${i}`)).status, 200);
  const answered = performance.now();
  const before = fileLines(file).length;
  await eventually(() => fileLines(file).length === 3, { what: 'the three lines' });
  const waited = performance.now() - answered;
  // Unless this machine stalled for the whole interval, nothing was written before it.
  if (waited > 50) assert.equal(before, 0, 'the lines waited for the flush interval');
  assert.deepEqual(fileLines(file).map((l) => (JSON.parse(l) as { path: string }).path), ['/flush/0', '/flush/1', '/flush/2']);
  assert.ok(lb.logs.every((l) => !l.includes('"log":"access"') || !l.includes('/flush/')), 'not in the other log');
});

test('a burst larger than buffer_bytes is written in batches before the flush interval; close writes the rest', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const file = join(tempDir(), 'access.log');
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } }, log: { access_log: { path: file, buffer_bytes: 4096, flush: '1h' } } });
  const client = new Client(lb.url);
  t.after(() => client.close());
  for (let i = 0; i < 60; i++) {
    const r = await client.request({ path: `/burst/${i}/${'p'.repeat(200)}`, method: 'GET' });
    await r.body.text();
  }
  // About 27 kB of lines: every full 4 kB buffer is already in the file, only the last one waits.
  const written = fileLines(file).length;
  assert.ok(written >= 45 && written < 60, `${written} of 60 lines written before close`);
  await lb.balancer.close(1000);
  const lines = fileLines(file).map((l) => (JSON.parse(l) as { path: string }).path);
  assert.deepEqual(lines, Array.from({ length: 60 }, (_, i) => `/burst/${i}/${'p'.repeat(200)}`), 'every line once, in order, after close');
});

test('combined: the nginx line, with user, referer and user agent escaped', async (t) => {
  process.env.TZ = 'UTC';
  const backend = await startBackend(t, (_req, res) => res.end('hello'));
  const file = join(tempDir(), 'access.log');
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } }, log: { access_log: { format: 'combined', path: file, flush: '50ms' } } });
  const headers = { 'user-agent': 'curl/8 "quoted"', referer: 'http://example.com/a\\b', authorization: `Basic ${Buffer.from('alice:secret').toString('base64')}` };
  assert.equal((await get(`${lb.url}/c?x=1`, { headers })).status, 200);
  assert.equal((await get(`${lb.url}/nothing-else`)).status, 200);
  await eventually(() => fileLines(file).length === 2, { what: 'two combined lines' });
  const [first, second] = fileLines(file);
  assert.match(first, /^127\.0\.0\.1 - alice \[\d\d\/[A-Z][a-z]{2}\/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET \/c\?x=1 HTTP\/1\.1" 200 5 "http:\/\/example\.com\/a\\x5Cb" "curl\/8 \\x22quoted\\x22"$/);
  assert.match(second, /^127\.0\.0\.1 - - \[[^\]]+\] "GET \/nothing-else HTTP\/1\.1" 200 5 "-" "-"$/);
});

test('levels: at warn only 5xx lines, at silent none; a reload to info brings the rest', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    res.statusCode = req.url === '/fail' ? 500 : 200;
    res.end('x');
  });
  const file = join(tempDir(), 'access.log');
  const config = (level: 'warn' | 'info' | 'silent'): FulcrumConfigInput => ({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [backend.url] } }, log: { level, access_log: { path: file, flush: '20ms' } } });
  // The balancer's own logger (none given): its level follows log.level, and a reload's.
  const lb = createBalancer(config('warn'));
  const [address] = await lb.start();
  t.after(() => lb.close(1000));
  const url = `http://127.0.0.1:${address.port}`;
  const statuses = (): number[] => fileLines(file).map((l) => (JSON.parse(l) as { status: number }).status);
  assert.equal((await get(`${url}/fine`)).status, 200);
  assert.equal((await get(`${url}/fail`)).status, 500);
  await eventually(() => statuses().length === 1, { what: 'the 5xx line' });
  assert.equal((JSON.parse(fileLines(file)[0]) as { level: number }).level, 40);
  await lb.reload({ ...config('silent'), listeners: [{ host: '127.0.0.1', port: address.port }] });
  assert.equal((await get(`${url}/fail`)).status, 500);
  await lb.reload({ ...config('info'), listeners: [{ host: '127.0.0.1', port: address.port }] });
  assert.equal((await get(`${url}/fine`)).status, 200);
  await eventually(() => statuses().length === 2, { what: 'the info line' });
  assert.deepEqual(statuses(), [500, 200], 'nothing while silent; 2xx again at info');

  // An embedder's logger at warn: the same rule, through its own destination.
  const own = await balancerWithLogger(t, { listeners: [{ name: 'own-warn', host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [backend.url] } } }, 'warn');
  assert.equal((await get(`${own.url}/fine`)).status, 200);
  assert.equal((await get(`${own.url}/fail`)).status, 500);
  await eventually(() => accessRecords(own.logs.join('')).length === 1, { what: 'one line at warn' });
  assert.deepEqual(accessRecords(own.logs.join('')).map((r) => [r.level, r.status]), [[40, 500]]);
});

test('reload: the access log goes off, on, to another format and another file at once; SIGUSR1 reopens the file', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const dir = tempDir();
  const a = join(dir, 'a.log');
  const b = join(dir, 'b.log');
  const pools = { web: { upstreams: [backend.url] } };
  const lb = await startBalancer(t, { pools, log: { access_log: { path: a, flush: '20ms' } } });
  const reload = (access_log: NonNullable<FulcrumConfigInput['log']>['access_log']) => lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools, log: { access_log } });
  const hit = async (path: string): Promise<void> => assert.equal((await get(`${lb.url}${path}`)).status, 200);

  await hit('/one');
  await eventually(() => fileLines(a).length === 1, { what: 'a json line in a' });
  await reload({ path: a, format: 'combined', flush: '20ms' });
  await hit('/two');
  await eventually(() => fileLines(a).length === 2, { what: 'a combined line in a' });
  assert.match(fileLines(a)[1], /^127\.0\.0\.1 - - \[.*\] "GET \/two HTTP\/1\.1" 200 2 "-" "-"$/);
  await reload(false);
  await hit('/off');
  await reload({ path: b, flush: '20ms' });
  await hit('/three');
  await eventually(() => fileLines(b).length === 1, { what: 'a line in b' });
  assert.equal(fileLines(a).length, 2, 'nothing logged while off');
  assert.equal((JSON.parse(fileLines(b)[0]) as { path: string }).path, '/three');

  // logrotate: move the file away, SIGUSR1, and the next line starts a new file.
  renameSync(b, `${b}.1`);
  process.kill(process.pid, 'SIGUSR1');
  await hit('/four');
  await eventually(() => fileLines(b).length === 1, { what: 'a line in the new b' });
  assert.equal((JSON.parse(fileLines(b)[0]) as { path: string }).path, '/four');
  assert.equal(fileLines(`${b}.1`).length, 1, 'the moved file keeps its line');
});

test('start: an access log file that cannot be opened is a configuration error naming the key', async () => {
  const file = join(tempDir(), 'no-such-dir', 'access.log');
  const lb = createBalancer({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } }, log: { level: 'silent', access_log: { path: file } } });
  await assert.rejects(lb.start(), (err: Error) => /log\.access_log\.path: cannot open the access log file: ENOENT/.test(err.message));
  await lb.close(0);
});

test('Fulcrum on stdout: a graceful stop writes the waiting lines; process.exit (a second SIGTERM) too', { timeout: 60_000 }, async (t) => {
  let hold: (() => void) | null = null;
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/hang') hold = () => res.end('late');
    else res.end('ok');
  });
  const yaml = (flush: string): string => `listeners: [{host: 127.0.0.1, port: 0}]\nlog: {level: info, access_log: {flush: ${flush}}}\nshutdown: {grace_period: 30s}\npools:\n  web:\n    upstreams: ["${backend.url}"]\n`;

  // A graceful stop: the lines wait for an hour, SIGTERM writes them.
  const graceful = await startFulcrumProcess(t, yaml('1h'));
  for (let i = 0; i < 5; i++) assert.equal((await get(`${graceful.url}/graceful/${i}`)).status, 200);
  assert.equal(accessRecords(graceful.output()).length, 0, 'nothing written yet');
  graceful.child.kill('SIGTERM');
  assert.deepEqual(await graceful.exited, { code: 0, signal: null });
  assert.deepEqual(accessRecords(graceful.output()).map((r) => r.path), [0, 1, 2, 3, 4].map((i) => `/graceful/${i}`));

  // process.exit: a request holds the graceful stop open, a second SIGTERM exits at once.
  const abrupt = await startFulcrumProcess(t, yaml('1h'));
  for (let i = 0; i < 5; i++) assert.equal((await get(`${abrupt.url}/abrupt/${i}`)).status, 200);
  const hanging = get(`${abrupt.url}/hang`).catch(() => null);
  await eventually(() => hold !== null, { what: 'the request to hang at the backend' });
  abrupt.child.kill('SIGTERM');
  await eventually(() => abrupt.output().includes('shutting down'), { what: 'the graceful stop to start' });
  // The CLI takes a second signal within 200 ms for the same one (npm forwards Ctrl-C): send it after that.
  const firstAt = performance.now();
  await eventually(() => performance.now() - firstAt > 250, { what: 'the 200 ms a repeated signal is ignored for' });
  abrupt.child.kill('SIGTERM');
  assert.deepEqual(await abrupt.exited, { code: 1, signal: null });
  hold!();
  await hanging;
  assert.deepEqual(accessRecords(abrupt.output()).map((r) => r.path), [0, 1, 2, 3, 4].map((i) => `/abrupt/${i}`));
});

test('a stdout nobody reads: memory stays bounded, dropped lines are counted in lb_access_log_dropped_total and said once', { timeout: 120_000 }, async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const dir = tempDir();
  const file = join(dir, 'fulcrum.yaml');
  writeFileSync(
    file,
    `listeners: [{host: 127.0.0.1, port: 0, metrics_path: /metrics}]\nlog: {level: info, access_log: {buffer_bytes: 16384, flush: 50ms}}\npools:\n  web:\n    upstreams: ["${backend.url}"]\n`,
  );
  const child = spawn(process.execPath, ['--max-semi-space-size=8', cli, 'start', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FULCRUM_LOG_FORMAT: 'json' } });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const onData = (d: Buffer): void => void (out += d);
  child.stdout!.on('data', onData);
  child.stderr!.on('data', (d) => (out += d));
  const port = Number((await eventually(() => /listening on http:\/\/[^:]+:(\d+)/.exec(out), { timeout: 15_000, what: 'fulcrum to listen' }))![1]);
  // From here nobody reads Fulcrum's stdout: the pipe fills up and stays full.
  child.stdout!.off('data', onData);
  child.stdout!.pause();
  const rss = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) * 1024;
  const clients = Array.from({ length: 4 }, () => new Client(`http://127.0.0.1:${port}`, { pipelining: 1 }));
  t.after(() => Promise.all(clients.map((c) => c.close())));
  // 8 kB request-targets (the default max_url_bytes): lines of about 8 kB.
  const path = `/${'u'.repeat(8000)}`;
  const send = (n: number): Promise<void[]> =>
    Promise.all(
      clients.map(async (client) => {
        for (let i = 0; i < n / clients.length; i++) {
          const r = await client.request({ path, method: 'GET' });
          await r.body.text();
        }
      }),
    );
  await send(400); // fills the pipe, and warms up
  const before = rss();
  // 6000 more lines: 48 MB that would have to wait somewhere if nothing were dropped.
  await send(6000);
  const grown = rss() - before;
  assert.ok(grown < 20 * 1024 * 1024, `RSS grew ${(grown / 1048576).toFixed(1)} MB while 48 MB of lines were made`);
  t.diagnostic(`RSS grew ${(grown / 1048576).toFixed(1)} MB while 48 MB of lines were made`);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const dropped = Number(/^lb_access_log_dropped_total (\d+)/m.exec(metrics)?.[1]);
  assert.ok(dropped > 1000, `lb_access_log_dropped_total ${dropped}`);
  // Reading again: the warning is there, once.
  child.stdout!.on('data', onData);
  child.stdout!.resume();
  await eventually(() => out.includes('lines are dropped'), { timeout: 15_000, what: 'the warning about dropped lines' });
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
  assert.equal(out.split('lines are dropped').length - 1, 1, 'said once');
  // Whatever reached stdout is whole JSON lines.
  for (const line of out.split('\n').filter((l) => l.startsWith('{'))) JSON.parse(line);
});
