import { describe, expect, it } from 'vitest';
import { EXAMPLE_WARD_YAML } from './example.js';
import { diffModels, emptyModel, endpointsOf, isNodeMember, mayObtain, selectorMatches, workloadsOnNode } from './model.js';
import { parseWardYaml } from './ward-yaml.js';
import { editedExample, exampleModel, type Doc } from '../test/helpers/mesh.js';


const base = exampleModel;


const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';

describe('mayObtain (the CA node authorizer answer)', () => {
  it('true for an identity declared on that node', () => {
    expect(mayObtain(base, 'node-a', WEB)).toBe(true);
    expect(mayObtain(base, 'node-b', API)).toBe(true);
  });

  it('false for another node, an undeclared identity, an unknown node', () => {
    const lonely = editedExample((d) => {
      d.workloads = d.workloads.filter((w: Doc) => w.name !== 'api-2');
    });
    expect(mayObtain(lonely, 'node-b', API)).toBe(false);
    expect(mayObtain(base, 'node-a', 'spiffe://cluster.local/ns/shop/sa/db')).toBe(false);
    expect(mayObtain(base, 'node-a', 'spiffe://other.org/ns/shop/sa/web')).toBe(false);
    expect(mayObtain(base, 'node-z', WEB)).toBe(false);
    expect(mayObtain(base, 'node-a', `${WEB}/`)).toBe(false);
  });

  it('follows a workload moved to another node', () => {
    const moved = editedExample((d) => {
      d.workloads = d.workloads.filter((w: Doc) => w.name !== 'api-1');
      d.workloads.push({ name: 'db', namespace: 'data', serviceAccount: 'db', node: 'node-a', address: '127.0.50.1', ports: [5432] });
    });
    expect(mayObtain(base, 'node-a', 'spiffe://cluster.local/ns/data/sa/db')).toBe(false);
    expect(mayObtain(moved, 'node-a', 'spiffe://cluster.local/ns/data/sa/db')).toBe(true);
    const relocated = editedExample((d) => {
      d.workloads[2].node = 'node-b'; // api-1 → node-b: node-a no longer runs any api
    });
    expect(mayObtain(relocated, 'node-a', API)).toBe(false);
    expect(mayObtain(relocated, 'node-b', API)).toBe(true);
  });

  it('false once the workload is removed', () => {
    const removed = editedExample((d) => {
      d.workloads = d.workloads.filter((w: Doc) => !w.name.startsWith('web-'));
      d.services = d.services.filter((s: Doc) => s.name !== 'web');
      delete d.ingress;
    });
    expect(mayObtain(removed, 'node-a', WEB)).toBe(false);
    expect(mayObtain(removed, 'node-b', WEB)).toBe(false);
  });

  it('isNodeMember answers node renewals', () => {
    expect(isNodeMember(base, 'node-a')).toBe(true);
    expect(isNodeMember(base, 'node-c')).toBe(false);
  });
});

describe('workloadsOnNode', () => {
  it('lists what runs on a node', () => {
    expect(workloadsOnNode(base, 'node-a').map((w) => w.name)).toEqual(['web-1', 'api-1']);
    expect(workloadsOnNode(base, 'node-b').map((w) => w.name)).toEqual(['web-2', 'api-2']);
    expect(workloadsOnNode(base, 'nowhere')).toEqual([]);
  });
});

describe('endpointsOf', () => {
  it('workloads matching the selector, at address:targetPort, with identity and locality', () => {
    expect(endpointsOf(base, 'api.shop')).toEqual([
      { workload: 'shop/api-1', node: 'node-a', zone: 'zone-a', address: '127.0.30.1', port: 9090, servicePort: 8080, protocol: 'http', identity: API },
      { workload: 'shop/api-2', node: 'node-b', zone: 'zone-b', address: '127.0.30.2', port: 9090, servicePort: 8080, protocol: 'http', identity: API },
    ]);
    expect(endpointsOf(base, { name: 'web', namespace: 'shop' }).map((e) => `${e.address}:${e.port}`)).toEqual(['127.0.20.1:8080', '127.0.20.2:8080']);
  });

  it('filters by service port; unknown service or port → none', () => {
    expect(endpointsOf(base, 'api.shop', 8080)).toHaveLength(2);
    expect(endpointsOf(base, 'api.shop', 80)).toEqual([]);
    expect(endpointsOf(base, 'api.other')).toEqual([]);
    expect(endpointsOf(base, 'api')).toEqual([]);
  });

  it('selects only within the service namespace, and only when every selector pair matches', () => {
    const m = editedExample((d) => {
      d.workloads.push({ name: 'api-x', namespace: 'other', serviceAccount: 'api', node: 'node-a', address: '127.0.30.9', ports: [9090], labels: { app: 'api' } });
      d.workloads[2].labels = { app: 'api', track: 'canary' };
      d.services[1].selector = { app: 'api', track: 'canary' };
    });
    expect(endpointsOf(m, 'api.shop').map((e) => e.workload)).toEqual(['shop/api-1']);
    expect(selectorMatches({}, { app: 'x' })).toBe(false);
  });
});

describe('diffModels', () => {
  it('the same file parsed twice: empty diff', () => {
    const d = diffModels(base, parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml'));
    expect(d.empty).toBe(true);
    expect(d.workloads).toEqual({ added: [], removed: [], changed: [] });
  });

  it('names added, removed and changed keys per kind', () => {
    const next = editedExample((d) => {
      d.nodes[1].zone = 'zone-c'; // changed node
      d.nodes.push({ name: 'node-c', address: '127.0.10.3' }); // added node
      d.workloads = d.workloads.filter((w: Doc) => w.name !== 'web-2'); // removed workload
      d.workloads[2].labels = { app: 'api', v: '2' }; // changed workload (api-2 after the filter)
      d.workloads.push({ name: 'api-3', namespace: 'shop', serviceAccount: 'api', node: 'node-c', address: '127.0.30.3', ports: [9090], labels: { app: 'api' } });
      d.services[1].ports[0].protocol = 'tcp'; // changed service
      d.policies.pop(); // removed policy
      d.ingress.routes[0].paths.push({ path: '/static', pathType: 'Prefix', service: 'web.shop', port: 80 }); // changed route
      d.ingress.routes.push({ host: 'admin.localhost', paths: [{ path: '/', service: 'web.shop', port: 80 }] }); // added route
    });
    const d = diffModels(base, next);
    expect(d.empty).toBe(false);
    expect(d.trustDomainChanged).toBe(false);
    expect(d.nodes).toEqual({ added: ['node-c'], removed: [], changed: ['node-b'] });
    expect(d.workloads).toEqual({ added: ['shop/api-3'], removed: ['shop/web-2'], changed: ['shop/api-2'] });
    expect(d.services).toEqual({ added: [], removed: [], changed: ['shop/api'] });
    expect(d.policies).toEqual({ added: [], removed: ['shop/web-allow-ingress'], changed: [] });
    expect(d.routes).toEqual({ added: ['admin.localhost'], removed: [], changed: ['shop.localhost'] });
    expect(Object.isFrozen(d)).toBe(true);
  });

  it('a policy rule change is a changed policy', () => {
    const next = editedExample((d) => {
      d.policies[0].spec.rules[0].to[0].methods = ['GET'];
    });
    expect(diffModels(base, next).policies.changed).toEqual(['shop/api-allow-web-get']);
  });

  it('a trust domain change is flagged (every identity changes with it)', () => {
    const next = editedExample((d) => {
      d.trustDomain = 'example.org';
      for (const p of d.policies) p.spec.rules[0].from[0].identities = p.spec.rules[0].from[0].identities.map((s: string) => s.replace('cluster.local', 'example.org'));
    });
    const d = diffModels(base, next);
    expect(d.trustDomainChanged).toBe(true);
    expect(d.workloads.changed).toHaveLength(4);
    expect(next.workloads[0].identity).toBe('spiffe://example.org/ns/shop/sa/web');
  });

  it('from the empty model everything is added', () => {
    const d = diffModels(emptyModel('cluster.local'), base);
    expect(d.workloads.added).toEqual(['shop/api-1', 'shop/api-2', 'shop/web-1', 'shop/web-2']);
    expect(d.nodes.added).toEqual(['node-a', 'node-b']);
  });
});
