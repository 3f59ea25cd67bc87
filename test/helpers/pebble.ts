/**
 * A real ACME server for integration tests: Debian's `pebble` (apt-get install pebble), with
 * `pebble-challtestsrv` as its DNS server so every name resolves to 127.0.0.1. Both run on
 * free loopback ports, pebble's own HTTPS certificate comes from the test CA of
 * test/helpers/tls.ts, and both are killed when the test ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { eventually } from './eventually.ts';
import { makeTestCa, type TestCa } from './tls.ts';

/** A running pebble and its DNS server. */
export interface Pebble {
  /** The ACME directory, `https://127.0.0.1:<port>/dir`. */
  directoryUrl: string;
  /** Pebble's management interface (roots, intermediates, certificate status), HTTPS. */
  managementUrl: string;
  /** The PEM file of the test CA that signs pebble's own HTTPS certificate (what `acme.directory_ca` names). */
  caPath: string;
  /** The test CA itself, for more certificates in the same test. */
  testCa: TestCa;
  /** The port pebble validates HTTP-01 challenges on (every name resolves to 127.0.0.1). */
  httpPort: number;
  /** The port pebble validates TLS-ALPN-01 challenges on. */
  tlsPort: number;
  /** The URL of pebble's issuing root certificate (management `/roots/0`); pebble makes a new one per run. */
  rootUrl: string;
  /** Pebble's issuing root, PEM (fetched from `rootUrl`). */
  root(): Promise<string>;
  /** The root fetched and written to a file in the test CA's directory; resolves with its path. */
  rootFile(): Promise<string>;
  /** A GET on pebble's management interface (or any https URL it serves), trusting the test CA. */
  fetch(url: string): Promise<{ status: number; body: string }>;
  /** What pebble and pebble-challtestsrv printed so far (for failure messages). */
  output(): string;
}

/** How to start pebble. */
export interface PebbleOptions {
  /** The port pebble sends HTTP-01 validations to (the server under test listens there). */
  httpPort: number;
  /** The port pebble sends TLS-ALPN-01 validations to. */
  tlsPort: number;
  /**
   * Extra environment for pebble. Set by default: PEBBLE_VA_NOSLEEP=1 (validate at once),
   * PEBBLE_WFE_NONCEREJECT=0 (no random badNonce), PEBBLE_AUTHZREUSE=0 (every order is validated
   * again, so a renewal really answers a challenge).
   */
  env?: Record<string, string>;
  /** The test CA for pebble's HTTPS certificate (default: a new one). */
  testCa?: TestCa;
  /** Lifetime of the certificates pebble issues, in seconds (default pebble's, 5 years). */
  certificateValidityPeriod?: number;
}

/** A TCP port nothing listens on right now on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** A port free for both UDP and TCP on 127.0.0.1 (a DNS server binds both); tries a few. */
async function freeDnsPort(): Promise<number> {
  for (let i = 0; i < 10; i++) {
    const socket = dgram.createSocket('udp4');
    const port = await new Promise<number>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, '127.0.0.1', () => resolve(socket.address().port));
    });
    const tcpFree = await new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    await new Promise<void>((resolve) => socket.close(() => resolve()));
    if (tcpFree) return port;
  }
  throw new Error('no port free for both UDP and TCP on 127.0.0.1 after 10 tries');
}

/** Spawns `command`, gathering its output into `out`; killed (and awaited) after the test. */
function run(t: TestContext, command: string, args: string[], env: NodeJS.ProcessEnv, out: string[]): ChildProcess {
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const name = path.basename(command);
  const keep = (d: Buffer): void => void out.push(`[${name}] ${d.toString()}`);
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  child.once('error', (err) => out.push(`[${name}] cannot run ${command} (apt-get install pebble): ${err.message}\n`));
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null) resolve();
    else child.once('close', () => resolve());
  });
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  return child;
}

/** A GET over HTTPS trusting `ca`, bounded in time. */
function httpsFetch(url: string, ca: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
      res.on('error', reject);
    });
    req.setTimeout(3000, () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}

/**
 * Starts pebble-challtestsrv (DNS only, every A query answered 127.0.0.1, no AAAA) and pebble
 * (ACME on a free port, validating on `httpPort` and `tlsPort`); resolves once the directory
 * answers (within 10 s), or rejects with both programs' output.
 */
export async function startPebble(t: TestContext, options: PebbleOptions): Promise<Pebble> {
  const testCa = options.testCa ?? (await makeTestCa(t, 'Pebble HTTPS Test CA'));
  const out: string[] = [];
  const output = (): string => out.join('');
  const [dnsPort, challtestManagementPort, acmePort, managementPort] = [await freeDnsPort(), await freePort(), await freePort(), await freePort()];

  const challtestsrv = run(
    t,
    '/usr/bin/pebble-challtestsrv',
    ['-dns01', `127.0.0.1:${dnsPort}`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `127.0.0.1:${challtestManagementPort}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', ''],
    process.env,
    out,
  );

  const certificate = await testCa.issue('pebble-https', { names: ['localhost', '127.0.0.1'] });
  const configPath = path.join(testCa.dir, 'pebble-config.json');
  const config = {
    pebble: {
      listenAddress: `127.0.0.1:${acmePort}`,
      managementListenAddress: `127.0.0.1:${managementPort}`,
      certificate: certificate.certPath,
      privateKey: certificate.keyPath,
      httpPort: options.httpPort,
      tlsPort: options.tlsPort,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
      ...(options.certificateValidityPeriod === undefined ? {} : { certificateValidityPeriod: options.certificateValidityPeriod }),
    },
  };
  fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
  const env = { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0', PEBBLE_AUTHZREUSE: '0', ...options.env };
  const pebble = run(t, '/usr/bin/pebble', ['-config', configPath, '-dnsserver', `127.0.0.1:${dnsPort}`, '-strict=false'], env, out);

  const directoryUrl = `https://127.0.0.1:${acmePort}/dir`;
  const managementUrl = `https://127.0.0.1:${managementPort}`;
  const fetch = (url: string): Promise<{ status: number; body: string }> => httpsFetch(url, testCa.ca.cert);
  try {
    await eventually(
      async () => {
        if (pebble.exitCode !== null || challtestsrv.exitCode !== null) throw new Error('exited');
        return (await fetch(directoryUrl)).status === 200 && (await fetch(`${managementUrl}/roots/0`)).status === 200;
      },
      { timeout: 10_000, interval: 25, what: 'pebble directory' },
    );
  } catch (err) {
    throw new Error(`pebble did not start: ${(err as Error).message}\n${output()}`);
  }

  const rootUrl = `${managementUrl}/roots/0`;
  const root = async (): Promise<string> => {
    const answer = await fetch(rootUrl);
    if (answer.status !== 200) throw new Error(`GET ${rootUrl}: ${answer.status} ${answer.body}`);
    return answer.body;
  };
  return {
    directoryUrl,
    managementUrl,
    caPath: testCa.caPath,
    testCa,
    httpPort: options.httpPort,
    tlsPort: options.tlsPort,
    rootUrl,
    root,
    async rootFile() {
      const file = path.join(testCa.dir, 'pebble-root.pem');
      fs.writeFileSync(file, await root());
      return file;
    },
    fetch,
    output,
  };
}
