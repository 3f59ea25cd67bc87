/**
 * Node's own HTTP/1.1 request parser (llhttp, strict: no lenient flags) as a test oracle:
 * what today's node:http listener accepts and how it reads the head.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
interface ParserBinding {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(buf: Buffer): number | (Error & { code?: string; reason?: string; bytesParsed?: number });
  finish(): unknown;
  close(): void;
  [key: number]: unknown;
}
interface ParserClass {
  new (): ParserBinding;
  REQUEST: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kOnExecute: number;
}
const { HTTPParser } = require('_http_common') as { HTTPParser: ParserClass };
/** llhttp's method table as Node's `allMethods` (by index; `_http_common` exports the shorter `methods`). */
const allMethods = ['DELETE', 'GET', 'HEAD', 'POST', 'PUT', 'CONNECT', 'OPTIONS', 'TRACE', 'COPY', 'LOCK', 'MKCOL', 'MOVE', 'PROPFIND', 'PROPPATCH', 'SEARCH', 'UNLOCK', 'BIND', 'REBIND', 'UNBIND', 'ACL', 'REPORT', 'MKACTIVITY', 'CHECKOUT', 'MERGE', 'M-SEARCH', 'NOTIFY', 'SUBSCRIBE', 'UNSUBSCRIBE', 'PATCH', 'PURGE', 'MKCALENDAR', 'LINK', 'UNLINK', 'SOURCE', 'PRI', 'DESCRIBE', 'ANNOUNCE', 'SETUP', 'PLAY', 'PAUSE', 'TEARDOWN', 'GET_PARAMETER', 'SET_PARAMETER', 'REDIRECT', 'RECORD', 'FLUSH', 'QUERY'];

/** llhttp's verdict on one request head. */
export type OracleResult =
  | { ok: true; method: string; url: string; versionMajor: number; versionMinor: number; rawHeaders: string[]; upgrade: boolean; keepAlive: boolean }
  | { ok: false; code: string; reason: string }
  | { ok: null }; // still waiting for more bytes

/** Parses `chunks` (one head, given in pieces) as node:http's server would, with `maxHeaderSize`. */
export function llhttpParse(chunks: Buffer[], maxHeaderSize: number): OracleResult {
  const parser = new HTTPParser();
  let headers: string[] = [];
  let url = '';
  let done: OracleResult | null = null;
  parser.initialize(HTTPParser.REQUEST, {}, maxHeaderSize, 0);
  parser[HTTPParser.kOnHeaders] = (h: string[], u: string): void => {
    headers.push(...h);
    url += u;
  };
  parser[HTTPParser.kOnHeadersComplete] = (major: number, minor: number, h: string[] | undefined, method: number, u: string | undefined, _s: unknown, _m: unknown, upgrade: boolean, keepAlive: boolean): number => {
    if (h !== undefined) headers = headers.concat(h);
    if (u !== undefined) url += u;
    done = { ok: true, method: allMethods[method], url, versionMajor: major, versionMinor: minor, rawHeaders: headers, upgrade, keepAlive };
    return 0;
  };
  parser[HTTPParser.kOnBody] = (): void => {};
  parser[HTTPParser.kOnMessageComplete] = (): void => {};
  try {
    for (const chunk of chunks) {
      const r = parser.execute(chunk);
      if (typeof r !== 'number') {
        // Also after the head callback: llhttp checks Transfer-Encoding once the head is complete.
        return { ok: false, code: r.code ?? 'ERR', reason: r.reason ?? r.message };
      }
      if (done !== null) return done;
    }
    return done ?? { ok: null };
  } finally {
    parser.close();
  }
}
