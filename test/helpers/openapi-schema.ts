/**
 * Test helper: the subset of structural OpenAPI v3 schema validation that the Kubernetes API server
 * applies to custom resources (CustomResourceDefinition `openAPIV3Schema`), with the same field
 * paths and the same wording of messages, so a test can assert what `kubectl create` would print.
 * Tests only.
 *
 * Supported: type (object, array, string, integer, number, boolean), nullable, properties, required,
 * additionalProperties (schema or boolean), items, enum, pattern, minLength/maxLength (in runes, as
 * the server counts), minItems/maxItems, minProperties/maxProperties, minimum/maximum (with the
 * boolean exclusiveMinimum/exclusiveMaximum), multipleOf, format (int32, int64, float, double, byte,
 * date, date-time, uuid, ipv4, ipv6, cidr, mac, hostname, email, uri; unknown formats pass, as on the
 * server), default (by pruneAndDefault), x-kubernetes-preserve-unknown-fields,
 * x-kubernetes-int-or-string, x-kubernetes-embedded-resource, and allOf/anyOf/oneOf/not whose
 * branches carry value validations (structural schemas allow nothing else there).
 *
 * Unknown fields: the server by default PRUNES fields its schema does not declare (unless
 * x-kubernetes-preserve-unknown-fields), which is `pruneAndDefault`; with fieldValidation=Strict
 * (`kubectl --validate=strict`) it REFUSES them, which is `validateAgainstSchema(…, { strict: true })`.
 * At the root of a schema `apiVersion`, `kind` and `metadata` are always declared (the server never
 * prunes them), and so are they inside an x-kubernetes-embedded-resource.
 */

/** One schema violation, shaped like a Kubernetes `StatusCause` (reason, field, message). */
export interface SchemaViolation {
  /** The StatusCause reason the API server reports for it. */
  reason: 'FieldValueRequired' | 'FieldValueInvalid' | 'FieldValueTypeInvalid' | 'FieldValueNotSupported' | 'FieldValueTooMany' | 'FieldValueUnknown';
  /** Field path as the server writes it: `spec.rules[0].from`. */
  field: string;
  /** The message after the field: `Required value`, `Unsupported value: "x": supported values: "a", "b"`. */
  message: string;
}

export interface SchemaOptions {
  /** Refuse fields the schema does not declare (fieldValidation=Strict) instead of ignoring them. */
  strict?: boolean;
}

type Schema = Record<string, unknown>;

/**
 * Validates `value` against a structural OpenAPI v3 schema. Returns one message per violation,
 * each `<field>: <message>` as the API server prints it (e.g. `spec.rules[0].from: Required value`);
 * empty means valid.
 */
export function validateAgainstSchema(schema: object, value: unknown, o: SchemaOptions = {}): string[] {
  return schemaViolations(schema, value, o).map((v) => `${v.field}: ${v.message}`);
}

/** The same check as validateAgainstSchema, with each violation as a structured cause. */
export function schemaViolations(schema: object, value: unknown, o: SchemaOptions = {}): SchemaViolation[] {
  const out: SchemaViolation[] = [];
  check(schema as Schema, value, '', true, o.strict === true, out);
  return out;
}

/**
 * What the server does before validating: drops every field the schema does not declare (unless
 * x-kubernetes-preserve-unknown-fields) and fills `default`s. Returns a new value (the input is not
 * changed) and the paths of the pruned fields (what fieldValidation=Warn reports).
 */
export function pruneAndDefault(schema: object, value: unknown): { value: unknown; pruned: string[] } {
  const pruned: string[] = [];
  return { value: prune(schema as Schema, structuredClone(value), '', true, pruned), pruned };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function child(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

function shown(path: string): string {
  return path === '' ? '<root>' : path;
}

/** A value as Go's %q / %v would print it in a field error. */
function quote(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  if (typeof v === 'object') return JSON.stringify(Array.isArray(v) ? 'array' : 'object');
  return String(v);
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function typeMatches(type: string, v: unknown): boolean {
  switch (type) {
    case 'object': return isObject(v);
    case 'array': return Array.isArray(v);
    case 'string': return typeof v === 'string';
    case 'integer': return typeof v === 'number' && Number.isInteger(v);
    case 'number': return typeof v === 'number' && Number.isFinite(v);
    case 'boolean': return typeof v === 'boolean';
    default: return true;
  }
}

function schemaOf(s: unknown): Schema | undefined {
  return isObject(s) ? s : undefined;
}

/** Properties a schema declares for an object, or undefined when any field is allowed. */
function declared(s: Schema, root: boolean): { props: Record<string, unknown>; extra: Schema | undefined; any: boolean } {
  const props = isObject(s.properties) ? s.properties : {};
  const additional = s.additionalProperties;
  const any = s['x-kubernetes-preserve-unknown-fields'] === true || additional === true;
  const extra = schemaOf(additional);
  const withRoot = root || s['x-kubernetes-embedded-resource'] === true;
  if (withRoot) {
    // The server checks metadata itself (ObjectMeta), whatever the schema says of it.
    return { props: { apiVersion: { type: 'string' }, kind: { type: 'string' }, ...props, metadata: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } }, extra, any };
  }
  return { props, extra, any };
}

const FORMATS: Record<string, (s: string) => boolean> = {
  int32: (s) => /^-?\d+$/.test(s) && Math.abs(Number(s)) <= 2 ** 31,
  int64: (s) => /^-?\d+$/.test(s),
  float: (s) => s.trim() !== '' && Number.isFinite(Number(s)),
  double: (s) => s.trim() !== '' && Number.isFinite(Number(s)),
  byte: (s) => /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(s),
  date: (s) => /^\d{4}-\d{2}-\d{2}$/.test(s) && !Number.isNaN(Date.parse(`${s}T00:00:00Z`)),
  'date-time': (s) => /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/.test(s) && !Number.isNaN(Date.parse(s)),
  uuid: (s) => /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i.test(s),
  ipv4: (s) => /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/.test(s),
  ipv6: (s) => s.includes(':') && /^[0-9a-fA-F:.]+$/.test(s) && (s.match(/::/g) ?? []).length <= 1,
  cidr: (s) => {
    const [ip, bits, more] = s.split('/');
    if (more !== undefined || bits === undefined || !/^\d+$/.test(bits)) return false;
    return (FORMATS.ipv4(ip) && Number(bits) <= 32) || (FORMATS.ipv6(ip) && Number(bits) <= 128);
  },
  mac: (s) => /^(?:[0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$/.test(s),
  hostname: (s) => s.length <= 253 && /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/i.test(s),
  email: (s) => /^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(s),
  uri: (s) => { try { new URL(s); return true; } catch { return false; } },
};

/** Compiled patterns, once per pattern string (schemas are validated many times). */
const PATTERNS = new Map<string, RegExp | null>();
function compiled(p: string): RegExp | null {
  let r = PATTERNS.get(p);
  if (r === undefined) {
    try { r = new RegExp(p, 'u'); } catch { r = null; }
    if (PATTERNS.size < 1000) PATTERNS.set(p, r);
  }
  return r;
}

function check(s: Schema, v: unknown, path: string, root: boolean, strict: boolean, out: SchemaViolation[]): void {
  const at = shown(path);
  const invalid = (detail: string): void => void out.push({ reason: 'FieldValueInvalid', field: at, message: `Invalid value: ${quote(v)}: ${detail}` });

  if (v === null) {
    if (s.nullable === true || (s['x-kubernetes-preserve-unknown-fields'] === true && s.type === undefined)) return;
    if (typeof s.type === 'string') {
      out.push({ reason: 'FieldValueTypeInvalid', field: at, message: `Invalid value: "null": ${at} in body must be of type ${s.type}: "null"` });
    }
    return;
  }
  if (s['x-kubernetes-int-or-string'] === true) {
    if (!(typeof v === 'string' || (typeof v === 'number' && Number.isInteger(v)))) {
      out.push({ reason: 'FieldValueTypeInvalid', field: at, message: `Invalid value: ${quote(typeName(v))}: ${at} in body must be of type integer,string: ${quote(typeName(v))}` });
      return;
    }
  } else if (typeof s.type === 'string' && !typeMatches(s.type, v)) {
    out.push({ reason: 'FieldValueTypeInvalid', field: at, message: `Invalid value: ${quote(typeName(v))}: ${at} in body must be of type ${s.type}: ${quote(typeName(v))}` });
    return; // nothing below is meaningful for a value of the wrong type
  }

  if (Array.isArray(s.enum) && !s.enum.some((e) => JSON.stringify(e) === JSON.stringify(v))) {
    out.push({ reason: 'FieldValueNotSupported', field: at, message: `Unsupported value: ${JSON.stringify(v)}: supported values: ${s.enum.map((e) => JSON.stringify(e)).join(', ')}` });
  }

  if (typeof v === 'string') {
    const runes = [...v].length;
    if (typeof s.minLength === 'number' && runes < s.minLength) invalid(`${at} in body should be at least ${s.minLength} chars long`);
    if (typeof s.maxLength === 'number' && runes > s.maxLength) invalid(`${at} in body should be at most ${s.maxLength} chars long`);
    if (typeof s.pattern === 'string') {
      const r = compiled(s.pattern);
      if (r !== null && !r.test(v)) invalid(`${at} in body should match '${s.pattern}'`);
    }
    if (typeof s.format === 'string' && FORMATS[s.format] !== undefined && !FORMATS[s.format](v)) {
      invalid(`${at} in body must be of type ${s.format}: ${JSON.stringify(v)}`);
    }
  }

  if (typeof v === 'number') {
    if (typeof s.minimum === 'number') {
      if (s.exclusiveMinimum === true ? v <= s.minimum : v < s.minimum) {
        invalid(`${at} in body should be greater than ${s.exclusiveMinimum === true ? '' : 'or equal to '}${s.minimum}`);
      }
    }
    if (typeof s.maximum === 'number') {
      if (s.exclusiveMaximum === true ? v >= s.maximum : v > s.maximum) {
        invalid(`${at} in body should be less than ${s.exclusiveMaximum === true ? '' : 'or equal to '}${s.maximum}`);
      }
    }
    if (typeof s.multipleOf === 'number' && s.multipleOf > 0 && Math.abs(v / s.multipleOf - Math.round(v / s.multipleOf)) > 1e-9) {
      invalid(`${at} in body should be a multiple of ${s.multipleOf}`);
    }
  }

  if (Array.isArray(v)) {
    if (typeof s.minItems === 'number' && v.length < s.minItems) invalid(`${at} in body should have at least ${s.minItems} items`);
    if (typeof s.maxItems === 'number' && v.length > s.maxItems) {
      out.push({ reason: 'FieldValueTooMany', field: at, message: `Too many: ${v.length}: must have at most ${s.maxItems} items` });
    }
    const items = schemaOf(s.items);
    if (items !== undefined) v.forEach((item, i) => check(items, item, `${path}[${i}]`, false, strict, out));
  }

  if (isObject(v)) {
    const keys = Object.keys(v);
    if (typeof s.minProperties === 'number' && keys.length < s.minProperties) invalid(`${at} in body should have at least ${s.minProperties} properties`);
    if (typeof s.maxProperties === 'number' && keys.length > s.maxProperties) invalid(`${at} in body should have at most ${s.maxProperties} properties`);
    if (Array.isArray(s.required)) {
      for (const r of s.required) {
        if (typeof r === 'string' && !(r in v)) out.push({ reason: 'FieldValueRequired', field: child(path, r), message: 'Required value' });
      }
    }
    const { props, extra, any } = declared(s, root);
    for (const k of keys) {
      const p = schemaOf(props[k]);
      if (p !== undefined) check(p, v[k], child(path, k), false, strict, out);
      else if (extra !== undefined) check(extra, v[k], child(path, k), false, strict, out);
      else if (strict && !any && (s.type === 'object' || s.properties !== undefined)) {
        out.push({ reason: 'FieldValueUnknown', field: child(path, k), message: 'field not declared in schema' });
      }
    }
  }

  combinators(s, v, path, at, out);
}

function combinators(s: Schema, v: unknown, path: string, at: string, out: SchemaViolation[]): void {
  // Branches of allOf/anyOf/oneOf/not hold value validations only (structural schema rule), so they
  // never decide about unknown fields: check them non-strict.
  const passes = (b: unknown): SchemaViolation[] => {
    const errs: SchemaViolation[] = [];
    const bs = schemaOf(b);
    if (bs !== undefined) check(bs, v, path, false, false, errs);
    return errs;
  };
  const value = quote(v);
  if (Array.isArray(s.allOf)) for (const b of s.allOf) out.push(...passes(b));
  if (Array.isArray(s.anyOf) && s.anyOf.length > 0) {
    const results = s.anyOf.map(passes);
    if (!results.some((r) => r.length === 0)) {
      const why = results.flat().map((e) => `${e.field}: ${e.message}`).join(', ');
      out.push({ reason: 'FieldValueInvalid', field: at, message: `Invalid value: ${value}: ${at} in body must validate at least one schema (anyOf)${why === '' ? '' : `; ${why}`}` });
    }
  }
  if (Array.isArray(s.oneOf) && s.oneOf.length > 0) {
    const results = s.oneOf.map(passes);
    const ok = results.filter((r) => r.length === 0).length;
    if (ok !== 1) {
      const why = ok === 0 ? results.flat().map((e) => `${e.field}: ${e.message}`).join(', ') : '';
      out.push({ reason: 'FieldValueInvalid', field: at, message: `Invalid value: ${value}: ${at} in body must validate one and only one schema (oneOf)${why === '' ? '' : `; ${why}`}` });
    }
  }
  if (s.not !== undefined && passes(s.not).length === 0) {
    out.push({ reason: 'FieldValueInvalid', field: at, message: `Invalid value: ${value}: ${at} in body must not validate the schema (not)` });
  }
}

function prune(s: Schema, v: unknown, path: string, root: boolean, pruned: string[]): unknown {
  if (Array.isArray(v)) {
    const items = schemaOf(s.items);
    return items === undefined ? v : v.map((item, i) => prune(items, item, `${path}[${i}]`, false, pruned));
  }
  if (!isObject(v)) return v;
  const { props, extra, any } = declared(s, root);
  const typed = s.type === 'object' || s.properties !== undefined || s.additionalProperties !== undefined;
  for (const [k, sub] of Object.entries(props)) {
    const p = schemaOf(sub);
    if (p !== undefined && !(k in v) && p.default !== undefined) v[k] = structuredClone(p.default);
  }
  for (const k of Object.keys(v)) {
    const p = schemaOf(props[k]) ?? extra;
    if (p !== undefined) v[k] = prune(p, v[k], child(path, k), false, pruned);
    else if (typed && !any) {
      delete v[k];
      pruned.push(child(path, k));
    }
  }
  return v;
}
