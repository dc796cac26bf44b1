/**
 * `ward policy explain` (DESIGN.md §6): would this request be allowed or denied, by which policy and
 * rule — decided by the same PolicyEngine the node proxies run, on the same normalized request,
 * offline from ward.yaml or live from the control plane's admin endpoint (GET /v1/policies).
 *
 * Faithful to proxy/inbound.ts, which is the enforcement point:
 * - policies select by SERVICE and their `ports` are service ports, but a request arrives at a
 *   workload's TARGET port, and the inbound proxy allows it only when every (service, port) mapping
 *   to that target port on that workload allows it. So the named service+port is decided first,
 *   then every other service port reaching the same target port on the same workloads;
 * - the path is normalized once by normalizeRequest, and what it refuses the proxy answers with 400
 *   before any policy is consulted;
 * - a client certificate of another trust domain never gets past the inbound TLS handshake.
 */
import { readFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { WardError, isWardError } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import {
  PolicyEngine,
  normalizeRequest,
  policyRef,
  type AuditMatch,
  type AuthorizationPolicy,
  type Decision,
  type DecisionReason,
  type DefaultMode,
  type NormalizeFailure,
  type PolicyRef,
  type RequestProtocol,
} from '../core/policy/index.js';
import { EXAMPLE_WARD_YAML, parseWardYaml, selectorMatches, workloadKey, type MeshModel, type ServicePort, type Workload } from '../discovery/index.js';
import { EXIT_OK, EXIT_PROBLEM, JSON_FLAG, flag, optional, required, writeJson, type Command } from './command.js';
import { DEFAULT_STATUS_SERVER, fetchAdminJson } from './status.js';

/** The read-only admin route of `ward control` serving a PolicySnapshot. */
export const POLICIES_PATH = '/v1/policies';
const DEFAULT_CONFIG = 'ward.yaml';
const MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024;

/** A service as `policy explain` needs it: its ports and the workloads its selector matches. */
export interface SnapshotService {
  readonly name: string;
  readonly namespace: string;
  readonly ports: readonly ServicePort[];
  /** `namespace/name` of every workload the selector matches, sorted. */
  readonly workloads: readonly string[];
}

/** What GET /v1/policies answers: everything an authorization decision depends on, nothing else. */
export interface PolicySnapshot {
  readonly trustDomain: string;
  /** The discovery version the snapshot was taken at (live only). */
  readonly version?: number;
  readonly policies: readonly AuthorizationPolicy[];
  readonly services: readonly SnapshotService[];
}

// Models are immutable: the snapshot of one is computed once (the admin route may be polled).
const SNAPSHOTS = new WeakMap<MeshModel, PolicySnapshot>();

/** The policies and services of a model (workload labels, addresses and commands stay out). */
export function policySnapshot(model: MeshModel, version?: number): PolicySnapshot {
  let s = SNAPSHOTS.get(model);
  if (s === undefined) {
    const byNamespace = new Map<string, Workload[]>();
    for (const w of model.workloads) {
      const list = byNamespace.get(w.namespace);
      if (list) list.push(w);
      else byNamespace.set(w.namespace, [w]);
    }
    const services = model.services.map((svc) => ({
      name: svc.name,
      namespace: svc.namespace,
      ports: svc.ports,
      workloads: (byNamespace.get(svc.namespace) ?? [])
        .filter((w) => selectorMatches(svc.selector, w.labels))
        .map(workloadKey)
        .sort(),
    }));
    s = { trustDomain: model.trustDomain, policies: model.policies, services };
    SNAPSHOTS.set(model, s);
  }
  return version === undefined ? s : { trustDomain: s.trustDomain, version, policies: s.policies, services: s.services };
}

// ---- where the policies come from ------------------------------------------------------------

interface Loaded {
  snapshot: PolicySnapshot;
  /** For people: "ward.yaml", "the built-in example mesh", "http://127.0.0.1:9443 (version 7)". */
  label: string;
  /** For --json: the file, "built-in example" or the server URL. */
  from: string;
}

async function loadOffline(config: string | undefined): Promise<Loaded> {
  let text: string;
  let file = config ?? DEFAULT_CONFIG;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (config !== undefined || code !== 'ENOENT') {
      throw new WardError('WARD_CONFIG_INVALID', `cannot read ${file}: ${code ?? (err as Error).message}`, { cause: err });
    }
    text = EXAMPLE_WARD_YAML;
    file = '';
  }
  if (file === '') {
    const model = parseWardYaml(text, 'built-in example');
    return { snapshot: policySnapshot(model), label: `the built-in example mesh (no ./${DEFAULT_CONFIG}; "ward init" writes it)`, from: 'built-in example' };
  }
  return { snapshot: policySnapshot(parseWardYaml(text, file)), label: file, from: file };
}

async function loadLive(server: string): Promise<Loaded> {
  const { url, body } = await fetchAdminJson(server, POLICIES_PATH, {
    maxBytes: MAX_SNAPSHOT_BYTES,
    notFound: `${server} serves no ${POLICIES_PATH}: it is not the admin address of "ward control" (a bare "ward ca serve" runs no discovery pool). Use --config ward.yaml to explain offline.`,
  });
  if (!isSnapshot(body)) throw new WardError('WARD_CA_UNREACHABLE', `${url} answered a body this version of ward does not understand`);
  const version = body.version === undefined ? '' : ` (discovery version ${body.version})`;
  return { snapshot: body, label: `the control plane at ${server}${version}`, from: server };
}

/** Shape check only: the policies themselves are validated by the PolicyEngine constructor. */
function isSnapshot(b: unknown): b is PolicySnapshot {
  const s = b as { trustDomain?: unknown; policies?: unknown; services?: unknown } | null;
  if (typeof s !== 'object' || s === null || typeof s.trustDomain !== 'string' || !Array.isArray(s.policies) || !Array.isArray(s.services)) return false;
  return (s.services as unknown[]).every((x) => {
    const svc = x as { name?: unknown; namespace?: unknown; workloads?: unknown; ports?: unknown } | null;
    return (
      typeof svc?.name === 'string' &&
      typeof svc.namespace === 'string' &&
      Array.isArray(svc.workloads) &&
      (svc.workloads as unknown[]).every((w) => typeof w === 'string') &&
      Array.isArray(svc.ports) &&
      (svc.ports as { port?: unknown; targetPort?: unknown; protocol?: unknown }[]).every(
        (p) => Number.isInteger(p?.port) && Number.isInteger(p.targetPort) && (p.protocol === 'http' || p.protocol === 'tcp'),
      )
    );
  });
}

// ---- the question --------------------------------------------------------------------------

/** `spiffe://…`, or `namespace/serviceAccount` = that workload identity of the mesh trust domain. */
export function parseSource(text: string, trustDomain: string): SpiffeId {
  const hint = `--from wants a SPIFFE ID (spiffe://${trustDomain}/ns/NAMESPACE/sa/SERVICE_ACCOUNT) or NAMESPACE/SERVICE_ACCOUNT`;
  let id: SpiffeId;
  try {
    if (text.includes('://')) {
      id = SpiffeId.parse(text);
    } else {
      const parts = text.split('/');
      if (parts.length !== 2 || parts[0] === '' || parts[1] === '') throw new WardError('WARD_USAGE', `${hint}, got "${text}"`);
      id = SpiffeId.workload(trustDomain, parts[0], parts[1]);
    }
  } catch (err) {
    if (isWardError(err, 'WARD_USAGE')) throw err;
    throw new WardError('WARD_USAGE', `${hint}: ${(err as Error).message}`);
  }
  if (id.path === '') throw new WardError('WARD_USAGE', `${hint}: ${id} names a trust domain, not a workload`);
  return id;
}

function serviceList(services: readonly SnapshotService[]): string {
  if (services.length === 0) return 'the mesh declares no service';
  const names = services.map((s) => `${s.name}.${s.namespace}`).sort();
  return `services: ${names.slice(0, 20).join(', ')}${names.length > 20 ? `, … (${names.length} in all)` : ''}`;
}

function portList(svc: SnapshotService): string {
  return svc.ports.map((p) => `${p.port}/${p.protocol}${p.name ? ` "${p.name}"` : ''}`).join(', ');
}

/**
 * `service.namespace[:port]`, also `service.namespace.svc[.<cluster domain>]`, as clients name it.
 * The port is the SERVICE port (what policies name); a service with one port needs none.
 */
export function resolveDestination(text: string, snapshot: PolicySnapshot): { service: SnapshotService; port: ServicePort } {
  const m = /^([^:]+)(?::([0-9]{1,5}))?$/.exec(text);
  const labels = m ? m[1].toLowerCase().replace(/\.$/, '').split('.') : [];
  if (!m || labels.length < 2 || (labels.length > 2 && labels[2] !== 'svc') || labels.some((l) => l === '')) {
    throw new WardError('WARD_USAGE', `--to wants SERVICE.NAMESPACE[:PORT] (or SERVICE.NAMESPACE.svc.cluster.local[:PORT]), got "${text}"`);
  }
  const [name, namespace] = labels;
  const service = snapshot.services.find((s) => s.name === name && s.namespace === namespace);
  if (!service) throw new WardError('WARD_USAGE', `no service ${name}.${namespace} in the mesh (${serviceList(snapshot.services)})`);
  if (m[2] === undefined) {
    if (service.ports.length === 1) return { service, port: service.ports[0] };
    throw new WardError('WARD_USAGE', `${name}.${namespace} has several ports: name one (${name}.${namespace}:PORT) of ${portList(service)}`);
  }
  const wanted = Number(m[2]);
  const port = service.ports.find((p) => p.port === wanted);
  if (port) return { service, port };
  const byTarget = service.ports.find((p) => p.targetPort === wanted);
  const hint = byTarget ? `; ${wanted} is the target port of service port ${byTarget.port} (policies and --to use service ports)` : '';
  throw new WardError('WARD_USAGE', `${name}.${namespace} has no port ${wanted} (ports: ${portList(service)})${hint}`);
}

// ---- the answer -----------------------------------------------------------------------------

/** One (service, service port) the inbound proxy checks, and the engine's decision for it. */
export interface TargetDecision extends Decision {
  readonly service: string;
  readonly namespace: string;
  readonly port: number;
  /** The destination workloads on which this (service, port) reaches the target port. */
  readonly workloads: readonly string[];
}

export type ExplainReason = DecisionReason | 'request-refused' | 'foreign-trust-domain';

export interface Explanation {
  readonly allowed: boolean;
  readonly reason: ExplainReason;
  readonly policy?: PolicyRef;
  readonly rule?: number;
  readonly candidates?: readonly PolicyRef[];
  readonly audit?: readonly AuditMatch[];
  /** request-refused: why normalizeRequest refused it (the proxy answers 400). */
  readonly refused?: NormalizeFailure;
  readonly request: {
    readonly source: string;
    readonly service: string;
    readonly namespace: string;
    readonly port: number;
    readonly targetPort: number;
    readonly protocol: RequestProtocol;
    readonly method?: string;
    /** The normalized path (the raw one when the proxy refuses it). */
    readonly path?: string;
    /** The --path given, when normalization changed it (query included). */
    readonly pathGiven?: string;
  };
  /** The (service, port) whose decision this is, when not the one named by --to. */
  readonly decidedBy?: { readonly service: string; readonly namespace: string; readonly port: number };
  /** Every (service, port) the proxy checks, the named one first; empty when the request is refused. */
  readonly targets: readonly TargetDecision[];
  /** When the destination workloads disagree (different services select them). */
  readonly split?: { readonly allowedOn: readonly string[]; readonly deniedOn: readonly string[] };
  readonly defaultPolicy: DefaultMode;
  readonly trustDomain: string;
  readonly policiesFrom: string;
  /** What a reader should know about how the question was read (defaults, normalization, endpoints). */
  readonly notes: readonly string[];
}

export interface ExplainInput {
  readonly snapshot: PolicySnapshot;
  readonly engine: PolicyEngine;
  readonly source: SpiffeId;
  readonly service: SnapshotService;
  readonly port: ServicePort;
  /** Force a raw TCP stream (CONNECT) to an http port. */
  readonly tcp: boolean;
  readonly method?: string;
  readonly path?: string;
  readonly defaultMode: DefaultMode;
  readonly policiesFrom: string;
}

function decisionFields(d: Decision): Decision {
  return {
    allowed: d.allowed,
    reason: d.reason,
    ...(d.policy !== undefined ? { policy: d.policy } : {}),
    ...(d.rule !== undefined ? { rule: d.rule } : {}),
    ...(d.candidates !== undefined ? { candidates: d.candidates } : {}),
    ...(d.audit !== undefined ? { audit: d.audit } : {}),
  };
}

/** Decides like proxy/inbound.ts (see the file header). Pure: no I/O. */
export function explain(i: ExplainInput): Explanation {
  const { snapshot, service, port } = i;
  const notes: string[] = [];
  const protocol: RequestProtocol = i.tcp ? 'tcp' : port.protocol;
  if (protocol === 'tcp' && (i.method !== undefined || i.path !== undefined)) {
    const why = i.tcp ? '--tcp explains a raw TCP stream' : `port ${port.port} of ${service.name}.${service.namespace} is tcp`;
    throw new WardError('WARD_USAGE', `${why}: --method and --path apply to HTTP requests only`);
  }
  let method: string | undefined;
  let rawPath: string | undefined;
  if (protocol === 'http') {
    method = (i.method ?? 'GET').toUpperCase();
    rawPath = i.path ?? '/';
    if (i.method === undefined && i.path === undefined) notes.push(`port ${port.port} is http and no --method/--path was given: explaining GET / (--tcp explains a CONNECT tunnel instead)`);
    else if (i.method === undefined) notes.push('no --method given: explaining GET');
    else if (i.path === undefined) notes.push('no --path given: explaining /');
  } else if (i.tcp) {
    notes.push(`--tcp: explaining a raw TCP stream (CONNECT) to port ${port.port}; HTTP fields in ALLOW rules never match it, in DENY rules they always do`);
  }
  const common = { defaultPolicy: i.defaultMode, trustDomain: snapshot.trustDomain, policiesFrom: i.policiesFrom };
  const baseRequest = { source: i.source.toString(), service: service.name, namespace: service.namespace, port: port.port, targetPort: port.targetPort, protocol };

  const n = normalizeRequest({ protocol, port: port.port, ...(method !== undefined ? { method } : {}), ...(rawPath !== undefined ? { path: rawPath } : {}) });
  if (!n.ok) {
    if (n.reason === 'invalid-method') throw new WardError('WARD_USAGE', `--method wants an HTTP method token such as GET or POST, got "${i.method}"`);
    return {
      allowed: false,
      reason: 'request-refused',
      refused: n.reason,
      request: { ...baseRequest, method, path: rawPath },
      targets: [],
      ...common,
      notes,
    };
  }
  const req = n.request;
  if (rawPath !== undefined && req.path !== rawPath) {
    notes.push(`path ${rawPath} is normalized to ${req.path}, as the node proxy does before deciding and forwarding${req.query !== undefined ? ' (the query is forwarded as is and never used for authorization)' : ''}`);
  }

  // Every (service, port) reaching the same target port on each destination workload, named one first.
  const targetsOf = new Map<string, { service: SnapshotService; port: ServicePort; workloads: string[] }>();
  const keyOf = (s: SnapshotService, p: ServicePort) => `${s.namespace}/${s.name}:${p.port}`;
  targetsOf.set(keyOf(service, port), { service, port, workloads: [] });
  const perWorkload = new Map<string, string[]>();
  for (const w of service.workloads) {
    const keys: string[] = [];
    for (const s of snapshot.services) {
      if (s.namespace !== service.namespace || !s.workloads.includes(w)) continue;
      for (const p of s.ports) {
        if (p.targetPort !== port.targetPort) continue;
        const k = keyOf(s, p);
        let t = targetsOf.get(k);
        if (!t) targetsOf.set(k, (t = { service: s, port: p, workloads: [] }));
        if (!t.workloads.includes(w)) t.workloads.push(w);
        if (!keys.includes(k)) keys.push(k);
      }
    }
    perWorkload.set(w, keys);
  }
  if (service.workloads.length === 0) notes.push(`${service.name}.${service.namespace} selects no workload: a request would find no endpoint (decided as if one existed)`);

  const decided = new Map<string, TargetDecision>();
  for (const [k, t] of targetsOf) {
    const d = i.engine.evaluate(
      { source: i.source, destination: { namespace: t.service.namespace, service: t.service.name }, port: t.port.port, protocol, method: req.method, path: req.path },
      i.defaultMode,
      snapshot.trustDomain,
    );
    decided.set(k, { service: t.service.name, namespace: t.service.namespace, port: t.port.port, workloads: t.workloads, ...decisionFields(d) });
  }
  const targets = [...decided.values()];
  const primary = targets.find((t) => !t.allowed) ?? targets[0];

  const allowedOn: string[] = [];
  const deniedOn: string[] = [];
  for (const [w, keys] of perWorkload) (keys.every((k) => decided.get(k)!.allowed) ? allowedOn : deniedOn).push(w);
  const split = allowedOn.length > 0 && deniedOn.length > 0 ? { allowedOn, deniedOn } : undefined;

  const request = { ...baseRequest, ...(req.method !== undefined ? { method: req.method } : {}), ...(req.path !== undefined ? { path: req.path } : {}), ...(rawPath !== undefined && rawPath !== req.path ? { pathGiven: rawPath } : {}) };
  const decidedBy = primary === targets[0] ? {} : { decidedBy: { service: primary.service, namespace: primary.namespace, port: primary.port } };
  if (i.source.trustDomain !== snapshot.trustDomain) {
    // peerIdentity() refuses a client SVID of another trust domain: no policy is ever consulted.
    notes.push(`by policy alone it would be ${primary.allowed ? 'allowed' : 'denied'} (${primary.reason}${primary.policy ? ` ${primary.policy} rule ${primary.rule}` : ''})`);
    return { allowed: false, reason: 'foreign-trust-domain', request, targets, ...common, notes };
  }
  return { ...decisionFields(primary), request, ...decidedBy, targets, ...(split ? { split } : {}), ...common, notes };
}

// ---- for people ------------------------------------------------------------------------------

function indent(text: string, by: string): string {
  return text
    .trimEnd()
    .split('\n')
    .map((l) => by + l)
    .join('\n');
}

function ruleYaml(snapshot: PolicySnapshot, ref: PolicyRef, rule: number): string | undefined {
  const p = snapshot.policies.find((x) => policyRef(x) === ref);
  const r = p?.spec.rules[rule];
  return r === undefined ? undefined : stringify(r, { lineWidth: 0 });
}

function actionOf(snapshot: PolicySnapshot, ref: PolicyRef): string {
  return snapshot.policies.find((x) => policyRef(x) === ref)?.spec.action ?? '?';
}

/** One line on a decision, e.g. "denied by DENY policy shop/x rule 0". */
function short(d: Decision, snapshot: PolicySnapshot): string {
  switch (d.reason) {
    case 'allow-policy':
    case 'deny-policy':
      return `${d.allowed ? 'allowed' : 'denied'} by ${actionOf(snapshot, d.policy!)} policy ${d.policy} rule ${d.rule}`;
    case 'no-allow-match':
      return `denied: no rule of the ALLOW policies selecting it matches (${(d.candidates ?? []).join(', ')})`;
    case 'default-allow':
      return 'allowed by the mesh default (all-authenticated): no policy selects it';
    case 'default-deny':
      return 'denied by the mesh default: no policy selects it';
    case 'unauthenticated':
      return 'denied: no verified source identity';
  }
}

function why(e: Explanation, d: Decision, svc: string, snapshot: PolicySnapshot): string[] {
  const L: string[] = [];
  switch (d.reason) {
    case 'allow-policy':
    case 'deny-policy': {
      L.push(`${d.allowed ? 'allowed' : 'denied'} by policy ${d.policy}, rule ${d.rule} (${actionOf(snapshot, d.policy!)}):`);
      const y = ruleYaml(snapshot, d.policy!, d.rule!);
      if (y !== undefined) L.push(...indent(y.trim() === '{}' ? '{}  # an empty rule matches every request' : y, '  ').split('\n'));
      break;
    }
    case 'no-allow-match':
      L.push(`denied: ALLOW policies select ${svc} and no rule of theirs matches (once an ALLOW selects a service, only what one of them matches gets in):`);
      for (const c of d.candidates ?? []) L.push(`  ${c}`);
      break;
    case 'default-allow':
      L.push(`allowed by the mesh default: no policy selects ${svc}, and all-authenticated admits any identity of ${e.trustDomain}`);
      break;
    case 'default-deny':
      L.push(
        e.defaultPolicy === 'deny'
          ? `denied by the mesh default: no policy selects ${svc}, and the default policy is deny`
          : `denied by the mesh default: no policy selects ${svc}, and all-authenticated admits only identities of ${e.trustDomain}`,
      );
      break;
    case 'unauthenticated':
      L.push('denied: no verified source identity (every hop is mutual TLS, so nothing admits that)');
      break;
  }
  return L;
}

/** Continuation lines line up under the text after "  why:     ". */
const CONT = ' '.repeat(11);

export function renderExplanation(e: Explanation, snapshot: PolicySnapshot): string {
  const r = e.request;
  const svc = `${r.service}.${r.namespace}`;
  const L: string[] = [e.allowed ? 'ALLOWED' : 'DENIED'];
  const what = r.protocol === 'http' ? `${r.method} ${r.pathGiven ?? r.path}` : 'TCP stream';
  L.push(`  request: ${what} from ${r.source} to ${svc}:${r.port} (${r.protocol}, target port ${r.targetPort})`);
  for (const n of e.notes) L.push(`  note:    ${n}`);
  if (e.reason === 'request-refused') {
    L.push(`  why:     denied: the proxy answers 400 (${e.refused}) before any policy is consulted: it cannot forward this path unambiguously`);
    return L.join('\n') + '\n';
  }
  if (e.reason === 'foreign-trust-domain') {
    const td = r.source.slice('spiffe://'.length).split('/', 1)[0];
    L.push(`  why:     denied: ${td} is not the mesh trust domain ${e.trustDomain}, and the node proxy refuses such a client certificate at the TLS handshake`);
    return L.join('\n') + '\n';
  }
  const primary: Decision = { ...e, reason: e.reason as DecisionReason };
  const decidedSvc = e.decidedBy ? `${e.decidedBy.service}.${e.decidedBy.namespace}` : svc;
  if (e.decidedBy) {
    L.push(`  why:     ${svc}:${r.port} alone allows it, but ${decidedSvc}:${e.decidedBy.port} reaches the same target port ${r.targetPort} on the same workloads, and the proxy requires every such service to allow:`);
    L.push(...why(e, primary, decidedSvc, snapshot).map((l) => `${CONT}${l}`));
  } else {
    const [first, ...rest] = why(e, primary, decidedSvc, snapshot);
    L.push(`  why:     ${first}`, ...rest.map((l) => `${CONT}${l}`));
  }
  for (const a of e.audit ?? []) L.push(`  audit:   matches AUDIT policy ${a.policy} rule ${a.rule} (logged; never changes the decision)`);
  const others = e.targets.filter((t) => !(t.service === r.service && t.namespace === r.namespace && t.port === r.port));
  if (others.length > 0) {
    if (!e.decidedBy) L.push(`  also:    every service port reaching target port ${r.targetPort} on these workloads must allow it too:`);
    else L.push('  checked: every service port reaching the same target port:');
    for (const t of e.targets) {
      L.push(`${CONT}${t.service}.${t.namespace}:${t.port} — ${short(t, snapshot)}${t.audit ? `; AUDIT ${t.audit.map((a) => `${a.policy} rule ${a.rule}`).join(', ')}` : ''}`);
    }
  }
  if (e.split) {
    L.push(`  split:   allowed on ${e.split.allowedOn.join(', ')} but denied on ${e.split.deniedOn.join(', ')}: the answer depends on the endpoint the balancer picks`);
  }
  return L.join('\n') + '\n';
}

// ---- the command -----------------------------------------------------------------------------

const explainCommand: Command = {
  name: 'policy explain',
  summary: 'would a request be allowed? by which policy and rule (the proxies\' engine, offline or live)',
  options: {
    from: { type: 'string' },
    to: { type: 'string' },
    method: { type: 'string' },
    path: { type: 'string' },
    tcp: { type: 'boolean', default: false },
    config: { type: 'string' },
    server: { type: 'string' },
    'default-policy': { type: 'string', default: 'all-authenticated' },
    ...JSON_FLAG,
  },
  help: `Usage: ward policy explain --from ID --to SERVICE.NAMESPACE[:PORT] [--method M] [--path P] [--tcp]
                          [--config ward.yaml | --server URL] [--default-policy MODE] [--json]

Says whether a request would be allowed or denied, and why: the deciding policy (namespace/name)
and rule, printed as YAML, or the default that applied, plus every AUDIT policy it matches. It runs
the same engine as the node proxies on the request normalized the same way, and decides like the
proxy: a workload's target port may be reached through several services, and a request must be
allowed for every (service, port) mapping to it — those are checked and listed too.

Offline it reads ward.yaml (--config, else ./ward.yaml, else the built-in example mesh); live it
asks the control plane (GET ${POLICIES_PATH} on the admin address of "ward control"). Which one was
used is said on standard error.

Flags:
  --from ID              the caller: a SPIFFE ID (spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT), or
                         NAMESPACE/SERVICE_ACCOUNT for that workload identity in the mesh trust domain
                         (shop/web = spiffe://cluster.local/ns/shop/sa/web in the example)
  --to DEST              SERVICE.NAMESPACE[:PORT] (SERVICE.NAMESPACE.svc.cluster.local works too);
                         PORT is the SERVICE port, as policies name it; optional for a one-port service
  --method M             HTTP method (default GET; case-insensitive)
  --path P               HTTP request target (default /), normalized like the proxy does: the
                         normalized form is shown when it differs, and a path the proxy refuses
                         (e.g. %2F, a backslash, NUL) is DENIED with the 400 it would answer
  --tcp                  explain a raw TCP stream (a CONNECT tunnel) even to an http port
                         (tcp ports are always explained that way; --method/--path are http only)
  --config FILE          ward.yaml to read (default ./ward.yaml if it exists, else the built-in example)
  --server URL           ask the running control plane instead: its admin URL (e.g. ${DEFAULT_STATUS_SERVER})
  --default-policy MODE  all-authenticated (default) or deny: the decision when no policy selects
                         the service; say what the node proxies run with (ward proxy --default-policy)
  --json                 print {allowed, reason, policy, rule, candidates, audit, request: {source,
                         service, namespace, port, protocol, method, path}, targets, notes, …}

Reasons: allow-policy, deny-policy, no-allow-match (ALLOW policies select the service and none
matches; they are listed), default-allow, default-deny, unauthenticated, request-refused (the
proxy answers 400 before any policy), foreign-trust-domain (refused at the TLS handshake).

Exit status: 0 allowed, 1 denied (so it can gate a script or CI), 1 also when the configuration
cannot be read or the server cannot be reached (then nothing is printed on standard output),
2 on a usage error — including an ID that is not valid or a service or port the mesh does not have.

Examples:
  ward policy explain --from shop/web --to api.shop:8080 --method GET --path /v1/items
  ward policy explain --from spiffe://cluster.local/ns/shop/sa/api --to web.shop
  ward policy explain --from shop/web --to api.shop --method POST --path /v1/items --json | jq .reason
  ward policy explain --from ops/debug --to db.shop:5432 --server http://127.0.0.1:9443`,
  async run(args, io) {
    const fromText = required(args, 'from');
    const toText = required(args, 'to');
    const mode = String(args.values['default-policy']);
    if (mode !== 'all-authenticated' && mode !== 'deny') throw new WardError('WARD_USAGE', `--default-policy must be all-authenticated or deny, got "${mode}"`);
    const config = optional(args, 'config');
    const server = optional(args, 'server');
    if (config !== undefined && server !== undefined) throw new WardError('WARD_USAGE', '--config and --server are alternatives: explain offline from a file, or live from the control plane');

    const loaded = server !== undefined ? await loadLive(server) : await loadOffline(config);
    io.stderr.write(`ward policy explain: policies from ${loaded.label}\n`);
    const { snapshot } = loaded;
    const source = parseSource(fromText, snapshot.trustDomain);
    const { service, port } = resolveDestination(toText, snapshot);
    const engine = new PolicyEngine(snapshot.policies, loaded.from);
    const e = explain({
      snapshot,
      engine,
      source,
      service,
      port,
      tcp: flag(args, 'tcp'),
      method: optional(args, 'method'),
      path: optional(args, 'path'),
      defaultMode: mode,
      policiesFrom: loaded.from,
    });
    if (flag(args, 'json')) writeJson(io, e);
    else io.stdout.write(renderExplanation(e, snapshot));
    return e.allowed ? EXIT_OK : EXIT_PROBLEM;
  },
};

export const policyCommands: Command[] = [explainCommand];
