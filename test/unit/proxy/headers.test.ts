import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RequestContext } from '../../../src/core/context.ts';
import { buildResponseHeaders, buildUpstreamHeaders, setUpstreamHost, type ForwardingSettings, type HostRewrite } from '../../../src/proxy/headers.ts';

const settings: ForwardingSettings = { proto: 'http', via: '1.1 fulcrum' };
const preserve: HostRewrite = { kind: 'preserve' };

/** A context for a request from `peer`; `trusted` as if the peer were in trusted_proxies. */
function context(peer = '203.0.113.9', trusted = false, clientAddress = peer): RequestContext {
  const ctx = new RequestContext({} as any, {} as any, 'l', peer);
  ctx.trustedPeer = trusted;
  ctx.clientAddress = clientAddress;
  return ctx;
}

/** Flat `[name, value, ...]` as `[[name, value], ...]`, easier to compare. */
function pairs(flat: readonly string[] | null): [string, string][] {
  assert.ok(flat, 'expected headers, got null');
  const out: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out;
}

function names(flat: readonly string[] | null): string[] {
  return pairs(flat).map(([n]) => n.toLowerCase());
}

test('upstream headers: the exact list for a plain request from an untrusted client', () => {
  const ctx = context();
  const out = buildUpstreamHeaders(ctx, ['Host', 'shop.example', 'Accept', '*/*', 'User-Agent', 'curl/8'], settings, preserve);
  assert.deepEqual(pairs(out), [
    ['host', 'shop.example'],
    ['Accept', '*/*'],
    ['User-Agent', 'curl/8'],
    ['x-forwarded-for', '203.0.113.9'],
    ['x-forwarded-proto', 'http'],
    ['x-forwarded-host', 'shop.example'],
    ['via', '1.1 fulcrum'],
    ['x-request-id', ctx.id],
  ]);
});

test('upstream headers: a Proxy header (httpoxy: CGI reads it as HTTP_PROXY) is never forwarded, in any case', () => {
  const out = buildUpstreamHeaders(context(), ['Host', 'h', 'Proxy', 'http://evil.example:3128', 'PROXY', 'http://evil.example:3128', 'Proxy-Id', 'kept', 'X-Proxy', 'kept'], settings, preserve);
  assert.deepEqual(names(out), ['host', 'proxy-id', 'x-proxy', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'via', 'x-request-id']);
});

test('upstream headers: hop-by-hop headers are removed', () => {
  const raw = [
    'Host', 'h',
    'Connection', 'keep-alive',
    'Keep-Alive', 'timeout=5',
    'Proxy-Connection', 'keep-alive',
    'TE', 'gzip',
    'Transfer-Encoding', 'chunked',
    'Upgrade', 'websocket',
    'Trailer', 'X-Checksum',
    'Proxy-Authorization', 'Basic eA==',
    'Proxy-Authenticate', 'Basic',
    'Expect', '100-continue',
    'Content-Type', 'text/plain',
  ];
  const out = buildUpstreamHeaders(context(), raw, settings, preserve);
  assert.deepEqual(names(out), ['host', 'content-type', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'via', 'x-request-id']);
});

test('upstream headers: names are matched case-insensitively', () => {
  const out = buildUpstreamHeaders(context(), ['host', 'h', 'CONNECTION', 'X-Secret', 'x-secret', '1', 'TRANSFER-ENCODING', 'chunked', 'kEEp-aLIVE', 'x'], settings, preserve);
  assert.deepEqual(names(out), ['host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'via', 'x-request-id']);
});

test('upstream headers: headers named in Connection are removed, from every Connection header', () => {
  const raw = ['Host', 'h', 'Connection', 'close, X-Hop-One', 'X-Hop-One', '1', 'X-Hop-Two', '2', 'connection', ' x-hop-two ', 'X-Kept', '3'];
  assert.deepEqual(pairs(buildUpstreamHeaders(context(), raw, settings, preserve)).slice(0, 2), [
    ['host', 'h'],
    ['X-Kept', '3'],
  ]);
});

test('upstream headers: a Connection header can name itself a header that comes before it', () => {
  const raw = ['Host', 'h', 'X-Before', '1', 'Connection', 'X-Before'];
  assert.deepEqual(names(buildUpstreamHeaders(context(), raw, settings, preserve)).slice(0, 2), ['host', 'x-forwarded-for']);
});

test('upstream headers: TE is dropped except for "trailers", which is sent as te: trailers', () => {
  const plain = buildUpstreamHeaders(context(), ['Host', 'h', 'TE', 'gzip, trailers'], settings, preserve);
  assert.deepEqual(pairs(plain).slice(-2), [
    ['x-request-id', pairs(plain).at(-2)![1]],
    ['te', 'trailers'],
  ]);
  const mixedCase = buildUpstreamHeaders(context(), ['Host', 'h', 'te', 'deflate, Trailers'], settings, preserve);
  assert.deepEqual(pairs(mixedCase).filter(([n]) => n.toLowerCase() === 'te'), [['te', 'trailers']]);
  const none = buildUpstreamHeaders(context(), ['Host', 'h', 'TE', 'gzip'], settings, preserve);
  assert.equal(names(none).includes('te'), false);
});

test('upstream headers: client forwarding headers are replaced when the peer is untrusted', () => {
  const ctx = context('203.0.113.9');
  const raw = [
    'Host', 'shop.example',
    'X-Forwarded-For', '1.1.1.1',
    'X-Forwarded-Proto', 'https',
    'X-Forwarded-Host', 'evil.example',
    'X-Request-Id', 'client-chosen',
    'Forwarded', 'for=1.1.1.1',
    'X-Real-IP', '1.1.1.1',
  ];
  const out = pairs(buildUpstreamHeaders(ctx, raw, settings, preserve));
  assert.deepEqual(out, [
    ['host', 'shop.example'],
    ['x-forwarded-for', '203.0.113.9'],
    ['x-forwarded-proto', 'http'],
    ['x-forwarded-host', 'shop.example'],
    ['via', '1.1 fulcrum'],
    ['x-request-id', ctx.id],
  ]);
  assert.equal(ctx.requestIdForUpstream, undefined);
});

test('upstream headers: forwarding headers from a trusted peer are kept, X-Forwarded-For appended to', () => {
  const ctx = context('10.0.0.2', true, '198.51.100.4');
  const raw = [
    'Host', 'internal.example',
    'X-Forwarded-For', '198.51.100.4',
    'X-Forwarded-For', '10.0.0.7',
    'X-Forwarded-Proto', 'https',
    'X-Forwarded-Host', 'www.example.com',
    'X-Request-Id', 'edge-123',
    'Forwarded', 'for=198.51.100.4;proto=https',
    'X-Real-IP', '198.51.100.4',
  ];
  const out = pairs(buildUpstreamHeaders(ctx, raw, settings, preserve));
  assert.deepEqual(out, [
    ['host', 'internal.example'],
    ['Forwarded', 'for=198.51.100.4;proto=https'],
    ['X-Real-IP', '198.51.100.4'],
    ['x-forwarded-for', '198.51.100.4, 10.0.0.7, 10.0.0.2'],
    ['x-forwarded-proto', 'https'],
    ['x-forwarded-host', 'www.example.com'],
    ['via', '1.1 fulcrum'],
    ['x-request-id', 'edge-123'],
  ]);
  assert.equal(ctx.requestIdForUpstream, 'edge-123');
});

test('upstream headers: a trusted peer without forwarding headers gets ours', () => {
  const ctx = context('10.0.0.2', true);
  const out = pairs(buildUpstreamHeaders(ctx, ['Host', 'h'], { proto: 'https', via: '1.1 edge' }, preserve));
  assert.deepEqual(out, [
    ['host', 'h'],
    ['x-forwarded-for', '10.0.0.2'],
    ['x-forwarded-proto', 'https'],
    ['x-forwarded-host', 'h'],
    ['via', '1.1 edge'],
    ['x-request-id', ctx.id],
  ]);
});

test('upstream headers: an over-long X-Request-Id from a trusted peer is replaced by ours', () => {
  const ctx = context('10.0.0.2', true);
  const out = pairs(buildUpstreamHeaders(ctx, ['Host', 'h', 'X-Request-Id', 'x'.repeat(201)], settings, preserve));
  assert.deepEqual(out.at(-1), ['x-request-id', ctx.id]);
  assert.equal(ctx.requestIdForUpstream, undefined);
  const ok = context('10.0.0.2', true);
  buildUpstreamHeaders(ok, ['Host', 'h', 'X-Request-Id', 'y'.repeat(200)], settings, preserve);
  assert.equal(ok.requestIdForUpstream, 'y'.repeat(200));
});

test('upstream headers: Via from the client is kept and ours appended', () => {
  const out = pairs(buildUpstreamHeaders(context(), ['Host', 'h', 'Via', '1.0 squid', 'via', '1.1 cdn'], settings, preserve));
  assert.deepEqual(
    out.filter(([n]) => n === 'via'),
    [['via', '1.0 squid, 1.1 cdn, 1.1 fulcrum']],
  );
});

test('upstream headers: the request id is the context id', () => {
  const ctx = context();
  assert.match(ctx.id, /^[0-9a-z]+-[0-9a-z]+-[0-9a-z]+$/);
  assert.notEqual(context().id, ctx.id);
});

test('upstream headers: more than one Host header gives null', () => {
  assert.equal(buildUpstreamHeaders(context(), ['Host', 'a.example', 'Accept', '*/*', 'host', 'b.example'], settings, preserve), null);
  assert.equal(buildUpstreamHeaders(context(), ['Host', 'a.example', 'HOST', 'a.example'], settings, preserve), null);
});

test('upstream headers: Host is always first and follows the pool host_header', () => {
  const raw = ['Accept', '*/*', 'Host', 'shop.example'];
  const preserved = buildUpstreamHeaders(context(), raw, settings, preserve)!;
  assert.deepEqual(preserved.slice(0, 2), ['host', 'shop.example']);
  setUpstreamHost(preserved, preserve, '10.0.0.1:8080');
  assert.deepEqual(preserved.slice(0, 2), ['host', 'shop.example']);

  const upstream = buildUpstreamHeaders(context(), raw, settings, { kind: 'upstream' })!;
  assert.deepEqual(upstream.slice(0, 2), ['host', '']);
  setUpstreamHost(upstream, { kind: 'upstream' }, '10.0.0.1:8080');
  assert.deepEqual(upstream.slice(0, 2), ['host', '10.0.0.1:8080']);
  setUpstreamHost(upstream, { kind: 'upstream' }, '10.0.0.2:8080'); // a retry on another upstream
  assert.deepEqual(upstream.slice(0, 2), ['host', '10.0.0.2:8080']);
  // X-Forwarded-Host keeps what the client asked for.
  assert.deepEqual(pairs(upstream).find(([n]) => n === 'x-forwarded-host'), ['x-forwarded-host', 'shop.example']);

  const fixed = buildUpstreamHeaders(context(), raw, settings, { kind: 'fixed', value: 'api.internal' })!;
  assert.deepEqual(fixed.slice(0, 2), ['host', 'api.internal']);
  setUpstreamHost(fixed, { kind: 'fixed', value: 'api.internal' }, '10.0.0.1:8080');
  assert.deepEqual(fixed.slice(0, 2), ['host', 'api.internal']);
});

test('upstream headers: no Host from the client: the upstream host is used and no X-Forwarded-Host is sent', () => {
  const out = buildUpstreamHeaders(context(), ['Accept', '*/*'], settings, preserve)!;
  assert.deepEqual(out.slice(0, 2), ['host', '']);
  setUpstreamHost(out, preserve, '10.0.0.1:8080');
  assert.deepEqual(out.slice(0, 2), ['host', '10.0.0.1:8080']);
  assert.equal(names(out).includes('x-forwarded-host'), false);
});

test('response headers: the exact list, hop-by-hop removed, Via and X-Request-Id added', () => {
  const ctx = context();
  const raw = [
    'Content-Type', 'text/html',
    'Connection', 'keep-alive',
    'Keep-Alive', 'timeout=5',
    'Proxy-Connection', 'keep-alive',
    'Transfer-Encoding', 'chunked',
    'Upgrade', 'h2c',
    'TE', 'trailers',
    'Trailer', 'X-Checksum',
    'Proxy-Authenticate', 'Basic',
    'Set-Cookie', 'a=1',
    'Set-Cookie', 'b=2',
  ];
  assert.deepEqual(pairs(buildResponseHeaders(ctx, raw, settings, false)), [
    ['Content-Type', 'text/html'],
    ['Set-Cookie', 'a=1'],
    ['Set-Cookie', 'b=2'],
    ['via', '1.1 fulcrum'],
    ['x-request-id', ctx.id],
  ]);
});

test('response headers: headers named in Connection are removed, wherever they appear', () => {
  const raw = ['X-Internal', '1', 'Connection', 'X-Internal, x-debug', 'x-debug', 'on', 'X-Public', 'yes', 'CONNECTION', 'X-Other', 'x-other', '2'];
  assert.deepEqual(pairs(buildResponseHeaders(context(), raw, settings, false)).slice(0, -2), [['X-Public', 'yes']]);
});

test('response headers: latin1 buffers from undici are read as strings', () => {
  const raw = [Buffer.from('Content-Type'), Buffer.from('text/plain'), Buffer.from('X-Name'), Buffer.from('caf\xe9', 'latin1'), Buffer.from('Transfer-Encoding'), Buffer.from('chunked')];
  assert.deepEqual(pairs(buildResponseHeaders(context(), raw, settings, false)).slice(0, 2), [
    ['Content-Type', 'text/plain'],
    ['X-Name', 'caf\xe9'],
  ]);
});

test('response headers: Via from the upstream is kept and ours appended', () => {
  const out = pairs(buildResponseHeaders(context(), ['Via', '1.1 varnish', 'via', '1.0 squid'], settings, false));
  assert.deepEqual(out.filter(([n]) => n.toLowerCase() === 'via'), [['via', '1.1 varnish, 1.0 squid, 1.1 fulcrum']]);
});

test('response headers: X-Request-Id is the trusted one when the request carried it', () => {
  const ctx = context('10.0.0.2', true);
  buildUpstreamHeaders(ctx, ['Host', 'h', 'X-Request-Id', 'edge-9'], settings, preserve);
  assert.deepEqual(pairs(buildResponseHeaders(ctx, [], settings, false)), [
    ['via', '1.1 fulcrum'],
    ['x-request-id', 'edge-9'],
  ]);
});

test('response headers: closing the connection adds Connection: close, last', () => {
  const ctx = context();
  assert.deepEqual(pairs(buildResponseHeaders(ctx, ['Connection', 'keep-alive'], settings, true)), [
    ['via', '1.1 fulcrum'],
    ['x-request-id', ctx.id],
    ['connection', 'close'],
  ]);
});

test('response headers: an X-Request-Id echoed by the upstream is not sent twice', () => {
  const ctx = context();
  const out = pairs(buildResponseHeaders(ctx, ['X-Request-Id', ctx.id, 'Content-Type', 'text/plain'], settings, false));
  assert.equal(out.filter(([n]) => n.toLowerCase() === 'x-request-id').length, 1);
});

test('upstream headers: names with "_" are dropped by default and recorded; forwarding headers stay Fulcrum\'s', () => {
  const ctx = context();
  const raw = ['Host', 'h', 'X_Forwarded_For', '6.6.6.6', 'X-Auth_User', 'admin', 'Transfer_Encoding', 'chunked', 'X_Real_IP', '6.6.6.6', 'Content_Length', '5', 'Host_', 'evil', 'X-Ok', 'a_b'];
  for (const s of [settings, { ...settings, underscores: 'drop' as const }]) {
    const out = buildUpstreamHeaders(ctx, raw, s, preserve);
    assert.deepEqual(names(out), ['host', 'x-ok', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'via', 'x-request-id']);
    const got = new Map(pairs(out));
    assert.equal(got.get('host'), 'h');
    assert.equal(got.get('x-forwarded-for'), '203.0.113.9', 'the spoofed X_Forwarded_For is not believed or joined');
    assert.equal(got.get('X-Ok'), 'a_b', 'an "_" in a value is fine');
  }
  assert.deepEqual(ctx.droppedHeaders, ['X_Forwarded_For', 'X-Auth_User', 'Transfer_Encoding', 'X_Real_IP', 'Content_Length', 'Host_', 'X_Forwarded_For', 'X-Auth_User', 'Transfer_Encoding', 'X_Real_IP', 'Content_Length', 'Host_']);
});

test('upstream headers: names with "_" are forwarded with headers_with_underscores: allow, never as Fulcrum\'s own', () => {
  const ctx = context('10.0.0.1', true);
  const out = buildUpstreamHeaders(ctx, ['Host', 'h', 'X_Forwarded_For', '6.6.6.6', 'X-Auth_User', 'admin'], { ...settings, underscores: 'allow' }, preserve);
  const got = pairs(out);
  assert.deepEqual(got.slice(0, 3), [['host', 'h'], ['X_Forwarded_For', '6.6.6.6'], ['X-Auth_User', 'admin']]);
  assert.equal(new Map(got).get('x-forwarded-for'), '10.0.0.1', 'even from a trusted peer, X_Forwarded_For is not X-Forwarded-For');
  assert.equal(ctx.droppedHeaders, null);
});

test('upstream headers: a plain request records nothing dropped', () => {
  const ctx = context();
  buildUpstreamHeaders(ctx, ['Host', 'h', 'Accept', '*/*'], settings, preserve);
  assert.equal(ctx.droppedHeaders, null);
});
