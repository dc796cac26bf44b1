/**
 * Listening and draining, the same for every listener of the node proxy and the ingress.
 */
import type { AddressInfo, Server, Socket } from 'node:net';

/** server.listen, resolving with the bound address or rejecting with the listen error. */
export function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

/**
 * Stops `server` accepting and waits until every socket in `sockets` (which the caller keeps
 * current) has closed; at `graceMs` the ones left are destroyed. The caller first asks its
 * connections to finish (closeIdleConnections, GOAWAY, ending idle keep-alives).
 */
export async function drainListener(server: Server, sockets: ReadonlySet<Socket>, graceMs: number): Promise<void> {
  const closed = new Promise<void>((r) => server.close(() => r()));
  const deadline = setTimeout(() => {
    for (const s of sockets) s.destroy();
  }, graceMs);
  deadline.unref();
  const drained = new Promise<void>((r) => {
    const check = (): void => {
      if (sockets.size === 0) r();
    };
    check();
    for (const s of sockets) s.once('close', check);
  });
  await Promise.all([closed, drained]);
  clearTimeout(deadline);
}
