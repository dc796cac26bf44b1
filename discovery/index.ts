/**
 * The discovery pool's public API. Other folders (the CLI, later the push side's composition root)
 * import only this file.
 */
export {
  MODEL_KINDS,
  deepEqual,
  diffModels,
  emptyModel,
  endpointsOf,
  findNode,
  findService,
  isNodeMember,
  mayObtain,
  policyKey,
  selectorMatches,
  serviceKey,
  workloadKey,
  workloadsOnNode,
} from './model.js';
export type {
  Endpoint,
  KindDiff,
  MeshModel,
  MeshNode,
  ModelDiff,
  ModelKind,
  PathType,
  PolicyResource,
  Route,
  RoutePath,
  Service,
  ServicePort,
  ServiceProtocol,
  Workload,
} from './model.js';
export {
  ConfigInvalidError,
  DEFAULT_NAMESPACE,
  DEFAULT_TRUST_DOMAIN,
  WARD_YAML_API_VERSION,
  WARD_YAML_KIND,
  WARD_YAML_LIMITS,
  formatIssue,
  parseWardYaml,
} from './ward-yaml.js';
export type { ConfigIssue } from './ward-yaml.js';
export { LocalFileSource } from './local-source.js';
export { modelAuthorizer } from './authorizer.js';
export type { ModelAuthorizer } from './authorizer.js';
export type { LocalFileSourceEvents, LocalFileSourceOptions, LocalFileSourceStatus } from './local-source.js';
export { EXAMPLE_WARD_YAML } from './example.js';
export { MeshState, endpointsKey, DEFAULT_GRACE_MS, DEFAULT_HISTORY_LIMIT, DEFAULT_HISTORY_MAX_IDS, DEFAULT_INBOUND_PORT } from './push/state.js';
export type { Delta, MeshStateOptions, View } from './push/state.js';
export { DiscoveryServer, DEFAULT_DISCOVERY_LIMITS, INGRESS_PATH } from './push/server.js';
export type { ClientStatus, DiscoveryServerLimits, DiscoveryServerOptions } from './push/server.js';
export { HealthAggregator, parseHealthReport, DEFAULT_HEALTH_RETAIN_MS, DEFAULT_HEALTH_STALE_MS } from './push/health.js';
export type {
  ClientMeshStatus,
  HealthAggregatorOptions,
  HealthVerdict,
  MeshStatus,
  NodeMeshStatus,
  ServiceMeshStatus,
  StreamClientInfo,
  WorkloadMeshStatus,
} from './push/health.js';
// KubeSource and KubeAttestor (which load @kubernetes/client-node, ~75 MiB) are in discovery/kube.ts,
// imported only in Kubernetes mode. The pure translation below loads nothing.
export { modelFromKube, podInfo, isOptedIn, isProxyPod, isWardIngress, servicePortProtocol, KUBE_WARD_NAMESPACE, MESH_LABEL, INGRESS_CLASS } from './kube-model.js';
export type { KubeModelOptions, KubeModelResult, KubeObjects, KubePod, KubePodInfo, KubeProblem } from './kube-model.js';
