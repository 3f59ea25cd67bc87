/**
 * Plain TCP balancing (`protocol: tcp` listeners and pools) with real sockets: spreading by the
 * pool's policy, bytes intact both ways, half-close, backpressure, connect failover, passive
 * ejection, idle timeout, connection limits, the firewall at accept, drain, reload and removal.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closedPort, configProblems, startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { backendOf, connect, recordCloses, startEcho, type TcpClient as Client } from '../helpers/tcp.ts';
import { eventually } from '../helpers/eventually.ts';
import { startBlackhole } from '../helpers/blackhole.ts';
import type { FulcrumConfigInput } from '../../src/index.ts';

type PoolInput = FulcrumConfigInput['pools'][string];

/** A balancer with one tcp listener in front of `pool`. */
async function startTcpBalancer(t: TestContext, pool: PoolInput, listener: Record<string, unknown> = {}, extra: Partial<FulcrumConfigInput> = {}): Promise<TestBalancer & { tcpPort: number }> {
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db', ...listener }],
    pools: { db: { protocol: 'tcp', ...pool } as PoolInput },
    ...extra,
  });
  return Object.assign(lb, { tcpPort: lb.port });
}

test('round-robin spreads connections over three upstreams; a 1 MiB payload echoes back byte for byte', async (t) => {
  const backends = await Promise.all(['a', 'b', 'c'].map((n) => startEcho(t, n)));
  const lb = await startTcpBalancer(t, { upstreams: backends.map((b) => b.url) });
  const seen: string[] = [];
  for (let i = 0; i < 6; i++) {
    const c = await connect(lb.tcpPort);
    seen.push(await backendOf(c));
    c.socket.destroy();
  }
  assert.deepEqual([...seen].sort(), ['a', 'a', 'b', 'b', 'c', 'c']);
  const c = await connect(lb.tcpPort);
  const name = await backendOf(c);
  const payload = randomBytes(1024 * 1024);
  c.socket.write(payload);
  const expected = name.length + 1 + payload.length;
  await eventually(() => Buffer.concat(c.received).length >= expected, { what: 'the echo of 1 MiB', timeout: 10_000 });
  const echoed = Buffer.concat(c.received).subarray(name.length + 1);
  assert.equal(createHash('sha256').update(echoed).digest('hex'), createHash('sha256').update(payload).digest('hex'));
});

test('half-close: the client FIN reaches the upstream, whose answer after it still reaches the client', async (t) => {
  const backend = await startEcho(t, 'h', (socket) => {
    const got: Buffer[] = [];
    socket.on('data', (d: Buffer) => got.push(d));
    // Answers only after the client's FIN: a proxy that closed both ways at the first FIN would lose it.
    socket.once('end', () => socket.end(`got ${Buffer.concat(got).length} bytes, then your FIN\n`));
  });
  const closes = recordCloses(t);
  const lb = await startTcpBalancer(t, { upstreams: [backend.url] });
  const c = await connect(lb.tcpPort, { allowHalfOpen: true });
  c.socket.end('hello');
  await c.ended;
  assert.equal(c.text(), 'got 5 bytes, then your FIN\n');
  await eventually(() => closes.length === 1, { what: 'the connection to end' });
  assert.equal(closes[0].reason, 'client', 'the client closed first');
  assert.equal(closes[0].bytesIn, 5);
  assert.equal(closes[0].bytesOut, 27);
});

test('half-close the other way: the upstream FIN reaches the client, which can still send', async (t) => {
  let upstreamGot = '';
  const backend = await startEcho(t, 'u', (socket) => {
    socket.end('bye\n');
    socket.on('data', (d: Buffer) => (upstreamGot += d.toString()));
  });
  const lb = await startTcpBalancer(t, { upstreams: [backend.url] });
  const c = await connect(lb.tcpPort, { allowHalfOpen: true });
  await c.ended;
  assert.equal(c.text(), 'bye\n');
  c.socket.end('still here');
  await eventually(() => upstreamGot === 'still here', { what: 'the client bytes after the upstream FIN' });
});

test('backpressure: a client that does not read holds the upstream back; nothing piles up in Fulcrum', async (t) => {
  let written = 0;
  /** True while the backend's last write was refused and it waits for 'drain'. */
  let waiting = false;
  const chunk = Buffer.alloc(64 * 1024, 120);
  const backend = await startEcho(t, 'flood', (socket) => {
    const pump = (): void => {
      waiting = false;
      while (written < 256 * 1024 * 1024) {
        written += chunk.length;
        if (!socket.write(chunk)) {
          waiting = true;
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
  const closes = recordCloses(t);
  const lb = await startTcpBalancer(t, { upstreams: [backend.url] });
  const c = await connect(lb.tcpPort);
  c.socket.pause();
  // Time passing is the point here: 500 ms after the client stopped reading, the upstream must
  // still be held (waiting for drain), with only the hops' socket buffers filled, not 256 MiB.
  const since = performance.now();
  await eventually(() => performance.now() - since >= 500 && waiting, { what: 'the upstream to be held back for 500 ms', timeout: 10_000 });
  assert.ok(written < 64 * 1024 * 1024, `the upstream wrote ${written} bytes into a client that reads nothing`);
  const held = written;
  c.socket.resume();
  // Reading again releases it: the rest flows.
  await eventually(() => written > held, { what: 'the upstream to flow again once the client reads' });
  c.socket.destroy();
  await eventually(() => closes.length === 1, { what: 'the connection to end' });
});

test('connect failover: a refused upstream is skipped before any byte is sent, and ejected at once', async (t) => {
  const live = await startEcho(t, 'live');
  const dead = await closedPort();
  const lb = await startTcpBalancer(t, { upstreams: [`tcp://127.0.0.1:${dead}`, live.url] });
  for (let i = 0; i < 4; i++) {
    const c = await connect(lb.tcpPort);
    c.socket.write('ping');
    assert.equal(await backendOf(c), 'live');
    await eventually(() => c.text() === 'live\nping', { what: 'the echo' });
    c.socket.destroy();
  }
  const [down] = lb.balancer.pools().get('db')!.upstreams;
  assert.equal(down.ejected, true, 'passive ejection took the refused upstream out');
  assert.ok(lb.logs.join('').includes(`upstream 127.0.0.1:${dead} in pool db: ejected false -> true`));
});

test('connect timeout: an upstream that never answers the SYN is left after timeouts.connect for another', async (t) => {
  const hole = await startBlackhole(t);
  const live = await startEcho(t, 'live');
  const closes = recordCloses(t);
  const lb = await startTcpBalancer(t, { policy: 'round-robin', upstreams: [`tcp://127.0.0.1:${hole}`, live.url], timeouts: { connect: '200ms' }, outlier_detection: { enabled: false } });
  const first = await connect(lb.tcpPort);
  assert.equal(await backendOf(first), 'live');
  const second = await connect(lb.tcpPort);
  assert.equal(await backendOf(second), 'live');
  first.socket.destroy();
  second.socket.destroy();
  await eventually(() => closes.length === 2, { what: 'both connections to end' });
  assert.deepEqual(closes.map((c) => c.attempts).sort(), [1, 2], 'one went to the black hole first, then to the live one');
});

test('every upstream down: the client connection is closed at once (connect_failed, then no_upstream once ejected)', async (t) => {
  const dead = await closedPort();
  const closes = recordCloses(t);
  // No panic mode: with it, the one ejected upstream would be tried again (as for HTTP).
  const lb = await startTcpBalancer(t, { upstreams: [`tcp://127.0.0.1:${dead}`], panic_threshold_percent: 0 });
  const c = await connect(lb.tcpPort);
  await c.closed;
  assert.equal(c.text(), '');
  await eventually(() => closes.length === 1, { what: 'the close event' });
  assert.equal(closes[0].reason, 'connect_failed');
  const again = await connect(lb.tcpPort);
  await again.closed;
  await eventually(() => closes.length === 2, { what: 'the second close' });
  assert.equal(closes[1].reason, 'no_upstream', 'the ejected upstream is not tried again');
});

test('least-connections balances by open connections', async (t) => {
  const backends = await Promise.all(['a', 'b'].map((n) => startEcho(t, n)));
  const lb = await startTcpBalancer(t, { policy: 'least-connections', upstreams: backends.map((b) => b.url) });
  const clients: Client[] = [];
  for (let i = 0; i < 4; i++) clients.push(await connect(lb.tcpPort));
  const names = await Promise.all(clients.map(backendOf));
  assert.deepEqual([...names].sort(), ['a', 'a', 'b', 'b']);
  // Close both of a's: the next two connections go to a, the least loaded.
  for (const [i, c] of clients.entries()) if (names[i] === 'a') c.socket.destroy();
  const [a] = lb.balancer.pools().get('db')!.upstreams;
  await eventually(() => a.inFlight === 0, { what: "a's connections to close" });
  const more = [await connect(lb.tcpPort), await connect(lb.tcpPort)];
  assert.deepEqual(await Promise.all(more.map(backendOf)), ['a', 'a']);
  for (const c of [...clients, ...more]) c.socket.destroy();
});

test('idle timeout: no byte either way for timeouts.tunnel_idle closes both sides', async (t) => {
  const backend = await startEcho(t, 'idle');
  const closes = recordCloses(t);
  const lb = await startTcpBalancer(t, { upstreams: [backend.url], timeouts: { tunnel_idle: '300ms' } });
  const c = await connect(lb.tcpPort);
  await backendOf(c);
  const opened = performance.now();
  await c.closed;
  const lasted = performance.now() - opened;
  assert.ok(lasted >= 250, `closed after ${lasted} ms, before the idle timeout`);
  await eventually(() => closes.length === 1, { what: 'the close event' });
  assert.equal(closes[0].reason, 'idle');
  await eventually(() => backend.open() === 0, { what: 'the upstream side to be closed too' });
});

test('limits and firewall at accept: max_connections_per_ip, max_connections, and a denied client never reach an upstream', async (t) => {
  const backend = await startEcho(t, 'l');
  const lb = await startTcpBalancer(t, { upstreams: [backend.url] }, { limits: { max_connections_per_ip: 2 } });
  const a = await connect(lb.tcpPort);
  const b = await connect(lb.tcpPort);
  await Promise.all([backendOf(a), backendOf(b)]);
  const c = await connect(lb.tcpPort);
  await c.closed;
  assert.equal(c.text(), '', 'the third connection of one client is closed unserved');
  assert.equal(backend.accepted, 2);
  a.socket.destroy();
  await eventually(() => lb.balancer.status().listeners[0].open_connections === 1, { what: 'the slot to free' });
  const d = await connect(lb.tcpPort);
  assert.equal(await backendOf(d), 'l');

  const walled = await startTcpBalancer(t, { upstreams: [backend.url] }, { firewall: { deny: ['127.0.0.0/8'] } });
  const before = backend.accepted;
  const e = await connect(walled.tcpPort);
  await e.closed;
  assert.equal(backend.accepted, before, 'a denied client never reaches an upstream');
  assert.equal(walled.balancer.status().listeners[0].refused_connections, 1);
});

test('a drained upstream keeps its open connections for the grace period, then they close; new ones go elsewhere', async (t) => {
  const backends = await Promise.all(['a', 'b'].map((n) => startEcho(t, n)));
  const closes = recordCloses(t);
  const lb = await startTcpBalancer(t, { upstreams: backends.map((b) => b.url) }, {}, { shutdown: { grace_period: '600ms' } });
  const c = await connect(lb.tcpPort);
  const name = await backendOf(c);
  const target = backends.find((b) => b.name === name)!;
  const u = lb.balancer.pools().get('db')!.upstreams.find((x) => x.port === target.port)!;
  const drainedAt = performance.now();
  u.setDraining(true, 'test: drained by the operator');
  c.socket.write('still');
  await eventually(() => c.text().endsWith('still'), { what: 'bytes through the drained upstream during the grace period' });
  for (let i = 0; i < 3; i++) {
    const n = await connect(lb.tcpPort);
    assert.notEqual(await backendOf(n), name, 'new connections avoid the drained upstream');
    n.socket.destroy();
  }
  await c.closed;
  assert.ok(performance.now() - drainedAt >= 500, 'closed at the end of the grace period, not before');
  await eventually(() => closes.some((x) => x.reason === 'drained'), { what: 'the drained close' });
});

test('reload: a connection to a surviving upstream goes on; one to a removed upstream closes after the grace period', async (t) => {
  const backends = await Promise.all(['a', 'b'].map((n) => startEcho(t, n)));
  const closes = recordCloses(t);
  const config = (upstreams: string[]): FulcrumConfigInput => ({
    listeners: [{ host: '127.0.0.1', port: lb.tcpPort, protocol: 'tcp', pool: 'db' }],
    pools: { db: { protocol: 'tcp', upstreams } },
    shutdown: { grace_period: '300ms' },
  });
  const lb = await startTcpBalancer(t, { upstreams: backends.map((b) => b.url) }, {}, { shutdown: { grace_period: '300ms' } });
  const first = await connect(lb.tcpPort);
  const second = await connect(lb.tcpPort);
  const names = await Promise.all([first, second].map(backendOf));
  assert.deepEqual([...names].sort(), ['a', 'b']);
  const a = backends[0];
  const toA = names[0] === 'a' ? first : second;
  const toB = names[0] === 'a' ? second : first;
  const result = await lb.balancer.reload(config([`tcp://127.0.0.1:${a.port}`, `tcp://127.0.0.1:${backends[1].port}`, `tcp://127.0.0.1:${await closedPort()}`]));
  assert.ok(result.changes.some((c) => c.startsWith('pool db: +1 upstream')), JSON.stringify(result));
  toA.socket.write('kept');
  await eventually(() => toA.text().endsWith('kept'), { what: 'the connection to survive a reload that keeps its upstream' });
  await lb.balancer.reload(config([`tcp://127.0.0.1:${a.port}`]));
  await toB.closed;
  await eventually(() => closes.some((c) => c.reason === 'removed'), { what: 'the removed close' });
  toA.socket.write('still');
  await eventually(() => toA.text().endsWith('still'), { what: 'the surviving connection after the second reload' });
  toA.socket.destroy();
});

test('a backend killed under load: connections to it are cut, new connections go to the others at once', async (t) => {
  const backends = await Promise.all(['a', 'b', 'c'].map((n) => startEcho(t, n)));
  const lb = await startTcpBalancer(t, { upstreams: backends.map((b) => b.url) });
  const clients: Client[] = [];
  for (let i = 0; i < 9; i++) clients.push(await connect(lb.tcpPort));
  const names = await Promise.all(clients.map(backendOf));
  await backends[0].close();
  // Its clients see their connection end (the close is passed on).
  await Promise.all(clients.filter((_, i) => names[i] === 'a').map((c) => c.closed));
  const after: string[] = [];
  for (let i = 0; i < 12; i++) {
    const c = await connect(lb.tcpPort);
    after.push(await backendOf(c));
    c.socket.destroy();
  }
  assert.ok(!after.includes('a'), `a new connection reached the dead backend: ${after.join(',')}`);
  assert.ok(after.includes('b') && after.includes('c'));
  for (const c of clients) c.socket.destroy();
});

test('config: a tcp listener names a tcp pool; tcp:// upstreams only in tcp pools; HTTP keys refused on tcp listeners', () => {
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'web' }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } }), /pool web is an HTTP pool; a tcp listener relays bytes to a pool with protocol: tcp/);
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['http://127.0.0.1:6380'] } } }), /a tcp pool's upstreams are tcp:\/\/host:port: write tcp:\/\/127\.0\.0\.1:6380/);
  assert.match(configProblems({ pools: { web: { upstreams: ['tcp://127.0.0.1:1'] } } }), /tcp:\/\/ upstreams belong to a pool with protocol: tcp/);
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379 }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:6380'] } } }), /a tcp listener needs a pool/);
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db', http2: { h2c: true } }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:6380'] } } }), /http2 is for HTTP listeners/);
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1'] } } }), /a TCP upstream needs its port: write tcp:\/\/127\.0\.0\.1:PORT/);
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:1'], health_check: { type: 'http' } } } }), /use type tcp/);
  assert.match(configProblems({ listeners: [{ port: 8080 }, { protocol: 'tcp', port: 6379, pool: 'db' }], routes: [{ pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:1'] }, web: { upstreams: ['http://127.0.0.1:2'] } } }), /pool db is a tcp pool: it takes connections of tcp listeners/);
  // Mistakes a new user made (scratch tryout): each named with its fix, without knock-on problems.
  const upper = configProblems({ listeners: [{ protocol: 'TCP', port: 6379, pool: 'db' }], pools: { db: { protocol: 'TCP', upstreams: ['tcp://127.0.0.1:1'] } } });
  assert.match(upper, /listeners\[0\]\.protocol: write "tcp" \(lower case\)/);
  assert.match(upper, /pools\.db\.protocol: write "tcp" \(lower case\)/);
  assert.doesNotMatch(upper, /pool is for tcp listeners|tcp:\/\/ upstreams belong/);
  assert.match(configProblems({ listeners: [{ port: 8080, proxy_protocol: true }], pools: { web: { upstreams: ['http://127.0.0.1:2'] } } }), /listeners\[0\]\.proxy_protocol: a listener accepts the PROXY protocol from the balancers in front: write proxy_protocol: \{trusted: \[10\.0\.0\.10\]\}/);
  assert.match(configProblems({ listeners: [{ port: 8080, proxy_protocol: 'v2' }], pools: { web: { upstreams: ['http://127.0.0.1:2'] } } }), /listeners\[0\]\.proxy_protocol: a listener accepts the PROXY protocol/);
  assert.match(configProblems({ pools: { web: { upstreams: ['http://127.0.0.1:2'], proxy_protocol: { trusted: ['10.0.0.1'] } } } }), /pools\.web\.proxy_protocol: a pool sends the PROXY protocol to its upstreams: write proxy_protocol: v1 or v2/);
  assert.match(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:1'], health_check: { send: 'PING\\r\\n', expect: '+PONG' } } } }), /health_check\.send: "PING\\\\r\\\\n" holds a backslash and a letter, not a control character: for CR LF write the value in double quotes/);
  assert.equal(configProblems({ listeners: [{ protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:1'], health_check: { send: 'PING\r\n', expect: '+PONG' } } } }), '');
  // One HTTP pool and one tcp pool need no routes: the tcp one is not a candidate for HTTP requests.
  assert.equal(configProblems({ listeners: [{ port: 8080 }, { protocol: 'tcp', port: 6379, pool: 'db' }], pools: { db: { protocol: 'tcp', upstreams: ['tcp://127.0.0.1:1'] }, web: { upstreams: ['http://127.0.0.1:2'] } } }), '');
});
