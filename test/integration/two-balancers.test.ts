/**
 * Event channels are process-wide; two balancers embedded in one process each log and count
 * only their own exchanges (access log, metrics, retry and state lines).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { get, startBackend, startBalancer, closedPort } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

test('two balancers in one process: each access log, metrics and retry log has only its own requests', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const dead = `http://127.0.0.1:${await closedPort()}`;
  const a = await startBalancer(t, { listeners: [{ name: 'lb-a', host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [backend.url] } } });
  const b = await startBalancer(t, { listeners: [{ name: 'lb-b', host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [dead, backend.url], policy: 'round-robin' } } });
  for (let i = 0; i < 3; i++) assert.equal((await get(`${a.url}/a`)).status, 200);
  for (let i = 0; i < 2; i++) assert.equal((await get(`${b.url}/b`)).status, 200);
  const access = (logs: string[]): string[] => logs.filter((l) => l.includes('"log":"access"'));
  await eventually(() => access(a.logs).length === 3 && access(b.logs).length === 2, { what: 'the access lines' });
  assert.ok(access(a.logs).every((l) => l.includes('"listener":"lb-a"')), 'a logs only its own requests');
  assert.ok(access(b.logs).every((l) => l.includes('"listener":"lb-b"')), 'b logs only its own requests');
  assert.ok(!a.logs.some((l) => l.includes('retrying')), "b's retries are not in a's log");
  assert.ok(!a.logs.some((l) => l.includes(dead.slice(7))), "b's upstream state changes are not in a's log");
  const count = (text: string): number => [...text.matchAll(/^lb_requests_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
  assert.equal(count((await a.balancer.metrics.scrape()).body), 3);
  assert.equal(count((await b.balancer.metrics.scrape()).body), 2);
  assert.doesNotMatch((await a.balancer.metrics.scrape()).body, /lb_retries_total\{[^}]*\} [1-9]/);
});
