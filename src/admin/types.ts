/**
 * The admin API's shapes, shared by the server, the typed client, the CLI and the dashboard's
 * documentation (the OpenAPI document describes the same fields). Keys are snake_case like the
 * configuration and the seeds' `/status`.
 */

/** An upstream's state, as both `/status` and the live samples show it. */
export interface UpstreamState {
  /** The seeds' meaning: the balancer would send it traffic now (healthy, enabled, not drained, ejected or open). */
  alive: boolean;
  health: 'healthy' | 'unhealthy';
  enabled: boolean;
  draining: boolean;
  ejected: boolean;
  /** Times it was ejected recently (multiplies the next ejection time). */
  ejections: number;
  circuit: 'closed' | 'open' | 'half-open';
  /** Its pool is in panic mode (too few upstreams up): it takes traffic whatever its health. */
  panic: boolean;
  weight: number;
  /** Requests it answered since it was added (carried over reloads). */
  requests: number;
}

/** One upstream as `/status` and `/backends` show it. */
export interface BackendStatus extends UpstreamState {
  /** `http://host:port` (the seeds' key). */
  url: string;
  /** `host:port`: the id used in metrics, logs and the API. */
  id: string;
  pool: string;
  /** Seed 002's field: its active health check passes (or none is configured). */
  healthy: boolean;
  /** Requests in flight to it now (the seeds' name for it); for a tcp pool, its open TCP connections. */
  current_connections: number;
  /** Tcp pools only: TCP connections open to it now (connecting ones included). */
  open_connections?: number;
  /** Attempts that failed (connect error, reset, timeout). */
  failures: number;
  /** True when it was added, re-weighted, drained or disabled through the API and not in the file. */
  runtime_only: boolean;
}

/** A change made through the admin API that is not in the configuration file. */
export interface RuntimeChange {
  /** ISO time of the change. */
  at: string;
  action: 'add' | 'remove' | 'weight' | 'drain' | 'disable';
  pool: string;
  /** `host:port`. */
  upstream: string;
  /** The new weight, for `weight` and `add`. */
  weight?: number;
}

/** One certificate an https listener serves (`GET /status`, `GET /certificates`). */
export interface CertificateStatus {
  listener: string;
  /** The `cert` file (and key file), or `acme:<domain>` for an ACME certificate. */
  source: string;
  /** Server names it answers. */
  names: string[];
  serial: string;
  /** ISO times. */
  not_before: string;
  not_after: string;
  /** Whole days until it expires (negative once expired). */
  days_left: number;
  /** The listener's `tls.expiry_warning` in whole days: fewer `days_left` than this is "expiring soon". */
  warning_days: number;
  /** Shown to clients without SNI (and to unknown names with unknown_name: default). */
  is_default: boolean;
  /** Why the last read of its files failed (the certificate shown is the one loaded before), or null. */
  error: string | null;
}

/** One name Fulcrum gets ACME certificates for (`GET /status`). */
export interface AcmeNameStatus {
  domain: string;
  challenge: 'http-01' | 'tls-alpn-01';
  /** `valid` (a certificate is installed), `ordering`, `failed` (backing off), `pending` (not ordered yet). */
  state: 'valid' | 'ordering' | 'failed' | 'pending';
  /** ISO times and the serial of the installed certificate. */
  not_before?: string;
  not_after?: string;
  serial?: string;
  /** When the next order is due: renewal at two thirds of the lifetime, or the end of a failure's backoff (ISO time). */
  next_attempt?: string;
  /** Why the last attempt failed (the CA's problem detail when it gave one), and its code. */
  last_error?: string;
  last_error_code?: string;
  /** Failed attempts in a row. */
  failures: number;
  /** Orders placed since start. */
  orders: number;
}

/** What `POST /certificates/reload` did per https listener. */
export interface CertificateReloadResult {
  listener: string;
  /** Certificates whose files changed and were taken, with their new serials. */
  changed: { source: string; serial: string }[];
  /** Files that could not be used: the certificate loaded before stays. */
  failed: { file: string; reason: string }[];
}

/** One pool as `/status` shows it. */
export interface PoolStatus {
  name: string;
  /** Toward its upstreams: `http1`, `h2`, `h2c`, or `tcp` (bytes relayed for tcp listeners). */
  protocol: 'http1' | 'h2' | 'h2c' | 'tcp';
  policy: string;
  /** Upstreams in the pool, and those that take new requests or connections. */
  upstreams: number;
  available: number;
  backup: string | null;
  /** Tcp pools only: TCP connections open to its upstreams now. */
  tcp_connections?: number;
}

/** One public listener as `/status` shows it. */
export interface ListenerStatus {
  name: string;
  protocol: 'http' | 'https' | 'tcp';
  url: string;
  /** Client connections open now, and those closed at accept (firewall, limits) since start. */
  open_connections: number;
  refused_connections: number;
  /** Http and https listeners: open HTTP/2 sessions and the streams in flight on them. */
  http2_sessions?: number;
  http2_streams?: number;
}

/** `GET /status`. */
export interface StatusResponse {
  total_backends: number;
  active_backends: number;
  backends: BackendStatus[];
  pools: PoolStatus[];
  listeners: ListenerStatus[];
  /** Certificates the https listeners serve, with days left (an empty list without https listeners). */
  certificates: CertificateStatus[];
  /** Names with ACME certificates: their order state, next attempt and last error (an empty list without ACME). */
  acme: AcmeNameStatus[];
  /** The file the configuration came from, or null (demo, embedded). */
  config_file: string | null;
  /** ISO time of the last configuration applied. */
  config_loaded_at: string;
  /** Whether API changes are written back to `config_file` (admin.persist). */
  persisted: boolean;
  /** Changes made through the API that a restart would lose (with persist, only drains and disables: they are state, not configuration). */
  runtime_changes: RuntimeChange[];
  /** Settings of the loaded configuration that wait for a restart (a moved listener, the admin address, log.format). */
  restart_needed: string[];
  uptime_seconds: number;
  version: string;
}

/** A problem in a configuration, as the API reports it. */
export interface ConfigProblemJson {
  file: string;
  line: number;
  column: number;
  path: string;
  message: string;
}

/** `POST /reload`, `POST /config/validate` and the backend writes. */
export interface ApplyResponse {
  ok: true;
  /** The semantic diff, one line per area ("pool api: +1 upstream 10.0.0.4:80"). */
  changes: string[];
  /** Reloads: what waits for a restart. */
  warnings?: string[];
  /** Reloads: runtime changes that no longer apply to the new file. */
  dropped?: string[];
  /** Set for backend writes: the upstream as it is now (absent after a removal). */
  backend?: BackendStatus;
  /** True when the change is not in the configuration file (admin.persist off). */
  runtime_only?: boolean;
}

/** Every error answer: a message that says what is wrong, and config problems when there are some. */
export interface ErrorResponse {
  error: string;
  problems?: ConfigProblemJson[];
}

/** One second of live numbers for one upstream (dashboard, `GET /events`). */
export interface LiveBackend extends UpstreamState {
  pool: string;
  id: string;
  rps: number;
  /** Share of answers that were 5xx or failed attempts, 0..1. */
  error_rate: number;
  /** Over the last 5 seconds, in milliseconds; null without traffic. */
  p50_ms: number | null;
  p99_ms: number | null;
  in_flight: number;
  /** WebSocket tunnels open to it now (`in_flight` counts them too). */
  tunnels_open: number;
  /** Tcp pools only: TCP connections open to it now (`in_flight` counts them too). */
  open_connections?: number;
  /** Tcp pools only: bytes per second over the last tick, client to backend (in) and back (out); open connections count as they go. */
  bytes_in_per_s?: number;
  bytes_out_per_s?: number;
}

/** One tick of the live view: totals and every upstream. */
export interface LiveSample {
  /** Epoch milliseconds. */
  t: number;
  rps: number;
  error_rate: number;
  p50_ms: number | null;
  p99_ms: number | null;
  /** Requests refused by a rate limit in the last second, and since start. */
  rate_limited_per_s: number;
  rate_limited_total: number;
  requests_total: number;
  in_flight: number;
  /** WebSocket tunnels open now, to every upstream (those a reload removed included, until they close). */
  tunnels_open: number;
  backends: LiveBackend[];
}
