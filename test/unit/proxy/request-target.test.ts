import { test } from 'node:test';
import assert from 'node:assert/strict';
import { forwardAsSent, normalizePath, parseRequestTarget, unescapeSlashes, upstreamTarget, type ParsedTarget, type PathForwarding } from '../../../src/proxy/request-target.ts';

function parsed(url: string): ParsedTarget {
  const t = parseRequestTarget(url);
  assert.ok(!('error' in t), `${url}: ${'error' in t ? t.error.message : ''}`);
  return t;
}

function refused(url: string): string {
  const t = parseRequestTarget(url);
  assert.ok('error' in t, `${url} should be refused`);
  assert.equal(t.error.status, 400, url);
  return t.error.message;
}

/** What the upstream is sent for `url` on a route with `forwarding`. */
function forwarded(url: string, forwarding: PathForwarding = forwardAsSent): string | null {
  return upstreamTarget(url, parsed(url), forwarding);
}

const normalized: PathForwarding = { normalized: true, encodedSlashes: 'keep' };

test('request-target: routing sees the fully normalised path', () => {
  const cases: [string, string][] = [
    ['/admin', '/admin'],
    ['/./admin', '/admin'],
    ['//admin', '/admin'],
    ['/%2e/admin', '/admin'],
    ['/%2E%2E/x/../admin', '/admin'],
    ['/%2E%2e/admin', '/admin'],
    ['/x/../admin', '/admin'],
    ['/x/%2e%2e/admin/', '/admin/'],
    ['/%2Fadmin', '/admin'],
    ['/admin%2fsecrets', '/admin/secrets'],
    ['/admin%5Csecrets', '/admin/secrets'],
    ['/admin%5csecrets', '/admin/secrets'],
    ['/x\\..\\admin', '/admin'],
    ['/api/queues/%2F/tasks', '/api/queues/tasks'],
    ['/files/a%5Cb.txt', '/files/a/b.txt'],
    ['/api/files//x', '/api/files/x'],
    ['/../../etc/passwd', '/etc/passwd'],
    ['/%2e%2e%2f%2e%2e%2fetc', '/etc'],
    ['/a/b/..', '/a/'],
    ['/a/b/.', '/a/b/'],
    ['/', '/'],
    ['/..', '/'],
    // Unreserved characters decoded, other escapes upper-cased, %25 never decoded twice.
    ['/%41dmin', '/Admin'],
    ['/%61dmin', '/admin'],
    ['/%7Euser/%2d%5f', '/~user/-_'],
    ['/a%20b/%3a', '/a%20b/%3A'],
    ['/a/%252e%252e/admin', '/a/%252e%252e/admin'],
    ['/caf%c3%a9', '/caf%C3%A9'],
    // Path parameters, which Tomcat, Jetty and Spring strip before resolving `..`.
    ['/x/..;/admin', '/admin'],
    ['/admin;jsessionid=1/users', '/admin/users'],
    ['/x/.;a/admin', '/x/admin'],
    ['/;/admin', '/admin'],
    ['/a%3Bb', '/a%3Bb'],
  ];
  for (const [sent, path] of cases) assert.equal(parsed(sent).path, path, sent);
});

test('request-target: the upstream gets the target as sent, query untouched, by default', () => {
  for (const url of ['/api/queues/%2F/tasks', '/files/a%5Cb.txt', '/api/files//x', '/./admin', '/x/../admin?q=%2e%2e', '/a?b=%zz&c=/../', '/x/..;/admin', '/a%41?%41', '/a\\b', '/A%2fB%5c']) {
    assert.equal(forwarded(url), url, url);
  }
  const plain = '/plain/path?x=1';
  assert.equal(forwarded(plain), plain);
  assert.equal(parsed(plain).query, '?x=1');
  assert.equal(parsed(plain).rawPath, '/plain/path');
});

test('request-target: a target with nothing to normalise is not copied', () => {
  const url = '/plain/path/file.txt';
  const t = parsed(url);
  assert.equal(t.path, url);
  assert.equal(t.rawPath, url);
  assert.equal(t.query, '');
  assert.equal(t.encodedSlash, false);
});

test('request-target: forward normalized sends what routing saw, path parameters kept, query as sent', () => {
  assert.equal(forwarded('/a/./b//c/../d?q=%2e%2e', normalized), '/a/b/d?q=%2e%2e');
  assert.equal(forwarded('/api/queues/%2F/tasks', normalized), '/api/queues/tasks');
  assert.equal(forwarded('/%7Euser', normalized), '/~user');
  assert.equal(forwarded('/shop;jsessionid=7/cart', normalized), '/shop;jsessionid=7/cart');
  assert.equal(forwarded('/plain?x', normalized), '/plain?x');
});

test('request-target: encoded slashes kept, refused or unescaped per route', () => {
  const url = '/api/queues/%2F/tasks?vhost=%2F';
  assert.equal(parsed(url).encodedSlash, true);
  assert.equal(parsed('/a%5cb').encodedSlash, true);
  assert.equal(parsed('/a%2eb/%20').encodedSlash, false);
  assert.equal(parsed('/a?x=%2F').encodedSlash, false, 'the query does not count');
  assert.equal(forwarded(url, { normalized: false, encodedSlashes: 'keep' }), url);
  assert.equal(forwarded(url, { normalized: false, encodedSlashes: 'reject' }), null);
  assert.equal(forwarded(url, { normalized: false, encodedSlashes: 'unescape' }), '/api/queues///tasks?vhost=%2F');
  assert.equal(forwarded('/files/a%5Cb.txt', { normalized: false, encodedSlashes: 'unescape' }), '/files/a\\b.txt');
  assert.equal(forwarded('/files/a%5cb%2f', { normalized: false, encodedSlashes: 'unescape' }), '/files/a\\b/');
  assert.equal(forwarded('/plain', { normalized: false, encodedSlashes: 'reject' }), '/plain');
  assert.equal(forwarded(url, { normalized: true, encodedSlashes: 'reject' }), null);
  assert.equal(unescapeSlashes('/a%2Fb%41%2fc%5C'), '/a/b%41/c\\');
  assert.equal(unescapeSlashes('/a%41'), '/a%41');
});

test('request-target: malformed escapes, %00 and fragments are refused', () => {
  assert.equal(refused('/a%zz'), 'malformed percent-encoding in path');
  assert.equal(refused('/a%2'), 'malformed percent-encoding in path');
  assert.equal(refused('/a%'), 'malformed percent-encoding in path');
  assert.equal(refused('/a%g0'), 'malformed percent-encoding in path');
  assert.equal(refused('/a%00b'), '%00 in path');
  assert.equal(refused('/%00'), '%00 in path');
  assert.match(refused('/a#b'), /fragment/);
  assert.match(refused('/a?b#c'), /fragment/);
  assert.match(refused('*'), /must be a path/);
  assert.match(refused('a/b'), /must be a path/);
  assert.match(refused('ftp://h/x'), /must be a path/);
});

test('request-target: absolute-form is forwarded in origin-form with the path bytes as sent', () => {
  const t = parsed('http://example.com/x/../%2F/y?q=%2e');
  assert.equal(t.authority, 'example.com');
  assert.equal(t.path, '/y');
  assert.equal(forwarded('http://example.com/x/../%2F/y?q=%2e'), '/x/../%2F/y?q=%2e');
  assert.equal(forwarded('HTTPS://Example.com:8443/a%2Fb'), '/a%2Fb');
  assert.equal(forwarded('http://example.com'), '/');
  assert.equal(forwarded('http://example.com?x=1'), '/?x=1');
  assert.equal(forwarded('http://example.com/x/../y?q', normalized), '/y?q');
  assert.equal(forwarded('http://example.com/a%2Fb?q', { normalized: false, encodedSlashes: 'unescape' }), '/a/b?q');
  assert.match(refused('http:///x'), /malformed absolute/);
  assert.match(refused('http://user@h/x'), /authority/);
  assert.match(refused('http://h:99999/x'), /authority/);
  assert.match(refused('http://h:0/x'), /authority/);
  assert.match(refused('http://h:65536/'), /authority/);
  assert.equal(parsed('http://h:65535/').authority, 'h:65535');
  assert.equal(parsed('http://[::1]:8080/').authority, '[::1]:8080');
});

test('normalizePath: the same for every spelling of one path; null for bad escapes', () => {
  const spellings = ['/admin', '/./admin', '//admin', '/%2e/admin', '/%2E%2E/x/../admin', '/x/..;/admin', '/%61dmin', '/x%2F..%2Fadmin', '/x%5C..%5Cadmin', '/\\admin'];
  for (const s of spellings) assert.equal(normalizePath(s), '/admin', s);
  assert.equal(normalizePath('/a%zz'), null);
  assert.equal(normalizePath('/a;b/c', true), '/a;b/c');
});

test('request-target: a path with ".." also gives the reading of a backend that does not resolve it', () => {
  assert.equal(parsed('/admin/..').path, '/');
  assert.equal(parsed('/admin/..').unresolvedPath, '/admin/..');
  assert.equal(parsed('/admin%2F..').unresolvedPath, '/admin/..');
  assert.equal(parsed('/admin;x/%2e%2e/public').unresolvedPath, '/admin/../public');
  assert.equal(parsed('/x/../admin').unresolvedPath, '/x/../admin');
  assert.equal(parsed('/./admin').unresolvedPath, null);
  assert.equal(parsed('/a..b/..c').unresolvedPath, null);
  assert.equal(parsed('/plain').unresolvedPath, null);
});
