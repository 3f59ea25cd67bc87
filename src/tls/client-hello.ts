/**
 * Reading a TLS ClientHello before the handshake (RFC 8446 section 4.1.2, RFC 5246 section
 * 7.4.1.2): the server name (SNI, RFC 6066 section 3) and the ALPN protocols offered (RFC 7301),
 * from the first bytes a client sends. An HTTPS listener uses it to choose a certificate (or an
 * ACME TLS-ALPN-01 answer) before OpenSSL sees the connection, to refuse unknown names with an
 * unrecognized_name alert, and to answer plain HTTP sent to a TLS port. Nothing is copied but
 * the names; the bytes go on to the TLS engine unchanged.
 */

/** What the first bytes are. */
export type ClientHelloResult =
  | { kind: 'incomplete' }
  | { kind: 'hello'; serverName: string | null; alpn: string[]; length: number }
  | { kind: 'not-tls'; http: boolean }
  | { kind: 'malformed'; reason: string };

/** Largest ClientHello read (a handshake message over several records): big post-quantum key shares fit. */
export const MAX_CLIENT_HELLO_BYTES = 16 * 1024;

const HANDSHAKE = 22;
const CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const incomplete: ClientHelloResult = { kind: 'incomplete' };

/** An HTTP/1.x method's first letters: plain HTTP sent to a TLS port. */
const httpStart = /^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE|PRI) /;

/**
 * Parses the ClientHello at the start of `data` (the bytes received so far). `incomplete` asks
 * for more (the caller bounds how many and how long); the rest are final.
 */
export function parseClientHello(data: Buffer): ClientHelloResult {
  if (data.length === 0) return incomplete;
  if (data[0] !== HANDSHAKE) {
    const text = data.subarray(0, 8).toString('latin1');
    if (data.length < 8 && /^[A-Z]+$/.test(text)) return incomplete;
    return { kind: 'not-tls', http: httpStart.test(data.subarray(0, 9).toString('latin1')) };
  }
  // The handshake message, gathered from consecutive handshake records.
  const parts: Buffer[] = [];
  let gathered = 0;
  let need = -1;
  let at = 0;
  while (need < 0 || gathered < need) {
    if (data.length < at + 5) return incomplete;
    if (data[at] !== HANDSHAKE) return { kind: 'malformed', reason: 'a non-handshake record inside the ClientHello' };
    if (data[at + 1] !== 3) return { kind: 'malformed', reason: 'not a TLS record version' };
    const length = data.readUInt16BE(at + 3);
    if (length === 0 || length > 16_384) return { kind: 'malformed', reason: 'a record length out of range' };
    // The message's type and length are known from the first record's first bytes: refuse early, before waiting for the rest.
    if (at === 0 && length >= 4 && data.length >= 9) {
      if (data[5] !== CLIENT_HELLO) return { kind: 'malformed', reason: 'the first handshake message is not a ClientHello' };
      if (4 + data.readUIntBE(6, 3) > MAX_CLIENT_HELLO_BYTES) return { kind: 'malformed', reason: `a ClientHello over ${MAX_CLIENT_HELLO_BYTES} bytes` };
    }
    if (data.length < at + 5 + length) return incomplete;
    parts.push(data.subarray(at + 5, at + 5 + length));
    gathered += length;
    at += 5 + length;
    if (need < 0 && gathered >= 4) {
      const head = parts.length === 1 ? parts[0] : Buffer.concat(parts);
      if (head[0] !== CLIENT_HELLO) return { kind: 'malformed', reason: 'the first handshake message is not a ClientHello' };
      need = 4 + head.readUIntBE(1, 3);
      if (need > MAX_CLIENT_HELLO_BYTES) return { kind: 'malformed', reason: `a ClientHello over ${MAX_CLIENT_HELLO_BYTES} bytes` };
    }
  }
  const message = parts.length === 1 ? parts[0] : Buffer.concat(parts);
  return readHello(message.subarray(4, need), at);
}

function readHello(body: Buffer, length: number): ClientHelloResult {
  const bad = (reason: string): ClientHelloResult => ({ kind: 'malformed', reason });
  // version (2), random (32)
  let p = 34;
  if (body.length < p + 1) return bad('a truncated ClientHello');
  p += 1 + body[p]; // session id
  if (body.length < p + 2) return bad('a truncated ClientHello');
  p += 2 + body.readUInt16BE(p); // cipher suites
  if (body.length < p + 1) return bad('a truncated ClientHello');
  p += 1 + body[p]; // compression methods
  let serverName: string | null = null;
  const alpn: string[] = [];
  if (p === body.length) return { kind: 'hello', serverName, alpn, length }; // no extensions (SSLv3-style)
  if (body.length < p + 2) return bad('a truncated ClientHello');
  const end = p + 2 + body.readUInt16BE(p);
  if (end > body.length) return bad('extensions longer than the ClientHello');
  p += 2;
  while (p < end) {
    if (end < p + 4) return bad('a truncated extension');
    const type = body.readUInt16BE(p);
    const size = body.readUInt16BE(p + 2);
    const data = p + 4;
    p = data + size;
    if (p > end) return bad('an extension longer than the extensions');
    if (type === EXT_SERVER_NAME && size >= 2) {
      let q = data + 2;
      const listEnd = Math.min(p, q + body.readUInt16BE(data));
      while (q + 3 <= listEnd) {
        const nameType = body[q];
        const nameLength = body.readUInt16BE(q + 1);
        q += 3;
        if (q + nameLength > listEnd) return bad('a truncated server name');
        if (nameType === 0) {
          const name = body.subarray(q, q + nameLength).toString('latin1');
          // RFC 6066: a host name, no trailing dot, ASCII; anything else is no usable name.
          if (!/^[A-Za-z0-9_.-]{1,253}$/.test(name)) return bad('a server name that is not a host name');
          // A fully qualified name's trailing dot names the same host (`a.test.` is `a.test`).
          serverName = name.toLowerCase().replace(/\.$/, '');
        }
        q += nameLength;
      }
    } else if (type === EXT_ALPN && size >= 2) {
      let q = data + 2;
      const listEnd = Math.min(p, q + body.readUInt16BE(data));
      while (q < listEnd) {
        const n = body[q];
        if (q + 1 + n > listEnd) return bad('a truncated ALPN protocol');
        alpn.push(body.subarray(q + 1, q + 1 + n).toString('latin1'));
        q += 1 + n;
      }
    }
  }
  return { kind: 'hello', serverName, alpn, length };
}

/** A TLS alert record (fatal), sent in the clear before any keys exist: `unrecognized_name` is 112. */
export function alertRecord(description: number): Buffer {
  return Buffer.from([21, 3, 3, 0, 2, 2, description]);
}

/** TLS alert descriptions Fulcrum sends itself. */
export const Alert = { handshakeFailure: 40, internalError: 80, unrecognizedName: 112, noApplicationProtocol: 120 } as const;
