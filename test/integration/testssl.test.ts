/**
 * Debian's testssl.sh (https://testssl.sh/) against HTTPS listeners on 127.0.0.1: the
 * "intermediate" profile with an ECDSA and with an RSA certificate (RSA brings the ECDHE-RSA
 * suites), and the "modern" profile. testssl.sh's JSON findings are asserted: no SSLv2, SSLv3,
 * TLS 1.0 or 1.1; TLS 1.2 and 1.3 (modern: 1.3 only); no NULL, anonymous, export, LOW, 3DES/IDEA
 * or CBC ("obsolete") ciphers; forward secrecy with ECDHE only; every vulnerability check OK and
 * nothing of severity MEDIUM or worse. Its human summary is printed as test diagnostics. Skipped
 * when testssl (Debian's name) or testssl.sh is not on PATH; `.ci/run` installs it.
 *
 * testssl.sh is a bash script that forks thousands of times, so a scan costs tens of seconds
 * whatever it checks (about two minutes for this file on a busy 2-core machine); the scans run
 * at the same time, four testssl.sh processes.
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestCa, type CertFiles } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';

/** One line of testssl.sh's flat JSON (`--jsonfile`). */
interface Finding {
  id: string;
  severity: string;
  finding: string;
}

/** What one scan left: findings by id, the human output, and how long it took. */
interface Scan {
  findings: Map<string, Finding>;
  all: Finding[];
  text: string;
  seconds: number;
}

/** testssl.sh's path: Debian installs it as `testssl`, upstream's checkout has `testssl.sh`. */
function findTestssl(): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    for (const name of ['testssl', 'testssl.sh']) {
      const file = path.join(dir, name);
      try {
        fs.accessSync(file, fs.constants.X_OK);
        return file;
      } catch {
        // not here
      }
    }
  }
  return null;
}

const testssl = findTestssl();
const skip = testssl === null ? 'testssl.sh is not on PATH (Debian: apt-get install testssl.sh; .ci/run does)' : false;

/**
 * What each scan checks: protocols (-p), cipher categories (-s), forward secrecy (-f), every
 * vulnerability check (-U), ROBOT (-BB, RSA key transport). Protocols do not depend on the key
 * type and a TLS 1.3-only listener has no cipher categories to offer, so each listener gets only
 * what it adds. On the ECDSA listener -U runs as a second testssl.sh beside the first: a check
 * costs 5-40 s on a busy machine and testssl.sh's own start 20-25 s, so two at once finish sooner.
 */
const checks = { ecdsa: [['-p', '-s', '-f'], ['-U']], rsa: [['-s', '-f', '-BB']], modern: [['-p']] } as const;

/**
 * Runs testssl.sh with `checkArgs` against 127.0.0.1:`port` in its own process group (killed if the
 * test ends first) and reads its JSON findings.
 */
async function scan(t: TestContext, port: number, checkArgs: readonly string[]): Promise<Scan> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-testssl-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const jsonFile = path.join(dir, 'findings.json');
  // -n none: no DNS look-ups (the target is an address); --warnings off: never ask on a terminal.
  const args = ['--quiet', '--color', '0', '--warnings', 'off', '-n', 'none', '--jsonfile', jsonFile, ...checkArgs, `127.0.0.1:${port}`];
  t.diagnostic(`testssl ${args.join(' ').replace(jsonFile, '<tmp>/findings.json')}`);
  const started = Date.now();
  const child = spawn(testssl!, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, TMPDIR: dir } });
  let text = '';
  child.stdout.on('data', (d) => (text += d));
  child.stderr.on('data', (d) => (text += d));
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => resolve(code));
  });
  t.after(() => {
    // testssl.sh leaves openssl children behind when killed alone: end its whole group.
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  });
  const code = await exited;
  const seconds = (Date.now() - started) / 1000;
  assert.ok(fs.existsSync(jsonFile), `testssl.sh wrote no JSON (exit ${code}):\n${text}`);
  const all = JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as Finding[];
  return { findings: new Map(all.map((f) => [f.id, f])), all, text, seconds };
}

/** Several scans of one listener at once, their findings together. */
async function scanAll(t: TestContext, port: number, checkArgs: readonly (readonly string[])[]): Promise<Scan> {
  const scans = await Promise.all(checkArgs.map((args) => scan(t, port, args)));
  const all = scans.flatMap((s) => s.all);
  return { all, findings: new Map(all.map((f) => [f.id, f])), text: scans.map((s) => s.text).join('\n'), seconds: Math.max(...scans.map((s) => s.seconds)) };
}

/** The finding with this id (the first of `ids` testssl.sh's version has: some were renamed in 3.1/3.2). */
function finding(s: Scan, ...ids: string[]): Finding {
  for (const id of ids) {
    const f = s.findings.get(id);
    if (f !== undefined) return f;
  }
  assert.fail(`testssl.sh reported none of ${ids.join(', ')}; it reported: ${[...s.findings.keys()].join(' ')}`);
}

/** Prints the summary lines of testssl.sh's human output (protocols, ciphers, FS, vulnerabilities). */
function printSummary(t: TestContext, s: Scan): void {
  for (const line of s.text.split('\n')) {
    const kept = line.trimEnd();
    if (kept.trim() === '' || /^\s*(Start|Done|rDNS)\b/.test(kept)) continue;
    t.diagnostic(kept);
  }
  t.diagnostic(`scan took ${s.seconds.toFixed(1)} s`);
}

/** No SSL, no TLS 1.0 or 1.1; TLS 1.3 offered, TLS 1.2 offered unless `modern`. */
function assertProtocols(s: Scan, modern: boolean): void {
  for (const id of ['SSLv2', 'SSLv3', 'TLS1', 'TLS1_1']) assert.match(finding(s, id).finding, /^not offered/, id);
  assert.match(finding(s, 'TLS1_2').finding, modern ? /^not offered/ : /^offered/, 'TLS1_2');
  assert.match(finding(s, 'TLS1_3').finding, /^offered/, 'TLS1_3');
  // testssl names h2 apart (ALPN_HTTP2) from the rest (ALPN).
  const alpn = [...s.findings].filter(([id]) => id.startsWith('ALPN')).map(([, f]) => f.finding).join(' ');
  assert.match(alpn, /http\/1\.1/, 'ALPN http/1.1');
  assert.match(alpn, /\bh2\b/, 'ALPN h2');
}

/** No weak cipher category is offered; strong (AEAD) ciphers are. */
function assertCipherCategories(s: Scan): void {
  const weak: [string, ...string[]][] = [
    ['cipherlist_NULL'],
    ['cipherlist_aNULL'],
    ['cipherlist_EXPORT'],
    ['cipherlist_LOW'],
    ['cipherlist_3DES_IDEA'],
    // "Obsolete CBC ciphers": cipherlist_AVERAGE up to testssl.sh 3.0, cipherlist_OBSOLETED after.
    ['cipherlist_AVERAGE', 'cipherlist_OBSOLETED'],
  ];
  for (const ids of weak) assert.match(finding(s, ...ids).finding, /^not offered/, ids[0]);
  // AEAD ciphers: cipherlist_STRONG in testssl.sh 3.0; from 3.2 split into _FS and _NOFS (AEAD without forward secrecy).
  assert.match(finding(s, 'cipherlist_STRONG', 'cipherlist_STRONG_FS').finding, /^offered/, 'strong ciphers');
  const strongWithoutFs = s.findings.get('cipherlist_STRONG_NOFS');
  if (strongWithoutFs !== undefined) assert.match(strongWithoutFs.finding, /^not offered/, 'cipherlist_STRONG_NOFS');
}

/** Forward secrecy offered, and every cipher it lists is TLS 1.3 or ECDHE with `auth` (ECDSA or RSA). */
function assertForwardSecrecy(s: Scan, auth: 'ECDSA' | 'RSA'): void {
  // testssl.sh 3.0 says PFS, 3.1 and later FS.
  assert.match(finding(s, 'PFS', 'FS').finding, /^offered/, 'forward secrecy');
  const ciphers = finding(s, 'PFS_ciphers', 'FS_ciphers').finding.split(/\s+/).filter(Boolean);
  assert.ok(ciphers.some((c) => c.startsWith(`ECDHE-${auth}-`)), `an ECDHE-${auth} suite among ${ciphers.join(' ')}`);
  for (const c of ciphers) assert.match(c, new RegExp(`^(TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)|ECDHE-${auth}-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305))$`), c);
}

/** Nothing worse than LOW anywhere, no scan error (WARN, FATAL) that would leave a check unproven. */
function assertNothingSevere(s: Scan): void {
  const bad = s.all.filter((f) => ['MEDIUM', 'HIGH', 'CRITICAL', 'WARN', 'FATAL'].includes(f.severity));
  assert.deepEqual(bad, [], 'findings of severity MEDIUM or worse, or scan errors');
}

/** The vulnerability checks of -U (ids of testssl.sh 3.0, kept in 3.2): each one ran and found nothing. */
const vulnerabilities = ['heartbleed', 'CCS', 'ticketbleed', 'ROBOT', 'secure_renego', 'secure_client_renego', 'CRIME_TLS', 'BREACH', 'POODLE_SSL', 'fallback_SCSV', 'SWEET32', 'FREAK', 'DROWN', 'LOGJAM', 'BEAST', 'LUCKY13', 'RC4'];

async function httpsBalancer(t: TestContext, certificate: CertFiles, profile: 'intermediate' | 'modern'): Promise<number> {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { profile, certificates: [{ cert: certificate.certPath, key: certificate.keyPath }] } }],
    pools: { web: { upstreams: [backend.url] } },
  });
  return lb.port;
}

// The scans at once: testssl.sh waits on its children (and sleeps in whole seconds) much of the time.
describe('testssl.sh against HTTPS listeners', { skip, concurrency: true, timeout: 600_000 }, () => {
  test('intermediate, ECDSA P-256: TLS 1.2 and 1.3 only, no weak ciphers, forward secrecy, no vulnerability (-p -s -f, -U)', async (t) => {
    const ca = await makeTestCa(t);
    const port = await httpsBalancer(t, await ca.issue('ecdsa'), 'intermediate');
    const s = await scanAll(t, port, checks.ecdsa);
    printSummary(t, s);
    assertProtocols(s, false);
    assertCipherCategories(s);
    assertForwardSecrecy(s, 'ECDSA');
    for (const id of vulnerabilities) assert.equal(finding(s, id).severity, 'OK', `${id}: ${finding(s, id).finding}`);
    assertNothingSevere(s);
  });

  test('intermediate, RSA 2048: the ECDHE-RSA suites only, no RSA key transport, no weak ciphers (-s -f -BB)', async (t) => {
    const ca = await makeTestCa(t);
    const port = await httpsBalancer(t, await ca.issue('rsa', { keyType: 'rsa' }), 'intermediate');
    const s = await scanAll(t, port, checks.rsa);
    printSummary(t, s);
    assertCipherCategories(s);
    assertForwardSecrecy(s, 'RSA');
    // ROBOT needs RSA key transport (TLS_RSA_*), which the profile leaves out.
    assert.match(finding(s, 'ROBOT').finding, /no RSA key transport/, 'ROBOT');
    assertNothingSevere(s);
  });

  test('modern: TLS 1.3 only (-p)', async (t) => {
    const ca = await makeTestCa(t);
    const port = await httpsBalancer(t, await ca.issue('ecdsa'), 'modern');
    const s = await scanAll(t, port, checks.modern);
    printSummary(t, s);
    assertProtocols(s, true);
    assertNothingSevere(s);
  });
});
