/**
 * Resilience on real sockets: a backend killed, hung, broken or restarted under load, and the
 * limits that keep a failing pool from being hammered.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { get, startBackend, startBalancer, startIdleClosingBackend, startRawBackend } from '../helpers/servers.ts';
import { startBackendProcess } from '../helpers/backend-process.ts';
import { eventually } from '../helpers/eventually.ts';

const fastChecks = { interval: '200ms', fast_interval: '100ms', timeout: '150ms', rise: 2, fall: 2, jitter: 0 };

test('kill -9 of one of three backends under load: no GET fails, no POST is sent twice; it rejoins after restart', { timeout: 60_000 }, async (t) => {
  const posts: string[] = [];
  const backends = [];
  for (const id of ['1', '2', '3']) backends.push(await startBackendProcess(t, id, 0, posts));
  const lb = await startBalancer(t, { pools: { web: { upstreams: backends.map((b) => b.url), health_check: fastChecks } } });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 12 });
  t.after(() => agent.destroy());
  const failedGets: string[] = [];
  const postResults: { id: string; status: number | string }[] = [];
  let stop = false;
  let seq = 0;
  const request = (method: string): Promise<void> =>
    new Promise((resolve) => {
      const id = `r${++seq}`;
      const req = http.request(`${lb.url}/`, { method, agent, headers: { 'x-test-id': id } }, (res) => {
        res.resume();
        res.on('end', () => {
          if (method === 'GET' && res.statusCode !== 200) failedGets.push(`${id}: ${res.statusCode}`);
          if (method === 'POST') postResults.push({ id, status: res.statusCode! });
          resolve();
        });
      });
      req.on('error', (err) => {
        if (method === 'GET') failedGets.push(`${id}: ${err.message}`);
        else postResults.push({ id, status: err.message });
        resolve();
      });
      req.end(method === 'POST' ? 'payload' : undefined);
    });
  const loops = Array.from({ length: 10 }, async (_, i) => {
    const deadline = performance.now() + 20_000;
    while (!stop && performance.now() < deadline) await request(i % 3 === 0 ? 'POST' : 'GET');
  });
  await eventually(() => seq > 300, { timeout: 10_000, what: 'steady load' });
  const victim = backends[0];
  victim.child.kill('SIGKILL');
  const victimUpstream = lb.balancer.pools().get('web')!.upstreams[0];
  await eventually(() => victimUpstream.health === 'unhealthy', { timeout: 5000, what: 'the killed backend to be marked down' });
  const atDown = seq;
  await eventually(() => seq > atDown + 300, { timeout: 10_000, what: 'load after the kill' });

  // Restart on the same port: back within interval x rise, plus one interval (and slack for a loaded machine).
  const restartedAt = performance.now();
  await startBackendProcess(t, '1', victim.port, posts);
  await eventually(() => victimUpstream.health === 'healthy', { timeout: 5000, what: 'the restarted backend to rejoin' });
  const rejoinMs = performance.now() - restartedAt;
  stop = true;
  await Promise.all(loops);

  t.diagnostic(`${seq} requests; rejoined ${Math.round(rejoinMs)} ms after restart (interval 200ms x rise 2 + 200ms = 600ms)`);
  assert.deepEqual(failedGets, [], 'no GET failed');
  const counts = new Map<string, number>();
  for (const id of posts) counts.set(id, (counts.get(id) ?? 0) + 1);
  assert.deepEqual([...counts].filter(([, n]) => n > 1), [], 'no POST reached a backend twice');
  assert.ok(postResults.filter((p) => p.status === 200).length > 50, 'POSTs were served');
  assert.ok(rejoinMs < 600 + 1000, `rejoined after ${rejoinMs} ms`);
});

test('a hanging backend: its requests end in 504 at the timeout, then it is out and the others serve everything', { timeout: 30_000 }, async (t) => {
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const hung = await startBackend(t, () => {});
  const lb = await startBalancer(t, {
    pools: { web: { upstreams: [hung.url, good.url], timeouts: { response_headers: '400ms' }, health_check: fastChecks, outlier_detection: { enabled: false } } },
  });
  const first = await get(`${lb.url}/`);
  assert.equal(first.status, 504, 'the request on the hung backend times out');
  const upstream = lb.balancer.pools().get('web')!.upstreams[0];
  await eventually(() => upstream.health === 'unhealthy', { timeout: 5000, what: 'the hung backend to be marked down' });
  assert.match(lb.logs.join(''), /health healthy -> unhealthy \(timeout after 150ms \(2 consecutive checks failed\)\)/);
  for (let i = 0; i < 10; i++) assert.equal((await get(`${lb.url}/`)).body, 'good');
});

test('a backend that closes idle keep-alive sockets after 1 s without saying so, hit at ~1 s intervals: no GET fails', { timeout: 30_000 }, async (t) => {
  const raw = await startIdleClosingBackend(t, 1000);
  // Default keep-alive settings (5 s idle): Fulcrum reuses sockets the backend has closed.
  const lb = await startBalancer(t, { pools: { web: { upstreams: [raw.url] } } });
  const statuses: number[] = [];
  for (const gap of [0, 1000, 1050, 950, 1100, 1000]) {
    await new Promise((r) => setTimeout(r, gap));
    statuses.push((await get(`${lb.url}/`)).status);
  }
  assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200]);
  assert.ok(raw.connections() >= 4, `stale sockets were replaced (${raw.connections()} connections)`);
});

test('the race of that close: a request on a socket the backend is closing is reset, and a GET goes again', { timeout: 30_000 }, async (t) => {
  let resets = 0;
  // The backend's idle limit is 1 s; a request arriving later on the same socket meets the close (RST).
  const raw = await startRawBackend(t, (socket) => {
    let last = 0;
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      while (buffered.includes('\r\n\r\n')) {
        buffered = buffered.slice(buffered.indexOf('\r\n\r\n') + 4);
        if (last > 0 && Date.now() - last >= 900) {
          resets++;
          socket.resetAndDestroy();
          return;
        }
        last = Date.now();
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  const lb = await startBalancer(t, { pools: { web: { upstreams: [raw.url], outlier_detection: { enabled: false } } } });
  const statuses: number[] = [];
  for (const gap of [0, 1000, 1000, 1000]) {
    await new Promise((r) => setTimeout(r, gap));
    statuses.push((await get(`${lb.url}/`)).status);
  }
  assert.deepEqual(statuses, [200, 200, 200, 200], lb.logs.filter((l) => l.includes("retry") || l.includes("502")).join(""));
  assert.equal(resets, 3, 'each reused socket was reset by the backend and the GET was sent again');
  const post = await new Promise((r) => setTimeout(r, 1000)).then(() => get(`${lb.url}/`, { method: 'POST', body: 'x' }));
  assert.equal(post.status, 502, 'a POST that met the reset is not sent again');
});

test('garbage from a backend: 502 and its socket is not reused', async (t) => {
  const raw = await startRawBackend(t, (socket) => socket.once('data', () => socket.write('HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n')));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [raw.url], outlier_detection: { enabled: false } } } });
  assert.equal((await get(`${lb.url}/`)).status, 502);
  assert.equal((await get(`${lb.url}/`)).status, 502);
  assert.equal(raw.sockets.length, 2, 'each request had a fresh connection');
  assert.ok(raw.sockets[0].destroyed || raw.sockets[0].readableEnded, 'the first socket was closed');
});

test('a POST the backend may have seen is never sent again; a GET is', async (t) => {
  const resets = await startBackend(t, (req) => req.on('data', () => {}).on('end', () => req.socket.destroy()));
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const lb = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams: [resets.url, good.url], outlier_detection: { enabled: false } } } });
  const post = await get(`${lb.url}/`, { method: 'POST', body: 'once' });
  assert.equal(post.status, 502);
  assert.equal(resets.requests.length, 1);
  assert.equal(good.requests.length, 0, 'the POST was not retried');
  const getRes = await get(`${lb.url}/`); // round-robin: good
  assert.equal(getRes.status, 200);
  const getOnReset = await get(`${lb.url}/`); // round-robin: the resetting one, then retried on good
  assert.equal(getOnReset.status, 200);
  assert.equal(getOnReset.body, 'good');
  assert.equal(resets.requests.length, 2);
});

test('a small POST body is kept and sent again on a retryable status; a large one is not', async (t) => {
  const failing = await startBackend(t, (req, res) => req.resume().on('end', () => res.writeHead(503).end()));
  const echo = await startBackend(t, (req, res) => req.pipe(res));
  const lb = await startBalancer(t, {
    pools: { web: { policy: 'round-robin', upstreams: [failing.url, echo.url], retry: { max_body_bytes: 1024 }, outlier_detection: { enabled: false } } },
  });
  // PUT is idempotent: retried on the other upstream with the same body.
  const put = await get(`${lb.url}/`, { method: 'PUT', body: 'small body' });
  assert.equal(put.status, 200);
  assert.equal(put.body, 'small body');
  await get(`${lb.url}/`); // round-robin back to the failing one next
  const big = await get(`${lb.url}/`, { method: 'PUT', body: 'x'.repeat(4096) });
  assert.equal(big.status, 503, 'a body too large to keep is not sent twice');
});

test('all backends down: 503 within 100 ms, with a clear body', { timeout: 20_000 }, async (t) => {
  const a = await startBackend(t, (_req, res) => res.end('a'));
  const b = await startBackend(t, (_req, res) => res.end('b'));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url, b.url], health_check: fastChecks } } });
  await a.close();
  await b.close();
  const pool = lb.balancer.pools().get('web')!;
  await eventually(() => pool.upstreams.every((u) => u.health === 'unhealthy'), { timeout: 5000, what: 'both marked down' });
  const started = performance.now();
  const res = await get(`${lb.url}/`);
  const took = performance.now() - started;
  assert.equal(res.status, 503);
  assert.match(res.body, /no available upstream in pool "web"/);
  assert.ok(took < 100, `answered in ${took.toFixed(1)} ms`);
});

test('the retry budget holds: a pool that fails everything gets few more attempts than requests', { timeout: 20_000 }, async (t) => {
  let attempts = 0;
  const failing = () => (_req: http.IncomingMessage, res: http.ServerResponse) => {
    attempts++;
    setTimeout(() => res.writeHead(503).end('down'), 100);
  };
  const a = await startBackend(t, failing());
  const b = await startBackend(t, failing());
  const lb = await startBalancer(t, {
    pools: { web: { upstreams: [a.url, b.url], retry: { max_attempts: 3, budget_percent: 20, min_retry_concurrency: 2 }, outlier_detection: { enabled: false }, circuit_breaker: { enabled: false } } },
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
  t.after(() => agent.destroy());
  const results = await Promise.all(Array.from({ length: 50 }, () => get(`${lb.url}/`, { agent })));
  assert.ok(results.every((r) => r.status === 503), 'the upstream 503 is passed on');
  t.diagnostic(`50 requests made ${attempts} upstream attempts (no budget: up to 150)`);
  // First wave 50, retries in flight at most 20% of 50 = 10, then at most max(2, 20% of 10) = 2.
  assert.ok(attempts > 50, 'some requests were retried');
  assert.ok(attempts <= 50 + 10 + 2, `attempts ${attempts} stayed within the budget`);
});

test('circuit breaking: max_connections gives a fast 503; an error-rate breaker opens and the others take over', { timeout: 20_000 }, async (t) => {
  const slow = await startBackend(t, (_req, res) => setTimeout(() => res.end('slow'), 300));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [{ url: slow.url, max_connections: 1 }] } } });
  const first = get(`${lb.url}/`);
  await eventually(() => slow.requests.length === 1);
  const started = performance.now();
  const second = await get(`${lb.url}/`);
  assert.equal(second.status, 503);
  assert.ok(performance.now() - started < 200, 'refused at once, not queued');
  assert.equal((await first).status, 200);

  const bad = await startBackend(t, (_req, res) => res.writeHead(503).end());
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const lb2 = await startBalancer(t, {
    pools: {
      web: {
        upstreams: [bad.url, good.url],
        retry: { on_status: [] },
        outlier_detection: { enabled: false },
        circuit_breaker: { min_requests: 4, error_rate: 0.5, open_time: '500ms', half_open_requests: 1 },
      },
    },
  });
  const upstream = lb2.balancer.pools().get('web')!.upstreams[0];
  for (let i = 0; i < 8 && upstream.circuit === 'closed'; i++) await get(`${lb2.url}/`);
  assert.equal(upstream.circuit, 'open');
  const before = bad.requests.length;
  for (let i = 0; i < 6; i++) assert.equal((await get(`${lb2.url}/`)).body, 'good');
  assert.equal(bad.requests.length, before, 'an open breaker sends nothing');
  await eventually(() => upstream.circuit === 'half-open', { timeout: 3000, what: 'half-open' });
});

test('outlier ejection: consecutive 502s eject an upstream for the base time; it returns', { timeout: 20_000 }, async (t) => {
  let broken = true;
  const flaky = await startBackend(t, (_req, res) => (broken ? res.writeHead(502).end() : res.end('flaky')));
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const lb = await startBalancer(t, {
    pools: {
      web: {
        upstreams: [flaky.url, good.url],
        retry: { on_status: [] },
        circuit_breaker: { enabled: false },
        outlier_detection: { consecutive_failures: 3, base_ejection_time: '400ms' },
      },
    },
  });
  const upstream = lb.balancer.pools().get('web')!.upstreams[0];
  for (let i = 0; i < 6 && !upstream.ejected; i++) await get(`${lb.url}/`);
  assert.equal(upstream.ejected, true);
  assert.match(lb.logs.join(''), /ejected false -> true \(3 consecutive failures, last: status 502; out for 400ms\)/);
  broken = false;
  for (let i = 0; i < 4; i++) assert.equal((await get(`${lb.url}/`)).body, 'good');
  await eventually(() => !upstream.ejected, { timeout: 3000, what: 'the ejection to end' });
  const bodies = new Set<string>();
  for (let i = 0; i < 4; i++) bodies.add((await get(`${lb.url}/`)).body);
  assert.deepEqual([...bodies].sort(), ['flaky', 'good']);
});

test('backup pool serves only while every primary upstream is down; drain finishes what it has', { timeout: 20_000 }, async (t) => {
  const primary = await startBackend(t, (req, res) => (req.url === '/health' ? res.end('ok') : setTimeout(() => res.end('primary'), 200)));
  const spare = await startBackend(t, (_req, res) => res.end('spare'));
  const lb = await startBalancer(t, {
    pools: {
      main: { upstreams: [primary.url], backup: 'spare', health_check: fastChecks },
      spare: { upstreams: [spare.url] },
    },
  });
  assert.equal((await get(`${lb.url}/x`)).body, 'primary');
  const upstream = lb.balancer.pools().get('main')!.upstreams[0];
  // Drain: the request in flight finishes; new ones find no primary and go to the backup.
  const inFlight = get(`${lb.url}/x`);
  await eventually(() => upstream.inFlight === 1);
  upstream.setDraining(true, 'test');
  assert.equal((await get(`${lb.url}/x`)).body, 'spare');
  assert.equal((await inFlight).body, 'primary');
  upstream.setDraining(false, 'test');
  assert.equal((await get(`${lb.url}/x`)).body, 'primary');
});

test("with no other upstream to try, the upstream's own 503 is passed on, not replaced", async (t) => {
  const only = await startBackend(t, (_req, res) => res.writeHead(503, { 'x-from': 'backend' }).end('backend says busy'));
  const lb = await startBalancer(t, { pools: { web: { upstreams: [only.url], outlier_detection: { enabled: false }, circuit_breaker: { enabled: false } } } });
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 503);
  assert.equal(res.body, 'backend says busy');
  assert.equal(res.headers['x-from'], 'backend');
  assert.equal(only.requests.length, 1);
});

test('a GET that failed on every primary upstream goes to the backup pool', async (t) => {
  const resets = await startBackend(t, (req) => req.socket.destroy());
  const spare = await startBackend(t, (_req, res) => res.end('spare'));
  const lb = await startBalancer(t, {
    pools: { main: { upstreams: [resets.url], backup: 'spare', outlier_detection: { enabled: false } }, spare: { upstreams: [spare.url] } },
  });
  const res = await get(`${lb.url}/`);
  assert.equal(res.status, 200);
  assert.equal(res.body, 'spare');
  assert.match(lb.logs.join(''), /retrying GET \/ after 127\.0\.0\.1:\d+ failed \(reset: upstream closed the connection/);
});
