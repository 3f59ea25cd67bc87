/**
 * Who the client is. The socket peer, unless the peer is a trusted proxy: then the right-most
 * X-Forwarded-For hop that is not itself trusted (the first address a trusted hop vouched for).
 */
import type { BlockList } from 'node:net';

/** Strips the IPv4-mapped IPv6 prefix so `::ffff:10.0.0.1` matches `10.0.0.0/8` rules. */
export function normalizeAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/** True when the address is inside the trusted list (either family). */
export function isTrusted(trusted: BlockList | null, address: string): boolean {
  if (!trusted || address === '') return false;
  return trusted.check(address, address.includes(':') ? 'ipv6' : 'ipv4');
}

/** The client address given the peer and the X-Forwarded-For value(s) it sent. */
export function clientFromForwardedFor(trusted: BlockList, peer: string, forwardedFor: string | undefined): string {
  if (!forwardedFor) return peer;
  const hops = forwardedFor.split(',');
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = normalizeAddress(stripPort(hops[i].trim()));
    if (hop === '') continue;
    if (!isTrusted(trusted, hop)) return hop;
  }
  // Every hop is trusted: the left-most one is the furthest client we know of.
  const first = normalizeAddress(stripPort(hops[0].trim()));
  return first || peer;
}

function stripPort(hop: string): string {
  if (hop.startsWith('[')) return hop.slice(1, hop.indexOf(']') === -1 ? undefined : hop.indexOf(']'));
  const colon = hop.indexOf(':');
  return colon !== -1 && colon === hop.lastIndexOf(':') ? hop.slice(0, colon) : hop;
}
