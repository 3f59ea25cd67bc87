/**
 * The public API: `createBalancer(config)` -> `{ start, reload, close }`. The CLI is a thin
 * layer over this; tests and embedders use it directly. A balancer is its process parts
 * (listeners, the HTTP proxy, connection pools, the admin listener, logs) around a runtime store
 * (src/runtime/) that the admin commands (src/admin/commands.ts) change by build-then-commit.
 */
import './require-node.ts';
import { isDeepStrictEqual } from 'node:util';
import { poolPanic, requestRetry, upstreamState, type PoolPanicEvent, type RequestRetryEvent, type UpstreamStateEvent } from './core/events.ts';
import { formatPath, type LoadedConfig } from './config/load.ts';
import { ConfigError } from './errors.ts';
import { accessLogSettings, type FulcrumConfig, type FulcrumConfigInput } from './config/schema.ts';
import { HttpListener, type ListenerAddress } from './listeners/http-listener.ts';
import { startAccessLog, type AccessLog } from './observe/access-log.ts';
import { createLogger, type Logger } from './observe/logger.ts';
import { HttpProxy } from './proxy/http-proxy.ts';
import { TcpProxy } from './proxy/tcp-proxy.ts';
import { TcpListener } from './listeners/tcp-listener.ts';
import type { Pool } from './upstream/pool.ts';
import { ConnectionPools } from './transport/connection-pools.ts';
import { RuntimeStore } from './runtime/runtime-store.ts';
import { pairListeners, restartNotes } from './config/diff.ts';
import { watchConfigFile } from './config/watch.ts';
import { Metrics } from './observe/metrics.ts';
import { LiveStats } from './observe/live-stats.ts';
import { AdminCommands, toConfig, type AdminApi, type ReloadResult, type ReloadSource } from './admin/commands.ts';
import { AdminServer } from './admin/server.ts';
import { assertTlsFiles } from './tls/check-files.ts';
import { AdminRequestError } from './admin/errors.ts';
import type { AcmeManager } from './tls/acme.ts';

export { loadConfigFile, loadConfigText, validateConfig } from './config/load.ts';
export type { FulcrumConfig, FulcrumConfigInput } from './config/schema.ts';
export { ConfigError, FulcrumError, ErrorCode } from './errors.ts';
export type { ListenerAddress } from './listeners/http-listener.ts';
export { AdminClient, AdminError, type AdminClientOptions } from './admin/client.ts';
export type * from './admin/types.ts';
export type { ReloadResult, ReloadSource, BackendTarget } from './admin/commands.ts';
export { diffConfigs, formatChanges } from './config/diff.ts';

/** Options beyond the configuration. */
export interface BalancerOptions {
  /** A logger to use instead of one built from `config.log`. */
  logger?: Logger;
  /** The file the configuration came from: reloads (SIGHUP, watch, admin API) read it again. */
  configFile?: string;
  /** Reload when the file changes, whatever `reload.watch` says. */
  watch?: boolean;
}

/** A running (or ready to run) Fulcrum; the admin server's view of it is `AdminApi`. */
export interface Balancer extends AdminApi {
  /** Binds every listener (and the admin listener); resolves with the public listeners' addresses. */
  start(): Promise<ListenerAddress[]>;
  /** Validates a new configuration and swaps routes and pools; upstream state carries over. */
  reload(config: FulcrumConfig | FulcrumConfigInput | LoadedConfig, source?: ReloadSource): Promise<ReloadResult>;
  /** Graceful shutdown: stop accepting, finish in-flight requests within the grace period. */
  close(graceMs?: number): Promise<void>;
  /** The bound listener addresses. */
  addresses(): ListenerAddress[];
  /** The admin listener's address, or null when there is none. */
  adminAddress(): ListenerAddress | null;
  /** The pools by name (read their upstreams' state). */
  pools(): ReadonlyMap<string, Pool>;
  readonly logger: Logger;
}

/**
 * A bind that failed, as a ConfigError naming the key and where it was written:
 * `fulcrum.yaml:3:11: listeners[0].port: 0.0.0.0:8080 is already in use ...`. Other errors pass as they are.
 */
function listenError(err: NodeJS.ErrnoException, at: { path: (string | number)[]; host: string; port: number }, placeOf: LoadedConfig['placeOf']): Error {
  const address = `${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`;
  const problems: Record<string, [string, string]> = {
    EADDRINUSE: ['port', `${address} is already in use (by another program, or another Fulcrum): stop it, or choose another port`],
    EACCES: ['port', `no permission to bind ${address} (ports below 1024 need root or CAP_NET_BIND_SERVICE): choose a port from 1024 up`],
    EADDRNOTAVAIL: ['host', `${at.host} is not an address of this machine: use one it has, 0.0.0.0 for all, or 127.0.0.1`],
  };
  const problem = err.code === undefined ? undefined : problems[err.code];
  if (problem === undefined) return err;
  const path = [...at.path, problem[0]];
  const place = placeOf?.(path) ?? { file: '<inline>', line: 0, column: 0, path: formatPath(path), message: '' };
  const unset = place.line === 0 && place.message === '(default)' ? ` (${formatPath(path)} is not set: this is its default)` : '';
  return Object.assign(new ConfigError([{ ...place, message: `${problem[1]}${unset}` }]), { cause: err });
}

/** An access-log file that cannot be opened, as a ConfigError naming `log.access_log.path` and where it was written. */
function accessLogError(err: NodeJS.ErrnoException, placeOf: LoadedConfig['placeOf']): Error {
  if (typeof err.code !== 'string' || err.syscall !== 'open') return err;
  const path = ['log', 'access_log', 'path'];
  const place = placeOf?.(path) ?? { file: '<inline>', line: 0, column: 0, path: formatPath(path), message: '' };
  return Object.assign(new ConfigError([{ ...place, message: `cannot open the access log file: ${err.message}` }]), { cause: err });
}

/** Builds a balancer from a configuration (validated here if it is not already; throws ConfigError). */
export function createBalancer(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig, options: BalancerOptions = {}): Balancer {
  /** The configuration the process started with: what listeners, the admin listener and the log stream really use. */
  const startConfig = toConfig(input);
  /** Where the file set a key, for a listen error that names it (`fulcrum.yaml:3:11: listeners[0].port`). */
  const placeOf = input && typeof input === 'object' && 'placeOf' in input ? (input as LoadedConfig).placeOf : undefined;
  const configFile = options.configFile ?? null;
  const logger = options.logger ?? createLogger(startConfig.log);
  /** Upstream connections: the balancer's, so they outlive reloads and API writes. */
  const connections = new ConnectionPools();
  const store = new RuntimeStore(startConfig, connections, logger);
  const proxy = new HttpProxy({ router: store.current.router }, logger);
  // The first runtime is committed by the store's constructor: the proxy learns its grace period here.
  proxy.onCommit(store.current.pools, startConfig.shutdown.grace_period);
  // Certificates and other TLS files are read before anything starts: an unusable one is a config error naming its key.
  assertTlsFiles(startConfig, placeOf);
  /** The TCP exchange core of `protocol: tcp` listeners (its connections outlive reloads, like tunnels). */
  const tcpProxy = new TcpProxy(logger);
  tcpProxy.onCommit(store.current.pools, startConfig.shutdown.grace_period);
  /** Every listener, in the configuration's order (what reloads pair entries with). */
  const listeners: (HttpListener | TcpListener)[] = startConfig.listeners.map((l) => (l.protocol === 'tcp' ? new TcpListener(l, tcpProxy, () => store.current.pools, logger) : new HttpListener(l, proxy, logger)));
  const httpListeners = listeners.filter((l): l is HttpListener => l instanceof HttpListener);
  const tcpListeners = listeners.filter((l): l is TcpListener => l instanceof TcpListener);
  tcpProxy.refusedProxy = (name) => tcpListeners.find((l) => l.info.name === name)?.gate.refuse('untrusted');
  const metrics = new Metrics({
    pools: () => store.current.pools,
    stores: () => store.current.stores,
    listeners: () => httpListeners.map((l) => ({ name: l.info.name, open: l.openConnections, refused: l.refusedConnections, malformed: l.malformed, http2: l.http2.stats, proxyProtocol: l.gate })),
    tcpListeners: () => tcpListeners.map((l) => ({ name: l.info.name, open: l.openConnections, refused: l.refusedConnections, proxyProtocol: l.gate, passthroughRefused: l.passthroughRefused, passthroughRouted: l.passthroughRouted })),
    tcpCarrier: tcpProxy,
    routes: () => store.current.router.routes.map((r) => r.name),
    carrier: proxy,
    accessLogDropped: () => accessLogDropped,
    tls: () =>
      httpListeners.flatMap((l) =>
        l.tls === null
          ? []
          : [{ listener: l.info.name, certificates: l.tls.certificates().map((c) => ({ names: c.names, source: c.source, notAfter: Date.parse(c.not_after) })), handshakes: l.tls.versions, failures: l.tls.failures }],
      ),
  });
  for (const l of httpListeners) l.serveMetrics(metrics);
  /** ACME HTTP-01 key authorizations by token, answered on every http listener. */
  const acmeTokens = new Map<string, string>();
  for (const l of httpListeners) if (l.tls === null) l.serveAcmeChallenges(acmeTokens);
  /** Listeners whose tls.acme lists `domain`. */
  const acmeListeners = (domain: string): HttpListener[] => httpListeners.filter((l) => l.tls !== null && l.settings.tls?.acme?.domains.some((d) => d.toLowerCase() === domain.toLowerCase()));
  let acme: AcmeManager | null = null;
  /** Starts the ACME manager when a listener wants ACME certificates: stored ones are installed before this resolves; orders run on. */
  const startAcme = async (config: FulcrumConfig): Promise<void> => {
    const seen = new Set<string>();
    const orders: { domain: string; challenge: 'http-01' | 'tls-alpn-01' }[] = [];
    for (const l of config.listeners) {
      for (const domain of l.tls?.acme?.domains ?? []) {
        if (seen.has(domain.toLowerCase())) continue;
        seen.add(domain.toLowerCase());
        orders.push({ domain: domain.toLowerCase(), challenge: l.tls!.acme!.challenge });
      }
    }
    if (config.acme === undefined || orders.length === 0) return;
    // Loaded only when used: acme-client and its crypto cost memory nobody else needs.
    const { AcmeManager: Manager } = await import('./tls/acme.ts');
    acme = new Manager(config.acme, orders, {
      install: (domain, pair) => {
        for (const l of acmeListeners(domain)) l.tls!.install(domain, pair);
      },
      alpnChallenge: (domain, pair) => {
        for (const l of acmeListeners(domain)) l.tls!.setAlpnChallenge(domain, pair);
      },
      httpChallenge: (token, keyAuthorization) => {
        if (keyAuthorization === null) acmeTokens.delete(token);
        else acmeTokens.set(token, keyAuthorization);
      },
    }, logger);
    await acme.start();
  };
  let live: LiveStats | null = null;
  let admin: AdminServer | null = null;
  let stopWatch: (() => void) | null = null;
  let accessLog: AccessLog | null = null;
  /** Access-log lines dropped by every access log this balancer ran (lb_access_log_dropped_total). */
  let accessLogDropped = 0;
  let reopenOnSignal = false;
  const reopenAccessLog = (): void => accessLog?.reopen();
  /**
   * Starts, switches (format, file, batching) or stops the access log: a reload applies it at
   * once. The new one is opened before the old one stops, so a file that cannot be opened
   * throws and leaves the access log as it was. SIGUSR1 reopens a file (logrotate).
   */
  const applyAccessLog = (value: FulcrumConfig['log']['access_log']): void => {
    const settings = accessLogSettings(value);
    if (settings === null || accessLog === null || !isDeepStrictEqual(settings, accessLog.settings)) {
      const next = settings === null ? null : startAccessLog(logger, settings, { carrier: proxy, tcpCarrier: tcpProxy, onDrop: (lines) => (accessLogDropped += lines) });
      void accessLog?.stop();
      accessLog = next;
    }
    const wantSignal = accessLog?.settings.path !== undefined;
    if (wantSignal !== reopenOnSignal) process[wantSignal ? 'on' : 'off']('SIGUSR1', reopenAccessLog);
    reopenOnSignal = wantSignal;
  };
  let started = false;
  let closing: Promise<void> | null = null;

  const onState = (message: unknown): void => {
    const c = message as UpstreamStateEvent;
    // Channels are process-wide: only this balancer's upstreams are logged here.
    if (![...store.current.pools.values()].some((p) => p.upstreams.some((u) => u === c.upstream))) return;
    // Losing an upstream is a warning an operator should see; getting it back is news.
    const worse = (c.field === 'health' && c.to === 'unhealthy') || (c.field === 'ejected' && c.to === true) || (c.field === 'circuit' && c.to === 'open');
    logger[worse ? 'warn' : 'info'](
      { pool: c.pool, upstream: c.upstream.id, field: c.field, from: c.from, to: c.to, reason: c.reason },
      `upstream ${c.upstream.id} in pool ${c.pool}: ${c.field} ${c.from} -> ${c.to} (${c.reason})`,
    );
  };

  const onPanic = (message: unknown): void => {
    const p = message as PoolPanicEvent;
    if (store.current.pools.get(p.pool)?.upstreams !== p.upstreams) return;
    const fields = { pool: p.pool, panic: p.panic, available: p.available, allowed: p.allowed, threshold: p.threshold };
    if (p.panic) {
      logger.warn(fields, `pool ${p.pool} in panic mode: ${p.available} of ${p.allowed} upstreams available (under panic_threshold_percent ${p.threshold}), so requests go to all ${p.allowed}, healthy or not`);
    } else logger.info(fields, `pool ${p.pool} out of panic mode: ${p.available} of ${p.allowed} upstreams available`);
  };

  const onRetry = (message: unknown): void => {
    const { ctx, upstream, reason } = message as RequestRetryEvent;
    if (ctx.carrier !== proxy) return;
    logger.info({ request_id: ctx.requestIdForUpstream ?? ctx.id, upstream: upstream.id, attempt: ctx.attempts, reason }, `retrying ${ctx.req.method} ${ctx.upstreamPath} after ${upstream.id} failed (${reason})`);
  };

  /** What is really bound (listeners, admin): what restart notes and listener updates compare with. */
  const bound = () => ({
    listeners: listeners.map((l) => l.address() ?? { host: l.settings.host, port: l.settings.port }),
    admin: admin?.address() ?? null,
  });
  /** What waits for a restart: `next` against the start configuration and what is bound. */
  const pendingRestart = (next: FulcrumConfig): string[] => restartNotes(startConfig, next, bound());
  const commands = new AdminCommands({
    store,
    configFile,
    logger,
    restartNotes: pendingRestart,
    checkFiles: assertTlsFiles,
    listeners: () =>
      listeners.map((l) =>
        l instanceof HttpListener
          ? { name: l.info.name, protocol: l.settings.protocol, url: l.address()?.url ?? '', open_connections: l.openConnections, refused_connections: l.refusedConnections, http2_sessions: l.http2.stats.sessions, http2_streams: l.http2.stats.streams }
          : { name: l.info.name, protocol: 'tcp' as const, url: l.address()?.url ?? '', open_connections: l.openConnections, refused_connections: l.refusedConnections },
      ),
    certificates: () => httpListeners.flatMap((l) => l.tls?.certificates() ?? []),
    acme: () => acme?.status() ?? [],
  });

  store.onCommit(({ config: next, router, pools }) => {
    proxy.runtime = { router };
    proxy.onCommit(pools, next.shutdown.grace_period);
    tcpProxy.onCommit(pools, next.shutdown.grace_period);
    // Listeners keep their sockets and take new firewall, limits and timeouts: each running listener
    // the entry paired with it (one to one); a new or moved address waits for a restart.
    const pairs = pairListeners(startConfig.listeners, next.listeners, bound().listeners);
    pairs.forEach((j, i) => {
      // A listener whose protocol changed keeps its old settings until a restart (a restart note says so).
      if (j >= 0 && (next.listeners[i].protocol === 'tcp') === (listeners[j] instanceof TcpListener)) listeners[j].update(next.listeners[i]);
    });
    if (admin !== null && next.admin !== undefined) admin.update(next.admin);
    // Log level and the access log (on, off, its format, file and batching) switch at once; log.format
    // (a different stream) needs a restart. An embedder's own logger is theirs to configure.
    if (options.logger === undefined && logger.level !== next.log.level) logger.level = next.log.level;
    if (started && !closing) {
      try {
        applyAccessLog(next.log.access_log);
      } catch (err) {
        logger.error({ error: (err as NodeJS.ErrnoException).code }, `access log: ${(err as Error).message}; the access log stays as it was`);
      }
    }
  });

  const balancer: Balancer = {
    logger,
    metrics,
    configFile,
    async start() {
      started = true;
      const config = store.current.config;
      try {
        applyAccessLog(config.log.access_log);
      } catch (err) {
        throw accessLogError(err as NodeJS.ErrnoException, placeOf);
      }
      upstreamState.subscribe(onState);
      poolPanic.subscribe(onPanic);
      requestRetry.subscribe(onRetry);
      const addresses: ListenerAddress[] = [];
      let binding: { path: (string | number)[]; host: string; port: number } | null = null;
      try {
        for (const [i, l] of listeners.entries()) {
          binding = { path: ['listeners', i], host: l.settings.host, port: l.settings.port };
          addresses.push(await l.listen());
        }
        if (config.admin !== undefined) {
          binding = { path: ['admin'], host: config.admin.host, port: config.admin.port };
          live = new LiveStats(() => store.current.pools, { tcpCarrier: tcpProxy });
          admin = new AdminServer(config.admin, { balancer, live, logger });
          await admin.listen();
        }
      } catch (err) {
        await Promise.all(listeners.map((l) => l.drain(0)));
        await admin?.close();
        applyAccessLog(false);
        throw binding ? listenError(err as NodeJS.ErrnoException, binding, placeOf) : err;
      }
      try {
        await startAcme(config);
      } catch (err) {
        await Promise.all(listeners.map((l) => l.drain(0)));
        await admin?.close();
        applyAccessLog(false);
        throw err;
      }
      live?.start();
      store.start();
      for (const a of addresses) logger.info({ listener: a.name, url: a.url }, `listening on ${a.url}`);
      for (const pool of store.current.pools.values()) {
        const warning = pool.tlsWarning();
        if (warning !== null) logger.warn({ pool: pool.name }, warning);
        logger.info({ pool: pool.name, policy: pool.policyFactory.name, upstreams: pool.upstreams.map((u) => u.id) }, `pool ${pool.name}: ${pool.upstreams.length} upstream${pool.upstreams.length === 1 ? "" : "s"}, ${pool.policyFactory.name}`);
      }
      if (configFile !== null && (options.watch || config.reload.watch)) {
        stopWatch = watchConfigFile(configFile, config.reload.debounce, () => void commands.reloadFile('watch').catch(() => {}), logger);
        logger.info({ file: configFile }, `watching ${configFile}: saving it reloads the configuration`);
      }
      return addresses;
    },
    reload: (next, source) => commands.reload(next, source),
    reloadFile: (source) => commands.reloadFile(source),
    addBackend: (target, source) => commands.addBackend(target, source),
    removeBackend: (target, source) => commands.removeBackend(target, source),
    updateBackend: (target, source) => commands.updateBackend(target, source),
    status: () => commands.status(),
    reloadCertificates: () => httpListeners.flatMap((l) => (l.tls === null ? [] : [l.tls.reloadCertificates()])),
    async renewCertificate(domain) {
      if (acme === null || acmeListeners(domain).length === 0) throw new AdminRequestError(404, `no listener gets an ACME certificate for ${JSON.stringify(domain)} (tls.acme.domains)`);
      try {
        await acme.renew(domain.toLowerCase());
      } catch (err) {
        // The CA refused or did not answer: a gateway failure, said with the CA's reason and the stable code.
        const code = (err as { code?: string }).code;
        throw new AdminRequestError(502, `renewing ${domain} failed${code !== undefined ? ` (${code})` : ''}: ${(err as Error).message}; the certificate in use stays`);
      }
    },
    close(graceMs = store.current.config.shutdown.grace_period) {
      closing ??= (async () => {
        commands.stop();
        await acme?.stop();
        proxy.shutdown(graceMs);
        stopWatch?.();
        await Promise.all([...listeners.map((l) => l.drain(graceMs)), tcpProxy.shutdown(graceMs), admin?.close()]);
        // The grace period is over: tunnels the listeners did not already cut close now.
        await proxy.closeTunnels();
        live?.stop();
        await store.close();
        await connections.close();
        const lastAccessLog = accessLog;
        applyAccessLog(false);
        await lastAccessLog?.stop();
        metrics.close();
        upstreamState.unsubscribe(onState);
        poolPanic.unsubscribe(onPanic);
        requestRetry.unsubscribe(onRetry);
        logger.flush();
      })();
      return closing;
    },
    addresses: () => listeners.map((l) => l.address()).filter((a): a is ListenerAddress => a !== null),
    adminAddress: () => admin?.address() ?? null,
    pools: () => store.current.pools,
    config: () => store.current.config,
    withRuntimeChanges: (next) => commands.withRuntimeChanges(next),
    restartNotesFor: pendingRestart,
  };
  return balancer;
}
