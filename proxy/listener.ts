/**
 * Listening and draining, the same for every listener of the node proxy and the ingress.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
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

/**
 * An HTTP/1.1 server that never listens: connections are handed to it (`emit('connection')`) after
 * TLS or protocol sniffing. node:http starts the connection tracking that enforces headersTimeout
 * and requestTimeout (slowloris) and makes closeIdleConnections() work only on 'listening', and
 * checks it every 30 s by default; both are set here, once for every such server.
 */
export function handedOverHttpServer(
  limits: { maxHeaderBytes: number; maxHeaders: number; headersTimeoutMs: number; requestTimeoutMs: number; idleTimeoutMs: number },
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): HttpServer {
  const server = createHttpServer(
    {
      maxHeaderSize: limits.maxHeaderBytes,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      connectionsCheckingInterval: 1_000,
      // Smuggling-resistant parsing stays on (insecureHTTPParser is false by default).
    },
    handler,
  );
  server.maxHeadersCount = limits.maxHeaders;
  server.emit('listening');
  return server;
}
