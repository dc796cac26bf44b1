/**
 * CertificateStore: the ingress's external (WebPKI) certificates, one per host, chosen by SNI.
 *
 * Sources are PEM pairs (chain leaf first + an unencrypted EC or RSA key) or PKCS#12 bundles. Every
 * load, at start and on every reload, validates the material before it can be served:
 *   - the private key belongs to the leaf (and when it belongs to another certificate of the file,
 *     the refusal says the chain is out of order);
 *   - the chain is in order: each certificate is followed by the one that issued it (names and
 *     signature checked by OpenSSL); intermediates' own dates are not judged, because real chains
 *     ship expired cross-signs on purpose (clients build around them);
 *   - the leaf is valid now on the injected clock (notBefore <= now < notAfter);
 *   - the leaf is for TLS servers: when it has an extendedKeyUsage, serverAuth is in it;
 *   - the leaf covers the host. An exact host is checked as a browser does: DNS subjectAltNames
 *     only (never the subject CN), a SAN wildcard covering one label counts. A wildcard host
 *     `*.example.com` is served for every name one label under example.com, so the certificate must
 *     carry that very wildcard among its DNS names: a certificate for a few names under it would
 *     fail the handshake for all the others.
 *   - OpenSSL accepts the pair into a SecureContext built with the store's `tls` settings.
 * PKCS#12: node:crypto has no PKCS#12 parser, so the bundle goes to OpenSSL as it is
 * (tls.createSecureContext({ pfx, passphrase })); OpenSSL's PKCS12_parse pairs the key with the
 * certificate that X509_check_private_key accepts, and Node refuses a bundle without a key. The leaf
 * is then read back from the context through a TLSSocket that never connects
 * (`new TLSSocket(null, { secureContext, isServer: true }).getCertificate()`, the certificate the
 * socket would present), and judged like a PEM leaf (dates, serverAuth, host). The order of the
 * bundle's other certificates is OpenSSL's business: it sends them as the chain.
 *
 * At start, any source that fails is an error naming host, file and reason (like config: the ingress
 * does not start half-configured). After start, a change that fails validation is refused: logged at
 * warn with host, file and reason (never key material), counted, emitted as 'refused', and the
 * certificate in use stays. A success builds a new SecureContext once and swaps it in: connections
 * already open keep the context they were made with; new handshakes get the new one.
 *
 * Watching (rename-safe, like discovery's LocalFileSource):
 *   - fs.watch on each DIRECTORY holding a source file, filtered to the files' names: editors, `mv`
 *     and cert-manager replace files by renaming, and a watch on the file itself goes deaf after the
 *     first replacement. Kubernetes Secret volumes swap a `..data` symlink instead of the files, so
 *     names starting with `..data` count too.
 *   - a stat poll (inode, size, mtime, ctime) every `pollIntervalMs` for file systems where fs.watch
 *     is silent (network mounts, some overlays).
 *   - both only schedule a pass `debounceMs` after the first notice; notices in between join it.
 * A pass reads both files of every source and validates them together, so a pair caught half
 * replaced (new certificate, old key) is simply refused, and the next change (the key arriving)
 * triggers the pass that loads it. Passes are serialized: one in flight, anything arriving meanwhile
 * asks for exactly one more, so the last state of the files is always the last one judged.
 * A pass skips a source whose bytes are those being served, and (except for an explicit reload())
 * those last refused, so an unrelated change in the directory does not repeat a refusal.
 *
 * Dynamic sources (setDynamicHosts): hosts that come and go at run time, each with a label saying
 * where its certificate comes from (`Secret ward-system/shop-tls`). Like internal sources they are
 * handed over in memory with provide() and judged by the same code as a PEM pair from disk. A host
 * added waits for provide(); a host removed is no longer served (open connections keep theirs); a
 * host whose label changed forgets the certificate of its old source. A host a static source (file
 * or internal) serves stays with the static source: the dynamic one is ignored, with a warning.
 *
 * Note for the listener: OpenSSL fixes the protocol versions and cipher list of a connection from
 * the server's own context before SNI is seen; a context switched in by SNICallback brings its
 * certificate, not those. Pass the same protocol/cipher settings to tls.createServer as to `tls` here.
 */
import { EventEmitter } from 'node:events';
import { createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { createSecureContext, TLSSocket, type SecureContext, type SecureContextOptions } from 'node:tls';
import { Counter, Gauge, type Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.js';
import { systemTimers, type Timers } from '../core/control/index.js';
import { bug, WardError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { parseCertificate, parseCertificates, type Certificate } from '../core/pki/index.js';

export type CertificateSource =
  /** A PEM chain (leaf first, then intermediates) and a PEM private key (EC or RSA, unencrypted). */
  | { host: string; certFile: string; keyFile: string }
  /** A PKCS#12 bundle; the passphrase file's single trailing newline is not part of the passphrase. */
  | { host: string; pfxFile: string; passphraseFile?: string }
  /**
   * An internal-name certificate from Ward's CA, handed over in memory with provide() (the ingress
   * obtains and renews it); nothing is read from disk and nothing is served until it arrives.
   */
  | { host: string; internal: true };

/** ServedCertificate.source of an internal-name certificate. */
export const INTERNAL_SOURCE = "Ward's CA (internal name)";

/** A certificate being served. Immutable; a reload replaces the whole object. */
export interface ServedCertificate {
  /** The source's host, normalized (lowercase, no trailing dot); `*.example.com` for a wildcard. */
  host: string;
  context: SecureContext;
  notAfter: Date;
  /** The leaf's subject, e.g. "CN=shop.example.com". */
  subject: string;
  /** SHA-256 of the leaf's DER, uppercase hex with colons (as `openssl x509 -fingerprint -sha256`). */
  fingerprint: string;
  /**
   * Where the certificate came from: certFile or pfxFile (absolute), INTERNAL_SOURCE, or a dynamic
   * source's label (e.g. `Secret ward-system/shop-tls`).
   */
  source: string;
}

export interface CertificateStoreEvents {
  /** A certificate for host was loaded (at start, and on each accepted change). */
  loaded: [host: string];
  /** A change for host was refused; the certificate in use, if any, stays. */
  refused: [host: string, reason: string];
}

export interface CertificateStoreOptions {
  sources: readonly CertificateSource[];
  /** Protocol/cipher settings applied to every context (not cert/key/pfx/passphrase: those come from the sources). */
  tls: SecureContextOptions;
  /** Validity is judged at clock.now(). */
  clock?: Clock;
  logger: Logger;
  /** When given: ward_ingress_certificate_reloads_total and ward_ingress_certificate_expiry_timestamp_seconds. */
  registry?: Registry;
  /** fs.watch the source files' directories (default true). */
  watch?: boolean;
  /** Stat poll interval in ms, the fallback to fs.watch; 0 disables it. Default 2000. */
  pollIntervalMs?: number;
  /** Delay between the first change notice and the pass that reads the files. Default 100. */
  debounceMs?: number;
  timers?: Timers;
}

/** A certificate, key or PKCS#12 file larger than this is refused. */
export const MAX_CERTIFICATE_FILE_BYTES = 1024 * 1024;
/** A passphrase file larger than this is refused. */
export const MAX_PASSPHRASE_FILE_BYTES = 4096;

const DEFAULT_POLL_MS = 2000;
const DEFAULT_DEBOUNCE_MS = 100;
/** At most this many of a certificate's names are quoted in a "does not cover" refusal. */
const MAX_NAMES_IN_REASON = 10;
/** Options that belong to the sources, not to the shared `tls` settings. */
const SOURCE_OPTIONS = ['cert', 'key', 'pfx', 'passphrase'] as const;

type Spec =
  | { kind: 'pem'; host: string; certFile: string; keyFile: string }
  | { kind: 'pkcs12'; host: string; pfxFile: string; passphraseFile?: string }
  | { kind: 'internal'; host: string }
  | { kind: 'dynamic'; host: string; label: string };

interface SourceState {
  readonly spec: Spec;
  served?: ServedCertificate;
  /** Digest of the bytes being served, and of the bytes last refused. */
  loadedDigest?: string;
  refusedDigest?: string;
}

interface FileSignature {
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

/** Why a source's files cannot be served; `file` is the one at fault. */
class Refusal extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(reason);
  }
}

export class CertificateStore extends EventEmitter<CertificateStoreEvents> {
  /** The sources given at construction (files and internal names), in their order. */
  readonly #sources: SourceState[];
  /** Sources set at run time (setDynamicHosts): normalized host → source. */
  #dynamic = new Map<string, SourceState>();
  /** Dynamic hosts ignored because a static source has them, so each is warned about once. */
  #shadowed = new Set<string>();
  /** Exact host → source; wildcard sources by the part after "*." (example.com for *.example.com). */
  readonly #exact = new Map<string, SourceState>();
  readonly #wildcard = new Map<string, SourceState>();
  readonly #tls: SecureContextOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #timers: Timers;
  readonly #useWatch: boolean;
  readonly #pollMs: number;
  readonly #debounceMs: number;
  readonly #reloads: Counter<'result'> | undefined;
  readonly #expiry: Gauge<'host'> | undefined;

  #state: 'new' | 'starting' | 'running' | 'closed' = 'new';
  #changedWhileStarting = false;
  readonly #watchers: FSWatcher[] = [];
  #pollTimer: unknown;
  #debounceTimer: unknown;
  #signatures = new Map<string, FileSignature | undefined>();
  #inFlight: Promise<void> | undefined;
  #again = false;
  /** An explicit reload() asked for a pass that re-judges refused bytes too. */
  #force = false;

  constructor(o: CertificateStoreOptions) {
    super();
    for (const k of SOURCE_OPTIONS) {
      if (o.tls[k] !== undefined) bug(`CertificateStore: tls.${k} must not be set; certificates come from the sources`);
    }
    this.#tls = { ...o.tls };
    this.#clock = o.clock ?? systemClock;
    this.#log = o.logger.child({ component: 'ingress.certificates' });
    this.#timers = o.timers ?? systemTimers;
    this.#useWatch = o.watch ?? true;
    this.#pollMs = o.pollIntervalMs ?? DEFAULT_POLL_MS;
    this.#debounceMs = o.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    if (!(Number.isFinite(this.#pollMs) && this.#pollMs >= 0)) bug('CertificateStore: pollIntervalMs must be >= 0');
    if (!(Number.isFinite(this.#debounceMs) && this.#debounceMs >= 0)) bug('CertificateStore: debounceMs must be >= 0');

    this.#sources = o.sources.map((s, i) => ({ spec: normalizeSource(s, i) }));
    for (const s of this.#sources) {
      const { host } = s.spec;
      if (this.#lookup(host) !== undefined) throw configInvalid(`ingress certificate sources: host "${host}" is listed twice`);
      this.#map(host, s);
    }

    if (o.registry !== undefined) {
      const reloadsName = 'ward_ingress_certificate_reloads_total';
      this.#reloads =
        (o.registry.getSingleMetric(reloadsName) as Counter<'result'> | undefined) ??
        new Counter({
          name: reloadsName,
          help: 'Changed ingress certificate files judged after start, by result (loaded or refused)',
          labelNames: ['result'],
          registers: [o.registry],
        });
      const expiryName = 'ward_ingress_certificate_expiry_timestamp_seconds';
      this.#expiry =
        (o.registry.getSingleMetric(expiryName) as Gauge<'host'> | undefined) ??
        new Gauge({
          name: expiryName,
          help: 'notAfter of the certificate the ingress serves for each configured host, in seconds since the epoch',
          labelNames: ['host'],
          registers: [o.registry],
        });
    }
  }

  /**
   * Loads every source, then starts watching. Throws WARD_CONFIG_INVALID naming the host, file and
   * reason of every source that failed; nothing is left running then.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') bug('CertificateStore.start() called twice');
    this.#state = 'starting';
    // Watch (and take the poll's signatures) before the first read: a change made while we read is
    // then seen and judged after start, not lost.
    await this.#startWatching();
    const results = await Promise.all(
      this.#sources.filter((s) => s.spec.kind !== 'internal').map(async (s) => {
        try {
          return { s, loaded: await this.#load(s.spec) };
        } catch (err) {
          if (err instanceof Refusal) return { s, refusal: err };
          throw err;
        }
      }),
    );
    const failures = results.flatMap((r) => (r.refusal ? [`${r.s.spec.host}: ${r.refusal.file}: ${r.refusal.reason}`] : []));
    if (failures.length > 0) {
      this.close();
      throw configInvalid(`ingress certificates refused: ${failures.join('; ')}`);
    }
    if ((this.#state as string) === 'closed') return;
    this.#state = 'running';
    for (const r of results) {
      if (r.loaded) this.#install(r.s, r.loaded.served, r.loaded.digest);
    }
    if (this.#changedWhileStarting) this.#schedule();
  }

  /**
   * SNI selection: the exact host first, then a wildcard covering exactly one label (a.example.com
   * is covered by *.example.com; a.b.example.com and example.com are not). Case-insensitive; a
   * trailing dot is ignored. Undefined when no certificate is for that name.
   */
  select(servername: string): ServedCertificate | undefined {
    const name = normalizeServername(servername);
    if (name === undefined) return undefined;
    const exact = this.#exact.get(name)?.served;
    if (exact !== undefined) return exact;
    const dot = name.indexOf('.');
    if (dot <= 0) return undefined;
    return this.#wildcard.get(name.slice(dot + 1))?.served;
  }

  /**
   * For tls.createServer's SNICallback. A name with no certificate gets no context from here, so the
   * server's own default context answers: without a certificate of its own the handshake fails
   * (alert handshake_failure), which is the ingress's answer to an unknown name; no other host's
   * certificate (and so no other host's name) is revealed.
   */
  sniCallback(): (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void {
    return (servername, cb) => {
      const served = this.select(servername);
      cb(null, served?.context);
    };
  }

  /**
   * Serves the certificate of an in-memory source: an internal name (a source `{ host, internal:
   * true }`) or a dynamic host (setDynamicHosts). Judged like a PEM pair from disk (key matches,
   * chain in order, valid now, serverAuth, covers the host). Returns whether it was installed; a
   * refusal is logged, counted and emitted, and the certificate in use (if any) stays. The same
   * chain and key as the one served is a no-op (true). The key is used in memory only.
   */
  provide(host: string, chainPem: string, keyPem: string): boolean {
    if (this.#state === 'closed') return false;
    const s = this.#sources.find((x) => x.spec.kind === 'internal' && x.spec.host === host) ?? this.#dynamic.get(normalizeHost(host) ?? '');
    if (s === undefined) bug(`CertificateStore.provide: no internal or dynamic source for ${host}`);
    const label = s.spec.kind === 'dynamic' ? s.spec.label : INTERNAL_SOURCE;
    const cert = Buffer.from(chainPem);
    const key = Buffer.from(keyPem);
    const digest = createHash('sha256').update(cert).update(key).digest('hex');
    if (digest === s.loadedDigest) return true;
    let served: ServedCertificate;
    try {
      served = this.#validatePemBytes(s.spec.host, label, label, cert, key);
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      this.#refuseNow(s, err, digest);
      return false;
    }
    this.#reloads?.inc({ result: 'loaded' });
    this.#install(s, served, digest);
    return true;
  }

  /**
   * Sets the dynamic sources: normalized or not, host (exact or `*.` wildcard) → a label saying
   * where its certificate comes from (ServedCertificate.source, and the `file` of log lines). The
   * whole set is replaced:
   *   - a new host serves nothing until provide();
   *   - a host no longer listed stops being served now (connections already open keep theirs);
   *   - a host whose label changed forgets the certificate of its old source and waits for provide();
   *   - a host with the same label keeps what it serves.
   * A host a static source (file or internal) has is ignored: the static one keeps serving (warned
   * once while it lasts). An invalid host is ignored with a warning (callers validate before).
   * A no-op after close().
   */
  setDynamicHosts(hosts: ReadonlyMap<string, string>): void {
    if (this.#state === 'closed') return;
    const next = new Map<string, string>();
    const shadowed = new Set<string>();
    for (const [raw, label] of hosts) {
      const host = normalizeHost(raw);
      if (host === undefined || typeof label !== 'string' || label.length === 0) {
        this.#log.warn({ host: String(raw).slice(0, 300) }, 'ignored a dynamic certificate source: not a DNS name or a wildcard of one label, or no label');
        continue;
      }
      if (next.has(host)) continue; // the same host twice (case, trailing dot): the first wins
      const held = this.#lookup(host);
      if (held !== undefined && held.spec.kind !== 'dynamic') {
        shadowed.add(host);
        if (!this.#shadowed.has(host)) this.#log.warn({ host, source: label }, 'a static certificate source serves this host; ignoring the dynamic one');
        continue;
      }
      next.set(host, label);
    }
    this.#shadowed = shadowed;
    for (const [host, s] of this.#dynamic) {
      const label = next.get(host);
      if (label !== undefined && s.spec.kind === 'dynamic' && s.spec.label === label) continue;
      this.#unmap(host, s);
      this.#dynamic.delete(host);
      if (s.served !== undefined) {
        this.#expiry?.remove({ host });
        this.#log.info({ host, file: s.served.source }, label === undefined ? 'stopped serving certificate: its dynamic source was removed' : 'stopped serving certificate: its source changed');
      }
    }
    for (const [host, label] of next) {
      if (this.#dynamic.has(host)) continue;
      const s: SourceState = { spec: { kind: 'dynamic', host, label } };
      this.#dynamic.set(host, s);
      this.#map(host, s);
    }
  }

  /**
   * The certificate served for exactly this source host (an exact host or a `*.` wildcard, as
   * configured), whichever kind of source has it; unlike select(), no wildcard stands in for an
   * exact host.
   */
  served(host: string): ServedCertificate | undefined {
    const h = normalizeHost(host);
    return h === undefined ? undefined : this.#lookup(h)?.served;
  }

  /** Whether a static source (file or internal name) has exactly this host; dynamic ones give way to it. */
  hasStaticSource(host: string): boolean {
    const h = normalizeHost(host);
    const s = h === undefined ? undefined : this.#lookup(h);
    return s !== undefined && s.spec.kind !== 'dynamic';
  }

  /** The dynamic sources now: normalized host → label. */
  dynamicHosts(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [host, s] of this.#dynamic) if (s.spec.kind === 'dynamic') out.set(host, s.spec.label);
    return out;
  }

  /** Hosts of the sources with nothing being served (an internal name or dynamic host not provided yet). */
  missing(): string[] {
    return this.#all().flatMap((s) => (s.served ? [] : [s.spec.host]));
  }

  /** Every certificate being served, in the order of the sources (static ones first, then dynamic ones). */
  list(): ServedCertificate[] {
    return this.#all().flatMap((s) => (s.served ? [s.served] : []));
  }

  #all(): SourceState[] {
    return [...this.#sources, ...this.#dynamic.values()];
  }

  /** The source holding exactly this (normalized) host, exact or wildcard. */
  #lookup(host: string): SourceState | undefined {
    return host.startsWith('*.') ? this.#wildcard.get(host.slice(2)) : this.#exact.get(host);
  }

  #map(host: string, s: SourceState): void {
    if (host.startsWith('*.')) this.#wildcard.set(host.slice(2), s);
    else this.#exact.set(host, s);
  }

  #unmap(host: string, s: SourceState): void {
    if (this.#lookup(host) !== s) return;
    if (host.startsWith('*.')) this.#wildcard.delete(host.slice(2));
    else this.#exact.delete(host);
  }

  /**
   * Re-reads every source now (the watcher does the same after a change, debounced). Unlike a
   * watcher pass, this also re-judges bytes refused before (a certificate not yet valid then may be
   * now). Resolves when the pass is done; a no-op before start() and after close().
   */
  async reload(): Promise<void> {
    if (this.#state !== 'running') return;
    this.#force = true;
    this.#kick();
    while (this.#inFlight !== undefined) await this.#inFlight;
  }

  /**
   * Stops watching and polling. Idempotent. A pass in flight finishes reading but installs nothing
   * and emits nothing. Certificates already selected (and open connections) are unaffected.
   */
  close(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    if (this.#debounceTimer !== undefined) this.#timers.clear(this.#debounceTimer);
    if (this.#pollTimer !== undefined) this.#timers.clear(this.#pollTimer);
    this.#debounceTimer = undefined;
    this.#pollTimer = undefined;
    for (const w of this.#watchers.splice(0)) w.close();
  }

  #install(s: SourceState, served: ServedCertificate, digest: string): void {
    s.served = served;
    s.loadedDigest = digest;
    s.refusedDigest = undefined;
    this.#expiry?.set({ host: served.host }, Math.floor(served.notAfter.getTime() / 1000));
    this.#log.info(
      { host: served.host, file: served.source, subject: served.subject, notAfter: served.notAfter.toISOString(), fingerprint: served.fingerprint },
      'loaded certificate',
    );
    this.#emitSafely('loaded', served.host);
  }

  // ---- watching ----

  #files(): string[] {
    const files = new Set<string>();
    for (const { spec } of this.#sources) {
      if (spec.kind === 'internal' || spec.kind === 'dynamic') continue;
      if (spec.kind === 'pem') {
        files.add(spec.certFile);
        files.add(spec.keyFile);
      } else {
        files.add(spec.pfxFile);
        if (spec.passphraseFile !== undefined) files.add(spec.passphraseFile);
      }
    }
    return [...files];
  }

  async #startWatching(): Promise<void> {
    const files = this.#files();
    if (this.#useWatch) {
      const byDir = new Map<string, Set<string>>();
      for (const f of files) {
        const dir = path.dirname(f);
        if (!byDir.has(dir)) byDir.set(dir, new Set());
        byDir.get(dir)!.add(path.basename(f));
      }
      for (const [dir, names] of byDir) {
        try {
          const w = watch(dir, { persistent: false }, (_event, filename) => {
            // filename can be null on some platforms: then any event in the directory counts.
            if (filename === null || names.has(filename) || filename.startsWith('..data')) this.#schedule();
          });
          w.on('error', (err) => {
            this.#log.warn({ err, dir }, 'directory watch failed; relying on polling');
            w.close();
            const i = this.#watchers.indexOf(w);
            if (i >= 0) this.#watchers.splice(i, 1);
          });
          this.#watchers.push(w);
        } catch (err) {
          this.#log.warn({ err, dir }, 'cannot watch the directory; relying on polling');
        }
      }
    }
    if (this.#pollMs > 0) {
      this.#signatures = await signatures(files);
      this.#armPoll();
    }
  }

  #armPoll(): void {
    if (this.#state === 'closed') return;
    this.#pollTimer = this.#timers.set(() => {
      this.#pollTimer = undefined;
      void this.#poll();
    }, this.#pollMs);
  }

  /** Cheap check: a stat per file, and a pass only when a signature moved. */
  async #poll(): Promise<void> {
    try {
      const now = await signatures([...this.#signatures.keys()]);
      let changed = false;
      for (const [f, sig] of now) if (!sameSignature(sig, this.#signatures.get(f))) changed = true;
      this.#signatures = now;
      if (changed) this.#schedule();
    } catch (err) {
      this.#log.error({ err }, 'BUG: polling the certificate files failed unexpectedly');
    } finally {
      this.#armPoll();
    }
  }

  #schedule(): void {
    if (this.#state === 'starting') {
      this.#changedWhileStarting = true;
      return;
    }
    if (this.#state !== 'running') return;
    // Coalesce, do not postpone: re-arming on every notice would starve the pass under a steady
    // stream of them (a writer appending slowly, a chatty directory).
    if (this.#debounceTimer !== undefined) return;
    this.#debounceTimer = this.#timers.set(() => {
      this.#debounceTimer = undefined;
      this.#kick();
    }, this.#debounceMs);
  }

  #kick(): void {
    if (this.#state !== 'running') return;
    if (this.#inFlight !== undefined) {
      this.#again = true;
      return;
    }
    this.#inFlight = (async () => {
      do {
        this.#again = false;
        const force = this.#force;
        this.#force = false;
        await this.#pass(force);
      } while (this.#again && this.#state === 'running');
    })()
      .catch((err: unknown) => this.#log.error({ err }, 'BUG: reloading ingress certificates failed unexpectedly'))
      .finally(() => {
        this.#inFlight = undefined;
      });
  }

  /** One pass over every source, in order. */
  async #pass(force: boolean): Promise<void> {
    for (const s of this.#sources) {
      if (this.#state !== 'running') return;
      if (s.spec.kind === 'internal') continue;
      let files: SourceFiles;
      try {
        files = await readSourceFiles(s.spec);
      } catch (err) {
        if (!(err instanceof Refusal)) throw err;
        // An unreadable file has no digest; a file that stays missing is refused at each pass,
        // which only happens when something in its directory changes.
        this.#refuse(s, err, undefined);
        continue;
      }
      if (files.digest === s.loadedDigest) continue;
      if (!force && files.digest === s.refusedDigest) continue;
      let served: ServedCertificate;
      try {
        served = this.#validate(s.spec, files);
      } catch (err) {
        if (!(err instanceof Refusal)) throw err;
        this.#refuse(s, err, files.digest);
        continue;
      }
      if (this.#state !== 'running') return;
      this.#reloads?.inc({ result: 'loaded' });
      this.#install(s, served, files.digest);
    }
  }

  #refuse(s: SourceState, r: Refusal, digest: string | undefined): void {
    if (this.#state !== 'running') return;
    this.#refuseNow(s, r, digest);
  }

  #refuseNow(s: SourceState, r: Refusal, digest: string | undefined): void {
    s.refusedDigest = digest;
    this.#reloads?.inc({ result: 'refused' });
    const host = s.spec.host;
    this.#log.warn({ host, file: r.file, reason: r.reason }, 'refused new certificate; keeping the one in use');
    this.#emitSafely('refused', host, r.reason);
  }

  // A throwing listener is the listener's bug; it must not stop the store from watching.
  #emitSafely<K extends keyof CertificateStoreEvents>(event: K, ...args: CertificateStoreEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      this.#log.error({ err, event }, 'BUG: a CertificateStore listener threw');
    }
  }

  // ---- loading and validation ----

  async #load(spec: Spec): Promise<{ served: ServedCertificate; digest: string }> {
    const files = await readSourceFiles(spec);
    return { served: this.#validate(spec, files), digest: files.digest };
  }

  /** Judges the bytes read for one source; throws Refusal naming the file at fault. */
  #validate(spec: Spec, files: SourceFiles): ServedCertificate {
    if (spec.kind === 'pem') {
      const [certBytes, keyBytes = bug('a PEM source was read without its key')] = files.contents;
      return this.#validatePemBytes(spec.host, spec.certFile, spec.keyFile, certBytes, keyBytes);
    }
    if (spec.kind === 'pkcs12') return this.#validatePkcs12(spec, files);
    return bug('an in-memory source has no files to validate');
  }

  #validatePemBytes(host: string, certFile: string, keyFile: string, certBytes: Buffer, keyBytes: Buffer): ServedCertificate {
    const spec = { host, certFile, keyFile };
    let chain: Certificate[];
    try {
      chain = parseCertificates(certBytes);
    } catch (err) {
      throw new Refusal(spec.certFile, `not a PEM certificate chain: ${(err as Error).message}`);
    }
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: keyBytes, format: 'pem' });
    } catch (err) {
      // Node's messages name the failure (e.g. ERR_MISSING_PASSPHRASE), never the key bytes.
      throw new Refusal(spec.keyFile, `not a readable unencrypted PEM private key (${errorCode(err)})`);
    }
    if (!keyMatches(chain[0], key)) {
      const k = chain.findIndex((c, i) => i > 0 && keyMatches(c, key));
      throw k > 0
        ? new Refusal(spec.certFile, `the private key belongs to certificate #${k + 1} of the chain; the leaf must come first`)
        : new Refusal(spec.keyFile, `the private key does not match the certificate (${chain[0].subject || 'no subject'})`);
    }
    for (let i = 0; i + 1 < chain.length; i++) {
      const [child, parent] = [chain[i], chain[i + 1]];
      if (!(child.x509.checkIssued(parent.x509) && child.x509.verify(parent.publicKey))) {
        throw new Refusal(
          spec.certFile,
          `chain out of order: certificate #${i + 2} (${parent.subject || 'no subject'}) did not issue #${i + 1} (${child.subject || 'no subject'}); list the leaf first, then each issuer`,
        );
      }
    }
    this.#checkLeaf(spec.host, spec.certFile, chain[0]);
    let context: SecureContext;
    try {
      context = createSecureContext({ ...this.#tls, cert: certBytes, key: keyBytes });
    } catch (err) {
      throw new Refusal(spec.certFile, `TLS refused the certificate and key: ${(err as Error).message}`);
    }
    return servedCertificate(spec.host, context, chain[0], spec.certFile);
  }

  #validatePkcs12(spec: Extract<Spec, { kind: 'pkcs12' }>, files: SourceFiles): ServedCertificate {
    const [pfx, pass] = files.contents;
    const passphrase = pass === undefined ? undefined : stripOneNewline(pass.toString('utf8'));
    let context: SecureContext;
    try {
      context = createSecureContext({ ...this.#tls, pfx, passphrase });
    } catch (err) {
      throw new Refusal(spec.pfxFile, pkcs12Reason(err, spec.passphraseFile !== undefined));
    }
    const leaf = pkcs12Leaf(context);
    if (leaf === undefined) throw new Refusal(spec.pfxFile, 'the PKCS#12 bundle holds no certificate');
    let cert: Certificate;
    try {
      cert = parseCertificate(leaf);
    } catch (err) {
      throw new Refusal(spec.pfxFile, `the PKCS#12 bundle's certificate is invalid: ${(err as Error).message}`);
    }
    this.#checkLeaf(spec.host, spec.pfxFile, cert);
    return servedCertificate(spec.host, context, cert, spec.pfxFile);
  }

  /** Dates on the injected clock, serverAuth, host coverage. */
  #checkLeaf(host: string, file: string, leaf: Certificate): void {
    const now = this.#clock.now();
    if (now < leaf.notBefore.getTime()) throw new Refusal(file, `certificate is not valid until ${leaf.notBefore.toISOString()}`);
    if (now >= leaf.notAfter.getTime()) throw new Refusal(file, `certificate expired at ${leaf.notAfter.toISOString()}`);
    if (leaf.extKeyUsage !== undefined && !leaf.extKeyUsage.includes('serverAuth')) {
      throw new Refusal(file, `certificate is not for TLS servers (extendedKeyUsage: ${leaf.extKeyUsage.join(', ')})`);
    }
    const covered = host.startsWith('*.')
      ? leaf.dnsNames.some((n) => n.toLowerCase() === host)
      : leaf.x509.checkHost(host, { subject: 'never' }) !== undefined;
    if (!covered) {
      const names = leaf.dnsNames.slice(0, MAX_NAMES_IN_REASON).join(', ') + (leaf.dnsNames.length > MAX_NAMES_IN_REASON ? ', …' : '');
      const want = host.startsWith('*.') ? `the wildcard ${host} (a wildcard host needs that very wildcard in the certificate)` : host;
      throw new Refusal(file, `certificate does not cover ${want}; its DNS names: ${names || 'none'}`);
    }
  }
}

// ---- helpers ----

interface SourceFiles {
  /** PEM: [cert, key]; PKCS#12: [pfx, passphrase?]. */
  contents: [Buffer, Buffer | undefined];
  /** SHA-256 over every file (length-prefixed), to tell an unchanged source from a changed one. */
  digest: string;
}

/** Reads both files of a source, as close together as possible; throws Refusal. */
async function readSourceFiles(spec: Spec): Promise<SourceFiles> {
  let first: Buffer;
  let second: Buffer | undefined;
  if (spec.kind === 'internal' || spec.kind === 'dynamic') bug('an in-memory source has no files to read');
  if (spec.kind === 'pem') {
    [first, second] = await Promise.all([readBounded(spec.certFile, MAX_CERTIFICATE_FILE_BYTES), readBounded(spec.keyFile, MAX_CERTIFICATE_FILE_BYTES)]);
  } else {
    [first, second] = await Promise.all([
      readBounded(spec.pfxFile, MAX_CERTIFICATE_FILE_BYTES),
      spec.passphraseFile === undefined ? undefined : readBounded(spec.passphraseFile, MAX_PASSPHRASE_FILE_BYTES),
    ]);
  }
  const h = createHash('sha256');
  for (const b of [first, second]) {
    const len = Buffer.alloc(8);
    len.writeBigInt64BE(BigInt(b === undefined ? -1 : b.length));
    h.update(len);
    if (b !== undefined) h.update(b);
  }
  return { contents: [first, second], digest: h.digest('hex') };
}

/** The whole file, refused beyond `max` bytes (read up to max+1 whatever stat says: it may grow). */
async function readBounded(file: string, max: number): Promise<Buffer> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw new Refusal(file, `cannot read the file (${errorCode(err)})`);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new Refusal(file, 'is not a regular file');
    if (st.size > max) throw new Refusal(file, `file is ${st.size} bytes; at most ${max} are accepted`);
    const buf = Buffer.alloc(max + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n === buf.length) throw new Refusal(file, `file is over ${max} bytes; at most ${max} are accepted`);
    }
    if (n === 0) throw new Refusal(file, 'file is empty');
    return Buffer.from(buf.subarray(0, n));
  } catch (err) {
    if (err instanceof Refusal) throw err;
    throw new Refusal(file, `cannot read the file (${errorCode(err)})`);
  } finally {
    await handle.close();
  }
}

async function signatures(files: string[]): Promise<Map<string, FileSignature | undefined>> {
  const out = new Map<string, FileSignature | undefined>();
  await Promise.all(
    files.map(async (f) => {
      try {
        // stat follows symlinks: a Kubernetes Secret volume's ..data swap changes the inode seen here.
        const st = await stat(f);
        out.set(f, { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs });
      } catch {
        out.set(f, undefined);
      }
    }),
  );
  return out;
}

function sameSignature(a: FileSignature | undefined, b: FileSignature | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

function keyMatches(cert: Certificate, key: KeyObject): boolean {
  try {
    return cert.x509.checkPrivateKey(key);
  } catch {
    return false;
  }
}

/**
 * The certificate a TLS server would present with `context`: a TLSSocket that is never connected
 * answers getCertificate() from its SSL object, which OpenSSL built from the context. Verified on
 * Node 20; undefined when the context holds no certificate.
 */
function pkcs12Leaf(context: SecureContext): Buffer | undefined {
  const socket = new TLSSocket(null as never, { secureContext: context, isServer: true });
  try {
    const cert = socket.getCertificate();
    return cert !== null && 'raw' in cert && Buffer.isBuffer(cert.raw) ? cert.raw : undefined;
  } finally {
    socket.destroy();
  }
}

function pkcs12Reason(err: unknown, hasPassphrase: boolean): string {
  const message = (err as Error).message ?? String(err);
  if (/mac verify failure/i.test(message)) {
    return hasPassphrase ? 'cannot open the PKCS#12 bundle: wrong passphrase, or the file is corrupt' : 'cannot open the PKCS#12 bundle: it needs a passphrase (passphraseFile), or the file is corrupt';
  }
  if (/unsupported/i.test(message)) {
    return `cannot open the PKCS#12 bundle (${message}): it probably uses a legacy cipher (RC2, 40-bit); re-export it with openssl pkcs12 -export (AES by default in OpenSSL 3)`;
  }
  if (/private key/i.test(message)) return `the PKCS#12 bundle holds no usable private key (${message})`;
  return `not a readable PKCS#12 bundle (${message})`;
}

function servedCertificate(host: string, context: SecureContext, leaf: Certificate, source: string): ServedCertificate {
  return Object.freeze({ host, context, notAfter: leaf.notAfter, subject: leaf.subject, fingerprint: leaf.fingerprintSha256, source });
}

function stripOneNewline(s: string): string {
  return s.endsWith('\r\n') ? s.slice(0, -2) : s.endsWith('\n') ? s.slice(0, -1) : s;
}

function errorCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? e?.message ?? String(err);
}

function configInvalid(message: string): WardError {
  return new WardError('WARD_CONFIG_INVALID', message);
}

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** A DNS name (lowercase, no trailing dot) or undefined. */
function dnsName(name: string): string | undefined {
  if (typeof name !== 'string') return undefined;
  let n = name.toLowerCase();
  if (n.endsWith('.')) n = n.slice(0, -1);
  if (n.length === 0 || n.length > 253 || isIP(n) !== 0) return undefined;
  return n.split('.').every((l) => LABEL.test(l)) ? n : undefined;
}

function normalizeServername(servername: string): string | undefined {
  return dnsName(servername);
}

/** A source's host, normalized: a DNS name, or `*.` and a DNS name of at least two labels; else undefined. */
function normalizeHost(raw: string): string | undefined {
  if (typeof raw !== 'string') return undefined;
  if (raw.startsWith('*.')) {
    const rest = dnsName(raw.slice(2));
    // *.com would claim a whole top-level domain: at least two labels under the wildcard.
    return rest !== undefined && rest.includes('.') ? `*.${rest}` : undefined;
  }
  return dnsName(raw);
}

function normalizeSource(s: CertificateSource, i: number): Spec {
  const where = `ingress certificate source #${i + 1}`;
  if (typeof s !== 'object' || s === null) throw configInvalid(`${where}: must be an object`);
  const raw = s.host;
  if (typeof raw !== 'string') throw configInvalid(`${where}: host is missing`);
  const host = normalizeHost(raw);
  if (host === undefined) {
    throw configInvalid(`${where}: host "${raw}" is not a DNS name or a wildcard of one label (*.example.com); SNI carries no IP addresses`);
  }
  const file = (key: string, v: unknown): string => {
    if (typeof v !== 'string' || v.length === 0) throw configInvalid(`${where} (${host}): ${key} must be a file path`);
    return path.resolve(v);
  };
  if ('internal' in s) {
    if (s.internal !== true) throw configInvalid(`${where} (${host}): internal must be true (or absent, for a source with files)`);
    const files = ['certFile', 'keyFile', 'pfxFile', 'passphraseFile'].filter((k) => k in s);
    if (files.length > 0) throw configInvalid(`${where} (${host}): an internal source has no files (remove ${files.join(', ')})`);
    return { kind: 'internal', host };
  }
  if ('pfxFile' in s) {
    if ('certFile' in s || 'keyFile' in s) throw configInvalid(`${where} (${host}): give either pfxFile or certFile+keyFile, not both`);
    const spec: Spec = { kind: 'pkcs12', host, pfxFile: file('pfxFile', s.pfxFile) };
    if (s.passphraseFile !== undefined) spec.passphraseFile = file('passphraseFile', s.passphraseFile);
    return spec;
  }
  return { kind: 'pem', host, certFile: file('certFile', s.certFile), keyFile: file('keyFile', s.keyFile) };
}
