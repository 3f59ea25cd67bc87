/**
 * Where ACME keeps its state on disk: the account key and URL, and each domain's certificate
 * and key, one directory per CA directory so staging and production never mix. Directories
 * are mode 0700, files 0600, every file written aside and renamed (a reader never sees half a
 * file). A lock file per name (O_EXCL, holding pid, host and time) keeps two Fulcrum processes
 * that share the storage from ordering the same name at once. See docs/acme.md.
 */
import { createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A certificate read from storage or just issued, with what scheduling needs from it. */
export interface StoredCertificate {
  /** PEM chain, leaf first. */
  cert: string;
  /** PEM private key of the leaf. */
  key: string;
  /** Validity, ms since the epoch. */
  notBefore: number;
  notAfter: number;
  /** Serial number, hex upper case (Node's X509Certificate form). */
  serial: string;
  /** SHA-256 fingerprint of the leaf: tells one certificate from another. */
  fingerprint: string;
}

/** A failed order as the storage remembers it, so every instance sharing it keeps the same backoff. */
export interface StoredFailure {
  failures: number;
  /** When the next order may be placed, ms since the epoch. */
  nextAttempt: number;
  error: string;
}

/** The account as stored: its key (PEM) and, once registered, its URL at the CA. */
export interface StoredAccount {
  key: string;
  url: string | null;
}

/**
 * Reads a certificate chain and key and checks them: the key belongs to the leaf and the leaf
 * covers `domain`. Throws an Error saying what is wrong otherwise.
 */
export function parseCertificate(cert: string, key: string, domain: string): StoredCertificate {
  const leaf = new X509Certificate(cert);
  if (!leaf.checkPrivateKey(createPrivateKey(key))) throw new Error('the key does not belong to the certificate');
  if (leaf.checkHost(domain, { wildcards: false }) === undefined) throw new Error(`the certificate does not cover ${domain} (${leaf.subjectAltName ?? leaf.subject})`);
  return { cert, key, notBefore: leaf.validFromDate.getTime(), notAfter: leaf.validToDate.getTime(), serial: leaf.serialNumber, fingerprint: leaf.fingerprint256 };
}

/** A file name for a CA directory URL: its host, port and path, e.g. `acme-v02.api.letsencrypt.org-directory`. */
export function directoryFolderName(directoryUrl: string): string {
  const url = new URL(directoryUrl);
  const name = `${url.hostname}${url.port ? `_${url.port}` : ''}${url.pathname}`.replace(/[^A-Za-z0-9._]+/g, '-').replace(/-+$/, '');
  return name.replace(/^\.+/, '_');
}

/** Writes `data` to `file` with `mode` (0600 default): to a temporary file, synced, then renamed over it. */
export async function writeFileAtomic(file: string, data: string, mode = 0o600): Promise<void> {
  const temporary = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const handle = await fs.open(temporary, 'wx', mode);
  try {
    // The mode given to open is masked by the umask; chmod is not.
    await handle.chmod(mode);
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await fs.rm(temporary, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await fs.rename(temporary, file);
  } catch (err) {
    await fs.rm(temporary, { force: true });
    throw err;
  }
}

/** A file read as text, or null when it does not exist. */
async function readIfExists(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Makes `dir` (and its parents) and sets it to 0700, also when it already existed. */
async function privateDirectory(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
}

/**
 * The files of one ACME CA directory under the storage root:
 * `<root>/<directory>/account.key`, `account.json`, `certificates/<domain>/{cert.pem,key.pem,failure.json,order.lock}`.
 */
export class AcmeStorage {
  /** The storage root (absolute). */
  readonly root: string;
  /** This CA directory's folder under the root. */
  readonly dir: string;

  constructor(root: string, directoryUrl: string) {
    this.root = path.resolve(root);
    this.dir = path.join(this.root, directoryFolderName(directoryUrl));
  }

  /** Creates the root, this directory's folder and `certificates/`, each 0700. */
  async prepare(): Promise<void> {
    await privateDirectory(this.root);
    await privateDirectory(this.dir);
    await privateDirectory(path.join(this.dir, 'certificates'));
  }

  /** The folder of `domain`'s files (the name is checked by the manager: no "/", never "." or ".."). */
  domainDir(domain: string): string {
    return path.join(this.dir, 'certificates', domain);
  }

  /** The lock file taken while the account is created. */
  get accountLock(): string {
    return path.join(this.dir, 'account.lock');
  }

  /** The lock file taken while `domain` is ordered. */
  orderLock(domain: string): string {
    return path.join(this.domainDir(domain), 'order.lock');
  }

  /** The account key and URL, or null when none is stored. */
  async readAccount(): Promise<StoredAccount | null> {
    const key = await readIfExists(path.join(this.dir, 'account.key'));
    if (key === null) return null;
    const json = await readIfExists(path.join(this.dir, 'account.json'));
    let url: string | null = null;
    if (json !== null) {
      try {
        const parsed = JSON.parse(json) as { url?: unknown };
        if (typeof parsed.url === 'string') url = parsed.url;
      } catch {
        // A damaged account.json only costs one newAccount request (same key, same account).
      }
    }
    return { key, url };
  }

  /** Stores the account key (PEM). */
  async writeAccountKey(key: string): Promise<void> {
    await writeFileAtomic(path.join(this.dir, 'account.key'), key);
  }

  /** Stores the account URL (null forgets it: the next order registers the key again). */
  async writeAccountUrl(url: string | null, details: Record<string, unknown> = {}): Promise<void> {
    const file = path.join(this.dir, 'account.json');
    if (url === null) await fs.rm(file, { force: true });
    else await writeFileAtomic(file, `${JSON.stringify({ url, ...details }, null, 2)}\n`);
  }

  /**
   * `domain`'s stored certificate, or null when there is none; a stored pair that cannot be
   * used (unreadable, key not matching, not covering the name) is also null, with `problem` told why.
   */
  async readCertificate(domain: string, problem?: (message: string) => void): Promise<StoredCertificate | null> {
    const dir = this.domainDir(domain);
    const [cert, key] = await Promise.all([readIfExists(path.join(dir, 'cert.pem')), readIfExists(path.join(dir, 'key.pem'))]);
    if (cert === null || key === null) return null;
    try {
      return parseCertificate(cert, key, domain);
    } catch (err) {
      problem?.(`${path.join(dir, 'cert.pem')}: ${(err as Error).message}`);
      return null;
    }
  }

  /** Stores `domain`'s key, then its chain (a reader that sees the new chain sees the new key). */
  async writeCertificate(domain: string, pair: { cert: string; key: string }): Promise<void> {
    const dir = this.domainDir(domain);
    await privateDirectory(dir);
    await writeFileAtomic(path.join(dir, 'key.pem'), pair.key);
    await writeFileAtomic(path.join(dir, 'cert.pem'), pair.cert);
  }

  /** The failure the last order of `domain` left (by any instance), or null. */
  async readFailure(domain: string): Promise<StoredFailure | null> {
    const json = await readIfExists(path.join(this.domainDir(domain), 'failure.json'));
    if (json === null) return null;
    try {
      const parsed = JSON.parse(json) as Partial<StoredFailure>;
      if (typeof parsed.failures === 'number' && typeof parsed.nextAttempt === 'number') return { failures: parsed.failures, nextAttempt: parsed.nextAttempt, error: String(parsed.error ?? '') };
    } catch {
      // Unreadable: as if there were none.
    }
    return null;
  }

  /** Stores (or with null removes) `domain`'s failure record. */
  async writeFailure(domain: string, failure: StoredFailure | null): Promise<void> {
    const dir = this.domainDir(domain);
    if (failure === null) {
      await fs.rm(path.join(dir, 'failure.json'), { force: true });
      return;
    }
    await privateDirectory(dir);
    await writeFileAtomic(path.join(dir, 'failure.json'), `${JSON.stringify(failure)}\n`);
  }
}

/** How a lock is waited for and when a holder is taken for gone. */
export interface LockOptions {
  /** A lock not refreshed for this long is stale and broken (ms; the holder refreshes it every third of it). */
  staleAfterMs: number;
  /** Longest wait for another holder before giving up (ms). */
  waitMs: number;
  /** How often a waiter looks again (ms). */
  pollMs: number;
  /** Ends the wait early (the manager stopping). */
  signal?: AbortSignal;
  /** Told once when the lock is held by someone else and the wait begins. */
  onWait?: (holder: LockHolder | null) => void;
}

/** What a lock file says about its holder. */
export interface LockHolder {
  pid: number;
  host: string;
  /** When it was taken, ISO 8601. */
  since: string;
  token: string;
}

/** A lock that is held: refreshed until released. */
export interface HeldLock {
  readonly file: string;
  /** Removes the lock file (if it is still ours) and stops refreshing it; safe to call twice. */
  release(): Promise<void>;
}

/** Thrown when a lock is still held by another live holder after `waitMs`. */
export class LockTimeoutError extends Error {
  readonly holder: LockHolder | null;
  constructor(file: string, waitMs: number, holder: LockHolder | null) {
    super(`${file} is still held${holder ? ` by pid ${holder.pid} on ${holder.host} since ${holder.since}` : ''} after ${Math.round(waitMs / 1000)}s`);
    this.name = 'LockTimeoutError';
    this.holder = holder;
  }
}

function parseHolder(text: string): LockHolder | null {
  try {
    const parsed = JSON.parse(text) as Partial<LockHolder>;
    if (typeof parsed.pid === 'number' && typeof parsed.host === 'string') return { pid: parsed.pid, host: parsed.host, since: String(parsed.since ?? ''), token: String(parsed.token ?? '') };
  } catch {
    // Half-written or foreign: judged by its age alone.
  }
  return null;
}

/** True when `pid` runs on this host (EPERM: it runs, as someone else). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the lock file `file` (created with O_EXCL, holding pid, host, time and a token),
 * waiting while another live holder has it. A lock is stale, and removed, when its holder's pid
 * is gone (same host) or it was not refreshed for `staleAfterMs`. Rejects with
 * LockTimeoutError after `waitMs`, or with the signal's reason when it aborts.
 */
export async function acquireLock(file: string, options: LockOptions): Promise<HeldLock> {
  const deadline = Date.now() + options.waitMs;
  let told = false;
  const me: LockHolder = { pid: process.pid, host: os.hostname(), since: new Date().toISOString(), token: randomBytes(8).toString('hex') };
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  // Bounded by the deadline: each round either takes the lock, breaks a stale one, or sleeps pollMs.
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      const handle = await fs.open(file, 'wx', 0o600);
      try {
        await handle.writeFile(JSON.stringify(me));
      } finally {
        await handle.close();
      }
      return held(file, me, options.staleAfterMs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let text: string;
    let mtime: number;
    try {
      [text, mtime] = await Promise.all([fs.readFile(file, 'utf8'), fs.stat(file).then((s) => s.mtimeMs)]);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    const holder = parseHolder(text);
    const dead = holder !== null && holder.host === me.host && !processAlive(holder.pid);
    if (dead || Date.now() - mtime > options.staleAfterMs) {
      // Removed only if it is still the lock judged stale; another waiter may have replaced it meanwhile.
      const again = await fs.readFile(file, 'utf8').catch(() => null);
      if (again === text) await fs.rm(file, { force: true });
      continue;
    }
    if (!told) {
      told = true;
      options.onWait?.(holder);
    }
    if (Date.now() >= deadline) throw new LockTimeoutError(file, options.waitMs, holder);
    await sleep(Math.min(options.pollMs, Math.max(1, deadline - Date.now())), undefined, { signal: options.signal, ref: false });
  }
}

function held(file: string, me: LockHolder, staleAfterMs: number): HeldLock {
  // Refreshing the mtime tells waiters the holder is alive, however long its order takes.
  const refresh = setInterval(() => {
    const now = new Date();
    fs.utimes(file, now, now).catch(() => {});
  }, Math.max(1000, Math.floor(staleAfterMs / 3)));
  refresh.unref();
  let released = false;
  return {
    file,
    async release() {
      if (released) return;
      released = true;
      clearInterval(refresh);
      const text = await fs.readFile(file, 'utf8').catch(() => null);
      if (text !== null && parseHolder(text)?.token === me.token) await fs.rm(file, { force: true });
    },
  };
}
