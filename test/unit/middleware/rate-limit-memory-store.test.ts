import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { RequestContext } from '../../../src/core/context.ts';
import { createLogger } from '../../../src/observe/logger.ts';
import { MemoryBuckets } from '../../../src/middleware/rate-limit-memory-store.ts';
import { ALLOWED } from '../../../src/middleware/rate-limit-bucket.ts';
import { createRateLimitGuard, createRateLimitStores } from '../../../src/middleware/rate-limit.ts';

const MB = 1024 * 1024;

/**
 * A full collection before each reading, so the figure is memory held, not garbage V8 has not
 * collected yet. `npm test` does not pass --expose-gc, so the flag is set here (the usual way
 * to reach gc() from inside a process).
 */
function collectGarbage(): () => void {
  if (globalThis.gc) return globalThis.gc;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}
/** One token per hour: a bucket that was emptied stays empty for the whole test. */
const slow = { rate: 1, per: 3_600_000, burst: 1 };

test('LRU: the least recently used bucket goes first', () => {
  const buckets = new MemoryBuckets(slow, 3, () => 0);
  for (const key of ['a', 'b', 'c']) assert.equal(buckets.take(key), ALLOWED);
  assert.notEqual(buckets.take('a'), ALLOWED, 'a is empty and now the most recently used');
  assert.equal(buckets.take('d'), ALLOWED);
  assert.equal(buckets.size, 3);
  assert.equal(buckets.evictions, 1);
  assert.notEqual(buckets.take('a'), ALLOWED, 'a was kept: it was used after b');
  assert.notEqual(buckets.take('c'), ALLOWED, 'c was kept');
  assert.equal(buckets.take('b'), ALLOWED, 'b was evicted, so it starts over with a full bucket');
  assert.equal(buckets.evictions, 2, 'taking b back evicted d');
  assert.equal(buckets.size, 3);
});

test('LRU: a table of one', () => {
  const buckets = new MemoryBuckets(slow, 1, () => 0);
  assert.equal(buckets.take('a'), ALLOWED);
  assert.notEqual(buckets.take('a'), ALLOWED);
  assert.equal(buckets.take('b'), ALLOWED);
  assert.equal(buckets.take('a'), ALLOWED);
  assert.equal(buckets.size, 1);
  assert.equal(buckets.evictions, 2);
});

test('LRU: exact order past the first slot allocation (the arrays grow)', () => {
  const max = 5000;
  const buckets = new MemoryBuckets(slow, max, () => 0);
  for (let i = 0; i < max; i++) buckets.take(`k${i}`);
  assert.equal(buckets.size, max);
  assert.equal(buckets.evictions, 0);
  // Touch the older half in reverse; the newer half is now the least recently used.
  for (let i = max / 2 - 1; i >= 0; i--) assert.notEqual(buckets.take(`k${i}`), ALLOWED);
  for (let i = 0; i < max / 2; i++) buckets.take(`new${i}`);
  assert.equal(buckets.size, max);
  assert.equal(buckets.evictions, max / 2);
  for (let i = 0; i < max / 2; i++) assert.notEqual(buckets.take(`k${i}`), ALLOWED, `k${i} survived`);
  assert.equal(buckets.evictions, max / 2, 'touching survivors evicts nothing');
});

test('bounded memory: 1,000,000 client addresses through one limit with max_entries 10,000', (t) => {
  const maxEntries = 10_000;
  const policy = { rate: 10, per: 1000, burst: 20 };
  // The clock advances 10 µs per request: a million requests span 10 s.
  let now = 0;
  const stores = createRateLimitStores({ max_entries: maxEntries }, createLogger({ level: 'silent', format: 'json' }, { destination: new PassThrough() }), {
    clock: () => now,
  });
  const guard = createRateLimitGuard({ ...policy, key: ['ip'], store: 'memory' }, 'api', stores);
  const table = guard.store as MemoryBuckets;
  // One reused request object: what is measured is the limiter, not the test's own garbage.
  const ctx = { clientAddress: '', req: { rawHeaders: [] } } as unknown as RequestContext;
  const hot = '192.0.2.1';
  let hotAllowed = 0;
  let hotFirst = -1;
  let hotLast = 0;
  let largest = 0;

  const gc = collectGarbage();
  gc();
  const before = process.memoryUsage();
  const started = performance.now();
  const n = 1_000_000;
  for (let i = 0; i < n; i++) {
    now = i / 100;
    ctx.clientAddress = `10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}`;
    if (guard.check(ctx) !== null) assert.fail(`new address ${ctx.clientAddress} was limited`);
    if (i % 100 === 0) {
      ctx.clientAddress = hot;
      if (hotFirst < 0) hotFirst = now;
      hotLast = now;
      if (guard.check(ctx) === null) hotAllowed++;
    }
    if (table.size > largest) largest = table.size;
  }
  const elapsedMs = performance.now() - started;
  gc();
  const after = process.memoryUsage();
  const growth = (after.rss - before.rss) / MB;
  const heapGrowth = (after.heapUsed - before.heapUsed) / MB;

  assert.equal(largest, maxEntries, 'the table never held more than max_entries');
  assert.equal(table.size, maxEntries);
  assert.equal(table.evictions, n + 1 - maxEntries, 'every address past max_entries evicted one bucket');
  // The hot key was never evicted: an eviction would have handed it a fresh burst.
  const ceiling = policy.burst + (policy.rate * (hotLast - hotFirst)) / policy.per;
  assert.ok(hotAllowed <= ceiling, `hot key got ${hotAllowed}, more than burst + rate x elapsed = ${ceiling}`);
  assert.ok(hotAllowed >= Math.floor(ceiling), `hot key got ${hotAllowed}, less than ${Math.floor(ceiling)}`);
  // RSS also counts heap V8 keeps committed after collecting (its young generation grows under
  // this allocation rate); the heap in use is what the table holds.
  t.diagnostic(
    `1,000,000 addresses in ${elapsedMs.toFixed(0)} ms; RSS growth ${growth.toFixed(1)} MB (${(before.rss / MB).toFixed(0)} -> ${(after.rss / MB).toFixed(0)} MB), ` +
      `heap in use ${heapGrowth.toFixed(1)} MB; hot key allowed ${hotAllowed} of ceiling ${ceiling}`,
  );
  assert.ok(growth < 100, `RSS grew ${growth.toFixed(1)} MB`);
  assert.ok(heapGrowth < 20, `heap in use grew ${heapGrowth.toFixed(1)} MB`);
});
