/**
 * The discovery protocol: how the pool pushes the mesh to its clients (node proxies, the ingress).
 * Wire types only; the server lives in discovery/, the client library in core/control/ (so that the
 * proxy and the ingress can use it without importing discovery/).
 *
 * Transport: HTTPS, TLS 1.3, mutual (core/tls meshServerOptions / meshClientOptions). The server
 * presents DISCOVERY_SERVER_PATH under the trust domain; clients present their SVID (a node proxy
 * spiffe://TD/ward/node/N, or the ingress spiffe://TD/ns/ward-system/sa/ward-ingress).
 *
 *   GET  /v1/stream?resume=<version>   long-lived response, content-type application/x-ndjson:
 *                                      one Frame per line (UTF-8 JSON, at most MAX_FRAME_BYTES).
 *                                      `resume` = the last version the client ACKed (omit or 0 for
 *                                      none): the server answers with a delta from there when it
 *                                      still can, else with a snapshot.
 *   POST /v1/ack                       body Ack (application/json); answered 204.
 *
 * Versions are one mesh-wide counter (positive integers, increasing). Each client sees only the
 * resources its identity entitles it to (its view), so a delta may be empty for one client and not
 * for another; the server sends nothing for an empty delta (a heartbeat keeps the stream alive).
 *
 * Ordering: frames on one stream are applied in order. A delta's `base` is the version the client
 * holds after the previous frame (a snapshot's or delta's `version`); a client receiving a delta
 * whose base differs from what it holds must NACK it and reconnect without `resume` (snapshot).
 * A client that rejects a version (NACK) keeps its previous state; the server logs and counts it
 * and keeps streaming later versions (each later delta is based on the version the server sent).
 */

export const DISCOVERY_PROTOCOL = 'ward.discovery/v1';
/** The server's SPIFFE ID path (spiffe://TD/ward/discovery). */
export const DISCOVERY_SERVER_PATH = '/ward/discovery';
/** Largest frame a client accepts; a longer line is a protocol error (the client reconnects). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** The server sends a heartbeat at least this often on an idle stream. */
export const HEARTBEAT_MS = 15_000;

/** What the pool pushes. `key` is unique within its kind. */
export type ResourceKind =
  | 'endpoints' // key "service.namespace"        value ServiceEndpoints
  | 'policy' // key "namespace/name"                value AuthorizationPolicy (core/policy)
  | 'route' // key host                             value IngressRoute
  | 'bundle' // key trust domain                    value TrustBundleResource
  | 'workload'; // key "namespace/name" — only the client's own node's workloads (its certificate rights)

export interface Endpoint {
  /** "ip:port" the destination node proxy accepts mTLS on for this workload. */
  address: string;
  /** The SPIFFE ID the endpoint must present (secure naming). */
  identity: string;
  node: string;
  zone?: string;
  workload: string;
}

export interface ServiceEndpoints {
  service: string;
  namespace: string;
  ports: { name?: string; port: number; targetPort: number; protocol: 'http' | 'tcp' }[];
  endpoints: Endpoint[];
}

export interface IngressRoute {
  host: string;
  paths: { path: string; pathType: 'Exact' | 'Prefix'; service: string; port: number }[];
  /** Kubernetes mode: the TLS Secret in the ingress's own namespace with this host's certificate. */
  tlsSecret?: string;
}

export interface TrustBundleResource {
  trustDomain: string;
  /** PEM roots (several during a root rotation). */
  pem: string;
  sequence: number;
}

/** A workload on the client's own node: the identity the node may obtain a certificate for. */
export interface LocalWorkload {
  name: string;
  namespace: string;
  identity: string;
  address: string;
  ports: number[];
  labels: Record<string, string>;
}

export interface Resource {
  kind: ResourceKind;
  key: string;
  value: unknown;
}

export interface ResourceRef {
  kind: ResourceKind;
  key: string;
}

export type Frame =
  | { type: 'snapshot'; version: number; resources: Resource[] }
  | { type: 'delta'; version: number; base: number; upserts: Resource[]; removals: ResourceRef[] }
  | { type: 'heartbeat'; version: number };

export type Ack = { version: number; ok: true } | { version: number; ok: false; error: string };

/** Parses one NDJSON line into a Frame, or throws a plain Error describing what is wrong. */
export function parseFrame(line: string): Frame {
  if (line.length > MAX_FRAME_BYTES) throw new Error(`frame longer than ${MAX_FRAME_BYTES} bytes`);
  const f = JSON.parse(line) as Frame;
  if (typeof f !== 'object' || f === null) throw new Error('frame is not an object');
  if (!Number.isSafeInteger(f.version) || f.version < 0) throw new Error('frame has no valid version');
  switch (f.type) {
    case 'snapshot':
      if (!Array.isArray(f.resources)) throw new Error('snapshot without resources');
      return f;
    case 'delta':
      if (!Number.isSafeInteger(f.base) || !Array.isArray(f.upserts) || !Array.isArray(f.removals)) throw new Error('malformed delta');
      return f;
    case 'heartbeat':
      return f;
    default:
      throw new Error(`unknown frame type ${JSON.stringify((f as { type?: unknown }).type)}`);
  }
}

/** The state a client holds: resources by kind and key, at a version. */
export interface ViewState {
  version: number;
  resources: ReadonlyMap<string, Resource>; // map key: `${kind} ${key}`
}

export function resourceId(r: ResourceRef): string {
  return `${r.kind} ${r.key}`;
}

/**
 * Applies a frame to a state, returning the new state (the old one is untouched, so a rejected
 * update leaves the previous state in place). Throws when a delta's base does not match.
 */
export function applyFrame(state: ViewState | undefined, f: Frame): ViewState {
  if (f.type === 'heartbeat') {
    if (!state) throw new Error('heartbeat before any snapshot');
    return state;
  }
  if (f.type === 'snapshot') {
    return { version: f.version, resources: new Map(f.resources.map((r) => [resourceId(r), r])) };
  }
  if (!state || state.version !== f.base) throw new Error(`delta based on version ${f.base}, but the client holds ${state ? state.version : 'nothing'}`);
  const next = new Map(state.resources);
  for (const r of f.removals) next.delete(resourceId(r));
  for (const r of f.upserts) next.set(resourceId(r), r);
  return { version: f.version, resources: next };
}

// ---- health reports -------------------------------------------------------------------------
//
//   POST /v1/health                    body HealthReport (application/json, at most
//                                      MAX_HEALTH_REPORT_BYTES); answered 204. Same authentication
//                                      as the stream (a node proxy of a declared node, or the
//                                      ingress). Each report replaces the client's previous one.
//                                      A report naming a workload (or a certificate identity) not
//                                      declared on the sender's node is refused whole: 403.
//                                      Malformed: 400; too large: 413.

/** Largest health report body the pool accepts. */
export const MAX_HEALTH_REPORT_BYTES = 256 * 1024;

/** An endpoint the reporting proxy has ejected (outlier detection): it stops sending it traffic. */
export interface EjectedEndpoint {
  /** The endpoint's "ip:port" (Endpoint.address). */
  address: string;
  /** The endpoints key, "service.namespace". */
  service: string;
  /** The endpoint's workload ("namespace/name") when the proxy knows it (Endpoint.workload). */
  workload?: string;
  /** RFC 3339 time the ejection ends; absent: until further notice. */
  until?: string;
}

/** A workload on the reporting proxy's own node, as that proxy sees it. */
export interface LocalWorkloadHealth {
  /** "namespace/name"; must be declared on the reporting node. */
  workload: string;
  healthy: boolean;
  reason?: string;
}

/** A certificate the reporting proxy holds (its own node SVID, or a workload SVID of its node). */
export interface HeldCertificate {
  /** SPIFFE ID in the certificate. */
  identity: string;
  /** RFC 3339. */
  notAfter: string;
}

export interface HealthReport {
  /** The reporting node's name; when present it must be the node in the client certificate. */
  node?: string;
  ejected: EjectedEndpoint[];
  localWorkloads: LocalWorkloadHealth[];
  certificates: HeldCertificate[];
}
