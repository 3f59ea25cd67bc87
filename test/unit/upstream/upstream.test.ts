import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Upstream, type UpstreamChange } from '../../../src/upstream/upstream.ts';
import { Pool } from '../../../src/upstream/pool.ts';
import { ConnectionPools } from '../../../src/transport/connection-pools.ts';
import { PoolConfig } from '../../../src/config/schema.ts';

const connections = new ConnectionPools();

function upstream(maxConnections = 0, maxPending?: number): Upstream {
  return new Upstream({ url: 'http://10.0.0.5:8080', weight: 1, maxConnections, maxPending });
}

/** The upstream's changes as plain `[field, from, to, reason]` rows. */
function recorder(u: Upstream): [string, string | boolean, string | boolean, string][] {
  const rows: [string, string | boolean, string | boolean, string][] = [];
  u.onChange = (c: UpstreamChange) => {
    assert.equal(c.upstream, u);
    rows.push([c.field, c.from, c.to, c.reason]);
  };
  return rows;
}

test('upstream: address fields from the URL', () => {
  const u = upstream();
  assert.equal(u.id, '10.0.0.5:8080');
  assert.equal(u.origin, 'http://10.0.0.5:8080');
  assert.equal(u.hostname, '10.0.0.5');
  assert.equal(u.port, 8080);
  assert.equal(u.hostHeader, '10.0.0.5:8080');
  const d = new Upstream({ url: 'http://backend.internal', weight: 3, maxConnections: 0 });
  assert.equal(d.port, 80);
  assert.equal(d.hostHeader, 'backend.internal');
  assert.equal(d.id, 'backend.internal:80', 'the port is always spelled out');
  assert.equal(d.weight, 3);
  assert.equal(d.maxConnections, Infinity);
  assert.equal(d.maxPending, 0);
});

test('upstream: a fresh upstream is available and eligible', () => {
  const u = upstream();
  assert.equal(u.health, 'healthy');
  assert.equal(u.enabled, true);
  assert.equal(u.draining, false);
  assert.equal(u.ejected, false);
  assert.equal(u.circuit, 'closed');
  assert.equal(u.available(), true);
  assert.equal(u.eligible(), true);
});

test('upstream: available()/eligible() truth table over health, enabled, draining, ejected, circuit', () => {
  type Row = { health: 'healthy' | 'unhealthy'; enabled: boolean; draining: boolean; ejected: boolean; circuit: 'closed' | 'open' | 'half-open' };
  let checked = 0;
  for (const health of ['healthy', 'unhealthy'] as const) {
    for (const enabled of [true, false]) {
      for (const draining of [false, true]) {
        for (const ejected of [false, true]) {
          for (const circuit of ['closed', 'open', 'half-open'] as const) {
            const row: Row = { health, enabled, draining, ejected, circuit };
            const u = upstream();
            Object.assign(u, row);
            const up = health === 'healthy' && enabled && !draining && !ejected && circuit !== 'open';
            assert.equal(u.eligible(), up, `eligible ${JSON.stringify(row)}`);
            assert.equal(u.available(), up, `available ${JSON.stringify(row)}`);
            checked++;
          }
        }
      }
    }
  }
  assert.equal(checked, 48);
});

test('upstream: inFlight against maxConnections + maxPending limits available() only', () => {
  const u = upstream(2, 1);
  assert.equal(u.maxConnections, 2);
  assert.equal(u.maxPending, 1);
  for (const [inFlight, available] of [[0, true], [1, true], [2, true], [3, false], [4, false]] as const) {
    u.inFlight = inFlight;
    assert.equal(u.available(), available, `inFlight ${inFlight}`);
    assert.equal(u.eligible(), true, `eligible at inFlight ${inFlight}`);
  }
  const noQueue = upstream(2);
  noQueue.inFlight = 1;
  assert.equal(noQueue.available(), true);
  noQueue.inFlight = 2;
  assert.equal(noQueue.available(), false);
  const unlimited = upstream(0, 5);
  unlimited.inFlight = 1_000_000;
  assert.equal(unlimited.available(), true);
});

test('upstream: half-open lets only halfOpenLimit requests in flight', () => {
  const u = upstream();
  u.halfOpenLimit = 2;
  u.circuit = 'half-open';
  const seen = [0, 1, 2, 3].map((n) => {
    u.inFlight = n;
    return u.available();
  });
  assert.deepEqual(seen, [true, true, false, false]);
  assert.equal(u.eligible(), true, 'half-open stays in the snapshot');
  u.circuit = 'closed';
  assert.equal(u.available(), true, 'closed: no half-open limit');
  // The connection limit still applies below the half-open limit.
  const limited = upstream(1);
  limited.halfOpenLimit = 3;
  limited.circuit = 'half-open';
  limited.inFlight = 1;
  assert.equal(limited.available(), false);
});

test('upstream: every setter reports a real change once, with field, from, to and reason', () => {
  const u = upstream();
  const rows = recorder(u);
  u.setHealth('unhealthy', 'h1');
  u.setHealth('unhealthy', 'h2 no-op');
  u.setHealth('healthy', 'h3');
  u.setEnabled(false, 'e1');
  u.setEnabled(false, 'e2 no-op');
  u.setEnabled(true, 'e3');
  u.setDraining(true, 'd1');
  u.setDraining(true, 'd2 no-op');
  u.setDraining(false, 'd3');
  u.setEjected(true, 'x1');
  u.setEjected(true, 'x2 no-op');
  u.setEjected(false, 'x3');
  u.setCircuit('open', 'c1');
  u.setCircuit('open', 'c2 no-op');
  u.setCircuit('half-open', 'c3');
  u.setCircuit('closed', 'c4');
  u.setCircuit('closed', 'c5 no-op');
  assert.deepEqual(rows, [
    ['health', 'healthy', 'unhealthy', 'h1'],
    ['health', 'unhealthy', 'healthy', 'h3'],
    ['enabled', true, false, 'e1'],
    ['enabled', false, true, 'e3'],
    ['draining', false, true, 'd1'],
    ['draining', true, false, 'd3'],
    ['ejected', false, true, 'x1'],
    ['ejected', true, false, 'x3'],
    ['circuit', 'closed', 'open', 'c1'],
    ['circuit', 'open', 'half-open', 'c3'],
    ['circuit', 'half-open', 'closed', 'c4'],
  ]);
});

test('upstream: no-op setters on a fresh upstream report nothing', () => {
  const u = upstream();
  const rows = recorder(u);
  u.setHealth('healthy', 'x');
  u.setEnabled(true, 'x');
  u.setDraining(false, 'x');
  u.setEjected(false, 'x');
  u.setCircuit('closed', 'x');
  assert.deepEqual(rows, []);
});

test('upstream: state changes without an onChange listener do not throw', () => {
  const u = upstream();
  assert.equal(u.onChange, null);
  u.setHealth('unhealthy', 'x');
  u.setEjected(true, 'x');
  assert.equal(u.health, 'unhealthy');
  assert.equal(u.ejected, true);
});

test('upstream: the state is set before onChange runs (listeners see the new state)', () => {
  const u = upstream();
  const seen: boolean[] = [];
  u.onChange = () => seen.push(u.eligible());
  u.setDraining(true, 'drain');
  u.setDraining(false, 'undrain');
  assert.deepEqual(seen, [false, true]);
});

test('upstream: configure takes new settings and keeps every piece of live state, silently', () => {
  const u = upstream(5);
  u.health = 'unhealthy';
  u.enabled = false;
  u.draining = true;
  u.ejections = 3;
  u.served = 120;
  u.failures = 7;
  u.ejected = true;
  u.circuit = 'open';
  u.inFlight = 4;
  const rows = recorder(u);
  u.configure({ url: 'http://10.0.0.5:8080', weight: 2, maxConnections: 0, maxPending: 5 });
  assert.deepEqual(rows, []);
  assert.equal(u.weight, 2);
  assert.equal(u.maxConnections, Infinity);
  assert.equal(u.maxPending, 5);
  assert.deepEqual([u.health, u.enabled, u.draining, u.ejections, u.served, u.failures, u.ejected, u.circuit, u.inFlight], ['unhealthy', false, true, 3, 120, 7, true, 'open', 4]);
});

test('pool: carries state of unchanged addresses from `previous` and rebuilds the snapshot on changes', async (t) => {
  // With health checks configured (not started) in both, so carrying health over is meaningful.
  const settings = PoolConfig.parse({ upstreams: ['http://127.0.0.1:1', 'http://127.0.0.1:2', 'http://127.0.0.1:3'], health_check: {} });
  const first = new Pool('web', settings, connections);
  first.adopt();
  t.after(() => first.close());
  const [a, b, c] = first.upstreams;
  assert.deepEqual(first.eligible(), [a, b, c]);
  b.setHealth('unhealthy', 'down');
  assert.deepEqual(first.eligible(), [a, c]);
  c.setEnabled(false, 'operator');
  assert.deepEqual(first.eligible(), [a]);
  a.setCircuit('half-open', 'probing');
  assert.deepEqual(first.eligible(), [a], 'half-open stays eligible');
  a.setCircuit('open', 'tripped');
  assert.deepEqual(first.eligible(), []);
  assert.ok(Object.isFrozen(first.eligible()));

  const previous = new Map(first.upstreams.map((u) => [u.id, u]));
  const second = new Pool('web', PoolConfig.parse({ upstreams: ['http://127.0.0.1:2', 'http://127.0.0.1:3', 'http://127.0.0.1:4'], health_check: {} }), connections, previous);
  second.adopt();
  t.after(() => second.close());
  const [b2, c2, d2] = second.upstreams;
  assert.equal(b2.health, 'unhealthy');
  assert.equal(c2.enabled, false);
  assert.equal(d2.health, 'healthy');
  assert.deepEqual(second.eligible(), [d2]);
  b2.setHealth('healthy', 'back');
  assert.deepEqual(second.eligible(), [b2, d2]);
  assert.equal(b2, b, 'a reload keeps the object of an unchanged address (in-flight counts stay true)');
});

test('pool: a reload that drops health_check does not leave an upstream unhealthy for good', {
}, async (t) => {
  const checked = PoolConfig.parse({ upstreams: ['http://127.0.0.1:1'], health_check: {} });
  const first = new Pool('web', checked, connections);
  first.adopt();
  t.after(() => first.close());
  first.upstreams[0].setHealth('unhealthy', 'status 500 (3 consecutive checks failed)');
  const second = new Pool('web', PoolConfig.parse({ upstreams: ['http://127.0.0.1:1'] }), connections, new Map([[first.upstreams[0].id, first.upstreams[0]]]));
  second.adopt();
  t.after(() => second.close());
  assert.equal(second.upstreams[0].health, 'unhealthy', 'nothing changes before the pool is in service');
  second.start();
  assert.equal(second.upstreams[0].health, 'healthy');
  assert.deepEqual(second.eligible(), second.upstreams);
});
