/**
 * Peer verification, in two layers (DESIGN.md §2: "peers are verified twice"):
 *
 *  1. validatePath — RFC 5280 path validation of a leaf against trusted roots at an explicit time.
 *     pkijs' CertificateChainValidationEngine is the engine (signatures, name chaining, CA checks,
 *     certificate policies). Around it Ward adds what pkijs does not do (read from its source,
 *     pkijs 3.4.3 build/index.es.js): bounded path building (pkijs recurses without a visited set
 *     and loops on cross-signed cycles), basicConstraints criticality and pathLenConstraint, key
 *     usage consistency on every certificate, SKI/AKI presence, unknown critical extensions on the
 *     leaf, a v1/v2 certificate anywhere, serial-number and algorithm profile, a maximum depth,
 *     the extended key usage asked for, and name constraints with intersection semantics (pkijs
 *     unions the permitted subtrees of successive CAs, lets one matching name stand for all, and
 *     ignores the trust anchor's constraints and directoryName SANs). Every refusal has a typed
 *     reason.
 *
 *  2. checkSvidLeaf — the X.509-SVID leaf rules a plain path validator accepts: a CA certificate
 *     used as a leaf, two URI SANs, a foreign trust domain, a server certificate without
 *     serverAuth, the wrong identity (secure naming). It is synchronous because the TLS layer calls
 *     it from checkServerIdentity after OpenSSL has already validated the path.
 *
 * verifySvid composes the two against a TrustBundle.
 */
import { createPublicKey, webcrypto } from 'node:crypto';
// Types only at load: pkijs and asn1js (~20 MB resident) are loaded on the first path validation,
// so processes that only use the TLS-time checks (node proxies: checkSvidLeaf) never load them.
import type * as asn1js from 'asn1js';
import type * as pkijs from 'pkijs';
import { SpiffeId } from '../identity/spiffe-id.js';
import type { Certificate } from './certificate.js';
import type { TrustBundle } from './trust-bundle.js';

export type PathRejectReason =
  | 'malformed' // unparseable certificate or extension, duplicate extension, bad serial, empty issuer, mismatched algorithm fields
  | 'no-path' // no chain from the leaf to a trusted root could be built
  | 'expired'
  | 'not-yet-valid'
  | 'bad-signature'
  | 'not-a-ca' // an issuing certificate lacks basicConstraints cA=TRUE (or is v1/v2)
  | 'ca-key-usage' // key usage inconsistent with the CA role (issuer without keyCertSign, keyCertSign without cA, …)
  | 'path-length' // a pathLenConstraint is exceeded
  | 'unknown-critical-extension'
  | 'invalid-extension' // an extension with a forbidden criticality, a missing SKI/AKI, an empty key usage, …
  | 'name-constraints' // a name outside the permitted / inside the excluded subtrees, or an invalid constraint
  | 'too-deep' // more intermediates than maxDepth allows
  | 'unsupported-algorithm' // a key or signature algorithm outside Ward's allow-list
  | 'unsupported-version' // not an X.509 v3 certificate
  | 'extended-key-usage' // the leaf (or a CA above it) does not allow the requested extended key usage
  | 'policy'; // certificate policy processing (RFC 5280 6.1.3 d-f) left no valid policy

export type SvidRejectReason =
  | 'no-uri-san'
  | 'multiple-uri-sans'
  | 'non-uri-san' // an IP-address or e-mail SAN; Ward peers are named by their URI SAN only (DNS SANs are allowed)
  | 'invalid-spiffe-id'
  | 'leaf-is-ca'
  | 'leaf-is-root'
  | 'missing-key-usage'
  | 'key-usage-not-critical'
  | 'leaf-key-cert-sign'
  | 'leaf-crl-sign'
  | 'missing-digital-signature'
  | 'missing-server-auth'
  | 'missing-client-auth'
  | 'foreign-trust-domain'
  | 'unexpected-identity';

export type PathResult = { ok: true; path: Certificate[] } | { ok: false; reason: PathRejectReason; detail: string };
export type SvidLeafResult = { ok: true; id: SpiffeId } | { ok: false; reason: SvidRejectReason; detail: string };
export type VerifyResult =
  | { ok: true; id: SpiffeId; path: Certificate[] /* leaf..root */ }
  | { ok: false; reason: PathRejectReason | SvidRejectReason; detail: string };

export type SvidUsage = 'client' | 'server' | 'any';

export interface ValidatePathOptions {
  leaf: Certificate;
  /** Untrusted certificates that may be used to build the path, in any order. */
  intermediates: Certificate[];
  /** Trust anchors. A path ends at the first trusted certificate reached. */
  roots: Certificate[];
  /** The instant at which every certificate of the path must be valid. */
  at: Date;
  /**
   * Most intermediates allowed between leaf and root, not counting self-issued ones (as for
   * pathLenConstraint, RFC 5280 6.1.4 l). Default DEFAULT_MAX_DEPTH. Bounded by MAX_PATH_INTERMEDIATES
   * whatever the caller asks, so path building always terminates quickly.
   */
  maxDepth?: number;
  /**
   * An extended key usage the leaf must allow ('serverAuth', 'clientAuth' or an OID). A leaf without
   * the EKU extension allows every usage (RFC 5280 4.2.1.12); a CA certificate that carries EKU must
   * list it or anyExtendedKeyUsage (the same rule OpenSSL applies to the chain).
   */
  extendedKeyUsage?: string;
}

export const DEFAULT_MAX_DEPTH = 5;
/** Hard cap on intermediates in one path (self-issued included): bounds the search on any input. */
export const MAX_PATH_INTERMEDIATES = 8;
/** More untrusted certificates than this is not a chain anyone needs to send. */
export const MAX_INTERMEDIATES_INPUT = 32;
/** Path-building budget: signature checks across the whole search, and complete paths evaluated. */
const MAX_SIGNATURE_CHECKS = 128;
const MAX_COMPLETE_PATHS = 16;

// ---------------------------------------------------------------------------------------------
// OIDs and allow-lists

const OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  nameConstraints: '2.5.29.30',
  certificatePolicies: '2.5.29.32',
  policyMappings: '2.5.29.33',
  authorityKeyIdentifier: '2.5.29.35',
  policyConstraints: '2.5.29.36',
  extKeyUsage: '2.5.29.37',
  inhibitAnyPolicy: '2.5.29.54',
  authorityInfoAccess: '1.3.6.1.5.5.7.1.1',
  emailAddress: '1.2.840.113549.1.9.1',
  anyExtendedKeyUsage: '2.5.29.37.0',
} as const;

const EKU_NAMES: Record<string, string> = {
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
};

/** Extensions Ward (with pkijs) actually processes: only these may be critical. */
const PROCESSED_EXTENSIONS = new Set<string>([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.nameConstraints,
  OID.certificatePolicies,
  OID.policyMappings,
  OID.policyConstraints,
  OID.inhibitAnyPolicy,
]);

/** RFC 5280 4.2.1.1, 4.2.1.2, 4.2.2.1: conforming CAs MUST mark these non-critical. */
const MUST_BE_NON_CRITICAL: Record<string, string> = {
  [OID.authorityKeyIdentifier]: 'authorityKeyIdentifier',
  [OID.subjectKeyIdentifier]: 'subjectKeyIdentifier',
  [OID.authorityInfoAccess]: 'authorityInfoAccess',
};

/** Extensions whose value Ward reads, so a value that does not decode refuses the certificate. */
const DECODED_EXTENSIONS = new Set<string>([...PROCESSED_EXTENSIONS, OID.authorityKeyIdentifier, OID.subjectKeyIdentifier, OID.authorityInfoAccess]);

/** Signature algorithms accepted on any signature Ward verifies: SHA-2 ECDSA, RSA PKCS#1 v1.5 and PSS. */
const SIGNATURE_ALGORITHMS: Record<string, string> = {
  '1.2.840.10045.4.3.2': 'ecdsa-with-SHA256',
  '1.2.840.10045.4.3.3': 'ecdsa-with-SHA384',
  '1.2.840.10045.4.3.4': 'ecdsa-with-SHA512',
  '1.2.840.113549.1.1.11': 'sha256WithRSAEncryption',
  '1.2.840.113549.1.1.12': 'sha384WithRSAEncryption',
  '1.2.840.113549.1.1.13': 'sha512WithRSAEncryption',
  '1.2.840.113549.1.1.10': 'RSASSA-PSS',
};
const EC_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
const MIN_RSA_BITS = 2048;

// pkijs is given node's WebCrypto explicitly on every call, so Ward never depends on (or mutates)
// pkijs' process-global engine. The engine object is immutable configuration, built once.
let ASN1: typeof asn1js;
let PKI: typeof pkijs;
let cryptoEngine: pkijs.CryptoEngine;

async function loadPkijs(): Promise<void> {
  if (PKI) return;
  const [a, p] = await Promise.all([import('asn1js'), import('pkijs')]);
  ASN1 = a;
  PKI = p;
  cryptoEngine = new p.CryptoEngine({
    name: 'node-webcrypto',
    crypto: webcrypto as unknown as ConstructorParameters<typeof pkijs.CryptoEngine>[0]['crypto'],
  });
}

// ---------------------------------------------------------------------------------------------
// Per-certificate facts, parsed once per validatePath call

type Failure = { reason: PathRejectReason; detail: string };
type GeneralName = pkijs.GeneralName;

interface Parsed {
  readonly cert: Certificate;
  readonly pk: pkijs.Certificate;
  readonly label: string;
  readonly der: Buffer;
  readonly keyId: string; // subject DER + SPKI DER: the "logical CA", for loop detection
  readonly selfIssued: boolean;
  readonly bc?: { cA: boolean; pathLen?: number; critical: boolean };
  readonly ku?: { digitalSignature: boolean; keyCertSign: boolean; cRLSign: boolean; critical: boolean };
  readonly eku?: string[];
  readonly ski?: Buffer;
  readonly aki?: { keyId?: Buffer; hasIssuer: boolean; hasSerial: boolean };
  readonly sans: GeneralName[];
  readonly nc?: { permitted: pkijs.GeneralSubtree[]; excluded: pkijs.GeneralSubtree[]; critical: boolean };
  /** Position-independent defect, found at parse time (except validity, which depends on `at`). */
  readonly defect?: Failure;
}

function fail(reason: PathRejectReason, detail: string): Failure {
  return { reason, detail };
}

/** How a certificate is named in refusal details: its CN, else its first URI SAN, and its serial. */
function describe(pk: pkijs.Certificate): string {
  const cn = pk.subject.typesAndValues.find((t) => t.type === '2.5.4.3');
  let name = cn ? String(cn.value.valueBlock.value) : '';
  if (!name) {
    const san = (pk.extensions ?? []).find((e) => e.extnID === OID.subjectAltName);
    const uri = (san?.parsedValue?.altNames as GeneralName[] | undefined)?.find((n) => n.type === 6);
    if (uri) name = String(uri.value);
  }
  const serial = Buffer.from(pk.serialNumber.valueBlock.valueHexView).toString('hex');
  return name ? `"${name}" (serial ${serial})` : `serial ${serial}`;
}

function bytes(view: ArrayBuffer | Uint8Array): Buffer {
  return Buffer.from(view instanceof Uint8Array ? view : new Uint8Array(view));
}

/** Decodes one extension value; a value that is not exactly one well-formed element is refused. */
function decodeExtension(ext: pkijs.Extension): { ok: true; value: any } | { ok: false } {
  const raw = ext.extnValue.valueBlock.valueHexView;
  const asn = ASN1.fromBER(raw);
  if (asn.offset === -1 || asn.offset !== raw.byteLength) return { ok: false };
  let value: any;
  try {
    value = ext.parsedValue;
  } catch {
    return { ok: false };
  }
  if (value === undefined || value === null || (typeof value === 'object' && 'parsingError' in value)) return { ok: false };
  return { ok: true, value };
}

function parse(cert: Certificate, role: string): Parsed | Failure {
  const der = Buffer.from(cert.der);
  const top = ASN1.fromBER(der);
  if (top.offset === -1 || top.offset !== der.length) return fail('malformed', `${role} certificate is not a single DER element`);
  let pk: pkijs.Certificate;
  try {
    pk = new PKI.Certificate({ schema: top.result });
  } catch (err) {
    return fail('malformed', `${role} certificate does not parse: ${(err as Error).message}`);
  }
  const label = `${role} ${describe(pk)}`;
  let subjectDer: Buffer;
  let spkiDer: Buffer;
  try {
    subjectDer = Buffer.from(pk.subject.toSchema().toBER());
    spkiDer = Buffer.from(pk.subjectPublicKeyInfo.toSchema().toBER());
  } catch (err) {
    return fail('malformed', `${label}: cannot re-encode subject or key: ${(err as Error).message}`);
  }
  const facts: {
    -readonly [K in keyof Parsed]?: Parsed[K];
  } = {
    cert,
    pk,
    label,
    der,
    keyId: `${subjectDer.toString('hex')}/${spkiDer.toString('hex')}`,
    selfIssued: pk.subject.isEqual(pk.issuer),
    sans: [],
  };
  facts.defect = intrinsicDefect(pk, label, facts, spkiDer);
  return facts as Parsed;
}

/**
 * Checks that depend on the certificate alone. Fills `facts` with the decoded extensions on the
 * way, returning the first defect found.
 */
function intrinsicDefect(pk: pkijs.Certificate, label: string, facts: { -readonly [K in keyof Parsed]?: Parsed[K] }, spkiDer: Buffer): Failure | undefined {
  // v3 only: a v1/v2 certificate cannot carry basicConstraints, so as an issuer it would be a CA by
  // assumption (the legacy behaviour RFC 5280 6.1.4 k warns about), and X.509-SVID is v3.
  if (pk.version !== 2) return fail('unsupported-version', `${label} is X.509 v${pk.version + 1}; only v3 certificates are accepted`);

  // RFC 5280 4.1.2.2: a positive integer of at most 20 octets (a leading 0x00 pad is not counted).
  const serial = bytes(pk.serialNumber.valueBlock.valueHexView);
  if (serial.length === 0) return fail('malformed', `${label} has an empty serial number`);
  if ((serial[0] & 0x80) !== 0) return fail('malformed', `${label} has a negative serial number`);
  const magnitude = serial[0] === 0 ? serial.subarray(1) : serial;
  if (magnitude.length > 20) return fail('malformed', `${label} has a serial number longer than 20 octets`);
  if (magnitude.every((b) => b === 0)) return fail('malformed', `${label} has serial number zero`);

  // RFC 5280 4.1.1.2 / 4.1.2.3: both algorithm fields must be identical.
  const outer = Buffer.from(pk.signatureAlgorithm.toSchema().toBER());
  const inner = Buffer.from(pk.signature.toSchema().toBER());
  if (!outer.equals(inner)) return fail('malformed', `${label} has a signatureAlgorithm different from its tbsCertificate signature field`);

  // RFC 5280 4.1.2.4: the issuer field MUST contain a non-empty distinguished name.
  if (pk.issuer.typesAndValues.length === 0) return fail('malformed', `${label} has an empty issuer name`);

  const keyProblem = publicKeyProblem(spkiDer);
  if (keyProblem) return fail('unsupported-algorithm', `${label}: ${keyProblem}`);

  const seen = new Set<string>();
  for (const ext of pk.extensions ?? []) {
    if (seen.has(ext.extnID)) return fail('malformed', `${label} has the extension ${ext.extnID} more than once`);
    seen.add(ext.extnID);
    if (ext.critical && !PROCESSED_EXTENSIONS.has(ext.extnID)) {
      const name = MUST_BE_NON_CRITICAL[ext.extnID];
      if (name) return fail('invalid-extension', `${label} marks ${name} critical, which RFC 5280 forbids`);
      return fail('unknown-critical-extension', `${label} has an unrecognised critical extension ${ext.extnID}`);
    }
    if (!DECODED_EXTENSIONS.has(ext.extnID)) continue;
    const decoded = decodeExtension(ext);
    if (!decoded.ok) return fail('malformed', `${label} has a malformed ${ext.extnID} extension`);
    const v = decoded.value;
    switch (ext.extnID) {
      case OID.basicConstraints: {
        let pathLen: number | undefined;
        if (v.pathLenConstraint !== undefined) {
          // pkijs keeps an over-long INTEGER as an asn1js object: larger than any real path.
          const value: number = typeof v.pathLenConstraint === 'number' ? v.pathLenConstraint : Number.MAX_SAFE_INTEGER;
          if (value < 0) return fail('malformed', `${label} has a negative pathLenConstraint`);
          pathLen = value;
        }
        facts.bc = { cA: v.cA === true, pathLen, critical: ext.critical };
        break;
      }
      case OID.keyUsage: {
        const b = bytes(v.valueBlock.valueHexView);
        if (b.every((x) => x === 0)) return fail('invalid-extension', `${label} has a key usage extension with no bit set`);
        facts.ku = { digitalSignature: (b[0] & 0x80) !== 0, keyCertSign: (b[0] & 0x04) !== 0, cRLSign: (b[0] & 0x02) !== 0, critical: ext.critical };
        break;
      }
      case OID.extKeyUsage:
        if (!Array.isArray(v.keyPurposes) || v.keyPurposes.length === 0) return fail('malformed', `${label} has an empty extended key usage`);
        facts.eku = v.keyPurposes.map(String);
        break;
      case OID.subjectAltName: {
        const names: GeneralName[] = v.altNames ?? [];
        if (names.length === 0) return fail('malformed', `${label} has an empty subjectAltName`);
        for (const n of names) {
          const bad = generalNameProblem(n);
          if (bad) return fail('malformed', `${label} has an invalid subjectAltName entry: ${bad}`);
        }
        facts.sans = names;
        break;
      }
      case OID.nameConstraints: {
        const permitted: pkijs.GeneralSubtree[] = v.permittedSubtrees ?? [];
        const excluded: pkijs.GeneralSubtree[] = v.excludedSubtrees ?? [];
        facts.nc = { permitted, excluded, critical: ext.critical };
        break;
      }
      case OID.subjectKeyIdentifier:
        facts.ski = bytes(v.valueBlock.valueHexView);
        break;
      case OID.authorityKeyIdentifier:
        facts.aki = {
          keyId: v.keyIdentifier ? bytes(v.keyIdentifier.valueBlock.valueHexView) : undefined,
          hasIssuer: v.authorityCertIssuer !== undefined,
          hasSerial: v.authorityCertSerialNumber !== undefined,
        };
        break;
      case OID.authorityInfoAccess:
        // RFC 5280 4.2.2.1: SEQUENCE SIZE (1..MAX) OF AccessDescription.
        if (!Array.isArray(v.accessDescriptions) || v.accessDescriptions.length === 0) {
          return fail('malformed', `${label} has an empty authorityInfoAccess extension`);
        }
        break;
      default:
        break;
    }
  }

  // RFC 5280 4.1.2.6 / 4.2.1.6: an empty subject requires a critical subjectAltName.
  if (pk.subject.typesAndValues.length === 0) {
    const san = (pk.extensions ?? []).find((e) => e.extnID === OID.subjectAltName);
    if (!san) return fail('invalid-extension', `${label} has an empty subject and no subjectAltName`);
    if (!san.critical) return fail('invalid-extension', `${label} has an empty subject but a non-critical subjectAltName`);
  }

  // Key usage and basic constraints must agree wherever the certificate sits (RFC 5280 4.2.1.3, 4.2.1.9).
  const isCa = facts.bc?.cA === true;
  if (facts.ku?.keyCertSign && !isCa) return fail('ca-key-usage', `${label} asserts keyCertSign without basicConstraints cA=TRUE`);
  if (isCa && facts.ku && !facts.ku.keyCertSign) return fail('ca-key-usage', `${label} is a CA (cA=TRUE) whose key usage lacks keyCertSign`);
  if (facts.bc?.pathLen !== undefined && (!isCa || (facts.ku && !facts.ku.keyCertSign))) {
    return fail('ca-key-usage', `${label} carries pathLenConstraint without being a keyCertSign CA`);
  }

  if (facts.nc) {
    const ncProblem = nameConstraintsProblem(facts.nc, isCa);
    if (ncProblem) return fail('name-constraints', `${label}: ${ncProblem}`);
  }
  return undefined;
}

function publicKeyProblem(spkiDer: Buffer): string | undefined {
  let key;
  try {
    key = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  } catch {
    return 'its public key cannot be read';
  }
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      return EC_CURVES.has(details.namedCurve ?? '') ? undefined : `EC curve ${details.namedCurve ?? 'unknown'} is not accepted (P-256, P-384, P-521 are)`;
    case 'rsa':
    case 'rsa-pss':
      return (details.modulusLength ?? 0) >= MIN_RSA_BITS ? undefined : `RSA key of ${details.modulusLength} bits is too small (minimum ${MIN_RSA_BITS})`;
    default:
      return `public key type ${key.asymmetricKeyType} is not accepted`;
  }
}

// ---------------------------------------------------------------------------------------------
// Names: syntax and name-constraint matching (RFC 5280 4.2.1.10)

const DNS_LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/i;

/** A dNSName in preferred name syntax, with at most a whole-label wildcard on the left. */
function dnsNameProblem(name: string, allowWildcard: boolean): string | undefined {
  if (name.length === 0 || name.length > 253) return 'empty or too long';
  const labels = name.split('.');
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    if (i === 0 && l === '*' && allowWildcard && labels.length > 1) continue;
    if (!DNS_LABEL.test(l)) return `label ${JSON.stringify(l)} is not valid`;
  }
  return undefined;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7e || s.charCodeAt(i) < 0x20) return false;
  return true;
}

function generalNameProblem(n: GeneralName): string | undefined {
  switch (n.type) {
    case 1: {
      const v = String(n.value);
      if (!isAscii(v) || !v.includes('@')) return `rfc822Name ${JSON.stringify(v)}`;
      return undefined;
    }
    case 2: {
      const v = String(n.value);
      if (!isAscii(v)) return 'dNSName with non-ASCII characters';
      const p = dnsNameProblem(v, true);
      return p ? `dNSName ${JSON.stringify(v)}: ${p}` : undefined;
    }
    case 6: {
      const v = String(n.value);
      if (!isAscii(v) || !/^[a-z][a-z0-9+.-]*:/i.test(v)) return `URI ${JSON.stringify(v)}`;
      return undefined;
    }
    case 7: {
      const len = (n.value as asn1js.OctetString).valueBlock.valueHexView.byteLength;
      return len === 4 || len === 16 ? undefined : `iPAddress of ${len} octets`;
    }
    default:
      return undefined;
  }
}

const CONSTRAINT_FORMS = new Set([1, 2, 4, 6, 7]);

function nameConstraintsProblem(nc: NonNullable<Parsed['nc']>, isCa: boolean): string | undefined {
  if (!isCa) return 'name constraints may appear only in CA certificates';
  if (!nc.critical) return 'the name constraints extension must be critical (RFC 5280 4.2.1.10)';
  if (nc.permitted.length === 0 && nc.excluded.length === 0) return 'name constraints with neither permitted nor excluded subtrees';
  for (const st of [...nc.permitted, ...nc.excluded]) {
    if ((st.minimum ?? 0) !== 0 || st.maximum !== undefined) return 'a subtree sets minimum or maximum, which RFC 5280 forbids';
    const b = st.base;
    if (!CONSTRAINT_FORMS.has(b.type)) return `a constraint of GeneralName type ${b.type} is not supported`;
    if (b.type === 2) {
      const v = String(b.value);
      const body = v.startsWith('.') ? v.slice(1) : v;
      if (v.length > 0 && (!isAscii(v) || dnsNameProblem(body, false))) return `invalid dNSName constraint ${JSON.stringify(v)}`;
    }
    if (b.type === 7) {
      const raw = bytes((b.value as asn1js.OctetString).valueBlock.valueHexView);
      if (raw.length !== 8 && raw.length !== 32) return `iPAddress constraint of ${raw.length} octets is not an address and mask`;
      const mask = raw.subarray(raw.length / 2);
      let bits = '';
      for (const x of mask) bits += x.toString(2).padStart(8, '0');
      if (!/^1*0*$/.test(bits)) return 'iPAddress constraint mask is not contiguous';
    }
    if ((b.type === 1 || b.type === 6) && !isAscii(String(b.value))) return `non-ASCII constraint ${JSON.stringify(String(b.value))}`;
  }
  return undefined;
}

function dnsWithin(name: string, constraint: string): boolean {
  const n = name.toLowerCase();
  const c = constraint.toLowerCase();
  if (c.length === 0) return true;
  if (c.startsWith('.')) return n.endsWith(c);
  return n === c || n.endsWith(`.${c}`);
}

/** Whether a wildcard name could stand for a name inside the (excluded) constraint. */
function wildcardReaches(name: string, constraint: string): boolean {
  if (!name.startsWith('*.')) return false;
  const base = name.slice(2).toLowerCase();
  const c = constraint.toLowerCase().replace(/^\./, '');
  return c.endsWith(`.${base}`) && c.split('.').length === base.split('.').length + 1;
}

function emailWithin(name: string, constraint: string): boolean {
  const at = name.lastIndexOf('@');
  const host = name.slice(at + 1).toLowerCase();
  const c = constraint.toLowerCase();
  if (c.includes('@')) return name.slice(0, at) === constraint.slice(0, constraint.lastIndexOf('@')) && host === c.slice(c.lastIndexOf('@') + 1);
  if (c.startsWith('.')) return host.endsWith(c);
  return host === c;
}

function uriHost(uri: string): string | undefined {
  const m = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(uri);
  if (!m) return undefined;
  let authority = m[1];
  authority = authority.slice(authority.lastIndexOf('@') + 1);
  if (authority.startsWith('[')) return undefined; // IP literals never match a host constraint
  return authority.replace(/:\d*$/, '').toLowerCase() || undefined;
}

function uriWithin(uri: string, constraint: string): boolean {
  const host = uriHost(uri);
  if (!host) return false;
  const c = constraint.toLowerCase();
  return c.startsWith('.') ? host.endsWith(c) : host === c;
}

function ipWithin(addr: Uint8Array, constraint: Uint8Array): boolean {
  if (constraint.length !== addr.length * 2) return false;
  for (let i = 0; i < addr.length; i++) {
    const m = constraint[addr.length + i];
    if ((addr[i] & m) !== (constraint[i] & m)) return false;
  }
  return true;
}

function dnWithin(name: pkijs.RelativeDistinguishedNames, constraint: pkijs.RelativeDistinguishedNames): boolean {
  const c = constraint.typesAndValues;
  const n = name.typesAndValues;
  if (c.length > n.length) return false;
  for (let i = 0; i < c.length; i++) if (!n[i].isEqual(c[i])) return false;
  return true;
}

/** One name of a certificate, in a form name constraints can apply to. */
type NameEntry =
  | { form: 1 | 2 | 6; text: string }
  | { form: 7; ip: Buffer; text: string }
  | { form: 4; dn: pkijs.RelativeDistinguishedNames; text: string };

function formatIp(b: Uint8Array): string {
  if (b.length === 4) return Array.from(b).join('.');
  const parts: string[] = [];
  for (let i = 0; i < b.length; i += 2) parts.push(((b[i] << 8) | b[i + 1]).toString(16));
  return parts.join(':');
}

function formatDn(dn: pkijs.RelativeDistinguishedNames): string {
  return dn.typesAndValues.map((t) => `${t.type}=${String(t.value.valueBlock.value)}`).join(', ');
}

function nameEntries(p: Parsed): NameEntry[] {
  const out: NameEntry[] = [];
  const subject = p.pk.subject;
  if (subject.typesAndValues.length > 0) out.push({ form: 4, dn: subject, text: `subject ${formatDn(subject)}` });
  // RFC 5280 4.2.1.10: rfc822 constraints also apply to emailAddress attributes in the subject.
  for (const atv of subject.typesAndValues) {
    if (atv.type === OID.emailAddress) out.push({ form: 1, text: String(atv.value.valueBlock.value) });
  }
  for (const n of p.sans) {
    if (n.type === 1 || n.type === 2 || n.type === 6) out.push({ form: n.type, text: String(n.value) });
    else if (n.type === 4) out.push({ form: 4, dn: n.value as pkijs.RelativeDistinguishedNames, text: `directoryName ${formatDn(n.value)}` });
    else if (n.type === 7) {
      const ip = bytes((n.value as asn1js.OctetString).valueBlock.valueHexView);
      out.push({ form: 7, ip, text: formatIp(ip) });
    }
  }
  return out;
}

function within(name: NameEntry, base: pkijs.GeneralName): boolean {
  switch (name.form) {
    case 1: return emailWithin(name.text, String(base.value));
    case 2: return dnsWithin(name.text, String(base.value));
    case 6: return uriWithin(name.text, String(base.value));
    case 7: return ipWithin(name.ip, bytes((base.value as asn1js.OctetString).valueBlock.valueHexView));
    case 4: return dnWithin(name.dn, base.value as pkijs.RelativeDistinguishedNames);
  }
}

/**
 * Applies one CA's name constraints to one certificate below it. Checking every constraining CA
 * separately is the RFC 5280 6.1.4 g intersection of permitted subtrees: a name must satisfy all,
 * and every name of a constrained form must be inside (not just one of them).
 */
function nameConstraintViolation(ca: Parsed, subject: Parsed): string | undefined {
  const nc = ca.nc;
  if (!nc) return undefined;
  for (const name of nameEntries(subject)) {
    const permitted = nc.permitted.filter((st) => st.base.type === name.form);
    if (permitted.length > 0 && !permitted.some((st) => within(name, st.base))) {
      return `${subject.label} has ${name.text}, outside the subtrees permitted by ${ca.label}`;
    }
    const excluded = nc.excluded.filter((st) => st.base.type === name.form);
    if (excluded.some((st) => within(name, st.base) || (name.form === 2 && wildcardReaches(name.text, String(st.base.value))))) {
      return `${subject.label} has ${name.text}, inside a subtree excluded by ${ca.label}`;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Path evaluation

function validityFailure(p: Parsed, at: Date): Failure | undefined {
  const nb = p.pk.notBefore.value;
  const na = p.pk.notAfter.value;
  if (at.getTime() < nb.getTime()) return fail('not-yet-valid', `${p.label} is not valid before ${nb.toISOString()}`);
  if (at.getTime() > na.getTime()) return fail('expired', `${p.label} expired at ${na.toISOString()}`);
  return undefined;
}

/** Requirements on a certificate that signs another one in the path (the trust anchor included). */
function issuerFailure(p: Parsed): Failure | undefined {
  if (!p.bc) return fail('not-a-ca', `${p.label} issues certificates but has no basicConstraints extension`);
  if (!p.bc.cA) return fail('not-a-ca', `${p.label} issues certificates but basicConstraints cA is FALSE`);
  if (!p.bc.critical) return fail('invalid-extension', `${p.label} is a CA whose basicConstraints is not critical (RFC 5280 4.2.1.9)`);
  if (!p.ku) return fail('ca-key-usage', `${p.label} is a CA without a key usage extension (RFC 5280 4.2.1.3)`);
  if (!p.ku.keyCertSign) return fail('ca-key-usage', `${p.label} is a CA whose key usage lacks keyCertSign`);
  if (!p.ski) return fail('invalid-extension', `${p.label} is a CA without a subjectKeyIdentifier (RFC 5280 4.2.1.2)`);
  if (p.pk.subject.typesAndValues.length === 0) return fail('malformed', `${p.label} is a CA with an empty subject`);
  return undefined;
}

function ekuFailure(p: Parsed, oid: string, isLeaf: boolean): Failure | undefined {
  if (!p.eku) return undefined;
  if (p.eku.includes(oid)) return undefined;
  // anyExtendedKeyUsage on a CA does not restrict what it certifies; on a leaf Ward wants the
  // exact purpose, as OpenSSL does for serverAuth/clientAuth.
  if (!isLeaf && p.eku.includes(OID.anyExtendedKeyUsage)) return undefined;
  return fail('extended-key-usage', `${p.label} has extended key usage ${p.eku.join(', ')}, which does not allow ${oid}`);
}

interface SearchContext {
  readonly at: Date;
  readonly maxDepth: number;
  readonly eku?: string;
  readonly trusted: Set<Parsed>;
  readonly pool: Parsed[];
  readonly sigCache: Map<Parsed, Map<Parsed, boolean>>;
  signatureChecks: number;
  completePaths: number;
  budgetExhausted: boolean;
  /** The most informative refusal so far, with its rank (higher wins, ties keep the first). */
  best?: Failure & { rank: number };
}

const RANK = { noPath: 0, tooDeep: 1, badSignature: 2, candidate: 3, complete: 4 } as const;

function note(ctx: SearchContext, f: Failure, rank: number): void {
  if (!ctx.best || rank > ctx.best.rank) ctx.best = { ...f, rank };
}

async function signedBy(ctx: SearchContext, child: Parsed, issuer: Parsed): Promise<boolean> {
  let row = ctx.sigCache.get(child);
  if (!row) ctx.sigCache.set(child, (row = new Map()));
  const cached = row.get(issuer);
  if (cached !== undefined) return cached;
  if (ctx.signatureChecks >= MAX_SIGNATURE_CHECKS) {
    ctx.budgetExhausted = true;
    return false;
  }
  ctx.signatureChecks++;
  let ok = false;
  try {
    ok = await child.pk.verify(issuer.pk, cryptoEngine);
  } catch {
    ok = false; // an algorithm WebCrypto cannot verify is a signature Ward cannot accept
  }
  row.set(issuer, ok);
  return ok;
}

function nonSelfIssuedIntermediates(chain: Parsed[]): number {
  let n = 0;
  for (let i = 1; i < chain.length; i++) if (!chain[i].selfIssued) n++;
  return n;
}

/** Depth-first search for a valid path from chain[chain.length-1] up to a trusted certificate. */
async function extend(ctx: SearchContext, chain: Parsed[]): Promise<Parsed[] | undefined> {
  const child = chain[chain.length - 1];
  const sigAlg = child.pk.signatureAlgorithm.algorithmId;
  if (!SIGNATURE_ALGORITHMS[sigAlg]) {
    note(ctx, fail('unsupported-algorithm', `${child.label} is signed with ${sigAlg}, which is not accepted`), RANK.candidate);
    return undefined;
  }
  const candidates = ctx.pool
    .filter((c) => child.pk.issuer.isEqual(c.pk.subject))
    // An AKI/SKI mismatch means "not my issuer" (RFC 5280 4.2.1.1 exists to guide path building).
    .filter((c) => !(child.aki?.keyId && c.ski && !child.aki.keyId.equals(c.ski)))
    .filter((c) => !chain.some((x) => x === c || x.keyId === c.keyId))
    .sort((a, b) => Number(ctx.trusted.has(b)) - Number(ctx.trusted.has(a)));
  if (candidates.length === 0) {
    note(ctx, fail('no-path', `no issuer of ${child.label} is among the given intermediates and roots`), RANK.noPath);
    return undefined;
  }
  for (const issuer of candidates) {
    if (ctx.budgetExhausted || ctx.completePaths >= MAX_COMPLETE_PATHS) {
      ctx.budgetExhausted = true;
      return undefined;
    }
    const isAnchor = ctx.trusted.has(issuer);
    if (!isAnchor) {
      const next = [...chain, issuer];
      if (next.length - 1 > MAX_PATH_INTERMEDIATES || nonSelfIssuedIntermediates(next) > ctx.maxDepth) {
        note(ctx, fail('too-deep', `a path through ${issuer.label} needs more than ${ctx.maxDepth} intermediates`), RANK.tooDeep);
        continue;
      }
      // Prune on defects of the candidate itself before spending signature checks above it.
      const own = issuer.defect ?? validityFailure(issuer, ctx.at) ?? issuerFailure(issuer);
      if (own) {
        note(ctx, own, RANK.candidate);
        continue;
      }
    }
    if (!(await signedBy(ctx, child, issuer))) {
      if (!ctx.budgetExhausted) note(ctx, fail('bad-signature', `the signature on ${child.label} does not verify with the key of ${issuer.label}`), RANK.badSignature);
      continue;
    }
    if (isAnchor) {
      ctx.completePaths++;
      const path = [...chain, issuer];
      const f = await evaluate(ctx, path);
      if (!f) return path;
      note(ctx, f, RANK.complete);
      continue;
    }
    const found = await extend(ctx, [...chain, issuer]);
    if (found) return found;
  }
  return undefined;
}

async function isSelfSigned(p: Parsed): Promise<boolean> {
  if (!p.selfIssued) return false;
  try {
    return await p.pk.verify(p.pk, cryptoEngine);
  } catch {
    return false;
  }
}

/** Full RFC 5280 + Ward profile evaluation of one complete path, leaf first, trust anchor last. */
async function evaluate(ctx: SearchContext, path: Parsed[]): Promise<Failure | undefined> {
  const n = path.length;
  const anchor = path[n - 1];
  for (let i = 0; i < n; i++) {
    const p = path[i];
    const f = p.defect ?? validityFailure(p, ctx.at) ?? (i > 0 ? issuerFailure(p) : undefined);
    if (f) return f;
  }

  // AKI (RFC 5280 4.2.1.1): required on every certificate except a self-signed trust anchor; on a
  // self-signed anchor, when present, it must name the anchor's own key and nothing else (the CA/B
  // root profile, 7.1.2.1.3), since anything else means the anchor is not what it claims to be.
  // "Self-signed" is judged by name (self-issued): an anchor's own signature is never relied on
  // (RFC 5280 6.1.1 d), and old roots are signed with algorithms WebCrypto does not verify.
  for (let i = 0; i < n; i++) {
    const p = path[i];
    if (i === n - 1 && p.selfIssued) {
      if (p.aki) {
        if (!p.aki.keyId) return fail('invalid-extension', `${p.label} is a self-signed root whose authorityKeyIdentifier has no keyIdentifier`);
        if (p.aki.hasIssuer || p.aki.hasSerial) return fail('invalid-extension', `${p.label} is a self-signed root whose authorityKeyIdentifier names an issuer or serial`);
        if (p.ski && !p.aki.keyId.equals(p.ski)) return fail('invalid-extension', `${p.label} is a self-signed root whose authorityKeyIdentifier differs from its subjectKeyIdentifier`);
      }
      continue;
    }
    if (!p.aki?.keyId) return fail('invalid-extension', `${p.label} has no authorityKeyIdentifier keyIdentifier (RFC 5280 4.2.1.1)`);
  }

  // Depth (Ward's bound) and pathLenConstraint (RFC 5280 6.1.4 l-m). The anchor's own constraint
  // is honoured too: stricter than the RFC's trust-anchor model, and what deployed verifiers do.
  if (nonSelfIssuedIntermediates(path.slice(0, n - 1)) > ctx.maxDepth) {
    return fail('too-deep', `the path has more than ${ctx.maxDepth} intermediates`);
  }
  let maxPathLength = anchor.bc?.pathLen ?? Number.POSITIVE_INFINITY;
  for (let i = n - 2; i >= 1; i--) {
    const p = path[i];
    if (!p.selfIssued) {
      if (maxPathLength <= 0) return fail('path-length', `${p.label} exceeds the pathLenConstraint of a CA above it`);
      maxPathLength--;
    }
    if (p.bc?.pathLen !== undefined && p.bc.pathLen < maxPathLength) maxPathLength = p.bc.pathLen;
  }

  if (ctx.eku) {
    for (let i = 0; i < n; i++) {
      const f = ekuFailure(path[i], ctx.eku, i === 0);
      if (f) return f;
    }
  }

  // Name constraints: every constraining CA against every certificate below it. Self-issued
  // intermediates are exempt (RFC 5280 6.1.3 b), the final certificate never is.
  for (let k = 1; k < n; k++) {
    if (!path[k].nc) continue;
    for (let j = k - 1; j >= 0; j--) {
      if (j > 0 && path[j].selfIssued) continue;
      const v = nameConstraintViolation(path[k], path[j]);
      if (v) return fail('name-constraints', v);
    }
  }

  if (n === 1) return undefined;
  return runPkijs(ctx, path);
}

/** The pkijs engine over the chosen path: name chaining, CA checks, policies, its own constraints. */
async function runPkijs(ctx: SearchContext, path: Parsed[]): Promise<Failure | undefined> {
  const order = new Map<pkijs.Certificate, number>();
  path.forEach((p, i) => order.set(p.pk, i));
  const engine = new PKI.CertificateChainValidationEngine({
    trustedCerts: [path[path.length - 1].pk],
    // pkijs takes the last element as the leaf.
    certs: [...path.slice(1, -1).map((p) => p.pk).reverse(), path[0].pk],
    checkDate: ctx.at,
    // The path is already built (bounded, above); pkijs only walks it. Its own builder recurses
    // over every candidate issuer without a visited set and does not terminate on issuer cycles.
    findIssuer: async (cert: pkijs.Certificate) => {
      const i = order.get(cert);
      return i === undefined || i + 1 >= path.length ? [] : [path[i + 1].pk];
    },
  });
  let r: pkijs.CertificateChainValidationEngineVerifyResult;
  try {
    r = await engine.verify({}, cryptoEngine);
  } catch (err) {
    return fail('no-path', `path validation failed: ${(err as Error).message}`);
  }
  if (r.result) return undefined;
  const msg = r.resultMessage || 'path validation failed';
  switch (r.resultCode) {
    case 8: return fail('expired', msg);
    case 3:
    case 4:
    case 5: return fail('ca-key-usage', msg);
    case 6: return fail('unknown-critical-extension', msg);
    case 7:
    case 14: return fail('not-a-ca', msg);
    case 21:
    case 41:
    case 42: return fail('name-constraints', msg);
    case 0:
    case 98:
    case 99: return fail('policy', msg);
    default: return fail('no-path', msg);
  }
}

/**
 * RFC 5280 path validation of `leaf` against `roots` at `at`, plus Ward's profile checks.
 * Returns the validated path leaf..root, or the reason of the most informative refusal.
 * Path building is bounded (depth, signature checks, complete paths), so any input finishes fast.
 * A leaf that is itself one of the roots yields the one-element path [leaf]; verifySvid refuses it.
 */
export async function validatePath(o: ValidatePathOptions): Promise<PathResult> {
  await loadPkijs();
  const maxDepth = Math.max(0, Math.min(o.maxDepth ?? DEFAULT_MAX_DEPTH, MAX_PATH_INTERMEDIATES));
  if (!(o.at instanceof Date) || Number.isNaN(o.at.getTime())) throw new TypeError('validatePath: `at` must be a valid Date');
  if (o.intermediates.length > MAX_INTERMEDIATES_INPUT) {
    return refused('malformed', `${o.intermediates.length} intermediates given; at most ${MAX_INTERMEDIATES_INPUT} are considered`);
  }
  let eku: string | undefined;
  if (o.extendedKeyUsage !== undefined) {
    eku = EKU_NAMES[o.extendedKeyUsage] ?? o.extendedKeyUsage;
    if (!/^\d+(\.\d+)+$/.test(eku)) throw new TypeError(`validatePath: unknown extended key usage ${o.extendedKeyUsage}`);
  }

  const leaf = parse(o.leaf, 'leaf');
  if (!('pk' in leaf)) return refused(leaf.reason, leaf.detail);
  const leafProblem = leaf.defect ?? validityFailure(leaf, o.at);
  if (leafProblem) return refused(leafProblem.reason, leafProblem.detail);

  // One Parsed per distinct DER; a certificate both trusted and sent as intermediate is trusted.
  const byDer = new Map<string, Parsed>();
  const trusted = new Set<Parsed>();
  const unparseable: string[] = [];
  const add = (c: Certificate, role: string, isRoot: boolean): void => {
    const key = Buffer.from(c.der).toString('base64');
    let p = byDer.get(key);
    if (!p) {
      const parsed = parse(c, role);
      // An unparseable root or intermediate is not a candidate: it cannot be part of any path.
      if (!('pk' in parsed)) {
        unparseable.push(parsed.detail);
        return;
      }
      p = parsed;
      byDer.set(key, p);
    }
    if (isRoot) trusted.add(p);
  };
  o.roots.forEach((c) => add(c, 'root', true));
  o.intermediates.forEach((c) => add(c, 'intermediate', false));
  const noPath = (detail: string) => refused('no-path', unparseable.length ? `${detail} (ignored: ${unparseable.join('; ')})` : detail);
  if (trusted.size === 0) return noPath('no usable trusted root was given');

  const ctx: SearchContext = {
    at: o.at,
    maxDepth,
    eku,
    trusted,
    pool: [...byDer.values()],
    sigCache: new Map(),
    signatureChecks: 0,
    completePaths: 0,
    budgetExhausted: false,
  };

  const leafKey = leaf.der.toString('base64');
  const leafAsRoot = byDer.get(leafKey);
  if (leafAsRoot && trusted.has(leafAsRoot)) {
    const f = await evaluate(ctx, [leafAsRoot]);
    return f ? refused(f.reason, f.detail) : { ok: true, path: [o.leaf] };
  }

  const found = await extend(ctx, [leaf]);
  if (found) return { ok: true, path: [o.leaf, ...found.slice(1).map((p) => p.cert)] };
  if (ctx.budgetExhausted && (!ctx.best || ctx.best.rank < RANK.candidate)) {
    return noPath(`path building gave up after ${ctx.signatureChecks} signature checks and ${ctx.completePaths} candidate paths`);
  }
  if (!ctx.best || ctx.best.reason === 'no-path') return noPath(ctx.best?.detail ?? 'no path to a trusted root');
  return refused(ctx.best.reason, ctx.best.detail);
}

function refused(reason: PathRejectReason, detail: string): { ok: false; reason: PathRejectReason; detail: string } {
  return { ok: false, reason, detail };
}

// ---------------------------------------------------------------------------------------------
// X.509-SVID leaf rules

const SERVER_AUTH = [EKU_NAMES.serverAuth, 'serverAuth'];
const CLIENT_AUTH = [EKU_NAMES.clientAuth, 'clientAuth'];

function svidFail(reason: SvidRejectReason, detail: string): { ok: false; reason: SvidRejectReason; detail: string } {
  return { ok: false, reason, detail };
}

/**
 * The X.509-SVID leaf rules (X.509-SVID §4, §5.2) and Ward's naming checks, on a certificate whose
 * path has already been validated. Synchronous: the TLS layer calls it from checkServerIdentity.
 */
export function checkSvidLeaf(
  leaf: Certificate,
  o: { trustDomain?: string; usage?: SvidUsage; expectedId?: SpiffeId } = {},
): SvidLeafResult {
  // First: a CA certificate presented as a leaf is the refusal that matters, whatever its names.
  if (leaf.isCa) return svidFail('leaf-is-ca', 'the certificate is a CA certificate (basicConstraints cA=TRUE), not a leaf');
  const uris = leaf.uris ?? [];
  if (uris.length === 0) return svidFail('no-uri-san', 'the certificate has no URI SAN, so it carries no SPIFFE ID');
  if (uris.length > 1) return svidFail('multiple-uri-sans', `the certificate has ${uris.length} URI SANs; an SVID has exactly one`);
  // DNS SANs are allowed on SVIDs; IP, e-mail and other names are not something Ward's CA issues,
  // and a peer presenting them was issued under some other profile.
  if ((leaf.ipAddresses ?? []).length > 0) return svidFail('non-uri-san', `the certificate has IP address SANs (${leaf.ipAddresses.join(', ')})`);
  if ((leaf.emails ?? []).length > 0) return svidFail('non-uri-san', `the certificate has e-mail SANs (${leaf.emails.join(', ')})`);
  if ((leaf.otherSanCount ?? 0) > 0) return svidFail('non-uri-san', `the certificate has ${leaf.otherSanCount} SANs of other kinds (otherName, directoryName, …)`);
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(uris[0]);
  } catch (err) {
    return svidFail('invalid-spiffe-id', (err as Error).message);
  }
  if (id.path === '') return svidFail('invalid-spiffe-id', `${id} names a trust domain, not a workload; a leaf SVID needs a path`);
  const ku = leaf.keyUsage;
  if (!ku) return svidFail('missing-key-usage', 'the certificate has no key usage extension; X.509-SVID requires it');
  if (!leaf.keyUsageCritical) return svidFail('key-usage-not-critical', 'the key usage extension is not critical; X.509-SVID requires it to be');
  if (ku.includes('keyCertSign')) return svidFail('leaf-key-cert-sign', 'the leaf asserts keyCertSign');
  if (ku.includes('cRLSign')) return svidFail('leaf-crl-sign', 'the leaf asserts cRLSign');
  if (!ku.includes('digitalSignature')) return svidFail('missing-digital-signature', 'the leaf key usage lacks digitalSignature');
  const usage = o.usage ?? 'any';
  const eku = leaf.extKeyUsage;
  if (eku && usage === 'server' && !eku.some((e) => SERVER_AUTH.includes(e))) {
    return svidFail('missing-server-auth', `the certificate is used by a server but its extended key usage (${eku.join(', ')}) lacks serverAuth`);
  }
  if (eku && usage === 'client' && !eku.some((e) => CLIENT_AUTH.includes(e))) {
    return svidFail('missing-client-auth', `the certificate is used by a client but its extended key usage (${eku.join(', ')}) lacks clientAuth`);
  }
  if (o.trustDomain !== undefined && id.trustDomain !== o.trustDomain) {
    return svidFail('foreign-trust-domain', `${id} belongs to trust domain ${id.trustDomain}, not ${o.trustDomain}`);
  }
  if (o.expectedId && !id.equals(o.expectedId)) {
    return svidFail('unexpected-identity', `the peer is ${id}, but ${o.expectedId} was expected`);
  }
  return { ok: true, id };
}

/**
 * Full verification of a presented chain (leaf first, then intermediates in any order) against a
 * trust bundle: RFC 5280 path validation at `at`, a leaf that is itself a root is refused, then the
 * X.509-SVID leaf rules with the bundle's trust domain.
 */
export async function verifySvid(
  chain: Certificate[],
  bundle: TrustBundle,
  at: Date,
  o: { usage?: SvidUsage; expectedId?: SpiffeId } = {},
): Promise<VerifyResult> {
  if (chain.length === 0) return { ok: false, reason: 'malformed', detail: 'no certificate was presented' };
  const [leaf, ...intermediates] = chain;
  const r = await validatePath({ leaf, intermediates, roots: [...bundle.roots], at });
  if (!r.ok) return r;
  if (r.path.length === 1 || bundle.roots.some((root) => Buffer.from(root.der).equals(Buffer.from(leaf.der))) || (await leafSelfSigned(leaf))) {
    return { ok: false, reason: 'leaf-is-root', detail: 'the presented leaf is a root (self-signed) certificate' };
  }
  const s = checkSvidLeaf(leaf, { trustDomain: bundle.trustDomain, usage: o.usage, expectedId: o.expectedId });
  if (!s.ok) return s;
  return { ok: true, id: s.id, path: r.path };
}

async function leafSelfSigned(leaf: Certificate): Promise<boolean> {
  const p = parse(leaf, 'leaf');
  return 'pk' in p ? isSelfSigned(p) : false;
}
