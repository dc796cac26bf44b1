/**
 * bench/discovery: how fast one endpoint change reaches every connected discovery client, how many
 * bytes it costs, and how much memory the pool holds, for a mesh of 10,000 endpoints (1,000
 * services x 10) next to one of 1,000 endpoints (100 services x 10) with the same clients.
 *
 * Targets (the issue): p99 change latency < 100 ms with 10,000 endpoints and 200 clients; bytes per
 * change independent of the mesh size (1k / 10k ratio ~1); pool memory < 300 MiB.
 *
 * Setup, per mesh (both meshes live side by side in this process, each with its own MeshState,
 * DiscoveryServer on 127.0.0.1:0 and certificates minted for the run):
 * - a generated model: 200 nodes, services spread over 10 namespaces, 10 workloads per service
 *   placed on 10 distinct nodes, one service account (identity) per service. Names are padded to a
 *   fixed width, so the two meshes' frames differ only in how many resources exist, not in spelling.
 * - every identity marked issued and every node marked connected BEFORE the clients connect, so all
 *   endpoints are published and each client's connect produces only its own snapshot (no publish
 *   storm of one version per connecting node, which is a different benchmark).
 * - one client per node (each presenting its node's SVID, so each gets a node view), all in ONE
 *   child process per mesh (forked from this file). The clients are lean raw https NDJSON readers,
 *   not ControlClient: ControlClient copies its whole state map on each applied frame (applyFrame)
 *   and POSTs an ACK per version, which for 200 clients in one process would measure the client
 *   process rather than the pool. The readers still check every delta's base against the version
 *   they hold (a wrong base is an error) and that every client got the expected endpoints.
 *   Clients in a child process also keep this process's heap = the pool's heap.
 *
 * What is measured, per change: t0 just before MeshState.setModel(next) (next = the current model
 * with one workload relabelled out of, or back into, its service's selector: one endpoint removed
 * or restored; models are built before t0); t1 when the child reports over IPC that the last of its
 * clients has received the frame with that version. latency = t1 - t0, so it includes the state
 * diff, the push to every session, TLS on loopback, the client parsing, and one IPC hop (a slight
 * overestimate). setModel's own synchronous time (state + handing a frame to every socket) is shown
 * too. Bytes: NDJSON payload bytes received by all clients for that change (counted at the client
 * side), and the HTTP bytes (payload + chunked framing: the sockets' bytesRead). Changes alternate between the two meshes
 * (interleaved, alternating which goes first each round) so machine noise hits both alike; a few
 * warm-up changes per mesh are not recorded.
 *
 * Memory: V8 heap after a full GC (gc() made available at run time through
 * v8.setFlagsFromString('--expose-gc') + vm.runInNewContext('gc'), since tsx's invocation has no
 * --expose-gc) and process.memoryUsage(), taken before the meshes are built, after the 1k pool is
 * up with its clients connected and their snapshots delivered, after the 10k pool likewise, and at
 * the end. Per pool: heapUsed + external deltas across its construction (the model, the indexes,
 * the resources, the history, the sessions and their sockets' JS side), and the RSS delta, which also
 * holds native memory: each TLS connection keeps write buffers about the size of the largest burst
 * written to it (its snapshot), until it closes, plus allocator slack. The headline is the larger
 * of the two (the RSS delta in practice): what the operator of the pool would see.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { request } from 'node:https';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { systemClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { silentLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { PrivateKey, TrustBundle } from '../core/pki/index.js';
import type { Frame, ServiceEndpoints } from '../core/protocol/index.js';
import { meshClientOptions } from '../core/tls/index.js';
import { deepFreeze, type MeshModel, type MeshNode, type Service, type Workload } from '../discovery/model.js';
import { DiscoveryServer } from '../discovery/push/server.js';
import { MeshState } from '../discovery/push/state.js';
import { mintPki } from '../test/helpers/pki.js';

export interface DiscoveryBenchOptions {
  /** Fewer clients and changes: a smoke test that the benchmark still runs. */
  quick?: boolean;
  /** Progress lines (not results); the runner sends them to stderr. */
  progress?: (line: string) => void;
}

export interface DiscoveryMeshResult {
  label: string;
  endpoints: number;
  services: number;
  namespaces: number;
  nodes: number;
  clients: number;
  /** Recorded changes (after warm-up). */
  changes: number;
  /** Bytes of one client's snapshot (payload), averaged over clients. */
  snapshotBytesPerClient: number;
  setupSeconds: number;
  latencyMs: { p50: number; p99: number; max: number; samples: number[] };
  /** Synchronous time of MeshState.setModel (state diff + a frame handed to every session's socket). */
  setModelMs: { p50: number; p99: number };
  /** Median over changes, summed over all clients. */
  bytesPerChange: number;
  wireBytesPerChange: number;
  framesPerChange: number;
  memory: { heapMiB: number; externalMiB: number; poolMiB: number; rssMiB: number };
}

export interface DiscoveryBenchResult {
  bench: 'discovery';
  quick: boolean;
  meshes: DiscoveryMeshResult[];
  p99LatencyMs: number;
  latencyTargetMs: number;
  bytesRatio: number;
  /** The headline: RSS growth across building the 10k pool (conservative: includes native TLS state). */
  poolMiB: number;
  /** JS heap + external growth across building the 10k pool (the pool's own objects). */
  poolHeapMiB: number;
  memoryTargetMiB: number;
  /** Whole-process figures at the end (this process holds both pools and nothing else of size). */
  process: { rssMiB: number; maxRssMiB: number; heapUsedMiB: number; clientProcessRssMiB: number[] };
  gcAvailable: boolean;
  belowTarget: boolean;
  misses: string[];
  seconds: number;
}

const LATENCY_TARGET_MS = 100;
const MEMORY_TARGET_MIB = 300;
/** Bytes per change 1k vs 10k: within this factor of 1 counts as "independent of the mesh size". */
const RATIO_TOLERANCE = 0.1;
const TD = 'bench.ward.test';
const CHILD_ENV = 'WARD_BENCH_DISCOVERY_CHILD';
const MiB = 1024 * 1024;

interface MeshPlan {
  label: string;
  services: number;
}

interface Plan {
  meshes: MeshPlan[];
  nodes: number;
  namespaces: number;
  perService: number;
  warmup: number;
  changes: number;
  /** Clients connected at a time (each waits for its snapshot): bounds the snapshot burst. */
  connectBatch: number;
  connectTimeoutMs: number;
  changeTimeoutMs: number;
  /** The whole benchmark stops (fails) past this. */
  maxSeconds: number;
}

// Full: 2 x 200 clients, 2 x (10 + 100) changes of some tens of ms, after ~10-20 s of setup.
const FULL: Plan = {
  meshes: [{ label: '1k', services: 100 }, { label: '10k', services: 1000 }],
  nodes: 200,
  namespaces: 10,
  perService: 10,
  warmup: 10,
  changes: 100,
  connectBatch: 50,
  connectTimeoutMs: 120_000,
  changeTimeoutMs: 15_000,
  maxSeconds: 300,
};
const QUICK: Plan = { ...FULL, nodes: 20, warmup: 2, changes: 5, connectBatch: 20, maxSeconds: 120 };

// ---- the model ------------------------------------------------------------------------------

const pad = (n: number, w: number): string => String(n).padStart(w, '0');
const nodeName = (i: number): string => `node-${pad(i, 3)}`;

interface Mesh {
  model: MeshModel;
  identities: string[];
  nodes: string[];
  endpoints: number;
}

function buildModel(o: { nodes: number; services: number; namespaces: number; perService: number }): Mesh {
  const nodes: MeshNode[] = [];
  for (let i = 0; i < o.nodes; i++) {
    // Fixed-width addresses (127.0.1.100 ..): frames of both meshes then have the same spelling.
    nodes.push({ name: nodeName(i), address: `127.0.${1 + (i >> 7)}.${100 + (i & 127)}`, zone: `zone-${i % 3}` });
  }
  const services: Service[] = [];
  const workloads: Workload[] = [];
  const identities: string[] = [];
  for (let s = 0; s < o.services; s++) {
    const namespace = `ns-${pad(s % o.namespaces, 2)}`;
    const name = `svc-${pad(s, 4)}`;
    services.push({ name, namespace, ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: name } });
    const identity = `spiffe://${TD}/ns/${namespace}/sa/${name}`;
    identities.push(identity);
    for (let j = 0; j < o.perService; j++) {
      const node = nodes[(s * o.perService + j) % o.nodes];
      workloads.push({ name: `${name}-${pad(j, 2)}`, namespace, serviceAccount: name, node: node.name, address: node.address, ports: [8080], labels: { app: name, tier: 'backend' }, identity });
    }
  }
  const model = deepFreeze<MeshModel>({ trustDomain: TD, nodes, workloads, services, policies: [], routes: [] });
  return { model, identities, nodes: nodes.map((n) => n.name), endpoints: workloads.length };
}

/**
 * The k-th change: even k takes one workload out of its service (its `app` label no longer matches
 * the selector: one endpoint removed), odd k puts it back. Only that workload object is new; the
 * others are shared with the previous model, as a source that re-reads one change would produce.
 */
function changeAt(model: MeshModel, k: number, perService: number, services: number): { next: MeshModel; service: string; endpoints: number } {
  const pair = k >> 1;
  const s = (pair * 37) % services;
  const idx = s * perService + (pair % perService);
  const w = model.workloads[idx];
  const svc = `svc-${pad(s, 4)}`;
  const out = k % 2 === 0;
  const labels = { app: out ? `off-${pad(s, 4)}` : svc, tier: 'backend' };
  const workloads = model.workloads.slice();
  workloads[idx] = { ...w, labels };
  return { next: deepFreeze({ ...model, workloads }), service: `${svc}.${w.namespace}`, endpoints: out ? perService - 1 : perService };
}

// ---- IPC with the client process -------------------------------------------------------------

interface ClientSpec {
  node: string;
  chainPem: string;
  keyPem: string;
}

type ToChild =
  | { t: 'start'; port: number; trustDomain: string; serverId: string; bundlePem: string; clients: ClientSpec[]; batch: number }
  | { t: 'await'; version: number }
  | { t: 'stop' };

interface Synced {
  t: 'synced';
  version: number;
  /** Totals since the start, over all clients. */
  bytes: number;
  wireBytes: number;
  frames: number;
  /** Endpoints upserted by the last delta: `key=count`, identical for every client (else `mixed`). */
  lastDelta: string;
}

type FromChild =
  | { t: 'progress'; connected: number }
  | { t: 'ready'; versions: number[]; snapshotBytes: number; snapshotEndpoints: number[]; rssMiB: number }
  | Synced
  | { t: 'error'; message: string };

/** The child's side: a pool of raw NDJSON stream readers, one per node. */
async function clientProcessMain(): Promise<void> {
  const send = (m: FromChild): void => void process.send!(m);
  interface Reader {
    req: ClientRequest;
    version: number;
    bytes: number;
    frames: number;
    snapshotBytes: number;
    snapshotEndpoints: number;
    lastDelta: string;
    gotSnapshot: () => void;
    socket?: IncomingMessage['socket'];
  }
  const readers: Reader[] = [];
  let awaited: number | undefined;
  let reached = 0;
  let failed = false;
  const fail = (message: string): void => {
    if (failed) return;
    failed = true;
    send({ t: 'error', message });
  };
  const report = (): void => {
    const v = awaited!;
    awaited = undefined;
    let bytes = 0;
    let wireBytes = 0;
    let frames = 0;
    const deltas = new Set<string>();
    for (const r of readers) {
      bytes += r.bytes;
      wireBytes += r.socket?.bytesRead ?? 0;
      frames += r.frames;
      deltas.add(r.lastDelta);
    }
    send({ t: 'synced', version: v, bytes, wireBytes, frames, lastDelta: deltas.size === 1 ? [...deltas][0] : 'mixed' });
  };
  const onFrame = (r: Reader, f: Frame, size: number): void => {
    r.frames++;
    if (f.type === 'heartbeat') return;
    const before = r.version;
    if (f.type === 'snapshot') {
      r.snapshotBytes = size;
      r.snapshotEndpoints = f.resources.reduce((n, x) => n + (x.kind === 'endpoints' ? (x.value as ServiceEndpoints).endpoints.length : 0), 0);
      r.version = f.version;
      r.gotSnapshot();
    } else {
      if (f.base !== r.version) return fail(`delta based on ${f.base}, but the client holds ${r.version}`);
      r.version = f.version;
      r.lastDelta = f.upserts
        .filter((x) => x.kind === 'endpoints')
        .map((x) => `${x.key}=${(x.value as ServiceEndpoints).endpoints.length}`)
        .concat(f.removals.filter((x) => x.kind === 'endpoints').map((x) => `${x.key}=removed`))
        .join(',');
    }
    if (awaited !== undefined && before < awaited && r.version >= awaited && ++reached === readers.length) report();
  };

  const start = async (m: Extract<ToChild, { t: 'start' }>): Promise<void> => {
    const bundle = TrustBundle.fromPem(m.trustDomain, m.bundlePem);
    const expectedId = SpiffeId.parse(m.serverId);
    const open = (spec: ClientSpec): Promise<void> =>
      new Promise((resolve) => {
        const creds = { id: SpiffeId.node(m.trustDomain, spec.node), chainPem: spec.chainPem, key: PrivateKey.from(spec.keyPem), bundle };
        const req = request({ host: '127.0.0.1', port: m.port, path: '/v1/stream', method: 'GET', agent: false, ...meshClientOptions({ bundle, expectedId, creds }) });
        const r: Reader = { req, version: 0, bytes: 0, frames: 0, snapshotBytes: 0, snapshotEndpoints: 0, lastDelta: '', gotSnapshot: resolve };
        readers.push(r);
        req.on('error', (err) => fail(`client ${spec.node}: ${err.message}`));
        req.on('response', (res) => {
          if (res.statusCode !== 200) return fail(`client ${spec.node}: HTTP ${res.statusCode}`);
          r.socket = res.socket;
          // Only the new chunk is searched for line ends: a snapshot is megabytes long.
          let parts: Buffer[] = [];
          let partBytes = 0;
          res.on('data', (chunk: Buffer) => {
            r.bytes += chunk.length;
            let from = 0;
            let nl: number;
            while ((nl = chunk.indexOf(0x0a, from)) >= 0) {
              const piece = chunk.subarray(from, nl);
              const line = parts.length ? Buffer.concat([...parts, piece]) : piece;
              const size = partBytes + piece.length + 1;
              parts = [];
              partBytes = 0;
              from = nl + 1;
              let f: Frame;
              try {
                f = JSON.parse(line.toString('utf8')) as Frame;
              } catch (err) {
                return fail(`client ${spec.node}: bad frame: ${(err as Error).message}`);
              }
              onFrame(r, f, size);
            }
            if (from < chunk.length) {
              parts.push(chunk.subarray(from));
              partBytes += chunk.length - from;
            }
          });
          res.on('end', () => fail(`client ${spec.node}: stream ended`));
          // A connection the server destroys mid-response emits neither 'end' nor (without a listener) 'error'.
          res.on('close', () => fail(`client ${spec.node}: stream closed by the server`));
        });
        req.end();
      });
    for (let i = 0; i < m.clients.length && !failed; i += m.batch) {
      await Promise.all(m.clients.slice(i, i + m.batch).map(open));
      send({ t: 'progress', connected: Math.min(i + m.batch, m.clients.length) });
    }
    if (failed) return;
    send({
      t: 'ready',
      versions: [...new Set(readers.map((r) => r.version))],
      snapshotBytes: readers.reduce((n, r) => n + r.snapshotBytes, 0),
      snapshotEndpoints: [...new Set(readers.map((r) => r.snapshotEndpoints))],
      rssMiB: process.memoryUsage().rss / MiB,
    });
  };

  process.on('message', (m: ToChild) => {
    if (m.t === 'start') void start(m).catch((err) => fail(String((err as Error)?.stack ?? err)));
    else if (m.t === 'await') {
      awaited = m.version;
      reached = readers.filter((r) => r.version >= m.version).length;
      if (reached === readers.length) report();
    } else if (m.t === 'stop') {
      failed = true; // what the teardown causes is not an error to report
      for (const r of readers) r.req.destroy();
      process.disconnect();
    }
  });
  process.on('disconnect', () => process.exit(0));
}

/** The parent's handle on one client process. */
class ClientPool {
  readonly #child: ChildProcess;
  #waiter?: { version: number; resolve: (s: Synced & { at: number }) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };
  #ready?: { resolve: (m: Extract<FromChild, { t: 'ready' }>) => void; reject: (e: Error) => void };
  #error?: Error;
  rssMiB = 0;

  constructor(label: string, progress: (s: string) => void) {
    // Same loader flags (--import tsx) as this process; stdout ignored so --json stays clean.
    this.#child = fork(fileURLToPath(import.meta.url), [], {
      execArgv: process.execArgv,
      env: { ...process.env, [CHILD_ENV]: '1' },
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    const failAll = (err: Error): void => {
      this.#error ??= err;
      this.#ready?.reject(err);
      if (this.#waiter) {
        clearTimeout(this.#waiter.timer);
        this.#waiter.reject(err);
      }
    };
    this.#child.on('message', (m: FromChild) => {
      const at = performance.now();
      if (m.t === 'progress') progress(`discovery ${label}: ${m.connected} clients connected, snapshots received`);
      else if (m.t === 'ready') {
        this.rssMiB = m.rssMiB;
        this.#ready?.resolve(m);
      } else if (m.t === 'synced') {
        const w = this.#waiter;
        if (w && w.version === m.version) {
          this.#waiter = undefined;
          clearTimeout(w.timer);
          w.resolve({ ...m, at });
        }
      } else if (m.t === 'error') failAll(new Error(`discovery ${label} clients: ${m.message}`));
    });
    this.#child.on('exit', (code, signal) => failAll(new Error(`discovery ${label} client process exited (${code ?? signal})`)));
    this.#child.on('error', failAll);
  }

  start(m: Extract<ToChild, { t: 'start' }>, timeoutMs: number): Promise<Extract<FromChild, { t: 'ready' }>> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`clients not connected within ${timeoutMs} ms`)), timeoutMs);
      this.#ready = {
        resolve: (r) => (clearTimeout(timer), resolve(r)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
      this.#child.send(m);
    });
  }

  /** Resolves when every client holds `version`; `at` = performance.now() when the news arrived. */
  await(version: number, timeoutMs: number): Promise<Synced & { at: number }> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined;
        reject(new Error(`version ${version} did not reach every client within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiter = { version, resolve, reject, timer };
      this.#child.send({ t: 'await', version } satisfies ToChild);
    });
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const timer = setTimeout(() => child.kill(), 3_000);
    try {
      if (child.connected) child.send({ t: 'stop' } satisfies ToChild);
    } catch {
      child.kill();
    }
    await exited;
    clearTimeout(timer);
  }
}

// ---- measurement ----------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Nearest-rank percentile. */
function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** A full GC, if it could be enabled at run time (see the header), else undefined. */
function gcFunction(): (() => void) | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as () => void) : undefined;
  } catch {
    return undefined;
  }
}

interface Mem {
  heapUsed: number;
  external: number;
  rss: number;
}

async function settledMemory(gc: (() => void) | undefined): Promise<Mem> {
  // Let sockets flush and finalizers run before collecting.
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setTimeout(r, 50));
    gc?.();
  }
  const m = process.memoryUsage();
  return { heapUsed: v8.getHeapStatistics().used_heap_size, external: m.external, rss: m.rss };
}

interface Pool {
  plan: MeshPlan;
  mesh: Mesh;
  state: MeshState;
  server: DiscoveryServer;
  clients: ClientPool;
  model: MeshModel;
  k: number;
  lastBytes: number;
  lastWire: number;
  lastFrames: number;
  latency: number[];
  setModel: number[];
  bytes: number[];
  wire: number[];
  frames: number[];
  snapshotBytesPerClient: number;
  setupSeconds: number;
  memory?: DiscoveryMeshResult['memory'];
}

export async function runDiscoveryBench(opts: DiscoveryBenchOptions = {}): Promise<DiscoveryBenchResult> {
  const plan = opts.quick ? QUICK : FULL;
  const progress = opts.progress ?? (() => undefined);
  const began = performance.now();
  const deadline = began + plan.maxSeconds * 1000;
  const checkDeadline = (): void => {
    if (performance.now() > deadline) throw new Error(`discovery bench exceeded its ${plan.maxSeconds} s bound`);
  };
  const gc = gcFunction();

  // --- Certificates, minted for the run: a root, an intermediate, the server's SVID, one per node.
  progress(`discovery: minting ${plan.nodes + 1} certificates`);
  const { bundle, credentials: creds } = mintPki(TD);
  const serverId = DiscoveryServer.serverId(TD);
  const serverCreds = creds(serverId);
  const clientSpecs: ClientSpec[] = [];
  for (let i = 0; i < plan.nodes; i++) {
    const c = creds(SpiffeId.node(TD, nodeName(i)));
    clientSpecs.push({ node: nodeName(i), chainPem: c.chainPem, keyPem: c.key.exportPem() });
  }

  const pools: Pool[] = [];
  try {
    let mem = await settledMemory(gc);

    // --- The pools, one after the other, each measured for memory once its clients hold their snapshot.
    for (const mp of plan.meshes) {
      checkDeadline();
      const t0 = performance.now();
      const mesh = buildModel({ nodes: plan.nodes, services: mp.services, namespaces: plan.namespaces, perService: plan.perService });
      progress(`discovery ${mp.label}: ${mesh.endpoints} endpoints, ${mp.services} services, ${plan.nodes} nodes; building the state`);
      const state = new MeshState({ model: mesh.model, clock: systemClock, autoTick: false });
      state.setBundle(bundle.toPem(), 1);
      for (const id of mesh.identities) state.markIssued(id);
      for (const n of mesh.nodes) state.nodeConnected(n);
      const server = new DiscoveryServer({
        state,
        credentials: serverCreds,
        clock: systemClock,
        logger: silentLogger(),
        registry: createRegistry(),
        limits: {
          // No idle heartbeats during the run: every byte counted belongs to a change.
          heartbeatMs: 3_600_000,
          // Workaround: DiscoveryServer's handshake deadline (raw socket setTimeout(headersTimeoutMs)
          // in its 'connection' handler) is never cleared (its 'secureConnection' handler clears the
          // TLSSocket's timer, another object), so a stream with no write for headersTimeoutMs is
          // destroyed. The 1k pool's streams sit idle while the 10k pool is built: keep them alive.
          headersTimeoutMs: plan.maxSeconds * 1000,
          requestTimeoutMs: plan.maxSeconds * 1000,
        },
      });
      const clients = new ClientPool(mp.label, progress);
      const pool: Pool = {
        plan: mp, mesh, state, server, clients, model: mesh.model, k: 0, lastBytes: 0, lastWire: 0, lastFrames: 0,
        latency: [], setModel: [], bytes: [], wire: [], frames: [], snapshotBytesPerClient: 0, setupSeconds: 0,
      };
      pools.push(pool);
      const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
      progress(`discovery ${mp.label}: connecting ${plan.nodes} clients (${plan.connectBatch} at a time)`);
      const ready = await clients.start(
        { t: 'start', port, trustDomain: TD, serverId: serverId.toString(), bundlePem: bundle.toPem(), clients: clientSpecs, batch: plan.connectBatch },
        plan.connectTimeoutMs,
      );
      if (ready.versions.length !== 1 || ready.versions[0] !== state.version) throw new Error(`BUG: snapshots at versions ${ready.versions.join(',')}, the state is at ${state.version}`);
      if (ready.snapshotEndpoints.length !== 1 || ready.snapshotEndpoints[0] !== mesh.endpoints) {
        throw new Error(`BUG: snapshots carry ${ready.snapshotEndpoints.join('/')} endpoints, the mesh has ${mesh.endpoints}`);
      }
      const synced = await clients.await(state.version, plan.changeTimeoutMs);
      pool.lastBytes = synced.bytes;
      pool.lastWire = synced.wireBytes;
      pool.lastFrames = synced.frames;
      pool.snapshotBytesPerClient = ready.snapshotBytes / plan.nodes;
      pool.setupSeconds = (performance.now() - t0) / 1000;
      const after = await settledMemory(gc);
      const heap = (after.heapUsed - mem.heapUsed) / MiB;
      const external = (after.external - mem.external) / MiB;
      pool.memory = { heapMiB: heap, externalMiB: external, poolMiB: heap + external, rssMiB: (after.rss - mem.rss) / MiB };
      mem = after;
    }

    // --- Interleaved changes: one per mesh per round, which mesh goes first alternating.
    const rounds = plan.warmup + plan.changes;
    for (let round = 0; round < rounds; round++) {
      checkDeadline();
      if (round === plan.warmup || (round > plan.warmup && (round - plan.warmup) % 25 === 0)) {
        progress(`discovery: change ${round - plan.warmup + 1}/${plan.changes} per mesh`);
      } else if (round === 0) progress(`discovery: ${plan.warmup} warm-up change(s) per mesh`);
      const order = round % 2 === 0 ? pools : [...pools].reverse();
      for (const p of order) {
        const c = changeAt(p.model, p.k++, plan.perService, p.plan.services);
        const t0 = performance.now();
        p.state.setModel(c.next);
        const t1 = performance.now();
        p.model = c.next;
        const v = p.state.version;
        const s = await p.clients.await(v, plan.changeTimeoutMs);
        const expected = `${c.service}=${c.endpoints}`;
        if (s.lastDelta !== expected) throw new Error(`BUG: change ${p.k} on ${p.plan.label}: clients got ${s.lastDelta}, expected ${expected}`);
        if (round >= plan.warmup) {
          p.latency.push(s.at - t0);
          p.setModel.push(t1 - t0);
          p.bytes.push(s.bytes - p.lastBytes);
          p.wire.push(s.wireBytes - p.lastWire);
          p.frames.push(s.frames - p.lastFrames);
        }
        p.lastBytes = s.bytes;
        p.lastWire = s.wireBytes;
        p.lastFrames = s.frames;
      }
    }

    const end = await settledMemory(gc);
    const meshes: DiscoveryMeshResult[] = pools.map((p) => ({
      label: p.plan.label,
      endpoints: p.mesh.endpoints,
      services: p.plan.services,
      namespaces: plan.namespaces,
      nodes: plan.nodes,
      clients: plan.nodes,
      changes: p.latency.length,
      snapshotBytesPerClient: p.snapshotBytesPerClient,
      setupSeconds: p.setupSeconds,
      latencyMs: { p50: median(p.latency), p99: percentile(p.latency, 99), max: Math.max(...p.latency), samples: p.latency },
      setModelMs: { p50: median(p.setModel), p99: percentile(p.setModel, 99) },
      bytesPerChange: median(p.bytes),
      wireBytesPerChange: median(p.wire),
      framesPerChange: median(p.frames),
      memory: p.memory!,
    }));
    const small = meshes[0];
    const big = meshes[meshes.length - 1];
    const bytesRatio = big.bytesPerChange / small.bytesPerChange;
    const misses: string[] = [];
    if (big.latencyMs.p99 >= LATENCY_TARGET_MS) misses.push('latency');
    if (Math.abs(bytesRatio - 1) > RATIO_TOLERANCE) misses.push('bytes');
    if (Math.max(big.memory.rssMiB, big.memory.poolMiB) >= MEMORY_TARGET_MIB) misses.push('memory');
    const usage = process.memoryUsage();
    return {
      bench: 'discovery',
      quick: !!opts.quick,
      meshes,
      p99LatencyMs: big.latencyMs.p99,
      latencyTargetMs: LATENCY_TARGET_MS,
      bytesRatio,
      poolMiB: Math.max(big.memory.rssMiB, big.memory.poolMiB),
      poolHeapMiB: big.memory.poolMiB,
      memoryTargetMiB: MEMORY_TARGET_MIB,
      process: {
        rssMiB: usage.rss / MiB,
        maxRssMiB: process.resourceUsage().maxRSS / 1024,
        heapUsedMiB: end.heapUsed / MiB,
        clientProcessRssMiB: pools.map((p) => p.clients.rssMiB),
      },
      gcAvailable: gc !== undefined,
      belowTarget: misses.length > 0,
      misses,
      seconds: (performance.now() - began) / 1000,
    };
  } finally {
    for (const p of pools) {
      await p.clients.stop().catch(() => undefined);
      await p.server.close().catch(() => undefined);
      p.state.close();
    }
  }
}

// ---- report ---------------------------------------------------------------------------------

const fmtBytes = (n: number): string => (n >= MiB ? `${(n / MiB).toFixed(2)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${Math.round(n)} B`);
const ms = (n: number): string => n.toFixed(1);
const mib = (n: number): string => n.toFixed(1);

/** The headline: the three target lines, each with its flag. */
export function discoveryHeadline(r: DiscoveryBenchResult): string {
  const [small, big] = [r.meshes[0], r.meshes[r.meshes.length - 1]];
  return [
    `p99 change latency = ${ms(r.p99LatencyMs)} ms (target < ${r.latencyTargetMs} ms)${r.misses.includes('latency') ? '  ABOVE TARGET' : '  ok'}`,
    `bytes per change ${small.label} vs ${big.label} = ${fmtBytes(small.bytesPerChange)} vs ${fmtBytes(big.bytesPerChange)} (ratio ${r.bytesRatio.toFixed(3)})${r.misses.includes('bytes') ? '  OFF TARGET (not ~1)' : '  ok'}`,
    `pool memory = ${mib(r.poolMiB)} MiB RSS growth, of which JS heap+external ${mib(r.poolHeapMiB)} MiB (target < ${r.memoryTargetMiB} MiB)${r.misses.includes('memory') ? '  ABOVE TARGET' : '  ok'}`,
  ].join('\n');
}

export function formatDiscoveryBench(r: DiscoveryBenchResult): string {
  const header = ['mesh', 'endpoints', 'services', 'clients', 'snapshot/client', 'p50 ms', 'p99 ms', 'max ms', 'setModel p50/p99 ms', 'bytes/change', 'http/change', 'frames/change', 'pool MiB (heap+ext)', 'RSS Δ MiB'];
  const body = r.meshes.map((m) => [
    m.label,
    m.endpoints.toLocaleString('en-US'),
    m.services.toLocaleString('en-US'),
    String(m.clients),
    fmtBytes(m.snapshotBytesPerClient),
    ms(m.latencyMs.p50),
    ms(m.latencyMs.p99),
    ms(m.latencyMs.max),
    `${ms(m.setModelMs.p50)} / ${ms(m.setModelMs.p99)}`,
    fmtBytes(m.bytesPerChange),
    fmtBytes(m.wireBytesPerChange),
    String(m.framesPerChange),
    `${mib(m.memory.poolMiB)} (${mib(m.memory.heapMiB)}+${mib(m.memory.externalMiB)})`,
    mib(m.memory.rssMiB),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...body.map((b) => b[c].length)));
  const line = (cells: string[]): string => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ').trimEnd();
  const m0 = r.meshes[0];
  return [
    `discovery: ${m0.nodes} nodes, each with one connected client (raw NDJSON readers, one child process per mesh), ${m0.namespaces} namespaces, 10 endpoints per service;`,
    `${m0.changes} single-endpoint changes per mesh, interleaved; latency = setModel() until the last client holds the version (+1 IPC hop); bytes = NDJSON payload summed over clients (http = incl. chunked framing, the sockets' bytesRead)`,
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    '',
    `memory: ${r.gcAvailable ? 'after a full GC (gc() enabled at run time via v8.setFlagsFromString)' : 'NO GC AVAILABLE: deltas include garbage'}, deltas across building each pool with its clients connected;`,
    `  "pool MiB" = V8 heapUsed + external (the pool's JS objects); "RSS Δ" adds native memory: OpenSSL/TLSWrap buffers of the connections (each keeps about its largest write, the snapshot) and allocator slack`,
    `this process (both pools): RSS ${mib(r.process.rssMiB)} MiB, peak RSS ${mib(r.process.maxRssMiB)} MiB, heap ${mib(r.process.heapUsedMiB)} MiB; client processes RSS ${r.process.clientProcessRssMiB.map(mib).join(' / ')} MiB; ${r.seconds.toFixed(1)} s in all`,
    discoveryHeadline(r),
  ].join('\n');
}

// ---- child entry ----------------------------------------------------------------------------

if (process.env[CHILD_ENV] === '1' && process.send) await clientProcessMain();
