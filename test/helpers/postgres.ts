/**
 * A real PostgreSQL for the TCP-balancing tests (Debian package `postgresql`, which brings the
 * server, psql and pgbench): a throwaway cluster in a temp dir (a copy of one initdb per test
 * process), trust authentication for 127.0.0.1 only, durability off, on a free loopback port;
 * stopped and deleted when the test ends. PostgreSQL refuses to run as root, so as root the
 * server runs as the `postgres` system user the Debian package creates.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, appendFileSync, chownSync, constants, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { spawnWatched, type ChildExit } from './child-process.ts';
import { eventually } from './eventually.ts';
import { freePort } from './redis-server.ts';

/** Where Debian installs each PostgreSQL major version (`<root>/<version>/bin`). */
const debianRoot = '/usr/lib/postgresql';
const installHint = 'apt-get install postgresql';

/** A running throwaway PostgreSQL cluster. */
export interface Postgres {
  port: number;
  host: '127.0.0.1';
  /** The cluster's data directory (inside a temp dir removed after the test). */
  dataDir: string;
  /** The `bin` directory of the PostgreSQL version in use. */
  binDir: string;
  /**
   * libpq environment that reaches this server: PGHOST, PGPORT, PGUSER (`postgres`, the
   * superuser), PGDATABASE (`postgres`), PGCONNECT_TIMEOUT (5 s). Pass it to `psql` and
   * `pgbench`, with PGPORT replaced to go through a balancer instead.
   */
  env: Record<string, string>;
  /** The postmaster. */
  child: ChildProcess;
  /** Resolves when the postmaster exits. */
  exited: Promise<ChildExit>;
  /** What the server printed so far, earlier start attempts' output first (for failure messages). */
  output(): string;
  /**
   * Where the start went, in ms: `initdb` (0 but for the first cluster of this process, which
   * makes the template), `copy` (the template copied into this cluster's temp dir), `start`
   * (spawn until pg_isready answers).
   */
  startupMs: { initdb: number; copy: number; start: number };
  /**
   * Fast shutdown (SIGINT: open sessions are ended, then the server exits); SIGKILL to the whole
   * process group if it is not gone within 10 s. Resolves once the postmaster exited.
   */
  stop(): Promise<void>;
  /**
   * SIGKILL to the postmaster and every backend at once, as in a crash of the machine: open
   * connections are reset, nothing is said to the clients. Returns at once; await `exited`.
   */
  kill(): void;
}

/** How to start the cluster. */
export interface PostgresOptions {
  /** The port to listen on (default a free one, chosen again up to 3 times if taken meanwhile). */
  port?: number;
  /** `max_connections` (default 50). */
  maxConnections?: number;
  /** More server settings, written to postgresql.conf as `name = value` (values as PostgreSQL spells them). */
  settings?: Record<string, string | number | boolean>;
  /** A `bin` directory to use instead of the newest `/usr/lib/postgresql/<version>/bin`. */
  binDir?: string;
  /** How long to wait for the server to accept connections, in ms (default 20 000). */
  startTimeoutMs?: number;
}

/** The result of one run of a PostgreSQL client program. */
export interface ClientRun {
  /** Exit status, null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the run overran its time limit and was killed. */
  timedOut: boolean;
}

/** The numbers of a pgbench run, from its summary. */
export interface PgbenchResult {
  /** Transactions per second without the initial connection time. */
  tps: number;
  /** `latency average`, in ms. */
  latencyAverageMs: number;
  /** `number of transactions actually processed`. */
  transactions: number;
  /** `number of failed transactions` (0 when pgbench does not print it; it did not before PostgreSQL 15). */
  failedTransactions: number;
  /** The whole run, for failure messages. */
  run: ClientRun;
}

/**
 * The path of PostgreSQL program `name` (`postgres`, `initdb`, `psql`, `pgbench`, ...) in the
 * newest Debian version directory that has it, or null. Debian's `/usr/bin/psql` and
 * `/usr/bin/pgbench` are pg_wrapper, which picks a version by the clusters it knows; these
 * tests own their cluster, so they call the versioned programs.
 */
export function postgresProgram(name: string, binDir?: string): string | null {
  const dirs = binDir !== undefined ? [binDir] : versionDirs().map((version) => join(debianRoot, version, 'bin'));
  for (const dir of dirs) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not in this version
    }
  }
  return null;
}

/** Version directories under /usr/lib/postgresql, newest first. */
function versionDirs(): string[] {
  try {
    return readdirSync(debianRoot)
      .filter((name) => /^\d+(\.\d+)?$/.test(name))
      .sort((a, b) => Number(b) - Number(a));
  } catch {
    return [];
  }
}

/** uid and gid of the `postgres` system user, or null when there is none. */
function postgresUser(): { uid: number; gid: number } | null {
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : null;
  } catch {
    return null;
  }
}

/**
 * Why a test needing PostgreSQL cannot run here (for `test(name, { skip: postgresSkip() })`),
 * or false. With CI set it is always false: on CI a missing PostgreSQL fails the test (through
 * `startPostgres`'s error) instead of hiding it behind a skip.
 */
export function postgresSkip(): string | false {
  if (process.env.CI && process.env.CI !== 'false') return false;
  const server = postgresProgram('postgres');
  const binDir = server === null ? undefined : server.slice(0, -'/postgres'.length);
  const missing = ['postgres', 'initdb', 'pg_isready', 'psql', 'pgbench'].filter((name) => binDir === undefined || postgresProgram(name, binDir) === null);
  if (missing.length > 0) return `no PostgreSQL ${missing.join(', ')} under ${debianRoot}/<version>/bin (Debian: ${installHint}; .ci/run does)`;
  if (process.getuid?.() === 0 && postgresUser() === null) return `running as root and there is no postgres user to run the server as (Debian: ${installHint} creates it)`;
  return false;
}

/**
 * Clusters made by initdb once per process and bin dir, copied for each startPostgres: a copy
 * (39 MB, `cp -a`) takes a tenth of initdb's time. Removed when the process exits.
 */
const templates = new Map<string, Promise<{ dataDir: string; initdbMs: number }>>();

/** This process's template cluster for `initdb` (made on first use), owned by `owner` if given. */
function template(initdb: string, owner: { uid: number; gid: number } | undefined): Promise<{ dataDir: string; initdbMs: number }> {
  let made = templates.get(initdb);
  if (made === undefined) {
    made = (async () => {
      const root = mkdtempSync(join(tmpdir(), 'fulcrum-pg-template-'));
      process.once('exit', () => rmSync(root, { recursive: true, force: true }));
      if (owner) chownSync(root, owner.uid, owner.gid);
      const dataDir = join(root, 'data');
      const began = performance.now();
      // The programs run from the temp dir: as the postgres user they may not be able to read the test's working directory.
      const init = await run(initdb, ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions'], { cwd: root, env: serverEnv(), ...owner }, 60_000);
      if (init.code !== 0) throw new Error(`initdb failed (${init.timedOut ? 'timed out' : `exit ${init.code ?? init.signal}`}):\n${init.stdout}${init.stderr}`);
      return { dataDir, initdbMs: performance.now() - began };
    })();
    templates.set(initdb, made);
    // A failed initdb is tried again by the next cluster rather than remembered.
    made.catch(() => templates.delete(initdb));
  }
  return made;
}

/**
 * Makes a cluster (superuser `postgres`, UTF8, C locale; trust for 127.0.0.1, no other client
 * may connect) in a new temp dir, as a copy of this process's initdb template, and starts it
 * on `options.port` or a free port. Settings: listen_addresses 127.0.0.1, the Unix socket in the
 * temp dir, fsync, synchronous_commit and full_page_writes off, shared_buffers 16MB,
 * max_connections 50, then `options.settings`. Resolves once pg_isready says it accepts
 * connections. Throws, with what initdb or the server printed, when a program is missing,
 * initdb fails, or the server does not accept connections within `startTimeoutMs`. Stopped
 * (fast shutdown) and deleted when the test ends.
 */
export async function startPostgres(t: TestContext, options: PostgresOptions = {}): Promise<Postgres> {
  const postgresPath = postgresProgram('postgres', options.binDir);
  if (postgresPath === null) throw new Error(`no PostgreSQL server under ${options.binDir ?? `${debianRoot}/<version>/bin`} (${installHint})`);
  const binDir = postgresPath.slice(0, -'/postgres'.length);
  const program = (name: string): string => {
    const path = postgresProgram(name, binDir);
    if (path === null) throw new Error(`no ${name} in ${binDir} (${installHint})`);
    return path;
  };
  const [initdb, pgIsready] = [program('initdb'), program('pg_isready')];
  // PostgreSQL exits at once when run as root ("root" execution of the PostgreSQL server is not permitted).
  let owner: { uid: number; gid: number } | undefined;
  if (process.getuid?.() === 0) {
    const user = postgresUser();
    if (user === null) throw new Error(`running as root and there is no postgres user to run PostgreSQL as (${installHint} creates it)`);
    owner = user;
  }

  const root = mkdtempSync(join(tmpdir(), 'fulcrum-pg-'));
  let stopServer: (() => Promise<void>) | undefined;
  t.after(async () => {
    await stopServer?.();
    rmSync(root, { recursive: true, force: true });
  });
  if (owner) chownSync(root, owner.uid, owner.gid);
  const dataDir = join(root, 'data');
  const spawnOptions = { cwd: root, env: serverEnv(), ...owner };
  // What the servers of failed start attempts (a port taken meanwhile) printed.
  let earlier = '';

  const firstOfProcess = !templates.has(initdb);
  const made = await template(initdb, owner);
  let began = performance.now();
  // -a keeps the owner (the postgres user), which the server insists on.
  const copy = await run('cp', ['-a', made.dataDir, dataDir], {}, 60_000);
  if (copy.code !== 0) throw new Error(`cannot copy the template cluster ${made.dataDir} to ${dataDir}: ${copy.stderr}`);
  const copyMs = performance.now() - began;
  // initdb's own file also lets in local and ::1 connections; only loopback IPv4 may connect.
  writeFileSync(join(dataDir, 'pg_hba.conf'), '# TYPE  DATABASE  USER  ADDRESS       METHOD\nhost    all       all   127.0.0.1/32  trust\n');
  const settings: Record<string, string | number | boolean> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: root,
    fsync: false,
    synchronous_commit: false,
    full_page_writes: false,
    shared_buffers: '16MB',
    max_connections: options.maxConnections ?? 50,
    ...options.settings,
  };
  appendFileSync(join(dataDir, 'postgresql.conf'), `\n# startPostgres (test/helpers/postgres.ts)\n${Object.entries(settings).map(([name, value]) => `${name} = ${confValue(value)}`).join('\n')}\n`);

  const startTimeoutMs = options.startTimeoutMs ?? 20_000;
  // A free port can be taken between freePort() and the server's bind; then try another.
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort());
    began = performance.now();
    // detached: the postmaster leads its own process group, so kill() can reach every backend with one signal.
    const server = spawnWatched(postgresPath, ['-D', dataDir, '-p', String(port)], { ...spawnOptions, detached: true });
    const { child, exited, running } = server;
    const output = (): string => earlier + server.output();
    const killGroup = (): void => {
      if (!running()) return;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const stop = async (): Promise<void> => {
      server.kill('SIGINT');
      const timer = setTimeout(killGroup, 10_000);
      await exited;
      clearTimeout(timer);
    };
    stopServer = stop;
    const env = { PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres', PGCONNECT_TIMEOUT: '5' };
    // Done waiting when the server answers or is gone (eventually would keep polling a dead one to the deadline).
    let failure: string | undefined;
    try {
      await eventually(async () => !running() || (await run(pgIsready, ['-q', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-t', '1'], { env: serverEnv() }, 5000)).code === 0, {
        timeout: startTimeoutMs,
        interval: 20,
        what: `PostgreSQL on port ${port} to accept connections`,
      });
      const spawnError = server.spawnError();
      if (spawnError) failure = `cannot run ${postgresPath}: ${spawnError.message}`;
      else if (!running()) failure = `the server exited (${child.exitCode ?? child.signalCode})`;
    } catch (err) {
      failure = (err as Error).message;
    }
    if (failure !== undefined) {
      await stop();
      // 'exit' can come before the last of stderr (the reason) is read.
      if (!child.stderr!.readableEnded) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 1000);
          child.stderr!.once('end', () => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      if (options.port === undefined && attempt < 3 && /could not bind|Address already in use/.test(server.output())) {
        earlier = output();
        continue;
      }
      throw new Error(`PostgreSQL did not start on 127.0.0.1:${port}: ${failure}\n${output()}`);
    }
    return {
      port,
      host: '127.0.0.1',
      dataDir,
      binDir,
      env,
      child,
      exited,
      output,
      startupMs: { initdb: firstOfProcess ? Math.round(made.initdbMs) : 0, copy: Math.round(copyMs), start: Math.round(performance.now() - began) },
      stop,
      kill: killGroup,
    };
  }
}

/** A postgresql.conf value: booleans as on/off, numbers bare, strings quoted. */
function confValue(value: string | number | boolean): string {
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  if (typeof value === 'number') return String(value);
  return `'${value.replaceAll("'", "''")}'`;
}

/** The test's environment without libpq's PG* variables (a PGSERVICE or PGOPTIONS of the machine must not reach the tests). */
function serverEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('PG')));
}

/** Runs `command` to its end (or SIGKILL after `timeoutMs`), gathering its output. */
function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; uid?: number; gid?: number }, timeoutMs: number): Promise<ClientRun> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.on('data', (d: Buffer) => (stdout += d));
    child.stderr!.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout, stderr: `${stderr}cannot run ${command}: ${err.message}\n`, timedOut });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** Runs a PostgreSQL client program with `env` (PG* variables of the test process left out); never throws. */
function runClient(name: string, args: string[], env: Record<string, string>, timeoutMs: number): Promise<ClientRun> {
  const path = postgresProgram(name);
  if (path === null) return Promise.resolve({ code: null, signal: null, stdout: '', stderr: `no ${name} under ${debianRoot}/<version>/bin (${installHint})\n`, timedOut: false });
  return run(path, args, { env: { ...serverEnv(), ...env } }, timeoutMs);
}

/**
 * Runs psql with `args` after `-X -v ON_ERROR_STOP=1` (no ~/.psqlrc; a failing statement fails
 * the run), against the server `env` names (a `Postgres`'s `env`, PGPORT changed to go through a
 * balancer). Resolves with the exit status and output; killed after `timeoutMs` (default 30 000).
 * Example: `psql(['-Atc', 'select 1'], pg.env)` prints `1`.
 */
export function psql(args: string[], env: Record<string, string>, { timeoutMs = 30_000 } = {}): Promise<ClientRun> {
  return runClient('psql', ['-X', '-v', 'ON_ERROR_STOP=1', ...args], env, timeoutMs);
}

/**
 * Runs pgbench with `args` against the server `env` names. Resolves with the exit status and
 * output (never throws); killed after `timeoutMs` (default 60 000).
 */
export function pgbench(args: string[], env: Record<string, string>, { timeoutMs = 60_000 } = {}): Promise<ClientRun> {
  return runClient('pgbench', args, env, timeoutMs);
}

/**
 * `pgbench -i -q -s scale` (the TPC-B-like tables, 100 000 accounts per scale unit), then the
 * built-in TPC-B-like script for `seconds` with `clients` connections on `threads` threads
 * (defaults 1, 3, 8, 2: `-T 3 -c 8 -j 2`). Throws with pgbench's output when either run fails
 * or the summary cannot be read.
 */
export async function pgbenchRun(env: Record<string, string>, { scale = 1, seconds = 3, clients = 8, threads = 2, initialize = true, args = [] as string[] } = {}): Promise<PgbenchResult> {
  if (initialize) {
    const init = await pgbench(['-i', '-q', '-s', String(scale)], env);
    if (init.code !== 0) throw new Error(`pgbench -i failed (${init.timedOut ? 'timed out' : `exit ${init.code ?? init.signal}`}):\n${init.stdout}${init.stderr}`);
  }
  const bench = await pgbench(['-T', String(seconds), '-c', String(clients), '-j', String(threads), ...args], env, { timeoutMs: seconds * 1000 + 60_000 });
  if (bench.code !== 0) throw new Error(`pgbench failed (${bench.timedOut ? 'timed out' : `exit ${bench.code ?? bench.signal}`}):\n${bench.stdout}${bench.stderr}`);
  return parsePgbench(bench);
}

/**
 * Reads the summary pgbench prints after a run: `tps = 1234.5 (without initial connection
 * time)` (PostgreSQL 14 and later; `(excluding connections establishing)` before),
 * `latency average = 1.2 ms`, `number of transactions actually processed: 3700` and, from 15 on,
 * `number of failed transactions: 0 (0.000%)`. Throws when the tps or transactions line is missing.
 */
export function parsePgbench(run: ClientRun): PgbenchResult {
  const text = run.stdout;
  const tps = /^tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)$/m.exec(text);
  const transactions = /^number of transactions actually processed: (\d+)/m.exec(text);
  if (!tps || !transactions) throw new Error(`no pgbench summary in:\n${text}${run.stderr}`);
  const latency = /^latency average = ([\d.]+) ms$/m.exec(text);
  const failed = /^number of failed transactions: (\d+)/m.exec(text);
  return {
    tps: Number(tps[1]),
    latencyAverageMs: latency ? Number(latency[1]) : NaN,
    transactions: Number(transactions[1]),
    failedTransactions: failed ? Number(failed[1]) : 0,
    run,
  };
}
