import { describe, expect, it } from 'vitest';
import { forwardTarget, normalizePath, normalizeRequest, type NormalizeFailure } from './index.js';

function http(path: string, extra: { method?: string; host?: string; port?: number } = {}) {
  return normalizeRequest({ method: extra.method ?? 'GET', host: extra.host ?? 'api.shop', path, port: extra.port ?? 8080, protocol: 'http' });
}

function pathOf(target: string): string {
  const r = http(target);
  if (!r.ok) throw new Error(`expected ${JSON.stringify(target)} to normalize, got ${r.reason}`);
  return r.request.path!;
}

function refusal(target: string): NormalizeFailure {
  const r = http(target);
  if (r.ok) throw new Error(`expected ${JSON.stringify(target)} to be refused, got ${r.request.path}`);
  return r.reason;
}

describe('normalizeRequest: paths', () => {
  it.each([
    ['/a/../b', '/b'],
    ['/a/./b', '/a/b'],
    ['//a///b', '/a/b'],
    ['/%2e%2e/x', '/x'],
    ['/%2E%2E/x', '/x'],
    ['/a/%2e/b', '/a/b'],
    ['/a/%2e%2e/%2e%2e/%2e%2e/etc', '/etc'],
    ['/../../x', '/x'],
    ['/..', '/'],
    ['/', '/'],
    ['//', '/'],
    ['/A', '/A'],
    ['/Admin/Panel', '/Admin/Panel'],
    ['/a/', '/a/'],
    ['/a//', '/a/'],
    ['/a/b/..', '/a/'],
    ['/a/b/.', '/a/b/'],
    ['/a/.b', '/a/.b'],
    ['/a/..b', '/a/..b'],
    ['/%61dmin', '/admin'],
    ['/%7euser', '/~user'],
    ['/a%3ab', '/a%3Ab'],
    ['/a%3Ab', '/a%3Ab'],
    ['/a%20b', '/a%20b'],
    ['/%252F', '/%252F'],
    ['/a%25', '/a%25'],
    ['/a;b/../c', '/c'],
    ['/a#frag', '/a'],
    ['/a#frag?x=1', '/a'],
    ['/a?x=1', '/a'],
    ['/a/../b?x=/../y', '/b'],
  ])('%s → %s', (input, want) => {
    expect(pathOf(input)).toBe(want);
  });

  it.each<[string, NormalizeFailure]>([
    ['/a%2fb', 'encoded-slash'],
    ['/a%2Fb', 'encoded-slash'],
    ['/a%5cb', 'encoded-backslash'],
    ['/a%5Cb', 'encoded-backslash'],
    ['/a\\b', 'backslash'],
    ['\\a', 'not-origin-form'],
    ['/a%00b', 'nul-byte'],
    ['/a\u0000b', 'nul-byte'],
    ['/a?x=\u0000', 'nul-byte'],
    ['/a%zzb', 'invalid-percent-encoding'],
    ['/a%2', 'invalid-percent-encoding'],
    ['/a%', 'invalid-percent-encoding'],
    ['/a b', 'invalid-character'],
    ['/a\tb', 'invalid-character'],
    ['/a\r\nHost: x', 'invalid-character'],
    ['/a\u007fb', 'invalid-character'],
    ['/caf\u00e9', 'invalid-character'],
    ['/a?x=1 2', 'invalid-character'],
    ['*', 'not-origin-form'],
    ['a/b', 'not-origin-form'],
    ['http://evil/a', 'not-origin-form'],
    ['', 'missing-path'],
    ['?x=1', 'missing-path'],
  ])('refuses %j (%s)', (input, reason) => {
    expect(refusal(input)).toBe(reason);
  });

  it('keeps the query apart, untouched, and drops the fragment', () => {
    const r = http('/a/./b?x=%2F..&y#frag');
    expect(r.ok && r.request).toMatchObject({ path: '/a/b', query: 'x=%2F..&y' });
    expect(r.ok && forwardTarget(r.request)).toBe('/a/b?x=%2F..&y');
    const noQuery = http('/a#x?y');
    expect(noQuery.ok && noQuery.request.query).toBeUndefined();
    expect(noQuery.ok && forwardTarget(noQuery.request)).toBe('/a');
    const emptyQuery = http('/a?');
    expect(emptyQuery.ok && emptyQuery.request.query).toBe('');
    expect(emptyQuery.ok && forwardTarget(emptyQuery.request)).toBe('/a?');
  });

  it('is idempotent: a normalized path normalizes to itself', () => {
    for (const p of ['/a/../b', '//a///b/', '/%2e%2e/%61', '/a%3ab/./c/..', '/x/y/z/../../']) {
      const once = pathOf(p);
      expect(pathOf(once)).toBe(once);
    }
  });

  it('normalizePath refuses what normalizeRequest refuses', () => {
    expect(normalizePath('/a%2Fb')).toEqual({ ok: false, reason: 'encoded-slash' });
    expect(normalizePath('/x/../y')).toEqual({ ok: true, path: '/y' });
  });
});

describe('normalizeRequest: host, method, port, protocol', () => {
  it.each([
    ['API.Shop', 'api.shop'],
    ['api.shop.', 'api.shop'],
    ['api.shop:8080', 'api.shop'],
    ['API.shop.svc.cluster.local.:443', 'api.shop.svc.cluster.local'],
    ['api.shop:', 'api.shop'],
    ['[::1]:8080', '[::1]'],
    ['[FE80::1]', '[fe80::1]'],
    ['127.0.0.1:80', '127.0.0.1'],
    ['', ''],
  ])('host %j → %j', (input, want) => {
    const r = http('/', { host: input });
    expect(r.ok && r.request.host).toBe(want);
  });

  it.each(['api shop', 'a/b', 'user@api', 'api..shop', 'api:99999', 'api:0', 'api:x', '[::1', '[::1]x', 'a:b:c', '\u212aelvin.shop', 'api\u0000.shop', '.'])(
    'refuses host %j',
    (host) => {
      expect(http('/', { host })).toEqual({ ok: false, reason: 'invalid-host' });
    },
  );

  it('keeps uppercase methods and refuses anything else', () => {
    expect(http('/', { method: 'DELETE' })).toMatchObject({ ok: true, request: { method: 'DELETE' } });
    expect(http('/', { method: 'M-SEARCH' })).toMatchObject({ ok: true, request: { method: 'M-SEARCH' } });
    for (const method of ['get', 'Get', '', 'GET /', 'G\u0000T', 'DEL\u212aTE']) {
      expect(http('/', { method })).toEqual({ ok: false, reason: 'invalid-method' });
    }
  });

  it('refuses ports outside 1..65535', () => {
    for (const port of [0, -1, 65536, 80.5, Number.NaN]) expect(http('/', { port })).toEqual({ ok: false, reason: 'invalid-port' });
  });

  it('TCP requests carry no method or path', () => {
    const r = normalizeRequest({ protocol: 'tcp', port: 5432, host: 'DB.Shop:5432', method: 'GET', path: '/x' });
    expect(r).toEqual({ ok: true, request: { protocol: 'tcp', port: 5432, host: 'db.shop' } });
  });

  it('refuses an unknown protocol and an HTTP request without a path', () => {
    expect(normalizeRequest({ protocol: 'udp' as 'tcp', port: 53 })).toEqual({ ok: false, reason: 'invalid-protocol' });
    expect(normalizeRequest({ protocol: 'http', port: 80, method: 'GET' })).toEqual({ ok: false, reason: 'missing-path' });
  });

  it('returns frozen requests', () => {
    const r = http('/a');
    expect(r.ok && Object.isFrozen(r.request)).toBe(true);
  });
});
