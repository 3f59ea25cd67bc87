import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net, { SocketAddress, type AddressInfo } from 'node:net';
import {
  crc32c,
  encodeProxyV1,
  encodeProxyV2,
  formatIPv6,
  ipv6Bytes,
  parseProxyHeader,
  PP2_TYPE,
  ProxyProtocolError,
  readProxyHeader,
  startsWithProxySignature,
  type ProxyAddress,
  type ProxyHeader,
  type ProxyParse,
  type ProxyRefusal,
} from '../../../src/listeners/proxy-protocol.ts';
import { mulberry32 } from '../../helpers/random.ts';
import { eventually } from '../../helpers/eventually.ts';
import { freePort, haproxySkip, startHaproxy } from '../../helpers/haproxy.ts';

const SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1');

function header(parsed: ProxyParse, what = 'header'): ProxyHeader {
  if (parsed.kind !== 'header') assert.fail(`${what}: expected a header, got ${JSON.stringify(parsed)}`);
  return parsed.header;
}

/** A v2 header by hand: version/command byte, family byte, body (addresses and TLVs); `length` overrides the length field. */
function v2(verCmd: number, family: number, body: Buffer, length = body.length): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = verCmd;
  fixed[1] = family;
  fixed.writeUInt16BE(length, 2);
  return Buffer.concat([SIGNATURE, fixed, body]);
}

function tlvBytes(type: number, value: Buffer, length = value.length): Buffer {
  const out = Buffer.alloc(3 + value.length);
  out[0] = type;
  out.writeUInt16BE(length, 1);
  value.copy(out, 3);
  return out;
}

/** TCP over IPv4: 10.0.0.1:1234 -> 10.0.0.2:443. */
const ipv4Block = Buffer.from([10, 0, 0, 1, 10, 0, 0, 2, 0x04, 0xd2, 0x01, 0xbb]);

describe('crc32c', () => {
  test('the standard check value and RFC 3720 B.4 vectors', () => {
    assert.equal(crc32c(latin1('123456789')), 0xe3069283);
    assert.equal(crc32c(Buffer.alloc(0)), 0);
    assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
    assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
    assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e);
    assert.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i))), 0x113fdb5c);
  });
});

describe('startsWithProxySignature', () => {
  const cases: [string, Buffer, boolean | null][] = [
    ['empty', Buffer.alloc(0), null],
    ['"P"', latin1('P'), null],
    ['"PROXY" without its space', latin1('PROXY'), null],
    ['"PROXY "', latin1('PROXY '), true],
    ['a v1 line', latin1('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), true],
    ['"PROXYX"', latin1('PROXYX'), false],
    ['lower-case "proxy "', latin1('proxy '), false],
    ['an HTTP request', latin1('GET / HTTP/1.1\r\n'), false],
    ['a TLS ClientHello', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), false],
    ['CRLF (a v2 prefix)', latin1('\r\n'), null],
    ['11 bytes of the v2 signature', SIGNATURE.subarray(0, 11), null],
    ['the v2 signature', SIGNATURE, true],
    ['the v2 signature with a wrong last byte', Buffer.concat([SIGNATURE.subarray(0, 11), Buffer.from([0x0b])]), false],
    ['an empty line then GET (CRLF CRLF G)', latin1('\r\n\r\nG'), false],
  ];
  for (const [name, buf, expected] of cases) {
    test(`${name} -> ${expected}`, () => assert.equal(startsWithProxySignature(buf), expected));
  }
});

describe('parseProxyHeader, version 1 (section 2.1)', () => {
  const accepted: [string, string, Partial<ProxyHeader>][] = [
    ['TCP4', 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n', { family: 'tcp4', source: { address: '192.168.0.1', port: 56324 }, destination: { address: '192.168.0.11', port: 443 } }],
    ['TCP6', 'PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n', { family: 'tcp6', source: { address: '2001:db8::1', port: 1 }, destination: { address: '2001:db8::2', port: 65535 } }],
    ['TCP6 in upper case and uncompressed, given back as Node prints it', 'PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 FE80:0:0:0:0:0:0:AB 0 0\r\n', { source: { address: '2001:db8::1', port: 0 }, destination: { address: 'fe80::ab', port: 0 } }],
    ['TCP6 with IPv4-mapped addresses, left as they are', 'PROXY TCP6 ::ffff:10.0.0.1 ::ffff:a00:2 1 2\r\n', { source: { address: '::ffff:10.0.0.1', port: 1 }, destination: { address: '::ffff:10.0.0.2', port: 2 } }],
    ['UNKNOWN alone', 'PROXY UNKNOWN\r\n', { family: 'unknown', source: null, destination: null }],
    ['UNKNOWN with the rest of the fields', 'PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n', { family: 'unknown', source: null }],
    ['UNKNOWN with anything printable after it', 'PROXY UNKNOWN whatever   it is\r\n', { family: 'unknown', source: null }],
  ];
  for (const [name, line, expected] of accepted) {
    test(`accepts ${name}`, () => {
      const got = header(parseProxyHeader(latin1(line + 'GET / HTTP/1.1\r\n')));
      assert.equal(got.version, 1);
      assert.equal(got.command, 'proxy');
      assert.equal(got.length, line.length, 'length stops at the CRLF');
      assert.deepEqual(got.tlvs, []);
      assert.equal(got.authority, null);
      for (const [key, value] of Object.entries(expected)) assert.deepEqual(got[key as keyof ProxyHeader], value, key);
    });
  }

  test('the worst case of 107 bytes is accepted, one more byte is too large', () => {
    const worst = 'PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n';
    assert.equal(worst.length, 107);
    assert.equal(header(parseProxyHeader(latin1(worst))).length, 107);
    const over = worst.replace('65535 65535', '65535  65535');
    assert.deepEqual(refusal(latin1(over)), 'too_large');
    // The CR as the 107th byte: its LF would be the 108th.
    assert.equal(refusal(latin1(over.slice(0, 107))), 'too_large');
  });

  test('107 bytes without a CRLF are refused without waiting for more', () => {
    assert.equal(refusal(latin1('PROXY UNKNOWN ' + 'a'.repeat(93))), 'too_large');
    assert.equal(parseProxyHeader(latin1('PROXY UNKNOWN ' + 'a'.repeat(92))).kind, 'incomplete');
  });

  // One case per rule; each is accepted if its rule is taken out of the parser.
  const refused: [string, string, ProxyRefusal][] = [
    ['LF without CR', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', 'malformed'],
    ['CR without LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n', 'malformed'],
    ['two spaces between fields', 'PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n', 'malformed'],
    ['two spaces after PROXY', 'PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n', 'malformed'],
    ['a trailing space', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n', 'malformed'],
    ['a missing field', 'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', 'malformed'],
    ['an extra field', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n', 'malformed'],
    ['no fields after TCP4', 'PROXY TCP4\r\n', 'malformed'],
    ['a tab for a space', 'PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n', 'malformed'],
    ['port with a plus sign', 'PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n', 'malformed'],
    ['port with a minus sign', 'PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n', 'malformed'],
    ['port with a leading zero', 'PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n', 'malformed'],
    ['port 65536', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n', 'malformed'],
    ['port in hex', 'PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2\r\n', 'malformed'],
    ['TCP4 with an IPv6 address', 'PROXY TCP4 ::1 5.6.7.8 1 2\r\n', 'malformed'],
    ['TCP4 with an IPv4-mapped IPv6 address', 'PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n', 'malformed'],
    ['TCP6 with an IPv4 address', 'PROXY TCP6 ::1 5.6.7.8 1 2\r\n', 'malformed'],
    ['IPv4 with a leading zero', 'PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n', 'malformed'],
    ['IPv4 octet over 255', 'PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n', 'malformed'],
    ['a host name', 'PROXY TCP4 localhost 5.6.7.8 1 2\r\n', 'malformed'],
    ['IPv6 with a zone', 'PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n', 'malformed'],
    ['IPv6 with two "::"', 'PROXY TCP6 1::2::3 ::1 1 2\r\n', 'malformed'],
    ['UDP4 (not a v1 protocol)', 'PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n', 'malformed'],
    ['lower-case tcp4', 'PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n', 'malformed'],
    ['UNKNOWNX', 'PROXY UNKNOWNX\r\n', 'malformed'],
    ['a NUL byte', 'PROXY UNKNOWN \0\r\n', 'malformed'],
    ['a byte above 0x7e', 'PROXY UNKNOWN \xe9\r\n', 'malformed'],
    ['no PROXY signature at all', 'GET / HTTP/1.1\r\n\r\n', 'malformed'],
  ];
  for (const [name, line, reason] of refused) {
    test(`refuses ${name}: ${reason}`, () => assert.equal(refusal(latin1(line)), reason));
  }

  test('garbage is refused at the protocol word, before any CRLF', () => {
    assert.equal(refusal(latin1('PROXY TCPX')), 'malformed');
    assert.equal(refusal(latin1('PROXY X')), 'malformed');
    assert.equal(refusal(latin1('PROXY TCP4 \x01')), 'malformed');
  });
});

/** The reason `buf` is refused (fails when it is not). */
function refusal(buf: Buffer, maxBytes?: number): ProxyRefusal {
  const parsed = parseProxyHeader(buf, maxBytes);
  if (parsed.kind !== 'invalid') assert.fail(`expected a refusal of ${JSON.stringify(buf.toString('latin1'))}, got ${JSON.stringify(parsed)}`);
  return parsed.reason;
}

describe('parseProxyHeader, version 2 (section 2.2)', () => {
  test('TCP over IPv4, PROXY command, with the bytes after it left alone', () => {
    const buf = v2(0x21, 0x11, ipv4Block);
    const got = header(parseProxyHeader(Buffer.concat([buf, latin1('payload')])));
    assert.deepEqual(got, {
      version: 2,
      command: 'proxy',
      family: 'tcp4',
      source: { address: '10.0.0.1', port: 1234 },
      destination: { address: '10.0.0.2', port: 443 },
      authority: null,
      alpn: null,
      tlvs: [],
      length: 28,
    });
  });

  test('TCP and UDP over IPv6, addresses as Node prints them (mapped ones left as they are)', () => {
    const block = Buffer.concat([ipv6Bytes('2001:db8::1')!, ipv6Bytes('::ffff:10.0.0.2')!, Buffer.from([0, 80, 0xff, 0xff])]);
    const tcp = header(parseProxyHeader(v2(0x21, 0x21, block)));
    assert.equal(tcp.family, 'tcp6');
    assert.deepEqual(tcp.source, { address: '2001:db8::1', port: 80 });
    assert.deepEqual(tcp.destination, { address: '::ffff:10.0.0.2', port: 65535 });
    assert.equal(header(parseProxyHeader(v2(0x21, 0x22, block))).family, 'udp6');
    assert.equal(header(parseProxyHeader(v2(0x21, 0x12, ipv4Block))).family, 'udp4');
  });

  test('LOCAL: the addresses are skipped, not used, and TLVs after them still read', () => {
    const got = header(parseProxyHeader(v2(0x20, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.AUTHORITY, latin1('a.example'))]))));
    assert.equal(got.command, 'local');
    assert.equal(got.source, null);
    assert.equal(got.destination, null);
    assert.equal(got.authority, 'a.example');
    const bare = header(parseProxyHeader(v2(0x20, 0x00, Buffer.alloc(0))));
    assert.deepEqual([bare.command, bare.family, bare.source, bare.length], ['local', 'unknown', null, 16]);
  });

  test('AF_UNSPEC with PROXY and unix sockets carry no usable address; their bytes are skipped by the length', () => {
    const unspec = header(parseProxyHeader(v2(0x21, 0x00, Buffer.alloc(0))));
    assert.deepEqual([unspec.family, unspec.source], ['unknown', null]);
    const unix = Buffer.concat([Buffer.alloc(216, 0x41), tlvBytes(PP2_TYPE.ALPN, latin1('h2'))]);
    for (const family of [0x31, 0x32]) {
      const got = header(parseProxyHeader(v2(0x21, family, unix)));
      assert.deepEqual([got.family, got.source, got.destination, got.alpn, got.length], ['unix', null, null, 'h2', 16 + 216 + 5]);
    }
  });

  test('TLVs: ALPN, AUTHORITY and every other one kept in order, bounded by the header length', () => {
    const ssl = Buffer.concat([Buffer.from([0x01, 0, 0, 0, 0]), tlvBytes(0x21, latin1('TLSv1.3'))]);
    const body = Buffer.concat([
      ipv4Block,
      tlvBytes(PP2_TYPE.NOOP, Buffer.alloc(0)),
      tlvBytes(PP2_TYPE.ALPN, latin1('http/1.1')),
      tlvBytes(PP2_TYPE.AUTHORITY, Buffer.from('bücher.example', 'utf8')),
      tlvBytes(PP2_TYPE.SSL, ssl),
      tlvBytes(0xe0, Buffer.from([1, 2, 3])),
    ]);
    const got = header(parseProxyHeader(Buffer.concat([v2(0x21, 0x11, body), tlvBytes(0xe1, latin1('not part of the header'))])));
    assert.equal(got.alpn, 'http/1.1');
    assert.equal(got.authority, 'bücher.example');
    assert.deepEqual(got.tlvs.map((t) => t.type), [0x04, 0x01, 0x02, 0x20, 0xe0]);
    assert.deepEqual(got.tlvs[3].value, ssl);
    assert.equal(got.length, 16 + body.length);
  });

  test('TLV values are copies: changing the buffer afterwards does not change them', () => {
    const buf = v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.AUTHORITY, latin1('a.example'))]));
    const got = header(parseProxyHeader(buf));
    buf.fill(0);
    assert.equal(got.tlvs[0].value.toString('latin1'), 'a.example');
  });

  test('CRC32C (2.2.3): a right checksum is accepted, any flipped bit of the header refused', () => {
    const good = encodeProxyV2({ address: '10.0.0.1', port: 1 }, { address: '10.0.0.2', port: 2 }, { authority: 'a.example', crc32c: true });
    assert.equal(header(parseProxyHeader(good)).tlvs.at(-1)!.type, PP2_TYPE.CRC32C);
    // Flips in the addresses, the TLVs and the checksum itself; the fixed part is checked by other rules first.
    const checksumType = good.length - 7;
    assert.equal(good[checksumType], PP2_TYPE.CRC32C);
    for (let i = 16; i < good.length; i++) {
      // A flip of the checksum's own type byte makes it another TLV, which nothing verifies: the protocol cannot catch that one.
      if (i === checksumType) continue;
      const bad = Buffer.from(good);
      bad[i] ^= 0x10;
      const parsed = parseProxyHeader(bad);
      // A flip in a TLV's type or length byte may break the TLV framing first; either way it is malformed.
      assert.equal(parsed.kind, 'invalid', `bit flipped at ${i}`);
      assert.equal((parsed as { reason: string }).reason, 'malformed');
    }
    const flippedAddress = Buffer.from(good);
    flippedAddress[16] ^= 1;
    assert.match((parseProxyHeader(flippedAddress) as { detail: string }).detail, /CRC32C/);
  });

  test('CRC32C: a checksum TLV in the middle of the header covers what follows it too', () => {
    const body = Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.CRC32C, Buffer.alloc(4)), tlvBytes(PP2_TYPE.AUTHORITY, latin1('a.example'))]);
    const buf = v2(0x21, 0x11, body);
    buf.writeUInt32BE(crc32c(buf), 16 + 12 + 3);
    assert.equal(header(parseProxyHeader(buf)).authority, 'a.example');
    buf[buf.length - 1] ^= 1;
    assert.equal(refusal(buf), 'malformed');
  });

  test('version nibble other than 2 is unsupported, decided from the 13th byte', () => {
    for (const verCmd of [0x11, 0x31, 0x01, 0xf1]) {
      assert.equal(refusal(Buffer.concat([SIGNATURE, Buffer.from([verCmd])])), 'unsupported', `0x${verCmd.toString(16)}`);
      assert.equal(refusal(v2(verCmd, 0x11, ipv4Block)), 'unsupported');
    }
  });

  test('commands other than LOCAL (0) and PROXY (1) are malformed', () => {
    for (let command = 2; command <= 0xf; command++) assert.equal(refusal(v2(0x20 | command, 0x11, ipv4Block)), 'malformed', `command ${command}`);
  });

  test('family bytes other than the seven of section 2.2 are malformed, decided from the 14th byte', () => {
    const valid = new Set([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]);
    for (let family = 0; family <= 0xff; family++) {
      if (valid.has(family)) continue;
      assert.equal(refusal(Buffer.concat([SIGNATURE, Buffer.from([0x21, family])])), 'malformed', `family 0x${family.toString(16)}`);
    }
  });

  test('a length shorter than the family needs is malformed, even for LOCAL', () => {
    assert.equal(refusal(v2(0x21, 0x11, ipv4Block.subarray(0, 11))), 'malformed');
    assert.equal(refusal(v2(0x21, 0x21, Buffer.alloc(35))), 'malformed');
    assert.equal(refusal(v2(0x21, 0x31, Buffer.alloc(215))), 'malformed');
    assert.equal(refusal(v2(0x20, 0x11, Buffer.alloc(0))), 'malformed');
  });

  test('a TLV running past the end, or a partial TLV header left over, is malformed', () => {
    assert.equal(refusal(v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.AUTHORITY, latin1('abc'), 4)]))), 'malformed');
    assert.equal(refusal(v2(0x21, 0x11, Buffer.concat([ipv4Block, Buffer.from([0x02])]))), 'malformed');
    assert.equal(refusal(v2(0x21, 0x11, Buffer.concat([ipv4Block, Buffer.from([0x02, 0x00])]))), 'malformed');
    // Even when the bytes after the header would have completed it.
    const cut = v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.AUTHORITY, latin1('abc'))]), 12 + 5);
    assert.equal(refusal(cut), 'malformed');
  });

  test('duplicate ALPN, AUTHORITY or CRC32C, a CRC32C not 4 bytes long, a UNIQUE_ID over 128 bytes are malformed', () => {
    for (const type of [PP2_TYPE.ALPN, PP2_TYPE.AUTHORITY]) {
      assert.equal(refusal(v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(type, latin1('a')), tlvBytes(type, latin1('b'))]))), 'malformed');
    }
    const twoChecksums = v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.CRC32C, Buffer.alloc(4)), tlvBytes(PP2_TYPE.CRC32C, Buffer.alloc(4))]));
    assert.equal(refusal(twoChecksums), 'malformed');
    assert.equal(refusal(v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.CRC32C, Buffer.alloc(3))]))), 'malformed');
    assert.equal(header(parseProxyHeader(v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.UNIQUE_ID, Buffer.alloc(128))])))).tlvs[0].value.length, 128);
    assert.equal(refusal(v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.UNIQUE_ID, Buffer.alloc(129))]))), 'malformed');
    // Other types may repeat.
    assert.equal(header(parseProxyHeader(v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.NOOP, Buffer.alloc(1)), tlvBytes(PP2_TYPE.NOOP, Buffer.alloc(1))])))).tlvs.length, 2);
  });

  test('a header longer than maxBytes is too_large from its 16 fixed bytes alone', () => {
    const fixed = v2(0x21, 0x11, Buffer.alloc(0), 4096 - 16 + 1);
    assert.equal(fixed.length, 16);
    assert.equal(refusal(fixed), 'too_large');
    assert.equal(parseProxyHeader(v2(0x21, 0x11, Buffer.alloc(0), 4096 - 16)).kind, 'incomplete');
    assert.equal(refusal(v2(0x21, 0x11, Buffer.alloc(0), 0xffff)), 'too_large');
    assert.equal(refusal(v2(0x21, 0x11, ipv4Block), 27), 'too_large');
    assert.equal(header(parseProxyHeader(v2(0x21, 0x11, ipv4Block), 28)).length, 28);
    // Up to the 16-bit length field's own limit when allowed.
    assert.equal(parseProxyHeader(v2(0x21, 0x11, Buffer.alloc(0), 0xffff), 16 + 0xffff).kind, 'incomplete');
  });

  test('maxBytes also bounds v1 when below 107', () => {
    assert.equal(refusal(latin1('PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n'), 40), 'too_large');
    assert.throws(() => parseProxyHeader(Buffer.alloc(1), 15), RangeError);
    assert.throws(() => parseProxyHeader(Buffer.alloc(1), 100.5), RangeError);
  });
});

/** Valid headers of every kind, for the prefix and mutation tests. */
function sampleHeaders(): Buffer[] {
  const v4a = { address: '192.0.2.1', port: 51000 };
  const v4b = { address: '198.51.100.20', port: 443 };
  const v6a = { address: '2001:db8:85a3::8a2e:370:7334', port: 0 };
  const v6b = { address: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 };
  return [
    encodeProxyV1(v4a, v4b),
    encodeProxyV1(v6a, v6b),
    encodeProxyV1(null, null),
    latin1('PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n'),
    encodeProxyV2(v4a, v4b),
    encodeProxyV2(v6a, v6b, { authority: 'service.example', alpn: 'h2' }),
    encodeProxyV2(v4a, v4b, { authority: 'a.example', alpn: 'http/1.1', crc32c: true }),
    encodeProxyV2(null, null, { authority: 'health.example' }),
    v2(0x21, 0x31, Buffer.concat([Buffer.alloc(216, 0x2f), tlvBytes(PP2_TYPE.SSL, Buffer.from([1, 0, 0, 0, 0]))])),
    v2(0x21, 0x11, Buffer.concat([ipv4Block, tlvBytes(PP2_TYPE.NOOP, Buffer.alloc(4000 - 28))])),
  ];
}

describe('parseProxyHeader, incrementally', () => {
  test('every prefix of a valid header is incomplete, never invalid; the whole is the header, with or without bytes after it', () => {
    for (const whole of sampleHeaders()) {
      for (let n = 0; n < whole.length; n++) {
        const parsed = parseProxyHeader(whole.subarray(0, n));
        assert.equal(parsed.kind, 'incomplete', `prefix of ${n} of ${whole.length} bytes of ${JSON.stringify(whole.subarray(0, 40).toString('latin1'))}: ${JSON.stringify(parsed)}`);
      }
      assert.equal(header(parseProxyHeader(whole)).length, whole.length);
      assert.equal(header(parseProxyHeader(Buffer.concat([whole, latin1('\r\nPROXY ...')]))).length, whole.length);
    }
  });
});

describe('encodeProxyV1', () => {
  test('TCP4 and TCP6 lines, exactly', () => {
    assert.equal(encodeProxyV1({ address: '192.168.0.1', port: 56324 }, { address: '192.168.0.11', port: 443 }).toString('latin1'), 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n');
    assert.equal(encodeProxyV1({ address: '2001:DB8:0::1', port: 1 }, { address: '::1', port: 2 }).toString('latin1'), 'PROXY TCP6 2001:db8::1 ::1 1 2\r\n');
  });

  test('IPv4-mapped IPv6 is written as IPv4, so a v4 client on a dual-stack socket is TCP4 (also when only one end is mapped)', () => {
    assert.equal(encodeProxyV1({ address: '::ffff:10.0.0.1', port: 1 }, { address: '::ffff:10.0.0.2', port: 2 }).toString('latin1'), 'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n');
    assert.equal(encodeProxyV1({ address: '::ffff:10.0.0.1', port: 1 }, { address: '10.0.0.2', port: 2 }).toString('latin1'), 'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n');
  });

  test('UNKNOWN when an endpoint is missing or the families differ', () => {
    const unknown = 'PROXY UNKNOWN\r\n';
    assert.equal(encodeProxyV1(null, { address: '10.0.0.2', port: 2 }).toString('latin1'), unknown);
    assert.equal(encodeProxyV1({ address: '10.0.0.1', port: 1 }, null).toString('latin1'), unknown);
    assert.equal(encodeProxyV1({ address: '', port: 0 }, { address: '10.0.0.2', port: 2 }).toString('latin1'), unknown);
    assert.equal(encodeProxyV1({ address: '10.0.0.1', port: 1 }, { address: '2001:db8::2', port: 2 }).toString('latin1'), unknown);
  });

  test('an IPv6 zone is dropped; a non-address or a bad port throws a RangeError', () => {
    assert.equal(encodeProxyV1({ address: 'fe80::1%eth0', port: 1 }, { address: 'fe80::2', port: 2 }).toString('latin1'), 'PROXY TCP6 fe80::1 fe80::2 1 2\r\n');
    assert.throws(() => encodeProxyV1({ address: 'localhost', port: 1 }, { address: '10.0.0.2', port: 2 }), RangeError);
    assert.throws(() => encodeProxyV1({ address: '10.0.0.1', port: 65536 }, { address: '10.0.0.2', port: 2 }), RangeError);
    assert.throws(() => encodeProxyV1({ address: '10.0.0.1', port: -1 }, { address: '10.0.0.2', port: 2 }), RangeError);
    assert.throws(() => encodeProxyV1({ address: '10.0.0.1', port: 1.5 }, { address: '10.0.0.2', port: 2 }), RangeError);
  });
});

describe('encodeProxyV2', () => {
  test('PROXY over TCP/IPv4 with ALPN and AUTHORITY, byte for byte', () => {
    const got = encodeProxyV2({ address: '10.0.0.1', port: 1234 }, { address: '10.0.0.2', port: 443 }, { alpn: 'h2', authority: 'a.example' });
    const expected = Buffer.concat([SIGNATURE, Buffer.from([0x21, 0x11, 0x00, 12 + 5 + 12]), ipv4Block, Buffer.from([0x01, 0x00, 0x02]), latin1('h2'), Buffer.from([0x02, 0x00, 0x09]), latin1('a.example')]);
    assert.equal(got.toString('hex'), expected.toString('hex'));
  });

  test('LOCAL with AF_UNSPEC and no addresses when an endpoint is missing', () => {
    const local = Buffer.concat([SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]).toString('hex');
    assert.equal(encodeProxyV2(null, null).toString('hex'), local);
    assert.equal(encodeProxyV2({ address: '10.0.0.1', port: 1 }, null).toString('hex'), local);
    assert.equal(encodeProxyV2({ address: '', port: 0 }, { address: '10.0.0.1', port: 1 }).toString('hex'), local);
  });

  test('IPv4-mapped IPv6 on both ends goes as AF_INET; mixed families go as AF_INET6 with the IPv4 end mapped', () => {
    const mapped = encodeProxyV2({ address: '::ffff:10.0.0.1', port: 1234 }, { address: '::ffff:10.0.0.2', port: 443 });
    assert.equal(mapped.toString('hex'), v2(0x21, 0x11, ipv4Block).toString('hex'));
    const mixed = header(parseProxyHeader(encodeProxyV2({ address: '10.0.0.1', port: 1 }, { address: '2001:db8::2', port: 2 })));
    assert.equal(mixed.family, 'tcp6');
    assert.deepEqual(mixed.source, { address: '::ffff:10.0.0.1', port: 1 });
    assert.deepEqual(mixed.destination, { address: '2001:db8::2', port: 2 });
  });

  test('empty TLV strings are not sent; a non-latin1 ALPN, an oversized header or a bad endpoint throw a RangeError', () => {
    assert.equal(encodeProxyV2({ address: '10.0.0.1', port: 1234 }, { address: '10.0.0.2', port: 443 }, { alpn: '', authority: '' }).length, 28);
    const a = { address: '10.0.0.1', port: 1 };
    assert.throws(() => encodeProxyV2(a, a, { alpn: 'h\u0100' }), RangeError);
    assert.throws(() => encodeProxyV2(a, a, { authority: 'x'.repeat(0xffff - 12 - 3 + 1) }), RangeError);
    assert.doesNotThrow(() => encodeProxyV2(a, a, { authority: 'x'.repeat(0xffff - 12 - 3) }));
    assert.throws(() => encodeProxyV2({ address: '10.0.0.256', port: 1 }, a), RangeError);
    assert.throws(() => encodeProxyV2(a, { address: '10.0.0.2', port: 70000 }), RangeError);
  });
});

/** IPv6 bytes with runs of zeros, 0xffff and IPv4 tails likely, so the '::' and dotted-tail rules are hit often. */
function randomIPv6(random: () => number): Buffer {
  const bytes = Buffer.alloc(16);
  const shape = random();
  for (let w = 0; w < 8; w++) {
    const r = random();
    const word = r < 0.45 ? 0 : r < 0.55 ? 0xffff : r < 0.65 ? 1 : Math.floor(random() * 0x10000);
    bytes.writeUInt16BE(word, 2 * w);
  }
  // IPv4-mapped and IPv4-compatible shapes.
  if (shape < 0.15) bytes.fill(0, 0, 10).writeUInt16BE(0xffff, 10);
  else if (shape < 0.25) bytes.fill(0, 0, 12);
  return bytes;
}

/** Node's own canonical text for `bytes` (libuv's inet_pton then inet_ntop), from the uncompressed form: the oracle. */
function nodeIPv6(bytes: Buffer): string {
  const full = Array.from({ length: 8 }, (_, w) => bytes.readUInt16BE(2 * w).toString(16)).join(':');
  return new SocketAddress({ address: full, family: 'ipv6' }).address;
}

function randomEndpoint(random: () => number, v6: boolean): ProxyAddress {
  const address = v6 ? nodeIPv6(randomIPv6(random)) : Array.from({ length: 4 }, () => Math.floor(random() * 256)).join('.');
  return { address, port: Math.floor(random() * 0x10000) };
}

describe('IPv6 text', () => {
  test('formatIPv6 prints what Node prints, ipv6Bytes reads it back (5,000 seeded addresses)', () => {
    const random = mulberry32(0x5eed6);
    for (let i = 0; i < 5000; i++) {
      const bytes = randomIPv6(random);
      const text = formatIPv6(bytes);
      assert.equal(text, nodeIPv6(bytes), bytes.toString('hex'));
      assert.deepEqual(ipv6Bytes(text), bytes, text);
    }
  });

  test('edge forms', () => {
    const cases: [string, string][] = [
      ['::', '00000000000000000000000000000000'],
      ['::1', '00000000000000000000000000000001'],
      ['1::', '00010000000000000000000000000000'],
      ['1:0:0:2::3', '00010000000000020000000000000003'],
      ['1:0:1:0:1:0:1:0', '00010000000100000001000000010000'],
      ['::ffff:1.2.3.4', '00000000000000000000ffff01020304'],
      ['::1.2.3.4', '00000000000000000000000001020304'],
      ['::ffff:0:102:304', '0000000000000000ffff000001020304'],
    ];
    for (const [text, hex] of cases) {
      assert.equal(formatIPv6(Buffer.from(hex, 'hex')), text);
      assert.equal(ipv6Bytes(text)!.toString('hex'), hex);
    }
    for (const bad of ['1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '12345::', '1.2.3.4::', ':::', 'g::1', '::1.2.3']) assert.equal(ipv6Bytes(bad), null, bad);
  });
});

describe('round trip: parse(encode(x)) gives x back', () => {
  test('v1 and v2, IPv4 and IPv6, with and without TLVs (2,000 seeded cases)', () => {
    const random = mulberry32(0xc0ffee);
    for (let i = 0; i < 2000; i++) {
      const v6 = random() < 0.5;
      const source = randomEndpoint(random, v6);
      let destination = randomEndpoint(random, v6);
      // Mapped IPv4 goes out as IPv4 (by design); compare with what was meant. Mixed families have tests of their own.
      const isMapped = (e: ProxyAddress): boolean => /^::ffff:\d+\.\d+\.\d+\.\d+$/.test(e.address);
      const unmapped = (e: ProxyAddress): ProxyAddress => (isMapped(e) ? { address: e.address.slice(7), port: e.port } : e);
      if (isMapped(source) !== isMapped(destination)) destination = { ...destination, address: isMapped(source) ? '::ffff:1.2.3.4' : '2001:db8::2' };
      const expectedSource = unmapped(source);
      const expectedDestination = unmapped(destination);
      const family = expectedSource.address.includes(':') ? 'tcp6' : 'tcp4';
      const context = JSON.stringify({ source, destination });

      const one = header(parseProxyHeader(encodeProxyV1(source, destination)), context);
      assert.deepEqual([one.version, one.family, one.source, one.destination], [1, family, expectedSource, expectedDestination], context);

      const tlvs = random() < 0.5 ? {} : { authority: `host-${i}.example`, alpn: random() < 0.5 ? 'h2' : 'http/1.1', crc32c: random() < 0.5 };
      const encoded = encodeProxyV2(source, destination, tlvs);
      const two = header(parseProxyHeader(encoded), context);
      assert.deepEqual(
        [two.version, two.command, two.family, two.source, two.destination, two.authority, two.alpn, two.length],
        [2, 'proxy', family, expectedSource, expectedDestination, tlvs.authority ?? null, tlvs.alpn ?? null, encoded.length],
        context,
      );
    }
  });

  test('LOCAL and UNKNOWN round-trip to no addresses', () => {
    const local = header(parseProxyHeader(encodeProxyV2(null, null, { authority: 'a.example', alpn: 'h2' })));
    assert.deepEqual([local.command, local.family, local.source, local.destination, local.authority, local.alpn], ['local', 'unknown', null, null, 'a.example', 'h2']);
    const unknown = header(parseProxyHeader(encodeProxyV1(null, null)));
    assert.deepEqual([unknown.version, unknown.family, unknown.source, unknown.destination], [1, 'unknown', null, null]);
  });
});

describe('fuzz', () => {
  test('20,000 random buffers and mutations of valid headers: never a throw, never a header longer than the buffer, incomplete only below the limit', () => {
    const random = mulberry32(0xf022);
    const samples = sampleHeaders();
    const reasons = new Set<ProxyRefusal>(['malformed', 'too_large', 'unsupported']);
    const kinds = { incomplete: 0, header: 0, invalid: 0 };
    const int = (n: number): number => Math.floor(random() * n);
    for (let i = 0; i < 20_000; i++) {
      let buf: Buffer;
      const mode = random();
      if (mode < 0.3) {
        // Random bytes after a signature (or not), so the parser gets past its first check.
        const start = [Buffer.alloc(0), SIGNATURE, latin1('PROXY '), latin1('PROXY TCP4 '), latin1('PROXY TCP6 '), latin1('PROXY UNKNOWN')][int(6)];
        const rest = Buffer.alloc(int(300));
        for (let j = 0; j < rest.length; j++) rest[j] = random() < 0.3 ? ' .:0123456789\r\n'.charCodeAt(int(15)) : int(256);
        buf = Buffer.concat([start, rest]);
      } else {
        buf = Buffer.from(samples[int(samples.length)]);
        const edits = 1 + int(4);
        for (let e = 0; e < edits; e++) {
          const what = random();
          if (what < 0.4 && buf.length > 0) buf[int(buf.length)] = int(256);
          else if (what < 0.55 && buf.length > 0) buf = buf.subarray(0, int(buf.length));
          else if (what < 0.7) buf = Buffer.concat([buf, Buffer.from(Array.from({ length: int(40) }, () => int(256)))]);
          else if (what < 0.85 && buf.length >= 16) buf.writeUInt16BE(int(0x10000), 14);
          else if (buf.length > 1) {
            const at = int(buf.length);
            buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + int(8))]);
          }
        }
      }
      const maxBytes = random() < 0.8 ? 4096 : 16 + int(600);
      let parsed: ProxyParse;
      try {
        parsed = parseProxyHeader(buf, maxBytes);
      } catch (err) {
        assert.fail(`threw on case ${i} (${buf.toString('hex')}, maxBytes ${maxBytes}): ${(err as Error).stack}`);
      }
      kinds[parsed.kind]++;
      if (parsed.kind === 'header') {
        assert.ok(parsed.header.length <= buf.length && parsed.header.length <= maxBytes, `case ${i}: header of ${parsed.header.length} bytes from ${buf.length}`);
        for (const t of parsed.header.tlvs) assert.ok(t.value.length <= parsed.header.length);
      } else if (parsed.kind === 'invalid') {
        assert.ok(reasons.has(parsed.reason), parsed.reason);
      } else {
        const limit = buf[0] === 0x50 ? Math.min(107, maxBytes) : maxBytes;
        assert.ok(buf.length < limit, `case ${i}: incomplete with ${buf.length} bytes, limit ${limit}`);
      }
    }
    // The mix reaches every outcome, so the asserts above were exercised.
    assert.ok(kinds.header > 1000 && kinds.invalid > 1000 && kinds.incomplete > 1000, JSON.stringify(kinds));
  });
});

/** A server with pauseOnConnect on 127.0.0.1 port 0 and a client connected to it: the server's socket, paused. */
async function pausedPair(t: TestContext, options: net.ServerOpts = {}): Promise<{ client: net.Socket; socket: net.Socket }> {
  const server = net.createServer({ pauseOnConnect: true, ...options });
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = net.connect((server.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => {});
  await new Promise<void>((resolve) => client.once('connect', resolve));
  const socket = await accepted;
  socket.on('error', () => {});
  t.after(() => {
    client.destroy();
    socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { client, socket };
}

const EVENTS = ['data', 'end', 'close', 'error', 'readable'] as const;
const listenerCounts = (socket: net.Socket): number[] => EVENTS.map((e) => socket.listenerCount(e));
const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

/** Everything the socket delivers to a new 'data' reader until `bytes` have come. */
function readBytes(socket: net.Socket, bytes: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= bytes) {
        socket.off('data', onData);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on('data', onData);
    socket.resume();
  });
}

async function rejection(promise: Promise<unknown>): Promise<ProxyProtocolError> {
  const err = await promise.then(
    () => assert.fail('expected a rejection'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ProxyProtocolError, String(err));
  return err;
}

// A bound per test, so a regression that loses bytes fails instead of hanging.
describe('readProxyHeader on real sockets', { timeout: 20_000 }, () => {
  test('header and payload in one write: the header is read, the payload comes intact to the next reader, nothing is left behind', async (t) => {
    for (const encoded of [encodeProxyV1({ address: '203.0.113.7', port: 4242 }, { address: '198.51.100.1', port: 443 }), encodeProxyV2({ address: '203.0.113.7', port: 4242 }, { address: '198.51.100.1', port: 443 }, { authority: 'a.example', crc32c: true })]) {
      const { client, socket } = await pausedPair(t);
      const before = listenerCounts(socket);
      const timersBefore = timers();
      const payload = Buffer.from(Array.from({ length: 70_000 }, (_, i) => i % 251));
      client.write(Buffer.concat([encoded, payload]));
      const got = await readProxyHeader(socket, { timeoutMs: 5000 });
      assert.deepEqual(got.source, { address: '203.0.113.7', port: 4242 });
      assert.equal(got.length, encoded.length);
      assert.equal(socket.isPaused(), true, 'left paused for the next reader');
      assert.deepEqual(listenerCounts(socket), before);
      assert.equal(timers(), timersBefore);
      assert.deepEqual(await readBytes(socket, payload.length), payload);
    }
  });

  test('a header split into 1-byte writes, each read on its own, then the payload', async (t) => {
    const { client, socket } = await pausedPair(t);
    client.setNoDelay(true);
    const encoded = encodeProxyV2({ address: '2001:db8::7', port: 1 }, { address: '2001:db8::1', port: 443 }, { authority: 'split.example', alpn: 'h2', crc32c: true });
    const before = listenerCounts(socket);
    const reading = readProxyHeader(socket, { timeoutMs: 10_000 });
    for (let i = 0; i < encoded.length; i++) {
      client.write(encoded.subarray(i, i + 1));
      // Waiting for each byte to be read makes it its own 'data' chunk.
      await eventually(() => socket.bytesRead === i + 1, { what: `byte ${i + 1} read` });
    }
    const got = await reading;
    assert.equal(got.authority, 'split.example');
    assert.deepEqual(got.source, { address: '2001:db8::7', port: 1 });
    assert.deepEqual(listenerCounts(socket), before);
    client.write('after');
    assert.equal((await readBytes(socket, 5)).toString(), 'after');
  });

  test('the rest of the chunk that completes a split header is kept', async (t) => {
    const { client, socket } = await pausedPair(t);
    const encoded = encodeProxyV1({ address: '10.0.0.1', port: 1 }, { address: '10.0.0.2', port: 2 });
    const reading = readProxyHeader(socket, { timeoutMs: 5000 });
    client.write(encoded.subarray(0, 10));
    await eventually(() => socket.bytesRead === 10);
    client.write(Buffer.concat([encoded.subarray(10), latin1('GET / HTTP/1.1\r\n\r\n')]));
    assert.equal((await reading).length, encoded.length);
    assert.equal((await readBytes(socket, 18)).toString(), 'GET / HTTP/1.1\r\n\r\n');
  });

  test('node:http handed the socket afterwards (then resumed: it does not resume a paused socket itself) parses the request that came in the same write', async (t) => {
    const { client, socket } = await pausedPair(t);
    const http = await import('node:http');
    const server = http.createServer((req, res) => res.end(`${req.method} ${req.url}`));
    t.after(() => server.close());
    client.write(Buffer.concat([encodeProxyV2({ address: '10.0.0.1', port: 1 }, { address: '10.0.0.2', port: 80 }), latin1('GET /after-header HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')]));
    await readProxyHeader(socket, { timeoutMs: 5000 });
    server.emit('connection', socket);
    socket.resume();
    const answer = await new Promise<string>((resolve) => {
      let text = '';
      client.on('data', (d: Buffer) => (text += d.toString()));
      client.on('end', () => resolve(text));
    });
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nGET \/after-header$/);
  });

  test('no header in time: rejects with timeout, leaves no listener or timer, does not destroy the socket', async (t) => {
    const { client, socket } = await pausedPair(t);
    const before = listenerCounts(socket);
    const timersBefore = timers();
    client.write('PROXY TCP4 ');
    const started = Date.now();
    // The wait is the point: 100 ms is the timeout under test.
    const err = await rejection(readProxyHeader(socket, { timeoutMs: 100 }));
    assert.equal(err.reason, 'timeout');
    assert.ok(Date.now() - started >= 90, 'not before the timeout');
    assert.deepEqual(listenerCounts(socket), before);
    assert.equal(timers(), timersBefore);
    assert.equal(socket.destroyed, false);
    assert.equal(socket.isPaused(), true);
  });

  test('the client closes mid-header: rejects with closed (also on a half-open acceptor like the listener)', async (t) => {
    for (const allowHalfOpen of [false, true]) {
      const { client, socket } = await pausedPair(t, { allowHalfOpen });
      const before = listenerCounts(socket);
      const timersBefore = timers();
      const reading = readProxyHeader(socket, { timeoutMs: 5000 });
      client.end(encodeProxyV2({ address: '10.0.0.1', port: 1 }, { address: '10.0.0.2', port: 2 }).subarray(0, 20));
      const err = await rejection(reading);
      assert.equal(err.reason, 'closed', `allowHalfOpen ${allowHalfOpen}`);
      assert.deepEqual(listenerCounts(socket), before);
      assert.equal(timers(), timersBefore);
    }
  });

  test('a reset or a destroy by the caller mid-header rejects with closed; an already closed socket too', async (t) => {
    const reset = await pausedPair(t);
    const resetReading = readProxyHeader(reset.socket, { timeoutMs: 5000 });
    reset.client.write('PROXY ');
    await eventually(() => reset.socket.bytesRead === 6);
    reset.client.resetAndDestroy();
    assert.equal((await rejection(resetReading)).reason, 'closed');

    const destroyed = await pausedPair(t);
    const before = listenerCounts(destroyed.socket);
    const destroyedReading = readProxyHeader(destroyed.socket, { timeoutMs: 5000 });
    destroyed.socket.destroy();
    assert.equal((await rejection(destroyedReading)).reason, 'closed');
    assert.deepEqual(listenerCounts(destroyed.socket), before);
    assert.equal((await rejection(readProxyHeader(destroyed.socket, { timeoutMs: 5000 }))).reason, 'closed');
  });

  test('malformed, too large and unsupported headers reject with their reason at once, the socket kept for the caller', async (t) => {
    const cases: [Buffer, ProxyRefusal][] = [
      [latin1('GET / HTTP/1.1\r\n'), 'malformed'],
      [v2(0x21, 0x11, Buffer.alloc(0), 5000), 'too_large'],
      [v2(0x31, 0x11, ipv4Block), 'unsupported'],
    ];
    for (const [bytes, reason] of cases) {
      const { client, socket } = await pausedPair(t);
      const before = listenerCounts(socket);
      client.write(bytes);
      // A timeout far away: a too_large header must not wait for its bytes.
      const err = await rejection(readProxyHeader(socket, { timeoutMs: 30_000 }));
      assert.equal(err.reason, reason);
      assert.deepEqual(listenerCounts(socket), before);
      assert.equal(socket.destroyed, false);
    }
  });

  test('bad options throw a RangeError before anything is read', async (t) => {
    const { socket } = await pausedPair(t);
    assert.throws(() => readProxyHeader(socket, { timeoutMs: 0 }), RangeError);
    assert.throws(() => readProxyHeader(socket, { timeoutMs: Number.NaN }), RangeError);
    assert.throws(() => readProxyHeader(socket, { timeoutMs: 100, maxBytes: 8 }), RangeError);
    assert.equal(socket.listenerCount('data'), 0);
  });
});

describe('interop with HAProxy', { skip: haproxySkip(), timeout: 30_000 }, () => {
  /**
   * HAProxy in front of a Node server that reads headers with readProxyHeader: `sender` and
   * `senderV1` relay a plain client with send-proxy-v2 (CRC32C, UNIQUE_ID, AUTHORITY) and
   * send-proxy; `receiver` takes a header we encode (accept-proxy) and relays it with
   * send-proxy-v2, so what arrives is what HAProxy understood of ours.
   */
  async function setup(t: TestContext) {
    const arrivals: { header: ProxyHeader; payload: Buffer }[] = [];
    const sockets: net.Socket[] = [];
    const node = net.createServer({ pauseOnConnect: true }, (socket) => {
      sockets.push(socket);
      socket.on('error', () => {});
      readProxyHeader(socket, { timeoutMs: 5000 }).then(
        async (header) => arrivals.push({ header, payload: await readBytes(socket, 7) }),
        (err: Error) => arrivals.push({ header: { error: err.message } as unknown as ProxyHeader, payload: Buffer.alloc(0) }),
      );
    });
    await new Promise<void>((resolve) => node.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      node.close(() => resolve());
    }));
    const nodePort = (node.address() as AddressInfo).port;
    const [sender, senderV1, receiver] = [await freePort(), await freePort(), await freePort()];
    const config = [
      'global',
      '  maxconn 100',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 10s',
      '  timeout server 10s',
      'frontend sender',
      `  bind 127.0.0.1:${sender}`,
      '  unique-id-format abc-%ci-%cp',
      '  default_backend v2',
      'frontend sender_v1',
      `  bind 127.0.0.1:${senderV1}`,
      '  default_backend v1',
      'frontend receiver',
      `  bind 127.0.0.1:${receiver} accept-proxy`,
      '  unique-id-format abc-%ci-%cp',
      '  default_backend v2',
      'backend v2',
      `  server node 127.0.0.1:${nodePort} send-proxy-v2 proxy-v2-options crc32c,unique-id,authority`,
      'backend v1',
      `  server node 127.0.0.1:${nodePort} send-proxy`,
      '',
    ].join('\n');
    await startHaproxy(t, config);
    const send = async (port: number, bytes: Buffer): Promise<{ header: ProxyHeader; payload: Buffer; client: net.Socket }> => {
      const count = arrivals.length;
      const client = net.connect(port, '127.0.0.1');
      client.on('error', () => {});
      t.after(() => client.destroy());
      await new Promise<void>((resolve) => client.once('connect', resolve));
      client.write(bytes);
      await eventually(() => arrivals.length > count, { what: 'a connection through HAProxy' });
      return { ...arrivals[count], client };
    };
    return { sender, senderV1, receiver, send };
  }

  test('headers HAProxy sends (v2 with CRC32C and UNIQUE_ID, v1) parse to the client it relayed', async (t) => {
    const { sender, senderV1, send } = await setup(t);
    const v2got = await send(sender, latin1('payload'));
    assert.equal(v2got.header.version, 2, JSON.stringify(v2got.header));
    assert.deepEqual(v2got.header.source, { address: '127.0.0.1', port: v2got.client.localPort });
    assert.deepEqual(v2got.header.destination, { address: '127.0.0.1', port: sender });
    assert.ok(v2got.header.tlvs.some((tlv) => tlv.type === PP2_TYPE.CRC32C), 'HAProxy sent a checksum, and it verified');
    assert.equal(v2got.header.tlvs.find((tlv) => tlv.type === PP2_TYPE.UNIQUE_ID)?.value.toString(), `abc-127.0.0.1-${v2got.client.localPort}`);
    assert.equal(v2got.payload.toString(), 'payload');

    const v1got = await send(senderV1, latin1('payload'));
    assert.equal(v1got.header.version, 1);
    assert.deepEqual(v1got.header.source, { address: '127.0.0.1', port: v1got.client.localPort });
    assert.deepEqual(v1got.header.destination, { address: '127.0.0.1', port: senderV1 });
    assert.equal(v1got.payload.toString(), 'payload');
  });

  test('headers we encode (v1, v2 with TLVs and CRC32C, IPv4 and IPv6) are accepted by HAProxy and carry the same client', async (t) => {
    const { receiver, send } = await setup(t);
    const v4 = { address: '203.0.113.7', port: 4242 };
    const v4to = { address: '198.51.100.1', port: 443 };
    const v6 = { address: '2001:db8::7', port: 1 };
    const v6to = { address: '2001:db8::1', port: 8443 };
    const cases: [string, Buffer, ProxyAddress, ProxyAddress, string | null][] = [
      ['v1 TCP4', encodeProxyV1(v4, v4to), v4, v4to, null],
      ['v1 TCP6', encodeProxyV1(v6, v6to), v6, v6to, null],
      ['v2 IPv4 with AUTHORITY, ALPN and CRC32C', encodeProxyV2(v4, v4to, { authority: 'a.example', alpn: 'h2', crc32c: true }), v4, v4to, 'a.example'],
      ['v2 IPv6', encodeProxyV2(v6, v6to, { authority: 'b.example' }), v6, v6to, 'b.example'],
    ];
    for (const [name, encoded, source, destination, authority] of cases) {
      const got = await send(receiver, Buffer.concat([encoded, latin1('payload')]));
      assert.deepEqual(got.header.source, source, `${name}: ${JSON.stringify(got.header)}`);
      assert.deepEqual(got.header.destination, destination, name);
      assert.equal(got.header.authority, authority, name);
      assert.equal(got.payload.toString(), 'payload', name);
    }
  });
});
