/**
 * The node proxy's admin endpoint: plain HTTP on a loopback address only (it is refused anywhere
 * else), read-only except for POST /v1/renew.
 *
 *   GET  /healthz    200 while the process serves
 *   GET  /readyz     200 {ready:true} once every local workload has a valid certificate and the pool's
 *                    configuration arrived; else 503 with the reasons
 *   GET  /metrics    Prometheus text
 *   GET  /v1/state   JSON: versions, endpoints with balancer state, certificates (no keys), policies,
 *                    local workloads, listeners
 *   POST /v1/renew   renew every certificate now (operators and rotation tests); 202 when done
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { assertLoopback } from '../core/address.js';
import { listenOn } from './listener.js';
import type { Registry } from 'prom-client';
import type { Logger } from '../core/logger.js';

export interface AdminSource {
  ready(): { ready: boolean; reasons: string[] };
  state(): unknown;
  renewAll(): Promise<void>;
}

export class AdminServer {
  readonly #server: Server;
  readonly #log: Logger;
  #renewing: Promise<void> | undefined;

  constructor(o: { source: AdminSource; registry: Registry; logger: Logger }) {
    this.#log = o.logger.child({ component: 'proxy.admin' });
    this.#server = createServer({ maxHeaderSize: 8 * 1024, headersTimeout: 5_000, requestTimeout: 10_000 }, (req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      const json = (status: number, body: unknown): void => {
        const text = JSON.stringify(body, null, 2) + '\n';
        res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(text);
      };
      try {
        if (req.method === 'GET' && path === '/healthz') return json(200, { status: 'ok' });
        if (req.method === 'GET' && path === '/readyz') {
          const r = o.source.ready();
          return json(r.ready ? 200 : 503, r);
        }
        if (req.method === 'GET' && path === '/metrics') {
          o.registry.metrics().then(
            (text) => {
              res.writeHead(200, { 'content-type': o.registry.contentType });
              res.end(text);
            },
            (err: Error) => json(500, { error: err.message }),
          );
          return;
        }
        if (req.method === 'GET' && path === '/v1/state') return json(200, o.source.state());
        if (req.method === 'POST' && path === '/v1/renew') {
          // One renewal round at a time; a second request waits for the one running.
          this.#renewing ??= o.source.renewAll().finally(() => (this.#renewing = undefined));
          this.#renewing.then(
            () => json(202, { renewed: true }),
            (err: Error) => json(500, { error: err.message }),
          );
          return;
        }
        json(404, { error: 'not found' });
      } catch (err) {
        this.#log.error({ err }, 'admin request failed');
        json(500, { error: 'internal error' });
      }
    });
  }

  listen(host: string, port: number): Promise<AddressInfo> {
    assertLoopback(host);
    return listenOn(this.#server, host, port);
  }

  close(): Promise<void> {
    return new Promise((r) => {
      this.#server.close(() => r());
      this.#server.closeAllConnections();
    });
  }
}
