/**
 * One configuration's runtime: routes, pools, rate-limit stores and route guards, built
 * together off to the side (nothing running is touched) and committed together by the
 * RuntimeStore.
 */
import type { FulcrumConfig, RouteSettings } from '../config/schema.ts';
import type { Closable, RequestGuard } from '../core/pipeline.ts';
import { Firewall, firewallGuard } from '../middleware/firewall.ts';
import { createRateLimitGuard, createRateLimitStores, type RateLimitStores } from '../middleware/rate-limit.ts';
import type { Logger } from '../observe/logger.ts';
import { Router } from '../router/router.ts';
import type { ConnectionPools } from '../transport/connection-pools.ts';
import { Pool } from '../upstream/pool.ts';
import { upstreamIdOf, type Upstream } from '../upstream/upstream.ts';

/** Routes, pools and rate-limit stores of one configuration. */
export interface Runtime {
  /** The configuration it was built from. */
  readonly config: FulcrumConfig;
  readonly router: Router;
  readonly pools: ReadonlyMap<string, Pool>;
  readonly stores: RateLimitStores & Closable;
  /** Route guards by route name, kept while routes and rate_limit stay as they are. */
  readonly guards: ReadonlyMap<string, RequestGuard[]>;
  /** routes and rate_limit as JSON: equal means the guards (and their buckets) can be kept. */
  readonly guardKey: string;
}

/**
 * The pools of `config`. A pool whose settings did not change is the running one, as it is (its
 * sockets, timers and state); a changed or new one is built around the running Upstream objects
 * of the addresses it keeps, so their state carries over once it is adopted.
 */
function buildPools(config: FulcrumConfig, previous: ReadonlyMap<string, Pool> | null, connections: ConnectionPools): Map<string, Pool> {
  const pools = new Map<string, Pool>();
  // Upstreams of pools that are gone (a renamed pool, most often) go to new pools that list the same address.
  const orphans = new Map<string, Upstream>();
  if (previous) for (const [name, p] of previous) if (!Object.hasOwn(config.pools, name)) for (const u of p.upstreams) if (!orphans.has(u.id)) orphans.set(u.id, u);
  for (const [name, settings] of Object.entries(config.pools)) {
    const old = previous?.get(name);
    // Kept as it is unless its settings changed, or files its TLS settings name (a renewed client certificate, a CA) did.
    if (old && JSON.stringify(old.settings) === JSON.stringify(settings) && !old.tlsFilesChanged()) pools.set(name, old);
    else if (old) pools.set(name, new Pool(name, settings, connections, new Map(old.upstreams.map((u) => [u.id, u]))));
    else {
      const lent = new Map<string, Upstream>();
      for (const u of settings.upstreams) {
        const id = upstreamIdOf(u.url);
        const orphan = orphans.get(id);
        if (orphan !== undefined) {
          lent.set(id, orphan);
          orphans.delete(id);
        }
      }
      pools.set(name, new Pool(name, settings, connections, lent));
    }
  }
  return pools;
}

/** The guards of one route: its firewall, then its rate limits. */
function routeGuards(route: RouteSettings, name: string, stores: RateLimitStores): RequestGuard[] {
  const guards: RequestGuard[] = [];
  if (route.firewall) guards.push(firewallGuard(new Firewall(route.firewall), 'route'));
  for (const limit of route.rate_limits) guards.push(createRateLimitGuard(limit, name, stores));
  return guards;
}

/**
 * The runtime of `config`, next to `previous` (the running one, or null at first): nothing of
 * `previous` changes. When routes and rate_limit did not change (a backend added through the
 * API, a timeout changed), its rate-limit stores and route guards are kept, so token buckets do
 * not start over. Throws what a pool or a guard throws (an address listed twice, ...).
 */
export function buildRuntime(config: FulcrumConfig, previous: Runtime | null, connections: ConnectionPools, logger: Logger): Runtime {
  const pools = buildPools(config, previous?.pools ?? null, connections);
  const guardKey = JSON.stringify([config.routes, config.rate_limit]);
  const keep = previous !== null && previous.guardKey === guardKey;
  const stores = keep ? previous.stores : createRateLimitStores(config.rate_limit, logger);
  const guards = new Map<string, RequestGuard[]>();
  try {
    const router = new Router(config.routes, pools, (route, name) => {
      const g = (keep ? previous.guards.get(name) : undefined) ?? routeGuards(route, name, stores);
      guards.set(name, g);
      return g;
    });
    return { config, router, pools, stores, guards, guardKey };
  } catch (err) {
    // Stores of this build only (a Redis link a guard opened): the running ones stay open.
    if (!keep) void stores.close();
    throw err;
  }
}
