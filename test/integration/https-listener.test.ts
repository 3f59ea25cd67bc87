/**
 * HTTPS listeners with real clients (Node's tls and https, curl) and a test CA made here:
 * SNI among three certificates and a wildcard, the default certificate and unknown names,
 * versions and ALPN, plain HTTP on the TLS port, the firewall before the handshake, handshake
 * deadlines, session resumption, forwarding headers, HSTS and the redirect from http.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { makeTestCa, handshake, httpsGet, type TestCa } from '../helpers/tls.ts';
import { get, rawExchange, startBackend, startBalancer, type TestBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { startWsBackend, wsOpen } from '../helpers/websocket.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';

const run = promisify(execFile);

type ListenerInput = NonNullable<FulcrumConfigInput['listeners']>[number];

async function echoBackend(t: import('node:test').TestContext): Promise<TestBackend> {
  return startBackend(t, (req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url, headers: req.headers }));
  });
}

/** Three certificates (one a wildcard) and a default, all from one CA. */
async function siteCertificates(ca: TestCa) {
  return {
    a: await ca.issue('a', { names: ['a.test'] }),
    b: await ca.issue('b', { names: ['b.test', 'www.b.test'] }),
    wild: await ca.issue('wild', { names: ['*.apps.test'] }),
    fallback: await ca.issue('fallback', { names: ['localhost', '127.0.0.1'] }),
  };
}

function httpsListener(tlsSettings: Record<string, unknown>, extra: Partial<ListenerInput> = {}): ListenerInput {
  return { host: '127.0.0.1', port: 0, protocol: 'https', tls: tlsSettings, ...extra } as ListenerInput;
}

test('SNI chooses among three certificates and a wildcard; no SNI gets the default', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const lb = await startBalancer(t, {
    listeners: [
      httpsListener({
        certificates: [
          { cert: c.a.certPath, key: c.a.keyPath },
          { cert: c.b.bothPath },
          { cert: c.wild.certPath, key: c.wild.keyPath },
          { cert: c.fallback.certPath, key: c.fallback.keyPath, default: true },
        ],
      }),
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  const cases: [string | undefined, string][] = [
    ['a.test', c.a.serial],
    ['b.test', c.b.serial],
    ['www.b.test', c.b.serial],
    ['x.apps.test', c.wild.serial],
    ['API.Apps.Test', c.wild.serial],
    // A wildcard covers one label only (RFC 6125).
    ['deep.x.apps.test', c.fallback.serial],
    ['unknown.test', c.fallback.serial],
    [undefined, c.fallback.serial],
  ];
  for (const [name, serial] of cases) {
    const seen = await handshake(lb.port, name === undefined ? {} : { servername: name });
    assert.equal(seen.serial, serial, `server name ${name}`);
  }
  // Verified end to end by a real client: the name matches the certificate, the CA is ours.
  for (const name of ['a.test', 'www.b.test', 'x.apps.test']) {
    const seen = await handshake(lb.port, { servername: name, ca: ca.ca.cert, rejectUnauthorized: true });
    assert.equal(seen.authorized, true);
  }
  // curl resolves the names to 127.0.0.1 and verifies against the test CA.
  const { stdout } = await run('curl', ['-sS', '--cacert', ca.caPath, '--resolve', `x.apps.test:${lb.port}:127.0.0.1`, '-w', '\n%{http_code} %{ssl_verify_result}', `https://x.apps.test:${lb.port}/hello?q=1`]);
  const [body, summary] = stdout.split('\n');
  assert.equal(summary, '200 0');
  const echoed = JSON.parse(body) as { url: string; headers: Record<string, string> };
  assert.equal(echoed.url, '/hello?q=1');
  assert.equal(echoed.headers['x-forwarded-proto'], 'https');
  assert.equal(echoed.headers['x-forwarded-port'], String(lb.port));
});

test('unknown_name: reject answers an unknown name with an unrecognized_name alert; known names still work', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const lb = await startBalancer(t, {
    listeners: [httpsListener({ unknown_name: 'reject', certificates: [{ cert: c.a.certPath, key: c.a.keyPath }, { cert: c.fallback.certPath, key: c.fallback.keyPath, default: true }] })],
    pools: { web: { upstreams: [backend.url] } },
  });
  await assert.rejects(handshake(lb.port, { servername: 'nobody.test' }), (err: NodeJS.ErrnoException) => /unrecognized name/i.test(err.message) || err.code === 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
  assert.equal((await handshake(lb.port, { servername: 'a.test' })).serial, c.a.serial);
  // No SNI at all is not an unknown name: the default certificate answers.
  assert.equal((await handshake(lb.port)).serial, c.fallback.serial);
  const failures = lb.balancer.metrics ? await lb.balancer.metrics.scrape() : null;
  assert.match(failures!.body, /lb_tls_handshake_failures_total\{listener="[^"]+",reason="unknown_name"\} 1/);
});

test('TLS 1.2 and 1.3 only; modern is 1.3 only; ALPN offers h2 then http/1.1 and refuses what it cannot speak', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const lb = await startBalancer(t, {
    listeners: [httpsListener({ certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }), httpsListener({ profile: 'modern', certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }, { name: 'modern' })],
    pools: { web: { upstreams: [backend.url] } },
  });
  const [intermediate, modern] = lb.balancer.addresses();
  assert.equal((await handshake(intermediate.port, { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
  assert.equal((await handshake(intermediate.port)).protocol, 'TLSv1.3');
  await assert.rejects(handshake(intermediate.port, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' }));
  await assert.rejects(handshake(modern.port, { maxVersion: 'TLSv1.2' }));
  assert.equal((await handshake(modern.port)).protocol, 'TLSv1.3');
  // A weak TLS 1.2 cipher is never agreed.
  await assert.rejects(handshake(intermediate.port, { maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA:DES-CBC3-SHA:@SECLEVEL=0' }));
  assert.equal((await handshake(intermediate.port, { ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'h2');
  assert.equal((await handshake(intermediate.port, { ALPNProtocols: ['http/1.1', 'h2'] })).alpn, 'h2', 'the server\'s preference');
  assert.equal((await handshake(intermediate.port, { ALPNProtocols: ['http/1.1'] })).alpn, 'http/1.1');
  await assert.rejects(handshake(intermediate.port, { ALPNProtocols: ['h3'] }), /no application protocol/i);
  // The access log says which version and protocol a request came over.
  const r = await httpsGet(`https://127.0.0.1:${intermediate.port}/v`, { ca: ca.ca.cert, maxVersion: 'TLSv1.2', ALPNProtocols: ['http/1.1'] } as import('node:https').RequestOptions);
  assert.equal(r.status, 200);
  const line = await eventually(() => lb.logs.find((l) => l.includes('"log":"access"') && l.includes('"/v"')), { what: 'the access log line' });
  assert.match(line!, /"tls_version":"TLSv1\.2","alpn":"http\/1\.1"/);
  const scrape = await lb.balancer.metrics!.scrape();
  assert.match(scrape.body, /lb_tls_handshakes_total\{listener="[^"]+",version="TLSv1\.2"\} [1-9]/);
  // Each refusal counted under its reason.
  assert.match(scrape.body, /lb_tls_handshake_failures_total\{listener="127\.0\.0\.1:0",reason="no_shared_protocol_version"\} 1/);
  assert.match(scrape.body, /lb_tls_handshake_failures_total\{listener="127\.0\.0\.1:0",reason="no_shared_cipher"\} 1/);
  assert.match(scrape.body, /lb_tls_handshake_failures_total\{listener="127\.0\.0\.1:0",reason="no_application_protocol"\} 1/);
  assert.match(scrape.body, /lb_tls_handshake_failures_total\{listener="modern",reason="no_shared_protocol_version"\} 1/);
  assert.match(scrape.body, /lb_tls_certificate_expiry_seconds\{listener="[^"]+",name="localhost",source="[^"]+fallback\.crt \+ [^"]+fallback\.key"\} \d{6,}/);
});

test('plain HTTP sent to an https port gets a 400 that says so; silence is cut at handshake_timeout', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const lb = await startBalancer(t, {
    listeners: [httpsListener({ handshake_timeout: '300ms', certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] })],
    pools: { web: { upstreams: [backend.url] } },
  });
  const answer = await rawExchange(lb.port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n/);
  assert.match(answer, /this port speaks HTTPS/);
  const [head, body] = answer.split('\r\n\r\n');
  assert.equal(Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]), Buffer.byteLength(body, 'latin1'), 'Content-Length matches the body');
  const started = Date.now();
  const silent = await rawExchange(lb.port, '', 5000);
  assert.equal(silent, '');
  assert.ok(Date.now() - started < 3000, 'a silent client is cut near the handshake timeout, not left open');
  // Half a ClientHello, then nothing: cut too.
  const half = await rawExchange(lb.port, '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', 5000);
  assert.equal(half, '');
  // A client that resets halfway through its ClientHello, or right after a whole one: nothing breaks.
  for (const bytes of ['\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', '']) {
    await new Promise<void>((resolve) => {
      const s = net.connect(lb.port, '127.0.0.1', () => {
        if (bytes !== '') s.write(bytes, 'latin1');
        s.resetAndDestroy();
        resolve();
      });
      s.on('error', () => {});
    });
  }
  assert.equal((await handshake(lb.port)).serial, c.fallback.serial, 'the listener still serves');
  assert.equal(backend.requests.length, 0);
  const scrape = await lb.balancer.metrics!.scrape();
  assert.match(scrape.body, /reason="not_tls"\} 1/);
  assert.match(scrape.body, /reason="timeout"\} 2/);
});

test('the listener firewall closes denied clients before any TLS byte; connection limits free their slots', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const lb = await startBalancer(t, {
    listeners: [
      httpsListener({ certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }, { name: 'denied', firewall: { deny: ['127.0.0.1/32'] } }),
      httpsListener({ certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }, { name: 'limited', limits: { max_connections: 1 } }),
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  const [denied, limited] = lb.balancer.addresses();
  // The ClientHello goes out; nothing comes back: the socket is closed unread.
  const hello = await new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    const raw = net.connect(denied.port, '127.0.0.1');
    const secure = tls.connect({ socket: raw, servername: 'localhost', rejectUnauthorized: false });
    raw.on('data', (d: Buffer) => chunks.push(d));
    secure.on('error', () => {});
    raw.on('close', () => resolve(Buffer.concat(chunks)));
  });
  assert.equal(hello.length, 0);
  const scrape = await lb.balancer.metrics!.scrape();
  assert.match(scrape.body, /lb_client_connections_refused_total\{listener="denied"\} 1/);
  assert.doesNotMatch(scrape.body, /lb_tls_handshakes_total\{listener="denied"/);
  // One connection at a time: each closed one frees the slot for the next (five in a row).
  for (let i = 0; i < 5; i++) {
    const r = await httpsGet(`https://127.0.0.1:${limited.port}/n${i}`, { ca: ca.ca.cert, headers: { connection: 'close' } });
    assert.equal(r.status, 200);
    await eventually(() => lb.balancer.status().listeners.find((l) => l.name === 'limited')!.open_connections === 0, { what: 'the slot to free' });
  }
});

test('sessions resume with tickets; a rotated ticket key means a full handshake; tickets can be turned off', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const lb = await startBalancer(t, {
    listeners: [httpsListener({ ticket_key_rotation: '400ms', certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }), httpsListener({ session_tickets: false, certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }, { name: 'no-tickets' })],
    pools: { web: { upstreams: [backend.url] } },
  });
  const [withTickets, without] = lb.balancer.addresses();
  const resumes = (port: number, session?: Buffer): Promise<{ reused: boolean; session: Buffer | undefined }> =>
    new Promise((resolve, reject) => {
      let ticket: Buffer | undefined;
      const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, session, maxVersion: 'TLSv1.2' }, () => {
        const reused = s.isSessionReused();
        s.end();
        s.once('close', () => resolve({ reused, session: ticket ?? s.getSession() }));
      });
      s.on('session', (buf: Buffer) => (ticket = buf));
      s.on('error', reject);
    });
  const first = await resumes(withTickets.port);
  assert.equal(first.reused, false);
  const second = await resumes(withTickets.port, first.session);
  assert.equal(second.reused, true, 'a ticket resumes the session');
  assert.equal((await resumes(withTickets.port, first.session)).reused, true, 'a ticket resumes more than once while its key is in use');
  // The key rotates every ticket_key_rotation: a ticket of the old key then gets a full handshake.
  await eventually(async () => !(await resumes(withTickets.port, first.session)).reused, { what: 'the ticket key to rotate', timeout: 5000, interval: 50 });
  const off = await resumes(without.port);
  assert.equal((await resumes(without.port, off.session)).reused, false);
});

test('hsts on an https listener; redirect_https on an http listener keeps path and query, not the ACME path', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await startBackend(t, (req, res) => {
    // An upstream's own HSTS is replaced by the listener's, never sent twice.
    res.setHeader('strict-transport-security', 'max-age=1');
    res.end(`upstream saw ${req.url}`);
  });
  const lb = await startBalancer(t, {
    listeners: [
      httpsListener({ certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }, { hsts: { max_age: '365d', include_subdomains: true } }),
      { host: '127.0.0.1', port: 0, name: 'redirect', redirect_https: { port: 8443 } },
      { host: '127.0.0.1', port: 0, name: 'redirect-default', redirect_https: true },
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  const [secure, redirect, redirectDefault] = lb.balancer.addresses();
  const r = await httpsGet(`https://127.0.0.1:${secure.port}/`, { ca: ca.ca.cert });
  assert.equal(r.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains');
  const moved = await get(`http://127.0.0.1:${redirect.port}/a/b?x=1&y=%20`, { headers: { host: 'shop.example.com:80' } });
  assert.equal(moved.status, 308);
  assert.equal(moved.headers.location, 'https://shop.example.com:8443/a/b?x=1&y=%20');
  const post = await get(`http://127.0.0.1:${redirectDefault.port}/form`, { method: 'POST', headers: { host: 'shop.example.com' }, body: 'a=1' });
  assert.equal(post.status, 308);
  assert.equal(post.headers.location, 'https://shop.example.com/form');
  // Without a Host there is nothing to redirect to.
  const noHost = await rawExchange(redirect.port, 'GET / HTTP/1.0\r\n\r\n');
  assert.match(noHost, /^HTTP\/1\.[01] 400/);
  // The ACME challenge path is not redirected (with no challenge pending it goes to the routes).
  const acme = await get(`http://127.0.0.1:${redirect.port}/.well-known/acme-challenge/abc`, { headers: { host: 'shop.example.com' } });
  assert.equal(acme.status, 200);
  assert.equal(acme.body, 'upstream saw /.well-known/acme-challenge/abc');
  assert.equal(backend.requests.length, 2);
});


test('WebSocket over TLS (wss), keep-alive and pipelining over TLS, and a drain that closes idle TLS connections', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const ws = await startWsBackend(t);
  const lb = await startBalancer(t, {
    listeners: [httpsListener({ certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] })],
    pools: { web: { upstreams: [ws.url] } },
  });
  const client = await wsOpen(t, `https://localhost:${lb.port}/chat`, undefined, { ca: ca.ca.cert });
  const echoed = new Promise<string>((resolve) => client.once('message', (m) => resolve(String(m))));
  client.send('over tls');
  assert.equal(await echoed, 'over tls');
  client.close();
  // Three pipelined requests in one TLS write: answered in order on the one connection.
  const answers = await new Promise<string>((resolve, reject) => {
    let text = '';
    const s = tls.connect({ host: '127.0.0.1', port: lb.port, ca: ca.ca.cert, servername: 'localhost' }, () => {
      s.write('GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    });
    s.on('data', (d: Buffer) => (text += d.toString('latin1')));
    s.on('end', () => resolve(text));
    s.on('error', reject);
  });
  assert.equal(answers.match(/HTTP\/1\.1 200 OK\r\n/g)?.length, 3, answers);
  // An idle keep-alive TLS connection is closed by a drain at once, not at the end of the grace period.
  const idle = tls.connect({ host: '127.0.0.1', port: lb.port, ca: ca.ca.cert, servername: 'localhost' });
  await new Promise<void>((resolve) => idle.once('secureConnect', () => resolve()));
  idle.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n');
  await new Promise<void>((resolve) => idle.once('data', () => resolve()));
  const closed = new Promise<void>((resolve) => idle.once('close', () => resolve()));
  const started = Date.now();
  await lb.balancer.close(10_000);
  await closed;
  assert.ok(Date.now() - started < 5000, 'the idle connection did not wait for the grace period');
});

test('a configuration reload adds a certificate to a running listener; trusted proxies may set X-Forwarded-Port', async (t) => {
  const ca = await makeTestCa(t);
  const c = await siteCertificates(ca);
  const backend = await echoBackend(t);
  const base = {
    listeners: [httpsListener({ certificates: [{ cert: c.fallback.certPath, key: c.fallback.keyPath }] }, { trusted_proxies: ['127.0.0.1/32'] })],
    pools: { web: { upstreams: [backend.url] } },
  };
  const lb = await startBalancer(t, base);
  assert.equal((await handshake(lb.port, { servername: 'a.test' })).serial, c.fallback.serial);
  const next = structuredClone(base);
  (next.listeners[0].tls as { certificates: unknown[] }).certificates.push({ cert: c.a.certPath, key: c.a.keyPath });
  (next.listeners[0] as { port: number }).port = lb.port;
  await lb.balancer.reload(next);
  assert.equal((await handshake(lb.port, { servername: 'a.test' })).serial, c.a.serial);
  const r = await httpsGet(`https://127.0.0.1:${lb.port}/`, { ca: ca.ca.cert, headers: { 'x-forwarded-port': '443', 'x-forwarded-proto': 'https' } });
  assert.equal((JSON.parse(r.body) as { headers: Record<string, string> }).headers['x-forwarded-port'], '443');
});
