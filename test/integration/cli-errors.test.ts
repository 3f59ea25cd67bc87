/**
 * What a careless operator types, through the real command line: a duration without a unit,
 * `fulcrum start` without a file, a port already taken, broken YAML, a duplicate key, an
 * upstream without `http://`, a flag `start` does not take, a mistyped command. Each answer
 * names the place (file:line:column and key) and says what to write instead.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const cli = new URL('../../src/cli.ts', import.meta.url).pathname;
const limit = { timeout: 30_000 };

/** The environment without FULCRUM_* variables, so the developer's own settings do not leak in. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FULCRUM_')));
}

function fulcrum(args: string[], cwd: string): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    // Every case here must end on its own; a balancer that started anyway is killed (and the test fails).
    execFile(process.execPath, [cli, ...args], { cwd, env: { ...cleanEnv(), FULCRUM_LOG_FORMAT: 'json' }, timeout: 15_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) =>
      resolve({ stdout, stderr, code: err ? ((err as { code?: number }).code ?? 1) : 0 }),
    );
  });
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'fulcrum-cli-errors-'));
}

function write(dir: string, name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** A port held by another server, as another program on the machine would hold it. */
async function takenPort(t: { after: (fn: () => void) => void }): Promise<number> {
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  return (server.address() as { port: number }).port;
}

test('a duration without a unit: check and start refuse it with file:line, key and "write 5s or 5ms"', limit, async () => {
  const dir = tempDir();
  const file = write(dir, 'fulcrum.yaml', 'listeners: [{host: 127.0.0.1, port: 0}]\npools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n    health_check:\n      interval: 5\n      timeout: 2\n');
  const expected = [`${file}:6:17: pools.web.health_check.interval: a duration needs a unit, got 5: write 5s or 5ms`, `${file}:7:16: pools.web.health_check.timeout: a duration needs a unit, got 2: write 2s or 2ms`];
  const checked = await fulcrum(['check', file], dir);
  assert.equal(checked.code, 1);
  for (const line of expected) assert.ok(checked.stderr.includes(line), `missing "${line}" in:\n${checked.stderr}`);
  assert.match(checked.stderr, /2 problems found/);
  const started = await fulcrum(['start', '-c', file], dir);
  assert.equal(started.code, 1);
  for (const line of expected) assert.ok(started.stderr.includes(line), `missing "${line}" in:\n${started.stderr}`);
  assert.doesNotMatch(started.stdout + started.stderr, /listening on/);
});

test('fulcrum start without a file suggests -c, FULCRUM_CONFIG, fulcrum demo and the examples', limit, async () => {
  const dir = tempDir();
  const { stderr, code } = await fulcrum(['start'], dir);
  assert.equal(code, 2);
  assert.match(stderr, /no configuration file: \.\/fulcrum\.yaml does not exist/);
  assert.match(stderr, /fulcrum start -c FILE/);
  assert.match(stderr, /FULCRUM_CONFIG=FILE fulcrum start/);
  assert.match(stderr, /fulcrum demo /);
  assert.match(stderr, /fulcrum start -c \S*examples\/fulcrum\.yaml/);
  assert.match(stderr, /examples\/seed-004\.json/);
});

test('a port in use names the key and where the file set it: listeners[0].port, admin.port, the seed\'s lb_port', limit, async (t) => {
  const port = await takenPort(t);
  const dir = tempDir();
  const listener = write(dir, 'listener.yaml', `listeners:\n  - host: 127.0.0.1\n    port: ${port}\npools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n`);
  const a = await fulcrum(['start', '-c', listener], dir);
  assert.equal(a.code, 1);
  assert.ok(a.stderr.includes(`${listener}:3:11: listeners[0].port: 127.0.0.1:${port} is already in use`), a.stderr);

  const admin = write(dir, 'admin.yaml', `listeners: [{host: 127.0.0.1, port: 0}]\nadmin:\n  port: ${port}\npools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n`);
  const b = await fulcrum(['start', '-c', admin], dir);
  assert.equal(b.code, 1);
  assert.ok(b.stderr.includes(`${admin}:3:9: admin.port: 127.0.0.1:${port} is already in use`), b.stderr);
  assert.doesNotMatch(b.stdout + b.stderr, /listening on/);

  const seed = write(dir, 'seed.yaml', `lb_port: "127.0.0.1:${port}"\nbackends: [http://127.0.0.1:9001]\n`);
  const c = await fulcrum(['start', seed], dir);
  assert.equal(c.code, 1);
  assert.ok(c.stderr.includes(`${seed}:1:10: lb_port: 127.0.0.1:${port} is already in use`), c.stderr);
});

test('broken YAML is one message with the key path and a hint; a duplicate key is named with both lines', limit, async () => {
  const dir = tempDir();
  const quote = write(dir, 'quote.yaml', 'pools:\n  web:\n    upstreams: ["http://127.0.0.1:9001]\n    policy: random\nlog:\n  level: info\n');
  const a = await fulcrum(['check', quote], dir);
  assert.equal(a.code, 1);
  assert.equal(a.stderr, `${quote}:3:17: pools.web.upstreams: invalid YAML: the string " opened here is not closed: end it with " on the same line\n1 problem found\n`);
  const dup = write(dir, 'dup.yaml', 'pools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n    policy: random\n    policy: least-connections\n');
  const b = await fulcrum(['check', dup], dir);
  assert.equal(b.code, 1);
  assert.match(b.stderr, /dup\.yaml:5:5: pools\.web\.policy: duplicate key "policy" \(first on line 4\)/);
});

test('an upstream without http:// gets the URL to write; a mistyped https gets the https URL', limit, async () => {
  const dir = tempDir();
  const file = write(dir, 'urls.yaml', 'pools:\n  web:\n    upstreams:\n      - 10.0.0.1:3000\n      - htps://10.0.0.2:8443\n      - https://10.0.0.3:8443\n');
  const { stderr, code } = await fulcrum(['check', file], dir);
  assert.equal(code, 1);
  assert.ok(stderr.includes(`${file}:4:9: pools.web.upstreams[0]: missing "http://": write http://10.0.0.1:3000`), stderr);
  assert.ok(stderr.includes(`${file}:5:9: pools.web.upstreams[1]: htps:// is not a scheme Fulcrum knows: did you mean https://10.0.0.2:8443?`), stderr);
  assert.ok(!stderr.includes('upstreams[2]'), 'https upstreams are accepted');
});

test('a flag start does not take is an error, with did-you-mean; so is a mistyped command or a bad --delay', limit, async () => {
  const dir = tempDir();
  const file = write(dir, 'fulcrum.yaml', 'listeners: [{host: 127.0.0.1, port: 0}]\npools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n');
  const port = await fulcrum(['start', '-c', file, '--port', '9000'], dir);
  assert.equal(port.code, 2);
  assert.match(port.stderr, /start does not take --port: the port is listeners\[0\]\.port in the file, or FULCRUM_PORT=9000/);
  assert.doesNotMatch(port.stdout + port.stderr, /listening on/);
  const typo = await fulcrum(['start', '-c', file, '--wach'], dir);
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /unknown option --wach: did you mean --watch\?/);
  const demo = await fulcrum(['demo', '--watch'], dir);
  assert.equal(demo.code, 2);
  assert.match(demo.stderr, /demo does not take --watch: demo takes --port, --host, --policy/);
  // The sample backend's --delay said nothing when it was not a number, and waited 0 ms.
  const delay = await fulcrum(['backend', '--port', '0', '--delay', '2x'], dir);
  assert.equal(delay.code, 2);
  assert.match(delay.stderr, /--delay must be milliseconds or a duration such as 500ms or 2s, got "2x"/);
  const command = await fulcrum(['strat', '-c', file], dir);
  assert.equal(command.code, 2);
  assert.match(command.stderr, /unknown command "strat" \(did you mean "start"\?\)/);
});
