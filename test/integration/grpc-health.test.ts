/**
 * gRPC health checks end to end: real @grpc/grpc-js servers serving grpc.health.v1.Health
 * (written by hand with the checker's own codec: no .proto compiled), behind a Fulcrum pool with
 * `protocol: h2c` or `h2`. A backend set NOT_SERVING goes down with that reason and comes back
 * when SERVING again; unknown services, HTTP/1.1 servers, servers without the Health service
 * and closed ports go down with theirs; over TLS the pool's CA, SNI and client certificate are used.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { decodeHealthCheckRequest, decodeHealthCheckResponse, encodeHealthCheckRequest, encodeHealthCheckResponse } from '../../src/health/grpc-check.ts';
import { closedPort, startBackend, startBalancer, type TestBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';
import { eventually } from '../helpers/eventually.ts';

const SERVING = 1;
const NOT_SERVING = 2;
const SERVICE_UNKNOWN = 3;

/** One Check call as the backend saw it. */
interface SeenCheck {
  service: string;
  authority: string;
  /** Milliseconds from arrival to the call's deadline (from grpc-timeout). */
  deadlineIn: number;
}

/** A gRPC server on 127.0.0.1:0 with the Health service; `statuses` says what Check answers per service (absent: NOT_FOUND). */
interface GrpcHealthBackend {
  port: number;
  statuses: Map<string, number>;
  checks: SeenCheck[];
}

const healthService: grpc.ServiceDefinition = {
  Check: {
    path: '/grpc.health.v1.Health/Check',
    requestStream: false,
    responseStream: false,
    requestSerialize: (value: { service: string }) => encodeHealthCheckRequest(value.service),
    requestDeserialize: (bytes: Buffer) => {
      const decoded = decodeHealthCheckRequest(bytes);
      if (!decoded.ok) throw new Error(decoded.malformed);
      return decoded.value;
    },
    responseSerialize: (value: { status: number }) => encodeHealthCheckResponse(value.status),
    responseDeserialize: (bytes: Buffer) => decodeHealthCheckResponse(bytes),
  },
};

/**
 * Starts a gRPC server; with `health: false` it offers no service at all (every call is
 * UNIMPLEMENTED). Its status for "" starts SERVING. Shut down after the test.
 */
async function startGrpcHealthBackend(t: TestContext, options: { credentials?: grpc.ServerCredentials; health?: boolean } = {}): Promise<GrpcHealthBackend> {
  const statuses = new Map<string, number>([['', SERVING]]);
  const checks: SeenCheck[] = [];
  const server = new grpc.Server();
  if (options.health !== false) {
    server.addService(healthService, {
      Check: (call: grpc.ServerUnaryCall<{ service: string }, { status: number }>, callback: grpc.sendUnaryData<{ status: number }>) => {
        const { service } = call.request;
        checks.push({ service, authority: call.getHost(), deadlineIn: Number(call.getDeadline()) - Date.now() });
        const status = statuses.get(service);
        // As grpc's own health servers do: an unknown service is NOT_FOUND on Check (SERVICE_UNKNOWN is for Watch).
        if (status === undefined) callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${JSON.stringify(service)}` });
        else callback(null, { status });
      },
    });
  }
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  t.after(() => server.forceShutdown());
  return { port, statuses, checks };
}

const checks = { type: 'grpc' as const, interval: '100ms', fast_interval: '50ms', timeout: '1s', rise: 2, fall: 2, jitter: 0 };

/** The state-change line of one upstream, as the log writes it. */
function stateLine(pool: string, port: number, from: string, to: string, reason: string): RegExp {
  const escaped = reason.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`upstream 127\\.0\\.0\\.1:${port} in pool ${pool}: health ${from} -> ${to} \\(${escaped}\\)`);
}

/** The log's messages, one a line (the log is JSON: its quotes are escaped). */
function messages(lb: TestBalancer): string {
  return lb.logs.map((line) => (JSON.parse(line) as { msg: string }).msg).join('\n');
}

function upstreamsOf(lb: TestBalancer, pool: string) {
  return lb.balancer.pools().get(pool)!.upstreams;
}

test('three h2c backends: the one set NOT_SERVING goes down with that reason and comes back when SERVING; the others stay up', { timeout: 20_000 }, async (t) => {
  const backends = [await startGrpcHealthBackend(t), await startGrpcHealthBackend(t), await startGrpcHealthBackend(t)];
  const lb = await startBalancer(t, { pools: { grpc: { protocol: 'h2c', upstreams: backends.map((b) => `http://127.0.0.1:${b.port}`), health_check: checks } } });
  const ups = upstreamsOf(lb, 'grpc');
  await eventually(() => backends.every((b) => b.checks.length >= 3), { what: 'three checks on every backend' });
  assert.deepEqual(ups.map((u) => u.health), ['healthy', 'healthy', 'healthy']);
  const [first] = backends[0].checks;
  assert.equal(first.service, '');
  assert.equal(first.authority, `127.0.0.1:${backends[0].port}`);
  // grpc-timeout 1000m: the deadline is the check's timeout from the call's arrival.
  assert.ok(first.deadlineIn > 500 && first.deadlineIn <= 1000, `deadline in ${first.deadlineIn} ms`);

  const flippedAt = performance.now();
  backends[1].statuses.set('', NOT_SERVING);
  await eventually(() => ups[1].health === 'unhealthy', { what: 'the NOT_SERVING backend to go down' });
  const downMs = performance.now() - flippedAt;
  assert.match(messages(lb), stateLine('grpc', backends[1].port, 'healthy', 'unhealthy', 'grpc health: NOT_SERVING (2 consecutive checks failed)'));
  const seenDown = backends[1].checks.length;
  const backAt = performance.now();
  backends[1].statuses.set('', SERVING);
  await eventually(() => ups[1].health === 'healthy', { what: 'the backend to come back' });
  t.diagnostic(`down ${Math.round(downMs)} ms after NOT_SERVING, up ${Math.round(performance.now() - backAt)} ms after SERVING (interval 100ms, fast 50ms, fall 2, rise 2)`);
  assert.match(messages(lb), stateLine('grpc', backends[1].port, 'unhealthy', 'healthy', '2 consecutive checks passed'));
  assert.ok(backends[1].checks.length >= seenDown + 2, 'back after two passing checks');
  for (const i of [0, 2]) {
    assert.equal(ups[i].health, 'healthy');
    assert.doesNotMatch(messages(lb), new RegExp(`127\\.0\\.0\\.1:${backends[i].port} in pool grpc: health`));
  }
});

test('a service name: the backend that does not know it (NOT_FOUND) and the one that says SERVICE_UNKNOWN go down; `host` is the :authority', { timeout: 20_000 }, async (t) => {
  const [knows, notFound, unknown] = [await startGrpcHealthBackend(t), await startGrpcHealthBackend(t), await startGrpcHealthBackend(t)];
  knows.statuses.set('shop.Cart', SERVING);
  unknown.statuses.set('shop.Cart', SERVICE_UNKNOWN);
  const lb = await startBalancer(t, {
    pools: {
      cart: {
        protocol: 'h2c',
        upstreams: [knows, notFound, unknown].map((b) => `http://127.0.0.1:${b.port}`),
        health_check: { ...checks, service: 'shop.Cart', host: 'cart.internal:50051', fall: 1 },
      },
    },
  });
  const ups = upstreamsOf(lb, 'cart');
  await eventually(() => ups[1].health === 'unhealthy' && ups[2].health === 'unhealthy', { what: 'both to go down' });
  const log = messages(lb);
  assert.match(log, stateLine('cart', notFound.port, 'healthy', 'unhealthy', 'grpc-status 5 (NOT_FOUND): unknown service "shop.Cart" (1 consecutive checks failed)'));
  assert.match(log, stateLine('cart', unknown.port, 'healthy', 'unhealthy', 'grpc health: SERVICE_UNKNOWN "shop.Cart" (1 consecutive checks failed)'));
  await eventually(() => knows.checks.length >= 3, { what: 'more checks on the good backend' });
  assert.equal(ups[0].health, 'healthy');
  assert.deepEqual(new Set(knows.checks.map((c) => `${c.service} @ ${c.authority}`)), new Set(['shop.Cart @ cart.internal:50051']));
});

test('what is no gRPC health server goes down with its reason: HTTP/1.1, no Health service, nothing listening; a real one stays up', { timeout: 20_000 }, async (t) => {
  const good = await startGrpcHealthBackend(t);
  const web = await startBackend(t, (_req, res) => res.end('ok'));
  const bare = await startGrpcHealthBackend(t, { health: false });
  const nothing = await closedPort();
  const lb = await startBalancer(t, {
    pools: {
      mixed: {
        protocol: 'h2c',
        upstreams: [`http://127.0.0.1:${good.port}`, web.url, `http://127.0.0.1:${bare.port}`, `http://127.0.0.1:${nothing}`],
        health_check: { ...checks, fall: 1 },
      },
    },
  });
  const ups = upstreamsOf(lb, 'mixed');
  await eventually(() => ups.slice(1).every((u) => u.health === 'unhealthy'), { what: 'the three to go down' });
  const log = messages(lb);
  assert.match(
    log,
    stateLine('mixed', web.port, 'healthy', 'unhealthy', 'not an HTTP/2 server: its first bytes were no HTTP/2 frames (an HTTP/1.1 server? a gRPC server speaks HTTP/2) (1 consecutive checks failed)'),
  );
  assert.match(log, new RegExp(`127\\.0\\.0\\.1:${bare.port} in pool mixed: health healthy -> unhealthy \\(grpc-status 12 \\(UNIMPLEMENTED\\): [^"]*grpc\\.health\\.v1\\.Health/Check`));
  assert.match(log, stateLine('mixed', nothing, 'healthy', 'unhealthy', 'connection refused (1 consecutive checks failed)'));
  await eventually(() => good.checks.length >= 3, { what: 'more checks on the good backend' });
  assert.equal(ups[0].health, 'healthy');
  assert.ok(web.requests.length === 0, 'the HTTP/1.1 server never parsed a request (the HTTP/2 preface is no HTTP/1.1 request)');
});

test('over TLS (protocol h2): the pool CA, SNI and client certificate are used; NOT_SERVING goes down and back; no h2 by ALPN or no client certificate goes down', { timeout: 30_000 }, async (t) => {
  const ca = await makeTestCa(t);
  const leaf = await ca.issue('grpc');
  const client = await ca.issue('client', { commonName: 'fulcrum-client', names: [], usage: 'client' });
  const pair = [{ private_key: Buffer.from(leaf.key), cert_chain: Buffer.from(leaf.cert) }];
  const secure = await startGrpcHealthBackend(t, { credentials: grpc.ServerCredentials.createSsl(null, pair) });
  // Its certificate covers "localhost" only: reached at 127.0.0.1, it verifies only through `server_name`.
  const named = await ca.issue('named', { names: ['localhost'] });
  const strict = await startGrpcHealthBackend(t, { credentials: grpc.ServerCredentials.createSsl(Buffer.from(ca.ca.cert), [{ private_key: Buffer.from(named.key), cert_chain: Buffer.from(named.cert) }], true) });
  // An https server that speaks HTTP/1.1 only: Node refuses an ALPN list without http/1.1.
  const web = https.createServer({ cert: leaf.cert, key: leaf.key }, (_req, res) => res.end('ok'));
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => web.close(() => resolve())));
  const webPort = (web.address() as AddressInfo).port;

  const lb = await startBalancer(t, {
    routes: [
      { path_prefix: '/a', pool: 'tls' },
      { path_prefix: '/b', pool: 'mtls' },
      { path_prefix: '/c', pool: 'nocert' },
    ],
    pools: {
      tls: { protocol: 'h2', upstreams: [`https://127.0.0.1:${secure.port}`, `https://127.0.0.1:${webPort}`], tls: { ca: ca.caPath }, health_check: checks },
      mtls: { protocol: 'h2', upstreams: [`https://127.0.0.1:${strict.port}`], tls: { ca: ca.caPath, cert: client.bothPath, server_name: 'localhost' }, health_check: checks },
      nocert: { protocol: 'h2', upstreams: [`https://127.0.0.1:${strict.port}`], tls: { ca: ca.caPath, server_name: 'localhost' }, health_check: checks },
    },
  });
  const [good, http1] = upstreamsOf(lb, 'tls');
  const [withCert] = upstreamsOf(lb, 'mtls');
  const [withoutCert] = upstreamsOf(lb, 'nocert');
  await eventually(() => http1.health === 'unhealthy' && withoutCert.health === 'unhealthy', { what: 'the HTTP/1.1 https server and the pool without a client certificate to go down' });
  const log = messages(lb);
  assert.match(
    log,
    stateLine('tls', webPort, 'healthy', 'unhealthy', 'TLS handshake failed: the upstream does not offer HTTP/2 (ALPN h2): not a gRPC server? (ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL) (2 consecutive checks failed)'),
  );
  assert.match(log, stateLine('nocert', strict.port, 'healthy', 'unhealthy', 'TLS handshake failed: the upstream requires a client certificate (tls.cert) (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED) (2 consecutive checks failed)'));
  await eventually(() => secure.checks.length >= 3 && strict.checks.length >= 3, { what: 'checks over TLS' });
  assert.equal(good.health, 'healthy');
  assert.equal(withCert.health, 'healthy');
  // The calls that got through (the pool with the client certificate) carry the upstream's host:port; server_name is the TLS name only.
  assert.deepEqual(new Set(strict.checks.map((c) => c.authority)), new Set([`127.0.0.1:${strict.port}`]));

  secure.statuses.set('', NOT_SERVING);
  await eventually(() => good.health === 'unhealthy', { what: 'NOT_SERVING over TLS to go down' });
  assert.match(messages(lb), stateLine('tls', secure.port, 'healthy', 'unhealthy', 'grpc health: NOT_SERVING (2 consecutive checks failed)'));
  secure.statuses.set('', SERVING);
  await eventually(() => good.health === 'healthy', { what: 'SERVING over TLS to come back' });
});
