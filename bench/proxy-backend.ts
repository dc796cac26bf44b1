/**
 * bench/proxy's backend, a process of its own (forked by bench/proxy.ts with an IPC channel):
 *
 * - an HTTP/1.1 server answering every request with 200 and the two bytes "ok" (keep-alive, no
 *   idle timeout short enough to close a pooled connection during a run), the smallest response
 *   a proxy can forward, so the proxies' own cost is what differs between the paths;
 * - a TCP sink for the tunnel phase: it counts the bytes it receives and, each time the count
 *   crosses a multiple of ACK_BYTES, writes the count back (8 bytes, big-endian). The sender times
 *   these acknowledgements, so the throughput is what reached the end of the path, through every
 *   hop's buffers, and needs no half-close to travel through the proxies.
 *
 * Protocol: the parent sends {t:'start', host}; the child answers {t:'ready', httpPort, sinkPort}
 * once both listen on host (port 0 each), or {t:'error'}. It exits when the channel closes, so it
 * never outlives the benchmark.
 */
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer, type Socket } from 'node:net';
import { once } from 'node:events';

export type ToBackend = { t: 'start'; host: string };
export type FromBackend = { t: 'ready'; httpPort: number; sinkPort: number } | { t: 'error'; message: string };

/** The sink acknowledges every this many bytes received. */
export const ACK_BYTES = 1 << 20;

const BODY = Buffer.from('ok');

async function main(): Promise<void> {
  const send = (m: FromBackend): void => void process.send!(m);
  const sockets = new Set<Socket>();
  const http = createHttpServer({ keepAlive: true, requestTimeout: 0 }, (req, res) => {
    // Drain any request body so the connection stays usable; the benchmark sends none.
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': BODY.length });
    res.end(BODY);
  });
  // Proxies keep pooled connections to the backend between phases: never time them out mid-run.
  http.keepAliveTimeout = 600_000;
  http.maxRequestsPerSocket = 0;
  http.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  const sink = createTcpServer((s) => {
    sockets.add(s);
    s.setNoDelay(true);
    let received = 0;
    let nextAck = ACK_BYTES;
    s.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received >= nextAck) {
        nextAck = (Math.floor(received / ACK_BYTES) + 1) * ACK_BYTES;
        const ack = Buffer.allocUnsafe(8);
        ack.writeBigUInt64BE(BigInt(received));
        s.write(ack);
      }
    });
    // The sender resets the connection when its phase ends: not an error here.
    s.on('error', () => undefined);
    s.once('close', () => sockets.delete(s));
  });

  const stop = (): void => {
    for (const s of sockets) s.destroy();
    http.close();
    sink.close();
    process.exit(0);
  };
  process.on('disconnect', stop);
  process.on('message', (m: ToBackend) => {
    if (m.t !== 'start') return;
    void (async () => {
      try {
        http.listen(0, m.host);
        await once(http, 'listening');
        sink.listen(0, m.host);
        await once(sink, 'listening');
        const port = (s: typeof http | typeof sink): number => (s.address() as { port: number }).port;
        send({ t: 'ready', httpPort: port(http), sinkPort: port(sink) });
      } catch (err) {
        send({ t: 'error', message: (err as Error).message });
      }
    })();
  });
}

/** Set by bench/proxy.ts when it forks this file, so importing it elsewhere runs nothing. */
export const BACKEND_ROLE_ENV = 'WARD_BENCH_PROXY_BACKEND';

if (process.env[BACKEND_ROLE_ENV] === '1' && process.send) await main();
