/**
 * Every configuration change of a balancer, one at a time and in order: reloads (file, signal,
 * watch, embedding API, admin API) and the admin API's backend writes. Each one is the file's
 * configuration with the admin API's runtime changes on top, built and committed through the
 * runtime store; one that cannot be applied changes nothing.
 */
import { configReload } from '../core/events.ts';
import { diffConfigs, formatChanges } from '../config/diff.ts';
import { loadConfigFile, validateConfig, type LoadedConfig } from '../config/load.ts';
import { UpstreamConfig, type FulcrumConfig, type FulcrumConfigInput } from '../config/schema.ts';
import type { Logger } from '../observe/logger.ts';
import type { Metrics } from '../observe/metrics.ts';
import type { RuntimeStore } from '../runtime/runtime-store.ts';
import { upstreamIdOf, type Upstream } from '../upstream/upstream.ts';
import { version } from '../version.ts';
import { AdminRequestError } from './errors.ts';
import { persistUpstreams } from './persist.ts';
import { RuntimeChanges, type RuntimeOp } from './runtime-changes.ts';
import { backendStatus, buildStatus } from './status.ts';
import type { BackendStatus, CertificateReloadResult, StatusResponse } from './types.ts';

/** What a reload did: one line per changed area ("pool api: +1 upstream 10.0.0.4:80"). */
export interface ReloadResult {
  changes: string[];
  /** What the new configuration asks that only a restart applies (a moved listener, the admin address, log.format). */
  warnings?: string[];
  /** Runtime changes from the admin API that no longer apply to the new file (their pool is gone, ...). */
  dropped?: string[];
  /** For backend writes: true when the upstream now differs from the file (a restart would lose it). */
  runtime_only?: boolean;
}

/** Where a reload came from (a label of lb_config_reloads_total and the log line). */
export type ReloadSource = 'file' | 'signal' | 'watch' | 'admin' | 'api';

/** A backend write through the admin API: the upstream by URL (or host:port), in `pool` if several have it. */
export interface BackendTarget {
  url: string;
  pool?: string;
}

/** What the admin server asks of a balancer (a Balancer is one). */
export interface AdminApi {
  /** The file the configuration came from, or null. */
  readonly configFile: string | null;
  readonly metrics: Metrics;
  /** Reads the configuration file again and reloads it (throws without a file). */
  reloadFile(source?: ReloadSource): Promise<ReloadResult>;
  /** The configuration in force: the file's, with the admin API's runtime changes applied. */
  config(): FulcrumConfig;
  /** `config` as a reload would run it: with the admin API's runtime changes on top (nothing is applied). */
  withRuntimeChanges(config: FulcrumConfig): FulcrumConfig;
  /** What applying `config` would leave waiting for a restart. */
  restartNotesFor(config: FulcrumConfig): string[];
  /** `/status`: every upstream, pool and listener, and the runtime-only changes. */
  status(): StatusResponse;
  /**
   * Reads every https listener's certificate files again (what a file change, SIGHUP and
   * `POST /certificates/reload` do): changed ones serve new handshakes, open connections keep
   * theirs; a file that cannot be used keeps the certificate loaded before and is reported.
   */
  reloadCertificates(): CertificateReloadResult[];
  /** Orders a new ACME certificate for `domain` now; rejects with the reason (404-like when no listener has that domain). */
  renewCertificate(domain: string): Promise<void>;
  /** Adds an upstream to a pool (through the same validate-then-swap path as a reload). */
  addBackend(target: BackendTarget & { weight?: number; max_connections?: number }, source?: ReloadSource): Promise<ReloadResult & { backend: BackendStatus }>;
  /** Removes an upstream; its requests in flight finish first. */
  removeBackend(target: BackendTarget, source?: ReloadSource): Promise<ReloadResult>;
  /** Changes an upstream's weight, or its enabled and draining state. */
  updateBackend(target: BackendTarget & { weight?: number; enabled?: boolean; draining?: boolean }, source?: ReloadSource): Promise<ReloadResult & { backend: BackendStatus }>;
}

/** A configuration as given (validated, raw input, or loaded from a file), validated if it is not already; throws ConfigError. */
export function toConfig(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig): FulcrumConfig {
  if (input && typeof input === 'object' && 'config' in input && 'source' in input) return (input as LoadedConfig).config;
  return validateConfig(input).config;
}

/** A URL as the admin API takes it: a bare host:port means http://host:port. */
const withScheme = (url: string): string => (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? url : `http://${url}`);

/** What the commands act on besides the runtime store. */
export interface CommandContext {
  store: RuntimeStore;
  /** The file the configuration came from (reloads read it again; admin.persist writes it), or null. */
  configFile: string | null;
  logger: Logger;
  /** What applying `config` would leave waiting for a restart (against what is really bound). */
  restartNotes(config: FulcrumConfig): string[];
  /** The public listeners, as `/status` shows them. */
  listeners(): StatusResponse['listeners'];
  /** The https listeners' certificates, as `/status` shows them. */
  certificates(): StatusResponse['certificates'];
  /** ACME names and their order state, as `/status` shows them (empty without ACME). */
  acme?(): StatusResponse['acme'];
  /** Reads the files a configuration names (certificates, CAs); throws ConfigError when one cannot be used, and the reload is refused. */
  checkFiles?(config: FulcrumConfig, placeOf?: LoadedConfig['placeOf']): void;
}

/** Reloads and backend writes over one runtime store, serialized. */
export class AdminCommands {
  private readonly context: CommandContext;
  /** The configuration as the file (or caller) gave it; the one in force adds the runtime changes. */
  private base: FulcrumConfig;
  private readonly runtimeChanges = new RuntimeChanges();
  private loadedAt = new Date();
  private readonly startedAt = Date.now();
  /** Reloads and API writes apply one at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private stopped = false;

  /** Commands over `context.store`, whose configuration is taken as the file's. */
  constructor(context: CommandContext) {
    this.context = context;
    this.base = context.store.current.config;
  }

  /** Validates `input` (unless loaded already) and applies it with the runtime changes on top (default source: api). */
  reload(input: FulcrumConfig | FulcrumConfigInput | LoadedConfig, source: ReloadSource = 'api'): Promise<ReloadResult> {
    return this.serial(() => this.applyBase(this.orRefused(source, () => toConfig(input)), source));
  }

  /** Reads the configuration file again and applies it (default source: file); 409 without a file. */
  reloadFile(source: ReloadSource = 'file'): Promise<ReloadResult> {
    return this.serial(() => {
      const file = this.context.configFile;
      if (file === null) throw new AdminRequestError(409, 'this balancer was started without a configuration file (demo or embedded): there is nothing to reload from');
      const loaded = this.orRefused(source, () => loadConfigFile(file));
      for (const w of loaded.warnings) this.context.logger.warn(`${file}: ${w}`);
      return this.applyBase(loaded.config, source, loaded.placeOf);
    });
  }

  /** Adds an upstream (weight 1, no connection limit unless given); 400, 404 or 409 when it cannot be. */
  addBackend(target: BackendTarget & { weight?: number; max_connections?: number }, source: ReloadSource = 'admin'): Promise<ReloadResult & { backend: BackendStatus }> {
    return this.serial(() => {
      const { pool, id } = this.locate(target, false);
      const parsed = UpstreamConfig.safeParse({ url: withScheme(target.url), weight: target.weight ?? 1, max_connections: target.max_connections ?? 0 });
      if (!parsed.success) throw new AdminRequestError(400, parsed.error.issues.map((i) => `${i.path.join('.') || 'url'}: ${i.message}`).join('; '));
      if (this.config().pools[pool].upstreams.some((u) => upstreamIdOf(u.url) === id)) throw new AdminRequestError(409, `${id} is already in pool ${pool}`);
      const result = this.applyOp({ action: 'add', pool, id, upstream: parsed.data, at: new Date().toISOString() }, source);
      return { ...result, backend: this.describe(pool, id), runtime_only: this.runtimeChanges.touches(pool, id, this.upstreamOf(pool, id)) };
    });
  }

  /** Removes an upstream (its requests in flight finish); 409 for a pool's only one. */
  removeBackend(target: BackendTarget, source: ReloadSource = 'admin'): Promise<ReloadResult> {
    return this.serial(() => {
      const { pool, id } = this.locate(target, true);
      if (this.config().pools[pool].upstreams.length === 1) throw new AdminRequestError(409, `${id} is the only upstream of pool ${pool}; a pool needs at least one (add another first)`);
      const result = this.applyOp({ action: 'remove', pool, id, at: new Date().toISOString() }, source);
      return { ...result, runtime_only: this.runtimeChanges.touches(pool, id) };
    });
  }

  /** Changes an upstream's weight (a configuration change), or its enabled and draining state (state, at once); 400 for bad values. */
  updateBackend(target: BackendTarget & { weight?: number; enabled?: boolean; draining?: boolean }, source: ReloadSource = 'admin'): Promise<ReloadResult & { backend: BackendStatus }> {
    return this.serial(() => {
      const { pool, id } = this.locate(target, true);
      const { weight, enabled, draining } = target;
      if (weight === undefined && enabled === undefined && draining === undefined) throw new AdminRequestError(400, 'nothing to change: give "weight", "enabled" or "draining"');
      if (weight !== undefined && (typeof weight !== 'number' || !(weight > 0) || weight > 1_000_000)) throw new AdminRequestError(400, `"weight" must be a number above 0 and at most 1000000, got ${typeof weight === 'number' ? String(weight) : JSON.stringify(weight)}`);
      if (enabled !== undefined && typeof enabled !== 'boolean') throw new AdminRequestError(400, `"enabled" must be true or false, got ${JSON.stringify(enabled)}`);
      if (draining !== undefined && typeof draining !== 'boolean') throw new AdminRequestError(400, `"draining" must be true or false, got ${JSON.stringify(draining)}`);
      let changes: string[] = [];
      if (weight !== undefined && weight !== this.upstreamOf(pool, id).weight) changes = this.applyOp({ action: 'weight', pool, id, weight, at: new Date().toISOString() }, source).changes;
      const u = this.upstreamOf(pool, id);
      if (enabled !== undefined && u.enabled !== enabled) {
        u.setEnabled(enabled, `${enabled ? 'enabled' : 'disabled'} through the admin API`);
        if (!enabled) this.runtimeChanges.recordState('disable', u);
        changes.push(`pool ${pool}: ${id} ${enabled ? 'enabled' : 'disabled'}`);
      }
      if (draining !== undefined && u.draining !== draining) {
        u.setDraining(draining, draining ? `drained through the admin API (${u.inFlight} requests in flight finish)` : 'back in rotation through the admin API');
        if (draining) this.runtimeChanges.recordState('drain', u);
        changes.push(`pool ${pool}: ${id} ${draining ? 'draining' : 'no longer draining'}`);
      }
      return { changes, backend: this.describe(pool, id), runtime_only: changes.length > 0 && this.runtimeChanges.touches(pool, id, u) };
    });
  }

  /** `/status`: every upstream, pool and listener, and the runtime-only changes. */
  status(): StatusResponse {
    const config = this.config();
    return buildStatus({
      pools: this.context.store.current.pools,
      listeners: this.context.listeners(),
      certificates: this.context.certificates(),
      acme: this.context.acme?.() ?? [],
      runtimeChanges: this.runtimeChanges,
      configFile: this.context.configFile,
      loadedAt: this.loadedAt,
      persisted: Boolean(config.admin?.persist && this.context.configFile !== null),
      restartNeeded: this.context.restartNotes(config),
      startedAt: this.startedAt,
      version,
    });
  }

  /** `config` with the runtime changes on top, as a reload would run it (nothing is applied). */
  withRuntimeChanges(config: FulcrumConfig): FulcrumConfig {
    return this.runtimeChanges.apply(config, false).config;
  }

  /** Refuses every command from now on (503), queued ones too: after shutdown nothing may start pools again. */
  stop(): void {
    this.stopped = true;
  }

  /** The configuration in force. */
  private config(): FulcrumConfig {
    return this.context.store.current.config;
  }

  private serial<T>(work: () => T): Promise<T> {
    const guarded = (): T => {
      if (this.stopped) throw new AdminRequestError(503, 'the balancer is shutting down');
      return work();
    };
    const next = this.queue.then(guarded, guarded);
    this.queue = next.catch(() => {});
    return next;
  }

  /** Builds and commits `next` (already validated); returns the semantic diff. Throws and keeps the running one on failure. */
  private swap(next: FulcrumConfig): string[] {
    const { store } = this.context;
    const built = store.build(next);
    const changes = formatChanges(diffConfigs(this.config(), next));
    store.commit(built);
    this.loadedAt = new Date();
    // Loud at every reload too, not only at start: encryption without knowing who answers.
    for (const pool of store.current.pools.values()) {
      const warning = pool.tlsWarning();
      if (warning !== null) this.context.logger.warn({ pool: pool.name }, warning);
    }
    return changes;
  }

  /** A configuration that could not be applied: said in the log and counted; the running one stays. */
  /** What `load` returns; when it throws (an invalid configuration), the refusal is said and counted, and the error thrown on. */
  private orRefused<T>(source: ReloadSource, load: () => T): T {
    try {
      return load();
    } catch (err) {
      this.refused(source, err as Error);
      throw err;
    }
  }

  private refused(source: ReloadSource, err: Error): void {
    if (configReload.hasSubscribers) configReload.publish({ ok: false, source, error: err });
    this.context.logger.error({ source, err: err.message }, `reload refused (${source}); the running configuration stays:\n${err.message}`);
  }

  /** A new base configuration (the file's): runtime changes go on top, then swap. */
  private applyBase(nextBase: FulcrumConfig, source: ReloadSource, placeOf?: LoadedConfig['placeOf']): ReloadResult {
    const { logger } = this.context;
    const opsBefore = this.runtimeChanges.snapshot();
    try {
      this.context.checkFiles?.(nextBase, placeOf);
      const { config: next, dropped } = this.runtimeChanges.apply(nextBase);
      for (const d of dropped) logger.info({ source }, `runtime change dropped: ${d}`);
      const changes = this.swap(next);
      const warnings = this.context.restartNotes(next);
      for (const w of warnings) logger.warn({ source }, `restart needed: ${w}`);
      this.base = nextBase;
      if (configReload.hasSubscribers) configReload.publish({ ok: true, source });
      logger.info({ source, changes }, `configuration reloaded (${source}): ${changes.length > 0 ? changes.join('; ') : 'no changes'}`);
      const kept = this.runtimeChanges.list(this.context.store.current.pools);
      if (kept.length > 0) logger.info({ runtime_changes: kept.length }, `${kept.length} runtime change(s) from the admin API stay on top of the file (GET /status lists them)`);
      return { changes, ...(warnings.length > 0 ? { warnings } : {}), ...(dropped.length > 0 ? { dropped } : {}) };
    } catch (err) {
      // Refused: the runtime changes stay as they were (apply() dropped the ones the new file satisfied).
      this.runtimeChanges.restore(opsBefore);
      this.refused(source, err as Error);
      throw err;
    }
  }

  /** Finds the pool and upstream an admin write means; throws a 4xx that says what is wrong. */
  private locate(target: BackendTarget, mustExist: boolean): { pool: string; id: string } {
    if (typeof target.url !== 'string' || target.url === '') throw new AdminRequestError(400, 'missing "url": the upstream, e.g. {"url": "http://10.0.0.4:8080"}');
    let id: string;
    try {
      id = upstreamIdOf(withScheme(target.url));
    } catch {
      throw new AdminRequestError(400, `"url" is not a URL: ${JSON.stringify(target.url)} (expected e.g. "http://10.0.0.4:8080")`);
    }
    const { pools } = this.config();
    const names = Object.keys(pools);
    if (target.pool !== undefined) {
      if (typeof target.pool !== 'string' || !Object.hasOwn(pools, target.pool)) throw new AdminRequestError(404, `no pool named ${JSON.stringify(target.pool)}; pools: ${names.join(', ')}`);
      if (mustExist && !pools[target.pool].upstreams.some((u) => upstreamIdOf(u.url) === id)) throw new AdminRequestError(404, `no upstream ${id} in pool ${target.pool}`);
      return { pool: target.pool, id };
    }
    const holding = names.filter((n) => pools[n].upstreams.some((u) => upstreamIdOf(u.url) === id));
    if (mustExist) {
      if (holding.length === 0) throw new AdminRequestError(404, `no upstream ${id} in any pool (${names.join(', ')})`);
      if (holding.length > 1) throw new AdminRequestError(400, `${id} is in pools ${holding.join(' and ')}: say which with "pool"`);
      return { pool: holding[0], id };
    }
    if (names.length > 1) throw new AdminRequestError(400, `there are ${names.length} pools (${names.join(', ')}): say which with "pool"`);
    return { pool: names[0], id };
  }

  /** Applies one configuration operation (undone if the build fails), then writes it to the file with admin.persist. */
  private applyOp(op: RuntimeOp, source: ReloadSource): ReloadResult {
    const before = this.runtimeChanges.snapshot();
    this.runtimeChanges.record(op);
    let result: ReloadResult;
    try {
      const { config: next } = this.runtimeChanges.apply(this.base);
      result = { changes: this.swap(next) };
    } catch (err) {
      this.runtimeChanges.restore(before);
      throw err;
    }
    if (configReload.hasSubscribers) configReload.publish({ ok: true, source });
    this.persist();
    this.context.logger.info({ source, changes: result.changes }, `admin API: ${result.changes.join('; ') || 'no changes'}`);
    return result;
  }

  /**
   * With admin.persist and a file: writes every pool with runtime changes, not only the one just
   * changed (then none is left behind). Pool by pool, so one that cannot be written (an anchor
   * shared with another pool, a file edited since it was loaded) does not hold the others back.
   */
  private persist(): void {
    const { configFile: file, logger } = this.context;
    const config = this.config();
    if (!config.admin?.persist || file === null) return;
    const touched = [...new Set(this.runtimeChanges.snapshot().map((o) => o.pool))].filter((p) => Object.hasOwn(config.pools, p));
    for (const pool of touched) {
      try {
        persistUpstreams(file, config, [pool], this.base);
        this.base = structuredClone(this.base);
        this.base.pools[pool] = structuredClone(config.pools[pool]);
        this.runtimeChanges.clearOps(pool);
        logger.info({ file, pool }, `wrote the upstreams of pool ${pool} to ${file}`);
      } catch (err) {
        logger.error({ file, pool, err: (err as Error).message }, `could not write pool ${pool} to ${file} (${(err as Error).message}); the change is runtime-only (GET /status lists it)`);
      }
    }
  }

  private upstreamOf(pool: string, id: string): Upstream {
    return this.context.store.current.pools.get(pool)!.upstreams.find((u) => u.id === id)!;
  }

  private describe(pool: string, id: string): BackendStatus {
    return backendStatus(this.context.store.current.pools.get(pool)!, this.upstreamOf(pool, id), this.runtimeChanges);
  }
}
