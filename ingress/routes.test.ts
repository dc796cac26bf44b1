import { describe, expect, it } from 'vitest';
import { isWardError } from '../core/errors.js';
import type { IngressRoute } from '../core/protocol/index.js';
import { RouteTable, type RouteBackend, type RouteMatch } from './routes.js';

type PathRule = IngressRoute['paths'][number];

/** A path rule whose backend names the rule, so a test can see which rule matched. */
function rule(pathType: 'Exact' | 'Prefix', path: string, service = 'web.shop', port = 80): PathRule {
  return { path, pathType, service, port };
}

function table(host: string, paths: PathRule[], o?: { defaultBackend?: RouteBackend }): RouteTable {
  return new RouteTable([{ host, paths }], o);
}

/** "Prefix /foo" (or undefined): what matched, in a form a table of cases can read. */
function which(m: RouteMatch | undefined): string | undefined {
  return m === undefined ? undefined : `${m.pathType} ${m.path}`.trimEnd();
}

const H = 'shop.example.com';

describe('path matching (the Kubernetes Ingress documentation examples)', () => {
  // https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
  it.each<[string, PathRule[], string, string | undefined]>([
    ['Prefix / matches every path', [rule('Prefix', '/')], '/', 'Prefix /'],
    ['Prefix / matches every path', [rule('Prefix', '/')], '/anything/at/all', 'Prefix /'],
    ['Exact /foo matches /foo', [rule('Exact', '/foo')], '/foo', 'Exact /foo'],
    ['Exact /foo does not match /bar', [rule('Exact', '/foo')], '/bar', undefined],
    ['Exact /foo does not match /foo/', [rule('Exact', '/foo')], '/foo/', undefined],
    ['Exact /foo/ does not match /foo', [rule('Exact', '/foo/')], '/foo', undefined],
    ['Prefix /foo matches /foo', [rule('Prefix', '/foo')], '/foo', 'Prefix /foo'],
    ['Prefix /foo matches /foo/', [rule('Prefix', '/foo')], '/foo/', 'Prefix /foo'],
    ['Prefix /foo/ matches /foo (trailing slash ignored)', [rule('Prefix', '/foo/')], '/foo', 'Prefix /foo/'],
    ['Prefix /foo/ matches /foo/', [rule('Prefix', '/foo/')], '/foo/', 'Prefix /foo/'],
    ['Prefix /aaa/bb does not match /aaa/bbb', [rule('Prefix', '/aaa/bb')], '/aaa/bbb', undefined],
    ['Prefix /aaa/bbb matches /aaa/bbb', [rule('Prefix', '/aaa/bbb')], '/aaa/bbb', 'Prefix /aaa/bbb'],
    ['Prefix /aaa/bbb/ matches /aaa/bbb (ignores trailing slash)', [rule('Prefix', '/aaa/bbb/')], '/aaa/bbb', 'Prefix /aaa/bbb/'],
    ['Prefix /aaa/bbb matches /aaa/bbb/ (matches trailing slash)', [rule('Prefix', '/aaa/bbb')], '/aaa/bbb/', 'Prefix /aaa/bbb'],
    ['Prefix /aaa/bbb matches /aaa/bbb/ccc (subpath)', [rule('Prefix', '/aaa/bbb')], '/aaa/bbb/ccc', 'Prefix /aaa/bbb'],
    ['Prefix /aaa/bbb does not match /aaa/bbbxyz (not a string prefix)', [rule('Prefix', '/aaa/bbb')], '/aaa/bbbxyz', undefined],
    ['Prefix /, /aaa: /aaa/ccc matches /aaa', [rule('Prefix', '/'), rule('Prefix', '/aaa')], '/aaa/ccc', 'Prefix /aaa'],
    ['Prefix /, /aaa, /aaa/bbb: /aaa/bbb matches /aaa/bbb', [rule('Prefix', '/'), rule('Prefix', '/aaa'), rule('Prefix', '/aaa/bbb')], '/aaa/bbb', 'Prefix /aaa/bbb'],
    ['Prefix /, /aaa, /aaa/bbb: /ccc matches /', [rule('Prefix', '/'), rule('Prefix', '/aaa'), rule('Prefix', '/aaa/bbb')], '/ccc', 'Prefix /'],
    ['Prefix /aaa does not match /ccc', [rule('Prefix', '/aaa')], '/ccc', undefined],
    ['Prefix and Exact /foo: /foo prefers Exact', [rule('Prefix', '/foo'), rule('Exact', '/foo')], '/foo', 'Exact /foo'],
  ])('%s (%j, request %s)', (_name, paths, request, expected) => {
    expect(which(table(H, paths).match(H, request))).toBe(expected);
  });
});

describe('precedence', () => {
  it('the longest matching path wins, whatever the declaration order', () => {
    const t = table(H, [rule('Prefix', '/a/b/c'), rule('Prefix', '/'), rule('Prefix', '/a'), rule('Prefix', '/a/b')]);
    expect(which(t.match(H, '/a/b/c/d'))).toBe('Prefix /a/b/c');
    expect(which(t.match(H, '/a/b/x'))).toBe('Prefix /a/b');
    expect(which(t.match(H, '/a/bc'))).toBe('Prefix /a');
    expect(which(t.match(H, '/ab'))).toBe('Prefix /');
  });

  it('an Exact beats a Prefix of the same path, in either order, and only on that exact path', () => {
    for (const paths of [
      [rule('Exact', '/api', 'exact.shop'), rule('Prefix', '/api', 'prefix.shop')],
      [rule('Prefix', '/api', 'prefix.shop'), rule('Exact', '/api', 'exact.shop')],
    ]) {
      const t = table(H, paths);
      expect(t.match(H, '/api')?.backend.service).toBe('exact.shop');
      expect(t.match(H, '/api/')?.backend.service).toBe('prefix.shop');
      expect(t.match(H, '/api/v1')?.backend.service).toBe('prefix.shop');
    }
  });

  it('an Exact beats a Prefix that matches the same request even when the Prefix is written longer', () => {
    // Prefix /foo/ counts as /foo (its trailing slash is ignored), so it ties with Exact /foo.
    const t = table(H, [rule('Prefix', '/foo/', 'prefix.shop'), rule('Exact', '/foo', 'exact.shop')]);
    expect(t.match(H, '/foo')?.backend.service).toBe('exact.shop');
    expect(t.match(H, '/foo/')?.backend.service).toBe('prefix.shop');
  });

  it('an Exact beats a shorter Prefix, and a longer Prefix beats a shorter Exact that does not match', () => {
    const t = table(H, [rule('Prefix', '/a', 'prefix.shop'), rule('Exact', '/a/b', 'exact.shop'), rule('Prefix', '/a/b/c', 'deep.shop')]);
    expect(t.match(H, '/a/b')?.backend.service).toBe('exact.shop');
    expect(t.match(H, '/a/b/c')?.backend.service).toBe('deep.shop');
    expect(t.match(H, '/a/b/')?.backend.service).toBe('prefix.shop');
  });

  it('equal Prefixes (/foo and /foo/): the first declared wins', () => {
    expect(table(H, [rule('Prefix', '/foo', 'one.shop'), rule('Prefix', '/foo/', 'two.shop')]).match(H, '/foo/x')?.backend.service).toBe('one.shop');
    expect(table(H, [rule('Prefix', '/foo/', 'two.shop'), rule('Prefix', '/foo', 'one.shop')]).match(H, '/foo/x')?.backend.service).toBe('two.shop');
  });

  it('paths are case-sensitive (as normalization keeps them)', () => {
    const t = table(H, [rule('Prefix', '/Api')]);
    expect(t.match(H, '/Api/x')).toBeDefined();
    expect(t.match(H, '/api/x')).toBeUndefined();
  });
});

describe('hosts', () => {
  const routes: IngressRoute[] = [
    { host: 'shop.example.com', paths: [rule('Prefix', '/', 'exact.shop')] },
    { host: '*.example.com', paths: [rule('Prefix', '/', 'wild.shop')] },
    { host: '*.foo.com', paths: [rule('Prefix', '/', 'foo.shop')] },
  ];
  const t = new RouteTable(routes);

  // The Kubernetes documentation's wildcard table, and its edges.
  it.each<[string, string | undefined]>([
    ['bar.foo.com', 'foo.shop'],
    ['baz.bar.foo.com', undefined], // a wildcard covers exactly one label
    ['foo.com', undefined], // ... and never zero
    ['shop.example.com', 'exact.shop'], // an exact host beats a wildcard that also covers it
    ['cart.example.com', 'wild.shop'],
    ['a.cart.example.com', undefined],
    ['example.com', undefined],
    ['.example.com', undefined], // an empty label is no label
    ['SHOP.Example.COM', 'exact.shop'], // hosts are compared case-insensitively
    ['Cart.EXAMPLE.com', 'wild.shop'],
    ['other.org', undefined],
    ['', undefined], // no Host header
  ])('%j → %s', (host, service) => {
    expect(t.match(host, '/')?.backend.service).toBe(service);
    expect(t.hasHost(host)).toBe(service !== undefined);
  });

  it('the match names the rule host as written, wildcard included', () => {
    expect(t.match('cart.example.com', '/x')).toEqual({ host: '*.example.com', path: '/', pathType: 'Prefix', backend: { service: 'wild.shop', port: 80 } });
  });

  it('a host with an exact rule does not fall through to a wildcard when none of its paths match', () => {
    const t2 = new RouteTable([
      { host: 'shop.example.com', paths: [rule('Prefix', '/shop', 'exact.shop')] },
      { host: '*.example.com', paths: [rule('Prefix', '/', 'wild.shop')] },
    ]);
    expect(t2.match('shop.example.com', '/other')).toBeUndefined();
    expect(t2.match('cart.example.com', '/other')?.backend.service).toBe('wild.shop');
  });

  it('a known host with no matching path is still a known host', () => {
    const t2 = table(H, [rule('Exact', '/only')]);
    expect(t2.hasHost(H)).toBe(true);
    expect(t2.match(H, '/other')).toBeUndefined();
  });

  it('routes for the same host are merged, in declaration order', () => {
    const t2 = new RouteTable([
      { host: H, paths: [rule('Prefix', '/a', 'first.shop')] },
      { host: 'other.example.com', paths: [rule('Prefix', '/')] },
      { host: H, paths: [rule('Prefix', '/a/', 'second.shop'), rule('Exact', '/b', 'b.shop')] },
    ]);
    expect(t2.match(H, '/a')?.backend.service).toBe('first.shop');
    expect(t2.match(H, '/b')?.backend.service).toBe('b.shop');
    expect(t2.hosts()).toEqual([H, 'other.example.com']);
  });

  it('hosts() lists every exact host and wildcard once, in declaration order', () => {
    expect(t.hosts()).toEqual(['shop.example.com', '*.example.com', '*.foo.com']);
    expect(Object.isFrozen(t.hosts())).toBe(true);
    expect(new RouteTable([]).hosts()).toEqual([]);
  });
});

describe('the default backend', () => {
  const defaultBackend = { service: 'fallback.ward-system', port: 8080 };
  const t = new RouteTable([{ host: H, paths: [rule('Prefix', '/shop')] }], { defaultBackend });

  it('takes a request for an unknown host, and one no path of a known host matches', () => {
    const expected = { host: '', path: '', pathType: 'Default', backend: defaultBackend };
    expect(t.match('unknown.example.org', '/shop')).toEqual(expected);
    expect(t.match(H, '/other')).toEqual(expected);
    expect(t.match('', '/')).toEqual(expected);
    expect(t.match(H, '/shop/x')?.pathType).toBe('Prefix');
  });

  it('does not make an unknown host known', () => {
    expect(t.hasHost('unknown.example.org')).toBe(false);
    expect(t.hosts()).toEqual([H]);
  });

  it('is the only route of an empty table', () => {
    expect(new RouteTable([], { defaultBackend }).match('any.host', '/x')?.pathType).toBe('Default');
    expect(new RouteTable([]).match('any.host', '/x')).toBeUndefined();
  });
});

describe('results', () => {
  it('are prebuilt, frozen and shared between requests', () => {
    const t = table(H, [rule('Prefix', '/a'), rule('Exact', '/b')], { defaultBackend: { service: 'd.ns', port: 1 } });
    for (const p of ['/a/x', '/b', '/none']) {
      const m = t.match(H, p);
      expect(m).toBe(t.match(H, p));
      expect(Object.isFrozen(m)).toBe(true);
      expect(Object.isFrozen(m?.backend)).toBe(true);
    }
  });

  it('do not change when the caller later mutates the routes it passed', () => {
    const routes: IngressRoute[] = [{ host: H, paths: [rule('Prefix', '/a', 'web.shop', 80)] }];
    const t = new RouteTable(routes);
    routes[0].paths[0].port = 81;
    routes[0].paths.push(rule('Prefix', '/b'));
    expect(t.match(H, '/a')?.backend.port).toBe(80);
    expect(t.match(H, '/b')).toBeUndefined();
  });
});

it('routes the built-in example mesh (discovery/example.ts): shop.localhost, everything to web.shop:80', () => {
  // Written out here: ingress/ may not import discovery/ (test/architecture.test.ts), tests included.
  const t = new RouteTable([{ host: 'shop.localhost', paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] }]);
  expect(t.match('shop.localhost', '/')?.backend).toEqual({ service: 'web.shop', port: 80 });
  expect(t.match('shop.localhost', '/cart/items')?.backend).toEqual({ service: 'web.shop', port: 80 });
  expect(t.hasHost('localhost')).toBe(false);
});

describe('validation', () => {
  const ok = (o: Partial<PathRule> = {}): PathRule => ({ ...rule('Prefix', '/a'), ...o });

  it.each<[string, unknown, RegExp]>([
    ['host uppercase', [{ host: 'Shop.Example.com', paths: [ok()] }], /^ingress routes\[0\]\.host: "Shop\.Example\.com" is not a lowercase DNS name/],
    ['host IPv4', [{ host: '127.0.0.1', paths: [ok()] }], /routes\[0\]\.host: "127\.0\.0\.1" is an IP address/],
    ['host IPv6', [{ host: '::1', paths: [ok()] }], /routes\[0\]\.host: "::1" is an IP address/],
    ['host empty', [{ host: '', paths: [ok()] }], /routes\[0\]\.host: must not be empty/],
    ['host too long', [{ host: `${'a'.repeat(63)}.`.repeat(4) + 'com', paths: [ok()] }], /longer than 253/],
    ['host label too long', [{ host: `${'a'.repeat(64)}.com`, paths: [ok()] }], /not a lowercase DNS name/],
    ['host wildcard inside', [{ host: 'a.*.com', paths: [ok()] }], /"a\.\*\.com" is not a lowercase DNS name \(a wildcard is allowed only as the whole first label/],
    ['host partial wildcard', [{ host: 'a*.example.com', paths: [ok()] }], /wildcard is allowed only as the whole first label/],
    ['host bare wildcard', [{ host: '*', paths: [ok()] }], /"\*": a wildcard host needs a domain/],
    ['host wildcard with empty domain', [{ host: '*.', paths: [ok()] }], /"\*\." is not a lowercase DNS name/],
    ['host trailing dot', [{ host: 'shop.example.com.', paths: [ok()] }], /not a lowercase DNS name/],
    ['host with port', [{ host: 'shop.example.com:443', paths: [ok()] }], /not a lowercase DNS name/],
    ['host not a string', [{ host: 7, paths: [ok()] }], /routes\[0\]\.host: must be a string/],
    ['route not a mapping', [null], /routes\[0\]: must be a mapping/],
    ['paths not a list', [{ host: H, paths: {} }], /routes\[0\] \(host "shop\.example\.com"\): paths must be a list/],
    ['path not a mapping', [{ host: H, paths: ['/a'] }], /routes\[0\]\.paths\[0\] \(host "shop\.example\.com"\): must be a mapping/],
    ['path relative', [{ host: H, paths: [ok({ path: 'api' })] }], /routes\[0\]\.paths\[0\] \(host "shop\.example\.com"\): path "api" must start with "\/"/],
    ['path empty', [{ host: H, paths: [ok({ path: '' })] }], /path "" must start with "\/"/],
    ['path double slash', [{ host: H, paths: [ok({ path: '/a//b' })] }], /path "\/a\/\/b" is not in normal form \(write "\/a\/b"\)/],
    ['path dot segment', [{ host: H, paths: [ok({ path: '/a/./b' })] }], /not in normal form \(write "\/a\/b"\)/],
    ['path dot-dot segment', [{ host: H, paths: [ok({ path: '/a/../b' })] }], /not in normal form \(write "\/b"\)/],
    ['path encoded unreserved', [{ host: H, paths: [ok({ path: '/%7Euser' })] }], /not in normal form \(write "\/~user"\)/],
    ['path lowercase escape', [{ host: H, paths: [ok({ path: '/caf%c3%a9' })] }], /not in normal form \(write "\/caf%C3%A9"\)/],
    ['path encoded slash', [{ host: H, paths: [ok({ path: '/a%2Fb' })] }], /path "\/a%2Fb" is not a valid path \(encoded-slash\)/],
    ['path backslash', [{ host: H, paths: [ok({ path: '/a\\b' })] }], /not a valid path \(backslash\)/],
    ['path space', [{ host: H, paths: [ok({ path: '/a b' })] }], /must not contain whitespace, control characters/],
    ['path query', [{ host: H, paths: [ok({ path: '/a?b=1' })] }], /must not contain whitespace, control characters, "\?" or "#"/],
    ['path fragment', [{ host: H, paths: [ok({ path: '/a#b' })] }], /must not contain whitespace, control characters, "\?" or "#"/],
    ['path too long', [{ host: H, paths: [ok({ path: `/${'a'.repeat(1024)}` })] }], /path is longer than 1024 characters/],
    ['path not a string', [{ host: H, paths: [ok({ path: 1 as never })] }], /path must be a string/],
    ['pathType unknown', [{ host: H, paths: [ok({ pathType: 'Regex' as never })] }], /pathType must be Exact or Prefix; got "Regex"/],
    ['pathType missing', [{ host: H, paths: [{ path: '/a', service: 'web.shop', port: 80 }] }], /pathType must be Exact or Prefix; got undefined/],
    ['pathType ImplementationSpecific', [{ host: H, paths: [ok({ pathType: 'ImplementationSpecific' as never })] }], /got "ImplementationSpecific"/],
    ['service without namespace', [{ host: H, paths: [ok({ service: 'web' })] }], /service "web" must be "<service>\.<namespace>" \(e\.g\. web\.shop\)/],
    ['service with three parts', [{ host: H, paths: [ok({ service: 'web.shop.svc' })] }], /service "web\.shop\.svc" must be/],
    ['service uppercase', [{ host: H, paths: [ok({ service: 'Web.shop' })] }], /service "Web\.shop" must be/],
    ['service empty namespace', [{ host: H, paths: [ok({ service: 'web.' })] }], /service "web\." must be/],
    ['service missing', [{ host: H, paths: [{ path: '/a', pathType: 'Prefix', port: 80 }] }], /service must be a string/],
    ['port zero', [{ host: H, paths: [ok({ port: 0 })] }], /port 0 must be an integer from 1 to 65535/],
    ['port too large', [{ host: H, paths: [ok({ port: 65536 })] }], /port 65536 must be/],
    ['port fractional', [{ host: H, paths: [ok({ port: 80.5 })] }], /port 80\.5 must be/],
    ['port a string', [{ host: H, paths: [ok({ port: '80' as never })] }], /port "80" must be/],
    ['duplicate path', [{ host: H, paths: [rule('Exact', '/b'), ok(), rule('Prefix', '/a', 'other.shop')] }], /routes\[0\]\.paths\[2\] \(host "shop\.example\.com"\): duplicate Prefix path "\/a" \(also routes\[0\]\.paths\[1\]\)/],
    ['duplicate path across routes for one host', [{ host: H, paths: [ok()] }, { host: H, paths: [ok()] }], /routes\[1\]\.paths\[0\] .*duplicate Prefix path "\/a" \(also routes\[0\]\.paths\[0\]\)/],
    ['routes not a list', {}, /^ingress routes: must be a list/],
  ])('%s', (_name, routes, message) => {
    let thrown: unknown;
    try {
      new RouteTable(routes as IngressRoute[]);
    } catch (err) {
      thrown = err;
    }
    expect(isWardError(thrown, 'WARD_CONFIG_INVALID')).toBe(true);
    expect((thrown as Error).message).toMatch(message);
  });

  it.each<[string, unknown, RegExp]>([
    ['no namespace', { service: 'fallback', port: 80 }, /^ingress defaultBackend: service "fallback" must be "<service>\.<namespace>"/],
    ['bad port', { service: 'fallback.ns', port: -1 }, /^ingress defaultBackend: port -1 must be/],
  ])('an invalid default backend (%s)', (_name, defaultBackend, message) => {
    expect(() => new RouteTable([], { defaultBackend: defaultBackend as RouteBackend })).toThrow(message);
  });

  it.each<[string, IngressRoute[]]>([
    ['Exact and Prefix of one path', [{ host: H, paths: [rule('Exact', '/a'), rule('Prefix', '/a')] }]],
    ['Prefix /a and /a/ (equivalent, but written differently)', [{ host: H, paths: [rule('Prefix', '/a'), rule('Prefix', '/a/')] }]],
    ['one path under two hosts', [{ host: H, paths: [ok()] }, { host: '*.example.com', paths: [ok()] }]],
    ['a host with no paths', [{ host: H, paths: [] }]],
    ['an escape that stays escaped', [{ host: H, paths: [ok({ path: '/caf%C3%A9' }), ok({ path: '/a;b=c/%20' })] }]],
    ['ports 1 and 65535', [{ host: H, paths: [ok({ port: 1 }), ok({ path: '/b', port: 65535 })] }]],
    ['a wildcard on a top-level domain', [{ host: '*.localhost', paths: [ok()] }]],
  ])('accepts %s', (_name, routes) => {
    expect(() => new RouteTable(routes)).not.toThrow();
  });
});

describe('against a naive reference implementation (random tables and requests)', () => {
  /** mulberry32, so a failure is repeatable from its seed. */
  function seeded(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  const RULE_HOSTS = ['a.x.com', 'b.x.com', '*.x.com', 'x.com', '*.com', 'a.b.x.com', '*.b.x.com'];
  const REQUEST_HOSTS = [...RULE_HOSTS.filter((h) => !h.startsWith('*')), 'c.x.com', 'A.X.COM', 'C.x.Com', 'y.com', 'c.b.x.com', 'com', '', 'z.a.x.com'];
  const SEGMENTS = ['a', 'b', 'ab', 'a.b', '%C3%A9'];

  /** A path in normal form: 0-3 segments, sometimes with a trailing slash. */
  function randomPath(r: () => number, maxSegments: number): string {
    const n = Math.floor(r() * (maxSegments + 1));
    const segs = Array.from({ length: n }, () => SEGMENTS[Math.floor(r() * SEGMENTS.length)]);
    return n === 0 ? '/' : `/${segs.join('/')}${r() < 0.3 ? '/' : ''}`;
  }

  /** The rule host a request host selects (exact first, then a one-label wildcard), the obvious way. */
  function chooseHost(routes: IngressRoute[], rawHost: string): string | undefined {
    const host = rawHost.toLowerCase();
    const hostLabels = host.split('.');
    const covers = (ruleHost: string): boolean => {
      const labels = ruleHost.split('.');
      return labels[0] === '*' && hostLabels.length === labels.length && hostLabels[0] !== '' && labels.slice(1).join('.') === hostLabels.slice(1).join('.');
    };
    return routes.find((rt) => rt.host === host)?.host ?? routes.find((rt) => covers(rt.host))?.host;
  }

  /** Kubernetes semantics written the obvious way: split paths into elements, score every rule, sort. */
  function reference(routes: IngressRoute[], defaultBackend: RouteBackend | undefined, host: string, path: string): RouteMatch | undefined {
    const fallback = defaultBackend && { host: '', path: '', pathType: 'Default' as const, backend: defaultBackend };
    const chosen = chooseHost(routes, host);
    if (chosen === undefined) return fallback;
    const elements = (p: string): string[] => (p === '' ? [] : p.split('/').slice(1));
    const req = elements(path);
    const scored: { rule: PathRule; length: number; order: number }[] = [];
    for (const rule of routes.filter((rt) => rt.host === chosen).flatMap((rt) => rt.paths)) {
      const order = scored.length;
      if (rule.pathType === 'Exact') {
        if (rule.path === path) scored.push({ rule, length: path.length, order });
        continue;
      }
      const stripped = rule.path.endsWith('/') ? rule.path.slice(0, -1) : rule.path;
      const want = elements(stripped);
      if (want.length <= req.length && want.every((e, i) => e === req[i])) scored.push({ rule, length: stripped.length, order });
    }
    const exactFirst = (x: PathRule): number => (x.pathType === 'Exact' ? 0 : 1);
    scored.sort((x, y) => y.length - x.length || exactFirst(x.rule) - exactFirst(y.rule) || x.order - y.order);
    if (scored.length === 0) return fallback;
    const best = scored[0].rule;
    return { host: chosen, path: best.path, pathType: best.pathType, backend: { service: best.service, port: best.port } };
  }

  it.each([1, 2, 3, 4, 5, 6, 7, 8])('seed %i: 60 tables × 150 requests agree', (seed) => {
    const r = seeded(seed);
    let built = 0;
    let refused = 0;
    for (let t = 0; t < 60; t++) {
      const routes: IngressRoute[] = [];
      let nRules = 0;
      const nRoutes = 1 + Math.floor(r() * 4);
      for (let i = 0; i < nRoutes; i++) {
        const paths = Array.from({ length: Math.floor(r() * 6) }, () =>
          rule(r() < 0.4 ? 'Exact' : 'Prefix', randomPath(r, 3), `s${nRules++}.ns`, 1 + Math.floor(r() * 65535)),
        );
        routes.push({ host: RULE_HOSTS[Math.floor(r() * RULE_HOSTS.length)], paths });
      }
      const defaultBackend = r() < 0.3 ? { service: 'fallback.ns', port: 8080 } : undefined;
      const keys = routes.flatMap((rt) => rt.paths.map((p) => `${rt.host} ${p.pathType} ${p.path}`));
      if (new Set(keys).size !== keys.length) {
        expect(() => new RouteTable(routes, { defaultBackend })).toThrow(/duplicate/);
        refused++;
        continue;
      }
      const table = new RouteTable(routes, { defaultBackend });
      built++;
      for (let q = 0; q < 150; q++) {
        const host = REQUEST_HOSTS[Math.floor(r() * REQUEST_HOSTS.length)];
        const path = randomPath(r, 4);
        const context = `seed ${seed} table ${t} ${JSON.stringify(routes)} default ${JSON.stringify(defaultBackend)}: ${host} ${path}`;
        expect(table.match(host, path), context).toEqual(reference(routes, defaultBackend, host, path));
        expect(table.hasHost(host), context).toBe(chooseHost(routes, host) !== undefined);
      }
    }
    // The generator must exercise both outcomes, or the comparison proves little.
    expect(built).toBeGreaterThan(10);
    expect(refused).toBeGreaterThan(0);
  });
});
