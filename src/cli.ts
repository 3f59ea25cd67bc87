/**
 * The `fulcrum` command: start | check | demo | backend | schema, and the admin commands
 * status | backends | reload (through the typed admin client). Signals: SIGTERM and SIGINT
 * shut down gracefully (a second one exits at once); SIGHUP reloads the configuration file.
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError } from './errors.ts';
import { loadConfigFile } from './config/load.ts';
import { configJsonSchema } from './config/schema.ts';
import { diffConfigs, formatChanges, restartNotes } from './config/diff.ts';
import { policies } from './balancer/registry.ts';
import { createBalancer, type Balancer } from './index.ts';
import { startDemo, demoBanner } from './demo/demo.ts';
import { startSampleBackend } from './demo/sample-backend.ts';
import { adminCommand } from './admin/cli-commands.ts';
import { version } from './version.ts';

const help = `fulcrum ${version}: an HTTP load balancer and reverse proxy

Usage:
  fulcrum start [-c FILE] [--watch]
                                 run the balancer (FILE, else $FULCRUM_CONFIG, else ./fulcrum.yaml);
                                 --watch reloads when the file changes (also: reload.watch)
  fulcrum check FILE...          validate configuration files; print every problem; exit 1 if any
  fulcrum check --diff OLD NEW   print what a reload from OLD to NEW would change (runs nothing)
  fulcrum demo [--port N]        three sample backends behind a balancer (what npm start runs)
  fulcrum backend --port N [--id ID] [--delay MS] [--fail]
                                 one sample backend (answers / and /health; POST /control?fail=1&delay=MS)
  fulcrum schema                 print the configuration's JSON Schema (for editor completion)

Admin commands (talk to a running balancer's admin API):
  fulcrum status [--json]        backends, their state and counters; runtime-only changes
  fulcrum backends add URL [--pool P] [--weight N]
  fulcrum backends remove|drain|enable|disable URL [--pool P]
  fulcrum backends weight URL N [--pool P]
  fulcrum backends list          the backends (as status)
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

/** Shuts down on SIGTERM/SIGINT within the grace period; a second signal exits at once. */
function handleSignals(close: () => Promise<void>, reload?: () => Promise<void>): void {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`fulcrum: ${signal} again, exiting now\n`);
      process.exit(1);
    }
    stopping = true;
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
  handleSignals(
    async () => {
      balancer.logger.info('shutting down: finishing requests in flight');
      await balancer.close();
      balancer.logger.info('stopped');
      balancer.logger.flush();
    },
    async () => {
      // reloadFile logs what changed, or why the file was refused (the running configuration stays).
      await balancer.reloadFile('signal').catch(() => {});
    },
  );
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

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
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
    },
  });
  if (values.version) return void process.stdout.write(`${version}\n`);
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') return void process.stdout.write(help);
  const port = values.port === undefined ? undefined : Number(values.port);
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) fail(`--port must be a port number, got "${values.port}"`);
  switch (command) {
    case 'start':
      return start(values.config ?? rest[0] ?? process.env.FULCRUM_CONFIG ?? 'fulcrum.yaml', values.watch ?? false);
    case 'check':
      if (values.diff) return diff(values.config ? [values.config, ...rest] : rest);
      return check(values.config ? [values.config, ...rest] : rest);
    case 'status':
    case 'backends':
    case 'reload': {
      const file = values.config ?? process.env.FULCRUM_CONFIG ?? (existsSync('fulcrum.yaml') ? 'fulcrum.yaml' : undefined);
      const code = await adminCommand(command, rest, { admin: values.admin, token: values.token, pool: values.pool, weight: values.weight, json: values.json ?? false, configFile: file });
      process.exitCode = code;
      return;
    }
    case 'schema':
      return void process.stdout.write(JSON.stringify(configJsonSchema(), null, 2) + '\n');
    case 'demo': {
      const demo = await startDemo({ port, host: values.host, policy: values.policy }).catch((err: Error) => fail(`demo failed to start: ${err.message}`, 1));
      process.stdout.write(demoBanner(demo) + '\n');
      handleSignals(() => demo.close());
      return;
    }
    case 'backend': {
      const backend = await startSampleBackend({ id: values.id ?? String(port ?? 9001), port: port ?? 9001, host: values.host, delay: Number(values.delay ?? 0) || 0, fail: values.fail }).catch(
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
