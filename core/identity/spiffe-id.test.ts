import { describe, expect, it } from 'vitest';
import { WardError } from '../errors.js';
import {
  MAX_ID_LENGTH,
  MAX_TRUST_DOMAIN_LENGTH,
  SpiffeId,
  parseTrustDomain,
  pathError,
  trustDomainError,
} from './index.js';

// The SPIFFE-ID standard (spiffe/spiffe standards/SPIFFE-ID.md) restricts trust domains to
// [a-z0-9.-_] and path segments to [a-zA-Z0-9.-_], with no empty, "." or ".." segment, no query,
// fragment, port, userinfo or percent-encoding, the trust domain at most 255 bytes and the whole ID
// at most 2048 bytes. The sets are written out literally here, independent of the implementation's
// tables, so a wrong table entry fails a test.
const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const DIGITS = '0123456789';
const TD_ALLOWED = new Set([...LOWER, ...DIGITS, '.', '-', '_']);
const PATH_ALLOWED = new Set([...LOWER, ...UPPER, ...DIGITS, '.', '-', '_']);

// Beyond the Latin-1 range: look-alikes that case-fold or normalize to ASCII (Kelvin sign, long s,
// dotted I, fullwidth a, Cyrillic a), invisible characters, an astral code point and lone surrogates.
const NON_ASCII = ['\u0130', '\u017f', '\u212a', '\uff41', '\u0430', '\u200b', '\ufeff', '\u{1f600}', '\ud800', '\udfff', 'é', 'ß'];

function rejection(input: string): WardError {
  try {
    SpiffeId.parse(input);
  } catch (err) {
    expect(err).toBeInstanceOf(WardError);
    return err as WardError;
  }
  throw new Error(`expected ${JSON.stringify(input)} to be rejected`);
}

/** Asserts the input is rejected with WARD_ID_INVALID and a message naming the reason. */
function expectInvalid(input: string, reason: RegExp): void {
  const err = rejection(input);
  expect(err.code).toBe('WARD_ID_INVALID');
  expect(err.message).toMatch(/^invalid SPIFFE ID /);
  expect(err.message).toMatch(reason);
  expect(SpiffeId.tryParse(input)).toBeUndefined();
}

function accepts(input: string): boolean {
  return SpiffeId.tryParse(input) !== undefined;
}

function codeUnits(from: number, to: number): string[] {
  const out: string[] = [];
  for (let c = from; c <= to; c++) out.push(String.fromCharCode(c));
  return out;
}
const ALL_BYTES = codeUnits(0, 255);

function show(chars: Iterable<string>): string[] {
  return [...chars].map((ch) => `U+${ch.codePointAt(0)!.toString(16).padStart(4, '0')}`).sort();
}

describe('SpiffeId.parse: valid IDs', () => {
  it.each([
    ['spiffe://example.org', 'example.org', ''],
    ['spiffe://example.org/workload', 'example.org', '/workload'],
    ['spiffe://k8s-west.example.com/ns/staging/sa/default', 'k8s-west.example.com', '/ns/staging/sa/default'],
    ['spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453', 'example.com', '/9eebccd2-12bf-40a6-b262-65fe0487d453'],
    ['spiffe://a', 'a', ''],
    ['spiffe://td_with_underscore/Path_With.Mixed-Case', 'td_with_underscore', '/Path_With.Mixed-Case'],
    ['spiffe://1.2.3.4/x', '1.2.3.4', '/x'],
    ['spiffe://.-_/.-_', '.-_', '/.-_'],
    ['spiffe://example.org/...', 'example.org', '/...'],
    ['spiffe://example.org/.a/a./..a/a..', 'example.org', '/.a/a./..a/a..'],
    ['spiffe://example.org/ward/node/NODE-1', 'example.org', '/ward/node/NODE-1'],
  ])('%s', (input, trustDomain, path) => {
    const id = SpiffeId.parse(input);
    expect(id.trustDomain).toBe(trustDomain);
    expect(id.path).toBe(path);
    expect(id.toString()).toBe(input);
  });
});

describe('every code unit 0..255 in a trust-domain position', () => {
  it('parseTrustDomain accepts exactly [a-z0-9.-_] at the start, middle and end', () => {
    for (const wrap of [(ch: string) => `${ch}b`, (ch: string) => `a${ch}b`, (ch: string) => `a${ch}`]) {
      const accepted = ALL_BYTES.filter((ch) => trustDomainError(wrap(ch)) === undefined);
      expect(show(accepted)).toEqual(show(TD_ALLOWED));
    }
  });

  it('a lone code unit is a trust domain exactly when it is in the set', () => {
    const accepted = ALL_BYTES.filter((ch) => trustDomainError(ch) === undefined);
    expect(show(accepted)).toEqual(show(TD_ALLOWED));
  });

  it('SpiffeId.parse accepts exactly [a-z0-9.-_] (and "/" only as the path separator)', () => {
    // "/" ends the trust domain, so "spiffe://a/b/p" is a valid ID in trust domain "a"; it is
    // checked separately below rather than counted as a trust-domain character.
    const candidates = ALL_BYTES.filter((ch) => ch !== '/');
    for (const wrap of [(ch: string) => `spiffe://${ch}b/p`, (ch: string) => `spiffe://a${ch}b/p`, (ch: string) => `spiffe://a${ch}/p`, (ch: string) => `spiffe://a${ch}`]) {
      const accepted = candidates.filter((ch) => accepts(wrap(ch)));
      expect(show(accepted)).toEqual(show(TD_ALLOWED));
    }
    expect(SpiffeId.parse('spiffe://a/b/p').trustDomain).toBe('a');
    expect(trustDomainError('a/b')).toBeDefined();
  });

  it('every rejected code unit yields WARD_ID_INVALID with a reason', () => {
    for (const ch of ALL_BYTES) {
      if (TD_ALLOWED.has(ch) || ch === '/') continue;
      const err = rejection(`spiffe://a${ch}b/p`);
      expect(err.code).toBe('WARD_ID_INVALID');
      expect(err.message).toMatch(/trust domain|port|userinfo|percent/);
      expect(() => parseTrustDomain(`a${ch}b`)).toThrow(WardError);
    }
  });

  it('rejects non-ASCII code points, including ones that case-fold to ASCII', () => {
    for (const ch of NON_ASCII) {
      expect(trustDomainError(`a${ch}b`), ch).toBeDefined();
      expectInvalid(`spiffe://a${ch}b/p`, /trust domain contains a disallowed character/);
    }
  });
});

describe('every code unit 0..255 in a path position', () => {
  it('pathError accepts exactly [a-zA-Z0-9.-_] at the start, middle and end of a segment', () => {
    const candidates = ALL_BYTES.filter((ch) => ch !== '/');
    for (const wrap of [(ch: string) => `/${ch}b`, (ch: string) => `/a${ch}b`, (ch: string) => `/a${ch}`, (ch: string) => `/x/a${ch}b/y`]) {
      const accepted = candidates.filter((ch) => pathError(wrap(ch)) === undefined);
      expect(show(accepted)).toEqual(show(PATH_ALLOWED));
    }
  });

  it('SpiffeId.parse accepts exactly [a-zA-Z0-9.-_] in a path segment', () => {
    const candidates = ALL_BYTES.filter((ch) => ch !== '/');
    for (const wrap of [(ch: string) => `spiffe://example.org/${ch}b`, (ch: string) => `spiffe://example.org/a${ch}b`, (ch: string) => `spiffe://example.org/a/b${ch}`]) {
      const accepted = candidates.filter((ch) => accepts(wrap(ch)));
      expect(show(accepted)).toEqual(show(PATH_ALLOWED));
    }
  });

  it('a one-character segment is valid exactly for the set minus "."', () => {
    const accepted = ALL_BYTES.filter((ch) => accepts(`spiffe://example.org/${ch}`));
    const expected = new Set(PATH_ALLOWED);
    expected.delete('.');
    expect(show(accepted)).toEqual(show(expected));
  });

  it('"/" separates segments and is never part of one', () => {
    expect(SpiffeId.parse('spiffe://example.org/a/b').path).toBe('/a/b');
    expectInvalid('spiffe://example.org//b', /empty segment/);
    expectInvalid('spiffe://example.org/a/', /must not end with "\/"/);
  });

  it('every rejected code unit yields WARD_ID_INVALID with a reason', () => {
    for (const ch of ALL_BYTES) {
      if (PATH_ALLOWED.has(ch) || ch === '/') continue;
      const err = rejection(`spiffe://example.org/a${ch}b`);
      expect(err.code).toBe('WARD_ID_INVALID');
      expect(err.message).toMatch(/path contains a disallowed character|query|fragment|percent/);
    }
  });

  it('rejects non-ASCII code points, including ones that case-fold to ASCII', () => {
    for (const ch of NON_ASCII) {
      expect(pathError(`/a${ch}b`), ch).toBeDefined();
      expectInvalid(`spiffe://example.org/a${ch}b`, /path contains a disallowed character/);
    }
  });
});

describe('path segments', () => {
  it.each([
    ['spiffe://example.org/', /must not end with "\/"/],
    ['spiffe://example.org/a/', /must not end with "\/"/],
    ['spiffe://example.org/a/b/', /must not end with "\/"/],
    ['spiffe://example.org//', /empty segment/],
    ['spiffe://example.org//a', /empty segment/],
    ['spiffe://example.org/a//b', /empty segment/],
    ['spiffe://example.org/a//', /empty segment/],
    ['spiffe://example.org/.', /"\." segment/],
    ['spiffe://example.org/./a', /"\." segment/],
    ['spiffe://example.org/a/./b', /"\." segment/],
    ['spiffe://example.org/a/.', /"\." segment/],
    ['spiffe://example.org/..', /"\.\." segment/],
    ['spiffe://example.org/../a', /"\.\." segment/],
    ['spiffe://example.org/a/../b', /"\.\." segment/],
    ['spiffe://example.org/a/..', /"\.\." segment/],
  ])('rejects %s', (input, reason) => {
    expectInvalid(input, reason);
  });

  it('accepts segments that merely contain dots', () => {
    for (const seg of ['...', '....', '.a', 'a.', '..a', 'a..', '.-', '_.']) {
      expect(SpiffeId.parse(`spiffe://example.org/${seg}`).path).toBe(`/${seg}`);
    }
  });

  it('pathError checks a bare path', () => {
    expect(pathError('')).toBeUndefined();
    expect(pathError('/a/b')).toBeUndefined();
    expect(pathError('a/b')).toMatch(/must start with "\/"/);
    expect(pathError('/')).toMatch(/must not end with "\/"/);
  });
});

describe('URI components that a SPIFFE ID must not have', () => {
  it.each([
    ['spiffe://example.org:8080/p', /port/],
    ['spiffe://example.org:8080', /port/],
    ['spiffe://example.org:/p', /port/],
    ['spiffe://user@example.org/p', /userinfo/],
    ['spiffe://user:password@example.org/p', /userinfo/],
    ['spiffe://user:password@example.org:443/p', /userinfo/],
    ['spiffe://@example.org', /userinfo/],
    ['spiffe://example.org/p?q=1', /query is not allowed/],
    ['spiffe://example.org/p?', /query is not allowed/],
    ['spiffe://example.org/?q', /query is not allowed/],
    ['spiffe://example.org/p?#f', /query is not allowed/],
    ['spiffe://example.org/p#f', /fragment is not allowed/],
    ['spiffe://example.org/p#', /fragment is not allowed/],
    ['spiffe://example.org/%70', /percent-encoding/],
    ['spiffe://example.org/a%2Fb', /percent-encoding/],
    ['spiffe://example.org/a%2e%2e', /percent-encoding/],
    ['spiffe://example%2eorg/p', /percent-encoding/],
    ['spiffe://%65xample.org', /percent-encoding/],
    ['spiffe://[::1]/p', /trust domain contains a disallowed character/],
  ])('rejects %s', (input, reason) => {
    expectInvalid(input, reason);
  });

  it('rejects a query or fragment right after the trust domain', () => {
    // No "/" follows, so "?" and "#" land in the trust domain, where they are disallowed characters.
    for (const input of ['spiffe://example.org?q=1', 'spiffe://example.org#f']) {
      expectInvalid(input, /trust domain contains a disallowed character/);
    }
  });
});

describe('scheme', () => {
  it.each([
    ['SPIFFE://example.org/p', /scheme must be lowercase/],
    ['Spiffe://example.org/p', /scheme must be lowercase/],
    ['spiffE://example.org/p', /scheme must be lowercase/],
    ['http://example.org/p', /scheme must be "spiffe:\/\/"/],
    ['https://example.org/p', /scheme must be "spiffe:\/\/"/],
    ['spiffe:/example.org/p', /scheme must be "spiffe:\/\/"/],
    ['spiffe:example.org/p', /scheme must be "spiffe:\/\/"/],
    ['spiffe//example.org/p', /scheme must be "spiffe:\/\/"/],
    ['spiff://example.org/p', /scheme must be "spiffe:\/\/"/],
    ['spiffes://example.org/p', /scheme must be "spiffe:\/\/"/],
    ['//example.org/p', /scheme must be "spiffe:\/\/"/],
    ['example.org/p', /scheme must be "spiffe:\/\/"/],
    ['/ns/default/sa/web', /scheme must be "spiffe:\/\/"/],
    [' spiffe://example.org/p', /scheme must be "spiffe:\/\/"/],
    ['spiffe', /scheme must be "spiffe:\/\/"/],
    ['spiffe:', /scheme must be "spiffe:\/\/"/],
  ])('rejects %s', (input, reason) => {
    expectInvalid(input, reason);
  });

  it('rejects the empty string', () => {
    expectInvalid('', /empty/);
  });

  it.each([
    ['spiffe://', /trust domain is missing/],
    ['spiffe:///', /trust domain is missing/],
    ['spiffe:///p', /trust domain is missing/],
  ])('rejects %s (no trust domain)', (input, reason) => {
    expectInvalid(input, reason);
  });

  it('rejects input that is not a string without throwing anything but WardError', () => {
    for (const bad of [undefined, null, 42, {}, ['spiffe://example.org']]) {
      expect(() => SpiffeId.parse(bad as unknown as string)).toThrow(WardError);
      expect(SpiffeId.tryParse(bad as unknown as string)).toBeUndefined();
    }
  });
});

describe('case', () => {
  it.each(['spiffe://Example.org/p', 'spiffe://EXAMPLE.ORG', 'spiffe://example.orG/p'])('rejects an uppercase trust domain in %s', (input) => {
    expectInvalid(input, /trust domain must be lowercase/);
  });

  it('keeps path case and treats IDs differing only in path case as different', () => {
    const a = SpiffeId.parse('spiffe://example.org/Web');
    const b = SpiffeId.parse('spiffe://example.org/web');
    expect(a.path).toBe('/Web');
    expect(a.equals(b)).toBe(false);
  });

  it('parseTrustDomain reports uppercase with its own reason', () => {
    expect(() => parseTrustDomain('Example.org')).toThrow(/invalid trust domain "Example.org": trust domain must be lowercase/);
  });
});

describe('length limits', () => {
  const prefix = 'spiffe://';

  it(`accepts a trust domain of exactly ${MAX_TRUST_DOMAIN_LENGTH} bytes and rejects one more`, () => {
    expect(MAX_TRUST_DOMAIN_LENGTH).toBe(255);
    const atLimit = 'a'.repeat(255);
    expect(parseTrustDomain(atLimit)).toBe(atLimit);
    expect(SpiffeId.parse(`${prefix}${atLimit}/p`).trustDomain).toBe(atLimit);
    const over = 'a'.repeat(256);
    expect(trustDomainError(over)).toMatch(/longer than 255/);
    expect(() => parseTrustDomain(over)).toThrow(WardError);
    expectInvalid(`${prefix}${over}/p`, /trust domain is longer than 255 characters/);
  });

  it(`accepts an ID of exactly ${MAX_ID_LENGTH} bytes and rejects one more`, () => {
    expect(MAX_ID_LENGTH).toBe(2048);
    const td = 'example.org';
    const atLimit = `${prefix}${td}/${'a'.repeat(2048 - prefix.length - td.length - 1)}`;
    expect(atLimit.length).toBe(2048);
    expect(SpiffeId.parse(atLimit).toString()).toBe(atLimit);

    const over = `${atLimit}b`;
    expect(over.length).toBe(2049);
    expectInvalid(over, /longer than 2048 bytes/);
  });

  it('counts many short segments toward the limit like one long one', () => {
    const segs = '/ab'.repeat((2048 - prefix.length - 2) / 3);
    const atLimit = `${prefix}ab${segs}`;
    expect(atLimit.length).toBe(2048);
    expect(accepts(atLimit)).toBe(true);
    expectInvalid(`${atLimit}c`, /longer than 2048 bytes/);
  });

  it('accepts the maximum trust domain with a path that fills the ID to exactly 2048 bytes', () => {
    const td = 'a'.repeat(255);
    const id = `${prefix}${td}/${'b'.repeat(2048 - prefix.length - 255 - 1)}`;
    expect(id.length).toBe(2048);
    expect(accepts(id)).toBe(true);
    expect(accepts(`${id}b`)).toBe(false);
  });

  it('measures in UTF-8 bytes, not UTF-16 code units', () => {
    // 2047 ASCII characters plus one two-byte character: 2048 code units but 2049 bytes.
    const td = 'example.org';
    const base = `${prefix}${td}/${'a'.repeat(2047 - prefix.length - td.length - 1)}`;
    expect(base.length).toBe(2047);
    expectInvalid(`${base}é`, /longer than 2048 bytes/);
    // Still rejected at or under the limit, for the character itself.
    expectInvalid(`${base.slice(0, -1)}é`, /path contains a disallowed character/);
  });

  it('truncates very long input in the error message', () => {
    const err = rejection(`${prefix}${'a'.repeat(5000)}`);
    expect(err.message.length).toBeLessThan(200);
    expect(err.message).toContain('…');
  });
});

describe('formatting round trip', () => {
  const valid = [
    'spiffe://example.org',
    'spiffe://example.org/a',
    'spiffe://example.org/ns/default/sa/web',
    'spiffe://example.org/ward/node/node-1',
    'spiffe://x.y-z_0/A.b-C_9/...',
  ];

  it.each(valid)('%s survives parse, toString, JSON and re-parse unchanged', (input) => {
    const id = SpiffeId.parse(input);
    expect(id.toString()).toBe(input);
    expect(String(id)).toBe(input);
    expect(`${id}`).toBe(input);
    expect(id.toJSON()).toBe(input);
    expect(JSON.stringify({ id })).toBe(JSON.stringify({ id: input }));
    const again = SpiffeId.parse(id.toString());
    expect(again.equals(id)).toBe(true);
    expect(again.trustDomain).toBe(id.trustDomain);
    expect(again.path).toBe(id.path);
  });

  it('fromSegments builds the same ID that parse reads', () => {
    const id = SpiffeId.fromSegments('example.org', 'a', 'B', 'c.d');
    expect(id.toString()).toBe('spiffe://example.org/a/B/c.d');
    expect(id.equals(SpiffeId.parse('spiffe://example.org/a/B/c.d'))).toBe(true);
    expect(SpiffeId.fromSegments('example.org').toString()).toBe('spiffe://example.org');
  });

  it('equals and memberOf compare exactly', () => {
    const id = SpiffeId.parse('spiffe://example.org/a');
    expect(id.equals(SpiffeId.parse('spiffe://example.org/a'))).toBe(true);
    expect(id.equals(SpiffeId.parse('spiffe://example.org/a/b'))).toBe(false);
    expect(id.equals(SpiffeId.parse('spiffe://example.org'))).toBe(false);
    expect(id.equals(SpiffeId.parse('spiffe://example.com/a'))).toBe(false);
    expect(id.memberOf('example.org')).toBe(true);
    expect(id.memberOf('example.com')).toBe(false);
    expect(id.memberOf('org')).toBe(false);
    expect(SpiffeId.parse('spiffe://sub.example.org/a').memberOf('example.org')).toBe(false);
  });
});

describe('workload and node helpers', () => {
  it('workload() builds spiffe://TD/ns/NS/sa/SA and the getter reads it back', () => {
    const id = SpiffeId.workload('example.org', 'default', 'web');
    expect(id.toString()).toBe('spiffe://example.org/ns/default/sa/web');
    expect(id.workload).toEqual({ namespace: 'default', serviceAccount: 'web' });
    expect(id.nodeName).toBeUndefined();
    expect(SpiffeId.parse(id.toString()).workload).toEqual({ namespace: 'default', serviceAccount: 'web' });
  });

  it('node() builds spiffe://TD/ward/node/NAME and the getter reads it back', () => {
    const id = SpiffeId.node('example.org', 'ip-10-0-0-1.ec2.internal');
    expect(id.toString()).toBe('spiffe://example.org/ward/node/ip-10-0-0-1.ec2.internal');
    expect(id.nodeName).toBe('ip-10-0-0-1.ec2.internal');
    expect(id.workload).toBeUndefined();
  });

  it.each([
    'spiffe://example.org',
    'spiffe://example.org/ns/default',
    'spiffe://example.org/ns/default/sa',
    'spiffe://example.org/ns/default/sa/web/extra',
    'spiffe://example.org/x/ns/default/sa/web',
    'spiffe://example.org/NS/default/sa/web',
    'spiffe://example.org/ns/default/SA/web',
    'spiffe://example.org/namespace/default/sa/web',
  ])('workload getter is undefined for %s', (input) => {
    expect(SpiffeId.parse(input).workload).toBeUndefined();
  });

  it.each([
    'spiffe://example.org',
    'spiffe://example.org/ward/node',
    'spiffe://example.org/ward/node/a/b',
    'spiffe://example.org/ward/nodes/a',
    'spiffe://example.org/x/ward/node/a',
    'spiffe://example.org/WARD/node/a',
  ])('nodeName getter is undefined for %s', (input) => {
    expect(SpiffeId.parse(input).nodeName).toBeUndefined();
  });

  it.each([
    ['a/sa/b', 'c', /must not contain "\/"/],
    ['default', 'web/extra', /must not contain "\/"/],
    ['', 'web', /empty segment/],
    ['default', '', /must not end with "\/"/],
    ['..', 'web', /"\.\." segment/],
    ['default', '.', /"\." segment/],
    ['default', 'web?x=1', /query/],
    ['default', 'w%65b', /percent-encoding/],
    ['défault', 'web', /disallowed character/],
  ])('workload() refuses namespace %j / service account %j', (ns, sa, reason) => {
    const err = (() => {
      try {
        SpiffeId.workload('example.org', ns, sa);
      } catch (e) {
        return e as WardError;
      }
      throw new Error('expected workload() to throw');
    })();
    expect(err).toBeInstanceOf(WardError);
    expect(err.code).toBe('WARD_ID_INVALID');
    expect(err.message).toMatch(reason);
  });

  it.each([
    ['a/b', /must not contain "\/"/],
    ['', /must not end with "\/"/],
    ['.', /"\." segment/],
    ['node#1', /fragment/],
  ])('node() refuses node name %j', (name, reason) => {
    expect(() => SpiffeId.node('example.org', name)).toThrow(reason);
  });

  it.each([
    ['', /trust domain is missing/],
    ['Example.org', /lowercase/],
    ['example.org:443', /port/],
    ['example.org/ns/evil/sa/admin', /disallowed character \(code 47\)/],
    ['spiffe://example.org', /disallowed character|port/],
  ])('helpers refuse trust domain %j', (td, reason) => {
    expect(() => SpiffeId.workload(td, 'default', 'web')).toThrow(reason);
    expect(() => SpiffeId.node(td, 'n1')).toThrow(reason);
    expect(() => SpiffeId.fromSegments(td, 'a')).toThrow(reason);
  });

  it('fromSegments refuses a segment with "/" even when the result would parse', () => {
    // Without this check, fromSegments('td', 'ns', 'a/sa/b') would silently yield a different,
    // valid identity than the caller's segments describe.
    expect(() => SpiffeId.fromSegments('example.org', 'ward', 'node/x')).toThrow(WardError);
    expect(() => SpiffeId.fromSegments('example.org', '/a')).toThrow(WardError);
  });
});

describe('parseTrustDomain and trustDomainError', () => {
  it('returns valid names unchanged', () => {
    for (const td of ['example.org', 'a', 'k8s-west.example.com', 'td_1', '127.0.0.1']) expect(parseTrustDomain(td)).toBe(td);
  });

  it.each([
    ['', /trust domain is missing/],
    ['example.org:8080', /port/],
    ['user@example.org', /userinfo/],
    ['user:pw@example.org', /userinfo/],
    ['ex%41mple.org', /percent-encoding/],
    ['EXAMPLE.org', /lowercase/],
    ['spiffe://example.org', /port/],
    ['example.org/path', /disallowed character \(code 47\)/],
    ['exa mple.org', /disallowed character \(code 32\)/],
  ])('parseTrustDomain(%j) throws WARD_ID_INVALID', (td, reason) => {
    try {
      parseTrustDomain(td);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(WardError);
      expect((err as WardError).code).toBe('WARD_ID_INVALID');
      expect((err as WardError).message).toMatch(/^invalid trust domain /);
      expect((err as WardError).message).toMatch(reason);
    }
  });
});
