/**
 * Active health checks of a `protocol: tcp` pool, built by the pool itself: with no `type`
 * the check is tcp (never HTTP to a Redis), `send`/`expect` exchange bytes like HAProxy's
 * `tcp-check`, and the reason of a failure reaches the health log line. The probe's own cases
 * (partial answers, 64 KiB, TLS) are in test/unit/health/active-checker.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startBalancer, startRawBackend } from '../helpers/servers.ts';
import { startRedisServer } from '../helpers/redis-server.ts';
import { eventually } from '../helpers/eventually.ts';

test('a tcp pool checks tcp:// upstreams with send/expect when no type is given: redis stays up, a server answering something else goes down with the reason logged', { timeout: 20_000 }, async (t) => {
  const redis = await startRedisServer(t);
  const received: string[] = [];
  const { port: impostorPort } = await startRawBackend(t, (socket) => {
    socket.on('data', (d: Buffer) => {
      received.push(d.toString('latin1'));
      socket.write('-ERR not a redis\r\n');
    });
  });
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: {
      db: {
        protocol: 'tcp',
        upstreams: [`tcp://127.0.0.1:${redis.port}`, `tcp://127.0.0.1:${impostorPort}`],
        health_check: { send: 'PING\r\n', expect: '+PONG', interval: '100ms', fast_interval: '50ms', timeout: '300ms', rise: 1, fall: 2, jitter: 0 },
      },
    },
  } as never);
  const [good, bad] = lb.balancer.pools().get('db')!.upstreams;
  await eventually(() => bad.health === 'unhealthy', { what: 'the impostor to go unhealthy' });
  assert.equal(good.health, 'healthy');
  assert.equal(received[0], 'PING\r\n', 'the probe sent `send` as written, not an HTTP request');
  const log = lb.logs.join('');
  assert.match(log, new RegExp(`upstream 127\\.0\\.0\\.1:${impostorPort} in pool db: health healthy -> unhealthy \\(expected \\\\"\\+PONG\\\\" not received in 300ms \\(got \\\\"-ERR not a redis\\\\\\\\r\\\\\\\\n\\\\"\\) \\(2 consecutive checks failed\\)\\)`));
  assert.doesNotMatch(log, new RegExp(`127\\.0\\.0\\.1:${redis.port} in pool db: health`));
});
