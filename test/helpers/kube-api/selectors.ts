/**
 * Label selectors (=, ==, !=, in, notin, exists, !key, >, <) and field selectors (=, ==, !=) with
 * the real server's semantics: `!=` and `notin` match objects without the key. Tests only.
 */
import { badRequest } from './status.js';

type LabelRequirement =
  | { key: string; op: 'eq' | 'neq' | 'gt' | 'lt'; value: string }
  | { key: string; op: 'in' | 'notin'; values: string[] }
  | { key: string; op: 'exists' | 'notexists' };

export type ObjectFilter = (obj: Record<string, unknown>) => boolean;

const NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const PREFIX = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function checkKey(key: string): void {
  const slash = key.indexOf('/');
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  if (!NAME.test(name) || (prefix !== undefined && (prefix.length > 253 || !PREFIX.test(prefix)))) {
    throw badRequest(`unable to parse requirement: <nil>: Invalid value: "${key}": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character`);
  }
}

function checkValue(value: string): void {
  if (value !== '' && !NAME.test(value)) {
    throw badRequest(`unable to parse requirement: values[0][]: Invalid value: "${value}": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character`);
  }
}

/** Splits on commas outside parentheses. */
function splitTopLevel(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  out.push(cur);
  return out.map((x) => x.trim()).filter((x) => x !== '');
}

function parseRequirement(r: string): LabelRequirement {
  if (r.startsWith('!')) {
    const key = r.slice(1).trim();
    checkKey(key);
    return { key, op: 'notexists' };
  }
  const set = /^(\S+)\s+(in|notin)\s*\(([^()]*)\)$/.exec(r);
  if (set !== null) {
    checkKey(set[1]);
    const values = set[3].split(',').map((v) => v.trim());
    values.forEach(checkValue);
    return { key: set[1], op: set[2] as 'in' | 'notin', values };
  }
  const bin = /^([^=!<>\s]+)\s*(==|=|!=|<|>)\s*([^=!<>\s]*)$/.exec(r);
  if (bin !== null) {
    checkKey(bin[1]);
    const op = bin[2] === '!=' ? 'neq' : bin[2] === '<' ? 'lt' : bin[2] === '>' ? 'gt' : 'eq';
    if ((op === 'lt' || op === 'gt') && !/^-?\d+$/.test(bin[3])) {
      throw badRequest(`unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer`);
    }
    checkValue(bin[3]);
    return { key: bin[1], op, value: bin[3] };
  }
  if (/^[^=!<>\s(),]+$/.test(r)) {
    checkKey(r);
    return { key: r, op: 'exists' };
  }
  throw badRequest(`unable to parse requirement: found '${r}', expected: key, !key, key=value, key!=value, key in (values) or key notin (values)`);
}

function matches(req: LabelRequirement, labels: Record<string, string>): boolean {
  const has = Object.hasOwn(labels, req.key);
  const v = labels[req.key];
  switch (req.op) {
    case 'eq': return has && v === req.value;
    case 'neq': return !(has && v === req.value);
    case 'in': return has && req.values.includes(v);
    case 'notin': return !(has && req.values.includes(v));
    case 'exists': return has;
    case 'notexists': return !has;
    case 'gt': return has && /^-?\d+$/.test(v) && Number(v) > Number(req.value);
    case 'lt': return has && /^-?\d+$/.test(v) && Number(v) < Number(req.value);
  }
}

/** A filter for a labelSelector query parameter (empty or absent: everything). Throws a 400 KubeApiError. */
export function labelFilter(selector: string | undefined): ObjectFilter {
  if (selector === undefined || selector.trim() === '') return () => true;
  const reqs = splitTopLevel(selector).map(parseRequirement);
  return (obj) => {
    const labels = ((obj.metadata as Record<string, unknown> | undefined)?.labels ?? {}) as Record<string, string>;
    return reqs.every((r) => matches(r, labels));
  };
}

/** The value a field selector compares: a dotted path, booleans and numbers as text, absent as ''. */
export function fieldValue(obj: Record<string, unknown>, field: string): string {
  let cur: unknown = obj;
  for (const part of field.split('.')) {
    if (typeof cur !== 'object' || cur === null) return '';
    cur = (cur as Record<string, unknown>)[part];
  }
  if (cur === undefined || cur === null) return '';
  return typeof cur === 'object' ? JSON.stringify(cur) : String(cur);
}

function unescapeFieldValue(v: string): string {
  return v.replace(/\\([\\,=])/g, '$1');
}

/**
 * A filter for a fieldSelector query parameter. `allowed` are the fields the type supports besides
 * metadata.name and metadata.namespace; any other field is a 400, as on the real server.
 */
export function fieldFilter(selector: string | undefined, allowed: readonly string[]): ObjectFilter {
  if (selector === undefined || selector.trim() === '') return () => true;
  const terms = selector.split(/(?<!\\),/).map((t) => t.trim()).filter((t) => t !== '').map((t) => {
    const m = /^([^=!]+?)\s*(==|=|!=)\s*(.*)$/.exec(t);
    if (m === null) throw badRequest(`invalid selector: '${selector}'; can't understand '${t}'`);
    const field = m[1];
    if (field !== 'metadata.name' && field !== 'metadata.namespace' && !allowed.includes(field)) {
      throw badRequest(`field label not supported: ${field}`);
    }
    return { field, negate: m[2] === '!=', value: unescapeFieldValue(m[3]) };
  });
  return (obj) => terms.every((t) => (fieldValue(obj, t.field) === t.value) !== t.negate);
}
