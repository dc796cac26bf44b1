/**
 * KubeSource: the Kubernetes API as the discovery pool's source of truth (Kubernetes mode). It
 * produces the same MeshModel, with the same events, as LocalFileSource does from ward.yaml, so
 * nothing downstream (MeshState, the push server, the CA's node authorizer) knows the difference.
 *
 * Six informers (list, then watch from the list's resourceVersion) keep a cache of Pods, Services,
 * Namespaces, EndpointSlices, Ingresses and Ward's AuthorizationPolicies, cluster-wide. Any change
 * schedules a rebuild `debounceMs` later (changes arriving meanwhile join it; the timer is never
 * re-armed, so a steady stream of changes cannot starve the rebuild). A rebuild translates the
 * whole cache (kube-model.ts, pure) and emits 'update' only when diffModels says something changed:
 * a relist after an API-server restart or an expired watch that finds the same objects pushes
 * nothing to the proxies.
 *
 * What @kubernetes/client-node 1.4.0's informer (ListWatch, dist/cache.js) does by itself, and what
 * is done here about it:
 *   - watch ends cleanly (server timeout, connection closed without error): it re-watches at once
 *     from the last resourceVersion. Nothing to do, except that a server closing every watch right
 *     after opening it would make that a tight loop: a watch that ends within MIN_WATCH_MS
 *     MAX_QUICK_WATCHES times in a row is treated as a failure (below).
 *   - 410 Gone (resourceVersion too old; as the HTTP status of the watch or as an ERROR event in the
 *     stream, after which the server ends the stream): it clears the resourceVersion and relists;
 *     the relist reports objects deleted meanwhile as deletions and skips unchanged ones (same
 *     resourceVersion), so an idle cluster yields no change at all. Counted like a clean end.
 *   - any other error (list failed, watch refused with another status, connection refused or
 *     reset): it fires its 'error' callbacks and STOPS for good. This source then restarts it
 *     after a capped, full-jitter exponential backoff on the injected timers (logged once per
 *     restart, counted in ward_discovery_kube_restarts_total{resource}). The restart keeps the
 *     cache and resumes the watch from the last resourceVersion when it has one (410 → relist).
 *     The backoff resets once a watch has stayed up for `backoff.maxMs`.
 *   - stop() does not stop a list or a watch connection already in progress, and neither list nor
 *     watch has a client-side timeout. So the informer is built (as makeInformer does) with a Watch
 *     subclass that refuses to open a watch for a stopped or superseded run and aborts one that
 *     connects too late, a list function whose requests are aborted on close() or after
 *     `requestTimeoutMs`, and watches that ask the server to end them after 5–10 minutes
 *     (timeoutSeconds, as client-go does) with a client-side deadline a minute later, so a
 *     silently dead connection cannot freeze the cache.
 * While the API is unreachable the cache, and so the model, stays as it last was.
 */
import { EventEmitter } from 'node:events';
import {
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  ListWatch,
  NetworkingV1Api,
  Watch,
  type ConfigurationOptions,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { Counter, Gauge, type Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.js';
import { withSignal } from '../core/kube-request.js';
import { systemTimers, type Timers } from '../core/control/index.js';
import { bug, WardError } from '../core/errors.js';
import { parseTrustDomain } from '../core/identity/index.js';
import type { Logger } from '../core/logger.js';
import { modelFromKube, podInfo, KUBE_WARD_NAMESPACE, type KubeObjects, type KubePod, type KubePodInfo, type KubeProblem } from './kube-model.js';
import { diffModels, type MeshModel, type ModelDiff } from './model.js';

/** The resources watched, by their plural names (as in KUBE_API_USAGE and the metrics' labels). */
export type KubeResource = 'pods' | 'services' | 'namespaces' | 'endpointslices' | 'ingresses' | 'authorizationpolicies';

export const KUBE_POLICY_GROUP = 'security.ward.dev';
export const KUBE_POLICY_VERSION = 'v1alpha1';
export const KUBE_POLICY_PLURAL = 'authorizationpolicies';

interface Apis {
  core: CoreV1Api;
  discovery: DiscoveryV1Api;
  networking: NetworkingV1Api;
  custom: CustomObjectsApi;
}

type ListFn = (apis: Apis, options: ConfigurationOptions) => Promise<KubernetesListObject<KubernetesObject>>;

interface ResourceSpec {
  resource: KubeResource;
  /** API group ('' = core): with `resource`, a row of KUBE_API_USAGE. */
  group: string;
  /** The collection's URL path (cluster-wide). */
  path: string;
  /** Which field of KubeObjects the cache feeds. */
  field: keyof KubeObjects;
  list: ListFn;
}

/** Every informer: each is a `list` + `watch` row of KUBE_API_USAGE (component control). */
export const KUBE_RESOURCES: readonly ResourceSpec[] = [
  { resource: 'pods', group: '', path: '/api/v1/pods', field: 'pods', list: (a, o) => a.core.listPodForAllNamespaces({}, o) },
  { resource: 'services', group: '', path: '/api/v1/services', field: 'services', list: (a, o) => a.core.listServiceForAllNamespaces({}, o) },
  { resource: 'namespaces', group: '', path: '/api/v1/namespaces', field: 'namespaces', list: (a, o) => a.core.listNamespace({}, o) },
  {
    resource: 'endpointslices',
    group: 'discovery.k8s.io',
    path: '/apis/discovery.k8s.io/v1/endpointslices',
    field: 'endpointSlices',
    list: (a, o) => a.discovery.listEndpointSliceForAllNamespaces({}, o),
  },
  {
    resource: 'ingresses',
    group: 'networking.k8s.io',
    path: '/apis/networking.k8s.io/v1/ingresses',
    field: 'ingresses',
    list: (a, o) => a.networking.listIngressForAllNamespaces({}, o),
  },
  {
    resource: 'authorizationpolicies',
    group: KUBE_POLICY_GROUP,
    path: `/apis/${KUBE_POLICY_GROUP}/${KUBE_POLICY_VERSION}/${KUBE_POLICY_PLURAL}`,
    field: 'policies',
    list: (a, o) =>
      a.custom.listClusterCustomObject({ group: KUBE_POLICY_GROUP, version: KUBE_POLICY_VERSION, plural: KUBE_POLICY_PLURAL }, o) as Promise<
        KubernetesListObject<KubernetesObject>
      >,
  },
];

export interface KubeSourceOptions {
  kubeConfig: KubeConfig;
  trustDomain: string;
  /** Ward's namespace (node proxy pods). Default ward-system. */
  namespace?: string;
  logger: Logger;
  /** The process registry for ward_discovery_kube_* metrics. */
  registry?: Registry;
  /** Timestamps in status() and the backoff reset. */
  clock?: Clock;
  /** Debounce, backoff, deadlines. Default: real, unref'd timers. */
  timers?: Timers;
  /** Restart backoff of a stopped informer: full jitter, doubling from initialMs up to maxMs. Default 500 ms .. 30 s. */
  backoff?: { initialMs: number; maxMs: number };
  /** Delay between the first change and the rebuild (later changes join it). Default 50. */
  debounceMs?: number;
  /** start() rejects when not every informer has listed within this. Default 30 s. */
  startTimeoutMs?: number;
  /** A list request is aborted after this. Default 60 s. */
  requestTimeoutMs?: number;
  /** [0, 1): the jitter source (tests pin it). Default Math.random. */
  random?: () => number;
}

export interface KubeSourceEvents {
  /** The model changed. Never emitted when a change in the cluster left the model as it was. */
  update: [model: MeshModel, diff: ModelDiff];
  /** A problem that was not there at the previous rebuild (an object, or part of one, left out). */
  problem: [problem: KubeProblem];
}

export interface KubeInformerStatus {
  readonly resource: KubeResource;
  /** running: listing or watching; backoff: stopped after an error, restart scheduled. */
  readonly state: 'new' | 'running' | 'backoff' | 'closed';
  /** Listed at least once (the cache holds real data). */
  readonly synced: boolean;
  readonly objects: number;
  /** The resourceVersion the watch resumes from ('' before the first list and after a 410). */
  readonly resourceVersion: string;
  readonly restarts: number;
  readonly lastError?: { readonly message: string; readonly at: number };
}

export interface KubeSourceStatus {
  /** Every informer has listed and the first model was built. */
  readonly synced: boolean;
  readonly informers: readonly KubeInformerStatus[];
  /** Problems at the last rebuild (objects or parts left out); see problems(). */
  readonly problems: number;
  /** 'update' events emitted. */
  readonly updates: number;
  readonly builtAt?: number;
}

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 } as const;
const DEFAULT_DEBOUNCE_MS = 50;
const DEFAULT_START_TIMEOUT_MS = 30_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;
/** Server-side watch timeout, drawn per watch from [min, max) so watches do not all end together. */
const WATCH_TIMEOUT_S = { min: 300, max: 600 } as const;
/** The client gives up on a watch this long after the server should have ended it. */
const WATCH_DEADLINE_SLACK_S = 60;
/** A watch that ends (cleanly or with 410) sooner than this after it was opened counts as quick… */
const MIN_WATCH_MS = 1000;
/** …and this many quick ones in a row stop the informer, so it restarts with backoff. */
const MAX_QUICK_WATCHES = 5;
/** close() waits this long at most for requests in flight to settle. */
const CLOSE_GRACE_MS = 5000;
const MAX_ERROR_TEXT = 300;

/** A short, single-line description of an API error (status code first when there is one). */
function describeError(err: unknown): string {
  const e = err as { code?: unknown; statusCode?: unknown; message?: unknown; name?: unknown } | null;
  const status = typeof e?.statusCode === 'number' ? e.statusCode : typeof e?.code === 'number' ? e.code : undefined;
  let text = typeof e?.message === 'string' ? e.message : String(err);
  // ApiException messages carry the whole response body and headers; the first line is the gist.
  text = text.split('\n')[0];
  if (text.length > MAX_ERROR_TEXT) text = `${text.slice(0, MAX_ERROR_TEXT)}…`;
  return status !== undefined && !text.includes(String(status)) ? `HTTP ${status}: ${text}` : text;
}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  return typeof e?.statusCode === 'number' ? e.statusCode : typeof e?.code === 'number' ? e.code : undefined;
}

/**
 * Drops metadata.managedFields (server-side-apply bookkeeping, often most of an object's bytes):
 * nothing here reads it, and the pod cache holds every pod of the cluster.
 */
function slim<T>(obj: T): T {
  const meta = (obj as { metadata?: { managedFields?: unknown } } | null)?.metadata;
  if (meta !== undefined && meta !== null && typeof meta === 'object' && 'managedFields' in meta) delete meta.managedFields;
  return obj;
}

function abortedController(): AbortController {
  const c = new AbortController();
  c.abort();
  return c;
}

/** What every Informer shares: the source's collaborators. */
interface Shared {
  log: Logger;
  clock: Clock;
  timers: Timers;
  random: () => number;
  backoff: { initialMs: number; maxMs: number };
  requestTimeoutMs: number;
  restarts: Counter<'resource'> | undefined;
  apis: () => Apis;
  onChange: () => void;
  onSynced: () => void;
}

/**
 * One resource's informer and its restart loop. `#run` numbers each start; callbacks of an older
 * run (a list or watch that was already in flight when the informer stopped or restarted) are
 * ignored, so at most one list/watch chain per resource ever feeds the cache.
 */
class Informer {
  readonly spec: ResourceSpec;
  readonly cache: ListWatch<KubernetesObject>;
  state: 'new' | 'running' | 'backoff' | 'closed' = 'new';
  synced = false;
  restarts = 0;
  lastError: { message: string; at: number } | undefined;

  /** The source's collaborators (GuardedWatch reads the clock, timers and jitter from here). */
  readonly s: Shared;
  #run = 0;
  #attempt = 0;
  #retryTimer: unknown;
  /** When the current watch connected; undefined while none is connected. */
  #connectedAt: number | undefined;
  #quickWatches = 0;
  readonly #watches = new Set<AbortController>();
  readonly #lists = new Set<AbortController>();
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #errorRuns = new WeakMap<object, number>();

  constructor(spec: ResourceSpec, kubeConfig: KubeConfig, shared: Shared) {
    this.spec = spec;
    this.s = shared;
    // makeInformer(kubeConfig, path, listFn) is exactly `new ListWatch(path, new Watch(kubeConfig),
    // listFn, false)`; it is spelled out to pass the guarded Watch below.
    this.cache = new ListWatch(spec.path, new GuardedWatch(kubeConfig, this), () => this.#list(), false);
    this.cache.on('change', () => {
      if (this.state === 'running') this.s.onChange();
    });
    // A list error belongs to the run that listed (it may arrive after that run was stopped and a
    // new one started); any other error reaches here only for the current run (GuardedWatch).
    this.cache.on('error', (err: unknown) => this.fail((typeof err === 'object' && err !== null && this.#errorRuns.get(err)) || this.#run, err));
  }

  get run(): number {
    return this.#run;
  }

  start(): void {
    if (this.state === 'closed') return;
    this.state = 'running';
    const run = ++this.#run;
    this.#track(this.cache.start().catch((err: unknown) => this.fail(run, err)));
  }

  /** The informer stopped (or must stop) with `err`: schedule a restart with backoff. */
  fail(run: number, err: unknown): void {
    if (this.state !== 'running' || run !== this.#run) return;
    this.state = 'backoff';
    this.#run++; // whatever the stopped run still has in flight is ignored from now on
    this.#abortAll();
    void this.cache.stop();
    const now = this.s.clock.now();
    this.lastError = { message: describeError(err), at: now };
    const { initialMs, maxMs } = this.s.backoff;
    this.#noteHealthy(now);
    this.#quickWatches = 0; // the backoff is the pause the guard asked for; the attempt count remembers
    this.#attempt++;
    const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(this.#attempt - 1, 30));
    const delayMs = Math.floor(this.s.random() * ceiling);
    this.s.log.warn(
      { resource: this.spec.resource, err: this.lastError.message, status: statusOf(err), attempt: this.#attempt, delayMs },
      'Kubernetes informer stopped; restarting it after a backoff (the mesh keeps its last model meanwhile)',
    );
    this.#retryTimer = this.s.timers.set(() => {
      this.#retryTimer = undefined;
      if (this.state !== 'backoff') return;
      this.restarts++;
      this.s.restarts?.inc({ resource: this.spec.resource });
      this.start();
    }, delayMs);
  }

  close(): Promise<unknown> {
    this.state = 'closed';
    this.#run++;
    if (this.#retryTimer !== undefined) this.s.timers.clear(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#abortAll();
    void this.cache.stop();
    return Promise.allSettled([...this.#inFlight]);
  }

  // ---- hooks for GuardedWatch -------------------------------------------------------------------

  /** Whether a watch may be opened for `run` (false: the informer stopped or moved on). */
  mayWatch(run: number): boolean {
    return this.state === 'running' && run === this.#run;
  }

  /**
   * ListWatch calls watch() only after a list has been applied to the cache (or to resume from a
   * resourceVersion a list gave), so reaching it means the cache is synced.
   */
  watchOpening(): void {
    if (!this.synced) {
      this.synced = true;
      this.s.onSynced();
    }
  }

  /** Whether watches keep ending right after they open (see MIN_WATCH_MS). */
  get flapping(): boolean {
    return this.#quickWatches >= MAX_QUICK_WATCHES;
  }

  watchConnected(c: AbortController): void {
    this.#watches.add(c);
    this.#connectedAt = this.s.clock.now();
  }

  /** A watch of this run ended; `autoRetried`: client-node re-watches or relists by itself. */
  watchEnded(c: AbortController | undefined, openedAt: number, autoRetried: boolean): void {
    if (c !== undefined) this.#watches.delete(c);
    const now = this.s.clock.now();
    this.#noteHealthy(now);
    if (!autoRetried) return;
    if (now - openedAt < MIN_WATCH_MS) this.#quickWatches++;
    else this.#quickWatches = 0;
  }

  track<T>(p: Promise<T>): Promise<T> {
    return this.#track(p);
  }

  // ---- internals --------------------------------------------------------------------------------

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inFlight.add(p);
    void p.then(
      () => this.#inFlight.delete(p),
      () => this.#inFlight.delete(p),
    );
    return p;
  }

  /**
   * A watch that stayed connected for a full backoff ceiling proves the API healthy again: the
   * next failure starts the backoff from the beginning. (Checked when the watch ends: an outage
   * ends the watch first, and only the re-watch fails.)
   */
  #noteHealthy(now: number): void {
    if (this.#connectedAt !== undefined && now - this.#connectedAt >= this.s.backoff.maxMs) this.#attempt = 0;
    this.#connectedAt = undefined;
  }

  #abortAll(): void {
    for (const c of this.#watches) c.abort();
    for (const c of this.#lists) c.abort();
    this.#watches.clear();
    this.#lists.clear();
  }

  /** The list call, abortable (close, timeout) through a per-request middleware. */
  async #list(): Promise<KubernetesListObject<KubernetesObject>> {
    const run = this.#run;
    const ctl = new AbortController();
    this.#lists.add(ctl);
    const timeoutMs = this.s.requestTimeoutMs;
    const timer = this.s.timers.set(() => ctl.abort(new Error(`list timed out after ${timeoutMs} ms`)), timeoutMs);
    try {
      const list = await this.#track(this.spec.list(this.s.apis(), withSignal(ctl.signal)));
      if (Array.isArray(list?.items)) for (const item of list.items) slim(item);
      return list;
    } catch (err) {
      // Our own timeout says so; an abort by stop/close is ignored anyway (stale run).
      const e: unknown = ctl.signal.aborted && ctl.signal.reason instanceof Error ? ctl.signal.reason : err;
      if (typeof e === 'object' && e !== null) this.#errorRuns.set(e, run);
      throw e;
    } finally {
      this.s.timers.clear(timer);
      this.#lists.delete(ctl);
    }
  }
}

/** client-node's Watch, guarded for one Informer (see the file comment). */
class GuardedWatch extends Watch {
  readonly #owner: Informer;

  constructor(kubeConfig: KubeConfig, owner: Informer) {
    super(kubeConfig);
    this.#owner = owner;
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    const owner = this.#owner;
    const run = owner.run;
    // Not calling done() ends ListWatch's loop: nothing of a stopped run goes on.
    if (!owner.mayWatch(run)) return abortedController();
    owner.watchOpening();
    if (owner.flapping) {
      owner.fail(run, new Error(`the watch keeps ending within ${MIN_WATCH_MS} ms of opening (${MAX_QUICK_WATCHES} times in a row)`));
      return abortedController();
    }
    const s = owner.s;
    const openedAt = s.clock.now();
    const timeoutSeconds = WATCH_TIMEOUT_S.min + Math.floor(s.random() * (WATCH_TIMEOUT_S.max - WATCH_TIMEOUT_S.min));
    let controller: AbortController | undefined;
    let finished = false;
    let deadline: unknown;
    const finish = (err: unknown): void => {
      if (finished) return;
      finished = true;
      if (deadline !== undefined) s.timers.clear(deadline);
      const current = owner.mayWatch(run);
      // A clean end and a 410 are retried by ListWatch itself (re-watch / relist), at once.
      owner.watchEnded(controller, openedAt, current && (err === null || statusOf(err) === 410));
      if (current) done(err);
    };
    const params = { ...queryParams, allowWatchBookmarks: true, timeoutSeconds };
    let c: AbortController;
    try {
      c = await owner.track(
        super.watch(
          path,
          params,
          (phase, obj, raw) => {
            if (!finished && owner.mayWatch(run)) callback(phase, slim(obj), raw);
          },
          (err: unknown) => finish(err ?? null),
        ),
      );
    } catch (err) {
      // Watch.watch rejects when building the request fails (credentials, no cluster). ListWatch
      // calls watch() from a chain nobody awaits after a re-watch, so a rejection here would be an
      // unhandled one: report it through done() like any other failure.
      finish(err);
      return abortedController();
    }
    controller = c;
    if (finished) return c;
    if (!owner.mayWatch(run)) {
      // Stopped while connecting: stop() could not reach this request yet.
      finished = true;
      c.abort();
      return c;
    }
    owner.watchConnected(c);
    deadline = s.timers.set(() => {
      c.abort();
      finish(null);
    }, (timeoutSeconds + WATCH_DEADLINE_SLACK_S) * 1000);
    return c;
  }
}

function gauge(registry: Registry | undefined, name: string, help: string, labelNames: string[] = []): Gauge<string> | undefined {
  if (registry === undefined) return undefined;
  return (registry.getSingleMetric(name) as Gauge<string> | undefined) ?? new Gauge({ name, help, labelNames, registers: [registry] });
}

export class KubeSource extends EventEmitter<KubeSourceEvents> {
  readonly #log: Logger;
  readonly #kubeConfig: KubeConfig;
  readonly #trustDomain: string;
  readonly #namespace: string;
  readonly #clock: Clock;
  readonly #timers: Timers;
  readonly #debounceMs: number;
  readonly #startTimeoutMs: number;
  readonly #informers: Informer[];
  readonly #objectsGauge: Gauge<string> | undefined;
  readonly #problemsGauge: Gauge<string> | undefined;

  #state: 'new' | 'starting' | 'running' | 'closed' = 'new';
  #apis: Apis | undefined;
  #model: MeshModel | undefined;
  #problems = new Map<string, KubeProblem>();
  #updates = 0;
  #builtAt: number | undefined;
  #debounceTimer: unknown;
  #startTimer: unknown;
  #startWaiter: { resolve: (m: MeshModel) => void; reject: (e: Error) => void } | undefined;
  #closing: Promise<void> | undefined;

  constructor(o: KubeSourceOptions) {
    super();
    this.#log = o.logger.child({ component: 'discovery.kube-source' });
    this.#kubeConfig = o.kubeConfig;
    this.#trustDomain = parseTrustDomain(o.trustDomain);
    this.#namespace = o.namespace ?? KUBE_WARD_NAMESPACE;
    this.#clock = o.clock ?? systemClock;
    this.#timers = o.timers ?? systemTimers;
    this.#debounceMs = o.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.#startTimeoutMs = o.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    const backoff = o.backoff ?? DEFAULT_BACKOFF;
    if (!(backoff.initialMs > 0 && backoff.maxMs >= backoff.initialMs)) bug(`invalid backoff ${JSON.stringify(backoff)}`);

    let restarts: Counter<'resource'> | undefined;
    if (o.registry !== undefined) {
      const name = 'ward_discovery_kube_restarts_total';
      restarts =
        (o.registry.getSingleMetric(name) as Counter<'resource'> | undefined) ??
        new Counter({ name, help: 'Kubernetes informers restarted after they stopped on an error, by resource', labelNames: ['resource'], registers: [o.registry] });
    }
    this.#objectsGauge = gauge(o.registry, 'ward_discovery_kube_objects', 'Objects in the Kubernetes source cache, by resource', ['resource']);
    this.#problemsGauge = gauge(o.registry, 'ward_discovery_kube_problems', 'Kubernetes objects (or parts of them) left out of the mesh model at the last rebuild');

    const shared: Shared = {
      log: this.#log,
      clock: this.#clock,
      timers: this.#timers,
      random: o.random ?? Math.random,
      backoff: { initialMs: backoff.initialMs, maxMs: backoff.maxMs },
      requestTimeoutMs: o.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      restarts,
      apis: () => this.#apis ?? bug('KubeSource: API clients used before start()'),
      onChange: () => this.#changed(),
      onSynced: () => this.#synced(),
    };
    this.#informers = KUBE_RESOURCES.map((spec) => new Informer(spec, this.#kubeConfig, shared));
  }

  /**
   * Lists every resource, then watches. Resolves with the first model once every informer has
   * listed; rejects with WARD_KUBE_UNAVAILABLE (naming each resource's last error) when
   * that has not happened within `startTimeoutMs`, and then leaves nothing running.
   */
  start(): Promise<MeshModel> {
    if (this.#state !== 'new') bug('KubeSource.start() called twice');
    this.#state = 'starting';
    try {
      const kc = this.#kubeConfig;
      this.#apis = {
        core: kc.makeApiClient(CoreV1Api),
        discovery: kc.makeApiClient(DiscoveryV1Api),
        networking: kc.makeApiClient(NetworkingV1Api),
        custom: kc.makeApiClient(CustomObjectsApi),
      };
    } catch (err) {
      this.#state = 'closed';
      return Promise.reject(new WardError('WARD_CONFIG_INVALID', `kubeconfig: ${(err as Error).message}`, { cause: err }));
    }
    const started = new Promise<MeshModel>((resolve, reject) => {
      this.#startWaiter = { resolve, reject };
    });
    this.#startTimer = this.#timers.set(() => {
      this.#startTimer = undefined;
      this.#startFailed();
    }, this.#startTimeoutMs);
    for (const i of this.#informers) i.start();
    return started;
  }

  /** The current model. Throws before start() has resolved. */
  current(): MeshModel {
    if (this.#model === undefined) bug('KubeSource.current() before start() succeeded');
    return this.#model;
  }

  /**
   * A pod from the cache, as attestation needs it (always the latest the watch delivered, not the
   * last model). undefined when unknown, or before the pods informer has listed.
   */
  pod(namespace: string, name: string): KubePodInfo | undefined {
    const pods = this.#informers.find((i) => i.spec.resource === 'pods')!;
    if (!pods.synced) return undefined;
    const p = pods.cache.get(name, namespace) as KubePod | undefined;
    return p === undefined ? undefined : podInfo(p);
  }

  /**
   * Whether a Running pod of Ward's namespace runs as `serviceAccount` now (the ingress: its identity
   * is renewed only while one does, as a node's only while its proxy pod runs). False before sync.
   */
  hasRunningPod(serviceAccount: string): boolean {
    const pods = this.#informers.find((i) => i.spec.resource === 'pods')!;
    if (!pods.synced) return false;
    return pods.cache.list(this.#namespace).some((p) => {
      const info = podInfo(p as KubePod);
      return info !== undefined && info.serviceAccount === serviceAccount && info.phase === 'Running';
    });
  }

  /** The problems found at the last rebuild, sorted. */
  problems(): readonly KubeProblem[] {
    return [...this.#problems.values()];
  }

  status(): KubeSourceStatus {
    return {
      synced: this.#model !== undefined,
      informers: this.#informers.map((i) => ({
        resource: i.spec.resource,
        state: i.state,
        synced: i.synced,
        objects: i.cache.list().length,
        resourceVersion: i.cache.latestResourceVersion(),
        restarts: i.restarts,
        ...(i.lastError !== undefined ? { lastError: { ...i.lastError } } : {}),
      })),
      problems: this.#problems.size,
      updates: this.#updates,
      ...(this.#builtAt !== undefined ? { builtAt: this.#builtAt } : {}),
    };
  }

  /**
   * Stops every informer, aborts requests in flight and waits (bounded) for them to settle.
   * Idempotent; no event is emitted afterwards. A start() still waiting rejects.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#state = 'closed';
    if (this.#debounceTimer !== undefined) this.#timers.clear(this.#debounceTimer);
    if (this.#startTimer !== undefined) this.#timers.clear(this.#startTimer);
    this.#debounceTimer = this.#startTimer = undefined;
    const waiter = this.#startWaiter;
    this.#startWaiter = undefined;
    waiter?.reject(new WardError('WARD_KUBE_UNAVAILABLE', 'the Kubernetes source was closed before its first sync'));
    const settled = Promise.allSettled(this.#informers.map((i) => i.close()));
    this.#closing = new Promise<void>((resolve) => {
      const t = this.#timers.set(resolve, CLOSE_GRACE_MS);
      void settled.then(() => {
        this.#timers.clear(t);
        resolve();
      });
    });
    return this.#closing;
  }

  // ---- internals --------------------------------------------------------------------------------

  #synced(): void {
    if (this.#state !== 'starting' || !this.#informers.every((i) => i.synced)) return;
    if (this.#startTimer !== undefined) this.#timers.clear(this.#startTimer);
    this.#startTimer = undefined;
    let model: MeshModel;
    try {
      model = this.#build();
    } catch (err) {
      // A bug in the translation, not an API failure: do not let it reach the informer (which
      // would count it as a failed list and retry forever).
      this.#log.error({ err }, 'BUG: translating the Kubernetes objects failed');
      const waiter = this.#startWaiter;
      this.#startWaiter = undefined;
      void this.close();
      waiter?.reject(err as Error);
      return;
    }
    this.#state = 'running';
    this.#model = model;
    this.#log.info(
      {
        nodes: model.nodes.length,
        workloads: model.workloads.length,
        services: model.services.length,
        policies: model.policies.length,
        routes: model.routes.length,
        problems: this.#problems.size,
      },
      'Kubernetes source synced',
    );
    const waiter = this.#startWaiter;
    this.#startWaiter = undefined;
    waiter?.resolve(model);
  }

  #startFailed(): void {
    if (this.#state !== 'starting') return;
    const waiting = this.#informers.filter((i) => !i.synced);
    const detail = waiting.map((i) => `${i.spec.resource} (${i.lastError?.message ?? 'no answer'})`).join(', ');
    const err = new WardError(
      'WARD_KUBE_UNAVAILABLE',
      `the Kubernetes API did not answer within ${this.#startTimeoutMs} ms: could not list ${detail}`,
    );
    this.#log.error({ err: err.message }, 'Kubernetes source could not sync');
    const waiter = this.#startWaiter;
    this.#startWaiter = undefined;
    void this.close();
    waiter?.reject(err);
  }

  /** A cache changed: rebuild after the debounce (joining a rebuild already scheduled). */
  #changed(): void {
    if (this.#state !== 'running' || this.#debounceTimer !== undefined) return;
    this.#debounceTimer = this.#timers.set(() => {
      this.#debounceTimer = undefined;
      this.#rebuild();
    }, this.#debounceMs);
  }

  #rebuild(): void {
    if (this.#state !== 'running') return;
    const prev = this.current();
    let next: MeshModel;
    try {
      next = this.#build();
    } catch (err) {
      this.#log.error({ err }, 'BUG: translating the Kubernetes objects failed; keeping the last model');
      return;
    }
    const diff = diffModels(prev, next);
    if (diff.empty) {
      this.#log.debug('Kubernetes objects changed, the mesh model did not');
      return;
    }
    this.#model = next;
    this.#updates++;
    this.#log.info(diffSummary(diff), 'mesh model changed');
    this.#emitSafely('update', next, diff);
  }

  /** Translates the caches; updates metrics and the problem set (new problems logged and emitted). */
  #build(): MeshModel {
    const objects = {} as Record<keyof KubeObjects, readonly KubernetesObject[]>;
    for (const i of this.#informers) {
      const items = i.cache.list();
      objects[i.spec.field] = items;
      this.#objectsGauge?.set({ resource: i.spec.resource }, items.length);
    }
    const { model, problems } = modelFromKube(objects as unknown as KubeObjects, { trustDomain: this.#trustDomain, namespace: this.#namespace });
    this.#builtAt = this.#clock.now();
    const next = new Map<string, KubeProblem>();
    const fresh: KubeProblem[] = [];
    for (const p of problems) {
      const key = `${p.kind}\0${p.ref}\0${p.reason}`;
      next.set(key, p);
      if (!this.#problems.has(key)) fresh.push(p);
    }
    this.#problems = next;
    this.#problemsGauge?.set(next.size);
    for (const p of fresh) {
      this.#log.warn({ kind: p.kind, ref: p.ref, reason: p.reason }, 'Kubernetes object left out of the mesh model');
      this.#emitSafely('problem', p);
    }
    return model;
  }

  // A throwing listener is the listener's bug; it must not stop the source.
  #emitSafely<K extends keyof KubeSourceEvents>(event: K, ...args: KubeSourceEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      this.#log.error({ err, event }, 'BUG: a KubeSource listener threw');
    }
  }
}

const KEYS_LOGGED = 5;

/** Counts per kind, and the first few keys of each list (a relist can change thousands). */
function diffSummary(d: ModelDiff): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const few = (keys: readonly string[]): string[] => (keys.length > KEYS_LOGGED ? [...keys.slice(0, KEYS_LOGGED), `… ${keys.length - KEYS_LOGGED} more`] : [...keys]);
  for (const kind of ['nodes', 'workloads', 'services', 'policies', 'routes'] as const) {
    const k = d[kind];
    if (k.added.length + k.removed.length + k.changed.length > 0) out[kind] = { added: few(k.added), removed: few(k.removed), changed: few(k.changed) };
  }
  return out;
}
