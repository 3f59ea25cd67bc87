/**
 * The PROXY protocol header (HAProxy's, v1 or v2) a pool with `proxy_protocol` puts in front of
 * each new upstream connection, as HAProxy's `send-proxy` / `send-proxy-v2` do: the client
 * connection's two ends (its socket's peer and local address and port; after a trusted PROXY
 * header from a balancer in front, the ends that header gave, which src/listeners/proxy-protocol-gate.ts
 * makes the socket report) and, for v2, the TLS server name the client asked for (SNI) as
 * PP2_TYPE_AUTHORITY. Such an upstream connection then serves that client connection only
 * (the attempt's `connectionKey`), and the transport closes it when that client connection closes
 * (`watchClientConnection`), as HAProxy does with the private connections of a session.
 */
import type { Socket } from 'node:net';
import type { Downstream } from '../core/downstream.ts';
import { encodeProxyV1, encodeProxyV2, type ProxyAddress } from '../listeners/proxy-protocol.ts';

/**
 * The header for a new upstream connection serving `downstream`'s client connection. Ends that
 * are not known (no socket, the client already gone) give v1's `PROXY UNKNOWN` or v2's LOCAL
 * command, which tell the upstream to use the connection's own addresses.
 */
export function upstreamProxyHeader(version: 'v1' | 'v2', downstream: Downstream): Buffer {
  const socket = downstream.socket;
  let source: ProxyAddress | null = null;
  let destination: ProxyAddress | null = null;
  if (socket !== null) {
    try {
      source = endOf(socket.remoteAddress, socket.remotePort);
      destination = endOf(socket.localAddress, socket.localPort);
    } catch {
      // node:http2's socket proxy throws once its session is gone: the ends are unknown.
    }
  }
  return proxyHeader(version, source, destination, downstream.tls?.serverName ?? null);
}

/**
 * A PROXY header of `version` for a connection from `source` to `destination` (null: unknown,
 * which gives v1 `UNKNOWN` / v2 LOCAL); v2 carries `serverName` (the client's SNI) as
 * PP2_TYPE_AUTHORITY. Throws RangeError for an address that is not an IP.
 */
export function proxyHeader(version: 'v1' | 'v2', source: ProxyAddress | null, destination: ProxyAddress | null, serverName: string | null): Buffer {
  if (version === 'v1') return encodeProxyV1(source, destination);
  return encodeProxyV2(source, destination, serverName !== null ? { authority: serverName } : {});
}

/**
 * What binds upstream connections to one client connection and one header version
 * (clientConnectionKey): compared by identity, made once per client socket and version. It
 * holds the socket weakly, so an upstream connection or a transport's table that still holds
 * the key does not keep a closed client's socket; it tells its watchers once, when the socket
 * closes, from one 'close' listener added by the first watch.
 */
class ClientConnectionKey {
  /** The client's socket; null: none known (the key is gone from the start). */
  private readonly socket: WeakRef<Socket> | null;
  /** Set by the socket's 'close'. */
  private closed = false;
  /** Told at the socket's 'close'; null until the first watch. */
  private watchers: Set<ClientConnectionWatcher> | null = null;

  constructor(socket: Socket | null) {
    this.socket = socket === null ? null : new WeakRef(socket);
  }

  get gone(): boolean {
    if (this.closed) return true;
    const socket = this.socket?.deref();
    if (socket === undefined) return true;
    try {
      return socket.destroyed;
    } catch {
      // node:http2's socket proxy throws once its session let go of the socket.
      return true;
    }
  }

  watch(watcher: ClientConnectionWatcher): boolean {
    if (this.gone) return false;
    if (this.watchers === null) {
      try {
        this.socket!.deref()!.once('close', () => this.close());
      } catch {
        return false;
      }
      this.watchers = new Set();
    }
    this.watchers.add(watcher);
    return true;
  }

  private close(): void {
    this.closed = true;
    const watchers = this.watchers;
    this.watchers = null;
    if (watchers !== null) for (const w of watchers) w.clientConnectionClosed(this);
  }
}

/** Told when the client connection behind a key closes (`watchClientConnection`). */
export interface ClientConnectionWatcher {
  /** `key`'s client connection closed: whatever is bound to it serves nobody any more. */
  clientConnectionClosed(key: object): void;
}

const v1Keys = new WeakMap<object, ClientConnectionKey>();
const v2Keys = new WeakMap<object, ClientConnectionKey>();
/** The key of an exchange without a client socket: gone from the start, so nothing bound to it is ever reused. */
const noClientConnection = new ClientConnectionKey(null);

/**
 * The key that binds upstream connections to `downstream`'s client connection and to the header
 * version (two pools on one upstream may send different ones): one object per client socket and
 * version (an HTTP/2 stream's socket is its session's). Without a socket, a key that is already
 * gone. See `clientConnectionGone` and `watchClientConnection`.
 */
export function clientConnectionKey(version: 'v1' | 'v2', downstream: Downstream): object {
  const socket = downstream.socket;
  if (socket === null) return noClientConnection;
  const keys = version === 'v1' ? v1Keys : v2Keys;
  let key = keys.get(socket);
  if (key === undefined) keys.set(socket, (key = new ClientConnectionKey(socket)));
  return key;
}

/**
 * True when `key` (from clientConnectionKey) belongs to a client connection that is closed (or
 * destroyed, or was never known): upstream connections bound to it can serve nobody. False for
 * any other object.
 */
export function clientConnectionGone(key: object): boolean {
  return key instanceof ClientConnectionKey && key.gone;
}

/**
 * Has `watcher.clientConnectionClosed(key)` called once, when the client connection of `key`
 * (from clientConnectionKey) closes, and returns true; a watcher added twice is told once. Returns
 * false, and never calls, when the connection is already gone. One 'close' listener per client
 * socket and version, whatever the number of watchers. Any other object: true, never called.
 */
export function watchClientConnection(key: object, watcher: ClientConnectionWatcher): boolean {
  return key instanceof ClientConnectionKey ? key.watch(watcher) : true;
}

function endOf(address: string | undefined, port: number | undefined): ProxyAddress | null {
  return address !== undefined && port !== undefined ? { address, port } : null;
}
