/**
 * The public API: `createBalancer(config)` -> `{ start, reload, close }`. The CLI is a thin
 * layer over this; tests and embedders use it directly.
 */
import { configReload, requestRetry, upstreamState, type RequestRetryEvent, type UpstreamStateEvent } from './core/events.ts';
import { validateConfig, type LoadedConfig } from './config/load.ts';
import type { FulcrumConfig, FulcrumConfigInput } from './config/schema.ts';
import { HttpListener, type ListenerAddress } from './listeners/http-listener.ts';
import { startAccessLog } from './observe/access-log.ts';
import { createLogger, type Logger } from './observe/logger.ts';
import { HttpProxy } from './proxy/http-proxy.ts';
import { Router } from './router/router.ts';
import { Pool } from './upstream/pool.ts';
import type { RouteSettings } from './config/schema.ts';
import type { Closable, RequestGuard } from './core/pipeline.ts';
import { Firewall, firewallGuard } from './middleware/firewall.ts';
import { createRateLimitGuard, createRateLimitStores, type RateLimitStores } from './middleware/rate-limit.ts';
import type { Upstream } from './upstream/upstream.ts';

export { loadConfigFile, loadConfigText, validateConfig } from './config/load.ts';
export type { FulcrumConfig, FulcrumConfigInput } from './config/schema.ts';
export { ConfigError, FulcrumError, ErrorCode } from './errors.ts';
export type { ListenerAddress } from './listeners/http-listener.ts';

/** Options beyond the configuration. */
export interface BalancerOptions {
  /** A logger to use instead of one built from `config.log`. */
  logger?: Logger;
}

/** A running (or ready to run) Fulcrum. */
export interface Balancer {
  /** Binds every listener; resolves with their addresses. */
  start(): Promise<ListenerAddress[]>;
  /** Validates a new configuration and swaps routes and pools; upstream state carries over. */
  reload(config: FulcrumConfig | FulcrumConfigInput | LoadedConfig): Promise<void>;
  /** Graceful shutdown: stop accepting, finish in-flight requests within the grace period. */
  close(graceMs?: number): Promise<void>;
  /** The bound listener addresses. */
  addresses(): ListenerAddress[];
  /** The pools by name (read their upstreams' state). */
  pools(): ReadonlyMap<string, Pool>;
  readonly logger: Logger;
}

function toConfig(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig): FulcrumConfig {
  if (input && typeof input === 'object' && 'config' in input && 'source' in input) return (input as LoadedConfig).config;
  return validateConfig(input).config;
}

function buildPools(config: FulcrumConfig, previous: ReadonlyMap<string, Pool> | null): Map<string, Pool> {
  const oldUpstreams = new Map<string, Upstream>();
  if (previous) for (const pool of previous.values()) for (const u of pool.upstreams) oldUpstreams.set(u.id, u);
  const pools = new Map<string, Pool>();
  for (const [name, settings] of Object.entries(config.pools)) pools.set(name, new Pool(name, settings, oldUpstreams));
  for (const pool of pools.values()) if (pool.settings.backup) pool.backup = pools.get(pool.settings.backup) ?? null;
  return pools;
}

/** The guards of one route: its firewall, then its rate limits. */
function routeGuards(route: RouteSettings, name: string, stores: RateLimitStores): RequestGuard[] {
  const guards: RequestGuard[] = [];
  if (route.firewall) guards.push(firewallGuard(new Firewall(route.firewall), 'route'));
  for (const limit of route.rate_limits) guards.push(createRateLimitGuard(limit, name, stores));
  return guards;
}

/** Routes, pools and rate-limit stores of one configuration: built together, swapped together. */
interface Runtime {
  router: Router;
  pools: Map<string, Pool>;
  stores: RateLimitStores & Closable;
}

function buildRuntime(config: FulcrumConfig, previous: ReadonlyMap<string, Pool> | null, logger: Logger): Runtime {
  const pools = buildPools(config, previous);
  const stores = createRateLimitStores(config.rate_limit, logger);
  const router = new Router(config.routes, pools, (route, name) => routeGuards(route, name, stores));
  return { router, pools, stores };
}

/** Builds a balancer from a configuration (validated here if it is not already). */
export function createBalancer(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig, options: BalancerOptions = {}): Balancer {
  let config = toConfig(input);
  const logger = options.logger ?? createLogger(config.log);
  let runtime = buildRuntime(config, null, logger);
  let pools = runtime.pools;
  const proxy = new HttpProxy({ router: runtime.router });
  const listeners = config.listeners.map((l) => new HttpListener(l, proxy, logger));
  let stopAccessLog: (() => void) | null = null;
  let closing: Promise<void> | null = null;
  const onState = (message: unknown): void => {
    const c = message as UpstreamStateEvent;
    // Losing an upstream is a warning an operator should see; getting it back is news.
    const worse = (c.field === 'health' && c.to === 'unhealthy') || (c.field === 'ejected' && c.to === true) || (c.field === 'circuit' && c.to === 'open');
    logger[worse ? 'warn' : 'info'](
      { pool: c.pool, upstream: c.upstream.id, field: c.field, from: c.from, to: c.to, reason: c.reason },
      `upstream ${c.upstream.id} in pool ${c.pool}: ${c.field} ${c.from} -> ${c.to} (${c.reason})`,
    );
  };

  const onRetry = (message: unknown): void => {
    const { ctx, upstream, reason } = message as RequestRetryEvent;
    logger.info({ request_id: ctx.requestIdForUpstream ?? ctx.id, upstream: upstream.id, attempt: ctx.attempts, reason }, `retrying ${ctx.req.method} ${ctx.upstreamPath} after ${upstream.id} failed (${reason})`);
  };

  return {
    logger,
    async start() {
      if (config.log.access_log) stopAccessLog = startAccessLog(logger);
      upstreamState.subscribe(onState);
      requestRetry.subscribe(onRetry);
      const bound: ListenerAddress[] = [];
      try {
        for (const l of listeners) bound.push(await l.listen());
      } catch (err) {
        await Promise.all(listeners.map((l) => l.drain(0)));
        throw err;
      }
      for (const pool of pools.values()) pool.start();
      for (const a of bound) logger.info({ listener: a.name, url: a.url }, `listening on ${a.url}`);
      for (const pool of pools.values()) {
        logger.info({ pool: pool.name, policy: pool.policyFactory.name, upstreams: pool.upstreams.map((u) => u.id) }, `pool ${pool.name}: ${pool.upstreams.length} upstreams, ${pool.policyFactory.name}`);
      }
      return bound;
    },
    async reload(next) {
      try {
        const nextConfig = toConfig(next);
        const built = buildRuntime(nextConfig, pools, logger);
        const old = runtime;
        for (const pool of built.pools.values()) pool.start();
        proxy.runtime = { router: built.router };
        runtime = built;
        pools = built.pools;
        config = nextConfig;
        // Old pools finish the requests they carry, then close their sockets.
        void Promise.all([...old.pools.values()].map((p) => p.close()));
        void old.stores.close();
        // Listeners keep their sockets: same address, new firewall, limits and timeouts; a new address needs a restart.
        const unmatched: string[] = [];
        for (const settings of nextConfig.listeners) {
          const current = listeners.find((l) => l.settings.host === settings.host && (l.settings.port === settings.port || l.address()?.port === settings.port));
          if (current) current.update(settings);
          else unmatched.push(`${settings.host}:${settings.port}`);
        }
        if (unmatched.length > 0 || nextConfig.listeners.length !== listeners.length) {
          logger.warn({ listeners: unmatched }, 'added or moved listeners take effect on restart; the others were reloaded');
        }
        if (configReload.hasSubscribers) configReload.publish({ ok: true, source: 'reload' });
        logger.info({ pools: [...pools.keys()] }, 'configuration reloaded');
      } catch (err) {
        if (configReload.hasSubscribers) configReload.publish({ ok: false, source: 'reload', error: err as Error });
        throw err;
      }
    },
    close(graceMs = config.shutdown.grace_period) {
      closing ??= (async () => {
        proxy.draining = true;
        await Promise.all(listeners.map((l) => l.drain(graceMs)));
        await Promise.all([...pools.values()].map((p) => p.close()));
        await runtime.stores.close();
        stopAccessLog?.();
        upstreamState.unsubscribe(onState);
        requestRetry.unsubscribe(onRetry);
        logger.flush();
      })();
      return closing;
    },
    addresses: () => listeners.map((l) => l.address()).filter((a): a is ListenerAddress => a !== null),
    pools: () => pools,
  };
}
