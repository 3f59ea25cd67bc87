/**
 * A strict parser of HTTP/1.x response heads (RFC 9112 sections 2-6): status line, header
 * fields and what they say about framing and keep-alive, in one pass over the bytes.
 *
 *   const head = new ResponseHead();
 *   const n = parseResponseHead(buf, start, end, maxBytes, head);
 *   // n > 0: a whole head was parsed, `n` bytes of it; the body (or the next head) follows.
 *   // n === 0: the head is not complete yet; call again with more bytes (from the same start).
 *   // n < 0: refused; `head.error` is an llhttp-style code (`HPE_*`), `head.message` says why.
 *
 * Refused: a version other than HTTP/1.0 or HTTP/1.1; a status that is not three digits from
 * 100; a byte the grammar does not allow (a CTL in the reason phrase or a value, a non-token
 * byte in a name, whitespace before the colon, an obs-fold line); a bare LF or a CR without
 * LF; a head over `maxBytes`; a Content-Length that is not digits, or more than one; a
 * Transfer-Encoding other than `chunked` alone; Content-Length together with Transfer-Encoding
 * (RFC 9112 section 6.3: a sign of smuggling). No exception is thrown for any input.
 * Stricter than llhttp, Node's client parser, in: the version, a status below 100, a control
 * byte in the reason phrase, a Content-Length over 2^53 and codings other than `chunked`
 * alone; test/unit/http1/response-head.test.ts compares the two and keeps that list.
 * Header names and values are kept as sent, one char per byte (latin1).
 */
import { CLASS, DIGIT, FIELD, SPACE, TOKEN, latin1, sameName } from './chars.ts';

const CR = 13;
const LF = 10;
const SP = 32;
const COLON = 58;

/** What one response head says; filled by `parseResponseHead` (reusable: each parse resets it). */
export class ResponseHead {
  status = 0;
  /** The reason phrase as sent ('' when absent). */
  reason = '';
  /** The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor = 1;
  /** Header fields, flat `[name, value, ...]`, as sent (values without surrounding whitespace). */
  rawHeaders: string[] = [];
  /** Content-Length, or -1 when absent. */
  contentLength = -1;
  /** Transfer-Encoding: chunked. */
  chunked = false;
  /** `Connection` lists `close`. */
  close = false;
  /** `Connection` lists `keep-alive`. */
  keepAlive = false;
  /** `Keep-Alive: timeout=N` in seconds, or -1 when absent. */
  keepAliveTimeout = -1;
  /** The refusal's code (`HPE_*`) after a negative return, else null. */
  error: string | null = null;
  /** What was wrong, after a refusal. */
  message = '';

  /** True when the connection may carry another exchange after this one (RFC 9112 section 9.3). */
  get persistent(): boolean {
    return this.minor === 1 ? !this.close : this.keepAlive && !this.close;
  }

  reset(): void {
    this.status = 0;
    this.reason = '';
    this.minor = 1;
    this.rawHeaders = [];
    this.contentLength = -1;
    this.chunked = false;
    this.close = false;
    this.keepAlive = false;
    this.keepAliveTimeout = -1;
    this.error = null;
    this.message = '';
  }
}

/** "HTTP/1." */
const prefix = [0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e];

function refuse(head: ResponseHead, code: string, why: string): number {
  head.error = code;
  head.message = why;
  return -1;
}

/**
 * Parses the response head at `buf[start, end)` into `head`. Returns the bytes the head took
 * (its final CRLF included), 0 when more bytes are needed, or -1 when it is refused (see the
 * file comment). `maxBytes` bounds the status line and headers together.
 */
export function parseResponseHead(buf: Buffer, start: number, end: number, maxBytes: number, head: ResponseHead): number {
  head.reset();
  const limit = Math.min(end, start + maxBytes);
  let p = start;
  // Status line: HTTP/1.x SP 3DIGIT [SP reason-phrase] CRLF
  for (let i = 0; i < prefix.length; i++, p++) {
    if (p >= limit) return more(head, end - start, maxBytes);
    if (buf[p] !== prefix[i]) return refuse(head, 'HPE_INVALID_CONSTANT', 'the response does not start with HTTP/1.');
  }
  if (p >= limit) return more(head, end - start, maxBytes);
  const minor = buf[p++];
  if (minor !== 0x30 && minor !== 0x31) return refuse(head, 'HPE_INVALID_VERSION', 'HTTP version other than 1.0 or 1.1');
  head.minor = minor - 0x30;
  if (p >= limit) return more(head, end - start, maxBytes);
  if (buf[p++] !== SP) return refuse(head, 'HPE_INVALID_VERSION', 'no space after the HTTP version');
  let status = 0;
  for (let i = 0; i < 3; i++, p++) {
    if (p >= limit) return more(head, end - start, maxBytes);
    const c = buf[p];
    if ((CLASS[c] & DIGIT) === 0) return refuse(head, 'HPE_INVALID_STATUS', 'the status is not three digits');
    status = status * 10 + c - 0x30;
  }
  if (status < 100) return refuse(head, 'HPE_INVALID_STATUS', `status ${status} is below 100`);
  if (p >= limit) return more(head, end - start, maxBytes);
  let c = buf[p];
  let reasonStart = p;
  if (c === SP) {
    reasonStart = ++p;
    for (; p < limit; p++) {
      c = buf[p];
      if ((CLASS[c] & (FIELD | SPACE)) === 0) break;
    }
    if (p >= limit) return more(head, end - start, maxBytes);
  } else if (c !== CR) return refuse(head, 'HPE_INVALID_STATUS', 'the status is not three digits');
  const reasonEnd = p;
  if (buf[p] !== CR) return buf[p] === LF ? refuse(head, 'HPE_CR_EXPECTED', 'a bare LF ends the status line') : refuse(head, 'HPE_INVALID_STATUS', 'a control character in the reason phrase');
  if (++p >= limit) return more(head, end - start, maxBytes);
  if (buf[p++] !== LF) return refuse(head, 'HPE_LF_EXPECTED', 'CR without LF after the status line');
  const raw = head.rawHeaders;
  // Header fields: name ":" OWS value OWS CRLF, until an empty line.
  for (;;) {
    if (p >= limit) return more(head, end - start, maxBytes);
    c = buf[p];
    if (c === CR) {
      if (++p >= limit) return more(head, end - start, maxBytes);
      if (buf[p++] !== LF) return refuse(head, 'HPE_LF_EXPECTED', 'CR without LF at the end of the head');
      break;
    }
    const nameStart = p;
    while (p < limit && (CLASS[buf[p]] & TOKEN) !== 0) p++;
    if (p >= limit) return more(head, end - start, maxBytes);
    const nameEnd = p;
    if (buf[p] !== COLON || nameEnd === nameStart) {
      if (nameEnd === nameStart && (CLASS[buf[p]] & SPACE) !== 0) return refuse(head, 'HPE_INVALID_HEADER_TOKEN', 'a folded header line (obs-fold)');
      if (buf[p] === LF) return refuse(head, 'HPE_CR_EXPECTED', 'a bare LF in the head');
      return refuse(head, 'HPE_INVALID_HEADER_TOKEN', 'an invalid header name');
    }
    p++;
    while (p < limit && (CLASS[buf[p]] & SPACE) !== 0) p++;
    const valueStart = p;
    let valueEnd = p;
    for (; p < limit; p++) {
      const v = CLASS[buf[p]];
      if ((v & FIELD) !== 0) valueEnd = p + 1;
      else if ((v & SPACE) === 0) break;
    }
    if (p >= limit) return more(head, end - start, maxBytes);
    if (buf[p] !== CR) return buf[p] === LF ? refuse(head, 'HPE_CR_EXPECTED', 'a bare LF in the head') : refuse(head, 'HPE_INVALID_HEADER_TOKEN', 'a control character in a header value');
    if (++p >= limit) return more(head, end - start, maxBytes);
    if (buf[p++] !== LF) return refuse(head, 'HPE_LF_EXPECTED', 'CR without LF in the head');
    const value = latin1(buf, valueStart, valueEnd);
    raw.push(latin1(buf, nameStart, nameEnd), value);
    if (framing(buf, nameStart, nameEnd, valueStart, valueEnd, value, head) < 0) return -1;
  }
  if (head.chunked && head.contentLength !== -1) return refuse(head, 'HPE_UNEXPECTED_CONTENT_LENGTH', 'both Content-Length and Transfer-Encoding');
  head.status = status;
  head.reason = latin1(buf, reasonStart, reasonEnd);
  return p - start;
}

/** 0 (more bytes needed) while the head can still fit, else the overflow refusal. */
function more(head: ResponseHead, have: number, maxBytes: number): number {
  return have >= maxBytes ? refuse(head, 'HPE_HEADER_OVERFLOW', `response head larger than ${maxBytes} bytes`) : 0;
}

/** Notes what a header field says about framing and keep-alive; -1 when it is refused. */
function framing(buf: Buffer, nameStart: number, nameEnd: number, valueStart: number, valueEnd: number, value: string, head: ResponseHead): number {
  const length = nameEnd - nameStart;
  if (length === 14 && sameName(buf, nameStart, nameEnd, 'content-length')) {
    if (valueEnd === valueStart) return refuse(head, 'HPE_INVALID_CONTENT_LENGTH', 'an empty Content-Length');
    let n = 0;
    for (let i = valueStart; i < valueEnd; i++) {
      const c = buf[i];
      if ((CLASS[c] & DIGIT) === 0) return refuse(head, 'HPE_INVALID_CONTENT_LENGTH', 'a Content-Length that is not a number');
      n = n * 10 + c - 0x30;
      if (n > Number.MAX_SAFE_INTEGER) return refuse(head, 'HPE_INVALID_CONTENT_LENGTH', 'a Content-Length too large');
    }
    // Even two equal ones (RFC 9110 section 8.6 lets a recipient merge them; llhttp refuses, and so do we).
    if (head.contentLength !== -1) return refuse(head, 'HPE_UNEXPECTED_CONTENT_LENGTH', 'two Content-Length fields');
    head.contentLength = n;
  } else if (length === 17 && sameName(buf, nameStart, nameEnd, 'transfer-encoding')) {
    // Only `chunked`, once: another coding would reach the client undecoded under a dropped hop-by-hop header.
    if (head.chunked || value.toLowerCase() !== 'chunked') return refuse(head, 'HPE_INVALID_TRANSFER_ENCODING', `Transfer-Encoding "${value}" (only "chunked" is accepted)`);
    head.chunked = true;
  } else if (length === 10 && sameName(buf, nameStart, nameEnd, 'connection')) {
    for (const token of value.split(',')) {
      const t = token.trim().toLowerCase();
      if (t === 'close') head.close = true;
      else if (t === 'keep-alive') head.keepAlive = true;
    }
  } else if (length === 10 && sameName(buf, nameStart, nameEnd, 'keep-alive')) {
    const m = /(?:^|[,;\s])timeout\s*=\s*"?(\d+)/i.exec(value);
    if (m !== null) head.keepAliveTimeout = Number(m[1]);
  }
  return 0;
}
