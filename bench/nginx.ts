/**
 * nginx as a peer, configured as the founders' peer harness does (its conf/proxy-nginx.conf,
 * shared/bench/peers beside this checkout): one worker, access log off, HTTP/1.1 to the
 * backend with an upstream keep-alive pool of 64 (more when asked: see `upstreamKeepalive`),
 * client keep-alive 60 s. The HTTPS variant adds `listen ... ssl` with the certificate Fulcrum
 * gets and Fulcrum's "intermediate" profile (src/tls/profiles.ts): TLS 1.2 and 1.3, the same
 * ciphers and key-exchange groups, the client's cipher preference, session tickets on (or off,
 * as Fulcrum's then). With `http2` the listener speaks HTTP/2 to clients: `listen ... ssl http2`
 * (h2 by ALPN, HTTP/1.1 still offered) or, in cleartext, `listen ... http2` (h2c with prior
 * knowledge only: nginx 1.22 then answers no HTTP/1.1 on that port); the backend is still reached
 * over HTTP/1.1 with the same keep-alive pool. Its files live in a temporary directory removed on
 * stop.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { tlsProfiles } from '../src/tls/profiles.ts';
import { freePort, startExternalServer, type ChildServer } from './children.ts';

/** nginx's path (Debian puts it in /usr/sbin, often not on a user's PATH), or null when it is not installed. */
export function findNginx(): string | null {
  for (const candidate of ['nginx', '/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx']) {
    const probe = spawnSync(candidate, ['-v'], { stdio: 'ignore', timeout: 5000 });
    if (probe.error === undefined && probe.status === 0) return candidate;
  }
  return null;
}

/** nginx -v, e.g. "nginx/1.22.1". */
export function nginxVersion(nginx: string): string {
  return spawnSync(nginx, ['-v'], { encoding: 'utf8', timeout: 5000 }).stderr.trim().replace(/^nginx version:\s*/, '');
}

/** A certificate chain and key, as files, and whether sessions may be resumed. */
export interface TlsFiles {
  cert: string;
  key: string;
  /** Session tickets (default true); off, and with no session cache, every handshake is a full one. */
  sessionTickets?: boolean;
}

/** How the peer is set up beyond the harness's defaults. */
export interface NginxOptions {
  /** HTTPS with these files (default plain HTTP). */
  tls?: TlsFiles;
  /** HTTP/2 to clients (default false). */
  http2?: boolean;
  /**
   * Idle upstream connections each worker keeps (nginx's `keepalive`, default 64). Below the
   * requests in flight, nginx closes the surplus after every burst and connects again (thousands
   * of TIME_WAIT sockets toward the backend with 160 in flight and 64 kept), which Fulcrum, keeping
   * every socket, does not pay: a run with more in flight asks for as many.
   */
  upstreamKeepalive?: number;
}

/** The nginx.conf of the peer: plain HTTP, or HTTPS with `tls`; HTTP/2 to clients with `http2`. */
export function nginxConfig(port: number, backendUrl: string, { tls, http2 = false, upstreamKeepalive = 64 }: NginxOptions = {}): string {
  const backend = new URL(backendUrl);
  const profile = tlsProfiles.intermediate;
  const suites = profile.ciphers.split(':');
  const tlsLines = tls
    ? [
        `        ssl_certificate ${tls.cert};`,
        `        ssl_certificate_key ${tls.key};`,
        '        ssl_protocols TLSv1.2 TLSv1.3;',
        `        ssl_ciphers ${suites.filter((c) => !c.startsWith('TLS_')).join(':')};`,
        `        ssl_conf_command Ciphersuites ${suites.filter((c) => c.startsWith('TLS_')).join(':')};`,
        `        ssl_ecdh_curve ${profile.ecdhCurve};`,
        `        ssl_prefer_server_ciphers ${profile.honorCipherOrder ? 'on' : 'off'};`,
        `        ssl_session_tickets ${tls.sessionTickets === false ? 'off' : 'on'};`,
        '        ssl_session_timeout 5m;',
      ]
    : [];
  return [
    'worker_processes 1;',
    'worker_rlimit_nofile 20000;',
    'pid nginx.pid;',
    'error_log error.log warn;',
    'events {',
    '    worker_connections 19000;',
    '}',
    'http {',
    '    access_log off;',
    '    server_tokens off;',
    '    keepalive_timeout 60s;',
    '    keepalive_requests 1000000;',
    '    client_body_temp_path tmp/body;',
    '    proxy_temp_path tmp/proxy;',
    '    fastcgi_temp_path tmp/fastcgi;',
    '    uwsgi_temp_path tmp/uwsgi;',
    '    scgi_temp_path tmp/scgi;',
    '    upstream backend {',
    `        server ${backend.host};`,
    `        keepalive ${upstreamKeepalive};`,
    '        keepalive_requests 1000000;',
    '        keepalive_timeout 60s;',
    '    }',
    '    server {',
    `        listen 127.0.0.1:${port}${tls ? ' ssl' : ''}${http2 ? ' http2' : ''} backlog=4096;`,
    ...tlsLines,
    '        location / {',
    '            proxy_pass http://backend;',
    '            proxy_http_version 1.1;',
    '            proxy_set_header Connection "";',
    '        }',
    '    }',
    '}',
    '',
  ].join('\n');
}

/** Starts nginx in front of `backendUrl` (see NginxOptions); its directory is removed when it stops. */
export async function startNginx(name: string, nginx: string, backendUrl: string, options: NginxOptions = {}): Promise<ChildServer> {
  const { tls } = options;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fulcrum-bench-nginx-'));
  fs.mkdirSync(path.join(dir, 'tmp'));
  const port = await freePort();
  fs.writeFileSync(path.join(dir, 'nginx.conf'), nginxConfig(port, backendUrl, options));
  // -e: the error log before the config is read (the default, /var/log/nginx, may not be writable).
  const args = ['-p', `${dir}/`, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'startup.log'), '-g', 'daemon off;'];
  try {
    const server = await startExternalServer(name, nginx, args, port, tls ? 'https' : 'http');
    return {
      ...server,
      async stop() {
        await server.stop();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    const log = [path.join(dir, 'startup.log'), path.join(dir, 'error.log')].map((f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').trim() : '')).filter(Boolean).join('\n');
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`${(err as Error).message}${log ? `\n${log}` : ''}`);
  }
}
