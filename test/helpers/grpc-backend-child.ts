/**
 * An Echo gRPC backend (test/helpers/grpc.ts) in its own process, so a test can kill -9 it in the
 * middle of a call. Prints `PORT <n>` once it listens.
 * Usage: node grpc-backend-child.ts NAME [PORT]
 */
import { serveEcho } from './grpc.ts';

const [name, portText] = process.argv.slice(2);
const echo = await serveEcho(name, Number(portText ?? 0));
process.stdout.write(`PORT ${echo.port}\n`);
