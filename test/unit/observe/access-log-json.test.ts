/**
 * The `json` access-log line against its references: JSON.stringify of the same object (seeded
 * random field values, every awkward character class) and the pino line Fulcrum wrote before.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { RequestContext, type ForwardInfo } from '../../../src/core/context.ts';
import type { Downstream } from '../../../src/core/downstream.ts';
import { FulcrumError } from '../../../src/errors.ts';
import { accessFields, accessMessage, isoTime, jsonFormat, jsonString } from '../../../src/observe/access-log-json.ts';
import { createLogger } from '../../../src/observe/logger.ts';
import { mulberry32 } from '../../helpers/random.ts';

const random = mulberry32;

/** Characters that JSON escaping gets wrong most often, and plain ones. */
const awkward = ['"', '\\', '/', '\b', '\f', '\n', '\r', '\t', '\u0000', '\u0001', '\u001f', '\u007f', '\u0080', '\u00e9', '\u2028', '\u2029', '\ud83d\ude00', '\ud800', '\udfff', '\ufeff', '\uffff', '€', '中'];

function randomString(next: () => number): string {
  const length = Math.floor(next() * 24);
  let s = '';
  for (let i = 0; i < length; i++) {
    const r = next();
    if (r < 0.5) s += String.fromCharCode(0x20 + Math.floor(next() * 95));
    else if (r < 0.8) s += awkward[Math.floor(next() * awkward.length)];
    // Any UTF-16 unit at all, lone surrogates included.
    else s += String.fromCharCode(Math.floor(next() * 0x10000));
  }
  return s;
}

function randomNumber(next: () => number): number {
  const r = next();
  if (r < 0.4) return Math.floor(next() * 1e6);
  if (r < 0.7) return next() * 1e4;
  if (r < 0.8) return [0, -0, 1e21, 1e-7, Number.MAX_SAFE_INTEGER][Math.floor(next() * 5)];
  if (r < 0.9) return [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY][Math.floor(next() * 3)];
  return -next() * 1000;
}

function context(fields: { method: string; url: string; id?: string; upstream?: string | null; pool?: string | null; status: number; error?: FulcrumError | null; tunnelClose?: string | null; duration?: number; bytesIn?: number; bytesOut?: number; client?: string; listener?: string; attempts?: number; forward?: ForwardInfo | null }): RequestContext {
  const req = { method: fields.method, url: fields.url, httpVersion: '1.1', httpVersionMajor: 1, httpVersionMinor: 1, headers: {}, rawHeaders: [] };
  const ctx = new RequestContext(req, {} as Downstream, fields.listener ?? '127.0.0.1:8080', fields.client ?? '127.0.0.1', null);
  ctx.requestIdForUpstream = fields.id;
  ctx.upstream = fields.upstream === undefined || fields.upstream === null ? null : { id: fields.upstream };
  ctx.pool = fields.pool === undefined || fields.pool === null ? null : { name: fields.pool };
  ctx.status = fields.status;
  ctx.error = fields.error ?? null;
  ctx.tunnelClose = fields.tunnelClose ?? null;
  ctx.duration = fields.duration ?? 1.5;
  ctx.bytesIn = fields.bytesIn ?? 0;
  ctx.bytesOut = fields.bytesOut ?? 2;
  ctx.attempts = fields.attempts ?? 1;
  ctx.forward = fields.forward ?? null;
  return ctx;
}

/** What the line must be: JSON.stringify of the object pino was given, with pino's leading fields. */
function reference(ctx: RequestContext, level: number, now: number): string {
  return `${JSON.stringify({ level, time: new Date(now).toISOString(), pid: process.pid, log: 'access', ...accessFields(ctx), msg: accessMessage(ctx) })}\n`;
}

test('jsonString is JSON.stringify for every UTF-16 unit alone and between plain text', () => {
  for (let c = 0; c <= 0xffff; c++) {
    const s = String.fromCharCode(c);
    assert.equal(jsonString(s), JSON.stringify(s), `U+${c.toString(16).padStart(4, '0')}`);
    assert.equal(jsonString(`a${s}b`), JSON.stringify(`a${s}b`), `a U+${c.toString(16).padStart(4, '0')} b`);
  }
  assert.equal(jsonString(''), '""');
  assert.equal(jsonString('\ud83d\ude00'), '"\ud83d\ude00"', 'a surrogate pair stays as it is');
  assert.equal(jsonString('\ude00\ud83d'), '"\\ude00\\ud83d"', 'reversed surrogates are escaped');
});

test('json lines from seeded random field values: exactly JSON.stringify of the same object, and valid JSON', (t) => {
  const seed = Number(process.env.ACCESS_LOG_SEED ?? 0x5eed);
  t.diagnostic(`seed ${seed} (ACCESS_LOG_SEED=${seed} replays it)`);
  const next = random(seed);
  const maybe = <T>(value: T): T | null | undefined => (next() < 0.3 ? null : next() < 0.15 ? undefined : value);
  for (let i = 0; i < 20_000; i++) {
    const code = next() < 0.5 ? randomString(next) : null;
    const ctx = context({
      method: randomString(next),
      url: randomString(next),
      id: next() < 0.5 ? randomString(next) : undefined,
      upstream: maybe(randomString(next)),
      pool: maybe(randomString(next)),
      status: next() < 0.8 ? [200, 101, 404, 499, 502, 503][Math.floor(next() * 6)] : randomNumber(next),
      error: code === null ? null : Object.assign(new FulcrumError(code, randomString(next), 'upstream', 502, false)),
      tunnelClose: next() < 0.2 ? randomString(next) : null,
      duration: randomNumber(next),
      bytesIn: randomNumber(next),
      bytesOut: randomNumber(next),
      client: randomString(next),
      listener: randomString(next),
      attempts: randomNumber(next),
      forward:
        next() < 0.3
          ? {
              kind: (['absolute', 'connect', 'route'] as const)[Math.floor(next() * 3)],
              decision: ([null, 'allowed', 'denied'] as const)[Math.floor(next() * 3)],
              rule: next() < 0.3 ? null : randomString(next),
              reason: next() < 0.5 ? null : randomString(next),
            }
          : null,
    });
    const level = next() < 0.5 ? 30 : 40;
    const now = Math.floor(next() * 4e12);
    const line = jsonFormat.line(ctx, level, now);
    const expected = reference(ctx, level, now);
    assert.equal(line, expected, `case ${i} (seed ${seed})`);
    assert.deepEqual(JSON.parse(line), JSON.parse(expected), `case ${i} (seed ${seed})`);
    assert.ok(line.endsWith('}\n') && !line.slice(0, -1).includes('\n'), `case ${i}: one line`);
  }
});

test('json lines are what pino wrote before: same keys, order and values', () => {
  const written: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      written.push(String(chunk));
      callback();
    },
  });
  const pino = createLogger({ level: 'info', format: 'json' }, { destination: sink }).child({ log: 'access' });
  const cases = [
    context({ method: 'GET', url: '/x?y=1', status: 200, upstream: '10.0.0.1:80', pool: 'web' }),
    context({ method: 'POST', url: '/a "quoted" \\ path', id: 'from-proxy-1', status: 502, upstream: '10.0.0.2:80', pool: 'api', attempts: 2, error: new FulcrumError('FUL_UPSTREAM_CONNECT_REFUSED', 'connect failed (ECONNREFUSED)', 'upstream', 502, true) }),
    context({ method: 'GET', url: '/nowhere', status: 404, duration: 0.123456 }),
    context({ method: 'GET', url: '/chat', status: 101, upstream: '10.0.0.3:80', pool: 'ws', tunnelClose: 'client', duration: 93_412.5, bytesIn: 1234, bytesOut: 5678 }),
    context({ method: 'GET', url: '/caf\u00e9\u2028\t', status: 200, client: '::1', listener: 'public' }),
  ];
  for (const ctx of cases) {
    const level = ctx.status >= 500 ? 40 : 30;
    const before = written.length;
    pino[level === 40 ? 'warn' : 'info'](accessFields(ctx), accessMessage(ctx));
    const old = written[before];
    const time = (JSON.parse(old) as { time: string }).time;
    assert.equal(jsonFormat.line(ctx, level, Date.parse(time)), old);
  }
});

test('isoTime is toISOString and changes with the millisecond', () => {
  assert.equal(isoTime(0), '1970-01-01T00:00:00.000Z');
  assert.equal(isoTime(1), '1970-01-01T00:00:00.001Z');
  assert.equal(isoTime(1_700_000_000_123), new Date(1_700_000_000_123).toISOString());
});
