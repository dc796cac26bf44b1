/**
 * Health reports from discovery clients (POST /v1/health, core/protocol/discovery.ts) and the mesh
 * status the pool builds from them plus the push side's own view (who is connected, which version
 * each client ACKed).
 *
 * Ownership. A node proxy speaks only for its own node: every local workload and every
 * certificate identity in its report must be the node's own SPIFFE ID or a workload declared on
 * that node in the current model (mayObtain, the CA's rule), and `node`, when given, must be the
 * node of its certificate. The ingress has no local workloads and holds only its own certificate.
 * A report breaking this is refused whole (the server answers 403, logs at warn and counts
 * ward_discovery_refused_total{reason="foreign-workload"}); nothing of it is kept. Ejections are
 * about other nodes' endpoints by nature, so any client may report them.
 *
 * Bounds. One report per client identity (the latest replaces the previous), and only
 * authenticated clients (declared nodes and the ingress) can post, so at most nodes + 1 entries.
 * A report is dropped when it is older than `retainMs` (a live proxy re-reports well within it) or
 * when its node leaves the model. A report older than `staleAfterMs` no longer says anything about
 * health or ejections (health becomes unknown), but the certificate expiries it carries are kept
 * until it is dropped: they are facts about certificates, not about liveness.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Clock } from '../../core/clock.js';
import { SpiffeId } from '../../core/identity/index.js';
import type { EjectedEndpoint, HealthReport, HeldCertificate, LocalWorkloadHealth } from '../../core/protocol/index.js';
import { findNode, isNodeMember, mayObtain, selectorMatches, workloadKey, workloadsOnNode, type MeshModel } from '../model.js';

/** A report older than this says nothing about current health (default). */
export const DEFAULT_HEALTH_STALE_MS = 60_000;
/** A report older than this is forgotten (default). */
export const DEFAULT_HEALTH_RETAIN_MS = 10 * 60_000;

const MAX_ENTRIES = 10_000;
const MAX_STRING = 2_048;

/** What the push side knows of one open stream (DiscoveryServer.status().clients). */
export interface StreamClientInfo {
  identity: string;
  node?: string;
  view: 'node' | 'ingress';
  sentVersion: number;
  ackedVersion: number;
  nacks: number;
}

export interface ClientMeshStatus {
  identity: string;
  node?: string;
  view: 'node' | 'ingress';
  /** At least one open stream. */
  connected: boolean;
  /** Highest version sent / ACKed over its open streams (0 when none). */
  sentVersion: number;
  ackedVersion: number;
  nacks: number;
  /** RFC 3339 time of its latest retained health report. */
  lastReport?: string;
}

export interface NodeMeshStatus {
  name: string;
  address: string;
  zone?: string;
  /** Its proxy has an open stream. */
  connected: boolean;
  /** Highest version its proxy ACKed (0: none, or not connected). */
  ackedVersion: number;
  lastReport?: string;
  /** Certificates its proxy reported holding (its node SVID and its workloads' SVIDs). */
  certificates: HeldCertificate[];
  /** The earliest notAfter among them. */
  soonestExpiry?: string;
}

export interface ServiceMeshStatus {
  name: string;
  namespace: string;
  endpoints: {
    /** Workloads the service selects. */
    total: number;
    /** Selected workloads on a connected node, reported healthy by it, and ejected by no one. */
    healthy: number;
    /** Selected workloads some client currently ejects. */
    ejected: number;
  };
}

export interface WorkloadMeshStatus {
  name: string;
  namespace: string;
  identity: string;
  node: string;
  /** From its node's fresh report; absent when unknown. */
  healthy?: boolean;
  reason?: string;
  /** notAfter of the latest certificate its node reported for its identity. */
  certificateNotAfter?: string;
}

export interface MeshStatus {
  trustDomain: string;
  /** The current mesh-wide discovery version. */
  version: number;
  generatedAt: string;
  clients: ClientMeshStatus[];
  nodes: NodeMeshStatus[];
  services: ServiceMeshStatus[];
  workloads: WorkloadMeshStatus[];
}

export type HealthVerdict =
  | { status: 204 }
  | { status: 400; message: string }
  | { status: 403; reason: 'foreign-workload'; message: string };

export interface HealthAggregatorOptions {
  clock: Clock;
  registry: Registry;
  staleAfterMs?: number;
  retainMs?: number;
}

interface Entry {
  readonly identity: string;
  readonly node?: string;
  readonly report: HealthReport;
  readonly receivedAt: number;
}

export class HealthAggregator {
  readonly #clock: Clock;
  readonly #staleMs: number;
  readonly #retainMs: number;
  readonly #reports = new Map<string, Entry>();
  readonly #received: Counter<'result'>;
  readonly #ejections: Gauge;

  constructor(o: HealthAggregatorOptions) {
    this.#clock = o.clock;
    this.#staleMs = o.staleAfterMs ?? DEFAULT_HEALTH_STALE_MS;
    this.#retainMs = Math.max(this.#staleMs, o.retainMs ?? DEFAULT_HEALTH_RETAIN_MS);
    const registers = [o.registry];
    this.#received = new Counter({ name: 'ward_discovery_health_reports_total', help: 'Health reports received from discovery clients, by result.', labelNames: ['result'], registers });
    this.#ejections = new Gauge({ name: 'ward_discovery_ejected_endpoints', help: 'Endpoint ejections in fresh health reports (summed over reporting clients).', registers });
  }

  /** Reports held (at most one per client identity). */
  get size(): number {
    return this.#reports.size;
  }

  /**
   * Validates and keeps one client's report. `client.node` is the node of its certificate (a node
   * proxy) or undefined (the ingress). Nothing is kept unless the verdict is 204.
   */
  receive(client: { identity: string; node?: string }, body: unknown, model: MeshModel): HealthVerdict {
    let report: HealthReport;
    try {
      report = parseHealthReport(body);
    } catch (err) {
      this.#received.inc({ result: 'invalid' });
      return { status: 400, message: `health report is not valid: ${(err as Error).message}` };
    }
    const foreign = foreignEntry(client, report, model);
    if (foreign !== undefined) {
      this.#received.inc({ result: 'refused' });
      return { status: 403, reason: 'foreign-workload', message: foreign };
    }
    this.#reports.set(client.identity, { identity: client.identity, ...(client.node !== undefined ? { node: client.node } : {}), report, receivedAt: this.#clock.now() });
    this.#received.inc({ result: 'accepted' });
    this.#prune(model);
    return { status: 204 };
  }

  /** Forgets a client's report (e.g. its node left the mesh). */
  forget(identity: string): void {
    this.#reports.delete(identity);
  }

  /** The mesh status: the model, the push side's clients, and the retained reports. */
  meshStatus(model: MeshModel, server: { version: number; clients: readonly StreamClientInfo[] }): MeshStatus {
    this.#prune(model);
    const now = this.#clock.now();
    const fresh = [...this.#reports.values()].filter((e) => now - e.receivedAt <= this.#staleMs);

    // Clients: open streams merged per identity, plus reporters without an open stream.
    const clients = new Map<string, ClientMeshStatus>();
    for (const c of server.clients) {
      const prev = clients.get(c.identity);
      clients.set(c.identity, {
        identity: c.identity,
        ...(c.node !== undefined ? { node: c.node } : {}),
        view: c.view,
        connected: true,
        sentVersion: Math.max(prev?.sentVersion ?? 0, c.sentVersion),
        ackedVersion: Math.max(prev?.ackedVersion ?? 0, c.ackedVersion),
        nacks: Math.max(prev?.nacks ?? 0, c.nacks),
      });
    }
    for (const e of this.#reports.values()) {
      const c = clients.get(e.identity) ?? {
        identity: e.identity,
        ...(e.node !== undefined ? { node: e.node } : {}),
        view: e.node !== undefined ? ('node' as const) : ('ingress' as const),
        connected: false,
        sentVersion: 0,
        ackedVersion: 0,
        nacks: 0,
      };
      clients.set(e.identity, { ...c, lastReport: iso(e.receivedAt) });
    }
    const clientList = [...clients.values()].sort((a, b) => cmp(a.identity, b.identity));

    // Nodes.
    const byNode = new Map<string, Entry>();
    for (const e of this.#reports.values()) if (e.node !== undefined) byNode.set(e.node, e);
    const connectedNodes = new Set(clientList.filter((c) => c.connected && c.node !== undefined).map((c) => c.node!));
    const nodes: NodeMeshStatus[] = model.nodes.map((n) => {
      const e = byNode.get(n.name);
      const certificates = e ? [...e.report.certificates].sort((a, b) => cmp(a.identity, b.identity)) : [];
      const soonest = certificates.reduce<string | undefined>((s, c) => (s === undefined || Date.parse(c.notAfter) < Date.parse(s) ? c.notAfter : s), undefined);
      const acked = clientList.filter((c) => c.node === n.name && c.connected).reduce((m, c) => Math.max(m, c.ackedVersion), 0);
      return {
        name: n.name,
        address: n.address,
        ...(n.zone !== undefined ? { zone: n.zone } : {}),
        connected: connectedNodes.has(n.name),
        ackedVersion: acked,
        ...(e ? { lastReport: iso(e.receivedAt) } : {}),
        certificates,
        ...(soonest !== undefined ? { soonestExpiry: soonest } : {}),
      };
    });

    // Workloads: health from their node's fresh report, certificate from its latest report.
    const health = new Map<string, LocalWorkloadHealth>(); // "node namespace/name"
    for (const e of fresh) if (e.node !== undefined) for (const l of e.report.localWorkloads) health.set(`${e.node} ${l.workload}`, l);
    const certNotAfter = new Map<string, string>(); // "node identity" → latest notAfter
    for (const n of nodes) {
      for (const c of n.certificates) {
        const k = `${n.name} ${c.identity}`;
        const prev = certNotAfter.get(k);
        if (prev === undefined || Date.parse(c.notAfter) > Date.parse(prev)) certNotAfter.set(k, c.notAfter);
      }
    }
    const workloads: WorkloadMeshStatus[] = model.workloads.map((w) => {
      const key = workloadKey(w);
      const h = health.get(`${w.node} ${key}`);
      const latest = certNotAfter.get(`${w.node} ${w.identity}`);
      return {
        name: w.name,
        namespace: w.namespace,
        identity: w.identity,
        node: w.node,
        ...(h ? { healthy: h.healthy, ...(h.reason !== undefined ? { reason: h.reason } : {}) } : {}),
        ...(latest !== undefined ? { certificateNotAfter: latest } : {}),
      };
    });
    const labelsOf = new Map(workloads.map((w, i) => [w, model.workloads[i].labels]));

    // Services: selected workloads, by health. Ejections still in force, from fresh reports only.
    const ejections: EjectedEndpoint[] = fresh.flatMap((e) => e.report.ejected.filter((j) => j.until === undefined || Date.parse(j.until) > now));
    this.#ejections.set(ejections.length);
    const ejectionsByService = new Map<string, EjectedEndpoint[]>();
    for (const j of ejections) {
      const l = ejectionsByService.get(j.service);
      if (l) l.push(j);
      else ejectionsByService.set(j.service, [j]);
    }
    const byNamespace = new Map<string, WorkloadMeshStatus[]>();
    model.workloads.forEach((w, i) => {
      const l = byNamespace.get(w.namespace);
      if (l) l.push(workloads[i]);
      else byNamespace.set(w.namespace, [workloads[i]]);
    });
    const services: ServiceMeshStatus[] = model.services.map((s) => {
      const svcKey = `${s.name}.${s.namespace}`;
      const mine = ejectionsByService.get(svcKey) ?? [];
      const selected = (byNamespace.get(s.namespace) ?? []).filter((w) => selectorMatches(s.selector, labelsOf.get(w)!));
      let healthy = 0;
      let ejected = 0;
      for (const w of selected) {
        const key = `${w.namespace}/${w.name}`;
        const nodeAddress = findNode(model, w.node)?.address;
        const isEjected = mine.some((j) => (j.workload !== undefined ? j.workload === key : hostOf(j.address) === nodeAddress));
        if (isEjected) ejected += 1;
        else if (w.healthy === true && connectedNodes.has(w.node)) healthy += 1;
      }
      return { name: s.name, namespace: s.namespace, endpoints: { total: selected.length, healthy, ejected } };
    });

    return { trustDomain: model.trustDomain, version: server.version, generatedAt: iso(now), clients: clientList, nodes, services, workloads };
  }

  #prune(model: MeshModel): void {
    const now = this.#clock.now();
    for (const [id, e] of this.#reports) {
      if (now - e.receivedAt > this.#retainMs || (e.node !== undefined && !isNodeMember(model, e.node))) this.#reports.delete(id);
    }
  }
}

/** Why a report speaks for something outside its sender's node, or undefined when it does not. */
function foreignEntry(client: { identity: string; node?: string }, r: HealthReport, model: MeshModel): string | undefined {
  const node = client.node;
  if (r.node !== undefined && r.node !== node) return `the report names node "${r.node}", but the client is ${node === undefined ? 'not a node proxy' : `node "${node}"`}`;
  const ownId = node !== undefined ? SpiffeId.node(model.trustDomain, node).toString() : client.identity;
  const declared = new Set(node !== undefined ? workloadsOnNode(model, node).map(workloadKey) : []);
  for (const l of r.localWorkloads) {
    if (!declared.has(l.workload)) return `workload "${l.workload}" is not declared on ${node === undefined ? 'this client (the ingress has no local workloads)' : `node "${node}"`}`;
  }
  for (const c of r.certificates) {
    if (c.identity === ownId) continue;
    if (node === undefined || !mayObtain(model, node, c.identity)) return `certificate identity ${c.identity} belongs to no workload declared on ${node === undefined ? 'this client' : `node "${node}"`}`;
  }
  return undefined;
}

/** Checks a parsed JSON body against HealthReport; throws a plain Error saying what is wrong. */
export function parseHealthReport(body: unknown): HealthReport {
  const o = obj(body, 'the report');
  const node = o.node === undefined ? undefined : str(o.node, 'node');
  const ejected = list(o.ejected, 'ejected').map((x, i): EjectedEndpoint => {
    const e = obj(x, `ejected[${i}]`);
    const until = e.until === undefined ? undefined : time(e.until, `ejected[${i}].until`);
    const workload = e.workload === undefined ? undefined : str(e.workload, `ejected[${i}].workload`);
    return { address: str(e.address, `ejected[${i}].address`), service: str(e.service, `ejected[${i}].service`), ...(workload !== undefined ? { workload } : {}), ...(until !== undefined ? { until } : {}) };
  });
  const localWorkloads = list(o.localWorkloads, 'localWorkloads').map((x, i): LocalWorkloadHealth => {
    const l = obj(x, `localWorkloads[${i}]`);
    if (typeof l.healthy !== 'boolean') throw new Error(`localWorkloads[${i}].healthy must be a boolean`);
    const reason = l.reason === undefined ? undefined : str(l.reason, `localWorkloads[${i}].reason`);
    return { workload: str(l.workload, `localWorkloads[${i}].workload`), healthy: l.healthy, ...(reason !== undefined ? { reason } : {}) };
  });
  const certificates = list(o.certificates, 'certificates').map((x, i): HeldCertificate => {
    const c = obj(x, `certificates[${i}]`);
    return { identity: str(c.identity, `certificates[${i}].identity`), notAfter: time(c.notAfter, `certificates[${i}].notAfter`) };
  });
  return { ...(node !== undefined ? { node } : {}), ejected, localWorkloads, certificates };
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what} must be an object`);
  return v as Record<string, unknown>;
}

function list(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`${what} must be an array`);
  if (v.length > MAX_ENTRIES) throw new Error(`${what} has more than ${MAX_ENTRIES} entries`);
  return v;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_STRING) throw new Error(`${what} must be a non-empty string of at most ${MAX_STRING} characters`);
  return v;
}

function time(v: unknown, what: string): string {
  const s = str(v, what);
  if (!Number.isFinite(Date.parse(s))) throw new Error(`${what} must be an RFC 3339 time`);
  return new Date(Date.parse(s)).toISOString();
}

/** "10.0.0.1:15008" → "10.0.0.1"; "[::1]:15008" → "::1". */
function hostOf(address: string): string {
  const m = /^\[([^\]]+)\]:\d+$/.exec(address) ?? /^([^:]+):\d+$/.exec(address);
  return m ? m[1] : address;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
