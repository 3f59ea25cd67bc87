/**
 * WebSocket tunnels over their whole life: 1,000 held for 30 s through a Fulcrum process (its RSS
 * per tunnel), then what a reload, a drain, a backend's kill -9 and shutdown do to tunnels
 * already open. Every backend is a `ws` echo server that first sends its name, so each client
 * knows which upstream its tunnel reached. Real sockets on 127.0.0.1 port 0; the only fixed
 * waits are where a duration is the point (the 30 s hold, waiting out a grace period).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket, WebSocketServer } from 'ws';
import { get, startBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { peakRss, startFulcrumProcess } from '../helpers/fulcrum-process.ts';
import { startBackendProcess } from '../helpers/backend-process.ts';
import type { Balancer } from '../../src/index.ts';
import { tunnelClose, type TunnelEvent } from '../../src/core/events.ts';

const TOKEN = 'websocket-lifecycle-token-0123';
const GRACE = 500;

/** A `ws` client with its tunnel open: the backend that greeted it, and when it closed. */
class TunnelClient {
  readonly ws: WebSocket;
  /** The name the backend sent first. */
  backend = '';
  /** `performance.now()` when the close came, or null while open. */
  closedAt: number | null = null;
  closeCode = 0;
  private readonly waiting: ((text: string | null) => void)[] = [];

  constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('error', () => {});
    ws.on('close', (code) => {
      this.closedAt = performance.now();
      this.closeCode = code;
      for (const w of this.waiting.splice(0)) w(null);
    });
  }

  /** Resolves with the next message, or null once the tunnel closed. */
  next(): Promise<string | null> {
    if (this.closedAt !== null) return Promise.resolve(null);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** True when `text` comes back within `ms`. */
  async echoes(text: string, ms = 5000): Promise<boolean> {
    if (this.closedAt !== null || this.ws.readyState !== WebSocket.OPEN) return false;
    const answer = this.next();
    this.ws.send(text);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<null>((resolve) => (timer = setTimeout(resolve, ms, null)));
    const got = await Promise.race([answer, late]);
    clearTimeout(timer);
    return got === text;
  }

  onMessage(data: Buffer): void {
    const text = data.toString();
    if (this.backend === '') this.backend = text;
    else this.waiting.shift()?.(text);
  }
}

/** Opens one tunnel through `url`; resolves once the backend's greeting came. */
function openClient(t: TestContext, url: string): Promise<TunnelClient> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), { perMessageDeflate: false, handshakeTimeout: 10_000 });
    t.after(() => ws.terminate());
    const client = new TunnelClient(ws);
    ws.on('message', (data: Buffer) => {
      client.onMessage(data);
      if (client.backend !== '' && data.toString() === client.backend) resolve(client);
    });
    ws.once('unexpected-response', (_req, res) => reject(new Error(`handshake answered ${res.statusCode}`)));
    ws.once('error', reject);
    ws.once('close', () => reject(new Error('closed before the greeting')));
  });
}

/** Opens `n` tunnels, `concurrency` handshakes at a time. */
async function openMany(t: TestContext, url: string, n: number, concurrency = 50): Promise<TunnelClient[]> {
  const clients: TunnelClient[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      clients.push(await openClient(t, url));
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return clients;
}

/** How many of `clients` echo a message now. */
async function echoing(clients: readonly TunnelClient[], ms = 5000): Promise<number> {
  const results = await Promise.all(clients.map((c, i) => c.echoes(`ping ${i} ${Math.random()}`, ms)));
  return results.filter(Boolean).length;
}

/** Closes every client (a close frame each) and waits until all are closed. */
async function closeAll(clients: readonly TunnelClient[]): Promise<void> {
  for (const c of clients) c.ws.close(1000);
  await eventually(() => clients.every((c) => c.closedAt !== null), { timeout: 10_000, what: 'every client closed' });
}

/** Waits until every one of `clients` closed; a timeout says how many were still open, and how long after `since`. */
async function allClosed(clients: readonly TunnelClient[], since: number, timeout: number, what: string): Promise<void> {
  try {
    await eventually(() => clients.every((c) => c.closedAt !== null), { timeout, what });
  } catch {
    const left = clients.filter((c) => c.closedAt === null).length;
    throw new Error(`${what}: ${left} of ${clients.length} still open ${(performance.now() - since).toFixed(0)} ms later`);
  }
}

/** Waits until process `pid` has `count` file descriptors open again; a timeout says how many it has. */
async function fdsBackTo(pid: number | 'self', count: number, timeout = 5000): Promise<void> {
  try {
    await eventually(() => openFds(pid) === count, { timeout });
  } catch {
    throw new Error(`expected ${count} open fds again, ${pid === 'self' ? 'this process' : `process ${pid}`} has ${openFds(pid)} after ${timeout} ms`);
  }
}

/** Kills `child` after the test and waits until it and its pipes are gone, so no later fd count sees them. */
function reapAfter(t: TestContext, child: ChildProcess): void {
  const closed = once(child, 'close');
  t.after(async () => {
    child.kill('SIGKILL');
    await closed;
  });
}

/** An in-process `ws` echo backend that greets each WebSocket with `name`. */
async function startEchoServer(t: TestContext, name: string): Promise<{ url: string; wss: WebSocketServer }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.send(name);
    ws.on('message', (data, isBinary) => ws.send(data as Buffer, { binary: isBinary }));
  });
  await new Promise<void>((resolve) => wss.once('listening', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const ws of wss.clients) ws.terminate();
        wss.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(wss.address() as AddressInfo).port}`, wss };
}

/** The sum of the samples of `name` whose labels include `labels` (Prometheus text). */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[3]);
  }
  return sum;
}

/**
 * Waits until the balancer's metric `name` (summed over series matching `labels`) is `expected`,
 * then asserts it: a tunnel counts as closed once both of its sockets are, a little after its client saw the close.
 */
async function metricBecomes(balancer: Balancer, name: string, labels: Record<string, string>, expected: number): Promise<void> {
  let value = NaN;
  await eventually(async () => (value = metric((await balancer.metrics.scrape()).body, name, labels)) === expected, { timeout: 2000 }).catch(() => {});
  assert.equal(value, expected, `${name}${JSON.stringify(labels)}`);
}

/** A GET on a connection of its own that closes after the answer (it leaves no socket open). */
async function fetchText(url: string): Promise<string> {
  const r = await get(url, { headers: { connection: 'close' } });
  assert.equal(r.status, 200, `${url}: ${r.body}`);
  return r.body;
}

/** An admin API write with the token; resolves with the status and body. */
function adminWrite(admin: string, method: string, path: string, body: unknown): Promise<{ status: number; body: string }> {
  return get(`${admin}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', connection: 'close' },
    body: JSON.stringify(body),
  });
}

/** Open file descriptors of a process. */
function openFds(pid: number | 'self'): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Resident memory (VmRSS) of a process, in bytes. */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error('no VmRSS in /proc status');
  return Number(m[1]) * 1024;
}

const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`;

/** Reasons of the tunnels to `upstreamUrl` closed in this process (fulcrum:tunnel:close) while the test runs. */
function recordCloseReasons(t: TestContext, upstreamUrl: string): string[] {
  const id = new URL(upstreamUrl).host;
  const reasons: string[] = [];
  const onClose = (m: unknown): void => {
    const { ctx, reason } = m as TunnelEvent;
    if (ctx.upstream?.id === id) reasons.push(reason ?? '');
  };
  tunnelClose.subscribe(onClose);
  t.after(() => tunnelClose.unsubscribe(onClose));
  return reasons;
}

/** Counts of each value, as text ("1006: 20"). */
const tally = (values: readonly (string | number)[]): string => {
  const counts = new Map<string | number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].map(([v, n]) => `${v}: ${n}`).join(', ');
};

test('1,000 tunnels held 30 s through a Fulcrum process all still echo; RSS stays under 100 KiB per tunnel', { timeout: 80_000 }, async (t) => {
  const backend = await startBackendProcess(t, 'held');
  reapAfter(t, backend.child);
  const fulcrum = await startFulcrumProcess(
    t,
    `listeners: [{host: 127.0.0.1, port: 0, metrics_path: /metrics}]\nlog: {level: info, access_log: false}\npools:\n  web:\n    upstreams: ["${backend.url}"]\n`,
  );
  reapAfter(t, fulcrum.child);
  const pid = fulcrum.child.pid!;
  const open = async (): Promise<number> => metric(await fetchText(`${fulcrum.url}/metrics`), 'lb_tunnels_open');
  const fdsStart = openFds(pid);

  // Warm-up (code paths compiled, first buffers allocated), so the baseline is not a cold process.
  const warm = await openMany(t, fulcrum.url, 50);
  assert.equal(await echoing(warm), 50);
  await closeAll(warm);
  await eventually(async () => (await open()) === 0, { timeout: 10_000, what: 'lb_tunnels_open 0 after the warm-up' });
  await fdsBackTo(pid, fdsStart);
  const rssBefore = rss(pid);

  const opening = performance.now();
  const clients = await openMany(t, fulcrum.url, 1000, 100);
  const openMs = performance.now() - opening;
  assert.equal(clients.length, 1000);
  assert.ok(clients.every((c) => c.backend === 'held'));
  assert.equal(await echoing(clients), 1000, 'every new tunnel echoes');
  assert.equal(await open(), 1000, 'lb_tunnels_open');
  const fdsOpen = openFds(pid);
  const rssOpen = rss(pid);

  // The hold is the point: 30 s without a byte, past every HTTP timeout that must not apply to a tunnel.
  await sleep(30_000);
  assert.equal(clients.filter((c) => c.closedAt !== null).length, 0, 'no tunnel closed during the hold');
  assert.equal(await echoing(clients), 1000, 'every tunnel still echoes after 30 s');
  const rssHeld = rss(pid);
  const perTunnel = (rssHeld - rssBefore) / 1000;
  t.diagnostic(`opened 1000 tunnels in ${openMs.toFixed(0)} ms; fds ${fdsStart} -> ${fdsOpen}`);
  t.diagnostic(`Fulcrum VmRSS: ${mib(rssBefore)} before, ${mib(rssOpen)} with 1000 open, ${mib(rssHeld)} after 30 s (peak ${mib(peakRss(pid))})`);
  t.diagnostic(`RSS per tunnel: ${(perTunnel / 1024).toFixed(1)} KiB (after 30 s), ${((rssOpen - rssBefore) / 1000 / 1024).toFixed(1)} KiB (just opened)`);
  assert.ok(perTunnel < 100 * 1024, `RSS per tunnel ${(perTunnel / 1024).toFixed(1)} KiB, want < 100 KiB`);

  await closeAll(clients);
  await eventually(async () => (await open()) === 0, { timeout: 10_000, what: 'lb_tunnels_open 0' });
  await fdsBackTo(pid, fdsStart, 10_000);
  t.diagnostic(`after closing: lb_tunnels_open 0, fds back to ${openFds(pid)}`);
});

test('a reload that removes an upstream closes its tunnels after the grace period; tunnels to the upstream kept stay open', { timeout: 20_000 }, async (t) => {
  const a = await startEchoServer(t, 'A');
  const b = await startEchoServer(t, 'B');
  const { balancer, url } = await startBalancer(t, { pools: { web: { upstreams: [a.url, b.url] } } });
  const clients = await openMany(t, url, 40);
  const onA = clients.filter((c) => c.backend === 'A');
  const onB = clients.filter((c) => c.backend === 'B');
  assert.equal(onA.length, 20, 'round-robin: half on A');
  assert.equal(onB.length, 20, 'round-robin: half on B');

  const reloadAt = performance.now();
  await balancer.reload({ listeners: [{ host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [a.url] } }, shutdown: { grace_period: `${GRACE}ms` } });
  // Within the grace period B's tunnels still relay.
  assert.equal(await echoing(onB, GRACE / 2), 20, "B's tunnels still echo right after the reload");
  assert.ok(performance.now() - reloadAt < GRACE, 'checked within the grace period');

  await allClosed(onB, reloadAt, GRACE + 3000, "B's tunnels closed after the grace period");
  const firstClose = Math.min(...onB.map((c) => c.closedAt!)) - reloadAt;
  const lastClose = Math.max(...onB.map((c) => c.closedAt!)) - reloadAt;
  const survived = await echoing(onA);
  t.diagnostic(`A: ${survived} of ${onA.length} survived; B: ${onB.filter((c) => c.closedAt !== null).length} of ${onB.length} closed ${firstClose.toFixed(0)}-${lastClose.toFixed(0)} ms after the reload (grace ${GRACE} ms; close codes ${tally(onB.map((c) => c.closeCode))})`);
  assert.ok(firstClose >= GRACE - 10, `B's first tunnel closed ${firstClose.toFixed(0)} ms after the reload, before the grace period`);
  assert.equal(survived, 20, "A's tunnels all survive");
  await metricBecomes(balancer, 'lb_tunnels_closed_total', { reason: 'removed' }, 20);
  await metricBecomes(balancer, 'lb_tunnels_closed_total', {}, 20);
  await metricBecomes(balancer, 'lb_tunnels_open', {}, 20);
});

/** A balancer with an admin API, `shutdown.grace_period` GRACE, pool `web` over A and B; 20 tunnels, 10 on each. */
async function drainSetup(t: TestContext) {
  const a = await startEchoServer(t, 'A');
  const b = await startEchoServer(t, 'B');
  const running = await startBalancer(t, {
    admin: { host: '127.0.0.1', port: 0, token: TOKEN },
    shutdown: { grace_period: `${GRACE}ms` },
    pools: { web: { upstreams: [a.url, b.url] } },
  });
  const admin = `http://127.0.0.1:${running.balancer.adminAddress()!.port}`;
  const clients = await openMany(t, running.url, 20);
  const onA = clients.filter((c) => c.backend === 'A');
  const onB = clients.filter((c) => c.backend === 'B');
  assert.equal(onA.length, 10);
  assert.equal(onB.length, 10);
  return { ...running, a, b, admin, onA, onB };
}

test("a drain through the admin API closes the drained upstream's tunnels after the grace period; the others stay, new ones avoid it", { timeout: 20_000 }, async (t) => {
  const { balancer, url, a, b, admin, onA, onB } = await drainSetup(t);
  const drainAt = performance.now();
  const drained = await adminWrite(admin, 'POST', '/backends/drain', { url: b.url });
  assert.equal(drained.status, 200, drained.body);
  assert.equal(await echoing(onB, GRACE / 2), 10, "B's tunnels still echo right after the drain");
  const fresh = await openMany(t, url, 10);
  assert.deepEqual(new Set(fresh.map((c) => c.backend)), new Set(['A']), 'new handshakes go to A');
  assert.ok(performance.now() - drainAt < GRACE, 'checked within the grace period');

  await allClosed(onB, drainAt, GRACE + 3000, `B's tunnels closed after shutdown.grace_period (${GRACE} ms) from the drain`);
  const firstClose = Math.min(...onB.map((c) => c.closedAt!)) - drainAt;
  const survived = await echoing([...onA, ...fresh]);
  t.diagnostic(`drain: B's 10 tunnels closed from ${firstClose.toFixed(0)} ms (grace ${GRACE} ms); A's ${survived} of ${onA.length + fresh.length} still echo`);
  assert.ok(firstClose >= GRACE - 10, `B's first tunnel closed ${firstClose.toFixed(0)} ms after the drain, before the grace period`);
  assert.equal(survived, 20, "A's tunnels are untouched");
  await metricBecomes(balancer, 'lb_tunnels_closed_total', { reason: 'drained' }, 10);
  await metricBecomes(balancer, 'lb_tunnels_closed_total', {}, 10);

  // A disabled upstream's tunnels go the same way.
  const disableAt = performance.now();
  const disabled = await adminWrite(admin, 'POST', '/backends/disable', { url: a.url });
  assert.equal(disabled.status, 200, disabled.body);
  assert.equal(await echoing([...onA, ...fresh], GRACE / 2), 20, "A's tunnels still echo right after it was disabled");
  await allClosed([...onA, ...fresh], disableAt, GRACE + 3000, "A's tunnels closed after the grace period from disable");
  const firstDisabledClose = Math.min(...[...onA, ...fresh].map((c) => c.closedAt!)) - disableAt;
  assert.ok(firstDisabledClose >= GRACE - 10, `A's first tunnel closed ${firstDisabledClose.toFixed(0)} ms after disable`);
  await metricBecomes(balancer, 'lb_tunnels_closed_total', { reason: 'drained' }, 30);
  await metricBecomes(balancer, 'lb_tunnels_open', {}, 0);
});

test('a drain undone within the grace period keeps the tunnels open', { timeout: 20_000 }, async (t) => {
  const { balancer, b, admin, onA, onB } = await drainSetup(t);
  const patch = (draining: boolean) => adminWrite(admin, 'PATCH', '/backends', { url: b.url, draining });
  assert.equal((await patch(true)).status, 200);
  assert.equal((await patch(false)).status, 200);
  // Waiting out the grace period is the point here.
  await sleep(GRACE + 300);
  assert.equal(onB.filter((c) => c.closedAt !== null).length, 0, "none of B's tunnels closed");
  assert.equal(await echoing([...onA, ...onB]), 20, 'all 20 tunnels still echo');
  await metricBecomes(balancer, 'lb_tunnels_closed_total', {}, 0);

  // The control: drained for good, B's tunnels do close after the same wait (so the wait above was past the grace period).
  const drainAt = performance.now();
  assert.equal((await patch(true)).status, 200);
  await allClosed(onB, drainAt, GRACE + 3000, `B's tunnels closed after shutdown.grace_period (${GRACE} ms) from the drain`);
  t.diagnostic(`undrained in time: 10 of 10 kept past ${GRACE + 300} ms; drained again: closed from ${(Math.min(...onB.map((c) => c.closedAt!)) - drainAt).toFixed(0)} ms`);
});

test('kill -9 of the backend under 50 open tunnels: every client sees the close, Fulcrum is left with nothing open', { timeout: 30_000 }, async (t) => {
  const backend = await startBackendProcess(t, 'doomed');
  reapAfter(t, backend.child);
  const fulcrum = await startFulcrumProcess(
    t,
    `listeners: [{host: 127.0.0.1, port: 0}]\nadmin: {host: 127.0.0.1, port: 0, token: ${TOKEN}}\nlog: {level: info, access_log: false}\npools:\n  web:\n    upstreams: ["${backend.url}"]\n`,
  );
  reapAfter(t, fulcrum.child);
  const adminPort = /admin API on http:\/\/[^:]+:(\d+)/.exec(fulcrum.output())?.[1];
  assert.ok(adminPort, 'the admin listener is up');
  const admin = `http://127.0.0.1:${adminPort}`;
  const pid = fulcrum.child.pid!;
  const state = async () => {
    const [metrics, backends] = await Promise.all([fetchText(`${admin}/metrics`), fetchText(`${admin}/backends`)]);
    return { open: metric(metrics, 'lb_tunnels_open'), inFlight: (JSON.parse(backends) as { current_connections: number }[])[0].current_connections, metrics };
  };
  const fdsStart = openFds(pid);

  const clients = await openMany(t, fulcrum.url, 50);
  assert.ok(clients.every((c) => c.backend === 'doomed'));
  assert.equal(await echoing(clients), 50);
  const fdsOpen = openFds(pid);
  const before = await state();
  assert.equal(before.open, 50, 'lb_tunnels_open');
  assert.equal(before.inFlight, 50, 'in flight on the upstream');

  const killedAt = performance.now();
  backend.child.kill('SIGKILL');
  await allClosed(clients, killedAt, 5000, 'every client closed after the kill');
  const lastClose = Math.max(...clients.map((c) => c.closedAt!)) - killedAt;
  const after = (await eventually(async () => {
    const s = await state();
    return s.open === 0 && s.inFlight === 0 ? s : null;
  }, { timeout: 5000, what: 'lb_tunnels_open and in flight back to 0' }))!;
  await fdsBackTo(pid, fdsStart);
  const reasons = ['client', 'upstream', 'error', 'idle'].map((r) => `${r}: ${metric(after.metrics, 'lb_tunnels_closed_total', { reason: r })}`).join(', ');
  t.diagnostic(`50 clients closed within ${lastClose.toFixed(0)} ms of the kill (codes ${tally(clients.map((c) => c.closeCode))}); closed by reason ${reasons}`);
  t.diagnostic(`Fulcrum fds: ${fdsStart} before, ${fdsOpen} with 50 tunnels, ${openFds(pid)} after; in flight ${before.inFlight} -> ${after.inFlight}`);
});

test('shutdown: close(300 ms) lets open tunnels run for the grace period, then closes them all and leaves nothing open', { timeout: 20_000 }, async (t) => {
  const shutdownGrace = 300;
  const a = await startEchoServer(t, 'A');
  const reasons = recordCloseReasons(t, a.url);
  const fdsStart = openFds('self');
  const { balancer, url } = await startBalancer(t, { pools: { web: { upstreams: [a.url] } } });
  const clients = await openMany(t, url, 20);
  assert.equal(await echoing(clients), 20);

  const closeAt = performance.now();
  let closedIn: number | null = null;
  const closing = balancer.close(shutdownGrace).then(() => (closedIn = performance.now() - closeAt));
  assert.equal(await echoing(clients, shutdownGrace / 2), 20, 'tunnels still echo right after close() began');
  assert.ok(performance.now() - closeAt < shutdownGrace, 'checked within the grace period');
  assert.equal(closedIn, null, 'close() waits for the open tunnels');

  await allClosed(clients, closeAt, shutdownGrace + 3000, 'every tunnel closed after the grace period');
  const firstClose = Math.min(...clients.map((c) => c.closedAt!)) - closeAt;
  await closing;
  await fdsBackTo('self', fdsStart);
  t.diagnostic(`20 tunnels closed from ${firstClose.toFixed(0)} ms (grace ${shutdownGrace} ms), close() resolved after ${closedIn!.toFixed(0)} ms; fds ${fdsStart} before, ${openFds('self')} after; close reasons ${tally(reasons)}`);
  assert.ok(firstClose >= shutdownGrace - 10, `first tunnel closed ${firstClose.toFixed(0)} ms after close(), before the grace period`);
  assert.deepEqual(reasons, Array(20).fill('shutdown'), 'tunnels closed by shutdown are recorded with reason "shutdown" (lb_tunnels_closed_total, access log)');
});
