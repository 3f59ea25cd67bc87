/**
 * What a careless operator types (issue 9, point 8), by kind rather than by instance: every
 * duration key the schema has, whoever adds it, refuses a number without a unit in a file;
 * keys that read as durations are durations; sizes are numbers of bytes. The exact messages
 * of each mistake are golden files in test/fixtures/config (errors-unitless-durations, ...).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { loadConfigText, sizeInBytes, unitlessDurations, validateConfig } from '../../../src/config/load.ts';
import { configJsonSchema, Duration, FulcrumConfigSchema, SeedConfigSchema, upstreamUrlProblem } from '../../../src/config/schema.ts';
import { unitlessDurationMessage } from '../../../src/config/duration.ts';
import { ConfigError } from '../../../src/errors.ts';

type Path = (string | number)[];
const durationInput = (Duration as any)._zod.def.in;

function unwrap(node: any): any {
  while (node) {
    const def = node._zod.def;
    if (['optional', 'default', 'prefault', 'nullable', 'readonly'].includes(def.type)) node = def.innerType;
    else if (def.type === 'pipe') node = def.in;
    else return node;
  }
  return node;
}

/** Every key of a schema with its path (records as "web", lists as [0]) and whether it is a Duration. */
function keysOf(schema: unknown): { path: Path; duration: boolean; node: any }[] {
  const out: { path: Path; duration: boolean; node: any }[] = [];
  const walk = (raw: unknown, path: Path, depth: number): void => {
    const node = unwrap(raw);
    if (!node || depth > 12) return;
    if (path.length > 0 && typeof path[path.length - 1] === 'string') out.push({ path, duration: node === durationInput, node });
    if (node === durationInput) return;
    const def = node._zod.def;
    if (def.type === 'object') for (const [key, child] of Object.entries(def.shape)) walk(child, [...path, key], depth + 1);
    else if (def.type === 'array') walk(def.element, [...path, 0], depth + 1);
    else if (def.type === 'record') walk(def.valueType, [...path, 'web'], depth + 1);
    else if (def.type === 'union') for (const option of def.options) if (unwrap(option)?._zod.def.type !== 'string') walk(option, path, depth + 1);
  };
  walk(schema, [], 0);
  // A union walked twice (an upstream as string or object) lists its keys once.
  const seen = new Set<string>();
  return out.filter((k) => !seen.has(JSON.stringify(k.path)) && seen.add(JSON.stringify(k.path)));
}

/** `{pools: {web: {upstreams: [...]}}}` with `value` set at `path` (parents created). */
function configWith(path: Path, value: unknown, seed = false): Record<string, unknown> {
  const config: Record<string, any> = seed ? { backends: ['http://127.0.0.1:9001'] } : { pools: { web: { upstreams: ['http://127.0.0.1:9001'] } } };
  let node: any = config;
  for (let i = 0; i < path.length - 1; i++) {
    const key = path[i];
    node[key] ??= typeof path[i + 1] === 'number' ? [] : {};
    node = node[key];
  }
  node[path[path.length - 1]] = value;
  return config;
}

function problemsOf(text: string, file: string): ConfigError['problems'] {
  try {
    loadConfigText(text, file, {});
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

const fullDurations = keysOf(FulcrumConfigSchema).filter((k) => k.duration);
const seedDurations = keysOf(SeedConfigSchema).filter((k) => k.duration);
const dotted = (path: Path): string => path.map((k) => (typeof k === 'number' ? `[${k}]` : k)).join('.').replace(/\.\[/g, '[');

test('the schema walk finds the duration keys of every section (so the tests below cover each)', () => {
  const names = fullDurations.map((k) => dotted(k.path));
  for (const expected of [
    'listeners[0].keepalive_timeout',
    'listeners[0].limits.headers_timeout',
    'pools.web.timeouts.connect',
    'pools.web.keepalive.idle_timeout',
    'pools.web.retry.max_retry_after',
    'pools.web.health_check.interval',
    'pools.web.health_check.timeout',
    'pools.web.outlier_detection.base_ejection_time',
    'pools.web.circuit_breaker.open_time',
    'routes[0].rate_limits[0].per',
    'rate_limit.redis.timeout',
    'shutdown.grace_period',
    'reload.debounce',
  ]) {
    assert.ok(names.includes(expected), `${expected} not found among ${names.join(', ')}`);
  }
  assert.deepEqual(seedDurations.map((k) => dotted(k.path)).sort(), ['health_check_frequency', 'request_timeout']);
});

for (const [shape, keys] of [['full', fullDurations], ['seed', seedDurations]] as const) {
  for (const { path } of keys) {
    const name = dotted(path);
    test(`${shape} ${name}: a number without a unit is refused at its line with "write 5s or 5ms"; 5s and 0 are read`, () => {
      for (const [file, text] of [
        ['unitless.yaml', stringify(configWith(path, 5, shape === 'seed'))],
        ['unitless.json', JSON.stringify(configWith(path, 5, shape === 'seed'), null, 2)],
      ]) {
        const problem = problemsOf(text, file).find((p) => p.path === name);
        assert.ok(problem, `${file}: no problem at ${name}`);
        assert.equal(problem.message, 'a duration needs a unit, got 5: write 5s or 5ms');
        const line = text.split('\n')[problem.line - 1];
        assert.match(line ?? '', /:\s*5,?$/, `${file}:${problem.line} is not the line of ${name}`);
      }
      for (const good of ['5s', '250ms']) {
        const problems = problemsOf(stringify(configWith(path, good, shape === 'seed')), 'good.yaml');
        assert.equal(problems.find((p) => p.path === name), undefined, `${good} refused at ${name}`);
      }
      // A bare 0 means the same in any unit: allowed wherever "0s" is (some keys need more than 0).
      const zero = problemsOf(stringify(configWith(path, 0, shape === 'seed')), 'zero.yaml').find((p) => p.path === name);
      const zeroSeconds = problemsOf(stringify(configWith(path, '0s', shape === 'seed')), 'zero.yaml').find((p) => p.path === name);
      assert.equal(zero?.message, zeroSeconds?.message);
    });
  }
}

test('keys named like durations are durations, and sizes are numbers of bytes (a new key cannot slip past)', () => {
  const durationName = /(timeout|interval|_time$|^time$|period|grace|debounce|window|delay|ttl|_after$|frequency|^per$|backoff|_age$)/;
  for (const k of [...keysOf(FulcrumConfigSchema), ...keysOf(SeedConfigSchema)]) {
    const key = String(k.path[k.path.length - 1]);
    if (durationName.test(key) && !key.endsWith('_bytes') && k.node._zod.def.type !== 'object') assert.ok(k.duration, `${dotted(k.path)} reads as a duration but is not a Duration in the schema`);
    if (key.endsWith('_bytes')) assert.equal(k.node._zod.def.type, 'number', `${dotted(k.path)} is a size: a number of bytes`);
  }
});

test('a quoted number is no better than a bare one; "0" and 0 are zero', () => {
  const problems = problemsOf('pools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n    health_check: {interval: "5000"}\n    timeouts: {request: 0, idle_body: "0"}\n', 'q.yaml');
  assert.deepEqual(
    problems.map((p) => `${p.line}:${p.column}: ${p.path}: ${p.message}`),
    ['4:30: pools.web.health_check.interval: a duration needs a unit, got "5000": write 5000ms (5s)'],
  );
});

test('0 is refused where it makes no sense (a probe interval of 0 would probe in a busy loop)', () => {
  const problems = problemsOf('pools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n    health_check: {interval: 0, timeout: "0s", fast_interval: 0}\n    timeouts: {connect: 0}\n', 'z.yaml');
  assert.deepEqual(
    problems.map((p) => `${p.path}: ${p.message}`).sort(),
    [
      'pools.web.health_check.fast_interval: must be longer than 0 (write e.g. 5s)',
      'pools.web.health_check.interval: must be longer than 0 (write e.g. 5s)',
      'pools.web.health_check.timeout: must be longer than 0 (write e.g. 5s)',
      'pools.web.timeouts.connect: must be longer than 0 (write e.g. 5s)',
    ],
  );
});

test('the hint suggests seconds and milliseconds for small numbers, milliseconds (and the short form) for large ones', () => {
  assert.equal(unitlessDurationMessage(5), 'a duration needs a unit, got 5: write 5s or 5ms');
  assert.equal(unitlessDurationMessage(2), 'a duration needs a unit, got 2: write 2s or 2ms');
  assert.equal(unitlessDurationMessage(30000), 'a duration needs a unit, got 30000: write 30000ms (30s)');
  assert.equal(unitlessDurationMessage(1500), 'a duration needs a unit, got 1500: write 1500ms');
  assert.equal(unitlessDurationMessage('10'), 'a duration needs a unit, got "10": write 10s or 10ms');
});

test('environment overrides of a file are checked too, and named', () => {
  // No override sets a duration today; the walk runs on the overridden configuration all the same.
  assert.deepEqual(unitlessDurations({ pools: { web: { upstreams: ['http://a:1'], timeouts: { connect: 5, request: 0 } } } }, FulcrumConfigSchema), [[['pools', 'web', 'timeouts', 'connect'], 5]]);
});

test('code keeps numbers as milliseconds: createBalancer and validateConfig take { interval: 5000 }', () => {
  const { config } = validateConfig({ pools: { web: { upstreams: ['http://127.0.0.1:9001'], health_check: { interval: 5000 } } } });
  assert.equal(config.pools.web.health_check!.interval, 5000);
});

test('fulcrum schema tells editors the same: a duration is 0 or a string with a unit', () => {
  const schema = configJsonSchema() as any;
  const interval = schema.properties.pools.additionalProperties.properties.health_check.properties.interval;
  assert.deepEqual(interval.anyOf[0], { const: 0 });
  assert.equal(interval.anyOf[1].type, 'string');
  const pattern = new RegExp(interval.anyOf[1].pattern);
  assert.ok(pattern.test('5s') && pattern.test('250ms') && pattern.test('1.5m') && !pattern.test('5'));
  assert.ok(!interval.anyOf.some((o: { type?: string }) => o.type === 'number'));
});

test('sizes with a unit become the number to write (K, M, G as powers of 1024, as nginx reads 10m)', () => {
  assert.equal(sizeInBytes('10MB'), 10 * 1024 * 1024);
  assert.equal(sizeInBytes('64 KiB'), 64 * 1024);
  assert.equal(sizeInBytes('1g'), 1024 ** 3);
  assert.equal(sizeInBytes('512b'), 512);
  assert.equal(sizeInBytes('lots'), undefined);
  const [problem] = problemsOf('listeners:\n  - limits: {max_body_bytes: 10MB}\npools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n', 's.yaml');
  assert.equal(`${problem.line}: ${problem.path}: ${problem.message}`, '2: listeners[0].limits.max_body_bytes: max_body_bytes is a number of bytes: write 10485760 for 10MB');
});

test('a YAML syntax error is one problem with a key path and a hint, placed at its cause', () => {
  // An unclosed quote makes the parser report two errors at the end of the file.
  const problems = problemsOf('pools:\n  web:\n    upstreams: ["http://127.0.0.1:9001]\n    policy: random\n', 'q.yaml');
  assert.equal(problems.length, 1);
  assert.deepEqual(problems[0], { file: 'q.yaml', line: 3, column: 17, path: 'pools.web.upstreams', message: 'invalid YAML: the string " opened here is not closed: end it with " on the same line' });
});

test('duplicate keys are each named with both lines, in YAML and in JSON', () => {
  const yaml = problemsOf('pools:\n  web:\n    upstreams: [http://127.0.0.1:9001]\n    policy: random\n    policy: rr\n', 'd.yaml');
  assert.deepEqual(yaml.map((p) => `${p.line}:${p.column}: ${p.path}: ${p.message}`), ['5:5: pools.web.policy: duplicate key "policy" (first on line 4): only one of the two would count; keep one']);
  const json = problemsOf('{"pools": {"web": {"upstreams": ["http://127.0.0.1:9001"], "policy": "random", "policy": "rr"}}}', 'd.json');
  assert.equal(json[0].path, 'pools.web.policy');
});

test('every example in examples/ loads (their durations have units), seed shapes included', () => {
  const dir = new URL('../../../examples/', import.meta.url);
  const files = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f));
  assert.ok(files.length >= 3);
  for (const f of files) assert.deepEqual(problemsOf(readFileSync(new URL(f, dir), 'utf8'), f), [], f);
  // A seed's "30s" is read in the seed's shape; widened to milliseconds it is not a bare number.
  assert.equal(loadConfigText('{"health_check_frequency": "30s", "backends": ["http://127.0.0.1:9001"]}', 'seed.json', {}).config.pools.default.health_check!.interval, 30_000);
});

test('upstream URL hints give the fix for the URL typed, not a stock example', () => {
  const cases: [string, string][] = [
    ['http//127.0.0.1:3', 'missing "http://": write http://127.0.0.1:3'],
    ['http:127.0.0.1:2', 'missing "http://": write http://127.0.0.1:2'],
    ['url:http://127.0.0.1:1', '"url:http://127.0.0.1:1" is a key and its value without a space: write "url: http://127.0.0.1:1" (YAML needs a space after the colon)'],
    ['http://::1:8080', 'an IPv6 address goes in brackets: write http://[::1]:8080'],
    ['http://127.0.0.1:99999', '"99999" is not a port: write http://127.0.0.1:PORT with PORT from 1 to 65535'],
    ['htp://h:1', 'htp:// is not a scheme Fulcrum knows: did you mean http://h:1?'],
    ['ftp://h:1', 'ftp:// upstreams are not supported: an upstream is http://host:port or https://host:port'],
    // https upstreams keep their scheme in every hint.
    ['htps://h:1', 'htps:// is not a scheme Fulcrum knows: did you mean https://h:1?'],
    ['https://::1:8443', 'an IPv6 address goes in brackets: write https://[::1]:8443'],
    ['https://h:99999', '"99999" is not a port: write https://h:PORT with PORT from 1 to 65535'],
    ['https://h:1/api', 'an upstream URL has no path ("/api"): the request\'s own path is sent; write https://h:1 (route by path with routes[].path_prefix)'],
  ];
  for (const [url, message] of cases) assert.equal(upstreamUrlProblem(url), message, url);
  assert.equal(upstreamUrlProblem('http://[::1]:8080'), undefined);
  assert.equal(upstreamUrlProblem('https://backend.internal:8443'), undefined);
});

test('routes[].path: /admin (the natural guess) points to path_prefix; a bound is said in words', () => {
  const problems = problemsOf('pools:\n  web:\n    upstreams:\n      - url: http://127.0.0.1:9001\n        weight: 0\nroutes:\n  - path: /admin\n    pool: web\n', 'r.yaml');
  assert.deepEqual(problems.map((p) => `${p.line}:${p.column}: ${p.path}: ${p.message}`), [
    '5:17: pools.web.upstreams[0].weight: must be more than 0, got 0',
    '7:11: routes[0].path: path is how the path is forwarded ({forward, encoded_slashes}); to match requests by path, write path_prefix: /admin',
  ]);
});
