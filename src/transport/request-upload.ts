/**
 * The streamed request body of one upstream attempt, as Fulcrum's own transports upload it:
 * read from the client's Readable, counted against the declared Content-Length, written through
 * the transport's sink with backpressure (paused on a full write, resumed on drain). What goes on
 * the wire is the transport's own: HTTP/1.1 chunk framing and last-chunk trailers (http1.ts),
 * DATA frames, END_STREAM and waitForTrailers (http2.ts); so are its deadlines and phases.
 *
 * A body longer or shorter than its declared length fails with undici's
 * `UND_ERR_REQ_CONTENT_LENGTH_MISMATCH` (RequestContentLengthMismatchError, lib/core/errors.js),
 * which src/proxy/status.ts maps like the other request-side refusals.
 */
import type { Readable } from 'node:stream';

function lengthMismatch(message: string): Error {
  return Object.assign(new Error(message), { code: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' });
}

/** Where a `RequestUpload` writes its body and reports its outcome: the transport's connection or stream. */
export interface UploadSink {
  /** Writes one body chunk (never empty) after it was counted. Returns false when the wire is full: the body pauses until `RequestUpload.drained`. */
  uploadChunk(chunk: Buffer): boolean;
  /** The body ended, at its declared length when it had one; it is detached already. The request's end (last chunk, END_STREAM) goes out here. */
  uploadEnd(): void;
  /**
   * The upload failed; the body is detached already. `err`: the body's own error, a length
   * mismatch (`code` `UND_ERR_REQ_CONTENT_LENGTH_MISMATCH`), or what `uploadChunk` or `uploadEnd` threw.
   */
  uploadFailed(err: Error): void;
}

/**
 * One body upload at a time toward one sink, reusable for the next one (an HTTP/1.1 connection
 * keeps one for all its requests). Its listeners are bound once, when it is made: attaching a
 * body allocates nothing, and neither does a chunk.
 */
export class RequestUpload {
  private readonly sink: UploadSink;
  /** The body being uploaded; null when none is attached. */
  private body: Readable | null = null;
  /** The body is paused until the sink drains. */
  private paused = false;
  /** Body bytes still due under the declared Content-Length; -1: none declared. Read-only outside; kept after the body detaches. */
  left = -1;
  /** Body bytes were written since the owner last cleared it (its response-headers deadline: an upload still moving is not the upstream's silence). */
  moved = false;

  constructor(sink: UploadSink) {
    this.sink = sink;
  }

  /**
   * Starts uploading `body`: `declared` is its Content-Length in bytes (-1: none), `paused` true
   * when the sink is full already (the body then waits for `drained`).
   */
  attach(body: Readable, declared: number, paused: boolean): void {
    this.body = body;
    this.left = declared;
    this.paused = paused;
    this.moved = false;
    body.on('data', this.onData);
    body.on('end', this.onEnd);
    body.on('error', this.onError);
    if (paused) body.pause();
    else body.resume();
  }

  /** Stops listening to the body (idempotent); its unread bytes stay in it, paused, unless it ended. */
  detach(): void {
    const body = this.body;
    if (body === null) return;
    this.body = null;
    body.off('data', this.onData);
    body.off('end', this.onEnd);
    body.off('error', this.onError);
    // Unread bytes stay in the stream, not lost on the floor of a flowing stream without listeners.
    if (!body.readableEnded) body.pause();
  }

  /** The sink drained: a paused upload goes on. A listener as it is (bound once), for a stream's 'drain'. */
  readonly drained = (): void => {
    const body = this.body;
    if (!this.paused || body === null) return;
    this.paused = false;
    this.moved = true;
    body.resume();
  };

  private readonly onData = (chunk: Buffer): void => {
    const body = this.body;
    if (body === null || chunk.length === 0) return;
    // A throw in the sink ends its exchange (a 502), never the process.
    try {
      if (this.left >= 0) {
        if (chunk.length > this.left) return this.mismatch('request body longer than its Content-Length');
        this.left -= chunk.length;
      }
      this.moved = true;
      if (!this.sink.uploadChunk(chunk)) {
        this.paused = true;
        body.pause();
      }
    } catch (err) {
      this.detach();
      this.sink.uploadFailed(err as Error);
    }
  };

  private readonly onEnd = (): void => {
    if (this.body === null) return;
    try {
      if (this.left > 0) return this.mismatch('request body shorter than its Content-Length');
      this.detach();
      this.sink.uploadEnd();
    } catch (err) {
      this.detach();
      this.sink.uploadFailed(err as Error);
    }
  };

  private readonly onError = (err: Error): void => {
    this.detach();
    this.sink.uploadFailed(err);
  };

  private mismatch(message: string): void {
    this.detach();
    this.sink.uploadFailed(lengthMismatch(message));
  }
}
