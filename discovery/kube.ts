/**
 * The discovery pool's Kubernetes entry point: the parts that load @kubernetes/client-node (about
 * 75 MiB and a second of start-up), kept apart from index.ts so that every other `ward` command,
 * and local mode, never load it. Import it only in Kubernetes mode (`await import(...)`); types may
 * be imported with `import type` anywhere.
 */
export { KubeAttestor, MAX_CONCURRENT_TOKEN_REVIEWS, DEFAULT_TOKEN_REVIEW_TIMEOUT_MS, DEFAULT_WARD_NAMESPACE, MAX_SERVICE_ACCOUNT_TOKEN_LENGTH, PROXY_SERVICE_ACCOUNT, WARD_TOKEN_AUDIENCE } from './kube-attestor.js';
export type { AttestationPods, AttestedPod, KubeAttestorOptions } from './kube-attestor.js';
export { KubeSource, KUBE_RESOURCES, KUBE_POLICY_GROUP, KUBE_POLICY_VERSION, KUBE_POLICY_PLURAL } from './kube-source.js';
export type { KubeInformerStatus, KubeResource, KubeSourceEvents, KubeSourceOptions, KubeSourceStatus } from './kube-source.js';
