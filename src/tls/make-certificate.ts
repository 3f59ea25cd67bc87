/**
 * Making X.509 certificates: a self-signed one for the demo, and a small CA with leaves for
 * tests. Built on @peculiar/x509 (WebCrypto; acme-client uses it too); loaded only where certificates are made, never
 * on the request path. Keys are ECDSA P-256 unless RSA is asked for.
 */
import { webcrypto } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
import type * as X509 from '@peculiar/x509';

/** A certificate and its private key, both PEM. */
export interface PemPair {
  cert: string;
  key: string;
}

/** What to put in a certificate. */
export interface CertificateRequest {
  /** Subject common name (default: the first name, or "Fulcrum"). */
  commonName?: string;
  /** DNS names and IP addresses it covers (subjectAltName); none for a CA or a client certificate. */
  names?: readonly string[];
  /** Valid from (default: an hour ago, for clocks a little behind). */
  notBefore?: Date;
  /** Valid until (default: `days` after notBefore). */
  notAfter?: Date;
  /** Lifetime in days when notAfter is not given (default 90). */
  days?: number;
  /** A CA certificate (basicConstraints CA:true, keyCertSign) (default false). */
  ca?: boolean;
  /** Extended key usage: "server" (default), "client" or both. */
  usage?: 'server' | 'client' | 'both';
  /** The signer (default: self-signed). */
  issuer?: PemPair;
  /** The key algorithm (default "ecdsa", P-256). */
  keyType?: 'ecdsa' | 'rsa';
  /** The subject's organisation (O=), shown in mTLS subjects. */
  organization?: string;
}

let x509: typeof X509 | null = null;
async function library(): Promise<typeof X509> {
  if (x509 === null) {
    // @peculiar/x509's dependency injection (tsyringe) needs the Reflect metadata polyfill first.
    await import('reflect-metadata');
    x509 = await import('@peculiar/x509');
    x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  }
  return x509;
}

const ecdsa = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const rsa = { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.match(/.{1,64}/g)!.join('\n')}\n-----END ${label}-----\n`;
}

/** Imports a PKCS#8 PEM private key for signing, with the algorithm its certificate's key has. */
async function importSigner(keyPem: string): Promise<{ key: CryptoKey; algorithm: typeof ecdsa | typeof rsa }> {
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  for (const algorithm of [ecdsa, rsa]) {
    try {
      const key = await webcrypto.subtle.importKey('pkcs8', der, algorithm, false, ['sign']);
      return { key: key as CryptoKey, algorithm };
    } catch {
      // not this algorithm
    }
  }
  throw new Error('the issuer key is neither an ECDSA P-256 nor an RSA PKCS#8 key');
}

/** A new random serial number (hex, positive, 16 bytes). */
function serial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] &= 0x7f;
  bytes[0] |= 0x10;
  return Buffer.from(bytes).toString('hex');
}

/**
 * A new certificate and key (PEM, PKCS#8 key). Throws when the issuer's key cannot be read.
 * Names that parse as IP addresses go in as IP subjectAltNames, the rest as DNS names.
 */
export async function makeCertificate(request: CertificateRequest = {}): Promise<PemPair> {
  const lib = await library();
  const { isIP } = await import('node:net');
  const algorithm = request.keyType === 'rsa' ? rsa : ecdsa;
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify'])) as CryptoKeyPair;
  const names = request.names ?? [];
  const notBefore = request.notBefore ?? new Date(Date.now() - 3_600_000);
  const notAfter = request.notAfter ?? new Date(notBefore.getTime() + (request.days ?? 90) * 86_400_000);
  const cn = (request.commonName ?? names[0] ?? 'Fulcrum').replace(/[,=+<>#;"\\]/g, ' ');
  // Most significant first, as CAs write them (O before CN): RFC 4514 text reverses it to "CN=...,O=...".
  const subject = `${request.organization !== undefined ? `O=${request.organization.replace(/[,=+<>#;"\\]/g, ' ')}, ` : ''}CN=${cn}`;
  const extensions: X509.Extension[] = [];
  if (request.ca === true) {
    extensions.push(new lib.BasicConstraintsExtension(true, undefined, true));
    extensions.push(new lib.KeyUsagesExtension(lib.KeyUsageFlags.keyCertSign | lib.KeyUsageFlags.cRLSign | lib.KeyUsageFlags.digitalSignature, true));
  } else {
    extensions.push(new lib.BasicConstraintsExtension(false, undefined, true));
    extensions.push(new lib.KeyUsagesExtension(lib.KeyUsageFlags.digitalSignature | (request.keyType === 'rsa' ? lib.KeyUsageFlags.keyEncipherment : 0), true));
    const usage = request.usage ?? 'server';
    const ekus = usage === 'both' ? [lib.ExtendedKeyUsage.serverAuth, lib.ExtendedKeyUsage.clientAuth] : [usage === 'client' ? lib.ExtendedKeyUsage.clientAuth : lib.ExtendedKeyUsage.serverAuth];
    extensions.push(new lib.ExtendedKeyUsageExtension(ekus, false));
  }
  if (names.length > 0) {
    extensions.push(new lib.SubjectAlternativeNameExtension(names.map((n) => (isIP(n) !== 0 ? { type: 'ip' as const, value: n } : { type: 'dns' as const, value: n })), false));
  }
  extensions.push(await lib.SubjectKeyIdentifierExtension.create(keys.publicKey));
  let cert: X509.X509Certificate;
  if (request.issuer === undefined) {
    cert = await lib.X509CertificateGenerator.createSelfSigned({ serialNumber: serial(), name: subject, notBefore, notAfter, signingAlgorithm: algorithm, keys, extensions });
  } else {
    const issuer = new lib.X509Certificate(request.issuer.cert);
    const signer = await importSigner(request.issuer.key);
    extensions.push(await lib.AuthorityKeyIdentifierExtension.create(issuer));
    cert = await lib.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject,
      issuer: issuer.subject,
      notBefore,
      notAfter,
      signingAlgorithm: signer.algorithm,
      publicKey: keys.publicKey,
      signingKey: signer.key,
      extensions,
    });
  }
  const key = pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  return { cert: cert.toString('pem') + '\n', key };
}
