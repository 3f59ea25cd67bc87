/**
 * Panic mode (Envoy's healthy_panic_threshold): when fewer than panic_threshold_percent of a
 * pool's upstreams are up, requests are balanced over all of them rather than piled on the few
 * left or answered 503. Operators' choices (disabled, drained) are never overridden, and a
 * backup pool that can serve goes first.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { get, startBackend, startBalancer, type TestBackend } from '../helpers/servers.ts';

async function named(t: Parameters<typeof startBackend>[0], names: string[]): Promise<TestBackend[]> {
  return Promise.all(names.map((name) => startBackend(t, (_req, res) => res.end(name))));
}

async function bodies(url: string, n: number): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const r = await get(url);
    const key = r.status === 200 ? r.body : String(r.status);
    seen.set(key, (seen.get(key) ?? 0) + 1);
  }
  return seen;
}

test('below the threshold every upstream takes a share; at 0 the healthy one takes all', async (t) => {
  const backends = await named(t, ['a', 'b', 'c']);
  const upstreams = backends.map((b) => b.url);
  const lb = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams } } });
  const off = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams, panic_threshold_percent: 0 } } });
  for (const l of [lb, off]) {
    const [a, b] = l.balancer.pools().get('web')!.upstreams;
    a.setHealth('unhealthy', 'test');
    b.setHealth('unhealthy', 'test');
  }
  // 1 of 3 up is 33%, under the default 50%: round-robin over all three.
  assert.deepEqual([...(await bodies(`${lb.url}/`, 9))].sort(), [['a', 3], ['b', 3], ['c', 3]]);
  assert.match((await lb.balancer.metrics.scrape()).body, /lb_pool_panic\{pool="web"\} 1\n/);
  assert.deepEqual([...(await bodies(`${off.url}/`, 6))], [['c', 6]]);
  assert.match((await off.balancer.metrics.scrape()).body, /lb_pool_panic\{pool="web"\} 0\n/);
  // It is said, not only counted: a warning on entering, the status of each backend, news on leaving.
  assert.ok(lb.logs.some((l) => /"level":40/.test(l) && /pool web in panic mode: 1 of 3 upstreams available/.test(l)), 'a warning when panic starts');
  assert.ok(!off.logs.some((l) => /panic mode/.test(l)), 'no panic with the threshold at 0');
  const [a, b] = lb.balancer.pools().get('web')!.upstreams;
  assert.equal(a.panic, true);
  a.setHealth('healthy', 'test');
  b.setHealth('healthy', 'test');
  assert.ok(lb.logs.some((l) => /pool web out of panic mode: 2 of 3 upstreams available/.test(l)), 'news when it ends');
  assert.equal(a.panic, false);
});

test('at or above the threshold the healthy upstreams take everything', async (t) => {
  const backends = await named(t, ['a', 'b', 'c', 'd']);
  const lb = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams: backends.map((b) => b.url) } } });
  const [a, b] = lb.balancer.pools().get('web')!.upstreams;
  a.setHealth('unhealthy', 'test');
  b.setEjected(true, 'test');
  // 2 of 4 is 50%: not below it.
  assert.deepEqual([...(await bodies(`${lb.url}/`, 6))].sort(), [['c', 3], ['d', 3]]);
  assert.match((await lb.balancer.metrics.scrape()).body, /lb_pool_panic\{pool="web"\} 0\n/);
});

test('disabled and drained upstreams are never picked in panic, and do not count in the share', async (t) => {
  const backends = await named(t, ['a', 'b', 'c', 'd', 'e']);
  const lb = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams: backends.map((b) => b.url) } } });
  const [a, b, c, d] = lb.balancer.pools().get('web')!.upstreams;
  a.setEnabled(false, 'operator');
  b.setDraining(true, 'operator');
  // 1 of the 3 allowed is up (33%): panic over c, d, e only.
  c.setHealth('unhealthy', 'test');
  d.setCircuit('open', 'test');
  assert.deepEqual([...(await bodies(`${lb.url}/`, 9))].sort(), [['c', 3], ['d', 3], ['e', 3]]);
  // With only the operator's choices out (2 of 5), the 3 left are 100% of what is allowed: no panic.
  c.setHealth('healthy', 'test');
  d.setCircuit('closed', 'test');
  assert.deepEqual([...(await bodies(`${lb.url}/`, 6))].sort(), [['c', 2], ['d', 2], ['e', 2]]);
  // Everything the operator allows is out of service by the operator: 503, panic or not.
  for (const u of [c, d]) u.setEnabled(false, 'operator');
  lb.balancer.pools().get('web')!.upstreams[4].setDraining(true, 'operator');
  assert.equal((await get(`${lb.url}/`)).status, 503);
});

test('a backup pool that can serve goes before panic; with the backup down too, the primary panics', async (t) => {
  const [x, y, spare] = await named(t, ['x', 'y', 'spare']);
  const lb = await startBalancer(t, {
    pools: { main: { policy: 'round-robin', upstreams: [x.url, y.url], backup: 'spare' }, spare: { upstreams: [spare.url] } },
  });
  const main = lb.balancer.pools().get('main')!;
  for (const u of main.upstreams) u.setHealth('unhealthy', 'test');
  assert.deepEqual([...(await bodies(`${lb.url}/`, 4))], [['spare', 4]]);
  assert.match((await lb.balancer.metrics.scrape()).body, /lb_pool_panic\{pool="main"\} 0\n/);
  lb.balancer.pools().get('spare')!.upstreams[0].setEnabled(false, 'operator');
  assert.deepEqual([...(await bodies(`${lb.url}/`, 4))].sort(), [['x', 2], ['y', 2]]);
  assert.match((await lb.balancer.metrics.scrape()).body, /lb_pool_panic\{pool="main"\} 1\n/);
});

test('in panic, a pool whose upstreams all refuse answers 503 (nothing available), not 502', async (t) => {
  const a = await startBackend(t, (_req, res) => res.end('a'));
  const b = await startBackend(t, (_req, res) => res.end('b'));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url, b.url] } } });
  await a.close();
  await b.close();
  for (const u of lb.balancer.pools().get('web')!.upstreams) u.setHealth('unhealthy', 'test');
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 503);
  assert.match(res.body, /no available upstream in pool "web" \(too few up: panic mode tried them anyway; last: connect failed \(ECONNREFUSED\)\)/);
  assert.equal(res.headers['retry-after'], '1');
});
