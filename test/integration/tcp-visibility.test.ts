/**
 * What a real balancer shows of its TCP connections: the metrics scraped through the admin API
 * after known traffic (bytes counted while a connection is still open and not again at its
 * close, close reasons, durations, connect failures, a second balancer's connections left
 * out, promtool happy), the access line of each connection (json and combined), `/status`
 * (protocols, open connections per pool and backend, the documented shapes) and the live
 * samples of the dashboard; the PROXY-protocol and TLS-passthrough counters of listeners.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { closedPort, startBackend, startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { backendOf, connect, recordCloses, startEcho } from '../helpers/tcp.ts';
import { matching, metric } from '../helpers/prometheus.ts';
import { encodeProxyV1, encodeProxyV2 } from '../../src/listeners/proxy-protocol.ts';
import { openApiDocument } from '../../src/admin/openapi.ts';
import { tcpFields, tcpMessage } from '../../src/observe/access-log-json.ts';
import type { LiveSample, StatusResponse } from '../../src/admin/types.ts';

type Json = Record<string, any>;

/** The admin API's text at `path` (GET; the admin listener is on loopback, so no token). */
async function adminGet(lb: TestBalancer, path: string): Promise<string> {
  const res = await fetch(`${lb.balancer.adminAddress()!.url}${path}`);
  assert.equal(res.status, 200, `GET ${path}`);
  return res.text();
}

const scrape = (lb: TestBalancer): Promise<string> => adminGet(lb, '/metrics');

/** The port of the listener named `name`. */
function portOf(lb: TestBalancer, name: string): number {
  const address = lb.balancer.addresses().find((a) => a.name === name);
  assert.ok(address, `listener ${name}`);
  return address.port;
}

/** The access lines (parsed) a balancer wrote so far. */
function accessLines(lb: TestBalancer): Json[] {
  return lb.logs
    .join('')
    .split('\n')
    .filter((l) => l.includes('"log":"access"'))
    .map((l) => JSON.parse(l) as Json);
}

/** The keys of `value` its OpenAPI schema does not list, and the required ones it lacks. */
function schemaDrift(schema: Json, value: Json): { undocumented: string[]; missing: string[] } {
  const documented = Object.keys(schema.properties ?? {});
  return { undocumented: Object.keys(value).filter((k) => !documented.includes(k)), missing: (schema.required ?? []).filter((k: string) => !(k in value)) };
}

test('metrics, access log, /status and live samples of TCP connections after known traffic', { timeout: 30_000 }, async (t) => {
  const [x, y] = await Promise.all([startEcho(t, 'x'), startEcho(t, 'y')]);
  // Answers one message, then closes: the upstream side ends that connection.
  const closer = await startEcho(t, 'c', (socket) => {
    socket.write('c\n');
    socket.once('data', (d) => socket.end(d));
  });
  const dead = await closedPort();
  const closes = recordCloses(t);
  const lb = await startBalancer(t, {
    listeners: [
      { name: 'db-in', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' },
      { name: 'closer-in', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'closer' },
      { name: 'dead-in', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'dead' },
    ],
    pools: {
      db: { protocol: 'tcp', upstreams: [x.url, y.url] },
      closer: { protocol: 'tcp', upstreams: [closer.url] },
      dead: { protocol: 'tcp', upstreams: [`tcp://127.0.0.1:${dead}`], retry: { max_attempts: 1 } },
    },
    admin: { host: '127.0.0.1', port: 0 },
    log: { access_log: { flush: '20ms' } },
  });
  const mine = (listener: string) => closes.filter((c) => c.listener === listener);

  // --- One connection, held open: its bytes show at each scrape, counted once.
  const started = performance.now();
  const c1 = await connect(portOf(lb, 'db-in'));
  const c1Port = c1.socket.localPort;
  const name = await backendOf(c1);
  const [held, other] = name === 'x' ? [x, y] : [y, x];
  const heldId = `127.0.0.1:${held.port}`;
  const otherId = `127.0.0.1:${other.port}`;
  c1.socket.write(Buffer.alloc(1000, 'a'));
  await eventually(() => c1.length() === 2 + 1000, { what: 'the echo of 1000 bytes' });
  let text = await scrape(lb);
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'db', backend: heldId, direction: 'in' }), 1000, 'bytes in of an open connection');
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'db', backend: heldId, direction: 'out' }), 1002, 'bytes out of an open connection (greeting + echo)');
  assert.equal(metric(text, 'lb_tcp_bytes_total', { backend: otherId }), 0);
  assert.equal(metric(text, 'lb_tcp_connections_open', { pool: 'db', backend: heldId }), 1);
  assert.deepEqual(matching(text, 'lb_tcp_connections_open', { pool: 'db', backend: otherId }).map((s) => s.value), [0], 'every backend of a tcp pool shows, at 0');
  assert.equal(metric(text, 'lb_tcp_connections_total', { listener: 'db-in', pool: 'db' }), 1);
  assert.equal(metric(text, 'lb_tcp_connections_closed_total'), 0);
  assert.equal(metric(text, 'lb_client_connections', { listener: 'db-in' }), 1, 'tcp listeners are in lb_client_connections');

  // /status while it is open: protocols, the pool's and the backends' open connections, documented shapes.
  const status = JSON.parse(await adminGet(lb, '/status')) as StatusResponse;
  const pool = status.pools.find((p) => p.name === 'db')!;
  assert.equal(pool.protocol, 'tcp');
  assert.equal(pool.tcp_connections, 1);
  assert.equal(status.backends.find((b) => b.id === heldId)!.open_connections, 1);
  assert.equal(status.backends.find((b) => b.id === otherId)!.open_connections, 0);
  const listener = status.listeners.find((l) => l.name === 'db-in')!;
  assert.equal(listener.protocol, 'tcp');
  assert.equal(listener.open_connections, 1);
  assert.match(listener.url, /^tcp:\/\/127\.0\.0\.1:\d+$/);
  const schemas = (openApiDocument() as Json).components.schemas as Json;
  assert.deepEqual(schemaDrift(schemas.StatusResponse, status), { undocumented: [], missing: [] }, 'GET /status');
  for (const p of status.pools) assert.deepEqual(schemaDrift(schemas.PoolStatus, p), { undocumented: [], missing: [] }, `pool ${p.name}`);
  for (const b of status.backends) assert.deepEqual(schemaDrift(schemas.BackendStatus, b), { undocumented: [], missing: [] }, `backend ${b.id}`);
  for (const l of status.listeners) assert.deepEqual(schemaDrift(schemas.ListenerStatus, l), { undocumented: [], missing: [] }, `listener ${l.name}`);

  // More bytes on the same open connection: the next scrape adds only those.
  c1.socket.write(Buffer.alloc(500, 'b'));
  await eventually(() => c1.length() === 2 + 1500, { what: 'the echo of 500 more bytes' });
  text = await scrape(lb);
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'db', backend: heldId, direction: 'in' }), 1500);
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'db', backend: heldId, direction: 'out' }), 1502);

  // The live samples: this backend's open connection and its bytes per second.
  await eventually(
    async () => {
      const history = JSON.parse(await adminGet(lb, '/live')) as LiveSample[];
      const last = history.at(-1)?.backends.find((b) => b.id === heldId);
      const inSamples = history.reduce((n, s) => n + (s.backends.find((b) => b.id === heldId)?.bytes_in_per_s ?? 0), 0);
      return last?.open_connections === 1 && inSamples > 0;
    },
    { timeout: 4000, what: 'a live sample with the open connection and its bytes' },
  );
  const history = JSON.parse(await adminGet(lb, '/live')) as LiveSample[];
  for (const s of history) assert.equal(s.backends.find((b) => b.id === otherId)!.bytes_in_per_s, 0, 'no bytes on the idle backend');

  // --- The client closes: nothing counted twice, the close and its duration recorded.
  c1.socket.end();
  await c1.closed;
  await eventually(() => mine('db-in').length === 1, { what: 'the connection to end' });
  const elapsed = (performance.now() - started) / 1000;
  text = await scrape(lb);
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'db', backend: heldId, direction: 'in' }), 1500, 'bytes in after the close');
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'db', backend: heldId, direction: 'out' }), 1502, 'bytes out after the close');
  assert.equal(metric(text, 'lb_tcp_connections_open', { pool: 'db', backend: heldId }), 0);
  assert.equal(metric(text, 'lb_tcp_connections_closed_total', { listener: 'db-in', pool: 'db', reason: 'client' }), 1);
  assert.equal(metric(text, 'lb_tcp_connection_duration_seconds_count', { listener: 'db-in', pool: 'db' }), 1);
  const seconds = metric(text, 'lb_tcp_connection_duration_seconds_sum', { listener: 'db-in', pool: 'db' });
  assert.ok(seconds > 0 && seconds <= elapsed, `duration ${seconds}s within the ${elapsed}s the client saw`);

  // --- The upstream closes first.
  const c2 = await connect(portOf(lb, 'closer-in'));
  c2.socket.write('ping');
  await c2.closed;
  assert.equal(c2.text(), 'c\nping');
  await eventually(() => mine('closer-in').length === 1, { what: 'the second connection to end' });

  // --- Nothing takes the connection: a connect failure, counted once, not as an HTTP attempt failure.
  const c3 = await connect(portOf(lb, 'dead-in'));
  await c3.closed;
  await eventually(() => mine('dead-in').length === 1, { what: 'the failed connection to end' });
  const deadId = `127.0.0.1:${dead}`;

  // --- A second balancer in the process: its connections are not this one's.
  const other2 = await startBalancer(t, {
    listeners: [{ name: 'other-in', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: { db: { protocol: 'tcp', upstreams: [x.url] } },
    admin: { host: '127.0.0.1', port: 0 },
    log: { access_log: { flush: '20ms' } },
  });
  const c4 = await connect(other2.port);
  await backendOf(c4);
  c4.socket.write('zz');
  await eventually(() => c4.length() === 4, { what: 'the echo through the second balancer' });
  c4.socket.end();
  await eventually(() => mine('other-in').length === 1, { what: 'the second balancer\'s connection to end' });
  assert.equal(metric(await scrape(other2), 'lb_tcp_connections_closed_total', { listener: 'other-in', reason: 'client' }), 1, 'the second balancer counts its own');

  text = await scrape(lb);
  assert.equal(metric(text, 'lb_tcp_connections_closed_total', { listener: 'closer-in', pool: 'closer', reason: 'upstream' }), 1);
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'closer', direction: 'in' }), 4);
  assert.equal(metric(text, 'lb_tcp_bytes_total', { pool: 'closer', direction: 'out' }), 6);
  assert.equal(metric(text, 'lb_tcp_connections_closed_total', { listener: 'dead-in', pool: 'dead', reason: 'connect_failed' }), 1);
  assert.deepEqual(
    matching(text, 'lb_tcp_connect_failures_total').map((s) => [s.labels.get('pool'), s.labels.get('backend'), s.labels.get('code'), s.value]),
    [['dead', deadId, 'FUL_UPSTREAM_CONNECT_REFUSED', 1]],
  );
  assert.equal(matching(text, 'lb_backend_attempt_failures_total').length, 0, 'TCP connect failures are not HTTP attempt failures');
  assert.equal(metric(text, 'lb_tcp_connections_total'), 3, 'db-in, closer-in and dead-in: the second balancer\'s is not here');
  assert.equal(metric(text, 'lb_tcp_connections_closed_total'), 3);
  assert.equal(metric(text, 'lb_tcp_connection_duration_seconds_count'), 3);
  assert.equal(matching(text, 'lb_tcp_connections_total', { listener: 'other-in' }).length, 0);

  // The scrape stays valid exposition.
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(promtool.error, undefined, 'promtool is missing: apt-get install prometheus');
  assert.equal(promtool.status, 0, `promtool check metrics:\n${promtool.stdout}${promtool.stderr}`);

  // --- The access log: one line per connection, at its close, with its fields; none for the other balancer's.
  let lines: Json[] = [];
  await eventually(() => (lines = accessLines(lb)).length === 3, { what: 'three access lines' });
  const [l1, l2, l3] = ['db-in', 'closer-in', 'dead-in'].map((n) => lines.find((l) => l.listener === n)!);
  assert.deepEqual(
    { ...l1, time: undefined, pid: undefined, duration_ms: undefined, msg: undefined },
    {
      level: 30, time: undefined, pid: undefined, log: 'access', protocol: 'tcp', listener: 'db-in', client: '127.0.0.1', client_port: c1Port,
      sni: null, pool: 'db', upstream: heldId, duration_ms: undefined, bytes_in: 1500, bytes_out: 1502, attempts: 1, close: 'client', msg: undefined,
    },
  );
  assert.match(l1.msg, new RegExp(`^TCP 127\\.0\\.0\\.1:${c1Port} -> ${heldId} closed \\(client\\) after \\d+\\.\\ds$`));
  assert.ok(Math.abs(l1.duration_ms / 1000 - seconds) < 0.0001, `the line's duration_ms (${l1.duration_ms}) is the histogram's (${seconds}s)`);
  assert.equal(l2.close, 'upstream');
  assert.equal(l2.level, 30);
  assert.deepEqual([l2.bytes_in, l2.bytes_out, l2.upstream], [4, 6, `127.0.0.1:${closer.port}`]);
  assert.equal(l3.level, 40, 'a connection nothing took is a warning');
  assert.deepEqual([l3.close, l3.upstream, l3.bytes_in, l3.bytes_out, l3.attempts], ['connect_failed', null, 0, 0, 1]);
  assert.match(l3.reason, new RegExp(`${deadId}: connect failed`));
  // The hand-built line says what the pino path would (tcpFields, tcpMessage), key for key and in the same order.
  for (const [line, event] of [[l1, mine('db-in')[0]], [l3, mine('dead-in')[0]]] as const) {
    const fields = Object.entries(tcpFields(event)).filter(([, v]) => v !== undefined);
    assert.deepEqual(Object.entries(line), [['level', line.level], ['time', line.time], ['pid', process.pid], ['log', 'access'], ...fields, ['msg', tcpMessage(event)]]);
  }
  assert.ok(!lb.logs.join('').includes('other-in'), 'the second balancer\'s connection is not in this access log');
  await eventually(() => accessLines(other2).some((l) => l.listener === 'other-in'), { what: 'the second balancer\'s own access line' });
});

test('combined access log: a TCP line keeps the combined shape', async (t) => {
  const echo = await startEcho(t, 'e');
  const file = join(mkdtempSync(join(tmpdir(), 'fulcrum-tcp-log-')), 'access.log');
  const lb = await startBalancer(t, {
    listeners: [{ name: 'db-in', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: { db: { protocol: 'tcp', upstreams: [echo.url] } },
    log: { access_log: { format: 'combined', path: file, flush: '20ms' } },
  });
  const c = await connect(lb.port);
  await backendOf(c);
  c.socket.write('hello');
  await eventually(() => c.length() === 2 + 5, { what: 'the echo' });
  c.socket.end();
  await c.closed;
  let text = '';
  await eventually(() => existsSync(file) && (text = readFileSync(file, 'utf8')).endsWith('\n'), { what: 'the combined line' });
  assert.match(text, new RegExp(`^127\\.0\\.0\\.1 - - \\[\\d{2}/\\w{3}/\\d{4}:\\d{2}:\\d{2}:\\d{2} [+-]\\d{4}\\] "TCP db-in 127\\.0\\.0\\.1:${echo.port} -" 200 7 "-" "-"\\n$`));
});

test('PROXY-protocol intake and TLS-passthrough routing are counted per listener and reason', { timeout: 20_000 }, async (t) => {
  const echo = await startEcho(t, 'e');
  const web = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [
      { name: 'web', host: '127.0.0.1', port: 0, proxy_protocol: { trusted: ['127.0.0.1'] } },
      { name: 'plain', host: '127.0.0.1', port: 0 },
      { name: 'pp', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db', proxy_protocol: { trusted: ['127.0.0.1'], timeout: '200ms' } },
      // Trusts someone else: a header from 127.0.0.1 is refused as untrusted.
      { name: 'strict', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db', proxy_protocol: { trusted: ['10.9.9.9'] } },
      { name: 'sni', host: '127.0.0.1', port: 0, protocol: 'tcp', tls_passthrough: { routes: [{ server_names: ['a.test'], pool: 'db' }], client_hello_timeout: '200ms' } },
    ],
    pools: { db: { protocol: 'tcp', upstreams: [echo.url] }, web: { upstreams: [web.url] } },
    routes: [{ pool: 'web' }],
    admin: { host: '127.0.0.1', port: 0 },
    log: { access_log: { flush: '20ms' } },
  });
  const closes = recordCloses(t);

  // Before any traffic: listeners that accept the PROXY protocol show both versions at 0; the others none.
  let text = await scrape(lb);
  for (const l of ['web', 'pp', 'strict']) {
    assert.deepEqual(matching(text, 'lb_proxy_protocol_accepted_total', { listener: l }).map((s) => [s.labels.get('version'), s.value]).sort(), [['v1', 0], ['v2', 0]], l);
  }
  assert.equal(matching(text, 'lb_proxy_protocol_accepted_total', { listener: 'plain' }).length, 0);
  assert.equal(matching(text, 'lb_proxy_protocol_accepted_total', { listener: 'sni' }).length, 0);

  // A v1 and a v2 header on the tcp listener: accepted, the client address is the header's.
  const pp = portOf(lb, 'pp');
  const v1 = await connect(pp);
  v1.socket.write(Buffer.concat([encodeProxyV1({ address: '203.0.113.7', port: 5000 }, { address: '198.51.100.1', port: 6379 }), Buffer.from('one')]));
  await eventually(() => v1.text() === 'e\none', { what: 'the echo after a v1 header' });
  v1.socket.end();
  const v2 = await connect(pp);
  v2.socket.write(Buffer.concat([encodeProxyV2({ address: '203.0.113.8', port: 5001 }, { address: '198.51.100.1', port: 6379 }), Buffer.from('two')]));
  await eventually(() => v2.text() === 'e\ntwo', { what: 'the echo after a v2 header' });
  v2.socket.end();
  // Malformed, and late.
  const bad = await connect(pp);
  bad.socket.write('PROXY TCP4 not-an-address\r\n');
  await bad.closed;
  const late = await connect(pp);
  await late.closed;
  // A header where none may come.
  const untrusted = await connect(portOf(lb, 'strict'));
  untrusted.socket.write(encodeProxyV1({ address: '203.0.113.9', port: 5002 }, { address: '198.51.100.1', port: 6379 }));
  await untrusted.closed;
  // The http listener takes a v1 header too.
  const http = await new Promise<string>((resolve, reject) => {
    const s = net.connect(portOf(lb, 'web'), '127.0.0.1', () => s.write(Buffer.concat([encodeProxyV1({ address: '203.0.113.10', port: 5003 }, { address: '198.51.100.1', port: 80 }), Buffer.from('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')])));
    let got = '';
    s.on('data', (d) => (got += d));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
  assert.match(http, /^HTTP\/1\.1 200/);

  // TLS passthrough: one routed by its server name, one with an unknown name, one not TLS, one silent.
  const sni = portOf(lb, 'sni');
  const routed = tls.connect({ host: '127.0.0.1', port: sni, servername: 'a.test', rejectUnauthorized: false });
  routed.on('error', () => {});
  // The echo backend sends the ClientHello back after its greeting: not TLS, so the client gives up; the routing is what counts.
  await new Promise<void>((resolve) => routed.once('close', () => resolve()));
  const unknown = tls.connect({ host: '127.0.0.1', port: sni, servername: 'b.test', rejectUnauthorized: false });
  unknown.on('error', () => {});
  await new Promise<void>((resolve) => unknown.once('close', () => resolve()));
  const plain = await connect(sni);
  plain.socket.write('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n');
  await plain.closed;
  const silent = await connect(sni);
  await silent.closed;

  await eventually(() => closes.filter((c) => c.listener === 'pp').length === 2, { what: 'the two admitted connections to end' });
  text = await scrape(lb);
  const byLabel = (name: string, listener: string, label: string) => Object.fromEntries(matching(text, name, { listener }).map((s) => [s.labels.get(label), s.value]));
  assert.deepEqual(byLabel('lb_proxy_protocol_accepted_total', 'pp', 'version'), { v1: 1, v2: 1 });
  assert.deepEqual(byLabel('lb_proxy_protocol_refused_total', 'pp', 'reason'), { malformed: 1, timeout: 1 });
  assert.deepEqual(byLabel('lb_proxy_protocol_refused_total', 'strict', 'reason'), { untrusted: 1 });
  assert.deepEqual(byLabel('lb_proxy_protocol_accepted_total', 'web', 'version'), { v1: 1, v2: 0 });
  assert.deepEqual(byLabel('lb_tls_passthrough_routed_total', 'sni', 'pool'), { db: 1 });
  assert.deepEqual(byLabel('lb_tls_passthrough_refused_total', 'sni', 'reason'), { no_route: 1, not_tls: 1, timeout: 1 });
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(promtool.status, 0, `promtool check metrics:\n${promtool.stdout}${promtool.stderr}`);

  // The access lines carry the client the headers named.
  await eventually(() => accessLines(lb).filter((l) => l.listener === 'pp').length === 2, { what: 'the access lines of the pp listener' });
  const pairs = accessLines(lb).filter((l) => l.listener === 'pp').map((l) => [l.client, l.client_port]).sort();
  assert.deepEqual(pairs, [['203.0.113.7', 5000], ['203.0.113.8', 5001]]);
  const routedLine = (await eventually(() => accessLines(lb).find((l) => l.listener === 'sni'), { what: 'the access line of the passthrough connection' }))!;
  assert.equal(routedLine.sni, 'a.test', 'a passthrough line names the server');
});
