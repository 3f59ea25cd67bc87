/**
 * Micro-benchmark: ns per request head, Fulcrum's parser (src/http1/request-head.ts) against
 * llhttp through Node's binding (what node:http runs per request), on a typical 8-header GET.
 * Usage: node bench/parse-head.ts [--rounds 5] [--iterations 1000000]
 */
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { headEnd, isHeadError, parseRequestHead, skipEmptyLines, type HeadLimits } from '../src/http1/request-head.ts';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, iterations: { type: 'string', default: '1000000' } } });
const rounds = Number(values.rounds);
const iterations = Number(values.iterations);

const head = Buffer.from(
  'GET /api/v1/users/12345?include=profile&sort=desc HTTP/1.1\r\n' +
    'Host: api.example.com\r\n' +
    'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n' +
    'Accept: application/json, text/plain, */*\r\n' +
    'Accept-Encoding: gzip, deflate, br\r\n' +
    'Accept-Language: en-US,en;q=0.9\r\n' +
    'Cookie: session=abcdef0123456789; theme=dark\r\n' +
    'X-Request-Id: 7f3c2a9e-4b1d-4c8e-9f2a-1b2c3d4e5f60\r\n' +
    'Connection: keep-alive\r\n' +
    '\r\n',
  'latin1',
);
const limits: HeadLimits = { maxHeadBytes: 16_384, maxHeaders: 100 };

let sink = 0;
function fulcrum(withHeaders: boolean): number {
  const t = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    const start = skipEmptyLines(head, 0, head.length);
    const end = headEnd(head, start, start);
    const r = parseRequestHead(head, start, end, limits);
    if (isHeadError(r)) throw new Error(r.reason);
    sink += withHeaders ? Object.keys(r.headers).length : r.rawHeaders.length;
  }
  return Number(process.hrtime.bigint() - t) / iterations;
}

const require = createRequire(import.meta.url);
const { HTTPParser } = require('_http_common');
function llhttp(): number {
  const parser = new HTTPParser();
  parser.initialize(HTTPParser.REQUEST, {}, 16_384, 0);
  parser[HTTPParser.kOnHeadersComplete] = (_ma: number, _mi: number, headers: string[], _m: number, url: string): number => {
    sink += headers.length + url.length;
    return 0;
  };
  parser[HTTPParser.kOnHeaders] = (): void => {};
  parser[HTTPParser.kOnBody] = (): void => {};
  parser[HTTPParser.kOnMessageComplete] = (): void => {};
  const t = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    const r = parser.execute(head);
    if (typeof r !== 'number') throw r;
  }
  const ns = Number(process.hrtime.bigint() - t) / iterations;
  parser.close();
  return ns;
}

const results: Record<string, number[]> = { fulcrum: [], 'fulcrum + headers': [], llhttp: [] };
for (let r = 0; r < rounds; r++) {
  results.fulcrum.push(fulcrum(false));
  results['fulcrum + headers'].push(fulcrum(true));
  results.llhttp.push(llhttp());
}
console.log(`${head.length}-byte head, 8 headers; ${rounds} rounds x ${iterations} (median ns/head; first round is warm-up)`);
for (const [name, ns] of Object.entries(results)) {
  const sorted = ns.slice(1).sort((a, b) => a - b);
  console.log(`  ${name.padEnd(18)} ${sorted[sorted.length >> 1].toFixed(0).padStart(5)} ns/head  (rounds: ${ns.map((x) => x.toFixed(0)).join(', ')})`);
}
if (sink === 0) console.log('');
