/**
 * The reload diff: validated configurations in, the short lines an operator reads in the log
 * out. Configurations are built from YAML through the real loader, so defaults are filled in
 * exactly as on a reload.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfigText } from '../../src/config/load.ts';
import { diffConfigs, formatChanges, restartNotes } from '../../src/config/diff.ts';
import type { FulcrumConfig } from '../../src/config/schema.ts';

/** A validated config; `{}` as the environment so FULCRUM_* variables cannot leak in. */
function config(yaml: string): FulcrumConfig {
  return loadConfigText(yaml, '<inline>', {}).config;
}

function lines(before: string, after: string): string[] {
  return formatChanges(diffConfigs(config(before), config(after)));
}

const base = `
listeners:
  - port: 8080
pools:
  api:
    upstreams:
      - http://10.0.0.1:80
      - http://10.0.0.2:80
  web:
    upstreams: [http://10.0.1.1:80]
routes:
  - path_prefix: /api
    pool: api
  - pool: web
`;

test('the example from the issue: an upstream added and a weight changed', () => {
  const after = base.replace('      - http://10.0.0.2:80', '      - { url: http://10.0.0.2:80, weight: 3 }\n      - http://10.0.0.4:80');
  assert.deepEqual(lines(base, after), ['pool api: +1 upstream 10.0.0.4:80, weight of 10.0.0.2:80 1 -> 3']);
  assert.deepEqual(diffConfigs(config(base), config(after)), [
    { area: 'pool api', text: '+1 upstream 10.0.0.4:80' },
    { area: 'pool api', text: 'weight of 10.0.0.2:80 1 -> 3' },
  ]);
});

test('the same configuration, or the same one spelled differently, is no change', () => {
  assert.deepEqual(diffConfigs(config(base), config(base)), []);
  assert.deepEqual(formatChanges([]), []);
  // Defaults written out, the default port spelled out and the routes reordered change nothing.
  const spelled = `
listeners:
  - { host: 0.0.0.0, port: 8080, keepalive_timeout: 5s }
pools:
  web:
    policy: round-robin
    upstreams: ["http://10.0.1.1"]
  api:
    timeouts: { connect: 5000ms }
    upstreams: [http://10.0.0.1:80, { url: http://10.0.0.2:80, weight: 1 }]
routes:
  - pool: web
  - path_prefix: /api
    pool: api
log: { level: info }
`;
  assert.deepEqual(diffConfigs(config(base), config(spelled)), []);
});

test('upstreams removed and added are listed by host:port', () => {
  const after = base.replace('      - http://10.0.0.1:80\n', '      - http://10.0.0.4:80\n      - http://10.0.0.5:80\n');
  assert.deepEqual(lines(base, after), ['pool api: -1 upstream 10.0.0.1:80, +2 upstreams 10.0.0.4:80, 10.0.0.5:80']);
});

test('pools added and removed', () => {
  const after = base.replace('  web:\n    upstreams: [http://10.0.1.1:80]\n', '  web:\n    upstreams: [http://10.0.1.1:80]\n  search:\n    policy: least-connections\n    upstreams: [http://10.0.2.1:80, http://10.0.2.2:80]\n');
  assert.deepEqual(lines(base, after), ['+pool search (2 upstreams, least-connections)']);
  assert.deepEqual(lines(after, base), ['-pool search']);
});

test('a policy change', () => {
  const after = base.replace('  api:\n', '  api:\n    policy: least-connections\n');
  assert.deepEqual(lines(base, after), ['pool api: policy round-robin -> least-connections']);
});

test('timeouts are shown as durations, other numbers as numbers', () => {
  const after = base.replace('  api:\n', '  api:\n    timeouts: { connect: 2s, request: 1500ms }\n    retry: { max_attempts: 2 }\n');
  assert.deepEqual(lines(base, after), ['pool api: timeouts.connect 5s -> 2s, timeouts.request 0s -> 1500ms, retry.max_attempts 3 -> 2']);
});

test('a health check added, then changed', () => {
  const withCheck = base.replace('  web:\n', '  web:\n    health_check: { path: /healthz }\n');
  assert.deepEqual(lines(base, withCheck), ['pool web: health_check added']);
  assert.deepEqual(lines(withCheck, base), ['pool web: health_check removed']);
  const faster = withCheck.replace('{ path: /healthz }', '{ path: /healthz, interval: 1s, expected_status: [200] }');
  assert.deepEqual(lines(withCheck, faster), ['pool web: health_check.expected_status ["200-399"] -> [200], health_check.interval 5s -> 1s']);
});

test('a listener firewall change, and listeners added and removed', () => {
  const guarded = base.replace('  - port: 8080\n', '  - port: 8080\n    firewall: { deny: [10.0.0.0/8] }\n');
  assert.deepEqual(lines(base, guarded), ['listener 0.0.0.0:8080: firewall added']);
  const wider = guarded.replace('deny: [10.0.0.0/8]', 'deny: [10.0.0.0/8, 192.168.0.0/16]');
  assert.deepEqual(lines(guarded, wider), ['listener 0.0.0.0:8080: firewall.deny ["10.0.0.0/8"] -> ["10.0.0.0/8","192.168.0.0/16"]']);
  const limited = base.replace('  - port: 8080\n', '  - port: 8080\n    keepalive_timeout: 30s\n    limits: { max_connections: 1000 }\n');
  assert.deepEqual(lines(base, limited), ['listener 0.0.0.0:8080: keepalive_timeout 5s -> 30s, limits.max_connections 0 -> 1000']);
  const two = base.replace('  - port: 8080\n', '  - port: 8080\n  - { name: admin, host: 127.0.0.1, port: 9090 }\n');
  assert.deepEqual(lines(base, two), ['+listener admin']);
  assert.deepEqual(lines(two, base), ['-listener admin']);
});

test('a route pool change, routes added and removed, rate limits summarised', () => {
  const moved = base.replace('path_prefix: /api\n    pool: api', 'path_prefix: /api\n    pool: web');
  assert.deepEqual(lines(base, moved), ['route /api: pool api -> web']);
  const more = base.replace('  - pool: web\n', '  - pool: web\n  - { name: admin, host: admin.example.com, pool: web }\n');
  assert.deepEqual(lines(base, more), ['+route admin -> web']);
  assert.deepEqual(lines(more, base), ['-route admin']);
  const limited = base.replace('    pool: api\n', '    pool: api\n    rate_limits: [{ rate: 10 }]\n');
  assert.deepEqual(lines(base, limited), ['route /api: rate_limits changed (0 -> 1 limits)']);
  const two = limited.replace('[{ rate: 10 }]', '[{ rate: 20 }, { rate: 100, per: 1m }]');
  assert.deepEqual(lines(limited, two), ['route /api: rate_limits changed (1 -> 2 limits)']);
  const faster = limited.replace('[{ rate: 10 }]', '[{ rate: 10, per: 2s }]');
  assert.deepEqual(lines(limited, faster), ['route /api: rate_limits[0].per 1s -> 2s']);
});

test('other sections by key path, in order: pools, routes, listeners, then the rest', () => {
  const after = base
    .replace('path_prefix: /api\n    pool: api', 'path_prefix: /api\n    pool: web')
    .replace('  - port: 8080\n', '  - port: 8081\n')
    .replace('  api:\n', '  api:\n    policy: random\n')
    .concat('log: { level: debug, access_log: false }\nshutdown: { grace_period: 2m }\n');
  assert.deepEqual(lines(base, after), [
    'pool api: policy round-robin -> random',
    'route /api: pool api -> web',
    '-listener 0.0.0.0:8080',
    '+listener 0.0.0.0:8081',
    'log: level info -> debug, access_log true -> false',
    'shutdown: grace_period 30s -> 2m',
  ]);
});

test('secrets are never printed', () => {
  const withRedis = `${base}rate_limit:\n  redis: { url: "redis://:hunter2@127.0.0.1:6379" }\n`;
  const changed = withRedis.replace('hunter2', 'correct-horse');
  const moved = withRedis.replace('127.0.0.1', '10.9.9.9');
  const outputs = [lines(base, withRedis), lines(withRedis, base), lines(withRedis, changed), lines(withRedis, moved)];
  assert.deepEqual(outputs, [['rate_limit: redis added'], ['rate_limit: redis removed'], ['rate_limit: redis.url (changed)'], ['rate_limit: redis.url (changed)']]);
  for (const out of outputs) {
    assert.ok(!out.join('\n').includes('hunter2'), out.join('\n'));
    assert.ok(!out.join('\n').includes('correct-horse'), out.join('\n'));
  }
  // A URL without a password is not a secret: the operator should see where Redis moved.
  const plain = `${base}rate_limit:\n  redis: { url: "redis://127.0.0.1:6379" }\n`;
  assert.deepEqual(lines(plain, plain.replace('127.0.0.1', '10.9.9.9')), ['rate_limit: redis.url redis://127.0.0.1:6379 -> redis://10.9.9.9:6379']);
});

test('the admin token is never printed; new sections are diffed like the others', () => {
  const admin = `${base}admin:\n  token: 0123456789abcdef-s3cret\n`;
  const rotated = admin.replace('0123456789abcdef-s3cret', 'fedcba9876543210-other');
  assert.deepEqual(lines(base, admin), ['admin: added']);
  const out = lines(admin, rotated.replace('admin:\n', 'admin:\n  port: 9902\n'));
  assert.deepEqual(out, ['admin: port 9901 -> 9902, token (changed)']);
  assert.ok(!/s3cret|other/.test(out.join('\n')), out.join('\n'));
  assert.deepEqual(lines(base, `${base}reload: { watch: true, debounce: 1s }\n`), ['reload: watch false -> true, debounce 250ms -> 1s']);
});

test('secret-named keys of sections the schema does not know print as (changed)', () => {
  const before = config(base);
  const withUsers = (password: string, port: number) =>
    ({ ...before, users: { list: [{ name: 'ops', password }], api_token: `tok-${password}`, port } }) as unknown as FulcrumConfig;
  assert.deepEqual(formatChanges(diffConfigs(before, withUsers('pw1', 1))), ['users: added']);
  const out = formatChanges(diffConfigs(withUsers('pw1', 1), withUsers('pw2', 2)));
  assert.deepEqual(out, ['users: list[0].password (changed), api_token (changed), port 1 -> 2']);
  assert.ok(!/pw1|pw2/.test(out.join('\n')), out.join('\n'));
});

test('long lists are cut and many changes counted, so a line stays short', () => {
  const cidrs = Array.from({ length: 12 }, (_, i) => `10.${i}.0.0/16`);
  const wide = base.replace('  - port: 8080\n', `  - port: 8080\n    trusted_proxies: [${cidrs.join(', ')}]\n`);
  const [line] = lines(base, wide);
  assert.match(line, /^listener 0\.0\.0\.0:8080: trusted_proxies \[\] -> \["10\.0\.0\.0\/16",.*\.\.\.$/);
  assert.ok(line.length < 120, line);
  const many = base.replace('      - http://10.0.0.2:80\n', Array.from({ length: 6 }, (_, i) => `      - http://10.0.0.${10 + i}:80\n`).join(''));
  assert.deepEqual(lines(base, many), ['pool api: -1 upstream 10.0.0.2:80, +6 upstreams 10.0.0.10:80, 10.0.0.11:80, 10.0.0.12:80 and 3 more']);
  const changes = Array.from({ length: 10 }, (_, i) => ({ area: 'pool api', text: `change ${i}` }));
  assert.deepEqual(formatChanges(changes), ['pool api: change 0, change 1, change 2, change 3, change 4, change 5, change 6, and 3 more']);
});

test('restartNotes: what a reload leaves for a restart', () => {
  const load = (text: string) => loadConfigText(text, 'x.yaml').config;
  const before = load('listeners: [{host: 127.0.0.1, port: 8080}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9901}\n');
  assert.deepEqual(restartNotes(before, before), []);
  const after = load('listeners: [{host: 127.0.0.1, port: 8081, limits: {max_header_bytes: 32768}}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9902}\nlog: {format: json}\n');
  assert.deepEqual(restartNotes(before, after), [
    'listener 127.0.0.1:8081 is new or moved: it starts listening on restart (the running listeners keep their addresses)',
    'listener 127.0.0.1:8080 is gone from the file: it keeps listening until restart',
    'admin: 127.0.0.1:9902 takes effect on restart; the admin API stays on 127.0.0.1:9901 until then',
    'log.format takes effect on restart',
  ]);
  // max_header_bytes on a listener that stays: live with Fulcrum's own HTTP/1.1 server, fixed per server with node:http.
  const limits = load('listeners: [{host: 127.0.0.1, port: 8080, limits: {max_header_bytes: 32768}}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9901}\n');
  assert.deepEqual(restartNotes(before, limits), []);
  const nodeBefore = load('listeners: [{host: 127.0.0.1, port: 8080, engine: node}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9901}\n');
  const nodeLimits = load('listeners: [{host: 127.0.0.1, port: 8080, engine: node, limits: {max_header_bytes: 32768}}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9901}\n');
  assert.deepEqual(restartNotes(nodeBefore, nodeLimits), ['listener 127.0.0.1:8080: limits.max_header_bytes takes effect on restart']);
  assert.deepEqual(restartNotes(before, nodeBefore), ['listener 127.0.0.1:8080: engine takes effect on restart']);
  // http to https on the same address: the listener keeps speaking http until a restart; certificates alone reload live.
  const https = load('listeners: [{host: 127.0.0.1, port: 8080, protocol: https, tls: {certificates: [{cert: a.pem}]}}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9901}\n');
  assert.deepEqual(restartNotes(before, https), ['listener 127.0.0.1:8080: protocol https takes effect on restart (it speaks http until then)']);
  const moreCertificates = load('listeners: [{host: 127.0.0.1, port: 8080, protocol: https, tls: {certificates: [{cert: a.pem}, {cert: b.pem}], profile: modern}}]\npools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 9901}\n');
  assert.deepEqual(restartNotes(https, moreCertificates), []);
});

test('restartNotes: the admin address as really bound, IPv6 in brackets', () => {
  const load = (text: string) => loadConfigText(text, 'x.yaml').config;
  const before = load('pools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 0}\n');
  const pinned = load('pools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {port: 37151}\n');
  const bound = { listeners: [{ host: '0.0.0.0', port: 8080 }], admin: { host: '127.0.0.1', port: 37151 } };
  assert.deepEqual(restartNotes(before, pinned, bound), [], 'already there');
  const v6 = load('pools: {web: {upstreams: ["http://10.0.0.1:80"]}}\nadmin: {host: "::1", port: 19999}\n');
  assert.deepEqual(restartNotes(before, v6, bound), ['admin: [::1]:19999 takes effect on restart; the admin API stays on 127.0.0.1:37151 until then']);
});
