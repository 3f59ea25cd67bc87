/**
 * WebSocket relaying (RFC 6455) end to end on real sockets: `ws` clients and backends, raw
 * handshakes where the exact bytes matter. Covers the handshake both ways, refusals, limits,
 * balancing, closes, backpressure and what tunnels show in metrics and the access log.
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { WebSocket } from 'ws';
import { get, startBackend, startBalancer, startRawBackend, type TestBalancer } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { acceptFor, decodeFrames, encodeFrame, handshakeRequest, headerValues, parseHead, rawClient, startWsBackend, wsOpen, wsRefused, type RawClient, type RawHead } from '../helpers/websocket.ts';
import { tunnelOpen, type TunnelEvent } from '../../src/core/events.ts';
import type { Exchange } from '../../src/proxy/exchange.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';
import { mulberry32 } from '../helpers/random.ts';

const MiB = 1024 * 1024;

const seeded = mulberry32;

const sha1 = (data: Buffer | string): string => createHash('sha1').update(data).digest('hex');

/** How a message is compared: kind, length in bytes and hash (order is the array's). */
const fingerprint = (data: Buffer | string, binary: boolean): string => `${binary ? 'binary' : 'text'}:${Buffer.byteLength(data)}:${sha1(data)}`;

/** The response head once it arrived on a raw client. */
async function headOf(client: RawClient, from = 0): Promise<RawHead> {
  return (await eventually(() => parseHead(client.received(), from), { what: 'a response head' }))!;
}

/** The frames after `from` once `count` complete ones arrived on a raw client. */
async function framesOf(client: RawClient, from: number, count: number): Promise<{ opcode: number; payload: Buffer }[]> {
  return eventually(() => {
    const frames = decodeFrames(client.received(), from);
    return frames.length >= count ? frames : null;
  }, { what: `${count} frame(s)` }).then((frames) => frames!);
}

let balancers = 0;

/** A balancer of this file: `name` is its listener's own, for telling its exchanges and log lines from other balancers'. */
type WsBalancer = TestBalancer & { name: string };

/**
 * startBalancer with a listener named for this balancer: the request-end channel and the access
 * log are process-wide, and an earlier test's tunnel may still be closing while the next runs.
 */
async function startWsBalancer(t: TestContext, pools: FulcrumConfigInput['pools'], limits: { max_tunnels?: number; max_tunnels_per_ip?: number } = {}): Promise<WsBalancer> {
  const name = `websocket-test-${++balancers}`;
  const lb = await startBalancer(t, { listeners: [{ name, host: '127.0.0.1', port: 0, limits }], pools });
  return { ...lb, name };
}

/** The exchanges this balancer finished, in order. */
function ends(lb: WsBalancer): Exchange[] {
  return lb.ended.filter((c) => c.listener === lb.name) as Exchange[];
}

/** A tunnel's exchange once it ended. */
function endedTunnel(lb: WsBalancer, index = 0): Promise<Exchange> {
  return eventually(() => ends(lb).filter((c) => c.kind === 'tunnel')[index], { what: `tunnel ${index} to end` });
}

/** This balancer's access-log records (parsed) that describe a tunnel. */
function tunnelLogLines(lb: WsBalancer): Record<string, unknown>[] {
  return lb.logs
    .flatMap((l) => l.split('\n'))
    .filter((l) => l.includes('"tunnel_close"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.listener === lb.name);
}

/** One sample's value from a Prometheus text body, matched on name and the given labels (undefined when absent). */
function metric(body: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of body.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((p) => [p[1], p[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

/** Waits (with a deadline) for a `ws` socket's close event, listened for from the call on: its code. */
async function closeCode(ws: WebSocket, what = 'the WebSocket to close'): Promise<number> {
  let code: number | null = null;
  ws.once('close', (c) => (code = c));
  return (await eventually(() => code, { what }))!;
}

describe('websocket relay', () => {
  test('echoes 10,000 messages of mixed sizes and kinds intact and in order', async (t) => {
    const backend = await startWsBackend(t);
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const random = seeded(6455);
    const bytes = randomBytes(512 * 1024);
    const text = 'ascii text, ünïcödé, ✓ ★ '.repeat(20_000);
    // Frame length encodings change at 126 and 65536 bytes: both sides of each, and the largest.
    const fixed = new Map<number, number>([[0, 0], [1, 125], [2, 126], [3, 65_535], [4, 65_536], [5, 256 * 1024], [7, 0]]);
    const expected: string[] = [];
    const ws = await wsOpen(t, lb.url);
    const received: string[] = [];
    ws.on('message', (data, isBinary) => received.push(fingerprint(data as Buffer, isBinary)));
    let sent = 0;
    for (let i = 0; i < 10_000; i++) {
      const r = random();
      const size = fixed.get(i) ?? (i % 97 === 0 ? 192 * 1024 + Math.floor(r * 64 * 1024) : i % 10 === 0 ? Math.floor(r * 16 * 1024) : i % 500 === 3 ? 0 : Math.floor(r * 1024));
      const binary = i % 3 !== 0;
      const offset = Math.floor(random() * (bytes.length - size));
      // Text by characters: a multi-byte character may make it a little longer in bytes.
      const payload: Buffer | string = binary ? bytes.subarray(offset, offset + size) : text.slice(offset % 1000, (offset % 1000) + size);
      expected.push(fingerprint(payload, binary));
      sent += Buffer.byteLength(payload);
      ws.send(payload, { binary });
    }
    await eventually(() => received.length === 10_000, { timeout: 20_000, what: '10,000 echoes' });
    assert.equal(received.length, expected.length);
    for (let i = 0; i < expected.length; i++) if (received[i] !== expected[i]) assert.fail(`message ${i}: sent ${expected[i]}, got back ${received[i]}`);
    assert.ok(sent > 20 * MiB, `sent ${sent} bytes`);
    t.diagnostic(`echoed ${sent} payload bytes each way`);
  });

  test('relays the 101 once, with the upstream handshake headers and forwarding headers', async (t) => {
    const backend = await startWsBackend(t, { protocol: (offered) => (offered.has('chat') ? 'chat' : false), headers: ['X-Backend: ws-1'] });
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const { text, key } = handshakeRequest('/chat?room=1', ['Sec-WebSocket-Protocol: chat, superchat', 'Origin: http://app.example']);
    const client = rawClient(t, lb.port, text);
    const head = await headOf(client);
    assert.equal(head.statusLine, 'HTTP/1.1 101 Switching Protocols');
    assert.deepEqual(headerValues(head, 'upgrade'), ['websocket']);
    assert.deepEqual(headerValues(head, 'connection').map((v) => v.toLowerCase()), ['upgrade']);
    assert.deepEqual(headerValues(head, 'sec-websocket-accept'), [acceptFor(key)]);
    assert.deepEqual(headerValues(head, 'sec-websocket-protocol'), ['chat']);
    assert.deepEqual(headerValues(head, 'x-backend'), ['ws-1']);
    // A 101 has no body (RFC 9110 section 15.2): no framing header may follow it.
    assert.deepEqual(headerValues(head, 'content-length'), []);
    assert.deepEqual(headerValues(head, 'transfer-encoding'), []);

    assert.equal(backend.upgrades.length, 1);
    const up = backend.upgrades[0];
    const raw = up.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    assert.equal(raw.filter((n) => n === 'connection').length, 1);
    assert.equal(raw.filter((n) => n === 'upgrade').length, 1);
    assert.equal(up.headers.connection, 'upgrade');
    assert.equal(up.headers.upgrade, 'websocket');
    assert.equal(up.headers['sec-websocket-key'], key);
    assert.equal(up.headers['sec-websocket-version'], '13');
    assert.equal(up.headers['sec-websocket-protocol'], 'chat, superchat');
    assert.equal(up.headers.origin, 'http://app.example');
    assert.equal(up.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(up.headers['x-forwarded-proto'], 'http');
    assert.equal(up.url, '/chat?room=1');

    // The tunnel carries frames both ways.
    client.socket.write(encodeFrame(0x1, Buffer.from('hello through fulcrum')));
    const frames = await framesOf(client, head.end, 1);
    assert.equal(frames.length, 1);
    assert.equal(frames[0].opcode, 0x1);
    assert.equal(frames[0].payload.toString(), 'hello through fulcrum');
  });

  test('bytes sent together with the handshake, by either side, are relayed first', async (t) => {
    const early = encodeFrame(0x1, Buffer.from('sent before the 101'));
    let afterHead = Buffer.alloc(0);
    const backend = await startRawBackend(t, (socket) => {
      let buffered = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        if (afterHead.length > 0 || buffered.includes('\r\n\r\n')) return void (afterHead = Buffer.concat([afterHead, d]));
        buffered = Buffer.concat([buffered, d]);
        const end = buffered.indexOf('\r\n\r\n');
        if (end === -1) return;
        const key = /\r\nsec-websocket-key: *(\S+)/i.exec(buffered.toString('latin1'))![1];
        afterHead = buffered.subarray(end + 4);
        // The 101 and a first frame in one write: they reach Fulcrum in one read.
        socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n\r\n`), encodeFrame(0x1, Buffer.from('welcome'), false)]));
      });
    });
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const client = rawClient(t, lb.port, handshakeRequest('/ws').text + early.toString('latin1'));
    const head = await headOf(client);
    assert.equal(head.status, 101);
    const frames = await framesOf(client, head.end, 1);
    assert.equal(frames.length, 1);
    assert.equal(frames[0].payload.toString(), 'welcome');
    await eventually(() => afterHead.length >= early.length, { what: 'the early frame to reach the backend' });
    assert.deepEqual(afterHead, early);
  });

  for (const [status, body, extra] of [
    [403, 'origin not allowed\n', ['x-reason', 'origin']],
    [401, 'log in first\n', ['www-authenticate', 'Bearer realm="chat"']],
  ] as const) {
    test(`a backend refusing the upgrade with ${status}: the client gets it as is, then the close`, async (t) => {
      const backend = await startBackend(t, (_req, res) => {
        res.writeHead(status, ['content-type', 'text/plain', 'content-length', String(Buffer.byteLength(body)), ...extra]);
        res.end(body);
      });
      const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
      const client = rawClient(t, lb.port, handshakeRequest('/ws').text);
      await eventually(() => client.closed(), { what: 'the client connection to close' });
      const data = client.received();
      const head = parseHead(data)!;
      assert.equal(head.statusLine, `HTTP/1.1 ${status} ${status === 403 ? 'Forbidden' : 'Unauthorized'}`);
      assert.deepEqual(headerValues(head, extra[0]), [extra[1]]);
      assert.deepEqual(headerValues(head, 'upgrade'), []);
      assert.equal(data.toString('latin1', head.end), body);
      assert.equal(backend.requests.length, 1);
      assert.equal(backend.requests[0].headers.upgrade, 'websocket');
      const ctx = await eventually(() => ends(lb)[0]);
      assert.equal(ctx.status, status);
      assert.equal(ctx.kind, 'request');
    });
  }

  test('malformed handshakes get 400 and never reach the backend', async (t) => {
    const backend = await startWsBackend(t);
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const key = randomBytes(16).toString('base64');
    const base = (method: string, version: string, lines: string[], body = ''): string => `${method} /ws HTTP/${version}\r\nHost: fulcrum.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n${body}`;
    const cases: { name: string; text: string; version13: boolean }[] = [
      { name: 'no Sec-WebSocket-Key', text: base('GET', '1.1', ['Sec-WebSocket-Version: 13']), version13: false },
      { name: 'a 10-byte key', text: base('GET', '1.1', [`Sec-WebSocket-Key: ${Buffer.from('the sample').toString('base64')}`, 'Sec-WebSocket-Version: 13']), version13: false },
      { name: 'a key that is not base64', text: base('GET', '1.1', ['Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==', 'Sec-WebSocket-Version: 13']), version13: false },
      { name: 'version 8', text: base('GET', '1.1', [`Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 8']), version13: true },
      { name: 'no version', text: base('GET', '1.1', [`Sec-WebSocket-Key: ${key}`]), version13: true },
      { name: 'a body', text: base('GET', '1.1', [`Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13', 'Content-Length: 5'], 'hello'), version13: false },
      { name: 'POST', text: base('POST', '1.1', [`Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13', 'Content-Length: 0']), version13: false },
      { name: 'HTTP/1.0', text: base('GET', '1.0', [`Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13']), version13: false },
    ];
    for (const c of cases) {
      const client = rawClient(t, lb.port, c.text);
      await eventually(() => client.closed(), { what: `the connection to close after ${c.name}` });
      const head = parseHead(client.received());
      assert.ok(head !== null, `${c.name}: no answer`);
      assert.equal(head.status, 400, `${c.name}: ${head.statusLine}`);
      assert.deepEqual(headerValues(head, 'sec-websocket-version'), c.version13 ? ['13'] : [], c.name);
      assert.deepEqual(headerValues(head, 'upgrade'), [], c.name);
    }
    assert.equal(ends(lb).length, cases.length);
    assert.deepEqual(ends(lb).map((c) => c.error?.code), cases.map(() => 'FUL_BAD_REQUEST'));
    assert.equal(backend.upgrades.length, 0);
    assert.equal(backend.requests.length, 0);
  });

  test('handshakes pass the same guards and routes as any request: firewall, rate limit, no route; a refusal holds no tunnel slot', async (t) => {
    const backend = await startWsBackend(t);
    const name = `websocket-test-${++balancers}`;
    const lb: WsBalancer = {
      ...(await startBalancer(t, {
        listeners: [{ name, host: '127.0.0.1', port: 0, limits: { max_tunnels: 1 } }],
        routes: [
          { path_prefix: '/ws', pool: 'ws', rate_limits: [{ rate: 1, per: '1m', burst: 1 }] },
          { path_prefix: '/private', pool: 'ws', firewall: { deny: ['127.0.0.0/8'] } },
        ],
        pools: { ws: { upstreams: [backend.url] } },
      })),
      name,
    };
    const denied = await wsRefused(`ws://127.0.0.1:${lb.port}/private`);
    assert.equal(denied.status, 403);
    const unrouted = await wsRefused(`ws://127.0.0.1:${lb.port}/elsewhere`);
    assert.equal(unrouted.status, 404);
    // Refused handshakes held no slot: with max_tunnels 1 the next one still opens.
    const ws = await wsOpen(t, `ws://127.0.0.1:${lb.port}/ws`);
    ws.close();
    await endedTunnel(lb);
    const limited = await wsRefused(`ws://127.0.0.1:${lb.port}/ws`);
    assert.equal(limited.status, 429);
    assert.equal(limited.headers['retry-after'] !== undefined, true);
    assert.deepEqual(ends(lb).map((c) => c.error?.code ?? c.status), ['FUL_FIREWALL_DENIED', 'FUL_NO_ROUTE', 101, 'FUL_RATE_LIMITED']);
    assert.equal(backend.upgrades.length, 1, 'only the handshake the guards let through reached the backend');
  });

  test('Upgrade: h2c is answered as a plain request; Upgrade: foo gets 501', async (t) => {
    const backend = await startWsBackend(t);
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const h2c = rawClient(t, lb.port, 'GET /h2 HTTP/1.1\r\nHost: fulcrum.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n');
    const head = await headOf(h2c);
    assert.equal(head.status, 200);
    assert.deepEqual(headerValues(head, 'upgrade'), []);
    await eventually(() => h2c.received().length >= head.end + 5);
    assert.equal(h2c.received().toString('latin1', head.end), 'plain');
    assert.equal(backend.requests.length, 1);
    assert.equal(backend.requests[0].headers.upgrade, undefined);

    const foo = rawClient(t, lb.port, 'GET /foo HTTP/1.1\r\nHost: fulcrum.test\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n');
    await eventually(() => foo.closed(), { what: 'the connection to close after the 501' });
    assert.equal(parseHead(foo.received())!.status, 501);
    assert.equal(ends(lb).at(-1)!.error?.code, 'FUL_UPGRADE_NOT_SUPPORTED');
    assert.equal(backend.requests.length, 1);
    assert.equal(backend.upgrades.length, 0);
  });

  for (const transport of ['http1', 'undici', 'node-http'] as const) {
    test(`a 101 to a request that asked for no upgrade is a 502 (${transport})`, async (t) => {
      const backend = await startRawBackend(t, (socket) => {
        socket.once('data', () => socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'));
      });
      const lb = await startWsBalancer(t, { ws: { transport, upstreams: [backend.url] } });
      const res = await get(`${lb.url}/plain`);
      assert.equal(res.status, 502);
      const ctx = await eventually(() => ends(lb)[0]);
      assert.equal(ctx.status, 502);
      assert.equal(ctx.kind, 'request');
      t.diagnostic(`error ${ctx.error?.code}, attempts ${ctx.attempts}, backend connections ${backend.sockets.length}`);
      // The same answer whatever the transport: a protocol error, not a reset worth trying again.
      assert.equal(ctx.error?.code, 'FUL_UPSTREAM_PROTOCOL_ERROR');
      assert.equal(ctx.attempts, 1);
      assert.equal(backend.sockets.length, 1);
    });
  }

  for (const [name, answer] of [
    ['a wrong Sec-WebSocket-Accept', (_key: string) => 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n'],
    ['Upgrade: foo', (key: string) => `Upgrade: foo\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n`],
  ] as const) {
    test(`a backend switching with ${name} gets 502 and the client connection closes`, async (t) => {
      const backend = await startRawBackend(t, (socket) => {
        let buffered = '';
        socket.on('data', (d) => {
          buffered += d.toString('latin1');
          const key = /\r\nsec-websocket-key: *(\S+)/i.exec(buffered)?.[1];
          if (key !== undefined && buffered.includes('\r\n\r\n')) socket.write(`HTTP/1.1 101 Switching Protocols\r\n${answer(key)}\r\n`);
        });
      });
      const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
      const client = rawClient(t, lb.port, handshakeRequest('/ws').text);
      await eventually(() => client.closed(), { what: 'the client connection to close' });
      const head = parseHead(client.received());
      assert.equal(head?.status, 502);
      const ctx = await eventually(() => ends(lb)[0]);
      assert.equal(ctx.status, 502);
      assert.equal(ctx.error?.code, 'FUL_UPSTREAM_PROTOCOL_ERROR');
      assert.equal(ctx.kind, 'request');
      assert.equal(backend.sockets.length, 1);
      await eventually(() => backend.sockets[0].destroyed, { what: 'the upstream socket to close' });
    });
  }

  describe('limits', () => {
    test('tunnel_idle closes a silent tunnel', async (t) => {
      const backend = await startWsBackend(t);
      const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url], timeouts: { tunnel_idle: '300ms' } } });
      const ws = await wsOpen(t, lb.url);
      const opened = performance.now();
      const backendCode = eventually(() => backend.sockets[0], { what: 'the backend side' }).then((socket) => closeCode(socket, 'the backend side to close'));
      const code = await closeCode(ws);
      const after = performance.now() - opened;
      // Fulcrum closes between two frames with a Close frame each way: 1001 Going Away, not a dropped connection (1006).
      assert.equal(code, 1001);
      assert.equal(await backendCode, 1001);
      assert.ok(after >= 290 && after < 2000, `closed after ${after.toFixed(0)} ms`);
      const ctx = await endedTunnel(lb);
      assert.equal(ctx.tunnelClose, 'idle');
      assert.equal(ctx.status, 101);
      await eventually(() => backend.sockets[0].readyState === WebSocket.CLOSED, { what: 'the backend side to close' });
      const [line] = tunnelLogLines(lb);
      assert.equal(line.tunnel_close, 'idle');
      assert.equal(line.status, 101);
      t.diagnostic(`silent tunnel closed after ${after.toFixed(0)} ms`);
    });

    test('tunnel_idle keeps a tunnel where the client pings every 100 ms', async (t) => {
      const backend = await startWsBackend(t);
      const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url], timeouts: { tunnel_idle: '300ms' } } });
      const ws = await wsOpen(t, lb.url);
      const opened = performance.now();
      let pongs = 0;
      let closed = false;
      ws.on('pong', () => pongs++);
      ws.on('close', () => (closed = true));
      const pinger = setInterval(() => ws.ping(), 100);
      t.after(() => clearInterval(pinger));
      // Twelve pongs: the tunnel lived through more than three idle periods.
      await eventually(() => pongs >= 12 || closed, { timeout: 5000, what: 'twelve pongs' });
      clearInterval(pinger);
      const lived = performance.now() - opened;
      assert.equal(closed, false);
      assert.equal(ws.readyState, WebSocket.OPEN);
      assert.ok(lived > 1000, `open for ${lived.toFixed(0)} ms`);
      assert.equal(ends(lb).length, 0);
      // And it still relays.
      let echoed = '';
      ws.once('message', (d) => (echoed = String(d)));
      ws.send('still here');
      assert.equal(await eventually(() => echoed), 'still here');
    });

    test('max_tunnels: the third handshake gets 503 while two are open, and succeeds after one closes', async (t) => {
      const backend = await startWsBackend(t);
      const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } }, { max_tunnels: 2 });
      const first = await wsOpen(t, lb.url);
      await wsOpen(t, lb.url);
      const refused = await wsRefused(lb.url);
      assert.equal(refused.status, 503);
      assert.equal(refused.headers['retry-after'], '1');
      assert.match(refused.body, /^503 Service Unavailable: listener .* has its most tunnels open \(limits\.max_tunnels 2\)\n/);
      const ctx = (await eventually(() => ends(lb).find((c) => c.status === 503)))!;
      assert.equal(ctx.error?.code, 'FUL_TUNNEL_LIMIT');
      assert.equal(backend.upgrades.length, 2);
      first.close(1000, 'bye');
      await endedTunnel(lb);
      const third = await wsOpen(t, lb.url);
      assert.equal(third.readyState, WebSocket.OPEN);
      assert.equal(backend.upgrades.length, 3);
    });

    test('max_tunnels_per_ip: the second tunnel from the same address gets 429', async (t) => {
      const backend = await startWsBackend(t);
      const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } }, { max_tunnels_per_ip: 1 });
      const first = await wsOpen(t, lb.url);
      const refused = await wsRefused(lb.url);
      assert.equal(refused.status, 429);
      assert.equal(refused.headers['retry-after'], '1');
      assert.match(refused.body, /limits\.max_tunnels_per_ip 1/);
      assert.equal((await eventually(() => ends(lb).find((c) => c.status === 429)))!.error?.code, 'FUL_TUNNEL_LIMIT');
      assert.equal(backend.upgrades.length, 1);
      first.terminate();
      await endedTunnel(lb);
      await wsOpen(t, lb.url);
      assert.equal(backend.upgrades.length, 2);
    });
  });

  test('a tunnel counts as in flight on its upstream for its whole life (least-connections)', async (t) => {
    const a = await startWsBackend(t, { http: (_req, res) => res.end('a') });
    const b = await startWsBackend(t, { http: (_req, res) => res.end('b') });
    const lb = await startWsBalancer(t, { ws: { policy: 'least-connections', upstreams: [a.url, b.url] } });
    const upstream = (port: number) => lb.balancer.pools().get('ws')!.upstreams.find((u) => u.port === port)!;
    await lb.balancer.updateBackend({ url: b.url, enabled: false });
    const tunnels = [await wsOpen(t, lb.url), await wsOpen(t, lb.url), await wsOpen(t, lb.url)];
    assert.equal(a.upgrades.length, 3);
    assert.equal(b.upgrades.length, 0);
    await lb.balancer.updateBackend({ url: b.url, enabled: true });
    assert.equal(upstream(a.port).inFlight, 3);
    assert.equal(upstream(b.port).inFlight, 0);
    const bodies: string[] = [];
    for (let i = 0; i < 4; i++) bodies.push((await get(`${lb.url}/plain`)).body);
    assert.deepEqual(bodies, ['b', 'b', 'b', 'b']);
    assert.equal(upstream(a.port).inFlight, 3);
    for (const ws of tunnels) ws.close(1000);
    await eventually(() => ends(lb).filter((c) => c.kind === 'tunnel').length === 3, { what: 'three tunnels to end' });
    assert.equal(upstream(a.port).inFlight, 0);
    assert.equal(upstream(b.port).inFlight, 0);
  });

  test('a client half-close (FIN) closes the backend side and ends the tunnel', async (t) => {
    const backend = await startWsBackend(t);
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const client = rawClient(t, lb.port, handshakeRequest('/ws').text);
    assert.equal((await headOf(client)).status, 101);
    await eventually(() => backend.sockets.length === 1);
    const backendClosed = closeCode(backend.sockets[0], 'the backend side to close');
    client.socket.end();
    assert.equal(await backendClosed, 1006);
    await eventually(() => client.closed(), { what: 'the client socket to close' });
    const ctx = await endedTunnel(lb);
    assert.equal(ctx.kind, 'tunnel');
    assert.equal(ctx.status, 101);
    assert.equal(ctx.tunnelClose, 'client');
  });

  test('a backend destroying its socket closes the client', async (t) => {
    const backend = await startWsBackend(t, { onSocket: (ws) => ws.on('message', () => ws.terminate()) });
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const ws = await wsOpen(t, lb.url);
    const closed = closeCode(ws);
    ws.send('go away');
    assert.equal(await closed, 1006);
    const ctx = await endedTunnel(lb);
    assert.equal(ctx.status, 101);
    assert.equal(ctx.tunnelClose, 'upstream');
  });

  test('backpressure: 64 MiB to a client that stops reading stays in the backend, then arrives intact', async (t) => {
    const source = randomBytes(2 * MiB);
    const messages = 64;
    // Views into one buffer: the backend holds 64 distinct messages in 2 MiB.
    const message = (i: number): Buffer => source.subarray(i * 16 * 1024, i * 16 * 1024 + MiB);
    let sender: WebSocket | null = null;
    const backend = await startWsBackend(t, {
      onSocket: (ws) => {
        sender = ws;
        ws.once('message', () => {
          for (let i = 0; i < messages; i++) ws.send(message(i), { binary: true });
        });
      },
    });
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    let tunnel: Exchange | null = null;
    const onOpen = (m: unknown): void => void (tunnel = (m as TunnelEvent).ctx as Exchange);
    tunnelOpen.subscribe(onOpen);
    t.after(() => tunnelOpen.unsubscribe(onOpen));
    const ws = await wsOpen(t, lb.url);
    const received: string[] = [];
    ws.on('message', (data) => received.push(sha1(data as Buffer)));
    await eventually(() => tunnel !== null && sender !== null);
    const ctx = tunnel!;
    // Test-only look at the tunnel's sockets (private fields).
    const clientSide = (ctx.tunnel as unknown as { client: Socket }).client;
    const upstreamSide = (ctx.tunnel as unknown as { upstream: Socket }).upstream;
    const rssBefore = process.memoryUsage().rss;
    ws.pause();
    ws.send('go');
    // Fulcrum stops reading the backend once its write to the client is refused.
    await eventually(() => clientSide.writableNeedDrain && upstreamSide.isPaused() && sender!.bufferedAmount > 0, { timeout: 10_000, what: 'backpressure to reach the backend' });
    const held = clientSide.writableLength + upstreamSide.readableLength;
    const backendBuffered = sender!.bufferedAmount;
    const rssGrowth = process.memoryUsage().rss - rssBefore;
    const total = messages * (MiB + 10);
    t.diagnostic(`paused: Fulcrum read ${ctx.bytesOut} of ${total} bytes, holds ${held} in its socket buffers; backend buffered ${backendBuffered}; client got ${received.length} messages; RSS +${(rssGrowth / MiB).toFixed(1)} MiB`);
    assert.equal(received.length, 0);
    assert.ok(held <= 1 * MiB, `Fulcrum holds ${held} bytes`);
    assert.ok(backendBuffered >= 40 * MiB, `backend buffered only ${backendBuffered} bytes`);
    assert.ok(ctx.bytesOut <= 24 * MiB, `Fulcrum read ${ctx.bytesOut} bytes from the backend while the client was paused`);
    assert.ok(rssGrowth < 32 * MiB, `RSS grew ${rssGrowth} bytes`);
    ws.resume();
    await eventually(() => received.length === messages, { timeout: 20_000, what: `all ${messages} messages` });
    assert.deepEqual(received, Array.from({ length: messages }, (_, i) => sha1(message(i))));
    assert.equal(sender!.bufferedAmount, 0);
  });

  test('metrics and the access log describe tunnels', async (t) => {
    const backend = await startWsBackend(t, {
      onSocket: (ws) =>
        ws.on('message', (data, isBinary) => {
          if (String(data) === 'die') return ws.terminate();
          // Answers each message with twice its bytes, so the two directions differ.
          ws.send(Buffer.concat([data as Buffer, data as Buffer]), { binary: isBinary });
        }),
    });
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const id = lb.balancer.pools().get('ws')!.upstreams[0].id;
    const payload = randomBytes(100_000);
    const one = await wsOpen(t, lb.url);
    const two = await wsOpen(t, lb.url);
    let echoed = 0;
    for (const ws of [one, two]) ws.on('message', (d) => (echoed += (d as Buffer).length));
    for (const ws of [one, two]) for (let i = 0; i < 5; i++) ws.send(payload);
    await eventually(() => echoed === 2 * 5 * 2 * payload.length, { what: 'the echoes' });
    const sentUp = 2 * 5 * payload.length;
    const sentDown = 2 * sentUp;

    let body = (await lb.balancer.metrics.scrape()).body;
    assert.equal(metric(body, 'lb_tunnels_open', { pool: 'ws', backend: id }), 2);
    assert.equal(metric(body, 'lb_tunnels_opened_total', { pool: 'ws', backend: id }), 2);
    // Open tunnels count their bytes at each scrape.
    assert.ok(metric(body, 'lb_tunnel_bytes_total', { pool: 'ws', direction: 'upstream' })! >= sentUp);
    assert.ok(metric(body, 'lb_tunnel_bytes_total', { pool: 'ws', direction: 'downstream' })! >= sentDown);

    const oneClosed = closeCode(one);
    one.terminate();
    await oneClosed;
    const twoClosed = closeCode(two);
    two.send('die');
    await twoClosed;
    await eventually(() => ends(lb).filter((c) => c.kind === 'tunnel').length === 2, { what: 'both tunnels to end' });

    body = (await lb.balancer.metrics.scrape()).body;
    assert.equal(metric(body, 'lb_tunnels_open', { pool: 'ws', backend: id }), 0);
    assert.equal(metric(body, 'lb_tunnels_opened_total', { pool: 'ws', backend: id }), 2);
    assert.equal(metric(body, 'lb_tunnels_closed_total', { pool: 'ws', reason: 'client' }), 1);
    assert.equal(metric(body, 'lb_tunnels_closed_total', { pool: 'ws', reason: 'upstream' }), 1);
    assert.equal(metric(body, 'lb_tunnels_closed_total', { pool: 'ws', reason: 'idle' }), undefined);
    const up = metric(body, 'lb_tunnel_bytes_total', { pool: 'ws', direction: 'upstream' })!;
    const down = metric(body, 'lb_tunnel_bytes_total', { pool: 'ws', direction: 'downstream' })!;
    // Frame headers and masks add a little: at most 1% more than the payloads.
    assert.ok(up >= sentUp + 3 && up <= sentUp * 1.01, `upstream bytes ${up} for ${sentUp} payload bytes`);
    assert.ok(down >= sentDown && down <= sentDown * 1.01, `downstream bytes ${down} for ${sentDown} payload bytes`);
    assert.equal(metric(body, 'lb_tunnel_duration_seconds_count', { pool: 'ws' }), 2);
    // A tunnel's life is not a request latency.
    assert.equal(metric(body, 'lb_request_duration_seconds_count', { pool: 'ws' }) ?? 0, 0);

    const lines = tunnelLogLines(lb);
    assert.equal(lines.length, 2);
    assert.deepEqual(lines.map((l) => l.tunnel_close).sort(), ['client', 'upstream']);
    for (const line of lines) {
      assert.equal(line.status, 101);
      assert.equal(line.method, 'GET');
      assert.equal(line.upstream, id);
      assert.equal(line.pool, 'ws');
      assert.ok((line.bytes_in as number) >= sentUp / 2, `bytes_in ${line.bytes_in}`);
      assert.ok((line.bytes_out as number) >= sentDown / 2, `bytes_out ${line.bytes_out}`);
    }
    assert.equal(lines.reduce((n, l) => n + (l.bytes_in as number), 0), up);
    assert.equal(lines.reduce((n, l) => n + (l.bytes_out as number), 0), down);
    t.diagnostic(`relayed ${up} bytes up (${sentUp} payload), ${down} down (${sentDown} payload)`);
  });

  test('a pipelined request then a handshake on one connection: the first answer comes first, then the 101', async (t) => {
    const backend = await startWsBackend(t, {
      // Slow enough that the handshake is parsed while the first answer is still on its way.
      http: (_req, res) => void setTimeout(() => res.end('first'), 100),
    });
    const lb = await startWsBalancer(t, { ws: { upstreams: [backend.url] } });
    const { text, key } = handshakeRequest('/ws');
    const client = rawClient(t, lb.port, `GET /slow HTTP/1.1\r\nHost: fulcrum.test\r\n\r\n${text}`);
    const first = await headOf(client);
    assert.equal(first.status, 200);
    assert.deepEqual(headerValues(first, 'content-length'), ['5']);
    const second = await headOf(client, first.end + 5);
    assert.equal(client.received().toString('latin1', first.end, first.end + 5), 'first');
    assert.equal(second.status, 101);
    assert.deepEqual(headerValues(second, 'sec-websocket-accept'), [acceptFor(key)]);
    client.socket.write(encodeFrame(0x2, Buffer.from([1, 2, 3])));
    const frames = await framesOf(client, second.end, 1);
    assert.equal(frames.length, 1);
    assert.deepEqual([...frames[0].payload], [1, 2, 3]);
    assert.equal(backend.requests.length, 1);
    assert.equal(backend.upgrades.length, 1);
  });
});

