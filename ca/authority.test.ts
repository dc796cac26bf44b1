import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { appendFile, chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { isWardError, type WardErrorCode } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import { createLogger } from '../core/logger.js';
import { createRegistry, type Registry } from '../core/metrics.js';
import { createIntermediate, createRoot, LeafSigner, parseCertificate, parseCertificates, type Certificate } from '../core/pki/certificate.js';
import { createCsr } from '../core/pki/csr.js';
import { PrivateKey } from '../core/pki/keys.js';
import { verifySvid } from '../core/pki/verify.js';
import { CertificateAuthority, type InitOptions, type IssuedEvent, type OpenOptions } from './authority.js';
import { errorOf } from '../test/helpers/errors.js';

const run = promisify(execFile);
const TD = 'example.org';
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const CART = SpiffeId.workload(TD, 'shop', 'cart');
const NODE = 'spiffe://example.org/ward/node/n1';

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-ca-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function capture(level = 'debug') {
  const lines: string[] = [];
  const logger = createLogger({ level, destination: { write: (s: string) => void lines.push(s) } });
  return { logger, lines, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

interface Env {
  dir: string;
  clock: ManualClock;
  registry: Registry;
  logs: ReturnType<typeof capture>;
}

async function env(clock = new ManualClock(Date.UTC(2026, 0, 1))): Promise<Env> {
  return { dir: join(await tempDir(), 'state'), clock, registry: createRegistry(), logs: capture() };
}

async function open(e: Env, o: Partial<OpenOptions> = {}): Promise<CertificateAuthority> {
  const ca = await CertificateAuthority.open({ stateDir: e.dir, clock: e.clock, logger: e.logs.logger, registry: e.registry, ...o });
  onTestFinished(() => ca.close());
  return ca;
}

async function newCa(o: Partial<InitOptions> = {}, e?: Env): Promise<{ ca: CertificateAuthority; e: Env }> {
  const en = e ?? (await env());
  await CertificateAuthority.init({ stateDir: en.dir, trustDomain: TD, clock: en.clock, ...o });
  return { ca: await open(en), e: en };
}

function csrFor(uri?: string): string {
  return createCsr(PrivateKey.generate(), uri === undefined ? {} : { uri });
}

async function verifyLeaf(ca: CertificateAuthority, chainPem: string, at: number) {
  return verifySvid(parseCertificates(chainPem), ca.bundle(), new Date(at));
}


async function openssl(args: string[], cwd: string): Promise<string> {
  const { stdout } = await run('openssl', args, { cwd });
  return stdout;
}

/** An OpenSSL-made self-signed certificate with the given extensions, for shapes Ward never makes. */
async function opensslSelfSigned(dir: string, o: { keyPem: string; ext: string[] }): Promise<string> {
  await writeFile(join(dir, 'k.pem'), o.keyPem, { mode: 0o600 });
  await writeFile(join(dir, 'x.cnf'), ['[req]', 'distinguished_name=dn', '[dn]', '[ext]', ...o.ext, ''].join('\n'));
  await openssl(['req', '-x509', '-new', '-key', 'k.pem', '-subj', '/O=Test/CN=odd root', '-days', '365', '-config', 'x.cnf', '-extensions', 'ext', '-out', 'c.pem'], dir);
  return readFile(join(dir, 'c.pem'), 'utf8');
}

describe('init', () => {
  it('generates a 5y root and a 1y intermediate in a 0700 state dir with 0600 keys', async () => {
    const e = await env();
    const r = await CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock });
    expect(r.mode).toBe('generated');
    const now = e.clock.now();
    expect(r.root.notAfter.getTime() - now).toBe(5 * 365 * DAY);
    expect(r.issuer.notAfter.getTime() - now).toBe(365 * DAY);
    expect(r.root.notBefore.getTime()).toBeLessThan(now);
    expect(parseCertificates(r.bundlePem).map((c) => c.fingerprintSha256)).toEqual([r.root.fingerprint]);
    expect((await stat(e.dir)).mode & 0o777).toBe(0o700);
    const keys = await readdir(join(e.dir, 'keys'));
    expect(keys).toHaveLength(2);
    for (const k of keys) expect((await stat(join(e.dir, 'keys', k))).mode & 0o777).toBe(0o600);
    expect((await readdir(join(e.dir, 'roots'))).length).toBe(1);
    expect((await readdir(join(e.dir, 'issuers'))).length).toBe(1);
    const state = JSON.parse(await readFile(join(e.dir, 'ca.json'), 'utf8')) as { trustDomain: string };
    expect(state.trustDomain).toBe(TD);
    const ca = await open(e);
    expect(ca.mode).toBe('generated');
    const issuer = ca.activeIssuer();
    expect(issuer.cert.isCa).toBe(true);
    expect(issuer.cert.keyUsage).toContain('keyCertSign');
    expect(issuer.cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('refuses to initialize over an existing CA', async () => {
    const { e } = await newCa();
    const err = await errorOf(CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock }));
    expect(err.code).toBe('WARD_CA_ALREADY_INITIALIZED');
  });

  it('open() of an empty directory says to run init', async () => {
    const e = await env();
    const err = await errorOf(CertificateAuthority.open({ stateDir: e.dir, clock: e.clock, logger: e.logs.logger, registry: e.registry }));
    expect(err.code).toBe('WARD_CA_NOT_INITIALIZED');
  });

  it('reopening after a restart keeps the same root and issuer', async () => {
    const { ca, e } = await newCa();
    const root = ca.bundle().roots[0].fingerprintSha256;
    const issuer = ca.activeIssuer().cert.fingerprintSha256;
    const before = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await ca.close();
    const again = await open({ ...e, registry: createRegistry() });
    expect(again.bundle().roots.map((c) => c.fingerprintSha256)).toEqual([root]);
    expect(again.activeIssuer().cert.fingerprintSha256).toBe(issuer);
    // A leaf from before the restart still verifies against the reopened bundle.
    expect((await verifyLeaf(again, before.chainPem, e.clock.now())).ok).toBe(true);
  });

  it('validates the CA lifetimes', async () => {
    const e = await env();
    const err = await errorOf(CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock, intermediateTtlMs: HOUR }));
    expect(err.code).toBe('WARD_CONFIG_INVALID');
  });
});

describe('init with the operator\'s own material', () => {
  function rootMaterial(clock: ManualClock, o: { notBefore?: number; notAfter?: number } = {}) {
    const key = PrivateKey.generate();
    const cert = createRoot({
      key,
      trustDomain: TD,
      commonName: 'Corp Root',
      notBefore: new Date(o.notBefore ?? clock.now() - DAY),
      notAfter: new Date(o.notAfter ?? clock.now() + 3650 * DAY),
    });
    return { cert, key };
  }

  function intermediateUnder(root: { cert: Certificate; key: PrivateKey }, clock: ManualClock, o: { notBefore?: number; notAfter?: number; name?: string } = {}) {
    const key = PrivateKey.generate();
    const cert = createIntermediate({
      issuer: root,
      publicKey: key.publicKey,
      trustDomain: TD,
      commonName: o.name ?? 'Corp Issuing CA',
      notBefore: new Date(o.notBefore ?? clock.now() - DAY),
      notAfter: new Date(o.notAfter ?? clock.now() + 365 * DAY),
    });
    return { cert, key };
  }

  it('brings a root: Ward makes the intermediate under it', async () => {
    const e = await env();
    const root = rootMaterial(e.clock);
    const r = await CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock, rootCert: root.cert.pem, rootKey: root.key.exportPem() });
    expect(r.mode).toBe('byo-root');
    expect(r.root.fingerprint).toBe(root.cert.fingerprintSha256);
    const ca = await open(e);
    expect(ca.mode).toBe('byo-root');
    const leaf = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    const v = await verifyLeaf(ca, leaf.chainPem, e.clock.now());
    expect(v.ok && v.path[v.path.length - 1].fingerprintSha256).toBe(root.cert.fingerprintSha256);
  });

  it('brings an intermediate with its chain: Ward never holds the root key', async () => {
    const e = await env();
    const root = rootMaterial(e.clock);
    const int = intermediateUnder(root, e.clock);
    const r = await CertificateAuthority.init({
      stateDir: e.dir,
      trustDomain: TD,
      clock: e.clock,
      intermediateCert: int.cert.pem,
      intermediateKey: int.key.exportPem(),
      // A chain file that starts with the intermediate itself is accepted too.
      chain: int.cert.pem + root.cert.pem,
    });
    expect(r.mode).toBe('byo-intermediate');
    expect(r.issuer.fingerprint).toBe(int.cert.fingerprintSha256);
    // Only the intermediate's key is stored.
    expect(await readdir(join(e.dir, 'keys'))).toEqual([`${int.cert.fingerprintSha256.replace(/:/g, '').toLowerCase()}.key`]);
    const ca = await open(e);
    expect(ca.mode).toBe('byo-intermediate');
    const leaf = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    expect(parseCertificates(leaf.chainPem).map((c) => c.fingerprintSha256).slice(1)).toEqual([int.cert.fingerprintSha256]);
    expect((await verifyLeaf(ca, leaf.chainPem, e.clock.now())).ok).toBe(true);
    // Ward cannot make intermediates or replace the operator's root by itself.
    const prep = await errorOf(ca.rotation.prepare('intermediate'));
    expect(prep.code).toBe('WARD_CA_ROTATION_INVALID');
    expect(prep.message).toMatch(/does not hold the root key/);
    const prepRoot = await errorOf(ca.rotation.prepare('root'));
    expect(prepRoot.code).toBe('WARD_CA_ROTATION_INVALID');
    expect(prepRoot.message).toMatch(/root rotation is your job/);
  });

  it('accepts a longer chain (intermediate under an intermediate) and presents it', async () => {
    const e = await env();
    const root = rootMaterial(e.clock);
    const policyKey = PrivateKey.generate();
    const policyCa = createIntermediate({
      issuer: root,
      publicKey: policyKey.publicKey,
      trustDomain: TD,
      commonName: 'Corp Policy CA',
      notBefore: new Date(e.clock.now() - DAY),
      notAfter: new Date(e.clock.now() + 700 * DAY),
      pathLen: 1,
    });
    const issuing = intermediateUnder({ cert: policyCa, key: policyKey }, e.clock);
    await CertificateAuthority.init({
      stateDir: e.dir,
      trustDomain: TD,
      clock: e.clock,
      intermediateCert: issuing.cert.pem,
      intermediateKey: issuing.key.exportPem(),
      chain: policyCa.pem + root.cert.pem,
    });
    const ca = await open(e);
    const leaf = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    expect(parseCertificates(leaf.chainPem)).toHaveLength(3);
    expect((await verifyLeaf(ca, leaf.chainPem, e.clock.now())).ok).toBe(true);
  });

  it.each<[string, WardErrorCode, RegExp | undefined, (x: { e: Env; dir: string }) => Promise<Partial<InitOptions>>]>([
    ['a root key that does not match', 'WARD_PKI_KEY_MISMATCH', /rootKey/, async ({ e }) => ({ rootCert: rootMaterial(e.clock).cert.pem, rootKey: PrivateKey.generate().exportPem() })],
    ['an intermediate key that does not match', 'WARD_PKI_KEY_MISMATCH', /intermediateKey/, async ({ e }) => {
      const root = rootMaterial(e.clock);
      const int = intermediateUnder(root, e.clock);
      return { intermediateCert: int.cert.pem, intermediateKey: PrivateKey.generate().exportPem(), chain: root.cert.pem };
    }],
    ['a P-384 root', 'WARD_PKI_KEY_INVALID', undefined, async ({ dir }) => {
      await openssl(['ecparam', '-name', 'secp384r1', '-genkey', '-noout', '-out', 'p384.pem'], dir);
      const keyPem = await readFile(join(dir, 'p384.pem'), 'utf8');
      const cert = await opensslSelfSigned(dir, { keyPem, ext: ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign'] });
      return { rootCert: cert, rootKey: keyPem };
    }],
    ['a root that is not a CA', 'WARD_PKI_CHAIN_INVALID', /not a CA/, async ({ dir }) => {
      const key = PrivateKey.generate();
      const cert = await opensslSelfSigned(dir, { keyPem: key.exportPem(), ext: ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature'] });
      return { rootCert: cert, rootKey: key.exportPem() };
    }],
    ['a CA without keyCertSign', 'WARD_PKI_CHAIN_INVALID', /keyCertSign/, async ({ dir }) => {
      const key = PrivateKey.generate();
      const cert = await opensslSelfSigned(dir, { keyPem: key.exportPem(), ext: ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,digitalSignature,cRLSign'] });
      return { rootCert: cert, rootKey: key.exportPem() };
    }],
    ['a root with pathLen 0 (no room for the intermediate)', 'WARD_PKI_CHAIN_INVALID', /pathLen/, async ({ dir }) => {
      const key = PrivateKey.generate();
      const cert = await opensslSelfSigned(dir, { keyPem: key.exportPem(), ext: ['basicConstraints=critical,CA:TRUE,pathlen:0', 'keyUsage=critical,keyCertSign,cRLSign'] });
      return { rootCert: cert, rootKey: key.exportPem() };
    }],
    ['an expired root', 'WARD_CA_ISSUER_NOT_VALID', /expired/, async ({ e }) => {
      const root = rootMaterial(e.clock, { notBefore: e.clock.now() - 400 * DAY, notAfter: e.clock.now() - DAY });
      return { rootCert: root.cert.pem, rootKey: root.key.exportPem() };
    }],
    ['an expired intermediate', 'WARD_CA_ISSUER_NOT_VALID', /expired/, async ({ e }) => {
      const root = rootMaterial(e.clock, { notBefore: e.clock.now() - 400 * DAY });
      const int = intermediateUnder(root, e.clock, { notBefore: e.clock.now() - 300 * DAY, notAfter: e.clock.now() - 1000 });
      return { intermediateCert: int.cert.pem, intermediateKey: int.key.exportPem(), chain: root.cert.pem };
    }],
    ['a not-yet-valid intermediate', 'WARD_CA_ISSUER_NOT_VALID', /not valid until/, async ({ e }) => {
      const root = rootMaterial(e.clock);
      const int = intermediateUnder(root, e.clock, { notBefore: e.clock.now() + DAY });
      return { intermediateCert: int.cert.pem, intermediateKey: int.key.exportPem(), chain: root.cert.pem };
    }],
    ['a chain from another root', 'WARD_PKI_CHAIN_INVALID', /does not verify/, async ({ e }) => {
      const root = rootMaterial(e.clock);
      const int = intermediateUnder(root, e.clock);
      const impostor = createRoot({ key: PrivateKey.generate(), trustDomain: TD, commonName: 'Corp Root', notBefore: root.cert.notBefore, notAfter: root.cert.notAfter });
      return { intermediateCert: int.cert.pem, intermediateKey: int.key.exportPem(), chain: impostor.pem };
    }],
    ['a chain without its root', 'WARD_PKI_CHAIN_INVALID', /must end with the root/, async ({ e }) => {
      const root = rootMaterial(e.clock);
      const mid = intermediateUnder(root, e.clock, { name: 'Corp Mid' });
      const int = intermediateUnder(mid, e.clock);
      return { intermediateCert: int.cert.pem, intermediateKey: int.key.exportPem(), chain: mid.cert.pem };
    }],
    ['an "intermediate" that is a leaf', 'WARD_PKI_CHAIN_INVALID', /not a CA/, async ({ e }) => {
      const root = rootMaterial(e.clock);
      const int = intermediateUnder(root, e.clock);
      const key = PrivateKey.generate();
      const leaf = new LeafSigner(int).sign({ publicKeyDer: key.publicKeyDer(), id: CART, notBefore: new Date(e.clock.now() - HOUR), notAfter: new Date(e.clock.now() + HOUR) });
      return { intermediateCert: leaf.pem(), intermediateKey: key.exportPem(), chain: int.cert.pem + root.cert.pem };
    }],
    ['an intermediate whose parent allows no further CA (caught by the self-test)', 'WARD_PKI_CHAIN_INVALID', /would not verify/, async ({ dir }) => {
      const rootKey = PrivateKey.generate();
      const rootPem = await opensslSelfSigned(dir, { keyPem: rootKey.exportPem(), ext: ['basicConstraints=critical,CA:TRUE,pathlen:0', 'keyUsage=critical,keyCertSign,cRLSign', 'subjectKeyIdentifier=hash'] });
      const root = { cert: parseCertificate(rootPem), key: rootKey };
      const clock = new ManualClock(Date.now());
      const int = intermediateUnder(root, clock, { notBefore: Date.now() - HOUR, notAfter: Date.now() + 300 * DAY });
      return { intermediateCert: int.cert.pem, intermediateKey: int.key.exportPem(), chain: root.cert.pem };
    }],
    ['a root and an intermediate at once', 'WARD_CONFIG_INVALID', undefined, async ({ e }) => {
      const root = rootMaterial(e.clock);
      return { rootCert: root.cert.pem, rootKey: root.key.exportPem(), intermediateCert: root.cert.pem };
    }],
    ['an intermediate without its chain', 'WARD_CONFIG_INVALID', /chain/, async ({ e }) => {
      const int = intermediateUnder(rootMaterial(e.clock), e.clock);
      return { intermediateCert: int.cert.pem, intermediateKey: int.key.exportPem() };
    }],
  ])('refuses %s with %s', async (_what, code, message, make) => {
    // OpenSSL stamps real time on what it makes, so these cases run at the real time.
    const e = await env(new ManualClock(Date.now()));
    const work = await tempDir();
    const o = await make({ e, dir: work });
    // OpenSSL stamped its certificates while make() ran: bring the clock up to that moment, or a
    // second boundary crossed meanwhile makes the issuer "not valid yet" (a flake seen in CI).
    e.clock.set(Math.max(e.clock.now(), Date.now()));
    const err = await errorOf(CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock, ...o }));
    expect(err.code).toBe(code);
    if (message) expect(err.message).toMatch(message);
    // Nothing was committed: a corrected init can follow.
    await expect(stat(join(e.dir, 'ca.json'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('permissions', () => {
  it('open() refuses a key file readable by group/other and says how to fix it', async () => {
    const { ca, e } = await newCa();
    await ca.close();
    const [key] = await readdir(join(e.dir, 'keys'));
    const p = join(e.dir, 'keys', key);
    await chmod(p, 0o644);
    const err = await errorOf(CertificateAuthority.open({ stateDir: e.dir, clock: e.clock, logger: e.logs.logger, registry: e.registry }));
    expect(err.code).toBe('WARD_CA_STATE_PERMISSIONS');
    expect(err.message).toContain(`chmod 600 ${p}`);
    await chmod(p, 0o600);
    await open(e);
  });
});

describe('issuance policy', () => {
  it('issues an X.509-SVID for the authorized identity, with no SAN or the exact SAN in the CSR', async () => {
    const { ca, e } = await newCa();
    for (const csr of [csrFor(), csrFor(CART.toString())]) {
      const r = await ca.issue({ csr, identity: CART, requester: NODE });
      expect(r.id.toString()).toBe(CART.toString());
      const leaf = parseCertificate(r.certPem);
      expect(leaf.uris).toEqual([CART.toString()]);
      expect(leaf.isCa).toBe(false);
      expect(leaf.serialHex).toBe(r.serialHex);
      const v = await verifyLeaf(ca, r.chainPem, e.clock.now());
      expect(v.ok).toBe(true);
    }
  });

  it('puts the authorized identity in the certificate, never what a CSR subject says', async () => {
    const { ca } = await newCa();
    const csr = createCsr(PrivateKey.generate(), { commonName: 'spiffe://example.org/ns/kube-system/sa/admin' });
    const r = await ca.issue({ csr, identity: CART, requester: NODE });
    const leaf = parseCertificate(r.certPem);
    expect(leaf.subject).toBe('');
    expect(leaf.uris).toEqual([CART.toString()]);
  });

  it('interoperates: openssl verifies the chain against the bundle', async () => {
    const { ca, e } = await newCa();
    const r = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    const dir = await tempDir();
    await writeFile(join(dir, 'bundle.pem'), ca.bundle().toPem());
    await writeFile(join(dir, 'leaf.pem'), r.certPem);
    await writeFile(join(dir, 'chain.pem'), r.chainPem);
    const out = await openssl(['verify', '-attime', String(Math.floor(e.clock.now() / 1000)), '-CAfile', 'bundle.pem', '-untrusted', 'chain.pem', '-purpose', 'sslclient', 'leaf.pem'], dir);
    expect(out).toContain('leaf.pem: OK');
  });

  async function opensslCsr(dir: string, ext: string[]): Promise<string> {
    const key = PrivateKey.generate();
    await writeFile(join(dir, 'k.pem'), key.exportPem(), { mode: 0o600 });
    const args = ['req', '-new', '-key', 'k.pem', '-subj', '/CN=w'];
    for (const x of ext) args.push('-addext', x);
    return openssl(args, dir);
  }

  it.each<[string, string[] | (() => string) | string, WardErrorCode, RegExp]>([
    ['another identity', () => csrFor('spiffe://example.org/ns/shop/sa/admin'), 'WARD_PKI_CSR_UNAUTHORIZED', /authorized only for spiffe:\/\/example.org\/ns\/shop\/sa\/cart/],
    ['two URIs', ['subjectAltName=URI:spiffe://example.org/ns/shop/sa/cart,URI:spiffe://example.org/ns/shop/sa/admin'], 'WARD_PKI_CSR_UNAUTHORIZED', /2 URI SANs/],
    ['a DNS name', ['subjectAltName=URI:spiffe://example.org/ns/shop/sa/cart,DNS:cart.example.org'], 'WARD_PKI_CSR_UNAUTHORIZED', /DNS/],
    ['an IP address', ['subjectAltName=IP:10.1.2.3'], 'WARD_PKI_CSR_UNAUTHORIZED', /IP/],
    ['an email', ['subjectAltName=email:a@example.org'], 'WARD_PKI_CSR_UNAUTHORIZED', /email/],
    ['CA:TRUE', ['basicConstraints=critical,CA:TRUE'], 'WARD_PKI_CSR_UNAUTHORIZED', /CA certificate/],
    ['keyCertSign', ['keyUsage=critical,digitalSignature,keyCertSign'], 'WARD_PKI_CSR_UNAUTHORIZED', /keyCertSign/],
    ['garbage', 'not a csr', 'WARD_PKI_PEM_INVALID', /./],
  ])('refuses a CSR asking for %s, audits and counts it', async (_what, make, code, message) => {
    const { ca, e } = await newCa();
    const dir = await tempDir();
    const csr = typeof make === 'string' ? make : typeof make === 'function' ? make() : await opensslCsr(dir, make);
    const err = await errorOf(ca.issue({ csr, identity: CART, requester: NODE }));
    if (code === 'WARD_PKI_PEM_INVALID') expect(['WARD_PKI_PEM_INVALID', 'WARD_PKI_CSR_INVALID']).toContain(err.code);
    else expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    const [rec] = await ca.audit.query({ limit: 1 });
    expect(rec).toMatchObject({ decision: 'refused', code: err.code, identity: CART.toString(), requester: NODE });
    expect(ca.counts()).toMatchObject({ issued: 0, refused: 1, certificates: 0 });
    expect(await e.registry.getSingleMetricAsString('ward_ca_certificates_refused_total')).toContain(`ward_ca_certificates_refused_total{reason="${err.code}"} 1`);
  });

  it('refuses an identity outside the trust domain, or the trust domain itself', async () => {
    const { ca } = await newCa();
    for (const id of [SpiffeId.workload('other.org', 'shop', 'cart'), SpiffeId.parse('spiffe://example.org')]) {
      const err = await errorOf(ca.issue({ csr: csrFor(), identity: id, requester: NODE }));
      expect(err.code).toBe('WARD_CA_FORBIDDEN');
    }
  });

  it('refuses a CSR whose signature does not verify (no proof of possession)', async () => {
    const { ca } = await newCa();
    const pem = csrFor(CART.toString());
    const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    der[der.length - 5] ^= 0x01; // inside the signature
    const err = await errorOf(ca.issue({ csr: der, identity: CART, requester: NODE }));
    expect(err.code).toBe('WARD_PKI_CSR_INVALID');
  });
});

describe('lifetime', () => {
  it('defaults to 1h with NotBefore backdated 30s', async () => {
    const { ca, e } = await newCa();
    const now = e.clock.now();
    const r = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    expect(r.notBefore.getTime()).toBe(now - 30_000);
    expect(r.notAfter.getTime()).toBe(now + HOUR);
    const leaf = parseCertificate(r.certPem);
    expect(leaf.notBefore.getTime()).toBe(r.notBefore.getTime());
    expect(leaf.notAfter.getTime()).toBe(r.notAfter.getTime());
  });

  it('honours 5m..24h and refuses outside with WARD_CA_LIFETIME_INVALID', async () => {
    const { ca, e } = await newCa();
    const now = e.clock.now();
    expect((await ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs: 5 * 60_000 })).notAfter.getTime()).toBe(now + 5 * 60_000);
    expect((await ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs: DAY })).notAfter.getTime()).toBe(now + DAY);
    for (const ttlMs of [4 * 60_000, DAY + 1000]) {
      expect((await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs }))).code).toBe('WARD_CA_LIFETIME_INVALID');
    }
  });

  it('uses the configured default lifetime', async () => {
    const { ca: first, e } = await newCa();
    await first.close(); // one writer per state directory
    const ca = await open({ ...e, registry: createRegistry() }, { defaultTtlMs: 10 * 60_000 });
    expect((await ca.issue({ csr: csrFor(), identity: CART, requester: NODE })).notAfter.getTime()).toBe(e.clock.now() + 10 * 60_000);
  });

  it('clamps NotAfter to the issuer, and refuses once the issuer has expired or before it is valid', async () => {
    const { ca, e } = await newCa();
    const issuerEnd = ca.activeIssuer().cert.notAfter.getTime();
    e.clock.set(issuerEnd - 10 * 60_000);
    const r = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs: 2 * HOUR });
    expect(r.notAfter.getTime()).toBe(issuerEnd);
    expect((await verifyLeaf(ca, r.chainPem, e.clock.now())).ok).toBe(true);
    e.clock.set(issuerEnd + 1000);
    const late = await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE }));
    expect(late.code).toBe('WARD_CA_ISSUER_NOT_VALID');
    e.clock.set(ca.activeIssuer().cert.notBefore.getTime() - 60_000);
    const early = await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE }));
    expect(early.code).toBe('WARD_CA_ISSUER_NOT_VALID');
  });
});

describe('inventory and audit', () => {
  it('records every certificate and decision durably, queryable after a restart', async () => {
    const { ca, e } = await newCa();
    const other = SpiffeId.workload(TD, 'shop', 'db');
    const issued = [];
    for (let i = 0; i < 3; i++) issued.push(await ca.issue({ csr: csrFor(), identity: CART, requester: NODE }));
    issued.push(await ca.issue({ csr: csrFor(), identity: other, requester: 'spiffe://example.org/ward/node/n2' }));
    await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs: 1 }));
    const fp = ca.activeIssuer().cert.fingerprintSha256;
    await ca.close();

    const again = await open({ ...e, registry: createRegistry() });
    expect(again.counts()).toEqual({ issued: 4, refused: 1, refusedByCode: { WARD_CA_LIFETIME_INVALID: 1 }, certificates: 4 });
    expect(again.inventory.counts()).toEqual({ total: 4, byIssuer: { [fp]: 4 } });
    const latest = await again.inventory.query({ limit: 2 });
    expect(latest.map((r) => r.serial)).toEqual([issued[3].serialHex, issued[2].serialHex]);
    expect(latest[0]).toEqual({
      serial: issued[3].serialHex,
      identity: other.toString(),
      requester: 'spiffe://example.org/ward/node/n2',
      notBefore: issued[3].notBefore.toISOString(),
      notAfter: issued[3].notAfter.toISOString(),
      issuedAt: new Date(e.clock.now()).toISOString(),
      issuer: fp,
    });
    expect((await again.inventory.query({ identity: CART })).map((r) => r.serial)).toEqual(issued.slice(0, 3).map((r) => r.serialHex).reverse());
    expect((await again.inventory.query({ requester: NODE })).length).toBe(3);
    expect((await again.audit.query({ decision: 'refused' }))[0]).toMatchObject({ code: 'WARD_CA_LIFETIME_INVALID', identity: CART.toString(), requester: NODE });
    expect((await again.audit.query({ decision: 'issued' })).length).toBe(4);
  });

  it('keeps a bounded window in memory and answers older queries from the file', async () => {
    const { ca: first, e } = await newCa();
    await first.close(); // one writer per state directory
    const ca = await open({ ...e, registry: createRegistry() }, { recentWindow: 3 });
    const serials: string[] = [];
    for (let i = 0; i < 8; i++) {
      const id = SpiffeId.workload(TD, 'ns', `sa${i % 2}`);
      serials.push((await ca.issue({ csr: csrFor(), identity: id, requester: NODE })).serialHex);
    }
    const sa0 = await ca.inventory.query({ identity: 'spiffe://example.org/ns/ns/sa/sa0' });
    expect(sa0.map((r) => r.serial)).toEqual([serials[6], serials[4], serials[2], serials[0]]);
    expect((await ca.inventory.query({ limit: 8 })).map((r) => r.serial)).toEqual([...serials].reverse());
  });

  it('tolerates and reports a record torn by a crash mid-append', async () => {
    const { ca, e } = await newCa();
    const first = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await ca.close();
    await appendFile(join(e.dir, 'inventory.jsonl'), '{"serial":"ab","identity":"spiffe://exa');
    await appendFile(join(e.dir, 'audit.jsonl'), '{"time":"2026-');
    const again = await open({ ...e, registry: createRegistry() });
    expect(again.recovery.tornTails.map((t) => t.file).sort()).toEqual([join(e.dir, 'audit.jsonl'), join(e.dir, 'inventory.jsonl')]);
    expect(e.logs.records().some((r) => String(r.msg).includes('torn'))).toBe(true);
    expect(again.counts()).toMatchObject({ issued: 1, certificates: 1 });
    const second = await again.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await again.close();
    const third = await open({ ...e, registry: createRegistry() });
    expect(third.recovery.tornTails).toEqual([]);
    expect((await third.inventory.query()).map((r) => r.serial)).toEqual([second.serialHex, first.serialHex]);
  });

  it('refuses to open over a corrupt record in the middle of a log', async () => {
    const { ca, e } = await newCa();
    await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await ca.close();
    const p = join(e.dir, 'audit.jsonl');
    await writeFile(p, `garbage\n${await readFile(p, 'utf8')}`);
    const err = await errorOf(CertificateAuthority.open({ stateDir: e.dir, clock: e.clock, logger: e.logs.logger, registry: createRegistry() }));
    expect(err.code).toBe('WARD_CA_STATE_CORRUPT');
  });

  it('group-commits concurrent issuance: every request resolves durable, in far fewer writes', async () => {
    const e = await env();
    await CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock });
    let writes = 0;
    const ca = await open(e, { hooks: { onStep: (s) => void (s === 'appended' && writes++) } });
    const csrs = Array.from({ length: 300 }, () => csrFor());
    const results = await Promise.all(csrs.map((csr, i) => ca.issue({ csr, identity: SpiffeId.workload(TD, 'load', `sa${i}`), requester: NODE })));
    expect(new Set(results.map((r) => r.serialHex)).size).toBe(300);
    expect(writes).toBeLessThan(60); // two logs; one write per batch each
    const lines = (await readFile(join(e.dir, 'inventory.jsonl'), 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(300);
    expect(ca.counts().issued).toBe(300);
  });

  it('sheds with WARD_CA_RATE_LIMITED when the durable-write queue is full', async () => {
    const { ca: first, e } = await newCa();
    await first.close(); // one writer per state directory
    const ca = await open({ ...e, registry: createRegistry() }, { maxPendingWrites: 5 });
    const settled = await Promise.allSettled(Array.from({ length: 20 }, () => ca.issue({ csr: csrFor(), identity: CART, requester: NODE })));
    const ok = settled.filter((s) => s.status === 'fulfilled').length;
    const shed = settled.filter((s) => s.status === 'rejected' && isWardError(s.reason, 'WARD_CA_RATE_LIMITED')).length;
    expect(ok).toBeGreaterThan(0);
    expect(ok + shed).toBe(20);
    expect(shed).toBeGreaterThan(0);
    expect(ca.counts().issued).toBe(ok);
  });

  it('keeps every acknowledged certificate when the process is killed mid-issuance', async () => {
    const { ca, e } = await newCa();
    await ca.close();
    const script = join(await tempDir(), 'issuer.mts');
    await writeFile(
      script,
      [
        `import { CertificateAuthority } from ${JSON.stringify(join(process.cwd(), 'ca/authority.ts'))};`,
        `import { ManualClock } from ${JSON.stringify(join(process.cwd(), 'core/clock.ts'))};`,
        `import { silentLogger } from ${JSON.stringify(join(process.cwd(), 'core/logger.ts'))};`,
        `import { createRegistry } from ${JSON.stringify(join(process.cwd(), 'core/metrics.ts'))};`,
        `import { createCsr } from ${JSON.stringify(join(process.cwd(), 'core/pki/csr.ts'))};`,
        `import { PrivateKey } from ${JSON.stringify(join(process.cwd(), 'core/pki/keys.ts'))};`,
        `const ca = await CertificateAuthority.open({ stateDir: ${JSON.stringify(e.dir)}, clock: new ManualClock(${e.clock.now()}), logger: silentLogger(), registry: createRegistry() });`,
        'const csr = createCsr(PrivateKey.generate());',
        'for (;;) {',
        "  await Promise.all(Array.from({ length: 20 }, () => ca.issue({ csr, identity: 'spiffe://example.org/ns/a/sa/b', requester: 'r' }).then((r) => process.stdout.write(r.serialHex + '\\n'))));",
        '}',
      ].join('\n'),
    );
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'inherit'] });
    onTestFinished(() => void child.kill('SIGKILL'));
    const acked: string[] = [];
    let buf = '';
    await new Promise<void>((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code) => (acked.length >= 200 ? resolve() : reject(new Error(`child exited early (${code})`))));
      child.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        const parts = buf.split('\n');
        buf = parts.pop()!;
        acked.push(...parts);
        if (acked.length >= 200) child.kill('SIGKILL');
      });
    });
    const again = await open({ ...e, registry: createRegistry() });
    const stored = new Set((await readFile(join(e.dir, 'inventory.jsonl'), 'utf8')).split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { serial: string }).serial));
    for (const s of acked) expect(stored.has(s)).toBe(true);
    expect(again.counts().certificates).toBe(stored.size);
  });
});

describe('metrics and logs', () => {
  it('exposes issuance metrics with help text and expiry gauges per root and intermediate', async () => {
    const { ca, e } = await newCa();
    await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs: 1 }));
    const text = await e.registry.metrics();
    expect(text).toMatch(/# HELP ward_ca_certificates_issued_total .+\n# TYPE ward_ca_certificates_issued_total counter\nward_ca_certificates_issued_total 1/);
    expect(text).toContain('ward_ca_certificates_refused_total{reason="WARD_CA_LIFETIME_INVALID"} 1');
    expect(text).toContain('ward_ca_certificates_refused_total{reason="WARD_PKI_CSR_UNAUTHORIZED"} 0');
    expect(text).toMatch(/# HELP ward_ca_issuance_duration_seconds .+/);
    expect(text).toContain('ward_ca_issuance_duration_seconds_count 2');
    const short = (c: Certificate) => c.fingerprintSha256.replace(/:/g, '').slice(0, 16).toLowerCase();
    const root = ca.bundle().roots[0];
    const int = ca.activeIssuer().cert;
    expect(text).toContain(`ward_ca_certificate_expiry_timestamp_seconds{kind="root",issuer="${short(root)}"} ${root.notAfter.getTime() / 1000}`);
    expect(text).toContain(`ward_ca_certificate_expiry_timestamp_seconds{kind="intermediate",issuer="${short(int)}"} ${int.notAfter.getTime() / 1000}`);
    expect(text).toMatch(/# HELP ward_ca_certificate_expiry_timestamp_seconds .+/);
  });

  it('logs issued at debug and refusals at info/warn, never key material', async () => {
    const { ca, e } = await newCa();
    const ok = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await errorOf(ca.issue({ csr: csrFor('spiffe://example.org/ns/x/sa/y'), identity: CART, requester: NODE }));
    await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE, ttlMs: 1 }));
    const recs = e.logs.records();
    const issued = recs.find((r) => r.msg === 'certificate issued');
    expect(issued).toMatchObject({ level: 20, serial: ok.serialHex, identity: CART.toString(), requester: NODE, component: 'ca' });
    const refused = recs.filter((r) => r.msg === 'certificate refused');
    expect(refused.map((r) => [r.code, r.level])).toEqual([
      ['WARD_PKI_CSR_UNAUTHORIZED', 40],
      ['WARD_CA_LIFETIME_INVALID', 30],
    ]);
    expect(e.logs.lines.join('')).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE REQUEST/);
  });
});

describe('onIssued', () => {
  it('reports each issuance once its records are durable, never a refusal', async () => {
    const { ca, e } = await newCa();
    const seen: { event: IssuedEvent; inventory: string }[] = [];
    ca.onIssued((event) => seen.push({ event, inventory: readFileSync(join(e.dir, 'inventory.jsonl'), 'utf8') }));
    const r = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    expect(seen).toHaveLength(1);
    const { event, inventory } = seen[0];
    expect(event.id.toString()).toBe(CART.toString());
    expect(event).toMatchObject({ requester: NODE, serialHex: r.serialHex, notAfter: r.notAfter });
    // Called after the durable append: the record is already in the file.
    expect(inventory).toContain(r.serialHex);
    // A refusal (foreign trust domain) is not an issuance.
    await errorOf(ca.issue({ csr: csrFor(), identity: 'spiffe://other.org/ns/a/sa/b', requester: NODE }));
    expect(seen).toHaveLength(1);
  });

  it('logs a throwing listener and still issues; unsubscribe stops the calls', async () => {
    const { ca, e } = await newCa();
    const calls: string[] = [];
    ca.onIssued(() => {
      throw new Error('listener failed');
    });
    const off = ca.onIssued((ev) => calls.push(ev.serialHex));
    const r = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    expect(calls).toEqual([r.serialHex]);
    expect(e.logs.records().some((l) => l.msg === 'issuance listener threw')).toBe(true);
    off();
    await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    expect(calls).toHaveLength(1);
  });
});

describe('close', () => {
  it('is idempotent, flushes pending records, and refuses later work', async () => {
    const { ca, e } = await newCa();
    const pending = ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    const c1 = ca.close();
    expect(ca.close()).toBe(c1);
    await c1;
    const r = await pending;
    expect((await readFile(join(e.dir, 'inventory.jsonl'), 'utf8'))).toContain(r.serialHex);
    expect((await errorOf(ca.issue({ csr: csrFor(), identity: CART, requester: NODE }))).code).toBe('WARD_CA_INTERNAL');
    expect((await errorOf(ca.rotation.prepare('intermediate'))).code).toBe('WARD_CA_INTERNAL');
  });
});

describe('one writer per state directory', () => {
  it('refuses a second writer while the first is open, lets readers in, and frees the lock on close', async () => {
    const { ca, e } = await newCa();
    const second = await errorOf(CertificateAuthority.open({ stateDir: e.dir, clock: e.clock, logger: e.logs.logger, registry: createRegistry(), holder: 'test second' }));
    expect(second.code).toBe('WARD_CA_STATE_LOCKED');
    expect(second.message).toContain(`process ${process.pid}`);
    // A reader needs no lock and sees what the writer made durable.
    const issued = await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    const reader = await open(e, { readOnly: true });
    expect(reader.readOnly).toBe(true);
    expect((await reader.inventory.query({ limit: 1 }))[0].serial).toBe(issued.serialHex);
    await expect(reader.issue({ csr: csrFor(), identity: CART, requester: NODE })).rejects.toThrow(/BUG: issue\(\) on a CA opened read-only/);
    await ca.close();
    const third = await open({ ...e, registry: createRegistry() });
    expect(third.readOnly).toBe(false);
  });

  it('takes over a lock left by a process that no longer runs', async () => {
    const { ca, e } = await newCa();
    await ca.close();
    // A pid that cannot be running: above the kernel's pid_max.
    await writeFile(join(e.dir, 'ca.lock'), JSON.stringify({ pid: 2 ** 22 + 1, holder: 'crashed', startedAt: new Date(0).toISOString() }));
    const again = await open({ ...e, registry: createRegistry() });
    expect(again.readOnly).toBe(false);
  });

  it('concurrent starters taking over a stale lock: exactly one becomes the writer', async () => {
    const { ca, e } = await newCa();
    await ca.close();
    // Each round: a lock left by a crashed process, and three writers starting at once. Taking it
    // over is a read-judge-unlink-create sequence; a late unlink must never remove the new lock.
    for (let round = 0; round < 40; round++) {
      await writeFile(join(e.dir, 'ca.lock'), JSON.stringify({ pid: 2 ** 22 + 1, holder: 'crashed', startedAt: new Date(0).toISOString() }));
      const opened = await Promise.allSettled(
        ['a', 'b', 'c'].map((holder) => CertificateAuthority.open({ stateDir: e.dir, clock: e.clock, logger: e.logs.logger, registry: createRegistry(), holder })),
      );
      const writers = opened.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const refusals = opened.flatMap((r) => (r.status === 'rejected' ? [(r.reason as { code?: string }).code] : []));
      expect({ round, writers: writers.length, refusals }).toEqual({ round, writers: 1, refusals: ['WARD_CA_STATE_LOCKED', 'WARD_CA_STATE_LOCKED'] });
      const lock = JSON.parse(await readFile(join(e.dir, 'ca.lock'), 'utf8')) as { pid: number; holder: string };
      expect(lock.pid).toBe(process.pid);
      await writers[0].close();
      // Closing frees the lock; nothing of the takeover is left behind.
      expect((await readdir(e.dir)).filter((n) => n.startsWith('ca.lock'))).toEqual([]);
    }
  });

  it('a lock naming pid 0 or a negative pid (process groups, not processes) is stale', async () => {
    const { ca, e } = await newCa();
    await ca.close();
    for (const pid of [0, -1]) {
      await writeFile(join(e.dir, 'ca.lock'), JSON.stringify({ pid, holder: 'garbage', startedAt: new Date(0).toISOString() }));
      const again = await open({ ...e, registry: createRegistry() });
      expect(again.readOnly).toBe(false);
      await again.close();
    }
  });

  it('a reader skips, and never truncates, an incomplete last line (the writer may still be appending)', async () => {
    const { ca, e } = await newCa();
    await ca.issue({ csr: csrFor(), identity: CART, requester: NODE });
    await ca.close();
    const path = join(e.dir, 'inventory.jsonl');
    await appendFile(path, '{"serial":"ab');
    const size = (await stat(path)).size;
    const reader = await open({ ...e, registry: createRegistry() }, { readOnly: true });
    expect(reader.counts().certificates).toBe(1);
    expect((await stat(path)).size).toBe(size);
  });
});

describe('concurrent init', () => {
  it('lets exactly one of two concurrent inits create the CA, and the result opens cleanly', async () => {
    const e = await env();
    const results = await Promise.allSettled([
      CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock }),
      CertificateAuthority.init({ stateDir: e.dir, trustDomain: TD, clock: e.clock }),
    ]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    expect(ok).toHaveLength(1);
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(['WARD_CA_ALREADY_INITIALIZED', 'WARD_CA_STATE_LOCKED']).toContain(failed.reason.code);
    const ca = await open(e);
    expect(ca.bundle().roots[0].fingerprintSha256).toBe((ok[0] as PromiseFulfilledResult<{ root: { fingerprint: string } }>).value.root.fingerprint);
    expect((await ca.issue({ csr: csrFor(), identity: CART, requester: NODE })).id.equals(CART)).toBe(true);
  });
});
