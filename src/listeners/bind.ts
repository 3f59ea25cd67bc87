/**
 * Binding a listener's acceptor and naming its address: what HTTP and TCP listeners share.
 */
import type { AddressInfo, Server } from 'node:net';
import type { Logger } from '../observe/logger.ts';

/** A bound listener's address as users type it. */
export interface ListenerAddress {
  name: string;
  host: string;
  port: number;
  url: string;
}

/**
 * Binds `acceptor` to `host:port` (port 0: the OS chooses); rejects with the bind error
 * (EADDRINUSE, EACCES, ...). Once bound, accept errors (EMFILE, ...) are logged, never thrown:
 * they must not end the process.
 */
export function bindAcceptor(acceptor: Server, host: string, port: number, logger: Logger, listener: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    acceptor.once('error', onError);
    acceptor.listen(port, host, () => {
      acceptor.off('error', onError);
      acceptor.on('error', (err) => logger.error({ err, listener }, 'accept failed'));
      resolve();
    });
  });
}

/** The acceptor's bound address as `scheme://host:port` (a wildcard bind shown as localhost), or null before binding. */
export function boundAddress(acceptor: Server, name: string, scheme: string): ListenerAddress | null {
  const a = acceptor.address() as AddressInfo | null;
  if (!a) return null;
  const shown = a.address === '0.0.0.0' || a.address === '::' ? 'localhost' : a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return { name, host: a.address, port: a.port, url: `${scheme}://${shown}:${a.port}` };
}
