/**
 * Plain TCP balancing with real clients and servers from Debian, on 127.0.0.1: redis-benchmark
 * and redis-cli against three redis-server instances, psql and pgbench against three PostgreSQL
 * clusters (skipped without PostgreSQL unless CI is set), each tool also run direct so the
 * diagnostic shows the paired ratio (never asserted: the machine's speed is not Fulcrum's); a
 * redis-server SIGKILLed under load; and SIGTERM on a real `fulcrum start` process holding an
 * open TCP connection.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.ts';
import { parsePgbench, pgbench, postgresSkip, psql, startPostgres, type Postgres } from '../helpers/postgres.ts';
import { startBalancer, startBackend, type TestBalancer } from '../helpers/servers.ts';
import { startFulcrumProcess } from '../helpers/fulcrum-process.ts';
import { eventually } from '../helpers/eventually.ts';
import { connect, startEcho } from '../helpers/tcp.ts';

/** What a program printed and how it ended. */
interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `command` to its end (SIGKILL after `timeoutMs`); never throws (a missing program is exit code null with the reason in stderr). */
function run(command: string, args: string[], timeoutMs = 60_000): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout, stderr: `${stderr}cannot run ${command}: ${err.message}` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A balancer with one tcp listener on 127.0.0.1:0 in front of a round-robin tcp pool `db` of `upstreams`. */
function startTcpBalancer(t: TestContext, upstreams: string[], pool: Record<string, unknown> = {}): Promise<TestBalancer> {
  return startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'tcp', pool: 'db' }],
    pools: { db: { protocol: 'tcp', policy: 'round-robin', upstreams, ...pool } as never },
  });
}

// ---- Redis ----

/** requests per second by command, from `redis-benchmark -q` (the last figure per command: the summary after the progress lines). */
function parseRedisBenchmark(stdout: string): Map<string, number> {
  const rates = new Map<string, number>();
  for (const m of stdout.replaceAll('\r', '\n').matchAll(/^([A-Z_]+): ([\d.]+) requests per second/gm)) rates.set(m[1], Number(m[2]));
  return rates;
}

/** `redis-benchmark -p PORT -t set,get -n 20000 -c 50 -q -r 100000`: random keys, so SETs land as many keys. */
const benchmarkArgs = (port: number): string[] => ['-h', '127.0.0.1', '-p', String(port), '-t', 'set,get', '-n', '20000', '-c', '50', '-q', '-r', '100000'];

async function redisBenchmark(port: number): Promise<Map<string, number>> {
  const out = await run('redis-benchmark', benchmarkArgs(port), 120_000);
  assert.equal(out.code, 0, `redis-benchmark -p ${port}: exit ${out.code ?? out.signal}\n${out.stdout}${out.stderr}`);
  assert.doesNotMatch(out.stdout + out.stderr, /error/i, `redis-benchmark -p ${port} reported an error`);
  const rates = parseRedisBenchmark(out.stdout);
  assert.ok(rates.has('SET') && rates.has('GET'), `no SET and GET summary in:\n${out.stdout}`);
  return rates;
}

async function redisCli(port: number, ...command: string[]): Promise<string> {
  const out = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...command], 10_000);
  assert.equal(out.code, 0, `redis-cli -p ${port} ${command.join(' ')}: ${out.stdout}${out.stderr}`);
  return out.stdout.trim();
}

/** `cmdstat_<name>` of `INFO commandstats`: calls, and the calls Redis refused or that failed. */
async function commandStats(port: number, name: string): Promise<{ calls: number; failed: number; rejected: number }> {
  const info = await redisCli(port, 'info', 'commandstats');
  const m = new RegExp(`^cmdstat_${name}:calls=(\\d+),.*rejected_calls=(\\d+),failed_calls=(\\d+)`, 'm').exec(info);
  return m === null ? { calls: 0, failed: 0, rejected: 0 } : { calls: Number(m[1]), rejected: Number(m[2]), failed: Number(m[3]) };
}

test('redis-benchmark through a tcp pool of three redis-servers and direct to one: every SET and GET answered, spread over all three', { timeout: 180_000 }, async (t) => {
  const redis = await Promise.all([0, 1, 2].map(() => startRedisServer(t)));
  const lb = await startTcpBalancer(t, redis.map((r) => `tcp://127.0.0.1:${r.port}`));

  const direct = await redisBenchmark(redis[0].port);
  // The direct run's keys and counts must not be taken for the balanced run's.
  for (const r of redis) {
    await redisCli(r.port, 'flushall');
    await redisCli(r.port, 'config', 'resetstat');
  }
  const through = await redisBenchmark(lb.port);
  // Connections since CONFIG RESETSTAT: the balanced run's, plus the redis-cli connection asking (1).
  const connections = await Promise.all(redis.map(async (r) => Number(/^total_connections_received:(\d+)/m.exec(await redisCli(r.port, 'info', 'stats'))![1]) - 1));

  const sets = await Promise.all(redis.map((r) => commandStats(r.port, 'set')));
  const gets = await Promise.all(redis.map((r) => commandStats(r.port, 'get')));
  const keys = await Promise.all(redis.map(async (r) => Number(await redisCli(r.port, 'dbsize'))));
  const ratio = (name: string): string => (through.get(name)! / direct.get(name)!).toFixed(2);
  t.diagnostic(`redis-benchmark -t set,get -n 20000 -c 50 -r 100000: SET ${through.get('SET')} req/s through Fulcrum vs ${direct.get('SET')} direct (ratio ${ratio('SET')}); GET ${through.get('GET')} vs ${direct.get('GET')} (ratio ${ratio('GET')})`);
  t.diagnostic(`connections per redis-server: ${connections.join(', ')}; SET calls: ${sets.map((s) => s.calls).join(', ')}; GET calls: ${gets.map((s) => s.calls).join(', ')}; keys: ${keys.join(', ')}`);

  assert.equal(sets.reduce((n, s) => n + s.calls, 0), 20_000, 'every SET reached a redis-server once');
  assert.equal(gets.reduce((n, s) => n + s.calls, 0), 20_000, 'every GET reached a redis-server once');
  assert.deepEqual([...sets, ...gets].map((s) => s.failed + s.rejected), [0, 0, 0, 0, 0, 0], 'no command failed or was rejected');
  // Round-robin deals the benchmark's connections (50 per command) evenly; how many commands each connection sends is the
  // benchmark's doing (a faster server's connections get more), so commands are only required on every server.
  assert.ok(Math.max(...connections) - Math.min(...connections) <= 2 && Math.min(...connections) >= 33, `connections per server: ${connections.join(', ')}`);
  for (const [i, s] of [...sets, ...gets].entries()) assert.ok(s.calls > 0, `redis-server ${i % 3} got no ${i < 3 ? 'SET' : 'GET'}`);
  for (const [i, n] of keys.entries()) assert.ok(n > 0, `redis-server ${i} holds no key`);
});

/** One short Redis session on a new connection: PING and CONFIG GET port, so the answer says which server took it. */
interface Session {
  startedAt: number;
  endedAt: number;
  /** The serving redis-server's port, or null when the session failed. */
  port: number | null;
  error: string | null;
}

function redisSession(port: number): Promise<Session> {
  return new Promise((resolve) => {
    const s: Session = { startedAt: performance.now(), endedAt: 0, port: null, error: null };
    const socket = net.connect({ host: '127.0.0.1', port });
    let text = '';
    const done = (error: string | null): void => {
      if (s.endedAt !== 0) return;
      s.endedAt = performance.now();
      s.error = error;
      socket.destroy();
      resolve(s);
    };
    socket.setTimeout(3000, () => done('no answer within 3 s'));
    socket.on('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    socket.on('close', () => done(`closed after ${JSON.stringify(text)}`));
    socket.once('connect', () => socket.write('PING\r\nCONFIG GET port\r\n'));
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      // +PONG, then *2 $4 port $N <port>
      const m = /^\+PONG\r\n\*2\r\n\$4\r\nport\r\n\$\d+\r\n(\d+)\r\n/.exec(text);
      if (m === null) return;
      s.port = Number(m[1]);
      done(null);
    });
  });
}

test('a redis-server SIGKILLed under load: every connection opened after the kill gets +PONG from the other two at once', { timeout: 120_000 }, async (t) => {
  const redis = await Promise.all([0, 1, 2].map(() => startRedisServer(t)));
  const lb = await startTcpBalancer(t, redis.map((r) => `tcp://127.0.0.1:${r.port}`));
  const victim: RedisServer = redis[1];

  // Load from the Debian client, for as long as its connections last: those to the victim are cut by the kill.
  const bench: ChildProcess = spawn('redis-benchmark', ['-h', '127.0.0.1', '-p', String(lb.port), '-t', 'set', '-n', '2000000', '-c', '20', '-r', '100000', '-q'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let benchOut = '';
  bench.stdout!.on('data', (d: Buffer) => (benchOut += d));
  bench.stderr!.on('data', (d: Buffer) => (benchOut += d));
  const benchEnded = new Promise<number | null>((resolve) => bench.once('close', (code) => resolve(code)));
  bench.once('error', () => {});
  t.after(() => {
    if (bench.exitCode === null && bench.signalCode === null) bench.kill('SIGKILL');
  });

  // And new connections all the time: 8 loops, each one session after another.
  const sessions: Session[] = [];
  let stop = false;
  const loopDeadline = performance.now() + 60_000;
  const loops = Array.from({ length: 8 }, async () => {
    while (!stop && performance.now() < loopDeadline && sessions.length < 20_000) sessions.push(await redisSession(lb.port));
  });
  t.after(() => void (stop = true));

  await eventually(() => new Set(sessions.filter((s) => s.error === null).map((s) => s.port)).size === 3 && sessions.length >= 60, { what: 'sessions on all three servers before the kill', timeout: 20_000 });
  // Its progress lines sit in stdio buffers while piped: the servers' counts tell that it runs.
  await eventually(async () => (await Promise.all(redis.map((r) => commandStats(r.port, 'set')))).reduce((n, c) => n + c.calls, 0) > 500, { what: 'redis-benchmark to be under way', timeout: 20_000 });
  await victim.stop();
  const killedAt = performance.now();
  // Enough sessions after the kill to have met the dead upstream many times over (round-robin: every third pick).
  await eventually(() => sessions.filter((s) => s.startedAt > killedAt && s.endedAt !== 0).length >= 150, { what: '150 sessions after the kill', timeout: 30_000 });
  stop = true;
  await Promise.all(loops);

  const after = sessions.filter((s) => s.startedAt > killedAt);
  const before = sessions.filter((s) => s.startedAt <= killedAt);
  const failedAfter = after.filter((s) => s.error !== null);
  const cutBefore = before.filter((s) => s.error !== null);
  const slowest = Math.max(...after.map((s) => s.endedAt - s.startedAt));
  t.diagnostic(`${before.length} sessions before the kill (${cutBefore.length} cut by it), ${after.length} after; slowest after the kill ${slowest.toFixed(1)} ms`);
  assert.deepEqual(failedAfter.map((s) => s.error), [], 'no connection opened after the kill failed');
  assert.ok(!after.some((s) => s.port === victim.port), 'no session after the kill was served by the dead redis-server');
  assert.deepEqual(new Set(after.map((s) => s.port)), new Set([redis[0].port, redis[2].port]), 'the two survivors share the new connections');

  // redis-cli, the Debian client, on new connections after the kill: PONG every time.
  for (let i = 0; i < 10; i++) assert.equal(await redisCli(lb.port, 'ping'), 'PONG', `redis-cli ping #${i + 1} after the kill`);

  const [, dead] = lb.balancer.pools().get('db')!.upstreams;
  await eventually(() => dead.ejected || !dead.eligible(), { what: 'the dead upstream to be taken out (passive ejection)' });
  bench.kill('SIGKILL');
  const benchCode = await benchEnded;
  t.diagnostic(`redis-benchmark under the kill: ${benchCode === null ? 'still running, stopped by the test' : `exited ${benchCode}`}; last output ${JSON.stringify(benchOut.replaceAll('\r', '\n').trim().split('\n').at(-1))}`);
});

// ---- PostgreSQL ----

/** `pgbench -c 8 -j 2 -T 3 -S` (select-only) against `env`'s server. */
async function pgbenchSelect(env: Record<string, string>): Promise<ReturnType<typeof parsePgbench>> {
  const out = await pgbench(['-c', '8', '-j', '2', '-T', '3', '-S', '-n'], env, { timeoutMs: 90_000 });
  assert.equal(out.code, 0, `pgbench -S against port ${env.PGPORT}: exit ${out.code ?? out.signal}\n${out.stdout}${out.stderr}`);
  return parsePgbench(out);
}

test('psql and pgbench through a tcp pool of three PostgreSQL clusters and direct: connections spread, every transaction done', { skip: postgresSkip(), timeout: 300_000 }, async (t) => {
  const pgs: Postgres[] = await Promise.all([0, 1, 2].map(() => startPostgres(t)));
  t.diagnostic(`three clusters: initdb ${pgs.map((p) => p.startupMs.initdb).join('/')} ms, start ${pgs.map((p) => p.startupMs.start).join('/')} ms (${pgs[0].binDir})`);
  for (const pg of pgs) {
    const init = await pgbench(['-i', '-q', '-s', '1'], pg.env, { timeoutMs: 120_000 });
    assert.equal(init.code, 0, `pgbench -i on port ${pg.port}: ${init.stdout}${init.stderr}`);
  }
  const lb = await startTcpBalancer(t, pgs.map((p) => `tcp://127.0.0.1:${p.port}`));
  const viaFulcrum = { ...pgs[0].env, PGPORT: String(lb.port) };

  // Six sessions round-robin over three: each cluster answers twice.
  const ports: number[] = [];
  for (let i = 0; i < 6; i++) {
    const out = await psql(['-Atc', 'select inet_server_port()'], viaFulcrum);
    assert.equal(out.code, 0, `psql through Fulcrum: ${out.stdout}${out.stderr}`);
    ports.push(Number(out.stdout.trim()));
  }
  t.diagnostic(`psql select inet_server_port() through Fulcrum, six sessions: ${ports.join(', ')}`);
  assert.deepEqual([...ports].sort(), pgs.flatMap((p) => [p.port, p.port]).sort());

  const direct = await pgbenchSelect(pgs[0].env);
  const through = await pgbenchSelect(viaFulcrum);
  t.diagnostic(`pgbench -c 8 -j 2 -T 3 -S: ${through.tps} tps through Fulcrum vs ${direct.tps} direct (ratio ${(through.tps / direct.tps).toFixed(2)}); latency ${through.latencyAverageMs} ms vs ${direct.latencyAverageMs} ms`);
  for (const [name, r] of [['direct', direct], ['through Fulcrum', through]] as const) {
    assert.ok(r.transactions > 0, `pgbench ${name} did no transaction`);
    assert.equal(r.failedTransactions, 0, `pgbench ${name}: failed transactions`);
  }
  // The 8 pgbench sessions went round-robin too: every cluster served some of them.
  const served = await Promise.all(pgs.map(async (pg) => Number((await psql(['-Atc', "select coalesce(sum(xact_commit), 0) from pg_stat_database where datname = 'postgres'"], pg.env)).stdout.trim())));
  t.diagnostic(`committed transactions per cluster (all runs): ${served.join(', ')}`);
  for (const [i, n] of served.entries()) assert.ok(n > 100, `cluster ${i} committed only ${n} transactions`);
});

// ---- SIGTERM on a real process ----

/** `fulcrum start` with an http listener (the address startFulcrumProcess waits for) and a tcp listener to `echoPort`; resolves with the tcp port. */
async function startTcpFulcrum(t: TestContext, echoPort: number, gracePeriod: string) {
  const web = await startBackend(t, (_req, res) => res.end('ok'));
  const fulcrum = await startFulcrumProcess(
    t,
    [
      'listeners:',
      '  - {host: 127.0.0.1, port: 0}',
      '  - {name: tcp, host: 127.0.0.1, port: 0, protocol: tcp, pool: echo}',
      'log: {level: info, access_log: false}',
      `shutdown: {grace_period: ${gracePeriod}}`,
      'pools:',
      `  web: {upstreams: ["${web.url}"]}`,
      `  echo: {protocol: tcp, upstreams: ["tcp://127.0.0.1:${echoPort}"]}`,
      '',
    ].join('\n'),
  );
  const m = (await eventually(() => /listening on tcp:\/\/[^:]+:(\d+)/.exec(fulcrum.output()), { what: 'the tcp listener address in the log' }))!;
  return { fulcrum, tcpPort: Number(m[1]) };
}

/** Resolves with the connect error code of a new connection to `port` ('' when it connected). */
function connectOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

test('SIGTERM: an open TCP connection still relays during the grace period, new ones are refused, and the process exits once it closes', { timeout: 60_000 }, async (t) => {
  const echo = await startEcho(t, 'hi');
  const { fulcrum, tcpPort } = await startTcpFulcrum(t, echo.port, '20s');
  const client = await connect(tcpPort);
  await eventually(() => client.text() === 'hi\n', { what: 'the greeting through Fulcrum' });

  fulcrum.child.kill('SIGTERM');
  // Probes until the listener is closed: those that connected before the signal was handled count as served.
  await eventually(async () => (await connectOutcome(tcpPort)) === 'ECONNREFUSED', { what: 'new connections to be refused after SIGTERM' });
  const servedBefore = echo.accepted;
  for (let i = 0; i < 5; i++) assert.equal(await connectOutcome(tcpPort), 'ECONNREFUSED', `connection #${i + 1} after the listener closed`);
  client.socket.write('still here');
  await eventually(() => client.text() === 'hi\nstill here', { what: 'bytes relayed after SIGTERM' });
  assert.equal(fulcrum.child.exitCode, null, 'the process waits for the open connection');
  assert.equal(echo.accepted, servedBefore, 'the refused connections never reached the upstream');

  const closedAt = performance.now();
  client.socket.end();
  const exit = await fulcrum.exited;
  const tookMs = performance.now() - closedAt;
  t.diagnostic(`exited ${tookMs.toFixed(0)} ms after the last connection closed (grace period 20 s)`);
  assert.equal(exit.code, 0, fulcrum.output().slice(-1000));
  assert.ok(tookMs < 5000, `exit took ${tookMs} ms after the connection closed: it waited for the grace period`);
});

test('SIGTERM: a TCP connection still open at the end of the grace period is closed, then the process exits', { timeout: 60_000 }, async (t) => {
  const echo = await startEcho(t, 'hi');
  const { fulcrum, tcpPort } = await startTcpFulcrum(t, echo.port, '2s');
  const client = await connect(tcpPort);
  await eventually(() => client.text() === 'hi\n', { what: 'the greeting through Fulcrum' });

  const termAt = performance.now();
  fulcrum.child.kill('SIGTERM');
  client.socket.write('ping');
  await eventually(() => client.text() === 'hi\nping', { what: 'bytes relayed after SIGTERM' });
  await client.closed;
  const closedMs = performance.now() - termAt;
  const exit = await fulcrum.exited;
  const exitMs = performance.now() - termAt;
  t.diagnostic(`client connection closed ${closedMs.toFixed(0)} ms after SIGTERM, process exited at ${exitMs.toFixed(0)} ms (grace period 2 s)`);
  assert.ok(closedMs >= 1900, `the connection was closed after ${closedMs} ms, before the 2 s grace period`);
  assert.ok(exitMs < 4000, `the process exited ${exitMs} ms after SIGTERM, long after the grace period`);
  assert.equal(exit.code, 0, fulcrum.output().slice(-1000));
});
