/**
 * Token buckets in Redis, so that every Fulcrum instance draws on the same buckets.
 *
 * One check is one Lua script run: read the bucket, refill it, take a token and write it back
 * atomically, on Redis's clock (`TIME`) so instances with skewed clocks still agree. The bucket
 * is a small hash that expires once it would be full again, so idle keys cost Redis nothing.
 *
 * Redis is a dependency that can be slow or gone, and a rate limiter must never turn that into
 * errors or stalls: every check has a deadline (`timeout`); a check that misses it is answered
 * without Redis. The store is taken as down when the connection is lost or fails, or when checks
 * keep missing their deadline (FALL_TIMEOUTS in a row, each sent after the previous one was
 * missed: one stall that catches many checks in flight counts once), so that a single late answer
 * on a busy machine does not switch every instance to its own limit. A deadline is only missed
 * when the answer has not arrived: one that is already in the socket while this process was busy
 * is read first. While down, checks do not touch Redis at all: they use a local bucket per key
 * (`on_failure: open`, each instance then limits on its own) or refuse with 503
 * (`on_failure: closed`). ioredis reconnects in the background and a probe notices a Redis that
 * was only slow; the first good answer brings the store back. Each change is logged once.
 */
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';
import type { Logger } from '../observe/logger.ts';
import { MemoryBuckets, type Clock } from './rate-limit-memory-store.ts';
import { ALLOWED, STORE_UNAVAILABLE, refillTime, type BucketPolicy, type BucketStore } from './rate-limit-bucket.ts';

/** `rate_limit.redis` of the configuration. */
export interface RedisStoreSettings {
  url: string;
  key_prefix: string;
  /** Milliseconds a check may wait for Redis; a later answer is not waited for (FALL_TIMEOUTS in a row: Redis counts as down). */
  timeout: number;
  on_failure: 'open' | 'closed';
}

/**
 * KEYS[1]: the bucket. ARGV: rate, per (ms), burst, ttl (ms).
 * Answers 0 when a token was taken, else the whole milliseconds until one will be there.
 * Numbers are written with %.17g: Redis would otherwise store Lua numbers with 14 digits, which
 * is too few for a millisecond timestamp with its fraction.
 */
const takeScript = `
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
local rate = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local refilled = tonumber(state[2])
if tokens == nil or refilled == nil then
  tokens = burst
  refilled = now
elseif now > refilled then
  tokens = math.min(burst, tokens + (now - refilled) * rate / per)
  refilled = now
end
if tokens < 1 - 1e-9 then
  return math.ceil((1 - tokens) * per / rate)
end
tokens = math.max(0, tokens - 1)
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', refilled))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 0
`;

/** The client with the script defined on it (ioredis adds the method at run time). */
/**
 * ioredis, loaded the first time a configuration uses a Redis store: a balancer without one
 * does not pay for it (about 12 MiB of RSS at start).
 */
let ioredis: typeof import('ioredis') | null = null;
function redisClass(): typeof Redis {
  ioredis ??= createRequire(import.meta.url)('ioredis') as typeof import('ioredis');
  return ioredis.Redis;
}

interface ScriptedRedis extends Redis {
  fulcrumTakeToken(key: string, rate: string, per: string, burst: string, ttl: string): Promise<number>;
}

/** While Redis is down, how often a connected but slow Redis is asked whether it is back. */
const PROBE_INTERVAL_MS = 500;
/** Longest wait between reconnect attempts. */
const MAX_RECONNECT_DELAY_MS = 2000;
/** Longest a TCP (and TLS) connect may take before it counts as failed and is retried. */
const CONNECT_TIMEOUT_MS = 2000;
/** Missed deadlines in a row (HAProxy's `fall`) that take a connected Redis out of use. */
export const FALL_TIMEOUTS = 3;

/** A check that got no answer from Redis within `timeout`. */
export class RedisTimeoutError extends Error {
  readonly code = 'FUL_RATE_LIMIT_STORE_TIMEOUT';
  constructor(timeout: number) {
    super(`no answer from redis within ${timeout}ms`);
  }
}

export type LinkState = 'connecting' | 'up' | 'down';

/**
 * The one Redis connection of a configuration, shared by all its Redis-backed limits, and
 * whether it is usable right now.
 */
export class RedisLink {
  readonly settings: RedisStoreSettings;
  readonly client: ScriptedRedis;
  private readonly logger: Logger;
  private state: LinkState = 'connecting';
  /** Resolves when the 'connecting' state ends, either way (never rejects). */
  private readonly connected: Promise<void>;
  private endConnecting: () => void = () => {};
  private probe: NodeJS.Timeout | null = null;
  private probing = false;
  private connectTimer: NodeJS.Timeout | null = null;
  /** A check already waited `timeout` for the first connection: later ones do not wait again. */
  private connectWaited = false;
  private closing = false;
  private fellBack = 0;
  /** Missed deadlines since the last answer, counting one per stall (see FALL_TIMEOUTS). */
  private missedInARow = 0;
  /** When the last counted deadline was missed (performance.now()); earlier checks do not count again. */
  private lastMiss = -Infinity;

  constructor(settings: RedisStoreSettings, logger: Logger) {
    this.settings = settings;
    this.logger = logger;
    const RedisClient = redisClass();
    this.client = new RedisClient(settings.url, {
      // Connect when a limit needs Redis, not when the configuration is merely built.
      lazyConnect: true,
      // Never queue commands while disconnected: a queued check would wait past its deadline,
      // and a queue grows without bound while Redis is away.
      enableOfflineQueue: false,
      // A check lost with a dropped connection is answered locally, not resent later.
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // No commandTimeout: `take` keeps its own deadline, which reads an answer already received
      // before calling it late (ioredis's timer fires first when this process was busy).
      connectTimeout: CONNECT_TIMEOUT_MS,
      // Keep trying forever (ioredis gives up when this returns nothing), backing off a little.
      retryStrategy: (times) => Math.min(times * 100, MAX_RECONNECT_DELAY_MS),
      scripts: { fulcrumTakeToken: { lua: takeScript, numberOfKeys: 1 } },
    }) as ScriptedRedis;
    this.connected = new Promise((resolve) => (this.endConnecting = resolve));
    this.client.on('ready', () => this.markUp());
    this.client.on('close', () => this.markDown('connection closed'));
    // Without a listener, ioredis's connection errors would be thrown as unhandled 'error'
    // events. They repeat on every reconnect attempt, so they are only debug lines; the state
    // change they cause is logged once.
    this.client.on('error', (err: Error) => this.logger.debug({ err }, 'rate-limit store redis error'));
    this.client.connect().catch(() => {
      // Reported through 'error' and 'close'; ioredis keeps reconnecting.
    });
    // A server that takes the connection but never gets ready (not Redis, or hung) is an outage too.
    this.connectTimer = setTimeout(() => {
      if (this.state === 'connecting') this.markDown(`not ready within ${CONNECT_TIMEOUT_MS}ms`);
    }, CONNECT_TIMEOUT_MS);
    this.connectTimer.unref();
  }

  /** Checks answered without Redis (a local bucket or a refusal) because it was down. */
  get fallbacks(): number {
    return this.fellBack;
  }

  /** True while checks are answered without Redis: down, or still connecting after a check waited once. */
  get local(): boolean {
    return this.state === 'down' || (this.state === 'connecting' && this.connectWaited);
  }

  /** 'up': checks go to Redis; 'down': they do not; 'connecting': until the first connection. */
  get status(): LinkState {
    return this.state;
  }

  /** Runs the bucket script; rejects on any failure, or with RedisTimeoutError after `timeout` ms. */
  async take(key: string, rate: string, per: string, burst: string, ttl: string): Promise<number> {
    if (this.state === 'connecting' && !this.connectWaited) await this.untilConnected();
    if (this.state !== 'up') throw new Error(this.state === 'down' ? 'redis is down' : 'redis is not connected yet');
    const sent = performance.now();
    const timeout = this.settings.timeout;
    return new Promise<number>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        // Timers run before I/O in each turn of the event loop: after a busy spell (or time off
        // the CPU) the answer may be in the socket already. setImmediate runs after I/O is read.
        setImmediate(() => {
          if (settled) return;
          settled = true;
          reject(new RedisTimeoutError(timeout));
        });
      }, timeout);
      this.client.fulcrumTakeToken(key, rate, per, burst, ttl).then(
        (wait) => {
          clearTimeout(timer);
          if (settled) return;
          settled = true;
          this.missedInARow = 0;
          resolve(wait);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (settled) return;
          settled = true;
          reject(err);
        },
      );
    }).catch((err: unknown) => {
      if (err instanceof RedisTimeoutError) this.missed(sent, err.message);
      else this.markDown((err as Error).message);
      throw err;
    });
  }

  /** A check sent at `sent` missed its deadline: counted once per stall; FALL_TIMEOUTS in a row take Redis out. */
  private missed(sent: number, reason: string): void {
    if (sent < this.lastMiss) return; // in flight when the last counted miss happened: the same stall
    this.lastMiss = performance.now();
    if (++this.missedInARow >= FALL_TIMEOUTS) this.markDown(`${FALL_TIMEOUTS} checks in a row: ${reason}`);
  }

  /** Counts a check that Redis did not answer. */
  countFallback(): void {
    this.fellBack++;
  }

  /** Takes Redis out of use (once per outage: later calls are no-ops). */
  markDown(reason: string): void {
    if (this.closing || this.state === 'down') return;
    this.state = 'down';
    this.endConnecting();
    const fallback = this.settings.on_failure === 'open' ? 'using local buckets' : 'refusing rate-limited requests with 503 (on_failure: closed)';
    this.logger.warn({ url: redactUrl(this.settings.url), reason }, `rate-limit store redis unreachable, ${fallback}`);
    this.probe = setInterval(() => this.probeOnce(), PROBE_INTERVAL_MS);
    this.probe.unref();
  }

  private markUp(): void {
    if (this.closing || this.state === 'up') return;
    const wasDown = this.state === 'down';
    this.state = 'up';
    this.missedInARow = 0;
    this.endConnecting();
    if (this.probe !== null) {
      clearInterval(this.probe);
      this.probe = null;
    }
    if (wasDown) this.logger.info({ url: redactUrl(this.settings.url) }, 'rate-limit store redis reachable again');
    else this.logger.debug({ url: redactUrl(this.settings.url) }, 'rate-limit store redis connected');
  }

  /** A dropped connection comes back through ioredis's 'ready'; a slow one only through this. */
  private probeOnce(): void {
    // One probe at a time: a hung Redis would otherwise collect a PING every interval.
    if (this.client.status !== 'ready' || this.probing) return;
    this.probing = true;
    this.client.ping().then(
      () => {
        this.probing = false;
        this.markUp();
      },
      () => {
        this.probing = false;
      },
    );
  }

  /** Waits for the first connection to succeed or fail, but no longer than a check may wait (once). */
  private async untilConnected(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.settings.timeout);
    });
    await Promise.race([this.connected, late]);
    clearTimeout(timer);
    // A slow first connection (a busy machine) is not an outage: checks are answered locally until
    // it is ready, without a warning; a failed one ends in 'close', which takes Redis out.
    if (this.state === 'connecting') this.connectWaited = true;
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.connectTimer !== null) clearTimeout(this.connectTimer);
    if (this.probe !== null) clearInterval(this.probe);
    this.probe = null;
    if (this.client.status === 'ready') {
      // QUIT lets answers in flight arrive; a Redis that does not answer is not waited for.
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, Math.max(this.settings.timeout, 100));
      });
      await Promise.race([this.client.quit().catch(() => {}), late]);
      clearTimeout(timer);
    }
    this.client.disconnect();
  }
}

/**
 * The Redis buckets of one limit. `id` names the limit in Redis keys; every instance must build
 * the same id for the same limit so that they share its buckets.
 */
export class RedisBuckets implements BucketStore {
  private readonly link: RedisLink;
  private readonly prefix: string;
  /** Local buckets while Redis is down (fail open), null when failing closed. */
  readonly fallback: MemoryBuckets | null;
  // Script arguments, stringified once.
  private readonly rate: string;
  private readonly per: string;
  private readonly burst: string;
  private readonly ttl: string;

  constructor(link: RedisLink, policy: BucketPolicy, id: string, maxEntries: number, clock?: Clock) {
    this.link = link;
    this.prefix = `${link.settings.key_prefix}${id}:`;
    this.fallback = link.settings.on_failure === 'open' ? new MemoryBuckets(policy, maxEntries, clock) : null;
    this.rate = String(policy.rate);
    this.per = String(policy.per);
    this.burst = String(policy.burst);
    // Past this a bucket is full again, the same as no bucket: Redis may forget it.
    this.ttl = String(Math.max(1, Math.ceil(refillTime(policy))));
  }

  take(key: string): number | Promise<number> {
    // Known down (or not connected yet): answer at once, without a promise, a timer or a round trip.
    if (this.link.local) return this.withoutRedis(key);
    return this.takeRemote(key);
  }

  private async takeRemote(key: string): Promise<number> {
    try {
      const wait = await this.link.take(this.prefix + key, this.rate, this.per, this.burst, this.ttl);
      return wait > 0 ? wait : ALLOWED;
    } catch {
      // The link decided whether this failure takes Redis out of use; this check is answered locally.
      return this.withoutRedis(key);
    }
  }

  private withoutRedis(key: string): number {
    this.link.countFallback();
    return this.fallback === null ? STORE_UNAVAILABLE : this.fallback.take(key);
  }
}

/** The URL without its password, for logs. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'redis';
  }
}
