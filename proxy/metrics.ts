/**
 * The node proxy's metrics (DESIGN §10: ward_<component>_<subject>_<unit>). Every label value comes
 * from a bounded set: directions, result classes, failure kinds, decision reasons — never addresses,
 * paths or identities of remote callers. (Certificate expiry is labelled by this node's own
 * workload identities, which are bounded by what the pool assigns to the node.)
 */
import { Counter, Gauge, type Registry } from 'prom-client';

export type Direction = 'inbound' | 'outbound';

export class ProxyMetrics {
  readonly requests: Counter<'direction' | 'code'>;
  readonly connections: Counter<'direction' | 'result'>;
  readonly handshakeFailures: Counter<'direction' | 'reason'>;
  readonly authz: Counter<'decision' | 'reason' | 'protocol'>;
  readonly ejections: Counter<'kind'>;
  readonly retries: Counter<'result'>;
  readonly activeConnections: Gauge<'direction'>;
  readonly tunnels: Counter<'direction' | 'result'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: 'ward_proxy_requests_total',
      help: 'HTTP requests handled, by direction and status class (1xx..5xx)',
      labelNames: ['direction', 'code'],
      registers,
    });
    this.connections = new Counter({
      name: 'ward_proxy_connections_total',
      help: 'Connections accepted (inbound, outbound listeners) or dialled (upstream), by result',
      labelNames: ['direction', 'result'],
      registers,
    });
    this.handshakeFailures = new Counter({
      name: 'ward_proxy_handshake_failures_total',
      help: 'TLS handshakes that failed or were refused after the handshake, by reason',
      labelNames: ['direction', 'reason'],
      registers,
    });
    this.authz = new Counter({
      name: 'ward_proxy_authorization_decisions_total',
      help: 'Authorization decisions on inbound requests and streams, by decision and reason',
      labelNames: ['decision', 'reason', 'protocol'],
      registers,
    });
    this.ejections = new Counter({
      name: 'ward_proxy_endpoint_ejections_total',
      help: 'Endpoints ejected from load balancing, by the failure that ejected them',
      labelNames: ['kind'],
      registers,
    });
    this.retries = new Counter({
      name: 'ward_proxy_retries_total',
      help: 'Retries of outbound requests on another endpoint, by result (retried, budget-exhausted)',
      labelNames: ['result'],
      registers,
    });
    this.activeConnections = new Gauge({
      name: 'ward_proxy_open_connections',
      help: 'Connections open now on the proxy listeners',
      labelNames: ['direction'],
      registers,
    });
    this.tunnels = new Counter({
      name: 'ward_proxy_tunnels_total',
      help: 'CONNECT tunnels (outbound) and TCP streams (inbound), by result',
      labelNames: ['direction', 'result'],
      registers,
    });
  }
}

/** '2xx' etc.: a bounded label for a status code. */
export function codeClass(status: number): string {
  return status >= 100 && status < 600 ? `${Math.floor(status / 100)}xx` : 'other';
}
