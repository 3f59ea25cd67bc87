/**
 * Byte buffers that grow as reads come in, for the HTTP/1.1 parsers on both sides (the server's
 * connection and the upstream transport).
 */

/**
 * `pending` followed by `chunk`, in a buffer with room to spare: a head or body trickling in a
 * byte per read is copied a few times over, not once per read (which would be quadratic).
 */
export function append(pending: Buffer, chunk: Buffer): Buffer {
  const length = pending.length + chunk.length;
  const store = pending.buffer as ArrayBuffer;
  const end = pending.byteOffset + pending.length;
  // `pending` ends where free room of its own store begins (a store this function made): copy into it.
  if (spare.get(store) === end && end + chunk.length <= store.byteLength) {
    chunk.copy(Buffer.from(store, end, chunk.length));
    spare.set(store, end + chunk.length);
    return Buffer.from(store, pending.byteOffset, length);
  }
  const grown = Buffer.allocUnsafeSlow(Math.max(length * 2, 4096));
  pending.copy(grown, 0);
  chunk.copy(grown, pending.length);
  spare.set(grown.buffer as ArrayBuffer, length);
  return grown.subarray(0, length);
}

/** For stores made by `append`: where their free room begins. */
const spare = new WeakMap<ArrayBuffer, number>();
