/**
 * The control plane's promises under load: reloads and backend changes through the admin API
 * drop no request and no keep-alive connection; a removed backend finishes its requests; bad
 * admin writes change nothing; a Prometheus scrape taken under load passes `promtool check
 * metrics` and carries no client-controlled label value.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from 'undici';
import { startBackend, startBalancer, type TestBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { AdminClient, AdminError, createBalancer } from '../../src/index.ts';
import type { FulcrumConfigInput } from '../../src/index.ts';

const token = 'control-plane-test-token-0123456789';

/** A backend that answers its id, after `delay` ms. */
async function idBackend(t: Parameters<typeof startBackend>[0], id: string, delay = 0): Promise<TestBackend & { served: () => number }> {
  let served = 0;
  const b = await startBackend(t, (_req, res) => {
    const answer = (): void => {
      served++;
      res.end(id);
    };
    if (delay > 0) setTimeout(answer, delay);
    else answer();
  });
  return { ...b, served: () => served };
}

/**
 * `connections` keep-alive clients, each sending requests one after another until stopped.
 * Counts answers by body, failures, and every connect and disconnect the clients saw.
 */
function steadyLoad(url: string, connections: number) {
  const clients = Array.from({ length: connections }, () => new Client(url, { pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 }));
  const stats = { ok: 0, failed: [] as string[], connects: 0, disconnects: [] as string[], bodies: new Map<string, number>() };
  for (const c of clients) {
    c.on('connect', () => stats.connects++);
    c.on('disconnect', (_origin, _targets, err) => stats.disconnects.push(err?.message ?? 'closed'));
  }
  let running = true;
  const deadline = Date.now() + 60_000;
  const loops = clients.map(async (client) => {
    for (let i = 0; running && i < 100_000 && Date.now() < deadline; i++) {
      try {
        const res = await client.request({ path: '/', method: 'GET' });
        const body = await res.body.text();
        if (res.statusCode !== 200) stats.failed.push(`${res.statusCode} ${body.slice(0, 80)}`);
        else {
          stats.ok++;
          stats.bodies.set(body, (stats.bodies.get(body) ?? 0) + 1);
        }
      } catch (err) {
        stats.failed.push((err as Error).message);
      }
    }
  });
  return {
    stats,
    async stop() {
      running = false;
      await Promise.all(loops);
      const disconnectsBeforeClose = stats.disconnects.length;
      await Promise.all(clients.map((c) => c.close()));
      return disconnectsBeforeClose;
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('10 reloads during steady load: zero failed requests, zero dropped keep-alive connections', { timeout: 60_000 }, async (t) => {
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((id) => idBackend(t, id)));
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-reload-'));
  const file = path.join(dir, 'fulcrum.yaml');
  // Each version changes something real: upstreams, weights, policy, timeouts, listener settings.
  const versions = [
    `pools: {web: {upstreams: ["${a.url}", "${b.url}"]}}`,
    `pools: {web: {upstreams: ["${a.url}", "${b.url}", "${c.url}"]}}`,
    `pools: {web: {upstreams: [{url: "${a.url}", weight: 3}, "${b.url}", "${c.url}"], policy: weighted-round-robin}}`,
    `pools: {web: {upstreams: ["${b.url}", "${c.url}"], policy: least-connections, timeouts: {connect: 2s}}}`,
    `pools: {web: {upstreams: ["${a.url}", "${c.url}"], retry: {max_attempts: 2}}}`,
  ];
  const listener = (keepalive: string) => `listeners: [{host: 127.0.0.1, port: 0, keepalive_timeout: ${keepalive}}]\n`;
  writeFileSync(file, listener('30s') + versions[0]);
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, keepalive_timeout: '30s' }], pools: { web: { upstreams: [a.url, b.url] } }, admin: { host: '127.0.0.1', port: 0, token } }, { configFile: file });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });

  const load = steadyLoad(lb.url, 8);
  await eventually(() => load.stats.ok > 200, { timeout: 10_000, what: 'load running' });
  const changeLines: string[] = [];
  for (let i = 1; i <= 10; i++) {
    const version = versions[i % versions.length];
    // The port stays what the OS chose: a listener is matched by host and bound port.
    writeFileSync(file, listener(i % 2 === 0 ? '30s' : '40s').replace('port: 0', `port: ${lb.port}`) + version);
    // Three ways in: the admin API, the file path that SIGHUP and watch use, and the embedding API.
    const result = i % 3 === 0 ? await admin.reload() : i % 3 === 1 ? await lb.balancer.reloadFile('signal') : await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port, keepalive_timeout: '40s' }], pools: { web: { upstreams: [a.url, b.url, c.url] } } });
    changeLines.push(...result.changes);
    await sleep(150);
  }
  await sleep(300);
  const before = load.stats.ok;
  const disconnects = await load.stop();
  t.diagnostic(`${before} requests over 10 reloads; ${load.stats.failed.length} failed; ${load.stats.connects} connections opened for 8 clients; ${disconnects} dropped; answers by backend ${JSON.stringify(Object.fromEntries(load.stats.bodies))}`);
  assert.deepEqual(load.stats.failed, [], 'no request failed');
  assert.equal(disconnects, 0, `no keep-alive connection was closed under the clients: ${load.stats.disconnects.join(', ')}`);
  assert.equal(load.stats.connects, 8, 'each client kept its one connection');
  assert.ok(changeLines.some((l) => /pool web: \+1 upstream/.test(l)), `the reloads reported their changes: ${changeLines.join(' | ')}`);
  // The last reload (i = 10, through the file) is live: versions[0], with a and b.
  assert.deepEqual(lb.balancer.pools().get('web')!.upstreams.map((u) => u.id).sort(), [a, b].map((x) => new URL(x.url).host).sort());
  const scrape = await admin.metrics();
  assert.match(scrape, /lb_config_reloads_total\{result="success",source="admin"\} 3/);
  assert.match(scrape, /lb_config_reloads_total\{result="success",source="signal"\} 4/);
});

test('adding and removing backends through the API under load: zero failed requests; a removed backend finishes its requests', { timeout: 60_000 }, async (t) => {
  const a = await idBackend(t, 'a');
  const slow = await idBackend(t, 'slow', 400);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url], policy: 'round-robin' } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  const load = steadyLoad(lb.url, 6);
  await eventually(() => load.stats.ok > 50, { timeout: 10_000, what: 'load running' });

  const added = await admin.addBackend({ url: slow.url });
  assert.deepEqual(added.changes, [`pool web: +1 upstream ${new URL(slow.url).host}`]);
  assert.equal(added.backend.runtime_only, true);
  // Wait until the slow backend holds requests, then remove it while they are in flight.
  await eventually(() => lb.balancer.pools().get('web')!.upstreams.some((u) => u.id === new URL(slow.url).host && u.inFlight >= 2), { timeout: 5000, what: 'requests in flight at the slow backend' });
  const inFlightAtRemoval = lb.balancer.pools().get('web')!.upstreams.find((u) => u.id === new URL(slow.url).host)!.inFlight;
  const servedBefore = slow.served();
  const removed = await admin.removeBackend({ url: slow.url });
  assert.deepEqual(removed.changes, [`pool web: -1 upstream ${new URL(slow.url).host}`]);
  await sleep(800);
  const servedAfter = slow.served();
  // Add and remove a few more times while the load goes on.
  for (let i = 0; i < 3; i++) {
    await admin.addBackend({ url: slow.url, weight: 2 });
    await sleep(100);
    await admin.removeBackend({ url: slow.url });
  }
  await sleep(800);
  const finalServed = slow.served();
  await sleep(300);
  await load.stop();
  t.diagnostic(`${load.stats.ok} ok, ${load.stats.failed.length} failed; ${inFlightAtRemoval} in flight at the slow backend at removal, it answered ${servedAfter - servedBefore} after; answers ${JSON.stringify(Object.fromEntries(load.stats.bodies))}`);
  assert.deepEqual(load.stats.failed, []);
  assert.ok(servedAfter - servedBefore >= inFlightAtRemoval, 'the requests in flight at removal were answered by the removed backend');
  assert.equal(slow.served(), finalServed, 'no request reached it once it was removed');
  assert.ok((load.stats.bodies.get('slow') ?? 0) >= inFlightAtRemoval);
  assert.equal(lb.balancer.status().runtime_changes.length, 0, 'added then removed: nothing left that differs from the file');
});

test('an unauthenticated write, a wrong token, a bad JSON body: 401, 401, 400; the state is unchanged', async (t) => {
  const a = await idBackend(t, 'a');
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const url = lb.balancer.adminAddress()!.url;
  const before = (await (await fetch(`${url}/status`)).json()) as Record<string, unknown>;
  const newBackend = JSON.stringify({ url: 'http://127.0.0.1:1' });
  const cases: [string, RequestInit, number, RegExp][] = [
    ['no token', { method: 'POST', body: newBackend }, 401, /needs the admin token/],
    ['wrong token', { method: 'POST', body: newBackend, headers: { authorization: `Bearer ${token}x` } }, 401, /wrong admin token/],
    ['bad JSON', { method: 'POST', body: '{"url": "http://127.0.0.1:1"', headers: { authorization: `Bearer ${token}` } }, 400, /not valid JSON/],
  ];
  for (const [what, init, status, message] of cases) {
    const res = await fetch(`${url}/backends`, init);
    const body = (await res.json()) as { error: string };
    assert.equal(res.status, status, what);
    assert.match(body.error, message, what);
    if (status === 401) assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer/);
  }
  for (const method of ['DELETE', 'PATCH']) {
    assert.equal((await fetch(`${url}/backends`, { method, body: JSON.stringify({ url: a.url, weight: 5 }) })).status, 401, `${method} without a token`);
  }
  assert.equal((await fetch(`${url}/reload`, { method: 'POST' })).status, 401);
  const after = (await (await fetch(`${url}/status`)).json()) as typeof before;
  assert.deepEqual({ ...after, uptime_seconds: 0 }, { ...before, uptime_seconds: 0 });
  // The typed client reports the same.
  await assert.rejects(new AdminClient({ url }).addBackend({ url: 'http://127.0.0.1:1' }), (err: AdminError) => err.status === 401);
});

test('metrics: a scrape under load passes promtool, has the seeds\' names, and no client-controlled label value', { timeout: 60_000 }, async (t) => {
  const promtool = spawnSync('promtool', ['--version']);
  assert.equal(promtool.error, undefined, 'promtool is missing: apt-get install prometheus');
  const [a, b] = await Promise.all(['a', 'b'].map((id) => idBackend(t, id)));
  const config: FulcrumConfigInput = {
    listeners: [{ host: '127.0.0.1', port: 0, metrics_path: '/_metrics' }],
    pools: { web: { upstreams: [a.url, b.url] } },
    routes: [{ name: 'limited', path_prefix: '/limited', pool: 'web', rate_limits: [{ rate: 1, burst: 1 }] }, { name: 'all', pool: 'web' }],
    admin: { host: '127.0.0.1', port: 0, token },
  };
  const lb = await startBalancer(t, config);
  const adminUrl = lb.balancer.adminAddress()!.url;
  const load = steadyLoad(lb.url, 4);
  // Client-chosen values that must never become label values.
  const marker = 'zz-client-chosen-zz';
  const client = new Client(lb.url);
  t.after(() => client.close());
  for (let i = 0; i < 5; i++) {
    for (const method of ['PROPFIND', 'MKCOL']) (await client.request({ path: `/${marker}`, method })).body.resume();
    (await client.request({ path: `/${marker}?${marker}=1`, method: 'GET', headers: { host: `${marker}.example`, 'x-forwarded-for': '203.0.113.77', 'user-agent': marker } })).body.resume();
    (await client.request({ path: '/limited/x', method: 'GET' })).body.resume();
  }
  await eventually(() => load.stats.ok > 200, { timeout: 10_000, what: 'load running' });
  const scrape = await (await fetch(`${adminUrl}/metrics`)).text();
  const publicScrape = await (await fetch(`${lb.url}/_metrics`)).text();
  await load.stop();
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-metrics-'));
  writeFileSync(path.join(dir, 'scrape.txt'), scrape);
  const check = spawnSync('promtool', ['check', 'metrics'], { input: scrape, encoding: 'utf8' });
  assert.equal(check.status, 0, `promtool check metrics:\n${check.stdout}${check.stderr}`);
  for (const name of ['lb_requests_total', 'lb_request_duration_seconds_bucket', 'lb_backend_up', 'lb_active_connections', 'lb_rate_limited_requests_total', 'lb_config_reloads_total', 'lb_circuit_breaker_state', 'lb_backend_ejected', 'lb_rate_limit_store_fallbacks_total', 'process_cpu_seconds_total', 'nodejs_heap_size_used_bytes']) {
    assert.match(scrape, new RegExp(`^${name}[{ ]`, 'm'), `${name} is exposed`);
  }
  const host = (u: string): string => new URL(u).host;
  assert.match(scrape, new RegExp(`lb_requests_total\\{pool="web",backend="${host(a.url)}",method="GET",status="200"\\} \\d+`));
  const other = [...scrape.matchAll(/^lb_requests_total\{pool="web",backend="[^"]+",method="OTHER",status="200"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
  assert.equal(other, 10, 'unknown methods fold to OTHER');
  assert.match(scrape, /lb_rate_limited_requests_total\{route="limited"\} [1-9]/);
  assert.match(scrape, new RegExp(`lb_backend_up\\{pool="web",backend="${host(b.url)}"\\} 1`));
  for (const value of [marker, '203.0.113.77', 'PROPFIND', 'MKCOL', 'example']) assert.ok(!scrape.includes(value), `${value} must not be a label value`);
  assert.match(publicScrape, /^lb_requests_total/m, 'the public metrics path serves the same registry');
  // Exact: every finished request is counted once, in lb_requests_total and in the histogram.
  const final = await (await fetch(`${adminUrl}/metrics`)).text();
  const sum = (re: RegExp): number => [...final.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
  const ended = lb.ended.filter((ctx) => ctx.req.url !== '/_metrics').length;
  assert.equal(sum(/^lb_requests_total\{[^}]*\} (\d+)$/gm), ended, 'lb_requests_total counts every request once');
  assert.equal(sum(/^lb_request_duration_seconds_count\{[^}]*\} (\d+)$/gm), ended, 'the histogram counts every request once');
  for (const u of [a, b]) {
    const id = host(u.url);
    const count = sum(new RegExp(`^lb_request_duration_seconds_count\\{pool="web",backend="${id}"\\} (\\d+)$`, 'gm'));
    const inf = sum(new RegExp(`^lb_request_duration_seconds_bucket\\{le="\\+Inf",pool="web",backend="${id}"\\} (\\d+)$`, 'gm'));
    assert.ok(count > 0 && count === inf, `${id}: +Inf bucket ${inf} equals count ${count}`);
  }
  // The scrape itself was not proxied.
  assert.ok(!lb.ended.some((ctx) => ctx.req.url === '/_metrics'));
  execFileSync('promtool', ['check', 'metrics'], { input: publicScrape });
});

test('reload: upstream state of unchanged upstreams carries over (ejection, breaker, drain, counters, in-flight)', { timeout: 30_000 }, async (t) => {
  const good = await idBackend(t, 'good');
  const slow = await idBackend(t, 'slow', 300);
  const bad = await startBackend(t, (_req, res) => {
    res.statusCode = 502;
    res.end('bad');
  });
  const pool = (extra: Record<string, unknown>) => ({ upstreams: [good.url, bad.url, slow.url], retry: { max_attempts: 1 }, outlier_detection: { consecutive_failures: 2, base_ejection_time: '10s', max_ejection_percent: 100 }, ...extra });
  const lb = await startBalancer(t, { pools: { web: pool({}) } });
  const web = () => lb.balancer.pools().get('web')!;
  const byId = (url: string) => web().upstreams.find((u) => u.id === new URL(url).host)!;
  for (let i = 0; i < 9 && !byId(bad.url).ejected; i++) await fetch(lb.url).then((r) => r.text());
  assert.equal(byId(bad.url).ejected, true, 'ejected before the reload');
  byId(good.url).setDraining(true, 'test');
  const served = byId(good.url).served;
  const slowRequest = fetch(lb.url + '/held').then((r) => r.text()).catch(() => 'failed');
  // Round-robin may put it anywhere but on the ejected or drained one: wait for it to be in flight at slow.
  await eventually(() => byId(slow.url).inFlight === 1, { timeout: 3000, what: 'a request in flight at the slow backend' });
  const slowObject = byId(slow.url);
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: pool({ timeouts: { connect: '3s' } }) } });
  assert.notEqual(web().settings.timeouts.connect, 5000, 'the pool was rebuilt');
  assert.equal(byId(bad.url).ejected, true, 'still ejected');
  assert.equal(byId(good.url).draining, true, 'still draining');
  assert.equal(byId(good.url).served, served, 'counters kept');
  assert.equal(byId(slow.url), slowObject, 'the same object, so the request in flight still counts');
  assert.equal(byId(slow.url).inFlight, 1);
  assert.equal(await slowRequest, 'slow');
  assert.equal(byId(slow.url).inFlight, 0, 'and it is released on the new pool\'s upstream');
});

test('rate-limit buckets are kept when a reload or an API write leaves routes and rate_limit alone', async (t) => {
  const [a, b] = await Promise.all(['a', 'b'].map((id) => idBackend(t, id)));
  const routes = [{ pool: 'web', rate_limits: [{ rate: 1, per: '1m', burst: 3 }] }];
  const lb = await startBalancer(t, { pools: { web: { upstreams: [a.url] } }, routes, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  const statuses = async (n: number): Promise<number[]> => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(await fetch(lb.url).then(async (r) => (await r.arrayBuffer(), r.status)));
    return out;
  };
  assert.deepEqual(await statuses(2), [200, 200]);
  await admin.addBackend({ url: b.url });
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { upstreams: [a.url, b.url], timeouts: { connect: '2s' } } }, routes, admin: { host: '127.0.0.1', port: 0, token } });
  assert.deepEqual(await statuses(2), [200, 429], 'the third token of the burst was the last, across the API write and the reload');
  // A change to the limits themselves starts the buckets over.
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { upstreams: [a.url, b.url] } }, routes: [{ pool: 'web', rate_limits: [{ rate: 1, per: '1m', burst: 2 }] }], admin: { host: '127.0.0.1', port: 0, token } });
  assert.deepEqual(await statuses(3), [200, 200, 429]);
});

test('reload: log level and the access log change at once', async (t) => {
  const a = await idBackend(t, 'a');
  const pools = { web: { upstreams: [a.url] } };
  const lb = await startBalancer(t, { pools, log: { level: 'info', access_log: true } });
  const accessLines = (): number => lb.logs.filter((l) => l.includes('"log":"access"')).length;
  await fetch(lb.url).then((r) => r.text());
  await eventually(() => accessLines() === 1, { what: 'one access line' });
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools, log: { level: 'info', access_log: false } });
  await fetch(lb.url).then((r) => r.text());
  await sleep(50);
  assert.equal(accessLines(), 1, 'access log off');
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools, log: { level: 'info', access_log: true } });
  await fetch(lb.url).then((r) => r.text());
  await eventually(() => accessLines() === 2, { what: 'access log back on' });
  // The level of the balancer's own logger (an embedder's logger is left alone).
  const own = createBalancer({ listeners: [{ host: '127.0.0.1', port: 0 }], pools, log: { level: 'silent' } });
  await own.reload({ listeners: [{ host: '127.0.0.1', port: 0 }], pools, log: { level: 'fatal' } });
  assert.equal(own.logger.level, 'fatal');
  await own.close(0);
});

test('reloads and API writes do not multiply health-check probes of kept pools', { timeout: 30_000 }, async (t) => {
  let probes = 0;
  const a = await startBackend(t, (req, res) => {
    if (req.url === '/health') probes++;
    res.end('ok');
  });
  const b = await idBackend(t, 'b');
  const pools = { web: { upstreams: [a.url], health_check: { path: '/health', interval: '100ms', jitter: 0 } }, other: { upstreams: [b.url] } };
  const routes = [{ path_prefix: '/other', pool: 'other' }, { pool: 'web' }];
  const lb = await startBalancer(t, { pools, routes, admin: { host: '127.0.0.1', port: 0, token } });
  const rate = async (): Promise<number> => {
    const start = probes;
    await sleep(1000);
    return probes - start;
  };
  const before = await rate();
  const admin = new AdminClient({ url: lb.balancer.adminAddress()!.url, token });
  for (let i = 0; i < 5; i++) {
    await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools, routes, admin: { host: '127.0.0.1', port: 0, token } });
    await admin.updateBackend({ url: b.url, weight: i + 2 }); // rebuilds pool "other", keeps "web"
  }
  const after = await rate();
  t.diagnostic(`probes per second: ${before} before, ${after} after 10 reloads`);
  assert.ok(before >= 5 && after <= before * 1.5 + 1, `${before} probes/s before, ${after} after`);
  // The invalid input of an embedder's reload is refused, logged and counted like a bad file.
  await assert.rejects(lb.balancer.reload({ pools: { web: { upstreams: [] } } }));
  assert.ok(lb.logs.some((l) => l.includes('reload refused (api)')));
  assert.match(await admin.metrics(), /lb_config_reloads_total\{result="failure",source="api"\} 1/);
});
