/**
 * node:http for value use, as a CommonJS-style object. An ESM `import ... from 'node:http'` builds
 * the module namespace by reading every export, lazy ones included (Node's bundled undici behind
 * `WebSocket`, http2, worker_threads ...): about 13 MiB of RSS at start for nothing Fulcrum uses.
 * `process.getBuiltinModule` hands back the exports without touching them. Type imports
 * (`import type ... from 'node:http'`) cost nothing and stay as they are.
 */
export const http = process.getBuiltinModule('node:http');
export const { STATUS_CODES } = http;
