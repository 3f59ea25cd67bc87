/**
 * A reload whose build fails half-way changes nothing: upstream objects a new pool had already
 * taken over (weights, owner) go back to the running pools.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createBalancer, validateConfig } from '../../src/index.ts';
import { createLogger } from '../../src/observe/logger.ts';

test('reload: a build that fails half-way leaves upstream weights and owners as they were', async () => {
  const running = validateConfig({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { a: { upstreams: [{ url: 'http://127.0.0.1:1', weight: 1 }] }, b: { upstreams: ['http://127.0.0.1:2'] } }, routes: [{ path_prefix: '/a', pool: 'a' }, { pool: 'b' }] });
  const balancer = createBalancer(running, { logger: createLogger({ level: 'silent', format: 'json' }) });
  const poolA = balancer.pools().get('a')!;
  const x = poolA.upstreams[0];
  // Pool a builds (taking x over with weight 7); pool b then fails (an address listed twice, which
  // validation refuses, so the broken config is handed over as already loaded).
  const broken = structuredClone(running.config);
  broken.pools.a.upstreams[0].weight = 7;
  broken.pools.b.upstreams.push({ ...broken.pools.b.upstreams[0] });
  await assert.rejects(balancer.reload({ config: broken, source: 'test', warnings: [] }), /listed twice/);
  assert.equal(balancer.pools().get('a'), poolA, 'the running pool stays');
  assert.equal(x.weight, 1, 'the weight the half-built pool gave is undone');
  const seen: string[] = [];
  const off = (await import('../../src/core/events.ts')).upstreamState;
  const listen = (m: unknown): void => void seen.push((m as { pool: string }).pool);
  off.subscribe(listen);
  x.setDraining(true, 'test');
  off.unsubscribe(listen);
  assert.deepEqual(seen, ['a'], 'state changes are reported by the running pool');
  assert.deepEqual(poolA.eligible(), [], 'and its snapshot follows them');
  await balancer.close(0);
});

test('reload: a failed build does not mark an unhealthy upstream healthy', async () => {
  const running = validateConfig({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { a: { upstreams: ['http://127.0.0.1:1'], health_check: { interval: '1h' } }, b: { upstreams: ['http://127.0.0.1:2'] } }, routes: [{ path_prefix: '/a', pool: 'a' }, { pool: 'b' }] });
  const balancer = createBalancer(running, { logger: createLogger({ level: 'silent', format: 'json' }) });
  const x = balancer.pools().get('a')!.upstreams[0];
  x.setHealth('unhealthy', 'test');
  // Pool a loses its health check (which would mark x healthy once in service), pool b fails to build.
  const broken = structuredClone(running.config);
  delete broken.pools.a.health_check;
  broken.pools.b.upstreams.push({ ...broken.pools.b.upstreams[0] });
  await assert.rejects(balancer.reload({ config: broken, source: 'test', warnings: [] }), /listed twice/);
  assert.equal(x.health, 'unhealthy', 'the running pool still checks it and sees it down');
  assert.deepEqual(balancer.pools().get('a')!.eligible(), []);
  await balancer.close(0);
});
