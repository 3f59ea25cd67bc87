/**
 * WebSocket frame boundaries, followed without reading or holding payloads (RFC 6455 section
 * 5.2): a tunnel that Fulcrum closes (drain, removal, shutdown, idle) can then end each
 * direction with a Close frame (1001 Going Away) between two frames, so both peers see a clean
 * close instead of a dropped connection (1006). Only frame headers (2 to 14 bytes) are looked
 * at; payload bytes are counted and skipped.
 */
import { randomBytes } from 'node:crypto';

/** Where one direction of a WebSocket stands: inside a frame's header, its payload, or between frames. */
export class FrameBoundaries {
  private readonly header = Buffer.alloc(14);
  private have = 0;
  private need = 2;
  /** Payload bytes of the current frame not seen yet. */
  private left = 0;

  /** True between two frames. */
  get atBoundary(): boolean {
    return this.left === 0 && this.have === 0;
  }

  /**
   * Follows `chunk`. With `stop`, returns the offset of the first frame boundary in it (0 when
   * it starts between frames; `chunk.length` when it ends exactly on one), following no further;
   * -1 when there is none. Without `stop`, follows all of it and returns `chunk.length`.
   */
  scan(chunk: Buffer, stop: boolean): number {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (stop && this.atBoundary) return i;
      if (this.left > 0) {
        const take = Math.min(this.left, n - i);
        this.left -= take;
        i += take;
        continue;
      }
      this.header[this.have++] = chunk[i++];
      if (this.have === 2) {
        const len7 = this.header[1] & 0x7f;
        this.need = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (this.header[1] & 0x80 ? 4 : 0);
      }
      if (this.have >= 2 && this.have === this.need) {
        const len7 = this.header[1] & 0x7f;
        this.left = len7 < 126 ? len7 : len7 === 126 ? this.header.readUInt16BE(2) : Number(this.header.readBigUInt64BE(2));
        this.have = 0;
        this.need = 2;
      }
    }
    if (!stop) return n;
    return this.atBoundary ? n : -1;
  }
}

/**
 * A Close frame with `code` and a short `reason` (at most 123 bytes), masked when it goes to a
 * server (RFC 6455 section 5.3: every client-to-server frame is masked).
 */
export function closeFrame(code: number, reason: string, masked: boolean): Buffer {
  const text = Buffer.from(reason.slice(0, 100), 'utf8').subarray(0, 123);
  const payload = Buffer.alloc(2 + text.length);
  payload.writeUInt16BE(code, 0);
  text.copy(payload, 2);
  const head = Buffer.from([0x88, (masked ? 0x80 : 0) | payload.length]);
  if (!masked) return Buffer.concat([head, payload]);
  const mask = randomBytes(4);
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, payload]);
}
