/**
 * Differential fuzzing of src/http1/request-head.ts against llhttp (issue 11, item 5).
 * Usage: node bench/fuzz-request-head.ts [--count 200000] [--seed N] [--examples]
 * Prints the seed, the counts per verdict and per stricter class, and each disagreement minimised;
 * exits 1 when there is one.
 */
import { parseArgs } from 'node:util';
import { fuzz } from '../test/helpers/request-head-fuzz.ts';

const { values } = parseArgs({ options: { count: { type: 'string', default: '200000' }, seed: { type: 'string' }, examples: { type: 'boolean', default: false } } });
const count = Number(values.count);
const seed = values.seed !== undefined ? Number(values.seed) : process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
console.log(`seed ${seed}, ${count} cases`);
const started = performance.now();
const report = fuzz(seed, count, 10);
const seconds = (performance.now() - started) / 1000;
console.log(`done in ${seconds.toFixed(1)} s (${Math.round(count / seconds)} cases/s)`);
for (const [kind, n] of Object.entries(report.counts).sort()) console.log(`  ${kind.padEnd(12)} ${n}`);
console.log('Fulcrum stricter than llhttp, by class:');
const verbose = values.examples;
for (const [reason, n] of Object.entries(report.stricter).sort((a, b) => b[1] - a[1])) {
  console.log(`  ${String(n).padStart(7)}  ${reason}`);
  if (verbose) console.log(`           e.g. ${JSON.stringify(report.examples[reason].slice(0, 300))}`);
}
if (report.disagreements.length > 0) {
  console.log(`\nDISAGREEMENTS (${report.counts.disagree}; replay with --seed ${seed}), minimised:`);
  for (const d of report.disagreements) console.log(`  ${JSON.stringify(d.input)}  maxHeadBytes=${d.limits.maxHeadBytes} cuts=${JSON.stringify(d.cuts)}\n    ${d.what}`);
  process.exitCode = 1;
}
