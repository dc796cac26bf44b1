/**
 * The ingress route table, with Kubernetes Ingress semantics (DESIGN.md §7):
 *
 * Host. A rule host is exact (`shop.example.com`) or a wildcard whose `*` stands for exactly one
 * label: `*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`. An exact
 * host wins over a wildcard that also covers it, and once a host rule is chosen only its paths are
 * tried: a request for `a.example.com` that no path of the exact rule matches does not fall through
 * to `*.example.com` (as with ingress-nginx, where each host is its own server block).
 *
 * Path. The request path is the normalized one (core/policy normalizePath, as the proxies use),
 * and rule paths must be written in that same normal form, so one comparison is enough.
 * - Exact matches the identical string only (`/foo` matches `/foo`, not `/foo/`).
 * - Prefix matches by whole path elements: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not
 *   `/foobar`; a trailing slash in the rule is ignored (`/foo/` ≡ `/foo`); `/` matches every path.
 * - The longest matching path wins, a Prefix counting the length without its trailing slash; an
 *   Exact beats a Prefix of the same length. Any Exact that matches is therefore the answer (every
 *   matching Prefix is at most as long as the request path, which is what the Exact equals), so the
 *   lookup is: Exact by map, then Prefixes longest first. Equal Prefixes (`/foo` and `/foo/`): the
 *   first declared wins.
 *
 * Default. When no rule matches (unknown host, or no path of the chosen host), the default backend
 * if configured, else nothing (the ingress answers 404).
 *
 * Everything is compiled in the constructor; `match` allocates nothing but, for a host with no
 * exact rule while wildcards exist, the suffix it looks up. Results are shared frozen objects.
 */
import { WardError } from '../core/errors.js';
import { routeHostError, routePathError } from '../core/hostname.js';
import type { IngressRoute } from '../core/protocol/index.js';

export interface RouteBackend {
  /** "name.namespace" of a mesh service. */
  readonly service: string;
  readonly port: number;
}

export interface RouteMatch {
  /** The rule's host as written (a wildcard stays `*.example.com`); '' for the default backend. */
  readonly host: string;
  /** The rule's path as written; '' for the default backend. */
  readonly path: string;
  readonly pathType: 'Exact' | 'Prefix' | 'Default';
  readonly backend: RouteBackend;
}

export interface RouteTableOptions {
  /** Where a request that matches no rule goes; without it such a request gets 404. */
  readonly defaultBackend?: RouteBackend;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const SLASH = 0x2f;

interface PrefixRule {
  /** The rule path without its trailing slash: '' for `/`, so that every path matches it. */
  readonly prefix: string;
  readonly result: RouteMatch;
}

interface HostRules {
  readonly exact: ReadonlyMap<string, RouteMatch>;
  /** Longest prefix first; equal lengths in declaration order (Array#sort is stable). */
  readonly prefixes: readonly PrefixRule[];
}

function shown(v: string): string {
  return JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v);
}

function invalid(where: string, reason: string): never {
  throw new WardError('WARD_CONFIG_INVALID', `ingress ${where}: ${reason}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function pathError(p: string): string | undefined {
  const why = routePathError(p);
  return why === undefined ? undefined : `path ${why}`;
}

/** A validated, frozen backend. `where` names it in errors. */
function backendOf(v: { service?: unknown; port?: unknown }, where: string): RouteBackend {
  const { service, port } = v;
  if (typeof service !== 'string') return invalid(where, 'service must be a string "<service>.<namespace>"');
  const dot = service.indexOf('.');
  if (dot === -1 || !DNS_LABEL.test(service.slice(0, dot)) || !DNS_LABEL.test(service.slice(dot + 1))) {
    return invalid(where, `service ${shown(service)} must be "<service>.<namespace>" (e.g. web.shop)`);
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    return invalid(where, `port ${typeof port === 'number' ? port : shown(String(port))} must be an integer from 1 to 65535`);
  }
  return Object.freeze({ service, port });
}

class HostBuilder {
  readonly exact = new Map<string, RouteMatch>();
  readonly prefixes: PrefixRule[] = [];
  /** `${pathType} ${path}` → where it was first declared, for duplicate errors. */
  readonly declared = new Map<string, string>();

  build(): HostRules {
    const prefixes = [...this.prefixes].sort((a, b) => b.prefix.length - a.prefix.length);
    return Object.freeze({ exact: this.exact, prefixes: Object.freeze(prefixes) });
  }
}

export class RouteTable {
  readonly #exactHosts = new Map<string, HostRules>();
  /** Keyed by the wildcard without its "*" (".example.com"). */
  readonly #wildcards = new Map<string, HostRules>();
  readonly #hosts: readonly string[];
  readonly #default: RouteMatch | undefined;

  /**
   * Built once per configuration. Throws a WardError (WARD_CONFIG_INVALID) naming the first bad
   * route, path or backend; the ingress then keeps its previous table. Several routes for one host
   * are merged (their paths in declaration order); the same (host, path, pathType) twice is an error.
   */
  constructor(routes: readonly IngressRoute[], o: RouteTableOptions = {}) {
    if (!Array.isArray(routes)) invalid('routes', 'must be a list');
    const builders = new Map<string, HostBuilder>();
    routes.forEach((route: unknown, i) => {
      const at = `routes[${i}]`;
      if (!isObject(route)) return invalid(at, 'must be a mapping {host, paths}');
      const host = route.host;
      if (typeof host !== 'string') return invalid(`${at}.host`, 'must be a string');
      const hostErr = routeHostError(host);
      if (hostErr !== undefined) return invalid(`${at}.host`, hostErr);
      if (!Array.isArray(route.paths)) return invalid(`${at} (host ${shown(host)})`, 'paths must be a list');
      const hb = builders.get(host) ?? new HostBuilder();
      builders.set(host, hb);
      route.paths.forEach((p: unknown, j) => {
        const where = `${at}.paths[${j}] (host ${shown(host)})`;
        if (!isObject(p)) return invalid(where, 'must be a mapping {path, pathType, service, port}');
        const { path, pathType } = p;
        if (typeof path !== 'string') return invalid(where, 'path must be a string');
        const pErr = pathError(path);
        if (pErr !== undefined) return invalid(where, pErr);
        if (pathType !== 'Exact' && pathType !== 'Prefix') {
          return invalid(where, `pathType must be Exact or Prefix; got ${typeof pathType === 'string' ? shown(pathType) : String(pathType)}`);
        }
        const backend = backendOf(p, where);
        const key = `${pathType} ${path}`;
        const first = hb.declared.get(key);
        if (first !== undefined) return invalid(where, `duplicate ${pathType} path ${shown(path)} (also ${first})`);
        hb.declared.set(key, `${at}.paths[${j}]`);
        const result: RouteMatch = Object.freeze({ host, path, pathType, backend });
        if (pathType === 'Exact') hb.exact.set(path, result);
        else hb.prefixes.push({ prefix: path.endsWith('/') ? path.slice(0, -1) : path, result });
      });
    });
    for (const [host, b] of builders) {
      if (host.startsWith('*.')) this.#wildcards.set(host.slice(1), b.build());
      else this.#exactHosts.set(host, b.build());
    }
    this.#hosts = Object.freeze([...builders.keys()]);
    this.#default =
      o.defaultBackend === undefined
        ? undefined
        : Object.freeze({ host: '', path: '', pathType: 'Default', backend: backendOf(o.defaultBackend, 'defaultBackend') });
  }

  /**
   * Whether a rule covers this host (exact, or a wildcard one label above it), whatever its paths.
   * An unknown host gets 404, or the default backend if one is configured.
   */
  hasHost(host: string): boolean {
    return this.#rulesFor(host) !== undefined;
  }

  /**
   * The route for a request, or undefined (404). `host`: without port or trailing dot, as
   * normalizeRequest returns it (compared case-insensitively); `path`: normalized, without query.
   */
  match(host: string, path: string): RouteMatch | undefined {
    const rules = this.#rulesFor(host);
    if (rules !== undefined) {
      const exact = rules.exact.get(path);
      if (exact !== undefined) return exact;
      for (const r of rules.prefixes) {
        const n = r.prefix.length;
        if (path.startsWith(r.prefix) && (path.length === n || path.charCodeAt(n) === SLASH)) return r.result;
      }
    }
    return this.#default;
  }

  /** Every rule host (exact names and wildcards) in declaration order, for certificate coverage checks. */
  hosts(): readonly string[] {
    return this.#hosts;
  }

  #rulesFor(raw: string): HostRules | undefined {
    // V8's toLowerCase() returns its receiver when nothing changes, so folding a host the caller
    // already normalized costs no allocation.
    const host = raw.toLowerCase();
    const exact = this.#exactHosts.get(host);
    if (exact !== undefined || this.#wildcards.size === 0) return exact;
    const dot = host.indexOf('.');
    // dot > 0: the wildcard's label must be non-empty; the suffix lookup makes it exactly one label.
    return dot > 0 ? this.#wildcards.get(host.slice(dot)) : undefined;
  }
}
