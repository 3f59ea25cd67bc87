/**
 * Strictness Node's parser leaves to us, checked at accept before anything is routed or sent:
 * HTTP version, Transfer-Encoding (only `chunked`, never on HTTP/1.0 — both request-smuggling
 * vectors), the syntax of Host (port 1-65535), and header names with `_` on listeners that
 * refuse them. Node already refuses CL+TE, duplicate or malformed Content-Length (`+5`
 * included), obs-fold, bare CR/LF, NUL and bad header names, a space before the colon
 * included (test/integration/header-names.test.ts, test/integration/protection.test.ts).
 */
import type { RequestHead } from '../core/context.ts';
import type { Refusal } from '../core/pipeline.ts';
import { ErrorCode } from '../errors.ts';
import type { UnderscoreAction } from './headers.ts';

const refusals = {
  version: { status: 505, code: ErrorCode.HttpVersion, message: 'only HTTP/1.0, HTTP/1.1 and HTTP/2 are served on this listener' },
  noAuthority: { status: 400, code: ErrorCode.BadRequest, message: 'an HTTP/2 request needs :authority (or Host)' },
  teOnHttp10: { status: 400, code: ErrorCode.BadRequest, message: 'Transfer-Encoding is not allowed in HTTP/1.0' },
  teNotChunked: { status: 400, code: ErrorCode.BadRequest, message: 'Transfer-Encoding other than "chunked" is not accepted' },
  host: { status: 400, code: ErrorCode.BadRequest, message: 'malformed Host header' },
  noHost: { status: 400, code: ErrorCode.BadRequest, message: 'HTTP/1.1 requires a Host header' },
  underscore: { status: 400, code: ErrorCode.BadRequest, message: 'header name with "_" refused on this listener (headers_with_underscores: reject)' },
} satisfies Record<string, Refusal>;

/** A refusal for a request that must not be proxied, or null. */
export function validateRequest(req: RequestHead, underscores: UnderscoreAction = 'drop', protocol: 'h1' | 'h2' = 'h1'): Refusal | null {
  // Version 2 only from an HTTP/2 stream: `GET / HTTP/2.0` on an HTTP/1 connection is refused.
  const h2 = protocol === 'h2';
  if (h2 ? req.httpVersionMajor !== 2 : req.httpVersionMajor !== 1 || req.httpVersionMinor > 1) return refusals.version;
  const te = req.headers['transfer-encoding'];
  // HTTP/2 framing has no Transfer-Encoding: nghttp2 refuses a stream that carries one.
  if (te !== undefined && !h2) {
    if (req.httpVersionMinor === 0) return refusals.teOnHttp10;
    if (te.trim().toLowerCase() !== 'chunked') return refusals.teNotChunked;
  }
  if (underscores === 'reject') {
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) if (raw[i].indexOf('_') !== -1) return refusals.underscore;
  }
  const host = req.headers.host;
  // Checked here rather than by Node (requireHostHeader), so the refusal is logged and counted like the others.
  if (host === undefined) return h2 ? refusals.noAuthority : req.httpVersionMinor === 1 ? refusals.noHost : null;
  if (!validHost(host)) return refusals.host;
  return null;
}

/** reg-name characters of RFC 3986 (unreserved and sub-delims), `%` aside. */
const regName = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=") regName[c.charCodeAt(0)] = 1;

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || ((c | 32) >= 97 && (c | 32) <= 102);
}

/**
 * True for a valid Host value or authority: a reg-name or IPv4 (letters, digits,
 * `-._~!$&'()*+,;=`, `%`-escapes) or a bracketed IPv6 literal, then an optional `:port`.
 * The port is 1-65535 in at most five digits (`080` is 80); an empty port (`h:`) is allowed,
 * as RFC 3986 and nginx allow it (it means the scheme's default); `h:0`, `h:65536`,
 * `h:99999` and a second colon are not.
 */
export function validHost(value: string): boolean {
  const n = value.length;
  let i = 0;
  if (value.charCodeAt(0) === 91 /* [ */) {
    i = 1;
    while (i < n) {
      const c = value.charCodeAt(i);
      if (!isHex(c) && c !== 58 && c !== 46) break;
      i++;
    }
    if (i === 1 || value.charCodeAt(i) !== 93 /* ] */) return false;
    i++;
  } else {
    while (i < n) {
      const c = value.charCodeAt(i);
      if (c === 58 /* : */) break;
      if (c === 37 /* % */) {
        if (!isHex(value.charCodeAt(i + 1)) || !isHex(value.charCodeAt(i + 2))) return false;
        i += 3;
        continue;
      }
      if (c > 127 || regName[c] === 0) return false;
      i++;
    }
    if (i === 0) return false;
  }
  if (i === n) return true;
  if (value.charCodeAt(i) !== 58) return false;
  const digits = n - i - 1;
  if (digits > 5) return false;
  if (digits === 0) return true;
  let port = 0;
  for (let j = i + 1; j < n; j++) {
    const d = value.charCodeAt(j) - 48;
    if (d < 0 || d > 9) return false;
    port = port * 10 + d;
  }
  return port >= 1 && port <= 65535;
}
