/**
 * Where access-log lines go, off the request path. `FdWriter` is nginx's
 * `access_log ... buffer=64k flush=1s`: lines are copied into a buffer that is written to a file
 * descriptor when it is full or `flush` after its first line, and when the writer closes or the
 * process exits. One `writeSync` per batch, on a descriptor that never blocks (a regular file, or
 * a pipe in non-blocking mode): no thread-pool round trip, no write that could land after a later
 * one. A pipe that is full answers EAGAIN and the batch waits; past `maxPendingBytes` lines are
 * dropped and counted, so a destination nobody reads cannot take the process's memory.
 * `StreamWriter` hands each line to a stream given in code (tests, embedders).
 */
import fs from 'node:fs';

/** A destination for whole lines. */
export interface LineWriter {
  /** Takes one line (newline included); never blocks, never throws. */
  write(line: string): void;
  /** Writes what is pending now (process exit). */
  flushSync(): void;
  /** Writes what is pending and lets go of the destination; later lines are dropped. */
  close(): Promise<void>;
}

/** Options of an FdWriter. */
export interface FdWriterOptions {
  /** Bytes gathered before a write (nginx's `buffer=`). */
  bufferBytes: number;
  /** Longest a line waits in the buffer, in milliseconds (nginx's `flush=`). */
  flushMs: number;
  /** Bytes that may wait for a slow destination; lines beyond are dropped. */
  maxPendingBytes: number;
  /** Close the descriptor on close (a file the writer opened), or leave it open (stdout). */
  ownsFd: boolean;
  /** Called for lines dropped (destination too slow, or a write failed): the count, and the error if one. */
  onDrop?(lines: number, error?: NodeJS.ErrnoException): void;
}

/** A filled part of a buffer and how many lines it holds. */
interface Chunk {
  bytes: Buffer;
  lines: number;
}

/** How long to wait before writing again to a full pipe. */
const retryMs = 10;
/** How long a close or the process's exit waits for a full pipe to take the rest. */
const closeWaitMs = 1000;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Writers with lines in them: written out when the process exits. */
const open = new Set<FdWriter>();
let exitHooked = false;

function flushAllOnExit(): void {
  for (const writer of open) writer.flushSync();
}

/** Opens `path` to append, creating it (0644): O_NONBLOCK so that a FIFO (`/dev/stdout` in a container) never blocks a write. */
export function openAppend(path: string): number {
  const { O_WRONLY, O_APPEND, O_CREAT, O_NONBLOCK } = fs.constants;
  return fs.openSync(path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK, 0o644);
}

/** Lines gathered in a buffer and written to a file descriptor in batches. */
export class FdWriter implements LineWriter {
  readonly fd: number;
  private readonly options: FdWriterOptions;
  private buffer: Buffer;
  private used = 0;
  private lines = 0;
  /** Full buffers not yet written (more than one only while the destination is full). */
  private queue: Chunk[] = [];
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  /** Set while waiting to try a full pipe again. */
  private retry: NodeJS.Timeout | null = null;
  private closed = false;
  /** Lines dropped so far. */
  dropped = 0;
  /** Write calls made (batches, and the pieces of a partial write). */
  writes = 0;

  constructor(fd: number, options: FdWriterOptions) {
    // node:process puts a stdout or stderr pipe in non-blocking mode when it sets it up: a full
    // pipe then answers EAGAIN instead of blocking the event loop.
    if (fd === 1) void process.stdout.writable;
    else if (fd === 2) void process.stderr.writable;
    this.fd = fd;
    this.options = options;
    this.buffer = Buffer.allocUnsafeSlow(options.bufferBytes);
    open.add(this);
    if (!exitHooked) {
      exitHooked = true;
      process.on('exit', flushAllOnExit);
    }
  }

  /** Bytes taken and not yet written. */
  get pendingBytes(): number {
    return this.used + this.queuedBytes;
  }

  write(line: string): void {
    if (this.closed || this.pendingBytes + line.length > this.options.maxPendingBytes) return this.drop(1);
    // Room for the worst case (3 UTF-8 bytes per UTF-16 unit) keeps the copy from being cut.
    const room = line.length * 3;
    if (this.used + room > this.buffer.length) {
      this.seal();
      if (room > this.buffer.length) {
        this.enqueue({ bytes: Buffer.from(line, 'utf8'), lines: 1 });
        return this.writeQueue(false);
      }
    }
    if (this.used === 0) this.timer = setTimeout(this.onFlushTimer, this.options.flushMs).unref();
    this.used += this.buffer.write(line, this.used);
    this.lines++;
  }

  private readonly onFlushTimer = (): void => {
    this.timer = null;
    this.seal();
  };

  /** The buffer's lines join the queue, which is written now unless the destination is full. */
  private seal(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.used > 0) {
      this.enqueue({ bytes: this.buffer.subarray(0, this.used), lines: this.lines });
      this.buffer = Buffer.allocUnsafeSlow(this.options.bufferBytes);
      this.used = 0;
      this.lines = 0;
    }
    this.writeQueue(false);
  }

  private enqueue(chunk: Chunk): void {
    this.queue.push(chunk);
    this.queuedBytes += chunk.bytes.length;
  }

  /**
   * Writes the queue in order. A full pipe (EAGAIN, or a partial write) keeps the rest: it is
   * tried again in a moment, or, when `wait` (close, exit), after 1 ms pauses for up to a second,
   * then dropped. Any other error drops the lines that failed.
   */
  private writeQueue(wait: boolean): void {
    if (this.retry !== null) {
      if (!wait) return;
      clearTimeout(this.retry);
      this.retry = null;
    }
    const deadline = wait ? performance.now() + closeWaitMs : 0;
    while (this.queue.length > 0) {
      const chunk = this.queue[0];
      let written: number;
      try {
        this.writes++;
        written = fs.writeSync(this.fd, chunk.bytes, 0, chunk.bytes.length);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EAGAIN') {
          this.queue.shift();
          this.queuedBytes -= chunk.bytes.length;
          this.drop(chunk.lines, err as NodeJS.ErrnoException);
          continue;
        }
        written = 0;
      }
      this.queuedBytes -= written;
      if (written === chunk.bytes.length) {
        this.queue.shift();
        continue;
      }
      chunk.bytes = chunk.bytes.subarray(written);
      if (!wait) {
        this.retry = setTimeout(this.onRetry, retryMs).unref();
        return;
      }
      if (performance.now() > deadline) {
        this.drop(this.queue.reduce((n, c) => n + c.lines, 0));
        this.queue = [];
        this.queuedBytes = 0;
        return;
      }
      Atomics.wait(sleeper, 0, 0, 1);
    }
  }

  private readonly onRetry = (): void => {
    this.retry = null;
    this.writeQueue(false);
  };

  flushSync(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.used > 0) {
      this.enqueue({ bytes: this.buffer.subarray(0, this.used), lines: this.lines });
      this.used = 0;
      this.lines = 0;
    }
    this.writeQueue(true);
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.flushSync();
      open.delete(this);
      if (this.options.ownsFd) fs.closeSync(this.fd);
    }
    return Promise.resolve();
  }

  private drop(lines: number, error?: NodeJS.ErrnoException): void {
    this.dropped += lines;
    this.options.onDrop?.(lines, error);
  }
}

/** Each line handed to a stream as it comes (a stream given in code: it does its own buffering). */
export class StreamWriter implements LineWriter {
  private readonly stream: NodeJS.WritableStream & { writableLength?: number };
  private readonly maxPendingBytes: number;
  private readonly onDrop?: (lines: number) => void;
  private closed = false;
  dropped = 0;

  constructor(stream: NodeJS.WritableStream, maxPendingBytes: number, onDrop?: (lines: number) => void) {
    this.stream = stream;
    this.maxPendingBytes = maxPendingBytes;
    this.onDrop = onDrop;
  }

  write(line: string): void {
    if (this.closed || (this.stream.writableLength ?? 0) > this.maxPendingBytes) {
      this.dropped++;
      this.onDrop?.(1);
      return;
    }
    this.stream.write(line);
  }

  flushSync(): void {}

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
