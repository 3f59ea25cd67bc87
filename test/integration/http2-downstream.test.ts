/**
 * HTTP/2 from clients: h2 by ALPN on https listeners, h2c with prior knowledge on http ones,
 * each stream one exchange through the core (balanced per stream), driven by curl and Node's
 * http2 client.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';

const run = promisify(execFile);

/** One request over an HTTP/2 session; resolves with status, headers and body. */
function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string; trailers: http2.IncomingHttpHeaders | null }> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | null = null;
    const chunks: Buffer[] = [];
    req.on('response', (h) => (head = h));
    req.on('trailers', (t) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks).toString(), trailers }));
    req.on('error', reject);
    if (body !== undefined) req.end(body);
  });
}

async function threeBackends(t: import('node:test').TestContext) {
  return Promise.all(
    ['a', 'b', 'c'].map((name) =>
      startBackend(t, (req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          res.setHeader('x-backend', name);
          res.setHeader('set-cookie', ['a=1', 'b=2']);
          res.end(JSON.stringify({ backend: name, method: req.method, url: req.url, host: req.headers.host, cookie: req.headers.cookie ?? null, body: Buffer.concat(chunks).toString(), proto: req.headers['x-forwarded-proto'] }));
        });
      }),
    ),
  );
}

test('h2c with prior knowledge: streams of one connection are balanced across upstreams', async (t) => {
  const backends = await threeBackends(t);
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, http2: { h2c: true } }], pools: { web: { upstreams: backends.map((b) => b.url) } } });
  const session = http2.connect(lb.url);
  t.after(() => session.close());
  const seen = new Set<string>();
  for (let i = 0; i < 6; i++) {
    const r = await h2Request(session, { ':path': `/x?i=${i}`, ':method': 'GET', cookie: ['k=1', 'j=2'] });
    assert.equal(r.status, 200);
    let body; try { body = JSON.parse(r.body); } catch { throw new Error(`status ${r.status} body ${r.body}`); }
    seen.add(body.backend);
    assert.equal(body.url, `/x?i=${i}`);
    assert.equal(body.cookie, 'k=1; j=2');
    assert.deepEqual(r.headers['set-cookie'], ['a=1', 'b=2']);
  }
  assert.equal(seen.size, 3, 'one connection, three upstreams');
  const posted = await h2Request(session, { ':path': '/p', ':method': 'POST' }, 'hello');
  assert.equal(JSON.parse(posted.body).body, 'hello');
  // HTTP/1.1 on the same listener still works.
  const h1 = await run('curl', ['-s', '--http1.1', `${lb.url}/h1`]);
  assert.equal(JSON.parse(h1.stdout).url, '/h1');
  const prior = await run('curl', ['-s', '--http2-prior-knowledge', '-w', '\n%{http_version}', `${lb.url}/c`]);
  assert.match(prior.stdout, /\n2$/);
});

test('https listener: ALPN h2 and http/1.1 on one port (curl --http2)', async (t) => {
  const backends = await threeBackends(t);
  const ca = await makeTestCa(t);
  const cert = await ca.issue('site');
  const lb = await startBalancer(t, { listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: cert.certPath, key: cert.keyPath }] } }], pools: { web: { upstreams: backends.map((b) => b.url) } } });
  const url = `https://localhost:${lb.port}/s`;
  const h2 = await run('curl', ['-s', '--http2', '--cacert', ca.caPath, '--resolve', `localhost:${lb.port}:127.0.0.1`, '-w', '\n%{http_version}', url]);
  assert.match(h2.stdout, /\n2$/);
  assert.equal(JSON.parse(h2.stdout.split('\n')[0]).proto, 'https');
  const h1 = await run('curl', ['-s', '--http1.1', '--cacert', ca.caPath, '--resolve', `localhost:${lb.port}:127.0.0.1`, '-w', '\n%{http_version}', url]);
  assert.match(h1.stdout, /\n1\.1$/);
});
