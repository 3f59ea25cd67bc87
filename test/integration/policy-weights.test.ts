/**
 * Weights and retries through the real proxy (issue 9): with sequential requests (an idle pool)
 * every policy shares picks by weight, and retries off a refusing upstream are spread over its
 * siblings by the pool's live policy instead of all landing on the first untried one.
 */
import type { Upstream } from '../../src/upstream/upstream.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from 'node:http';
import { closedPort, get, startBackend, startBalancer } from '../helpers/servers.ts';

/** Weight-1 share of 600 sequential requests over weights 1:2, per policy (expected 200). */
const ranges: Record<string, [number, number]> = {
  // Deterministic: b a b b a b ... gives exactly 200; a little room for a request that overlaps.
  'least-connections': [180, 220],
  'round-robin': [180, 220],
  'weighted-round-robin': [180, 220],
  // Random: Binomial(600, 1/3), standard deviation 11.5; [150, 250] is more than 4 of them.
  random: [150, 250],
  'power-of-two-choices': [150, 250],
};

for (const [policy, [low, high]] of Object.entries(ranges)) {
  test(`${policy}, weights 1:2, 600 sequential requests: the weight-1 upstream gets ${low}..${high}`, async (t) => {
    const light = await startBackend(t, (_req, res) => res.end('light'));
    const heavy = await startBackend(t, (_req, res) => res.end('heavy'));
    const lb = await startBalancer(t, { pools: { web: { policy, upstreams: [light.url, { url: heavy.url, weight: 2 }] } } });
    // One keep-alive connection: each request starts after the previous one ended.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    for (let i = 0; i < 600; i++) {
      const r = await get(lb.url, { agent });
      assert.equal(r.status, 200);
    }
    t.diagnostic(`${policy}: light ${light.requests.length}, heavy ${heavy.requests.length}`);
    assert.equal(light.requests.length + heavy.requests.length, 600);
    assert.ok(light.requests.length >= low && light.requests.length <= high, `weight-1 upstream got ${light.requests.length} of 600, expected ${low}..${high}`);
  });
}

for (const policy of ['round-robin', 'least-connections']) {
  test(`${policy}: a weight changed at run time (admin API) is followed, not ignored`, async (t) => {
    const a = await startBackend(t, (_req, res) => res.end('a'));
    const b = await startBackend(t, (_req, res) => res.end('b'));
    const lb = await startBalancer(t, { pools: { web: { policy, upstreams: [a.url, b.url] } } });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    const send = async (n: number): Promise<number> => {
      const before = b.requests.length;
      for (let i = 0; i < n; i++) assert.equal((await get(lb.url, { agent })).status, 200);
      return b.requests.length - before;
    };
    assert.equal(await send(30), 15, 'weights 1:1');
    const updated = await lb.balancer.updateBackend({ url: b.url, weight: 2 });
    assert.equal(updated.backend.weight, 2);
    // Sequential requests, so both policies are deterministic here: two of every three to b.
    const toB = await send(30);
    assert.ok(toB >= 19 && toB <= 21, `weights 1:2: b got ${toB} of 30`);
  });
}

test('round-robin, one of three refusing connections: its retries are spread over both siblings', async (t) => {
  const refused = `http://127.0.0.1:${await closedPort()}`;
  const b = await startBackend(t, (_req, res) => res.end('b'));
  const c = await startBackend(t, (_req, res) => res.end('c'));
  const lb = await startBalancer(t, {
    pools: {
      web: {
        policy: 'round-robin',
        upstreams: [refused, b.url, c.url],
        // The refusing upstream must stay in the pool for the whole run, so every third request is retried.
        outlier_detection: { enabled: false },
        circuit_breaker: { enabled: false },
      },
    },
  });
  for (let i = 0; i < 300; i++) assert.equal((await get(lb.url)).status, 200);
  const retried = lb.ended.filter((ctx) => ctx.attempts > 1);
  const onB = retried.filter((ctx) => (ctx.upstream as Upstream | null)?.port === b.port).length;
  const onC = retried.filter((ctx) => (ctx.upstream as Upstream | null)?.port === c.port).length;
  t.diagnostic(`${retried.length} retried requests: ${onB} ended on b, ${onC} on c; b served ${b.requests.length}, c ${c.requests.length}`);
  assert.ok(retried.length >= 90 && retried.length <= 110, `${retried.length} of 300 requests were retried, expected about 100`);
  assert.equal(onB + onC, retried.length);
  // Balanced: each sibling takes 40%..60% of the retries (SWRR gives an even split, +-1).
  for (const [name, n] of [['b', onB], ['c', onC]] as const) {
    assert.ok(n >= retried.length * 0.4 && n <= retried.length * 0.6, `${name} took ${n} of ${retried.length} retries`);
  }
  // And of all requests, each sibling serves about half.
  assert.ok(Math.abs(b.requests.length - c.requests.length) <= 30, `b ${b.requests.length}, c ${c.requests.length}`);
});
