/**
 * Tunnels: what an exchange becomes once the upstream switched protocols (a WebSocket's `101`;
 * later CONNECT and TCP). Bytes are relayed both ways as they come, with backpressure, never
 * parsed: message sizes and pings are the peers' business. A tunnel lives until either side
 * closes (the close is passed on, then both sockets go), an error, its idle timeout, or Fulcrum
 * closing it (drain, removal, shutdown).
 *
 * Limits per listener and per client are held as slots from the upgrade request on, so a flood
 * of handshakes cannot get past them while the upstream answers.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { FrameBoundaries, closeFrame } from './websocket-frames.ts';

/** Why a tunnel ended (a label of lb_tunnels_closed_total and the access log's `tunnel_close`). */
export type TunnelCloseReason = 'client' | 'upstream' | 'error' | 'idle' | 'drained' | 'removed' | 'shutdown';

/** After one side closed, how long the other may take to close before it is destroyed. */
const CLOSE_LINGER_MS = 5000;
/** When Fulcrum closes a WebSocket mid-frame, how long it waits for the frame to end before it ends the connection without a Close frame. */
const FRAME_END_WAIT_MS = 1000;

/** What each Fulcrum-made close says to both peers (code 1001 Going Away, RFC 6455 section 7.4.1). */
const closeText: Partial<Record<TunnelCloseReason, string>> = {
  idle: 'idle timeout',
  drained: 'upstream drained',
  removed: 'upstream removed',
  shutdown: 'proxy shutting down',
};

/** One direction of a tunnel that follows WebSocket frames, so Fulcrum can close it between two. */
interface Direction {
  frames: FrameBoundaries;
  /** Set once Fulcrum closes: the Close frame goes at the next frame boundary, nothing after it. */
  closing: Buffer | null;
  /** The Close frame went out (or the direction ended): what still comes is dropped. */
  done: boolean;
}

/** What a tunnel reports to the exchange it carries. */
export interface TunnelOwner {
  /** Bytes relayed: `fromClient` true for client to upstream. */
  relayed(bytes: number, fromClient: boolean): void;
  /** Both sockets are closed; called once. */
  closed(reason: TunnelCloseReason): void;
}

/** One open tunnel between a client and an upstream socket. */
export class Tunnel {
  private readonly client: Duplex;
  private readonly upstream: Socket;
  private readonly owner: TunnelOwner;
  private readonly idleMs: number;
  private reason: TunnelCloseReason | null = null;
  private open = 2;
  private lastActivity = performance.now();
  private lingerTimer: NodeJS.Timeout | null = null;
  /** Client to upstream, upstream to client; null for tunnels whose frames are not WebSocket's. */
  private readonly directions: [Direction, Direction] | null;
  /** `performance.now()` when the tunnel opened. */
  readonly openedAt = performance.now();

  /**
   * Starts relaying. `upstreamHead` (bytes the upstream sent right after its 101) goes to the
   * client first. `idleMs`: with no byte either way for this long the tunnel closes (0: never).
   * `websocket`: the bytes are WebSocket frames (a close by Fulcrum sends Close frames).
   */
  constructor(client: Duplex, upstream: Socket, upstreamHead: Buffer, idleMs: number, owner: TunnelOwner, websocket = true) {
    this.client = client;
    this.upstream = upstream;
    this.owner = owner;
    this.idleMs = idleMs;
    this.directions = websocket
      ? [
          { frames: new FrameBoundaries(), closing: null, done: false },
          { frames: new FrameBoundaries(), closing: null, done: false },
        ]
      : null;
    upstream.setTimeout(0);
    upstream.setNoDelay(true);
    if (upstreamHead.length > 0) {
      owner.relayed(upstreamHead.length, false);
      this.directions?.[1].frames.scan(upstreamHead, false);
      client.write(upstreamHead);
    }
    this.pump(client, upstream, true);
    this.pump(upstream, client, false);
    if (idleMs > 0) {
      const timed = client as Duplex & { setTimeout?: (ms: number) => void };
      timed.setTimeout?.(idleMs);
      client.on('timeout', () => this.onTimeout());
    }
    client.resume();
    upstream.resume();
  }

  /** The reason it ended, or null while open. */
  get closeReason(): TunnelCloseReason | null {
    return this.reason;
  }

  private pump(from: Duplex, to: Duplex, fromClient: boolean): void {
    const direction = this.directions?.[fromClient ? 0 : 1] ?? null;
    from.on('data', (chunk: Buffer) => {
      this.lastActivity = performance.now();
      if (direction !== null) {
        if (direction.done) return;
        if (direction.closing !== null) return this.endAtBoundary(direction, chunk, to, fromClient);
        direction.frames.scan(chunk, false);
      }
      this.owner.relayed(chunk.length, fromClient);
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => from.resume());
    // A half-close is passed on; the other side's close then ends the tunnel.
    from.on('end', () => {
      this.reason ??= fromClient ? 'client' : 'upstream';
      if (!to.destroyed) to.end();
      this.lingerThen(to);
    });
    from.on('error', () => {
      this.reason ??= 'error';
      this.client.destroy();
      this.upstream.destroy();
    });
    from.on('close', () => {
      this.reason ??= fromClient ? 'client' : 'upstream';
      // Whatever the closed side still had to take is lost: the other side ends once its writes are out.
      if (!to.destroyed) {
        to.end();
        this.lingerThen(to);
      }
      if (--this.open === 0) {
        if (this.lingerTimer !== null) clearTimeout(this.lingerTimer);
        this.owner.closed(this.reason);
      }
    });
  }

  /** Destroys `side` if it has not closed within CLOSE_LINGER_MS. */
  private lingerThen(side: Duplex): void {
    if (this.lingerTimer !== null) return;
    this.lingerTimer = setTimeout(() => side.destroy(), CLOSE_LINGER_MS);
    this.lingerTimer.unref();
  }

  private onTimeout(): void {
    const idle = performance.now() - this.lastActivity;
    if (idle < this.idleMs) {
      // Bytes went the other way meanwhile (the client socket only saw its own reads and writes): wait the rest.
      (this.client as Duplex & { setTimeout?: (ms: number) => void }).setTimeout?.(Math.max(1, Math.ceil(this.idleMs - idle)));
      return;
    }
    this.close('idle');
  }

  /**
   * Closes both sides, destroying whatever has not closed CLOSE_LINGER_MS later. A WebSocket
   * gets a Close frame (1001) each way first, between two frames: at once where a direction is
   * between frames, else when its frame ends (at most FRAME_END_WAIT_MS, then a plain FIN).
   */
  close(reason: TunnelCloseReason): void {
    if (this.open === 0) return;
    this.reason ??= reason;
    const upstream = this.upstream;
    setTimeout(() => upstream.destroy(), CLOSE_LINGER_MS).unref();
    this.lingerThen(this.client);
    if (this.directions === null) {
      this.client.end();
      upstream.end();
      return;
    }
    const text = closeText[reason] ?? 'closing';
    const [toUpstream, toClient] = this.directions;
    this.closeDirection(toUpstream, closeFrame(1001, text, true), upstream, true);
    this.closeDirection(toClient, closeFrame(1001, text, false), this.client, false);
    setTimeout(() => {
      for (const [d, side] of [[toUpstream, upstream], [toClient, this.client]] as const) {
        if (d.done) continue;
        d.done = true;
        side.end();
      }
    }, FRAME_END_WAIT_MS).unref();
  }

  /** Sends `frame` and ends `to` now if the direction is between frames, else at the next boundary. */
  private closeDirection(d: Direction, frame: Buffer, to: Duplex, fromClient: boolean): void {
    if (d.done || d.closing !== null) return;
    d.closing = frame;
    if (d.frames.atBoundary) this.endAtBoundary(d, Buffer.alloc(0), to, fromClient);
  }

  /** Relays `chunk` up to the first frame boundary, then the Close frame, then ends `to`. */
  private endAtBoundary(d: Direction, chunk: Buffer, to: Duplex, fromClient: boolean): void {
    const at = d.frames.scan(chunk, true);
    const upTo = at === -1 ? chunk.length : at;
    if (upTo > 0) {
      this.owner.relayed(upTo, fromClient);
      if (!to.destroyed) to.write(upTo === chunk.length ? chunk : chunk.subarray(0, upTo));
    }
    if (at === -1) return;
    d.done = true;
    if (!to.destroyed) to.end(d.closing!);
  }

  /** Destroys both sides now. */
  destroy(reason: TunnelCloseReason): void {
    this.reason ??= reason;
    this.client.destroy();
    this.upstream.destroy();
  }
}

/** A held place under a listener's tunnel limits; released once. */
export interface TunnelSlot {
  release(): void;
}

/** Why a tunnel was refused a slot. */
export type TunnelRefusal = 'listener' | 'client';

/**
 * A listener's tunnel limits: `max` tunnels at once (0: no limit) and `perClient` per client
 * address (0: no limit). The per-client table only holds addresses with a tunnel (or handshake)
 * open, so it is bounded by the open connections.
 */
export class TunnelLimits {
  max = 0;
  perClient = 0;
  /** Tunnels open or being set up. */
  count = 0;
  private readonly byClient = new Map<string, number>();

  configure(max: number, perClient: number): void {
    this.max = max;
    this.perClient = perClient;
  }

  /** A slot for `client`, or why there is none. */
  reserve(client: string): TunnelSlot | TunnelRefusal {
    if (this.max > 0 && this.count >= this.max) return 'listener';
    const mine = this.byClient.get(client) ?? 0;
    if (this.perClient > 0 && mine >= this.perClient) return 'client';
    this.count++;
    this.byClient.set(client, mine + 1);
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        this.count--;
        const left = (this.byClient.get(client) ?? 1) - 1;
        if (left <= 0) this.byClient.delete(client);
        else this.byClient.set(client, left);
      },
    };
  }
}
