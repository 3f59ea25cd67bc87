/**
 * Connection admission for a listener: the firewall at accept (peers that are not trusted
 * proxies), and limits on open connections per listener and per client address. Over a limit a
 * connection is refused (closed at once) or queued: held unread until a slot frees or the client
 * gives up (the listener's timeouts start only once it is admitted).
 */
import type { BlockList, Socket } from 'node:net';
import { isTrusted, normalizeAddress } from '../core/client-address.ts';
import type { ListenerSettings } from '../config/schema.ts';
import type { Firewall } from '../middleware/firewall.ts';
import type { Logger } from '../observe/logger.ts';

/** Counts open connections and admits, refuses or queues new ones. */
export class ConnectionLimiter {
  private max = 0;
  private maxPerIp = 0;
  private queue = false;
  private trusted: BlockList | null = null;
  private firewall: Firewall | null = null;
  private readonly logger: Logger;
  private readonly listener: string;
  private open = 0;
  /** Open connections per address; an entry lives only while that address has one, so it is bounded by `open`. */
  private readonly perIp = new Map<string, number>();
  private readonly waiting: Socket[] = [];
  /** Hands an admitted socket to the HTTP server. */
  private readonly onAdmit: (socket: Socket) => void;
  /** Connections refused by a limit or the firewall (lb_client_connections_refused_total). */
  refused = 0;

  constructor(logger: Logger, listener: string, onAdmit: (socket: Socket) => void) {
    this.onAdmit = onAdmit;
    this.logger = logger;
    this.listener = listener;
  }

  /** Connections admitted and not yet closed. */
  get openCount(): number {
    return this.open;
  }

  /** Sets (or, on reload, replaces) the limits and firewall; counts of open connections are kept. */
  configure(limits: ListenerSettings['limits'], trusted: BlockList | null, firewall: Firewall | null): void {
    this.max = limits.max_connections;
    this.maxPerIp = limits.max_connections_per_ip;
    this.queue = limits.over_connection_limit === 'queue';
    this.trusted = trusted;
    this.firewall = firewall;
  }

  /** Called for every accepted socket, before it sends anything. */
  accept(socket: Socket): void {
    const address = normalizeAddress(socket.remoteAddress);
    // Behind a trusted proxy the real client is only known per request (X-Forwarded-For).
    if (this.firewall !== null && !isTrusted(this.trusted, address) && !this.firewall.permits(address)) {
      this.refused++;
      socket.destroy();
      return;
    }
    // Counted even without a limit, so a reload that sets one knows the connections already open.
    if (this.fits(address)) return this.admit(socket, address);
    if (!this.queue) {
      this.refused++;
      this.logger.debug({ listener: this.listener, client: address }, 'connection refused: over the connection limit');
      socket.destroy();
      return;
    }
    // Still paused from accept: its bytes wait in the kernel until a slot frees.
    socket.on('error', () => {});
    this.waiting.push(socket);
    socket.once('close', () => {
      const i = this.waiting.indexOf(socket);
      if (i !== -1) this.waiting.splice(i, 1);
    });
  }

  private fits(address: string): boolean {
    if (this.max > 0 && this.open >= this.max) return false;
    return this.maxPerIp === 0 || (this.perIp.get(address) ?? 0) < this.maxPerIp;
  }

  private admit(socket: Socket, address: string): void {
    this.open++;
    this.perIp.set(address, (this.perIp.get(address) ?? 0) + 1);
    socket.once('close', () => this.release(address));
    this.onAdmit(socket);
  }

  /** Shutdown: connections still waiting for a slot are closed. */
  dropWaiting(): void {
    for (const socket of this.waiting.splice(0)) socket.destroy();
  }

  private release(address: string): void {
    this.open--;
    const n = (this.perIp.get(address) ?? 1) - 1;
    if (n === 0) this.perIp.delete(address);
    else this.perIp.set(address, n);
    for (let i = 0; i < this.waiting.length; i++) {
      const socket = this.waiting[i];
      const waitingAddress = normalizeAddress(socket.remoteAddress);
      if (!this.fits(waitingAddress)) continue;
      this.waiting.splice(i, 1);
      this.admit(socket, waitingAddress);
      return;
    }
  }
}
