/**
 * Golden files for the configuration loader. Each case in test/fixtures/config is an input
 * (`NAME.input.yaml` or `NAME.input.json`) and exactly one expected outcome:
 *   - `NAME.expected.json`: the normalised config, `JSON.stringify(config, null, 2)` and a newline;
 *     with `NAME.warnings.txt` (one warning a line) when the loader warns;
 *   - `NAME.errors.txt`: `ConfigError.message` and a newline.
 * `UPDATE_GOLDEN=1 node --test test/unit/config/golden.test.ts` rewrites the expected files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfigText, type LoadedConfig } from '../../../src/config/load.ts';
import { ConfigError } from '../../../src/errors.ts';
import { policyNames } from '../../../src/balancer/registry.ts';

const dir = join(import.meta.dirname, '../../fixtures/config');
const update = process.env.UPDATE_GOLDEN === '1';
const inputPattern = /^(.+)\.input\.(yaml|json)$/;

const files = readdirSync(dir).sort();
const inputs = files.filter((f) => inputPattern.test(f));

type Outcome = { kind: 'config'; loaded: LoadedConfig } | { kind: 'error'; error: ConfigError };

function load(text: string, file: string): Outcome {
  try {
    return { kind: 'config', loaded: loadConfigText(text, file, {}) };
  } catch (err) {
    if (err instanceof ConfigError) return { kind: 'error', error: err };
    throw err;
  }
}

/** Reads a golden file, or undefined when it does not exist. */
function golden(name: string): string | undefined {
  const path = join(dir, name);
  return existsSync(path) ? readFileSync(path, 'utf8') : undefined;
}

function write(name: string, text: string | undefined): void {
  const path = join(dir, name);
  if (text === undefined) rmSync(path, { force: true });
  else writeFileSync(path, text);
}

test('golden: the fixture folder has cases', () => {
  assert.ok(inputs.length >= 20, `only ${inputs.length} inputs in ${dir}`);
});

for (const input of inputs) {
  const name = inputPattern.exec(input)![1];
  test(`golden: ${input}`, () => {
    const text = readFileSync(join(dir, input), 'utf8');
    const outcome = load(text, input);
    const actual =
      outcome.kind === 'config'
        ? {
            expected: `${JSON.stringify(outcome.loaded.config, null, 2)}\n`,
            warnings: outcome.loaded.warnings.length > 0 ? `${outcome.loaded.warnings.join('\n')}\n` : undefined,
            errors: undefined,
          }
        : { expected: undefined, warnings: undefined, errors: `${outcome.error.message}\n` };

    if (update) {
      write(`${name}.expected.json`, actual.expected);
      write(`${name}.warnings.txt`, actual.warnings);
      write(`${name}.errors.txt`, actual.errors);
      return;
    }

    const expected = golden(`${name}.expected.json`);
    const warnings = golden(`${name}.warnings.txt`);
    const errors = golden(`${name}.errors.txt`);
    assert.ok(expected !== undefined || errors !== undefined, `${name}: no ${name}.expected.json or ${name}.errors.txt (run with UPDATE_GOLDEN=1 to create it)`);
    assert.ok(expected === undefined || errors === undefined, `${name}: both ${name}.expected.json and ${name}.errors.txt exist`);
    if (errors !== undefined) {
      assert.equal(outcome.kind, 'error', `${name}: expected a ConfigError, but the config loaded`);
      assert.equal(actual.errors, errors);
    } else {
      assert.equal(outcome.kind, 'config', `${name}: expected a config, got:\n${actual.errors}`);
      assert.equal(actual.expected, expected);
      assert.equal(actual.warnings, warnings, `${name}: warnings differ`);
    }
  });
}

test('golden: every expected file belongs to an input', () => {
  const names = new Set(inputs.map((f) => inputPattern.exec(f)![1]));
  for (const f of readdirSync(dir)) {
    const m = /^(.+)\.(expected\.json|errors\.txt|warnings\.txt)$/.exec(f);
    if (inputPattern.test(f) || f.startsWith('.')) continue;
    assert.ok(m, `stray file ${f} in ${dir}`);
    assert.ok(names.has(m[1]), `${f} has no ${m[1]}.input.yaml or .input.json`);
  }
});

test('golden: policy-aliases covers every policy name and alias in the registry', () => {
  const text = readFileSync(join(dir, 'policy-aliases.input.yaml'), 'utf8');
  for (const name of policyNames) assert.match(text, new RegExp(`^    policy: ${name}$`, 'm'), name);
});

test('golden: error positions are 1-based and inside the file', () => {
  for (const input of inputs) {
    const text = readFileSync(join(dir, input), 'utf8');
    const outcome = load(text, input);
    if (outcome.kind !== 'error') continue;
    const lines = text.split('\n');
    for (const p of outcome.error.problems) {
      assert.equal(p.file, input);
      if (p.line === 0) {
        assert.equal(p.column, 0, `${input}: a problem without a line has no column`);
        continue;
      }
      assert.ok(p.line >= 1 && p.line <= lines.length, `${input}: line ${p.line} outside 1..${lines.length}`);
      assert.ok(p.column >= 1 && p.column <= lines[p.line - 1].length + 1, `${input}:${p.line}: column ${p.column} outside the line`);
    }
  }
});
