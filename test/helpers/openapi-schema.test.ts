import { describe, expect, it } from 'vitest';
import { pruneAndDefault, schemaViolations, validateAgainstSchema } from './openapi-schema.js';

const policySchema = {
  type: 'object',
  required: ['spec'],
  properties: {
    spec: {
      type: 'object',
      required: ['rules'],
      properties: {
        action: { type: 'string', enum: ['ALLOW', 'DENY'], default: 'ALLOW' },
        rules: {
          type: 'array',
          minItems: 1,
          maxItems: 2,
          items: {
            type: 'object',
            required: ['from'],
            properties: {
              from: { type: 'array', items: { type: 'string', minLength: 1, maxLength: 10, pattern: '^[a-z/:.]+$' } },
              ports: { type: 'array', items: { type: 'integer', minimum: 1, maximum: 65535 } },
            },
          },
        },
        labels: { type: 'object', additionalProperties: { type: 'string' } },
        extra: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
        note: { type: 'string', nullable: true },
      },
    },
  },
};

function policy(spec: unknown): object {
  return { apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'p', namespace: 'default', labels: { a: 'b' } }, spec };
}

describe('validateAgainstSchema', () => {
  it('accepts a valid object, with apiVersion/kind/metadata always declared at the root', () => {
    expect(validateAgainstSchema(policySchema, policy({ rules: [{ from: ['a'] }] }), { strict: true })).toEqual([]);
  });

  it('names missing required fields with their path', () => {
    expect(validateAgainstSchema(policySchema, policy({ rules: [{}] }))).toEqual(['spec.rules[0].from: Required value']);
    expect(validateAgainstSchema(policySchema, { apiVersion: 'v', kind: 'K', metadata: {} })).toEqual(['spec: Required value']);
  });

  it('reports wrong types the way the API server does, and stops descending there', () => {
    expect(validateAgainstSchema(policySchema, policy({ rules: 'x' }))).toEqual([
      'spec.rules: Invalid value: "string": spec.rules in body must be of type array: "string"',
    ]);
    expect(validateAgainstSchema(policySchema, policy({ rules: [{ from: ['a'], ports: [1.5] }] }))).toEqual([
      'spec.rules[0].ports[0]: Invalid value: "number": spec.rules[0].ports[0] in body must be of type integer: "number"',
    ]);
  });

  it('checks enum, pattern, string lengths, array sizes and numeric bounds', () => {
    expect(validateAgainstSchema(policySchema, policy({ action: 'MAYBE', rules: [{ from: [''] }, { from: ['ABC', 'abcdefghijk'], ports: [0, 70000] }, { from: [] }] }))).toEqual([
      'spec.action: Unsupported value: "MAYBE": supported values: "ALLOW", "DENY"',
      'spec.rules: Too many: 3: must have at most 2 items',
      'spec.rules[0].from[0]: Invalid value: "": spec.rules[0].from[0] in body should be at least 1 chars long',
      'spec.rules[0].from[0]: Invalid value: "": spec.rules[0].from[0] in body should match \'^[a-z/:.]+$\'',
      'spec.rules[1].from[0]: Invalid value: "ABC": spec.rules[1].from[0] in body should match \'^[a-z/:.]+$\'',
      'spec.rules[1].from[1]: Invalid value: "abcdefghijk": spec.rules[1].from[1] in body should be at most 10 chars long',
      'spec.rules[1].ports[0]: Invalid value: 0: spec.rules[1].ports[0] in body should be greater than or equal to 1',
      'spec.rules[1].ports[1]: Invalid value: 70000: spec.rules[1].ports[1] in body should be less than or equal to 65535',
    ]);
    expect(validateAgainstSchema(policySchema, policy({ rules: [] }))).toEqual([
      'spec.rules: Invalid value: "array": spec.rules in body should have at least 1 items',
    ]);
  });

  it('counts string length in characters, not bytes', () => {
    expect(validateAgainstSchema({ type: 'string', maxLength: 2 }, 'éé')).toEqual([]);
  });

  it('ignores unknown fields unless strict, and never inside x-kubernetes-preserve-unknown-fields', () => {
    const v = policy({ rules: [{ from: ['a'], bogus: 1 }], extra: { anything: { goes: true } }, labels: { x: 'y' } });
    expect(validateAgainstSchema(policySchema, v)).toEqual([]);
    expect(validateAgainstSchema(policySchema, v, { strict: true })).toEqual(['spec.rules[0].bogus: field not declared in schema']);
    expect(validateAgainstSchema(policySchema, { ...v, status: {} }, { strict: true })).toContain('status: field not declared in schema');
  });

  it('checks additionalProperties values', () => {
    expect(validateAgainstSchema(policySchema, policy({ rules: [{ from: ['a'] }], labels: { x: 1 } }))).toEqual([
      'spec.labels.x: Invalid value: "integer": spec.labels.x in body must be of type string: "integer"',
    ]);
  });

  it('allows null only where nullable', () => {
    expect(validateAgainstSchema(policySchema, policy({ rules: [{ from: ['a'] }], note: null }))).toEqual([]);
    expect(validateAgainstSchema(policySchema, policy({ rules: null }))).toEqual([
      'spec.rules: Invalid value: "null": spec.rules in body must be of type array: "null"',
    ]);
  });

  it('checks formats and int-or-string', () => {
    expect(validateAgainstSchema({ type: 'string', format: 'date-time' }, '2024-01-02T03:04:05Z')).toEqual([]);
    expect(validateAgainstSchema({ type: 'string', format: 'date-time' }, 'yesterday')).toEqual([
      '<root>: Invalid value: "yesterday": <root> in body must be of type date-time: "yesterday"',
    ]);
    expect(validateAgainstSchema({ type: 'string', format: 'ipv4' }, '10.0.0.300')).toHaveLength(1);
    expect(validateAgainstSchema({ type: 'string', format: 'cidr' }, '10.0.0.0/8')).toEqual([]);
    expect(validateAgainstSchema({ type: 'string', format: 'uuid' }, '8ff324d8-b378-478a-9962-ecab7fc0e894')).toEqual([]);
    expect(validateAgainstSchema({ type: 'string', format: 'no-such-format' }, 'x')).toEqual([]);
    const port = { 'x-kubernetes-int-or-string': true };
    expect(validateAgainstSchema(port, 8080)).toEqual([]);
    expect(validateAgainstSchema(port, 'http')).toEqual([]);
    expect(validateAgainstSchema(port, true)).toHaveLength(1);
  });

  it('evaluates oneOf, anyOf, allOf and not of value validations', () => {
    const s = {
      type: 'object',
      properties: { a: { type: 'string' }, b: { type: 'string' } },
      oneOf: [{ required: ['a'] }, { required: ['b'] }],
    };
    expect(validateAgainstSchema(s, { a: 'x' })).toEqual([]);
    expect(validateAgainstSchema(s, { a: 'x', b: 'y' })).toEqual(['<root>: Invalid value: "object": <root> in body must validate one and only one schema (oneOf)']);
    expect(validateAgainstSchema(s, {})[0]).toMatch(/must validate one and only one schema \(oneOf\); a: Required value, b: Required value$/);
    const any = { type: 'string', anyOf: [{ pattern: '^a' }, { pattern: 'z$' }] };
    expect(validateAgainstSchema(any, 'abc')).toEqual([]);
    expect(validateAgainstSchema(any, 'bcd')[0]).toMatch(/must validate at least one schema \(anyOf\)/);
    expect(validateAgainstSchema({ type: 'integer', allOf: [{ minimum: 1 }, { maximum: 3 }] }, 5)).toEqual([
      '<root>: Invalid value: 5: <root> in body should be less than or equal to 3',
    ]);
    expect(validateAgainstSchema({ type: 'string', not: { enum: ['root'] } }, 'root')).toEqual([
      '<root>: Invalid value: "root": <root> in body must not validate the schema (not)',
    ]);
  });

  it('gives structured causes for the API server Status', () => {
    expect(schemaViolations(policySchema, policy({ rules: [{}] }))).toEqual([
      { reason: 'FieldValueRequired', field: 'spec.rules[0].from', message: 'Required value' },
    ]);
  });
});

describe('pruneAndDefault', () => {
  it('drops undeclared fields, keeps preserved ones and the root metadata, fills defaults, leaves its input alone', () => {
    const input = policy({ rules: [{ from: ['a'], bogus: 1 }], extra: { kept: 1 }, junk: true });
    const before = JSON.stringify(input);
    const { value, pruned } = pruneAndDefault(policySchema, { ...input, status: { x: 1 } });
    expect(value).toEqual({
      apiVersion: 'security.ward.dev/v1alpha1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'p', namespace: 'default', labels: { a: 'b' } },
      spec: { action: 'ALLOW', rules: [{ from: ['a'] }], extra: { kept: 1 } },
    });
    expect(pruned.sort()).toEqual(['spec.junk', 'spec.rules[0].bogus', 'status']);
    expect(JSON.stringify(input)).toBe(before);
  });
});
