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

/** Why a tunnel ended (a label of lb_tunnels_closed_total and the access log's `tunnel_close`). */
export type TunnelCloseReason = 'client' | 'upstream' | 'error' | 'idle' | 'drained' | 'removed' | 'shutdown';

/** After one side closed, how long the other may take to close before it is destroyed. */
const CLOSE_LINGER_MS = 5000;

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
  /** `performance.now()` when the tunnel opened. */
  readonly openedAt = performance.now();

  /**
   * Starts relaying. `upstreamHead` (bytes the upstream sent right after its 101) goes to the
   * client first. `idleMs`: with no byte either way for this long the tunnel closes (0: never).
   */
  constructor(client: Duplex, upstream: Socket, upstreamHead: Buffer, idleMs: number, owner: TunnelOwner) {
    this.client = client;
    this.upstream = upstream;
    this.owner = owner;
    this.idleMs = idleMs;
    upstream.setTimeout(0);
    upstream.setNoDelay(true);
    if (upstreamHead.length > 0) {
      owner.relayed(upstreamHead.length, false);
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
    from.on('data', (chunk: Buffer) => {
      this.lastActivity = performance.now();
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

  /** Closes both sides (FIN), destroying whatever has not closed CLOSE_LINGER_MS later. */
  close(reason: TunnelCloseReason): void {
    if (this.open === 0) return;
    this.reason ??= reason;
    this.client.end();
    this.upstream.end();
    this.lingerThen(this.client);
    const upstream = this.upstream;
    setTimeout(() => upstream.destroy(), CLOSE_LINGER_MS).unref();
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
