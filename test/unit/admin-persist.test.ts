/**
 * admin.persist writes upstream lists back into the file as small text edits: comments, spacing
 * and every other line stay as they were; symlinks are followed; JSON is rewritten whole.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, symlinkSync, writeFileSync, lstatSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { persistUpstreams } from '../../src/admin/persist.ts';
import { loadConfigFile, loadConfigText } from '../../src/config/load.ts';

const yaml = `# top comment
listeners:
  - port: 18082   # listener
routes:
  - {path_prefix: /api, pool: api}
  - pool: web
pools:
  web:
    upstreams:
      - http://127.0.0.1:19001   # first one
      # a comment between entries
      - http://127.0.0.1:19002   # second one
      - url: http://127.0.0.1:19005
        weight: 2   # weight comment
  api:
    upstreams: [http://127.0.0.1:19003]   # flow list
# trailing comment
`;

test('persist: YAML lists are edited in place; the rest of the file is byte for byte the same', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-persist-'));
  const file = path.join(dir, 'f.yaml');
  writeFileSync(file, yaml);
  const config = loadConfigText(yaml, file).config;
  config.pools.web.upstreams = config.pools.web.upstreams.filter((u) => !u.url.includes('19001'));
  config.pools.web.upstreams[0] = { ...config.pools.web.upstreams[0], weight: 3 };
  config.pools.web.upstreams.push({ url: 'http://127.0.0.1:19009', weight: 1, max_connections: 0 });
  config.pools.api.upstreams.push({ url: 'http://127.0.0.1:19004', weight: 1, max_connections: 0 });
  persistUpstreams(file, config, ['web', 'api']);
  const out = readFileSync(file, 'utf8');
  assert.equal(
    out,
    yaml
      .replace('      - http://127.0.0.1:19001   # first one\n', '')
      .replace('      - http://127.0.0.1:19002   # second one', '      - {url: "http://127.0.0.1:19002", weight: 3}   # second one')
      .replace('        weight: 2   # weight comment\n', '        weight: 2   # weight comment\n      - http://127.0.0.1:19009\n')
      .replace('[http://127.0.0.1:19003]', '[http://127.0.0.1:19003, http://127.0.0.1:19004]'),
  );
  const reread = loadConfigFile(file).config;
  assert.deepEqual(reread.pools.web.upstreams, config.pools.web.upstreams);
  assert.deepEqual(reread.pools.api.upstreams, config.pools.api.upstreams);
});

test('persist: a symlinked file has its target written and stays a link; JSON and seed shapes work', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-persist-'));
  mkdirSync(path.join(dir, 'real'));
  const target = path.join(dir, 'real', 'seed.json');
  const link = path.join(dir, 'link.json');
  writeFileSync(target, JSON.stringify({ port: 8080, backends: ['http://127.0.0.1:9001'] }), { mode: 0o600 });
  symlinkSync(target, link);
  const config = loadConfigFile(link).config;
  config.pools.default.upstreams.push({ url: 'http://127.0.0.1:9002', weight: 2, max_connections: 0 });
  persistUpstreams(link, config, ['default']);
  assert.ok(lstatSync(link).isSymbolicLink(), 'the link is still a link');
  assert.equal(lstatSync(target).mode & 0o777, 0o600, 'the mode is kept');
  assert.deepEqual(JSON.parse(readFileSync(target, 'utf8')).backends, ['http://127.0.0.1:9001', { url: 'http://127.0.0.1:9002', weight: 2 }]);
});

test('persist: a list shared through a YAML anchor is refused, and the file is left as it was', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-persist-'));
  const file = path.join(dir, 'f.yaml');
  const text = 'pools:\n  api: {upstreams: &shared [http://127.0.0.1:9001, http://127.0.0.1:9002]}\n  web: {upstreams: *shared}\nroutes: [{path_prefix: /api, pool: api}, {pool: web}]\n';
  writeFileSync(file, text);
  const config = loadConfigFile(file).config;
  const loaded = structuredClone(config);
  config.pools.api.upstreams.pop();
  assert.throws(() => persistUpstreams(file, config, ['api'], loaded), /anchor or alias/);
  assert.throws(() => persistUpstreams(file, config, ['web'], loaded), /anchor or alias/);
  assert.equal(readFileSync(file, 'utf8'), text);
});

test('persist: pools named like numbers, entries written another way, the file mode', async () => {
  const { chmodSync, statSync } = await import('node:fs');
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-persist-'));
  const file = path.join(dir, 'f.yaml');
  const text = 'pools:\n  2024:\n    upstreams:\n      - url: http://127.0.0.1:9001   # primary DC\n        max_connections: 10\n      - {weight: 2, url: http://127.0.0.1:9002}\n';
  writeFileSync(file, text);
  chmodSync(file, 0o664);
  const config = loadConfigFile(file).config;
  const loaded = structuredClone(config);
  config.pools['2024'].upstreams.push({ url: 'http://127.0.0.1:9003', weight: 1, max_connections: 0 });
  persistUpstreams(file, config, ['2024'], loaded);
  assert.equal(readFileSync(file, 'utf8'), text + '      - http://127.0.0.1:9003\n', 'entries that say the same in another form are kept as written');
  assert.equal(statSync(file).mode & 0o777, 0o664);
});

test('persist: a file edited since it was loaded is not overwritten', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fulcrum-persist-'));
  const file = path.join(dir, 'f.yaml');
  writeFileSync(file, 'pools:\n  web:\n    upstreams:\n      - http://127.0.0.1:9001\n');
  const config = loadConfigFile(file).config;
  const loaded = structuredClone(config);
  // The operator adds one by hand and has not reloaded yet.
  writeFileSync(file, 'pools:\n  web:\n    upstreams:\n      - http://127.0.0.1:9001\n      - http://new.example:9\n');
  config.pools.web.upstreams.push({ url: 'http://127.0.0.1:9002', weight: 1, max_connections: 0 });
  assert.throws(() => persistUpstreams(file, config, ['web'], loaded), /changed since it was loaded/);
  assert.match(readFileSync(file, 'utf8'), /new\.example/);
});
