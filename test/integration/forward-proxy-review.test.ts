/**
 * Security review of the forward proxy (issue 14 part 4): the holes found by attacking it with
 * raw requests, each pinned by a test that failed before its fix, and the attack list that was
 * already refused, kept as a regression guard on both engines. Destinations are on 127.0.0.1
 * only; a canary (a raw TCP server) counts the connections that must never happen.
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { startBackend, startBalancer, startRawBackend, rawExchange, type TestBalancer } from '../helpers/servers.ts';
import type { FulcrumConfigInput } from '../../src/config/schema.ts';

type ListenerInput = NonNullable<FulcrumConfigInput['listeners']>[number];
type ForwardInput = NonNullable<ListenerInput['forward_proxy']>;

const engines = ['fulcrum', 'node'] as const;
let counter = 0;

/** A destination that must never be reached: every connection to it is counted and closed. */
async function startCanary(t: TestContext): Promise<{ port: number; connections: () => number }> {
  const canary = await startRawBackend(t, (socket) => socket.destroy());
  return { port: canary.port, connections: () => canary.sockets.length };
}

/** A balancer with one forward-proxy listener (`engine`), and its port. */
async function forwardListener(t: TestContext, engine: (typeof engines)[number], forward_proxy: ForwardInput): Promise<{ lb: TestBalancer; name: string }> {
  const name = `fpr${++counter}-${engine}`;
  const lb = await startBalancer(t, { listeners: [{ name, host: '127.0.0.1', port: 0, engine, forward_proxy }], pools: { web: { upstreams: ['http://127.0.0.1:9'] } } });
  return { lb, name };
}

/** The status line's code and, for a forward refusal, its reason (`special_address`, ...). */
function outcome(answer: string): string {
  const status = /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 'none';
  const reason = /refused by the forward proxy \((\w+):/.exec(answer)?.[1];
  return reason === undefined ? status : `${status} ${reason}`;
}

const absolute = (host: string, port: number): string => `GET http://${host}:${port}/ HTTP/1.1\r\nHost: ${host}:${port}\r\nConnection: close\r\n\r\n`;
const connect = (host: string, port: number): string => `CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`;

describe('forward proxy review: deny rules', () => {
  for (const engine of engines) {
    test(`engine ${engine}: a deny rule without ports denies every port, not only 80 and 443`, async (t) => {
      const canary = await startCanary(t);
      // The deny comes first and names no ports; the allow after it opens the canary's port on loopback.
      const { lb } = await forwardListener(t, engine, {
        rules: [
          { name: 'no-canary', action: 'deny', cidrs: ['127.0.0.1/32'] },
          { name: 'lab', cidrs: ['127.0.0.0/8'], ports: [canary.port] },
        ],
      });
      assert.equal(outcome(await rawExchange(lb.port, absolute('127.0.0.1', canary.port))), '403 denied_by_rule');
      assert.equal(outcome(await rawExchange(lb.port, connect('127.0.0.1', canary.port))), '403 denied_by_rule');
      assert.equal(canary.connections(), 0, 'the denied destination was contacted');
    });

    test(`engine ${engine}: a deny rule naming an IP literal holds for every spelling of that address`, async (t) => {
      const canary = await startCanary(t);
      const { lb } = await forwardListener(t, engine, {
        rules: [
          { name: 'no-canary', action: 'deny', hosts: ['127.0.0.1'], ports: [canary.port] },
          { name: 'lab', cidrs: ['127.0.0.0/8'], ports: [canary.port] },
        ],
      });
      const spellings = ['127.0.0.1', '[::ffff:127.0.0.1]', '[::FFFF:7f00:1]', '[0:0:0:0:0:ffff:127.0.0.1]', '2130706433', '0x7f.0.0.1', '0x7f000001', '127.1', '017700000001', '0177.0.0.1', '127.000.000.001'];
      const seen: string[] = [];
      for (const host of spellings) {
        seen.push(`${host} ${outcome(await rawExchange(lb.port, absolute(host, canary.port)))}`);
        seen.push(`CONNECT ${host} ${outcome(await rawExchange(lb.port, connect(host, canary.port)))}`);
      }
      assert.deepEqual(seen, spellings.flatMap((host) => [`${host} 403 denied_by_rule`, `CONNECT ${host} 403 denied_by_rule`]));
      assert.equal(canary.connections(), 0, 'the denied destination was contacted');
    });
  }
});

describe('forward proxy review: the /forward?url= route', () => {
  test("the site's Cookie and Authorization are not handed to the destination", async (t) => {
    const destination = await startBackend(t, (req, res) => res.end(JSON.stringify(req.headers)));
    const name = `fpr-route-${++counter}`;
    const lb = await startBalancer(t, {
      listeners: [{ name, host: '127.0.0.1', port: 0 }],
      pools: { web: { upstreams: [destination.url] } },
      routes: [{ name: 'fetch', path_prefix: '/forward', forward_proxy: { rules: [{ name: 'local', cidrs: ['127.0.0.1/32'], ports: [destination.port] }] } }],
    });
    const url = encodeURIComponent(`http://127.0.0.1:${destination.port}/x`);
    const answer = await rawExchange(
      lb.port,
      `GET /forward?url=${url} HTTP/1.1\r\nHost: site.example\r\nCookie: session=site-secret\r\nAuthorization: Bearer site-token\r\nAccept: text/plain\r\nConnection: close\r\n\r\n`,
    );
    assert.match(answer, /^HTTP\/1\.1 200 /);
    const headers = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Record<string, string>;
    assert.equal(headers.cookie, undefined, 'the site session cookie reached a third party');
    assert.equal(headers.authorization, undefined, "the site's credentials reached a third party");
    assert.equal(headers.accept, 'text/plain', 'other end-to-end fields still pass');
  });

  test("the destination's answer cannot set or clear the site's cookies, nor run as the site (sandboxed)", async (t) => {
    const destination = await startBackend(t, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html', 'set-cookie': 'session=fixed-by-destination; Path=/', 'clear-site-data': '"cookies", "storage"' });
      res.end('<script>fetch("/account", { credentials: "include" })</script>');
    });
    const lb = await startBalancer(t, {
      listeners: [{ name: `fpr-route-${++counter}`, host: '127.0.0.1', port: 0 }],
      pools: { web: { upstreams: [destination.url] } },
      routes: [{ name: 'fetch', path_prefix: '/forward', forward_proxy: { rules: [{ name: 'local', cidrs: ['127.0.0.1/32'], ports: [destination.port] }] } }],
    });
    const url = encodeURIComponent(`http://127.0.0.1:${destination.port}/page`);
    const answer = await rawExchange(lb.port, `GET /forward?url=${url} HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 200 /);
    const head = answer.slice(0, answer.indexOf('\r\n\r\n')).toLowerCase();
    assert.doesNotMatch(head, /\r\nset-cookie:/, "the destination set a cookie on the site's origin");
    assert.doesNotMatch(head, /\r\nclear-site-data:/, "the destination cleared the site's data");
    assert.match(head, /\r\ncontent-security-policy: sandbox\r\n/, "the destination's page runs as the site");
    assert.match(head, /\r\nx-content-type-options: nosniff\r\n/);
    assert.match(answer, /<script>/, 'the body itself is relayed as it came');
  });
});

describe('forward proxy review: attacks already refused (regression guard)', () => {
  for (const engine of engines) {
    test(`engine ${engine}: loopback spellings, userinfo, percent-encoding and malformed CONNECT targets never reach the canary; no label holds client input`, async (t) => {
      const canary = await startCanary(t);
      // The port is allowed on public addresses only: every way of writing loopback must still be refused.
      const { lb, name } = await forwardListener(t, engine, { rules: [{ name: 'public', ports: [80, 443, canary.port] }] });
      const c = canary.port;
      const hosts = ['127.0.0.1', '[::1]', '[::ffff:127.0.0.1]', '[::ffff:7f00:1]', '[0:0:0:0:0:ffff:127.0.0.1]', '[::127.0.0.1]', '[64:ff9b::127.0.0.1]', '[2002:7f00:1::]', '2130706433', '0x7f.0.0.1', '127.1', '127.000.000.001', 'LOCALHOST', 'localhost.', 'a.localhost', '0', '0.0.0.0', '[::]'];
      for (const host of hosts) {
        assert.match(outcome(await rawExchange(lb.port, absolute(host, c))), /^403 special_address$/, host);
        assert.match(outcome(await rawExchange(lb.port, connect(host, c))), /^403 special_address$/, `CONNECT ${host}`);
      }
      const malformed = [
        `GET http://%31%32%37.0.0.1:${c}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        `GET http://allowed.test@127.0.0.1:${c}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        `GET http://127.0.0.1:${c}#@allowed.test/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        `GET http://127.0.0.1\\@allowed.test:${c}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        `GET http://[::1%25lo]:${c}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        ...[`127.0.0.1:0${c}`, `127.0.0.1:+${c}`, '127.0.0.1:65536', '127.0.0.1:', `127.0.0.1:${c}/x`, `http://127.0.0.1:${c}`, `[::1%lo]:${c}`].map((target) => `CONNECT ${target} HTTP/1.1\r\nHost: x\r\n\r\n`),
      ];
      for (const text of malformed) assert.match(outcome(await rawExchange(lb.port, text)), /^400/, text.split('\r\n')[0]);
      // A CONNECT refused with bytes behind it: the connection closes, the bytes are never read as a request.
      const pipelined = await rawExchange(lb.port, `${connect('127.0.0.1', c)}GET http://127.0.0.1:${c}/ HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.equal(pipelined.match(/HTTP\/1\.1 /g)?.length, 1);
      assert.equal(canary.connections(), 0, 'the canary was contacted');
      const metrics = (await lb.balancer.metrics.scrape()).body;
      const mine = metrics.split('\n').filter((line) => line.includes(name) || line.includes('(forward)'));
      assert.ok(mine.length > 0);
      for (const line of mine) assert.doesNotMatch(line, /127\.0\.0\.1|::1|localhost|allowed\.test|2130706433|0x7f/, line);
    });
  }
});
