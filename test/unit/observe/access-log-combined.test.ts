/**
 * The `combined` access-log line: nginx's field order, nginx's escaping (`"`, `\` and bytes
 * outside printable ASCII as `\xHH`), `-` for what is absent, and `$time_local` in the process's zone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { RequestContext } from '../../../src/core/context.ts';
import type { Downstream } from '../../../src/core/downstream.ts';
import { combinedFormat, nginxEscape, remoteUser, timeLocal } from '../../../src/observe/access-log-combined.ts';

function context(method: string, url: string, headers: IncomingHttpHeaders, status: number, bytesOut: number, client = '10.0.0.7', httpVersion = '1.1'): RequestContext {
  const req = { method, url, httpVersion, httpVersionMajor: 1, httpVersionMinor: Number(httpVersion.slice(2)), headers, rawHeaders: [] };
  const ctx = new RequestContext(req, {} as Downstream, 'public', client, null);
  ctx.status = status;
  ctx.bytesOut = bytesOut;
  ctx.bytesIn = 999; // not in the format
  return ctx;
}

/** nginx's table for escape=default (ngx_http_log_escape), byte by byte. */
function nginxReference(bytes: Buffer): string {
  let out = '';
  for (const b of bytes) out += b < 0x20 || b >= 0x7f || b === 0x22 || b === 0x5c ? `\\x${b.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(b);
  return out;
}

test('combined: the fields in nginx order', () => {
  process.env.TZ = 'UTC';
  const now = Date.UTC(2000, 9, 10, 13, 55, 36, 789);
  const ctx = context('GET', '/apache_pb.gif?a=1', { referer: 'http://www.example.com/start.html', 'user-agent': 'Mozilla/4.08 [en] (Win98; I ;Nav)', authorization: `Basic ${Buffer.from('frank:secret').toString('base64')}` }, 200, 2326);
  assert.equal(combinedFormat.line(ctx, 30, now), '10.0.0.7 - frank [10/Oct/2000:13:55:36 +0000] "GET /apache_pb.gif?a=1 HTTP/1.1" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"\n');
});

test('combined: "-" for an absent user, referer or user agent; "" for an empty header; the protocol from the request', () => {
  process.env.TZ = 'UTC';
  const now = Date.UTC(2024, 0, 2, 3, 4, 5);
  assert.equal(combinedFormat.line(context('HEAD', '/', {}, 404, 0, '::1', '1.0'), 30, now), '::1 - - [02/Jan/2024:03:04:05 +0000] "HEAD / HTTP/1.0" 404 0 "-" "-"\n');
  assert.equal(combinedFormat.line(context('GET', '/', { 'user-agent': '', referer: '' }, 502, 0), 40, now), '10.0.0.7 - - [02/Jan/2024:03:04:05 +0000] "GET / HTTP/1.1" 502 0 "" ""\n');
});

test('combined: quotes, backslashes, control and non-ASCII bytes are \\xHH in every field', () => {
  process.env.TZ = 'UTC';
  const now = Date.UTC(2024, 0, 2, 3, 4, 5);
  // Header values and the request-target hold one byte per character (latin1), as parsed.
  const ua = 'evil" "injected\\\x1b[31m\x7f\xe9';
  const line = combinedFormat.line(context('GET', '/a"b\\c\x01\xff', { 'user-agent': ua, referer: 'x\ny' }, 200, 5, '1.2.3.4"'), 30, now);
  assert.equal(line, '1.2.3.4\\x22 - - [02/Jan/2024:03:04:05 +0000] "GET /a\\x22b\\x5Cc\\x01\\xFF HTTP/1.1" 200 5 "x\\x0Ay" "evil\\x22 \\x22injected\\x5C\\x1B[31m\\x7F\\xE9"\n');
  // Exactly one line, and only printable ASCII.
  assert.match(line, /^[\x20-\x7e]*\n$/);
});

test('nginxEscape: every byte as nginx escapes it; characters above 0xFF as their UTF-8 bytes', () => {
  for (let b = 0; b < 256; b++) {
    const s = String.fromCharCode(b);
    assert.equal(nginxEscape(s), nginxReference(Buffer.from([b])), `byte 0x${b.toString(16)}`);
    assert.equal(nginxEscape(`ab${s}cd`), nginxReference(Buffer.from([0x61, 0x62, b, 0x63, 0x64])), `byte 0x${b.toString(16)} inside text`);
  }
  assert.equal(nginxEscape('€'), '\\xE2\\x82\\xAC');
  assert.equal(nginxEscape('a\ud83d\ude00b'), 'a\\xF0\\x9F\\x98\\x80b');
  assert.equal(nginxEscape('\ud800'), '\\xEF\\xBF\\xBD', 'a lone surrogate is written as U+FFFD');
  assert.equal(nginxEscape('plain /path?q=1'), 'plain /path?q=1');
});

test('remoteUser: the Basic user name, else "-" (as nginx: no colon or an empty name is none)', () => {
  const basic = (text: string): IncomingHttpHeaders => ({ authorization: `Basic ${Buffer.from(text, 'latin1').toString('base64')}` });
  assert.equal(remoteUser(basic('alice:pw')), 'alice');
  assert.equal(remoteUser(basic('alice:pw:with:colons')), 'alice');
  assert.equal(remoteUser({ authorization: `basic ${Buffer.from('bob:x').toString('base64')}` }), 'bob', 'the scheme is case-insensitive');
  assert.equal(remoteUser(basic('a"b\xe9:pw')), 'a\\x22b\\xE9');
  assert.equal(remoteUser(basic(':pw')), '-');
  assert.equal(remoteUser(basic('nocolon')), '-');
  assert.equal(remoteUser({ authorization: 'Bearer abc.def' }), '-');
  assert.equal(remoteUser({}), '-');
});

test('timeLocal: the process time zone with its offset, day and month as nginx writes them', () => {
  const now = Date.UTC(2023, 6, 4, 22, 30, 15, 500);
  process.env.TZ = 'UTC';
  assert.equal(timeLocal(now), '04/Jul/2023:22:30:15 +0000');
  process.env.TZ = 'Asia/Kolkata';
  assert.equal(timeLocal(now + 1000), '05/Jul/2023:04:00:16 +0530');
  process.env.TZ = 'America/Los_Angeles';
  assert.equal(timeLocal(now + 2000), '04/Jul/2023:15:30:17 -0700');
  assert.equal(timeLocal(Date.UTC(2023, 0, 9, 8, 7, 6)), '09/Jan/2023:00:07:06 -0800');
  process.env.TZ = 'UTC';
});
