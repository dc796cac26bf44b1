/**
 * The certificate authority core: holds the CA material from the state directory, issues X.509-SVID
 * leaves under the policy in issuance-policy.ts, records every certificate (inventory) and every
 * decision (audit) durably, and rotates its intermediate and root without downtime (rotation.ts).
 *
 * It knows nothing of HTTP or of who is authorized for what: the API layer authenticates the caller,
 * decides which identity it may have, and passes that identity to issue().
 *
 * Concurrency: issue() does all its checking and signing synchronously, then awaits the durable
 * append of its records (group-committed with every other issuance in flight; see append-log.ts).
 * The active signer is read once per issue() and swapped by a single assignment, so a rotation step
 * never makes an issuance see half-switched state.
 */
import type { Logger } from '../core/logger.js';
import type { Registry } from '../core/metrics.js';
import { performance } from 'node:perf_hooks';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock } from '../core/clock.js';
import { WardError, bug, isWardError, type WardErrorCode } from '../core/errors.js';
import { StateLock } from './lock.js';
import { SpiffeId, parseTrustDomain } from '../core/identity/index.js';
import { LeafSigner, TrustBundle, parseCsrAsync, type Certificate, type IssuedCertificate } from '../core/pki/index.js';
import type { TornTail } from './append-log.js';
import { AuditLog, clip, type AuditCounts } from './audit.js';
import { CaMetrics, refusalReason } from './ca-metrics.js';
import { CertificateInventory } from './inventory.js';
import { assertIssuerValid, checkCsrPolicy, checkServerNameCsrPolicy, checkServerNames, leafLifetime, leafValidity, type IssuerWindow } from './issuance-policy.js';
import {
  DEFAULT_INTERMEDIATE_TTL_MS,
  DEFAULT_ROOT_TTL_MS,
  generateIssuer,
  generateRoot,
  issuerChainPem,
  issuerWindow,
  loadByoIntermediate,
  loadByoRoot,
  loadIssuer,
  loadRoot,
  saveIssuer,
  saveRoot,
  selfTestIssuer,
  validateCaTtl,
  type ByoMaterial,
  type IssuerMaterial,
  type RootMaterial,
} from './material.js';
import { CaRotation, bundleRootEntries, type CaCertSummary, type RotationHost } from './rotation.js';
import {
  AUDIT_FILE,
  INVENTORY_FILE,
  STATE_FILE,
  ensureStateDir,
  keyPath,
  readState,
  removeFileDurable,
  stateDirMode,
  sweepOrphans,
  writeState,
  type CaStateFile,
  type StoreHooks,
} from './store.js';

export interface InitOptions extends ByoMaterial {
  stateDir: string;
  trustDomain: string;
  clock: Clock;
  /** Lifetime of Ward-generated roots (default 5 years). */
  rootTtlMs?: number;
  /** Lifetime of Ward-generated intermediates (default 1 year, never past the root). */
  intermediateTtlMs?: number;
  /** Crash injection for tests. */
  hooks?: StoreHooks;
}

/** How the CA material came to be: all Ward's, the operator's root, or the operator's intermediate. */
export type CaMode = 'generated' | 'byo-root' | 'byo-intermediate';

export interface InitResult {
  stateDir: string;
  trustDomain: string;
  mode: CaMode;
  root: CaCertSummary;
  issuer: CaCertSummary;
  /** The trust bundle (the root) as PEM, to distribute to peers. */
  bundlePem: string;
}

export interface OpenOptions {
  stateDir: string;
  clock: Clock;
  logger: Logger;
  registry: Registry;
  /** Leaf lifetime when a request names none (default 1h; must be 5m..24h). */
  defaultTtlMs?: number;
  /** Newest inventory/audit records kept in memory each (default 1000). */
  recentWindow?: number;
  /** Bound of each durable-write queue (default 10000 records); past it issue() sheds with WARD_CA_RATE_LIMITED. */
  maxPendingWrites?: number;
  /** Crash injection for tests. */
  hooks?: StoreHooks;
  /**
   * Open for reading only (inspect, bundle): takes no lock, repairs nothing, and may run beside the
   * process that holds the directory. issue() and rotation steps are then bugs.
   */
  readOnly?: boolean;
  /** Who takes the state lock, for other processes' error messages (default "ward"). */
  holder?: string;
}

export interface IssueRequest {
  /** PKCS#10 CSR, PEM or DER. Only its public key is used (after proof of possession). */
  csr: string | Buffer;
  /** The identity the caller is authorized for; it is what the certificate will carry. */
  identity: SpiffeId | string;
  /** Who asks (the authenticated caller), for the inventory and the audit log. */
  requester: string;
  /** Requested lifetime, 5m..24h (default: OpenOptions.defaultTtlMs). */
  ttlMs?: number;
}

export interface ServerNameRequest {
  /** PKCS#10 CSR, PEM or DER. Only its public key is used (after proof of possession). */
  csr: string | Buffer;
  /** The DNS names the certificate will carry (route hosts: lowercase, `*.` wildcard allowed). */
  dnsNames: readonly string[];
  /** Who asks (the authenticated caller), for the inventory and the audit log. */
  requester: string;
  /** Requested lifetime, 5m..24h (default: OpenOptions.defaultTtlMs). */
  ttlMs?: number;
}

export interface ServerNameResult extends Omit<IssueResult, 'id'> {
  dnsNames: string[];
}

export interface IssueResult {
  /** The leaf alone. */
  certPem: string;
  /** The leaf followed by the intermediate(s), not the root: what the holder presents in TLS. */
  chainPem: string;
  serialHex: string;
  notBefore: Date;
  notAfter: Date;
  id: SpiffeId;
}

export interface CaCounts extends AuditCounts {
  /** Certificates in the inventory. */
  certificates: number;
}

/** What open() had to repair after an unclean stop. */
export interface OpenRecovery {
  /** Records torn by a crash mid-append and cut off (never acknowledged to a caller). */
  tornTails: TornTail[];
  /** Files of an interrupted step that the committed state does not reference, deleted. */
  orphansRemoved: string[];
}

/** One issuance, reported to onIssued() listeners once its records are durable. */
export interface IssuedEvent {
  id: SpiffeId;
  /** Who asked (the authenticated caller). */
  requester: string;
  serialHex: string;
  notAfter: Date;
}

export interface CaChange {
  bundle: TrustBundle;
  bundleSequence: number;
  activeIssuer: string;
}

/** A leaf signed by #signLeaf, not yet recorded. */
interface SignedLeaf {
  leaf: IssuedCertificate;
  active: ActiveIssuer;
  /** performance.now() at the start, for the duration histogram; the clock's now() for the records. */
  started: number;
  now: number;
}

interface ActiveIssuer {
  fingerprint: string;
  material: IssuerMaterial;
  signer: LeafSigner;
  window: IssuerWindow;
  /** The issuer and further intermediates as PEM, appended after each leaf. */
  chainPem: string;
}

const DEFAULT_RECENT_WINDOW = 1000;
const DEFAULT_MAX_PENDING_WRITES = 10_000;

function summary(cert: Certificate, state: CaStateFile['roots'][number]['state'], origin: 'generated' | 'byo'): CaCertSummary {
  return { fingerprint: cert.fingerprintSha256, subject: cert.subject, notBefore: cert.notBefore, notAfter: cert.notAfter, state, origin };
}

function activate(m: IssuerMaterial): ActiveIssuer {
  return {
    fingerprint: m.cert.fingerprintSha256,
    material: m,
    signer: new LeafSigner({ cert: m.cert, key: m.key }),
    window: issuerWindow(m),
    chainPem: issuerChainPem(m),
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

// Log level per refusal: the caller's fault is routine (info); asking beyond one's authorization, or
// a CA that cannot sign (expired issuer, overload), is worth a look (warn); only an unexpected
// failure is an error. (open() also logs an unusable issuer once, at error.)
const REFUSAL_LEVEL: Partial<Record<WardErrorCode, 'info' | 'warn' | 'error'>> = {
  WARD_PKI_CSR_UNAUTHORIZED: 'warn',
  WARD_CA_FORBIDDEN: 'warn',
  WARD_CA_ISSUER_NOT_VALID: 'warn',
  WARD_CA_RATE_LIMITED: 'warn',
  WARD_CA_INTERNAL: 'error',
};

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly stateDir: string;
  /** Every issued certificate (durable, queryable). */
  readonly inventory: CertificateInventory;
  /** Every issuance decision (durable, queryable). */
  readonly audit: AuditLog;
  /** prepare / activate / retire / status; see rotation.ts. */
  readonly rotation: CaRotation;
  readonly recovery: OpenRecovery;

  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #metrics: CaMetrics;
  readonly #hooks: StoreHooks | undefined;
  readonly #defaultTtl: number;
  readonly #roots = new Map<string, RootMaterial>();
  readonly #issuers = new Map<string, IssuerMaterial>();
  readonly #listeners = new Set<(change: CaChange) => void>();
  readonly #issuedListeners = new Set<(r: IssuedEvent) => void>();
  #state: CaStateFile;
  #active!: ActiveIssuer;
  #bundle!: TrustBundle;
  #closed = false;
  #closing: Promise<void> | undefined;
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #lock: StateLock | undefined;

  private constructor(o: {
    state: CaStateFile;
    stateDir: string;
    clock: Clock;
    log: Logger;
    metrics: CaMetrics;
    hooks: StoreHooks | undefined;
    defaultTtl: number;
    roots: RootMaterial[];
    issuers: IssuerMaterial[];
    inventory: CertificateInventory;
    audit: AuditLog;
    recovery: OpenRecovery;
    lock: StateLock | undefined;
  }) {
    this.#lock = o.lock;
    this.trustDomain = o.state.trustDomain;
    this.stateDir = o.stateDir;
    this.#state = o.state;
    this.#clock = o.clock;
    this.#log = o.log;
    this.#metrics = o.metrics;
    this.#hooks = o.hooks;
    this.#defaultTtl = o.defaultTtl;
    this.inventory = o.inventory;
    this.audit = o.audit;
    this.recovery = o.recovery;
    for (const r of o.roots) this.#roots.set(r.cert.fingerprintSha256, r);
    for (const i of o.issuers) this.#issuers.set(i.cert.fingerprintSha256, i);
    this.#applyState();
    this.rotation = new CaRotation(this.#rotationHost());
  }

  // ---------------------------------------------------------------------------------------------
  // init / open

  /**
   * Creates a CA in `stateDir`: Ward-generated root (5y) and intermediate (1y), or the operator's
   * root (+key; Ward makes the intermediate), or the operator's intermediate (+key+chain up to and
   * including the root; Ward never has the root key, so root rotation stays the operator's job).
   * BYO material is validated: key matches certificate (WARD_PKI_KEY_MISMATCH), ECDSA P-256
   * (WARD_PKI_KEY_INVALID), CA with keyCertSign and a chain that verifies (WARD_PKI_CHAIN_INVALID),
   * valid now (WARD_CA_ISSUER_NOT_VALID). Refuses a directory that already holds a CA
   * (WARD_CA_ALREADY_INITIALIZED). Returns a summary; open() the CA to use it.
   */
  static async init(o: InitOptions): Promise<InitResult> {
    const trustDomain = parseTrustDomain(o.trustDomain);
    const rootTtl = validateCaTtl('rootTtlMs', o.rootTtlMs, DEFAULT_ROOT_TTL_MS);
    const intTtl = validateCaTtl('intermediateTtlMs', o.intermediateTtlMs, DEFAULT_INTERMEDIATE_TTL_MS);
    const byoRoot = o.rootCert !== undefined || o.rootKey !== undefined;
    const byoInt = o.intermediateCert !== undefined || o.intermediateKey !== undefined || o.chain !== undefined;
    if (byoRoot && byoInt) throw new WardError('WARD_CONFIG_INVALID', 'bring either a root (rootCert+rootKey) or an intermediate (intermediateCert+intermediateKey+chain), not both');
    if (byoRoot && (o.rootCert === undefined || o.rootKey === undefined)) {
      throw new WardError('WARD_CONFIG_INVALID', `${o.rootCert === undefined ? 'rootCert' : 'rootKey'} is missing: a root is brought with its certificate and key`);
    }
    if (byoInt) {
      const missing = (['intermediateCert', 'intermediateKey', 'chain'] as const).filter((k) => o[k] === undefined);
      if (missing.length > 0) throw new WardError('WARD_CONFIG_INVALID', `${missing.join(', ')} missing: an intermediate is brought with its certificate, its key and its chain up to the root`);
    }
    const stateDir = o.stateDir;
    for (const f of [STATE_FILE, INVENTORY_FILE, AUDIT_FILE]) {
      if (await exists(join(stateDir, f))) {
        throw new WardError('WARD_CA_ALREADY_INITIALIZED', `${stateDir} already holds a CA (${f} exists); refusing to overwrite it`);
      }
    }
    const now = o.clock.now();
    let root: RootMaterial;
    let issuer: IssuerMaterial;
    let mode: CaMode;
    if (byoRoot) {
      root = loadByoRoot(o.rootCert!, o.rootKey!, trustDomain, now);
      issuer = generateIssuer(root, trustDomain, now, intTtl);
      mode = 'byo-root';
    } else if (byoInt) {
      issuer = loadByoIntermediate(o.intermediateCert!, o.intermediateKey!, o.chain!, trustDomain, now);
      root = { cert: issuer.root, origin: 'byo' };
      mode = 'byo-intermediate';
    } else {
      root = generateRoot(trustDomain, now, rootTtl);
      issuer = generateIssuer(root, trustDomain, now, intTtl);
      mode = 'generated';
    }
    const bundle = new TrustBundle(trustDomain, [root.cert]);
    await selfTestIssuer(issuer, bundle, now);

    await ensureStateDir(stateDir);
    // The writer's lock, so two inits (or `ca serve --init` beside `ca init`) cannot sweep each
    // other's files; re-checked under it: a CA committed meanwhile is not overwritten.
    const lock = await StateLock.acquire(stateDir, 'ward ca init', new Date(now));
    try {
      if (await exists(join(stateDir, STATE_FILE))) throw new WardError('WARD_CA_ALREADY_INITIALIZED', `${stateDir} already holds a CA (${STATE_FILE} appeared during init)`);
      await CertificateAuthority.#initLocked(o, { stateDir, trustDomain, rootTtl, intTtl, now }, root, issuer);
    } finally {
      await lock.release();
    }
    return {
      stateDir,
      trustDomain,
      mode,
      root: summary(root.cert, 'active', root.origin),
      issuer: summary(issuer.cert, 'active', issuer.origin),
      bundlePem: bundle.toPem(),
    };
  }

  static async #initLocked(
    o: InitOptions,
    { stateDir, trustDomain, rootTtl, intTtl, now }: { stateDir: string; trustDomain: string; rootTtl: number; intTtl: number; now: number },
    root: RootMaterial,
    issuer: IssuerMaterial,
  ): Promise<void> {
    // No ca.json: anything of ours in here is the debris of an interrupted init.
    await sweepOrphans(stateDir, undefined);
    await saveRoot(stateDir, root, o.hooks);
    await saveIssuer(stateDir, issuer, o.hooks);
    const at = new Date(now).toISOString();
    const state: CaStateFile = {
      version: 1,
      trustDomain,
      createdAt: at,
      rootTtlMs: rootTtl,
      intermediateTtlMs: intTtl,
      bundleSequence: 1,
      roots: [{ fingerprint: root.cert.fingerprintSha256, state: 'active', origin: root.origin, hasKey: !!root.key, addedAt: at }],
      issuers: [{ fingerprint: issuer.cert.fingerprintSha256, root: root.cert.fingerprintSha256, state: 'active', origin: issuer.origin, addedAt: at, activatedAt: at }],
      rotation: null,
    };
    await writeState(stateDir, state, o.hooks);
  }

  /**
   * Opens the CA in `stateDir`: loads the committed state (WARD_CA_NOT_INITIALIZED when there is
   * none), refuses key files others can access (WARD_CA_STATE_PERMISSIONS), removes the debris of an
   * interrupted step, and replays the inventory and audit files (repairing a torn final record).
   */
  static async open(o: OpenOptions): Promise<CertificateAuthority> {
    const log = o.logger.child({ component: 'ca' });
    const defaultTtl = leafLifetime(o.defaultTtlMs);
    const state = await readState(o.stateDir);
    if (!state) throw new WardError('WARD_CA_NOT_INITIALIZED', `${o.stateDir} holds no CA (no ${STATE_FILE}); run \`ward ca init\``);
    // One writer per directory (see lock.ts); taken before anything is repaired or swept.
    const lock = o.readOnly ? undefined : await StateLock.acquire(o.stateDir, o.holder ?? 'ward', new Date(o.clock.now()));
    try {
      // Read again under the lock: a writer may have committed a step (and released the lock)
      // since the read above, and sweeping orphans against a stale ca.json would delete the new
      // step's files.
      const current = lock ? await readState(o.stateDir) : state;
      if (!current) throw new WardError('WARD_CA_NOT_INITIALIZED', `${o.stateDir} holds no CA (no ${STATE_FILE}); run \`ward ca init\``);
      return await CertificateAuthority.#openLocked(o, current, lock, log, defaultTtl);
    } catch (err) {
      await lock?.release();
      throw err;
    }
  }

  static async #openLocked(o: OpenOptions, state: CaStateFile, lock: StateLock | undefined, log: Logger, defaultTtl: number): Promise<CertificateAuthority> {
    const mode = await stateDirMode(o.stateDir);
    if (mode !== undefined && (mode & 0o077) !== 0) {
      log.warn({ stateDir: o.stateDir, mode: mode.toString(8) }, 'CA state directory is accessible by other users; chmod 700 it');
    }
    const orphansRemoved = lock ? await sweepOrphans(o.stateDir, state) : [];
    if (orphansRemoved.length > 0) log.warn({ files: orphansRemoved }, 'removed files left by an interrupted CA step');

    const roots: RootMaterial[] = [];
    const rootByFp = new Map<string, RootMaterial>();
    for (const e of state.roots) {
      if (e.state === 'retired') continue;
      const r = await loadRoot(o.stateDir, e);
      roots.push(r);
      rootByFp.set(e.fingerprint, r);
    }
    const issuers: IssuerMaterial[] = [];
    for (const e of state.issuers) {
      if (e.state === 'retired') continue;
      const root = rootByFp.get(e.root);
      if (!root) throw new WardError('WARD_CA_STATE_CORRUPT', `${join(o.stateDir, STATE_FILE)}: issuer ${e.fingerprint} chains to root ${e.root}, which is retired or missing`);
      issuers.push(await loadIssuer(o.stateDir, e, root.cert));
    }

    const logOptions = {
      recentWindow: o.recentWindow ?? DEFAULT_RECENT_WINDOW,
      maxPending: o.maxPendingWrites ?? DEFAULT_MAX_PENDING_WRITES,
      hooks: o.hooks,
      readOnly: lock === undefined,
    };
    if (!Number.isInteger(logOptions.recentWindow) || logOptions.recentWindow < 1) throw new WardError('WARD_CONFIG_INVALID', `recentWindow must be a positive integer, got ${String(o.recentWindow)}`);
    if (!Number.isInteger(logOptions.maxPending) || logOptions.maxPending < 1) throw new WardError('WARD_CONFIG_INVALID', `maxPendingWrites must be a positive integer, got ${String(o.maxPendingWrites)}`);
    const inventory = await CertificateInventory.open(o.stateDir, logOptions);
    let audit: AuditLog;
    try {
      audit = await AuditLog.open(o.stateDir, logOptions);
    } catch (err) {
      await inventory.close();
      throw err;
    }
    const tornTails = [inventory.torn, audit.torn].filter((t): t is TornTail => t !== undefined);
    for (const t of tornTails) log.warn({ file: t.file, offset: t.offset, bytes: t.bytes }, 'cut off a record torn by a crash mid-append (it was never acknowledged)');

    const ca = new CertificateAuthority({
      state,
      stateDir: o.stateDir,
      clock: o.clock,
      log,
      metrics: new CaMetrics(o.registry),
      hooks: o.hooks,
      defaultTtl,
      roots,
      issuers,
      inventory,
      audit,
      recovery: { tornTails, orphansRemoved },
      lock,
    });
    const w = ca.#active.window;
    const now = o.clock.now();
    if (now < w.validFrom || now > w.validUntil) log.error({ validFrom: new Date(w.validFrom).toISOString(), validUntil: new Date(w.validUntil).toISOString() }, 'the active issuing CA is not valid now; issuance will be refused');
    log.info({ trustDomain: ca.trustDomain, mode: ca.mode, issuer: ca.#active.fingerprint, rotation: state.rotation?.phase ?? 'idle' }, 'CA opened');
    return ca;
  }

  // ---------------------------------------------------------------------------------------------
  // state

  /** Rebuilds everything derived from #state and the loaded material. */
  #applyState(): void {
    const activeEntry = this.#state.issuers.find((i) => i.state === 'active')!;
    if (this.#active?.fingerprint !== activeEntry.fingerprint) {
      const m = this.#issuers.get(activeEntry.fingerprint);
      if (!m) throw new Error(`BUG: active issuer ${activeEntry.fingerprint} not loaded`);
      // One assignment: issue() reads #active once, so it sees the old or the new issuer, whole.
      this.#active = activate(m);
    }
    const roots = bundleRootEntries(this.#state).map((e) => {
      const r = this.#roots.get(e.fingerprint);
      if (!r) throw new Error(`BUG: root ${e.fingerprint} not loaded`);
      return r.cert;
    });
    this.#bundle = new TrustBundle(this.trustDomain, roots);
    this.#metrics.setExpiries([
      ...roots.map((c) => ({ kind: 'root' as const, fingerprint: c.fingerprintSha256, notAfter: c.notAfter })),
      ...this.#state.issuers
        .filter((i) => i.state !== 'retired')
        .map((i) => ({ kind: 'intermediate' as const, fingerprint: i.fingerprint, notAfter: this.#issuers.get(i.fingerprint)!.cert.notAfter })),
    ]);
  }

  async #commit(next: CaStateFile, added: { roots: RootMaterial[]; issuers: IssuerMaterial[] }): Promise<void> {
    if (!this.#lock) bug('a rotation step on a CA opened read-only');
    await writeState(this.stateDir, next, this.#hooks);
    await this.#adopt(next, added);
  }

  async #adopt(next: CaStateFile, added: { roots: RootMaterial[]; issuers: IssuerMaterial[] }): Promise<void> {
    const prev = this.#state;
    this.#state = next;
    for (const r of added.roots) this.#roots.set(r.cert.fingerprintSha256, r);
    for (const i of added.issuers) this.#issuers.set(i.cert.fingerprintSha256, i);
    const retiredKeys: string[] = [];
    for (const e of next.roots) {
      if (e.state === 'retired' && this.#roots.delete(e.fingerprint) && e.hasKey) retiredKeys.push(e.fingerprint);
    }
    for (const e of next.issuers) {
      if (e.state === 'retired' && this.#issuers.delete(e.fingerprint)) retiredKeys.push(e.fingerprint);
    }
    this.#applyState();
    // After the commit: a crash before these deletions leaves keys that open() sweeps as orphans,
    // and a failure here must not make a committed step look failed; the next open() retries.
    for (const fp of retiredKeys) {
      try {
        await removeFileDurable(keyPath(this.stateDir, fp), this.#hooks);
      } catch (err) {
        this.#log.error({ err, fingerprint: fp }, 'could not delete a retired CA key; it will be removed at the next open');
      }
    }
    if (next.bundleSequence !== prev.bundleSequence || next.issuers.find((i) => i.state === 'active')!.fingerprint !== prev.issuers.find((i) => i.state === 'active')!.fingerprint) {
      const change: CaChange = { bundle: this.#bundle, bundleSequence: next.bundleSequence, activeIssuer: this.#active.fingerprint };
      for (const l of this.#listeners) {
        try {
          l(change);
        } catch (err) {
          this.#log.error({ err }, 'CA change listener threw');
        }
      }
    }
  }

  #rotationHost(): RotationHost {
    return {
      stateDir: this.stateDir,
      trustDomain: this.trustDomain,
      clock: this.#clock,
      log: this.#log.child({ component: 'ca.rotation' }),
      hooks: this.#hooks,
      assertOpen: () => this.#assertOpen(),
      state: () => this.#state,
      root: (fp) => this.#roots.get(fp),
      issuer: (fp) => this.#issuers.get(fp),
      bundle: () => this.#bundle,
      leafHorizon: (fp) => this.inventory.leafHorizon(fp),
      commit: (next, added) => this.#commit(next, added),
    };
  }

  #assertOpen(): void {
    if (this.#closed) throw new WardError('WARD_CA_INTERNAL', 'the CA is closed');
  }

  /** How the current root came to be. */
  get mode(): CaMode {
    const root = this.#state.roots.find((r) => r.state === 'active')!;
    if (root.origin === 'generated') return 'generated';
    return root.hasKey ? 'byo-root' : 'byo-intermediate';
  }

  /** The roots peers must trust: during a root rotation, old and new. */
  bundle(): TrustBundle {
    return this.#bundle;
  }

  /** Increases whenever the bundle's set of roots changes (for SPIFFE bundle `spiffe_sequence`). */
  get bundleSequence(): number {
    return this.#state.bundleSequence;
  }

  /** The intermediate signing now, and the chain a leaf's holder presents after the leaf. */
  activeIssuer(): { cert: Certificate; chain: Certificate[] } {
    const m = this.#active.material;
    return { cert: m.cert, chain: [m.cert, ...m.chain] };
  }

  /** Called after each committed change of the bundle or of the active issuer. Returns an unsubscribe. */
  onChange(listener: (change: CaChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Called after each issuance whose records are durable (so never for a certificate that was not
   * returned). A throwing listener is logged and never affects the issuance. Returns an unsubscribe.
   */
  onIssued(listener: (r: IssuedEvent) => void): () => void {
    this.#issuedListeners.add(listener);
    return () => this.#issuedListeners.delete(listener);
  }

  /**
   * Whether the CA can issue: its durable logs accept records and its active issuer is valid now.
   * Health endpoints report this, so an orchestrator restarts a CA that can only refuse.
   */
  health(): { ok: true } | { ok: false; reason: string } {
    const failure = this.inventory.failure ?? this.audit.failure;
    if (failure) return { ok: false, reason: `durable log failed: ${failure.message}` };
    const w = this.#active.window;
    const now = this.#clock.now();
    if (now < w.validFrom || now > w.validUntil) return { ok: false, reason: 'the active issuing CA is not valid now' };
    return { ok: true };
  }

  counts(): CaCounts {
    return { ...this.audit.counts(), certificates: this.inventory.counts().total };
  }

  // ---------------------------------------------------------------------------------------------
  // issuance

  /**
   * Issues a leaf for `identity` (see the policy in issuance-policy.ts) and resolves once its
   * inventory and audit records are durable. A refusal throws its WardError after the refusal is
   * durably audited. Exceptions: WARD_CA_RATE_LIMITED (write queue full) is shed before any work and
   * not audited; a failure of the durable write itself is WARD_CA_INTERNAL and the certificate is
   * not returned.
   */
  issue(r: IssueRequest): Promise<IssueResult> {
    const p = this.#issue(r);
    this.#inFlight.add(p);
    const done = () => this.#inFlight.delete(p);
    p.then(done, done);
    return p;
  }

  /** Opened with readOnly: it can be inspected, not changed. */
  get readOnly(): boolean {
    return this.#lock === undefined;
  }

  /** The state lock this CA holds (undefined when read-only); the server advertises its admin URL in it. */
  get lock(): StateLock | undefined {
    return this.#lock;
  }

  async #issue(r: IssueRequest): Promise<IssueResult> {
    let id: SpiffeId | undefined;
    const signed = await this.#signLeaf(r, String(r.identity), async (csr, active, notBefore, notAfter) => {
      id = typeof r.identity === 'string' ? SpiffeId.parse(r.identity) : r.identity;
      if (!(id instanceof SpiffeId)) throw new WardError('WARD_ID_INVALID', 'identity must be a SPIFFE ID');
      if (!id.memberOf(this.trustDomain)) throw new WardError('WARD_CA_FORBIDDEN', `identity ${id} is not in trust domain ${this.trustDomain}`);
      if (id.path === '') throw new WardError('WARD_CA_FORBIDDEN', `identity ${id} is the trust domain itself; a workload identity needs a path`);
      // The signature checks and the signature run on the thread pool: concurrent issuances use every core.
      const parsed = await parseCsrAsync(csr);
      checkCsrPolicy(parsed, id);
      return active.signer.signAsync({ publicKeyDer: parsed.publicKeyDer, id, notBefore, notAfter });
    });
    const recordedId = id ?? bug('identity not set after signing');
    return { ...(await this.#recorded(signed, r.requester, recordedId)), id: recordedId };
  }

  /**
   * Issues a TLS server certificate for DNS names (LeafSigner.signServerName: not an SVID, serverAuth
   * only) for the mesh ingress's hosts without a certificate of their own. Internal names only: the
   * certificate is trusted by clients that trust Ward's root, never by the public internet. Whether
   * the requester may have the names is the caller's decision (the API layer: the ingress, for its
   * route hosts). Recorded and audited like every certificate, under the identity `dns:<names>`.
   */
  issueServerName(r: ServerNameRequest): Promise<ServerNameResult> {
    const p = (async () => {
      let names: readonly string[] = [];
      const label = Array.isArray(r.dnsNames) ? `dns:${r.dnsNames.join(',')}` : 'dns:?';
      const signed = await this.#signLeaf(r, label, async (csr, active, notBefore, notAfter) => {
        names = checkServerNames(r.dnsNames);
        const parsed = await parseCsrAsync(csr);
        checkServerNameCsrPolicy(parsed, names);
        return active.signer.signServerName({ publicKeyDer: parsed.publicKeyDer, dnsNames: names, notBefore, notAfter });
      });
      const result = await this.#recorded(signed, r.requester, undefined, `dns:${names.join(',')}`);
      return { ...result, dnsNames: [...names] };
    })();
    this.#inFlight.add(p);
    const done = () => this.#inFlight.delete(p);
    p.then(done, done);
    return p;
  }

  /** The checks every issuance shares, then `sign`; a refusal is audited and thrown. */
  async #signLeaf(
    r: { csr: string | Buffer; requester: string; ttlMs?: number },
    identityText: string,
    sign: (csr: string | Buffer, active: ActiveIssuer, notBefore: Date, notAfter: Date) => Promise<IssuedCertificate> | IssuedCertificate,
  ): Promise<SignedLeaf> {
    if (!this.#lock) bug('issue() on a CA opened read-only');
    // Wall-clock duration for the histogram only; decisions use the injected clock.
    const started = performance.now();
    this.#assertOpen();
    const now = this.#clock.now();
    const requester = typeof r.requester === 'string' ? clip(r.requester) : '';
    const active = this.#active;
    try {
      if (!this.inventory.hasRoom() || !this.audit.hasRoom()) {
        throw new WardError('WARD_CA_RATE_LIMITED', 'the CA is overloaded: the durable-write queue is full; retry later');
      }
      if (typeof r.requester !== 'string' || r.requester === '') throw new WardError('WARD_CA_REQUEST_INVALID', 'requester must be a non-empty string');
      const ttl = leafLifetime(r.ttlMs, this.#defaultTtl);
      assertIssuerValid(active.window, now);
      const { notBefore, notAfter } = leafValidity(now, ttl, active.window);
      const leaf = await sign(r.csr, active, notBefore, notAfter);
      return { leaf, active, started, now };
    } catch (err) {
      throw await this.#refuse(err, { requester, identity: clip(identityText), now, started });
    }
  }

  /** Makes a signed leaf durable (inventory + audit), counts it, tells listeners; see issue(). */
  async #recorded({ leaf, active, started, now }: SignedLeaf, requesterText: string, id: SpiffeId | undefined, label?: string): Promise<Omit<IssueResult, 'id'>> {
    const requester = clip(requesterText);
    const serial = leaf.serialHex;
    const identity = label ?? (id ?? bug('no identity to record')).toString(); // unclipped: queries by identity must find it
    const issuedAt = new Date(now).toISOString();
    const durable = Promise.all([
      this.inventory.record(
        {
          serial,
          identity,
          requester,
          notBefore: leaf.notBefore.toISOString(),
          notAfter: leaf.notAfter.toISOString(),
          issuedAt,
          issuer: active.fingerprint,
        },
        leaf.notAfter.getTime(),
      ),
      this.audit.record({ time: issuedAt, decision: 'issued', requester, identity, serial }),
    ]);
    try {
      await durable;
    } catch (err) {
      const reason = refusalReason(isWardError(err) ? err.code : undefined);
      this.#metrics.refused.inc({ reason });
      this.#metrics.duration.observe((performance.now() - started) / 1000);
      this.#log.error({ err, serial, identity, requester }, 'certificate signed but its records could not be made durable; not returned');
      if (isWardError(err, 'WARD_CA_RATE_LIMITED')) throw err;
      throw new WardError('WARD_CA_INTERNAL', 'the CA could not record the certificate durably', { cause: err });
    }
    this.#metrics.issued.inc();
    this.#metrics.duration.observe((performance.now() - started) / 1000);
    if (this.#log.isLevelEnabled('debug')) {
      this.#log.debug({ serial, identity, requester, notAfter: leaf.notAfter.toISOString(), issuer: active.fingerprint }, 'certificate issued');
    }
    if (id !== undefined && this.#issuedListeners.size > 0) {
      const event: IssuedEvent = { id, requester, serialHex: serial, notAfter: leaf.notAfter };
      for (const l of [...this.#issuedListeners]) {
        try {
          l(event);
        } catch (err) {
          this.#log.error({ err, serial, identity }, 'issuance listener threw');
        }
      }
    }
    const certPem = leaf.pem();
    return {
      certPem,
      chainPem: (certPem.endsWith('\n') ? certPem : `${certPem}\n`) + active.chainPem,
      serialHex: serial,
      notBefore: leaf.notBefore,
      notAfter: leaf.notAfter,
    };
  }

  /** Records, counts and logs a refusal; returns the error to throw. */
  async #refuse(err: unknown, o: { requester: string; identity: string; now: number; started: number }): Promise<WardError> {
    let refusal: WardError;
    if (isWardError(err)) {
      refusal = err;
    } else {
      this.#log.error({ err, identity: o.identity, requester: o.requester }, 'unexpected failure while issuing');
      refusal = new WardError('WARD_CA_INTERNAL', 'the CA failed unexpectedly while issuing', { cause: err });
    }
    const reason = refusalReason(refusal.code);
    this.#metrics.refused.inc({ reason });
    const level = REFUSAL_LEVEL[refusal.code] ?? 'info';
    this.#log[level]({ code: refusal.code, reason: refusal.message, identity: o.identity, requester: o.requester }, 'certificate refused');
    // A shed request is not a decision about the caller, and the queue it would go to is full.
    if (refusal.code !== 'WARD_CA_RATE_LIMITED') {
      try {
        await this.audit.record({
          time: new Date(o.now).toISOString(),
          decision: 'refused',
          requester: o.requester,
          identity: o.identity,
          code: refusal.code,
          reason: clip(refusal.message),
        });
      } catch (auditErr) {
        this.#log.error({ err: auditErr, code: refusal.code }, 'could not audit a refusal durably');
      }
    }
    this.#metrics.duration.observe((performance.now() - o.started) / 1000);
    return refusal;
  }

  // ---------------------------------------------------------------------------------------------
  // lifecycle

  /** Stops issuing, waits for a running rotation step, makes pending records durable. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      await this.rotation.idle();
      // Issuances already admitted finish (their crypto runs on the thread pool) and are recorded
      // before the logs close; new ones are refused by #assertOpen.
      await Promise.allSettled([...this.#inFlight]);
      await Promise.all([this.inventory.close(), this.audit.close()]);
      await this.#lock?.release();
      this.#listeners.clear();
      this.#issuedListeners.clear();
      this.#log.info('CA closed');
    })();
    return this.#closing;
  }
}
