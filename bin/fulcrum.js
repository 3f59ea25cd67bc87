#!/usr/bin/env node
// Launcher: runs src/cli.ts on Node 24 (which strips TypeScript types natively). On an older
// `node` it re-runs itself with the Node 24 binary that the `node@24` dev dependency installs.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const major = Number(process.versions.node.split('.')[0]);
if (major >= 24) {
  await import(cli);
} else {
  const node24 = fileURLToPath(new URL('../node_modules/node/bin/node', import.meta.url));
  if (!existsSync(node24)) {
    process.stderr.write(`fulcrum needs Node.js 24 or newer (this is ${process.version}); run npm install to get it\n`);
    process.exit(1);
  }
  const child = spawn(node24, [cli, ...process.argv.slice(2)], { stdio: 'inherit' });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}
