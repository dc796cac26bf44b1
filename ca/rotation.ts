/**
 * Rotation without downtime, SPIRE-style prepare → activate, plus retire:
 *
 *   idle ──prepare(kind)──▶ prepared ──activate()──▶ activated ──retire()──▶ idle
 *
 * prepare('intermediate')  a new intermediate under the current root. Peers need nothing new (they
 *                          trust the root; the intermediate travels in each leaf's chain).
 * prepare('root')          a new root and an intermediate under it. The new root enters the trust
 *                          bundle at once, before it signs anything, so that by activation every
 *                          peer that refreshes its bundle already trusts it.
 * activate()               issuance switches to the new intermediate (after a self-test against the
 *                          current bundle). Leaves from the old issuer stay valid until they expire.
 * retire()                 the old intermediate's key is deleted; for a root rotation the old root
 *                          also leaves the bundle, which is refused (WARD_CA_ROTATION_INVALID) while
 *                          any leaf it anchors is unexpired, unless forced. Retiring an old
 *                          intermediate alone changes nothing peers verify, so it is never held back.
 *
 * Every step commits ca.json (material files first, ca.json last; see store.ts), so a restart at
 * any point comes back in the last committed phase, and a crash inside a step leaves the previous
 * phase intact. Steps are serialized; issuance keeps running throughout and switches signer
 * atomically (the signer swap is one synchronous assignment after the commit).
 *
 * Bring-your-own: without the root key (BYO intermediate) Ward cannot make intermediates, and Ward
 * never replaces an operator's root with one of its own; in those cases the operator passes the new
 * material to prepare(), validated exactly as at init.
 */
import type { Logger } from '../core/logger.js';
import type { Clock } from '../core/clock.js';
import { formatDuration } from '../core/clock.js';
import { WardError } from '../core/errors.js';
import type { TrustBundle } from '../core/pki/index.js';
import {
  generateIssuer,
  generateRoot,
  loadByoIntermediate,
  loadByoRoot,
  saveIssuer,
  saveRoot,
  selfTestIssuer,
  validateCaTtl,
  type ByoMaterial,
  type IssuerMaterial,
  type RootMaterial,
} from './material.js';
import type { CaCertState, CaStateFile, IssuerEntry, RootEntry, StoreHooks } from './store.js';

export type RotationKind = 'intermediate' | 'root';
export type RotationPhase = 'idle' | 'prepared' | 'activated';

export interface PrepareOptions extends ByoMaterial {
  /** Lifetime of a Ward-generated root / intermediate for this rotation (default: as chosen at init). */
  rootTtlMs?: number;
  intermediateTtlMs?: number;
}

export interface CaCertSummary {
  fingerprint: string;
  subject: string;
  notBefore: Date;
  notAfter: Date;
  state: CaCertState;
  origin: 'generated' | 'byo';
}

export interface RotationStatus {
  phase: RotationPhase;
  kind?: RotationKind;
  preparedAt?: Date;
  activatedAt?: Date;
  /** The issuer signing now, and its root. */
  active: { issuer: CaCertSummary; root: CaCertSummary };
  /** Prepared, not yet signing (phase 'prepared'). */
  next?: { issuer: CaCertSummary; root: CaCertSummary };
  /** Replaced by activate(), not yet retired (phase 'activated'). */
  previous?: { issuer: CaCertSummary; root: CaCertSummary };
  /**
   * Phase 'activated' of a root rotation: the NotAfter of the last leaf the old root anchors;
   * retire() succeeds without force once the clock is past it. Undefined when no leaf holds it back.
   */
  retireAfter?: Date;
  /** Whether retire() would succeed now without force. */
  retireReady: boolean;
  /** Fingerprints of the roots in the trust bundle. */
  bundleRoots: string[];
  bundleSequence: number;
}

/** What the rotation needs from the CA; implemented privately by CertificateAuthority. */
export interface RotationHost {
  readonly stateDir: string;
  readonly trustDomain: string;
  readonly clock: Clock;
  readonly log: Logger;
  readonly hooks: StoreHooks | undefined;
  assertOpen(): void;
  state(): CaStateFile;
  root(fingerprint: string): RootMaterial | undefined;
  issuer(fingerprint: string): IssuerMaterial | undefined;
  bundle(): TrustBundle;
  leafHorizon(issuerFingerprint: string): number | undefined;
  /** Writes ca.json, then switches the in-memory CA (signer, bundle, metrics) to it. */
  commit(next: CaStateFile, added: { roots: RootMaterial[]; issuers: IssuerMaterial[] }): Promise<void>;
}

function invalid(message: string): WardError {
  return new WardError('WARD_CA_ROTATION_INVALID', message);
}

function clone(s: CaStateFile): CaStateFile {
  return structuredClone(s);
}

export class CaRotation {
  readonly #host: RotationHost;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(host: RotationHost) {
    this.#host = host;
  }

  // One step at a time: each step reads the committed state and commits a new one, so two steps
  // interleaving across their awaits could both start from the same state.
  #serial<T>(step: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(step, step);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Resolves once no step is running (used by close()). */
  idle(): Promise<void> {
    return this.#queue.then(() => undefined);
  }

  /** Creates the next CA material and commits phase 'prepared'. */
  prepare(kind: RotationKind, o: PrepareOptions = {}): Promise<RotationStatus> {
    return this.#serial(async () => {
      const h = this.#host;
      h.assertOpen();
      if (kind !== 'intermediate' && kind !== 'root') throw new WardError('WARD_CONFIG_INVALID', `rotation kind must be 'intermediate' or 'root', got ${JSON.stringify(kind)}`);
      const state = h.state();
      if (state.rotation) {
        const what = state.rotation.phase === 'prepared' ? 'activate() it' : 'retire() the old material';
        throw invalid(`a ${state.rotation.kind} rotation is already ${state.rotation.phase}; ${what} before preparing another`);
      }
      const now = h.clock.now();
      const td = h.trustDomain;
      const activeRootEntry = state.roots.find((r) => r.state === 'active')!;
      const activeRoot = h.root(activeRootEntry.fingerprint)!;
      const rootTtl = validateCaTtl('rootTtlMs', o.rootTtlMs, state.rootTtlMs);
      const intTtl = validateCaTtl('intermediateTtlMs', o.intermediateTtlMs, state.intermediateTtlMs);
      const byoRoot = o.rootCert !== undefined || o.rootKey !== undefined;
      const byoInt = o.intermediateCert !== undefined || o.intermediateKey !== undefined || o.chain !== undefined;
      if (byoRoot && byoInt) throw new WardError('WARD_CONFIG_INVALID', 'pass either rootCert+rootKey or intermediateCert+intermediateKey+chain, not both');
      if (byoRoot && (o.rootCert === undefined || o.rootKey === undefined)) throw new WardError('WARD_CONFIG_INVALID', 'rootCert and rootKey go together');
      if (byoInt && (o.intermediateCert === undefined || o.intermediateKey === undefined || o.chain === undefined)) {
        throw new WardError('WARD_CONFIG_INVALID', 'intermediateCert, intermediateKey and chain go together');
      }

      let root: RootMaterial;
      let issuer: IssuerMaterial;
      let newRoot: RootMaterial | undefined;
      if (kind === 'intermediate') {
        if (byoRoot) throw invalid("an intermediate rotation keeps the current root; to bring a new root use prepare('root', { rootCert, rootKey })");
        if (byoInt) {
          issuer = loadByoIntermediate(o.intermediateCert!, o.intermediateKey!, o.chain!, td, now);
          if (issuer.root.fingerprintSha256 !== activeRootEntry.fingerprint) {
            throw invalid(`the new intermediate chains to root ${issuer.root.fingerprintSha256}, not the active root ${activeRootEntry.fingerprint}; use prepare('root', ...) to change roots`);
          }
        } else {
          if (!activeRoot.key) {
            throw invalid(
              "Ward does not hold the root key (the intermediate was brought by the operator), so it cannot make a new intermediate: " +
                "issue one from your root and pass it: prepare('intermediate', { intermediateCert, intermediateKey, chain })",
            );
          }
          issuer = generateIssuer(activeRoot, td, now, intTtl);
        }
        root = activeRoot;
      } else {
        if (byoRoot) {
          root = loadByoRoot(o.rootCert!, o.rootKey!, td, now);
          issuer = generateIssuer(root, td, now, intTtl);
        } else if (byoInt) {
          issuer = loadByoIntermediate(o.intermediateCert!, o.intermediateKey!, o.chain!, td, now);
          root = { cert: issuer.root, origin: 'byo' };
        } else {
          if (activeRootEntry.origin !== 'generated') {
            throw invalid(
              'the active root was brought by the operator, and Ward does not replace it with a root of its own; root rotation is your job: ' +
                "pass the new material: prepare('root', { rootCert, rootKey }) or prepare('root', { intermediateCert, intermediateKey, chain })",
            );
          }
          root = generateRoot(td, now, rootTtl);
          issuer = generateIssuer(root, td, now, intTtl);
        }
        const fp = root.cert.fingerprintSha256;
        if (state.roots.some((r) => r.fingerprint === fp)) {
          throw invalid(`root ${fp} is already known to this CA (${state.roots.find((r) => r.fingerprint === fp)!.state}); a root rotation needs a new root`);
        }
        newRoot = root;
      }
      if (state.issuers.some((i) => i.fingerprint === issuer.cert.fingerprintSha256)) {
        throw invalid(`intermediate ${issuer.cert.fingerprintSha256} is already known to this CA`);
      }
      // Leaves of the new issuer must verify against the bundle peers will hold: today's plus the new root.
      const bundle = newRoot ? h.bundle().withRoot(newRoot.cert) : h.bundle();
      await selfTestIssuer(issuer, bundle, now);

      if (newRoot) await saveRoot(h.stateDir, newRoot, h.hooks);
      await saveIssuer(h.stateDir, issuer, h.hooks);
      const at = new Date(now).toISOString();
      const next = clone(state);
      if (newRoot) {
        next.roots.push({ fingerprint: newRoot.cert.fingerprintSha256, state: 'next', origin: newRoot.origin, hasKey: !!newRoot.key, addedAt: at });
        next.bundleSequence++;
      }
      next.issuers.push({ fingerprint: issuer.cert.fingerprintSha256, root: root.cert.fingerprintSha256, state: 'next', origin: issuer.origin, addedAt: at });
      next.rotation = { kind, phase: 'prepared', preparedAt: at };
      await h.commit(next, { roots: newRoot ? [newRoot] : [], issuers: [issuer] });
      h.log.info({ kind, issuer: issuer.cert.fingerprintSha256, root: root.cert.fingerprintSha256 }, 'CA rotation prepared');
      return this.status();
    });
  }

  /** Switches issuance to the prepared issuer (and root) and commits phase 'activated'. */
  activate(): Promise<RotationStatus> {
    return this.#serial(async () => {
      const h = this.#host;
      h.assertOpen();
      const state = h.state();
      if (state.rotation?.phase !== 'prepared') throw invalid(`nothing to activate: rotation phase is ${state.rotation?.phase ?? 'idle'}; prepare() first`);
      const now = h.clock.now();
      const nextIssuer = state.issuers.find((i) => i.state === 'next')!;
      const material = h.issuer(nextIssuer.fingerprint)!;
      // Time may have passed since prepare (and the bundle is what peers hold now): test again.
      await selfTestIssuer(material, h.bundle(), now);
      const at = new Date(now).toISOString();
      const next = clone(state);
      for (const i of next.issuers) {
        if (i.state === 'active') i.state = 'previous';
        else if (i.state === 'next') Object.assign(i, { state: 'active', activatedAt: at } satisfies Partial<IssuerEntry>);
      }
      if (state.rotation.kind === 'root') {
        for (const r of next.roots) {
          if (r.state === 'active') r.state = 'previous';
          else if (r.state === 'next') r.state = 'active';
        }
      }
      next.rotation = { ...state.rotation, phase: 'activated', activatedAt: at };
      await h.commit(next, { roots: [], issuers: [] });
      h.log.info({ kind: state.rotation.kind, issuer: nextIssuer.fingerprint }, 'CA rotation activated: issuing from the new intermediate');
      return this.status();
    });
  }

  /**
   * Retires the replaced material. For a root rotation the old root leaves the bundle, refused while
   * a leaf it anchors is unexpired unless `force` (those leaves then stop verifying everywhere).
   */
  retire(o: { force?: boolean } = {}): Promise<RotationStatus> {
    return this.#serial(async () => {
      const h = this.#host;
      h.assertOpen();
      const state = h.state();
      if (state.rotation?.phase !== 'activated') throw invalid(`nothing to retire: rotation phase is ${state.rotation?.phase ?? 'idle'}; activate() first`);
      const now = h.clock.now();
      const kind = state.rotation.kind;
      const horizon = this.#retireAfter(state);
      if (horizon !== undefined && now <= horizon) {
        if (!o.force) {
          throw invalid(
            `the old root still anchors leaves valid until ${new Date(horizon).toISOString()} (${formatDuration(horizon - now)} from now); ` +
              'retire after that, or force it (peers will then reject those leaves)',
          );
        }
        h.log.warn({ until: new Date(horizon).toISOString() }, 'CA rotation: old root retired by force while leaves it anchors are still valid');
      }
      const at = new Date(now).toISOString();
      const next = clone(state);
      for (const i of next.issuers) {
        if (i.state === 'previous') Object.assign(i, { state: 'retired', retiredAt: at } satisfies Partial<IssuerEntry>);
      }
      if (kind === 'root') {
        for (const r of next.roots) {
          if (r.state === 'previous') Object.assign(r, { state: 'retired', retiredAt: at } satisfies Partial<RootEntry>);
        }
        next.bundleSequence++;
      }
      next.rotation = null;
      await h.commit(next, { roots: [], issuers: [] });
      h.log.info({ kind }, 'CA rotation complete: old material retired');
      return this.status();
    });
  }

  /** Root rotation in phase 'activated': the NotAfter (ms) of the last leaf the old root anchors. */
  #retireAfter(state: CaStateFile): number | undefined {
    if (state.rotation?.phase !== 'activated' || state.rotation.kind !== 'root') return undefined;
    const oldRoot = state.roots.find((r) => r.state === 'previous')!;
    let horizon: number | undefined;
    for (const i of state.issuers) {
      if (i.root !== oldRoot.fingerprint) continue;
      const h = this.#host.leafHorizon(i.fingerprint);
      if (h !== undefined && (horizon === undefined || h > horizon)) horizon = h;
    }
    return horizon;
  }

  status(): RotationStatus {
    const h = this.#host;
    const state = h.state();
    const summary = (kind: 'root' | 'issuer', fp: string): CaCertSummary => {
      const entry = kind === 'root' ? state.roots.find((r) => r.fingerprint === fp)! : state.issuers.find((i) => i.fingerprint === fp)!;
      const cert = kind === 'root' ? h.root(fp)!.cert : h.issuer(fp)!.cert;
      return { fingerprint: fp, subject: cert.subject, notBefore: cert.notBefore, notAfter: cert.notAfter, state: entry.state, origin: entry.origin };
    };
    const pair = (st: CaCertState) => {
      const issuer = state.issuers.find((i) => i.state === st);
      if (!issuer) return undefined;
      return { issuer: summary('issuer', issuer.fingerprint), root: summary('root', issuer.root) };
    };
    const r = state.rotation;
    const retireAfter = this.#retireAfter(state);
    const status: RotationStatus = {
      phase: r?.phase ?? 'idle',
      active: pair('active')!,
      retireReady: r?.phase === 'activated' && (retireAfter === undefined || h.clock.now() > retireAfter),
      bundleRoots: h.bundle().roots.map((c) => c.fingerprintSha256),
      bundleSequence: state.bundleSequence,
    };
    if (r) {
      status.kind = r.kind;
      status.preparedAt = new Date(r.preparedAt);
      if (r.activatedAt) status.activatedAt = new Date(r.activatedAt);
    }
    const next = pair('next');
    if (next) status.next = next;
    const previous = pair('previous');
    if (previous) status.previous = previous;
    if (retireAfter !== undefined) status.retireAfter = new Date(retireAfter);
    return status;
  }
}

/** Roots in the trust bundle, in a stable order: active, next, previous. */
export function bundleRootEntries(state: CaStateFile): RootEntry[] {
  const order: Record<CaCertState, number> = { active: 0, next: 1, previous: 2, retired: 3 };
  return state.roots.filter((r) => r.state !== 'retired').sort((a, b) => order[a.state] - order[b.state]);
}

