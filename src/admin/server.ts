/**
 * The admin listener: status, backends, configuration, reload, metrics, live events and the
 * dashboard, on its own socket (127.0.0.1:9901 by default). Every write goes through the
 * balancer's methods, which use the same validate-then-swap path as a reload.
 *
 * Who may do what: a bearer token is needed for every write, and for everything when the admin
 * listener or the caller is not on loopback. `/health` and `/ready` answer anyone (probes rarely
 * carry tokens and say nothing secret); the dashboard's static files too (the data they fetch is
 * protected like the rest).
 */
import type * as http from 'node:http';
import { http as nodeHttp } from '../node-builtins.ts';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { isLoopbackHost, type AdminSettings, type FulcrumConfig } from '../config/schema.ts';
import { loadConfigText } from '../config/load.ts';
import { diffConfigs, formatChanges } from '../config/diff.ts';
import { ConfigError, type ConfigProblem } from '../errors.ts';
import type { ListenerAddress } from '../listeners/http-listener.ts';
import type { LiveStats } from '../observe/live-stats.ts';
import type { Logger } from '../observe/logger.ts';
import type { AdminApi } from './commands.ts';
import { AdminRequestError } from './errors.ts';
import { openApiDocument } from './openapi.ts';

/** Largest request body the admin API reads (a configuration file fits easily). */
const maxBody = 1024 * 1024;
/** Dashboards connected at once; each holds one event stream. */
const maxEventStreams = 64;
/** Bytes an event stream may have waiting for a slow reader before it is closed. */
const maxStreamBuffer = 1024 * 1024;

/** The host part of a Host header (`[::1]:9901` -> `::1`). */
function hostOnly(host: string): string {
  const m = /^\[([^\]]*)\](?::\d*)?$/.exec(host);
  if (m) return m[1];
  const i = host.lastIndexOf(':');
  return i >= 0 && host.indexOf(':') === i ? host.slice(0, i) : host;
}

interface Deps {
  balancer: AdminApi;
  live: LiveStats;
  logger: Logger;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => Promise<unknown> | unknown;
interface Route {
  method: string;
  path: string;
  /** A write: always needs the token. */
  write: boolean;
  /** Answers without a token even off loopback. */
  open?: boolean;
  handle: Handler;
}

/** The dashboard's files, read once: the page, its script and style, and uPlot from node_modules. */
const staticFiles = (() => {
  const here = path.dirname(new URL(import.meta.url).pathname);
  const uplot = path.join(path.dirname(createRequire(import.meta.url).resolve('uplot/package.json')), 'dist');
  const files: Record<string, [string, string]> = {
    '/dashboard/': [path.join(here, 'dashboard', 'index.html'), 'text/html; charset=utf-8'],
    '/dashboard/dashboard.js': [path.join(here, 'dashboard', 'dashboard.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/dashboard.css': [path.join(here, 'dashboard', 'dashboard.css'), 'text/css; charset=utf-8'],
    '/dashboard/uPlot.iife.min.js': [path.join(uplot, 'uPlot.iife.min.js'), 'text/javascript; charset=utf-8'],
    '/dashboard/uPlot.min.css': [path.join(uplot, 'uPlot.min.css'), 'text/css; charset=utf-8'],
  };
  const cache = new Map<string, { body: Buffer; type: string }>();
  return (urlPath: string): { body: Buffer; type: string } | null => {
    if (!(urlPath in files)) return null;
    let hit = cache.get(urlPath);
    if (hit === undefined) {
      const [file, type] = files[urlPath];
      try {
        hit = { body: readFileSync(file), type };
      } catch {
        return null; // not cached: a file that appears later is served then
      }
      cache.set(urlPath, hit);
    }
    return hit;
  };
})();

const sha = (text: string): Buffer => createHash('sha256').update(text).digest();

/** Secrets out of a configuration before it is shown. */
export function redactConfig(config: FulcrumConfig): unknown {
  const copy = structuredClone(config) as FulcrumConfig & { admin?: { token?: string } };
  if (copy.admin?.token !== undefined) copy.admin.token = '(hidden)';
  const redis = copy.rate_limit.redis;
  if (redis) redis.url = redis.url.replace(/\/\/([^@/]*)@/, '//(hidden)@');
  return copy;
}

/** The admin HTTP server. */
export class AdminServer {
  private settings: AdminSettings;
  private readonly deps: Deps;
  private readonly server: http.Server;
  private readonly routes: Route[];
  private tokenDigest: Buffer;
  private readonly generated: string | null;
  private readonly streams = new Set<http.ServerResponse>();

  constructor(settings: AdminSettings, deps: Deps) {
    this.settings = settings;
    this.deps = deps;
    const token = AdminServer.tokenFrom(settings);
    this.generated = token === null ? randomBytes(24).toString('base64url') : null;
    this.tokenDigest = sha(token ?? this.generated!);
    this.routes = this.buildRoutes();
    this.server = nodeHttp.createServer({ headersTimeout: 10_000, requestTimeout: 30_000, keepAliveTimeout: 5000 }, (req, res) => void this.handle(req, res));
    this.server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      socket.destroy();
    });
  }

  /** The configured token (admin.token or the contents of admin.token_file), or null. */
  private static tokenFrom(settings: AdminSettings): string | null {
    if (settings.token !== undefined) return settings.token;
    if (settings.token_file === undefined) return null;
    let text: string;
    try {
      text = readFileSync(settings.token_file, 'utf8').trim();
    } catch (err) {
      throw new Error(`admin.token_file: cannot read ${settings.token_file}: ${(err as Error).message}`);
    }
    if (text.length < 16) throw new Error(`admin.token_file: the token in ${settings.token_file} is shorter than 16 characters`);
    if (!/^[\x21-\x7e]+$/.test(text)) throw new Error(`admin.token_file: the token in ${settings.token_file} must be printable ASCII without spaces (a bearer token cannot carry them)`);
    return text;
  }

  listen(): Promise<ListenerAddress> {
    const { host, port } = this.settings;
    if (!isLoopbackHost(host) && this.generated !== null) {
      return Promise.reject(new Error(`refusing to serve the admin API on ${host} (not loopback) without a token: set admin.token, admin.token_file or FULCRUM_ADMIN_TOKEN`));
    }
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.address()!;
        const { logger } = this.deps;
        logger.info({ admin: a.url }, `admin API on ${a.url}${this.settings.dashboard ? ` (dashboard: ${a.url}/dashboard/)` : ''}`);
        if (this.generated !== null) {
          logger.warn(`admin.token is not set: writes need this run's generated token: ${this.generated} (set admin.token or FULCRUM_ADMIN_TOKEN to choose one)`);
        }
        resolve(a);
      });
    });
  }

  address(): ListenerAddress | null {
    const a = this.server.address() as AddressInfo | null;
    if (!a) return null;
    const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return { name: 'admin', host: a.address, port: a.port, url: `http://${shown}:${a.port}` };
  }

  /** A reload's new admin settings: the token changes now; address changes take a restart. */
  update(settings: AdminSettings): void {
    try {
      const token = AdminServer.tokenFrom(settings);
      if (token !== null) this.tokenDigest = sha(token);
      else if (this.generated === null) this.deps.logger.warn('admin.token was removed from the configuration: the old token stays valid until restart');
    } catch (err) {
      this.deps.logger.error({ err: (err as Error).message }, 'admin token not changed');
    }
    this.settings = { ...settings, host: this.settings.host, port: this.settings.port };
  }

  async close(): Promise<void> {
    for (const res of this.streams) res.end();
    this.streams.clear();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
      setTimeout(() => this.server.closeAllConnections(), 1000).unref();
    });
  }

  private buildRoutes(): Route[] {
    const b = this.deps.balancer;
    const json = this.json.bind(this);
    const body = (req: http.IncomingMessage, fields: readonly string[] = ['url', 'pool']) => this.readJson(req, fields);
    const target = (v: Record<string, unknown>) => ({ url: v.url as string, pool: v.pool as string | undefined });
    return [
      { method: 'GET', path: '/health', write: false, open: true, handle: (_q, res) => json(res, 200, { status: 'ok', uptime_seconds: b.status().uptime_seconds }) },
      {
        method: 'GET', path: '/ready', write: false, open: true,
        handle: (_q, res) => {
          const status = b.status();
          const ready = status.active_backends > 0;
          // Ready while any upstream can serve; pools with none are named, so a probe's log says which part is down.
          const unavailable = status.pools.filter((p) => p.available === 0).map((p) => p.name);
          json(
            res,
            ready ? 200 : 503,
            ready
              ? { ready: true, active_backends: status.active_backends, unavailable_pools: unavailable }
              : { ready: false, active_backends: 0, unavailable_pools: unavailable, reason: 'no upstream is available in any pool' },
          );
        },
      },
      { method: 'GET', path: '/status', write: false, handle: (_q, res) => json(res, 200, b.status()) },
      { method: 'GET', path: '/backends', write: false, handle: (_q, res) => json(res, 200, b.status().backends) },
      {
        method: 'POST', path: '/backends', write: true,
        handle: async (req, res) => {
          const v = await body(req, ['url', 'pool', 'weight', 'max_connections']);
          const r = await b.addBackend({ ...target(v), weight: v.weight as number | undefined, max_connections: v.max_connections as number | undefined });
          json(res, 201, { ok: true, ...r });
        },
      },
      {
        method: 'DELETE', path: '/backends', write: true,
        handle: async (req, res, url) => {
          // The seeds send a JSON body; ?url= works for clients that cannot send a body with DELETE.
          const v = url.search !== '' ? queryTarget(url) : await body(req, ['url', 'pool']);
          const r = await b.removeBackend(target(v));
          json(res, 200, { ok: true, ...r });
        },
      },
      {
        method: 'PATCH', path: '/backends', write: true,
        handle: async (req, res) => {
          const v = await body(req, ['url', 'pool', 'weight', 'enabled', 'draining']);
          const r = await b.updateBackend({ ...target(v), weight: v.weight as number | undefined, enabled: v.enabled as boolean | undefined, draining: v.draining as boolean | undefined });
          json(res, 200, { ok: true, ...r });
        },
      },
      ...(
        [
          ['/backends/drain', { draining: true }],
          ['/backends/undrain', { draining: false }],
          ['/backends/enable', { enabled: true, draining: false }],
          ['/backends/disable', { enabled: false }],
        ] as const
      ).map(([p, change]): Route => ({
        method: 'POST', path: p, write: true,
        handle: async (req, res) => {
          const r = await b.updateBackend({ ...target(await body(req)), ...change });
          json(res, 200, { ok: true, ...r });
        },
      })),
      { method: 'GET', path: '/config', write: false, handle: (_q, res) => json(res, 200, { file: b.configFile, config: redactConfig(b.config()) }) },
      {
        method: 'POST', path: '/config/validate', write: false,
        handle: async (req, res, url) => {
          const text = (await this.readBody(req)).toString('utf8');
          if (text.trim() === '') throw new AdminRequestError(400, 'empty body: send the configuration (YAML or JSON) as the request body');
          const name = url.searchParams.get('name') ?? '<request body>';
          try {
            const loaded = loadConfigText(text, name);
            // Compared with what a reload of this text would run: the runtime changes go on top of it too.
            const next = b.withRuntimeChanges(loaded.config);
            json(res, 200, { ok: true, valid: true, warnings: [...loaded.warnings, ...b.restartNotesFor(next).map((n) => `restart needed: ${n}`)], changes: formatChanges(diffConfigs(b.config(), next)) });
          } catch (err) {
            if (!(err instanceof ConfigError)) throw err;
            json(res, 422, { error: `the configuration has ${err.problems.length} problem(s)`, valid: false, problems: err.problems.map(problemJson) });
          }
        },
      },
      { method: 'GET', path: '/certificates', write: false, handle: (_q, res) => json(res, 200, b.status().certificates) },
      {
        method: 'POST', path: '/certificates/reload', write: true,
        handle: (_q, res) => {
          const listeners = b.reloadCertificates();
          const failed = listeners.reduce((n, l) => n + l.failed.length, 0);
          if (failed === 0) return json(res, 200, { ok: true, listeners });
          json(res, 422, { ok: false, error: `${failed} certificate file(s) could not be used; the certificates loaded before stay`, listeners });
        },
      },
      {
        method: 'POST', path: '/certificates/renew', write: true,
        handle: async (req, res) => {
          const v = await body(req, ['domain']);
          if (typeof v.domain !== 'string' || v.domain === '') throw new AdminRequestError(400, 'expected {"domain": "example.com"}: a domain of a listener\'s tls.acme.domains');
          const domain = v.domain.toLowerCase();
          await b.renewCertificate(domain);
          json(res, 200, { ok: true, domain, certificates: b.status().certificates.filter((c) => c.names.includes(domain)) });
        },
      },
      {
        method: 'POST', path: '/reload', write: true,
        handle: async (_q, res) => {
          const r = await b.reloadFile('admin');
          json(res, 200, { ok: true, ...r });
        },
      },
      {
        method: 'GET', path: '/metrics', write: false,
        handle: async (_q, res) => {
          const { contentType, body: text } = await b.metrics.scrape();
          res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
          res.end(text);
        },
      },
      { method: 'GET', path: '/events', write: false, handle: (req, res) => this.events(req, res) },
      { method: 'GET', path: '/live', write: false, handle: (_q, res) => json(res, 200, this.deps.live.history()) },
      { method: 'GET', path: '/openapi.json', write: false, open: true, handle: (_q, res) => json(res, 200, openApiDocument()) },
    ];
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      return this.json(res, 400, { error: 'malformed request target' });
    }
    const p = url.pathname.length > 1 ? url.pathname.replace(/\/+$/, '') : url.pathname;
    try {
      if ((req.method === 'GET' || req.method === 'HEAD') && (url.pathname === '/' || url.pathname === '/dashboard')) {
        // One address for the page, so its relative links resolve the same way from anywhere.
        res.writeHead(302, { location: '/dashboard/', 'content-length': 0 });
        return void res.end();
      }
      if ((req.method === 'GET' || req.method === 'HEAD') && url.pathname.startsWith('/dashboard/')) return this.dashboard(res, url.pathname);
      const matching = this.routes.filter((r) => r.path === p);
      if (matching.length === 0) return this.json(res, 404, { error: `no admin route ${p}; the routes are in /openapi.json` });
      const method = req.method === 'HEAD' ? 'GET' : req.method;
      const route = matching.find((r) => r.method === method);
      if (route === undefined) {
        res.setHeader('allow', matching.map((r) => r.method).join(', '));
        return this.json(res, 405, { error: `${req.method} is not allowed on ${p}; use ${matching.map((r) => r.method).join(' or ')}` });
      }
      if (route.write) res.once('finish', () => this.audit(req, p, res.statusCode));
      if (!route.open && !this.authorized(req, res, route.write)) return;
      await route.handle(req, res, url);
    } catch (err) {
      if (res.headersSent) return void res.destroy();
      if (err instanceof AdminRequestError) {
        if (err.status === 413) res.setHeader('connection', 'close');
        return this.json(res, err.status, { error: err.message });
      }
      if (err instanceof ConfigError) {
        return this.json(res, 422, { error: 'the configuration file is invalid; the running configuration stays', problems: err.problems.map(problemJson) });
      }
      this.deps.logger.error({ err: (err as Error).message, path: p }, 'admin request failed');
      this.json(res, 500, { error: `internal error: ${(err as Error).message}` });
    }
  }

  /** One log line per write, with who asked and how it ended (refused tokens are warnings). */
  private audit(req: http.IncomingMessage, path: string, status: number): void {
    const line = { admin: true, method: req.method, path, client: req.socket.remoteAddress, status };
    if (status === 401) this.deps.logger.warn(line, `admin API: ${req.method} ${path} from ${req.socket.remoteAddress} refused (401: missing or wrong token)`);
    else this.deps.logger.info(line, `admin API: ${req.method} ${path} from ${req.socket.remoteAddress}: ${status}`);
  }

  /** Checks the bearer token where one is needed; answers 401 itself when it fails. */
  private authorized(req: http.IncomingMessage, res: http.ServerResponse, write: boolean): boolean {
    // A Host that is not a loopback name means the caller reached us under another name (DNS
    // rebinding from a web page, a port forward): such reads need the token too.
    const needed = write || !isLoopbackHost(this.settings.host) || !isLoopbackHost(req.socket.remoteAddress ?? '') || !isLoopbackHost(hostOnly(req.headers.host ?? ''));
    if (!needed) return true;
    const header = req.headers.authorization;
    const match = header === undefined ? null : /^Bearer[ ]+(\S+)\s*$/i.exec(header);
    if (match === null) {
      res.setHeader('www-authenticate', 'Bearer realm="fulcrum-admin"');
      this.json(res, 401, { error: `${write ? 'a write' : 'this address'} needs the admin token: send "Authorization: Bearer <token>"` });
      return false;
    }
    if (!timingSafeEqual(sha(match[1]), this.tokenDigest)) {
      res.setHeader('www-authenticate', 'Bearer realm="fulcrum-admin", error="invalid_token"');
      this.json(res, 401, { error: 'wrong admin token' });
      return false;
    }
    return true;
  }

  private dashboard(res: http.ServerResponse, urlPath: string): void {
    if (!this.settings.dashboard) return this.json(res, 404, { error: 'the dashboard is off (admin.dashboard: false)' });
    const file = staticFiles(urlPath);
    if (file === null) return this.json(res, 404, { error: `no dashboard file ${urlPath}` });
    res.writeHead(200, {
      'content-type': file.type,
      'content-length': file.body.length,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      'x-frame-options': 'DENY',
      'referrer-policy': 'no-referrer',
      // uPlot sets inline styles on its elements; scripts come only from here.
      'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
    });
    res.end(file.body);
  }

  /** Server-Sent Events: the kept history first, then one sample per second. */
  private events(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
      return void res.end();
    }
    if (this.streams.size >= maxEventStreams) return this.json(res, 503, { error: `${maxEventStreams} event streams are open already` });
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    res.write(`retry: 2000\n\nevent: history\ndata: ${JSON.stringify(this.deps.live.history())}\n\n`);
    const off = this.deps.live.subscribe((sample) => {
      // A client that stopped reading is dropped rather than buffered for without end; it reconnects.
      if (res.writableLength > maxStreamBuffer) return void res.destroy();
      res.write(`event: sample\ndata: ${JSON.stringify(sample)}\n\n`);
    });
    this.streams.add(res);
    const done = (): void => {
      off();
      this.streams.delete(res);
    };
    req.socket.setTimeout(0);
    res.on('close', done);
  }

  private json(res: http.ServerResponse, status: number, value: unknown): void {
    const text = JSON.stringify(value, null, 2) + '\n';
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }

  private readBody(req: http.IncomingMessage): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let over = false;
      req.on('data', (chunk: Buffer) => {
        if (over) return;
        size += chunk.length;
        if (size > maxBody) {
          // Answer first (the handler sends 413 and closes the connection), then drop the rest unread.
          over = true;
          chunks.length = 0;
          reject(new AdminRequestError(413, `the body is larger than ${maxBody} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      req.on('end', () => resolve(Buffer.concat(chunks)));
      req.on('error', reject);
    });
  }

  /** A JSON object body (whatever the Content-Type: curl -d sends form encoding by default). */
  private async readJson(req: http.IncomingMessage, fields: readonly string[]): Promise<Record<string, unknown>> {
    const text = (await this.readBody(req)).toString('utf8');
    if (text.trim() === '') throw new AdminRequestError(400, 'empty body: expected a JSON object such as {"url": "http://10.0.0.4:8080"}');
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new AdminRequestError(400, `the body is not valid JSON (${(err as Error).message}); expected e.g. {"url": "http://10.0.0.4:8080"}`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new AdminRequestError(400, 'the body must be a JSON object such as {"url": "http://10.0.0.4:8080"}');
    const v = value as Record<string, unknown>;
    for (const key of Object.keys(v)) {
      if (!fields.includes(key)) throw new AdminRequestError(400, `unknown field ${JSON.stringify(key)} for ${req.method} ${req.url}; it takes: ${fields.join(', ')}`);
    }
    if (v.url !== undefined && typeof v.url !== 'string') throw new AdminRequestError(400, `"url" must be a string, got ${JSON.stringify(v.url)}`);
    if (v.pool !== undefined && typeof v.pool !== 'string') throw new AdminRequestError(400, `"pool" must be a string, got ${JSON.stringify(v.pool)}`);
    return v;
  }
}

/** `?url=...&pool=...` of a DELETE that carries no body. */
function queryTarget(url: URL): Record<string, unknown> {
  for (const key of url.searchParams.keys()) {
    if (key !== 'url' && key !== 'pool') throw new AdminRequestError(400, `unknown query parameter ${JSON.stringify(key)}; DELETE /backends takes url and pool`);
  }
  const target = url.searchParams.get('url');
  if (target === null) throw new AdminRequestError(400, 'missing "url": DELETE /backends?url=http://10.0.0.4:8080 (or a JSON body {"url": ...})');
  return { url: target, pool: url.searchParams.get('pool') ?? undefined };
}

function problemJson(p: ConfigProblem) {
  return { file: p.file, line: p.line, column: p.column, path: p.path, message: p.message };
}

