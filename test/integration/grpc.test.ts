/**
 * gRPC end to end: @grpc/grpc-js clients, Fulcrum (h2c listener, h2c or h2 pools) and grpc-js
 * backends that answer with their name (test/helpers/grpc.ts: a hand-written service, JSON
 * messages, no protobuf compiler). Unary, server-streaming, client-streaming and bidirectional
 * calls from one channel are spread over three backends; metadata, binary trailers and the
 * backend's error statuses (after headers and trailers-only) arrive unchanged; a backend killed
 * mid-stream ends the call UNAVAILABLE in bounded time and later calls go elsewhere; GOAWAYs
 * under load fail no call; Fulcrum's own answers are gRPC statuses (UNAVAILABLE, DEADLINE_EXCEEDED
 * at the caller's deadline, RESOURCE_EXHAUSTED, UNIMPLEMENTED); metrics count calls by gRPC status.
 * The gRPC health check has its own file (grpc-health.test.ts).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { closedPort, startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';
import {
  bidiCall,
  clientStreamCall,
  echoClient,
  rawCall,
  runConcurrently,
  serverStreamCall,
  startEchoBackend,
  startEchoBackendProcess,
  trailerBytes,
  unaryCall,
  type CallOutcome,
  type EchoBackend,
  type EchoReply,
} from '../helpers/grpc.ts';
import { http2Goaway, type Http2GoawayEvent } from '../../src/core/events.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';

const listener = { name: 'grpc', host: '127.0.0.1', port: 0, http2: { h2c: true } };

/** A balancer with one h2c listener and pool `g` (protocol h2c) over `upstreams`; `pool` and `config` merged in. */
function startGrpcBalancer(t: TestContext, upstreams: string[], pool: Record<string, unknown> = {}, config: Partial<FulcrumConfigInput> = {}): Promise<TestBalancer> {
  return startBalancer(t, { listeners: [listener], pools: { g: { protocol: 'h2c', upstreams, ...pool } }, ...config } as never);
}

async function startEchoBackends(t: TestContext, names: string[]): Promise<EchoBackend[]> {
  return Promise.all(names.map((name) => startEchoBackend(t, name)));
}

/** How many answers each backend gave (by name) among `outcomes`' messages. */
function countByBackend(outcomes: CallOutcome<EchoReply>[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outcomes) for (const m of o.messages) counts[m.backend] = (counts[m.backend] ?? 0) + 1;
  return counts;
}

/** The backend a call was answered by (every message of one call must come from the same one). */
function backendOf(o: CallOutcome<EchoReply>): string {
  const names = new Set(o.messages.map((m) => m.backend));
  assert.equal(names.size, 1, `one call, one backend: ${[...names].join(', ')}`);
  return [...names][0];
}

function assertOk(o: CallOutcome<unknown>, what: string): void {
  assert.equal(o.status.code, grpc.status.OK, `${what}: ${o.status.code} ${o.status.details}`);
}

/** `promise`, or a rejection naming `what` after `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A metric's value in a Prometheus text scrape (0 when the series is absent). */
function metric(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

test('unary, server-, client-streaming and bidirectional calls from one channel are spread over three backends', { timeout: 10_000 }, async (t) => {
  const backends = await startEchoBackends(t, ['a', 'b', 'c']);
  const lb = await startGrpcBalancer(t, backends.map((b) => b.url));
  const client = echoClient(t, lb.port);

  const unary: CallOutcome<EchoReply>[] = [];
  for (let i = 0; i < 30; i++) unary.push(await unaryCall(client, { text: `u${i}` }));
  unary.forEach((o, i) => (assertOk(o, `unary ${i}`), assert.equal(o.messages[0].text, `u${i}`)));
  // Round-robin over three: an exact share each.
  assert.deepEqual(countByBackend(unary), { a: 10, b: 10, c: 10 });
  // One client connection for all of them: the channel's single HTTP/2 session on the listener.
  assert.match((await lb.balancer.metrics.scrape()).body, /^lb_http2_sessions\{listener="grpc"\} 1$/m);

  const serverStreams = await Promise.all(Array.from({ length: 6 }, () => serverStreamCall(client, { count: 4, intervalMs: 2 })));
  for (const o of serverStreams) {
    assertOk(o, 'server stream');
    assert.deepEqual(o.messages.map((m) => m.index), [0, 1, 2, 3]);
  }
  assert.deepEqual(new Set(serverStreams.map(backendOf)), new Set(['a', 'b', 'c']));

  const clientStreams = await Promise.all(Array.from({ length: 6 }, (_, i) => clientStreamCall(client, [`c${i}-0`, `c${i}-1`, `c${i}-2`])));
  clientStreams.forEach((o, i) => (assertOk(o, 'client stream'), assert.deepEqual(o.messages[0].texts, [`c${i}-0`, `c${i}-1`, `c${i}-2`])));
  assert.deepEqual(new Set(clientStreams.map(backendOf)), new Set(['a', 'b', 'c']));

  // Each message is sent only after the answer to the one before: both directions open at once.
  const bidis = await Promise.all(Array.from({ length: 6 }, (_, i) => bidiCall(client, [`d${i}-0`, `d${i}-1`, `d${i}-2`])));
  bidis.forEach((o, i) => (assertOk(o, 'bidi'), assert.deepEqual(o.messages.map((m) => m.text), [`d${i}-0`, `d${i}-1`, `d${i}-2`])));
  assert.deepEqual(new Set(bidis.map(backendOf)), new Set(['a', 'b', 'c']));

  for (const b of backends) assert.deepEqual(Object.fromEntries(b.calls), { unary: 10, serverStream: 2, clientStream: 2, bidi: 2 }, `backend ${b.name}`);
  assert.match((await lb.balancer.metrics.scrape()).body, /^lb_http2_sessions\{listener="grpc"\} 1$/m);
  await eventually(() => lb.ended.length === 48, { what: '48 exchanges ended' });
  assert.ok(lb.ended.every((ctx) => ctx.grpc && ctx.grpcStatus === 0 && ctx.downstream.protocol === 'h2' && ctx.status === 200));
});

test('request metadata, initial metadata, text and binary trailers and the backend\'s error statuses arrive unchanged', { timeout: 10_000 }, async (t) => {
  const [backend] = await startEchoBackends(t, ['only']);
  const lb = await startGrpcBalancer(t, [backend.url]);
  const client = echoClient(t, lb.port);

  const metadata = new grpc.Metadata();
  metadata.set('x-custom', 'hello, backend');
  metadata.add('x-custom', 'second value');
  metadata.set('x-custom-bin', Buffer.from([0xff, 0x00, 0x80]));
  const ok = await unaryCall(client, { text: 'meta' }, { metadata });
  assertOk(ok, 'unary');
  const seen = ok.messages[0].metadata!;
  assert.equal(seen['x-custom'], 'hello, backend, second value');
  assert.equal(seen['x-custom-bin'], Buffer.from([0xff, 0x00, 0x80]).toString('base64'));
  assert.deepEqual(ok.metadata!.get('x-backend'), ['only']);
  assert.deepEqual(ok.metadata!.get('x-initial-bin'), [Buffer.from('only')]);
  assert.deepEqual(ok.status.metadata.get('x-trailer'), ['from only']);
  assert.deepEqual(ok.status.metadata.get('x-trailer-bin'), [trailerBytes]);

  // A status after the response headers: in the trailers, with the backend's trailing metadata.
  const details = 'no such thing: "ünïcode" 100% \t tab';
  const notFound = await unaryCall(client, { fail: { code: grpc.status.NOT_FOUND, details } });
  assert.equal(notFound.status.code, grpc.status.NOT_FOUND);
  assert.equal(notFound.status.details, details);
  assert.deepEqual(notFound.metadata!.get('x-backend'), ['only']);
  assert.deepEqual(notFound.status.metadata.get('x-trailer-bin'), [trailerBytes]);
  assert.deepEqual(notFound.status.metadata.get('x-trailer'), ['from only']);

  // Trailers-only (one HEADERS frame with END_STREAM): relayed as it came (gRPC clients read grpc-status in the
  // first HEADERS only when that frame ends the stream); status, message and metadata arrive.
  const rawDenied = await rawCall(lb.port, 'Unary', { fail: { code: grpc.status.PERMISSION_DENIED, details: 'trailers only', trailersOnly: true } });
  assert.equal(rawDenied.headers['grpc-status'], String(grpc.status.PERMISSION_DENIED));
  assert.ok(rawDenied.headersEndStream, 'one HEADERS frame with END_STREAM');
  assert.equal(rawDenied.trailers, null);
  const denied = await unaryCall(client, { fail: { code: grpc.status.PERMISSION_DENIED, details: 'trailers only', trailersOnly: true } });
  assert.equal(denied.status.code, grpc.status.PERMISSION_DENIED);
  assert.equal(denied.status.details, 'trailers only');
  assert.deepEqual(denied.status.metadata.get('x-trailer-bin'), [trailerBytes]);
  assert.deepEqual(denied.metadata?.get('x-backend') ?? [], []);

  await eventually(() => lb.ended.length === 4, { what: 'four exchanges ended' });
  assert.deepEqual(lb.ended.map((ctx) => ctx.grpcStatus), [grpc.status.OK, grpc.status.NOT_FOUND, grpc.status.PERMISSION_DENIED, grpc.status.PERMISSION_DENIED]);
  // Fulcrum made none of these answers.
  assert.ok(lb.ended.every((ctx) => ctx.error === null && ctx.upstream !== null));
});

test('a backend killed (SIGKILL) mid-stream: the call ends UNAVAILABLE at once, later calls go to the others', { timeout: 15_000 }, async (t) => {
  const backends = await Promise.all(['a', 'b', 'c'].map((name) => startEchoBackendProcess(t, name)));
  const lb = await startGrpcBalancer(t, backends.map((b) => b.url));
  const client = echoClient(t, lb.port);
  let killedAt = 0;
  let killed = '';
  // A stream of 1000 messages 10 ms apart (10 s): killed after its third message.
  const stream = await serverStreamCall(
    client,
    { count: 1000, intervalMs: 10 },
    {
      deadlineMs: 10_000,
      onMessage: (m, index) => {
        if (index !== 2) return;
        killed = m.backend;
        killedAt = performance.now();
        backends.find((b) => b.name === m.backend)!.child.kill('SIGKILL');
      },
    },
  );
  assert.notEqual(killed, '', 'the stream started');
  assert.equal(stream.status.code, grpc.status.UNAVAILABLE, `${stream.status.code} ${stream.status.details}`);
  assert.match(stream.status.details, /^fulcrum: .*request id/);
  const after = performance.now() - killedAt;
  assert.ok(after < 2000, `status ${after.toFixed(0)} ms after the kill`);
  assert.ok(stream.messages.length >= 3 && stream.messages.length < 1000, `${stream.messages.length} messages`);
  await eventually(() => lb.ended.length === 1, { what: 'the stream exchange ended' });
  assert.equal(lb.ended[0].grpcStatus, grpc.status.UNAVAILABLE);

  const later: CallOutcome<EchoReply>[] = [];
  for (let i = 0; i < 12; i++) later.push(await unaryCall(client, { text: `after ${i}` }));
  later.forEach((o, i) => assertOk(o, `call ${i} after the kill`));
  const counts = countByBackend(later);
  assert.equal(counts[killed], undefined, `nothing from the killed backend: ${JSON.stringify(counts)}`);
  assert.equal(Object.keys(counts).length, 2, JSON.stringify(counts));
});

/** Collects the GOAWAYs upstreams send to Fulcrum during a test. */
function goawaysFromUpstreams(t: TestContext): Http2GoawayEvent[] {
  const seen: Http2GoawayEvent[] = [];
  const listen = (m: unknown): void => {
    const e = m as Http2GoawayEvent;
    if (e.direction === 'upstream') seen.push(e);
  };
  http2Goaway.subscribe(listen);
  t.after(() => http2Goaway.unsubscribe(listen));
  return seen;
}

test('a backend shut down gracefully (GOAWAY, calls in flight finish) under load: 300 calls, none fails', { timeout: 15_000 }, async (t) => {
  const backends = await startEchoBackends(t, ['a', 'b', 'c']);
  const lb = await startGrpcBalancer(t, backends.map((b) => b.url));
  const goaways = goawaysFromUpstreams(t);
  const client = echoClient(t, lb.port);
  let done = 0;
  let shutdown: Promise<void> | null = null;
  const outcomes = await runConcurrently(300, 20, async (i) => {
    const o = await unaryCall(client, { text: `${i}`, delayMs: 5 });
    // A third of the way through, with ~20 calls in flight: backend a says GOAWAY and stops listening.
    if (++done === 100) shutdown = backends[0].shutdown();
    return o;
  });
  const failed = outcomes.filter((o) => o.status.code !== grpc.status.OK);
  assert.deepEqual(failed.map((o) => `${o.status.code} ${o.status.details}`), []);
  assert.ok(shutdown !== null);
  // Its sessions close once their streams finished: the shutdown completes.
  await within(shutdown!, 5000, 'backend a to finish shutting down');
  assert.ok(goaways.some((g) => g.upstream === `127.0.0.1:${backends[0].port}`), 'Fulcrum saw the GOAWAY');
  const counts = countByBackend(outcomes);
  assert.ok(counts.a >= 20 && counts.a < 150, JSON.stringify(counts));
  assert.equal(counts.a + counts.b + counts.c, 300);
});

test('a backend that sends GOAWAY every ~100 ms (max connection age) under load: 300 calls, none fails', { timeout: 15_000 }, async (t) => {
  const backends = [
    await startEchoBackend(t, 'a', { server: { 'grpc.max_connection_age_ms': 100, 'grpc.max_connection_age_grace_ms': 5000 } }),
    ...(await startEchoBackends(t, ['b', 'c'])),
  ];
  const lb = await startGrpcBalancer(t, backends.map((b) => b.url));
  const goaways = goawaysFromUpstreams(t);
  const client = echoClient(t, lb.port);
  const outcomes = await runConcurrently(300, 20, (i) => unaryCall(client, { text: `${i}`, delayMs: 15 }));
  const failed = outcomes.filter((o) => o.status.code !== grpc.status.OK);
  assert.deepEqual(failed.map((o) => `${o.status.code} ${o.status.details}`), []);
  // grpc-js sends two per connection (last stream 2^31-1, then the real one) as it ages out.
  assert.ok(goaways.filter((g) => g.upstream === `127.0.0.1:${backends[0].port}`).length >= 4, `${goaways.length} GOAWAYs from upstreams`);
  const counts = countByBackend(outcomes);
  assert.ok(counts.a >= 30, JSON.stringify(counts));
});

test('Fulcrum\'s own answer when no upstream takes the call: UNAVAILABLE with the reason', { timeout: 10_000 }, async (t) => {
  // Nothing listens: the connect failures are retried on the other upstream, then the call ends UNAVAILABLE.
  const refused = await startGrpcBalancer(t, [`http://127.0.0.1:${await closedPort()}`, `http://127.0.0.1:${await closedPort()}`]);
  const o = await unaryCall(echoClient(t, refused.port), { text: 'x' });
  assert.equal(o.status.code, grpc.status.UNAVAILABLE, `${o.status.code} ${o.status.details}`);
  assert.match(o.status.details, /^fulcrum: .*(refused|ECONNREFUSED)/i);

  // Every upstream disabled: no upstream to pick.
  const [backend] = await startEchoBackends(t, ['a']);
  const lb = await startGrpcBalancer(t, [backend.url]);
  await lb.balancer.updateBackend({ url: backend.url, pool: 'g', enabled: false });
  const none = await unaryCall(echoClient(t, lb.port), { text: 'x' });
  assert.equal(none.status.code, grpc.status.UNAVAILABLE, `${none.status.code} ${none.status.details}`);
  assert.match(none.status.details, /^fulcrum: no available upstream in pool "g" \(request id \S+\)$/);
  assert.equal(backend.calls.size, 0);
});

test('calls Fulcrum answers itself leave no stream open: past max_concurrent_streams of them, the same channel works once an upstream is back', { timeout: 10_000 }, async (t) => {
  const [backend] = await startEchoBackends(t, ['a']);
  const lb = await startBalancer(t, { listeners: [{ ...listener, http2: { h2c: true, max_concurrent_streams: 5 } }], pools: { g: { protocol: 'h2c', upstreams: [backend.url] } } });
  const client = echoClient(t, lb.port);
  assertOk(await unaryCall(client, { text: 'before' }), 'before');
  await lb.balancer.updateBackend({ url: backend.url, pool: 'g', enabled: false });
  const codes = [];
  for (let i = 0; i < 8; i++) codes.push((await unaryCall(client, { text: `${i}` }, { deadlineMs: 2000 })).status.code);
  assert.deepEqual(codes, new Array(8).fill(grpc.status.UNAVAILABLE));
  await eventually(async () => /^lb_http2_streams\{listener="grpc"\} 0$/m.test((await lb.balancer.metrics.scrape()).body), { timeout: 2000, what: 'no HTTP/2 stream left open on the listener' });
  await lb.balancer.updateBackend({ url: backend.url, pool: 'g', enabled: true });
  const after = await unaryCall(client, { text: 'after' }, { deadlineMs: 2000 });
  assertOk(after, 'the first call after the upstream came back');
});

test('the caller\'s deadline (grpc-timeout) against a slow backend: DEADLINE_EXCEEDED in about the deadline, logged as grpc_status 4', { timeout: 10_000 }, async (t) => {
  const [backend] = await startEchoBackends(t, ['slow']);
  const lb = await startGrpcBalancer(t, [backend.url], {}, { log: { level: 'info', access_log: { flush: '20ms' } } });

  // Fulcrum's own answer, seen by a client that keeps no timer of its own: grpc-timeout alone ends it.
  const raw = await rawCall(lb.port, 'Unary', { delayMs: 5000 }, { 'grpc-timeout': '200m' });
  // Trailers-only: status 200 with grpc-status in the one HEADERS frame (END_STREAM), no body.
  assert.equal(raw.headers[':status'], 200);
  assert.ok(raw.headersEndStream, 'one HEADERS frame with END_STREAM');
  assert.equal(raw.headers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED));
  assert.match(String(raw.headers['grpc-message']), /^fulcrum: /);
  assert.equal(raw.bodyBytes, 0);
  assert.ok(raw.ms >= 190 && raw.ms < 1000, `answered after ${raw.ms.toFixed(0)} ms`);
  // The backend's call was cancelled (Fulcrum reset its stream), not left running.
  await eventually(() => backend.cancelled === 1, { what: 'the backend call to be cancelled' });

  const logged = await eventually(() => lb.logs.find((l) => l.includes('"log":"access"')) ?? '', { what: 'its access-log line' });
  assert.equal((JSON.parse(logged) as { grpc_status: number }).grpc_status, grpc.status.DEADLINE_EXCEEDED);
  assert.match(logged, /"protocol":"h2"/);
  assert.equal(lb.ended[0].grpcStatus, grpc.status.DEADLINE_EXCEEDED);

  // A grpc-js caller with a 200 ms deadline: it keeps its own timer too.
  const o = await unaryCall(echoClient(t, lb.port), { delayMs: 5000 }, { deadlineMs: 200 });
  assert.equal(o.status.code, grpc.status.DEADLINE_EXCEEDED, `${o.status.code} ${o.status.details}`);
  assert.ok(o.ms >= 190 && o.ms < 1000, `status after ${o.ms.toFixed(0)} ms`);
  await eventually(() => backend.cancelled === 2, { what: 'the second backend call to be cancelled' });
  await eventually(() => lb.ended.length === 2, { what: 'the second exchange to end' });
  // Both ends time the same deadline: Fulcrum's timer (it answers DEADLINE_EXCEEDED itself) or the caller's
  // RST_STREAM (a client gone: 499, no gRPC status recorded) comes first, about half the time each.
  const second = lb.ended[1];
  if (second.status === 499) assert.equal(second.error?.code, 'FUL_CLIENT_ABORTED');
  else assert.equal(second.grpcStatus, grpc.status.DEADLINE_EXCEEDED);
});

test('a route rate limit answers RESOURCE_EXHAUSTED; a path no route matches UNIMPLEMENTED', { timeout: 10_000 }, async (t) => {
  const [backend] = await startEchoBackends(t, ['a']);
  const limited = await startGrpcBalancer(t, [backend.url], {}, { routes: [{ path_prefix: '/', pool: 'g', rate_limits: [{ rate: 1, per: '1m', burst: 2 }] }] });
  const client = echoClient(t, limited.port);
  const outcomes = [];
  for (let i = 0; i < 4; i++) outcomes.push(await unaryCall(client, { text: `${i}` }));
  assert.deepEqual(outcomes.map((o) => o.status.code), [grpc.status.OK, grpc.status.OK, grpc.status.RESOURCE_EXHAUSTED, grpc.status.RESOURCE_EXHAUSTED]);
  assert.match(outcomes[2].status.details, /^fulcrum: .*rate/i);
  assert.equal(backend.calls.get('unary'), 2);

  const routed = await startGrpcBalancer(t, [backend.url], {}, { routes: [{ path_prefix: '/fulcrum.test.Other', pool: 'g' }] });
  const unknown = await unaryCall(echoClient(t, routed.port), { text: 'x' });
  assert.equal(unknown.status.code, grpc.status.UNIMPLEMENTED, `${unknown.status.code} ${unknown.status.details}`);
  assert.match(unknown.status.details, /^fulcrum: no route/);
  assert.equal(backend.calls.get('unary'), 2);
});

test('an https listener (h2 by ALPN) in front of a TLS pool (protocol h2, the test CA): calls go through', { timeout: 10_000 }, async (t) => {
  const ca = await makeTestCa(t);
  const leaf = await ca.issue('backend');
  const credentials = grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(leaf.key), cert_chain: Buffer.from(leaf.cert) }], false);
  const backends = await Promise.all(['a', 'b'].map((name) => startEchoBackend(t, name, { credentials })));
  assert.ok(backends.every((b) => b.url.startsWith('https://')));
  const site = await ca.issue('site');
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: site.certPath, key: site.keyPath }] } }],
    pools: { g: { protocol: 'h2', upstreams: backends.map((b) => b.url), tls: { ca: ca.caPath } } },
  });
  // SNI localhost (the leaf covers it): grpc-js would otherwise set an IP address as the TLS server name, which Node deprecates.
  const client = echoClient(t, lb.port, grpc.credentials.createSsl(readFileSync(ca.caPath)), { 'grpc.ssl_target_name_override': 'localhost' });
  const unary = [];
  for (let i = 0; i < 4; i++) unary.push(await unaryCall(client, { text: `${i}` }));
  unary.forEach((o, i) => assertOk(o, `unary ${i}`));
  assert.deepEqual(countByBackend(unary), { a: 2, b: 2 });
  const stream = await serverStreamCall(client, { count: 3 });
  assertOk(stream, 'server stream');
  assert.deepEqual(stream.status.metadata.get('x-trailer-bin'), [trailerBytes]);
  await eventually(() => lb.ended.length === 5, { what: 'five exchanges ended' });
  assert.ok(lb.ended.every((ctx) => ctx.downstream.protocol === 'h2' && ctx.grpcStatus === 0));
});

test('metrics: lb_grpc_responses_total by pool and gRPC status, lb_requests_by_protocol_total with protocol "grpc"', { timeout: 10_000 }, async (t) => {
  const [backend] = await startEchoBackends(t, ['a']);
  const lb = await startGrpcBalancer(t, [backend.url]);
  const client = echoClient(t, lb.port);
  for (let i = 0; i < 3; i++) assertOk(await unaryCall(client, { text: `${i}` }), `call ${i}`);
  assert.equal((await unaryCall(client, { fail: { code: grpc.status.NOT_FOUND, details: 'nope' } })).status.code, grpc.status.NOT_FOUND);
  await lb.balancer.updateBackend({ url: backend.url, pool: 'g', enabled: false });
  for (let i = 0; i < 2; i++) assert.equal((await unaryCall(client, { text: 'x' })).status.code, grpc.status.UNAVAILABLE);
  await eventually(() => lb.ended.length === 6, { what: 'six exchanges ended' });
  const text = (await lb.balancer.metrics.scrape()).body;
  assert.equal(metric(text, 'lb_grpc_responses_total{pool="g",code="OK"}'), 3, text);
  assert.equal(metric(text, 'lb_grpc_responses_total{pool="g",code="NOT_FOUND"}'), 1);
  assert.equal(metric(text, 'lb_grpc_responses_total{pool="g",code="UNAVAILABLE"}'), 2);
  assert.equal(metric(text, 'lb_requests_by_protocol_total{listener="grpc",protocol="grpc"}'), 6);
  assert.equal(metric(text, 'lb_requests_by_protocol_total{listener="grpc",protocol="h2"}'), 0);
});
