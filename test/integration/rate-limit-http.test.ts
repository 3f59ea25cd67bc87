/**
 * Rate limits through Fulcrum itself: 429 with Retry-After and RateLimit-* headers, keys, and a
 * global limit through a real redis-server shared by two Fulcrum instances.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { get, startBackend, startBalancer } from '../helpers/servers.ts';
import { startRedisServer } from '../helpers/redis-server.ts';

test('over the limit: 429 with Retry-After and RateLimit headers, per client or per header', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/api', pool: 'web', rate_limits: [{ rate: 1, per: '10s', burst: 3, key: ['header:x-api-key'] }] },
      { pool: 'web', rate_limits: [{ rate: 2, per: '1s', burst: 2 }] },
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  assert.equal((await get(`${lb.url}/`)).status, 200);
  assert.equal((await get(`${lb.url}/`)).status, 200);
  const limited = await get(`${lb.url}/`);
  assert.equal(limited.status, 429);
  assert.equal(limited.headers['retry-after'], '1');
  assert.equal(limited.headers['ratelimit-limit'], '2');
  assert.equal(limited.headers['ratelimit-remaining'], '0');
  assert.ok(Number(limited.headers['ratelimit-reset']) >= 1);
  assert.equal(backend.requests.length, 2, 'the refused request never reached the backend');

  const statuses = async (key: string) => {
    const out: number[] = [];
    for (let i = 0; i < 4; i++) out.push((await get(`${lb.url}/api/x`, { headers: { 'x-api-key': key } })).status);
    return out;
  };
  assert.deepEqual(await statuses('alice'), [200, 200, 200, 429]);
  assert.deepEqual(await statuses('bob'), [200, 200, 200, 429], 'each key has its own bucket');
});

test('a Redis-backed limit holds across two Fulcrum instances; with Redis gone, requests still flow', { timeout: 30_000 }, async (t) => {
  const redis = await startRedisServer(t);
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const config = {
    rate_limit: { redis: { url: redis.url, timeout: '200ms' } },
    routes: [{ pool: 'web', rate_limits: [{ name: 'global', rate: 50, per: '1s', burst: 50, key: ['route'], store: 'redis' as const }] }],
    pools: { web: { upstreams: [backend.url] } },
  };
  const a = await startBalancer(t, config);
  const b = await startBalancer(t, config);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  t.after(() => agent.destroy());
  let allowed = 0;
  let refused = 0;
  const started = performance.now();
  // Four clients, alternating between the two instances, for about a second and a half.
  await Promise.all(
    Array.from({ length: 4 }, async (_, i) => {
      const url = i % 2 === 0 ? a.url : b.url;
      while (performance.now() - started < 1500) {
        const res = await get(`${url}/`, { agent });
        if (res.status === 200) allowed++;
        else if (res.status === 429) refused++;
        else assert.fail(`unexpected status ${res.status}`);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const expected = 50 + 50 * elapsed;
  t.diagnostic(`${allowed} allowed, ${refused} refused in ${elapsed.toFixed(2)} s across two instances; global limit ${expected.toFixed(0)}`);
  assert.ok(Math.abs(allowed - expected) <= expected * 0.1, `allowed ${allowed}, expected ${expected.toFixed(0)} within 10%`);
  assert.ok(refused > 0);

  await redis.stop();
  const after: number[] = [];
  for (let i = 0; i < 20; i++) after.push((await get(`${i % 2 ? a.url : b.url}/`, { agent })).status);
  assert.ok(after.every((s) => s === 200 || s === 429), `no 5xx with Redis down: ${after}`);
  assert.ok(after.includes(200), 'fail-open: requests still flow');
  assert.equal(a.logs.join('').match(/unreachable/g)?.length, 1, 'one warning per state change');
});
