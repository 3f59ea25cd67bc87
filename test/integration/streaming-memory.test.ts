/**
 * Bodies are streamed both ways, never buffered: a 512 MiB upload and a 512 MiB download
 * through a Fulcrum process raise its peak RSS by less than 50 MB.
 * The baseline is taken after 64 MiB each way: V8 frees socket read buffers only when a GC
 * runs, and its external-memory trigger is 64 MB, so the first transfers of any streaming
 * Node process lift the peak by about that much once. What this test guards is that the
 * growth does not scale with the body size, which buffering would cause.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { get, startBackend } from '../helpers/servers.ts';
import { peakRss, startFulcrumProcess } from '../helpers/fulcrum-process.ts';

const size = 512 * 1024 * 1024;
const chunk = Buffer.alloc(64 * 1024, 'f');

/** Writes `total` bytes with backpressure. */
function pump(out: NodeJS.WritableStream, total: number, done: () => void): void {
  let left = total;
  const more = (): void => {
    while (left > 0) {
      const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
      left -= piece.length;
      if (!out.write(piece)) return void out.once('drain', more);
    }
    done();
  };
  more();
}

/** Uploads and downloads `bytes` through the proxy and checks both arrive whole. */
async function transfer(url: string, bytes: number): Promise<void> {
  const uploaded = await new Promise<string>((resolve, reject) => {
    const req = http.request(`${url}/upload`, { method: 'POST', agent: false, headers: { 'content-length': String(bytes) } }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    pump(req, bytes, () => req.end());
  });
  assert.equal(uploaded, String(bytes), 'upload arrived whole');
  const downloaded = await new Promise<number>((resolve, reject) => {
    http
      .get(`${url}/download?n=${bytes}`, { agent: false }, (res) => {
        let n = 0;
        res.on('data', (c: Buffer) => (n += c.length));
        res.on('end', () => resolve(n));
        res.on('error', reject);
      })
      .on('error', reject);
  });
  assert.equal(downloaded, bytes, 'download arrived whole');
}

test('512 MiB up and 512 MiB down through Fulcrum add less than 50 MB of RSS', { timeout: 120_000 }, async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.method === 'POST') {
      let received = 0;
      req.on('data', (c: Buffer) => (received += c.length));
      req.on('end', () => res.end(String(received)));
      return;
    }
    const n = Number(new URL(req.url!, 'http://x').searchParams.get('n'));
    res.writeHead(200, { 'content-length': String(n) });
    pump(res, n, () => res.end());
  });
  for (const transport of ['http1', 'undici', 'node-http']) {
    const fulcrum = await startFulcrumProcess(
      t,
      `listeners: [{host: 127.0.0.1, port: 0}]\nlog: {level: info, access_log: false}\npools:\n  web:\n    transport: ${transport}\n    upstreams: ["${backend.url}"]\n`,
    );
    for (let i = 0; i < 20; i++) assert.equal((await get(`${fulcrum.url}/`, { method: 'POST', body: 'warm' })).body, '4');
    const cold = peakRss(fulcrum.child.pid!);
    await transfer(fulcrum.url, 64 * 1024 * 1024);
    const before = peakRss(fulcrum.child.pid!);

    await transfer(fulcrum.url, size);

    const growth = peakRss(fulcrum.child.pid!) - before;
    t.diagnostic(`${transport}: peak RSS ${Math.round(cold / 2 ** 20)} MiB cold, ${Math.round(before / 2 ** 20)} MiB after 64 MiB each way, +${(growth / 2 ** 20).toFixed(1)} MiB after 512 MiB each way`);
    assert.ok(growth < 50 * 1024 * 1024, `${transport}: peak RSS grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);
    fulcrum.child.kill('SIGTERM');
    assert.equal((await fulcrum.exited).code, 0);
  }
});
