/**
 * The forward proxy's destination policy: may a client reach `host:port` (absolute-form
 * `GET http://host/` or `CONNECT host:port`), and at which address. Pure decisions, no sockets.
 *
 * The host is resolved once per decision and the caller connects to the address that was
 * checked, never resolving again, so a name that answers a public address to the check and a
 * private one to the connect (DNS rebinding) gains nothing. Special-purpose addresses (the IANA
 * IPv4 and IPv6 Special-Purpose Address Registries, RFC 6890) are the SSRF defence: they are
 * reachable only through an allow rule whose `cidrs` name them explicitly.
 *
 * Rules, patterns, port ranges and address lists are compiled once in the constructor; a decision
 * costs a few set lookups and BlockList checks besides the one lookup.
 */
import { BlockList, isIP, isIPv6 } from 'node:net';
import { promises as dnsPromises } from 'node:dns';

/** One rule of the forward policy, as the configuration schema produces it. */
export interface ForwardRuleSettings {
  /** Named in decisions and logs; `rules[<index>]` when absent. */
  name?: string;
  action: 'allow' | 'deny';
  /**
   * Exact names or `*.example.com` (any name ending in `.example.com`, at any depth, but not
   * `example.com` itself); an IP literal matches the address however the client spells it
   * (`[::ffff:7f00:1]`, `2130706433`, `0x7f.1` are `127.0.0.1`), but not a name that resolves to it
   * (deny an address with `cidrs`). Case-insensitive, a trailing dot ignored. Absent: any host.
   */
  hosts?: string[];
  /**
   * The resolved address must be inside one of these (`10.0.0.0/8`, `::1/128`, `127.0.0.1`).
   * Absent: any address for a deny rule; any address that is not special-purpose for an allow
   * rule. An allow rule reaches a special-purpose address only through a CIDR here that contains
   * it and lies wholly inside that special-purpose range (`127.0.0.1/32` does; `0.0.0.0/0` does not).
   */
  cidrs?: string[];
  /** Ports as numbers or `"8000-8999"` ranges, 1-65535. Absent: 80 and 443 for an allow rule, every port for a deny rule. */
  ports?: (number | string)[];
}

/** The forward policy: rules checked in order, the first that matches decides. */
export interface ForwardPolicySettings {
  rules: ForwardRuleSettings[];
}

/** Why a destination was refused. */
export type ForwardDenialReason = 'no_rule' | 'denied_by_rule' | 'special_address' | 'port' | 'bad_host' | 'resolve_failed';

/**
 * What the policy decided. Allowed: connect to `address` (family 4 or 6) on `port`; `host` is
 * the normalised name (lower case, no trailing dot) for logs. Refused: the reason, the rule that
 * decided (null when none did) and a sentence for the log.
 */
export type ForwardDecision =
  | { allowed: true; rule: string; address: string; family: 4 | 6; host: string; port: number }
  | { allowed: false; rule: string | null; reason: ForwardDenialReason; detail: string };

/** Resolves a host name to its addresses, in the order to try them. */
export type ForwardResolver = (host: string) => Promise<{ address: string; family: number }[]>;

/** Tuning for a ForwardPolicy. */
export interface ForwardPolicyOptions {
  /** How long one lookup may take before the decision is `resolve_failed` (milliseconds, default 5000). */
  resolveTimeout?: number;
}

/** How long a lookup may take by default (milliseconds). */
export const DEFAULT_RESOLVE_TIMEOUT = 5000;

/** The ports an allow rule without `ports` allows. */
export const DEFAULT_FORWARD_PORTS: readonly number[] = [80, 443];

/** The ports a deny rule without `ports` denies: all of them (a deny that quietly held on 80 and 443 only would let a later allow open the rest). */
const ALL_PORTS: readonly string[] = ['1-65535'];

/**
 * `lookup` with at most `running` calls in progress at once and `waiting` more queued; beyond
 * that a call rejects at once ("over N lookups running ..."). A call holds its place until its
 * lookup really settles, also after a caller's deadline gave up on it.
 */
export function capLookups(lookup: ForwardResolver, running: number, waiting: number): ForwardResolver {
  let busy = 0;
  const queue: (() => void)[] = [];
  const release = (): void => {
    const next = queue.shift();
    // The place passes straight to the next in the queue.
    if (next !== undefined) next();
    else busy--;
  };
  return async (host) => {
    if (busy >= running) {
      if (queue.length >= waiting) throw new Error(`over ${running} lookups running and ${waiting} waiting`);
      await new Promise<void>((resolve) => queue.push(resolve));
    } else busy++;
    try {
      return await lookup(host);
    } finally {
      release();
    }
  };
}

/**
 * The system resolver (getaddrinfo, as `net.connect` would use), every address in its order;
 * process-wide at most 2 lookups at once and 64 waiting. getaddrinfo runs on libuv's thread pool
 * (4 threads by default), which file writes (the access log), scrypt (proxy auth) and zlib share,
 * and a lookup cannot be cancelled: without a cap, slow names chosen by clients would hold every thread.
 */
export const systemResolver: ForwardResolver = capLookups((host) => dnsPromises.lookup(host, { all: true, order: 'verbatim' }), 2, 64);

// ---------------------------------------------------------------------------------------------
// Special-purpose ranges

type Family = 'ipv4' | 'ipv6';

interface SpecialRange {
  /** The registry's name for the range, in kebab-case (`loopback`, `private`, `documentation`, ...). */
  readonly name: string;
  readonly network: string;
  readonly prefix: number;
  readonly family: Family;
  readonly list: BlockList;
}

/**
 * The IANA IPv4 and IPv6 Special-Purpose Address Registries plus multicast and the reserved
 * 240/4, most specific first so an address gets the narrowest name. `::ffff:0:0/96` (IPv4-mapped)
 * is missing on purpose: a mapped address is classified by the IPv4 address it carries, and
 * node's BlockList would match every IPv4 address against that range.
 */
const SPECIAL_RANGE_TABLE: readonly [name: string, cidr: string][] = [
  ['this-network', '0.0.0.0/8'],
  ['private', '10.0.0.0/8'],
  ['shared-address-space', '100.64.0.0/10'],
  ['loopback', '127.0.0.0/8'],
  ['link-local', '169.254.0.0/16'],
  ['private', '172.16.0.0/12'],
  ['ietf-protocol-assignments', '192.0.0.0/24'],
  ['documentation', '192.0.2.0/24'],
  ['6to4-relay-anycast', '192.88.99.0/24'],
  ['private', '192.168.0.0/16'],
  ['benchmarking', '198.18.0.0/15'],
  ['documentation', '198.51.100.0/24'],
  ['documentation', '203.0.113.0/24'],
  ['multicast', '224.0.0.0/4'],
  ['limited-broadcast', '255.255.255.255/32'],
  ['reserved', '240.0.0.0/4'],
  ['unspecified', '::/128'],
  ['loopback', '::1/128'],
  ['nat64', '64:ff9b::/96'],
  ['nat64-local', '64:ff9b:1::/48'],
  ['ipv4-compatible', '::/96'],
  ['discard-only', '100::/64'],
  ['ietf-protocol-assignments', '2001::/23'],
  ['documentation', '2001:db8::/32'],
  ['6to4', '2002::/16'],
  // RFC 9637 (2024): a second IPv6 documentation block.
  ['documentation', '3fff::/20'],
  // RFC 9602 (2024): SRv6 segment identifiers, not globally reachable.
  ['srv6-sids', '5f00::/16'],
  ['unique-local', 'fc00::/7'],
  ['link-local', 'fe80::/10'],
  ['site-local', 'fec0::/10'],
  ['multicast', 'ff00::/8'],
];

const SPECIAL_RANGES: readonly SpecialRange[] = SPECIAL_RANGE_TABLE.map(([name, cidr]) => {
  const parsed = parseCidrText(cidr)!;
  const list = new BlockList();
  list.addSubnet(parsed.network, parsed.prefix, parsed.family);
  return { name, network: parsed.network, prefix: parsed.prefix, family: parsed.family, list };
}).sort((a, b) => b.prefix - a.prefix);

/** Every special range in one list per family: the common (public) answer costs one check. */
const ANY_SPECIAL = new BlockList();
for (const range of SPECIAL_RANGES) ANY_SPECIAL.addSubnet(range.network, range.prefix, range.family);

const NAT64_INDEX = SPECIAL_RANGES.findIndex((r) => r.name === 'nat64');
const SIX_TO_FOUR_INDEX = SPECIAL_RANGES.findIndex((r) => r.name === '6to4');

/** One special range an address (or an IPv4 address embedded in it) falls in. */
interface SpecialHit {
  /** The address that is inside the range: the checked address or the IPv4 address it embeds. */
  readonly address: string;
  readonly family: Family;
  /** Index into SPECIAL_RANGES. */
  readonly range: number;
}

function specialRangeIndex(address: string, family: Family): number {
  if (!ANY_SPECIAL.check(address, family)) return -1;
  for (let i = 0; i < SPECIAL_RANGES.length; i++) {
    const range = SPECIAL_RANGES[i];
    if (range.family === family && range.list.check(address, family)) return i;
  }
  return -1;
}

/**
 * Every special range an address touches: its own, and for NAT64 (`64:ff9b::/96`, RFC 6052) and
 * 6to4 (`2002::/16`, RFC 3056) addresses also the range of the IPv4 address they carry. Empty for
 * a public address. `address` is already normalised (IPv4-mapped addresses as IPv4).
 */
function specialHits(address: string, family: Family): SpecialHit[] {
  const index = specialRangeIndex(address, family);
  if (index < 0) return [];
  const hits: SpecialHit[] = [{ address, family, range: index }];
  if (index === NAT64_INDEX || index === SIX_TO_FOUR_INDEX) {
    const bytes = ipv6Bytes(address)!;
    const embedded = index === NAT64_INDEX ? ipv4Text(bytes, 12) : ipv4Text(bytes, 2);
    const inner = specialRangeIndex(embedded, 'ipv4');
    if (inner >= 0) hits.push({ address: embedded, family: 'ipv4', range: inner });
  }
  return hits;
}

/**
 * The name of the special-purpose range an IP address falls in (`loopback`, `private`,
 * `link-local`, `documentation`, `nat64`, `6to4`, `multicast`, ...), or null for a public address
 * or text that is not an address. An IPv4-mapped address (`::ffff:127.0.0.1`) is classified by
 * the IPv4 address it carries; a NAT64 or 6to4 address is named by its own range.
 */
export function isSpecialPurposeAddress(address: string): string | null {
  const normal = normaliseAddress(address);
  if (normal === null) return null;
  const index = specialRangeIndex(normal.address, normal.family);
  return index < 0 ? null : SPECIAL_RANGES[index].name;
}

// ---------------------------------------------------------------------------------------------
// Addresses and CIDRs

/** The 16 bytes of an IPv6 address (no zone id; `isIPv6` already true), or null. */
function ipv6Bytes(text: string): Uint8Array | null {
  const bytes = new Uint8Array(16);
  let head = text;
  let tailV4: number[] | null = null;
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    const quad = text.slice(lastColon + 1).split('.').map(Number);
    if (quad.length !== 4 || quad.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) return null;
    tailV4 = quad;
    // Keep the colon so "::1.2.3.4" still splits around its "::".
    head = text.slice(0, lastColon + 1) + '0:0';
  }
  const halves = head.split('::');
  if (halves.length > 2) return null;
  const groups = (part: string) => (part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const left = groups(halves[0]);
  const right = halves.length === 2 ? groups(halves[1]) : [];
  const missing = 8 - left.length - right.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...left, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...right];
  for (let i = 0; i < 8; i++) {
    const g = all[i];
    if (!Number.isInteger(g) || g < 0 || g > 0xffff) return null;
    bytes[i * 2] = g >> 8;
    bytes[i * 2 + 1] = g & 0xff;
  }
  if (tailV4 !== null) bytes.set(tailV4, 12);
  return bytes;
}

function ipv4Text(bytes: Uint8Array, at: number): string {
  return `${bytes[at]}.${bytes[at + 1]}.${bytes[at + 2]}.${bytes[at + 3]}`;
}

function isMapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** An address as it is checked and connected to: IPv4-mapped IPv6 as plain IPv4. Null when not an IP address. */
function normaliseAddress(address: string): { address: string; family: Family } | null {
  const version = isIP(address);
  if (version === 4) return { address, family: 'ipv4' };
  if (version !== 6 || address.includes('%')) return null;
  const bytes = ipv6Bytes(address);
  if (bytes === null) return null;
  if (isMapped(bytes)) return { address: ipv4Text(bytes, 12), family: 'ipv4' };
  return { address, family: 'ipv6' };
}

interface ParsedCidr {
  network: string;
  prefix: number;
  family: Family;
}

/**
 * An address or CIDR block (`10.0.0.0/8`, `::1/128`, `127.0.0.1`), or null. An IPv4-mapped block
 * of /96 or longer is read as the IPv4 block it is (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
 */
export function parseCidrText(text: string): ParsedCidr | null {
  const [address, prefixText, extra] = text.trim().split('/');
  if (extra !== undefined || address.includes('%')) return null;
  const version = isIP(address);
  if (version === 0) return null;
  const max = version === 4 ? 32 : 128;
  if (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText)) return null;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (prefix > max) return null;
  if (version === 6) {
    const bytes = ipv6Bytes(address);
    if (bytes === null) return null;
    if (isMapped(bytes) && prefix >= 96) return { network: ipv4Text(bytes, 12), prefix: prefix - 96, family: 'ipv4' };
  }
  return { network: address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** The canonical text of an IPv6 address (`0:0::1` -> `::1`), as the WHATWG URL parser writes it. */
function canonicalIPv6(address: string): string {
  return new URL(`http://[${address}]/`).hostname.slice(1, -1);
}

// ---------------------------------------------------------------------------------------------
// Hosts and ports

const HOST_NAME = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?$/;

/**
 * Why `host` (as the client wrote it, no brackets) is not a host name or IP literal Fulcrum will
 * look up, or undefined when it is: characters outside `A-Z a-z 0-9 . - _`, empty labels, a name
 * longer than 253 characters or a label longer than 63, IPv6 zone ids (`%eth0`).
 */
export function hostProblem(host: string): string | undefined {
  if (host.length === 0) return 'empty host';
  if (host.includes('%')) return 'zone ids are not allowed';
  if (isIP(host) !== 0) return undefined;
  if (!HOST_NAME.test(host)) return 'not a host name or IP address';
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  if (name.length > 253) return 'host name longer than 253 characters';
  if (name.split('.').some((label) => label.length > 63)) return 'host name label longer than 63 characters';
  return undefined;
}

/** The WHATWG URL host parser's "ends in a number": the last label is decimal digits or `0x` and hex digits. */
const ENDS_IN_NUMBER = /(?:^|\.)(?:\d+|0x[0-9a-f]*)$/;

/**
 * A host as patterns see it and as it is decided on: lower case, no trailing dot, IPv6 literals
 * canonical, and every spelling of an IPv4 address as its dotted quad, so a pattern naming an
 * address matches however the client writes it: an IPv4-mapped literal (`::ffff:7f00:1`) as the
 * IPv4 address it carries (connected to as that), and the numeric forms inet_aton and the WHATWG
 * URL parser both read as IPv4 (`2130706433`, `0x7f.1`, `127.1`, `0177.0.0.1`) as theirs.
 */
function normaliseHost(host: string): string {
  if (isIPv6(host)) {
    const normal = normaliseAddress(host);
    return normal !== null && normal.family === 'ipv4' ? normal.address : canonicalIPv6(host);
  }
  const lower = host.toLowerCase();
  const name = lower.endsWith('.') ? lower.slice(0, -1) : lower;
  if (isIP(name) === 0 && ENDS_IN_NUMBER.test(name)) {
    let parsed = '';
    try {
      parsed = new URL(`http://${name}/`).hostname;
    } catch {
      // Ends in a number but is no IPv4 address (`a.123`, `1.2.3.4.5`): a name, looked up as written.
    }
    if (isIP(parsed) === 4) return parsed;
  }
  return name;
}

/**
 * Why a `hosts` entry is not a pattern, or undefined when it is: an exact name or IP literal, or
 * `*.` followed by a name. A lone `*` is refused (leave `hosts` out to match any host).
 */
export function hostPatternProblem(pattern: string): string | undefined {
  if (pattern === '*') return 'a lone "*" is not a pattern: leave out "hosts" to match any host';
  const name = pattern.startsWith('*.') ? pattern.slice(2) : pattern;
  if (pattern.startsWith('*.') && isIP(name) !== 0) return 'a wildcard needs a host name after "*.", not an IP address';
  const problem = hostProblem(name);
  return problem === undefined ? undefined : `${JSON.stringify(pattern)}: ${problem}${name.includes('*') ? ' ("*" only as "*." at the start)' : ''}`;
}

/** An inclusive port range. */
export interface PortRange {
  low: number;
  high: number;
}

/** A port spec (`443`, `"443"`, `"8000-8999"`) as an inclusive range within 1-65535, or null. */
export function parsePortSpec(spec: number | string): PortRange | null {
  if (typeof spec === 'number') return Number.isInteger(spec) && spec >= 1 && spec <= 65535 ? { low: spec, high: spec } : null;
  const match = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(spec);
  if (match === null) return null;
  const low = Number(match[1]);
  const high = match[2] === undefined ? low : Number(match[2]);
  if (low < 1 || high > 65535 || low > high) return null;
  return { low, high };
}

// ---------------------------------------------------------------------------------------------
// Compiled rules

interface CompiledRule {
  readonly name: string;
  readonly allow: boolean;
  /** null: any host. */
  readonly exactHosts: Set<string> | null;
  /** `.example.com` for `*.example.com`. */
  readonly hostSuffixes: readonly string[];
  readonly ports: readonly PortRange[];
  readonly portsText: string;
  /** null: no address condition. */
  readonly cidrs: BlockList | null;
  /** Per special range (index into SPECIAL_RANGES): the rule's CIDRs that lie wholly inside it. */
  readonly explicit: readonly (BlockList | null)[];
}

function compileRule(settings: ForwardRuleSettings, index: number): CompiledRule {
  const name = settings.name ?? `rules[${index}]`;
  const fail = (message: string): never => {
    throw new Error(`forward policy ${name}: ${message}`);
  };
  if (settings.action !== 'allow' && settings.action !== 'deny') fail(`action must be "allow" or "deny", got ${JSON.stringify(settings.action)}`);

  let exactHosts: Set<string> | null = null;
  const hostSuffixes: string[] = [];
  if (settings.hosts !== undefined) {
    exactHosts = new Set();
    for (const pattern of settings.hosts) {
      const problem = hostPatternProblem(pattern);
      if (problem !== undefined) fail(`hosts: ${problem}`);
      if (pattern.startsWith('*.')) hostSuffixes.push(`.${normaliseHost(pattern.slice(2))}`);
      else exactHosts.add(normaliseHost(pattern));
    }
  }

  const portSpecs = settings.ports ?? (settings.action === 'deny' ? ALL_PORTS : DEFAULT_FORWARD_PORTS);
  const ports = portSpecs.map((spec) => parsePortSpec(spec) ?? fail(`ports: ${JSON.stringify(spec)} is not a port (1-65535) or range ("8000-8999")`));

  let cidrs: BlockList | null = null;
  const explicit: (BlockList | null)[] = SPECIAL_RANGES.map(() => null);
  if (settings.cidrs !== undefined) {
    cidrs = new BlockList();
    for (const text of settings.cidrs) {
      const parsed = parseCidrText(text) ?? fail(`cidrs: ${JSON.stringify(text)} is not an IP address or CIDR block`);
      cidrs.addSubnet(parsed.network, parsed.prefix, parsed.family);
      // Masking to a prefix at least as long as the range's keeps the range's bits, so the block is inside it.
      for (let i = 0; i < SPECIAL_RANGES.length; i++) {
        const range = SPECIAL_RANGES[i];
        if (range.family === parsed.family && parsed.prefix >= range.prefix && range.list.check(parsed.network, parsed.family)) {
          (explicit[i] ??= new BlockList()).addSubnet(parsed.network, parsed.prefix, parsed.family);
        }
      }
    }
  }

  const portsText = ports.map((r) => (r.low === r.high ? `${r.low}` : `${r.low}-${r.high}`)).join(', ');
  return { name, allow: settings.action === 'allow', exactHosts, hostSuffixes, ports, portsText, cidrs, explicit };
}

function hostMatches(rule: CompiledRule, host: string): boolean {
  if (rule.exactHosts === null) return true;
  if (rule.exactHosts.has(host)) return true;
  for (const suffix of rule.hostSuffixes) if (host.length > suffix.length && host.endsWith(suffix)) return true;
  return false;
}

function portMatches(rule: CompiledRule, port: number): boolean {
  for (const range of rule.ports) if (port >= range.low && port <= range.high) return true;
  return false;
}

/** True when a deny rule's CIDRs hold the address or an IPv4 address it carries (NAT64, 6to4). */
function denyCidrsMatch(rule: CompiledRule, address: string, family: Family, hits: readonly SpecialHit[]): boolean {
  if (rule.cidrs === null) return true;
  if (rule.cidrs.check(address, family)) return true;
  for (const hit of hits) if (hit.address !== address && rule.cidrs.check(hit.address, hit.family)) return true;
  return false;
}

/** RFC 6761 section 6.3: `localhost` and names under it are loopback, whatever DNS says. */
function isLocalhostName(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost');
}
const LOCALHOST_ADDRESSES = [
  { address: '127.0.0.1', family: 4 },
  { address: '::1', family: 6 },
];

type Denial = Extract<ForwardDecision, { allowed: false }>;

/** A compiled forward policy: decides destinations for the forward proxy. */
export class ForwardPolicy {
  private readonly rules: readonly CompiledRule[];
  private readonly resolve: ForwardResolver;
  private readonly resolveTimeout: number;

  /**
   * Compiles the rules; throws an Error naming the rule for a bad host pattern, CIDR or port
   * spec (the schema refuses these first). `resolve` defaults to the system resolver
   * (`dns.promises.lookup(host, { all: true, order: 'verbatim' })`).
   */
  constructor(settings: ForwardPolicySettings, resolve: ForwardResolver = systemResolver, options: ForwardPolicyOptions = {}) {
    this.rules = settings.rules.map(compileRule);
    this.resolve = resolve;
    this.resolveTimeout = options.resolveTimeout ?? DEFAULT_RESOLVE_TIMEOUT;
  }

  /**
   * Decides whether the client may reach `host:port`. `host` is as the client wrote it (IPv6
   * literals without brackets). Rules are tried in order; a rule matches when its host patterns
   * and ports do and then its address condition holds for the resolved address; the first match
   * decides. An allow rule does not match a special-purpose address its CIDRs do not name
   * explicitly, so a later rule that does can still allow it; when none does the refusal is
   * `special_address`, naming the first rule that passed it over. Names are resolved once; IP literals (in any
   * spelling: IPv4-mapped, numeric IPv4 forms) never, they are the address they name; `localhost`
   * names are loopback without a lookup. When a name has several addresses the first one that is allowed wins, in the
   * resolver's order; when none is, the refusal is the first address's. Never throws.
   */
  async decide(host: string, port: number): Promise<ForwardDecision> {
    const problem = hostProblem(host);
    if (problem !== undefined) return deny(null, 'bad_host', `bad host ${JSON.stringify(host.length > 100 ? `${host.slice(0, 100)}...` : host)}: ${problem}`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) return deny(null, 'port', `port ${port} is not in 1-65535`);
    const name = normaliseHost(host);

    const candidates: CompiledRule[] = [];
    let portMiss: CompiledRule | null = null;
    for (const rule of this.rules) {
      if (!hostMatches(rule, name)) continue;
      if (portMatches(rule, port)) candidates.push(rule);
      else portMiss ??= rule;
    }
    if (candidates.length === 0) {
      if (portMiss !== null) return deny(null, 'port', `port ${port} of ${name} is not allowed (${portMiss.name} allows ports ${portMiss.portsText})`);
      return deny(null, 'no_rule', `no rule matches ${name}:${port}`);
    }
    // A deny rule without CIDRs decides for every address: no need to look the name up.
    if (!candidates[0].allow && candidates[0].cidrs === null) return deny(candidates[0].name, 'denied_by_rule', `${name}:${port} is denied by ${candidates[0].name}`);

    let addresses: { address: string; family: number }[];
    // An IP address in any spelling is the address it names: the one matched by `hosts` is the one connected to.
    if (isIP(name) !== 0) addresses = [{ address: name, family: isIP(name) }];
    else if (isLocalhostName(name)) addresses = LOCALHOST_ADDRESSES;
    else {
      const answer = await this.lookup(host);
      if (typeof answer === 'string') return deny(null, 'resolve_failed', `could not resolve ${name}: ${answer}`);
      addresses = answer;
    }

    let first: Denial | null = null;
    for (const entry of addresses) {
      const decision = this.decideAddress(candidates, name, port, entry.address);
      if (decision.allowed) return decision;
      first ??= decision;
    }
    return first ?? deny(null, 'resolve_failed', `${name} has no addresses`);
  }

  private decideAddress(candidates: readonly CompiledRule[], host: string, port: number, resolved: string): ForwardDecision {
    const normal = normaliseAddress(resolved);
    if (normal === null) return deny(null, 'resolve_failed', `the resolver answered ${JSON.stringify(resolved)} for ${host}, not an IP address`);
    const { address, family } = normal;
    const hits = specialHits(address, family);
    let excluded: CompiledRule | null = null;
    for (const rule of candidates) {
      if (!rule.allow) {
        if (denyCidrsMatch(rule, address, family, hits)) return deny(rule.name, 'denied_by_rule', `${host}:${port} (${address}) is denied by ${rule.name}`);
        continue;
      }
      if (rule.cidrs !== null && !rule.cidrs.check(address, family)) continue;
      if (hits.every((hit) => rule.explicit[hit.range]?.check(hit.address, hit.family) === true)) {
        return { allowed: true, rule: rule.name, address, family: family === 'ipv4' ? 4 : 6, host, port };
      }
      excluded ??= rule;
    }
    if (excluded !== null) {
      const names = hits.map((hit) => `${hit.address} is ${SPECIAL_RANGES[hit.range].name} (${SPECIAL_RANGES[hit.range].network}/${SPECIAL_RANGES[hit.range].prefix})`).join('; ');
      return deny(excluded.name, 'special_address', `${host} resolved to a special-purpose address: ${names}; no rule lists it in its cidrs`);
    }
    return deny(null, 'no_rule', `no rule matches ${host}:${port} at ${address}`);
  }

  /** The addresses of `host`, or why there are none. */
  private async lookup(host: string): Promise<{ address: string; family: number }[] | string> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve(`no answer within ${this.resolveTimeout}ms`), this.resolveTimeout);
    });
    try {
      const answer = await Promise.race([this.resolve(host), deadline]);
      if (typeof answer === 'string') return answer;
      return Array.isArray(answer) && answer.length > 0 ? answer : 'no addresses';
    } catch (err) {
      return err instanceof Error ? ((err as NodeJS.ErrnoException).code ?? err.message) : String(err);
    } finally {
      clearTimeout(timer);
    }
  }
}

function deny(rule: string | null, reason: ForwardDenialReason, detail: string): Denial {
  return { allowed: false, rule, reason, detail };
}
