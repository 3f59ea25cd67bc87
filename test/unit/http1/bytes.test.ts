import { test } from 'node:test';
import assert from 'node:assert/strict';
import { append } from '../../../src/http1/bytes.ts';

test('append: byte-at-a-time reads give the same bytes, copied a logarithmic number of times', () => {
  const text = 'GET / HTTP/1.1\r\nHost: a\r\n' + 'X-Pad: '.padEnd(20_000, 'p') + '\r\n\r\n';
  let pending: Buffer = Buffer.from(text[0], 'latin1');
  const stores = new Set<ArrayBufferLike>();
  for (let i = 1; i < text.length; i++) {
    pending = append(pending, Buffer.from(text[i], 'latin1'));
    stores.add(pending.buffer);
  }
  assert.equal(pending.toString('latin1'), text);
  // One store per doubling: a copy per read would be one per byte.
  assert.ok(stores.size <= Math.ceil(Math.log2(text.length)), `${stores.size} stores for ${text.length} reads`);
});

test('append: a view taken earlier keeps its bytes while the pending bytes grow past it', () => {
  let pending: Buffer = append(Buffer.from('abc'), Buffer.from('def'));
  const earlier = pending.subarray(0, 6);
  // The consumed front is dropped (a parser moved on); what follows is appended into the same store.
  pending = pending.subarray(3);
  for (const c of 'ghijkl') pending = append(pending, Buffer.from(c));
  assert.equal(earlier.toString(), 'abcdef');
  assert.equal(pending.toString(), 'defghijkl');
  // A pending buffer that is not append's (a socket read) is never written past its end.
  const read = Buffer.from('xyz-untouched');
  const view = read.subarray(0, 3);
  assert.equal(append(view, Buffer.from('!')).toString(), 'xyz!');
  assert.equal(read.toString(), 'xyz-untouched');
});
