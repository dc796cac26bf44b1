/** The mesh ingress's public surface (DESIGN §7): the CLI composes Ingress. */
export { Ingress, type IngressOptions, type IngressAddresses } from './ingress.js';
export { IngressServer, DEFAULT_INGRESS_LIMITS, INGRESS_TLS, INGRESS_TLS12_CIPHERS, hostOnly, type IngressLimits } from './server.js';
export { RouteTable, type RouteBackend, type RouteMatch } from './routes.js';
export { CertificateStore, INTERNAL_SOURCE, type CertificateSource, type ServedCertificate } from './certificates.js';
// Types only: the class loads the Kubernetes client (~75 MiB), which Ingress imports in
// Kubernetes mode alone (IngressOptions.kube).
export type { KubeSecretCertificates, KubeSecretCertificatesOptions, KubeSecretStatus, SecretHostState, SecretHostStatus } from './kube-secrets.js';
export { IngressMetrics } from './metrics.js';
