/**
 * What one access-log line costs: the old path (pino: an object per line, serialised, written
 * through sonic-boom) against the hand-built lines written in batches, `json` and `combined`.
 * Lines go to /dev/null (or the file given), 200 per event-loop turn so that asynchronous
 * writes complete as they do in a running proxy. Prints CPU time per line (the whole process:
 * thread-pool writes count) and the same for building the line alone.
 *
 *   node bench/access-log.ts [FILE] [--lines N]
 */
import { openSync, closeSync } from 'node:fs';
import { pino } from 'pino';
import { RequestContext } from '../src/core/context.ts';
import type { Downstream } from '../src/core/downstream.ts';
import { accessFields, accessMessage, jsonFormat } from '../src/observe/access-log-json.ts';
import { combinedFormat } from '../src/observe/access-log-combined.ts';
import { FdWriter } from '../src/observe/batch-writer.ts';

const args = process.argv.slice(2);
const linesIndex = args.indexOf('--lines');
const total = linesIndex >= 0 ? Number(args[linesIndex + 1]) : 1_000_000;
const file = args.find((a, i) => !a.startsWith('--') && args[i - 1] !== '--lines') ?? '/dev/null';
const perTurn = 200;

/** Exchanges as a proxy finishes them: a few paths, statuses, upstreams, one error in 50. */
const contexts = Array.from({ length: 64 }, (_, i) => {
  const req = {
    method: i % 9 === 0 ? 'POST' : 'GET',
    url: `/api/v1/items/${1000 + i}?page=${i % 5}&sort=name`,
    httpVersion: '1.1',
    httpVersionMajor: 1,
    httpVersionMinor: 1,
    headers: { host: 'api.example.com', 'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36', referer: 'https://example.com/list', accept: '*/*' },
    rawHeaders: [],
  };
  const ctx = new RequestContext(req, {} as Downstream, '0.0.0.0:8080', `10.1.${i % 7}.${i}`, null);
  ctx.status = i % 50 === 0 ? 502 : 200;
  ctx.upstream = { id: `10.0.0.${1 + (i % 3)}:8080` };
  ctx.pool = { name: 'api' };
  ctx.duration = 1.234 + i * 0.37;
  ctx.bytesOut = 512 + i * 13;
  ctx.attempts = 1;
  if (i % 50 === 0) ctx.error = Object.assign(new Error('connect failed (ECONNREFUSED)'), { code: 'FUL_UPSTREAM_CONNECT_REFUSED' }) as unknown as RequestContext['error'];
  return ctx;
});

/** CPU nanoseconds per line of `write` (the whole process), `total` lines in turns of `perTurn`. */
async function measure(write: (ctx: RequestContext) => void, settle: () => Promise<void>): Promise<number> {
  const run = async (lines: number): Promise<void> => {
    for (let done = 0; done < lines; done += perTurn) {
      for (let i = 0; i < perTurn; i++) write(contexts[(done + i) & 63]);
      await new Promise((r) => setImmediate(r));
    }
    await settle();
  };
  await run(100_000); // warm up
  const before = process.cpuUsage();
  await run(total);
  const used = process.cpuUsage(before);
  return ((used.user + used.system) * 1000) / total;
}

/** CPU nanoseconds per line of building it only (no write). */
function buildOnly(build: (ctx: RequestContext) => string): number {
  let keep = 0;
  for (let i = 0; i < 100_000; i++) keep += build(contexts[i & 63]).length;
  const before = process.cpuUsage();
  for (let i = 0; i < total; i++) keep += build(contexts[i & 63]).length;
  const used = process.cpuUsage(before);
  if (keep === 0) throw new Error('nothing built');
  return ((used.user + used.system) * 1000) / total;
}

const results: [string, number, number][] = [];

// The old path: the pino logger createLogger makes (base pid, ISO time, sonic-boom asynchronous), a child with log: "access".
{
  const destination = pino.destination({ dest: file, sync: false, append: true });
  const log = pino({ level: 'info', base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination).child({ log: 'access' });
  const write = (ctx: RequestContext): void => {
    const level = ctx.status >= 500 ? 'warn' : 'info';
    if (!log.isLevelEnabled(level)) return;
    log[level](accessFields(ctx), accessMessage(ctx));
  };
  const settle = (): Promise<void> => new Promise((resolve) => destination.flush(() => resolve()));
  const cpu = await measure(write, settle);
  // Building the object and pino's serialisation, without the write: a stream that drops what it gets.
  const nowhere = pino({ level: 'info', base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, { write() {} }).child({ log: 'access' });
  let built = 0;
  const build = (ctx: RequestContext): string => {
    nowhere[ctx.status >= 500 ? 'warn' : 'info'](accessFields(ctx), accessMessage(ctx));
    return String(++built);
  };
  results.push(['pino (old)', buildOnly(build), cpu]);
  destination.flushSync();
  destination.end();
}

for (const format of [jsonFormat, combinedFormat]) {
  const fd = openSync(file, 'a');
  // A cap far above what a turn makes: the bench measures writing every line, not dropping some.
  const writer = new FdWriter(fd, { bufferBytes: 64 * 1024, flushMs: 1000, maxPendingBytes: 256 * 1024 * 1024, ownsFd: false });
  const write = (ctx: RequestContext): void => writer.write(format.line(ctx, ctx.status >= 500 ? 40 : 30, Date.now()));
  const settle = async (): Promise<void> => {
    writer.flushSync();
    // A write still in the thread pool: wait for it.
    while (writer.pendingBytes > 0) await new Promise((r) => setTimeout(r, 1));
  };
  const cpu = await measure(write, settle);
  results.push([`${format.name} (new)`, buildOnly((ctx) => format.line(ctx, ctx.status >= 500 ? 40 : 30, Date.now())), cpu]);
  if (writer.dropped > 0) process.stdout.write(`${format.name}: ${writer.dropped} lines dropped (the destination did not keep up)\n`);
  await writer.close();
  closeSync(fd);
}

const old = results[0][2];
process.stdout.write(`${total} lines to ${file}, Node ${process.version}; CPU ns per line (whole process)\n`);
process.stdout.write(`${'path'.padEnd(16)}${'build'.padStart(8)}${'build+write'.padStart(14)}${'vs pino'.padStart(10)}\n`);
for (const [name, build, cpu] of results) {
  process.stdout.write(`${name.padEnd(16)}${build.toFixed(0).padStart(8)}${cpu.toFixed(0).padStart(14)}${`${(old / cpu).toFixed(1)}x`.padStart(10)}\n`);
}
