/**
 * Automatic certificates (ACME, RFC 8555) for the names HTTPS listeners serve: the manager
 * installs what the storage holds, orders what is missing through acme-client (HTTP-01 answered
 * by Fulcrum's HTTP listeners, TLS-ALPN-01 by its HTTPS listeners, both through `AcmeHooks`),
 * renews at two thirds of a certificate's lifetime and backs off after failures. Control plane
 * only: nothing here runs on the request path. See docs/acme.md.
 *
 * Phases of one attempt for one name:
 *   lock -> reread storage -> (use what another instance stored) | order -> store -> install -> schedule
 *                                                                        └─ fail -> backoff -> schedule
 */
import type { AcmeNameStatus } from '../admin/types.ts';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import type * as AcmeClient from 'acme-client';
import { acmeDirectories, type AcmeSettings } from '../config/schema.ts';
import type { Logger } from '../observe/logger.ts';
import { AcmeError, AcmeErrorCode } from './acme-errors.ts';
import { loadAcmeLibrary, placeOrder, type AcmeLibrary, type ChallengeType, type PollSettings } from './acme-order.ts';
import { acquireLock, AcmeStorage, LockTimeoutError, parseCertificate, type HeldLock, type LockHolder, type StoredCertificate } from './acme-storage.ts';

export { AcmeError, AcmeErrorCode, type AcmeProblem } from './acme-errors.ts';
export type { ChallengeType } from './acme-order.ts';

/** What the manager needs from the balancer: where certificates and challenge answers go. */
export interface AcmeHooks {
  /** New handshakes for `domain` get this certificate (PEM chain + key) at once. */
  install(domain: string, pair: { cert: string; key: string }): void;
  /** TLS-ALPN-01: answer `acme-tls/1` handshakes for `domain` with this certificate; null removes it. */
  alpnChallenge(domain: string, pair: { cert: string; key: string } | null): void;
  /** HTTP-01: serve `keyAuthorization` at /.well-known/acme-challenge/<token> on HTTP listeners; null removes it. */
  httpChallenge(token: string, keyAuthorization: string | null): void;
}

/** One name the manager keeps a certificate for, and how its control is proved. */
export interface AcmeOrderSpec {
  domain: string;
  challenge: ChallengeType;
}

/**
 * Where a name stands: "pending" (no certificate yet, no attempt begun), "ordering" (an attempt
 * runs, waiting for the lock included), "valid" (a certificate is installed and its renewal is
 * scheduled), "failed" (the last attempt failed; `next_attempt` says when the next one is; an
 * older certificate, if any, is still installed).
 */
export type AcmeDomainState = 'valid' | 'ordering' | 'failed' | 'pending';

/** One name's order state, as `/status` shows it (the shape is the admin API's). */
export type AcmeDomainStatus = AcmeNameStatus;

/** Tuning of the manager; the defaults suit a public CA, tests shrink them. */
export interface AcmeManagerOptions {
  /** The clock, ms since the epoch (default Date.now); timers still run in real time. */
  now?: () => number;
  /** Renew when this fraction of a certificate's lifetime has passed (default 2/3). */
  renewAfter?: number;
  /** Backoff after failures: `minMs` doubling per failure up to `maxMs`, each shortened by up to `jitter` (default 1 min, 24 h, 0.2). */
  backoff?: { minMs?: number; maxMs?: number; jitter?: number };
  /** Random numbers in [0, 1) for the jitter (default Math.random). */
  random?: () => number;
  /** Per-name lock in the storage: stale after `staleAfterMs` without refresh, waited for at most `waitMs`, looked at every `pollMs` (default 10 min, 15 min, 1 s). */
  lock?: { staleAfterMs?: number; waitMs?: number; pollMs?: number };
  /** Polling the CA for a decision: `attempts` polls from `minMs` doubling to `maxMs` (default 1 s, 10 s, 30). */
  poll?: Partial<PollSettings>;
  /** One order's deadline, from the lock taken to the chain downloaded (default 10 min). */
  orderTimeoutMs?: number;
  /** Deadline of each HTTPS request to the CA (default 30 s). */
  requestTimeoutMs?: number;
}

/** The directory URL for `acme.directory`: a well-known name ("letsencrypt-staging", "letsencrypt") or the URL itself. */
export function acmeDirectoryUrl(directory: string): string {
  return Object.hasOwn(acmeDirectories, directory) ? acmeDirectories[directory]! : directory;
}

/** A name as the manager keeps it: lower case, no trailing dot; throws FUL_ACME_BAD_DOMAIN for anything but a plain host name. */
function normalizeDomain(domain: string): string {
  const name = domain.trim().toLowerCase().replace(/\.$/, '');
  // Also what keeps a name safe as a directory name in the storage (no "/", never "." or "..").
  if (!/^(?=.{1,253}$)[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(name)) throw new AcmeError(AcmeErrorCode.BadDomain, `"${domain}" is not a host name ACME can certify`, { retryable: false });
  return name;
}

/** The longest setTimeout Node honours (about 24.8 days); longer waits are armed again. */
const maxTimerMs = 2 ** 31 - 1;

// acme-client talks through one module-wide axios instance. Requests to a registered CA origin get
// that CA's trust (`directory_ca`), a deadline and a signal; when the last manager using the origin
// stops, its requests in flight are cancelled and acme-client's own retries of them are switched off.
interface CaRequestConfig {
  url?: string;
  httpsAgent?: unknown;
  timeout?: number;
  signal?: unknown;
  retryAttempt?: number;
}
interface CaRoute {
  agent: https.Agent | undefined;
  timeoutMs: number;
  owners: number;
  inflight: Set<CaRequestConfig>;
  abort: AbortController;
}
const caRoutes = new Map<string, CaRoute>();
let interceptorsInstalled = false;

function routeOf(config: CaRequestConfig | undefined): CaRoute | undefined {
  try {
    return config?.url ? caRoutes.get(new URL(config.url).origin) : undefined;
  } catch {
    return undefined;
  }
}

/** Registers `origin` for one manager; the returned function unregisters it (idempotent). */
function routeCaRequests(lib: AcmeLibrary, origin: string, agent: https.Agent | undefined, timeoutMs: number): () => void {
  let route = caRoutes.get(origin);
  if (route === undefined) {
    route = { agent, timeoutMs, owners: 0, inflight: new Set(), abort: new AbortController() };
    caRoutes.set(origin, route);
  } else if (agent !== undefined) route.agent = agent;
  route.owners++;
  if (!interceptorsInstalled) {
    interceptorsInstalled = true;
    lib.axios.interceptors.request.use(<T extends CaRequestConfig>(config: T): T => {
      const found = routeOf(config);
      if (found) {
        if (found.agent) config.httpsAgent = found.agent;
        if (!config.timeout) config.timeout = found.timeoutMs;
        config.signal ??= found.abort.signal;
        found.inflight.add(config);
      }
      return config;
    });
    lib.axios.interceptors.response.use(
      <T extends { config?: CaRequestConfig }>(response: T): T => {
        if (response.config) routeOf(response.config)?.inflight.delete(response.config);
        return response;
      },
      (error: { config?: CaRequestConfig }) => {
        if (error?.config) routeOf(error.config)?.inflight.delete(error.config);
        return Promise.reject(error);
      },
    );
  }
  const owned = route;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    owned.owners--;
    if (owned.owners > 0) return;
    if (caRoutes.get(origin) === owned) caRoutes.delete(origin);
    for (const config of owned.inflight) config.retryAttempt = Number.POSITIVE_INFINITY;
    owned.inflight.clear();
    owned.abort.abort();
  };
}

/** A name's live state inside the manager. */
interface Managed {
  domain: string;
  challenge: ChallengeType;
  state: AcmeDomainState;
  current: StoredCertificate | null;
  nextAttempt: number | null;
  lastError: AcmeError | null;
  failures: number;
  orders: number;
  timer: NodeJS.Timeout | null;
  /** The attempt running or queued (renew() queues behind it). */
  queue: Promise<void> | null;
}

/** What forces an attempt to order: null for a scheduled attempt, or the fingerprint installed when renew() was called. */
type Forced = { since: string | null } | null;

const noop = (): void => {};

/**
 * Keeps certificates from an ACME CA for a set of names: reads and installs what the storage
 * holds, orders what is missing or due, renews at `renewAfter` of the lifetime, retries failures
 * with exponential backoff and jitter. Timers are unref'd and cleared by stop().
 */
export class AcmeManager {
  /** The CA directory URL in use (the production one only when the configuration names it). */
  readonly directoryUrl: string;
  readonly storage: AcmeStorage;

  private readonly settings: AcmeSettings;
  private readonly hooks: AcmeHooks;
  private readonly logger: Logger;
  private readonly domains = new Map<string, Managed>();
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly renewAfter: number;
  private readonly backoff: { minMs: number; maxMs: number; jitter: number };
  private readonly lockSettings: { staleAfterMs: number; waitMs: number; pollMs: number };
  private readonly poll: PollSettings;
  private readonly orderTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly abort = new AbortController();
  private readonly published = new Set<() => void>();
  private readonly held = new Set<HeldLock>();
  private lib: AcmeLibrary | null = null;
  private client: AcmeClient.Client | null = null;
  private accountPending: Promise<AcmeClient.Client> | null = null;
  private readonly origin: string;
  private unroute: () => void = noop;
  private started = false;
  private starting: Promise<void> | null = null;
  private stopped = false;

  /**
   * `settings` is the config's `acme` section with `storage` (and `directory_ca`) absolute;
   * `orders` the names of every HTTPS listener's `tls.acme` (a name listed twice is kept once,
   * with its first challenge). Throws AcmeError FUL_ACME_BAD_DOMAIN for a name that is not a
   * plain host name. Nothing is read or ordered before start().
   */
  constructor(settings: AcmeSettings, orders: readonly AcmeOrderSpec[], hooks: AcmeHooks, logger: Logger, options: AcmeManagerOptions = {}) {
    this.settings = settings;
    this.hooks = hooks;
    this.logger = logger;
    this.directoryUrl = acmeDirectoryUrl(settings.directory);
    this.origin = new URL(this.directoryUrl).origin;
    this.storage = new AcmeStorage(settings.storage, this.directoryUrl);
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    this.renewAfter = options.renewAfter ?? 2 / 3;
    this.backoff = { minMs: options.backoff?.minMs ?? 60_000, maxMs: options.backoff?.maxMs ?? 86_400_000, jitter: options.backoff?.jitter ?? 0.2 };
    this.lockSettings = { staleAfterMs: options.lock?.staleAfterMs ?? 600_000, waitMs: options.lock?.waitMs ?? 900_000, pollMs: options.lock?.pollMs ?? 1000 };
    this.poll = { minMs: options.poll?.minMs ?? 1000, maxMs: options.poll?.maxMs ?? 10_000, attempts: options.poll?.attempts ?? 30 };
    this.orderTimeoutMs = options.orderTimeoutMs ?? 600_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    for (const order of orders) {
      const domain = normalizeDomain(order.domain);
      const known = this.domains.get(domain);
      if (known) {
        if (known.challenge !== order.challenge) logger.warn({ domain, challenge: known.challenge, ignored: order.challenge }, `ACME: ${domain} is listed twice; it is proved with ${known.challenge}, not ${order.challenge}`);
        continue;
      }
      this.domains.set(domain, { domain, challenge: order.challenge, state: 'pending', current: null, nextAttempt: null, lastError: null, failures: 0, orders: 0, timer: null, queue: null });
    }
  }

  /**
   * Installs every valid certificate the storage holds, then schedules an order for each name
   * whose certificate is missing, expired or due (at once, in the background) and a renewal for
   * the others. Resolves once the stored certificates are installed. Rejects with AcmeError
   * FUL_ACME_TERMS_NOT_AGREED (logged; nothing read or ordered) when `terms_of_service_agreed`
   * is false, FUL_ACME_STORAGE when the storage cannot be made, FUL_ACME_CA_ERROR when
   * `directory_ca` cannot be read, FUL_ACME_STOPPED after stop(). A second call returns the
   * first one's promise (after a failure, it tries again).
   */
  start(): Promise<void> {
    this.starting ??= this.begin().catch((err: unknown) => {
      this.starting = null;
      throw err;
    });
    return this.starting;
  }

  private async begin(): Promise<void> {
    if (this.stopped) throw new AcmeError(AcmeErrorCode.Stopped, 'the ACME manager was stopped; make a new one', { retryable: false });
    if (!this.settings.terms_of_service_agreed) {
      const message = `ACME: not ordering certificates for ${[...this.domains.keys()].join(', ')}: set acme.terms_of_service_agreed: true once you agree to the terms of service of ${this.directoryUrl}`;
      this.logger.error({ directory: this.directoryUrl, code: AcmeErrorCode.TermsNotAgreed }, message);
      throw new AcmeError(AcmeErrorCode.TermsNotAgreed, message, { retryable: false });
    }
    try {
      await this.storage.prepare();
    } catch (err) {
      throw new AcmeError(AcmeErrorCode.Storage, `ACME storage ${this.storage.root}: ${(err as Error).message}`, { retryable: false, cause: err });
    }
    let agent: https.Agent | undefined;
    if (this.settings.directory_ca !== undefined) {
      try {
        agent = new https.Agent({ ca: await readFile(this.settings.directory_ca, 'utf8'), keepAlive: false });
      } catch (err) {
        throw new AcmeError(AcmeErrorCode.CaError, `acme.directory_ca ${this.settings.directory_ca}: ${(err as Error).message}`, { retryable: false, cause: err });
      }
    }
    this.lib = await loadAcmeLibrary();
    this.abort.signal.throwIfAborted();
    this.unroute = routeCaRequests(this.lib, this.origin, agent, this.requestTimeoutMs);
    this.logDirectory();

    const now = this.now();
    for (const d of this.domains.values()) {
      const stored = await this.storage.readCertificate(d.domain, (problem) => this.logger.warn({ domain: d.domain }, `ACME: stored certificate not used: ${problem}`));
      this.abort.signal.throwIfAborted();
      if (stored !== null && stored.notAfter > now) {
        try {
          this.hooks.install(d.domain, { cert: stored.cert, key: stored.key });
          d.current = stored;
          d.state = 'valid';
          this.logger.info({ domain: d.domain, serial: stored.serial, not_after: iso(stored.notAfter) }, `ACME: certificate for ${d.domain} from storage, valid until ${iso(stored.notAfter)}`);
        } catch (err) {
          this.logger.error({ domain: d.domain, code: AcmeErrorCode.InstallFailed }, `ACME: the stored certificate for ${d.domain} was refused: ${(err as Error).message}; ordering a new one`);
        }
      }
      this.schedule(d, d.current === null ? now : this.renewalTime(d.current));
    }
    this.started = true;
  }

  /**
   * Orders a new certificate for `domain` now (a forced renewal), after any attempt already
   * running for it; resolves once the new certificate is installed. When another instance
   * sharing the storage renewed it meanwhile, that certificate is used instead of a second
   * order. Rejects with AcmeError: FUL_ACME_UNKNOWN_DOMAIN, FUL_ACME_STOPPED (not started or
   * stopped), or the attempt's failure (FUL_ACME_CHALLENGE_FAILED with the CA's problem, ...).
   */
  async renew(domain: string): Promise<void> {
    const name = normalizeDomain(domain);
    const d = this.domains.get(name);
    if (d === undefined) throw new AcmeError(AcmeErrorCode.UnknownDomain, `${domain} is not one of the ACME names (${[...this.domains.keys()].join(', ')})`, { retryable: false });
    if (!this.started || this.stopped) throw new AcmeError(AcmeErrorCode.Stopped, `the ACME manager is ${this.stopped ? 'stopped' : 'not started'}`, { retryable: false });
    return this.enqueue(d, { since: d.current?.fingerprint ?? null });
  }

  /** Every name's state, certificate and schedule, in the order the names were given. */
  status(): AcmeDomainStatus[] {
    return [...this.domains.values()].map((d) => ({
      domain: d.domain,
      challenge: d.challenge,
      state: d.state,
      ...(d.current ? { not_before: iso(d.current.notBefore), not_after: iso(d.current.notAfter), serial: d.current.serial } : {}),
      ...(d.nextAttempt !== null && !this.stopped ? { next_attempt: iso(d.nextAttempt) } : {}),
      ...(d.lastError ? { last_error: d.lastError.message, last_error_code: d.lastError.code } : {}),
      failures: d.failures,
      orders: d.orders,
    }));
  }

  /**
   * Stops for good: clears every timer, removes challenge answers still published, releases the
   * locks held, and abandons attempts in flight (they store and install nothing more; a pending
   * renew() rejects with FUL_ACME_STOPPED). Safe to call twice.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.abort.abort(new AcmeError(AcmeErrorCode.Stopped, 'the ACME manager stopped', { retryable: false }));
    for (const d of this.domains.values()) {
      if (d.timer) clearTimeout(d.timer);
      d.timer = null;
    }
    for (const remove of [...this.published]) remove();
    await Promise.all([...this.held].map((lock) => lock.release()));
    this.held.clear();
    this.unroute();
  }

  private logDirectory(): void {
    const names = [...this.domains.keys()].join(', ');
    const fields = { directory: this.directoryUrl, storage: this.storage.dir, domains: [...this.domains.keys()] };
    if (this.directoryUrl === acmeDirectories['letsencrypt-staging']) {
      this.logger.info(fields, `ACME: certificates for ${names} from Let's Encrypt staging (browsers do not trust them; set acme.directory: letsencrypt once this works)`);
    } else this.logger.info(fields, `ACME: certificates for ${names} from ${this.directoryUrl}`);
  }

  /** When `cert` is due for renewal: `renewAfter` of its lifetime after notBefore. */
  private renewalTime(cert: StoredCertificate): number {
    return cert.notBefore + Math.floor((cert.notAfter - cert.notBefore) * this.renewAfter);
  }

  /** The wait after the `failures`-th failure in a row: min doubling to max, less up to `jitter` of it. */
  private backoffDelay(failures: number): number {
    const base = Math.min(this.backoff.maxMs, this.backoff.minMs * 2 ** Math.min(failures - 1, 40));
    return Math.max(1, Math.round(base * (1 - this.backoff.jitter * this.random())));
  }

  /** Arms `d`'s timer for an attempt at `at` (ms since the epoch, by the manager's clock). */
  private schedule(d: Managed, at: number): void {
    if (d.timer) clearTimeout(d.timer);
    d.timer = null;
    d.nextAttempt = at;
    if (this.stopped) return;
    const arm = (): void => {
      const left = at - this.now();
      if (left > maxTimerMs) {
        d.timer = setTimeout(arm, maxTimerMs);
      } else {
        d.timer = setTimeout(() => {
          d.timer = null;
          this.enqueue(d, null).catch(noop);
        }, Math.max(0, left));
      }
      d.timer.unref();
    };
    arm();
  }

  /** Runs an attempt for `d` after the one running or queued; resolves or rejects with it. */
  private enqueue(d: Managed, forced: Forced): Promise<void> {
    const run = (d.queue ?? Promise.resolve()).catch(noop).then(() => this.attempt(d, forced));
    d.queue = run;
    run.then(
      () => {
        if (d.queue === run) d.queue = null;
      },
      () => {
        if (d.queue === run) d.queue = null;
      },
    );
    return run;
  }

  /** One attempt for `d`: lock, reread the storage, order if still needed, store, install, schedule. */
  private async attempt(d: Managed, forced: Forced): Promise<void> {
    this.abort.signal.throwIfAborted();
    if (d.timer) clearTimeout(d.timer);
    d.timer = null;
    d.state = 'ordering';
    let lock: HeldLock | null = null;
    try {
      lock = await this.takeLock(this.storage.orderLock(d.domain), d.domain);
      const now = this.now();
      const stored = await this.storage.readCertificate(d.domain, (problem) => this.logger.warn({ domain: d.domain }, `ACME: stored certificate not used: ${problem}`));
      const usable = stored !== null && stored.notAfter > now;
      if (usable && (forced ? stored.fingerprint !== forced.since : this.renewalTime(stored) > now)) {
        this.adopt(d, stored);
        return;
      }
      if (!forced) {
        const failure = await this.storage.readFailure(d.domain);
        // Our own failure record is what scheduled this attempt; only another instance's newer one defers it.
        if (failure !== null && failure.nextAttempt > now && failure.nextAttempt !== d.nextAttempt) {
          // Another instance (or an earlier run) failed lately: keep its backoff rather than ask the CA again.
          d.failures = Math.max(d.failures, failure.failures);
          d.lastError ??= new AcmeError(AcmeErrorCode.CaError, failure.error);
          d.state = d.current ? 'valid' : 'failed';
          this.logger.info({ domain: d.domain, next_attempt: iso(failure.nextAttempt) }, `ACME: the last order for ${d.domain} failed (${failure.error}); next attempt at ${iso(failure.nextAttempt)}`);
          this.schedule(d, failure.nextAttempt);
          return;
        }
      }
      const issued = await this.order(d, forced !== null);
      d.current = issued;
      d.state = 'valid';
      d.failures = 0;
      d.lastError = null;
      // A renewal time already past (a clock ahead of the CA's, a very short lifetime) waits one backoff step, never loops.
      this.schedule(d, Math.max(this.renewalTime(issued), this.now() + this.backoff.minMs));
    } catch (err) {
      if (this.stopped) throw new AcmeError(AcmeErrorCode.Stopped, 'the ACME manager stopped', { retryable: false, cause: err });
      const error = asAcmeError(err);
      d.failures++;
      d.lastError = error;
      d.state = 'failed';
      const next = this.now() + (error.retryable ? this.backoffDelay(d.failures) : this.backoff.maxMs);
      if (lock !== null) await this.storage.writeFailure(d.domain, { failures: d.failures, nextAttempt: next, error: error.message }).catch(noop);
      this.schedule(d, next);
      this.logger.error(
        {
          domain: d.domain,
          challenge: d.challenge,
          code: error.code,
          problem_type: error.problem?.type,
          problem_detail: error.problem?.detail,
          failures: d.failures,
          next_attempt: iso(next),
          ...(d.current ? { not_after: iso(d.current.notAfter) } : {}),
        },
        `ACME: certificate for ${d.domain} not obtained: ${error.message}; attempt ${d.failures + 1} at ${iso(next)}${d.current ? ` (the installed one is valid until ${iso(d.current.notAfter)})` : ''}`,
      );
      throw error;
    } finally {
      if (lock !== null) {
        this.held.delete(lock);
        await lock.release().catch(noop);
      }
    }
  }

  /** Installs a certificate another instance (or an earlier attempt) stored, unless it is the one installed. */
  private adopt(d: Managed, stored: StoredCertificate): void {
    if (d.current?.fingerprint !== stored.fingerprint) {
      this.install(d.domain, stored);
      this.logger.info({ domain: d.domain, serial: stored.serial, not_after: iso(stored.notAfter) }, `ACME: certificate for ${d.domain} stored by another instance, valid until ${iso(stored.notAfter)}`);
    }
    d.current = stored;
    d.state = 'valid';
    d.failures = 0;
    d.lastError = null;
    this.schedule(d, Math.max(this.renewalTime(stored), this.now() + this.backoff.minMs));
  }

  private install(domain: string, cert: StoredCertificate): void {
    this.abort.signal.throwIfAborted();
    try {
      this.hooks.install(domain, { cert: cert.cert, key: cert.key });
    } catch (err) {
      throw new AcmeError(AcmeErrorCode.InstallFailed, `the balancer refused the certificate for ${domain}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Takes a lock in the storage, logging when another instance holds it; maps its failures to AcmeErrors. */
  private async takeLock(file: string, what: string): Promise<HeldLock> {
    try {
      const lock = await acquireLock(file, {
        ...this.lockSettings,
        signal: this.abort.signal,
        onWait: (holder: LockHolder | null) =>
          this.logger.info({ lock: file, holder_pid: holder?.pid, holder_host: holder?.host }, `ACME: waiting for ${what}: another Fulcrum${holder ? ` (pid ${holder.pid} on ${holder.host})` : ''} holds ${file}`),
      });
      this.held.add(lock);
      if (this.stopped) {
        await lock.release();
        this.abort.signal.throwIfAborted();
      }
      return lock;
    } catch (err) {
      if (err instanceof LockTimeoutError) throw new AcmeError(AcmeErrorCode.LockTimeout, err.message, { cause: err });
      if (this.abort.signal.aborted) throw err;
      throw new AcmeError(AcmeErrorCode.Storage, `lock ${file}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Places an order for `d` within the order deadline, then stores and installs what it brings. */
  private async order(d: Managed, forced: boolean): Promise<StoredCertificate> {
    const deadline = AbortSignal.timeout(this.orderTimeoutMs);
    const signal = AbortSignal.any([this.abort.signal, deadline]);
    const started = this.now();
    d.orders++;
    this.logger.info(
      { domain: d.domain, challenge: d.challenge, directory: this.directoryUrl, forced },
      `ACME: ordering a certificate for ${d.domain} (${d.challenge}${forced ? ', forced renewal' : d.current ? ', renewal' : ''})`,
    );
    try {
      const client = await this.account();
      const pair = await placeOrder({
        lib: this.lib!,
        client,
        domain: d.domain,
        challenge: d.challenge,
        keyType: this.settings.key_type,
        hooks: this.hooks,
        poll: this.poll,
        signal,
        published: this.published,
        step: (what) => this.logger.debug({ domain: d.domain }, `ACME: ${d.domain}: ${what}`),
      });
      signal.throwIfAborted();
      const issued = parseCertificate(pair.cert, pair.key, d.domain);
      try {
        await this.storage.writeCertificate(d.domain, pair);
        await this.storage.writeFailure(d.domain, null);
      } catch (err) {
        throw new AcmeError(AcmeErrorCode.Storage, `storing the certificate for ${d.domain} in ${this.storage.domainDir(d.domain)}: ${(err as Error).message}`, { cause: err });
      }
      this.install(d.domain, issued);
      // Set with the install, in the same tick: a renew() called now compares against this certificate.
      d.current = issued;
      this.logger.info(
        { domain: d.domain, serial: issued.serial, not_after: iso(issued.notAfter), renew_at: iso(this.renewalTime(issued)), ms: this.now() - started },
        `ACME: certificate for ${d.domain} issued, valid until ${iso(issued.notAfter)}; renewal at ${iso(this.renewalTime(issued))}`,
      );
      return issued;
    } catch (err) {
      if (deadline.aborted && !this.abort.signal.aborted) throw new AcmeError(AcmeErrorCode.Timeout, `ordering ${d.domain} took longer than ${Math.round(this.orderTimeoutMs / 1000)}s`, { cause: err });
      if (err instanceof AcmeError && err.code === AcmeErrorCode.CaError && /account/i.test(err.message) && /not exist|not found|unknown|no such/i.test(err.message)) {
        // The CA forgot the stored account (a reset test CA, a deactivated account): register the key again next time.
        this.client = null;
        await this.storage.writeAccountUrl(null).catch(noop);
      }
      throw err;
    }
  }

  /** The account's client: loaded from the storage, or registered (under the account lock) when there is none. */
  private account(): Promise<AcmeClient.Client> {
    if (this.client !== null) return Promise.resolve(this.client);
    this.accountPending ??= this.loadAccount().finally(() => {
      this.accountPending = null;
    });
    return this.accountPending;
  }

  private async loadAccount(): Promise<AcmeClient.Client> {
    const lib = this.lib!;
    const lock = await this.takeLock(this.storage.accountLock, 'the ACME account');
    try {
      let stored = await this.storage.readAccount();
      if (stored === null) {
        const key = (await lib.crypto.createPrivateEcdsaKey('P-256')).toString();
        await this.storage.writeAccountKey(key);
        stored = { key, url: null };
      }
      const client = new lib.Client({ directoryUrl: this.directoryUrl, accountKey: stored.key, ...(stored.url ? { accountUrl: stored.url } : {}) });
      if (stored.url === null) {
        const contact = this.settings.email ? [`mailto:${this.settings.email}`] : undefined;
        try {
          await client.createAccount({ termsOfServiceAgreed: true, ...(contact ? { contact } : {}) });
        } catch (err) {
          const message = (err as Error).message;
          throw new AcmeError(AcmeErrorCode.CaError, `registering the ACME account at ${this.directoryUrl}: ${message}`, { problem: { detail: message }, cause: err });
        }
        const url = client.getAccountUrl();
        await this.storage.writeAccountUrl(url, { directory: this.directoryUrl, contact: contact ?? [], created: new Date(this.now()).toISOString() });
        this.logger.info({ directory: this.directoryUrl, account: url }, `ACME: account registered at ${this.directoryUrl}: ${url}`);
      }
      this.abort.signal.throwIfAborted();
      this.client = client;
      return client;
    } finally {
      this.held.delete(lock);
      await lock.release().catch(noop);
    }
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** Any failure of an attempt as an AcmeError (storage errors by their errno, the rest as CA errors). */
function asAcmeError(err: unknown): AcmeError {
  if (err instanceof AcmeError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = (err as Error | undefined)?.message ?? String(err);
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code) && (err as NodeJS.ErrnoException).syscall !== undefined && (err as NodeJS.ErrnoException).path !== undefined) {
    return new AcmeError(AcmeErrorCode.Storage, message, { cause: err });
  }
  return new AcmeError(AcmeErrorCode.CaError, message, { problem: { detail: message }, cause: err });
}
