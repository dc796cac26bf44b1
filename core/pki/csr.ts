import { createPublicKey, ECDH, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { WardError } from '../errors.js';
import { ECDSA_SHA256_ALG_ID, P256_SPKI_PREFIX } from './certificate.js';
import {
  bitIsSet,
  DER_TRUE,
  DerCursor,
  DerError,
  encodeBitString,
  encodeName,
  encodeOid,
  formatName,
  raw,
  readBitString,
  readBoolean,
  readGeneralNames,
  readOid,
  readPemBlocks,
  readSmallInteger,
  readTlv,
  readWhole,
  seq,
  TAG,
  tlv,
  toPem,
  type PemBlock,
  type Tlv,
} from './der.js';
import type { PrivateKey } from './keys.js';

/** Upper bound on a CSR as received (PEM text or DER), checked before any parsing. */
export const MAX_CSR_BYTES = 16 * 1024;

/**
 * What a CSR asks for. Only the key is used for issuance; the rest is reported so the CA can
 * refuse requests for things it will never grant (a CA certificate, foreign identities, DNS
 * names): the identity in a Ward certificate comes from the source of truth, never from the CSR.
 */
export interface CsrRequest {
  /** Uncompressed P-256 SubjectPublicKeyInfo DER, ready for LeafSigner.sign. */
  publicKeyDer: Buffer;
  /** Human-readable subject, '' when empty. */
  subject: string;
  uris: string[];
  dnsNames: string[];
  ipAddresses: string[];
  emails: string[];
  /** SAN entries of other kinds (otherName, directoryName, …). */
  otherSanCount: number;
  /** basicConstraints cA=TRUE in the extension request. */
  requestsCa: boolean;
  /** keyUsage keyCertSign in the extension request. */
  requestsKeyCertSign: boolean;
}

const PEM_LABELS = new Set(['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST']); // the latter: RFC 7468 §7, still emitted by some tools

const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const OID_SAN = '2.5.29.17';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';
const OID_P256 = '1.2.840.10045.3.1.7';

const KEY_ALGORITHMS: Record<string, string> = {
  '1.2.840.113549.1.1.1': 'RSA',
  '1.2.840.113549.1.1.10': 'RSASSA-PSS',
  '1.3.101.112': 'Ed25519',
  '1.3.101.113': 'Ed448',
  '1.2.840.10040.4.1': 'DSA',
};
const CURVES: Record<string, string> = {
  '1.3.132.0.34': 'P-384',
  '1.3.132.0.35': 'P-521',
  '1.3.132.0.10': 'secp256k1',
  '1.2.840.10045.3.1.1': 'P-192',
  '1.3.132.0.33': 'P-224',
};
const SIGNATURE_ALGORITHMS: Record<string, string> = {
  '1.2.840.10045.4.1': 'ecdsa-with-SHA1',
  '1.2.840.10045.4.3.3': 'ecdsa-with-SHA384',
  '1.2.840.10045.4.3.4': 'ecdsa-with-SHA512',
  '1.2.840.113549.1.1.5': 'sha1WithRSAEncryption',
  '1.2.840.113549.1.1.11': 'sha256WithRSAEncryption',
  '1.2.840.113549.1.1.10': 'rsassaPss',
  '1.3.101.112': 'Ed25519',
};

/** AlgorithmIdentifier { id-ecPublicKey, prime256v1 }: bytes 2..23 of every P-256 SPKI. */
const P256_ALG_ID = P256_SPKI_PREFIX.subarray(2, 23);

function invalid(message: string, cause?: unknown): WardError {
  return new WardError('WARD_PKI_CSR_INVALID', message, cause === undefined ? undefined : { cause });
}

/**
 * Parses a PKCS#10 CSR (PEM or DER) and verifies its self-signature, which proves the requester
 * holds the private key. Only EC P-256 keys signed with ecdsa-with-SHA256 are accepted.
 * Throws WARD_PKI_CSR_TOO_LARGE, WARD_PKI_PEM_INVALID or WARD_PKI_CSR_INVALID with the reason.
 *
 * Per-issuance hot path: a hand DER walk (no generic ASN.1 library), and the only expensive
 * steps are the key import and the signature check, done last. Nothing is cached between
 * calls: every input here is attacker-controlled.
 */
export function parseCsr(input: string | Buffer): CsrRequest {
  const p = prepareCsr(input);
  let ok: boolean;
  try {
    ok = cryptoVerify('sha256', p.signedBytes, { key: p.key, dsaEncoding: 'der' }, p.signature);
  } catch (err) {
    throw invalid('CSR signature is malformed (proof of possession failed)', err);
  }
  if (!ok) throw invalid('CSR signature does not verify (proof of possession failed)');
  return p.request;
}

/**
 * Same checks as parseCsr, but the signature verification (the most expensive step) runs on
 * libuv's thread pool through node:crypto's callback form, so concurrent issuances use every core.
 */
export function parseCsrAsync(input: string | Buffer): Promise<CsrRequest> {
  let p: PreparedCsr;
  try {
    p = prepareCsr(input);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise((resolve, reject) => {
    try {
      cryptoVerify('sha256', p.signedBytes, { key: p.key, dsaEncoding: 'der' }, p.signature, (err, ok) => {
        if (err) reject(invalid('CSR signature is malformed (proof of possession failed)', err));
        else if (!ok) reject(invalid('CSR signature does not verify (proof of possession failed)'));
        else resolve(p.request);
      });
    } catch (err) {
      reject(invalid('CSR signature is malformed (proof of possession failed)', err));
    }
  });
}

interface PreparedCsr {
  request: CsrRequest;
  key: KeyObject;
  signedBytes: Buffer;
  signature: Buffer;
}

/** Everything but the signature check: size bound, PEM, DER walk, key import. */
function prepareCsr(input: string | Buffer): PreparedCsr {
  if (typeof input !== 'string' && !Buffer.isBuffer(input)) throw invalid('CSR must be a PEM string or a DER buffer');
  // String length counts UTF-16 units, never more than the UTF-8 bytes; non-ASCII fails PEM anyway.
  if (input.length > MAX_CSR_BYTES) {
    throw new WardError('WARD_PKI_CSR_TOO_LARGE', `CSR is ${input.length} bytes; the limit is ${MAX_CSR_BYTES}`);
  }
  if (input.length === 0) throw invalid('CSR is empty');
  const der = Buffer.isBuffer(input) && input[0] === TAG.SEQUENCE ? input : decodeCsrPem(input);
  let parsed: WalkedCsr;
  try {
    parsed = walkCsr(der);
  } catch (err) {
    if (err instanceof DerError) throw invalid(`malformed CSR: ${err.message}`, err);
    throw err;
  }
  let key: KeyObject;
  try {
    key = importP256(parsed.point);
  } catch (err) {
    throw invalid('CSR public key is not a valid P-256 point', err);
  }
  return { request: parsed.request, key, signedBytes: parsed.signedBytes, signature: parsed.signature };
}

function decodeCsrPem(input: string | Buffer): Buffer {
  const text = typeof input === 'string' ? input : input.toString('latin1');
  let blocks: PemBlock[];
  try {
    const r = readPemBlocks(text);
    if (r.textOutside) throw new DerError('unexpected text outside the PEM block');
    blocks = r.blocks;
  } catch (err) {
    if (err instanceof DerError) throw new WardError('WARD_PKI_PEM_INVALID', `CSR: ${err.message}`, { cause: err });
    throw err;
  }
  if (blocks.length !== 1) throw new WardError('WARD_PKI_PEM_INVALID', `CSR: expected exactly one PEM block, found ${blocks.length}`);
  if (!PEM_LABELS.has(blocks[0].label)) {
    throw new WardError('WARD_PKI_PEM_INVALID', `CSR: expected a "CERTIFICATE REQUEST" PEM block, found "${blocks[0].label}"`);
  }
  return blocks[0].der;
}

/**
 * Imports a P-256 point. JWK is the cheapest synchronous import node:crypto offers (DER SPKI goes
 * through OpenSSL's decoder framework and costs twice as much); it also rejects points that are
 * not on the curve.
 */
function importP256(point: Buffer): KeyObject {
  return createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: point.toString('base64url', 1, 33), y: point.toString('base64url', 33, 65) },
    format: 'jwk',
  });
}

interface WalkedCsr {
  request: CsrRequest;
  /** The uncompressed point (65 bytes). */
  point: Buffer;
  signedBytes: Buffer;
  signature: Buffer;
}

function walkCsr(der: Buffer): WalkedCsr {
  const outer = readWhole(der, TAG.SEQUENCE, 'CertificationRequest');
  const oc = DerCursor.inside(der, outer);
  const info = oc.expect(TAG.SEQUENCE, 'certificationRequestInfo');
  const sigAlg = oc.expect(TAG.SEQUENCE, 'signatureAlgorithm');
  const sigBits = readBitString(der, oc.expect(TAG.BIT_STRING, 'signature'), 'signature');
  oc.finish('CertificationRequest');

  const c = DerCursor.inside(der, info);
  const version = readSmallInteger(der, c.expect(TAG.INTEGER, 'version'), 'version');
  if (version !== 0) throw new DerError(`unknown CSR version ${version}`);
  const subject = formatName(der, c.expect(TAG.SEQUENCE, 'subject'), 'subject');
  const spki = c.expect(TAG.SEQUENCE, 'subjectPKInfo');
  // PKCS#10 makes attributes mandatory (possibly empty); a few encoders drop the empty set.
  const attributes = c.optional(0xa0, 'attributes');
  c.finish('certificationRequestInfo');

  // The key type is checked before the signature algorithm: "RSA key" is the more useful refusal.
  const point = readP256Point(der, spki);
  if (!raw(der, sigAlg).equals(ECDSA_SHA256_ALG_ID)) {
    const oid = readOid(der, DerCursor.inside(der, sigAlg).next('signatureAlgorithm'), 'signatureAlgorithm');
    const name = oid === '1.2.840.10045.4.3.2' ? 'ecdsa-with-SHA256 with parameters' : (SIGNATURE_ALGORITHMS[oid] ?? oid);
    throw new DerError(`signature algorithm ${name} is not accepted; only ecdsa-with-SHA256`);
  }
  if (sigBits.unused !== 0) throw new DerError('signature BIT STRING has unused bits');
  const request: CsrRequest = {
    publicKeyDer: Buffer.concat([P256_SPKI_PREFIX, point]),
    subject,
    uris: [],
    dnsNames: [],
    ipAddresses: [],
    emails: [],
    otherSanCount: 0,
    requestsCa: false,
    requestsKeyCertSign: false,
  };
  if (attributes) readAttributes(der, attributes, request);
  return { request, point, signedBytes: raw(der, info), signature: sigBits.bytes };
}

/** The key's uncompressed point; compressed points are expanded (and so checked on the curve). */
function readP256Point(der: Buffer, spki: Tlv): Buffer {
  const c = DerCursor.inside(der, spki);
  const alg = c.expect(TAG.SEQUENCE, 'subjectPKInfo algorithm');
  const bits = readBitString(der, c.expect(TAG.BIT_STRING, 'subjectPublicKey'), 'subjectPublicKey');
  c.finish('subjectPKInfo');
  if (!der.subarray(alg.offset, alg.end).equals(P256_ALG_ID)) {
    const ac = DerCursor.inside(der, alg);
    const oid = readOid(der, ac.next('key algorithm'), 'key algorithm');
    if (oid !== OID_EC_PUBLIC_KEY) throw new DerError(`key type ${KEY_ALGORITHMS[oid] ?? oid} is not accepted; only ECDSA P-256`);
    const params = ac.next('EC parameters');
    if (params.tag !== TAG.OID) throw new DerError('EC key with explicit curve parameters is not accepted; only named curve P-256');
    const curve = readOid(der, params, 'EC curve');
    if (curve !== OID_P256) throw new DerError(`EC curve ${CURVES[curve] ?? curve} is not accepted; only P-256`);
    throw new DerError('malformed P-256 key algorithm identifier');
  }
  if (bits.unused !== 0) throw new DerError('subjectPublicKey has unused bits');
  const p = bits.bytes;
  if (p.length === 65 && p[0] === 0x04) return Buffer.from(p);
  if (p.length === 33 && (p[0] === 0x02 || p[0] === 0x03)) {
    try {
      return ECDH.convertKey(p, 'prime256v1', undefined, undefined, 'uncompressed') as Buffer;
    } catch {
      throw new DerError('compressed P-256 point is not on the curve');
    }
  }
  throw new DerError('subjectPublicKey is not an uncompressed or compressed P-256 point');
}

function readAttributes(der: Buffer, attributes: Tlv, request: CsrRequest): void {
  const c = DerCursor.inside(der, attributes);
  let sawExtensionRequest = false;
  while (!c.done) {
    const attr = c.expect(TAG.SEQUENCE, 'attribute');
    const ac = DerCursor.inside(der, attr);
    const oid = readOid(der, ac.next('attribute type'), 'attribute type');
    const values = ac.expect(TAG.SET, `attribute ${oid} values`);
    ac.finish(`attribute ${oid}`);
    if (oid !== OID_EXTENSION_REQUEST) continue; // challengePassword and friends: irrelevant here
    // Two extension requests could say different things to different readers; refuse both.
    if (sawExtensionRequest) throw new DerError('more than one extensionRequest attribute');
    sawExtensionRequest = true;
    const vc = DerCursor.inside(der, values);
    const extensions = vc.expect(TAG.SEQUENCE, 'extensionRequest');
    vc.finish('extensionRequest values (exactly one expected)');
    readRequestedExtensions(der, extensions, request);
  }
}

function readRequestedExtensions(der: Buffer, list: Tlv, request: CsrRequest): void {
  const c = DerCursor.inside(der, list);
  const seen = new Set<string>();
  while (!c.done) {
    const ext = c.expect(TAG.SEQUENCE, 'requested extension');
    const ec = DerCursor.inside(der, ext);
    const oid = readOid(der, ec.next('extnID'), 'extnID');
    const crit = ec.optional(TAG.BOOLEAN, 'critical');
    if (crit) readBoolean(der, crit, `extension ${oid} critical`);
    const value = ec.expect(TAG.OCTET_STRING, `extension ${oid} value`);
    ec.finish(`extension ${oid}`);
    if (seen.has(oid)) throw new DerError(`requested extension ${oid} appears twice`);
    seen.add(oid);
    if (oid === OID_SAN) {
      const names = readGeneralNames(der, single(der, value, TAG.SEQUENCE, 'subjectAltName'), 'subjectAltName');
      request.uris = names.uris;
      request.dnsNames = names.dnsNames;
      request.ipAddresses = names.ipAddresses;
      request.emails = names.emails;
      request.otherSanCount = names.otherCount;
    } else if (oid === OID_BASIC_CONSTRAINTS) {
      const bc = DerCursor.inside(der, single(der, value, TAG.SEQUENCE, 'basicConstraints'));
      const ca = bc.optional(TAG.BOOLEAN, 'basicConstraints cA');
      request.requestsCa = ca ? readBoolean(der, ca, 'basicConstraints cA') : false;
      bc.optional(TAG.INTEGER, 'basicConstraints pathLenConstraint');
      bc.finish('basicConstraints');
    } else if (oid === OID_KEY_USAGE) {
      const ku = readBitString(der, single(der, value, TAG.BIT_STRING, 'keyUsage'), 'keyUsage');
      request.requestsKeyCertSign = bitIsSet(ku.bytes, 5);
    }
  }
}

/** The one element filling an extension's OCTET STRING. */
function single(der: Buffer, value: Tlv, tag: number, what: string): Tlv {
  const t = readTlv(der, value.start, value.end);
  if (t.tag !== tag) throw new DerError(`${what}: unexpected tag 0x${t.tag.toString(16)}`);
  if (t.end !== value.end) throw new DerError(`${what}: trailing data in extension value`);
  return t;
}

/**
 * A PEM CSR for `key`: subject CN=<commonName> (or empty), and a subjectAltName extension request
 * with the URI and DNS names given. The CA ignores the requested names (the identity comes from
 * its source of truth); the URI is there so humans and other CAs see what the request is for.
 */
export function createCsr(key: PrivateKey, o: { uri?: string; dnsNames?: string[]; commonName?: string } = {}): string {
  const sans: Buffer[] = [];
  if (o.uri !== undefined) sans.push(tlv(0x86, ia5(o.uri, 'URI')));
  for (const dns of o.dnsNames ?? []) sans.push(tlv(0x82, ia5(dns, 'DNS name')));
  const attributes =
    sans.length === 0
      ? tlv(0xa0)
      : tlv(
          0xa0,
          seq(
            encodeOid(OID_EXTENSION_REQUEST),
            tlv(TAG.SET, seq(seq(encodeOid(OID_SAN), ...(o.commonName ? [] : [DER_TRUE]), tlv(TAG.OCTET_STRING, seq(...sans))))),
          ),
        );
  const info = seq(
    Buffer.from([TAG.INTEGER, 1, 0]),
    o.commonName ? encodeName([['CN', o.commonName]]) : seq(),
    key.publicKeyDer(),
    attributes,
  );
  const signature = cryptoSign('sha256', info, { key: key.keyObject, dsaEncoding: 'der' });
  return toPem(seq(info, ECDSA_SHA256_ALG_ID, encodeBitString(signature)), 'CERTIFICATE REQUEST');
}

function ia5(value: string, what: string): Buffer {
  if (!/^[\x20-\x7e]+$/.test(value)) throw invalid(`${what} ${JSON.stringify(value.slice(0, 80))} is empty or not printable ASCII`);
  return Buffer.from(value, 'latin1');
}
