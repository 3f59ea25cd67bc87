/**
 * Upstream sockets that keep reading after a failed write.
 *
 * An upstream that answers before reading the whole request body (413, 401, a redirect) and
 * then closes makes its kernel reset the connection when more body bytes arrive. Our next
 * write then fails with EPIPE or ECONNRESET, and Node destroys a socket on a failed write, so
 * the answer already sitting in the receive buffer is thrown away and the client gets a 502.
 * Linux keeps received bytes readable after a reset (only the send queue is dropped), so a
 * socket that stops writing but goes on reading still delivers that answer; a connection that
 * died without one ends in a read error or EOF, which the transports report as before.
 */
import type { Socket } from 'node:net';

type WriteCallback = (err?: Error | null) => void;
type GenericWriter = (this: PatchedSocket, writev: boolean, data: unknown, encoding: BufferEncoding, cb: WriteCallback) => unknown;
type PatchedSocket = Socket & { _writeGeneric: GenericWriter; [kWriteFailed]?: Error };

const kWriteFailed = Symbol('fulcrum.writeFailed');
const peerGone = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

/**
 * Makes `socket` drop what it is asked to write once a write failed because the peer is gone,
 * instead of destroying itself, so its readable side is read to the end. Other write errors
 * (and read errors) behave as before.
 */
export function keepReadingAfterWriteError(socket: Socket): Socket {
  const patched = socket as PatchedSocket;
  const write = patched._writeGeneric;
  if (typeof write !== 'function') return socket;
  patched._writeGeneric = function (this: PatchedSocket, writev, data, encoding, cb) {
    if (this[kWriteFailed] !== undefined) {
      cb();
      return;
    }
    return write.call(this, writev, data, encoding, (err) => {
      if (err && peerGone.has((err as NodeJS.ErrnoException).code ?? '')) {
        this[kWriteFailed] = err;
        // Nothing more is sent; the peer's answer (or its reset) is still read.
        cb();
        return;
      }
      cb(err);
    });
  };
  return socket;
}

/** The write error that was held back on `socket`, if any (the peer stopped reading). */
export function heldWriteError(socket: Socket | null | undefined): Error | undefined {
  return socket === null || socket === undefined ? undefined : (socket as PatchedSocket)[kWriteFailed];
}
