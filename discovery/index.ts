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
export type { LocalFileSourceEvents, LocalFileSourceOptions, LocalFileSourceStatus } from './local-source.js';
export { EXAMPLE_WARD_YAML } from './example.js';
