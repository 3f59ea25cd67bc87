import { test } from 'node:test';
import assert from 'node:assert/strict';
import { roundRobin } from '../../../src/balancer/round-robin.ts';
import { ctx, named, sequence, tally } from './helpers.ts';

test('round-robin: a b c a b c', () => {
  const policy = roundRobin.create(named({ a: 1, b: 1, c: 1 }));
  assert.deepEqual(sequence(policy, 9), ['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c']);
});

test('round-robin: weights are honoured, heavy upstreams interleaved (as nginx, HAProxy, Traefik)', () => {
  assert.deepEqual(sequence(roundRobin.create(named({ a: 5, b: 1, c: 1 })), 7), ['a', 'a', 'b', 'a', 'c', 'a', 'a']);
  assert.deepEqual(sequence(roundRobin.create(named({ a: 1, b: 2 })), 6), ['b', 'a', 'b', 'b', 'a', 'b']);
  assert.deepEqual(tally(roundRobin.create(named({ a: 1, b: 2 })), 600), { a: 200, b: 400 });
});

test('round-robin: skips an unavailable upstream and keeps the order of the rest', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  const policy = roundRobin.create(pool);
  pool[1].enabled = false;
  assert.deepEqual(sequence(policy, 6), ['a', 'c', 'a', 'c', 'a', 'c']);
});

test('round-robin: skips a full upstream and comes back to it once it has room', () => {
  const pool = named({ a: 1, b: 1, c: 1 }, 1);
  const policy = roundRobin.create(pool);
  assert.deepEqual(sequence(policy, 1), ['a']);
  pool[1].inFlight = 1; // b is at max_connections: a and c share its turns
  assert.deepEqual(sequence(policy, 6), ['c', 'c', 'a', 'c', 'a', 'c']);
  pool[1].inFlight = 0;
  assert.deepEqual(sequence(policy, 6), ['b', 'a', 'c', 'b', 'a', 'c']);
});

test('round-robin: retries pass over the tried upstream and take turns among the siblings', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  const policy = roundRobin.create(pool);
  // a refuses: each of its requests is retried. The retries take turns between b and c (the
  // first untried upstream, b, used to take them all).
  const retries: string[] = [];
  for (let i = 0; i < 600; i++) {
    const first = policy.pick(ctx)!;
    if (first === pool[0]) retries.push(policy.pick(ctx, [first])!.hostname);
  }
  assert.deepEqual(retries.slice(0, 10), ['b', 'b', 'c', 'b', 'c', 'b', 'c', 'b', 'c', 'b']);
  const b = retries.filter((r) => r === 'b').length;
  assert.ok(Math.abs(b - retries.length / 2) <= 2, `b took ${b} of ${retries.length} retries`);
  assert.equal(policy.pick(ctx, pool), undefined);
});

test('round-robin: the turn moves past the skipped upstreams', () => {
  const pool = named({ a: 1, b: 1, c: 1, d: 1 });
  const policy = roundRobin.create(pool);
  pool[1].draining = true;
  pool[2].health = 'unhealthy';
  assert.deepEqual(sequence(policy, 4), ['a', 'd', 'a', 'd']);
});

test('round-robin: nothing available gives undefined, then carries on', () => {
  const pool = named({ a: 1, b: 1 });
  const policy = roundRobin.create(pool);
  for (const u of pool) u.enabled = false;
  assert.deepEqual(sequence(policy, 3), ['-', '-', '-']);
  for (const u of pool) u.enabled = true;
  assert.deepEqual(sequence(policy, 4), ['a', 'b', 'a', 'b']);
});

test('round-robin: each snapshot starts at its first upstream', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  const first = roundRobin.create(pool);
  assert.deepEqual(sequence(first, 2), ['a', 'b']);
  assert.deepEqual(sequence(roundRobin.create(pool), 2), ['a', 'b']);
  assert.deepEqual(sequence(first, 2), ['c', 'a']);
});
