/**
 * The request-target as routes see it and as upstreams get it: two different strings.
 *
 * - Routing and every path rule decide on the fully normalised path (`normalizePath`), the most
 *   any backend could read into the bytes, so `/admin` rules cannot be walked around as `/./admin`,
 *   `//admin`, `/%2e/admin`, `/admin%2fsecrets`, `/x\..\admin` or `/x/..;/admin`.
 * - The upstream gets the target as the client sent it, byte for byte (nginx's `proxy_pass`
 *   without a URI, HAProxy, Envoy's default for `%2F`): `/api/queues/%2F/tasks` stays a
 *   different resource from `/api/queues/tasks`. A route may forward the normalised path instead,
 *   and refuse or unescape encoded slashes (`upstreamTarget`).
 * Most targets have none of `%`, `\`, `;`, `//` or `/.` and pass with one char scan and no copy.
 */
import type { Refusal } from '../core/pipeline.ts';
import { ErrorCode } from '../errors.ts';
import { validHost } from './request-validation.ts';

/** A parsed request-target, or the refusal for it. */
export type RequestTarget = ParsedTarget | { error: Refusal };

/** A request-target split for routing and forwarding. */
export interface ParsedTarget {
  /** The fully normalised path: what routes and path rules match on. */
  path: string;
  /** The path exactly as sent (for absolute-form, the path part, `/` when there is none). */
  rawPath: string;
  /** The query as sent, with its `?`, or `''`. */
  query: string;
  /** The authority of an absolute-form target, else null. */
  authority: string | null;
  /** True when the raw path holds `%2F` or `%5C` (any case). */
  encodedSlash: boolean;
  /**
   * For a path with `..` segments, the normalised path with them left in (`/admin/..` stays
   * `/admin/..`, where `path` is `/`): what a backend that does not resolve `..` routes on.
   * When it meets another route than `path`, the request must pass that route's rules too.
   * Null for the other paths.
   */
  unresolvedPath: string | null;
}

/** How a route forwards the path (routes[].path in the configuration). */
export interface PathForwarding {
  /** Forward the normalised path (and the query as sent) instead of the target as sent. */
  normalized: boolean;
  /** What to do with `%2F` / `%5C` in the path: forward as sent, refuse with 400, or forward decoded. */
  encodedSlashes: 'keep' | 'reject' | 'unescape';
}

/** The default: the target as sent, encoded slashes kept. */
export const forwardAsSent: PathForwarding = { normalized: false, encodedSlashes: 'keep' };

function refusal(message: string): { error: Refusal } {
  return { error: { status: 400, code: ErrorCode.BadRequest, message } };
}

const refusals = {
  form: refusal('request-target must be a path ("/...") or an absolute http URL'),
  absolute: refusal('malformed absolute request-target'),
  authority: refusal('malformed authority in the request-target'),
  fragment: refusal('fragment in request-target'),
  percent: refusal('malformed percent-encoding in path'),
  nul: refusal('%00 in path'),
};

/** The refusal of a route with `encoded_slashes: reject`. */
export const encodedSlashRefusal: Refusal = { status: 400, code: ErrorCode.BadRequest, message: 'encoded slash (%2F or %5C) in the path is refused on this route' };

const SLASH = 47;
const BACKSLASH = 92;
const DOT = 46;
const PERCENT = 37;
const QUESTION = 63;
const SEMICOLON = 59;

/** Index after `http://` or `https://` (any case) at the start of `url`, or -1. */
function afterScheme(url: string): number {
  const n = url.length;
  if (n < 7 || (url.charCodeAt(0) | 32) !== 104 || (url.charCodeAt(1) | 32) !== 116 || (url.charCodeAt(2) | 32) !== 116 || (url.charCodeAt(3) | 32) !== 112) return -1;
  let i = 4;
  if ((url.charCodeAt(i) | 32) === 115) i++;
  return url.charCodeAt(i) === 58 && url.charCodeAt(i + 1) === SLASH && url.charCodeAt(i + 2) === SLASH ? i + 3 : -1;
}

/** Value of a hex digit, or -1. */
function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 32;
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

/** True for `%2F`, `%2f`, `%5C`, `%5c` at `i` (the `%`). */
function isEncodedSlash(s: string, i: number): boolean {
  const h = s.charCodeAt(i + 1);
  const l = s.charCodeAt(i + 2) | 32;
  return (h === 50 && l === 102) || (h === 53 && l === 99);
}

/**
 * Parses origin-form (`/a?b`) and absolute-form (`http://host/a?b`) targets: the authority
 * (checked like Host), the raw path, the query, and the normalised path. Refuses a fragment,
 * a malformed `%`-escape and `%00`.
 */
export function parseRequestTarget(url: string): RequestTarget {
  let authority: string | null = null;
  let start = 0;
  if (url.indexOf('#') !== -1) return refusals.fragment;
  if (url.charCodeAt(0) !== SLASH) {
    const from = afterScheme(url);
    if (from === -1) return refusals.form;
    let i = from;
    while (i < url.length) {
      const c = url.charCodeAt(i);
      if (c === SLASH || c === QUESTION) break;
      i++;
    }
    if (i === from) return refusals.absolute;
    authority = url.slice(from, i);
    if (!validHost(authority)) return refusals.authority;
    start = i;
  }
  const n = url.length;
  let work = false;
  let encodedSlash = false;
  let end = start;
  for (; end < n; end++) {
    const c = url.charCodeAt(end);
    if (c === QUESTION) break;
    if (c === PERCENT) {
      work = true;
      if (!encodedSlash && isEncodedSlash(url, end)) encodedSlash = true;
    } else if (c === BACKSLASH || c === SEMICOLON) work = true;
    else if (c === SLASH) {
      const next = url.charCodeAt(end + 1);
      if (next === SLASH || next === DOT) work = true;
    }
  }
  let rawPath: string;
  if (start === 0) rawPath = end === n ? url : url.slice(0, end);
  else rawPath = end === start ? '/' : url.slice(start, end);
  const query = end === n ? '' : url.slice(end);
  if (!work) return { path: rawPath, rawPath, query, authority, encodedSlash, unresolvedPath: null };
  const path = normalizePath(rawPath);
  if (path === null) return refusals.percent;
  if (path === NUL) return refusals.nul;
  const unresolvedPath = sawDotDot ? normalizePath(rawPath, false, true) : null;
  return { path, rawPath, query, authority, encodedSlash, unresolvedPath };
}

/** Set by `normalizePath`: the path had a `..` segment (one flag rather than a result object per call). */
let sawDotDot = false;

/** Returned by `normalizePath` for `%00`. */
const NUL = '\0';

const HEX = '0123456789ABCDEF';

/** True for an RFC 3986 unreserved character: ALPHA, DIGIT, `-`, `.`, `_`, `~`. */
function unreserved(v: number): boolean {
  return (v >= 65 && v <= 90) || (v >= 97 && v <= 122) || (v >= 48 && v <= 57) || v === 45 || v === 46 || v === 95 || v === 126;
}

/**
 * The fully normalised path, the most any backend could read into the bytes:
 * 1. `%`-escapes of unreserved characters decoded (`%41` is `A`, `%2e` is `.`), the others
 *    upper-cased (`%3a` is `%3A`); `%25` stays `%25` (nothing is decoded twice);
 * 2. `%2F`, `%5C` and `\` read as `/`;
 * 3. path parameters (`;` to the end of a segment) dropped (unless `keepParams`), as Tomcat,
 *    Jetty and Spring do before resolving `..` (`/x/..;/admin` is `/admin`);
 * 4. empty segments dropped (`//` is `/`), dot segments resolved (RFC 3986 section 5.2.4),
 *    never above `/`; a trailing slash kept (a trailing `/.` or `/..` leaves one).
 * Null for a malformed escape; `NUL` for `%00`. With `keepDotDot`, `..` segments stay as
 * they are: the reading of a backend that does not resolve them (`unresolvedPath`).
 */
export function normalizePath(path: string, keepParams = false, keepDotDot = false): string | null {
  sawDotDot = false;
  let decoded = '';
  let from = 0;
  const n = path.length;
  for (let i = 0; i < n; i++) {
    const c = path.charCodeAt(i);
    if (c === PERCENT) {
      const h = hexValue(path.charCodeAt(i + 1));
      const l = hexValue(path.charCodeAt(i + 2));
      if (h < 0 || l < 0) return null;
      const v = h * 16 + l;
      if (v === 0) return NUL;
      decoded += path.slice(from, i);
      if (v === SLASH || v === BACKSLASH) decoded += '/';
      else if (unreserved(v)) decoded += String.fromCharCode(v);
      else decoded += `%${HEX[h]}${HEX[l]}`;
      i += 2;
      from = i + 1;
    } else if (c === BACKSLASH) {
      decoded += `${path.slice(from, i)}/`;
      from = i + 1;
    }
  }
  decoded = from === 0 ? path : decoded + path.slice(from);
  const out: string[] = [];
  let trailing = false;
  let segStart = 1;
  for (let i = 1; i <= decoded.length; i++) {
    if (i < decoded.length && decoded.charCodeAt(i) !== SLASH) continue;
    let segment = decoded.slice(segStart, i);
    segStart = i + 1;
    if (!keepParams) {
      const semi = segment.indexOf(';');
      if (semi !== -1) segment = segment.slice(0, semi);
    }
    trailing = false;
    if (segment === '' || segment === '.') trailing = true;
    else if (segment === '..') {
      sawDotDot = true;
      if (keepDotDot) out.push(segment);
      else {
        out.pop();
        trailing = true;
      }
    } else out.push(segment);
  }
  if (out.length === 0) return '/';
  const joined = `/${out.join('/')}`;
  return trailing ? `${joined}/` : joined;
}

/**
 * What the upstream is sent as request-target (always origin-form), per the route's
 * `forwarding`; null when the route refuses the path (`encoded_slashes: reject`).
 */
export function upstreamTarget(url: string, target: ParsedTarget, forwarding: PathForwarding): string | null {
  if (target.encodedSlash && forwarding.encodedSlashes === 'reject') return null;
  if (forwarding.normalized) {
    // Path parameters are dropped for matching only: a `;jsessionid=` is kept when forwarding.
    const path = target.rawPath.indexOf(';') === -1 ? target.path : (normalizePath(target.rawPath, true) as string);
    return path + target.query;
  }
  if (target.encodedSlash && forwarding.encodedSlashes === 'unescape') return unescapeSlashes(target.rawPath) + target.query;
  return target.authority === null ? url : target.rawPath + target.query;
}

/** `%2F` as `/` and `%5C` as `\` (Envoy's UNESCAPE_AND_FORWARD); nothing else changes. */
export function unescapeSlashes(path: string): string {
  let out = '';
  let from = 0;
  for (let i = path.indexOf('%'); i !== -1; i = path.indexOf('%', i + 1)) {
    if (!isEncodedSlash(path, i)) continue;
    out += path.slice(from, i) + (path.charCodeAt(i + 1) === 50 ? '/' : '\\');
    from = i + 3;
  }
  return from === 0 ? path : out + path.slice(from);
}
