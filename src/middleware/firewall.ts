/**
 * IP allow and deny lists, compiled once per configuration into node:net BlockLists (IPv4 and
 * IPv6; IPv4-mapped IPv6 addresses are normalised before the check). Deny wins; an empty allow
 * list allows everyone not denied.
 */
import type { BlockList } from 'node:net';
import { compileCidrs } from '../config/schema.ts';
import type { RequestContext } from '../core/context.ts';
import type { Refusal, RequestGuard } from '../core/pipeline.ts';
import type { z } from 'zod';
import type { FirewallConfig } from '../config/schema.ts';
import { ErrorCode } from '../errors.ts';

type FirewallSettings = z.output<typeof FirewallConfig>;

/** A compiled firewall: answers whether an address may pass. */
export class Firewall {
  private readonly allow: BlockList | null;
  private readonly deny: BlockList | null;
  readonly status: number;

  constructor(settings: FirewallSettings) {
    this.allow = settings.allow.length > 0 ? compileCidrs(settings.allow) : null;
    this.deny = settings.deny.length > 0 ? compileCidrs(settings.deny) : null;
    this.status = settings.status;
  }

  /** True when the (normalised) address may pass. */
  permits(address: string): boolean {
    const family = address.includes(':') ? 'ipv6' : 'ipv4';
    if (this.deny !== null && this.deny.check(address, family)) return false;
    return this.allow === null || this.allow.check(address, family);
  }
}

/** The firewall phase for HTTP requests: checks the client address (after trusted-proxy rules). */
export function firewallGuard(firewall: Firewall, scope: string): RequestGuard {
  const refusal: Refusal = { status: firewall.status, code: ErrorCode.FirewallDenied, message: `client address refused by the ${scope} firewall` };
  return {
    phase: 'firewall',
    check: (ctx: RequestContext) => (firewall.permits(ctx.clientAddress) ? null : refusal),
  };
}
