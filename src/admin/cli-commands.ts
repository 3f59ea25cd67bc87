/**
 * `fulcrum status`, `fulcrum backends ...` and `fulcrum reload`: the typed admin client with
 * output for a terminal. Where the admin API is and its token come from flags, then the
 * environment, then the admin section of the configuration file, then the defaults.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { loadConfigFile } from '../config/load.ts';
import type { AdminSettings } from '../config/schema.ts';
import { AdminClient, AdminError } from './client.ts';
import type { StatusResponse } from './types.ts';

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

/** `fulcrum status` for people. */
export function formatStatus(s: StatusResponse): string {
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
  if (s.runtime_changes.length > 0) {
    lines.push('', `runtime-only changes (lost on restart${s.persisted ? '' : '; set admin.persist to write them to the file'}):`);
    for (const c of s.runtime_changes) lines.push(`  ${c.at}  ${c.action} ${c.upstream} in pool ${c.pool}${c.weight !== undefined ? ` (weight ${c.weight})` : ''}`);
  }
  return lines.join('\n');
}

const usage = 'usage: fulcrum backends add|remove|drain|enable|disable URL [--pool P] [--weight N] | fulcrum backends weight URL N | fulcrum backends list';

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
      out(s, formatStatus(s));
      return 0;
    }
    if (command === 'reload') {
      const r = await client.reload();
      out(r, applied(r));
      return 0;
    }
    const [action, target, extra] = args;
    if (action === 'list' || action === undefined) {
      const s = await client.status();
      out(s.backends, formatStatus(s));
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
