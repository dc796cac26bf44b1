/**
 * What the CA agrees to sign. Pure functions, so every rule is testable on its own.
 *
 * CSR POLICY. The identity in a certificate always comes from the caller's authorization (the
 * `identity` argument of issue(), decided by the API layer from the source of truth), never from the
 * CSR. The CSR contributes only its public key, after its self-signature proves possession of the
 * private key. A CSR is refused with WARD_PKI_CSR_UNAUTHORIZED when it asks for anything beyond that
 * one identity, because silently dropping a request hides a misconfigured or hostile client:
 *   - basicConstraints cA=TRUE                  (asks to become a CA)
 *   - keyUsage keyCertSign                      (asks to sign certificates)
 *   - more than one URI SAN                     (an SVID carries exactly one identity)
 *   - a URI SAN other than the authorized ID    (asks for someone else's identity; compared exactly)
 *   - any DNS, IP, email or other-name SAN      (Ward issues SPIFFE identities only)
 * Accepted: no SAN at all, or exactly the authorized URI. The CSR subject is ignored (an SVID leaf
 * has an empty subject) and so are other requested extensions: the CA applies its fixed profile.
 *
 * LIFETIME. Default 1h; a requested lifetime must be 5m..24h (WARD_CA_LIFETIME_INVALID). NotBefore
 * is backdated 30s so a peer whose clock is slightly behind accepts a fresh certificate (no earlier
 * than the issuer's NotBefore); NotAfter is now + lifetime, clamped to the issuing chain's NotAfter
 * (a leaf must never outlive its issuer). An issuer that is expired or not yet valid refuses.
 */
import { WardError } from '../core/errors.js';
import { certificateHostError } from '../core/hostname.js';
import type { SpiffeId } from '../core/identity/index.js';
import type { CsrRequest } from '../core/pki/index.js';

export const DEFAULT_LEAF_TTL_MS = 60 * 60_000;
export const MIN_LEAF_TTL_MS = 5 * 60_000;
export const MAX_LEAF_TTL_MS = 24 * 60 * 60_000;
/** NotBefore backdating for clock skew between the CA and the peers that will verify the leaf. */
export const LEAF_BACKDATE_MS = 30_000;

/** Throws WARD_PKI_CSR_UNAUTHORIZED, naming the first thing the CSR asks for beyond `identity`. */
export function checkCsrPolicy(csr: CsrRequest, identity: SpiffeId): void {
  const refuse = (why: string): never => {
    throw new WardError('WARD_PKI_CSR_UNAUTHORIZED', `CSR refused: ${why}`);
  };
  if (csr.requestsCa) refuse('it asks for a CA certificate (basicConstraints cA=TRUE); only leaf certificates are issued');
  if (csr.requestsKeyCertSign) refuse('it asks for keyCertSign key usage; leaf certificates cannot sign certificates');
  if (csr.uris.length > 1) refuse(`it asks for ${csr.uris.length} URI SANs; a certificate carries exactly one SPIFFE ID`);
  const want = identity.toString();
  if (csr.uris.length === 1 && csr.uris[0] !== want) {
    refuse(`it asks for URI SAN ${JSON.stringify(clipUri(csr.uris[0]))} but the caller is authorized only for ${want}`);
  }
  const others: string[] = [];
  if (csr.dnsNames.length > 0) others.push(`${csr.dnsNames.length} DNS`);
  if (csr.ipAddresses.length > 0) others.push(`${csr.ipAddresses.length} IP`);
  if (csr.emails.length > 0) others.push(`${csr.emails.length} email`);
  if (csr.otherSanCount > 0) others.push(`${csr.otherSanCount} other`);
  if (others.length > 0) refuse(`it asks for ${others.join(', ')} SAN(s); only the SPIFFE ID URI SAN is issued`);
}

/** At most this many DNS names in one internal-name certificate. */
export const MAX_SERVER_NAMES = 16;

/**
 * Internal-name (DNS) certificates for the mesh ingress (issueServerName): `names` must be 1..16
 * distinct route-host-shaped names (lowercase DNS names, a wildcard only as the whole first label;
 * WARD_CA_REQUEST_INVALID otherwise). The CSR contributes its key only: it may ask for no SAN or
 * for DNS names among `names`, nothing else (WARD_PKI_CSR_UNAUTHORIZED).
 */
export function checkServerNames(names: unknown): readonly string[] {
  if (!Array.isArray(names) || names.length === 0 || names.length > MAX_SERVER_NAMES) {
    throw new WardError('WARD_CA_REQUEST_INVALID', `dnsNames must be a list of 1 to ${MAX_SERVER_NAMES} DNS names`);
  }
  const seen = new Set<string>();
  for (const n of names) {
    if (typeof n !== 'string') throw new WardError('WARD_CA_REQUEST_INVALID', 'dnsNames must hold strings');
    const why = certificateHostError(n);
    if (why !== undefined) throw new WardError('WARD_CA_REQUEST_INVALID', `DNS name ${why}`);
    if (seen.has(n)) throw new WardError('WARD_CA_REQUEST_INVALID', `DNS name ${JSON.stringify(n)} is listed twice`);
    seen.add(n);
  }
  return [...seen];
}

export function checkServerNameCsrPolicy(csr: CsrRequest, names: readonly string[]): void {
  const refuse = (why: string): never => {
    throw new WardError('WARD_PKI_CSR_UNAUTHORIZED', `CSR refused: ${why}`);
  };
  if (csr.requestsCa) refuse('it asks for a CA certificate (basicConstraints cA=TRUE); only leaf certificates are issued');
  if (csr.requestsKeyCertSign) refuse('it asks for keyCertSign key usage; leaf certificates cannot sign certificates');
  const other = csr.dnsNames.find((n) => !names.includes(n));
  if (other !== undefined) refuse(`it asks for DNS name ${JSON.stringify(clipUri(other))}, which is not among the names requested`);
  if (csr.uris.length + csr.ipAddresses.length + csr.emails.length + csr.otherSanCount > 0) {
    refuse('it asks for a URI, IP, email or other SAN; an internal-name certificate carries DNS names only');
  }
}

function clipUri(u: string): string {
  return u.length > 200 ? `${u.slice(0, 200)}…` : u;
}

/** Validates a requested lifetime (undefined → the default). */
export function leafLifetime(ttlMs: number | undefined, defaultTtlMs = DEFAULT_LEAF_TTL_MS): number {
  const ttl = ttlMs ?? defaultTtlMs;
  if (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < MIN_LEAF_TTL_MS || ttl > MAX_LEAF_TTL_MS) {
    throw new WardError('WARD_CA_LIFETIME_INVALID', `certificate lifetime must be from 5m to 24h (in whole milliseconds), got ${String(ttl)}ms`);
  }
  return ttl;
}

/** The validity window of an issuing chain: the intersection of its certificates' windows. */
export interface IssuerWindow {
  validFrom: number; // ms
  validUntil: number; // ms, inclusive (RFC 5280: valid through NotAfter)
}

export function assertIssuerValid(w: IssuerWindow, now: number): void {
  if (now < w.validFrom) {
    throw new WardError('WARD_CA_ISSUER_NOT_VALID', `the issuing CA is not valid until ${new Date(w.validFrom).toISOString()}; check the clock`);
  }
  if (now > w.validUntil) {
    throw new WardError('WARD_CA_ISSUER_NOT_VALID', `the issuing CA expired at ${new Date(w.validUntil).toISOString()}; rotate the intermediate`);
  }
}

/** NotBefore/NotAfter for a leaf issued at `now` (the issuer must already be checked valid). */
export function leafValidity(now: number, ttlMs: number, w: IssuerWindow): { notBefore: Date; notAfter: Date } {
  // Certificates carry whole seconds; rounding down here makes the returned dates equal the encoded
  // ones. The issuer's bounds come from certificates, so they are whole seconds and the rounded
  // values stay inside them.
  const sec = (ms: number) => Math.floor(ms / 1000) * 1000;
  const notBefore = Math.max(now - LEAF_BACKDATE_MS, w.validFrom);
  const notAfter = Math.min(now + ttlMs, w.validUntil);
  return { notBefore: new Date(sec(notBefore)), notAfter: new Date(sec(notAfter)) };
}
