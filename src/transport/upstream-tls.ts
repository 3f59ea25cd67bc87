/**
 * TLS toward a pool's `https://` upstreams, shared by every transport and by the health checks:
 *
 * - `readUpstreamTls` reads `pools.NAME.tls` (the PEM files) once, when the pool is built (at
 *   start, and by a reload that changes the pool), into one SecureContext: TLS 1.2 and 1.3,
 *   the CA file or the system's CAs, the client certificate. A file that cannot be used throws
 *   an `UpstreamTlsFileError` naming the key and the path.
 * - `UpstreamTlsConnector` opens one client's sockets toward one upstream: SNI (the configured
 *   `server_name`, else the URL's host, never an IP address), verification on unless
 *   `insecure_skip_verify`, ALPN `http/1.1`, and the last TLS session of that upstream resumed
 *   by the next connect (a keep-alive miss then costs one round trip and no certificate work).
 * - `tlsFailureReason` says in words why a handshake failed (`certificate has expired`,
 *   `hostname mismatch: certificate covers DNS:a.test, not b.test`); src/proxy/status.ts turns
 *   it into `FUL_UPSTREAM_TLS`, the health checks into the reason of an unhealthy upstream.
 *
 * Nothing here runs for a plain `http://` upstream.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { createHash, X509Certificate } from 'node:crypto';
import type { UpstreamTlsSettings } from '../config/schema.ts';
import type { Upstream } from '../upstream/upstream.ts';

/** A pool's TLS toward its https upstreams, read once from its settings (`readUpstreamTls`). */
export interface UpstreamTls {
  /** The settings it was read from (paths as given). */
  readonly settings: UpstreamTlsSettings;
  /** `server_name`: SNI and the name certificates must cover; null: each upstream's own host. */
  readonly serverName: string | null;
  /** False with `insecure_skip_verify`: any certificate is accepted. */
  readonly rejectUnauthorized: boolean;
  /** CAs, client certificate and protocol versions (TLS 1.2 and up), built once. */
  readonly secureContext: tls.SecureContext;
  /**
   * Hex digest of the settings and of the files' contents: a part of each client's key in
   * ConnectionPools, so a pool rebuilt after a certificate file changed gets new connections.
   */
  readonly fingerprint: string;
}

/** Which `tls` key named a file that cannot be used. */
export type UpstreamTlsFileKey = 'ca' | 'cert' | 'key';

/**
 * A file of `pools.NAME.tls` that cannot be read or used. `key` and `path` say which (the
 * configuration loader turns them into a problem at the key's line); the message says both.
 */
export class UpstreamTlsFileError extends Error {
  readonly key: UpstreamTlsFileKey;
  readonly path: string;
  constructor(key: UpstreamTlsFileKey, path: string, message: string, cause?: unknown) {
    super(`tls.${key}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'UpstreamTlsFileError';
    this.key = key;
    this.path = path;
  }
}

const pemCertificate = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const pemPrivateKey = /-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----[\s\S]+?-----END \1-----/;

function readPem(key: UpstreamTlsFileKey, path: string): string {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.code === 'EISDIR' ? 'is a directory' : e.message;
    throw new UpstreamTlsFileError(key, path, `cannot read ${path}: ${why}`, err);
  }
}

/** The PEM certificates of `text`, each checked to parse; throws naming `key` and `path` when there is none or one is broken. */
function certificates(key: UpstreamTlsFileKey, path: string, text: string): string[] {
  const found = text.match(pemCertificate) ?? [];
  if (found.length === 0) throw new UpstreamTlsFileError(key, path, `${path} holds no PEM certificate ("-----BEGIN CERTIFICATE-----")`);
  for (const [i, pem] of found.entries()) {
    try {
      new X509Certificate(pem);
    } catch (err) {
      throw new UpstreamTlsFileError(key, path, `certificate ${i + 1} in ${path} cannot be parsed: ${(err as Error).message}`, err);
    }
  }
  return found;
}

let defaultRoots: string[] | null = null;

/**
 * The CAs trusted when no `ca` file is given: Node's own list (Mozilla's roots, plus
 * NODE_EXTRA_CA_CERTS) and the operating system's store (/etc/ssl/certs on Debian), read once.
 */
function systemRoots(): string[] {
  if (defaultRoots !== null) return defaultRoots;
  const roots = new Set(tls.getCACertificates('default'));
  try {
    for (const pem of tls.getCACertificates('system')) roots.add(pem);
  } catch {
    // No system store readable: Node's own list stays.
  }
  defaultRoots = [...roots];
  return defaultRoots;
}

let defaultContext: tls.SecureContext | null = null;

/**
 * Reads a pool's `tls` settings (its PEM files) into the options every connection to its
 * https upstreams uses. Paths are used as given (the loader makes them absolute, relative to
 * the configuration file). Without `ca` the system's CAs are trusted (Node's list and the OS
 * store, built once per process and shared); without `cert` no client certificate is shown;
 * `key` defaults to the key inside `cert`. Reads files, so call it when a pool is built, never
 * per request.
 *
 * Throws `UpstreamTlsFileError` (key, path) when a file cannot be read, holds no certificate
 * (`ca`, `cert`) or no private key (`key`, or `cert` without `key`), when `key` is given
 * without `cert`, or when the key does not match the certificate.
 */
export function readUpstreamTls(settings: UpstreamTlsSettings): UpstreamTls {
  const hash = createHash('sha256').update(JSON.stringify(settings));
  let ca: string[] | null = null;
  if (settings.ca !== undefined) {
    const text = readPem('ca', settings.ca);
    ca = certificates('ca', settings.ca, text);
    hash.update(text);
  }
  let cert: string | null = null;
  let key: string | null = null;
  if (settings.cert !== undefined) {
    const text = readPem('cert', settings.cert);
    cert = certificates('cert', settings.cert, text).join('\n');
    hash.update(text);
    const keyPath = settings.key ?? settings.cert;
    const keyText = settings.key !== undefined ? readPem('key', settings.key) : text;
    if (settings.key !== undefined) hash.update(keyText);
    const found = pemPrivateKey.exec(keyText);
    if (found === null) {
      throw settings.key !== undefined
        ? new UpstreamTlsFileError('key', keyPath, `${keyPath} holds no PEM private key ("-----BEGIN PRIVATE KEY-----")`)
        : new UpstreamTlsFileError('cert', keyPath, `${keyPath} holds no private key: give it in tls.key, or put it in this file after the certificate`);
    }
    if (found[1] === 'ENCRYPTED PRIVATE KEY') throw new UpstreamTlsFileError(settings.key !== undefined ? 'key' : 'cert', keyPath, `the private key in ${keyPath} is encrypted (a passphrase): Fulcrum needs it unencrypted`);
    key = found[0];
  } else if (settings.key !== undefined) {
    throw new UpstreamTlsFileError('key', settings.key, 'a key without a certificate: give tls.cert too (the client certificate the key belongs to)');
  }
  let secureContext: tls.SecureContext;
  if (ca === null && cert === null) secureContext = defaultContext ??= tls.createSecureContext({ ca: systemRoots(), minVersion: 'TLSv1.2' });
  else {
    try {
      secureContext = tls.createSecureContext({ ca: ca ?? systemRoots(), minVersion: 'TLSv1.2', ...(cert !== null ? { cert, key: key! } : {}) });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const path = settings.key ?? settings.cert ?? settings.ca!;
      const mismatch = /mismatch/i.test(e.message) || e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH';
      throw new UpstreamTlsFileError(
        settings.key !== undefined ? 'key' : 'cert',
        path,
        mismatch ? `the private key in ${path} does not belong to the certificate in ${settings.cert}` : `cannot use ${path}: ${e.message}`,
        err,
      );
    }
  }
  return {
    settings,
    serverName: settings.server_name ?? null,
    rejectUnauthorized: !settings.insecure_skip_verify,
    secureContext,
    fingerprint: hash.digest('hex').slice(0, 16),
  };
}

/** The host to connect to: the upstream's, without IPv6 brackets. */
export function connectHost(upstream: Upstream): string {
  return upstream.connectHost;
}

/**
 * The name the upstream's certificate must cover: `server_name` if set, else the upstream's
 * host (an IP address too: its certificate must then cover that address).
 */
export function verifiedNameOf(upstream: Upstream, t: UpstreamTls): string {
  return t.serverName ?? connectHost(upstream);
}

/** The SNI to send: the verified name, or null when it is an IP address (RFC 6066; Node refuses one). */
export function serverNameOf(upstream: Upstream, t: UpstreamTls): string | null {
  const name = verifiedNameOf(upstream, t);
  return net.isIP(name) === 0 ? name : null;
}

/**
 * `tls.connect` options toward `upstream` (no session): SNI, verification, ALPN http/1.1, the
 * pool's context. Node checks the certificate against `servername`, else `host`; a
 * `server_name` that is an IP address is sent as no SNI and checked by `checkServerIdentity`.
 */
export function upstreamTlsOptions(upstream: Upstream, t: UpstreamTls): tls.ConnectionOptions {
  const verified = verifiedNameOf(upstream, t);
  const servername = serverNameOf(upstream, t);
  return {
    host: connectHost(upstream),
    port: upstream.port,
    ...(servername !== null ? { servername } : {}),
    ...(servername === null && t.serverName !== null ? { checkServerIdentity: (_host: string, cert: tls.PeerCertificate) => tls.checkServerIdentity(verified, cert) } : {}),
    secureContext: t.secureContext,
    rejectUnauthorized: t.rejectUnauthorized,
    ALPNProtocols: ['http/1.1'],
  };
}

const kConnector = Symbol('fulcrum.tls.connector');
type ConnectorSocket = tls.TLSSocket & { [kConnector]: UpstreamTlsConnector };

function onSession(this: ConnectorSocket, session: Buffer): void {
  this[kConnector].session = session;
}

function onSecure(this: ConnectorSocket): void {
  const connector = this[kConnector];
  if (this.isSessionReused()) connector.resumed++;
  else connector.fullHandshakes++;
}

/**
 * Opens TLS sockets toward one https upstream for one client, and keeps the last session the
 * upstream gave (TLS 1.3 tickets, TLS 1.2 sessions): the next connect offers it, so a new
 * connection after a keep-alive miss resumes instead of verifying the chain again. A client's
 * key in ConnectionPools fixes the settings, so a session is only ever offered with the same
 * server name and CAs it was made with.
 */
export class UpstreamTlsConnector {
  private readonly options: tls.ConnectionOptions;
  /** The last session the upstream gave (undefined: none yet). */
  session: Buffer | undefined = undefined;
  /** Handshakes that resumed a session, and full ones (for tests and status). */
  resumed = 0;
  fullHandshakes = 0;

  /** `alpn`: the protocols offered (default `http/1.1`; the HTTP/2 client offers `h2`). */
  constructor(upstream: Upstream, t: UpstreamTls, alpn: readonly string[] = ['http/1.1']) {
    const options = upstreamTlsOptions(upstream, t);
    this.options = alpn.length === 1 && alpn[0] === 'http/1.1' ? options : { ...options, ALPNProtocols: [...alpn] };
  }

  /**
   * A new TLS socket, connecting (listen for `secureConnect`, never `connect`). With `prelude`
   * (a PROXY protocol header) those bytes go first on the TCP connection, in clear text, before
   * the ClientHello: where HAProxy's `send-proxy` and nginx's `proxy_protocol` on an ssl port
   * expect them. Throws what tls.connect throws synchronously.
   */
  connect(prelude: Buffer | null = null): tls.TLSSocket {
    let options = this.session === undefined ? this.options : { ...this.options, session: this.session };
    if (prelude !== null) {
      // Written while connecting: Node sends it on connect, ahead of the TLS layer's first write.
      const raw = net.connect({ host: this.options.host!, port: this.options.port!, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 });
      raw.write(prelude);
      options = { ...options, socket: raw };
    }
    const socket = tls.connect(options) as ConnectorSocket;
    socket[kConnector] = this;
    socket.on('session', onSession);
    socket.once('secureConnect', onSecure);
    return socket;
  }
}

// How a handshake failure reads, by the code Node or OpenSSL gives it.
const verifyReasons: Readonly<Record<string, string>> = {
  CERT_HAS_EXPIRED: 'certificate has expired',
  CERT_NOT_YET_VALID: 'certificate is not yet valid',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed certificate',
  SELF_SIGNED_CERT_IN_CHAIN: 'self-signed certificate in the chain: its root is not a trusted CA',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unknown issuer: no trusted CA signed the certificate (or the upstream does not send its intermediates)',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unknown issuer: no trusted CA signed the chain',
  UNABLE_TO_GET_ISSUER_CERT: 'unknown issuer',
  CERT_SIGNATURE_FAILURE: 'certificate signature does not verify',
  CERT_REVOKED: 'certificate revoked',
  CERT_UNTRUSTED: 'certificate not trusted',
  CERT_REJECTED: 'certificate rejected',
  INVALID_CA: 'a certificate in the chain is not a valid CA',
  INVALID_PURPOSE: 'certificate not meant for a TLS server (extended key usage)',
  PATH_LENGTH_EXCEEDED: 'chain longer than its CA allows',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'certificate has an invalid validity date',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'certificate has an invalid validity date',
  HOSTNAME_MISMATCH: 'hostname mismatch',
  IP_ADDRESS_MISMATCH: 'IP address mismatch',
};
const alertReasons: Readonly<Record<string, string>> = {
  ERR_SSL_WRONG_VERSION_NUMBER: 'the upstream does not speak TLS on this port (a plain http:// port?)',
  ERR_SSL_PACKET_LENGTH_TOO_LONG: 'the upstream does not speak TLS on this port (a plain http:// port?)',
  ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED: 'the upstream requires a client certificate (tls.cert)',
  ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: 'the upstream does not trust the client certificate (alert unknown_ca)',
  ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE: 'the upstream refused the client certificate (alert bad_certificate)',
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED: 'the upstream says the client certificate has expired',
  ERR_SSL_TLSV1_ALERT_ACCESS_DENIED: 'the upstream denied access (alert access_denied)',
  ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION: 'no TLS version in common (Fulcrum speaks TLS 1.2 and 1.3)',
  ERR_SSL_UNSUPPORTED_PROTOCOL: 'no TLS version in common (Fulcrum speaks TLS 1.2 and 1.3)',
  ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE: 'the upstream ended the handshake (alert handshake_failure: no cipher in common, or it wants a client certificate)',
  ERR_SSL_TLSV1_UNRECOGNIZED_NAME: 'the upstream does not serve this server name (alert unrecognized_name): see tls.server_name',
  ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL: 'no ALPN protocol in common (Fulcrum offers http/1.1)',
  ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR: 'the upstream had an internal TLS error (alert internal_error)',
};
/** Ways a connection ends without a TLS code: during a handshake they are the upstream giving up on it. */
const closedCodes = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

const kHandshake = Symbol('fulcrum.tls.handshake');

/** Marks `err` as ending a TLS handshake with an upstream (the transports do, before the connection was secure); returns it. */
export function duringHandshake<E>(err: E): E {
  if (err !== null && typeof err === 'object') (err as { [kHandshake]?: true })[kHandshake] = true;
  return err;
}

/** True for an error marked by `duringHandshake`. */
export function isHandshakeError(err: unknown): boolean {
  return err !== null && typeof err === 'object' && (err as { [kHandshake]?: true })[kHandshake] === true;
}

/**
 * Why a TLS connection to an upstream failed, in words with the code, e.g. `certificate has
 * expired (CERT_HAS_EXPIRED)`, `hostname mismatch: certificate covers DNS:a.test, not b.test
 * (ERR_TLS_CERT_ALTNAME_INVALID)`; null when `err` is no TLS failure. A verification error, an
 * alert (`ERR_SSL_*`) and a close or reset while `duringHandshake` marked it are TLS failures;
 * timeouts and refused connections are not (they keep their own codes).
 */
export function tlsFailureReason(err: unknown): string | null {
  if (err === null || typeof err !== 'object') return null;
  const e = err as NodeJS.ErrnoException & { reason?: string; host?: string; cert?: { subjectaltname?: string; subject?: { CN?: string } } };
  const code = typeof e.code === 'string' ? e.code : '';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const covers = e.cert?.subjectaltname || (e.cert?.subject?.CN ? `CN=${e.cert.subject.CN}` : 'no name');
    return `hostname mismatch: certificate covers ${covers}, not ${e.host ?? 'the upstream name'} (${code})`;
  }
  const verify = verifyReasons[code];
  if (verify !== undefined) return `${verify} (${code})`;
  if (code.startsWith('ERR_SSL_')) return `${alertReasons[code] ?? e.reason ?? code.slice(8).toLowerCase().replaceAll('_', ' ')} (${code})`;
  if (code.startsWith('ERR_TLS_')) return `${e.message} (${code})`;
  if (isHandshakeError(err) && (closedCodes.has(code) || e.message === 'socket hang up')) {
    return `the upstream closed the connection during the handshake (${code || e.message})`;
  }
  return null;
}
