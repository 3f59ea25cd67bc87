/**
 * Redis-backed rate limits against a real redis-server: one limit shared by two instances, and
 * what happens when Redis dies, comes back, or is slow.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import type { RequestContext } from '../../src/core/context.ts';
import type { Refusal } from '../../src/core/pipeline.ts';
import { createLogger } from '../../src/observe/logger.ts';
import { createRateLimitGuard, createRateLimitStores, type RateLimitGuard, type RateLimitSettings } from '../../src/middleware/rate-limit.ts';
import { eventually } from '../helpers/eventually.ts';
import { freePort, startRedisServer } from '../helpers/redis-server.ts';

const UNREACHABLE = 'rate-limit store redis unreachable, using local buckets';
const REACHABLE = 'rate-limit store redis reachable again';

/** Log lines of one "instance", parsed. */
function capturedLogger() {
  const lines: { level: number; msg: string }[] = [];
  let partial = '';
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      partial += chunk;
      let nl: number;
      while ((nl = partial.indexOf('\n')) !== -1) {
        lines.push(JSON.parse(partial.slice(0, nl)));
        partial = partial.slice(nl + 1);
      }
      callback();
    },
  });
  const logger = createLogger({ level: 'info', format: 'json' }, { destination });
  const count = (msg: string) => lines.filter((l) => l.msg === msg).length;
  return { logger, lines, count };
}

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

/** Runs a check and says how long it took; a Redis limit must answer with a promise. */
async function timedCheck(guard: RateLimitGuard, ctx: RequestContext): Promise<{ refusal: Refusal | null; ms: number }> {
  const started = performance.now();
  const refusal = await guard.check(ctx);
  return { refusal, ms: performance.now() - started };
}

const shared: RateLimitSettings = { name: 'shared', rate: 50, per: 1000, burst: 50, key: ['route'], store: 'redis' };

test('two instances share one Redis limit: together they get the global limit, not twice it', async (t) => {
  const redis = await startRedisServer(t);
  const a = instance(t, redis.url, shared);
  const b = instance(t, redis.url, shared);
  const ctx = request();
  assert.ok(a.guard.check(ctx) instanceof Promise, 'a Redis limit answers with a promise');
  await eventually(() => a.stores.redisStatus === 'up' && b.stores.redisStatus === 'up', { what: 'both connected' });

  // Fresh buckets for the measurement (the probe above took a token).
  const admin = new Redis(redis.url);
  t.after(() => admin.disconnect());
  await admin.flushall();

  let allowed = 0;
  let refused = 0;
  let lastRefusal: Refusal | null = null;
  const started = performance.now();
  while (performance.now() - started < 1000) {
    // Alternate the instances, several checks in flight at once on each.
    const batch = [a, b, a, b, a, b, a, b].map((i) => i.guard.check(ctx));
    for (const refusal of await Promise.all(batch)) {
      if (refusal === null) allowed++;
      else {
        refused++;
        lastRefusal = refusal;
      }
    }
  }
  const elapsed = performance.now() - started;
  const global = shared.burst! + (shared.rate * elapsed) / shared.per;
  t.diagnostic(`${allowed} allowed, ${refused} refused in ${elapsed.toFixed(0)} ms; global limit ${global.toFixed(1)}`);
  assert.ok(Math.abs(allowed - global) <= global * 0.1, `${allowed} allowed, expected ${global.toFixed(1)} +-10%`);
  assert.ok(refused > 1000, 'both instances were refused, many times');
  assert.equal(lastRefusal!.status, 429);
  assert.equal(lastRefusal!.code, 'FUL_RATE_LIMITED');
  assert.deepEqual(lastRefusal!.headers!.slice(0, 2), ['retry-after', '1']);
  assert.deepEqual(lastRefusal!.headers!.slice(8), ['ratelimit-policy', '50;w=1']);
  assert.equal(a.stores.fallbacks + b.stores.fallbacks, 0);

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
  await eventually(async () => (await guard.check(request('10.0.0.9'))) === null && stores.redisStatus === 'up', { what: 'connected' });

  await redis.stop();
  const ctx = request('10.0.0.1');
  const results: { refusal: Refusal | null; ms: number }[] = [];
  for (let i = 0; i < 20; i++) results.push(await timedCheck(guard, ctx));
  const slowest = Math.max(...results.map((r) => r.ms));
  t.diagnostic(`slowest check while Redis is down: ${slowest.toFixed(1)} ms`);
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

test('Redis slow (CLIENT PAUSE): checks give up after timeout, fall back, and Redis is used again after', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'slow', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit, { timeout: 50 });
  await eventually(async () => (await guard.check(request())) === null && stores.redisStatus === 'up', { what: 'connected' });

  const admin = new Redis(redis.url);
  t.after(() => admin.disconnect());
  await admin.call('CLIENT', 'PAUSE', '600', 'ALL');
  const paused = await timedCheck(guard, request());
  assert.equal(paused.refusal, null, 'failing open');
  assert.ok(paused.ms >= 40 && paused.ms < 300, `the check took ${paused.ms.toFixed(1)} ms`);
  assert.equal(stores.redisStatus, 'down');
  assert.equal(stores.fallbacks, 1);
  assert.equal(log.count(UNREACHABLE), 1);

  await eventually(() => stores.redisStatus === 'up', { what: 'probe finds Redis again', timeout: 5000 });
  assert.equal(log.count(REACHABLE), 1);
  assert.equal((await timedCheck(guard, request())).refusal, null);
  assert.equal(stores.fallbacks, 1);
});

test('on_failure closed: Redis down means 503 FUL_RATE_LIMIT_STORE_DOWN, never a 500 or a throw', async (t) => {
  const redis = await startRedisServer(t);
  const limit: RateLimitSettings = { name: 'strict', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, redis.url, limit, { on_failure: 'closed' });
  await eventually(async () => (await guard.check(request())) === null && stores.redisStatus === 'up', { what: 'connected' });

  await redis.stop();
  for (let i = 0; i < 5; i++) {
    const { refusal, ms } = await timedCheck(guard, request());
    assert.ok(ms < 200, `a check took ${ms.toFixed(1)} ms`);
    assert.deepEqual(refusal, { status: 503, code: 'FUL_RATE_LIMIT_STORE_DOWN', message: 'rate limit store unavailable', headers: ['retry-after', '1'] });
  }
  assert.equal(stores.fallbacks, 5);
  assert.equal(log.count('rate-limit store redis unreachable, refusing rate-limited requests with 503 (on_failure: closed)'), 1);
});

test('Redis never reachable: the first checks wait at most timeout, then answer locally', async (t) => {
  const port = await freePort();
  const limit: RateLimitSettings = { name: 'nowhere', rate: 100, per: 1000, key: ['ip'], store: 'redis' };
  const { stores, guard, log } = instance(t, `redis://127.0.0.1:${port}`, limit, { timeout: 50 });
  for (let i = 0; i < 10; i++) {
    const { refusal, ms } = await timedCheck(guard, request());
    assert.equal(refusal, null);
    assert.ok(ms < 200, `a check took ${ms.toFixed(1)} ms`);
  }
  assert.equal(stores.redisStatus, 'down');
  assert.equal(stores.fallbacks, 10);
  assert.equal(log.count(UNREACHABLE), 1);
});
