/**
 * The real servers the TCP-balancing tests start, checked on their own: a throwaway PostgreSQL
 * (test/helpers/postgres.ts) answers psql and pgbench, and dies with its backends on kill();
 * HAProxy (test/helpers/haproxy.ts) sends a PROXY protocol v2 header to its backend in tcp and
 * http mode. Skipped without the programs unless CI is set (.ci/run installs them).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { eventually } from '../helpers/eventually.ts';
import { freePort, haproxySendProxyV2Config, haproxySkip, startHaproxy } from '../helpers/haproxy.ts';
import { pgbenchRun, postgresSkip, psql, startPostgres } from '../helpers/postgres.ts';
import { get, startRawBackend } from '../helpers/servers.ts';

/** The 12 bytes that open a PROXY protocol v2 header (haproxy's doc/proxy-protocol.txt, section 2.2). */
const proxyV2Signature = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');

/** A PROXY v2 header over TCP/IPv4, as read from the front of a connection. */
interface ProxyV2Header {
  signature: Buffer;
  /** Version (high nibble, 2) and command (low nibble, 1 = PROXY). */
  versionCommand: number;
  /** Address family (high nibble, 1 = IPv4) and transport (low nibble, 1 = stream). */
  familyTransport: number;
  sourceAddress: string;
  destinationAddress: string;
  sourcePort: number;
  destinationPort: number;
  /** What followed the header on the connection. */
  rest: Buffer;
}

/** Reads a PROXY v2 header with IPv4 addresses from `bytes`, or null while fewer bytes than it announces have come. */
function readProxyV2(bytes: Buffer): ProxyV2Header | null {
  if (bytes.length < 16) return null;
  const length = bytes.readUInt16BE(14);
  if (bytes.length < 16 + length) return null;
  assert.ok(length >= 12, `an IPv4 address block is 12 bytes, the header announces ${length}`);
  const ip = (at: number): string => [...bytes.subarray(at, at + 4)].join('.');
  return {
    signature: bytes.subarray(0, 12),
    versionCommand: bytes[12],
    familyTransport: bytes[13],
    sourceAddress: ip(16),
    destinationAddress: ip(20),
    sourcePort: bytes.readUInt16BE(24),
    destinationPort: bytes.readUInt16BE(26),
    rest: bytes.subarray(16 + length),
  };
}

test('startPostgres: psql reaches the cluster on its port as the superuser; after stop() the port refuses and the data dir is still there until the test ends', { skip: postgresSkip() }, async (t) => {
  const pg = await startPostgres(t);
  t.diagnostic(`initdb ${pg.startupMs.initdb} ms, copy ${pg.startupMs.copy} ms, start ${pg.startupMs.start} ms (PostgreSQL in ${pg.binDir})`);
  const answer = await psql(['-Atc', 'select 1, inet_server_port(), current_user, current_setting(\'fsync\')'], pg.env);
  assert.equal(answer.code, 0, answer.stderr);
  assert.equal(answer.stdout, `1|${pg.port}|postgres|off\n`);

  await pg.stop();
  const refused = await psql(['-Atc', 'select 1'], pg.env);
  assert.equal(refused.code, 2, `psql after stop(): ${refused.stdout}${refused.stderr}`);
  assert.match(refused.stderr, /Connection refused/);
  assert.ok(existsSync(pg.dataDir), 'the data dir goes only when the test ends');
});

test('startPostgres: kill() ends the postmaster and its backends at once, so an open session is cut', { skip: postgresSkip() }, async (t) => {
  const pg = await startPostgres(t);
  const began = Date.now();
  // pg_sleep keeps a backend busy on a connection for far longer than the test waits.
  const session = psql(['-Atc', 'select pg_sleep(60)'], pg.env);
  await eventually(
    async () => (await psql(['-Atc', "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'"], pg.env)).stdout === '1\n',
    { what: 'the pg_sleep session to be running' },
  );
  pg.kill();
  await eventually(() => pg.child.exitCode !== null || pg.child.signalCode !== null, { what: 'the postmaster to exit' });
  assert.equal(pg.child.signalCode, 'SIGKILL');
  const cut = await session;
  assert.equal(cut.code, 2, `psql of the cut session: ${cut.stdout}${cut.stderr}`);
  assert.match(cut.stderr, /server closed the connection unexpectedly|connection to server was lost/);
  assert.ok(Date.now() - began < 30_000, 'the session ended with the kill, not with its pg_sleep');
});

test('pgbenchRun: a short run through the cluster reports transactions per second, none failed', { skip: postgresSkip() }, async (t) => {
  const pg = await startPostgres(t);
  const result = await pgbenchRun(pg.env, { seconds: 1, clients: 2, threads: 1 });
  t.diagnostic(`pgbench -T 1 -c 2 -j 1: ${result.tps} tps, ${result.transactions} transactions, latency average ${result.latencyAverageMs} ms`);
  assert.ok(result.tps > 0, result.run.stdout);
  assert.ok(result.transactions > 0, result.run.stdout);
  assert.ok(result.latencyAverageMs > 0, result.run.stdout);
  assert.equal(result.failedTransactions, 0, result.run.stdout);
});

test('startHaproxy (tcp, send-proxy-v2): the backend reads a PROXY v2 header naming the client and the frontend, then the client\'s bytes', { skip: haproxySkip() }, async (t) => {
  const received: Buffer[] = [];
  const backend = await startRawBackend(t, (socket) => socket.on('data', (d: Buffer) => received.push(d)));
  const listenPort = await freePort();
  const haproxy = await startHaproxy(t, haproxySendProxyV2Config({ listenPort, backendPort: backend.port }));
  assert.equal(haproxy.port, listenPort);
  assert.equal(backend.sockets.length, 0, 'waiting for HAProxy to listen opened no connection to the backend');

  const client = net.connect(haproxy.port, '127.0.0.1');
  t.after(() => client.destroy());
  await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
  client.write('hello');
  const header = await eventually(() => {
    const parsed = readProxyV2(Buffer.concat(received));
    return parsed !== null && parsed.rest.length >= 5 ? parsed : null;
  }, { what: 'the PROXY v2 header and "hello" at the backend' }).catch((err: Error) => {
    throw new Error(`${err.message}; the backend got ${Buffer.concat(received).toString('hex') || 'nothing'}`);
  });
  assert.ok(header);
  assert.deepEqual(header.signature, proxyV2Signature);
  assert.equal(header.versionCommand, 0x21, 'version 2, command PROXY');
  assert.equal(header.familyTransport, 0x11, 'TCP over IPv4');
  assert.equal(header.sourceAddress, '127.0.0.1');
  assert.equal(header.sourcePort, client.localPort);
  assert.equal(header.destinationAddress, '127.0.0.1');
  assert.equal(header.destinationPort, listenPort);
  assert.equal(header.rest.toString('latin1'), 'hello');
  assert.equal(backend.sockets.length, 1);
});

test('startHaproxy (http, send-proxy-v2): the backend reads the PROXY v2 header, then the request; its answer reaches the client', { skip: haproxySkip() }, async (t) => {
  const received: Buffer[] = [];
  const backend = await startRawBackend(t, (socket) =>
    socket.on('data', (d: Buffer) => {
      received.push(d);
      const parsed = readProxyV2(Buffer.concat(received));
      if (parsed?.rest.includes('\r\n\r\n')) socket.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
    }),
  );
  const listenPort = await freePort();
  const haproxy = await startHaproxy(t, haproxySendProxyV2Config({ listenPort, backendPort: backend.port, mode: 'http', timeoutMs: 5000 }));

  const response = await get(`http://127.0.0.1:${haproxy.port}/smoke`);
  assert.equal(response.status, 200, haproxy.output());
  assert.equal(response.body, 'ok');
  const header = readProxyV2(Buffer.concat(received));
  assert.ok(header, 'a whole PROXY v2 header');
  assert.deepEqual(header.signature, proxyV2Signature);
  assert.equal(header.versionCommand, 0x21);
  assert.equal(header.destinationPort, listenPort);
  assert.match(header.rest.toString('latin1'), /^GET \/smoke HTTP\/1\.1\r\n/);
});

test('startPostgres: a port already taken fails the start with the server\'s reason', { skip: postgresSkip() }, async (t) => {
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  await assert.rejects(startPostgres(t, { port }), /PostgreSQL did not start on 127\.0\.0\.1:\d+: the server exited[\s\S]*could not bind IPv4 address "127\.0\.0\.1": Address already in use/);
});

test('startHaproxy: a port already taken fails the start with HAProxy\'s alert', { skip: haproxySkip() }, async (t) => {
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  await assert.rejects(startHaproxy(t, haproxySendProxyV2Config({ listenPort: port, backendPort: port })), /HAProxy did not start: haproxy exited \(\d+\)[\s\S]*cannot bind socket/);
});
