/**
 * A Fulcrum logger whose JSON lines are kept, parsed, for tests that read what was logged
 * (one per "instance" when a test runs several side by side).
 */
import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/observe/logger.ts';

/** One log line, parsed. */
export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** A logger at `info` writing JSON into `lines`; `count(msg)` is how many lines say exactly `msg`. */
export function capturedLogger(): { logger: Logger; lines: LogLine[]; count(msg: string): number } {
  const lines: LogLine[] = [];
  let partial = '';
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      partial += chunk;
      let nl: number;
      while ((nl = partial.indexOf('\n')) !== -1) {
        lines.push(JSON.parse(partial.slice(0, nl)) as LogLine);
        partial = partial.slice(nl + 1);
      }
      callback();
    },
  });
  const logger = createLogger({ level: 'info', format: 'json' }, { destination });
  return { logger, lines, count: (msg) => lines.filter((l) => l.msg === msg).length };
}
