import { describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { isWardError } from '../core/errors.js';
import { EXAMPLE_WARD_YAML } from './example.js';
import { ConfigInvalidError, parseWardYaml, WARD_YAML_LIMITS, type ConfigIssue } from './ward-yaml.js';

type Doc = Record<string, any>;

/** The example as plain data, to mutate per case. */
function example(): Doc {
  return parse(EXAMPLE_WARD_YAML) as Doc;
}

function problemsOf(text: string, file = 'ward.yaml'): ConfigInvalidError {
  try {
    parseWardYaml(text, file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigInvalidError);
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    return err as ConfigInvalidError;
  }
  throw new Error('expected the document to be refused');
}

function problemsAfter(mutate: (d: Doc) => void): readonly ConfigIssue[] {
  const d = example();
  mutate(d);
  return problemsOf(stringify(d)).issues;
}

describe('parseWardYaml: the example mesh', () => {
  const m = parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml');

  it('reads two nodes, four workloads, two services, two policies, one route', () => {
    expect(m.trustDomain).toBe('cluster.local');
    expect(m.nodes).toEqual([
      { name: 'node-a', address: '127.0.10.1', zone: 'zone-a' },
      { name: 'node-b', address: '127.0.10.2', zone: 'zone-b' },
    ]);
    expect(m.workloads.map((w) => `${w.namespace}/${w.name}@${w.node}`)).toEqual([
      'shop/web-1@node-a',
      'shop/web-2@node-b',
      'shop/api-1@node-a',
      'shop/api-2@node-b',
    ]);
    expect(m.services.map((s) => s.name)).toEqual(['web', 'api']);
    expect(m.services[1]).toEqual({
      name: 'api',
      namespace: 'shop',
      ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }],
      selector: { app: 'api' },
    });
    expect(m.policies.map((p) => `${p.metadata.namespace}/${p.metadata.name}:${p.spec.action}`)).toEqual([
      'shop/api-allow-web-get:ALLOW',
      'shop/web-allow-ingress:ALLOW',
    ]);
    expect(m.routes).toEqual([{ host: 'shop.localhost', paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] }]);
  });

  it('derives each identity from trust domain, namespace and service account', () => {
    expect(m.workloads.map((w) => w.identity)).toEqual([
      'spiffe://cluster.local/ns/shop/sa/web',
      'spiffe://cluster.local/ns/shop/sa/web',
      'spiffe://cluster.local/ns/shop/sa/api',
      'spiffe://cluster.local/ns/shop/sa/api',
    ]);
  });

  it('is deep-frozen', () => {
    expect(Object.isFrozen(m)).toBe(true);
    expect(Object.isFrozen(m.workloads[0].labels)).toBe(true);
    expect(() => {
      (m.workloads[0].ports as number[]).push(1);
    }).toThrow(TypeError);
  });

  it('an identity cannot be declared', () => {
    const issues = problemsAfter((d) => {
      d.workloads[0].identity = 'spiffe://cluster.local/ns/shop/sa/api';
    });
    expect(issues).toEqual([expect.objectContaining({ path: 'workloads[0].identity', reason: expect.stringMatching(/^unknown key/) })]);
  });
});

describe('parseWardYaml: defaults', () => {
  it('trust domain, namespace, targetPort, protocol and pathType', () => {
    const m = parseWardYaml(
      `
apiVersion: ward.dev/v1alpha1
kind: Mesh
nodes: [{name: n1, address: 127.0.0.2}]
workloads: [{name: w, serviceAccount: sa, node: n1, address: "::1", ports: [80]}]
services: [{name: s, ports: [{port: 80}], selector: {app: x}}]
ingress: {routes: [{host: "*.example.com", paths: [{path: /a, service: s.default, port: 80}]}]}
`,
      'w.yaml',
    );
    expect(m.trustDomain).toBe('cluster.local');
    expect(m.workloads[0]).toEqual({
      name: 'w',
      namespace: 'default',
      serviceAccount: 'sa',
      node: 'n1',
      address: '::1',
      ports: [80],
      labels: {},
      identity: 'spiffe://cluster.local/ns/default/sa/sa',
    });
    expect(m.services[0].ports).toEqual([{ port: 80, targetPort: 80, protocol: 'http' }]);
    expect(m.routes[0].paths[0].pathType).toBe('Prefix');
    expect(m.policies).toEqual([]);
  });

  it('empty list keys mean none', () => {
    const m = parseWardYaml('apiVersion: ward.dev/v1alpha1\nkind: Mesh\nnodes: [{name: n, address: 127.0.0.9}]\nworkloads:\nservices:\n', 'w.yaml');
    expect(m.workloads).toEqual([]);
    expect(m.services).toEqual([]);
  });
});

describe('parseWardYaml: every problem names its exact path', () => {
  const cases: [string, (d: Doc) => void, string, RegExp][] = [
    ['apiVersion', (d) => (d.apiVersion = 'ward.dev/v1'), 'apiVersion', /must be "ward\.dev\/v1alpha1"/],
    ['kind', (d) => (d.kind = 'Cluster'), 'kind', /must be "Mesh"/],
    ['missing nodes', (d) => delete d.nodes, 'nodes', /is required/],
    ['trust domain uppercase', (d) => (d.trustDomain = 'Cluster.local'), 'trustDomain', /lowercase/],
    ['trust domain with port', (d) => (d.trustDomain = 'example.org:443'), 'trustDomain', /port/],
    ['node name not a DNS label', (d) => (d.nodes[1].name = 'Node_B'), 'nodes[1].name', /DNS-1123 label/],
    ['node address not an IP', (d) => (d.nodes[0].address = 'localhost'), 'nodes[0].address', /not an IP address/],
    ['node address off loopback', (d) => (d.nodes[0].address = '10.0.0.1'), 'nodes[0].address', /127\.0\.0\.0\/8/],
    ['node address IPv6', (d) => (d.nodes[0].address = '::1'), 'nodes[0].address', /IPv4 address in 127/],
    ['node address shared', (d) => (d.nodes[1].address = '127.0.10.1'), 'nodes[1].address', /already used by nodes\[0\]/],
    ['duplicate node', (d) => (d.nodes[1].name = 'node-a'), 'nodes[1].name', /duplicate node name "node-a"/],
    ['node zone', (d) => (d.nodes[0].zone = 'Zone A'), 'nodes[0].zone', /DNS-1123 label/],
    ['workload name', (d) => (d.workloads[2].name = 'api.1'), 'workloads[2].name', /DNS-1123 label/],
    ['workload namespace', (d) => (d.workloads[2].namespace = '-shop'), 'workloads[2].namespace', /DNS-1123 label/],
    ['workload service account', (d) => delete d.workloads[1].serviceAccount, 'workloads[1].serviceAccount', /is required/],
    ['workload on unknown node', (d) => (d.workloads[3].node = 'node-c'), 'workloads[3].node', /node "node-c" is not declared in nodes/],
    ['workload port zero', (d) => (d.workloads[2].ports = [9090, 0]), 'workloads[2].ports[1]', /1\.\.65535/],
    ['workload port too big', (d) => (d.workloads[2].ports = [65536]), 'workloads[2].ports[0]', /1\.\.65535/],
    ['workload port as string', (d) => (d.workloads[2].ports = ['9090']), 'workloads[2].ports[0]', /got the string "9090"/],
    ['workload port fraction', (d) => (d.workloads[2].ports = [90.5]), 'workloads[2].ports[0]', /1\.\.65535/],
    ['workload duplicate port', (d) => (d.workloads[2].ports = [9090, 9090]), 'workloads[2].ports[1]', /duplicate port 9090/],
    [
      'two workloads on one address:port',
      (d) => (d.workloads[3].address = '127.0.30.1'),
      'workloads[3].ports[0]',
      /127\.0\.30\.1:9090 is already taken by workloads\[2\]\.ports\[0\]/,
    ],
    ['workload address off loopback', (d) => (d.workloads[0].address = '192.168.1.5'), 'workloads[0].address', /loopback/],
    ['workload address with leading zero', (d) => (d.workloads[0].address = '127.0.20.01'), 'workloads[0].address', /not an IP address/],
    ['duplicate workload', (d) => (d.workloads[1].name = 'web-1'), 'workloads[1].name', /duplicate workload "web-1" in namespace "shop" \(also workloads\[0\]\)/],
    ['label value not a string', (d) => (d.workloads[0].labels = { app: 'web', version: 2 }), 'workloads[0].labels.version', /must be a string.*quote it/],
    ['label key', (d) => (d.workloads[0].labels = { 'bad key': 'x' }), 'workloads[0].labels.bad key', /label key/],
    ['label value', (d) => (d.workloads[0].labels = { app: 'no spaces' }), 'workloads[0].labels.app', /label value/],
    ['command not a list', (d) => (d.workloads[0].command = 'node app.js'), 'workloads[0].command', /must be a list/],
    ['command arg', (d) => (d.workloads[0].command = ['node', 3]), 'workloads[0].command[1]', /must be a string/],
    ['service selector empty', (d) => (d.services[0].selector = {}), 'services[0].selector', /must not be empty/],
    ['service selector missing', (d) => delete d.services[1].selector, 'services[1].selector', /is required/],
    ['service without ports', (d) => (d.services[1].ports = []), 'services[1].ports', /at least one port/],
    ['service port', (d) => (d.services[1].ports[0].port = 0), 'services[1].ports[0].port', /1\.\.65535/],
    ['service protocol', (d) => (d.services[1].ports[0].protocol = 'grpc'), 'services[1].ports[0].protocol', /one of http, tcp/],
    [
      'service duplicate port',
      (d) => d.services[1].ports.push({ name: 'other', port: 8080, targetPort: 9090 }),
      'services[1].ports[1].port',
      /duplicate port 8080/,
    ],
    [
      'service target port no selected workload listens on',
      (d) => (d.services[1].ports[0].targetPort = 9999),
      'services[1].ports[0].targetPort',
      /workload shop\/api-1 \(and 1 more\) selected by this service does not declare port 9999/,
    ],
    ['duplicate service', (d) => (d.services[1].name = 'web'), 'services[1].name', /duplicate service "web" in namespace "shop"/],
    ['route to unknown service', (d) => (d.ingress.routes[0].paths[0].service = 'shop.web'), 'ingress.routes[0].paths[0].service', /service "shop\.web" is not declared/],
    ['route service without namespace', (d) => (d.ingress.routes[0].paths[0].service = 'web'), 'ingress.routes[0].paths[0].service', /<service>\.<namespace>/],
    ['route to a port the service lacks', (d) => (d.ingress.routes[0].paths[0].port = 8080), 'ingress.routes[0].paths[0].port', /does not expose port 8080 \(it exposes 80\)/],
    [
      'route to a tcp port',
      (d) => (d.services[0].ports[0].protocol = 'tcp'),
      'ingress.routes[0].paths[0].port',
      /port 80 of service web\.shop is tcp; ingress routes need an http port/,
    ],
    ['route host', (d) => (d.ingress.routes[0].host = 'Shop.Example.com'), 'ingress.routes[0].host', /lowercase DNS name/],
    ['route host IP', (d) => (d.ingress.routes[0].host = '127.0.0.1'), 'ingress.routes[0].host', /IP address/],
    ['route host wildcard inside', (d) => (d.ingress.routes[0].host = 'a.*.com'), 'ingress.routes[0].host', /wildcard/],
    ['route path', (d) => (d.ingress.routes[0].paths[0].path = 'api'), 'ingress.routes[0].paths[0].path', /must start with "\/"/],
    ['route path not in normal form', (d) => (d.ingress.routes[0].paths[0].path = '/a//b/../c'), 'ingress.routes[0].paths[0].path', /not in normal form \(write "\/a\/c"\)/],
    ['route path with an encoded slash', (d) => (d.ingress.routes[0].paths[0].path = '/a%2Fb'), 'ingress.routes[0].paths[0].path', /not a valid path \(encoded-slash\)/],
    ['route pathType', (d) => (d.ingress.routes[0].paths[0].pathType = 'Regex'), 'ingress.routes[0].paths[0].pathType', /Exact or Prefix/],
    ['route duplicate host', (d) => d.ingress.routes.push(structuredClone(d.ingress.routes[0])), 'ingress.routes[1].host', /duplicate host "shop\.localhost"/],
    ['policy apiVersion', (d) => (d.policies[0].apiVersion = 'v1'), 'policies[0].apiVersion', /./],
    ['policy action', (d) => (d.policies[1].spec.action = 'PERMIT'), 'policies[1].spec.action', /./],
    ['policy unknown key', (d) => (d.policies[0].spec.rules[0].form = []), 'policies[0].spec.rules[0].form', /unknown/],
    ['duplicate policy', (d) => (d.policies[1].metadata.name = 'api-allow-web-get'), 'policies[1].metadata', /duplicate policy shop\/api-allow-web-get/],
  ];

  it.each(cases)('%s', (_name, mutate, path, reason) => {
    const issues = problemsAfter(mutate);
    const hit = issues.find((i) => i.path === path);
    expect(hit, `no problem at ${path}; got:\n${issues.map((i) => `${i.path}: ${i.reason}`).join('\n')}`).toBeDefined();
    expect(hit!.reason).toMatch(reason);
    expect(hit!.file).toBe('ward.yaml');
  });

  it('lists the problem as `file: path: reason` with the line of the offending node', () => {
    const text = EXAMPLE_WARD_YAML.replace('address: 127.0.30.1, ports: [9090]', 'address: 127.0.30.1, ports: [9090, 70000]');
    const err = problemsOf(text, 'conf/ward.yaml');
    const line = text.split('\n').findIndex((l) => l.includes('70000')) + 1;
    expect(err.issues).toEqual([
      { file: 'conf/ward.yaml', path: 'workloads[2].ports[1]', reason: 'must be a port number 1..65535, got number 70000', line, column: expect.any(Number) },
    ]);
    expect(err.message).toContain(`conf/ward.yaml: workloads[2].ports[1]: must be a port number 1..65535, got number 70000 (line ${line})`);
  });

  it('collects every problem in one error, not just the first', () => {
    const err = problemsOf(
      stringify(
        (() => {
          const d = example();
          d.trustDomain = 'BAD';
          d.nodes[0].address = 'nope';
          d.workloads[1].ports = [0];
          d.services[0].selector = {};
          d.policies[0].spec.action = 'MAYBE';
          return d;
        })(),
      ),
    );
    expect(err.issues.map((i) => i.path)).toEqual(
      expect.arrayContaining(['trustDomain', 'nodes[0].address', 'workloads[1].ports[0]', 'services[0].selector', 'policies[0].spec.action']),
    );
    expect(err.total).toBe(err.issues.length);
    expect(err.message.split('\n')[0]).toBe(`ward.yaml: invalid configuration (${err.total} problems):`);
  });
});

describe('parseWardYaml: unknown keys', () => {
  it.each([
    ['top level', (d: Doc) => (d.node = []), 'node'],
    ['node', (d: Doc) => (d.nodes[0].region = 'eu'), 'nodes[0].region'],
    ['workload (misspelt)', (d: Doc) => (d.workloads[0].serviceaccount = 'web'), 'workloads[0].serviceaccount'],
    ['service', (d: Doc) => (d.services[0].type = 'ClusterIP'), 'services[0].type'],
    ['service port', (d: Doc) => (d.services[0].ports[0].appProtocol = 'http'), 'services[0].ports[0].appProtocol'],
    ['ingress', (d: Doc) => (d.ingress.tls = []), 'ingress.tls'],
    ['route', (d: Doc) => (d.ingress.routes[0].tls = true), 'ingress.routes[0].tls'],
    ['route path', (d: Doc) => (d.ingress.routes[0].paths[0].backend = {}), 'ingress.routes[0].paths[0].backend'],
    ['policy metadata', (d: Doc) => (d.policies[0].metadata.nmespace = 'shop'), 'policies[0].metadata.nmespace'],
  ])('%s', (_name, mutate, path) => {
    const issues = problemsAfter(mutate);
    expect(issues.find((i) => i.path === path)?.reason ?? issues).toMatch(/unknown key/);
  });

  it('a key with no value is an error, not a silent default', () => {
    const issues = problemsAfter((d) => (d.nodes[0].zone = null));
    expect(issues).toEqual([expect.objectContaining({ path: 'nodes[0].zone', reason: expect.stringMatching(/has no value/) })]);
  });
});

describe('parseWardYaml: YAML syntax and bounds', () => {
  it('a syntax error gives line and column', () => {
    const err = problemsOf('apiVersion: ward.dev/v1alpha1\nkind: Mesh\nnodes: [{name: a, address: 127.0.0.2}\nworkloads: []\n', 'w.yaml');
    expect(err.issues[0]).toMatchObject({ file: 'w.yaml', path: '', line: 4, column: 1 });
    expect(err.message).toMatch(/^ {2}w\.yaml:4:1: YAML: /m);
  });

  it('a duplicate key is a syntax error with its position', () => {
    const err = problemsOf('apiVersion: ward.dev/v1alpha1\nkind: Mesh\nkind: Mesh\nnodes: []\n');
    expect(err.issues[0]).toMatchObject({ line: 3, column: 1, reason: expect.stringMatching(/unique/) });
  });

  it('several documents in one file are refused', () => {
    expect(problemsOf('kind: Mesh\n---\nkind: Mesh\n').issues[0].reason).toMatch(/multiple documents/);
  });

  it('an empty file or a non-mapping document is refused', () => {
    expect(problemsOf('').issues[0]).toMatchObject({ path: '(document)', reason: expect.stringMatching(/empty/) });
    expect(problemsOf('- a\n- b\n').issues[0]).toMatchObject({ path: '(document)', reason: 'must be a mapping, got a list' });
  });

  it('refuses a file over 1 MiB before parsing it', () => {
    const text = `# ${'x'.repeat(WARD_YAML_LIMITS.maxBytes)}\n`;
    expect(problemsOf(text).issues[0].reason).toMatch(/at most 1048576 \(1 MiB\)/);
  });

  it('refuses more than 10,000 workloads with one clear error', () => {
    const lines = ['apiVersion: ward.dev/v1alpha1', 'kind: Mesh', 'nodes: [{name: n, address: 127.0.0.2}]', 'workloads:'];
    for (let i = 0; i <= WARD_YAML_LIMITS.workloads; i++) lines.push('- {}');
    const err = problemsOf(lines.join('\n'));
    expect(err.issues).toEqual([expect.objectContaining({ path: 'workloads', reason: 'has 10001 workloads; at most 10000 are allowed' })]);
  });

  it('defuses alias expansion ("billion laughs")', () => {
    const lines = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 0; i < 8; i++) {
      const prev = String.fromCharCode(97 + i);
      const cur = String.fromCharCode(98 + i);
      lines.push(`${cur}: &${cur} [${Array(10).fill(`*${prev}`).join(', ')}]`);
    }
    const err = problemsOf(lines.join('\n'));
    expect(err.issues[0].reason).toMatch(/alias/i);
  });

  it('caps the message but keeps the count', () => {
    const d = example();
    d.workloads = Array.from({ length: 200 }, (_, i) => ({ name: `w${i}`, serviceAccount: 'sa', node: 'nowhere', address: `127.0.40.${i}` }));
    const err = problemsOf(stringify(d));
    expect(err.total).toBeGreaterThanOrEqual(200);
    expect(err.message).toMatch(/… and \d+ more$/);
  });
});
