import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { RequestUpload, type UploadSink } from '../../../src/transport/request-upload.ts';
import { eventually } from '../../helpers/eventually.ts';

/** A sink that records what reaches it; `full` decides what each write answers. */
class RecordingSink implements UploadSink {
  chunks: string[] = [];
  ends = 0;
  errors: Error[] = [];
  full = false;
  throwOnChunk: Error | null = null;
  uploadChunk(chunk: Buffer): boolean {
    if (this.throwOnChunk !== null) throw this.throwOnChunk;
    this.chunks.push(chunk.toString());
    return !this.full;
  }
  uploadEnd(): void {
    this.ends++;
  }
  uploadFailed(err: Error): void {
    this.errors.push(err);
  }
}

function setup(declared: number, paused = false): { body: PassThrough; sink: RecordingSink; upload: RequestUpload } {
  const body = new PassThrough();
  const sink = new RecordingSink();
  const upload = new RequestUpload(sink);
  upload.attach(body, declared, paused);
  return { body, sink, upload };
}

function listeners(body: PassThrough): number {
  return body.listenerCount('data') + body.listenerCount('end') + body.listenerCount('error');
}

test('request upload: chunks reach the sink counted against the declared length; the end comes once, detached', async () => {
  const { body, sink, upload } = setup(6);
  body.write('abc');
  body.end('def');
  await eventually(() => sink.ends === 1, { what: 'the end' });
  assert.deepEqual(sink.chunks, ['abc', 'def']);
  assert.equal(upload.left, 0);
  assert.equal(upload.moved, true);
  assert.deepEqual(sink.errors, []);
  assert.equal(listeners(body), 0);
});

test('request upload: without a declared length any size goes through (left stays -1)', async () => {
  const { body, sink, upload } = setup(-1);
  body.end('x'.repeat(1000));
  await eventually(() => sink.ends === 1, { what: 'the end' });
  assert.equal(sink.chunks.join('').length, 1000);
  assert.equal(upload.left, -1);
});

test('request upload: a body longer than its Content-Length fails with UND_ERR_REQ_CONTENT_LENGTH_MISMATCH before the extra bytes are written', async () => {
  const { body, sink } = setup(3);
  body.write('abcd');
  await eventually(() => sink.errors.length === 1, { what: 'the failure' });
  assert.equal((sink.errors[0] as NodeJS.ErrnoException).code, 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH');
  assert.match(sink.errors[0].message, /longer/);
  assert.deepEqual(sink.chunks, []);
  assert.equal(sink.ends, 0);
  assert.equal(listeners(body), 0);
  assert.equal(body.isPaused(), true, 'unread bytes stay in the detached body');
});

test('request upload: a body shorter than its Content-Length fails at its end, never ends', async () => {
  const { body, sink } = setup(10);
  body.end('abc');
  await eventually(() => sink.errors.length === 1, { what: 'the failure' });
  assert.equal((sink.errors[0] as NodeJS.ErrnoException).code, 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH');
  assert.match(sink.errors[0].message, /shorter/);
  assert.equal(sink.ends, 0);
});

test('request upload: a full sink pauses the body until drained, which marks the upload as moving', async () => {
  const { body, sink, upload } = setup(-1);
  sink.full = true;
  body.write('a');
  await eventually(() => sink.chunks.length === 1, { what: 'the first chunk' });
  assert.equal(body.isPaused(), true);
  body.write('b');
  upload.moved = false;
  sink.full = false;
  upload.drained();
  assert.equal(upload.moved, true);
  assert.equal(body.isPaused(), false);
  await eventually(() => sink.chunks.length === 2, { what: 'the chunk after the drain' });
  // A drain with nothing paused is a no-op.
  upload.moved = false;
  upload.drained();
  assert.equal(upload.moved, false);
});

test('request upload: attached paused (the sink full already), the body waits for the drain', async () => {
  const { body, sink, upload } = setup(-1, true);
  body.write('a');
  // Paused from the start: nothing can arrive; one turn of the event loop lets a flowing body deliver it.
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(sink.chunks, []);
  upload.drained();
  await eventually(() => sink.chunks.length === 1, { what: 'the chunk after the drain' });
});

test("request upload: the body's error and a throw in the sink both reach uploadFailed, detached", async () => {
  const first = setup(-1);
  const boom = new Error('client gone');
  first.body.destroy(boom);
  await eventually(() => first.sink.errors.length === 1, { what: 'the body error' });
  assert.equal(first.sink.errors[0], boom);
  assert.equal(first.body.listenerCount('data'), 0);

  const second = setup(-1);
  const thrown = new Error('write threw');
  second.sink.throwOnChunk = thrown;
  second.body.write('a');
  await eventually(() => second.sink.errors.length === 1, { what: 'the sink throw' });
  assert.equal(second.sink.errors[0], thrown);
  assert.equal(listeners(second.body), 0);
});

test('request upload: detach leaves a body with unread bytes paused; the same upload takes the next body', async () => {
  const { body, sink, upload } = setup(-1);
  upload.detach();
  upload.detach();
  body.write('left behind');
  assert.equal(body.isPaused(), true);
  assert.equal(listeners(body), 0);
  const next = new PassThrough();
  upload.attach(next, 2, false);
  assert.equal(upload.moved, false);
  next.end('ok');
  await eventually(() => sink.ends === 1, { what: 'the second body ends' });
  assert.deepEqual(sink.chunks, ['ok']);
});
