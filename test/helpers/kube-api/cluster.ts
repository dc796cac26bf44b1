/**
 * What the API server does with a write, over the store: names, uids, timestamps, generation,
 * the status subresource, finalizers, CustomResourceDefinitions (which add types and schemas) and
 * the schema validation of custom resources. Used by the HTTP handlers (with admission) and by the
 * direct store access of KubeApiServer (without). Tests only.
 */
import { randomUUID } from 'node:crypto';
import { pruneAndDefault, schemaViolations } from '../openapi-schema.js';
import { TypeRegistry, apiVersionOf, builtinTypes, crdSchema, typeFromCrd, typeKey, type ResourceType } from './resources.js';
import { KubeApiError, alreadyExists, badRequest, conflict, invalid, notFound } from './status.js';
import { Store, type KubeObject } from './store.js';

/** How a write came in: over HTTP (admitted, defaulted, validated) or straight into the store. */
export interface WriteOptions {
  /** HTTP writes: validate names and custom resources, reset server-owned fields, apply defaults. */
  admit: boolean;
  /** fieldValidation query parameter: Strict refuses unknown fields of a custom resource, Warn reports them. */
  fieldValidation?: 'Strict' | 'Warn' | 'Ignore';
  dryRun?: boolean;
  /** The write is to the status subresource (only status changes), or to the main resource (status kept). */
  subresource?: 'status';
}

export interface WriteResult {
  object: KubeObject;
  /** Warning header values (e.g. unknown fields dropped under fieldValidation=Warn). */
  warnings: string[];
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const NAME_CHARS = 'bcdfghjklmnpqrstvwxz2456789';

function clone<T>(v: T): T {
  return structuredClone(v);
}

function timestamp(now: Date): string {
  return now.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Everything but metadata and status: what bumps metadata.generation when it changes. */
function specPart(o: KubeObject): string {
  const { metadata: _m, status: _s, ...rest } = o;
  return JSON.stringify(rest);
}

export class Cluster {
  readonly types = new TypeRegistry(builtinTypes());
  readonly store: Store;
  readonly #now: () => Date;
  #nextClusterIp = 1;

  constructor(o: { historyLimit: number; now: () => Date }) {
    this.store = new Store(o.historyLimit);
    this.#now = o.now;
  }

  /** The type of an object by its apiVersion and kind; a 400 for one the server does not serve. */
  typeOf(apiVersion: unknown, kind: unknown): ResourceType {
    const t = typeof apiVersion === 'string' && typeof kind === 'string' ? this.types.byKind(apiVersion, kind) : undefined;
    if (t === undefined) throw badRequest(`no matches for kind "${String(kind)}" in version "${String(apiVersion)}"`);
    return t;
  }

  get(t: ResourceType, namespace: string | undefined, name: string): KubeObject | undefined {
    return this.store.get(typeKey(t), t.namespaced ? namespace : undefined, name);
  }

  mustGet(t: ResourceType, namespace: string | undefined, name: string): KubeObject {
    const o = this.get(t, namespace, name);
    if (o === undefined) throw notFound(t.group, t.resource, name);
    return o;
  }

  /** The schema of a custom resource type, when a CustomResourceDefinition for it exists. */
  schemaOf(t: ResourceType): object | undefined {
    if (!t.custom) return undefined;
    const crd = this.store.get(typeKey({ group: 'apiextensions.k8s.io', resource: 'customresourcedefinitions' }), undefined, `${t.resource}.${t.group}`);
    return crd === undefined ? undefined : crdSchema(crd, t.version);
  }

  create(t: ResourceType, input: KubeObject, o: WriteOptions): WriteResult {
    const obj = clone(input);
    obj.apiVersion = apiVersionOf(t);
    obj.kind = t.kind;
    obj.metadata = obj.metadata ?? {};
    const meta = obj.metadata;
    if (!t.namespaced) delete meta.namespace;
    if (o.admit) {
      if (meta.resourceVersion !== undefined && meta.resourceVersion !== '') throw badRequest('resourceVersion should not be set on objects to be created');
      if ((meta.name === undefined || meta.name === '') && typeof meta.generateName === 'string' && meta.generateName !== '') {
        meta.name = this.#generateName(t, meta.namespace, meta.generateName);
      }
      delete meta.uid;
      delete meta.deletionTimestamp;
      delete meta.deletionGracePeriodSeconds;
      delete meta.creationTimestamp;
      this.#defaultOnCreate(t, obj);
    }
    delete meta.resourceVersion;
    if (meta.name === undefined || meta.name === '') {
      if (!o.admit) throw new Error('BUG: create() needs metadata.name');
      throw invalid(t.group, t.kind, '', [{ reason: 'FieldValueRequired', field: 'metadata.name', message: 'Required value: name or generateName is required' }]);
    }
    if (t.namespaced && (meta.namespace === undefined || meta.namespace === '')) {
      if (!o.admit) throw new Error(`BUG: create() of a ${t.kind} needs metadata.namespace`);
      throw badRequest('the server could not find the requested resource');
    }
    const warnings = o.admit ? this.#admit(t, obj, o) : [];
    const m = obj.metadata; // #admit may have replaced it (pruning)
    if (this.get(t, m.namespace, meta.name) !== undefined) throw alreadyExists(t.group, t.resource, meta.name);
    m.uid = m.uid ?? randomUUID();
    m.creationTimestamp = m.creationTimestamp ?? timestamp(this.#now());
    if (t.generation) m.generation = 1;
    this.#fixup(t, obj);
    if (o.dryRun === true) return { object: clone({ ...obj, metadata: { ...m, resourceVersion: String(this.store.resourceVersion) } }), warnings };
    const stored = this.store.commit('ADDED', typeKey(t), obj);
    this.#afterWrite(t, stored, undefined);
    return { object: clone(stored), warnings };
  }

  /**
   * Replaces an object. With `o.admit`, a metadata.resourceVersion in the input must be the current
   * one (else 409 Conflict) and server-owned metadata is kept; the status subresource rule applies.
   */
  update(t: ResourceType, input: KubeObject, o: WriteOptions): WriteResult {
    const name = input.metadata?.name ?? '';
    const namespace = t.namespaced ? input.metadata?.namespace : undefined;
    const old = this.mustGet(t, namespace, name);
    let obj = clone(input);
    obj.apiVersion = apiVersionOf(t);
    obj.kind = t.kind;
    if (!t.namespaced) delete obj.metadata.namespace;
    if (o.admit) {
      const rv = obj.metadata.resourceVersion;
      if (rv !== undefined && rv !== '' && rv !== old.metadata.resourceVersion) throw conflict(t.group, t.resource, name);
      if (o.subresource === 'status') {
        obj = { ...clone(old), status: obj.status };
      } else if (t.status) {
        if (old.status === undefined) delete obj.status;
        else obj.status = clone(old.status);
      }
      for (const k of ['uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'generation'] as const) {
        const meta: Record<string, unknown> = obj.metadata;
        if (old.metadata[k] === undefined) delete meta[k];
        else meta[k] = old.metadata[k];
      }
    } else {
      obj.metadata.uid = obj.metadata.uid ?? old.metadata.uid;
      obj.metadata.creationTimestamp = obj.metadata.creationTimestamp ?? old.metadata.creationTimestamp;
    }
    const warnings = o.admit ? this.#admit(t, obj, o) : [];
    if (t.generation) {
      const g = typeof old.metadata.generation === 'number' ? old.metadata.generation : 1;
      obj.metadata.generation = specPart(obj) === specPart(old) ? g : g + 1;
    }
    this.#fixup(t, obj);
    if (o.dryRun === true) return { object: clone({ ...obj, metadata: { ...obj.metadata, resourceVersion: old.metadata.resourceVersion } }), warnings };
    // An object waiting only for its finalizers goes when the last one is removed.
    const gone = obj.metadata.deletionTimestamp !== undefined && (obj.metadata.finalizers ?? []).length === 0;
    const stored = this.store.commit(gone ? 'DELETED' : 'MODIFIED', typeKey(t), obj);
    this.#afterWrite(t, gone ? undefined : stored, old);
    return { object: clone(stored), warnings };
  }

  /**
   * Deletes an object: at once, or (HTTP with finalizers present) by marking it with a
   * deletionTimestamp until its finalizers are removed. `precondition` is DeleteOptions'
   * preconditions.resourceVersion / uid.
   */
  delete(t: ResourceType, namespace: string | undefined, name: string, o: WriteOptions & { precondition?: { resourceVersion?: string; uid?: string } }): { object: KubeObject; gone: boolean } {
    const old = this.mustGet(t, namespace, name);
    const p = o.precondition;
    if (p?.resourceVersion !== undefined && p.resourceVersion !== old.metadata.resourceVersion) throw conflict(t.group, t.resource, name);
    if (p?.uid !== undefined && p.uid !== old.metadata.uid) {
      throw new KubeApiError({ ...conflict(t.group, t.resource, name).status, message: `Operation cannot be fulfilled on ${t.resource} "${name}": Precondition failed: UID in precondition: ${p.uid}, UID in object meta: ${String(old.metadata.uid)}` });
    }
    const obj = clone(old);
    if (o.admit && (obj.metadata.finalizers ?? []).length > 0) {
      if (obj.metadata.deletionTimestamp !== undefined || o.dryRun === true) return { object: obj, gone: false };
      obj.metadata.deletionTimestamp = timestamp(this.#now());
      obj.metadata.deletionGracePeriodSeconds = 0;
      const stored = this.store.commit('MODIFIED', typeKey(t), obj);
      return { object: clone(stored), gone: false };
    }
    if (o.dryRun === true) return { object: obj, gone: true };
    const stored = this.store.commit('DELETED', typeKey(t), obj);
    this.#afterWrite(t, undefined, old);
    return { object: clone(stored), gone: true };
  }

  #generateName(t: ResourceType, namespace: string | undefined, prefix: string): string {
    for (;;) {
      let suffix = '';
      for (let i = 0; i < 5; i++) suffix += NAME_CHARS[Math.floor(Math.random() * NAME_CHARS.length)];
      const name = `${prefix}${suffix}`;
      if (this.get(t, namespace, name) === undefined) return name;
    }
  }

  /** What the real server's strategies and admission fill in on create (the part Ward can observe). */
  #defaultOnCreate(t: ResourceType, obj: KubeObject): void {
    const spec = (obj.spec ?? {}) as Record<string, unknown>;
    if (t.group !== '' && t.kind !== 'CustomResourceDefinition') {
      // With a status subresource, status is written only through it (a custom resource without one
      // keeps status as an ordinary field).
      if (t.status) delete obj.status;
      return;
    }
    switch (t.kind) {
      case 'Pod':
        obj.spec = spec;
        if (spec.serviceAccountName === undefined) spec.serviceAccountName = (spec.serviceAccount as string | undefined) ?? 'default';
        spec.serviceAccount = spec.serviceAccountName;
        spec.restartPolicy = spec.restartPolicy ?? 'Always';
        spec.schedulerName = spec.schedulerName ?? 'default-scheduler';
        obj.status = { phase: 'Pending' };
        break;
      case 'Service': {
        obj.spec = spec;
        spec.type = spec.type ?? 'ClusterIP';
        if (spec.clusterIP === undefined && spec.type !== 'ExternalName') {
          const n = this.#nextClusterIp++;
          spec.clusterIP = `10.96.${Math.floor(n / 250)}.${(n % 250) + 1}`;
        }
        if (typeof spec.clusterIP === 'string') spec.clusterIPs = spec.clusterIPs ?? [spec.clusterIP];
        if (Array.isArray(spec.ports)) {
          for (const p of spec.ports as Record<string, unknown>[]) {
            p.protocol = p.protocol ?? 'TCP';
            p.targetPort = p.targetPort ?? p.port;
          }
        }
        obj.status = { loadBalancer: {} };
        break;
      }
      case 'Namespace':
        obj.spec = { finalizers: ['kubernetes'], ...spec };
        obj.status = { phase: 'Active' };
        break;
      case 'CustomResourceDefinition':
        delete obj.status;
        break;
      default:
        break;
    }
  }

  /** Name rules and custom-resource schema checks for HTTP writes; returns Warning header values. */
  #admit(t: ResourceType, obj: KubeObject, o: WriteOptions): string[] {
    const name = obj.metadata.name ?? '';
    const nameRule = t.kind === 'Namespace' || t.kind === 'Service' ? DNS_LABEL : DNS_SUBDOMAIN;
    if (name.length > 253 || !nameRule.test(name)) {
      const what = nameRule === DNS_LABEL ? 'a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \'-\', and must start and end with an alphanumeric character'
        : 'a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character';
      throw invalid(t.group, t.kind, name, [{ reason: 'FieldValueInvalid', field: 'metadata.name', message: `Invalid value: ${JSON.stringify(name)}: ${what}` }]);
    }
    if (t.kind === 'CustomResourceDefinition') this.#checkCrd(obj);
    const schema = this.schemaOf(t);
    if (schema === undefined) return [];
    const strictErrors = schemaViolations(schema, obj, { strict: true }).filter((v) => v.reason === 'FieldValueUnknown');
    if (o.fieldValidation === 'Strict' && strictErrors.length > 0) {
      throw badRequest(`${t.kind} in version "${t.version}" cannot be handled as a ${t.kind}: strict decoding error: ${strictErrors.map((e) => `unknown field "${e.field}"`).join(', ')}`);
    }
    const pruned = pruneAndDefault(schema, obj).value as KubeObject;
    for (const k of Object.keys(obj)) if (!(k in pruned)) delete obj[k];
    Object.assign(obj, pruned);
    const errors = schemaViolations(schema, obj);
    if (errors.length > 0) throw invalid(t.group, t.kind, name, errors);
    return o.fieldValidation === 'Ignore' ? [] : strictErrors.map((e) => `unknown field "${e.field}"`);
  }

  #checkCrd(obj: KubeObject): void {
    const spec = obj.spec as Record<string, unknown> | undefined;
    const names = spec?.names as Record<string, unknown> | undefined;
    const causes: { reason: string; field: string; message: string }[] = [];
    if (typeof spec?.group !== 'string') causes.push({ reason: 'FieldValueRequired', field: 'spec.group', message: 'Required value' });
    if (typeof names?.plural !== 'string') causes.push({ reason: 'FieldValueRequired', field: 'spec.names.plural', message: 'Required value' });
    if (typeof names?.kind !== 'string') causes.push({ reason: 'FieldValueRequired', field: 'spec.names.kind', message: 'Required value' });
    if (!Array.isArray(spec?.versions) || spec.versions.length === 0) causes.push({ reason: 'FieldValueRequired', field: 'spec.versions', message: 'Required value: must have exactly one version marked as storage version' });
    if (causes.length === 0 && obj.metadata.name !== `${String(names?.plural)}.${String(spec?.group)}`) {
      causes.push({ reason: 'FieldValueInvalid', field: 'metadata.name', message: `Invalid value: ${JSON.stringify(obj.metadata.name)}: must be spec.names.plural+"."+spec.group` });
    }
    if (causes.length > 0) throw invalid('apiextensions.k8s.io', 'CustomResourceDefinition', obj.metadata.name ?? '', causes);
  }

  /** Server-maintained fields that hold for every write, admitted or not. */
  #fixup(t: ResourceType, obj: KubeObject): void {
    if (t.kind === 'Namespace' && t.group === '') {
      obj.metadata.labels = { ...(obj.metadata.labels ?? {}), 'kubernetes.io/metadata.name': obj.metadata.name ?? '' };
    }
    if (t.kind === 'CustomResourceDefinition' && obj.status === undefined) {
      const spec = obj.spec as Record<string, unknown> | undefined;
      const versions = Array.isArray(spec?.versions) ? (spec.versions as Record<string, unknown>[]) : [];
      const now = timestamp(this.#now());
      obj.status = {
        acceptedNames: spec?.names ?? {},
        conditions: [
          { type: 'NamesAccepted', status: 'True', reason: 'NoConflicts', message: 'no conflicts found', lastTransitionTime: now },
          { type: 'Established', status: 'True', reason: 'InitialNamesAccepted', message: 'the initial names have been accepted', lastTransitionTime: now },
        ],
        storedVersions: versions.filter((v) => v.storage === true).map((v) => v.name),
      };
    }
  }

  /** A CustomResourceDefinition adds, changes or removes a served type (and removing drops its objects). */
  #afterWrite(t: ResourceType, now: KubeObject | undefined, before: KubeObject | undefined): void {
    if (t.kind !== 'CustomResourceDefinition' || t.group !== 'apiextensions.k8s.io') return;
    if (now !== undefined) {
      const defined = typeFromCrd(now);
      const existing = defined === undefined ? undefined : this.types.byResource(defined.group, defined.version, defined.resource);
      if (defined !== undefined && (existing === undefined || existing.dynamic === true)) this.types.add(defined);
      else if (defined !== undefined && existing !== undefined) existing.status = defined.status;
      return;
    }
    const gone = before === undefined ? undefined : typeFromCrd(before);
    if (gone === undefined) return;
    const served = this.types.byResource(gone.group, gone.version, gone.resource);
    if (served === undefined) return;
    for (const o of this.store.list(typeKey(served))) this.store.commit('DELETED', typeKey(served), clone(o));
    if (served.dynamic === true) this.types.remove(served.group, served.resource);
    else served.status = false;
  }
}
