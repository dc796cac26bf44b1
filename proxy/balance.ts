/**
 * The load balancer shared by the node proxy and the ingress. It knows endpoints, latencies and
 * failures, nothing of HTTP: callers report the outcome of each use through an EndpointLease.
 *
 * - Identity-aware: an endpoint without a SPIFFE ID to verify is never balanced to (secure naming).
 * - Power of two choices over a peak-EWMA latency score, as Linkerd (tower) and Finagle do: two
 *   random candidates, the cheaper wins. Cheap per pick and, unlike "least loaded of all", it does
 *   not stampede every proxy onto the same endpoint on stale information.
 * - Locality: same node, then same zone, then anywhere; a tier is skipped when all of it is
 *   ejected or already tried for the request.
 * - Ejection with exponential backoff, checked against the injected clock on each pick, so the
 *   balancer owns no timers and needs no close().
 *
 * Everything is synchronous and single-threaded (one event loop), so no pick or outcome can
 * interleave with another's bookkeeping.
 */
import type { Clock } from '../core/clock.js';
import { bug } from '../core/errors.js';

/** What the balancer needs of an endpoint (a subset of core/protocol Endpoint). */
export interface BalancerEndpoint {
  readonly address: string; // "ip:port"
  readonly identity: string; // SPIFFE ID it must present
  readonly node: string;
  readonly zone?: string;
  readonly workload: string; // "namespace/name"
}

/** Hard failures eject at once; 'response' failures (5xx, reset after sending) count toward consecutiveFailures. */
export type FailureKind = 'connect' | 'tls' | 'identity' | 'response';

export interface BalancerOptions {
  clock: Clock;
  localNode: string;
  localZone?: string;
  random?: () => number; // [0,1), default Math.random
  decayMs?: number; // peak-EWMA decay time constant, default 10_000
  defaultRttMs?: number; // score of an endpoint with no samples yet, default 1
  ejection?: { consecutiveFailures?: number /* default 5 */; baseMs?: number /* 1_000 */; maxMs?: number /* 60_000 */ };
}

/** One request's use of an endpoint: exactly one of succeed()/fail()/cancel() (later calls ignored). */
export interface EndpointLease {
  readonly endpoint: BalancerEndpoint;
  /** Stable key of the endpoint: `${address} ${identity} ${workload}`. */
  readonly key: string;
  succeed(): void; // latency = clock.now() - lease start; resets the consecutive-failure count and the ejection exponent
  fail(kind: FailureKind): void;
  cancel(): void; // the caller gave up (client went away): no sample, pending released
}

export interface EndpointState {
  key: string;
  endpoint: BalancerEndpoint;
  tier: 'node' | 'zone' | 'any';
  pending: number;
  ewmaMs: number;
  consecutiveFailures: number;
  ejectedUntil?: number; // clock ms
  ejections: number; // total ejections so far
}

type Tier = EndpointState['tier'];
const TIERS: readonly Tier[] = ['node', 'zone', 'any'];

/**
 * The clock has millisecond resolution, so a fast endpoint can measure 0 ms. A zero estimate would
 * make `ewma × (pending + 1)` ignore pending requests; this floor keeps them counting.
 */
const MIN_RTT_MS = 0.001;

/** Fixed at construction and shared by the set and its leases. */
interface Settings {
  readonly clock: Clock;
  readonly decayMs: number;
  readonly defaultRttMs: number;
  readonly failureThreshold: number;
  readonly baseMs: number;
  readonly maxMs: number;
  readonly ejected: (t: Tracked, until: number, kind: FailureKind) => void;
}

/** The balancer's bookkeeping for one endpoint. */
class Tracked {
  endpoint: BalancerEndpoint;
  tier: Tier;
  pending = 0;
  /** Peak-EWMA latency as of `stamp` (the last sample). */
  cost: number;
  stamp: number;
  consecutiveFailures = 0;
  ejectedUntil: number | undefined = undefined;
  ejections = 0;
  /** Ejections since the last success: the backoff exponent. */
  ejectionsInARow = 0;
  /** Set when update() drops the endpoint; outcomes of leases still out are then ignored. */
  removed = false;

  constructor(
    readonly key: string,
    endpoint: BalancerEndpoint,
    tier: Tier,
    s: Settings,
  ) {
    this.endpoint = endpoint;
    this.tier = tier;
    this.cost = s.defaultRttMs;
    this.stamp = s.clock.now();
  }

  /** Ejected at `now`? Clears an ejection that has run out, so the dump shows only live ones. */
  isEjected(now: number): boolean {
    if (this.ejectedUntil === undefined) return false;
    if (now < this.ejectedUntil) return true;
    this.ejectedUntil = undefined;
    return false;
  }

  /**
   * The latency estimate picks use. Between samples it relaxes from the last peak-EWMA toward
   * defaultRttMs with the same time constant. Linkerd and Finagle decay on read for the same
   * reason: otherwise an endpoint that once had a slow peak always loses the p2c comparison,
   * gets no traffic, hence no sample, and stays shunned forever. Relaxing toward the prior rather
   * than to zero makes a long-idle endpoint look like a new one.
   */
  rttMs(now: number, s: Settings): number {
    const w = Math.exp(-Math.max(0, now - this.stamp) / s.decayMs);
    return s.defaultRttMs + (this.cost - s.defaultRttMs) * w;
  }

  score(now: number, s: Settings): number {
    return Math.max(MIN_RTT_MS, this.rttMs(now, s)) * (this.pending + 1);
  }

  /** Peak-EWMA: a slower sample is taken at once; a faster one is blended in by elapsed time. */
  observe(sampleMs: number, now: number, s: Settings): void {
    if (sampleMs > this.cost) {
      this.cost = sampleMs;
    } else {
      const w = Math.exp(-Math.max(0, now - this.stamp) / s.decayMs);
      this.cost = this.cost * w + sampleMs * (1 - w);
    }
    this.stamp = now;
  }
}

function keyOf(e: BalancerEndpoint): string {
  return `${e.address} ${e.identity} ${e.workload}`;
}

/** A class rather than a closure-per-method object: the lease is the only per-request allocation. */
class Lease implements EndpointLease {
  readonly endpoint: BalancerEndpoint;
  readonly key: string;
  readonly #t: Tracked;
  readonly #s: Settings;
  readonly #start: number;
  #done = false;

  constructor(t: Tracked, s: Settings, now: number) {
    this.endpoint = t.endpoint;
    this.key = t.key;
    this.#t = t;
    this.#s = s;
    this.#start = now;
    t.pending++;
  }

  /** Releases the pending slot once; false when an outcome was already reported. */
  #finish(): boolean {
    if (this.#done) return false;
    this.#done = true;
    this.#t.pending--;
    return true;
  }

  succeed(): void {
    if (!this.#finish() || this.#t.removed) return;
    const t = this.#t;
    const now = this.#s.clock.now();
    t.observe(Math.max(0, now - this.#start), now, this.#s);
    t.consecutiveFailures = 0;
    t.ejectionsInARow = 0;
    // An ejection already in force stays: it is short and bounded, and this success may be a
    // request that was sent before the endpoint broke.
  }

  fail(kind: FailureKind): void {
    if (!this.#finish() || this.#t.removed) return;
    const t = this.#t;
    const s = this.#s;
    const now = s.clock.now();
    if (kind === 'response') {
      // A failed response may only raise the estimate: a timeout marks the endpoint slow, but
      // a fast 5xx must not make a broken endpoint look fast and attract more traffic.
      const latency = Math.max(0, now - this.#start);
      if (latency > t.cost) t.observe(latency, now, s);
    }
    t.consecutiveFailures++;
    // Requests already in flight when the endpoint was ejected fail together; they must not
    // each double the backoff.
    if (t.isEjected(now)) return;
    // The count is not reset on ejection: after the backoff the endpoint is on probation, and one
    // more failure (any kind) ejects it again for twice as long. Only a success clears it.
    if (kind !== 'response' || t.consecutiveFailures >= s.failureThreshold) {
      const ms = Math.min(s.maxMs, s.baseMs * 2 ** Math.min(t.ejectionsInARow, 40));
      const until = now + ms;
      t.ejectedUntil = until;
      t.ejections++;
      t.ejectionsInARow++;
      s.ejected(t, until, kind);
    }
  }

  cancel(): void {
    this.#finish();
  }
}

function positive(name: string, v: number): number {
  if (!Number.isFinite(v) || v <= 0) bug(`balancer option ${name} must be a positive number, got ${v}`);
  return v;
}

/** The identity-verified endpoints of one service (or route backend), and how to choose among them. */
export class EndpointSet {
  readonly name: string;
  /** Called on every ejection (for metrics and the health report to the pool). */
  onEject?: (e: { key: string; endpoint: BalancerEndpoint; until: number; kind: FailureKind }) => void;

  readonly #s: Settings;
  readonly #localNode: string;
  readonly #localZone: string | undefined;
  readonly #random: () => number;
  #byKey = new Map<string, Tracked>();
  /** The same endpoints grouped by tier, in TIERS order; rebuilt by update(), read by pick(). */
  #tiers: Tracked[][] = [[], [], []];

  constructor(name: string, o: BalancerOptions) {
    this.name = name;
    this.#localNode = o.localNode;
    this.#localZone = o.localZone;
    this.#random = o.random ?? Math.random;
    const threshold = o.ejection?.consecutiveFailures ?? 5;
    if (!Number.isInteger(threshold) || threshold < 1) bug(`balancer option ejection.consecutiveFailures must be a positive integer, got ${threshold}`);
    const baseMs = positive('ejection.baseMs', o.ejection?.baseMs ?? 1_000);
    const maxMs = positive('ejection.maxMs', o.ejection?.maxMs ?? 60_000);
    if (maxMs < baseMs) bug(`balancer option ejection.maxMs (${maxMs}) is below ejection.baseMs (${baseMs})`);
    this.#s = {
      clock: o.clock,
      decayMs: positive('decayMs', o.decayMs ?? 10_000),
      defaultRttMs: positive('defaultRttMs', o.defaultRttMs ?? 1),
      failureThreshold: threshold,
      baseMs,
      maxMs,
      ejected: (t, until, kind) => this.onEject?.({ key: t.key, endpoint: t.endpoint, until, kind }),
    };
  }

  /** Replaces the endpoint list; endpoints still present (same key) keep their stats, pending count and ejection. Endpoints with an empty identity are ignored (only identity-verified endpoints are balanced). */
  update(endpoints: readonly BalancerEndpoint[]): void {
    const next = new Map<string, Tracked>();
    const tiers: Tracked[][] = [[], [], []];
    for (const e of endpoints) {
      if (!e.identity) continue;
      const key = keyOf(e);
      if (next.has(key)) continue; // a duplicate would double the endpoint's chance of being picked
      const tier = this.#tierOf(e);
      let t = this.#byKey.get(key);
      if (t) {
        // Node and zone are not part of the key and may have changed (a reschedule keeps the IP).
        t.endpoint = e;
        t.tier = tier;
      } else {
        t = new Tracked(key, e, tier, this.#s);
      }
      next.set(key, t);
      tiers[TIERS.indexOf(tier)].push(t);
    }
    for (const [key, t] of this.#byKey) if (!next.has(key)) t.removed = true;
    this.#byKey = next;
    this.#tiers = tiers;
  }

  /** Power of two choices by score = ewmaMs * (pending + 1) within the best locality tier that has an available (not ejected, not excluded) endpoint; one candidate → it; none → undefined. `exclude` holds keys already tried for this request. */
  pick(exclude?: ReadonlySet<string>): EndpointLease | undefined {
    const s = this.#s;
    const now = s.clock.now();
    for (const tier of this.#tiers) {
      // Two passes over the tier (count, then index) instead of collecting candidates into an
      // array: no allocation per pick, and tiers are small.
      let n = 0;
      for (const t of tier) if (this.#usable(t, now, exclude)) n++;
      if (n === 0) continue;
      if (n === 1) {
        for (const t of tier) if (this.#usable(t, now, exclude)) return new Lease(t, s, now);
      }
      // Two distinct indices among the n usable endpoints.
      const i = Math.min(n - 1, Math.floor(this.#random() * n));
      let j = Math.min(n - 2, Math.floor(this.#random() * (n - 1)));
      if (j >= i) j++;
      let a: Tracked | undefined;
      let b: Tracked | undefined;
      let k = 0;
      for (const t of tier) {
        if (!this.#usable(t, now, exclude)) continue;
        if (k === i) a = t;
        else if (k === j) b = t;
        k++;
      }
      if (!a || !b) bug('p2c candidate index out of range');
      // Ties go to `a`, itself a uniform random choice, so equal endpoints share traffic evenly.
      return new Lease(b.score(now, s) < a.score(now, s) ? b : a, s, now);
    }
    return undefined;
  }

  /** Endpoints known (identity-verified, deduplicated). */
  get size(): number {
    return this.#byKey.size;
  }

  /** Endpoints not ejected now. */
  available(): number {
    const now = this.#s.clock.now();
    let n = 0;
    for (const t of this.#byKey.values()) if (!t.isEjected(now)) n++;
    return n;
  }

  /** For the admin state dump and health reports. `ewmaMs` is the estimate picks use now. */
  states(): EndpointState[] {
    const now = this.#s.clock.now();
    const out: EndpointState[] = [];
    for (const t of this.#byKey.values()) {
      const st: EndpointState = {
        key: t.key,
        endpoint: t.endpoint,
        tier: t.tier,
        pending: t.pending,
        ewmaMs: t.rttMs(now, this.#s),
        consecutiveFailures: t.consecutiveFailures,
        ejections: t.ejections,
      };
      if (t.isEjected(now)) st.ejectedUntil = t.ejectedUntil;
      out.push(st);
    }
    return out;
  }

  #tierOf(e: BalancerEndpoint): Tier {
    if (e.node === this.#localNode) return 'node';
    if (this.#localZone !== undefined && e.zone !== undefined && e.zone === this.#localZone) return 'zone';
    return 'any';
  }

  #usable(t: Tracked, now: number, exclude: ReadonlySet<string> | undefined): boolean {
    return !t.isEjected(now) && !(exclude?.has(t.key) ?? false);
  }
}

const BUCKETS = 10;

/**
 * Linkerd-style retry budget: retries allowed = minPerSecond + ratio × requests in the last ttlMs.
 *
 * As in tower's TpsBudget (what Linkerd uses), the minimum is a reserve of minPerSecond × ttl
 * seconds retries over the window, so a client that has just started or sends little can still
 * retry; beyond it each retry needs 1/ratio original requests in the same window. Retries taken
 * also age out with the window. Counts live in BUCKETS ring slots of ttlMs/BUCKETS each, so the
 * memory is fixed whatever the request rate; the window is therefore accurate to one slot.
 */
export class RetryBudget {
  readonly #clock: Clock;
  readonly #ratio: number;
  readonly #reserve: number;
  readonly #slotMs: number;
  readonly #epochs: number[] = new Array<number>(BUCKETS).fill(Number.NEGATIVE_INFINITY);
  readonly #deposits: number[] = new Array<number>(BUCKETS).fill(0);
  readonly #withdrawals: number[] = new Array<number>(BUCKETS).fill(0);

  constructor(o: { clock: Clock; ratio?: number /* 0.2 */; minPerSecond?: number /* 10 */; ttlMs?: number /* 10_000 */ }) {
    const ratio = o.ratio ?? 0.2;
    const minPerSecond = o.minPerSecond ?? 10;
    const ttlMs = positive('ttlMs', o.ttlMs ?? 10_000);
    if (!Number.isFinite(ratio) || ratio < 0) bug(`retry budget ratio must be >= 0, got ${ratio}`);
    if (!Number.isFinite(minPerSecond) || minPerSecond < 0) bug(`retry budget minPerSecond must be >= 0, got ${minPerSecond}`);
    this.#clock = o.clock;
    this.#ratio = ratio;
    this.#reserve = (minPerSecond * ttlMs) / 1000;
    this.#slotMs = ttlMs / BUCKETS;
  }

  /** Record one original request. */
  deposit(): void {
    this.#deposits[this.#slot(this.#epoch())]++;
  }

  /** Take one retry if the budget allows it; false = do not retry. */
  tryWithdraw(): boolean {
    const epoch = this.#epoch();
    let deposits = 0;
    let withdrawals = 0;
    for (let i = 0; i < BUCKETS; i++) {
      if (this.#epochs[i] > epoch - BUCKETS && this.#epochs[i] <= epoch) {
        deposits += this.#deposits[i];
        withdrawals += this.#withdrawals[i];
      }
    }
    // The epsilon absorbs float error in ratio × deposits (0.2 × 15 = 3.0000000000000004 or 2.9999…).
    if (withdrawals + 1 > this.#reserve + this.#ratio * deposits + 1e-9) return false;
    this.#withdrawals[this.#slot(epoch)]++;
    return true;
  }

  #epoch(): number {
    return Math.floor(this.#clock.now() / this.#slotMs);
  }

  /** The ring slot for `epoch`, emptied first if it still holds an older epoch's counts. */
  #slot(epoch: number): number {
    const i = ((epoch % BUCKETS) + BUCKETS) % BUCKETS;
    if (this.#epochs[i] !== epoch) {
      this.#epochs[i] = epoch;
      this.#deposits[i] = 0;
      this.#withdrawals[i] = 0;
    }
    return i;
  }
}
