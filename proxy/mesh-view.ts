/**
 * What a node proxy knows of the mesh at one discovery version, indexed once per version so that
 * nothing per request scans or parses: services by mesh name, this node's workloads, the policy
 * engine, the trust bundle, and for each local (workload, target port) the (service, port) pairs a
 * request to it is addressed to — the policy engine selects by service.
 *
 * `MeshView.from` validates the whole state; a throw makes the ControlClient NACK the version and
 * keep the previous one (a half-applied configuration never reaches the data path).
 */
import { SpiffeId } from '../core/identity/index.js';
import { TrustBundle } from '../core/pki/index.js';
import { PolicyEngine, type AuthorizationPolicy } from '../core/policy/index.js';
import type { LocalWorkload, ServiceEndpoints, TrustBundleResource, ViewState } from '../core/protocol/index.js';

export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';

/** A service port, as the pool pushes it. */
export type ServicePort = ServiceEndpoints['ports'][number];

/** The (service, service port) a request to a local workload's target port is addressed to. */
export interface InboundTarget {
  readonly namespace: string;
  readonly service: string;
  readonly port: number;
  readonly protocol: 'http' | 'tcp';
}

export interface LocalWorkloadView extends LocalWorkload {
  /** "namespace/name" */
  readonly key: string;
  readonly id: SpiffeId;
}

export type Resolution =
  | { readonly ok: true; readonly service: ServiceEndpoints; readonly key: string; readonly port: ServicePort }
  | { readonly ok: false; readonly reason: string };

const EMPTY_TARGETS: readonly InboundTarget[] = Object.freeze([]);
/** "ip:port" or "[v6]:port" (endpoints carry addresses, never names). */
const ADDRESS_RE = /^(?:[0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$/;

export class MeshView {
  readonly version: number;
  readonly trustDomain: string;
  /** By "service.namespace". */
  readonly services: ReadonlyMap<string, ServiceEndpoints>;
  /** This node's workloads by "namespace/name". */
  readonly workloads: ReadonlyMap<string, LocalWorkloadView>;
  readonly engine: PolicyEngine;
  readonly bundle: TrustBundle | undefined;
  readonly #clusterSuffix: string;
  /** "namespace/name port" → targets */
  readonly #targets: ReadonlyMap<string, readonly InboundTarget[]>;

  private constructor(o: {
    version: number;
    trustDomain: string;
    clusterDomain: string;
    services: Map<string, ServiceEndpoints>;
    workloads: Map<string, LocalWorkloadView>;
    engine: PolicyEngine;
    bundle: TrustBundle | undefined;
  }) {
    this.version = o.version;
    this.trustDomain = o.trustDomain;
    this.services = o.services;
    this.workloads = o.workloads;
    this.engine = o.engine;
    this.bundle = o.bundle;
    this.#clusterSuffix = `.svc.${o.clusterDomain.toLowerCase()}`;
    const targets = new Map<string, InboundTarget[]>();
    for (const svc of o.services.values()) {
      for (const ep of svc.endpoints) {
        if (!o.workloads.has(ep.workload)) continue;
        for (const p of svc.ports) {
          const k = `${ep.workload} ${p.targetPort}`;
          let list = targets.get(k);
          if (!list) targets.set(k, (list = []));
          if (!list.some((t) => t.service === svc.service && t.namespace === svc.namespace && t.port === p.port)) {
            list.push(Object.freeze({ namespace: svc.namespace, service: svc.service, port: p.port, protocol: p.protocol }));
          }
        }
      }
    }
    this.#targets = targets;
  }

  static empty(trustDomain: string, clusterDomain = DEFAULT_CLUSTER_DOMAIN): MeshView {
    return new MeshView({ version: 0, trustDomain, clusterDomain, services: new Map(), workloads: new Map(), engine: new PolicyEngine([]), bundle: undefined });
  }

  /** Builds and validates a view; throws an Error naming the bad resource (the version is then NACKed). */
  static from(state: ViewState, o: { trustDomain: string; clusterDomain?: string }): MeshView {
    const services = new Map<string, ServiceEndpoints>();
    const workloads = new Map<string, LocalWorkloadView>();
    const policies: AuthorizationPolicy[] = [];
    let bundle: TrustBundle | undefined;
    for (const r of state.resources.values()) {
      switch (r.kind) {
        case 'endpoints': {
          const v = r.value as ServiceEndpoints;
          if (!v || typeof v.service !== 'string' || typeof v.namespace !== 'string' || !Array.isArray(v.ports) || !Array.isArray(v.endpoints)) {
            throw new Error(`endpoints ${r.key}: malformed`);
          }
          for (const p of v.ports) {
            if (!p || !validPort(p.port) || !validPort(p.targetPort) || (p.protocol !== 'http' && p.protocol !== 'tcp')) throw new Error(`endpoints ${r.key}: bad port ${JSON.stringify(p)}`);
          }
          for (const e of v.endpoints) {
            if (!e || typeof e.address !== 'string' || typeof e.workload !== 'string' || typeof e.node !== 'string') throw new Error(`endpoints ${r.key}: malformed endpoint`);
            if (!ADDRESS_RE.test(e.address) || !validPort(Number(e.address.slice(e.address.lastIndexOf(':') + 1)))) throw new Error(`endpoints ${r.key}: endpoint address ${JSON.stringify(e.address)} is not ip:port`);
            if (!/^[a-z0-9-]+\/[A-Za-z0-9._-]+$/.test(e.workload)) throw new Error(`endpoints ${r.key}: endpoint workload ${JSON.stringify(e.workload)} is not namespace/name`);
            // Secure naming needs a valid identity of this trust domain on every endpoint.
            const id = SpiffeId.tryParse(e.identity);
            if (!id || !id.memberOf(o.trustDomain)) throw new Error(`endpoints ${r.key}: endpoint ${e.address} has no valid identity of ${o.trustDomain}`);
          }
          services.set(`${v.service}.${v.namespace}`, v);
          break;
        }
        case 'workload': {
          const v = r.value as LocalWorkload;
          if (!v || typeof v.name !== 'string' || typeof v.namespace !== 'string' || typeof v.address !== 'string' || !Array.isArray(v.ports)) {
            throw new Error(`workload ${r.key}: malformed`);
          }
          if (!v.ports.every(validPort)) throw new Error(`workload ${r.key}: ports must be 1..65535`);
          const id = SpiffeId.tryParse(v.identity);
          if (!id || !id.memberOf(o.trustDomain) || !id.workload) throw new Error(`workload ${r.key}: identity ${JSON.stringify(v.identity)} is not a workload identity of ${o.trustDomain}`);
          const key = `${v.namespace}/${v.name}`;
          workloads.set(key, Object.freeze({ ...v, key, id }));
          break;
        }
        case 'policy':
          policies.push(r.value as AuthorizationPolicy);
          break;
        case 'bundle': {
          const v = r.value as TrustBundleResource;
          if (v.trustDomain !== o.trustDomain) break; // federation bundles are not used yet
          bundle = TrustBundle.fromPem(o.trustDomain, v.pem);
          break;
        }
        default:
          break;
      }
    }
    // Throws PolicyInvalidError on any invalid policy: the whole version is refused.
    const engine = new PolicyEngine(policies, 'pushed policies');
    return new MeshView({ version: state.version, trustDomain: o.trustDomain, clusterDomain: o.clusterDomain ?? DEFAULT_CLUSTER_DOMAIN, services, workloads, engine, bundle });
  }

  /**
   * A mesh name → its service and port. Accepted: `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<cluster
   * domain>` (any case, an optional trailing dot). `port` is the service port (80 when the request
   * named none).
   */
  resolve(host: string, port: number): Resolution {
    let h = host.toLowerCase();
    if (h.endsWith('.')) h = h.slice(0, -1);
    if (h.endsWith(this.#clusterSuffix)) h = h.slice(0, -this.#clusterSuffix.length);
    else if (h.endsWith('.svc')) h = h.slice(0, -4);
    const service = this.services.get(h);
    if (!service) return { ok: false, reason: `${host} is not a mesh service (expected <service>.<namespace>[.svc.${this.#clusterSuffix.slice(5)}])` };
    const p = service.ports.find((sp) => sp.port === port);
    if (!p) return { ok: false, reason: `service ${h} has no port ${port} (ports: ${service.ports.map((sp) => sp.port).join(', ') || 'none'})` };
    return { ok: true, service, key: h, port: p };
  }

  /** The (service, port) pairs a request reaching a local workload's target port is for. */
  inboundTargets(workloadKey: string, targetPort: number): readonly InboundTarget[] {
    return this.#targets.get(`${workloadKey} ${targetPort}`) ?? EMPTY_TARGETS;
  }
}

function validPort(p: unknown): p is number {
  return Number.isInteger(p) && (p as number) >= 1 && (p as number) <= 65535;
}

// ---- naming the destination workload on the wire -------------------------------------------

/**
 * The SNI a client sends to a node's inbound listener: `<target port>.<workload name>.<namespace>.ward`.
 * A node proxy holds many identities, so the client names the destination workload (DESIGN §5) and
 * the server presents that workload's certificate; the port says where the inbound forwards.
 * The namespace is a DNS label, so the name (which may contain dots) is everything in between.
 */
export function sniFor(workloadKey: string, port: number): string {
  const slash = workloadKey.indexOf('/');
  return `${port}.${workloadKey.slice(slash + 1)}.${workloadKey.slice(0, slash)}.ward`;
}

/** The inverse of sniFor; undefined for anything else. */
export function parseSni(sni: string | undefined | null | false): { workload: string; port: number } | undefined {
  if (!sni || !sni.endsWith('.ward')) return undefined;
  const labels = sni.slice(0, -5).split('.');
  if (labels.length < 3) return undefined;
  const port = Number(labels[0]);
  if (!/^[0-9]{1,5}$/.test(labels[0]) || !validPort(port)) return undefined;
  const ns = labels[labels.length - 1];
  const name = labels.slice(1, -1).join('.');
  if (!ns || !name) return undefined;
  return { workload: `${ns}/${name}`, port };
}

/** ALPN protocols between node proxies: HTTP/1.1 requests, or a raw TCP stream (CONNECT). */
export const ALPN_HTTP = 'http/1.1';
export const ALPN_TCP = 'ward-tcp';

/** The header carrying the verified source identity to the application (always stripped from what arrives). */
export const SOURCE_IDENTITY_HEADER = 'x-ward-source-identity';

/**
 * Set by an inbound proxy on a 503 when the local workload never received the request (nothing
 * listening): the calling proxy may then retry on another endpoint like a connect failure.
 */
export const NOT_FORWARDED_HEADER = 'x-ward-not-forwarded';
