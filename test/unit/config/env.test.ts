import { test } from 'node:test';
import assert from 'node:assert/strict';
import { envOverrides, loadConfigText } from '../../../src/config/load.ts';
import { ConfigError } from '../../../src/errors.ts';

const full = `listeners:
  - port: 8080
    host: 0.0.0.0
  - port: 8081
pools:
  web:
    upstreams: [http://127.0.0.1:9001]
  api:
    policy: random
    upstreams: [http://127.0.0.1:9002]
routes:
  - pool: web
  - path_prefix: /api
    pool: api
`;

const seed = `{"port": 3000, "strategy": "random", "backends": ["http://127.0.0.1:9001"]}`;

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a ConfigError, but the config loaded');
}

test('env: no variables leave the file as written', () => {
  const { config } = loadConfigText(full, 'full.yaml', {});
  assert.deepEqual(
    config.listeners.map((l) => [l.host, l.port]),
    [
      ['0.0.0.0', 8080],
      ['0.0.0.0', 8081],
    ],
  );
  assert.equal(config.log.level, 'info');
  assert.equal(config.pools.web.policy, 'round-robin');
  assert.equal(config.pools.api.policy, 'random');
});

test('env: FULCRUM_PORT, FULCRUM_HOST, FULCRUM_LOG_LEVEL and FULCRUM_POLICY are applied', () => {
  const { config } = loadConfigText(full, 'full.yaml', {
    FULCRUM_PORT: '9000',
    FULCRUM_HOST: '127.0.0.1',
    FULCRUM_LOG_LEVEL: 'debug',
    FULCRUM_POLICY: 'p2c',
  });
  // Only the first listener is overridden.
  assert.deepEqual(
    config.listeners.map((l) => [l.host, l.port]),
    [
      ['127.0.0.1', 9000],
      ['0.0.0.0', 8081],
    ],
  );
  assert.equal(config.log.level, 'debug');
  // FULCRUM_POLICY sets every pool, read as the canonical name.
  assert.equal(config.pools.web.policy, 'power-of-two-choices');
  assert.equal(config.pools.api.policy, 'power-of-two-choices');
});

test('env: FULCRUM_PORT accepts surrounding spaces', () => {
  const { config } = loadConfigText(full, 'full.yaml', { FULCRUM_PORT: ' 9001 ' });
  assert.equal(config.listeners[0].port, 9001);
});

test('env: an empty variable is ignored', () => {
  const { config } = loadConfigText(full, 'full.yaml', { FULCRUM_PORT: '', FULCRUM_LOG_LEVEL: '', FULCRUM_POLICY: '' });
  assert.equal(config.listeners[0].port, 8080);
  assert.equal(config.log.level, 'info');
  assert.equal(config.pools.api.policy, 'random');
});

test('env: FULCRUM_LOG_FORMAT and FULCRUM_ACCESS_LOG are applied', () => {
  for (const [text, value] of [
    ['0', false],
    ['false', false],
    ['1', true],
    ['true', true],
  ] as const) {
    const { config } = loadConfigText(full, 'full.yaml', { FULCRUM_LOG_FORMAT: 'json', FULCRUM_ACCESS_LOG: text });
    assert.equal(config.log.format, 'json');
    assert.equal(config.log.access_log, value, `FULCRUM_ACCESS_LOG=${text}`);
  }
});

test('env: overrides apply to the seed shape too', () => {
  const { config } = loadConfigText(seed, 'seed.json', { FULCRUM_PORT: '9000', FULCRUM_HOST: '::1', FULCRUM_POLICY: 'wrr' });
  assert.deepEqual(
    config.listeners.map((l) => [l.host, l.port]),
    [['::1', 9000]],
  );
  assert.equal(config.pools.default.policy, 'weighted-round-robin');
});

test('env: FULCRUM_HOST on a file without listeners makes the first listener', () => {
  const { config } = loadConfigText('pools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n', 'x.yaml', { FULCRUM_HOST: '127.0.0.1' });
  assert.equal(config.listeners.length, 1);
  const { limits, http2, ...listener } = config.listeners[0];
  assert.deepEqual(listener, { host: '127.0.0.1', port: 8080, protocol: 'http', engine: 'fulcrum', trusted_proxies: [], headers_with_underscores: 'drop', keepalive_timeout: 5000 });
  assert.equal(limits.max_header_bytes, 16_384, 'limits get their defaults');
  assert.equal(http2.h2c, false, 'so does http2');
});

test('env: a bad FULCRUM_PORT is reported as env FULCRUM_PORT', () => {
  const err = configError(() => loadConfigText(full, 'full.yaml', { FULCRUM_PORT: 'eighty' }));
  assert.equal(err.message, 'env FULCRUM_PORT: listeners[0].port: expected number, got string "eighty"');
  assert.deepEqual(err.problems, [
    { file: 'env FULCRUM_PORT', line: 0, column: 0, path: 'listeners[0].port', message: 'expected number, got string "eighty"' },
  ]);
});

test('env: an out-of-range FULCRUM_PORT is reported as env FULCRUM_PORT', () => {
  const err = configError(() => loadConfigText(full, 'full.yaml', { FULCRUM_PORT: '70000' }));
  assert.equal(err.message, 'env FULCRUM_PORT: listeners[0].port: must be at most 65535, got 70000');
});

test('env: a bad FULCRUM_PORT on a seed config is reported as env FULCRUM_PORT', () => {
  const err = configError(() => loadConfigText(seed, 'seed.json', { FULCRUM_PORT: 'x' }));
  assert.equal(err.message, 'env FULCRUM_PORT: listeners[0].port: expected number, got string "x"');
});

test('env: a bad FULCRUM_LOG_LEVEL is reported as env FULCRUM_LOG_LEVEL', () => {
  const err = configError(() => loadConfigText(full, 'full.yaml', { FULCRUM_LOG_LEVEL: 'loud' }));
  assert.equal(
    err.message,
    'env FULCRUM_LOG_LEVEL: log.level: expected one of: "trace", "debug", "info", "warn", "error", "fatal", "silent" (value "loud")',
  );
});

test('env: a bad FULCRUM_POLICY is reported once per pool, with a did-you-mean', () => {
  const err = configError(() => loadConfigText(full, 'full.yaml', { FULCRUM_POLICY: 'leastconnn' }));
  assert.deepEqual(
    err.problems.map((p) => [p.file, p.path]),
    [
      ['env FULCRUM_POLICY', 'pools.web.policy'],
      ['env FULCRUM_POLICY', 'pools.api.policy'],
    ],
  );
  assert.equal(
    err.problems[0].message,
    'unknown policy "leastconnn" (did you mean "least-connections"?); policies: round-robin, weighted-round-robin, least-connections, random, power-of-two-choices',
  );
});

test('env: a bad FULCRUM_ACCESS_LOG is reported as env FULCRUM_ACCESS_LOG', () => {
  const err = configError(() => loadConfigText(full, 'full.yaml', { FULCRUM_ACCESS_LOG: 'maybe' }));
  assert.equal(err.message, 'env FULCRUM_ACCESS_LOG: log.access_log: expected true, false or a mapping {format, buffer_bytes, flush, path}, got string "maybe"');
});

test('env: env problems come before file problems, which keep their line:column', () => {
  const text = 'log:\n  level: info\npools:\n  web:\n    policy: nope\n    upstreams: [http://127.0.0.1:9001]\n';
  const err = configError(() => loadConfigText(text, 'f.yaml', { FULCRUM_PORT: '-1' }));
  assert.deepEqual(
    err.message.split('\n').map((line) => line.split(': ').slice(0, 2).join(': ')),
    ['env FULCRUM_PORT: listeners[0].port', 'f.yaml:5:13: pools.web.policy'],
  );
});

test('env: the documented overrides are exactly these', () => {
  assert.deepEqual(
    envOverrides.map((o) => o.name),
    ['FULCRUM_PORT', 'FULCRUM_HOST', 'FULCRUM_LOG_LEVEL', 'FULCRUM_LOG_FORMAT', 'FULCRUM_ACCESS_LOG', 'FULCRUM_ADMIN_TOKEN', 'FULCRUM_POLICY'],
  );
});

test('env: FULCRUM_ADMIN_TOKEN sets the token of an admin section, and never opens one the file lacks', () => {
  const token = 'from-the-environment-123';
  const withAdmin = loadConfigText('pools: {web: {upstreams: ["http://127.0.0.1:1"]}}\nadmin: {port: 0}\n', 'a.yaml', { FULCRUM_ADMIN_TOKEN: token });
  assert.equal(withAdmin.config.admin?.token, token);
  const without = loadConfigText('pools: {web: {upstreams: ["http://127.0.0.1:1"]}}\n', 'b.yaml', { FULCRUM_ADMIN_TOKEN: token });
  assert.equal(without.config.admin, undefined);
  // A bad token is reported against the variable, without printing it.
  assert.throws(
    () => loadConfigText('pools: {web: {upstreams: ["http://127.0.0.1:1"]}}\nadmin: {}\n', 'c.yaml', { FULCRUM_ADMIN_TOKEN: 'short' }),
    (err: Error) => err.message.includes('env FULCRUM_ADMIN_TOKEN') && !err.message.includes('"short"'),
  );
});
