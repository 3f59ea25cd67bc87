/**
 * The `fulcrum` command: start | check | demo | backend | schema | hash-password, and the admin commands
 * status | backends | certificates | reload (through the typed admin client). Signals: SIGTERM and SIGINT
 * shut down gracefully (a second one exits at once); SIGHUP reloads the configuration file.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import { ConfigError } from './errors.ts';
import { checkTlsFiles } from './tls/check-files.ts';
import { loadConfigFile } from './config/load.ts';
import { closest } from './config/did-you-mean.ts';
import { parseDuration } from './config/duration.ts';
import { configJsonSchema } from './config/schema.ts';
import { diffConfigs, formatChanges, restartNotes } from './config/diff.ts';
import { policies } from './balancer/registry.ts';
import { createBalancer, type Balancer } from './index.ts';
import { version } from './version.ts';

const help = `fulcrum ${version}: an HTTP and TCP load balancer and reverse proxy

Usage:
  fulcrum start [-c FILE] [--watch]
                                 run the balancer (FILE, else $FULCRUM_CONFIG, else ./fulcrum.yaml);
                                 --watch reloads when the file changes (also: reload.watch)
  fulcrum check FILE...          validate configuration files; print every problem; exit 1 if any
  fulcrum check --diff OLD NEW   print what a reload from OLD to NEW would change (runs nothing)
  fulcrum demo [--port N]        three sample backends behind a balancer, over http and https (what npm start runs)
  fulcrum backend --port N [--id ID] [--delay MS|DURATION] [--fail]
                                 one sample backend (answers / and /health; POST /control?fail=1&delay=MS)
  fulcrum schema                 print the configuration's JSON Schema (for editor completion)
  fulcrum hash-password          read a password (no echo on a terminal; else one line of stdin) and print its
                                 scrypt hash for forward_proxy.auth.users (docs/forward-proxy.md)

Admin commands (talk to a running balancer's admin API):
  fulcrum status [--json]        backends, their state and counters; certificates; runtime-only changes
  fulcrum backends add URL [--pool P] [--weight N]
  fulcrum backends remove|drain|enable|disable URL [--pool P]
  fulcrum backends weight URL N [--pool P]
  fulcrum backends list          the backends (as status)
  fulcrum certificates [list]    the https listeners' certificates: names, days left, serial, errors
  fulcrum certificates reload    read the certificate files again (a broken file keeps the old certificate)
  fulcrum certificates renew DOMAIN
                                 order a new ACME certificate for DOMAIN now
  fulcrum reload                 reload the configuration file (the running one stays if it is invalid)
  --admin URL (or $FULCRUM_ADMIN_URL; else the admin section of -c FILE; else http://127.0.0.1:9901)
  --token T   (or $FULCRUM_ADMIN_TOKEN; else admin.token or admin.token_file of -c FILE)

Options:
  -c, --config FILE   configuration file (YAML or JSON)
  -h, --help          this text
  -v, --version       the version

Environment: FULCRUM_CONFIG, FULCRUM_PORT, FULCRUM_HOST, FULCRUM_LOG_LEVEL, FULCRUM_LOG_FORMAT,
FULCRUM_ACCESS_LOG, FULCRUM_POLICY override the file (docs/configuration.md).
Policies: ${policies.map((p) => p.name).join(', ')}.
`;

function fail(message: string, code = 2): never {
  process.stderr.write(`fulcrum: ${message}\n`);
  process.exit(code);
}

/**
 * Shuts down on SIGTERM/SIGINT within the grace period; a second signal exits at once. Also shuts
 * down when bin/fulcrum.js's supervisor (on a Node older than 24) is gone: its IPC channel closes.
 * (bin/fulcrum.js also stops the balancer when npm, under `npx fulcrum`, dies of SIGHUP.)
 */
function handleSignals(close: () => Promise<void>, reload?: () => Promise<void>): void {
  let stoppingSince = 0;
  const stop = (signal: string): void => {
    if (stoppingSince > 0) {
      // Ctrl-C reaches npm's whole process group and npm forwards it too: that is one signal, not two.
      if (Date.now() - stoppingSince < 200) return;
      process.stderr.write(`fulcrum: ${signal} again, exiting now\n`);
      process.exit(1);
    }
    stoppingSince = Date.now();
    close().then(
      () => process.exit(0),
      (err) => {
        process.stderr.write(`fulcrum: shutdown failed: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if (reload) process.on('SIGHUP', () => void reload());
  if (process.channel) {
    process.once('disconnect', () => {
      process.stderr.write('fulcrum: the launcher exited; shutting down\n');
      stop('launcher exit');
    });
  }
}

async function start(file: string, watch: boolean): Promise<void> {
  let loaded;
  try {
    loaded = loadConfigFile(file);
  } catch (err) {
    if (err instanceof ConfigError) fail(`invalid configuration:\n${err.message}`, 1);
    throw err;
  }
  let balancer: Balancer;
  try {
    balancer = createBalancer(loaded, { configFile: file, watch });
  } catch (err) {
    fail(`cannot start: ${(err as Error).message}`, 1);
  }
  for (const w of loaded.warnings) balancer.logger.warn(`${file}: ${w}`);
  try {
    await balancer.start();
  } catch (err) {
    fail(`cannot listen: ${(err as Error).message}`, 1);
  }
  setTimeout(shedStartupGarbage, 1000).unref();
  handleSignals(
    async () => {
      balancer.logger.info('shutting down: finishing requests in flight');
      await balancer.close();
      balancer.logger.info('stopped');
      balancer.logger.flush();
    },
    async () => {
      // reloadFile logs what changed, or why the file was refused (the running configuration stays);
      // a reload reads the certificate files again, and so does a refused one (renewed certificates are not config).
      await balancer.reloadFile('signal').catch(() => balancer.reloadCertificates());
    },
  );
}

/**
 * One memory-reducing full collection, a second after start: loading the modules and the
 * configuration grows V8's young generation (up to --max-semi-space-size) with garbage that an
 * idle process would otherwise keep mapped for good (about 12 MiB of RSS). V8 runs this kind of
 * collection by itself on memory pressure or when told the process is idle; Node never tells it.
 * `gc` is reached the way --expose-gc gives it, for this one call.
 */
function shedStartupGarbage(): void {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as (options: { type: string; execution: string; flavor: string }) => void;
    gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  } catch {
    // Only memory is at stake.
  }
}

/** `fulcrum check --diff OLD NEW`: the reload's semantic diff, without running anything. */
function diff(files: string[]): void {
  if (files.length !== 2) fail('check --diff needs two files: fulcrum check --diff old.yaml new.yaml');
  const loaded = files.map((file) => {
    try {
      return loadConfigFile(file);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`${err.message}\n`);
      process.exit(1);
    }
  });
  const lines = formatChanges(diffConfigs(loaded[0].config, loaded[1].config));
  const notes = restartNotes(loaded[0].config, loaded[1].config).map((n) => `restart needed: ${n}`);
  process.stdout.write(lines.length === 0 ? 'no changes\n' : [...lines, ...notes].join('\n') + '\n');
}

function check(files: string[]): void {
  if (files.length === 0) fail('check needs a file: fulcrum check fulcrum.yaml');
  let problems = 0;
  for (const file of files) {
    try {
      const loaded = loadConfigFile(file);
      for (const w of loaded.warnings) process.stdout.write(`${file}: warning: ${w}\n`);
      // Certificates and CA files: unusable ones are problems; what each certificate says is reported.
      const tls = checkTlsFiles(loaded.config, loaded.placeOf);
      let certificateErrors = 0;
      for (const r of tls.reports) {
        for (const f of r.findings) {
          const line = `${file}: ${r.path} (${r.file}): ${f.level === 'info' ? '' : `${f.level}: `}${f.message}\n`;
          if (f.level === 'error') process.stderr.write(line);
          else process.stdout.write(line);
        }
        certificateErrors += r.findings.filter((f) => f.level === 'error').length;
      }
      if (tls.problems.length > 0) throw new ConfigError(tls.problems);
      problems += certificateErrors;
      if (certificateErrors > 0) continue;
      const pools = Object.entries(loaded.config.pools);
      process.stdout.write(`${file}: ok (${loaded.config.listeners.length} listener(s), ${pools.length} pool(s), ${pools.reduce((n, [, p]) => n + p.upstreams.length, 0)} upstream(s))\n`);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems += err.problems.length;
      process.stderr.write(`${err.message}\n`);
    }
  }
  if (problems > 0) {
    process.stderr.write(`${problems} problem${problems === 1 ? '' : 's'} found\n`);
    process.exit(1);
  }
}

/** Every option of every command; `commandOptions` says which command takes which. */
const options = {
  config: { type: 'string', short: 'c' },
  port: { type: 'string', short: 'p' },
  host: { type: 'string' },
  id: { type: 'string' },
  delay: { type: 'string' },
  fail: { type: 'boolean' },
  policy: { type: 'string' },
  watch: { type: 'boolean' },
  diff: { type: 'boolean' },
  admin: { type: 'string' },
  token: { type: 'string' },
  pool: { type: 'string' },
  weight: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
} as const;
type OptionName = keyof typeof options;

const adminOptions: OptionName[] = ['config', 'admin', 'token', 'pool', 'weight', 'json'];
/** The options each command takes; any other is an error, not silently ignored (`start --port 80`). */
const commandOptions: Record<string, OptionName[]> = {
  start: ['config', 'watch'],
  check: ['config', 'diff'],
  demo: ['port', 'host', 'policy'],
  backend: ['port', 'host', 'id', 'delay', 'fail'],
  schema: [],
  'hash-password': [],
  status: adminOptions,
  backends: adminOptions,
  certificates: ['config', 'admin', 'token', 'json'],
  reload: adminOptions,
  help: [],
};

/** What to do instead of a flag `start` does not take: the file's key, or its environment variable. */
const startInstead: Partial<Record<OptionName, string>> = {
  port: 'the port is listeners[0].port in the file, or FULCRUM_PORT=N',
  host: 'the address is listeners[0].host in the file, or FULCRUM_HOST=ADDRESS',
  policy: 'the policy is pools.NAME.policy in the file, or FULCRUM_POLICY=NAME for every pool',
};

/** Refuses options the command does not take or nobody knows, with a did-you-mean; checks values. */
function checkOptions(command: string, tokens: NonNullable<ReturnType<typeof parseArgs>['tokens']>): void {
  const allowed: string[] = [...(commandOptions[command] ?? []), 'help', 'version'];
  for (const token of tokens) {
    if (token.kind !== 'option') continue;
    const name = token.name;
    const known = Object.hasOwn(options, name) ? (name as OptionName) : undefined;
    const takes = allowed.filter((o) => o !== 'help' && o !== 'version').map((o) => `--${o}`).join(', ');
    if (known === undefined || !allowed.includes(known)) {
      const guess = closest(name, allowed);
      const instead = command === 'start' && known ? startInstead[known] : undefined;
      const reason = known === undefined ? `unknown option ${token.rawName}` : `${command} does not take ${token.rawName}`;
      const hint = guess && guess !== known ? `did you mean --${guess}?` : (instead?.replace(/=N$/, `=${token.value ?? 'N'}`) ?? (takes ? `${command} takes ${takes}` : `${command} takes no options`));
      fail(`${reason}: ${hint} (try: fulcrum --help)`);
    }
    if (options[known].type === 'string' && token.value === undefined) fail(`${token.rawName} needs a value (try: fulcrum --help)`);
    if (options[known].type === 'boolean' && token.value !== undefined) fail(`${token.rawName} takes no value, got "${token.value}"`);
  }
}

/** Where `fulcrum start` finds its file: -c, the first argument, FULCRUM_CONFIG, ./fulcrum.yaml; or how to get one. */
function configFileForStart(values: { config?: string | boolean }, rest: string[]): string {
  if (rest.length > 1) fail(`start takes one configuration file, got ${rest.length}: ${rest.join(' ')}`);
  const named = (typeof values.config === 'string' ? values.config : undefined) ?? rest[0] ?? (process.env.FULCRUM_CONFIG || undefined);
  if (named !== undefined) return named;
  if (existsSync('fulcrum.yaml')) return 'fulcrum.yaml';
  const dir = fileURLToPath(new URL('../examples/', import.meta.url));
  let examples: string[] = [];
  try {
    const shown = path.relative(process.cwd(), dir);
    const prefix = shown.startsWith('..') || path.isAbsolute(shown) ? dir : `${shown}${path.sep}`;
    examples = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f)).sort().map((f) => `${prefix}${f}`);
  } catch {
    // An install without examples/: the other suggestions stand.
  }
  const lines = [
    'no configuration file: ./fulcrum.yaml does not exist, and neither -c FILE nor FULCRUM_CONFIG names one. Either:',
    '  fulcrum start -c FILE                run with a configuration file (YAML or JSON)',
    '  FULCRUM_CONFIG=FILE fulcrum start    the same, with the file named by the environment',
    '  fulcrum demo                         three sample backends behind a balancer, no file needed',
  ];
  if (examples.length > 0) lines.push(`  fulcrum start -c ${examples[0]}`, `                                       an example to start from (${examples.length > 1 ? `also ${examples.slice(1).join(', ')}` : 'see docs/configuration.md'})`);
  fail(lines.join('\n'));
}

/**
 * The password for `hash-password`: typed twice on a terminal with echo off (raw mode; Backspace
 * works, Ctrl-C and Ctrl-D give up), else the first line of stdin (its line ending dropped).
 * Rejects an empty password, or two typed ones that differ.
 */
async function readPassword(): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY) {
    const chunks: Buffer[] = [];
    for await (const chunk of stdin) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const line = text.split(/\r?\n/)[0];
    if (line.length === 0) throw new Error('no password on stdin (send it as one line: printf %s "$PASSWORD" | fulcrum hash-password)');
    return line;
  }
  const ask = (prompt: string): Promise<string> =>
    new Promise((resolve, reject) => {
      // Echo goes off before the prompt shows: nothing typed after it is ever echoed.
      stdin.setRawMode(true);
      process.stderr.write(prompt);
      let typed = '';
      const finish = (err: Error | null): void => {
        stdin.off('data', onData);
        stdin.setRawMode(false);
        stdin.pause();
        process.stderr.write('\n');
        if (err !== null) reject(err);
        else resolve(typed);
      };
      const onData = (data: Buffer): void => {
        for (const ch of data.toString('utf8')) {
          if (ch === '\r' || ch === '\n') return finish(null);
          if (ch === '\u0003' || ch === '\u0004') return finish(new Error('no password given'));
          if (ch === '\u007f' || ch === '\b') typed = [...typed].slice(0, -1).join('');
          else if (ch >= ' ') typed += ch;
        }
      };
      stdin.resume();
      stdin.on('data', onData);
    });
  const first = await ask('Password: ');
  if (first.length === 0) throw new Error('an empty password is no password');
  const again = await ask('Again: ');
  if (again !== first) throw new Error('the two passwords differ');
  return first;
}

async function main(argv: string[]): Promise<void> {
  // First loosely, to name a mistyped command or option in our words; then strictly, for typed values.
  const loose = parseArgs({ args: argv, allowPositionals: true, strict: false, tokens: true, options });
  const named = loose.positionals[0];
  if (named !== undefined && !Object.hasOwn(commandOptions, named)) {
    const guess = closest(named, Object.keys(commandOptions));
    fail(`unknown command "${named}"${guess ? ` (did you mean "${guess}"?)` : ''} (try: fulcrum --help)`);
  }
  checkOptions(named ?? 'help', loose.tokens);
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true, options });
  if (values.version) return void process.stdout.write(`${version}\n`);
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') return void process.stdout.write(help);
  const port = values.port === undefined ? undefined : Number(values.port);
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) fail(`--port must be a port number, got "${values.port}"`);
  switch (command) {
    case 'start':
      return start(configFileForStart(values, rest), values.watch === true);
    case 'check':
      if (values.diff) return diff(values.config ? [values.config, ...rest] : rest);
      return check(values.config ? [values.config, ...rest] : rest);
    case 'status':
    case 'backends':
    case 'certificates':
    case 'reload': {
      const file = values.config ?? process.env.FULCRUM_CONFIG ?? (existsSync('fulcrum.yaml') ? 'fulcrum.yaml' : undefined);
      // Loaded by the commands that use them, so `fulcrum start` does not carry the demo, its backends (ws) or the admin client.
      const { adminCommand } = await import('./admin/cli-commands.ts');
      const code = await adminCommand(command, rest, { admin: values.admin, token: values.token, pool: values.pool, weight: values.weight, json: values.json ?? false, configFile: file });
      process.exitCode = code;
      return;
    }
    case 'schema':
      return void process.stdout.write(JSON.stringify(configJsonSchema(), null, 2) + '\n');
    case 'hash-password': {
      if (rest.length > 0) fail('hash-password reads the password from stdin, never from the command line (where ps and the shell history would show it)');
      const password = await readPassword().catch((err: Error) => fail(err.message, 1));
      const { hashPassword } = await import('./forward/proxy-auth.ts');
      return void process.stdout.write(`${await hashPassword(password)}\n`);
    }
    case 'demo': {
      const { startDemo, demoBanner } = await import('./demo/demo.ts');
      const demo = await startDemo({ port, host: values.host, policy: values.policy }).catch((err: Error) => fail(`demo failed to start: ${err.message}`, 1));
      process.stdout.write(demoBanner(demo) + '\n');
      handleSignals(() => demo.close());
      return;
    }
    case 'backend': {
      // --delay is milliseconds (the help says MS), or a duration with its unit; anything else is an error, not 0.
      const delay = values.delay === undefined ? 0 : /^\s*\d+\s*$/.test(values.delay) ? Number(values.delay) : parseDuration(values.delay);
      if (Number.isNaN(delay)) fail(`--delay must be milliseconds or a duration such as 500ms or 2s, got "${values.delay}"`);
      const { startSampleBackend } = await import('./demo/sample-backend.ts');
      const backend = await startSampleBackend({ id: values.id ?? String(port ?? 9001), port: port ?? 9001, host: values.host, delay, fail: values.fail }).catch(
        (err: Error) => fail(`backend failed to start: ${err.message}`, 1),
      );
      process.stdout.write(`sample backend ${backend.id} listening on ${backend.url} (GET /, /health; POST /control?fail=1&delay=MS)\n`);
      handleSignals(() => backend.close());
      return;
    }
    default:
      fail(`unknown command "${command}" (try: fulcrum --help)`);
  }
}

main(process.argv.slice(2)).catch((err: Error & { code?: string }) => {
  if (err.code?.startsWith('ERR_PARSE_ARGS')) fail(`${err.message} (try: fulcrum --help)`);
  process.stderr.write(`fulcrum: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
