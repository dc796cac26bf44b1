/**
 * Test helper: mints unusual certificates with @peculiar/x509's generator (a CA used as a leaf,
 * two URI SANs, no key usage, a foreign trust domain, …) to exercise every refusal of verify.ts.
 * Ward's own profile is built by certificate.ts; this helper exists to build what Ward never would.
 * Only tests import it.
 */
import 'reflect-metadata';
import { KeyObject, sign, webcrypto } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import * as asn1X509 from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import { parseCertificate, type Certificate } from './certificate.js';
import type { PrivateKey } from './keys.js';

type CryptoKeyT = webcrypto.CryptoKey;
export interface MintKeys {
  privateKey: CryptoKeyT;
  publicKey: CryptoKeyT;
}

/** A minted certificate with its keys, usable as the issuer of further certificates. */
export interface Minted {
  cert: Certificate;
  keys: MintKeys;
}

/** The instant tests validate at; DEFAULT_NOT_BEFORE..DEFAULT_NOT_AFTER contains it. */
export const AT = new Date('2026-06-01T00:00:00Z');
export const DEFAULT_NOT_BEFORE = new Date('2026-01-01T00:00:00Z');
export const DEFAULT_NOT_AFTER = new Date('2027-01-01T00:00:00Z');

const ECDSA_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;

export async function newKeys(namedCurve: 'P-256' | 'P-384' = 'P-256'): Promise<MintKeys> {
  const pair = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve }, true, ['sign', 'verify']);
  return pair as MintKeys;
}

/** Imports a Ward PrivateKey (and its public half) into WebCrypto, to sign with @peculiar/x509. */
export async function keysFromPrivateKey(key: PrivateKey): Promise<MintKeys> {
  const privateKey = await webcrypto.subtle.importKey('pkcs8', key.keyObject.export({ format: 'der', type: 'pkcs8' }), ECDSA_P256, true, ['sign']);
  const publicKey = await webcrypto.subtle.importKey('spki', key.publicKeyDer(), ECDSA_P256, true, ['verify']);
  return { privateKey, publicKey };
}

const KEY_USAGE_FLAGS: Record<string, number> = {
  digitalSignature: x509.KeyUsageFlags.digitalSignature,
  nonRepudiation: x509.KeyUsageFlags.nonRepudiation,
  keyEncipherment: x509.KeyUsageFlags.keyEncipherment,
  dataEncipherment: x509.KeyUsageFlags.dataEncipherment,
  keyAgreement: x509.KeyUsageFlags.keyAgreement,
  keyCertSign: x509.KeyUsageFlags.keyCertSign,
  cRLSign: x509.KeyUsageFlags.cRLSign,
};
const EKU_OIDS: Record<string, string> = {
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  codeSigning: '1.3.6.1.5.5.7.3.3',
  any: '2.5.29.37.0',
};

export interface MintOptions {
  /** RFC 4514-style name for @peculiar/x509 ('CN=a, O=b'); '' for an empty subject. */
  subject?: string;
  /** Absent: self-signed. */
  issuer?: Minted;
  keys?: MintKeys;
  notBefore?: Date;
  notAfter?: Date;
  /** Hex serial; default random positive 16 bytes. */
  serial?: string;
  /** null omits the extension. */
  basicConstraints?: { ca: boolean; pathLen?: number; critical?: boolean } | null;
  keyUsage?: { usages: string[]; critical?: boolean } | null;
  extKeyUsage?: { usages: string[]; critical?: boolean } | null;
  san?: { uris?: string[]; dns?: string[]; ips?: string[]; emails?: string[]; critical?: boolean } | null;
  /** Default true. */
  subjectKeyId?: boolean;
  /** Default true when an issuer is given. */
  authorityKeyId?: boolean;
  /** Appended as is (for example an unknown critical extension). */
  extensions?: x509.Extension[];
}

function randomSerial(): string {
  const b = Buffer.from(webcrypto.getRandomValues(new Uint8Array(16)));
  b[0] &= 0x7f;
  b[0] |= 0x01;
  return b.toString('hex');
}

async function subjectKeyIdHex(m: Minted): Promise<string> {
  const parsed = new x509.X509Certificate(m.cert.der);
  const ski = parsed.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ski) return ski.keyId;
  const created = await x509.SubjectKeyIdentifierExtension.create(m.keys.publicKey);
  return created.keyId;
}

/** Mints one certificate exactly as described; nothing is added that the options do not ask for. */
export async function mint(o: MintOptions): Promise<Minted> {
  const keys = o.keys ?? (await newKeys());
  const extensions: x509.Extension[] = [];
  if (o.basicConstraints) {
    extensions.push(new x509.BasicConstraintsExtension(o.basicConstraints.ca, o.basicConstraints.pathLen, o.basicConstraints.critical ?? true));
  }
  if (o.keyUsage) {
    const flags = o.keyUsage.usages.reduce((acc, u) => {
      const f = KEY_USAGE_FLAGS[u];
      if (f === undefined) throw new Error(`unknown key usage ${u}`);
      return acc | f;
    }, 0);
    extensions.push(new x509.KeyUsagesExtension(flags, o.keyUsage.critical ?? true));
  }
  if (o.extKeyUsage) {
    extensions.push(new x509.ExtendedKeyUsageExtension(o.extKeyUsage.usages.map((u) => EKU_OIDS[u] ?? u), o.extKeyUsage.critical ?? false));
  }
  if (o.san) {
    const names: x509.JsonGeneralName[] = [
      ...(o.san.uris ?? []).map((value) => ({ type: 'url' as const, value })),
      ...(o.san.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
      ...(o.san.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
      ...(o.san.emails ?? []).map((value) => ({ type: 'email' as const, value })),
    ];
    extensions.push(new x509.SubjectAlternativeNameExtension(names, o.san.critical ?? false));
  }
  if (o.subjectKeyId ?? true) extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey));
  if (o.issuer && (o.authorityKeyId ?? true)) extensions.push(new x509.AuthorityKeyIdentifierExtension(await subjectKeyIdHex(o.issuer)));
  extensions.push(...(o.extensions ?? []));

  const subject = new x509.Name(o.subject ?? 'CN=test');
  // The issuer name is copied byte for byte from the issuer's certificate, so name chaining is exact.
  const issuerName = o.issuer ? new x509.X509Certificate(o.issuer.cert.der).subjectName : subject;
  const generated = await x509.X509CertificateGenerator.create({
    serialNumber: o.serial ?? randomSerial(),
    subject,
    issuer: issuerName,
    notBefore: o.notBefore ?? DEFAULT_NOT_BEFORE,
    notAfter: o.notAfter ?? DEFAULT_NOT_AFTER,
    signingAlgorithm: SIGNING,
    publicKey: keys.publicKey,
    signingKey: (o.issuer?.keys ?? keys).privateKey,
    extensions,
  });
  return { cert: parseCertificate(generated.toString('pem')), keys };
}

/** A self-signed CA in Ward's profile (critical cA=TRUE, critical keyCertSign+cRLSign, SKI). */
export function mintRoot(o: MintOptions = {}): Promise<Minted> {
  return mint({
    subject: 'O=Test, CN=Test Root',
    basicConstraints: { ca: true },
    keyUsage: { usages: ['keyCertSign', 'cRLSign'] },
    ...o,
  });
}

/** A CA signed by `issuer`, in Ward's profile. */
export function mintIntermediate(issuer: Minted, o: MintOptions = {}): Promise<Minted> {
  return mint({
    subject: 'O=Test, CN=Test Intermediate',
    basicConstraints: { ca: true },
    keyUsage: { usages: ['keyCertSign', 'cRLSign'] },
    issuer,
    ...o,
  });
}

/** An X.509-SVID leaf in Ward's profile for `id`, which each option can then break. */
export function mintLeaf(issuer: Minted, id: string, o: MintOptions = {}): Promise<Minted> {
  return mint({
    subject: '',
    basicConstraints: { ca: false },
    keyUsage: { usages: ['digitalSignature'] },
    extKeyUsage: { usages: ['serverAuth', 'clientAuth'] },
    san: { uris: [id], critical: true },
    issuer,
    ...o,
  });
}

/** An extension @peculiar/x509 knows nothing about, with raw DER value bytes. */
export function rawExtension(oid: string, critical: boolean, valueDer: Uint8Array = new Uint8Array([0x05, 0x00])): x509.Extension {
  return new x509.Extension(oid, critical, valueDer);
}

/** A name constraints extension over URI (SPIFFE trust domain) subtrees. */
export function uriNameConstraints(o: { permitted?: string[]; excluded?: string[] }, critical = true): x509.Extension {
  const subtrees = (hosts: string[]) =>
    new asn1X509.GeneralSubtrees(hosts.map((h) => new asn1X509.GeneralSubtree({ base: new asn1X509.GeneralName({ uniformResourceIdentifier: h }) })));
  const nc = new asn1X509.NameConstraints({
    permittedSubtrees: o.permitted ? subtrees(o.permitted) : undefined,
    excludedSubtrees: o.excluded ? subtrees(o.excluded) : undefined,
  });
  return rawExtension(asn1X509.id_ce_nameConstraints, critical, new Uint8Array(AsnConvert.serialize(nc)));
}

/**
 * Re-signs a minted certificate after `mutate` changed its TBSCertificate (for what no generator
 * produces: a v1 certificate, a zero serial, mismatched algorithm fields). Signed by `signer`'s
 * key, or by the certificate's own key when it was self-signed.
 */
export function tamper(m: Minted, signer: Minted | undefined, mutate: (c: asn1X509.Certificate) => void): Minted {
  const asn = AsnConvert.parse(m.cert.der, asn1X509.Certificate);
  mutate(asn);
  const tbs = Buffer.from(AsnConvert.serialize(asn.tbsCertificate));
  const key = KeyObject.from((signer ?? m).keys.privateKey);
  const signature = sign('sha256', tbs, { key, dsaEncoding: 'der' });
  asn.signatureValue = new Uint8Array(signature).buffer;
  return { cert: parseCertificate(Buffer.from(AsnConvert.serialize(asn))), keys: m.keys };
}
