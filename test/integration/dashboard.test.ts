/**
 * The live dashboard in a real browser (Debian's Chromium driven by playwright-core): it loads,
 * follows live traffic, counts an open WebSocket tunnel, drains and enables backends through
 * the admin API (and the balancer agrees), and refuses a write with a wrong token; with an
 * https listener (a test CA made here) it lists the certificates with their days left, flags
 * those near or past expiry, and follows a certificate reload. `DASHBOARD_SCREENSHOT=1` also writes
 * docs/dashboard.png (1280x800, under load).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { chromium, type Browser, type Page } from 'playwright-core';
import { WebSocketServer } from 'ws';
import { writeFileSync } from 'node:fs';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { makeCertificate } from '../../src/tls/make-certificate.ts';
import { connect, startEcho } from '../helpers/tcp.ts';

const chromiumPath = '/usr/bin/chromium';
const token = 'dashboard-test-token-7f3a9c2e51';
const screenshot = process.env.DASHBOARD_SCREENSHOT === '1';
const screenshotFile = path.join(import.meta.dirname, '..', '..', 'docs', 'dashboard.png');

/** Requests in the background to the balancer (127.0.0.1 only), bounded in count and time. */
/** Launches Debian's Chromium headless; closed after the test. */
async function launchBrowser(t: TestContext): Promise<Browser> {
  assert.ok(existsSync(chromiumPath), `${chromiumPath} is missing: this test drives a real browser; install it with "apt-get install chromium"`);
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.after(() => browser.close());
  return browser;
}

function startLoad(url: string, { workers = 6, pauseMs = 4, maxRequests = 60_000 } = {}) {
  const agent = new Agent({ connections: workers, keepAliveTimeout: 2000 });
  let stopped = false;
  let sent = 0;
  const worker = async (n: number): Promise<void> => {
    while (!stopped && sent < maxRequests) {
      sent++;
      // One request in ten goes to the rate-limited route, so the rate-limited numbers move too.
      const target = sent % 10 === n % 10 ? '/limited' : `/load/${sent}`;
      try {
        const res = await request(`${url}${target}`, { dispatcher: agent });
        await res.body.dump();
      } catch {
        // The balancer closing under the last requests: ignored.
      }
      await sleep(pauseMs);
    }
  };
  const done = Promise.all(Array.from({ length: workers }, (_, n) => worker(n)));
  return {
    get sent() {
      return sent;
    },
    async stop(): Promise<void> {
      stopped = true;
      await done;
      await agent.close();
    },
  };
}

const number = (text: string | null): number => {
  const cleaned = (text ?? '').replace(/,/g, '').trim();
  const value = Number.parseFloat(cleaned);
  return /k$/.test(cleaned) ? value * 1000 : value;
};

const row = (page: Page, id: string) => page.locator(`[data-testid="backend-row"][data-backend="${id}"]`);
const cellText = (page: Page, id: string, cell: string) => row(page, id).locator(`[data-testid="${cell}"]`).textContent();

test('the dashboard follows live traffic and open tunnels, and drains and enables backends', { timeout: 60_000 }, async (t) => {
  // Three backends with different latencies; the third answers 500 now and then.
  const delays = [2, 5, 0];
  const backends = await Promise.all(
    delays.map((delay, i) =>
      startBackend(t, (_req, res) => {
        const ms = delay || 1 + Math.random() * 12;
        setTimeout(() => {
          if (i === 2 && Math.random() < 0.02) res.statusCode = 500;
          res.end(`backend ${i}`);
        }, ms);
      }),
    ),
  );
  // Each backend also echoes WebSocket messages, saying which backend it is.
  backends.forEach((backend, i) => {
    const sockets = new WebSocketServer({ server: backend.server });
    sockets.on('connection', (ws) => ws.on('message', (data) => ws.send(`backend ${i}: ${String(data)}`)));
    t.after(() => {
      for (const ws of sockets.clients) ws.terminate();
      sockets.close();
    });
  });
  const lb = await startBalancer(t, {
    pools: { web: { upstreams: backends.map((b) => b.url) } },
    routes: [
      { path_prefix: '/limited', pool: 'web', rate_limits: [{ rate: 20, per: '1s', burst: 20, key: ['route'] }] },
      { pool: 'web' },
    ],
    admin: { host: '127.0.0.1', port: 0, token },
  });
  const admin = lb.balancer.adminAddress()!.url;
  const ids = backends.map((b) => `127.0.0.1:${b.port}`);
  const upstream = (id: string) => lb.balancer.pools().get('web')!.upstreams.find((u) => u.id === id)!;
  const statusOf = async (id: string) => {
    const res = await fetch(`${admin}/status`);
    const body = (await res.json()) as { backends: { id: string; draining: boolean; enabled: boolean }[] };
    return body.backends.find((b) => b.id === id)!;
  };

  const load = startLoad(lb.url);
  t.after(() => load.stop());

  const browser = await launchBrowser(t);
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });

  // --- loads: title, header, one row per backend, token out of the address bar
  await page.goto(`${admin}/dashboard/#token=${token}`);
  assert.equal(await page.title(), 'Fulcrum');
  assert.equal(await page.getByTestId('title').textContent(), 'Fulcrum');
  assert.ok(!page.url().includes('token'), `the token stays in the address bar: ${page.url()}`);
  await page.locator('[data-testid="connection"][data-state="live"]').waitFor({ timeout: 5000 });
  await page.locator('[data-testid="backend-row"]').nth(2).waitFor({ timeout: 5000 });
  assert.equal(await page.locator('[data-testid="backend-row"]').count(), 3);
  for (const id of ids) assert.equal(await cellText(page, id, 'state'), 'up');
  await eventually(async () => /^v\d/.test((await page.getByTestId('version').textContent()) ?? ''), { what: 'the version in the header' });
  assert.equal(await page.locator('.uplot').count(), 3, 'three uPlot charts');
  // No https listener: no certificates panel (the header above came from the same /status).
  assert.equal(await page.getByTestId('certificates').isHidden(), true, 'the certificates panel is hidden without certificates');

  // --- under load: totals and a backend's request count go up
  await eventually(async () => number(await page.getByTestId('rps-total').textContent()) > 10, { timeout: 5000, what: 'req/s above 10 on the page' });
  const [a, b, c] = ids;
  const before = number(await cellText(page, a, 'requests'));
  await eventually(async () => number(await cellText(page, a, 'requests')) > before, { timeout: 4000, what: `the request count of ${a} to grow on the page` });
  await eventually(async () => number(await page.getByTestId('rate-limited-total').textContent()) > 0, { timeout: 4000, what: 'rate-limited requests counted on the page' });

  // --- A WebSocket tunnel: counted in the totals and on its backend's row while open, then back to 0
  assert.equal(await page.getByTestId('tunnels-open').textContent(), '0');
  const ws = new WebSocket(`${lb.url.replace(/^http/, 'ws')}/socket`);
  t.after(() => ws.close());
  const echoed = new Promise<string>((resolve, reject) => {
    ws.onmessage = (event) => resolve(String(event.data));
    ws.onerror = () => reject(new Error('the WebSocket through the balancer failed'));
  });
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onclose = () => reject(new Error('the WebSocket closed before it opened'));
  });
  ws.send('which');
  const answer = await echoed;
  const held = ids[Number(/^backend (\d): which$/.exec(answer)?.[1] ?? NaN)];
  assert.ok(held !== undefined, `an echo from a backend: ${answer}`);
  await eventually(async () => (await page.getByTestId('tunnels-open').textContent()) === '1', { timeout: 4000, what: 'one open tunnel in the totals' });
  await eventually(async () => (await cellText(page, held, 'tunnels')) === '1', { timeout: 4000, what: `one open tunnel on the row of ${held}` });
  for (const id of ids) if (id !== held) assert.equal(await cellText(page, id, 'tunnels'), '0', `no tunnel on ${id}`);
  const closed = new Promise<void>((resolve) => (ws.onclose = () => resolve()));
  ws.close();
  await closed;
  await eventually(async () => (await page.getByTestId('tunnels-open').textContent()) === '0', { timeout: 4000, what: 'the tunnel count back to 0 in the totals' });
  await eventually(async () => (await cellText(page, held, 'tunnels')) === '0', { timeout: 4000, what: `the tunnel count of ${held} back to 0` });

  // --- Drain: the page, the balancer and the traffic agree
  await row(page, a).getByTestId('drain').click();
  await eventually(async () => (await cellText(page, a, 'state')) === 'draining', { timeout: 3000, what: `${a} shown as draining` });
  assert.equal(upstream(a).draining, true);
  assert.equal((await statusOf(a)).draining, true);
  assert.equal(await row(page, a).getByTestId('enable').isVisible(), true, 'Enable offered for a drained backend');
  assert.equal(await row(page, a).getByTestId('drain').isVisible(), false);
  await eventually(async () => ((await page.getByTestId('runtime-list').textContent()) ?? '').includes(a), { timeout: 3000, what: 'the drain listed as a runtime change' });
  await sleep(300); // requests already sent to it finish
  const reachedA = backends[0].requests.length;
  const reachedB = backends[1].requests.length;
  await sleep(1200);
  assert.equal(backends[0].requests.length, reachedA, 'a drained backend gets no new requests');
  assert.ok(backends[1].requests.length > reachedB + 20, 'the others carry the traffic');
  await eventually(async () => number(await cellText(page, a, 'rps')) === 0, { timeout: 3000, what: `req/s of ${a} at 0 on the page` });

  // --- Enable: back in rotation
  await row(page, a).getByTestId('enable').click();
  await eventually(async () => (await cellText(page, a, 'state')) === 'up', { timeout: 3000, what: `${a} shown as up again` });
  assert.equal(upstream(a).draining, false);
  assert.equal((await statusOf(a)).draining, false);
  await eventually(() => backends[0].requests.length > reachedA + 10, { timeout: 3000, what: `requests reaching ${a} again` });
  assert.equal(await page.getByTestId('action-error').isVisible(), false);

  // --- A wrong token: the write is refused, shown, and nothing changes; the form then takes the right one
  const other = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  t.after(() => other.close());
  const wrong = await other.newPage();
  await wrong.goto(`${admin}/dashboard/#token=not-the-right-token-at-all-0000`);
  await row(wrong, b).waitFor({ timeout: 5000 });
  await row(wrong, b).getByTestId('drain').click();
  const error = wrong.getByTestId('action-error');
  await error.waitFor({ state: 'visible', timeout: 3000 });
  assert.match((await error.textContent()) ?? '', /wrong admin token/);
  assert.equal(upstream(b).draining, false);
  assert.equal((await statusOf(b)).draining, false);
  assert.equal(await cellText(wrong, b, 'state'), 'up');
  assert.equal(await wrong.getByTestId('token-form').isVisible(), true, 'the token form is offered after a 401');
  await wrong.getByTestId('token-input').fill(token);
  await wrong.getByTestId('token-save').click();
  assert.equal(await wrong.getByTestId('token-form').isVisible(), false);
  await row(wrong, b).getByTestId('drain').click();
  await eventually(async () => (await cellText(wrong, b, 'state')) === 'draining', { timeout: 3000, what: `${b} drained with the token from the form` });
  assert.equal(upstream(b).draining, true);
  await row(wrong, b).getByTestId('enable').click();
  await eventually(async () => (await cellText(wrong, b, 'state')) === 'up', { timeout: 3000, what: `${b} enabled again` });
  assert.equal(upstream(b).draining, false);

  // --- Disable, seen from the first page too (the event stream carries it)
  await row(page, c).getByTestId('disable').click();
  await eventually(async () => (await cellText(page, c, 'state')) === 'disabled', { timeout: 3000, what: `${c} shown as disabled` });
  assert.equal(upstream(c).enabled, false);
  assert.equal(await row(page, c).getByTestId('disable').isDisabled(), true);
  await eventually(async () => (await cellText(wrong, c, 'state')) === 'disabled', { timeout: 3000, what: `the other page showing ${c} disabled` });

  if (screenshot) {
    // Enough history for the charts to say something, with c out of rotation for the last part.
    await eventually(async () => ((await page.getByTestId('runtime-list').textContent()) ?? '').includes(c), { what: 'the disable listed' });
    await eventually(async () => ((await (await fetch(`${admin}/live`)).json()) as unknown[]).length >= 24, { timeout: 30_000, interval: 500, what: '24 seconds of history' });
    await page.mouse.move(0, 0);
    mkdirSync(path.dirname(screenshotFile), { recursive: true });
    await page.screenshot({ path: screenshotFile });
  }

  await row(page, c).getByTestId('enable').click();
  await eventually(async () => (await cellText(page, c, 'state')) === 'up', { timeout: 3000, what: `${c} enabled again` });
  assert.equal(upstream(c).enabled, true);
  assert.deepEqual(problems, [], 'no script errors or CSP violations on the page');
  assert.ok(load.sent > 0);
});

test('the dashboard lists the certificates with days left, flags those near or past expiry, and follows a reload', { timeout: 60_000 }, async (t) => {
  const ca = await makeTestCa(t);
  const day = 86_400_000;
  // Days left are whole days rounded down: an hour beyond the count keeps it steady while the test runs.
  const site = await ca.issue('site', { names: ['localhost', '127.0.0.1'], notAfter: new Date(Date.now() + 60 * day + 3_600_000) });
  const soon = await ca.issue('soon', { names: ['soon.test'], notAfter: new Date(Date.now() + 5 * day + 3_600_000) });
  const old = await ca.issue('old', { names: ['old.test'], notBefore: new Date(Date.now() - 30 * day), notAfter: new Date(Date.now() - 2 * day - 3_600_000) });
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [
      {
        name: 'secure',
        host: '127.0.0.1',
        port: 0,
        protocol: 'https',
        tls: {
          // Reloaded below through the admin API, so the test decides when.
          watch: false,
          certificates: [
            { cert: site.certPath, key: site.keyPath, default: true },
            { cert: soon.certPath, key: soon.keyPath },
            { cert: old.bothPath },
          ],
        },
      },
    ],
    pools: { web: { upstreams: [backend.url] } },
    admin: { host: '127.0.0.1', port: 0, token },
  });
  assert.match(lb.url, /^https:/);
  const admin = lb.balancer.adminAddress()!.url;

  const browser = await launchBrowser(t);
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  await page.goto(`${admin}/dashboard/#token=${token}`);
  const panel = page.getByTestId('certificates');
  await panel.waitFor({ state: 'visible', timeout: 5000 });
  const certRow = (serial: string) => page.locator(`[data-testid="certificate-row"][data-serial="${serial}"]`);
  const field = (serial: string, id: string) => certRow(serial).getByTestId(id);
  assert.equal(await page.getByTestId('certificate-row').count(), 3);

  // Each certificate: names, listener, days left with its level, expiry date, source.
  const expected = [
    { cert: site, names: 'localhost', days: '60 days', level: 'ok', source: `${site.certPath} + ${site.keyPath}` },
    { cert: soon, names: 'soon.test', days: '5 days', level: 'warn', source: `${soon.certPath} + ${soon.keyPath}` },
    { cert: old, names: 'old.test', days: 'expired 2 days ago', level: 'bad', source: old.bothPath },
  ];
  const served = lb.balancer.status().certificates;
  for (const e of expected) {
    const where = `the row of ${e.names}`;
    assert.equal(await field(e.cert.serial, 'certificate-names').textContent(), e.names, where);
    assert.equal(await field(e.cert.serial, 'certificate-listener').textContent(), 'secure', where);
    assert.equal(await field(e.cert.serial, 'certificate-days').textContent(), e.days, where);
    assert.equal(await certRow(e.cert.serial).getAttribute('data-level'), e.level, where);
    assert.equal(await field(e.cert.serial, 'certificate-expires').textContent(), served.find((c) => c.serial === e.cert.serial)!.not_after.slice(0, 10), where);
    assert.equal(await field(e.cert.serial, 'certificate-source').textContent(), e.source, where);
    assert.equal(await field(e.cert.serial, 'certificate-error').textContent(), '', where);
  }
  assert.equal(await field(site.serial, 'certificate-default').isVisible(), true, 'the default certificate is marked');
  assert.equal(await field(soon.serial, 'certificate-default').isVisible(), false);
  // The colours: normal text, amber and red badges (the theme's --warn and --bad tones).
  const colour = (locator: ReturnType<Page['locator']>) => locator.evaluate((node) => (globalThis as unknown as { getComputedStyle(n: unknown): { color: string } }).getComputedStyle(node).color);
  assert.equal(await colour(field(soon.serial, 'certificate-days')), 'rgb(248, 197, 114)');
  assert.equal(await colour(field(old.serial, 'certificate-days')), 'rgb(255, 143, 146)');
  assert.equal(await colour(field(site.serial, 'certificate-days')), await colour(field(site.serial, 'certificate-listener')), 'normal text for a certificate far from expiry');
  assert.equal(await page.getByTestId('certificate-note').textContent(), '3 served · 1 expired · 1 expiring soon');

  // Renewed in place, and the site's key broken: after a reload the panel follows within one /status poll.
  const renewed = ca.write('soon', await makeCertificate({ names: ['soon.test'], days: 40, issuer: ca.ca }));
  writeFileSync(site.keyPath, 'not a key\n');
  const reload = await fetch(`${admin}/certificates/reload`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  assert.equal(reload.status, 422, 'the broken key is reported');
  await certRow(renewed.serial).waitFor({ timeout: 8000 });
  assert.equal(await certRow(soon.serial).count(), 0, 'the replaced certificate is gone from the panel');
  assert.equal(await certRow(renewed.serial).getAttribute('data-level'), 'ok');
  assert.match((await field(renewed.serial, 'certificate-days').textContent()) ?? '', /^(39|40) days$/);
  await eventually(async () => /\(the certificate loaded before is served\)$/.test((await field(site.serial, 'certificate-error').textContent()) ?? ''), { timeout: 3000, what: 'the file problem on the site certificate' });
  assert.equal(await page.getByTestId('certificate-note').textContent(), '3 served · 1 expired · 1 with a file problem');
  assert.deepEqual(problems, [], 'no script errors or CSP violations on the page');
});

test('a TCP pool on the dashboard: its backends marked tcp, with open connections and bytes per second', { timeout: 30_000 }, async (t) => {
  const echo = await startEcho(t, 'e');
  const web = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0 }, { name: 'db-in', host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: { web: { upstreams: [web.url] }, db: { protocol: 'tcp', upstreams: [echo.url] } },
    routes: [{ pool: 'web' }],
    admin: { host: '127.0.0.1', port: 0, token },
  });
  const admin = lb.balancer.adminAddress()!.url;
  const tcpId = `127.0.0.1:${echo.port}`;
  const webId = `127.0.0.1:${web.port}`;
  const browser = await launchBrowser(t);
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  await page.goto(`${admin}/dashboard/#token=${token}`);
  await row(page, tcpId).waitFor({ timeout: 5000 });
  assert.equal(await row(page, tcpId).getByTestId('tcp').textContent(), 'tcp');
  assert.equal(await row(page, webId).getByTestId('tcp').count(), 0, 'an http pool\'s backend is not marked');
  assert.equal(await cellText(page, webId, 'bytes'), '–');

  // One connection held open, streaming about 100 kB/s each way (at most 200 writes): it shows while it is open.
  const client = await connect(lb.balancer.addresses().find((a) => a.name === 'db-in')!.port);
  let writes = 0;
  const writer = setInterval(() => {
    if (writes++ < 200) client.socket.write(Buffer.alloc(2000, 'x'));
  }, 20);
  t.after(() => {
    clearInterval(writer);
    client.socket.destroy();
  });
  await eventually(async () => (await cellText(page, tcpId, 'in-flight')) === '1', { timeout: 4000, what: 'one open connection on the tcp row' });
  await eventually(async () => /^\d+(\.\d)? kB \/ \d+(\.\d)? kB$/.test((await cellText(page, tcpId, 'bytes')) ?? ''), { timeout: 4000, what: 'kB per second both ways on the tcp row' });
  await eventually(async () => /\bdb · tcp · round-robin · 1\/1 up · 1 open\b/.test((await page.getByTestId('pools').textContent()) ?? ''), { timeout: 7000, what: 'the open connection in the header (from /status)' });
  clearInterval(writer);
  client.socket.end();
  await eventually(async () => (await cellText(page, tcpId, 'in-flight')) === '0', { timeout: 4000, what: 'the connection gone from the tcp row' });
  await eventually(async () => (await cellText(page, tcpId, 'bytes')) === '0 B / 0 B', { timeout: 4000, what: 'no bytes per second once it closed' });
  assert.deepEqual(problems, [], 'no script errors on the page');
});
