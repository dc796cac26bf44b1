import { WardError } from '../errors.js';

/**
 * SPIFFE IDs, parsed exactly per the SPIFFE-ID standard:
 *   spiffe://<trust-domain><path>
 * - scheme exactly "spiffe" (lowercase), then "://"
 * - trust domain: 1..255 chars of [a-z0-9.-_] (no uppercase, port, userinfo or percent-encoding)
 * - path: empty, or "/"-separated segments of [a-zA-Z0-9.-_]; no empty, "." or ".." segment,
 *   no trailing slash; no query or fragment
 * - whole ID at most 2048 bytes
 */

export const MAX_ID_LENGTH = 2048;
/** The mesh ingress runs as this namespace and service account (DESIGN §2). */
export const INGRESS_NAMESPACE = 'ward-system';
export const INGRESS_SERVICE_ACCOUNT = 'ward-ingress';
export const MAX_TRUST_DOMAIN_LENGTH = 255;
const SCHEME = 'spiffe://';

// Byte tables built once: cheaper than a regex per character and exact about every byte value.
const TD_CHAR = new Uint8Array(256);
const PATH_CHAR = new Uint8Array(256);
for (const c of 'abcdefghijklmnopqrstuvwxyz0123456789.-_') TD_CHAR[c.charCodeAt(0)] = 1;
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_') PATH_CHAR[c.charCodeAt(0)] = 1;

function invalid(input: string, reason: string): WardError {
  const shown = input.length > 80 ? `${input.slice(0, 80)}…` : input;
  return new WardError('WARD_ID_INVALID', `invalid SPIFFE ID ${JSON.stringify(shown)}: ${reason}`);
}

/** Returns a reason string when `td` is not a valid trust domain name, else undefined. */
export function trustDomainError(td: string): string | undefined {
  if (td.length === 0) return 'trust domain is missing';
  if (td.length > MAX_TRUST_DOMAIN_LENGTH) return `trust domain is longer than ${MAX_TRUST_DOMAIN_LENGTH} characters`;
  // Checked before the character scan: in "user:pw@host" the ':' comes first and would
  // otherwise be misreported as a port.
  if (td.includes('@')) return 'trust domain must not contain userinfo';
  for (let i = 0; i < td.length; i++) {
    const c = td.charCodeAt(i);
    if (c > 255 || TD_CHAR[c] !== 1) {
      const ch = td[i];
      if (ch === ':') return 'trust domain must not contain a port';
      if (ch === '@') return 'trust domain must not contain userinfo';
      if (ch === '%') return 'percent-encoding is not allowed';
      if (ch >= 'A' && ch <= 'Z') return 'trust domain must be lowercase';
      return `trust domain contains a disallowed character (code ${c})`;
    }
  }
  return undefined;
}

/** Returns a reason string when `path` is not a valid SPIFFE ID path, else undefined. */
export function pathError(path: string): string | undefined {
  if (path.length === 0) return undefined;
  if (path.charCodeAt(0) !== 0x2f) return 'path must start with "/"';
  let segStart = 1;
  for (let i = 1; i <= path.length; i++) {
    const c = i < path.length ? path.charCodeAt(i) : 0x2f;
    if (c === 0x2f) {
      const len = i - segStart;
      if (len === 0) return i === path.length ? 'path must not end with "/"' : 'path has an empty segment';
      if (len === 1 && path.charCodeAt(segStart) === 0x2e) return 'path has a "." segment';
      if (len === 2 && path.charCodeAt(segStart) === 0x2e && path.charCodeAt(segStart + 1) === 0x2e) return 'path has a ".." segment';
      segStart = i + 1;
      continue;
    }
    if (c > 255 || PATH_CHAR[c] !== 1) {
      const ch = path[i];
      if (ch === '?') return 'query is not allowed';
      if (ch === '#') return 'fragment is not allowed';
      if (ch === '%') return 'percent-encoding is not allowed';
      return `path contains a disallowed character (code ${c})`;
    }
  }
  return undefined;
}

export class SpiffeId {
  readonly trustDomain: string;
  readonly path: string;
  readonly #text: string;

  private constructor(trustDomain: string, path: string) {
    this.trustDomain = trustDomain;
    this.path = path;
    this.#text = SCHEME + trustDomain + path;
  }

  /** Parses a SPIFFE ID or throws WARD_ID_INVALID with the precise reason. */
  static parse(input: string): SpiffeId {
    if (typeof input !== 'string') throw invalid(String(input), 'not a string');
    if (input.length === 0) throw invalid(input, 'empty');
    if (Buffer.byteLength(input, 'utf8') > MAX_ID_LENGTH) throw invalid(input, `longer than ${MAX_ID_LENGTH} bytes`);
    if (!input.startsWith(SCHEME)) {
      if (input.toLowerCase().startsWith(SCHEME)) throw invalid(input, 'scheme must be lowercase "spiffe"');
      throw invalid(input, 'scheme must be "spiffe://"');
    }
    const rest = input.slice(SCHEME.length);
    const slash = rest.indexOf('/');
    const td = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    const tdErr = trustDomainError(td);
    if (tdErr) throw invalid(input, tdErr);
    const pErr = pathError(path);
    if (pErr) throw invalid(input, pErr);
    return new SpiffeId(td, path);
  }

  /** Parses, returning undefined instead of throwing. */
  static tryParse(input: string): SpiffeId | undefined {
    try {
      return SpiffeId.parse(input);
    } catch {
      return undefined;
    }
  }

  /** Builds an ID from a trust domain and path segments (each validated, none may contain "/"). */
  static fromSegments(trustDomain: string, ...segments: string[]): SpiffeId {
    const path = segments.map((s) => `/${s}`).join('');
    const text = SCHEME + trustDomain + path;
    // Parsing the joined text alone is not enough: a "/" inside the trust domain or a segment
    // would still parse, but as a different identity than the one the caller described
    // (workload(td, 'a/sa/b', 'c') must not yield .../ns/a/sa/b/sa/c).
    const tdErr = trustDomainError(trustDomain);
    if (tdErr) throw invalid(text, tdErr);
    for (const s of segments) {
      if (s.includes('/')) throw invalid(text, `path segment ${JSON.stringify(s.slice(0, 80))} must not contain "/"`);
    }
    return SpiffeId.parse(text);
  }

  /** `spiffe://TD/ns/NS/sa/SA` — a workload identity. */
  static workload(trustDomain: string, namespace: string, serviceAccount: string): SpiffeId {
    return SpiffeId.fromSegments(trustDomain, 'ns', namespace, 'sa', serviceAccount);
  }

  /** `spiffe://TD/ward/node/NAME` — a node proxy identity. */
  static node(trustDomain: string, nodeName: string): SpiffeId {
    return SpiffeId.fromSegments(trustDomain, 'ward', 'node', nodeName);
  }

  /** The mesh ingress: spiffe://TD/ns/ward-system/sa/ward-ingress (DESIGN §2). */
  static ingress(trustDomain: string): SpiffeId {
    return SpiffeId.workload(trustDomain, INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT);
  }

  /** Whether this is the mesh ingress's identity. */
  get isIngress(): boolean {
    return this.path === `/ns/${INGRESS_NAMESPACE}/sa/${INGRESS_SERVICE_ACCOUNT}`;
  }

  /** The node name when this is a node-proxy identity, else undefined. */
  get nodeName(): string | undefined {
    const m = /^\/ward\/node\/([^/]+)$/.exec(this.path);
    return m ? m[1] : undefined;
  }

  /** Namespace and service account when this is a workload identity, else undefined. */
  get workload(): { namespace: string; serviceAccount: string } | undefined {
    const m = /^\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(this.path);
    return m ? { namespace: m[1], serviceAccount: m[2] } : undefined;
  }

  memberOf(trustDomain: string): boolean {
    return this.trustDomain === trustDomain;
  }

  equals(other: SpiffeId): boolean {
    return this.#text === other.#text;
  }

  toString(): string {
    return this.#text;
  }

  toJSON(): string {
    return this.#text;
  }
}

/** Validates a bare trust domain name (as given to `--trust-domain`). */
export function parseTrustDomain(td: string): string {
  const err = trustDomainError(td);
  if (err) throw new WardError('WARD_ID_INVALID', `invalid trust domain ${JSON.stringify(td.slice(0, 80))}: ${err}`);
  return td;
}
