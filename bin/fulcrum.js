#!/usr/bin/env -S node --max-semi-space-size=8
// Launcher: runs dist/cli.js in an installed package (Node does not strip types under
// node_modules; `prepare` builds dist for `npm pack`, git installs and `npm install` in a clone),
// and in a clone too while dist is newer than every file of src/; else src/cli.ts on Node 24
// (which strips TypeScript types natively).
// On Node 24 or later the CLI runs in this process, so signals reach the balancer directly. On an
// older `node` it runs the CLI as a child on a Node 24 binary from the `node` npm package (the
// dev dependency in a clone, or `npm install node@24` in the project) and stays as a supervisor:
// SIGHUP, SIGINT, SIGTERM and SIGUSR2 are forwarded, it exits as the child exits, and the child
// stops when the supervisor is gone (its IPC channel closes). Without such a binary it says what to
// install and exits 1. Under npm (`npx fulcrum start`, `npm start`) it also stops the balancer
// when npm is gone: npm does not forward SIGHUP, dies of it, and would leave the balancer running.
// Written for old Node versions too (no top-level await), so that the message is what they print.
// --max-semi-space-size=8 (MiB): V8 otherwise grows its young generation to about three times
// 16 MiB under load, ~55 MB of RSS for no measurable gain in throughput (npm run bench:million).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const minimumMajor = 24;
const forwardedSignals = ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGUSR2'];
const root = path.dirname(path.dirname(realpathSync(fileURLToPath(import.meta.url))));
const built = path.join(root, 'dist', 'cli.js');
const sources = path.join(root, 'src', 'cli.ts');
const installed = root.split(path.sep).includes('node_modules');

/** The newest modification time (ms) of the files below `dir`, or Infinity when it cannot be read. */
function newestIn(dir) {
  let newest = 0;
  try {
    for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (entry.isFile()) newest = Math.max(newest, statSync(path.join(entry.parentPath, entry.name)).mtimeMs);
    }
  } catch {
    return Infinity;
  }
  return newest;
}

/**
 * In a clone, dist/cli.js when it was built after the last change to src/ (`npm install` builds
 * it), else src/cli.ts: compiled JavaScript starts lighter than type stripping (about 25 MiB less
 * RSS) and never runs stale code.
 */
function upToDate() {
  try {
    return statSync(built).mtimeMs >= newestIn(path.join(root, 'src'));
  } catch {
    return false;
  }
}
const cli = installed || !existsSync(sources) || upToDate() ? built : sources;

function exitWith(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

/** The `bin/node` of a `node` npm package of version 24 or later that Fulcrum or the current project can resolve. */
function findNode() {
  for (const from of [path.join(root, 'package.json'), path.join(process.cwd(), 'package.json')]) {
    try {
      const manifest = createRequire(from).resolve('node/package.json');
      const { version } = JSON.parse(readFileSync(manifest, 'utf8'));
      const binary = path.join(path.dirname(manifest), 'bin', 'node');
      if (Number(String(version).split('.')[0]) >= minimumMajor && existsSync(binary)) return binary;
    } catch {
      // Not installed there: try the next place.
    }
  }
  return undefined;
}

/** The name and parent of process `pid` (from /proc, or `ps` elsewhere), or undefined. */
function processInfo(pid) {
  try {
    if (existsSync('/proc/self/stat')) {
      const m = /^\d+ \((.*)\) \S+ (\d+)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      return m ? { name: m[1], ppid: Number(m[2]) } : undefined;
    }
    const m = /^\s*(\d+)\s+(.*)$/.exec(execFileSync('ps', ['-o', 'ppid=', '-o', 'comm=', '-p', String(pid)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    return m ? { name: path.basename(m[2]), ppid: Number(m[1]) } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Calls `gone` once when npm is gone, if npm started us (`npx fulcrum`, `npm start`): npm forwards
 * SIGINT and SIGTERM to the script but dies of SIGHUP, and the `sh -c` it runs the script in
 * outlives it, so the balancer would keep running on its ports with nobody to stop it.
 */
function whenNpmExits(gone) {
  if (process.env.npm_lifecycle_event === undefined) return;
  const parent = process.ppid;
  const info = processInfo(parent);
  const npm = info !== undefined && /^(a|ba|da|k|mk|z)?sh$/.test(info.name) ? info.ppid : parent;
  const running = () => {
    if (process.ppid !== parent) return false;
    if (npm === parent) return true;
    if (existsSync('/proc/self/stat')) {
      const now = processInfo(parent);
      return now === undefined || now.ppid === npm;
    }
    try {
      process.kill(npm, 0);
      return true;
    } catch (err) {
      return err.code === 'EPERM';
    }
  };
  const timer = setInterval(() => {
    if (running()) return;
    clearInterval(timer);
    process.stderr.write('fulcrum: npm, which started fulcrum, exited; shutting down\n');
    gone();
  }, 250);
  timer.unref();
}

/** Runs the CLI as a child on `node`, passing signals on and exiting as it exits. */
function supervise(node) {
  const child = spawn(node, ['--max-semi-space-size=8', cli, ...process.argv.slice(2)], { stdio: ['inherit', 'inherit', 'inherit', 'ipc'] });
  const forward = (signal) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  for (const signal of forwardedSignals) process.on(signal, forward);
  whenNpmExits(() => forward('SIGTERM'));
  child.on('error', (err) => exitWith(`fulcrum: cannot run ${node}: ${err.message}`));
  child.on('exit', (code, signal) => {
    if (signal === null) process.exit(code === null ? 1 : code);
    // Die of the same signal (if it is one that just ends a process), so that whoever started us sees what happened.
    if (forwardedSignals.includes(signal) || signal === 'SIGKILL') {
      for (const s of forwardedSignals) process.removeAllListeners(s);
      process.kill(process.pid, signal);
    }
    setTimeout(() => process.exit(128 + (constants.signals[signal] || 0)), 1000).unref();
  });
}

const major = Number(process.versions.node.split('.')[0]);
if (!existsSync(cli)) {
  exitWith(
    installed
      ? `fulcrum: ${cli} is missing: this copy of Fulcrum was installed without its build (the \`prepare\` script did not run); allow it (\`npm install-scripts approve fulcrum\`) and install again, or install a tarball made by \`npm pack\``
      : `fulcrum: ${cli} is missing: run \`npm install\` in ${root} (its \`prepare\` script builds it)`,
  );
} else if (major >= minimumMajor) {
  // SIGTERM to ourselves: the CLI's own handler drains and stops the balancer.
  whenNpmExits(() => process.kill(process.pid, 'SIGTERM'));
  import(pathToFileURL(cli).href).catch((err) => {
    const hint = err && err.code === 'ERR_MODULE_NOT_FOUND' && !installed ? `\nrun \`npm install\` in ${root} first` : '';
    exitWith(`fulcrum: cannot load ${cli}: ${err && err.message}${hint}`);
  });
} else {
  const node = findNode();
  if (node === undefined) {
    exitWith(
      `Fulcrum needs Node.js ${minimumMajor} or later; you have ${process.version}: install Node.js ${minimumMajor} (https://nodejs.org/en/download, or \`nvm install ${minimumMajor}\`), ` +
        `or add it to this project with \`npm install node@${minimumMajor}\` and Fulcrum will run on it`,
    );
  } else {
    supervise(node);
  }
}
