/**
 * The benchmark's HTTP/2 pieces that need no load generator: reading h2load's report and
 * per-request log (bench/h2load.ts), and the nginx peer's HTTP/2 listen lines and upstream
 * keep-alive (bench/nginx.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseH2load } from '../../../bench/h2load.ts';
import { nginxConfig } from '../../../bench/nginx.ts';

/** h2load 1.52's report of a 1 s run against nginx over TLS (progress lines left out). */
const report = `starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 1s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.01s, 5775.00 req/s, 417.33KB/s
requests: 5781 total, 5781 started, 5775 done, 5770 succeeded, 11 failed, 6 errored, 2 timeout
status codes: 5770 2xx, 1 3xx, 2 4xx, 2 5xx
traffic: 417.33KB (427350) total, 400.94KB (410564) headers (space savings 52.17%), 109.35KB (111972) data
                     min         max         mean         sd        +/- sd
time for request:      113us      8.35ms       626us       506us    95.48%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    2883.47     2905.65     2894.56       15.68   100.00%
`;

test('parseH2load takes req/s and counts from the report and percentiles from the log', () => {
  // 100 answered requests of 1..100 ms, out of order, and one failed stream that must not count.
  const lines = Array.from({ length: 100 }, (_, i) => `1796039778985847\t200\t${((i * 37) % 100 + 1) * 1000}`);
  lines.splice(50, 0, '1796039778985900\t-1\t999999999');
  const result = parseH2load(report, lines.join('\n') + '\n');
  assert.equal(result.tool, 'h2load');
  assert.equal(result.rps, 5775);
  assert.equal(result.requests, 5775);
  assert.equal(result.duration, 1);
  assert.equal(result.errors, 6);
  assert.equal(result.non2xx, 5);
  assert.equal(result.protocol, 'h2');
  assert.equal(result.tls, 'TLSv1.3 TLS_AES_128_GCM_SHA256');
  assert.equal(result.p50, 50);
  assert.equal(result.p90, 90);
  assert.equal(result.p99, 99);
  assert.equal(result.max, 100);
  assert.equal(result.mean, 50.5);
});

test('parseH2load reads a cleartext report without TLS lines, and an empty log as no latency', () => {
  const h2c = report.replace(/TLS Protocol[^]*?Server Temp Key[^\n]*\n/, '').replace('Application protocol: h2', 'Application protocol: h2c');
  const result = parseH2load(h2c, '');
  assert.equal(result.protocol, 'h2c');
  assert.equal(result.tls, undefined);
  assert.ok(Number.isNaN(result.p50));
});

test('parseH2load refuses output without the figures', () => {
  assert.throws(() => parseH2load('h2load: could not connect\n', ''), /h2load: unexpected output/);
});

test('nginxConfig: h2 over TLS, h2c in cleartext, and the upstream keep-alive asked for', () => {
  const tls = { cert: '/c.pem', key: '/k.pem' };
  assert.match(nginxConfig(8443, 'http://127.0.0.1:9000/', { tls, http2: true }), /^ {8}listen 127\.0\.0\.1:8443 ssl http2 backlog=4096;$/m);
  assert.match(nginxConfig(8080, 'http://127.0.0.1:9000/', { http2: true }), /^ {8}listen 127\.0\.0\.1:8080 http2 backlog=4096;$/m);
  const plain = nginxConfig(8080, 'http://127.0.0.1:9000/');
  assert.match(plain, /^ {8}listen 127\.0\.0\.1:8080 backlog=4096;$/m);
  assert.match(plain, /^ {8}keepalive 64;$/m);
  assert.match(nginxConfig(8080, 'http://127.0.0.1:9000/', { upstreamKeepalive: 160 }), /^ {8}keepalive 160;$/m);
});
