/**
 * TLS to upstreams (issue 12, part 6), on real Node https backends on 127.0.0.1 with a test CA
 * made here, through each transport (http1, the default; undici; node-http): a good
 * certificate is 200; an expired, a self-signed and a wrong-name one are 502 FUL_UPSTREAM_TLS
 * with the reason in the body and the access log; SNI (the host, or `server_name`); a client
 * certificate; `insecure_skip_verify`; a backend that never answers the handshake is a 504
 * within the connect timeout; failover past a bad certificate; health checks over TLS;
 * keep-alive and TLS session reuse counted at the backend; TLS files read at build.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { readFileSync, writeFileSync } from 'node:fs';
import type tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { makeTestCa, type CertFiles, type TestCa } from '../helpers/tls.ts';
import { get, startBalancer, startRawBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { wsOpen } from '../helpers/websocket.ts';
import { WebSocketServer } from 'ws';
import { accessFields } from '../../src/observe/access-log-json.ts';
import { ErrorCode } from '../../src/errors.ts';
import { readUpstreamTls, UpstreamTlsFileError } from '../../src/transport/upstream-tls.ts';

const transports = ['http1', 'undici', 'node-http'] as const;
const day = 86_400_000;

/** An https backend on 127.0.0.1:0 that counts handshakes (full and resumed) and records SNI and client certificates. */
interface TlsBackend {
  url: string;
  port: number;
  server: https.Server;
  /** Handshakes completed, and how many of them resumed a session. */
  handshakes: { full: number; resumed: number };
  /** Per request: the SNI the client sent (false: none), and the client certificate's CN ('' without one). */
  seen: { servername: string | false; clientCn: string }[];
}

async function startTlsBackend(t: TestContext, files: CertFiles, options: https.ServerOptions = {}, handler?: (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void): Promise<TlsBackend> {
  const handshakes = { full: 0, resumed: 0 };
  const seen: TlsBackend['seen'] = [];
  const server = https.createServer({ cert: files.cert, key: files.key, ...options }, (req, res) => {
    const socket = req.socket as tls.TLSSocket;
    const peer = socket.getPeerCertificate();
    seen.push({ servername: socket.servername ?? false, clientCn: String(peer?.subject?.CN ?? '') });
    if (handler) handler(req, res);
    else res.end('ok');
  });
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    if (socket.isSessionReused()) handshakes.resumed++;
    else handshakes.full++;
  });
  // Refused handshakes end here, not as unhandled errors.
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  // Every TCP connection, upgraded ones too (closeAllConnections leaves those), is cut at the end.
  const sockets = new Set<import('node:net').Socket>();
  server.on('connection', (socket: import('node:net').Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  t.after(() => new Promise<void>((resolve) => {
    for (const socket of sockets) socket.destroy();
    server.close(() => resolve());
  }));
  return { url: `https://127.0.0.1:${port}`, port, server, handshakes, seen };
}

/** One CA and the four certificates of "must show": good, expired, self-signed, wrong name. */
async function certificates(t: TestContext): Promise<{ ca: TestCa; good: CertFiles; expired: CertFiles; selfSigned: CertFiles; wrongName: CertFiles }> {
  const ca = await makeTestCa(t);
  const now = Date.now();
  return {
    ca,
    good: await ca.issue('good'),
    expired: await ca.issue('expired', { notBefore: new Date(now - 30 * day), notAfter: new Date(now - day) }),
    selfSigned: await ca.selfSigned('self-signed'),
    wrongName: await ca.issue('wrong-name', { names: ['a.test'] }),
  };
}

/** Access-log lines (parsed) among the balancer's JSON log lines. */
function accessLines(logs: string[]): Record<string, unknown>[] {
  return logs
    .join('')
    .split('\n')
    .filter((l) => l.includes('"log":"access"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

for (const transport of transports) {
  test(`${transport}: a good certificate is 200; expired, self-signed and wrong-name are 502 FUL_UPSTREAM_TLS with the reason (body and access log)`, async (t) => {
    const { ca, good, expired, selfSigned, wrongName } = await certificates(t);
    const backends = {
      good: await startTlsBackend(t, good),
      expired: await startTlsBackend(t, expired),
      self: await startTlsBackend(t, selfSigned),
      wrong: await startTlsBackend(t, wrongName),
    };
    const pool = (b: TlsBackend) => ({ transport, upstreams: [b.url], tls: { ca: ca.caPath } });
    const lb = await startBalancer(t, {
      routes: Object.keys(backends).map((name) => ({ path_prefix: `/${name}`, pool: name })),
      pools: Object.fromEntries(Object.entries(backends).map(([name, b]) => [name, pool(b)])),
    });
    const answers: Record<string, { status: number; body: string }> = {};
    for (const name of Object.keys(backends)) {
      const r = await get(`${lb.url}/${name}`);
      answers[name] = { status: r.status, body: r.body.split('\n')[0] };
    }
    t.diagnostic(JSON.stringify(answers));
    assert.deepEqual(answers.good, { status: 200, body: 'ok' });
    assert.deepEqual(answers.expired, { status: 502, body: '502 Bad Gateway: TLS handshake with upstream failed: certificate has expired (CERT_HAS_EXPIRED)' });
    assert.deepEqual(answers.self, { status: 502, body: '502 Bad Gateway: TLS handshake with upstream failed: self-signed certificate (DEPTH_ZERO_SELF_SIGNED_CERT)' });
    assert.deepEqual(answers.wrong, {
      status: 502,
      body: '502 Bad Gateway: TLS handshake with upstream failed: hostname mismatch: certificate covers DNS:a.test, not 127.0.0.1 (ERR_TLS_CERT_ALTNAME_INVALID)',
    });
    // No request reached a backend whose certificate failed.
    assert.equal(backends.expired.seen.length + backends.self.seen.length + backends.wrong.seen.length, 0);
    // The access log: the code and the reason.
    const failed = lb.ended.filter((ctx) => ctx.status === 502).map((ctx) => accessFields(ctx));
    assert.deepEqual(failed.map((f) => f.error), [ErrorCode.UpstreamTls, ErrorCode.UpstreamTls, ErrorCode.UpstreamTls]);
    await eventually(() => accessLines(lb.logs).filter((l) => l.status === 502).length === 3, { what: 'three access-log lines for the 502s' });
    const lines = accessLines(lb.logs).filter((l) => l.status === 502);
    assert.deepEqual(
      lines.map((l) => [l.path, l.error, l.reason]),
      [
        ['/expired', 'FUL_UPSTREAM_TLS', 'TLS handshake with upstream failed: certificate has expired (CERT_HAS_EXPIRED)'],
        ['/self', 'FUL_UPSTREAM_TLS', 'TLS handshake with upstream failed: self-signed certificate (DEPTH_ZERO_SELF_SIGNED_CERT)'],
        ['/wrong', 'FUL_UPSTREAM_TLS', 'TLS handshake with upstream failed: hostname mismatch: certificate covers DNS:a.test, not 127.0.0.1 (ERR_TLS_CERT_ALTNAME_INVALID)'],
      ],
    );
  });

  test(`${transport}: a backend that does not speak TLS, and one that hangs up during the handshake, are 502 FUL_UPSTREAM_TLS saying so`, async (t) => {
    const plain = await startRawBackend(t, (socket) => socket.on('data', () => socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n')));
    const hangup = await startRawBackend(t, (socket) => socket.once('data', () => socket.destroy()));
    const lb = await startBalancer(t, {
      routes: [
        { path_prefix: '/plain', pool: 'plain' },
        { path_prefix: '/hangup', pool: 'hangup' },
      ],
      pools: {
        plain: { transport, upstreams: [`https://127.0.0.1:${plain.port}`] },
        hangup: { transport, upstreams: [`https://127.0.0.1:${hangup.port}`] },
      },
    });
    const first = async (path: string): Promise<string> => {
      const r = await get(`${lb.url}${path}`);
      assert.equal(r.status, 502, path);
      return r.body.split('\n')[0];
    };
    assert.equal(await first('/plain'), '502 Bad Gateway: TLS handshake with upstream failed: the upstream does not speak TLS on this port (a plain http:// port?) (ERR_SSL_WRONG_VERSION_NUMBER)');
    assert.equal(await first('/hangup'), '502 Bad Gateway: TLS handshake with upstream failed: the upstream closed the connection during the handshake (ECONNRESET)');
    assert.deepEqual(lb.ended.map((ctx) => ctx.error?.code), [ErrorCode.UpstreamTls, ErrorCode.UpstreamTls]);
  });

  test(`${transport}: SNI is the upstream's host name, none for an IP address, and tls.server_name when set (the wrong-name certificate then passes)`, async (t) => {
    const { ca, good, wrongName } = await certificates(t);
    const byHost = await startTlsBackend(t, good);
    const renamed = await startTlsBackend(t, wrongName);
    const lb = await startBalancer(t, {
      routes: [
        { path_prefix: '/host', pool: 'host' },
        { path_prefix: '/ip', pool: 'ip' },
        { path_prefix: '/renamed', pool: 'renamed' },
        { path_prefix: '/address', pool: 'address' },
      ],
      pools: {
        host: { transport, upstreams: [`https://localhost:${byHost.port}`], tls: { ca: ca.caPath } },
        ip: { transport, upstreams: [byHost.url], tls: { ca: ca.caPath } },
        renamed: { transport, upstreams: [renamed.url], tls: { ca: ca.caPath, server_name: 'a.test' } },
        // A server_name that is an IP address: no SNI, the certificate checked against that address.
        address: { transport, upstreams: [`https://localhost:${byHost.port}`], tls: { ca: ca.caPath, server_name: '127.0.0.1' } },
      },
    });
    for (const path of ['/host', '/ip', '/renamed', '/address']) assert.equal((await get(`${lb.url}${path}`)).status, 200, path);
    assert.deepEqual(byHost.seen.map((s) => s.servername), ['localhost', false, false]);
    assert.deepEqual(renamed.seen.map((s) => s.servername), ['a.test']);
  });

  test(`${transport}: a client certificate reaches a backend that requires one; without it the 502 says so`, async (t) => {
    const { ca, good } = await certificates(t);
    const client = await ca.issue('client', { commonName: 'fulcrum-client', names: [], usage: 'client' });
    const strict = await startTlsBackend(t, good, { requestCert: true, rejectUnauthorized: true, ca: ca.ca.cert });
    const lb = await startBalancer(t, {
      routes: [
        { path_prefix: '/with', pool: 'with' },
        { path_prefix: '/separate', pool: 'separate' },
        { path_prefix: '/without', pool: 'without' },
      ],
      pools: {
        with: { transport, upstreams: [strict.url], tls: { ca: ca.caPath, cert: client.bothPath } },
        separate: { transport, upstreams: [strict.url], tls: { ca: ca.caPath, cert: client.certPath, key: client.keyPath } },
        without: { transport, upstreams: [strict.url], tls: { ca: ca.caPath } },
      },
    });
    assert.equal((await get(`${lb.url}/with`)).status, 200);
    assert.equal((await get(`${lb.url}/separate`)).status, 200);
    assert.deepEqual(strict.seen.map((s) => s.clientCn), ['fulcrum-client', 'fulcrum-client']);
    const refused = await get(`${lb.url}/without`);
    t.diagnostic(refused.body.split('\n')[0]);
    assert.equal(refused.status, 502);
    assert.match(refused.body, /^502 Bad Gateway: TLS handshake with upstream failed: the upstream requires a client certificate \(tls\.cert\) \(ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED\)/);
    assert.equal(strict.seen.length, 2, 'the request without a certificate never reached the backend');
  });

  test(`${transport}: insecure_skip_verify accepts a self-signed certificate, and the pool says so in a warning`, async (t) => {
    const { selfSigned } = await certificates(t);
    const backend = await startTlsBackend(t, selfSigned);
    const lb = await startBalancer(t, { pools: { lab: { transport, upstreams: [backend.url], tls: { insecure_skip_verify: true } } } });
    assert.equal((await get(`${lb.url}/`)).status, 200);
    const warning = lb.balancer.pools().get('lab')!.tlsWarning();
    assert.match(warning ?? '', /^pool lab: tls\.insecure_skip_verify is on: the certificates of 127\.0\.0\.1:\d+ are NOT verified/);
  });

  test(`${transport}: a backend that takes the connection and never answers the handshake is a 504 within the connect timeout; with another upstream, a 200`, async (t) => {
    const { ca, good } = await certificates(t);
    const silent = await startRawBackend(t, () => {});
    const backend = await startTlsBackend(t, good);
    const silentUrl = `https://127.0.0.1:${silent.port}`;
    const lb = await startBalancer(t, {
      routes: [
        { path_prefix: '/alone', pool: 'alone' },
        { path_prefix: '/pair', pool: 'pair' },
      ],
      pools: {
        alone: { transport, upstreams: [silentUrl], tls: { ca: ca.caPath }, timeouts: { connect: '300ms' } },
        pair: { transport, policy: 'round-robin', upstreams: [silentUrl, backend.url], tls: { ca: ca.caPath }, timeouts: { connect: '300ms' } },
      },
    });
    const started = performance.now();
    const r = await get(`${lb.url}/alone`);
    const took = performance.now() - started;
    t.diagnostic(`${Math.round(took)}ms: ${r.body.split('\n')[0]}`);
    assert.equal(r.status, 504);
    assert.match(r.body, /^504 Gateway Timeout: connect timeout/);
    assert.ok(took >= 290 && took < 1500, `answered in ${Math.round(took)}ms`);
    assert.equal(lb.ended.at(-1)!.error!.code, ErrorCode.ConnectTimeout);
    for (let i = 0; i < 4; i++) assert.equal((await get(`${lb.url}/pair`)).status, 200);
  });

  test(`${transport}: a pool of [expired, good] answers 200 to every request; the expired one is retried past and ejected`, async (t) => {
    const { ca, good, expired } = await certificates(t);
    const bad = await startTlsBackend(t, expired);
    const ok = await startTlsBackend(t, good);
    const lb = await startBalancer(t, { pools: { web: { transport, policy: 'round-robin', upstreams: [bad.url, ok.url], tls: { ca: ca.caPath } } } });
    const statuses = [];
    for (let i = 0; i < 20; i++) statuses.push((await get(`${lb.url}/`, { method: i % 2 === 0 ? 'GET' : 'POST', body: i % 2 === 0 ? undefined : 'x' })).status);
    assert.deepEqual(statuses, Array(20).fill(200));
    assert.equal(ok.seen.length, 20);
    const [down] = lb.balancer.pools().get('web')!.upstreams;
    assert.ok(down.failures >= 1, 'counted as failures of the expired upstream');
    assert.equal(down.ejected, true, 'ejected by outlier detection (5 consecutive failures)');
    assert.match(lb.logs.join(''), /ejected false -> true \(5 consecutive failures, last: TLS handshake with upstream failed: certificate has expired \(CERT_HAS_EXPIRED\)/);
  });

  test(`${transport}: a WebSocket reaches an https upstream and echoes over TLS`, async (t) => {
    const { ca, good } = await certificates(t);
    const backend = await startTlsBackend(t, good);
    const wss = new WebSocketServer({ server: backend.server });
    wss.on('connection', (socket) => socket.on('message', (data, binary) => socket.send(data, { binary })));
    t.after(() => new Promise<void>((resolve) => wss.close(() => resolve())));
    const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url], tls: { ca: ca.caPath } } } });
    const ws = await wsOpen(t, `${lb.url}/chat`);
    const echoed = new Promise<string>((resolve) => ws.once('message', (data) => resolve(String(data))));
    ws.send('over tls');
    assert.equal(await echoed, 'over tls');
    assert.equal(backend.handshakes.full, 1);
  });

  test(`${transport}: keep-alive connections are reused, and a new connection resumes the TLS session`, async (t) => {
    const { ca, good } = await certificates(t);
    const kept = await startTlsBackend(t, good);
    // A backend that closes after every answer: every request needs a new connection.
    const closing = await startTlsBackend(t, good, {}, (_req, res) => {
      res.setHeader('connection', 'close');
      res.end('ok');
    });
    const lb = await startBalancer(t, {
      routes: [
        { path_prefix: '/kept', pool: 'kept' },
        { path_prefix: '/closing', pool: 'closing' },
      ],
      pools: {
        kept: { transport, upstreams: [kept.url], tls: { ca: ca.caPath } },
        closing: { transport, upstreams: [closing.url], tls: { ca: ca.caPath } },
      },
    });
    for (let i = 0; i < 10; i++) assert.equal((await get(`${lb.url}/kept`)).status, 200);
    assert.deepEqual(kept.handshakes, { full: 1, resumed: 0 }, 'ten requests, one handshake');
    for (let i = 0; i < 6; i++) assert.equal((await get(`${lb.url}/closing`)).status, 200);
    t.diagnostic(`closing backend: ${JSON.stringify(closing.handshakes)}`);
    assert.deepEqual(closing.handshakes, { full: 1, resumed: 5 }, 'one full handshake, then resumed sessions');
  });
}

test('insecure_skip_verify: a warning naming the pool at start and at every reload that keeps it', async (t) => {
  const { selfSigned } = await certificates(t);
  const backend = await startTlsBackend(t, selfSigned);
  const config = { pools: { lab: { upstreams: [backend.url], tls: { insecure_skip_verify: true } } } };
  const lb = await startBalancer(t, config);
  const warnings = (): number => lb.logs.filter((l) => l.includes('"level":40') && l.includes('pool lab: tls.insecure_skip_verify is on')).length;
  assert.equal(warnings(), 1, 'at start');
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], ...config });
  assert.equal(warnings(), 2, 'at a reload that keeps it');
});

test('health checks over TLS (http and tcp): the expired upstream goes unhealthy with the reason in the state-change line; the good one stays', { timeout: 20_000 }, async (t) => {
  const { ca, good, expired } = await certificates(t);
  const bad = await startTlsBackend(t, expired);
  const ok = await startTlsBackend(t, good);
  const checks = { interval: '100ms', fast_interval: '50ms', timeout: '500ms', rise: 1, fall: 1, jitter: 0 };
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/http', pool: 'http' },
      { path_prefix: '/tcp', pool: 'tcp' },
    ],
    pools: {
      http: { upstreams: [bad.url, ok.url], tls: { ca: ca.caPath }, health_check: { ...checks, path: '/' } },
      tcp: { upstreams: [bad.url, ok.url], tls: { ca: ca.caPath }, health_check: { ...checks, type: 'tcp' } },
    },
  });
  for (const name of ['http', 'tcp']) {
    const [down, up] = lb.balancer.pools().get(name)!.upstreams;
    await eventually(() => down.health === 'unhealthy', { what: `${name}: the expired upstream to go unhealthy` });
    assert.equal(up.health, 'healthy');
  }
  const log = lb.logs.join('');
  assert.match(log, new RegExp(`upstream 127\\.0\\.0\\.1:${bad.port} in pool http: health healthy -> unhealthy \\(TLS handshake failed: certificate has expired \\(CERT_HAS_EXPIRED\\) \\(1 consecutive checks failed\\)\\)`));
  assert.match(log, new RegExp(`upstream 127\\.0\\.0\\.1:${bad.port} in pool tcp: health healthy -> unhealthy \\(TLS handshake failed: certificate has expired \\(CERT_HAS_EXPIRED\\) \\(1 consecutive checks failed\\)\\)`));
  assert.doesNotMatch(log, new RegExp(`127\\.0\\.0\\.1:${ok.port} in pool \\w+: health`));
  // The checker's http probes reach the good backend over TLS (the expired one can fail its first
  // probe before the good one's first probe has landed, so this is polled).
  await eventually(() => ok.seen.length > 0, { what: 'an http probe to reach the good backend' });
  for (let i = 0; i < 4; i++) assert.equal((await get(`${lb.url}/http`)).status, 200);
});

test('TLS files are read when the pool is built: a file that cannot be used names the key and the path; a reload with one is refused', async (t) => {
  const { ca, good } = await certificates(t);
  const missing = `${ca.dir}/nope.pem`;
  const cases: [Parameters<typeof readUpstreamTls>[0], string, RegExp][] = [
    [{ ca: missing, insecure_skip_verify: false }, 'ca', /^tls\.ca: cannot read .*nope\.pem: no such file$/],
    [{ ca: good.keyPath, insecure_skip_verify: false }, 'ca', /^tls\.ca: .*good\.key holds no PEM certificate/],
    [{ cert: good.certPath, insecure_skip_verify: false }, 'cert', /^tls\.cert: .*good\.crt holds no private key: give it in tls\.key/],
    [{ cert: good.certPath, key: ca.caPath, insecure_skip_verify: false }, 'key', /^tls\.key: .*ca\.pem holds no PEM private key/],
    [{ key: good.keyPath, insecure_skip_verify: false }, 'key', /^tls\.key: a key without a certificate/],
  ];
  for (const [settings, key, message] of cases) {
    assert.throws(() => readUpstreamTls(settings), (err: unknown) => {
      assert.ok(err instanceof UpstreamTlsFileError);
      assert.equal(err.key, key);
      assert.match(err.message, message);
      return true;
    });
  }
  const other = await ca.issue('other');
  assert.throws(() => readUpstreamTls({ cert: good.certPath, key: other.keyPath, insecure_skip_verify: false }), /^UpstreamTlsFileError: tls\.key: the private key in .*other\.key does not belong to the certificate in .*good\.crt/);
  const backend = await startTlsBackend(t, good);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url], tls: { ca: ca.caPath } } } });
  assert.equal((await get(`${lb.url}/`)).status, 200);
  // A renewed file: the pool says it should be built again; the same bytes again: it does not.
  const pool = lb.balancer.pools().get('web')!;
  assert.equal(pool.tlsFilesChanged(), false);
  const original = readFileSync(ca.caPath, 'utf8');
  writeFileSync(ca.caPath, original + (await makeTestCa(t, 'Another CA')).ca.cert);
  assert.equal(pool.tlsFilesChanged(), true);
  writeFileSync(ca.caPath, original);
  assert.equal(pool.tlsFilesChanged(), false);
  await assert.rejects(lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { upstreams: [backend.url], tls: { ca: missing } } } }), /tls\.ca: .*nope\.pem.*no such file/);
  assert.equal((await get(`${lb.url}/`)).status, 200, 'the running configuration stays');
});

test('an address that changes from http:// to https:// gets a new upstream (and TLS)', async (t) => {
  const { ca, good } = await certificates(t);
  const backend = await startTlsBackend(t, good);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [`http://127.0.0.1:${backend.port}`] } } });
  // Plain HTTP to a TLS port: the backend hangs up.
  assert.equal((await get(`${lb.url}/`)).status, 502);
  await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: lb.port }], pools: { web: { upstreams: [backend.url], tls: { ca: ca.caPath } } } });
  const [u] = lb.balancer.pools().get('web')!.upstreams;
  assert.equal(u.secure, true);
  assert.equal((await get(`${lb.url}/`)).status, 200);
});
