/**
 * Test helper: a whole mesh on loopback out of real `ward` processes — `ward control` (CA +
 * discovery pool) and one `ward proxy` per node — plus in-process workloads (an HTTP echo that
 * answers with what it received, including the identity header, and a TCP echo).
 *
 * Each mesh gets its own 127.x.y.0/24 block, so test files running in parallel never share an
 * address: nodes are .1, .2, ...; workloads .101, .102, ... Every process, server and temp dir is
 * gone when the current test finishes — or, with `{ cleanup: 'manual' }` (a mesh shared by the
 * tests of a describe, started in beforeAll), when the caller awaits `mesh.close()` (in afterAll).
 * Tests only.
 */
import { EventEmitter, once } from 'node:events';
import { mkdtemp, rm, writeFile, rename } from 'node:fs/promises';
import { createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished, vi } from 'vitest';
import { stringify } from 'yaml';
import { exited, spawnWard, spawnWardUnmanaged, stderrMatch, ward } from './cli.js';

export const TD = 'cluster.local';
export const IDENTITY_HEADER = 'x-ward-source-identity';

export interface NodeSpec {
  name: string;
  zone?: string;
}

export interface WorkloadSpec {
  name: string;
  namespace: string;
  serviceAccount: string;
  node: string;
  ports: number[];
  labels: Record<string, string>;
  /** 'http' (default): the echo server on every port; 'tcp': a TCP echo on every port. */
  app?: 'http' | 'tcp' | 'none';
}

/** One ward.yaml `ingress.routes` entry (Kubernetes Ingress semantics; service is "name.namespace"). */
export interface IngressRouteSpec {
  host: string;
  paths: { path: string; pathType?: 'Exact' | 'Prefix'; service: string; port: number }[];
}

export interface MeshSpec {
  nodes: NodeSpec[];
  workloads: WorkloadSpec[];
  services: { name: string; namespace: string; ports: { name?: string; port: number; targetPort: number; protocol: 'http' | 'tcp' }[]; selector: Record<string, string> }[];
  policies?: unknown[];
  /** ward.yaml `ingress` (written only when given, so meshes without one keep their exact ward.yaml). */
  ingress?: { routes: IngressRouteSpec[] };
}

type Child = ReturnType<typeof spawnWard>;

export interface StartIngressOptions {
  /** `--cert HOST=CERT.pem,KEY.pem` values. */
  certs?: string[];
  /** `--pfx HOST=BUNDLE.p12[,PASSPHRASE-FILE]` values. */
  pfx?: string[];
  /** false: `--no-redirect` (no plain-HTTP listener). Default true. */
  redirect?: boolean;
  /** Default 'info' (certificate loads and refusals are logged at info and warn). */
  logLevel?: string;
  extraArgs?: string[];
}

/** A running `ward ingress` (joined with a fresh `ward token create --ingress`). */
export interface RunningIngress {
  child: Child;
  /** The HTTPS listener (127.0.0.1, a free port). */
  https: { host: string; port: number };
  /** The redirecting plain-HTTP listener; undefined with `redirect: false`. */
  http: { host: string; port: number } | undefined;
  /** http://127.0.0.1:PORT */
  adminUrl: string;
  /** GET /v1/state. */
  state(): Promise<Record<string, unknown>>;
  /** Polls /readyz (bounded) until the ingress has its mesh certificate and a configuration. */
  waitReady(o?: { timeoutMs?: number }): Promise<void>;
  /** Kills the process (SIGKILL unless told otherwise) and waits for it to exit. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** What the echo app saw: one record per request. */
export interface EchoSeen {
  workload: string;
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

export interface RunningMesh {
  dir: string;
  /** "127.x.y" */
  block: string;
  nodeAddress(node: string): string;
  workloadAddress(workload: string): string;
  /** The outbound proxy URL of a workload: http://<workload address>:15001 */
  proxyUrl(workload: string): string;
  adminUrl(node: string): string;
  ports: { ca: number; discovery: number; admin: number };
  bundleFile: string;
  control: Child | undefined;
  proxies: Map<string, Child>;
  /** Requests the HTTP echo apps received, in order. */
  seen: EchoSeen[];
  /** Starts (or restarts, on the same state and ports) the control plane. */
  startControl(): Promise<void>;
  stopControl(signal?: NodeJS.Signals): Promise<void>;
  /** Starts a node proxy (a new join token unless its state dir already holds a node identity and `token` is false). */
  startProxy(node: string, o?: { token?: boolean; extraArgs?: string[] }): Promise<Child>;
  stopProxy(node: string, signal?: NodeJS.Signals): Promise<void>;
  /** Waits until every running proxy's /readyz says ready (and, optionally, until `check` holds for each state dump). */
  waitReady(o?: { timeoutMs?: number; nodes?: string[] }): Promise<void>;
  /** GET /v1/state of a node proxy. */
  state(node: string): Promise<Record<string, unknown>>;
  /** Replaces ward.yaml atomically (the control plane watches it). */
  writeSpec(spec: MeshSpec): Promise<void>;
  /** Stops an app (its servers close and drop their connections). */
  stopApp(workload: string): Promise<void>;
  startApp(workload: string): Promise<void>;
  /** Kills every process, stops every app, removes the temp dir. Idempotent. Call it yourself with `cleanup: 'manual'`. */
  close(): Promise<void>;
  /** 'request' with each record of `seen`, as the echo app receives it (before it answers). */
  appRequests: EventEmitter<{ request: [EchoSeen] }>;
  /**
   * Starts `ward ingress` against this mesh's control plane with a new ingress join token, its
   * HTTPS, HTTP and admin listeners on free 127.0.0.1 ports. Resolves once it printed its addresses
   * (not yet ready: see waitReady). Stopped by close() (or when the test finishes, unless 'manual').
   */
  startIngress(o?: StartIngressOptions): Promise<RunningIngress>;
}

export interface StartMeshOptions {
  /**
   * 'test' (default): everything goes when the current test finishes (onTestFinished).
   * 'manual': nothing is registered with the test runner (so startMesh may run in beforeAll); the
   * caller awaits mesh.close() (in afterAll). If startMesh itself fails, it cleans up before throwing.
   */
  cleanup?: 'test' | 'manual';
  /** `ward control --grace`: how long a disconnected node's endpoints stay published (default '2s'). */
  grace?: string;
  /**
   * The HTTP echo apps honour a `delay=<ms>` query parameter (at most 30 000): they answer that long
   * after the request ended (a slow request for drain tests). Off by default.
   */
  echoDelay?: boolean;
}


function randomBlock(): string {
  // 127.0.0.0/8 minus the commonly used 127.0.0.x and the example's 127.0.10-30 blocks.
  const a = 40 + Math.floor(Math.random() * 200);
  const b = 1 + Math.floor(Math.random() * 250);
  return `127.${a}.${b}`;
}

export function yamlOf(spec: MeshSpec, block: string): string {
  const nodeIx = new Map(spec.nodes.map((n, i) => [n.name, i + 1]));
  return stringify({
    apiVersion: 'ward.dev/v1alpha1',
    kind: 'Mesh',
    trustDomain: TD,
    nodes: spec.nodes.map((n) => ({ name: n.name, address: `${block}.${nodeIx.get(n.name)}`, ...(n.zone ? { zone: n.zone } : {}) })),
    workloads: spec.workloads.map((w, i) => ({
      name: w.name,
      namespace: w.namespace,
      serviceAccount: w.serviceAccount,
      node: w.node,
      address: `${block}.${101 + i}`,
      ports: w.ports,
      labels: w.labels,
    })),
    services: spec.services,
    policies: spec.policies ?? [],
    ...(spec.ingress ? { ingress: spec.ingress } : {}),
  });
}

/** GET/POST on plain HTTP with a bounded wait; resolves status + body. */
export function httpCall(url: string, o: { method?: string; timeoutMs?: number } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: o.method ?? 'GET', timeout: o.timeoutMs ?? 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => (body += s));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.once('timeout', () => req.destroy(new Error(`timeout: ${url}`)));
    req.once('error', reject);
    req.end();
  });
}

export async function startMesh(spec: MeshSpec, options: StartMeshOptions = {}): Promise<RunningMesh> {
  const manual = options.cleanup === 'manual';
  // 'manual': every child ever spawned, so close() also kills one that never got as far as listening.
  const unmanaged = new Set<Child>();
  const spawnChild = (argv: string[]): Child => {
    if (!manual) return spawnWard(argv);
    const c = spawnWardUnmanaged(argv);
    unmanaged.add(c);
    return c;
  };
  /** Every `ward ingress` started, so close() stops them first (they talk to the control plane). */
  const ingresses = new Set<Child>();
  const dir = await mkdtemp(join(tmpdir(), 'ward-proxy-mesh-'));
  const block = randomBlock();
  const stateDir = join(dir, 'state');
  const config = join(dir, 'ward.yaml');
  const bundleFile = join(dir, 'bundle.pem');
  await writeFile(config, yamlOf(spec, block));
  let current = spec;
  const nodeAddress = (node: string): string => {
    const i = current.nodes.findIndex((n) => n.name === node);
    if (i === -1) throw new Error(`no node ${node}`);
    return `${block}.${i + 1}`;
  };
  const workloadAddress = (w: string): string => {
    const i = current.workloads.findIndex((x) => x.name === w);
    if (i === -1) throw new Error(`no workload ${w}`);
    return `${block}.${101 + i}`;
  };
  const seen: EchoSeen[] = [];
  const appRequests = new EventEmitter<{ request: [EchoSeen] }>();
  const apps = new Map<string, { servers: (HttpServer | NetServer)[]; sockets: Set<Socket> }>();
  const startApp = async (name: string): Promise<void> => {
    const w = current.workloads.find((x) => x.name === name)!;
    if (w.app === 'none' || apps.has(name)) return;
    const sockets = new Set<Socket>();
    const servers: (HttpServer | NetServer)[] = [];
    for (const port of w.ports) {
      let server: HttpServer | NetServer;
      if (w.app === 'tcp') {
        server = createNetServer((s) => {
          sockets.add(s);
          s.once('close', () => sockets.delete(s));
          s.on('error', () => s.destroy());
          s.pipe(s);
        });
      } else {
        server = createHttpServer((req, res) => {
          const record: EchoSeen = { workload: name, method: req.method ?? '', url: req.url ?? '', headers: req.headers };
          seen.push(record);
          appRequests.emit('request', record);
          const chunks: Buffer[] = [];
          req.on('data', (c: Buffer) => chunks.push(c));
          req.once('end', () => {
            const body = JSON.stringify({ workload: name, method: req.method, url: req.url, identity: req.headers[IDENTITY_HEADER] ?? null, body: Buffer.concat(chunks).toString('utf8') });
            const answer = (): void => {
              res.writeHead(200, { 'content-type': 'application/json', 'x-served-by': name });
              res.end(body);
            };
            const delay = options.echoDelay ? Number(new URL(req.url ?? '/', 'http://x').searchParams.get('delay') ?? 0) : 0;
            if (!(delay > 0)) return answer();
            const timer = setTimeout(answer, Math.min(delay, 30_000));
            res.once('close', () => clearTimeout(timer));
          });
        });
        server.on('connection', (s: Socket) => {
          sockets.add(s);
          s.once('close', () => sockets.delete(s));
        });
      }
      server.listen(port, workloadAddress(name));
      await once(server, 'listening');
      servers.push(server);
    }
    apps.set(name, { servers, sockets });
  };
  const stopApp = async (name: string): Promise<void> => {
    const a = apps.get(name);
    if (!a) return;
    apps.delete(name);
    for (const s of a.sockets) s.destroy();
    await Promise.all(a.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  };
  for (const w of spec.workloads) await startApp(w.name);

  const mesh: RunningMesh = {
    dir,
    block,
    nodeAddress,
    workloadAddress,
    proxyUrl: (w) => `http://${workloadAddress(w)}:15001`,
    adminUrl: (node) => `http://${nodeAddress(node)}:15000`,
    ports: { ca: 0, discovery: 0, admin: 0 },
    bundleFile,
    control: undefined,
    proxies: new Map(),
    seen,
    appRequests,
    async startControl() {
      const first = mesh.ports.ca === 0;
      const addr = (p: number): string => `127.0.0.1:${p}`;
      const child = spawnChild([
        'control',
        '--state', stateDir,
        '--config', config,
        '--init',
        '--listen', addr(mesh.ports.ca),
        '--discovery', addr(mesh.ports.discovery),
        '--admin', addr(mesh.ports.admin),
        '--grace', options.grace ?? '2s',
        '--log-level', 'warn',
      ]);
      const m = await stderrMatch(child, /ward control: CA https:\/\/[^:]+:(\d+)\s+discovery https:\/\/[^:]+:(\d+)\s+admin http:\/\/[^:]+:(\d+)/);
      mesh.control = child;
      if (first) {
        mesh.ports = { ca: Number(m[1]), discovery: Number(m[2]), admin: Number(m[3]) };
        const b = await ward(['ca', 'bundle', '--state', stateDir]);
        if (b.code !== 0) throw new Error(`ward ca bundle: ${b.stderr}`);
        await writeFile(bundleFile, b.stdout);
      }
    },
    async stopControl(signal = 'SIGKILL') {
      const c = mesh.control;
      if (!c) return;
      mesh.control = undefined;
      c.kill(signal);
      await exited(c);
    },
    async startProxy(node, o = {}) {
      const args = [
        'proxy',
        '--node', node,
        '--address', nodeAddress(node),
        '--ca', `https://127.0.0.1:${mesh.ports.ca}`,
        '--discovery', `https://127.0.0.1:${mesh.ports.discovery}`,
        '--bundle', bundleFile,
        '--trust-domain', TD,
        '--state', join(dir, 'nodes', node),
        '--log-level', 'info',
      ];
      if (o.token !== false) {
        const t = await ward(['token', 'create', '--state', stateDir, '--node', node]);
        if (t.code !== 0) throw new Error(`ward token create: ${t.stderr}`);
        args.push('--token', t.stdout.trim());
      }
      args.push(...(o.extraArgs ?? []));
      const child = spawnChild(args);
      await stderrMatch(child, /ward proxy: node \S+ inbound/);
      mesh.proxies.set(node, child);
      return child;
    },
    async stopProxy(node, signal = 'SIGKILL') {
      const c = mesh.proxies.get(node);
      if (!c) return;
      mesh.proxies.delete(node);
      c.kill(signal);
      await exited(c);
    },
    async waitReady(o = {}) {
      const nodes = o.nodes ?? [...mesh.proxies.keys()];
      for (const node of nodes) {
        // A child process's readiness has no event to await here: poll /readyz, bounded.
        await vi.waitFor(
          async () => {
            const r = await httpCall(`${mesh.adminUrl(node)}/readyz`).catch((err: Error) => ({ status: 0, body: err.message }));
            if (r.status !== 200) throw new Error(`proxy ${node} not ready: ${r.body}\n${mesh.proxies.get(node)?.output.stderr.slice(-3000)}`);
          },
          { timeout: o.timeoutMs ?? 20_000, interval: 100 },
        );
      }
    },
    async state(node) {
      const r = await httpCall(`${mesh.adminUrl(node)}/v1/state`);
      return JSON.parse(r.body) as Record<string, unknown>;
    },
    async writeSpec(next) {
      current = next;
      const tmp = join(dir, `.ward.yaml.${Date.now()}`);
      await writeFile(tmp, yamlOf(next, block));
      await rename(tmp, config);
    },
    stopApp,
    startApp,
    async startIngress(o = {}) {
      const t = await ward(['token', 'create', '--state', stateDir, '--ingress']);
      if (t.code !== 0) throw new Error(`ward token create --ingress: ${t.stderr}`);
      const args = [
        'ingress',
        '--bundle', bundleFile,
        '--trust-domain', TD,
        '--ca', `https://127.0.0.1:${mesh.ports.ca}`,
        '--discovery', `https://127.0.0.1:${mesh.ports.discovery}`,
        '--https', '127.0.0.1:0',
        ...(o.redirect === false ? ['--no-redirect'] : ['--http', '127.0.0.1:0']),
        '--admin', '127.0.0.1:0',
        '--log-level', o.logLevel ?? 'info',
        ...(o.certs ?? []).flatMap((c) => ['--cert', c]),
        ...(o.pfx ?? []).flatMap((p) => ['--pfx', p]),
        ...(o.extraArgs ?? []),
      ];
      // The token through the environment would be tidier, but spawnWard passes process.env as is.
      args.push('--token', t.stdout.trim());
      const child = spawnChild(args);
      ingresses.add(child);
      const m = await stderrMatch(child, /ward ingress: https ([^\s:]+):(\d+)(?: http ([^\s:]+):(\d+))? admin (http:\/\/\S+)/);
      const adminUrl = m[5];
      const handle: RunningIngress = {
        child,
        https: { host: m[1], port: Number(m[2]) },
        http: m[3] === undefined ? undefined : { host: m[3], port: Number(m[4]) },
        adminUrl,
        async state() {
          const r = await httpCall(`${adminUrl}/v1/state`);
          return JSON.parse(r.body) as Record<string, unknown>;
        },
        async waitReady(w = {}) {
          // No event announces readiness from another process: poll /readyz, bounded.
          await vi.waitFor(
            async () => {
              const r = await httpCall(`${adminUrl}/readyz`).catch((err: Error) => ({ status: 0, body: err.message }));
              if (r.status !== 200) throw new Error(`ingress not ready: ${r.body}\n${child.output.stderr.slice(-3000)}`);
            },
            { timeout: w.timeoutMs ?? 20_000, interval: 100 },
          );
        },
        async stop(signal = 'SIGKILL') {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          await exited(child);
        },
      };
      return handle;
    },
    close: () => (closing ??= cleanup()),
  };
  let closing: Promise<void> | undefined;
  const cleanup = async (): Promise<void> => {
    for (const c of new Set([...ingresses, mesh.control, ...mesh.proxies.values(), ...unmanaged])) {
      if (c && c.exitCode === null && c.signalCode === null) {
        c.kill('SIGKILL');
        await exited(c);
      }
    }
    for (const name of [...apps.keys()]) await stopApp(name);
    await rm(dir, { recursive: true, force: true });
  };
  if (!manual) {
    onTestFinished(() => mesh.close());
    await mesh.startControl();
    return mesh;
  }
  try {
    await mesh.startControl();
  } catch (err) {
    await mesh.close();
    throw err;
  }
  return mesh;
}
