/**
 * The PROXY protocol, versions 1 and 2 (HAProxy's specification,
 * https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt): a header a trusted proxy puts in
 * front of a TCP stream to say which client and which address it was relaying for. This module
 * reads (`parseProxyHeader`, `readProxyHeader`) and writes (`encodeProxyV1`, `encodeProxyV2`)
 * such headers; deciding who may send one (section 5) is the caller's.
 */
import { isIPv4, isIPv6, type Socket } from 'node:net';

/** One end of a relayed connection, the address as Node prints it ('10.0.0.1', '2001:db8::1', '::ffff:10.0.0.1'). */
export interface ProxyAddress {
  address: string;
  port: number;
}

/** A header as read from the wire. */
export interface ProxyHeader {
  version: 1 | 2;
  /** v1 is always 'proxy'; v2 'local' (the sender's own connection, e.g. a health check) carries no addresses to use. */
  command: 'proxy' | 'local';
  /** The relayed connection's family and transport; v1 'UNKNOWN' and v2 AF_UNSPEC are 'unknown'. */
  family: 'tcp4' | 'tcp6' | 'udp4' | 'udp6' | 'unix' | 'unknown';
  /** null for LOCAL, UNKNOWN, UNSPEC and unix: the caller then uses the socket's peer. */
  source: ProxyAddress | null;
  destination: ProxyAddress | null;
  /** PP2_TYPE_AUTHORITY (0x02, section 2.2.2): the host name the client asked for (TLS SNI), UTF-8. */
  authority: string | null;
  /** PP2_TYPE_ALPN (0x01, section 2.2.1): the application protocol, one byte per character (latin1, as Node's `alpnProtocol`). */
  alpn: string | null;
  /** Every v2 TLV in wire order (SSL 0x20, NOOP, UNIQUE_ID, CRC32C, custom ones included); empty for v1. Values are copies. */
  tlvs: { type: number; value: Buffer }[];
  /** Bytes the header took on the wire: the client's own stream starts right after. */
  length: number;
}

/** Why a header was refused; stable labels, used as a metrics label. `untrusted` and `timeout`/`closed` come from callers and `readProxyHeader`, never from `parseProxyHeader`. */
export type ProxyRefusal = 'malformed' | 'too_large' | 'timeout' | 'closed' | 'untrusted' | 'unsupported';

/** What `parseProxyHeader` found at the start of a buffer. */
export type ProxyParse = { kind: 'incomplete' } | { kind: 'header'; header: ProxyHeader } | { kind: 'invalid'; reason: ProxyRefusal; detail: string };

/** A refused or failed PROXY protocol header; `reason` is the stable label, `message` the detail. */
export class ProxyProtocolError extends Error {
  readonly reason: ProxyRefusal;

  constructor(reason: ProxyRefusal, detail: string) {
    super(`PROXY protocol: ${reason}: ${detail}`);
    this.name = 'ProxyProtocolError';
    this.reason = reason;
  }
}

/** Type codes of the v2 TLVs this module reads or writes (section 2.2). */
export const PP2_TYPE = { ALPN: 0x01, AUTHORITY: 0x02, CRC32C: 0x03, NOOP: 0x04, UNIQUE_ID: 0x05, SSL: 0x20, NETNS: 0x30 } as const;

/** Longest v1 line, CRLF included (section 2.1: the "worst case" UNKNOWN line). */
export const PROXY_V1_MAX_BYTES = 107;
/** Default bound on a v2 header: the 16-byte fixed part, the addresses and the TLVs. */
export const PROXY_V2_DEFAULT_MAX_BYTES = 4096;
/** The v2 fixed part: signature, version and command, family, length (section 2.2). */
const V2_FIXED_BYTES = 16;

/** The v2 signature (section 2.2). */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** The v1 preamble: "PROXY" and exactly one space (section 2.1). */
const V1_PREAMBLE = Buffer.from('PROXY ', 'latin1');

const CR = 0x0d;
const LF = 0x0a;

/**
 * The v2 family byte (section 2.2, "In practice, the following protocol bytes are expected"):
 * what each of the seven valid values is called and how many address bytes it takes. Any other
 * byte is refused, including a nibble that is valid alone (0x10, 0x01) in a combination the
 * specification does not list.
 */
const V2_FAMILIES = new Map<number, { family: ProxyHeader['family']; addressBytes: number }>([
  [0x00, { family: 'unknown', addressBytes: 0 }],
  [0x11, { family: 'tcp4', addressBytes: 12 }],
  [0x12, { family: 'udp4', addressBytes: 12 }],
  [0x21, { family: 'tcp6', addressBytes: 36 }],
  [0x22, { family: 'udp6', addressBytes: 36 }],
  [0x31, { family: 'unix', addressBytes: 216 }],
  [0x32, { family: 'unix', addressBytes: 216 }],
]);

/**
 * Whether `buf` opens with a PROXY protocol header: true for "PROXY " (v1) or the 12-byte v2
 * signature, false when it cannot be one, null when it is too short to tell (an empty buffer, or
 * a prefix of either). For refusing peers that are not trusted to send one (section 5).
 */
export function startsWithProxySignature(buf: Buffer): boolean | null {
  if (buf.length === 0) return null;
  const v1 = prefixMatch(buf, V1_PREAMBLE);
  const v2 = prefixMatch(buf, V2_SIGNATURE);
  if (v1 === true || v2 === true) return true;
  if (v1 === null || v2 === null) return null;
  return false;
}

/** true: `buf` starts with all of `expected`; null: `buf` is a proper prefix of it; false: neither. */
function prefixMatch(buf: Buffer, expected: Buffer): boolean | null {
  const n = Math.min(buf.length, expected.length);
  for (let i = 0; i < n; i++) if (buf[i] !== expected[i]) return false;
  return n === expected.length ? true : null;
}

/**
 * Parses the PROXY protocol header at the start of `buf`, either version (the receiver's
 * detection of section 2.2), without consuming anything.
 *
 * - `incomplete`: every byte so far fits a valid header and more are needed. Never returned once
 *   `buf` holds as many bytes as the largest header allowed: 107 for v1 (section 2.1; `maxBytes`
 *   when smaller), `maxBytes` for v2.
 * - `header`: a whole, valid header of `header.length` bytes; anything after it is the client's.
 * - `invalid`: `unsupported` for a v2 version nibble other than 2; `too_large` for a v1 line
 *   with no CRLF within its limit or a v2 length field that makes the header longer than
 *   `maxBytes` (decided from the fixed part alone); `malformed` for everything else, including
 *   bytes that are no PROXY header at all and a PP2_TYPE_CRC32C that does not match (2.2.3).
 *
 * v1 is read strictly: exactly one space between exactly six fields, addresses of the announced
 * family (`net.isIPv4`/`isIPv6`, no IPv6 zone), ports 0-65535 without sign or leading zero, a
 * line of printable US-ASCII ended by CRLF; "PROXY UNKNOWN" with anything (printable) after it.
 * v2: command LOCAL or PROXY, one of the seven family bytes the specification lists, a length
 * covering the family's addresses (LOCAL too: the length decides where TLVs start), TLVs that
 * end exactly at the header's end, at most one ALPN, AUTHORITY and CRC32C each, a UNIQUE_ID of
 * at most 128 bytes (2.2.5). IPv6 addresses come back in RFC 5952 form as libuv prints them
 * (IPv4-mapped ones as '::ffff:a.b.c.d', not turned into IPv4).
 *
 * @param maxBytes bound on the whole header in bytes (default 4096); an integer of at least 16,
 *   else a RangeError is thrown.
 */
export function parseProxyHeader(buf: Buffer, maxBytes: number = PROXY_V2_DEFAULT_MAX_BYTES): ProxyParse {
  checkMaxBytes(maxBytes);
  if (buf.length === 0) return INCOMPLETE;
  const v2 = prefixMatch(buf, V2_SIGNATURE);
  if (v2 !== false) return v2 === null ? INCOMPLETE : parseV2(buf, maxBytes);
  const v1 = prefixMatch(buf, V1_PREAMBLE);
  if (v1 !== false) return v1 === null ? INCOMPLETE : parseV1(buf, Math.min(PROXY_V1_MAX_BYTES, maxBytes));
  return invalid('malformed', 'no PROXY protocol signature');
}

function checkMaxBytes(maxBytes: number): void {
  if (!Number.isInteger(maxBytes) || maxBytes < V2_FIXED_BYTES) throw new RangeError(`maxBytes must be an integer of at least ${V2_FIXED_BYTES}, got ${maxBytes}`);
}

const INCOMPLETE: ProxyParse = Object.freeze({ kind: 'incomplete' });

function invalid(reason: ProxyRefusal, detail: string): ProxyParse {
  return { kind: 'invalid', reason, detail };
}

/** The protocol words a v1 line may name after "PROXY " (section 2.1), each with the space that must follow it. */
const V1_PROTOCOLS = ['TCP4 ', 'TCP6 ', 'UNKNOWN '].map((word) => Buffer.from(word, 'latin1'));

/** Section 2.1. `limit`: longest line accepted, CRLF included. */
function parseV1(buf: Buffer, limit: number): ProxyParse {
  const scan = Math.min(buf.length, limit);
  let end = -1;
  let textEnd = scan;
  for (let i = V1_PREAMBLE.length; i < scan; i++) {
    const byte = buf[i];
    if (byte === CR) {
      textEnd = i;
      if (i + 1 === buf.length) break;
      if (buf[i + 1] !== LF) return invalid('malformed', 'CR not followed by LF in the v1 line');
      end = i;
      break;
    }
    // The line is US-ASCII text (section 2.1), a lone LF included; refusing other bytes at once spares waiting for a CRLF that garbage never sends.
    if (byte < 0x20 || byte > 0x7e) return invalid('malformed', `byte 0x${byte.toString(16)} in the v1 line`);
  }
  if (!v1ProtocolFits(buf, textEnd)) return invalid('malformed', 'v1 protocol is not TCP4, TCP6 or UNKNOWN');
  if (end === -1) {
    if (buf.length >= limit) return invalid('too_large', `no CRLF within ${limit} bytes of a v1 header`);
    return INCOMPLETE;
  }
  if (end + 2 > limit) return invalid('too_large', `no CRLF within ${limit} bytes of a v1 header`);
  const length = end + 2;
  const line = buf.toString('latin1', V1_PREAMBLE.length, end);
  const empty: ProxyHeader = { version: 1, command: 'proxy', family: 'unknown', source: null, destination: null, authority: null, alpn: null, tlvs: [], length };
  // "the receiver must ignore anything presented before the CRLF is found" after UNKNOWN.
  if (line === 'UNKNOWN' || line.startsWith('UNKNOWN ')) return { kind: 'header', header: empty };
  const fields = line.split(' ');
  if (fields.length !== 5) return invalid('malformed', `v1 line has ${fields.length + 1} fields, not 6`);
  const [protocol, sourceText, destinationText, sourcePortText, destinationPortText] = fields;
  const v4 = protocol === 'TCP4';
  if (!v4 && protocol !== 'TCP6') return invalid('malformed', 'v1 protocol is not TCP4, TCP6 or UNKNOWN');
  const sourceAddress = v1Address(sourceText, v4);
  const destinationAddress = v1Address(destinationText, v4);
  if (sourceAddress === null || destinationAddress === null) return invalid('malformed', `v1 address not a valid ${v4 ? 'IPv4' : 'IPv6'} address`);
  const sourcePort = v1Port(sourcePortText);
  const destinationPort = v1Port(destinationPortText);
  if (sourcePort === -1 || destinationPort === -1) return invalid('malformed', 'v1 port not a decimal 0-65535 without leading zero');
  return {
    kind: 'header',
    header: { ...empty, family: v4 ? 'tcp4' : 'tcp6', source: { address: sourceAddress, port: sourcePort }, destination: { address: destinationAddress, port: destinationPort } },
  };
}

/**
 * Whether the text after "PROXY " up to `end` (the CR, or what arrived so far) can still be a
 * valid line's: it starts with one of the protocol words, or is a prefix of one ("UNKNOWN" alone
 * is one, for "PROXY UNKNOWN\r\n"). Lets garbage be refused before a CRLF that may never come.
 */
function v1ProtocolFits(buf: Buffer, end: number): boolean {
  const start = V1_PREAMBLE.length;
  outer: for (const word of V1_PROTOCOLS) {
    const n = Math.min(end - start, word.length);
    for (let i = 0; i < n; i++) if (buf[start + i] !== word[i]) continue outer;
    return true;
  }
  return false;
}

/** A v1 address of the announced family in Node's form, or null. IPv4 leading zeros are refused by `isIPv4`; an IPv6 zone ('%eth0') has no place in the header. */
function v1Address(text: string, v4: boolean): string | null {
  if (v4) return isIPv4(text) ? text : null;
  if (!isIPv6(text)) return null;
  const bytes = ipv6Bytes(text);
  return bytes === null ? null : formatIPv6(bytes, 0);
}

/** A v1 port: 0, or 1-65535 without leading zero, sign or space; -1 otherwise. */
function v1Port(text: string): number {
  if (text.length === 0 || text.length > 5) return -1;
  if (text.length > 1 && text.charCodeAt(0) === 0x30) return -1;
  let port = 0;
  for (let i = 0; i < text.length; i++) {
    const digit = text.charCodeAt(i) - 0x30;
    if (digit < 0 || digit > 9) return -1;
    port = port * 10 + digit;
  }
  return port <= 0xffff ? port : -1;
}

/** Section 2.2 and its TLVs (2.2.1 - 2.2.8). `buf` starts with the v2 signature. */
function parseV2(buf: Buffer, maxBytes: number): ProxyParse {
  // Version, command and family are checked as soon as they arrive: a bad one needs no more bytes.
  if (buf.length > 12) {
    const version = buf[12] >> 4;
    if (version !== 2) return invalid('unsupported', `v2 signature with version ${version}`);
    const command = buf[12] & 0x0f;
    if (command > 1) return invalid('malformed', `v2 command 0x${command.toString(16)}`);
  }
  if (buf.length > 13 && !V2_FAMILIES.has(buf[13])) return invalid('malformed', `v2 family and transport 0x${buf[13].toString(16).padStart(2, '0')}`);
  if (buf.length < V2_FIXED_BYTES) return INCOMPLETE;
  const length = V2_FIXED_BYTES + buf.readUInt16BE(14);
  if (length > maxBytes) return invalid('too_large', `v2 header of ${length} bytes, more than ${maxBytes}`);
  const { family, addressBytes } = V2_FAMILIES.get(buf[13])!;
  if (length - V2_FIXED_BYTES < addressBytes) return invalid('malformed', `v2 length ${length - V2_FIXED_BYTES} shorter than the ${addressBytes} address bytes of ${family}`);
  if (buf.length < length) return INCOMPLETE;

  const proxy = (buf[12] & 0x0f) === 1;
  let source: ProxyAddress | null = null;
  let destination: ProxyAddress | null = null;
  // LOCAL: "discard the protocol block"; unix paths are not addresses a caller can use.
  if (proxy && (addressBytes === 12 || addressBytes === 36)) {
    const at = V2_FIXED_BYTES;
    const size = addressBytes === 12 ? 4 : 16;
    const format = (offset: number): string => (size === 4 ? formatIPv4(buf, offset) : formatIPv6(buf, offset));
    source = { address: format(at), port: buf.readUInt16BE(at + 2 * size) };
    destination = { address: format(at + size), port: buf.readUInt16BE(at + 2 * size + 2) };
  }

  const tlvs: { type: number; value: Buffer }[] = [];
  let authority: string | null = null;
  let alpn: string | null = null;
  let checksumAt = -1;
  let seen = 0;
  let offset = V2_FIXED_BYTES + addressBytes;
  while (offset < length) {
    if (length - offset < 3) return invalid('malformed', `${length - offset} bytes left at the end of the v2 header, too few for a TLV`);
    const type = buf[offset];
    const valueLength = buf.readUInt16BE(offset + 1);
    const start = offset + 3;
    if (start + valueLength > length) return invalid('malformed', `TLV 0x${type.toString(16)} of ${valueLength} bytes runs past the end of the v2 header`);
    const value = Buffer.from(buf.subarray(start, start + valueLength));
    if (type === PP2_TYPE.ALPN || type === PP2_TYPE.AUTHORITY || type === PP2_TYPE.CRC32C) {
      // Two values for one of these would leave the receiver to pick one; refuse instead.
      if (seen & (1 << type)) return invalid('malformed', `TLV 0x${type.toString(16)} given twice`);
      seen |= 1 << type;
      if (type === PP2_TYPE.ALPN) alpn = value.toString('latin1');
      else if (type === PP2_TYPE.AUTHORITY) authority = value.toString('utf8');
      else if (valueLength !== 4) return invalid('malformed', `CRC32C TLV of ${valueLength} bytes, not 4`);
      else checksumAt = start;
    }
    // Section 2.2.5: "an opaque byte sequence of up to 128 bytes".
    if (type === PP2_TYPE.UNIQUE_ID && valueLength > 128) return invalid('malformed', `UNIQUE_ID TLV of ${valueLength} bytes, more than 128`);
    tlvs.push({ type, value });
    offset = start + valueLength;
  }
  if (checksumAt !== -1) {
    const sent = buf.readUInt32BE(checksumAt);
    // Section 2.2.3: the checksum of the whole header with its own field zeroed, without copying the header.
    let state = crc32cUpdate(CRC32C_INIT, buf, 0, checksumAt);
    state = crc32cUpdate(state, ZERO_CHECKSUM, 0, 4);
    state = crc32cUpdate(state, buf, checksumAt + 4, length);
    const computed = (state ^ 0xffffffff) >>> 0;
    if (computed !== sent) return invalid('malformed', `CRC32C 0x${sent.toString(16)} does not match the header's 0x${computed.toString(16)}`);
  }
  return { kind: 'header', header: { version: 2, command: proxy ? 'proxy' : 'local', family, source, destination, authority, alpn, tlvs, length } };
}

const ZERO_CHECKSUM = Buffer.alloc(4);

/**
 * Reads the PROXY protocol header that opens `socket`, which must be paused (a net.Server with
 * `pauseOnConnect`) and have no other reader yet. It resumes the socket, gathers bytes until
 * `parseProxyHeader` decides, then pauses it again and puts back (`unshift`) whatever came
 * after the header, so that the next reader sees exactly the client's stream once it resumes
 * the socket (node:http handed it with `emit('connection')` does not resume an explicitly
 * paused socket: call `socket.resume()` after). Every listener and timer it added is gone when
 * it settles, on every path, its 'error' listener too (keep one of your own); it never destroys
 * the socket (the caller does, and counts the refusal).
 *
 * Rejects with a ProxyProtocolError: `timeout` when no decision came within `timeoutMs` (the
 * specification suggests at least 3 s, section 2), `closed` on end, close or error first, and
 * `malformed`, `too_large` or `unsupported` as parsed. Throws a RangeError at once for a
 * `timeoutMs` that is not a positive finite number, or a bad `maxBytes`.
 *
 * @param options.timeoutMs milliseconds from the call to a complete header.
 * @param options.maxBytes bound on the header (default 4096), as in `parseProxyHeader`.
 */
export function readProxyHeader(socket: Socket, options: { timeoutMs: number; maxBytes?: number }): Promise<ProxyHeader> {
  const { timeoutMs, maxBytes = PROXY_V2_DEFAULT_MAX_BYTES } = options;
  if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new RangeError(`timeoutMs must be a positive number, got ${timeoutMs}`);
  checkMaxBytes(maxBytes);
  return new Promise<ProxyHeader>((resolve, reject) => {
    if (socket.destroyed || socket.readableEnded) {
      reject(new ProxyProtocolError('closed', 'socket closed before the PROXY header'));
      return;
    }
    // Bytes so far: the first chunk as received, then a copy that grows by doubling, so 1-byte
    // chunks cost linear time. `parseProxyHeader` decides before this holds more than the limit.
    let held: Buffer | null = null;
    let used = 0;
    let owned = false;
    const settle = (rest: Buffer | null): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      socket.pause();
      if (rest !== null && rest.length > 0) socket.unshift(rest);
    };
    const fail = (reason: ProxyRefusal, detail: string): void => {
      settle(null);
      reject(new ProxyProtocolError(reason, detail));
    };
    const onData = (chunk: Buffer): void => {
      if (held === null) {
        held = chunk;
        used = chunk.length;
      } else {
        if (!owned || used + chunk.length > held.length) {
          const grown = Buffer.allocUnsafe(Math.max(2 * held.length, used + chunk.length, 128));
          held.copy(grown, 0, 0, used);
          held = grown;
          owned = true;
        }
        chunk.copy(held, used);
        used += chunk.length;
      }
      const bytes = held.subarray(0, used);
      const parsed = parseProxyHeader(bytes, maxBytes);
      if (parsed.kind === 'incomplete') return;
      if (parsed.kind === 'invalid') return fail(parsed.reason, parsed.detail);
      settle(bytes.subarray(parsed.header.length));
      resolve(parsed.header);
    };
    const onEnd = (): void => fail('closed', `client ended the connection after ${used} bytes of a PROXY header`);
    const onClose = (): void => fail('closed', `connection closed after ${used} bytes of a PROXY header`);
    const onError = (err: Error): void => fail('closed', `socket error before a whole PROXY header: ${err.message}`);
    const timer = setTimeout(() => fail('timeout', `no whole PROXY header within ${timeoutMs} ms (${used} bytes)`), timeoutMs);
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    socket.resume();
  });
}

/**
 * A v1 header line (section 2.1): "PROXY TCP4 src dst sport dport\r\n", TCP6 for IPv6, or
 * "PROXY UNKNOWN\r\n" when an endpoint is null or has an empty address, or the two families
 * differ. IPv4-mapped IPv6
 * addresses are written as IPv4 first, so a v4 client reaching a dual-stack socket still gets
 * TCP4; IPv6 is written in RFC 5952 form, without a zone ('%eth0' is dropped: the line has no
 * room for it). Throws a RangeError for an address that is not an IP address or a port outside
 * 0-65535.
 */
export function encodeProxyV1(source: ProxyAddress | null, destination: ProxyAddress | null): Buffer {
  if (missing(source) || missing(destination)) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const from = endpointBytes(source!);
  const to = endpointBytes(destination!);
  if (from.bytes.length !== to.bytes.length) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const v4 = from.bytes.length === 4;
  const text = (bytes: Buffer): string => (v4 ? formatIPv4(bytes, 0) : formatIPv6(bytes, 0));
  return Buffer.from(`PROXY ${v4 ? 'TCP4' : 'TCP6'} ${text(from.bytes)} ${text(to.bytes)} ${from.port} ${to.port}\r\n`, 'latin1');
}

/**
 * A v2 header (section 2.2): command PROXY over TCP (family byte 0x11 for IPv4, 0x21 for IPv6),
 * or LOCAL with AF_UNSPEC (0x00) when either endpoint is null or has an empty address.
 * IPv4-mapped IPv6 addresses are sent as AF_INET when both ends are IPv4; when only one is,
 * both go as AF_INET6 with the IPv4 one mapped (as HAProxy's make_proxy_line_v2 does), so the
 * client address is never lost. TLVs: ALPN (0x01) and AUTHORITY (0x02, the SNI) when given and not empty, then, with `crc32c: true`, a PP2_TYPE_CRC32C
 * (section 2.2.3) over the whole header. Throws a RangeError for an address that is not an IP
 * address, a port outside 0-65535, an ALPN with a character above U+00FF, or TLVs that make the
 * header longer than the 16-bit length field allows.
 */
export function encodeProxyV2(source: ProxyAddress | null, destination: ProxyAddress | null, tlvs: { authority?: string; alpn?: string; crc32c?: boolean } = {}): Buffer {
  let familyByte = 0x00;
  let addresses = Buffer.alloc(0);
  const proxy = !missing(source) && !missing(destination);
  if (proxy) {
    let from = endpointBytes(source!);
    let to = endpointBytes(destination!);
    if (from.bytes.length !== to.bytes.length) {
      from = { bytes: mapToIPv6(from.bytes), port: from.port };
      to = { bytes: mapToIPv6(to.bytes), port: to.port };
    }
    const size = from.bytes.length;
    familyByte = size === 4 ? 0x11 : 0x21;
    addresses = Buffer.alloc(2 * size + 4);
    from.bytes.copy(addresses, 0);
    to.bytes.copy(addresses, size);
    addresses.writeUInt16BE(from.port, 2 * size);
    addresses.writeUInt16BE(to.port, 2 * size + 2);
  }
  const parts: Buffer[] = [];
  if (tlvs.alpn) {
    if (/[^\u0000-\u00ff]/.test(tlvs.alpn)) throw new RangeError('ALPN protocol with a character above U+00FF');
    parts.push(tlv(PP2_TYPE.ALPN, Buffer.from(tlvs.alpn, 'latin1')));
  }
  if (tlvs.authority) parts.push(tlv(PP2_TYPE.AUTHORITY, Buffer.from(tlvs.authority, 'utf8')));
  if (tlvs.crc32c === true) parts.push(tlv(PP2_TYPE.CRC32C, ZERO_CHECKSUM));
  const body = addresses.length + parts.reduce((sum, part) => sum + part.length, 0);
  if (body > 0xffff) throw new RangeError(`v2 header body of ${body} bytes, more than 65535`);
  const header = Buffer.concat([V2_SIGNATURE, Buffer.from([proxy ? 0x21 : 0x20, familyByte, body >> 8, body & 0xff]), addresses, ...parts]);
  if (tlvs.crc32c === true) header.writeUInt32BE(crc32c(header), header.length - 4);
  return header;
}

/** No endpoint, or one without an address (what a closed socket's `remoteAddress` gives). */
function missing(endpoint: ProxyAddress | null): boolean {
  return endpoint === null || endpoint.address === '' || endpoint.address === undefined;
}

function tlv(type: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new RangeError(`TLV 0x${type.toString(16)} of ${value.length} bytes, more than 65535`);
  const out = Buffer.alloc(3 + value.length);
  out[0] = type;
  out.writeUInt16BE(value.length, 1);
  value.copy(out, 3);
  return out;
}

/** An endpoint as 4 bytes (IPv4, also IPv4-mapped IPv6) or 16 (IPv6), its port checked. */
function endpointBytes(endpoint: ProxyAddress): { bytes: Buffer; port: number } {
  const { port } = endpoint;
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new RangeError(`port ${port} outside 0-65535`);
  const address = endpoint.address.includes('%') ? endpoint.address.slice(0, endpoint.address.indexOf('%')) : endpoint.address;
  if (isIPv4(address)) return { bytes: Buffer.from(address.split('.').map(Number)), port };
  const bytes = isIPv6(address) ? ipv6Bytes(address) : null;
  if (bytes === null) throw new RangeError(`not an IP address: ${JSON.stringify(endpoint.address)}`);
  return { bytes: isMappedIPv4(bytes) ? Buffer.from(bytes.subarray(12)) : bytes, port };
}

/** ::ffff:0:0/96 (RFC 4291 section 2.5.5.2). */
function isMappedIPv4(bytes: Buffer): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

function mapToIPv6(bytes: Buffer): Buffer {
  if (bytes.length === 16) return bytes;
  const mapped = Buffer.alloc(16);
  mapped[10] = 0xff;
  mapped[11] = 0xff;
  bytes.copy(mapped, 12);
  return mapped;
}

function formatIPv4(buf: Buffer, offset: number): string {
  return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
}

/**
 * The 16 bytes at `offset` as libuv's `uv_inet_ntop` prints them (BIND's inet_ntop6, which Node
 * uses for `remoteAddress`): RFC 5952 lower-case hex without leading zeros, the first longest run
 * of two or more zero groups as '::', and the last 32 bits dotted for IPv4-mapped (::ffff:a.b.c.d)
 * and IPv4-compatible (::a.b.c.d) addresses.
 */
export function formatIPv6(buf: Buffer, offset = 0): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(buf.readUInt16BE(offset + 2 * i));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  if (bestLength < 2) bestStart = -1;
  const embedsIPv4 = bestStart === 0 && (bestLength === 6 || (bestLength === 5 && words[5] === 0xffff));
  let out = '';
  for (let i = 0; i < 8; i++) {
    if (bestStart !== -1 && i >= bestStart && i < bestStart + bestLength) {
      if (i === bestStart) out += ':';
      continue;
    }
    if (i !== 0) out += ':';
    if (i === 6 && embedsIPv4) return out + formatIPv4(buf, offset + 12);
    out += words[i].toString(16);
  }
  return bestStart !== -1 && bestStart + bestLength === 8 ? out + ':' : out;
}

/** The 16 bytes of an IPv6 address in text (RFC 4291 section 2.2, with a dotted IPv4 tail), or null if it is not one. No zone. */
export function ipv6Bytes(text: string): Buffer | null {
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const head = ipv6Groups(halves[0], halves.length === 1);
  const tail = halves.length === 2 ? ipv6Groups(halves[1], true) : [];
  if (head === null || tail === null) return null;
  const groups = head.length + tail.length;
  if (halves.length === 1 ? groups !== 8 : groups > 7) return null;
  const out = Buffer.alloc(16);
  head.forEach((word, i) => out.writeUInt16BE(word, 2 * i));
  tail.forEach((word, i) => out.writeUInt16BE(word, 2 * (8 - tail.length + i)));
  return out;
}

/** The 16-bit groups of one side of '::'; a dotted IPv4 is allowed as the last part of the address only. */
function ipv6Groups(part: string, last: boolean): number[] | null {
  if (part === '') return [];
  const pieces = part.split(':');
  const words: number[] = [];
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i];
    if (last && i === pieces.length - 1 && piece.includes('.')) {
      if (!isIPv4(piece)) return null;
      const [a, b, c, d] = piece.split('.').map(Number);
      words.push((a << 8) | b, (c << 8) | d);
    } else if (/^[0-9a-fA-F]{1,4}$/.test(piece)) {
      words.push(parseInt(piece, 16));
    } else {
      return null;
    }
  }
  return words;
}

/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven one byte at a time, as
 * RFC 4960 Appendix B gives it (and section 2.2.3 asks for). Check value: crc32c("123456789")
 * is 0xE3069283.
 */
export function crc32c(buf: Buffer): number {
  return (crc32cUpdate(CRC32C_INIT, buf, 0, buf.length) ^ 0xffffffff) >>> 0;
}

const CRC32C_INIT = 0xffffffff;

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** Runs the CRC register over `buf[start, end)`; the caller inverts the final value. */
function crc32cUpdate(state: number, buf: Buffer, start: number, end: number): number {
  let c = state;
  for (let i = start; i < end; i++) c = CRC32C_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}
