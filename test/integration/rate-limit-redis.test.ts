/**
 * Redis-backed rate limits against a real redis-server: one limit shared by two instances, and
 * what happens when Redis dies, comes back, or is slow.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import type { RequestContext } from '../../src/core/context.ts';
import type { Refusal } from '../../src/core/pipeline.ts';
import { createRateLimitGuard, createRateLimitStores, type RateLimitGuard, type RateLimitSettings } from '../../src/middleware/rate-limit.ts';
import { FALL_TIMEOUTS } from '../../src/middleware/rate-limit-redis-store.ts';
import { eventually } from '../helpers/eventually.ts';
import { freePort, startRedisServer } from '../helpers/redis-server.ts';
import { startRawBackend } from '../helpers/servers.ts';
import { capturedLogger } from '../helpers/captured-logger.ts';

const UNREACHABLE = 'rate-limit store redis unreachable, using local buckets';
const REACHABLE = 'rate-limit store redis reachable again';

/** One Fulcrum instance's view: its own stores (own Redis connection) and one guard. */
function instance(t: TestContext, url: string, limit: RateLimitSettings, options: { on_failure?: 'open' | 'closed'; timeout?: number } = {}) {
  const log = capturedLogger();
  const stores = createRateLimitStores(
    { max_entries: 10_000, redis: { url, key_prefix: 'fulcrum:rl:test:', timeout: options.timeout ?? 50, on_failure: options.on_failure ?? 'open' } },
    log.logger,
  );
  t.after(() => stores.close());
  const guard = createRateLimitGuard(limit, 'api', stores);
  return { stores, guard, log };
}

function request(clientAddress = '10.0.0.1'): RequestContext {
  return { clientAddress, req: { rawHeaders: [] } } as unknown as RequestContext;
}

/**
 * Waits until a check is answered by Redis itself, not by a local bucket: connected, scripts
 * loaded, and no missed deadline left over from a slow start (a loaded machine) counting on.
 */
async function untilRedisAnswers(stores: { fallbacks: number; redisStatus: string }, guard: RateLimitGuard, clientAddress = '10.0.0.1'): Promise<void> {
  await eventually(
    async () => {
      const before = stores.fallbacks;
      await guard.check(request(clientAddress));
      return stores.fallbacks === before && stores.redisStatus === 'up';
    },
    { what: 'a check answered by Redis' },
  );
}

/**
 * Runs a check and says how long it took, and for how much of that this process could not run
 * (the longest event-loop delay seen meanwhile: a loaded machine, not the check, is then slow).
 * Upper bounds are checked on `ms - late`, lower bounds on `ms`.
 */
async function timedCheck(guard: RateLimitGuard, ctx: RequestContext): Promise<{ refusal: Refusal | null; ms: number; late: number }> {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const started = performance.now();
  const refusal = await guard.check(ctx);
  const ms = performance.now() - started;
  delay.disable();
  // Delays count beyond the 10 ms sampling interval; with no sample taken, max is 0.
  const late = delay.count > 0 ? Math.max(0, delay.max / 1e6 - 10) : 0;
  return { refusal, ms, late };
}

const shared: RateLimitSettings = { name: 'shared', rate: 50, per: 1000, burst: 50, key: ['route'], store: 'redis' };

/** How many times Redis ran the bucket script (EVALSHA, or EVAL the first time) since CONFIG RESETSTAT. */
async function scriptRuns(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let calls = 0;
  for (const m of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) calls += Number(m[1]);
  return calls;
}

test('two instances share one Redis limit: together they get the global limit, not twice it', async (t) => {
  const redis = await startRedisServer(t);
  // This test measures sharing, not deadlines (those are the slow-Redis tests below): a deadline a
  // loaded test machine can keep, so that every check of the window is answered by Redis.
  const a = instance(t, redis.url, shared, { timeout: 1000 });
  const b = instance(t, redis.url, shared, { timeout: 1000 });
  const ctx = request();
  assert.ok(a.guard.check(ctx) instanceof Promise, 'a Redis limit answers with a promise');
  await untilRedisAnswers(a.stores, a.guard);
  await untilRedisAnswers(b.stores, b.guard);

  // Fresh buckets and command counters for the measurement (the checks above took tokens).
  const admin = new Redis(redis.url);
  t.after(() => admin.disconnect());
  await admin.flushall();
  await admin.call('CONFIG', 'RESETSTAT');
  const fallbacksBefore = a.stores.fallbacks + b.stores.fallbacks;

  let allowed = 0;
  let refused = 0;
  const refusedBy = new Map([[a, 0], [b, 0]]);
  let lastRefusal: Refusal | null = null;
  const started = performance.now();
  let firstAnswered = 0;
  let lastSent = 0;
  while (performance.now() - started < 1000) {
    // Alternate the instances, several checks in flight at once on each.
    const order = [a, b, a, b, a, b, a, b];
    lastSent = performance.now();
    const results = await Promise.all(order.map((i) => i.guard.check(ctx)));
    firstAnswered ||= performance.now();
    results.forEach((refusal, n) => {
      if (refusal === null) allowed++;
      else {
        refused++;
        refusedBy.set(order[n], refusedBy.get(order[n])! + 1);
        lastRefusal = refusal;
      }
    });
    // A check answered by a local bucket would measure each instance's own limit, not sharing.
    assert.equal(a.stores.redisStatus, 'up', 'instance a stopped using Redis during the window');
    assert.equal(b.stores.redisStatus, 'up', 'instance b stopped using Redis during the window');
  }
  const elapsed = performance.now() - started;
  const fellBack = a.stores.fallbacks + b.stores.fallbacks - fallbacksBefore;
  const runs = await scriptRuns(admin);
  // The bucket refilled at least between the first answer and the last send, at most over the
  // whole window (on a busy machine the two differ: the last batch may wait long for its answers).
  const tokens = (ms: number) => shared.burst! + (shared.rate * ms) / shared.per;
  const low = tokens(lastSent - firstAnswered) * 0.9 - 1;
  const high = tokens(elapsed) * 1.1 + 1;
  t.diagnostic(`${allowed} allowed, ${refused} refused in ${elapsed.toFixed(0)} ms; global limit ${low.toFixed(1)}..${high.toFixed(1)}; ${runs} script runs in Redis, ${fellBack} local answers`);
  // Every check of both instances went through Redis, and none was answered locally.
  assert.equal(fellBack, 0, `${fellBack} checks were answered by local buckets, not Redis`);
  assert.equal(runs, allowed + refused, 'Redis ran the bucket script once per check');
  // Each instance alone would allow the whole limit: twice it (the old flake: 235 of 105) is no sharing.
  assert.ok(allowed >= low && allowed <= high, `${allowed} allowed, expected the global limit ${low.toFixed(1)}..${high.toFixed(1)}`);
  assert.ok(refusedBy.get(a)! > 0 && refusedBy.get(b)! > 0, `both instances were refused (a ${refusedBy.get(a)}, b ${refusedBy.get(b)})`);
  assert.equal(lastRefusal!.status, 429);
  assert.equal(lastRefusal!.code, 'FUL_RATE_LIMITED');
  assert.deepEqual(lastRefusal!.headers!.slice(0, 2), ['retry-after', '1']);
  assert.deepEqual(lastRefusal!.headers!.slice(8), ['ratelimit-policy', '50;w=1']);

  // One small hash per bucket, expiring once it would be full again (50 tokens at 50/s: 1 s).
  const key = 'fulcrum:rl:test:api:shared:api';
  assert.deepEqual(Object.keys(await admin.hgetall(key)).sort(), ['t', 'ts']);
  const ttl = await admin.pttl(key);
  assert.ok(ttl > 0 && ttl <= 1000, `PTTL ${ttl}`);
});

test('Redis dies: checks answer at once from local buckets, one warning; it comes back: one info line', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'fallback', rate: 1, per: 60_000, burst: 3, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit);
  await untilRedisAnswers(stores, guard, '10.0.0.9');

  await redis.stop();
  const ctx = request('10.0.0.1');
  const results: Awaited<ReturnType<typeof timedCheck>>[] = [];
  for (let i = 0; i < 20; i++) results.push(await timedCheck(guard, ctx));
  const slowest = Math.max(...results.map((r) => r.ms - r.late));
  t.diagnostic(`slowest check while Redis is down: ${slowest.toFixed(1)} ms (not counting time this process could not run)`);
  assert.ok(slowest < 200, `a check took ${slowest.toFixed(1)} ms`);
  assert.equal(stores.redisStatus, 'down');
  // The local bucket still limits: a full one (3) for this address, then 429s.
  assert.deepEqual(results.map((r) => r.refusal?.status ?? 200), [200, 200, 200, ...Array(17).fill(429)]);
  assert.ok(stores.fallbacks >= 19, `fallbacks: ${stores.fallbacks}`);
  // Down, a check does not even make a promise.
  assert.ok(!(guard.check(ctx) instanceof Promise));

  // ioredis keeps reconnecting in the background; none of it is logged again.
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(log.count(UNREACHABLE), 1);
  assert.equal(log.lines.filter((l) => l.level === 40).length, 1, 'exactly one warning');

  const again = await startRedisServer(t, redis.port);
  assert.equal(again.port, redis.port);
  await eventually(() => stores.redisStatus === 'up', { what: 'reconnected', timeout: 5000 });
  assert.equal(log.count(REACHABLE), 1);
  const before = stores.fallbacks;
  assert.equal((await timedCheck(guard, request('10.0.0.2'))).refusal, null);
  assert.equal(stores.fallbacks, before, 'checks go to Redis again');
  assert.equal(log.count(UNREACHABLE), 1);
});

test('Redis slow (CLIENT PAUSE): checks give up after timeout and fall back; three in a row take Redis out; it is used again after', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'slow', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit, { timeout: 50 });
  await untilRedisAnswers(stores, guard);

  const admin = new Redis(redis.url);
  t.after(() => admin.disconnect());
  // Counted from here: the first check may have been answered locally while connecting.
  const before = stores.fallbacks;
  await admin.call('CLIENT', 'PAUSE', '800', 'ALL');
  for (let i = 1; i <= FALL_TIMEOUTS; i++) {
    const paused = await timedCheck(guard, request());
    assert.equal(paused.refusal, null, 'failing open');
    assert.ok(paused.ms >= 40 && paused.ms - paused.late < 300, `check ${i} took ${paused.ms.toFixed(1)} ms (${paused.late.toFixed(1)} ms of it not running)`);
    assert.equal(stores.fallbacks - before, i);
    // One late answer is not an outage: Redis stays in use until FALL_TIMEOUTS in a row.
    assert.equal(stores.redisStatus, i < FALL_TIMEOUTS ? 'up' : 'down', `after ${i} missed deadlines`);
  }
  assert.equal(log.count(UNREACHABLE), 1);
  // Down: answered at once, without a promise.
  assert.equal(guard.check(request()), null);
  assert.equal(stores.fallbacks - before, FALL_TIMEOUTS + 1);

  await eventually(() => stores.redisStatus === 'up', { what: 'probe finds Redis again', timeout: 5000 });
  assert.equal(log.count(REACHABLE), 1);
  assert.equal((await timedCheck(guard, request())).refusal, null);
  assert.equal(stores.fallbacks - before, FALL_TIMEOUTS + 1);
});

test('a stall that catches many checks in flight counts as one missed deadline: Redis stays in use', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'stall', rate: 1000, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit, { timeout: 200 });
  await untilRedisAnswers(stores, guard);

  const admin = new Redis(redis.url);
  t.after(() => admin.disconnect());
  const before = stores.fallbacks;
  await admin.call('CLIENT', 'PAUSE', '1500', 'ALL');
  // Twenty checks in flight while Redis stalls: each misses its 200 ms deadline, answered locally.
  const stalled = await Promise.all(Array.from({ length: 20 }, () => timedCheck(guard, request())));
  assert.deepEqual(stalled.map((c) => c.refusal), Array(20).fill(null), 'failing open');
  for (const c of stalled) assert.ok(c.ms >= 180, `a check in the stall took only ${c.ms.toFixed(1)} ms`);
  assert.equal(stores.fallbacks - before, 20);
  // One stall, not twenty missed deadlines: the store is still up...
  assert.equal(stores.redisStatus, 'up');
  assert.equal(log.count(UNREACHABLE), 0);
  // ...and once Redis answers again (this PING waits for the pause to end), checks use it.
  await admin.ping();
  const next = guard.check(request());
  assert.ok(next instanceof Promise, 'the next check goes to Redis');
  assert.equal(await next, null);
  assert.equal(stores.fallbacks - before, 20, 'answered by Redis');
  assert.equal(stores.redisStatus, 'up');
});

test('a busy process past the deadline reads the answer that arrived meanwhile: no fallback', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'busy', rate: 1000, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit, { timeout: 50 });
  await untilRedisAnswers(stores, guard);

  const before = stores.fallbacks;
  for (let i = 0; i < 5; i++) {
    const pending = guard.check(request());
    const sent = performance.now();
    assert.ok(pending instanceof Promise);
    // This process is busy (blocked) for three deadlines. Redis has answered meanwhile: it answers
    // another client's PING, sent after the check, only once the check's reply was written.
    execFileSync('redis-cli', ['-p', String(redis.port), 'PING']);
    while (performance.now() - sent < 150);
    assert.equal(await pending, null);
  }
  assert.equal(stores.fallbacks - before, 0, 'an answer that had arrived counted as a missed deadline');
  assert.equal(stores.redisStatus, 'up');
  assert.equal(log.count(UNREACHABLE), 0);
});

test('on_failure closed: Redis down means 503 FUL_RATE_LIMIT_STORE_DOWN, never a 500 or a throw', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'strict', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit, { on_failure: 'closed' });
  await untilRedisAnswers(stores, guard);

  const before = stores.fallbacks;
  await redis.stop();
  for (let i = 0; i < 5; i++) {
    const { refusal, ms, late } = await timedCheck(guard, request());
    assert.ok(ms - late < 200, `a check took ${ms.toFixed(1)} ms (${late.toFixed(1)} ms of it not running)`);
    assert.deepEqual(refusal, { status: 503, code: 'FUL_RATE_LIMIT_STORE_DOWN', message: 'rate limit store unavailable', headers: ['retry-after', '1'] });
  }
  assert.equal(stores.fallbacks - before, 5);
  assert.equal(log.count('rate-limit store redis unreachable, refusing rate-limited requests with 503 (on_failure: closed)'), 1);
});

test('Redis never reachable: the first checks wait at most timeout, then answer locally', async (t) => {
  const port = await freePort();
  const limit: RateLimitSettings = { name: 'nowhere', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, `redis://127.0.0.1:${port}`, limit, { timeout: 50 });
  for (let i = 0; i < 10; i++) {
    const { refusal, ms, late } = await timedCheck(guard, request());
    assert.equal(refusal, null);
    assert.ok(ms - late < 200, `a check took ${ms.toFixed(1)} ms (${late.toFixed(1)} ms of it not running)`);
  }
  assert.equal(stores.redisStatus, 'down');
  assert.equal(stores.fallbacks, 10);
  assert.equal(log.count(UNREACHABLE), 1);
});

test('a slow first connection is not an outage: checks answer locally without a warning until it is ready or fails', async (t) => {
  // Takes the TCP connection and never answers: ioredis's ready check hangs, as with a very busy Redis.
  const silent = await startRawBackend(t, () => {});
  const limit: RateLimitSettings = { name: 'silent', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, `redis://127.0.0.1:${silent.port}`, limit, { timeout: 50 });
  const first = await timedCheck(guard, request());
  assert.equal(first.refusal, null);
  assert.ok(first.ms - first.late < 300, `the first check took ${first.ms.toFixed(1)} ms (${first.late.toFixed(1)} ms of it not running)`);
  // Still connecting: no warning yet, and later checks no longer wait.
  assert.equal(stores.redisStatus, 'connecting');
  assert.equal(log.count(UNREACHABLE), 0);
  assert.equal(guard.check(request()), null);
  assert.equal(stores.fallbacks, 2);
  // Never ready: after the connect deadline (2 s) it is an outage, logged once.
  await eventually(() => stores.redisStatus === 'down', { what: 'taken as down', timeout: 5000 });
  assert.equal(log.count(UNREACHABLE), 1);
});
