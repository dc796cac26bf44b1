/**
 * MeshView: what a node proxy knows of the mesh at one discovery version. Built from a ViewState the
 * way the ControlClient builds one (applyFrame on a snapshot, then deltas); every refusal must
 * refuse the whole version (a throw), never index half of it.
 */
import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../core/identity/index.js';
import { PolicyInvalidError } from '../core/policy/index.js';
import { applyFrame, type LocalWorkload, type Resource, type ServiceEndpoints, type ViewState } from '../core/protocol/index.js';
import { mintPki } from '../test/helpers/pki.js';
import { MeshView, parseSni, sniFor } from './mesh-view.js';
import { PrivateKey } from '../core/pki/index.js';

const TD = 'ward.test';
const idOf = (ns: string, sa: string, td = TD): string => `spiffe://${td}/ns/${ns}/sa/${sa}`;
const pki = mintPki(TD);

function endpoints(service: string, namespace: string, o: Partial<ServiceEndpoints> = {}): Resource {
  const value: ServiceEndpoints = {
    service,
    namespace,
    ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }],
    endpoints: [{ address: '10.0.1.5:15008', identity: idOf(namespace, service), node: 'node-b', workload: `${namespace}/${service}-1` }],
    ...o,
  };
  return { kind: 'endpoints', key: `${service}.${namespace}`, value };
}

function workload(namespace: string, name: string, o: Partial<LocalWorkload> = {}): Resource {
  const value: LocalWorkload = { name, namespace, identity: idOf(namespace, name), address: '10.0.0.7', ports: [9090], labels: {}, ...o };
  return { kind: 'workload', key: `${namespace}/${name}`, value };
}

function policy(name: string, namespace = 'shop', spec: unknown = { action: 'ALLOW', rules: [{ from: [{ namespaces: ['shop'] }] }] }): Resource {
  return {
    kind: 'policy',
    key: `${namespace}/${name}`,
    value: { apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name, namespace }, spec },
  };
}

function bundle(trustDomain = TD, pem = pki.bundle.toPem()): Resource {
  return { kind: 'bundle', key: trustDomain, value: { trustDomain, pem, sequence: 1 } };
}

function stateOf(resources: Resource[], version = 7): ViewState {
  return applyFrame(undefined, { type: 'snapshot', version, resources });
}

function viewOf(resources: Resource[], o: { clusterDomain?: string } = {}): MeshView {
  return MeshView.from(stateOf(resources), { trustDomain: TD, ...o });
}

describe('MeshView.from: indexing', () => {
  it('indexes services by "service.namespace", this node\'s workloads by "namespace/name", policies and the bundle', () => {
    const view = viewOf([endpoints('api', 'shop'), endpoints('db', 'data'), workload('shop', 'web'), policy('allow-shop'), bundle()]);
    expect(view.version).toBe(7);
    expect(view.trustDomain).toBe(TD);
    expect([...view.services.keys()].sort()).toEqual(['api.shop', 'db.data']);
    expect(view.services.get('api.shop')?.endpoints[0].address).toBe('10.0.1.5:15008');

    expect([...view.workloads.keys()]).toEqual(['shop/web']);
    const web = view.workloads.get('shop/web')!;
    expect(web.key).toBe('shop/web');
    expect(web.id).toBeInstanceOf(SpiffeId);
    expect(web.id.toString()).toBe(idOf('shop', 'web'));
    expect(web.address).toBe('10.0.0.7');
    expect(Object.isFrozen(web)).toBe(true);

    expect(view.engine.policies.map((p) => `${p.metadata.namespace}/${p.metadata.name}`)).toEqual(['shop/allow-shop']);
    expect(view.bundle?.trustDomain).toBe(TD);
    expect(view.bundle?.roots.map((r) => r.fingerprintSha256)).toEqual(pki.bundle.roots.map((r) => r.fingerprintSha256));
  });

  it('ignores a federated trust domain\'s bundle (not used yet) and unknown kinds such as routes', () => {
    const other = mintPki('other.test');
    const view = viewOf([bundle('other.test', other.bundle.toPem()), { kind: 'route', key: 'shop.example.com', value: { host: 'shop.example.com', paths: [] } }]);
    expect(view.bundle).toBeUndefined();
    expect(view.services.size).toBe(0);
  });

  it('follows deltas: a removed service stops resolving, an upserted one starts', () => {
    const s1 = stateOf([endpoints('api', 'shop'), endpoints('db', 'data')], 1);
    const s2 = applyFrame(s1, { type: 'delta', version: 2, base: 1, upserts: [endpoints('cart', 'shop')], removals: [{ kind: 'endpoints', key: 'api.shop' }] });
    const v1 = MeshView.from(s1, { trustDomain: TD });
    const v2 = MeshView.from(s2, { trustDomain: TD });
    expect(v1.resolve('api.shop', 8080).ok).toBe(true);
    expect(v2.version).toBe(2);
    expect(v2.resolve('api.shop', 8080).ok).toBe(false);
    expect(v2.resolve('cart.shop', 8080).ok).toBe(true);
    expect(v2.resolve('db.data', 8080).ok).toBe(true);
  });

  it('an empty view knows nothing', () => {
    const view = MeshView.empty(TD);
    expect(view.version).toBe(0);
    expect(view.services.size).toBe(0);
    expect(view.bundle).toBeUndefined();
    expect(view.resolve('api.shop', 80)).toMatchObject({ ok: false });
  });
});

describe('MeshView.from: refusals (the whole version is refused)', () => {
  const ep = (o: Record<string, unknown>) => ({ address: '10.0.1.5:15008', identity: idOf('shop', 'api'), node: 'node-b', workload: 'shop/api-1', ...o });
  const port = (o: Record<string, unknown>) => ({ port: 8080, targetPort: 9090, protocol: 'http', ...o });
  const bad = (value: unknown, kind: Resource['kind'] = 'endpoints', key = 'api.shop'): Resource => ({ kind, key, value });

  const cases: [string, Resource, RegExp][] = [
    ['endpoints value null', bad(null), /^endpoints api\.shop: malformed$/],
    ['endpoints without ports', bad({ service: 'api', namespace: 'shop', endpoints: [] }), /endpoints api\.shop: malformed/],
    ['endpoints whose endpoints is not a list', bad({ service: 'api', namespace: 'shop', ports: [], endpoints: {} }), /endpoints api\.shop: malformed/],
    ['endpoints with a numeric service name', bad({ service: 7, namespace: 'shop', ports: [], endpoints: [] }), /endpoints api\.shop: malformed/],
    ['port 0', bad({ service: 'api', namespace: 'shop', ports: [port({ port: 0 })], endpoints: [] }), /endpoints api\.shop: bad port/],
    ['port 65536', bad({ service: 'api', namespace: 'shop', ports: [port({ port: 65536 })], endpoints: [] }), /bad port/],
    ['fractional port', bad({ service: 'api', namespace: 'shop', ports: [port({ port: 80.5 })], endpoints: [] }), /bad port/],
    ['target port as a string', bad({ service: 'api', namespace: 'shop', ports: [port({ targetPort: '9090' })], endpoints: [] }), /bad port/],
    ['target port 0', bad({ service: 'api', namespace: 'shop', ports: [port({ targetPort: 0 })], endpoints: [] }), /bad port/],
    ['protocol udp', bad({ service: 'api', namespace: 'shop', ports: [port({ protocol: 'udp' })], endpoints: [] }), /bad port .*udp/],
    ['endpoint without an address', bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ address: undefined })] }), /endpoints api\.shop: malformed endpoint/],
    ['endpoint without a node', bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ node: 3 })] }), /malformed endpoint/],
    ['endpoint without a workload', bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ workload: null })] }), /malformed endpoint/],
    [
      'endpoint with an identity of another trust domain',
      bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ identity: idOf('shop', 'api', 'evil.test') })] }),
      /endpoints api\.shop: endpoint 10\.0\.1\.5:15008 has no valid identity of ward\.test/,
    ],
    ['endpoint with a non-SPIFFE identity', bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ identity: 'https://ward.test/ns/shop/sa/api' })] }), /has no valid identity/],
    ['endpoint with an empty identity', bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ identity: '' })] }), /has no valid identity/],
    ['endpoint without an identity', bad({ service: 'api', namespace: 'shop', ports: [port({})], endpoints: [ep({ identity: undefined })] }), /has no valid identity/],
    ['workload value null', bad(null, 'workload', 'shop/web'), /^workload shop\/web: malformed$/],
    ['workload whose ports is not a list', workload('shop', 'web', { ports: 9090 as unknown as number[] }), /workload shop\/web: malformed/],
    ['workload without an address', workload('shop', 'web', { address: undefined as unknown as string }), /workload shop\/web: malformed/],
    ['workload with a node identity', workload('shop', 'web', { identity: `spiffe://${TD}/ward/node/n1` }), /workload shop\/web: identity "spiffe:\/\/ward\.test\/ward\/node\/n1" is not a workload identity of ward\.test/],
    ['workload with the trust domain itself as identity', workload('shop', 'web', { identity: `spiffe://${TD}` }), /is not a workload identity/],
    ['workload with an identity of another trust domain', workload('shop', 'web', { identity: idOf('shop', 'web', 'evil.test') }), /is not a workload identity of ward\.test/],
    ['workload with a non-SPIFFE identity', workload('shop', 'web', { identity: 'shop/web' }), /is not a workload identity/],
    ['a bundle that is not PEM certificates', bundle(TD, PrivateKey.generate().exportPem()), /bundle|certificate/i],
  ];

  it.each(cases)('%s', (_name, resource, message) => {
    // Valid resources of every kind around the bad one: none of them rescues the version.
    const state = stateOf([endpoints('cart', 'shop'), workload('shop', 'cart'), policy('allow-shop'), resource]);
    expect(() => MeshView.from(state, { trustDomain: TD })).toThrow(message);
  });

  it('an invalid policy refuses the whole view with PolicyInvalidError', () => {
    const state = stateOf([endpoints('api', 'shop'), policy('ok'), policy('broken', 'shop', { action: 'ALLOW', rules: [{ form: [{ namespaces: ['shop'] }] }] })]);
    let err: unknown;
    try {
      MeshView.from(state, { trustDomain: TD });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PolicyInvalidError);
    expect((err as PolicyInvalidError).code).toBe('WARD_CONFIG_INVALID');
    expect((err as Error).message).toMatch(/pushed policies/);
    expect((err as Error).message).toMatch(/form/);
  });

  it('two policies with the same namespace/name refuse the view', () => {
    // Distinct resource keys, same metadata: the engine refuses duplicates.
    const dup = { ...policy('p'), key: 'shop/p-copy' };
    expect(() => viewOf([policy('p'), dup])).toThrow(PolicyInvalidError);
  });

  it('an endpoint identity is checked against the trust domain the view is built for', () => {
    const state = stateOf([endpoints('api', 'shop')]);
    expect(() => MeshView.from(state, { trustDomain: TD })).not.toThrow();
    expect(() => MeshView.from(state, { trustDomain: 'elsewhere.test' })).toThrow(/no valid identity of elsewhere\.test/);
  });
});

describe('MeshView.resolve', () => {
  const view = viewOf([
    endpoints('api', 'shop', {
      ports: [
        { name: 'http', port: 8080, targetPort: 9090, protocol: 'http' },
        { name: 'admin', port: 9000, targetPort: 9091, protocol: 'http' },
      ],
    }),
  ]);

  it.each([
    'api.shop',
    'api.shop.svc',
    'api.shop.svc.cluster.local',
    'API.Shop',
    'API.SHOP.SVC.CLUSTER.LOCAL',
    'api.shop.',
    'api.shop.svc.',
    'api.shop.svc.cluster.local.',
  ])('%s → api.shop', (host) => {
    const r = view.resolve(host, 8080);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.key).toBe('api.shop');
    expect(r.service.service).toBe('api');
    expect(r.port).toEqual({ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' });
  });

  it('picks the service port named by the request', () => {
    const r = view.resolve('api.shop', 9000);
    expect(r.ok && r.port.targetPort).toBe(9091);
  });

  it('with a custom cluster domain, accepts that domain and not cluster.local', () => {
    const custom = viewOf([endpoints('api', 'shop')], { clusterDomain: 'corp.internal' });
    expect(custom.resolve('api.shop.svc.corp.internal', 8080).ok).toBe(true);
    expect(custom.resolve('API.shop.svc.Corp.Internal.', 8080).ok).toBe(true);
    expect(custom.resolve('api.shop.svc', 8080).ok).toBe(true);
    const r = custom.resolve('api.shop.svc.cluster.local', 8080);
    expect(r).toEqual({ ok: false, reason: expect.stringContaining('api.shop.svc.cluster.local is not a mesh service') });
    expect(!r.ok && r.reason).toContain('.svc.corp.internal');
  });

  it.each(['cart.shop', 'api', 'api.other', 'shop', 'api.shop.cluster.local', 'api.shop.svc.cluster', 'x.api.shop', ''])('unknown %j → a reason naming the host', (host) => {
    const r = view.resolve(host, 8080);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.reason).toBe(`${host} is not a mesh service (expected <service>.<namespace>[.svc.cluster.local])`);
  });

  it('an unknown port → a reason naming the service and the ports it has', () => {
    const r = view.resolve('api.shop.svc.cluster.local', 80);
    expect(r).toEqual({ ok: false, reason: 'service api.shop has no port 80 (ports: 8080, 9000)' });
    // The target port is not a service port.
    expect(view.resolve('api.shop', 9090).ok).toBe(false);
  });

  it('a service without ports says so', () => {
    const v = viewOf([endpoints('api', 'shop', { ports: [] })]);
    expect(v.resolve('api.shop', 80)).toEqual({ ok: false, reason: 'service api.shop has no port 80 (ports: none)' });
  });
});

describe('MeshView.inboundTargets', () => {
  const local = (name: string) => ({ address: '10.0.0.7:15008', identity: idOf('shop', name), node: 'node-a', workload: `shop/${name}` });
  const remote = { address: '10.0.9.9:15008', identity: idOf('shop', 'api'), node: 'node-z', workload: 'shop/api-remote' };
  const view = viewOf([
    workload('shop', 'api-1', { identity: idOf('shop', 'api') }),
    endpoints('api', 'shop', { ports: [{ port: 8080, targetPort: 9090, protocol: 'http' }], endpoints: [{ ...local('api'), workload: 'shop/api-1' }, remote] }),
    endpoints('api-v2', 'shop', {
      ports: [
        { port: 80, targetPort: 9090, protocol: 'http' },
        { port: 7000, targetPort: 7001, protocol: 'tcp' },
      ],
      endpoints: [{ ...local('api'), workload: 'shop/api-1' }],
    }),
  ]);

  it('a workload behind two services on the same target port → both (service, port) pairs', () => {
    expect(view.inboundTargets('shop/api-1', 9090)).toEqual([
      { namespace: 'shop', service: 'api', port: 8080, protocol: 'http' },
      { namespace: 'shop', service: 'api-v2', port: 80, protocol: 'http' },
    ]);
    expect(view.inboundTargets('shop/api-1', 7001)).toEqual([{ namespace: 'shop', service: 'api-v2', port: 7000, protocol: 'tcp' }]);
  });

  it('a port no service maps, an unknown workload, or a workload of another node → []', () => {
    expect(view.inboundTargets('shop/api-1', 8080)).toEqual([]);
    expect(view.inboundTargets('shop/api-1', 1)).toEqual([]);
    expect(view.inboundTargets('shop/nobody', 9090)).toEqual([]);
    expect(view.inboundTargets('shop/api-remote', 9090)).toEqual([]);
  });

  it('lists a (service, port) pair once even when the endpoint appears twice', () => {
    const v = viewOf([
      workload('shop', 'api-1', { identity: idOf('shop', 'api') }),
      endpoints('api', 'shop', { endpoints: [{ ...local('api'), workload: 'shop/api-1' }, { ...local('api'), address: '10.0.0.8:15008', workload: 'shop/api-1' }] }),
    ]);
    expect(v.inboundTargets('shop/api-1', 9090)).toEqual([{ namespace: 'shop', service: 'api', port: 8080, protocol: 'http' }]);
  });
});

describe('sniFor / parseSni', () => {
  it.each([
    ['shop/api-1', 9090, '9090.api-1.shop.ward'],
    ['shop/api.v1.canary', 8080, '8080.api.v1.canary.shop.ward'],
    ['data/db-0', 1, '1.db-0.data.ward'],
    ['data/db-0', 65535, '65535.db-0.data.ward'],
  ] as const)('%s port %d ↔ %s', (workloadKey, port, sni) => {
    expect(sniFor(workloadKey, port)).toBe(sni);
    expect(parseSni(sni)).toEqual({ workload: workloadKey, port });
  });

  it.each([
    ['no SNI', undefined],
    ['null', null],
    ['false (Node: no servername)', false],
    ['empty', ''],
    ['no .ward suffix', '9090.api.shop'],
    ['.ward not at the end', '9090.api.shop.ward.evil.com'],
    ['suffix without a dot', '9090.api.shopward'],
    ['non-numeric port', 'http.api.shop.ward'],
    ['signed port', '+80.api.shop.ward'],
    ['exponent port', '8e3.api.shop.ward'],
    ['port 0', '0.api.shop.ward'],
    ['port 70000', '70000.api.shop.ward'],
    ['six-digit port', '123456.api.shop.ward'],
    ['too few labels', '9090.shop.ward'],
    ['only the suffix', '.ward'],
    ['empty name', '9090..shop.ward'],
    ['empty namespace', '9090.api..ward'],
  ] as const)('refuses %s', (_name, sni) => {
    expect(parseSni(sni)).toBeUndefined();
  });
});
