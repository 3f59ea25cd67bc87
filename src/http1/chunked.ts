/**
 * An incremental, strict decoder of the chunked transfer coding (RFC 9112 section 7.1), for
 * either direction: response bodies from upstreams (src/transport/http1.ts) and request bodies
 * from clients.
 *
 *   const decoder = new ChunkedDecoder();
 *   const n = decoder.feed(buf, start, end, (data) => sink(data));
 *   // n >= 0: bytes of buf[start, end) consumed. While `done` is false they all were (feed the
 *   //         next bytes as they come); once `done` is true the message ended at start + n and
 *   //         what follows belongs to the next message (or is stray).
 *   // n === -1: refused; `error` holds an llhttp-style code (`HPE_*`), `message` says why; the
 *   //         decoder stays refused until `reset()`.
 *   // done: `trailers` holds the trailer fields, flat [name, value, ...] as sent (latin1), or
 *   //         null when there were none.
 *
 * `onData` gets views of `buf` (no copy), possibly several per call, never an empty one (the
 * zero-size chunk ends the body). Chunk extensions are checked
 * for stray control bytes and otherwise ignored. Line endings are CRLF only; a chunk-size line
 * (size and extensions) is bounded by `maxLineBytes`, the trailer section by `maxTrailerBytes`
 * and `maxTrailers` (both `HPE_HEADER_OVERFLOW`). A folded trailer line (obs-fold) is refused, and
 * so is a `Content-Length` or `Transfer-Encoding` trailer (as llhttp refuses them, with its codes:
 * framing fields after the body are a smuggling attempt, not metadata). Other fields that must
 * not come from trailers (RFC 9110 section 6.5.1) are parsed here and dropped by whoever relays
 * them (`forbiddenTrailer` in src/proxy/headers.ts). Nothing is thrown for any input. One decoder
 * serves one message at a time; `reset()` readies it for the next.
 *
 * `trailerLines` and `lastChunk` write the other way: the end of a chunked body with its trailers.
 */
import { CLASS, FIELD, HEX, SPACE, TOKEN, hexValue, latin1 } from './chars.ts';

/** A trailer field's bytes as they may be written: a token name, a value of field-vchar, SP and HTAB. */
const tokenName = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const invalidValue = /[^\t\x20-\x7e\x80-\xff]/;

const CR = 13;
const LF = 10;
const SEMICOLON = 59;

// States of the decoder.
/** The first hex digit of a chunk size. */
const SIZE_START = 0;
/** More hex digits, an extension, or the CR. */
const SIZE = 1;
/** Whitespace after the size: only a ';' may follow (BWS before an extension). */
const SIZE_SPACE = 2;
/** Inside chunk extensions, until the CR. */
const EXTENSION = 3;
/** The LF of the chunk-size line. */
const SIZE_LF = 4;
/** Chunk data. */
const DATA = 5;
/** The CR after chunk data. */
const DATA_CR = 6;
/** The LF after chunk data. */
const DATA_LF = 7;
/** A trailer line (or the empty line that ends the message). */
const TRAILER = 8;
/** The LF of a trailer line. */
const TRAILER_LF = 9;
const DONE = 10;
const FAILED = 11;

/** Options of a ChunkedDecoder. */
export interface ChunkedLimits {
  /** Longest chunk-size line, extensions included, CRLF excluded (default 4096). */
  maxLineBytes?: number;
  /** Largest trailer section, CRLFs excluded (default 16384). */
  maxTrailerBytes?: number;
  /** Most trailer fields (default 2000, node:http's maxHeadersCount). */
  maxTrailers?: number;
}

/** Decodes one chunked body at a time (see the file comment for the contract). */
export class ChunkedDecoder {
  /** The last chunk and the trailer section were read. */
  done = false;
  /** Trailer fields once done, flat `[name, value, ...]`; null when there were none. */
  trailers: string[] | null = null;
  /** The refusal's code (`HPE_*`), or null. */
  error: string | null = null;
  /** What was wrong, after a refusal. */
  message = '';
  private readonly maxLineBytes: number;
  private readonly maxTrailerBytes: number;
  private readonly maxTrailers: number;
  private state = SIZE_START;
  /** Data bytes left in the current chunk (while in DATA), else the size being read. */
  private size = 0;
  /** Bytes of the current chunk-size line so far. */
  private lineBytes = 0;
  /** The trailer line being read (latin1), and the trailer section's size so far. */
  private line = '';
  private trailerBytes = 0;

  constructor(limits: ChunkedLimits = {}) {
    this.maxLineBytes = limits.maxLineBytes ?? 4096;
    this.maxTrailerBytes = limits.maxTrailerBytes ?? 16_384;
    this.maxTrailers = limits.maxTrailers ?? 2000;
  }

  /** Readies the decoder for another message. */
  reset(): void {
    this.done = false;
    this.trailers = null;
    this.error = null;
    this.message = '';
    this.state = SIZE_START;
    this.size = 0;
    this.lineBytes = 0;
    this.line = '';
    this.trailerBytes = 0;
  }

  /** Decodes `buf[start, end)`; returns the bytes consumed, or -1 when refused (see the file comment). */
  feed(buf: Buffer, start: number, end: number, onData: (chunk: Buffer) => void): number {
    let p = start;
    while (p < end) {
      const c = buf[p];
      switch (this.state) {
        case SIZE_START:
          if ((CLASS[c] & HEX) === 0) return this.fail('HPE_INVALID_CHUNK_SIZE', 'a chunk size that is not hexadecimal');
          this.size = hexValue(c);
          this.lineBytes = 1;
          this.state = SIZE;
          p++;
          break;
        case SIZE:
          if (++this.lineBytes > this.maxLineBytes) return this.fail('HPE_CHUNK_EXTENSIONS_OVERFLOW', `a chunk-size line longer than ${this.maxLineBytes} bytes`);
          if ((CLASS[c] & HEX) !== 0) {
            this.size = this.size * 16 + hexValue(c);
            if (this.size > Number.MAX_SAFE_INTEGER) return this.fail('HPE_INVALID_CHUNK_SIZE', 'a chunk size too large');
          } else if (c === CR) this.state = SIZE_LF;
          else if (c === SEMICOLON) this.state = EXTENSION;
          else if ((CLASS[c] & SPACE) !== 0) this.state = SIZE_SPACE;
          else return c === LF ? this.fail('HPE_CR_EXPECTED', 'a bare LF after a chunk size') : this.fail('HPE_INVALID_CHUNK_SIZE', 'a chunk size that is not hexadecimal');
          p++;
          break;
        case SIZE_SPACE:
          if (++this.lineBytes > this.maxLineBytes) return this.fail('HPE_CHUNK_EXTENSIONS_OVERFLOW', `a chunk-size line longer than ${this.maxLineBytes} bytes`);
          if (c === SEMICOLON) this.state = EXTENSION;
          else if ((CLASS[c] & SPACE) === 0) return this.fail('HPE_INVALID_CHUNK_SIZE', 'whitespace after a chunk size without an extension');
          p++;
          break;
        case EXTENSION: {
          // Skipped whole up to the CR; only control bytes are refused (a bare LF among them).
          let q = p;
          while (q < end && (CLASS[buf[q]] & (FIELD | SPACE)) !== 0) q++;
          this.lineBytes += q - p;
          if (this.lineBytes > this.maxLineBytes) return this.fail('HPE_CHUNK_EXTENSIONS_OVERFLOW', `a chunk-size line longer than ${this.maxLineBytes} bytes`);
          p = q;
          if (p === end) break;
          if (buf[p] !== CR) return buf[p] === LF ? this.fail('HPE_CR_EXPECTED', 'a bare LF after a chunk extension') : this.fail('HPE_INVALID_CHUNK_SIZE', 'a control character in a chunk extension');
          this.state = SIZE_LF;
          p++;
          break;
        }
        case SIZE_LF:
          if (c !== LF) return this.fail('HPE_LF_EXPECTED', 'CR without LF after a chunk size');
          p++;
          if (this.size === 0) {
            this.state = TRAILER;
            this.line = '';
          } else this.state = DATA;
          break;
        case DATA: {
          const n = Math.min(this.size, end - p);
          onData(buf.subarray(p, p + n));
          this.size -= n;
          p += n;
          if (this.size === 0) this.state = DATA_CR;
          break;
        }
        case DATA_CR:
          if (c !== CR) return this.fail(c === LF ? 'HPE_CR_EXPECTED' : 'HPE_STRICT', 'chunk data longer than its size');
          this.state = DATA_LF;
          p++;
          break;
        case DATA_LF:
          if (c !== LF) return this.fail('HPE_LF_EXPECTED', 'CR without LF after chunk data');
          this.state = SIZE_START;
          p++;
          break;
        case TRAILER: {
          let q = p;
          while (q < end && (CLASS[buf[q]] & (FIELD | SPACE)) !== 0) q++;
          this.trailerBytes += q - p;
          if (this.trailerBytes > this.maxTrailerBytes) return this.fail('HPE_HEADER_OVERFLOW', `trailers larger than ${this.maxTrailerBytes} bytes`);
          if (q > p) this.line += latin1(buf, p, q);
          p = q;
          if (p === end) break;
          if (buf[p] !== CR) return buf[p] === LF ? this.fail('HPE_CR_EXPECTED', 'a bare LF in the trailers') : this.fail('HPE_INVALID_HEADER_TOKEN', 'a control character in a trailer');
          this.state = TRAILER_LF;
          p++;
          break;
        }
        case TRAILER_LF:
          if (c !== LF) return this.fail('HPE_LF_EXPECTED', 'CR without LF in the trailers');
          p++;
          if (this.line === '') {
            this.state = DONE;
            this.done = true;
            return p - start;
          }
          if (this.addTrailer(this.line) < 0) return -1;
          this.line = '';
          this.state = TRAILER;
          break;
        case DONE:
          return p - start;
        default:
          return -1;
      }
    }
    return p - start;
  }

  /** Parses one trailer line (`name: value`); -1 when refused. */
  private addTrailer(line: string): number {
    const colon = line.indexOf(':');
    if (colon <= 0) return this.fail('HPE_INVALID_HEADER_TOKEN', (CLASS[line.charCodeAt(0)] & SPACE) !== 0 ? 'a folded trailer line (obs-fold)' : 'a trailer line without a name');
    for (let i = 0; i < colon; i++) {
      if ((CLASS[line.charCodeAt(i)] & TOKEN) === 0) return this.fail('HPE_INVALID_HEADER_TOKEN', 'an invalid trailer name');
    }
    const name = line.slice(0, colon);
    if (colon === 14 && name.toLowerCase() === 'content-length') return this.fail('HPE_INVALID_CONTENT_LENGTH', 'a Content-Length trailer');
    if (colon === 17 && name.toLowerCase() === 'transfer-encoding') return this.fail('HPE_INVALID_TRANSFER_ENCODING', 'a Transfer-Encoding trailer');
    const trailers = (this.trailers ??= []);
    if (trailers.length >= 2 * this.maxTrailers) return this.fail('HPE_HEADER_OVERFLOW', `more than ${this.maxTrailers} trailer fields`);
    trailers.push(name, trimSpaces(line, colon + 1));
    return 0;
  }

  private fail(code: string, message: string): number {
    this.state = FAILED;
    this.error = code;
    this.message = message;
    return -1;
  }
}

/** `s` from `from` without leading and trailing SP and HTAB. */
function trimSpaces(s: string, from: number): string {
  let a = from;
  let b = s.length;
  while (a < b && (CLASS[s.charCodeAt(a)] & SPACE) !== 0) a++;
  while (b > a && (CLASS[s.charCodeAt(b - 1)] & SPACE) !== 0) b--;
  return s.slice(a, b);
}

/**
 * The trailer fields of `trailers` (flat `[name, value, ...]`, strings or latin1 bytes) as
 * `name: value\r\n` lines; a field that cannot be written as is (a name that is not a token, a
 * value with CR, LF or another control byte) is left out rather than failing the message.
 * Policy (which names may be relayed) is the caller's; this only keeps the framing intact.
 */
export function trailerLines(trailers: readonly (Buffer | string)[] | null): string {
  if (trailers === null) return '';
  let text = '';
  for (let i = 0; i + 1 < trailers.length; i += 2) {
    const name = trailers[i].toString('latin1');
    const value = trailers[i + 1].toString('latin1');
    if (writableField(name, value)) text += `${name}: ${value}\r\n`;
  }
  return text;
}

/** True when a field can be written as is: a token name and a value of field-vchar, SP and HTAB (node:http's checks). */
export function writableField(name: string, value: string): boolean {
  return tokenName.test(name) && !invalidValue.test(value);
}

/** The end of a chunked body: the last chunk, the trailer fields that can be written (`trailerLines`), the final CRLF. */
export function lastChunk(trailers: readonly (Buffer | string)[] | null): string {
  return trailers === null || trailers.length === 0 ? '0\r\n\r\n' : `0\r\n${trailerLines(trailers)}\r\n`;
}
