/**
 * Server-side TLS profiles after Mozilla's "Server Side TLS" guidelines (version 5.7,
 * https://wiki.mozilla.org/Security/Server_Side_TLS): "intermediate" (TLS 1.2 and 1.3, forward
 * secret AEAD ciphers only, the client's cipher preference) and "modern" (TLS 1.3 only). The
 * DHE suites of Mozilla's intermediate list are left out: every client that has them also has
 * ECDHE, and they would need Diffie-Hellman parameters.
 */
import type { SecureVersion } from 'node:tls';

/** What a profile sets on every secure context of a listener. */
export interface TlsProfile {
  minVersion: SecureVersion;
  maxVersion: SecureVersion;
  /** OpenSSL cipher string: TLS 1.3 suites and TLS 1.2 ciphers together, as Node takes them. */
  ciphers: string;
  /** Key exchange groups, most wanted first. */
  ecdhCurve: string;
  /** Whether the server's cipher order wins over the client's. */
  honorCipherOrder: boolean;
}

const tls13 = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';
const tls12 = 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305';

/** The profiles by the names `tls.profile` takes. */
export const tlsProfiles: Readonly<Record<'intermediate' | 'modern', TlsProfile>> = {
  intermediate: { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.3', ciphers: `${tls13}:${tls12}`, ecdhCurve: 'X25519:prime256v1:secp384r1', honorCipherOrder: false },
  modern: { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: tls13, ecdhCurve: 'X25519:prime256v1:secp384r1', honorCipherOrder: false },
};
