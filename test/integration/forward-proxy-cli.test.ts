/**
 * `fulcrum hash-password` as a user meets it: a password piped on stdin (scripts), typed on a
 * terminal with echo off (a real pseudo-terminal from python3's pty module), refused as an
 * argument; the hash it prints lets that password through a forward proxy's auth.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { ProxyAuthenticator, isPasswordHash } from '../../src/forward/proxy-auth.ts';

const cli = new URL('../../src/cli.ts', import.meta.url).pathname;

/** Runs `fulcrum ARGS` with `stdin` piped in. */
function fulcrum(args: string[], stdin: string): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [cli, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ stdout, stderr, code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1 });
    });
    child.stdin!.end(stdin);
  });
}

/** True when `hash` verifies `password` for a user, as the forward proxy checks it. */
async function verifies(hash: string, password: string): Promise<boolean> {
  const auth = new ProxyAuthenticator({ realm: 'test', users: { u: hash } });
  return (await auth.check(`Basic ${Buffer.from(`u:${password}`).toString('base64')}`)).ok;
}

test('hash-password: one line of stdin becomes a scrypt hash the forward proxy accepts; arguments and empty input refused', { timeout: 60_000 }, async () => {
  const piped = await fulcrum(['hash-password'], 'correct horse ☃\nsecond line ignored\n');
  assert.equal(piped.code, 0, piped.stderr);
  const hash = piped.stdout.trim();
  assert.ok(isPasswordHash(hash), hash);
  assert.match(hash, /^scrypt\$32768\$8\$1\$/);
  assert.ok(await verifies(hash, 'correct horse ☃'));
  assert.ok(!(await verifies(hash, 'correct horse')));
  const argument = await fulcrum(['hash-password', 'secret'], '');
  assert.equal(argument.code, 2);
  assert.match(argument.stderr, /never from the command line/);
  const empty = await fulcrum(['hash-password'], '');
  assert.equal(empty.code, 1);
  assert.match(empty.stderr, /no password on stdin/);
});

test('hash-password on a terminal: asked twice, nothing echoed, Backspace works', { timeout: 60_000 }, async () => {
  // A pseudo-terminal: python3 forks the CLI on a pty and types into it.
  const script = `
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], sys.argv[2], 'hash-password'])
out = b''
def wait_for(text, seconds):
    global out
    end = time.time() + seconds
    while text not in out and time.time() < end:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
wait_for(b'Password: ', 15)
os.write(fd, b'typo\\x7f\\x7fped secret\\r')
wait_for(b'Again: ', 15)
os.write(fd, b'typed secret\\r')
wait_for(b'==\\r\\n', 20)
os.waitpid(pid, 0)
sys.stdout.write(out.decode('utf-8', 'replace'))
`;
  const child = spawn('python3', ['-c', script, process.execPath, cli], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise<void>((resolve) => child.on('close', () => resolve()));
  assert.match(out, /Password: \r?\nAgain: \r?\n/);
  assert.ok(!out.includes('secret') && !out.includes('typo'), `nothing typed is echoed: ${JSON.stringify(out)}`);
  const hash = /scrypt\$\S+/.exec(out)?.[0];
  assert.ok(hash !== undefined, out);
  assert.ok(await verifies(hash, 'typed secret'));
});
