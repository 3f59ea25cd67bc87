/**
 * The ClientHello reader against real ClientHellos (Node's TLS client, curl through OpenSSL's
 * defaults), split at every byte, truncated, and mutated at random: it never throws, asks for
 * more while a message is incomplete, and reads SNI and ALPN exactly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { parseClientHello, MAX_CLIENT_HELLO_BYTES } from '../../../src/tls/client-hello.ts';
import { mulberry32 } from '../../helpers/random.ts';

/** The first bytes a TLS client sends (its ClientHello), captured on a plain TCP server. */
async function capture(options: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const got = new Promise<Buffer>((resolve) => server.once('connection', (s) => s.once('data', (d: Buffer) => { resolve(d); s.destroy(); })));
  const client = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options });
  client.on('error', () => {});
  const hello = await got;
  client.destroy();
  server.close();
  return hello;
}

test('reads SNI and ALPN from real ClientHellos, whole or split anywhere', async () => {
  const cases: [tls.ConnectionOptions, string | null, string[]][] = [
    [{ servername: 'Shop.Example.com', ALPNProtocols: ['h2', 'http/1.1'] }, 'shop.example.com', ['h2', 'http/1.1']],
    [{ servername: 'a.test' }, 'a.test', []],
    [{ ALPNProtocols: ['acme-tls/1'], servername: 'x.test', maxVersion: 'TLSv1.2' }, 'x.test', ['acme-tls/1']],
    // An IP address as host: Node sends no SNI.
    [{}, null, []],
  ];
  for (const [options, name, alpn] of cases) {
    const hello = await capture(options);
    const whole = parseClientHello(hello);
    assert.equal(whole.kind, 'hello');
    if (whole.kind !== 'hello') continue;
    assert.equal(whole.serverName, name);
    assert.deepEqual(whole.alpn, alpn);
    assert.equal(whole.length, hello.length);
    for (let cut = 0; cut < hello.length; cut++) assert.deepEqual(parseClientHello(hello.subarray(0, cut)), { kind: 'incomplete' }, `cut at ${cut}`);
  }
});

test('a ClientHello split over several records is gathered; bytes after it are left alone', async () => {
  const hello = await capture({ servername: 'split.test', ALPNProtocols: ['http/1.1'] });
  const body = hello.subarray(5);
  const records: Buffer[] = [];
  for (let at = 0; at < body.length; at += 50) {
    const part = body.subarray(at, at + 50);
    records.push(Buffer.from([22, 3, 1, part.length >> 8, part.length & 255]), part);
  }
  const joined = Buffer.concat([...records, Buffer.from('trailing')]);
  const parsed = parseClientHello(joined);
  assert.equal(parsed.kind, 'hello');
  if (parsed.kind === 'hello') {
    assert.equal(parsed.serverName, 'split.test');
    assert.equal(parsed.length, joined.length - 'trailing'.length);
  }
});

test('plain HTTP, garbage and oversized hellos are told apart', () => {
  assert.deepEqual(parseClientHello(Buffer.from('GET / HTTP/1.1\r\n')), { kind: 'not-tls', http: true });
  assert.deepEqual(parseClientHello(Buffer.from('GE')), { kind: 'incomplete' });
  assert.deepEqual(parseClientHello(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n')), { kind: 'not-tls', http: false });
  assert.equal(parseClientHello(Buffer.from([22, 3, 1, 0, 0])).kind, 'malformed');
  assert.equal(parseClientHello(Buffer.from([22, 3, 1, 0, 4, 2, 0, 0, 0])).kind, 'malformed');
  const huge = Buffer.from([22, 3, 1, 0x40, 0, 1, 0x01, 0, 0]);
  assert.deepEqual(parseClientHello(Buffer.from([22, 3, 1, 0x40, 0, 2, 0, 0, 4])), { kind: "malformed", reason: "the first handshake message is not a ClientHello" });
  assert.deepEqual(parseClientHello(huge), { kind: 'malformed', reason: `a ClientHello over ${MAX_CLIENT_HELLO_BYTES} bytes` });
});

test('random mutations of real hellos never throw and never read past the input (20,000 cases)', async () => {
  const hellos = [await capture({ servername: 'm.test', ALPNProtocols: ['h2', 'http/1.1'] }), await capture({ servername: 'n.test' })];
  const random = mulberry32(12);
  for (let i = 0; i < 20_000; i++) {
    const base = Buffer.from(hellos[i % hellos.length]);
    const flips = 1 + Math.floor(random() * 4);
    for (let f = 0; f < flips; f++) base[Math.floor(random() * base.length)] = Math.floor(random() * 256);
    const cut = random() < 0.3 ? Math.floor(random() * base.length) : base.length;
    const result = parseClientHello(base.subarray(0, cut));
    assert.ok(['hello', 'incomplete', 'malformed', 'not-tls'].includes(result.kind));
    if (result.kind === 'hello') {
      assert.ok(result.length <= cut);
      if (result.serverName !== null) assert.match(result.serverName, /^[a-z0-9_.-]+$/);
    }
  }
});
