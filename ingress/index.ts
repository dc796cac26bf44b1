/** The mesh ingress's public surface (DESIGN §7): the CLI composes Ingress. */
export { Ingress, type IngressOptions, type IngressAddresses } from './ingress.js';
export { IngressServer, DEFAULT_INGRESS_LIMITS, INGRESS_TLS, INGRESS_TLS12_CIPHERS, hostOnly, type IngressLimits } from './server.js';
export { RouteTable, type RouteBackend, type RouteMatch } from './routes.js';
export { CertificateStore, type CertificateSource, type ServedCertificate } from './certificates.js';
export { IngressMetrics } from './metrics.js';
