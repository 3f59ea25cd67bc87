/** Pool panic mode (Envoy's healthy_panic_threshold): when it starts, what it picks, what it never overrides. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../../src/upstream/pool.ts';
import { PoolConfig } from '../../../src/config/schema.ts';
import { ConnectionPools } from '../../../src/transport/connection-pools.ts';

const connections = new ConnectionPools();
let n = 0;
function pool(size: number, extra: Record<string, unknown> = {}): Pool {
  const p = new Pool(`panic-${++n}`, PoolConfig.parse({ upstreams: Array.from({ length: size }, (_, i) => `http://127.0.0.1:${20_001 + i}`), ...extra }), connections);
  p.adopt();
  return p;
}
const ctx = { clientAddress: '127.0.0.1' };

test('panic starts strictly below the threshold share of eligible upstreams (default 50%)', () => {
  const cases: [number, number, boolean][] = [
    // [upstreams, down, in panic]
    [1, 0, false], [1, 1, true],
    [2, 1, false], [2, 2, true],
    [3, 1, false], [3, 2, true],
    [4, 2, false], [4, 3, true],
    [10, 5, false], [10, 6, true],
  ];
  for (const [size, down, expected] of cases) {
    const p = pool(size);
    for (let i = 0; i < down; i++) p.upstreams[i].setHealth('unhealthy', 'test');
    assert.equal(p.inPanic(), expected, `${down} of ${size} down`);
    assert.equal(p.eligible().length, size - down, 'eligible() stays the real list');
  }
});

test('panic_threshold_percent: 0 turns it off; 100 panics as soon as one is down', () => {
  const off = pool(2, { panic_threshold_percent: 0 });
  for (const u of off.upstreams) u.setHealth('unhealthy', 'test');
  assert.equal(off.inPanic(), false);
  assert.equal(off.pick(ctx), undefined);
  const eager = pool(4, { panic_threshold_percent: 100 });
  eager.upstreams[0].setEjected(true, 'test');
  assert.equal(eager.inPanic(), true);
});

test('in panic every upstream not disabled or draining is picked, down ones included; leaving panic takes that back', () => {
  const p = pool(4);
  const [a, b, c, d] = p.upstreams;
  a.setEnabled(false, 'operator');
  b.setHealth('unhealthy', 'test');
  c.setCircuit('open', 'test');
  // d alone is up: 1 of the 3 allowed.
  assert.equal(p.inPanic(), true);
  const picked = new Set(Array.from({ length: 30 }, () => p.pickInPanic(ctx, null)));
  assert.deepEqual([...picked].sort((x, y) => x!.id.localeCompare(y!.id)), [b, c, d]);
  assert.equal(a.available(), false, 'the operator choice holds');
  assert.deepEqual(new Set(Array.from({ length: 10 }, () => p.pickInPanic(ctx, [b, d]))), new Set([c]), 'never one already tried');
  b.setHealth('healthy', 'test');
  assert.equal(p.inPanic(), false);
  assert.equal(c.available(), false, 'out of panic, an open breaker keeps it out again');
});

test('max_connections still holds in panic', () => {
  const p = new Pool(`panic-${++n}`, PoolConfig.parse({ upstreams: [{ url: 'http://127.0.0.1:20001', max_connections: 1 }, 'http://127.0.0.1:20002'] }), connections);
  p.adopt();
  const [a, b] = p.upstreams;
  a.setHealth('unhealthy', 'test');
  b.setHealth('unhealthy', 'test');
  a.inFlight = 1;
  assert.equal(p.inPanic(), true);
  assert.equal(a.available(), false);
  assert.equal(p.pickInPanic(ctx, null), b);
});

test('a pool with a backup that has an eligible upstream is not in panic; with the backup down it is', () => {
  const main = pool(2);
  const spare = pool(1);
  main.backup = spare;
  for (const u of main.upstreams) u.setHealth('unhealthy', 'test');
  assert.equal(main.inPanic(), false);
  spare.upstreams[0].setEnabled(false, 'operator');
  assert.equal(main.inPanic(), true);
});
