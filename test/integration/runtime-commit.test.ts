/**
 * A commit re-links the pools it keeps: a pool whose settings did not change keeps running as
 * it is, and its backup link follows the backup pool an API write rebuilt.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { AdminClient } from '../../src/index.ts';

const token = 'runtime-commit-test-token-0123456789';

test('an API write that rebuilds a backup pool: the kept pool falls back to the new one', async (t) => {
  const [main, first, second] = await Promise.all(['main', 'first', 'second'].map((id) => startBackend(t, (_req, res) => res.end(id))));
  const lb = await startBalancer(t, {
    pools: { web: { upstreams: [main.url], backup: 'spare' }, spare: { upstreams: [first.url] } },
    routes: [{ pool: 'web' }],
    admin: { host: '127.0.0.1', port: 0, token },
  });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  const web = lb.balancer.pools().get('web')!;
  const spare = lb.balancer.pools().get('spare')!;

  await admin.addBackend({ url: second.url, pool: 'spare' });
  assert.equal(lb.balancer.pools().get('web'), web, 'web did not change: it is the running pool');
  assert.notEqual(lb.balancer.pools().get('spare'), spare, 'spare was rebuilt');
  assert.equal(web.backup, lb.balancer.pools().get('spare'), 'web links the new spare');

  await admin.updateBackend({ url: main.url, enabled: false });
  const bodies = new Set<string>();
  for (let i = 0; i < 4; i++) bodies.add(await fetch(lb.url).then((r) => r.text()));
  assert.deepEqual([...bodies].sort(), ['first', 'second'], 'both upstreams of the new spare answer');
});
