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
