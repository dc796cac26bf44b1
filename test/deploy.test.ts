/**
 * deploy/ (the Kustomize base), the Dockerfile and `ward probe`, checked without a cluster:
 *
 * (a) `kubectl kustomize deploy/` renders (the real kubectl: its Kustomize, its YAML);
 * (b) every rendered object against the Kubernetes API types of @kubernetes/client-node (the
 *     generated models' attribute maps, and the required properties of their declarations):
 *     an unknown field, a value of the wrong JSON type or a missing required field fails;
 * (c) RBAC grants exactly the rows of discovery/kube-api-usage.ts to each component's
 *     ServiceAccount, at their scope (cluster, ward-system, or ward-ca for the CA Secret), and
 *     nothing to ward-proxy;
 * (d) the CRD's schema accepts every AuthorizationPolicy the docs show (and Ward's own parser
 *     does too), and refuses malformed ones that Ward's parser refuses;
 * (e) every container: security context, requests and limits, probes that can reach a loopback
 *     admin port, pinned image; the component flags parsed by the commands' own option lists, ports
 *     in step with the CLI;
 * (f) the Dockerfile (stages, non-root user, entrypoint) and the projected token (audience ward).
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { HTTP_METHODS, POLICY_ACTIONS, parsePolicy } from '../core/policy/index.js';
import { EXAMPLE_WARD_YAML } from '../discovery/example.js';
import { KUBE_API_USAGE, type KubeComponent } from '../discovery/kube-api-usage.js';
import { DEFAULT_ADMIN_PORT, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT } from '../proxy/index.js';
import { parseCommandArgs, type Command } from '../cli/command.js';
import { controlCommands } from '../cli/control.js';
import { ingressCommands } from '../cli/ingress.js';
import { proxyCommands } from '../cli/proxy.js';
import { BUNDLE_CONFIGMAP } from '../cli/kube.js';
import { probeUrl } from '../cli/probe.js';
import { REPO_ROOT, ward } from './helpers/cli.js';
import { validateAgainstSchema } from './helpers/openapi-schema.js';

const run = promisify(execFile);

type Json = Record<string, unknown>;
interface K8sObject extends Json {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> } & Json;
}

const NAMESPACE = 'ward-system';
/** The CA Secret's own namespace (docs/kubernetes.md): nothing but the control plane's access to it. */
const CA_NAMESPACE = 'ward-ca';
const CA_SECRET = `${CA_NAMESPACE}/ward-ca`;
const TOKEN_DIR = '/var/run/secrets/ward';
const TOKEN_FILE = `${TOKEN_DIR}/token`;
const IMAGE_ENTRYPOINT = ['node', '/app/dist/cli/main.js'];

function read(rel: string): string {
  return readFileSync(path.join(REPO_ROOT, rel), 'utf8');
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ------------------------------------------------------------------------------------------------
// (a) the render

let objects: K8sObject[] = [];
let renderStderr = '';

beforeAll(async () => {
  let out: { stdout: string; stderr: string };
  try {
    out = await run('kubectl', ['kustomize', path.join(REPO_ROOT, 'deploy')], { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('kubectl is not installed: test/deploy.test.ts renders deploy/ with `kubectl kustomize` (kubectl 1.27 or later)');
    throw new Error(`kubectl kustomize deploy/ failed: ${e.stderr ?? e.message}`);
  }
  renderStderr = out.stderr;
  objects = parseAllDocuments(out.stdout).map((d) => {
    if (d.errors.length > 0) throw new Error(`rendered YAML: ${d.errors[0].message}`);
    return d.toJS() as K8sObject;
  });
});

function find(kind: string, name: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} in the render`);
  return o;
}

function podSpec(o: K8sObject): Json {
  return ((o.spec as Json).template as Json).spec as Json;
}

function containersOf(o: K8sObject): Json[] {
  const s = podSpec(o);
  return [...((s.initContainers as Json[] | undefined) ?? []), ...((s.containers as Json[] | undefined) ?? [])];
}

const WORKLOAD_KINDS = new Set(['Deployment', 'DaemonSet', 'StatefulSet', 'Job', 'CronJob', 'ReplicaSet', 'Pod']);

describe('(a) kubectl kustomize deploy/', () => {
  it('renders cleanly: the namespaces, the CRD, the service accounts, RBAC and the three components', () => {
    expect(renderStderr).toBe('');
    const inventory = objects.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`).sort();
    expect(inventory).toEqual(
      [
        'Namespace//ward-system',
        'Namespace//ward-ca',
        'CustomResourceDefinition//authorizationpolicies.security.ward.dev',
        'ServiceAccount/ward-system/ward-control',
        'ServiceAccount/ward-system/ward-proxy',
        'ServiceAccount/ward-system/ward-ingress',
        'ClusterRole//ward-control',
        'ClusterRoleBinding//ward-control',
        'Role/ward-system/ward-control',
        'RoleBinding/ward-system/ward-control',
        'Role/ward-ca/ward-control',
        'RoleBinding/ward-ca/ward-control',
        'Role/ward-system/ward-ingress',
        'RoleBinding/ward-system/ward-ingress',
        'Deployment/ward-system/ward-control',
        'Service/ward-system/ward-control',
        'PodDisruptionBudget/ward-system/ward-control',
        'DaemonSet/ward-system/ward-proxy',
        'Deployment/ward-system/ward-ingress',
        'Service/ward-system/ward-ingress',
        'PodDisruptionBudget/ward-system/ward-ingress',
        'IngressClass//ward',
      ].sort(),
    );
  });
});

// ------------------------------------------------------------------------------------------------
// (b) the Kubernetes API types

interface Attribute {
  name: string;
  baseName: string;
  type: string;
  format: string;
}
interface Model {
  getAttributeTypeMap(): Attribute[];
}
const MODELS = k8s as unknown as Record<string, Model | undefined>;
const MODELS_DIR = path.join(path.dirname(createRequire(import.meta.url).resolve('@kubernetes/client-node')), 'gen', 'models');

/** apiVersion/kind → the client's model for it. Anything else in the render is a failure. */
const KIND_MODELS: Record<string, string> = {
  'v1/Namespace': 'V1Namespace',
  'v1/ServiceAccount': 'V1ServiceAccount',
  'v1/Service': 'V1Service',
  'apps/v1/Deployment': 'V1Deployment',
  'apps/v1/DaemonSet': 'V1DaemonSet',
  'rbac.authorization.k8s.io/v1/ClusterRole': 'V1ClusterRole',
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': 'V1ClusterRoleBinding',
  'rbac.authorization.k8s.io/v1/Role': 'V1Role',
  'rbac.authorization.k8s.io/v1/RoleBinding': 'V1RoleBinding',
  'policy/v1/PodDisruptionBudget': 'V1PodDisruptionBudget',
  'networking.k8s.io/v1/IngressClass': 'V1IngressClass',
  'apiextensions.k8s.io/v1/CustomResourceDefinition': 'V1CustomResourceDefinition',
};
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'IngressClass', 'CustomResourceDefinition']);

const requiredCache = new Map<string, Set<string>>();
/**
 * The JSON names of a model's required properties. The generated attribute maps do not say which
 * are required; the generated declarations do (`'containers': Array<V1Container>;` without `?`).
 */
function requiredFields(model: string): Set<string> {
  let r = requiredCache.get(model);
  if (r === undefined) {
    const dts = readFileSync(path.join(MODELS_DIR, `${model}.d.ts`), 'utf8');
    const body = dts.slice(dts.indexOf(`export declare class ${model}`));
    const attrs = MODELS[model]!.getAttributeTypeMap();
    r = new Set<string>();
    for (const m of body.matchAll(/^ {4}'([^']+)'(\?)?: /gm)) {
      if (m[2] === '?') continue;
      const a = attrs.find((x) => x.name === m[1]);
      if (!a) throw new Error(`BUG: ${model}.d.ts declares ${m[1]}, which its attribute map lacks`);
      r.add(a.baseName);
    }
    requiredCache.set(model, r);
  }
  return r;
}

/**
 * Fields the generator types as `any` that have a schema in the API: a JSON schema's `items` and
 * `additionalProperties` are schemas (or, for additionalProperties, a boolean).
 */
function special(model: string, field: string): ((v: unknown, at: string, out: string[]) => void) | undefined {
  if (model !== 'V1JSONSchemaProps') return undefined;
  if (field === 'items') return (v, at, out) => checkType(v, 'V1JSONSchemaProps', '', at, out);
  if (field === 'additionalProperties') return (v, at, out) => (typeof v === 'boolean' ? undefined : checkType(v, 'V1JSONSchemaProps', '', at, out));
  return undefined;
}

const INTEGER_FORMATS = new Set(['int32', 'int64']);

/** Walks `v` as the client type `type`; appends `<path>: <problem>` lines to `out`. */
function checkType(v: unknown, type: string, format: string, at: string, out: string[]): void {
  const wrong = (want: string): void => void out.push(`${at}: must be ${want}, got ${JSON.stringify(v)}`);
  if (v === null || v === undefined) return void out.push(`${at}: null`);
  if (type.startsWith('Array<')) {
    if (!Array.isArray(v)) return wrong('a list');
    const item = type.slice('Array<'.length, -1);
    v.forEach((x, i) => checkType(x, item, format, `${at}[${i}]`, out));
    return;
  }
  if (type.startsWith('{ [key: string]: ')) {
    if (!isObject(v)) return wrong('a map');
    const item = type.slice('{ [key: string]: '.length, -'; }'.length);
    for (const [k, x] of Object.entries(v)) checkType(x, item, format, `${at}.${k}`, out);
    return;
  }
  switch (type) {
    case 'any':
      return;
    case 'string':
      return typeof v === 'string' ? undefined : wrong('a string');
    case 'boolean':
      return typeof v === 'boolean' ? undefined : wrong('a boolean');
    case 'number':
      if (INTEGER_FORMATS.has(format)) return Number.isInteger(v) ? undefined : wrong(`an integer (${format})`);
      return typeof v === 'number' && Number.isFinite(v) ? undefined : wrong('a number');
    case 'Date':
      return typeof v === 'string' && !Number.isNaN(Date.parse(v)) ? undefined : wrong('an RFC 3339 time');
    case 'IntOrString':
      return typeof v === 'string' || Number.isInteger(v) ? undefined : wrong('an integer or a string');
  }
  const model = MODELS[type];
  if (model === undefined || typeof model.getAttributeTypeMap !== 'function') return void out.push(`${at}: BUG: no client model ${type}`);
  if (!isObject(v)) return wrong(`an object (${type})`);
  const attrs = model.getAttributeTypeMap();
  for (const [k, x] of Object.entries(v)) {
    const a = attrs.find((y) => y.baseName === k);
    if (!a) {
      out.push(`${at}.${k}: unknown field (${type} has ${attrs.map((y) => y.baseName).join(', ')})`);
      continue;
    }
    const s = special(type, k);
    if (s) s(x, `${at}.${k}`, out);
    else checkType(x, a.type, a.format, `${at}.${k}`, out);
  }
  for (const r of requiredFields(type)) if (!(r in v)) out.push(`${at}.${r}: required (${type})`);
}

/** Problems of one top-level object: the API types, plus what the API server requires of any object. */
function apiProblems(o: K8sObject): string[] {
  const where = `${o.kind}/${o.metadata?.name}`;
  const model = KIND_MODELS[`${o.apiVersion}/${o.kind}`];
  if (!model) return [`${where}: ${o.apiVersion} ${o.kind} is not a kind this test knows`];
  const out: string[] = [];
  checkType(o, model, '', where, out);
  if (typeof o.metadata?.name !== 'string' || o.metadata.name === '') out.push(`${where}.metadata.name: required`);
  if (CLUSTER_SCOPED.has(o.kind)) {
    if (o.metadata.namespace !== undefined) out.push(`${where}.metadata.namespace: a ${o.kind} has no namespace`);
  } else if (o.metadata.namespace === CA_NAMESPACE) {
    // The CA's namespace holds the CA Secret (created at run time) and the control plane's access to it.
    if (o.kind !== 'Role' && o.kind !== 'RoleBinding') out.push(`${where}.metadata.namespace: only the CA Secret's Role and RoleBinding belong in ${CA_NAMESPACE}`);
  } else if (o.metadata.namespace !== NAMESPACE) out.push(`${where}.metadata.namespace: must be ${NAMESPACE}`);
  if (WORKLOAD_KINDS.has(o.kind)) {
    for (const c of containersOf(o)) if (typeof c.image !== 'string' || c.image === '') out.push(`${where} container ${String(c.name)}: image is required`);
  }
  return out;
}

/** Every document of the ```yaml blocks of a Markdown file. */
function yamlInMarkdown(rel: string): { where: string; value: unknown }[] {
  const out: { where: string; value: unknown }[] = [];
  let block = 0;
  for (const m of read(rel).matchAll(/^```ya?ml\n([\s\S]*?)^```/gm)) {
    block++;
    parseAllDocuments(m[1]).forEach((d, i) => {
      if (d.errors.length > 0) throw new Error(`${rel} yaml block ${block}: ${d.errors[0].message}`);
      out.push({ where: `${rel} yaml block ${block} document ${i + 1}`, value: d.toJS() as unknown });
    });
  }
  return out;
}

describe('(b) every rendered object is a valid object of its Kubernetes API type', () => {
  it('so are the example manifests in deploy/README.md (workloads, services, Ingress)', () => {
    const examples = yamlInMarkdown('deploy/README.md').filter((e) => isObject(e.value) && typeof e.value.kind === 'string' && !['AuthorizationPolicy', 'Kustomization'].includes(e.value.kind)); // overlay snippets have no kind
    const kinds = examples.map((e) => (e.value as K8sObject).kind);
    for (const k of ['Namespace', 'ServiceAccount', 'Deployment', 'Service', 'Ingress']) expect(kinds).toContain(k);
    const problems: string[] = [];
    for (const { where, value } of examples) {
      const o = value as K8sObject;
      const models: Record<string, string> = { ...KIND_MODELS, 'networking.k8s.io/v1/Ingress': 'V1Ingress' };
      const model = models[`${o.apiVersion}/${o.kind}`];
      if (!model) problems.push(`${where}: unknown kind ${o.apiVersion} ${o.kind}`);
      else checkType(o, model, '', where, problems);
    }
    expect(problems).toEqual([]);
    // The example workload that calls others reaches its node proxy at the node IP (downward API).
    const web = examples.map((e) => e.value as K8sObject).find((o) => o.kind === 'Deployment' && o.metadata.name === 'web')!;
    const env = containersOf(web).flatMap((c) => (c.env as Json[] | undefined) ?? []);
    expect(env).toContainEqual({ name: 'HOST_IP', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } });
    expect(env).toContainEqual({ name: 'HTTP_PROXY', value: `http://$(HOST_IP):${DEFAULT_OUTBOUND_PORT}` });
    const ingress = examples.map((e) => e.value as K8sObject).find((o) => o.kind === 'Ingress')!;
    expect((ingress.spec as Json).ingressClassName).toBe('ward');
  });

  it('no unknown field, no value of the wrong JSON type, every required field present', () => {
    expect(objects.length).toBeGreaterThan(0);
    const problems = objects.flatMap(apiProblems);
    expect(problems).toEqual([]);
  });

  it('the check can fail: a misspelt field, a string for an integer, a missing container list or image', () => {
    const d = structuredClone(find('Deployment', 'ward-control'));
    const spec = d.spec as Json;
    spec.replicas = '1';
    (podSpec(d).containers as Json[])[0].imagePullPolcy = 'Always';
    delete (podSpec(d).containers as Json[])[0].image;
    ((podSpec(d).containers as Json[])[0].ports as Json[])[0].containerPort = 8443.5;
    const problems = apiProblems(d);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringContaining('Deployment/ward-control.spec.replicas: must be an integer (int32), got "1"'),
        expect.stringContaining('Deployment/ward-control.spec.template.spec.containers[0].imagePullPolcy: unknown field'),
        expect.stringContaining('container control: image is required'),
        expect.stringContaining('containers[0].ports[0].containerPort: must be an integer'),
      ]),
    );
    delete podSpec(d).containers;
    expect(apiProblems(d)).toContain('Deployment/ward-control.spec.template.spec.containers: required (V1PodSpec)');
    const crd = structuredClone(find('CustomResourceDefinition', 'authorizationpolicies.security.ward.dev'));
    const schema = openApiSchema(crd) as Json;
    ((schema.properties as Json).spec as Json).minItemz = 1;
    ((((schema.properties as Json).spec as Json).properties as Json).rules as Json).items = { type: 'object', properties: { from: { type: 7 } } };
    const crdProblems = apiProblems(crd);
    expect(crdProblems).toHaveLength(2);
    expect(crdProblems).toEqual(
      expect.arrayContaining([
        expect.stringContaining('.openAPIV3Schema.properties.spec.minItemz: unknown field'),
        expect.stringContaining('.openAPIV3Schema.properties.spec.properties.rules.items.properties.from.type: must be a string'),
      ]),
    );
  });
});

// ------------------------------------------------------------------------------------------------
// (c) RBAC

const SA_COMPONENT: Record<string, KubeComponent | 'proxy'> = { 'ward-control': 'control', 'ward-ingress': 'ingress', 'ward-proxy': 'proxy' };

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

/** Every (component, scope, group, resource, verb) the rendered bindings grant, one string each. */
function renderedGrants(all: K8sObject[]): { grants: string[]; problems: string[]; restricted: string[] } {
  const grants: string[] = [];
  const problems: string[] = [];
  const restricted: string[] = [];
  const roles = all.filter((o) => o.kind === 'ClusterRole' || o.kind === 'Role');
  const bindings = all.filter((o) => o.kind === 'ClusterRoleBinding' || o.kind === 'RoleBinding');
  const bound = new Set<string>();
  for (const b of bindings) {
    const ref = b.roleRef as { kind: string; name: string };
    // The scope names of discovery/kube-api-usage.ts: a RoleBinding grants in its own namespace.
    const scope = b.kind === 'ClusterRoleBinding' ? 'cluster' : b.metadata.namespace === NAMESPACE ? 'own-namespace' : b.metadata.namespace === CA_NAMESPACE ? 'ca-namespace' : undefined;
    if (scope === undefined) {
      problems.push(`RoleBinding ${b.metadata.namespace ?? ''}/${b.metadata.name} outside ${NAMESPACE} and ${CA_NAMESPACE}`);
      continue;
    }
    const role = roles.find((r) => r.kind === ref.kind && r.metadata.name === ref.name && (r.kind === 'ClusterRole' || r.metadata.namespace === b.metadata.namespace));
    if (!role) {
      problems.push(`${b.kind} ${b.metadata.name}: ${ref.kind} ${ref.name} is not in the render`);
      continue;
    }
    bound.add(`${role.kind}/${role.metadata.name}`);
    if (role.aggregationRule !== undefined) problems.push(`${role.kind} ${role.metadata.name}: aggregation grants what others add`);
    for (const s of (b.subjects as { kind: string; name: string; namespace?: string }[] | undefined) ?? []) {
      const component = SA_COMPONENT[s.name];
      if (s.kind !== 'ServiceAccount' || s.namespace !== NAMESPACE || component === undefined) {
        problems.push(`${b.kind} ${b.metadata.name}: subject ${s.kind} ${s.namespace ?? ''}/${s.name} is not a Ward ServiceAccount`);
        continue;
      }
      for (const rule of (role.rules as Rule[] | undefined) ?? []) {
        if (rule.nonResourceURLs) problems.push(`${role.metadata.name}: nonResourceURLs`);
        for (const g of rule.apiGroups ?? []) {
          for (const r of rule.resources ?? []) {
            for (const v of rule.verbs) {
              if ([g, r, v].some((x) => x.includes('*'))) problems.push(`${role.metadata.name}: wildcard in ${g}/${r} ${v}`);
              const key = `${component} ${scope} ${g || 'core'}/${r} ${v}`;
              grants.push(key);
              if (rule.resourceNames) restricted.push(`${key} [${rule.resourceNames.join(',')}]`);
            }
          }
        }
      }
    }
  }
  for (const r of roles) if (!bound.has(`${r.kind}/${r.metadata.name}`)) problems.push(`${r.kind} ${r.metadata.name} is bound to nobody`);
  return { grants: grants.sort(), problems, restricted: restricted.sort() };
}

const USAGE_GRANTS = KUBE_API_USAGE.flatMap((u) => u.verbs.map((v) => `${u.component} ${u.scope} ${u.group || 'core'}/${u.resource} ${v}`)).sort();

describe('(c) RBAC grants exactly discovery/kube-api-usage.ts', () => {
  it('each ServiceAccount gets exactly its rows, at their scope (ClusterRole for cluster, Role in ward-system for own-namespace, Role in ward-ca for ca-namespace)', () => {
    const { grants, problems } = renderedGrants(objects);
    expect(problems).toEqual([]);
    expect(grants).toEqual(USAGE_GRANTS);
    expect(new Set(grants).size).toBe(grants.length); // no row granted twice
  });

  it('ward-proxy gets nothing: no binding names it and it has no API token', () => {
    const { grants } = renderedGrants(objects);
    expect(grants.filter((g) => g.startsWith('proxy '))).toEqual([]);
    expect(JSON.stringify(objects.filter((o) => o.kind.endsWith('Binding')))).not.toContain('ward-proxy');
    expect(find('ServiceAccount', 'ward-proxy').automountServiceAccountToken).toBe(false);
    expect(podSpec(find('DaemonSet', 'ward-proxy')).automountServiceAccountToken).toBe(false);
  });

  it('the CA Secret and the bundle ConfigMap rules are narrowed to their names where Kubernetes can narrow them (get, update; create cannot be)', () => {
    const control = podSpec(find('Deployment', 'ward-control'));
    const args = (control.containers as Json[])[0].args as string[];
    // The Secret the Deployment names is the one the ca-namespace Role grants, in that namespace.
    expect(flagValue(args, '--ca-secret')).toBe(CA_SECRET);
    const [secretNamespace, secretName] = CA_SECRET.split('/');
    expect(secretNamespace).toBe(CA_NAMESPACE);
    expect(flagValue(args, '--namespace')).toBe(NAMESPACE);
    expect(renderedGrants(objects).restricted).toEqual(
      [
        `control ca-namespace core/secrets get [${secretName}]`,
        `control ca-namespace core/secrets update [${secretName}]`,
        `control own-namespace core/configmaps get [${BUNDLE_CONFIGMAP}]`,
        `control own-namespace core/configmaps update [${BUNDLE_CONFIGMAP}]`,
      ].sort(),
    );
  });

  it('the CA namespace holds only the control plane\'s Role and its binding to ward-system/ward-control', () => {
    expect(find('Namespace', CA_NAMESPACE)).toBeDefined();
    const inCa = objects.filter((o) => o.metadata.namespace === CA_NAMESPACE);
    expect(inCa.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(['Role/ward-control', 'RoleBinding/ward-control']);
    const binding = inCa.find((o) => o.kind === 'RoleBinding')!;
    expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'ward-control' });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'ward-control', namespace: NAMESPACE }]);
    // Nothing in ward-system may touch Secrets but the ingress's list/watch (its TLS Secrets).
    const { grants } = renderedGrants(objects);
    expect(grants.filter((g) => g.includes('core/secrets') && !g.includes(' ca-namespace '))).toEqual(['ingress own-namespace core/secrets list', 'ingress own-namespace core/secrets watch']);
  });

  it('the comparison can fail: one more verb, one row less, or a binding to ward-proxy', () => {
    const more = structuredClone(objects);
    ((more.find((o) => o.kind === 'Role' && o.metadata.name === 'ward-ingress')!.rules as Rule[])[0].verbs).push('get');
    expect(renderedGrants(more).grants).not.toEqual(USAGE_GRANTS);
    const less = structuredClone(objects);
    (less.find((o) => o.kind === 'ClusterRole')!.rules as Rule[]).pop();
    expect(renderedGrants(less).grants).not.toEqual(USAGE_GRANTS);
    const proxy = structuredClone(objects);
    (proxy.find((o) => o.kind === 'RoleBinding' && o.metadata.name === 'ward-ingress')!.subjects as Json[]).push({ kind: 'ServiceAccount', name: 'ward-proxy', namespace: NAMESPACE });
    expect(renderedGrants(proxy).grants.some((g) => g.startsWith('proxy '))).toBe(true);
    // The CA Secret's Role back in ward-system (where the ingress lists Secrets) is the wrong scope.
    const moved = structuredClone(objects);
    for (const o of moved) if (o.metadata.namespace === CA_NAMESPACE) o.metadata.namespace = NAMESPACE;
    expect(renderedGrants(moved).grants).not.toEqual(USAGE_GRANTS);
    expect(renderedGrants(moved).grants).toContain('control own-namespace core/secrets get');
    // A binding in any other namespace is refused.
    const elsewhere = structuredClone(objects);
    for (const o of elsewhere) if (o.metadata.namespace === CA_NAMESPACE) o.metadata.namespace = 'default';
    expect(renderedGrants(elsewhere).problems).toContain(`RoleBinding default/ward-control outside ${NAMESPACE} and ${CA_NAMESPACE}`);
  });
});

// ------------------------------------------------------------------------------------------------
// (d) the CRD schema and the policies the docs show

function openApiSchema(crd: K8sObject): unknown {
  const versions = (crd.spec as Json).versions as Json[];
  return ((versions[0].schema as Json).openAPIV3Schema as Json);
}

/** Every AuthorizationPolicy in the ```yaml blocks of a Markdown file. */
function policiesInMarkdown(rel: string): { where: string; policy: unknown }[] {
  return yamlInMarkdown(rel)
    .filter((e) => isObject(e.value) && e.value.kind === 'AuthorizationPolicy')
    .map((e) => ({ where: e.where, policy: e.value }));
}

function docPolicies(): { where: string; policy: unknown }[] {
  const fromDocs = ['README.md', 'ARCHITECTURE.md', 'docs/kubernetes.md', 'deploy/README.md'].flatMap(policiesInMarkdown);
  const example = (parseYaml(EXAMPLE_WARD_YAML) as { policies: unknown[] }).policies.map((policy, i) => ({ where: `discovery/example.ts policies[${i}]`, policy }));
  return [...fromDocs, ...example];
}

const VALID: Json = {
  apiVersion: 'security.ward.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name: 'api-readers', namespace: 'shop' },
  spec: {
    selector: { service: 'api' },
    action: 'ALLOW',
    rules: [
      {
        from: [{ identities: ['spiffe://cluster.local/ns/shop/sa/web'] }, { namespaces: ['ops'] }],
        to: [{ ports: [8080], methods: ['GET', 'HEAD'], paths: ['/v1/items', '/v1/items/*'] }],
      },
    ],
  },
};

/** VALID with one change: `edit` gets the copy's spec. */
function variant(edit: (spec: Json & { rules: Json[] }) => void): Json {
  const p = structuredClone(VALID);
  edit(p.spec as Json & { rules: Json[] });
  return p;
}
const from0 = (s: { rules: Json[] }) => (s.rules[0].from as Json[])[0];
const to0 = (s: { rules: Json[] }) => (s.rules[0].to as Json[])[0];

/** Malformed policies: [what, policy, a fragment of the API server's message]. Ward refuses each too. */
const MALFORMED: [string, Json, string][] = [
  ['no spec', (({ spec: _spec, ...rest }) => rest)(structuredClone(VALID)), 'spec: Required value'],
  ['no action', variant((s) => delete s.action), 'spec.action: Required value'],
  ['action MAYBE', variant((s) => (s.action = 'MAYBE')), 'spec.action: Unsupported value: "MAYBE"'],
  ['action in lowercase', variant((s) => (s.action = 'allow')), 'spec.action: Unsupported value: "allow"'],
  ['no rules', variant((s) => delete (s as Json).rules), 'spec.rules: Required value'],
  ['rules not a list', variant((s) => ((s as Json).rules = { from: [] })), 'spec.rules: Invalid value: "object"'],
  ['DENY with no rule (would do nothing)', variant((s) => ((s.action = 'DENY'), (s.rules = []))), 'must validate at least one schema (anyOf)'],
  ['AUDIT with no rule', variant((s) => ((s.action = 'AUDIT'), (s.rules = []))), 'must validate at least one schema (anyOf)'],
  ['methods not a list', variant((s) => (to0(s).methods = 'GET')), 'spec.rules[0].to[0].methods: Invalid value: "string"'],
  ['a method in lowercase', variant((s) => (to0(s).methods = ['get'])), 'spec.rules[0].to[0].methods[0]: Unsupported value: "get"'],
  ['an unknown method', variant((s) => (to0(s).methods = ['BREW'])), 'Unsupported value: "BREW"'],
  ['an empty from', variant((s) => (s.rules[0].from = [])), 'spec.rules[0].from: Invalid value'],
  ['an empty to', variant((s) => (s.rules[0].to = [])), 'spec.rules[0].to: Invalid value'],
  ['empty identities', variant((s) => (from0(s).identities = [])), 'spec.rules[0].from[0].identities: Invalid value'],
  ['a from entry with identities and namespaces', variant((s) => (from0(s).namespaces = ['ops'])), 'spec.rules[0].from[0]: Invalid value: "object": spec.rules[0].from[0] in body must validate one and only one schema (oneOf)'],
  ['a from entry with neither', variant((s) => (s.rules[0].from = [{}])), 'spec.rules[0].from[0] in body must validate one and only one schema (oneOf)'],
  ['a to entry with no field', variant((s) => (s.rules[0].to = [{}])), 'spec.rules[0].to[0] in body must validate at least one schema (anyOf)'],
  ['a wildcard identity', variant((s) => (from0(s).identities = ['spiffe://cluster.local/ns/shop/sa/*'])), 'spec.rules[0].from[0].identities[0]: Invalid value'],
  ['an identity that is not a SPIFFE ID', variant((s) => (from0(s).identities = ['web.shop'])), 'identities[0]: Invalid value'],
  ['an identity with an uppercase trust domain', variant((s) => (from0(s).identities = ['spiffe://Cluster.local/ns/shop/sa/web'])), 'identities[0]: Invalid value'],
  ['an identity with a ".." segment', variant((s) => (from0(s).identities = ['spiffe://cluster.local/ns/../sa/web'])), 'identities[0]: Invalid value'],
  ['an identity with a trailing slash', variant((s) => (from0(s).identities = ['spiffe://cluster.local/ns/shop/'])), 'identities[0]: Invalid value'],
  ['a namespace in uppercase', variant((s) => (s.rules[0].from = [{ namespaces: ['Ops'] }])), 'spec.rules[0].from[0].namespaces[0]: Invalid value'],
  ['port 0', variant((s) => (to0(s).ports = [0])), 'spec.rules[0].to[0].ports[0]: Invalid value: 0'],
  ['port 65536', variant((s) => (to0(s).ports = [65536])), 'should be less than or equal to 65535'],
  ['a port as a string', variant((s) => (to0(s).ports = ['8080'])), 'spec.rules[0].to[0].ports[0]: Invalid value: "string"'],
  ['a path without "/"', variant((s) => (to0(s).paths = ['v1/items'])), 'spec.rules[0].to[0].paths[0]: Invalid value'],
  ['"*" as a path', variant((s) => (to0(s).paths = ['*'])), 'paths[0]: Invalid value'],
  ['"*" inside a path', variant((s) => (to0(s).paths = ['/v1/*/items'])), 'paths[0]: Invalid value'],
  ['"*" inside a segment', variant((s) => (to0(s).paths = ['/v1/item*'])), 'paths[0]: Invalid value'],
  ['a path with a query', variant((s) => (to0(s).paths = ['/v1/items?id=1'])), 'paths[0]: Invalid value'],
  ['a path with a space', variant((s) => (to0(s).paths = ['/v1/my items'])), 'paths[0]: Invalid value'],
  ['a selector without service', variant((s) => (s.selector = {})), 'spec.selector.service: Required value'],
  ['a service name with a dot', variant((s) => (s.selector = { service: 'api.shop' })), 'spec.selector.service: Invalid value'],
];

/** Malformed only under fieldValidation=Strict: the default prunes them (and Ward refuses them). */
const UNKNOWN_FIELDS: [string, Json, string][] = [
  ['a misspelt from ("form")', variant((s) => ((s.rules[0].form = s.rules[0].from), delete s.rules[0].from)), 'spec.rules[0].form: field not declared in schema'],
  ['an unknown spec field', variant((s) => ((s as Json).mode = 'strict')), 'spec.mode: field not declared in schema'],
  ['an unknown operation field', variant((s) => (to0(s).hosts = ['api'])), 'spec.rules[0].to[0].hosts: field not declared in schema'],
];

/** Accepted by both, at the edges of what the parser allows. */
const EDGES: [string, Json][] = [
  ['ALLOW with no rule (denies everything)', variant((s) => (s.rules = []))],
  ['DENY matching every request', variant((s) => ((s.action = 'DENY'), (s.rules = [{}])))],
  ['AUDIT with a from only', variant((s) => ((s.action = 'AUDIT'), delete s.rules[0].to))],
  ['no selector', variant((s) => delete s.selector)],
  ['every path', variant((s) => (to0(s).paths = ['/*', '/']))],
  ['ports at both ends', variant((s) => (to0(s).ports = [1, 65535]))],
  ['every method', variant((s) => (to0(s).methods = [...HTTP_METHODS]))],
  ['an identity of another trust domain, with dots', variant((s) => (from0(s).identities = ['spiffe://partner.example.org/ns/a.b/sa/...x', 'spiffe://td']))],
  ['a path with visible punctuation', variant((s) => (to0(s).paths = ["/a-b_c.d~e/%20/(x)/!$&'+,;=:@"]))],
];

describe('(d) the AuthorizationPolicy CRD and the policies in the docs', () => {
  let schema: object;
  beforeAll(() => {
    const crd = find('CustomResourceDefinition', 'authorizationpolicies.security.ward.dev');
    const spec = crd.spec as Json;
    expect(spec).toMatchObject({
      group: 'security.ward.dev',
      scope: 'Namespaced',
      names: { kind: 'AuthorizationPolicy', plural: 'authorizationpolicies', singular: 'authorizationpolicy', shortNames: ['wardpolicy'] },
    });
    expect((spec.versions as Json[]).map((v) => [v.name, v.served, v.storage])).toEqual([['v1alpha1', true, true]]);
    schema = openApiSchema(crd) as object;
  });

  it('every policy the docs show is accepted by the schema (strict) and by Ward\'s parser', () => {
    const examples = docPolicies();
    // The deploy README shows three, the built-in example mesh two.
    expect(examples.filter((e) => e.where.startsWith('deploy/README.md')).length).toBeGreaterThanOrEqual(3);
    expect(examples.filter((e) => e.where.startsWith('discovery/example.ts')).length).toBe(2);
    for (const { where, policy } of examples) {
      expect(validateAgainstSchema(schema, policy, { strict: true }), where).toEqual([]);
      expect(() => parsePolicy(policy, where), where).not.toThrow();
    }
  });

  it.each(MALFORMED)('refuses %s, as Ward does', (_what, policy, message) => {
    const problems = validateAgainstSchema(schema, policy);
    expect(problems.join('\n')).toContain(message);
    expect(() => parsePolicy(policy, 'test')).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
  });

  it.each(UNKNOWN_FIELDS)('refuses %s under strict field validation, as Ward does (the default prunes it)', (_what, policy, message) => {
    expect(validateAgainstSchema(schema, policy, { strict: true })).toContain(message);
    expect(validateAgainstSchema(schema, policy)).toEqual([]);
    expect(() => parsePolicy(policy, 'test')).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
  });

  it.each(EDGES)('accepts %s, as Ward does', (_what, policy) => {
    expect(validateAgainstSchema(schema, policy, { strict: true })).toEqual([]);
    expect(() => parsePolicy(policy, 'test')).not.toThrow();
  });

  it('the enums are the parser\'s: actions and HTTP methods', () => {
    const spec = (schema as { properties: { spec: Json } }).properties.spec as { properties: Record<string, Json> };
    expect(spec.properties.action.enum).toEqual([...POLICY_ACTIONS]);
    const to = ((((spec.properties.rules.items as Json).properties as Json).to as Json).items as Json).properties as Record<string, Json>;
    expect((to.methods.items as Json).enum).toEqual([...HTTP_METHODS]);
  });

  it('is a structural schema the API server takes: typed nodes, junctors with value validations only, RE2-safe patterns', () => {
    const problems: string[] = [];
    const walk = (s: Json, at: string, inJunctor: boolean): void => {
      if (inJunctor) {
        for (const k of ['type', 'description', 'default', 'additionalProperties', 'nullable']) if (k in s) problems.push(`${at}: ${k} inside a junctor`);
      } else if (typeof s.type !== 'string') problems.push(`${at}: no type`);
      if (typeof s.pattern === 'string') {
        // Go's regexp (RE2) has no lookaround and no backreferences; JavaScript must compile it too.
        if (/\(\?[=!<]|\\[1-9]/.test(s.pattern)) problems.push(`${at}: pattern not RE2`);
        try {
          new RegExp(s.pattern, 'u');
        } catch {
          problems.push(`${at}: pattern does not compile`);
        }
        if (!s.pattern.startsWith('^') || !s.pattern.endsWith('$')) problems.push(`${at}: pattern not anchored (the server matches anywhere)`);
      }
      for (const [k, sub] of Object.entries((s.properties as Record<string, Json> | undefined) ?? {})) walk(sub, `${at}.properties.${k}`, inJunctor);
      if (isObject(s.items)) walk(s.items, `${at}.items`, inJunctor);
      for (const j of ['allOf', 'anyOf', 'oneOf']) {
        for (const [i, b] of ((s[j] as Json[] | undefined) ?? []).entries()) {
          walk(b, `${at}.${j}[${i}]`, true);
          for (const k of Object.keys((b.properties as Json | undefined) ?? {})) {
            if (!(k in ((s.properties as Json | undefined) ?? {}))) problems.push(`${at}.${j}[${i}]: property ${k} not declared outside the junctor`);
          }
        }
      }
    };
    walk(schema as Json, 'openAPIV3Schema', false);
    expect(problems).toEqual([]);
  });
});

// ------------------------------------------------------------------------------------------------
// (e) containers

const SECURITY_CONTEXT = {
  runAsNonRoot: true,
  runAsUser: 65532,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
};

/** The commands the containers run, with their real option lists (what `ward CMD` parses). */
const COMMANDS: Record<string, Command> = { control: controlCommands[0], proxy: proxyCommands[0], ingress: ingressCommands[0] };

/** The flags each container must pass (Kubernetes mode, docs/kubernetes.md). */
const REQUIRED_FLAGS: Record<string, string[]> = {
  control: ['kube', 'init', 'state', 'ca-secret', 'namespace', 'trust-domain', 'listen', 'discovery', 'admin'],
  proxy: ['kube-token-file', 'shared-outbound', 'node', 'address', 'bundle', 'ca', 'discovery'],
  ingress: ['kube', 'kube-token-file', 'bundle', 'ca', 'discovery', 'https', 'http', 'admin'],
};

function flagValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i === -1 ? undefined : args[i + 1];
}

/** The loopback admin port a container's probes must reach: its --admin, else the command's default. */
function adminPort(args: string[]): number {
  const admin = flagValue(args, '--admin');
  if (admin !== undefined) return Number(admin.split(':').pop());
  if (args[0] === 'proxy') return DEFAULT_ADMIN_PORT;
  throw new Error(`no admin port for ${args[0]}`);
}

function workloads(): K8sObject[] {
  return objects.filter((o) => WORKLOAD_KINDS.has(o.kind));
}

describe('(e) every container: security, resources, probes, pinned image, flags', () => {
  it('there are three workloads with one container each', () => {
    expect(workloads().map((o) => `${o.kind}/${o.metadata.name}:${containersOf(o).map((c) => c.name).join(',')}`).sort()).toEqual([
      'DaemonSet/ward-proxy:proxy',
      'Deployment/ward-control:control',
      'Deployment/ward-ingress:ingress',
    ]);
  });

  it('security contexts: non-root 65532, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp', () => {
    for (const o of workloads()) {
      expect(podSpec(o).securityContext, o.metadata.name).toMatchObject({ runAsNonRoot: true, runAsUser: 65532, seccompProfile: { type: 'RuntimeDefault' } });
      for (const c of containersOf(o)) {
        expect(c.securityContext, `${o.metadata.name}/${String(c.name)}`).toMatchObject(SECURITY_CONTEXT);
        expect((c.securityContext as Json).privileged, `${o.metadata.name}/${String(c.name)}`).not.toBe(true);
        expect(((c.securityContext as Json).capabilities as Json).add, `${o.metadata.name}/${String(c.name)}`).toBeUndefined();
      }
    }
  });

  it('resources: cpu and memory requests and limits, requests within limits', () => {
    const bytes = (q: string): number => {
      const m = /^(\d+)(Ki|Mi|Gi)?$/.exec(q);
      if (!m) throw new Error(`quantity ${q}`);
      const unit: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30 };
      return Number(m[1]) * (m[2] === undefined ? 1 : unit[m[2]]);
    };
    const millis = (q: string): number => (q.endsWith('m') ? Number(q.slice(0, -1)) : Number(q) * 1000);
    for (const o of workloads()) {
      for (const c of containersOf(o)) {
        const r = c.resources as { requests: Record<string, string>; limits: Record<string, string> };
        const where = `${o.metadata.name}/${String(c.name)}`;
        expect(Object.keys(r.requests ?? {}).sort(), where).toEqual(['cpu', 'memory']);
        expect(Object.keys(r.limits ?? {}).sort(), where).toEqual(['cpu', 'memory']);
        expect(millis(r.requests.cpu), where).toBeLessThanOrEqual(millis(r.limits.cpu));
        expect(bytes(r.requests.memory), where).toBeLessThanOrEqual(bytes(r.limits.memory));
      }
    }
  });

  it('probes: readiness (/readyz, or /healthz where the admin has no readyz) and liveness (/healthz) on the loopback admin port', () => {
    for (const o of workloads()) {
      const hostNetwork = podSpec(o).hostNetwork === true;
      for (const c of containersOf(o)) {
        const args = c.args as string[];
        const port = adminPort(args);
        const where = `${o.metadata.name}/${String(c.name)}`;
        const target = (probe: Json | undefined): { port: number; path: string } => {
          expect(probe, where).toBeDefined();
          if (isObject(probe!.exec)) {
            const cmd = (probe!.exec as { command: string[] }).command;
            // `ward` is on the image's PATH (Dockerfile), and ward probe refuses a non-loopback URL.
            expect(cmd.slice(0, 2), where).toEqual(['ward', 'probe']);
            const url = probeUrl(cmd[2]);
            return { port: Number(url.port), path: url.pathname };
          }
          const get = probe!.httpGet as { host?: string; port: number; path: string };
          // Only a pod on the host network shares the kubelet's loopback.
          expect(hostNetwork && get.host === '127.0.0.1', `${where}: httpGet to a loopback admin port needs hostNetwork and host 127.0.0.1`).toBe(true);
          return { port: get.port, path: get.path };
        };
        const readiness = target(c.readinessProbe as Json | undefined);
        const liveness = target(c.livenessProbe as Json | undefined);
        expect(readiness.port, where).toBe(port);
        expect(liveness.port, where).toBe(port);
        // The control plane's admin (the CA server's) has /healthz and no /readyz.
        expect(readiness.path, where).toBe(args[0] === 'control' ? '/healthz' : '/readyz');
        expect(liveness.path, where).toBe('/healthz');
        if (c.startupProbe !== undefined) expect(target(c.startupProbe as Json).port, where).toBe(port);
        const admin = flagValue(args, '--admin');
        if (admin !== undefined) expect(() => probeUrl(`http://${admin}/`), where).not.toThrow();
      }
    }
  });

  it('images are pinned (a version tag or a digest, never latest)', () => {
    for (const o of workloads()) {
      for (const c of containersOf(o)) {
        const image = String(c.image);
        // registry[:port]/path:tag[@digest]: the tag is after a ":" that follows the last "/".
        const colon = image.indexOf(':', image.lastIndexOf('/') + 1);
        const tag = colon === -1 ? '' : image.slice(colon + 1).split('@')[0];
        const pinned = /@sha256:[0-9a-f]{64}$/.test(image) || (tag !== '' && tag !== 'latest');
        expect(pinned, `${o.metadata.name}/${String(c.name)}: ${image}`).toBe(true);
      }
    }
  });

  it('the args parse with the commands\' own option lists (unknown flags, missing values, values given to switches, stray arguments fail)', () => {
    const seen: string[] = [];
    for (const o of workloads()) {
      for (const c of containersOf(o)) {
        expect(c.command, 'the image ENTRYPOINT runs ward; containers give only args').toBeUndefined();
        const args = c.args as string[];
        const cmd = args[0];
        seen.push(cmd);
        expect(Object.keys(COMMANDS), `${o.metadata.name}: ward ${cmd}`).toContain(cmd);
        // What `ward CMD` itself does with them (cli/command.ts): strict, no positionals.
        const parsed = parseCommandArgs(COMMANDS[cmd], args.slice(1));
        const given = new Set(args.slice(1).filter((a) => a.startsWith('--')).map((a) => a.slice(2)));
        for (const f of REQUIRED_FLAGS[cmd]) expect([...given], `${o.metadata.name}: --${f}`).toContain(f);
        for (const [f, def] of Object.entries(COMMANDS[cmd].options)) {
          if (def.type === 'boolean' && given.has(f)) expect(parsed.values[f], `${o.metadata.name}: --${f}`).toBe(true);
        }
        for (const url of ['ca', 'discovery']) {
          if (cmd !== 'control') expect(parsed.values[url], `${o.metadata.name} --${url}`).toMatch(/^https:\/\/ward-control\.ward-system\.svc:844[34]$/);
        }
      }
    }
    expect(seen.sort()).toEqual(['control', 'ingress', 'proxy']);
  });

  it('the args check can fail: an unknown flag, a switch given a value, a flag without its value', () => {
    const control = [...((podSpec(find('Deployment', 'ward-control')).containers as Json[])[0].args as string[])].slice(1);
    expect(() => parseCommandArgs(COMMANDS.control, [...control, '--ca-secrets', 'x'])).toThrow(/unknown flag --ca-secrets/);
    expect(() => parseCommandArgs(COMMANDS.control, [...control, '--init', 'yes'])).toThrow(/unexpected argument "yes"/);
    expect(() => parseCommandArgs(COMMANDS.control, ['--ca-secret', '--kube'])).toThrow();
    expect(() => parseCommandArgs(COMMANDS.control, [...control, '--shared-outbound'])).toThrow(/unknown flag/);
  });

  it('the control plane: 1 replica, ward-control, CA 8443 and discovery 8444 behind the ClusterIP Service, state on an emptyDir', () => {
    const d = find('Deployment', 'ward-control');
    expect((d.spec as Json).replicas).toBe(1);
    const spec = podSpec(d);
    expect(spec.serviceAccountName).toBe('ward-control');
    const c = (spec.containers as Json[])[0];
    const args = c.args as string[];
    expect(args.slice(0, 2)).toEqual(['control', '--kube']);
    // The CA is created on the first start (--init) and kept in the Secret of its own namespace.
    expect(args).toContain('--init');
    expect(flagValue(args, '--ca-secret')).toBe(CA_SECRET);
    expect(flagValue(args, '--namespace')).toBe(NAMESPACE);
    expect(flagValue(args, '--trust-domain')).toBe('cluster.local');
    expect(flagValue(args, '--listen')).toBe('0.0.0.0:8443');
    expect(flagValue(args, '--discovery')).toBe('0.0.0.0:8444');
    expect(flagValue(args, '--admin')).toBe('127.0.0.1:9443');
    const state = flagValue(args, '--state');
    const mount = (c.volumeMounts as Json[]).find((m) => m.mountPath === state)!;
    expect((spec.volumes as Json[]).find((v) => v.name === mount.name)).toHaveProperty('emptyDir');
    const svc = find('Service', 'ward-control').spec as Json;
    expect(svc.type).toBe('ClusterIP');
    expect((svc.ports as Json[]).map((p) => [p.port, p.targetPort])).toEqual([[8443, 'ca'], [8444, 'discovery']]);
    expect((c.ports as Json[]).map((p) => [p.name, p.containerPort])).toEqual([['ca', 8443], ['discovery', 8444]]);
    expect(svc.selector).toEqual((d.spec as { selector: { matchLabels: unknown } }).selector.matchLabels);
    // No key material anywhere in deploy/, and no ward-bundle ConfigMap: the control plane writes it
    // (an applied one would overwrite the real bundle at every `kubectl apply`).
    expect(objects.filter((o) => o.kind === 'Secret' || o.kind === 'ConfigMap')).toEqual([]);
    expect(JSON.stringify(objects)).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE/);
  });

  it('the node proxy: host network, cluster DNS, every node, node name and IP from the downward API, ports on the node IP', () => {
    const ds = find('DaemonSet', 'ward-proxy');
    const spec = podSpec(ds);
    expect(((ds.spec as Json).template as { metadata: { labels: Json } }).metadata.labels['app.kubernetes.io/name']).toBe('ward-proxy');
    expect(spec).toMatchObject({ serviceAccountName: 'ward-proxy', hostNetwork: true, dnsPolicy: 'ClusterFirstWithHostNet', automountServiceAccountToken: false });
    expect(spec.tolerations).toContainEqual({ operator: 'Exists' });
    const c = (spec.containers as Json[])[0];
    const args = c.args as string[];
    expect(flagValue(args, '--kube-token-file')).toBe(TOKEN_FILE);
    expect(flagValue(args, '--node')).toBe('$(NODE_NAME)');
    expect(flagValue(args, '--address')).toBe('$(HOST_IP)');
    // One outbound listener for the node, callers told apart by pod IP (docs/kubernetes.md, Ports).
    expect(args).toContain('--shared-outbound');
    expect(c.env).toEqual([
      { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
      { name: 'HOST_IP', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } },
    ]);
    expect((c.ports as Json[]).map((p) => [p.containerPort, p.hostPort])).toEqual([
      [DEFAULT_INBOUND_PORT, DEFAULT_INBOUND_PORT],
      [DEFAULT_OUTBOUND_PORT, DEFAULT_OUTBOUND_PORT],
    ]);
  });

  it('the ingress: 2 replicas, ward-ingress, a Service 443→https and 80→http, a disruption budget, IngressClass ward', () => {
    const d = find('Deployment', 'ward-ingress');
    expect((d.spec as Json).replicas).toBe(2);
    expect(podSpec(d).serviceAccountName).toBe('ward-ingress');
    expect(((d.spec as Json).template as { metadata: { labels: Json } }).metadata.labels['app.kubernetes.io/name']).toBe('ward-ingress');
    const c = (podSpec(d).containers as Json[])[0];
    const named = Object.fromEntries((c.ports as Json[]).map((p) => [p.name, p.containerPort]));
    const args = c.args as string[];
    expect(flagValue(args, '--https')).toBe(`0.0.0.0:${named.https}`);
    expect(flagValue(args, '--http')).toBe(`0.0.0.0:${named.http}`);
    const svc = find('Service', 'ward-ingress').spec as Json;
    expect(['LoadBalancer', 'NodePort']).toContain(svc.type);
    expect((svc.ports as Json[]).map((p) => [p.port, p.targetPort])).toEqual([[443, 'https'], [80, 'http']]);
    const pdb = find('PodDisruptionBudget', 'ward-ingress').spec as Json;
    expect(pdb.minAvailable).toBe(1);
    expect(find('IngressClass', 'ward').spec).toEqual({ controller: 'ward.dev/ingress' });
    for (const o of workloads()) {
      const selector = (o.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
      const labels = ((o.spec as Json).template as { metadata: { labels: Record<string, string> } }).metadata.labels;
      expect(labels, o.metadata.name).toMatchObject(selector);
    }
    for (const p of objects.filter((o) => o.kind === 'PodDisruptionBudget')) {
      const sel = (p.spec as { selector: { matchLabels: Json } }).selector.matchLabels;
      expect(workloads().some((w) => JSON.stringify((w.spec as { selector: { matchLabels: Json } }).selector.matchLabels) === JSON.stringify(sel)), p.metadata.name).toBe(true);
    }
  });
});

// ------------------------------------------------------------------------------------------------
// (f) the image and the projected token

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function dockerfile(): { instruction: string; rest: string }[] {
  return read('Dockerfile')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const [instruction, ...rest] = l.split(/\s+/);
      return { instruction: instruction.toUpperCase(), rest: rest.join(' ') };
    });
}

describe('(f) the Dockerfile and the projected ServiceAccount token', () => {
  it('builds in one stage and runs from another: pinned Node.js base, production dependencies only, non-root, ward entrypoint', () => {
    const lines = dockerfile();
    const stages: { from: string; lines: { instruction: string; rest: string }[] }[] = [];
    for (const l of lines) {
      if (l.instruction === 'FROM') stages.push({ from: l.rest, lines: [] });
      else stages.at(-1)?.lines.push(l);
    }
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const args = Object.fromEntries(lines.filter((l) => l.instruction === 'ARG' && l.rest.includes('=')).map((l) => l.rest.split('=')));
    for (const s of stages) {
      const image = s.from.split(/\s+/)[0].replace(/^\$\{(\w+)\}$/, (_m, name: string) => args[name] ?? '');
      expect(image, s.from).toMatch(/^node:20\.20(\.\d+)?-[a-z]+(-slim)?(@sha256:[0-9a-f]{64})?$/);
    }
    const build = stages.find((s) => s.lines.some((l) => l.instruction === 'RUN' && l.rest.includes('npm run build')));
    expect(build, 'a stage runs npm run build').toBeDefined();
    expect(build!.lines.some((l) => l.instruction === 'RUN' && /npm ci\b/.test(l.rest))).toBe(true);
    const runtime = stages.at(-1)!;
    expect(runtime).not.toBe(build);
    const all = (instruction: string) => runtime.lines.filter((l) => l.instruction === instruction).map((l) => l.rest);
    // The runtime stage has no compiler and no sources: dist/ and production node_modules, copied in.
    expect(all('COPY').some((c) => /--from=\S+ \S*dist\b/.test(c))).toBe(true);
    expect(all('COPY').some((c) => c.includes('node_modules'))).toBe(true);
    expect(all('COPY').every((c) => c.startsWith('--from='))).toBe(true);
    const depsStage = stages.find((s) => s.lines.some((l) => l.instruction === 'RUN' && /npm ci\b.*--omit=dev/.test(l.rest)));
    expect(depsStage, 'production dependencies come from npm ci --omit=dev').toBeDefined();
    const user = all('USER').at(-1);
    expect(user).toBeDefined();
    expect(user!.split(':')[0]).not.toMatch(/^(0|root)$/);
    expect(user).toBe('65532:65532'); // what the manifests' securityContext says
    expect(JSON.parse(all('ENTRYPOINT').at(-1)!)).toEqual(IMAGE_ENTRYPOINT);
    expect(all('RUN').some((r) => r.includes('/usr/local/bin/ward')), '`ward` on the PATH for exec probes').toBe(true);
  });

  it('.dockerignore keeps local builds, modules, state and VCS out of the build context', () => {
    const ignored = read('.dockerignore').split('\n').map((l) => l.trim());
    for (const p of ['node_modules', 'dist', '.git', '.ward']) expect(ignored).toContain(p);
  });

  it('the node proxy and the ingress mount a projected token with audience ward (1h) at /var/run/secrets/ward, read by --kube-token-file', () => {
    for (const name of ['ward-proxy', 'ward-ingress']) {
      const o = objects.find((x) => WORKLOAD_KINDS.has(x.kind) && x.metadata.name === name)!;
      const spec = podSpec(o);
      const c = (spec.containers as Json[])[0];
      const mount = (c.volumeMounts as Json[]).find((m) => m.mountPath === TOKEN_DIR);
      expect(mount, name).toMatchObject({ readOnly: true });
      const volume = (spec.volumes as Json[]).find((v) => v.name === mount!.name)!;
      expect(volume.projected, name).toEqual({ sources: [{ serviceAccountToken: { audience: 'ward', expirationSeconds: 3600, path: 'token' } }] });
      expect(flagValue(c.args as string[], '--kube-token-file'), name).toBe(TOKEN_FILE);
    }
  });

  it('the node proxy and the ingress read --bundle from the ConfigMap ward-bundle, which the control plane writes (no manual step)', () => {
    for (const name of ['ward-proxy', 'ward-ingress']) {
      const o = objects.find((x) => WORKLOAD_KINDS.has(x.kind) && x.metadata.name === name)!;
      const spec = podSpec(o);
      const c = (spec.containers as Json[])[0];
      const bundle = flagValue(c.args as string[], '--bundle')!;
      const mount = (c.volumeMounts as Json[]).find((m) => bundle.startsWith(`${String(m.mountPath)}/`));
      expect(mount, `${name}: --bundle ${bundle} is on a mounted volume`).toMatchObject({ readOnly: true });
      const volume = (spec.volumes as Json[]).find((v) => v.name === mount!.name)!;
      const file = bundle.slice(String(mount!.mountPath).length + 1);
      // Not optional: the pod waits in ContainerCreating until the control plane has written it.
      expect(volume.configMap, name).toEqual({ name: BUNDLE_CONFIGMAP, items: [{ key: file, path: file }] });
      expect(file).toBe('bundle.pem');
    }
    // Nothing tells the operator to publish the bundle by hand any more (README.md: its Kubernetes section).
    const kubeSection = /^## Kubernetes\n[\s\S]*?(?=^## )/m.exec(read('README.md'))?.[0] ?? '';
    expect(kubeSection).toContain('ward-bundle');
    const docs: [string, string][] = [['README.md ## Kubernetes', kubeSection], ...['README.md', 'control.yaml', 'proxy.yaml', 'ingress.yaml', 'kustomization.yaml'].map((f): [string, string] => [`deploy/${f}`, read(`deploy/${f}`)])];
    for (const [f, text] of docs) expect(text, f).not.toMatch(/create configmap|ward ca bundle/);
    expect(read('deploy/README.md')).toContain('`ContainerCreating`');
  });
});

// ------------------------------------------------------------------------------------------------
// ward probe

async function adminStub(handler: (path: string) => { status: number; body?: string; location?: string } | 'hang'): Promise<string> {
  const server: Server = createServer((req, res) => {
    const r = handler(req.url ?? '/');
    if (r === 'hang') return; // accepted, never answered
    res.writeHead(r.status, { 'content-type': 'application/json', ...(r.location ? { location: r.location } : {}) });
    res.end(r.body ?? '');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('ward probe URL', () => {
  it('exits 0 on 2xx, 1 on another status (with the answer on stderr) or a redirect', async () => {
    const base = await adminStub((p) =>
      p === '/healthz' ? { status: 200, body: 'ok\n' }
      : p === '/readyz' ? { status: 503, body: JSON.stringify({ ready: false, reasons: ['no certificate for shop/api-1'] }) }
      : { status: 302, location: '/healthz' },
    );
    const ok = await ward(['probe', `${base}/healthz`]);
    expect(ok).toMatchObject({ code: 0, stderr: '' });
    const down = await ward(['probe', `${base}/readyz`]);
    expect(down.code).toBe(1);
    expect(down.stderr).toContain(`ward probe: ${base}/readyz answered HTTP 503: {"ready":false,"reasons":["no certificate for shop/api-1"]}`);
    const moved = await ward(['probe', `${base}/elsewhere`]);
    expect(moved.code).toBe(1);
    expect(moved.stderr).toContain('answered HTTP 302');
  });

  it('exits 1 when nothing answers in time, or nothing listens', async () => {
    const base = await adminStub(() => 'hang');
    const slow = await ward(['probe', `${base}/readyz`, '--timeout', '300ms']);
    expect(slow.code).toBe(1);
    expect(slow.stderr).toContain('unreachable: no answer within 300ms');
    const closed = createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const refused = await ward(['probe', `http://127.0.0.1:${port}/healthz`]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/unreachable: ECONNREFUSED/);
    // A port fetch() would refuse as a browser "bad port" (10080: ward up's ingress redirect) is probed.
    const bad = await ward(['probe', 'http://127.0.0.1:10080/healthz', '--timeout', '1s']);
    expect(bad.stderr).not.toContain('bad port');
  });

  it('refuses anything but plain HTTP to a loopback host (exit 2), and has --help', async () => {
    for (const url of ['http://10.0.0.1:9443/healthz', 'http://example.com/healthz', 'https://127.0.0.1:9443/healthz', 'not a url']) {
      const r = await ward(['probe', url]);
      expect(r.code, url).toBe(2);
      expect(r.stderr, url).toMatch(/error\[WARD_USAGE\]: URL must/);
    }
    for (const url of ['http://127.0.0.1:1/x', 'http://[::1]:1/x', 'http://localhost:1/x', 'http://127.3.2.1:1/x']) expect(() => probeUrl(url), url).not.toThrow();
    expect((await ward(['probe', 'http://127.0.0.1:1/', '--timeout', 'soon'])).code).toBe(2);
    expect((await ward(['probe'])).code).toBe(2);
    const help = await ward(['probe', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: ward probe URL [--timeout 2s]');
    expect((await ward(['--help'])).stdout).toContain('  probe ');
  });
});
