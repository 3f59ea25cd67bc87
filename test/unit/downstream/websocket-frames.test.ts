import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { FrameBoundaries, closeFrame } from '../../../src/downstream/websocket-frames.ts';

/** One WebSocket frame (RFC 6455 section 5.2) with a payload of `length` bytes. */
function frame(length: number, masked: boolean, opcode = 0x2): Buffer {
  const ext = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const head = Buffer.alloc(2 + ext + (masked ? 4 : 0));
  head[0] = 0x80 | opcode;
  head[1] = (masked ? 0x80 : 0) | (ext === 0 ? length : ext === 2 ? 126 : 127);
  if (ext === 2) head.writeUInt16BE(length, 2);
  if (ext === 8) head.writeBigUInt64BE(BigInt(length), 2);
  if (masked) randomBytes(4).copy(head, 2 + ext);
  return Buffer.concat([head, randomBytes(length)]);
}

const lengths = [0, 1, 125, 126, 127, 65535, 65536, 70000];

/** A tracker in the same state (a scan with stop is tried on the copy, the original goes on). */
function copyOf(tracker: FrameBoundaries): FrameBoundaries {
  const fields = tracker as unknown as { header: Buffer; have: number; need: number; left: number };
  const copy = new FrameBoundaries() as unknown as typeof fields;
  fields.header.copy(copy.header);
  copy.have = fields.have;
  copy.need = fields.need;
  copy.left = fields.left;
  return copy as unknown as FrameBoundaries;
}

test('frame boundaries: every boundary of a stream of frames is found, however the stream is cut into chunks', () => {
  for (const masked of [false, true]) {
    const frames = lengths.map((n) => frame(n, masked));
    const stream = Buffer.concat(frames);
    const boundaries = new Set<number>([0]);
    let at = 0;
    for (const f of frames) boundaries.add((at += f.length));
    // Chunk sizes from 1 byte (a header split across chunks) to large.
    for (const size of [1, 2, 3, 7, 13, 1000, 65536, stream.length]) {
      const tracker = new FrameBoundaries();
      for (let offset = 0; offset < stream.length; offset += size) {
        const chunk = stream.subarray(offset, offset + size);
        assert.equal(tracker.atBoundary, boundaries.has(offset), `masked ${masked}, chunks of ${size}, at ${offset}`);
        // With stop: the first boundary in the chunk, without following past it.
        const probe = copyOf(tracker);
        const first = [...boundaries].filter((b) => b >= offset && b <= offset + chunk.length).sort((a, b) => a - b)[0];
        assert.equal(probe.scan(chunk, true), first === undefined ? -1 : first - offset, `stop: masked ${masked}, chunks of ${size}, at ${offset}`);
        assert.equal(tracker.scan(chunk, false), chunk.length);
      }
      assert.equal(tracker.atBoundary, true);
    }
  }
});

test('close frames: code 1001 and the reason, masked toward a server, unmasked toward a client', () => {
  const toClient = closeFrame(1001, 'proxy shutting down', false);
  assert.equal(toClient[0], 0x88, 'FIN and opcode 8 (Close)');
  assert.equal(toClient[1], 2 + 'proxy shutting down'.length);
  assert.equal(toClient.readUInt16BE(2), 1001);
  assert.equal(toClient.subarray(4).toString(), 'proxy shutting down');
  const toServer = closeFrame(1001, 'upstream drained', true);
  assert.equal(toServer[1] & 0x80, 0x80, 'masked');
  const length = toServer[1] & 0x7f;
  const mask = toServer.subarray(2, 6);
  const payload = Buffer.from(toServer.subarray(6, 6 + length).map((b, i) => b ^ mask[i & 3]));
  assert.equal(payload.readUInt16BE(0), 1001);
  assert.equal(payload.subarray(2).toString(), 'upstream drained');
  // A control frame's payload is at most 125 bytes (RFC 6455 section 5.5).
  assert.ok(closeFrame(1001, 'x'.repeat(500), false)[1] <= 125);
  // The tracker sees each as one whole frame.
  const tracker = new FrameBoundaries();
  tracker.scan(Buffer.concat([toClient, toServer]), false);
  assert.equal(tracker.atBoundary, true);
});
