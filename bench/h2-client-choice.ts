/**
 * Which HTTP/2 client Fulcrum's upstream transport is built on: node:http2 or undici's
 * (`new Client(url, {allowH2: true, useH2c: true})`). Both are run against the same node:http2
 * server on 127.0.0.1 (h2c, port from the OS) through the cases a proxy must carry:
 *
 * - response trailers after a body, a trailers-only response (HEADERS with END_STREAM carrying
 *   grpc-status, as gRPC errors are sent), and request trailers;
 * - a graceful GOAWAY sent while 6 streams are in flight (`session.goaway(NO_ERROR, third stream
 *   id)`, then the first three answered): do the in-flight ones at or below lastStreamID finish,
 *   are those above reported in a way that tells "not processed" apart, and where does the next
 *   request go;
 * - RST_STREAM REFUSED_STREAM: distinguishable from other failures?
 *
 * Run: `node_modules/.bin/node bench/h2-client-choice.ts`. Prints one table row per case and
 * client; each cell is what was observed, not what the documentation says.
 */
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { Client } from 'undici';

const { NGHTTP2_REFUSED_STREAM, NGHTTP2_NO_ERROR } = http2.constants;
/** Streams in flight when the server sends GOAWAY; the first `processed` of them are at or below lastStreamID. */
const inFlight = 6;
const processed = 3;
/** Bound on every wait, so a client that hangs reads as "hangs" in the table instead of stopping the script. */
const caseTimeoutMs = 3000;

interface Server {
  url: string;
  port: number;
  /** Sessions accepted so far. */
  sessions: number;
  /** Request trailers received per path. */
  requestTrailers: Map<string, Record<string, unknown> | null>;
  /** The sessions' stream handler for /hold: called with each held stream. */
  onHold: ((stream: http2.ServerHttp2Stream) => void) | null;
  close(): Promise<void>;
}

async function startServer(): Promise<Server> {
  const state: Server = {
    url: '',
    port: 0,
    sessions: 0,
    requestTrailers: new Map(),
    onHold: null,
    close: async () => {},
  };
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (session) => {
    state.sessions++;
    sessions.add(session);
    session.on('close', () => sessions.delete(session));
    session.on('error', () => {});
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    const path = String(headers[':path']);
    if (path === '/trailers') {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'abc', 'grpc-status': '0' }));
      stream.end('body');
      return;
    }
    if (path === '/trailers-only') {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'not found' }, { endStream: true });
      return;
    }
    if (path === '/request-trailers') {
      state.requestTrailers.set(path, null);
      stream.on('trailers', (t) => state.requestTrailers.set(path, { ...t }));
      stream.resume();
      stream.on('end', () => {
        stream.respond({ ':status': 200 });
        stream.end(JSON.stringify(state.requestTrailers.get(path)));
      });
      return;
    }
    if (path === '/refuse') {
      stream.close(NGHTTP2_REFUSED_STREAM);
      return;
    }
    if (path === '/hold') {
      state.onHold?.(stream);
      return;
    }
    stream.respond({ ':status': 200 });
    stream.end('ok');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as AddressInfo).port;
  state.url = `http://127.0.0.1:${state.port}`;
  state.close = () =>
    new Promise((resolve) => {
      for (const s of sessions) s.destroy();
      server.close(() => resolve());
    });
  return state;
}

/** Rejects after `ms` with "hangs". */
function bounded<T>(p: Promise<T>, ms = caseTimeoutMs): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`hangs (> ${ms} ms)`)), ms)))]).finally(() => clearTimeout(timer));
}

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { rstCode?: number };
  return `${e?.code ?? e?.name ?? 'error'}: ${e?.message ?? String(err)}`.slice(0, 110);
}

// ---------------------------------------------------------------------------------------- node:http2

interface H2Outcome {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: string;
  trailers: http2.IncomingHttpHeaders | null;
  endStreamOnHeaders: boolean;
}

function h2Request(session: http2.ClientHttp2Session, path: string, options: { trailers?: Record<string, string>; body?: string } = {}): Promise<H2Outcome> & { stream: http2.ClientHttp2Stream } {
  const wantTrailers = options.trailers !== undefined;
  const stream = session.request({ ':method': options.body !== undefined ? 'POST' : 'GET', ':path': path }, { endStream: options.body === undefined && !wantTrailers, waitForTrailers: wantTrailers });
  const p = new Promise<H2Outcome>((resolve, reject) => {
    const out: H2Outcome = { status: 0, headers: {}, body: '', trailers: null, endStreamOnHeaders: false };
    stream.on('response', (headers, flags) => {
      out.status = Number(headers[':status']);
      out.headers = headers;
      out.endStreamOnHeaders = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    stream.on('trailers', (t) => (out.trailers = t));
    stream.on('data', (c: Buffer) => (out.body += c.toString()));
    stream.on('end', () => resolve(out));
    stream.on('error', (err) => reject(Object.assign(err, { rstCode: stream.rstCode })));
    // A stream closed without 'end' or 'error' (a bare RST with NO_ERROR) still settles.
    stream.on('close', () => reject(Object.assign(new Error(`closed, rstCode ${stream.rstCode}`), { rstCode: stream.rstCode })));
  });
  if (wantTrailers) {
    stream.on('wantTrailers', () => stream.sendTrailers(options.trailers!));
    stream.end(options.body ?? '');
  } else if (options.body !== undefined) stream.end(options.body);
  return Object.assign(p, { stream });
}

async function nodeCases(server: Server): Promise<Record<string, string>> {
  const row: Record<string, string> = {};
  const session = http2.connect(server.url);
  session.on('error', () => {});
  try {
    const r = await bounded(h2Request(session, '/trailers'));
    row.trailers = r.trailers !== null ? `yes: x-checksum=${r.trailers['x-checksum']} grpc-status=${r.trailers['grpc-status']}, body "${r.body}"` : 'no trailers seen';
  } catch (err) {
    row.trailers = describe(err);
  }
  try {
    const r = await bounded(h2Request(session, '/trailers-only'));
    row.trailersOnly = `yes: 'response' with END_STREAM flag=${r.endStreamOnHeaders}, grpc-status=${r.headers['grpc-status']} in headers, 'trailers' event ${r.trailers === null ? 'not emitted' : 'emitted'}`;
  } catch (err) {
    row.trailersOnly = describe(err);
  }
  try {
    await bounded(h2Request(session, '/request-trailers', { body: 'x', trailers: { 'x-sum': '42' } }));
    const got = server.requestTrailers.get('/request-trailers');
    row.requestTrailers = got ? `yes (waitForTrailers + sendTrailers): server got x-sum=${String(got['x-sum'])}` : 'no: server saw none';
  } catch (err) {
    row.requestTrailers = describe(err);
  }
  try {
    await bounded(h2Request(session, '/refuse'));
    row.refused = 'completed?!';
  } catch (err) {
    row.refused = `rstCode ${(err as { rstCode?: number }).rstCode} (${describe(err)})`;
  }
  session.close();

  // GOAWAY while `inFlight` streams are open.
  const before = server.sessions;
  const s2 = http2.connect(server.url);
  s2.on('error', () => {});
  let goawaySeen = '';
  s2.on('goaway', (code, last) => (goawaySeen = `'goaway' event (code ${code}, lastStreamID ${last})`));
  const held: http2.ServerHttp2Stream[] = [];
  server.onHold = (stream) => {
    held.push(stream);
    if (held.length < inFlight) return;
    const last = held[processed - 1].id!;
    stream.session!.goaway(NGHTTP2_NO_ERROR, last);
    // The GOAWAY goes out first; then the streams at or below lastStreamID are answered.
    setImmediate(() => {
      for (const s of held) if (s.id! <= last) {
        s.respond({ ':status': 200 });
        s.end(`done ${s.id}`);
      }
    });
  };
  const requests = Array.from({ length: inFlight }, () => h2Request(s2, '/hold'));
  const settled = await Promise.allSettled(requests.map((p) => bounded(p)));
  const ok = settled.filter((s) => s.status === 'fulfilled').length;
  const failures = settled.flatMap((s, i) => (s.status === 'rejected' ? [`#${requests[i].stream.id}: rstCode ${(s.reason as { rstCode?: number }).rstCode}, ${(s.reason as NodeJS.ErrnoException).code ?? ''}`] : []));
  row.goawayInflight = `${ok}/${processed} at or below lastStreamID finished; ${goawaySeen || 'no goaway event'}`;
  row.goawayAbove = failures.length > 0 ? `${failures.length} failed: ${[...new Set(failures.map((f) => f.replace(/^#\d+: /, '')))].join('; ')}` : 'none failed';
  try {
    const next = h2Request(s2, '/');
    try {
      const r = await bounded(next, 1000);
      row.goawayNext = `request() on the GOAWAY session answered ${r.status}?!`;
    } catch (err) {
      row.goawayNext = `request() does not throw; the stream ${describe(err)} (session closed=${s2.closed} destroyed=${s2.destroyed}): the caller must open a session (${server.sessions - before} so far)`;
    }
  } catch (err) {
    row.goawayNext = `request() throws ${(err as NodeJS.ErrnoException).code}: the caller must open a session (${server.sessions - before} so far)`;
  }
  s2.destroy();
  server.onHold = null;
  return row;
}

// ---------------------------------------------------------------------------------------- undici

async function undiciCases(server: Server): Promise<Record<string, string>> {
  const row: Record<string, string> = {};
  const client = new Client(server.url, { allowH2: true, useH2c: true } as ConstructorParameters<typeof Client>[1]);
  try {
    const r = await bounded(client.request({ path: '/trailers', method: 'GET' }));
    const body = await r.body.text();
    const t = r.trailers as Record<string, string>;
    row.trailers = t['x-checksum'] !== undefined ? `request(): yes, x-checksum=${t['x-checksum']}, body "${body}"` : `request(): none (trailers ${JSON.stringify(t)}, body "${body}")`;
  } catch (err) {
    row.trailers = `request(): ${describe(err)}`;
  }
  // The low-level handler API, the one Fulcrum's UndiciClient uses.
  try {
    const t = await bounded(
      new Promise<unknown>((resolve, reject) => {
        client.dispatch({ path: '/trailers', method: 'GET' }, {
          onConnect() {},
          onHeaders: () => true,
          onData: () => true,
          onComplete: resolve,
          onError: reject,
        } as unknown as Parameters<Client['dispatch']>[1]);
      }),
    );
    row.trailers += `; dispatch onComplete: ${Array.isArray(t) ? 'a raw array (as for HTTP/1.1)' : `a header object ${JSON.stringify(t)} (HTTP/1.1 gives a raw array)`}`;
  } catch (err) {
    row.trailers += `; dispatch: ${describe(err)}`;
  }
  try {
    const r = await bounded(client.request({ path: '/trailers-only', method: 'GET' }));
    await r.body.text();
    row.trailersOnly = `status ${r.statusCode}, grpc-status=${String(r.headers['grpc-status'])} in headers, trailers ${JSON.stringify(r.trailers)}`;
  } catch (err) {
    row.trailersOnly = describe(err);
  }
  // undici's request options have no trailers field (client-h2.js: "TODO: add support for sending trailers").
  try {
    const r = await bounded(client.request({ path: '/request-trailers', method: 'POST', body: 'x', headers: { te: 'trailers' } }));
    await r.body.text();
    const got = server.requestTrailers.get('/request-trailers');
    row.requestTrailers = got ? `server got ${JSON.stringify(got)}` : 'no API to send them; server saw none';
  } catch (err) {
    row.requestTrailers = `no API; ${describe(err)}`;
  }
  try {
    const r = await bounded(client.request({ path: '/refuse', method: 'GET' }));
    await r.body.text();
    row.refused = `completed?! status ${r.statusCode}`;
  } catch (err) {
    row.refused = describe(err);
  }
  await client.close().catch(() => {});

  const before = server.sessions;
  const c2 = new Client(server.url, { allowH2: true, useH2c: true, pipelining: inFlight } as ConstructorParameters<typeof Client>[1]);
  const held: http2.ServerHttp2Stream[] = [];
  server.onHold = (stream) => {
    held.push(stream);
    if (held.length < inFlight) return;
    const last = held[processed - 1].id!;
    stream.session!.goaway(NGHTTP2_NO_ERROR, last);
    setImmediate(() => {
      for (const s of held) if (s.id! <= last && !s.destroyed) {
        s.respond({ ':status': 200 });
        s.end(`done ${s.id}`);
      }
    });
  };
  const settled = await Promise.allSettled(
    Array.from({ length: inFlight }, () => bounded(c2.request({ path: '/hold', method: 'GET' }).then(async (r) => `${r.statusCode} ${await r.body.text()}`))),
  );
  const ok = settled.filter((s) => s.status === 'fulfilled').length;
  const reasons = [...new Set(settled.flatMap((s) => (s.status === 'rejected' ? [describe(s.reason)] : [])))];
  row.goawayInflight = `${ok}/${processed} at or below lastStreamID finished (${held.length} streams reached the server)`;
  row.goawayAbove = reasons.length > 0 ? `${settled.length - ok} failed: ${reasons.join('; ')}` : 'none failed';
  server.onHold = null;
  try {
    const r = await bounded(c2.request({ path: '/', method: 'GET' }));
    await r.body.text();
    row.goawayNext = `next request ${r.statusCode} on a new session (${server.sessions - before} sessions opened)`;
  } catch (err) {
    row.goawayNext = describe(err);
  }
  await c2.destroy().catch(() => {});
  return row;
}

const cases: [string, string][] = [
  ['trailers', 'response trailers after a body'],
  ['trailersOnly', 'trailers-only response (HEADERS+END_STREAM, grpc-status)'],
  ['requestTrailers', 'request trailers'],
  ['refused', 'RST_STREAM REFUSED_STREAM'],
  ['goawayInflight', `GOAWAY(NO_ERROR, 3rd id) with ${inFlight} in flight: streams <= lastStreamID`],
  ['goawayAbove', 'GOAWAY: streams > lastStreamID'],
  ['goawayNext', 'GOAWAY: the next request'],
];

const server = await startServer();
try {
  const node = await nodeCases(server);
  const und = await undiciCases(server);
  console.log(`HTTP/2 client choice, Node ${process.version}, undici ${(await import('undici/package.json', { with: { type: 'json' } })).default.version}, h2c on 127.0.0.1:${server.port}\n`);
  console.log('| case | node:http2 | undici Client (allowH2, useH2c) |');
  console.log('|---|---|---|');
  for (const [key, label] of cases) console.log(`| ${label} | ${node[key] ?? ''} | ${und[key] ?? ''} |`);
} finally {
  await server.close();
}
