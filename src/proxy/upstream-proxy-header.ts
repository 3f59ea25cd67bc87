/**
 * The PROXY protocol header (HAProxy's, v1 or v2) a pool with `proxy_protocol` puts in front of
 * each new upstream connection, as HAProxy's `send-proxy` / `send-proxy-v2` do: the client
 * connection's two ends (its socket's peer and local address and port; after a trusted PROXY
 * header from a balancer in front, the ends that header gave, which src/listeners/proxy-protocol-gate.ts
 * makes the socket report) and, for v2, the TLS server name the client asked for (SNI) as
 * PP2_TYPE_AUTHORITY. Such an upstream connection then serves that client connection only
 * (the attempt's `connectionKey`).
 */
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

/** The v2 keys of client connections (v1's is the connection's socket itself). */
const v2Keys = new WeakMap<object, object>();

/**
 * The key that binds upstream connections to `downstream`'s client connection and to the header
 * version (two pools on one upstream may send different ones): for v1 the client's socket, for
 * v2 an object made once per socket; without a socket, the downstream itself (never shared).
 */
export function clientConnectionKey(version: 'v1' | 'v2', downstream: Downstream): object {
  const socket = downstream.socket;
  if (socket === null) return downstream;
  if (version === 'v1') return socket;
  let key = v2Keys.get(socket);
  if (key === undefined) v2Keys.set(socket, (key = {}));
  return key;
}

function endOf(address: string | undefined, port: number | undefined): ProxyAddress | null {
  return address !== undefined && port !== undefined ? { address, port } : null;
}
