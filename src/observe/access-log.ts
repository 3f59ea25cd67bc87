/**
 * The access log: one line per finished request (a WebSocket tunnel: one line when it closes),
 * and one per TCP connection when it closes, written by a subscriber of `fulcrum:request:end`
 * and `fulcrum:tcp:close`, never by the proxies themselves. Lines are built by hand in the configured format
 * (src/observe/access-log-formats.ts) and written in batches (src/observe/batch-writer.ts), where
 * the rest of the log goes or to `log.access_log.path`. Readable output (`log.format: pretty`) and
 * a logger an embedder brings get JSON lines through pino, as before.
 */
import { requestEnd, tcpClose, type RequestEndEvent, type TcpConnectionEvent } from '../core/events.ts';
import { AccessLogConfig, type AccessLogSettings } from '../config/schema.ts';
import { findAccessLogFormat } from './access-log-formats.ts';
import { accessFields, accessMessage, tcpFields, tcpLevel, tcpMessage } from './access-log-json.ts';
import { FdWriter, StreamWriter, openAppend, type LineWriter } from './batch-writer.ts';
import { destinationOf, type Logger } from './logger.ts';

/** A slow destination may hold this many buffers' worth of lines before lines are dropped. */
const pendingBuffers = 8;

/** Options of startAccessLog beyond the settings. */
export interface AccessLogOptions {
  /** Log only the exchanges this carries (a balancer's proxy); null: every exchange in the process. */
  carrier?: object | null;
  /** Log only the TCP connections this carries (a balancer's TCP proxy); null: every one in the process. */
  tcpCarrier?: object | null;
  /** Called with the number of lines dropped (a destination that does not keep up, or failed). */
  onDrop?: (lines: number) => void;
}

/** A running access log. */
export interface AccessLog {
  readonly settings: AccessLogSettings;
  /** Lines dropped so far. */
  readonly dropped: number;
  /** Opens `path` again (after logrotate moved it); pending lines go to the old file. No-op without a path. */
  reopen(): void;
  /** Unsubscribes and writes what is pending. */
  stop(): Promise<void>;
}

/**
 * Subscribes the access log; lines go to `settings.path`, or where `logger` writes. Throws when
 * the file cannot be opened.
 */
export function startAccessLog(logger: Logger, settings: AccessLogSettings = AccessLogConfig.parse({}), options: AccessLogOptions = {}): AccessLog {
  const carrier = options.carrier ?? null;
  const tcpCarrier = options.tcpCarrier ?? null;
  const format = findAccessLogFormat(settings.format);
  const pinoLog = logger.child({ log: 'access' });
  let dropped = 0;
  let warned = false;
  const onDrop = (lines: number, error?: NodeJS.ErrnoException): void => {
    dropped += lines;
    options.onDrop?.(lines);
    if (warned) return;
    warned = true;
    const cause = error === undefined ? 'the destination does not keep up' : `writing failed (${error.code ?? error.message})`;
    logger.warn({ log: 'access', dropped: lines, error: error?.code }, `access log: ${cause}; lines are dropped and counted in lb_access_log_dropped_total (said once)`);
  };
  const open = (): LineWriter | null => {
    const writerOptions = { bufferBytes: settings.buffer_bytes, flushMs: settings.flush, maxPendingBytes: pendingBuffers * settings.buffer_bytes, onDrop };
    if (settings.path !== undefined) return new FdWriter(openAppend(settings.path), { ...writerOptions, ownsFd: true });
    const destination = destinationOf(logger);
    // Readable lines, or a logger Fulcrum did not make: JSON goes through pino like the rest.
    if (format.name === 'json' && destination?.json !== true) return null;
    const target = destination?.target ?? 1;
    if (typeof target === 'number') return new FdWriter(target, { ...writerOptions, ownsFd: false });
    return new StreamWriter(target, writerOptions.maxPendingBytes, onDrop);
  };
  let writer = open();

  // The child keeps the level it was made with: it follows the balancer's logger (a reload may change that).
  const followLevel = (): void => {
    if (pinoLog.level !== logger.level) pinoLog.level = logger.level;
  };
  const onEnd = (message: unknown): void => {
    const { ctx } = message as RequestEndEvent;
    if (carrier !== null && ctx.carrier !== carrier) return;
    if (ctx.droppedHeaders !== null && logger.isLevelEnabled('debug')) {
      followLevel();
      pinoLog.debug({ request_id: ctx.requestIdForUpstream ?? ctx.id, listener: ctx.listener, headers: ctx.droppedHeaders }, `dropped request header(s) with "_" in the name: ${ctx.droppedHeaders.join(', ')}`);
    }
    const warn = ctx.status >= 500;
    if (!logger.isLevelEnabled(warn ? 'warn' : 'info')) return;
    if (writer !== null) return writer.write(format.line(ctx, warn ? 40 : 30, Date.now()));
    followLevel();
    if (warn) pinoLog.warn(accessFields(ctx), accessMessage(ctx));
    else pinoLog.info(accessFields(ctx), accessMessage(ctx));
  };
  const onTcpClose = (message: unknown): void => {
    const c = message as TcpConnectionEvent;
    if (tcpCarrier !== null && c.carrier !== tcpCarrier) return;
    const level = tcpLevel(c);
    if (!logger.isLevelEnabled(level === 40 ? 'warn' : 'info')) return;
    if (writer !== null) return writer.write(format.tcpLine(c, level, Date.now()));
    followLevel();
    if (level === 40) pinoLog.warn(tcpFields(c), tcpMessage(c));
    else pinoLog.info(tcpFields(c), tcpMessage(c));
  };
  requestEnd.subscribe(onEnd);
  tcpClose.subscribe(onTcpClose);
  let stopped: Promise<void> | null = null;
  return {
    settings,
    get dropped() {
      return dropped;
    },
    reopen() {
      if (settings.path === undefined || stopped !== null) return;
      const old = writer;
      try {
        writer = open();
      } catch (err) {
        logger.error({ log: 'access', path: settings.path, error: (err as NodeJS.ErrnoException).code }, `access log: cannot reopen ${settings.path}: ${(err as Error).message}; still writing to the file open before`);
        return;
      }
      void old?.close();
    },
    stop() {
      stopped ??= (async () => {
        requestEnd.unsubscribe(onEnd);
        tcpClose.unsubscribe(onTcpClose);
        await writer?.close();
      })();
      return stopped;
    },
  };
}
