import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../core/identity/index.js';
import { modelAuthorizer } from './authorizer.js';
import { EXAMPLE_WARD_YAML } from './example.js';
import { parseWardYaml } from './ward-yaml.js';
import { editedExample } from '../test/helpers/mesh.js';

const TD = 'cluster.local';
const WEB = SpiffeId.workload(TD, 'shop', 'web');
const API = SpiffeId.workload(TD, 'shop', 'api');
const node = (n: string, td = TD) => SpiffeId.node(td, n);


describe('modelAuthorizer', () => {
  it('lets a node obtain exactly the identities of workloads declared on it', () => {
    const model = editedExample((d) => {
      // api runs on node-b only.
      d.workloads = d.workloads.filter((w: { name: string }) => w.name !== 'api-1');
    });
    const a = modelAuthorizer(() => model);
    expect(a.mayObtain(node('node-a'), WEB)).toBe(true);
    expect(a.mayObtain(node('node-b'), WEB)).toBe(true);
    expect(a.mayObtain(node('node-a'), API)).toBe(false);
    expect(a.mayObtain(node('node-b'), API)).toBe(true);
    // Undeclared identity, undeclared node, a foreign trust domain on either side.
    expect(a.mayObtain(node('node-a'), SpiffeId.workload(TD, 'shop', 'cart'))).toBe(false);
    expect(a.mayObtain(node('node-c'), WEB)).toBe(false);
    expect(a.mayObtain(node('node-a', 'other.org'), WEB)).toBe(false);
    expect(a.mayObtain(node('node-a'), SpiffeId.workload('other.org', 'shop', 'web'))).toBe(false);
    // A workload identity is not a node.
    expect(a.mayObtain(WEB, WEB)).toBe(false);
  });

  it('lets a declared node renew itself, nobody else', () => {
    const a = modelAuthorizer(() => parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml'));
    expect(a.mayRenewNode(node('node-a'))).toBe(true);
    expect(a.mayRenewNode(node('node-c'))).toBe(false);
    expect(a.mayRenewNode(node('node-a', 'other.org'))).toBe(false);
    expect(a.mayRenewNode(WEB)).toBe(false);
  });

  it('answers from the current model: moving a workload or removing a node revokes at once', () => {
    let model = parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml');
    const a = modelAuthorizer(() => model);
    expect(a.mayObtain(node('node-a'), API)).toBe(true);
    model = editedExample((d) => {
      for (const w of d.workloads) if (w.name === 'api-1') w.node = 'node-b';
    });
    expect(a.mayObtain(node('node-a'), API)).toBe(false);
    expect(a.mayObtain(node('node-b'), API)).toBe(true);
    model = editedExample((d) => {
      d.nodes = d.nodes.filter((n: { name: string }) => n.name !== 'node-b');
      d.workloads = d.workloads.filter((w: { node: string }) => w.node !== 'node-b');
    });
    expect(a.mayRenewNode(node('node-b'))).toBe(false);
    expect(a.mayObtain(node('node-b'), API)).toBe(false);
    expect(a.mayRenewNode(node('node-a'))).toBe(true);
  });
});

describe('modelAuthorizer.mayObtainServerName (internal-name certificates for the ingress)', () => {
  const INGRESS = SpiffeId.ingress(TD);
  const withRoutes = (hosts: string[]) =>
    editedExample((d) => {
      d.ingress.routes = hosts.map((host) => ({ host, paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] }));
    });

  it('lets the ingress of the trust domain obtain exactly the route hosts, a wildcard host only as that wildcard', () => {
    const a = modelAuthorizer(() => withRoutes(['shop.localhost', '*.apps.localhost', 'api.internal.example']));
    expect(a.mayObtainServerName(INGRESS, 'shop.localhost')).toBe(true);
    expect(a.mayObtainServerName(INGRESS, '*.apps.localhost')).toBe(true);
    expect(a.mayObtainServerName(INGRESS, 'api.internal.example')).toBe(true);
    // A name under a wildcard route is not the wildcard; nor are parents, other cases, trailing dots, other names.
    for (const name of ['x.apps.localhost', 'apps.localhost', '*.localhost', 'SHOP.localhost', 'shop.localhost.', 'localhost', 'www.shop.localhost', 'bank.example.com', '']) {
      expect(a.mayObtainServerName(INGRESS, name), name).toBe(false);
    }
  });

  it('answers only the ingress of the model\'s trust domain, never a node, a workload or a foreign ingress', () => {
    const a = modelAuthorizer(() => withRoutes(['shop.localhost']));
    expect(a.mayObtainServerName(INGRESS, 'shop.localhost')).toBe(true);
    expect(a.mayObtainServerName(SpiffeId.ingress('other.org'), 'shop.localhost')).toBe(false);
    expect(a.mayObtainServerName(node('node-a'), 'shop.localhost')).toBe(false);
    expect(a.mayObtainServerName(WEB, 'shop.localhost')).toBe(false);
    // Same namespace as the ingress, another service account; the ingress's account in another namespace.
    expect(a.mayObtainServerName(SpiffeId.workload(TD, 'ward-system', 'web'), 'shop.localhost')).toBe(false);
    expect(a.mayObtainServerName(SpiffeId.workload(TD, 'shop', 'ward-ingress'), 'shop.localhost')).toBe(false);
    expect(a.mayObtainServerName(SpiffeId.parse(`spiffe://${TD}/ward/ca`), 'shop.localhost')).toBe(false);
  });

  it('answers from the current model: removing a route revokes at once, adding one grants', () => {
    let model = parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml');
    const a = modelAuthorizer(() => model);
    // The example's own route host.
    expect(a.mayObtainServerName(INGRESS, 'shop.localhost')).toBe(true);
    expect(a.mayObtainServerName(INGRESS, 'admin.localhost')).toBe(false);
    model = withRoutes(['admin.localhost']);
    expect(a.mayObtainServerName(INGRESS, 'shop.localhost')).toBe(false);
    expect(a.mayObtainServerName(INGRESS, 'admin.localhost')).toBe(true);
    model = editedExample((d) => {
      delete d.ingress;
    });
    expect(model.routes).toEqual([]);
    expect(a.mayObtainServerName(INGRESS, 'admin.localhost')).toBe(false);
    expect(a.mayObtainServerName(INGRESS, 'shop.localhost')).toBe(false);
  });
});
