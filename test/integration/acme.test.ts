/**
 * Automatic certificates against a real ACME server on loopback (Debian's pebble): first the
 * AcmeManager with tiny challenge servers of the test's own (HTTP-01 on pebble's httpPort,
 * TLS-ALPN-01 on its tlsPort), then end to end through Fulcrum's own listeners.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { AcmeSettings } from '../../src/config/schema.ts';
import { AcmeErrorCode, AcmeManager, type AcmeError, type AcmeHooks, type AcmeManagerOptions, type AcmeOrderSpec } from '../../src/tls/acme.ts';
import { acquireLock, LockTimeoutError } from '../../src/tls/acme-storage.ts';
import { eventually } from '../helpers/eventually.ts';
import { freePort, startPebble, type Pebble, type PebbleOptions } from '../helpers/pebble.ts';
import { startBackend, startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { handshake } from '../helpers/tls.ts';
import { capturedLogger, type LogLine } from '../helpers/captured-logger.ts';

/** The challenge servers pebble validates against, answering from what the hooks published. */
interface ChallengeServers {
  httpPort: number;
  tlsPort: number;
  tokens: Map<string, string>;
  alpn: Map<string, tls.SecureContext>;
  /** HTTP-01 validation requests seen, and acme-tls/1 handshakes seen. */
  httpHits: number;
  alpnHits: number;
  /** When set, HTTP-01 is answered with this text instead of the key authorization. */
  wrongAnswer: string | null;
  /** When set, HTTP-01 answers wait for it. */
  gate: Promise<void> | null;
}

async function startChallengeServers(t: TestContext): Promise<ChallengeServers> {
  const servers: ChallengeServers = { httpPort: 0, tlsPort: 0, tokens: new Map(), alpn: new Map(), httpHits: 0, alpnHits: 0, wrongAnswer: null, gate: null };
  const web = http.createServer(async (req, res) => {
    servers.httpHits++;
    if (servers.gate) await servers.gate;
    const token = /^\/\.well-known\/acme-challenge\/([^/?]+)$/.exec(req.url ?? '')?.[1];
    const answer = token === undefined ? undefined : servers.tokens.get(token);
    if (answer === undefined) res.writeHead(404).end('no such token');
    else res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(servers.wrongAnswer ?? answer);
  });
  const alpn = tls.createServer({
    ALPNProtocols: ['acme-tls/1'],
    SNICallback: (name, callback) => {
      servers.alpnHits++;
      const context = servers.alpn.get(name);
      if (context) callback(null, context);
      else callback(new Error(`no challenge certificate for ${name}`));
    },
  });
  alpn.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  await new Promise<void>((resolve) => alpn.listen(0, '127.0.0.1', resolve));
  servers.httpPort = (web.address() as AddressInfo).port;
  servers.tlsPort = (alpn.address() as AddressInfo).port;
  t.after(async () => {
    web.closeAllConnections();
    await Promise.all([new Promise((resolve) => web.close(resolve)), new Promise((resolve) => alpn.close(resolve))]);
  });
  return servers;
}

/** What the hooks were told: installs in order, by domain and serial. */
interface Recorded {
  hooks: AcmeHooks;
  installs: { domain: string; serial: string; cert: string; key: string }[];
}

function recordingHooks(servers: ChallengeServers): Recorded {
  const installs: Recorded['installs'] = [];
  return {
    installs,
    hooks: {
      install(domain, pair) {
        installs.push({ domain, serial: new X509Certificate(pair.cert).serialNumber, ...pair });
      },
      httpChallenge(token, keyAuthorization) {
        if (keyAuthorization === null) servers.tokens.delete(token);
        else servers.tokens.set(token, keyAuthorization);
      },
      alpnChallenge(domain, pair) {
        if (pair === null) servers.alpn.delete(domain);
        else servers.alpn.set(domain, tls.createSecureContext(pair));
      },
    },
  };
}

/** Fast waits for a test: polls and locks looked at every few ms, backoff from 200 ms without jitter. */
const fast: AcmeManagerOptions = {
  poll: { minMs: 20, maxMs: 200, attempts: 100 },
  lock: { pollMs: 20 },
  backoff: { minMs: 200, maxMs: 5000, jitter: 0 },
};

/** Pebble, its challenge servers, a storage directory, and a maker of managers stopped after the test. */
interface Rig {
  pebble: Pebble;
  servers: ChallengeServers;
  storage: string;
  settings: AcmeSettings;
  manager(orders: AcmeOrderSpec[], options?: AcmeManagerOptions & { settings?: Partial<AcmeSettings> }): { manager: AcmeManager; recorded: Recorded; lines: LogLine[] };
}

async function rig(t: TestContext, pebbleOptions: Partial<PebbleOptions> = {}): Promise<Rig> {
  // Registered first, so the managers stop before pebble and the challenge servers go away.
  const managers: AcmeManager[] = [];
  t.after(() => Promise.all(managers.map((m) => m.stop())));
  const servers = await startChallengeServers(t);
  const pebble = await startPebble(t, { httpPort: servers.httpPort, tlsPort: servers.tlsPort, ...pebbleOptions });
  const storage = fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-acme-'));
  t.after(() => fs.rmSync(storage, { recursive: true, force: true }));
  const settings: AcmeSettings = { directory: pebble.directoryUrl, email: 'ops@example.com', terms_of_service_agreed: true, storage: path.join(storage, 'acme'), directory_ca: pebble.caPath, key_type: 'ecdsa' };
  return {
    pebble,
    servers,
    storage: settings.storage,
    settings,
    manager(orders, options = {}) {
      const { logger, lines } = capturedLogger();
      const recorded = recordingHooks(servers);
      const manager = new AcmeManager({ ...settings, ...options.settings }, orders, recorded.hooks, logger, { ...fast, ...options });
      managers.push(manager);
      return { manager, recorded, lines };
    },
  };
}

/** The certificates of a PEM chain, leaf first. */
function chainOf(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((c) => new X509Certificate(c));
}

/** Serves `pair` with TLS and connects to it by name trusting only `root`: the chain really leads to pebble's root. */
async function assertTrusted(t: TestContext, pair: { cert: string; key: string }, domain: string, root: string): Promise<void> {
  const server = tls.createServer(pair, (socket) => socket.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  const seen = await handshake((server.address() as AddressInfo).port, { servername: domain, ca: root, rejectUnauthorized: true });
  assert.equal(seen.authorized, true);
  const chain = chainOf(pair.cert);
  assert.ok(chain.length >= 2, 'leaf and intermediate');
  assert.ok(chain[0].checkHost(domain));
  assert.ok(chain[chain.length - 1].checkIssued(new X509Certificate(root)));
}

/** New orders pebble has logged ("Added order ... to the db"): the CA's own count. */
function ordersAtPebble(pebble: Pebble): number {
  return pebble.output().split('Added order ').length - 1;
}

function mode(file: string): string {
  return (fs.statSync(file).mode & 0o777).toString(8);
}

function certificateDir(storage: string, domain: string): string {
  const [directory] = fs.readdirSync(storage);
  return path.join(storage, directory, 'certificates', domain);
}

test('HTTP-01: a certificate is ordered, stored 0600 in a 0700 directory, installed, and chains to pebble\'s root', async (t) => {
  const r = await rig(t);
  const { manager, recorded, lines } = r.manager([{ domain: 'www.fulcrum.test', challenge: 'http-01' }]);
  await manager.start();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'a certificate installed' });
  const [installed] = recorded.installs;
  assert.equal(installed.domain, 'www.fulcrum.test');
  assert.ok(r.servers.httpHits >= 1, 'pebble fetched the HTTP-01 token');
  assert.equal(r.servers.tokens.size, 0, 'the token is removed after validation');
  await assertTrusted(t, installed, 'www.fulcrum.test', await r.pebble.root());

  const [status] = manager.status();
  assert.equal(status.state, 'valid');
  assert.equal(status.orders, 1);
  assert.equal(status.serial, installed.serial);
  const leaf = new X509Certificate(installed.cert);
  const renewAt = leaf.validFromDate.getTime() + Math.floor((leaf.validToDate.getTime() - leaf.validFromDate.getTime()) * (2 / 3));
  assert.equal(status.next_attempt, new Date(renewAt).toISOString(), 'renewal at two thirds of the lifetime');

  // Storage: everything private; account key and URL, certificate and key of the name.
  const dir = certificateDir(r.storage, 'www.fulcrum.test');
  const caDir = path.dirname(path.dirname(dir));
  for (const d of [r.storage, caDir, path.dirname(dir), dir]) assert.equal(mode(d), '700', d);
  for (const f of [path.join(caDir, 'account.key'), path.join(caDir, 'account.json'), path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')]) assert.equal(mode(f), '600', f);
  assert.equal(fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'), installed.cert);
  assert.equal(fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'), installed.key);
  const account = JSON.parse(fs.readFileSync(path.join(caDir, 'account.json'), 'utf8')) as { url: string; contact: string[] };
  assert.match(account.url, /^https:\/\/127\.0\.0\.1:\d+\//);
  assert.deepEqual(account.contact, ['mailto:ops@example.com']);
  await eventually(() => fs.readdirSync(dir).sort().join() === 'cert.pem,key.pem', { what: 'no lock or temporary file left' });
  assert.ok(lines.some((l) => /certificate for www\.fulcrum\.test issued/.test(l.msg)));
});

test('TLS-ALPN-01: the challenge is answered on the TLS port with acme-client\'s ALPN certificate', async (t) => {
  const r = await rig(t);
  const { manager, recorded } = r.manager([{ domain: 'alpn.fulcrum.test', challenge: 'tls-alpn-01' }], { ...fast });
  await manager.start();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'a certificate installed' });
  assert.ok(r.servers.alpnHits >= 1, 'pebble made an acme-tls/1 handshake');
  assert.equal(r.servers.httpHits, 0, 'no HTTP-01 validation');
  assert.equal(r.servers.alpn.size, 0, 'the challenge certificate is removed after validation');
  await assertTrusted(t, recorded.installs[0], 'alpn.fulcrum.test', await r.pebble.root());
  assert.equal(manager.status()[0].state, 'valid');
});

test('RSA keys when key_type is rsa', async (t) => {
  const r = await rig(t);
  const { manager, recorded } = r.manager([{ domain: 'rsa.fulcrum.test', challenge: 'http-01' }], { settings: { key_type: 'rsa' } });
  await manager.start();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'a certificate installed' });
  const key = new X509Certificate(recorded.installs[0].cert).publicKey;
  assert.equal(key.asymmetricKeyType, 'rsa');
  assert.equal(key.asymmetricKeyDetails?.modulusLength, 2048);
});

test('a restart installs the stored certificate before start() resolves and orders nothing; a clock past two thirds orders again', async (t) => {
  const r = await rig(t);
  const domain = 'restart.fulcrum.test';
  const first = r.manager([{ domain, challenge: 'http-01' }]);
  await first.manager.start();
  await eventually(() => first.recorded.installs.length === 1, { timeout: 15_000, what: 'the first certificate' });
  await first.manager.stop();
  const leaf = new X509Certificate(first.recorded.installs[0].cert);
  const notBefore = leaf.validFromDate.getTime();
  const lifetime = leaf.validToDate.getTime() - notBefore;
  const hitsBefore = r.servers.httpHits;

  // 60% of the lifetime: not due.
  const second = r.manager([{ domain, challenge: 'http-01' }], { now: () => notBefore + lifetime * 0.6 });
  await second.manager.start();
  assert.deepEqual(second.recorded.installs.map((i) => i.serial), [leaf.serialNumber], 'installed from storage when start() resolved');
  const [status] = second.manager.status();
  assert.equal(status.state, 'valid');
  assert.equal(status.orders, 0);
  assert.ok(Date.parse(status.next_attempt!) > notBefore + lifetime * 0.6, 'renewal scheduled later');
  assert.ok(second.lines.some((l) => /from storage/.test(l.msg)));
  await second.manager.stop();

  // 70%: due, so the stored certificate is installed at once and a new one ordered in the background.
  const third = r.manager([{ domain, challenge: 'http-01' }], { now: () => notBefore + lifetime * 0.7 });
  await third.manager.start();
  assert.equal(third.recorded.installs[0].serial, leaf.serialNumber);
  await eventually(() => third.recorded.installs.length === 2, { timeout: 15_000, what: 'the renewal' });
  assert.notEqual(third.recorded.installs[1].serial, leaf.serialNumber);
  assert.equal(third.manager.status()[0].orders, 1);
  assert.ok(r.servers.httpHits > hitsBefore, 'the renewal was validated again');
});

test('renewal by the timer at two thirds of a short lifetime', async (t) => {
  // Pebble issues 6-second certificates: the renewal comes about 3.3 s after issuance.
  const r = await rig(t, { certificateValidityPeriod: 6 });
  const { manager, recorded } = r.manager([{ domain: 'short.fulcrum.test', challenge: 'http-01' }]);
  await manager.start();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'the first certificate' });
  const first = new X509Certificate(recorded.installs[0].cert);
  await eventually(() => recorded.installs.length === 2, { timeout: 15_000, interval: 50, what: 'the timer\'s renewal' });
  const second = new X509Certificate(recorded.installs[1].cert);
  const renewedAt = second.validFromDate.getTime();
  const due = first.validFromDate.getTime() + ((first.validToDate.getTime() - first.validFromDate.getTime()) * 2) / 3;
  // notBefore has whole seconds: the renewal's is within a second of the due time, and before expiry.
  assert.ok(renewedAt >= due - 1000 && renewedAt < first.validToDate.getTime(), `renewed at ${second.validFrom}, due ${new Date(due).toISOString()}`);
  assert.equal(manager.status()[0].state, 'valid');
});

test('forced renewal: a new serial, the challenge answered again, two renew() at once make one order', async (t) => {
  const r = await rig(t);
  const domain = 'forced.fulcrum.test';
  const { manager, recorded, lines } = r.manager([{ domain, challenge: 'tls-alpn-01' }]);
  await manager.start();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'the first certificate' });
  const alpnBefore = r.servers.alpnHits;
  await Promise.all([manager.renew(domain), manager.renew(domain)]);
  assert.equal(recorded.installs.length, 2);
  assert.notEqual(recorded.installs[1].serial, recorded.installs[0].serial);
  assert.ok(r.servers.alpnHits > alpnBefore, 'validated again (pebble reuses no authorization)');
  const [status] = manager.status();
  assert.equal(status.orders, 2);
  assert.equal(ordersAtPebble(r.pebble), 2, 'pebble saw two orders');
  assert.equal(status.serial, recorded.installs[1].serial);
  assert.equal(fs.readFileSync(path.join(certificateDir(r.storage, domain), 'cert.pem'), 'utf8'), recorded.installs[1].cert);
  assert.ok(lines.some((l) => l.forced === true && /forced renewal/.test(l.msg)));
  await assertTrusted(t, recorded.installs[1], domain, await r.pebble.root());
  await assert.rejects(manager.renew('other.fulcrum.test'), (err: AcmeError) => err.code === AcmeErrorCode.UnknownDomain);
});

test('two managers sharing the storage order a name once: the second waits for the lock and uses the stored certificate', async (t) => {
  const r = await rig(t);
  const domain = 'shared.fulcrum.test';
  let open!: () => void;
  r.servers.gate = new Promise<void>((resolve) => (open = resolve));
  const a = r.manager([{ domain, challenge: 'http-01' }]);
  const b = r.manager([{ domain, challenge: 'http-01' }]);
  await a.manager.start();
  // A's validation is held at pebble's HTTP request, so A holds the lock while B starts.
  await eventually(() => r.servers.httpHits >= 1, { timeout: 10_000, what: 'pebble validating A' });
  await b.manager.start();
  await eventually(() => b.lines.some((l) => /waiting for shared\.fulcrum\.test/.test(l.msg)), { what: 'B waiting for the lock' });
  const lock = JSON.parse(fs.readFileSync(path.join(certificateDir(r.storage, domain), 'order.lock'), 'utf8')) as { pid: number; host: string };
  assert.equal(lock.pid, process.pid);
  assert.equal(lock.host, os.hostname());
  open();
  await eventually(() => a.recorded.installs.length === 1 && b.recorded.installs.length === 1, { timeout: 15_000, what: 'both installed' });
  assert.equal(a.recorded.installs[0].serial, b.recorded.installs[0].serial);
  assert.equal(a.manager.status()[0].orders + b.manager.status()[0].orders, 1, 'one order between them');
  assert.equal(ordersAtPebble(r.pebble), 1, 'pebble saw one order');
  assert.equal(b.manager.status()[0].state, 'valid');
  assert.ok(b.lines.some((l) => /stored by another instance/.test(l.msg)));
  await eventually(() => !fs.existsSync(path.join(certificateDir(r.storage, domain), 'order.lock')), { what: 'the lock released' });
});

test('a wrong challenge answer: the CA\'s reason logged, backoff doubling, then success once the answer is right', async (t) => {
  const r = await rig(t);
  const domain = 'broken.fulcrum.test';
  r.servers.wrongAnswer = 'not-the-key-authorization';
  let clock = Date.now();
  const { manager, recorded, lines } = r.manager([{ domain, challenge: 'http-01' }], { now: () => clock });
  await manager.start();
  const failures = (): LogLine[] => lines.filter((l) => l.level === 50 && l.code === AcmeErrorCode.ChallengeFailed);
  await eventually(() => failures().length >= 2, { timeout: 15_000, what: 'two failures' });
  const [one, two] = failures();
  assert.equal(one.problem_type, 'urn:ietf:params:acme:error:unauthorized');
  assert.match(String(one.problem_detail), /not-the-key-authorization|did not match|key authorization/i);
  assert.ok(one.msg.includes(String(one.problem_detail)), 'the CA\'s detail is in the message');
  // The clock stands still, so the backoff is exact: 200 ms, then 400 ms (no jitter in this test).
  assert.equal(Date.parse(String(one.next_attempt)) - clock, 200);
  assert.equal(Date.parse(String(two.next_attempt)) - clock, 400);
  assert.equal(one.failures, 1);
  assert.equal(two.failures, 2);
  const status = manager.status()[0];
  assert.equal(status.last_error_code, AcmeErrorCode.ChallengeFailed);
  assert.ok(status.failures >= 2);
  const failure = JSON.parse(fs.readFileSync(path.join(certificateDir(r.storage, domain), 'failure.json'), 'utf8')) as { failures: number };
  assert.ok(failure.failures >= 2, 'the failure is stored for other instances');
  assert.equal(recorded.installs.length, 0);

  r.servers.wrongAnswer = null;
  clock = Date.now();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'success after the fix' });
  const after = manager.status()[0];
  assert.equal(after.state, 'valid');
  assert.equal(after.failures, 0);
  assert.equal(after.last_error, undefined);
  assert.equal(fs.existsSync(path.join(certificateDir(r.storage, domain), 'failure.json')), false);
});

test('a forced renewal that fails rejects with the CA\'s reason and keeps the installed certificate', async (t) => {
  const r = await rig(t);
  const domain = 'keep.fulcrum.test';
  const { manager, recorded } = r.manager([{ domain, challenge: 'http-01' }]);
  await manager.start();
  await eventually(() => recorded.installs.length === 1, { timeout: 15_000, what: 'the first certificate' });
  r.servers.wrongAnswer = 'wrong';
  await assert.rejects(manager.renew(domain), (err: AcmeError) => err.code === AcmeErrorCode.ChallengeFailed && err.problem?.type === 'urn:ietf:params:acme:error:unauthorized');
  const [status] = manager.status();
  assert.equal(status.state, 'failed');
  assert.equal(status.serial, recorded.installs[0].serial, 'the old certificate stays installed');
  assert.equal(recorded.installs.length, 1);
});

test('stop() during an order: renew() rejects FUL_ACME_STOPPED, the lock and the challenge answer are removed', async (t) => {
  const r = await rig(t);
  const domain = 'stop.fulcrum.test';
  r.servers.gate = new Promise<void>(() => {});
  const { manager, recorded } = r.manager([{ domain, challenge: 'http-01' }]);
  await manager.start();
  await eventually(() => r.servers.httpHits >= 1, { timeout: 10_000, what: 'pebble validating' });
  const renewed = assert.rejects(manager.renew(domain), (err: AcmeError) => err.code === AcmeErrorCode.Stopped);
  assert.equal(r.servers.tokens.size, 1);
  await manager.stop();
  await renewed;
  assert.equal(r.servers.tokens.size, 0, 'challenge answer removed');
  assert.equal(fs.existsSync(path.join(certificateDir(r.storage, domain), 'order.lock')), false, 'lock released');
  assert.equal(recorded.installs.length, 0);
  assert.equal(manager.status()[0].next_attempt, undefined, 'nothing scheduled');
});

test('terms of service not agreed: start() rejects and logs, nothing is written', async (t) => {
  const storage = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-acme-')), 'acme');
  t.after(() => fs.rmSync(path.dirname(storage), { recursive: true, force: true }));
  const { logger, lines } = capturedLogger();
  const installs: string[] = [];
  const manager = new AcmeManager(
    { directory: 'letsencrypt-staging', terms_of_service_agreed: false, storage, key_type: 'ecdsa' },
    [{ domain: 'example.com', challenge: 'http-01' }],
    { install: (d) => installs.push(d), alpnChallenge: () => {}, httpChallenge: () => {} },
    logger,
  );
  assert.equal(manager.directoryUrl, 'https://acme-staging-v02.api.letsencrypt.org/directory', 'staging by default');
  await assert.rejects(manager.start(), (err: AcmeError) => err.code === AcmeErrorCode.TermsNotAgreed && /terms_of_service_agreed: true/.test(err.message));
  assert.ok(lines.some((l) => l.level === 50 && l.code === AcmeErrorCode.TermsNotAgreed));
  assert.equal(fs.existsSync(storage), false);
  await assert.rejects(manager.renew('example.com'), (err: AcmeError) => err.code === AcmeErrorCode.Stopped);
  assert.deepEqual(installs, []);
  assert.throws(() => new AcmeManager({ directory: 'letsencrypt', terms_of_service_agreed: true, storage, key_type: 'ecdsa' }, [{ domain: '..', challenge: 'http-01' }], { install() {}, alpnChallenge() {}, httpChallenge() {} }, logger), (err: AcmeError) => err.code === AcmeErrorCode.BadDomain);
  assert.equal(new AcmeManager({ directory: 'letsencrypt', terms_of_service_agreed: true, storage, key_type: 'ecdsa' }, [], { install() {}, alpnChallenge() {}, httpChallenge() {} }, logger).directoryUrl, 'https://acme-v02.api.letsencrypt.org/directory');
});

test('the lock: a dead holder\'s lock and an old one are broken, a live one is waited for and times out', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-acme-lock-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'order.lock');
  const options = { staleAfterMs: 60_000, waitMs: 200, pollMs: 10 };

  // A process that has exited: its pid is free.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  fs.writeFileSync(file, JSON.stringify({ pid: Number(dead.stdout), host: os.hostname(), since: new Date().toISOString(), token: 'x' }));
  let lock = await acquireLock(file, options);
  assert.equal(JSON.parse(fs.readFileSync(file, 'utf8')).pid, process.pid);
  await lock.release();
  assert.equal(fs.existsSync(file), false);

  // A live holder on another host, not refreshed for longer than staleAfterMs.
  fs.writeFileSync(file, JSON.stringify({ pid: 1, host: 'elsewhere', since: '2020-01-01T00:00:00Z', token: 'y' }));
  const old = new Date(Date.now() - 120_000);
  fs.utimesSync(file, old, old);
  lock = await acquireLock(file, options);
  await lock.release();

  // A live, fresh holder: waited for, then LockTimeoutError naming it.
  fs.writeFileSync(file, JSON.stringify({ pid: process.pid, host: os.hostname(), since: new Date().toISOString(), token: 'z' }));
  let told = 0;
  await assert.rejects(acquireLock(file, { ...options, onWait: () => told++ }), (err: Error) => err instanceof LockTimeoutError && err.message.includes(`pid ${process.pid}`));
  assert.equal(told, 1);
  assert.equal(JSON.parse(fs.readFileSync(file, 'utf8')).token, 'z', 'a live lock is never broken');
});

// ---- End to end through Fulcrum: its http listener answers HTTP-01, its https listener TLS-ALPN-01. ----

const ADMIN_TOKEN = 'acme-admin-token-0123456789';

/** curl over HTTPS to `name`:`port` (resolved to 127.0.0.1) trusting only `caFile`; resolves with status and body, or curl's error. */
function curl(name: string, port: number, caFile: string, urlPath = '/'): Promise<{ status: number; body: string; error: string }> {
  return new Promise((resolve) => {
    const args = ['-sS', '--max-time', '5', '--cacert', caFile, '--resolve', `${name}:${port}:127.0.0.1`, '-w', '\n%{http_code}', `https://${name}:${port}${urlPath}`];
    execFile('curl', args, { encoding: 'utf8' }, (_err, stdout, stderr) => {
      const cut = stdout.lastIndexOf('\n');
      resolve({ status: Number(stdout.slice(cut + 1)) || 0, body: stdout.slice(0, Math.max(0, cut)), error: stderr.trim() });
    });
  });
}

/** Pebble validating on two free ports, a backend, and Fulcrum with an http listener and an https listener using ACME. */
async function fulcrumWithAcme(t: TestContext, domain: string, challenge: 'http-01' | 'tls-alpn-01') {
  // Pebble must know its validation ports before it starts, and Fulcrum listens on them afterwards.
  const [httpPort, tlsPort] = [await freePort(), await freePort()];
  const pebble = await startPebble(t, { httpPort, tlsPort });
  const httpsPort = challenge === 'tls-alpn-01' ? tlsPort : await freePort();
  const backend = await startBackend(t, (req, res) => res.end(`hello ${req.headers.host} via ${req.headers['x-forwarded-proto']}`));
  const storage = fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-acme-e2e-'));
  t.after(() => fs.rmSync(storage, { recursive: true, force: true }));
  const start = (): Promise<TestBalancer> =>
    startBalancer(t, {
      listeners: [
        { name: 'http', host: '127.0.0.1', port: httpPort },
        { name: 'https', host: '127.0.0.1', port: httpsPort, protocol: 'https', tls: { acme: { domains: [domain], challenge } } },
      ],
      pools: { web: { upstreams: [backend.url] } },
      acme: { directory: pebble.directoryUrl, directory_ca: pebble.caPath, terms_of_service_agreed: true, storage, email: 'ops@example.com' },
      admin: { host: '127.0.0.1', port: 0, token: ADMIN_TOKEN },
    });
  return { pebble, lb: await start(), start, httpsPort, storage, rootFile: await pebble.rootFile() };
}

/** The serial of the ACME certificate Fulcrum serves for `domain`, from its status (null before there is one). */
function servedSerial(lb: TestBalancer, domain: string): string | null {
  return lb.balancer.status().certificates.find((c) => c.source === `acme:${domain}`)?.serial ?? null;
}

test('Fulcrum end to end, HTTP-01: its http listener answers pebble, curl gets 200 through the new certificate; a restart serves it from storage', async (t) => {
  const domain = 'www.fulcrum.test';
  const { lb, start, httpsPort, rootFile, storage } = await fulcrumWithAcme(t, domain, 'http-01');
  const answer = await eventually(async () => {
    const r = await curl(domain, httpsPort, rootFile);
    return r.status === 200 ? r : null;
  }, { timeout: 20_000, interval: 100, what: `curl https://${domain}:${httpsPort}/ trusting pebble's root` });
  assert.equal(answer?.body, `hello ${domain}:${httpsPort} via https`);
  const first = (await handshake(httpsPort, { servername: domain })).serial;
  assert.equal(first, servedSerial(lb, domain));
  assert.ok(fs.existsSync(path.join(certificateDir(storage, domain), 'cert.pem')));
  assert.ok(lb.logs.some((l) => l.includes(`certificate for ${domain} issued`)));

  // Forced renewal through the balancer's API: new handshakes get a new serial.
  await lb.balancer.renewCertificate(domain);
  const second = (await handshake(httpsPort, { servername: domain })).serial;
  assert.notEqual(second, first);

  // A restart on the same storage serves the stored certificate as soon as start() resolves, with no order.
  await lb.balancer.close(1000);
  const again = await start();
  const now = await curl(domain, httpsPort, rootFile);
  assert.equal(now.status, 200, now.error);
  assert.equal((await handshake(httpsPort, { servername: domain })).serial, second);
  assert.ok(again.logs.some((l) => l.includes(`certificate for ${domain} from storage`)));
  assert.ok(!again.logs.some((l) => l.includes('ordering a certificate')), 'no new order');
});

test('Fulcrum end to end, TLS-ALPN-01 on its https listener, then a forced renewal through the admin API', async (t) => {
  const domain = 'alpn.fulcrum.test';
  const { lb, httpsPort, rootFile } = await fulcrumWithAcme(t, domain, 'tls-alpn-01');
  await eventually(async () => (await curl(domain, httpsPort, rootFile)).status === 200, { timeout: 20_000, interval: 100, what: `curl https://${domain}:${httpsPort}/` });
  const first = (await handshake(httpsPort, { servername: domain })).serial;
  assert.equal(first, servedSerial(lb, domain));

  const admin = lb.balancer.adminAddress();
  assert.ok(admin);
  const renewed = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: admin.port, method: 'POST', path: '/certificates/renew', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end(JSON.stringify({ domain }));
  });
  assert.equal(renewed.status, 200, renewed.body);
  const second = (await handshake(httpsPort, { servername: domain })).serial;
  assert.notEqual(second, first, 'new handshakes get the renewed certificate');
  assert.equal(second, servedSerial(lb, domain));
  // /status says where each name stands; a name no listener orders is a 404, not an order.
  const acmeStatus = lb.balancer.status().acme.find((a) => a.domain === domain);
  assert.equal(acmeStatus?.state, 'valid');
  assert.equal(acmeStatus?.serial, second);
  await assert.rejects(lb.balancer.renewCertificate('not-ordered.test'), (err: Error & { status?: number }) => err.status === 404);
  const after = await curl(domain, httpsPort, rootFile);
  assert.equal(after.status, 200, after.error);
});
