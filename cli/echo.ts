import { createServer } from 'node:http';
import { EXIT_OK, optional, required, type Command } from './command.js';
import { hostPort, hostText, listenError } from './ca.js';

/** The header the node proxy sets to the verified caller identity (proxy/mesh-view.ts). */
const IDENTITY_HEADER = 'x-ward-source-identity';

const echo: Command = {
  name: 'echo',
  summary: 'a small example workload: an HTTP server that answers with the caller identity it was given',
  options: { listen: { type: 'string' }, name: { type: 'string' } },
  help: `Usage: ward echo --listen HOST:PORT [--name NAME]

The example workload that "ward up" runs for the built-in mesh. Every request is answered with a
JSON document: which workload answered, the method and path it received, and the caller's identity
as the node proxy passed it (the x-ward-source-identity header, which the proxy always sets from the
verified client certificate and strips from anything the caller sent). Called without a node proxy
in front, "caller" is null.

  {"workload":"api-1","method":"GET","path":"/hello","caller":"spiffe://cluster.local/ns/shop/sa/web"}

Flags:
  --listen HOST:PORT  where to listen (the workload's address and port in ward.yaml)
  --name NAME         the workload name to report (default: echo)

SIGINT/SIGTERM stop it (exit status 0).`,
  async run(args, io) {
    const listen = hostPort(required(args, 'listen'), '--listen');
    const name = optional(args, 'name') ?? 'echo';
    const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, (req, res) => {
      // The body is not needed: read and drop it (bounded by the request timeout).
      req.resume();
      req.once('end', () => {
        const caller = req.headers[IDENTITY_HEADER];
        const body = JSON.stringify({ workload: name, method: req.method, path: req.url, caller: typeof caller === 'string' ? caller : null }) + '\n';
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    });
    let onSignal: (s: NodeJS.Signals) => void = () => undefined;
    const stopped = new Promise<NodeJS.Signals>((r) => (onSignal = r));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(listen.port, listen.host, () => resolve());
      });
    } catch (err) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      throw listenError(err);
    }
    io.stderr.write(`ward echo: ${name} listening on http://${hostText(listen.host)}:${listen.port}\n`);
    await stopped;
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    return EXIT_OK;
  },
};

export const echoCommands: Command[] = [echo];
