/**
 * The documents kubectl reads before it does anything (legacy discovery: /api, /api/v1, /apis,
 * /apis/<group>, /apis/<group>/<version>; /version) and the meta.k8s.io Table it asks for when it
 * prints. kubectl asks for aggregated discovery (apidiscovery.k8s.io/v2) first and falls back to the
 * legacy documents when the answer is plain application/json, so only those are served. Tests only.
 */
import { apiVersionOf, type ResourceType, type TypeRegistry } from './resources.js';
import type { KubeObject } from './store.js';

export const SERVER_VERSION = {
  major: '1',
  minor: '32',
  gitVersion: 'v1.32.0',
  gitCommit: '0000000000000000000000000000000000000000',
  gitTreeState: 'clean',
  buildDate: '2024-12-11T00:00:00Z',
  goVersion: 'go1.23.3',
  compiler: 'gc',
  platform: 'linux/amd64',
};

export function apiVersions(serverAddress: string): object {
  return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }] };
}

function groupDoc(group: string, version: string): object {
  const gv = { groupVersion: `${group}/${version}`, version };
  return { name: group, versions: [gv], preferredVersion: gv };
}

export function apiGroupList(types: TypeRegistry): object {
  return { kind: 'APIGroupList', apiVersion: 'v1', groups: types.groups().map((g) => groupDoc(g.group, g.version)) };
}

export function apiGroup(types: TypeRegistry, group: string): object | undefined {
  const g = types.groups().find((x) => x.group === group);
  return g === undefined ? undefined : { kind: 'APIGroup', apiVersion: 'v1', ...groupDoc(g.group, g.version) };
}

export function apiResourceList(types: TypeRegistry, group: string, version: string): object | undefined {
  const list = types.inGroupVersion(group, version);
  if (list.length === 0) return undefined;
  const resources: object[] = [];
  for (const t of list) {
    const entry: Record<string, unknown> = { name: t.resource, singularName: t.singular, namespaced: t.namespaced, kind: t.kind, verbs: t.verbs };
    if (t.shortNames.length > 0) entry.shortNames = t.shortNames;
    if (t.categories.length > 0) entry.categories = t.categories;
    resources.push(entry);
    if (t.status) resources.push({ name: `${t.resource}/status`, singularName: '', namespaced: t.namespaced, kind: t.kind, verbs: ['get', 'patch', 'update'] });
  }
  return { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: apiVersionOf({ group, version }), resources };
}

/** Age as kubectl prints it: 45s, 3m12s, 5h, 2d. */
function age(created: string | undefined, now: Date): string {
  if (created === undefined) return '<unknown>';
  const s = Math.max(0, Math.floor((now.getTime() - Date.parse(created)) / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 10) return `${m}m${s % 60 === 0 ? '' : `${s % 60}s`}`;
  if (m < 180) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

interface Column { name: string; type: string; format: string; description: string; priority: number }

function column(name: string, type = 'string', format = '', priority = 0): Column {
  return { name, type, format, description: name, priority };
}

function podCells(o: KubeObject): unknown[] {
  const status = (o.status ?? {}) as Record<string, unknown>;
  const spec = (o.spec ?? {}) as Record<string, unknown>;
  const containers = Array.isArray(spec.containers) ? spec.containers.length : 0;
  const statuses = Array.isArray(status.containerStatuses) ? (status.containerStatuses as Record<string, unknown>[]) : [];
  const ready = statuses.filter((c) => c.ready === true).length;
  const restarts = statuses.reduce((n, c) => n + (typeof c.restartCount === 'number' ? c.restartCount : 0), 0);
  const phase = o.metadata.deletionTimestamp !== undefined ? 'Terminating' : String(status.phase ?? 'Pending');
  return [`${ready}/${containers}`, phase, restarts];
}

/**
 * A meta.k8s.io/v1 Table of objects, as `kubectl get` (without -o) asks for.
 * includeObject: None, Metadata (the default: PartialObjectMetadata) or Object.
 */
export function table(t: ResourceType, objects: KubeObject[], resourceVersion: string, includeObject: string | undefined, now: Date): object {
  const isPod = t.kind === 'Pod' && t.group === '';
  const columnDefinitions = [column('Name', 'string', 'name')];
  if (isPod) columnDefinitions.push(column('Ready'), column('Status'), column('Restarts', 'integer'));
  columnDefinitions.push(column('Age'));
  const rows = objects.map((o) => {
    const cells: unknown[] = [o.metadata.name ?? '', ...(isPod ? podCells(o) : []), age(o.metadata.creationTimestamp, now)];
    const row: Record<string, unknown> = { cells };
    if (includeObject === 'Object') row.object = o;
    else if (includeObject !== 'None') row.object = { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata };
    return row;
  });
  return { kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion }, columnDefinitions, rows };
}

/**
 * /openapi/v3: the root lists one document per group-version. kubectl needs it to learn that the
 * server validates fields itself (a PATCH operation of the kind with a `fieldValidation` query
 * parameter); without it, `kubectl create/apply` (default --validate=strict) fails with
 * "failed to download openapi".
 */
export function openapiV3Root(types: TypeRegistry): object {
  const paths: Record<string, object> = {};
  const gvs = [{ group: '', version: 'v1' }, ...types.groups()];
  for (const gv of gvs) {
    const path = gv.group === '' ? `api/${gv.version}` : `apis/${gv.group}/${gv.version}`;
    paths[path] = { serverRelativeURL: `/openapi/v3/${path}?hash=${hashOf(openapiV3Doc(types, gv.group, gv.version))}` };
  }
  return { paths };
}

function hashOf(doc: object | undefined): string {
  let h = 0x811c9dc5;
  for (const ch of JSON.stringify(doc ?? null)) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return h.toString(16).toUpperCase().padStart(8, '0');
}

const QUERY = (name: string, type = 'string'): object => ({ name, in: 'query', schema: { type, uniqueItems: true } });

/**
 * One group-version's OpenAPI v3 document: paths with the operations' parameters and
 * x-kubernetes-group-version-kind, no schemas. The PATCH operations list no
 * strategic-merge-patch+json body, so `kubectl apply` computes strategic patches from its own
 * compiled-in types instead of asking this document for schemas it does not have.
 */
export function openapiV3Doc(types: TypeRegistry, group: string, version: string): object | undefined {
  const list = types.inGroupVersion(group, version);
  if (list.length === 0) return undefined;
  const paths: Record<string, object> = {};
  const prefix = group === '' ? `/api/${version}` : `/apis/${group}/${version}`;
  for (const t of list) {
    const gvk = { group, version, kind: t.kind };
    const base = t.namespaced ? `${prefix}/namespaces/{namespace}/${t.resource}` : `${prefix}/${t.resource}`;
    const op = (action: string, params: object[], body?: string[]): object => {
      const o: Record<string, unknown> = { 'x-kubernetes-action': action, 'x-kubernetes-group-version-kind': gvk, parameters: params, responses: { 200: { description: 'OK' } } };
      if (body !== undefined) o.requestBody = { content: Object.fromEntries(body.map((b) => [b, { schema: { type: 'object' } }])) };
      return o;
    };
    const writeParams = [QUERY('dryRun'), QUERY('fieldManager'), QUERY('fieldValidation')];
    if (t.verbs.includes('create')) paths[base] = { post: op('post', writeParams, ['application/json', 'application/yaml']) };
    if (t.verbs.includes('get')) {
      paths[`${base}/{name}`] = {
        get: op('get', []),
        put: op('put', writeParams, ['application/json', 'application/yaml']),
        patch: op('patch', [...writeParams, QUERY('force', 'boolean')], ['application/apply-patch+yaml', 'application/json-patch+json', 'application/merge-patch+json']),
        delete: op('delete', [QUERY('dryRun'), QUERY('gracePeriodSeconds', 'integer'), QUERY('propagationPolicy')]),
      };
    }
  }
  return { openapi: '3.0.0', info: { title: 'Kubernetes', version: SERVER_VERSION.gitVersion }, paths, components: { schemas: {} } };
}
