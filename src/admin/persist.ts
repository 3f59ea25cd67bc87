/**
 * `admin.persist: true`: a pool's upstream list, as the admin API left it, written back into the
 * configuration file. YAML keeps its comments and layout (the yaml library's Document API edits
 * the one list in place); JSON is rewritten with two-space indentation. The file is replaced
 * atomically (write a temporary file, then rename), so a reader never sees half of it.
 */
import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { isMap, isScalar, isSeq, parseDocument, type Node as YamlNode } from 'yaml';
import type { FulcrumConfig, UpstreamSettings } from '../config/schema.ts';
import { upstreamId } from './runtime-changes.ts';

/** How an upstream is written: a bare URL when it has no settings beyond the defaults. */
function entry(u: UpstreamSettings): string | Record<string, unknown> {
  if (u.weight === 1 && u.max_connections === 0) return u.url;
  return u.max_connections === 0 ? { url: u.url, weight: u.weight } : { url: u.url, weight: u.weight, max_connections: u.max_connections };
}

function entryId(value: unknown): string | null {
  const url = typeof value === 'string' ? value : value && typeof value === 'object' ? (value as { url?: unknown }).url : undefined;
  if (typeof url !== 'string') return null;
  try {
    return upstreamId(url);
  } catch {
    return null;
  }
}

/** Writes `config.pools[pool].upstreams` into `file` (the `pools.<pool>.upstreams` list, or a seed file's `backends`). */
export function persistUpstreams(file: string, config: FulcrumConfig, pool: string): void {
  const text = readFileSync(file, 'utf8');
  const wanted = config.pools[pool].upstreams;
  let out: string;
  if (/\.json$/i.test(file)) {
    const raw = JSON.parse(text) as Record<string, any>;
    const seed = raw.pools === undefined && Array.isArray(raw.backends);
    const list: unknown[] = seed ? raw.backends : raw.pools[pool].upstreams;
    const next = wanted.map((u) => {
      const old = list.find((v) => entryId(v) === upstreamId(u.url));
      return old !== undefined && JSON.stringify(old) === JSON.stringify(entry(u)) ? old : entry(u);
    });
    if (seed) raw.backends = next;
    else raw.pools[pool].upstreams = next;
    out = JSON.stringify(raw, null, 2) + '\n';
  } else {
    const doc = parseDocument(text);
    const seed = !doc.has('pools') && doc.has('backends');
    const path = seed ? ['backends'] : ['pools', pool, 'upstreams'];
    const seq = doc.getIn(path, true);
    if (!isSeq(seq)) throw new Error(`${path.join('.')} is not a list in ${file}`);
    const items = seq.items as YamlNode[];
    const kept = new Map<string, YamlNode>();
    for (const node of items) {
      const value = isScalar(node) ? node.value : isMap(node) ? node.toJSON() : null;
      const id = entryId(value);
      if (id !== null) kept.set(id, node);
    }
    seq.items = wanted.map((u) => {
      const old = kept.get(upstreamId(u.url));
      // An entry that already says the same keeps its node, and so its comments.
      if (old !== undefined) {
        const value = isScalar(old) ? old.value : (old as YamlNode).toJSON();
        if (JSON.stringify(value) === JSON.stringify(entry(u))) return old;
      }
      return doc.createNode(entry(u));
    });
    out = doc.toString();
  }
  const tmp = `${file}.fulcrum-tmp-${process.pid}`;
  writeFileSync(tmp, out, { mode: statSync(file).mode & 0o777 });
  renameSync(tmp, file);
}
