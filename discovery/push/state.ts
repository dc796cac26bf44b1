/**
 * The push side's view of the mesh: the current MeshModel plus what the pool has observed at run
 * time (which node proxies are connected, which workload identities have been issued), turned into
 * the resources of the discovery protocol (core/protocol/discovery.ts), versioned.
 *
 * Versions. One mesh-wide counter. Every change that alters at least one resource makes exactly one
 * new version and one change set: the ids of the resources it touched (not their values: a delta is
 * always "the current value, or a removal", so old values need not be kept). The last
 * `historyLimit` change sets are kept (also bounded in total ids), so a client at version v gets
 * the coalesced change sets after v, filtered by its view; older or unknown v → a snapshot.
 *
 * Cost. A model change is applied in proportion to the change: only resources whose inputs changed
 * are recomputed, notably the endpoints of the services whose selector matches a changed workload
 * (old or new labels) — found through a per-namespace index, never a scan of the mesh. Building
 * that index for a new model is linear but cheap, like diffModels itself.
 *
 * Endpoint publication (DESIGN.md §3.3): an endpoint is pushed only when its workload is declared,
 * its node proxy is connected (or disconnected for less than the grace period) and its identity has
 * been issued. Each carries the identity it must present.
 *
 * Views. A node proxy (spiffe://TD/ward/node/N) sees endpoints, policies, the bundle, and the
 * 'workload' resources of node N only. The ingress sees endpoints, routes and the bundle.
 */
import type { Clock } from '../../core/clock.js';
import type {
  Endpoint as WireEndpoint,
  IngressRoute,
  LocalWorkload,
  Resource,
  ResourceKind,
  ResourceRef,
  ServiceEndpoints,
  TrustBundleResource,
} from '../../core/protocol/index.js';
import { resourceId } from '../../core/protocol/index.js';
import {
  deepEqual,
  diffModels,
  emptyModel,
  policyKey,
  selectorMatches,
  serviceKey,
  workloadKey,
  type MeshModel,
  type MeshNode,
  type PolicyResource,
  type Route,
  type Service,
  type Workload,
} from '../model.js';

/** Who a stream serves: one node proxy, or the ingress. */
export type View = { readonly kind: 'node'; readonly node: string } | { readonly kind: 'ingress' };

const NODE_KINDS: ReadonlySet<ResourceKind> = new Set(['endpoints', 'policy', 'bundle', 'workload']);
const INGRESS_KINDS: ReadonlySet<ResourceKind> = new Set(['endpoints', 'route', 'bundle']);

/** A touched resource id in a change set; `nodes` (workload kind only) = the nodes it was on before and/or after. */
interface Touch {
  readonly ref: ResourceRef;
  readonly nodes?: readonly string[];
}

interface ChangeSet {
  readonly version: number;
  readonly touched: ReadonlyMap<string, Touch>;
}

interface Entry {
  readonly resource: Resource;
  /** For 'workload' resources: the node it belongs to. */
  readonly node?: string;
}

export type Delta = { upserts: Resource[]; removals: ResourceRef[] };

export interface MeshStateOptions {
  clock: Clock;
  /** How long a disconnected node proxy's endpoints stay published (a reconnect within it is invisible). */
  graceMs?: number;
  /** Change sets kept for deltas. */
  historyLimit?: number;
  /** Total touched ids kept across the history (a huge change set must not pin memory for long). */
  historyMaxIds?: number;
  /** The port every node proxy accepts inbound mTLS on; endpoint address = `nodeAddress:inboundPort`. */
  inboundPort?: number;
  /**
   * First version. Default clock.now(): versions then keep increasing across a restart of the pool,
   * so a client resuming with a version of a previous run is never mistaken for one of this run.
   */
  firstVersion?: number;
  /** Default true: withdraw after the grace period with a real (unref'd) timer. Tests pass false and call tick(). */
  autoTick?: boolean;
}

export const DEFAULT_GRACE_MS = 30_000;
export const DEFAULT_HISTORY_LIMIT = 1024;
export const DEFAULT_HISTORY_MAX_IDS = 200_000;
export const DEFAULT_INBOUND_PORT = 15008;

/** Lookup tables of one model (models are immutable, so a WeakMap cache stays fresh). */
interface Index {
  nodes: Map<string, MeshNode>;
  workloads: Map<string, Workload>;
  workloadsByNamespace: Map<string, Workload[]>;
  workloadsByNode: Map<string, Workload[]>;
  workloadsByIdentity: Map<string, Workload[]>;
  services: Map<string, Service>;
  servicesByNamespace: Map<string, Service[]>;
  policies: Map<string, PolicyResource>;
  routes: Map<string, Route>;
}
const INDEXES = new WeakMap<MeshModel, Index>();

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

function indexOf(model: MeshModel): Index {
  let ix = INDEXES.get(model);
  if (ix) return ix;
  ix = {
    nodes: new Map(model.nodes.map((n) => [n.name, n])),
    workloads: new Map(),
    workloadsByNamespace: new Map(),
    workloadsByNode: new Map(),
    workloadsByIdentity: new Map(),
    services: new Map(),
    servicesByNamespace: new Map(),
    policies: new Map(model.policies.map((p) => [policyKey(p), p])),
    routes: new Map(model.routes.map((r) => [r.host, r])),
  };
  for (const w of model.workloads) {
    ix.workloads.set(workloadKey(w), w);
    push(ix.workloadsByNamespace, w.namespace, w);
    push(ix.workloadsByNode, w.node, w);
    push(ix.workloadsByIdentity, w.identity, w);
  }
  for (const s of model.services) {
    ix.services.set(serviceKey(s), s);
    push(ix.servicesByNamespace, s.namespace, s);
  }
  INDEXES.set(model, ix);
  return ix;
}

/** Protocol key of a service's endpoints: "name.namespace". */
export function endpointsKey(s: { name: string; namespace: string }): string {
  return `${s.name}.${s.namespace}`;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export class MeshState {
  readonly #clock: Clock;
  readonly #graceMs: number;
  readonly #historyLimit: number;
  readonly #historyMaxIds: number;
  readonly #inboundPort: number;
  readonly #autoTick: boolean;
  #model: MeshModel;
  #version: number;
  /** Current resources by protocol id (`kind key`). */
  readonly #resources = new Map<string, Entry>();
  /** Open streams per node; a node is connected while > 0. */
  readonly #streams = new Map<string, number>();
  /** Nodes whose endpoints are published: connected, or disconnected less than the grace period ago. */
  readonly #published = new Set<string>();
  /** Disconnected nodes still in their grace period → when it ends (clock ms). */
  readonly #graceUntil = new Map<string, number>();
  readonly #issued = new Set<string>();
  #bundle?: { pem: string; sequence: number };
  readonly #history: ChangeSet[] = [];
  #historyIds = 0;
  readonly #listeners = new Set<(version: number) => void>();
  #timer?: NodeJS.Timeout;
  #closed = false;

  constructor(o: MeshStateOptions & { model: MeshModel }) {
    this.#clock = o.clock;
    this.#graceMs = o.graceMs ?? DEFAULT_GRACE_MS;
    this.#historyLimit = Math.max(1, o.historyLimit ?? DEFAULT_HISTORY_LIMIT);
    this.#historyMaxIds = Math.max(1, o.historyMaxIds ?? DEFAULT_HISTORY_MAX_IDS);
    this.#inboundPort = o.inboundPort ?? DEFAULT_INBOUND_PORT;
    this.#autoTick = o.autoTick ?? true;
    this.#version = Math.max(1, Math.floor(o.firstVersion ?? o.clock.now()));
    this.#model = emptyModel(o.model.trustDomain);
    this.setModel(o.model);
  }

  get version(): number {
    return this.#version;
  }

  get model(): MeshModel {
    return this.#model;
  }

  /** The oldest version a delta can be computed from (older → snapshot). */
  get oldestResumable(): number {
    return this.#history.length ? this.#history[0].version - 1 : this.#version;
  }

  /** Number of change sets kept (for tests and status). */
  get historyLength(): number {
    return this.#history.length;
  }

  /** Called with the new version after every change. Returns the unsubscribe function. */
  subscribe(fn: (version: number) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  isConnected(node: string): boolean {
    return (this.#streams.get(node) ?? 0) > 0;
  }

  /** Whether a node's endpoints are published (connected, or within the grace period). */
  isPublished(node: string): boolean {
    return this.#published.has(node);
  }

  // ---- inputs -------------------------------------------------------------------------------

  /** Replaces the model; recomputes only what the diff touches. */
  setModel(next: MeshModel): void {
    const prev = this.#model;
    if (prev === next) return;
    const d = diffModels(prev, next);
    if (d.empty) {
      this.#model = next;
      return;
    }
    this.#model = next;
    const change = new Map<string, Touch>();
    if (d.trustDomainChanged) {
      this.#rebuildAll(change);
      return this.#commit(change);
    }
    const pix = indexOf(prev);
    const nix = indexOf(next);

    // Workloads whose endpoints or 'workload' resource may differ.
    const workloads = new Set<string>([...d.workloads.added, ...d.workloads.removed, ...d.workloads.changed]);
    for (const n of [...d.nodes.added, ...d.nodes.removed, ...d.nodes.changed]) {
      for (const w of pix.workloadsByNode.get(n) ?? []) workloads.add(workloadKey(w));
      for (const w of nix.workloadsByNode.get(n) ?? []) workloads.add(workloadKey(w));
    }
    // A node removed from the model is no longer published, whatever its stream state.
    for (const n of d.nodes.removed) {
      this.#published.delete(n);
      this.#graceUntil.delete(n);
    }
    const services = new Set<string>([...d.services.added, ...d.services.removed, ...d.services.changed]);
    for (const k of workloads) {
      for (const w of [pix.workloads.get(k), nix.workloads.get(k)]) {
        if (w) for (const s of this.#servicesSelecting(w, pix, nix)) services.add(s);
      }
      this.#recomputeWorkload(k, pix, nix, change);
    }
    for (const s of services) this.#recomputeEndpoints(s, change);
    for (const k of [...d.policies.added, ...d.policies.removed, ...d.policies.changed]) {
      const p = nix.policies.get(k);
      this.#set({ kind: 'policy', key: k }, p, change);
    }
    for (const h of [...d.routes.added, ...d.routes.removed, ...d.routes.changed]) {
      const r = nix.routes.get(h);
      this.#set({ kind: 'route', key: h }, r ? routeValue(r) : undefined, change);
    }
    this.#commit(change);
  }

  /** The trust bundle pushed to every client (PEM roots, several during a root rotation). */
  setBundle(pem: string, sequence: number): void {
    this.#bundle = { pem, sequence };
    const change = new Map<string, Touch>();
    this.#setBundleResource(change);
    this.#commit(change);
  }

  /** A workload identity has been issued a certificate: its endpoints may now be published. */
  markIssued(identity: string): void {
    if (this.#issued.has(identity)) return;
    this.#issued.add(identity);
    this.#recomputeForWorkloads(indexOf(this.#model).workloadsByIdentity.get(identity) ?? []);
  }

  /** A node proxy opened a stream. Cancels a pending withdrawal. */
  nodeConnected(node: string): void {
    this.#streams.set(node, (this.#streams.get(node) ?? 0) + 1);
    this.#graceUntil.delete(node);
    if (this.#published.has(node)) return;
    this.#published.add(node);
    this.#recomputeForWorkloads(indexOf(this.#model).workloadsByNode.get(node) ?? []);
  }

  /** A node proxy's stream ended; its last one starts the grace period. */
  nodeDisconnected(node: string): void {
    const n = (this.#streams.get(node) ?? 0) - 1;
    if (n > 0) {
      this.#streams.set(node, n);
      return;
    }
    this.#streams.delete(node);
    if (!this.#published.has(node)) return;
    if (this.#graceMs <= 0) return this.#withdraw(node);
    this.#graceUntil.set(node, this.#clock.now() + this.#graceMs);
    this.#arm();
  }

  /** Withdraws the endpoints of nodes whose grace period has ended (by the injected clock). */
  tick(): void {
    const now = this.#clock.now();
    for (const [node, until] of [...this.#graceUntil]) {
      if (until <= now) this.#withdraw(node);
    }
    this.#arm();
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
  }

  // ---- outputs ------------------------------------------------------------------------------

  /** Every resource in the view, at the current version. Linear in the view (a snapshot is). */
  snapshot(view: View): { version: number; resources: Resource[] } {
    const resources: Resource[] = [];
    for (const e of this.#resources.values()) if (inView(view, e.resource.kind, e.node === undefined ? undefined : [e.node])) resources.push(e.resource);
    return { version: this.#version, resources };
  }

  /**
   * The view's changes after version `from` up to the current one (coalesced: the current value of
   * each touched resource, or its removal), or undefined when `from` is not covered by the history
   * (older than it, or unknown) — the caller then sends a snapshot. Cost: the ids touched after `from`.
   */
  deltaSince(view: View, from: number): Delta | undefined {
    if (!Number.isSafeInteger(from) || from < this.oldestResumable || from > this.#version) return undefined;
    const seen = new Map<string, Touch>();
    for (let i = this.#history.length - 1; i >= 0 && this.#history[i].version > from; i--) {
      for (const [id, t] of this.#history[i].touched) {
        const had = seen.get(id);
        if (!had) seen.set(id, t);
        else if (t.nodes) seen.set(id, { ref: t.ref, nodes: [...new Set([...(had.nodes ?? []), ...t.nodes])] });
      }
    }
    const upserts: Resource[] = [];
    const removals: ResourceRef[] = [];
    for (const [id, t] of seen) {
      if (!inView(view, t.ref.kind, t.nodes)) continue;
      const cur = this.#resources.get(id);
      if (cur && inView(view, cur.resource.kind, cur.node === undefined ? undefined : [cur.node])) upserts.push(cur.resource);
      else removals.push(t.ref);
    }
    return { upserts, removals };
  }

  // ---- internals ----------------------------------------------------------------------------

  #servicesSelecting(w: Workload, ...ixs: Index[]): string[] {
    const out: string[] = [];
    for (const ix of ixs) {
      for (const s of ix.servicesByNamespace.get(w.namespace) ?? []) {
        if (selectorMatches(s.selector, w.labels)) out.push(serviceKey(s));
      }
    }
    return out;
  }

  #recomputeForWorkloads(ws: readonly Workload[]): void {
    if (ws.length === 0) return;
    const ix = indexOf(this.#model);
    const services = new Set<string>();
    for (const w of ws) for (const s of this.#servicesSelecting(w, ix)) services.add(s);
    const change = new Map<string, Touch>();
    for (const s of services) this.#recomputeEndpoints(s, change);
    this.#commit(change);
  }

  #withdraw(node: string): void {
    this.#graceUntil.delete(node);
    if (!this.#published.delete(node)) return;
    this.#recomputeForWorkloads(indexOf(this.#model).workloadsByNode.get(node) ?? []);
  }

  /** Keeps one real timer for the earliest grace deadline (when autoTick). */
  #arm(): void {
    if (!this.#autoTick || this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#graceUntil.size === 0) return;
    const next = Math.min(...this.#graceUntil.values());
    this.#timer = setTimeout(() => this.tick(), Math.max(0, next - this.#clock.now()));
    this.#timer.unref();
  }

  /** Recomputes one service's endpoints resource (key = model key `namespace/name`). */
  #recomputeEndpoints(svcKey: string, change: Map<string, Touch>): void {
    const ix = indexOf(this.#model);
    const s = ix.services.get(svcKey);
    if (!s) {
      const slash = svcKey.indexOf('/');
      this.#set({ kind: 'endpoints', key: endpointsKey({ namespace: svcKey.slice(0, slash), name: svcKey.slice(slash + 1) }) }, undefined, change);
      return;
    }
    const endpoints: WireEndpoint[] = [];
    const selected = (ix.workloadsByNamespace.get(s.namespace) ?? [])
      .filter((w) => selectorMatches(s.selector, w.labels) && this.#published.has(w.node) && this.#issued.has(w.identity))
      .sort((a, b) => cmp(workloadKey(a), workloadKey(b)));
    for (const w of selected) {
      const node = ix.nodes.get(w.node);
      if (!node) continue;
      endpoints.push({
        address: `${node.address}:${this.#inboundPort}`,
        identity: w.identity,
        node: w.node,
        ...(node.zone !== undefined ? { zone: node.zone } : {}),
        workload: workloadKey(w),
      });
    }
    const value: ServiceEndpoints = {
      service: s.name,
      namespace: s.namespace,
      ports: s.ports.map((p) => ({ ...(p.name !== undefined ? { name: p.name } : {}), port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
      endpoints,
    };
    this.#set({ kind: 'endpoints', key: endpointsKey(s) }, value, change);
  }

  #recomputeWorkload(key: string, pix: Index, nix: Index, change: Map<string, Touch>): void {
    const before = pix.workloads.get(key);
    const w = nix.workloads.get(key);
    const nodes = [...new Set([before?.node, w?.node].filter((n): n is string => n !== undefined))];
    const value: LocalWorkload | undefined = w && {
      name: w.name,
      namespace: w.namespace,
      identity: w.identity,
      address: w.address,
      ports: [...w.ports],
      labels: { ...w.labels },
    };
    this.#set({ kind: 'workload', key }, value, change, w?.node, nodes);
  }

  #setBundleResource(change: Map<string, Touch>): void {
    const td = this.#model.trustDomain;
    const value: TrustBundleResource | undefined = this.#bundle && { trustDomain: td, pem: this.#bundle.pem, sequence: this.#bundle.sequence };
    this.#set({ kind: 'bundle', key: td }, value, change);
  }

  /** A trust-domain change re-keys everything: recompute every resource from scratch. */
  #rebuildAll(change: Map<string, Touch>): void {
    const old = new Map(this.#resources);
    for (const [id, e] of old) {
      this.#resources.delete(id);
      change.set(id, { ref: { kind: e.resource.kind, key: e.resource.key }, ...(e.node !== undefined ? { nodes: [e.node] } : {}) });
    }
    const ix = indexOf(this.#model);
    for (const n of [...this.#published]) if (!ix.nodes.has(n)) this.#published.delete(n);
    const empty = indexOf(emptyModel(this.#model.trustDomain));
    for (const k of ix.workloads.keys()) this.#recomputeWorkload(k, empty, ix, change);
    for (const k of ix.services.keys()) this.#recomputeEndpoints(k, change);
    for (const [k, p] of ix.policies) this.#set({ kind: 'policy', key: k }, p, change);
    for (const [h, r] of ix.routes) this.#set({ kind: 'route', key: h }, routeValue(r), change);
    this.#setBundleResource(change);
    // Resources that came back identical were not really touched, but resending them is harmless.
    for (const [id, e] of old) {
      const now = this.#resources.get(id);
      if (now && now.node === e.node && deepEqual(now.resource.value, e.resource.value)) change.delete(id);
    }
  }

  /** Sets (or removes, with `value` undefined) one resource; records the touch only if it changed. */
  #set(ref: ResourceRef, value: unknown, change: Map<string, Touch>, node?: string, nodes?: readonly string[]): void {
    const id = resourceId(ref);
    const cur = this.#resources.get(id);
    if (value === undefined) {
      if (!cur) return;
      this.#resources.delete(id);
    } else {
      if (cur && cur.node === node && deepEqual(cur.resource.value, value)) return;
      this.#resources.set(id, { resource: { kind: ref.kind, key: ref.key, value }, ...(node !== undefined ? { node } : {}) });
    }
    const touchNodes = ref.kind === 'workload' ? [...new Set([...(nodes ?? []), ...(cur?.node !== undefined ? [cur.node] : []), ...(node !== undefined ? [node] : [])])] : undefined;
    const prev = change.get(id);
    const merged = touchNodes && prev?.nodes ? [...new Set([...prev.nodes, ...touchNodes])] : touchNodes;
    change.set(id, { ref: { kind: ref.kind, key: ref.key }, ...(merged ? { nodes: merged } : {}) });
  }

  #commit(change: Map<string, Touch>): void {
    if (change.size === 0) return;
    this.#version += 1;
    this.#history.push({ version: this.#version, touched: change });
    this.#historyIds += change.size;
    while (this.#history.length > this.#historyLimit || (this.#historyIds > this.#historyMaxIds && this.#history.length > 1)) {
      this.#historyIds -= this.#history.shift()!.touched.size;
    }
    for (const fn of [...this.#listeners]) fn(this.#version);
  }
}

/** Whether a resource of this kind (on these nodes, for 'workload') belongs to the view. */
function inView(view: View, kind: ResourceKind, nodes: readonly string[] | undefined): boolean {
  if (view.kind === 'ingress') return INGRESS_KINDS.has(kind);
  if (!NODE_KINDS.has(kind)) return false;
  if (kind !== 'workload') return true;
  return nodes !== undefined && nodes.includes(view.node);
}

function routeValue(r: Route): IngressRoute {
  const paths = r.paths.map((p) => ({ path: p.path, pathType: p.pathType, service: p.service, port: p.port }));
  return r.tlsSecret === undefined ? { host: r.host, paths } : { host: r.host, paths, tlsSecret: r.tlsSecret };
}
