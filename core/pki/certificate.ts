import { createHash, hash, randomFillSync, sign as cryptoSign, X509Certificate, type KeyObject } from 'node:crypto';
import { bug, WardError } from '../errors.js';
import { parseTrustDomain, type SpiffeId } from '../identity/spiffe-id.js';
import {
  bitIsSet,
  content,
  DER_TRUE,
  DerCursor,
  DerError,
  elementSize,
  encodeBitString,
  encodeName,
  encodeNamedBits,
  encodeOid,
  encodeSmallInteger,
  encodeTime,
  encodeUnsigned,
  floorToSecond,
  formatName,
  raw,
  readBitString,
  readBoolean,
  readGeneralNames,
  readIntegerBytes,
  readOid,
  readPemBlocks,
  readSmallInteger,
  readTime,
  readTlv,
  readWhole,
  seq,
  TAG,
  tlv,
  timeSize,
  toPem,
  type Tlv,
  writeHeader,
  writeTime,
} from './der.js';
import type { PrivateKey } from './keys.js';

export { toPem } from './der.js';

// ---------------------------------------------------------------------------------------------
// Constants shared by the parser and the encoders

const OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
} as const;

const SIGNATURE_ALGORITHMS: Record<string, string> = {
  '1.2.840.10045.4.1': 'ecdsa-with-SHA1',
  '1.2.840.10045.4.3.2': 'ecdsa-with-SHA256',
  '1.2.840.10045.4.3.3': 'ecdsa-with-SHA384',
  '1.2.840.10045.4.3.4': 'ecdsa-with-SHA512',
  '1.2.840.113549.1.1.5': 'sha1WithRSAEncryption',
  '1.2.840.113549.1.1.10': 'rsassaPss',
  '1.2.840.113549.1.1.11': 'sha256WithRSAEncryption',
  '1.2.840.113549.1.1.12': 'sha384WithRSAEncryption',
  '1.2.840.113549.1.1.13': 'sha512WithRSAEncryption',
  '1.3.101.112': 'ED25519',
  '1.3.101.113': 'ED448',
};

const KEY_USAGE_BITS = [
  'digitalSignature',
  'nonRepudiation',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
  'encipherOnly',
  'decipherOnly',
] as const;
const KU = { digitalSignature: 0, keyCertSign: 5, cRLSign: 6 } as const;

const EXT_KEY_USAGES: Record<string, string> = {
  '1.3.6.1.5.5.7.3.1': 'serverAuth',
  '1.3.6.1.5.5.7.3.2': 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping',
  '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
  '2.5.29.37.0': 'anyExtendedKeyUsage',
};

/** AlgorithmIdentifier for ecdsa-with-SHA256; parameters absent, as RFC 5758 §3.2 requires. */
export const ECDSA_SHA256_ALG_ID = seq(encodeOid('1.2.840.10045.4.3.2'));

/** The first 26 bytes of every uncompressed P-256 SubjectPublicKeyInfo (91 bytes in all). */
export const P256_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex');
export const P256_SPKI_LENGTH = 91;

function isP256Spki(spki: Buffer): boolean {
  return (
    Buffer.isBuffer(spki) &&
    spki.length === P256_SPKI_LENGTH &&
    spki[26] === 0x04 &&
    spki.compare(P256_SPKI_PREFIX, 0, 26, 0, 26) === 0
  );
}

/**
 * Key identifier for SKI (and AKI): RFC 5280 §4.2.1.2 method (1), the SHA-1 of the
 * subjectPublicKey BIT STRING value. SHA-1 is only an identifier here, not a signature; this is
 * the same value OpenSSL computes, so `openssl x509 -text` and our certificates agree.
 */
function keyIdentifier(subjectPublicKeyBits: Buffer): Buffer {
  return hash('sha1', subjectPublicKeyBits, 'buffer');
}

/** The subjectPublicKey bits of any SPKI (for key identifiers of non-P-256 issuer keys). */
function spkiKeyBits(spki: Buffer): Buffer {
  const outer = readWhole(spki, TAG.SEQUENCE, 'SubjectPublicKeyInfo');
  const c = DerCursor.inside(spki, outer);
  c.expect(TAG.SEQUENCE, 'SubjectPublicKeyInfo algorithm');
  const bits = readBitString(spki, c.expect(TAG.BIT_STRING, 'subjectPublicKey'), 'subjectPublicKey');
  c.finish('SubjectPublicKeyInfo');
  return bits.bytes;
}

// ---------------------------------------------------------------------------------------------
// Certificate (parsed)

const CONSTRUCT = Symbol('Certificate.construct');

interface CertificateFields {
  der: Buffer;
  x509: X509Certificate;
  version: number;
  serialHex: string;
  subject: string;
  issuer: string;
  subjectDer: Buffer;
  issuerDer: Buffer;
  notBefore: Date;
  notAfter: Date;
  publicKeyDer: Buffer;
  signatureAlgorithm: string;
  isCa: boolean;
  pathLen?: number;
  keyUsage?: string[];
  keyUsageCritical: boolean;
  extKeyUsage?: string[];
  uris: string[];
  dnsNames: string[];
  ipAddresses: string[];
  emails: string[];
  otherSanCount: number;
  sanCritical: boolean;
  subjectKeyId?: string;
  authorityKeyId?: string;
  extensions: { oid: string; critical: boolean }[];
}

/**
 * A parsed X.509 certificate; construct only via parseCertificate(s). Every field is read from
 * the DER by Ward's own strict walker, and the same bytes must also be accepted by OpenSSL
 * (node:crypto X509Certificate), so a certificate that either parser rejects never gets here.
 * Parsing records what the certificate says; judging it (path validation, SVID profile) is
 * verify.ts's job.
 */
export class Certificate {
  readonly der: Buffer;
  readonly x509: X509Certificate;
  /** 1, 2 or 3. */
  readonly version: number;
  /** Lowercase hex, no colons, without the 00 byte that keeps a DER INTEGER positive. */
  readonly serialHex: string;
  /** Human-readable Name in encoding order, e.g. "O=Ward, CN=Ward Root CA"; '' when empty. */
  readonly subject: string;
  readonly issuer: string;
  /** Raw Name DER, for chain building (RFC 5280 name matching is on these bytes). */
  readonly subjectDer: Buffer;
  readonly issuerDer: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** SubjectPublicKeyInfo DER. */
  readonly publicKeyDer: Buffer;
  /** 'ecdsa-with-SHA256', 'sha256WithRSAEncryption', …, or the dotted OID when unknown. */
  readonly signatureAlgorithm: string;
  readonly isCa: boolean;
  readonly pathLen?: number;
  /** Absent when the certificate has no keyUsage extension. */
  readonly keyUsage?: string[];
  readonly keyUsageCritical: boolean;
  /** 'serverAuth', 'clientAuth', … or dotted OIDs; absent when there is no extKeyUsage extension. */
  readonly extKeyUsage?: string[];
  readonly uris: string[];
  readonly dnsNames: string[];
  readonly ipAddresses: string[];
  readonly emails: string[];
  /** SAN entries of the other kinds (otherName, directoryName, …), which Ward never issues. */
  readonly otherSanCount: number;
  readonly sanCritical: boolean;
  /** Lowercase hex. */
  readonly subjectKeyId?: string;
  /** keyIdentifier of the authorityKeyIdentifier extension, lowercase hex. */
  readonly authorityKeyId?: string;
  /** SHA-256 of the DER, uppercase hex with colons (as `openssl x509 -fingerprint -sha256`). */
  readonly fingerprintSha256: string;
  /** Every extension in order, including unknown ones (path validation needs the critical ones). */
  readonly extensions: { oid: string; critical: boolean }[];
  #publicKey?: KeyObject;

  constructor(token: typeof CONSTRUCT, f: CertificateFields) {
    if (token !== CONSTRUCT) bug('Certificate is constructed only by parseCertificate');
    this.der = f.der;
    this.x509 = f.x509;
    this.version = f.version;
    this.serialHex = f.serialHex;
    this.subject = f.subject;
    this.issuer = f.issuer;
    this.subjectDer = f.subjectDer;
    this.issuerDer = f.issuerDer;
    this.notBefore = f.notBefore;
    this.notAfter = f.notAfter;
    this.publicKeyDer = f.publicKeyDer;
    this.signatureAlgorithm = f.signatureAlgorithm;
    this.isCa = f.isCa;
    if (f.pathLen !== undefined) this.pathLen = f.pathLen;
    if (f.keyUsage !== undefined) this.keyUsage = f.keyUsage;
    this.keyUsageCritical = f.keyUsageCritical;
    if (f.extKeyUsage !== undefined) this.extKeyUsage = f.extKeyUsage;
    this.uris = f.uris;
    this.dnsNames = f.dnsNames;
    this.ipAddresses = f.ipAddresses;
    this.emails = f.emails;
    this.otherSanCount = f.otherSanCount;
    this.sanCritical = f.sanCritical;
    if (f.subjectKeyId !== undefined) this.subjectKeyId = f.subjectKeyId;
    if (f.authorityKeyId !== undefined) this.authorityKeyId = f.authorityKeyId;
    this.extensions = f.extensions;
    const digest = createHash('sha256').update(f.der).digest('hex').toUpperCase();
    this.fingerprintSha256 = digest.replace(/(..)(?!$)/g, '$1:');
  }

  get pem(): string {
    return toPem(this.der);
  }

  /** Created on first use: importing a key through OpenSSL's decoders costs ~0.1 ms. */
  get publicKey(): KeyObject {
    this.#publicKey ??= this.x509.publicKey;
    return this.#publicKey;
  }

  /** True when subject and issuer are the same Name (a self-issued certificate, e.g. a root). */
  get selfIssued(): boolean {
    return this.subjectDer.equals(this.issuerDer);
  }
}

function certInvalid(message: string, cause?: unknown): WardError {
  return new WardError('WARD_PKI_CERT_INVALID', message, cause === undefined ? undefined : { cause });
}

function pemInvalid(message: string, cause?: unknown): WardError {
  return new WardError('WARD_PKI_PEM_INVALID', message, cause === undefined ? undefined : { cause });
}

/** One certificate, PEM (exactly one CERTIFICATE block) or DER. */
export function parseCertificate(input: string | Buffer): Certificate {
  if (Buffer.isBuffer(input) && input.length > 0 && input[0] === TAG.SEQUENCE) return parseCertificateDer(input);
  if (typeof input !== 'string' && !Buffer.isBuffer(input)) throw certInvalid('certificate must be a PEM string or a DER buffer');
  const blocks = pemBlocks(input, 'certificate');
  if (blocks.length !== 1) {
    throw pemInvalid(`expected exactly one PEM block, found ${blocks.length}${blocks.length ? ` (${blocks.map((b) => b.label).join(', ')})` : ''}`);
  }
  if (blocks[0].label !== 'CERTIFICATE') throw pemInvalid(`expected a CERTIFICATE PEM block, found "${blocks[0].label}"`);
  return parseCertificateDer(blocks[0].der);
}

/** Every CERTIFICATE block in `pem`, in order (other blocks are skipped); throws if there is none. */
export function parseCertificates(pem: string | Buffer): Certificate[] {
  const blocks = pemBlocks(pem, 'certificates').filter((b) => b.label === 'CERTIFICATE');
  if (blocks.length === 0) throw pemInvalid('no CERTIFICATE PEM block found');
  return blocks.map((b, i) => {
    try {
      return parseCertificateDer(b.der);
    } catch (err) {
      if (err instanceof WardError) throw new WardError(err.code, `certificate #${i + 1}: ${err.message}`, { cause: err });
      throw err;
    }
  });
}

function pemBlocks(input: string | Buffer, what: string): { label: string; der: Buffer }[] {
  const text = typeof input === 'string' ? input : input.toString('latin1');
  try {
    return readPemBlocks(text).blocks;
  } catch (err) {
    if (err instanceof DerError) throw pemInvalid(`${what}: ${err.message}`, err);
    throw err;
  }
}

function parseCertificateDer(input: Buffer): Certificate {
  // Own copy: the caller may reuse its buffer, and fields below are views into this one.
  const der = Buffer.from(input);
  let fields: Omit<CertificateFields, 'x509'>;
  try {
    fields = walkCertificate(der);
  } catch (err) {
    if (err instanceof DerError) throw certInvalid(`malformed certificate: ${err.message}`, err);
    throw err;
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(der);
  } catch (err) {
    throw certInvalid(`OpenSSL rejects the certificate: ${(err as Error).message}`, err);
  }
  return new Certificate(CONSTRUCT, { ...fields, x509 });
}

function walkCertificate(der: Buffer): Omit<CertificateFields, 'x509'> {
  const outer = readWhole(der, TAG.SEQUENCE, 'certificate');
  const oc = DerCursor.inside(der, outer);
  const tbs = oc.expect(TAG.SEQUENCE, 'tbsCertificate');
  const sigAlg = oc.expect(TAG.SEQUENCE, 'signatureAlgorithm');
  readBitString(der, oc.expect(TAG.BIT_STRING, 'signatureValue'), 'signatureValue');
  oc.finish('certificate');

  const c = DerCursor.inside(der, tbs);
  let version = 1;
  const explicitVersion = c.optional(0xa0, 'version');
  if (explicitVersion) {
    const vc = DerCursor.inside(der, explicitVersion);
    version = readSmallInteger(der, vc.next('version'), 'version') + 1;
    vc.finish('version');
    if (version < 1 || version > 3) throw new DerError(`unknown certificate version ${version}`);
  }
  const serial = readIntegerBytes(der, c.next('serialNumber'), 'serialNumber');
  const innerSigAlg = c.expect(TAG.SEQUENCE, 'signature');
  // RFC 5280 §4.1.1.2: the two must match; a mismatch is a classic signature-confusion trick.
  if (!raw(der, innerSigAlg).equals(raw(der, sigAlg))) throw new DerError('tbsCertificate.signature differs from signatureAlgorithm');
  const issuerName = c.expect(TAG.SEQUENCE, 'issuer');
  const validity = c.expect(TAG.SEQUENCE, 'validity');
  const subjectName = c.expect(TAG.SEQUENCE, 'subject');
  const spki = c.expect(TAG.SEQUENCE, 'subjectPublicKeyInfo');
  if (c.optional(0x81, 'issuerUniqueID') && version < 2) throw new DerError('issuerUniqueID in a v1 certificate');
  if (c.optional(0x82, 'subjectUniqueID') && version < 2) throw new DerError('subjectUniqueID in a v1 certificate');
  const extensionsTlv = c.optional(0xa3, 'extensions');
  c.finish('tbsCertificate');
  if (extensionsTlv && version !== 3) throw new DerError('extensions in a certificate that is not v3');

  const vc = DerCursor.inside(der, validity);
  const notBefore = readTime(der, vc.next('notBefore'), 'notBefore');
  const notAfter = readTime(der, vc.next('notAfter'), 'notAfter');
  vc.finish('validity');

  const sc = DerCursor.inside(der, spki);
  sc.expect(TAG.SEQUENCE, 'subjectPublicKeyInfo algorithm');
  readBitString(der, sc.expect(TAG.BIT_STRING, 'subjectPublicKey'), 'subjectPublicKey');
  sc.finish('subjectPublicKeyInfo');

  const sac = DerCursor.inside(der, sigAlg);
  const sigOid = readOid(der, sac.next('signatureAlgorithm'), 'signatureAlgorithm');

  const f: Omit<CertificateFields, 'x509'> = {
    der,
    version,
    serialHex: (serial.length > 1 && serial[0] === 0 ? serial.subarray(1) : serial).toString('hex'),
    subject: formatName(der, subjectName, 'subject'),
    issuer: formatName(der, issuerName, 'issuer'),
    subjectDer: raw(der, subjectName),
    issuerDer: raw(der, issuerName),
    notBefore,
    notAfter,
    publicKeyDer: raw(der, spki),
    signatureAlgorithm: SIGNATURE_ALGORITHMS[sigOid] ?? sigOid,
    isCa: false,
    keyUsageCritical: false,
    uris: [],
    dnsNames: [],
    ipAddresses: [],
    emails: [],
    otherSanCount: 0,
    sanCritical: false,
    extensions: [],
  };
  if (extensionsTlv) readExtensions(der, extensionsTlv, f);
  return f;
}

/** The single element that makes up an extension's OCTET STRING value. */
function extnInner(der: Buffer, value: Tlv, tag: number, what: string): Tlv {
  const t = readTlv(der, value.start, value.end);
  if (t.tag !== tag) throw new DerError(`${what}: unexpected tag 0x${t.tag.toString(16)}`);
  if (t.end !== value.end) throw new DerError(`${what}: trailing data in extension value`);
  return t;
}

function readExtensions(der: Buffer, extensionsTlv: Tlv, f: Omit<CertificateFields, 'x509'>): void {
  const wrapper = DerCursor.inside(der, extensionsTlv);
  const list = wrapper.expect(TAG.SEQUENCE, 'extensions');
  wrapper.finish('extensions');
  const c = DerCursor.inside(der, list);
  if (c.done) throw new DerError('extensions is an empty SEQUENCE');
  const seen = new Set<string>();
  while (!c.done) {
    const ext = c.expect(TAG.SEQUENCE, 'extension');
    const ec = DerCursor.inside(der, ext);
    const oid = readOid(der, ec.next('extnID'), 'extnID');
    const crit = ec.optional(TAG.BOOLEAN, 'critical');
    // DER omits critical=FALSE, but older CAs write it explicitly; accept both.
    const critical = crit ? readBoolean(der, crit, `extension ${oid} critical`) : false;
    const value = ec.expect(TAG.OCTET_STRING, `extension ${oid} value`);
    ec.finish(`extension ${oid}`);
    // RFC 5280 §4.2: a certificate must not include more than one instance of an extension.
    if (seen.has(oid)) throw new DerError(`extension ${oid} appears twice`);
    seen.add(oid);
    f.extensions.push({ oid, critical });

    switch (oid) {
      case OID.basicConstraints: {
        const bc = DerCursor.inside(der, extnInner(der, value, TAG.SEQUENCE, 'basicConstraints'));
        const ca = bc.optional(TAG.BOOLEAN, 'basicConstraints cA');
        f.isCa = ca ? readBoolean(der, ca, 'basicConstraints cA') : false;
        const pl = bc.optional(TAG.INTEGER, 'basicConstraints pathLenConstraint');
        if (pl) f.pathLen = readSmallInteger(der, pl, 'basicConstraints pathLenConstraint');
        bc.finish('basicConstraints');
        break;
      }
      case OID.keyUsage: {
        const bits = readBitString(der, extnInner(der, value, TAG.BIT_STRING, 'keyUsage'), 'keyUsage').bytes;
        f.keyUsage = KEY_USAGE_BITS.filter((_, i) => bitIsSet(bits, i));
        f.keyUsageCritical = critical;
        break;
      }
      case OID.extKeyUsage: {
        const eku = DerCursor.inside(der, extnInner(der, value, TAG.SEQUENCE, 'extKeyUsage'));
        const usages: string[] = [];
        while (!eku.done) {
          const o = readOid(der, eku.next('extKeyUsage purpose'), 'extKeyUsage purpose');
          usages.push(EXT_KEY_USAGES[o] ?? o);
        }
        if (usages.length === 0) throw new DerError('extKeyUsage is empty');
        f.extKeyUsage = usages;
        break;
      }
      case OID.subjectAltName: {
        const names = readGeneralNames(der, extnInner(der, value, TAG.SEQUENCE, 'subjectAltName'), 'subjectAltName');
        f.uris = names.uris;
        f.dnsNames = names.dnsNames;
        f.ipAddresses = names.ipAddresses;
        f.emails = names.emails;
        f.otherSanCount = names.otherCount;
        f.sanCritical = critical;
        break;
      }
      case OID.subjectKeyIdentifier:
        f.subjectKeyId = content(der, extnInner(der, value, TAG.OCTET_STRING, 'subjectKeyIdentifier')).toString('hex');
        break;
      case OID.authorityKeyIdentifier: {
        const aki = DerCursor.inside(der, extnInner(der, value, TAG.SEQUENCE, 'authorityKeyIdentifier'));
        const keyId = aki.optional(0x80, 'authorityKeyIdentifier keyIdentifier');
        if (keyId) f.authorityKeyId = content(der, keyId).toString('hex');
        aki.optional(0xa1, 'authorityKeyIdentifier authorityCertIssuer');
        aki.optional(0x82, 'authorityKeyIdentifier authorityCertSerialNumber');
        aki.finish('authorityKeyIdentifier');
        break;
      }
      default:
        break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

const EMPTY_NAME = seq();
const VERSION_V3 = Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]);

const EXT_OID = {
  basicConstraints: encodeOid(OID.basicConstraints),
  keyUsage: encodeOid(OID.keyUsage),
  extKeyUsage: encodeOid(OID.extKeyUsage),
  subjectAltName: encodeOid(OID.subjectAltName),
  subjectKeyIdentifier: encodeOid(OID.subjectKeyIdentifier),
  authorityKeyIdentifier: encodeOid(OID.authorityKeyIdentifier),
};

function extension(oid: Buffer, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid, DER_TRUE, tlv(TAG.OCTET_STRING, value)) : seq(oid, tlv(TAG.OCTET_STRING, value));
}

function skiExtension(keyId: Buffer): Buffer {
  return extension(EXT_OID.subjectKeyIdentifier, false, tlv(TAG.OCTET_STRING, keyId));
}

function akiExtension(keyId: Buffer): Buffer {
  return extension(EXT_OID.authorityKeyIdentifier, false, seq(tlv(0x80, keyId)));
}

function uriSanExtension(uri: string, critical: boolean): Buffer {
  return extension(EXT_OID.subjectAltName, critical, seq(tlv(0x86, Buffer.from(uri, 'latin1'))));
}

function caExtensions(pathLen: number | undefined): Buffer[] {
  const bc = pathLen === undefined ? seq(DER_TRUE) : seq(DER_TRUE, encodeSmallInteger(pathLen));
  return [
    extension(EXT_OID.basicConstraints, true, bc),
    extension(EXT_OID.keyUsage, true, encodeNamedBits([KU.keyCertSign, KU.cRLSign])),
  ];
}

// Serials: 16 random bytes with the top bits forced to 01, so every serial is positive, exactly
// 16 bytes (no leading-zero stripping, no 00 pad) and carries 126 random bits. Random bytes are
// drawn 4 KiB at a time because a randomBytes() call per certificate costs more than the rest of
// the encoding; serials are public, so pooling them is harmless.
let serialPool = Buffer.alloc(0);
let serialPos = 0;

/** Writes 16 fresh random serial bytes (top bits 01) at `pos`. */
function writeRandomSerial(out: Buffer, pos: number): void {
  if (serialPos + 16 > serialPool.length) {
    serialPool = randomFillSync(Buffer.allocUnsafe(4096));
    serialPos = 0;
  }
  serialPool.copy(out, pos, serialPos, serialPos + 16);
  serialPos += 16;
  out[pos] = (out[pos] & 0x3f) | 0x40;
}

function randomSerial(): Buffer {
  const s = Buffer.allocUnsafe(16);
  writeRandomSerial(s, 0);
  return s;
}

/** INTEGER TLV and the serialHex for a caller-chosen serial (an unsigned big-endian magnitude). */
function encodeSerial(serial: Buffer | undefined): { tlv: Buffer; hex: string } {
  const integer = encodeUnsigned(serial ?? randomSerial());
  const body = integer.subarray(2);
  const magnitude = body.length > 1 && body[0] === 0 ? body.subarray(1) : body;
  // RFC 5280 §4.1.2.2: positive, at most 20 octets.
  if (magnitude.length === 1 && magnitude[0] === 0) bug('certificate serial must be positive');
  if (body.length > 20) bug('certificate serial must fit in 20 octets');
  return { tlv: integer, hex: magnitude.toString('hex') };
}

function checkValidity(notBefore: Date, notAfter: Date): { notBefore: Date; notAfter: Date } {
  if (!(notBefore instanceof Date) || !(notAfter instanceof Date) || Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) {
    bug('notBefore/notAfter must be valid Dates');
  }
  const nb = floorToSecond(notBefore);
  const na = floorToSecond(notAfter);
  if (!(na.getTime() > nb.getTime())) bug(`notAfter ${notAfter.toISOString()} is not after notBefore ${notBefore.toISOString()}`);
  return { notBefore: nb, notAfter: na };
}

function signCertificate(tbs: Buffer, key: KeyObject): Buffer {
  const signature = cryptoSign('sha256', tbs, { key, dsaEncoding: 'der' });
  return seq(tbs, ECDSA_SHA256_ALG_ID, encodeBitString(signature));
}

function caSubject(commonName: string): Buffer {
  return encodeName([
    ['O', 'Ward'],
    ['CN', commonName],
  ]);
}

export interface Issuer {
  cert: Certificate;
  key: PrivateKey;
}

/**
 * A self-signed root: O=Ward, CN=<commonName>; critical basicConstraints cA=true (no path
 * length limit, so an operator may put further intermediates under it); critical keyUsage
 * keyCertSign+cRLSign; SKI and AKI (= SKI); non-critical URI SAN with the trust-domain SPIFFE ID,
 * which X.509-SVID allows on signing certificates.
 */
export function createRoot(o: {
  key: PrivateKey;
  trustDomain: string;
  commonName?: string;
  notBefore: Date;
  notAfter: Date;
  serial?: Buffer;
}): Certificate {
  const td = parseTrustDomain(o.trustDomain);
  const v = checkValidity(o.notBefore, o.notAfter);
  const spki = o.key.publicKeyDer();
  const keyId = keyIdentifier(spkiKeyBits(spki));
  const name = caSubject(o.commonName ?? 'Ward Root CA');
  const tbs = seq(
    VERSION_V3,
    encodeSerial(o.serial).tlv,
    ECDSA_SHA256_ALG_ID,
    name,
    seq(encodeTime(v.notBefore), encodeTime(v.notAfter)),
    name,
    spki,
    tlv(0xa3, seq(...caExtensions(undefined), skiExtension(keyId), akiExtension(keyId), uriSanExtension(`spiffe://${td}`, false))),
  );
  return parseCertificate(signCertificate(tbs, o.key.keyObject));
}

/**
 * An intermediate (issuing) CA signed by `issuer`: like a root, but with pathLenConstraint
 * (default 0: it signs only leaves) and AKI = the issuer's key identifier. The caller keeps
 * notAfter within the issuer's.
 */
export function createIntermediate(o: {
  issuer: Issuer;
  publicKey: KeyObject;
  trustDomain: string;
  commonName?: string;
  notBefore: Date;
  notAfter: Date;
  pathLen?: number;
  serial?: Buffer;
}): Certificate {
  const td = parseTrustDomain(o.trustDomain);
  const v = checkValidity(o.notBefore, o.notAfter);
  const issuer = checkIssuer(o.issuer);
  const spki = o.publicKey.export({ format: 'der', type: 'spki' });
  if (!isP256Spki(spki)) throw new WardError('WARD_PKI_KEY_INVALID', 'intermediate CA key must be ECDSA P-256');
  const tbs = seq(
    VERSION_V3,
    encodeSerial(o.serial).tlv,
    ECDSA_SHA256_ALG_ID,
    issuer.nameDer,
    seq(encodeTime(v.notBefore), encodeTime(v.notAfter)),
    caSubject(o.commonName ?? 'Ward Intermediate CA'),
    spki,
    tlv(
      0xa3,
      seq(
        ...caExtensions(o.pathLen ?? 0),
        skiExtension(keyIdentifier(spki.subarray(P256_SPKI_PREFIX.length))),
        akiExtension(issuer.keyId),
        uriSanExtension(`spiffe://${td}`, false),
      ),
    ),
  );
  return parseCertificate(signCertificate(tbs, issuer.key));
}

/** Checks an issuer can sign at all, and returns what every certificate it signs reuses. */
function checkIssuer(issuer: Issuer): { nameDer: Buffer; keyId: Buffer; key: KeyObject } {
  const { cert, key } = issuer;
  if (!cert.isCa) throw new WardError('WARD_PKI_CHAIN_INVALID', `issuer "${cert.subject}" is not a CA certificate (basicConstraints cA is not true)`);
  if (cert.keyUsage && !cert.keyUsage.includes('keyCertSign')) {
    throw new WardError('WARD_PKI_CHAIN_INVALID', `issuer "${cert.subject}" lacks keyUsage keyCertSign`);
  }
  if (!key.publicKeyDer().equals(cert.publicKeyDer)) {
    throw new WardError('WARD_PKI_KEY_MISMATCH', `the issuer private key does not belong to certificate "${cert.subject}"`);
  }
  // AKI must equal the issuer's SKI when it has one; a BYO CA without SKI gets the RFC 5280
  // method-1 identifier, which OpenSSL tolerates (it compares AKI only against a present SKI).
  const keyId = cert.subjectKeyId !== undefined ? Buffer.from(cert.subjectKeyId, 'hex') : keyIdentifier(spkiKeyBits(cert.publicKeyDer));
  return { nameDer: cert.subjectDer, keyId, key: key.keyObject };
}

/** extnID subjectAltName + critical TRUE: the fixed start of the leaf's SAN extension. */
const SAN_CRITICAL_PREFIX = Buffer.concat([EXT_OID.subjectAltName, DER_TRUE]);
/** The whole SKI extension up to its 20-byte key identifier. */
const SKI_PREFIX = skiExtension(Buffer.alloc(20)).subarray(0, 11);

export interface IssuedCertificate {
  der: Buffer;
  serialHex: string;
  /** As encoded: whole seconds. */
  notBefore: Date;
  notAfter: Date;
  pem(): string;
}

/**
 * Signs X.509-SVID leaves for one issuer. Built once per active issuer: everything that does not
 * change between certificates (issuer Name, algorithm identifier, the constant extensions, AKI)
 * is DER-encoded here, so sign() writes only the serial, validity, SPKI, URI SAN and SKI, then
 * makes one ECDSA signature. That keeps issuance close to the cost of crypto.sign itself.
 *
 * Leaf profile: v3; empty subject; extensions basicConstraints cA=false (critical), keyUsage
 * digitalSignature (critical), extKeyUsage serverAuth+clientAuth, subjectAltName with exactly one
 * URI (critical, because the subject is empty), SKI (RFC 5280 method 1), AKI = issuer key id;
 * ecdsa-with-SHA256.
 */
/** What a leaf certifies; see LeafSigner.sign. */
export interface LeafRequest {
  publicKeyDer: Buffer;
  id: SpiffeId;
  notBefore: Date;
  notAfter: Date;
  serial?: Buffer;
}

export class LeafSigner {
  readonly issuer: Issuer;
  readonly #key: KeyObject;
  readonly #notAfterLimit: number;
  /** signature AlgorithmIdentifier + issuer Name: the TBS bytes between serial and validity. */
  readonly #algAndIssuer: Buffer;
  readonly #extensionsBeforeSan: Buffer;
  readonly #aki: Buffer;

  constructor(issuer: Issuer) {
    const checked = checkIssuer(issuer);
    this.issuer = issuer;
    this.#key = checked.key;
    this.#notAfterLimit = issuer.cert.notAfter.getTime();
    this.#algAndIssuer = Buffer.concat([ECDSA_SHA256_ALG_ID, checked.nameDer]);
    this.#extensionsBeforeSan = Buffer.concat([
      extension(EXT_OID.basicConstraints, true, seq()),
      extension(EXT_OID.keyUsage, true, encodeNamedBits([KU.digitalSignature])),
      extension(EXT_OID.extKeyUsage, false, seq(encodeOid('1.3.6.1.5.5.7.3.1'), encodeOid('1.3.6.1.5.5.7.3.2'))),
    ]);
    this.#aki = akiExtension(checked.keyId);
  }

  /**
   * `publicKeyDer` must be an uncompressed P-256 SPKI (what parseCsr returns; parseCsr is where the
   * point is checked to be on the curve). notBefore/notAfter are the caller's policy (backdating,
   * clamping); notAfter past the issuer's notAfter is a caller bug and throws.
   *
   * The TBSCertificate is written in one pass into one buffer whose size is computed up front
   * (only the URI and the two Time encodings vary in length), so a certificate costs two
   * allocations, one SHA-1 and one ECDSA signature. The layout is the one the encoders above
   * produce for CA certificates; the tests parse the result back with Ward, node:crypto and openssl.
   */
  sign(o: LeafRequest): IssuedCertificate {
    const t = this.#tbs(o);
    return this.#wrap(t, cryptoSign('sha256', t.tbs, { key: this.#key, dsaEncoding: 'der' }));
  }

  /**
   * Same as sign(), but the ECDSA signature runs on libuv's thread pool (node:crypto's callback
   * form), so a busy CA uses every core: the main thread encodes the next certificate while
   * another core signs this one. The encoding is identical.
   */
  signAsync(o: LeafRequest): Promise<IssuedCertificate> {
    const t = this.#tbs(o);
    return new Promise((resolve, reject) => {
      cryptoSign('sha256', t.tbs, { key: this.#key, dsaEncoding: 'der' }, (err, signature) => {
        if (err) reject(err);
        else resolve(this.#wrap(t, signature));
      });
    });
  }

  #tbs(o: LeafRequest): { tbs: Buffer; serialHex: string; notBefore: Date; notAfter: Date } {
    const spki = o.publicKeyDer;
    if (!isP256Spki(spki)) throw new WardError('WARD_PKI_KEY_INVALID', 'leaf public key must be an uncompressed ECDSA P-256 SubjectPublicKeyInfo');
    const v = checkValidity(o.notBefore, o.notAfter);
    if (v.notAfter.getTime() > this.#notAfterLimit) {
      bug(`leaf notAfter ${v.notAfter.toISOString()} is past the issuer's ${this.issuer.cert.notAfter.toISOString()}; clamp it first`);
    }
    const chosenSerial = o.serial === undefined ? undefined : encodeSerial(o.serial);
    // A SpiffeId is ASCII by construction, so its length in characters is its length in bytes.
    const uri = o.id.toString();

    // Sizes, innermost first.
    const uriName = elementSize(uri.length); // [6] IA5String
    const generalNames = elementSize(uriName);
    const sanBody = SAN_CRITICAL_PREFIX.length + elementSize(generalNames);
    const extList = this.#extensionsBeforeSan.length + elementSize(sanBody) + SKI_PREFIX.length + 20 + this.#aki.length;
    const extWrapper = elementSize(extList);
    const validity = timeSize(v.notBefore) + timeSize(v.notAfter);
    const tbsBody =
      VERSION_V3.length +
      (chosenSerial ? chosenSerial.tlv.length : 18) +
      this.#algAndIssuer.length +
      elementSize(validity) +
      EMPTY_NAME.length +
      spki.length +
      elementSize(extWrapper);

    const tbs = Buffer.allocUnsafe(elementSize(tbsBody));
    let p = writeHeader(tbs, 0, TAG.SEQUENCE, tbsBody);
    p += VERSION_V3.copy(tbs, p);
    let serialHex: string;
    if (chosenSerial) {
      p += chosenSerial.tlv.copy(tbs, p);
      serialHex = chosenSerial.hex;
    } else {
      tbs[p++] = TAG.INTEGER;
      tbs[p++] = 16;
      writeRandomSerial(tbs, p);
      serialHex = tbs.toString('hex', p, p + 16);
      p += 16;
    }
    p += this.#algAndIssuer.copy(tbs, p);
    p = writeHeader(tbs, p, TAG.SEQUENCE, validity);
    p = writeTime(tbs, p, v.notBefore);
    p = writeTime(tbs, p, v.notAfter);
    p += EMPTY_NAME.copy(tbs, p);
    p += spki.copy(tbs, p);
    p = writeHeader(tbs, p, 0xa3, extWrapper);
    p = writeHeader(tbs, p, TAG.SEQUENCE, extList);
    p += this.#extensionsBeforeSan.copy(tbs, p);
    p = writeHeader(tbs, p, TAG.SEQUENCE, sanBody);
    p += SAN_CRITICAL_PREFIX.copy(tbs, p);
    p = writeHeader(tbs, p, TAG.OCTET_STRING, generalNames);
    p = writeHeader(tbs, p, TAG.SEQUENCE, uriName);
    p = writeHeader(tbs, p, 0x86, uri.length);
    p += tbs.write(uri, p, 'latin1');
    p += SKI_PREFIX.copy(tbs, p);
    p += keyIdentifier(spki.subarray(P256_SPKI_PREFIX.length)).copy(tbs, p);
    p += this.#aki.copy(tbs, p);
    if (p !== tbs.length) bug(`LeafSigner wrote ${p} TBS bytes, expected ${tbs.length}`);

    return { tbs, serialHex, notBefore: v.notBefore, notAfter: v.notAfter };
  }

  /**
   * A TLS server certificate for DNS names, for the mesh ingress's hosts that have no certificate of
   * their own ("internal names": only clients that trust Ward's root accept it; never for the public
   * internet). Deliberately NOT an X.509-SVID: no URI SAN, extKeyUsage serverAuth only, so it can
   * never pass as a mesh identity (checkSvidLeaf needs exactly one URI SAN) nor as a client
   * certificate. Subject CN = the first name when it fits (64 characters), for people reading
   * `openssl x509` output; clients match the DNS SANs only. Names are the caller's to check
   * (lowercase DNS names, a wildcard only as the whole first label); at most 16.
   * Not on the hot path, so encoded with the general encoders rather than in one pass.
   */
  signServerName(o: { publicKeyDer: Buffer; dnsNames: readonly string[]; notBefore: Date; notAfter: Date }): IssuedCertificate {
    const spki = o.publicKeyDer;
    if (!isP256Spki(spki)) throw new WardError('WARD_PKI_KEY_INVALID', 'leaf public key must be an uncompressed ECDSA P-256 SubjectPublicKeyInfo');
    if (o.dnsNames.length === 0 || o.dnsNames.length > 16) bug(`signServerName: 1..16 DNS names, got ${o.dnsNames.length}`);
    for (const n of o.dnsNames) if (!/^(\*\.)?[a-z0-9.-]{1,253}$/.test(n)) bug(`signServerName: ${JSON.stringify(n)} is not a lowercase DNS name`);
    const v = checkValidity(o.notBefore, o.notAfter);
    if (v.notAfter.getTime() > this.#notAfterLimit) {
      bug(`leaf notAfter ${v.notAfter.toISOString()} is past the issuer's ${this.issuer.cert.notAfter.toISOString()}; clamp it first`);
    }
    const serial = encodeSerial(undefined);
    const first = o.dnsNames[0];
    const subject = first.length <= 64 ? encodeName([['CN', first]]) : EMPTY_NAME;
    const san = extension(EXT_OID.subjectAltName, subject === EMPTY_NAME, seq(...o.dnsNames.map((n) => tlv(0x82, Buffer.from(n, 'latin1')))));
    const tbs = seq(
      VERSION_V3,
      serial.tlv,
      this.#algAndIssuer,
      seq(encodeTime(v.notBefore), encodeTime(v.notAfter)),
      subject,
      spki,
      tlv(
        0xa3,
        seq(
          extension(EXT_OID.basicConstraints, true, seq()),
          extension(EXT_OID.keyUsage, true, encodeNamedBits([KU.digitalSignature])),
          extension(EXT_OID.extKeyUsage, false, seq(encodeOid('1.3.6.1.5.5.7.3.1'))),
          san,
          skiExtension(keyIdentifier(spki.subarray(P256_SPKI_PREFIX.length))),
          this.#aki,
        ),
      ),
    );
    const signature = cryptoSign('sha256', tbs, { key: this.#key, dsaEncoding: 'der' });
    return this.#wrap({ tbs, serialHex: serial.hex, notBefore: v.notBefore, notAfter: v.notAfter }, signature);
  }

  #wrap(t: { tbs: Buffer; serialHex: string; notBefore: Date; notAfter: Date }, signature: Buffer): IssuedCertificate {
    const { tbs, serialHex } = t;
    const bitString = signature.length + 1;
    const certBody = tbs.length + ECDSA_SHA256_ALG_ID.length + elementSize(bitString);
    const der = Buffer.allocUnsafe(elementSize(certBody));
    let q = writeHeader(der, 0, TAG.SEQUENCE, certBody);
    q += tbs.copy(der, q);
    q += ECDSA_SHA256_ALG_ID.copy(der, q);
    q = writeHeader(der, q, TAG.BIT_STRING, bitString);
    der[q++] = 0; // no unused bits
    signature.copy(der, q);
    return { der, serialHex, notBefore: t.notBefore, notAfter: t.notAfter, pem: () => toPem(der) };
  }
}
