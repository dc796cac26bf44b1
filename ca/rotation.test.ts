import { access, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { silentLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { createRoot, parseCertificates } from '../core/pki/certificate.js';
import { createCsr } from '../core/pki/csr.js';
import { PrivateKey } from '../core/pki/keys.js';
import { verifySvid } from '../core/pki/verify.js';
import { CertificateAuthority, type CaChange, type IssueResult } from './authority.js';
import type { StoreHooks } from './store.js';
import { errorOf } from '../test/helpers/errors.js';

const TD = 'example.org';
const HOUR = 3_600_000;
const CART = SpiffeId.workload(TD, 'shop', 'cart');
const NODE = 'spiffe://example.org/ward/node/n1';

interface Harness {
  dir: string;
  clock: ManualClock;
  crash: { at?: (step: string, file: string) => boolean };
  open(): Promise<CertificateAuthority>;
}

async function harness(): Promise<Harness> {
  const base = await mkdtemp(join(tmpdir(), 'ward-rot-'));
  onTestFinished(() => rm(base, { recursive: true, force: true }));
  const dir = join(base, 'state');
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const crash: Harness['crash'] = {};
  const hooks: StoreHooks = {
    onStep: (step, file) => {
      if (crash.at?.(step, file)) {
        crash.at = undefined;
        throw new Error(`simulated crash after ${step} of ${file}`);
      }
    },
  };
  await CertificateAuthority.init({ stateDir: dir, trustDomain: TD, clock });
  return {
    dir,
    clock,
    crash,
    async open() {
      const ca = await CertificateAuthority.open({ stateDir: dir, clock, logger: silentLogger(), registry: createRegistry(), hooks });
      onTestFinished(() => ca.close());
      return ca;
    },
  };
}

function issue(ca: CertificateAuthority, ttlMs = HOUR): Promise<IssueResult> {
  return ca.issue({ csr: createCsr(PrivateKey.generate()), identity: CART, requester: NODE, ttlMs });
}

/** The root a leaf's chain ends in, or the reason it does not verify. */
async function anchor(ca: CertificateAuthority, leaf: IssueResult, at: number): Promise<string> {
  const v = await verifySvid(parseCertificates(leaf.chainPem), ca.bundle(), new Date(at));
  return v.ok ? v.path[v.path.length - 1].fingerprintSha256 : `rejected: ${v.reason}`;
}


/** Closes `ca`, reopens from disk and checks the reopened CA is in the same state. */
async function reopenSame(h: Harness, ca: CertificateAuthority): Promise<CertificateAuthority> {
  const before = { status: ca.rotation.status(), issuer: ca.activeIssuer().cert.fingerprintSha256, bundle: ca.bundle().toPem() };
  await ca.close();
  const again = await h.open();
  expect({ status: again.rotation.status(), issuer: again.activeIssuer().cert.fingerprintSha256, bundle: again.bundle().toPem() }).toEqual(before);
  return again;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

function keyFile(dir: string, fp: string): string {
  return join(dir, 'keys', `${fp.replace(/:/g, '').toLowerCase()}.key`);
}

describe('root rotation', () => {
  it('adds the new root first, switches issuance, and removes the old root only after its leaves expired', async () => {
    const h = await harness();
    let ca = await h.open();
    const changes: CaChange[] = [];
    ca.onChange((c) => changes.push(c));
    const oldRoot = ca.bundle().roots[0].fingerprintSha256;
    const oldIssuer = ca.activeIssuer().cert.fingerprintSha256;
    expect(ca.rotation.status()).toMatchObject({ phase: 'idle', bundleRoots: [oldRoot], bundleSequence: 1, retireReady: false });
    const oldLeaf = await issue(ca);

    // prepare: the new root is in the bundle at once, but issuance has not moved.
    const prepared = await ca.rotation.prepare('root');
    expect(prepared.phase).toBe('prepared');
    expect(prepared.kind).toBe('root');
    const newRoot = prepared.next!.root.fingerprint;
    expect(newRoot).not.toBe(oldRoot);
    expect(ca.bundle().roots.map((c) => c.fingerprintSha256)).toEqual([oldRoot, newRoot]);
    expect(prepared.bundleSequence).toBe(2);
    expect(changes.map((c) => c.bundle.roots.length)).toEqual([2]);
    expect(ca.activeIssuer().cert.fingerprintSha256).toBe(oldIssuer);
    const preparedLeaf = await issue(ca);
    expect(await anchor(ca, preparedLeaf, h.clock.now())).toBe(oldRoot);
    ca = await reopenSame(h, ca);

    // activate: new leaves chain to the new root; old ones still verify against the 2-root bundle.
    h.clock.advance(10 * 60_000);
    const activated = await ca.rotation.activate();
    expect(activated.phase).toBe('activated');
    expect(activated.active.root.fingerprint).toBe(newRoot);
    expect(activated.previous!.root.fingerprint).toBe(oldRoot);
    const newLeaf = await issue(ca);
    expect(await anchor(ca, newLeaf, h.clock.now())).toBe(newRoot);
    expect(await anchor(ca, oldLeaf, h.clock.now())).toBe(oldRoot);
    expect(await anchor(ca, preparedLeaf, h.clock.now())).toBe(oldRoot);
    ca = await reopenSame(h, ca);

    // retire too early: the last old-root leaf (preparedLeaf) is still valid.
    expect(ca.rotation.status()).toMatchObject({ retireReady: false, retireAfter: preparedLeaf.notAfter });
    const early = await errorOf(ca.rotation.retire());
    expect(early.code).toBe('WARD_CA_ROTATION_INVALID');
    expect(early.message).toContain(preparedLeaf.notAfter.toISOString());
    expect(ca.bundle().roots).toHaveLength(2);

    // Past the last old leaf's expiry: retire succeeds and the bundle holds the new root only.
    h.clock.set(preparedLeaf.notAfter.getTime() + 1000);
    expect(ca.rotation.status().retireReady).toBe(true);
    const retired = await ca.rotation.retire();
    expect(retired.phase).toBe('idle');
    expect(retired.bundleRoots).toEqual([newRoot]);
    expect(retired.bundleSequence).toBe(3);
    expect(ca.bundle().roots.map((c) => c.fingerprintSha256)).toEqual([newRoot]);
    expect(await exists(keyFile(h.dir, oldRoot))).toBe(false);
    expect(await exists(keyFile(h.dir, oldIssuer))).toBe(false);
    expect(await anchor(ca, await issue(ca), h.clock.now())).toBe(newRoot);
    ca = await reopenSame(h, ca);
    expect(ca.rotation.status().previous).toBeUndefined();
  });

  it('retire({ force }) removes the old root early', async () => {
    const h = await harness();
    const ca = await h.open();
    await issue(ca);
    await ca.rotation.prepare('root');
    await ca.rotation.activate();
    const s = await ca.rotation.retire({ force: true });
    expect(s.phase).toBe('idle');
    expect(ca.bundle().roots).toHaveLength(1);
  });

  it('a root rotation with no leaves outstanding may retire at once', async () => {
    const h = await harness();
    const ca = await h.open();
    await ca.rotation.prepare('root');
    await ca.rotation.activate();
    expect(ca.rotation.status().retireReady).toBe(true);
    await ca.rotation.retire();
  });

  it('accepts an operator-provided new root', async () => {
    const h = await harness();
    const ca = await h.open();
    const key = PrivateKey.generate();
    const root = createRoot({ key, trustDomain: TD, commonName: 'Corp Root 2', notBefore: new Date(h.clock.now() - HOUR), notAfter: new Date(h.clock.now() + 1000 * 24 * HOUR) });
    const s = await ca.rotation.prepare('root', { rootCert: root.pem, rootKey: key.exportPem() });
    expect(s.next!.root).toMatchObject({ fingerprint: root.fingerprintSha256, origin: 'byo' });
    await ca.rotation.activate();
    expect(ca.mode).toBe('byo-root');
    expect(await anchor(ca, await issue(ca), h.clock.now())).toBe(root.fingerprintSha256);
    // Ward does not replace the operator's root with one of its own.
    await ca.rotation.retire();
    expect((await errorOf(ca.rotation.prepare('root'))).message).toMatch(/root rotation is your job/);
    // But it can still rotate the intermediate under it, since it holds that root's key.
    await ca.rotation.prepare('intermediate');
  });
});

describe('intermediate rotation', () => {
  it('needs no bundle change, switches issuance, and retires at once', async () => {
    const h = await harness();
    let ca = await h.open();
    const root = ca.bundle().roots[0].fingerprintSha256;
    const oldIssuer = ca.activeIssuer().cert.fingerprintSha256;
    const oldLeaf = await issue(ca);
    const prepared = await ca.rotation.prepare('intermediate');
    expect(prepared).toMatchObject({ phase: 'prepared', kind: 'intermediate', bundleRoots: [root], bundleSequence: 1 });
    expect(prepared.next!.root.fingerprint).toBe(root);
    ca = await reopenSame(h, ca);
    await ca.rotation.activate();
    const newIssuer = ca.activeIssuer().cert.fingerprintSha256;
    expect(newIssuer).toBe(prepared.next!.issuer.fingerprint);
    const newLeaf = await issue(ca);
    expect(parseCertificates(newLeaf.chainPem)[1].fingerprintSha256).toBe(newIssuer);
    expect(await anchor(ca, newLeaf, h.clock.now())).toBe(root);
    expect(await anchor(ca, oldLeaf, h.clock.now())).toBe(root);
    ca = await reopenSame(h, ca);
    expect(ca.rotation.status().retireReady).toBe(true);
    await ca.rotation.retire();
    expect(await exists(keyFile(h.dir, oldIssuer))).toBe(false);
    expect(await anchor(ca, oldLeaf, h.clock.now())).toBe(root);
    await reopenSame(h, ca);
  });

  it('the new intermediate is clamped to the root and issues for a year', async () => {
    const h = await harness();
    const ca = await h.open();
    h.clock.advance(200 * 24 * HOUR);
    const s = await ca.rotation.prepare('intermediate');
    expect(s.next!.issuer.notAfter.getTime()).toBe(Math.floor((h.clock.now() + 365 * 24 * HOUR) / 1000) * 1000);
  });
});

describe('rotation steps', () => {
  it('refuses steps out of order with WARD_CA_ROTATION_INVALID', async () => {
    const h = await harness();
    const ca = await h.open();
    expect((await errorOf(ca.rotation.activate())).code).toBe('WARD_CA_ROTATION_INVALID');
    expect((await errorOf(ca.rotation.retire())).code).toBe('WARD_CA_ROTATION_INVALID');
    await ca.rotation.prepare('intermediate');
    expect((await errorOf(ca.rotation.prepare('root'))).code).toBe('WARD_CA_ROTATION_INVALID');
    expect((await errorOf(ca.rotation.retire())).code).toBe('WARD_CA_ROTATION_INVALID');
    await ca.rotation.activate();
    expect((await errorOf(ca.rotation.activate())).code).toBe('WARD_CA_ROTATION_INVALID');
    expect((await errorOf(ca.rotation.prepare('intermediate'))).code).toBe('WARD_CA_ROTATION_INVALID');
  });

  it('serializes concurrent steps: only one of two simultaneous prepares wins', async () => {
    const h = await harness();
    const ca = await h.open();
    const r = await Promise.allSettled([ca.rotation.prepare('intermediate'), ca.rotation.prepare('root')]);
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected']);
  });

  it('a crash before the commit point leaves the previous phase, and the debris is swept', async () => {
    const h = await harness();
    const ca = await h.open();
    const before = ca.rotation.status();
    h.crash.at = (step, file) => step === 'tmp-synced' && file.endsWith('ca.json');
    await expect(ca.rotation.prepare('root')).rejects.toThrow(/simulated crash/);
    await ca.close();
    const again = await h.open();
    expect(again.rotation.status()).toEqual(before);
    // New root cert + key and new issuer cert + key were written, then orphaned; plus the ca.json tmp.
    expect(again.recovery.orphansRemoved).toHaveLength(5);
    expect((await readdir(join(h.dir, 'keys'))).length).toBe(2);
    await again.rotation.prepare('root');
  });

  it('a crash right after the commit point resumes in the new phase', async () => {
    const h = await harness();
    const ca = await h.open();
    await issue(ca);
    await ca.rotation.prepare('root');
    await ca.rotation.activate();
    const oldRoot = ca.rotation.status().previous!.root.fingerprint;
    h.clock.advance(2 * HOUR);
    // Retire commits ca.json, then deletes the old keys: crash in between.
    h.crash.at = (step, file) => step === 'renamed' && file.endsWith('ca.json');
    await expect(ca.rotation.retire()).rejects.toThrow(/simulated crash/);
    await ca.close();
    expect(await exists(keyFile(h.dir, oldRoot))).toBe(true);
    const again = await h.open();
    expect(again.rotation.status().phase).toBe('idle');
    expect(again.bundle().roots).toHaveLength(1);
    expect(await exists(keyFile(h.dir, oldRoot))).toBe(false);
    expect(again.recovery.orphansRemoved).toContain(keyFile(h.dir, oldRoot));
  });

  it('keeps issuing while a rotation step runs', async () => {
    const h = await harness();
    const ca = await h.open();
    const step = ca.rotation.prepare('root').then(() => ca.rotation.activate());
    const leaves = await Promise.all(Array.from({ length: 50 }, () => issue(ca)));
    await step;
    for (const l of leaves) expect((await anchor(ca, l, h.clock.now())).startsWith('rejected')).toBe(false);
  });
});
