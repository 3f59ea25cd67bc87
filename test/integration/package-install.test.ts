/**
 * Fulcrum as users install it. A copy of the working tree (a "clone": a git repository, with the
 * dependencies installed) is packed with `npm pack`, and the tarball installed in a fresh project:
 * `npx fulcrum` and the `fulcrum` launcher on Node 24 and on an older Node, `import ... from
 * 'fulcrum'` from JavaScript and from strict NodeNext TypeScript, and SIGHUP/SIGTERM sent to
 * whichever process the user started. The clone, without dist/, is also installed as a directory
 * (npm runs its `prepare`, which builds dist/), and, with FULCRUM_TEST_GIT_INSTALL=1, over git.
 * npm runs with --offline from the local cache (--prefer-offline if something is missing); the
 * tests skip only if neither can install.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { eventually } from '../helpers/eventually.ts';
import { startBackend } from '../helpers/servers.ts';

const root = path.resolve(import.meta.dirname, '../..');
const node24Dir = path.dirname(process.execPath);
const work = mkdtempSync(path.join(tmpdir(), 'fulcrum-install-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

/** This environment with `nodeDir` first in PATH, without the npm variables of an enclosing `npm test` or the test runner's. */
function userEnv(nodeDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${nodeDir}${path.delimiter}${process.env.PATH}`, FULCRUM_LOG_FORMAT: 'json' };
  for (const name of Object.keys(env)) if ((name.startsWith('npm_') && name !== 'npm_config_cache' && name !== 'npm_config_registry') || name.startsWith('NODE_TEST')) delete env[name];
  return { ...env, npm_config_update_notifier: 'false', npm_config_fetch_retries: '1' };
}
const env24 = userEnv(node24Dir);

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv; timeout?: number }): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: options.cwd, env: options.env ?? env24, timeout: options.timeout ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr: err !== null && code === -1 ? `${err.message}\n${stderr}` : stderr });
    });
  });
}

function must(ran: Ran, what: string): Ran {
  assert.equal(ran.code, 0, `${what} failed (${ran.code}):\n${ran.stdout}\n${ran.stderr}`);
  return ran;
}

/** `npm install` from the npm cache, or from the registry if the cache lacks something; undefined if neither works. */
async function npmInstall(cwd: string, specs: string[]): Promise<Ran | undefined> {
  let ran = await run('npm', ['install', '--offline', '--no-audit', '--no-fund', ...specs], { cwd });
  if (ran.code !== 0 && /ENOTCACHED/.test(ran.stderr)) ran = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', ...specs], { cwd });
  if (ran.code !== 0 && /ENOTCACHED|ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET|ENETUNREACH/.test(ran.stderr)) return undefined;
  return must(ran, `npm install ${specs.join(' ')}`);
}

function project(name: string): string {
  const dir = path.join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
  return dir;
}

/** The working tree as a clone has it: the files git knows (committed or not), committed to a new repository. */
function makeClone(): string {
  const clone = path.join(work, 'clone');
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' }).split('\0');
  for (const file of files) {
    if (file === '' || file === 'node_modules' || !existsSync(path.join(root, file))) continue;
    cpSync(path.join(root, file), path.join(clone, file), { recursive: true });
  }
  const git = (...args: string[]): void => void execFileSync('git', ['-c', 'user.name=test', '-c', 'user.email=test@example.com', ...args], { cwd: clone, stdio: 'pipe' });
  git('init', '-q');
  git('add', '-A');
  git('commit', '-q', '-m', 'clone');
  return clone;
}

interface Installed {
  clone: string;
  tarball: string;
  /** A project with the tarball, typescript and @types/node installed. */
  consumer: string;
}

let setup: Promise<Installed | undefined> | undefined;
/** Packs a clone and installs the tarball in a fresh project, once for every test in this file. */
function installed(): Promise<Installed | undefined> {
  setup ??= (async () => {
    const clone = makeClone();
    // After `npm install` in the clone: its dependencies are there (the repository's own), and
    // `npm pack` runs `prepare` as that `npm install` would.
    symlinkSync(path.join(root, 'node_modules'), path.join(clone, 'node_modules'));
    const packed = must(await run('npm', ['pack', '--offline', '--pack-destination', work], { cwd: clone }), 'npm pack');
    const tarball = path.join(work, packed.stdout.trim().split('\n').pop()!);
    // Back to what git has: no dist/.
    rmSync(path.join(clone, 'dist'), { recursive: true, force: true });
    const consumer = project('consumer');
    const version = (name: string): string => JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')).version;
    const ok = await npmInstall(consumer, [tarball, `typescript@${version('typescript')}`, `@types/node@${version('@types/node')}`]);
    return ok && { clone, tarball, consumer };
  })();
  return setup;
}

async function need(t: TestContext): Promise<Installed | undefined> {
  const got = await installed();
  if (!got) t.skip('the npm registry is unreachable and the npm cache lacks a dependency');
  return got;
}

/** A Node.js older than 24 on this machine (the system one, often), in a directory of its own for PATH. */
function oldNodeDir(): string | undefined {
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node', '/opt/homebrew/bin/node']) {
    if (!existsSync(candidate)) continue;
    const version = execFileSync(candidate, ['--version'], { encoding: 'utf8' }).trim();
    if (Number(version.slice(1).split('.')[0]) >= 24) continue;
    const dir = path.join(work, 'old-node');
    if (!existsSync(dir)) {
      mkdirSync(dir);
      symlinkSync(candidate, path.join(dir, 'node'));
    }
    return dir;
  }
  return undefined;
}

/** True while `pid` runs (a zombie nobody reaps has stopped running). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  if (!existsSync('/proc/self/stat')) return true;
  try {
    return !/^\d+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

async function refused(port: number): Promise<boolean> {
  try {
    await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) });
    return false;
  } catch (err) {
    return (err as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
  }
}

async function body(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) })).text();
}

interface Started {
  child: ChildProcess;
  /** The balancer's process id, from its log lines (the launcher's own on Node 24, a child of it on an older Node). */
  pid: number;
  port: number;
  file: string;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Writes a config for `upstream` in `cwd` and runs `command start -c FILE` until it listens. */
async function startFulcrum(t: TestContext, command: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv; upstream: string }): Promise<Started> {
  const file = path.join(options.cwd, `fulcrum-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, config(options.upstream));
  const child = spawn(command, [...args, 'start', '-c', file], { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let pid = 0;
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (pid > 0 && alive(pid)) process.kill(pid, 'SIGKILL');
  });
  const gone = (): boolean => child.exitCode !== null || child.signalCode !== null;
  const m = await waitFor(() => /"pid":(\d+).*listening on http:\/\/[^:]+:(\d+)/.exec(out) ?? (gone() ? 'exited' : null), 'fulcrum to listen', { output: () => out });
  if (m === null || m === 'exited') assert.fail(`${command} ${args.join(' ')} start exited (${child.exitCode ?? child.signalCode}) before listening:\n${out}`);
  pid = Number(m[1]);
  return { child, pid, port: Number(m[2]), file, output: () => out, exited };
}

function config(upstream: string): string {
  return `listeners: [{host: 127.0.0.1, port: 0}]\nlog: {level: info, access_log: false}\npools:\n  web:\n    upstreams: ["${upstream}"]\n`;
}

/** Backends that answer "A" and "B", to see which one a configuration points at. */
async function backends(t: TestContext): Promise<{ a: string; b: string }> {
  const a = await startBackend(t, (_req, res) => res.end('A'));
  const b = await startBackend(t, (_req, res) => res.end('B'));
  return { a: a.url, b: b.url };
}

/** SIGHUP reloads: the file now points at B, and requests follow. */
async function assertSighupReloads(started: Started, b: string, signalled: number): Promise<void> {
  assert.equal(await body(started.port), 'A');
  writeFileSync(started.file, config(b));
  process.kill(signalled, 'SIGHUP');
  await waitFor(async () => (await body(started.port)) === 'B', 'the reload after SIGHUP', started);
  assert.ok(alive(started.pid));
}

/** The balancer and the process the user started are gone and the port is free. */
async function assertStopped(started: Started, expectedCode?: number): Promise<void> {
  const { code } = await started.exited;
  if (expectedCode !== undefined) assert.equal(code, expectedCode, started.output());
  await waitFor(() => !alive(started.pid), `balancer process ${started.pid} to exit`, started);
  assert.ok(await refused(started.port), 'the port is still accepting');
}

/** `eventually`, with what the process printed so far and the processes left in the error. */
async function waitFor<T>(check: () => T | Promise<T>, what: string, started: { output: () => string }): Promise<T> {
  try {
    return await eventually(check, { timeout: 15_000, what });
  } catch (err) {
    let processes = '';
    try {
      processes = execFileSync('ps', ['-eo', 'pid,ppid,stat,args'], { encoding: 'utf8' }).split('\n').filter((line) => /fulcrum|npm/.test(line)).join('\n');
    } catch {
      // No ps: the output alone.
    }
    throw new Error(`${(err as Error).message}\n--- output ---\n${started.output()}\n--- processes ---\n${processes}`);
  }
}

const tsConsumer = `import { AdminClient, createBalancer, type FulcrumConfigInput } from 'fulcrum';
import { AdminClient as ClientOnly } from 'fulcrum/client';

const [upstream, token] = process.argv.slice(2);
const config: FulcrumConfigInput = {
  listeners: [{ host: '127.0.0.1', port: 0 }],
  log: { level: 'error' },
  pools: { web: { upstreams: [upstream] } },
  admin: { host: '127.0.0.1', port: 0, token },
};
const balancer = createBalancer(config);
const [listener] = await balancer.start();
const answer: string = await (await fetch(listener.url)).text();
const client: ClientOnly = new AdminClient({ url: balancer.adminAddress()!.url, token });
const status = await client.status();
// The types are real, not \`any\` from a declaration file that failed to resolve (only compiled, never called).
export function typesAreReal(): void {
  // @ts-expect-error: total_backends is a number
  const wrong: string = status.total_backends;
  // @ts-expect-error: a pool needs upstreams
  createBalancer({ pools: { web: {} } });
}
console.log(JSON.stringify({ answer, backends: status.total_backends }));
await balancer.close();
`;

test('npm pack, install the tarball: npx fulcrum --help and check run on Node 24', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const help = must(await run('npx', ['fulcrum', '--help'], { cwd: got.consumer }), 'npx fulcrum --help');
  assert.match(help.stdout, /^fulcrum \d+\.\d+\.\d+: an HTTP and TCP load balancer/);
  writeFileSync(path.join(got.consumer, 'f.yaml'), config('http://127.0.0.1:9'));
  assert.match(must(await run('npx', ['fulcrum', 'check', 'f.yaml'], { cwd: got.consumer }), 'npx fulcrum check').stdout, /f\.yaml: ok/);
});

test('installed package: the library from JavaScript and from strict NodeNext TypeScript', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const backend = await startBackend(t, (_req, res) => res.end('hello'));
  const token = 'package-install-token-0123456789';
  const dir = path.join(got.consumer, 'ts');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'main.ts'), tsConsumer);
  writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext', strict: true, skipLibCheck: true, types: ['node'], outDir: 'out' }, include: ['main.ts'] }),
  );
  must(await run(path.join(got.consumer, 'node_modules/.bin/tsc'), ['-p', dir], { cwd: got.consumer }), 'tsc on the TypeScript consumer');
  const fromTs = must(await run('node', [path.join(dir, 'out/main.js'), backend.url, token], { cwd: got.consumer }), 'the compiled TypeScript consumer');
  assert.deepEqual(JSON.parse(fromTs.stdout.trim().split('\n').pop()!), { answer: 'hello', backends: 1 });
  // The same program as JavaScript, typed only by the compiler: strip nothing, run as a consumer's .mjs.
  const js = tsConsumer.replace(', type FulcrumConfigInput', '').replace(': FulcrumConfigInput', '').replace(': string', '').replace(': ClientOnly', '').replace('()!.url', '().url').replace(/\/\/ The types are real[^]*?\n}\n/, '');
  writeFileSync(path.join(got.consumer, 'main.mjs'), js);
  const fromJs = must(await run('node', ['main.mjs', backend.url, token], { cwd: got.consumer }), 'the JavaScript consumer');
  assert.deepEqual(JSON.parse(fromJs.stdout.trim().split('\n').pop()!), { answer: 'hello', backends: 1 });
});

test('installed package on an older Node: the command and the import say what to install', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const old = oldNodeDir();
  if (!old) return t.skip('no Node.js older than 24 on this machine (looked in /usr/bin, /usr/local/bin, /opt/homebrew/bin)');
  const env = userEnv(old);
  const oldVersion = execFileSync(path.join(old, 'node'), ['--version'], { encoding: 'utf8' }).trim();
  for (const args of [['fulcrum', '--help'], ['fulcrum', 'start', '-c', 'f.yaml']]) {
    const ran = await run('npx', args, { cwd: got.consumer, env });
    assert.notEqual(ran.code, 0);
    assert.equal(ran.stdout, '');
    assert.match(ran.stderr, new RegExp(`^Fulcrum needs Node\\.js 24 or later; you have ${oldVersion.replaceAll('.', '\\.')}: install Node\\.js 24 .*npm install node@24`, 'm'));
    assert.doesNotMatch(ran.stderr, /^\s+at /m, 'no stack trace');
  }
  const imported = await run('node', ['--input-type=module', '-e', "import('fulcrum').then(() => console.log('imported'), (err) => console.log(err.code, err.message))"], { cwd: got.consumer, env });
  assert.match(imported.stdout, /^ERR_FULCRUM_NODE_VERSION Fulcrum needs Node\.js 24 or later; you have v\d+\.\d+\.\d+: install Node\.js 24/);
});

test('installed package on an older Node with node@24 in the project: the launcher runs on it and passes signals on', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const old = oldNodeDir();
  if (!old) return t.skip('no Node.js older than 24 on this machine (looked in /usr/bin, /usr/local/bin, /opt/homebrew/bin)');
  // `npm install node@24` in the project, without downloading Node again: the repository's own copy.
  const nodePackage = path.join(got.consumer, 'node_modules/node');
  symlinkSync(path.join(root, 'node_modules/node'), nodePackage);
  t.after(() => unlinkSync(nodePackage));
  const env = userEnv(old);
  const launcher = path.join(got.consumer, 'node_modules/.bin/fulcrum');
  const { a, b } = await backends(t);

  // The child's exit code is the launcher's.
  writeFileSync(path.join(got.consumer, 'bad.yaml'), 'pools: {web: {upstreams: [3]}}\n');
  const checked = await run(launcher, ['check', 'bad.yaml'], { cwd: got.consumer, env });
  assert.equal(checked.code, 1, checked.stderr);
  assert.match(checked.stderr, /bad\.yaml:1/);

  const first = await startFulcrum(t, launcher, [], { cwd: got.consumer, env, upstream: a });
  assert.notEqual(first.pid, first.child.pid, 'the balancer runs in a child of the launcher');
  await assertSighupReloads(first, b, first.child.pid!);
  first.child.kill('SIGTERM');
  await assertStopped(first, 0);

  // The launcher killed outright: its child notices (the IPC channel closes) and stops.
  const second = await startFulcrum(t, launcher, [], { cwd: got.consumer, env, upstream: a });
  second.child.kill('SIGKILL');
  await assertStopped(second);

  // npx on the older Node: npm dies of SIGHUP; the launcher notices and stops its child.
  const third = await startFulcrum(t, 'npx', ['fulcrum'], { cwd: got.consumer, env, upstream: a });
  assert.equal(await body(third.port), 'A');
  third.child.kill('SIGHUP');
  await assertStopped(third);
});

test('installed package, launcher on Node 24: SIGHUP reloads, SIGTERM stops', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const { a, b } = await backends(t);
  const started = await startFulcrum(t, path.join(got.consumer, 'node_modules/.bin/fulcrum'), [], { cwd: got.consumer, env: env24, upstream: a });
  assert.equal(started.pid, started.child.pid, 'on Node 24 the launcher is the balancer');
  await assertSighupReloads(started, b, started.child.pid!);
  started.child.kill('SIGTERM');
  await assertStopped(started, 0);
});

test('npx fulcrum start: SIGTERM to npx stops the balancer; SIGHUP to npx (which npm dies of) leaves no balancer behind', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const { a } = await backends(t);
  const first = await startFulcrum(t, 'npx', ['fulcrum'], { cwd: got.consumer, env: env24, upstream: a });
  assert.notEqual(first.pid, first.child.pid, 'npx runs fulcrum as its child');
  assert.equal(await body(first.port), 'A');
  first.child.kill('SIGTERM');
  await assertStopped(first);

  const second = await startFulcrum(t, 'npx', ['fulcrum'], { cwd: got.consumer, env: env24, upstream: a });
  second.child.kill('SIGHUP');
  await assertStopped(second);
  assert.match(second.output(), /shutting down/);
});

test('npm install <clone directory>: the command and the import work from the clone', { timeout: 240_000 }, async (t) => {
  const got = await need(t);
  if (!got) return;
  const consumer = project('directory-consumer');
  must(await run('npm', ['install', '--offline', '--no-audit', '--no-fund', got.clone], { cwd: consumer }), 'npm install <clone>');
  assert.ok(existsSync(path.join(got.clone, 'dist/index.js')), "the clone's prepare built dist/");
  assert.match(must(await run('npx', ['fulcrum', '--version'], { cwd: consumer }), 'npx fulcrum --version').stdout, /^\d+\.\d+\.\d+\n$/);
  const imported = must(await run('node', ['--input-type=module', '-e', "const m = await import('fulcrum'); console.log(typeof m.createBalancer, typeof m.AdminClient)"], { cwd: consumer }), 'import');
  assert.equal(imported.stdout, 'function function\n');
  const old = oldNodeDir();
  if (old) assert.match(must(await run('npx', ['fulcrum', '--version'], { cwd: consumer, env: userEnv(old) }), 'npx fulcrum on an older Node').stdout, /^\d+\.\d+\.\d+\n$/);
});

test('a clone whose dependencies are not installed says so, without a stack trace', { timeout: 60_000 }, async () => {
  const bare = path.join(work, 'bare-clone');
  cpSync(path.join(root, 'bin'), path.join(bare, 'bin'), { recursive: true });
  cpSync(path.join(root, 'src'), path.join(bare, 'src'), { recursive: true });
  cpSync(path.join(root, 'package.json'), path.join(bare, 'package.json'));
  const ran = await run(process.execPath, [path.join(bare, 'bin/fulcrum.js'), '--help'], { cwd: bare });
  assert.equal(ran.code, 1);
  assert.match(ran.stderr, /^fulcrum: cannot load .*src\/cli\.ts: Cannot find (package|module) .*\nrun `npm install` in .*bare-clone first\n$/s);
  assert.doesNotMatch(ran.stderr, /^\s+at /m);
});

test('npm install git+file://<clone>: prepare builds dist/, so the command and the import work', { timeout: 300_000 }, async (t) => {
  if (process.env.FULCRUM_TEST_GIT_INSTALL !== '1') return t.skip('slow (npm installs every dev dependency, Node 24 included, in its own clone: 40-90 s): set FULCRUM_TEST_GIT_INSTALL=1');
  const got = await need(t);
  if (!got) return;
  const consumer = project('git-consumer');
  const ok = await npmInstall(consumer, [`git+file://${got.clone}`]);
  if (!ok) return t.skip('the npm registry is unreachable and the npm cache lacks a dev dependency');
  assert.ok(existsSync(path.join(consumer, 'node_modules/fulcrum/dist/index.js')), 'dist/ was built');
  assert.match(must(await run('npx', ['fulcrum', '--version'], { cwd: consumer }), 'npx fulcrum --version').stdout, /^\d+\.\d+\.\d+\n$/);
  const imported = must(await run('node', ['--input-type=module', '-e', "const m = await import('fulcrum'); console.log(typeof m.createBalancer)"], { cwd: consumer }), 'import');
  assert.equal(imported.stdout, 'function\n');
});
