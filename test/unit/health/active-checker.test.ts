import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { ActiveChecker } from '../../../src/health/active-checker.ts';
import { Upstream, type HealthState } from '../../../src/upstream/upstream.ts';
import { HealthCheckConfig } from '../../../src/config/schema.ts';
import { eventually } from '../../helpers/eventually.ts';
import { closedPort } from '../../helpers/servers.ts';
import { startBlackhole } from '../../helpers/blackhole.ts';

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
  const checker = new ActiveChecker(HealthCheckConfig.parse({ jitter: 0, ...settings }), [upstream], (u, state, reason) => {
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
  const checker = new ActiveChecker(HealthCheckConfig.parse({ ...fast, jitter: 0, fall: 2 }), [a, b], (u, state, reason) => {
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
  const checker = new ActiveChecker(HealthCheckConfig.parse({ jitter: 0, ...fast, fall: 5 }), [upstream], () => {}, (u) => passed.push(u));
  t.after(() => checker.stop());
  checker.start();
  await eventually(() => s.probes.length >= 2);
  assert.equal(passed.length, 0, 'a failing probe is no pass');
  healthy = true;
  await eventually(() => passed.length >= 2, { what: 'two passes reported' });
  assert.ok(passed.every((u) => u === upstream));
});
