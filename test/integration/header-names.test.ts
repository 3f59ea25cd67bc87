/**
 * Header names that backends read differently, on real sockets: names with `_` (dropped,
 * allowed or refused per listener, counted, logged at debug), and the other tricks — a space
 * before the colon, obs-fold, conflicting or signed Content-Length, a second Host, a Host port
 * out of range — each refused with 400 and never forwarded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { rawExchange, startBalancer, startRecordingBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { createBalancer } from '../../src/index.ts';
import { createLogger } from '../../src/observe/logger.ts';

const spoofing =
  'POST /x HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX-Auth_User: admin\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello';

test('header names: "_" names are dropped by default, counted per listener and never read as Fulcrum\'s own', async (t) => {
  const backend = await startRecordingBackend(t);
  const lb = await startBalancer(t, { listeners: [{ name: 'edge', host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [backend.url] } } });
  const answer = await rawExchange(lb.port, spoofing);
  assert.match(answer, /^HTTP\/1\.1 200 /);
  await eventually(() => backend.text().endsWith('hello'), { what: 'the request and its body at the backend' });
  const sent = backend.text();
  assert.doesNotMatch(sent, /_/, `no name with "_" reached the backend:\n${sent}`);
  assert.match(sent, /\r\nx-forwarded-for: 127\.0\.0\.1\r\n/i, 'X-Forwarded-For is the real peer');
  assert.doesNotMatch(sent, /6\.6\.6\.6|admin|chunked/i);
  assert.match(sent, /\r\ncontent-length: 5\r\n/i, 'framing follows Content-Length only');
  const metrics = (await lb.balancer.metrics.scrape()).body;
  assert.match(metrics, /^lb_headers_dropped_total\{listener="edge",reason="underscore"\} 3$/m);
});

test('header names: headers_with_underscores allow forwards them; reject answers 400 and forwards nothing', async (t) => {
  const backend = await startRecordingBackend(t);
  const lb = await startBalancer(t, {
    listeners: [
      { name: 'allow', host: '127.0.0.1', port: 0, headers_with_underscores: 'allow' },
    ],
    pools: { web: { upstreams: [backend.url] } },
  });
  assert.match(await rawExchange(lb.port, spoofing), /^HTTP\/1\.1 200 /);
  await eventually(() => backend.text().endsWith('hello'), { what: 'the request at the backend' });
  assert.match(backend.text(), /\r\nX_Forwarded_For: 6\.6\.6\.6\r\n/);
  assert.match(backend.text(), /\r\nX-Auth_User: admin\r\n/);
  assert.match(backend.text(), /\r\nx-forwarded-for: 127\.0\.0\.1\r\n/i, 'still not believed as X-Forwarded-For');
  assert.match((await lb.balancer.metrics.scrape()).body, /^lb_headers_dropped_total\{listener="allow",reason="underscore"\} 0$/m);

  const strictBackend = await startRecordingBackend(t);
  const strict = await startBalancer(t, {
    listeners: [{ name: 'strict', host: '127.0.0.1', port: 0, headers_with_underscores: 'reject' }],
    pools: { web: { upstreams: [strictBackend.url] } },
  });
  const refused = await rawExchange(strict.port, spoofing);
  assert.match(refused, /^HTTP\/1\.1 400 /);
  assert.match(refused, /header name with "_" refused/);
  assert.match(await rawExchange(strict.port, 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b_c\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /, 'an "_" in a value is fine');
  await eventually(() => strictBackend.received.length > 0, { what: 'the allowed request' });
  assert.doesNotMatch(strictBackend.text(), /6\.6\.6\.6|POST/);
});

test('header names: a dropped header is logged at debug with its name', async (t) => {
  const backend = await startRecordingBackend(t);
  const logs: string[] = [];
  const destination = new Writable({ write(chunk, _enc, cb) { logs.push(String(chunk)); cb(); } });
  const balancer = createBalancer(
    { listeners: [{ name: 'edge', host: '127.0.0.1', port: 0 }], pools: { web: { upstreams: [backend.url] } }, log: { level: 'debug' } },
    { logger: createLogger({ level: 'debug', format: 'json' }, { destination }) },
  );
  const [address] = await balancer.start();
  t.after(() => balancer.close(1000));
  assert.match(await rawExchange(address.port, 'GET / HTTP/1.1\r\nHost: a\r\nX-Auth_User: admin\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
  const line = await eventually(() => logs.map((l) => JSON.parse(l)).find((l) => /dropped request header/.test(l.msg)), { what: 'the debug line' });
  assert.equal(line.level, 20);
  assert.deepEqual(line.headers, ['X-Auth_User']);
  assert.equal(line.listener, 'edge');
});

// Each must be refused with 400 and never reach the backend.
const tricks: [string, string][] = [
  ['space before the colon', 'GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n'],
  ['tab before the colon', 'GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 0\r\n\r\n'],
  ['space before the colon of Transfer-Encoding', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\nhello'],
  ['obs-fold', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n X-Forwarded-For: 6.6.6.6\r\n\r\n'],
  ['obs-fold with a tab', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n'],
  ['a header line starting with a space after Host', 'GET / HTTP/1.1\r\nHost: a\r\n Host: b\r\n\r\n'],
  ['two Content-Length with different values', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello'],
  ['Content-Length: +5', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello'],
  ['Content-Length: 5.0', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\nhello'],
  ['Content-Length: 0x5', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello'],
  ['two Host headers', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'],
  ['two Host headers, other case', 'GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n'],
  ['two equal Host headers', 'GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n'],
  ['Host port 99999', 'GET / HTTP/1.1\r\nHost: h:99999\r\n\r\n'],
  ['Host port 65536', 'GET / HTTP/1.1\r\nHost: h:65536\r\n\r\n'],
  ['Host port 0', 'GET / HTTP/1.1\r\nHost: h:0\r\n\r\n'],
  ['Host port with six digits', 'GET / HTTP/1.1\r\nHost: h:000080\r\n\r\n'],
  ['IPv6 Host port 99999', 'GET / HTTP/1.1\r\nHost: [::1]:99999\r\n\r\n'],
  ['absolute-form port 99999', 'GET http://h:99999/ HTTP/1.1\r\nHost: h\r\n\r\n'],
  ['absolute-form port 0', 'GET http://h:0/ HTTP/1.1\r\nHost: h\r\n\r\n'],
];

test('header names: every other trick is a 400 and never reaches the backend', async (t) => {
  const backend = await startRecordingBackend(t);
  const lb = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } } });
  for (const [name, bytes] of tricks) assert.match(await rawExchange(lb.port, bytes, 1500), /^HTTP\/1\.1 400 /, name);
  assert.deepEqual(backend.received, [], 'the backend received no byte');
  // Ports in range, with leading zeros, or empty (RFC 3986, as nginx) pass.
  for (const host of ['h:65535', 'h:080', 'h:', '[::1]:8080']) {
    assert.match(await rawExchange(lb.port, `GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 200 /, host);
  }
});

test('header names: headers_with_underscores changes on reload, for the open listener', async (t) => {
  const backend = await startRecordingBackend(t);
  const config = (action: 'drop' | 'reject', port = 0) => ({
    listeners: [{ name: 'edge', host: '127.0.0.1', port, headers_with_underscores: action }],
    pools: { web: { upstreams: [backend.url] } },
  });
  const lb = await startBalancer(t, config('drop'));
  const request = 'GET / HTTP/1.1\r\nHost: a\r\nX-Auth_User: admin\r\nConnection: close\r\n\r\n';
  assert.match(await rawExchange(lb.port, request), /^HTTP\/1\.1 200 /);
  await lb.balancer.reload(config('reject', lb.port));
  assert.match(await rawExchange(lb.port, request), /^HTTP\/1\.1 400 /);
  assert.doesNotMatch(backend.text(), /_/);
});

test('an absolute-form target routes on its authority, and X-Forwarded-Host says that host, not the Host header', async (t) => {
  const secret = await startRecordingBackend(t);
  const open = await startRecordingBackend(t);
  const lb = await startBalancer(t, {
    pools: { secret: { upstreams: [secret.url] }, open: { upstreams: [open.url] } },
    routes: [
      { host: 'secret.local', pool: 'secret', firewall: { deny: ['127.0.0.1'] } },
      { pool: 'open' },
    ],
  });
  assert.match(await rawExchange(lb.port, 'GET /x HTTP/1.1\r\nHost: secret.local\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 403 /);
  // The authority wins over Host (RFC 9112 section 3.2.2): routed to "public", so no backend may be told "secret.local".
  assert.match(await rawExchange(lb.port, 'GET http://public/x HTTP/1.1\r\nHost: secret.local\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
  await eventually(() => open.text().includes('GET /x'), { what: 'the request at the open backend' });
  assert.match(open.text(), /\r\nx-forwarded-host: public\r\n/i);
  assert.doesNotMatch(open.text(), /secret\.local/);
  assert.equal(secret.received.length, 0);
});
