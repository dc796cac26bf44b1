/**
 * LeafSigner.signServerName: internal-name TLS server certificates for the mesh ingress. Read back
 * by Ward's parser, node:crypto (OpenSSL) and the `openssl` command line; never an X.509-SVID.
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../identity/spiffe-id.js';
import { expectWardError } from '../../test/helpers/errors.js';
import { openssl, opensslOk, tempDir, writeFiles } from '../../test/helpers/openssl.js';
import { createIntermediate, createRoot, LeafSigner, parseCertificate, type IssuedCertificate } from './certificate.js';
import { PrivateKey } from './keys.js';
import { TrustBundle } from './trust-bundle.js';
import { checkSvidLeaf, validatePath, verifySvid } from './verify.js';

const TD = 'example.org';
const NB = new Date('2026-01-01T00:00:00Z');
const NA = new Date('2036-01-01T00:00:00Z');
const LEAF_NB = new Date('2026-03-01T11:59:00Z');
const LEAF_NA = new Date('2026-03-01T13:00:00Z');
const AT = new Date('2026-03-01T12:00:00Z');
/** Inside every validity window above, in seconds, for `openssl verify -attime`. */
const AT_SECONDS = String(AT.getTime() / 1000);

function hierarchy() {
  const rootKey = PrivateKey.generate();
  const intKey = PrivateKey.generate();
  const root = createRoot({ key: rootKey, trustDomain: TD, notBefore: NB, notAfter: NA });
  const inter = createIntermediate({ issuer: { cert: root, key: rootKey }, publicKey: intKey.publicKey, trustDomain: TD, notBefore: NB, notAfter: NA });
  return { root, inter, signer: new LeafSigner({ cert: inter, key: intKey }), bundle: new TrustBundle(TD, [root]) };
}

function signNames(signer: LeafSigner, dnsNames: readonly string[], key = PrivateKey.generate()): IssuedCertificate {
  return signer.signServerName({ publicKeyDer: key.publicKeyDer(), dnsNames, notBefore: LEAF_NB, notAfter: LEAF_NA });
}

/** A DNS name of exactly `length` characters (one long first label, then .example.com; length <= 75). */
function nameOfLength(length: number): string {
  const name = `${'a'.repeat(length - '.example.com'.length)}.example.com`;
  expect(name).toHaveLength(length);
  return name;
}

describe('LeafSigner.signServerName (internal-name server certificate profile)', () => {
  it('issues a serverAuth-only leaf with DNS SANs and CN = the first name, read back by Ward and node:crypto', () => {
    const { inter, signer } = hierarchy();
    const key = PrivateKey.generate();
    const names = ['shop.example.com', '*.apps.example.com', 'api.internal'];
    const issued = signNames(signer, names, key);
    expect(issued.notBefore).toEqual(LEAF_NB);
    expect(issued.notAfter).toEqual(LEAF_NA);
    expect(issued.serialHex).toMatch(/^[4-7][0-9a-f]{31}$/);

    const leaf = parseCertificate(issued.pem());
    expect(leaf.der.equals(issued.der)).toBe(true);
    expect(leaf.version).toBe(3);
    expect(leaf.serialHex).toBe(issued.serialHex);
    expect(leaf.subject).toBe('CN=shop.example.com');
    expect(leaf.issuer).toBe('O=Ward, CN=Ward Intermediate CA');
    expect(leaf.issuerDer.equals(inter.subjectDer)).toBe(true);
    expect(leaf.notBefore).toEqual(LEAF_NB);
    expect(leaf.notAfter).toEqual(LEAF_NA);
    expect(leaf.signatureAlgorithm).toBe('ecdsa-with-SHA256');
    expect(leaf.publicKeyDer.equals(key.publicKeyDer())).toBe(true);
    expect(leaf.isCa).toBe(false);
    expect(leaf.keyUsage).toEqual(['digitalSignature']);
    expect(leaf.keyUsageCritical).toBe(true);
    expect(leaf.extKeyUsage).toEqual(['serverAuth']);
    expect(leaf.dnsNames).toEqual(names);
    expect(leaf.uris).toEqual([]);
    expect(leaf.ipAddresses).toEqual([]);
    expect(leaf.emails).toEqual([]);
    expect(leaf.otherSanCount).toBe(0);
    // The subject names the host, so the SAN need not be critical (RFC 5280 4.2.1.6).
    expect(leaf.sanCritical).toBe(false);
    expect(leaf.authorityKeyId).toBe(inter.subjectKeyId);
    expect(leaf.subjectKeyId).toMatch(/^[0-9a-f]{40}$/);
    expect(leaf.extensions).toEqual([
      { oid: '2.5.29.19', critical: true },
      { oid: '2.5.29.15', critical: true },
      { oid: '2.5.29.37', critical: false },
      { oid: '2.5.29.17', critical: false },
      { oid: '2.5.29.14', critical: false },
      { oid: '2.5.29.35', critical: false },
    ]);

    const x = new X509Certificate(issued.der);
    expect(x.subject).toBe('CN=shop.example.com');
    expect(x.subjectAltName).toBe('DNS:shop.example.com, DNS:*.apps.example.com, DNS:api.internal');
    expect(x.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']); // node's keyUsage is the EKU list: serverAuth only
    expect(x.ca).toBe(false);
    expect(x.serialNumber.toLowerCase()).toBe(issued.serialHex);
    expect(x.verify(inter.publicKey)).toBe(true);
    expect(x.checkIssued(inter.x509)).toBe(true);
  });

  it('matches host names as a TLS client does: exact names, a wildcard for one label only, never an IP', () => {
    const { signer } = hierarchy();
    const x = new X509Certificate(signNames(signer, ['shop.example.com', '*.apps.example.com']).der);
    expect(x.checkHost('shop.example.com')).toBe('shop.example.com');
    expect(x.checkHost('SHOP.Example.COM')).toBe('shop.example.com');
    expect(x.checkHost('a.apps.example.com')).toBe('*.apps.example.com');
    expect(x.checkHost('b.apps.example.com', { subject: 'never' })).toBe('*.apps.example.com');
    // A wildcard covers exactly one label; neighbours and parents are not covered.
    expect(x.checkHost('a.b.apps.example.com')).toBeUndefined();
    expect(x.checkHost('apps.example.com')).toBeUndefined();
    expect(x.checkHost('other.example.com')).toBeUndefined();
    expect(x.checkHost('example.com')).toBeUndefined();
    expect(x.checkIP('127.0.0.1')).toBeUndefined();
    // Clients match the DNS SANs: the second name, absent from the subject, matches too.
    expect(x.checkHost('x.apps.example.com', { subject: 'never' })).toBe('*.apps.example.com');
  });

  it('is read by `openssl x509` as a TLS server certificate with CN and DNS names', async () => {
    const { signer } = hierarchy();
    const issued = signNames(signer, ['shop.example.com', '*.apps.example.com']);
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'leaf.pem': issued.pem() });
    const text = await opensslOk(['x509', '-in', f['leaf.pem'], '-noout', '-text']);
    expect(text).toMatch(/Subject: CN ?= ?shop\.example\.com\n/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\n\s+CA:FALSE/);
    expect(text).toMatch(/X509v3 Key Usage: critical\n\s+Digital Signature\n/);
    expect(text).toMatch(/X509v3 Extended Key Usage: *\n\s+TLS Web Server Authentication\n/);
    expect(text).not.toMatch(/TLS Web Client Authentication/);
    expect(text).toMatch(/X509v3 Subject Alternative Name: *\n\s+DNS:shop\.example\.com, DNS:\*\.apps\.example\.com\n/);
    expect(text).not.toMatch(/URI:|spiffe:|CA:TRUE|Certificate Sign/);
  });

  it('passes `openssl verify -purpose sslserver -verify_hostname` and fails as a client certificate or for another name', async () => {
    const { root, inter, signer } = hierarchy();
    const issued = signNames(signer, ['shop.example.com', '*.apps.example.com']);
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'root.pem': root.pem, 'int.pem': inter.pem, 'leaf.pem': issued.pem() });
    const verify = (...extra: string[]) =>
      openssl(['verify', '-x509_strict', '-attime', AT_SECONDS, '-CAfile', f['root.pem'], '-untrusted', f['int.pem'], ...extra, f['leaf.pem']]);

    for (const host of ['shop.example.com', 'a.apps.example.com']) {
      const ok = await verify('-purpose', 'sslserver', '-verify_hostname', host);
      expect(ok.stderr).toBe('');
      expect(ok.stdout.trim()).toBe(`${f['leaf.pem']}: OK`);
      expect(ok.code).toBe(0);
    }
    const client = await verify('-purpose', 'sslclient');
    expect(client.code).not.toBe(0);
    expect(client.stderr + client.stdout).toMatch(/error 26 at 0 depth lookup: unsuitable certificate purpose/);

    const wrongHost = await verify('-purpose', 'sslserver', '-verify_hostname', 'other.example.com');
    expect(wrongHost.code).not.toBe(0);
    expect(wrongHost.stderr + wrongHost.stdout).toMatch(/hostname mismatch/);
    const tooDeep = await verify('-purpose', 'sslserver', '-verify_hostname', 'a.b.apps.example.com');
    expect(tooDeep.code).not.toBe(0);

    // Past notAfter it fails too: the checks above can fail on time as well.
    const late = await openssl(['verify', '-attime', String(Date.parse('2026-03-01T14:00:00Z') / 1000), '-CAfile', f['root.pem'], '-untrusted', f['int.pem'], '-purpose', 'sslserver', f['leaf.pem']]);
    expect(late.code).not.toBe(0);
    expect(late.stderr + late.stdout).toMatch(/certificate has expired/);
  });

  it('is never an X.509-SVID: checkSvidLeaf and verifySvid refuse it for want of a URI SAN', async () => {
    const { inter, signer, bundle } = hierarchy();
    const leaf = parseCertificate(signNames(signer, ['shop.example.com']).der);
    for (const usage of ['server', 'client', 'any'] as const) {
      expect(checkSvidLeaf(leaf, { trustDomain: TD, usage })).toMatchObject({ ok: false, reason: 'no-uri-san' });
    }
    const v = await verifySvid([leaf, inter], bundle, AT);
    expect(v).toMatchObject({ ok: false, reason: 'no-uri-san' });

    // The chain itself is sound, for serverAuth only: the refusal above is about the SVID profile.
    const server = await validatePath({ leaf, intermediates: [inter], roots: [...bundle.roots], at: AT, extendedKeyUsage: 'serverAuth' });
    expect(server.ok).toBe(true);
    const client = await validatePath({ leaf, intermediates: [inter], roots: [...bundle.roots], at: AT, extendedKeyUsage: 'clientAuth' });
    expect(client).toMatchObject({ ok: false, reason: 'extended-key-usage' });

    // An SVID from the same signer passes verifySvid: the refusal can tell the two apart.
    const svid = parseCertificate(signer.sign({ publicKeyDer: PrivateKey.generate().publicKeyDer(), id: SpiffeId.workload(TD, 'shop', 'web'), notBefore: LEAF_NB, notAfter: LEAF_NA }).der);
    expect((await verifySvid([svid, inter], bundle, AT)).ok).toBe(true);
  });

  it('omits the CN for a first name over 64 characters and makes the SAN critical then (64 still fits)', async () => {
    const { root, inter, signer } = hierarchy();
    const long = nameOfLength(65);
    const exact = nameOfLength(64);

    const noCn = parseCertificate(signNames(signer, [long, 'shop.example.com']).der);
    expect(noCn.subject).toBe('');
    expect(noCn.subjectDer.equals(Buffer.from([0x30, 0x00]))).toBe(true);
    expect(noCn.sanCritical).toBe(true);
    expect(noCn.dnsNames).toEqual([long, 'shop.example.com']);
    expect(noCn.extensions.find((e) => e.oid === '2.5.29.17')).toEqual({ oid: '2.5.29.17', critical: true });
    expect(noCn.x509.checkHost(long)).toBe(long);

    const withCn = parseCertificate(signNames(signer, [exact]).der);
    expect(withCn.subject).toBe(`CN=${exact}`);
    expect(withCn.sanCritical).toBe(false);

    // Only the first name decides: a long second name leaves CN = the first.
    const second = parseCertificate(signNames(signer, ['shop.example.com', long]).der);
    expect(second.subject).toBe('CN=shop.example.com');
    expect(second.sanCritical).toBe(false);

    // openssl's strict mode insists on a critical SAN with an empty subject: it passes.
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'root.pem': root.pem, 'int.pem': inter.pem, 'leaf.pem': noCn.pem });
    const r = await openssl(['verify', '-x509_strict', '-purpose', 'sslserver', '-verify_hostname', long, '-attime', AT_SECONDS, '-CAfile', f['root.pem'], '-untrusted', f['int.pem'], f['leaf.pem']]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const text = await opensslOk(['x509', '-in', f['leaf.pem'], '-noout', '-text']);
    expect(text).toMatch(/X509v3 Subject Alternative Name: critical\n/);
  });

  it('takes up to 16 names, gives each certificate its own serial, and keeps the dates as encoded', () => {
    const { signer } = hierarchy();
    const names = Array.from({ length: 16 }, (_, i) => `h${i}.example.com`);
    const a = signNames(signer, names);
    const b = signNames(signer, names);
    expect(parseCertificate(a.der).dnsNames).toEqual(names);
    expect(a.serialHex).not.toBe(b.serialHex);
    const subSecond = signer.signServerName({
      publicKeyDer: PrivateKey.generate().publicKeyDer(),
      dnsNames: ['shop.example.com'],
      notBefore: new Date('2026-03-01T11:59:00.999Z'),
      notAfter: new Date('2026-03-01T13:00:00.500Z'),
    });
    expect(subSecond.notBefore).toEqual(LEAF_NB);
    expect(subSecond.notAfter).toEqual(LEAF_NA);
    expect(parseCertificate(subSecond.der).notAfter).toEqual(LEAF_NA);
  });

  it('refuses no names, more than 16, and names that are not lowercase DNS names', () => {
    const { signer } = hierarchy();
    const sign = (dnsNames: string[]) => () => signNames(signer, dnsNames);
    expect(sign([])).toThrow(/^BUG: signServerName: 1\.\.16 DNS names, got 0$/);
    expect(sign(Array.from({ length: 17 }, (_, i) => `h${i}.example.com`))).toThrow(/^BUG: signServerName: 1\.\.16 DNS names, got 17$/);
    for (const bad of ['Shop.example.com', 'SHOP.EXAMPLE.COM', 'a_b.example.com', 'a b.example.com', 'a.*.example.com', '**.example.com', 'shop.example.com/x', 'héllo.example.com', '']) {
      expect(sign(['ok.example.com', bad]), bad).toThrow(/^BUG: signServerName: .* is not a lowercase DNS name$/);
    }
  });

  it('refuses keys that are not uncompressed P-256 SPKIs', () => {
    const { signer } = hierarchy();
    const good = PrivateKey.generate().publicKeyDer();
    const compressed = Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), Buffer.from([0x02]), good.subarray(27, 59)]);
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ format: 'der', type: 'spki' });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'der', type: 'spki' });
    const ed25519 = generateKeyPairSync('ed25519').publicKey.export({ format: 'der', type: 'spki' });
    for (const bad of [Buffer.alloc(0), good.subarray(0, 90), compressed, p384, rsa, ed25519]) {
      expectWardError(
        () => signer.signServerName({ publicKeyDer: bad, dnsNames: ['shop.example.com'], notBefore: LEAF_NB, notAfter: LEAF_NA }),
        'WARD_PKI_KEY_INVALID',
      );
    }
  });

  it('refuses to let the certificate outlive its issuer, or end before it starts', () => {
    const { signer } = hierarchy();
    const publicKeyDer = PrivateKey.generate().publicKeyDer();
    const dnsNames = ['shop.example.com'];
    expect(() => signer.signServerName({ publicKeyDer, dnsNames, notBefore: LEAF_NB, notAfter: new Date(NA.getTime() + 1000) })).toThrow(/^BUG: leaf notAfter .* is past the issuer's/);
    expect(() => signer.signServerName({ publicKeyDer, dnsNames, notBefore: LEAF_NA, notAfter: LEAF_NB })).toThrow(/^BUG: notAfter/);
    expect(() => signer.signServerName({ publicKeyDer, dnsNames, notBefore: LEAF_NB, notAfter: new Date(Number.NaN) })).toThrow(/BUG: notBefore\/notAfter must be valid Dates/);
    // Exactly at the issuer's notAfter is allowed.
    expect(signer.signServerName({ publicKeyDer, dnsNames, notBefore: LEAF_NB, notAfter: NA }).notAfter).toEqual(NA);
  });
});
