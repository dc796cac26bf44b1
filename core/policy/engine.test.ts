import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { SpiffeId } from '../identity/index.js';
import {
  PolicyEngine,
  PolicyInvalidError,
  normalizeRequest,
  parsePolicy,
  type AuthorizationPolicy,
  type AuthzRequest,
  type Decision,
  type DefaultMode,
  type PolicyAction,
  type PolicyRule,
} from './index.js';

const TD = 'cluster.local';
const id = (ns: string, sa: string, td = TD): SpiffeId => SpiffeId.workload(td, ns, sa);
const WEB = id('shop', 'web');
const OPS = id('ops', 'deployer');
const OTHER = id('shop', 'batch');

function pol(name: string, action: PolicyAction, rules: unknown[], opts: { service?: string; namespace?: string } = {}): AuthorizationPolicy {
  return parsePolicy(
    {
      apiVersion: 'security.ward.dev/v1alpha1',
      kind: 'AuthorizationPolicy',
      metadata: { name, namespace: opts.namespace ?? 'shop' },
      spec: { ...(opts.service ? { selector: { service: opts.service } } : {}), action, rules },
    },
    name,
  );
}

interface Req {
  source?: SpiffeId | undefined;
  service?: string;
  namespace?: string;
  port?: number;
  protocol?: 'http' | 'tcp';
  method?: string;
  path?: string;
}

function request(r: Req = {}): AuthzRequest {
  const protocol = r.protocol ?? 'http';
  return {
    ...('source' in r ? { source: r.source } : { source: WEB }),
    destination: { namespace: r.namespace ?? 'shop', service: r.service ?? 'api' },
    port: r.port ?? 8080,
    protocol,
    ...(protocol === 'http' ? { method: r.method ?? 'GET', path: r.path ?? '/' } : {}),
  };
}

function decide(engine: PolicyEngine, r: Req = {}, mode: DefaultMode = 'all-authenticated'): Decision {
  return engine.evaluate(request(r), mode, TD);
}

const allowWeb: PolicyRule = { from: [{ identities: [WEB.toString()] }] };

describe('PolicyEngine: decision order', () => {
  const denyDelete = pol('no-delete', 'DENY', [{ to: [{ methods: ['DELETE'] }] }], { service: 'api' });
  const allowWebApi = pol('web-api', 'ALLOW', [allowWeb], { service: 'api' });
  const everything = pol('everything', 'ALLOW', [{}], { service: 'api' });

  it.each<[string, AuthorizationPolicy[], Req, DefaultMode, Partial<Decision>]>([
    ['no policies, authenticated, all-authenticated → default allow', [], {}, 'all-authenticated', { allowed: true, reason: 'default-allow' }],
    ['no policies, mode deny → default deny', [], {}, 'deny', { allowed: false, reason: 'default-deny' }],
    ['no policies, foreign trust domain → default deny', [], { source: id('shop', 'web', 'evil.org') }, 'all-authenticated', { allowed: false, reason: 'default-deny' }],
    ['no policies, node identity of the trust domain → default allow', [], { source: SpiffeId.node(TD, 'n1') }, 'all-authenticated', { allowed: true, reason: 'default-allow' }],
    ['no policies, unauthenticated → unauthenticated', [], { source: undefined }, 'all-authenticated', { allowed: false, reason: 'unauthenticated' }],
    ['ALLOW [{}] still refuses the unauthenticated', [everything], { source: undefined }, 'all-authenticated', { allowed: false, reason: 'unauthenticated' }],
    ['matching ALLOW → allow', [allowWebApi], {}, 'deny', { allowed: true, reason: 'allow-policy', policy: 'shop/web-api', rule: 0 }],
    ['ALLOW targets the workload, no match → no-allow-match (default not consulted)', [allowWebApi], { source: OTHER }, 'all-authenticated', { allowed: false, reason: 'no-allow-match' }],
    ['DENY beats a matching ALLOW', [allowWebApi, denyDelete], { method: 'DELETE' }, 'all-authenticated', { allowed: false, reason: 'deny-policy', policy: 'shop/no-delete', rule: 0 }],
    ['non-matching DENY falls through to ALLOW', [allowWebApi, denyDelete], { method: 'GET' }, 'deny', { allowed: true, reason: 'allow-policy' }],
    ['non-matching DENY, no ALLOW → default', [denyDelete], { method: 'GET' }, 'all-authenticated', { allowed: true, reason: 'default-allow' }],
    ['DENY reported for the unauthenticated too', [denyDelete], { source: undefined, method: 'DELETE' }, 'all-authenticated', { allowed: false, reason: 'deny-policy' }],
    ['ALLOW for another service does not target this one', [allowWebApi], { source: OTHER, service: 'cart' }, 'all-authenticated', { allowed: true, reason: 'default-allow' }],
    ['ALLOW in another namespace does not target this one', [pol('x', 'ALLOW', [allowWeb], { namespace: 'billing' })], { source: OTHER }, 'all-authenticated', { allowed: true, reason: 'default-allow' }],
    ['namespace-wide ALLOW targets every service', [pol('ns-wide', 'ALLOW', [allowWeb])], { source: OTHER, service: 'cart' }, 'all-authenticated', { allowed: false, reason: 'no-allow-match' }],
    ['namespace-wide DENY applies to a service with its own ALLOW', [allowWebApi, pol('ns-deny', 'DENY', [{ to: [{ ports: [8080] }] }])], {}, 'all-authenticated', { allowed: false, reason: 'deny-policy', policy: 'shop/ns-deny' }],
    ['namespace-wide ALLOW also satisfies a selected service', [pol('service-only', 'ALLOW', [{ from: [{ namespaces: ['ops'] }] }], { service: 'api' }), pol('ns-wide', 'ALLOW', [allowWeb])], {}, 'all-authenticated', { allowed: true, reason: 'allow-policy', policy: 'shop/ns-wide' }],
    ['ALLOW rules: [] denies every request to its selection', [pol('lockdown', 'ALLOW', [], { service: 'api' })], {}, 'all-authenticated', { allowed: false, reason: 'no-allow-match' }],
    ['ALLOW rules: [] leaves other services alone', [pol('lockdown', 'ALLOW', [], { service: 'api' })], { service: 'cart' }, 'all-authenticated', { allowed: true, reason: 'default-allow' }],
    ['DENY rules: [{}] denies everything', [pol('all', 'DENY', [{}])], {}, 'all-authenticated', { allowed: false, reason: 'deny-policy' }],
    ['ALLOW [{}] admits a foreign trust domain explicitly', [everything], { source: id('a', 'b', 'other.org') }, 'deny', { allowed: true, reason: 'allow-policy' }],
  ])('%s', (_label, policies, r, mode, want) => {
    const d = decide(new PolicyEngine(policies), r, mode);
    expect(d).toMatchObject(want);
    // A decision names a policy and rule exactly when a policy decided it.
    const decidedByPolicy = d.reason === 'deny-policy' || d.reason === 'allow-policy';
    expect(d.policy !== undefined && d.rule !== undefined).toBe(decidedByPolicy);
  });

  it('names the first matching rule and policy deterministically (namespace/name order)', () => {
    const a = pol('a-allow', 'ALLOW', [{ from: [{ namespaces: ['ops'] }] }, allowWeb], { service: 'api' });
    const b = pol('b-allow', 'ALLOW', [{}], { service: 'api' });
    for (const set of [[a, b], [b, a]]) {
      expect(decide(new PolicyEngine(set))).toMatchObject({ policy: 'shop/a-allow', rule: 1 });
    }
  });
});

describe('PolicyEngine: sources', () => {
  const engine = new PolicyEngine([
    pol('ids', 'ALLOW', [{ from: [{ identities: ['spiffe://cluster.local/ns/shop/sa/web', 'spiffe://partner.org/ns/x/sa/y'] }] }], { service: 'api' }),
    pol('nss', 'ALLOW', [{ from: [{ namespaces: ['ops'] }] }], { service: 'api' }),
  ]);

  it.each<[string, SpiffeId | undefined, boolean]>([
    ['listed identity', WEB, true],
    ['listed identity of a federated domain', SpiffeId.parse('spiffe://partner.org/ns/x/sa/y'), true],
    ['same path in another trust domain', id('shop', 'web', 'evil.org'), false],
    ['other service account, same namespace', OTHER, false],
    ['any service account in a listed namespace', OPS, true],
    ['listed namespace in another trust domain', id('ops', 'deployer', 'evil.org'), false],
    ['namespace with a listed prefix', id('ops2', 'deployer'), false],
    ['node identity (no namespace)', SpiffeId.node(TD, 'ops'), false],
    ['look-alike path', SpiffeId.parse('spiffe://cluster.local/ns/ops'), false],
    ['unauthenticated', undefined, false],
  ])('%s → %s', (_label, source, allowed) => {
    expect(decide(engine, { source }).allowed).toBe(allowed);
  });

  it('ANDs from with to, ORs rules and entries', () => {
    const e = new PolicyEngine([
      pol('p', 'ALLOW', [{ from: [{ namespaces: ['ops'] }], to: [{ ports: [9090] }] }, { from: [{ identities: [WEB.toString()] }], to: [{ ports: [8080] }, { ports: [8443] }] }], { service: 'api' }),
    ]);
    expect(decide(e, { source: OPS, port: 9090 })).toMatchObject({ allowed: true, rule: 0 });
    expect(decide(e, { source: OPS, port: 8080 }).allowed).toBe(false);
    expect(decide(e, { source: WEB, port: 8443 })).toMatchObject({ allowed: true, rule: 1 });
    expect(decide(e, { source: WEB, port: 9090 }).allowed).toBe(false);
  });
});

describe('PolicyEngine: operations', () => {
  const op = (to: unknown, action: PolicyAction = 'ALLOW') => new PolicyEngine([pol('p', action, [{ to: [to] }], { service: 'api' })]);

  it.each<[string, unknown, Req, boolean]>([
    ['port listed', { ports: [8080, 8443] }, { port: 8443 }, true],
    ['port not listed', { ports: [8080] }, { port: 9090 }, false],
    ['port applies to TCP', { ports: [5432] }, { protocol: 'tcp', port: 5432 }, true],
    ['method listed', { methods: ['GET', 'HEAD'] }, { method: 'HEAD' }, true],
    ['method not listed', { methods: ['GET'] }, { method: 'POST' }, false],
    ['extension method never matches a list', { methods: ['GET'] }, { method: 'PROPFIND' }, false],
    ['all fields of an entry must match', { ports: [8080], methods: ['GET'], paths: ['/a'] }, { port: 8080, method: 'GET', path: '/b' }, false],
    ['exact path', { paths: ['/v1/items'] }, { path: '/v1/items' }, true],
    ['exact path is exact (trailing slash)', { paths: ['/v1/items'] }, { path: '/v1/items/' }, false],
    ['exact path is case-sensitive', { paths: ['/v1/items'] }, { path: '/V1/items' }, false],
    ['prefix matches a child', { paths: ['/v1/items/*'] }, { path: '/v1/items/3' }, true],
    ['prefix matches a deep child', { paths: ['/v1/items/*'] }, { path: '/v1/items/3/parts/4' }, true],
    ['prefix matches the trailing-slash form', { paths: ['/v1/items/*'] }, { path: '/v1/items/' }, true],
    ['prefix does not match the bare parent', { paths: ['/v1/items/*'] }, { path: '/v1/items' }, false],
    ['prefix is by whole segments', { paths: ['/v1/items/*'] }, { path: '/v1/itemsX' }, false],
    ['prefix is by whole segments (deeper)', { paths: ['/v1/items/*'] }, { path: '/v1/itemsX/3' }, false],
    ['"/*" matches every path', { paths: ['/*'] }, { path: '/' }, true],
    ['"/*" matches every path (deep)', { paths: ['/*'] }, { path: '/a/b/c' }, true],
    ['HTTP fields never match TCP in an ALLOW (methods)', { methods: ['GET'] }, { protocol: 'tcp' }, false],
    ['HTTP fields never match TCP in an ALLOW (paths)', { paths: ['/*'] }, { protocol: 'tcp' }, false],
    ['HTTP fields never match TCP in an ALLOW (with port)', { ports: [8080], methods: ['GET'] }, { protocol: 'tcp', port: 8080 }, false],
  ])('ALLOW: %s', (_label, to, r, allowed) => {
    const d = decide(op(to), r);
    expect(d.allowed).toBe(allowed);
    expect(d.reason).toBe(allowed ? 'allow-policy' : 'no-allow-match');
  });

  it.each<[string, unknown, Req, boolean]>([
    ['DENY with methods denies plain TCP', { methods: ['DELETE'] }, { protocol: 'tcp' }, true],
    ['DENY with paths denies plain TCP', { paths: ['/admin/*'] }, { protocol: 'tcp' }, true],
    ['DENY with HTTP fields still honours ports for TCP', { ports: [8080], paths: ['/admin/*'] }, { protocol: 'tcp', port: 5432 }, false],
    ['DENY with HTTP fields and a matching port denies TCP', { ports: [8080], paths: ['/admin/*'] }, { protocol: 'tcp', port: 8080 }, true],
    ['DENY method matches HTTP', { methods: ['DELETE'] }, { method: 'DELETE' }, true],
    ['DENY method does not match another', { methods: ['DELETE'] }, { method: 'GET' }, false],
    ['DENY prefix by whole segments', { paths: ['/admin/*'] }, { path: '/administrator' }, false],
    ['DENY prefix child', { paths: ['/admin/*'] }, { path: '/admin/users' }, true],
  ])('%s', (_label, to, r, denied) => {
    const d = decide(op(to, 'DENY'), r);
    expect(d.reason).toBe(denied ? 'deny-policy' : 'default-allow');
  });

  it('an HTTP request missing its method or path is treated like TCP (ALLOW fails, DENY matches)', () => {
    const bare: AuthzRequest = { source: WEB, destination: { namespace: 'shop', service: 'api' }, port: 8080, protocol: 'http' };
    expect(op({ methods: ['GET'] }).evaluate(bare, 'all-authenticated', TD).reason).toBe('no-allow-match');
    expect(op({ paths: ['/*'] }).evaluate(bare, 'all-authenticated', TD).reason).toBe('no-allow-match');
    expect(op({ methods: ['GET'] }, 'DENY').evaluate(bare, 'all-authenticated', TD).reason).toBe('deny-policy');
    expect(op({ paths: ['/x'] }, 'DENY').evaluate(bare, 'all-authenticated', TD).reason).toBe('deny-policy');
  });

  it('TCP with no HTTP fields in the rule is matched by ports alone', () => {
    expect(decide(op({ ports: [5432] }), { protocol: 'tcp', port: 5432 })).toMatchObject({ allowed: true, reason: 'allow-policy' });
  });
});

describe('PolicyEngine: AUDIT', () => {
  const audit = pol('watch-admin', 'AUDIT', [{ to: [{ paths: ['/admin/*'] }] }, { from: [{ namespaces: ['ops'] }] }]);

  it('reports matches without changing the decision', () => {
    const engine = new PolicyEngine([audit]);
    expect(decide(engine, { path: '/admin/x' })).toEqual({ allowed: true, reason: 'default-allow', audit: [{ policy: 'shop/watch-admin', rule: 0 }] });
    expect(decide(engine, { path: '/admin/x' }, 'deny')).toEqual({ allowed: false, reason: 'default-deny', audit: [{ policy: 'shop/watch-admin', rule: 0 }] });
    expect(decide(engine, { source: OPS, path: '/x' })).toMatchObject({ audit: [{ policy: 'shop/watch-admin', rule: 1 }] });
    expect(decide(engine, { path: '/x' })).toEqual({ allowed: true, reason: 'default-allow' });
  });

  it('does not count as an ALLOW targeting the workload', () => {
    expect(decide(new PolicyEngine([pol('a', 'AUDIT', [{ from: [{ namespaces: ['ops'] }] }])]), { source: WEB }).reason).toBe('default-allow');
  });

  it('is reported alongside DENY and ALLOW decisions, every matching AUDIT policy', () => {
    const engine = new PolicyEngine([
      audit,
      pol('audit-all', 'AUDIT', [{}]),
      pol('deny-admin', 'DENY', [{ to: [{ paths: ['/admin/*'] }] }]),
      pol('allow-web', 'ALLOW', [allowWeb]),
    ]);
    expect(decide(engine, { path: '/admin/x' })).toEqual({
      allowed: false,
      reason: 'deny-policy',
      policy: 'shop/deny-admin',
      rule: 0,
      audit: [
        { policy: 'shop/audit-all', rule: 0 },
        { policy: 'shop/watch-admin', rule: 0 },
      ],
    });
    expect(decide(engine, { path: '/ok' })).toMatchObject({ allowed: true, policy: 'shop/allow-web', audit: [{ policy: 'shop/audit-all', rule: 0 }] });
  });

  it('matches like a DENY (dry run): HTTP fields match plain TCP', () => {
    expect(decide(new PolicyEngine([audit]), { protocol: 'tcp' }).audit).toEqual([{ policy: 'shop/watch-admin', rule: 0 }]);
  });
});

describe('PolicyEngine: construction', () => {
  it('re-validates what it is given, so an invalid policy can never be held, let alone match all', () => {
    const forged = {
      apiVersion: 'security.ward.dev/v1alpha1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'forged', namespace: 'shop' },
      spec: { action: 'ALLOW', rules: [{ from: [{ identities: ['*'] }] }] },
    } as unknown as AuthorizationPolicy;
    expect(() => new PolicyEngine([forged])).toThrow(PolicyInvalidError);
    expect(() => PolicyEngine.fromRaw([{ ...forged, spec: { action: 'ALLOW', rules: [{ from: [] }] } }], 'cluster')).toThrow(/cluster\[0\]\.spec\.rules\[0\]\.from: must not be empty/);
    expect(() => PolicyEngine.fromRaw([{ ...forged, spec: { action: 'ALLOW', rules: [{ to: [{ methods: ['get'] }] }] } }], 'c')).toThrow(PolicyInvalidError);
  });

  it('refuses a set with a duplicate policy', () => {
    const p = pol('dup', 'ALLOW', [{}]);
    expect(() => new PolicyEngine([p, p])).toThrow(/duplicate policy shop\/dup/);
  });

  it('a refused DENY policy never yields a half-built engine', () => {
    let engine: PolicyEngine | undefined;
    try {
      engine = PolicyEngine.fromRaw(
        [
          { apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'ok', namespace: 'shop' }, spec: { action: 'DENY', rules: [{ to: [{ ports: [22] }] }] } },
          { apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'bad', namespace: 'shop' }, spec: { action: 'DENY', rules: [{ to: [{ paths: ['/admin*'] }] }] } },
        ],
        'c',
      );
    } catch {
      // expected
    }
    expect(engine).toBeUndefined();
  });

  it('returns frozen decisions and exposes the frozen policies', () => {
    const engine = new PolicyEngine([pol('a', 'ALLOW', [allowWeb]), pol('b', 'AUDIT', [{}])]);
    const d = decide(engine);
    expect(Object.isFrozen(d)).toBe(true);
    expect(Object.isFrozen(d.audit)).toBe(true);
    expect(Object.isFrozen(decide(new PolicyEngine([])))).toBe(true);
    expect(Object.isFrozen(engine.policies)).toBe(true);
  });

  it('an unknown default mode fails closed', () => {
    expect(decide(new PolicyEngine([]), {}, 'allow' as DefaultMode)).toMatchObject({ allowed: false, reason: 'default-deny' });
  });
});

describe('DESIGN.md §6 example', () => {
  const yaml = `
apiVersion: security.ward.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-readers, namespace: shop}
spec:
  selector: {service: api}          # omitted: every workload in the namespace
  action: ALLOW                     # ALLOW | DENY | AUDIT
  rules:
    - from:
        - identities: ["spiffe://cluster.local/ns/shop/sa/web"]
        - namespaces: ["ops"]
      to:
        - ports: [8080]
          methods: [GET, HEAD]
          paths: ["/v1/items", "/v1/items/*"]
`;
  const engine = PolicyEngine.fromRaw([parseYaml(yaml)], 'DESIGN.md');

  /** Goes through normalizeRequest as a proxy would. */
  function http(source: SpiffeId | undefined, method: string, target: string, opts: { port?: number; service?: string } = {}): Decision | string {
    const n = normalizeRequest({ method, host: 'api.shop', path: target, port: opts.port ?? 8080, protocol: 'http' });
    if (!n.ok) return n.reason;
    return engine.evaluate(
      { source, destination: { namespace: 'shop', service: opts.service ?? 'api' }, port: n.request.port, protocol: 'http', method: n.request.method, path: n.request.path },
      'all-authenticated',
      TD,
    );
  }

  it('parses to the documented structure', () => {
    expect(engine.policies[0].spec).toEqual({
      selector: { service: 'api' },
      action: 'ALLOW',
      rules: [
        {
          from: [{ identities: ['spiffe://cluster.local/ns/shop/sa/web'] }, { namespaces: ['ops'] }],
          to: [{ ports: [8080], methods: ['GET', 'HEAD'], paths: ['/v1/items', '/v1/items/*'] }],
        },
      ],
    });
  });

  it.each<[string, SpiffeId | undefined, string, string, { port?: number; service?: string }, Partial<Decision> | string]>([
    ['web reads the collection', WEB, 'GET', '/v1/items', {}, { allowed: true, reason: 'allow-policy', policy: 'shop/api-readers', rule: 0 }],
    ['web reads an item', WEB, 'HEAD', '/v1/items/3', {}, { allowed: true }],
    ['web with query and fragment', WEB, 'GET', '/v1/items/3?x=1#f', {}, { allowed: true }],
    ['any ops workload reads', OPS, 'GET', '/v1/items/3', {}, { allowed: true }],
    ['web may not write', WEB, 'POST', '/v1/items', {}, { allowed: false, reason: 'no-allow-match' }],
    ['other shop workload may not read', OTHER, 'GET', '/v1/items', {}, { allowed: false, reason: 'no-allow-match' }],
    ['wrong port', WEB, 'GET', '/v1/items', { port: 9090 }, { allowed: false, reason: 'no-allow-match' }],
    ['sibling path', WEB, 'GET', '/v1/itemsX', {}, { allowed: false, reason: 'no-allow-match' }],
    ['escape by dot segments', WEB, 'GET', '/v1/items/../../admin', {}, { allowed: false, reason: 'no-allow-match' }],
    ['dot segments that stay inside', WEB, 'GET', '/v1/other/../items/3', {}, { allowed: true }],
    ['encoded dots', WEB, 'GET', '/v1/items/%2e%2e/secret', {}, { allowed: false }],
    ['encoded slash is a 400', WEB, 'GET', '/v1/items%2F3', {}, 'encoded-slash'],
    ['backslash is a 400', WEB, 'GET', '/v1/items\\3', {}, 'backslash'],
    ['duplicate slashes', WEB, 'GET', '//v1//items///3', {}, { allowed: true }],
    ['other service in shop: mesh default', OTHER, 'POST', '/anything', { service: 'cart' }, { allowed: true, reason: 'default-allow' }],
    ['unauthenticated', undefined, 'GET', '/v1/items', {}, { allowed: false, reason: 'unauthenticated' }],
  ])('%s', (_label, source, method, target, opts, want) => {
    const got = http(source, method, target, opts);
    if (typeof want === 'string') expect(got).toBe(want);
    else expect(got).toMatchObject(want);
  });

  it('plain TCP to port 8080 is not allowed by the HTTP-only rule', () => {
    expect(engine.evaluate({ source: WEB, destination: { namespace: 'shop', service: 'api' }, port: 8080, protocol: 'tcp' }, 'all-authenticated', TD)).toMatchObject({
      allowed: false,
      reason: 'no-allow-match',
    });
  });
});
