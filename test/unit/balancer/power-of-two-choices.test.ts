import { test } from 'node:test';
import assert from 'node:assert/strict';
import { powerOfTwoChoices } from '../../../src/balancer/power-of-two-choices.ts';
import { ctx, named, sequence, tally } from './helpers.ts';

test('power-of-two-choices: of two upstreams, always the less loaded', () => {
  const pool = named({ a: 1, b: 1 });
  pool[0].inFlight = 3;
  pool[1].inFlight = 1;
  assert.deepEqual(sequence(powerOfTwoChoices.create(pool), 20), Array(20).fill('b'));
});

test('power-of-two-choices: the most loaded of three is never picked, the least loaded most often', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[0].inFlight = 0;
  pool[1].inFlight = 5;
  pool[2].inFlight = 10;
  // Pairs {a,b} and {a,c} go to a, {b,c} to b: a about 2/3, b about 1/3, c never.
  const counts = tally(powerOfTwoChoices.create(pool), 6000);
  assert.equal(counts.c, undefined, 'c is the most loaded and must never win a pair');
  assert.ok(counts.a >= 3700 && counts.a <= 4300, `a got ${counts.a}`);
  assert.ok(counts.b >= 1700 && counts.b <= 2300, `b got ${counts.b}`);
});

test('power-of-two-choices: load is counted per unit of weight (in flight / weight)', () => {
  const pool = named({ a: 4, b: 1 });
  pool[0].inFlight = 3; // 3/4
  pool[1].inFlight = 1; // 1/1
  assert.deepEqual(sequence(powerOfTwoChoices.create(pool), 10), Array(10).fill('a'));
});

test('power-of-two-choices: idle upstreams share picks by weight (1:2, not all to the heavy one)', () => {
  // 6000 picks, the weight-1 share is 1/3: mean 2000, standard deviation ~37.
  const counts = tally(powerOfTwoChoices.create(named({ a: 1, b: 2 })), 6000);
  assert.ok(counts.a >= 1800 && counts.a <= 2200, `a got ${counts.a}`);
  // Three idle upstreams 1:1:2: both draws by weight, the first drawn wins the tie.
  const three = tally(powerOfTwoChoices.create(named({ a: 1, b: 1, c: 2 })), 8000);
  assert.ok(three.c >= 3700 && three.c <= 4300, `c got ${three.c} of 8000`);
});

test('power-of-two-choices: equal load is a coin toss', () => {
  const counts = tally(powerOfTwoChoices.create(named({ a: 1, b: 1 })), 4000);
  assert.ok(counts.a >= 1800 && counts.a <= 2200, `a got ${counts.a}`);
  assert.ok(counts.b >= 1800 && counts.b <= 2200, `b got ${counts.b}`);
});

test('power-of-two-choices: with unavailable upstreams, the two draws are among the available ones', () => {
  const pool = named({ a: 1, b: 1, c: 1, d: 1, e: 1 }, 100);
  pool[0].enabled = false;
  pool[1].enabled = false;
  pool[2].enabled = false;
  pool[3].inFlight = 7;
  pool[4].inFlight = 2;
  // Only d and e are left, so every pair is {d, e} and the less loaded e always wins.
  assert.deepEqual(tally(powerOfTwoChoices.create(pool), 2000), { e: 2000 });
});

test('power-of-two-choices: a retry draws among the untried upstreams', () => {
  const pool = named({ a: 1, b: 1, c: 1 });
  pool[1].inFlight = 4;
  pool[2].inFlight = 5;
  const policy = powerOfTwoChoices.create(pool);
  // a is idle but tried; b and c are the pair, b is less loaded.
  for (let i = 0; i < 50; i++) assert.equal(policy.pick(ctx, [pool[0]]), pool[1]);
  assert.equal(policy.pick(ctx, pool), undefined);
});

test('power-of-two-choices: only one available of many, always that one', () => {
  const pool = named({ a: 1, b: 1, c: 1, d: 1 });
  for (const u of pool) u.enabled = false;
  pool[2].enabled = true;
  const policy = powerOfTwoChoices.create(pool);
  for (let i = 0; i < 200; i++) assert.equal(policy.pick(ctx), pool[2]);
});

test('power-of-two-choices: held picks stay level', () => {
  const pool = named({ a: 1, b: 1, c: 1, d: 1 });
  const policy = powerOfTwoChoices.create(pool);
  for (let i = 0; i < 400; i++) policy.pick(ctx)!.inFlight++;
  for (const u of pool) assert.ok(u.inFlight >= 95 && u.inFlight <= 105, `${u.hostname} has ${u.inFlight} in flight`);
});
