/**
 * The forward proxy's pieces that need no sockets: target parsing (CONNECT, absolute-form, the
 * `/forward?url=` route), Proxy-* header stripping, the bounded destination table, and the
 * loader's check of rules and password hashes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { absoluteTarget, connectTarget, dropProxyHeaders, forwardSettingsProblem, isAbsoluteForm, routeTarget, type ForwardTarget } from '../../../src/forward/forward-proxy.ts';
import { DestinationClients } from '../../../src/forward/destination-clients.ts';
import { validateConfig } from '../../../src/config/load.ts';
import { ConfigError } from '../../../src/errors.ts';
import { TimeoutsConfig } from '../../../src/config/schema.ts';
import type { RequestHead } from '../../../src/core/context.ts';

const ok = (t: ForwardTarget | { status: number }): ForwardTarget => {
  assert.ok(!('status' in t), `refused: ${JSON.stringify(t)}`);
  return t as ForwardTarget;
};
const status = (t: ForwardTarget | { status: number }): number => ('status' in t ? t.status : 0);

test('connectTarget: host:port in authority-form, IPv6 in brackets, the port required and in range', () => {
  assert.deepEqual(ok(connectTarget('Example.COM:443')), { host: 'example.com', port: 443, authority: 'Example.COM:443', path: '' });
  assert.deepEqual(ok(connectTarget('[::1]:8443')), { host: '::1', port: 8443, authority: '[::1]:8443', path: '' });
  assert.equal(ok(connectTarget('10.0.0.1:22')).host, '10.0.0.1');
  for (const bad of ['example.com', 'example.com:', 'example.com:0', 'example.com:65536', 'example.com:123456', 'user@example.com:443', '[::1:443', '::1:443', 'a/b:80', ':80', '']) {
    assert.equal(status(connectTarget(bad)), 400, bad);
  }
});

test('absoluteTarget: the URI authority (port 80 by default), the path to send; https refused', () => {
  assert.deepEqual(ok(absoluteTarget('http://h.example/x?y', 'h.example', '/x?y')), { host: 'h.example', port: 80, authority: 'h.example', path: '/x?y' });
  assert.deepEqual(ok(absoluteTarget('http://h.example:/x', 'h.example:', '/x')), { host: 'h.example', port: 80, authority: 'h.example', path: '/x' }, 'an empty port is the default, sent as the host alone');
  assert.equal(ok(absoluteTarget('HTTP://[::1]:81/', '[::1]:81', '/')).host, '::1');
  assert.equal(status(absoluteTarget('https://h.example/', 'h.example', '/')), 400);
  assert.equal(status(absoluteTarget('HTTPS://h.example/', 'h.example', '/')), 400);
  assert.ok(isAbsoluteForm('http://h/'));
  assert.ok(!isAbsoluteForm('/a?u=http://h/'));
  assert.ok(!isAbsoluteForm('*'));
});

test('routeTarget: GET and HEAD with one http:// url parameter; the rest refused', () => {
  const head = (method: string): RequestHead => ({ method, url: '/forward', httpVersion: '1.1', httpVersionMajor: 1, httpVersionMinor: 1, headers: {}, rawHeaders: [] });
  const url = (u: string): string => `?url=${encodeURIComponent(u)}`;
  assert.deepEqual(ok(routeTarget(head('GET'), url('http://127.0.0.1:8080/a/b?c=1'))), { host: '127.0.0.1', port: 8080, authority: '127.0.0.1:8080', path: '/a/b?c=1' });
  assert.equal(ok(routeTarget(head('HEAD'), url('http://h.example'))).path, '/');
  assert.equal(ok(routeTarget(head('GET'), url('http://h.example?q=1'))).path, '/?q=1');
  assert.equal(status(routeTarget(head('POST'), url('http://h.example/'))), 405);
  for (const bad of ['https://h.example/', 'ftp://h.example/', 'http://h.example/a b', 'http://user@h.example/', '//h.example/', 'h.example']) {
    assert.equal(status(routeTarget(head('GET'), url(bad))), 400, bad);
  }
  assert.equal(status(routeTarget(head('GET'), '')), 400);
  assert.equal(status(routeTarget(head('GET'), '?other=1')), 400);
});

test('dropProxyHeaders: every Proxy-* field and Proxy itself (httpoxy) go; the rest stay in order', () => {
  const headers = ['host', 'h', 'Proxy-Authorization', 'Basic x', 'accept', '*/*', 'proxy-connection', 'keep-alive', 'PROXY', 'http://evil', 'Proxy-Foo', 'y', 'proxyish', 'kept', 'x-proxy-id', 'kept too'];
  dropProxyHeaders(headers);
  assert.deepEqual(headers, ['host', 'h', 'accept', '*/*', 'proxyish', 'kept', 'x-proxy-id', 'kept too']);
});

test('DestinationClients: one client per address, port and timeouts; at most `max`, the least recently used closed first', async () => {
  const timeouts = TimeoutsConfig.parse({});
  const table = new DestinationClients(2);
  const a = table.lease('127.0.0.1', 4, 8001, timeouts);
  assert.equal(a.upstream.id, '127.0.0.1:8001');
  assert.equal(table.lease('127.0.0.1', 4, 8001, timeouts), a, 'the same destination is the same client');
  const v6 = table.lease('::1', 6, 8001, timeouts);
  assert.equal(v6.upstream.id, '[::1]:8001');
  assert.equal(v6.upstream.hostname, '[::1]');
  // a is used again: the IPv6 one is now the least recently used.
  table.lease('127.0.0.1', 4, 8001, timeouts);
  table.lease('127.0.0.1', 4, 8002, timeouts);
  assert.equal(table.size, 2);
  assert.equal(table.evicted, 1);
  assert.notEqual(table.lease('::1', 6, 8001, timeouts), v6, 'evicted: a new client');
  assert.equal(table.evicted, 2);
  assert.notEqual(table.lease('127.0.0.1', 4, 8002, TimeoutsConfig.parse({ connect: 100 })).upstream, a.upstream, 'other timeouts, another client');
  for (let i = 0; i < 1000; i++) table.lease('127.0.0.1', 4, 10_000 + i, timeouts);
  assert.equal(table.size, 2, 'client-chosen destinations never grow the table past max');
  await table.close();
  assert.equal(table.size, 0);
});

test('forward_proxy rules and password hashes are compiled by the loader: problems name the place', () => {
  assert.equal(forwardSettingsProblem({ rules: [{ action: 'allow', ports: [80] }], connect: true, timeouts: TimeoutsConfig.parse({}) }), null);
  const config = (forward: unknown, route?: unknown) => ({
    listeners: [{ port: 0, forward_proxy: forward }],
    pools: { web: { upstreams: ['http://127.0.0.1:9000'] } },
    ...(route === undefined ? {} : { routes: [{ path_prefix: '/forward', forward_proxy: route }, { pool: 'web' }] }),
  });
  const problems = (raw: unknown): string[] => {
    try {
      validateConfig(raw);
      return [];
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.problems.map((p) => `${p.path}: ${p.message}`);
    }
  };
  assert.deepEqual(problems(config({ rules: [{ ports: [80] }] })), []);
  const badHash = problems(config({ rules: [{ ports: [80] }], auth: { users: { alice: 'scrypt$not-a-hash' } } }));
  assert.equal(badHash.length, 1);
  assert.match(badHash[0], /^listeners\[0\]\.forward_proxy: .*alice.*hash-password/);
  const badRange = problems(config({ rules: [{ ports: ['9000-8000'] }] }, { rules: [{ name: 'r', ports: ['9000-8000'] }] }));
  assert.equal(badRange.length, 2, badRange.join('\n'));
  assert.match(badRange[0], /^listeners\[0\]\.forward_proxy: forward policy rule-0: ports/);
  assert.match(badRange[1], /^routes\[0\]\.forward_proxy: forward policy r: ports/);
});
