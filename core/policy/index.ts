/**
 * Authorization policy: one engine for validation (discovery pool), enforcement (node proxies,
 * ingress) and `ward policy explain`. See DESIGN.md §6 and the comments in each module.
 */
export {
  POLICY_API_VERSION,
  POLICY_KIND,
  POLICY_ACTIONS,
  HTTP_METHODS,
  policyRef,
  type AuthorizationPolicy,
  type AuthorizationPolicySpec,
  type PolicyAction,
  type PolicyRule,
  type PolicySource,
  type PolicyOperation,
  type PolicyRef,
  type HttpMethod,
} from './types.js';
export { parsePolicy, parsePolicies, PolicyInvalidError, type PolicyProblem } from './parse.js';
export {
  normalizeRequest,
  normalizePath,
  forwardTarget,
  type RawRequest,
  type NormalizedRequest,
  type NormalizeResult,
  type NormalizeFailure,
  type PathResult,
  type RequestProtocol,
} from './normalize.js';
export {
  PolicyEngine,
  type AuthzRequest,
  type Decision,
  type DecisionReason,
  type DefaultMode,
  type AuditMatch,
} from './engine.js';
