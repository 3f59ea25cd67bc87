/**
 * A small typed client for the admin API (what `fulcrum status`, `fulcrum backends ...` and
 * `fulcrum reload` use). It speaks plain fetch, so it runs wherever Node 18+ or a browser does.
 *
 *   const admin = new AdminClient({ url: 'http://127.0.0.1:9901', token: process.env.FULCRUM_ADMIN_TOKEN });
 *   await admin.addBackend({ url: 'http://10.0.0.4:8080' });
 */
import type { ApplyResponse, BackendStatus, CertificateReloadResult, CertificateStatus, ConfigProblemJson, ErrorResponse, LiveSample, StatusResponse } from './types.ts';

export interface AdminClientOptions {
  /** The admin listener, e.g. `http://127.0.0.1:9901`. */
  url: string;
  /** The bearer token (needed for writes, and for everything off loopback). */
  token?: string;
  /** Give up on a request after this many ms (default 10000). */
  timeout?: number;
}

/** How long `renewCertificate` waits by default: an ACME order's deadline (10 minutes). */
const renewTimeout = 600_000;

/** An answer other than 2xx: the status, the server's message and config problems if any. */
export class AdminError extends Error {
  readonly status: number;
  readonly problems: ConfigProblemJson[];

  constructor(status: number, message: string, problems: ConfigProblemJson[] = []) {
    super(message);
    this.name = 'AdminError';
    this.status = status;
    this.problems = problems;
  }
}

/** Which upstream a write is about: its URL (or host:port), and its pool when several pools have it. */
export interface BackendRef {
  url: string;
  pool?: string;
}

/** What `POST /certificates/reload` answers: `ok` is false when some file could not be used (those listeners keep the certificates loaded before). */
export interface CertificateReloadResponse {
  ok: boolean;
  listeners: CertificateReloadResult[];
}

/** What `POST /certificates/renew` answers: the domain ordered and the certificates that now serve it. */
export interface CertificateRenewResponse {
  ok: true;
  domain: string;
  certificates: CertificateStatus[];
}

export class AdminClient {
  readonly url: string;
  private readonly token: string | undefined;
  private readonly timeout: number;

  constructor(options: AdminClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
    this.timeout = options.timeout ?? 10_000;
  }

  status(): Promise<StatusResponse> {
    return this.call('GET', '/status');
  }

  backends(): Promise<BackendStatus[]> {
    return this.call('GET', '/backends');
  }

  addBackend(backend: BackendRef & { weight?: number; max_connections?: number }): Promise<ApplyResponse & { backend: BackendStatus }> {
    return this.call('POST', '/backends', backend);
  }

  removeBackend(backend: BackendRef): Promise<ApplyResponse> {
    return this.call('DELETE', '/backends', backend);
  }

  /** Changes weight, enabled and draining in one call. */
  updateBackend(backend: BackendRef & { weight?: number; enabled?: boolean; draining?: boolean }): Promise<ApplyResponse & { backend: BackendStatus }> {
    return this.call('PATCH', '/backends', backend);
  }

  /** No new requests; the ones in flight finish. */
  drain(backend: BackendRef): Promise<ApplyResponse & { backend: BackendStatus }> {
    return this.call('POST', '/backends/drain', backend);
  }

  /** Back in rotation: enabled and not draining. */
  enable(backend: BackendRef): Promise<ApplyResponse & { backend: BackendStatus }> {
    return this.call('POST', '/backends/enable', backend);
  }

  disable(backend: BackendRef): Promise<ApplyResponse & { backend: BackendStatus }> {
    return this.call('POST', '/backends/disable', backend);
  }

  /** The configuration in force (secrets hidden) and the file it came from. */
  config(): Promise<{ file: string | null; config: Record<string, unknown> }> {
    return this.call('GET', '/config');
  }

  /** Checks a configuration text without applying it; throws AdminError (422, with problems) when it is invalid. */
  validateConfig(text: string, name?: string): Promise<{ ok: true; valid: true; warnings: string[]; changes: string[] }> {
    return this.call('POST', `/config/validate${name ? `?name=${encodeURIComponent(name)}` : ''}`, text);
  }

  /** Reads the configuration file again and applies it; throws AdminError (422, with problems) when it is invalid. */
  reload(): Promise<ApplyResponse> {
    return this.call('POST', '/reload');
  }

  /** The certificates the https listeners serve, with days left (the `certificates` of `/status`; empty without https listeners). */
  certificates(): Promise<CertificateStatus[]> {
    return this.call('GET', '/certificates');
  }

  /**
   * Reads every https listener's certificate files again (as a file change or SIGHUP does): new
   * handshakes get the changed ones, open connections keep theirs. Resolves `{ok: false}` (status
   * 422) instead of throwing when a file could not be used; `listeners[].failed` says which and why.
   */
  reloadCertificates(): Promise<CertificateReloadResponse> {
    return this.call('POST', '/certificates/reload', undefined, [422]);
  }

  /**
   * Orders a new ACME certificate for `domain` now and waits until it is installed (a forced
   * renewal). Throws AdminError 404 when no listener gets an ACME certificate for that domain.
   * Waits up to `timeout` ms (default 10 minutes, an ACME order's deadline, or the client's
   * timeout when that is longer).
   */
  renewCertificate(domain: string, options: { timeout?: number } = {}): Promise<CertificateRenewResponse> {
    return this.call('POST', '/certificates/renew', { domain }, [], options.timeout ?? Math.max(this.timeout, renewTimeout));
  }

  health(): Promise<{ status: 'ok'; uptime_seconds: number }> {
    return this.call('GET', '/health');
  }

  /** Readiness: resolves `{ready: false}` (status 503) instead of throwing. */
  async ready(): Promise<{ ready: boolean; active_backends: number; reason?: string }> {
    try {
      return await this.call('GET', '/ready');
    } catch (err) {
      if (err instanceof AdminError && err.status === 503) return { ready: false, active_backends: 0, reason: err.message };
      throw err;
    }
  }

  /** The Prometheus exposition text. */
  async metrics(): Promise<string> {
    const res = await this.send('GET', '/metrics');
    return res.text();
  }

  /** The live samples kept so far (the dashboard's history). */
  live(): Promise<LiveSample[]> {
    return this.call('GET', '/live');
  }

  /** One request; an answer other than 2xx (and other than the `accepted` statuses) throws AdminError. */
  private async send(method: string, path: string, body?: unknown, accepted: readonly number[] = [], timeout = this.timeout): Promise<Response> {
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let payload: string | undefined;
    if (body !== undefined) {
      payload = typeof body === 'string' ? body : JSON.stringify(body);
      headers['content-type'] = typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json';
    }
    let res: Response;
    try {
      res = await fetch(this.url + path, { method, headers, body: payload, signal: AbortSignal.timeout(timeout) });
    } catch (err) {
      const cause = (err as Error & { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (err as Error).message;
      // fetch refuses a list of ports outright (the Fetch standard's "bad ports", 6666 among them).
      const hint = /bad port/i.test(why) ? ' (fetch refuses this port; give the admin listener another one)' : '';
      throw new AdminError(0, `cannot reach the admin API at ${this.url}: ${why}${hint}`);
    }
    if (!res.ok && !accepted.includes(res.status)) {
      let message = `${res.status} ${res.statusText}`;
      let problems: ConfigProblemJson[] = [];
      try {
        const e = (await res.json()) as ErrorResponse & { reason?: string };
        if (e.error) message = e.error;
        else if (e.reason) message = e.reason; // /ready's 503
        problems = e.problems ?? [];
      } catch {
        // not JSON: keep the status line
      }
      throw new AdminError(res.status, message, problems);
    }
    return res;
  }

  private async call<T>(method: string, path: string, body?: unknown, accepted: readonly number[] = [], timeout = this.timeout): Promise<T> {
    const res = await this.send(method, path, body, accepted, timeout);
    return (await res.json()) as T;
  }
}
