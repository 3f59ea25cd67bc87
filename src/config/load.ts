/**
 * Reading a configuration: YAML or JSON text -> the seeds' small shapes widened to the full
 * shape -> environment overrides -> the schema. Every problem is reported at once, each with
 * file:line:column, the key path and, for a mistyped key, the key that was probably meant.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { isMap, isPair, isScalar, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import { z } from 'zod';
import { ConfigError, type ConfigProblem } from '../errors.ts';
import { closest } from './did-you-mean.ts';
import { upstreamIdOf } from '../upstream/upstream.ts';
import { FulcrumConfigSchema, SeedConfigSchema, isLoopbackHost, type FulcrumConfig, type SeedConfig } from './schema.ts';

type Path = (string | number)[];

/** A validated configuration and what the reader noticed on the way. */
export interface LoadedConfig {
  config: FulcrumConfig;
  /** Things that work but deserve a look (a seed key Fulcrum does not act on yet, ...). */
  warnings: string[];
  /** Where it came from: a file name or `<inline>`. */
  source: string;
}

/** Environment variables that override common keys; each names the key it sets. */
export const envOverrides: readonly { name: string; path: Path; parse: (v: string) => unknown; description: string }[] = [
  { name: 'FULCRUM_PORT', path: ['listeners', 0, 'port'], parse: numberOrText, description: 'port of the first listener' },
  { name: 'FULCRUM_HOST', path: ['listeners', 0, 'host'], parse: (v) => v, description: 'bind address of the first listener' },
  { name: 'FULCRUM_LOG_LEVEL', path: ['log', 'level'], parse: (v) => v, description: 'log level' },
  { name: 'FULCRUM_LOG_FORMAT', path: ['log', 'format'], parse: (v) => v, description: 'log format (json, pretty, auto)' },
  { name: 'FULCRUM_ACCESS_LOG', path: ['log', 'access_log'], parse: (v) => (v === 'true' || v === '1' ? true : v === 'false' || v === '0' ? false : v), description: 'access log on or off' },
  { name: 'FULCRUM_ADMIN_TOKEN', path: ['admin', 'token'], parse: (v) => v, description: 'admin API token (only if the file has an admin section)' },
  { name: 'FULCRUM_POLICY', path: ['pools', '*', 'policy'], parse: (v) => v, description: 'policy of every pool' },
];

function numberOrText(v: string): unknown {
  return /^\d+$/.test(v.trim()) ? Number(v) : v;
}

/** Reads, widens, overrides and validates a configuration file. Throws ConfigError. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (err as Error).message;
    throw new ConfigError([{ file, line: 0, column: 0, path: '', message: `cannot read the configuration: ${reason}` }]);
  }
  return loadConfigText(text, file, env);
}

/** As loadConfigFile, from text already read; `file` is only used in messages. */
export function loadConfigText(text: string, file: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  if (file.endsWith('.json')) {
    // JSON's own parser: YAML would accept trailing commas and describe a missing comma in YAML terms.
    try {
      JSON.parse(text);
    } catch (err) {
      const message = (err as Error).message;
      const at = /\(line (\d+) column (\d+)\)/.exec(message);
      const where = /at position (\d+)/.exec(message);
      let line = at ? Number(at[1]) : 1;
      let column = at ? Number(at[2]) : 1;
      const trailing = /,(\s*)[\]}]/.exec(text);
      if (!at && !where && trailing) {
        const before = text.slice(0, trailing.index).split('\n');
        throw new ConfigError([{ file, line: before.length, column: before[before.length - 1].length + 1, path: '', message: 'invalid JSON: trailing comma' }]);
      }
      if (!at && where) {
        const before = text.slice(0, Number(where[1])).split('\n');
        line = before.length;
        column = before[before.length - 1].length + 1;
      }
      throw new ConfigError([{ file, line, column, path: '', message: `invalid JSON: ${message.replace(/ in JSON at position.*$/, '').replace(/\s*\(line \d+ column \d+\)/, '')}` }]);
    }
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const problems: ConfigProblem[] = [];
  for (const e of doc.errors) {
    const pos = lineCounter.linePos(e.pos[0]);
    problems.push({ file, line: pos.line, column: pos.col, path: '', message: e.message.split('\n')[0] });
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const raw: unknown = doc.toJS({ maxAliasCount: 100 });
  const locate = (path: Path, atKey: boolean): { line: number; column: number } => {
    const offset = offsetOf(doc, path, atKey);
    if (offset === undefined) return { line: 0, column: 0 };
    const pos = lineCounter.linePos(offset);
    return { line: pos.line, column: pos.col };
  };
  return validate(raw, file, locate, env);
}

/** Validates a configuration given as an object (the programmatic API). Throws ConfigError. */
export function validateConfig(raw: unknown, source = '<inline>', env: NodeJS.ProcessEnv = {}): LoadedConfig {
  return validate(raw, source, () => ({ line: 0, column: 0 }), env);
}

function validate(raw: unknown, file: string, locate: (path: Path, atKey: boolean) => { line: number; column: number }, env: NodeJS.ProcessEnv): LoadedConfig {
  if (raw === null || raw === undefined) raw = {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError([{ file, line: 1, column: 1, path: '', message: 'the configuration must be a mapping of keys to values' }]);
  }
  const warnings: string[] = [];
  const problems: ConfigProblem[] = [];
  const place = (path: Path, message: string, atKey = false): ConfigProblem => ({ file, ...locate(path, atKey), path: formatPath(path), message });
  let candidate = raw as Record<string, unknown>;

  if (isSeedShape(candidate)) {
    const seed = SeedConfigSchema.safeParse(candidate, { reportInput: true });
    if (!seed.success) {
      throw new ConfigError(dedupe(issuesToProblems(seed.error.issues, SeedConfigSchema, place)));
    }
    candidate = widenSeed(seed.data, warnings);
  }

  const overridden = applyEnvOverrides(candidate, env);
  const result = FulcrumConfigSchema.safeParse(overridden.config, { reportInput: true });
  const placeWithEnv = (path: Path, message: string, atKey = false): ConfigProblem => {
    const hit = overridden.applied.find((o) => samePath(o.path, path));
    if (!hit) return place(path, message, atKey);
    const value = hit.name.endsWith('TOKEN') ? '(hidden)' : JSON.stringify(hit.value);
    return { file: `env ${hit.name}`, line: 0, column: 0, path: formatPath(path), message: message.includes(value) ? message : `${message} (value ${value})` };
  };
  if (!result.success) problems.push(...issuesToProblems(result.error.issues, FulcrumConfigSchema, placeWithEnv));
  problems.push(...crossCheck(overridden.config, placeWithEnv));
  if (problems.length > 0) throw new ConfigError(dedupe(problems));
  const config = result.data!;
  // A relative token_file is relative to the configuration file, wherever fulcrum (or the CLI) runs.
  if (config.admin?.token_file !== undefined && !file.startsWith('<') && !file.startsWith('env ')) {
    config.admin.token_file = path.resolve(path.dirname(file), config.admin.token_file);
  }
  return { config, warnings, source: file };
}

/** A document in a seed's shape: a top-level `backends` list and no `pools`. */
function isSeedShape(raw: Record<string, unknown>): boolean {
  return 'backends' in raw && !('pools' in raw);
}

/** The seeds' one-pool shape as a full configuration (one listener, one pool, one route). */
function widenSeed(seed: SeedConfig, warnings: string[]): Record<string, unknown> {
  let host = '0.0.0.0';
  let port: number = 8080;
  if (seed.port !== undefined) port = seed.port;
  if (seed.lb_port !== undefined) {
    if (typeof seed.lb_port === 'number') port = seed.lb_port;
    else {
      const i = seed.lb_port.lastIndexOf(':');
      if (i === -1) port = Number(seed.lb_port);
      else {
        port = Number(seed.lb_port.slice(i + 1));
        const h = seed.lb_port.slice(0, i).replace(/^\[|\]$/g, '');
        if (h) host = h;
      }
    }
  }
  const pool: Record<string, unknown> = { policy: seed.strategy, upstreams: seed.backends };
  // The seeds probe GET /health at this frequency; the rest are Fulcrum's defaults.
  if (seed.health_check_frequency !== undefined) pool.health_check = { path: '/health', interval: seed.health_check_frequency };
  const config: Record<string, unknown> = { listeners: [{ host, port }], pools: { default: pool } };
  if (seed.log_level) config.log = { level: seed.log_level };
  if (seed.admin_port !== undefined) config.admin = { port: seed.admin_port };
  if (seed.request_timeout !== undefined) pool.timeouts = { request: seed.request_timeout };
  return config;
}

/** Applies FULCRUM_* variables onto a copy; returns which ones took effect. */
function applyEnvOverrides(config: Record<string, unknown>, env: NodeJS.ProcessEnv) {
  const copy = structuredClone(config);
  const applied: { name: string; path: Path; value: unknown }[] = [];
  for (const o of envOverrides) {
    const text = env[o.name];
    if (text === undefined || text === '') continue;
    const value = o.parse(text);
    // An admin token alone must not open an admin listener the file did not ask for.
    if (o.path[0] === 'admin' && (copy.admin === undefined || copy.admin === null)) continue;
    if (o.path[1] === '*') {
      const pools = copy[o.path[0] as string];
      if (pools && typeof pools === 'object') {
        for (const name of Object.keys(pools)) {
          const pool = (pools as Record<string, unknown>)[name];
          if (pool && typeof pool === 'object') (pool as Record<string, unknown>)[o.path[2] as string] = value;
          applied.push({ name: o.name, path: [o.path[0], name, o.path[2]], value });
        }
      }
      continue;
    }
    setPath(copy, o.path, value);
    applied.push({ name: o.name, path: o.path, value });
  }
  return { config: copy, applied };
}

function setPath(target: Record<string, unknown>, path: Path, value: unknown): void {
  let node: any = target;
  for (let i = 0; i < path.length - 1; i++) {
    const key = path[i];
    if (node[key] === undefined || node[key] === null || typeof node[key] !== 'object') node[key] = typeof path[i + 1] === 'number' ? [] : {};
    node = node[key];
  }
  node[path[path.length - 1]] = value;
}

/** Checks that span keys (a route's pool exists, ...), run even when the schema failed elsewhere. */
function crossCheck(config: Record<string, unknown>, place: (path: Path, message: string) => ConfigProblem): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const pools = config.pools && typeof config.pools === 'object' && !Array.isArray(config.pools) ? Object.keys(config.pools) : [];
  if (config.pools !== undefined && pools.length === 0) problems.push(place(['pools'], 'at least one pool is needed'));
  if (config.pools === undefined) problems.push(place([], 'missing "pools": at least one pool of upstreams is needed (or the seed shape: "backends: [...]")'));
  const routes = Array.isArray(config.routes) ? config.routes : [];
  routes.forEach((route, i) => {
    const pool = route && typeof route === 'object' ? (route as Record<string, unknown>).pool : undefined;
    if (typeof pool === 'string' && pools.length > 0 && !pools.includes(pool)) {
      const guess = closest(pool, pools);
      problems.push(place(['routes', i, 'pool'], `no pool named "${pool}"${guess ? ` (did you mean "${guess}"?)` : ''}; pools: ${pools.join(', ')}`));
    }
  });
  for (const name of pools) {
    const pool = (config.pools as Record<string, unknown>)[name];
    const backup = pool && typeof pool === 'object' ? (pool as Record<string, unknown>).backup : undefined;
    if (typeof backup !== 'string') continue;
    if (backup === name) problems.push(place(['pools', name, 'backup'], 'a pool cannot be its own backup'));
    else if (!pools.includes(backup)) {
      const guess = closest(backup, pools);
      problems.push(place(['pools', name, 'backup'], `no pool named "${backup}"${guess ? ` (did you mean "${guess}"?)` : ''}; pools: ${pools.join(', ')}`));
    }
  }
  for (const name of pools) {
    const upstreams = ((config.pools as Record<string, unknown>)[name] as { upstreams?: unknown } | null)?.upstreams;
    if (!Array.isArray(upstreams)) continue;
    const seen = new Map<string, number>();
    upstreams.forEach((u, i) => {
      const url = typeof u === 'string' ? u : u && typeof u === 'object' ? (u as { url?: unknown }).url : undefined;
      if (typeof url !== 'string') return;
      let id: string;
      try {
        id = upstreamIdOf(url);
      } catch {
        return; // the schema reports a bad URL
      }
      const first = seen.get(id);
      if (first !== undefined) problems.push(place(['pools', name, 'upstreams', i], `${id} is already upstreams[${first}] of this pool; give it a higher weight instead of listing it twice`));
      else seen.set(id, i);
    });
  }
  const redis = (config.rate_limit as { redis?: unknown } | undefined)?.redis;
  routes.forEach((route, i) => {
    const limits = route && typeof route === 'object' ? (route as Record<string, unknown>).rate_limits : undefined;
    if (!Array.isArray(limits) || redis !== undefined) return;
    limits.forEach((l, j) => {
      if (l && typeof l === 'object' && (l as Record<string, unknown>).store === 'redis') {
        problems.push(place(['routes', i, 'rate_limits', j, 'store'], 'store "redis" needs a rate_limit.redis section (`redis: {}` for redis://127.0.0.1:6379)'));
      }
    });
  });
  const primaries = pools.length > 1 ? primaryPools(config.pools as Record<string, unknown>) : pools;
  if (routes.length === 0 && primaries.length > 1) problems.push(place(['routes'], `${primaries.length} pools need routes that say which requests go where`));
  const admin = config.admin as { host?: unknown; token?: unknown; token_file?: unknown } | undefined;
  if (admin && typeof admin === 'object' && typeof admin.host === 'string' && !isLoopbackHost(admin.host) && admin.token === undefined && admin.token_file === undefined) {
    problems.push(place(['admin', 'host'], `the admin API on ${admin.host} (not loopback) needs a token: set admin.token, admin.token_file or FULCRUM_ADMIN_TOKEN`));
  }
  if (admin && typeof admin === 'object' && admin.token !== undefined && admin.token_file !== undefined) {
    problems.push(place(['admin', 'token_file'], 'set admin.token or admin.token_file, not both'));
  }
  const listeners = Array.isArray(config.listeners) ? config.listeners : [];
  const seen = new Set<string>();
  listeners.forEach((l, i) => {
    if (!l || typeof l !== 'object') return;
    const { host = '0.0.0.0', port = 8080 } = l as { host?: unknown; port?: unknown };
    const key = `${String(host)}:${String(port)}`;
    if (port !== 0 && seen.has(key)) problems.push(place(['listeners', i, 'port'], `${key} is already bound by another listener`));
    seen.add(key);
  });
  return problems;
}

/** Pools that are some other pool's backup. */
export function isBackupOfAnother(pools: Record<string, unknown>, name: string): boolean {
  return Object.entries(pools).some(([other, p]) => other !== name && p !== null && typeof p === 'object' && (p as Record<string, unknown>).backup === name);
}

/** Pools that are nobody's backup: the ones routes must choose between. */
function primaryPools(pools: Record<string, unknown>): string[] {
  return Object.keys(pools).filter((n) => !isBackupOfAnother(pools, n));
}

/** Zod issues as problems with places; unknown keys get a did-you-mean from the schema. */
function issuesToProblems(issues: readonly z.core.$ZodIssue[], schema: z.ZodType, place: (path: Path, message: string, atKey?: boolean) => ConfigProblem): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const issue of issues) {
    const path = issue.path as Path;
    if (issue.code === 'unrecognized_keys') {
      const known = knownKeys(schema, path);
      for (const key of issue.keys) {
        const guess = closest(key, known);
        const hint = guess ? ` (did you mean "${guess}"?)` : known.length ? ` (known keys: ${known.join(', ')})` : '';
        problems.push(place([...path, key], `unknown key "${key}"${hint}`, true));
      }
    } else if (issue.code === 'invalid_union') {
      // Report the branch that got furthest (an object with a bad field), not "invalid input".
      const branches = issue.errors.filter((b) => b.length > 0 && !b.some((i) => i.code === 'invalid_type' && i.path.length === 0));
      if (branches.length > 0) {
        const nested = branches[0].map((i) => ({ ...i, path: [...path, ...i.path] })) as z.core.$ZodIssue[];
        problems.push(...issuesToProblems(nested, schema, place));
      } else {
        const input = (issue as { input?: unknown }).input;
        const got = input === undefined ? 'nothing' : `${Array.isArray(input) ? 'array' : typeof input} ${JSON.stringify(input)?.slice(0, 40)}`;
        const upstream = path.includes('upstreams') || path.includes('backends');
        problems.push(place(path, upstream ? `expected an upstream URL string or an object with "url", got ${got}` : `${issue.message}, got ${got}`));
      }
    } else if (issue.code === 'invalid_type' && path.length === 1 && path[0] === 'pools' && (issue as { input?: unknown }).input === undefined) {
      // crossCheck says this in the user's words; zod's "expected record" would only repeat it.
      continue;
    } else if (issue.code === 'invalid_key') {
      problems.push(...issuesToProblems(issue.issues.map((i) => ({ ...i, path })) as z.core.$ZodIssue[], schema, place));
    } else {
      problems.push(place(path, describe(issue)));
    }
  }
  return problems;
}

function describe(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_type') {
    const expected = issue.expected;
    const received = (issue as { input?: unknown }).input;
    if (received === undefined) return `missing required key (expected ${expected})`;
    return `expected ${expected}, got ${received === null ? 'null' : Array.isArray(received) ? 'array' : typeof received} ${JSON.stringify(received)?.slice(0, 40) ?? ''}`.trim();
  }
  if (issue.code === 'invalid_value') return `expected one of: ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  return issue.message;
}

/** The keys the schema allows at a path (for did-you-mean). */
function knownKeys(schema: z.ZodType, path: Path): string[] {
  let node: any = schema;
  for (const key of path) {
    node = unwrap(node);
    if (!node) return [];
    const def = node._zod.def;
    if (def.type === 'object') node = def.shape[key];
    else if (def.type === 'array') node = def.element;
    else if (def.type === 'record') node = def.valueType;
    else if (def.type === 'union') node = def.options.map(unwrap).find((o: any) => o?._zod.def.type === 'object')?._zod.def.shape[key];
    else return [];
  }
  node = unwrap(node);
  if (node?._zod.def.type === 'union') node = node._zod.def.options.map(unwrap).find((o: any) => o?._zod.def.type === 'object');
  return node?._zod.def.type === 'object' ? Object.keys(node._zod.def.shape) : [];
}

function unwrap(node: any): any {
  while (node) {
    const def = node._zod.def;
    if (def.type === 'optional' || def.type === 'default' || def.type === 'prefault' || def.type === 'nullable') node = def.innerType;
    else if (def.type === 'pipe') node = def.in;
    else return node;
  }
  return node;
}

/** The offset in the text of the node at `path`, or of its nearest existing ancestor. */
function offsetOf(doc: Document, path: Path, atKey: boolean): number | undefined {
  let node: unknown = doc.contents;
  let offset = (node as YamlNode | null)?.range?.[0];
  for (let depth = 0; depth < path.length; depth++) {
    const key = path[depth];
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && (isScalar(p.key) ? p.key.value : p.key) == key);
      if (!pair) return offset;
      const keyNode = pair.key as YamlNode | null;
      offset = keyNode?.range?.[0] ?? offset;
      node = pair.value;
      // For the last key, point at a bad value (not at a mapping, nor for an unknown key: there the key is the problem).
      if (depth === path.length - 1 && !atKey && node && (node as YamlNode).range && !isMap(node)) offset = (node as YamlNode).range![0];
    } else if (node && typeof node === 'object' && 'items' in node && typeof key === 'number') {
      node = (node as { items: unknown[] }).items[key];
      if (!node) return offset;
      offset = (node as YamlNode).range?.[0] ?? offset;
    } else return offset;
  }
  return offset;
}

function samePath(a: Path, b: Path): boolean {
  return a.length === b.length && a.every((k, i) => k === b[i]);
}

/** `pools.web.upstreams[0].weight` */
export function formatPath(path: Path): string {
  let out = '';
  for (const key of path) out += typeof key === 'number' ? `[${key}]` : out ? `.${key}` : key;
  return out;
}

function dedupe(problems: ConfigProblem[]): ConfigProblem[] {
  const seen = new Set<string>();
  return problems
    .filter((p) => {
      const k = `${p.file}:${p.line}:${p.column}:${p.path}:${p.message}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    })
    .sort((a, b) => a.line - b.line || a.column - b.column);
}
