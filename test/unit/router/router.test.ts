import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Router, hostOnly, type RouteMatch } from '../../../src/router/router.ts';
import type { RouteSettings } from '../../../src/config/schema.ts';
import type { Pool } from '../../../src/upstream/pool.ts';

/** Stand-in pools: the router passes them through and reads only their name and backup setting. */
function pools(...names: string[]): Map<string, Pool> {
  return new Map(names.map((name) => [name, { name, settings: {} } as unknown as Pool]));
}

function route(pool: string, path_prefix = '/', host?: string | string[], name?: string): RouteSettings {
  return { pool, path_prefix, path: { forward: 'original', encoded_slashes: 'keep' }, rate_limits: [], ...(host === undefined ? {} : { host }), ...(name === undefined ? {} : { name }) };
}

/** The pool name a request goes to, or the reason there is none. */
function target(router: Router, host: string | undefined, url: string): string {
  const m: RouteMatch = router.match(host, url);
  return typeof m === 'string' ? m : m.pool!.name;
}

test('router: one pool and no routes sends everything to it', () => {
  const router = new Router([], pools('web'));
  assert.equal(router.routes.length, 1);
  assert.equal(router.routes[0].name, 'default');
  for (const url of ['/', '/x', '/api/v1?q=1', '*']) assert.equal(target(router, 'any.example', url), 'web', url);
  assert.equal(target(router, undefined, '/'), 'web');
});

test('router: several pools and no routes match nothing', () => {
  const router = new Router([], pools('a', 'b'));
  assert.equal(router.routes.length, 0);
  assert.equal(target(router, 'x', '/'), 'foreign-host');
});

test('router: /api matches /api, /api/x and /api?q, not /apix', () => {
  const router = new Router([route('api', '/api'), route('web', '/')], pools('api', 'web'));
  assert.equal(target(router, 'h', '/api'), 'api');
  assert.equal(target(router, 'h', '/api/'), 'api');
  assert.equal(target(router, 'h', '/api/x'), 'api');
  assert.equal(target(router, 'h', '/api?q'), 'api');
  assert.equal(target(router, 'h', '/api?q=/x'), 'api');
  assert.equal(target(router, 'h', '/apix'), 'web');
  assert.equal(target(router, 'h', '/ap'), 'web');
  assert.equal(target(router, 'h', '/'), 'web');
});

test('router: a trailing slash on the prefix is the same prefix', () => {
  const router = new Router([route('api', '/api/'), route('web')], pools('api', 'web'));
  assert.equal(router.routes.find((r) => r.pool!.name === 'api')!.pathPrefix, '/api');
  assert.equal(target(router, 'h', '/api'), 'api');
  assert.equal(target(router, 'h', '/api/x'), 'api');
  assert.equal(target(router, 'h', '/apix'), 'web');
});

test('router: the longest prefix wins, whatever the order in the config', () => {
  const settings = [route('root', '/'), route('api', '/api'), route('v2', '/api/v2'), route('v2-users', '/api/v2/users')];
  for (const order of [settings, [...settings].reverse()]) {
    const router = new Router(order, pools('root', 'api', 'v2', 'v2-users'));
    assert.equal(target(router, 'h', '/api/v2/users/7'), 'v2-users');
    assert.equal(target(router, 'h', '/api/v2/usersx'), 'v2');
    assert.equal(target(router, 'h', '/api/v2'), 'v2');
    assert.equal(target(router, 'h', '/api/v3'), 'api');
    assert.equal(target(router, 'h', '/other'), 'root');
  }
});

test('router: matching is case-sensitive on the path', () => {
  const router = new Router([route('api', '/api')], pools('api'));
  assert.equal(target(router, 'h', '/API'), 'no-route');
});

test('router: no prefix matches: 404 no-route', () => {
  const router = new Router([route('api', '/api'), route('static', '/static')], pools('api', 'static'));
  assert.equal(target(router, 'h', '/'), 'no-route');
  assert.equal(target(router, 'h', '/apis'), 'no-route');
  assert.equal(target(router, undefined, '/x'), 'no-route');
});

test('router: exact host beats wildcard host beats any host', () => {
  const router = new Router(
    [route('any', '/'), route('wild', '/', '*.example.com'), route('exact', '/', 'api.example.com')],
    pools('any', 'wild', 'exact'),
  );
  assert.deepEqual(
    router.routes.map((r) => [r.pool!.name, r.rank]),
    [
      ['exact', 0],
      ['wild', 1],
      ['any', 2],
    ],
  );
  assert.equal(target(router, 'api.example.com', '/'), 'exact');
  assert.equal(target(router, 'www.example.com', '/'), 'wild');
  assert.equal(target(router, 'a.b.example.com', '/'), 'wild');
  assert.equal(target(router, 'example.com', '/'), 'any', 'a wildcard does not match the bare domain');
  assert.equal(target(router, 'other.org', '/'), 'any');
  assert.equal(target(router, undefined, '/'), 'any');
});

test('router: host rank comes before prefix length', () => {
  const router = new Router([route('any-long', '/api/v1'), route('exact-root', '/', 'api.example.com')], pools('any-long', 'exact-root'));
  assert.equal(target(router, 'api.example.com', '/api/v1/x'), 'exact-root');
  assert.equal(target(router, 'other.example.com', '/api/v1/x'), 'any-long');
});

test('router: a host that matches but has no prefix for the path falls through to any-host routes', () => {
  const router = new Router([route('exact-api', '/api', 'api.example.com'), route('any', '/')], pools('exact-api', 'any'));
  assert.equal(target(router, 'api.example.com', '/api/x'), 'exact-api');
  assert.equal(target(router, 'api.example.com', '/other'), 'any');
});

test('router: hosts are compared without port and case', () => {
  const router = new Router([route('exact', '/', 'API.Example.com'), route('wild', '/', '*.Example.org')], pools('exact', 'wild'));
  assert.equal(target(router, 'api.example.com', '/'), 'exact');
  assert.equal(target(router, 'API.EXAMPLE.COM:8080', '/'), 'exact');
  assert.equal(target(router, 'WWW.example.ORG:443', '/'), 'wild');
});

test('router: a list of hosts matches any of them', () => {
  const router = new Router([route('web', '/', ['a.example', 'b.example', '*.c.example'])], pools('web'));
  for (const h of ['a.example', 'b.example', 'x.c.example']) assert.equal(target(router, h, '/'), 'web', h);
  assert.equal(target(router, 'c.example', '/'), 'foreign-host');
});

test('router: an unknown host with only host routes is 421 foreign-host; a known host without the path is 404 no-route', () => {
  const router = new Router([route('api', '/api', 'api.example.com'), route('wild', '/static', '*.cdn.example')], pools('api', 'wild'));
  assert.equal(target(router, 'evil.example', '/api'), 'foreign-host');
  assert.equal(target(router, undefined, '/api'), 'foreign-host');
  assert.equal(target(router, '', '/api'), 'foreign-host');
  assert.equal(target(router, 'api.example.com', '/'), 'no-route');
  assert.equal(target(router, 'img.cdn.example', '/api'), 'no-route');
  assert.equal(target(router, 'img.cdn.example', '/static/a.png'), 'wild');
});

test('router: with an any-host route, an unknown host is never foreign-host', () => {
  const router = new Router([route('api', '/api', 'api.example.com'), route('web', '/web')], pools('api', 'web'));
  assert.equal(target(router, 'evil.example', '/x'), 'no-route');
});

test('router: routes are named from the config or by position', () => {
  const router = new Router([route('a', '/a', undefined, 'alpha'), route('b', '/bb')], pools('a', 'b'));
  assert.deepEqual(
    router.routes.map((r) => r.name),
    ['route-1', 'alpha'],
  );
});

test('router: equal rank and prefix keep the config order', () => {
  const router = new Router([route('first', '/x'), route('second', '/x')], pools('first', 'second'));
  assert.equal(target(router, 'h', '/x'), 'first');
});

test('hostOnly: lowercase host without port; IPv6 keeps its brackets', () => {
  assert.equal(hostOnly('Example.COM'), 'example.com');
  assert.equal(hostOnly('example.com:8080'), 'example.com');
  assert.equal(hostOnly('[::1]:8080'), '[::1]');
  assert.equal(hostOnly('[2001:DB8::1]'), '[2001:db8::1]');
  assert.equal(hostOnly('127.0.0.1:80'), '127.0.0.1');
  assert.equal(hostOnly(''), '');
});

test('router: prefixes are compared with normalised paths, and compiled normalised', () => {
  const router = new Router([route('admin', '/admin'), route('user', '/%7Euser/'), route('web')], pools('admin', 'user', 'web'));
  assert.equal(router.routes.find((r) => r.pool!.name === 'user')!.pathPrefix, '/~user');
  assert.equal(target(router, 'h', '/~user/x'), 'user');
  assert.equal(target(router, 'h', '/admin/x'), 'admin');
  assert.equal(target(router, 'h', '/admin;x'), 'web', 'the router gets normalised paths: parameters are gone before it');
});

test('router: each route carries its path forwarding; the default forwards the target as sent', () => {
  const settings = [route('raw', '/raw'), { ...route('norm', '/norm'), path: { forward: 'normalized' as const, encoded_slashes: 'reject' as const } }];
  const router = new Router(settings, pools('raw', 'norm'));
  const byPool = (name: string) => router.routes.find((r) => r.pool!.name === name)!;
  assert.deepEqual(byPool('raw').forwarding, { normalized: false, encodedSlashes: 'keep' });
  assert.deepEqual(byPool('norm').forwarding, { normalized: true, encodedSlashes: 'reject' });
  assert.deepEqual(new Router([], pools('web')).routes[0].forwarding, { normalized: false, encodedSlashes: 'keep' });
});
