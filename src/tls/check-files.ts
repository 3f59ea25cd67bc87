/**
 * The TLS files a configuration names (listener certificates and keys, client CAs, upstream CAs
 * and client certificates, the ACME directory's CA), read and checked before the configuration
 * is used: at start, on every reload (a reload with an unusable file is refused, the running
 * configuration stays), and by `fulcrum check`, which also reports what each certificate says.
 */
import fs from 'node:fs';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type { FulcrumConfig } from '../config/schema.ts';
import { formatPath, type LoadedConfig } from '../config/load.ts';
import { ConfigError, type ConfigProblem } from '../errors.ts';
import { CertificateError, inspectCertificate, readCertificate, type CertificateFinding } from './certificates.ts';
import { readUpstreamTls, UpstreamTlsFileError } from '../transport/upstream-tls.ts';

type Path = (string | number)[];

/** A certificate of a listener and what `fulcrum check` says of it. */
export interface CertificateReport {
  path: string;
  file: string;
  findings: CertificateFinding[];
}

/** Checks that `file` is a readable PEM file of CA certificates; the problem in words, or undefined. */
function caProblem(file: string): string | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return `${file}: cannot read: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (err as Error).message}`;
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) return `${file}: no certificate in it (expected "-----BEGIN CERTIFICATE-----" blocks)`;
  for (const b of blocks) {
    try {
      new X509Certificate(b);
    } catch (err) {
      return `${file}: not a readable certificate: ${(err as Error).message}`;
    }
  }
  return undefined;
}

/**
 * Reads every TLS file of `config`. Returns the problems (placed with `placeOf` when the
 * configuration came from a file) and, for each listener certificate, what it says.
 */
export function checkTlsFiles(config: FulcrumConfig, placeOf?: LoadedConfig['placeOf'], now = Date.now()): { problems: ConfigProblem[]; reports: CertificateReport[] } {
  const problems: ConfigProblem[] = [];
  const reports: CertificateReport[] = [];
  const place = (path: Path, message: string): ConfigProblem => {
    const at = placeOf?.(path) ?? { file: '<inline>', line: 0, column: 0, path: formatPath(path), message: '' };
    return { ...at, path: formatPath(path), message };
  };
  config.listeners.forEach((l, i) => {
    if (l.tls === undefined) return;
    l.tls.certificates.forEach((c, j) => {
      const base: Path = ['listeners', i, 'tls', 'certificates', j];
      try {
        const loaded = readCertificate(c);
        try {
          tls.createSecureContext({ cert: loaded.cert, key: loaded.key });
        } catch (err) {
          throw new CertificateError(c.cert, `OpenSSL refuses to serve it: ${(err as Error).message}`);
        }
        const findings = inspectCertificate(loaded, l.tls!.expiry_warning, now);
        reports.push({ path: formatPath(base), file: c.cert, findings });
        // Expired or out-of-order chains still start (clients will say so); check reports them as errors.
      } catch (err) {
        if (!(err instanceof CertificateError)) throw err;
        problems.push(place([...base, err.file === c.key ? 'key' : 'cert'], err.message));
      }
    });
    if (l.tls.client_auth !== undefined) {
      const problem = caProblem(l.tls.client_auth.ca);
      if (problem !== undefined) problems.push(place(['listeners', i, 'tls', 'client_auth', 'ca'], problem));
    }
  });
  // Upstream TLS files are read the way a pool build reads them (one reader, one set of messages).
  for (const [name, pool] of Object.entries(config.pools)) {
    try {
      readUpstreamTls(pool.tls);
    } catch (err) {
      if (!(err instanceof UpstreamTlsFileError)) throw err;
      problems.push(place(['pools', name, 'tls', err.key], err.message.slice(`tls.${err.key}: `.length)));
    }
  }
  if (config.acme?.directory_ca !== undefined) {
    const problem = caProblem(config.acme.directory_ca);
    if (problem !== undefined) problems.push(place(['acme', 'directory_ca'], problem));
  }
  return { problems, reports };
}

/** Throws ConfigError when a TLS file of `config` cannot be used. */
export function assertTlsFiles(config: FulcrumConfig, placeOf?: LoadedConfig['placeOf']): void {
  const { problems } = checkTlsFiles(config, placeOf);
  if (problems.length > 0) throw new ConfigError(problems);
}
