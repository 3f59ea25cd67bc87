/**
 * Accepting the PROXY protocol (HAProxy's, v1 and v2) on a listener: a connection from a peer in
 * `proxy_protocol.trusted` must start with a header, and the client address it carries becomes
 * the connection's (firewall, connection limits, rate limits, logs, X-Forwarded-For all see it);
 * a header that is malformed, too large or late closes the connection, counted by reason.
 * Peers that are not trusted are served as themselves; a header from one of them is refused
 * (TCP listeners check their first bytes; on HTTP listeners it is a malformed request, 400).
 */
import type { BlockList, Socket } from 'node:net';
import { compileCidrs, type ListenerSettings } from '../config/schema.ts';
import { isTrusted, normalizeAddress } from '../core/client-address.ts';
import type { Logger } from '../observe/logger.ts';
import { ProxyProtocolError, readProxyHeader, type ProxyHeader, type ProxyRefusal } from './proxy-protocol.ts';

/** The header a connection arrived with, by socket (for the destination address, SNI and tests). */
const headers = new WeakMap<Socket, ProxyHeader>();

/** The PROXY header `socket` started with, if a trusted peer sent one. */
export function proxyHeaderOf(socket: Socket): ProxyHeader | undefined {
  return headers.get(socket);
}

/**
 * Makes `socket` report the client a PROXY header named: `remoteAddress`, `remotePort`,
 * `remoteFamily` (and `localAddress`/`localPort` from its destination), so every reader of the
 * socket (downstreams, limits, logs) sees the client, not the balancer in front.
 */
export function adoptProxyHeader(socket: Socket, header: ProxyHeader): void {
  headers.set(socket, header);
  if (header.source === null) return;
  const family = header.source.address.includes(':') ? 'IPv6' : 'IPv4';
  Object.defineProperty(socket, 'remoteAddress', { value: header.source.address, configurable: true });
  Object.defineProperty(socket, 'remotePort', { value: header.source.port, configurable: true });
  Object.defineProperty(socket, 'remoteFamily', { value: family, configurable: true });
  if (header.destination !== null) {
    Object.defineProperty(socket, 'localAddress', { value: header.destination.address, configurable: true });
    Object.defineProperty(socket, 'localPort', { value: header.destination.port, configurable: true });
  }
}

/** Carries a header over to a socket wrapping `raw` (the TLS socket of an https listener). */
export function carryProxyHeader(raw: Socket | null, wrapper: Socket): void {
  const header = raw === null ? undefined : headers.get(raw);
  if (header !== undefined) adoptProxyHeader(wrapper, header);
}

/** A listener's PROXY-protocol intake. */
export class ProxyProtocolGate {
  private trusted: BlockList | null = null;
  private timeoutMs = 5000;
  private readonly logger: Logger;
  private readonly listener: string;
  /** Sockets whose header is still being read (a drain closes them). */
  private readonly reading = new Set<Socket>();
  /** Connections closed for their PROXY header, by reason (lb_proxy_protocol_refused_total). */
  readonly refused = new Map<ProxyRefusal, number>();
  /** Headers accepted from trusted peers, by version. */
  readonly accepted = { v1: 0, v2: 0 };

  constructor(logger: Logger, listener: string) {
    this.logger = logger;
    this.listener = listener;
  }

  /** (Re)reads the listener's `proxy_protocol`; absent turns the gate off for new connections. */
  configure(settings: ListenerSettings['proxy_protocol']): void {
    this.trusted = settings === undefined ? null : compileCidrs(settings.trusted);
    this.timeoutMs = settings?.timeout ?? 5000;
  }

  /** True while the listener accepts PROXY headers from someone (so the others' first bytes are checked). */
  get enabled(): boolean {
    return this.trusted !== null;
  }

  /** True when `socket`'s peer must send a header. */
  expectsHeader(socket: Socket): boolean {
    return this.trusted !== null && isTrusted(this.trusted, normalizeAddress(socket.remoteAddress));
  }

  /**
   * Takes an accepted, paused socket: a trusted peer's header is read (then `admit` gets the
   * socket reporting the client's address, still paused, with the bytes after the header
   * unread); anyone else goes to `admit` at once. A bad header destroys the socket.
   */
  accept(socket: Socket, admit: (socket: Socket) => void): void {
    if (!this.expectsHeader(socket)) return admit(socket);
    this.reading.add(socket);
    const peer = socket.remoteAddress;
    readProxyHeader(socket, { timeoutMs: this.timeoutMs }).then(
      (header) => {
        this.reading.delete(socket);
        if (socket.destroyed) return;
        this.accepted[header.version === 1 ? 'v1' : 'v2']++;
        adoptProxyHeader(socket, header);
        admit(socket);
      },
      (err: unknown) => {
        this.reading.delete(socket);
        const reason: ProxyRefusal = err instanceof ProxyProtocolError ? err.reason : 'malformed';
        this.refuse(reason);
        this.logger.debug({ listener: this.listener, peer, reason, err: (err as Error).message }, `PROXY protocol header refused (${reason}): ${(err as Error).message}`);
        socket.destroy();
      },
    );
  }

  /** Counts a refusal (`untrusted`: a header from a peer that may not send one). */
  refuse(reason: ProxyRefusal): void {
    this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1);
  }

  /** Shutdown: connections still sending their header have nothing to finish. */
  closeReading(): void {
    for (const s of this.reading) s.destroy();
    this.reading.clear();
  }
}
