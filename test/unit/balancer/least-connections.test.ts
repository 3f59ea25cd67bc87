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

test('least-connections: load is counted per unit of weight (in flight / weight, as nginx)', () => {
  // a = 3/4 = 0.75, b = 1/1 = 1. The heavier one wins despite more in flight.
  const pool = named({ a: 4, b: 1 });
  pool[0].inFlight = 3;
  pool[1].inFlight = 1;
  assert.deepEqual(sequence(leastConnections.create(pool), 3), ['a', 'a', 'a']);
  // a = 5/4 = 1.25 > b = 1.
  pool[0].inFlight = 5;
  assert.deepEqual(sequence(leastConnections.create(pool), 3), ['b', 'b', 'b']);
  // a = 4/4 = b = 1/1: tied, so the weights share the picks (4:1).
  pool[0].inFlight = 4;
  assert.deepEqual(sequence(leastConnections.create(pool), 10), ['a', 'a', 'b', 'a', 'a', 'a', 'a', 'b', 'a', 'a']);
});

test('least-connections: an idle pool follows the weights (the README example, 1:2)', () => {
  // (inFlight + 1) / weight used to send every sequential request to the heavy one: 60 of 60.
  const pool = named({ a: 1, b: 2 });
  const policy = leastConnections.create(pool);
  assert.deepEqual(sequence(policy, 6), ['b', 'a', 'b', 'b', 'a', 'b']);
  assert.deepEqual(tally(policy, 60), { a: 20, b: 40 });
});

test('least-connections: only the upstreams tied for least share the tie-break', () => {
  const pool = named({ a: 1, b: 5, c: 2 });
  pool[1].inFlight = 1; // b: 1/5 > 0, never tied for least while a and c are idle
  assert.deepEqual(tally(leastConnections.create(pool), 300), { a: 100, c: 200 });
});

test('least-connections: skips an unavailable upstream even when it is the least loaded', () => {
  const pool = named({ a: 1, b: 1, c: 1 }, 10);
  pool[0].enabled = false; // 0 in flight, but off
  pool[1].inFlight = 3;
  pool[2].inFlight = 10; // at max_connections
  assert.deepEqual(sequence(leastConnections.create(pool), 4), ['b', 'b', 'b', 'b']);
});

test('least-connections: ties are shared by smooth weighted round-robin, every tied upstream gets picks', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[1].inFlight = 1; // b is never tied for least
  const policy = leastConnections.create(pool);
  assert.deepEqual(sequence(policy, 4), ['a', 'c', 'a', 'c']);
  assert.deepEqual(tally(policy, 3000), { a: 1500, c: 1500 });
});

test('least-connections: a three-way tie is plain rotation', () => {
  const policy = leastConnections.create(named({ a: 1, b: 1, c: 1 }));
  assert.deepEqual(sequence(policy, 6), ['a', 'b', 'c', 'a', 'b', 'c']);
  assert.deepEqual(tally(policy, 6000), { a: 2000, b: 2000, c: 2000 });
});

test('least-connections: a retry passes over the tried upstream even when it is the least loaded', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[1].inFlight = 2;
  pool[2].inFlight = 1;
  const policy = leastConnections.create(pool);
  assert.equal(policy.pick(ctx, [pool[0]]), pool[2]);
  assert.equal(policy.pick(ctx, [pool[0], pool[2]]), pool[1]);
  assert.equal(policy.pick(ctx, pool), undefined);
});

test('least-connections: held picks fill the pool level', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  const policy = leastConnections.create(pool);
  for (let i = 0; i < 30; i++) policy.pick(ctx)!.inFlight++;
  assert.deepEqual(pool.map((u) => u.inFlight), [10, 10, 10]);
});
