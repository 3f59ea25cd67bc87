/**
 * The runtime store: a build touches nothing running (so a failed one needs no undo), a commit
 * puts the built runtime in charge: upstream settings, state reports, policies, backup links,
 * pool start and close, stores, connection pools.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { validateConfig, type FulcrumConfigInput } from '../../../src/index.ts';
import type { FulcrumConfig } from '../../../src/config/schema.ts';
import { createLogger } from '../../../src/observe/logger.ts';
import { RuntimeStore } from '../../../src/runtime/runtime-store.ts';
import type { Runtime } from '../../../src/runtime/runtime.ts';
import { ConnectionPools } from '../../../src/transport/connection-pools.ts';
import type { Pool } from '../../../src/upstream/pool.ts';

const logger = createLogger({ level: 'silent', format: 'json' });

/** Connection pools that note what every commit retains (by pool name). */
class RecordingConnections extends ConnectionPools {
  readonly retained: string[][] = [];
  override retain(live: Parameters<ConnectionPools['retain']>[0]): void {
    this.retained.push([...live].map((p) => (p as Pool).name));
  }
}

function config(input: Omit<FulcrumConfigInput, 'listeners'>): FulcrumConfig {
  return validateConfig({ listeners: [{ host: '127.0.0.1', port: 0 }], ...input } as FulcrumConfigInput).config;
}

function storeOf(t: TestContext, first: FulcrumConfig, connections = new ConnectionPools()): RuntimeStore {
  const store = new RuntimeStore(first, connections, logger);
  t.after(() => store.close());
  return store;
}

/** What a commit would change on a running pool and its upstream. */
function shared(runtime: Runtime, pool: string) {
  const p = runtime.pools.get(pool)!;
  const u = p.upstreams[0];
  const policy = (p as unknown as { policy: unknown }).policy;
  return { weight: u.weight, maxConnections: u.maxConnections, maxPending: u.maxPending, halfOpenLimit: u.halfOpenLimit, onChange: u.onChange, policy, snapshot: p.eligible(), backup: p.backup };
}

/** Every pool's `shared` values are the ones seen (by identity: a rebuilt policy or snapshot would look equal). */
function assertUntouched(runtime: Runtime, seen: Map<string, ReturnType<typeof shared>>, when: string): void {
  for (const [name, before] of seen) {
    const now = shared(runtime, name);
    for (const key of Object.keys(now) as (keyof typeof now)[]) assert.equal(now[key], before[key], `${when}: pool ${name}'s ${key} unchanged`);
  }
}

const sharedOf = (runtime: Runtime) => new Map([...runtime.pools.keys()].map((name) => [name, shared(runtime, name)]));

const running = config({
  pools: { a: { upstreams: [{ url: 'http://127.0.0.1:1', weight: 1 }] }, b: { upstreams: ['http://127.0.0.1:2'], backup: 'a' } },
  routes: [{ path_prefix: '/a', pool: 'a' }, { pool: 'b' }],
});
/** Pool a with new upstream settings and breaker; b unchanged. */
const changed = structuredClone(running);
changed.pools.a.upstreams[0] = { ...changed.pools.a.upstreams[0], weight: 7, max_connections: 5 };
changed.pools.a.circuit_breaker = { ...changed.pools.a.circuit_breaker, max_pending: 2, half_open_requests: 1 };

test('a failed build leaves every running upstream and pool as it was', (t) => {
  const store = storeOf(t, running);
  const before = store.current;
  const seen = sharedOf(before);
  // Pool a would be rebuilt with new settings; pool b then fails (an address listed twice).
  const broken = structuredClone(changed);
  broken.pools.b.upstreams.push({ ...broken.pools.b.upstreams[0] });
  assert.throws(() => store.build(broken), /pool b: upstream 127\.0\.0\.1:2 is listed twice/);
  assert.equal(store.current, before);
  assertUntouched(before, seen, 'after a failed build');
  const a = before.pools.get('a')!;
  a.upstreams[0].setDraining(true, 'test');
  assert.deepEqual(a.eligible(), [], 'the running pool still hears its upstream');
});

test('a build that succeeds touches nothing either; its commit applies the new settings', (t) => {
  const store = storeOf(t, running);
  const before = store.current;
  const a = before.pools.get('a')!;
  const x = a.upstreams[0];
  const seen = sharedOf(before);
  const next = store.build(changed);
  assertUntouched(before, seen, 'built, not committed');
  assert.equal(store.current, before);
  const a2 = next.pools.get('a')!;
  assert.notEqual(a2, a, 'a changed pool is a new one');
  assert.equal(a2.upstreams[0], x, 'around the same upstream object');
  assert.equal(next.pools.get('b'), before.pools.get('b'), 'an unchanged pool is the running one');

  store.commit(next);
  assert.equal(store.current, next);
  assert.deepEqual([x.weight, x.maxConnections, x.maxPending, x.halfOpenLimit], [7, 5, 2, 1]);
  assert.notEqual(x.onChange, seen.get('a')!.onChange);
  assert.equal(next.pools.get('b')!.backup, a2, 'the kept pool links the new backup');
  x.setDraining(true, 'test');
  assert.deepEqual(a2.eligible(), [], 'the new pool hears its upstream');
  assert.deepEqual(a.eligible(), [x], 'the replaced one does not');
});

test('commit: new pools start (once the store started), replaced ones close, listeners and connection pools are told', (t) => {
  const connections = new RecordingConnections();
  const store = storeOf(t, running, connections);
  const told: [Runtime, Runtime][] = [];
  store.onCommit((next, previous) => told.push([next, previous]));
  store.start();
  const before = store.current;
  const next = store.build(changed);
  const start = t.mock.method(next.pools.get('a')!, 'start');
  const close = t.mock.method(before.pools.get('a')!, 'close');
  const keptClose = t.mock.method(before.pools.get('b')!, 'close');
  const storesClose = t.mock.method(before.stores, 'close');
  store.commit(next);
  assert.equal(start.mock.callCount(), 1, 'the new pool started');
  assert.equal(close.mock.callCount(), 1, 'the replaced pool closed');
  assert.equal(keptClose.mock.callCount(), 0, 'the kept pool goes on');
  assert.equal(next.stores, before.stores, 'routes and rate_limit unchanged: the stores are kept');
  assert.equal(storesClose.mock.callCount(), 0);
  assert.deepEqual(told, [[next, before]]);
  assert.deepEqual(connections.retained, [['a', 'b']]);

  // New routes: new stores and guards; the old stores close.
  const routed = structuredClone(changed);
  routed.routes[0].path_prefix = '/api';
  const third = store.build(routed);
  assert.notEqual(third.stores, next.stores);
  const nextStoresClose = t.mock.method(next.stores, 'close');
  store.commit(third);
  assert.equal(nextStoresClose.mock.callCount(), 1);
});

test('commit before start(): new pools wait for start()', (t) => {
  const store = storeOf(t, running);
  const next = store.build(changed);
  const start = t.mock.method(next.pools.get('a')!, 'start');
  store.commit(next);
  assert.equal(start.mock.callCount(), 0);
  store.start();
  assert.equal(start.mock.callCount(), 1);
});

test('a renamed pool takes over the upstream objects of the old name', (t) => {
  const store = storeOf(t, running);
  const x = store.current.pools.get('a')!.upstreams[0];
  x.setHealth('unhealthy', 'test');
  const renamed = structuredClone(running);
  renamed.pools.api = renamed.pools.a;
  delete renamed.pools.a;
  renamed.pools.b.backup = 'api';
  renamed.routes[0].pool = 'api';
  const next = store.build(renamed);
  const api = next.pools.get('api')!;
  assert.equal(api.upstreams[0], x);
  store.commit(next);
  assert.equal(x.health, 'unhealthy', 'its state carried over');
  x.setHealth('healthy', 'test');
  assert.deepEqual(api.eligible(), [x]);
});
