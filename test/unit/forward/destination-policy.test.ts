import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  capLookups,
  ForwardPolicy,
  hostPatternProblem,
  isSpecialPurposeAddress,
  parseCidrText,
  parsePortSpec,
  type ForwardDecision,
  type ForwardPolicySettings,
  type ForwardResolver,
} from '../../../src/forward/destination-policy.ts';

/** A resolver answering from a table, counting its calls per name. */
function fakeResolver(table: Record<string, string[]>): ForwardResolver & { calls: string[] } {
  const calls: string[] = [];
  const resolve = async (host: string) => {
    calls.push(host);
    const addresses = table[host];
    if (addresses === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return Object.assign(resolve, { calls });
}

function policy(settings: ForwardPolicySettings, table: Record<string, string[]> = {}) {
  const resolver = fakeResolver(table);
  return { policy: new ForwardPolicy(settings, resolver), resolver };
}

function assertAllowed(decision: ForwardDecision, address: string, rule?: string): void {
  assert.equal(decision.allowed, true, `expected allowed, got ${JSON.stringify(decision)}`);
  if (!decision.allowed) return;
  assert.equal(decision.address, address);
  if (rule !== undefined) assert.equal(decision.rule, rule);
}

function assertDenied(decision: ForwardDecision, reason: string, rule?: string | null): void {
  assert.equal(decision.allowed, false, `expected denied (${reason}), got ${JSON.stringify(decision)}`);
  if (decision.allowed) return;
  assert.equal(decision.reason, reason, decision.detail);
  if (rule !== undefined) assert.equal(decision.rule, rule);
}

// ---------------------------------------------------------------------------------------------
// isSpecialPurposeAddress

test('isSpecialPurposeAddress: one address inside every special-purpose range, by name', () => {
  const inside: [string, string][] = [
    ['0.0.0.0', 'this-network'],
    ['0.255.255.255', 'this-network'],
    ['10.1.2.3', 'private'],
    ['100.64.0.1', 'shared-address-space'],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['169.254.169.254', 'link-local'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.0.0.8', 'ietf-protocol-assignments'],
    ['192.0.2.10', 'documentation'],
    ['192.88.99.1', '6to4-relay-anycast'],
    ['192.168.1.1', 'private'],
    ['198.18.0.1', 'benchmarking'],
    ['198.19.255.255', 'benchmarking'],
    ['198.51.100.7', 'documentation'],
    ['203.0.113.9', 'documentation'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.254', 'reserved'],
    ['255.255.255.255', 'limited-broadcast'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['64:ff9b::8.8.8.8', 'nat64'],
    ['64:ff9b:1::1', 'nat64-local'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::FFFF:10.0.0.1', 'private'],
    ['0:0:0:0:0:ffff:a9fe:a9fe', 'link-local'],
    ['::1.2.3.4', 'ipv4-compatible'],
    ['::2', 'ipv4-compatible'],
    ['100::1', 'discard-only'],
    ['2001::1', 'ietf-protocol-assignments'],
    ['2001:1ff:ffff::1', 'ietf-protocol-assignments'],
    ['2001:db8::1', 'documentation'],
    ['2002:808:808::1', '6to4'],
    ['3fff::1', 'documentation'],
    ['5f00::1', 'srv6-sids'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456::1', 'unique-local'],
    ['fe80::1', 'link-local'],
    ['febf:ffff::1', 'link-local'],
    ['fec0::1', 'site-local'],
    ['feff::1', 'site-local'],
    ['ff02::1', 'multicast'],
    ['FF05::1:3', 'multicast'],
  ];
  for (const [address, name] of inside) assert.equal(isSpecialPurposeAddress(address), name, address);
});

test('isSpecialPurposeAddress: public addresses and the edges just outside the ranges are null', () => {
  const outside = [
    '1.0.0.0',
    '8.8.8.8',
    '9.255.255.255',
    '11.0.0.0',
    '100.63.255.255',
    '100.128.0.0',
    '126.255.255.255',
    '128.0.0.0',
    '169.253.255.255',
    '169.255.0.0',
    '172.15.255.255',
    '172.32.0.0',
    '192.0.1.0',
    '192.0.3.0',
    '192.167.255.255',
    '192.169.0.0',
    '198.17.255.255',
    '198.20.0.0',
    '198.51.101.0',
    '203.0.112.255',
    '223.255.255.255',
    '::ffff:8.8.8.8',
    '::1:0:0',
    '64:ff9b:0:0:1::',
    '100:0:0:1::',
    '2001:200::',
    '2001:db9::',
    '2003::1',
    '2606:4700::1111',
    '3fff:1000::',
    '5eff:ffff::1',
    'fbff:ffff::1',
    'fe00::1',
    'fe7f:ffff::1',
  ];
  for (const address of outside) assert.equal(isSpecialPurposeAddress(address), null, address);
});

test('isSpecialPurposeAddress: text that is not an address is null, not a throw', () => {
  for (const text of ['', 'example.com', '127.1', 'fe80::1%eth0', '1.2.3.4.5', '::g']) assert.equal(isSpecialPurposeAddress(text), null, text);
});

// ---------------------------------------------------------------------------------------------
// Literal forms and localhost, through the real resolver

// These spellings reach getaddrinfo, which (glibc's inet_aton) reads them as 127.0.0.1 or 0.0.0.0.
const LOOPBACK_SPELLINGS = ['127.1', '0x7f.0.0.1', '2130706433', '0177.0.0.1', '017700000001', '0x7f000001', '127.0.0.1', '127.000.000.001'];

test('literal spellings of loopback are denied as special addresses (real resolver)', async () => {
  const forward = new ForwardPolicy({ rules: [{ name: 'web', action: 'allow' }] });
  for (const host of LOOPBACK_SPELLINGS) {
    const decision = await forward.decide(host, 80);
    assertDenied(decision, 'special_address', 'web');
    assert.match((decision as { detail: string }).detail, /127\.0\.0\.1 is loopback/, host);
  }
});

test('the same spellings are allowed by an explicit loopback CIDR, at the address that was checked (real resolver)', async () => {
  const forward = new ForwardPolicy({ rules: [{ name: 'test', action: 'allow', cidrs: ['127.0.0.1/32'] }] });
  for (const host of LOOPBACK_SPELLINGS) assertAllowed(await forward.decide(host, 80), '127.0.0.1', 'test');
});

test('IPv6 and unspecified literals of this host are denied (real resolver)', async () => {
  const forward = new ForwardPolicy({ rules: [{ action: 'allow' }] });
  const cases: [string, RegExp][] = [
    ['::ffff:127.0.0.1', /127\.0\.0\.1 is loopback/],
    ['::FFFF:7f00:1', /127\.0\.0\.1 is loopback/],
    ['::1', /::1 is loopback/],
    ['0:0:0:0:0:0:0:1', /::1 is loopback/],
    ['::', /:: is unspecified/],
    ['0', /0\.0\.0\.0 is this-network/],
    ['0.0.0.0', /0\.0\.0\.0 is this-network/],
  ];
  for (const [host, detail] of cases) {
    const decision = await forward.decide(host, 443);
    assertDenied(decision, 'special_address', 'rules[0]');
    assert.match((decision as { detail: string }).detail, detail, host);
  }
});

test('an IPv4-mapped literal allowed by a CIDR is connected to as plain IPv4', async () => {
  const forward = new ForwardPolicy({ rules: [{ action: 'allow', cidrs: ['127.0.0.1'] }] });
  const decision = await forward.decide('::ffff:127.0.0.1', 80);
  assertAllowed(decision, '127.0.0.1');
  assert.equal(decision.allowed && decision.family, 4);
});

test('localhost in any case, with a trailing dot or as a subdomain, is loopback without DNS', async () => {
  let calls = 0;
  const forward = new ForwardPolicy({ rules: [{ action: 'allow' }] }, async () => {
    calls++;
    return [{ address: '93.184.216.34', family: 4 }];
  });
  for (const host of ['localhost', 'LOCALHOST.', 'LocalHost', 'api.localhost', 'A.LOCALHOST.']) {
    const decision = await forward.decide(host, 80);
    assertDenied(decision, 'special_address');
    assert.match((decision as { detail: string }).detail, /127\.0\.0\.1 is loopback/, host);
  }
  assert.equal(calls, 0, 'localhost names never reach the resolver, whatever it would answer');

  const tests = new ForwardPolicy({ rules: [{ action: 'allow', hosts: ['localhost'], cidrs: ['::1/128'] }] });
  const v6 = await tests.decide('LOCALHOST.', 80);
  assertAllowed(v6, '::1');
  assert.equal(v6.allowed && v6.family, 6);
});

test('bracketed IPv6 literals are refused: the caller strips the brackets', async () => {
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow' }] });
  assertDenied(await forward.decide('[::ffff:127.0.0.1]', 80), 'bad_host', null);
  assertDenied(await forward.decide('[::1]', 80), 'bad_host', null);
  assert.equal(resolver.calls.length, 0);
});

test('public IP literals are allowed without the resolver, IPv6 in canonical form', async () => {
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow' }] });
  const v4 = await forward.decide('8.8.8.8', 443);
  assertAllowed(v4, '8.8.8.8', 'rules[0]');
  assert.deepEqual(v4, { allowed: true, rule: 'rules[0]', address: '8.8.8.8', family: 4, host: '8.8.8.8', port: 443 });
  const v6 = await forward.decide('2001:4860:4860:0:0:0:0:8888', 443);
  assert.deepEqual(v6, { allowed: true, rule: 'rules[0]', address: '2001:4860:4860::8888', family: 6, host: '2001:4860:4860::8888', port: 443 });
  assert.equal(resolver.calls.length, 0);
});

// ---------------------------------------------------------------------------------------------
// Bad hosts

test('bad hosts are refused before any lookup', async () => {
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow' }] });
  const bad = [
    '',
    'a b',
    'user@example.com',
    'example.com:80',
    'fe80::1%eth0',
    'fe80::1%25eth0',
    'example%2ecom',
    'a..b',
    '.example.com',
    'example.com..',
    'exa/mple.com',
    'exämple.com',
    'a\r\nb',
    'a\0b',
    '*.example.com',
    `${'a'.repeat(64)}.com`,
    `${'a.'.repeat(127)}ab`,
    '::g',
    '1:2:3:4:5:6:7:8:9',
  ];
  for (const host of bad) assertDenied(await forward.decide(host, 80), 'bad_host', null);
  assert.equal(resolver.calls.length, 0, `resolver called for ${resolver.calls.join(', ')}`);
});

test('the longest acceptable names and odd but valid characters do reach the resolver', async () => {
  const longest = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`;
  assert.equal(longest.length, 253);
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow' }] }, { [longest]: ['1.1.1.1'], 'under_score.example': ['1.1.1.2'], [`${longest}.`]: ['1.1.1.3'] });
  assertAllowed(await forward.decide(longest, 80), '1.1.1.1');
  assertAllowed(await forward.decide('under_score.example', 80), '1.1.1.2');
  assertAllowed(await forward.decide(`${longest}.`, 80), '1.1.1.3');
  assertDenied(await forward.decide(`${longest}x`, 80), 'bad_host');
  assert.deepEqual(resolver.calls, [longest, 'under_score.example', `${longest}.`]);
});

// ---------------------------------------------------------------------------------------------
// Host patterns

test('wildcards match any depth below the domain, never the domain itself or look-alikes', async () => {
  const names = ['sub.example.com', 'a.b.example.com', 'SUB.Example.COM.', 'example.com', 'badexample.com', 'example.com.evil.test', 'sub.example.com.evil', 'example.co', 'xexample.com'];
  const table = Object.fromEntries(names.map((n) => [n, ['93.184.216.34']]));
  const { policy: forward } = policy({ rules: [{ name: 'wild', action: 'allow', hosts: ['*.Example.com.'] }] }, table);
  const allowed: string[] = [];
  for (const name of names) if ((await forward.decide(name, 443)).allowed) allowed.push(name);
  assert.deepEqual(allowed, ['sub.example.com', 'a.b.example.com', 'SUB.Example.COM.']);
});

test('exact names ignore case and a trailing dot, on either side', async () => {
  const table = { 'Example.COM.': ['93.184.216.34'], 'example.com': ['93.184.216.34'], 'www.example.com': ['93.184.216.34'] };
  const { policy: forward } = policy({ rules: [{ action: 'allow', hosts: ['EXAMPLE.com.'] }] }, table);
  assertAllowed(await forward.decide('Example.COM.', 443), '93.184.216.34');
  assertAllowed(await forward.decide('example.com', 443), '93.184.216.34');
  assertDenied(await forward.decide('www.example.com', 443), 'no_rule', null);
});

test('an IPv6 literal pattern matches every spelling of the address', async () => {
  const { policy: forward } = policy({ rules: [{ action: 'allow', hosts: ['2001:4860:4860::8888'] }] });
  assertAllowed(await forward.decide('2001:4860:4860:0:0:0:0:8888', 443), '2001:4860:4860::8888');
  assertDenied(await forward.decide('2001:4860:4860::8844', 443), 'no_rule');
});

test('bad host patterns are refused when the policy is built', () => {
  for (const pattern of ['*', '*example.com', 'a.*.com', '*.*.example.com', '**.example.com', 'foo bar', '*.', '*.10.0.0.1', 'exa%mple.com', '']) {
    assert.notEqual(hostPatternProblem(pattern), undefined, pattern);
    assert.throws(() => new ForwardPolicy({ rules: [{ name: 'r', action: 'allow', hosts: [pattern] }] }), /forward policy r: hosts/, pattern);
  }
  for (const pattern of ['example.com', '*.example.com', 'EXAMPLE.com.', '10.0.0.1', '::1', 'localhost']) assert.equal(hostPatternProblem(pattern), undefined, pattern);
});

// ---------------------------------------------------------------------------------------------
// Ports

test('without ports a rule allows 80 and 443 only; other ports are refused as "port"', async () => {
  const { policy: forward } = policy({ rules: [{ action: 'allow' }] });
  assertAllowed(await forward.decide('8.8.8.8', 80), '8.8.8.8');
  assertAllowed(await forward.decide('8.8.8.8', 443), '8.8.8.8');
  for (const port of [22, 81, 442, 444, 8080]) {
    const decision = await forward.decide('8.8.8.8', port);
    assertDenied(decision, 'port', null);
    assert.match((decision as { detail: string }).detail, /rules\[0\] allows ports 80, 443/);
  }
});

test('port ranges include both ends and nothing beyond', async () => {
  const { policy: forward } = policy({ rules: [{ action: 'allow', ports: ['8000-8999', 22, '443'] }] });
  const allowed: number[] = [];
  for (const port of [21, 22, 23, 80, 443, 7999, 8000, 8500, 8999, 9000]) if ((await forward.decide('8.8.8.8', port)).allowed) allowed.push(port);
  assert.deepEqual(allowed, [22, 443, 8000, 8500, 8999]);
});

test('ports outside 1-65535 are refused without a lookup', async () => {
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow', ports: ['1-65535'] }] }, { 'a.test': ['8.8.8.8'] });
  for (const port of [0, -1, 65536, 1.5, Number.NaN]) assertDenied(await forward.decide('a.test', port), 'port', null);
  assertAllowed(await forward.decide('a.test', 65535), '8.8.8.8');
  assertAllowed(await forward.decide('a.test', 1), '8.8.8.8');
  assert.equal(resolver.calls.length, 2);
});

test('parsePortSpec: numbers and ranges within 1-65535', () => {
  assert.deepEqual(parsePortSpec(443), { low: 443, high: 443 });
  assert.deepEqual(parsePortSpec('443'), { low: 443, high: 443 });
  assert.deepEqual(parsePortSpec('8000-8999'), { low: 8000, high: 8999 });
  assert.deepEqual(parsePortSpec(' 1 - 65535 '), { low: 1, high: 65535 });
  for (const bad of [0, 65536, 1.5, -1, '0', '65536', '9000-8000', 'abc', '80,443', '80-', '-80', '', '1-2-3', '0x50']) assert.equal(parsePortSpec(bad), null, String(bad));
  for (const bad of [0, '9000-8000', 'http']) assert.throws(() => new ForwardPolicy({ rules: [{ action: 'allow', ports: [bad] }] }), /ports/, String(bad));
});

test('bad CIDRs are refused when the policy is built', () => {
  for (const bad of ['10.0.0.0/33', '::/129', 'fe80::1%eth0/64', 'example.com', '10.0.0.0/8/8', '10.0.0.0/x', '']) {
    assert.equal(parseCidrText(bad), null, bad);
    assert.throws(() => new ForwardPolicy({ rules: [{ action: 'allow', cidrs: [bad] }] }), /cidrs/, bad);
  }
  assert.deepEqual(parseCidrText('::ffff:10.0.0.0/104'), { network: '10.0.0.0', prefix: 8, family: 'ipv4' });
  assert.deepEqual(parseCidrText('10.1.2.3'), { network: '10.1.2.3', prefix: 32, family: 'ipv4' });
});

// ---------------------------------------------------------------------------------------------
// Order and deny rules

test('the first matching rule decides: deny before allow denies, allow before deny allows', async () => {
  const table = { 'a.test': ['93.184.216.34'], 'b.test': ['93.184.216.35'] };
  const denyFirst = policy({ rules: [{ name: 'no-a', action: 'deny', hosts: ['a.test'] }, { name: 'all', action: 'allow' }] }, table);
  assertDenied(await denyFirst.policy.decide('a.test', 443), 'denied_by_rule', 'no-a');
  assertAllowed(await denyFirst.policy.decide('b.test', 443), '93.184.216.35', 'all');
  assert.deepEqual(denyFirst.resolver.calls, ['b.test'], 'a deny rule without cidrs decides before any lookup');

  const allowFirst = policy({ rules: [{ name: 'all', action: 'allow' }, { name: 'no-a', action: 'deny', hosts: ['a.test'] }] }, table);
  assertAllowed(await allowFirst.policy.decide('a.test', 443), '93.184.216.34', 'all');
});

test('a rule that does not match the port is skipped for the next one', async () => {
  const table = { 'a.test': ['93.184.216.34'] };
  const { policy: forward } = policy({ rules: [{ name: 'deny-ssh', action: 'deny', ports: [22] }, { name: 'web', action: 'allow' }, { name: 'ssh-a', action: 'allow', hosts: ['a.test'], ports: [22, 2222] }] }, table);
  assertAllowed(await forward.decide('a.test', 443), '93.184.216.34', 'web');
  assertDenied(await forward.decide('a.test', 22), 'denied_by_rule', 'deny-ssh');
  assertAllowed(await forward.decide('a.test', 2222), '93.184.216.34', 'ssh-a');
});

test('a deny rule with cidrs denies by resolved address, and lets other addresses on', async () => {
  const table = { 'blocked.test': ['93.184.216.34'], 'fine.test': ['1.1.1.1'] };
  const { policy: forward } = policy({ rules: [{ name: 'no-block', action: 'deny', cidrs: ['93.184.216.0/24'] }, { name: 'all', action: 'allow' }] }, table);
  assertDenied(await forward.decide('blocked.test', 443), 'denied_by_rule', 'no-block');
  assertDenied(await forward.decide('93.184.216.1', 443), 'denied_by_rule', 'no-block');
  assertAllowed(await forward.decide('fine.test', 443), '1.1.1.1', 'all');
});

test('no rules, or no rule for the host, is "no_rule" without a lookup', async () => {
  const empty = policy({ rules: [] }, { 'a.test': ['1.1.1.1'] });
  assertDenied(await empty.policy.decide('a.test', 443), 'no_rule', null);
  const other = policy({ rules: [{ action: 'allow', hosts: ['b.test'] }] }, { 'a.test': ['1.1.1.1'] });
  assertDenied(await other.policy.decide('a.test', 443), 'no_rule', null);
  assert.equal(empty.resolver.calls.length + other.resolver.calls.length, 0);
});

test('an allow rule with cidrs matches only addresses inside them', async () => {
  const table = { 'in.test': ['93.184.216.34'], 'out.test': ['1.1.1.1'] };
  const { policy: forward } = policy({ rules: [{ name: 'net', action: 'allow', cidrs: ['93.184.216.0/24'] }] }, table);
  assertAllowed(await forward.decide('in.test', 443), '93.184.216.34', 'net');
  assertDenied(await forward.decide('out.test', 443), 'no_rule', null);
});

// ---------------------------------------------------------------------------------------------
// Special-purpose addresses behind names

test('a rule with only hosts never reaches a private address its name resolves to', async () => {
  const { policy: forward } = policy({ rules: [{ name: 'rebind', action: 'allow', hosts: ['rebind.test'] }] }, { 'rebind.test': ['127.0.0.1'] });
  const decision = await forward.decide('rebind.test', 80);
  assertDenied(decision, 'special_address', 'rebind');
  assert.match((decision as { detail: string }).detail, /127\.0\.0\.1 is loopback \(127\.0\.0\.0\/8\)/);
});

test('special addresses need a CIDR inside their range: /32 and /8 do, 0.0.0.0/0 and a neighbour do not', async () => {
  const table = { 'rebind.test': ['127.0.0.1'] };
  const decide = (cidrs: string[]) => policy({ rules: [{ name: 'r', action: 'allow', cidrs }] }, table).policy.decide('rebind.test', 80);
  assertAllowed(await decide(['127.0.0.1/32']), '127.0.0.1', 'r');
  assertAllowed(await decide(['127.0.0.0/8']), '127.0.0.1', 'r');
  assertAllowed(await decide(['::ffff:127.0.0.1/128']), '127.0.0.1', 'r');
  assertDenied(await decide(['0.0.0.0/0']), 'special_address', 'r');
  assertDenied(await decide(['126.0.0.0/7']), 'special_address', 'r');
  assertDenied(await decide(['::/0']), 'special_address', 'r');
  assertDenied(await decide(['10.0.0.0/8']), 'no_rule', null);
});

test('an explicit private allow works wherever it sits in the list; a host-only deny still beats it', async () => {
  const table = { 'internal.test': ['10.1.2.3'], 'x.evil.test': ['127.0.0.1'] };
  const { policy: forward, resolver } = policy(
    {
      rules: [
        { name: 'no-evil', action: 'deny', hosts: ['*.evil.test'] },
        { name: 'web', action: 'allow' },
        { name: 'internal', action: 'allow', hosts: ['internal.test'], cidrs: ['10.0.0.0/8'] },
        { name: 'tests', action: 'allow', cidrs: ['127.0.0.1/32'] },
      ],
    },
    table,
  );
  assertAllowed(await forward.decide('internal.test', 443), '10.1.2.3', 'internal');
  assertDenied(await forward.decide('x.evil.test', 80), 'denied_by_rule', 'no-evil');
  assert.deepEqual(resolver.calls, ['internal.test']);
});

test('an IPv4-mapped answer is checked and returned as the IPv4 address it carries', async () => {
  const table = { 'mapped.test': ['::ffff:10.0.0.1'] };
  assertDenied(await policy({ rules: [{ action: 'allow' }] }, table).policy.decide('mapped.test', 80), 'special_address');
  const decision = await policy({ rules: [{ action: 'allow', cidrs: ['10.0.0.0/8'] }] }, table).policy.decide('mapped.test', 80);
  assertAllowed(decision, '10.0.0.1');
  assert.equal(decision.allowed && decision.family, 4);
});

test('NAT64 and 6to4 answers are checked for the IPv4 address they carry too', async () => {
  const table = { 'nat64-loop.test': ['64:ff9b::7f00:1'], 'nat64-public.test': ['64:ff9b::808:808'], '6to4-loop.test': ['2002:7f00:1::1'] };
  const nat64Only = policy({ rules: [{ name: 'nat64', action: 'allow', cidrs: ['64:ff9b::/96'] }] }, table).policy;
  assertAllowed(await nat64Only.decide('nat64-public.test', 443), '64:ff9b::808:808', 'nat64');
  const loop = await nat64Only.decide('nat64-loop.test', 443);
  assertDenied(loop, 'special_address', 'nat64');
  assert.match((loop as { detail: string }).detail, /127\.0\.0\.1 is loopback/);

  const both = policy({ rules: [{ action: 'allow', cidrs: ['64:ff9b::/96', '127.0.0.1/32'] }] }, table).policy;
  assertAllowed(await both.decide('nat64-loop.test', 443), '64:ff9b::7f00:1');

  const noCidrs = policy({ rules: [{ action: 'allow' }] }, table).policy;
  assertDenied(await noCidrs.decide('nat64-public.test', 443), 'special_address');
  const sixToFour = await noCidrs.decide('6to4-loop.test', 443);
  assertDenied(sixToFour, 'special_address');
  assert.match((sixToFour as { detail: string }).detail, /is 6to4 .*127\.0\.0\.1 is loopback/);

  const denyLoopback = policy({ rules: [{ name: 'no-loop', action: 'deny', cidrs: ['127.0.0.0/8'] }, { action: 'allow', cidrs: ['64:ff9b::/96', '127.0.0.1/32'] }] }, table).policy;
  assertDenied(await denyLoopback.decide('nat64-loop.test', 443), 'denied_by_rule', 'no-loop');
});

// ---------------------------------------------------------------------------------------------
// One lookup per decision (DNS rebinding)

test('a name answering public then private: the public address is returned, the resolver asked once', async () => {
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow' }] }, { 'rebind.test': ['93.184.216.34', '127.0.0.1'] });
  const decision = await forward.decide('rebind.test', 80);
  assert.deepEqual(decision, { allowed: true, rule: 'rules[0]', address: '93.184.216.34', family: 4, host: 'rebind.test', port: 80 });
  assert.equal(resolver.calls.length, 1);
});

test('a name answering private then public: the first allowed address wins, in resolver order', async () => {
  const { policy: forward, resolver } = policy({ rules: [{ action: 'allow' }] }, { 'rebind.test': ['127.0.0.1', '10.0.0.1', '93.184.216.34', '1.1.1.1'] });
  assertAllowed(await forward.decide('rebind.test', 80), '93.184.216.34');
  assert.equal(resolver.calls.length, 1);
});

test('a name answering only special addresses is refused with the first address\'s reason', async () => {
  const { policy: forward } = policy({ rules: [{ action: 'allow' }] }, { 'inside.test': ['10.0.0.1', '127.0.0.1'] });
  const decision = await forward.decide('inside.test', 80);
  assertDenied(decision, 'special_address');
  assert.match((decision as { detail: string }).detail, /10\.0\.0\.1 is private/);
});

test('each decision looks the name up once and anew', async () => {
  const answers = [['93.184.216.34'], ['127.0.0.1']];
  let calls = 0;
  const forward = new ForwardPolicy({ rules: [{ action: 'allow' }] }, async () => [{ address: answers[Math.min(calls++, 1)][0], family: 4 }]);
  assertAllowed(await forward.decide('flip.test', 80), '93.184.216.34');
  assertDenied(await forward.decide('flip.test', 80), 'special_address');
  assert.equal(calls, 2);
});

// ---------------------------------------------------------------------------------------------
// Lookup failures

test('lookup failures, empty answers and non-addresses are "resolve_failed"', async () => {
  const { policy: forward } = policy({ rules: [{ action: 'allow' }] }, { 'empty.test': [], 'junk.test': ['not-an-address'] });
  const missing = await forward.decide('missing.test', 80);
  assertDenied(missing, 'resolve_failed', null);
  assert.match((missing as { detail: string }).detail, /ENOTFOUND/);
  assertDenied(await forward.decide('empty.test', 80), 'resolve_failed', null);
  assertDenied(await forward.decide('junk.test', 80), 'resolve_failed', null);

  const throwing = new ForwardPolicy({ rules: [{ action: 'allow' }] }, () => {
    throw new Error('resolver bug');
  });
  const bug = await throwing.decide('a.test', 80);
  assertDenied(bug, 'resolve_failed', null);
  assert.match((bug as { detail: string }).detail, /resolver bug/);
});

test('a lookup that never answers is "resolve_failed" after the resolve timeout', async () => {
  const forward = new ForwardPolicy({ rules: [{ action: 'allow' }] }, () => new Promise(() => {}), { resolveTimeout: 50 });
  const started = performance.now();
  const decision = await forward.decide('slow.test', 80);
  assertDenied(decision, 'resolve_failed', null);
  assert.match((decision as { detail: string }).detail, /no answer within 50ms/);
  // The wait is the point: the decision must come from the 50 ms deadline, not the 5 s default.
  assert.ok(performance.now() - started < 2000);
});

test('capLookups: at most `running` lookups at once, `waiting` queued, the rest refused at once; places pass on as lookups settle', async () => {
  const pending: (() => void)[] = [];
  let started = 0;
  const slow = (host: string): Promise<{ address: string; family: number }[]> =>
    new Promise((resolve) => {
      started++;
      pending.push(() => resolve([{ address: host === 'a.test' ? '192.0.2.1' : '198.51.100.1', family: 4 }]));
    });
  const capped = capLookups(slow, 2, 1);
  const first = capped('a.test');
  const second = capped('b.test');
  const third = capped('c.test');
  await assert.rejects(capped('d.test'), /over 2 lookups running and 1 waiting/);
  assert.equal(started, 2, 'the third waits for a place');
  pending.shift()!();
  await first;
  await new Promise((r) => setImmediate(r));
  assert.equal(started, 3, 'the first one ending lets the third start');
  pending.shift()!();
  pending.shift()!();
  await Promise.all([second, third]);
  // All places are free again: two more start at once.
  void capped('e.test');
  void capped('f.test');
  await new Promise((r) => setImmediate(r));
  assert.equal(started, 5);
  for (const settle of pending.splice(0)) settle();
});
