/**
 * startAccessLog as a subscriber: which exchanges it logs, where its lines go for each kind of
 * logger, levels, the debug line that stays on pino, and a stream that does not drain.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { RequestContext } from '../../../src/core/context.ts';
import type { Downstream } from '../../../src/core/downstream.ts';
import { requestEnd } from '../../../src/core/events.ts';
import { AccessLogConfig } from '../../../src/config/schema.ts';
import { startAccessLog } from '../../../src/observe/access-log.ts';
import { createLogger } from '../../../src/observe/logger.ts';

const carrier = {};

function ended(url: string, status: number, from: object | null = carrier): void {
  const req = { method: 'GET', url, httpVersion: '1.1', httpVersionMajor: 1, httpVersionMinor: 1, headers: {}, rawHeaders: [] };
  const ctx = new RequestContext(req, {} as Downstream, 'unit', '127.0.0.1', from);
  ctx.status = status;
  requestEnd.publish({ ctx });
}

/** A stream that keeps what is written, chunk by chunk. */
function sink(): { stream: Writable; chunks: string[]; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      chunks.push(String(chunk));
      callback();
    },
  });
  return { stream, chunks, text: () => chunks.join('') };
}

test('only the carrier\'s exchanges; a stream destination gets each line as it comes, in the json format', async () => {
  const out = sink();
  const logger = createLogger({ level: 'info', format: 'json' }, { destination: out.stream });
  const log = startAccessLog(logger, AccessLogConfig.parse({}), { carrier });
  ended('/mine', 200);
  ended('/other', 200, {});
  ended('/broken', 503);
  await log.stop();
  ended('/after-stop', 200);
  const lines = out.chunks.map((c) => JSON.parse(c) as { path: string; level: number });
  assert.deepEqual(lines.map((l) => [l.path, l.level]), [['/mine', 30], ['/broken', 40]], 'one chunk per line, only its own, none after stop');
});

test('combined to a stream destination', async () => {
  const out = sink();
  const logger = createLogger({ level: 'info', format: 'json' }, { destination: out.stream });
  const log = startAccessLog(logger, AccessLogConfig.parse({ format: 'combined' }), { carrier });
  ended('/c', 204);
  await log.stop();
  assert.match(out.text(), /^127\.0\.0\.1 - - \[[^\]]+\] "GET \/c HTTP\/1\.1" 204 0 "-" "-"\n$/);
});

test('a logger Fulcrum did not make: json lines go through it (pino), at its level', async () => {
  const out = sink();
  const logger = pino({ level: 'warn' }, out.stream);
  const log = startAccessLog(logger, AccessLogConfig.parse({}), { carrier });
  ended('/fine', 200);
  ended('/fail', 502);
  logger.level = 'info';
  ended('/fine-now', 200);
  await log.stop();
  const lines = out.chunks.map((c) => JSON.parse(c) as Record<string, unknown>);
  assert.deepEqual(lines.map((l) => [l.path, l.level, l.log, l.msg]), [['/fail', 40, 'access', 'GET /fail 502'], ['/fine-now', 30, 'access', 'GET /fine-now 200']]);
});

test('silent writes nothing; the debug line about dropped underscore headers stays on pino', async () => {
  const out = sink();
  const logger = createLogger({ level: 'silent', format: 'json' }, { destination: out.stream });
  const log = startAccessLog(logger, AccessLogConfig.parse({}), { carrier });
  ended('/quiet', 500);
  assert.equal(out.chunks.length, 0);
  logger.level = 'debug';
  const req = { method: 'GET', url: '/underscore', httpVersion: '1.1', httpVersionMajor: 1, httpVersionMinor: 1, headers: {}, rawHeaders: [] };
  const ctx = new RequestContext(req, {} as Downstream, 'unit', '127.0.0.1', carrier);
  ctx.status = 200;
  ctx.droppedHeaders = ['x_user'];
  requestEnd.publish({ ctx });
  await log.stop();
  const lines = out.chunks.map((c) => JSON.parse(c) as Record<string, unknown>);
  assert.equal(lines.length, 2);
  assert.equal(lines[0].level, 20);
  assert.deepEqual(lines[0].headers, ['x_user']);
  assert.match(lines[0].msg as string, /dropped request header\(s\) with "_" in the name: x_user/);
  assert.equal(lines[1].path, '/underscore');
});

test('a stream that does not drain: lines beyond 8 buffers are dropped, counted and said once', async () => {
  const stuck = new Writable({ highWaterMark: 1, write() {} });
  const logger = createLogger({ level: 'info', format: 'json' }, { destination: stuck });
  let counted = 0;
  const log = startAccessLog(logger, AccessLogConfig.parse({ buffer_bytes: 1024 }), { carrier, onDrop: (n) => (counted += n) });
  for (let i = 0; i < 200; i++) ended(`/${'s'.repeat(200)}`, 200);
  await log.stop();
  assert.ok(log.dropped > 150, `${log.dropped} dropped`);
  assert.equal(counted, log.dropped);
  assert.ok(stuck.writableLength <= 8 * 1024 + 2048, `${stuck.writableLength} bytes held by the stream`);
  // The warning goes to the same stream, behind the lines: once.
  const held = (stuck as Writable & { writableBuffer: { chunk: unknown }[] }).writableBuffer.map((w) => String(w.chunk)).join('');
  assert.equal(held.split('lines are dropped').length - 1, 1, 'said once');
});
