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

/** Where a logger of createLogger writes: a file descriptor or the stream given, and whether its lines are JSON. */
export interface LogDestination {
  target: number | NodeJS.WritableStream;
  json: boolean;
}

const destinations = new WeakMap<Logger, LogDestination>();

/** Where `logger` writes, if createLogger made it (the access log writes there itself); undefined for any other logger. */
export function destinationOf(logger: Logger): LogDestination | undefined {
  return destinations.get(logger);
}

/** A pino logger for the `log` settings; `flush()` before exit writes what is buffered. */
export function createLogger(settings: Pick<LogSettings, 'level' | 'format'>, options: LoggerOptions = {}): Logger {
  const toTerminal = options.destination === undefined && process.stdout.isTTY === true;
  const prettyOutput = settings.format === 'pretty' || (settings.format === 'auto' && toTerminal);
  const base = { level: settings.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  const made = (logger: Logger, json: boolean): Logger => {
    destinations.set(logger, { target: options.destination ?? 1, json });
    return logger;
  };
  if (prettyOutput) {
    const stream = loadPretty()({ colorize: toTerminal, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname', sync: true, destination: options.destination ?? 1 });
    return made(pino(base, stream), false);
  }
  if (options.destination) return made(pino(base, options.destination), true);
  // Asynchronous writes keep logging off the request path; the balancer flushes on close.
  return made(pino(base, pino.destination({ dest: 1, sync: false })), true);
}
