import type { JsonWebKey } from 'node:crypto';
import { WardError } from '../errors.js';
import { parseTrustDomain } from '../identity/spiffe-id.js';
import { parseCertificate, parseCertificates, type Certificate } from './certificate.js';

/** A JWK entry of a SPIFFE bundle for one X.509 root (SPIFFE Trust Domain and Bundle §4, X509-SVID §6). */
export interface Jwk {
  kty: string;
  crv?: string;
  x?: string;
  y?: string;
  n?: string;
  e?: string;
  use: 'x509-svid';
  /** Exactly one element: standard base64 of the root's DER. */
  x5c: [string];
}

export interface SpiffeBundleJson {
  keys: Jwk[];
  spiffe_sequence?: number;
  spiffe_refresh_hint?: number;
}

/** A bundle document larger than this is refused before JSON.parse: roots are a few KiB each. */
export const MAX_BUNDLE_BYTES = 1024 * 1024;

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** Members of a public JWK that carry key material, per key type (RFC 7518 §6). */
const KEY_MEMBERS: Record<string, readonly string[]> = { EC: ['crv', 'x', 'y'], RSA: ['n', 'e'] };

function invalid(message: string, cause?: unknown): WardError {
  return new WardError('WARD_PKI_BUNDLE_INVALID', `invalid trust bundle: ${message}`, cause === undefined ? undefined : { cause });
}

function normalizeFingerprint(fp: string): string {
  return fp.replace(/:/g, '').toUpperCase();
}

/** The public JWK members of a certificate's key (kty and the key material, nothing else). */
function publicJwk(cert: Certificate): Record<string, string> {
  const jwk = cert.publicKey.export({ format: 'jwk' }) as JsonWebKey;
  const members = KEY_MEMBERS[String(jwk.kty)];
  if (!members) throw invalid(`root ${cert.subject || cert.serialHex} has a ${String(jwk.kty)} key, which a SPIFFE bundle cannot describe`);
  const out: Record<string, string> = { kty: String(jwk.kty) };
  for (const m of members) out[m] = String((jwk as Record<string, unknown>)[m]);
  return out;
}

/**
 * The X.509 roots trusted for one trust domain. Immutable: changes return a new bundle, so a
 * bundle handed to a TLS context or a verifier never changes under it. It holds several roots at
 * once so roots rotate without downtime (add new root → switch issuer → drain → remove old root).
 */
export class TrustBundle {
  readonly trustDomain: string;
  readonly roots: readonly Certificate[];

  /** Deduplicates by fingerprint (first occurrence kept). Every root must be a CA certificate. */
  constructor(trustDomain: string, roots: readonly Certificate[]) {
    this.trustDomain = parseTrustDomain(trustDomain);
    const seen = new Set<string>();
    const kept: Certificate[] = [];
    for (const root of roots) {
      if (!root.isCa) throw invalid(`${root.subject || `certificate ${root.serialHex}`} is not a CA certificate (basicConstraints cA=TRUE)`);
      const fp = normalizeFingerprint(root.fingerprintSha256);
      if (seen.has(fp)) continue;
      seen.add(fp);
      kept.push(root);
    }
    // A bundle that trusts nothing would make every peer fail verification: always a mistake here
    // (for example retiring the last root), never a state to run in.
    if (kept.length === 0) throw invalid(`no root certificate for trust domain ${this.trustDomain}`);
    this.roots = Object.freeze(kept);
    Object.freeze(this);
  }

  /** True when a root with this SHA-256 fingerprint (any case, colons optional) is in the bundle. */
  has(fingerprintSha256: string): boolean {
    const fp = normalizeFingerprint(fingerprintSha256);
    return this.roots.some((r) => normalizeFingerprint(r.fingerprintSha256) === fp);
  }

  /** A bundle with `c` added (unchanged when already present). */
  withRoot(c: Certificate): TrustBundle {
    return new TrustBundle(this.trustDomain, [...this.roots, c]);
  }

  /**
   * A bundle without the root of that fingerprint. Idempotent: removing a root that is not there
   * returns an equal bundle, so a rotation step retried after a crash does not fail. Removing the
   * last root throws WARD_PKI_BUNDLE_INVALID.
   */
  withoutRoot(fingerprintSha256: string): TrustBundle {
    const fp = normalizeFingerprint(fingerprintSha256);
    return new TrustBundle(this.trustDomain, this.roots.filter((r) => normalizeFingerprint(r.fingerprintSha256) !== fp));
  }

  /** Concatenated PEM of every root, as OpenSSL's `ca` option and `openssl verify -CAfile` read it. */
  toPem(): string {
    return this.roots.map((r) => (r.pem.endsWith('\n') ? r.pem : `${r.pem}\n`)).join('');
  }

  /** The SPIFFE bundle (JWKS) form: one `x509-svid` JWK per root, with its certificate in x5c. */
  toJwks(o: { sequence?: number; refreshHintSeconds?: number } = {}): SpiffeBundleJson {
    const out: SpiffeBundleJson = {
      keys: this.roots.map((r) => ({ ...publicJwk(r), use: 'x509-svid', x5c: [Buffer.from(r.der).toString('base64')] }) as Jwk),
    };
    if (o.sequence !== undefined) {
      if (!Number.isSafeInteger(o.sequence) || o.sequence < 0) throw new RangeError(`bundle sequence must be a non-negative integer, got ${o.sequence}`);
      out.spiffe_sequence = o.sequence;
    }
    if (o.refreshHintSeconds !== undefined) {
      if (!Number.isSafeInteger(o.refreshHintSeconds) || o.refreshHintSeconds < 0) {
        throw new RangeError(`bundle refresh hint must be a non-negative integer of seconds, got ${o.refreshHintSeconds}`);
      }
      out.spiffe_refresh_hint = o.refreshHintSeconds;
    }
    return out;
  }

  /** Every CERTIFICATE block of `pem`. Any other PEM block (a key, a CSR) makes the bundle invalid. */
  static fromPem(trustDomain: string, pem: string): TrustBundle {
    if (typeof pem !== 'string') throw invalid('PEM input is not a string');
    for (const m of pem.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----/g)) {
      if (m[1] !== 'CERTIFICATE') throw invalid(`PEM holds a ${m[1]} block; a trust bundle holds only certificates`);
    }
    let certs: Certificate[];
    try {
      certs = parseCertificates(pem);
    } catch (err) {
      throw invalid((err as Error).message, err);
    }
    return new TrustBundle(trustDomain, certs);
  }

  /**
   * Parses a SPIFFE bundle strictly. Entries whose `use` is not `x509-svid` (for example
   * `jwt-svid`) are skipped, as the bundle specification requires; an `x509-svid` entry must have
   * no `kid`, exactly one x5c certificate, and key members equal to that certificate's key.
   * Anything else, including a bundle with no X.509 root, is WARD_PKI_BUNDLE_INVALID.
   */
  static fromJwks(trustDomain: string, json: string | object): TrustBundle {
    let doc: unknown = json;
    if (typeof json === 'string') {
      if (Buffer.byteLength(json, 'utf8') > MAX_BUNDLE_BYTES) throw invalid(`document is larger than ${MAX_BUNDLE_BYTES} bytes`);
      try {
        doc = JSON.parse(json);
      } catch (err) {
        throw invalid(`not JSON: ${(err as Error).message}`, err);
      }
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw invalid('the document is not a JSON object');
    const d = doc as Record<string, unknown>;
    for (const member of ['spiffe_sequence', 'spiffe_refresh_hint']) {
      const v = d[member];
      if (v !== undefined && (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)) throw invalid(`${member} must be a non-negative integer`);
    }
    if (!Array.isArray(d.keys)) throw invalid('"keys" is missing or not an array');

    const roots: Certificate[] = [];
    d.keys.forEach((entry: unknown, i: number) => {
      const where = `keys[${i}]`;
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw invalid(`${where} is not an object`);
      const k = entry as Record<string, unknown>;
      if (typeof k.use !== 'string') throw invalid(`${where} has no "use"`);
      if (k.use !== 'x509-svid') return;
      if (k.kid !== undefined) throw invalid(`${where} is an x509-svid entry with a "kid", which the X509-SVID specification forbids`);
      if (!Array.isArray(k.x5c) || k.x5c.length === 0) throw invalid(`${where} has no x5c certificate`);
      if (k.x5c.length !== 1) throw invalid(`${where} has ${k.x5c.length} x5c certificates; an x509-svid entry holds exactly one`);
      const b64 = k.x5c[0];
      if (typeof b64 !== 'string' || b64.length === 0 || !BASE64.test(b64)) throw invalid(`${where}.x5c[0] is not standard base64`);
      let cert: Certificate;
      try {
        cert = parseCertificate(Buffer.from(b64, 'base64'));
      } catch (err) {
        throw invalid(`${where}.x5c[0] is not a certificate: ${(err as Error).message}`, err);
      }
      if (typeof k.kty !== 'string') throw invalid(`${where} has no "kty"`);
      const expected = publicJwk(cert);
      if (k.kty !== expected.kty) throw invalid(`${where} says kty ${k.kty} but its certificate holds a ${expected.kty} key`);
      for (const m of KEY_MEMBERS[expected.kty]) {
        if (k[m] !== expected[m]) throw invalid(`${where}.${m} does not match the key of its x5c certificate`);
      }
      roots.push(cert);
    });
    if (roots.length === 0) throw invalid('no x509-svid entry: the bundle carries no X.509 root');
    return new TrustBundle(trustDomain, roots);
  }
}
