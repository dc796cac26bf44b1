/**
 * The node proxy's identities: its own node SVID and one SVID per workload on its node.
 *
 * Trust flow (DESIGN §3.1–3.2): the proxy joins with a one-time token (POST /v1/join), or in
 * Kubernetes mode with its projected ServiceAccount token (re-read from its file at every join: the
 * kubelet rotates it; not one-time, so it may join again after the node certificate lapsed), or
 * reuses the node identity saved in its state directory, then obtains each workload's certificate with
 * POST /v1/issue over mutual TLS with the node certificate. Every key is generated here and never
 * leaves the node: only CSRs go to the CA, and no key is ever logged (PrivateKey redacts itself).
 *
 * Renewal: at notBefore + (0.5 ± 0.1) × lifetime. A failure keeps the still-valid certificate and
 * retries with capped, fully jittered exponential backoff, clamped so that no backoff step carries
 * past expiry without another attempt. A certificate that expires anyway is reported ('lost', state
 * 'expired'); attempts go on until it is renewed or no longer wanted.
 *
 * Events follow what get() returns: 'change' whenever get(identity) starts returning a new
 * HeldIdentity (obtained, renewed, or rebuilt for a new bundle), 'lost' whenever it stops returning
 * one (dropped while held, or expired). The node's own identity uses its SPIFFE ID string.
 *
 * Concurrency: each identity has at most one attempt in flight (`Slot.inFlight`; a timer firing, a
 * setWorkloads() or renewAll() during an attempt joins it), and attempts pass one gate of
 * ISSUE_CONCURRENCY, so the gate's queue is bounded by the number of identities. A result that
 * comes back after its identity was dropped, or after close(), is discarded.
 *
 * Time: renewal, retry, expiry and request-timeout timers all go through the injected `timers`, and
 * every decision reads the injected clock, so tests drive the whole life cycle on virtual time.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { request, type RequestOptions } from 'node:https';
import { createSecureContext, type SecureContext } from 'node:tls';
import { Counter, Gauge, type Registry } from 'prom-client';
import { parseDuration, systemClock, type Clock } from '../core/clock.js';
import { ERROR_CODES, WardError, isWardError, type WardErrorCode } from '../core/errors.js';
import { BodyTooLargeError, readBody } from '../core/http-body.js';
import { SpiffeId, parseTrustDomain } from '../core/identity/index.js';
import type { Logger } from '../core/logger.js';
import { PrivateKey, TrustBundle, createCsr, splitKeyAndChain, parseCertificates, validatePath, verifySvid, type Certificate } from '../core/pki/index.js';
import { meshClientOptions, meshServerOptions, type Credentials } from '../core/tls/index.js';
import { systemTimers, type Timers } from '../core/control/index.js';

export const DEFAULT_IDENTITY_BACKOFF = { initialMs: 1_000, maxMs: 60_000 } as const;
/** Certificate requests in flight at once (a node with many pods starting must not flood the CA). */
export const ISSUE_CONCURRENCY = 4;
/** Whole-request deadline of one CA call (connect, TLS, answer). */
export const CA_REQUEST_TIMEOUT_MS = 10_000;
/** An answer is a certificate chain and a bundle: a few KiB. Anything near this is not the CA. */
export const MAX_CA_RESPONSE_BYTES = 64 * 1024;
/** The node's key and certificate chain, one PEM file (mode 0600) in the state directory. */
export const NODE_IDENTITY_FILE = 'node-identity.pem';
/** A projected ServiceAccount token is 1–2 KiB; the CA takes up to 16 KiB. */
export const MAX_SERVICE_ACCOUNT_TOKEN_BYTES = 16 * 1024;
/** Renewal at (0.5 ± RENEW_JITTER) of the lifetime, so a node's certificates do not all renew together. */
const RENEW_JITTER = 0.1;
/** Below this much remaining lifetime a retry is no longer pulled forward (see #retryDelay). */
const MIN_CLAMPED_RETRY_MS = 500;
/** The CA's accepted lifetimes (ca/issuance-policy.ts); checked here too so a bad value fails at start. */
const MIN_TTL_MS = 5 * 60_000;
const MAX_TTL_MS = 24 * 60 * 60_000;
const MAX_TIMER_MS = 2 ** 31 - 1;
const KEY_FILE_MODE = 0o600;
const STATE_DIR_MODE = 0o700;

export interface IdentityOptions {
  /** https://host:port of the CA's mesh API. */
  caUrl: string;
  trustDomain: string;
  /** Node name; the node identity is spiffe://TD/ward/node/<node>. */
  node: string;
  /**
   * Join as this identity instead of the node's (the mesh ingress: spiffe://TD/ns/ward-system/sa/
   * ward-ingress, with an ingress join token). `node` then only names the saved-identity file's owner.
   */
  identity?: string;
  /** Initial trust anchors (they verify the CA on join). */
  bundle: TrustBundle;
  /** Needed (or serviceAccountTokenFile) unless stateDir holds a usable node identity. One-time: used at most once per process. */
  joinToken?: string;
  /**
   * Kubernetes mode, instead of joinToken: the projected ServiceAccount token's file (audience
   * `ward`, e.g. /var/run/secrets/ward/token). Read afresh at every join, since the kubelet rotates
   * it; the CA attests it with TokenReview. Unlike a join token it may be used again, e.g. after the
   * node certificate expired. Its content is never logged.
   */
  serviceAccountTokenFile?: string;
  /** Node key (0600) + certificate saved here after join/renewal, so a restarted proxy needs no new token; created 0700. */
  stateDir?: string;
  /** Requested workload/node lifetime, e.g. "1h" (5m..24h; default: the CA's default). */
  ttl?: string;
  clock?: Clock;
  timers?: Timers;
  random?: () => number;
  /** Default DEFAULT_IDENTITY_BACKOFF. */
  backoff?: { initialMs: number; maxMs: number };
  logger: Logger;
  /** ward_proxy_certificate_expiry_timestamp_seconds{identity} and ward_proxy_certificate_renewals_total{result}. */
  registry?: Registry;
}

/** A certificate the proxy holds, with one TLS secure context built once for it (client and server use). */
export interface HeldIdentity {
  readonly id: SpiffeId;
  readonly credentials: Credentials;
  /** tls.createSecureContext of the credentials: TLS 1.3 only, cert+key+ca=bundle, secureOptions SSL_OP_NO_TICKET (as meshServerOptions). Built once per certificate/bundle, shared by every connection. */
  readonly context: SecureContext;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/**
 * An internal-name server certificate (DNS names, not an SVID) held for the mesh ingress: a host
 * of its routes without a certificate of its own (setServerNames). The key never leaves memory.
 */
export interface HeldServerName {
  readonly host: string;
  /** Leaf first, then the intermediate(s). */
  readonly chainPem: string;
  readonly key: PrivateKey;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface IdentityStatus {
  identity: string;
  /**
   * valid: a certificate is held and unexpired (a failing renewal shows in lastError); pending: none
   * yet, first attempt not finished; failed: none held and the last attempt failed; expired: the
   * certificate held expired without renewal.
   */
  state: 'valid' | 'pending' | 'failed' | 'expired';
  serial?: string;
  notAfter?: string;
  /** The next attempt (scheduled renewal or retry). */
  renewAt?: string;
  lastError?: string;
  /** Successful renewals of this identity (the first issuance not counted). */
  renewals: number;
}

export interface IdentityEvents {
  /** A certificate for this identity was obtained or renewed, or rebuilt for a new bundle (the node's own: its SPIFFE ID string). */
  change: [identity: string];
  /** An identity was dropped (no longer wanted) or expired without renewal. */
  lost: [identity: string];
}

/** The CA answered a request with an error (4xx/5xx). `code` is the CA's when it is a known one. */
export class CaRefusalError extends WardError {
  readonly status: number;
  constructor(code: WardErrorCode, status: number, message: string) {
    super(code, message);
    this.name = 'CaRefusalError';
    this.status = status;
  }
}

/** A certificate just obtained (or loaded), checked: chain verifies, leaf is for the key and identity. */
interface Issued {
  readonly key: PrivateKey;
  readonly chainPem: string;
  readonly leaf: Certificate;
}

/** One identity's life cycle. */
interface Slot {
  readonly id: SpiffeId;
  readonly name: string;
  readonly isNode: boolean;
  /** Set for an internal-name certificate (setServerNames); `name` is then the host. */
  readonly host?: string;
  /** The last certificate obtained; kept after expiry for status() (get() checks the clock). */
  held?: HeldIdentity | HeldServerName;
  /** Consecutive failed attempts (backoff exponent). */
  failures: number;
  lastError?: string;
  renewals: number;
  /** When the next attempt is due (renewal or retry). */
  nextAt?: number;
  timer?: unknown;
  expiryTimer?: unknown;
  inFlight?: Promise<void>;
}

export class IdentityManager extends EventEmitter<IdentityEvents> {
  readonly nodeId: SpiffeId;
  readonly #url: URL;
  readonly #caId: SpiffeId;
  readonly #trustDomain: string;
  readonly #joinToken: string | undefined;
  readonly #saTokenFile: string | undefined;
  readonly #stateDir: string | undefined;
  readonly #ttl: string | undefined;
  readonly #clock: Clock;
  readonly #timers: Timers;
  readonly #random: () => number;
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #log: Logger;
  readonly #expiry: Gauge<'identity'> | undefined;
  readonly #renewalsTotal: Counter<'result'> | undefined;
  readonly #gate = new Gate(ISSUE_CONCURRENCY);
  /** Aborts every in-flight CA request on close(). */
  readonly #abort = new AbortController();
  /** Every armed timer, so close() can clear them all. */
  readonly #armed = new Set<unknown>();
  readonly #node: Slot;
  /** Wanted workload identities by ID string. */
  readonly #workloads = new Map<string, Slot>();
  /** Wanted internal-name certificates by host (the ingress only). */
  readonly #names = new Map<string, Slot>();
  #bundle: TrustBundle;
  #bundlePem: string;
  /** A join token is one-time: once the CA has answered a join with it, it is never sent again. */
  #tokenSpent = false;
  #starting: Promise<void> | undefined;
  #started = false;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(o: IdentityOptions) {
    super();
    let url: URL;
    try {
      url = new URL(o.caUrl);
    } catch (cause) {
      throw new WardError('WARD_CONFIG_INVALID', `CA URL ${JSON.stringify(String(o.caUrl).slice(0, 200))} is not a URL`, { cause });
    }
    if (url.protocol !== 'https:' || url.hostname === '' || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
      throw new WardError('WARD_CONFIG_INVALID', `CA URL ${JSON.stringify(o.caUrl.slice(0, 200))} must be https://host[:port] (no credentials, query or fragment)`);
    }
    this.#url = url;
    try {
      this.#trustDomain = parseTrustDomain(o.trustDomain);
      // The ingress joins and renews the same way under its own identity (no workloads).
      this.nodeId = o.identity !== undefined ? SpiffeId.parse(o.identity) : SpiffeId.node(this.#trustDomain, o.node);
      if (!this.nodeId.memberOf(this.#trustDomain)) throw new Error(`${this.nodeId} is not in trust domain ${this.#trustDomain}`);
    } catch (cause) {
      throw new WardError('WARD_CONFIG_INVALID', `node identity: ${(cause as Error).message}`, { cause });
    }
    if (o.bundle.trustDomain !== this.#trustDomain) {
      throw new WardError('WARD_CONFIG_INVALID', `the trust bundle is for ${o.bundle.trustDomain}, not ${this.#trustDomain}`);
    }
    if (o.joinToken !== undefined && (typeof o.joinToken !== 'string' || o.joinToken.length === 0)) {
      throw new WardError('WARD_CONFIG_INVALID', 'join token must be a non-empty string');
    }
    if (o.serviceAccountTokenFile !== undefined) {
      if (typeof o.serviceAccountTokenFile !== 'string' || o.serviceAccountTokenFile.length === 0) {
        throw new WardError('WARD_CONFIG_INVALID', 'the ServiceAccount token file must be a non-empty path');
      }
      if (o.joinToken !== undefined) throw new WardError('WARD_CONFIG_INVALID', 'give either a join token or a ServiceAccount token file, not both');
    }
    if (o.ttl !== undefined) {
      const ms = parseDuration(o.ttl);
      if (ms === undefined || ms < MIN_TTL_MS || ms > MAX_TTL_MS) {
        throw new WardError('WARD_CONFIG_INVALID', `certificate ttl ${JSON.stringify(String(o.ttl).slice(0, 40))} must be a duration from 5m to 24h (e.g. "1h")`);
      }
    }
    const backoff = o.backoff ?? DEFAULT_IDENTITY_BACKOFF;
    if (!(Number.isFinite(backoff.initialMs) && backoff.initialMs > 0 && Number.isFinite(backoff.maxMs) && backoff.maxMs >= backoff.initialMs)) {
      throw new WardError('WARD_CONFIG_INVALID', `identity backoff must have 0 < initialMs <= maxMs (got ${backoff.initialMs}, ${backoff.maxMs})`);
    }
    this.#caId = SpiffeId.fromSegments(this.#trustDomain, 'ward', 'ca');
    this.#joinToken = o.joinToken;
    this.#saTokenFile = o.serviceAccountTokenFile;
    this.#stateDir = o.stateDir;
    this.#ttl = o.ttl;
    this.#clock = o.clock ?? systemClock;
    this.#timers = o.timers ?? systemTimers;
    this.#random = o.random ?? Math.random;
    this.#backoff = { initialMs: backoff.initialMs, maxMs: backoff.maxMs };
    this.#log = o.logger.child({ component: 'proxy.identity' });
    this.#bundle = o.bundle;
    this.#bundlePem = o.bundle.toPem();
    this.#node = newSlot(this.nodeId, true);
    if (o.registry) {
      this.#expiry = registered(o.registry, 'ward_proxy_certificate_expiry_timestamp_seconds', () => new Gauge({
        name: 'ward_proxy_certificate_expiry_timestamp_seconds',
        help: "NotAfter (Unix seconds) of the certificate the proxy holds for each identity: its node's and its workloads'",
        labelNames: ['identity'],
        registers: [o.registry!],
      }));
      this.#renewalsTotal = registered(o.registry, 'ward_proxy_certificate_renewals_total', () => new Counter({
        name: 'ward_proxy_certificate_renewals_total',
        help: 'Certificate requests to the CA after joining (first issuance or renewal of a workload or node certificate), by result',
        labelNames: ['result'],
        registers: [o.registry!],
      }));
    }
  }

  /**
   * Loads a saved node identity (stateDir) that is still valid and from a CA in the bundle, else
   * joins with the token. Then schedules node renewal and obtains the wanted workload identities.
   * Throws WARD_PROXY_JOIN_FAILED with a clear message. A call while one is running joins it; after
   * a failure start() may be called again (the caller owns the retry policy; a join token the CA
   * has answered once is never sent again, while a ServiceAccount token file is read again).
   */
  start(): Promise<void> {
    if (this.#closed) return Promise.reject(new WardError('WARD_PROXY_JOIN_FAILED', 'the identity manager is closed'));
    this.#starting ??= this.#start().catch((err: unknown) => {
      this.#starting = undefined;
      throw err;
    });
    return this.#starting;
  }

  async #start(): Promise<void> {
    const saved = await this.#loadSaved();
    let issued: Issued;
    if (saved.issued) {
      issued = saved.issued;
      this.#log.info({ identity: this.nodeId.toString(), serial: issued.leaf.serialHex, notAfter: issued.leaf.notAfter.toISOString() }, 'reusing the saved node identity');
    } else {
      if (this.#joinToken === undefined && this.#saTokenFile === undefined) {
        throw new WardError('WARD_PROXY_JOIN_FAILED', `cannot join as ${this.nodeId}: no join token was given (nor a ServiceAccount token file) and ${saved.reason}`);
      }
      // A ServiceAccount token is not one-time: only a join token is ever "spent".
      if (this.#saTokenFile === undefined && this.#tokenSpent) {
        throw new WardError('WARD_PROXY_JOIN_FAILED', `cannot join as ${this.nodeId}: the CA has already answered a join with this token (tokens are one-time); create a new one with \`ward token create\``);
      }
      if (this.#stateDir !== undefined) this.#log.info({ reason: saved.reason }, this.#saTokenFile !== undefined ? 'no usable saved node identity; joining with the ServiceAccount token' : 'no usable saved node identity; joining with the token');
      try {
        issued = await this.#join();
      } catch (err) {
        throw new WardError('WARD_PROXY_JOIN_FAILED', `cannot join as ${this.nodeId} at ${this.#url.origin}: ${joinFailure(err, this.#saTokenFile)}`, { cause: err });
      }
      if (this.#closed) throw new WardError('WARD_PROXY_JOIN_FAILED', 'the identity manager was closed while joining');
      await this.#save(issued);
      this.#log.info({ identity: this.nodeId.toString(), serial: issued.leaf.serialHex, notAfter: issued.leaf.notAfter.toISOString() }, 'joined the mesh');
    }
    if (this.#closed) throw new WardError('WARD_PROXY_JOIN_FAILED', 'the identity manager was closed while starting');
    this.#install(this.#node, issued);
    this.#started = true;
    for (const slot of this.#others()) if (!slot.held && !slot.inFlight) void this.#attempt(slot);
  }

  /** The node's own certificate. Throws WARD_PROXY_IDENTITY_UNAVAILABLE before start() or once expired. */
  node(): HeldIdentity {
    const held = this.#valid(this.#node) as HeldIdentity | undefined;
    if (!held) {
      throw new WardError('WARD_PROXY_IDENTITY_UNAVAILABLE', this.#node.held ? `the node certificate of ${this.nodeId} has expired` : `no node certificate for ${this.nodeId} yet (start() not finished)`);
    }
    return held;
  }

  bundle(): TrustBundle {
    return this.#bundle;
  }

  /**
   * A newer bundle (e.g. from the discovery pool during a root rotation): every held identity's
   * context is rebuilt with it and 'change' emitted for each. Ignored if equal PEM. Certificates
   * (and so serials) are unchanged.
   */
  setBundle(b: TrustBundle): void {
    if (b.trustDomain !== this.#trustDomain) {
      throw new WardError('WARD_PKI_BUNDLE_INVALID', `a trust bundle for ${b.trustDomain} cannot replace the bundle of ${this.#trustDomain}`);
    }
    const pem = b.toPem();
    if (pem === this.#bundlePem) return;
    this.#bundle = b;
    this.#bundlePem = pem;
    this.#log.info({ roots: b.roots.length }, 'trust bundle updated; rebuilding secure contexts');
    const changed: string[] = [];
    for (const slot of [this.#node, ...this.#workloads.values()]) {
      const held = this.#valid(slot) as HeldIdentity | undefined;
      if (!held) continue;
      slot.held = hold(held.id, held.credentials.key, held.credentials.chainPem, held, b);
      changed.push(slot.name);
    }
    for (const name of changed) this.#emit('change', name);
  }

  /**
   * The workload identities wanted now (from the pool's 'workload' resources). Obtains missing ones
   * at once (bounded by ISSUE_CONCURRENCY), drops unwanted ones. Idempotent. Identities that are not
   * workload IDs of this trust domain are ignored (the CA would never grant them).
   */
  setWorkloads(ids: readonly SpiffeId[]): void {
    if (this.#closed) return;
    const wanted = new Map<string, SpiffeId>();
    for (const id of ids) {
      if (!id.memberOf(this.#trustDomain) || id.workload === undefined) {
        this.#log.warn({ identity: id.toString() }, 'ignoring a wanted identity that is not a workload of this trust domain');
        continue;
      }
      wanted.set(id.toString(), id);
    }
    this.#reconcile(this.#workloads, new Map([...wanted].map(([name, id]) => [name, () => newSlot(id, false)])), 'workload identity no longer wanted on this node; dropped');
  }

  /**
   * The hosts wanted now for internal-name server certificates (the mesh ingress's route hosts that
   * have no certificate of their own): each is obtained from the CA with the held identity (the CA
   * grants only the ingress, and only its route hosts), renewed like every certificate here, and
   * reported by 'change'/'lost' with the host as the name. Idempotent; unwanted hosts are dropped.
   */
  setServerNames(hosts: readonly string[]): void {
    if (this.#closed) return;
    this.#reconcile(this.#names, new Map(hosts.map((host) => [host, (): Slot => ({ id: this.nodeId, name: host, host, isNode: false, failures: 0, renewals: 0 })])), 'internal-name certificate no longer wanted; dropped');
  }

  /** Drops the slots of `map` not in `wanted`, adds (and starts obtaining) the new ones. */
  #reconcile(map: Map<string, Slot>, wanted: ReadonlyMap<string, () => Slot>, droppedMessage: string): void {
    const lost: string[] = [];
    for (const [name, slot] of map) {
      if (wanted.has(name)) continue;
      map.delete(name);
      this.#disarm(slot.timer);
      this.#disarm(slot.expiryTimer);
      this.#expiry?.remove({ identity: name });
      if (this.#valid(slot)) lost.push(name);
      this.#log.info({ identity: name }, droppedMessage);
    }
    const added: Slot[] = [];
    for (const [name, make] of wanted) {
      if (map.has(name)) continue;
      const slot = make();
      map.set(name, slot);
      added.push(slot);
    }
    if (this.#started) for (const slot of added) void this.#attempt(slot);
    for (const name of lost) this.#emit('lost', name);
  }

  /** The valid certificate for an identity (workload or node); undefined when none or expired (checked against the clock). */
  get(identity: string): HeldIdentity | undefined {
    const slot = identity === this.#node.name ? this.#node : this.#workloads.get(identity);
    return slot ? (this.#valid(slot) as HeldIdentity | undefined) : undefined;
  }

  /** The valid internal-name certificate for a host (setServerNames); undefined when none or expired. */
  serverName(host: string): HeldServerName | undefined {
    const slot = this.#names.get(host);
    return slot ? (this.#valid(slot) as HeldServerName | undefined) : undefined;
  }

  /** True when every wanted identity and internal name has a valid certificate (the node's too). */
  ready(): boolean {
    if (!this.#valid(this.#node)) return false;
    for (const slot of this.#others()) if (!this.#valid(slot)) return false;
    return true;
  }

  /** Node first, then workloads sorted by identity, then internal names sorted by host. */
  status(): IdentityStatus[] {
    const sorted = (m: Map<string, Slot>) => [...m.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return [this.#node, ...sorted(this.#workloads), ...sorted(this.#names)].map((s) => this.#statusOf(s));
  }

  #others(): Slot[] {
    return [...this.#workloads.values(), ...this.#names.values()];
  }

  /**
   * Renews every held certificate now, and retries every wanted identity that has none (admin
   * endpoint; "rotate under load"). Resolves when all attempts finished; a failure keeps the old
   * certificate and schedules a retry as usual. An attempt already in flight is joined.
   */
  async renewAll(): Promise<void> {
    if (this.#closed || !this.#started) return;
    await Promise.all([this.#node, ...this.#others()].map((s) => this.#attempt(s)));
  }

  /** Cancels every timer and in-flight request. Idempotent; resolves once in-flight work has unwound. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    for (const t of this.#armed) this.#timers.clear(t);
    this.#armed.clear();
    this.#abort.abort();
    const pending = [this.#starting, this.#node.inFlight, ...this.#others().map((s) => s.inFlight)];
    this.#closing = Promise.allSettled(pending).then(() => undefined);
    return this.#closing;
  }

  // --- life cycle of one identity ---------------------------------------------------------------

  #valid(slot: Slot): HeldIdentity | HeldServerName | undefined {
    const held = slot.held;
    return held && this.#clock.now() < held.notAfter.getTime() ? held : undefined;
  }

  #statusOf(slot: Slot): IdentityStatus {
    const held = slot.held;
    const state: IdentityStatus['state'] = this.#valid(slot) ? 'valid' : held ? 'expired' : slot.failures > 0 ? 'failed' : 'pending';
    const s: IdentityStatus = { identity: slot.name, state, renewals: slot.renewals };
    if (held) {
      s.serial = held.serial;
      s.notAfter = held.notAfter.toISOString();
    }
    if (slot.nextAt !== undefined) s.renewAt = new Date(slot.nextAt).toISOString();
    if (slot.lastError !== undefined) s.lastError = slot.lastError;
    return s;
  }

  /** One attempt to obtain or renew; never rejects (the outcome is recorded on the slot). */
  #attempt(slot: Slot): Promise<void> {
    if (slot.inFlight) return slot.inFlight;
    this.#disarm(slot.timer);
    slot.timer = undefined;
    slot.nextAt = undefined;
    const run = async (): Promise<void> => {
      let issued: Issued;
      try {
        issued = await this.#gate.run(() => this.#obtain(slot));
      } catch (err) {
        if (!this.#current(slot)) return;
        this.#renewalsTotal?.inc({ result: 'failed' });
        this.#failed(slot, err);
        return;
      }
      if (!this.#current(slot)) return;
      this.#renewalsTotal?.inc({ result: 'ok' });
      this.#install(slot, issued);
    };
    const p = run()
      .catch((err: unknown) => this.#log.error({ err, identity: slot.name }, 'BUG: certificate attempt failed unexpectedly'))
      .finally(() => {
        if (slot.inFlight === p) slot.inFlight = undefined;
      });
    slot.inFlight = p;
    return p;
  }

  /** False once closed or the identity was dropped: a late result is discarded. */
  #current(slot: Slot): boolean {
    return !this.#closed && (slot === this.#node || (slot.host !== undefined ? this.#names : this.#workloads).get(slot.name) === slot);
  }

  async #obtain(slot: Slot): Promise<Issued> {
    if (!this.#current(slot)) throw new WardError('WARD_CA_UNREACHABLE', 'cancelled');
    if (!slot.isNode) {
      const node = this.#valid(this.#node);
      if (!node) throw new WardError('WARD_PROXY_IDENTITY_UNAVAILABLE', `the node certificate of ${this.nodeId} is expired or missing`);
      if (slot.host !== undefined) return this.#issueServerName((node as HeldIdentity).credentials, slot.host);
      return this.#issue((node as HeldIdentity).credentials, slot.id);
    }
    // The node renews itself with its current credentials (even an expired one: the CA then says
    // 401, which is what decides whether the join token may be tried).
    const current = this.#node.held;
    let issued: Issued;
    try {
      if (!current) throw new WardError('WARD_PROXY_IDENTITY_UNAVAILABLE', 'no node certificate');
      issued = await this.#issue((current as HeldIdentity).credentials, undefined);
    } catch (err) {
      const unauthenticated = !current || (err instanceof CaRefusalError && err.status === 401);
      if (!unauthenticated || !this.#tokenUsable()) throw err;
      this.#log.warn({ identity: this.nodeId.toString(), err: (err as Error).message }, this.#saTokenFile !== undefined ? 'the CA did not accept the node certificate; joining again with the ServiceAccount token' : 'the CA did not accept the node certificate; joining again with the join token');
      issued = await this.#join();
    }
    if (this.#current(slot)) await this.#save(issued);
    return issued;
  }

  #install(slot: Slot, issued: Issued): void {
    const renewal = slot.held !== undefined;
    const { key, chainPem, leaf } = issued;
    const v = { serial: leaf.serialHex, notBefore: leaf.notBefore, notAfter: leaf.notAfter };
    const held = slot.host !== undefined ? Object.freeze({ host: slot.host, chainPem, key, ...v }) : hold(slot.id, key, chainPem, v, this.#bundle);
    slot.held = held;
    slot.failures = 0;
    slot.lastError = undefined;
    if (renewal) slot.renewals++;
    this.#expiry?.set({ identity: slot.name }, held.notAfter.getTime() / 1000);
    const now = this.#clock.now();
    this.#disarm(slot.expiryTimer);
    slot.expiryTimer = this.#arm(() => this.#onExpiry(slot, held), held.notAfter.getTime() - now);
    const renewAt = this.#renewAt(held);
    this.#schedule(slot, renewAt - now);
    this.#log.info(
      { identity: slot.name, serial: held.serial, notAfter: held.notAfter.toISOString(), renewAt: new Date(slot.nextAt ?? renewAt).toISOString() },
      renewal ? 'certificate renewed' : 'certificate obtained',
    );
    this.#emit('change', slot.name);
  }

  /** notBefore + (0.5 ± jitter) × lifetime. */
  #renewAt(held: { notBefore: Date; notAfter: Date }): number {
    const from = held.notBefore.getTime();
    const life = held.notAfter.getTime() - from;
    const r = Math.min(1, Math.max(0, this.#random()));
    return from + Math.floor(life * (0.5 + (2 * r - 1) * RENEW_JITTER));
  }

  #failed(slot: Slot, err: unknown): void {
    slot.failures++;
    slot.lastError = describe(err);
    const delay = this.#retryDelay(slot);
    this.#schedule(slot, delay);
    const fields = { identity: slot.name, failures: slot.failures, retryInMs: delay, err: slot.lastError, serial: slot.held?.serial };
    if (!slot.isNode && isWardError(err, 'WARD_CA_FORBIDDEN')) {
      this.#log.warn(fields, 'the CA refused this workload identity for this node (the pool may have moved it); retrying');
    } else if (this.#valid(slot)) {
      this.#log.warn(fields, 'certificate renewal failed; keeping the still-valid certificate and retrying');
    } else {
      this.#log.warn(fields, 'obtaining a certificate failed; retrying');
    }
  }

  /**
   * Full jitter (uniform in [0, min(max, initial·2^(n-1))]) so a CA outage does not bring every
   * proxy back at the same instant; while a still-valid certificate is held the delay is clamped to
   * half of its remaining life, so attempts keep coming before it expires (ever closer together,
   * until the remainder is too short to matter and the expiry is reported).
   */
  #retryDelay(slot: Slot): number {
    const ceiling = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** Math.min(slot.failures - 1, 30));
    let delay = Math.floor(Math.min(1, Math.max(0, this.#random())) * ceiling);
    const held = this.#valid(slot);
    if (held) {
      const half = Math.floor((held.notAfter.getTime() - this.#clock.now()) / 2);
      if (half >= MIN_CLAMPED_RETRY_MS) delay = Math.min(delay, half);
    }
    return delay;
  }

  #schedule(slot: Slot, delayMs: number): void {
    this.#disarm(slot.timer);
    if (this.#closed) return;
    const delay = Math.max(0, delayMs);
    slot.nextAt = this.#clock.now() + delay;
    slot.timer = this.#arm(() => {
      slot.timer = undefined;
      void this.#attempt(slot);
    }, delay);
  }

  #onExpiry(slot: Slot, held: HeldIdentity | HeldServerName): void {
    slot.expiryTimer = undefined;
    if (slot.held !== held || !this.#current(slot)) return;
    const left = held.notAfter.getTime() - this.#clock.now();
    if (left > 0) {
      // The timer fired early (timers are not exact): look again at the real expiry.
      slot.expiryTimer = this.#arm(() => this.#onExpiry(slot, held), left);
      return;
    }
    this.#log.error({ identity: slot.name, serial: held.serial, notAfter: held.notAfter.toISOString(), err: slot.lastError }, 'certificate expired without renewal; the identity is unavailable until it is renewed');
    this.#emit('lost', slot.name);
  }

  #emit(event: keyof IdentityEvents, identity: string): void {
    try {
      this.emit(event, identity);
    } catch (err) {
      // The state has changed either way; a throwing listener is the caller's bug.
      this.#log.error({ err, identity, event }, 'an identity listener threw');
    }
  }

  // --- timers -----------------------------------------------------------------------------------

  #arm(fn: () => void, ms: number): unknown {
    if (this.#closed) return undefined;
    const handle: unknown = this.#timers.set(() => {
      this.#armed.delete(handle);
      fn();
    }, Math.min(MAX_TIMER_MS, Math.max(0, ms)));
    this.#armed.add(handle);
    return handle;
  }

  #disarm(handle: unknown): void {
    if (handle === undefined || !this.#armed.delete(handle)) return;
    this.#timers.clear(handle);
  }

  // --- the CA -----------------------------------------------------------------------------------

  /** A join token until the CA has answered with it; a ServiceAccount token file always. */
  #tokenUsable(): boolean {
    return this.#saTokenFile !== undefined || (this.#joinToken !== undefined && !this.#tokenSpent);
  }

  async #join(): Promise<Issued> {
    if (this.#saTokenFile !== undefined) return this.#joinAttested(this.#saTokenFile);
    const token = this.#joinToken;
    if (token === undefined || this.#tokenSpent) throw new WardError('WARD_PROXY_JOIN_FAILED', 'no unused join token');
    const key = PrivateKey.generate();
    // No URI in the CSR: the CA names the node after the token, and a token made for another node
    // is then reported as exactly that (below) rather than as a refused CSR.
    // Once the CA has answered, the token is consumed (or was never valid): it is never sent again.
    // A network failure leaves it unused.
    const body = await this.#post('/v1/join', { token, csr: createCsr(key) }, undefined, () => {
      this.#tokenSpent = true;
    });
    return this.#accept(body, key, this.nodeId);
  }

  /**
   * Kubernetes mode: the token is read now (the kubelet replaces it well before it expires), sent
   * with the node name (the CA refuses a ward-proxy pod on another node), and the CA names the
   * identity; `#accept` checks it is ours. A failure leaves nothing spent: the next join reads the
   * file again.
   */
  async #joinAttested(file: string): Promise<Issued> {
    let text: string;
    try {
      const fh = await open(file, 'r');
      try {
        const buf = Buffer.alloc(MAX_SERVICE_ACCOUNT_TOKEN_BYTES + 1);
        const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
        if (bytesRead > MAX_SERVICE_ACCOUNT_TOKEN_BYTES) throw new Error(`it is larger than ${MAX_SERVICE_ACCOUNT_TOKEN_BYTES} bytes`);
        text = buf.subarray(0, bytesRead).toString('utf8').trim();
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw new WardError('WARD_PROXY_JOIN_FAILED', `cannot read the ServiceAccount token file ${file}: ${(err as Error).message}`, { cause: err });
    }
    if (text.length === 0) throw new WardError('WARD_PROXY_JOIN_FAILED', `the ServiceAccount token file ${file} is empty`);
    const key = PrivateKey.generate();
    const body: Record<string, string> = { serviceAccountToken: text, csr: createCsr(key) };
    if (this.nodeId.nodeName !== undefined) body.node = this.nodeId.nodeName;
    return this.#accept(await this.#post('/v1/join', body, undefined), key, this.nodeId);
  }

  async #issue(creds: Credentials, identity: SpiffeId | undefined): Promise<Issued> {
    const key = PrivateKey.generate();
    const id = identity ?? creds.id;
    const body: Record<string, string> = { csr: createCsr(key, { uri: id.toString() }) };
    if (identity) body.identity = identity.toString();
    if (this.#ttl !== undefined) body.ttl = this.#ttl;
    return this.#accept(await this.#post('/v1/issue', body, creds), key, id);
  }

  /** An internal-name server certificate for `host` (the ingress; see setServerNames). */
  async #issueServerName(creds: Credentials, host: string): Promise<Issued> {
    const key = PrivateKey.generate();
    const body: Record<string, unknown> = { csr: createCsr(key), dnsNames: [host] };
    if (this.#ttl !== undefined) body.ttl = this.#ttl;
    const answer = (await this.#post('/v1/issue', body, creds)) as Record<string, unknown> | undefined;
    if (typeof answer !== 'object' || answer === null || typeof answer.certificate !== 'string') {
      throw new WardError('WARD_CA_UNREACHABLE', 'the CA answered without a certificate');
    }
    return checkServerNameIssued(answer.certificate, key, host, this.#bundle, this.#clock.now());
  }

  /**
   * Checks an issuance answer: the chain verifies (RFC 5280 + X.509-SVID rules) at the current
   * time against the bundle held, widened by the roots of the bundle in the answer (during a root
   * rotation the CA may already issue from a root the pool has not pushed yet; the answer comes over
   * TLS from the CA verified with our bundle and secure naming, so it may vouch for its own roots),
   * the leaf is for `expectedId` and for our key.
   */
  async #accept(body: unknown, key: PrivateKey, expectedId: SpiffeId): Promise<Issued> {
    const b = body as Record<string, unknown> | undefined;
    if (typeof b !== 'object' || b === null || typeof b.certificate !== 'string') {
      throw new WardError('WARD_CA_UNREACHABLE', 'the CA answered without a certificate');
    }
    let verifyBundle = this.#bundle;
    if (typeof b.bundle === 'string') {
      try {
        const theirs = TrustBundle.fromPem(this.#trustDomain, b.bundle);
        verifyBundle = new TrustBundle(this.#trustDomain, [...this.#bundle.roots, ...theirs.roots]);
      } catch (err) {
        this.#log.warn({ err: (err as Error).message }, 'the CA answered with an unreadable bundle; verifying against the bundle held');
      }
    }
    return checkIssued(b.certificate, key, expectedId, verifyBundle, this.#clock.now());
  }

  /** One POST on a fresh connection (no agent: no session is ever resumed, no credential shared). */
  #post(path: string, body: object, creds: Credentials | undefined, onAnswer?: () => void): Promise<unknown> {
    const payload = Buffer.from(JSON.stringify(body));
    return new Promise<unknown>((resolve, reject) => {
      if (this.#closed) return reject(new WardError('WARD_CA_UNREACHABLE', 'the identity manager is closed'));
      let settled = false;
      const settle = (err: Error | undefined, value?: unknown): void => {
        if (settled) return;
        settled = true;
        this.#disarm(timer);
        if (err) reject(err);
        else resolve(value);
      };
      const req = request({
        ...(meshClientOptions({ bundle: this.#bundle, expectedId: this.#caId, creds }) as RequestOptions),
        host: this.#url.hostname.replace(/^\[|\]$/g, ''),
        port: this.#url.port || 443,
        method: 'POST',
        path: this.#url.pathname.replace(/\/+$/, '') + path,
        headers: { 'content-type': 'application/json', 'content-length': payload.length, accept: 'application/json' },
        agent: false,
        signal: this.#abort.signal,
      });
      // Why this side destroyed the request: the request then errors with a generic message.
      let timedOut: WardError | undefined;
      const timer = this.#arm(() => {
        timedOut = new WardError('WARD_CA_UNREACHABLE', `no answer from the CA at ${this.#url.host} within ${CA_REQUEST_TIMEOUT_MS} ms`);
        req.destroy(timedOut);
      }, CA_REQUEST_TIMEOUT_MS);
      // TCP, TLS and secure naming (a server that is not spiffe://TD/ward/ca) all fail here.
      req.once('error', (err) => settle(timedOut ?? new WardError('WARD_CA_UNREACHABLE', `the CA at ${this.#url.host} could not be reached or verified: ${err.message}`, { cause: err })));
      req.once('response', (res) => {
        onAnswer?.();
        res.on('error', () => undefined);
        readBody(res, MAX_CA_RESPONSE_BYTES).then(
          (text) => {
            const status = res.statusCode ?? 0;
            let json: unknown;
            try {
              json = JSON.parse(text);
            } catch {
              json = undefined;
            }
            if (status === 200 && json !== undefined) return settle(undefined, json);
            if (status === 200) return settle(new WardError('WARD_CA_UNREACHABLE', 'the CA answered 200 with a body that is not JSON'));
            settle(refusal(status, json));
          },
          (err: unknown) => {
            req.destroy();
            const message = err instanceof BodyTooLargeError ? `the CA's answer exceeds ${MAX_CA_RESPONSE_BYTES} bytes` : `the CA's answer was cut off: ${(err as Error).message}`;
            settle(new WardError('WARD_CA_UNREACHABLE', message, { cause: err }));
          },
        );
      });
      req.end(payload);
    });
  }

  // --- the state directory ----------------------------------------------------------------------

  /** The saved node identity when it is usable, else why not (for the log and the join error). */
  async #loadSaved(): Promise<{ issued: Issued; reason?: undefined } | { issued?: undefined; reason: string }> {
    if (this.#stateDir === undefined) return { reason: 'no state directory is configured' };
    const path = join(this.#stateDir, NODE_IDENTITY_FILE);
    await this.#sweepTemporaries();
    let text: string;
    try {
      const st = await stat(path);
      if ((st.mode & 0o077) !== 0) {
        this.#log.warn({ path, mode: (st.mode & 0o777).toString(8) }, 'the saved node key is readable by other users; not using it');
        return { reason: `${path} is readable by other users (mode ${(st.mode & 0o777).toString(8)})` };
      }
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { reason: `nothing is saved in ${this.#stateDir}` };
      this.#log.warn({ path, err: (err as Error).message }, 'cannot read the saved node identity');
      return { reason: `${path} cannot be read (${(err as Error).message})` };
    }
    try {
      const { key, chainPem } = splitKeyAndChain(text);
      // Only the bundle held counts here: a saved identity from another CA (a reinitialized control
      // plane) is refused, and the token (if any) takes over.
      const issued = await checkIssued(chainPem, key, this.nodeId, this.#bundle, this.#clock.now());
      return { issued };
    } catch (err) {
      this.#log.warn({ path, err: (err as Error).message }, 'the saved node identity is not usable');
      return { reason: `the identity saved in ${path} is not usable (${(err as Error).message})` };
    }
  }

  /** A crash during a save can leave a temporary file (holding a key): remove them at start. */
  async #sweepTemporaries(): Promise<void> {
    const dir = this.#stateDir!;
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    for (const name of names) {
      if (name.startsWith(`${NODE_IDENTITY_FILE}.`) && name.endsWith('.tmp')) await rm(join(dir, name), { force: true }).catch(() => undefined);
    }
  }

  /** Saves the node's key and chain atomically (tmp → fsync → rename → fsync dir), mode 0600. */
  async #save(issued: Issued): Promise<void> {
    if (this.#stateDir === undefined) return;
    const path = join(this.#stateDir, NODE_IDENTITY_FILE);
    try {
      await mkdir(this.#stateDir, { recursive: true, mode: STATE_DIR_MODE });
      const chain = issued.chainPem.endsWith('\n') ? issued.chainPem : `${issued.chainPem}\n`;
      await writeFileAtomic(path, chain + issued.key.exportPem(), KEY_FILE_MODE);
    } catch (err) {
      // The certificate is held in memory either way; only a restart would need a token again.
      this.#log.error({ path, err: (err as Error).message }, 'could not save the node identity; a restart will need a join token');
    }
  }
}

// --- helpers ------------------------------------------------------------------------------------

function newSlot(id: SpiffeId, isNode: boolean): Slot {
  return { id, name: id.toString(), isNode, failures: 0, renewals: 0 };
}

/** The HeldIdentity for a certificate and a bundle: the one secure context is built here, once. */
function hold(
  id: SpiffeId,
  key: PrivateKey,
  chainPem: string,
  v: { serial: string; notBefore: Date; notAfter: Date },
  bundle: TrustBundle,
): HeldIdentity {
  const credentials: Credentials = Object.freeze({ id, chainPem, key, bundle });
  // meshServerOptions: TLS 1.3 only, chain + key, ca = bundle, SSL_OP_NO_TICKET. Its requestCert /
  // rejectUnauthorized belong to the server object, not the context; createSecureContext ignores them.
  const context = createSecureContext(meshServerOptions(credentials, { requireClientCert: true }));
  return Object.freeze({ id, credentials, context, serial: v.serial, notBefore: v.notBefore, notAfter: v.notAfter });
}

/** A chain is usable for `key` as `expectedId`: it verifies against `bundle` at `now`, leaf holds our key. */
async function checkIssued(chainPem: string, key: PrivateKey, expectedId: SpiffeId, bundle: TrustBundle, now: number): Promise<Issued> {
  let chain: Certificate[];
  try {
    chain = parseCertificates(chainPem);
  } catch (err) {
    throw new WardError('WARD_PKI_CERT_INVALID', `the certificate chain cannot be parsed: ${(err as Error).message}`, { cause: err });
  }
  if (chain.length === 0) throw new WardError('WARD_PKI_CERT_INVALID', 'the certificate chain is empty');
  const leaf = chain[0];
  if (!leaf.publicKeyDer.equals(key.publicKeyDer())) throw new WardError('WARD_PKI_KEY_MISMATCH', 'the certificate is not for the key generated for it');
  const named = leaf.uris.length === 1 ? leaf.uris[0] : undefined;
  if (named !== expectedId.toString()) {
    throw new WardError('WARD_PKI_SVID_INVALID', `the certificate is for ${named ?? 'no single identity'}, not ${expectedId}${expectedId.nodeName !== undefined && named ? ' (a join token made for another node?)' : ''}`);
  }
  const r = await verifySvid(chain, bundle, new Date(now), { usage: 'any', expectedId });
  if (!r.ok) throw new WardError(r.reason === 'unexpected-identity' ? 'WARD_PKI_SVID_INVALID' : 'WARD_PKI_CHAIN_INVALID', `the certificate does not verify against the trust bundle (${r.reason}): ${r.detail}`);
  return { key, chainPem: chainPem.trim() + '\n', leaf };
}

/** An internal-name chain is usable for `key` and `host`: it is for the key, names the host, and validates for serverAuth against `bundle` at `now`. */
async function checkServerNameIssued(chainPem: string, key: PrivateKey, host: string, bundle: TrustBundle, now: number): Promise<Issued> {
  let chain: Certificate[];
  try {
    chain = parseCertificates(chainPem);
  } catch (err) {
    throw new WardError('WARD_PKI_CERT_INVALID', `the certificate chain cannot be parsed: ${(err as Error).message}`, { cause: err });
  }
  const [leaf, ...intermediates] = chain;
  if (leaf === undefined) throw new WardError('WARD_PKI_CERT_INVALID', 'the certificate chain is empty');
  if (!leaf.publicKeyDer.equals(key.publicKeyDer())) throw new WardError('WARD_PKI_KEY_MISMATCH', 'the certificate is not for the key generated for it');
  if (!leaf.dnsNames.includes(host) || leaf.uris.length > 0) throw new WardError('WARD_PKI_CERT_INVALID', `the certificate is not an internal-name certificate for ${host}`);
  const r = await validatePath({ leaf, intermediates, roots: [...bundle.roots], at: new Date(now), extendedKeyUsage: 'serverAuth' });
  if (!r.ok) throw new WardError('WARD_PKI_CHAIN_INVALID', `the certificate does not verify against the trust bundle (${r.reason}): ${r.detail}`);
  return { key, chainPem: chainPem.trim() + '\n', leaf };
}

/** The CA's error answer as a CaRefusalError with its code (when it is one of Ward's). */
function refusal(status: number, json: unknown): CaRefusalError {
  const e = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const caCode = typeof e?.code === 'string' ? e.code : undefined;
  const code: WardErrorCode = caCode !== undefined && Object.hasOwn(ERROR_CODES, caCode) ? (caCode as WardErrorCode) : 'WARD_CA_UNREACHABLE';
  const message = typeof e?.message === 'string' ? e.message.slice(0, 300) : 'no error message';
  return new CaRefusalError(code, status, `the CA refused the request (${status} ${caCode ?? 'unknown code'}): ${message}`);
}

function describe(err: unknown): string {
  if (err instanceof WardError) return `${err.code}: ${err.message}`;
  return (err as Error)?.message ?? String(err);
}

/** Why a join failed, in the words an operator needs. */
function joinFailure(err: unknown, saTokenFile: string | undefined): string {
  if (err instanceof CaRefusalError && saTokenFile !== undefined) {
    switch (err.code) {
      case 'WARD_CA_TOKEN_INVALID':
        return `the CA did not accept the ServiceAccount token in ${saTokenFile} (TokenReview did not authenticate it for audience "ward": expired, or not the projected token with audience ward)`;
      case 'WARD_CA_FORBIDDEN':
        return `the CA refused this pod (it must be a Running ward-proxy pod on this node, or the ward-ingress pod, in ward-system; the CA's log names the rule): ${err.message}`;
      case 'WARD_CA_JOIN_UNSUPPORTED':
        return 'the CA does not accept ServiceAccount tokens (it does not run in Kubernetes mode); join with a join token instead';
      case 'WARD_CA_UNAVAILABLE':
        return 'the CA could not check the ServiceAccount token with the Kubernetes API just now; retry later';
      default:
        return err.message;
    }
  }
  if (err instanceof CaRefusalError) {
    if (err.code === 'WARD_CA_TOKEN_INVALID') return 'the CA refused the join token (unknown, expired or already used); create a new one with `ward token create`';
    return err.message;
  }
  if (isWardError(err, 'WARD_CA_UNREACHABLE')) return err.message;
  return describe(err);
}

/** A metric already in the registry (another manager of this process made it) or a new one. */
function registered<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  // The rename is durable only once the directory entry is.
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** At most `limit` tasks at once; the rest wait in order (the queue is bounded by the callers: one per identity). */
class Gate {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(limit: number) {
    this.#free = limit;
  }
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}
