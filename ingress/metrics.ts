/**
 * The ingress's metrics (DESIGN §10). Label values are bounded: hosts and routes come from the
 * configuration (an unknown Host is counted as "unknown"), codes are HTTP status codes, reasons a
 * fixed set. Certificate expiry per host is kept by the CertificateStore.
 */
import { Counter, type Registry } from 'prom-client';

export class IngressMetrics {
  readonly requests: Counter<'host' | 'route' | 'code'>;
  readonly handshakes: Counter<'protocol'>;
  readonly handshakeFailures: Counter<'reason'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: 'ward_ingress_requests_total',
      help: 'Requests answered by the ingress, by route host, route and status code',
      labelNames: ['host', 'route', 'code'],
      registers,
    });
    this.handshakes = new Counter({
      name: 'ward_ingress_tls_handshakes_total',
      help: 'Completed external TLS handshakes, by protocol version',
      labelNames: ['protocol'],
      registers,
    });
    this.handshakeFailures = new Counter({
      name: 'ward_ingress_tls_handshake_failures_total',
      help: 'Failed external TLS handshakes, by reason',
      labelNames: ['reason'],
      registers,
    });
  }
}
