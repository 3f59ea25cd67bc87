/**
 * A loopback port whose connections never complete: a listening socket with a full backlog
 * that never accepts (python3's socket module, since Node always accepts). SYNs to it are
 * dropped, so a connect attempt hangs until the caller's connect timeout.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import type { TestContext } from 'node:test';

const script = `
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
print(s.getsockname()[1], flush=True)
held = []
for _ in range(8):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(("127.0.0.1", s.getsockname()[1]))
    except BlockingIOError: pass
    held.append(c)
sys.stdin.read()
`;

/** Starts the black hole; resolves with its port once the backlog is full. */
export async function startBlackhole(t: TestContext): Promise<number> {
  const child = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
    child.once('error', reject);
  });
  // Wait until a fresh connect really hangs (the backlog is full).
  for (let i = 0; i < 50; i++) {
    const hangs = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      const timer = setTimeout(() => (s.destroy(), resolve(true)), 150);
      s.once('connect', () => (clearTimeout(timer), s.destroy(), resolve(false)));
      s.once('error', () => (clearTimeout(timer), resolve(false)));
    });
    if (hangs) return port;
  }
  throw new Error('could not fill the backlog of the black-hole port');
}
