/**
 * `ward.yaml` → MeshModel. The file is validated as a whole: every problem is collected (up to a
 * bound) and reported together in one WARD_CONFIG_INVALID error, one `file: path: reason` line per
 * problem, so a user fixes everything in one pass. A model is returned only when there is no
 * problem at all: nothing is ever half-applied.
 *
 * The document:
 *   apiVersion: ward.dev/v1alpha1
 *   kind: Mesh
 *   trustDomain: cluster.local          # optional, default cluster.local
 *   nodes:     [{name, address, zone?}]
 *   workloads: [{name, namespace?, serviceAccount, node, address, ports?, labels?, command?}]
 *   services:  [{name, namespace?, ports: [{name?, port, targetPort?, protocol?}], selector}]
 *   policies:  [AuthorizationPolicy resources, the same YAML as in Kubernetes]
 *   ingress:   {routes: [{host, paths: [{path, pathType?, service: name.namespace, port}]}]}
 * `namespace` defaults to "default", `targetPort` to `port`, `protocol` to http, `pathType` to Prefix.
 */
import { routeHostError, routePathError } from '../core/hostname.js';
import { isIPv4, isIPv6 } from 'node:net';
import { LineCounter, parseDocument, type Document } from 'yaml';
import { WardError } from '../core/errors.js';
import { SpiffeId, trustDomainError } from '../core/identity/index.js';
import { parsePolicies, PolicyInvalidError } from '../core/policy/index.js';
import {
  deepFreeze,
  serviceKey,
  workloadKey,
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

export const WARD_YAML_API_VERSION = 'ward.dev/v1alpha1';
export const WARD_YAML_KIND = 'Mesh';
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
export const DEFAULT_NAMESPACE = 'default';

/**
 * Input bounds. The file is read by a long-running control plane and may be edited by anyone who
 * can write it; these keep one bad edit from costing unbounded memory or CPU.
 */
export const WARD_YAML_LIMITS = Object.freeze({
  maxBytes: 1024 * 1024,
  nodes: 1_000,
  workloads: 10_000,
  services: 10_000,
  policies: 10_000,
  routes: 1_000,
  pathsPerRoute: 100,
  portsPerWorkload: 100,
  portsPerService: 100,
  labels: 64,
  commandArgs: 256,
  commandArgBytes: 4096,
  /** YAML aliases expanded while converting (defuses "billion laughs"). */
  aliases: 100,
  /** Problems kept; the rest are counted. */
  issues: 1_000,
  /** Problems listed in the error message. */
  issuesInMessage: 50,
});

/** One problem in a configuration file. `path` is like `workloads[2].ports[0]`, or `(document)`. */
export interface ConfigIssue {
  readonly file: string;
  readonly path: string;
  readonly reason: string;
  /** 1-based position of the offending (or nearest enclosing) YAML node, when known. */
  readonly line?: number;
  readonly column?: number;
}

/**
 * WARD_CONFIG_INVALID with the structured list of problems (for `ward check --json`, the
 * 'rejected' event, logs). The message lists the first problems as `file: path: reason (line L)`.
 */
export class ConfigInvalidError extends WardError {
  readonly issues: readonly ConfigIssue[];
  /** Total problems found (may exceed issues.length when the bound was hit). */
  readonly total: number;
  constructor(file: string, issues: readonly ConfigIssue[], total = issues.length) {
    super('WARD_CONFIG_INVALID', formatIssues(file, issues, total));
    this.name = 'ConfigInvalidError';
    this.issues = deepFreeze([...issues]);
    this.total = total;
  }
}

export function formatIssue(i: ConfigIssue): string {
  if (i.path === '') return `${i.file}:${i.line ?? 0}:${i.column ?? 0}: ${i.reason}`;
  const where = i.line !== undefined ? ` (line ${i.line})` : '';
  return `${i.file}: ${i.path}: ${i.reason}${where}`;
}

function formatIssues(file: string, issues: readonly ConfigIssue[], total: number): string {
  const shown = issues.slice(0, WARD_YAML_LIMITS.issuesInMessage);
  const lines = [`${file}: invalid configuration (${total} ${total === 1 ? 'problem' : 'problems'}):`];
  for (const i of shown) lines.push(`  ${formatIssue(i)}`);
  if (total > shown.length) lines.push(`  … and ${total - shown.length} more`);
  return lines.join('\n');
}

type Seg = string | number;
type Path = readonly Seg[];

function pathText(path: Path): string {
  let s = '';
  for (const seg of path) s += typeof seg === 'number' ? `[${seg}]` : s === '' ? seg : `.${seg}`;
  return s === '' ? '(document)' : s;
}

/** Collects problems; positions are resolved only for the ones kept. */
class Problems {
  readonly list: { path: Path; reason: string }[] = [];
  total = 0;
  add(path: Path, reason: string): void {
    this.total++;
    if (this.list.length < WARD_YAML_LIMITS.issues) this.list.push({ path, reason });
  }
}

// ---------------------------------------------------------------------------------------------
// Small value checkers. Each reports at `path` and returns undefined when the value is unusable.

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const DNS_SUBDOMAIN_MAX = 253;

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v)}`;
  return `${typeof v} ${String(v)}`;
}

function shown(v: string): string {
  return JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v);
}

function dnsLabelError(v: string): string | undefined {
  if (v.length === 0) return 'must not be empty';
  if (v.length > 63) return `${shown(v)} is longer than 63 characters`;
  if (!DNS_LABEL.test(v)) {
    return `${shown(v)} is not a DNS-1123 label (lowercase letters, digits and "-", starting and ending with a letter or digit)`;
  }
  return undefined;
}

function dnsSubdomainError(v: string): string | undefined {
  if (v.length > DNS_SUBDOMAIN_MAX) return `is longer than ${DNS_SUBDOMAIN_MAX} characters`;
  for (const part of v.split('.')) if (dnsLabelError(part) !== undefined) return `${shown(v)} is not a DNS-1123 subdomain`;
  return undefined;
}

function labelKeyError(k: string): string | undefined {
  const slash = k.lastIndexOf('/');
  const prefix = slash === -1 ? undefined : k.slice(0, slash);
  const name = slash === -1 ? k : k.slice(slash + 1);
  if (prefix !== undefined && dnsSubdomainError(prefix) !== undefined) {
    return `label key ${shown(k)}: the prefix must be a DNS-1123 subdomain`;
  }
  if (!LABEL_NAME.test(name)) {
    return `label key ${shown(k)}: the name must be 1-63 characters of letters, digits, "-", "_" and ".", starting and ending with a letter or digit`;
  }
  return undefined;
}

function labelValueError(v: string): string | undefined {
  if (v === '' || LABEL_NAME.test(v)) return undefined;
  return `label value ${shown(v)} must be empty or 1-63 characters of letters, digits, "-", "_" and ".", starting and ending with a letter or digit`;
}

/** Canonical text of an IP (IPv6 compressed, lowercase), or undefined when not an IP. */
function canonicalIp(v: string): string | undefined {
  if (isIPv4(v)) return v;
  if (isIPv6(v) && !v.includes('%')) return new URL(`http://[${v}]/`).hostname.slice(1, -1);
  return undefined;
}

function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1';
}

class Checker {
  constructor(readonly p: Problems) {}

  /**
   * A mapping with only `allowed` keys; missing `required` keys are reported. A key written with
   * no value (null) is reported too, except those in `nullIsEmpty` (lists, where an empty
   * `workloads:` reads naturally as "none"), so checkers below may treat null like "absent".
   */
  mapping(
    v: unknown,
    path: Path,
    allowed: readonly string[],
    required: readonly string[] = [],
    nullIsEmpty: readonly string[] = [],
  ): Record<string, unknown> | undefined {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      this.p.add(path, `must be a mapping, got ${describe(v)}`);
      return undefined;
    }
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) this.p.add([...path, k], `unknown key (expected one of: ${allowed.join(', ')})`);
    }
    for (const k of required) {
      if (!Object.hasOwn(o, k) || o[k] === null || o[k] === undefined) this.p.add([...path, k], 'is required');
    }
    for (const k of Object.keys(o)) {
      if (o[k] === null && allowed.includes(k) && !required.includes(k) && !nullIsEmpty.includes(k)) {
        this.p.add([...path, k], 'has no value (give one, or omit the key)');
      }
    }
    return o;
  }

  list(v: unknown, path: Path, max: number, what: string): unknown[] | undefined {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) {
      this.p.add(path, `must be a list, got ${describe(v)}`);
      return undefined;
    }
    if (v.length > max) {
      this.p.add(path, `has ${v.length} ${what}; at most ${max} are allowed`);
      return undefined;
    }
    return v;
  }

  string(v: unknown, path: Path): string | undefined {
    if (v === undefined || v === null) return undefined; // "is required" is reported by mapping()
    if (typeof v !== 'string') {
      this.p.add(path, `must be a string, got ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  dnsLabel(v: unknown, path: Path): string | undefined {
    const s = this.string(v, path);
    if (s === undefined) return undefined;
    const err = dnsLabelError(s);
    if (err !== undefined) {
      this.p.add(path, err);
      return undefined;
    }
    return s;
  }

  port(v: unknown, path: Path): number | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) {
      this.p.add(path, `must be a port number 1..65535, got ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  labels(v: unknown, path: Path): Record<string, string> | undefined {
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v)) {
      this.p.add(path, `must be a mapping of label key to value, got ${describe(v)}`);
      return undefined;
    }
    const entries = Object.entries(v as Record<string, unknown>);
    if (entries.length > WARD_YAML_LIMITS.labels) {
      this.p.add(path, `has ${entries.length} labels; at most ${WARD_YAML_LIMITS.labels} are allowed`);
      return undefined;
    }
    const out: Record<string, string> = {};
    let ok = true;
    for (const [k, val] of entries) {
      const keyErr = labelKeyError(k);
      if (keyErr !== undefined) {
        this.p.add([...path, k], keyErr);
        ok = false;
        continue;
      }
      if (typeof val !== 'string') {
        this.p.add([...path, k], `must be a string, got ${describe(val)} (quote it)`);
        ok = false;
        continue;
      }
      const valErr = labelValueError(val);
      if (valErr !== undefined) {
        this.p.add([...path, k], valErr);
        ok = false;
        continue;
      }
      out[k] = val;
    }
    return ok ? out : undefined;
  }

  ip(v: unknown, path: Path, loopbackOnly: 'ipv4' | 'any-loopback'): string | undefined {
    const s = this.string(v, path);
    if (s === undefined) return undefined;
    const ip = canonicalIp(s);
    if (ip === undefined) {
      this.p.add(path, `${shown(s)} is not an IP address`);
      return undefined;
    }
    if (loopbackOnly === 'ipv4' && !ip.startsWith('127.')) {
      this.p.add(path, `${shown(s)} must be an IPv4 address in 127.0.0.0/8 (local mode runs every node on this machine)`);
      return undefined;
    }
    if (loopbackOnly === 'any-loopback' && !isLoopback(ip)) {
      this.p.add(path, `${shown(s)} must be a loopback address (127.0.0.0/8 or ::1): local mode runs every workload on this machine`);
      return undefined;
    }
    return ip;
  }
}

// ---------------------------------------------------------------------------------------------

/** Parses and validates `ward.yaml` text; throws ConfigInvalidError (WARD_CONFIG_INVALID) listing every problem. */
export function parseWardYaml(text: string, file: string): MeshModel {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > WARD_YAML_LIMITS.maxBytes) {
    throw new ConfigInvalidError(file, [
      { file, path: '(document)', reason: `file is ${bytes} bytes; at most ${WARD_YAML_LIMITS.maxBytes} (1 MiB) are accepted` },
    ]);
  }
  const lineCounter = new LineCounter();
  let doc: Document.Parsed;
  let data: unknown;
  try {
    doc = parseDocument(text, { prettyErrors: false, lineCounter, uniqueKeys: true, strict: true, merge: false });
  } catch (err) {
    // The parser is recursive: pathological nesting can exhaust the stack. Report, do not crash.
    throw new ConfigInvalidError(file, [{ file, path: '(document)', reason: `cannot parse YAML: ${(err as Error).message}` }]);
  }
  const syntax = [...doc.errors, ...doc.warnings];
  if (syntax.length > 0) {
    const issues = syntax.slice(0, WARD_YAML_LIMITS.issues).map((e): ConfigIssue => {
      const pos = lineCounter.linePos(e.pos[0]);
      return { file, path: '', reason: `YAML: ${e.message}`, line: pos.line, column: pos.col };
    });
    throw new ConfigInvalidError(file, issues, syntax.length);
  }
  try {
    data = doc.toJS({ maxAliasCount: WARD_YAML_LIMITS.aliases });
  } catch (err) {
    throw new ConfigInvalidError(file, [{ file, path: '(document)', reason: `cannot read YAML: ${(err as Error).message}` }]);
  }

  const problems = new Problems();
  const model = buildModel(data, new Checker(problems));
  if (problems.total > 0 || model === undefined) {
    const issues = problems.list.map((p): ConfigIssue => ({ file, path: pathText(p.path), reason: p.reason, ...position(doc, lineCounter, p.path) }));
    if (issues.length === 0) issues.push({ file, path: '(document)', reason: 'BUG: invalid without a reported problem' });
    throw new ConfigInvalidError(file, issues, Math.max(problems.total, issues.length));
  }
  return model;
}

/** Line and column of the YAML node at `path`, or of its nearest existing ancestor. */
function position(doc: Document.Parsed, lc: LineCounter, path: Path): { line?: number; column?: number } {
  for (let n = path.length; n >= 1; n--) {
    let node: unknown;
    try {
      node = doc.getIn(path.slice(0, n), true);
    } catch {
      node = undefined;
    }
    const range = (node as { range?: [number, number, number] } | undefined)?.range;
    if (range !== undefined) {
      const pos = lc.linePos(range[0]);
      return { line: pos.line, column: pos.col };
    }
  }
  return {};
}

const ROOT_KEYS = ['apiVersion', 'kind', 'trustDomain', 'nodes', 'workloads', 'services', 'policies', 'ingress'];

function buildModel(data: unknown, c: Checker): MeshModel | undefined {
  if (data === null || data === undefined) {
    c.p.add([], 'the file is empty; expected a mapping with apiVersion, kind and nodes');
    return undefined;
  }
  const root = c.mapping(data, [], ROOT_KEYS, ['apiVersion', 'kind', 'nodes'], ['workloads', 'services', 'policies', 'ingress']);
  if (root === undefined) return undefined;

  const apiVersion = c.string(root.apiVersion, ['apiVersion']);
  if (apiVersion !== undefined && apiVersion !== WARD_YAML_API_VERSION) {
    c.p.add(['apiVersion'], `must be ${JSON.stringify(WARD_YAML_API_VERSION)}, got ${shown(apiVersion)}`);
  }
  const kind = c.string(root.kind, ['kind']);
  if (kind !== undefined && kind !== WARD_YAML_KIND) c.p.add(['kind'], `must be ${JSON.stringify(WARD_YAML_KIND)}, got ${shown(kind)}`);

  let trustDomain: string | undefined = DEFAULT_TRUST_DOMAIN;
  if (Object.hasOwn(root, 'trustDomain')) {
    trustDomain = c.string(root.trustDomain, ['trustDomain']);
    const err = trustDomain === undefined ? undefined : trustDomainError(trustDomain);
    if (err !== undefined) {
      c.p.add(['trustDomain'], `${shown(trustDomain as string)}: ${err}`);
      trustDomain = undefined;
    }
  }

  const nodes = buildNodes(root.nodes, c);
  const workloads = buildWorkloads(root.workloads, c, trustDomain, nodes);
  const services = buildServices(root.services, c, workloads);
  const policies = validatePolicies(root.policies, c);
  const routes = buildRoutes(root.ingress, c, services);

  if (c.p.total > 0 || trustDomain === undefined) return undefined;
  return deepFreeze({
    trustDomain,
    nodes: nodes.list,
    workloads: workloads.list,
    services: services.list,
    policies,
    routes,
  });
}

interface Built<T> {
  list: T[];
  /** Whether the list is complete (no entry was dropped for being invalid): cross-checks against
   *  an incomplete list would report follow-on errors ("node does not exist") that are noise. */
  complete: boolean;
}

function buildNodes(v: unknown, c: Checker): Built<MeshNode> & { byName: Map<string, MeshNode> } {
  const out = { list: [] as MeshNode[], complete: true, byName: new Map<string, MeshNode>() };
  const items = c.list(v, ['nodes'], WARD_YAML_LIMITS.nodes, 'nodes');
  if (items === undefined) return { ...out, complete: false };
  if (items.length === 0 && v !== undefined && v !== null) c.p.add(['nodes'], 'must declare at least one node');
  const addresses = new Map<string, number>();
  items.forEach((item, i) => {
    const path = ['nodes', i];
    const o = c.mapping(item, path, ['name', 'address', 'zone'], ['name', 'address']);
    if (o === undefined) return void (out.complete = false);
    const name = c.dnsLabel(o.name, [...path, 'name']);
    const address = c.ip(o.address, [...path, 'address'], 'ipv4');
    const zone = o.zone === undefined ? undefined : c.dnsLabel(o.zone, [...path, 'zone']);
    if (name !== undefined && out.byName.has(name)) {
      c.p.add([...path, 'name'], `duplicate node name ${shown(name)} (also nodes[${out.list.findIndex((n) => n.name === name)}])`);
      return;
    }
    if (address !== undefined) {
      const other = addresses.get(address);
      if (other !== undefined) c.p.add([...path, 'address'], `address ${address} is already used by nodes[${other}]; each node needs its own`);
      else addresses.set(address, i);
    }
    if (name === undefined || address === undefined || (o.zone !== undefined && zone === undefined)) return void (out.complete = false);
    const node: MeshNode = zone === undefined ? { name, address } : { name, address, zone };
    out.list.push(node);
    out.byName.set(name, node);
  });
  return out;
}

function buildWorkloads(
  v: unknown,
  c: Checker,
  trustDomain: string | undefined,
  nodes: Built<MeshNode> & { byName: Map<string, MeshNode> },
): Built<Workload> {
  const out: Built<Workload> = { list: [], complete: true };
  const items = c.list(v, ['workloads'], WARD_YAML_LIMITS.workloads, 'workloads');
  if (items === undefined) return { ...out, complete: false };
  const names = new Map<string, number>();
  const endpoints = new Map<string, string>(); // address:port → "workloads[i].ports[j]"
  items.forEach((item, i) => {
    const path = ['workloads', i];
    const o = c.mapping(item, path, ['name', 'namespace', 'serviceAccount', 'node', 'address', 'ports', 'labels', 'command'], [
      'name',
      'serviceAccount',
      'node',
      'address',
    ]);
    if (o === undefined) return void (out.complete = false);
    const name = c.dnsLabel(o.name, [...path, 'name']);
    const namespace = o.namespace === undefined ? DEFAULT_NAMESPACE : c.dnsLabel(o.namespace, [...path, 'namespace']);
    const serviceAccount = c.dnsLabel(o.serviceAccount, [...path, 'serviceAccount']);
    const nodeName = c.dnsLabel(o.node, [...path, 'node']);
    if (nodeName !== undefined && !nodes.byName.has(nodeName) && nodes.complete) {
      const known = [...nodes.byName.keys()];
      c.p.add([...path, 'node'], `node ${shown(nodeName)} is not declared in nodes (declared: ${known.length > 0 ? known.join(', ') : 'none'})`);
    }
    const address = c.ip(o.address, [...path, 'address'], 'any-loopback');
    const labels = c.labels(o.labels, [...path, 'labels']);
    let complete = true;

    const ports: number[] = [];
    const rawPorts = c.list(o.ports, [...path, 'ports'], WARD_YAML_LIMITS.portsPerWorkload, 'ports');
    if (rawPorts === undefined) complete = false;
    rawPorts?.forEach((rp, j) => {
      const portPath = [...path, 'ports', j];
      const port = c.port(rp, portPath);
      if (port === undefined) {
        if (rp === null) c.p.add(portPath, 'must be a port number 1..65535, got null');
        complete = false;
        return;
      }
      if (ports.includes(port)) {
        c.p.add(portPath, `duplicate port ${port} (also ports[${ports.indexOf(port)}])`);
        complete = false;
        return;
      }
      ports.push(port);
      if (address !== undefined) {
        const key = address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
        const other = endpoints.get(key);
        if (other !== undefined) c.p.add(portPath, `${key} is already taken by ${other}; two workloads cannot listen on the same address and port`);
        else endpoints.set(key, pathText(portPath));
      }
    });

    let command: string[] | undefined;
    if (o.command !== undefined) {
      const raw = c.list(o.command, [...path, 'command'], WARD_YAML_LIMITS.commandArgs, 'arguments');
      if (raw !== undefined && raw.length === 0) c.p.add([...path, 'command'], 'must not be empty when given (omit it instead)');
      command = [];
      raw?.forEach((arg, j) => {
        const s = c.string(arg, [...path, 'command', j]);
        if (arg === null) c.p.add([...path, 'command', j], 'must be a string, got null');
        else if (s !== undefined && Buffer.byteLength(s) > WARD_YAML_LIMITS.commandArgBytes) {
          c.p.add([...path, 'command', j], `is longer than ${WARD_YAML_LIMITS.commandArgBytes} bytes`);
        } else if (s !== undefined && s.includes('\0')) c.p.add([...path, 'command', j], 'must not contain a NUL character');
        if (s !== undefined) command!.push(s);
      });
    }

    if (name !== undefined && namespace !== undefined) {
      const key = `${namespace}/${name}`;
      const other = names.get(key);
      if (other !== undefined) {
        c.p.add([...path, 'name'], `duplicate workload ${shown(name)} in namespace ${shown(namespace)} (also workloads[${other}])`);
        complete = false;
      } else {
        names.set(key, i);
      }
    }
    if (
      !complete ||
      name === undefined ||
      namespace === undefined ||
      serviceAccount === undefined ||
      nodeName === undefined ||
      address === undefined ||
      labels === undefined ||
      trustDomain === undefined
    ) {
      out.complete = false;
      return;
    }
    const identity = SpiffeId.workload(trustDomain, namespace, serviceAccount).toString();
    const w: Workload = {
      name,
      namespace,
      serviceAccount,
      node: nodeName,
      address,
      ports: [...ports].sort((a, b) => a - b),
      labels,
      ...(command !== undefined ? { command } : {}),
      identity,
    };
    out.list.push(w);
  });
  return out;
}

const PROTOCOLS: readonly ServiceProtocol[] = ['http', 'tcp'];

function buildServices(v: unknown, c: Checker, workloads: Built<Workload>): Built<Service> & { byKey: Map<string, Service> } {
  const out = { list: [] as Service[], complete: true, byKey: new Map<string, Service>() };
  const items = c.list(v, ['services'], WARD_YAML_LIMITS.services, 'services');
  if (items === undefined) return { ...out, complete: false };

  // Workloads by namespace and label pair, so checking N services against M workloads costs about
  // N × (workloads sharing the rarest selector pair), not N × M.
  const byPair = new Map<string, Workload[]>();
  for (const w of workloads.list) {
    for (const [k, val] of Object.entries(w.labels)) {
      const key = `${w.namespace}\0${k}\0${val}`;
      let list = byPair.get(key);
      if (list === undefined) byPair.set(key, (list = []));
      list.push(w);
    }
  }

  items.forEach((item, i) => {
    const path = ['services', i];
    const o = c.mapping(item, path, ['name', 'namespace', 'ports', 'selector'], ['name', 'ports', 'selector']);
    if (o === undefined) return void (out.complete = false);
    const name = c.dnsLabel(o.name, [...path, 'name']);
    const namespace = o.namespace === undefined ? DEFAULT_NAMESPACE : c.dnsLabel(o.namespace, [...path, 'namespace']);
    let complete = true;

    let selector: Record<string, string> | undefined;
    if (o.selector !== undefined && o.selector !== null) {
      selector = c.labels(o.selector, [...path, 'selector']);
      if (selector !== undefined && Object.keys(selector).length === 0) {
        c.p.add([...path, 'selector'], 'must not be empty (an empty selector would select nothing; Ward does not guess)');
        selector = undefined;
      }
    }

    // Selected workloads, for the targetPort check below.
    let selected: Workload[] | undefined;
    if (selector !== undefined && namespace !== undefined && workloads.complete) {
      let best: Workload[] | undefined;
      for (const [k, val] of Object.entries(selector)) {
        const list = byPair.get(`${namespace}\0${k}\0${val}`) ?? [];
        if (best === undefined || list.length < best.length) best = list;
      }
      selected = (best ?? []).filter((w) => Object.entries(selector!).every(([k, val]) => w.labels[k] === val));
    }

    const ports: ServicePort[] = [];
    const raw = o.ports === undefined || o.ports === null ? undefined : c.list(o.ports, [...path, 'ports'], WARD_YAML_LIMITS.portsPerService, 'ports');
    if (raw !== undefined && raw.length === 0) c.p.add([...path, 'ports'], 'must declare at least one port');
    if (raw === undefined) complete = false;
    const portNames = new Map<string, number>();
    raw?.forEach((rp, j) => {
      const pp = [...path, 'ports', j];
      const po = c.mapping(rp, pp, ['name', 'port', 'targetPort', 'protocol'], ['port']);
      if (po === undefined) return void (complete = false);
      const pname = po.name === undefined ? undefined : c.dnsLabel(po.name, [...pp, 'name']);
      const port = c.port(po.port, [...pp, 'port']);
      const targetPort = po.targetPort === undefined ? port : c.port(po.targetPort, [...pp, 'targetPort']);
      let protocol: ServiceProtocol | undefined = 'http';
      if (po.protocol !== undefined) {
        const s = c.string(po.protocol, [...pp, 'protocol']);
        protocol = PROTOCOLS.find((p) => p === s);
        if (s !== undefined && protocol === undefined) c.p.add([...pp, 'protocol'], `must be one of http, tcp; got ${shown(s)}`);
      }
      if (pname !== undefined) {
        const other = portNames.get(pname);
        if (other !== undefined) c.p.add([...pp, 'name'], `duplicate port name ${shown(pname)} (also ports[${other}])`);
        else portNames.set(pname, j);
      }
      if (port !== undefined) {
        const other = ports.findIndex((p) => p.port === port);
        if (other !== -1) {
          c.p.add([...pp, 'port'], `duplicate port ${port} (also ports[${other}])`);
          complete = false;
          return;
        }
      }
      if (targetPort !== undefined && selected !== undefined) {
        const missing = selected.filter((w) => !w.ports.includes(targetPort));
        if (missing.length > 0) {
          const more = missing.length > 1 ? ` (and ${missing.length - 1} more)` : '';
          c.p.add(
            [...pp, po.targetPort === undefined ? 'port' : 'targetPort'],
            `workload ${workloadKey(missing[0])}${more} selected by this service does not declare port ${targetPort}`,
          );
        }
      }
      if (port === undefined || targetPort === undefined || protocol === undefined || (po.name !== undefined && pname === undefined)) {
        complete = false;
        return;
      }
      ports.push(pname === undefined ? { port, targetPort, protocol } : { name: pname, port, targetPort, protocol });
    });

    if (name === undefined || namespace === undefined || selector === undefined || !complete) {
      out.complete = false;
      return;
    }
    const key = serviceKey({ name, namespace });
    if (out.byKey.has(key)) {
      const other = out.list.findIndex((s) => serviceKey(s) === key);
      c.p.add([...path, 'name'], `duplicate service ${shown(name)} in namespace ${shown(namespace)} (also services[${other}])`);
      out.complete = false;
      return;
    }
    const svc: Service = { name, namespace, ports, selector };
    out.list.push(svc);
    out.byKey.set(key, svc);
  });
  return out;
}

/**
 * The `policies` list, validated by core/policy (the same parser the Kubernetes source and `ward
 * policy explain` use). Its problems are merged into this file's list, with positions.
 */
function validatePolicies(v: unknown, c: Checker): PolicyResource[] {
  const items = c.list(v, ['policies'], WARD_YAML_LIMITS.policies, 'policies');
  if (items === undefined) return [];
  try {
    return [...parsePolicies(items, 'policies')];
  } catch (err) {
    if (!(err instanceof PolicyInvalidError)) throw err;
    for (const p of err.problems) c.p.add(parsePathText(p.path), p.reason);
    return [];
  }
}

/** `policies[0].spec.rules[1]` → ['policies', 0, 'spec', 'rules', 1] (for positions only). */
function parsePathText(text: string): Path {
  const out: Seg[] = [];
  for (const m of text.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[2] !== undefined ? Number(m[2]) : m[1]);
  return out;
}

const PATH_TYPES: readonly RoutePath['pathType'][] = ['Exact', 'Prefix'];

/** Route hosts: the one rule set the ingress applies too (core/hostname). */
const hostError = routeHostError;


function buildRoutes(v: unknown, c: Checker, services: Built<Service> & { byKey: Map<string, Service> }): Route[] {
  const out: Route[] = [];
  if (v === undefined || v === null) return out;
  const ingress = c.mapping(v, ['ingress'], ['routes'], [], ['routes']);
  if (ingress === undefined) return out;
  const items = c.list(ingress.routes, ['ingress', 'routes'], WARD_YAML_LIMITS.routes, 'routes');
  if (items === undefined) return out;
  const hosts = new Map<string, number>();
  items.forEach((item, i) => {
    const path = ['ingress', 'routes', i];
    const o = c.mapping(item, path, ['host', 'paths'], ['host', 'paths']);
    if (o === undefined) return;
    let host = c.string(o.host, [...path, 'host']);
    const hErr = host === undefined ? undefined : hostError(host);
    if (hErr !== undefined) {
      c.p.add([...path, 'host'], hErr);
      host = undefined;
    }
    if (host !== undefined) {
      const other = hosts.get(host);
      if (other !== undefined) c.p.add([...path, 'host'], `duplicate host ${shown(host)} (also ingress.routes[${other}]); list all its paths in one route`);
      else hosts.set(host, i);
    }
    const rawPaths = o.paths === undefined || o.paths === null ? undefined : c.list(o.paths, [...path, 'paths'], WARD_YAML_LIMITS.pathsPerRoute, 'paths');
    if (rawPaths !== undefined && rawPaths.length === 0) c.p.add([...path, 'paths'], 'must list at least one path');
    const paths: RoutePath[] = [];
    rawPaths?.forEach((rp, j) => {
      const pp = [...path, 'paths', j];
      const po = c.mapping(rp, pp, ['path', 'pathType', 'service', 'port'], ['path', 'service', 'port']);
      if (po === undefined) return;
      let p = c.string(po.path, [...pp, 'path']);
      const pErr = p === undefined ? undefined : routePathError(p);
      if (pErr !== undefined) {
        c.p.add([...pp, 'path'], pErr);
        p = undefined;
      }
      let pathType: RoutePath['pathType'] | undefined = 'Prefix';
      if (po.pathType !== undefined) {
        const s = c.string(po.pathType, [...pp, 'pathType']);
        pathType = PATH_TYPES.find((t) => t === s);
        if (s !== undefined && pathType === undefined) c.p.add([...pp, 'pathType'], `must be Exact or Prefix; got ${shown(s)}`);
      }
      const port = c.port(po.port, [...pp, 'port']);
      const svcRef = c.string(po.service, [...pp, 'service']);
      let service: string | undefined;
      if (svcRef !== undefined) {
        const dot = svcRef.indexOf('.');
        const name = dot === -1 ? svcRef : svcRef.slice(0, dot);
        const ns = dot === -1 ? '' : svcRef.slice(dot + 1);
        if (dot === -1 || dnsLabelError(name) !== undefined || dnsLabelError(ns) !== undefined) {
          c.p.add([...pp, 'service'], `${shown(svcRef)} must be "<service>.<namespace>" (e.g. web.shop)`);
        } else {
          const svc = services.byKey.get(`${ns}/${name}`);
          if (svc === undefined) {
            if (services.complete) c.p.add([...pp, 'service'], `service ${shown(svcRef)} is not declared in services`);
          } else if (port !== undefined) {
            const sp = svc.ports.find((x) => x.port === port);
            if (sp === undefined) {
              c.p.add([...pp, 'port'], `service ${svcRef} does not expose port ${port} (it exposes ${svc.ports.map((x) => x.port).join(', ')})`);
            } else if (sp.protocol !== 'http') {
              c.p.add([...pp, 'port'], `port ${port} of service ${svcRef} is ${sp.protocol}; ingress routes need an http port`);
            } else {
              service = `${name}.${ns}`;
            }
          }
        }
      }
      if (p !== undefined && pathType !== undefined) {
        const other = paths.findIndex((x) => x.path === p && x.pathType === pathType);
        if (other !== -1) {
          c.p.add([...pp, 'path'], `duplicate ${pathType} path ${shown(p)} (also paths[${other}])`);
          return;
        }
      }
      if (p === undefined || pathType === undefined || port === undefined || service === undefined) return;
      paths.push({ path: p, pathType, service, port });
    });
    if (host !== undefined) out.push({ host, paths });
  });
  return out;
}
