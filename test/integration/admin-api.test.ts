/**
 * The admin API through real sockets: raw fetch for status codes and headers, and the typed
 * AdminClient as embedders use it. Every balancer, backend and temp file is made per test on
 * 127.0.0.1 port 0 and closed in t.after.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createBalancer, loadConfigFile, loadConfigText, ConfigError, AdminClient, AdminError, type Balancer } from '../../src/index.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';
import { createLogger } from '../../src/observe/logger.ts';
import { startBackend, get, type TestBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

const TOKEN = 'admin-test-token-0123456789';
const limit = { timeout: 20_000 };

/** A backend answering its name; requests to /hold wait until `release()`. */
async function backend(t: TestContext, name: string): Promise<TestBackend & { held: http.ServerResponse[]; release: () => void; id: string }> {
  const held: http.ServerResponse[] = [];
  const b = await startBackend(t, (req, res) => {
    if (req.url === '/hold') held.push(res);
    else res.end(name);
  });
  const release = (): void => {
    for (const r of held.splice(0)) r.end(name);
  };
  t.after(release);
  return { ...b, held, release, id: `127.0.0.1:${b.port}` };
}

interface Running {
  balancer: Balancer;
  /** The public listener. */
  url: string;
  /** The admin listener, always reached on 127.0.0.1. */
  admin: string;
  client: AdminClient;
  logs: string[];
  file: string | null;
}

function sinkLogger(logs: string[]) {
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(String(chunk));
      cb();
    },
  });
  return createLogger({ level: 'info', format: 'json' }, { destination: sink });
}

async function run(t: TestContext, balancer: Balancer, logs: string[], file: string | null): Promise<Running> {
  const [address] = await balancer.start();
  t.after(() => balancer.close(1000));
  const a = balancer.adminAddress();
  assert.ok(a, 'the admin listener is up');
  const admin = `http://127.0.0.1:${a.port}`;
  return { balancer, url: `http://127.0.0.1:${address.port}`, admin, client: new AdminClient({ url: admin, token: TOKEN, timeout: 5000 }), logs, file };
}

/** A balancer from an object config (no file), admin on 127.0.0.1:0 with TOKEN unless `admin` is given. */
async function startFromObject(t: TestContext, config: Omit<FulcrumConfigInput, 'listeners'>): Promise<Running> {
  const logs: string[] = [];
  const full: FulcrumConfigInput = { listeners: [{ host: '127.0.0.1', port: 0 }], admin: { host: '127.0.0.1', port: 0, token: TOKEN }, ...config };
  return run(t, createBalancer(full, { logger: sinkLogger(logs) }), logs, null);
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-admin-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A balancer started from a configuration file, as `fulcrum start -c FILE` builds it. */
async function startFromFile(t: TestContext, name: string, text: string): Promise<Running> {
  const file = join(tempDir(t), name);
  writeFileSync(file, text);
  const logs: string[] = [];
  return run(t, createBalancer(loadConfigFile(file, {}), { configFile: file, logger: sinkLogger(logs) }), logs, file);
}

/** The YAML of a one-pool configuration on 127.0.0.1:0 with the admin API. */
function yamlConfig(upstreams: string[], extra = '', adminExtra = ''): string {
  return [
    '# fulcrum test configuration: this comment must survive',
    'listeners:',
    '  - host: 127.0.0.1',
    '    port: 0',
    'admin:',
    '  host: 127.0.0.1',
    '  port: 0',
    `  token: ${TOKEN}`,
    ...(adminExtra ? [adminExtra] : []),
    'pools:',
    '  api:',
    ...(extra ? [extra] : []),
    '    upstreams:',
    '      # the first upstream comment',
    ...upstreams.map((u, i) => `      - ${u}${i === 0 ? '  # primary: keep this inline comment' : ''}`),
    '',
  ].join('\n');
}

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

async function call(base: string, method: string, path: string, options: { body?: string | object; token?: string | null } = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  const token = options.token === undefined ? TOKEN : options.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (options.body !== undefined) {
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
    headers['content-type'] = 'application/json';
  }
  const res = await fetch(base + path, { method, headers, body, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** Sends `n` requests through the balancer, one after another; each must answer 200. */
async function traffic(url: string, n: number, path = '/'): Promise<string[]> {
  const bodies: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await get(url + path);
    assert.equal(r.status, 200, `proxied request ${i} answered ${r.status}: ${r.body}`);
    bodies.push(r.body);
  }
  return bodies;
}

const count = (bodies: string[], name: string): number => bodies.filter((b) => b === name).length;

/** What a refused write must leave alone: the backends and the runtime changes. */
async function snapshot(r: Running): Promise<unknown> {
  const s = (await call(r.admin, 'GET', '/status')).json;
  const c = (await call(r.admin, 'GET', '/config')).json;
  return { backends: s.backends, total: s.total_backends, active: s.active_backends, runtime: s.runtime_changes, pools: c.config.pools };
}

// ---------------------------------------------------------------------------------------------

test('GET /status: the seeds\' shape, with counters that follow the traffic', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url, b.url] } } });

  const first = await call(r.admin, 'GET', '/status', { token: null });
  assert.equal(first.status, 200);
  assert.equal(first.json.total_backends, 2);
  assert.equal(first.json.active_backends, 2);
  assert.deepEqual(
    first.json.backends.map((x: any) => ({ url: x.url, alive: x.alive, current_connections: x.current_connections, requests: x.requests })),
    [
      { url: a.url, alive: true, current_connections: 0, requests: 0 },
      { url: b.url, alive: true, current_connections: 0, requests: 0 },
    ],
  );

  const bodies = await traffic(r.url, 6);
  assert.equal(count(bodies, 'a'), 3);
  assert.equal(count(bodies, 'b'), 3);
  const after = (await call(r.admin, 'GET', '/status', { token: null })).json;
  assert.deepEqual(after.backends.map((x: any) => x.requests), [a.requests.length, b.requests.length]);
  assert.deepEqual(after.backends.map((x: any) => x.requests), [3, 3]);

  // One request held open at a backend shows as a current connection there, and only there.
  const pending = get(r.url + '/hold');
  const holder = (await eventually(() => (a.held.length > 0 ? a : b.held.length > 0 ? b : null), { what: 'the held request to arrive' }))!;
  const other = holder === a ? b : a;
  const during = (await r.client.status()).backends;
  assert.equal(during.find((x) => x.url === holder.url)!.current_connections, 1);
  assert.equal(during.find((x) => x.url === other.url)!.current_connections, 0);
  holder.release();
  assert.equal((await pending).status, 200);
  const done = (await eventually(async () => {
    const s = await r.client.status();
    return s.backends.every((x) => x.current_connections === 0) ? s : null;
  }, { what: 'the held request to finish' }))!;
  assert.equal(done.backends.find((x) => x.url === holder.url)!.requests, 4);
  assert.equal(done.backends.find((x) => x.url === other.url)!.requests, 3);

  // GET /backends is the same list.
  const list = await call(r.admin, 'GET', '/backends', { token: null });
  assert.equal(list.status, 200);
  assert.deepEqual(list.json, done.backends);
});

test('POST /backends adds an upstream that gets traffic; DELETE (body or ?url=) takes it out', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url] } } });

  const added = await call(r.admin, 'POST', '/backends', { body: { url: b.url } });
  assert.equal(added.status, 201, added.text);
  assert.deepEqual(added.json.changes, [`pool api: +1 upstream ${b.id}`]);
  assert.equal(added.json.backend.url, b.url);
  assert.equal(added.json.runtime_only, true);
  let s = (await call(r.admin, 'GET', '/status')).json;
  assert.equal(s.total_backends, 2);
  assert.equal(s.active_backends, 2);
  let bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'b'), 2, 'the new upstream takes its share');

  const removed = await call(r.admin, 'DELETE', '/backends', { body: { url: b.url } });
  assert.equal(removed.status, 200, removed.text);
  assert.deepEqual(removed.json.changes, [`pool api: -1 upstream ${b.id}`]);
  const seenByB = b.requests.length;
  bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'a'), 4);
  assert.equal(b.requests.length, seenByB, 'a removed upstream gets nothing');
  s = (await call(r.admin, 'GET', '/status')).json;
  assert.deepEqual(s.backends.map((x: any) => x.url), [a.url]);

  // Through the typed client, and DELETE with ?url= (also in host:port form).
  const again = await r.client.addBackend({ url: b.url, pool: 'api' });
  assert.deepEqual(again.changes, [`pool api: +1 upstream ${b.id}`]);
  bodies = await traffic(r.url, 2);
  assert.equal(count(bodies, 'b'), 1);
  const byQuery = await call(r.admin, 'DELETE', `/backends?url=${encodeURIComponent(b.url)}`);
  assert.equal(byQuery.status, 200, byQuery.text);
  assert.deepEqual(byQuery.json.changes, [`pool api: -1 upstream ${b.id}`]);
  let before = b.requests.length;
  await traffic(r.url, 3);
  assert.equal(b.requests.length, before);
  await r.client.addBackend({ url: b.url });
  const byId = await call(r.admin, 'DELETE', `/backends?url=${b.id}&pool=api`);
  assert.equal(byId.status, 200, byId.text);
  assert.deepEqual(byId.json.changes, [`pool api: -1 upstream ${b.id}`]);
  before = b.requests.length;
  await traffic(r.url, 3);
  assert.equal(b.requests.length, before);
  assert.deepEqual((await r.client.status()).backends.map((x) => x.url), [a.url]);
});

test('PATCH /backends changes the weight, and the traffic follows it', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { policy: 'weighted-round-robin', upstreams: [a.url, b.url] } } });

  let bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'a'), 2);
  const patched = await call(r.admin, 'PATCH', '/backends', { body: { url: a.url, weight: 3 } });
  assert.equal(patched.status, 200, patched.text);
  assert.deepEqual(patched.json.changes, [`pool api: weight of ${a.id} 1 -> 3`]);
  assert.equal(patched.json.backend.weight, 3);
  const s = await r.client.status();
  assert.equal(s.backends.find((x) => x.url === a.url)!.weight, 3);
  assert.equal(s.backends.find((x) => x.url === a.url)!.runtime_only, true);
  assert.deepEqual(s.runtime_changes.map((c) => [c.action, c.upstream, c.weight]), [['weight', a.id, 3]]);
  bodies = await traffic(r.url, 8);
  assert.equal(count(bodies, 'a'), 6, `weights 3:1 over 8 requests: ${bodies.join('')}`);
  assert.equal(count(bodies, 'b'), 2);

  // The client's updateBackend sets it back.
  const back = await r.client.updateBackend({ url: a.url, weight: 1 });
  assert.deepEqual(back.changes, [`pool api: weight of ${a.id} 3 -> 1`]);
  bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'a'), 2);
});

test('drain, enable and disable change `alive` and where the traffic goes', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url, b.url] } } });
  const stateOf = async (url: string) => (await r.client.status()).backends.find((x) => x.url === url)!;

  const drained = await call(r.admin, 'POST', '/backends/drain', { body: { url: a.url } });
  assert.equal(drained.status, 200, drained.text);
  assert.deepEqual(drained.json.changes, [`pool api: ${a.id} draining`]);
  let sa = await stateOf(a.url);
  assert.equal(sa.alive, false);
  assert.equal(sa.draining, true);
  assert.equal((await r.client.status()).active_backends, 1);
  let bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'b'), 4, 'a draining upstream gets no new requests');

  const enabled = await r.client.enable({ url: a.url });
  assert.deepEqual(enabled.changes, [`pool api: ${a.id} no longer draining`]);
  sa = await stateOf(a.url);
  assert.equal(sa.alive, true);
  assert.equal(sa.draining, false);
  bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'a'), 2);

  const disabled = await call(r.admin, 'POST', '/backends/disable', { body: { url: a.url } });
  assert.equal(disabled.status, 200, disabled.text);
  assert.deepEqual(disabled.json.changes, [`pool api: ${a.id} disabled`]);
  sa = await stateOf(a.url);
  assert.equal(sa.alive, false);
  assert.equal(sa.enabled, false);
  const s = await r.client.status();
  assert.deepEqual(s.runtime_changes.map((c) => [c.action, c.upstream]), [['disable', a.id]]);
  bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'b'), 4, 'a disabled upstream gets no requests');

  await r.client.enable({ url: a.url });
  assert.equal((await stateOf(a.url)).alive, true);
  assert.deepEqual((await r.client.status()).runtime_changes, []);
  bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'a'), 2);

  // /backends/undrain and PATCH {draining} are the same switch.
  await r.client.drain({ url: b.url });
  const undrained = await call(r.admin, 'POST', '/backends/undrain', { body: { url: b.url } });
  assert.equal(undrained.status, 200, undrained.text);
  assert.equal((await stateOf(b.url)).alive, true);
  const patched = await call(r.admin, 'PATCH', '/backends', { body: { url: b.url, draining: true } });
  assert.equal(patched.status, 200, patched.text);
  assert.equal((await stateOf(b.url)).draining, true);
});

test('refused writes: a clear message, the right status, and nothing changed', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const c = await backend(t, 'c');
  const r = await startFromObject(t, {
    pools: { api: { upstreams: [a.url, b.url] }, solo: { upstreams: [c.url] } },
    routes: [{ path_prefix: '/solo', pool: 'solo' }, { pool: 'api' }],
  });
  const nowhere = 'http://127.0.0.1:1';
  const cases: { what: string; method: string; path: string; body?: string | object; status: number; error: RegExp; allow?: string }[] = [
    { what: 'missing url', method: 'POST', path: '/backends', body: { pool: 'api' }, status: 400, error: /missing "url"/ },
    { what: 'url not a URL', method: 'POST', path: '/backends', body: { url: 'not a url', pool: 'api' }, status: 400, error: /"url" is not a URL: "not a url"/ },
    { what: 'url not a string', method: 'POST', path: '/backends', body: { url: 42 }, status: 400, error: /"url" must be a string, got 42/ },
    { what: 'url with a path', method: 'POST', path: '/backends', body: { url: 'http://127.0.0.1:1/x', pool: 'api' }, status: 400, error: /an upstream URL has no path \("\/x"\)/ },
    { what: 'unknown field', method: 'POST', path: '/backends', body: { url: nowhere, pool: 'api', colour: 'red' }, status: 400, error: /unknown field "colour"/ },
    { what: 'a field DELETE does not take', method: 'DELETE', path: '/backends', body: { url: a.url, weight: 2 }, status: 400, error: /unknown field "weight"/ },
    { what: 'a field POST does not take', method: 'POST', path: '/backends', body: { url: nowhere, pool: 'api', draining: true }, status: 400, error: /unknown field "draining"/ },
    { what: 'unknown pool', method: 'POST', path: '/backends', body: { url: nowhere, pool: 'nope' }, status: 404, error: /no pool named "nope"; pools: api, solo/ },
    { what: 'which pool', method: 'POST', path: '/backends', body: { url: nowhere }, status: 400, error: /there are 2 pools .*say which with "pool"/ },
    { what: 'remove unknown', method: 'DELETE', path: '/backends', body: { url: nowhere }, status: 404, error: /no upstream 127\.0\.0\.1:1 in any pool/ },
    { what: 'remove unknown by query', method: 'DELETE', path: `/backends?url=${encodeURIComponent(nowhere)}`, status: 404, error: /no upstream 127\.0\.0\.1:1/ },
    { what: 'duplicate', method: 'POST', path: '/backends', body: { url: a.url, pool: 'api' }, status: 409, error: new RegExp(`127\\.0\\.0\\.1:${a.port} is already in pool api`) },
    { what: 'last upstream of a pool', method: 'DELETE', path: '/backends', body: { url: c.url }, status: 409, error: /only upstream of pool solo/ },
    { what: 'weight 0', method: 'PATCH', path: '/backends', body: { url: a.url, weight: 0 }, status: 400, error: /"weight" must be a number above 0.*got 0/ },
    { what: 'weight negative', method: 'PATCH', path: '/backends', body: { url: a.url, weight: -2 }, status: 400, error: /"weight" must be a number above 0.*got -2/ },
    { what: 'weight a string', method: 'PATCH', path: '/backends', body: { url: a.url, weight: '3' }, status: 400, error: /"weight" must be a number above 0.*got "3"/ },
    { what: 'add with weight 0', method: 'POST', path: '/backends', body: { url: nowhere, pool: 'api', weight: 0 }, status: 400, error: /weight/ },
    { what: 'nothing to change', method: 'PATCH', path: '/backends', body: { url: a.url }, status: 400, error: /nothing to change/ },
    { what: 'body not JSON', method: 'POST', path: '/backends', body: '{"url": ', status: 400, error: /not valid JSON/ },
    { what: 'body a JSON array', method: 'POST', path: '/backends', body: JSON.stringify([{ url: nowhere }]), status: 400, error: /must be a JSON object/ },
    { what: 'empty body', method: 'POST', path: '/backends', body: '', status: 400, error: /empty body/ },
    { what: 'empty body on drain', method: 'POST', path: '/backends/drain', status: 400, error: /empty body/ },
    { what: 'unknown route', method: 'GET', path: '/nope', status: 404, error: /no admin route \/nope/ },
    { what: 'wrong method on /backends', method: 'PUT', path: '/backends', body: { url: nowhere }, status: 405, error: /PUT is not allowed on \/backends/, allow: 'GET, POST, DELETE, PATCH' },
    { what: 'wrong method on /reload', method: 'GET', path: '/reload', status: 405, error: /GET is not allowed on \/reload; use POST/, allow: 'POST' },
  ];
  const before = await snapshot(r);
  for (const k of cases) {
    const res = await call(r.admin, k.method, k.path, { body: k.body });
    assert.equal(res.status, k.status, `${k.what}: ${res.status} ${res.text}`);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/, k.what);
    assert.equal(typeof res.json?.error, 'string', `${k.what}: ${res.text}`);
    assert.match(res.json.error, k.error, k.what);
    if (k.allow !== undefined) assert.equal(res.headers.get('allow'), k.allow, k.what);
    assert.deepEqual(await snapshot(r), before, `${k.what} changed the state`);
  }
  // The client turns refusals into AdminError with the status and the server's message.
  await assert.rejects(r.client.addBackend({ url: a.url, pool: 'api' }), (err: unknown) => err instanceof AdminError && err.status === 409 && /already in pool api/.test(err.message));
  await assert.rejects(r.client.removeBackend({ url: c.url }), (err: unknown) => err instanceof AdminError && err.status === 409);
  assert.deepEqual(await snapshot(r), before);
  // Traffic still flows to both pools.
  assert.equal((await get(r.url + '/solo')).body, 'c');
});

test('a body over 1 MiB is refused with 413 and nothing changes', limit, async (t) => {
  const a = await backend(t, 'a');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url] } } });
  const before = await snapshot(r);
  const big = JSON.stringify({ url: 'http://127.0.0.1:1', pool: 'x'.repeat(1024 * 1024 + 10) });
  let res: Answer | Error;
  try {
    res = await call(r.admin, 'POST', '/backends', { body: big });
  } catch (err) {
    res = err as Error;
  }
  assert.ok(!(res instanceof Error), `the client should get a 413 answer, not a broken connection: ${res instanceof Error ? `${res.message} (${(res.cause as Error)?.message})` : ''}`);
  assert.equal(res.status, 413, res.text);
  assert.match(res.json.error, /larger than 1048576 bytes/);
  assert.deepEqual(await snapshot(r), before);
  // The admin API still answers.
  assert.equal((await call(r.admin, 'GET', '/status')).status, 200);
});

test('auth on loopback: reads need no token; writes need the right one', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url] } } });

  for (const path of ['/status', '/backends', '/config', '/health', '/ready', '/live']) {
    const res = await call(r.admin, 'GET', path, { token: null });
    assert.equal(res.status, 200, `${path} without a token on loopback: ${res.text}`);
  }
  const before = await snapshot(r);
  const writes: [string, string, object | undefined][] = [
    ['POST', '/backends', { url: b.url }],
    ['DELETE', '/backends', { url: a.url }],
    ['PATCH', '/backends', { url: a.url, weight: 2 }],
    ['POST', '/backends/drain', { url: a.url }],
    ['POST', '/backends/disable', { url: a.url }],
    ['POST', '/reload', undefined],
  ];
  for (const [method, path, body] of writes) {
    const none = await call(r.admin, method, path, { body, token: null });
    assert.equal(none.status, 401, `${method} ${path} without a token: ${none.text}`);
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer\b/);
    assert.match(none.json.error, /needs the admin token.*Authorization: Bearer/);
    const wrong = await call(r.admin, method, path, { body, token: 'not-the-token-at-all-0000' });
    assert.equal(wrong.status, 401, `${method} ${path} with a wrong token: ${wrong.text}`);
    assert.match(wrong.headers.get('www-authenticate') ?? '', /^Bearer\b/);
    assert.match(wrong.json.error, /wrong admin token/);
  }
  assert.deepEqual(await snapshot(r), before, 'refused writes changed nothing');
  const wrongClient = new AdminClient({ url: r.admin, token: 'not-the-token-at-all-0000', timeout: 5000 });
  await assert.rejects(wrongClient.addBackend({ url: b.url }), (err: unknown) => err instanceof AdminError && err.status === 401 && /wrong admin token/.test(err.message));
  assert.equal((await wrongClient.status()).total_backends, 1, 'reads still work with a wrong token on loopback');
  // The right token goes through.
  const ok = await call(r.admin, 'POST', '/backends', { body: { url: b.url } });
  assert.equal(ok.status, 201, ok.text);
  assert.equal((await r.client.status()).total_backends, 2);
});

test('auth without admin.token: writes need the generated token, which is logged', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url] } }, admin: { host: '127.0.0.1', port: 0 } });
  assert.equal((await call(r.admin, 'GET', '/status', { token: null })).status, 200);
  const refused = await call(r.admin, 'POST', '/backends', { body: { url: b.url }, token: null });
  assert.equal(refused.status, 401);
  const generated = /generated token: (\S+)/.exec(r.logs.join(''))?.[1];
  assert.ok(generated, 'the generated token is in the log');
  assert.equal((await call(r.admin, 'POST', '/backends', { body: { url: b.url }, token: TOKEN })).status, 401, 'some other token does not work');
  const ok = await call(r.admin, 'POST', '/backends', { body: { url: b.url }, token: generated });
  assert.equal(ok.status, 201, ok.text);
});

test('admin.host 0.0.0.0 without a token is refused by the loader, naming admin.host and its line', limit, () => {
  const text = ['listeners:', '  - port: 8080', 'pools:', '  api:', '    upstreams: [http://10.0.0.1:80]', 'admin:', '  port: 9901', '  host: 0.0.0.0', ''].join('\n');
  let error: unknown;
  try {
    loadConfigText(text, 'open.yaml', {});
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
  const problem = error.problems.find((p) => p.path === 'admin.host');
  assert.ok(problem, `a problem at admin.host: ${JSON.stringify(error.problems)}`);
  assert.equal(problem.line, 8);
  assert.equal(problem.file, 'open.yaml');
  assert.match(problem.message, /0\.0\.0\.0 \(not loopback\) needs a token/);
  assert.match(error.message, /open\.yaml:8:\d+/);
  // With a token (in the file or from FULCRUM_ADMIN_TOKEN) it loads.
  assert.equal(loadConfigText(text + `  token: ${TOKEN}\n`, 'open.yaml', {}).config.admin?.host, '0.0.0.0');
  assert.equal(loadConfigText(text, 'open.yaml', { FULCRUM_ADMIN_TOKEN: TOKEN }).config.admin?.token, TOKEN);
});

test('admin on 0.0.0.0 with a token: every read needs it except /health and /ready', limit, async (t) => {
  const a = await backend(t, 'a');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url] } }, admin: { host: '0.0.0.0', port: 0, token: TOKEN } });
  assert.equal(r.balancer.adminAddress()!.host, '0.0.0.0');
  for (const path of ['/status', '/backends', '/config', '/metrics', '/live']) {
    const none = await call(r.admin, 'GET', path, { token: null });
    assert.equal(none.status, 401, `${path} without a token off loopback: ${none.status}`);
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer\b/);
    assert.match(none.json.error, /this address needs the admin token/);
    const wrong = await call(r.admin, 'GET', path, { token: 'not-the-token-at-all-0000' });
    assert.equal(wrong.status, 401, `${path} with a wrong token`);
  }
  const validate = await call(r.admin, 'POST', '/config/validate', { body: 'pools: {}', token: null });
  assert.equal(validate.status, 401, '/config/validate off loopback needs the token too');
  assert.equal((await call(r.admin, 'GET', '/status')).status, 200);
  assert.equal((await r.client.status()).total_backends, 1);
  const health = await call(r.admin, 'GET', '/health', { token: null });
  assert.equal(health.status, 200);
  assert.equal(health.json.status, 'ok');
  const ready = await call(r.admin, 'GET', '/ready', { token: null });
  assert.equal(ready.status, 200);
  assert.equal(ready.json.ready, true);
});

test('/ready: 200 while an upstream is available, 503 with a reason once none is', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url, b.url] } } });
  let ready = await call(r.admin, 'GET', '/ready', { token: null });
  assert.equal(ready.status, 200);
  assert.deepEqual(ready.json, { ready: true, active_backends: 2, unavailable_pools: [] });
  await r.client.drain({ url: a.url });
  ready = await call(r.admin, 'GET', '/ready', { token: null });
  assert.equal(ready.status, 200);
  assert.equal(ready.json.active_backends, 1);
  await r.client.disable({ url: b.url });
  ready = await call(r.admin, 'GET', '/ready', { token: null });
  assert.equal(ready.status, 503);
  assert.equal(ready.json.ready, false);
  assert.match(ready.json.reason, /no upstream is available/);
  assert.notEqual((await get(r.url + '/')).status, 200, 'no upstream: the proxy cannot answer 200 either');
  const viaClient = await r.client.ready();
  assert.equal(viaClient.ready, false);
  await r.client.enable({ url: b.url });
  ready = await call(r.admin, 'GET', '/ready', { token: null });
  assert.equal(ready.status, 200);
  assert.equal((await r.client.ready()).ready, true);
  // The client's `reason` is the server's reason, not the status line.
  assert.match(viaClient.reason ?? '', /no upstream is available/);
});

test('GET /config hides the admin token and a Redis password; POST /config/validate', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromObject(t, {
    pools: { api: { upstreams: [a.url] } },
    rate_limit: { redis: { url: 'redis://fulcrum:hunter2-secret@127.0.0.1:6399/0' } },
  });
  const shown = await call(r.admin, 'GET', '/config', { token: null });
  assert.equal(shown.status, 200);
  assert.equal(shown.json.file, null);
  assert.ok(!shown.text.includes(TOKEN), 'the admin token is not shown');
  assert.ok(!shown.text.includes('hunter2-secret'), 'the Redis password is not shown');
  assert.equal(shown.json.config.admin.token, '(hidden)');
  assert.equal(shown.json.config.rate_limit.redis.url, 'redis://(hidden)@127.0.0.1:6399/0');
  assert.deepEqual(shown.json.config.pools.api.upstreams, [{ url: a.url, weight: 1, max_connections: 0 }]);
  // The running configuration itself still has them.
  assert.equal(r.balancer.config().admin?.token, TOKEN);

  const valid = ['listeners:', '  - host: 127.0.0.1', '    port: 0', 'admin:', '  host: 127.0.0.1', '  port: 0', `  token: ${TOKEN}`, 'rate_limit:', '  redis:', '    url: redis://fulcrum:hunter2-secret@127.0.0.1:6399/0', 'pools:', '  api:', `    upstreams: [${a.url}, ${b.url}]`, ''].join('\n');
  const ok = await call(r.admin, 'POST', '/config/validate', { body: valid, token: null });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.valid, true);
  assert.deepEqual(ok.json.changes, [`pool api: +1 upstream ${b.id}`]);
  const viaClient = await r.client.validateConfig(valid);
  assert.deepEqual(viaClient.changes, [`pool api: +1 upstream ${b.id}`]);
  assert.equal((await r.client.status()).total_backends, 1, 'validating applies nothing');

  const invalid = ['pools:', '  api:', `    upstreams: [${a.url}]`, '    polcy: round-robin', '    timeouts: {connect: soon}', ''].join('\n');
  const bad = await call(r.admin, 'POST', '/config/validate?name=candidate.yaml', { body: invalid, token: null });
  assert.equal(bad.status, 422, bad.text);
  assert.equal(bad.json.valid, false);
  assert.equal(bad.json.problems.length, 2);
  const polcy = bad.json.problems.find((p: any) => p.path === 'pools.api.polcy');
  assert.deepEqual([polcy.file, polcy.line], ['candidate.yaml', 4]);
  assert.match(polcy.message, /did you mean "policy"/);
  const connect = bad.json.problems.find((p: any) => p.path === 'pools.api.timeouts.connect');
  assert.equal(connect.line, 5);
  const syntax = await call(r.admin, 'POST', '/config/validate', { body: 'pools:\n  api: [\n', token: null });
  assert.equal(syntax.status, 422);
  assert.ok(syntax.json.problems[0].line > 0, 'a syntax error has a line');
  await assert.rejects(r.client.validateConfig(invalid, 'x.yaml'), (err: unknown) => err instanceof AdminError && err.status === 422 && err.problems.some((p) => p.line === 4 && p.file === 'x.yaml'));
  const empty = await call(r.admin, 'POST', '/config/validate', { body: ' \n', token: null });
  assert.equal(empty.status, 400);
  assert.match(empty.json.error, /empty body/);
  assert.equal((await r.client.status()).total_backends, 1);
});

test('POST /reload reads the file again: changes applied, an invalid file refused with file:line', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, 'fulcrum.yaml', yamlConfig([a.url]));
  const file = r.file!;
  assert.deepEqual(await traffic(r.url, 2), ['a', 'a']);

  writeFileSync(file, yamlConfig([a.url, b.url]));
  const reloaded = await call(r.admin, 'POST', '/reload');
  assert.equal(reloaded.status, 200, reloaded.text);
  assert.deepEqual(reloaded.json.changes, [`pool api: +1 upstream ${b.id}`]);
  assert.ok(r.logs.some((l) => l.includes('configuration reloaded (admin)')), 'the reload is logged');
  const bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'b'), 2, 'the new upstream gets traffic');
  const good = await snapshot(r);

  // Nothing changed: 200 and no change lines.
  assert.deepEqual((await r.client.reload()).changes, []);

  // An invalid file: 422 with file:line problems; the running configuration stays and serves.
  const invalid = yamlConfig([a.url, b.url]).replace('    upstreams:', '    polcy: least-connections\n    upstreams:');
  writeFileSync(file, invalid);
  const line = invalid.split('\n').findIndex((l) => l.includes('polcy')) + 1;
  const refused = await call(r.admin, 'POST', '/reload');
  assert.equal(refused.status, 422, refused.text);
  assert.match(refused.json.error, /running configuration stays/);
  const problem = refused.json.problems.find((p: any) => p.path === 'pools.api.polcy');
  assert.ok(problem, refused.text);
  assert.equal(problem.file, file);
  assert.equal(problem.line, line);
  assert.ok(r.logs.some((l) => l.includes('reload refused (admin)')), 'the refusal is logged');
  assert.deepEqual(await snapshot(r), good, 'the running configuration is unchanged');
  const still = await traffic(r.url, 4);
  assert.equal(count(still, 'a'), 2);
  assert.equal(count(still, 'b'), 2);
  await assert.rejects(r.client.reload(), (err: unknown) => err instanceof AdminError && err.status === 422 && err.problems.some((p) => p.file === file && p.line === line));
  // A YAML syntax error too.
  writeFileSync(file, 'pools:\n  api: [\n');
  const syntax = await call(r.admin, 'POST', '/reload');
  assert.equal(syntax.status, 422, syntax.text);
  assert.ok(syntax.json.problems[0].line > 0);
  assert.equal(syntax.json.problems[0].file, file);
  assert.equal((await get(r.url + '/')).status, 200);
});

test('POST /reload on a balancer started without a file: 409', limit, async (t) => {
  const a = await backend(t, 'a');
  const r = await startFromObject(t, { pools: { api: { upstreams: [a.url] } } });
  const res = await call(r.admin, 'POST', '/reload');
  assert.equal(res.status, 409, res.text);
  assert.match(res.json.error, /without a configuration file/);
  await assert.rejects(r.client.reload(), (err: unknown) => err instanceof AdminError && err.status === 409);
  assert.equal((await get(r.url + '/')).body, 'a');
});

test('runtime changes: listed in /status, kept over a file reload, dropped once the file has them', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const c = await backend(t, 'c');
  const r = await startFromFile(t, 'fulcrum.yaml', yamlConfig([a.url, c.url]));
  const file = r.file!;

  const added = await r.client.addBackend({ url: b.url });
  assert.equal(added.runtime_only, true);
  let s = await r.client.status();
  assert.equal(s.persisted, false);
  assert.equal(s.config_file, file);
  assert.deepEqual(s.runtime_changes.map((x) => ({ action: x.action, pool: x.pool, upstream: x.upstream, weight: x.weight })), [{ action: 'add', pool: 'api', upstream: b.id, weight: 1 }]);
  assert.equal(s.backends.find((x) => x.url === b.url)!.runtime_only, true);
  assert.equal(s.backends.find((x) => x.url === a.url)!.runtime_only, false);

  // Validating the file as it is shows no change: a reload would re-apply the runtime add.
  const validated = await call(r.admin, 'POST', '/config/validate', { body: readFileSync(file, 'utf8') });
  assert.equal(validated.status, 200, validated.text);
  assert.deepEqual(validated.json.changes, []);

  // An unrelated edit of the file: the added backend is re-applied on top.
  writeFileSync(file, yamlConfig([a.url, c.url], '    timeouts: {connect: 2s}'));
  const first = await r.client.reload();
  assert.deepEqual(first.changes, ['pool api: timeouts.connect 5s -> 2s']);
  s = await r.client.status();
  assert.deepEqual(s.backends.map((x) => x.url), [a.url, c.url, b.url]);
  assert.equal(s.backends.find((x) => x.url === b.url)!.runtime_only, true);
  assert.deepEqual(s.runtime_changes.map((x) => [x.action, x.upstream]), [['add', b.id]]);
  const bodies = await traffic(r.url, 6);
  assert.equal(count(bodies, 'b'), 2, 'the runtime-added backend still gets traffic');

  // A removal is kept the same way.
  await r.client.removeBackend({ url: c.url });
  writeFileSync(file, yamlConfig([a.url, c.url], '    timeouts: {connect: 3s}'));
  await r.client.reload();
  s = await r.client.status();
  assert.deepEqual(s.backends.map((x) => x.url), [a.url, b.url], 'the removed backend stays removed');
  assert.deepEqual(s.runtime_changes.map((x) => [x.action, x.upstream]), [['add', b.id], ['remove', c.id]]);

  // The file gains b (and drops c): the runtime changes are done and dropped.
  writeFileSync(file, yamlConfig([a.url, b.url], '    timeouts: {connect: 3s}'));
  const second = await r.client.reload();
  assert.deepEqual(second.changes, []);
  s = await r.client.status();
  assert.deepEqual(s.runtime_changes, []);
  assert.deepEqual(s.backends.map((x) => [x.url, x.runtime_only]), [[a.url, false], [b.url, false]]);
  assert.ok(r.logs.some((l) => l.includes(`runtime change dropped: add ${b.id} to pool api: the file has it now`)), 'the drop is logged');
  assert.equal(count(await traffic(r.url, 4), 'b'), 2);
});

test('admin.persist: true writes API changes into the YAML file, comments kept', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, 'fulcrum.yaml', yamlConfig([a.url], '', '  persist: true'));
  const file = r.file!;

  const added = await call(r.admin, 'POST', '/backends', { body: { url: b.url } });
  assert.equal(added.status, 201, added.text);
  assert.equal(added.json.runtime_only, false);
  let text = readFileSync(file, 'utf8');
  assert.ok(text.includes(b.url), `the file has the new backend:\n${text}`);
  assert.ok(text.includes('# fulcrum test configuration: this comment must survive'), `the top comment stays:\n${text}`);
  assert.ok(text.includes('# the first upstream comment'), `the list comment stays:\n${text}`);
  assert.match(text, new RegExp(`- ${a.url} +# primary: keep this inline comment\\n`), `the unchanged entry keeps its line and comment:\n${text}`);
  assert.deepEqual(loadConfigFile(file, {}).config.pools.api.upstreams.map((u) => u.url), [a.url, b.url]);
  let s = await r.client.status();
  assert.equal(s.persisted, true);
  assert.deepEqual(s.runtime_changes, []);
  assert.equal(s.backends.find((x) => x.url === b.url)!.runtime_only, false);
  assert.equal(count(await traffic(r.url, 4), 'b'), 2);
  // Reloading the file changes nothing now.
  assert.deepEqual((await r.client.reload()).changes, []);

  // A weight and a removal are written too.
  await r.client.updateBackend({ url: a.url, weight: 3 });
  assert.equal(loadConfigFile(file, {}).config.pools.api.upstreams.find((u) => u.url === a.url)?.weight, 3);
  await r.client.removeBackend({ url: b.url });
  text = readFileSync(file, 'utf8');
  assert.ok(!text.includes(b.url), `the removed backend left the file:\n${text}`);
  assert.ok(text.includes('# fulcrum test configuration: this comment must survive'));
  s = await r.client.status();
  assert.deepEqual(s.runtime_changes, []);
  assert.deepEqual(s.backends.map((x) => x.url), [a.url]);
});

test('admin.persist: true with a JSON configuration file', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const json = {
    listeners: [{ host: '127.0.0.1', port: 0 }],
    admin: { host: '127.0.0.1', port: 0, token: TOKEN, persist: true },
    pools: { api: { policy: 'round-robin', upstreams: [a.url] } },
    log: { access_log: false },
  };
  const r = await startFromFile(t, 'fulcrum.json', JSON.stringify(json, null, 2) + '\n');
  const file = r.file!;
  const added = await r.client.addBackend({ url: b.url });
  assert.equal(added.runtime_only, false);
  const written = JSON.parse(readFileSync(file, 'utf8'));
  assert.deepEqual(written.pools.api.upstreams, [a.url, b.url]);
  assert.equal(written.pools.api.policy, 'round-robin');
  assert.deepEqual(written.log, { access_log: false }, 'the rest of the file is kept');
  assert.equal(written.admin.token, TOKEN);
  const s = await r.client.status();
  assert.deepEqual(s.runtime_changes, []);
  assert.equal(s.persisted, true);
  assert.deepEqual(loadConfigFile(file, {}).config.pools.api.upstreams.map((u) => u.url), [a.url, b.url]);
  assert.deepEqual((await r.client.reload()).changes, []);
  assert.equal(count(await traffic(r.url, 4), 'b'), 2);
});

test('upstream state carries over a reload: still draining, counters kept', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, 'fulcrum.yaml', yamlConfig([a.url, b.url]));
  const file = r.file!;
  await traffic(r.url, 6);
  const drained = await r.client.drain({ url: a.url });
  assert.equal(drained.backend.draining, true);
  const before = (await r.client.status()).backends.find((x) => x.url === a.url)!;
  assert.equal(before.requests, 3);

  // Unrelated changes: one that rebuilds the pool, and one outside it.
  writeFileSync(file, yamlConfig([a.url, b.url], '    timeouts: {connect: 2s}') + 'shutdown:\n  grace_period: 5s\n');
  const reloaded = await r.client.reload();
  assert.deepEqual(reloaded.changes, ['pool api: timeouts.connect 5s -> 2s', 'shutdown: grace_period 30s -> 5s']);
  const after = (await r.client.status()).backends.find((x) => x.url === a.url)!;
  assert.equal(after.draining, true, 'still draining after the reload');
  assert.equal(after.alive, false);
  assert.equal(after.requests, 3, 'the requests counter did not reset');
  const bodies = await traffic(r.url, 4);
  assert.equal(count(bodies, 'b'), 4, 'the drained upstream gets nothing after the reload');
  assert.deepEqual((await r.client.status()).runtime_changes.map((x) => [x.action, x.upstream]), [['drain', a.id]]);
});

test('POST /backends takes a bare host:port like the other writes', async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const token = 'bare-host-port-token-0123456789';
  const lb = createBalancer({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [a.url] } }, admin: { host: '127.0.0.1', port: 0, token } }, { logger: createLogger({ level: 'silent', format: 'json' }) });
  await lb.start();
  t.after(() => lb.close(0));
  const client = new AdminClient({ url: lb.adminAddress()!.url, token });
  const added = await client.addBackend({ url: b.id });
  assert.equal(added.backend.url, b.url);
  assert.deepEqual(lb.pools().get('web')!.upstreams.map((u) => u.id), [a.id, b.id]);
});
