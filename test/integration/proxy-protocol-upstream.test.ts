/**
 * The PROXY protocol toward HTTP/1.1 upstreams (pool `proxy_protocol: v1 | v2`, Fulcrum's own
 * client): each new upstream connection starts with a header naming the client connection's
 * two ends (and for v2 the TLS SNI), in the same write as its first request head; such a
 * connection is reused only for the same client connection. The backend here reads the header
 * with the codec Fulcrum itself uses (src/listeners/proxy-protocol.ts), then HTTP.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { parseProxyHeader, type ProxyHeader } from '../../src/listeners/proxy-protocol.ts';
import { startBalancer, startRawBackend } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';

/** One upstream connection as the backend saw it. */
interface SeenConnection {
  id: number;
  /** The PROXY header it started with, or null when it started with anything else. */
  header: ProxyHeader | null;
  /** The bytes of its first read (header and first request head together when written at once). */
  firstRead: Buffer;
  /** Requests it carried. */
  requests: number;
  /** The request bodies it carried (Content-Length or one chunk). */
  bodies: string[];
  socket: net.Socket;
}

interface ParsingBackend {
  url: string;
  connections: SeenConnection[];
  /** Requests waiting for `release()` (with `hold`). */
  held: (() => void)[];
  /** Open connections now. */
  open(): number;
}

/**
 * A backend that reads an optional PROXY header, then HTTP/1.1 requests (bodies by Content-Length, or one chunk), and answers
 * each with JSON `{ connection, n }` (which upstream connection carried it, the how-many-th on it).
 * With `hold`, answers wait in `held` until called.
 */
async function parsingBackend(t: TestContext, hold = false): Promise<ParsingBackend> {
  const connections: SeenConnection[] = [];
  const held: (() => void)[] = [];
  let open = 0;
  const { port } = await startRawBackend(t, (socket) => {
    open++;
    socket.on('close', () => open--);
    const seen: SeenConnection = { id: connections.length, header: null, firstRead: Buffer.alloc(0), requests: 0, bodies: [], socket };
    connections.push(seen);
    let buffered = Buffer.alloc(0);
    let headerDone = false;
    socket.on('data', (d: Buffer) => {
      if (seen.firstRead.length === 0) seen.firstRead = d;
      buffered = Buffer.concat([buffered, d]);
      if (!headerDone) {
        const parsed = parseProxyHeader(buffered);
        if (parsed.kind === 'incomplete') return;
        headerDone = true;
        if (parsed.kind === 'header') {
          seen.header = parsed.header;
          buffered = buffered.subarray(parsed.header.length);
        }
      }
      for (;;) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buffered.subarray(0, end).toString('latin1');
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
          // Only the bodies these tests send chunked: one chunk, then the last.
          const last = buffered.indexOf('\r\n0\r\n\r\n', end);
          if (last === -1) return;
          const chunked = buffered.subarray(end + 4, last + 2).toString('latin1');
          seen.bodies.push(chunked.slice(chunked.indexOf('\r\n') + 2, -2));
          buffered = buffered.subarray(last + 7);
        } else {
          if (buffered.length < end + 4 + length) return;
          seen.bodies.push(buffered.subarray(end + 4, end + 4 + length).toString('latin1'));
          buffered = buffered.subarray(end + 4 + length);
        }
        const n = ++seen.requests;
        const body = JSON.stringify({ connection: seen.id, n });
        const answer = (): void => void socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
        if (hold) held.push(answer);
        else answer();
      }
    });
  });
  return { url: `http://127.0.0.1:${port}`, connections, held, open: () => open };
}

/** An answer of the backend, with the local port of the client socket that asked. */
interface Answer {
  connection: number;
  n: number;
  clientPort: number;
}

/** GET through `agent` (one keep-alive connection per agent: one client connection). */
function fetchVia(agent: http.Agent, url: string, options: https.RequestOptions = {}): Promise<Answer> {
  const mod = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { agent, ...options }, (res) => {
      // Read now: a keep-alive agent takes the socket back before 'end'.
      const clientPort = res.socket.localPort!;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}: ${text}`));
        resolve({ ...(JSON.parse(text) as { connection: number; n: number }), clientPort });
      });
    });
    req.setTimeout(5000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

/** A client that keeps one connection (keep-alive, one socket). */
function oneConnectionClient(t: TestContext): http.Agent {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  return agent;
}

for (const version of ['v1', 'v2'] as const) {
  test(`${version}: each upstream connection starts with a header naming the client's address and port and the listener's, in the same write as the first request head`, async (t) => {
    const backend = await parsingBackend(t);
    const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url], proxy_protocol: version } } });
    // Every write Fulcrum makes to the backend, seen in this process (two writes in one tick may still arrive as one read).
    const backendPort = Number(new URL(backend.url).port);
    const writes: Buffer[] = [];
    const write = net.Socket.prototype.write;
    net.Socket.prototype.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]) {
      if (this.remotePort === backendPort) writes.push(Buffer.from(chunk as Buffer));
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof write;
    let a: Answer;
    try {
      a = await fetchVia(oneConnectionClient(t), `${lb.url}/x`);
    } finally {
      net.Socket.prototype.write = write;
    }
    assert.equal(writes.length, 1, 'one write: the header and the request head');
    const seen = backend.connections[a.connection];
    assert.ok(seen.header !== null, 'a PROXY header');
    assert.equal(seen.header.version, version === 'v1' ? 1 : 2);
    assert.equal(seen.header.command, 'proxy');
    assert.equal(seen.header.family, 'tcp4');
    assert.deepEqual(seen.header.source, { address: '127.0.0.1', port: a.clientPort });
    assert.deepEqual(seen.header.destination, { address: '127.0.0.1', port: lb.port });
    assert.equal(seen.header.authority, null, 'no SNI on a plain listener');
    assert.equal(writes[0].subarray(seen.header.length, seen.header.length + 7).toString('latin1'), 'GET /x ');
    assert.ok(writes[0].subarray(0, seen.header.length).equals(seen.firstRead.subarray(0, seen.header.length)));
    assert.ok(writes[0].toString('latin1').endsWith('\r\n\r\n'), 'the whole request head in that write');
  });
}

test('v2 over an https listener carries the SNI the client sent (a.test) as PP2_TYPE_AUTHORITY; v1 has no room for it', async (t) => {
  const ca = await makeTestCa(t);
  const site = await ca.issue('a', { names: ['a.test'] });
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: site.certPath, key: site.keyPath }], alpn: ['http/1.1'] } }],
    routes: [
      { path_prefix: '/v1', pool: 'one' },
      { path_prefix: '/', pool: 'two' },
    ],
    pools: { two: { upstreams: [backend.url], proxy_protocol: 'v2' }, one: { upstreams: [backend.url], proxy_protocol: 'v1' } },
  } as never);
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: ca.ca.cert, servername: 'a.test' });
  t.after(() => agent.destroy());
  const answer = await fetchVia(agent, `https://127.0.0.1:${lb.port}/`, { servername: 'a.test' });
  const header = backend.connections[answer.connection].header!;
  assert.equal(header.version, 2);
  assert.equal(header.authority, 'a.test');
  assert.deepEqual(header.source, { address: '127.0.0.1', port: answer.clientPort });
  assert.deepEqual(header.destination, { address: '127.0.0.1', port: lb.port });
  const v1 = await fetchVia(agent, `https://127.0.0.1:${lb.port}/v1`, { servername: 'a.test' });
  assert.notEqual(v1.connection, answer.connection, 'a v1 connection is not the v2 one');
  assert.equal(backend.connections[v1.connection].header!.version, 1);
  assert.deepEqual(backend.connections[v1.connection].header!.source, { address: '127.0.0.1', port: v1.clientPort });
});

test('request bodies: a streamed one, and a kept one sent again after a 503 elsewhere, both follow the header', async (t) => {
  const backend = await parsingBackend(t);
  const unavailable = await startRawBackend(t, (socket) => {
    let seen = '';
    socket.on('data', (d: Buffer) => {
      seen += d.toString('latin1');
      if (/\r\n\r\n(hello|world)/.test(seen)) socket.end('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
  });
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/retry', pool: 'retry' },
      { path_prefix: '/', pool: 'direct' },
    ],
    pools: {
      direct: { upstreams: [backend.url], proxy_protocol: 'v1' },
      retry: { upstreams: [unavailable.url, backend.url], proxy_protocol: 'v1', retry: { on_status: [503] } },
    },
  });
  const put = (agent: http.Agent, path: string, body: string, chunked: boolean): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = http.request(`${lb.url}${path}`, { method: 'PUT', agent, headers: chunked ? {} : { 'content-length': String(body.length) } }, (res) => {
        const clientPort = res.socket.localPort!;
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => (res.statusCode === 200 ? resolve({ ...(JSON.parse(text) as { connection: number; n: number }), clientPort }) : reject(new Error(`status ${res.statusCode}: ${text}`))));
      });
      req.on('error', reject);
      req.end(body);
    });
  // Streamed straight through (chunked, as the client sent it).
  const streamed = await put(oneConnectionClient(t), '/direct', 'world', true);
  // Until one lands on the 503 upstream first and is sent again with its kept copy (round robin: within two).
  const kept: Answer[] = [];
  for (let i = 0; i < 2 && !lb.ended.some((ctx) => ctx.attempts === 2); i++) kept.push(await put(oneConnectionClient(t), '/retry', 'hello', false));
  assert.ok(lb.ended.some((ctx) => ctx.attempts === 2), 'a request was sent again after the 503');
  for (const [answer, text] of [[streamed, 'world'], ...kept.map((k) => [k, 'hello'] as const)] as const) {
    const seen = backend.connections[answer.connection];
    assert.deepEqual(seen.bodies, [text]);
    assert.equal(seen.header!.source!.port, answer.clientPort);
  }
});

test('behind a balancer that sent a trusted PROXY header, the header toward the upstream names the client and destination that header gave', async (t) => {
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, proxy_protocol: { trusted: ['127.0.0.1'] } }],
    pools: { web: { upstreams: [backend.url], proxy_protocol: 'v2' } },
  } as never);
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(lb.port, '127.0.0.1', () => socket.write('PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
    socket.setTimeout(5000, () => socket.destroy(new Error('no answer')));
  });
  assert.match(answer, /^HTTP\/1\.1 200 /);
  const header = backend.connections[0].header!;
  assert.deepEqual([header.source, header.destination], [{ address: '203.0.113.7', port: 4242 }, { address: '198.51.100.1', port: 443 }]);
});

test('one client connection\'s keep-alive requests share one upstream connection; two client connections never share one', async (t) => {
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url], proxy_protocol: 'v1' } } });
  const alice = oneConnectionClient(t);
  const bob = oneConnectionClient(t);
  const a1 = await fetchVia(alice, `${lb.url}/a1`);
  const a2 = await fetchVia(alice, `${lb.url}/a2`);
  const b1 = await fetchVia(bob, `${lb.url}/b1`);
  const a3 = await fetchVia(alice, `${lb.url}/a3`);
  const b2 = await fetchVia(bob, `${lb.url}/b2`);
  assert.equal(a1.clientPort, a3.clientPort, 'alice kept her connection');
  assert.notEqual(a1.clientPort, b1.clientPort);
  assert.deepEqual([a1, a2, a3].map((a) => [a.connection, a.n]), [[a1.connection, 1], [a1.connection, 2], [a1.connection, 3]], 'alice: one upstream connection, reused');
  assert.deepEqual([b1, b2].map((b) => [b.connection, b.n]), [[b1.connection, 1], [b1.connection, 2]], 'bob: one upstream connection, reused');
  assert.notEqual(a1.connection, b1.connection, 'never shared');
  assert.equal(backend.connections.length, 2);
  assert.equal(backend.connections[a1.connection].header!.source!.port, a1.clientPort);
  assert.equal(backend.connections[b1.connection].header!.source!.port, b1.clientPort);
});

test('HTTP/2 (h2c): the streams of one client connection reuse its upstream connection; a second session gets its own', async (t) => {
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, http2: { h2c: true } }], pools: { web: { upstreams: [backend.url], proxy_protocol: 'v2' } } });
  const h2get = (session: http2.ClientHttp2Session, path: string): Promise<{ connection: number; n: number }> =>
    new Promise((resolve, reject) => {
      const stream = session.request({ ':path': path });
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => (text += d));
      stream.on('end', () => resolve(JSON.parse(text) as { connection: number; n: number }));
      stream.on('error', reject);
    });
  const one = http2.connect(lb.url);
  const two = http2.connect(lb.url);
  t.after(() => {
    one.close();
    two.close();
  });
  const first = await h2get(one, '/1');
  const second = await h2get(one, '/2');
  const other = await h2get(two, '/3');
  assert.deepEqual([first.connection, second.connection, second.n], [first.connection, first.connection, 2]);
  assert.notEqual(other.connection, first.connection);
  const ports = [one, two].map((s) => (s.socket as net.Socket).localPort);
  assert.equal(backend.connections[first.connection].header!.source!.port, ports[0]);
  assert.equal(backend.connections[other.connection].header!.source!.port, ports[1]);
});

test('max_sockets 1: an idle connection bound to one client gives its slot to another client at once', async (t) => {
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url], proxy_protocol: 'v1', keepalive: { max_sockets: 1, idle_timeout: '60s' } } } });
  const alice = oneConnectionClient(t);
  const bob = oneConnectionClient(t);
  const a1 = await fetchVia(alice, `${lb.url}/a1`);
  // Alice's connection idles for 60 s; Bob must not wait for that.
  const started = performance.now();
  const b1 = await fetchVia(bob, `${lb.url}/b1`);
  assert.ok(performance.now() - started < 2000, 'bob was not kept waiting for the idle timeout');
  assert.notEqual(b1.connection, a1.connection);
  await eventually(() => backend.open() === 1, { what: "alice's idle connection to be closed" });
  assert.equal(backend.connections[b1.connection].header!.source!.port, b1.clientPort);
});

test('max_sockets 1: a request queued behind another client\'s gets its own connection once that one is done', async (t) => {
  const backend = await parsingBackend(t, true);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url], proxy_protocol: 'v1', keepalive: { max_sockets: 1 } } } });
  const upstream = lb.balancer.pools().get('web')!.upstreams[0];
  const alice = fetchVia(oneConnectionClient(t), `${lb.url}/a`);
  await eventually(() => backend.held.length === 1, { what: "alice's request at the backend" });
  const bob = fetchVia(oneConnectionClient(t), `${lb.url}/b`);
  await eventually(() => upstream.inFlight === 2, { what: "bob's request waiting for a connection" });
  assert.equal(backend.connections.length, 1, 'max_sockets holds');
  backend.held.shift()!();
  const a = await alice;
  await eventually(() => backend.held.length === 1, { what: "bob's request at the backend" });
  assert.equal(backend.connections.length, 2);
  assert.equal(backend.open(), 1, 'alice\'s connection gave its slot up');
  backend.held.shift()!();
  const b = await bob;
  assert.notEqual(a.connection, b.connection);
  assert.equal(backend.connections[b.connection].header!.source!.port, b.clientPort);
});

test('regression: a pool without proxy_protocol sends no header and reuses one upstream connection across client connections', async (t) => {
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } } });
  const a = await fetchVia(oneConnectionClient(t), `${lb.url}/a`);
  const b = await fetchVia(oneConnectionClient(t), `${lb.url}/b`);
  assert.notEqual(a.clientPort, b.clientPort);
  assert.deepEqual([a.connection, b.connection, b.n], [a.connection, a.connection, 2]);
  assert.equal(backend.connections.length, 1);
  assert.equal(backend.connections[0].header, null);
});

test('two pools on one upstream, one with proxy_protocol: a connection that carries a header never serves the other pool, nor the reverse', async (t) => {
  const backend = await parsingBackend(t);
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/pp', pool: 'pp' },
      { path_prefix: '/', pool: 'plain' },
    ],
    pools: { pp: { upstreams: [backend.url], proxy_protocol: 'v2' }, plain: { upstreams: [backend.url] } },
  });
  const client = oneConnectionClient(t);
  const plain1 = await fetchVia(client, `${lb.url}/x`);
  const pp1 = await fetchVia(client, `${lb.url}/pp/x`);
  const plain2 = await fetchVia(client, `${lb.url}/y`);
  const pp2 = await fetchVia(client, `${lb.url}/pp/y`);
  assert.equal(plain1.connection, plain2.connection);
  assert.equal(pp1.connection, pp2.connection);
  assert.notEqual(plain1.connection, pp1.connection);
  assert.equal(backend.connections[plain1.connection].header, null);
  assert.equal(backend.connections[pp1.connection].header!.version, 2);
});
