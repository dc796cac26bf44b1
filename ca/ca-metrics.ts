/**
 * The CA's Prometheus metrics, registered on the registry the composition root passes in.
 * Label values come from bounded sets: refusal reasons are WARD_* codes from a fixed list, issuers
 * are the few roots/intermediates the CA holds (a short fingerprint each).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { WardErrorCode } from '../core/errors.js';

/** Refusal reasons issue() can report; anything else is counted as WARD_CA_INTERNAL. */
export const REFUSAL_REASONS: readonly WardErrorCode[] = [
  'WARD_PKI_CSR_INVALID',
  'WARD_PKI_CSR_TOO_LARGE',
  'WARD_PKI_PEM_INVALID',
  'WARD_PKI_KEY_INVALID',
  'WARD_PKI_CSR_UNAUTHORIZED',
  'WARD_ID_INVALID',
  'WARD_CA_FORBIDDEN',
  'WARD_CA_REQUEST_INVALID',
  'WARD_CA_LIFETIME_INVALID',
  'WARD_CA_ISSUER_NOT_VALID',
  'WARD_CA_RATE_LIMITED',
  'WARD_CA_INTERNAL',
];
const REFUSAL_SET = new Set<string>(REFUSAL_REASONS);

export function refusalReason(code: string | undefined): WardErrorCode {
  return code !== undefined && REFUSAL_SET.has(code) ? (code as WardErrorCode) : 'WARD_CA_INTERNAL';
}

/** The short form of a fingerprint used as a label value: first 16 hex digits, lowercase. */
export function shortFingerprint(fp: string): string {
  return fp.replace(/:/g, '').slice(0, 16).toLowerCase();
}

// A registry may outlive one CertificateAuthority (reopen in tests, restart in-process): reuse the
// metric already registered under a name instead of failing on the duplicate.
function reuse<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

export class CaMetrics {
  readonly issued: Counter;
  readonly refused: Counter<'reason'>;
  readonly duration: Histogram;
  readonly expiry: Gauge<'kind' | 'issuer'>;

  constructor(registry: Registry) {
    this.issued = reuse(registry, 'ward_ca_certificates_issued_total', () =>
      new Counter({ name: 'ward_ca_certificates_issued_total', help: 'Leaf certificates issued by the CA.', registers: [registry] }),
    );
    this.refused = reuse(registry, 'ward_ca_certificates_refused_total', () =>
      new Counter({
        name: 'ward_ca_certificates_refused_total',
        help: 'Certificate requests the CA refused, by WARD_* error code.',
        labelNames: ['reason'] as const,
        registers: [registry],
      }),
    );
    for (const reason of REFUSAL_REASONS) this.refused.inc({ reason }, 0);
    this.duration = reuse(registry, 'ward_ca_issuance_duration_seconds', () =>
      new Histogram({
        name: 'ward_ca_issuance_duration_seconds',
        help: 'Time from an issuance request to its durable decision (issued or refused), in seconds.',
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        registers: [registry],
      }),
    );
    this.expiry = reuse(registry, 'ward_ca_certificate_expiry_timestamp_seconds', () =>
      new Gauge({
        name: 'ward_ca_certificate_expiry_timestamp_seconds',
        help: 'NotAfter of each root in the trust bundle and each live intermediate, as a Unix timestamp in seconds.',
        labelNames: ['kind', 'issuer'] as const,
        registers: [registry],
      }),
    );
  }

  /** Replaces the expiry series with exactly the given certificates. */
  setExpiries(certs: { kind: 'root' | 'intermediate'; fingerprint: string; notAfter: Date }[]): void {
    this.expiry.reset();
    for (const c of certs) this.expiry.set({ kind: c.kind, issuer: shortFingerprint(c.fingerprint) }, Math.floor(c.notAfter.getTime() / 1000));
  }
}
