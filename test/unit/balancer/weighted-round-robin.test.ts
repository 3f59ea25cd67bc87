import { test } from 'node:test';
import assert from 'node:assert/strict';
import { weightedRoundRobin } from '../../../src/balancer/weighted-round-robin.ts';
import { named, sequence, tally } from './helpers.ts';

test('smooth weighted round-robin: weights 5,1,1 give a a b a c a a, and repeat', () => {
  const policy = weightedRoundRobin.create(named({ a: 5, b: 1, c: 1 }));
  const cycle = ['a', 'a', 'b', 'a', 'c', 'a', 'a'];
  assert.deepEqual(sequence(policy, 21), [...cycle, ...cycle, ...cycle]);
});

test('smooth weighted round-robin: weights 2,1 give a b a, and repeat', () => {
  const policy = weightedRoundRobin.create(named({ a: 2, b: 1 }));
  assert.deepEqual(sequence(policy, 9), ['a', 'b', 'a', 'a', 'b', 'a', 'a', 'b', 'a']);
});

test('smooth weighted round-robin: equal weights are plain round-robin', () => {
  const policy = weightedRoundRobin.create(named({ a: 1, b: 1, c: 1 }));
  assert.deepEqual(sequence(policy, 6), ['a', 'b', 'c', 'a', 'b', 'c']);
});

test('smooth weighted round-robin: exact shares over whole cycles', () => {
  const policy = weightedRoundRobin.create(named({ a: 4, b: 3, c: 2, d: 1 }));
  assert.deepEqual(tally(policy, 1000), { a: 400, b: 300, c: 200, d: 100 });
});

test('smooth weighted round-robin: fractional weights', () => {
  const policy = weightedRoundRobin.create(named({ a: 0.5, b: 1.5 }));
  assert.deepEqual(sequence(policy, 8), ['b', 'a', 'b', 'b', 'b', 'a', 'b', 'b']);
});

test('smooth weighted round-robin: an unavailable upstream is skipped and the rest share by weight', () => {
  const pool = named({ a: 5, b: 1, c: 1 });
  const policy = weightedRoundRobin.create(pool);
  pool[0].enabled = false;
  assert.deepEqual(sequence(policy, 4), ['b', 'c', 'b', 'c']);
  const only = named({ a: 5, b: 1, c: 1 });
  only[1].health = 'unhealthy';
  assert.deepEqual(tally(weightedRoundRobin.create(only), 600), { a: 500, c: 100 });
});

test('smooth weighted round-robin: nothing available gives undefined', () => {
  const pool = named({ a: 2, b: 1 }, 1);
  for (const u of pool) u.inFlight = 1;
  assert.deepEqual(sequence(weightedRoundRobin.create(pool), 3), ['-', '-', '-']);
});
