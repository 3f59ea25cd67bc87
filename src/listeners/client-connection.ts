/**
 * One client connection of an HTTP/1.1 listener, as RFC 9112 section 9.3 wants it handled:
 * - pipelined requests are taken one at a time, in order: the next one starts once the answer
 *   to the previous one is complete, so responses leave in request order and nothing after an
 *   answer with `Connection: close` ever reaches an upstream (nginx's way);
 * - a request the parser refuses (400, 408, 431) is answered after the answers to the requests
 *   before it, never ahead of them;
 * - an answer that closes the connection closes it gracefully (nginx's lingering close): FIN
 *   after the answer, then whatever the client still sends is read and dropped, so a client
 *   still uploading reads the 4xx instead of a reset.
 * Node's http server parses; this module only decides when a parsed request may start.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
// The same lingering close as Fulcrum's own server (nginx's lingering_timeout and lingering_time).
import { LINGER_IDLE_MS, LINGER_MAX_MS } from '../downstream/http1-connection.ts';

/** Pipelined requests waiting behind the one in progress before the connection stops reading. */
export const MAX_WAITING = 32;
/**
 * Parsed requests that may wait at most: one read can hold thousands of small requests before a
 * pause takes effect. Past this the rest is answered 503 and the connection closes after it.
 */
export const MAX_QUEUED = 256;

/** The answer to requests pipelined past MAX_QUEUED. */
const tooDeep = (() => {
  const body = '503 Service Unavailable: too many pipelined requests on one connection; send the rest on a new one\n';
  return `HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n${body}`;
})();

/** Starts one request (the listener's handler): `expectContinue` is true for `Expect: 100-continue`. */
export type StartRequest = (req: IncomingMessage, res: ServerResponse, expectContinue: boolean) => void;

interface Waiting {
  req: IncomingMessage;
  res: ServerResponse;
  expectContinue: boolean;
}

const kConnection = Symbol('fulcrum.connection');
type TrackedSocket = Socket & { [kConnection]?: ClientConnection };
type OutgoingInternals = ServerResponse & { _last?: boolean };
/** Node's http server pauses a flooded connection this way too (socket._paused, then its parser). */
type ParsedSocket = Socket & { _paused?: boolean; parser?: { pause(): void; resume(): void; incoming?: IncomingMessage | null } | null };

/** The request Node's parser is reading on `socket`, if its body (or head) is not complete yet. */
export function requestBeingParsed(socket: Socket): IncomingMessage | null {
  const incoming = (socket as ParsedSocket).parser?.incoming ?? null;
  return incoming !== null && !incoming.complete ? incoming : null;
}

/** The state of one client connection: the request in progress and the ones parsed behind it. */
export class ClientConnection {
  private readonly socket: Socket;
  private readonly start: StartRequest;
  /** The answer in progress, or null between requests. */
  private active: ServerResponse | null = null;
  /** Requests parsed while another was in progress, then possibly a parser refusal (a string). */
  private readonly waiting: (Waiting | string)[] = [];
  /** Set once the connection is to close: nothing more is started or answered. */
  closing = false;
  private lingering = false;
  /** Runs when the queue is empty (a handshake that came after pipelined requests). */
  private afterQueue: (() => void) | null = null;
  /** Set once a refusal is queued: the parser stops there (or the queue is full), nothing after it is kept. */
  private refusalQueued = false;
  private readonly repause = (): void => {
    // Node resumes a paused connection on every drain of the answer in progress; a deep queue keeps it paused.
    if (this.waiting.length < MAX_WAITING) return;
    this.pause();
    // Outside the parser's execute (a drain): the parser itself may pause now, as Node's guard does after execute.
    (this.socket as ParsedSocket).parser?.pause();
  };

  constructor(socket: Socket, start: StartRequest) {
    this.socket = socket;
    this.start = start;
    (socket as TrackedSocket)[kConnection] = this;
    // Node's server calls destroySoon() once the last answer is written: close gracefully instead.
    socket.destroySoon = lingeringClose;
  }

  /** The connection state of a socket this module tracks, or undefined. */
  static of(socket: Socket): ClientConnection | undefined {
    return (socket as TrackedSocket)[kConnection];
  }

  /**
   * Runs `start` once every request parsed before it is answered (a WebSocket handshake after
   * pipelined requests); never, if the connection closes first.
   */
  whenIdle(start: () => void): void {
    if (this.closing) return;
    if (this.active === null && this.waiting.length === 0) return start();
    this.afterQueue = start;
  }

  /** The answer in progress (null between requests). */
  get activeResponse(): ServerResponse | null {
    return this.active;
  }

  /** A parsed request: started now, queued behind the one in progress, or dropped once the connection is closing. */
  request(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    if (this.closing || this.refusalQueued) return;
    if (this.active !== null || this.waiting.length > 0) {
      if (this.waiting.length >= MAX_QUEUED) {
        this.refusalQueued = true;
        this.waiting.push(tooDeep);
        return;
      }
      this.waiting.push({ req, res, expectContinue });
      // A deep pipeline waits in the kernel (TCP backpressure) rather than in memory.
      if (this.waiting.length === MAX_WAITING) this.pause();
      return;
    }
    this.begin(req, res, expectContinue);
  }

  /** Stops parsing, as Node's own flood guard does: _paused makes it pause the parser after the current chunk. */
  private pause(): void {
    const socket = this.socket as ParsedSocket;
    if (socket._paused !== true) {
      socket._paused = true;
      socket.pause();
    }
    if (!socket.listeners('resume').includes(this.repause)) socket.on('resume', this.repause);
  }

  /**
   * A refusal written as raw bytes (a request the parser rejected): sent now if nothing is in
   * progress, else after the answers to the requests before it. The connection then closes.
   */
  refuse(answer: string, broken: IncomingMessage | null = null): void {
    if (this.closing || this.refusalQueued) return;
    if (broken !== null) {
      // The broken request was parsed and queued (its body is the bad part): the refusal takes its place.
      const at = this.waiting.findIndex((w) => typeof w !== 'string' && w.req === broken);
      if (at !== -1) this.waiting.length = at;
    }
    if (this.active !== null || this.waiting.length > 0) {
      this.refusalQueued = true;
      this.waiting.push(answer);
      return;
    }
    this.writeRefusal(answer);
  }

  private begin(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    this.active = res;
    res.once('finish', onAnswerFinished);
    res.once('close', onAnswerClosed);
    this.start(req, res, expectContinue);
  }

  /** The answer in progress is complete (`finished`) or was cut: start the next request, or close. */
  next(res: ServerResponse, finished: boolean): void {
    if (this.active !== res) return;
    this.active = null;
    if (!finished || (res as OutgoingInternals)._last === true) {
      // The answer said `Connection: close` (or never completed): nothing after it is started.
      this.closing = true;
      this.waiting.length = 0;
      return;
    }
    const item = this.waiting.shift();
    const socket = this.socket as ParsedSocket;
    if (socket._paused === true && this.waiting.length < MAX_WAITING / 2 && !this.refusalQueued) {
      socket._paused = false;
      socket.parser?.resume();
      socket.resume();
    }
    if (item === undefined) {
      const after = this.afterQueue;
      this.afterQueue = null;
      after?.();
      return;
    }
    if (typeof item === 'string') this.writeRefusal(item);
    else this.begin(item.req, item.res, item.expectContinue);
  }

  private writeRefusal(answer: string): void {
    this.closing = true;
    this.waiting.length = 0;
    if (!this.socket.writable) {
      this.socket.destroy();
      return;
    }
    this.socket.end(answer, 'latin1');
    lingeringClose.call(this.socket);
  }

  /** True while the connection only reads and drops (an answer that closed it was sent). */
  get isLingering(): boolean {
    return this.lingering;
  }

  /** Read and drop what the client still sends, until it closes or the linger time is over. */
  linger(): void {
    if (this.lingering) return;
    this.lingering = true;
    this.closing = true;
    this.waiting.length = 0;
    const socket = this.socket;
    // Adding a 'data' listener takes the socket from Node's parser (it unconsumes); the parser's own is removed.
    // A reset while lingering is expected (after CONNECT Node no longer listens for errors itself).
    socket.on('error', dropData);
    socket.on('data', dropData);
    for (const listener of socket.listeners('data')) if (listener !== dropData) socket.removeListener('data', listener as (chunk: Buffer) => void);
    socket.once('end', destroyNow);
    socket.setTimeout(LINGER_IDLE_MS, destroyNow);
    const cap = setTimeout(destroySocket, LINGER_MAX_MS, socket);
    socket.once('close', () => clearTimeout(cap));
    socket.resume();
  }
}

function onAnswerFinished(this: ServerResponse): void {
  // Node has detached the socket from the answer by now; the request still has it.
  const connection = ClientConnection.of((this.req as IncomingMessage).socket);
  connection?.next(this, true);
}

function onAnswerClosed(this: ServerResponse): void {
  if (this.writableFinished) return;
  const connection = ClientConnection.of((this.req as IncomingMessage).socket);
  connection?.next(this, false);
}

/** `socket.destroySoon` for tracked sockets: FIN once the answer is written, then linger. */
function lingeringClose(this: Socket): void {
  if (this.destroyed) return;
  if (this.writable) this.end();
  const connection = ClientConnection.of(this);
  if (connection === undefined) {
    this.once('finish', destroyNow);
    return;
  }
  connection.linger();
}

function dropData(): void {}

function destroyNow(this: Socket): void {
  this.destroy();
}

function destroySocket(socket: Socket): void {
  socket.destroy();
}
