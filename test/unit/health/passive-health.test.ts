import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { PassiveHealth } from '../../../src/health/passive-health.ts';
import { Pool } from '../../../src/upstream/pool.ts';
import { ConnectionPools } from '../../../src/transport/connection-pools.ts';
import { Upstream } from '../../../src/upstream/upstream.ts';
import { PoolConfig } from '../../../src/config/schema.ts';
import { upstreamResult, upstreamState, type UpstreamStateEvent } from '../../../src/core/events.ts';
import { clientBodyFailed, clientGone, upstreamFailure } from '../../../src/proxy/status.ts';
import type { FulcrumError } from '../../../src/errors.ts';
import { eventually } from '../../helpers/eventually.ts';
import { closedPort } from '../../helpers/servers.ts';
import net from 'node:net';

/** Overrides of outlier_detection or circuit_breaker, validated by the schema. */
type OutlierInput = Record<string, unknown>;

interface Setup {
  pool: Pool;
  passive: PassiveHealth;
  ups: readonly Upstream[];
  /** `fulcrum:upstream:state` events of this pool, with `Date.now()` (mockable) and `performance.now()`. */
  events: (UpstreamStateEvent & { at: number; perf: number })[];
}

let pools = 0;
const connections = new ConnectionPools();

/** A pool of `n` upstreams (nothing listens: nothing is sent) and a PassiveHealth on them, stopped after the test. */
function setup(t: TestContext, n: number, outlier: OutlierInput = {}, breaker: OutlierInput = {}): Setup {
  const name = `passive-${++pools}`;
  const settings = PoolConfig.parse({
    upstreams: Array.from({ length: n }, (_, i) => `http://127.0.0.1:${10_001 + i}`),
    outlier_detection: outlier,
    circuit_breaker: breaker,
  });
  const pool = new Pool(name, settings, connections);
  pool.adopt();
  const passive = new PassiveHealth(settings, pool.upstreams);
  const events: Setup['events'] = [];
  const onState = (m: unknown): void => {
    const e = m as UpstreamStateEvent;
    if (e.pool === name) events.push({ ...e, at: Date.now(), perf: performance.now() });
  };
  upstreamState.subscribe(onState);
  t.after(async () => {
    passive.stop();
    upstreamState.unsubscribe(onState);
    await pool.close();
  });
  return { pool, passive, ups: pool.upstreams, events };
}

const errno = (code: string): Error => Object.assign(new Error(`boom ${code}`), { code });
const refused = (): FulcrumError => upstreamFailure(errno('ECONNREFUSED'), false);
const reset = (): FulcrumError => upstreamFailure(errno('ECONNRESET'), true);

function fail(p: PassiveHealth, upstream: Upstream, times = 1, status = 503): void {
  for (let i = 0; i < times; i++) p.record({ upstream, status, failure: null });
}
function failWith(p: PassiveHealth, upstream: Upstream, failure: FulcrumError): void {
  p.record({ upstream, status: 0, failure });
}
function ok(p: PassiveHealth, upstream: Upstream, times = 1, status = 200): void {
  for (let i = 0; i < times; i++) p.record({ upstream, status, failure: null });
}

const noBreaker = { enabled: false };
const noOutlier = { enabled: false };

// ---------------------------------------------------------------- outlier ejection

test('outlier: each gateway failure kind counts; ejected on exactly the Nth consecutive one', (t) => {
  const kinds: [string, (p: PassiveHealth, u: Upstream) => void, string][] = [
    ['502', (p, u) => fail(p, u, 1, 502), 'status 502'],
    ['503', (p, u) => fail(p, u, 1, 503), 'status 503'],
    ['504', (p, u) => fail(p, u, 1, 504), 'status 504'],
    ['reset', (p, u) => failWith(p, u, reset()), 'upstream closed the connection (ECONNRESET)'],
    ['connect timeout', (p, u) => failWith(p, u, upstreamFailure(errno('UND_ERR_CONNECT_TIMEOUT'), false)), 'connect timeout: boom UND_ERR_CONNECT_TIMEOUT'],
    ['headers timeout', (p, u) => failWith(p, u, upstreamFailure(errno('UND_ERR_HEADERS_TIMEOUT'), true)), 'upstream sent no response headers in time'],
  ];
  for (const [name, failOnce, last] of kinds) {
    const { passive, ups, events } = setup(t, 4, { consecutive_failures: 3, base_ejection_time: 100 }, noBreaker);
    const u = ups[0];
    failOnce(passive, u);
    failOnce(passive, u);
    assert.equal(u.ejected, false, `${name}: not after 2`);
    assert.equal(events.length, 0);
    failOnce(passive, u);
    assert.equal(u.ejected, true, `${name}: ejected after 3`);
    assert.equal(u.ejections, 1);
    assert.deepEqual(
      events.map((e) => [e.upstream, e.field, e.from, e.to, e.reason]),
      [[u, 'ejected', false, true, `3 consecutive failures, last: ${last}; out for 100ms`]],
      name,
    );
  }
});

test('outlier: 500, 404 and 2xx answers do not count, and reset the consecutive count', (t) => {
  for (const status of [500, 404, 200, 301]) {
    const { passive, ups } = setup(t, 4, { consecutive_failures: 3 }, noBreaker);
    const u = ups[0];
    fail(passive, u, 10, status);
    assert.equal(u.ejected, false, `${status} x10`);
    fail(passive, u, 2);
    ok(passive, u, 1, status);
    fail(passive, u, 2);
    assert.equal(u.ejected, false, `2 failures, ${status}, 2 failures`);
    fail(passive, u);
    assert.equal(u.ejected, true, `then a third in a row (after ${status})`);
  }
});

test('outlier: no 4xx answer is a failure, for ejection or breaker', (t) => {
  const { passive, ups } = setup(t, 2, { consecutive_failures: 1 }, { min_requests: 1, error_rate: 0.01 });
  const u = ups[0];
  for (let status = 400; status <= 499; status++) fail(passive, u, 3, status);
  assert.equal(u.ejected, false);
  assert.equal(u.circuit, 'closed');
  fail(passive, u, 1, 502);
  assert.equal(u.ejected, true, 'a gateway failure still ejects');
});

test('refused: one refused connection ejects at once, whatever consecutive_failures and max_ejection_percent', (t) => {
  const { pool, passive, ups, events } = setup(t, 3, { consecutive_failures: 5, max_ejection_percent: 0 }, noBreaker);
  const [a, b, c] = ups;
  failWith(passive, a, refused());
  assert.equal(a.ejected, true);
  assert.equal(a.refused, true);
  assert.equal(a.ejections, 0, 'not an outlier ejection: the next one is not made longer');
  failWith(passive, b, refused());
  assert.deepEqual(pool.eligible(), [c], 'the ejection limit is for guesses, a refusal is none');
  assert.deepEqual(
    events.map((e) => [e.upstream, e.field, e.to, e.reason]),
    [
      [a, 'ejected', true, 'connect failed (ECONNREFUSED): nothing took the connection; out until a connect probe or a health check passes'],
      [b, 'ejected', true, 'connect failed (ECONNREFUSED): nothing took the connection; out until a connect probe or a health check passes'],
    ],
  );
  // Unreachable hosts are refusals too; connect timeouts are not (they count as ordinary failures).
  const other = setup(t, 3, { consecutive_failures: 5 }, noBreaker);
  failWith(other.passive, other.ups[0], upstreamFailure(errno('EHOSTUNREACH'), false));
  assert.equal(other.ups[0].refused, true);
  failWith(other.passive, other.ups[1], upstreamFailure(errno('UND_ERR_CONNECT_TIMEOUT'), false));
  assert.equal(other.ups[1].ejected, false);
});

test('refused: nothing happens with outlier detection off', (t) => {
  const { passive, ups } = setup(t, 2, noOutlier, noBreaker);
  failWith(passive, ups[0], refused());
  assert.equal(ups[0].ejected, false);
});

test('refused: a connect probe brings it back once its port listens, and not before', async (t) => {
  const port = await closedPort();
  const settings = PoolConfig.parse({ upstreams: [`http://127.0.0.1:${port}`, 'http://127.0.0.1:10001'] });
  const pool = new Pool(`passive-probe-${++pools}`, settings, connections);
  pool.adopt();
  const passive = new PassiveHealth(settings, pool.upstreams);
  t.after(async () => {
    passive.stop();
    await pool.close();
  });
  passive.start();
  const [u] = pool.upstreams;
  const reasons: string[] = [];
  const onState = (m: unknown): void => void ((m as UpstreamStateEvent).upstream === u && reasons.push((m as UpstreamStateEvent).reason));
  upstreamState.subscribe(onState);
  t.after(() => void upstreamState.unsubscribe(onState));
  const connects = t.mock.method(net, 'connect');
  passive.record({ upstream: u, status: 0, failure: refused() });
  assert.equal(u.ejected, true);
  // The first probes (after 250 ms, then 500 ms more) find nothing listening: still out.
  await eventually(() => connects.mock.callCount() >= 2, { what: 'two probes' });
  assert.equal(u.ejected, true);
  assert.ok(connects.mock.calls.every((c) => (c.arguments[0] as unknown as { port: number }).port === port));
  const server = net.createServer((s) => s.destroy());
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  await eventually(() => !u.ejected, { timeout: 3000, what: 'the probe to readmit it' });
  assert.equal(u.refused, false);
  assert.equal(reasons.at(-1), 'a connect probe succeeded');
  assert.deepEqual(pool.eligible(), pool.upstreams);
});

test('refused: a passing active check readmits it; an outlier ejection is not cut short by one', (t) => {
  const { passive, ups, events } = setup(t, 3, { consecutive_failures: 1, base_ejection_time: 60_000, max_ejection_percent: 100 }, noBreaker);
  passive.start();
  const [a, b] = ups;
  failWith(passive, a, refused());
  fail(passive, b, 1, 502);
  passive.checkPassed(a);
  passive.checkPassed(b);
  assert.equal(a.ejected, false);
  assert.equal(events.at(-1)!.reason, 'an active health check passed');
  assert.equal(b.ejected, true, 'an outlier ejection runs its time');
});

test('refused: stop() ends the probes; a reload resumes them for an upstream still out', async (t) => {
  const { passive, ups } = setup(t, 2, {}, noBreaker);
  passive.start();
  const [a] = ups;
  failWith(passive, a, refused());
  passive.stop();
  assert.equal(a.ejected, true);
  // The next pool (a reload) takes over the same Upstream: it keeps probing; here the port still refuses.
  const settings = PoolConfig.parse({ upstreams: ups.map((u) => `http://${u.id}`) });
  const next = new PassiveHealth(settings, ups);
  t.after(() => next.stop());
  next.start();
  assert.equal(a.ejected, true);
  assert.equal(a.refused, true);
  next.checkPassed(a);
  assert.equal(a.ejected, false, 'the new one knows it was out for a refusal');
  // Outlier detection turned off by a reload: an upstream out for a refusal is back at once.
  failWith(next, a, refused());
  next.stop();
  const off = new PassiveHealth(PoolConfig.parse({ upstreams: ups.map((u) => `http://${u.id}`), outlier_detection: { enabled: false } }), ups);
  t.after(() => off.stop());
  off.start();
  assert.equal(a.ejected, false);
});

test('outlier: client-side failures neither count nor reset the count', (t) => {
  const { passive, ups } = setup(t, 4, { consecutive_failures: 3 }, noBreaker);
  const [u, v] = ups;
  for (let i = 0; i < 10; i++) failWith(passive, u, clientGone());
  for (let i = 0; i < 10; i++) failWith(passive, u, clientBodyFailed(new Error('aborted')));
  for (let i = 0; i < 10; i++) failWith(passive, u, upstreamFailure(errno('UND_ERR_INVALID_ARG'), true));
  assert.equal(u.ejected, false);
  fail(passive, v, 2);
  failWith(passive, v, clientGone());
  fail(passive, v);
  assert.equal(v.ejected, true, 'the client failure in between did not reset the count');
});

test('outlier: disabled means never ejected', (t) => {
  const { passive, ups, events } = setup(t, 2, noOutlier, noBreaker);
  fail(passive, ups[0], 50);
  assert.equal(ups[0].ejected, false);
  assert.deepEqual(events, []);
});

test('outlier: an upstream of another pool is ignored', (t) => {
  const { passive } = setup(t, 2, { consecutive_failures: 1 }, noBreaker);
  const stranger = new Upstream({ url: 'http://127.0.0.1:9', weight: 1, maxConnections: 0 });
  fail(passive, stranger, 5);
  assert.equal(stranger.ejected, false);
});

test('outlier: ejected upstreams leave the pool snapshot and return after base_ejection_time (real timers)', async (t) => {
  const { pool, passive, ups, events } = setup(t, 4, { consecutive_failures: 3, base_ejection_time: 100, max_ejection_time: 10_000 }, noBreaker);
  const [a, b, c, d] = ups;
  assert.deepEqual(pool.eligible(), [a, b, c, d]);
  fail(passive, b, 3);
  assert.equal(b.eligible(), false);
  assert.equal(b.available(), false);
  assert.deepEqual(pool.eligible(), [a, c, d]);
  await eventually(() => !b.ejected, { timeout: 3000, what: 'first ejection to end' });
  assert.deepEqual(pool.eligible(), [a, b, c, d]);
  const first = events[1].perf - events[0].perf;
  assert.ok(first >= 95 && first < 190, `first ejection lasted ${first.toFixed(1)}ms, expected ~100ms`);
  assert.equal(events[1].reason, 'ejection time of 100ms over');

  // Straight back into trouble: the second ejection lasts twice as long.
  fail(passive, b, 3);
  assert.equal(b.ejections, 2);
  assert.equal(events[2].reason, '3 consecutive failures, last: status 503; out for 200ms');
  assert.deepEqual(pool.eligible(), [a, c, d]);
  await eventually(() => !b.ejected, { timeout: 3000, what: 'second ejection to end' });
  const second = events[3].perf - events[2].perf;
  assert.ok(second >= 195 && second < 400, `second ejection lasted ${second.toFixed(1)}ms, expected ~200ms`);
  assert.ok(second > first + 50, `second (${second.toFixed(1)}ms) not longer than first (${first.toFixed(1)}ms)`);
  assert.deepEqual(
    events.map((e) => [e.upstream.id, e.field, e.to]),
    [
      [b.id, 'ejected', true],
      [b.id, 'ejected', false],
      [b.id, 'ejected', true],
      [b.id, 'ejected', false],
    ],
  );
});

test('outlier: ejection time is base x ejections, capped at max_ejection_time (exact, mocked clock)', (t) => {
  const { passive, ups, events } = setup(t, 2, { consecutive_failures: 2, base_ejection_time: 100, max_ejection_time: 250 }, noBreaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const u = ups[0];
  const lengths: number[] = [];
  for (const expected of [100, 200, 250, 250]) {
    fail(passive, u, 2);
    assert.equal(u.ejected, true);
    assert.match(events.at(-1)!.reason, new RegExp(`out for ${expected}ms$`));
    t.mock.timers.tick(expected - 1);
    assert.equal(u.ejected, true, `still ejected at ${expected - 1}ms of ${expected}`);
    t.mock.timers.tick(1);
    assert.equal(u.ejected, false, `back at ${expected}ms`);
    assert.equal(events.at(-1)!.reason, `ejection time of ${expected}ms over`);
    lengths.push(events.at(-1)!.at - events.at(-2)!.at);
  }
  assert.deepEqual(lengths, [100, 200, 250, 250]);
  assert.equal(u.ejections, 4);
});

test('outlier: failures while ejected do not extend the ejection', (t) => {
  const { passive, ups } = setup(t, 2, { consecutive_failures: 2, base_ejection_time: 100 }, noBreaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const u = ups[0];
  fail(passive, u, 2);
  t.mock.timers.tick(50);
  fail(passive, u, 5);
  assert.equal(u.ejections, 1);
  t.mock.timers.tick(50);
  assert.equal(u.ejected, false);
});

test('outlier: a success more than base_ejection_time after returning forgives earlier ejections', (t) => {
  const { passive, ups, events } = setup(t, 2, { consecutive_failures: 1, base_ejection_time: 100, max_ejection_time: 10_000 }, noBreaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const u = ups[0];
  fail(passive, u);
  t.mock.timers.tick(100);
  assert.equal(u.ejected, false);
  // Exactly base after return: not yet forgiven.
  t.mock.timers.tick(100);
  ok(passive, u);
  assert.equal(u.ejections, 1);
  fail(passive, u);
  assert.match(events.at(-1)!.reason, /out for 200ms$/);
  t.mock.timers.tick(200);
  assert.equal(u.ejected, false);
  // base + 1 after return: forgiven, the next ejection is base again.
  t.mock.timers.tick(101);
  ok(passive, u);
  assert.equal(u.ejections, 0);
  fail(passive, u);
  assert.match(events.at(-1)!.reason, /out for 100ms$/);
  assert.equal(u.ejections, 1);
});

test('outlier: max_ejection_percent 50 of 4 ejects at most 2; the next waits for one to return', (t) => {
  const { pool, passive, ups } = setup(t, 4, { consecutive_failures: 3, base_ejection_time: 100, max_ejection_percent: 50 }, noBreaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const [a, b, c, d] = ups;
  fail(passive, a, 3);
  t.mock.timers.tick(10);
  fail(passive, b, 3);
  fail(passive, c, 3);
  fail(passive, d, 10);
  assert.deepEqual(ups.map((u) => u.ejected), [true, true, false, false]);
  assert.deepEqual(pool.eligible(), [c, d]);
  // a returns; c is still failing and goes on its next failure.
  t.mock.timers.tick(90);
  assert.equal(a.ejected, false);
  assert.deepEqual(pool.eligible(), [a, c, d]);
  fail(passive, c);
  assert.deepEqual(ups.map((u) => u.ejected), [false, true, true, false]);
  fail(passive, d);
  assert.equal(d.ejected, false, 'still two out');
});

test('outlier: one upstream may always be ejected (3 at 10%, 2 at 0%)', (t) => {
  for (const [n, percent] of [[3, 10], [2, 0]] as const) {
    const { passive, ups } = setup(t, n, { consecutive_failures: 2, max_ejection_percent: percent }, noBreaker);
    for (const u of ups) fail(passive, u, 4);
    assert.equal(ups.filter((u) => u.ejected).length, 1, `${n} at ${percent}%`);
    assert.equal(ups[0].ejected, true);
  }
});

test('outlier: 100% of a pool may be ejected when configured', (t) => {
  const { pool, passive, ups } = setup(t, 3, { consecutive_failures: 1, max_ejection_percent: 100 }, noBreaker);
  for (const u of ups) fail(passive, u);
  assert.deepEqual(ups.map((u) => u.ejected), [true, true, true]);
  assert.deepEqual(pool.eligible(), []);
});

test('stop(): pending ejection and breaker timers are cleared, and the channel is left', (t) => {
  const { passive, ups } = setup(t, 2, { consecutive_failures: 1, base_ejection_time: 100 }, { min_requests: 1, error_rate: 0.5, open_time: 100 });
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const [a] = ups;
  passive.start();
  upstreamResult.publish({ upstream: a, status: 502, failure: null });
  assert.equal(a.ejected, true);
  assert.equal(a.circuit, 'open');
  passive.stop();
  t.mock.timers.tick(1000);
  assert.equal(a.ejected, true, 'the return timer was cleared');
  assert.equal(a.circuit, 'open', 'the half-open timer was cleared');
  upstreamResult.publish({ upstream: ups[1], status: 502, failure: null });
  assert.equal(ups[1].ejected, false, 'no longer subscribed');
});

test('start(): results published on fulcrum:upstream:result are recorded, once even if started twice', (t) => {
  const { passive, ups } = setup(t, 2, { consecutive_failures: 2 }, noBreaker);
  passive.start();
  passive.start();
  upstreamResult.publish({ upstream: ups[0], status: 502, failure: null });
  assert.equal(ups[0].ejected, false, 'one result counted once');
  upstreamResult.publish({ upstream: ups[0], status: 0, failure: refused() });
  assert.equal(ups[0].ejected, true);
});

// ---------------------------------------------------------------- circuit breaker

const breaker = { error_rate: 0.5, min_requests: 4, window: 10_000, open_time: 100, half_open_requests: 2 };

test('breaker: opens on the failure that brings the failed share to error_rate after min_requests', (t) => {
  const { pool, passive, ups, events } = setup(t, 2, noOutlier, breaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const [u, v] = ups;
  // Below min_requests: 2 of 3 failed, still closed.
  ok(passive, u);
  fail(passive, u, 2);
  assert.equal(u.circuit, 'closed');
  // 2 of 4: at the rate, on a failure: open.
  ok(passive, v, 2);
  fail(passive, v);
  assert.equal(v.circuit, 'closed', '1 of 3');
  fail(passive, v);
  assert.equal(v.circuit, 'open', '2 of 4');
  assert.equal(v.available(), false);
  assert.equal(v.eligible(), false);
  assert.deepEqual(pool.eligible(), [u]);
  assert.deepEqual(
    events.map((e) => [e.upstream, e.field, e.from, e.to, e.reason]),
    [[v, 'circuit', 'closed', 'open', '2 of 4 requests failed in 10s; closed to traffic for 100ms']],
  );
});

test('breaker: stays closed below error_rate; only failures re-evaluate', (t) => {
  const { passive, ups } = setup(t, 1, noOutlier, breaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const u = ups[0];
  ok(passive, u, 3);
  fail(passive, u);
  assert.equal(u.circuit, 'closed', '1 of 4');
  fail(passive, u);
  assert.equal(u.circuit, 'closed', '2 of 5');
  fail(passive, u);
  assert.equal(u.circuit, 'open', '3 of 6');
});

test('breaker: 500 and 404 answers and client failures are not failures', (t) => {
  const { passive, ups } = setup(t, 1, noOutlier, { ...breaker, min_requests: 2 });
  const u = ups[0];
  ok(passive, u, 10, 500);
  ok(passive, u, 10, 404);
  for (let i = 0; i < 10; i++) failWith(passive, u, clientGone());
  assert.equal(u.circuit, 'closed');
  // Connect failures and resets are.
  failWith(passive, u, refused());
  failWith(passive, u, reset());
  assert.equal(u.circuit, 'closed', '2 of 22');
});

test('breaker: open -> half-open after open_time; half-open admits half_open_requests in flight; that many successes close it', (t) => {
  const { pool, passive, ups, events } = setup(t, 2, noOutlier, breaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const [u, v] = ups;
  assert.equal(u.halfOpenLimit, 2, 'set from half_open_requests');
  fail(passive, u, 4);
  assert.equal(u.circuit, 'open');
  // Results of requests still in flight while open change nothing.
  ok(passive, u, 5);
  assert.equal(u.circuit, 'open');
  t.mock.timers.tick(99);
  assert.equal(u.circuit, 'open');
  t.mock.timers.tick(1);
  assert.equal(u.circuit, 'half-open');
  assert.equal(events.at(-1)!.reason, 'open for 100ms; letting 2 probe requests through');
  assert.deepEqual(pool.eligible(), [u, v]);
  const admitted = [0, 1, 2, 3].map((n) => {
    u.inFlight = n;
    return u.available();
  });
  assert.deepEqual(admitted, [true, true, false, false]);
  u.inFlight = 0;
  ok(passive, u);
  assert.equal(u.circuit, 'half-open', 'one success of two');
  ok(passive, u);
  assert.equal(u.circuit, 'closed');
  assert.equal(events.at(-1)!.reason, '2 probes succeeded');
  assert.deepEqual(
    events.map((e) => [e.from, e.to]),
    [
      ['closed', 'open'],
      ['open', 'half-open'],
      ['half-open', 'closed'],
    ],
  );
  // Closing forgets the old window: one failure is 1 of 1, below min_requests.
  fail(passive, u);
  assert.equal(u.circuit, 'closed');
  fail(passive, u, 3);
  assert.equal(u.circuit, 'open', '4 of 4 again');
});

test('breaker: one failure while half-open opens it again, and the probe count starts over', (t) => {
  const { passive, ups, events } = setup(t, 1, noOutlier, breaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const u = ups[0];
  fail(passive, u, 4);
  t.mock.timers.tick(100);
  assert.equal(u.circuit, 'half-open');
  ok(passive, u);
  failWith(passive, u, reset());
  assert.equal(u.circuit, 'open');
  assert.equal(events.at(-1)!.reason, 'a probe failed while half-open; closed to traffic for 100ms');
  t.mock.timers.tick(99);
  assert.equal(u.circuit, 'open', 'a full open_time again');
  t.mock.timers.tick(1);
  assert.equal(u.circuit, 'half-open');
  ok(passive, u);
  assert.equal(u.circuit, 'half-open', 'the success before the failure does not count');
  ok(passive, u);
  assert.equal(u.circuit, 'closed');
});

test('breaker: failures older than the window are forgotten', (t) => {
  const { passive, ups } = setup(t, 2, noOutlier, { ...breaker, window: 1000 });
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const [u, v] = ups;
  // Within the window: 3, then 1 more 950ms later, is 4 of 4.
  fail(passive, u, 3);
  t.mock.timers.tick(950);
  fail(passive, u);
  assert.equal(u.circuit, 'open');
  // A whole window later: 1 of 1.
  fail(passive, v, 3);
  t.mock.timers.tick(1000);
  fail(passive, v);
  assert.equal(v.circuit, 'closed');
  fail(passive, v, 2);
  assert.equal(v.circuit, 'closed', '3 of 3, below min_requests');
  fail(passive, v);
  assert.equal(v.circuit, 'open');
});

test('breaker: a failure 1140ms old is out of a 1000ms window even when requests come every 190ms', {
}, (t) => {
  const { passive, ups } = setup(t, 1, noOutlier, { error_rate: 0.25, min_requests: 2, window: 1000, open_time: 100, half_open_requests: 1 });
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const u = ups[0];
  fail(passive, u); // t = 0
  for (let i = 0; i < 5; i++) {
    t.mock.timers.tick(190);
    ok(passive, u); // t = 190 .. 950
  }
  t.mock.timers.tick(190);
  // t = 1140: the window (140, 1140] holds 5 successes and this failure: 1 of 6 < 0.25.
  fail(passive, u);
  assert.equal(u.circuit, 'closed');
});

test('breaker: disabled means never open, and halfOpenLimit still follows the config', (t) => {
  const { passive, ups } = setup(t, 1, noOutlier, { ...breaker, enabled: false, half_open_requests: 5 });
  fail(passive, ups[0], 100);
  assert.equal(ups[0].circuit, 'closed');
  assert.equal(ups[0].halfOpenLimit, 5);
});

test('breaker and ejection together: both apply, each with its own timer', (t) => {
  const { pool, passive, ups } = setup(t, 2, { consecutive_failures: 4, base_ejection_time: 300 }, breaker);
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const [u, v] = ups;
  fail(passive, u, 4);
  assert.equal(u.ejected, true);
  assert.equal(u.circuit, 'open');
  assert.deepEqual(pool.eligible(), [v]);
  t.mock.timers.tick(100);
  assert.equal(u.circuit, 'half-open');
  assert.deepEqual(pool.eligible(), [v], 'still ejected');
  t.mock.timers.tick(200);
  assert.equal(u.ejected, false);
  assert.deepEqual(pool.eligible(), [u, v]);
});

test('breaker: real timers, open -> half-open observed by polling', async (t) => {
  const { passive, ups, events } = setup(t, 1, noOutlier, breaker);
  const u = ups[0];
  fail(passive, u, 4);
  assert.equal(u.circuit, 'open');
  await eventually(() => u.circuit === 'half-open', { timeout: 3000, what: 'half-open' });
  const open = events[1].perf - events[0].perf;
  assert.ok(open >= 95 && open < 1000, `open for ${open.toFixed(1)}ms`);
});

test('outlier: ejections carried over a reload are forgiven after base_ejection_time without trouble', {
}, (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  const settings = PoolConfig.parse({ upstreams: ['http://127.0.0.1:10001', 'http://127.0.0.1:10002'], outlier_detection: { consecutive_failures: 1, base_ejection_time: 100 }, circuit_breaker: noBreaker });
  const before = new Pool('passive-reload-old', settings, connections);
  before.adopt();
  before.upstreams[0].ejections = 2;
  const after = new Pool('passive-reload-new', settings, connections, new Map(before.upstreams.map((u) => [u.id, u])));
  after.adopt();
  const passive = new PassiveHealth(settings, after.upstreams);
  t.after(async () => {
    passive.stop();
    await before.close();
    await after.close();
  });
  const u = after.upstreams[0];
  assert.equal(u.ejections, 2, 'carried over');
  t.mock.timers.tick(10_000);
  ok(passive, u);
  assert.equal(u.ejections, 0, 'forgiven after 100x base_ejection_time of success');
});
