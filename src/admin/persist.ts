/**
 * `admin.persist: true`: pools' upstream lists, as the admin API left them, written back into
 * the configuration file.
 *
 * YAML is edited as text, one list item at a time: a removed upstream's lines go, a changed
 * one's line is rewritten (keeping a comment at its end), a new one is added after the last
 * item with the same indentation. Everything else in the file stays byte for byte. The result
 * is parsed again and compared with what was meant; a list this cannot edit (a flow list
 * `[a, b]`, odd layouts) is written through the yaml library's Document API instead, which
 * keeps comments but may reformat. JSON is rewritten with two-space indentation.
 *
 * The file is replaced atomically (a temporary file, then rename) and through symlinks (the
 * link's target is written, as with a Kubernetes ConfigMap or /etc/alternatives).
 */
import { chmodSync, readFileSync, realpathSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { isAlias, isMap, isScalar, isSeq, parse as parseYaml, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import { UpstreamConfig, type FulcrumConfig, type UpstreamSettings } from '../config/schema.ts';
import { loadConfigText } from '../config/load.ts';
import { upstreamIdOf } from '../upstream/upstream.ts';

/** How an upstream is written: a bare URL when it has no settings beyond the defaults. */
function entry(u: UpstreamSettings): string | Record<string, unknown> {
  if (u.weight === 1 && u.max_connections === 0) return u.url;
  return u.max_connections === 0 ? { url: u.url, weight: u.weight } : { url: u.url, weight: u.weight, max_connections: u.max_connections };
}

/** The same entry as one line of YAML. */
function entryYaml(u: UpstreamSettings): string {
  const e = entry(u);
  if (typeof e === 'string') return JSON.stringify(e).slice(1, -1) === e ? e : JSON.stringify(e);
  return `{${Object.entries(e).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(', ')}}`;
}

function entryId(value: unknown): string | null {
  const url = typeof value === 'string' ? value : value && typeof value === 'object' ? (value as { url?: unknown }).url : undefined;
  if (typeof url !== 'string') return null;
  try {
    return upstreamIdOf(url);
  } catch {
    return null;
  }
}

/** An entry as written (URL or object, any key order, defaults spelled out or not) says `u`. */
function same(value: unknown, u: UpstreamSettings): boolean {
  const parsed = UpstreamConfig.safeParse(value);
  return parsed.success && parsed.data.url === u.url && parsed.data.weight === u.weight && parsed.data.max_connections === u.max_connections;
}

/** The pool's upstream list node, matching the pool's key as text (a pool named `2024` is a number in YAML). */
function findList(doc: Document, pool: string): YamlNode | null {
  const raw = doc.toJS() as Record<string, unknown> | null;
  if (raw && raw.pools === undefined && Array.isArray(raw.backends)) return (doc.get('backends', true) as YamlNode) ?? null;
  const pools = doc.get('pools', true);
  if (!isMap(pools)) return null;
  const pair = pools.items.find((p) => String(isScalar(p.key) ? p.key.value : p.key) === pool);
  const poolNode = pair?.value;
  if (!isMap(poolNode)) return null;
  return (poolNode.get('upstreams', true) as YamlNode) ?? null;
}

/** A list shared through a YAML anchor or alias cannot be edited for one pool alone. */
function shared(node: YamlNode | null): boolean {
  return node !== null && (isAlias(node) || (node as { anchor?: string }).anchor !== undefined);
}

/** Text edits of one block list; null when the list is not one this can edit safely. */
function editBlockList(text: string, pool: string, wanted: readonly UpstreamSettings[]): string | null {
  const doc = parseDocument(text);
  const seq = findList(doc, pool);
  if (!isSeq(seq) || seq.items.length === 0) return null;
  if (seq.flow) return check(editFlowList(text, seq.items as YamlNode[], seq.range, wanted), pool, wanted);
  const lineStart = (offset: number): number => text.lastIndexOf('\n', offset - 1) + 1;
  const lineEnd = (offset: number): number => {
    const i = text.indexOf('\n', Math.max(0, offset - 1));
    return i === -1 ? text.length : i + 1;
  };
  type Item = { id: string | null; value: unknown; start: number; end: number; valueEnd: number; indent: string };
  const items: Item[] = [];
  for (const node of seq.items as YamlNode[]) {
    if (!node.range) return null;
    const [start, valueEnd] = node.range;
    const from = lineStart(start);
    const dash = text.lastIndexOf('-', start);
    if (dash < from || text.slice(from, dash).trim() !== '') return null; // not "  - item" at the start of a line
    const value = isScalar(node) ? node.value : isMap(node) ? node.toJSON() : null;
    items.push({ id: entryId(value), value, start: from, end: lineEnd(valueEnd), valueEnd, indent: text.slice(from, dash) });
  }
  const byId = new Map(wanted.map((u) => [upstreamIdOf(u.url), u]));
  const present = new Set(items.map((i) => i.id));
  let out = text;
  // From the last item up, so earlier offsets stay right.
  const added = wanted.filter((u) => !present.has(upstreamIdOf(u.url)));
  const last = items[items.length - 1];
  if (added.length > 0) {
    const lines = added.map((u) => `${last.indent}- ${entryYaml(u)}\n`).join('');
    const at = last.end;
    out = out.slice(0, at) + (at > 0 && out[at - 1] !== '\n' ? '\n' : '') + lines + out.slice(at);
  }
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    const u = item.id === null ? undefined : byId.get(item.id);
    if (u === undefined) {
      out = out.slice(0, item.start) + out.slice(item.end);
      continue;
    }
    if (same(item.value, u)) continue;
    // A comment at the end of the item's last line stays with it.
    const tail = text.slice(item.valueEnd, item.end).replace(/\n$/, '');
    const comment = /^\s*#/.test(tail) ? tail : '';
    out = out.slice(0, item.start) + `${item.indent}- ${entryYaml(u)}${comment}\n` + out.slice(item.end);
  }
  return check(out, pool, wanted);
}

/** A flow list `[a, b]` rewritten in place: kept items keep their text, the rest of the file is untouched. */
function editFlowList(text: string, nodes: YamlNode[], range: YamlNode['range'], wanted: readonly UpstreamSettings[]): string | null {
  if (!range || nodes.some((n) => !n.range)) return null;
  const open = text.lastIndexOf('[', range[0]);
  const close = text.indexOf(']', range[1] - 1);
  if (open < 0 || close < 0 || text.slice(open, close).includes('#')) return null; // comments inside: leave it to the fallback
  const sources = new Map<string, { value: unknown; source: string }>();
  for (const n of nodes) {
    const value = isScalar(n) ? n.value : isMap(n) ? n.toJSON() : null;
    const id = entryId(value);
    if (id !== null) sources.set(id, { value, source: text.slice(n.range![0], n.range![1]) });
  }
  const items = wanted.map((u) => {
    const old = sources.get(upstreamIdOf(u.url));
    return old !== undefined && same(old.value, u) ? old.source : entryYaml(u);
  });
  return text.slice(0, open) + `[${items.join(', ')}]` + text.slice(close + 1);
}

/** The edited text if its list now says exactly what was meant, else null (the caller falls back). */
function check(out: string | null, pool: string, wanted: readonly UpstreamSettings[]): string | null {
  if (out === null) return null;
  try {
    const list = findList(parseDocument(out), pool)?.toJSON() as unknown;
    if (!Array.isArray(list) || list.length !== wanted.length || !list.every((v, i) => same(v, wanted[i]))) return null;
  } catch {
    return null;
  }
  return out;
}

/** Whole-document fallback: the Document API keeps comments but may reformat the file. */
function editDocument(text: string, pool: string, wanted: readonly UpstreamSettings[]): string {
  const doc = parseDocument(text);
  const seq = findList(doc, pool);
  if (!isSeq(seq)) throw new Error(`the upstreams of pool ${pool} are not a list in the file`);
  const kept = new Map<string, YamlNode>();
  for (const node of seq.items as YamlNode[]) {
    const id = entryId(isScalar(node) ? node.value : isMap(node) ? node.toJSON() : null);
    if (id !== null) kept.set(id, node);
  }
  seq.items = wanted.map((u) => {
    const old = kept.get(upstreamIdOf(u.url));
    if (old !== undefined && same(isScalar(old) ? old.value : old.toJSON(), u)) return old;
    return doc.createNode(entry(u));
  });
  return doc.toString();
}

/**
 * Writes the upstream lists of `pools` (as `config` has them) into `file`. `loaded` is the
 * configuration the file held when it was last read: a file edited since (and not reloaded) is
 * not overwritten. Throws, leaving the file as it was, when it cannot be read, parsed, safely
 * edited or written.
 */
export function persistUpstreams(file: string, config: FulcrumConfig, pools: Iterable<string>, loaded?: FulcrumConfig): void {
  const target = realpathSync(file);
  let out = readFileSync(target, 'utf8');
  const list = [...pools];
  const current = loadConfigText(out, file).config;
  for (const pool of list) {
    if (current.pools[pool] === undefined) throw new Error(`pool ${pool} is not in ${file} any more; reload it first`);
    if (loaded !== undefined && JSON.stringify(current.pools[pool].upstreams) !== JSON.stringify(loaded.pools[pool]?.upstreams)) {
      throw new Error(`the upstreams of pool ${pool} in ${file} changed since it was loaded; reload the file first, then repeat the change`);
    }
  }
  if (/\.json$/i.test(target)) {
    const raw = JSON.parse(out) as Record<string, any>;
    for (const pool of list) {
      const wanted = config.pools[pool].upstreams;
      const seed = raw.pools === undefined && Array.isArray(raw.backends);
      const list: unknown[] = seed ? raw.backends : raw.pools[pool].upstreams;
      const next = wanted.map((u) => list.find((v) => entryId(v) === upstreamIdOf(u.url) && same(v, u)) ?? entry(u));
      if (seed) raw.backends = next;
      else raw.pools[pool].upstreams = next;
    }
    out = JSON.stringify(raw, null, 2) + '\n';
  } else {
    for (const pool of list) {
      if (shared(findList(parseDocument(out), pool))) throw new Error(`the upstreams of pool ${pool} are a YAML anchor or alias shared with another pool; edit the file by hand`);
      const wanted = config.pools[pool].upstreams;
      out = editBlockList(out, pool, wanted) ?? editDocument(out, pool, wanted);
    }
  }
  // The whole file again: every pool must hold what was meant (nothing else changed by the edit).
  const written = loadConfigText(out, file).config;
  for (const [name, p] of Object.entries(written.pools)) {
    const expected = list.includes(name) ? config.pools[name]?.upstreams : current.pools[name]?.upstreams;
    if (JSON.stringify(p.upstreams) !== JSON.stringify(expected)) throw new Error(`writing ${file} would change pool ${name} unexpectedly; the file was left as it was`);
  }
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.fulcrum-tmp-${process.pid}`);
  try {
    writeFileSync(tmp, out);
    // Set after writing: the mode given at creation is masked by the umask.
    chmodSync(tmp, statSync(target).mode & 0o7777);
    renameSync(tmp, target);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // never created
    }
    throw err;
  }
}
