/**
 * `npm run bench`: one run that measures, side by side,
 *   direct               the backend alone,
 *   fulcrum              Fulcrum as configured by default (its own HTTP/1.1 server and transport http1),
 *   fulcrum-undici       Fulcrum with transport undici,
 *   fulcrum-node-http    Fulcrum with transport node-http,
 *   http-proxy           a plain http-proxy server with a keep-alive agent (the peer),
 *   nginx                nginx as the founders' peer harness configures it (one worker),
 *   fulcrum-https        Fulcrum with an https listener (self-signed ECDSA P-256 certificate made
 *                        at start), keep-alive,
 *   nginx-https          nginx with the same certificate, protocols, ciphers and groups, keep-alive,
 * and the handshake cost, a new connection per request (wrk -H 'Connection: close'):
 *   fulcrum-close        Fulcrum over plain HTTP (TCP connect only),
 *   fulcrum-https-resume Fulcrum over HTTPS, sessions resumed by ticket (wrk offers its last one),
 *   fulcrum-https-full   Fulcrum over HTTPS with session tickets off: a full handshake each time,
 *   nginx-https-resume, nginx-https-full  the same for nginx;
 * prints req/s, p50/p99 latency, errors and ratios, then writes bench/results/latest.json.
 *
 * Backend, proxy and load generator are three processes, so on a 2-core machine the proxy
 * under test gets close to a core of its own rather than sharing an event loop with autocannon.
 *
 *   node bench/run.ts [--connections 64] [--duration 10] [--only direct,http-proxy] [--quick]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { makeCertificate } from '../src/tls/make-certificate.ts';
import { runCommand, startServer, type ChildServer } from './children.ts';
import type { LoadResult } from './load.ts';
import { findNginx, nginxVersion, startNginx, type TlsFiles } from './nginx.ts';
import { computeRatios, ratiosTable, resultsTable, type TargetResult } from './report.ts';
import { haveWrk, runWrk } from './wrk.ts';

/** The V8 flags `fulcrum start` runs with (bin/fulcrum.js), so the benchmark measures what users run. */
const fulcrumNodeArgs = process.env.BENCH_FULCRUM_NODE_ARGS !== undefined ? process.env.BENCH_FULCRUM_NODE_ARGS.split(' ').filter(Boolean) : ['--max-semi-space-size=8'];

const benchDir = import.meta.dirname;

/** What targets start from: the backend, the certificate HTTPS targets serve, nginx if installed. */
interface BenchContext {
  backendUrl: string;
  /** The self-signed certificate made at start (only when a chosen target uses TLS). */
  tls: TlsFiles | null;
  /** nginx's path, or null when it is not installed. */
  nginx: string | null;
}

interface Target {
  name: string;
  label: string;
  /**
   * How clients connect: "keep-alive" (default; autocannon, then wrk) or "close", a new connection
   * per request (wrk only, sending `Connection: close`: autocannon's reconnectRate leaves the last
   * answer of every connection uncounted).
   */
  connection?: 'keep-alive' | 'close';
  /** Whether it serves HTTPS (the run makes a certificate at start for it). */
  https?: boolean;
  /** Why it cannot be measured here, or null. */
  unavailable?(context: BenchContext, wrk: boolean): string | null;
  /** Starts the proxy in front of the backend; null for the backend itself. */
  start(context: BenchContext): Promise<ChildServer> | null;
  /** With --baseline: the transport argument of the other checkout's bench/proxy-fulcrum.ts. */
  baseline?: string;
}

/** Fulcrum (bench/proxy-fulcrum.ts) over `transport`; over HTTPS with the run's certificate when `tls` is given. */
function startFulcrum(name: string, context: BenchContext, transport: string, tls?: { sessionTickets: boolean }): Promise<ChildServer> {
  const args = [context.backendUrl, transport];
  if (tls) args.push('--cert', context.tls!.cert, '--key', context.tls!.key, ...(tls.sessionTickets ? [] : ['--no-session-tickets']));
  return startServer(name, path.join(benchDir, 'proxy-fulcrum.ts'), args, undefined, fulcrumNodeArgs);
}

const needsNginx = (context: BenchContext): string | null => (context.nginx === null ? 'nginx is not installed' : null);
const needsWrk = (_context: BenchContext, wrk: boolean): string | null => (wrk ? null : 'a new connection per request is measured with wrk, which is not on PATH');
const needsBoth = (context: BenchContext, wrk: boolean): string | null => needsNginx(context) ?? needsWrk(context, wrk);

const targets: readonly Target[] = [
  { name: 'direct', label: 'direct', start: () => null },
  { name: 'fulcrum', label: 'fulcrum (own server, http1)', start: (c) => startFulcrum('fulcrum', c, 'http1') },
  { name: 'fulcrum-undici', label: 'fulcrum-undici', baseline: 'undici', start: (c) => startFulcrum('fulcrum-undici', c, 'undici') },
  { name: 'fulcrum-node-http', label: 'fulcrum-node-http', baseline: 'node-http', start: (c) => startFulcrum('fulcrum-node-http', c, 'node-http') },
  {
    name: 'http-proxy',
    label: 'http-proxy (keep-alive agent)',
    start: (c) => startServer('http-proxy', path.join(benchDir, 'proxy-http-proxy.ts'), [c.backendUrl]),
  },
  { name: 'nginx', label: 'nginx (1 worker)', unavailable: needsNginx, start: (c) => startNginx('nginx', c.nginx!, c.backendUrl) },
  { name: 'fulcrum-https', label: 'fulcrum-https', https: true, start: (c) => startFulcrum('fulcrum-https', c, 'http1', { sessionTickets: true }) },
  { name: 'nginx-https', label: 'nginx-https', https: true, unavailable: needsNginx, start: (c) => startNginx('nginx-https', c.nginx!, c.backendUrl, c.tls!) },
  { name: 'fulcrum-close', label: 'fulcrum-close (new conn./req.)', connection: 'close', unavailable: needsWrk, start: (c) => startFulcrum('fulcrum-close', c, 'http1') },
  {
    name: 'fulcrum-https-resume',
    label: 'fulcrum-https-resume (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsWrk,
    start: (c) => startFulcrum('fulcrum-https-resume', c, 'http1', { sessionTickets: true }),
  },
  {
    name: 'nginx-https-resume',
    label: 'nginx-https-resume (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsBoth,
    start: (c) => startNginx('nginx-https-resume', c.nginx!, c.backendUrl, c.tls!),
  },
  {
    name: 'fulcrum-https-full',
    label: 'fulcrum-https-full (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsWrk,
    start: (c) => startFulcrum('fulcrum-https-full', c, 'http1', { sessionTickets: false }),
  },
  {
    name: 'nginx-https-full',
    label: 'nginx-https-full (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsBoth,
    start: (c) => startNginx('nginx-https-full', c.nginx!, c.backendUrl, { ...c.tls!, sessionTickets: false }),
  },
];

const usage = `usage: npm run bench -- [options]
  --connections N   concurrent connections (default 64)
  --duration S      seconds measured per target (default 10; 3 with --quick)
  --only a,b        targets to run (default all): ${targets.map((t) => t.name).join(', ')}
  --rounds N        measure every target N times, rotating the order; report each one's median run (default 1)
  --baseline DIR    also measure the Fulcrum targets of another checkout (e.g. a git worktree of the
                    commit before a change), in the same run: ratios "after / before"
  --quick           3 s per target after a 1 s warm-up`;

interface Settings {
  connections: number;
  duration: number;
  warmup: number;
  /** Rounds over all targets; each target's reported run is its median by req/s. */
  rounds: number;
  targets: Target[];
}

function parseSettings(): Settings {
  const { values } = parseArgs({
    options: {
      connections: { type: 'string' },
      duration: { type: 'string' },
      only: { type: 'string' },
      rounds: { type: 'string' },
      quick: { type: 'boolean', default: false },
      baseline: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  const positive = (text: string | undefined, fallback: number, flag: string): number => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`--${flag} expects a positive whole number, got ${JSON.stringify(text)}\n${usage}`);
    return n;
  };
  let chosen = [...targets];
  if (values.only !== undefined) {
    const names = values.only.split(',').map((s) => s.trim()).filter(Boolean);
    const unknown = names.filter((n) => !targets.some((t) => t.name === n));
    if (unknown.length > 0 || names.length === 0) throw new Error(`--only: unknown target ${unknown.join(', ') || '(none given)'}\n${usage}`);
    chosen = targets.filter((t) => names.includes(t.name));
  }
  if (values.baseline !== undefined) {
    const dir = path.resolve(values.baseline);
    const script = path.join(dir, 'bench', 'proxy-fulcrum.ts');
    // Right after each Fulcrum target, so both see the same machine state.
    chosen = chosen.flatMap((t) =>
      t.baseline !== undefined
        ? [t, { name: `${t.name}@baseline`, label: `${t.label} (baseline ${path.basename(dir)})`, start: (c: BenchContext) => startServer(`${t.name}@baseline`, script, [c.backendUrl, t.baseline!], undefined, fulcrumNodeArgs) }]
        : [t],
    );
  }
  return {
    connections: positive(values.connections, 64, 'connections'),
    duration: positive(values.duration, values.quick ? 3 : 10, 'duration'),
    warmup: values.quick ? 1 : 2,
    rounds: positive(values.rounds, 1, 'rounds'),
    targets: chosen,
  };
}

/** autocannon in its own process: warm-up, then the measured run. */
async function runAutocannon(url: string, settings: Settings): Promise<LoadResult> {
  const args = [path.join(benchDir, 'load.ts'), url, String(settings.connections), String(settings.duration), String(settings.warmup)];
  const budgetMs = (settings.warmup + settings.duration + 20) * 1000;
  const stdout = await runCommand('autocannon', process.execPath, args, budgetMs);
  return JSON.parse(stdout) as LoadResult;
}

/** wrk's request header for a new connection per request. */
const connectionClose = ['Connection: close'];

async function measure(target: Target, context: BenchContext, backend: ChildServer, settings: Settings, wrk: boolean): Promise<TargetResult> {
  const result: TargetResult = { name: target.name, label: target.label };
  const unavailable = target.unavailable?.(context, wrk) ?? null;
  if (unavailable !== null) return { ...result, skipped: unavailable };
  let proxy: ChildServer | null = null;
  try {
    proxy = await target.start(context);
    const url = proxy?.url ?? backend.url;
    if (target.connection === 'close') {
      // wrk's warm-up, as autocannon's is for the others.
      await runWrk(url, settings.connections, settings.warmup, connectionClose);
      result.wrk = await runWrk(url, settings.connections, settings.duration, connectionClose);
    } else {
      result.autocannon = await runAutocannon(url, settings);
      if (wrk) result.wrk = await runWrk(url, settings.connections, settings.duration);
    }
    for (const child of [backend, proxy]) {
      if (child && !child.alive()) throw new Error(`${child.name} exited during the run`);
    }
  } catch (err) {
    result.error = (err as Error).message;
  } finally {
    await proxy?.stop();
  }
  return result;
}

/** The figure a run is ranked and reported by: autocannon's, or wrk's for targets only wrk measures. */
function headline(r: TargetResult): LoadResult | undefined {
  return r.autocannon ?? r.wrk;
}

/** The run with the median req/s (a failed run wins: failures must show). */
function medianRun(list: TargetResult[]): TargetResult {
  const failed = list.find((r) => r.error || r.skipped);
  if (failed) return failed;
  const sorted = [...list].sort((a, b) => headline(a)!.rps - headline(b)!.rps);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpu_model: cpus[0]?.model ?? 'unknown',
    memory_gb: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    loadavg_at_start: os.loadavg().map((n) => Math.round(n * 100) / 100),
  };
}

async function main(): Promise<number> {
  const settings = parseSettings();
  const wrk = haveWrk();
  const host = machine();
  const nginx = findNginx();
  const https = settings.targets.some((t) => t.https);

  // Every step below has its own time limit; this one catches anything they miss.
  const perTarget = settings.warmup + settings.duration * (wrk ? 2 : 1) + 45;
  const guard = setTimeout(() => {
    console.error('bench: overran its time budget; stopping');
    process.exit(1);
  }, (settings.rounds * settings.targets.length * perTarget + 15) * 1000);
  guard.unref();

  console.log('Fulcrum benchmark');
  console.log(`machine: ${host.cpus} x ${host.cpu_model}, ${host.memory_gb} GB, ${host.platform}, load average ${(host.loadavg_at_start as number[]).join(' ')}`);
  console.log(`node:    ${host.node}`);
  console.log(`load:    ${settings.connections} connections, ${settings.duration} s per target after a ${settings.warmup} s warm-up; autocannon${wrk ? ' then wrk' : ''}, in a process of its own`);
  console.log('layout:  backend, proxy under test and load generator each in their own process, all on 127.0.0.1');
  console.log('fulcrum: createBalancer with log level info, JSON access log on (written to /dev/null)');
  console.log('peer:    http-proxy with a keep-alive http.Agent (the fair comparison: without one it opens a connection per request)');
  if (nginx !== null) console.log(`peer:    ${nginxVersion(nginx)}, one worker, upstream keep-alive 64 (as the founders' peer harness runs it)`);
  if (https) {
    console.log('https:   a self-signed ECDSA P-256 certificate made at start; Fulcrum\'s "intermediate" profile (TLS 1.2 and 1.3,');
    console.log('         AEAD ciphers, X25519 first) and the same protocols, ciphers and groups for nginx');
  }
  if (settings.targets.some((t) => t.connection === 'close')) {
    console.log("close:   a new connection per request: wrk -H 'Connection: close' (wrk reconnects after an answer that is not");
    console.log('         keep-alive and offers its last TLS session: -resume rows resume it by ticket, -full rows have');
    console.log('         tickets off on the server, so every request pays a full handshake); wrk only, no autocannon;');
    console.log('         their req/s is the figure: wrk times a request from its write, after connect and handshake');
  }
  if (!wrk) console.log('wrk:     not on PATH, skipped (optional; the new-connection-per-request rows need it)');
  console.log('');

  const certificateDir = https ? mkdtempSync(path.join(os.tmpdir(), 'fulcrum-bench-tls-')) : null;
  const backend = await startServer('backend', path.join(benchDir, 'backend.ts'), []);
  const runs = new Map<string, TargetResult[]>(settings.targets.map((t) => [t.name, []]));
  try {
    let tls: TlsFiles | null = null;
    if (certificateDir !== null) {
      const pair = await makeCertificate({ names: ['127.0.0.1', 'localhost'] });
      tls = { cert: path.join(certificateDir, 'cert.pem'), key: path.join(certificateDir, 'key.pem') };
      writeFileSync(tls.cert, pair.cert);
      writeFileSync(tls.key, pair.key, { mode: 0o600 });
    }
    const context: BenchContext = { backendUrl: backend.url, tls, nginx };
    for (let round = 0; round < settings.rounds; round++) {
      // Each round starts one target later, so no target always runs first (or last) on a noisy machine.
      const order = settings.targets.map((_, i) => settings.targets[(i + round) % settings.targets.length]);
      if (settings.rounds > 1) console.log(`  round ${round + 1} of ${settings.rounds}`);
      for (const target of order) {
        process.stdout.write(`  measuring ${target.label} ... `);
        const result = await measure(target, context, backend, settings, wrk);
        runs.get(target.name)!.push(result);
        const figure = headline(result);
        console.log(result.error ? 'FAILED' : result.skipped ? `skipped: ${result.skipped}` : `${Math.round(figure!.rps)} req/s (${figure!.tool})`);
        if (result.error) console.error(`    ${result.error.replaceAll('\n', '\n    ')}`);
        if (result.skipped) continue;
        if (!backend.alive()) throw new Error('the backend exited; stopping');
        // Let the proxy's sockets close before the next target starts.
        await sleep(500);
      }
    }
  } finally {
    await backend.stop();
    if (certificateDir !== null) rmSync(certificateDir, { recursive: true, force: true });
  }
  const results = settings.targets.map((t) => medianRun(runs.get(t.name)!));

  const tools = wrk ? (['autocannon', 'wrk'] as const) : (['autocannon'] as const);
  const ratios = tools.flatMap((tool) => computeRatios(results, tool));
  for (const tool of tools) {
    console.log('');
    console.log(`Results (${tool}):`);
    // Rows only wrk measures (a new connection per request) are left out of autocannon's table.
    console.log(resultsTable(tool === 'wrk' ? results : results.filter((r) => r.autocannon || r.error || r.skipped), tool));
    const toolRatios = ratios.filter((r) => r.tool === tool);
    if (toolRatios.length > 0) {
      console.log('');
      console.log(`Ratios (${tool}; req/s above 1x and latency below 1x mean the first is better):`);
      console.log(ratiosTable(toolRatios));
    }
  }
  console.log('');
  if (settings.rounds > 1) console.log(`Each figure is the median run of ${settings.rounds} rounds (targets rotated every round).`);
  console.log('Note: figures come from one run on a shared 2-core machine where the load generator, the');
  console.log('proxy and the backend compete for CPU; absolute numbers move between runs, so quote the ratios.');
  console.log('autocannon records latency in whole milliseconds, so its p50/p99 (and their ratios) are coarse.');

  const resultsDir = path.join(benchDir, 'results');
  const file = path.join(resultsDir, 'latest.json');
  mkdirSync(resultsDir, { recursive: true });
  const settingsOut = { connections: settings.connections, duration_s: settings.duration, warmup_s: settings.warmup, targets: settings.targets.map((t) => t.name) };
  const note = 'One run on a shared machine; absolute figures vary between runs, quote the ratios.';
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), machine: host, settings: settingsOut, note, results, ratios }, null, 2) + '\n');
  console.log(`\nwritten: ${path.relative(process.cwd(), file)}`);

  return results.some((r) => r.error) ? 1 : 0;
}

try {
  process.exitCode = await main();
} catch (err) {
  console.error(`bench: ${(err as Error).message}`);
  process.exitCode = 1;
}
