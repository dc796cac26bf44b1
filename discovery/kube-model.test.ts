import { routePathError } from '../core/hostname.js';
import { describe, expect, it } from 'vitest';
import {
  isOptedIn,
  modelFromKube,
  podInfo,
  servicePortProtocol,
  type KubeCustomObject,
  type KubeEndpointSlice,
  type KubeIngress,
  type KubeIngressPath,
  type KubeNamespace,
  type KubeObjects,
  type KubePod,
  type KubeService,
  type KubeServicePort,
} from './kube-model.js';
import { endpointsOf } from './model.js';

const TD = 'cluster.local';

// ---- object builders (the shapes the API server returns) ---------------------------------------

let uidSeq = 0;

function proxyPod(node: string, o: { hostIP?: string; podIP?: string; phase?: string; ns?: string; name?: string } = {}): KubePod {
  return {
    metadata: { name: o.name ?? `ward-proxy-${node}`, namespace: o.ns ?? 'ward-system', uid: `uid-${uidSeq++}`, labels: { 'app.kubernetes.io/name': 'ward-proxy' } },
    spec: { nodeName: node, serviceAccountName: 'ward-proxy', containers: [{}] },
    status: {
      phase: o.phase ?? 'Running',
      ...('hostIP' in o ? (o.hostIP === undefined ? {} : { hostIP: o.hostIP }) : { hostIP: `10.0.0.${node.slice(-1).charCodeAt(0) % 200}` }),
      ...(o.podIP !== undefined ? { podIP: o.podIP } : {}),
      conditions: [{ type: 'Ready', status: 'False' }],
    },
  };
}

interface PodOpts {
  ns?: string;
  node?: string;
  ip?: string | null;
  labels?: Record<string, string>;
  sa?: string;
  phase?: string;
  ready?: boolean;
  terminating?: boolean;
  ports?: { containerPort: number; name?: string; protocol?: string }[];
}

function pod(name: string, o: PodOpts = {}): KubePod {
  return {
    metadata: {
      name,
      namespace: o.ns ?? 'shop',
      uid: `uid-${name}`,
      labels: o.labels ?? { app: 'web', 'ward.dev/mesh': 'enabled' },
      ...(o.terminating ? { deletionTimestamp: '2025-01-01T00:00:00Z' } : {}),
    },
    spec: {
      nodeName: o.node ?? 'node-a',
      ...(o.sa !== undefined ? { serviceAccountName: o.sa } : {}),
      containers: [{ ports: o.ports ?? [{ containerPort: 8080, name: 'web' }] }],
    },
    status: {
      phase: o.phase ?? 'Running',
      ...(o.ip === null ? {} : { podIP: o.ip ?? '10.1.0.1' }),
      conditions: [
        { type: 'Initialized', status: 'True' },
        { type: 'Ready', status: o.ready === false ? 'False' : 'True' },
      ],
    },
  };
}

function ns(name: string, labels: Record<string, string> = {}): KubeNamespace {
  return { metadata: { name, labels } };
}

function svc(name: string, ports: KubeServicePort[], o: { ns?: string; selector?: Record<string, string> | null } = {}): KubeService {
  return {
    metadata: { name, namespace: o.ns ?? 'shop' },
    spec: { ...(o.selector === null ? {} : { selector: o.selector ?? { app: name } }), ports },
  };
}

function slice(service: string, ports: { name?: string; port: number; protocol?: string }[], o: { ns?: string; name?: string } = {}): KubeEndpointSlice {
  return { metadata: { name: o.name ?? `${service}-abcde`, namespace: o.ns ?? 'shop', labels: { 'kubernetes.io/service-name': service } }, ports };
}

function policy(name: string, spec: unknown, o: { ns?: string; extra?: Record<string, unknown> } = {}): KubeCustomObject {
  return {
    apiVersion: 'security.ward.dev/v1alpha1',
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace: o.ns ?? 'shop', uid: `uid-${name}`, resourceVersion: '7' },
    spec,
    ...o.extra,
  } as KubeCustomObject;
}

function ingress(
  name: string,
  rules: { host?: string; paths?: KubeIngressPath[] }[],
  o: { ns?: string; className?: string | null; annotation?: string; tls?: { hosts?: string[]; secretName?: string }[]; defaultBackend?: unknown } = {},
): KubeIngress {
  return {
    metadata: { name, namespace: o.ns ?? 'shop', ...(o.annotation !== undefined ? { annotations: { 'kubernetes.io/ingress.class': o.annotation } } : {}) },
    spec: {
      ...(o.className === null ? {} : { ingressClassName: o.className ?? 'ward' }),
      ...(o.tls !== undefined ? { tls: o.tls } : {}),
      ...(o.defaultBackend !== undefined ? { defaultBackend: o.defaultBackend } : {}),
      rules: rules.map((r) => ({ ...(r.host !== undefined ? { host: r.host } : {}), ...(r.paths !== undefined ? { http: { paths: r.paths } } : {}) })),
    },
  };
}

function path(p: string, service: string, port: number | string, pathType = 'Prefix'): KubeIngressPath {
  return { path: p, pathType, backend: { service: { name: service, port: typeof port === 'number' ? { number: port } : { name: port } } } };
}

function objects(o: Partial<KubeObjects> = {}): KubeObjects {
  return {
    pods: [proxyPod('node-a', { hostIP: '10.0.0.1' }), proxyPod('node-b', { hostIP: '10.0.0.2' }), ...(o.pods ?? [])],
    services: o.services ?? [],
    namespaces: o.namespaces ?? [ns('shop'), ns('ward-system')],
    endpointSlices: o.endpointSlices ?? [],
    ingresses: o.ingresses ?? [],
    policies: o.policies ?? [],
  };
}

function build(o: Partial<KubeObjects> = {}) {
  return modelFromKube(objects(o), { trustDomain: TD });
}

// ---- nodes --------------------------------------------------------------------------------------

describe('modelFromKube: nodes', () => {
  it('one node per running ward-proxy pod, ready or not, at its host IP', () => {
    const { model, problems } = build();
    expect(model.nodes).toEqual([
      { name: 'node-a', address: '10.0.0.1' },
      { name: 'node-b', address: '10.0.0.2' },
    ]);
    expect(problems).toEqual([]);
  });

  it.each([
    ['a pending proxy pod', proxyPod('node-c', { phase: 'Pending' }), []],
    ['a ward-proxy pod in another namespace', proxyPod('node-c', { ns: 'default' }), []],
    ['a proxy pod without hostIP (uses podIP)', proxyPod('node-c', { hostIP: undefined, podIP: '10.0.0.9' }), [{ name: 'node-c', address: '10.0.0.9' }]],
    ['a second proxy pod on the same node (rollout)', proxyPod('node-a', { hostIP: '10.0.0.1', name: 'ward-proxy-zzz' }), []],
  ])('%s', (_what, extra, nodes) => {
    const { model } = modelFromKube(objects({ pods: [extra] }), { trustDomain: TD });
    expect(model.nodes.filter((n) => n.name !== 'node-a' && n.name !== 'node-b')).toEqual(nodes);
    expect(model.nodes.find((n) => n.name === 'node-a')).toEqual({ name: 'node-a', address: '10.0.0.1' });
  });

  it('a proxy pod without any IP, or with an IPv6 one, is left out with a problem', () => {
    const { model, problems } = build({
      pods: [proxyPod('node-c', { hostIP: undefined }), proxyPod('node-d', { hostIP: 'fd00::1' })],
    });
    expect(model.nodes.map((n) => n.name)).toEqual(['node-a', 'node-b']);
    expect(problems).toEqual([
      { kind: 'Pod', ref: 'ward-system/ward-proxy-node-c', reason: expect.stringContaining('neither status.hostIP nor status.podIP') },
      { kind: 'Pod', ref: 'ward-system/ward-proxy-node-d', reason: expect.stringContaining('IPv6') },
    ]);
  });

  it('honours another Ward namespace', () => {
    const { model } = modelFromKube(
      { ...objects(), pods: [proxyPod('node-x', { ns: 'mesh', hostIP: '10.9.9.9' }), proxyPod('node-a')] },
      { trustDomain: TD, namespace: 'mesh' },
    );
    expect(model.nodes).toEqual([{ name: 'node-x', address: '10.9.9.9' }]);
  });
});

// ---- workloads ----------------------------------------------------------------------------------

describe('modelFromKube: workloads', () => {
  const off = { app: 'web' };
  it.each<[string, KubePod[], KubeNamespace[] | undefined, boolean]>([
    ['pod label enabled', [pod('web-1')], undefined, true],
    ['no label anywhere', [pod('web-1', { labels: off })], undefined, false],
    ['namespace label enabled', [pod('web-1', { labels: off })], [ns('shop', { 'ward.dev/mesh': 'enabled' })], true],
    ['namespace enabled, pod disabled', [pod('web-1', { labels: { ...off, 'ward.dev/mesh': 'disabled' } })], [ns('shop', { 'ward.dev/mesh': 'enabled' })], false],
    ['namespace disabled, pod enabled', [pod('web-1')], [ns('shop', { 'ward.dev/mesh': 'disabled' })], true],
    ['namespace label with another value', [pod('web-1', { labels: off })], [ns('shop', { 'ward.dev/mesh': 'yes' })], false],
    ['not Ready', [pod('web-1', { ready: false })], undefined, false],
    ['Pending', [pod('web-1', { phase: 'Pending' })], undefined, false],
    ['Succeeded', [pod('web-1', { phase: 'Succeeded' })], undefined, false],
    ['terminating', [pod('web-1', { terminating: true })], undefined, false],
    ['no pod IP', [pod('web-1', { ip: null })], undefined, false],
  ])('%s', (_what, pods, namespaces, included) => {
    const { model } = build({ pods, ...(namespaces !== undefined ? { namespaces } : {}) });
    expect(model.workloads.map((w) => `${w.namespace}/${w.name}`)).toEqual(included ? ['shop/web-1'] : []);
  });

  it('a pod on the host network is left out with a problem: its address is the node\'s, shared by every process there', () => {
    const host = pod('agent', { ip: '10.0.0.1' });
    (host.spec as { hostNetwork?: boolean }).hostNetwork = true;
    // Same address as its node but without the flag (what a host-network pod looks like to the API) too.
    const alike = pod('agent-2', { ip: '10.0.0.1' });
    const { model, problems } = build({ pods: [host, alike] });
    expect(model.workloads).toEqual([]);
    expect(problems.filter((p) => /host network/.test(p.reason)).map((p) => p.ref)).toEqual(['shop/agent', 'shop/agent-2']);
  });

  it('a workload: identity from namespace and service account (default when unset), TCP ports sorted, all labels', () => {
    const { model } = build({
      pods: [
        pod('web-1', {
          sa: 'web',
          ip: '10.1.0.7',
          node: 'node-b',
          ports: [
            { containerPort: 9090, name: 'metrics' },
            { containerPort: 8080 },
            { containerPort: 53, protocol: 'UDP' },
            { containerPort: 8080, protocol: 'TCP' },
          ],
        }),
        pod('web-2', { labels: { app: 'web', 'ward.dev/mesh': 'enabled', tier: 'front' } }),
      ],
    });
    expect(model.workloads).toEqual([
      {
        name: 'web-1',
        namespace: 'shop',
        serviceAccount: 'web',
        node: 'node-b',
        address: '10.1.0.7',
        ports: [8080, 9090],
        labels: { app: 'web', 'ward.dev/mesh': 'enabled' },
        identity: 'spiffe://cluster.local/ns/shop/sa/web',
      },
      expect.objectContaining({ name: 'web-2', serviceAccount: 'default', identity: 'spiffe://cluster.local/ns/shop/sa/default', labels: { app: 'web', 'ward.dev/mesh': 'enabled', tier: 'front' } }),
    ]);
  });

  it('a ready opted-in pod on a node without a proxy is left out with a problem', () => {
    const { model, problems } = build({ pods: [pod('web-1', { node: 'node-z' })] });
    expect(model.workloads).toEqual([]);
    expect(problems).toEqual([{ kind: 'Pod', ref: 'shop/web-1', reason: expect.stringContaining('no ward-proxy pod runs on its node "node-z"') }]);
  });

  it('a pod on a node whose proxy is only Pending is left out', () => {
    const o = objects({ pods: [pod('web-1', { node: 'node-c' })] });
    o.pods = [...o.pods, proxyPod('node-c', { phase: 'Pending' })];
    expect(modelFromKube(o, { trustDomain: TD }).model.workloads).toEqual([]);
  });

  it('canonicalizes IPv6 pod addresses', () => {
    const { model } = build({ pods: [pod('web-1', { ip: 'FD00:0:0::0001' })] });
    expect(model.workloads[0].address).toBe('fd00::1');
  });
});

// ---- services -----------------------------------------------------------------------------------

describe('modelFromKube: services', () => {
  it.each<[string, KubeServicePort, 'http' | 'tcp']>([
    ['appProtocol http', { port: 80, appProtocol: 'http' }, 'http'],
    ['appProtocol kubernetes.io/h2c', { port: 80, appProtocol: 'kubernetes.io/h2c' }, 'http'],
    ['name http', { port: 80, name: 'http' }, 'http'],
    ['name http-api', { port: 80, name: 'http-api' }, 'http'],
    ['name httpx', { port: 80, name: 'httpx' }, 'tcp'],
    ['name grpc', { port: 80, name: 'grpc' }, 'tcp'],
    ['appProtocol kubernetes.io/ws', { port: 80, appProtocol: 'kubernetes.io/ws' }, 'tcp'],
    ['no name, no appProtocol', { port: 80 }, 'tcp'],
  ])('protocol: %s', (_what, p, protocol) => {
    expect(servicePortProtocol(p)).toBe(protocol);
    const { model } = build({ services: [svc('web', [p])] });
    expect(model.services[0].ports[0].protocol).toBe(protocol);
  });

  it('keeps services with a selector, any namespace; drops selectorless ones and UDP ports', () => {
    const { model, problems } = build({
      services: [
        svc('web', [{ name: 'http', port: 80, targetPort: 8080 }, { name: 'dns', port: 53, protocol: 'UDP' }, { name: 'tcp-admin', port: 9000 }]),
        svc('kubernetes', [{ name: 'https', port: 443, targetPort: 6443 }], { ns: 'default', selector: null }),
        svc('db', [{ port: 5432 }], { ns: 'data' }),
      ],
    });
    expect(model.services).toEqual([
      { name: 'db', namespace: 'data', selector: { app: 'db' }, ports: [{ port: 5432, targetPort: 5432, protocol: 'tcp' }] },
      {
        name: 'web',
        namespace: 'shop',
        selector: { app: 'web' },
        ports: [
          { name: 'http', port: 80, targetPort: 8080, protocol: 'http' },
          { name: 'tcp-admin', port: 9000, targetPort: 9000, protocol: 'tcp' },
        ],
      },
    ]);
    expect(problems).toEqual([]);
  });

  it('a named targetPort is resolved from the EndpointSlice (named after the service port)', () => {
    const { model } = build({
      services: [svc('web', [{ name: 'http', port: 80, targetPort: 'web' }])],
      endpointSlices: [slice('web', [{ name: 'http', port: 8181 }]), slice('other', [{ name: 'http', port: 1 }])],
      pods: [pod('web-1', { ports: [{ containerPort: 8080, name: 'web' }] })], // the slice wins
    });
    expect(model.services[0].ports).toEqual([{ name: 'http', port: 80, targetPort: 8181, protocol: 'http' }]);
  });

  it('a named targetPort of an unnamed single port is resolved from the slice port without name', () => {
    const { model } = build({ services: [svc('web', [{ port: 80, targetPort: 'web' }])], endpointSlices: [slice('web', [{ port: 8181 }])] });
    expect(model.services[0].ports).toEqual([{ port: 80, targetPort: 8181, protocol: 'tcp' }]);
  });

  it('without slices, a named targetPort is resolved from the selected pods (any namespace pod, not only workloads)', () => {
    const { model, problems } = build({
      services: [svc('web', [{ name: 'http', port: 80, targetPort: 'web' }])],
      pods: [
        pod('web-1', { ready: false, ports: [{ containerPort: 8080, name: 'web' }] }),
        pod('other', { labels: { app: 'other' }, ports: [{ containerPort: 1234, name: 'web' }] }),
      ],
    });
    expect(model.services[0].ports).toEqual([{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }]);
    expect(model.workloads).toEqual([]);
    expect(problems).toEqual([]);
  });

  it('an unresolvable named targetPort leaves the port out (a problem only when pods are selected)', () => {
    const noPods = build({ services: [svc('web', [{ name: 'http', port: 80, targetPort: 'web' }, { name: 'http-2', port: 81 }])] });
    expect(noPods.model.services[0].ports.map((p) => p.port)).toEqual([81]);
    expect(noPods.problems).toEqual([]);
    const wrongName = build({
      services: [svc('web', [{ name: 'http', port: 80, targetPort: 'web' }])],
      pods: [pod('web-1', { ports: [{ containerPort: 8080, name: 'api' }] })],
    });
    expect(wrongName.model.services[0].ports).toEqual([]);
    expect(wrongName.problems).toEqual([{ kind: 'Service', ref: 'shop/web', reason: expect.stringContaining('no selected pod has a container port named "web"') }]);
  });

  it('a named targetPort that is a different number on different pods is left out with a problem', () => {
    const { model, problems } = build({
      services: [svc('web', [{ name: 'http', port: 80, targetPort: 'web' }])],
      pods: [pod('web-1', { ports: [{ containerPort: 8080, name: 'web' }] }), pod('web-2', { ip: '10.1.0.2', ports: [{ containerPort: 9090, name: 'web' }] })],
    });
    expect(model.services[0].ports).toEqual([]);
    expect(problems).toEqual([{ kind: 'Service', ref: 'shop/web', reason: expect.stringContaining('is port 8080, 9090 on different pods') }]);
  });

  it('endpoints of a translated service are the selected workloads', () => {
    const { model } = build({ services: [svc('web', [{ name: 'http', port: 80, targetPort: 8080 }])], pods: [pod('web-1'), pod('web-2', { ip: '10.1.0.2', node: 'node-b' })] });
    expect(endpointsOf(model, 'web.shop').map((e) => `${e.workload}@${e.node}:${e.port}`)).toEqual(['shop/web-1@node-a:8080', 'shop/web-2@node-b:8080']);
  });
});

// ---- policies -----------------------------------------------------------------------------------

describe('modelFromKube: policies', () => {
  const allowGets = { selector: { service: 'web' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['shop'] }], to: [{ methods: ['GET'] }] }] };

  it('parses AuthorizationPolicies with core/policy, ignoring what the API server adds', () => {
    const { model, problems } = build({
      policies: [policy('web-readers', allowGets, { extra: { status: { observedGeneration: 1 } } }), policy('deny-all', { action: 'DENY', rules: [{}] }, { ns: 'data' })],
    });
    expect(problems).toEqual([]);
    expect(model.policies).toEqual([
      { apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-all', namespace: 'data' }, spec: { action: 'DENY', rules: [{}] } },
      { apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'web-readers', namespace: 'shop' }, spec: allowGets },
    ]);
  });

  it('an invalid policy is left out with a problem naming each fault; the others apply', () => {
    const { model, problems } = build({
      policies: [
        policy('bad', { action: 'ALLOW', rules: [{ to: [{ methods: ['FETCH'] }], form: [] }] }),
        policy('no-spec', undefined),
        policy('good', allowGets),
      ],
    });
    expect(model.policies.map((p) => p.metadata.name)).toEqual(['good']);
    expect(problems).toHaveLength(2);
    expect(problems[0]).toEqual({ kind: 'AuthorizationPolicy', ref: 'shop/bad', reason: expect.stringContaining('invalid, left out') });
    expect(problems[0].reason).toMatch(/FETCH/);
    expect(problems[0].reason).toMatch(/form/);
    expect(problems[1]).toEqual({ kind: 'AuthorizationPolicy', ref: 'shop/no-spec', reason: expect.stringContaining('spec: is required') });
  });
});

// ---- routes -------------------------------------------------------------------------------------

describe('modelFromKube: routes', () => {
  const services = [
    svc('web', [{ name: 'http', port: 80, targetPort: 8080 }, { name: 'tcp-raw', port: 9000 }]),
    svc('api', [{ name: 'http-api', port: 8080 }]),
  ];
  const routesOf = (ingresses: KubeIngress[]) => build({ services, ingresses });

  it.each<[string, KubeIngress, boolean]>([
    ['spec.ingressClassName ward', ingress('i', [{ host: 'shop.example.com', paths: [path('/', 'web', 80)] }]), true],
    ['legacy annotation ward', ingress('i', [{ host: 'shop.example.com', paths: [path('/', 'web', 80)] }], { className: null, annotation: 'ward' }), true],
    ['class nginx', ingress('i', [{ host: 'shop.example.com', paths: [path('/', 'web', 80)] }], { className: 'nginx' }), false],
    ['annotation nginx', ingress('i', [{ host: 'shop.example.com', paths: [path('/', 'web', 80)] }], { className: null, annotation: 'nginx' }), false],
    ['no class at all', ingress('i', [{ host: 'shop.example.com', paths: [path('/', 'web', 80)] }], { className: null }), false],
  ])('ingress class: %s', (_what, ing, included) => {
    const { model, problems } = routesOf([ing]);
    expect(model.routes.map((r) => r.host)).toEqual(included ? ['shop.example.com'] : []);
    expect(problems).toEqual([]);
  });

  it('rules → routes: Exact, Prefix, ImplementationSpecific as Prefix, port by number or name, tls secret, wildcard host', () => {
    const { model, problems } = routesOf([
      ingress(
        'shop',
        [
          { host: 'shop.example.com', paths: [path('/api', 'api', 'http-api', 'Exact'), path('/', 'web', 80), { path: '/static', pathType: 'ImplementationSpecific', backend: { service: { name: 'web', port: { number: 80 } } } }] },
          { host: '*.example.com', paths: [path('/', 'web', 'http')] },
        ],
        { tls: [{ hosts: ['shop.example.com'], secretName: 'shop-tls' }, { hosts: ['nomatch.example.com'], secretName: 'x' }] },
      ),
    ]);
    expect(problems).toEqual([]);
    expect(model.routes).toEqual([
      { host: '*.example.com', paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] },
      {
        host: 'shop.example.com',
        tlsSecret: 'shop-tls',
        paths: [
          { path: '/api', pathType: 'Exact', service: 'api.shop', port: 8080 },
          { path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 },
          { path: '/static', pathType: 'Prefix', service: 'web.shop', port: 80 },
        ],
      },
    ]);
  });

  it.each<[string, KubeIngressPath, string]>([
    ['a path not in normal form', path('/a/../b', 'web', 80), 'not in normal form'],
    ['a path with a query', path('/a?b', 'web', 80), 'must not contain'],
    ['a relative path', path('a', 'web', 80), 'must start with "/"'],
    ['an unknown pathType', path('/a', 'web', 80, 'Regex'), 'pathType "Regex"'],
    ['an unknown service', path('/a', 'nope', 80), 'service shop/nope is not in the mesh'],
    ['a port the service lacks', path('/a', 'web', 81), 'has no port 81'],
    ['a port name the service lacks', path('/a', 'web', 'grpc'), 'has no port "grpc"'],
    ['a tcp port', path('/a', 'web', 9000), 'is tcp; ingress routes need an http port'],
    ['a resource backend', { path: '/a', pathType: 'Prefix', backend: { resource: { kind: 'Bucket', name: 'b' } } }, 'only service backends'],
  ])('%s is skipped with a problem; the other paths stay', (_what, bad, reason) => {
    const { model, problems } = routesOf([ingress('shop', [{ host: 'shop.example.com', paths: [bad, path('/', 'web', 80)] }])]);
    expect(model.routes).toEqual([{ host: 'shop.example.com', paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] }]);
    expect(problems).toEqual([{ kind: 'Ingress', ref: 'shop/shop', reason: expect.stringContaining(reason) }]);
    expect(problems[0].reason).toMatch(/^spec\.rules\[0\]\.http\.paths\[0\]: /);
  });

  it.each<[string, { host?: string; paths?: KubeIngressPath[] }, string]>([
    ['a rule without host', { paths: [path('/', 'web', 80)] }, 'a rule without host is skipped'],
    ['an upper-case host', { host: 'Shop.example.com', paths: [path('/', 'web', 80)] }, 'not a lowercase DNS name'],
    ['a wildcard inside a host', { host: 'a.*.example.com', paths: [path('/', 'web', 80)] }, 'wildcard'],
    ['an IP host', { host: '10.0.0.1', paths: [path('/', 'web', 80)] }, 'is an IP address'],
    ['a rule without paths', { host: 'b.example.com' }, 'has no http paths'],
  ])('%s is skipped with a problem', (_what, rule, reason) => {
    const { model, problems } = routesOf([ingress('shop', [rule, { host: 'ok.example.com', paths: [path('/', 'web', 80)] }])]);
    expect(model.routes.map((r) => r.host)).toEqual(['ok.example.com']);
    expect(problems).toEqual([{ kind: 'Ingress', ref: 'shop/shop', reason: expect.stringContaining(reason) }]);
  });

  it('merges one host across Ingresses in namespace/name order; a duplicate path or TLS Secret: the first wins, with a problem', () => {
    const { model, problems } = build({
      services: [...services, svc('admin', [{ name: 'http', port: 80 }], { ns: 'ops' })],
      ingresses: [
        ingress('b-shop', [{ host: 'shop.example.com', paths: [path('/', 'web', 80), path('/api', 'api', 8080)] }], { tls: [{ hosts: ['shop.example.com'], secretName: 'other' }] }),
        ingress('a-admin', [{ host: 'shop.example.com', paths: [path('/admin', 'admin', 80), path('/', 'admin', 80)] }], { ns: 'ops', tls: [{ hosts: ['shop.example.com'], secretName: 'shop-tls' }] }),
      ],
    });
    expect(model.routes).toEqual([
      {
        host: 'shop.example.com',
        tlsSecret: 'shop-tls',
        paths: [
          { path: '/admin', pathType: 'Prefix', service: 'admin.ops', port: 80 },
          { path: '/', pathType: 'Prefix', service: 'admin.ops', port: 80 },
          { path: '/api', pathType: 'Prefix', service: 'api.shop', port: 8080 },
        ],
      },
    ]);
    expect(problems).toEqual([
      { kind: 'Ingress', ref: 'shop/b-shop', reason: expect.stringContaining('duplicate Prefix path "/" for host "shop.example.com" (already routed by Ingress ops/a-admin)') },
      { kind: 'Ingress', ref: 'shop/b-shop', reason: expect.stringContaining('already has the TLS Secret "shop-tls"') },
    ]);
  });

  it('a backend service is looked up in the Ingress namespace only', () => {
    const { model, problems } = build({ services, ingresses: [ingress('x', [{ host: 'a.example.com', paths: [path('/', 'web', 80)] }], { ns: 'other' })] });
    expect(model.routes).toEqual([]);
    expect(problems).toEqual([{ kind: 'Ingress', ref: 'other/x', reason: expect.stringContaining('service other/web is not in the mesh') }]);
  });

  it('a defaultBackend is reported as ignored', () => {
    const { problems } = routesOf([ingress('shop', [{ host: 'a.example.com', paths: [path('/', 'web', 80)] }], { defaultBackend: { service: { name: 'web', port: { number: 80 } } } })]);
    expect(problems).toEqual([{ kind: 'Ingress', ref: 'shop/shop', reason: expect.stringContaining('defaultBackend is not supported') }]);
  });

  it('route paths follow the ward.yaml rules', () => {
    expect(routePathError('/a/b')).toBeUndefined();
    expect(routePathError('/a/')).toBeUndefined();
    expect(routePathError('/a//b')).toMatch(/normal form/);
    expect(routePathError('/a b')).toMatch(/whitespace/);
    expect(routePathError('/%zz')).toMatch(/not a valid path/);
  });
});

// ---- the whole ----------------------------------------------------------------------------------

describe('modelFromKube: determinism', () => {
  const all = objects({
    pods: [pod('web-2', { ip: '10.1.0.2' }), pod('web-1'), pod('api-1', { labels: { app: 'api', 'ward.dev/mesh': 'enabled' }, ip: '10.1.0.3', node: 'node-z' })],
    services: [svc('web', [{ name: 'http', port: 80, targetPort: 8080 }]), svc('api', [{ name: 'http', port: 80, targetPort: 'x' }])],
    ingresses: [ingress('z', [{ host: 'b.example.com', paths: [path('/', 'web', 80)] }]), ingress('a', [{ host: 'a.example.com', paths: [path('/', 'web', 80)] }, { paths: [] }])],
    policies: [policy('p2', { action: 'DENY', rules: [{}] }), policy('p1', { action: 'ALLOW', rules: [] }), policy('bad', { action: 'NOPE', rules: [] })],
  });

  it('the same objects in any order give the same, frozen model and problems', () => {
    const a = modelFromKube(all, { trustDomain: TD });
    const reversed: KubeObjects = {
      pods: [...all.pods].reverse(),
      services: [...all.services].reverse(),
      namespaces: [...all.namespaces].reverse(),
      endpointSlices: [...all.endpointSlices].reverse(),
      ingresses: [...all.ingresses].reverse(),
      policies: [...all.policies].reverse(),
    };
    const b = modelFromKube(reversed, { trustDomain: TD });
    expect(b).toEqual(a);
    expect(JSON.stringify(b)).toBe(JSON.stringify(a));
    expect(a.model.workloads.map((w) => w.name)).toEqual(['web-1', 'web-2']);
    expect(a.model.services.map((s) => s.name)).toEqual(['api', 'web']);
    expect(a.model.routes.map((r) => r.host)).toEqual(['a.example.com', 'b.example.com']);
    expect(a.model.policies.map((p) => p.metadata.name)).toEqual(['p1', 'p2']);
    expect(a.problems.map((p) => `${p.kind} ${p.ref}`)).toEqual(['AuthorizationPolicy shop/bad', 'Ingress shop/a', 'Pod shop/api-1', 'Service shop/api']);
    expect(Object.isFrozen(a.model.workloads[0].labels)).toBe(true);
    expect(Object.isFrozen(a.problems)).toBe(true);
  });

  it('garbage in raw watch objects does not throw', () => {
    const junk = { metadata: { name: 'x', namespace: 'shop', labels: { a: 1 } }, spec: { containers: 'no', ports: 7, rules: {} }, status: { conditions: null } };
    const o: KubeObjects = {
      pods: [junk as never, {} as never],
      services: [junk as never],
      namespaces: [junk as never],
      endpointSlices: [junk as never],
      ingresses: [{ ...junk, spec: { ingressClassName: 'ward', rules: [null, { host: 'a.example.com', http: { paths: [null] } }], tls: [null] } } as never],
      policies: [junk as never],
    };
    const { model } = modelFromKube(o, { trustDomain: TD });
    expect(model.workloads).toEqual([]);
  });
});

describe('podInfo and isOptedIn', () => {
  it('what attestation reads from a pod', () => {
    expect(podInfo(proxyPod('node-a', { name: 'p' }))).toEqual({
      uid: expect.stringMatching(/^uid-/),
      nodeName: 'node-a',
      serviceAccount: 'ward-proxy',
      phase: 'Running',
      labels: { 'app.kubernetes.io/name': 'ward-proxy' },
    });
    const bare = podInfo({ metadata: { name: 'x', namespace: 'y', uid: 'u' } });
    expect(bare).toEqual({ uid: 'u', serviceAccount: 'default', labels: {} });
    expect(podInfo({ metadata: { name: 'x' } })).toBeUndefined();
  });

  it('the pod label overrides the namespace label', () => {
    expect(isOptedIn(pod('a', { labels: {} }), { 'ward.dev/mesh': 'enabled' })).toBe(true);
    expect(isOptedIn(pod('a', { labels: { 'ward.dev/mesh': 'disabled' } }), { 'ward.dev/mesh': 'enabled' })).toBe(false);
    expect(isOptedIn(pod('a', { labels: { 'ward.dev/mesh': 'enabled' } }), undefined)).toBe(true);
    expect(isOptedIn(pod('a', { labels: {} }), undefined)).toBe(false);
  });
});
