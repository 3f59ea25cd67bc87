/**
 * What a reload changed, in an operator's words: "+1 upstream 10.0.0.4:80", "policy
 * round-robin -> least-connections", "timeouts.connect 5s -> 2s". Both configurations are
 * validated ones, so defaults are filled in and a key merely spelled out in the new file is
 * no change. Items are matched by identity (upstreams by host:port, listeners by name or
 * host:port, routes by name or host + path prefix), not by position, so reordering a list
 * is no change either. Secrets are never printed: the line goes to logs.
 */
import { isDeepStrictEqual } from 'node:util';
import { formatDuration } from './duration.ts';
import { upstreamIdOf } from '../upstream/upstream.ts';
import { formatPath } from './load.ts';
import { Duration, FulcrumConfigSchema, ListenerConfig, PoolConfig, RouteConfig, type FulcrumConfig } from './schema.ts';

/** One change; `area` is what it belongs to ("pool api", "listener 0.0.0.0:8080", "route /api", "log"). */
export interface ConfigChange {
  area: string;
  text: string;
}

type Path = (string | number)[];
type Obj = Record<string, unknown>;

/** Values longer than this (arrays as JSON) are cut, so one changed list cannot flood a log line. */
const maxValueChars = 60;
/** Upstreams named in one "+N upstreams" text; the rest are counted. */
const maxNamedUpstreams = 3;
/** Changes per formatted line; the rest are counted ("and 4 more"). */
const maxChangesPerLine = 8;
/** Sections with their own matching rules; `$schema` is an editor hint, not configuration. */
const specialSections = new Set(['pools', 'routes', 'listeners', '$schema']);
/** What the items of a list are called when only their count is shown. */
const nouns: Record<string, string> = { rate_limits: 'limits' };

/** The changes from `before` to `after`: pools, routes, listeners, then the other sections. Empty when nothing changed. */
export function diffConfigs(before: FulcrumConfig, after: FulcrumConfig): ConfigChange[] {
  const changes: ConfigChange[] = [];
  diffPools(before.pools, after.pools, changes);
  diffRoutes(before.routes, after.routes, changes);
  diffListeners(before.listeners, after.listeners, changes);
  const b = before as unknown as Obj;
  const a = after as unknown as Obj;
  for (const key of unionKeys(b, a)) {
    if (specialSections.has(key)) continue;
    const schema = childSchema(FulcrumConfigSchema, key);
    for (const text of diffValue(b[key], a[key], [], schema)) changes.push({ area: key, text });
  }
  return changes;
}

/**
 * One line per area, in the order the areas first appear: "pool api: +1 upstream 10.0.0.4:80,
 * weight of 10.0.0.2:80 1 -> 3". A whole item added or removed already names itself
 * ("+pool api (2 upstreams, round-robin)") and stands without the area in front.
 */
export function formatChanges(changes: ConfigChange[]): string[] {
  const byArea = new Map<string, string[]>();
  for (const c of changes) {
    const texts = byArea.get(c.area);
    if (texts) texts.push(c.text);
    else byArea.set(c.area, [c.text]);
  }
  const lines: string[] = [];
  for (const [area, texts] of byArea) {
    const shown = texts.length > maxChangesPerLine ? [...texts.slice(0, maxChangesPerLine - 1), `and ${texts.length - maxChangesPerLine + 1} more`] : texts;
    const standalone = texts.every((t) => t.startsWith(`+${area}`) || t.startsWith(`-${area}`));
    lines.push(standalone ? shown.join(', ') : `${area}: ${shown.join(', ')}`);
  }
  return lines;
}

// ---- pools, routes, listeners ----

function diffPools(before: FulcrumConfig['pools'], after: FulcrumConfig['pools'], changes: ConfigChange[]): void {
  for (const name of Object.keys(before)) {
    if (!(name in after)) changes.push({ area: `pool ${name}`, text: `-pool ${name}` });
  }
  for (const [name, pool] of Object.entries(after)) {
    const area = `pool ${name}`;
    const old = before[name];
    if (!old) {
      const n = pool.upstreams.length;
      changes.push({ area, text: `+pool ${name} (${n} ${n === 1 ? 'upstream' : 'upstreams'}, ${pool.policy})` });
      continue;
    }
    const texts = diffUpstreams(old.upstreams, pool.upstreams);
    const { upstreams: _b, ...oldRest } = old;
    const { upstreams: _a, ...newRest } = pool;
    texts.push(...diffValue(oldRest, newRest, [], PoolConfig));
    for (const text of texts) changes.push({ area, text });
  }
}

type Upstream = FulcrumConfig['pools'][string]['upstreams'][number];

/** Removed, then added upstreams, then per-upstream settings ("weight of 10.0.0.2:80 1 -> 3"). */
function diffUpstreams(before: Upstream[], after: Upstream[]): string[] {
  const { removed, added, pairs } = match(before, after, upstreamKey);
  const texts: string[] = [];
  if (removed.length > 0) texts.push(`-${countUpstreams(removed)}`);
  if (added.length > 0) texts.push(`+${countUpstreams(added)}`);
  for (const [b, a] of pairs) {
    const bo = b as unknown as Obj;
    const ao = a as unknown as Obj;
    for (const key of unionKeys(bo, ao)) {
      // Same host:port with a different spelling (a trailing slash, ":80") is the same upstream.
      if (key === 'url' || isDeepStrictEqual(bo[key], ao[key])) continue;
      texts.push(`${key} of ${upstreamKey(a)} ${formatValue(bo[key], false)} -> ${formatValue(ao[key], false)}`);
    }
  }
  return texts;
}

/** "1 upstream 10.0.0.4:80", "5 upstreams a:80, b:80, c:80 and 2 more" */
function countUpstreams(list: Upstream[]): string {
  const names = list.slice(0, maxNamedUpstreams).map(upstreamKey).join(', ');
  const more = list.length > maxNamedUpstreams ? ` and ${list.length - maxNamedUpstreams} more` : '';
  return `${list.length} ${list.length === 1 ? 'upstream' : 'upstreams'} ${names}${more}`;
}

/** host:port with the port spelled out: `http://10.0.0.2` and `http://10.0.0.2:80/` are one upstream. */
function upstreamKey(u: Upstream): string {
  try {
    return upstreamIdOf(u.url);
  } catch {
    return u.url;
  }
}

type Route = FulcrumConfig['routes'][number];

function diffRoutes(before: Route[], after: Route[], changes: ConfigChange[]): void {
  const { removed, added, pairs } = match(before, after, routeKey);
  for (const r of removed) changes.push({ area: `route ${routeKey(r)}`, text: `-route ${routeKey(r)}` });
  for (const r of after) {
    const area = `route ${routeKey(r)}`;
    if (added.includes(r)) {
      changes.push({ area, text: `+route ${routeKey(r)} -> ${r.pool}` });
      continue;
    }
    const pair = pairs.find(([, a]) => a === r)!;
    for (const text of diffValue(pair[0], r, [], RouteConfig)) changes.push({ area, text });
  }
}

/** The name, else host(s) and path prefix: "api", "/api", "example.com,www.example.com/". */
function routeKey(r: Route): string {
  if (r.name !== undefined) return r.name;
  const host = r.host === undefined ? '' : Array.isArray(r.host) ? r.host.join(',') : r.host;
  return `${host}${r.path_prefix}`;
}

type Listener = FulcrumConfig['listeners'][number];

function diffListeners(before: Listener[], after: Listener[], changes: ConfigChange[]): void {
  const { removed, added, pairs } = match(before, after, listenerKey);
  for (const l of removed) changes.push({ area: `listener ${listenerKey(l)}`, text: `-listener ${listenerKey(l)}` });
  for (const l of after) {
    const area = `listener ${listenerKey(l)}`;
    if (added.includes(l)) {
      changes.push({ area, text: `+listener ${listenerKey(l)}` });
      continue;
    }
    const pair = pairs.find(([, a]) => a === l)!;
    for (const text of diffValue(pair[0], l, [], ListenerConfig)) changes.push({ area, text });
  }
}

function listenerKey(l: Listener): string {
  return l.name ?? (l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`);
}

/**
 * Pairs the items of two lists by key. Equal keys may repeat (the same upstream twice for
 * more weight, two port-0 listeners): the n-th of a key pairs with the n-th, the rest are
 * added or removed.
 */
function match<T>(before: T[], after: T[], keyOf: (item: T) => string): { removed: T[]; added: T[]; pairs: [T, T][] } {
  const waiting = new Map<string, T[]>();
  for (const item of before) {
    const key = keyOf(item);
    const list = waiting.get(key);
    if (list) list.push(item);
    else waiting.set(key, [item]);
  }
  const added: T[] = [];
  const pairs: [T, T][] = [];
  for (const item of after) {
    const old = waiting.get(keyOf(item))?.shift();
    if (old === undefined) added.push(item);
    else pairs.push([old, item]);
  }
  const removed = before.filter((item) => !pairs.some(([b]) => b === item));
  return { removed, added, pairs };
}

// ---- any other value, by key path ----

/**
 * Texts for what differs between two values, by dotted key path relative to the item:
 * "timeouts.connect 5s -> 2s", "health_check added", "rate_limits changed (1 -> 2 limits)".
 * `schema` is the zod node of the value, used only to tell durations from plain numbers.
 */
function diffValue(before: unknown, after: unknown, path: Path, schema: unknown): string[] {
  if (isDeepStrictEqual(before, after)) return [];
  const label = formatPath(path);
  const say = (text: string): string => (label ? `${label} ${text}` : text);
  const hidden = say(before === undefined ? 'added' : after === undefined ? 'removed' : '(changed)');
  if (path.some((k) => typeof k === 'string' && isSecretKey(k))) return [hidden];
  // A whole structure appearing or going is one fact; its contents would be noise (and may hold secrets).
  if (before === undefined && isStructure(after)) return [say('added')];
  if (after === undefined && isStructure(before)) return [say('removed')];
  if (isPlainObject(before) && isPlainObject(after)) {
    return unionKeys(before, after).flatMap((key) => diffValue(before[key], after[key], [...path, key], childSchema(schema, key)));
  }
  if (Array.isArray(before) && Array.isArray(after) && !(before.every(isScalar) && after.every(isScalar))) {
    if (before.length === after.length) {
      return before.flatMap((item, i) => diffValue(item, after[i], [...path, i], childSchema(schema, i)));
    }
    const last = path[path.length - 1];
    const noun = (typeof last === 'string' && nouns[last]) || 'items';
    return [say(`changed (${before.length} -> ${after.length} ${noun})`)];
  }
  // Only values are printed from here on: the last place a secret could leak.
  if (holdsSecret(before) || holdsSecret(after)) return [hidden];
  const duration = isDuration(schema);
  return [say(`${formatValue(before, duration)} -> ${formatValue(after, duration)}`)];
}

/** Short text of a value: durations as durations, simple strings bare, lists as cut compact JSON. */
function formatValue(value: unknown, duration: boolean): string {
  if (value === undefined) return '(none)';
  if (duration && typeof value === 'number') return formatDuration(value);
  if (typeof value === 'string' && /^[A-Za-z0-9_.:/@*+-]+$/.test(value)) return value;
  const text = JSON.stringify(value) ?? String(value);
  return text.length > maxValueChars ? `${text.slice(0, maxValueChars - 3)}...` : text;
}

/**
 * Values never printed: under a key named `token` (or `*_token`) or naming a password or a
 * secret, and strings that are URLs with a password (`redis://:hunter2@host`). `token_file`
 * is a path, not a secret.
 */
function isSecretKey(key: string): boolean {
  return /^(.*_)?token$|password|secret/i.test(key);
}

function holdsSecret(value: unknown): boolean {
  if (typeof value === 'string') return /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/@]*:[^/@]*@/.test(value);
  if (Array.isArray(value)) return value.some(holdsSecret);
  if (isPlainObject(value)) return Object.entries(value).some(([k, v]) => isSecretKey(k) || holdsSecret(v));
  return false;
}

function isPlainObject(value: unknown): value is Obj {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function isScalar(value: unknown): boolean {
  return value === null || typeof value !== 'object';
}

/** An object, or a list of objects: shown as "added"/"removed" rather than by value. */
function isStructure(value: unknown): boolean {
  return isPlainObject(value) || (Array.isArray(value) && !value.every(isScalar));
}

/** Keys of `after` in its (the schema's) order, then keys only `before` has. */
function unionKeys(before: unknown, after: unknown): string[] {
  const a = isPlainObject(after) ? Object.keys(after) : [];
  const b = isPlainObject(before) ? Object.keys(before).filter((k) => !a.includes(k)) : [];
  return [...a, ...b];
}

// ---- the schema, to know which numbers are durations ----

/**
 * Every duration field is `Duration` with a default, a description or a refinement around it;
 * those wrappers copy or share its definition, so its input union identifies it. Walking the
 * schema (rather than listing key names) keeps new sections' durations printed as durations.
 */
const durationInput: unknown = (Duration as any)._zod.def.in;

function isDuration(schema: unknown): boolean {
  const node = unwrapWrappers(schema);
  return node?._zod.def.type === 'pipe' && node._zod.def.in === durationInput;
}

/** The schema of `key` inside `schema` (object field, array element, record value), or undefined. */
function childSchema(schema: unknown, key: string | number): unknown {
  let node = unwrap(schema);
  if (!node) return undefined;
  const def = node._zod.def;
  if (def.type === 'array') return def.element;
  if (def.type === 'record') return def.valueType;
  if (typeof key !== 'string') return undefined;
  if (def.type === 'object') return def.shape[key];
  if (def.type === 'union') {
    node = def.options.map(unwrap).find((o: any) => o?._zod.def.type === 'object' && key in o._zod.def.shape);
    return node?._zod.def.shape[key];
  }
  return undefined;
}

/** Through optional, default, prefault and nullable, not through pipes (a duration is one). */
function unwrapWrappers(schema: unknown): any {
  let node = schema as any;
  while (node?._zod) {
    const def = node._zod.def;
    if (def.type === 'optional' || def.type === 'default' || def.type === 'prefault' || def.type === 'nullable' || def.type === 'readonly') node = def.innerType;
    else return node;
  }
  return undefined;
}

/** Through wrappers and pipes, to the shape that holds the keys. */
function unwrap(schema: unknown): any {
  let node = unwrapWrappers(schema);
  while (node?._zod.def.type === 'pipe') node = unwrapWrappers(node._zod.def.in);
  return node;
}

/** `host:port` of an address, IPv6 in brackets. */
function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** `host:port` of a listener's bind address. */
function bindKey(l: Listener): string {
  return hostPort(l.host, l.port);
}

/** What is really bound: the address of each running listener (in `before`'s order) and of the admin listener. */
export interface BoundAddresses {
  listeners: readonly { host: string; port: number }[];
  admin?: { host: string; port: number } | null;
}

/**
 * Pairs each listener of `after` with the running listener it configures, each running one at
 * most once: the same host and port (configured or really bound) first, then a port-0 entry
 * with a still unpaired port-0 listener on the same host, in order. -1: nothing runs for it.
 */
export function pairListeners(before: readonly Listener[], after: readonly Listener[], bound?: readonly { port: number }[]): number[] {
  const used = new Set<number>();
  const pairs = after.map(() => -1);
  after.forEach((l, i) => {
    const j = before.findIndex((b, k) => !used.has(k) && b.host === l.host && l.port !== 0 && (b.port === l.port || bound?.[k]?.port === l.port));
    if (j >= 0) {
      pairs[i] = j;
      used.add(j);
    }
  });
  after.forEach((l, i) => {
    if (pairs[i] !== -1 || l.port !== 0) return;
    const j = before.findIndex((b, k) => !used.has(k) && b.host === l.host && b.port === 0);
    if (j >= 0) {
      pairs[i] = j;
      used.add(j);
    }
  });
  return pairs;
}

/**
 * What a reload from `before` to `after` cannot apply while running, in an operator's words:
 * the reload is still done, but these wait for a restart. `bound` says what is really bound (a
 * port 0 in the file is whatever the OS gave); without it the files are compared.
 */
export function restartNotes(before: FulcrumConfig, after: FulcrumConfig, bound?: BoundAddresses): string[] {
  const notes: string[] = [];
  const pairs = pairListeners(before.listeners, after.listeners, bound?.listeners);
  after.listeners.forEach((l, i) => {
    const old = pairs[i] >= 0 ? before.listeners[pairs[i]] : undefined;
    if (old === undefined) {
      notes.push(`listener ${bindKey(l)} is new or moved: it starts listening on restart (the running listeners keep their addresses)`);
      return;
    }
    if (old.engine !== l.engine) notes.push(`listener ${bindKey(l)}: engine takes effect on restart`);
    // Fulcrum's own parser reads the limit per request; node:http fixes it per server.
    else if (l.engine === 'node' && old.limits.max_header_bytes !== l.limits.max_header_bytes) notes.push(`listener ${bindKey(l)}: limits.max_header_bytes takes effect on restart`);
    if (old.name !== l.name) notes.push(`listener ${bindKey(l)}: name takes effect on restart`);
    if (old.protocol !== l.protocol) notes.push(`listener ${bindKey(l)}: protocol ${l.protocol} takes effect on restart (it speaks ${old.protocol} until then)`);
    if (JSON.stringify(old.tls?.acme) !== JSON.stringify(l.tls?.acme)) notes.push(`listener ${bindKey(l)}: tls.acme takes effect on restart`);
  });
  if (JSON.stringify(before.acme) !== JSON.stringify(after.acme)) notes.push('acme takes effect on restart');
  before.listeners.forEach((l, i) => {
    if (!pairs.includes(i)) {
      const b = bound?.listeners[i];
      notes.push(`listener ${b ? hostPort(b.host, b.port) : bindKey(l)} is gone from the file: it keeps listening until restart`);
    }
  });
  const runningAdmin = bound?.admin ?? (before.admin ? { host: before.admin.host, port: before.admin.port } : null);
  if (before.admin === undefined && after.admin !== undefined) notes.push('admin: the admin listener starts on restart');
  else if (before.admin !== undefined && after.admin === undefined) notes.push('admin: the admin listener keeps running until restart');
  else if (before.admin && after.admin && runningAdmin) {
    const samePort = after.admin.port === runningAdmin.port || after.admin.port === before.admin.port;
    if (before.admin.host !== after.admin.host || !samePort) {
      notes.push(`admin: ${hostPort(after.admin.host, after.admin.port)} takes effect on restart; the admin API stays on ${hostPort(runningAdmin.host, runningAdmin.port)} until then`);
    }
  }
  if (before.log.format !== after.log.format) notes.push('log.format takes effect on restart');
  return notes;
}
