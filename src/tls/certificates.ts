/**
 * Certificates from PEM files: read, checked (key matches, chain order, dates) and described
 * (names, serial, days left) for the listener's store, `fulcrum check`, /status and metrics.
 * Parsing is node:crypto's X509Certificate; nothing here is on the request path.
 */
import fs from 'node:fs';
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import type { CertificateSettings } from '../config/schema.ts';

/** A certificate a listener can serve: the PEM it was read from and what it says. */
export interface LoadedCertificate {
  /** Where it came from: `cert` and `key` paths, or `acme:<domain>` for a managed one. */
  source: string;
  certPath: string | null;
  keyPath: string | null;
  /** The chain as PEM, leaf first. */
  cert: string;
  key: string;
  leaf: X509Certificate;
  chain: X509Certificate[];
  /** Server names it answers (the configured `names`, else the DNS names it covers, lower case). */
  names: string[];
  /** The DNS names and IP addresses the certificate covers (subjectAltName, else the CN). */
  covers: string[];
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** Shown when no other certificate matches. */
  isDefault: boolean;
}

/** Why a certificate cannot be used, naming the file: `tls/site.pem: the private key does not match the certificate`. */
export class CertificateError extends Error {
  readonly file: string;
  constructor(file: string, reason: string) {
    super(`${file}: ${reason}`);
    this.name = 'CertificateError';
    this.file = file;
  }
}

const certBlock = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
const keyBlock = /-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----[\s\S]*?-----END \1-----/g;

function readPem(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied (Fulcrum cannot read it)' : e.code === 'EISDIR' ? 'is a directory, not a PEM file' : e.message;
    throw new CertificateError(file, `cannot read: ${why}`);
  }
}

/** The names a certificate covers: subjectAltName DNS and IP entries, else its subject CN (lower case). */
export function coveredNames(cert: X509Certificate): string[] {
  const san = cert.subjectAltName;
  if (san !== undefined && san !== '') {
    const names: string[] = [];
    for (const part of san.split(/,\s*/)) {
      const m = /^(DNS|IP Address):(.*)$/.exec(part);
      if (m !== null) names.push(m[1] === 'DNS' ? m[2].toLowerCase() : m[2]);
    }
    return names;
  }
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  return cn !== undefined ? [cn.toLowerCase()] : [];
}

/**
 * Reads a certificate chain and its key from PEM text (`source` names it in errors). Throws
 * CertificateError: no certificate, no key, an encrypted key, a key that does not match.
 */
export function parseCertificate(certPem: string, keyPem: string, where: { cert: string; key: string }, names?: readonly string[], isDefault = false): LoadedCertificate {
  const certs = certPem.match(certBlock) ?? [];
  if (certs.length === 0) throw new CertificateError(where.cert, 'no certificate in it (expected a "-----BEGIN CERTIFICATE-----" block)');
  let chain: X509Certificate[];
  try {
    chain = certs.map((c) => new X509Certificate(c));
  } catch (err) {
    throw new CertificateError(where.cert, `not a readable certificate: ${(err as Error).message}`);
  }
  const keys = [...keyPem.matchAll(keyBlock)];
  if (keys.length === 0) throw new CertificateError(where.key, `no private key in it (expected a "-----BEGIN PRIVATE KEY-----" block${where.key === where.cert ? '; give `key` when the key is in its own file' : ''})`);
  if (keys.length > 1) throw new CertificateError(where.key, `${keys.length} private keys in it: keep the one of this certificate`);
  if (keys[0][1] === 'ENCRYPTED PRIVATE KEY') throw new CertificateError(where.key, 'the private key is encrypted with a passphrase; store it unencrypted with mode 0600 (openssl pkey -in key.pem -out plain.pem)');
  let key: KeyObject;
  try {
    key = createPrivateKey(keys[0][0]);
  } catch (err) {
    throw new CertificateError(where.key, `not a readable private key: ${(err as Error).message}`);
  }
  const leaf = chain[0];
  if (!leaf.checkPrivateKey(key)) {
    const other = chain.findIndex((c) => c.checkPrivateKey(key));
    throw new CertificateError(
      where.key,
      other > 0 ? `the private key belongs to certificate ${other + 1} of ${where.cert}, not the first: put the server's certificate first` : `the private key does not match the certificate in ${where.cert} (subject ${oneLine(leaf.subject)})`,
    );
  }
  const covers = coveredNames(leaf);
  return {
    source: where.cert === where.key ? where.cert : `${where.cert} + ${where.key}`,
    certPath: where.cert,
    keyPath: where.key,
    cert: certs.join('\n') + '\n',
    key: keys[0][0] + '\n',
    leaf,
    chain,
    names: names !== undefined && names.length > 0 ? names.map((n) => n.toLowerCase()) : covers.filter((n) => !/^[\d.]+$|:/.test(n)),
    covers,
    serial: leaf.serialNumber,
    notBefore: new Date(leaf.validFrom),
    notAfter: new Date(leaf.validTo),
    isDefault,
  };
}

/** Reads one configured certificate (`cert`, and `key` or the key in `cert`). Throws CertificateError naming the file. */
export function readCertificate(settings: CertificateSettings): LoadedCertificate {
  const certPem = readPem(settings.cert);
  const keyPath = settings.key ?? settings.cert;
  const keyPem = settings.key === undefined ? certPem : readPem(settings.key);
  return parseCertificate(certPem, keyPem, { cert: settings.cert, key: keyPath }, settings.names, settings.default);
}

function oneLine(dn: string): string {
  return dn.split('\n').join(', ');
}

/** A finding of `fulcrum check` about a certificate: an error stops a start, a warning does not. */
export interface CertificateFinding {
  level: 'error' | 'warning' | 'info';
  message: string;
}

/**
 * What `fulcrum check` says of a readable certificate: the names it covers and its dates, the
 * chain order, expiry (error when expired, warning within `warnWithinMs`), configured names it
 * does not cover, and a leaf that is a CA.
 */
export function inspectCertificate(cert: LoadedCertificate, warnWithinMs: number, now = Date.now()): CertificateFinding[] {
  const findings: CertificateFinding[] = [];
  const days = Math.floor((cert.notAfter.getTime() - now) / 86_400_000);
  findings.push({ level: 'info', message: `covers ${cert.covers.join(', ') || '(no names)'}; serial ${cert.serial}; valid ${cert.notBefore.toISOString().slice(0, 10)} to ${cert.notAfter.toISOString().slice(0, 10)} (${days} days left); issuer ${oneLine(cert.leaf.issuer)}` });
  if (cert.notAfter.getTime() <= now) findings.push({ level: 'error', message: `expired on ${cert.notAfter.toISOString()}: clients refuse it` });
  else if (cert.notAfter.getTime() - now <= warnWithinMs) findings.push({ level: 'warning', message: `expires in ${days} days (${cert.notAfter.toISOString()})` });
  if (cert.notBefore.getTime() > now) findings.push({ level: 'error', message: `not valid before ${cert.notBefore.toISOString()} (is the clock right?)` });
  if (cert.leaf.ca) findings.push({ level: 'warning', message: 'the first certificate is a CA certificate, not a server certificate: put the server\'s certificate first' });
  for (let i = 0; i + 1 < cert.chain.length; i++) {
    if (!cert.chain[i].checkIssued(cert.chain[i + 1])) {
      const issuer = cert.chain.findIndex((c) => cert.chain[i].checkIssued(c));
      findings.push({
        level: 'error',
        message: `chain out of order: certificate ${i + 2} (${oneLine(cert.chain[i + 1].subject)}) did not issue certificate ${i + 1} (${oneLine(cert.chain[i].subject)})${issuer >= 0 ? `; certificate ${issuer + 1} did: order them leaf first, each followed by its issuer` : ''}`,
      });
      break;
    }
  }
  if (cert.chain.length === 1 && !cert.leaf.checkIssued(cert.leaf)) findings.push({ level: 'info', message: 'no intermediate certificates in the file: fine if the CA signs directly, else clients may fail to build the chain' });
  const uncovered = cert.names.filter((n) => !cert.covers.some((c) => nameMatches(c, n)));
  if (uncovered.length > 0) findings.push({ level: 'warning', message: `names ${uncovered.join(', ')} are configured but not covered by the certificate: clients asking for them will refuse it` });
  return findings;
}

/** Whether certificate name `pattern` ("a.example.com" or "*.example.com") covers host `name` (RFC 6125: one label for a wildcard). */
export function nameMatches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase();
  const n = name.toLowerCase();
  if (p === n) return true;
  if (!p.startsWith('*.')) return false;
  const dot = n.indexOf('.');
  return dot > 0 && n.slice(dot + 1) === p.slice(2);
}
