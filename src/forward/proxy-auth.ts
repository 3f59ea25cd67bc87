/**
 * Proxy authentication for the forward proxy: `Proxy-Authorization: Basic ...` (RFC 7617, RFC 9110
 * section 11.7.1) checked against scrypt password hashes (RFC 7914, node:crypto).
 *
 * scrypt is deliberately slow (about 100-200 ms and 32 MiB per check at the default cost), so a
 * client could burn CPU and memory by sending credentials. Three things bound that:
 * - credentials that verified are remembered (an LRU of SHA-256 digests of the credentials, never
 *   the secret itself; 1,000 entries, 5 minutes from the verification), so a client sending the
 *   same header on every request pays once;
 * - identical credentials being checked at the same moment share one check;
 * - at most 2 checks run at once and at most 16 wait; beyond that a check answers `invalid` at
 *   once (the client sees a 407 and may try again). Two, not more: node:crypto runs scrypt on
 *   libuv's thread pool (4 threads by default), which DNS lookups and file writes also need.
 *
 * Unknown users cost one scrypt against a dummy hash, so timing does not tell which users exist.
 */
import { createHash, randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

/** Proxy authentication as the configuration schema produces it. */
export interface ProxyAuthSettings {
  /** The protection space named in the challenge (printable ASCII). */
  realm: string;
  /** User name -> password hash (`hashPassword`'s format). */
  users: Record<string, string>;
}

/** The result of checking a Proxy-Authorization header. */
export type ProxyAuthResult = { ok: true; user: string } | { ok: false; reason: 'missing' | 'invalid' };

/** Tuning for a ProxyAuthenticator; tests shrink these. */
export interface ProxyAuthOptions {
  /** scrypt checks running at once (default 2). */
  maxConcurrent?: number;
  /** Checks waiting for a slot before further ones answer `invalid` (default 16). */
  maxQueued?: number;
  /** Verified credentials remembered (default 1000). */
  cacheSize?: number;
  /** How long verified credentials are remembered, from the verification (milliseconds, default 300000). */
  cacheTtl?: number;
  /** The clock for the cache (milliseconds; default `performance.now`). */
  now?: () => number;
}

/** scrypt cost parameters (RFC 7914): N (CPU/memory cost, a power of two), r (block size), p (parallelism). */
export interface ScryptCost {
  N: number;
  r: number;
  p: number;
}

/** The cost `hashPassword` uses: N=2^15, r=8, p=1 (32 MiB per check, OWASP's recommended minimum is N=2^17 at r=8 when memory allows). */
export const DEFAULT_SCRYPT_COST: Readonly<ScryptCost> = { N: 2 ** 15, r: 8, p: 1 };

const SALT_BYTES = 16;
const KEY_BYTES = 32;
/** Longest Proxy-Authorization value looked at; longer ones are refused before any work. */
const MAX_HEADER_CHARS = 4096;

/** A parsed password hash. */
interface PasswordHash extends ScryptCost {
  salt: Buffer;
  key: Buffer;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decodeBase64(text: string): Buffer | null {
  return text.length > 0 && BASE64.test(text) ? Buffer.from(text, 'base64') : null;
}

/** Bounded so a hash in a config file cannot ask for gigabytes: 128 * N * r at most 256 MiB. */
function parsePasswordHash(text: string): PasswordHash | null {
  const parts = text.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return null;
  const [N, r, p] = parts.slice(1, 4).map((t) => (/^\d{1,8}$/.test(t) ? Number(t) : NaN));
  if (!(N >= 1024 && N <= 2 ** 20 && (N & (N - 1)) === 0)) return null;
  if (!(r >= 1 && r <= 32 && p >= 1 && p <= 16)) return null;
  if (128 * N * r > 256 * 1024 * 1024) return null;
  const salt = decodeBase64(parts[4]);
  const key = decodeBase64(parts[5]);
  if (salt === null || salt.length < 16 || salt.length > 64) return null;
  if (key === null || key.length < 16 || key.length > 64) return null;
  return { N, r, p, salt, key };
}

function scryptOptions(cost: ScryptCost): ScryptOptions {
  // OpenSSL needs about 128 * r * (N + p + 2) bytes; node's default maxmem (32 MiB) is just short of N=2^15, r=8.
  return { N: cost.N, r: cost.r, p: cost.p, maxmem: 2 * 128 * cost.N * cost.r + 1024 * 1024 };
}

function deriveKey(password: string, salt: Buffer, keyLength: number, cost: ScryptCost): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keyLength, scryptOptions(cost), (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/**
 * Hashes a password for `users`: `scrypt$N$r$p$<salt base64>$<key base64>` with a random 16-byte
 * salt and a 32-byte key, at `DEFAULT_SCRYPT_COST` unless `cost` says otherwise (tests use a
 * cheaper one). The password is read as UTF-8 after Unicode NFC normalisation (RFC 7617 section
 * 2.1's OpaqueString profile, less its space mapping). Rejects if the cost is out of bounds.
 */
export async function hashPassword(password: string, cost: ScryptCost = DEFAULT_SCRYPT_COST): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await deriveKey(password.normalize('NFC'), salt, KEY_BYTES, cost);
  const text = `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64')}$${key.toString('base64')}`;
  if (!isPasswordHash(text)) throw new Error(`scrypt cost out of bounds: N=${cost.N} r=${cost.r} p=${cost.p}`);
  return text;
}

/**
 * True when `text` is a password hash this module can check: `scrypt$N$r$p$salt$key`, N a power of
 * two from 2^10 to 2^20, r 1-32, p 1-16, 128*N*r at most 256 MiB, salt and key 16-64 bytes of
 * padded standard base64.
 */
export function isPasswordHash(text: string): boolean {
  return parsePasswordHash(text) !== null;
}

/** Why a realm cannot go in a challenge, or undefined: it must be printable ASCII (space to `~`). */
export function realmProblem(realm: string): string | undefined {
  return /^[\x20-\x7e]*$/.test(realm) ? undefined : 'the realm must be printable ASCII';
}

/**
 * Every problem with proxy auth settings (empty when none): a bad realm, a user name with a colon
 * or a control character (Basic cannot carry it, RFC 7617 section 2), two names equal after NFC
 * normalisation, a value that is not a password hash (the hash itself is not repeated).
 */
export function proxyAuthSettingsProblems(settings: ProxyAuthSettings): string[] {
  const problems: string[] = [];
  const realm = realmProblem(settings.realm);
  if (realm !== undefined) problems.push(realm);
  const seen = new Set<string>();
  for (const [user, hash] of Object.entries(settings.users)) {
    const label = JSON.stringify(user);
    if (/[:\x00-\x1f\x7f]/.test(user)) problems.push(`user ${label}: a user name cannot contain ":" or control characters`);
    const normal = user.normalize('NFC');
    if (seen.has(normal)) problems.push(`user ${label}: the same name as another user after Unicode normalisation`);
    seen.add(normal);
    if (typeof hash !== 'string' || !isPasswordHash(hash)) problems.push(`user ${label}: not a password hash (write one with "fulcrum hash-password")`);
  }
  return problems;
}

/** A bounded LRU of verified credentials, by digest, each kept for a fixed time from its verification. */
class VerifiedCache {
  private readonly entries = new Map<string, { user: string; expires: number }>();
  private readonly size: number;
  private readonly ttl: number;

  constructor(size: number, ttl: number) {
    this.size = size;
    this.ttl = ttl;
  }

  get(digest: string, now: number): string | undefined {
    const entry = this.entries.get(digest);
    if (entry === undefined) return undefined;
    this.entries.delete(digest);
    if (entry.expires <= now) return undefined;
    // Map keeps insertion order: re-inserting makes this entry the most recently used.
    this.entries.set(digest, entry);
    return entry.user;
  }

  set(digest: string, user: string, now: number): void {
    if (this.size <= 0) return;
    this.entries.delete(digest);
    while (this.entries.size >= this.size) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(digest, { user, expires: now + this.ttl });
  }

  get count(): number {
    return this.entries.size;
  }
}

/** Counters for metrics and tests. */
export interface ProxyAuthStats {
  /** scrypt checks run (cache misses that got a slot). */
  verifications: number;
  /** Checks answered from the cache of verified credentials. */
  cacheHits: number;
  /** Checks refused as `invalid` because every slot and queue place was taken. */
  shed: number;
}

/** Checks Proxy-Authorization headers against configured users; one per configuration. */
export class ProxyAuthenticator {
  /** The `Proxy-Authenticate` value for a 407: `Basic realm="<realm>", charset="UTF-8"`. */
  readonly challenge: string;
  /** Counters since construction. */
  readonly stats: ProxyAuthStats = { verifications: 0, cacheHits: 0, shed: 0 };

  private readonly users: Map<string, PasswordHash>;
  private readonly dummy: PasswordHash;
  private readonly cache: VerifiedCache;
  private readonly inFlight = new Map<string, Promise<ProxyAuthResult>>();
  private readonly now: () => number;
  private readonly maxConcurrent: number;
  private readonly maxQueued: number;
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  /** Throws an Error listing every problem `proxyAuthSettingsProblems` finds. */
  constructor(settings: ProxyAuthSettings, options: ProxyAuthOptions = {}) {
    const problems = proxyAuthSettingsProblems(settings);
    if (problems.length > 0) throw new Error(`proxy auth: ${problems.join('; ')}`);
    this.users = new Map(Object.entries(settings.users).map(([user, hash]) => [user.normalize('NFC'), parsePasswordHash(hash)!]));
    // Never matches (a random key), costs what a real user's check costs.
    this.dummy = { ...DEFAULT_SCRYPT_COST, salt: randomBytes(SALT_BYTES), key: randomBytes(KEY_BYTES) };
    this.challenge = `Basic realm="${settings.realm.replace(/["\\]/g, '\\$&')}", charset="UTF-8"`;
    this.cache = new VerifiedCache(options.cacheSize ?? 1000, options.cacheTtl ?? 5 * 60_000);
    this.now = options.now ?? (() => performance.now());
    this.maxConcurrent = Math.max(1, options.maxConcurrent ?? 2);
    this.maxQueued = Math.max(0, options.maxQueued ?? 16);
  }

  /**
   * Checks a Proxy-Authorization value (undefined when the request had none). `missing`: no
   * credentials; `invalid`: another scheme, bad base64 or UTF-8, no colon, an unknown user, a
   * wrong password, or no check slot free (see the module comment). Never rejects.
   */
  async check(header: string | undefined): Promise<ProxyAuthResult> {
    if (header === undefined || header.trim() === '') return MISSING;
    if (header.length > MAX_HEADER_CHARS) return INVALID;
    const match = /^[ \t]*([A-Za-z]+) +([A-Za-z0-9+/]+={0,2})[ \t]*$/.exec(header);
    if (match === null || match[1].toLowerCase() !== 'basic') return INVALID;
    const token = match[2];
    const digest = createHash('sha256').update(token).digest('base64');
    const cached = this.cache.get(digest, this.now());
    if (cached !== undefined) {
      this.stats.cacheHits++;
      return { ok: true, user: cached };
    }
    const pending = this.inFlight.get(digest);
    if (pending !== undefined) return pending;
    const check = this.verify(token, digest).finally(() => this.inFlight.delete(digest));
    this.inFlight.set(digest, check);
    return check;
  }

  /** Users configured (for status pages). */
  get userCount(): number {
    return this.users.size;
  }

  /** Verified credentials remembered now. */
  get cachedCount(): number {
    return this.cache.count;
  }

  private async verify(token: string, digest: string): Promise<ProxyAuthResult> {
    const raw = decodeBase64(token);
    if (raw === null) return INVALID;
    let text: string;
    try {
      text = UTF8.decode(raw);
    } catch {
      return INVALID;
    }
    const colon = text.indexOf(':');
    if (colon < 0) return INVALID;
    const user = text.slice(0, colon).normalize('NFC');
    const password = text.slice(colon + 1).normalize('NFC');

    if (!(await this.acquire())) {
      this.stats.shed++;
      return INVALID;
    }
    try {
      const stored = this.users.get(user);
      const hash = stored ?? this.dummy;
      let matches: boolean;
      try {
        this.stats.verifications++;
        const key = await deriveKey(password, hash.salt, hash.key.length, hash);
        matches = timingSafeEqual(key, hash.key);
      } catch {
        matches = false;
      }
      if (!matches || stored === undefined) return INVALID;
      this.cache.set(digest, user, this.now());
      return { ok: true, user };
    } finally {
      this.release();
    }
  }

  /** A check slot: true at once or after waiting in the bounded queue, false when the queue is full. */
  private acquire(): Promise<boolean> | boolean {
    if (this.running < this.maxConcurrent) {
      this.running++;
      return true;
    }
    if (this.waiting.length >= this.maxQueued) return false;
    // The slot passes straight from release() to the waiter, so `running` never drops in between.
    return new Promise((resolve) => this.waiting.push(() => resolve(true)));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next !== undefined) next();
    else this.running--;
  }
}

const MISSING: ProxyAuthResult = Object.freeze({ ok: false, reason: 'missing' });
const INVALID: ProxyAuthResult = Object.freeze({ ok: false, reason: 'invalid' });
const UTF8 = new TextDecoder('utf-8', { fatal: true });
