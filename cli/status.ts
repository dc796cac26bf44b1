/**
 * `ward status`: the mesh as the discovery pool sees it, read from the admin endpoint of
 * `ward control` (GET /v1/status → { ca, mesh }, `mesh` being discovery's MeshStatus).
 */
import { WardError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import type { MeshStatus } from '../discovery/index.js';
import { EXIT_OK, EXIT_PROBLEM, JSON_FLAG, humanDuration, optional, writeJson, type Command } from './command.js';

export const DEFAULT_STATUS_SERVER = 'http://127.0.0.1:9443';
const MAX_STATUS_BYTES = 64 * 1024 * 1024;

/**
 * GET <server><path> on the control plane's admin endpoint, as JSON, bounded by `maxBytes`. The one
 * admin client of the CLI (status, check, policy explain): the same URL checks and error messages.
 * `notFound` is the message for a 404 (a route that server does not have), when the caller has one.
 */
export async function fetchAdminJson(server: string, path: string, o: { maxBytes: number; notFound?: string }): Promise<{ url: URL; body: unknown }> {
  let url: URL;
  try {
    url = new URL(path, server);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not http');
  } catch {
    throw new WardError('WARD_USAGE', `--server wants the admin URL of ward control, e.g. ${DEFAULT_STATUS_SERVER}, got "${server}"`);
  }
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
    throw new WardError('WARD_CA_UNREACHABLE', `cannot reach the admin endpoint ${url}: ${cause} (is "ward control" running, and is --server its --admin address?)`, { cause: err });
  }
  if (!res.ok) {
    await res.body?.cancel();
    if (res.status === 404 && o.notFound) throw new WardError('WARD_CONFIG_INVALID', o.notFound);
    throw new WardError('WARD_CA_UNREACHABLE', `${url} answered HTTP ${res.status}`);
  }
  const declared = Number(res.headers.get('content-length') ?? '0');
  if (declared > o.maxBytes) throw new WardError('WARD_CA_UNREACHABLE', `${url} answered ${declared} bytes, more than the ${o.maxBytes} this command reads`);
  let body: unknown;
  try {
    body = await res.json();
  } catch (err) {
    throw new WardError('WARD_CA_UNREACHABLE', `${url} did not answer JSON: ${(err as Error).message}`, { cause: err });
  }
  return { url, body };
}

/** GET <server>/v1/status: the whole answer (the CA report; ward control adds `mesh`). */
export function fetchAdminStatus(server: string): Promise<{ url: URL; body: unknown }> {
  return fetchAdminJson(server, '/v1/status', { maxBytes: MAX_STATUS_BYTES });
}

/** GET <server>/v1/status and its `mesh` field. */
export async function fetchMeshStatus(server: string): Promise<MeshStatus> {
  const { url, body } = await fetchAdminStatus(server);
  const mesh = (body as { mesh?: unknown } | null)?.mesh;
  if (mesh === undefined || mesh === null) {
    throw new WardError(
      'WARD_CONFIG_INVALID',
      `${server} is a bare certificate authority ("ward ca serve"): it runs no discovery pool, so it has no mesh status. ` +
        `Point --server at the admin address of "ward control" (or use "ward ca inspect --server ${server}" for the CA itself).`,
    );
  }
  if (!isMeshStatus(mesh)) throw new WardError('WARD_CA_UNREACHABLE', `${url} answered a "mesh" field this version of ward does not understand`);
  return mesh;
}

export function isMeshStatus(m: unknown): m is MeshStatus {
  const s = m as Partial<MeshStatus>;
  return typeof s === 'object' && s !== null && typeof s.version === 'number' && [s.clients, s.nodes, s.services, s.workloads].every(Array.isArray);
}

/** What makes `ward status` exit 1: disconnected proxies, unhealthy workloads, missing or expired certificates. */
export function meshProblems(s: MeshStatus, now: number): string[] {
  const out: string[] = [];
  for (const n of s.nodes) if (!n.connected) out.push(`node ${n.name}: its proxy is not connected`);
  for (const c of s.clients) if (c.view === 'ingress' && !c.connected) out.push(`ingress ${c.identity}: not connected`);
  for (const w of s.workloads) {
    const key = `${w.namespace}/${w.name}`;
    if (w.healthy === false) out.push(`workload ${key}: unhealthy${w.reason ? ` (${w.reason})` : ''}`);
    if (w.certificateNotAfter === undefined) out.push(`workload ${key}: no certificate reported by node ${w.node}`);
    else if (Date.parse(w.certificateNotAfter) <= now) out.push(`workload ${key}: certificate expired at ${w.certificateNotAfter}`);
  }
  return out;
}

function expiry(iso: string | undefined, now: number): string {
  if (iso === undefined) return 'none';
  const left = Date.parse(iso) - now;
  // Minutes are precise enough past ten minutes ("in 1h", not "in 59m 59s").
  const round = (ms: number) => (ms >= 600_000 ? Math.round(ms / 60_000) * 60_000 : Math.max(1_000, Math.round(ms / 1_000) * 1_000));
  return left <= 0 ? `EXPIRED ${humanDuration(round(-left))} ago` : `in ${humanDuration(round(left))}`;
}

function table(headers: string[], rows: string[][]): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)];
}

export function renderMeshStatus(s: MeshStatus, now: number): string {
  const L: string[] = [];
  L.push(`Mesh ${s.trustDomain}  version ${s.version}  (as of ${s.generatedAt})`);
  L.push('');
  L.push('NODES');
  L.push(
    ...table(
      ['NODE', 'PROXY', 'ACKED / LATEST', 'SOONEST CERT EXPIRY'],
      s.nodes.map((n) => [
        n.name,
        n.connected ? 'connected' : 'DISCONNECTED',
        n.connected ? `${n.ackedVersion || '-'} / ${s.version}${n.ackedVersion !== s.version ? ' (behind)' : ''}` : '-',
        n.soonestExpiry ? `${expiry(n.soonestExpiry, now)}  ${n.soonestExpiry}` : 'none reported',
      ]),
    ),
  );
  const others = s.clients.filter((c) => c.view !== 'node');
  if (others.length > 0) {
    L.push('', 'OTHER CLIENTS');
    L.push(...table(['IDENTITY', 'STATE', 'ACKED / LATEST'], others.map((c) => [c.identity, c.connected ? 'connected' : 'DISCONNECTED', c.connected ? `${c.ackedVersion || '-'} / ${s.version}` : '-'])));
  }
  L.push('', 'WORKLOADS');
  L.push(
    ...table(
      ['WORKLOAD', 'IDENTITY', 'NODE', 'HEALTH', 'CERT EXPIRY'],
      s.workloads.map((w) => [
        `${w.namespace}/${w.name}`,
        w.identity,
        w.node,
        w.healthy === undefined ? 'unknown' : w.healthy ? 'healthy' : `UNHEALTHY${w.reason ? ` (${w.reason})` : ''}`,
        w.certificateNotAfter === undefined ? 'NONE' : expiry(w.certificateNotAfter, now),
      ]),
    ),
  );
  L.push('', 'SERVICES');
  L.push(...table(['SERVICE', 'HEALTHY / TOTAL', 'EJECTED'], s.services.map((x) => [`${x.name}.${x.namespace}`, `${x.endpoints.healthy} / ${x.endpoints.total}`, String(x.endpoints.ejected)])));
  // ward control adds how its ward.yaml source fares (not part of discovery's MeshStatus).
  const config = (s as { config?: { file?: string; lastError?: string; rejectedAt?: string; appliedAt?: string } }).config;
  if (config?.lastError && (config.appliedAt === undefined || (config.rejectedAt ?? '') > config.appliedAt)) {
    L.push('', `Configuration: the last edit of ${config.file ?? 'ward.yaml'} was rejected (${config.lastError}); the mesh runs on the last good one.`);
  }
  const problems = meshProblems(s, now);
  L.push('');
  if (problems.length === 0) L.push('All proxies connected; every workload healthy and holding a certificate.');
  else L.push(`Problems (${problems.length}):`, ...problems.map((p) => `  - ${p}`));
  return L.join('\n') + '\n';
}

const status: Command = {
  name: 'status',
  summary: 'show the mesh: connected proxies, versions, workload health, endpoints, certificate expiry',
  options: { server: { type: 'string', default: DEFAULT_STATUS_SERVER }, ...JSON_FLAG },
  help: `Usage: ward status [--server URL] [--json]

Shows the mesh as the discovery pool sees it, from the admin endpoint of "ward control":
  nodes      whether each node's proxy is connected, the version it acknowledged against the
             latest, and the soonest expiry among the certificates it holds
  workloads  identity, node, health as reported by the node's proxy (unknown until it reports),
             and when its certificate expires
  services   endpoints reported healthy out of those the service selects, and how many some proxy
             has ejected (outlier detection)

Flags:
  --server URL   admin URL of ward control (default ${DEFAULT_STATUS_SERVER})
  --json         print the mesh status as JSON (the "mesh" field of GET /v1/status)

Exit status: 0 when every proxy is connected and every workload is healthy (or not yet reported)
and holds an unexpired certificate; 1 when a proxy is disconnected, a workload is unhealthy, has no
certificate or an expired one, or the server cannot be reached (error WARD_CA_UNREACHABLE);
2 on a usage error. A bare CA ("ward ca serve") has no discovery pool: use "ward ca inspect --server".

Examples:
  ward status
  ward status --server http://127.0.0.1:9443 --json | jq '.workloads[] | select(.healthy == false)'`,
  async run(args, io) {
    const mesh = await fetchMeshStatus(optional(args, 'server') ?? DEFAULT_STATUS_SERVER);
    const now = systemClock.now();
    if (args.values.json === true) writeJson(io, mesh);
    else io.stdout.write(renderMeshStatus(mesh, now));
    return meshProblems(mesh, now).length > 0 ? EXIT_PROBLEM : EXIT_OK;
  },
};

export const statusCommands: Command[] = [status];
