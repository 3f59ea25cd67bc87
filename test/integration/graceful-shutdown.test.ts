/**
 * SIGTERM during steady load: Fulcrum stops accepting, every request that had started gets
 * its response, responses in the drain carry `Connection: close`, and the process exits 0.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startBackend } from '../helpers/servers.ts';
import { startFulcrumProcess } from '../helpers/fulcrum-process.ts';
import { eventually } from '../helpers/eventually.ts';

interface Outcome {
  sentAt: number;
  status?: number;
  connectionClose?: boolean;
  error?: string;
}

test('SIGTERM under load loses no request that had started', { timeout: 60_000 }, async (t) => {
  const backend = await startBackend(t, (_req, res) => setTimeout(() => res.end('ok'), 20 + Math.random() * 180));
  const fulcrum = await startFulcrumProcess(
    t,
    `listeners: [{host: 127.0.0.1, port: 0}]\nlog: {level: info, access_log: false}\nshutdown: {grace_period: 10s}\npools:\n  web:\n    upstreams: ["${backend.url}"]\n`,
  );
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  t.after(() => agent.destroy());
  const outcomes: Outcome[] = [];
  let stop = false;
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const o: Outcome = { sentAt: performance.now() };
      outcomes.push(o);
      const req = http.get(`${fulcrum.url}/`, { agent }, (res) => {
        res.resume();
        res.on('end', () => {
          o.status = res.statusCode;
          o.connectionClose = res.headers.connection === 'close';
          resolve();
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        o.error = err.code ?? err.message;
        resolve();
      });
    });
  const loops = Array.from({ length: 16 }, async () => {
    const until = performance.now() + 8000;
    while (!stop && performance.now() < until) {
      await one();
      if (outcomes.at(-1)?.error) break; // the listener is closed: stop this client
    }
  });
  await eventually(() => outcomes.filter((o) => o.status === 200).length >= 100, { timeout: 10_000, what: 'steady load' });
  const termAt = performance.now();
  fulcrum.child.kill('SIGTERM');
  const exit = await fulcrum.exited;
  stop = true;
  await Promise.all(loops);

  const startedBefore = outcomes.filter((o) => o.sentAt < termAt);
  const inFlightAtTerm = startedBefore.filter((o) => o.status !== undefined || o.error !== undefined).length;
  const lost = startedBefore.filter((o) => o.status !== 200);
  t.diagnostic(`${startedBefore.length} requests started before SIGTERM (${inFlightAtTerm} finished), ${lost.length} lost; ${outcomes.length - startedBefore.length} tried after`);
  assert.deepEqual(lost, [], 'every request that had started got a 200');
  assert.equal(exit.code, 0, `exit code (output: ${fulcrum.output().slice(-500)})`);
  const after = outcomes.filter((o) => o.sentAt >= termAt);
  assert.ok(after.every((o) => o.status === 200 || o.error !== undefined), 'no 5xx during the drain');
  assert.ok(outcomes.some((o) => o.connectionClose), 'responses during the drain said Connection: close');
});
