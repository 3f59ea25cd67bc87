/**
 * A test CA made by the tests (never committed): leaves for 127.0.0.1 and test names, expired
 * and wrong-name ones, client certificates, written to a temporary directory that the test
 * removes. One CA per test file is plenty (making keys costs a few milliseconds).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type { TestContext } from 'node:test';
import { makeCertificate, type CertificateRequest, type PemPair } from '../../src/tls/make-certificate.ts';
import { startBackend, startBalancer, type TestBalancer } from './servers.ts';

/** A certificate written to files: `cert` (chain), `key`, and `both` (chain then key in one file). */
export interface CertFiles extends PemPair {
  certPath: string;
  keyPath: string;
  bothPath: string;
  /** Serial number, hex upper case, as Node's X509Certificate shows it. */
  serial: string;
}

/** A CA for one test file: its certificate file, and leaves it signs. */
export interface TestCa {
  dir: string;
  ca: PemPair;
  caPath: string;
  /** A leaf signed by the CA (`names` default ["localhost", "127.0.0.1"]), written under `name`. */
  issue(name: string, request?: CertificateRequest): Promise<CertFiles>;
  /** A self-signed leaf (no CA vouches for it). */
  selfSigned(name: string, request?: CertificateRequest): Promise<CertFiles>;
  /** Writes a PEM pair under `name` (replacing the files in place, as a renewal would). */
  write(name: string, pair: PemPair): CertFiles;
}

/** A new CA in a temporary directory removed after the test. */
export async function makeTestCa(t: TestContext, commonName = 'Fulcrum Test CA'): Promise<TestCa> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-tls-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ca = await makeCertificate({ commonName, ca: true, days: 30 });
  const caPath = path.join(dir, 'ca.pem');
  fs.writeFileSync(caPath, ca.cert);
  const write = (name: string, pair: PemPair): CertFiles => {
    const certPath = path.join(dir, `${name}.crt`);
    const keyPath = path.join(dir, `${name}.key`);
    const bothPath = path.join(dir, `${name}.pem`);
    // Written aside and renamed: a watcher never reads half a file.
    const put = (file: string, text: string): void => {
      fs.writeFileSync(`${file}.tmp`, text, { mode: 0o600 });
      fs.renameSync(`${file}.tmp`, file);
    };
    put(certPath, pair.cert);
    put(keyPath, pair.key);
    put(bothPath, pair.cert + pair.key);
    return { ...pair, certPath, keyPath, bothPath, serial: new X509Certificate(pair.cert).serialNumber };
  };
  return {
    dir,
    ca,
    caPath,
    write,
    async issue(name, request = {}) {
      return write(name, await makeCertificate({ names: ['localhost', '127.0.0.1'], ...request, issuer: ca }));
    },
    async selfSigned(name, request = {}) {
      return write(name, await makeCertificate({ names: ['localhost', '127.0.0.1'], ...request }));
    },
  };
}

/** What a TLS client saw of the handshake: the peer certificate's serial and names, version, ALPN. */
export interface Handshake {
  serial: string;
  subject: string;
  altNames: string;
  protocol: string | null;
  alpn: string | false | null;
  authorized: boolean;
  authorizationError: string | null;
}

/**
 * Connects with TLS to 127.0.0.1:`port` (SNI `servername` unless it is undefined), completes
 * the handshake and closes. Rejects on a handshake error (with OpenSSL's reason).
 */
export function handshake(port: number, options: tls.ConnectionOptions = {}): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      const peer = socket.getPeerCertificate();
      resolve({
        serial: peer.serialNumber,
        subject: String(peer.subject?.CN ?? ''),
        altNames: peer.subjectaltname ?? '',
        protocol: socket.getProtocol(),
        alpn: socket.alpnProtocol,
        authorized: socket.authorized,
        authorizationError: socket.authorizationError === null ? null : String(socket.authorizationError),
      });
      socket.end();
    });
    socket.setTimeout(5000, () => socket.destroy(new Error('handshake timed out')));
    socket.on('error', reject);
  });
}

/** An HTTPS GET through Node's https client, trusting `ca`; resolves with status, headers and body. */
export function httpsGet(url: string, options: https.RequestOptions = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string; socket: tls.TLSSocket }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { agent: false, ...options }, (res) => {
      // Taken now: a keep-alive agent takes the socket back before 'end'.
      const socket = res.socket as tls.TLSSocket;
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body, socket }));
      res.on('error', reject);
    });
    req.setTimeout(5000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

/** An https balancer (one listener, a leaf of a new test CA) in front of a backend that answers `ok`. */
export interface HttpsSite {
  ca: TestCa;
  /** The listener's certificate (`site.crt`, `site.key`: replace them to renew). */
  site: CertFiles;
  lb: TestBalancer;
}

/**
 * Starts an https listener on 127.0.0.1:0 with one certificate from a new test CA, `tls` and
 * `listener` settings merged in, and a pool of one backend answering `ok`; closed after the test.
 */
export async function startHttpsSite(t: TestContext, options: { tls?: Record<string, unknown>; listener?: Record<string, unknown>; config?: Record<string, unknown> } = {}): Promise<HttpsSite> {
  const ca = await makeTestCa(t);
  const site = await ca.issue('site');
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', ...options.listener, tls: { certificates: [{ cert: site.certPath, key: site.keyPath }], ...options.tls } }],
    pools: { web: { upstreams: [backend.url] } },
    ...options.config,
  } as never);
  return { ca, site, lb };
}
