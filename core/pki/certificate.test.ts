import { randomBytes, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isWardError } from '../errors.js';
import { SpiffeId } from '../identity/spiffe-id.js';
import { opensslOk, openssl, tempDir, writeFiles } from '../../test/helpers/openssl.js';
import { createIntermediate, createRoot, LeafSigner, parseCertificate, parseCertificates, toPem, type Certificate } from './certificate.js';
import { DerCursor, readTlv, readWhole, TAG } from './der.js';
import { PrivateKey } from './keys.js';
import { expectWardError } from '../../test/helpers/errors.js';

const TD = 'example.org';
const ID = SpiffeId.workload(TD, 'shop', 'cart');
const NB = new Date('2026-01-01T00:00:00Z');
const NA = new Date('2036-01-01T00:00:00Z');
const LEAF_NB = new Date('2026-03-01T11:59:00Z');
const LEAF_NA = new Date('2026-03-01T13:00:00Z');
/** Inside every validity window above, in seconds, for `openssl verify -attime`. */
const AT_SECONDS = String(Date.parse('2026-03-01T12:00:00Z') / 1000);

function hierarchy() {
  const rootKey = PrivateKey.generate();
  const intKey = PrivateKey.generate();
  const root = createRoot({ key: rootKey, trustDomain: TD, notBefore: NB, notAfter: NA });
  const inter = createIntermediate({ issuer: { cert: root, key: rootKey }, publicKey: intKey.publicKey, trustDomain: TD, notBefore: NB, notAfter: NA });
  return { rootKey, intKey, root, inter, signer: new LeafSigner({ cert: inter, key: intKey }) };
}


/** The tag of notBefore/notAfter in a certificate's DER (0x17 UTCTime, 0x18 GeneralizedTime). */
function validityTags(der: Buffer): [number, number] {
  const outer = readWhole(der, TAG.SEQUENCE, 'certificate');
  const tbs = readTlv(der, outer.start, outer.end);
  const c = DerCursor.inside(der, tbs);
  c.next('version');
  c.next('serial');
  c.next('sigalg');
  c.next('issuer');
  const validity = c.next('validity');
  const vc = DerCursor.inside(der, validity);
  return [vc.next('nb').tag, vc.next('na').tag];
}

describe('LeafSigner (X.509-SVID leaf profile)', () => {
  it('issues a leaf whose every field matches the profile, read back by Ward, node:crypto and openssl', async () => {
    const { inter, signer } = hierarchy();
    const leafKey = PrivateKey.generate();
    const issued = signer.sign({ publicKeyDer: leafKey.publicKeyDer(), id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA });
    expect(issued.notBefore).toEqual(LEAF_NB);
    expect(issued.notAfter).toEqual(LEAF_NA);
    expect(issued.pem()).toMatch(/^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n$/);

    const leaf = parseCertificate(issued.pem());
    expect(leaf.der.equals(issued.der)).toBe(true);
    expect(leaf.version).toBe(3);
    expect(leaf.serialHex).toBe(issued.serialHex);
    expect(leaf.subject).toBe('');
    expect(leaf.subjectDer.equals(Buffer.from([0x30, 0x00]))).toBe(true);
    expect(leaf.issuer).toBe('O=Ward, CN=Ward Intermediate CA');
    expect(leaf.issuerDer.equals(inter.subjectDer)).toBe(true);
    expect(leaf.notBefore).toEqual(LEAF_NB);
    expect(leaf.notAfter).toEqual(LEAF_NA);
    expect(leaf.signatureAlgorithm).toBe('ecdsa-with-SHA256');
    expect(leaf.publicKeyDer.equals(leafKey.publicKeyDer())).toBe(true);
    expect(leaf.isCa).toBe(false);
    expect(leaf.pathLen).toBeUndefined();
    expect(leaf.keyUsage).toEqual(['digitalSignature']);
    expect(leaf.keyUsageCritical).toBe(true);
    expect(leaf.extKeyUsage).toEqual(['serverAuth', 'clientAuth']);
    expect(leaf.uris).toEqual([ID.toString()]);
    expect(leaf.dnsNames).toEqual([]);
    expect(leaf.ipAddresses).toEqual([]);
    expect(leaf.emails).toEqual([]);
    expect(leaf.otherSanCount).toBe(0);
    expect(leaf.sanCritical).toBe(true);
    expect(leaf.authorityKeyId).toBe(inter.subjectKeyId);
    expect(leaf.subjectKeyId).toMatch(/^[0-9a-f]{40}$/);
    expect(leaf.extensions).toEqual([
      { oid: '2.5.29.19', critical: true },
      { oid: '2.5.29.15', critical: true },
      { oid: '2.5.29.37', critical: false },
      { oid: '2.5.29.17', critical: true },
      { oid: '2.5.29.14', critical: false },
      { oid: '2.5.29.35', critical: false },
    ]);

    // node:crypto (OpenSSL) agrees, and the signature verifies with the issuer's key.
    const x = new X509Certificate(issued.der);
    expect(x.subject).toBeFalsy(); // node reports an empty subject as undefined
    expect(x.subjectAltName).toBe(`URI:${ID.toString()}`);
    expect(x.ca).toBe(false);
    expect(x.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']); // node's keyUsage is the EKU list
    expect(x.serialNumber.toLowerCase()).toBe(issued.serialHex);
    expect(x.fingerprint256).toBe(leaf.fingerprintSha256);
    expect(x.verify(inter.publicKey)).toBe(true);
    expect(x.checkIssued(inter.x509)).toBe(true);
    expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');

    // openssl's own reading of the same bytes.
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'leaf.pem': issued.pem() });
    const text = await opensslOk(['x509', '-in', f['leaf.pem'], '-noout', '-text']);
    expect(text).toMatch(/Version: 3 \(0x2\)/);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).toMatch(/Issuer: O = Ward, CN = Ward Intermediate CA/);
    expect(text).toMatch(/Subject: *\n/);
    expect(text).toMatch(/Not Before: Mar {2}1 11:59:00 2026 GMT/);
    expect(text).toMatch(/Not After : Mar {2}1 13:00:00 2026 GMT/);
    expect(text).toMatch(/NIST CURVE: P-256/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\n\s+CA:FALSE/);
    expect(text).toMatch(/X509v3 Key Usage: critical\n\s+Digital Signature\n/);
    expect(text).toMatch(/X509v3 Extended Key Usage: *\n\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(new RegExp(`X509v3 Subject Alternative Name: critical\\n\\s+URI:${ID.toString()}\\n`));
    expect(text).toContain(`X509v3 Subject Key Identifier: \n                ${colonHex(leaf.subjectKeyId!)}`);
    expect(text).toContain(`X509v3 Authority Key Identifier: \n                ${colonHex(inter.subjectKeyId!)}`);
    expect(text).not.toMatch(/Certificate Sign|CRL Sign|CA:TRUE/);
    const fp = await opensslOk(['x509', '-in', f['leaf.pem'], '-noout', '-fingerprint', '-sha256']);
    expect(fp.trim()).toBe(`sha256 Fingerprint=${leaf.fingerprintSha256}`);
  });

  it('signAsync (thread-pool signature) encodes exactly what sign() does and verifies under the issuer', async () => {
    const { inter, signer } = hierarchy();
    const publicKeyDer = PrivateKey.generate().publicKeyDer();
    const serial = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
    const a = signer.sign({ publicKeyDer, id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA, serial });
    const b = await signer.signAsync({ publicKeyDer, id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA, serial });
    // ECDSA signatures are randomized, so compare the signed part (everything before the signature).
    // Both are a few hundred bytes: outer and TBS SEQUENCE headers use the 0x82 two-byte length form.
    const tbsOf = (der: Buffer) => {
      expect([der[1], der[5]]).toEqual([0x82, 0x82]);
      return der.subarray(4, 8 + der.readUInt16BE(6)).toString('hex');
    };
    expect(tbsOf(b.der)).toBe(tbsOf(a.der));
    expect(parseCertificate(b.der).x509.verify(inter.publicKey)).toBe(true);
    expect(b.serialHex).toBe(a.serialHex);
  });

  it('passes `openssl verify` for client and server use, strict mode, root as CAfile and intermediate untrusted', async () => {
    const { root, inter, signer } = hierarchy();
    const issued = signer.sign({ publicKeyDer: PrivateKey.generate().publicKeyDer(), id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA });
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'root.pem': root.pem, 'int.pem': inter.pem, 'leaf.pem': issued.pem() });
    for (const purpose of ['sslclient', 'sslserver']) {
      const r = await openssl(['verify', '-x509_strict', '-purpose', purpose, '-attime', AT_SECONDS, '-CAfile', f['root.pem'], '-untrusted', f['int.pem'], f['leaf.pem']]);
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe(`${f['leaf.pem']}: OK`);
      expect(r.code).toBe(0);
    }
    // The same chain fails once the leaf has expired: the check above can fail.
    const late = String(Date.parse('2026-03-01T14:00:00Z') / 1000);
    const expired = await openssl(['verify', '-attime', late, '-CAfile', f['root.pem'], '-untrusted', f['int.pem'], f['leaf.pem']]);
    expect(expired.code).not.toBe(0);
    expect(expired.stderr + expired.stdout).toMatch(/certificate has expired/);
  });

  it('encodes validity as UTCTime through 2049 and GeneralizedTime from 2050', async () => {
    const rootKey = PrivateKey.generate();
    const root = createRoot({ key: rootKey, trustDomain: TD, notBefore: new Date('1999-12-31T23:59:59Z'), notAfter: new Date('2100-01-01T00:00:00Z') });
    expect(validityTags(root.der)).toEqual([TAG.UTC_TIME, TAG.GENERALIZED_TIME]);
    expect(root.notBefore).toEqual(new Date('1999-12-31T23:59:59Z'));
    expect(root.notAfter).toEqual(new Date('2100-01-01T00:00:00Z'));
    const signer = new LeafSigner({ cert: root, key: rootKey });
    const key = PrivateKey.generate().publicKeyDer();
    const cases: Array<[string, string, [number, number]]> = [
      ['2049-12-31T22:00:00Z', '2049-12-31T23:59:59Z', [TAG.UTC_TIME, TAG.UTC_TIME]],
      ['2049-12-31T23:00:00Z', '2050-01-01T00:00:00Z', [TAG.UTC_TIME, TAG.GENERALIZED_TIME]],
      ['2050-01-01T00:00:00Z', '2050-01-01T01:00:00Z', [TAG.GENERALIZED_TIME, TAG.GENERALIZED_TIME]],
    ];
    const dir = await tempDir();
    for (const [nb, na, tags] of cases) {
      const issued = signer.sign({ publicKeyDer: key, id: ID, notBefore: new Date(nb), notAfter: new Date(na) });
      expect(validityTags(issued.der)).toEqual(tags);
      const leaf = parseCertificate(issued.der);
      expect(leaf.notBefore.toISOString()).toBe(new Date(nb).toISOString());
      expect(leaf.notAfter.toISOString()).toBe(new Date(na).toISOString());
      expect(new Date(leaf.x509.validTo).toISOString()).toBe(new Date(na).toISOString());
      const f = await writeFiles(dir, { 'leaf.pem': issued.pem() });
      const out = await opensslOk(['x509', '-in', f['leaf.pem'], '-noout', '-enddate']);
      expect(new Date(out.trim().replace('notAfter=', '')).toISOString()).toBe(new Date(na).toISOString());
    }
  });

  it('drops sub-second precision and reports the dates as encoded', () => {
    const { signer } = hierarchy();
    const issued = signer.sign({
      publicKeyDer: PrivateKey.generate().publicKeyDer(),
      id: ID,
      notBefore: new Date('2026-03-01T11:59:00.999Z'),
      notAfter: new Date('2026-03-01T13:00:00.500Z'),
    });
    expect(issued.notBefore).toEqual(LEAF_NB);
    expect(issued.notAfter).toEqual(LEAF_NA);
    expect(parseCertificate(issued.der).notAfter).toEqual(LEAF_NA);
  });

  it('gives every leaf a positive, 16-byte, unique random serial', () => {
    const { signer } = hierarchy();
    const key = PrivateKey.generate().publicKeyDer();
    const serials = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const issued = signer.sign({ publicKeyDer: key, id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA });
      // DER INTEGER content: 16 bytes, high bit clear (positive), first byte non-zero (minimal).
      const outer = readWhole(issued.der, TAG.SEQUENCE, 'certificate');
      const c = DerCursor.inside(issued.der, readTlv(issued.der, outer.start, outer.end));
      c.next('version');
      const serial = c.expect(TAG.INTEGER, 'serial');
      expect(serial.end - serial.start).toBe(16);
      expect(issued.der[serial.start] & 0x80).toBe(0);
      expect(issued.der[serial.start]).not.toBe(0);
      expect(issued.serialHex).toMatch(/^[4-7][0-9a-f]{31}$/);
      serials.add(issued.serialHex);
    }
    expect(serials.size).toBe(500);
  });

  it('encodes a caller-chosen serial as a positive INTEGER and reports it without the 00 pad', () => {
    const { signer } = hierarchy();
    const issued = signer.sign({
      publicKeyDer: PrivateKey.generate().publicKeyDer(),
      id: ID,
      notBefore: LEAF_NB,
      notAfter: LEAF_NA,
      serial: Buffer.from('00ff0102', 'hex'),
    });
    expect(issued.serialHex).toBe('ff0102');
    const leaf = parseCertificate(issued.der);
    expect(leaf.serialHex).toBe('ff0102');
    expect(leaf.x509.serialNumber.toLowerCase()).toMatch(/^(00)?ff0102$/);
    expect(issued.der.includes(Buffer.from('020400ff0102', 'hex'))).toBe(true);
    expect(() => signer.sign({ publicKeyDer: PrivateKey.generate().publicKeyDer(), id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA, serial: Buffer.alloc(4) })).toThrow(
      /BUG: certificate serial must be positive/,
    );
  });

  it('writes long-form DER lengths correctly (a 2000-byte SPIFFE ID)', async () => {
    const { root, inter, signer } = hierarchy();
    const long = SpiffeId.parse(`spiffe://${TD}/${'a'.repeat(1000)}/${'b'.repeat(980)}`);
    expect(long.toString().length).toBeGreaterThan(1990);
    const issued = signer.sign({ publicKeyDer: PrivateKey.generate().publicKeyDer(), id: long, notBefore: LEAF_NB, notAfter: LEAF_NA });
    expect(issued.der[1]).toBe(0x82); // whole certificate > 255 bytes
    const leaf = parseCertificate(issued.der);
    expect(leaf.uris).toEqual([long.toString()]);
    expect(new X509Certificate(issued.der).subjectAltName).toBe(`URI:${long.toString()}`);
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'root.pem': root.pem, 'int.pem': inter.pem, 'leaf.pem': issued.pem() });
    await opensslOk(['verify', '-attime', AT_SECONDS, '-CAfile', f['root.pem'], '-untrusted', f['int.pem'], f['leaf.pem']]);
  });

  it('refuses keys that are not uncompressed P-256 SPKIs', () => {
    const { signer } = hierarchy();
    const good = PrivateKey.generate().publicKeyDer();
    const compressed = Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), Buffer.from([0x02]), good.subarray(27, 59)]);
    const wrongCurveOid = Buffer.from(good);
    wrongCurveOid[22] ^= 1;
    for (const bad of [Buffer.alloc(0), good.subarray(0, 90), Buffer.concat([good, Buffer.from([0])]), compressed, wrongCurveOid]) {
      expectWardError(() => signer.sign({ publicKeyDer: bad, id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA }), 'WARD_PKI_KEY_INVALID');
    }
  });

  it('refuses to let a leaf outlive its issuer, or to end before it starts', () => {
    const { signer } = hierarchy();
    const key = PrivateKey.generate().publicKeyDer();
    expect(() => signer.sign({ publicKeyDer: key, id: ID, notBefore: LEAF_NB, notAfter: new Date(NA.getTime() + 1000) })).toThrow(/BUG: leaf notAfter/);
    expect(() => signer.sign({ publicKeyDer: key, id: ID, notBefore: LEAF_NA, notAfter: LEAF_NB })).toThrow(/BUG: notAfter/);
    expect(() => signer.sign({ publicKeyDer: key, id: ID, notBefore: LEAF_NB, notAfter: new Date(Number.NaN) })).toThrow(/BUG: notBefore\/notAfter must be valid Dates/);
    // Exactly at the issuer's notAfter is allowed.
    expect(signer.sign({ publicKeyDer: key, id: ID, notBefore: LEAF_NB, notAfter: NA }).notAfter).toEqual(NA);
  });

  it('refuses an issuer that is not a CA, or whose key does not match its certificate', () => {
    const { inter, intKey, signer } = hierarchy();
    const leafKey = PrivateKey.generate();
    const leaf = parseCertificate(signer.sign({ publicKeyDer: leafKey.publicKeyDer(), id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA }).der);
    expectWardError(() => new LeafSigner({ cert: leaf, key: leafKey }), 'WARD_PKI_CHAIN_INVALID', /not a CA/);
    expectWardError(() => new LeafSigner({ cert: inter, key: PrivateKey.generate() }), 'WARD_PKI_KEY_MISMATCH');
    expect(() => new LeafSigner({ cert: inter, key: intKey })).not.toThrow();
  });
});

describe('createRoot / createIntermediate (signing certificate profile)', () => {
  it('builds a self-signed root: cA critical without path limit, keyCertSign+cRLSign critical, SKI = AKI, trust-domain URI', async () => {
    const key = PrivateKey.generate();
    const root = createRoot({ key, trustDomain: TD, commonName: 'Test Root', notBefore: NB, notAfter: NA });
    expect(root.version).toBe(3);
    expect(root.subject).toBe('O=Ward, CN=Test Root');
    expect(root.issuer).toBe(root.subject);
    expect(root.subjectDer.equals(root.issuerDer)).toBe(true);
    expect(root.selfIssued).toBe(true);
    expect(root.isCa).toBe(true);
    expect(root.pathLen).toBeUndefined();
    expect(root.keyUsage).toEqual(['keyCertSign', 'cRLSign']);
    expect(root.keyUsageCritical).toBe(true);
    expect(root.extKeyUsage).toBeUndefined();
    expect(root.uris).toEqual([`spiffe://${TD}`]);
    expect(root.sanCritical).toBe(false);
    expect(root.subjectKeyId).toMatch(/^[0-9a-f]{40}$/);
    expect(root.authorityKeyId).toBe(root.subjectKeyId);
    expect(root.publicKeyDer.equals(key.publicKeyDer())).toBe(true);
    expect(root.extensions.find((e) => e.oid === '2.5.29.19')).toEqual({ oid: '2.5.29.19', critical: true });
    expect(root.x509.ca).toBe(true);
    expect(root.x509.verify(key.publicKey)).toBe(true);

    const dir = await tempDir();
    const f = await writeFiles(dir, { 'root.pem': root.pem });
    const text = await opensslOk(['x509', '-in', f['root.pem'], '-noout', '-text']);
    expect(text).toMatch(/Subject: O = Ward, CN = Test Root/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\n\s+CA:TRUE\n/);
    expect(text).toMatch(/X509v3 Key Usage: critical\n\s+Certificate Sign, CRL Sign\n/);
    expect(text).toContain(`X509v3 Subject Key Identifier: \n                ${colonHex(root.subjectKeyId!)}`);
    // RFC 5280 method 1: SHA-1 of the key bits, the value openssl computes itself.
    const ossl = await opensslOk(['x509', '-in', f['root.pem'], '-noout', '-ext', 'subjectKeyIdentifier']);
    expect(ossl).toContain(colonHex(root.subjectKeyId!));
    await opensslOk(['verify', '-x509_strict', '-attime', AT_SECONDS, '-CAfile', f['root.pem'], f['root.pem']]);
  });

  it('builds an intermediate: pathLen 0 by default, AKI = root SKI, issuer = root subject, verifies under the root', async () => {
    const { root, inter, intKey } = hierarchy();
    expect(inter.subject).toBe('O=Ward, CN=Ward Intermediate CA');
    expect(inter.issuerDer.equals(root.subjectDer)).toBe(true);
    expect(inter.isCa).toBe(true);
    expect(inter.pathLen).toBe(0);
    expect(inter.keyUsage).toEqual(['keyCertSign', 'cRLSign']);
    expect(inter.keyUsageCritical).toBe(true);
    expect(inter.authorityKeyId).toBe(root.subjectKeyId);
    expect(inter.subjectKeyId).not.toBe(root.subjectKeyId);
    expect(inter.publicKeyDer.equals(intKey.publicKeyDer())).toBe(true);
    expect(inter.uris).toEqual([`spiffe://${TD}`]);
    expect(inter.x509.verify(root.publicKey)).toBe(true);

    const dir = await tempDir();
    const f = await writeFiles(dir, { 'root.pem': root.pem, 'int.pem': inter.pem });
    const text = await opensslOk(['x509', '-in', f['int.pem'], '-noout', '-text']);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\n\s+CA:TRUE, pathlen:0\n/);
    expect(text).toContain(`X509v3 Authority Key Identifier: \n                ${colonHex(root.subjectKeyId!)}`);
    await opensslOk(['verify', '-x509_strict', '-attime', AT_SECONDS, '-CAfile', f['root.pem'], f['int.pem']]);
  });

  it('honours an explicit pathLen and serial, and refuses non-P-256 keys and invalid trust domains', () => {
    const rootKey = PrivateKey.generate();
    const root = createRoot({ key: rootKey, trustDomain: TD, notBefore: NB, notAfter: NA, serial: Buffer.from([1]) });
    expect(root.serialHex).toBe('01');
    const inter = createIntermediate({
      issuer: { cert: root, key: rootKey },
      publicKey: PrivateKey.generate().publicKey,
      trustDomain: TD,
      notBefore: NB,
      notAfter: NA,
      pathLen: 2,
      commonName: 'Issuing CA 7',
    });
    expect(inter.pathLen).toBe(2);
    expect(inter.subject).toBe('O=Ward, CN=Issuing CA 7');
    expectWardError(() => createRoot({ key: rootKey, trustDomain: 'Example.ORG', notBefore: NB, notAfter: NA }), 'WARD_ID_INVALID');
  });

  it('refuses an RSA key for an intermediate', async () => {
    const rootKey = PrivateKey.generate();
    const root = createRoot({ key: rootKey, trustDomain: TD, notBefore: NB, notAfter: NA });
    const { generateKeyPairSync } = await import('node:crypto');
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    expectWardError(
      () => createIntermediate({ issuer: { cert: root, key: rootKey }, publicKey, trustDomain: TD, notBefore: NB, notAfter: NA }),
      'WARD_PKI_KEY_INVALID',
    );
  });

  it('signs leaves under a CA made by openssl (bring-your-own intermediate)', async () => {
    const dir = await tempDir();
    const caKey = PrivateKey.generate();
    const f = await writeFiles(dir, { 'ca.key': caKey.exportPem() });
    await opensslOk([
      'req', '-x509', '-new', '-key', f['ca.key'], '-subj', '/C=DE/O=Corp/CN=Corp Issuing CA', '-days', '36500', '-set_serial', '77',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', `${dir}/ca.pem`,
    ]);
    const { readFile } = await import('node:fs/promises');
    const ca = parseCertificate(await readFile(`${dir}/ca.pem`, 'utf8'));
    expect(ca.subject).toBe('C=DE, O=Corp, CN=Corp Issuing CA');
    expect(ca.serialHex).toBe('4d');
    const issued = new LeafSigner({ cert: ca, key: caKey }).sign({
      publicKeyDer: PrivateKey.generate().publicKeyDer(),
      id: ID,
      notBefore: new Date(Date.now() - 60_000), // openssl verify checks against the real clock here
      notAfter: new Date(Date.now() + 3_600_000),
    });
    const leaf = parseCertificate(issued.der);
    expect(leaf.issuer).toBe('C=DE, O=Corp, CN=Corp Issuing CA');
    expect(leaf.authorityKeyId).toBe(ca.subjectKeyId);
    const g = await writeFiles(dir, { 'leaf.pem': issued.pem() });
    await opensslOk(['verify', '-purpose', 'sslclient', '-CAfile', `${dir}/ca.pem`, g['leaf.pem']]);
  });
});

describe('parseCertificate', () => {
  it('reads SAN kinds, names and fingerprints exactly as openssl does for a certificate openssl made', async () => {
    const dir = await tempDir();
    const key = PrivateKey.generate();
    const f = await writeFiles(dir, { 'k.pem': key.exportPem() });
    await opensslOk([
      'req', '-x509', '-new', '-key', f['k.pem'], '-subj', '/O=Acme, Inc./OU=a\\+b/CN=svc', '-days', '1', '-out', `${dir}/c.pem`,
      '-addext', 'subjectAltName=DNS:svc.example,IP:10.1.2.3,IP:2001:db8:0:0:1:0:0:1,IP:::1,email:ops@example.org,URI:https://example.org/x,RID:1.2.3.4',
      '-addext', 'extendedKeyUsage=serverAuth,codeSigning,1.2.3.9',
      '-addext', 'keyUsage=digitalSignature,keyAgreement',
    ]);
    const { readFile } = await import('node:fs/promises');
    const pem = await readFile(`${dir}/c.pem`, 'utf8');
    const c = parseCertificate(pem);
    expect(c.subject).toBe('O=Acme\\, Inc., OU=a\\+b, CN=svc');
    expect(c.dnsNames).toEqual(['svc.example']);
    expect(c.ipAddresses).toEqual(['10.1.2.3', '2001:db8::1:0:0:1', '::1']);
    expect(c.emails).toEqual(['ops@example.org']);
    expect(c.uris).toEqual(['https://example.org/x']);
    expect(c.otherSanCount).toBe(1);
    expect(c.sanCritical).toBe(false);
    expect(c.extKeyUsage).toEqual(['serverAuth', 'codeSigning', '1.2.3.9']);
    expect(c.keyUsage).toEqual(['digitalSignature', 'keyAgreement']);
    expect(c.keyUsageCritical).toBe(false);
    expect(c.isCa).toBe(true); // openssl req -x509 marks its output as a CA by default
    const serial = await opensslOk(['x509', '-in', `${dir}/c.pem`, '-noout', '-serial']);
    expect(serial.trim()).toBe(`serial=${c.serialHex.toUpperCase()}`);
    const fp = await opensslOk(['x509', '-in', `${dir}/c.pem`, '-noout', '-fingerprint', '-sha256']);
    expect(fp.trim()).toBe(`sha256 Fingerprint=${c.fingerprintSha256}`);
    expect(c.pem).toBe(pem);
  });

  it('accepts DER and PEM (also as a Buffer) and copies its input', () => {
    const { root } = hierarchy();
    const der = Buffer.from(root.der);
    const fromDer = parseCertificate(der);
    der.fill(0);
    expect(fromDer.subject).toBe('O=Ward, CN=Ward Root CA');
    expect(parseCertificate(Buffer.from(root.pem)).fingerprintSha256).toBe(root.fingerprintSha256);
    expect(parseCertificate(`# root\n${root.pem.replace(/\n/g, '\r\n')}`).fingerprintSha256).toBe(root.fingerprintSha256);
    expect(toPem(root.der)).toBe(root.pem);
  });

  it('parseCertificates returns every CERTIFICATE block in order, skipping other blocks and text', () => {
    const { root, inter, signer } = hierarchy();
    const leaf = signer.sign({ publicKeyDer: PrivateKey.generate().publicKeyDer(), id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA });
    const bundle = `leaf\n${leaf.pem()}\n# intermediate\n${inter.pem}${toPem(Buffer.from([1, 2, 3]), 'X509 CRL')}${root.pem}`;
    const certs = parseCertificates(bundle);
    expect(certs.map((c: Certificate) => c.serialHex)).toEqual([leaf.serialHex, inter.serialHex, root.serialHex]);
    expectWardError(() => parseCertificates('nothing here'), 'WARD_PKI_PEM_INVALID', /no CERTIFICATE/);
    expectWardError(() => parseCertificates(`${root.pem}${toPem(Buffer.from('3003020101', 'hex'))}`), 'WARD_PKI_CERT_INVALID', /certificate #2/);
  });

  it('refuses malformed PEM with WARD_PKI_PEM_INVALID', () => {
    const { root, inter } = hierarchy();
    const cases: Array<[string, RegExp]> = [
      ['', /found 0/],
      ['hello', /found 0/],
      [root.pem + inter.pem, /exactly one PEM block, found 2/],
      [root.pem.replace(/CERTIFICATE/g, 'PRIVATE KEY'), /expected a CERTIFICATE PEM block, found "PRIVATE KEY"/],
      [root.pem.replace('END CERTIFICATE', 'END CERTIFICATE REQUEST'), /ends with/],
      [root.pem.slice(0, 200), /no END line/],
      [root.pem.replace(/\n[A-Za-z0-9+/]{10}/, '\n!!!!!!!!!!'), /not valid base64/],
      [root.pem.replace('-----BEGIN CERTIFICATE-----\n', '-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\n'), /headers/],
      ['-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n', /empty/],
    ];
    for (const [input, message] of cases) expectWardError(() => parseCertificate(input), 'WARD_PKI_PEM_INVALID', message);
  });

  it('refuses malformed DER with WARD_PKI_CERT_INVALID: truncations, trailing data, BER lengths, garbage', () => {
    const { root } = hierarchy();
    const der = root.der;
    // Every truncation of a real certificate.
    for (let n = 1; n < der.length; n++) expectWardError(() => parseCertificate(der.subarray(0, n)), 'WARD_PKI_CERT_INVALID');
    expectWardError(() => parseCertificate(Buffer.concat([der, Buffer.from([0])])), 'WARD_PKI_CERT_INVALID', /trailing/);
    expectWardError(() => parseCertificate(toPem(Buffer.concat([der, Buffer.from('garbage')]))), 'WARD_PKI_CERT_INVALID', /trailing/);
    // The same certificate with its outer length in a non-minimal long form (BER, not DER).
    expect(der[1]).toBe(0x82);
    const ber = Buffer.concat([Buffer.from([0x30, 0x83, 0x00]), der.subarray(2)]);
    expectWardError(() => parseCertificate(ber), 'WARD_PKI_CERT_INVALID', /non-minimal length/);
    const indefinite = Buffer.concat([Buffer.from([0x30, 0x80]), der.subarray(4), Buffer.from([0, 0])]);
    expectWardError(() => parseCertificate(indefinite), 'WARD_PKI_CERT_INVALID', /indefinite/);
    expectWardError(() => parseCertificate(Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff])), 'WARD_PKI_CERT_INVALID', /truncated/);
    expectWardError(() => parseCertificate(Buffer.from([0x30, 0x00])), 'WARD_PKI_CERT_INVALID');
  });

  it('never throws anything but a WardError on random or bit-flipped input, and never hangs', () => {
    const { inter } = hierarchy();
    const der = inter.der;
    let parsed = 0;
    for (let i = 0; i < 3000; i++) {
      let input: Buffer;
      if (i % 3 === 0) {
        input = Buffer.concat([Buffer.from([0x30]), randomBytes(1 + (i % 700))]);
      } else {
        input = Buffer.from(der);
        const flips = 1 + (i % 4);
        for (let k = 0; k < flips; k++) input[Math.floor(Math.random() * input.length)] ^= 1 << Math.floor(Math.random() * 8);
      }
      try {
        parseCertificate(input);
        parsed++;
      } catch (err) {
        // A flipped first byte makes the input look like PEM text rather than DER.
        if (!isWardError(err, 'WARD_PKI_CERT_INVALID') && !isWardError(err, 'WARD_PKI_PEM_INVALID')) throw new Error(`unexpected error for ${input.toString('hex')}`, { cause: err });
      }
    }
    // Flips inside the key, signature or string values still parse; the rest must not crash.
    expect(parsed).toBeGreaterThan(0);
  });

  it('refuses a certificate whose inner and outer signature algorithms differ, and duplicate extensions', () => {
    const { root } = hierarchy();
    // Outer signatureAlgorithm ecdsa-with-SHA256 (…04 03 02) → ecdsa-with-SHA384 (…04 03 03), inner untouched.
    const der = Buffer.from(root.der);
    const alg = Buffer.from('06082a8648ce3d040302', 'hex');
    const outer = der.lastIndexOf(alg);
    der[outer + alg.length - 1] = 0x03;
    expectWardError(() => parseCertificate(der), 'WARD_PKI_CERT_INVALID', /differs from signatureAlgorithm/);

    // A leaf whose extKeyUsage OID (2.5.29.37) is rewritten to basicConstraints (2.5.29.19): two basicConstraints.
    const { signer } = hierarchy();
    const leaf = Buffer.from(signer.sign({ publicKeyDer: PrivateKey.generate().publicKeyDer(), id: ID, notBefore: LEAF_NB, notAfter: LEAF_NA }).der);
    const eku = leaf.indexOf(Buffer.from('0603551d25', 'hex'));
    leaf[eku + 4] = 0x13;
    expectWardError(() => parseCertificate(leaf), 'WARD_PKI_CERT_INVALID', /extension 2\.5\.29\.19 appears twice/);
  });
});

function colonHex(hex: string): string {
  return hex.toUpperCase().replace(/(..)(?!$)/g, '$1:');
}
