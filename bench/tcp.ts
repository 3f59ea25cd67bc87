/**
 * TCP balancing against real Redis: redis-benchmark (Debian's redis-tools) direct to one
 * redis-server, through Fulcrum (`fulcrum start`, a tcp listener in front of a round-robin tcp
 * pool of three redis-servers) and through HAProxy (`mode tcp`, `balance roundrobin`, the same
 * three) as the reference peer, in rounds whose order rotates so no target always runs first.
 * Prints requests per second (median over rounds) per command and the ratios to direct and to
 * HAProxy. Every child is killed when this process exits.
 *
 *   node bench/tcp.ts [--requests 100000] [--clients 50] [--pipeline 1] [--rounds 3] [--tests set,get]
 *
 * The ratios mean something only on an otherwise idle machine: redis-benchmark, the proxy and
 * the three servers share its cores (print `nproc` and the load average with the results).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, runCommand, startExternalServer, type ChildServer } from './children.ts';

const cli = new URL('../src/cli.ts', import.meta.url).pathname;

/** Command-line options, with their defaults. */
interface Options {
  requests: number;
  clients: number;
  pipeline: number;
  rounds: number;
  tests: string;
}

function parseOptions(argv: string[]): Options {
  const options: Options = { requests: 100_000, clients: 50, pipeline: 1, rounds: 3, tests: 'set,get' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '') as keyof Options;
    const value = argv[i + 1];
    if (!(key in options) || value === undefined) throw new Error(`unknown option ${argv[i]} (expected --requests, --clients, --pipeline, --rounds, --tests)`);
    (options as unknown as Record<string, string | number>)[key] = key === 'tests' ? value : Number(value);
  }
  return options;
}

/** The haproxy program (Debian puts it in /usr/sbin), or null. */
function findHaproxy(): string | null {
  for (const candidate of ['haproxy', '/usr/sbin/haproxy']) {
    const probe = spawnSync(candidate, ['-v'], { stdio: 'ignore', timeout: 5000 });
    if (probe.error === undefined && probe.status === 0) return candidate;
  }
  return null;
}

/** requests per second by command from `redis-benchmark -q` output (its last figure per command: the summary). */
function parseRates(stdout: string): Map<string, number> {
  const rates = new Map<string, number>();
  for (const m of stdout.replaceAll('\r', '\n').matchAll(/^([A-Z_]+): ([\d.]+) requests per second/gm)) rates.set(m[1], Number(m[2]));
  return rates;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fulcrum-bench-tcp-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

  const redis: ChildServer[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    redis.push(await startExternalServer(`redis-server ${i}`, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], port, 'http'));
  }
  const upstreams = redis.map((r) => `tcp://127.0.0.1:${r.port}`);

  const fulcrumPort = await freePort();
  const config = path.join(dir, 'fulcrum.yaml');
  writeFileSync(
    config,
    [
      'listeners:',
      `  - {host: 127.0.0.1, port: ${fulcrumPort}, protocol: tcp, pool: redis}`,
      'log: {level: warn, access_log: false}',
      'pools:',
      `  redis: {protocol: tcp, policy: round-robin, upstreams: [${upstreams.map((u) => `"${u}"`).join(', ')}]}`,
      '',
    ].join('\n'),
  );
  const targets: { name: string; port: number }[] = [{ name: 'direct', port: redis[0].port }];
  const fulcrum = await startExternalServer('fulcrum', process.execPath, ['--max-semi-space-size=8', cli, 'start', '-c', config], fulcrumPort, 'http');
  targets.push({ name: 'fulcrum', port: fulcrum.port });

  const haproxy = findHaproxy();
  if (haproxy !== null) {
    const haproxyPort = await freePort();
    const haproxyConfig = path.join(dir, 'haproxy.cfg');
    writeFileSync(
      haproxyConfig,
      [
        'global',
        '  maxconn 4096',
        '  nbthread 1',
        'defaults',
        '  mode tcp',
        '  timeout connect 5s',
        '  timeout client 60s',
        '  timeout server 60s',
        'listen redis',
        `  bind 127.0.0.1:${haproxyPort}`,
        '  balance roundrobin',
        ...redis.map((r, i) => `  server r${i} 127.0.0.1:${r.port}`),
        '',
      ].join('\n'),
    );
    targets.push({ name: 'haproxy', port: (await startExternalServer('haproxy', haproxy, ['-f', haproxyConfig, '-db'], haproxyPort, 'http')).port });
  } else console.error('haproxy not found (Debian: apt-get install haproxy): no HAProxy column');

  const commands = options.tests.split(',').map((c) => c.toUpperCase());
  const results = new Map<string, Map<string, number[]>>(targets.map((t) => [t.name, new Map(commands.map((c) => [c, []]))]));
  console.log(`redis-benchmark -t ${options.tests} -n ${options.requests} -c ${options.clients} -P ${options.pipeline} -r 100000 -q, ${options.rounds} rounds; ${os.cpus().length} CPUs, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  for (let round = 0; round < options.rounds; round++) {
    // Rotated: each target runs first in some round.
    const order = targets.map((_, i) => targets[(i + round) % targets.length]);
    for (const target of order) {
      const args = ['-h', '127.0.0.1', '-p', String(target.port), '-t', options.tests, '-n', String(options.requests), '-c', String(options.clients), '-P', String(options.pipeline), '-r', '100000', '-q'];
      const rates = parseRates(await runCommand(`redis-benchmark (${target.name})`, 'redis-benchmark', args, 600_000));
      for (const command of commands) {
        const rate = rates.get(command);
        if (rate === undefined) throw new Error(`no ${command} figure from redis-benchmark against ${target.name}`);
        results.get(target.name)!.get(command)!.push(rate);
      }
      console.log(`round ${round + 1} ${target.name.padEnd(7)} ${commands.map((c) => `${c} ${results.get(target.name)!.get(c)!.at(-1)!.toFixed(0)}`).join('  ')}`);
    }
  }
  if (!fulcrum.alive()) throw new Error('Fulcrum exited during the run');

  console.log('\nmedian requests/s (ratio to direct; to HAProxy)');
  for (const command of commands) {
    const direct = median(results.get('direct')!.get(command)!);
    const haproxyRate = results.has('haproxy') ? median(results.get('haproxy')!.get(command)!) : NaN;
    for (const target of targets) {
      const rate = median(results.get(target.name)!.get(command)!);
      const vsHaproxy = Number.isNaN(haproxyRate) || target.name === 'haproxy' ? '' : `; ${(rate / haproxyRate).toFixed(2)} of HAProxy`;
      console.log(`${command.padEnd(4)} ${target.name.padEnd(7)} ${rate.toFixed(0).padStart(8)}  (${(rate / direct).toFixed(2)}${vsHaproxy})`);
    }
  }
  process.exit(0);
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
