/**
 * Strictness Node's parser leaves to us, checked at accept before anything is routed or sent:
 * HTTP version, Transfer-Encoding (only `chunked`, never on HTTP/1.0 — both request-smuggling
 * vectors), and the syntax of Host. Node already refuses CL+TE, duplicate or malformed
 * Content-Length, obs-fold, bare CR/LF, NUL and bad header names (test/integration/strict-parsing).
 */
import type { IncomingMessage } from 'node:http';
import type { Refusal } from '../core/pipeline.ts';
import { ErrorCode } from '../errors.ts';

const hostSyntax = /^(?:(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

const refusals = {
  version: { status: 505, code: ErrorCode.HttpVersion, message: 'only HTTP/1.0 and HTTP/1.1 are served on this listener' },
  teOnHttp10: { status: 400, code: ErrorCode.BadRequest, message: 'Transfer-Encoding is not allowed in HTTP/1.0' },
  teNotChunked: { status: 400, code: ErrorCode.BadRequest, message: 'Transfer-Encoding other than "chunked" is not accepted' },
  host: { status: 400, code: ErrorCode.BadRequest, message: 'malformed Host header' },
  noHost: { status: 400, code: ErrorCode.BadRequest, message: 'HTTP/1.1 requires a Host header' },
} satisfies Record<string, Refusal>;

/** A refusal for a request that must not be proxied, or null. */
export function validateRequest(req: IncomingMessage): Refusal | null {
  if (req.httpVersionMajor !== 1 || req.httpVersionMinor > 1) return refusals.version;
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    if (req.httpVersionMinor === 0) return refusals.teOnHttp10;
    if (te.trim().toLowerCase() !== 'chunked') return refusals.teNotChunked;
  }
  const host = req.headers.host;
  // Checked here rather than by Node (requireHostHeader), so the refusal is logged and counted like the others.
  if (host === undefined) return req.httpVersionMinor === 1 ? refusals.noHost : null;
  if (!hostSyntax.test(host)) return refusals.host;
  return null;
}

/** True for a syntactically valid Host value or authority: reg-name, IPv4 or [IPv6], optional port. */
export function validHost(value: string): boolean {
  return hostSyntax.test(value);
}
