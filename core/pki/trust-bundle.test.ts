import 'reflect-metadata';
import { execFile } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { isWardError } from '../errors.js';
import { createRoot, type Certificate } from './certificate.js';
import { PrivateKey } from './keys.js';
import { AT, DEFAULT_NOT_AFTER, DEFAULT_NOT_BEFORE, mintIntermediate, mintLeaf, mintRoot, type Minted } from './test-certs.js';
import { TrustBundle } from './trust-bundle.js';

const run = promisify(execFile);
const TD = 'cluster.local';

let rootA: Certificate;
let rootB: Minted;

beforeAll(async () => {
  rootA = createRoot({ key: PrivateKey.generate(), trustDomain: TD, commonName: 'Root A', notBefore: DEFAULT_NOT_BEFORE, notAfter: DEFAULT_NOT_AFTER });
  rootB = await mintRoot({ subject: 'O=Ward, CN=Root B' });
});

function expectBundleInvalid(fn: () => unknown, message?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(isWardError(thrown, 'WARD_PKI_BUNDLE_INVALID'), String(thrown)).toBe(true);
  if (message) expect((thrown as Error).message).toMatch(message);
}

/** The JWK of a certificate's key computed by WebCrypto, independently of the bundle code. */
async function webcryptoJwk(cert: Certificate): Promise<webcrypto.JsonWebKey> {
  const spki = cert.publicKey.export({ format: 'der', type: 'spki' });
  const key = await webcrypto.subtle.importKey('spki', spki, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
  return webcrypto.subtle.exportKey('jwk', key);
}

describe('TrustBundle', () => {
  it('holds several roots, deduplicated by fingerprint, and is immutable', () => {
    const b = new TrustBundle(TD, [rootA, rootB.cert, rootA]);
    expect(b.trustDomain).toBe(TD);
    expect(b.roots.map((r) => r.fingerprintSha256)).toEqual([rootA.fingerprintSha256, rootB.cert.fingerprintSha256]);
    expect(Object.isFrozen(b.roots)).toBe(true);
    expect(() => (b.roots as Certificate[]).push(rootA)).toThrow();
  });

  it('refuses a non-CA certificate, an empty bundle and a bad trust domain', async () => {
    const inter = await mintIntermediate(rootB);
    const leaf = await mintLeaf(inter, 'spiffe://cluster.local/ns/a/sa/b');
    expectBundleInvalid(() => new TrustBundle(TD, [leaf.cert]), /not a CA/);
    expectBundleInvalid(() => new TrustBundle(TD, []), /no root/);
    expect(() => new TrustBundle('Cluster.Local', [rootA])).toThrow(expect.objectContaining({ code: 'WARD_ID_INVALID' }));
  });

  it('withRoot and withoutRoot return new bundles; removal is idempotent; the last root stays', () => {
    const a = new TrustBundle(TD, [rootA]);
    const ab = a.withRoot(rootB.cert);
    expect(a.roots).toHaveLength(1);
    expect(ab.roots).toHaveLength(2);
    expect(ab.withRoot(rootB.cert).roots).toHaveLength(2);
    // Fingerprints are matched whatever their case and colons.
    const fp = rootA.fingerprintSha256.replace(/:/g, '').toLowerCase();
    const b = ab.withoutRoot(fp);
    expect(b.roots.map((r) => r.fingerprintSha256)).toEqual([rootB.cert.fingerprintSha256]);
    expect(b.withoutRoot(rootA.fingerprintSha256).roots).toHaveLength(1);
    expect(ab.has(rootA.fingerprintSha256)).toBe(true);
    expect(b.has(rootA.fingerprintSha256)).toBe(false);
    expectBundleInvalid(() => b.withoutRoot(rootB.cert.fingerprintSha256), /no root/);
  });

  it('PEM round trip, read by `openssl verify` for leaves of either root', async () => {
    const interA = await mintIntermediate(rootB, { subject: 'CN=Inter B' });
    const leafB = await mintLeaf(interA, 'spiffe://cluster.local/ns/a/sa/b');
    const bundle = new TrustBundle(TD, [rootA, rootB.cert]);
    const pem = bundle.toPem();
    expect(pem.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(2);
    const back = TrustBundle.fromPem(TD, pem);
    expect(back.roots.map((r) => r.fingerprintSha256)).toEqual(bundle.roots.map((r) => r.fingerprintSha256));

    const dir = mkdtempSync(path.join(tmpdir(), 'ward-bundle-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(path.join(dir, 'bundle.pem'), pem);
    writeFileSync(path.join(dir, 'inter.pem'), interA.cert.pem);
    writeFileSync(path.join(dir, 'leaf.pem'), leafB.cert.pem);
    const attime = String(Math.floor(AT.getTime() / 1000));
    const { stdout } = await run('openssl', ['verify', '-attime', attime, '-CAfile', path.join(dir, 'bundle.pem'), '-untrusted', path.join(dir, 'inter.pem'), path.join(dir, 'leaf.pem')]);
    expect(stdout).toContain(': OK');
  });

  it('fromPem refuses other PEM blocks and garbage', () => {
    const key = PrivateKey.generate();
    expectBundleInvalid(() => TrustBundle.fromPem(TD, rootA.pem + key.exportPem()), /PRIVATE KEY/);
    expectBundleInvalid(() => TrustBundle.fromPem(TD, 'not a pem'));
    expectBundleInvalid(() => TrustBundle.fromPem(TD, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'));
  });

  it('toJwks writes the SPIFFE bundle format', async () => {
    const bundle = new TrustBundle(TD, [rootA, rootB.cert]);
    const doc = bundle.toJwks({ sequence: 7, refreshHintSeconds: 300 });
    expect(doc.spiffe_sequence).toBe(7);
    expect(doc.spiffe_refresh_hint).toBe(300);
    expect(doc.keys).toHaveLength(2);
    for (const [i, root] of [rootA, rootB.cert].entries()) {
      const k = doc.keys[i];
      const expected = await webcryptoJwk(root);
      expect(k).toEqual({ kty: 'EC', crv: 'P-256', x: expected.x, y: expected.y, use: 'x509-svid', x5c: [Buffer.from(root.der).toString('base64')] });
      expect(k).not.toHaveProperty('kid');
    }
    expect(new TrustBundle(TD, [rootA]).toJwks()).not.toHaveProperty('spiffe_sequence');
    expect(() => bundle.toJwks({ sequence: -1 })).toThrow(RangeError);
  });

  it('fromJwks reads back what toJwks wrote, as text or object, and skips non-X.509 entries', () => {
    const bundle = new TrustBundle(TD, [rootA, rootB.cert]);
    const doc = bundle.toJwks({ sequence: 1 });
    const fromText = TrustBundle.fromJwks(TD, JSON.stringify(doc));
    expect(fromText.roots.map((r) => r.fingerprintSha256)).toEqual(bundle.roots.map((r) => r.fingerprintSha256));
    const withJwt = { ...doc, keys: [...doc.keys, { kty: 'EC', crv: 'P-256', x: doc.keys[0].x, y: doc.keys[0].y, use: 'jwt-svid', kid: 'k1' }] };
    expect(TrustBundle.fromJwks(TD, withJwt).roots).toHaveLength(2);
  });

  describe('fromJwks refuses', () => {
    // Test documents are plain JSON, edited member by member.
    const good = (): { keys: Array<Record<string, unknown>>; [k: string]: unknown } =>
      JSON.parse(JSON.stringify(new TrustBundle(TD, [rootA, rootB.cert]).toJwks()));
    const cases: Array<[string, () => unknown, RegExp]> = [
      ['text that is not JSON', () => '{"keys": [', /not JSON/],
      ['a JSON array', () => '[]', /not a JSON object/],
      ['a document without keys', () => ({}), /"keys"/],
      ['an entry without use', () => { const d = good(); delete d.keys[0].use; return d; }, /no "use"/],
      ['an x509-svid entry without x5c', () => { const d = good(); delete d.keys[0].x5c; return d; }, /no x5c/],
      ['an x509-svid entry with an empty x5c', () => { const d = good(); d.keys[0].x5c = []; return d; }, /no x5c/],
      ['an x509-svid entry with two certificates', () => { const d = good(); d.keys[0].x5c = [...(d.keys[0].x5c as string[]), ...(d.keys[1].x5c as string[])]; return d; }, /2 x5c/],
      ['x5c that is not base64', () => { const d = good(); d.keys[0].x5c = ['@@@']; return d; }, /base64/],
      ['x5c that is not a certificate', () => { const d = good(); d.keys[0].x5c = ['AAAA']; return d; }, /not a certificate/],
      ['x and y of another key', () => { const d = good(); d.keys[0].x = d.keys[1].x; d.keys[0].y = d.keys[1].y; return d; }, /\.x does not match/],
      ['a kty that is not the certificate key type', () => { const d = good(); d.keys[0].kty = 'RSA'; return d; }, /kty RSA/],
      ['a kid on an x509-svid entry', () => { const d = good(); d.keys[0].kid = 'abc'; return d; }, /kid/],
      ['a bundle with no x509-svid entry', () => ({ keys: [] }), /no x509-svid/],
      ['a negative spiffe_sequence', () => { const d = good(); d.spiffe_sequence = -3; return d; }, /spiffe_sequence/],
    ];
    it.each(cases)('%s', (_name, input, message) => {
      expectBundleInvalid(() => TrustBundle.fromJwks(TD, input() as string | object), message);
    });

    it('a leaf certificate in x5c', async () => {
      const inter = await mintIntermediate(rootB);
      const leaf = await mintLeaf(inter, 'spiffe://cluster.local/ns/a/sa/b');
      const jwk = await webcryptoJwk(leaf.cert);
      const doc = { keys: [{ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, use: 'x509-svid', x5c: [Buffer.from(leaf.cert.der).toString('base64')] }] };
      expectBundleInvalid(() => TrustBundle.fromJwks(TD, doc), /not a CA/);
    });

    it('a document over the size limit', () => {
      expectBundleInvalid(() => TrustBundle.fromJwks(TD, `{"keys":[],"pad":"${'x'.repeat(1024 * 1024)}"}`), /larger than/);
    });
  });
});
