/**
 * The AuthorizationPolicy resource (DESIGN.md §6), as it is after `parsePolicy` has validated it.
 * The same YAML is a Kubernetes custom resource and an entry in `ward.yaml`.
 *
 * Everything here is readonly because parsed policies are deep-frozen: the discovery pool, the
 * proxies, the ingress and `ward policy explain` share these objects and none may change them.
 */

export const POLICY_API_VERSION = 'security.ward.dev/v1alpha1';
export const POLICY_KIND = 'AuthorizationPolicy';

export type PolicyAction = 'ALLOW' | 'DENY' | 'AUDIT';
export const POLICY_ACTIONS: readonly PolicyAction[] = Object.freeze(['ALLOW', 'DENY', 'AUDIT'] as const);

/** The HTTP methods a policy may name. Anything else is refused when the policy is parsed. */
export const HTTP_METHODS = Object.freeze([
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'PATCH',
  'DELETE',
  'OPTIONS',
  'CONNECT',
  'TRACE',
] as const);
export type HttpMethod = (typeof HTTP_METHODS)[number];

/**
 * One source a rule accepts. Exactly one of the two keys is present (the parser refuses an entry
 * with both or neither, so an entry can never silently mean "anyone").
 * - identities: exact SPIFFE IDs (any trust domain: federation is spelled out identity by identity)
 * - namespaces: any workload identity `spiffe://<mesh trust domain>/ns/<namespace>/sa/*`
 */
export type PolicySource = { readonly identities: readonly string[] } | { readonly namespaces: readonly string[] };

/**
 * One destination operation a rule accepts; the fields present are ANDed, at least one is present.
 * paths: exact ("/v1/items") or a whole-segment prefix ("/v1/items/*" = everything under
 * "/v1/items/", not "/v1/items" itself); "/*" is every path.
 */
export interface PolicyOperation {
  readonly ports?: readonly number[];
  readonly methods?: readonly HttpMethod[];
  readonly paths?: readonly string[];
}

/**
 * A rule matches when its source matches (any `from` entry; omitted = any source) and its operation
 * matches (any `to` entry; omitted = any operation). A rule with neither matches every request.
 */
export interface PolicyRule {
  readonly from?: readonly PolicySource[];
  readonly to?: readonly PolicyOperation[];
}

export interface AuthorizationPolicySpec {
  /** Omitted: the policy applies to every service in its namespace. */
  readonly selector?: { readonly service: string };
  readonly action: PolicyAction;
  /** ALLOW with `[]` matches nothing, so it denies everything for its selector. */
  readonly rules: readonly PolicyRule[];
}

export interface AuthorizationPolicy {
  readonly apiVersion: typeof POLICY_API_VERSION;
  readonly kind: typeof POLICY_KIND;
  readonly metadata: { readonly name: string; readonly namespace: string };
  readonly spec: AuthorizationPolicySpec;
}

/** `namespace/name`: how decisions, logs and metrics name a policy. */
export type PolicyRef = `${string}/${string}`;

export function policyRef(policy: AuthorizationPolicy): PolicyRef {
  return `${policy.metadata.namespace}/${policy.metadata.name}`;
}
