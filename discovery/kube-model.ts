/**
 * Kubernetes objects → MeshModel: the pure half of the Kubernetes source (docs/kubernetes.md, "The
 * model from the API"). No I/O, no clock, no randomness: the same objects, in any order, always give
 * the same model (every list sorted by its key) and the same problems.
 *
 * Unlike ward.yaml, which is accepted or refused whole, the cluster is not one document someone
 * just edited: one bad Ingress or AuthorizationPolicy must not take the mesh down with it. An
 * invalid object (or the invalid part of one: a rule, a path, a service port) is left out and
 * reported as a problem; everything else applies. The rules themselves are the ones ward.yaml
 * applies (policies: core/policy's parser; route hosts: core/hostname; route paths: normal form),
 * so the ingress and the proxies accept every model this produces.
 *
 * The inputs are typed loosely on purpose: the informers hand over objects deserialized by
 * client-node (after a list) and raw JSON (from a watch), so every field is checked where it is used.
 */
import { isIP } from 'node:net';
import { routeHostError, routePathError } from '../core/hostname.js';
import { SpiffeId } from '../core/identity/index.js';
import { parsePolicy, PolicyInvalidError } from '../core/policy/index.js';
import {
  deepFreeze,
  serviceKey,
  type MeshModel,
  type MeshNode,
  type PolicyResource,
  type Route,
  type RoutePath,
  type Service,
  type ServicePort,
  type ServiceProtocol,
  type Workload,
} from './model.js';

/** Ward's own namespace (docs/kubernetes.md, "Names and conventions"). */
export const KUBE_WARD_NAMESPACE = 'ward-system';
/** The label a pod or namespace opts in (`enabled`) or a pod opts out (`disabled`) with. */
export const MESH_LABEL = 'ward.dev/mesh';
/** Node proxy pods carry `app.kubernetes.io/name: ward-proxy`. */
export const APP_NAME_LABEL = 'app.kubernetes.io/name';
export const PROXY_APP_NAME = 'ward-proxy';
export const INGRESS_CLASS = 'ward';
export const LEGACY_INGRESS_CLASS_ANNOTATION = 'kubernetes.io/ingress.class';
/** The label the EndpointSlice controller puts on a slice: the name of its Service. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

// ---- the inputs (only the fields the translation reads) ---------------------------------------

export interface KubeMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** A Date after a list (client-node deserializes), a string from a watch: only its presence counts. */
  deletionTimestamp?: unknown;
}

export interface KubeContainerPort {
  containerPort?: number;
  name?: string;
  protocol?: string;
}

export interface KubePod {
  metadata?: KubeMeta;
  spec?: {
    nodeName?: string;
    serviceAccountName?: string;
    hostNetwork?: boolean;
    containers?: readonly { ports?: readonly KubeContainerPort[] }[];
  };
  status?: {
    phase?: string;
    podIP?: string;
    hostIP?: string;
    conditions?: readonly { type?: string; status?: string }[];
  };
}

export interface KubeServicePort {
  name?: string;
  port?: number;
  targetPort?: number | string;
  protocol?: string;
  appProtocol?: string;
}

export interface KubeService {
  metadata?: KubeMeta;
  spec?: { selector?: Record<string, string>; ports?: readonly KubeServicePort[] };
}

export interface KubeNamespace {
  metadata?: KubeMeta;
}

export interface KubeEndpointSlice {
  metadata?: KubeMeta;
  ports?: readonly { name?: string; port?: number; protocol?: string }[];
}

export interface KubeIngressPath {
  path?: string;
  pathType?: string;
  backend?: { service?: { name?: string; port?: { number?: number; name?: string } }; resource?: unknown };
}

export interface KubeIngress {
  metadata?: KubeMeta;
  spec?: {
    ingressClassName?: string;
    defaultBackend?: unknown;
    tls?: readonly { hosts?: readonly string[]; secretName?: string }[];
    rules?: readonly { host?: string; http?: { paths?: readonly KubeIngressPath[] } }[];
  };
}

/** A custom object as CustomObjectsApi and the watch return it (plain JSON). */
export interface KubeCustomObject {
  apiVersion?: string;
  kind?: string;
  metadata?: KubeMeta;
  spec?: unknown;
}

export interface KubeObjects {
  pods: readonly KubePod[];
  services: readonly KubeService[];
  namespaces: readonly KubeNamespace[];
  endpointSlices: readonly KubeEndpointSlice[];
  ingresses: readonly KubeIngress[];
  policies: readonly KubeCustomObject[];
}

export interface KubeModelOptions {
  trustDomain: string;
  /** Where Ward's own pods run (node proxies). Default ward-system. */
  namespace?: string;
}

/** An object, or a part of one, that was left out of the model, and why. */
export interface KubeProblem {
  /** The object's kind: Pod, Service, Ingress, AuthorizationPolicy. */
  readonly kind: string;
  /** `namespace/name` of the object. */
  readonly ref: string;
  readonly reason: string;
}

export interface KubeModelResult {
  readonly model: MeshModel;
  /** Sorted by kind, ref, reason. */
  readonly problems: readonly KubeProblem[];
}

/** What the CA's attestation needs to know about a pod (discovery/kube-attestor.ts). */
export interface KubePodInfo {
  readonly uid: string;
  readonly nodeName?: string;
  /** spec.serviceAccountName, or "default" when unset (what the API server would fill in). */
  readonly serviceAccount: string;
  readonly phase?: string;
  readonly labels: Readonly<Record<string, string>>;
}

// ---- small readers ------------------------------------------------------------------------------

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function validPort(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
}

/** The string-valued entries of a label or annotation map (a raw watch object is not trusted). */
function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return out;
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) if (typeof val === 'string') out[k] = val;
  return out;
}

function list<T>(v: readonly T[] | undefined | null): readonly T[] {
  return Array.isArray(v) ? v : [];
}

function refOf(meta: KubeMeta | undefined): string {
  return `${meta?.namespace ?? ''}/${meta?.name ?? ''}`;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Objects with a name (and namespace), sorted by `namespace/name`: the order everything is processed in. */
function named<T extends { metadata?: KubeMeta }>(items: readonly T[]): T[] {
  return items.filter((o) => str(o?.metadata?.name) !== undefined).sort((a, b) => cmp(refOf(a.metadata), refOf(b.metadata)));
}

function shown(v: string): string {
  return JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v);
}

/** Canonical text of an IP (IPv6 compressed, lowercase), or undefined. */
function canonicalIp(v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined;
  const family = isIP(v);
  if (family === 4) return v;
  if (family === 6 && !v.includes('%')) return new URL(`http://[${v}]/`).hostname.slice(1, -1);
  return undefined;
}

function isTerminating(meta: KubeMeta | undefined): boolean {
  return meta?.deletionTimestamp !== undefined && meta.deletionTimestamp !== null;
}

function isReady(pod: KubePod): boolean {
  return list(pod.status?.conditions).some((c) => c?.type === 'Ready' && c.status === 'True');
}

function isTcp(protocol: unknown): boolean {
  return protocol === undefined || protocol === null || protocol === 'TCP';
}

/** The pod facts attestation checks, or undefined for an object without a UID (never a real pod). */
export function podInfo(pod: KubePod): KubePodInfo | undefined {
  const uid = str(pod?.metadata?.uid);
  if (uid === undefined) return undefined;
  const nodeName = str(pod.spec?.nodeName);
  const phase = str(pod.status?.phase);
  return deepFreeze({
    uid,
    ...(nodeName !== undefined ? { nodeName } : {}),
    serviceAccount: str(pod.spec?.serviceAccountName) ?? 'default',
    ...(phase !== undefined ? { phase } : {}),
    labels: stringMap(pod.metadata?.labels),
  });
}

/** Whether a pod is a node proxy: in Ward's namespace, labelled app.kubernetes.io/name=ward-proxy. */
export function isProxyPod(pod: KubePod, wardNamespace = KUBE_WARD_NAMESPACE): boolean {
  return pod?.metadata?.namespace === wardNamespace && stringMap(pod.metadata.labels)[APP_NAME_LABEL] === PROXY_APP_NAME;
}

/**
 * Opt-in: the pod's own `ward.dev/mesh` label decides when it is `enabled` or `disabled`;
 * otherwise its namespace's label `ward.dev/mesh: enabled` opts it in.
 */
export function isOptedIn(pod: KubePod, namespaceLabels: Readonly<Record<string, string>> | undefined): boolean {
  const own = stringMap(pod?.metadata?.labels)[MESH_LABEL];
  if (own === 'enabled') return true;
  if (own === 'disabled') return false;
  return namespaceLabels?.[MESH_LABEL] === 'enabled';
}

/** `http` when appProtocol is http / kubernetes.io/h2c or the port is named http or http-*, else `tcp`. */
export function servicePortProtocol(p: KubeServicePort): ServiceProtocol {
  if (p.appProtocol === 'http' || p.appProtocol === 'kubernetes.io/h2c') return 'http';
  const name = p.name ?? '';
  return name === 'http' || name.startsWith('http-') ? 'http' : 'tcp';
}


// ---- the translation ----------------------------------------------------------------------------

class Problems {
  readonly list: KubeProblem[] = [];
  add(kind: string, ref: string, reason: string): void {
    this.list.push({ kind, ref, reason });
  }
  sorted(): KubeProblem[] {
    return this.list.sort((a, b) => cmp(a.kind, b.kind) || cmp(a.ref, b.ref) || cmp(a.reason, b.reason));
  }
}

/**
 * The mesh as the Kubernetes API describes it (docs/kubernetes.md), plus what was left out and why.
 * Pure and deterministic; the model is deep-frozen.
 */
export function modelFromKube(objects: KubeObjects, o: KubeModelOptions): KubeModelResult {
  const problems = new Problems();
  const wardNs = o.namespace ?? KUBE_WARD_NAMESPACE;
  const pods = named(list(objects.pods));

  const nodes = buildNodes(pods, wardNs, o.trustDomain, problems);
  const nsLabels = new Map<string, Record<string, string>>();
  for (const ns of list(objects.namespaces)) {
    const name = str(ns?.metadata?.name);
    if (name !== undefined) nsLabels.set(name, stringMap(ns.metadata?.labels));
  }
  const workloads = buildWorkloads(pods, nsLabels, nodes, o.trustDomain, problems);
  const services = buildServices(named(list(objects.services)), named(list(objects.endpointSlices)), pods, problems);
  const policies = buildPolicies(named(list(objects.policies)), problems);
  const routes = buildRoutes(named(list(objects.ingresses)), services, problems);

  const model: MeshModel = {
    trustDomain: o.trustDomain,
    nodes: [...nodes.values()].sort((a, b) => cmp(a.name, b.name)),
    workloads,
    services,
    policies,
    routes,
  };
  return deepFreeze({ model, problems: problems.sorted() });
}

/**
 * One node per running ward-proxy pod (ready or not: a proxy that is still starting must already be
 * a member, or it could not join). Its address is the node IP: the proxy uses the host network.
 */
function buildNodes(pods: readonly KubePod[], wardNs: string, trustDomain: string, problems: Problems): Map<string, MeshNode> {
  const nodes = new Map<string, MeshNode>();
  for (const pod of pods) {
    if (!isProxyPod(pod, wardNs) || pod.status?.phase !== 'Running') continue;
    const name = str(pod.spec?.nodeName);
    if (name === undefined || nodes.has(name)) continue; // two proxies on one node (a rollout): same node IP
    const ref = refOf(pod.metadata);
    const address = canonicalIp(pod.status?.hostIP) ?? canonicalIp(pod.status?.podIP);
    if (address === undefined) {
      problems.add('Pod', ref, `node proxy on node ${shown(name)} has neither status.hostIP nor status.podIP`);
      continue;
    }
    if (isIP(address) !== 4) {
      // Endpoint addresses are written "<node address>:<port>" without brackets; an IPv6 node
      // address would make every proxy refuse the update (see docs/kubernetes.md, open issues).
      problems.add('Pod', ref, `node proxy on node ${shown(name)} has the IPv6 address ${address}; node addresses must be IPv4`);
      continue;
    }
    try {
      SpiffeId.node(trustDomain, name);
    } catch (err) {
      problems.add('Pod', ref, `node name ${shown(name)} cannot be a node identity: ${(err as Error).message}`);
      continue;
    }
    nodes.set(name, { name, address });
  }
  return nodes;
}

/** Opted-in pods that are Running, not terminating, Ready, with an IP, on a node with a proxy. */
function buildWorkloads(
  pods: readonly KubePod[],
  nsLabels: ReadonlyMap<string, Record<string, string>>,
  nodes: ReadonlyMap<string, MeshNode>,
  trustDomain: string,
  problems: Problems,
): Workload[] {
  const out: Workload[] = [];
  for (const pod of pods) {
    const meta = pod.metadata!;
    const namespace = str(meta.namespace);
    if (namespace === undefined || !isOptedIn(pod, nsLabels.get(namespace))) continue;
    if (pod.status?.phase !== 'Running' || isTerminating(meta) || !isReady(pod)) continue;
    const address = canonicalIp(pod.status?.podIP);
    const node = str(pod.spec?.nodeName);
    if (address === undefined || node === undefined) continue;
    const ref = refOf(meta);
    if (!nodes.has(node)) {
      problems.add('Pod', ref, `opted in, but no ward-proxy pod runs on its node ${shown(node)}; left out until one does`);
      continue;
    }
    // A pod on the host network has the node's address: the node-wide outbound listener tells
    // workloads apart by source address, so it would speak for every process of the node.
    if (pod.spec?.hostNetwork === true || address === nodes.get(node)!.address) {
      problems.add('Pod', ref, 'opted in, but it uses the host network (its address is the node\'s, shared by every process there); host-network pods cannot be meshed');
      continue;
    }
    const serviceAccount = str(pod.spec?.serviceAccountName) ?? 'default';
    let identity: string;
    try {
      identity = SpiffeId.workload(trustDomain, namespace, serviceAccount).toString();
    } catch (err) {
      problems.add('Pod', ref, `cannot derive its identity: ${(err as Error).message}`);
      continue;
    }
    const ports = new Set<number>();
    for (const c of list(pod.spec?.containers)) {
      for (const p of list(c?.ports)) if (isTcp(p?.protocol) && validPort(p?.containerPort)) ports.add(p.containerPort);
    }
    out.push({
      name: meta.name!,
      namespace,
      serviceAccount,
      node,
      address,
      ports: [...ports].sort((a, b) => a - b),
      labels: stringMap(meta.labels),
      identity,
    });
  }
  return out;
}

/**
 * Services with a selector. A named targetPort is resolved from the service's EndpointSlices (whose
 * ports are named after the service port and carry the resolved number), else from the selected
 * pods' container ports; one that resolves to nothing, or to different numbers on different pods
 * (the model has one target port per service port), is left out.
 */
function buildServices(
  services: readonly KubeService[],
  slices: readonly KubeEndpointSlice[],
  pods: readonly KubePod[],
  problems: Problems,
): Service[] {
  const slicesOf = new Map<string, KubeEndpointSlice[]>();
  for (const s of slices) {
    const svc = stringMap(s.metadata?.labels)[SERVICE_NAME_LABEL];
    if (svc === undefined) continue;
    const key = `${s.metadata!.namespace ?? ''}/${svc}`;
    let l = slicesOf.get(key);
    if (l === undefined) slicesOf.set(key, (l = []));
    l.push(s);
  }
  const podsByNs = new Map<string, KubePod[]>();
  for (const p of pods) {
    const ns = p.metadata!.namespace ?? '';
    let l = podsByNs.get(ns);
    if (l === undefined) podsByNs.set(ns, (l = []));
    l.push(p);
  }

  const out: Service[] = [];
  for (const svc of services) {
    const meta = svc.metadata!;
    const namespace = str(meta.namespace);
    const selector = stringMap(svc.spec?.selector);
    if (namespace === undefined || Object.keys(selector).length === 0) continue;
    const ref = refOf(meta);
    const key = serviceKey({ namespace, name: meta.name! });
    let selected: KubePod[] | undefined;
    const selectedPods = (): KubePod[] =>
      (selected ??= (podsByNs.get(namespace) ?? []).filter((p) => {
        const labels = stringMap(p.metadata?.labels);
        const phase = p.status?.phase;
        return phase !== 'Succeeded' && phase !== 'Failed' && Object.entries(selector).every(([k, v]) => labels[k] === v);
      }));

    const ports: ServicePort[] = [];
    for (const p of list(svc.spec?.ports)) {
      if (!isTcp(p?.protocol) || !validPort(p.port)) continue; // UDP/SCTP: not mesh traffic
      const name = str(p.name);
      const label = name ?? String(p.port);
      let targetPort: number | undefined;
      const tp = p.targetPort;
      if (tp === undefined || tp === null || tp === 0) targetPort = p.port;
      else if (typeof tp === 'number') targetPort = validPort(tp) ? tp : undefined;
      else if (typeof tp === 'string' && /^[0-9]+$/.test(tp)) targetPort = validPort(Number(tp)) ? Number(tp) : undefined;
      else if (typeof tp === 'string') {
        const fromSlices = new Set<number>();
        for (const s of slicesOf.get(key) ?? []) {
          for (const sp of list(s.ports)) if ((sp?.name ?? '') === (name ?? '') && isTcp(sp.protocol) && validPort(sp.port)) fromSlices.add(sp.port);
        }
        let found = fromSlices;
        if (found.size === 0) {
          found = new Set<number>();
          for (const pod of selectedPods()) {
            for (const c of list(pod.spec?.containers)) {
              for (const cp of list(c?.ports)) if (cp?.name === tp && isTcp(cp.protocol) && validPort(cp.containerPort)) found.add(cp.containerPort);
            }
          }
        }
        if (found.size === 1) targetPort = [...found][0];
        else if (found.size > 1) {
          const nums = [...found].sort((a, b) => a - b).join(', ');
          problems.add('Service', ref, `port ${label}: targetPort ${shown(tp)} is port ${nums} on different pods; Ward needs one number per service port, so the port is left out`);
          continue;
        } else {
          if (selectedPods().length > 0) problems.add('Service', ref, `port ${label}: no selected pod has a container port named ${shown(tp)}; the port is left out`);
          continue;
        }
      }
      if (targetPort === undefined) continue;
      const protocol = servicePortProtocol(p);
      ports.push(name !== undefined ? { name, port: p.port, targetPort, protocol } : { port: p.port, targetPort, protocol });
    }
    out.push({ name: meta.name!, namespace, ports: ports.sort((a, b) => a.port - b.port), selector });
  }
  return out;
}

const MAX_POLICY_PROBLEMS_SHOWN = 5;

/** Each AuthorizationPolicy on its own, by core/policy's parser (what ward.yaml's policies go through). */
function buildPolicies(objects: readonly KubeCustomObject[], problems: Problems): PolicyResource[] {
  const out: PolicyResource[] = [];
  for (const obj of objects) {
    const ref = refOf(obj.metadata);
    // The parser refuses unknown keys; what the API server adds (status, most metadata) is not
    // part of the policy, so only the fields a policy consists of are handed over.
    const raw: Record<string, unknown> = {
      apiVersion: obj.apiVersion,
      kind: obj.kind,
      metadata: { name: obj.metadata!.name, namespace: obj.metadata!.namespace },
    };
    if (obj.spec !== undefined) raw.spec = obj.spec;
    try {
      out.push(parsePolicy(raw, ref));
    } catch (err) {
      if (!(err instanceof PolicyInvalidError)) throw err;
      const shownProblems = err.problems.slice(0, MAX_POLICY_PROBLEMS_SHOWN).map((p) => `${p.path}: ${p.reason}`);
      if (err.problems.length > MAX_POLICY_PROBLEMS_SHOWN) shownProblems.push(`… and ${err.problems.length - MAX_POLICY_PROBLEMS_SHOWN} more`);
      problems.add('AuthorizationPolicy', ref, `invalid, left out: ${shownProblems.join('; ')}`);
    }
  }
  return out;
}

export function isWardIngress(ing: KubeIngress): boolean {
  const cls = ing?.spec?.ingressClassName;
  if (cls !== undefined && cls !== null) return cls === INGRESS_CLASS;
  return stringMap(ing?.metadata?.annotations)[LEGACY_INGRESS_CLASS_ANNOTATION] === INGRESS_CLASS;
}

const PATH_TYPES: Readonly<Record<string, RoutePath['pathType']>> = { Exact: 'Exact', Prefix: 'Prefix', ImplementationSpecific: 'Prefix' };

/**
 * Ingresses of class ward → routes, one per host. Rules for one host from several Ingresses are
 * merged (as ingress controllers do), in `namespace/name` order; the same (path, pathType) twice is
 * kept once, the first. A host's TLS Secret comes from the first Ingress (same order) that lists it.
 */
function buildRoutes(ingresses: readonly KubeIngress[], services: readonly Service[], problems: Problems): Route[] {
  const svcByKey = new Map(services.map((s) => [serviceKey(s), s]));
  const hosts = new Map<string, { paths: RoutePath[]; seen: Map<string, string> }>();
  const tls = new Map<string, { secret: string; ref: string }>();

  for (const ing of ingresses) {
    if (!isWardIngress(ing)) continue;
    const meta = ing.metadata!;
    const namespace = meta.namespace ?? '';
    const ref = refOf(meta);
    if (ing.spec?.defaultBackend !== undefined && ing.spec.defaultBackend !== null) {
      problems.add('Ingress', ref, 'spec.defaultBackend is not supported by Ward and is ignored; route by host');
    }
    list(ing.spec?.tls).forEach((t, i) => {
      const secret = str(t?.secretName);
      if (secret === undefined) return;
      for (const h of list(t.hosts)) {
        if (typeof h !== 'string') continue;
        const first = tls.get(h);
        if (first === undefined) tls.set(h, { secret, ref });
        else if (first.secret !== secret) {
          problems.add('Ingress', ref, `spec.tls[${i}]: host ${shown(h)} already has the TLS Secret ${shown(first.secret)} (from Ingress ${first.ref}); ${shown(secret)} is ignored`);
        }
      }
    });
    list(ing.spec?.rules).forEach((rule, i) => {
      const at = `spec.rules[${i}]`;
      const host = rule?.host;
      if (typeof host !== 'string' || host === '') {
        problems.add('Ingress', ref, `${at}: a rule without host is skipped (Ward routes by host)`);
        return;
      }
      const hErr = routeHostError(host);
      if (hErr !== undefined) {
        problems.add('Ingress', ref, `${at}.host: ${hErr}`);
        return;
      }
      const paths = list(rule.http?.paths);
      if (paths.length === 0) {
        problems.add('Ingress', ref, `${at}: has no http paths; skipped`);
        return;
      }
      let h = hosts.get(host);
      if (h === undefined) hosts.set(host, (h = { paths: [], seen: new Map() }));
      paths.forEach((p, j) => {
        const pat = `${at}.http.paths[${j}]`;
        const fail = (reason: string): void => problems.add('Ingress', ref, `${pat}: ${reason}; skipped`);
        if (p === null || typeof p !== 'object') return fail('must be a mapping');
        const rawType = p.pathType ?? 'ImplementationSpecific';
        const pathType = Object.hasOwn(PATH_TYPES, rawType) ? PATH_TYPES[rawType] : undefined;
        if (pathType === undefined) return fail(`pathType ${shown(String(rawType))} is not Exact, Prefix or ImplementationSpecific`);
        const path = p.path === undefined || p.path === null || p.path === '' ? (rawType === 'ImplementationSpecific' ? '/' : undefined) : p.path;
        if (typeof path !== 'string') return fail('path is required');
        const pErr = routePathError(path);
        if (pErr !== undefined) return fail(`path ${pErr}`);
        const backend = p.backend?.service;
        const svcName = str(backend?.name);
        if (svcName === undefined) return fail('only service backends are supported (backend.service.name)');
        const svc = svcByKey.get(`${namespace}/${svcName}`);
        if (svc === undefined) return fail(`service ${namespace}/${svcName} is not in the mesh (no such Service, or it has no selector)`);
        const portNum = backend?.port?.number;
        const portName = str(backend?.port?.name);
        const sp = validPort(portNum) ? svc.ports.find((x) => x.port === portNum) : portName !== undefined ? svc.ports.find((x) => x.name === portName) : undefined;
        if (sp === undefined) {
          const asked = validPort(portNum) ? String(portNum) : portName !== undefined ? shown(portName) : '(none)';
          return fail(`service ${namespace}/${svcName} has no port ${asked} (ports: ${svc.ports.map((x) => x.name ?? x.port).join(', ') || 'none resolved'})`);
        }
        if (sp.protocol !== 'http') return fail(`port ${sp.port} of service ${namespace}/${svcName} is ${sp.protocol}; ingress routes need an http port (name it http or http-*, or set appProtocol: http)`);
        const dupKey = `${pathType} ${path}`;
        const first = h.seen.get(dupKey);
        if (first !== undefined) return fail(`duplicate ${pathType} path ${shown(path)} for host ${shown(host)} (already routed by ${first})`);
        h.seen.set(dupKey, `Ingress ${ref}`);
        h.paths.push({ path, pathType, service: `${svcName}.${namespace}`, port: sp.port });
      });
    });
  }

  const out: Route[] = [];
  for (const [host, h] of [...hosts].sort((a, b) => cmp(a[0], b[0]))) {
    if (h.paths.length === 0) continue;
    const secret = tls.get(host)?.secret;
    out.push(secret !== undefined ? { host, paths: h.paths, tlsSecret: secret } : { host, paths: h.paths });
  }
  return out;
}
