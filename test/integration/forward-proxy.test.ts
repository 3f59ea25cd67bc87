/**
 * The forward proxy end to end with real peers: curl (`-x`, `-p`, `--proxy-user`, https through
 * CONNECT with `--cacert`) and raw sockets where the exact bytes matter, against backends and
 * canaries on 127.0.0.1. Every denied case names a canary (a net.Server counting connections)
 * as its destination where one can listen, and checks it stayed at 0; destinations no canary can
 * stand for (10.0.0.1, 192.168.1.1) check that the decision came with no attempt made.
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { startBackend, startBalancer, rawExchange, type TestBackend, type TestBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { startBlackhole } from '../helpers/blackhole.ts';
import { eventually } from '../helpers/eventually.ts';
import { decodeFrames, encodeFrame, handshakeRequest, parseHead, rawClient, startWsBackend } from '../helpers/websocket.ts';
import { hashPassword } from '../../src/forward/proxy-auth.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';
import { ConfigError } from '../../src/errors.ts';

type ListenerInput = NonNullable<FulcrumConfigInput['listeners']>[number];
type ForwardInput = NonNullable<ListenerInput['forward_proxy']>;

/** What curl did: its exit code, the body it printed, then the status of the answer and of the CONNECT (from -w). */
interface Curled {
  code: number;
  body: string;
  status: number;
  connectStatus: number;
  stderr: string;
}

/** `eventually`, for a value that is there once the check passes. */
async function eventuallyDefined<T>(check: () => T | null | undefined): Promise<T> {
  return (await eventually(check))!;
}

/** Runs curl (never through a proxy from the environment: only the -x given). */
function curl(args: string[]): Promise<Curled> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '10', '-w', '\n%{http_code} %{http_connect}', ...args], { env: { PATH: process.env.PATH }, timeout: 15_000 }, (error, stdout, stderr) => {
      const at = stdout.lastIndexOf('\n');
      const [status, connectStatus] = stdout.slice(at + 1).split(' ').map(Number);
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, body: stdout.slice(0, at), status, connectStatus, stderr });
    });
  });
}

/** A listener that counts connections: a destination that must never be contacted. */
async function startCanary(t: TestContext): Promise<{ port: number; connections: () => number }> {
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as AddressInfo).port, connections: () => connections };
}

/** A backend that answers with what it got: method, target and headers. */
function echoBackend(t: TestContext): Promise<TestBackend> {
  return startBackend(t, (req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers }));
  });
}

let counter = 0;

interface Setup {
  lb: TestBalancer;
  backend: TestBackend;
  canary: { port: number; connections: () => number };
  /** Listener name -> its proxy URL. */
  proxy: (name: string) => string;
  port: (name: string) => number;
  names: Record<string, string>;
  metrics: () => Promise<string>;
}

/**
 * A backend, a canary, and a balancer whose listeners are built by `listeners(ports)` (each
 * named; `name` is made unique per setup since channels are process-wide).
 */
async function setup(t: TestContext, listeners: (ports: { backend: number; canary: number }) => Record<string, Omit<ListenerInput, 'name' | 'host' | 'port'>>, extra: Partial<FulcrumConfigInput> = {}): Promise<Setup> {
  const backend = await echoBackend(t);
  const canary = await startCanary(t);
  const id = ++counter;
  const built = listeners({ backend: backend.port, canary: canary.port });
  const names: Record<string, string> = {};
  const list: ListenerInput[] = Object.entries(built).map(([name, l]) => {
    names[name] = `fp${id}-${name}`;
    return { name: names[name], host: '127.0.0.1', port: 0, ...l } as ListenerInput;
  });
  const lb = await startBalancer(t, { listeners: list, pools: { web: { upstreams: [backend.url] } }, ...extra });
  const ports = new Map(lb.balancer.addresses().map((a) => [a.name, a.port]));
  const port = (name: string): number => ports.get(names[name])!;
  return {
    lb,
    backend,
    canary,
    names,
    port,
    proxy: (name) => `http://127.0.0.1:${port(name)}`,
    metrics: async () => (await lb.balancer.metrics.scrape()).body,
  };
}

/** The value of one series in the exposition text (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const inside = line.slice(name.length + 1, line.indexOf('}'));
    const have = inside.split(/,(?=[a-z_]+=")/);
    if (want.every((w) => have.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

/** Rules most tests use: the backend (and the TLS backend) on 127.0.0.1 explicitly, public addresses on 80 and 443. */
function localRules(...ports: number[]): ForwardInput {
  return { rules: [{ name: 'local', cidrs: ['127.0.0.1/32'], ports }, { name: 'public', ports: [80, 443] }] };
}

describe('forward proxy: absolute-form', () => {
  test('curl -x reaches an allowed backend; no Proxy-* header reaches it; Host is the URI authority; logged and counted by rule', async (t) => {
    const s = await setup(t, (p) => ({ fp: { forward_proxy: localRules(p.backend) } }));
    const url = `http://127.0.0.1:${s.backend.port}/path/x?q=1&r=%2F`;
    const r = await curl(['-x', s.proxy('fp'), '-H', 'Proxy-Connection: keep-alive', '-H', 'Proxy-Foo: secret', '-H', 'Host: evil.example', url]);
    assert.equal(r.status, 200, r.stderr);
    const seen = JSON.parse(r.body) as { method: string; url: string; headers: Record<string, string> };
    assert.equal(seen.url, '/path/x?q=1&r=%2F', 'origin-form, the path and query as sent');
    assert.equal(seen.headers.host, `127.0.0.1:${s.backend.port}`, 'the absolute URI wins over a Host header (RFC 9112 section 3.2.2)');
    assert.deepEqual(Object.keys(seen.headers).filter((h) => h.startsWith('proxy-')), []);
    assert.equal(seen.headers.via, '1.1 fulcrum');
    const ctx = await eventuallyDefined(() => s.lb.ended.find((c) => c.listener === s.names.fp));
    assert.deepEqual(ctx.forward, { kind: 'absolute', decision: 'allowed', rule: 'local', reason: null });
    assert.equal(ctx.upstream?.id, `127.0.0.1:${s.backend.port}`);
    assert.equal(ctx.pool?.name, '(forward)');
    const line = await eventuallyDefined(() => s.lb.logs.find((l) => l.includes('"log":"access"') && l.includes(s.names.fp)));
    const logged = JSON.parse(line) as Record<string, unknown>;
    assert.deepEqual(logged.forward, { kind: 'absolute', decision: 'allowed', rule: 'local' });
    assert.equal(logged.upstream, `127.0.0.1:${s.backend.port}`);
    const m = await s.metrics();
    assert.equal(sample(m, 'lb_forward_proxy_requests_total', { listener: s.names.fp, method_kind: 'absolute', decision: 'allowed', rule: 'local' }), 1);
    assert.equal(sample(m, 'lb_requests_total', { pool: '(forward)', backend: 'local', status: '200' }), 1, 'the backend label is the rule, never the address a client chose');
    const forwardSeries = m.split('\n').filter((l) => l.includes('(forward)') || l.startsWith('lb_forward'));
    assert.ok(forwardSeries.length > 0);
    assert.ok(forwardSeries.every((l) => !l.includes(`127.0.0.1:${s.backend.port}`)), 'no label holds the destination');
  });

  test('origin-form requests on a forward-proxy listener still go to the routes', async (t) => {
    const s = await setup(t, (p) => ({ fp: { forward_proxy: localRules(p.backend) } }));
    const r = await curl([`${s.proxy('fp')}/reverse`]);
    assert.equal(r.status, 200);
    assert.equal((JSON.parse(r.body) as { url: string }).url, '/reverse');
    const ctx = await eventuallyDefined(() => s.lb.ended.find((c) => c.listener === s.names.fp));
    assert.equal(ctx.forward, null);
    assert.equal(ctx.pool?.name, 'web');
  });

  test('a destination no rule allows, a port not allowed, a private range, a loopback name: 403 each, never contacted', async (t) => {
    const s = await setup(t, (p) => ({
      fp: { forward_proxy: { rules: [{ name: 'local', cidrs: ['127.0.0.1/32'], ports: [p.backend] }, { name: 'names', hosts: ['localhost'], ports: [p.canary] }, { name: 'public', ports: [80, 443, p.canary] }] } },
    }));
    const cases: [string, string][] = [
      [`http://127.0.0.1:${s.canary.port}/`, 'special_address'], // public rule allows the port, not loopback
      [`http://127.0.0.2:${s.backend.port}/`, 'no_rule'], // local lists 127.0.0.1 only; public does not allow the port
      [`http://127.0.0.1:${s.backend.port + (s.backend.port === 65535 ? -1 : 1)}/`, 'port'], // a rule for the host, none for the port
      ['http://10.0.0.1/', 'special_address'],
      ['http://192.168.1.1/', 'special_address'],
      [`http://localhost:${s.canary.port}/`, 'special_address'], // a name that resolves to loopback, allowed by name but not by cidrs
      ['http://127.0.0.1:9/', 'port'],
    ];
    for (const [url, reason] of cases) {
      const r = await curl(['-x', s.proxy('fp'), url]);
      assert.equal(r.status, 403, url);
      assert.match(r.body, new RegExp(`^403 Forbidden: destination refused by the forward proxy \\(${reason}:`), url);
      assert.ok(!r.body.includes('10.0.0.1') && !r.body.includes('localhost'), 'the refusal does not echo the destination');
    }
    assert.equal(s.canary.connections(), 0, 'the canary was never contacted');
    const ends = await eventuallyDefined(() => {
      const mine = s.lb.ended.filter((c) => c.listener === s.names.fp);
      return mine.length === cases.length ? mine : null;
    });
    for (const ctx of ends) {
      assert.equal(ctx.attempts, 0, 'no attempt was made');
      assert.equal(ctx.upstream, null);
      assert.equal(ctx.error?.code, 'FUL_FORWARD_DENIED');
    }
    const m = await s.metrics();
    assert.equal(sample(m, 'lb_forward_proxy_denied_total', { listener: s.names.fp, reason: 'special_address' }), 4);
    assert.equal(sample(m, 'lb_forward_proxy_denied_total', { listener: s.names.fp, reason: 'no_rule' }), 1);
    assert.equal(sample(m, 'lb_forward_proxy_denied_total', { listener: s.names.fp, reason: 'port' }), 2);
    assert.equal(sample(m, 'lb_forward_proxy_requests_total', { listener: s.names.fp, method_kind: 'absolute', decision: 'denied', rule: 'names' }), 1);
    assert.ok(!/10\.0\.0\.1|192\.168\.1\.1|localhost/.test(m.split('\n').filter((l) => l.startsWith('lb_forward')).join('\n')), 'no label holds what the client asked for');
  });

  test('0x7f.1 and 2130706433 are loopback: denied unless the rule lists 127.0.0.1 in its cidrs', async (t) => {
    const s = await setup(t, (p) => ({
      open: { forward_proxy: { rules: [{ name: 'public', ports: [p.canary, p.backend] }] } },
      listed: { forward_proxy: { rules: [{ name: 'local', cidrs: ['127.0.0.0/8'], ports: [p.backend] }] } },
    }));
    // Raw requests: curl would rewrite these hosts to 127.0.0.1 itself.
    for (const host of ['0x7f.1', '2130706433']) {
      const denied = await rawExchange(s.port('open'), `GET http://${host}:${s.canary.port}/ HTTP/1.1\r\nHost: ${host}:${s.canary.port}\r\nConnection: close\r\n\r\n`);
      assert.match(denied, /^HTTP\/1\.1 403 /, host);
      assert.match(denied, /special_address/);
      const allowed = await rawExchange(s.port('listed'), `GET http://${host}:${s.backend.port}/numeric HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.match(allowed, /^HTTP\/1\.1 200 /, host);
      assert.match(allowed, new RegExp(`"host":"${host}:${s.backend.port}"`), 'sent with the host as the client wrote it, to the address the policy checked');
    }
    assert.equal(s.canary.connections(), 0);
  });

  test('https:// absolute-form is refused with a pointer to CONNECT; a name that does not resolve is 502', async (t) => {
    const s = await setup(t, () => ({ fp: { forward_proxy: { rules: [{ name: 'invalid', hosts: ['*.invalid'], ports: [80] }] } } }));
    const tls = await rawExchange(s.port('fp'), 'GET https://127.0.0.1:8443/ HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nConnection: close\r\n\r\n');
    assert.match(tls, /^HTTP\/1\.1 400 /);
    assert.match(tls, /CONNECT/);
    const r = await curl(['-x', s.proxy('fp'), 'http://no-such-host.invalid/']);
    assert.equal(r.status, 502);
    assert.match(r.body, /could not be resolved/);
    const m = await s.metrics();
    assert.equal(sample(m, 'lb_forward_proxy_denied_total', { listener: s.names.fp, reason: 'resolve_failed' }), 1);
  });

  test('timeouts.response_headers is 504, timeouts.connect is 504, a closed port is 502: no second destination is tried', async (t) => {
    const hole = await startBlackhole(t);
    const silent = await startBackend(t, () => {
      // Never answers: the response-headers timeout is the point.
    });
    const closed = await new Promise<number>((resolve) => {
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        const port = (srv.address() as AddressInfo).port;
        srv.close(() => resolve(port));
      });
    });
    const s = await setup(t, () => ({
      fp: { forward_proxy: { rules: [{ name: 'local', cidrs: ['127.0.0.1/32'], ports: [hole, silent.port, closed] }], timeouts: { connect: '300ms', response_headers: '300ms' } } },
    }));
    const headers = await curl(['-x', s.proxy('fp'), `http://127.0.0.1:${silent.port}/`]);
    assert.equal(headers.status, 504);
    assert.match(headers.body, /response headers/);
    const connect = await curl(['-x', s.proxy('fp'), `http://127.0.0.1:${hole}/`]);
    assert.equal(connect.status, 504);
    const refused = await curl(['-x', s.proxy('fp'), `http://127.0.0.1:${closed}/`]);
    assert.equal(refused.status, 502);
    const tunnel = await curl(['-p', '-x', s.proxy('fp'), `http://127.0.0.1:${hole}/`]);
    assert.equal(tunnel.connectStatus, 504);
    const ends = await eventuallyDefined(() => {
      const mine = s.lb.ended.filter((c) => c.listener === s.names.fp);
      return mine.length === 4 ? mine : null;
    });
    assert.deepEqual(ends.map((c) => c.attempts), [1, 1, 1, 1], 'one attempt each: the destination is the only one');
    assert.deepEqual(ends.map((c) => c.error?.code), ['FUL_UPSTREAM_HEADERS_TIMEOUT', 'FUL_UPSTREAM_CONNECT_TIMEOUT', 'FUL_UPSTREAM_CONNECT_REFUSED', 'FUL_UPSTREAM_CONNECT_TIMEOUT']);
  });
});

describe('forward proxy: CONNECT', () => {
  test('curl -p tunnels to a plain backend; the tunnel is logged once, with the rule', async (t) => {
    const s = await setup(t, (p) => ({ fp: { forward_proxy: localRules(p.backend) } }));
    const r = await curl(['-p', '-x', s.proxy('fp'), '-H', 'Proxy-Foo: x', `http://127.0.0.1:${s.backend.port}/through`]);
    assert.equal(r.connectStatus, 200, r.stderr);
    assert.equal(r.status, 200);
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
    assert.equal(seen.url, '/through');
    assert.equal(seen.headers.via, undefined, 'the tunnel carries the bytes as they are');
    const ctx = await eventuallyDefined(() => s.lb.ended.find((c) => c.listener === s.names.fp));
    assert.equal(ctx.req.method, 'CONNECT');
    assert.equal(ctx.status, 200);
    assert.equal(ctx.kind, 'tunnel');
    assert.deepEqual(ctx.forward, { kind: 'connect', decision: 'allowed', rule: 'local', reason: null });
    assert.ok(ctx.bytesIn > 0 && ctx.bytesOut > 0);
    assert.ok(ctx.tunnelClose === 'client' || ctx.tunnelClose === 'upstream', String(ctx.tunnelClose));
    const m = await s.metrics();
    assert.equal(sample(m, 'lb_forward_proxy_requests_total', { listener: s.names.fp, method_kind: 'connect', decision: 'allowed', rule: 'local' }), 1);
    assert.equal(sample(m, 'lb_tunnels_opened_total', { pool: '(forward)', backend: 'local' }), 1);
  });

  test('curl -x to an https backend goes through CONNECT and verifies the backend\'s own certificate', async (t) => {
    const ca = await makeTestCa(t);
    const leaf = await ca.issue('backend');
    const server = https.createServer({ cert: leaf.cert, key: leaf.key }, (req, res) => res.end(`tls ok ${req.url}`));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }));
    const tlsPort = (server.address() as AddressInfo).port;
    const s = await setup(t, () => ({ fp: { forward_proxy: localRules(tlsPort) } }));
    const r = await curl(['-x', s.proxy('fp'), '--cacert', ca.caPath, `https://127.0.0.1:${tlsPort}/secure`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.connectStatus, 200);
    assert.equal(r.status, 200);
    assert.equal(r.body, 'tls ok /secure');
  });

  test('CONNECT to a port no rule allows: 403, the canary never contacted, the connection closed', async (t) => {
    const s = await setup(t, (p) => ({ fp: { forward_proxy: localRules(p.backend) } }));
    const r = await curl(['-p', '-x', s.proxy('fp'), `http://127.0.0.1:${s.canary.port}/`]);
    assert.equal(r.connectStatus, 403);
    const raw = await rawExchange(s.port('fp'), `CONNECT 127.0.0.1:${s.canary.port} HTTP/1.1\r\nHost: 127.0.0.1:${s.canary.port}\r\n\r\n`);
    assert.match(raw, /^HTTP\/1\.1 403 /);
    assert.match(raw, /connection: close/i);
    assert.equal(s.canary.connections(), 0);
    const m = await s.metrics();
    assert.equal(sample(m, 'lb_forward_proxy_requests_total', { listener: s.names.fp, method_kind: 'connect', decision: 'denied', rule: 'none' }), 2);
  });

  test('malformed CONNECT targets are 400 and contact nobody', async (t) => {
    const s = await setup(t, (p) => ({ fp: { forward_proxy: localRules(p.backend, p.canary) } }));
    for (const target of ['127.0.0.1', `127.0.0.1:0`, `127.0.0.1:99999`, `user@127.0.0.1:${s.canary.port}`, `[::1:${s.canary.port}`, `bad_host!:${s.canary.port}`]) {
      const raw = await rawExchange(s.port('fp'), `CONNECT ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(raw, /^HTTP\/1\.1 400 /, target);
    }
    assert.equal(s.canary.connections(), 0);
  });

  for (const engine of ['fulcrum', 'node'] as const) test(`engine ${engine}: bytes sent right behind the CONNECT head reach the destination first; a large upload and a half-close pass through`, async (t) => {
    const received: Buffer[] = [];
    let ended = false;
    const echo = net.createServer((socket) => {
      socket.on('data', (d: Buffer) => received.push(d));
      socket.on('end', () => {
        ended = true;
        // Half-closed by the client: this side still answers, then closes.
        socket.end('bye');
      });
    });
    await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => echo.close(() => resolve())));
    const port = (echo.address() as AddressInfo).port;
    const s = await setup(t, () => ({ fp: { engine, forward_proxy: localRules(port) } }));
    const client = net.connect(s.port('fp'), '127.0.0.1');
    let got = '';
    client.on('data', (d: Buffer) => (got += d.toString('latin1')));
    const closed = new Promise<void>((resolve) => client.on('close', () => resolve()));
    const big = Buffer.alloc(4 * 1024 * 1024, 7);
    client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\nearly`);
    await eventually(() => got.includes('\r\n\r\n'));
    assert.match(got, /^HTTP\/1\.1 200 Connection Established\r\n/);
    assert.doesNotMatch(got, /content-length|transfer-encoding/i, 'a 2xx to CONNECT has no framing');
    client.end(big);
    await closed;
    assert.equal(Buffer.concat(received).subarray(0, 5).toString(), 'early');
    assert.equal(Buffer.concat(received).length, 5 + big.length);
    assert.ok(ended);
    assert.ok(got.endsWith('bye'), 'the destination answered after the client half-closed');
  });

  test('tunnel limits and the idle timeout apply to CONNECT tunnels', async (t) => {
    const quiet = net.createServer((socket) => socket.on('error', () => {}));
    await new Promise<void>((resolve) => quiet.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => {
      quiet.close(() => resolve());
    }));
    const port = (quiet.address() as AddressInfo).port;
    const s = await setup(t, () => ({ fp: { limits: { max_tunnels: 1 }, forward_proxy: { ...localRules(port), timeouts: { tunnel_idle: '300ms' } } } }));
    const first = net.connect(s.port('fp'), '127.0.0.1');
    let firstGot = '';
    first.on('data', (d: Buffer) => (firstGot += d.toString('latin1')));
    const firstClosed = new Promise<void>((resolve) => first.on('close', () => resolve()));
    first.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await eventually(() => firstGot.startsWith('HTTP/1.1 200'));
    const second = await rawExchange(s.port('fp'), `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.match(second, /^HTTP\/1\.1 503 /, 'limits.max_tunnels 1: the second is refused while the first is open');
    const started = performance.now();
    await firstClosed;
    assert.ok(performance.now() - started < 3000);
    const ctx = await eventuallyDefined(() => s.lb.ended.find((c) => c.listener === s.names.fp && c.status === 200));
    assert.equal(ctx.tunnelClose, 'idle');
  });
});

describe('forward proxy: shutdown', () => {
  test('graceful shutdown closes open CONNECT tunnels at the end of the grace period, reason shutdown', async (t) => {
    const quiet = net.createServer((socket) => socket.on('error', () => {}));
    await new Promise<void>((resolve) => quiet.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => quiet.close(() => resolve())));
    const port = (quiet.address() as AddressInfo).port;
    const s = await setup(t, () => ({ fp: { forward_proxy: localRules(port) } }));
    const client = net.connect(s.port('fp'), '127.0.0.1');
    let got = '';
    client.on('data', (d: Buffer) => (got += d.toString('latin1')));
    client.on('error', () => {});
    const closed = new Promise<void>((resolve) => client.on('close', () => resolve()));
    client.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await eventually(() => got.startsWith('HTTP/1.1 200'));
    const started = performance.now();
    await s.lb.balancer.close(300);
    await closed;
    const took = performance.now() - started;
    assert.ok(took >= 250 && took < 5000, `closed after ${Math.round(took)} ms (grace 300 ms)`);
    const ctx = await eventuallyDefined(() => s.lb.ended.find((c) => c.listener === s.names.fp));
    assert.equal(ctx.tunnelClose, 'shutdown');
  });
});

describe('forward proxy: IPv6 literals and upgrades', () => {
  test('[::1] destinations in brackets, absolute-form and CONNECT, checked against an IPv6 rule', async (t) => {
    const v6 = http.createServer((req, res) => res.end(`v6 ${req.headers.host} ${req.url}`));
    await new Promise<void>((resolve) => v6.listen(0, '::1', resolve));
    t.after(() => new Promise<void>((resolve) => {
      v6.closeAllConnections();
      v6.close(() => resolve());
    }));
    const port = (v6.address() as AddressInfo).port;
    const s = await setup(t, () => ({ fp: { forward_proxy: { rules: [{ name: 'v6', cidrs: ['::1/128'], ports: [port] }] } } }));
    const abs = await curl(['-x', s.proxy('fp'), `http://[::1]:${port}/six`]);
    assert.equal(abs.status, 200, abs.stderr);
    assert.equal(abs.body, `v6 [::1]:${port} /six`);
    const tunnel = await curl(['-p', '-x', s.proxy('fp'), `http://[::1]:${port}/tunnel`]);
    assert.equal(tunnel.connectStatus, 200, tunnel.stderr);
    assert.equal(tunnel.body, `v6 [::1]:${port} /tunnel`);
    // The same port on 127.0.0.1 is no rule's.
    assert.equal((await curl(['-x', s.proxy('fp'), `http://127.0.0.1:${port}/`])).status, 403);
    const ctx = await eventuallyDefined(() => s.lb.ended.find((c) => c.listener === s.names.fp));
    assert.equal(ctx.upstream?.id, `[::1]:${port}`);
  });

  test('a WebSocket handshake in absolute-form is relayed to the destination and becomes a tunnel', async (t) => {
    const ws = await startWsBackend(t);
    const s = await setup(t, () => ({ fp: { forward_proxy: localRules(ws.port) } }));
    const { text } = handshakeRequest(`http://127.0.0.1:${ws.port}/chat`, ['Proxy-Authorization: Basic Zm9vOmJhcg==']);
    const client = rawClient(t, s.port('fp'), text);
    const head = (await eventually(() => parseHead(client.received())))!;
    assert.equal(head.status, 101);
    client.socket.write(encodeFrame(1, Buffer.from('hello')));
    const frames = await eventually(() => {
      const f = decodeFrames(client.received(), head.end);
      return f.length > 0 ? f : null;
    });
    assert.equal(frames![0].payload.toString(), 'hello');
    assert.equal(ws.upgrades[0].url, '/chat');
    assert.equal(ws.upgrades[0].headers.host, `127.0.0.1:${ws.port}`);
    assert.equal(ws.upgrades[0].headers['proxy-authorization'], undefined);
  });
});

describe('forward proxy: Proxy-Authorization', () => {
  test('no credentials and wrong ones are 407 with Proxy-Authenticate; right ones pass; the destination never sees them', async (t) => {
    const hash = await hashPassword('s3cret', { N: 1024, r: 8, p: 1 });
    const s = await setup(t, (p) => ({ fp: { forward_proxy: { ...localRules(p.backend, p.canary), auth: { realm: 'test proxy', users: { alice: hash } } } } }));
    const url = `http://127.0.0.1:${s.backend.port}/auth`;
    const none = await curl(['-i', '-x', s.proxy('fp'), url]);
    assert.equal(none.status, 407);
    assert.match(none.body, /proxy-authenticate: Basic realm="test proxy", charset="UTF-8"/i);
    const wrong = await curl(['-x', s.proxy('fp'), '--proxy-user', 'alice:nope', url]);
    assert.equal(wrong.status, 407);
    const stranger = await curl(['-x', s.proxy('fp'), '--proxy-user', 'mallory:s3cret', url]);
    assert.equal(stranger.status, 407);
    const right = await curl(['-x', s.proxy('fp'), '--proxy-user', 'alice:s3cret', url]);
    assert.equal(right.status, 200);
    const seen = JSON.parse(right.body) as { headers: Record<string, string> };
    assert.equal(seen.headers['proxy-authorization'], undefined);
    // CONNECT: refused before anything is opened, then opened with the credentials.
    const tunnelNone = await curl(['-p', '-x', s.proxy('fp'), `http://127.0.0.1:${s.canary.port}/`]);
    assert.equal(tunnelNone.connectStatus, 407);
    assert.equal(s.canary.connections(), 0, 'no tunnel without credentials');
    const tunnel = await curl(['-p', '-x', s.proxy('fp'), '--proxy-user', 'alice:s3cret', url]);
    assert.equal(tunnel.connectStatus, 200);
    assert.equal(tunnel.status, 200);
    assert.equal((JSON.parse(tunnel.body) as { headers: Record<string, string> }).headers['proxy-authorization'], undefined);
    const m = await s.metrics();
    assert.equal(sample(m, 'lb_forward_proxy_denied_total', { listener: s.names.fp, reason: 'auth' }), 4);
    assert.equal(sample(m, 'lb_forward_proxy_requests_total', { listener: s.names.fp, method_kind: 'absolute', decision: 'allowed', rule: 'local' }), 1);
  });
});

describe('forward proxy: the /forward?url= route', () => {
  test('fetches an allowed URL; refuses the others as the listener form does; GET and HEAD only', async (t) => {
    const backend = await echoBackend(t);
    const canary = await startCanary(t);
    const name = `fp-route-${++counter}`;
    const lb = await startBalancer(t, {
      listeners: [{ name, host: '127.0.0.1', port: 0 }],
      pools: { web: { upstreams: [backend.url] } },
      routes: [
        { name: 'fetch', path_prefix: '/forward', forward_proxy: { rules: [{ name: 'local', cidrs: ['127.0.0.1/32'], ports: [backend.port] }, { name: 'public', ports: [80, canary.port] }] } },
        { name: 'site', pool: 'web' },
      ],
    });
    const fetch = (target: string, method = 'GET') => curl(['-X', method, `${lb.url}/forward?url=${encodeURIComponent(target)}`]);
    const ok = await fetch(`http://127.0.0.1:${backend.port}/x?a=1`);
    assert.equal(ok.status, 200);
    const seen = JSON.parse(ok.body) as { url: string; headers: Record<string, string> };
    assert.equal(seen.url, '/x?a=1');
    assert.equal(seen.headers.host, `127.0.0.1:${backend.port}`);
    for (const [target, status] of [[`http://127.0.0.1:${canary.port}/`, 403], ['http://10.0.0.1/', 403], [`http://localhost:${canary.port}/`, 403], ['https://127.0.0.1/', 400], ['ftp://127.0.0.1/', 400], ['not a url', 400]] as const) {
      const r = await fetch(target);
      assert.equal(r.status, status, target);
    }
    assert.equal((await curl([`${lb.url}/forward`])).status, 400, 'no url');
    const post = await curl(['-i', '-X', 'POST', `${lb.url}/forward?url=${encodeURIComponent(`http://127.0.0.1:${backend.port}/`)}`]);
    assert.equal(post.status, 405);
    assert.match(post.body, /allow: GET, HEAD/i);
    assert.equal(canary.connections(), 0);
    assert.equal((await curl([`${lb.url}/elsewhere`])).status, 200, 'the other routes are untouched');
    const m = (await lb.balancer.metrics.scrape()).body;
    assert.equal(sample(m, 'lb_forward_proxy_requests_total', { listener: name, method_kind: 'route', decision: 'allowed', rule: 'local' }), 1);
    assert.equal(sample(m, 'lb_forward_proxy_denied_total', { listener: name, reason: 'special_address' }), 3);
  });
});

describe('forward proxy: reloads', () => {
  for (const engine of ['fulcrum', 'node'] as const) {
    test(`engine ${engine}: a reload changes the rules in place; removing forward_proxy brings back 501 and routing`, async (t) => {
      const backend = await echoBackend(t);
      const name = `fp-reload-${++counter}`;
      const pools = { web: { upstreams: [backend.url] } };
      const listener = (forward_proxy?: ForwardInput): ListenerInput => ({ name, host: '127.0.0.1', port: 0, engine, ...(forward_proxy === undefined ? {} : { forward_proxy }) });
      const lb = await startBalancer(t, { listeners: [listener(localRules(backend.port))], pools });
      const proxy = `http://127.0.0.1:${lb.port}`;
      const target = `http://127.0.0.1:${backend.port}/r`;
      assert.equal((await curl(['-x', proxy, target])).status, 200);
      const bound = { ...listener(localRules(backend.port + 1)), port: lb.port };
      await lb.balancer.reload({ listeners: [bound], pools });
      const denied = await curl(['-x', proxy, target]);
      assert.equal(denied.status, 403, 'the new rules apply to the next request');
      assert.equal((await curl(['-p', '-x', proxy, target])).connectStatus, 403);
      await lb.balancer.reload({ listeners: [{ ...listener(), port: lb.port }], pools });
      const raw = await rawExchange(lb.port, `CONNECT 127.0.0.1:${backend.port} HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(raw, /^HTTP\/1\.1 501 /);
      const routed = await curl(['-x', proxy, `http://127.0.0.1:${backend.port + 1}/routed`]);
      assert.equal(routed.status, 200, 'absolute-form goes to the routes again');
      assert.equal((JSON.parse(routed.body) as { url: string }).url, '/routed');
    });
  }

  test('a reload whose forward_proxy cannot be built is refused, naming the place; the running rules stay', async (t) => {
    const backend = await echoBackend(t);
    const pools = { web: { upstreams: [backend.url] } };
    const lb = await startBalancer(t, { listeners: [{ name: `fp-bad-${++counter}`, host: '127.0.0.1', port: 0, forward_proxy: localRules(backend.port) }], pools });
    await assert.rejects(lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port, forward_proxy: { rules: [{ ports: ['9000-8000'] }] } }], pools }), (err: Error) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /listeners\[0\]\.forward_proxy: forward policy rule-0: ports/);
      return true;
    });
    assert.equal((await curl(['-x', `http://127.0.0.1:${lb.port}`, `http://127.0.0.1:${backend.port}/still`])).status, 200);
  });
});

describe('forward proxy: listeners without it, and engine node', () => {
  test('without forward_proxy: CONNECT stays 501 and absolute-form goes to the routes', async (t) => {
    const s = await setup(t, () => ({ plain: {} }));
    const raw = await rawExchange(s.port('plain'), `CONNECT 127.0.0.1:${s.canary.port} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.match(raw, /^HTTP\/1\.1 501 /);
    const r = await curl(['-x', s.proxy('plain'), `http://127.0.0.1:${s.canary.port}/abs`]);
    assert.equal(r.status, 200, 'routed to the pool like any request');
    assert.equal((JSON.parse(r.body) as { url: string }).url, '/abs');
    assert.equal(s.canary.connections(), 0);
  });

  test('forward_proxy.connect false: CONNECT is 501, absolute-form still served', async (t) => {
    const s = await setup(t, (p) => ({ fp: { forward_proxy: { ...localRules(p.backend), connect: false } } }));
    const raw = await rawExchange(s.port('fp'), `CONNECT 127.0.0.1:${s.backend.port} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.match(raw, /^HTTP\/1\.1 501 /);
    assert.equal((await curl(['-x', s.proxy('fp'), `http://127.0.0.1:${s.backend.port}/`])).status, 200);
  });

  test('engine node: absolute-form, CONNECT and refusals work the same', async (t) => {
    const s = await setup(t, (p) => ({ fp: { engine: 'node', forward_proxy: localRules(p.backend) } }));
    const abs = await curl(['-x', s.proxy('fp'), '-H', 'Proxy-Foo: x', `http://127.0.0.1:${s.backend.port}/n?x=1`]);
    assert.equal(abs.status, 200);
    const seen = JSON.parse(abs.body) as { url: string; headers: Record<string, string> };
    assert.equal(seen.url, '/n?x=1');
    assert.deepEqual(Object.keys(seen.headers).filter((h) => h.startsWith('proxy-')), []);
    const tunnel = await curl(['-p', '-x', s.proxy('fp'), `http://127.0.0.1:${s.backend.port}/t`]);
    assert.equal(tunnel.connectStatus, 200);
    assert.equal(tunnel.status, 200);
    const denied = await curl(['-p', '-x', s.proxy('fp'), `http://127.0.0.1:${s.canary.port}/`]);
    assert.equal(denied.connectStatus, 403);
    const bad = await rawExchange(s.port('fp'), 'CONNECT 127.0.0.1 HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.match(bad, /^HTTP\/1\.1 400 /);
    assert.equal(s.canary.connections(), 0);
  });
});
