import 'reflect-metadata';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { webcrypto } from 'node:crypto';
import * as asn1X509 from '@peculiar/asn1-x509';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { SpiffeId } from '../identity/spiffe-id.js';
import { createIntermediate, createRoot, LeafSigner, parseCertificate, type Certificate } from './certificate.js';
import { PrivateKey } from './keys.js';
import {
  AT,
  DEFAULT_NOT_AFTER,
  DEFAULT_NOT_BEFORE,
  keysFromPrivateKey,
  mintIntermediate,
  mintLeaf,
  mintRoot,
  newKeys,
  rawExtension,
  tamper,
  uriNameConstraints,
  type Minted,
  type MintKeys,
} from './test-certs.js';
import { TrustBundle } from './trust-bundle.js';
import { checkSvidLeaf, validatePath, verifySvid, type SvidRejectReason } from './verify.js';

const run = promisify(execFile);
const TD = 'cluster.local';
const WORKLOAD = SpiffeId.workload(TD, 'shop', 'cart');
const WORKLOAD_URI = WORKLOAD.toString();

/** Ward's own hierarchy, built by certificate.ts exactly as the CA builds it. */
let root: Certificate;
let inter: Certificate;
let leaf: Certificate;
/** The same intermediate, usable by the test minter to sign unusual leaves. */
let interM: Minted;
let rootM: Minted;
let bundle: TrustBundle;

beforeAll(async () => {
  const rootKey = PrivateKey.generate();
  const interKey = PrivateKey.generate();
  root = createRoot({ key: rootKey, trustDomain: TD, commonName: 'Ward Test Root', notBefore: DEFAULT_NOT_BEFORE, notAfter: DEFAULT_NOT_AFTER });
  inter = createIntermediate({
    issuer: { cert: root, key: rootKey },
    publicKey: interKey.publicKey,
    trustDomain: TD,
    commonName: 'Ward Test Intermediate',
    notBefore: DEFAULT_NOT_BEFORE,
    notAfter: DEFAULT_NOT_AFTER,
  });
  const signer = new LeafSigner({ cert: inter, key: interKey });
  const leafKey = PrivateKey.generate();
  const issued = signer.sign({ publicKeyDer: leafKey.publicKeyDer(), id: WORKLOAD, notBefore: DEFAULT_NOT_BEFORE, notAfter: new Date('2026-06-02T00:00:00Z') });
  leaf = parseCertificate(issued.pem());
  interM = { cert: inter, keys: await keysFromPrivateKey(interKey) };
  rootM = { cert: root, keys: await keysFromPrivateKey(rootKey) };
  bundle = new TrustBundle(TD, [root]);
});

function fingerprints(certs: Certificate[]): string[] {
  return certs.map((c) => c.fingerprintSha256);
}

function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'ward-verify-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('validatePath (RFC 5280 layer)', () => {
  it('accepts a Ward-issued chain and returns the path leaf..root', async () => {
    const r = await validatePath({ leaf, intermediates: [inter], roots: [root], at: AT });
    expect(r.ok).toBe(true);
    if (r.ok) expect(fingerprints(r.path)).toEqual(fingerprints([leaf, inter, root]));
  });

  it('agrees with `openssl verify` on the same chain', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'root.pem'), root.pem);
    writeFileSync(path.join(dir, 'inter.pem'), inter.pem);
    writeFileSync(path.join(dir, 'leaf.pem'), leaf.pem);
    const attime = String(Math.floor(AT.getTime() / 1000));
    const { stdout } = await run('openssl', ['verify', '-attime', attime, '-CAfile', path.join(dir, 'root.pem'), '-untrusted', path.join(dir, 'inter.pem'), path.join(dir, 'leaf.pem')]);
    expect(stdout).toContain(': OK');
  });

  it('ignores unrelated extra certificates and their order', async () => {
    const stranger = await mintRoot({ subject: 'CN=Stranger' });
    const r = await validatePath({ leaf, intermediates: [stranger.cert, inter, root], roots: [stranger.cert, root], at: AT });
    expect(r.ok).toBe(true);
    if (r.ok) expect(fingerprints(r.path)).toEqual(fingerprints([leaf, inter, root]));
  });

  it('no-path: the intermediate is missing, or the root is not trusted', async () => {
    const other = await mintRoot({ subject: 'CN=Other Root' });
    expect(await validatePath({ leaf, intermediates: [], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'no-path' });
    expect(await validatePath({ leaf, intermediates: [inter], roots: [other.cert], at: AT })).toMatchObject({ ok: false, reason: 'no-path' });
  });

  it('expired and not-yet-valid, checked on every certificate at the given instant', async () => {
    expect(await validatePath({ leaf, intermediates: [inter], roots: [root], at: new Date('2026-06-03T00:00:00Z') })).toMatchObject({ ok: false, reason: 'expired' });
    expect(await validatePath({ leaf, intermediates: [inter], roots: [root], at: new Date('2025-12-31T00:00:00Z') })).toMatchObject({ ok: false, reason: 'not-yet-valid' });
    const oldInter = await mintIntermediate(rootM, { notAfter: new Date('2026-03-01T00:00:00Z') });
    const l = await mintLeaf(oldInter, WORKLOAD_URI, { notAfter: new Date('2026-02-01T00:00:00Z') });
    const r = await validatePath({ leaf: l.cert, intermediates: [oldInter.cert], roots: [root], at: new Date('2026-01-15T00:00:00Z') });
    expect(r.ok).toBe(true);
    const later = await mintLeaf(oldInter, WORKLOAD_URI);
    expect(await validatePath({ leaf: later.cert, intermediates: [oldInter.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'expired' });
  });

  it('bad-signature: names and key identifiers match the intermediate, the key does not', async () => {
    const impostor: Minted = { cert: inter, keys: await newKeys() };
    const forged = await mintLeaf(impostor, WORKLOAD_URI);
    expect(await validatePath({ leaf: forged.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'bad-signature' });
  });

  it('not-a-ca: an issuer without cA=TRUE, or without basicConstraints', async () => {
    const notCa = await mintIntermediate(rootM, { basicConstraints: { ca: false }, keyUsage: { usages: ['digitalSignature'] } });
    const l1 = await mintLeaf(notCa, WORKLOAD_URI);
    expect(await validatePath({ leaf: l1.cert, intermediates: [notCa.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'not-a-ca' });
    const noBc = await mintIntermediate(rootM, { basicConstraints: null, keyUsage: { usages: ['digitalSignature'] } });
    const l2 = await mintLeaf(noBc, WORKLOAD_URI);
    expect(await validatePath({ leaf: l2.cert, intermediates: [noBc.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'not-a-ca' });
  });

  it('unsupported-version: a v1 intermediate is never a CA', async () => {
    const v3 = await mintIntermediate(rootM, { basicConstraints: null, keyUsage: null, authorityKeyId: false });
    const v1 = tamper(v3, rootM, (c) => {
      c.tbsCertificate.version = asn1X509.Version.v1;
      c.tbsCertificate.extensions = undefined;
    });
    const l = await mintLeaf(v1, WORKLOAD_URI);
    expect(await validatePath({ leaf: l.cert, intermediates: [v1.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'unsupported-version' });
  });

  it('ca-key-usage: a CA without keyCertSign, and a leaf asserting keyCertSign', async () => {
    const noSign = await mintIntermediate(rootM, { keyUsage: { usages: ['digitalSignature', 'cRLSign'] } });
    const l = await mintLeaf(noSign, WORKLOAD_URI);
    expect(await validatePath({ leaf: l.cert, intermediates: [noSign.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'ca-key-usage' });
    const signingLeaf = await mintLeaf(interM, WORKLOAD_URI, { keyUsage: { usages: ['digitalSignature', 'keyCertSign'] } });
    expect(await validatePath({ leaf: signingLeaf.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'ca-key-usage' });
  });

  it('path-length: pathLen 0 forbids a CA below', async () => {
    const i1 = await mintIntermediate(rootM, { subject: 'CN=I1', basicConstraints: { ca: true, pathLen: 0 } });
    const i2 = await mintIntermediate(i1, { subject: 'CN=I2' });
    const l = await mintLeaf(i2, WORKLOAD_URI);
    const r = await validatePath({ leaf: l.cert, intermediates: [i1.cert, i2.cert], roots: [root], at: AT });
    expect(r).toMatchObject({ ok: false, reason: 'path-length' });
  });

  it('too-deep: more intermediates than maxDepth', async () => {
    expect(await validatePath({ leaf, intermediates: [inter], roots: [root], at: AT, maxDepth: 0 })).toMatchObject({ ok: false, reason: 'too-deep' });
    expect((await validatePath({ leaf, intermediates: [inter], roots: [root], at: AT, maxDepth: 1 })).ok).toBe(true);
  });

  it('unknown-critical-extension, and an unknown non-critical one is ignored', async () => {
    const crit = await mintLeaf(interM, WORKLOAD_URI, { extensions: [rawExtension('1.3.6.1.4.1.55738.666.1', true)] });
    expect(await validatePath({ leaf: crit.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'unknown-critical-extension' });
    const nonCrit = await mintLeaf(interM, WORKLOAD_URI, { extensions: [rawExtension('1.3.6.1.4.1.55738.666.1', false)] });
    expect((await validatePath({ leaf: nonCrit.cert, intermediates: [inter], roots: [root], at: AT })).ok).toBe(true);
  });

  it('invalid-extension: a leaf without AKI, a CA without SKI, a non-critical basicConstraints on a CA', async () => {
    const noAki = await mintLeaf(interM, WORKLOAD_URI, { authorityKeyId: false });
    expect(await validatePath({ leaf: noAki.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'invalid-extension' });
    const noSki = await mintIntermediate(rootM, { subjectKeyId: false });
    const l = await mintLeaf(noSki, WORKLOAD_URI);
    expect(await validatePath({ leaf: l.cert, intermediates: [noSki.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'invalid-extension' });
    const softBc = await mintIntermediate(rootM, { basicConstraints: { ca: true, critical: false } });
    const l2 = await mintLeaf(softBc, WORKLOAD_URI);
    expect(await validatePath({ leaf: l2.cert, intermediates: [softBc.cert], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'invalid-extension' });
  });

  it('malformed: a zero or negative serial number', async () => {
    // (A duplicated extension or mismatched algorithm fields never get this far: parseCertificate refuses them.)
    const good = await mintLeaf(interM, WORKLOAD_URI);
    const zero = tamper(good, interM, (c) => {
      c.tbsCertificate.serialNumber = new Uint8Array([0]).buffer;
    });
    expect(await validatePath({ leaf: zero.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'malformed' });
    const negative = tamper(good, interM, (c) => {
      c.tbsCertificate.serialNumber = new Uint8Array([0xfb, 0xce, 0x99]).buffer;
    });
    expect(await validatePath({ leaf: negative.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'malformed' });
  });

  it('unsupported-algorithm: a 1024-bit RSA leaf key', async () => {
    const rsa = (await webcrypto.subtle.generateKey(
      { name: 'RSASSA-PKCS1-v1_5', modulusLength: 1024, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
      true,
      ['sign', 'verify'],
    )) as MintKeys;
    const weak = await mintLeaf(interM, WORKLOAD_URI, { keys: rsa });
    expect(await validatePath({ leaf: weak.cert, intermediates: [inter], roots: [root], at: AT })).toMatchObject({ ok: false, reason: 'unsupported-algorithm' });
  });

  it('name-constraints: URI constraints on the trust domain are honoured, on the root too', async () => {
    const ncRoot = await mintRoot({ subject: 'CN=Constrained Root', extensions: [uriNameConstraints({ permitted: [TD] })] });
    const ncInter = await mintIntermediate(ncRoot);
    const inside = await mintLeaf(ncInter, WORKLOAD_URI);
    expect((await validatePath({ leaf: inside.cert, intermediates: [ncInter.cert], roots: [ncRoot.cert], at: AT })).ok).toBe(true);
    const outside = await mintLeaf(ncInter, 'spiffe://evil.example/ns/shop/sa/cart');
    expect(await validatePath({ leaf: outside.cert, intermediates: [ncInter.cert], roots: [ncRoot.cert], at: AT })).toMatchObject({ ok: false, reason: 'name-constraints' });
    // Every name must be inside, not just one of them.
    const mixed = await mintLeaf(ncInter, WORKLOAD_URI, { san: { uris: [WORKLOAD_URI, 'spiffe://evil.example/x'], critical: true } });
    expect(await validatePath({ leaf: mixed.cert, intermediates: [ncInter.cert], roots: [ncRoot.cert], at: AT })).toMatchObject({ ok: false, reason: 'name-constraints' });
    // A constraint that is not critical is itself refused (RFC 5280 4.2.1.10).
    const softRoot = await mintRoot({ subject: 'CN=Soft Root', extensions: [uriNameConstraints({ permitted: [TD] }, false)] });
    const l = await mintLeaf(softRoot, WORKLOAD_URI);
    expect(await validatePath({ leaf: l.cert, intermediates: [], roots: [softRoot.cert], at: AT })).toMatchObject({ ok: false, reason: 'name-constraints' });
  });

  it('extended-key-usage: a clientAuth-only leaf is refused when serverAuth is required', async () => {
    const clientOnly = await mintLeaf(interM, WORKLOAD_URI, { extKeyUsage: { usages: ['clientAuth'] } });
    const r = await validatePath({ leaf: clientOnly.cert, intermediates: [inter], roots: [root], at: AT, extendedKeyUsage: 'serverAuth' });
    expect(r).toMatchObject({ ok: false, reason: 'extended-key-usage' });
    expect((await validatePath({ leaf: clientOnly.cert, intermediates: [inter], roots: [root], at: AT, extendedKeyUsage: 'clientAuth' })).ok).toBe(true);
  });

  it('finishes fast on a pathological mesh of cross-signed intermediates with no way out', async () => {
    // Five CAs with one name and five keys, each certified by every other one, no AKI to guide the
    // search: without bounds the number of candidate paths explodes (5! orderings per start).
    const keys = await Promise.all(Array.from({ length: 5 }, () => newKeys()));
    const selfSigned = await Promise.all(keys.map((k) => mintRoot({ subject: 'CN=Mesh', keys: k, authorityKeyId: false })));
    const cross: Certificate[] = [];
    for (let i = 0; i < keys.length; i++) {
      for (let j = 0; j < keys.length; j++) {
        if (i === j) continue;
        const m = await mintIntermediate(selfSigned[j], { subject: 'CN=Mesh', keys: keys[i], authorityKeyId: false });
        cross.push(m.cert);
      }
    }
    const l = await mintLeaf(selfSigned[0], WORKLOAD_URI, { authorityKeyId: false });
    const started = performance.now();
    const r = await validatePath({ leaf: l.cert, intermediates: cross, roots: [root], at: AT, maxDepth: 255 });
    const elapsed = performance.now() - started;
    expect(r.ok).toBe(false);
    expect(elapsed).toBeLessThan(2000);
  });

  it('refuses an absurd number of intermediates without looking at them', async () => {
    const r = await validatePath({ leaf, intermediates: Array.from({ length: 40 }, () => inter), roots: [root], at: AT });
    expect(r).toMatchObject({ ok: false, reason: 'malformed' });
  });
});

describe('checkSvidLeaf (X.509-SVID leaf rules)', () => {
  it('accepts a Ward-issued leaf for any usage, with secure naming', () => {
    for (const usage of ['server', 'client', 'any'] as const) {
      const r = checkSvidLeaf(leaf, { trustDomain: TD, usage, expectedId: WORKLOAD });
      expect(r.ok, usage).toBe(true);
      if (r.ok) expect(r.id.toString()).toBe(WORKLOAD_URI);
    }
  });

  it('allows DNS SANs beside the one URI SAN, and a leaf without EKU', async () => {
    const dns = await mintLeaf(interM, WORKLOAD_URI, { san: { uris: [WORKLOAD_URI], dns: ['cart.shop.svc'], critical: true } });
    expect(checkSvidLeaf(dns.cert, { trustDomain: TD, usage: 'server' }).ok).toBe(true);
    const noEku = await mintLeaf(interM, WORKLOAD_URI, { extKeyUsage: null });
    expect(checkSvidLeaf(noEku.cert, { usage: 'server' }).ok).toBe(true);
    expect(checkSvidLeaf(noEku.cert, { usage: 'client' }).ok).toBe(true);
  });

  const cases: Array<[SvidRejectReason, () => Promise<{ cert: Certificate; o?: Parameters<typeof checkSvidLeaf>[1] }>]> = [
    ['no-uri-san', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { subject: 'CN=cart', san: { dns: ['cart.shop.svc'] } })).cert })],
    ['multiple-uri-sans', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { san: { uris: [WORKLOAD_URI, 'spiffe://cluster.local/ns/shop/sa/admin'], critical: true } })).cert })],
    ['non-uri-san', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { san: { uris: [WORKLOAD_URI], ips: ['10.0.0.7'], critical: true } })).cert })],
    ['invalid-spiffe-id', async () => ({ cert: (await mintLeaf(interM, 'spiffe://Cluster.Local/ns/shop/sa/cart')).cert })],
    ['leaf-is-ca', async () => ({ cert: (await mintIntermediate(interM, { san: { uris: [WORKLOAD_URI] } })).cert })],
    ['missing-key-usage', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { keyUsage: null })).cert })],
    ['key-usage-not-critical', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { keyUsage: { usages: ['digitalSignature'], critical: false } })).cert })],
    ['leaf-key-cert-sign', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { keyUsage: { usages: ['digitalSignature', 'keyCertSign'] } })).cert })],
    ['leaf-crl-sign', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { keyUsage: { usages: ['digitalSignature', 'cRLSign'] } })).cert })],
    ['missing-digital-signature', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { keyUsage: { usages: ['keyAgreement'] } })).cert })],
    ['missing-server-auth', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { extKeyUsage: { usages: ['clientAuth'] } })).cert, o: { usage: 'server' } })],
    ['missing-client-auth', async () => ({ cert: (await mintLeaf(interM, WORKLOAD_URI, { extKeyUsage: { usages: ['serverAuth'] } })).cert, o: { usage: 'client' } })],
    ['foreign-trust-domain', async () => ({ cert: (await mintLeaf(interM, 'spiffe://other.example/ns/shop/sa/cart')).cert, o: { trustDomain: TD } })],
    ['unexpected-identity', async () => ({ cert: leaf, o: { expectedId: SpiffeId.workload(TD, 'shop', 'payments') } })],
  ];

  it.each(cases)('refuses with %s', async (reason, build) => {
    const { cert, o } = await build();
    const r = checkSvidLeaf(cert, o);
    expect(r).toMatchObject({ ok: false, reason });
    if (!r.ok) expect(r.detail.length).toBeGreaterThan(10);
  });

  it('invalid-spiffe-id also covers a trust-domain-only ID on a leaf', async () => {
    const tdOnly = await mintLeaf(interM, 'spiffe://cluster.local');
    expect(checkSvidLeaf(tdOnly.cert)).toMatchObject({ ok: false, reason: 'invalid-spiffe-id' });
  });
});

describe('verifySvid (both layers against a bundle)', () => {
  it('accepts a Ward chain and returns the identity and path', async () => {
    const r = await verifySvid([leaf, inter], bundle, AT, { usage: 'server', expectedId: WORKLOAD });
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.id.toString()).toBe(WORKLOAD_URI);
      expect(fingerprints(r.path)).toEqual(fingerprints([leaf, inter, root]));
    }
  });

  it('leaf-is-root: the root itself presented as a leaf', async () => {
    expect(await verifySvid([root], bundle, AT)).toMatchObject({ ok: false, reason: 'leaf-is-root' });
  });

  it('leaf-is-ca: a CA certificate with a workload ID that chains to the bundle', async () => {
    const ca = await mintIntermediate(interM, { subject: 'CN=Sneaky', san: { uris: [WORKLOAD_URI] } });
    expect(await verifySvid([ca.cert, inter], bundle, AT)).toMatchObject({ ok: false, reason: 'leaf-is-ca' });
  });

  it("foreign-trust-domain: the bundle's trust domain must be the SVID's", async () => {
    const otherTd = new TrustBundle('other.example', [root]);
    expect(await verifySvid([leaf, inter], otherTd, AT)).toMatchObject({ ok: false, reason: 'foreign-trust-domain' });
  });

  it('unexpected-identity: secure naming', async () => {
    const r = await verifySvid([leaf, inter], bundle, AT, { expectedId: SpiffeId.node(TD, 'node-1') });
    expect(r).toMatchObject({ ok: false, reason: 'unexpected-identity' });
  });

  it('path refusals come first (expired), and an empty chain is malformed', async () => {
    expect(await verifySvid([leaf, inter], bundle, new Date('2027-06-01T00:00:00Z'))).toMatchObject({ ok: false, reason: 'expired' });
    expect(await verifySvid([], bundle, AT)).toMatchObject({ ok: false, reason: 'malformed' });
  });

  it('trusts either root of a bundle in the middle of a root rotation', async () => {
    const newRoot = await mintRoot({ subject: 'O=Ward, CN=New Root' });
    const newInter = await mintIntermediate(newRoot);
    const newLeaf = await mintLeaf(newInter, WORKLOAD_URI);
    const rotating = bundle.withRoot(newRoot.cert);
    expect((await verifySvid([leaf, inter], rotating, AT)).ok).toBe(true);
    expect((await verifySvid([newLeaf.cert, newInter.cert], rotating, AT)).ok).toBe(true);
    expect(await verifySvid([newLeaf.cert, newInter.cert], bundle, AT)).toMatchObject({ ok: false, reason: 'no-path' });
  });
});
