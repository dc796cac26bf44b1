/**
 * The resource types the test API server serves: the built-in ones Ward uses, Ward's
 * AuthorizationPolicy custom resource, and any type a CustomResourceDefinition adds. Each type is
 * served at exactly one group/version (as Ward needs; the real server may serve several). Tests only.
 */

export interface ResourceType {
  group: string;
  version: string;
  /** Plural, lower case: the URL segment. */
  resource: string;
  singular: string;
  kind: string;
  listKind: string;
  namespaced: boolean;
  shortNames: string[];
  categories: string[];
  verbs: string[];
  /** Has a /status subresource: writes to the main resource keep the old status, and the reverse. */
  status: boolean;
  /** metadata.generation is kept (bumped on every change outside metadata and status). */
  generation: boolean;
  /** Field selectors the server accepts besides metadata.name and metadata.namespace. */
  fields: string[];
  /** Defined by a CustomResourceDefinition (list items carry apiVersion/kind, like the real server's). */
  custom: boolean;
  /** Created from a CRD at run time (removed again when the CRD is deleted). */
  dynamic?: boolean;
}

export function apiVersionOf(t: { group: string; version: string }): string {
  return t.group === '' ? t.version : `${t.group}/${t.version}`;
}

/** The identity of a type in the store: group and plural, version-agnostic like etcd's keys. */
export function typeKey(t: { group: string; resource: string }): string {
  return `${t.group}/${t.resource}`;
}

const ALL_VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];

type TypeInit = Pick<ResourceType, 'group' | 'version' | 'resource' | 'kind' | 'namespaced'> & Partial<ResourceType>;

function define(t: TypeInit): ResourceType {
  return {
    singular: t.kind.toLowerCase(),
    listKind: `${t.kind}List`,
    shortNames: [],
    categories: [],
    verbs: ALL_VERBS,
    status: false,
    generation: false,
    fields: [],
    custom: false,
    ...t,
  };
}

export const WARD_POLICY_GROUP = 'security.ward.dev';

/** The types every server starts with. */
export function builtinTypes(): ResourceType[] {
  return [
    define({
      group: '', version: 'v1', resource: 'pods', kind: 'Pod', namespaced: true, shortNames: ['po'], categories: ['all'], status: true,
      fields: ['spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName', 'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.nominatedNodeName'],
    }),
    define({ group: '', version: 'v1', resource: 'services', kind: 'Service', namespaced: true, shortNames: ['svc'], categories: ['all'], status: true }),
    define({ group: '', version: 'v1', resource: 'namespaces', kind: 'Namespace', namespaced: false, shortNames: ['ns'], status: true, fields: ['status.phase'] }),
    define({ group: '', version: 'v1', resource: 'secrets', kind: 'Secret', namespaced: true, fields: ['type'] }),
    define({ group: '', version: 'v1', resource: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true, shortNames: ['sa'] }),
    define({ group: '', version: 'v1', resource: 'nodes', kind: 'Node', namespaced: false, shortNames: ['no'], status: true, fields: ['spec.unschedulable'] }),
    define({ group: '', version: 'v1', resource: 'configmaps', kind: 'ConfigMap', namespaced: true, shortNames: ['cm'] }),
    define({ group: 'discovery.k8s.io', version: 'v1', resource: 'endpointslices', kind: 'EndpointSlice', namespaced: true, generation: true, fields: ['addressType'] }),
    define({ group: 'networking.k8s.io', version: 'v1', resource: 'ingresses', kind: 'Ingress', namespaced: true, shortNames: ['ing'], status: true, generation: true }),
    define({ group: 'networking.k8s.io', version: 'v1', resource: 'ingressclasses', kind: 'IngressClass', namespaced: false, generation: true }),
    define({
      group: 'apiextensions.k8s.io', version: 'v1', resource: 'customresourcedefinitions', kind: 'CustomResourceDefinition',
      namespaced: false, shortNames: ['crd', 'crds'], categories: ['api-extensions'], status: true, generation: true,
    }),
    define({ group: 'authentication.k8s.io', version: 'v1', resource: 'tokenreviews', kind: 'TokenReview', namespaced: false, verbs: ['create'] }),
    define({
      group: WARD_POLICY_GROUP, version: 'v1alpha1', resource: 'authorizationpolicies', kind: 'AuthorizationPolicy', namespaced: true,
      shortNames: ['wardpolicy'], generation: true, custom: true,
    }),
  ];
}

/** The type a CustomResourceDefinition defines (its storage version, else its first served one). */
export function typeFromCrd(crd: Record<string, unknown>): ResourceType | undefined {
  const spec = crd.spec as Record<string, unknown> | undefined;
  const names = spec?.names as Record<string, unknown> | undefined;
  const versions = Array.isArray(spec?.versions) ? (spec.versions as Record<string, unknown>[]) : [];
  const served = versions.find((v) => v.storage === true && v.served !== false) ?? versions.find((v) => v.served !== false);
  if (typeof spec?.group !== 'string' || typeof names?.plural !== 'string' || typeof names.kind !== 'string' || served === undefined) return undefined;
  const subresources = served.subresources as Record<string, unknown> | undefined;
  return define({
    group: spec.group,
    version: String(served.name),
    resource: names.plural,
    kind: names.kind,
    singular: typeof names.singular === 'string' ? names.singular : names.kind.toLowerCase(),
    listKind: typeof names.listKind === 'string' ? names.listKind : `${names.kind}List`,
    namespaced: spec.scope !== 'Cluster',
    shortNames: Array.isArray(names.shortNames) ? names.shortNames.map(String) : [],
    categories: Array.isArray(names.categories) ? names.categories.map(String) : [],
    status: subresources?.status !== undefined,
    generation: true,
    custom: true,
    dynamic: true,
  });
}

/** The openAPIV3Schema of a CRD for `version`, if it has one. */
export function crdSchema(crd: Record<string, unknown>, version: string): object | undefined {
  const spec = crd.spec as Record<string, unknown> | undefined;
  const versions = Array.isArray(spec?.versions) ? (spec.versions as Record<string, unknown>[]) : [];
  const v = versions.find((x) => x.name === version);
  const schema = (v?.schema as Record<string, unknown> | undefined)?.openAPIV3Schema;
  return typeof schema === 'object' && schema !== null ? schema : undefined;
}

/** Whether a CRD version declares the status subresource. */
export function crdHasStatus(crd: Record<string, unknown>, version: string): boolean {
  const spec = crd.spec as Record<string, unknown> | undefined;
  const versions = Array.isArray(spec?.versions) ? (spec.versions as Record<string, unknown>[]) : [];
  const v = versions.find((x) => x.name === version);
  return (v?.subresources as Record<string, unknown> | undefined)?.status !== undefined;
}

/** Lookup of types by URL segments, by apiVersion+kind, and for discovery. */
export class TypeRegistry {
  readonly #types: ResourceType[] = [];

  constructor(types: ResourceType[]) {
    for (const t of types) this.add(t);
  }

  add(t: ResourceType): void {
    const i = this.#types.findIndex((x) => x.group === t.group && x.resource === t.resource);
    if (i >= 0) this.#types[i] = t;
    else this.#types.push(t);
  }

  remove(group: string, resource: string): ResourceType | undefined {
    const i = this.#types.findIndex((x) => x.group === group && x.resource === resource);
    return i >= 0 ? this.#types.splice(i, 1)[0] : undefined;
  }

  byResource(group: string, version: string, resource: string): ResourceType | undefined {
    return this.#types.find((t) => t.group === group && t.version === version && t.resource === resource);
  }

  byKind(apiVersion: string, kind: string): ResourceType | undefined {
    return this.#types.find((t) => apiVersionOf(t) === apiVersion && t.kind === kind);
  }

  all(): readonly ResourceType[] {
    return this.#types;
  }

  /** Groups in discovery order: core first, then the others in the order they were added. */
  groups(): { group: string; version: string }[] {
    const seen = new Map<string, string>();
    for (const t of this.#types) if (t.group !== '' && !seen.has(t.group)) seen.set(t.group, t.version);
    return [...seen].map(([group, version]) => ({ group, version }));
  }

  inGroupVersion(group: string, version: string): ResourceType[] {
    return this.#types.filter((t) => t.group === group && t.version === version);
  }
}
