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
 * and HTTP/2, measured with h2load (Debian: nghttp2-client), which also measures direct, fulcrum
 * and nginx over HTTP/1.1 (h2load --h1, as many connections as the h2 rows have streams in
 * flight) so every h2 row has an HTTP/1.1 row from the same tool in the same run:
 *   direct-h2c           the h2c backend alone (node:http2, the same answer as the HTTP/1.1 one),
 *   fulcrum-h2c          h2c with prior knowledge to Fulcrum (`http2.h2c`), HTTP/1.1 to the backend,
 *   nginx-h2c            the same for nginx (`listen ... http2`),
 *   fulcrum-h2           h2 by ALPN over TLS to Fulcrum's https listener, HTTP/1.1 to the backend,
 *   nginx-h2             the same for nginx (`listen ... ssl http2`),
 *   fulcrum-h2-h2c-upstream  h2c to Fulcrum and h2c to the h2c backend (pool `protocol: h2c`);
 * prints req/s, p50/p99 latency, errors and ratios, then writes bench/results/latest.json.
 *
 * Backend, proxy and load generator are three processes, so on a 2-core machine the proxy
 * under test gets close to a core of its own rather than sharing an event loop with autocannon.
 *
 *   node bench/run.ts [--connections 64] [--duration 10] [--only direct,http-proxy] [--quick]
 *                     [--h2-connections 16] [--h2-streams 10]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { makeCertificate } from '../src/tls/make-certificate.ts';
import { runCommand, startServer, type ChildServer } from './children.ts';
import { haveH2load, runH2load, type H2loadRun } from './h2load.ts';
import type { LoadResult } from './load.ts';
import { findNginx, nginxVersion, startNginx, type NginxOptions, type TlsFiles } from './nginx.ts';
import { computeRatios, ratiosTable, resultsTable, type TargetResult, type Tool } from './report.ts';
import { haveWrk, runWrk } from './wrk.ts';

/** The V8 flags `fulcrum start` runs with (bin/fulcrum.js), so the benchmark measures what users run. */
const fulcrumNodeArgs = process.env.BENCH_FULCRUM_NODE_ARGS !== undefined ? process.env.BENCH_FULCRUM_NODE_ARGS.split(' ').filter(Boolean) : ['--max-semi-space-size=8'];

const benchDir = import.meta.dirname;

/** What targets start from: the backend, the certificate HTTPS targets serve, nginx if installed. */
interface BenchContext {
  backendUrl: string;
  /** The h2c backend (node:http2), started only when a chosen target needs it. */
  backendH2cUrl: string | null;
  /** The self-signed certificate made at start (only when a chosen target uses TLS). */
  tls: TlsFiles | null;
  /** nginx's path, or null when it is not installed. */
  nginx: string | null;
  /** nginx's upstream `keepalive`: 64, or the most requests any load generator of the run keeps in flight if more. */
  nginxUpstreamKeepalive: number;
}

/** The optional load generators found on PATH. */
interface Tools {
  wrk: boolean;
  h2load: boolean;
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
  /**
   * h2load's part: "h2", an HTTP/2 row that only h2load measures (h2c with prior knowledge on
   * http://, h2 by ALPN on https://); "h1", h2load --h1 after autocannon and wrk, when h2load is
   * installed, so HTTP/2 rows have an HTTP/1.1 row from the same tool; absent, none.
   */
  h2load?: 'h1' | 'h2';
  /** The backend behind it: the HTTP/1.1 one (default) or the h2c one. */
  backend?: 'http1' | 'h2c';
  /** Why it cannot be measured here, or null. */
  unavailable?(context: BenchContext, tools: Tools): string | null;
  /** Starts the proxy in front of the backend; null for the backend itself. */
  start(context: BenchContext): Promise<ChildServer> | null;
  /** With --baseline: the transport argument of the other checkout's bench/proxy-fulcrum.ts. */
  baseline?: string;
}

/** How a Fulcrum target's listener and pool differ from the defaults. */
interface FulcrumOptions {
  /** An https listener with the run's certificate (ALPN offers h2 and http/1.1, as by default). */
  tls?: { sessionTickets: boolean };
  /** The http listener also serves h2c with prior knowledge (`http2.h2c`). */
  h2c?: boolean;
  /** h2c to the h2c backend (pool `protocol: h2c`) instead of HTTP/1.1 to the HTTP/1.1 one. */
  h2cUpstream?: boolean;
}

/** Fulcrum (bench/proxy-fulcrum.ts) over `transport`, set up as `options` say. */
function startFulcrum(name: string, context: BenchContext, transport: string, options: FulcrumOptions = {}): Promise<ChildServer> {
  const { tls, h2c = false, h2cUpstream = false } = options;
  const args = [h2cUpstream ? context.backendH2cUrl! : context.backendUrl, transport];
  if (tls) args.push('--cert', context.tls!.cert, '--key', context.tls!.key, ...(tls.sessionTickets ? [] : ['--no-session-tickets']));
  if (h2c) args.push('--h2c');
  if (h2cUpstream) args.push('--upstream-protocol', 'h2c');
  return startServer(name, path.join(benchDir, 'proxy-fulcrum.ts'), args, undefined, fulcrumNodeArgs);
}

/** nginx in front of the HTTP/1.1 backend (bench/nginx.ts), set up as `options` say. */
function startNginxPeer(name: string, context: BenchContext, options: Omit<NginxOptions, 'upstreamKeepalive'> = {}): Promise<ChildServer> {
  return startNginx(name, context.nginx!, context.backendUrl, { ...options, upstreamKeepalive: context.nginxUpstreamKeepalive });
}

const needsNginx = (context: BenchContext): string | null => (context.nginx === null ? 'nginx is not installed' : null);
const needsWrk = (_context: BenchContext, tools: Tools): string | null => (tools.wrk ? null : 'a new connection per request is measured with wrk, which is not on PATH');
const needsBoth = (context: BenchContext, tools: Tools): string | null => needsNginx(context) ?? needsWrk(context, tools);
const needsH2load = (_context: BenchContext, tools: Tools): string | null => (tools.h2load ? null : 'HTTP/2 is measured with h2load (Debian: nghttp2-client), which is not on PATH');
const needsNginxAndH2load = (context: BenchContext, tools: Tools): string | null => needsNginx(context) ?? needsH2load(context, tools);

const targets: readonly Target[] = [
  { name: 'direct', label: 'direct', h2load: 'h1', start: () => null },
  { name: 'fulcrum', label: 'fulcrum (own server, http1)', h2load: 'h1', start: (c) => startFulcrum('fulcrum', c, 'http1') },
  { name: 'fulcrum-undici', label: 'fulcrum-undici', baseline: 'undici', start: (c) => startFulcrum('fulcrum-undici', c, 'undici') },
  { name: 'fulcrum-node-http', label: 'fulcrum-node-http', baseline: 'node-http', start: (c) => startFulcrum('fulcrum-node-http', c, 'node-http') },
  {
    name: 'http-proxy',
    label: 'http-proxy (keep-alive agent)',
    start: (c) => startServer('http-proxy', path.join(benchDir, 'proxy-http-proxy.ts'), [c.backendUrl]),
  },
  { name: 'nginx', label: 'nginx (1 worker)', h2load: 'h1', unavailable: needsNginx, start: (c) => startNginxPeer('nginx', c) },
  { name: 'fulcrum-https', label: 'fulcrum-https', https: true, start: (c) => startFulcrum('fulcrum-https', c, 'http1', { tls: { sessionTickets: true } }) },
  { name: 'nginx-https', label: 'nginx-https', https: true, unavailable: needsNginx, start: (c) => startNginxPeer('nginx-https', c, { tls: c.tls! }) },
  { name: 'fulcrum-close', label: 'fulcrum-close (new conn./req.)', connection: 'close', unavailable: needsWrk, start: (c) => startFulcrum('fulcrum-close', c, 'http1') },
  {
    name: 'fulcrum-https-resume',
    label: 'fulcrum-https-resume (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsWrk,
    start: (c) => startFulcrum('fulcrum-https-resume', c, 'http1', { tls: { sessionTickets: true } }),
  },
  {
    name: 'nginx-https-resume',
    label: 'nginx-https-resume (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsBoth,
    start: (c) => startNginxPeer('nginx-https-resume', c, { tls: c.tls! }),
  },
  {
    name: 'fulcrum-https-full',
    label: 'fulcrum-https-full (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsWrk,
    start: (c) => startFulcrum('fulcrum-https-full', c, 'http1', { tls: { sessionTickets: false } }),
  },
  {
    name: 'nginx-https-full',
    label: 'nginx-https-full (new conn./req.)',
    connection: 'close',
    https: true,
    unavailable: needsBoth,
    start: (c) => startNginxPeer('nginx-https-full', c, { tls: { ...c.tls!, sessionTickets: false } }),
  },
  { name: 'direct-h2c', label: 'direct-h2c (node:http2 backend)', h2load: 'h2', backend: 'h2c', unavailable: needsH2load, start: () => null },
  { name: 'fulcrum-h2c', label: 'fulcrum-h2c (h2c, HTTP/1.1 up)', h2load: 'h2', unavailable: needsH2load, start: (c) => startFulcrum('fulcrum-h2c', c, 'http1', { h2c: true }) },
  { name: 'nginx-h2c', label: 'nginx-h2c (h2c, HTTP/1.1 up)', h2load: 'h2', unavailable: needsNginxAndH2load, start: (c) => startNginxPeer('nginx-h2c', c, { http2: true }) },
  {
    name: 'fulcrum-h2',
    label: 'fulcrum-h2 (h2 over TLS, HTTP/1.1 up)',
    h2load: 'h2',
    https: true,
    unavailable: needsH2load,
    start: (c) => startFulcrum('fulcrum-h2', c, 'http1', { tls: { sessionTickets: true } }),
  },
  {
    name: 'nginx-h2',
    label: 'nginx-h2 (h2 over TLS, HTTP/1.1 up)',
    h2load: 'h2',
    https: true,
    unavailable: needsNginxAndH2load,
    start: (c) => startNginxPeer('nginx-h2', c, { tls: c.tls!, http2: true }),
  },
  {
    name: 'fulcrum-h2-h2c-upstream',
    label: 'fulcrum-h2-h2c-upstream (h2c, h2c up)',
    h2load: 'h2',
    backend: 'h2c',
    unavailable: needsH2load,
    start: (c) => startFulcrum('fulcrum-h2-h2c-upstream', c, 'http1', { h2c: true, h2cUpstream: true }),
  },
];

const usage = `usage: npm run bench -- [options]
  --connections N   concurrent connections (default 64)
  --duration S      seconds measured per target (default 10; 3 with --quick)
  --only a,b        targets to run (default all): ${targets.map((t) => t.name).join(', ')}
  --rounds N        measure every target N times, rotating the order; report each tool's median run (default 1)
  --baseline DIR    also measure the Fulcrum targets of another checkout (e.g. a git worktree of the
                    commit before a change), in the same run: ratios "after / before"
  --h2-connections N  h2load: connections of the HTTP/2 rows (default 16)
  --h2-streams N    h2load: streams in flight per HTTP/2 connection (default 10); h2load --h1 rows
                    open connections x streams connections, one request in flight on each
  --quick           3 s per target after a 1 s warm-up`;

interface Settings {
  connections: number;
  duration: number;
  warmup: number;
  /** Rounds over all targets; each target's reported figure per tool is its median run by req/s. */
  rounds: number;
  /** h2load: connections of the HTTP/2 rows. */
  h2Connections: number;
  /** h2load: streams in flight per HTTP/2 connection. */
  h2Streams: number;
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
      'h2-connections': { type: 'string' },
      'h2-streams': { type: 'string' },
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
    h2Connections: positive(values['h2-connections'], 16, 'h2-connections'),
    h2Streams: positive(values['h2-streams'], 10, 'h2-streams'),
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

/** The h2load run of `protocol` with the run's settings (warm-up on the same connections, then the measured period). */
function h2loadRun(protocol: H2loadRun['protocol'], settings: Settings): H2loadRun {
  // HTTP/1.1 gets as many requests in flight as HTTP/2 does: one per connection, no pipelining.
  const connections = protocol === 'h2' ? settings.h2Connections : settings.h2Connections * settings.h2Streams;
  return { protocol, connections, streams: settings.h2Streams, duration: settings.duration, warmup: settings.warmup };
}

/** The two backends: HTTP/1.1, and h2c when a chosen target needs it. */
interface Backends {
  http1: ChildServer;
  h2c: ChildServer | null;
}

async function measure(target: Target, context: BenchContext, backends: Backends, settings: Settings, tools: Tools): Promise<TargetResult> {
  const result: TargetResult = { name: target.name, label: target.label };
  const unavailable = target.unavailable?.(context, tools) ?? null;
  if (unavailable !== null) return { ...result, skipped: unavailable };
  const backend = target.backend === 'h2c' ? backends.h2c! : backends.http1;
  let proxy: ChildServer | null = null;
  try {
    proxy = await target.start(context);
    const url = proxy?.url ?? backend.url;
    if (target.h2load === 'h2') {
      result.h2load = await runH2load(url, h2loadRun('h2', settings));
    } else if (target.connection === 'close') {
      // wrk's warm-up, as autocannon's is for the others.
      await runWrk(url, settings.connections, settings.warmup, connectionClose);
      result.wrk = await runWrk(url, settings.connections, settings.duration, connectionClose);
    } else {
      result.autocannon = await runAutocannon(url, settings);
      if (tools.wrk) result.wrk = await runWrk(url, settings.connections, settings.duration);
      if (target.h2load === 'h1' && tools.h2load) result.h2load = await runH2load(url, h2loadRun('h1', settings));
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

const allTools: readonly Tool[] = ['autocannon', 'wrk', 'h2load'];

/**
 * Each tool's median run by req/s (a failed run wins: failures must show). Per tool, so a row's
 * h2load figure is h2load's own median rather than whatever it was in autocannon's median round.
 */
function medianRun(list: TargetResult[]): TargetResult {
  const failed = list.find((r) => r.error || r.skipped);
  if (failed) return failed;
  const median: TargetResult = { name: list[0].name, label: list[0].label };
  for (const tool of allTools) {
    const measured = list.flatMap((r) => r[tool] ?? []).sort((a, b) => a.rps - b.rps);
    if (measured.length > 0) median[tool] = measured[Math.floor((measured.length - 1) / 2)];
  }
  return median;
}

/** "12345 req/s (autocannon), 13456 req/s (wrk)": every tool's figure of one run. */
function figures(r: TargetResult): string {
  return allTools.flatMap((tool) => (r[tool] ? [`${Math.round(r[tool].rps)} req/s (${tool}${tool === 'h2load' ? ` ${r[tool].protocol}` : ''})`] : [])).join(', ');
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
  const tools: Tools = { wrk: haveWrk(), h2load: haveH2load() };
  const { wrk } = tools;
  const host = machine();
  const nginx = findNginx();
  const https = settings.targets.some((t) => t.https);
  const h2Rows = settings.targets.filter((t) => t.h2load === 'h2');
  const usesH2load = settings.targets.some((t) => t.h2load !== undefined);
  // Fewer kept than in flight and nginx reconnects to the backend all the time (see NginxOptions).
  const nginxUpstreamKeepalive = Math.max(64, settings.connections, usesH2load && tools.h2load ? settings.h2Connections * settings.h2Streams : 0);

  // Every step below has its own time limit; this one catches anything they miss.
  const perTarget = (t: Target): number => {
    if (t.h2load === 'h2') return settings.warmup + settings.duration + 45;
    const h2loadPass = t.h2load === 'h1' && tools.h2load ? settings.warmup + settings.duration : 0;
    return settings.warmup + settings.duration * (wrk ? 2 : 1) + h2loadPass + 45;
  };
  const budget = settings.rounds * settings.targets.reduce((sum, t) => sum + perTarget(t), 0) + 15;
  const guard = setTimeout(() => {
    console.error('bench: overran its time budget; stopping');
    process.exit(1);
  }, budget * 1000);
  guard.unref();

  console.log('Fulcrum benchmark');
  console.log(`machine: ${host.cpus} x ${host.cpu_model}, ${host.memory_gb} GB, ${host.platform}, load average ${(host.loadavg_at_start as number[]).join(' ')}`);
  console.log(`node:    ${host.node}`);
  console.log(`load:    ${settings.connections} connections, ${settings.duration} s per target after a ${settings.warmup} s warm-up; autocannon${wrk ? ' then wrk' : ''}, in a process of its own`);
  console.log('layout:  backend, proxy under test and load generator each in their own process, all on 127.0.0.1');
  console.log('fulcrum: createBalancer with log level info, JSON access log on (written to /dev/null)');
  console.log('peer:    http-proxy with a keep-alive http.Agent (the fair comparison: without one it opens a connection per request)');
  if (nginx !== null) {
    const kept = nginxUpstreamKeepalive === 64 ? 'upstream keep-alive 64 (as the founders\' peer harness runs it)' : `upstream keep-alive ${nginxUpstreamKeepalive} (the harness's 64, raised to the most requests in flight)`;
    console.log(`peer:    ${nginxVersion(nginx)}, one worker, ${kept}`);
  }
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
  if (usesH2load && tools.h2load) {
    const h1 = h2loadRun('h1', settings);
    console.log(`h2load:  one thread; HTTP/2 rows ${settings.h2Connections} connections x ${settings.h2Streams} streams (h2load -c ${settings.h2Connections} -m ${settings.h2Streams}),`);
    console.log(`         HTTP/1.1 rows ${h1.connections} connections x 1 request (h2load --h1 -c ${h1.connections} -m 1): as many requests in flight;`);
    console.log(`         ${settings.duration} s after a ${settings.warmup} s warm-up on the same connections; p50/p99 from its per-request log`);
    if (h2Rows.length > 0) console.log('http2:   HTTP/2 rows are measured by h2load only; h2load also measures direct, fulcrum and nginx over HTTP/1.1 after their other tools');
  } else if (usesH2load) {
    console.log('h2load:  not on PATH (Debian: nghttp2-client): HTTP/2 rows skipped, no h2load --h1 figures');
  }
  console.log('');

  const certificateDir = https ? mkdtempSync(path.join(os.tmpdir(), 'fulcrum-bench-tls-')) : null;
  const backend = await startServer('backend', path.join(benchDir, 'backend.ts'), []);
  // Only when a target that will be measured proxies to it (or is it).
  const needsH2cBackend = tools.h2load && settings.targets.some((t) => t.backend === 'h2c');
  let backendH2c: ChildServer | null = null;
  const runs = new Map<string, TargetResult[]>(settings.targets.map((t) => [t.name, []]));
  try {
    if (needsH2cBackend) backendH2c = await startServer('backend-h2c', path.join(benchDir, 'backend.ts'), ['h2c']);
    const backends: Backends = { http1: backend, h2c: backendH2c };
    let tls: TlsFiles | null = null;
    if (certificateDir !== null) {
      const pair = await makeCertificate({ names: ['127.0.0.1', 'localhost'] });
      tls = { cert: path.join(certificateDir, 'cert.pem'), key: path.join(certificateDir, 'key.pem') };
      writeFileSync(tls.cert, pair.cert);
      writeFileSync(tls.key, pair.key, { mode: 0o600 });
    }
    const context: BenchContext = { backendUrl: backend.url, backendH2cUrl: backendH2c?.url ?? null, tls, nginx, nginxUpstreamKeepalive };
    for (let round = 0; round < settings.rounds; round++) {
      // Each round starts one target later, so no target always runs first (or last) on a noisy machine.
      const order = settings.targets.map((_, i) => settings.targets[(i + round) % settings.targets.length]);
      if (settings.rounds > 1) console.log(`  round ${round + 1} of ${settings.rounds}`);
      for (const target of order) {
        process.stdout.write(`  measuring ${target.label} ... `);
        const result = await measure(target, context, backends, settings, tools);
        runs.get(target.name)!.push(result);
        console.log(result.error ? 'FAILED' : result.skipped ? `skipped: ${result.skipped}` : figures(result));
        if (result.error) console.error(`    ${result.error.replaceAll('\n', '\n    ')}`);
        if (result.skipped) continue;
        for (const b of [backend, backendH2c]) if (b && !b.alive()) throw new Error(`${b.name} exited; stopping`);
        // Let the proxy's sockets close before the next target starts.
        await sleep(500);
      }
    }
  } finally {
    await backend.stop();
    await backendH2c?.stop();
    if (certificateDir !== null) rmSync(certificateDir, { recursive: true, force: true });
  }
  const results = settings.targets.map((t) => medianRun(runs.get(t.name)!));

  const h2Only = new Set(h2Rows.map((t) => t.name));
  const h2loadRows = new Set(settings.targets.filter((t) => t.h2load !== undefined).map((t) => t.name));
  // Which rows each tool's table shows: what it measured, and what failed or was skipped where it would have.
  const rowsOf: Record<Tool, (r: TargetResult) => boolean> = {
    // Rows only wrk measures (a new connection per request) are left out of autocannon's table.
    autocannon: (r) => !h2Only.has(r.name) && (r.autocannon !== undefined || r.error !== undefined || r.skipped !== undefined),
    wrk: (r) => !h2Only.has(r.name),
    h2load: (r) => h2loadRows.has(r.name),
  };
  const printed: Tool[] = ['autocannon', ...(wrk ? (['wrk'] as const) : []), ...(usesH2load ? (['h2load'] as const) : [])];
  const ratios = printed.flatMap((tool) => computeRatios(results, tool));
  for (const tool of printed) {
    // h2load's rows carry the protocol h2load saw spoken: the table mixes HTTP/1.1 and HTTP/2.
    const rows = results.filter(rowsOf[tool]).map((r) => (tool === 'h2load' && r.h2load?.protocol ? { ...r, label: `${r.label} [${r.h2load.protocol}]` } : r));
    if (rows.length === 0) continue;
    console.log('');
    console.log(`Results (${tool}):`);
    console.log(resultsTable(rows, tool));
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
  if (usesH2load) console.log("h2load's rows have more requests in flight than autocannon's and wrk's: compare h2load rows with each other only.");

  const resultsDir = path.join(benchDir, 'results');
  const file = path.join(resultsDir, 'latest.json');
  mkdirSync(resultsDir, { recursive: true });
  const settingsOut = {
    connections: settings.connections,
    duration_s: settings.duration,
    warmup_s: settings.warmup,
    h2load: { h2_connections: settings.h2Connections, h2_streams: settings.h2Streams, h1_connections: settings.h2Connections * settings.h2Streams },
    targets: settings.targets.map((t) => t.name),
  };
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
