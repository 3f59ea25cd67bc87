import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findPolicy, policies, policyNames } from '../../../src/balancer/registry.ts';

test('registry: the policies in documentation order', () => {
  assert.deepEqual(
    policies.map((p) => p.name),
    ['round-robin', 'weighted-round-robin', 'least-connections', 'random', 'power-of-two-choices'],
  );
});

test('registry: the seeds\' and common aliases resolve to the canonical policy', () => {
  const expected: Record<string, string> = {
    'least-conn': 'least-connections',
    'least-connection': 'least-connections',
    least_connections: 'least-connections',
    leastconn: 'least-connections',
    least_conn: 'least-connections',
    'round-robin': 'round-robin',
    roundrobin: 'round-robin',
    round_robin: 'round-robin',
    rr: 'round-robin',
    p2c: 'power-of-two-choices',
    power_of_two_choices: 'power-of-two-choices',
    wrr: 'weighted-round-robin',
    weighted: 'weighted-round-robin',
    weighted_round_robin: 'weighted-round-robin',
    'weighted-random': 'random',
    random: 'random',
  };
  for (const [alias, name] of Object.entries(expected)) assert.equal(findPolicy(alias)?.name, name, alias);
});

test('registry: names are matched case-insensitively', () => {
  assert.equal(findPolicy('Round-Robin')?.name, 'round-robin');
  assert.equal(findPolicy('P2C')?.name, 'power-of-two-choices');
  assert.equal(findPolicy('LEAST-CONN')?.name, 'least-connections');
});

test('registry: unknown names give undefined', () => {
  for (const name of ['', 'round-robbin', 'ip-hash', 'least connections', ' rr']) assert.equal(findPolicy(name), undefined, JSON.stringify(name));
});

test('registry: policyNames lists canonical names first, then every alias, with no duplicates', () => {
  assert.deepEqual(policyNames.slice(0, policies.length), policies.map((p) => p.name));
  assert.equal(policyNames.length, policies.length + policies.reduce((n, p) => n + p.aliases.length, 0));
  assert.equal(new Set(policyNames).size, policyNames.length);
  for (const name of policyNames) assert.ok(findPolicy(name), name);
});

test('registry: every factory describes itself', () => {
  for (const p of policies) {
    assert.match(p.name, /^[a-z0-9-]+$/);
    assert.ok(p.description.length > 10, p.name);
  }
});
