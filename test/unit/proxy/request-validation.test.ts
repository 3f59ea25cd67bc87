import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RequestHead } from '../../../src/core/context.ts';
import { validateRequest, validHost } from '../../../src/proxy/request-validation.ts';

test('validHost: ports 1-65535 in at most five digits; an empty port is allowed, as nginx does', () => {
  const valid = ['h', 'h:1', 'h:80', 'h:080', 'h:00080', 'h:65535', 'h:', 'example.com', 'a-b.c_d~', '10.0.0.1:8080', '[::1]', '[::1]:443', '[::ffff:10.0.0.1]:1', '[::1]:', 'caf%C3%A9.example', "a!$&'()*+,;="];
  const invalid = ['', 'h:0', 'h:00', 'h:65536', 'h:99999', 'h:999999', 'h:000080', 'h:8x', 'h:-1', 'h:+80', 'h: 80', 'h:80:80', 'a b', 'user@h', 'a/b', 'h\\x', 'h%zz', 'h%4', '[::1', '[]', '[::1]x', '[::1]:0', '[::1]:65536', '[::g]', ':80', 'caf\u00e9'];
  for (const h of valid) assert.equal(validHost(h), true, h);
  for (const h of invalid) assert.equal(validHost(h), false, h);
});

function request(rawHeaders: string[], minor = 1): RequestHead {
  const headers: Record<string, string> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) headers[rawHeaders[i].toLowerCase()] ??= rawHeaders[i + 1];
  return { httpVersionMajor: 1, httpVersionMinor: minor, rawHeaders, headers } as unknown as RequestHead;
}

test('validateRequest: Host with a port outside 1-65535 is a 400', () => {
  for (const host of ['h:99999', 'h:0', 'h:65536']) assert.equal(validateRequest(request(['Host', host]))?.status, 400, host);
  for (const host of ['h:65535', 'h:', 'h:080']) assert.equal(validateRequest(request(['Host', host])), null, host);
});

test('validateRequest: header names with "_" are refused only with headers_with_underscores: reject', () => {
  const req = request(['Host', 'h', 'X-Auth_User', 'admin']);
  assert.equal(validateRequest(req), null);
  assert.equal(validateRequest(req, 'drop'), null);
  assert.equal(validateRequest(req, 'allow'), null);
  const refusal = validateRequest(req, 'reject');
  assert.equal(refusal?.status, 400);
  assert.match(refusal!.message, /header name with "_"/);
  assert.equal(validateRequest(request(['Host', 'h', 'X-A', 'b_c']), 'reject'), null, 'a "_" in a value is fine');
});

test('validateRequest: version 2 only from an HTTP/2 stream; an HTTP/2 request needs :authority', () => {
  const v2 = (rawHeaders: string[]): RequestHead => ({ ...request(rawHeaders), httpVersionMajor: 2, httpVersionMinor: 0 }) as RequestHead;
  assert.equal(validateRequest(v2(['Host', 'h']))?.status, 505, '"HTTP/2.0" on an HTTP/1 connection');
  assert.equal(validateRequest(v2(['host', 'h']), 'drop', 'h2'), null);
  assert.equal(validateRequest(v2([]), 'drop', 'h2')?.status, 400);
  assert.equal(validateRequest(request(['Host', 'h']), 'drop', 'h2')?.status, 505, 'a stream never says 1.1');
  // Transfer-Encoding has no meaning on HTTP/2 (nghttp2 refuses it before this): not judged here.
  assert.equal(validateRequest(v2(['host', 'h', 'transfer-encoding', 'gzip']), 'drop', 'h2'), null);
});
