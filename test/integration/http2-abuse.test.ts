/**
 * HTTP/2 abuse battery: the 2023-2024 attacks on HTTP/2 servers sent by hand (raw frames over
 * h2c, test/helpers/h2-frames.ts) at a Fulcrum process. Each is measured by what it cost Fulcrum
 * (CPU time and peak resident memory, from /proc) against what it cost the attacker (bytes sent),
 * checked for the protection that stopped it (Fulcrum's `lb_http2_glitches_total` and
 * `lb_http2_goaway_sent_total`), and followed by a normal request that must still be served.
 *
 * - rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs, at three paces;
 * - CONTINUATION flood (CVE-2024-27316 and kin): a header block that never ends;
 * - stream flood: more streams than SETTINGS_MAX_CONCURRENT_STREAMS, none ever answered;
 * - SETTINGS and PING floods, with the acknowledgements read and unread;
 * - slow reader: big answers to a client whose flow-control window never opens.
 *
 * Which limit stops a flood first depends on how the frames fall into the server's reads: many
 * in one read meet nghttp2's and node:http2's own limits (flooded ACK queue, rejected streams),
 * fewer per read meet Fulcrum's counts (`max_resets`, `max_control_frames`). The paced variants
 * are there to reach Fulcrum's counts; the burst ones accept either.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { get, startBackend } from '../helpers/servers.ts';
import { startFulcrumProcess, type FulcrumProcess } from '../helpers/fulcrum-process.ts';
import { eventually } from '../helpers/eventually.ts';
import { RawH2Connection, Setting, continuation, headers, hpackLiteral, ping, requestBlock, rstStream, settings } from '../helpers/h2-frames.ts';

const MAX_CONCURRENT_STREAMS = 100;
const MAX_RESETS = 200;
const MAX_CONTROL_FRAMES = 1000;
/** nghttp2's own limit on incoming RST_STREAM (1.57+, `nghttp2_option_set_stream_reset_rate_limit`): a bucket of 1000, 33 a second. */
const NGHTTP2_RESET_BURST = 1000;
const MiB = 2 ** 20;
/** Growth of peak RSS an attack may cause: generous, and far under what buffering the attack would take. */
const RSS_BOUND = 100 * MiB;
/** Every attack loop stops after this long whatever happens, ms. */
const ATTACK_MS = 8000;

const ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/** CPU time (user + system) a process used so far, ms, from /proc/<pid>/stat fields 14 and 15. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The fields after the command name, which is in parentheses and may hold spaces: field 3 is index 0.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond;
}

/** VmRSS (resident now) or VmHWM (peak resident) of a process, bytes. */
function memory(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Resets a process's peak RSS (VmHWM) to its current RSS (proc(5): clear_refs "5"), so each attack's peak is its own. */
function resetPeak(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/** Prometheus samples of one metric family, keyed by their label text. */
async function samples(fulcrum: FulcrumProcess, name: string): Promise<Map<string, number>> {
  const text = (await get(`${fulcrum.url}/metrics`)).body;
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf('}');
    out.set(line.slice(name.length + 1, close), Number(line.slice(close + 2)));
  }
  return out;
}

/** Fulcrum's protection counts: glitches by kind and GOAWAYs sent by code, as `kind` and `GOAWAY code` keys. */
async function protections(fulcrum: FulcrumProcess): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const [labels, n] of await samples(fulcrum, 'lb_http2_glitches_total')) out.set(/kind="([^"]+)"/.exec(labels)![1], n);
  for (const [labels, n] of await samples(fulcrum, 'lb_http2_goaway_sent_total')) out.set(`GOAWAY ${/code="([^"]+)"/.exec(labels)![1]}`, n);
  return out;
}

/** One line of the measurement table. */
interface Row {
  attack: string;
  bytesSent: number;
  ms: number;
  cpuMs: number;
  rssBefore: number;
  rssPeak: number;
  /** What the attacker saw: GOAWAY, RST_STREAM codes, socket errors. */
  ended: string;
  /** What Fulcrum counted during the attack (`protections` differences). */
  fired: Map<string, number>;
}

const rows: Row[] = [];

/**
 * Runs an attack while measuring Fulcrum's CPU time and peak RSS, then reads which protections
 * fired; asserts the RSS bound. `run` resolves with the attacker's bytes and what it saw.
 */
async function measured(fulcrum: FulcrumProcess, attack: string, run: () => Promise<{ bytesSent: number; ended: string }>): Promise<Row> {
  const pid = fulcrum.child.pid!;
  const countsBefore = await protections(fulcrum);
  resetPeak(pid);
  const rssBefore = memory(pid, 'VmRSS');
  const cpuBefore = cpuMs(pid);
  const started = performance.now();
  const outcome = await run();
  const row: Row = { attack, ...outcome, ms: performance.now() - started, cpuMs: cpuMs(pid) - cpuBefore, rssBefore, rssPeak: memory(pid, 'VmHWM'), fired: new Map() };
  rows.push(row);
  // A session's error is counted when its socket has closed, a moment after the attacker saw the end.
  const fired = async (): Promise<Map<string, number>> => {
    const now = await protections(fulcrum);
    return new Map([...now].filter(([key, n]) => n > (countsBefore.get(key) ?? 0)).map(([key, n]) => [key, n - (countsBefore.get(key) ?? 0)]));
  };
  const counted = await eventually(async () => {
    const now = await fired();
    return now.size > 0 ? now : null;
  }, { timeout: 2000, what: 'a protection counted' }).catch(fired);
  row.fired = counted ?? new Map();
  assert.ok(row.rssPeak - row.rssBefore < RSS_BOUND, `${attack}: peak RSS grew by ${((row.rssPeak - row.rssBefore) / MiB).toFixed(1)} MiB`);
  return row;
}

/** The process is alive and a normal HTTP/2 request through it is answered. */
async function assertServes(fulcrum: FulcrumProcess): Promise<void> {
  assert.equal(fulcrum.child.exitCode, null, `fulcrum exited:\n${fulcrum.output()}`);
  assert.equal(fulcrum.child.signalCode, null, `fulcrum was killed:\n${fulcrum.output()}`);
  const session = http2.connect(fulcrum.url);
  session.on('error', () => {});
  try {
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = session.request({ ':path': '/', ':method': 'GET' });
      const timer = setTimeout(() => reject(new Error('no answer to a normal request within 5s')), 5000);
      let status = 0;
      let body = '';
      req.on('response', (h) => (status = Number(h[':status'])));
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        clearTimeout(timer);
        resolve({ status, body });
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    assert.deepEqual(answer, { status: 200, body: 'ok' });
  } finally {
    session.destroy();
  }
}

/** Writes `unit` again and again until `limit` bytes, the end of the connection, or ATTACK_MS; `gapMs` between writes when pacing. */
async function flood(conn: RawH2Connection, unit: Buffer, limit: number, gapMs = 0): Promise<number> {
  const deadline = performance.now() + ATTACK_MS;
  let writes = 0;
  while (conn.bytesSent < limit && !conn.stopped && performance.now() < deadline) {
    if (!conn.write(unit)) await conn.drained();
    writes++;
    // Pacing is the point of a paced flood; otherwise one turn lets the server's frames (GOAWAY) in.
    if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
    else await nextTurn();
  }
  return writes;
}

/** How a connection ended, as the attacker saw it: GOAWAY code, RST_STREAM codes, socket error. */
function ending(conn: RawH2Connection): string {
  const parts: string[] = [];
  if (conn.goaway !== null) parts.push(`GOAWAY ${conn.goaway.code} last=${conn.goaway.lastStreamId}`);
  for (const [code, n] of conn.resets) parts.push(`RST ${code} x${n}`);
  // A server that closes with our frames unread sends a TCP RST, which may discard its GOAWAY before we read it.
  if (conn.error !== null) parts.push(conn.error);
  if (!conn.closed) parts.push('still open');
  return parts.join(', ') || 'closed, no GOAWAY';
}

function firedText(fired: Map<string, number>): string {
  return [...fired].map(([key, n]) => (n === 1 ? key : `${key} x${n}`)).join(', ') || 'nothing';
}

test('HTTP/2 abuse battery: each attack is cut or bounded, and Fulcrum keeps serving', { timeout: 60_000 }, async (t) => {
  const BIG = 50 * MiB;
  const chunk = Buffer.alloc(64 * 1024, 'b');
  const reached = new Map<string, number>();
  const held: http.ServerResponse[] = [];
  const big = { started: 0, open: 0, written: 0, blocked: new Set<http.ServerResponse>() };
  const backend = await startBackend(t, (req, res) => {
    const path = new URL(req.url!, 'http://x').pathname;
    reached.set(path, (reached.get(path) ?? 0) + 1);
    if (path.startsWith('/hold')) return void held.push(res);
    if (path !== '/big') return void res.end('ok');
    // 50 MiB with backpressure: `blocked` holds the answers waiting for the proxy to read.
    big.started++;
    big.open++;
    res.on('close', () => {
      big.open--;
      big.blocked.delete(res);
    });
    res.writeHead(200, { 'content-length': String(BIG) });
    let left = BIG;
    const more = (): void => {
      big.blocked.delete(res);
      while (left > 0 && !res.destroyed) {
        const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= piece.length;
        big.written += piece.length;
        if (!res.write(piece)) {
          big.blocked.add(res);
          return void res.once('drain', more);
        }
      }
      if (left === 0) res.end();
    };
    more();
  });
  t.after(() => {
    for (const res of held) res.destroy();
  });
  // keepalive_timeout longer than any attack: an idle session's GOAWAY (NO_ERROR) is not a protection firing.
  const fulcrum = await startFulcrumProcess(
    t,
    `listeners:
  - host: 127.0.0.1
    port: 0
    metrics_path: /metrics
    keepalive_timeout: 30s
    http2: {h2c: true, max_concurrent_streams: ${MAX_CONCURRENT_STREAMS}, max_resets: ${MAX_RESETS}, reset_window: 10s, max_control_frames: ${MAX_CONTROL_FRAMES}}
log: {level: info, access_log: false}
pools:
  web:
    upstreams: ["${backend.url}"]
`,
  );
  // Warm up: the first requests load code and grow the heap once.
  for (let i = 0; i < 20; i++) await assertServes(fulcrum);
  // HTTP/2 streams Fulcrum has in flight (the sum over the gauge's samples).
  const streamsInFlight = async (): Promise<number> => [...(await samples(fulcrum, 'lb_http2_streams')).values()].reduce((a, b) => a + b, 0);
  const releaseHeld = async (): Promise<void> => {
    for (const res of held.splice(0)) res.end('late');
    await eventually(async () => (await streamsInFlight()) === 0, { what: 'no HTTP/2 stream in flight' });
  };

  // `burst` writes the pairs as fast as the socket takes them: thousands of pairs in one read
  // meet node:http2's and nghttp2's own limits before Fulcrum sees a stream. `synced` sends 90
  // pairs with the preface (an h2c session's first read, handed to nghttp2 from JavaScript, so
  // every stream is reset before its 'stream' event), then batches of 10 pairs and a PING, each
  // batch after the last one's PING ACK: only Fulcrum's count stops it before nghttp2's bucket of
  // 1000, and only if it counts the 90. `late` resets streams only once the backend has their
  // request, the kind that costs an upstream request each.
  for (const pace of ['burst', 'synced', 'late'] as const) {
    await t.test(`rapid reset (${pace}): the session is closed after about max_resets resets`, async (t: TestContext) => {
      const path = pace === 'late' ? '/hold-rr' : `/rr-${pace}`;
      let pairs = 0;
      let conn!: RawH2Connection;
      const block = requestBlock({ path });
      const pairsFrom = (from: number, count: number): Buffer[] => Array.from({ length: count }, (_, i) => [headers(from + 2 * i, block, { endStream: true }), rstStream(from + 2 * i)]).flat();
      const row = await measured(fulcrum, `rapid reset, ${pace}`, async () => {
        let id = 1;
        if (pace === 'synced') {
          conn = await RawH2Connection.connect(fulcrum.port, { opening: Buffer.concat(pairsFrom(1, 90)) });
          pairs = 90;
          id = 181;
        } else {
          conn = await RawH2Connection.connect(fulcrum.port);
        }
        t.after(() => conn.close());
        const deadline = performance.now() + ATTACK_MS;
        while (pairs < 10_000 && !conn.stopped && performance.now() < deadline) {
          if (pace === 'synced') {
            const acks = conn.acks.get('PING') ?? 0;
            conn.write(Buffer.concat([...pairsFrom(id, 10), ping()]));
            await eventually(() => (conn.acks.get('PING') ?? 0) > acks || conn.stopped, { what: 'the PING after the batch acknowledged', timeout: 5000 });
            pairs += 10;
            id += 20;
          } else if (pace === 'late') {
            const ids = Array.from({ length: 10 }, (_, i) => id + 2 * i);
            const seen = reached.get(path) ?? 0;
            conn.write(Buffer.concat(ids.map((n) => headers(n, block, { endStream: true }))));
            await eventually(() => (reached.get(path) ?? 0) >= seen + ids.length || conn.stopped, { what: 'the backend holding the new requests', timeout: 5000 });
            conn.write(Buffer.concat(ids.map((n) => rstStream(n))));
            pairs += 10;
            id += 20;
          } else {
            if (!conn.write(Buffer.concat(pairsFrom(id, 20)))) await conn.drained();
            pairs += 20;
            id += 40;
            // One turn lets the server's frames (GOAWAY) in.
            await nextTurn();
          }
        }
        await eventually(() => conn.closed, { what: 'the session closed', timeout: 5000 });
        return { bytesSent: conn.bytesSent, ended: `${pairs} pairs sent; ${ending(conn)}` };
      });
      conn.close();
      await releaseHeld();
      const upstream = reached.get(path) ?? 0;
      row.ended += `; ${upstream} reached the backend`;
      if (pace !== 'burst') {
        // Fulcrum's own count ends it, within two batches of 10 past max_resets (`late` has one open while it resets the last).
        assert.equal(row.fired.get('rapid_reset'), 1, firedText(row.fired));
        assert.equal(conn.goaway?.code, 'ENHANCE_YOUR_CALM', ending(conn));
        assert.ok(conn.goaway.lastStreamId <= 2 * (MAX_RESETS + 20) + 1, `GOAWAY last stream ${conn.goaway.lastStreamId}: more than max_resets streams were taken`);
        assert.ok(upstream <= MAX_RESETS + 20, `${upstream} reset streams reached the backend`);
      } else {
        // Fulcrum's count, node:http2's limit on refused streams (maxSessionRejectedStreams) or nghttp2's RST_STREAM bucket, whichever the reads meet first.
        assert.ok(row.fired.has('rapid_reset') || row.fired.has('protocol_error'), `no protection counted: ${firedText(row.fired)}; ${ending(conn)}`);
        assert.ok(upstream <= MAX_RESETS + MAX_CONCURRENT_STREAMS, `${upstream} reset streams reached the backend`);
      }
      // Fulcrum counts in JavaScript, after node:http2 has handed over a whole read: within one read only nghttp2's own limit applies.
      if (conn.goaway !== null) assert.ok(conn.goaway.lastStreamId <= 2 * (NGHTTP2_RESET_BURST + MAX_CONCURRENT_STREAMS) + 1, `GOAWAY last stream ${conn.goaway.lastStreamId}: more streams were taken than any limit allows`);
      await assertServes(fulcrum);
    });
  }

  await t.test('CONTINUATION flood: a header block that never ends is cut early, memory flat', async (t: TestContext) => {
    let conn!: RawH2Connection;
    const row = await measured(fulcrum, 'CONTINUATION flood', async () => {
      conn = await RawH2Connection.connect(fulcrum.port);
      t.after(() => conn.close());
      conn.write(headers(1, requestBlock({ path: '/cont' }), { endStream: true, endHeaders: false }));
      // Whole header fields per frame, each new to the server (literal without indexing), up to the default 16 KiB frame size.
      const fields: Buffer[] = [];
      let size = 0;
      for (let i = 0; ; i++) {
        const field = hpackLiteral(`x-flood-${i}`, 'a'.repeat(100));
        if (size + field.length > 16_384) break;
        fields.push(field);
        size += field.length;
      }
      const frame = continuation(1, Buffer.concat(fields));
      const writes = await flood(conn, Buffer.concat(Array.from({ length: 16 }, () => frame)), 50 * MiB);
      await eventually(() => conn.closed, { what: 'the session closed', timeout: 5000 });
      return { bytesSent: conn.bytesSent, ended: `${writes * 16} CONTINUATION frames sent; ${ending(conn)}` };
    });
    // nghttp2 (1.61+) refuses a header block past its CONTINUATION limit; node:http2 refuses the stream past maxHeaderListPairs first.
    assert.ok(row.fired.has('protocol_error'), firedText(row.fired));
    // What the attacker wrote includes what the kernel's socket buffers took before the close reached it (a few MiB on loopback).
    assert.ok(conn.bytesSent < 16 * MiB, `${conn.bytesSent} bytes of CONTINUATION were taken before the session was closed`);
    assert.equal(reached.get('/cont'), undefined, 'the endless request never reached the backend');
    await assertServes(fulcrum);
  });

  // `acked`: max_concurrent_streams streams held by the backend, then more, batch by batch, after
  // the client acknowledged SETTINGS (past the limit is then a connection error for nghttp2).
  // `unacked`: preface and 300 HEADERS in one write, SETTINGS never acknowledged: nghttp2 refuses
  // the streams past the limit one by one (REFUSED_STREAM) until node:http2's
  // maxSessionInvalidFrames ends the session within the read that opened the streams, which once
  // ended the process (an 'error' on streams Fulcrum's handler never saw alive).
  for (const acked of [true, false]) {
    const variant = acked ? 'SETTINGS acked' : 'SETTINGS unacked, one write';
    await t.test(`stream flood (${variant}): streams past max_concurrent_streams are refused or end the session, the backend sees at most that many`, async (t: TestContext) => {
      const path = `/hold-flood-${acked ? 'acked' : 'unacked'}`;
      const block = requestBlock({ path });
      const burst = (from: number, count: number): Buffer => Buffer.concat(Array.from({ length: count }, (_, i) => headers(from + 2 * i, block, { endStream: true })));
      let opened = 0;
      let conn!: RawH2Connection;
      const row = await measured(fulcrum, `stream flood, ${variant}`, async () => {
        if (acked) {
          conn = await RawH2Connection.connect(fulcrum.port);
          await eventually(() => conn.received.get('SETTINGS'), { what: "the server's SETTINGS (acknowledged)" });
          conn.write(burst(1, MAX_CONCURRENT_STREAMS));
          opened = MAX_CONCURRENT_STREAMS;
          await eventually(() => reached.get(path) === MAX_CONCURRENT_STREAMS, { what: 'the backend holding max_concurrent_streams requests' });
          const deadline = performance.now() + ATTACK_MS;
          while (opened < 1000 && !conn.stopped && performance.now() < deadline) {
            if (!conn.write(burst(2 * opened + 1, 50))) await conn.drained();
            opened += 50;
            await nextTurn();
          }
        } else {
          opened = 3 * MAX_CONCURRENT_STREAMS;
          conn = await RawH2Connection.connect(fulcrum.port, { ackSettings: false, opening: burst(1, opened) });
        }
        t.after(() => conn.close());
        await eventually(() => conn.closed, { what: 'the session closed', timeout: 5000 });
        return { bytesSent: conn.bytesSent, ended: `${opened} streams opened; ${ending(conn)}` };
      });
      const upstream = reached.get(path) ?? 0;
      row.ended += `; ${upstream} reached the backend`;
      // The session's end ends its streams and their upstream requests, without the backend answering.
      await eventually(async () => (await streamsInFlight()) === 0, { what: 'no HTTP/2 stream in flight' });
      await eventually(() => held.every((res) => res.destroyed), { what: 'the held upstream requests cancelled' });
      held.length = 0;
      assert.ok(row.fired.has('protocol_error'), firedText(row.fired));
      assert.ok(upstream <= MAX_CONCURRENT_STREAMS, `${upstream} streams reached the backend`);
      if (acked) assert.equal(upstream, MAX_CONCURRENT_STREAMS);
      else assert.ok((conn.resets.get('REFUSED_STREAM') ?? 0) > 0, `no stream was refused: ${ending(conn)}`);
      await assertServes(fulcrum);
    });
  }

  // `burst`: 100 frames a write as fast as the socket takes them, the acknowledgements read or
  // never read. `paced`: 10 frames a millisecond, acknowledgements read.
  for (const kind of ['SETTINGS', 'PING'] as const) {
    for (const how of ['burst, acks read', 'burst, acks unread', 'paced, acks read'] as const) {
      const name = `${kind} flood, ${how}`;
      await t.test(`${name}: the session is closed past max_control_frames`, async (t: TestContext) => {
        let conn!: RawH2Connection;
        let frames = 0;
        const row = await measured(fulcrum, name, async () => {
          conn = await RawH2Connection.connect(fulcrum.port);
          t.after(() => conn.close());
          if (how === 'burst, acks unread') conn.socket.pause();
          const one = kind === 'PING' ? ping(Buffer.from('floodfld')) : settings([[Setting.HEADER_TABLE_SIZE, 4096]]);
          const perWrite = how.startsWith('paced') ? 10 : 100;
          frames = perWrite * (await flood(conn, Buffer.concat(Array.from({ length: perWrite }, () => one)), 64 * MiB, how.startsWith('paced') ? 1 : 0));
          // An unread socket sees the end only as a failed write; then what the server sent is read.
          conn.socket.resume();
          await eventually(() => conn.closed, { what: 'the session closed', timeout: 5000 });
          return { bytesSent: conn.bytesSent, ended: `${frames} ${kind} sent, ${conn.acks.get(kind) ?? 0} acked; ${ending(conn)}` };
        });
        if (how.startsWith('paced')) {
          assert.equal(row.fired.get('control_flood'), 1, firedText(row.fired));
          assert.equal(conn.goaway?.code, 'ENHANCE_YOUR_CALM', ending(conn));
          // Frames the client wrote while the close was on its way count here too (10 a millisecond; more on a loaded machine):
          // bounded, not exact. That the limit itself fired is asserted above.
          assert.ok(frames <= MAX_CONTROL_FRAMES * 2, `${frames} ${kind} frames were sent before the session closed`);
        } else {
          // Fulcrum's count or nghttp2's own flood limit (1000 queued ACKs), whichever the reads meet first.
          assert.ok(row.fired.has('control_flood') || row.fired.has('protocol_error'), `no protection counted: ${firedText(row.fired)}; ${ending(conn)}`);
        }
        assert.ok(conn.bytesSent < 10 * MiB, `${conn.bytesSent} bytes of ${kind} were taken`);
        await assertServes(fulcrum);
      });
    }
  }

  await t.test('slow reader: 50 MiB answers to a client that never opens its window stay upstream', async (t: TestContext) => {
    const STREAMS = 20;
    let conn!: RawH2Connection;
    let stalled = 0;
    await measured(fulcrum, 'slow reader', async () => {
      conn = await RawH2Connection.connect(fulcrum.port, { initialSettings: [[Setting.INITIAL_WINDOW_SIZE, 1024]] });
      t.after(() => conn.close());
      const block = requestBlock({ path: '/big' });
      conn.write(Buffer.concat(Array.from({ length: STREAMS }, (_, i) => headers(2 * i + 1, block, { endStream: true }))));
      await eventually(() => big.started === STREAMS && big.blocked.size === STREAMS, { what: `all ${STREAMS} backend answers blocked on backpressure`, timeout: 15_000 });
      stalled = big.written;
      // The wait is the point: a second in which a proxy that buffers would go on reading.
      await new Promise((r) => setTimeout(r, 1000));
      return { bytesSent: conn.bytesSent, ended: `${STREAMS} streams; the backend wrote ${(big.written / MiB).toFixed(1)} of ${(STREAMS * BIG) / MiB} MiB; the client got ${conn.dataBytes} DATA bytes` };
    });
    assert.ok(big.written - stalled < 4 * MiB, `the backend went on writing ${((big.written - stalled) / MiB).toFixed(1)} MiB after every answer was blocked`);
    assert.ok(conn.dataBytes <= 65_535, `${conn.dataBytes} DATA bytes sent past the connection window`);
    // A client that leaves ends its session (no half-open HTTP/2), and with it every upstream answer.
    conn.close();
    await eventually(() => big.open === 0, { what: 'the upstream answers cancelled once the client left', timeout: 5000 });
    await assertServes(fulcrum);
  });

  const kib = (n: number): string => (n / 1024).toFixed(0);
  const mib = (n: number): string => (n / MiB).toFixed(1);
  t.diagnostic(`${'attack'.padEnd(38)} ${'sent KiB'.padStart(8)} ${'ms'.padStart(5)} ${'cpu ms'.padStart(6)} ${'rss MiB'.padStart(7)} ${'peak'.padStart(6)}  fired | attacker saw`);
  for (const r of rows) t.diagnostic(`${r.attack.padEnd(38)} ${kib(r.bytesSent).padStart(8)} ${r.ms.toFixed(0).padStart(5)} ${r.cpuMs.toFixed(0).padStart(6)} ${mib(r.rssBefore).padStart(7)} ${mib(r.rssPeak).padStart(6)}  ${firedText(r.fired)} | ${r.ended}`);
});
