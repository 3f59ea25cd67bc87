import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clientFromForwardedFor, isTrusted, normalizeAddress } from '../../../src/core/client-address.ts';
import { compileCidrs } from '../../../src/config/schema.ts';

const trusted = compileCidrs(['10.0.0.0/8', '192.168.1.1', 'fd00::/8']);

test('normalizeAddress: strips the IPv4-mapped IPv6 prefix only', () => {
  assert.equal(normalizeAddress('::ffff:10.0.0.1'), '10.0.0.1');
  assert.equal(normalizeAddress('::ffff:127.0.0.1'), '127.0.0.1');
  assert.equal(normalizeAddress('10.0.0.1'), '10.0.0.1');
  assert.equal(normalizeAddress('::1'), '::1');
  assert.equal(normalizeAddress('::ffff:a00:1'), '::ffff:a00:1');
  assert.equal(normalizeAddress('2001:db8::ffff:1'), '2001:db8::ffff:1');
  assert.equal(normalizeAddress(undefined), '');
  assert.equal(normalizeAddress(''), '');
});

test('isTrusted: inside a trusted CIDR or address, either family', () => {
  assert.equal(isTrusted(trusted, '10.1.2.3'), true);
  assert.equal(isTrusted(trusted, '10.255.255.255'), true);
  assert.equal(isTrusted(trusted, '11.0.0.1'), false);
  assert.equal(isTrusted(trusted, '192.168.1.1'), true);
  assert.equal(isTrusted(trusted, '192.168.1.2'), false);
  assert.equal(isTrusted(trusted, 'fd12::1'), true);
  assert.equal(isTrusted(trusted, 'fe80::1'), false);
  assert.equal(isTrusted(trusted, '::1'), false);
});

test('isTrusted: no list or no address is never trusted', () => {
  assert.equal(isTrusted(null, '10.0.0.1'), false);
  assert.equal(isTrusted(trusted, ''), false);
  assert.equal(isTrusted(compileCidrs([]), '10.0.0.1'), false);
});

test('clientFromForwardedFor: no header gives the peer', () => {
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', undefined), '10.0.0.5');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', ''), '10.0.0.5');
});

test('clientFromForwardedFor: the right-most hop that is not trusted', () => {
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '203.0.113.7'), '203.0.113.7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '203.0.113.7, 10.0.0.9'), '203.0.113.7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '203.0.113.7, 10.0.0.9, 192.168.1.1'), '203.0.113.7');
});

test('clientFromForwardedFor: a spoofed left-most hop is not believed', () => {
  // The client sent "1.1.1.1" itself; the trusted proxy appended the address it saw.
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '1.1.1.1, 198.51.100.2'), '198.51.100.2');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '1.1.1.1, 198.51.100.2, 10.0.0.8'), '198.51.100.2');
});

test('clientFromForwardedFor: every hop trusted gives the left-most', () => {
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '10.0.0.1, 10.0.0.2'), '10.0.0.1');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', 'fd00::1, 10.0.0.2'), 'fd00::1');
});

test('clientFromForwardedFor: ports and brackets are stripped, IPv6 kept whole', () => {
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '203.0.113.7:51234'), '203.0.113.7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '[2001:db8::7]:443'), '2001:db8::7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '[2001:db8::7]'), '2001:db8::7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '2001:db8::7'), '2001:db8::7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '2001:db8::7, [fd00::2]:80'), '2001:db8::7');
});

test('clientFromForwardedFor: IPv4-mapped hops are normalised before the trust check', () => {
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '203.0.113.7, ::ffff:10.0.0.3'), '203.0.113.7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', '::ffff:203.0.113.7'), '203.0.113.7');
});

test('clientFromForwardedFor: empty hops and spaces are skipped', () => {
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', ' 203.0.113.7 ,, 10.0.0.9 , '), '203.0.113.7');
  assert.equal(clientFromForwardedFor(trusted, '10.0.0.5', ' , ,'), '10.0.0.5');
});
