import type { SpiffeId } from '../identity/index.js';
import type { RequestProtocol } from './normalize.js';
import { parsePolicies } from './parse.js';
import { policyRef, type AuthorizationPolicy, type PolicyAction, type PolicyRef } from './types.js';

/**
 * The authorization engine shared by the discovery pool, node proxies, the ingress and
 * `ward policy explain`. Built once per policy set; `evaluate` does no parsing, sorting or
 * allocation beyond the decision it returns (constant decisions are shared frozen objects).
 *
 * Order (DESIGN.md §6):
 * 1. any matching DENY → denied ('deny-policy');
 * 2. no verified source identity → denied ('unauthenticated'): every hop in the mesh is mutual TLS,
 *    so nothing — not even an ALLOW rule without `from` — admits an unauthenticated request;
 * 3. if any ALLOW selects the workload, one must match ('allow-policy' / 'no-allow-match');
 * 4. else the mesh default: 'all-authenticated' admits any identity of the mesh trust domain
 *    ('default-allow'), anything else is 'default-deny'.
 * AUDIT policies never change the decision; every AUDIT policy that matches is reported.
 *
 * HTTP fields (methods, paths) against a request that lacks them (plain TCP, or HTTP without a
 * method/path): an ALLOW entry naming them does not match (fail closed), while a DENY entry treats
 * them as matched and so denies (fail closed again). AUDIT matches like DENY, so an AUDIT policy is a
 * dry run of the same rules as a DENY and reports every request that DENY would refuse.
 * Ports apply to both protocols.
 *
 * Within a selection, policies are evaluated in namespace/name order, so the policy a decision
 * names does not depend on the order the source of truth listed them in.
 */

export type DefaultMode = 'all-authenticated' | 'deny';

export interface AuthzRequest {
  /** The verified peer identity; undefined = unauthenticated. */
  readonly source?: SpiffeId;
  readonly destination: { readonly namespace: string; readonly service: string };
  readonly port: number;
  readonly protocol: RequestProtocol;
  /** HTTP only: the method, as normalizeRequest returned it. */
  readonly method?: string;
  /** HTTP only: the normalized path (normalizeRequest), without query. */
  readonly path?: string;
}

export type DecisionReason = 'deny-policy' | 'allow-policy' | 'no-allow-match' | 'default-allow' | 'default-deny' | 'unauthenticated';

export interface AuditMatch {
  readonly policy: PolicyRef;
  readonly rule: number;
}

export interface Decision {
  readonly allowed: boolean;
  readonly reason: DecisionReason;
  /** The deciding policy, for 'deny-policy' and 'allow-policy'. */
  readonly policy?: PolicyRef;
  /** Index of the deciding rule in that policy's spec.rules. */
  readonly rule?: number;
  /** For 'no-allow-match': the ALLOW policies that select the destination, none of which matched. */
  readonly candidates?: readonly PolicyRef[];
  /** AUDIT policies that matched (first matching rule of each); absent when none did. */
  readonly audit?: readonly AuditMatch[];
}

// --- compiled form ---------------------------------------------------------------------------

interface CompiledSource {
  readonly identities?: ReadonlySet<string>;
  readonly namespaces?: ReadonlySet<string>;
}

interface CompiledOperation {
  readonly ports?: ReadonlySet<number>;
  readonly methods?: ReadonlySet<string>;
  readonly exactPaths?: ReadonlySet<string>;
  /** Each ends with "/": "/v1/items/*" is stored as "/v1/items/". */
  readonly pathPrefixes?: readonly string[];
}

interface CompiledRule {
  readonly from?: readonly CompiledSource[];
  readonly to?: readonly CompiledOperation[];
}

interface CompiledPolicy {
  readonly ref: PolicyRef;
  readonly action: PolicyAction;
  readonly rules: readonly CompiledRule[];
}

interface Selection {
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly audit: readonly CompiledPolicy[];
  /** The 'no-allow-match' decision of this selection, naming its ALLOW policies (built once). */
  readonly noAllowMatch: Decision;
}

interface NamespaceIndex {
  /** Policies without a selector. */
  readonly wide: Selection;
  /** Per selected service: its own policies merged with the namespace-wide ones. */
  readonly byService: ReadonlyMap<string, Selection>;
}

const EMPTY_SELECTION: Selection = Object.freeze({ deny: [], allow: [], audit: [], noAllowMatch: Object.freeze({ allowed: false, reason: 'no-allow-match' }) as Decision });

const DEFAULT_ALLOW: Decision = Object.freeze({ allowed: true, reason: 'default-allow' });
const DEFAULT_DENY: Decision = Object.freeze({ allowed: false, reason: 'default-deny' });
const UNAUTHENTICATED: Decision = Object.freeze({ allowed: false, reason: 'unauthenticated' });

function compile(policy: AuthorizationPolicy): CompiledPolicy {
  const rules = policy.spec.rules.map((r): CompiledRule => {
    const from = r.from?.map((s): CompiledSource =>
      'identities' in s ? { identities: new Set(s.identities) } : { namespaces: new Set(s.namespaces) },
    );
    const to = r.to?.map((o): CompiledOperation => {
      const exact = o.paths?.filter((p) => !p.endsWith('/*'));
      const prefixes = o.paths?.filter((p) => p.endsWith('/*')).map((p) => p.slice(0, -1));
      return {
        ...(o.ports ? { ports: new Set(o.ports) } : {}),
        ...(o.methods ? { methods: new Set<string>(o.methods) } : {}),
        ...(o.paths ? { exactPaths: new Set(exact), pathPrefixes: prefixes } : {}),
      };
    });
    return { ...(from ? { from } : {}), ...(to ? { to } : {}) };
  });
  return { ref: policyRef(policy), action: policy.spec.action, rules };
}

function select(policies: readonly CompiledPolicy[]): Selection {
  const allow = policies.filter((p) => p.action === 'ALLOW');
  return {
    deny: policies.filter((p) => p.action === 'DENY'),
    allow,
    audit: policies.filter((p) => p.action === 'AUDIT'),
    noAllowMatch: Object.freeze({ allowed: false, reason: 'no-allow-match', candidates: Object.freeze(allow.map((p) => p.ref)) }),
  };
}

/** Per-request facts derived once, shared by every rule check. */
interface Subject {
  readonly req: AuthzRequest;
  readonly sourceId: string | undefined;
  /** The source's workload namespace, only when it belongs to the mesh trust domain. */
  readonly sourceNamespace: string | undefined;
}

function sourceMatches(from: readonly CompiledSource[] | undefined, s: Subject): boolean {
  if (from === undefined) return true;
  for (const entry of from) {
    if (entry.identities !== undefined) {
      if (s.sourceId !== undefined && entry.identities.has(s.sourceId)) return true;
    } else if (entry.namespaces !== undefined) {
      if (s.sourceNamespace !== undefined && entry.namespaces.has(s.sourceNamespace)) return true;
    }
  }
  return false;
}

/** `broad`: DENY/AUDIT semantics, where an HTTP field the request lacks counts as matched. */
function operationMatches(to: readonly CompiledOperation[] | undefined, req: AuthzRequest, broad: boolean): boolean {
  if (to === undefined) return true;
  const http = req.protocol === 'http';
  const method = http ? req.method : undefined;
  const path = http ? req.path : undefined;
  for (const op of to) {
    if (op.ports !== undefined && !op.ports.has(req.port)) continue;
    if (op.methods !== undefined) {
      if (method === undefined ? !broad : !op.methods.has(method)) continue;
    }
    if (op.exactPaths !== undefined) {
      if (path === undefined) {
        if (!broad) continue;
      } else if (!op.exactPaths.has(path) && !op.pathPrefixes!.some((prefix) => path.startsWith(prefix))) {
        continue;
      }
    }
    return true;
  }
  return false;
}

/** Index of the first matching rule, or -1. */
function firstMatch(policy: CompiledPolicy, s: Subject, broad: boolean): number {
  const rules = policy.rules;
  for (let i = 0; i < rules.length; i++) {
    if (sourceMatches(rules[i].from, s) && operationMatches(rules[i].to, s.req, broad)) return i;
  }
  return -1;
}

export class PolicyEngine {
  readonly #byNamespace: ReadonlyMap<string, NamespaceIndex>;
  /** The validated, deep-frozen policies the engine was built from. */
  readonly policies: readonly AuthorizationPolicy[];

  /**
   * Builds the engine. The policies are validated again here (cheap, once), so an engine can only
   * ever hold policies the parser accepted, whoever built the objects; an invalid or duplicated
   * policy throws PolicyInvalidError and no engine is built.
   */
  constructor(policies: readonly AuthorizationPolicy[], where = 'policies') {
    this.policies = parsePolicies(policies, where);
    const sorted = this.policies
      .map((p) => ({ p, c: compile(p) }))
      .sort((a, b) => (a.c.ref < b.c.ref ? -1 : a.c.ref > b.c.ref ? 1 : 0));
    const groups = new Map<string, { wide: CompiledPolicy[]; byService: Map<string, CompiledPolicy[]> }>();
    for (const { p, c } of sorted) {
      let g = groups.get(p.metadata.namespace);
      if (!g) groups.set(p.metadata.namespace, (g = { wide: [], byService: new Map() }));
      const svc = p.spec.selector?.service;
      if (svc === undefined) {
        g.wide.push(c);
      } else {
        const list = g.byService.get(svc);
        if (list) list.push(c);
        else g.byService.set(svc, [c]);
      }
    }
    const index = new Map<string, NamespaceIndex>();
    for (const [ns, g] of groups) {
      const byService = new Map<string, Selection>();
      for (const [svc, own] of g.byService) {
        const merged = [...g.wide, ...own].sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
        byService.set(svc, select(merged));
      }
      index.set(ns, { wide: select(g.wide), byService });
    }
    this.#byNamespace = index;
  }

  /** Builds an engine straight from unvalidated input (YAML documents, custom resources). */
  static fromRaw(raws: readonly unknown[], where: string): PolicyEngine {
    // The constructor validates; the cast only lets unknown input reach that validation.
    return new PolicyEngine(raws as readonly AuthorizationPolicy[], where);
  }

  #selection(dest: AuthzRequest['destination']): Selection {
    const ns = this.#byNamespace.get(dest.namespace);
    if (!ns) return EMPTY_SELECTION;
    return ns.byService.get(dest.service) ?? ns.wide;
  }

  /**
   * Decides one request. `req.path` and `req.method` must come from normalizeRequest;
   * `trustDomain` is the mesh's own (namespaces and the all-authenticated default refer to it).
   */
  evaluate(req: AuthzRequest, defaultMode: DefaultMode, trustDomain: string): Decision {
    const sel = this.#selection(req.destination);
    const source = req.source;
    const workload = source !== undefined && source.trustDomain === trustDomain ? source.workload : undefined;
    const s: Subject = { req, sourceId: source?.toString(), sourceNamespace: workload?.namespace };

    let audit: AuditMatch[] | undefined;
    for (const p of sel.audit) {
      const i = firstMatch(p, s, true);
      if (i !== -1) (audit ??= []).push(Object.freeze({ policy: p.ref, rule: i }));
    }
    const decide = (d: Decision): Decision => Object.freeze(audit === undefined ? d : { ...d, audit: Object.freeze(audit) });

    for (const p of sel.deny) {
      const i = firstMatch(p, s, true);
      if (i !== -1) return decide({ allowed: false, reason: 'deny-policy', policy: p.ref, rule: i });
    }
    if (source === undefined) return decide(UNAUTHENTICATED);
    if (sel.allow.length > 0) {
      for (const p of sel.allow) {
        const i = firstMatch(p, s, false);
        if (i !== -1) return decide({ allowed: true, reason: 'allow-policy', policy: p.ref, rule: i });
      }
      return decide(sel.noAllowMatch);
    }
    if (defaultMode === 'all-authenticated' && source.trustDomain === trustDomain) return decide(DEFAULT_ALLOW);
    return decide(DEFAULT_DENY);
  }
}
