/**
 * Byte counts of long-lived connections (WebSocket tunnels, TCP connections) passed on while
 * they are still open: each `collect` (a Prometheus scrape, a dashboard tick) hands over what
 * every open connection moved since the last one, and `close` hands over the rest. A day-long
 * connection so shows in rates as it goes, and each byte is handed over exactly once.
 */

/** Something that counts its bytes: `bytesIn` client to upstream, `bytesOut` upstream to client. */
export interface ByteCounting {
  readonly bytesIn: number;
  readonly bytesOut: number;
}

/** Receives the bytes a connection moved since they were last handed over (either may be 0). */
export type AddBytes<K> = (connection: K, bytesIn: number, bytesOut: number) => void;

/** The open connections of one observer and how many of their bytes it was already given. */
export class OpenBytes<K extends ByteCounting> {
  private readonly given = new Map<K, { in: number; out: number }>();

  /** Connections open now. */
  get size(): number {
    return this.given.size;
  }

  /** The open connections, in the order they opened. */
  keys(): IterableIterator<K> {
    return this.given.keys();
  }

  /** Starts following `connection`; its bytes count from 0. */
  open(connection: K): void {
    this.given.set(connection, { in: 0, out: 0 });
  }

  /** Hands over what each open connection moved since the last `collect`. */
  collect(add: AddBytes<K>): void {
    for (const [connection, given] of this.given) handOver(connection, given, add);
  }

  /** Hands over `connection`'s last bytes and stops following it; false when it was not followed. */
  close(connection: K, add: AddBytes<K>): boolean {
    const given = this.given.get(connection);
    if (given === undefined) return false;
    this.given.delete(connection);
    handOver(connection, given, add);
    return true;
  }

  /** Forgets every connection (nothing is handed over). */
  clear(): void {
    this.given.clear();
  }
}

function handOver<K extends ByteCounting>(connection: K, given: { in: number; out: number }, add: AddBytes<K>): void {
  const bytesIn = Math.max(0, connection.bytesIn - given.in);
  const bytesOut = Math.max(0, connection.bytesOut - given.out);
  given.in = connection.bytesIn;
  given.out = connection.bytesOut;
  if (bytesIn > 0 || bytesOut > 0) add(connection, bytesIn, bytesOut);
}
