/**
 * Upstream keep-alive sockets are never reused after the backend may have closed them:
 * an advertised `Keep-Alive: timeout` is honoured less the safety margin, and sockets are
 * retired before `keepalive.idle_timeout` for backends that close without saying so.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { get, startBalancer, startIdleClosingBackend } from '../helpers/servers.ts';

const transports = ['http1', 'undici', 'node-http'] as const;
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test("a backend with Node's default 5 s keep-alive never causes a 502", async (t) => {
  await Promise.all(
    transports.map(async (transport) => {
      const sockets = new Set<unknown>();
      const server = http.createServer((req, res) => {
        sockets.add(req.socket);
        res.end('ok');
      });
      // Node's defaults: keepAliveTimeout 5 s, announced as `Keep-Alive: timeout=5`.
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      t.after(() => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))));
      const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [`http://127.0.0.1:${(server.address() as { port: number }).port}`] } } });
      const statuses: number[] = [];
      // Gaps around the margin and around the backend's own limit.
      for (const gap of [0, 3500, 4200, 4900, 5100]) {
        await pause(gap);
        statuses.push((await get(`${lb.url}/`)).status);
      }
      assert.deepEqual(statuses, [200, 200, 200, 200, 200], `${transport}: ${statuses}`);
      assert.ok(sockets.size >= 3, `${transport}: sockets older than 4 s were retired (${sockets.size} used)`);
    }),
  );
});

test('a backend that closes idle sockets after 1 s without announcing it, hit at ~1 s intervals', async (t) => {
  await Promise.all(
    transports.map(async (transport) => {
      const raw = await startIdleClosingBackend(t, 1000);
      const lb = await startBalancer(t, {
        pools: { web: { transport, upstreams: [raw.url], keepalive: { idle_timeout: '1s', safety_margin: '250ms' } } },
      });
      const statuses: number[] = [];
      for (const gap of [0, 600, 900, 1000, 1100, 950, 1050, 700]) {
        await pause(gap);
        statuses.push((await get(`${lb.url}/`)).status);
      }
      assert.deepEqual(statuses, Array(8).fill(200), `${transport}: ${statuses}`);
      assert.ok(raw.connections() >= 6, `${transport}: idle sockets were retired (${raw.connections()} connections)`);
      assert.ok(raw.connections() < 8, `${transport}: a socket used within 750 ms was reused (${raw.connections()} connections)`);
    }),
  );
});
