/**
 * Differential fuzzing of src/http1/request-head.ts against llhttp (Node's strict parser):
 * seeded generation of valid and mutated heads, the comparison, and minimisation of a
 * disagreement. Used by test/conformance/request-head-fuzz.test.ts and bench/fuzz-request-head.ts.
 */
import { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import { headEnd, headErrors, isHeadError, maxRawHeadBytes, parseRequestHead, skipEmptyLines, type HeadError, type HeadLimits } from '../../src/http1/request-head.ts';
import { llhttpParse } from './llhttp-oracle.ts';
import { mulberry32 } from './random.ts';

/** A seeded generator (mulberry32, test/helpers/random.ts) with the picks the fuzzer needs. */
export class Random {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

const METHODS = ['GET', 'GET', 'GET', 'POST', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', 'M-SEARCH', 'QUERY', 'PURGE', 'SOURCE', 'get', 'BLAH', 'PRI', 'GE', 'DESCRIBE', 'GET_PARAMETER', 'POST ', ''];
const TARGETS = ['/', '/', '/a/b?c=d&e', '/index.html', '*', 'http://a/b', 'HTTPS://[::1]:8/x?y', 'http://', 'http:///', 'http://a', 'http://u:p@h:1?x', 'a.example:443', '[::1]:443', '//x', '/a#b', '?q', '/%zz', '/"<>{}|\\^`', 'h2c://a/', 'http://a{b/', 'http:/a', 'a', '/a b', '', '*a', 'http://a#x', 'http://a!$&\'()*+,;=/'];
const VERSIONS = ['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'HTTP/3.0', 'http/1.1', 'RTSP/1.0', 'ICE/1.0', 'HTTP/1.10', 'HTTP/1', 'HTTP/01.1', 'HTTP/1.1 '];
const NAMES = ['Host', 'User-Agent', 'Accept', 'Accept-Encoding', 'Cookie', 'Set-Cookie', 'X-Forwarded-For', 'Content-Type', 'Content-Length', 'Transfer-Encoding', 'Connection', 'Upgrade', 'Expect', 'Authorization', 'X-A', 'x-custom_name', "!#$%&'*+-.^_`|~", 'content-length', 'TRANSFER-ENCODING', 'Content-Lengths', 'Transfer-Encodin', 'Age', 'Date', 'constructor', '__proto__'];
const CONTENT_LENGTHS = ['0', '5', '007', ' 5 ', '1, 1', '+5', '-1', '', '9007199254740991', '9007199254740992', '18446744073709551615', '18446744073709551616', '5 5', '0x5', '1.0', '\t12\t', '00000000000000000000001'];
const CODINGS = ['chunked', 'chunked', 'gzip, chunked', 'chunked, gzip', 'CHUNKED', 'chunked ', 'gzip', 'x y, chunked', 'gzip;q=1, chunked', ',chunked', 'chunked,', 'gzip,,chunked', 'identity', '\tchunked', 'br ,\tchunked', 'chunked;a=b', 'xchunked', 'chunked chunked', 'gzip , chunked'];
const CONNECTIONS = ['close', 'keep-alive', 'Upgrade', 'keep-alive, Upgrade', 'close, keep-alive', 'closed', ' close ,', 'x,close', 'Keep-Alive', 'upgrade x', ',,close', 'close\t', 'CLOSE', 'keep-alive ,upgrade', 'upgrade,', 'foo , bar'];
const EXPECTS = ['100-continue', '100-Continue', 'x, 100-continue', '100-continuex', 'foo', '100-continue;a'];
const COLONS = [': ', ': ', ': ', ':', ':  ', ':\t', ' : ', '\t:', ': \t '];
const EOLS = ['\r\n', '\r\n', '\r\n', '\r\n', '\r\n', '\r\n', '\r\n', '\r\n', '\r\n', '\n', '\r', '\r\r\n', '\n\r'];
/** Bytes that break things: CTLs, NUL, CR, LF, whitespace, DEL, obs-text, separators. */
const NASTY = [0, 1, 8, 9, 10, 11, 12, 13, 27, 31, 32, 34, 40, 44, 47, 58, 59, 61, 63, 64, 92, 127, 128, 160, 200, 255];

function valueText(r: Random, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) {
    const roll = r.int(40);
    if (roll === 0) s += '\t';
    else if (roll === 1) s += ' ';
    else if (roll === 2) s += String.fromCharCode(0x80 + r.int(128));
    else s += String.fromCharCode(0x21 + r.int(94));
  }
  return s;
}

function headerLine(r: Random): [string, string] {
  const name = r.chance(0.8) ? r.pick(NAMES) : valueText(r, 1 + r.int(8)).replace(/[^!#$%&'*+\-.^_`|~0-9A-Za-z]/g, 'x');
  const lower = name.toLowerCase();
  let value: string;
  if (lower === 'content-length') value = r.pick(CONTENT_LENGTHS);
  else if (lower === 'transfer-encoding') value = r.pick(CODINGS);
  else if (lower === 'connection') value = r.pick(CONNECTIONS);
  else if (lower === 'expect') value = r.pick(EXPECTS);
  else if (r.chance(0.05)) value = valueText(r, 200 + r.int(3000));
  else value = valueText(r, r.int(30));
  return [name, value];
}

/** One generated input: the bytes and the limits it is parsed with. */
export interface FuzzCase {
  bytes: Buffer;
  limits: HeadLimits;
  /** Offsets where the input is split into reads (1-4 chunks). */
  cuts: number[];
}

/** A head built from parts, then 0-3 byte-level mutations. */
export function generate(r: Random): FuzzCase {
  let text = '';
  if (r.chance(0.05)) text += r.pick(['\r\n', '\r\n\r\n', '\n', '\r']);
  const valid = r.chance(0.4);
  const method = valid ? r.pick(['GET', 'POST', 'PUT', 'DELETE']) : r.pick(METHODS);
  let target = valid ? r.pick(['/', '/a/b?c=d&e', 'http://a/b']) : r.pick(TARGETS);
  if (r.chance(0.05)) target = `/${valueText(r, 100 + r.int(2000)).replace(/[^\x21-\x7e]/g, 'u')}`;
  const version = valid ? 'HTTP/1.1' : r.pick(VERSIONS);
  const sp = (): string => (valid || r.chance(0.9) ? ' ' : r.pick(['  ', '\t', '']));
  text += method + sp() + target + (version === 'HTTP/1' || !r.chance(0.03) ? sp() + version : '');
  const eol = (): string => (valid ? '\r\n' : r.pick(EOLS));
  text += eol();
  const count = r.chance(0.03) ? 90 + r.int(40) : r.int(10);
  for (let i = 0; i < count; i++) {
    const [name, value] = headerLine(r);
    const colon = valid ? ': ' : r.pick(COLONS);
    let line = `${r.chance(0.03) ? r.pick([' ', '\t']) : ''}${name}${colon}${value}${r.chance(0.1) ? r.pick([' ', '\t', ' \t ']) : ''}`;
    if (r.chance(0.02)) line = `${colon}${value}`;
    text += line + eol();
  }
  text += eol();
  const bytes = Buffer.from(text, 'latin1');
  const mutations = valid ? 0 : r.int(4);
  let out: Buffer = bytes;
  for (let m = 0; m < mutations; m++) out = mutate(r, out);
  const limits: HeadLimits = { maxHeadBytes: r.chance(0.5) ? 16_384 : 64 + r.int(4000), maxHeaders: 100 };
  const cuts: number[] = [];
  const pieces = r.int(4);
  for (let i = 0; i < pieces && out.length > 1; i++) cuts.push(1 + r.int(out.length - 1));
  cuts.sort((a, b) => a - b);
  return { bytes: out, limits, cuts };
}

function mutate(r: Random, b: Buffer): Buffer {
  if (b.length === 0) return b;
  const at = r.int(b.length);
  switch (r.int(6)) {
    case 0: {
      const c = Buffer.from(b);
      c[at] = r.pick(NASTY);
      return c;
    }
    case 1:
      return Buffer.concat([b.subarray(0, at), Buffer.from([r.pick(NASTY)]), b.subarray(at)]);
    case 2:
      return Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
    case 3: {
      // Duplicate a line.
      const s = b.indexOf(10, at);
      if (s === -1) return b;
      const e = b.indexOf(10, s + 1);
      if (e === -1) return b;
      return Buffer.concat([b.subarray(0, e + 1), b.subarray(s + 1, e + 1), b.subarray(e + 1)]);
    }
    case 4: {
      const c = Buffer.from(b);
      c[at] = r.int(256);
      return c;
    }
    default: {
      // Insert a framing header at a line start.
      const s = b.indexOf(10, at);
      if (s === -1) return b;
      const line = r.pick([`Content-Length: ${r.pick(CONTENT_LENGTHS)}\r\n`, `Transfer-Encoding: ${r.pick(CODINGS)}\r\n`, `Connection: ${r.pick(CONNECTIONS)}\r\n`, 'Upgrade: websocket\r\n', ' folded\r\n']);
      return Buffer.concat([b.subarray(0, s + 1), Buffer.from(line, 'latin1'), b.subarray(s + 1)]);
    }
  }
}

/**
 * Fulcrum refusing what llhttp accepts, on purpose (see the header of src/http1/request-head.ts):
 * one entry per class, keyed by the refusal.
 */
export const STRICTER: ReadonlyMap<HeadError, string> = new Map([
  [headErrors.urlSpace, 'one SP and the HTTP name after the target (RFC 9112 section 3: `GET /  HTTP/1.1`, `RTSP/1.0`)'],
  [headErrors.url, 'one SP after the method (RFC 9112 section 3: `GET  /`)'],
  [headErrors.urlForm, 'request-target form (RFC 9112 section 3.2; RFC 9110 section 4.2.1: empty host)'],
  [headErrors.coding, 'Transfer-Encoding list syntax (RFC 9112 section 6.1)'],
  [headErrors.notChunked, 'Transfer-Encoding not ending in chunked on an upgrade request (llhttp skips the check when upgrading; request-validation.ts refuses it today)'],
  [headErrors.contentLength, 'Content-Length above 2^53 - 1'],
  [headErrors.codingOnHttp10, 'Transfer-Encoding in HTTP/1.0 (RFC 9112 section 6.1; request-validation.ts today)'],
  [headErrors.unsupported, 'HTTP/0.9 and HTTP/2.0 (505, as request-validation.ts today)'],
  [headErrors.otherMethod, 'PRI and RTSP methods (llhttp takes them in an HTTP/0.9 request, which is a 505 today)'],
  [headErrors.strayLineEnd, 'leading empty lines are CRLF pairs (RFC 9112 section 2.2; llhttp skips any CR and LF)'],
  [headErrors.tooLargeRaw, 'raw head above maxRawHeadBytes (whitespace padding)'],
  [headErrors.tooMany, 'header count (Node truncates, request-limits.ts answers 431 today)'],
]);

/** What one case showed: agreement, an allowed difference, or a disagreement. */
export type Verdict =
  | { kind: 'both-accept' | 'both-refuse' | 'incomplete' | 'status-order' }
  | { kind: 'stricter'; reason: string }
  | { kind: 'disagree'; what: string };

/** Runs one case through both parsers and compares. */
export function check(c: FuzzCase): Verdict {
  const whole = c.bytes;
  // Fulcrum as a connection reads it: skip empty lines, then scan each read for the end of the head.
  const bounds = [...c.cuts, whole.length];
  let start = -1;
  let scan = 0;
  let end = -1;
  for (const upto of bounds) {
    const buf = whole.subarray(0, upto);
    if (start === -1) {
      const s = skipEmptyLines(buf, 0, buf.length);
      if (s === buf.length || (buf[s] === 13 && s + 1 === buf.length)) continue;
      start = scan = s;
    }
    end = headEnd(buf, start, scan);
    if (end !== -1) break;
    scan = buf.length;
  }
  if (start === -1) return { kind: 'incomplete' };
  const once = headEnd(whole, start, start);
  if (once !== end) return { kind: 'disagree', what: `headEnd resumed gave ${end}, in one scan ${once}` };
  if (end === -1) return { kind: 'incomplete' };
  const ours = parseRequestHead(whole, start, end, c.limits);
  const theirs = llhttpParse([whole.subarray(0, end)], c.limits.maxHeadBytes);
  if (theirs.ok === false) {
    if (!isHeadError(ours)) return { kind: 'disagree', what: `llhttp refused (${theirs.code}: ${theirs.reason}), Fulcrum accepted` };
    const today = theirs.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    if (ours.status === today) return { kind: 'both-refuse' };
    // A stricter refusal may come before llhttp's count reaches the limit (400 rather than 431).
    if (STRICTER.has(ours) && theirs.code === 'HPE_HEADER_OVERFLOW') return { kind: 'both-refuse' };
    // A head with a syntax fault and too many bytes in the same line: both refuse, the order of
    // the two checks inside one line differs in corner cases (counted apart; the size count itself
    // is checked on the valid heads).
    if ((ours.status === 431 && today === 400) || (ours.status === 400 && today === 431)) return { kind: 'status-order' };
    return { kind: 'disagree', what: `status: llhttp ${theirs.code} (today ${today}), Fulcrum ${ours.status} ${ours.code} (${ours.reason})` };
  }
  if (theirs.ok === null) {
    if (isHeadError(ours)) return { kind: 'both-refuse' };
    return { kind: 'disagree', what: 'Fulcrum accepted a head llhttp still waits on (head boundary differs)' };
  }
  if (isHeadError(ours)) {
    const reason = STRICTER.get(ours);
    if (reason === undefined) return { kind: 'disagree', what: `llhttp accepted, Fulcrum refused ${ours.status} ${ours.code} (${ours.reason})` };
    return { kind: 'stricter', reason };
  }
  const diffs: string[] = [];
  const same = (name: string, a: unknown, b: unknown): void => {
    if (JSON.stringify(a) !== JSON.stringify(b)) diffs.push(`${name}: Fulcrum ${JSON.stringify(a)}, llhttp ${JSON.stringify(b)}`);
  };
  same('method', ours.method, theirs.method);
  same('url', ours.url, theirs.url);
  same('version', [ours.httpVersionMajor, ours.httpVersionMinor], [theirs.versionMajor, theirs.versionMinor]);
  same('rawHeaders', ours.rawHeaders, theirs.rawHeaders);
  same('keepAlive', ours.keepAlive, theirs.keepAlive);
  same('upgrade', ours.upgrade, theirs.upgrade && theirs.method !== 'CONNECT');
  const message = new IncomingMessage(new Socket());
  (message as unknown as { _addHeaderLines(h: string[], n: number): void })._addHeaderLines(theirs.rawHeaders, theirs.rawHeaders.length);
  const headers = message.headers;
  same('headers', ours.headers, headers);
  same('contentLength', ours.contentLength, headers['content-length'] === undefined ? -1 : Number(headers['content-length']));
  same('chunked', ours.chunked, headers['transfer-encoding'] !== undefined);
  same('expectContinue', ours.expectContinue, theirs.versionMinor === 1 && /(?:^|\W)100-continue(?:$|\W)/i.test(headers.expect ?? ''));
  // The head must end where llhttp's does: one byte less is not a complete head for it.
  const shorter = llhttpParse([whole.subarray(0, end - 1)], c.limits.maxHeadBytes);
  if (shorter.ok === true) diffs.push('llhttp completes the head before Fulcrum does');
  if (diffs.length > 0) return { kind: 'disagree', what: diffs.join('; ') };
  return { kind: 'both-accept' };
}

/** The shortest input (removing byte ranges greedily) that still disagrees the same way. */
export function minimise(c: FuzzCase): FuzzCase {
  const first = check(c);
  if (first.kind !== 'disagree') return c;
  const kindOf = (v: Verdict): string => (v.kind === 'disagree' ? v.what.replace(/[0-9]+|".*"/g, '#').slice(0, 40) : v.kind);
  const target = kindOf(first);
  let best: FuzzCase = { ...c, cuts: [] };
  if (kindOf(check(best)) !== target) best = c;
  for (let size = Math.max(1, best.bytes.length >> 1); size >= 1; size >>= 1) {
    for (let at = 0; at + size <= best.bytes.length; ) {
      const bytes = Buffer.concat([best.bytes.subarray(0, at), best.bytes.subarray(at + size)]);
      const candidate: FuzzCase = { bytes, limits: best.limits, cuts: best.cuts.filter((x) => x < bytes.length && x > 0) };
      if (kindOf(check(candidate)) === target) best = candidate;
      else at += size;
    }
  }
  return best;
}

/** Totals of one run. */
export interface FuzzReport {
  seed: number;
  cases: number;
  counts: Record<string, number>;
  stricter: Record<string, number>;
  /** The first input of each stricter class. */
  examples: Record<string, string>;
  disagreements: { input: string; limits: HeadLimits; cuts: number[]; what: string }[];
}

/** Runs `count` cases from `seed`; keeps at most `keep` minimised disagreements. */
export function fuzz(seed: number, count: number, keep = 5): FuzzReport {
  const r = new Random(seed);
  const report: FuzzReport = { seed, cases: count, counts: {}, stricter: {}, examples: {}, disagreements: [] };
  for (let i = 0; i < count; i++) {
    const c = generate(r);
    const v = check(c);
    report.counts[v.kind] = (report.counts[v.kind] ?? 0) + 1;
    if (v.kind === 'stricter') {
      report.stricter[v.reason] = (report.stricter[v.reason] ?? 0) + 1;
      report.examples[v.reason] ??= c.bytes.toString('latin1');
    }
    if (v.kind === 'disagree' && report.disagreements.length < keep) {
      const m = minimise(c);
      const mv = check(m);
      report.disagreements.push({ input: m.bytes.toString('latin1'), limits: m.limits, cuts: m.cuts, what: mv.kind === 'disagree' ? mv.what : v.what });
    }
  }
  return report;
}

export { maxRawHeadBytes };
