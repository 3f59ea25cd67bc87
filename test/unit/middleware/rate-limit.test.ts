import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import type { RequestContext } from '../../../src/core/context.ts';
import type { Refusal } from '../../../src/core/pipeline.ts';
import { createLogger } from '../../../src/observe/logger.ts';
import { createRateLimitGuard, createRateLimitStores, MAX_HEADER_KEY_CHARS, headerValue, type RateLimitSettings } from '../../../src/middleware/rate-limit.ts';

const logger = createLogger({ level: 'silent', format: 'json' }, { destination: new PassThrough() });

/** A clock the test moves by hand (milliseconds). */
function manualClock(): { now: number; read: () => number } {
  const clock = { now: 0, read: () => clock.now };
  return clock;
}

function limit(overrides: Partial<RateLimitSettings> = {}): RateLimitSettings {
  return { rate: 10, per: 1000, key: ['ip'], store: 'memory', ...overrides };
}

/** Just enough of a request for the guard: the client address and the raw headers. */
function request(clientAddress: string, rawHeaders: string[] = []): RequestContext {
  return { clientAddress, req: { rawHeaders } } as unknown as RequestContext;
}

function guardWith(settings: RateLimitSettings, clock = manualClock(), route = 'api') {
  const stores = createRateLimitStores({ max_entries: 1000 }, logger, { clock: clock.read });
  return { guard: createRateLimitGuard(settings, route, stores), clock, stores };
}

/** The memory path answers synchronously: a promise here is a bug. */
function check(guard: ReturnType<typeof guardWith>['guard'], ctx: RequestContext): Refusal | null {
  const answer = guard.check(ctx);
  assert.ok(!(answer instanceof Promise), 'memory limits answer synchronously');
  return answer as Refusal | null;
}

function header(refusal: Refusal, name: string): string | undefined {
  const h = refusal.headers ?? [];
  for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1];
  return undefined;
}

test('token bucket: a full burst at once, then one token per 1/rate', () => {
  const { guard, clock } = guardWith(limit({ rate: 10, per: 1000, burst: 5 }));
  const ctx = request('10.0.0.1');
  for (let i = 0; i < 5; i++) assert.equal(check(guard, ctx), null, `burst request ${i + 1}`);
  const refused = check(guard, ctx);
  assert.ok(refused);
  assert.equal(refused.status, 429);
  assert.equal(refused.code, 'FUL_RATE_LIMITED');
  // 10 per second: the next token is 100 ms away.
  clock.now = 99;
  assert.ok(check(guard, ctx), '0.99 tokens is not a token');
  clock.now = 100;
  assert.equal(check(guard, ctx), null, 'exactly one token after 100 ms');
  assert.ok(check(guard, ctx));
  clock.now = 350;
  assert.equal(check(guard, ctx), null);
  assert.equal(check(guard, ctx), null);
  assert.ok(check(guard, ctx), '2.5 tokens allow two requests');
  clock.now = 400;
  assert.equal(check(guard, ctx), null, 'the half token left over counts');
});

test('token bucket: refill stops at burst', () => {
  const { guard, clock } = guardWith(limit({ rate: 10, per: 1000, burst: 3 }));
  const ctx = request('10.0.0.1');
  for (let i = 0; i < 3; i++) assert.equal(check(guard, ctx), null);
  clock.now = 60_000;
  for (let i = 0; i < 3; i++) assert.equal(check(guard, ctx), null);
  assert.ok(check(guard, ctx), 'a minute idle still gives only burst');
});

test('token bucket: burst defaults to the rate, rounded up', () => {
  assert.equal(guardWith(limit({ rate: 10 })).guard.policy.burst, 10);
  assert.equal(guardWith(limit({ rate: 2.5 })).guard.policy.burst, 3);
  assert.equal(guardWith(limit({ rate: 0.5 })).guard.policy.burst, 1);
});

test('token bucket: sustained load gets burst + rate x elapsed, exactly', () => {
  const { guard, clock } = guardWith(limit({ rate: 10, per: 1000, burst: 5 }));
  const ctx = request('10.0.0.1');
  let allowed = 0;
  for (let ms = 0; ms <= 10_000; ms++) {
    clock.now = ms;
    if (check(guard, ctx) === null) allowed++;
  }
  assert.equal(allowed, 5 + 10 * 10);
});

test('429: Retry-After and RateLimit-* fields (draft-ietf-httpapi-ratelimit-headers)', () => {
  const { guard, clock } = guardWith(limit({ rate: 1, per: 60_000, burst: 2 }));
  const ctx = request('10.0.0.1');
  check(guard, ctx);
  check(guard, ctx);
  const refused = check(guard, ctx)!;
  assert.deepEqual(refused.headers, [
    'retry-after', '60',
    'ratelimit-limit', '2',
    'ratelimit-remaining', '0',
    'ratelimit-reset', '60',
    'ratelimit-policy', '2;w=60',
  ]);
  clock.now = 30_000;
  assert.equal(header(check(guard, ctx)!, 'retry-after'), '30');
  clock.now = 30_001;
  assert.equal(header(check(guard, ctx)!, 'retry-after'), '30', 'seconds round up: 29.999 s is 30');
  clock.now = 59_500;
  const soon = check(guard, ctx)!;
  assert.equal(header(soon, 'retry-after'), '1', 'never less than 1');
  assert.equal(header(soon, 'ratelimit-reset'), '1');
  clock.now = 60_000;
  assert.equal(check(guard, ctx), null);
});

test('429: a fractional rate and a sub-second period', () => {
  const slow = guardWith(limit({ rate: 0.5, per: 1000 }));
  const ctx = request('10.0.0.1');
  check(slow.guard, ctx);
  const refused = check(slow.guard, ctx)!;
  assert.equal(header(refused, 'retry-after'), '2', 'half a token per second: 2 s to the next');
  assert.equal(header(refused, 'ratelimit-policy'), '1;w=1');

  const fast = guardWith(limit({ rate: 5, per: 500, burst: 5 }));
  for (let i = 0; i < 5; i++) check(fast.guard, ctx);
  const fastRefused = check(fast.guard, ctx)!;
  assert.equal(header(fastRefused, 'retry-after'), '1');
  assert.equal(header(fastRefused, 'ratelimit-policy'), '5;w=1', 'the window is whole seconds, rounded up');
});

test('keys: "ip" gives each client its own bucket', () => {
  const { guard } = guardWith(limit({ rate: 1, burst: 1 }));
  assert.equal(check(guard, request('10.0.0.1')), null);
  assert.ok(check(guard, request('10.0.0.1')));
  assert.equal(check(guard, request('10.0.0.2')), null);
  assert.equal(check(guard, request('2001:db8::1')), null);
  assert.equal(guard.keyOf(request('10.0.0.9')), '10.0.0.9');
});

test('keys: "route" gives the whole route one bucket', () => {
  const { guard } = guardWith(limit({ rate: 2, burst: 2, key: ['route'] }), manualClock(), 'checkout');
  assert.equal(guard.keyOf(request('10.0.0.1')), 'checkout');
  assert.equal(check(guard, request('10.0.0.1')), null);
  assert.equal(check(guard, request('10.0.0.2')), null);
  assert.ok(check(guard, request('10.0.0.3')), 'a third client shares the route bucket');
});

test('keys: "header:<name>" matches the name in any case; a missing header is the empty key', () => {
  const { guard } = guardWith(limit({ rate: 1, burst: 1, key: ['header:X-Api-Key'] }));
  assert.equal(guard.keyOf(request('10.0.0.1', ['Host', 'a', 'x-api-key', 'k1'])), 'k1');
  assert.equal(guard.keyOf(request('10.0.0.1', ['X-API-KEY', 'k2', 'X-Api-Key', 'other'])), 'k2', 'the first value counts');
  assert.equal(guard.keyOf(request('10.0.0.1', ['Host', 'a'])), '');
  assert.equal(check(guard, request('10.0.0.1', ['X-Api-Key', 'k1'])), null);
  assert.ok(check(guard, request('10.0.0.2', ['x-api-key', 'k1'])), 'same key from another address: same bucket');
  assert.equal(check(guard, request('10.0.0.1', ['X-Api-Key', 'k2'])), null);
  assert.equal(check(guard, request('10.0.0.3')), null);
  assert.ok(check(guard, request('10.0.0.4')), 'clients without the header share one bucket');
});

test('keys: header values are capped at MAX_HEADER_KEY_CHARS', () => {
  const { guard } = guardWith(limit({ rate: 1, burst: 1, key: ['header:authorization'] }));
  const long = 'a'.repeat(MAX_HEADER_KEY_CHARS);
  assert.equal(guard.keyOf(request('10.0.0.1', ['Authorization', long + 'b'.repeat(10_000)])).length, MAX_HEADER_KEY_CHARS);
  assert.equal(check(guard, request('10.0.0.1', ['Authorization', long + 'x'])), null);
  assert.ok(check(guard, request('10.0.0.1', ['Authorization', long + 'y'])), 'equal up to the cap: one bucket');
});

test('keys: several parts combine', () => {
  const { guard } = guardWith(limit({ rate: 1, burst: 1, key: ['ip', 'route', 'header:x-user'] }), manualClock(), 'api');
  assert.equal(guard.keyOf(request('10.0.0.1', ['X-User', 'ann'])), '10.0.0.1\napi\nann');
  assert.equal(guard.keyOf(request('10.0.0.1')), '10.0.0.1\napi\n');
  assert.equal(check(guard, request('10.0.0.1', ['X-User', 'ann'])), null);
  assert.ok(check(guard, request('10.0.0.1', ['X-User', 'ann'])));
  assert.equal(check(guard, request('10.0.0.1', ['X-User', 'bob'])), null, 'same address, other user');
  assert.equal(check(guard, request('10.0.0.2', ['X-User', 'ann'])), null, 'same user, other address');
});

test('headerValue: scans raw headers without building req.headers', () => {
  assert.equal(headerValue(['Content-Type', 'a', 'X-Key', 'b'], 'x-key'), 'b');
  assert.equal(headerValue(['X-Keys', 'b'], 'x-key'), '');
  assert.equal(headerValue([], 'x-key'), '');
});

test('each guard has its own buckets, and stores count evictions across limits', () => {
  const clock = manualClock();
  const stores = createRateLimitStores({ max_entries: 100 }, logger, { clock: clock.read });
  const a = createRateLimitGuard(limit({ rate: 1, burst: 1 }), 'api', stores);
  const b = createRateLimitGuard(limit({ rate: 1, burst: 1 }), 'api', stores);
  assert.equal(check(a, request('10.0.0.1')), null);
  assert.equal(check(b, request('10.0.0.1')), null, 'a second limit keeps its own bucket');
  for (let i = 0; i < 150; i++) check(a, request(`10.1.0.${i}`));
  assert.equal(stores.evictions, 51);
  assert.equal(stores.fallbacks, 0);
  assert.equal(stores.redisStatus, 'off');
});

test('configuration mistakes are reported when the guard is built', () => {
  const stores = createRateLimitStores({ max_entries: 100 }, logger);
  assert.throws(() => createRateLimitGuard(limit({ store: 'redis' }), 'api', stores), /rate_limit\.redis/);
  assert.throws(() => createRateLimitGuard(limit({ per: 0 }), 'api', stores), /"per" must be longer than 0ms/);
});
