/**
 * The response-head parser (src/http1/response-head.ts): what it reads from a head, every class
 * of refusal, the same verdict whatever the split of the bytes, and agreement with llhttp
 * (node:http's client parser, strict) on what both accept.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { ResponseHead, parseResponseHead } from '../../../src/http1/response-head.ts';

const max = 16_384;

/** Parses `text` as it would arrive in pieces: each piece appended, the parse run again from the start. */
function parse(text: string, splits: number[] = [], maxBytes = max): { n: number; head: ResponseHead } {
  const buf = Buffer.from(text, 'latin1');
  const head = new ResponseHead();
  let n = 0;
  for (const end of [...splits, buf.length]) {
    n = parseResponseHead(buf, 0, end, maxBytes, head);
    if (n !== 0) break;
  }
  return { n, head };
}

/** The fields a caller reads. */
function fields(head: ResponseHead): object {
  const { status, reason, minor, rawHeaders, contentLength, chunked, close, keepAlive, keepAliveTimeout } = head;
  return { status, reason, minor, rawHeaders, contentLength, chunked, close, keepAlive, keepAliveTimeout, persistent: head.persistent };
}

test('reads status, reason, version, headers as sent and what they say', () => {
  const text = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length:  12 \r\nX-Multi: a\r\nX-Multi: b\r\nKeep-Alive: timeout=5, max=100\r\n\r\nhello world!';
  const { n, head } = parse(text);
  assert.equal(n, text.length - 12);
  assert.deepEqual(fields(head), {
    status: 200,
    reason: 'OK',
    minor: 1,
    rawHeaders: ['Content-Type', 'text/plain', 'content-length', '12', 'X-Multi', 'a', 'X-Multi', 'b', 'Keep-Alive', 'timeout=5, max=100'],
    contentLength: 12,
    chunked: false,
    close: false,
    keepAlive: false,
    keepAliveTimeout: 5,
    persistent: true,
  });
});

const readings: [string, string, Record<string, unknown>][] = [
  ['a reason with spaces and obs-text', 'HTTP/1.1 404 Not \xe9t\xe9 Found\r\n\r\n', { status: 404, reason: 'Not \xe9t\xe9 Found' }],
  ['an empty reason after the space', 'HTTP/1.1 201 \r\n\r\n', { status: 201, reason: '' }],
  ['no space and no reason', 'HTTP/1.1 204\r\n\r\n', { status: 204, reason: '' }],
  ['an unregistered status', 'HTTP/1.1 599 Network Timeout\r\n\r\n', { status: 599, reason: 'Network Timeout' }],
  ['an interim answer', 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n', { status: 103, rawHeaders: ['Link', '</a.css>; rel=preload'] }],
  ['HTTP/1.0 without keep-alive: not persistent', 'HTTP/1.0 200 OK\r\n\r\n', { minor: 0, persistent: false }],
  ['HTTP/1.0 with keep-alive: persistent', 'HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n', { minor: 0, keepAlive: true, persistent: true }],
  ['Connection: close among other tokens', 'HTTP/1.1 200 OK\r\nConnection: Upgrade, close\r\n\r\n', { close: true, persistent: false }],
  ['chunked, any case', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n', { chunked: true, contentLength: -1 }],
  ['a value with inner whitespace and tabs around it', 'HTTP/1.1 200 OK\r\nX-A:\t a \t b\t \r\n\r\n', { rawHeaders: ['X-A', 'a \t b'] }],
  ['an empty value', 'HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:   \r\n\r\n', { rawHeaders: ['X-Empty', '', 'X-Spaces', ''] }],
  ['Keep-Alive with a quoted timeout', 'HTTP/1.1 200 OK\r\nKeep-Alive: max=5, timeout="30"\r\n\r\n', { keepAliveTimeout: 30 }],
  ['Content-Length 0', 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', { contentLength: 0 }],
];

for (const [what, text, expected] of readings) {
  test(`reads ${what}, split at every offset`, () => {
    const whole = parse(text);
    assert.equal(whole.n, text.length, whole.head.message);
    const got = fields(whole.head) as Record<string, unknown>;
    for (const [key, value] of Object.entries(expected)) assert.deepEqual(got[key], value, key);
    for (let at = 1; at < text.length; at++) {
      const split = parse(text, [at]);
      assert.equal(split.n, text.length, `split at ${at}`);
      assert.deepEqual(fields(split.head), fields(whole.head), `split at ${at}`);
    }
  });
}

test('incomplete heads ask for more, at every length', () => {
  const text = 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n';
  const head = new ResponseHead();
  const buf = Buffer.from(text);
  for (let end = 0; end < buf.length; end++) assert.equal(parseResponseHead(buf, 0, end, max, head), 0, `at ${end}`);
  assert.equal(parseResponseHead(buf, 0, buf.length, max, head), buf.length);
});

test('parses from an offset and stops at the end of the head', () => {
  const two = Buffer.from('junkHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  const head = new ResponseHead();
  const first = parseResponseHead(two, 4, two.length, max, head);
  assert.equal(head.status, 100);
  const second = parseResponseHead(two, 4 + first, two.length, max, head);
  assert.equal(head.status, 200);
  assert.equal(two.subarray(4 + first + second).toString(), 'ok');
});

const refused: [string, string, string][] = [
  ['not HTTP at all', '<html>hello</html>\r\n\r\n', 'HPE_INVALID_CONSTANT'],
  ['lowercase http', 'http/1.1 200 OK\r\n\r\n', 'HPE_INVALID_CONSTANT'],
  ['HTTP/2.0', 'HTTP/2.0 200 OK\r\n\r\n', 'HPE_INVALID_CONSTANT'],
  ['HTTP/1.2', 'HTTP/1.2 200 OK\r\n\r\n', 'HPE_INVALID_VERSION'],
  ['HTTP/1.1 without a space', 'HTTP/1.1\t200 OK\r\n\r\n', 'HPE_INVALID_VERSION'],
  ['a two-digit status', 'HTTP/1.1 20 OK\r\n\r\n', 'HPE_INVALID_STATUS'],
  ['a four-digit status', 'HTTP/1.1 2000 OK\r\n\r\n', 'HPE_INVALID_STATUS'],
  ['a status below 100', 'HTTP/1.1 099 Low\r\n\r\n', 'HPE_INVALID_STATUS'],
  ['a letter in the status', 'HTTP/1.1 2x0 OK\r\n\r\n', 'HPE_INVALID_STATUS'],
  ['two spaces before the status', 'HTTP/1.1  200 OK\r\n\r\n', 'HPE_INVALID_STATUS'],
  ['a control byte in the reason', 'HTTP/1.1 200 O\x01K\r\n\r\n', 'HPE_INVALID_STATUS'],
  ['a bare LF after the status line', 'HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n', 'HPE_CR_EXPECTED'],
  ['CR without LF after the status line', 'HTTP/1.1 200 OK\rX', 'HPE_LF_EXPECTED'],
  ['a bare LF after a header', 'HTTP/1.1 200 OK\r\nA: b\n\r\n', 'HPE_CR_EXPECTED'],
  ['bare LFs throughout', 'HTTP/1.1 200 OK\nA: b\n\n', 'HPE_CR_EXPECTED'],
  ['a bare LF ending the head', 'HTTP/1.1 200 OK\r\nA: b\r\n\n', 'HPE_CR_EXPECTED'],
  ['CR without LF ending the head', 'HTTP/1.1 200 OK\r\n\rX', 'HPE_LF_EXPECTED'],
  ['CR without LF after a header', 'HTTP/1.1 200 OK\r\nA: b\rX: y\r\n\r\n', 'HPE_LF_EXPECTED'],
  ['a space before the colon', 'HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello', 'HPE_INVALID_HEADER_TOKEN'],
  ['a space in a name', 'HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['an empty name', 'HTTP/1.1 200 OK\r\n: v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a line without a colon', 'HTTP/1.1 200 OK\r\nnocolon\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a non-token byte in a name', 'HTTP/1.1 200 OK\r\nX(a): v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['obs-text in a name', 'HTTP/1.1 200 OK\r\nX\xe9: v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a folded line (obs-fold)', 'HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a folded line with a tab', 'HTTP/1.1 200 OK\r\nX-A: b\r\n\tc\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a NUL in a value', 'HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['DEL in a value', 'HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['an empty Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
  ['a negative Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
  ['a Content-Length list', 'HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
  ['a Content-Length over 2^53', 'HTTP/1.1 200 OK\r\nContent-Length: 9007199254740993\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
  ['a hex Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
  ['two different Content-Length values', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
  ['the same Content-Length twice', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
  ['Content-Length with Transfer-Encoding', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
  ['Transfer-Encoding with Content-Length after it', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
  ['Transfer-Encoding: gzip, chunked', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  ['Transfer-Encoding: identity', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  ['chunked twice', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  ['chunked, chunked', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  ['a head over the limit', `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(max)}\r\n\r\n`, 'HPE_HEADER_OVERFLOW'],
  ['an incomplete head over the limit', `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(max)}`, 'HPE_HEADER_OVERFLOW'],
  ['a status line over the limit', `HTTP/1.1 200 ${'a'.repeat(max)}`, 'HPE_HEADER_OVERFLOW'],
];

for (const [what, text, code] of refused) {
  test(`refuses ${what} (${code}), whatever the split`, () => {
    const whole = parse(text);
    assert.equal(whole.n, -1, `accepted: ${JSON.stringify(fields(whole.head))}`);
    assert.equal(whole.head.error, code, whole.head.message);
    assert.ok(whole.head.message.length > 0);
    for (let at = 1; at < Math.min(text.length, 80); at++) {
      const split = parse(text, [at]);
      assert.equal(split.head.error, code, `split at ${at}: ${split.head.message}`);
    }
  });
}

test('a refusal comes as soon as the bytes show it, not after the whole head', () => {
  assert.equal(parse('<html').head.error, 'HPE_INVALID_CONSTANT');
  assert.equal(parse('HTTP/1.1 200 OK\r\nX-A: b\n').head.error, 'HPE_CR_EXPECTED');
  assert.equal(parse('HTTP/1.1 200 OK\r\nBad Name').head.error, 'HPE_INVALID_HEADER_TOKEN');
});

test('the limit counts from the start of the head', () => {
  const text = 'HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n';
  assert.equal(parse(text, [], text.length).n, text.length);
  assert.equal(parse(text, [], text.length - 1).head.error, 'HPE_HEADER_OVERFLOW');
});

test('never throws on random bytes', () => {
  let seed = 11;
  const random = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const pieces = ['HTTP/1.1 ', 'HTTP/1.0 ', '200', ' OK', '\r\n', '\n', '\r', ': ', 'Content-Length', 'Transfer-Encoding', 'chunked', '5', ' ', '\t', 'X', '\x00', '\xff', ','];
  for (let i = 0; i < 5000; i++) {
    let text = random() < 0.8 ? 'HTTP/1.1 200 OK\r\n' : '';
    const count = Math.floor(random() * 12);
    for (let j = 0; j < count; j++) text += pieces[Math.floor(random() * pieces.length)];
    const { n, head } = parse(text);
    assert.ok(n >= -1 && n <= text.length);
    if (n < 0) assert.ok(head.error?.startsWith('HPE_'), JSON.stringify(text));
  }
});

// Differential check against llhttp (Node's client parser, strict flags): on heads both accept, the same reading.
const require = createRequire(import.meta.url);
interface ParserBinding {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(buf: Buffer): number | Error;
  close(): void;
  [key: number]: unknown;
}
const { HTTPParser } = require('_http_common') as { HTTPParser: { new (): ParserBinding; RESPONSE: number; kOnHeaders: number; kOnHeadersComplete: number; kOnBody: number; kOnMessageComplete: number } };

/** llhttp's reading of a response head, or its error code. */
function llhttp(text: string): { status: number; reason: string; rawHeaders: string[] } | string {
  const parser = new HTTPParser();
  let result: { status: number; reason: string; rawHeaders: string[] } | null = null;
  parser.initialize(HTTPParser.RESPONSE, {}, max, 0);
  parser[HTTPParser.kOnHeaders] = (): void => {};
  parser[HTTPParser.kOnHeadersComplete] = (_major: number, _minor: number, headers: string[], _method: unknown, _url: unknown, status: number, reason: string): number => {
    result = { status, reason, rawHeaders: headers };
    return 1; // skip the body
  };
  parser[HTTPParser.kOnBody] = (): void => {};
  parser[HTTPParser.kOnMessageComplete] = (): void => {};
  try {
    const r = parser.execute(Buffer.from(text, 'latin1'));
    if (typeof r !== 'number') return (r as Error & { code: string }).code;
    return result ?? 'incomplete';
  } finally {
    parser.close();
  }
}

test('agrees with llhttp on every head both accept, and accepts nothing llhttp refuses (bar the stricter classes)', () => {
  const heads = [...readings.map(([, text]) => text), 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length:  12 \r\n\r\n'];
  for (const text of heads) {
    const theirs = llhttp(text);
    const { n, head } = parse(text);
    assert.ok(n > 0 && typeof theirs === 'object', `${JSON.stringify(text)}: ours ${n} ${head.error}, llhttp ${JSON.stringify(theirs)}`);
    assert.equal(head.status, theirs.status);
    assert.equal(head.reason, theirs.reason);
    assert.deepEqual(head.rawHeaders, theirs.rawHeaders.map((v, i) => (i % 2 === 1 ? v.replace(/[ \t]+$/, '') : v)));
  }
  // Stricter than llhttp on purpose: a version other than 1.0 and 1.1, a status below 100, a
  // control byte in the reason, a length no JavaScript number holds, codings other than chunked alone.
  const stricter = ['HTTP/2.0', 'a status below 100', 'a control byte in the reason', 'a Content-Length over 2^53', 'Transfer-Encoding: gzip, chunked', 'Transfer-Encoding: identity', 'chunked twice', 'chunked, chunked'];
  const acceptedByLlhttp = refused.filter(([, text]) => typeof llhttp(text) === 'object').map(([what]) => what);
  assert.deepEqual(acceptedByLlhttp, stricter, 'every refusal llhttp does not share is a listed stricter class');
});
