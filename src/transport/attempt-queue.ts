/**
 * Attempts waiting for a way to their upstream (a socket beyond `max_sockets`, an HTTP/2 stream
 * beyond `max_sessions`), oldest first. Bounded: past `MAX_QUEUED` an attempt fails at once (503,
 * retryable: it may go to another upstream). A cancelled attempt leaves the queue; one the proxy
 * gave up on meanwhile is skipped when the queue moves.
 */
import { ErrorCode, FulcrumError } from '../errors.ts';
import type { UpstreamAttempt } from './transport.ts';

/** Attempts that may wait per client toward one upstream. */
export const MAX_QUEUED = 4096;

export class AttemptQueue {
  private readonly waiting: UpstreamAttempt[] = [];

  get length(): number {
    return this.waiting.length;
  }

  /**
   * Queues `attempt`, or fails it when the queue is full; `waitingFor` says for what, in the
   * error (`a connection to 10.0.0.1:80 (max_sockets 8)`).
   */
  push(attempt: UpstreamAttempt, waitingFor: string): void {
    const waiting = this.waiting;
    if (waiting.length >= MAX_QUEUED) {
      attempt.error(new FulcrumError(ErrorCode.NoUpstream, `${waiting.length} requests already wait for ${waitingFor}`, 'internal', 503, true));
      return;
    }
    waiting.push(attempt);
    attempt.onCancel(() => {
      const i = waiting.indexOf(attempt);
      if (i !== -1) waiting.splice(i, 1);
    });
  }

  /** The oldest attempt still live, left in place (those given up on are dropped), or null. */
  peek(): UpstreamAttempt | null {
    const waiting = this.waiting;
    while (waiting.length > 0) {
      if (waiting[0].live) return waiting[0];
      waiting.shift();
    }
    return null;
  }

  /** The oldest attempt still live, taken out, or null. */
  next(): UpstreamAttempt | null {
    const attempt = this.peek();
    if (attempt !== null) this.waiting.shift();
    return attempt;
  }
}
