/**
 * CA key material: generating roots and issuing intermediates, and validating material an operator
 * brings (BYO), both at init and when a rotation is prepared.
 *
 * Lifetimes (Ward-generated): root 5 years, intermediate 1 year (clamped to its root). The root is
 * long-lived because replacing it means a bundle change everywhere; the intermediate is the key that
 * signs online all day, so it is replaced yearly by an intermediate rotation that needs no bundle
 * change. CA certificates are backdated 5 minutes so peers whose clocks lag accept them at once.
 *
 * Every new issuer is self-tested before it is used: it signs a probe leaf and the probe goes
 * through the same X.509-SVID verification peers apply (verifySvid against the bundle). That catches
 * what field checks miss in BYO material: a parent's pathLen that forbids one more level, name
 * constraints excluding the trust domain, unknown critical extensions, a wrong signature.
 */
import { createHash } from 'node:crypto';
import { WardError } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import {
  LeafSigner,
  PrivateKey,
  createIntermediate,
  createRoot,
  parseCertificate,
  parseCertificates,
  verifySvid,
  type Certificate,
  type TrustBundle,
} from '../core/pki/index.js';
import {
  KEY_FILE_MODE,
  PUBLIC_FILE_MODE,
  issuerCertPath,
  keyPath,
  readKeyFile,
  readTextFile,
  rootCertPath,
  writeFileDurable,
  type CaOrigin,
  type IssuerEntry,
  type RootEntry,
  type StoreHooks,
} from './store.js';
import type { IssuerWindow } from './issuance-policy.js';

const DAY_MS = 86_400_000;
export const DEFAULT_ROOT_TTL_MS = 5 * 365 * DAY_MS;
export const DEFAULT_INTERMEDIATE_TTL_MS = 365 * DAY_MS;
/** The shortest CA lifetime accepted: an issuer must outlive at least one maximum-lifetime leaf. */
export const MIN_CA_TTL_MS = 2 * DAY_MS;
export const CA_BACKDATE_MS = 5 * 60_000;

export interface RootMaterial {
  cert: Certificate;
  /** Absent when the operator brought an intermediate and keeps the root key elsewhere. */
  key?: PrivateKey;
  origin: CaOrigin;
}

export interface IssuerMaterial {
  cert: Certificate;
  key: PrivateKey;
  /** Further intermediates between this issuer and its root (usually empty), nearest first. */
  chain: Certificate[];
  root: Certificate;
  origin: CaOrigin;
}

/** PEM (or DER) input for bring-your-own material. */
export type PemInput = string | Buffer;

export interface ByoMaterial {
  /** Your root certificate, with rootKey: Ward generates the issuing intermediate under it. */
  rootCert?: PemInput;
  rootKey?: PemInput;
  /**
   * Your issuing intermediate with its key and `chain` (its parents up to and including the root).
   * Ward never holds the root key then, so root rotation is the operator's job.
   */
  intermediateCert?: PemInput;
  intermediateKey?: PemInput;
  chain?: PemInput;
}

function shortId(key: PrivateKey): string {
  return createHash('sha256').update(key.publicKeyDer()).digest('hex').slice(0, 8);
}

export function validateCaTtl(name: string, ttlMs: number | undefined, fallback: number): number {
  const ttl = ttlMs ?? fallback;
  if (!Number.isInteger(ttl) || ttl < MIN_CA_TTL_MS) {
    throw new WardError('WARD_CONFIG_INVALID', `${name} must be a whole number of milliseconds of at least 2 days, got ${String(ttlMs)}`);
  }
  return ttl;
}

export function generateRoot(trustDomain: string, now: number, ttlMs: number): RootMaterial {
  const key = PrivateKey.generate();
  // A unique common name per root: during a root rotation two roots coexist, and path builders
  // that match issuers by name should not have to rely on key identifiers to tell them apart.
  const cert = createRoot({
    key,
    trustDomain,
    commonName: `Ward root CA ${shortId(key)}`,
    notBefore: new Date(now - CA_BACKDATE_MS),
    notAfter: new Date(now + ttlMs),
  });
  return { cert, key, origin: 'generated' };
}

export function generateIssuer(root: RootMaterial, trustDomain: string, now: number, ttlMs: number): IssuerMaterial {
  if (!root.key) throw new Error('BUG: generateIssuer needs the root key');
  const key = PrivateKey.generate();
  const notAfter = Math.min(now + ttlMs, root.cert.notAfter.getTime());
  const cert = createIntermediate({
    issuer: { cert: root.cert, key: root.key },
    publicKey: key.publicKey,
    trustDomain,
    commonName: `Ward intermediate CA ${shortId(key)}`,
    notBefore: new Date(Math.max(now - CA_BACKDATE_MS, root.cert.notBefore.getTime())),
    notAfter: new Date(notAfter),
    pathLen: 0,
  });
  return { cert, key, chain: [], root: root.cert, origin: 'generated' };
}

function chainInvalid(message: string): WardError {
  return new WardError('WARD_PKI_CHAIN_INVALID', message);
}

function assertP256(what: string, cert: Certificate): void {
  const d = cert.publicKey.asymmetricKeyDetails;
  if (cert.publicKey.asymmetricKeyType !== 'ec' || d?.namedCurve !== 'prime256v1') {
    throw new WardError('WARD_PKI_KEY_INVALID', `${what}: the certificate's key must be ECDSA P-256, got ${cert.publicKey.asymmetricKeyType ?? 'unknown'} ${d?.namedCurve ?? ''}`.trim());
  }
}

function assertKeyMatches(what: string, cert: Certificate, key: PrivateKey): void {
  const certSpki = cert.publicKey.export({ format: 'der', type: 'spki' });
  if (!certSpki.equals(key.publicKeyDer())) {
    throw new WardError('WARD_PKI_KEY_MISMATCH', `${what}: the private key does not belong to the certificate (${cert.subject || cert.fingerprintSha256})`);
  }
}

function assertSigningCa(what: string, cert: Certificate): void {
  if (!cert.isCa) throw chainInvalid(`${what}: ${cert.subject || cert.fingerprintSha256} is not a CA certificate (basicConstraints cA is not TRUE)`);
  if (!cert.keyUsage?.includes('keyCertSign')) {
    throw chainInvalid(`${what}: ${cert.subject || cert.fingerprintSha256} lacks the keyCertSign key usage, so it cannot sign certificates`);
  }
}

function assertValidNow(what: string, cert: Certificate, now: number): void {
  if (now < cert.notBefore.getTime()) {
    throw new WardError('WARD_CA_ISSUER_NOT_VALID', `${what}: ${cert.subject || cert.fingerprintSha256} is not valid until ${cert.notBefore.toISOString()}`);
  }
  if (now > cert.notAfter.getTime()) {
    throw new WardError('WARD_CA_ISSUER_NOT_VALID', `${what}: ${cert.subject || cert.fingerprintSha256} expired at ${cert.notAfter.toISOString()}`);
  }
}

function assertTrustDomain(what: string, cert: Certificate, trustDomain: string): void {
  for (const uri of cert.uris) {
    const id = SpiffeId.tryParse(uri);
    if (id && id.trustDomain !== trustDomain) {
      throw chainInvalid(`${what}: ${cert.subject || cert.fingerprintSha256} is for trust domain ${id.trustDomain}, not ${trustDomain}`);
    }
  }
}

function isSelfSigned(cert: Certificate): boolean {
  if (!cert.subjectDer.equals(cert.issuerDer)) return false;
  try {
    return cert.x509.verify(cert.publicKey);
  } catch {
    return false;
  }
}

function parseOne(what: string, input: PemInput): Certificate {
  const text = typeof input === 'string' ? input : input.toString('latin1');
  if ((text.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0) > 1) {
    throw new WardError('WARD_CONFIG_INVALID', `${what} must hold exactly one certificate`);
  }
  return parseCertificate(input);
}

function parseKey(what: string, input: PemInput): PrivateKey {
  try {
    return PrivateKey.from(input);
  } catch (err) {
    if (err instanceof WardError) throw new WardError(err.code, `${what}: ${err.message}`, { cause: err });
    throw err;
  }
}

/** Validates an operator's root + key (Ward will create the intermediate under it). */
export function loadByoRoot(certPem: PemInput, keyPem: PemInput, trustDomain: string, now: number): RootMaterial {
  const cert = parseOne('rootCert', certPem);
  const key = parseKey('rootKey', keyPem);
  assertP256('rootCert', cert);
  assertKeyMatches('rootKey', cert, key);
  assertSigningCa('rootCert', cert);
  if (!isSelfSigned(cert)) throw chainInvalid('rootCert: the certificate is not self-signed, so it is not a root; bring it as intermediateCert with its chain instead');
  if (cert.pathLen === 0) throw chainInvalid('rootCert: pathLen is 0, so it cannot have the intermediate Ward issues from');
  assertTrustDomain('rootCert', cert, trustDomain);
  assertValidNow('rootCert', cert, now);
  return { cert, key, origin: 'byo' };
}

/** Validates an operator's issuing intermediate + key + chain up to and including the root. */
export function loadByoIntermediate(certPem: PemInput, keyPem: PemInput, chainPem: PemInput, trustDomain: string, now: number): IssuerMaterial {
  const cert = parseOne('intermediateCert', certPem);
  const key = parseKey('intermediateKey', keyPem);
  assertP256('intermediateCert', cert);
  assertKeyMatches('intermediateKey', cert, key);
  assertSigningCa('intermediateCert', cert);
  assertTrustDomain('intermediateCert', cert, trustDomain);
  let parents = parseCertificates(typeof chainPem === 'string' ? chainPem : chainPem.toString('utf8'));
  // Accept a chain file that starts with the intermediate itself (a common way to export one).
  if (parents.length > 0 && parents[0].der.equals(cert.der)) parents = parents.slice(1);
  if (parents.length === 0) throw chainInvalid('chain: it must hold the certificates above intermediateCert, up to and including the root');
  if (isSelfSigned(cert)) throw chainInvalid('intermediateCert: the certificate is self-signed (a root); bring it as rootCert with rootKey instead');
  const root = parents[parents.length - 1];
  if (!isSelfSigned(root)) throw chainInvalid('chain: the last certificate is not a self-signed root; the chain must end with the root');
  let child = cert;
  for (const [i, parent] of parents.entries()) {
    const what = `chain[${i}]`;
    assertSigningCa(what, parent);
    assertTrustDomain(what, parent, trustDomain);
    if (!child.issuerDer.equals(parent.subjectDer)) throw chainInvalid(`${what}: ${parent.subject || parent.fingerprintSha256} did not issue ${child.subject || child.fingerprintSha256} (name mismatch); order the chain from the intermediate's issuer up to the root`);
    let ok = false;
    try {
      ok = child.x509.verify(parent.publicKey);
    } catch {
      ok = false;
    }
    if (!ok) throw chainInvalid(`${what}: the signature on ${child.subject || child.fingerprintSha256} does not verify with ${parent.subject || parent.fingerprintSha256}'s key`);
    child = parent;
  }
  assertValidNow('intermediateCert', cert, now);
  for (const [i, parent] of parents.entries()) assertValidNow(`chain[${i}]`, parent, now);
  return { cert, key, chain: parents.slice(0, -1), root, origin: 'byo' };
}

/** The window in which every certificate of the issuing chain is valid. */
export function issuerWindow(m: { cert: Certificate; chain: Certificate[]; root: Certificate }): IssuerWindow {
  const all = [m.cert, ...m.chain, m.root];
  return {
    validFrom: Math.max(...all.map((c) => c.notBefore.getTime())),
    validUntil: Math.min(...all.map((c) => c.notAfter.getTime())),
  };
}

/**
 * Signs a probe leaf with the issuer and verifies it exactly as a peer would, against `bundle`.
 * Throws WARD_PKI_CHAIN_INVALID with the verifier's reason when a peer would reject its leaves.
 */
export async function selfTestIssuer(m: IssuerMaterial, bundle: TrustBundle, now: number): Promise<void> {
  const w = issuerWindow(m);
  if (now < w.validFrom || now > w.validUntil) {
    throw new WardError('WARD_CA_ISSUER_NOT_VALID', `the issuing chain of ${m.cert.subject || m.cert.fingerprintSha256} is valid only from ${new Date(w.validFrom).toISOString()} to ${new Date(w.validUntil).toISOString()}`);
  }
  const id = SpiffeId.fromSegments(bundle.trustDomain, 'ward', 'ca-self-test');
  const signer = new LeafSigner({ cert: m.cert, key: m.key });
  // The probe reuses the issuer's public key: only the signature path is under test, not the key.
  const probe = signer.sign({
    publicKeyDer: m.key.publicKeyDer(),
    id,
    notBefore: new Date(Math.max(Math.floor((now - 1000) / 1000) * 1000, w.validFrom)),
    notAfter: new Date(Math.min(Math.floor((now + 300_000) / 1000) * 1000, w.validUntil)),
  });
  const chain = [parseCertificate(probe.der), m.cert, ...m.chain];
  const result = await verifySvid(chain, bundle, new Date(now), { expectedId: id });
  if (!result.ok) {
    throw chainInvalid(`certificates issued by ${m.cert.subject || m.cert.fingerprintSha256} would not verify (${result.reason}): ${result.detail}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Persistence (file names: see the layout in store.ts)

function pemOf(certs: Certificate[]): string {
  return certs.map((c) => (c.pem.endsWith('\n') ? c.pem : `${c.pem}\n`)).join('');
}

/** Writes a root's certificate and (when held) key. Call before committing ca.json. */
export async function saveRoot(stateDir: string, m: RootMaterial, hooks?: StoreHooks): Promise<void> {
  const fp = m.cert.fingerprintSha256;
  if (m.key) await writeFileDurable(keyPath(stateDir, fp), m.key.exportPem(), { mode: KEY_FILE_MODE, hooks });
  await writeFileDurable(rootCertPath(stateDir, fp), pemOf([m.cert]), { mode: PUBLIC_FILE_MODE, hooks });
}

/** Writes an issuer's key and its certificate followed by its further intermediates. */
export async function saveIssuer(stateDir: string, m: IssuerMaterial, hooks?: StoreHooks): Promise<void> {
  const fp = m.cert.fingerprintSha256;
  await writeFileDurable(keyPath(stateDir, fp), m.key.exportPem(), { mode: KEY_FILE_MODE, hooks });
  await writeFileDurable(issuerCertPath(stateDir, fp), pemOf([m.cert, ...m.chain]), { mode: PUBLIC_FILE_MODE, hooks });
}

function stateCorrupt(path: string, detail: string, cause?: unknown): WardError {
  return new WardError('WARD_CA_STATE_CORRUPT', `${path}: ${detail}`, { cause });
}

function parseStored(path: string, text: string): Certificate[] {
  try {
    return parseCertificates(text);
  } catch (cause) {
    throw stateCorrupt(path, 'not a readable certificate file', cause);
  }
}

async function loadKey(path: string, cert: Certificate): Promise<PrivateKey> {
  const pem = await readKeyFile(path);
  let key: PrivateKey;
  try {
    key = PrivateKey.from(pem);
  } catch (cause) {
    throw stateCorrupt(path, 'not a readable ECDSA P-256 private key', cause);
  }
  if (!cert.publicKey.export({ format: 'der', type: 'spki' }).equals(key.publicKeyDer())) {
    throw stateCorrupt(path, `the key does not belong to certificate ${cert.fingerprintSha256}`);
  }
  return key;
}

export async function loadRoot(stateDir: string, e: RootEntry): Promise<RootMaterial> {
  const path = rootCertPath(stateDir, e.fingerprint);
  const [cert] = parseStored(path, await readTextFile(path));
  if (cert.fingerprintSha256 !== e.fingerprint) throw stateCorrupt(path, `holds ${cert.fingerprintSha256}, expected ${e.fingerprint}`);
  const key = e.hasKey ? await loadKey(keyPath(stateDir, e.fingerprint), cert) : undefined;
  return { cert, key, origin: e.origin };
}

export async function loadIssuer(stateDir: string, e: IssuerEntry, root: Certificate): Promise<IssuerMaterial> {
  const path = issuerCertPath(stateDir, e.fingerprint);
  const [cert, ...chain] = parseStored(path, await readTextFile(path));
  if (cert.fingerprintSha256 !== e.fingerprint) throw stateCorrupt(path, `holds ${cert.fingerprintSha256}, expected ${e.fingerprint}`);
  const key = await loadKey(keyPath(stateDir, e.fingerprint), cert);
  return { cert, key, chain, root, origin: e.origin };
}

/** Issuer certificate followed by its further intermediates, as PEM (what a leaf's holder presents after the leaf). */
export function issuerChainPem(m: IssuerMaterial): string {
  return pemOf([m.cert, ...m.chain]);
}
