/**
 * The request-target on real sockets: routes and path rules decide on the normalised path,
 * the upstream gets the target byte for byte (both transports), and the per-route
 * `path: {forward, encoded_slashes}` options. Raw bytes in and a raw backend out, since HTTP
 * clients and servers tidy paths themselves.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { rawExchange, startBalancer, startRawBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { validateConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/errors.ts';

/** A backend that answers 200 and keeps each request line it received. */
async function lineRecorder(t: TestContext) {
  const lines: string[] = [];
  const raw = await startRawBackend(t, (socket) => {
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      let end: number;
      while ((end = buffered.indexOf('\r\n\r\n')) !== -1) {
        lines.push(buffered.slice(0, buffered.indexOf('\r\n')));
        buffered = buffered.slice(end + 4);
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  return { ...raw, lines };
}

/** Sends `GET <target>` as raw bytes and returns the status line. */
async function send(port: number, target: string, host = 'a'): Promise<string> {
  const answer = await rawExchange(port, `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  return answer.split('\r\n')[0];
}

// Sent as the client wrote them, each must reach the backend unchanged.
const asSent = [
  '/api/queues/%2F/tasks',
  '/files/a%5Cb.txt',
  '/api/files//x',
  '/a/./b//c/../d?q=%2e%2e',
  '/x/../y',
  '/a\\b',
  '/shop;jsessionid=7/cart',
  '/%7Euser/caf%c3%a9?x=%2F&y=/../',
  '/plain/path?x=1',
];

test('request-target: the backend gets the target byte for byte, on both transports', async (t) => {
  for (const transport of ['http1', 'undici', 'node-http'] as const) {
    const backend = await lineRecorder(t);
    const lb = await startBalancer(t, { pools: { web: { transport, upstreams: [backend.url] } } });
    for (const target of asSent) assert.equal(await send(lb.port, target), 'HTTP/1.1 200 OK', `${transport} ${target}`);
    // Absolute-form goes on in origin-form, its path bytes as sent.
    assert.equal(await send(lb.port, 'http://a/api/queues/%2F/x/../tasks?q=%2F'), 'HTTP/1.1 200 OK');
    assert.equal(await send(lb.port, 'http://a?x=1'), 'HTTP/1.1 200 OK');
    await eventually(() => backend.lines.length === asSent.length + 2, { what: `${transport}: every request at the backend` });
    assert.deepEqual(backend.lines, [...asSent.map((p) => `GET ${p} HTTP/1.1`), 'GET /api/queues/%2F/x/../tasks?q=%2F HTTP/1.1', 'GET /?x=1 HTTP/1.1'], transport);
  }
});

test('request-target: every spelling of /admin meets the /admin rules, and none reaches the backend', async (t) => {
  const backend = await lineRecorder(t);
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/admin', pool: 'web', firewall: { allow: ['10.0.0.0/8'] } },
      { path_prefix: '/~ops', pool: 'web', firewall: { allow: ['10.0.0.0/8'] } },
      { pool: 'web' },
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  const spellings = [
    '/admin', '/./admin', '/%2e/admin', '/%2E%2E/x/../admin', '/admin%2fsecrets', '/admin%2Fsecrets', '//admin', '/x/../admin',
    '/x/%2e%2e/admin/', '/%2Fadmin', '/%5Cadmin', '/x\\..\\admin', '/%61dmin', '/x/..;/admin', '/admin;x/secrets', '/public/..%2Fadmin',
    'http://a/x/../admin', '/~ops', '/%7eops/x', '/%7Eops',
  ];
  for (const target of spellings) assert.match(await send(lb.port, target), /^HTTP\/1\.1 403 /, target);
  assert.deepEqual(backend.lines, [], 'the backend received none of them');
  assert.equal(await send(lb.port, '/administrator'), 'HTTP/1.1 200 OK');
  assert.equal(await send(lb.port, '/a/admin'), 'HTTP/1.1 200 OK');
  await eventually(() => backend.lines.length === 2, { what: 'the two allowed requests' });
});

test('request-target: a ".." that leaves a route must pass that route\'s rules too', async (t) => {
  const backend = await lineRecorder(t);
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/admin', pool: 'web', firewall: { allow: ['10.0.0.0/8'] } },
      { path_prefix: '/api', pool: 'web' },
      { pool: 'web' },
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  // Matched as `/` or `/public`, but a backend that does not resolve `..` (an Express route
  // `/admin/:x`) reads them under /admin.
  for (const target of ['/admin/..', '/admin/../public', '/admin%2F..', '/admin/x/%2e%2e/..', '/admin;x/../public', '/admin\\..']) {
    assert.match(await send(lb.port, target), /^HTTP\/1\.1 403 /, target);
  }
  assert.deepEqual(backend.lines, []);
  // A ".." between open routes changes nothing: forwarded as sent.
  assert.equal(await send(lb.port, '/api/../public'), 'HTTP/1.1 200 OK');
  await eventually(() => backend.lines.length === 1, { what: 'the open request' });
  assert.deepEqual(backend.lines, ['GET /api/../public HTTP/1.1']);
});

test('request-target: malformed escapes and %00 are a 400 and never reach the backend', async (t) => {
  const backend = await lineRecorder(t);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } } });
  for (const target of ['/a%zz', '/a%', '/a%2', '/a%00b', '/%00', '/a%g1', 'http://a/%zz', '/a#frag']) {
    assert.match(await send(lb.port, target), /^HTTP\/1\.1 400 /, target);
  }
  assert.deepEqual(backend.lines, []);
});

test('request-target: a route may forward the normalised path, and refuse or unescape encoded slashes', async (t) => {
  const backend = await lineRecorder(t);
  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/norm', pool: 'web', path: { forward: 'normalized' } },
      { path_prefix: '/strict', pool: 'web', path: { encoded_slashes: 'reject' } },
      { path_prefix: '/unescape', pool: 'web', path: { encoded_slashes: 'unescape' } },
      { pool: 'web', path: { forward: 'original', encoded_slashes: 'keep' } },
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  assert.equal(await send(lb.port, '/norm/./a//b/%2e%2e/c%2Fd?q=/../%2e'), 'HTTP/1.1 200 OK');
  assert.equal(await send(lb.port, '/norm;v=1/%7Ex'), 'HTTP/1.1 200 OK');
  assert.match(await send(lb.port, '/strict/a%2Fb'), /^HTTP\/1\.1 400 /);
  assert.match(await send(lb.port, '/strict/a%5cb'), /^HTTP\/1\.1 400 /);
  assert.equal(await send(lb.port, '/strict/a/b?x=%2F'), 'HTTP/1.1 200 OK');
  assert.equal(await send(lb.port, '/unescape/a%2Fb%5Cc%20d'), 'HTTP/1.1 200 OK');
  assert.equal(await send(lb.port, '/keep/a%2Fb'), 'HTTP/1.1 200 OK');
  await eventually(() => backend.lines.length === 5, { what: 'five requests at the backend' });
  assert.deepEqual(backend.lines, [
    'GET /norm/a/c/d?q=/../%2e HTTP/1.1',
    'GET /norm;v=1/~x HTTP/1.1',
    'GET /strict/a/b?x=%2F HTTP/1.1',
    'GET /unescape/a/b\\c%20d HTTP/1.1',
    'GET /keep/a%2Fb HTTP/1.1',
  ]);
});

test('request-target: a path_prefix that is not normalised is refused by the configuration check', () => {
  for (const [prefix, hint] of [['/a/../admin', '/admin'], ['/%7Euser', '/~user'], ['//api', '/api'], ['/a%2Fb', '/a/b'], ['/api;v=1', '/api']]) {
    assert.throws(
      () => validateConfig({ routes: [{ path_prefix: prefix, pool: 'web' }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } }),
      (err: unknown) => err instanceof ConfigError && err.message.includes(`write "${hint}"`),
      prefix,
    );
  }
  assert.throws(() => validateConfig({ routes: [{ path_prefix: '/a%zz', pool: 'web' }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } }), /malformed percent-encoding/);
  assert.throws(() => validateConfig({ routes: [{ pool: 'web', path: { encoded_slashes: 'decode' } }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } } as never), ConfigError);
  for (const prefix of ['/', '/api', '/api/', '/a%20b', '/~user']) validateConfig({ routes: [{ path_prefix: prefix, pool: 'web' }], pools: { web: { upstreams: ['http://127.0.0.1:1'] } } });
});
