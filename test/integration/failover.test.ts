/**
 * One failing or flaky backend costs at most one request (issue 9, point 6): a refused
 * connection is retried whatever the retry budget and takes its upstream out at once; a stale
 * keep-alive socket is not held against its upstream; an upstream's 4xx is never a failure;
 * a pool with too few healthy upstreams balances over all of them (panic mode).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { closedPort, get, startBackend, startBalancer, startRawBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';

const fastChecks = { interval: '100ms', fast_interval: '50ms', timeout: '100ms', rise: 1, fall: 1, jitter: 0 };

test('one of three upstreams refuses connections: 60 concurrent GETs and 60 POSTs all get 200, 20 times over', { timeout: 60_000 }, async (t) => {
  const seen = new Map<string, number>();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const id = String(req.headers['x-test-id']);
    seen.set(id, (seen.get(id) ?? 0) + 1);
    // A little work per request, so retries stay in flight together as they do in production.
    req.resume().on('end', () => setTimeout(() => res.end("ok"), 15));
  };
  const a = await startBackend(t, handler);
  const b = await startBackend(t, handler);
  const dead = await closedPort();
  const failuresPerRun: number[] = [];
  const causes: string[] = [];
  for (let run = 0; run < 20; run++) {
    let failed = 0;
    for (const method of ['GET', 'POST']) {
      // A fresh balancer each time: the refusing upstream starts in rotation, first in line.
      const lb = await startBalancer(t, { routes: [{ path_prefix: '/app', pool: 'web' }], pools: { web: { upstreams: [`http://127.0.0.1:${dead}`, a.url, b.url] } } });
      // 60 client connections opened first (answered 404 by Fulcrum itself), so the 60 requests arrive at once.
      const agent = new http.Agent({ keepAlive: true, maxSockets: 60 });
      await Promise.all(Array.from({ length: 60 }, () => get(`${lb.url}/warm`, { agent })));
      const results = await Promise.all(
        Array.from({ length: 60 }, (_, i) =>
          get(`${lb.url}/app`, { agent, method, headers: { 'x-test-id': `${run}-${method}-${i}` }, body: method === 'POST' ? `body ${i}` : undefined }),
        ),
      );
      agent.destroy();
      await lb.balancer.close(1000);
      for (const r of results) {
        if (r.status === 200) continue;
        failed++;
        if (causes.length < 3) causes.push(`${r.status} ${r.body.split('\n')[0]}`);
      }
    }
    failuresPerRun.push(failed);
  }
  t.diagnostic(`non-200 per run: ${failuresPerRun.join(' ')}`);
  assert.deepEqual(failuresPerRun, Array(20).fill(0), causes.join('; '));
  assert.equal(seen.size, 20 * 2 * 60, 'every request reached a backend');
  assert.deepEqual([...seen].filter(([, n]) => n !== 1), [], 'and only once');
});

test('a refused connection takes its upstream out at once; a connect probe brings it back when it listens again', { timeout: 20_000 }, async (t) => {
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const port = await closedPort();
  const lb = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams: [`http://127.0.0.1:${port}`, good.url] } } });
  const [down] = lb.balancer.pools().get('web')!.upstreams;
  assert.equal((await get(`${lb.url}/`)).status, 200, 'the refused request went to the other upstream');
  assert.equal(down.ejected, true, 'out after one refusal');
  assert.match(lb.logs.join(''), /ejected false -> true \(connect failed \(ECONNREFUSED\): nothing took the connection; out until a connect probe or a health check passes\)/);
  const before = down.failures;
  for (let i = 0; i < 10; i++) assert.equal((await get(`${lb.url}/`)).body, 'good');
  assert.equal(down.failures, before, 'no request tried it again while it was out');
  // It comes back once something listens on its port again.
  const back = http.createServer((_req, res) => res.end('back'));
  await new Promise<void>((resolve) => back.listen(port, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (back.closeAllConnections(), back.close(() => resolve()))));
  await eventually(() => !down.ejected, { timeout: 8000, what: 'a connect probe to bring it back' });
  const bodies = new Set<string>();
  for (let i = 0; i < 4; i++) bodies.add((await get(`${lb.url}/`)).body);
  assert.deepEqual([...bodies].sort(), ['back', 'good']);
});

test('a refused upstream with active checks returns as soon as its port answers (a passing check or a probe)', { timeout: 20_000 }, async (t) => {
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const port = await closedPort();
  const lb = await startBalancer(t, { pools: { web: { policy: 'round-robin', upstreams: [`http://127.0.0.1:${port}`, good.url], health_check: { ...fastChecks, fall: 5 } } } });
  const [down] = lb.balancer.pools().get('web')!.upstreams;
  await get(`${lb.url}/`);
  await get(`${lb.url}/`);
  assert.equal(down.ejected, true);
  const back = http.createServer((_req, res) => res.end('back'));
  await new Promise<void>((resolve) => back.listen(port, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => (back.closeAllConnections(), back.close(() => resolve()))));
  await eventually(() => !down.ejected, { timeout: 5000, what: 'the upstream to return' });
});

/**
 * A backend whose idle limit is 900 ms: a request on a socket idle that long meets the close, as
 * in the race (deterministic: the real race is a matter of a millisecond). `how`: a reset (RST),
 * or a plain close (FIN) without an answer.
 */
async function startStaleClosingBackend(t: Parameters<typeof startRawBackend>[0], how: 'reset' | 'close' = 'reset') {
  let resets = 0;
  let lastAnswer = 0;
  const requests: string[] = [];
  const raw = await startRawBackend(t, (socket) => {
    let last = 0;
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      while (buffered.includes('\r\n\r\n')) {
        const head = buffered.slice(0, buffered.indexOf('\r\n\r\n'));
        buffered = buffered.slice(head.length + 4);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        buffered = buffered.slice(length);
        if (last > 0 && Date.now() - last >= 900) {
          resets++;
          if (how === 'reset') socket.resetAndDestroy();
          else socket.destroy();
          return;
        }
        requests.push(head.split('\r\n')[0]);
        last = Date.now();
        lastAnswer = last;
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  /** Resolves once every socket the backend answered on is past its idle limit (the next request there meets the close). */
  const stale = (): Promise<boolean> => eventually(() => Date.now() - lastAnswer >= 900, { timeout: 5000, interval: 20, what: 'the backend to count its sockets idle' });
  return { ...raw, resets: () => resets, requests, stale };
}

for (const transport of ['http1', 'undici', 'node-http'] as const) test(`waves of GETs every ~1 s on sockets the backend closes after 1 s: no failure, its only upstream never ejected (${transport})`, { timeout: 30_000 }, async (t) => {
  const backend = await startStaleClosingBackend(t);
  const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
  const [upstream] = lb.balancer.pools().get('web')!.upstreams;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
  t.after(() => agent.destroy());
  const statuses = new Map<number, number>();
  for (let wave = 0; wave < 5; wave++) {
    if (wave > 0) await backend.stale();
    const results = await Promise.all(Array.from({ length: 20 }, () => get(`${lb.url}/`, { agent })));
    for (const r of results) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
  }
  t.diagnostic(`statuses ${JSON.stringify([...statuses])}, ${backend.resets()} stale sockets reset`);
  assert.ok(backend.resets() >= 20, `the race happened (${backend.resets()} resets)`);
  assert.deepEqual([...statuses], [[200, 100]]);
  assert.equal(upstream.ejected, false);
  assert.equal(upstream.circuit, 'closed');
  assert.equal(upstream.failures, 0, 'a stale socket is not an upstream failure');
  const metrics = (await lb.balancer.metrics.scrape()).body;
  assert.doesNotMatch(metrics, /lb_backend_attempt_failures_total\{/, 'no attempt failure was counted');
});

test('the same with a plain close (FIN) instead of a reset: no failure, no ejection', { timeout: 30_000 }, async (t) => {
  const backend = await startStaleClosingBackend(t, 'close');
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } } });
  const [upstream] = lb.balancer.pools().get('web')!.upstreams;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 10 });
  t.after(() => agent.destroy());
  const bad: number[] = [];
  for (let wave = 0; wave < 4; wave++) {
    if (wave > 0) await backend.stale();
    const results = await Promise.all(Array.from({ length: 10 }, () => get(`${lb.url}/`, { agent })));
    for (const r of results) if (r.status !== 200) bad.push(r.status);
  }
  assert.ok(backend.resets() >= 10, `the race happened (${backend.resets()} closes)`);
  assert.deepEqual(bad, []);
  assert.equal(upstream.ejected, false);
  assert.equal(upstream.failures, 0);
});

test('a POST on a reused socket reset before any response byte: not sent again, unless it carries Idempotency-Key', { timeout: 30_000 }, async (t) => {
  const backend = await startStaleClosingBackend(t);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } } });
  const [upstream] = lb.balancer.pools().get('web')!.upstreams;
  assert.equal((await get(`${lb.url}/`)).status, 200);
  await backend.stale();
  const plain = await get(`${lb.url}/`, { method: 'POST', body: 'x' });
  assert.equal(plain.status, 502, 'a plain POST is not sent twice');
  assert.equal(backend.requests.filter((l) => l.startsWith('POST')).length, 0);
  assert.equal(upstream.failures, 1, 'the 502 it caused shows in the counters');
  assert.equal((await get(`${lb.url}/`)).status, 200);
  await backend.stale();
  const keyed = await get(`${lb.url}/`, { method: 'POST', body: 'x', headers: { 'idempotency-key': 'k-1' } });
  assert.equal(keyed.status, 200, 'a POST with Idempotency-Key goes again on a fresh connection');
  assert.equal(backend.requests.filter((l) => l.startsWith('POST')).length, 1);
  assert.equal(upstream.failures, 1, 'the reset that was retried is no failure');
  const metrics = (await lb.balancer.metrics.scrape()).body;
  assert.match(metrics, /lb_backend_attempt_failures_total\{[^}]*code="FUL_UPSTREAM_RESET"\} 1\n/);
  assert.match(metrics, /lb_retries_total\{[^}]*\} 1\n/);
});

test("an upstream's own 4xx is never a failure: no ejection, breaker closed, no failure counted", { timeout: 20_000 }, async (t) => {
  const statuses = [400, 401, 403, 404, 405, 408, 409, 413, 429, 499];
  let n = 0;
  const picky = await startBackend(t, (req, res) => req.resume().on('end', () => res.writeHead(statuses[n++ % statuses.length]).end()));
  const good = await startBackend(t, (_req, res) => res.end('good'));
  const lb = await startBalancer(t, {
    pools: { web: { policy: 'round-robin', upstreams: [picky.url, good.url], outlier_detection: { consecutive_failures: 1 }, circuit_breaker: { min_requests: 1, error_rate: 0.01 } } },
  });
  const [upstream] = lb.balancer.pools().get('web')!.upstreams;
  const seen: number[] = [];
  for (let i = 0; i < 40; i++) seen.push((await get(`${lb.url}/`)).status);
  assert.equal(seen.filter((s) => s >= 400).length, 20, 'every 4xx was passed on, never retried');
  assert.equal(upstream.ejected, false);
  assert.equal(upstream.circuit, 'closed');
  assert.equal(upstream.failures, 0);
  const metrics = (await lb.balancer.metrics.scrape()).body;
  assert.doesNotMatch(metrics, /lb_backend_attempt_failures_total\{/);
  assert.doesNotMatch(metrics, /lb_retries_total\{[^}]*\} [1-9]/);
});

test('an upstream that answers 413 early and closes before reading a large body is not ejected for it', { timeout: 20_000 }, async (t) => {
  for (const transport of ['http1', 'undici', 'node-http'] as const) {
    // Node closes with the body unread: the kernel resets the connection and the 413 may be lost on the way back.
    const early = await startBackend(t, (_req, res) => res.writeHead(413, { connection: 'close' }).end('too big'));
    const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [early.url], outlier_detection: { consecutive_failures: 2 }, circuit_breaker: { min_requests: 2, error_rate: 0.5 } } } });
    const [upstream] = lb.balancer.pools().get('web')!.upstreams;
    const statuses: (number | string)[] = [];
    for (let i = 0; i < 6; i++) statuses.push(await get(`${lb.url}/`, { method: 'POST', body: Buffer.alloc(4 << 20) }).then((r) => r.status, (e: Error) => e.message));
    t.diagnostic(`${transport}: ${statuses.join(' ')}`);
    assert.equal(upstream.ejected, false, `${transport}: not ejected`);
    assert.equal(upstream.circuit, 'closed', `${transport}: breaker closed`);
    assert.equal((await get(`${lb.url}/`)).status, 413, `${transport}: still in rotation`);
  }
});

test('no response headers in time while the client is still sending its body: not held against the upstream', { timeout: 10_000 }, async (t) => {
  const waits = await startBackend(t, (req, res) => req.resume().on('end', () => res.end('done')));
  // node-http's header timer runs while the upload stalls (undici's waits for the body to be sent).
  const lb = await startBalancer(t, { pools: { web: { transport: 'node-http', upstreams: [waits.url], timeouts: { response_headers: '200ms' }, outlier_detection: { consecutive_failures: 1 } } } });
  const [upstream] = lb.balancer.pools().get('web')!.upstreams;
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request(`${lb.url}/`, { method: 'POST', agent: false, headers: { 'content-length': '10' } }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    });
    req.on('error', reject);
    req.write('half ');
    // The other half never comes: the upstream waits for it, and the header timeout fires.
  });
  assert.equal(status, 504);
  assert.equal(upstream.ejected, false);
  assert.equal((await get(`${lb.url}/`, { method: 'POST', body: 'whole' })).body, 'done');
});
