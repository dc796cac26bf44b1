import { describe, expect, it } from 'vitest';
import { isWardError } from '../errors.js';
import { PolicyInvalidError, parsePolicies, parsePolicy, type AuthorizationPolicy } from './index.js';

/** A valid policy to mutate; `spec` overrides replace the example's spec fields. */
function policy(spec: Record<string, unknown> = {}, metadata: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: 'security.ward.dev/v1alpha1',
    kind: 'AuthorizationPolicy',
    metadata: { name: 'api-readers', namespace: 'shop', ...metadata },
    spec: {
      selector: { service: 'api' },
      action: 'ALLOW',
      rules: [{ from: [{ identities: ['spiffe://cluster.local/ns/shop/sa/web'] }], to: [{ ports: [8080] }] }],
      ...spec,
    },
  };
}

function problems(raw: unknown, where = 'p'): { path: string; reason: string }[] {
  try {
    parsePolicy(raw, where);
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyInvalidError);
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    return [...(err as PolicyInvalidError).problems];
  }
  throw new Error('expected the policy to be refused');
}

function rulesWith(rule: unknown): Record<string, unknown> {
  return policy({ rules: [rule] });
}

describe('parsePolicy: accepted input', () => {
  it('returns a new, deep-frozen policy', () => {
    const raw = policy({ rules: [{ from: [{ namespaces: ['ops'] }], to: [{ ports: [80], methods: ['GET'], paths: ['/a', '/b/*'] }] }] });
    const p = parsePolicy(raw, 'p');
    expect(p).not.toBe(raw);
    const frozen = (v: unknown): void => {
      if (typeof v !== 'object' || v === null) return;
      expect(Object.isFrozen(v)).toBe(true);
      Object.values(v).forEach(frozen);
    };
    frozen(p);
    expect(() => {
      (p.spec.rules as unknown[]).push({});
    }).toThrow(TypeError);
    // Changing the input afterwards does not reach the parsed policy.
    ((raw.spec as { rules: { to: { ports: number[] }[] }[] }).rules[0].to[0].ports)[0] = 1;
    expect(p.spec.rules[0].to![0].ports).toEqual([80]);
  });

  it('omits the selector when none is given and accepts rules: [{}] and ALLOW rules: []', () => {
    const raw = policy({ rules: [{}] });
    delete (raw.spec as Record<string, unknown>).selector;
    const p = parsePolicy(raw, 'p');
    expect(p.spec).toEqual({ action: 'ALLOW', rules: [{}] });
    expect(parsePolicy(policy({ rules: [] }), 'p').spec.rules).toEqual([]);
  });

  it('tolerates (and drops) metadata the Kubernetes API server adds', () => {
    const p = parsePolicy(policy({}, { uid: 'x', resourceVersion: '7', labels: { a: 'b' }, managedFields: [] }), 'p');
    expect(p.metadata).toEqual({ name: 'api-readers', namespace: 'shop' });
  });

  it.each(['/', '/*', '/v1/items', '/v1/items/*', '/v1/items/', '/a%3Ab', '/~u', '/a;b'])('accepts path %j', (path) => {
    expect(parsePolicy(rulesWith({ to: [{ paths: [path] }] }), 'p').spec.rules[0].to![0].paths).toEqual([path]);
  });

  it('accepts every known method, ports at both ends, and identities of other trust domains and nodes', () => {
    const methods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE'];
    const ids = ['spiffe://other.org/ns/a/sa/b', 'spiffe://cluster.local/ward/node/n1'];
    const p = parsePolicy(rulesWith({ from: [{ identities: ids }], to: [{ ports: [1, 65535], methods }] }), 'p');
    expect(p.spec.rules[0]).toEqual({ from: [{ identities: ids }], to: [{ ports: [1, 65535], methods }] });
  });
});

describe('parsePolicy: every problem, named by its exact path', () => {
  it.each<[string, unknown, string, RegExp]>([
    ['not an object', 'nope', 'p', /must be a mapping/],
    ['wrong apiVersion', { ...policy(), apiVersion: 'v1' }, 'p.apiVersion', /security\.ward\.dev\/v1alpha1/],
    ['wrong kind', { ...policy(), kind: 'Policy' }, 'p.kind', /AuthorizationPolicy/],
    ['unknown top-level key', { ...policy(), status: {} }, 'p.status', /unknown key/],
    ['missing spec', { ...policy(), spec: undefined }, 'p.spec', /must be a mapping/],
    ['missing name', policy({}, { name: undefined }), 'p.metadata.name', /must be a string/],
    ['bad name', policy({}, { name: 'Api_Readers' }), 'p.metadata.name', /DNS-1123/],
    ['bad namespace', policy({}, { namespace: 'Shop' }), 'p.metadata.namespace', /namespace/],
    ['unknown metadata key', policy({}, { nmae: 'x' }), 'p.metadata.nmae', /unknown key/],
    ['bad action', policy({ action: 'allow' }), 'p.spec.action', /not one of ALLOW, DENY, AUDIT/],
    ['unknown spec key', policy({ rule: [] }), 'p.spec.rule', /unknown key/],
    ['empty selector', policy({ selector: {} }), 'p.spec.selector.service', /is required/],
    ['selector key typo', policy({ selector: { services: 'api' } }), 'p.spec.selector.services', /unknown key/],
    ['bad service', policy({ selector: { service: 'API' } }), 'p.spec.selector.service', /service name/],
    ['rules not a list', policy({ rules: {} }), 'p.spec.rules', /must be a list/],
    ['DENY with no rules', policy({ action: 'DENY', rules: [] }), 'p.spec.rules', /match nothing.*\[\{\}\]/],
    ['AUDIT with no rules', policy({ action: 'AUDIT', rules: [] }), 'p.spec.rules', /match nothing/],
    ['rule key typo', rulesWith({ form: [{ namespaces: ['ops'] }] }), 'p.spec.rules[0].form', /unknown key/],
    ['empty from', rulesWith({ from: [] }), 'p.spec.rules[0].from', /must not be empty.*omit `from`/],
    ['empty to', rulesWith({ to: [] }), 'p.spec.rules[0].to', /must not be empty/],
    ['empty source entry', rulesWith({ from: [{}] }), 'p.spec.rules[0].from[0]', /must name identities or namespaces/],
    ['both source kinds', rulesWith({ from: [{ identities: ['spiffe://td/x'], namespaces: ['a'] }] }), 'p.spec.rules[0].from[0]', /exactly one/],
    ['empty identities', rulesWith({ from: [{ identities: [] }] }), 'p.spec.rules[0].from[0].identities', /must not be empty/],
    ['identity wildcard', rulesWith({ from: [{ identities: ['spiffe://cluster.local/ns/shop/sa/*'] }] }), 'p.spec.rules[0].from[0].identities[0]', /invalid SPIFFE ID.*wildcards/],
    ['identity not spiffe', rulesWith({ from: [{ identities: ['web'] }] }), 'p.spec.rules[0].from[0].identities[0]', /invalid SPIFFE ID/],
    ['identity "*"', rulesWith({ from: [{ identities: ['*'] }] }), 'p.spec.rules[0].from[0].identities[0]', /invalid SPIFFE ID/],
    ['namespace "*"', rulesWith({ from: [{ namespaces: ['*'] }] }), 'p.spec.rules[0].from[0].namespaces[0]', /not a valid namespace/],
    ['namespace too long', rulesWith({ from: [{ namespaces: ['a'.repeat(64)] }] }), 'p.spec.rules[0].from[0].namespaces[0]', /not a valid namespace/],
    ['namespace not a string', rulesWith({ from: [{ namespaces: [7] }] }), 'p.spec.rules[0].from[0].namespaces[0]', /must be a string/],
    ['empty operation', rulesWith({ to: [{}] }), 'p.spec.rules[0].to[0]', /must name ports, methods or paths/],
    ['operation key typo', rulesWith({ to: [{ port: [80] }] }), 'p.spec.rules[0].to[0].port', /unknown key/],
    ['port 0', rulesWith({ to: [{ ports: [0] }] }), 'p.spec.rules[0].to[0].ports[0]', /not a port/],
    ['port 65536', rulesWith({ to: [{ ports: [65536] }] }), 'p.spec.rules[0].to[0].ports[0]', /not a port/],
    ['port string', rulesWith({ to: [{ ports: ['8080'] }] }), 'p.spec.rules[0].to[0].ports[0]', /not a port/],
    ['port fraction', rulesWith({ to: [{ ports: [80.5] }] }), 'p.spec.rules[0].to[0].ports[0]', /not a port/],
    ['ports not a list', rulesWith({ to: [{ ports: 8080 }] }), 'p.spec.rules[0].to[0].ports', /must be a list/],
    ['lowercase method', rulesWith({ to: [{ methods: ['get'] }] }), 'p.spec.rules[0].to[0].methods[0]', /uppercase: "GET"/],
    ['unknown method', rulesWith({ to: [{ methods: ['PROPFIND'] }] }), 'p.spec.rules[0].to[0].methods[0]', /not a known HTTP method/],
    ['method "*"', rulesWith({ to: [{ methods: ['*'] }] }), 'p.spec.rules[0].to[0].methods[0]', /not a known HTTP method/],
    ['path "*"', rulesWith({ to: [{ paths: ['*'] }] }), 'p.spec.rules[0].to[0].paths[0]', /write "\/\*"/],
    ['relative path', rulesWith({ to: [{ paths: ['v1/items'] }] }), 'p.spec.rules[0].to[0].paths[0]', /must start with "\/"/],
    ['inner wildcard', rulesWith({ to: [{ paths: ['/v1/*/items'] }] }), 'p.spec.rules[0].to[0].paths[0]', /no other wildcards/],
    ['partial-segment wildcard', rulesWith({ to: [{ paths: ['/v1/items*'] }] }), 'p.spec.rules[0].to[0].paths[0]', /whole last segment/],
    ['suffix wildcard', rulesWith({ to: [{ paths: ['*.php'] }] }), 'p.spec.rules[0].to[0].paths[0]', /must start with "\/"/],
    ['double wildcard', rulesWith({ to: [{ paths: ['/v1/**'] }] }), 'p.spec.rules[0].to[0].paths[0]', /no other wildcards/],
    ['query', rulesWith({ to: [{ paths: ['/a?x=1'] }] }), 'p.spec.rules[0].to[0].paths[0]', /query or fragment/],
    ['dot segment', rulesWith({ to: [{ paths: ['/a/../b'] }] }), 'p.spec.rules[0].to[0].paths[0]', /normal form.*"\/b"/],
    ['double slash prefix', rulesWith({ to: [{ paths: ['/v1//*'] }] }), 'p.spec.rules[0].to[0].paths[0]', /write "\/v1\/\*"/],
    ['encoded unreserved', rulesWith({ to: [{ paths: ['/%61dmin'] }] }), 'p.spec.rules[0].to[0].paths[0]', /write "\/admin"/],
    ['lowercase hex', rulesWith({ to: [{ paths: ['/a%3ab'] }] }), 'p.spec.rules[0].to[0].paths[0]', /write "\/a%3Ab"/],
    ['encoded slash', rulesWith({ to: [{ paths: ['/a%2Fb'] }] }), 'p.spec.rules[0].to[0].paths[0]', /encoded slash/],
    ['backslash', rulesWith({ to: [{ paths: ['/a\\b'] }] }), 'p.spec.rules[0].to[0].paths[0]', /backslash/],
    ['NUL', rulesWith({ to: [{ paths: ['/a\u0000'] }] }), 'p.spec.rules[0].to[0].paths[0]', /NUL/],
    ['non-ASCII', rulesWith({ to: [{ paths: ['/caf\u00e9'] }] }), 'p.spec.rules[0].to[0].paths[0]', /visible ASCII/],
    ['__proto__ key', JSON.parse('{"apiVersion":"security.ward.dev/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"action":"ALLOW","rules":[],"__proto__":{}}}'), 'p.spec.__proto__', /unknown key/],
  ])('%s', (_label, raw, path, reason) => {
    const found = problems(raw);
    const hit = found.find((p) => p.path === path);
    expect(hit, `problems were ${JSON.stringify(found)}`).toBeDefined();
    expect(hit!.reason).toMatch(reason);
  });

  it('collects every problem into one error, one line per problem', () => {
    const raw = {
      apiVersion: 'v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'x', namespace: 'Bad' },
      spec: {
        action: 'ALLOW',
        rules: [
          { from: [{ namespaces: ['ops'] }] },
          { to: [{ ports: [80] }, { paths: ['/ok', '/ok/*', 'bad'], methods: ['get'] }] },
        ],
      },
    };
    let message = '';
    try {
      parsePolicy(raw, 'ward.yaml:policies[3]');
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message.split('\n')).toEqual([
      'invalid AuthorizationPolicy (4 problems):',
      expect.stringMatching(/^ {2}ward\.yaml:policies\[3\]\.apiVersion: must be /),
      expect.stringMatching(/^ {2}ward\.yaml:policies\[3\]\.metadata\.namespace: "Bad" is not a valid namespace/),
      expect.stringMatching(/^ {2}ward\.yaml:policies\[3\]\.spec\.rules\[1\]\.to\[1\]\.methods\[0\]: /),
      expect.stringMatching(/^ {2}ward\.yaml:policies\[3\]\.spec\.rules\[1\]\.to\[1\]\.paths\[2\]: "bad" must start with "\/"/),
    ]);
  });

  it('caps the message but keeps every problem on the error', () => {
    const raw = rulesWith({ to: [{ ports: Array.from({ length: 60 }, () => 0) }] });
    const found = problems(raw);
    expect(found).toHaveLength(60);
    try {
      parsePolicy(raw, 'p');
    } catch (err) {
      expect((err as Error).message).toMatch(/… and 10 more$/);
    }
  });
});

describe('parsePolicies', () => {
  it('validates a set as a unit and names items by index', () => {
    const good = policy();
    const bad = policy({ action: 'MAYBE' }, { name: 'other' });
    const err = (() => {
      try {
        parsePolicies([good, bad, good], 'cluster');
      } catch (e) {
        return e as PolicyInvalidError;
      }
      throw new Error('expected refusal');
    })();
    expect(err.problems.map((p) => p.path)).toEqual(['cluster[1].spec.action', 'cluster[2].metadata']);
    expect(err.problems[1].reason).toBe('duplicate policy shop/api-readers (also cluster[0])');
  });

  it('returns a frozen array of frozen policies', () => {
    const out: readonly AuthorizationPolicy[] = parsePolicies([policy(), policy({}, { name: 'b' })], 'cluster');
    expect(out.map((p) => p.metadata.name)).toEqual(['api-readers', 'b']);
    expect(Object.isFrozen(out)).toBe(true);
    expect(Object.isFrozen(out[1].spec)).toBe(true);
  });

  it('refuses something that is not a list', () => {
    expect(() => parsePolicies({} as unknown as unknown[], 'cluster')).toThrow(/cluster: must be a list/);
  });
});
