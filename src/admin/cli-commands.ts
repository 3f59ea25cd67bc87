/**
 * `fulcrum status`, `fulcrum backends ...`, `fulcrum certificates ...` and `fulcrum reload`: the typed admin client with
 * output for a terminal. Where the admin API is and its token come from flags, then the
 * environment, then the admin section of the configuration file, then the defaults.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { loadConfigFile } from '../config/load.ts';
import type { AdminSettings } from '../config/schema.ts';
import { AdminClient, AdminError, type CertificateReloadResponse } from './client.ts';
import type { CertificateStatus, StatusResponse } from './types.ts';

export interface AdminCommandOptions {
  admin?: string;
  token?: string;
  pool?: string;
  weight?: string;
  json: boolean;
  configFile?: string;
}

/** Why the admin API cannot be found from the flags, environment and file given. */
export class AdminLocationError extends Error {}

/**
 * The admin URL and token to use: flags, then the environment, then the admin section of the
 * configuration file, then http://127.0.0.1:9901. A file that was named but cannot be read is an
 * error, not a reason to ask some other balancer on the default port.
 */
export function resolveAdmin(options: AdminCommandOptions, env: NodeJS.ProcessEnv = process.env): { url: string; token: string | undefined } {
  let url = options.admin ?? env.FULCRUM_ADMIN_URL;
  let token = options.token ?? env.FULCRUM_ADMIN_TOKEN;
  if ((url === undefined || token === undefined) && options.configFile !== undefined) {
    const file = options.configFile;
    let admin: Partial<AdminSettings> | undefined;
    try {
      admin = loadConfigFile(file, env).config.admin;
    } catch (err) {
      // The file may be the one just broken (and refused by the running balancer): its admin section is still where to ask.
      let raw: { admin?: Partial<AdminSettings>; admin_port?: number } | null;
      try {
        raw = parseYaml(readFileSync(file, 'utf8')) as typeof raw;
      } catch (parseErr) {
        const why = (parseErr as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (parseErr as Error).message.split('\n')[0];
        throw new AdminLocationError(`cannot find the admin API from ${file}: ${why}; pass --admin URL (and --token)`);
      }
      admin = raw?.admin ?? (raw?.admin_port !== undefined ? { port: raw.admin_port } : undefined);
      if (admin === undefined && url === undefined) throw new AdminLocationError(`${file} has no admin section and does not load (${(err as Error).message.split('\n')[0]}); pass --admin URL`);
    }
    if (admin) {
      const h = typeof admin.host === 'string' ? admin.host : '127.0.0.1';
      const host = h === '0.0.0.0' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
      url ??= `http://${host}:${typeof admin.port === 'number' ? admin.port : 9901}`;
      try {
        token ??= typeof admin.token === 'string' ? admin.token : typeof admin.token_file === 'string' ? readFileSync(admin.token_file, 'utf8').trim() : undefined;
      } catch {
        // an unreadable token file: the request will say 401
      }
    } else if (url === undefined) {
      throw new AdminLocationError(`${file} has no admin section: add \`admin: {}\` to it (and restart), or pass --admin URL`);
    }
  }
  url ??= 'http://127.0.0.1:9901';
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) url = `http://${url}`;
  if (!/^https?:\/\//i.test(url)) throw new AdminLocationError(`the admin URL must be http:// or https://, got ${url}`);
  return { url, token };
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

/** A certificate with fewer whole days left than this is shown as expiring soon, when the server does not say (the default of tls.expiry_warning). */
export const certificateWarningDays = 21;

/** How a certificate line is styled: `error` (its files failed, or it expired), `warn` (expiring soon), or plain. */
export function certificateLevel(c: CertificateStatus): 'error' | 'warn' | 'ok' {
  if (c.error !== null || c.days_left < 0) return 'error';
  return c.days_left < (c.warning_days ?? certificateWarningDays) ? 'warn' : 'ok';
}

/** Terminal styles: ANSI colours on a terminal that wants them (not with NO_COLOR or TERM=dumb), none otherwise. */
export interface TextStyle {
  warn(text: string): string;
  error(text: string): string;
}

const plain: TextStyle = { warn: (t) => t, error: (t) => t };

/** The style for `stream`: colours only on a TTY, without NO_COLOR and TERM=dumb. */
export function styleFor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): TextStyle {
  if (stream.isTTY !== true || (env.NO_COLOR ?? '') !== '' || env.TERM === 'dumb') return plain;
  return { warn: (t) => `\x1b[33m${t}\x1b[39m`, error: (t) => `\x1b[31m${t}\x1b[39m` };
}

/**
 * The certificates as a table, one line each: listener, names, days left, expiry date, serial,
 * source, then what is wrong. Lines expiring within 21 days, expired, or whose files failed are
 * marked in words (and coloured by `style`).
 */
export function formatCertificates(certificates: readonly CertificateStatus[], style: TextStyle = plain): string {
  if (certificates.length === 0) return 'no certificates (no https listener)';
  // days_left is rounded down: -1 is expired within the last day, -3 two whole days ago.
  const days = (c: CertificateStatus): string =>
    c.days_left < 0 ? `expired ${c.days_left === -1 ? '<1' : -c.days_left - 1}d ago` : c.days_left < (c.warning_days ?? certificateWarningDays) ? `${c.days_left} (expires soon)` : String(c.days_left);
  const note = (c: CertificateStatus): string => [c.is_default ? 'default' : '', c.error !== null ? `error: ${c.error} (the certificate loaded before is served)` : ''].filter(Boolean).join('; ');
  const lines = table([
    ['LISTENER', 'NAMES', 'DAYS LEFT', 'EXPIRES', 'SERIAL', 'SOURCE', ''],
    ...certificates.map((c) => [c.listener, c.names.join(', '), days(c), c.not_after.slice(0, 10), c.serial, c.source, note(c)]),
  ]).split('\n');
  // Styled whole lines, after padding: escape codes would otherwise count as width.
  return [lines[0], ...certificates.map((c, i) => {
    const level = certificateLevel(c);
    return level === 'ok' ? lines[i + 1] : style[level === 'error' ? 'error' : 'warn'](lines[i + 1]);
  })].join('\n');
}

/** `fulcrum certificates reload` for people: what changed and what failed, per listener. */
export function formatCertificateReload(r: CertificateReloadResponse): string {
  if (r.listeners.length === 0) return 'no https listener: no certificate files to read';
  const lines: string[] = [];
  for (const l of r.listeners) {
    if (l.changed.length === 0 && l.failed.length === 0) lines.push(`listener ${l.listener}: no certificate changed`);
    for (const c of l.changed) lines.push(`listener ${l.listener}: ${c.source}: new certificate, serial ${c.serial}`);
    for (const f of l.failed) lines.push(`listener ${l.listener}: ${f.file}: ${f.reason} (the certificate loaded before stays)`);
  }
  return lines.join('\n');
}

/** `fulcrum status` for people; `style` colours certificates that expire soon or failed. */
export function formatStatus(s: StatusResponse, style: TextStyle = plain): string {
  const state = (b: StatusResponse['backends'][number]): string =>
    !b.enabled ? 'disabled' : b.draining ? 'draining' : b.health === 'unhealthy' ? 'unhealthy' : b.ejected ? 'ejected' : b.circuit === 'open' ? 'circuit open' : b.circuit === 'half-open' ? 'half-open' : 'up';
  const lines = [
    `fulcrum ${s.version}, up ${s.uptime_seconds}s, config ${s.config_file ?? '(none)'} loaded ${s.config_loaded_at}`,
    `${s.active_backends} of ${s.total_backends} backends active`,
    '',
    table([
      ['POOL', 'BACKEND', 'STATE', 'WEIGHT', 'IN-FLIGHT', 'REQUESTS', 'FAILURES', 'EJECTIONS', ''],
      ...s.backends.map((b) => [b.pool, b.url, state(b), String(b.weight), String(b.current_connections), String(b.requests), String(b.failures), String(b.ejections), b.runtime_only ? 'runtime-only' : '']),
    ]),
  ];
  const panicking = [...new Set(s.backends.filter((b) => b.panic).map((b) => b.pool))];
  for (const pool of panicking) lines.push(`pool ${pool} is in panic mode: too few backends up (panic_threshold_percent), so every backend of it takes traffic, healthy or not`);
  for (const note of s.restart_needed ?? []) lines.push(`restart needed: ${note}`);
  // An older balancer's /status has no certificates.
  if ((s.certificates ?? []).length > 0) lines.push('', formatCertificates(s.certificates, style));
  if (s.runtime_changes.length > 0) {
    lines.push('', `runtime-only changes (lost on restart${s.persisted ? '' : '; set admin.persist to write them to the file'}):`);
    for (const c of s.runtime_changes) lines.push(`  ${c.at}  ${c.action} ${c.upstream} in pool ${c.pool}${c.weight !== undefined ? ` (weight ${c.weight})` : ''}`);
  }
  return lines.join('\n');
}

const usage = 'usage: fulcrum backends add|remove|drain|enable|disable URL [--pool P] [--weight N] | fulcrum backends weight URL N | fulcrum backends list';
const certificatesUsage = 'usage: fulcrum certificates [list] | fulcrum certificates reload | fulcrum certificates renew DOMAIN';

/** Runs one admin command; returns the exit code (0 ok, 1 refused or unreachable, 2 usage). */
export async function adminCommand(command: string, args: string[], options: AdminCommandOptions): Promise<number> {
  let url: string;
  let token: string | undefined;
  try {
    ({ url, token } = resolveAdmin(options));
  } catch (err) {
    if (!(err instanceof AdminLocationError)) throw err;
    process.stderr.write(`fulcrum: ${err.message}\n`);
    return 1;
  }
  const client = new AdminClient({ url, token });
  const style = styleFor(process.stdout);
  const out = (value: unknown, text: string): void => void process.stdout.write((options.json ? JSON.stringify(value, null, 2) : text) + '\n');
  const applied = (r: { changes: string[]; runtime_only?: boolean; warnings?: string[]; dropped?: string[] }): string =>
    [
      r.changes.length > 0 ? r.changes.join('\n') : 'no changes',
      ...(r.warnings ?? []).map((w) => `restart needed: ${w}`),
      ...(r.dropped ?? []).map((d) => `runtime change dropped: ${d}`),
      ...(r.runtime_only ? ['(runtime-only: a restart loses it unless the file says the same; `fulcrum status` lists it)'] : []),
    ].join('\n');
  try {
    if (command === 'status') {
      const s = await client.status();
      out(s, formatStatus(s, style));
      return 0;
    }
    if (command === 'certificates') return await certificatesCommand(client, args, out, style);
    if (command === 'reload') {
      const r = await client.reload();
      out(r, applied(r));
      return 0;
    }
    const [action, target, extra] = args;
    if (action === 'list' || action === undefined) {
      const s = await client.status();
      out(s.backends, formatStatus(s, style));
      return 0;
    }
    if (target === undefined) {
      process.stderr.write(`fulcrum: ${usage}\n`);
      return 2;
    }
    const ref = { url: target, pool: options.pool };
    const weightText = action === 'weight' ? extra : options.weight;
    const weight = weightText === undefined ? undefined : Number(weightText);
    if (weightText !== undefined && !(Number.isFinite(weight) && weight! > 0)) {
      process.stderr.write(`fulcrum: the weight must be a number above 0, got "${weightText}"\n`);
      return 2;
    }
    let r;
    switch (action) {
      case 'add':
        r = await client.addBackend({ ...ref, weight });
        break;
      case 'remove':
        r = await client.removeBackend(ref);
        break;
      case 'drain':
        r = await client.drain(ref);
        break;
      case 'enable':
        r = await client.enable(ref);
        break;
      case 'disable':
        r = await client.disable(ref);
        break;
      case 'weight':
        if (weight === undefined) {
          process.stderr.write('fulcrum: usage: fulcrum backends weight URL N\n');
          return 2;
        }
        r = await client.updateBackend({ ...ref, weight });
        break;
      default:
        process.stderr.write(`fulcrum: unknown backends action "${action}"; ${usage}\n`);
        return 2;
    }
    out(r, applied(r));
    return 0;
  } catch (err) {
    if (!(err instanceof AdminError)) throw err;
    const hint =
      err.status === 401
        ? token === undefined
          ? ` (no token given: pass it with --token or FULCRUM_ADMIN_TOKEN, or set admin.token or admin.token_file in the file given with -c; a balancer without admin.token made one at start and logged it at warn: "admin.token is not set: writes need this run's generated token: ..."; admin API ${url})`
          : ` (token from --token, FULCRUM_ADMIN_TOKEN or the config's admin.token; admin API ${url})`
        : '';
    process.stderr.write(`fulcrum: ${err.message}${hint}\n`);
    for (const p of err.problems) process.stderr.write(`  ${p.line > 0 ? `${p.file}:${p.line}:${p.column}` : p.file}: ${p.path ? `${p.path}: ` : ''}${p.message}\n`);
    return 1;
  }
}

/** `fulcrum certificates [list] | reload | renew DOMAIN`; AdminError goes up to adminCommand's handler. */
async function certificatesCommand(client: AdminClient, args: string[], out: (value: unknown, text: string) => void, style: TextStyle): Promise<number> {
  const [action, domain, ...extra] = args;
  if ((action === undefined || action === 'list' || action === 'reload') && domain === undefined) {
    if (action === 'reload') {
      const r = await client.reloadCertificates();
      out(r, formatCertificateReload(r));
      return r.ok ? 0 : 1;
    }
    const list = await client.certificates();
    out(list, formatCertificates(list, style));
    return 0;
  }
  if (action === 'renew' && domain !== undefined && extra.length === 0) {
    process.stderr.write(`ordering a new certificate for ${domain} (this can take a minute)...\n`);
    const r = await client.renewCertificate(domain);
    out(r, r.certificates.length > 0 ? `renewed ${r.domain}:\n${formatCertificates(r.certificates, style)}` : `renewed ${r.domain}`);
    return 0;
  }
  process.stderr.write(`fulcrum: ${action !== undefined && !['list', 'reload', 'renew'].includes(action) ? `unknown certificates action "${action}"; ` : ''}${certificatesUsage}\n`);
  return 2;
}
