/**
 * KubeSecretCertificates: the ingress's certificates from Kubernetes TLS Secrets (Kubernetes mode;
 * docs/kubernetes.md, "Ingress TLS").
 *
 * What it reads: the Secrets of ONE namespace, the ingress's own, through an informer: list and
 * watch of /api/v1/namespaces/<namespace>/secrets with the field selector type=kubernetes.io/tls.
 * Those are exactly the calls discovery/kube-api-usage.ts lists for the component 'ingress'; never
 * another namespace, never cluster-wide, never a get. The field selector keeps the namespace's other
 * Secrets (the CA's `ward-ca` among them) out of this process. It narrows what is asked for, not
 * what RBAC allows: the type is checked again here, and a Secret of another type is refused.
 *
 * What it does: the ingress says which Secret each route host wants (setWanted: host → Secret name,
 * from the routes' tlsSecret). Each wanted host whose Secret is in the cache becomes a dynamic source
 * of the CertificateStore (label `Secret <namespace>/<name>`), and the Secret's tls.crt and tls.key
 * (base64 in the API) go to provide(), which judges them exactly as files are judged. When the
 * Secret changes they are provided again (hot reload: new handshakes get the new certificate, open
 * connections keep theirs). A bad new one (refused by the store, or no tls.key, or not base64) leaves
 * the old one serving. A deleted Secret stops its hosts being served. Every host whose Secret is
 * missing or unusable with nothing served is a readiness problem (problems()), logged once at warn
 * each time its reason changes; a host still served from an older version of its Secret is 'stale'
 * in status() but not a readiness problem, as with a refused file change.
 *
 * The informer (@kubernetes/client-node 1.4.0 ListWatch, dist/cache.js), and what is added here:
 *   - 410 Gone, on the watch request or as an ERROR event in the stream: it clears its
 *     resourceVersion and lists again by itself; Secrets deleted meanwhile come out as deletes.
 *   - a watch the server ends: it resumes at once from the last resourceVersion, without delay. A
 *     server ending every watch at once would make that a tight loop, so a (re)connect less than
 *     minWatchMs after the previous one counts as a failure (below).
 *   - any other error (list or watch refused, connection lost): it emits 'error' and stops for good.
 *     Here every failure restarts it after a capped, fully jittered exponential backoff, with a FRESH
 *     informer (so a fresh list). An informer is never restarted in place: its stop() aborts its
 *     request, and the aborted request's done handler may start another watch if start() ran in
 *     between. Callbacks of a replaced informer are ignored (generation check), and it opens no new
 *     request (its list and watch functions refuse once it is replaced).
 *   - its list has no timeout: listTimeoutMs bounds it here (a hung list is a failure).
 *   - Watch.watch() throws, instead of calling done, when building the request fails (an unreadable
 *     token file); in the informer's done path that would be an unhandled rejection, which ends a
 *     Node process. The Watch here turns it into done(err).
 *   - the watch has no idle timeout (watch.js builds one and then overwrites the signal); a silently
 *     dead connection is found by TCP keepalive (set by watch.js) or the API server's own watch
 *     timeout.
 * Failures keep the cache: while the API cannot be reached, the certificates being served stay.
 *
 * Keys: Secret data is never logged, nor error bodies; only names, types and reasons.
 */
import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { CoreV1Api, ListWatch, Watch, type KubeConfig, type V1Secret, type V1SecretList } from '@kubernetes/client-node';
import { Counter, Gauge, type Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.js';
import { systemTimers, type Timers } from '../core/control/index.js';
import { WardError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { withSignal } from '../core/kube-request.js';
import type { CertificateStore } from './certificates.js';

export const TLS_SECRET_TYPE = 'kubernetes.io/tls';
/** The server-side filter of the list and the watch. */
export const TLS_SECRET_FIELD_SELECTOR = `type=${TLS_SECRET_TYPE}`;
export const DEFAULT_SECRET_WATCH_BACKOFF = { initialMs: 500, maxMs: 30_000 } as const;
export const DEFAULT_SECRET_LIST_TIMEOUT_MS = 30_000;
export const DEFAULT_MIN_WATCH_MS = 1_000;

export interface KubeSecretCertificatesOptions {
  kubeConfig: KubeConfig;
  /** The ingress's own namespace (ward-system): the only one read. */
  namespace: string;
  store: CertificateStore;
  logger: Logger;
  /** ward_ingress_secret_watch_restarts_total. */
  registry?: Registry;
  clock?: Clock;
  timers?: Timers;
  /** In [0, 1); the backoff's jitter source. */
  random?: () => number;
  /** Default DEFAULT_SECRET_WATCH_BACKOFF. */
  backoff?: { initialMs: number; maxMs: number };
  /** Default DEFAULT_SECRET_LIST_TIMEOUT_MS. */
  listTimeoutMs?: number;
  /** A (re)connect sooner than this after the previous one is a failure; 0 turns that off. Default DEFAULT_MIN_WATCH_MS. */
  minWatchMs?: number;
}

/**
 * A wanted host, seen from its Secret:
 *   served   its Secret's certificate is served
 *   stale    served from an older version of its Secret; the current one is unusable (reason)
 *   static   a --cert / --pfx / --internal-cert source serves the host; the Secret is not read for it
 *   waiting  no list of the namespace's Secrets yet
 *   missing  no TLS Secret of that name in the namespace
 *   invalid  the Secret (or its name, or the host) cannot be served, and nothing is (reason)
 */
export type SecretHostState = 'served' | 'stale' | 'static' | 'waiting' | 'missing' | 'invalid';

export interface SecretHostStatus {
  host: string;
  /** "<namespace>/<name>". */
  secret: string;
  state: SecretHostState;
  reason?: string;
  /** Of the certificate served for the host (served, stale, static). */
  fingerprint?: string;
}

export interface KubeSecretStatus {
  namespace: string;
  /** A list of the namespace's Secrets has arrived (at start; again after 410 or a restart). */
  synced: boolean;
  restarts: number;
  lastError?: string;
  hosts: SecretHostStatus[];
}

export interface KubeSecretCertificatesEvents {
  /** A full list of the namespace's Secrets was applied. */
  synced: [];
  /** The informer failed; a fresh one starts after delayMs. */
  retrying: [info: { attempt: number; delayMs: number; error: string }];
  /** A wanted host's status changed. */
  host: [status: SecretHostStatus];
}

/** Kubernetes object names: DNS subdomains (RFC 1123), as the API server requires of a Secret. */
const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const NAMESPACE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const MAX_ERROR_TEXT = 300;

export class KubeSecretCertificates extends EventEmitter<KubeSecretCertificatesEvents> {
  readonly #ns: string;
  readonly #path: string;
  readonly #kc: KubeConfig;
  readonly #api: CoreV1Api;
  readonly #store: CertificateStore;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #timers: Timers;
  readonly #random: () => number;
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #listTimeoutMs: number;
  readonly #minWatchMs: number;
  readonly #restartsMetric: Counter | undefined;
  readonly #onRefused: (host: string, reason: string) => void;

  /** host → Secret name, as the routes say. */
  #wanted = new Map<string, string>();
  /** The cache: Secret name → Secret (this namespace's TLS Secrets). */
  readonly #secrets = new Map<string, V1Secret>();
  #synced = false;
  /** host → digest of the Secret content last handed to the store (or judged unusable) for it. */
  readonly #handled = new Map<string, string>();
  /** host → why the Secret content last handled for it was not installed. */
  readonly #unusable = new Map<string, string>();
  /** host → the status last reported (JSON), to log and emit changes only. */
  readonly #reported = new Map<string, string>();
  /** The host whose provide() is running, so the store's 'refused' event can be attributed. */
  #providing: string | undefined;
  #refusal: string | undefined;

  #generation = 0;
  #informer: ListWatch<V1Secret> | undefined;
  #restartTimer: unknown;
  #failures = 0;
  #restarts = 0;
  #lastError: string | undefined;
  #lastSyncAt: number | undefined;
  #lastFailureAt: number | undefined;
  #state: 'new' | 'running' | 'closed' = 'new';

  constructor(o: KubeSecretCertificatesOptions) {
    super();
    if (typeof o.namespace !== 'string' || !NAMESPACE.test(o.namespace)) {
      throw new WardError('WARD_CONFIG_INVALID', `Kubernetes namespace "${String(o.namespace).slice(0, 80)}" is not a valid namespace name`);
    }
    this.#ns = o.namespace;
    this.#path = `/api/v1/namespaces/${o.namespace}/secrets`;
    this.#kc = o.kubeConfig;
    this.#api = o.kubeConfig.makeApiClient(CoreV1Api);
    this.#store = o.store;
    this.#log = o.logger.child({ component: 'ingress.kube-secrets', namespace: o.namespace });
    this.#clock = o.clock ?? systemClock;
    this.#timers = o.timers ?? systemTimers;
    this.#random = o.random ?? Math.random;
    this.#backoff = o.backoff ?? DEFAULT_SECRET_WATCH_BACKOFF;
    this.#listTimeoutMs = o.listTimeoutMs ?? DEFAULT_SECRET_LIST_TIMEOUT_MS;
    this.#minWatchMs = o.minWatchMs ?? DEFAULT_MIN_WATCH_MS;
    if (!(this.#backoff.initialMs > 0 && this.#backoff.maxMs >= this.#backoff.initialMs)) throw new WardError('WARD_CONFIG_INVALID', 'Secret watch backoff: need 0 < initialMs <= maxMs');
    if (!(this.#listTimeoutMs > 0)) throw new WardError('WARD_CONFIG_INVALID', 'Secret list timeout must be positive');
    if (o.registry !== undefined) {
      const name = 'ward_ingress_secret_watch_restarts_total';
      this.#restartsMetric =
        (o.registry.getSingleMetric(name) as Counter | undefined) ??
        new Counter({ name, help: "Restarts of the ingress's list/watch of TLS Secrets after a failure", registers: [o.registry] });
      const problems = 'ward_ingress_tls_secret_problems';
      if (o.registry.getSingleMetric(problems) === undefined) {
        // Read at scrape time: route hosts whose Secret is missing or unusable with nothing served.
        // (Not a readiness condition: one tenant's missing Secret must not take the ingress out.)
        const source = this;
        new Gauge({
          name: problems,
          help: 'Route hosts whose TLS Secret is missing or unusable, with no certificate served for them',
          registers: [o.registry],
          collect() {
            this.set(source.problems().length);
          },
        });
      }
    }
    this.#onRefused = (host, reason) => {
      if (this.#providing === host) this.#refusal = reason;
    };
    this.#store.on('refused', this.#onRefused);
  }

  /** Starts listing and watching. Returns at once; 'synced' says when the first list is applied. */
  start(): void {
    if (this.#state !== 'new') return;
    this.#state = 'running';
    this.#startInformer();
  }

  /**
   * The Secret each route host wants (host → Secret name in this namespace). Replaces the whole set;
   * hosts no longer listed stop being served from Secrets. Cheap when nothing changed (each pushed
   * configuration version calls it).
   */
  setWanted(wanted: ReadonlyMap<string, string>): void {
    if (this.#state === 'closed') return;
    this.#wanted = new Map([...wanted].map(([host, name]) => [host.toLowerCase(), name]));
    this.#reconcile();
  }

  /** Readiness: one line per wanted host that is served from nothing because of its Secret. */
  problems(): string[] {
    return this.#statuses().flatMap((s) => (s.state === 'waiting' || s.state === 'missing' || s.state === 'invalid' ? [`no certificate for ${s.host}: ${s.reason}`] : []));
  }

  status(): KubeSecretStatus {
    return { namespace: this.#ns, synced: this.#synced, restarts: this.#restarts, ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}), hosts: this.#statuses() };
  }

  /** Stops the informer and any pending restart. Idempotent. The certificates served stay served. */
  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#generation++;
    if (this.#restartTimer !== undefined) this.#timers.clear(this.#restartTimer);
    this.#restartTimer = undefined;
    this.#store.off('refused', this.#onRefused);
    const informer = this.#informer;
    this.#informer = undefined;
    await informer?.stop().catch(() => undefined);
  }

  // ---- the informer ----

  #startInformer(): void {
    if (this.#state !== 'running') return;
    const gen = ++this.#generation;
    const live = (): boolean => gen === this.#generation && this.#state === 'running';
    let lastConnect: number | undefined;
    const informer = new ListWatch<V1Secret>(this.#path, new GuardedWatch(this.#kc, live), () => this.#list(live), false, undefined, TLS_SECRET_FIELD_SELECTOR);
    informer.on('add', (s) => live() && this.#onSecret(s, false));
    informer.on('update', (s) => live() && this.#onSecret(s, false));
    informer.on('delete', (s) => live() && this.#onSecret(s, true));
    informer.on('error', (err) => live() && this.#failed(err));
    informer.on('connect', () => {
      if (!live()) return;
      const now = this.#clock.now();
      const previous = lastConnect;
      lastConnect = now;
      if (previous !== undefined && now - previous < this.#minWatchMs) this.#failed(new Error(`the watch ended ${now - previous} ms after it started`));
    });
    this.#informer = informer;
    informer.start().catch((err: unknown) => live() && this.#failed(err));
  }

  /** The informer's list: bounded in time; a replaced informer gets a refusal instead of a request. */
  async #list(live: () => boolean): Promise<V1SecretList> {
    if (!live()) throw new Error('replaced');
    // A list that hangs is aborted (not merely abandoned: its socket would stay open) and fails.
    const ctl = new AbortController();
    const timer = this.#timers.set(() => ctl.abort(new Error(`listing Secrets took over ${this.#listTimeoutMs} ms`)), this.#listTimeoutMs);
    let list: V1SecretList;
    try {
      list = await this.#api.listNamespacedSecret({ namespace: this.#ns, fieldSelector: TLS_SECRET_FIELD_SELECTOR }, withSignal(ctl.signal));
    } catch (err) {
      throw ctl.signal.aborted && ctl.signal.reason instanceof Error ? ctl.signal.reason : err;
    } finally {
      this.#timers.clear(timer);
    }
    if (live()) this.#applyList(list.items ?? []);
    return list;
  }

  /** A full list is the truth: the cache becomes exactly it (the informer's own deletes then find nothing). */
  #applyList(items: V1Secret[]): void {
    this.#secrets.clear();
    for (const s of items) {
      const name = this.#nameOf(s);
      if (name !== undefined) this.#secrets.set(name, s);
    }
    const first = !this.#synced;
    this.#synced = true;
    this.#lastSyncAt = this.#clock.now();
    this.#log[first ? 'info' : 'debug']({ secrets: this.#secrets.size }, 'listed TLS Secrets');
    this.#reconcile();
    this.emit('synced');
  }

  #onSecret(s: V1Secret, deleted: boolean): void {
    const name = this.#nameOf(s);
    if (name === undefined) return;
    if (deleted) this.#secrets.delete(name);
    else this.#secrets.set(name, s);
    this.#reconcile();
  }

  /** The Secret's name, or undefined for an object this cache must not hold. */
  #nameOf(s: V1Secret): string | undefined {
    const name = s?.metadata?.name;
    const ns = s?.metadata?.namespace;
    if (typeof name !== 'string' || (ns !== undefined && ns !== this.#ns)) {
      this.#log.error({ name: String(name).slice(0, 253), objectNamespace: String(ns).slice(0, 63) }, 'BUG: the Secret watch returned an object of another namespace; ignored');
      return undefined;
    }
    return name;
  }

  #failed(err: unknown): void {
    if (this.#state !== 'running') return;
    const failed = this.#informer;
    this.#informer = undefined;
    this.#generation++;
    void failed?.stop().catch(() => undefined);
    const now = this.#clock.now();
    // A list succeeded after the previous failure and things then worked for a whole backoff cap:
    // this failure starts a new series. (A watch failing right after each list keeps backing off.)
    const recovered = this.#lastSyncAt !== undefined && (this.#lastFailureAt === undefined || this.#lastSyncAt > this.#lastFailureAt);
    if (recovered && now - this.#lastSyncAt! >= this.#backoff.maxMs) this.#failures = 0;
    this.#lastFailureAt = now;
    this.#failures++;
    this.#restarts++;
    this.#restartsMetric?.inc();
    const error = errorText(err);
    this.#lastError = error;
    // Full jitter: uniform in [0, min(max, initial·2^(n-1))], so ingress replicas do not come back
    // to the API server in step.
    const ceiling = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** Math.min(this.#failures - 1, 30));
    const delayMs = Math.floor(this.#random() * ceiling);
    this.#log.warn({ err: error, attempt: this.#failures, delayMs }, 'the TLS Secret list/watch failed; certificates in use stay; restarting');
    this.#restartTimer = this.#timers.set(() => {
      this.#restartTimer = undefined;
      this.#startInformer();
    }, delayMs);
    this.emit('retrying', { attempt: this.#failures, delayMs, error });
  }

  // ---- wanted hosts → the store ----

  #label(name: string): string {
    return `Secret ${this.#ns}/${name}`;
  }

  #reconcile(): void {
    if (this.#state === 'closed') return;
    const dynamic = new Map<string, string>();
    if (this.#synced) {
      for (const [host, name] of this.#wanted) if (SUBDOMAIN.test(name) && name.length <= 253 && this.#secrets.has(name)) dynamic.set(host, this.#label(name));
    }
    this.#store.setDynamicHosts(dynamic);
    // The store drops hosts a static source serves, and hosts it cannot serve (*.com).
    const accepted = this.#store.dynamicHosts();
    for (const host of [...this.#handled.keys()]) {
      // A host gone (both undefined) forgets what it was given, so that it is provided again when it
      // comes back (the store starts it empty); and #handled never outgrows the hosts wanted now.
      if (!accepted.has(host) || accepted.get(host) !== dynamic.get(host)) {
        this.#handled.delete(host);
        this.#unusable.delete(host);
      }
    }
    for (const host of accepted.keys()) {
      const name = this.#wanted.get(host);
      if (name !== undefined) this.#handle(host, name);
    }
    this.#report();
  }

  /** Hands the Secret's current content to the store, once per content. */
  #handle(host: string, name: string): void {
    const secret = this.#secrets.get(name);
    if (secret === undefined) return;
    const data = secret.data ?? {};
    const digest = createHash('sha256')
      .update(JSON.stringify([name, secret.type ?? '', data['tls.crt'] ?? null, data['tls.key'] ?? null]))
      .digest('hex');
    if (this.#handled.get(host) === digest) return;
    this.#handled.set(host, digest);
    const problem = secretProblem(secret);
    if (problem !== undefined) {
      this.#unusable.set(host, problem);
      return;
    }
    this.#unusable.delete(host);
    const chainPem = Buffer.from(data['tls.crt']!, 'base64').toString('utf8');
    const keyPem = Buffer.from(data['tls.key']!, 'base64').toString('utf8');
    this.#providing = host;
    this.#refusal = undefined;
    let ok: boolean;
    try {
      ok = this.#store.provide(host, chainPem, keyPem);
    } finally {
      this.#providing = undefined;
    }
    if (!ok) this.#unusable.set(host, `refused: ${this.#refusal ?? 'the store is closed'}`);
  }

  #statuses(): SecretHostStatus[] {
    return [...this.#wanted].map(([host, name]) => this.#statusOf(host, name));
  }

  #statusOf(host: string, name: string): SecretHostStatus {
    const secret = `${this.#ns}/${name}`;
    const base = { host, secret };
    if (!(SUBDOMAIN.test(name) && name.length <= 253)) {
      return { ...base, secret: `${this.#ns}/${JSON.stringify(name.slice(0, 80))}`, state: 'invalid', reason: 'the route names a TLS Secret whose name is not a valid Kubernetes name' };
    }
    const served = this.#store.served(host);
    const label = this.#label(name);
    if (this.#store.hasStaticSource(host)) {
      const from = served === undefined ? 'a --cert, --pfx or --internal-cert source' : served.source;
      return { ...base, state: 'static', reason: `the host is served from ${from}; its TLS Secret is not read`, ...(served !== undefined ? { fingerprint: served.fingerprint } : {}) };
    }
    if (!this.#synced) return { ...base, state: 'waiting', reason: `waiting for the first list of TLS Secrets in namespace ${this.#ns}` };
    if (!this.#secrets.has(name)) return { ...base, state: 'missing', reason: `Secret ${secret} not found (a Secret of type ${TLS_SECRET_TYPE} in the ingress's namespace)` };
    if (this.#store.dynamicHosts().get(host) !== label) return { ...base, state: 'invalid', reason: 'the host cannot have a certificate (a wildcard needs two labels after "*.")' };
    const problem = this.#unusable.get(host);
    if (served !== undefined) {
      return problem === undefined
        ? { ...base, state: 'served', fingerprint: served.fingerprint }
        : { ...base, state: 'stale', reason: `Secret ${secret}: ${problem}; still serving the previous certificate`, fingerprint: served.fingerprint };
    }
    return { ...base, state: 'invalid', reason: `Secret ${secret}: ${problem ?? 'not loaded'}` };
  }

  /** Logs and emits each host whose status changed; forgets hosts no longer wanted. */
  #report(): void {
    const seen = new Set<string>();
    for (const status of this.#statuses()) {
      seen.add(status.host);
      const text = JSON.stringify(status);
      if (this.#reported.get(status.host) === text) continue;
      this.#reported.set(status.host, text);
      // Not `secret`: that key is on the logger's redaction list (it would print [redacted]).
      const fields = { host: status.host, tlsSecret: status.secret, state: status.state, reason: status.reason };
      if (status.state === 'missing' || status.state === 'invalid' || status.state === 'stale') this.#log.warn(fields, `cannot serve ${status.host} from its TLS Secret: ${status.reason}`);
      else if (status.state === 'static') this.#log.info(fields, status.reason!);
      else if (status.state === 'served') this.#log.info(fields, 'serving the certificate of the TLS Secret');
      this.emit('host', status);
    }
    for (const host of [...this.#reported.keys()]) if (!seen.has(host)) this.#reported.delete(host);
  }
}

/** Why a Secret's content cannot be handed over, or undefined. Never quotes its data. */
function secretProblem(s: V1Secret): string | undefined {
  if (s.type !== TLS_SECRET_TYPE) return `is of type ${JSON.stringify(String(s.type ?? '').slice(0, 80))}, not ${TLS_SECRET_TYPE}`;
  const data = s.data ?? {};
  const missing = ['tls.crt', 'tls.key'].filter((k) => typeof data[k] !== 'string' || data[k].length === 0);
  if (missing.length > 0) return `has no ${missing.join(' and no ')} (a ${TLS_SECRET_TYPE} Secret holds both, base64)`;
  const bad = ['tls.crt', 'tls.key'].filter((k) => !BASE64.test(data[k]));
  if (bad.length > 0) return `${bad.join(' and ')} ${bad.length > 1 ? 'are' : 'is'} not base64`;
  return undefined;
}

/** An error's status and first line, bounded; never a response body (it may hold object data). */
function errorText(err: unknown): string {
  const e = err as { code?: unknown; statusCode?: unknown; message?: unknown } | undefined;
  const status = typeof e?.statusCode === 'number' ? e.statusCode : typeof e?.code === 'number' ? e.code : undefined;
  const message = typeof e?.message === 'string' ? e.message : String(err);
  // ApiException's message carries the response body and headers after the first line.
  const first = message.split('\n', 1)[0].slice(0, MAX_ERROR_TEXT);
  return status !== undefined && !first.includes(String(status)) ? `HTTP ${status}: ${first}` : first;
}

/**
 * Watch.watch() throws (instead of calling done) when the request cannot be built (an unreadable
 * token file, no current cluster): called from the informer's done handler, that is an unhandled
 * rejection. Here it becomes done(err), which the informer reports as 'error'. A watch for an
 * informer that was replaced is never opened.
 */
class GuardedWatch extends Watch {
  readonly #live: () => boolean;

  constructor(kc: KubeConfig, live: () => boolean) {
    super(kc);
    this.#live = live;
  }

  override async watch(path: string, queryParams: Record<string, string | number | boolean | undefined>, callback: (phase: string, apiObj: any, watchObj?: any) => void, done: (err: any) => void): Promise<AbortController> {
    const idle = new AbortController();
    if (!this.#live()) {
      idle.abort();
      return idle;
    }
    try {
      const controller = await super.watch(path, queryParams, callback, done);
      // ListWatch.stop() aborts only a watch whose request has returned; one still connecting
      // when its informer was stopped or replaced is ended here.
      if (!this.#live()) controller.abort();
      return controller;
    } catch (err) {
      idle.abort();
      done(err);
      return idle;
    }
  }
}
