/**
 * NodeProxy: the composition of one node's proxy (DESIGN §5).
 *
 *   IdentityManager ── join (token or saved node identity), a certificate per local workload
 *   ControlClient ──── the pool's stream → MeshView (validated whole; NACKed when invalid)
 *   apply(view) ────── bundle → identities + inbound; wanted workload identities → IdentityManager;
 *                      endpoints → one EndpointSet per service; outbound listeners per local workload
 *   InboundServer ──── ADDRESS:15008, mutual TLS, authorization, to the local workloads
 *   OutboundListener ─ <workload address>:15001 each, HTTP proxy + CONNECT + h2c
 *   AdminServer ────── loopback: healthz, readyz, metrics, state, renew
 *   health reports ─── ejections, local workloads and certificates → the pool (POST /v1/health)
 *
 * Static stability: the data path reads only the last applied view, so when the pool is down the
 * proxy keeps routing and enforcing (deny rules included) exactly as it last knew; the control
 * client reconnects with backoff and the next snapshot or delta is applied as usual.
 */
import { request as httpsRequest, Agent } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.js';
import { ControlClient, systemTimers, type Timers } from '../core/control/index.js';
import { SpiffeId } from '../core/identity/index.js';
import type { Logger } from '../core/logger.js';
import type { TrustBundle } from '../core/pki/index.js';
import type { DefaultMode } from '../core/policy/index.js';
import { DISCOVERY_SERVER_PATH, type HealthReport } from '../core/protocol/index.js';
import { meshClientOptions } from '../core/tls/index.js';
import { isLoopback } from '../core/address.js';
import { AdminServer } from './admin.js';
import { EndpointSet, RetryBudget } from './balance.js';
import { IdentityManager, type HeldIdentity } from './identity.js';
import { InboundServer, type InboundLimits } from './inbound.js';
import { MeshView } from './mesh-view.js';
import { ProxyMetrics } from './metrics.js';
import { OutboundListener, type DataPlane, type OutboundLimits } from './outbound.js';
import { Upstreams, type UpstreamLimits } from './upstream.js';

export const DEFAULT_INBOUND_PORT = 15008;
export const DEFAULT_OUTBOUND_PORT = 15001;
export const DEFAULT_ADMIN_PORT = 15000;

export interface NodeProxyOptions {
  node: string;
  /** This node's address: the inbound listener binds it (and it is what endpoints of this node carry). */
  address: string;
  inboundPort?: number;
  outboundPort?: number;
  /**
   * Kubernetes mode: ONE outbound listener at `address`:outboundPort for every local workload, which
   * is told apart by the connection's source address (its pod IP), instead of a listener on each
   * workload's own address (local mode, where the proxy can bind them).
   */
  sharedOutbound?: boolean;
  /** Loopback only. Default: `address` when it is loopback, else 127.0.0.1; port 15000. */
  admin?: { host: string; port: number };
  caUrl: string;
  discoveryUrl: string;
  /** Initial trust anchors (the CA's bundle); later bundles come from the pool. */
  bundle: TrustBundle;
  joinToken?: string;
  /** Kubernetes mode, instead of joinToken: the projected ServiceAccount token file (audience ward), re-read at every join. */
  serviceAccountTokenFile?: string;
  stateDir?: string;
  /** Requested certificate lifetime, e.g. "1h". */
  ttl?: string;
  clusterDomain?: string;
  defaultMode?: DefaultMode;
  logger: Logger;
  registry: Registry;
  clock?: Clock;
  timers?: Timers;
  healthReportIntervalMs?: number;
  limits?: { inbound?: Partial<InboundLimits>; outbound?: Partial<OutboundLimits>; upstream?: Partial<UpstreamLimits> };
  /** The pool's reconnect backoff (tests shorten it). */
  controlBackoff?: { initialMs: number; maxMs: number };
}

export interface ProxyAddresses {
  inbound: AddressInfo;
  admin: AddressInfo;
  outbound: Record<string, AddressInfo>;
}

export class NodeProxy {
  readonly #o: NodeProxyOptions;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #timers: Timers;
  readonly #metrics: ProxyMetrics;
  readonly #identities: IdentityManager;
  readonly #upstreams: Upstreams;
  readonly #budget: RetryBudget;
  readonly #balancers = new Map<string, EndpointSet>();
  readonly #outbound = new Map<string, OutboundListener>();
  /** sharedOutbound: local workloads by address, rebuilt with every view. */
  #bySource = new Map<string, { workload: string; identity: string }>();
  readonly #dataPlane: DataPlane;
  #view: MeshView;
  #candidate: MeshView | undefined;
  #inbound: InboundServer | undefined;
  #admin: AdminServer | undefined;
  #control: ControlClient | undefined;
  #addresses: { inbound?: AddressInfo; admin?: AddressInfo } = {};
  #bundlePem: string;
  #healthTimer: unknown;
  #healthDirty = false;
  #reporting = false;
  readonly #reportAgent = new Agent({ keepAlive: true, maxCachedSessions: 0 });
  #closing: Promise<void> | undefined;
  /** Applies are serialized: listener reconciliation is async. */
  #applying: Promise<void> = Promise.resolve();

  constructor(o: NodeProxyOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: 'proxy', node: o.node });
    this.#clock = o.clock ?? systemClock;
    this.#timers = o.timers ?? systemTimers;
    this.#metrics = new ProxyMetrics(o.registry);
    this.#bundlePem = o.bundle.toPem();
    this.#view = MeshView.empty(o.bundle.trustDomain, o.clusterDomain);
    this.#identities = new IdentityManager({
      caUrl: o.caUrl,
      trustDomain: o.bundle.trustDomain,
      node: o.node,
      bundle: o.bundle,
      joinToken: o.joinToken,
      serviceAccountTokenFile: o.serviceAccountTokenFile,
      stateDir: o.stateDir,
      ttl: o.ttl,
      clock: this.#clock,
      timers: this.#timers,
      logger: o.logger,
      registry: o.registry,
    } as ConstructorParameters<typeof IdentityManager>[0]);
    this.#identities.on('lost', (id) => {
      this.#upstreams.dropSource(id);
      this.#healthDirty = true;
      this.#reportSoon();
    });
    // The pool's view of this node (ward status / ward check) shows certificates as reported: tell
    // it at once when one is obtained or renewed, not at the next interval.
    this.#identities.on('change', () => {
      this.#healthDirty = true;
      this.#reportSoon();
    });
    this.#upstreams = new Upstreams({
      trustDomain: o.bundle.trustDomain,
      bundle: () => this.#identities.bundle(),
      clock: this.#clock,
      limits: o.limits?.upstream,
      logger: o.logger,
      onConnect: (result) => {
        this.#metrics.connections.inc({ direction: 'upstream', result });
        if (result !== 'ok') this.#metrics.handshakeFailures.inc({ direction: 'outbound', reason: result });
      },
    });
    this.#budget = new RetryBudget({ clock: this.#clock });
    this.#dataPlane = {
      view: () => this.#view,
      identity: (id) => this.#identities.get(id),
      upstreams: this.#upstreams,
      balancer: (key) => this.#balancers.get(key),
      budget: this.#budget,
      metrics: this.#metrics,
      logger: o.logger,
      clock: this.#clock,
    };
  }

  /** Joins, opens the inbound and admin listeners, and starts following the pool. */
  async start(): Promise<ProxyAddresses> {
    await this.#join();
    const admin = this.#o.admin ?? { host: isLoopback(this.#o.address) ? this.#o.address : '127.0.0.1', port: DEFAULT_ADMIN_PORT };
    this.#admin = new AdminServer({ source: { ready: () => this.ready(), state: () => this.state(), renewAll: () => this.#identities.renewAll() }, registry: this.#o.registry, logger: this.#o.logger });
    this.#addresses.admin = await this.#admin.listen(admin.host, admin.port);
    this.#inbound = new InboundServer({ dataPlane: this.#dataPlane, bundle: this.#identities.bundle(), defaultMode: this.#o.defaultMode ?? 'all-authenticated', limits: this.#o.limits?.inbound });
    this.#addresses.inbound = await this.#inbound.listen(this.#o.address, this.#o.inboundPort ?? DEFAULT_INBOUND_PORT);
    this.#control = new ControlClient({
      url: this.#o.discoveryUrl,
      trustDomain: this.#o.bundle.trustDomain,
      credentials: () => this.#identities.node().credentials,
      validate: (next) => {
        this.#candidate = MeshView.from(next, { trustDomain: this.#o.bundle.trustDomain, clusterDomain: this.#o.clusterDomain });
      },
      logger: this.#o.logger,
      clock: this.#clock,
      timers: this.#timers,
      backoff: this.#o.controlBackoff,
    });
    this.#control.on('update', (state) => {
      const view = this.#candidate?.version === state.version ? this.#candidate : MeshView.from(state, { trustDomain: this.#o.bundle.trustDomain, clusterDomain: this.#o.clusterDomain });
      this.#candidate = undefined;
      this.#applying = this.#applying.then(() => this.#apply(view)).catch((err: unknown) => this.#log.error({ err }, 'BUG: applying a validated view failed'));
    });
    this.#control.on('rejected', (frame, err) => this.#log.warn({ version: frame.version, err: err.message }, 'refused a configuration version from the pool; keeping the previous one'));
    this.#control.on('disconnected', (err) => this.#log.info({ reason: err.reason, err: err.message }, 'discovery stream ended; serving the last configuration'));
    this.#control.start();
    this.#scheduleHealth();
    this.#log.info({ inbound: this.#addresses.inbound, admin: this.#addresses.admin }, 'node proxy started');
    return this.addresses();
  }

  addresses(): ProxyAddresses {
    const outbound: Record<string, AddressInfo> = {};
    for (const [k, l] of this.#outbound) {
      const a = l.address();
      if (a) outbound[k] = a;
    }
    return { inbound: this.#addresses.inbound!, admin: this.#addresses.admin!, outbound };
  }

  /** Whether the applied view settled (wait on it in tests after an update). */
  settled(): Promise<void> {
    return this.#applying;
  }

  ready(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.#view.version === 0) reasons.push('no configuration from the discovery pool yet');
    for (const w of this.#view.workloads.values()) {
      if (!this.#identities.get(w.identity)) reasons.push(`no valid certificate for workload ${w.key} (${w.identity})`);
      if (!this.#outbound.get(this.#o.sharedOutbound ? '*' : w.key)?.address()) reasons.push(`outbound listener for ${w.key} not open`);
    }
    try {
      this.#identities.node();
    } catch {
      reasons.push('no valid node certificate');
    }
    return { ready: reasons.length === 0, reasons };
  }

  state(): unknown {
    const control = this.#control?.status();
    return {
      node: this.#o.node,
      nodeIdentity: this.#identities.nodeId.toString(),
      trustDomain: this.#view.trustDomain,
      configVersion: this.#view.version,
      acknowledgedVersion: control?.ackedVersion ?? 0,
      control: control ?? null,
      listeners: this.addresses(),
      workloads: [...this.#view.workloads.values()].map((w) => ({ workload: w.key, identity: w.identity, address: w.address, ports: w.ports })),
      certificates: this.#identities.status(),
      services: [...this.#view.services.entries()].map(([key, s]) => ({
        service: key,
        ports: s.ports,
        endpoints: (this.#balancers.get(key)?.states() ?? []).map((e) => ({
          address: e.endpoint.address,
          identity: e.endpoint.identity,
          workload: e.endpoint.workload,
          node: e.endpoint.node,
          zone: e.endpoint.zone,
          locality: e.tier,
          pending: e.pending,
          ewmaMs: Math.round(e.ewmaMs * 1000) / 1000,
          ejectedUntil: e.ejectedUntil !== undefined && e.ejectedUntil > this.#clock.now() ? new Date(e.ejectedUntil).toISOString() : undefined,
          ejections: e.ejections,
        })),
      })),
      policies: this.#view.engine.policies.map((p) => ({ policy: `${p.metadata.namespace}/${p.metadata.name}`, action: p.spec.action, selector: p.spec.selector ?? null })),
    };
  }

  async #apply(view: MeshView): Promise<void> {
    if (this.#closing) return;
    // 1. Trust: a new bundle (root rotation) before anything that would verify with it.
    if (view.bundle) {
      const pem = view.bundle.toPem();
      if (pem !== this.#bundlePem) {
        this.#bundlePem = pem;
        this.#identities.setBundle(view.bundle);
        this.#inbound?.setBundle(view.bundle);
        this.#log.info({ version: view.version }, 'trust bundle updated');
      }
    }
    this.#view = view;
    // 2. Identities wanted on this node.
    const ids = new Map<string, SpiffeId>();
    for (const w of view.workloads.values()) ids.set(w.identity, w.id);
    this.#identities.setWorkloads([...ids.values()]);
    // 3. Balancers, one per service, stats kept across updates.
    let localZone: string | undefined;
    for (const s of view.services.values()) for (const e of s.endpoints) if (e.node === this.#o.node && e.zone) localZone = e.zone;
    const live = new Set<string>();
    for (const [key, s] of view.services) {
      let set = this.#balancers.get(key);
      if (!set) {
        set = new EndpointSet(key, { clock: this.#clock, localNode: this.#o.node, localZone });
        set.onEject = (e) => {
          this.#metrics.ejections.inc({ kind: e.kind });
          this.#log.warn({ service: key, endpoint: e.endpoint.address, workload: e.endpoint.workload, kind: e.kind, until: new Date(e.until).toISOString() }, 'endpoint ejected');
          this.#healthDirty = true;
          this.#reportSoon();
        };
        this.#balancers.set(key, set);
      }
      set.update(s.endpoints);
      for (const e of s.endpoints) live.add(e.address);
    }
    for (const key of [...this.#balancers.keys()]) if (!view.services.has(key)) this.#balancers.delete(key);
    this.#upstreams.retainEndpoints(live);
    // 4. Outbound listeners, one per local workload (or one for all: sharedOutbound).
    const localPorts = new Set<string>();
    for (const w of view.workloads.values()) for (const p of w.ports) localPorts.add(`${w.address}:${p}`);
    this.#inbound?.retainWorkloads(localPorts);
    if (this.#o.sharedOutbound) {
      // An address two workloads claim says nothing about who speaks: neither gets it.
      const byAddress = new Map<string, { workload: string; identity: string } | null>();
      for (const w of view.workloads.values()) byAddress.set(w.address, byAddress.has(w.address) ? null : { workload: w.key, identity: w.identity });
      this.#bySource = new Map([...byAddress].flatMap(([a, c]) => (c ? [[a, c] as const] : [])));
      if (!this.#outbound.has('*')) {
        const l = new OutboundListener({ bySourceAddress: (a) => this.#bySource.get(a), dataPlane: this.#dataPlane, limits: this.#o.limits?.outbound });
        this.#outbound.set('*', l);
        try {
          const a = await l.listen(this.#o.address, this.#o.outboundPort ?? DEFAULT_OUTBOUND_PORT);
          this.#log.info({ outbound: `${a.address}:${a.port}` }, 'outbound listener open for every workload of this node (by source address)');
        } catch (err) {
          this.#outbound.delete('*');
          this.#log.error({ address: this.#o.address, err: (err as Error).message }, 'could not open the node-wide outbound listener');
        }
      }
      this.#healthDirty = true;
      this.#reportSoon();
      return;
    }
    const closing: Promise<void>[] = [];
    for (const [key, l] of [...this.#outbound]) {
      const w = view.workloads.get(key);
      if (!w || w.identity !== l.identity) {
        this.#outbound.delete(key);
        closing.push(l.close());
      }
    }
    await Promise.all(closing);
    for (const w of view.workloads.values()) {
      if (this.#outbound.has(w.key)) continue;
      const l = new OutboundListener({ workload: w.key, identity: w.identity, dataPlane: this.#dataPlane, limits: this.#o.limits?.outbound });
      this.#outbound.set(w.key, l);
      try {
        const a = await l.listen(w.address, this.#o.outboundPort ?? DEFAULT_OUTBOUND_PORT);
        this.#log.info({ workload: w.key, outbound: `${a.address}:${a.port}` }, 'outbound listener open');
      } catch (err) {
        this.#outbound.delete(w.key);
        this.#log.error({ workload: w.key, address: w.address, err: (err as Error).message }, 'could not open the outbound listener for a workload');
      }
    }
    this.#healthDirty = true;
    this.#reportSoon();
  }

  // ---- health reports ------------------------------------------------------------------------

  #scheduleHealth(): void {
    const every = this.#o.healthReportIntervalMs ?? 30_000;
    this.#healthTimer = this.#timers.set(() => {
      this.#healthDirty = true;
      void this.#report().finally(() => {
        if (!this.#closing) this.#scheduleHealth();
      });
    }, every);
  }

  #reportSoon(): void {
    if (this.#reporting || this.#closing) return;
    void this.#report();
  }

  report(): HealthReport {
    const now = this.#clock.now();
    const ejected: HealthReport['ejected'] = [];
    for (const [service, set] of this.#balancers) {
      for (const e of set.states()) {
        if (e.ejectedUntil !== undefined && e.ejectedUntil > now) {
          ejected.push({ address: e.endpoint.address, service, workload: e.endpoint.workload, until: new Date(e.ejectedUntil).toISOString() });
        }
      }
    }
    const localWorkloads = [...this.#view.workloads.values()].map((w) => {
      const held = this.#identities.get(w.identity);
      return held ? { workload: w.key, healthy: true } : { workload: w.key, healthy: false, reason: 'no valid certificate' };
    });
    const certificates: HealthReport['certificates'] = [];
    const seen = new Set<string>();
    const add = (h: HeldIdentity | undefined): void => {
      if (!h || seen.has(h.id.toString())) return;
      seen.add(h.id.toString());
      certificates.push({ identity: h.id.toString(), notAfter: h.notAfter.toISOString() });
    };
    try {
      add(this.#identities.node());
    } catch {
      /* no node certificate: nothing to report */
    }
    for (const w of this.#view.workloads.values()) add(this.#identities.get(w.identity));
    return { node: this.#o.node, ejected: ejected.slice(0, 1000), localWorkloads, certificates };
  }

  async #report(): Promise<void> {
    if (!this.#healthDirty || this.#reporting || this.#closing) return;
    this.#reporting = true;
    this.#healthDirty = false;
    let delivered = false;
    try {
      const body = JSON.stringify(this.report());
      const url = new URL('/v1/health', this.#o.discoveryUrl);
      const node = this.#identities.node();
      const tls = meshClientOptions({
        bundle: this.#identities.bundle(),
        expectedId: SpiffeId.parse(`spiffe://${this.#o.bundle.trustDomain}${DISCOVERY_SERVER_PATH}`),
        creds: node.credentials,
      });
      await new Promise<void>((resolve, reject) => {
        const req = httpsRequest(
          { ...tls, agent: this.#reportAgent, method: 'POST', hostname: url.hostname, port: url.port, path: url.pathname, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: 10_000 },
          (res) => {
            res.resume();
            res.once('end', () => (res.statusCode === 204 ? resolve() : reject(new Error(`pool answered ${res.statusCode}`))));
          },
        );
        req.once('timeout', () => req.destroy(new Error('timeout')));
        req.once('error', reject);
        req.end(body);
      });
      delivered = true;
    } catch (err) {
      this.#healthDirty = true;
      this.#log.debug({ err: (err as Error).message }, 'health report not delivered; will retry');
    } finally {
      this.#reporting = false;
    }
    // #reportSoon() does not queue behind a report in flight: an ejection (or a new view) that came
    // while this one was on its way would otherwise wait for the next interval (30 s). Only after a
    // delivery, so an unreachable pool is not retried in a loop (the interval timer retries it).
    if (delivered && this.#healthDirty) void this.#report();
  }

  /**
   * Joins (or reuses the saved identity). With a ServiceAccount token (Kubernetes mode) a refusal
   * that may pass — the CA or the Kubernetes API unavailable, or the control plane not seeing this
   * pod yet (403 while its informer catches up) — is retried here with capped, jittered backoff
   * (1 s doubling to 30 s) instead of ending the process into the kubelet's slower crash-loop
   * backoff. A token that does not authenticate (401), and every join-token failure, end start().
   */
  async #join(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#identities.start();
      } catch (err) {
        const cause = (err as { cause?: { code?: unknown } }).cause;
        const code = typeof cause?.code === 'string' ? cause.code : undefined;
        const passing = code === 'WARD_CA_UNAVAILABLE' || code === 'WARD_CA_UNREACHABLE' || code === 'WARD_CA_RATE_LIMITED' || code === 'WARD_CA_FORBIDDEN';
        if (this.#o.serviceAccountTokenFile === undefined || !passing || this.#closing !== undefined) throw err;
        const delay = Math.round(Math.min(30_000, 1_000 * 2 ** Math.min(attempt, 10)) * (0.5 + Math.random() / 2));
        this.#log.warn({ err: (err as Error).message, retryInMs: delay, attempt: attempt + 1 }, 'joining failed; retrying');
        // A referenced timer: nothing else keeps the process alive before it has joined.
        await new Promise<void>((resolve) => setTimeout(resolve, delay));
        if (this.#closing !== undefined) throw err;
      }
    }
  }

  /** Stops accepting, drains in-flight requests up to `graceMs`, then stops everything. Idempotent. */
  close(graceMs = 5_000): Promise<void> {
    this.#closing ??= (async () => {
      this.#timers.clear(this.#healthTimer);
      // Stop accepting at once (each close() stops its listener synchronously), then let an apply
      // in progress finish and close whatever listener it opened meanwhile.
      const draining = [...[...this.#outbound.values()].map((l) => l.close(graceMs)), this.#inbound?.close(graceMs)];
      await this.#applying.catch(() => undefined);
      await Promise.all([...draining, ...[...this.#outbound.values()].map((l) => l.close(graceMs))]);
      this.#outbound.clear();
      await Promise.all([this.#control?.close(), this.#upstreams.close(), this.#identities.close(), this.#admin?.close()]);
      this.#reportAgent.destroy();
    })();
    return this.#closing;
  }
}
