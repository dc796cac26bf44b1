/**
 * A TLS client for tests of SNI-selected server certificates (the ingress's CertificateStore and
 * what feeds it): connects to 127.0.0.1 with a server name, verifying the chain against a test CA and
 * the name as a browser does. Sockets are destroyed when the test finishes.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls, { type SecureContextOptions, type SecureContext, type TLSSocket } from 'node:tls';
import { onTestFinished } from 'vitest';

export interface SniClient {
  connect(port: number, servername: string): Promise<TLSSocket>;
  /** The SHA-256 fingerprint a new client sees, or `error: <code>` when the handshake fails. */
  handshake(port: number, servername: string): Promise<string>;
  /** Writes `text` and resolves with the first chunk that comes back. */
  echo(socket: TLSSocket, text: string): Promise<string>;
}

/** `ca` is read at each connection (a test may replace its CA). */
export function sniClient(ca: () => string | Buffer): SniClient {
  const connect = async (port: number, servername: string): Promise<TLSSocket> => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: ca(), checkServerIdentity: (_host, cert) => tls.checkServerIdentity(servername, cert) });
    onTestFinished(() => void socket.destroy());
    await once(socket, 'secureConnect');
    return socket;
  };
  return {
    connect,
    async handshake(port, servername) {
      try {
        const s = await connect(port, servername);
        const fp = s.getPeerCertificate().fingerprint256;
        s.destroy();
        return fp;
      } catch (err) {
        return `error: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
      }
    },
    async echo(socket, text) {
      socket.write(text);
      const [chunk] = (await once(socket, 'data')) as [Buffer];
      return chunk.toString();
    },
  };
}

/**
 * A TLS echo server on 127.0.0.1 whose certificates come only from `sni` (a CertificateStore's
 * sniCallback(): no default certificate). Closed, with its connections, when the test finishes.
 */
export async function serveSni(sni: (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void, options: SecureContextOptions): Promise<number> {
  const sockets = new Set<TLSSocket>();
  const server = tls.createServer({ ...options, SNICallback: sni }, (s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.pipe(s);
  });
  server.on('tlsClientError', () => {});
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(async () => {
    for (const s of sockets) s.destroy();
    server.close();
    await once(server, 'close');
  });
  return (server.address() as AddressInfo).port;
}
