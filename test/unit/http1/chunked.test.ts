/**
 * The chunked decoder (src/http1/chunked.ts): what it accepts, every class of refusal, and the
 * same result whatever the split of the bytes into reads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkedDecoder } from '../../../src/http1/chunked.ts';

interface Outcome {
  body: string;
  consumed: number;
  done: boolean;
  trailers: string[] | null;
  error: string | null;
}

/** Feeds `text` in the given pieces (split offsets); `consumed` counts bytes of `text` taken. */
function decode(text: string, splits: number[] = [], decoder = new ChunkedDecoder()): Outcome {
  const buf = Buffer.from(text, 'latin1');
  const cuts = [0, ...splits, buf.length];
  let body = '';
  let consumed = 0;
  for (let i = 0; i + 1 < cuts.length; i++) {
    // Each piece in a buffer of its own, offset inside a larger one: views must honour start and end.
    const piece = Buffer.concat([Buffer.from('XX'), buf.subarray(cuts[i], cuts[i + 1]), Buffer.from('YY')]);
    const n = decoder.feed(piece, 2, piece.length - 2, (chunk) => {
      assert.ok(chunk.length > 0, 'no empty chunk');
      body += chunk.toString('latin1');
    });
    if (n < 0) return { body, consumed: -1, done: decoder.done, trailers: decoder.trailers, error: decoder.error };
    consumed += n;
    if (decoder.done) break;
    assert.equal(n, cuts[i + 1] - cuts[i], 'all bytes consumed while not done');
  }
  return { body, consumed, done: decoder.done, trailers: decoder.trailers, error: decoder.error };
}

const accepted: [string, string, string, string[] | null][] = [
  ['one chunk', '5\r\nhello\r\n0\r\n\r\n', 'hello', null],
  ['several chunks, hex sizes in both cases', '3\r\nabc\r\nA\r\n0123456789\r\nb\r\nhello world\r\n0\r\n\r\n', 'abc0123456789hello world', null],
  ['an empty body', '0\r\n\r\n', '', null],
  ['leading zeros', '0005\r\nhello\r\n000\r\n\r\n', 'hello', null],
  ['chunk extensions, ignored', '5;name=value\r\nhello\r\n3 ; a ; b="q;\\"x"\r\nabc\r\n0;last\r\n\r\n', 'helloabc', null],
  ['trailers', '5\r\nhello\r\n0\r\nX-Checksum: abc \r\nServer-Timing:  db;dur=53\r\n\r\n', 'hello', ['X-Checksum', 'abc', 'Server-Timing', 'db;dur=53']],
  ['an empty trailer value', '0\r\nX-Empty:\r\n\r\n', '', ['X-Empty', '']],
  ['binary data with CR and LF inside', '4\r\n\r\n\r\n\r\n0\r\n\r\n', '\r\n\r\n', null],
];

for (const [what, text, body, trailers] of accepted) {
  test(`accepts ${what}, split at every offset`, () => {
    const whole = decode(text);
    assert.deepEqual(whole, { body, consumed: text.length, done: true, trailers, error: null });
    for (let at = 1; at < text.length; at++) assert.deepEqual(decode(text, [at]), whole, `split at ${at}`);
    // One byte per read.
    assert.deepEqual(decode(text, Array.from({ length: text.length - 1 }, (_, i) => i + 1)), whole, 'byte by byte');
  });
}

test('stops at the end of the message: what follows is not consumed', () => {
  const text = '3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n';
  const decoder = new ChunkedDecoder();
  const buf = Buffer.from(text);
  const n = decoder.feed(buf, 0, buf.length, () => {});
  assert.equal(n, '3\r\nabc\r\n0\r\n\r\n'.length);
  assert.equal(decoder.done, true);
  assert.equal(decoder.feed(buf, n, buf.length, () => {}), 0, 'nothing more once done');
});

test('reset readies the decoder for another message', () => {
  const decoder = new ChunkedDecoder();
  assert.equal(decode('0\r\nA: b\r\n\r\n', [], decoder).trailers?.[0], 'A');
  decoder.reset();
  assert.deepEqual(decode('2\r\nok\r\n0\r\n\r\n', [], decoder), { body: 'ok', consumed: 12, done: true, trailers: null, error: null });
  assert.equal(decode('zz', [], decoder).consumed, 0, 'a done decoder takes nothing more');
  decoder.reset();
  decode('zz', [], decoder);
  assert.equal(decoder.error, 'HPE_INVALID_CHUNK_SIZE');
  decoder.reset();
  assert.equal(decode('0\r\n\r\n', [], decoder).done, true, 'a refused decoder works again after reset');
});

const refused: [string, string, string][] = [
  ['a size that is not hex', 'g\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['a sign before the size', '+5\r\nhello\r\n0\r\n\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['a 0x prefix', '0x5\r\nhello\r\n0\r\n\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['whitespace before the size', ' 5\r\nhello\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['whitespace after the size without an extension', '5 \r\nhello\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['an empty size line', '\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['a size over 2^53', '20000000000000\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ['a bare LF after the size', '5\nhello\r\n', 'HPE_CR_EXPECTED'],
  ['CR without LF after the size', '5\rhello', 'HPE_LF_EXPECTED'],
  ['a bare LF after an extension', '5;a=b\nhello', 'HPE_CR_EXPECTED'],
  ['a control byte in an extension', '5;a=\x01\r\nhello', 'HPE_INVALID_CHUNK_SIZE'],
  ['a NUL in an extension', '5;a\x00\r\nhello', 'HPE_INVALID_CHUNK_SIZE'],
  ['a size line past the limit', `5;${'x'.repeat(5000)}\r\n`, 'HPE_CHUNK_EXTENSIONS_OVERFLOW'],
  ['a long run of leading zeros', `${'0'.repeat(5000)}5\r\n`, 'HPE_CHUNK_EXTENSIONS_OVERFLOW'],
  ['data longer than its size', '3\r\nhello\r\n0\r\n\r\n', 'HPE_STRICT'],
  ['a bare LF after the data', '3\r\nabc\n0\r\n\r\n', 'HPE_CR_EXPECTED'],
  ['CR without LF after the data', '3\r\nabc\rx', 'HPE_LF_EXPECTED'],
  ['a trailer without a name', '0\r\n: v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a trailer without a colon', '0\r\nnocolon\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a trailer name with a space', '0\r\nBad Name: v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a space before the colon', '0\r\nName : v\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a folded trailer line', '0\r\nA: b\r\n c\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a control byte in a trailer', '0\r\nA: b\x7f\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a bare LF in the trailers', '0\r\nA: b\n\r\n', 'HPE_CR_EXPECTED'],
  ['a bare LF ending the message', '0\r\n\n', 'HPE_CR_EXPECTED'],
  ['CR without LF ending the message', '0\r\n\rx', 'HPE_LF_EXPECTED'],
  ['trailers past the limit', `0\r\nA: ${'v'.repeat(17_000)}\r\n\r\n`, 'HPE_HEADER_OVERFLOW'],
];

for (const [what, text, code] of refused) {
  test(`refuses ${what} (${code}), whatever the split`, () => {
    const whole = decode(text);
    assert.equal(whole.error, code, JSON.stringify(whole));
    assert.equal(whole.consumed, -1);
    assert.equal(whole.done, false);
    for (let at = 1; at < Math.min(text.length, 64); at++) assert.equal(decode(text, [at]).error, code, `split at ${at}`);
  });
}

test('a refused decoder stays refused', () => {
  const decoder = new ChunkedDecoder();
  assert.equal(decode('q', [], decoder).error, 'HPE_INVALID_CHUNK_SIZE');
  assert.equal(decoder.feed(Buffer.from('0\r\n\r\n'), 0, 5, () => {}), -1);
});

test('limits can be set', () => {
  const small = new ChunkedDecoder({ maxLineBytes: 8, maxTrailerBytes: 10 });
  assert.equal(decode('5;abcdefgh\r\n', [], small).error, 'HPE_CHUNK_EXTENSIONS_OVERFLOW');
  const trailers = new ChunkedDecoder({ maxTrailerBytes: 10 });
  assert.equal(decode('0\r\nAbc: defghijk\r\n\r\n', [], trailers).error, 'HPE_HEADER_OVERFLOW');
  assert.equal(decode('0\r\nA: b\r\n\r\n', [], new ChunkedDecoder({ maxTrailerBytes: 10 })).done, true);
});

test('large chunks arrive as views of the input, in pieces as they come', () => {
  const size = 1 << 20;
  const head = Buffer.from(`${size.toString(16)}\r\n`);
  const data = Buffer.alloc(size, 0x61);
  const all = Buffer.concat([head, data, Buffer.from('\r\n0\r\n\r\n')]);
  const decoder = new ChunkedDecoder();
  let got = 0;
  let calls = 0;
  for (let at = 0; at < all.length; at += 65_536) {
    const end = Math.min(all.length, at + 65_536);
    const n = decoder.feed(all, at, end, (chunk) => {
      calls++;
      got += chunk.length;
      assert.equal(chunk.buffer, all.buffer, 'a view, not a copy');
    });
    assert.ok(n >= 0);
  }
  assert.equal(got, size);
  assert.equal(decoder.done, true);
  assert.equal(calls, 17);
});

test('never throws on random bytes', () => {
  let seed = 7;
  const random = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const alphabet = '0123456789abcdefABCDEFxz;= \t\r\n:\x00\x7f\xff';
  for (let i = 0; i < 5000; i++) {
    const length = Math.floor(random() * 40);
    let text = '';
    for (let j = 0; j < length; j++) text += alphabet[Math.floor(random() * alphabet.length)];
    const out = decode(text, length > 2 ? [Math.floor(random() * length)].filter((n) => n > 0) : []);
    assert.ok(out.error === null || out.error.startsWith('HPE_'), JSON.stringify(text));
  }
});
