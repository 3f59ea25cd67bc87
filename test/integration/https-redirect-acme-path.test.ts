/**
 * redirect_https exempts only real ACME HTTP-01 paths (`/.well-known/acme-challenge/<token>`):
 * dot segments out of that prefix (plain or percent-encoded) are redirected like any request.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startBackend, startBalancer, rawExchange } from '../helpers/servers.ts';

test('redirect_https exempts only real ACME challenge paths, not dot segments out of them', async (t) => {
  const backend = await startBackend(t, (req, res) => res.end(`upstream saw ${req.url}`));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, redirect_https: true }],
    pools: { web: { upstreams: [backend.url] } },
  });
  for (const target of ['/.well-known/acme-challenge/../../admin', '/.well-known/acme-challenge/%2e%2e/%2e%2e/admin', '/.well-known/acme-challenge/x/../../../admin?a=1']) {
    const answer = await rawExchange(lb.port, `GET ${target} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 30[178] /, `${target} was not redirected: ${answer.split('\r\n')[0]} ${answer.slice(answer.indexOf('upstream saw'))}`);
  }
  assert.equal(backend.requests.length, 0);
});
