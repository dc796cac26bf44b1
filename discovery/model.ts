/**
 * The discovery pool's internal model of the mesh: what the source of truth says exists.
 *
 * Every source (the local `ward.yaml` today, Kubernetes informers later) produces a MeshModel; the
 * push side and the CA's node authorizer read only this type, so a new source needs no change
 * downstream. A model is plain data, deep-frozen, and replaced as a whole on every change: readers
 * may hold on to one without locking.
 *
 * Keys used in lookups and diffs (stable, unique within a model):
 *   node `name` · workload `namespace/name` · service `namespace/name` · policy `namespace/name`
 *   · route `host`.
 */
import { policyRef, type AuthorizationPolicy } from '../core/policy/index.js';

/** A validated security.ward.dev/v1alpha1 AuthorizationPolicy (core/policy's type). */
export type PolicyResource = AuthorizationPolicy;

export type ServiceProtocol = 'http' | 'tcp';
export type PathType = 'Exact' | 'Prefix';

export interface MeshNode {
  readonly name: string;
  /** Where the node's proxy listens. Local mode: an IPv4 in 127.0.0.0/8; Kubernetes: the node IP. */
  readonly address: string;
  /** Locality for load balancing (same node, then same zone, then anywhere). */
  readonly zone?: string;
}

export interface Workload {
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  /** Name of the node the workload runs on; always one of the model's nodes. */
  readonly node: string;
  /** Where the workload itself listens (its node proxy forwards inbound traffic here). */
  readonly address: string;
  /** Ports the workload listens on, ascending, unique. */
  readonly ports: readonly number[];
  readonly labels: Readonly<Record<string, string>>;
  /** Local mode only: the process `ward up` starts for this workload (argv form). */
  readonly command?: readonly string[];
  /** `spiffe://TD/ns/NS/sa/SA`: derived from trust domain, namespace and service account, never declared. */
  readonly identity: string;
}

export interface ServicePort {
  readonly name?: string;
  /** The port clients address (`api.shop:8080`). */
  readonly port: number;
  /** The workload port traffic is delivered to. */
  readonly targetPort: number;
  readonly protocol: ServiceProtocol;
}

export interface Service {
  readonly name: string;
  readonly namespace: string;
  readonly ports: readonly ServicePort[];
  /** Non-empty; matches workloads of the same namespace whose labels include every pair. */
  readonly selector: Readonly<Record<string, string>>;
}

export interface RoutePath {
  readonly path: string;
  readonly pathType: PathType;
  /** `name.namespace` of a service in the model. */
  readonly service: string;
  /** A port the service exposes (its `port`, not the target port). */
  readonly port: number;
}

export interface Route {
  /** Exact host (`shop.example.com`) or a one-label wildcard (`*.example.com`), lowercase. */
  readonly host: string;
  readonly paths: readonly RoutePath[];
  /**
   * Kubernetes mode: the TLS Secret (in the ingress's own namespace) holding this host's certificate,
   * from the Ingress object's spec.tls. Absent in local mode.
   */
  readonly tlsSecret?: string;
}

export interface MeshModel {
  readonly trustDomain: string;
  readonly nodes: readonly MeshNode[];
  readonly workloads: readonly Workload[];
  readonly services: readonly Service[];
  readonly policies: readonly PolicyResource[];
  readonly routes: readonly Route[];
}

/** One service endpoint: a selected workload on one service port. */
export interface Endpoint {
  /** `namespace/name` of the workload. */
  readonly workload: string;
  readonly node: string;
  readonly zone?: string;
  readonly address: string;
  /** The workload port (the service port's targetPort). */
  readonly port: number;
  /** The service port this endpoint serves. */
  readonly servicePort: number;
  readonly protocol: ServiceProtocol;
  /** The identity the endpoint must present (secure naming). */
  readonly identity: string;
}

export type ModelKind = 'nodes' | 'workloads' | 'services' | 'policies' | 'routes';
export const MODEL_KINDS: readonly ModelKind[] = ['nodes', 'workloads', 'services', 'policies', 'routes'];

/** Keys (see the file header) that appeared, disappeared or changed value, each sorted. */
export interface KindDiff {
  readonly added: readonly string[];
  readonly removed: readonly string[];
  readonly changed: readonly string[];
}

export interface ModelDiff extends Readonly<Record<ModelKind, KindDiff>> {
  /** A trust-domain change re-keys every identity: the push side should resend everything. */
  readonly trustDomainChanged: boolean;
  /** True when nothing at all changed. */
  readonly empty: boolean;
}

/** Freezes plain data recursively; returns its argument typed as readonly. */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}

export function workloadKey(w: { namespace: string; name: string }): string {
  return `${w.namespace}/${w.name}`;
}

export function serviceKey(s: { namespace: string; name: string }): string {
  return `${s.namespace}/${s.name}`;
}

/** `namespace/name` of a policy. */
export function policyKey(p: PolicyResource): string {
  return policyRef(p);
}

/** Whether `labels` carries every pair of a (non-empty) selector. An empty selector matches nothing. */
export function selectorMatches(selector: Readonly<Record<string, string>>, labels: Readonly<Record<string, string>>): boolean {
  const keys = Object.keys(selector);
  if (keys.length === 0) return false;
  for (const k of keys) {
    if (!Object.hasOwn(labels, k) || labels[k] !== selector[k]) return false;
  }
  return true;
}

// Lookup tables built once per model (models are immutable, so a WeakMap cache is always fresh).
// The CA asks mayObtain() on every certificate request; a linear scan of 10,000 workloads per
// request would be wasteful.
interface ModelIndex {
  nodes: Map<string, MeshNode>;
  workloadsByNode: Map<string, Workload[]>;
  /** `node\0identity` for every declared workload. */
  nodeIdentity: Set<string>;
  services: Map<string, Service>;
}
const INDEXES = new WeakMap<MeshModel, ModelIndex>();

function indexOf(model: MeshModel): ModelIndex {
  let ix = INDEXES.get(model);
  if (ix !== undefined) return ix;
  ix = { nodes: new Map(), workloadsByNode: new Map(), nodeIdentity: new Set(), services: new Map() };
  for (const n of model.nodes) ix.nodes.set(n.name, n);
  for (const w of model.workloads) {
    let list = ix.workloadsByNode.get(w.node);
    if (list === undefined) ix.workloadsByNode.set(w.node, (list = []));
    list.push(w);
    ix.nodeIdentity.add(`${w.node}\0${w.identity}`);
  }
  for (const s of model.services) ix.services.set(serviceKey(s), s);
  INDEXES.set(model, ix);
  return ix;
}

/** The node of this name, or undefined. */
export function findNode(model: MeshModel, name: string): MeshNode | undefined {
  return indexOf(model).nodes.get(name);
}

/** Workloads declared on a node (in model order); empty for an unknown node. */
export function workloadsOnNode(model: MeshModel, node: string): readonly Workload[] {
  return indexOf(model).workloadsByNode.get(node) ?? [];
}

/**
 * The CA's node-authorizer answer: true iff a workload with exactly this identity is declared on
 * exactly this node. A workload moved to another node, or removed, stops being obtainable from the
 * old node at its next renewal.
 */
export function mayObtain(model: MeshModel, nodeName: string, identity: string): boolean {
  return indexOf(model).nodeIdentity.has(`${nodeName}\0${identity}`);
}

/** Whether the node is (still) a member of the mesh: the answer to a node proxy's own renewal. */
export function isNodeMember(model: MeshModel, nodeName: string): boolean {
  return indexOf(model).nodes.has(nodeName);
}

/** A service by `name.namespace` (the mesh name clients use) or by `{name, namespace}`. */
export function findService(model: MeshModel, ref: string | { name: string; namespace: string }): Service | undefined {
  let key: string;
  if (typeof ref === 'string') {
    const dot = ref.indexOf('.');
    if (dot <= 0) return undefined;
    key = `${ref.slice(dot + 1)}/${ref.slice(0, dot)}`;
  } else {
    key = serviceKey(ref);
  }
  return indexOf(model).services.get(key);
}

/**
 * Endpoints of a service: every workload of the service's namespace whose labels match its
 * selector, once per service port (or only for `servicePort` when given), sorted by workload key
 * then port. An unknown service has no endpoints.
 */
export function endpointsOf(
  model: MeshModel,
  service: string | { name: string; namespace: string },
  servicePort?: number,
): Endpoint[] {
  const svc = findService(model, service);
  if (svc === undefined) return [];
  const ports = servicePort === undefined ? svc.ports : svc.ports.filter((p) => p.port === servicePort);
  if (ports.length === 0) return [];
  const ix = indexOf(model);
  const out: Endpoint[] = [];
  const selected = model.workloads
    .filter((w) => w.namespace === svc.namespace && selectorMatches(svc.selector, w.labels))
    .sort((a, b) => cmp(workloadKey(a), workloadKey(b)));
  for (const w of selected) {
    const zone = ix.nodes.get(w.node)?.zone;
    for (const p of ports) {
      out.push({
        workload: workloadKey(w),
        node: w.node,
        ...(zone !== undefined ? { zone } : {}),
        address: w.address,
        port: p.targetPort,
        servicePort: p.port,
        protocol: p.protocol,
        identity: w.identity,
      });
    }
  }
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Structural equality of plain data (objects, arrays, primitives); key order does not matter. */
export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    if (a.length !== bb.length) return false;
    for (let i = 0; i < a.length; i++) if (!deepEqual(a[i], bb[i])) return false;
    return true;
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (const k of ka) {
    if (!Object.hasOwn(b, k)) return false;
    if (!deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  }
  return true;
}

const KEY_OF: Record<ModelKind, (item: never) => string> = {
  nodes: (n: MeshNode) => n.name,
  workloads: workloadKey,
  services: serviceKey,
  policies: policyKey,
  routes: (r: Route) => r.host,
};

function diffKind<T>(before: readonly T[], after: readonly T[], key: (item: T) => string): KindDiff {
  const old = new Map<string, T>();
  for (const item of before) old.set(key(item), item);
  const added: string[] = [];
  const changed: string[] = [];
  const seen = new Set<string>();
  for (const item of after) {
    const k = key(item);
    seen.add(k);
    const prev = old.get(k);
    if (prev === undefined) added.push(k);
    else if (prev !== item && !deepEqual(prev, item)) changed.push(k);
  }
  const removed = [...old.keys()].filter((k) => !seen.has(k));
  return { added: added.sort(cmp), removed: removed.sort(cmp), changed: changed.sort(cmp) };
}

/**
 * What changed from `a` to `b`, per kind, by key. The cost is linear in the model size (the source
 * runs it once per accepted change); the push side then sends deltas in proportion to the result.
 * Note that a workload change can change the endpoints of the services selecting it even when no
 * service changed: the push side recomputes endpoints of services whose selector matches an added,
 * removed or changed workload (old or new labels).
 */
export function diffModels(a: MeshModel, b: MeshModel): ModelDiff {
  const kinds = {} as Record<ModelKind, KindDiff>;
  let empty = a.trustDomain === b.trustDomain;
  for (const kind of MODEL_KINDS) {
    const d = diffKind(a[kind] as readonly never[], b[kind] as readonly never[], KEY_OF[kind]);
    kinds[kind] = d;
    if (d.added.length + d.removed.length + d.changed.length > 0) empty = false;
  }
  return deepFreeze({ ...kinds, trustDomainChanged: a.trustDomain !== b.trustDomain, empty });
}

/** The empty model of a trust domain: a starting point to diff the first real model against. */
export function emptyModel(trustDomain: string): MeshModel {
  return deepFreeze({ trustDomain, nodes: [], workloads: [], services: [], policies: [], routes: [] });
}
