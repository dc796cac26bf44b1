/**
 * `ward check`: is the mesh healthy, like `linkerd check`. Everything comes from the admin endpoint
 * of `ward control` (or `ward ca serve`): GET /healthz (can the CA issue?) and GET /v1/status (the CA
 * report at the top level, discovery's MeshStatus under `mesh`). The judging is a pure function of
 * what was read and the time (judgeMesh), so the rules can be tested without a mesh.
 *
 * Thresholds. Two clocks run at very different speeds, so one threshold cannot serve both:
 *   --warn-expiry     leaf certificates (node and workload SVIDs), default 10m. A proxy renews at
 *                     about half-life (40–60 %), so a healthy 1h leaf never has less than ~24m left;
 *                     under 10m means renewal has been failing for a while.
 *   --warn-ca-expiry  roots and intermediates, default 30d (as `ward ca inspect --warn-within`).
 *
 * Exit status: 0 only when every check passed (✓). Any failure (×) or warning (‼) exits 1: DESIGN
 * §9 wants a non-zero status when anything is wrong *or* a certificate is close to expiry, and
 * `ward status` / `ward ca inspect` already exit 1 on the same conditions. Usage errors exit 2.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { systemClock } from '../core/clock.js';
import { isWardError } from '../core/errors.js';
import type { CaReport } from '../ca/index.js';
import type { MeshStatus } from '../discovery/index.js';
import { EXIT_OK, EXIT_PROBLEM, JSON_FLAG, durationFlag, flag, humanDuration, optional, writeJson, type Command } from './command.js';
import { DEFAULT_STATUS_SERVER, fetchAdminStatus, isMeshStatus } from './status.js';

type CaCertReport = CaReport['certificates'][number];

const DEFAULT_WARN_EXPIRY = '10m';
const DEFAULT_WARN_CA_EXPIRY = '30d';
/**
 * A proxy acknowledges a new version within milliseconds of its push; a check that lands between a
 * ward.yaml edit and the ACKs would otherwise fail. So a lagging proxy gets this long (re-reading
 * the status every LAG_POLL_MS) before it counts as behind.
 */
const LAG_GRACE_MS = 2_000;
const LAG_POLL_MS = 250;
/** Names listed in one message before "and N more". */
const MAX_NAMES = 10;
/** The node proxy's admin port (proxy/proxy.ts DEFAULT_ADMIN_PORT; cli does not import proxy internals for a constant). */
const PROXY_ADMIN = 'http://127.0.0.1:15000';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  group: string;
  /** What should hold, e.g. "every node proxy is connected". */
  name: string;
  status: CheckStatus;
  /** What was found (names the nodes, workloads or certificates at fault). */
  message: string;
  /** What to run or look at; present for warn and fail. */
  hint?: string;
}

export interface CheckReport {
  /** No warning and no failure (exit status 0). */
  ok: boolean;
  checks: CheckResult[];
  /** Checks that could not run and why (e.g. a bare CA has no mesh to check). */
  notes: string[];
}

export interface CheckThresholds {
  /** Leaf certificates closer than this to expiry warn. */
  leafWarnMs: number;
  /** Roots and intermediates closer than this to expiry warn. */
  caWarnMs: number;
}

/** ward control's extra beside MeshStatus: how its ward.yaml source fares. */
interface ConfigState {
  file?: string;
  lastError?: string;
  appliedAt?: string;
  rejectedAt?: string;
}

/** What was read from the admin endpoint. */
export interface Observed {
  server: string;
  /** Set when the admin endpoint could not be read; nothing else is known then. */
  unreachable?: string;
  report?: CaReport;
  /** GET /healthz: the CA can issue, or why not. */
  health?: { ok: boolean; reason?: string };
  /** Absent for a bare CA (`ward ca serve`). */
  mesh?: MeshStatus & { config?: ConfigState; kubernetes?: KubeState };
  /** `mesh` was present but not in a form this version understands. */
  meshUnreadable?: boolean;
}

/** What `ward control --kube` reports under mesh.kubernetes (discovery KubeSource.status()). */
interface KubeState {
  synced?: boolean;
  problems?: number;
  informers?: { resource: string; state: string; synced: boolean; restarts: number; lastError?: { message: string } }[];
}

const G_CONTROL = 'control plane';
const G_CA = 'certificate authority';
const G_PROXIES = 'node proxies';
const G_WORKLOADS = 'workloads';
const G_SERVICES = 'services';

/** The checks, from what was read at `now`. */
export function judgeMesh(o: Observed, now: number, t: CheckThresholds): CheckReport {
  const checks: CheckResult[] = [];
  const notes: string[] = [];
  const add = (group: string, name: string, status: CheckStatus, message: string, hint?: string) =>
    checks.push({ group, name, status, message, ...(status !== 'ok' && hint !== undefined ? { hint } : {}) });

  if (o.unreachable !== undefined || o.report === undefined) {
    add(
      G_CONTROL,
      'the control plane admin endpoint is reachable',
      'fail',
      o.unreachable ?? `${o.server} did not answer with ward's status (no CA report in GET /v1/status)`,
      `is "ward control" (or "ward up") running, and is --server its --admin address? (default ${DEFAULT_STATUS_SERVER})`,
    );
    notes.push('the other checks need the admin endpoint and were not run');
    return finish(checks, notes);
  }
  add(G_CONTROL, 'the control plane admin endpoint is reachable', 'ok', `${o.server} (trust domain ${o.report.trustDomain})`);
  if (o.meshUnreadable) {
    add(G_CONTROL, 'the discovery pool status is readable', 'fail', `${o.server} answered a "mesh" field this version of ward does not understand`, 'run the same version of ward as the control plane');
  }
  const config = o.mesh?.config;
  if (config !== undefined) {
    const rejected = config.lastError !== undefined && (config.appliedAt === undefined || (config.rejectedAt ?? '') > config.appliedAt);
    add(
      G_CONTROL,
      'ward.yaml: the latest edit is in force',
      rejected ? 'warn' : 'ok',
      rejected ? `the last edit of ${config.file ?? 'ward.yaml'} was rejected (${config.lastError}); the mesh runs on the last good configuration` : `${config.file ?? 'ward.yaml'} applied`,
      `fix ${config.file ?? 'ward.yaml'}: ward control applies it as soon as it is valid (its log names the problem)`,
    );
  }

  const kube = o.mesh?.kubernetes;
  if (kube !== undefined) {
    const down = (kube.informers ?? []).filter((i) => !i.synced || i.state === 'backoff');
    add(
      G_CONTROL,
      'Kubernetes API: every resource is listed and watched',
      down.length === 0 ? 'ok' : 'fail',
      down.length === 0
        ? `${(kube.informers ?? []).length} informers synced`
        : down.map((i) => `${i.resource} ${i.state}${i.lastError ? ` (${i.lastError.message.slice(0, 120)})` : ''}`).join('; '),
      'check the API server and the ward-control ServiceAccount\'s RBAC (kubectl auth can-i list pods --as system:serviceaccount:ward-system:ward-control); the pool retries with backoff and keeps the last model',
    );
    const problems = kube.problems ?? 0;
    add(
      G_CONTROL,
      'Kubernetes objects: none left out of the mesh',
      problems === 0 ? 'ok' : 'warn',
      problems === 0 ? 'every meshed object translated' : `${problems} object(s) or part(s) left out (an invalid AuthorizationPolicy, an unresolvable port, …)`,
      'the control plane logs each one once ("left out"); fix the object with kubectl',
    );
  }

  // ---- certificate authority
  const health = o.health ?? { ok: false, reason: 'GET /healthz did not answer' };
  add(G_CA, 'the CA can issue certificates', health.ok ? 'ok' : 'fail', health.ok ? 'healthy' : `unhealthy: ${health.reason ?? 'no reason given'}`, `see the control plane's log; "ward ca inspect --server ${o.server}" shows its material`);
  for (const role of ['root', 'intermediate'] as const) checks.push(caCertCheck(role, o.report.certificates.filter((c) => c.role === role), now, t.caWarnMs));
  const rot = o.report.rotation;
  const retire = rot?.phase === 'activated' && rot.retireReady;
  add(G_CA, 'no rotation step is waiting', retire ? 'warn' : 'ok', retire ? `a rotation${rot.kind ? ` of the ${rot.kind}` : ''} is activated and the old material can be retired now` : `rotation phase: ${rot?.phase ?? 'unknown'}`, 'ward ca rotate retire --state DIR');

  // ---- the mesh
  if (o.mesh === undefined) {
    if (!o.meshUnreadable) {
      notes.push(
        `${o.server} is a bare certificate authority ("ward ca serve"): it runs no discovery pool, so the node proxy, workload and service checks were skipped. ` +
          'Point --server at the admin address of "ward control" to check the mesh.',
      );
    }
    return finish(checks, notes);
  }
  checks.push(...meshChecks(o.mesh, now, t.leafWarnMs));
  return finish(checks, notes);
}

function finish(checks: CheckResult[], notes: string[]): CheckReport {
  return { ok: checks.every((c) => c.status === 'ok'), checks, notes };
}

function caCertCheck(role: 'root' | 'intermediate', certs: CaCertReport[], now: number, warnMs: number): CheckResult {
  const name = `${role} certificates are valid for more than ${humanDuration(warnMs)}`;
  const problems: { status: CheckStatus; text: string; previous: boolean }[] = [];
  for (const c of certs) {
    const what = `${role} ${c.fingerprint.slice(0, 23)} (${c.state})`;
    const left = Date.parse(c.notAfter) - now;
    const previous = c.state === 'previous';
    if (left <= 0) problems.push({ status: 'fail', text: `${what} expired ${timeLeft(-left)} ago (${c.notAfter})`, previous });
    else if (Date.parse(c.notBefore) > now) problems.push({ status: c.active ? 'fail' : 'warn', text: `${what} is not valid until ${c.notBefore}`, previous });
    else if (left < warnMs && !previous) problems.push({ status: 'warn', text: `${what} expires in ${timeLeft(left)} (${c.notAfter})`, previous });
  }
  if (certs.length === 0) return { group: G_CA, name, status: 'fail', message: `the CA reports no ${role} certificate`, hint: 'see "ward ca inspect" on the state directory' };
  if (problems.length === 0) {
    const soonest = certs.reduce((a, b) => (Date.parse(b.notAfter) < Date.parse(a.notAfter) ? b : a));
    return { group: G_CA, name, status: 'ok', message: `${certs.length} valid; the soonest expires in ${timeLeft(Date.parse(soonest.notAfter) - now)} (${soonest.notAfter})` };
  }
  const status = problems.some((p) => p.status === 'fail') ? 'fail' : 'warn';
  const hint = problems.every((p) => p.previous)
    ? 'the rotated-out material is no longer needed: ward ca rotate retire --state DIR'
    : role === 'root'
      ? 'rotate the root: ward ca rotate prepare --root, let the bundle reach every peer, then activate and retire (ward ca rotate --help)'
      : 'rotate the intermediate: ward ca rotate prepare, then ward ca rotate activate (ward ca rotate --help)';
  return { group: G_CA, name, status, message: problems.map((p) => p.text).join('; '), hint };
}

function meshChecks(m: MeshStatus, now: number, leafWarnMs: number): CheckResult[] {
  const out: CheckResult[] = [];
  const add = (group: string, name: string, status: CheckStatus, message: string, hint: string) =>
    out.push({ group, name, status, message, ...(status !== 'ok' ? { hint } : {}) });
  const connected = new Set(m.nodes.filter((n) => n.connected).map((n) => n.name));

  // ---- node proxies
  const down = m.nodes.filter((n) => !n.connected).map((n) => n.name);
  add(
    G_PROXIES,
    'every node proxy is connected',
    down.length > 0 ? 'fail' : 'ok',
    m.nodes.length === 0 ? 'ward.yaml declares no node' : down.length > 0 ? `not connected: ${names(down)} (${connected.size} of ${m.nodes.length} connected)` : `${m.nodes.length} of ${m.nodes.length} connected`,
    `start the proxy on ${down.length === 1 ? 'that node' : 'those nodes'} ("ward proxy --node NAME ..."; a join token: "ward token create --state DIR --node NAME"); if it runs, see its log and, on the node, curl ${PROXY_ADMIN}/readyz`,
  );
  const ingress = m.clients.filter((c) => c.view === 'ingress');
  if (ingress.length > 0) {
    const off = ingress.filter((c) => !c.connected).map((c) => c.identity);
    add(G_PROXIES, 'the ingress is connected', off.length > 0 ? 'fail' : 'ok', off.length > 0 ? `not connected: ${names(off)}` : `${ingress.length} connected`, 'start "ward ingress", or see its log');
  }
  const live = m.clients.filter((c) => c.connected);
  const behind = live.filter((c) => c.ackedVersion !== m.version);
  add(
    G_PROXIES,
    'every connected proxy acknowledged the latest version',
    behind.length > 0 ? 'fail' : 'ok',
    behind.length > 0
      ? `behind version ${m.version}: ${names(behind.map((c) => `${c.node ?? c.identity} (at ${c.ackedVersion}${c.nacks > 0 ? `, ${c.nacks} rejected` : ''})`))}`
      : live.length === 0 ? 'no proxy connected' : `${live.length} at version ${m.version}`,
    `a proxy that rejects an update (NACK) logs why; its /v1/state (on the node, ${PROXY_ADMIN}/v1/state) shows the version it runs`,
  );
  const certFail: string[] = [];
  const certWarn: string[] = [];
  const silent: string[] = [];
  let held = 0;
  for (const n of m.nodes) {
    if (!n.connected) continue; // already failed above; what it last reported no longer serves anyone
    if (n.lastReport === undefined) silent.push(n.name);
    for (const c of n.certificates) {
      held += 1;
      const left = Date.parse(c.notAfter) - now;
      if (!(left > 0)) certFail.push(`${n.name}: ${c.identity} expired ${timeLeft(-left)} ago`);
      else if (left < leafWarnMs) certWarn.push(`${n.name}: ${c.identity} expires in ${timeLeft(left)}`);
    }
  }
  const certStatus: CheckStatus = certFail.length > 0 ? 'fail' : certWarn.length > 0 || silent.length > 0 ? 'warn' : 'ok';
  add(
    G_PROXIES,
    `every connected proxy holds valid certificates, none expiring within ${humanDuration(leafWarnMs)}`,
    certStatus,
    certStatus === 'ok'
      ? `${held} certificate${held === 1 ? '' : 's'} held`
      : [...certFail, ...certWarn, ...(silent.length > 0 ? [`no certificate report yet from ${names(silent)}`] : [])].slice(0, MAX_NAMES).join('; '),
    certFail.length + certWarn.length > 0
      ? `a proxy renews at about half-life, so a certificate this close to expiry means renewal keeps failing: see the proxy's log and, on the node, ${PROXY_ADMIN}/v1/state; renew now with curl -X POST ${PROXY_ADMIN}/v1/renew (or pass a smaller --warn-expiry when proxies run with a short --ttl)`
      : 'a proxy reports its certificates within moments of connecting, then every 30s: run the check again shortly; if it persists, see the proxy\'s log',
  );

  // ---- workloads
  const noIdentity: string[] = [];
  const unhealthy: string[] = [];
  let unknown = 0;
  for (const w of m.workloads) {
    const key = `${w.namespace}/${w.name}`;
    const left = w.certificateNotAfter === undefined ? undefined : Date.parse(w.certificateNotAfter) - now;
    if (!connected.has(w.node)) noIdentity.push(`${key} (node ${w.node}: proxy not connected)`);
    else if (left === undefined) noIdentity.push(`${key} (node ${w.node} reports no certificate for ${w.identity})`);
    else if (!(left > 0)) noIdentity.push(`${key} (certificate expired ${timeLeft(-left)} ago)`);
    if (w.healthy === false) unhealthy.push(`${key}${w.reason ? ` (${w.reason})` : ''}`);
    else if (w.healthy === undefined) unknown += 1;
  }
  add(
    G_WORKLOADS,
    'every workload has an identity (a valid certificate held by its node\'s proxy)',
    noIdentity.length > 0 ? 'fail' : 'ok',
    noIdentity.length > 0 ? `without an identity: ${names(noIdentity)}` : `${m.workloads.length} of ${m.workloads.length}`,
    'the node\'s proxy obtains a workload\'s certificate when ward.yaml declares the workload on that node: start that proxy, or see its log (the CA refuses a workload declared on another node)',
  );
  add(
    G_WORKLOADS,
    'every workload is healthy',
    unhealthy.length > 0 ? 'warn' : 'ok',
    unhealthy.length > 0 ? `unhealthy: ${names(unhealthy)}` : `${m.workloads.length - unknown} healthy${unknown > 0 ? `, ${unknown} not reported yet` : ''}`,
    `their node's proxy says why: on the node, curl ${PROXY_ADMIN}/readyz; "ward status" lists them`,
  );

  // ---- services
  const empty = m.services.filter((s) => s.endpoints.healthy === 0).map((s) => `${s.name}.${s.namespace} (${s.endpoints.total === 0 ? 'selects no workload' : `0 of ${s.endpoints.total} healthy`})`);
  add(
    G_SERVICES,
    'every service has a healthy endpoint',
    empty.length > 0 ? 'warn' : 'ok',
    empty.length > 0 ? `no healthy endpoint: ${names(empty)}` : `${m.services.length} service${m.services.length === 1 ? '' : 's'}`,
    '"ward status" shows the workloads each service selects and their health; check the selector in ward.yaml',
  );
  const ejected = m.services.filter((s) => s.endpoints.ejected > 0).map((s) => `${s.name}.${s.namespace} (${s.endpoints.ejected} of ${s.endpoints.total})`);
  add(
    G_SERVICES,
    'no endpoint is ejected',
    ejected.length > 0 ? 'warn' : 'ok',
    ejected.length > 0 ? `ejected by outlier detection: ${names(ejected)}` : 'none ejected',
    'a proxy ejects an endpoint after consecutive failures and tries it again after the ejection time: look at the workloads behind it',
  );
  return out;
}

function names(list: string[]): string {
  return list.length <= MAX_NAMES ? list.join(', ') : `${list.slice(0, MAX_NAMES).join(', ')} and ${list.length - MAX_NAMES} more`;
}

/** "12m", "4y"-style rounding: minutes past ten minutes, seconds below. */
function timeLeft(ms: number): string {
  const rounded = ms >= 600_000 ? Math.round(ms / 60_000) * 60_000 : Math.max(1_000, Math.round(ms / 1_000) * 1_000);
  return humanDuration(rounded);
}

// ------------------------------------------------------------------------------------------------
// reading

function isCaReport(r: unknown): r is CaReport {
  const x = r as Partial<CaReport> | null;
  return typeof x === 'object' && x !== null && typeof x.trustDomain === 'string' && Array.isArray(x.certificates);
}

async function readHealth(server: string): Promise<{ ok: boolean; reason?: string }> {
  try {
    const res = await fetch(new URL('/healthz', server), { signal: AbortSignal.timeout(10_000) });
    const text = (await res.text()).trim().slice(0, 500);
    return res.ok ? { ok: true } : { ok: false, reason: text.replace(/^unavailable:\s*/, '') || `HTTP ${res.status}` };
  } catch (err) {
    return { ok: false, reason: `GET /healthz failed: ${(err as Error).message}` };
  }
}

async function readOnce(server: string): Promise<Observed> {
  let body: unknown;
  try {
    body = (await fetchAdminStatus(server)).body;
  } catch (err) {
    // A malformed --server is the user's to fix (exit 2); anything else is what this check reports.
    if (!isWardError(err) || err.code === 'WARD_USAGE') throw err;
    return { server, unreachable: err.message };
  }
  if (!isCaReport(body)) return { server };
  const mesh = (body as { mesh?: unknown }).mesh;
  const o: Observed = { server, report: body, health: await readHealth(server) };
  if (mesh !== undefined && mesh !== null) {
    if (isMeshStatus(mesh)) o.mesh = mesh;
    else o.meshUnreadable = true;
  }
  return o;
}

/** What the admin endpoint says, re-read for up to LAG_GRACE_MS while a connected proxy lags the latest version. */
async function observe(server: string): Promise<Observed> {
  const deadline = systemClock.now() + LAG_GRACE_MS;
  let o = await readOnce(server);
  const lagging = (x: Observed) => x.mesh !== undefined && x.mesh.clients.some((c) => c.connected && c.ackedVersion !== x.mesh!.version);
  while (lagging(o) && systemClock.now() < deadline) {
    await sleep(LAG_POLL_MS);
    const next = await readOnce(server);
    if (next.report === undefined) break; // gone meanwhile: judge what was read
    o = next;
  }
  return o;
}

const GLYPH: Record<CheckStatus, string> = { ok: '✓', warn: '‼', fail: '×' };

function renderCheckReport(r: CheckReport): string {
  const L: string[] = [];
  let group: string | undefined;
  for (const c of r.checks) {
    if (c.group !== group) {
      if (group !== undefined) L.push('');
      group = c.group;
      L.push(group, '-'.repeat(group.length));
    }
    L.push(`${GLYPH[c.status]} ${c.name}`);
    if (c.status !== 'ok') {
      L.push(`    ${c.message}`);
      if (c.hint) L.push(`    hint: ${c.hint}`);
    }
  }
  for (const n of r.notes) L.push('', `note: ${n}`);
  const failed = r.checks.filter((c) => c.status === 'fail').length;
  const warned = r.checks.filter((c) => c.status === 'warn').length;
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;
  L.push('');
  if (failed === 0 && warned === 0) L.push('Status check results are ✓');
  else L.push(`Status check results are ${failed > 0 ? '×' : '‼'}: ${[failed > 0 ? `${failed} failed` : '', warned > 0 ? plural(warned, 'warning') : ''].filter(Boolean).join(', ')}`);
  return L.join('\n') + '\n';
}

const check: Command = {
  name: 'check',
  summary: 'check the mesh: control plane, CA validity, proxies connected and current, identities (exit 1 on a problem)',
  options: {
    server: { type: 'string', default: DEFAULT_STATUS_SERVER },
    'warn-expiry': { type: 'string', default: DEFAULT_WARN_EXPIRY },
    'warn-ca-expiry': { type: 'string', default: DEFAULT_WARN_CA_EXPIRY },
    ...JSON_FLAG,
  },
  help: `Usage: ward check [--server URL] [--warn-expiry DURATION] [--warn-ca-expiry DURATION] [--json]

Checks the mesh from the admin endpoint of "ward control", like "linkerd check":
  control plane          the admin endpoint answers; the latest ward.yaml edit is in force (Kubernetes
                         mode: every resource listed and watched, no object left out)
  certificate authority  the CA can issue; roots and intermediates are valid now and for more
                         than --warn-ca-expiry; no rotation step is waiting
  node proxies           every declared node's proxy is connected and acknowledged the latest
                         version; the certificates they hold (node and workload SVIDs) are valid
                         and none expires within --warn-expiry
  workloads              every declared workload has an identity (its node's proxy is connected
                         and holds an unexpired certificate for it); none is reported unhealthy
  services               each has a healthy endpoint; no endpoint is ejected
Each line is ✓ (passed), ‼ (warning) or × (failed); a warning or failure says what was found and
a hint of what to run or look at. A proxy behind the latest version gets ${LAG_GRACE_MS / 1000}s to catch up.
Against a bare CA ("ward ca serve") the mesh checks are skipped, with a note.

Flags:
  --server URL                admin URL of ward control (default ${DEFAULT_STATUS_SERVER})
  --warn-expiry DURATION      warn when a leaf certificate expires within this (default ${DEFAULT_WARN_EXPIRY};
                              proxies renew at about half-life, so a healthy 1h certificate keeps
                              more than 20m; lower it for proxies running with a --ttl under 20m)
  --warn-ca-expiry DURATION   warn when a root or intermediate expires within this (default ${DEFAULT_WARN_CA_EXPIRY})
  --json                      print {ok, checks: [{group, name, status: ok|warn|fail, message, hint?}], notes}

Exit status: 0 when every check passed; 1 when any check failed or warned (a certificate close to
expiry included) or the admin endpoint cannot be read; 2 on a usage error.

Examples:
  ward check
  ward check --warn-expiry 30m --json | jq '.checks[] | select(.status != "ok")'`,
  async run(args, io) {
    const server = optional(args, 'server') ?? DEFAULT_STATUS_SERVER;
    const thresholds = { leafWarnMs: durationFlag(args, 'warn-expiry')!, caWarnMs: durationFlag(args, 'warn-ca-expiry')! };
    const report = judgeMesh(await observe(server), systemClock.now(), thresholds);
    if (flag(args, 'json')) writeJson(io, report);
    else io.stdout.write(renderCheckReport(report));
    return report.ok ? EXIT_OK : EXIT_PROBLEM;
  },
};

export const checkCommands: Command[] = [check];
