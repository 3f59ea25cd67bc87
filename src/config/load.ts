/**
 * Reading a configuration: YAML or JSON text -> the seeds' small shapes widened to the full
 * shape -> environment overrides -> the schema. Every problem is reported at once, each with
 * file:line:column, the key path and, for a mistyped key, the key that was probably meant.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { isCollection, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node as YamlNode, type YAMLError } from 'yaml';
import { z } from 'zod';
import { ConfigError, type ConfigProblem } from '../errors.ts';
import { closest } from './did-you-mean.ts';
import { upstreamIdOf } from '../upstream/upstream.ts';
import { Duration, FulcrumConfigSchema, SeedConfigSchema, isLoopbackHost, type FulcrumConfig, type SeedConfig } from './schema.ts';
import { parseDuration, unitlessDurationMessage } from './duration.ts';
import { forwardSettingsProblem } from '../forward/forward-proxy.ts';

type Path = (string | number)[];

/** A validated configuration and what the reader noticed on the way. */
export interface LoadedConfig {
  config: FulcrumConfig;
  /** Things that work but deserve a look (a seed key Fulcrum does not act on yet, ...). */
  warnings: string[];
  /** Where it came from: a file name or `<inline>`. */
  source: string;
  /**
   * Where a key was written, for errors found after loading (a port in use): its line and column
   * in the file, `env FULCRUM_PORT` when a variable set it, or line 0 when it is a default.
   */
  placeOf?: (path: Path) => ConfigProblem;
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
  if (doc.errors.length > 0) throw new ConfigError(yamlProblems(doc, text, lineCounter, file));
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // An alias to an anchor that is not there (yet), or too many aliases: found only when the values are built.
    const message = (err as Error).message;
    const alias = /alias.*: (\S+)$/.exec(message)?.[1];
    const offset = alias === undefined ? -1 : text.search(new RegExp(`\\*${alias.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?![\\w-])`));
    const pos = offset >= 0 ? lineCounter.linePos(offset) : { line: 0, col: 0 };
    const path = offset >= 0 ? formatPath(keyPathAtLine(text.split('\n'), pos.line - 1)) : '';
    throw new ConfigError([{ file, line: pos.line, column: pos.col, path, message: alias ? `invalid YAML: *${alias} refers to no anchor &${alias} above it` : `invalid YAML: ${message}` }]);
  }
  const locate = (path: Path, atKey: boolean): { line: number; column: number } => {
    const offset = offsetOf(doc, path, atKey);
    if (offset === undefined) return { line: 0, column: 0 };
    const pos = lineCounter.linePos(offset);
    return { line: pos.line, column: pos.col };
  };
  return validate(raw, file, locate, env, true);
}

/** Validates a configuration given as an object (the programmatic API). Throws ConfigError. */
export function validateConfig(raw: unknown, source = '<inline>', env: NodeJS.ProcessEnv = {}): LoadedConfig {
  return validate(raw, source, () => ({ line: 0, column: 0 }), env);
}

/** `fromText`: the configuration was written by hand (a file, a validate request), so durations need units. */
function validate(raw: unknown, file: string, locate: (path: Path, atKey: boolean) => { line: number; column: number }, env: NodeJS.ProcessEnv, fromText = false): LoadedConfig {
  if (raw === null || raw === undefined) raw = {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError([{ file, line: 1, column: 1, path: '', message: 'the configuration must be a mapping of keys to values' }]);
  }
  const warnings: string[] = [];
  const problems: ConfigProblem[] = [];
  const place = (path: Path, message: string, atKey = false): ConfigProblem => ({ file, ...locate(path, atKey), path: formatPath(path), message });
  let candidate = raw as Record<string, unknown>;
  /** A seed's keys for the widened listener port and admin port, to place errors about them. */
  let seedKeys: { port: string; admin: string } | undefined;

  if (isSeedShape(candidate)) {
    const seed = SeedConfigSchema.safeParse(candidate, { reportInput: true });
    const unitless = fromText ? unitlessDurations(candidate, SeedConfigSchema).map(([p, v]) => place(p, unitlessDurationMessage(v))) : [];
    if (!seed.success || unitless.length > 0) {
      throw new ConfigError(dedupe([...(seed.success ? [] : issuesToProblems(seed.error.issues, SeedConfigSchema, place)), ...unitless]));
    }
    seedKeys = { port: 'lb_port' in candidate ? 'lb_port' : 'port', admin: 'admin_port' };
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
  // A seed's durations were checked in its own shape above; widened, they are milliseconds already.
  if (fromText && !seedKeys) for (const [p, v] of unitlessDurations(overridden.config, FulcrumConfigSchema)) problems.push(placeWithEnv(p, unitlessDurationMessage(v)));
  problems.push(...crossCheck(overridden.config, placeWithEnv));
  if (result.success) {
    // Forward-proxy rules and password hashes compiled as a listener or route will (the schema checks their shape only).
    result.data.listeners.forEach((l, i) => {
      const problem = l.forward_proxy === undefined ? null : forwardSettingsProblem(l.forward_proxy);
      if (problem !== null) problems.push(placeWithEnv(['listeners', i, 'forward_proxy'], problem));
    });
    result.data.routes.forEach((r, i) => {
      const problem = r.forward_proxy === undefined ? null : forwardSettingsProblem(r.forward_proxy);
      if (problem !== null) problems.push(placeWithEnv(['routes', i, 'forward_proxy'], problem));
    });
  }
  if (problems.length > 0) throw new ConfigError(dedupe(problems));
  const config = result.data!;
  // A key the file leaves out has no line: the problem names the file and says it is the default.
  const placeOf = (path: Path): ConfigProblem => {
    const envHit = overridden.applied.some((o) => samePath(o.path, path));
    if (seedKeys && !envHit) {
      // The seed shape's `port`/`lb_port` and `admin_port` became listeners[0].port and admin.port.
      const key = samePath(path, ['listeners', 0, 'port']) || samePath(path, ['listeners', 0, 'host']) ? seedKeys.port : samePath(path, ['admin', 'port']) ? seedKeys.admin : undefined;
      if (key !== undefined && key in (raw as Record<string, unknown>)) return place([key], '');
    }
    if (envHit || (!seedKeys && hasPath(raw, path))) return placeWithEnv(path, '');
    return { file, line: 0, column: 0, path: formatPath(path), message: '(default)' };
  };
  // A relative token_file is relative to the configuration file, wherever fulcrum (or the CLI) runs.
  if (config.admin?.token_file !== undefined && !file.startsWith('<') && !file.startsWith('env ')) {
    config.admin.token_file = path.resolve(path.dirname(file), config.admin.token_file);
  }
  // So is a relative access log file, and so are certificate, key and CA files and the ACME storage.
  const fromFile = !file.startsWith('<') && !file.startsWith('env ');
  const resolve = (p: string): string => (fromFile ? path.resolve(path.dirname(file), p) : p);
  const accessLog = config.log.access_log;
  if (typeof accessLog === 'object' && accessLog.path !== undefined) accessLog.path = resolve(accessLog.path);
  for (const l of config.listeners) {
    if (l.tls === undefined) continue;
    for (const c of l.tls.certificates) {
      c.cert = resolve(c.cert);
      if (c.key !== undefined) c.key = resolve(c.key);
    }
    if (l.tls.client_auth !== undefined) l.tls.client_auth.ca = resolve(l.tls.client_auth.ca);
  }
  for (const pool of Object.values(config.pools)) {
    const t = pool.tls;
    if (t.ca !== undefined) t.ca = resolve(t.ca);
    if (t.cert !== undefined) t.cert = resolve(t.cert);
    if (t.key !== undefined) t.key = resolve(t.key);
  }
  if (config.acme !== undefined) {
    config.acme.storage = resolve(config.acme.storage);
    if (config.acme.directory_ca !== undefined) config.acme.directory_ca = resolve(config.acme.directory_ca);
  }
  return { config, warnings, source: file, placeOf };
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
  const protocolOf = (name: string): unknown => ((config.pools as Record<string, { protocol?: unknown } | null>)[name] ?? {}).protocol ?? 'http1';
  /** A pool reference at `path`: it must exist, and be a tcp pool exactly when `tcp`. */
  const checkPoolRef = (path: Path, pool: unknown, tcp: boolean): void => {
    if (typeof pool !== 'string' || pools.length === 0) return;
    if (!pools.includes(pool)) {
      const candidates = pools.filter((n) => (protocolOf(n) === 'tcp') === tcp);
      const guess = closest(pool, candidates.length > 0 ? candidates : pools);
      problems.push(place(path, `no pool named "${pool}"${guess ? ` (did you mean "${guess}"?)` : ''}; pools: ${pools.join(', ')}`));
    } else if (tcp && protocolOf(pool) !== 'tcp') problems.push(place(path, `pool ${pool} is an HTTP pool; a tcp listener relays bytes to a pool with protocol: tcp (and tcp:// upstreams)`));
    else if (!tcp && protocolOf(pool) === 'tcp') problems.push(place(path, `pool ${pool} is a tcp pool: it takes connections of tcp listeners (listeners[].pool), not HTTP requests`));
  };
  routes.forEach((route, i) => {
    if (!route || typeof route !== 'object') return;
    const { pool, forward_proxy } = route as Record<string, unknown>;
    if (pool === undefined && forward_proxy === undefined) problems.push(place(['routes', i], 'a route needs a pool (or forward_proxy for a /forward?url= route)'));
    else if (pool !== undefined && forward_proxy !== undefined) problems.push(place(['routes', i, 'forward_proxy'], 'a route either goes to a pool or is a forward proxy: remove one of pool and forward_proxy'));
    checkPoolRef(['routes', i, 'pool'], pool, false);
  });
  for (const name of pools) {
    const pool = (config.pools as Record<string, unknown>)[name];
    const backup = pool && typeof pool === 'object' ? (pool as Record<string, unknown>).backup : undefined;
    if (typeof backup !== 'string') continue;
    if (backup === name) problems.push(place(['pools', name, 'backup'], 'a pool cannot be its own backup'));
    else if (!pools.includes(backup)) {
      const guess = closest(backup, pools);
      problems.push(place(['pools', name, 'backup'], `no pool named "${backup}"${guess ? ` (did you mean "${guess}"?)` : ''}; pools: ${pools.join(', ')}`));
    } else if ((protocolOf(name) === 'tcp') !== (protocolOf(backup) === 'tcp')) {
      // A backup takes over the pool's traffic as it is: bytes of TCP connections, or HTTP requests.
      problems.push(place(['pools', name, 'backup'], protocolOf(name) === 'tcp' ? `pool ${backup} is an HTTP pool; a tcp pool's backup is a tcp pool (protocol: tcp)` : `pool ${backup} is a tcp pool; an HTTP pool's backup is an HTTP pool`));
    }
  }
  for (const name of pools) {
    const upstreams = ((config.pools as Record<string, unknown>)[name] as { upstreams?: unknown } | null)?.upstreams;
    if (!Array.isArray(upstreams)) continue;
    const seen = new Map<string, number>();
    const { protocol = 'http1', transport, health_check, proxy_protocol } = (config.pools as Record<string, { protocol?: unknown; transport?: unknown; health_check?: { type?: unknown; send?: unknown; expect?: unknown; path?: unknown }; proxy_protocol?: unknown }>)[name];
    const tcp = protocol === 'tcp';
    if (protocol !== 'http1' && transport !== undefined) problems.push(place(['pools', name, 'transport'], tcp ? 'a tcp pool relays bytes; transport chooses an HTTP/1.1 client: remove it' : `transport chooses the HTTP/1.1 client; a pool with protocol ${String(protocol)} uses Fulcrum's HTTP/2 client: remove transport`));
    if (health_check?.type === 'grpc' && (protocol === 'http1' || tcp)) problems.push(place(['pools', name, 'health_check', 'type'], 'gRPC health checks speak HTTP/2: set the pool\'s protocol to h2 (https:// upstreams) or h2c (http://)'));
    if (tcp && health_check?.type === 'http') problems.push(place(['pools', name, 'health_check', 'type'], 'a tcp pool\'s upstreams need not speak HTTP: use type tcp (with send/expect for a protocol exchange)'));
    const checkType = health_check?.type ?? (tcp ? 'tcp' : 'http');
    for (const key of ['send', 'expect'] as const) if (health_check?.[key] !== undefined && checkType !== 'tcp') problems.push(place(['pools', name, 'health_check', key], `${key} is for tcp health checks (type: tcp); this check is type ${String(checkType)}`));
    // YAML reads '\r\n' in single quotes (or plain) as a backslash and a letter, never CR LF: such a probe never gets its answer.
    for (const key of ['send', 'expect'] as const) {
      const text = health_check?.[key];
      if (typeof text === 'string' && /\\[rnt0]/.test(text)) problems.push(place(['pools', name, 'health_check', key], `${JSON.stringify(text)} holds a backslash and a letter, not a control character: for CR LF write the value in double quotes ("PING\\r\\n"), where YAML reads the escapes`));
    }
    if (proxy_protocol !== undefined && (protocol === 'h2' || protocol === 'h2c')) problems.push(place(['pools', name, 'proxy_protocol'], `an HTTP/2 session carries many clients' streams, so it cannot start with one client's PROXY header: use protocol http1 (or tcp) for proxy_protocol`));
    if (proxy_protocol !== undefined && protocol === 'http1' && transport !== undefined && transport !== 'http1') problems.push(place(['pools', name, 'proxy_protocol'], `proxy_protocol needs Fulcrum's own HTTP/1.1 client: remove transport ${String(transport)} (or set it to http1)`));
    upstreams.forEach((u, i) => {
      const url = typeof u === 'string' ? u : u && typeof u === 'object' ? (u as { url?: unknown }).url : undefined;
      if (typeof url !== 'string') return;
      if (tcp && /^https?:\/\//i.test(url)) problems.push(place(['pools', name, 'upstreams', i], `a tcp pool's upstreams are tcp://host:port: write tcp://${url.replace(/^https?:\/\//i, '').replace(/\/$/, '')}`));
      if (!tcp && ['http1', 'h2', 'h2c'].includes(String(protocol)) && /^tcp:\/\//i.test(url)) problems.push(place(['pools', name, 'upstreams', i], `tcp:// upstreams belong to a pool with protocol: tcp (add it, and use the pool from a tcp listener)`));
      if (protocol === 'h2' && url.startsWith('http://')) problems.push(place(['pools', name, 'upstreams', i], `protocol h2 is HTTP/2 over TLS: use https://${url.slice(7)} (or protocol: h2c for cleartext HTTP/2)`));
      if (protocol === 'h2c' && url.startsWith('https://')) problems.push(place(['pools', name, 'upstreams', i], `protocol h2c is cleartext HTTP/2: use http://${url.slice(8)} (or protocol: h2 for HTTP/2 over TLS)`));
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
  const httpPools = pools.filter((n) => protocolOf(n) !== 'tcp');
  const primaries = httpPools.length > 1 ? primaryPools(config.pools as Record<string, unknown>).filter((n) => protocolOf(n) !== 'tcp') : httpPools;
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
  let acmeHttp01 = -1;
  let plainListeners = 0;
  listeners.forEach((l, i) => {
    if (!l || typeof l !== 'object') return;
    const { protocol = 'http', tls, hsts, redirect_https } = l as { protocol?: unknown; tls?: { certificates?: unknown[]; acme?: { challenge?: unknown } }; hsts?: unknown; redirect_https?: unknown };
    if (protocol === 'https') {
      const certificates = Array.isArray(tls?.certificates) ? tls.certificates.length : 0;
      if (tls === undefined) problems.push(place(['listeners', i, 'protocol'], 'an https listener needs `tls` with certificates (tls.certificates: [{cert, key}]) or ACME (tls.acme: {domains: [...]})'));
      else if (certificates === 0 && tls.acme === undefined) problems.push(place(['listeners', i, 'tls'], 'no certificate: give tls.certificates ([{cert: fullchain.pem, key: key.pem}]) or tls.acme ({domains: [...]})'));
      if (tls?.acme !== undefined && config.acme === undefined) problems.push(place(['listeners', i, 'tls', 'acme'], 'tls.acme needs the top-level `acme` section (directory, email, terms_of_service_agreed)'));
      if (tls?.acme !== undefined && (tls.acme.challenge ?? 'http-01') === 'http-01') acmeHttp01 = i;
      if (redirect_https !== undefined) problems.push(place(['listeners', i, 'redirect_https'], 'redirect_https belongs on an http listener (it sends requests to this https one)'));
      const defaults = (Array.isArray(tls?.certificates) ? tls.certificates : []).flatMap((c, j) => (c && typeof c === 'object' && (c as { default?: unknown }).default === true ? [j] : []));
      if (defaults.length > 1) problems.push(place(['listeners', i, 'tls', 'certificates', defaults[1], 'default'], `certificates[${defaults[0]}] is already the default: only one certificate can be`));
      const subject = (tls as { client_auth?: { subject_header?: unknown } } | undefined)?.client_auth?.subject_header;
      if (typeof subject === 'string' && /^(host|via|x-request-id|x-forwarded-[a-z]+|forwarded|x-real-ip|connection|te|upgrade|transfer-encoding|content-length)$/i.test(subject.replace(/_/g, '-'))) {
        problems.push(place(['listeners', i, 'tls', 'client_auth', 'subject_header'], `${subject} is a header Fulcrum sets or reads itself; choose another name, such as X-Client-Subject`));
      }
      const preload = hsts as { preload?: unknown; include_subdomains?: unknown; max_age?: unknown } | undefined;
      if (preload?.preload === true && (preload.include_subdomains !== true || (preload.max_age !== undefined && !(typeof preload.max_age === 'string' && parseDuration(preload.max_age) >= 365 * 86_400_000)))) {
        problems.push(place(['listeners', i, 'hsts', 'preload'], 'the browsers\' preload list needs include_subdomains: true and max_age of a year (365d) or more'));
      }
    } else {
      if (protocol !== 'tcp') plainListeners++;
      if (tls !== undefined) problems.push(place(['listeners', i, 'tls'], protocol === 'tcp' ? 'a tcp listener does not terminate TLS: use tls_passthrough to route TLS by SNI, or an https listener' : 'tls is for https listeners: add `protocol: https` (or remove tls)'));
      if (hsts !== undefined) problems.push(place(['listeners', i, 'hsts'], 'browsers ignore Strict-Transport-Security over http: put hsts on the https listener'));
    }
    const ll = l as Record<string, unknown>;
    if (protocol === 'tcp') {
      if (ll.pool === undefined && ll.tls_passthrough === undefined) problems.push(place(['listeners', i], 'a tcp listener needs a pool (listeners[].pool) or tls_passthrough routes'));
      for (const key of ['http2', 'redirect_https', 'metrics_path', 'forward_proxy', 'engine', 'headers_with_underscores', 'trusted_proxies']) {
        if (ll[key] !== undefined) problems.push(place(['listeners', i, key], `${key} is for HTTP listeners; a tcp listener relays bytes`));
      }
      checkPoolRef(['listeners', i, 'pool'], ll.pool, true);
      const sniRoutes = (ll.tls_passthrough as { routes?: unknown } | undefined)?.routes;
      if (Array.isArray(sniRoutes)) sniRoutes.forEach((r, j) => checkPoolRef(['listeners', i, 'tls_passthrough', 'routes', j, 'pool'], (r as { pool?: unknown } | null)?.pool, true));
    } else if (protocol === 'http' || protocol === 'https') {
      // (A protocol the schema refused says so itself; what follows from it would only repeat it.)
      if (ll.pool !== undefined) problems.push(place(['listeners', i, 'pool'], 'pool is for tcp listeners (protocol: tcp); HTTP listeners reach pools through routes'));
      if (ll.tls_passthrough !== undefined) problems.push(place(['listeners', i, 'tls_passthrough'], 'tls_passthrough is for tcp listeners (protocol: tcp): it routes TLS without terminating it'));
    }
    const h2c = (l as { http2?: { h2c?: unknown } }).http2?.h2c;
    if (protocol === 'https' && h2c === true) problems.push(place(['listeners', i, 'http2', 'h2c'], 'h2c is cleartext HTTP/2 for http listeners; an https listener offers h2 by ALPN (tls.alpn)'));
    const { host = '0.0.0.0', port = 8080 } = l as { host?: unknown; port?: unknown };
    const key = `${String(host)}:${String(port)}`;
    if (port !== 0 && seen.has(key)) problems.push(place(['listeners', i, 'port'], `${key} is already bound by another listener`));
    seen.add(key);
  });
  if (acmeHttp01 >= 0 && plainListeners === 0) {
    problems.push(place(['listeners', acmeHttp01, 'tls', 'acme', 'challenge'], 'HTTP-01 is answered on an http listener (port 80 for a public CA), and there is none: add one (redirect_https: true keeps it to redirects), or use challenge: tls-alpn-01'));
  }
  if (config.acme !== undefined && config.acme !== null && typeof config.acme === 'object' && (config.acme as { terms_of_service_agreed?: unknown }).terms_of_service_agreed !== true) {
    problems.push(place(['acme', 'terms_of_service_agreed'], "an ACME account needs your agreement to the CA's terms of service: read them (Let's Encrypt: https://letsencrypt.org/repository/) and set terms_of_service_agreed: true"));
  }
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
    if (expected === 'number' && typeof received === 'string') {
      const last = String(issue.path[issue.path.length - 1] ?? '');
      const size = sizeInBytes(received);
      if (last.endsWith('_bytes') && size !== undefined) return `${last} is a number of bytes: write ${size} for ${received.trim()}`;
      if (/^\s*\d+(\.\d+)?\s*$/.test(received)) return `expected a number, got the string ${JSON.stringify(received)}: write ${received.trim()} without quotes`;
    }
    // routes[].path is how the path is forwarded; `path: /admin` almost always meant the prefix.
    if (expected === 'object' && typeof received === 'string' && issue.path.length === 3 && issue.path[0] === 'routes' && issue.path[2] === 'path') {
      return `path is how the path is forwarded ({forward, encoded_slashes}); to match requests by path, write path_prefix: ${received}`;
    }
    // Accepting the PROXY protocol (a listener's) and sending it (a pool's) are told apart by their shapes.
    if (expected === 'object' && issue.path.length === 3 && issue.path[0] === 'listeners' && issue.path[2] === 'proxy_protocol') {
      return `a listener accepts the PROXY protocol from the balancers in front: write proxy_protocol: {trusted: [10.0.0.10]} (their addresses); sending it to upstreams (v1, v2) is a pool's proxy_protocol`;
    }
    return `expected ${expected}, got ${received === null ? 'null' : Array.isArray(received) ? 'array' : typeof received} ${JSON.stringify(received)?.slice(0, 40) ?? ''}`.trim();
  }
  if (issue.code === 'invalid_value') {
    const input = (issue as { input?: unknown }).input;
    const path = issue.path;
    if (path.length === 3 && path[0] === 'pools' && path[2] === 'proxy_protocol' && input !== null && typeof input === 'object') {
      return 'a pool sends the PROXY protocol to its upstreams: write proxy_protocol: v1 or v2; accepting it from balancers in front ({trusted: [...]}) is a listener\'s proxy_protocol';
    }
    const values = issue.values.map((v) => JSON.stringify(v)).join(', ');
    // `protocol: TCP`, `policy: Round-Robin`: the value is right but for its case.
    const sameButCase = typeof input === 'string' ? issue.values.find((v) => typeof v === 'string' && v.toLowerCase() === input.toLowerCase()) : undefined;
    if (sameButCase !== undefined) return `write ${JSON.stringify(sameButCase)} (lower case); expected one of: ${values}`;
    return `expected one of: ${values}`;
  }
  // zod's own words for a bound ("Too small: expected number to be >0") in ours.
  if (issue.code === 'too_small' && (issue as { origin?: string }).origin === 'number') {
    const { minimum, inclusive } = issue as { minimum: number | bigint; inclusive?: boolean };
    return `must be ${inclusive ? 'at least' : 'more than'} ${minimum}, got ${JSON.stringify((issue as { input?: unknown }).input)}`;
  }
  if (issue.code === 'too_big' && (issue as { origin?: string }).origin === 'number') {
    const { maximum, inclusive } = issue as { maximum: number | bigint; inclusive?: boolean };
    return `must be ${inclusive ? 'at most' : 'less than'} ${maximum}, got ${JSON.stringify((issue as { input?: unknown }).input)}`;
  }
  return issue.message;
}

/**
 * Bytes in a size written with a unit (`10MB`, `64 KiB`, `1g`), or undefined. Sizes are keys
 * named `*_bytes` that take a plain number; this only turns a unit into the hint's number.
 * K, M and G are powers of 1024 with or without the "i" (as nginx reads `10m`).
 */
export function sizeInBytes(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$/i.exec(text);
  if (!m) return undefined;
  const power = { b: 0, k: 1, m: 2, g: 3 }[m[2][0].toLowerCase() as 'b' | 'k' | 'm' | 'g'];
  return Math.round(Number(m[1]) * 1024 ** power);
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

/** Whether `path` is written in `value` (a key the file sets, not a default). */
function hasPath(value: unknown, path: Path): boolean {
  let node = value;
  for (const key of path) {
    if (node === null || typeof node !== 'object' || !Object.hasOwn(node, key)) return false;
    node = (node as Record<string | number, unknown>)[key];
  }
  return true;
}

// ---- durations written without a unit ----

const durationInput: unknown = (Duration as any)._zod.def.in;

/**
 * Every place in `value` where the schema wants a duration and the text gave a number other
 * than 0 (`interval: 5`): 5 what? Code may pass milliseconds; a file must say. Walks the schema,
 * so a duration key added anywhere is covered without being listed here.
 */
export function unitlessDurations(value: unknown, schema: z.ZodType): [Path, number][] {
  const found: [Path, number][] = [];
  const seen = new Set<string>();
  const walk = (v: unknown, node: any, path: Path): void => {
    node = unwrap(node);
    if (!node) return;
    if (node === durationInput) {
      if (typeof v === 'number' && v > 0 && !seen.has(formatPath(path))) {
        seen.add(formatPath(path));
        found.push([path, v]);
      }
      return;
    }
    const def = node._zod.def;
    if (def.type === 'object' && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      for (const [key, child] of Object.entries(v)) if (Object.hasOwn(def.shape, key)) walk(child, def.shape[key], [...path, key]);
    } else if (def.type === 'array' && Array.isArray(v)) {
      v.forEach((child, i) => walk(child, def.element, [...path, i]));
    } else if (def.type === 'record' && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      for (const [key, child] of Object.entries(v)) walk(child, def.valueType, [...path, key]);
    } else if (def.type === 'union') {
      for (const option of def.options) walk(v, option, path);
    }
  };
  walk(value, schema, []);
  return found;
}

// ---- YAML syntax errors and duplicate keys ----

/**
 * The parser's errors as the user needs them: every duplicate key by its key path and both
 * lines; otherwise one problem for the first syntax error (the rest follow from it), placed at
 * its cause (the unclosed "[" or quote, not the end of the file), with its key path and a hint.
 */
function yamlProblems(doc: Document, text: string, lineCounter: LineCounter, file: string): ConfigProblem[] {
  const at = (offset: number, path: Path, message: string): ConfigProblem => {
    const pos = lineCounter.linePos(offset);
    return { file, line: pos.line, column: pos.col, path: formatPath(path), message };
  };
  const syntax = doc.errors.filter((e) => e.code !== 'DUPLICATE_KEY');
  const duplicates = syntax.length === 0 ? duplicateKeys(doc) : [];
  if (duplicates.length > 0) {
    return duplicates.map(({ path, offset, first }) =>
      at(offset, path, `duplicate key "${path[path.length - 1]}" (first on line ${lineCounter.linePos(first).line}): only one of the two would count; keep one`),
    );
  }
  if (syntax.length === 0) syntax.push(...doc.errors);
  const lines = text.split('\n');
  const error = syntax[0];
  const open = unclosedAt(doc, text, error.pos[0]);
  if (open) {
    const { line } = lineCounter.linePos(open.offset);
    return [at(open.offset, keyPathAtLine(lines, line - 1), `invalid YAML: ${open.what} opened here is not closed: ${open.fix}`)];
  }
  const { line } = lineCounter.linePos(error.pos[0]);
  const index = line - 1;
  const hint = syntaxHint(error, lines, index);
  return [at(hint.offset ?? error.pos[0], hint.path ?? keyPathAtLine(lines, index), `invalid YAML: ${hint.message}`)];
}

/** Keys written twice in one mapping: the second one's key path and offset, and the first one's offset. */
function duplicateKeys(doc: Document): { path: Path; offset: number; first: number }[] {
  const found: { path: Path; offset: number; first: number }[] = [];
  const walk = (node: unknown, path: Path): void => {
    if (isMap(node)) {
      const firsts = new Map<unknown, number>();
      for (const pair of node.items) {
        const key = isScalar(pair.key) ? pair.key.value : pair.key;
        const offset = (pair.key as YamlNode | null)?.range?.[0] ?? 0;
        const first = firsts.get(key);
        if (first !== undefined) found.push({ path: [...path, String(key)], offset, first });
        else firsts.set(key, offset);
        walk(pair.value, [...path, String(key)]);
      }
    } else if (isSeq(node)) node.items.forEach((item, i) => walk(item, [...path, i]));
  };
  walk(doc.contents, []);
  return found;
}

/** The flow list, flow mapping or quoted string around `offset` that its text never closes. */
function unclosedAt(doc: Document, text: string, offset: number): { offset: number; what: string; fix: string } | undefined {
  let found: { offset: number; what: string; fix: string } | undefined;
  const visit = (node: unknown): void => {
    const range = (node as YamlNode | null)?.range;
    if (isPair(node)) {
      visit(node.key);
      visit(node.value);
      return;
    }
    if (!range) return;
    const [start, end] = range;
    const around = start < offset && end >= offset;
    if (isCollection(node)) {
      const flow = (node as { flow?: boolean }).flow === true;
      const close = isSeq(node) ? ']' : '}';
      if (around && flow && !balanced(text.slice(start, end), isSeq(node) ? '[' : '{', close)) {
        found = isSeq(node)
          ? { offset: start, what: 'the list "["', fix: 'end it with "]" (or write one "- item" per line)' }
          : { offset: start, what: 'the mapping "{"', fix: 'end it with "}"' };
      }
      for (const item of (node as { items: unknown[] }).items) visit(item);
    } else if (isScalar(node) && around && (node.type === 'QUOTE_DOUBLE' || node.type === 'QUOTE_SINGLE')) {
      const quote = node.type === 'QUOTE_DOUBLE' ? '"' : "'";
      const body = text.slice(start, end).trimEnd();
      if (body.length < 2 || body.at(-1) !== quote) found = { offset: start, what: `the string ${quote}`, fix: `end it with ${quote} on the same line` };
    }
  };
  visit(doc.contents);
  return found;
}

/** The offset of the first character of line `index` (0-based). */
function lineStart(lines: string[], index: number): number {
  let offset = 0;
  for (let i = 0; i < index; i++) offset += lines[i].length + 1;
  return offset;
}

/** Whether every `open` in the text of a flow collection is closed (quoted strings and comments skipped). */
function balanced(text: string, open: string, close: string): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"' || c === "'") {
      const end = text.indexOf(c, i + 1);
      if (end === -1) return false;
      i = end;
    } else if (c === '#' && (i === 0 || /\s/.test(text[i - 1]))) {
      const end = text.indexOf('\n', i);
      if (end === -1) break;
      i = end;
    } else if (c === open) depth++;
    else if (c === close) depth--;
  }
  return depth <= 0;
}

/** What a parser error means, in the words of its fix; `path`/`offset` when the error's own are misleading. */
function syntaxHint(error: YAMLError, lines: string[], index: number): { message: string; path?: Path; offset?: number } {
  const text = lines[index] ?? '';
  const first = error.message.split('\n')[0];
  const keyOnLine = /^\s*(?:-\s+)?([^\s#:"'{}\[\]-][^:#]*?):(?:\s|$)/.exec(text)?.[1];
  if (error.code === 'TAB_AS_INDENT') return { message: 'a tab indents this line; YAML indents with spaces only' };
  if (/multiple documents/.test(first)) return { message: 'a configuration is one YAML document: remove this "---" and merge what follows into the part above', path: [] };
  const dash = /^(\s*)-(\s|$)/.exec(text);
  if (dash) {
    // A list item out of line with the one above it.
    const above = lines.slice(0, index).findLastIndex((l) => !/^\s*(#|$)/.test(l));
    const aboveDash = /^(\s*)-(\s|$)/.exec(lines[above] ?? '');
    if (aboveDash && aboveDash[1].length !== dash[1].length) {
      return {
        message: `this item is indented ${dash[1].length} spaces and the one above it (line ${above + 1}) ${aboveDash[1].length}: items of one list line up`,
        path: keyPathAtLine(lines, above).filter((_, i, all) => i < all.length - 1 || typeof all[i] !== 'number'),
        offset: lineStart(lines, index) + dash[1].length,
      };
    }
  }
  if (/same column/.test(first) && keyOnLine !== undefined) {
    const indent = text.length - text.trimStart().length;
    const sibling = nearestKeyColumn(lines, index, indent);
    if (sibling) {
      return {
        message: `"${keyOnLine}" is indented ${indent} space${indent === 1 ? '' : 's'} and "${sibling.key}" (line ${sibling.index + 1}) ${sibling.indent}: keys of one mapping line up`,
        path: [...keyPathAtLine(lines, sibling.index).slice(0, -1), keyOnLine],
        offset: lineStart(lines, index) + indent,
      };
    }
  }
  if (/Implicit map keys need to be followed by map values/.test(first)) {
    const glued = /^(\s*(?:-\s+)?)([A-Za-z_][\w.-]*):(\S.*)$/.exec(text);
    if (glued && !/^\/\//.test(glued[3])) {
      const fixed = `${glued[2]}: ${glued[3].trim()}`;
      return { message: `a space is needed after the colon: write "${fixed}"`, path: keyPathAtLine(lines.with(index, glued[1] + fixed), index), offset: lineStart(lines, index) + glued[1].length };
    }
    return { message: 'this line is neither "key: value" nor "- item": a colon or a "- " is missing' };
  }
  if (error.code === 'BLOCK_AS_IMPLICIT_KEY' || /Nested mappings are not allowed/.test(first)) {
    const value = /^\s*(?:-\s+)?[^:]+:\s+(.*)$/.exec(text)?.[1]?.trim();
    const after = lines.slice(index + 1).findIndex((l) => !/^\s*(#|$)/.test(l));
    const next = after === -1 ? -1 : index + 1 + after;
    const nextKey = next === -1 ? null : /^(\s*)([^\s#:"'{}\[\]-][^:#]*?):(?:\s|$)/.exec(lines[next]);
    if (value !== undefined && !/:\s/.test(value) && nextKey && keyOnLine !== undefined) {
      // `key: value` then a deeper `other: ...`: the second key was indented too far.
      const indent = text.indexOf(keyOnLine);
      return {
        message: `"${nextKey[2]}" is indented ${nextKey[1].length} spaces, deeper than "${keyOnLine}" above it (${indent}), whose value is not a mapping: line the two keys up`,
        path: [...keyPathAtLine(lines, index).slice(0, -1), nextKey[2]],
        offset: lineStart(lines, next) + nextKey[1].length,
      };
    }
    return { message: `a value with ": " in it needs quotes${keyOnLine && value ? `: write ${keyOnLine}: "${value.replace(/"/g, '\\"')}"` : ''}` };
  }
  if (error.code === 'UNEXPECTED_TOKEN' && /"[\]}]"/.test(first)) {
    const bracket = /"([\]}])"/.exec(first)![1];
    return { message: `a "${bracket}" that closes nothing: remove it, or add the "${bracket === ']' ? '[' : '{'}" it belongs to` };
  }
  return { message: `${first} (look at the indentation, colons, brackets and quotes of this line and the one above)` };
}

/** The closest indentation of a key above line `index` in the keys still open there (ties: the deeper). */
function nearestKeyColumn(lines: string[], index: number, indent: number): { key: string; indent: number; index: number } | undefined {
  let best: { key: string; indent: number; index: number } | undefined;
  let ceiling = Infinity;
  for (let i = index - 1; i >= 0 && ceiling > 0; i--) {
    const m = /^(\s*)([^\s#:"'{}\[\]-][^:#]*?):(?:\s|$)/.exec(lines[i]);
    if (!m || m[1].length >= ceiling) continue;
    // Keys deeper than one already seen belong to a closed mapping.
    ceiling = m[1].length;
    const candidate = { key: m[2], indent: m[1].length, index: i };
    const d = Math.abs(candidate.indent - indent);
    if (!best || d < Math.abs(best.indent - indent)) best = candidate;
  }
  return best;
}

/**
 * The key path of line `index` read from indentation alone (for text the parser could not
 * build): `pools.web.upstreams` for the line `    upstreams: [...`. Lists count their items.
 */
export function keyPathAtLine(lines: string[], index: number): Path {
  const stack: { indent: number; key: string | number }[] = [];
  for (let i = 0; i <= index && i < lines.length; i++) {
    const line = lines[i].replace(/\t/g, '        ');
    if (/^\s*(#|$)/.test(line) || /^(---|\.\.\.)(\s|$)/.test(line)) continue;
    let indent = line.length - line.trimStart().length;
    let rest = line.slice(indent);
    // "- " opens a list item, or the next one of a list at this column ("- key: value" too).
    while (/^-(\s|$)/.test(rest)) {
      while (stack.length > 0 && stack[stack.length - 1].indent > indent) stack.pop();
      const top = stack[stack.length - 1];
      if (top !== undefined && top.indent === indent && typeof top.key === 'number') top.key += 1;
      else stack.push({ indent, key: 0 });
      const after = rest.slice(1);
      indent += 1 + after.length - after.trimStart().length;
      rest = after.trimStart();
    }
    const key = /^(?:"([^"]*)"|'([^']*)'|([^\s#:"'{}\[\]][^:#]*?))\s*:(?:\s|$)/.exec(rest);
    if (!key) continue;
    while (stack.length > 0 && stack[stack.length - 1].indent >= indent) stack.pop();
    stack.push({ indent, key: key[1] ?? key[2] ?? key[3] });
  }
  return stack.map((s) => s.key);
}
