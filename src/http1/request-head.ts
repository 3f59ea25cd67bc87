/**
 * A strict HTTP/1.1 request-head parser (RFC 9112 sections 2-5, RFC 9110 section 5): what
 * node:http (llhttp, strict) accepts, read the same way, and nothing it refuses. It is stricter
 * than llhttp on purpose in the classes listed below; test/conformance/request-head-fuzz.test.ts
 * checks both properties against llhttp on generated heads.
 *
 * Stricter than llhttp (each a 400, except the raw-size cap, a 431):
 * 1. Exactly one SP between method, request-target and version (RFC 9112 section 3; llhttp takes several).
 * 2. The protocol name is `HTTP` (RFC 9112 section 2.3; llhttp reads `GET / RTSP/1.0` as HTTP/1.0).
 * 3. Request-target forms (RFC 9112 section 3.2): origin-form (`/...`), absolute-form with a
 *    non-empty authority (RFC 9110 section 4.2.1: an empty host MUST be rejected), `*` for OPTIONS
 *    only, authority-form for CONNECT only (llhttp takes `GET *a`, `GET http://`, `CONNECT /a`).
 * 4. Transfer-Encoding codings are comma-separated tokens, no parameters, no empty elements, no
 *    HTAB after a coding (RFC 9112 section 6.1; llhttp takes odd lists such as `x y, chunked`).
 * 5. Content-Length at most 2^53 - 1 (llhttp takes up to 2^64 - 1; a JavaScript number must hold it exactly).
 * 6. Transfer-Encoding on HTTP/1.0 (RFC 9112 section 6.1: faulty framing), and one not ending in
 *    chunked on an upgrade request (llhttp skips that check when upgrading): both refused today
 *    by request-validation.ts after llhttp accepted them.
 * 7. Leading empty lines are CRLF pairs (RFC 9112 section 2.2); llhttp skips any CR and LF.
 * 8. PRI and the RTSP methods without a version (llhttp reads them as HTTP/0.9: a 505 today).
 * 9. A head whose raw size passes `maxRawHeadBytes` is a 431 even when llhttp's count (see
 *    HeadLimits) stays under the limit: only heads padded with unusual amounts of whitespace.
 * Versions llhttp accepts but Fulcrum does not serve (HTTP/0.9, with or without the version,
 * and HTTP/2.0) are answered 505 once the rest of the head parsed, as request-validation.ts
 * does today; other versions are a 400 as in llhttp.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { CLASS, FIELD, SPACE, TOKEN, latin1, sameName } from './chars.ts';

/** Limits for one head: bytes from the first byte of the request line through the final CRLF, and header lines. */
export interface HeadLimits {
  /**
   * The head size limit, counted as Node's `maxHeaderSize` counts it so that behaviour is
   * unchanged: the bytes of the request-target, of the field names and of the field values
   * (leading whitespace excluded, trailing whitespace included); a head reaching it is a 431.
   */
  maxHeadBytes: number;
  /** Header lines per head (default in config: 100); more is a 431. */
  maxHeaders: number;
}

/** A refusal: the status to answer (400, 431, 505 ...), a short code like llhttp's (e.g. 'HPE_INVALID_HEADER_TOKEN') and a human reason. */
export interface HeadError {
  readonly status: number;
  readonly code: string;
  readonly reason: string;
}

/**
 * Raw bytes a head may take before it is a 431 whatever its content (the request line's
 * punctuation, the version, colons, CRLFs and a little whitespace beyond `maxHeadBytes`): a
 * connection whose incomplete head (headEnd returned -1) has more buffered must answer 431.
 */
export function maxRawHeadBytes(limits: HeadLimits): number {
  return limits.maxHeadBytes + 8 * (limits.maxHeaders + 1) + 64;
}

const CR = 13;
const LF = 10;
const SP = 32;
const HTAB = 9;
const COLON = 58;
const SLASH = 47;
const QUESTION = 63;

function table(chars: string, ranges: [number, number][] = []): Uint8Array {
  const t = new Uint8Array(256);
  for (let i = 0; i < chars.length; i++) t[chars.charCodeAt(i)] = 1;
  for (const [a, b] of ranges) for (let c = a; c <= b; c++) t[c] = 1;
  return t;
}
/** A request-target byte (visible ASCII, as llhttp's strict URL table in the path and query). */
const TARGET_CHAR = table('', [[0x21, 0x7e]]);
/** An authority byte (RFC 3986 unreserved, sub-delims, `:`, `@`, `[`, `]`, `%`), the subset of llhttp's server chars. */
const AUTHORITY_CHAR = table("-._~!$&'()*+,;=:@[]%", [[48, 57], [65, 90], [97, 122]]);
const ALPHA = table('', [[65, 90], [97, 122]]);

/** The methods llhttp takes in an HTTP/1.x request (its table minus PRI and the RTSP ones). */
const METHODS = new Map<string, string>();
for (const m of ['DELETE', 'GET', 'HEAD', 'POST', 'PUT', 'CONNECT', 'OPTIONS', 'TRACE', 'COPY', 'LOCK', 'MKCOL', 'MOVE', 'PROPFIND', 'PROPPATCH', 'SEARCH', 'UNLOCK', 'BIND', 'REBIND', 'UNBIND', 'ACL', 'REPORT', 'MKACTIVITY', 'CHECKOUT', 'MERGE', 'M-SEARCH', 'NOTIFY', 'SUBSCRIBE', 'UNSUBSCRIBE', 'PATCH', 'PURGE', 'MKCALENDAR', 'LINK', 'UNLINK', 'SOURCE', 'QUERY']) METHODS.set(m, m);
/** llhttp's PRI and RTSP methods: refused in HTTP, where llhttp also takes them without a version (HTTP/0.9). */
const OTHER_METHODS = new Set(['PRI', 'DESCRIBE', 'ANNOUNCE', 'SETUP', 'PLAY', 'PAUSE', 'TEARDOWN', 'GET_PARAMETER', 'SET_PARAMETER', 'REDIRECT', 'RECORD', 'FLUSH']);
/** Longest method in METHODS and OTHER_METHODS. */
const MAX_METHOD = 13;

/** Node's continueExpression (lib/_http_common.js). */
const CONTINUE = /(?:^|\W)100-continue(?:$|\W)/i;

/**
 * How Node's IncomingMessage folds a repeated field into `headers` (lib/_http_incoming.js,
 * matchKnownFields): drop the later ones, an array (set-cookie), or a list joined with '; ' (cookie).
 * Every other name is joined with ', '.
 */
const DROP = 1;
const ARRAY = 2;
const COOKIE = 3;
const FOLDING = new Map<string, number>([['set-cookie', ARRAY], ['cookie', COOKIE]]);
for (const n of ['content-type', 'content-length', 'user-agent', 'referer', 'host', 'authorization', 'proxy-authorization', 'if-modified-since', 'if-unmodified-since', 'from', 'location', 'max-forwards', 'retry-after', 'etag', 'last-modified', 'server', 'age', 'expires']) FOLDING.set(n, DROP);

/** A parsed request head. One hidden class: every field is set in the constructor. */
export class RequestHead {
  /** As sent (latin1). */
  method: string;
  /** The request-target as sent (latin1). */
  url: string;
  httpVersionMajor: number;
  httpVersionMinor: number;
  /** '1.1' or '1.0'. */
  httpVersion: string;
  /** Flat [name, value, ...] as sent, values trimmed of OWS like Node. */
  rawHeaders: string[];
  /** The Content-Length, or -1 when absent. */
  contentLength: number;
  /** Transfer-Encoding ends in chunked. */
  chunked: boolean;
  /** HTTP/1.1 unless Connection: close; HTTP/1.0 only with Connection: keep-alive (llhttp's rule). */
  keepAlive: boolean;
  /** Expect: 100-continue (as Node matches it) on HTTP/1.1. */
  expectContinue: boolean;
  /** Connection has the upgrade token and an Upgrade header is present (CONNECT aside: check the method). */
  upgrade: boolean;
  /** Raw bytes of the head: end - start. */
  headBytes: number;
  /** Set by the caller. */
  socket: Socket | null;
  private folded: IncomingHttpHeaders | null;

  constructor(method: string, url: string, minor: number, rawHeaders: string[], contentLength: number, chunked: boolean, keepAlive: boolean, expectContinue: boolean, upgrade: boolean, headBytes: number) {
    this.method = method;
    this.url = url;
    this.httpVersionMajor = 1;
    this.httpVersionMinor = minor;
    this.httpVersion = minor === 1 ? '1.1' : '1.0';
    this.rawHeaders = rawHeaders;
    this.contentLength = contentLength;
    this.chunked = chunked;
    this.keepAlive = keepAlive;
    this.expectContinue = expectContinue;
    this.upgrade = upgrade;
    this.headBytes = headBytes;
    this.socket = null;
    this.folded = null;
  }

  /** Lower-cased names, built once on first use, with IncomingMessage's rules for repeated fields. */
  get headers(): IncomingHttpHeaders {
    if (this.folded !== null) return this.folded;
    const raw = this.rawHeaders;
    // A plain object, as Node's: the same answers for odd names such as `constructor`.
    const dest: Record<string, string | string[]> = {};
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i].toLowerCase();
      const value = raw[i + 1];
      const fold = FOLDING.get(name);
      if (fold === undefined || fold === COOKIE) {
        const had = dest[name];
        if (typeof had === 'string') dest[name] = had + (fold === COOKIE ? '; ' : ', ') + value;
        else dest[name] = value;
      } else if (fold === ARRAY) {
        const had = dest[name];
        if (had !== undefined) (had as string[]).push(value);
        else dest[name] = [value];
      } else if (dest[name] === undefined) dest[name] = value;
    }
    return (this.folded = dest as IncomingHttpHeaders);
  }
}

/** True when `x` is a refusal. */
export function isHeadError(x: RequestHead | HeadError): x is HeadError {
  return !(x instanceof RequestHead);
}

/** Index just past the blank line ending the head that starts at `start` (scanning from `scanFrom` >= start, so a caller can resume after a partial read), or -1 when not complete yet. */
export function headEnd(buf: Buffer, start: number, scanFrom: number): number {
  // A blank line is LF after LF or after CRLF; bare-LF heads end too, so that they are refused now rather than at a timeout.
  let i = buf.indexOf(LF, scanFrom > start ? scanFrom : start);
  while (i !== -1) {
    const p = i - 1;
    if (p >= start) {
      const c = buf[p];
      if (c === LF || (c === CR && p - 1 >= start && buf[p - 1] === LF)) return i + 1;
    }
    i = buf.indexOf(LF, i + 1);
  }
  return -1;
}

/** Leading empty lines (CRLF) a server ignores before a request line (RFC 9112 section 2.2): index of the first other byte (may equal end). */
export function skipEmptyLines(buf: Buffer, start: number, end: number): number {
  let i = start;
  while (i + 1 < end && buf[i] === CR && buf[i + 1] === LF) i += 2;
  return i;
}


function refusal(status: number, code: string, reason: string): HeadError {
  return Object.freeze({ status, code, reason });
}

const E = {
  method: refusal(400, 'HPE_INVALID_METHOD', 'invalid method'),
  otherMethod: refusal(400, 'HPE_INVALID_METHOD', 'PRI or RTSP method in an HTTP/1 request'),
  methodSpace: refusal(400, 'HPE_INVALID_METHOD', 'expected one space after the method'),
  url: refusal(400, 'HPE_INVALID_URL', 'invalid character in the request-target'),
  urlForm: refusal(400, 'HPE_INVALID_URL', 'request-target is not origin-form, absolute-form, * (OPTIONS) or authority-form (CONNECT)'),
  urlSpace: refusal(400, 'HPE_INVALID_CONSTANT', 'expected one space and HTTP/ after the request-target'),
  version: refusal(400, 'HPE_INVALID_VERSION', 'invalid HTTP version'),
  versionEnd: refusal(400, 'HPE_INVALID_VERSION', 'expected CRLF after the version'),
  unsupported: refusal(505, 'HPE_INVALID_VERSION', 'only HTTP/1.0 and HTTP/1.1 are served'),
  strayLineEnd: refusal(400, 'HPE_INVALID_METHOD', 'CR or LF before the request line other than CRLF pairs'),
  lf: refusal(400, 'HPE_LF_EXPECTED', 'CR not followed by LF'),
  bareLf: refusal(400, 'HPE_CR_EXPECTED', 'LF without CR'),
  fold: refusal(400, 'HPE_INVALID_HEADER_TOKEN', 'header line starts with whitespace (obs-fold)'),
  name: refusal(400, 'HPE_INVALID_HEADER_TOKEN', 'invalid header name'),
  value: refusal(400, 'HPE_INVALID_HEADER_TOKEN', 'invalid character in a header value'),
  contentLength: refusal(400, 'HPE_INVALID_CONTENT_LENGTH', 'Content-Length is not digits only, or above 2^53 - 1'),
  duplicateLength: refusal(400, 'HPE_UNEXPECTED_CONTENT_LENGTH', 'Content-Length given more than once'),
  lengthAndCoding: refusal(400, 'HPE_INVALID_TRANSFER_ENCODING', 'Content-Length and Transfer-Encoding together'),
  coding: refusal(400, 'HPE_INVALID_TRANSFER_ENCODING', 'malformed Transfer-Encoding, or a coding after chunked'),
  notChunked: refusal(400, 'HPE_INVALID_TRANSFER_ENCODING', 'Transfer-Encoding does not end in chunked'),
  codingOnHttp10: refusal(400, 'HPE_INVALID_TRANSFER_ENCODING', 'Transfer-Encoding is not allowed in HTTP/1.0'),
  tooLarge: refusal(431, 'HPE_HEADER_OVERFLOW', 'request head too large'),
  tooLargeRaw: refusal(431, 'HPE_HEADER_OVERFLOW', 'request head too large (raw bytes)'),
  tooMany: refusal(431, 'HPE_TOO_MANY_HEADERS', 'too many header fields'),
  incomplete: refusal(400, 'HPE_INVALID_EOF_STATE', 'head does not end with an empty line'),
} satisfies Record<string, HeadError>;

/** The refusals parseRequestHead answers, by name, for tests and logs. */
export const headErrors: Readonly<Record<keyof typeof E, HeadError>> = E;


/** Flags from a Connection value's comma-separated tokens. */
const CONN_CLOSE = 1;
const CONN_KEEP_ALIVE = 2;
const CONN_UPGRADE = 4;
function connectionTokens(buf: Buffer, a: number, b: number): number {
  let flags = 0;
  let i = a;
  while (i < b) {
    while (i < b && (buf[i] === SP || buf[i] === HTAB || buf[i] === 44)) i++;
    const t = i;
    while (i < b && buf[i] !== 44) i++;
    let e = i;
    while (e > t && (buf[e - 1] === SP || buf[e - 1] === HTAB)) e--;
    if (sameName(buf, t, e, 'close')) flags |= CONN_CLOSE;
    else if (sameName(buf, t, e, 'keep-alive')) flags |= CONN_KEEP_ALIVE;
    else if (sameName(buf, t, e, 'upgrade')) flags |= CONN_UPGRADE;
  }
  return flags;
}

/** Transfer-Encoding state across lines: codings seen, and whether the last was chunked. */
const TE_NONE = 0;
const TE_OTHER = 1;
const TE_CHUNKED = 2;
const TE_BAD = 3;
/**
 * The state after the codings of buf[a, b) (the value untrimmed): TE_BAD for an empty or
 * non-token element, HTAB after a coding (llhttp does not read `chunked<HTAB>` as chunked) or
 * any coding after chunked.
 */
function codings(buf: Buffer, a: number, b: number, state: number): number {
  let i = a;
  for (;;) {
    while (i < b && (buf[i] === SP || buf[i] === HTAB)) i++;
    const t = i;
    while (i < b && (CLASS[buf[i]] & TOKEN) !== 0) i++;
    if (i === t || state === TE_CHUNKED) return TE_BAD;
    state = sameName(buf, t, i, 'chunked') ? TE_CHUNKED : TE_OTHER;
    while (i < b && buf[i] === SP) i++;
    if (i === b) return state;
    if (buf[i] !== 44) return TE_BAD;
    i++;
  }
}

/** Parses buf[start, end) (a complete head as headEnd found it). */
export function parseRequestHead(buf: Buffer, start: number, end: number, limits: HeadLimits): RequestHead | HeadError {
  // One native decode of the whole head, then JS substrings: far cheaper than a decode per field.
  const text = latin1(buf, start, end);
  const max = limits.maxHeadBytes;
  // Method: a known token, then exactly one SP.
  let i = start;
  const methodEnd = Math.min(end, start + MAX_METHOD + 1);
  while (i < methodEnd && (CLASS[buf[i]] & TOKEN) !== 0) i++;
  if (buf[i] !== SP || i === start) {
    if (i === start && (buf[i] === CR || buf[i] === LF)) return E.strayLineEnd;
    return i < methodEnd && i > start ? E.methodSpace : E.method;
  }
  const methodText = text.slice(0, i - start);
  const method = METHODS.get(methodText);
  if (method === undefined) return OTHER_METHODS.has(methodText) ? E.otherMethod : E.method;
  // Request-target: visible ASCII, one of the four forms.
  const t = ++i;
  while (i < end && TARGET_CHAR[buf[i]] === 1) i++;
  const te = i;
  if (te === t) return E.url;
  const c = buf[te];
  if (c !== SP && c !== CR && c !== LF) return E.url;
  const first = buf[t];
  if (method === 'CONNECT') {
    for (let j = t; j < te; j++) if (AUTHORITY_CHAR[buf[j]] === 0) return E.urlForm;
  } else if (first === 42 /* * */) {
    if (te - t !== 1 || method !== 'OPTIONS') return E.urlForm;
  } else if (first !== SLASH) {
    let j = t;
    while (j < te && ALPHA[buf[j]] === 1) j++;
    if (j === t || j + 3 > te || buf[j] !== COLON || buf[j + 1] !== SLASH || buf[j + 2] !== SLASH) return E.urlForm;
    j += 3;
    const host = j;
    while (j < te && AUTHORITY_CHAR[buf[j]] === 1) j++;
    if (j === host || (j < te && buf[j] !== SLASH && buf[j] !== QUESTION)) return E.urlForm;
  }
  let counted = te - t;
  if (counted >= max) return E.tooLarge;
  const url = text.slice(t - start, te - start);
  // Version: `HTTP/d.d` then CRLF; none at all is HTTP/0.9 as llhttp reads it (and it takes a bare LF there: 505 all the same).
  let major = 0;
  let minor = 9;
  if (c === SP) {
    i = te + 1;
    if (i + 10 > end || buf[i] !== 72 || buf[i + 1] !== 84 || buf[i + 2] !== 84 || buf[i + 3] !== 80 || buf[i + 4] !== SLASH) return E.urlSpace;
    major = buf[i + 5] - 48;
    minor = buf[i + 7] - 48;
    if (buf[i + 6] !== 46 || major < 0 || major > 9 || minor < 0 || minor > 9) return E.version;
    if (!((major === 1 && minor <= 1) || (major === 2 && minor === 0) || (major === 0 && minor === 9))) return E.version;
    i += 8;
    if (buf[i] !== CR) return buf[i] === LF ? E.bareLf : E.versionEnd;
    if (i + 1 >= end || buf[i + 1] !== LF) return E.lf;
    i += 2;
  } else if (c === CR) {
    if (te + 1 >= end || buf[te + 1] !== LF) return E.lf;
    i = te + 2;
  } else i = te + 1;
  // Header lines.
  const rawHeaders: string[] = [];
  let lines = 0;
  let contentLength = -1;
  let coding = TE_NONE;
  let connection = 0;
  let upgradeHeader = false;
  let expectContinue = false;
  for (;;) {
    if (i >= end) return E.incomplete;
    const b0 = buf[i];
    if (b0 === CR) {
      if (i + 1 >= end || buf[i + 1] !== LF) return E.lf;
      i += 2;
      break;
    }
    if (b0 === LF) return E.bareLf;
    if (b0 === SP || b0 === HTAB) return E.fold;
    const n = i;
    while (i < end && (CLASS[buf[i]] & TOKEN) !== 0) i++;
    if (i === n || i >= end || buf[i] !== COLON) return E.name;
    const nameLength = i - n;
    counted += nameLength;
    if (counted >= max) return E.tooLarge;
    i++;
    while (i < end && (buf[i] === SP || buf[i] === HTAB)) i++;
    const v = i;
    while (i < end && (CLASS[buf[i]] & (FIELD | SPACE)) !== 0) i++;
    if (i >= end) return E.incomplete;
    const stop = buf[i];
    const lineEnd = i;
    let ve = i;
    while (ve > v && (buf[ve - 1] === SP || buf[ve - 1] === HTAB)) ve--;
    // Framing fields are checked as llhttp reads them, byte by byte, before it counts the value.
    if (stop === CR && sameName(buf, n, n + nameLength, 'content-length')) {
      if (contentLength !== -1) return E.duplicateLength;
      if (coding !== TE_NONE) return E.lengthAndCoding;
      if (ve === v) return E.contentLength;
      let length = 0;
      for (let j = v; j < ve; j++) {
        const d = buf[j] - 48;
        if (d < 0 || d > 9) return E.contentLength;
        length = length * 10 + d;
        if (length > Number.MAX_SAFE_INTEGER) return E.contentLength;
      }
      contentLength = length;
    } else if (stop === CR && sameName(buf, n, n + nameLength, 'transfer-encoding')) {
      if (contentLength !== -1) return E.lengthAndCoding;
      coding = codings(buf, v, lineEnd, coding);
      if (coding === TE_BAD) return E.coding;
    }
    // llhttp counts the value up to where it stops, before it complains about the byte it stopped at.
    counted += i - v;
    if (counted >= max) return E.tooLarge;
    if (stop !== CR) return stop === LF ? E.bareLf : E.value;
    if (i + 1 >= end || buf[i + 1] !== LF) return E.lf;
    i += 2;
    // Fields about the connection: compared without building a lower-cased string.
    switch (nameLength) {
      case 6:
        if (sameName(buf, n, n + 6, 'expect') && CONTINUE.test(text.slice(v - start, ve - start))) expectContinue = true;
        break;
      case 7:
        // llhttp notes Upgrade only with a value.
        if (ve > v && sameName(buf, n, n + 7, 'upgrade')) upgradeHeader = true;
        break;
      case 10:
        if (sameName(buf, n, n + 10, 'connection')) connection |= connectionTokens(buf, v, ve);
        break;
    }
    rawHeaders.push(text.slice(n - start, n - start + nameLength), text.slice(v - start, ve - start));
    lines++;
  }
  if (i !== end) return E.incomplete;
  // After the syntax, as llhttp finds syntax errors before it counts the bytes they are in.
  if (end - start > maxRawHeadBytes(limits)) return E.tooLargeRaw;
  if (coding === TE_OTHER) return E.notChunked;
  if (lines > limits.maxHeaders) return E.tooMany;
  if (major !== 1) return E.unsupported;
  if (coding !== TE_NONE && minor === 0) return E.codingOnHttp10;
  const keepAlive = minor === 1 ? (connection & CONN_CLOSE) === 0 : (connection & CONN_KEEP_ALIVE) !== 0;
  return new RequestHead(method, url, minor, rawHeaders, contentLength, coding === TE_CHUNKED, keepAlive, expectContinue && minor === 1, upgradeHeader && (connection & CONN_UPGRADE) !== 0, end - start);
}
