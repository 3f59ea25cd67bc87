import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isIdempotent, MAX_UNPROCESSED_RETRIES, retryAfterMs, retryReason, usesBudget } from '../../../src/proxy/retry.ts';
import { clientGone, noUpstream, requestTimedOut, upstreamFailure } from '../../../src/proxy/status.ts';
import { PoolConfig, type PoolSettings } from '../../../src/config/schema.ts';
import { ErrorCode, FulcrumError } from '../../../src/errors.ts';
import type { Exchange as RequestContext } from '../../../src/proxy/exchange.ts';

type RetryOverrides = Partial<PoolSettings['retry']>;

interface FakePool {
  settings: PoolSettings;
  active: number;
  retrying: number;
}

function fakePool(retry: RetryOverrides = {}, active = 1, retrying = 0): FakePool {
  return { settings: PoolConfig.parse({ upstreams: ['http://127.0.0.1:1'], retry }), active, retrying };
}

interface CtxOptions {
  method?: string;
  attempts?: number;
  headersSent?: boolean;
  clientGone?: boolean;
  done?: boolean;
  /** none: no request body; kept: kept whole and read to its end; partial: kept, not read to its end; dropped: too big to keep. */
  body?: 'none' | 'kept' | 'partial' | 'dropped';
  retrying?: boolean;
  pool?: FakePool;
  countedPool?: FakePool;
  unprocessedRetries?: number;
}

/** Only the fields retryReason reads, as a RequestContext. */
function fakeCtx(o: CtxOptions = {}): RequestContext {
  const pool = o.pool ?? fakePool();
  const body = o.body ?? 'none';
  return {
    req: { method: o.method ?? 'GET', headers: {} },
    tried: null,
    downstream: { headSent: o.headersSent ?? false },
    clientGone: o.clientGone ?? false,
    done: o.done ?? false,
    attempts: o.attempts ?? 1,
    unprocessedRetries: o.unprocessedRetries ?? 0,
    pool,
    countedPool: o.countedPool ?? pool,
    retrying: o.retrying ?? false,
    bodyStream: body === 'none' ? null : ({} as unknown),
    bodyKept: body === 'kept' || body === 'partial' ? [Buffer.from('abc')] : null,
    bodyEnded: body === 'kept' || body === 'dropped',
  } as any;
}

const err = (code: string, message = code): Error => Object.assign(new Error(message), { code });
/** The upstream refused the connection: it never saw the request. */
const refused = (): FulcrumError => upstreamFailure(err('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:1'), false);
/** The connection was reset after the request was written. */
const resetAfterSend = (): FulcrumError => upstreamFailure(err('ECONNRESET', 'read ECONNRESET'), true);

test('fixtures: the failures used below have the codes the rules key on', () => {
  const r = refused();
  assert.equal(r.code, ErrorCode.ConnectRefused);
  assert.equal(r.retryable, true);
  assert.equal(r.source, 'upstream');
  const s = resetAfterSend();
  assert.equal(s.code, ErrorCode.UpstreamReset);
  assert.equal(s.retryable, false);
  const ct = upstreamFailure(err('UND_ERR_CONNECT_TIMEOUT'), false);
  assert.equal(ct.code, ErrorCode.ConnectTimeout);
  assert.equal(ct.retryable, true);
});

test('isIdempotent: RFC 9110 idempotent methods only', () => {
  for (const m of ['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']) assert.equal(isIdempotent(m), true, m);
  for (const m of ['POST', 'PATCH', 'CONNECT', 'get', 'PROPFIND']) assert.equal(isIdempotent(m), false, m);
  assert.equal(isIdempotent(undefined), false);
});

test('connect failure: any method, POST and PATCH included', () => {
  for (const method of ['GET', 'POST', 'PATCH', 'PUT', 'DELETE']) {
    assert.equal(retryReason(fakeCtx({ method }), refused(), 0, false), 'connect-failure', method);
  }
  assert.equal(retryReason(fakeCtx({ method: 'POST' }), upstreamFailure(err('UND_ERR_CONNECT_TIMEOUT'), false), 0, false), 'connect-failure');
  assert.equal(retryReason(fakeCtx({ method: 'POST' }), upstreamFailure(err('ENOTFOUND'), false), 0, false), 'connect-failure');
  // A reset before the request reached a socket is as good as a connect failure.
  assert.equal(retryReason(fakeCtx({ method: 'POST' }), upstreamFailure(err('ECONNRESET'), false), 0, false), 'connect-failure');
});

test('connect failure: an unsent body goes again even when it was not kept', () => {
  for (const body of ['dropped', 'partial', 'kept'] as const) {
    assert.equal(retryReason(fakeCtx({ method: 'POST', body }), refused(), 0, false), 'connect-failure', body);
  }
});

test('reset after the request was sent: idempotent methods only', () => {
  const expected: Record<string, string | null> = { GET: 'reset', HEAD: 'reset', OPTIONS: 'reset', PUT: 'reset', DELETE: 'reset', POST: null, PATCH: null };
  for (const [method, reason] of Object.entries(expected)) {
    assert.equal(retryReason(fakeCtx({ method }), resetAfterSend(), 0, true), reason, method);
  }
  // Other reset shapes the same.
  assert.equal(retryReason(fakeCtx(), upstreamFailure(err('EPIPE'), true), 0, true), 'reset');
  assert.equal(retryReason(fakeCtx(), upstreamFailure(new Error('socket hang up'), true), 0, true), 'reset');
  assert.equal(retryReason(fakeCtx({ method: 'POST' }), upstreamFailure(new Error('socket hang up'), true), 0, true), null);
});

test('a refused connection reported after the request was sent is not retried', () => {
  const f = upstreamFailure(err('ECONNREFUSED'), true);
  assert.equal(f.retryable, false);
  assert.equal(retryReason(fakeCtx(), f, 0, true), null);
});

test('status in on_status: idempotent methods only, and only listed statuses', () => {
  for (const status of [502, 503, 504]) {
    assert.equal(retryReason(fakeCtx({ method: 'GET' }), null, status, true), 'status', `GET ${status}`);
    assert.equal(retryReason(fakeCtx({ method: 'PUT' }), null, status, true), 'status', `PUT ${status}`);
    assert.equal(retryReason(fakeCtx({ method: 'POST' }), null, status, true), null, `POST ${status}`);
    assert.equal(retryReason(fakeCtx({ method: 'PATCH' }), null, status, true), null, `PATCH ${status}`);
  }
  for (const status of [500, 501, 505, 200, 404, 429]) {
    assert.equal(retryReason(fakeCtx({ method: 'GET' }), null, status, true), null, `GET ${status}`);
  }
  const custom = fakePool({ on_status: [500] });
  assert.equal(retryReason(fakeCtx({ pool: custom }), null, 500, true), 'status');
  assert.equal(retryReason(fakeCtx({ pool: custom }), null, 502, true), null);
  const none = fakePool({ on_status: [] });
  assert.equal(retryReason(fakeCtx({ pool: none }), null, 503, true), null);
});

test('nothing once response headers reached the client, the client left, or the request is done', () => {
  for (const o of [{ headersSent: true }, { clientGone: true }, { done: true }]) {
    assert.equal(retryReason(fakeCtx({ ...o, method: 'POST' }), refused(), 0, false), null, JSON.stringify(o));
    assert.equal(retryReason(fakeCtx(o), resetAfterSend(), 0, true), null, JSON.stringify(o));
    assert.equal(retryReason(fakeCtx(o), null, 503, true), null, JSON.stringify(o));
  }
});

test('nothing at max_attempts; the attempt before the last still retries', () => {
  const pool = fakePool({ max_attempts: 3 });
  assert.equal(retryReason(fakeCtx({ pool, attempts: 1 }), refused(), 0, false), 'connect-failure');
  assert.equal(retryReason(fakeCtx({ pool, attempts: 2 }), refused(), 0, false), 'connect-failure');
  assert.equal(retryReason(fakeCtx({ pool, attempts: 3 }), refused(), 0, false), null);
  assert.equal(retryReason(fakeCtx({ pool, attempts: 3 }), resetAfterSend(), 0, true), null);
  assert.equal(retryReason(fakeCtx({ pool, attempts: 3 }), null, 503, true), null);
  assert.equal(retryReason(fakeCtx({ pool, attempts: 4 }), null, 503, true), null);
  const once = fakePool({ max_attempts: 1 });
  assert.equal(retryReason(fakeCtx({ pool: once, attempts: 1, method: 'POST' }), refused(), 0, false), null);
});

test('a sent body goes again only when kept whole and read to its end', () => {
  const cases = { none: 'reset', kept: 'reset', partial: null, dropped: null } as const;
  for (const [body, reason] of Object.entries(cases)) {
    assert.equal(retryReason(fakeCtx({ method: 'PUT', body: body as CtxOptions['body'] }), resetAfterSend(), 0, true), reason, `reset, body ${body}`);
    const expectStatus = reason === null ? null : 'status';
    assert.equal(retryReason(fakeCtx({ method: 'PUT', body: body as CtxOptions['body'] }), null, 503, true), expectStatus, `status, body ${body}`);
  }
});

test('budget: retries in flight stay under max(min_retry_concurrency, active x budget_percent / 100)', () => {
  // 50 active at 20%: budget 10 (above the minimum of 2).
  const at = (active: number, retrying: number): string | null =>
    retryReason(fakeCtx({ pool: fakePool({ budget_percent: 20, min_retry_concurrency: 2 }, active, retrying) }), resetAfterSend(), 0, true);
  assert.equal(at(50, 9), 'reset');
  assert.equal(at(50, 10), null);
  assert.equal(at(50, 11), null);
  // 5 active at 20% is 1: the minimum of 2 applies.
  assert.equal(at(5, 0), 'reset');
  assert.equal(at(5, 1), 'reset');
  assert.equal(at(5, 2), null);
  // 53 active at 20% is 10.6: 10 in flight is still under.
  assert.equal(at(53, 10), 'reset');
  assert.equal(at(53, 11), null);
  // No minimum and no budget: no reset or status is retried.
  const zero = fakePool({ budget_percent: 0, min_retry_concurrency: 0 }, 100, 0);
  assert.equal(retryReason(fakeCtx({ pool: zero }), resetAfterSend(), 0, true), null);
  // The budget applies to resets and statuses alike.
  const full = fakePool({ budget_percent: 20, min_retry_concurrency: 2 }, 5, 2);
  assert.equal(retryReason(fakeCtx({ pool: full }), resetAfterSend(), 0, true), null);
  assert.equal(retryReason(fakeCtx({ pool: full }), null, 503, true), null);
});

test('budget: connect failures and stale keep-alive sockets are not limited by it (they add no load), only by max_attempts', () => {
  const zero = fakePool({ budget_percent: 0, min_retry_concurrency: 0 }, 100, 100);
  assert.equal(retryReason(fakeCtx({ pool: zero }), refused(), 0, false), 'connect-failure');
  assert.equal(retryReason(fakeCtx({ pool: zero, method: 'POST', body: 'dropped' }), refused(), 0, false), 'connect-failure');
  assert.equal(retryReason(fakeCtx({ pool: zero }), resetAfterSend(), 0, true, true), 'stale-connection');
  assert.equal(retryReason(fakeCtx({ pool: zero }), resetAfterSend(), 0, true, false), null, 'the same reset on a fresh socket is budgeted');
  assert.equal(retryReason(fakeCtx({ pool: zero, attempts: 3 }), refused(), 0, false), null);
  assert.equal(retryReason(fakeCtx({ pool: zero, attempts: 3 }), resetAfterSend(), 0, true, true), null);
  assert.equal(usesBudget('connect-failure'), false);
  assert.equal(usesBudget('stale-connection'), false);
  assert.equal(usesBudget('reset'), true);
  assert.equal(usesBudget('status'), true);
});

test('budget: a request already counted as retrying is not refused by the budget', () => {
  const full = fakePool({ budget_percent: 20, min_retry_concurrency: 2 }, 5, 50);
  assert.equal(retryReason(fakeCtx({ pool: full, retrying: false }), resetAfterSend(), 0, true), null);
  assert.equal(retryReason(fakeCtx({ pool: full, retrying: true, attempts: 2 }), resetAfterSend(), 0, true), 'reset');
  assert.equal(retryReason(fakeCtx({ pool: full, retrying: true, attempts: 2 }), null, 503, true), 'status');
  // ...but max_attempts still holds for it.
  assert.equal(retryReason(fakeCtx({ pool: full, retrying: true, attempts: 3 }), resetAfterSend(), 0, true), null);
});

test('budget: counted in the routed pool (countedPool), attempts limited by the pool in use', () => {
  const routed = fakePool({ budget_percent: 20, min_retry_concurrency: 1 }, 1, 1);
  const backup = fakePool({ budget_percent: 100, min_retry_concurrency: 100 }, 0, 0);
  assert.equal(retryReason(fakeCtx({ pool: backup, countedPool: routed }), resetAfterSend(), 0, true), null);
  const roomy = fakePool({ budget_percent: 20, min_retry_concurrency: 5 }, 1, 1);
  const strict = fakePool({ max_attempts: 1 });
  assert.equal(retryReason(fakeCtx({ pool: backup, countedPool: roomy }), resetAfterSend(), 0, true), 'reset');
  assert.equal(retryReason(fakeCtx({ pool: strict, countedPool: roomy }), resetAfterSend(), 0, true), null);
});

test('stale keep-alive socket: idempotent methods; a POST only with Idempotency-Key, only once, only with its body kept', () => {
  const stale = (o: CtxOptions, headers: Record<string, string> = {}): string | null => {
    const ctx = fakeCtx(o);
    (ctx.req as unknown as { headers: Record<string, string> }).headers = headers;
    return retryReason(ctx, resetAfterSend(), 0, true, true);
  };
  for (const method of ['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']) assert.equal(stale({ method }), 'stale-connection', method);
  assert.equal(stale({ method: 'POST', body: 'kept' }), null, 'a POST the upstream may have acted on');
  assert.equal(stale({ method: 'PATCH', body: 'kept' }), null);
  assert.equal(stale({ method: 'POST', body: 'kept' }, { 'idempotency-key': 'k1' }), 'stale-connection');
  assert.equal(stale({ method: 'POST', body: 'kept' }, { 'idempotency-key': '' }), null);
  assert.equal(stale({ method: 'POST', body: 'dropped' }, { 'idempotency-key': 'k1' }), null, 'a body not kept cannot go again');
  assert.equal(stale({ method: 'POST', body: 'partial' }, { 'idempotency-key': 'k1' }), null);
  const again = fakeCtx({ method: 'POST', body: 'kept', attempts: 2 });
  (again as unknown as { tried: unknown[] }).tried = [{}];
  (again.req as unknown as { headers: Record<string, string> }).headers = { 'idempotency-key': 'k1' };
  assert.equal(retryReason(again, resetAfterSend(), 0, true, true), null, 'once only');
  // Not a reset (a timeout, a protocol error): not a stale socket whatever the socket.
  assert.equal(retryReason(fakeCtx(), upstreamFailure(err('UND_ERR_HEADERS_TIMEOUT'), true), 0, true, true), null);
  assert.equal(retryReason(fakeCtx(), upstreamFailure(err('HPE_INVALID_CONSTANT'), true), 0, true, true), null);
});

test('timeouts, protocol errors and client-side failures are not retried', () => {
  const failures: [string, FulcrumError][] = [
    ['headers timeout', upstreamFailure(err('UND_ERR_HEADERS_TIMEOUT'), true)],
    ['body timeout', upstreamFailure(err('UND_ERR_BODY_TIMEOUT'), true)],
    ['socket timeout after send', upstreamFailure(err('ETIMEDOUT'), true)],
    ['request timeout', requestTimedOut(1000)],
    ['parser error', upstreamFailure(err('HPE_INVALID_CONSTANT', 'Parse Error'), true)],
    ['content-length mismatch', upstreamFailure(err('UND_ERR_RES_CONTENT_LENGTH_MISMATCH'), true)],
    ['client gone', clientGone()],
    ['bad request', upstreamFailure(err('UND_ERR_INVALID_ARG'), true)],
    ['no upstream', noUpstream('web')],
  ];
  for (const [name, failure] of failures) {
    assert.equal(failure.retryable, false, `${name} retryable`);
    assert.notEqual(failure.code, ErrorCode.UpstreamReset, `${name} code`);
    for (const method of ['GET', 'PUT', 'POST']) {
      assert.equal(retryReason(fakeCtx({ method }), failure, 0, true), null, `${name} ${method}`);
    }
  }
  assert.equal(upstreamFailure(err('UND_ERR_HEADERS_TIMEOUT'), true).code, ErrorCode.HeadersTimeout);
  assert.equal(upstreamFailure(err('HPE_INVALID_CONSTANT'), true).code, ErrorCode.UpstreamProtocol);
});

test('retryAfterMs: delta-seconds', () => {
  assert.equal(retryAfterMs('0'), 0);
  assert.equal(retryAfterMs('1'), 1000);
  assert.equal(retryAfterMs('120'), 120_000);
  assert.equal(retryAfterMs('  3 '), 3000);
});

test('retryAfterMs: HTTP-date in the future, in the past', () => {
  const future = new Date(Date.now() + 10_000).toUTCString();
  const ms = retryAfterMs(future);
  // The date has whole seconds: between 9 and 10 seconds from now.
  assert.ok(ms > 8_000 && ms <= 10_000, `got ${ms} for ${future}`);
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 07:28:00 GMT'), 0);
  assert.equal(retryAfterMs(new Date(Date.now() - 60_000).toUTCString()), 0);
});

test('retryAfterMs: absent and garbage are 0', () => {
  assert.equal(retryAfterMs(undefined), 0);
  for (const v of ['', '   ', 'soon', '5 seconds', '1e3', '0x10', '-5', '1.5', 'NaN']) {
    assert.equal(retryAfterMs(v), 0, JSON.stringify(v));
  }
});

test('retryAfterMs: garbage that Date.parse happens to read as a future year is 0', () => {
  assert.equal(retryAfterMs('soon 2099'), 0);
});

test('an unprocessed HTTP/2 stream goes again for any method, outside max_attempts, bounded on its own', () => {
  const unprocessed = (): FulcrumError => new FulcrumError(ErrorCode.UpstreamUnprocessed, 'upstream refused the stream (REFUSED_STREAM)', 'upstream', 502, true);
  assert.equal(retryReason(fakeCtx({ method: 'POST', body: 'kept' }), unprocessed(), 0, true), 'unprocessed');
  assert.equal(usesBudget('unprocessed'), false, 'nothing was processed: no budget');
  // Three attempts made, all refused: max_attempts (3) does not stop it...
  assert.equal(retryReason(fakeCtx({ method: 'POST', attempts: 3, unprocessedRetries: 2 }), unprocessed(), 0, true), 'unprocessed');
  // ...its own bound does.
  assert.equal(retryReason(fakeCtx({ method: 'POST', attempts: 20, unprocessedRetries: MAX_UNPROCESSED_RETRIES }), unprocessed(), 0, true), null);
  // A body that was not kept cannot go again; nor after the response head or with the client gone.
  assert.equal(retryReason(fakeCtx({ method: 'POST', body: 'dropped' }), unprocessed(), 0, true), null);
  assert.equal(retryReason(fakeCtx({ method: 'POST', headersSent: true }), unprocessed(), 0, true), null);
  assert.equal(retryReason(fakeCtx({ method: 'POST', clientGone: true }), unprocessed(), 0, true), null);
  // Other failures count the refused attempts out of max_attempts: 3 made, 2 of them refused, one reset more is allowed.
  assert.equal(retryReason(fakeCtx({ method: 'GET', attempts: 3, unprocessedRetries: 2 }), resetAfterSend(), 0, true), 'reset');
});
