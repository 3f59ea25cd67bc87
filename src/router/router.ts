/**
 * Host and path-prefix routing. Routes are compiled once per config into an ordered list:
 * exact hosts, then wildcard hosts, then host-less routes, each by longest prefix first;
 * the first match wins. No route for the path: 404; no route for the host at all: 421.
 * Paths are matched in their normalised form (`normalizePath`), prefixes too, so a prefix
 * written as `/%7Euser` matches `/~user`; what is forwarded is each route's choice.
 */
import type { Pool } from '../upstream/pool.ts';
import type { RouteSettings } from '../config/schema.ts';
import { inPhaseOrder, type RequestGuard } from '../core/pipeline.ts';
import { forwardAsSent, normalizePath, type PathForwarding } from '../proxy/request-target.ts';
import { ForwardProxy } from '../forward/forward-proxy.ts';

/** A route ready for matching. */
export interface CompiledRoute {
  name: string;
  /** Lowercase exact hosts; null matches any host. */
  hosts: ReadonlySet<string> | null;
  /** Lowercase `.example.com` suffixes from `*.example.com`. */
  suffixes: readonly string[];
  /** Normalised, without a trailing slash. */
  pathPrefix: string;
  /** What the upstream is sent as path (routes[].path). */
  forwarding: PathForwarding;
  /** The pool requests go to; null for a forward-proxy route (`forward` is set instead). */
  pool: Pool | null;
  /** A `/forward?url=` route's forward proxy (its rules and timeouts), else null. */
  forward: ForwardProxy | null;
  /** 0 exact host, 1 wildcard host, 2 any host: the sort key ahead of prefix length. */
  rank: number;
  /** The route's own guards (firewall, rate limits), in phase order. */
  guards: readonly RequestGuard[];
  /** Listener guards followed by the route's, per listener, built on first use. */
  pipelines: Map<object, readonly RequestGuard[]>;
}

/** What a request matched: a route, or why none. */
export type RouteMatch = CompiledRoute | 'no-route' | 'foreign-host';

/** Compiled routes of one configuration. */
export class Router {
  readonly routes: readonly CompiledRoute[];
  private readonly anyHost: boolean;

  constructor(settings: readonly RouteSettings[], pools: ReadonlyMap<string, Pool>, guardsFor: (route: RouteSettings, name: string) => RequestGuard[] = () => []) {
    const routes: CompiledRoute[] = settings.map((s, i) => {
      const list = s.host === undefined ? null : (Array.isArray(s.host) ? s.host : [s.host]).map((h) => (h.startsWith('*.') ? h.toLowerCase() : hostOnly(h)));
      const hosts = list ? new Set(list.filter((h) => !h.startsWith('*.'))) : null;
      const suffixes = list ? list.filter((h) => h.startsWith('*.')).map((h) => h.slice(1)) : [];
      const rank = list === null ? 2 : hosts && hosts.size > 0 ? 0 : 1;
      const name = s.name ?? `route-${i}`;
      const forwarding: PathForwarding = s.path === undefined ? forwardAsSent : { normalized: s.path.forward === 'normalized', encodedSlashes: s.path.encoded_slashes };
      // The config loader makes sure a route names a pool or is a forward proxy (never both).
      const forward = s.forward_proxy === undefined ? null : new ForwardProxy(s.forward_proxy);
      const pool = forward === null ? pools.get(s.pool!)! : null;
      return { name, hosts, suffixes, pathPrefix: compilePrefix(s.path_prefix), forwarding, pool, forward, rank, guards: inPhaseOrder(guardsFor(s, name)), pipelines: new Map() };
    });
    // No routes: everything goes to the one pool that is not another's backup (by name: backup links are set at commit).
    if (routes.length === 0) {
      // tcp pools take connections of tcp listeners, never HTTP requests.
      const all = [...pools.values()].filter((p) => p.settings.protocol !== 'tcp');
      const primaries = all.filter((p) => !all.some((o) => o !== p && o.settings.backup === p.name));
      if (primaries.length === 1) routes.push({ name: 'default', hosts: null, suffixes: [], pathPrefix: '', forwarding: forwardAsSent, pool: primaries[0], forward: null, rank: 2, guards: [], pipelines: new Map() });
    }
    routes.sort((a, b) => a.rank - b.rank || b.pathPrefix.length - a.pathPrefix.length);
    this.routes = routes;

    this.anyHost = routes.some((r) => r.hosts === null);
  }

  /** The route for a Host header value and a normalised path (`ParsedTarget.path`, a query may follow). */
  match(hostHeader: string | undefined, url: string): RouteMatch {
    const host = hostHeader === undefined ? '' : hostOnly(hostHeader);
    let hostMatched = this.anyHost;
    for (const route of this.routes) {
      if (route.hosts !== null && !matchesHost(route, host)) continue;
      hostMatched = true;
      if (matchesPrefix(route.pathPrefix, url)) return route;
    }
    return hostMatched ? 'no-route' : 'foreign-host';
  }
}

function matchesHost(route: CompiledRoute, host: string): boolean {
  if (route.hosts!.has(host)) return true;
  for (const suffix of route.suffixes) if (host.length > suffix.length && host.endsWith(suffix)) return true;
  return false;
}

/** `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`. The prefix is stored without a trailing slash. */
function matchesPrefix(prefix: string, url: string): boolean {
  if (prefix === '') return true;
  if (!url.startsWith(prefix)) return false;
  const next = url.charCodeAt(prefix.length);
  return Number.isNaN(next) || next === 47 /* / */ || next === 63 /* ? */;
}

/** A configured prefix as paths are matched: normalised, without a trailing slash. */
export function compilePrefix(prefix: string): string {
  const normal = normalizePath(prefix);
  // The schema refuses prefixes that do not normalise; kept as written for a Router built by hand.
  const p = normal === null || normal.charCodeAt(0) === 0 ? prefix : normal;
  return p.endsWith('/') ? p.slice(0, -1) : p;
}

/** The guards a request on this route through this listener passes, in phase order (built once per pair). */
export function pipelineFor(route: CompiledRoute, listenerKey: object, listenerGuards: readonly RequestGuard[]): readonly RequestGuard[] {
  let list = route.pipelines.get(listenerKey);
  if (list === undefined) {
    list = inPhaseOrder([...listenerGuards, ...route.guards]);
    route.pipelines.set(listenerKey, list);
  }
  return list;
}

/**
 * The guards of a request that must pass the rules of two routes: its own and the one a `..`
 * in its path leaves (`ParsedTarget.unresolvedPath`). Built per request: such paths are rare.
 */
export function pipelineWith(route: CompiledRoute, other: CompiledRoute, listenerGuards: readonly RequestGuard[]): readonly RequestGuard[] {
  return inPhaseOrder([...listenerGuards, ...route.guards, ...other.guards]);
}

/** The host part of a Host header, lowercase, without port or IPv6 brackets' port. */
export function hostOnly(value: string): string {
  if (value.startsWith('[')) {
    const end = value.indexOf(']');
    return (end === -1 ? value : value.slice(0, end + 1)).toLowerCase();
  }
  const colon = value.indexOf(':');
  return (colon === -1 ? value : value.slice(0, colon)).toLowerCase();
}
