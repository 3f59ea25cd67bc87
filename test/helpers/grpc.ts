/**
 * gRPC for tests, on @grpc/grpc-js with no protobuf compiler: one hand-written service
 * (`fulcrum.test.Echo`, messages as JSON) with a unary, a server-streaming, a client-streaming
 * and a bidirectional method; real grpc-js servers on 127.0.0.1 port 0 (in this process, or in a
 * child process that a test can kill -9) that answer with their name; and clients whose calls
 * resolve with everything a caller sees (messages, initial metadata, status and trailers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';

/** What a caller asks of an Echo backend. Every field is optional. */
export interface EchoRequest {
  text?: string;
  /** Wait this long before answering (ms; the wait ends early if the call is cancelled). */
  delayMs?: number;
  /** Answer with this status instead of a message; `trailersOnly` sends no initial metadata first (a trailers-only answer). */
  fail?: { code: number; details: string; trailersOnly?: boolean };
  /** Server streaming: how many messages (default 3). */
  count?: number;
  /** Server streaming: the gap between messages (ms, default 0). */
  intervalMs?: number;
}

/** What an Echo backend answers (one message; streams send several). */
export interface EchoReply {
  /** The name of the backend that answered. */
  backend: string;
  text?: string;
  /** Server streaming: the message's number, from 0. */
  index?: number;
  /** Client streaming: the texts received, in order. */
  texts?: string[];
  /** The caller's `x-*` metadata as the backend received it (binary `-bin` values in base64). */
  metadata?: Record<string, string>;
}

/** Encodes messages as JSON: no .proto, no compiler (the proxy never looks inside them). */
const serialize = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const deserialize = (bytes: Buffer): never => JSON.parse(bytes.toString('utf8')) as never;

function method(name: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<unknown, unknown> {
  return { path: `/fulcrum.test.Echo/${name}`, requestStream, responseStream, requestSerialize: serialize, requestDeserialize: deserialize, responseSerialize: serialize, responseDeserialize: deserialize };
}

/** The Echo service, by the client's method names. */
export const echoService: grpc.ServiceDefinition = {
  unary: method('Unary', false, false),
  serverStream: method('ServerStream', false, true),
  clientStream: method('ClientStream', true, false),
  bidi: method('Bidi', true, true),
};

/** Binary trailing metadata every Echo answer carries (`x-trailer-bin`): bytes no text header could hold. */
export const trailerBytes = Buffer.from([0x00, 0x01, 0xfe, 0xff, 0x0d, 0x0a]);

/** The trailers an Echo backend named `name` ends every call with (also on errors). */
function trailersOf(name: string): grpc.Metadata {
  const trailers = new grpc.Metadata();
  trailers.set('x-trailer', `from ${name}`);
  trailers.set('x-trailer-bin', trailerBytes);
  return trailers;
}

/** Initial metadata an Echo backend sends before its first message. */
function initialOf(name: string): grpc.Metadata {
  const initial = new grpc.Metadata();
  initial.set('x-backend', name);
  initial.set('x-initial-bin', Buffer.from(name));
  return initial;
}

/** The caller's `x-*` metadata, binary values in base64. */
function callerMetadata(metadata: grpc.Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(metadata.getMap())) if (key.startsWith('x-')) out[key] = typeof value === 'string' ? value : value.toString('base64');
  return out;
}

/** What a backend counts of its calls. */
interface CallCounts {
  calls: Map<string, number>;
  cancelled: number;
}

/** What every server call has: `cancelled`, and the 'cancelled' event. */
type CancellableCall = NodeJS.EventEmitter & { readonly cancelled: boolean };

/** Waits `ms` unless the call is cancelled first; resolves false (and counts it) when it was. */
function waitOrCancel(call: CancellableCall, ms: number, counts: CallCounts): Promise<boolean> {
  if (call.cancelled) {
    counts.cancelled++;
    return Promise.resolve(false);
  }
  if (ms <= 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onCancel = (): void => {
      clearTimeout(timer);
      counts.cancelled++;
      resolve(false);
    };
    const timer = setTimeout(() => {
      call.off('cancelled', onCancel);
      resolve(true);
    }, ms);
    call.once('cancelled', onCancel);
  });
}

/** The Echo handlers of a backend named `name`, counting calls into `counts`. */
function echoHandlers(name: string, counts: CallCounts): grpc.UntypedServiceImplementation {
  const onCall = (method: string): void => void counts.calls.set(method, (counts.calls.get(method) ?? 0) + 1);
  return {
    unary: (call: grpc.ServerUnaryCall<EchoRequest, EchoReply>, callback: grpc.sendUnaryData<EchoReply>) => {
      onCall('unary');
      const request = call.request;
      void waitOrCancel(call, request.delayMs ?? 0, counts).then((live) => {
        if (!live) return;
        if (request.fail !== undefined) {
          if (request.fail.trailersOnly !== true) call.sendMetadata(initialOf(name));
          callback({ code: request.fail.code, details: request.fail.details, metadata: trailersOf(name) });
          return;
        }
        call.sendMetadata(initialOf(name));
        callback(null, { backend: name, text: request.text, metadata: callerMetadata(call.metadata) }, trailersOf(name));
      });
    },
    serverStream: (call: grpc.ServerWritableStream<EchoRequest, EchoReply>) => {
      onCall('serverStream');
      const request = call.request;
      call.sendMetadata(initialOf(name));
      const count = request.count ?? 3;
      void (async () => {
        for (let index = 0; index < count; index++) {
          if (index > 0 && !(await waitOrCancel(call, request.intervalMs ?? 0, counts))) return;
          if (call.cancelled) return;
          call.write({ backend: name, index });
        }
        call.end(trailersOf(name));
      })();
    },
    clientStream: (call: grpc.ServerReadableStream<{ text: string }, EchoReply>, callback: grpc.sendUnaryData<EchoReply>) => {
      onCall('clientStream');
      const texts: string[] = [];
      call.on('data', (m: { text: string }) => texts.push(m.text));
      call.on('end', () => {
        call.sendMetadata(initialOf(name));
        callback(null, { backend: name, texts, metadata: callerMetadata(call.metadata) }, trailersOf(name));
      });
      call.on('error', () => {});
    },
    bidi: (call: grpc.ServerDuplexStream<{ text: string }, EchoReply>) => {
      onCall('bidi');
      call.sendMetadata(initialOf(name));
      call.on('data', (m: { text: string }) => call.write({ backend: name, text: m.text }));
      call.on('end', () => call.end(trailersOf(name)));
      call.on('error', () => {});
    },
  };
}

/** A running Echo server: its port and the calls it has taken, by method. */
export interface EchoServer {
  name: string;
  port: number;
  server: grpc.Server;
  /** Calls that reached this backend, by method (`unary`, `serverStream`, `clientStream`, `bidi`). */
  calls: Map<string, number>;
  /** Calls cancelled (the caller or the proxy reset the stream) while the backend was still waiting to answer (a delay, a stream's gap). */
  cancelled: number;
}

/** Starts an Echo server named `name` on 127.0.0.1:`port` (0: any) with `credentials` (default insecure). */
export async function serveEcho(name: string, port = 0, credentials = grpc.ServerCredentials.createInsecure(), options: grpc.ServerOptions = {}): Promise<EchoServer> {
  const server = new grpc.Server(options);
  const echo: EchoServer = { name, port: 0, server, calls: new Map(), cancelled: 0 };
  server.addService(echoService, echoHandlers(name, echo));
  echo.port = await new Promise<number>((resolve, reject) => server.bindAsync(`127.0.0.1:${port}`, credentials, (err, p) => (err ? reject(err) : resolve(p))));
  return echo;
}

/** An Echo backend for a test: `url` for a pool (`http://` or `https://` with TLS credentials). */
export interface EchoBackend extends EchoServer {
  url: string;
  /** Sends GOAWAY on every connection, lets the calls in flight finish and stops listening (grpc-js `tryShutdown`). */
  shutdown(): Promise<void>;
}

/** An Echo server for one test, shut down (forcefully) after it. */
export async function startEchoBackend(t: TestContext, name: string, options: { credentials?: grpc.ServerCredentials; server?: grpc.ServerOptions } = {}): Promise<EchoBackend> {
  const echo = await serveEcho(name, 0, options.credentials, options.server);
  t.after(() => echo.server.forceShutdown());
  const scheme = options.credentials === undefined || options.credentials._isSecure() === false ? 'http' : 'https';
  // Assigned, not spread: `calls` and `cancelled` stay live.
  return Object.assign(echo, {
    url: `${scheme}://127.0.0.1:${echo.port}`,
    shutdown: () => new Promise<void>((resolve, reject) => echo.server.tryShutdown((err) => (err ? reject(err) : resolve()))),
  });
}

const childScript = new URL('./grpc-backend-child.ts', import.meta.url).pathname;

/** An Echo backend in its own process (test/helpers/grpc-backend-child.ts), for kill -9. */
export interface EchoBackendProcess {
  name: string;
  child: ChildProcess;
  port: number;
  url: string;
}

/** Starts an Echo backend process; resolves once it listens. Killed after the test. */
export function startEchoBackendProcess(t: TestContext, name: string): Promise<EchoBackendProcess> {
  const child = spawn(process.execPath, [childScript, name], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    let buffered = '';
    child.stdout!.on('data', (d: Buffer) => {
      buffered += d.toString();
      const m = /^PORT (\d+)$/m.exec(buffered);
      if (m !== null) {
        const port = Number(m[1]);
        resolve({ name, child, port, url: `http://127.0.0.1:${port}` });
      }
    });
    child.once('exit', (code, signal) => reject(new Error(`echo backend ${name} exited (${code ?? signal}) before listening`)));
  });
}

/** A client of the Echo service; all its calls share one channel (one HTTP/2 connection to one address). */
export type EchoClient = grpc.Client & Record<'unary' | 'serverStream' | 'clientStream' | 'bidi', (...args: unknown[]) => unknown>;

const EchoClientConstructor = grpc.makeGenericClientConstructor(echoService, 'fulcrum.test.Echo');

/** A client of `127.0.0.1:port` (insecure unless `credentials`), closed after the test. */
export function echoClient(t: TestContext, port: number, credentials = grpc.credentials.createInsecure(), options: grpc.ChannelOptions = {}): EchoClient {
  const client = new EchoClientConstructor(`127.0.0.1:${port}`, credentials, options) as unknown as EchoClient;
  t.after(() => client.close());
  return client;
}

/** What a call ended with, as its caller saw it: never a rejection, so tests can assert on failures. */
export interface CallOutcome<T> {
  /** The messages received, in order. */
  messages: T[];
  /** The initial metadata (empty for a trailers-only answer). */
  metadata: grpc.Metadata | null;
  /** The status: code, details and the trailing metadata. */
  status: grpc.StatusObject;
  /** Milliseconds from the call's start to its status. */
  ms: number;
}

/** Options of one call: request metadata, and a deadline in ms from now (default 5000, so nothing waits forever). */
export interface CallOptions {
  metadata?: grpc.Metadata;
  deadlineMs?: number;
  /** Hears each message as it arrives, with the call (to cancel it, or to kill a backend mid-stream). */
  onMessage?: (message: EchoReply, index: number) => void;
}

/** Listens to a client call until its status: collects messages, initial metadata and status. */
function outcome<T>(call: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T> | grpc.ClientUnaryCall, started: number, options: CallOptions, streamed: boolean): Promise<CallOutcome<T>> {
  // Typed here as the emitter it is: grpc-js types only 'metadata' and 'status' on a unary call.
  const events = call as unknown as NodeJS.EventEmitter;
  return new Promise((resolve) => {
    const messages: T[] = [];
    let metadata: grpc.Metadata | null = null;
    events.on('metadata', (m: grpc.Metadata) => (metadata = m));
    if (streamed) {
      events.on('data', (m: T) => {
        messages.push(m);
        options.onMessage?.(m as EchoReply, messages.length - 1);
      });
      // A failed stream also emits 'error'; the status below says everything.
      events.on('error', () => {});
    }
    events.on('status', (status: grpc.StatusObject) => {
      // grpc-js emits 'status' before the last 'data' has been read on some paths: settle after them.
      setImmediate(() => resolve({ messages, metadata, status, ms: performance.now() - started }));
    });
  });
}

function callArgs(options: CallOptions): [grpc.Metadata, grpc.CallOptions] {
  return [options.metadata ?? new grpc.Metadata(), { deadline: Date.now() + (options.deadlineMs ?? 5000) }];
}

/** One unary call. */
export function unaryCall(client: EchoClient, request: EchoRequest, options: CallOptions = {}): Promise<CallOutcome<EchoReply>> {
  const started = performance.now();
  const messages: EchoReply[] = [];
  const [metadata, callOptions] = callArgs(options);
  const call = client.unary(request, metadata, callOptions, (err: grpc.ServiceError | null, value?: EchoReply) => {
    if (err === null && value !== undefined) messages.push(value);
  }) as grpc.ClientUnaryCall;
  return outcome<EchoReply>(call, started, options, false).then((o) => ({ ...o, messages }));
}

/** One server-streaming call. */
export function serverStreamCall(client: EchoClient, request: EchoRequest, options: CallOptions = {}): Promise<CallOutcome<EchoReply>> {
  const started = performance.now();
  const call = client.serverStream(request, ...callArgs(options)) as grpc.ClientReadableStream<EchoReply>;
  return outcome<EchoReply>(call, started, options, true);
}

/** One client-streaming call sending `texts`. */
export function clientStreamCall(client: EchoClient, texts: string[], options: CallOptions = {}): Promise<CallOutcome<EchoReply>> {
  const started = performance.now();
  const messages: EchoReply[] = [];
  const [metadata, callOptions] = callArgs(options);
  const call = client.clientStream(metadata, callOptions, (err: grpc.ServiceError | null, value?: EchoReply) => {
    if (err === null && value !== undefined) messages.push(value);
  }) as grpc.ClientWritableStream<{ text: string }>;
  const result = outcome<EchoReply>(call as unknown as grpc.ClientUnaryCall, started, options, false).then((o) => ({ ...o, messages }));
  for (const text of texts) call.write({ text });
  call.end();
  return result;
}

/**
 * One bidirectional call: sends `texts` one at a time, each after the answer to the one before
 * (so it proves both directions are open at once), then half-closes.
 */
export function bidiCall(client: EchoClient, texts: string[], options: CallOptions = {}): Promise<CallOutcome<EchoReply>> {
  const started = performance.now();
  const call = client.bidi(...callArgs(options)) as grpc.ClientDuplexStream<{ text: string }, EchoReply>;
  let sent = 0;
  const next = (): void => {
    if (sent < texts.length) call.write({ text: texts[sent++] });
    else call.end();
  };
  const result = outcome<EchoReply>(call, started, { ...options, onMessage: (m, i) => (options.onMessage?.(m, i), next()) }, true);
  next();
  return result;
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` at once; resolves with the results in order. */
export async function runConcurrently<T>(count: number, concurrency: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const results = new Array<T>(count);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      results[i] = await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return results;
}

/** A gRPC call as node:http2 saw it, frame by frame. */
export interface RawCall {
  /** The response HEADERS, and whether that frame ended the stream (a trailers-only answer). */
  headers: import('node:http2').IncomingHttpHeaders;
  headersEndStream: boolean;
  /** The trailers (null: none, as in a trailers-only answer). */
  trailers: import('node:http2').IncomingHttpHeaders | null;
  /** Response body bytes (gRPC length-prefixed messages). */
  bodyBytes: number;
  /** Milliseconds from the request to the stream's end. */
  ms: number;
}

/**
 * One Echo call over plain node:http2 (a client with no gRPC logic and no timer of its own),
 * to see frames a gRPC library hides: `request` is sent as one length-prefixed message, with
 * `headers` added (e.g. `grpc-timeout`). Rejects after `timeoutMs` (default 3000).
 */
export function rawCall(port: number, method: string, request: EchoRequest, headers: Record<string, string> = {}, timeoutMs = 3000): Promise<RawCall> {
  const http2 = process.getBuiltinModule('node:http2');
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const started = performance.now();
    const done = (err: Error | null, value?: RawCall): void => {
      clearTimeout(timer);
      session.destroy();
      if (err !== null) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(() => done(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    session.on('error', (err) => done(err));
    const req = session.request({ ':method': 'POST', ':path': `/fulcrum.test.Echo/${method}`, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    const message = serialize(request);
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    message.copy(frame, 5);
    req.end(frame);
    const seen: RawCall = { headers: {}, headersEndStream: false, trailers: null, bodyBytes: 0, ms: 0 };
    req.on('response', (h, flags) => {
      seen.headers = h;
      seen.headersEndStream = (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0;
    });
    req.on('trailers', (h) => (seen.trailers = h));
    req.on('data', (d: Buffer) => (seen.bodyBytes += d.length));
    req.on('error', (err) => done(err));
    req.on('close', () => done(null, { ...seen, ms: performance.now() - started }));
  });
}
