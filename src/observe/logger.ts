/**
 * Logging through pino: JSON lines by default (what log shippers read), readable colour lines
 * when writing to a terminal or when `log.format: pretty`.
 */
import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type pretty from 'pino-pretty';
import type { LogSettings } from '../config/schema.ts';

/** pino-pretty, loaded only for readable output (a terminal or `log.format: pretty`), not for JSON. */
function loadPretty(): typeof pretty {
  const mod = createRequire(import.meta.url)('pino-pretty') as typeof pretty & { default?: typeof pretty };
  return mod.default ?? mod;
}

export type { Logger };

/** Options for createLogger beyond the config's `log` section. */
export interface LoggerOptions {
  /** Where lines go (default stdout). Tests pass a stream to read them. */
  destination?: NodeJS.WritableStream;
}

/** A pino logger for the `log` settings; `flush()` before exit writes what is buffered. */
export function createLogger(settings: Pick<LogSettings, 'level' | 'format'>, options: LoggerOptions = {}): Logger {
  const toTerminal = options.destination === undefined && process.stdout.isTTY === true;
  const prettyOutput = settings.format === 'pretty' || (settings.format === 'auto' && toTerminal);
  const base = { level: settings.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  if (prettyOutput) {
    const stream = loadPretty()({ colorize: toTerminal, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname', sync: true, destination: options.destination ?? 1 });
    return pino(base, stream);
  }
  if (options.destination) return pino(base, options.destination);
  // Asynchronous writes keep logging off the request path; the balancer flushes on close.
  return pino(base, pino.destination({ dest: 1, sync: false }));
}
