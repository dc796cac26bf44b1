/**
 * Request normalization, done once per request (DESIGN.md §6). The normalized path is both what
 * the policy engine sees and what the proxy forwards to the application, so the two can never
 * disagree about which resource a request names — the root of most path-based authorization
 * bypasses (`/admin/../public`, `/%61dmin`, `//admin`, `/admin%2Fx`, `\admin`).
 *
 * Path rules, in order:
 * 1. The fragment (from the first "#") is dropped; the query (from the first "?") is kept apart,
 *    forwarded unchanged and never used for authorization.
 * 2. Only origin-form targets ("/…") are accepted: absolute-form is split by the caller, and the
 *    asterisk-form "*" (OPTIONS *) is refused.
 * 3. Refused outright (the caller answers 400): NUL (raw or %00), a raw backslash, %2F and %5C
 *    (an encoded separator means different things to different servers, so no answer is safe),
 *    malformed percent-escapes, control characters, spaces and raw non-ASCII.
 * 4. Percent-escapes of unreserved characters (A-Z a-z 0-9 - . _ ~) are decoded; every other
 *    escape is kept, with its hex digits uppercased (RFC 3986 §6.2.2). Nothing is decoded twice:
 *    "%252F" stays "%252F".
 * 5. Duplicate slashes collapse, "." and ".." segments are resolved (".." above the root stays at
 *    the root). A trailing slash is kept: "/a/" and "/a" stay distinct, as they are to most servers.
 * 6. Case is preserved: "/A" is not "/a".
 * Path parameters (";") have no special meaning and match literally.
 */

export type RequestProtocol = 'http' | 'tcp';

export interface RawRequest {
  /** HTTP method as received; required for 'http', ignored for 'tcp'. */
  readonly method?: string;
  /** Host header or SNI/CONNECT authority; may carry a port, which is dropped. */
  readonly host?: string;
  /** The request target in origin form, with query and fragment if any; required for 'http'. */
  readonly path?: string;
  /** The destination port the request arrived for. */
  readonly port: number;
  readonly protocol: RequestProtocol;
}

export interface NormalizedRequest {
  readonly protocol: RequestProtocol;
  readonly port: number;
  /** Lowercase, without port or trailing dot; '' when none was given. */
  readonly host: string;
  /** Present for 'http' only. */
  readonly method?: string;
  /** Present for 'http' only: the normalized path, without query. */
  readonly path?: string;
  /** Present when the target had a "?": the raw query (possibly ''), without the "?". */
  readonly query?: string;
}

/** Why a request was refused; a bounded set, so it may label a metric. */
export type NormalizeFailure =
  | 'invalid-protocol'
  | 'invalid-port'
  | 'invalid-method'
  | 'invalid-host'
  | 'missing-path'
  | 'not-origin-form'
  | 'nul-byte'
  | 'backslash'
  | 'encoded-slash'
  | 'encoded-backslash'
  | 'invalid-percent-encoding'
  | 'invalid-character';

export type NormalizeResult =
  | { readonly ok: true; readonly request: NormalizedRequest }
  | { readonly ok: false; readonly reason: NormalizeFailure };

export type PathResult = { readonly ok: true; readonly path: string } | { readonly ok: false; readonly reason: NormalizeFailure };

// Tables built once (as in core/identity): exact about every byte value, no regex per character.
const UNRESERVED = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1;
const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX_VALUE['0123456789abcdef'.charCodeAt(i)] = i;
  HEX_VALUE['0123456789ABCDEF'.charCodeAt(i)] = i;
}
const HEX_UPPER = '0123456789ABCDEF';

// Uppercase tokens only: llhttp already refuses lowercase methods, and refusing them here means a
// DENY on "DELETE" can never be dodged with "delete" by a lenient server behind us.
const METHOD_RE = /^[A-Z][A-Z0-9_-]{0,31}$/;
const HOST_NAME_RE = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/;
const IPV6_RE = /^\[[0-9a-f:.]+\]$/;

function badChar(c: number): NormalizeFailure | undefined {
  if (c === 0) return 'nul-byte';
  if (c <= 0x20 || c >= 0x7f) return 'invalid-character';
  if (c === 0x5c) return 'backslash';
  return undefined;
}

/**
 * Normalizes a path (no query, no fragment) by rules 2–6 above. Exported for the policy parser,
 * which requires policy paths to be written in this normal form.
 */
export function normalizePath(raw: string): PathResult {
  if (raw.length === 0) return { ok: false, reason: 'missing-path' };
  if (raw.charCodeAt(0) !== 0x2f) return { ok: false, reason: 'not-origin-form' };
  let decoded = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    const bad = badChar(c);
    if (bad) return { ok: false, reason: bad };
    if (c !== 0x25) {
      decoded += raw[i];
      continue;
    }
    const hi = i + 1 < raw.length ? raw.charCodeAt(i + 1) : 0xffff;
    const lo = i + 2 < raw.length ? raw.charCodeAt(i + 2) : 0xffff;
    const h = hi < 128 ? HEX_VALUE[hi] : -1;
    const l = lo < 128 ? HEX_VALUE[lo] : -1;
    if (h < 0 || l < 0) return { ok: false, reason: 'invalid-percent-encoding' };
    const v = h * 16 + l;
    if (v === 0) return { ok: false, reason: 'nul-byte' };
    if (v === 0x2f) return { ok: false, reason: 'encoded-slash' };
    if (v === 0x5c) return { ok: false, reason: 'encoded-backslash' };
    decoded += v < 128 && UNRESERVED[v] === 1 ? String.fromCharCode(v) : `%${HEX_UPPER[h]}${HEX_UPPER[l]}`;
    i += 2;
  }

  // Decoding happened first, so "%2e%2e" is resolved as the ".." it will be to the application.
  const segments = decoded.split('/');
  const out: string[] = [];
  let trailingSlash = false;
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i];
    const last = i === segments.length - 1;
    if (seg === '' || seg === '.') {
      trailingSlash = last;
    } else if (seg === '..') {
      out.pop();
      trailingSlash = last;
    } else {
      out.push(seg);
      trailingSlash = false;
    }
  }
  const path = out.length === 0 ? '/' : `/${out.join('/')}${trailingSlash ? '/' : ''}`;
  return { ok: true, path };
}

function normalizeHost(raw: string): string | undefined {
  // ASCII first: toLowerCase() folds look-alikes such as the Kelvin sign (U+212A) into "k".
  if (!/^[\x21-\x7e]*$/.test(raw)) return undefined;
  let host = raw.toLowerCase();
  if (host.length === 0) return '';
  let port: string | undefined;
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end === -1) return undefined;
    const rest = host.slice(end + 1);
    if (rest !== '' && !rest.startsWith(':')) return undefined;
    port = rest === '' ? undefined : rest.slice(1);
    host = host.slice(0, end + 1);
    if (!IPV6_RE.test(host)) return undefined;
  } else {
    const colon = host.indexOf(':');
    if (colon !== -1) {
      port = host.slice(colon + 1);
      host = host.slice(0, colon);
    }
    if (host.endsWith('.')) host = host.slice(0, -1);
    if (!HOST_NAME_RE.test(host)) return undefined;
  }
  // An empty port ("host:") is allowed by RFC 3986; anything else must be a real port number.
  if (port !== undefined && port !== '') {
    if (!/^[0-9]{1,5}$/.test(port)) return undefined;
    const n = Number(port);
    if (n < 1 || n > 65535) return undefined;
  }
  return host;
}

/** Normalizes a request once; on failure the caller answers 400 (HTTP) or closes (TCP). */
export function normalizeRequest(raw: RawRequest): NormalizeResult {
  if (!Number.isInteger(raw.port) || raw.port < 1 || raw.port > 65535) return { ok: false, reason: 'invalid-port' };
  const host = normalizeHost(raw.host ?? '');
  if (host === undefined) return { ok: false, reason: 'invalid-host' };
  if (raw.protocol === 'tcp') {
    return { ok: true, request: Object.freeze({ protocol: 'tcp', port: raw.port, host }) };
  }
  if (raw.protocol !== 'http') return { ok: false, reason: 'invalid-protocol' };
  if (raw.method === undefined || !METHOD_RE.test(raw.method)) return { ok: false, reason: 'invalid-method' };
  if (raw.path === undefined || raw.path.length === 0) return { ok: false, reason: 'missing-path' };

  let target = raw.path;
  const hash = target.indexOf('#');
  if (hash !== -1) target = target.slice(0, hash);
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? undefined : target.slice(q + 1);
  if (query !== undefined) {
    // The query is forwarded as is, so it gets the same raw-byte screening as the path.
    for (let i = 0; i < query.length; i++) {
      const c = query.charCodeAt(i);
      if (c === 0) return { ok: false, reason: 'nul-byte' };
      if (c <= 0x20 || c >= 0x7f) return { ok: false, reason: 'invalid-character' };
    }
  }
  const p = normalizePath(rawPath);
  if (!p.ok) return p;
  const request: NormalizedRequest = {
    protocol: 'http',
    port: raw.port,
    host,
    method: raw.method,
    path: p.path,
    ...(query === undefined ? {} : { query }),
  };
  return { ok: true, request: Object.freeze(request) };
}

/** The origin-form target to forward: the normalized path plus the untouched query. */
export function forwardTarget(req: NormalizedRequest): string {
  return `${req.path ?? '/'}${req.query === undefined ? '' : `?${req.query}`}`;
}
