/**
 * Differential fuzzing of Fulcrum's request-head parser against llhttp, Node's own (strict):
 * whenever Fulcrum accepts, llhttp accepts and reads the same head; whenever llhttp refuses,
 * Fulcrum refuses (with today's status). Fulcrum may refuse more, only in the classes listed
 * in STRICTER (test/helpers/request-head-fuzz.ts) with their RFC reasons.
 * Replay a failure with FUZZ_SEED=<seed>; `npm run fuzz` runs many more cases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { check, fuzz, generate, Random } from '../helpers/request-head-fuzz.ts';

const seed = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
const CASES = 3000;

test(`request-head fuzz: ${CASES} cases agree with llhttp (seed ${seed}; replay with FUZZ_SEED=${seed})`, () => {
  const report = fuzz(seed, CASES, 3);
  const shown = report.disagreements.map((d) => `  ${JSON.stringify(d.input)} (maxHeadBytes ${d.limits.maxHeadBytes}, cuts ${JSON.stringify(d.cuts)})\n    ${d.what}`).join('\n');
  assert.equal(report.counts.disagree ?? 0, 0, `seed ${seed}: ${report.counts.disagree} disagreements, minimised:\n${shown}`);
  // The generator must reach both verdicts often, or the comparison proves little.
  assert.ok((report.counts['both-accept'] ?? 0) > CASES / 10, JSON.stringify(report.counts));
  assert.ok((report.counts['both-refuse'] ?? 0) > CASES / 4, JSON.stringify(report.counts));
});

test('request-head fuzz: the generator is deterministic per seed', () => {
  const a = new Random(42);
  const b = new Random(42);
  for (let i = 0; i < 50; i++) assert.deepEqual(generate(a), generate(b));
});

test('request-head fuzz: the checker notices a parser that disagrees', () => {
  // A head llhttp refuses (bare LF) must never come back as agreement, whatever the chunking.
  const verdict = check({ bytes: Buffer.from('GET / HTTP/1.1\r\nHost: a\r\nX: b\nY: c\r\n\r\n'), limits: { maxHeadBytes: 16_384, maxHeaders: 100 }, cuts: [3, 20] });
  assert.equal(verdict.kind, 'both-refuse');
});
