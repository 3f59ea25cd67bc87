/**
 * WebSocket handshakes as a proxy checks them (RFC 6455 section 4): the client's upgrade
 * request before it goes anywhere, and the upstream's 101 before it is relayed.
 */
import { createHash } from 'node:crypto';
import type { RequestHead } from '../core/context.ts';
import { ErrorCode } from '../errors.ts';
import type { Refusal } from '../core/pipeline.ts';

/** RFC 6455 section 1.3: appended to the key before hashing. */
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** The protocols a request asks to switch to (`Connection: upgrade` plus `Upgrade`), lowercase; null when it does not ask. */
export function upgradeProtocols(req: RequestHead): string[] | null {
  const upgrade = req.headers.upgrade;
  const connection = req.headers.connection;
  if (upgrade === undefined || connection === undefined || !/(?:^|,)\s*upgrade\s*(?:,|$)/i.test(connection)) return null;
  return upgrade
    .split(',')
    .map((p) => p.trim().toLowerCase())
    .filter((p) => p !== '');
}

/** True when the request asks for a WebSocket (what the listener sends down its upgrade path). */
export function asksWebSocket(req: RequestHead): boolean {
  return upgradeProtocols(req)?.includes('websocket') === true;
}

const bad = (message: string, headers?: string[]): Refusal => ({ status: 400, code: ErrorCode.BadRequest, message, ...(headers ? { headers } : {}) });

/**
 * Null when `req` is a well-formed WebSocket opening handshake, else the 400 to answer: GET on
 * HTTP/1.1, no body, a `Sec-WebSocket-Key` of 16 bytes in base64, `Sec-WebSocket-Version: 13`
 * (anything else gets 400 with `Sec-WebSocket-Version: 13`, the version Fulcrum relays).
 */
export function webSocketRefusal(req: RequestHead): Refusal | null {
  if (req.method !== 'GET') return bad(`a WebSocket handshake must be GET, not ${req.method}`);
  if (req.httpVersion !== '1.1') return bad(`a WebSocket handshake needs HTTP/1.1, not HTTP/${req.httpVersion}`);
  const te = req.headers['transfer-encoding'];
  const cl = req.headers['content-length'];
  if (te !== undefined || (cl !== undefined && cl !== '0')) return bad('a WebSocket handshake has no body');
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || key.trim() === '') return bad('missing Sec-WebSocket-Key');
  const trimmed = key.trim();
  if (!/^[A-Za-z0-9+/]{22}==$/.test(trimmed)) return bad('Sec-WebSocket-Key must be 16 bytes in base64');
  const version = req.headers['sec-websocket-version'];
  if (version === undefined) return bad('missing Sec-WebSocket-Version (13)', ['sec-websocket-version', '13']);
  if (version.trim() !== '13') return bad(`Sec-WebSocket-Version ${JSON.stringify(version.slice(0, 20))} is not supported (13 is)`, ['sec-websocket-version', '13']);
  return null;
}

/** The `Sec-WebSocket-Accept` an upstream must answer to `key` (RFC 6455 section 4.2.2). */
export function acceptFor(key: string): string {
  return createHash('sha1').update(key.trim() + GUID).digest('base64');
}

/**
 * Null when an upstream's 101 completes the client's handshake, else what is wrong with it:
 * `Upgrade: websocket` and the right `Sec-WebSocket-Accept` (a 101 for another protocol, or for
 * another key, would leave the client talking past the upstream).
 */
export function switchProblem(req: RequestHead, rawHeaders: readonly (Buffer | string)[]): string | null {
  let upgrade: string | undefined;
  let accept: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toString('latin1').toLowerCase();
    if (name === 'upgrade') upgrade = rawHeaders[i + 1].toString('latin1');
    else if (name === 'sec-websocket-accept') accept = rawHeaders[i + 1].toString('latin1').trim();
  }
  if (upgrade === undefined || upgrade.trim().toLowerCase() !== 'websocket') return `upstream switched to ${upgrade === undefined ? 'no protocol' : JSON.stringify(upgrade.slice(0, 40))}, not websocket`;
  if (accept !== acceptFor(String(req.headers['sec-websocket-key']))) return 'upstream sent a wrong Sec-WebSocket-Accept';
  return null;
}
