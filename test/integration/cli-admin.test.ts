/**
 * The admin commands as an operator types them: `fulcrum status`, `fulcrum backends ...`,
 * `fulcrum certificates ...`, `fulcrum reload`, `fulcrum check --diff` and `fulcrum start --watch`, each the real CLI in a
 * child process (Node 24, src/cli.ts) against real sockets on 127.0.0.1.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createBalancer, loadConfigFile, type Balancer } from '../../src/index.ts';
import { createLogger } from '../../src/observe/logger.ts';
import { startBackend, get, closedPort, type TestBackend } from '../helpers/servers.ts';
import { eventually } from '../helpers/eventually.ts';
import { makeTestCa } from '../helpers/tls.ts';

const cli = new URL('../../src/cli.ts', import.meta.url).pathname;
const TOKEN = 'cli-test-token-0123456789abc';
const limit = { timeout: 30_000 };

/** The environment without FULCRUM_* variables, so the developer's shell cannot leak in. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FULCRUM_')) env[k] = v;
  return { ...env, ...extra };
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-cli-admin-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs `fulcrum ARGS` to completion (at most 15 s) in `cwd`. */
function fulcrum(args: string[], options: { cwd: string; env?: Record<string, string> }): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { cwd: options.cwd, env: cleanEnv(options.env), timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      resolve({ stdout, stderr, code });
    });
  });
}

async function backend(t: TestContext, name: string): Promise<TestBackend & { id: string }> {
  const b = await startBackend(t, (_req, res) => res.end(name));
  return { ...b, id: `127.0.0.1:${b.port}` };
}

function yamlConfig(upstreams: string[], extra = ''): string {
  return [
    'listeners:',
    '  - host: 127.0.0.1',
    '    port: 0',
    'admin:',
    '  host: 127.0.0.1',
    '  port: 0',
    `  token: ${TOKEN}`,
    'pools:',
    '  api:',
    ...(extra ? [extra] : []),
    '    upstreams:',
    ...upstreams.map((u) => `      - ${u}`),
    '',
  ].join('\n');
}

interface Running {
  balancer: Balancer;
  url: string;
  admin: string;
  file: string;
  dir: string;
}

/** A balancer in this process, started from a file (so `fulcrum reload` has one to read). */
async function startFromFile(t: TestContext, upstreams: string[]): Promise<Running> {
  const dir = tempDir(t);
  // Not ./fulcrum.yaml: the admin commands would read their URL and token from that.
  const file = join(dir, 'balancer.yaml');
  writeFileSync(file, yamlConfig(upstreams));
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const balancer = createBalancer(loadConfigFile(file, {}), { configFile: file, logger: createLogger({ level: 'info', format: 'json' }, { destination: sink }) });
  const [address] = await balancer.start();
  t.after(() => balancer.close(1000));
  return { balancer, url: `http://127.0.0.1:${address.port}`, admin: `http://127.0.0.1:${balancer.adminAddress()!.port}`, file, dir };
}

// ---------------------------------------------------------------------------------------------

test('fulcrum status prints the table and exits 0 (--admin, FULCRUM_ADMIN_URL, --json)', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, [a.url, b.url]);
  for (let i = 0; i < 4; i++) assert.equal((await get(r.url + '/')).status, 200);

  const { stdout, stderr, code } = await fulcrum(['status', '--admin', r.admin], { cwd: r.dir });
  assert.equal(code, 0, stderr);
  assert.match(stdout, new RegExp(`^fulcrum \\d+\\.\\d+\\.\\d+, up \\d+s, config ${r.file} loaded \\S+\\n`));
  assert.match(stdout, /^2 of 2 backends active$/m);
  assert.match(stdout, /^POOL\s+BACKEND\s+STATE\s+WEIGHT\s+IN-FLIGHT\s+REQUESTS\s+FAILURES\s+EJECTIONS$/m);
  assert.match(stdout, new RegExp(`^api\\s+${a.url}\\s+up\\s+1\\s+0\\s+2\\s+0\\s+0$`, 'm'));
  assert.match(stdout, new RegExp(`^api\\s+${b.url}\\s+up\\s+1\\s+0\\s+2\\s+0\\s+0$`, 'm'));
  assert.doesNotMatch(stdout, /runtime-only/);

  const viaEnv = await fulcrum(['status'], { cwd: r.dir, env: { FULCRUM_ADMIN_URL: r.admin } });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  assert.match(viaEnv.stdout, /^2 of 2 backends active$/m);

  const json = await fulcrum(['status', '--json', '--admin', r.admin.replace('http://', '')], { cwd: r.dir });
  assert.equal(json.code, 0, json.stderr);
  const parsed = JSON.parse(json.stdout);
  assert.equal(parsed.total_backends, 2);
  assert.deepEqual(parsed.backends.map((x: { requests: number }) => x.requests), [2, 2]);
});

test('fulcrum backends add, drain, weight, remove: change lines printed, the balancer changed', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, [a.url]);
  const status = () => r.balancer.status();

  const added = await fulcrum(['backends', 'add', b.url, '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(added.code, 0, added.stderr);
  assert.equal(added.stdout, `pool api: +1 upstream ${b.id}\n(runtime-only: a restart loses it unless the file says the same; \`fulcrum status\` lists it)\n`);
  assert.deepEqual(status().backends.map((x) => x.url), [a.url, b.url]);
  const bodies: string[] = [];
  for (let i = 0; i < 4; i++) bodies.push((await get(r.url + '/')).body);
  assert.equal(bodies.filter((x) => x === 'b').length, 2, 'the added backend gets traffic');

  // The token from FULCRUM_ADMIN_TOKEN.
  const drained = await fulcrum(['backends', 'drain', b.url, '--admin', r.admin], { cwd: r.dir, env: { FULCRUM_ADMIN_TOKEN: TOKEN } });
  assert.equal(drained.code, 0, drained.stderr);
  assert.match(drained.stdout, new RegExp(`^pool api: ${b.id} draining\\n`));
  assert.equal(status().backends.find((x) => x.url === b.url)!.draining, true);
  const shown = await fulcrum(['status', '--admin', r.admin], { cwd: r.dir });
  assert.match(shown.stdout, new RegExp(`^api\\s+${b.url}\\s+draining\\s.*runtime-only$`, 'm'));
  assert.match(shown.stdout, /runtime-only changes \(lost on restart; set admin.persist to write them to the file\):/);
  assert.match(shown.stdout, new RegExp(`  \\S+  add ${b.id} in pool api \\(weight 1\\)`));
  assert.match(shown.stdout, new RegExp(`  \\S+  drain ${b.id} in pool api`));

  // Admin URL and token from the admin section of -c FILE.
  const clientFile = join(r.dir, 'client.yaml');
  writeFileSync(clientFile, `admin:\n  port: ${new URL(r.admin).port}\n  token: ${TOKEN}\npools:\n  x:\n    upstreams: [http://127.0.0.1:1]\n`);
  const weighted = await fulcrum(['backends', 'weight', a.url, '3', '-c', clientFile], { cwd: r.dir });
  assert.equal(weighted.code, 0, weighted.stderr);
  assert.match(weighted.stdout, new RegExp(`^pool api: weight of ${a.id} 1 -> 3\\n`));
  assert.equal(status().backends.find((x) => x.url === a.url)!.weight, 3);

  const removed = await fulcrum(['backends', 'remove', b.url, '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(removed.code, 0, removed.stderr);
  assert.match(removed.stdout, new RegExp(`^pool api: -1 upstream ${b.id}\\n`));
  assert.deepEqual(status().backends.map((x) => x.url), [a.url]);

  // Refusals: the server's message, exit 1; a usage mistake: exit 2.
  const dup = await fulcrum(['backends', 'add', a.url, '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, new RegExp(`fulcrum: ${a.id} is already in pool api`));
  const last = await fulcrum(['backends', 'remove', a.url, '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(last.code, 1);
  assert.match(last.stderr, /only upstream of pool api/);
  const usage = await fulcrum(['backends', 'add', '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /usage: fulcrum backends add/);
  const badWeight = await fulcrum(['backends', 'weight', a.url, '0', '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(badWeight.code, 2);
  assert.match(badWeight.stderr, /the weight must be a number above 0, got "0"/);
  assert.deepEqual(status().backends.map((x) => [x.url, x.weight]), [[a.url, 3]]);
});

test('fulcrum backends with a wrong or missing token: exit 1, a message about the token, nothing changed', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, [a.url]);
  const wrong = await fulcrum(['backends', 'add', b.url, '--admin', r.admin, '--token', 'definitely-not-the-token'], { cwd: r.dir });
  assert.equal(wrong.code, 1);
  assert.equal(wrong.stdout, '');
  assert.match(wrong.stderr, /^fulcrum: wrong admin token \(token from --token, FULCRUM_ADMIN_TOKEN or the config's admin\.token; admin API http:\/\/127\.0\.0\.1:\d+\)\n$/);
  const none = await fulcrum(['backends', 'drain', a.url, '--admin', r.admin], { cwd: r.dir });
  assert.equal(none.code, 1);
  assert.match(none.stderr, /needs the admin token: .* \(no token given: pass it with --token or FULCRUM_ADMIN_TOKEN.*logged it at warn/);
  const s = r.balancer.status();
  assert.deepEqual(s.backends.map((x) => [x.url, x.draining]), [[a.url, false]]);
  assert.deepEqual(s.runtime_changes, []);
});

test('fulcrum status with an unreachable admin URL: exit 1, "cannot reach"', limit, async (t) => {
  const port = await closedPort();
  const dir = tempDir(t);
  const res = await fulcrum(['status', '--admin', `http://127.0.0.1:${port}`], { cwd: dir });
  assert.equal(res.code, 1);
  assert.equal(res.stdout, '');
  assert.match(res.stderr, new RegExp(`^fulcrum: cannot reach the admin API at http://127\\.0\\.0\\.1:${port}: ECONNREFUSED\\n$`));
  const write = await fulcrum(['backends', 'add', 'http://127.0.0.1:1', '--admin', `127.0.0.1:${port}`, '--token', TOKEN], { cwd: dir });
  assert.equal(write.code, 1);
  assert.match(write.stderr, /cannot reach the admin API/);
});

test('fulcrum reload after editing the file prints the change; an invalid file: exit 1 with file:line', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const r = await startFromFile(t, [a.url]);
  writeFileSync(r.file, yamlConfig([a.url, b.url]));
  const ok = await fulcrum(['reload', '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, `pool api: +1 upstream ${b.id}\n`);
  assert.deepEqual(r.balancer.status().backends.map((x) => x.url), [a.url, b.url]);
  const again = await fulcrum(['reload', '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(again.stdout, 'no changes\n');

  const invalid = yamlConfig([a.url, b.url], '    polcy: least-connections');
  writeFileSync(r.file, invalid);
  const line = invalid.split('\n').findIndex((l) => l.includes('polcy')) + 1;
  const bad = await fulcrum(['reload', '--admin', r.admin, '--token', TOKEN], { cwd: r.dir });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /running configuration stays/);
  assert.ok(bad.stderr.includes(`${r.file}:${line}:5: pools.api.polcy: unknown key "polcy"`), bad.stderr);
  assert.deepEqual(r.balancer.status().backends.map((x) => x.url), [a.url, b.url]);
  assert.equal((await get(r.url + '/')).status, 200);
});

test('fulcrum status and fulcrum certificates show each certificate with its days left; expiring and broken ones are marked', { timeout: 60_000 }, async (t) => {
  const a = await backend(t, 'a');
  const ca = await makeTestCa(t);
  const site = await ca.issue('site', { names: ['localhost', '127.0.0.1'], days: 60 });
  const soon = await ca.issue('soon', { names: ['soon.test'], notAfter: new Date(Date.now() + 5 * 86_400_000 + 3_600_000) });
  const dir = tempDir(t);
  const file = join(dir, 'balancer.yaml');
  const config = [
    'listeners:',
    '  - name: secure',
    '    host: 127.0.0.1',
    '    port: 0',
    '    protocol: https',
    '    tls:',
    '      watch: false',
    '      certificates:',
    `        - { cert: ${site.certPath}, key: ${site.keyPath}, default: true }`,
    `        - { cert: ${soon.bothPath} }`,
    'admin:',
    '  host: 127.0.0.1',
    '  port: 0',
    `  token: ${TOKEN}`,
    'pools:',
    '  api:',
    `    upstreams: [${a.url}]`,
    '',
  ].join('\n');
  writeFileSync(file, config);
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const balancer = createBalancer(loadConfigFile(file, {}), { configFile: file, logger: createLogger({ level: 'info', format: 'json' }, { destination: sink }) });
  await balancer.start();
  t.after(() => balancer.close(1000));
  const admin = `http://127.0.0.1:${balancer.adminAddress()!.port}`;
  const expires = (d: Date | string) => new Date(d).toISOString().slice(0, 10);
  const siteNotAfter = balancer.status().certificates.find((c) => c.serial === site.serial)!.not_after;

  // The commands that change nothing, at once (each is a Node process start).
  const [shown, listed, listedJson, renew, usage] = await Promise.all([
    fulcrum(['status', '--admin', admin], { cwd: dir }),
    fulcrum(['certificates', '--admin', admin], { cwd: dir }),
    fulcrum(['certificates', 'list', '--json', '--admin', admin], { cwd: dir }),
    fulcrum(['certificates', 'renew', 'soon.test', '--admin', admin, '--token', TOKEN], { cwd: dir }),
    fulcrum(['certificates', 'rotate', '--admin', admin], { cwd: dir }),
  ]);
  // One line each: listener, names, days left, expiry date, serial, source; the one within 21 days says so.
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /^LISTENER\s+NAMES\s+DAYS LEFT\s+EXPIRES\s+SERIAL\s+SOURCE$/m);
  assert.match(shown.stdout, new RegExp(`^secure\\s+localhost\\s+(59|60)\\s+${expires(siteNotAfter)}\\s+${site.serial}\\s+${site.certPath} \\+ ${site.keyPath}\\s+default$`, 'm'));
  assert.match(shown.stdout, new RegExp(`^secure\\s+soon\\.test\\s+5 \\(expires soon\\)\\s+\\d{4}-\\d\\d-\\d\\d\\s+${soon.serial}\\s+${soon.bothPath}$`, 'm'));
  // Not a terminal: no colour codes.
  assert.doesNotMatch(shown.stdout, /\x1b\[/);
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(listed.stdout.split('\n').filter((l) => l.startsWith('secure ')), shown.stdout.split('\n').filter((l) => l.startsWith('secure ')));
  // --json is the API's answer.
  assert.deepEqual(JSON.parse(listedJson.stdout), balancer.status().certificates);
  // Renew: a domain without ACME is the server's 404; a wrong action is a usage error.
  assert.equal(renew.code, 1);
  assert.match(renew.stderr, /no listener gets an ACME certificate for "soon\.test"/);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /unknown certificates action "rotate"; usage: fulcrum certificates/);

  // Reload: nothing changed; then a broken key: exit 1 with the file and reason, and the old certificate stays and says why.
  const same = await fulcrum(['certificates', 'reload', '--admin', admin, '--token', TOKEN], { cwd: dir });
  assert.equal(same.code, 0, same.stderr);
  assert.equal(same.stdout, 'listener secure: no certificate changed\n');
  writeFileSync(site.keyPath, 'not a key\n');
  const broken = await fulcrum(['certificates', 'reload', '--admin', admin, '--token', TOKEN], { cwd: dir });
  assert.equal(broken.code, 1);
  assert.ok(broken.stdout.startsWith(`listener secure: ${site.keyPath}: `), broken.stdout);
  assert.match(broken.stdout, /\(the certificate loaded before stays\)\n$/);
  const after = await fulcrum(['status', '--admin', admin], { cwd: dir });
  assert.match(after.stdout, new RegExp(`^secure\\s+localhost\\s+.*${site.serial}.*default; error: .+ \\(the certificate loaded before is served\\)$`, 'm'));
});

const diffBase = `
listeners:
  - port: 8080
pools:
  api:
    upstreams:
      - http://10.0.0.1:80
      - http://10.0.0.2:80
  web:
    upstreams: [http://10.0.1.1:80]
routes:
  - path_prefix: /api
    pool: api
  - pool: web
`;

test('fulcrum check --diff OLD NEW: the issue\'s example, no changes, an invalid file', limit, async (t) => {
  const dir = tempDir(t);
  const old = join(dir, 'old.yaml');
  const next = join(dir, 'new.yaml');
  const same = join(dir, 'same.yaml');
  const broken = join(dir, 'broken.yaml');
  writeFileSync(old, diffBase);
  writeFileSync(next, diffBase.replace('      - http://10.0.0.2:80', '      - { url: http://10.0.0.2:80, weight: 3 }\n      - http://10.0.0.4:80'));
  // Reordered and spelled differently, but the same configuration.
  writeFileSync(same, diffBase.replace('      - http://10.0.0.1:80\n      - http://10.0.0.2:80', '      - http://10.0.0.2:80/\n      - url: http://10.0.0.1\n        weight: 1'));
  writeFileSync(broken, diffBase.replace('    upstreams: [http://10.0.1.1:80]', '    upstreams: [http://10.0.1.1:80]\n    timeouts: {connect: soon}'));

  const changed = await fulcrum(['check', '--diff', old, next], { cwd: dir });
  assert.equal(changed.code, 0, changed.stderr);
  assert.equal(changed.stdout, 'pool api: +1 upstream 10.0.0.4:80, weight of 10.0.0.2:80 1 -> 3\n');
  assert.equal(changed.stderr, '');

  const none = await fulcrum(['check', '--diff', old, same], { cwd: dir });
  assert.equal(none.code, 0, none.stderr);
  assert.equal(none.stdout, 'no changes\n');

  const bad = await fulcrum(['check', '--diff', old, broken], { cwd: dir });
  assert.equal(bad.code, 1);
  assert.equal(bad.stdout, '');
  assert.ok(bad.stderr.includes(`${broken}:11:25: pools.web.timeouts.connect: expected a duration`), bad.stderr);

  const one = await fulcrum(['check', '--diff', old], { cwd: dir });
  assert.equal(one.code, 2);
  assert.match(one.stderr, /check --diff needs two files/);
});

/** `fulcrum start ARGS` in a child process; resolves with its port once it listens and watches. */
async function startChild(t: TestContext, args: string[], dir: string): Promise<{ child: ChildProcess; url: string; output: () => string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [cli, 'start', ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: cleanEnv({ FULCRUM_LOG_FORMAT: 'json' }) });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const port = await eventually(() => /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)?.[1], { timeout: 15_000, what: `fulcrum to listen:\n${out}` });
  await eventually(() => out.includes('watching '), { timeout: 5000, what: 'the watch to start' });
  return { child, url: `http://127.0.0.1:${port}`, output: () => out, exited };
}

function fileConfig(upstreams: string[], extra = ''): string {
  return ['listeners:', '  - host: 127.0.0.1', '    port: 0', 'log:', '  access_log: false', ...(extra ? [extra] : []), 'pools:', '  api:', '    upstreams:', ...upstreams.map((u) => `      - ${u}`), ''].join('\n');
}

async function bodiesOf(url: string, n: number): Promise<string[]> {
  const bodies: string[] = [];
  for (let i = 0; i < n; i++) {
    const res = await get(url + '/');
    assert.equal(res.status, 200, res.body);
    bodies.push(res.body);
  }
  return bodies;
}

test('fulcrum start --watch: an edit reloads within seconds; an invalid edit is logged with file:line and the old config serves', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const dir = tempDir(t);
  const file = join(dir, 'fulcrum.yaml');
  writeFileSync(file, fileConfig([a.url]));
  const child = await startChild(t, ['--watch', '-c', file], dir);
  assert.deepEqual(await bodiesOf(child.url, 2), ['a', 'a']);

  writeFileSync(file, fileConfig([a.url, b.url]));
  await eventually(async () => (await bodiesOf(child.url, 2)).includes('b'), { timeout: 5000, interval: 50, what: 'the new upstream to get traffic' });
  assert.match(child.output(), new RegExp(`configuration reloaded \\(watch\\): pool api: \\+1 upstream ${b.id}`));

  const invalid = fileConfig([a.url, b.url]).replace('    upstreams:', '    polcy: least-connections\n    upstreams:');
  const line = invalid.split('\n').findIndex((l) => l.includes('polcy')) + 1;
  writeFileSync(file, invalid);
  await eventually(() => child.output().includes('reload refused (watch)'), { timeout: 5000, interval: 50, what: 'the refused reload to be logged' });
  assert.ok(child.output().includes(`${file}:${line}:5: pools.api.polcy: unknown key`), child.output());
  const bodies = await bodiesOf(child.url, 4);
  assert.deepEqual(bodies.sort(), ['a', 'a', 'b', 'b'], 'the old configuration keeps serving');

  // Fixed again: it reloads again.
  writeFileSync(file, fileConfig([b.url]));
  await eventually(async () => (await bodiesOf(child.url, 4)).every((x) => x === 'b'), { timeout: 5000, interval: 50, what: 'the fixed file to be applied' });
});

test('reload.watch: true in the file watches without --watch; SIGTERM then exits 0', limit, async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const dir = tempDir(t);
  const file = join(dir, 'fulcrum.yaml');
  const watchOn = 'reload:\n  watch: true\n  debounce: 50ms';
  writeFileSync(file, fileConfig([a.url], watchOn));
  const child = await startChild(t, ['-c', file], dir);
  assert.deepEqual(await bodiesOf(child.url, 2), ['a', 'a']);
  // An editor's save: a new file renamed over the old one.
  writeFileSync(`${file}.tmp`, fileConfig([b.url], watchOn));
  renameSync(`${file}.tmp`, file);
  await eventually(async () => (await bodiesOf(child.url, 2)).every((x) => x === 'b'), { timeout: 5000, interval: 50, what: 'the renamed-over file to be applied' });
  child.child.kill('SIGTERM');
  assert.equal(await child.exited, 0);
});
