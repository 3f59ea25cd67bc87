/**
 * THE configuration schema. The TypeScript types, the validation and the JSON Schema that
 * `fulcrum schema` prints all come from here; docs/configuration.md describes the same keys.
 * Keys are snake_case, as in the seeds' configs and most load balancers' files.
 */
import { editDistance } from './did-you-mean.ts';
import { z } from 'zod';
import { BlockList, isIP } from 'node:net';
import { parseDuration, unitlessDurationMessage } from './duration.ts';
import { policies, policyNames, findPolicy } from '../balancer/registry.ts';
import { closest } from './did-you-mean.ts';
import { normalizePath } from '../proxy/request-target.ts';
import { accessLogFormatNames } from '../observe/access-log-formats.ts';

const durationMessage = 'expected a duration such as "250ms", "5s" or "2m"';

/**
 * A duration: `"5s"`, `"250ms"`, `"2m"`, `"1h"` or `0`; read as milliseconds. A number is
 * milliseconds to code (`createBalancer({...})`); in a file the loader refuses a number other
 * than 0, since `interval: 5` is as likely seconds as milliseconds (`unitlessDurations` in load.ts).
 */
export const Duration = z
  .union([z.number().nonnegative(), z.string()], { error: durationMessage })
  .transform((v, ctx) => {
    if (typeof v === 'number') return v;

    const ms = /^\s*0+(\.0+)?\s*$/.test(v) ? 0 : parseDuration(v);
    if (Number.isNaN(ms)) {
      ctx.addIssue({ code: 'custom', message: /^\s*\d+(\.\d+)?\s*$/.test(v) ? unitlessDurationMessage(v) : `${durationMessage}, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    return ms;
  })
  .meta({ description: 'A duration: "250ms", "5s", "2m", "1h", or 0. A number needs its unit.' });

/** A duration where 0 makes no sense (a probe interval of 0 would probe in a busy loop). */
const PositiveDuration = Duration.refine((ms) => ms > 0, { message: 'must be longer than 0 (write e.g. 5s)' });

/** An IPv4 or IPv6 address or CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`). */
export const Cidr = z.string().refine((v) => parseCidr(v) !== null, {
  message: 'expected an IP address or CIDR block such as "10.0.0.0/8" or "::1/128"',
});

/** `[address, prefix, family]` for an address or CIDR, or null. */
export function parseCidr(text: string): [string, number, 'ipv4' | 'ipv6'] | null {
  const [address, prefixText, extra] = text.trim().split('/');
  if (extra !== undefined) return null;
  const version = isIP(address);
  if (version === 0) return null;
  const max = version === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || (prefixText !== undefined && !/^\d+$/.test(prefixText))) return null;
  return [address, prefix, version === 4 ? 'ipv4' : 'ipv6'];
}

/** A BlockList that answers "is this address inside one of the CIDRs" for both families. */
export function compileCidrs(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const text of cidrs) {
    const parsed = parseCidr(text);
    if (!parsed) throw new Error(`not a CIDR: ${text}`);
    list.addSubnet(parsed[0], parsed[1], parsed[2]);
  }
  return list;
}

const Port = z.number().int().min(0).max(65535);

/** A policy name or alias, read as the canonical name. */
export const PolicyName = z
  .string()
  .superRefine((v, ctx) => {
    if (findPolicy(v)) return;
    const alias = closest(v, policyNames);
    const guess = alias === undefined ? undefined : findPolicy(alias)!.name;
    const names = policies.map((p) => p.name).join(', ');
    ctx.addIssue({ code: 'custom', message: `unknown policy "${v}"${guess ? ` (did you mean "${guess}"?)` : ''}; policies: ${names}` });
  })
  .transform((v) => findPolicy(v)!.name)
  .meta({ enum: [...policyNames], description: 'The balancing policy.' });

/**
 * What is wrong with an upstream URL, in the words of the fix, or undefined when it is one:
 * `10.0.0.1:3000` -> `missing "http://": write http://10.0.0.1:3000`.
 */
export function upstreamUrlProblem(v: string): string | undefined {
  const example = 'http://10.0.0.5:8080';
  const shown = JSON.stringify(v);
  if (v.trim() === '') return `expected an upstream URL such as ${example}, got an empty string`;
  // The URL parser quietly drops tabs and newlines: refuse them rather than guess.
  if (/[\s\x00-\x1f\x7f]/.test(v)) return `${shown} contains a space or a control character; an upstream URL is http://host:port and nothing else`;
  // YAML reads `- url:http://h:1` (no space after the colon) as one string.
  if (/^url:/i.test(v)) return `${shown} is a key and its value without a space: write "url: ${v.slice(4)}" (YAML needs a space after the colon)`;
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(v)?.[1]?.toLowerCase();
  if (scheme === undefined) {
    // `10.0.0.1:3000`, `localhost:3000`, `//host`, `http:/host`, `http:host`, `http//host`: what is after the scheme, if any.
    const rest = v.replace(/^https?(?::\/*|\/+)/i, '').replace(/^([A-Za-z][A-Za-z0-9+.-]*:(?!\d))?\/*/, '');
    return `missing "http://": write http://${rest || '10.0.0.1:3000'}`;
  }
  if (scheme === 'tcp') return tcpUpstreamProblem(v);
  if (scheme !== 'http' && scheme !== 'https') {
    const fixed = `${editDistance(scheme, 'https') < editDistance(scheme, 'http') ? 'https' : 'http'}://${v.slice(scheme.length + 3)}`;
    return editDistance(scheme, 'http') <= 1 || editDistance(scheme, 'https') <= 1 ? `${scheme}:// is not a scheme Fulcrum knows: did you mean ${fixed}?` : `${scheme}:// upstreams are not supported: an upstream is http://host:port or https://host:port`;
  }
  // An IPv6 address needs brackets: `http://::1:8080` is `http://[::1]:8080`.
  const bare6 = /^https?:\/\/([0-9A-Fa-f]*:[0-9A-Fa-f:.]*?)(?::(\d{1,5}))?\/?$/i.exec(v);
  if (bare6 !== null && (bare6[1].match(/:/g)?.length ?? 0) >= 2) return `an IPv6 address goes in brackets: write ${scheme}://[${bare6[1]}]${bare6[2] !== undefined ? `:${bare6[2]}` : ''}`;
  if (/^https?:\/\/(:|\/|$)/i.test(v)) return `${shown} has no host: write ${example}`;
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    const parts = /^https?:\/\/(\[[^\]]*\]|[^/:]*):([^/]*)/i.exec(v);
    if (parts !== null && !(/^\d+$/.test(parts[2]) && Number(parts[2]) <= 65535)) return `${JSON.stringify(parts[2])} is not a port: write ${scheme}://${parts[1] || '10.0.0.5'}:PORT with PORT from 1 to 65535`;
    return `${shown} is not a URL: write ${example}`;
  }
  if (u.hostname === '') return `${shown} has no host: write ${example}`;
  if (u.username || u.password) return 'an upstream URL takes no user or password (they would be sent to no one); remove the "user:password@"';
  if (u.pathname !== '/' && u.pathname !== '') return `an upstream URL has no path (${JSON.stringify(u.pathname)}): the request's own path is sent; write ${scheme}://${u.host} (route by path with routes[].path_prefix)`;
  if (u.search || v.includes('?')) return `an upstream URL has no query: write ${scheme}://${u.host}`;
  if (v.includes('#')) return `an upstream URL has no fragment: write ${scheme}://${u.host}`;
  if (/^[^/]*\/\/[^/]*:0+\/?$/.test(v)) return "port 0 cannot be connected to; give the upstream's real port";
  return undefined;
}

/** What is wrong with a `tcp://host:port` upstream (a `protocol: tcp` pool's), or undefined. */
function tcpUpstreamProblem(v: string): string | undefined {
  const m = /^tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?\/?$/i.exec(v);
  if (m === null) return `${JSON.stringify(v)} is not a TCP upstream: write tcp://host:port (e.g. tcp://10.0.0.5:6379)`;
  if (m[2] === undefined) return `a TCP upstream needs its port: write tcp://${m[1]}:PORT`;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return `${m[2]} is not a port: write tcp://${m[1]}:PORT with PORT from 1 to 65535`;
  return undefined;
}

const UpstreamUrl = z.string().superRefine((v, ctx) => {
  const problem = upstreamUrlProblem(v);
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
});

/** One upstream: a URL string, or an object with a weight and a connection limit. */
export const UpstreamConfig = z.union([
  UpstreamUrl.transform((url) => ({ url, weight: 1, max_connections: 0 })),
  z.strictObject({
    url: UpstreamUrl,
    weight: z.number().positive().max(1_000_000).default(1).meta({ description: 'Share of traffic relative to the others (default 1).' }),
    max_connections: z.number().int().nonnegative().default(0).meta({ description: 'Most requests in flight at once; 0 is no limit (default 0).' }),
  }),
]);

/** Timeouts toward the upstreams of a pool. */
export const TimeoutsConfig = z.strictObject({
  connect: PositiveDuration.default(5000).meta({ description: 'Connecting to an upstream (default 5s); over it: 504, and another upstream is tried.' }),
  response_headers: Duration.default(60_000).meta({ description: 'From request sent to response headers (default 60s); over it: 504.' }),
  idle_body: Duration.default(60_000).meta({ description: 'Longest pause between response body chunks (default 60s); over it the response is cut.' }),
  request: Duration.default(0).meta({ description: 'The whole exchange, first byte in to last byte out; 0 is no limit (default 0). For a WebSocket: the handshake only.' }),
  tunnel_idle: Duration.default(3_600_000).meta({ description: 'A WebSocket tunnel, CONNECT tunnel or TCP connection (protocol: tcp) with no byte either way (pings count) for this long is closed; 0 is no limit (default 1h).' }),
});

/** How upstream keep-alive sockets are reused. */
export const KeepAliveConfig = z.strictObject({
  idle_timeout: Duration.default(5000).meta({ description: "Longest an upstream socket is kept idle: set it to the backends' idle limit (default 5s, Node's)." }),
  safety_margin: Duration.default(1000).meta({ description: 'Sockets are retired this long before idle_timeout or an advertised Keep-Alive timeout (default 1s).' }),
  max_sockets: z.number().int().nonnegative().default(0).meta({ description: 'Most sockets per upstream; 0 is no limit (default 0).' }),
});

/** An HTTP status, or a range such as "200-399". */
const StatusSpec = z.union([
  z.number().int().min(100).max(599),
  z.string().regex(/^[1-5]\d\d(-[1-5]\d\d)?$/, { message: 'expected a status such as 200 or a range such as "200-399"' }),
]);

/** Statuses as inclusive ranges `[low, high]`. */
export function statusRanges(specs: readonly (number | string)[]): [number, number][] {
  return specs.map((s) => {
    if (typeof s === 'number') return [s, s];
    const [low, high = low] = s.split('-').map(Number);
    return [low, high];
  });
}

/** When and how a failed request is tried again (Envoy's retry policy and retry budget). */
export const RetryConfig = z.strictObject({
  max_attempts: z.number().int().min(1).max(10).default(3).meta({ description: 'Attempts per request, the first included (default 3).' }),
  on_status: z
    .array(z.number().int().min(500).max(599))
    .default([502, 503, 504])
    .meta({ description: 'Upstream statuses that idempotent requests are retried on, on another upstream (default [502, 503, 504]).' }),
  max_retry_after: Duration.default(1000).meta({ description: 'A Retry-After up to this long is waited out before retrying; a longer one is passed to the client (default 1s).' }),
  budget_percent: z.number().min(0).max(100).default(20).meta({ description: "Retries in flight may be at most this share of the pool's requests in flight (default 20, Envoy's)." }),
  min_retry_concurrency: z.number().int().min(0).default(10).meta({ description: 'Retries always allowed in flight whatever the budget, so a small pool rides out a dead backend (default 10).' }),
  max_body_bytes: z.number().int().min(0).default(64 * 1024).meta({ description: 'Request bodies up to this size are kept so they can be sent again (default 65536).' }),
});

/** Active health checks (HAProxy's `check inter rise fall`). */
export const HealthCheckConfig = z.strictObject({
  type: z
    .enum(['http', 'tcp', 'grpc'])
    .optional()
    .meta({ description: '"http" sends a request, "tcp" connects (and with `send`/`expect` exchanges bytes), "grpc" asks grpc.health.v1.Health/Check over the pool\'s HTTP/2 (h2 or h2c) (default: tcp for a `protocol: tcp` pool, else http).' }),
  send: z.string().optional().meta({ description: 'For type tcp: bytes sent once connected, as written (YAML "\\r\\n" escapes in double quotes), like HAProxy\'s tcp-check send (default: nothing sent).' }),
  expect: z
    .string()
    .min(1)
    .optional()
    .meta({ description: 'For type tcp: text the upstream must send (within `timeout`, in its first 64 KiB) for the probe to pass, like HAProxy\'s tcp-check expect string (default: connecting is enough).' }),
  service: z.string().default('').meta({ description: 'For type grpc: the service name asked about; "" asks about the server as a whole (default "").' }),
  path: z.string().startsWith('/').default('/health'),
  method: z.enum(['GET', 'HEAD', 'OPTIONS', 'POST']).default('GET'),
  host: z
    .string()
    .min(1)
    .regex(/^[\x21-\x7e]+$/, { message: 'a Host (or :authority) is visible ASCII without spaces: no CR, LF or NUL' })
    .optional()
    .meta({ description: "Host header (gRPC: :authority) of the probe (default the upstream's host:port)." }),
  expected_status: z.array(StatusSpec).min(1).default(['200-399']).meta({ description: 'Statuses that count as healthy (default ["200-399"]).' }),
  body_contains: z.string().optional().meta({ description: 'Text the response body must contain (default: not checked).' }),
  interval: PositiveDuration.default(5000).meta({ description: 'Time between probes of one upstream (default 5s).' }),
  fast_interval: PositiveDuration.default(1000).meta({ description: 'Time between probes while an upstream is changing state (default 1s).' }),
  timeout: PositiveDuration.default(2000).meta({ description: 'A probe slower than this fails (default 2s).' }),
  jitter: z.number().min(0).max(1).default(0.1).meta({ description: 'Each wait is spread by up to this share of itself, so probes do not beat in step (default 0.1).' }),
  rise: z.number().int().min(1).default(2).meta({ description: 'Consecutive successes that bring an unhealthy upstream back (default 2).' }),
  fall: z.number().int().min(1).default(3).meta({ description: 'Consecutive failures that take a healthy upstream out (default 3).' }),
});

/** Passive outlier ejection (Envoy's outlier_detection). */
export const OutlierDetectionConfig = z.strictObject({
  enabled: z.boolean().default(true),
  consecutive_failures: z.number().int().min(1).default(5).meta({ description: 'Consecutive gateway failures (connect error, reset, timeout, 502/503/504) that eject an upstream (default 5).' }),
  base_ejection_time: PositiveDuration.default(30_000).meta({ description: 'Ejection time, multiplied by how many times the upstream was ejected (default 30s).' }),
  max_ejection_time: Duration.default(300_000).meta({ description: 'Longest ejection (default 5m).' }),
  max_ejection_percent: z.number().min(0).max(100).default(50).meta({ description: 'Most of the pool ejected at once, in percent; one upstream may always be (default 50).' }),
});

/** Per-upstream circuit breaking: limits that answer 503 at once instead of queueing. */
export const CircuitBreakerConfig = z.strictObject({
  max_pending: z.number().int().min(0).default(0).meta({ description: 'Requests that may wait for a connection once an upstream has max_connections busy; beyond that: 503 at once (default 0: none wait).' }),
  error_rate: z.number().gt(0).max(1).default(0.5).meta({ description: 'Share of failed requests in the window that opens the breaker (default 0.5).' }),
  window: PositiveDuration.default(10_000).meta({ description: 'The window the error rate is measured over (default 10s).' }),
  min_requests: z.number().int().min(1).default(20).meta({ description: 'Requests in the window before the error rate counts (default 20).' }),
  open_time: PositiveDuration.default(10_000).meta({ description: 'How long an open breaker refuses requests before probing (default 10s).' }),
  half_open_requests: z.number().int().min(1).default(3).meta({ description: 'Probe requests let through when half-open; all must succeed to close (default 3).' }),
  enabled: z.boolean().default(true),
});

/** A file path in the configuration (relative to the configuration file). */
const FilePath = z.string().min(1).refine((v) => !v.includes('\0'), { message: 'a path cannot contain NUL' });

/**
 * TLS toward the pool's `https://` upstreams: who they must prove to be, and what Fulcrum shows
 * them. Verification is on by default, against the system's CAs.
 */
export const UpstreamTlsConfig = z.strictObject({
  server_name: z
    .string()
    .min(1)
    .optional()
    .meta({ description: "SNI sent and the name the upstream's certificate must cover (default: the upstream URL's host; no SNI is sent to an IP address, whose certificate must then cover that IP)." }),
  ca: FilePath.optional().meta({ description: "PEM file of the CAs that may sign the upstreams' certificates (default: the system's CAs)." }),
  cert: FilePath.optional().meta({ description: 'PEM file: a client certificate (chain) shown to upstreams that ask for one (mTLS); with `key`.' }),
  key: FilePath.optional().meta({ description: 'PEM file: the private key of `cert` (default: `cert` itself when it holds the key too).' }),
  insecure_skip_verify: z
    .boolean()
    .default(false)
    .meta({ description: "Accept any certificate from the upstreams: encryption without knowing who is at the other end. For tests only; logged as a warning at every start and reload (default false)." }),
});

/** The HTTP/2 client toward a pool's upstreams (`protocol: h2` or `h2c`). */
export const UpstreamHttp2Config = z.strictObject({
  max_concurrent_streams: z
    .number()
    .int()
    .min(1)
    .default(100)
    .meta({ description: "Most streams Fulcrum opens at once on one session, under the upstream's own SETTINGS_MAX_CONCURRENT_STREAMS; when every session is full another one is opened (default 100)." }),
  max_sessions: z.number().int().min(0).default(0).meta({ description: 'Most sessions (connections) per upstream; 0 is no limit (default 0). Streams beyond them wait for room.' }),
  ping_interval: Duration.default(30_000).meta({ description: 'A session idle this long is sent a PING; 0 turns keepalive pings off (default 30s).' }),
  ping_timeout: PositiveDuration.default(10_000).meta({ description: 'A PING not answered in this time closes the session (default 10s).' }),
  initial_window_bytes: z
    .number()
    .int()
    .min(65_535)
    .max(2 ** 31 - 1)
    .default(1_048_576)
    .meta({ description: 'Flow-control window per stream for responses, in bytes (default 1 MiB).' }),
});

/** A named set of upstreams with a policy. */
export const PoolConfig = z.strictObject({
  policy: PolicyName.default('round-robin'),
  upstreams: z.array(UpstreamConfig).min(1, { message: 'a pool needs at least one upstream' }),
  host_header: z
    .string()
    .min(1)
    .refine((v) => !/[\r\n\0]/.test(v), { message: 'must not contain CR, LF or NUL (header injection)' })
    .default('preserve')
    .meta({ description: '"preserve" keeps the client\'s Host (default), "upstream" sends the upstream\'s host:port, anything else is sent as is.' }),
  transport: z
    .enum(['http1', 'undici', 'node-http'])
    .default('http1')
    .meta({ description: 'HTTP client toward upstreams: "http1", Fulcrum\'s own on raw keep-alive sockets (default); "undici"; or "node-http", node:http\'s agent.' }),
  protocol: z
    .enum(['http1', 'h2', 'h2c', 'tcp'])
    .default('http1')
    .meta({ description: 'Protocol toward the upstreams: "http1" (default, through `transport`), "h2" (HTTP/2 over TLS: https:// upstreams), "h2c" (HTTP/2 in cleartext with prior knowledge: http:// upstreams), or "tcp" (bytes relayed as they are: tcp:// upstreams, for `protocol: tcp` listeners). gRPC needs h2 or h2c.' }),
  proxy_protocol: z
    .enum(['v1', 'v2'])
    .optional()
    .meta({ description: "Send the PROXY protocol header (HAProxy's) on each new upstream connection, carrying the client's address: \"v1\" (text) or \"v2\" (binary, with the TLS SNI when known). HTTP pools then keep an upstream connection to one client connection. Absent: not sent." }),
  http2: UpstreamHttp2Config.prefault({}).meta({ description: 'The HTTP/2 client of an h2 or h2c pool: streams per session, sessions, PING keepalive.' }),
  tls: UpstreamTlsConfig.prefault({}).meta({ description: 'TLS toward the https:// upstreams of this pool: SNI, verification, client certificate.' }),
  timeouts: TimeoutsConfig.prefault({}),
  keepalive: KeepAliveConfig.prefault({}),
  retry: RetryConfig.prefault({}),
  health_check: HealthCheckConfig.optional().meta({ description: 'Active health checks; absent: none (passive ejection still runs).' }),
  outlier_detection: OutlierDetectionConfig.prefault({}),
  circuit_breaker: CircuitBreakerConfig.prefault({}),
  backup: z.string().min(1).optional().meta({ description: 'A pool used only while every upstream of this one is unavailable.' }),
  panic_threshold_percent: z
    .number()
    .min(0)
    .max(100)
    .default(50)
    .meta({ description: "Below this share of upstreams up (health, ejection, breaker), balance over all of them instead of the few left; disabled and drained ones never; 0 turns it off (default 50, Envoy's healthy_panic_threshold)." }),
});

/** IP allow and deny lists (IPv4, IPv6, CIDR); deny wins; an empty allow list allows all. */
export const FirewallConfig = z.strictObject({
  allow: z.array(Cidr).default([]).meta({ description: 'Only these clients may pass; empty: everyone not denied (default []).' }),
  deny: z.array(Cidr).default([]).meta({ description: 'These clients are refused, even when also allowed (default []).' }),
  status: z.number().int().min(400).max(499).default(403).meta({ description: 'Status for a refused HTTP request (default 403).' }),
});

/** One token bucket: `rate` requests per `per`, bursts up to `burst`, per key. */
export const RateLimitConfig = z.strictObject({
  name: z.string().min(1).optional().meta({ description: 'Names the bucket set (and its Redis keys); unnamed limits are named by their numbers.' }),
  rate: z.number().positive().meta({ description: 'Tokens added per `per`.' }),
  per: Duration.refine((ms) => ms > 0, { message: 'must be longer than 0' }).default(1000).meta({ description: 'The period of `rate` (default 1s).' }),
  burst: z.number().int().positive().optional().meta({ description: 'Bucket size: requests allowed at once (default: rate, rounded up).' }),
  key: z
    .array(z.string().regex(/^(ip|route|header:[A-Za-z0-9!#$%&'*+.^_`|~-]+)$/, { message: 'expected "ip", "route" or "header:<name>"' }))
    .min(1)
    .default(['ip'])
    .meta({ description: 'What a bucket is per: "ip" (the client), "route", "header:<name>", or several (default ["ip"]).' }),
  store: z.enum(['memory', 'redis']).default('memory').meta({ description: '"memory": per instance; "redis": one limit across every instance (default memory).' }),
});

/** Limits on what one client connection may send, and how fast. */
export const RequestLimitsConfig = z.strictObject({
  max_header_bytes: z.number().int().min(1024).default(16_384).meta({ description: 'Request line and headers together; over it: 431 (default 16384).' }),
  max_headers: z.number().int().min(1).default(100).meta({ description: 'Header fields per request; over it: 431 (default 100).' }),
  max_url_bytes: z.number().int().min(16).default(8192).meta({ description: 'Request-target length; over it: 414 (default 8192).' }),
  max_body_bytes: z.number().int().min(0).default(0).meta({ description: 'Request body size; over it: 413, also before 100-continue; 0 is no limit (default 0).' }),
  headers_timeout: Duration.default(10_000).meta({ description: 'Time to receive the request headers; over it: 408 and close (default 10s).' }),
  request_timeout: Duration.default(300_000).meta({ description: 'Time to receive the whole request, body included; over it: 408 and close (default 5m).' }),
  max_connections: z.number().int().min(0).default(0).meta({ description: 'Open client connections on this listener; 0 is no limit (default 0).' }),
  max_connections_per_ip: z.number().int().min(0).default(0).meta({ description: 'Open connections per client address; 0 is no limit (default 0).' }),
  max_tunnels: z.number().int().min(0).default(0).meta({ description: 'Open WebSocket tunnels (and handshakes) on this listener; over it: 503; 0 is no limit beyond max_connections (default 0).' }),
  max_tunnels_per_ip: z.number().int().min(0).default(0).meta({ description: 'Open WebSocket tunnels per client address; over it: 429; 0 is no limit (default 0).' }),
  over_connection_limit: z.enum(['refuse', 'queue']).default('refuse').meta({ description: '"refuse" closes a connection over the limit at once; "queue" holds it unread until a slot frees (default refuse).' }),
});

/** One certificate of an HTTPS listener: PEM files, read at start and again when they change. */
export const CertificateConfig = z.strictObject({
  cert: FilePath.meta({ description: 'PEM file: the certificate first, then its intermediates (a full chain); it may hold the private key too.' }),
  key: FilePath.optional().meta({ description: 'PEM file: the private key (default: the key in `cert`).' }),
  names: z
    .array(z.string().min(1).regex(/^(\*\.)?[A-Za-z0-9_.-]+$/, { message: 'expected a host name such as "example.com" or "*.example.com"' }))
    .optional()
    .meta({ description: "Server names (SNI) this certificate answers, exact or \"*.example.com\" (default: the names the certificate covers)." }),
  default: z.boolean().default(false).meta({ description: 'Shown to clients that send no SNI, or an unknown name with `unknown_name: default` (default: the first certificate).' }),
});

/** Mutual TLS: clients show a certificate signed by `ca`. */
export const ClientAuthConfig = z.strictObject({
  mode: z.enum(['required', 'optional']).default('required').meta({ description: '"required": no certificate (or an unverified one), no handshake; "optional": asked for, and requests without a verified one still pass (default required).' }),
  ca: FilePath.meta({ description: "PEM file of the CAs that sign clients' certificates." }),
  subject_header: z
    .string()
    .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, { message: 'expected a header name such as "X-Client-Subject"' })
    .optional()
    .meta({ description: "Request header that carries the verified client certificate's subject to upstreams (RFC 4514 form, e.g. \"CN=alice,O=Example\"); a client's own header of that name is always removed (default: none)." }),
});

/** ACME (RFC 8555) certificates for an HTTPS listener. */
export const ListenerAcmeConfig = z.strictObject({
  domains: z
    .array(z.string().min(1).regex(/^[A-Za-z0-9_.-]+$/, { message: 'expected a host name such as "example.com" (HTTP-01 and TLS-ALPN-01 cannot prove wildcards)' }))
    .min(1)
    .meta({ description: 'Host names to get certificates for; each gets its own (the same as the routes\' hosts, typically).' }),
  challenge: z
    .enum(['http-01', 'tls-alpn-01'])
    .default('http-01')
    .meta({ description: '"http-01": answered on an HTTP listener (port 80 for a public CA); "tls-alpn-01": answered on this listener (port 443 for a public CA) (default http-01).' }),
});

/** TLS on an HTTPS listener. */
export const ListenerTlsConfig = z.strictObject({
  certificates: z.array(CertificateConfig).default([]).meta({ description: 'Certificates chosen by SNI: exact names first, then wildcards, then the default.' }),
  acme: ListenerAcmeConfig.optional().meta({ description: 'Certificates from an ACME CA (the top-level `acme` section says which), renewed by themselves.' }),
  unknown_name: z
    .enum(['default', 'reject'])
    .default('default')
    .meta({ description: 'A client asking for a name no certificate covers: "default" gets the default certificate (its client then warns), "reject" gets an unrecognized_name alert (default default).' }),
  profile: z
    .enum(['intermediate', 'modern'])
    .default('intermediate')
    .meta({ description: 'Mozilla\'s server-side TLS profile: "intermediate", TLS 1.2 and 1.3 with forward-secret AEAD ciphers (default), or "modern", TLS 1.3 only.' }),
  alpn: z
    .array(z.enum(['h2', 'http/1.1']))
    .min(1)
    .default(['h2', 'http/1.1'])
    .meta({ description: 'Protocols offered by ALPN, most wanted first (default ["h2", "http/1.1"]: both on one port).' }),
  session_tickets: z.boolean().default(true).meta({ description: 'Resume sessions with TLS session tickets (default true).' }),
  ticket_key_rotation: PositiveDuration.default(12 * 3_600_000).meta({ description: 'A new random session ticket key this often, shared by the listener\'s certificates; a ticket made with an older key gets a full handshake (default 12h).' }),
  session_timeout: PositiveDuration.default(300_000).meta({ description: 'How long a session may be resumed (ticket lifetime) (default 5m).' }),
  handshake_timeout: PositiveDuration.default(10_000).meta({ description: 'A TLS handshake not finished in this time is cut (default 10s).' }),
  watch: z.boolean().default(true).meta({ description: 'Read certificate files again when they change (default true); SIGHUP and the admin API always do.' }),
  expiry_warning: Duration.default(21 * 86_400_000).meta({ description: 'Warn (log, `fulcrum check`, the dashboard) when a certificate expires within this (default 21d).' }),
  client_auth: ClientAuthConfig.optional().meta({ description: 'Ask clients for certificates (mTLS); absent: no client certificates.' }),
});

/** `Strict-Transport-Security` on every answer of an HTTPS listener. */
export const HstsConfig = z.strictObject({
  max_age: Duration.default(365 * 86_400_000).meta({ description: 'How long browsers keep to HTTPS, sent in whole seconds (default 365d).' }),
  include_subdomains: z.boolean().default(false).meta({ description: 'Also for every subdomain (default false).' }),
  preload: z.boolean().default(false).meta({ description: 'Ask to be in the browsers\' preload list (needs max_age of a year or more and include_subdomains) (default false).' }),
});

/** An HTTP listener that sends every request to HTTPS. */
export const RedirectHttpsConfig = z.strictObject({
  port: Port.default(443).meta({ description: 'The HTTPS port in the Location (default 443, left out of the URL).' }),
  status: z.union([z.literal(301), z.literal(302), z.literal(307), z.literal(308)]).default(308).meta({ description: 'The redirect status; 308 and 307 keep the method and body (default 308).' }),
});

/** HTTP/2 from clients: h2 by ALPN on https listeners, h2c with prior knowledge on http ones, and its limits. */
export const ListenerHttp2Config = z.strictObject({
  h2c: z
    .boolean()
    .default(false)
    .meta({ description: 'On an http listener, also serve HTTP/2 in cleartext to clients that start with its connection preface (prior knowledge); the HTTP/1.1 `Upgrade: h2c` is never offered (default false).' }),
  max_concurrent_streams: z.number().int().min(1).max(10_000).default(100).meta({ description: 'Streams one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused (default 100).' }),
  initial_window_bytes: z
    .number()
    .int()
    .min(65_535)
    .max(2 ** 31 - 1)
    .default(65_535)
    .meta({ description: 'Flow-control window per stream for request bodies, in bytes: what a client may send ahead of Fulcrum reading it (default 65535).' }),
  max_resets: z
    .number()
    .int()
    .min(1)
    .default(200)
    .meta({ description: 'Streams a client may reset (RST_STREAM) before their answer within `reset_window`; beyond it the connection gets GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487) (default 200).' }),
  reset_window: PositiveDuration.default(10_000).meta({ description: 'The window of `max_resets` (default 10s).' }),
  max_control_frames: z
    .number()
    .int()
    .min(1)
    .default(1000)
    .meta({ description: 'PING and SETTINGS frames a client may send within `reset_window`; beyond it: GOAWAY ENHANCE_YOUR_CALM (default 1000).' }),
});

/** Accepting the PROXY protocol (HAProxy's, v1 and v2) from balancers in front. */
export const ListenerProxyProtocolConfig = z.strictObject({
  trusted: z
    .array(Cidr)
    .min(1, { message: 'name the balancers that send the PROXY protocol (their addresses or CIDRs)' })
    .meta({ description: 'Peers that must start every connection with a PROXY header (v1 or v2); the client address is then the one it carries (firewall, limits, rate limits, logs, X-Forwarded-For). Anyone else who sends one is refused; others without one are served as themselves.' }),
  timeout: PositiveDuration.default(5000).meta({ description: 'A trusted peer that has not sent a whole header in this time is closed (default 5s).' }),
});

/** A host name pattern: exact or `*.example.com`. */
const HostPattern = z.string().min(1).regex(/^(\*\.)?[A-Za-z0-9_.-]+$/, { message: 'expected a host name such as "example.com" or "*.example.com"' });

/** One route of a TLS-passthrough listener: a server name (SNI) and, optionally, ALPN. */
export const SniRouteConfig = z.strictObject({
  server_names: z.array(HostPattern).min(1).meta({ description: 'Names (SNI) this route takes: exact, or "*.example.com" for any name under it; case ignored.' }),
  alpn: z.array(z.string().min(1).max(255)).min(1).optional().meta({ description: 'Only clients offering one of these protocols by ALPN (e.g. ["h2"]); absent: any.' }),
  pool: z.string().min(1).meta({ description: 'The tcp pool these connections go to.' }),
});

/** TLS passthrough: read the ClientHello (without terminating TLS) and route by SNI and ALPN. */
export const TlsPassthroughConfig = z.strictObject({
  routes: z.array(SniRouteConfig).min(1).meta({ description: 'Matched exact names first, then the longest wildcard; among equals, the first listed. No match: the listener\'s `pool` (the default route), else closed.' }),
  client_hello_timeout: PositiveDuration.default(5000).meta({ description: 'A connection that has not sent a whole ClientHello in this time (or sends something else) is closed (default 5s).' }),
});

/** One allow or deny rule of a forward proxy. */
export const ForwardRuleConfig = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, { message: 'a rule name uses letters, digits, "_", "." and "-" (it is a metrics label)' }).optional().meta({ description: 'The rule\'s name in metrics and logs (default "rule-<n>").' }),
  action: z.enum(['allow', 'deny']).default('allow'),
  hosts: z.array(HostPattern).min(1).optional().meta({ description: 'Destination names as the client wrote them (exact or "*.example.com"); absent: any.' }),
  cidrs: z.array(Cidr).min(1).optional().meta({ description: 'The resolved destination address must be in one of these; private, loopback, link-local and other special-purpose addresses are reachable only through a rule that lists them here (default: any public address).' }),
  ports: z
    .array(z.union([Port.refine((p) => p > 0, { message: 'port 0 is no destination' }), z.string().regex(/^\d{1,5}-\d{1,5}$/, { message: 'expected a port or a range such as "8000-8999"' })]))
    .min(1)
    .optional()
    .meta({ description: 'Destination ports or ranges (default [80, 443] for an allow rule, every port for a deny rule).' }),
});

/** A forward proxy on a listener: absolute-form requests and CONNECT tunnels to allowed destinations. */
export const ForwardProxyConfig = z.strictObject({
  rules: z.array(ForwardRuleConfig).min(1, { message: 'a forward proxy needs rules saying where it may go (everything else is denied)' }).meta({ description: 'Checked in order; the first that matches a destination decides; none: denied.' }),
  auth: z
    .strictObject({
      realm: z.string().min(1).regex(/^[\x20-\x7e]+$/).default('fulcrum').meta({ description: 'The realm in Proxy-Authenticate (default "fulcrum").' }),
      users: z.record(z.string().regex(/^[^:\s]+$/, { message: 'a user name has no ":" or spaces' }), z.string().regex(/^scrypt\$/, { message: 'expected a password hash from `fulcrum hash-password` (scrypt$...), never the password itself' })).refine((u) => Object.keys(u).length > 0, { message: 'at least one user' }),
    })
    .optional()
    .meta({ description: 'Ask clients for Proxy-Authorization (Basic); absent: no authentication.' }),
  connect: z.boolean().default(true).meta({ description: 'Serve CONNECT tunnels (default true).' }),
  timeouts: TimeoutsConfig.prefault({}).meta({ description: 'Toward destinations, as a pool\'s.' }),
});

/** A socket Fulcrum accepts connections on. */
export const ListenerConfig = z.strictObject({
  name: z.string().min(1).optional().meta({ description: 'Name in logs (default "<host>:<port>").' }),
  host: z.string().min(1).default('0.0.0.0').meta({ description: 'Address to bind (default 0.0.0.0; "::" for IPv6 too).' }),
  port: Port.default(8080).meta({ description: 'Port to bind (default 8080; 0 lets the OS choose).' }),
  protocol: z
    .enum(['http', 'https', 'tcp'])
    .default('http')
    .meta({ description: '"http" (default) or "https" (TLS, with `tls`), both serving HTTP/1.1 and HTTP/2 (see `http2`); or "tcp": each connection relayed as bytes to an upstream of `pool` (or by SNI with `tls_passthrough`).' }),
  pool: z.string().min(1).optional().meta({ description: 'For a tcp listener: the tcp pool connections go to (with `tls_passthrough`: those no route takes).' }),
  tls_passthrough: TlsPassthroughConfig.optional().meta({ description: 'For a tcp listener: route TLS connections by SNI and ALPN without terminating them (the upstreams hold the keys).' }),
  proxy_protocol: ListenerProxyProtocolConfig.optional().meta({ description: 'Accept the PROXY protocol (v1, v2) from these balancers in front; absent: never accepted.' }),
  forward_proxy: ForwardProxyConfig.optional().meta({ description: 'For an http or https listener: also serve as a forward proxy (absolute-form requests, CONNECT) to the destinations its rules allow.' }),
  tls: ListenerTlsConfig.optional().meta({ description: 'Certificates and TLS settings of an https listener.' }),
  hsts: HstsConfig.optional().meta({ description: 'Send Strict-Transport-Security on an https listener\'s answers; absent: not sent.' }),
  redirect_https: z
    .union([z.literal(true), RedirectHttpsConfig])
    .optional()
    .transform((v) => (v === true ? RedirectHttpsConfig.parse({}) : v))
    .meta({ description: 'Answer every request on this http listener with a redirect to https (path and query kept), except ACME HTTP-01 challenges: true (308 to port 443) or {port, status}.' }),
  http2: ListenerHttp2Config.prefault({}).meta({ description: 'HTTP/2 from clients: h2 on https listeners (by ALPN, see tls.alpn), h2c on http listeners when asked, and its limits.' }),
  engine: z
    .enum(['fulcrum', 'node'])
    .default('fulcrum')
    .meta({ description: 'The HTTP/1.1 server: "fulcrum", its own on raw sockets (default), or "node", node:http (kept while the own one proves itself). Takes a restart to change.' }),
  trusted_proxies: z.array(Cidr).default([]).meta({ description: 'CIDRs whose X-Forwarded-* headers are believed (default none).' }),
  headers_with_underscores: z
    .enum(['drop', 'allow', 'reject'])
    .default('drop')
    .meta({ description: 'Request headers whose name has "_" (which CGI, WSGI, PHP and many frameworks read as "-"): "drop" leaves them out (default, nginx\'s underscores_in_headers off), "allow" forwards them, "reject" answers 400.' }),
  keepalive_timeout: Duration.default(5000).meta({ description: 'How long an idle client connection is kept open (default 5s).' }),
  firewall: FirewallConfig.optional().meta({ description: 'Who may connect to this listener at all.' }),
  limits: RequestLimitsConfig.prefault({}),
  metrics_path: z
    .string()
    .regex(/^\/[\x21-\x7e]*$/, { message: 'expected a path such as "/metrics"' })
    .optional()
    .meta({ description: 'Also serve Prometheus metrics on this listener at this path (default: only on the admin listener).' }),
});

/** Loopback addresses: the only ones the admin listener may use without a token. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:127\.\d+\.\d+\.\d+$/.test(h);
}

/** The admin listener: status, backends, config, reload, metrics and the dashboard. */
export const AdminConfig = z.strictObject({
  host: z.string().min(1).default('127.0.0.1').meta({ description: 'Address to bind (default 127.0.0.1). Any other address needs a token.' }),
  port: Port.default(9901).meta({ description: 'Port to bind (default 9901; 0 lets the OS choose).' }),
  token: z
    .string()
    .min(16, { message: 'an admin token needs at least 16 characters (try: openssl rand -hex 24)' })
    .regex(/^[\x21-\x7e]+$/, { message: 'an admin token is printable ASCII without spaces' })
    .optional()
    .meta({ description: 'Bearer token for writes (and for everything on a non-loopback address). FULCRUM_ADMIN_TOKEN overrides it. Absent: one is generated per run and logged.' }),
  token_file: z.string().min(1).optional().meta({ description: 'A file holding the token (read at start and on reload); instead of `token`.' }),
  dashboard: z.boolean().default(true).meta({ description: 'Serve the live dashboard at / (default true).' }),
  persist: z
    .boolean()
    .default(false)
    .meta({ description: 'Write backends added, removed or re-weighted through the API back to the configuration file (default false: they are runtime-only and listed in /status).' }),
});

/**
 * How a route forwards the path. Routing always decides on the normalised path; by default the
 * upstream gets the request-target byte for byte (docs/protection.md#paths).
 */
export const PathConfig = z.strictObject({
  forward: z
    .enum(['original', 'normalized'])
    .default('original')
    .meta({ description: '"original": the request-target as the client sent it, byte for byte (default); "normalized": the normalised path routes matched, then the query as sent.' }),
  encoded_slashes: z
    .enum(['keep', 'reject', 'unescape'])
    .default('keep')
    .meta({ description: '%2F and %5C in the path: "keep" forwards them as sent (default), "reject" answers 400, "unescape" forwards them as "/" and "\\" (Envoy\'s path_with_escaped_slashes_action).' }),
});

/** A match on host and path prefix that leads to a pool. */
export const RouteConfig = z.strictObject({
  name: z.string().min(1).optional(),
  host: z
    .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
    .optional()
    .meta({ description: 'Host names (port ignored, "*.example.com" allowed); absent matches any host.' }),
  path_prefix: z
    .string()
    .startsWith('/')
    .superRefine((v, ctx) => {
      // Paths are matched normalised: a prefix that is not would never match as written.
      if (v.charCodeAt(0) !== 47) return;
      const normal = normalizePath(v);
      const bare = (p: string): string => (p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p);
      if (normal === null || normal.charCodeAt(0) === 0) ctx.addIssue({ code: 'custom', message: 'malformed percent-encoding or %00 in path_prefix' });
      else if (bare(normal) !== bare(v)) ctx.addIssue({ code: 'custom', message: `paths are matched normalised: write "${normal}" (dot segments, "//", "\\", %2F, ";" parameters and escapes of unreserved characters are resolved before matching)` });
    })
    .default('/')
    .meta({ description: 'Path prefix, matched on segment boundaries against the normalised path (default "/").' }),
  path: PathConfig.prefault({}).meta({ description: 'What the upstream is sent as path (default: the request-target as the client sent it).' }),
  pool: z.string().min(1).optional().meta({ description: 'The pool requests go to (required unless the route is a `forward_proxy`).' }),
  forward_proxy: ForwardProxyConfig.omit({ connect: true, auth: true })
    .optional()
    .meta({ description: 'Instead of a pool: fetch the URL in the `url` query parameter (`/forward?url=http://host/path`, seed LeanBalancer\'s shape) when these rules allow its destination.' }),
  firewall: FirewallConfig.optional().meta({ description: 'Who may use this route (on top of the listener\'s firewall).' }),
  rate_limits: z.array(RateLimitConfig).default([]).meta({ description: 'Token buckets; a request passes only if every one has a token.' }),
});

/** How the access log is written: nginx's `access_log PATH FORMAT buffer=64k flush=1s`. */
export const AccessLogConfig = z.strictObject({
  format: z.enum(accessLogFormatNames).default('json').meta({ description: '"json": JSON lines like the rest of the log (default); "combined": the Apache/nginx combined log format.' }),
  buffer_bytes: z
    .number()
    .int()
    .min(1024)
    .max(16 * 1024 * 1024)
    .default(64 * 1024)
    .meta({ description: 'Lines are gathered and written in batches of up to this many bytes; up to 8 times this may wait for a slow destination before lines are dropped (default 65536).' }),
  flush: PositiveDuration.default(1000).meta({ description: 'Longest a line waits in the buffer before it is written (default 1s).' }),
  path: z.string().min(1).optional().meta({ description: 'A file to append to (created if missing, reopened on SIGUSR1) instead of stdout (default: stdout, with the rest of the log).' }),
});

/** Well-known ACME directories, by the names the config may use. */
export const acmeDirectories: Readonly<Record<string, string>> = {
  'letsencrypt-staging': 'https://acme-staging-v02.api.letsencrypt.org/directory',
  letsencrypt: 'https://acme-v02.api.letsencrypt.org/directory',
};

/** The ACME (RFC 8555) CA and account that listeners' `tls.acme` use. */
export const AcmeConfig = z.strictObject({
  directory: z
    .string()
    .refine((v) => Object.hasOwn(acmeDirectories, v) || /^https:\/\/\S+$/.test(v), { message: 'expected "letsencrypt-staging", "letsencrypt" or an https:// directory URL' })
    .default('letsencrypt-staging')
    .meta({ description: 'The CA: "letsencrypt-staging" (default: certificates browsers do not trust, generous rate limits), "letsencrypt" once it works, or a directory URL.' }),
  email: z.string().regex(/^[^@\s]+@[^@\s]+$/, { message: 'expected an email address' }).optional().meta({ description: 'Contact for the account (expiry notices from the CA).' }),
  terms_of_service_agreed: z.boolean().default(false).meta({ description: "You agree to the CA's terms of service (needed to create an account) (default false)." }),
  storage: FilePath.default('acme').meta({ description: 'Directory of the account key and certificates (mode 0700, files 0600), relative to the configuration file (default "acme").' }),
  directory_ca: FilePath.optional().meta({ description: "PEM file of the CA that signs the ACME directory's own HTTPS certificate (a private or test CA such as pebble's; default: the system's CAs)." }),
  key_type: z.enum(['ecdsa', 'rsa']).default('ecdsa').meta({ description: 'Key of each certificate: ECDSA P-256 (default) or RSA 2048.' }),
});

/** Logging. */
export const LogConfig = z.strictObject({
  level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  format: z.enum(['auto', 'json', 'pretty']).default('auto').meta({ description: '"auto": readable on a terminal, JSON otherwise (default).' }),
  access_log: z
    .union([z.boolean(), AccessLogConfig], { error: 'expected true, false or a mapping {format, buffer_bytes, flush, path}' })
    .default(true)
    .meta({ description: 'One line per request: true (JSON lines to stdout, in 64 KiB batches at most 1s late), false, or how (default true).' }),
});

/** The whole configuration file. */
export const FulcrumConfigSchema = z
  .strictObject({
    $schema: z.string().optional().meta({ description: 'Editor hint (the JSON Schema of this file); ignored.' }),
    listeners: z.array(ListenerConfig).min(1).prefault([{}]).meta({ description: 'Sockets to accept on (default one, 0.0.0.0:8080).' }),
    routes: z.array(RouteConfig).default([]).meta({ description: 'Matched most specific first: exact hosts, then wildcard hosts, then host-less routes, each by longest path prefix. Empty with one pool: everything goes to it.' }),
    pools: z.record(z.string().regex(/^[A-Za-z0-9_.-]+$/, { message: 'pool names use letters, digits, "_", "." and "-"' }), PoolConfig),
    log: LogConfig.prefault({}),
    rate_limit: z
      .strictObject({
        max_entries: z.number().int().min(100).default(100_000).meta({ description: 'Buckets kept in memory per limit; the least recently used go first (default 100000).' }),
        redis: z
          .strictObject({
            url: z.string().regex(/^rediss?:\/\//, { message: 'expected a redis:// or rediss:// URL' }).default('redis://127.0.0.1:6379'),
            key_prefix: z.string().default('fulcrum:rl:'),
            timeout: PositiveDuration.default(50).meta({ description: 'How long a check waits for Redis before it is answered from the local bucket; three missed deadlines in a row (or an error) count as Redis being down (default 50ms).' }),
            on_failure: z.enum(['open', 'closed']).default('open').meta({ description: '"open": fall back to a local bucket; "closed": refuse with 503 (default open).' }),
          })
          .optional(),
      })
      .prefault({}),
    shutdown: z
      .strictObject({
        grace_period: Duration.default(30_000).meta({ description: 'How long in-flight requests may finish after SIGTERM (default 30s).' }),
      })
      .prefault({}),
    acme: AcmeConfig.optional().meta({ description: 'The ACME CA and account for listeners with `tls.acme`.' }),
    admin: AdminConfig.optional().meta({ description: 'The admin API, metrics and dashboard on their own listener; absent: none (`admin: {}` for 127.0.0.1:9901).' }),
    reload: z
      .strictObject({
        watch: z.boolean().default(false).meta({ description: 'Reload when the configuration file changes (default false; `fulcrum start --watch` turns it on).' }),
        debounce: Duration.default(250).meta({ description: 'Wait this long after the last change before reloading (default 250ms).' }),
      })
      .prefault({}),
  });

/** The configuration as written (before defaults). */
export type FulcrumConfigInput = z.input<typeof FulcrumConfigSchema>;
/** The configuration after validation: every default filled in, durations in milliseconds. */
export type FulcrumConfig = z.output<typeof FulcrumConfigSchema>;
export type PoolSettings = z.output<typeof PoolConfig>;
export type ListenerSettings = z.output<typeof ListenerConfig>;
export type RouteSettings = z.output<typeof RouteConfig>;
export type LogSettings = z.output<typeof LogConfig>;
export type AccessLogSettings = z.output<typeof AccessLogConfig>;
export type AdminSettings = z.output<typeof AdminConfig>;
export type UpstreamSettings = z.output<typeof UpstreamConfig>;
export type ListenerTlsSettings = z.output<typeof ListenerTlsConfig>;
export type CertificateSettings = z.output<typeof CertificateConfig>;
export type UpstreamTlsSettings = z.output<typeof UpstreamTlsConfig>;
export type AcmeSettings = z.output<typeof AcmeConfig>;
export type HstsSettings = z.output<typeof HstsConfig>;

/** The access log's settings with the defaults filled in (`true` is every default), or null when it is off. */
export function accessLogSettings(value: LogSettings['access_log']): AccessLogSettings | null {
  if (value === false) return null;
  return value === true ? AccessLogConfig.parse({}) : value;
}

/**
 * The small shapes of the seed projects, read as one pool: `{port, strategy, backends}`
 * (seed 004's config.json) and `{lb_port: ":3332", strategy, backends}` (seed 001's config.yaml).
 */
export const SeedConfigSchema = z.strictObject({
  port: z.union([Port, z.string().regex(/^\d+$/).transform(Number)]).optional(),
  lb_port: z
    .union([Port, z.string().regex(/^([^:]*|\[[0-9a-fA-F:]+\]):\d+$|^\d+$/, { message: 'expected ":3332", "127.0.0.1:3332" or a port number' })])
    .optional(),
  strategy: PolicyName.default('round-robin'),
  health_check_frequency: Duration.optional(),
  backends: z.array(UpstreamConfig).min(1, { message: 'at least one backend is needed' }),
  log_level: LogConfig.shape.level.optional(),
  admin_port: Port.optional().meta({ description: 'Admin API port on 127.0.0.1 (seed 004).' }),
  request_timeout: Duration.optional().meta({ description: 'Whole-request timeout toward the backends (seed 004).' }),
});
export type SeedConfig = z.output<typeof SeedConfigSchema>;

/** The JSON Schema of the full configuration file, for editor completion. */
export function configJsonSchema(): unknown {
  const durationInput = (Duration as any)._zod.def.in;
  const schema = z.toJSONSchema(FulcrumConfigSchema, {
    io: 'input',
    unrepresentable: 'any',
    // A file's durations carry their unit; only 0 may be a bare number (as the loader checks).
    override: (ctx) => {
      if (ctx.zodSchema !== durationInput) return;
      ctx.jsonSchema.anyOf = [{ const: 0 }, { type: 'string', pattern: '^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h|d)\\s*$' }];
    },
  }) as Record<string, unknown>;
  return { ...schema, title: 'Fulcrum configuration', $id: 'https://fulcrum.dev/schema/config.json' };
}
