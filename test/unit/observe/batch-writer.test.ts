/**
 * FdWriter on real descriptors: lines wait for `flush` or a full buffer, a burst goes out in
 * several batches, close and process.exit write what is pending, and a destination nobody
 * reads costs bounded memory (lines beyond the cap are dropped and counted).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { FdWriter } from '../../../src/observe/batch-writer.ts';
import { eventually } from '../../helpers/eventually.ts';

const writerModule = new URL('../../../src/observe/batch-writer.ts', import.meta.url).href;

function tempFile(): string {
  return join(mkdtempSync(join(tmpdir(), 'fulcrum-batch-')), 'access.log');
}

function fileLines(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  assert.ok(text === '' || text.endsWith('\n'), 'the file always ends with a whole line');
  return text === '' ? [] : text.slice(0, -1).split('\n');
}

function writer(t: TestContext, file: string, bufferBytes: number, flushMs: number, maxPendingBytes = 8 * bufferBytes): FdWriter {
  const w = new FdWriter(openSync(file, 'a'), { bufferBytes, flushMs, maxPendingBytes, ownsFd: true });
  t.after(() => w.close());
  return w;
}

/** A line of `length` bytes, newline included. */
function line(i: number, length = 100): string {
  const head = `line ${i} `;
  return head + 'x'.repeat(length - head.length - 1) + '\n';
}

/** Runs a script in a child Node; resolves with its stdout, stderr and exit code. */
function runChild(script: string, options: { readStdout?: boolean } = {}): { done: Promise<{ stdout: string; stderr: string; code: number | null }>; child: ReturnType<typeof spawn> } {
  const file = join(mkdtempSync(join(tmpdir(), 'fulcrum-batch-child-')), 'child.ts');
  writeFileSync(file, script);
  // Bounded in time whatever the script does (a child that hangs is killed, and the test then fails on its exit code).
  const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  let stdout = '';
  let stderr = '';
  if (options.readStdout !== false) child.stdout!.on('data', (d) => (stdout += d));
  else child.stdout!.pause();
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<{ stdout: string; stderr: string; code: number | null }>((resolve) => child.once('close', (code) => resolve({ stdout, stderr, code })));
  return { done, child };
}

test('lines wait in the buffer, then are written `flush` after the first one, with no more lines coming', async (t) => {
  const file = tempFile();
  const w = writer(t, file, 64 * 1024, 300);
  const start = performance.now();
  for (let i = 0; i < 3; i++) w.write(line(i));
  assert.equal(fileLines(file).length, 0, 'nothing written yet');
  assert.equal(w.writes, 0);
  await eventually(() => fileLines(file).length === 3, { what: 'the three lines' });
  const after = performance.now() - start;
  assert.ok(after >= 290, `written after ${after.toFixed(0)} ms, not before the flush interval`);
  assert.equal(w.writes, 1, 'in one write');
  assert.deepEqual(fileLines(file), [0, 1, 2].map((i) => line(i).slice(0, -1)));
});

test('a burst larger than the buffer is written in several batches at once, without waiting for the flush interval', async (t) => {
  const file = tempFile();
  const w = writer(t, file, 1024, 3_600_000);
  for (let i = 0; i < 100; i++) w.write(line(i));
  // Every full buffer is written when it fills: only the last, partly filled one waits for its hour.
  const written = fileLines(file).length;
  assert.ok(written >= 90 && written < 100, `${written} of 100 lines written`);
  assert.ok(w.writes >= 9, `${w.writes} writes`);
  assert.ok(w.pendingBytes <= 1024, `${w.pendingBytes} bytes pending`);
  await w.close();
  assert.deepEqual(fileLines(file), Array.from({ length: 100 }, (_, i) => line(i).slice(0, -1)), 'every line once, in order');
});

test('a slow reader: every line arrives whole and in order, across partial writes and EAGAIN', async () => {
  const { done, child } = runChild(`
    import { FdWriter } from ${JSON.stringify(writerModule)};
    // Batches larger than the pipe holds: every write is cut short by the pipe.
    const w = new FdWriter(1, { bufferBytes: 1 << 20, flushMs: 20, maxPendingBytes: 1 << 30, ownsFd: false });
    for (let i = 0; i < 50_000; i++) {
      w.write('line ' + i + ' ' + 'z'.repeat(i % 300) + '\\n');
      if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
    }
    for (let i = 0; i < 6000 && w.pendingBytes > 0; i++) await new Promise((r) => setTimeout(r, 5));
    process.stderr.write(JSON.stringify({ dropped: w.dropped, writes: w.writes }) + '\\n');
    process.exit(0);
  `);
  // Read in fits and starts, so the pipe fills up again and again.
  const pauses = setInterval(() => {
    child.stdout!.pause();
    setTimeout(() => child.stdout!.resume(), 15);
  }, 30);
  const { stdout, stderr, code } = await done;
  clearInterval(pauses);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stderr.trim().split('\n').pop()!) as { dropped: number; writes: number };
  assert.equal(report.dropped, 0);
  // More write calls than batches: the pipe was full at times and the rest was written later.
  const batches = Math.ceil(Buffer.byteLength(stdout) / (1 << 20));
  assert.ok(report.writes > batches, `${report.writes} writes for ${batches} batches: the reader never held the writer up`);
  const lines = stdout.split('\n');
  assert.equal(lines.pop(), '', 'ends with a whole line');
  assert.equal(lines.length, 50_000);
  lines.forEach((l, i) => assert.equal(l, `line ${i} ${'z'.repeat(i % 300)}`));
});

test('close writes what is pending at once, in order', async (t) => {
  const file = tempFile();
  const w = writer(t, file, 64 * 1024, 3_600_000);
  for (let i = 0; i < 5; i++) w.write(line(i));
  // A line longer than the buffer is written on its own, in its place.
  w.write(line(5, 200 * 1024));
  w.write(line(6));
  await w.close();
  assert.deepEqual(fileLines(file).map((l) => l.slice(0, 7)), [0, 1, 2, 3, 4, 5, 6].map((i) => line(i).slice(0, 7)));
  w.write(line(7));
  assert.equal(w.dropped, 1, 'a line after close is dropped and counted');
});

test('process.exit writes the pending lines (stdout and a file), none lost', async () => {
  const file = tempFile();
  const { done } = runChild(`
    import { openSync } from 'node:fs';
    import { FdWriter } from ${JSON.stringify(writerModule)};
    const toStdout = new FdWriter(1, { bufferBytes: 4096, flushMs: 3_600_000, maxPendingBytes: 1 << 30, ownsFd: false });
    const toFile = new FdWriter(openSync(${JSON.stringify(file)}, 'a'), { bufferBytes: 4096, flushMs: 3_600_000, maxPendingBytes: 1 << 30, ownsFd: true });
    for (let i = 0; i < 1000; i++) {
      toStdout.write('line ' + i + '\\n');
      toFile.write('line ' + i + '\\n');
    }
    process.exit(0);
  `);
  const { stdout, stderr, code } = await done;
  assert.equal(code, 0, stderr);
  const expected = Array.from({ length: 1000 }, (_, i) => `line ${i}`);
  assert.deepEqual(stdout.trimEnd().split('\n'), expected);
  assert.deepEqual(fileLines(file), expected);
});

test('a pipe nobody reads: pending bytes stay under the cap, lines beyond are dropped and counted, and the process still exits', async () => {
  const { done, child } = runChild(
    `
    import { FdWriter } from ${JSON.stringify(writerModule)};
    let dropped = 0;
    const w = new FdWriter(1, { bufferBytes: 4096, flushMs: 50, maxPendingBytes: 8 * 4096, ownsFd: false, onDrop: (n) => (dropped += n) });
    const line = 'y'.repeat(1023) + '\\n';
    globalThis.gc?.();
    const rss = process.memoryUsage().rss;
    let maxPending = 0;
    // 40 MB of lines, 100 per event-loop turn.
    for (let i = 0; i < 40_000; i += 100) {
      for (let j = 0; j < 100; j++) w.write(line);
      maxPending = Math.max(maxPending, w.pendingBytes);
      await new Promise((r) => setImmediate(r));
    }
    process.stderr.write(JSON.stringify({ dropped, counted: w.dropped, maxPending, growth: process.memoryUsage().rss - rss }) + '\\n');
    process.exit(0);
  `,
    { readStdout: false },
  );
  const started = performance.now();
  const { stderr, code } = await done;
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stderr.trim().split('\n').pop()!) as { dropped: number; counted: number; maxPending: number; growth: number };
  assert.ok(report.dropped > 30_000, `dropped ${report.dropped} of 40000 lines`);
  assert.equal(report.counted, report.dropped);
  assert.ok(report.maxPending <= 8 * 4096 + 1024, `at most ${report.maxPending} bytes pending`);
  assert.ok(report.growth < 20 * 1024 * 1024, `RSS grew ${(report.growth / 1048576).toFixed(1)} MB for 40 MB of lines`);
  assert.ok(performance.now() - started < 20_000, 'exited without waiting for a reader');
  child.stdout!.destroy();
});
