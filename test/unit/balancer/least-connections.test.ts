import { test } from 'node:test';
import assert from 'node:assert/strict';
import { leastConnections } from '../../../src/balancer/least-connections.ts';
import { ctx, named, sequence, tally } from './helpers.ts';

test('least-connections: picks the least loaded upstream', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[0].inFlight = 5;
  pool[1].inFlight = 2;
  pool[2].inFlight = 7;
  const policy = leastConnections.create(pool);
  assert.deepEqual(sequence(policy, 5), ['b', 'b', 'b', 'b', 'b']);
});

test('least-connections: follows the load as it changes', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[0].inFlight = 1;
  pool[1].inFlight = 2;
  pool[2].inFlight = 0;
  const policy = leastConnections.create(pool);
  assert.equal(policy.pick(ctx), pool[2]);
  pool[2].inFlight = 3;
  assert.equal(policy.pick(ctx), pool[0]);
  pool[0].inFlight = 4;
  assert.equal(policy.pick(ctx), pool[1]);
});

test('least-connections: load is counted per unit of weight', () => {
  // (inFlight + 1) / weight: a = 5/4 = 1.25, b = 2/1 = 2. The heavier one wins despite more in flight.
  const pool = named({ a: 4, b: 1 });
  pool[0].inFlight = 4;
  pool[1].inFlight = 1;
  assert.deepEqual(sequence(leastConnections.create(pool), 3), ['a', 'a', 'a']);
  // a = 9/4 = 2.25 > b = 2.
  pool[0].inFlight = 8;
  assert.deepEqual(sequence(leastConnections.create(pool), 3), ['b', 'b', 'b']);
});

test('least-connections: skips an unavailable upstream even when it is the least loaded', () => {
  const pool = named({ a: 1, b: 1, c: 1 }, 10);
  pool[0].enabled = false; // 0 in flight, but off
  pool[1].inFlight = 3;
  pool[2].inFlight = 10; // at max_connections
  assert.deepEqual(sequence(leastConnections.create(pool), 4), ['b', 'b', 'b', 'b']);
});

test('least-connections: ties are broken at random, every tied upstream gets picks', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[1].inFlight = 1; // b is never tied for least
  const counts = tally(leastConnections.create(pool), 3000);
  assert.equal(counts.b, undefined, 'b is more loaded and must never be picked');
  // a and c are tied: each should get about half (1500, standard deviation ~27).
  assert.ok(counts.a >= 1300 && counts.a <= 1700, `a got ${counts.a}`);
  assert.ok(counts.c >= 1300 && counts.c <= 1700, `c got ${counts.c}`);
});

test('least-connections: a three-way tie spreads evenly', () => {
  const counts = tally(leastConnections.create(named({ a: 1, b: 1, c: 1 })), 6000);
  for (const name of ['a', 'b', 'c']) assert.ok(counts[name] >= 1800 && counts[name] <= 2200, `${name} got ${counts[name]}`);
});

test('least-connections: held picks fill the pool level', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  const policy = leastConnections.create(pool);
  for (let i = 0; i < 30; i++) policy.pick(ctx)!.inFlight++;
  assert.deepEqual(pool.map((u) => u.inFlight), [10, 10, 10]);
});
