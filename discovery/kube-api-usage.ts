/**
 * Every Kubernetes API call Ward makes, by component: the single list that deploy/'s RBAC must grant
 * exactly (test/deploy checks the rendered ClusterRoles and Roles against it, and the Kubernetes
 * end-to-end test checks that the calls the code really made are all listed here).
 *
 * Add a row here in the same change that adds an informer or an API call.
 */
export type KubeComponent = 'control' | 'ingress';

export interface KubeApiUse {
  component: KubeComponent;
  /** API group; '' for the core group. */
  group: string;
  /** Plural resource name, e.g. 'pods'. */
  resource: string;
  verbs: readonly string[];
  /**
   * 'cluster': every namespace (ClusterRole); 'own-namespace': only ward-system (Role);
   * 'ca-namespace': only the CA's namespace ward-ca (Role), which holds the CA Secret alone, so that
   * no other component's Secret access in ward-system (the ingress's TLS Secrets) can reach CA keys.
   */
  scope: 'cluster' | 'own-namespace' | 'ca-namespace';
  why: string;
}

export const KUBE_API_USAGE: readonly KubeApiUse[] = [
  { component: 'control', group: '', resource: 'pods', verbs: ['list', 'watch'], scope: 'cluster', why: 'workloads (opted-in pods) and node proxies (ward-proxy pods); node authorization and TokenReview pod binding' },
  { component: 'control', group: '', resource: 'services', verbs: ['list', 'watch'], scope: 'cluster', why: 'services and their ports' },
  { component: 'control', group: '', resource: 'namespaces', verbs: ['list', 'watch'], scope: 'cluster', why: 'namespace-wide opt-in label' },
  { component: 'control', group: 'discovery.k8s.io', resource: 'endpointslices', verbs: ['list', 'watch'], scope: 'cluster', why: 'resolved target ports of services' },
  { component: 'control', group: 'networking.k8s.io', resource: 'ingresses', verbs: ['list', 'watch'], scope: 'cluster', why: 'ingress routes (class ward)' },
  { component: 'control', group: 'security.ward.dev', resource: 'authorizationpolicies', verbs: ['list', 'watch'], scope: 'cluster', why: "Ward's AuthorizationPolicy custom resource" },
  { component: 'control', group: 'authentication.k8s.io', resource: 'tokenreviews', verbs: ['create'], scope: 'cluster', why: 'node proxy and ingress attestation (projected ServiceAccount tokens, audience ward)' },
  { component: 'control', group: '', resource: 'secrets', verbs: ['get', 'create', 'update'], scope: 'ca-namespace', why: 'the CA material (Secret ward-ca/ward-ca), generated on first start and stored there' },
  { component: 'control', group: '', resource: 'configmaps', verbs: ['get', 'create', 'update'], scope: 'own-namespace', why: 'the trust bundle (ConfigMap ward-bundle) the proxies and the ingress mount as --bundle' },
  { component: 'ingress', group: '', resource: 'secrets', verbs: ['list', 'watch'], scope: 'own-namespace', why: 'TLS certificates named by Ingress spec.tls, from its own namespace only' },
];
