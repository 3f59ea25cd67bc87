/**
 * Active health checks for one pool (HAProxy's `check inter fastinter rise fall`): a probe per
 * upstream on its own timer, outside the request path. Consecutive results flip the state:
 * `fall` failures take a healthy upstream out, `rise` successes bring it back. While an
 * upstream is between states the faster interval is used. Checks only write health through
 * the HealthSink; they never pick. An `https://` upstream is probed over TLS with its pool's
 * TLS settings (SNI, CAs, client certificate, verification): a certificate that does not verify
 * fails the probe with the reason (`certificate has expired (CERT_HAS_EXPIRED)`). A `grpc` check
 * asks `grpc.health.v1.Health/Check` over HTTP/2 (src/health/grpc-check.ts): h2c to an `http://`
 * upstream, h2 with the pool's TLS to an `https://` one; only SERVING passes. A `tcp` check connects
 * (TLS to an `https://` upstream) and, with `send`/`expect`, writes bytes and waits for a text
 * in the answer, as HAProxy's `tcp-check send` / `tcp-check expect string` do. A pool with
 * `proxy_protocol` starts every http and tcp probe connection with a PROXY header naming no client
 * (v1 `PROXY UNKNOWN`, v2 LOCAL), in clear text before any TLS, as HAProxy's `check-send-proxy`
 * (implied by `send-proxy`) does: upstreams that require the header accept the probes.
 */
import type * as http from 'node:http';
import { http as nodeHttp } from '../node-builtins.ts';
import net from 'node:net';
import tls from 'node:tls';
import { statusRanges, type PoolSettings } from '../config/schema.ts';
import { formatDuration } from '../config/duration.ts';
import type { HealthState, Upstream } from '../upstream/upstream.ts';
import { connectHost, duringHandshake, readUpstreamTls, tlsFailureReason, UpstreamTlsConnector, type UpstreamTls } from '../transport/upstream-tls.ts';
import { proxyHeader } from '../proxy/upstream-proxy-header.ts';
import { probeGrpcHealth } from './grpc-check.ts';

type CheckSettings = NonNullable<PoolSettings['health_check']>;

/**
 * A pool's health check settings with the probe type decided (the schema leaves `type` optional),
 * and the pool's `proxy_protocol` (absent: probes send no PROXY header).
 */
export type ActiveCheckSettings = CheckSettings & { type: NonNullable<CheckSettings['type']>; proxy_protocol?: PoolSettings['proxy_protocol'] };

/**
 * `settings` with its probe type decided: as configured, else `tcp` for a `protocol: tcp` pool
 * (its upstreams need not speak HTTP) and `http` for every other pool. `proxyProtocol`: the
 * pool's `proxy_protocol` (default none), sent on the http and tcp probes too.
 */
export function resolveCheckSettings(settings: CheckSettings, protocol: PoolSettings['protocol'], proxyProtocol?: PoolSettings['proxy_protocol']): ActiveCheckSettings {
  const resolved: ActiveCheckSettings = { ...settings, type: settings.type ?? (protocol === 'tcp' ? 'tcp' : 'http') };
  if (proxyProtocol !== undefined) resolved.proxy_protocol = proxyProtocol;
  return resolved;
}

/** The one thing a checker may do: set an upstream's health, with the reason. */
export type HealthSink = (upstream: Upstream, state: HealthState, reason: string) => void;

/** One probe's verdict: null when healthy, else why not. */
type Verdict = string | null;

const maxBody = 64 * 1024;
/** Bytes of a tcp check's answer searched for `expect` (HAProxy reads at most its buffer, 16 KiB by default). */
const maxExpectBytes = 64 * 1024;
/** Characters of an unexpected answer quoted in the failure reason. */
const quotedChars = 60;

/** Probes every upstream of one pool until stopped. */
export class ActiveChecker {
  private readonly settings: ActiveCheckSettings;
  private readonly upstreams: readonly Upstream[];
  private readonly sink: HealthSink;
  /** Told of every passing probe (passive health readmits an upstream that refused connections). */
  private readonly onPass: ((upstream: Upstream) => void) | null;
  private readonly ranges: [number, number][];
  /** TLS toward the https upstreams (the pool's); null when none is https. */
  private readonly tls: UpstreamTls | null;
  /** The PROXY header every probe connection starts with (a probe has no client: v1 UNKNOWN, v2 LOCAL); null without `proxy_protocol`. */
  private readonly proxyHeader: Buffer | null;
  /** A tcp check's `send` and `expect` as bytes (null: not configured). */
  private readonly sendBytes: Buffer | null;
  private readonly expectBytes: Buffer | null;
  /** What a plain (not TLS) tcp probe writes once connected: the PROXY header then `send`; null: nothing. */
  private readonly plainSendBytes: Buffer | null;
  private readonly timers = new Map<Upstream, NodeJS.Timeout>();
  private readonly streak = new Map<Upstream, { ok: number; bad: number }>();
  /** Probes in flight (destroyed on stop); each has its own connection, closed after it, never the request pools'. */
  private readonly inFlight = new Set<http.ClientRequest>();
  /** Sockets of tcp probes in flight (destroyed on stop). */
  private readonly probeSockets = new Set<net.Socket>();
  /** Aborted by stop(): gRPC probes in flight close their sessions. */
  private readonly stopping = new AbortController();
  private stopped = false;

  /**
   * `tls`: the pool's TLS for its https upstreams (default: read from the defaults, the system's
   * CAs, when an upstream is https and none is given). `settings.type` decided (see
   * resolveCheckSettings).
   */
  constructor(settings: ActiveCheckSettings, upstreams: readonly Upstream[], sink: HealthSink, onPass: ((upstream: Upstream) => void) | null = null, tls: UpstreamTls | null = null) {
    this.settings = settings;
    this.upstreams = upstreams;
    this.sink = sink;
    this.onPass = onPass;
    this.ranges = statusRanges(settings.expected_status);
    this.tls = tls ?? (upstreams.some((u) => u.secure) ? readUpstreamTls({ insecure_skip_verify: false }) : null);
    this.proxyHeader = settings.proxy_protocol !== undefined ? proxyHeader(settings.proxy_protocol, null, null, null) : null;
    this.sendBytes = settings.send !== undefined && settings.send !== '' ? Buffer.from(settings.send, 'utf8') : null;
    this.expectBytes = settings.expect !== undefined ? Buffer.from(settings.expect, 'utf8') : null;
    this.plainSendBytes = this.proxyHeader === null ? this.sendBytes : this.sendBytes === null ? this.proxyHeader : Buffer.concat([this.proxyHeader, this.sendBytes]);
  }

  /** Starts probing: the first probe of each upstream within one jitter of now. */
  start(): void {
    // Once only: a second start would run a second probe loop per upstream.
    if (this.timers.size > 0 || this.stopped) return;
    for (const u of this.upstreams) {
      this.streak.set(u, { ok: 0, bad: 0 });
      this.schedule(u, Math.random() * this.settings.jitter * this.settings.interval);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    for (const req of this.inFlight) req.destroy();
    this.inFlight.clear();
    for (const socket of this.probeSockets) socket.destroy();
    this.probeSockets.clear();
    this.stopping.abort();
  }

  private schedule(u: Upstream, delay: number): void {
    if (this.stopped) return;
    const t = setTimeout(() => void this.probe(u), delay);
    t.unref();
    this.timers.set(u, t);
  }

  private async probe(u: Upstream): Promise<void> {
    const type = this.settings.type;
    let verdict: Verdict;
    try {
      verdict = type === 'tcp' ? await this.tcp(u) : type === 'grpc' ? await this.grpc(u) : await this.http(u);
    } catch (err) {
      // A probe that throws (node:http refuses a `host` with a newline at once) fails, and the loop goes on: never an unhandled rejection.
      verdict = describeFailure(err, this.settings.timeout);
    }
    if (this.stopped) return;
    const s = this.streak.get(u)!;
    const { rise, fall } = this.settings;
    if (verdict === null) {
      s.ok++;
      s.bad = 0;
      if (u.health === 'unhealthy' && s.ok >= rise) this.sink(u, 'healthy', `${rise} consecutive checks passed`);
      this.onPass?.(u);
    } else {
      s.bad++;
      s.ok = 0;
      if (u.health === 'healthy' && s.bad >= fall) this.sink(u, 'unhealthy', `${verdict} (${fall} consecutive checks failed)`);
    }
    // Between states (some evidence, not yet enough): look again sooner.
    const changing = (u.health === 'healthy' && s.bad > 0) || (u.health === 'unhealthy' && s.ok > 0);
    const base = changing ? this.settings.fast_interval : this.settings.interval;
    this.schedule(u, base * (1 + (Math.random() * 2 - 1) * this.settings.jitter));
  }

  /**
   * One HTTP probe over node:http's client (built into Node: no client library loaded for it),
   * on a connection of its own (`Connection: close`; TLS to an https upstream; the PROXY header
   * first, before any TLS, with `proxy_protocol`); the whole probe, connect and handshake to last
   * body byte, is bounded by `timeout`.
   */
  private http(u: Upstream): Promise<Verdict> {
    const { timeout, path, method, host, body_contains } = this.settings;
    const header = this.proxyHeader;
    return new Promise((resolve) => {
      let settled = false;
      const done = (verdict: Verdict): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.inFlight.delete(req);
        req.destroy();
        resolve(verdict);
      };
      const secure = u.secure ? this.tls : null;
      /** The TLS socket of an https probe while its handshake runs (null: none, or done). */
      let handshaking: tls.TLSSocket | null = null;
      const connectTls = (): tls.TLSSocket => {
        // A connector per probe: no session carried over, so every probe verifies the certificate.
        const socket = new UpstreamTlsConnector(u, secure!).connect(header);
        handshaking = socket;
        socket.once('secureConnect', () => (handshaking = null));
        return socket;
      };
      const connectPlain = (): net.Socket => {
        const socket = net.connect({ host: connectHost(u), port: u.port });
        // Queued until connected, ahead of everything node:http writes.
        socket.write(header!);
        return socket;
      };
      const req = nodeHttp.request({
        host: connectHost(u),
        port: u.port,
        path,
        method,
        // No agent: the socket is the one createConnection makes (TLS for an https upstream, the PROXY header first).
        ...(secure !== null ? { createConnection: connectTls } : header !== null ? { createConnection: connectPlain } : { agent: false }),
        headers: { host: host ?? u.hostHeader, 'user-agent': 'fulcrum-health-check', connection: 'close' },
      });
      this.inFlight.add(req);
      const timer = setTimeout(() => done(`timeout after ${formatDuration(timeout)}${handshaking !== null && !handshaking.connecting ? ' (TLS handshake not finished)' : ''}`), timeout);
      req.on('error', (err) => done(describeFailure(handshaking !== null ? duringHandshake(err) : err, timeout)));
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        // One decoder across chunks, so a character split between two chunks survives.
        const decoder = body_contains !== undefined ? new TextDecoder() : null;
        let body = '';
        res.on('data', (chunk: Buffer) => {
          if (decoder === null || body.length > maxBody) return;
          body += decoder.decode(chunk, { stream: true });
        });
        res.on('error', (err) => done(describeFailure(err, timeout)));
        res.on('end', () => {
          if (decoder !== null) body += decoder.decode();
          if (!this.ranges.some(([lo, hi]) => status >= lo && status <= hi)) return done(`status ${status}`);
          if (body_contains !== undefined && !body.includes(body_contains)) return done(`body does not contain ${JSON.stringify(body_contains)}`);
          done(null);
        });
      });
      req.end();
    });
  }

  /**
   * One gRPC health check call (`grpc.health.v1.Health/Check` for the check's `service`) on an
   * HTTP/2 session of its own; `:authority` is the check's `host`, else the upstream's host:port.
   */
  private grpc(u: Upstream): Promise<Verdict> {
    const { timeout, service, host } = this.settings;
    // A connection that could not be opened rejects: probe() words it as the other probes' failures.
    return probeGrpcHealth({ upstream: u, tls: u.secure ? this.tls : null, authority: host ?? u.hostHeader, service, timeout }, this.stopping.signal);
  }

  /**
   * A connect probe: the TCP connection, or for an https upstream the completed TLS handshake
   * (certificate verified). With `send`, its bytes are written once connected; with `expect`, the
   * probe passes only when that text appears in what the upstream sends (its first 64 KiB), all
   * within `timeout` from the start of the connect. Without `expect` it passes once connected
   * (and `send` handed to the kernel). With `proxy_protocol` the PROXY header goes first: before
   * `send` on a plain connection (as one write), before the handshake on a TLS one.
   */
  private tcp(u: Upstream): Promise<Verdict> {
    const { timeout, expect } = this.settings;
    const secure = u.secure ? this.tls : null;
    // The header of a TLS probe goes out with the connect, in clear text; a plain probe writes it with `send`.
    const sendBytes = secure !== null ? this.sendBytes : this.plainSendBytes;
    const expectBytes = this.expectBytes;
    return new Promise((resolve) => {
      const socket = secure !== null ? new UpstreamTlsConnector(u, secure).connect(this.proxyHeader) : net.connect({ host: connectHost(u), port: u.port });
      this.probeSockets.add(socket);
      let connected = false;
      let settled = false;
      /** What the upstream sent so far, up to maxExpectBytes (only kept with `expect`). */
      let received = Buffer.alloc(0);
      const done = (verdict: Verdict): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.probeSockets.delete(socket);
        socket.destroy();
        resolve(verdict);
      };
      const timer = setTimeout(() => {
        if (connected && expectBytes !== null) return done(`expected ${JSON.stringify(expect)} not received in ${formatDuration(timeout)} (${received.length > 0 ? `got ${quote(received)}` : 'nothing received'})`);
        done(`timeout after ${formatDuration(timeout)}${secure !== null && !socket.connecting ? ' (TLS handshake not finished)' : ''}`);
      }, timeout);
      socket.once(secure !== null ? 'secureConnect' : 'connect', () => {
        connected = true;
        if (expectBytes === null) {
          if (sendBytes === null) return done(null);
          // Passes once the bytes are out of our hands: destroying before the write completes could drop them.
          socket.write(sendBytes, (err) => done(err ? describeFailure(err, timeout) : null));
          return;
        }
        if (sendBytes !== null) socket.write(sendBytes);
      });
      if (expectBytes !== null) {
        socket.on('data', (chunk: Buffer) => {
          // Search from where a match could start that the previous chunks did not hold whole.
          const from = Math.max(0, received.length - expectBytes.length + 1);
          const room = maxExpectBytes - received.length;
          received = Buffer.concat([received, chunk.length > room ? chunk.subarray(0, room) : chunk]);
          if (received.indexOf(expectBytes, from) !== -1) return done(null);
          if (received.length >= maxExpectBytes) done(`expected ${JSON.stringify(expect)} not in the first ${maxExpectBytes / 1024} KiB the upstream sent (got ${quote(received)})`);
        });
        socket.once('end', () => done(`connection closed before ${JSON.stringify(expect)} arrived${received.length > 0 ? ` (got ${quote(received)})` : ''}`));
      }
      // A close with no 'end' or 'error' before it (after the verdict, done() ignores it).
      socket.once('close', () => done(connected ? 'connection closed' : 'connection closed before it was established'));
      // Any error before the connect event is one of the connect or the handshake.
      socket.on('error', (err) => done(describeFailure(secure !== null && !connected ? duringHandshake(err) : err, timeout)));
    });
  }
}

/** Up to `quotedChars` characters of what an upstream sent, in double quotes with control characters escaped: `"-ERR unknown\r\n"`. */
function quote(bytes: Buffer): string {
  const text = bytes.toString('utf8');
  return text.length > quotedChars ? `${JSON.stringify(text.slice(0, quotedChars))}...` : JSON.stringify(text);
}

/**
 * Words a person reads in the log: "connection refused", "timeout after 2s", "TLS handshake
 * failed: certificate has expired (CERT_HAS_EXPIRED)".
 */
function describeFailure(err: unknown, timeout: number): string {
  const e = err as NodeJS.ErrnoException & { name?: string };
  const code = e.code ?? '';
  const tlsReason = tlsFailureReason(err);
  if (tlsReason !== null) return `TLS handshake failed: ${tlsReason}`;
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'connection reset';
  if (e.name === 'TimeoutError' || code === 'ETIMEDOUT') {
    return `timeout after ${formatDuration(timeout)}`;
  }
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'host not found';
  if (e.name === 'HTTPParserError' || code.startsWith('HPE_')) return 'invalid HTTP response';
  return e.message ?? String(err);
}
