import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_SCRYPT_COST,
  ProxyAuthenticator,
  hashPassword,
  isPasswordHash,
  proxyAuthSettingsProblems,
  type ProxyAuthOptions,
  type ScryptCost,
} from '../../../src/forward/proxy-auth.ts';

/** The smallest cost isPasswordHash takes: keeps these tests fast. Unknown users still pay the default cost. */
const CHEAP: ScryptCost = { N: 1024, r: 8, p: 1 };

function basic(credentials: string | Buffer): string {
  return `Basic ${Buffer.from(credentials).toString('base64')}`;
}

const hashes = {
  alice: await hashPassword('s3cret', CHEAP),
  bob: await hashPassword('pa:ss:word', CHEAP),
  carol: await hashPassword('p\u00e4ssw\u00f6rd', CHEAP),
};

function authenticator(options: ProxyAuthOptions = {}, realm = 'fulcrum') {
  return new ProxyAuthenticator({ realm, users: hashes }, options);
}

/** A clock the test moves by hand (milliseconds). */
function manualClock() {
  const clock = { now: 0, read: () => clock.now };
  return clock;
}

// ---------------------------------------------------------------------------------------------
// Hashes

test('hashPassword writes scrypt$N$r$p$salt$key with a fresh 16-byte salt and a 32-byte key', async () => {
  const first = await hashPassword('correct horse');
  assert.match(first, /^scrypt\$32768\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$/);
  assert.deepEqual(DEFAULT_SCRYPT_COST, { N: 32768, r: 8, p: 1 });
  const second = await hashPassword('correct horse');
  assert.notEqual(first.split('$')[4], second.split('$')[4], 'a new salt each time');
  assert.equal(isPasswordHash(first), true);

  const forward = new ProxyAuthenticator({ realm: 'r', users: { dave: first } });
  assert.deepEqual(await forward.check(basic('dave:correct horse')), { ok: true, user: 'dave' });
  assert.deepEqual(await forward.check(basic('dave:correct horsE')), { ok: false, reason: 'invalid' });
});

test('hashPassword refuses a cost out of bounds', async () => {
  await assert.rejects(hashPassword('x', { N: 512, r: 8, p: 1 }), /out of bounds/);
  await assert.rejects(hashPassword('x', { N: 1000, r: 8, p: 1 }));
});

test('isPasswordHash: only well-formed, bounded scrypt hashes', () => {
  const good = hashes.alice;
  const [, , , , salt, key] = good.split('$');
  assert.equal(isPasswordHash(good), true);
  const bad = [
    '',
    's3cret',
    good.replace('scrypt$', 'bcrypt$'),
    good.replace('scrypt$', 'SCRYPT$'),
    `scrypt$1000$8$1$${salt}$${key}`,
    `scrypt$512$8$1$${salt}$${key}`,
    `scrypt$2097152$8$1$${salt}$${key}`,
    `scrypt$1048576$8$1$${salt}$${key}`,
    `scrypt$1024$0$1$${salt}$${key}`,
    `scrypt$1024$8$0$${salt}$${key}`,
    `scrypt$1024$8$17$${salt}$${key}`,
    `scrypt$1024$8$1$${salt}`,
    `scrypt$1024$8$1$${salt}$${key}$extra`,
    `scrypt$1024$8$1$${Buffer.alloc(8).toString('base64')}$${key}`,
    `scrypt$1024$8$1$${salt}$${Buffer.alloc(8).toString('base64')}`,
    `scrypt$1024$8$1$${salt.replace(/=+$/, '')}$${key}`,
    `scrypt$1024$8$1$${salt}$${key.slice(0, -2)}!=`,
    `scrypt$1e3$8$1$${salt}$${key}`,
    `scrypt$ 1024$8$1$${salt}$${key}`,
  ];
  for (const text of bad) assert.equal(isPasswordHash(text), false, text);
});

// ---------------------------------------------------------------------------------------------
// Checks

test('right credentials pass, with the scheme in any case and spaces around', async () => {
  const forward = authenticator({ cacheSize: 0 });
  const token = Buffer.from('alice:s3cret').toString('base64');
  for (const header of [`Basic ${token}`, `basic ${token}`, `BASIC ${token}`, `Basic   ${token}`, ` Basic ${token} `, `\tBasic ${token}\t`]) {
    assert.deepEqual(await forward.check(header), { ok: true, user: 'alice' }, JSON.stringify(header));
  }
});

test('a password may contain colons: the user id ends at the first one', async () => {
  const forward = authenticator();
  assert.deepEqual(await forward.check(basic('bob:pa:ss:word')), { ok: true, user: 'bob' });
  assert.deepEqual(await forward.check(basic('bob:pa')), { ok: false, reason: 'invalid' });
});

test('UTF-8 passwords are compared after NFC normalisation', async () => {
  const forward = authenticator({ cacheSize: 0 });
  const composed = 'carol:p\u00e4ssw\u00f6rd';
  const decomposed = 'carol:pa\u0308sswo\u0308rd';
  assert.deepEqual(await forward.check(basic(composed)), { ok: true, user: 'carol' });
  assert.deepEqual(await forward.check(basic(decomposed)), { ok: true, user: 'carol' });
  assert.deepEqual(await forward.check(basic(Buffer.from(composed, 'latin1'))), { ok: false, reason: 'invalid' }, 'Latin-1 bytes are not UTF-8');
});

test('no header, or an empty one, is "missing"', async () => {
  const forward = authenticator();
  for (const header of [undefined, '', '   ']) assert.deepEqual(await forward.check(header), { ok: false, reason: 'missing' });
  assert.equal(forward.stats.verifications, 0);
});

test('other schemes and malformed credentials are "invalid" without a scrypt check', async () => {
  const forward = authenticator();
  const token = Buffer.from('alice:s3cret').toString('base64');
  const bad = [
    `Bearer ${token}`,
    `Digest username="alice"`,
    'Basic',
    'Basic ',
    `Basic${token}`,
    `Basic ${token} extra`,
    'Basic !!!!',
    `Basic ${Buffer.from('alice:s3cre').toString('base64').replace(/=+$/, '')}`,
    'Basic YWxpY2U=',
    basic(Buffer.from([0x61, 0x3a, 0xff, 0xfe])),
    `Basic ${'A'.repeat(5000)}`,
    `Basic ${token},Basic ${token}`,
    `Basic\n${token}`,
  ];
  for (const header of bad) assert.deepEqual(await forward.check(header), { ok: false, reason: 'invalid' }, JSON.stringify(header.slice(0, 40)));
  assert.equal(forward.stats.verifications, 0);
});

test('a wrong password is "invalid"', async () => {
  const forward = authenticator();
  for (const credentials of ['alice:S3cret', 'alice:', 'alice:s3cret ', 'alice: s3cret', 'ALICE:s3cret']) {
    assert.deepEqual(await forward.check(basic(credentials)), { ok: false, reason: 'invalid' }, credentials);
  }
  assert.equal(forward.stats.verifications, 5);
});

test('an unknown user costs one scrypt check like a known one, and is "invalid"', async () => {
  const forward = authenticator();
  for (const user of ['mallory', '', '__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
    const before = forward.stats.verifications;
    assert.deepEqual(await forward.check(basic(`${user}:s3cret`)), { ok: false, reason: 'invalid' }, user);
    assert.equal(forward.stats.verifications, before + 1, `no scrypt check for unknown user ${JSON.stringify(user)}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Cache of verified credentials

test('verified credentials are remembered: the same header again runs no scrypt check', async () => {
  const forward = authenticator();
  const header = basic('alice:s3cret');
  assert.deepEqual(await forward.check(header), { ok: true, user: 'alice' });
  assert.equal(forward.stats.verifications, 1);
  for (let i = 0; i < 5; i++) assert.deepEqual(await forward.check(header), { ok: true, user: 'alice' });
  assert.equal(forward.stats.verifications, 1);
  assert.equal(forward.stats.cacheHits, 5);
  assert.equal(forward.cachedCount, 1);
});

test('a wrong password after a remembered right one is still refused, every time', async () => {
  const forward = authenticator();
  assert.deepEqual(await forward.check(basic('alice:s3cret')), { ok: true, user: 'alice' });
  for (let i = 0; i < 3; i++) assert.deepEqual(await forward.check(basic('alice:wrong')), { ok: false, reason: 'invalid' });
  assert.equal(forward.stats.verifications, 4, 'failures are never remembered as successes');
  assert.equal(forward.cachedCount, 1);
});

test('remembered credentials expire after the TTL, counted from the verification', async () => {
  const clock = manualClock();
  const forward = authenticator({ now: clock.read, cacheTtl: 1000 });
  const header = basic('alice:s3cret');
  await forward.check(header);
  clock.now = 999;
  assert.deepEqual(await forward.check(header), { ok: true, user: 'alice' });
  assert.equal(forward.stats.verifications, 1);
  clock.now = 1000;
  assert.deepEqual(await forward.check(header), { ok: true, user: 'alice' });
  assert.equal(forward.stats.verifications, 2, 'expired: checked again');
  clock.now = 1999;
  await forward.check(header);
  assert.equal(forward.stats.verifications, 2, 'the new verification restarted the TTL');
});

test('the cache is bounded and evicts the least recently used', async () => {
  const forward = authenticator({ cacheSize: 2 });
  const a = basic('alice:s3cret');
  const b = basic('bob:pa:ss:word');
  const c = basic('carol:p\u00e4ssw\u00f6rd');
  await forward.check(a);
  await forward.check(b);
  await forward.check(a); // a is now more recent than b
  await forward.check(c); // evicts b
  assert.equal(forward.stats.verifications, 3);
  assert.equal(forward.cachedCount, 2);
  await forward.check(a);
  assert.equal(forward.stats.verifications, 3, 'a stayed');
  await forward.check(b);
  assert.equal(forward.stats.verifications, 4, 'b was evicted');
});

test('the cache defaults to 1,000 entries', async () => {
  const many: Record<string, string> = {};
  for (let i = 0; i < 1001; i++) many[`u${i}`] = hashes.alice;
  const forward = new ProxyAuthenticator({ realm: 'r', users: many }, { maxQueued: 2000 });
  // One after another: checks run two at once, so concurrent ones may finish (and enter the cache) out of order.
  for (const user of Object.keys(many)) await forward.check(basic(`${user}:s3cret`));
  assert.equal(forward.stats.verifications, 1001);
  assert.equal(forward.cachedCount, 1000);
  assert.deepEqual(await forward.check(basic('u1000:s3cret')), { ok: true, user: 'u1000' });
  assert.equal(forward.stats.verifications, 1001, 'the newest stayed');
  assert.deepEqual(await forward.check(basic('u0:s3cret')), { ok: true, user: 'u0' });
  assert.equal(forward.stats.verifications, 1002, 'the oldest went');
});

// ---------------------------------------------------------------------------------------------
// Bounded work

test('identical credentials checked at once share one scrypt check', async () => {
  const forward = authenticator();
  const results = await Promise.all(Array.from({ length: 8 }, () => forward.check(basic('alice:s3cret'))));
  for (const result of results) assert.deepEqual(result, { ok: true, user: 'alice' });
  assert.equal(forward.stats.verifications, 1);
  const wrong = await Promise.all(Array.from({ length: 8 }, () => forward.check(basic('alice:nope'))));
  for (const result of wrong) assert.deepEqual(result, { ok: false, reason: 'invalid' });
  assert.equal(forward.stats.verifications, 2);
});

test('beyond the running and queued checks, a check answers "invalid" at once', async () => {
  const forward = authenticator({ maxConcurrent: 1, maxQueued: 1 });
  const pending = [forward.check(basic('alice:s3cret')), forward.check(basic('bob:pa:ss:word')), forward.check(basic('carol:p\u00e4ssw\u00f6rd'))];
  const results = await Promise.all(pending);
  assert.deepEqual(results, [
    { ok: true, user: 'alice' },
    { ok: true, user: 'bob' },
    { ok: false, reason: 'invalid' },
  ]);
  assert.equal(forward.stats.shed, 1);
  assert.equal(forward.stats.verifications, 2);
  // Slots were handed back: the shed credentials pass once there is room.
  assert.deepEqual(await forward.check(basic('carol:p\u00e4ssw\u00f6rd')), { ok: true, user: 'carol' });
});

test('at most maxConcurrent scrypt checks run at once', async () => {
  const forward = authenticator({ maxConcurrent: 2, maxQueued: 100 });
  let peak = 0;
  // Peek at the private counter: the bound is the point of the test.
  const view = forward as unknown as { running: number };
  const done = Promise.all(Array.from({ length: 12 }, (_, i) => forward.check(basic(`alice:wrong${i}`))));
  const sampler = setInterval(() => (peak = Math.max(peak, view.running)), 1);
  const results = await done;
  clearInterval(sampler);
  assert.equal(results.filter((r) => !r.ok).length, 12);
  assert.equal(forward.stats.verifications, 12);
  assert.equal(forward.stats.shed, 0);
  assert.ok(peak <= 2, `peak ${peak}`);
  assert.equal(view.running, 0, 'every slot released');
});

// ---------------------------------------------------------------------------------------------
// Challenge and settings

test('the challenge quotes and escapes the realm and names UTF-8', () => {
  assert.equal(authenticator().challenge, 'Basic realm="fulcrum", charset="UTF-8"');
  assert.equal(authenticator({}, 'say "hi" \\ bye').challenge, 'Basic realm="say \\"hi\\" \\\\ bye", charset="UTF-8"');
});

test('bad settings are refused with every problem named', () => {
  const problems = proxyAuthSettingsProblems({ realm: 'bad\r\nrealm', users: { 'a:b': hashes.alice, eve: 'plaintext', '\u00e4': hashes.alice, 'a\u0308': hashes.alice } });
  assert.equal(problems.length, 4, problems.join('\n'));
  assert.match(problems.join('\n'), /realm/);
  assert.match(problems.join('\n'), /"a:b": a user name cannot contain ":"/);
  assert.match(problems.join('\n'), /"eve": not a password hash/);
  assert.match(problems.join('\n'), /Unicode normalisation/);
  assert.doesNotMatch(problems.join('\n'), /plaintext/, 'a bad hash value is not echoed');
  assert.throws(() => new ProxyAuthenticator({ realm: 'r', users: { eve: 'plaintext' } }), /proxy auth: user "eve"/);
  assert.throws(() => new ProxyAuthenticator({ realm: 'r\u00e9alm', users: {} }), /printable ASCII/);
  assert.deepEqual(proxyAuthSettingsProblems({ realm: 'ok', users: hashes }), []);
});
