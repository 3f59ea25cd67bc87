/**
 * The node:http client (src/transport/node-http.ts) when its exchange or its client ends early:
 * a request queued behind max_sockets survives the client being replaced by a reload, and an
 * upstream socket whose client left is not kept busy. Fulcrum's own client (http1) is held to
 * the same.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { startBalancer } from '../helpers/servers.ts';
import { requestEnd, type RequestEndEvent } from '../../src/core/events.ts';
import { eventually } from '../helpers/eventually.ts';

/** Resolves once `read()` gave the same value on 3 polls in a row, 100 ms apart (a transfer that stalled). */
async function settled(read: () => number, what: string): Promise<void> {
  let last = -1;
  let same = 0;
  await eventually(
    () => {
      const now = read();
      same = now === last ? same + 1 : 0;
      last = now;
      return same >= 2;
    },
    { interval: 100, timeout: 10_000, what },
  );
}

function post(port: number, path: string): Promise<string> {
  return new Promise((resolve) => {
    const r = http.request({ port, host: '127.0.0.1', path, method: 'POST', agent: false, headers: { 'content-length': '5' } }, (res) => {
      let b = '';
      res.on('data', (d) => (b += d));
      res.on('end', () => resolve(`${res.statusCode} ${b.split('\n')[0]}`));
    });
    r.on('error', (e) => resolve(String(e)));
    r.end('hello');
  });
}

for (const transport of ['node-http', 'http1'] as const) {
  test(`a reload that replaces a ${transport} client: the request queued behind max_sockets is still sent and answered`, async (t) => {
    let seen = 0;
    const backend = http.createServer((req, res) => {
      seen++;
      req.resume();
      req.on('end', () => setTimeout(() => res.end('ok'), 400));
    });
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
    t.after(() => backend.close());
    const url = `http://127.0.0.1:${(backend.address() as net.AddressInfo).port}`;
    const config = (connect: number) => ({ pools: { p: { transport, upstreams: [url], keepalive: { max_sockets: 1 }, timeouts: { connect } } } });
    const lb = await startBalancer(t, config(1000));
    const first = post(lb.port, '/one');
    await eventually(() => seen === 1, { what: 'the first request at the backend' });
    const second = post(lb.port, '/two'); // waits in the agent for the one socket
    const upstream = lb.balancer.pools().get('p')!.upstreams[0];
    await eventually(() => upstream.inFlight === 2, { what: 'the second request queued behind max_sockets' });
    await lb.balancer.reload({ listeners: [{ host: '127.0.0.1', port: 0 }], ...config(2000) }); // another client key: the old client closes
    const answers = [await first, await second];
    t.diagnostic(`${answers.join(' | ')}; backend saw ${seen}`);
    assert.deepEqual(answers.map((a) => a.slice(0, 3)), ['200', '200'], 'NodeHttpClient.close() destroys on "free" the socket the agent just gave the queued request');
  });

  test(`${transport}: a client that leaves while a complete upstream answer waits for drain frees the upstream socket`, { timeout: 120_000 }, async (t) => {
    let ends: number[] = [];
    const onEnd = (m: unknown): void => void ends.push((m as RequestEndEvent).ctx.bytesOut);
    requestEnd.subscribe(onEnd);
    t.after(() => requestEnd.unsubscribe(onEnd));
    async function run(size: number): Promise<string> {
      ends = [];
      let written: () => number = () => 0;
      const backend = http.createServer({ keepAliveTimeout: 60_000 }, (_req, res) => {
        written = () => res.socket?.bytesWritten ?? Infinity;
        res.writeHead(200, { 'content-length': size });
        res.end(Buffer.alloc(size, 0x61));
      });
      await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
      const url = `http://127.0.0.1:${(backend.address() as net.AddressInfo).port}`;
      const sub = { after: (_f: () => unknown) => {} } as unknown as Parameters<typeof startBalancer>[0];
      const lb = await startBalancer({ ...t, after: sub.after } as typeof t, { pools: { p: { transport, upstreams: [url], keepalive: { max_sockets: 1 }, timeouts: { request: 0 } } } });
      const c = net.connect(lb.port, '127.0.0.1');
      c.on('error', () => {});
      c.pause(); // never reads
      c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      // The relay fills the client's buffers and stops: the backend's writes stall (or end, when the answer fit).
      await settled(() => written(), 'the upstream answer to stop moving');
      c.resetAndDestroy();
      await eventually(() => ends.length === 1, { what: 'the request to end after the client left' });
      delivered = ends[0] ?? 0;
      const next = await new Promise<string>((resolve) => {
        const r = http.get(`${lb.url}/`, { agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(String(res.statusCode)));
        });
        r.on('error', (e) => resolve(String(e)));
        setTimeout(() => {
          r.destroy();
          resolve('no answer');
        }, 2000);
      });
      await lb.balancer.close(50);
      backend.closeAllConnections();
      backend.close();
      return next;
    }
    // How much a client that never reads takes (kernel buffers), then sizes just past it: the
    // upstream answer is then parsed to its end while the relay waits for a drain.
    let delivered = 0;
    await run(32 * 1024 * 1024);
    const capacity = delivered;
    const outcomes: string[] = [];
    for (const extra of [0, 8_000, 16_000, 48_000, 96_000]) outcomes.push(`${capacity + extra}: ${await run(capacity + extra)}`);
    t.diagnostic(outcomes.join('; '));
    assert.ok(outcomes.every((o) => o.endsWith(': 200')), `the next request through max_sockets 1 got no answer: ${outcomes.join('; ')}`);
  });
}
