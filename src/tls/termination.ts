/**
 * TLS termination for an HTTPS listener: the certificates it serves (a store chosen by SNI,
 * reloaded from their files without a restart), the ClientHello read before the handshake, and
 * the handshake itself, run by an unbound node:tls server that is handed each admitted socket.
 *
 * Order of a connection: accept -> firewall and connection limits (the listener's acceptor, no
 * byte read) -> the ClientHello (`handshake_timeout`): plain HTTP gets a 400 in the clear, a name
 * no certificate covers gets the default certificate or an `unrecognized_name` alert, an ACME
 * TLS-ALPN-01 validation gets its challenge certificate -> the TLS handshake (`handshake_timeout`
 * again) -> the HTTP server. Handshakes and failures are counted by reason.
 */
import fs from 'node:fs';
import path from 'node:path';
import tls, { type SecureContext, type TLSSocket } from 'node:tls';
import { constants, createHash, randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { CertificateSettings, ListenerTlsSettings } from '../config/schema.ts';
import type { Logger } from '../observe/logger.ts';
import { CertificateError, parseCertificate, readCertificate, type LoadedCertificate } from './certificates.ts';
import { Alert, alertRecord, MAX_CLIENT_HELLO_BYTES, parseClientHello } from './client-hello.ts';
import { setConnectionTls } from './connection-tls.ts';
import { tlsProfiles } from './profiles.ts';
import type { CertificateReloadResult, CertificateStatus } from '../admin/types.ts';

/** The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737). */
const ACME_TLS_ALPN = 'acme-tls/1';
/** Changes to certificate files are read this long after the last one (an editor's or certbot's several writes). */
const WATCH_DEBOUNCE_MS = 200;
const PLAIN_HTTP_BODY = '400 Bad Request: this port speaks HTTPS; use an https:// URL for it.\n';
const PLAIN_HTTP_ANSWER = `HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ${PLAIN_HTTP_BODY.length}\r\n\r\n${PLAIN_HTTP_BODY}`;

/** A certificate ready for handshakes. */
interface Served {
  loaded: LoadedCertificate;
  context: SecureContext;
}

/** A configured certificate: what its files gave last time they were readable, and the error since. */
interface Configured {
  settings: CertificateSettings;
  served: Served | null;
  error: string | null;
}

/** Why handshakes failed, as metric label values (`lb_tls_handshake_failures_total{reason}`). */
export type HandshakeFailure =
  | 'timeout'
  | 'not_tls'
  | 'malformed_client_hello'
  | 'unknown_name'
  | 'no_certificate'
  | 'no_shared_protocol_version'
  | 'no_shared_cipher'
  | 'no_application_protocol'
  | 'client_certificate'
  | 'reset'
  | 'other';

/** The reason label of a handshake error from OpenSSL or Node. */
function failureReason(err: NodeJS.ErrnoException & { reason?: string }): HandshakeFailure {
  const code = err.code ?? '';
  const text = `${code} ${err.reason ?? ''} ${err.message}`.toLowerCase();
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE' || text.includes('socket hang up')) return 'reset';
  if (text.includes('protocol version') || text.includes('wrong version number') || text.includes('unsupported protocol')) return 'no_shared_protocol_version';
  if (text.includes('no shared cipher') || text.includes('no suitable signature')) return 'no_shared_cipher';
  if (text.includes('application protocol')) return 'no_application_protocol';
  if (text.includes('certificate')) return 'client_certificate';
  return 'other';
}

/** RFC 4514 text of a certificate subject (`CN=alice,O=Example`), control characters replaced. */
function rfc4514(subject: string): string {
  return subject
    .split('\n')
    .filter((l) => l !== '')
    .reverse()
    .map((l) => l.replace(/[\x00-\x1f\x7f]/g, '?'))
    .join(',');
}

/** The client CA file of `client_auth` as text, or null without client certificates. Throws when it cannot be read. */
function readClientCa(settings: ListenerTlsSettings): string | null {
  return settings.client_auth === undefined ? null : fs.readFileSync(settings.client_auth.ca, 'utf8');
}

function destroyOnError(this: Socket): void {
  this.destroy();
}

/** The certificates of one HTTPS listener, by server name. */
export class CertificateStore {
  private configured: Configured[] = [];
  /** ACME certificates by domain: they answer their exact name ahead of configured ones. */
  private readonly managed = new Map<string, Served>();
  private exact = new Map<string, Served>();
  private wildcard = new Map<string, Served>();
  private fallback: Served | null = null;
  private options: tls.SecureContextOptions;

  constructor(options: tls.SecureContextOptions) {
    this.options = options;
  }

  /**
   * A secure context for `loaded` with the listener's profile, ticket keys and client CA. Throws
   * CertificateError when OpenSSL will not serve it (a key too small for its security level, ...).
   */
  private serve(loaded: LoadedCertificate): Served {
    try {
      return { loaded, context: tls.createSecureContext({ ...this.options, cert: loaded.cert, key: loaded.key }) };
    } catch (err) {
      throw new CertificateError(loaded.certPath ?? loaded.source, `OpenSSL refuses to serve it: ${(err as Error).message}`);
    }
  }

  /**
   * Reads the configured certificates. `strict` (a start, a configuration reload): the first file
   * that cannot be used throws CertificateError. Otherwise (a file change, SIGHUP): a certificate
   * whose files cannot be used keeps what it had, and the failure is reported.
   */
  load(certificates: readonly CertificateSettings[], strict: boolean): { changed: { source: string; serial: string }[]; failed: { file: string; reason: string }[] } {
    const changed: { source: string; serial: string }[] = [];
    const failed: { file: string; reason: string }[] = [];
    const before = new Map(this.configured.map((c) => [JSON.stringify(c.settings), c]));
    const next: Configured[] = [];
    for (const settings of certificates) {
      const old = before.get(JSON.stringify(settings));
      try {
        const loaded = readCertificate(settings);
        const same = old?.served !== null && old?.served !== undefined && old.served.loaded.cert === loaded.cert && old.served.loaded.key === loaded.key;
        next.push({ settings, served: same ? old!.served : this.serve(loaded), error: null });
        if (!same) changed.push({ source: loaded.source, serial: loaded.serial });
      } catch (err) {
        if (strict || !(err instanceof CertificateError)) throw err;
        failed.push({ file: err.file, reason: err.message.slice(err.file.length + 2) });
        next.push({ settings, served: old?.served ?? null, error: err.message });
      }
    }
    this.configured = next;
    this.index();
    return { changed, failed };
  }

  /** Installs (or replaces) an ACME certificate for `domain`. Throws CertificateError when the PEM is unusable. */
  install(domain: string, pair: { cert: string; key: string }): LoadedCertificate {
    const source = `acme:${domain}`;
    const loaded = parseCertificate(pair.cert, pair.key, { cert: source, key: source }, [domain]);
    this.managed.set(domain.toLowerCase(), this.serve(loaded));
    this.index();
    return loaded;
  }

  /** New context options (ticket keys, profile, client CA): every context is made again. */
  reconfigure(options: tls.SecureContextOptions): void {
    this.options = options;
    for (const c of this.configured) if (c.served !== null) c.served = this.serve(c.served.loaded);
    for (const [domain, served] of this.managed) this.managed.set(domain, this.serve(served.loaded));
    this.index();
  }

  private index(): void {
    const exact = new Map<string, Served>();
    const wildcard = new Map<string, Served>();
    let fallback: Served | null = null;
    let first: Served | null = null;
    for (const c of this.configured) {
      if (c.served === null) continue;
      first ??= c.served;
      if (c.settings.default && fallback === null) fallback = c.served;
      for (const name of c.served.loaded.names) {
        if (name.startsWith('*.')) {
          if (!wildcard.has(name.slice(2))) wildcard.set(name.slice(2), c.served);
        } else if (!exact.has(name)) exact.set(name, c.served);
      }
    }
    for (const [domain, served] of this.managed) {
      exact.set(domain, served);
      first ??= served;
    }
    this.exact = exact;
    this.wildcard = wildcard;
    this.fallback = fallback ?? first;
  }

  /** The certificate for a server name: exact, then wildcard (one label), else null. */
  match(name: string): Served | null {
    const hit = this.exact.get(name);
    if (hit !== undefined) return hit;
    const dot = name.indexOf('.');
    return dot > 0 ? (this.wildcard.get(name.slice(dot + 1)) ?? null) : null;
  }

  /** The default certificate (no SNI, or an unknown name with `unknown_name: default`), or null when there is none yet. */
  get defaultCertificate(): Served | null {
    return this.fallback;
  }

  /** Every certificate served, as /status shows them. */
  list(listener: string, warningMs: number, now = Date.now()): CertificateStatus[] {
    const out: CertificateStatus[] = [];
    const show = (served: Served, error: string | null): void => {
      const l = served.loaded;
      out.push({
        listener,
        source: l.source,
        names: l.names,
        serial: l.serial,
        not_before: l.notBefore.toISOString(),
        not_after: l.notAfter.toISOString(),
        days_left: Math.floor((l.notAfter.getTime() - now) / 86_400_000),
        warning_days: Math.floor(warningMs / 86_400_000),
        is_default: served === this.fallback,
        error,
      });
    };
    for (const c of this.configured) if (c.served !== null) show(c.served, c.error);
    for (const served of this.managed.values()) show(served, null);
    return out;
  }

  /** The files behind the configured certificates (to watch). */
  files(): string[] {
    return [...new Set(this.configured.flatMap((c) => [c.settings.cert, c.settings.key ?? c.settings.cert]))];
  }
}

/** What an HTTPS listener does with a connection whose handshake completed (`raw`: the TCP socket under it). */
export type SecureHandler = (socket: TLSSocket, raw: Socket | null) => void;

/** The TLS side of one HTTPS listener. */
export class TlsTermination {
  private settings: ListenerTlsSettings;
  readonly store: CertificateStore;
  private readonly name: string;
  private readonly logger: Logger;
  /** Runs handshakes on the sockets it is handed (never listens); made again when client_auth or handshake_timeout change. */
  private server: tls.Server;
  private readonly secure: SecureHandler;
  /** The client CA file's text (client_auth), read at start and on reloads only: never in a timer. */
  private clientCa: string | null;
  /** Answers ACME TLS-ALPN-01 validations (made when the first challenge is set). */
  private challengeServer: tls.Server | null = null;
  private readonly challenges = new Map<string, SecureContext>();
  private ticketKeys = randomBytes(48);
  private rotation: NodeJS.Timeout | null = null;
  private watchers: fs.FSWatcher[] = [];
  private watchTimer: NodeJS.Timeout | null = null;
  /** Failed or refused handshakes by reason, since start. */
  readonly failures = new Map<HandshakeFailure, number>();
  /** Handshakes completed, by TLS version (`TLSv1.3`), since start. */
  readonly versions = new Map<string, number>();
  /**
   * The ALPN choice among the protocols a client offers (the hook HTTP/2 plugs into): the first
   * of `tls.alpn` the client offers; undefined refuses the handshake (no_application_protocol).
   */
  selectProtocol: (offered: readonly string[]) => string | undefined;

  /** Reads the certificates (throws CertificateError naming the file) and prepares the handshake server. */
  constructor(settings: ListenerTlsSettings, name: string, logger: Logger, secure: SecureHandler) {
    this.settings = settings;
    this.name = name;
    this.logger = logger;
    this.secure = secure;
    this.clientCa = readClientCa(settings);
    this.store = new CertificateStore(this.contextOptions());
    this.store.load(settings.certificates, true);
    this.selectProtocol = (offered) => this.settings.alpn.find((p) => offered.includes(p));
    this.server = this.handshakeServer();
    this.applyDefault();
    this.startRotation();
    if (settings.watch) this.watch();
  }

  /** The unbound server that runs handshakes, with the settings fixed per server (client certificates, the timeout). */
  private handshakeServer(): tls.Server {
    const server = tls.createServer(
      {
        ...this.profileOptions(),
        handshakeTimeout: this.settings.handshake_timeout,
        // The client's certificate is checked here (onSecure), so a refusal is counted and logged.
        requestCert: this.settings.client_auth !== undefined,
        rejectUnauthorized: false,
        SNICallback: (servername, cb) => cb(null, this.store.match(servername.toLowerCase().replace(/\.$/, ''))?.context ?? this.store.defaultCertificate?.context),
        ALPNCallback: ({ protocols }) => this.selectProtocol(protocols),
      },
      (socket) => this.onSecure(socket, this.secure),
    );
    server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
      const reason = failureReason(err);
      this.fail(reason);
      this.logger.debug({ listener: this.name, reason, err: err.message, client: socket.remoteAddress }, 'TLS handshake failed');
      // Node only reports a handshake timeout (and a half-open socket may wait forever): the connection ends here.
      socket.destroy();
    });
    return server;
  }

  /** The profile's versions and ciphers, the options every context and the handshake server share. */
  private profileOptions(): tls.SecureContextOptions {
    const p = tlsProfiles[this.settings.profile];
    return { minVersion: p.minVersion, maxVersion: p.maxVersion, ciphers: p.ciphers, ecdhCurve: p.ecdhCurve, honorCipherOrder: p.honorCipherOrder };
  }

  private contextOptions(): tls.SecureContextOptions {
    const s = this.settings;
    const options: tls.SecureContextOptions = {
      ...this.profileOptions(),
      sessionTimeout: Math.ceil(s.session_timeout / 1000),
      // Sessions resume only on the listener that made them, and only under the client CA they were verified against.
      sessionIdContext: createHash('sha256')
        .update(`fulcrum:${this.name}\0${s.client_auth?.mode ?? 'none'}\0${this.clientCa ?? ''}`)
        .digest('hex')
        .slice(0, 32),
    };
    if (s.session_tickets) options.ticketKeys = this.ticketKeys;
    else options.secureOptions = constants.SSL_OP_NO_TICKET;
    if (this.clientCa !== null) options.ca = this.clientCa;
    return options;
  }

  /** The default certificate is the handshake server's own context (clients without SNI get it). */
  private applyDefault(): void {
    const fallback = this.store.defaultCertificate;
    if (fallback === null) return;
    this.server.setSecureContext({ ...this.contextOptions(), cert: fallback.loaded.cert, key: fallback.loaded.key });
    if (this.settings.session_tickets) this.server.setTicketKeys(this.ticketKeys);
  }

  private startRotation(): void {
    if (this.rotation !== null) clearInterval(this.rotation);
    this.rotation = null;
    if (!this.settings.session_tickets) return;
    this.rotation = setInterval(() => this.rotateTicketKeys(), this.settings.ticket_key_rotation);
    this.rotation.unref();
  }

  /** A new random session ticket key for every certificate of the listener (tickets of the old one get a full handshake). */
  rotateTicketKeys(): void {
    try {
      this.ticketKeys = randomBytes(48);
      this.store.reconfigure(this.contextOptions());
      this.applyDefault();
    } catch (err) {
      this.logger.error({ listener: this.name, err: (err as Error).message }, `session ticket key rotation failed: ${(err as Error).message}`);
    }
  }

  /**
   * Takes a connection the listener admitted: reads its ClientHello, then hands it to the
   * handshake, or refuses it (plain HTTP, no certificate for the name, a deadline missed).
   */
  accept(raw: Socket): void {
    let received: Buffer | null = null;
    const deadline = setTimeout(() => {
      this.fail('timeout');
      raw.destroy();
    }, this.settings.handshake_timeout);
    const done = (): void => {
      clearTimeout(deadline);
      raw.off('data', onData);
      raw.off('close', done);
    };
    const onData = (chunk: Buffer): void => {
      received = received === null ? chunk : Buffer.concat([received, chunk]);
      const hello = parseClientHello(received);
      if (hello.kind === 'incomplete') {
        if (received.length > MAX_CLIENT_HELLO_BYTES + 64) {
          done();
          this.refuse(raw, 'malformed_client_hello', alertRecord(50));
        }
        return;
      }
      done();
      raw.pause();
      if (hello.kind === 'not-tls') return this.refuse(raw, 'not_tls', hello.http ? PLAIN_HTTP_ANSWER : null);
      if (hello.kind === 'malformed') {
        this.logger.debug({ listener: this.name, reason: hello.reason, client: raw.remoteAddress }, 'malformed TLS ClientHello');
        return this.refuse(raw, 'malformed_client_hello', alertRecord(50));
      }
      const name = hello.serverName;
      if (name !== null && hello.alpn.includes(ACME_TLS_ALPN) && this.challenges.has(name)) {
        raw.unshift(received);
        this.challengeServer!.emit('connection', raw);
        return;
      }
      const served = name === null ? null : this.store.match(name);
      if (served === null && (name !== null && this.settings.unknown_name === 'reject')) return this.refuse(raw, 'unknown_name', alertRecord(Alert.unrecognizedName), name);
      if (served === null && this.store.defaultCertificate === null) return this.refuse(raw, 'no_certificate', alertRecord(Alert.unrecognizedName), name);
      raw.unshift(received);
      this.server.emit('connection', raw);
    };
    raw.on('data', onData);
    raw.on('close', done);
    // A reset while the ClientHello comes in (and any error of the TCP socket under the TLS one) only closes it.
    raw.on('error', destroyOnError);
  }

  private refuse(raw: Socket, reason: HandshakeFailure, answer: Buffer | string | null, name?: string | null): void {
    this.fail(reason);
    this.logger.debug({ listener: this.name, reason, server_name: name ?? undefined, client: raw.remoteAddress }, 'TLS connection refused before the handshake');
    // Closed once the answer is out, whatever the client does (it may never close its side).
    if (answer === null) raw.destroy();
    else raw.end(answer, () => raw.destroy());
  }

  private fail(reason: HandshakeFailure): void {
    this.failures.set(reason, (this.failures.get(reason) ?? 0) + 1);
  }

  private onSecure(socket: TLSSocket, secure: SecureHandler): void {
    const auth = this.settings.client_auth;
    let subject: string | null = null;
    if (auth !== undefined) {
      if (socket.authorized) subject = rfc4514(socket.getPeerX509Certificate()?.subject ?? '');
      else if (auth.mode === 'required') {
        this.fail('client_certificate');
        const reason = socket.getPeerX509Certificate() === undefined ? 'no client certificate' : String(socket.authorizationError);
        this.logger.debug({ listener: this.name, reason, client: socket.remoteAddress }, 'client certificate refused');
        socket.destroy();
        return;
      }
    }
    const version = socket.getProtocol() ?? 'unknown';
    this.versions.set(version, (this.versions.get(version) ?? 0) + 1);
    setConnectionTls(socket, {
      version,
      alpn: socket.alpnProtocol === false ? null : socket.alpnProtocol,
      // As the ClientHello reader names it (a fully qualified name's trailing dot is the same host), for the access log and a v2 PROXY header's AUTHORITY.
      serverName: typeof socket.servername === 'string' ? socket.servername.toLowerCase().replace(/\.$/, '') : null,
      cipher: socket.getCipher()?.standardName ?? '',
      clientSubject: subject,
    });
    // Node keeps the wrapped socket on the TLS handle (lib/_tls_wrap.js, `_parentWrap`).
    const raw = (socket as TLSSocket & { _handle?: { _parentWrap?: Socket } | null })._handle?._parentWrap;
    secure(socket, raw ?? null);
  }

  /** An ACME TLS-ALPN-01 challenge certificate for `domain` (null removes it). Throws CertificateError when unusable. */
  setAlpnChallenge(domain: string, pair: { cert: string; key: string } | null): void {
    const name = domain.toLowerCase();
    if (pair === null) {
      this.challenges.delete(name);
      return;
    }
    this.challenges.set(name, tls.createSecureContext({ minVersion: 'TLSv1.2', cert: pair.cert, key: pair.key }));
    this.challengeServer ??= tls
      .createServer({ ALPNProtocols: [ACME_TLS_ALPN], minVersion: 'TLSv1.2', handshakeTimeout: this.settings.handshake_timeout, SNICallback: (servername, cb) => cb(null, this.challenges.get(servername.toLowerCase())) }, (s) => s.end())
      .on('tlsClientError', (_err: Error, socket: TLSSocket) => socket.destroy());
  }

  /** Installs an ACME certificate for `domain` (new handshakes get it at once). */
  install(domain: string, pair: { cert: string; key: string }): LoadedCertificate {
    const loaded = this.store.install(domain, pair);
    this.applyDefault();
    this.logger.info({ listener: this.name, domain, serial: loaded.serial, not_after: loaded.notAfter.toISOString() }, `certificate for ${domain} installed (serial ${loaded.serial}, expires ${loaded.notAfter.toISOString()})`);
    return loaded;
  }

  /**
   * Reads the certificate files again (a file change, SIGHUP, the admin API): changed ones are
   * used by new handshakes, open connections keep theirs; a file that cannot be used keeps the
   * certificate loaded before and is logged with its path and why.
   */
  reloadCertificates(): CertificateReloadResult {
    const { changed, failed } = this.store.load(this.settings.certificates, false);
    if (changed.length > 0) this.applyDefault();
    for (const c of changed) this.logger.info({ listener: this.name, source: c.source, serial: c.serial }, `certificate ${c.source} reloaded (serial ${c.serial})`);
    for (const f of failed) this.logger.error({ listener: this.name, file: f.file, reason: f.reason }, `certificate file ${f.file}: ${f.reason}; the certificate loaded before stays in use`);
    return { listener: this.name, changed, failed };
  }

  /**
   * Takes reloaded settings (every configuration reload, SIGHUP included). Changed certificate
   * settings are read strictly (throws CertificateError and keeps everything as it was); unchanged
   * ones are read again from their files as `reloadCertificates` does. Profile, tickets, client CA
   * and timeouts apply to new handshakes.
   */
  update(settings: ListenerTlsSettings): void {
    const previous = this.settings;
    const previousCa = this.clientCa;
    try {
      this.clientCa = readClientCa(settings);
      this.settings = settings;
      this.store.reconfigure(this.contextOptions());
      if (JSON.stringify(previous.certificates) !== JSON.stringify(settings.certificates)) this.store.load(settings.certificates, true);
      else this.reloadCertificates();
    } catch (err) {
      this.settings = previous;
      this.clientCa = previousCa;
      this.store.reconfigure(this.contextOptions());
      throw err;
    }
    // Asking for client certificates and the handshake deadline are per server: a new one takes the next connections.
    if (previous.client_auth?.mode !== settings.client_auth?.mode || previous.handshake_timeout !== settings.handshake_timeout) this.server = this.handshakeServer();
    this.applyDefault();
    if (previous.session_tickets !== settings.session_tickets || previous.ticket_key_rotation !== settings.ticket_key_rotation) this.startRotation();
    this.unwatch();
    if (settings.watch) this.watch();
  }

  /** Watches the directories of the certificate files (a renamed-over file is seen too). */
  private watch(): void {
    const dirs = new Set(this.store.files().map((f) => path.dirname(path.resolve(f))));
    for (const dir of dirs) {
      try {
        // Any change in the directory: renewals that swap a symlink (Kubernetes secrets' `..data`) never name the file itself.
        // Unchanged certificates are kept as they are, so a change elsewhere in the directory costs one read.
        const watcher = fs.watch(dir, { persistent: false }, () => {
          if (this.watchTimer !== null) clearTimeout(this.watchTimer);
          this.watchTimer = setTimeout(() => {
            this.watchTimer = null;
            try {
              this.reloadCertificates();
            } catch (err) {
              this.logger.error({ listener: this.name, err: (err as Error).message }, `reading certificate files failed: ${(err as Error).message}; the certificates loaded before stay`);
            }
          }, WATCH_DEBOUNCE_MS);
          this.watchTimer.unref();
        });
        watcher.on('error', (err) => this.logger.warn({ listener: this.name, dir, err: err.message }, `cannot watch ${dir} for certificate changes; SIGHUP or the admin API reload them`));
        this.watchers.push(watcher);
      } catch (err) {
        this.logger.warn({ listener: this.name, dir, err: (err as Error).message }, `cannot watch ${dir} for certificate changes; SIGHUP or the admin API reload them`);
      }
    }
  }

  private unwatch(): void {
    for (const w of this.watchers) w.close();
    this.watchers = [];
    if (this.watchTimer !== null) clearTimeout(this.watchTimer);
    this.watchTimer = null;
  }

  /** Certificates served, for /status, metrics and the dashboard. */
  certificates(): CertificateStatus[] {
    return this.store.list(this.name, this.settings.expiry_warning);
  }

  /** Stops the timers and watchers. */
  stop(): void {
    if (this.rotation !== null) clearInterval(this.rotation);
    this.rotation = null;
    this.unwatch();
  }
}
