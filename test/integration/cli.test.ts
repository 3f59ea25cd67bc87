/**
 * The command line as a user meets it: `fulcrum demo` (what `npm start` runs) answered by
 * curl over http and, with the printed `--cacert` line, over https; `fulcrum check` on a broken
 * file, `fulcrum schema`, `--version`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { eventually } from '../helpers/eventually.ts';

const run = promisify(execFile);
const cli = new URL('../../src/cli.ts', import.meta.url).pathname;

function fulcrum(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return run(process.execPath, [cli, ...args]).then(
    ({ stdout, stderr }) => ({ stdout, stderr, code: 0 }),
    (err: { stdout: string; stderr: string; code: number }) => ({ stdout: err.stdout, stderr: err.stderr, code: err.code }),
  );
}

test('fulcrum demo: three backends behind the balancer, answered in turn to curl, over https with the printed --cacert line; Ctrl-C exits 0 and removes the certificate', { timeout: 30_000 }, async (t) => {
  const child = spawn(process.execPath, [cli, 'demo', '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FULCRUM_LOG_FORMAT: 'json' } });
  t.after(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const url = await eventually(() => /Fulcrum demo is running: (http:\/\/\S+)/.exec(out)?.[1], { timeout: 15_000, what: 'the demo banner' });
  const seen = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const { stdout } = await run('curl', ['-sS', '--max-time', '5', `${url}/`]);
    seen.add(JSON.parse(stdout).backend);
  }
  assert.deepEqual([...seen].sort(), ['1', '2', '3']);
  const { stdout: headers } = await run('curl', ['-sS', '-o', '/dev/null', '-D', '-', '--max-time', '5', `${url}/bytes?n=1000000`]);
  assert.match(headers, /^HTTP\/1\.1 200 /);
  assert.match(headers, /content-length: 1000000/i);

  // The https line, run as printed (with -sS and a status line added): the demo's own certificate is trusted, nothing else.
  const printed = /^ +HTTPS: +(curl --cacert (\S+) (https:\/\/localhost:\d+\/))$/m.exec(out);
  assert.ok(printed, `the banner prints the https curl line:\n${out}`);
  const [, line, certificateFile] = printed;
  const { stdout: answer } = await run('curl', [...line.split(' ').slice(1), '-sS', '--max-time', '5', '-w', '\n%{http_code}']);
  const [body, status] = answer.split('\n').filter(Boolean);
  assert.equal(status, '200');
  assert.equal(JSON.parse(body).forwarded_proto, 'https');
  assert.match(out, /Fulcrum demo is running: http:\/\/\S+ and https:\/\/localhost:\d+/);
  const keyFile = join(dirname(certificateFile), 'demo-key.pem');
  assert.equal(statSync(keyFile).mode & 0o777, 0o600, 'the key is readable by its owner only');
  assert.equal(statSync(dirname(certificateFile)).mode & 0o777, 0o700);
  assert.ok(!certificateFile.startsWith(new URL('../..', import.meta.url).pathname), `the certificate is not written in the repository: ${certificateFile}`);

  child.kill('SIGINT');
  const code = await new Promise((r) => child.once('exit', r));
  assert.equal(code, 0);
  assert.equal(existsSync(dirname(certificateFile)), false, 'the certificate and key are removed when the demo stops');
});

test('fulcrum check: every problem with file:line:column and a did-you-mean; exit 1', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fulcrum-cli-'));
  const file = join(dir, 'bad.yaml');
  writeFileSync(file, 'listeners:\n  - port: 8080\npools:\n  web:\n    polcy: round-robin\n    upstreams: [http://127.0.0.1:9001]\n    timeouts: {connect: 5 seconds}\n');
  const { stderr, code } = await fulcrum(['check', file]);
  assert.equal(code, 1);
  assert.match(stderr, new RegExp(`${file}:5:5: pools\\.web\\.polcy: unknown key "polcy" \\(did you mean "policy"\\?\\)`));
  assert.match(stderr, /:7:25: pools\.web\.timeouts\.connect: expected a duration/);
  assert.match(stderr, /2 problems found/);
  const good = join(dir, 'good.yaml');
  writeFileSync(good, 'backends: ["http://127.0.0.1:9001"]\nstrategy: least-conn\n');
  const ok = await fulcrum(['check', good]);
  assert.equal(ok.code, 0);
  assert.match(ok.stdout, /ok \(1 listener\(s\), 1 pool\(s\), 1 upstream\(s\)\)/);
});

test('fulcrum schema prints a JSON Schema; --version and --help answer', async () => {
  const schema = JSON.parse((await fulcrum(['schema'])).stdout);
  assert.equal(schema.type, 'object');
  assert.ok(schema.properties.pools);
  assert.match((await fulcrum(['--version'])).stdout, /^\d+\.\d+\.\d+\n$/);
  assert.match((await fulcrum(['--help'])).stdout, /fulcrum start \[-c FILE\]/);
  const bad = await fulcrum(['nonsense']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown command "nonsense"/);
});
