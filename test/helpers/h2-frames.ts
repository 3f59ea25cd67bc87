/**
 * Raw HTTP/2 frames (RFC 9113 section 4) written and read by hand over a plain TCP socket, for
 * tests that must send what no well-behaved client would: streams reset as soon as they are
 * opened, header blocks that never end, floods of PING and SETTINGS. Header blocks are HPACK
 * (RFC 7541) in its simplest forms only: static-table indexes and literals without indexing,
 * no Huffman coding, so every block is self-contained and the server's dynamic table never grows.
 */
import net from 'node:net';

/** The client connection preface (RFC 9113 section 3.4). */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** Frame types (RFC 9113 section 6). */
export const FrameType = { DATA: 0x0, HEADERS: 0x1, PRIORITY: 0x2, RST_STREAM: 0x3, SETTINGS: 0x4, PUSH_PROMISE: 0x5, PING: 0x6, GOAWAY: 0x7, WINDOW_UPDATE: 0x8, CONTINUATION: 0x9 } as const;

/** Frame flags: END_STREAM and ACK share bit 0x1. */
export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;

/** SETTINGS parameter identifiers (RFC 9113 section 6.5.2). */
export const Setting = { HEADER_TABLE_SIZE: 0x1, ENABLE_PUSH: 0x2, MAX_CONCURRENT_STREAMS: 0x3, INITIAL_WINDOW_SIZE: 0x4, MAX_FRAME_SIZE: 0x5, MAX_HEADER_LIST_SIZE: 0x6 } as const;

/** Error codes (RFC 9113 section 7), by name, for RST_STREAM and GOAWAY. */
export const ErrorCode = { NO_ERROR: 0x0, PROTOCOL_ERROR: 0x1, INTERNAL_ERROR: 0x2, FLOW_CONTROL_ERROR: 0x3, SETTINGS_TIMEOUT: 0x4, STREAM_CLOSED: 0x5, FRAME_SIZE_ERROR: 0x6, REFUSED_STREAM: 0x7, CANCEL: 0x8, COMPRESSION_ERROR: 0x9, CONNECT_ERROR: 0xa, ENHANCE_YOUR_CALM: 0xb, INADEQUATE_SECURITY: 0xc, HTTP_1_1_REQUIRED: 0xd } as const;

const errorNames = Object.fromEntries(Object.entries(ErrorCode).map(([name, code]) => [code, name])) as Record<number, string>;

/** The name of an HTTP/2 error code (`UNKNOWN(0x..)` for one RFC 9113 does not define). */
export function errorName(code: number): string {
  return errorNames[code] ?? `UNKNOWN(0x${code.toString(16)})`;
}

/** One frame: the 9-byte header (24-bit length, type, flags, 31-bit stream id) and the payload. */
export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length >= 2 ** 24) throw new RangeError(`frame payload of ${payload.length} bytes does not fit 24 bits`);
  const out = Buffer.allocUnsafe(9 + payload.length);
  out.writeUIntBE(payload.length, 0, 3);
  out[3] = type;
  out[4] = flags;
  out.writeUInt32BE(streamId & 0x7fffffff, 5);
  payload.copy(out, 9);
  return out;
}

/** SETTINGS with `[identifier, value]` pairs (none: an empty SETTINGS, as a client may open with). */
export function settings(entries: readonly (readonly [number, number])[] = []): Buffer {
  const payload = Buffer.allocUnsafe(entries.length * 6);
  entries.forEach(([id, value], i) => {
    payload.writeUInt16BE(id, i * 6);
    payload.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(FrameType.SETTINGS, 0, 0, payload);
}

/** The acknowledgement of the peer's SETTINGS. */
export function settingsAck(): Buffer {
  return frame(FrameType.SETTINGS, Flag.ACK, 0);
}

/** HEADERS carrying (the start of) a header block; END_HEADERS by default, END_STREAM when asked. */
export function headers(streamId: number, block: Buffer, { endStream = false, endHeaders = true } = {}): Buffer {
  return frame(FrameType.HEADERS, (endStream ? Flag.END_STREAM : 0) | (endHeaders ? Flag.END_HEADERS : 0), streamId, block);
}

/** CONTINUATION: more of a header block HEADERS began. */
export function continuation(streamId: number, block: Buffer, endHeaders = false): Buffer {
  return frame(FrameType.CONTINUATION, endHeaders ? Flag.END_HEADERS : 0, streamId, block);
}

/** RST_STREAM with an error code (CANCEL by default, what a browser sends when it gives up). */
export function rstStream(streamId: number, code: number = ErrorCode.CANCEL): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(code, 0);
  return frame(FrameType.RST_STREAM, 0, streamId, payload);
}

/** PING with 8 bytes of opaque data (zeros by default). */
export function ping(data: Buffer = Buffer.alloc(8), ack = false): Buffer {
  if (data.length !== 8) throw new RangeError('PING carries exactly 8 bytes');
  return frame(FrameType.PING, ack ? Flag.ACK : 0, 0, data);
}

/** WINDOW_UPDATE for a stream, or for the connection with stream 0; `increment` 1..2^31-1 bytes. */
export function windowUpdate(streamId: number, increment: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(increment & 0x7fffffff, 0);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, payload);
}

/** DATA on a stream. */
export function data(streamId: number, payload: Buffer, endStream = false): Buffer {
  return frame(FrameType.DATA, endStream ? Flag.END_STREAM : 0, streamId, payload);
}

/** GOAWAY with the last stream id processed and an error code. */
export function goaway(lastStreamId: number, code: number = ErrorCode.NO_ERROR): Buffer {
  const payload = Buffer.allocUnsafe(8);
  payload.writeUInt32BE(lastStreamId & 0x7fffffff, 0);
  payload.writeUInt32BE(code, 4);
  return frame(FrameType.GOAWAY, 0, 0, payload);
}

/** An HPACK integer with an N-bit prefix (RFC 7541 section 5.1); `high` holds the bits above the prefix. */
export function hpackInteger(value: number, prefixBits: number, high = 0): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([high | value]);
  const bytes = [high | max];
  let rest = value - max;
  while (rest >= 128) {
    bytes.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** An HPACK string literal, raw (H bit 0, no Huffman). */
export function hpackString(text: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  return Buffer.concat([hpackInteger(bytes.length, 7), bytes]);
}

/** A literal header field without indexing, new name (RFC 7541 section 6.2.2): the server's dynamic table is left alone. */
export function hpackLiteral(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0x00]), hpackString(name), hpackString(value)]);
}

/** A literal header field without indexing whose name is static-table entry `index` (`:authority` is 1, `:path` 4). */
export function hpackLiteralIndexedName(index: number, value: string): Buffer {
  return Buffer.concat([hpackInteger(index, 4), hpackString(value)]);
}

/**
 * The header block of a request: `:method GET` (static 2, 0x82), `:scheme http` (static 6,
 * 0x86), `:path` (`/` is static 4, 0x84; another path a literal), `:authority` as a literal,
 * then `extra` fields as literals.
 */
export function requestBlock({ path = '/', authority = 'localhost', extra = [] as readonly (readonly [string, string])[] } = {}): Buffer {
  const parts = [Buffer.from([0x82, 0x86]), path === '/' ? Buffer.from([0x84]) : hpackLiteralIndexedName(4, path), hpackLiteralIndexedName(1, authority)];
  for (const [name, value] of extra) parts.push(hpackLiteral(name, value));
  return Buffer.concat(parts);
}

/** A frame as read: header fields and payload. */
export interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

/** Splits a byte stream into frames; `push` returns the frames completed by a chunk. */
export class FrameReader {
  private buffered: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const frames: Frame[] = [];
    let at = 0;
    while (this.buffered.length - at >= 9) {
      const length = this.buffered.readUIntBE(at, 3);
      if (this.buffered.length - at < 9 + length) break;
      frames.push({
        type: this.buffered[at + 3],
        flags: this.buffered[at + 4],
        streamId: this.buffered.readUInt32BE(at + 5) & 0x7fffffff,
        payload: Buffer.from(this.buffered.subarray(at + 9, at + 9 + length)),
      });
      at += 9 + length;
    }
    this.buffered = this.buffered.subarray(at);
    return frames;
  }
}

/** The fields of a GOAWAY payload. */
export function parseGoaway(payload: Buffer): { lastStreamId: number; code: number; debug: string } {
  return { lastStreamId: payload.readUInt32BE(0) & 0x7fffffff, code: payload.readUInt32BE(4), debug: payload.subarray(8).toString('latin1') };
}

/** Options of `RawH2Connection.connect`. */
export interface RawH2Options {
  /** `[identifier, value]` pairs of the opening SETTINGS (default none). */
  initialSettings?: readonly (readonly [number, number])[];
  /** Frames written with the preface, in the same write (default none). */
  opening?: Buffer;
  /** Acknowledge the server's SETTINGS (default true). */
  ackSettings?: boolean;
  /** Called with every frame received. */
  onFrame?: (f: Frame) => void;
}

/**
 * A raw HTTP/2 client connection with prior knowledge (h2c): sends the preface and an opening
 * SETTINGS, reads and tallies every frame the server sends. The server's SETTINGS are
 * acknowledged unless `ackSettings` is false; nothing else is answered by itself.
 */
export class RawH2Connection {
  readonly socket: net.Socket;
  /** Bytes handed to the socket so far (the attacker's cost). */
  bytesSent = 0;
  /** Frames received, by type name, and the error codes of RST_STREAMs received, by name. */
  readonly received = new Map<string, number>();
  readonly resets = new Map<string, number>();
  /** The first GOAWAY the server sent, or null. */
  goaway: { lastStreamId: number; code: string; debug: string } | null = null;
  /** Stream ids of HEADERS the server answered with (responses begun). */
  readonly answered = new Set<number>();
  /** Payload bytes of the DATA frames received (what flow control let through). */
  dataBytes = 0;
  /** SETTINGS and PING frames with the ACK flag received, by type name. */
  readonly acks = new Map<string, number>();
  /** Set once the socket closed; `closedAt` is performance.now() then. */
  closed = false;
  closedAt = 0;
  /** The socket error that ended the connection (ECONNRESET, EPIPE), if any. */
  error: string | null = null;
  readonly done: Promise<void>;
  private readonly reader = new FrameReader();
  private readonly onFrame: ((f: Frame) => void) | undefined;

  private constructor(socket: net.Socket, ackSettings: boolean, onFrame?: (f: Frame) => void) {
    this.socket = socket;
    this.onFrame = onFrame;
    this.done = new Promise((resolve) => {
      socket.once('close', () => {
        this.closed = true;
        this.closedAt = performance.now();
        resolve();
      });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => (this.error ??= err.code ?? err.message));
    socket.on('data', (chunk: Buffer) => {
      for (const f of this.reader.push(chunk)) {
        const name = Object.keys(FrameType).find((k) => FrameType[k as keyof typeof FrameType] === f.type) ?? `0x${f.type.toString(16)}`;
        this.received.set(name, (this.received.get(name) ?? 0) + 1);
        if ((f.type === FrameType.SETTINGS || f.type === FrameType.PING) && (f.flags & Flag.ACK) !== 0) this.acks.set(name, (this.acks.get(name) ?? 0) + 1);
        if (f.type === FrameType.SETTINGS && (f.flags & Flag.ACK) === 0 && ackSettings) this.write(settingsAck());
        if (f.type === FrameType.RST_STREAM) {
          const code = errorName(f.payload.readUInt32BE(0));
          this.resets.set(code, (this.resets.get(code) ?? 0) + 1);
        }
        if (f.type === FrameType.HEADERS) this.answered.add(f.streamId);
        if (f.type === FrameType.DATA) this.dataBytes += f.payload.length;
        if (f.type === FrameType.GOAWAY && this.goaway === null) {
          const g = parseGoaway(f.payload);
          this.goaway = { lastStreamId: g.lastStreamId, code: errorName(g.code), debug: g.debug };
        }
        this.onFrame?.(f);
      }
    });
  }

  /**
   * Connects to 127.0.0.1:`port` and sends the preface, `initialSettings` and `opening` (more
   * frames) in one write, so that a server reads them together.
   */
  static async connect(port: number, { initialSettings = [], opening = Buffer.alloc(0), ackSettings = true, onFrame }: RawH2Options = {}): Promise<RawH2Connection> {
    const socket = net.connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const conn = new RawH2Connection(socket, ackSettings, onFrame);
    conn.write(Buffer.concat([PREFACE, settings(initialSettings), opening]));
    return conn;
  }

  /** Writes bytes unless the socket is gone; false when the socket's buffer is full (wait for `drained`). */
  write(bytes: Buffer): boolean {
    if (this.closed || this.socket.destroyed || !this.socket.writable) return false;
    this.bytesSent += bytes.length;
    return this.socket.write(bytes);
  }

  /** Resolves once the socket can take more, or it closed. */
  drained(): Promise<void> {
    if (this.closed || !this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  /** Whether the connection is over for an attacker: GOAWAY seen, or the socket closed or failed. */
  get stopped(): boolean {
    return this.closed || this.goaway !== null || this.error !== null || !this.socket.writable;
  }

  close(): void {
    this.socket.destroy();
  }
}
