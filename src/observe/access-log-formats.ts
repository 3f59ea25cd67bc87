/**
 * Access-log formats by name: each turns a finished exchange, or a closed TCP connection, into
 * one line of text. The configuration's `log.access_log.format` enum is built from this registry.
 */
import type { RequestContext } from '../core/context.ts';
import type { TcpConnectionEvent } from '../core/events.ts';
import { combinedFormat } from './access-log-combined.ts';
import { jsonFormat } from './access-log-json.ts';

/** One way to write an access-log line. */
export interface AccessLogFormat {
  readonly name: string;
  /** The line for a finished exchange, newline included; `level` is pino's number (30 info, 40 warn), `now` is `Date.now()`. */
  line(ctx: RequestContext, level: number, now: number): string;
  /** The line for a TCP connection that closed (a `protocol: tcp` listener's), newline included. */
  tcpLine(c: TcpConnectionEvent, level: number, now: number): string;
}

/** Every format, the default (`json`) first. */
export const accessLogFormats: readonly AccessLogFormat[] = [jsonFormat, combinedFormat];

/** The formats' names, for the schema's enum. */
export const accessLogFormatNames = accessLogFormats.map((f) => f.name) as ['json', 'combined'];

/** The format named `name` (a validated configuration names one that exists). */
export function findAccessLogFormat(name: string): AccessLogFormat {
  const format = accessLogFormats.find((f) => f.name === name);
  if (format === undefined) throw new Error(`unknown access log format: ${name}`);
  return format;
}
