import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import type { RequestHead as CoreRequestHead } from '../../../src/core/context.ts';
import { headEnd, headErrors, isHeadError, maxRawHeadBytes, parseRequestHead, RequestHead, skipEmptyLines, type HeadLimits } from '../../../src/http1/request-head.ts';

const limits: HeadLimits = { maxHeadBytes: 16_384, maxHeaders: 100 };

function parse(text: string, l: HeadLimits = limits): RequestHead | ReturnType<typeof parseRequestHead> {
  const buf = Buffer.from(text, 'latin1');
  const start = skipEmptyLines(buf, 0, buf.length);
  const end = headEnd(buf, start, start);
  assert.notEqual(end, -1, `no end of head in ${JSON.stringify(text)}`);
  return parseRequestHead(buf, start, end, l);
}

function accepted(text: string, l: HeadLimits = limits): RequestHead {
  const r = parse(text, l);
  if (isHeadError(r)) assert.fail(`refused ${JSON.stringify(text)}: ${r.status} ${r.code} ${r.reason}`);
  return r;
}

const post = (headers: string, version = '1.1'): string => `POST / HTTP/${version}\r\nHost: a\r\n${headers}\r\n`;

// One case per rule: [name, head, status, code]. Each fails if its rule is taken out of the parser.
const refused: [string, string, number, string, keyof typeof headErrors][] = [
  ['method not a token', 'G(T / HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'methodSpace'],
  ['unknown method (llhttp knows a fixed list)', 'BLAH / HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'method'],
  ['lower-case method', 'get / HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'method'],
  ['PRI (an HTTP/2 preface)', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'otherMethod'],
  ['tab after the method', 'GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'methodSpace'],
  ['two spaces after the method', 'GET  / HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'url'],
  ['two spaces before the version', 'GET /  HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_CONSTANT', 'urlSpace'],
  ['space in the request-target', 'GET /a b HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_CONSTANT', 'urlSpace'],
  ['NUL in the request-target', 'GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'url'],
  ['DEL in the request-target', 'GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'url'],
  ['obs-text in the request-target', 'GET /\xe9 HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'url'],
  ['tab in the request-target', 'GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'url'],
  ['relative request-target', 'GET a HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'urlForm'],
  ['asterisk-form on GET', 'GET * HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'urlForm'],
  ['absolute-form with an empty host', 'GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'urlForm'],
  ['absolute-form with a bad authority char', 'GET http://a{b/ HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'urlForm'],
  ['absolute-form scheme with a digit', 'GET h2c://a/ HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'urlForm'],
  ['CONNECT with origin-form', 'CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_URL', 'urlForm'],
  ['HTTP/1.2', 'GET / HTTP/1.2\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_VERSION', 'version'],
  ['HTTP/3.0', 'GET / HTTP/3.0\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_VERSION', 'version'],
  ['lower-case http/1.1', 'GET / http/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_CONSTANT', 'urlSpace'],
  ['RTSP/1.0 (llhttp reads it as HTTP/1.0)', 'GET / RTSP/1.0\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_CONSTANT', 'urlSpace'],
  ['space after the version', 'GET / HTTP/1.1 \r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_VERSION', 'versionEnd'],
  ['HTTP/2.0 (llhttp accepts, today 505)', 'GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505, 'HPE_INVALID_VERSION', 'unsupported'],
  ['HTTP/0.9 (llhttp accepts, today 505)', 'GET / HTTP/0.9\r\nHost: a\r\n\r\n', 505, 'HPE_INVALID_VERSION', 'unsupported'],
  ['no version at all (HTTP/0.9, today 505)', 'GET /\r\nHost: a\r\n\r\n', 505, 'HPE_INVALID_VERSION', 'unsupported'],
  ['LF-only line ends', 'GET / HTTP/1.1\nHost: a\n\n', 400, 'HPE_CR_EXPECTED', 'bareLf'],
  ['bare LF after a value', 'GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n', 400, 'HPE_CR_EXPECTED', 'bareLf'],
  ['bare LF ending the head', 'GET / HTTP/1.1\r\nHost: a\r\n\n', 400, 'HPE_CR_EXPECTED', 'bareLf'],
  ['bare CR ending the request line', 'GET / HTTP/1.1\rHost: a\r\n\r\n', 400, 'HPE_LF_EXPECTED', 'lf'],
  ['bare CR in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n', 400, 'HPE_LF_EXPECTED', 'lf'],
  ['bare CR in the blank line', 'GET / HTTP/1.1\r\nHost: a\r\n\r\r\n\r\n', 400, 'HPE_LF_EXPECTED', 'lf'],
  ['header name with a space', 'GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['header name with a bad character', 'GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['header name with obs-text', 'GET / HTTP/1.1\r\nHost: a\r\nX\xe9: b\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['space before the colon', 'GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['tab before the colon', 'GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 0\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['empty header name', 'GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['header line without a colon', 'GET / HTTP/1.1\r\nHost: a\r\nXb\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'name'],
  ['NUL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'value'],
  ['CTL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'value'],
  ['DEL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'value'],
  ['obs-fold', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'fold'],
  ['obs-fold with a tab', 'GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'fold'],
  ['first header line starting with a space', 'GET / HTTP/1.1\r\n Host: a\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN', 'fold'],
  ['Content-Length: 1x', post('Content-Length: 1x\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['Content-Length: +5', post('Content-Length: +5\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['Content-Length: -1', post('Content-Length: -1\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['Content-Length: 5.0', post('Content-Length: 5.0\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['Content-Length: 0x5', post('Content-Length: 0x5\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['empty Content-Length', post('Content-Length: \r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['Content-Length list', post('Content-Length: 1, 1\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['Content-Length above 2^53 - 1', post('Content-Length: 9007199254740992\r\n'), 400, 'HPE_INVALID_CONTENT_LENGTH', 'contentLength'],
  ['two Content-Length values', post('Content-Length: 1\r\nContent-Length: 2\r\n'), 400, 'HPE_UNEXPECTED_CONTENT_LENGTH', 'duplicateLength'],
  ['two equal Content-Length headers (llhttp strict refuses)', post('Content-Length: 1\r\ncontent-length: 1\r\n'), 400, 'HPE_UNEXPECTED_CONTENT_LENGTH', 'duplicateLength'],
  ['Content-Length then Transfer-Encoding', post('Content-Length: 5\r\nTransfer-Encoding: chunked\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'lengthAndCoding'],
  ['Transfer-Encoding then Content-Length', post('Transfer-Encoding: chunked\r\nContent-Length: 5\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'lengthAndCoding'],
  ['Transfer-Encoding: gzip (not ending in chunked)', post('Transfer-Encoding: gzip\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'notChunked'],
  ['Transfer-Encoding: xchunked', post('Transfer-Encoding: xchunked\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'notChunked'],
  ['Transfer-Encoding: chunked, identity', post('Transfer-Encoding: chunked, identity\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'coding'],
  ['Transfer-Encoding: chunked, chunked', post('Transfer-Encoding: chunked, chunked\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'coding'],
  ['two Transfer-Encoding: chunked lines', post('Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'coding'],
  ['Transfer-Encoding: chunked;a=b', post('Transfer-Encoding: chunked;a=b\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'coding'],
  ['Transfer-Encoding with an empty element', post('Transfer-Encoding: chunked,\r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'coding'],
  ['empty Transfer-Encoding', post('Transfer-Encoding: \r\n'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'coding'],
  ['Transfer-Encoding on HTTP/1.0', post('Transfer-Encoding: chunked\r\n', '1.0'), 400, 'HPE_INVALID_TRANSFER_ENCODING', 'codingOnHttp10'],
  ['more header lines than maxHeaders', `GET / HTTP/1.1\r\n${'X: v\r\n'.repeat(101)}\r\n`, 431, 'HPE_TOO_MANY_HEADERS', 'tooMany'],
  ['head reaching maxHeadBytes (Node counts target, names, values)', `GET / HTTP/1.1\r\nX: ${'v'.repeat(16_382)}\r\n\r\n`, 431, 'HPE_HEADER_OVERFLOW', 'tooLarge'],
  ['request-target reaching maxHeadBytes', `GET /${'u'.repeat(16_383)} HTTP/1.1\r\n\r\n`, 431, 'HPE_HEADER_OVERFLOW', 'tooLarge'],
  ['raw head above maxRawHeadBytes (whitespace padding)', `GET / HTTP/1.1\r\nX:${' '.repeat(maxRawHeadBytes(limits))}v\r\n\r\n`, 431, 'HPE_HEADER_OVERFLOW', 'tooLargeRaw'],
  ['PRI or an RTSP method', 'DESCRIBE / HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'otherMethod'],
  ['stray CR before the request line', '\rGET / HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'HPE_INVALID_METHOD', 'strayLineEnd'],
];

for (const [name, text, status, code, rule] of refused) {
  test(`request head: ${name} is a ${status}`, () => {
    const r = parse(text);
    assert.ok(isHeadError(r), `accepted: ${JSON.stringify(r)}`);
    assert.equal(r.status, status, r.reason);
    assert.equal(r.code, code, r.reason);
    // The rule itself, not another that happens to give the same status and code.
    assert.equal(r, headErrors[rule], `${r.reason} (expected: ${headErrors[rule].reason})`);
  });
}

test('request head: the limits are exact where Node puts them', () => {
  // Node refuses when target + names + values reach maxHeaderSize: 1 + 1 + 16381 = 16383 passes.
  assert.equal(accepted(`GET / HTTP/1.1\r\nX: ${'v'.repeat(16_381)}\r\n\r\n`).rawHeaders[1].length, 16_381);
  // Trailing whitespace counts (llhttp's span has it), leading whitespace does not.
  assert.ok(isHeadError(parse(`GET / HTTP/1.1\r\nX: v${' '.repeat(16_381)}\r\n\r\n`)));
  accepted(`GET / HTTP/1.1\r\nX:${' '.repeat(1000)}v\r\n\r\n`);
  // The method, the version and the line ends are not counted.
  accepted(`MKACTIVITY /${'u'.repeat(16_382)} HTTP/1.1\r\n\r\n`);
  accepted(`GET / HTTP/1.1\r\n${'X: v\r\n'.repeat(100)}\r\n`);
  accepted(`GET / HTTP/1.1\r\n${'X: v\r\n'.repeat(10)}\r\n`, { maxHeadBytes: 1024, maxHeaders: 10 });
  assert.equal((parse(`GET / HTTP/1.1\r\n${'X: v\r\n'.repeat(11)}\r\n`, { maxHeadBytes: 1024, maxHeaders: 10 }) as { status: number }).status, 431);
});

test('request head: what strict llhttp accepts parses the same', () => {
  const text = 'GET /a?b=%20&c HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nX-Pad: \t v  a \t \r\nX-Obs: caf\xe9\r\nX-Tab: a\tb\r\n\r\n';
  const h = accepted(text);
  assert.equal(h.method, 'GET');
  assert.equal(h.url, '/a?b=%20&c');
  assert.equal(h.httpVersion, '1.1');
  assert.deepEqual(h.rawHeaders, ['Host', 'example.com', 'X-Empty', '', 'X-Pad', 'v  a', 'X-Obs', 'caf\xe9', 'X-Tab', 'a\tb']);
  assert.equal(h.contentLength, -1);
  assert.equal(h.chunked, false);
  assert.equal(h.keepAlive, true);
  assert.equal(h.headBytes, text.length);
  for (const url of ['/', '//a', '/a#b', '/"<>{}|\\^`', 'http://u:p@a:1/x?y', 'HTTP://[::1]:80/', 'http://a?x', 'https://a']) assert.equal(accepted(`GET ${url} HTTP/1.1\r\n\r\n`).url, url);
  assert.equal(accepted('OPTIONS * HTTP/1.1\r\n\r\n').url, '*');
  assert.equal(accepted('CONNECT a.example:443 HTTP/1.1\r\n\r\n').url, 'a.example:443');
  for (const m of ['DELETE', 'PATCH', 'M-SEARCH', 'QUERY', 'PURGE', 'SOURCE']) assert.equal(accepted(`${m} / HTTP/1.1\r\n\r\n`).method, m);
});

test('request head: framing and connection fields', () => {
  assert.equal(accepted(post('Content-Length: 007\r\n')).contentLength, 7);
  assert.equal(accepted(post('content-LENGTH:\t12 \r\n')).contentLength, 12);
  assert.equal(accepted(post('Content-Length: 9007199254740991\r\n')).contentLength, Number.MAX_SAFE_INTEGER);
  assert.equal(accepted(post('Transfer-Encoding: CHUNKED \r\n')).chunked, true);
  const listed = accepted(post('Transfer-Encoding: gzip\r\nTransfer-Encoding: br ,\tchunked\r\n'));
  assert.equal(listed.chunked, true);
  assert.equal(listed.contentLength, -1);
  assert.equal(accepted('GET / HTTP/1.1\r\nConnection: foo, CLOSE\r\n\r\n').keepAlive, false);
  assert.equal(accepted('GET / HTTP/1.1\r\nConnection: closed\r\n\r\n').keepAlive, true);
  assert.equal(accepted('GET / HTTP/1.0\r\n\r\n').keepAlive, false);
  assert.equal(accepted('GET / HTTP/1.0\r\nConnection: Keep-Alive , foo\r\n\r\n').keepAlive, true);
  assert.equal(accepted('GET / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n').expectContinue, true);
  assert.equal(accepted('GET / HTTP/1.1\r\nExpect: 100-continuex\r\n\r\n').expectContinue, false);
  assert.equal(accepted('GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n').expectContinue, false);
  assert.equal(accepted('GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n').upgrade, true);
  assert.equal(accepted('GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n').upgrade, false);
  assert.equal(accepted('GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n').upgrade, false);
});

test('request head: headers folds repeated fields exactly as IncomingMessage does', () => {
  const raw = ['Host', 'a', 'host', 'b', 'Set-Cookie', 'x=1', 'set-cookie', 'y=2', 'Cookie', 'c=1', 'COOKIE', 'd=2', 'Accept', 'a', 'accept', 'b', 'X-Custom', '1', 'x-custom', '2',
    'Content-Type', 't1', 'content-type', 't2', 'Authorization', 'a1', 'Authorization', 'a2', 'Age', '1', 'age', '2', 'Expires', 'e1', 'Expires', 'e2', 'Date', 'd1', 'Date', 'd2',
    'Max-Forwards', '1', 'Max-Forwards', '2', 'Retry-After', '1', 'Retry-After', '2', 'ETag', '1', 'etag', '2', 'constructor', 'c', 'toString', 't', 'Vary', 'v1', 'Vary', 'v2', 'User-Agent', 'u1', 'user-agent', 'u2'];
  const text = `GET / HTTP/1.1\r\n${raw.map((v, i) => (i % 2 === 0 ? `${v}: ` : `${v}\r\n`)).join('')}\r\n`;
  const head = accepted(text);
  const message = new IncomingMessage(new Socket());
  message.rawHeaders = head.rawHeaders;
  (message as unknown as { _addHeaderLines(h: string[], n: number): void })._addHeaderLines(head.rawHeaders, head.rawHeaders.length);
  assert.deepEqual({ ...head.headers }, { ...message.headers });
  assert.equal(head.headers, head.headers, 'built once');
});

test('headEnd: finds the blank line across partial reads, resuming where it stopped', () => {
  const text = Buffer.from('\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next');
  const start = skipEmptyLines(text, 0, text.length);
  assert.equal(start, 2);
  const end = text.indexOf('GET /next');
  for (let cut = start; cut <= text.length; cut++) {
    const first = headEnd(text.subarray(0, cut), start, start);
    if (cut < end) {
      assert.equal(first, -1, `cut ${cut}`);
      assert.equal(headEnd(text, start, cut), end, `resumed at ${cut}`);
    } else assert.equal(first, end);
  }
  assert.equal(headEnd(Buffer.from('GET / HTTP/1.1\nHost: a\n\n'), 0, 0), 24, 'a bare-LF head ends, to be refused');
  assert.equal(headEnd(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n'), 0, 0), -1);
  assert.equal(skipEmptyLines(Buffer.from('\r\n\r\n\r'), 0, 5), 4, 'a lone CR waits for its LF');
  assert.equal(skipEmptyLines(Buffer.from('\n'), 0, 1), 0, 'a bare LF is not an empty line');
});

test('RequestHead: one shape for every head', () => {
  const a = accepted('GET / HTTP/1.1\r\n\r\n');
  const b = accepted(post('Content-Length: 1\r\nConnection: close\r\n'));
  assert.deepEqual(Object.keys(a), Object.keys(b));
  assert.equal(a.socket, null);
  // What the proxy core reads of a request (src/core/context.ts), as node:http's IncomingMessage gives it.
  const core: CoreRequestHead = a;
  assert.equal(core.httpVersion, '1.1');
});
