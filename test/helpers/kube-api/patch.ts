/**
 * The patch formats the API server accepts: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
 * strategic merge patch (the subset kubectl produces: merge keys of the common core types, `$patch`,
 * `$retainKeys`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`), and the merge that stands in
 * for server-side apply (no field ownership: applied fields win, nothing is removed). Functions
 * return new values and never change their inputs. Tests only.
 */
import { badRequest, KubeApiError, failure } from './status.js';

type Json = unknown;
type JsonObject = Record<string, Json>;

function isObject(v: Json): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** RFC 7386: objects merge recursively, null removes, anything else replaces. */
export function mergePatch(target: Json, patch: Json): Json {
  if (!isObject(patch)) return structuredClone(patch);
  const out: JsonObject = isObject(target) ? structuredClone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/**
 * patchMergeKey of the list fields kubectl's strategic patches merge (by field name; `ports` is a
 * container's or a service's, told apart by its items). Lists not named here are replaced.
 */
const MERGE_KEYS: Record<string, string> = {
  containers: 'name',
  initContainers: 'name',
  ephemeralContainers: 'name',
  env: 'name',
  volumes: 'name',
  volumeMounts: 'mountPath',
  volumeDevices: 'devicePath',
  imagePullSecrets: 'name',
  conditions: 'type',
  ownerReferences: 'uid',
  hostAliases: 'ip',
  topologySpreadConstraints: 'topologyKey',
  addresses: 'type',
  secrets: 'name',
  resourceClaims: 'name',
};

/** Primitive lists with patchStrategy merge (union of values). */
const MERGED_PRIMITIVE_LISTS = new Set(['finalizers']);

function mergeKeyFor(field: string, items: Json[]): string | undefined {
  if (field === 'ports') return items.some((i) => isObject(i) && 'containerPort' in i) ? 'containerPort' : 'port';
  return MERGE_KEYS[field];
}

function directive(v: Json): string | undefined {
  return isObject(v) && typeof v.$patch === 'string' ? v.$patch : undefined;
}

function withoutDirectives(v: Json): Json {
  if (Array.isArray(v)) return v.map(withoutDirectives);
  if (!isObject(v)) return v;
  const out: JsonObject = {};
  for (const [k, x] of Object.entries(v)) if (!k.startsWith('$')) out[k] = withoutDirectives(x);
  return out;
}

function mergeList(field: string, original: Json, patch: Json[]): Json[] {
  const base = Array.isArray(original) ? structuredClone(original) : [];
  if (MERGED_PRIMITIVE_LISTS.has(field) && patch.every((p) => !isObject(p))) {
    for (const p of patch) if (!base.includes(p)) base.push(p);
    return base;
  }
  const key = mergeKeyFor(field, [...base, ...patch]);
  if (key === undefined || !patch.every(isObject)) return withoutDirectives(patch) as Json[];
  if (patch.some((p) => directive(p) === 'replace')) return withoutDirectives(patch.filter((p) => directive(p) !== 'replace')) as Json[];
  for (const p of patch as JsonObject[]) {
    const i = base.findIndex((b) => isObject(b) && b[key] === p[key]);
    if (directive(p) === 'delete') {
      if (i >= 0) base.splice(i, 1);
    } else if (i >= 0) {
      base[i] = strategicMergePatch(base[i], p);
    } else {
      base.push(withoutDirectives(p));
    }
  }
  return base;
}

/** Strategic merge patch, the subset kubectl uses (see the file comment). */
export function strategicMergePatch(target: Json, patch: Json): Json {
  if (!isObject(patch)) return structuredClone(patch);
  if (directive(patch) === 'replace') return withoutDirectives(patch);
  const out: JsonObject = isObject(target) ? structuredClone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch' || k === '$retainKeys' || k.startsWith('$setElementOrder/')) continue;
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const field = k.slice('$deleteFromPrimitiveList/'.length);
      if (Array.isArray(out[field]) && Array.isArray(v)) out[field] = (out[field] as Json[]).filter((x) => !v.includes(x));
      continue;
    }
    if (v === null) delete out[k];
    else if (Array.isArray(v)) out[k] = mergeList(k, out[k], v);
    else if (isObject(v) && directive(v) === 'delete') delete out[k];
    else if (isObject(v)) out[k] = strategicMergePatch(out[k], v);
    else out[k] = v;
  }
  if (Array.isArray(patch.$retainKeys)) {
    const keep = new Set(patch.$retainKeys as Json[]);
    for (const k of Object.keys(out)) if (!keep.has(k)) delete out[k];
  }
  return out;
}

/** Server-side apply without field management: the applied configuration merged over the live object. */
export function applyMerge(live: Json, applied: Json): Json {
  return strategicMergePatch(live, applied);
}

function decodePointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/')) throw badRequest(`JSON patch path must start with '/': ${path}`);
  return path.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function patchFailure(message: string): KubeApiError {
  return new KubeApiError(failure(422, 'Invalid', `the server rejected our request due to an error in our request: ${message}`));
}

function parentOf(doc: Json, parts: string[], path: string): { parent: JsonObject | Json[]; last: string } {
  let cur: Json = doc;
  for (const p of parts.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[Number(p)];
    else if (isObject(cur)) cur = cur[p];
    else cur = undefined;
    if (cur === undefined) throw patchFailure(`doc is missing path: "${path}"`);
  }
  if (!Array.isArray(cur) && !isObject(cur)) throw patchFailure(`doc is missing path: "${path}"`);
  return { parent: cur, last: parts[parts.length - 1] };
}

function getAt(doc: Json, path: string): Json {
  let cur: Json = doc;
  for (const p of decodePointer(path)) {
    if (Array.isArray(cur)) cur = cur[Number(p)];
    else if (isObject(cur)) cur = cur[p];
    else cur = undefined;
    if (cur === undefined) throw patchFailure(`doc is missing path: "${path}"`);
  }
  return cur;
}

function removeAt(doc: Json, path: string): Json {
  const { parent, last } = parentOf(doc, decodePointer(path), path);
  if (Array.isArray(parent)) {
    const i = Number(last);
    if (!Number.isInteger(i) || i < 0 || i >= parent.length) throw patchFailure(`doc is missing path: "${path}"`);
    return parent.splice(i, 1)[0];
  }
  if (!(last in parent)) throw patchFailure(`doc is missing path: "${path}": missing value`);
  const v = parent[last];
  delete parent[last];
  return v;
}

function addAt(doc: Json, path: string, value: Json, replace: boolean): Json {
  const parts = decodePointer(path);
  if (parts.length === 0) return value;
  const { parent, last } = parentOf(doc, parts, path);
  if (Array.isArray(parent)) {
    const i = last === '-' ? parent.length : Number(last);
    if (!Number.isInteger(i) || i < 0 || i > parent.length || (replace && i >= parent.length)) throw patchFailure(`doc is missing path: "${path}"`);
    if (replace) parent[i] = value;
    else parent.splice(i, 0, value);
  } else {
    if (replace && !(last in parent)) throw patchFailure(`doc is missing key: ${path}: missing value`);
    parent[last] = value;
  }
  return doc;
}

/** RFC 6902 JSON patch. Throws a 422 KubeApiError when an operation cannot apply (as the server does). */
export function jsonPatch(target: Json, ops: Json): Json {
  if (!Array.isArray(ops)) throw badRequest('json: cannot unmarshal object into Go value of type jsonpatch.Patch');
  let doc = structuredClone(target);
  for (const op of ops) {
    if (!isObject(op) || typeof op.op !== 'string' || typeof op.path !== 'string') throw badRequest('invalid JSON patch operation');
    switch (op.op) {
      case 'add': doc = addAt(doc, op.path, structuredClone(op.value), false); break;
      case 'replace': doc = addAt(doc, op.path, structuredClone(op.value), true); break;
      case 'remove': removeAt(doc, op.path); break;
      case 'move': {
        if (typeof op.from !== 'string') throw badRequest('JSON patch move needs from');
        const v = removeAt(doc, op.from);
        doc = addAt(doc, op.path, v, false);
        break;
      }
      case 'copy': {
        if (typeof op.from !== 'string') throw badRequest('JSON patch copy needs from');
        doc = addAt(doc, op.path, structuredClone(getAt(doc, op.from)), false);
        break;
      }
      case 'test':
        if (JSON.stringify(getAt(doc, op.path)) !== JSON.stringify(op.value)) throw patchFailure(`testing value ${op.path} failed: test failed`);
        break;
      default:
        throw badRequest(`Unexpected kind: ${op.op}`);
    }
  }
  return doc;
}
