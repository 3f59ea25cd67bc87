import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { ActiveChecker, resolveCheckSettings } from '../../../src/health/active-checker.ts';
import { Upstream, type HealthState } from '../../../src/upstream/upstream.ts';
import { HealthCheckConfig, UpstreamTlsConfig } from '../../../src/config/schema.ts';
import { eventually } from '../../helpers/eventually.ts';
import { closedPort, startRawBackend } from '../../helpers/servers.ts';
import { startBlackhole } from '../../helpers/blackhole.ts';
import { startRedisServer } from '../../helpers/redis-server.ts';
import { makeTestCa } from '../../helpers/tls.ts';
import tls from 'node:tls';
import { readUpstreamTls } from '../../../src/transport/upstream-tls.ts';

/** One probe as the server saw it. */
interface Probe {
  at: number;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

/** What the n-th probe (0-based) gets: a status and body, or 'hang' for no answer at all. */
type Script = (n: number) => { status: number; body?: string } | 'hang';

interface ProbeServer {
  port: number;
  url: string;
  probes: Probe[];
  /** Requests held without an answer (for 'hang'). */
  held: http.ServerResponse[];
}

async function probeServer(t: TestContext, script: Script): Promise<ProbeServer> {
  const probes: Probe[] = [];
  const held: http.ServerResponse[] = [];
  const server = http.createServer((req, res) => {
    const n = probes.length;
    probes.push({ at: performance.now(), method: req.method!, url: req.url!, headers: req.headers });
    const answer = script(n);
    if (answer === 'hang') {
      held.push(res);
      return;
    }
    res.writeHead(answer.status, { 'content-type': 'text/plain' });
    res.end(answer.body ?? '');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { port, url: `http://127.0.0.1:${port}`, probes, held };
}

/** A sink call, with how many probes the server had seen by then. */
interface Call {
  state: HealthState;
  reason: string;
  probes: number;
  at: number;
}

/** A checker on one upstream at `url`, its sink calls recorded; stopped after the test. */
function check(t: TestContext, url: string, settings: Record<string, unknown>, seen: () => number = () => -1, initial: HealthState = 'healthy') {
  const upstream = new Upstream({ url, weight: 1, maxConnections: 0 });
  upstream.health = initial;
  const calls: Call[] = [];
  const checker = new ActiveChecker(resolveCheckSettings(HealthCheckConfig.parse({ jitter: 0, ...settings }), 'http1'), [upstream], (u, state, reason) => {
    assert.equal(u, upstream);
    calls.push({ state, reason, probes: seen(), at: performance.now() });
    u.setHealth(state, reason);
  });
  t.after(() => checker.stop());
  checker.start();
  return { upstream, calls, checker };
}

const fast = { interval: 100, fast_interval: 50, timeout: 1000 };

test('http: unhealthy after exactly `fall` consecutive 500s, healthy after exactly `rise` 200s', async (t) => {
  const s = await probeServer(t, (n) => ({ status: n < 3 ? 500 : 200 }));
  const { upstream, calls } = check(t, s.url, { ...fast, fall: 3, rise: 2 }, () => s.probes.length);
  await eventually(() => calls.length === 2, { what: 'down and up again' });
  assert.deepEqual(
    calls.map((c) => [c.state, c.reason, c.probes]),
    [
      ['unhealthy', 'status 500 (3 consecutive checks failed)', 3],
      ['healthy', '2 consecutive checks passed', 5],
    ],
  );
  assert.equal(upstream.health, 'healthy');
  // Further passing probes change nothing.
  await eventually(() => s.probes.length >= 8, { what: 'more probes' });
  assert.equal(calls.length, 2);
});

test('http: only consecutive failures and successes count', async (t) => {
  const statuses = [500, 500, 200, 500, 500, 500, 200, 500, 200, 200, 200];
  const s = await probeServer(t, (n) => ({ status: statuses[n] ?? 200 }));
  const { calls } = check(t, s.url, { ...fast, fall: 3, rise: 2 }, () => s.probes.length);
  await eventually(() => calls.length === 2, { what: 'down and up again' });
  assert.deepEqual(
    calls.map((c) => [c.state, c.probes]),
    [
      ['unhealthy', 6],
      ['healthy', 10],
    ],
  );
});

test('http: fall 1 and rise 1 flip on the first probe', async (t) => {
  const s = await probeServer(t, () => ({ status: 503 }));
  const { calls } = check(t, s.url, { ...fast, fall: 1, rise: 1 }, () => s.probes.length);
  await eventually(() => calls.length === 1);
  assert.deepEqual(calls.map((c) => [c.state, c.reason, c.probes]), [['unhealthy', 'status 503 (1 consecutive checks failed)', 1]]);
});

test('http: expected_status ["200-299", 404] decides pass and fail, edges included', async (t) => {
  const cases: [number, boolean][] = [
    [200, true],
    [204, true],
    [299, true],
    [404, true],
    [300, false],
    [302, false],
    [403, false],
    [405, false],
    [500, false],
  ];
  await Promise.all(
    cases.map(async ([status, pass]) => {
      const s = await probeServer(t, () => ({ status }));
      // Start in the state the probe should leave, so one probe shows the verdict.
      const { calls } = check(t, s.url, { ...fast, expected_status: ['200-299', 404], fall: 1, rise: 1 }, () => s.probes.length, pass ? 'unhealthy' : 'healthy');
      await eventually(() => calls.length === 1, { what: `verdict on ${status}` });
      assert.deepEqual(
        calls.map((c) => [c.state, c.reason, c.probes]),
        [pass ? ['healthy', '1 consecutive checks passed', 1] : ['unhealthy', `status ${status} (1 consecutive checks failed)`, 1]],
        `status ${status}`,
      );
    }),
  );
});

test('http: the default expected_status is 200-399', async (t) => {
  const results = await Promise.all(
    [200, 302, 399, 400].map(async (status) => {
      const s = await probeServer(t, () => ({ status }));
      const { upstream } = check(t, s.url, { ...fast, fall: 1, rise: 1 }, () => s.probes.length, 'unhealthy');
      await eventually(() => s.probes.length >= 2, { what: `two probes on ${status}` });
      return [status, upstream.health];
    }),
  );
  assert.deepEqual(results, [
    [200, 'healthy'],
    [302, 'healthy'],
    [399, 'healthy'],
    [400, 'unhealthy'],
  ]);
});

test('http: body_contains missing fails with its reason; present passes', async (t) => {
  const bodies = ['booting', 'booting', 'state: READY'];
  const s = await probeServer(t, (n) => ({ status: 200, body: bodies[n] ?? 'state: READY' }));
  const { calls } = check(t, s.url, { ...fast, body_contains: 'READY', fall: 2, rise: 1 }, () => s.probes.length);
  await eventually(() => calls.length === 2, { what: 'down and up' });
  assert.deepEqual(
    calls.map((c) => [c.state, c.reason, c.probes]),
    [
      ['unhealthy', 'body does not contain "READY" (2 consecutive checks failed)', 2],
      ['healthy', '1 consecutive checks passed', 3],
    ],
  );
});

test('http: a bad status is the reason even when the body would match', async (t) => {
  const s = await probeServer(t, () => ({ status: 500, body: 'READY' }));
  const { calls } = check(t, s.url, { ...fast, body_contains: 'READY', fall: 1 }, () => s.probes.length);
  await eventually(() => calls.length === 1);
  assert.equal(calls[0].reason, 'status 500 (1 consecutive checks failed)');
});

test('http: a server that never answers fails with "timeout after 200ms"', async (t) => {
  const s = await probeServer(t, () => 'hang');
  const { calls } = check(t, s.url, { interval: 100, fast_interval: 50, timeout: 200, fall: 2 }, () => s.probes.length);
  await eventually(() => calls.length === 1, { what: 'timeout verdicts' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason, c.probes]), [['unhealthy', 'timeout after 200ms (2 consecutive checks failed)', 2]]);
  const waited = calls[0].at - s.probes[1].at;
  assert.ok(waited >= 190 && waited < 1500, `second probe failed ${waited.toFixed(0)}ms after it arrived, expected ~200ms`);
});

test('http: a connect that never completes fails with "timeout after 200ms"', async (t) => {
  const port = await startBlackhole(t);
  const { calls } = check(t, `http://127.0.0.1:${port}`, { interval: 100, fast_interval: 50, timeout: 200, fall: 1 });
  await eventually(() => calls.length === 1, { what: 'connect timeout verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['unhealthy', 'timeout after 200ms (1 consecutive checks failed)']]);
});

test('http: a closed port fails with "connection refused"', async (t) => {
  const port = await closedPort();
  const { calls, upstream } = check(t, `http://127.0.0.1:${port}`, { ...fast, fall: 2 });
  await eventually(() => calls.length === 1, { what: 'refused verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['unhealthy', 'connection refused (2 consecutive checks failed)']]);
  assert.equal(upstream.health, 'unhealthy');
});

test('http: a reply that is not HTTP fails as an invalid response', async (t) => {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.resume(); // read to EOF, so the socket closes when the checker closes its side
    socket.end('SSH-2.0-OpenSSH_9.6\r\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const { calls } = check(t, `http://127.0.0.1:${(server.address() as AddressInfo).port}`, { ...fast, fall: 1 });
  await eventually(() => calls.length === 1, { what: 'protocol verdict' });
  assert.equal(calls[0].state, 'unhealthy');
  assert.equal(calls[0].reason, 'invalid HTTP response (1 consecutive checks failed)');
});

test('http: default probe is GET /health with the upstream host:port, the checker user-agent and connection: close', async (t) => {
  const s = await probeServer(t, () => ({ status: 200 }));
  check(t, s.url, fast);
  await eventually(() => s.probes.length >= 2);
  for (const p of s.probes.slice(0, 2)) {
    assert.equal(p.method, 'GET');
    assert.equal(p.url, '/health');
    assert.equal(p.headers.host, `127.0.0.1:${s.port}`);
    assert.equal(p.headers['user-agent'], 'fulcrum-health-check');
    assert.equal(p.headers.connection, 'close');
  }
});

test('http: configured method, path and Host header are sent as configured', async (t) => {
  for (const method of ['HEAD', 'OPTIONS', 'POST'] as const) {
    const s = await probeServer(t, () => ({ status: 200 }));
    const { calls } = check(t, s.url, { ...fast, method, path: '/status/deep?verbose=1', host: 'api.example.com' });
    await eventually(() => s.probes.length >= 1);
    const p = s.probes[0];
    assert.deepEqual([p.method, p.url, p.headers.host], [method, '/status/deep?verbose=1', 'api.example.com']);
    assert.equal(calls.length, 0);
  }
});

test('tcp: up on a listening port (no bytes sent), down on a closed one', async (t) => {
  let connections = 0;
  let bytes = 0;
  const server = net.createServer((socket) => {
    connections++;
    socket.on('data', (d) => (bytes += d.length));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as AddressInfo).port;
  const up = check(t, `http://127.0.0.1:${port}`, { ...fast, type: 'tcp', rise: 2 }, () => connections, 'unhealthy');
  await eventually(() => up.calls.length === 1, { what: 'tcp up' });
  assert.deepEqual(up.calls.map((c) => [c.state, c.reason]), [['healthy', '2 consecutive checks passed']]);
  assert.ok(up.calls[0].probes >= 2, `connections seen: ${up.calls[0].probes}`);
  assert.equal(bytes, 0);

  const closed = await closedPort();
  const down = check(t, `http://127.0.0.1:${closed}`, { ...fast, type: 'tcp', fall: 2 });
  await eventually(() => down.calls.length === 1, { what: 'tcp down' });
  assert.deepEqual(down.calls.map((c) => [c.state, c.reason]), [['unhealthy', 'connection refused (2 consecutive checks failed)']]);
});

test('tcp: a connect that never completes fails with "timeout after 200ms"', async (t) => {
  const port = await startBlackhole(t);
  const { calls } = check(t, `http://127.0.0.1:${port}`, { interval: 100, fast_interval: 50, timeout: 200, type: 'tcp', fall: 1 });
  const started = performance.now();
  await eventually(() => calls.length === 1, { what: 'tcp timeout verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['unhealthy', 'timeout after 200ms (1 consecutive checks failed)']]);
  assert.ok(calls[0].at - started >= 190, `failed after ${(calls[0].at - started).toFixed(0)}ms`);
});

/** A plain TCP server whose connections `onConnection` handles; its tcp:// URL and what each connection sent. */
async function tcpServer(t: TestContext, onConnection: (socket: net.Socket) => void): Promise<{ url: string; connections: number; received: string[] }> {
  const state = { url: '', connections: 0, received: [] as string[] };
  const { port } = await startRawBackend(t, (socket) => {
    const i = state.connections++;
    state.received[i] = '';
    socket.on('data', (d: Buffer) => (state.received[i] += d.toString('latin1')));
    onConnection(socket);
  });
  state.url = `tcp://127.0.0.1:${port}`;
  return state;
}

/** A checker of a `protocol: tcp` pool (the type left to the pool) on one upstream, its sink calls recorded. */
function tcpCheck(t: TestContext, url: string, settings: Record<string, unknown>, initial: HealthState = 'healthy') {
  const upstream = new Upstream({ url, weight: 1, maxConnections: 0 });
  upstream.health = initial;
  const calls: Call[] = [];
  const checker = new ActiveChecker(resolveCheckSettings(HealthCheckConfig.parse({ jitter: 0, ...fast, ...settings }), 'tcp'), [upstream], (u, state, reason) => {
    calls.push({ state, reason, probes: -1, at: performance.now() });
    u.setHealth(state, reason);
  });
  t.after(() => checker.stop());
  checker.start();
  return { upstream, calls, checker };
}

test('the check type follows the pool: tcp for a protocol: tcp pool, http otherwise; a configured type is kept', () => {
  const unset = HealthCheckConfig.parse({});
  assert.equal(unset.type, undefined);
  assert.equal(resolveCheckSettings(unset, 'tcp').type, 'tcp');
  assert.equal(resolveCheckSettings(unset, 'http1').type, 'http');
  assert.equal(resolveCheckSettings(unset, 'h2c').type, 'http');
  assert.equal(resolveCheckSettings(HealthCheckConfig.parse({ type: 'tcp' }), 'http1').type, 'tcp');
  assert.equal(resolveCheckSettings(HealthCheckConfig.parse({ type: 'grpc' }), 'h2').type, 'grpc');
});

test('tcp send/expect: redis-server answers "PING\\r\\n" with "+PONG": up; expecting +PONG without sending PING: down with the timeout reason', { timeout: 20_000 }, async (t) => {
  const redis = await startRedisServer(t);
  const url = `tcp://127.0.0.1:${redis.port}`;
  const up = tcpCheck(t, url, { send: 'PING\r\n', expect: '+PONG', rise: 2 }, 'unhealthy');
  await eventually(() => up.calls.length === 1, { what: 'redis up' });
  assert.deepEqual(up.calls.map((c) => [c.state, c.reason]), [['healthy', '2 consecutive checks passed']]);
  // Redis says nothing until asked: the same expectation without `send` never passes.
  const silent = tcpCheck(t, url, { expect: '+PONG', timeout: 300, fall: 1 });
  await eventually(() => silent.calls.length === 1, { what: 'redis without PING down' });
  assert.deepEqual(silent.calls.map((c) => [c.state, c.reason]), [['unhealthy', 'expected "+PONG" not received in 300ms (nothing received) (1 consecutive checks failed)']]);
});

test('tcp send/expect: an answer without the expected text fails with it quoted (escaped, cut to 60 characters)', async (t) => {
  const server = await tcpServer(t, (socket) => socket.once('data', () => socket.write(`-ERR unknown command 'PING'\r\n`)));
  const { calls } = tcpCheck(t, server.url, { send: 'PING\r\n', expect: '+PONG', timeout: 300, fall: 1 });
  await eventually(() => calls.length === 1, { what: 'wrong answer verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['unhealthy', `expected "+PONG" not received in 300ms (got "-ERR unknown command 'PING'\\r\\n") (1 consecutive checks failed)`]]);
  assert.equal(server.received[0], 'PING\r\n', 'send goes out as written');

  const long = await tcpServer(t, (socket) => socket.write('x'.repeat(100)));
  const cut = tcpCheck(t, long.url, { expect: '+PONG', timeout: 300, fall: 1 });
  await eventually(() => cut.calls.length === 1, { what: 'long answer verdict' });
  assert.equal(cut.calls[0].reason, `expected "+PONG" not received in 300ms (got "${'x'.repeat(60)}"...) (1 consecutive checks failed)`);
});

test('tcp send/expect: a server that accepts and says nothing fails when the timeout passes', async (t) => {
  const server = await tcpServer(t, () => {});
  const { calls } = tcpCheck(t, server.url, { send: 'PING\r\n', expect: '+PONG', timeout: 200, fall: 1 });
  const started = performance.now();
  await eventually(() => calls.length === 1, { what: 'silent server verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['unhealthy', 'expected "+PONG" not received in 200ms (nothing received) (1 consecutive checks failed)']]);
  assert.ok(calls[0].at - started >= 190, `failed after ${(calls[0].at - started).toFixed(0)}ms`);
});

test('tcp send/expect: a server that closes first fails with "connection closed before" (and what it sent, if anything)', async (t) => {
  const closing = await tcpServer(t, (socket) => socket.once('data', () => socket.end()));
  const a = tcpCheck(t, closing.url, { send: 'PING\r\n', expect: '+PONG', timeout: 2000, fall: 1 });
  await eventually(() => a.calls.length === 1, { what: 'closing server verdict' });
  assert.deepEqual(a.calls.map((c) => [c.state, c.reason]), [['unhealthy', 'connection closed before "+PONG" arrived (1 consecutive checks failed)']]);

  const partial = await tcpServer(t, (socket) => socket.end('+PO'));
  const b = tcpCheck(t, partial.url, { expect: '+PONG', timeout: 2000, fall: 1 });
  await eventually(() => b.calls.length === 1, { what: 'partial answer verdict' });
  assert.deepEqual(b.calls.map((c) => [c.state, c.reason]), [['unhealthy', 'connection closed before "+PONG" arrived (got "+PO") (1 consecutive checks failed)']]);
});

test('tcp send/expect: the expected text may arrive split over reads, after other bytes', async (t) => {
  const server = await tcpServer(t, (socket) => {
    socket.write('# banner\r\n+PO');
    // Apart in time so the probe reads the two halves separately (the point of the test).
    setTimeout(() => socket.writable && socket.write('NG\r\n'), 30);
  });
  const { calls } = tcpCheck(t, server.url, { expect: '+PONG', timeout: 2000, rise: 2 }, 'unhealthy');
  await eventually(() => calls.length === 1, { what: 'split answer verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['healthy', '2 consecutive checks passed']]);
});

test('tcp send/expect: more than 64 KiB without the text fails at once, without waiting for the timeout', async (t) => {
  const server = await tcpServer(t, (socket) => socket.write(Buffer.alloc(70 * 1024, 'y')));
  const { calls } = tcpCheck(t, server.url, { expect: '+PONG', timeout: 60_000, fall: 1 });
  await eventually(() => calls.length === 1, { what: 'oversized answer verdict' });
  assert.equal(calls[0].reason, `expected "+PONG" not in the first 64 KiB the upstream sent (got "${'y'.repeat(60)}"...) (1 consecutive checks failed)`);
});

test('tcp send without expect: the bytes reach the upstream and the probe passes once connected', async (t) => {
  const server = await tcpServer(t, () => {});
  const { calls } = tcpCheck(t, server.url, { send: 'HELLO\n', rise: 1 }, 'unhealthy');
  await eventually(() => calls.length === 1, { what: 'send-only verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason]), [['healthy', '1 consecutive checks passed']]);
  await eventually(() => server.received[0] === 'HELLO\n', { what: 'the probe bytes to arrive' });
});

test('tcp send/expect over TLS (an https upstream): the exchange runs inside the verified TLS connection', async (t) => {
  const ca = await makeTestCa(t);
  const leaf = await ca.issue('redis-tls');
  const seen: string[] = [];
  const server = tls.createServer({ cert: leaf.cert, key: leaf.key }, (socket) => {
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      seen.push(d.toString('latin1'));
      socket.write('+PONG\r\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const upstream = new Upstream({ url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, weight: 1, maxConnections: 0 });
  upstream.health = 'unhealthy';
  const calls: string[] = [];
  const settings = resolveCheckSettings(HealthCheckConfig.parse({ ...fast, jitter: 0, type: 'tcp', send: 'PING\r\n', expect: '+PONG', rise: 1 }), 'http1');
  const checker = new ActiveChecker(settings, [upstream], (u, state, reason) => {
    calls.push(`${state}: ${reason}`);
    u.setHealth(state, reason);
  }, null, readUpstreamTls(UpstreamTlsConfig.parse({ ca: ca.caPath })));
  t.after(() => checker.stop());
  checker.start();
  await eventually(() => calls.length === 1, { what: 'TLS send/expect verdict' });
  assert.deepEqual(calls, ['healthy: 1 consecutive checks passed']);
  assert.equal(seen[0], 'PING\r\n');
});

test('timing: the first probe goes at start; fast_interval while changing state, interval otherwise', async (t) => {
  // 3 failures (healthy -> unhealthy), then successes (unhealthy -> healthy).
  const s = await probeServer(t, (n) => ({ status: n < 3 ? 500 : 200 }));
  const started = performance.now();
  const { calls } = check(t, s.url, { interval: 2000, fast_interval: 100, timeout: 1000, fall: 3, rise: 2 }, () => s.probes.length);
  await eventually(() => calls.length === 2, { timeout: 8000, what: 'down and up again' });
  const at = s.probes.map((p) => p.at);
  const gap = (i: number): number => at[i] - at[i - 1];
  assert.ok(at[0] - started < 500, `first probe ${(at[0] - started).toFixed(0)}ms after start`);
  // One failure seen: the next probe comes after fast_interval, not interval.
  assert.ok(gap(1) >= 90 && gap(1) < 500, `gap 1->2 ${gap(1).toFixed(0)}ms`);
  assert.ok(gap(2) >= 90 && gap(2) < 500, `gap 2->3 ${gap(2).toFixed(0)}ms`);
  // Unhealthy with no success yet: settled, back to interval.
  assert.ok(gap(3) >= 1900 && gap(3) < 3500, `gap 3->4 ${gap(3).toFixed(0)}ms`);
  // One success seen while unhealthy: fast again.
  assert.ok(gap(4) >= 90 && gap(4) < 500, `gap 4->5 ${gap(4).toFixed(0)}ms`);
  assert.deepEqual(calls.map((c) => [c.state, c.probes]), [['unhealthy', 3], ['healthy', 5]]);
});

test('timing: a steady healthy upstream is probed every interval', async (t) => {
  const s = await probeServer(t, () => ({ status: 200 }));
  check(t, s.url, { interval: 300, fast_interval: 20, timeout: 1000 });
  await eventually(() => s.probes.length >= 3, { what: 'three probes' });
  const gaps = [s.probes[1].at - s.probes[0].at, s.probes[2].at - s.probes[1].at];
  for (const g of gaps) assert.ok(g >= 280 && g < 1000, `gap ${g.toFixed(0)}ms, expected ~300ms`);
});

test('stop(): no probe arrives after stop', async (t) => {
  const s = await probeServer(t, () => ({ status: 200 }));
  const { checker } = check(t, s.url, { interval: 50, fast_interval: 50, timeout: 1000 });
  await eventually(() => s.probes.length >= 3, { what: 'some probes' });
  await checker.stop();
  const count = s.probes.length;
  // Absence: the count must stay put for 500ms (10 intervals).
  const until = Date.now() + 500;
  while (Date.now() < until) {
    assert.equal(s.probes.length, count, 'a probe arrived after stop()');
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.equal(s.probes.length, count);
});

test('stop(): a probe in flight at stop reports nothing', async (t) => {
  const s = await probeServer(t, () => 'hang');
  const { checker, calls, upstream } = check(t, s.url, { interval: 50, fast_interval: 50, timeout: 2000, fall: 1 });
  await eventually(() => s.held.length === 1, { what: 'a held probe' });
  const stopped = checker.stop();
  s.held[0].writeHead(500).end();
  await stopped;
  // Give a late verdict every chance to land.
  await eventually(() => s.held[0].writableFinished, { what: 'the answer written' });
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(calls, []);
  assert.equal(upstream.health, 'healthy');
  assert.equal(s.probes.length, 1);
});

test('every upstream of the pool is probed on its own', async (t) => {
  const good = await probeServer(t, () => ({ status: 200 }));
  const bad = await probeServer(t, () => ({ status: 500 }));
  const a = new Upstream({ url: good.url, weight: 1, maxConnections: 0 });
  const b = new Upstream({ url: bad.url, weight: 1, maxConnections: 0 });
  const calls: [string, HealthState, string][] = [];
  const checker = new ActiveChecker(resolveCheckSettings(HealthCheckConfig.parse({ ...fast, jitter: 0, fall: 2 }), 'http1'), [a, b], (u, state, reason) => {
    calls.push([u.id, state, reason]);
    u.setHealth(state, reason);
  });
  t.after(() => checker.stop());
  checker.start();
  await eventually(() => calls.length === 1 && good.probes.length >= 3, { what: 'b down, a probed' });
  assert.deepEqual(calls, [[b.id, 'unhealthy', 'status 500 (2 consecutive checks failed)']]);
  assert.equal(a.health, 'healthy');
});

/** A server answering "état: prêt" in two writes, cut inside the two bytes of "ê". */
async function splitUtf8Server(t: TestContext): Promise<{ url: string; requests: () => number }> {
  const body = Buffer.from('état: prêt');
  const cut = body.indexOf(Buffer.from('ê')) + 1;
  let requests = 0;
  const server = http.createServer((_req, res) => {
    requests++;
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.write(body.subarray(0, cut));
    setTimeout(() => res.end(body.subarray(cut)), 30);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests };
}

test('http: body_contains reads a body that arrives in several chunks', async (t) => {
  const s = await splitUtf8Server(t);
  const { calls } = check(t, s.url, { ...fast, body_contains: 'tat: pr', fall: 1, rise: 1 }, s.requests, 'unhealthy');
  await eventually(() => calls.length === 1, { what: 'a verdict' });
  assert.deepEqual(calls.map((c) => [c.state, c.reason, c.probes]), [['healthy', '1 consecutive checks passed', 1]]);
});

test('http: body_contains matches text whose UTF-8 bytes arrive split across chunks', {
}, async (t) => {
  const s = await splitUtf8Server(t);
  const { upstream } = check(t, s.url, { ...fast, body_contains: 'prêt', fall: 1, rise: 1 }, s.requests, 'unhealthy');
  await eventually(() => s.requests() >= 2, { what: 'two probes' });
  assert.equal(upstream.health, 'healthy');
});

test('every passing probe is reported to onPass (passive health readmits a refused upstream on it); failing ones are not', async (t) => {
  let healthy = false;
  const s = await probeServer(t, () => ({ status: healthy ? 200 : 500 }));
  const upstream = new Upstream({ url: s.url, weight: 1, maxConnections: 0 });
  const passed: Upstream[] = [];
  const checker = new ActiveChecker(resolveCheckSettings(HealthCheckConfig.parse({ jitter: 0, ...fast, fall: 5 }), 'http1'), [upstream], () => {}, (u) => passed.push(u));
  t.after(() => checker.stop());
  checker.start();
  await eventually(() => s.probes.length >= 2);
  assert.equal(passed.length, 0, 'a failing probe is no pass');
  healthy = true;
  await eventually(() => passed.length >= 2, { what: 'two passes reported' });
  assert.ok(passed.every((u) => u === upstream));
});
