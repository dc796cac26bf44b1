import { WardError } from '../errors.js';
import { SpiffeId } from '../identity/index.js';
import { normalizePath, type NormalizeFailure } from './normalize.js';
import {
  HTTP_METHODS,
  POLICY_ACTIONS,
  POLICY_API_VERSION,
  POLICY_KIND,
  policyRef,
  type AuthorizationPolicy,
  type HttpMethod,
  type PolicyAction,
  type PolicyOperation,
  type PolicyRule,
  type PolicySource,
} from './types.js';

/**
 * Validation of AuthorizationPolicy resources. A policy is accepted whole or refused whole: every
 * problem is collected (not just the first) and reported in one WARD_CONFIG_INVALID error, one
 * `<where>.spec.rules[0].to[1].paths[2]: <reason>` line per problem. Nothing that fails validation
 * is returned, so an invalid field can never degrade into a rule that matches everything.
 *
 * Choices that close off "matches all by accident":
 * - unknown keys anywhere are errors (a misspelt `form:` would otherwise drop a source restriction);
 * - empty lists (`from: []`, `to: []`, `identities: []`, `ports: []`, …) are errors: omit the key
 *   to mean "any";
 * - a `from` entry names exactly one of identities / namespaces, a `to` entry at least one field;
 * - `rules: []` is allowed for ALLOW only, where it matches nothing and so denies every request to
 *   the selected workloads; for DENY and AUDIT it would do nothing and is refused as a likely
 *   mistake (deny everything with `rules: [{}]`);
 * - paths must already be in the normal form requests are compared in (see normalize.ts), and "*"
 *   is allowed only as a whole last segment ("/v1/items/*"); "*" alone is refused — "/*" is the one
 *   spelling for "every path".
 */

/** One validation problem: where in the input it is, and why it is wrong. */
export interface PolicyProblem {
  readonly path: string;
  readonly reason: string;
}

const MAX_PROBLEMS_SHOWN = 50;

/** A policy (or set of policies) was refused; `problems` lists every reason. */
export class PolicyInvalidError extends WardError {
  readonly problems: readonly PolicyProblem[];
  constructor(problems: readonly PolicyProblem[]) {
    const lines = problems.slice(0, MAX_PROBLEMS_SHOWN).map((p) => `  ${p.path}: ${p.reason}`);
    if (problems.length > MAX_PROBLEMS_SHOWN) lines.push(`  … and ${problems.length - MAX_PROBLEMS_SHOWN} more`);
    const n = problems.length;
    super('WARD_CONFIG_INVALID', `invalid AuthorizationPolicy (${n} problem${n === 1 ? '' : 's'}):\n${lines.join('\n')}`);
    this.name = 'PolicyInvalidError';
    this.problems = Object.freeze(problems.map((p) => Object.freeze({ ...p })));
  }
}

// Kubernetes names: a namespace (and a Service name) is a DNS-1123 label, an object name a
// DNS-1123 subdomain.
const DNS_LABEL_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const MAX_SUBDOMAIN_LENGTH = 253;

// Fields the Kubernetes API server adds to every object's metadata. They are accepted (so a policy
// read by an informer parses as is) and dropped; anything else in metadata is an unknown key.
const K8S_OBJECT_META = new Set([
  'uid',
  'resourceVersion',
  'generation',
  'creationTimestamp',
  'deletionTimestamp',
  'deletionGracePeriodSeconds',
  'labels',
  'annotations',
  'ownerReferences',
  'finalizers',
  'managedFields',
  'generateName',
  'selfLink',
]);

const METHOD_SET: ReadonlySet<string> = new Set(HTTP_METHODS);
const ACTION_SET: ReadonlySet<string> = new Set(POLICY_ACTIONS);

const PATH_FAILURE_TEXT: Record<NormalizeFailure, string> = {
  'invalid-protocol': 'invalid protocol',
  'invalid-port': 'invalid port',
  'invalid-method': 'invalid method',
  'invalid-host': 'invalid host',
  'missing-path': 'path is empty',
  'not-origin-form': 'path must start with "/"',
  'nul-byte': 'path must not contain a NUL byte',
  backslash: 'path must not contain a backslash',
  'encoded-slash': 'path must not contain an encoded slash (%2F); such requests are refused before policy',
  'encoded-backslash': 'path must not contain an encoded backslash (%5C); such requests are refused before policy',
  'invalid-percent-encoding': 'path has a malformed percent-escape',
  'invalid-character': 'path must contain only visible ASCII characters (percent-encode others)',
};

/** Renders a value for an error message: short, and never more than one line. */
function show(v: unknown): string {
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = String(v);
  }
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function child(path: string, key: string): string {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

/** Collects problems; every check records and carries on rather than throwing. */
class Checker {
  readonly problems: PolicyProblem[] = [];

  fail(path: string, reason: string): undefined {
    this.problems.push({ path, reason });
    return undefined;
  }

  /** An object with only the allowed (or tolerated) keys; returns undefined if not an object. */
  object(v: unknown, path: string, allowed: readonly string[], tolerated?: ReadonlySet<string>): Record<string, unknown> | undefined {
    if (!isPlainObject(v)) return this.fail(path, `must be a mapping, got ${show(v)}`);
    for (const key of Object.keys(v)) {
      if (allowed.includes(key) || tolerated?.has(key)) continue;
      this.fail(child(path, key), `unknown key (allowed: ${allowed.join(', ')})`);
    }
    return v;
  }

  /** A non-empty array; `what` says what to omit instead of writing an empty list. */
  list(v: unknown, path: string, emptyHint: string): readonly unknown[] | undefined {
    if (!Array.isArray(v)) return this.fail(path, `must be a list, got ${show(v)}`);
    if (v.length === 0) return this.fail(path, `must not be empty (${emptyHint})`);
    return v;
  }

  /** Validates every item; returns the items only if all were valid. */
  items<T>(v: readonly unknown[], path: string, each: (item: unknown, path: string) => T | undefined): T[] | undefined {
    const out: T[] = [];
    let ok = true;
    v.forEach((item, i) => {
      const r = each(item, `${path}[${i}]`);
      if (r === undefined) ok = false;
      else out.push(r);
    });
    return ok ? out : undefined;
  }

  string(v: unknown, path: string): string | undefined {
    if (typeof v !== 'string') return this.fail(path, `must be a string, got ${show(v)}`);
    return v;
  }
}

function parseIdentity(c: Checker, v: unknown, path: string): string | undefined {
  const s = c.string(v, path);
  if (s === undefined) return undefined;
  try {
    return SpiffeId.parse(s).toString();
  } catch (err) {
    const hint = s.includes('*') ? ' (identities are exact: wildcards are not supported; use namespaces)' : '';
    return c.fail(path, `${(err as Error).message}${hint}`);
  }
}

function parseNamespace(c: Checker, v: unknown, path: string): string | undefined {
  const s = c.string(v, path);
  if (s === undefined) return undefined;
  if (!DNS_LABEL_RE.test(s)) return c.fail(path, `${show(s)} is not a valid namespace (DNS-1123 label: 1-63 of a-z, 0-9, "-")`);
  return s;
}

function parsePort(c: Checker, v: unknown, path: string): number | undefined {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) {
    return c.fail(path, `${show(v)} is not a port (an integer 1..65535)`);
  }
  return v;
}

function parseMethod(c: Checker, v: unknown, path: string): HttpMethod | undefined {
  const s = c.string(v, path);
  if (s === undefined) return undefined;
  if (METHOD_SET.has(s)) return s as HttpMethod;
  if (METHOD_SET.has(s.toUpperCase())) return c.fail(path, `${show(s)} must be written in uppercase: ${show(s.toUpperCase())}`);
  return c.fail(path, `${show(s)} is not a known HTTP method (one of ${HTTP_METHODS.join(', ')})`);
}

function parsePathPattern(c: Checker, v: unknown, path: string): string | undefined {
  const s = c.string(v, path);
  if (s === undefined) return undefined;
  if (s === '*') return c.fail(path, '"*" is not a path; write "/*" to match every path');
  if (!s.startsWith('/')) return c.fail(path, `${show(s)} must start with "/"`);
  if (s.includes('?') || s.includes('#')) return c.fail(path, `${show(s)} must not contain a query or fragment`);
  const prefix = s.endsWith('/*');
  const base = prefix ? s.slice(0, -1) : s;
  if (base.includes('*')) {
    return c.fail(path, `${show(s)}: "*" is allowed only as the whole last segment ("/prefix/*"); no other wildcards`);
  }
  const n = normalizePath(base);
  if (!n.ok) return c.fail(path, `${show(s)}: ${PATH_FAILURE_TEXT[n.reason]}`);
  if (n.path !== base) {
    const want = prefix ? `${n.path.endsWith('/') ? n.path : `${n.path}/`}*` : n.path;
    return c.fail(path, `${show(s)} is not in normal form (requests are matched after normalization); write ${show(want)}`);
  }
  return s;
}

function parseSource(c: Checker, v: unknown, path: string): PolicySource | undefined {
  const o = c.object(v, path, ['identities', 'namespaces']);
  if (o === undefined) return undefined;
  const hasIds = Object.hasOwn(o, 'identities');
  const hasNs = Object.hasOwn(o, 'namespaces');
  if (hasIds && hasNs) {
    return c.fail(path, 'an entry takes exactly one of identities or namespaces; list them as separate entries (entries are alternatives)');
  }
  if (!hasIds && !hasNs) return c.fail(path, 'an entry must name identities or namespaces (omit `from` to accept any source)');
  const key = hasIds ? 'identities' : 'namespaces';
  const listPath = `${path}.${key}`;
  const list = c.list(o[key], listPath, 'omit `from` to accept any source');
  if (list === undefined) return undefined;
  if (hasIds) {
    const ids = c.items(list, listPath, (x, p) => parseIdentity(c, x, p));
    return ids && { identities: ids };
  }
  const nss = c.items(list, listPath, (x, p) => parseNamespace(c, x, p));
  return nss && { namespaces: nss };
}

function parseOperation(c: Checker, v: unknown, path: string): PolicyOperation | undefined {
  const o = c.object(v, path, ['ports', 'methods', 'paths']);
  if (o === undefined) return undefined;
  const keys = ['ports', 'methods', 'paths'].filter((k) => Object.hasOwn(o, k));
  if (keys.length === 0) return c.fail(path, 'an entry must name ports, methods or paths (omit `to` to accept any operation)');
  const hint = 'omit the key to accept any value';
  const out: { ports?: number[]; methods?: HttpMethod[]; paths?: string[] } = {};
  let ok = true;
  if (Object.hasOwn(o, 'ports')) {
    const l = c.list(o.ports, `${path}.ports`, hint);
    const r = l && c.items(l, `${path}.ports`, (x, p) => parsePort(c, x, p));
    if (r) out.ports = r;
    else ok = false;
  }
  if (Object.hasOwn(o, 'methods')) {
    const l = c.list(o.methods, `${path}.methods`, hint);
    const r = l && c.items(l, `${path}.methods`, (x, p) => parseMethod(c, x, p));
    if (r) out.methods = r;
    else ok = false;
  }
  if (Object.hasOwn(o, 'paths')) {
    const l = c.list(o.paths, `${path}.paths`, hint);
    const r = l && c.items(l, `${path}.paths`, (x, p) => parsePathPattern(c, x, p));
    if (r) out.paths = r;
    else ok = false;
  }
  return ok ? out : undefined;
}

function parseRule(c: Checker, v: unknown, path: string): PolicyRule | undefined {
  const o = c.object(v, path, ['from', 'to']);
  if (o === undefined) return undefined;
  const out: { from?: PolicySource[]; to?: PolicyOperation[] } = {};
  let ok = true;
  if (Object.hasOwn(o, 'from')) {
    const l = c.list(o.from, `${path}.from`, 'omit `from` to accept any source');
    const r = l && c.items(l, `${path}.from`, (x, p) => parseSource(c, x, p));
    if (r) out.from = r;
    else ok = false;
  }
  if (Object.hasOwn(o, 'to')) {
    const l = c.list(o.to, `${path}.to`, 'omit `to` to accept any operation');
    const r = l && c.items(l, `${path}.to`, (x, p) => parseOperation(c, x, p));
    if (r) out.to = r;
    else ok = false;
  }
  return ok ? out : undefined;
}

function parseInto(c: Checker, raw: unknown, where: string): AuthorizationPolicy | undefined {
  const before = c.problems.length;
  const o = c.object(raw, where, ['apiVersion', 'kind', 'metadata', 'spec']);
  if (o === undefined) return undefined;

  if (o.apiVersion !== POLICY_API_VERSION) c.fail(`${where}.apiVersion`, `must be ${show(POLICY_API_VERSION)}, got ${show(o.apiVersion)}`);
  if (o.kind !== POLICY_KIND) c.fail(`${where}.kind`, `must be ${show(POLICY_KIND)}, got ${show(o.kind)}`);

  let name: string | undefined;
  let namespace: string | undefined;
  const mp = `${where}.metadata`;
  if (!Object.hasOwn(o, 'metadata')) c.fail(mp, 'is required');
  else {
    const m = c.object(o.metadata, mp, ['name', 'namespace'], K8S_OBJECT_META);
    if (m) {
      if (!Object.hasOwn(m, 'name')) c.fail(`${mp}.name`, 'is required');
      else {
        name = c.string(m.name, `${mp}.name`);
        if (name !== undefined && (name.length > MAX_SUBDOMAIN_LENGTH || !DNS_SUBDOMAIN_RE.test(name))) {
          name = c.fail(`${mp}.name`, `${show(name)} is not a valid name (DNS-1123 subdomain)`);
        }
      }
      if (!Object.hasOwn(m, 'namespace')) c.fail(`${mp}.namespace`, 'is required');
      else namespace = parseNamespace(c, m.namespace, `${mp}.namespace`);
    }
  }

  const sp = `${where}.spec`;
  let action: PolicyAction | undefined;
  let service: string | undefined;
  let rules: PolicyRule[] | undefined;
  if (!Object.hasOwn(o, 'spec')) c.fail(sp, 'is required');
  else {
    const s = c.object(o.spec, sp, ['selector', 'action', 'rules']);
    if (s) {
      if (!Object.hasOwn(s, 'action')) c.fail(`${sp}.action`, `is required (one of ${POLICY_ACTIONS.join(', ')})`);
      else if (typeof s.action !== 'string' || !ACTION_SET.has(s.action)) {
        c.fail(`${sp}.action`, `${show(s.action)} is not one of ${POLICY_ACTIONS.join(', ')}`);
      } else action = s.action as PolicyAction;

      if (Object.hasOwn(s, 'selector')) {
        const selPath = `${sp}.selector`;
        const sel = c.object(s.selector, selPath, ['service']);
        if (sel) {
          if (!Object.hasOwn(sel, 'service')) c.fail(`${selPath}.service`, 'is required (omit `selector` to select every service in the namespace)');
          else {
            const svc = c.string(sel.service, `${selPath}.service`);
            if (svc !== undefined && !DNS_LABEL_RE.test(svc)) c.fail(`${selPath}.service`, `${show(svc)} is not a valid service name (DNS-1123 label)`);
            else service = svc;
          }
        }
      }

      const rp = `${sp}.rules`;
      if (!Object.hasOwn(s, 'rules')) c.fail(rp, 'is required (`[]` with ALLOW denies everything; `[{}]` matches every request)');
      else if (!Array.isArray(s.rules)) c.fail(rp, `must be a list, got ${show(s.rules)}`);
      else if (s.rules.length === 0 && (action === 'DENY' || action === 'AUDIT')) {
        c.fail(rp, `an empty rule list makes ${action} match nothing; to match every request write [{}]`);
      } else rules = c.items(s.rules, rp, (x, p) => parseRule(c, x, p));
    }
  }

  if (c.problems.length !== before || !name || !namespace || !action || !rules) return undefined;
  const policy: AuthorizationPolicy = {
    apiVersion: POLICY_API_VERSION,
    kind: POLICY_KIND,
    metadata: { name, namespace },
    spec: { ...(service === undefined ? {} : { selector: { service } }), action, rules },
  };
  return deepFreeze(policy);
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/**
 * Validates one policy. `where` names it in error lines (e.g. "ward.yaml:policies[2]" or
 * "AuthorizationPolicy shop/api-readers"). Returns a new, deep-frozen object; throws
 * PolicyInvalidError (WARD_CONFIG_INVALID) listing every problem.
 */
export function parsePolicy(raw: unknown, where: string): AuthorizationPolicy {
  const c = new Checker();
  const p = parseInto(c, raw, where);
  if (c.problems.length > 0) throw new PolicyInvalidError(c.problems);
  if (p === undefined) throw new Error('BUG: policy refused without a recorded problem');
  return p;
}

/**
 * Validates a set of policies as a unit (items are named `<where>[i]`): if any is invalid, or two
 * share a namespace/name, none is returned. Returns a deep-frozen array.
 */
export function parsePolicies(raws: readonly unknown[], where: string): readonly AuthorizationPolicy[] {
  const c = new Checker();
  if (!Array.isArray(raws)) {
    c.fail(where, `must be a list, got ${show(raws)}`);
    throw new PolicyInvalidError(c.problems);
  }
  const out: AuthorizationPolicy[] = [];
  const seen = new Map<string, number>();
  raws.forEach((raw, i) => {
    const p = parseInto(c, raw, `${where}[${i}]`);
    if (p === undefined) return;
    const ref = policyRef(p);
    const first = seen.get(ref);
    if (first !== undefined) c.fail(`${where}[${i}].metadata`, `duplicate policy ${ref} (also ${where}[${first}])`);
    else seen.set(ref, i);
    out.push(p);
  });
  if (c.problems.length > 0) throw new PolicyInvalidError(c.problems);
  return Object.freeze(out);
}
