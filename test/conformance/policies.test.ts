/**
 * One conformance suite that every balancing policy in the registry must pass. Each policy
 * gets the same cases; a case that does not apply to a policy is skipped with the reason.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { policies } from '../../src/balancer/registry.ts';
import type { PolicyFactory } from '../../src/balancer/policy.ts';
import { Upstream } from '../../src/upstream/upstream.ts';
import { mulberry32 } from '../helpers/random.ts';

const ctx = { clientAddress: '127.0.0.1' };

/**
 * How each policy is expected to spread picks. A new policy must be added here, so the weights
 * case knows whether to expect exact counts, shares within a range, or a spread of held load.
 */
const kinds: Record<string, 'deterministic' | 'random' | 'load-aware'> = {
  'round-robin': 'deterministic',
  'weighted-round-robin': 'deterministic',
  'least-connections': 'load-aware',
  random: 'random',
  'power-of-two-choices': 'load-aware',
};

/**
 * Weights 1:2 (upstreams a, b) and every pick released before the next (sequential requests, an
 * idle pool): the exact repeating cycle of a deterministic policy, or null for a random one
 * (checked by range). Weights mean the same in every policy, so there is no "ignores weights" here.
 */
const idleCycle: Record<string, readonly string[] | null> = {
  'round-robin': ['b', 'a', 'b'],
  'weighted-round-robin': ['b', 'a', 'b'],
  'least-connections': ['b', 'a', 'b'],
  random: null,
  'power-of-two-choices': null,
};

function upstreams(weights: readonly number[], maxConnections = 0): Upstream[] {
  return weights.map((weight, i) => new Upstream({ url: `http://10.0.0.${i + 1}:8080`, weight, maxConnections }));
}

/** Picks `n` times; counts per upstream index. With `hold`, every pick stays in flight. */
function countPicks(factory: PolicyFactory, pool: Upstream[], n: number, hold = false): number[] {
  const policy = factory.create(pool);
  const counts = pool.map(() => 0);
  for (let i = 0; i < n; i++) {
    const u = policy.pick(ctx);
    assert.ok(u, `pick ${i} returned undefined`);
    const index = pool.indexOf(u);
    assert.notEqual(index, -1, 'picked an upstream outside the snapshot');
    counts[index]++;
    if (hold) u.inFlight++;
  }
  return counts;
}

const prng = mulberry32;

/** Ways to make an upstream unavailable, each undone by a fresh Upstream. */
const makeUnavailable: Record<string, (u: Upstream) => void> = {
  disabled: (u) => {
    u.enabled = false;
  },
  unhealthy: (u) => {
    u.health = 'unhealthy';
  },
  draining: (u) => {
    u.draining = true;
  },
  'at max_connections': (u) => {
    u.maxConnections = 2;
    u.inFlight = 2;
  },
};

function assertShares(counts: number[], expected: number[], tolerance: number, what: string): void {
  const total = counts.reduce((a, b) => a + b, 0);
  counts.forEach((c, i) => {
    const share = c / total;
    assert.ok(
      share >= expected[i] - tolerance && share <= expected[i] + tolerance,
      `${what}: upstream ${i} share ${share.toFixed(4)} outside [${(expected[i] - tolerance).toFixed(3)}, ${(expected[i] + tolerance).toFixed(3)}] (counts ${counts.join(', ')})`,
    );
  });
}

test('the registry has policies and every one is classified by this suite', () => {
  assert.ok(policies.length >= 5);
  for (const p of policies) {
    assert.ok(p.name in kinds, `policy "${p.name}" is not in the conformance suite's kinds table`);
    assert.ok(p.name in idleCycle, `policy "${p.name}" is not in the conformance suite's idleCycle table`);
  }
});

for (const factory of policies) {
  const kind = kinds[factory.name];

  describe(`policy ${factory.name}`, () => {
    test('empty pool: undefined', () => {
      const policy = factory.create([]);
      for (let i = 0; i < 10; i++) assert.equal(policy.pick(ctx), undefined);
    });

    for (const [how, apply] of Object.entries(makeUnavailable)) {
      test(`every upstream unavailable (${how}): undefined`, () => {
        const pool = upstreams([1, 2, 3]);
        pool.forEach(apply);
        const policy = factory.create(pool);
        for (let i = 0; i < 50; i++) assert.equal(policy.pick(ctx), undefined);
      });
    }

    test('every upstream unavailable, each for a different reason: undefined', () => {
      const pool = upstreams([1, 1, 1, 1]);
      Object.values(makeUnavailable).forEach((apply, i) => apply(pool[i]));
      const policy = factory.create(pool);
      for (let i = 0; i < 50; i++) assert.equal(policy.pick(ctx), undefined);
    });

    test('a pool of one: always that one', () => {
      const pool = upstreams([1]);
      const policy = factory.create(pool);
      for (let i = 0; i < 100; i++) assert.equal(policy.pick(ctx), pool[0]);
    });

    test('only one available: always that one (100 picks)', () => {
      const pool = upstreams([5, 1, 3, 2, 4]);
      makeUnavailable.disabled(pool[0]);
      makeUnavailable['at max_connections'](pool[1]);
      makeUnavailable.unhealthy(pool[3]);
      makeUnavailable.draining(pool[4]);
      const policy = factory.create(pool);
      for (let i = 0; i < 100; i++) assert.equal(policy.pick(ctx), pool[2], `pick ${i}`);
    });

    test('an upstream that becomes available again is picked again', () => {
      const pool = upstreams([1, 1]);
      const policy = factory.create(pool);
      pool[1].enabled = false;
      for (let i = 0; i < 20; i++) assert.equal(policy.pick(ctx), pool[0]);
      pool[1].enabled = true;
      pool[0].enabled = false;
      for (let i = 0; i < 20; i++) assert.equal(policy.pick(ctx), pool[1]);
    });

    test('equal weights: picks spread evenly', () => {
      const pool = upstreams([1, 1, 1, 1]);
      if (kind === 'deterministic') {
        assert.deepEqual(countPicks(factory, pool, 4000), [1000, 1000, 1000, 1000]);
      } else if (kind === 'random') {
        // 10 000 picks over 4: one share's standard deviation is about 0.0043.
        assertShares(countPicks(factory, pool, 10_000), [0.25, 0.25, 0.25, 0.25], 0.03, 'random picks');
      } else {
        // Load-aware and every pick held: in flight stays level to within one request or so.
        const counts = countPicks(factory, pool, 4000, true);
        for (const c of counts) assert.ok(c >= 990 && c <= 1010, `held in flight ${counts.join(', ')}`);
      }
    });

    test('weights respected', () => {
      if (kind === 'deterministic') {
        assert.deepEqual(countPicks(factory, upstreams([3, 1]), 10_000), [7500, 2500]);
        assert.deepEqual(countPicks(factory, upstreams([3, 2, 1]), 6000), [3000, 2000, 1000]);
      } else if (kind === 'random') {
        // Weights 3:1 over 10 000 picks: the heavy one's share is 0.75, standard deviation ~0.0043.
        const counts = countPicks(factory, upstreams([3, 1]), 10_000);
        const heavy = counts[0] / 10_000;
        assert.ok(heavy >= 0.7 && heavy <= 0.8, `heavy share ${heavy} outside [0.70, 0.80]`);
        assertShares(countPicks(factory, upstreams([3, 2, 1]), 12_000), [3 / 6, 2 / 6, 1 / 6], 0.04, 'weights 3:2:1');
      } else {
        // Load-aware: hold every pick (never released); in flight must follow the weights.
        const two = countPicks(factory, upstreams([3, 1]), 1200, true);
        assertShares(two, [0.75, 0.25], 0.02, 'held in flight, weights 3:1');
        const three = countPicks(factory, upstreams([3, 2, 1]), 1200, true);
        assertShares(three, [3 / 6, 2 / 6, 1 / 6], 0.02, 'held in flight, weights 3:2:1');
      }
    });

    /** 600 picks over weights 1:2, each released before the next: the exact cycle, or the light share within range. */
    function assertOneToTwo(pool: Upstream[], what: string): void {
      const policy = factory.create(pool);
      const names: string[] = [];
      for (let i = 0; i < 600; i++) {
        const u = policy.pick(ctx);
        assert.ok(u && u.available(), `${what}: pick ${i}`);
        names.push(u === pool[0] ? 'a' : 'b');
      }
      const light = names.filter((n) => n === 'a').length;
      const cycle = idleCycle[factory.name];
      if (cycle) {
        const expected = Array.from({ length: 600 }, (_, i) => cycle[i % cycle.length]);
        assert.deepEqual(names, expected, `${what}: exact sequence (cycle ${cycle.join(' ')})`);
        assert.equal(light, 200);
      } else {
        // Binomial(600, 1/3): mean 200, standard deviation 11.5; [150, 250] is more than 4 of them.
        assert.ok(light >= 150 && light <= 250, `${what}: weight-1 upstream got ${light} of 600, expected 150..250`);
      }
    }

    test('weights 1:2, sequential picks (idle pool): shares follow the weights', () => {
      // Nothing stays in flight, as with sequential requests (the README's least-connections example).
      assertOneToTwo(upstreams([1, 2]), 'idle');
    });

    test('weights 1:2 at equal load per unit of weight (3 and 6 in flight): shares follow the weights', () => {
      // 3/1 = 6/2: load-aware policies see a tie and must break it by weight, as when idle; the
      // others do not look at load and follow the weights anyway.
      const pool = upstreams([1, 2]);
      pool[0].inFlight = 3;
      pool[1].inFlight = 6;
      assertOneToTwo(pool, '3 and 6 in flight');
    });

    test('retries: a tried upstream is never picked again while an untried one is available', () => {
      const pool = upstreams([1, 2, 3]);
      const policy = factory.create(pool);
      for (let i = 0; i < 300; i++) {
        const first = policy.pick(ctx)!;
        const second = policy.pick(ctx, [first])!;
        assert.ok(second && second !== first && second.available(), `pick ${i}: retry returned ${second?.id}`);
        const third = policy.pick(ctx, [first, second])!;
        assert.ok(third && third !== first && third !== second, `pick ${i}: second retry returned ${third?.id}`);
        assert.equal(policy.pick(ctx, [first, second, third]), undefined, 'every upstream tried: undefined');
      }
      // Tried and unavailable together leave nothing; a tried upstream outside the snapshot is harmless.
      makeUnavailable.disabled(pool[2]);
      assert.equal(policy.pick(ctx, [pool[0], pool[1]]), undefined);
      const stranger = new Upstream({ url: 'http://10.9.9.9:80', weight: 1, maxConnections: 0 });
      assert.ok(policy.pick(ctx, [stranger]));
    });

    test('retries are spread over the untried siblings by weight, not sent to one', () => {
      // a (weight 1) refuses every request; b and c (weights 1 and 2) take its retries.
      const pool = upstreams([1, 1, 2]);
      const policy = factory.create(pool);
      const retries = [0, 0, 0];
      for (let i = 0; i < 1200; i++) {
        const first = policy.pick(ctx)!;
        if (first === pool[0]) retries[pool.indexOf(policy.pick(ctx, [first])!)]++;
      }
      const total = retries[1] + retries[2];
      assert.equal(retries[0], 0);
      assert.ok(total >= 200, `only ${total} retries`);
      // c's share of the retries is 2/3; over ~300 retries one standard deviation is ~0.03.
      const heavy = retries[2] / total;
      assert.ok(heavy >= 0.55 && heavy <= 0.78, `retries ${retries.join(', ')}: c's share ${heavy.toFixed(3)} outside [0.55, 0.78]`);
    });

    test('load-aware: an idle upstream is preferred over busy ones', (t) => {
      if (kind !== 'load-aware') {
        t.skip(`${factory.name} does not look at load (kind: ${kind})`);
        return;
      }
      const pool = upstreams([1, 1]);
      pool[0].inFlight = 10;
      const policy = factory.create(pool);
      for (let i = 0; i < 100; i++) assert.equal(policy.pick(ctx), pool[1]);
    });

    test('never returns an unavailable upstream while availability flips at random', () => {
      const random = prng(0xf00d + factory.name.length);
      const pool = upstreams([1, 2, 3, 4, 5], 2);
      const policy = factory.create(pool);
      let picked = 0;
      let none = 0;
      for (let i = 0; i < 5000; i++) {
        for (const u of pool) {
          u.enabled = random() < 0.7;
          u.health = random() < 0.8 ? 'healthy' : 'unhealthy';
          u.draining = random() < 0.1;
          u.inFlight = Math.floor(random() * 3); // 0, 1 or 2; 2 is at max_connections
        }
        const anyAvailable = pool.some((u) => u.available());
        const u = policy.pick(ctx);
        if (u === undefined) {
          assert.equal(anyAvailable, false, `pick ${i}: undefined although an upstream was available`);
          none++;
        } else {
          assert.ok(pool.includes(u), `pick ${i}: an upstream outside the snapshot`);
          assert.equal(u.available(), true, `pick ${i}: returned ${u.id}, which is unavailable`);
          picked++;
        }
      }
      // The flips must exercise both outcomes, or the test proves nothing.
      assert.ok(picked > 1000, `only ${picked} picks had an available upstream`);
      assert.ok(none > 0, 'no round had every upstream unavailable');
    });
  });
}
