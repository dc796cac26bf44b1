/**
 * bench/ingress: HTTPS through `ward ingress` into the mesh, next to nginx terminating TLS in front
 * of the same backend, measured in one run on the same machine (issue 6; target: the ingress's
 * requests per second ≥ 0.5× nginx's).
 *
 * Paths (every process is a real one, as a user runs it; traffic stays on 127.0.0.0/8):
 * - ingress: client → `ward ingress` (HTTPS on 127.0.150.1) → mutual TLS → `ward proxy` node-b
 *            (inbound 127.0.110.2:15008) → backend (127.0.130.1). `ward control` runs from
 *            bench/proxy.ts's ward.yaml plus one ingress route (bench.test, Prefix / → server.bench:80);
 *            the proxy joins with a node token, the ingress with `ward token create --ingress`.
 * - nginx:   client → nginx (HTTPS on 127.0.160.1) → backend: one instance, one worker, upstream
 *            keep-alive; TLS 1.3 with the ingress's suite preference (AES-128-GCM first, server
 *            order) and the same certificate and key; it sets X-Forwarded-For/-Proto/-Host and
 *            X-Request-Id as the ingress does, so both do the same work per request.
 * - direct:  client → backend, plain HTTP: the backend's own ceiling, for reference.
 * The ingress path has one process more than nginx's: the node proxy that admits the request into
 * the mesh (mutual TLS, authorization) is part of "through the ingress into the mesh", so the target
 * compares the paths end to end, as a client sees them; the CPU is shown per process.
 * The certificate: self-signed, EC P-256, subjectAltName DNS:bench.test, made with openssl for the run.
 *
 * Load: wrk (-t1) over TLS 1.3 with keep-alive, the same client for both paths. wrk offers no ALPN,
 * so both servers speak HTTP/1.1. The URL is https://bench.test:PORT/, so the TLS server name (SNI)
 * and the Host header are bench.test, as the ingress requires (421 when they differ); wrk has no
 * --resolve, so its Lua script replaces wrk.resolve with the path's loopback address. The Node load
 * generator (bench/proxy-load.ts) is not used: a Node TLS client costs several times wrk's CPU per
 * request, on the same few CPUs as the servers, and would cap the faster path (nginx) at its own
 * rate, flattering the ratio.
 * Phases, each in interleaved rounds (three; one with --quick) that run every path once, in an order
 * that rotates per round; per path, rates and percentiles are the median over rounds, CPU the sum
 * over rounds divided by the requests summed:
 * - throughput: a fixed number of connections, closed loop (requests/s; latency under saturation);
 * - unloaded: one connection, one request at a time (latency without queueing).
 * Each timed run starts a new wrk, so each pays its connections' TLS handshakes (the same count on
 * both paths); a warm-up run per HTTPS path comes first (direct is the backend alone, warmed by them).
 * CPU: utime + stime from /proc/<pid>/stat (all threads) of each process on the path, before and
 * after each run, per completed request: "edge" is the process terminating the client's TLS (ward
 * ingress; nginx master + worker), "mesh" the node proxy's inbound (ingress path only).
 *
 * Cleanup: every child is tracked and stopped on the way out, on error and on SIGINT/SIGTERM; the
 * temp dir goes with it. WARD_BENCH_INGRESS_CPU_PROF=DIR runs `ward ingress` and `ward proxy` with
 * --cpu-prof into DIR.
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { TLSSocket } from 'node:tls';
import {
  ADDR,
  adminCounters,
  awaitAdminReady,
  Children,
  combineHttp,
  detectNginx,
  f1,
  f2,
  f3,
  freePort,
  guardCleanup,
  int,
  isRunning,
  nginxConf,
  pct,
  rotate,
  rssMiB,
  runCommand,
  runNginx,
  SERVICE_HTTP_PORT,
  Service,
  shortReason,
  skippedRow,
  spawnWardProxy,
  startBackend,
  startWardControl,
  table,
  targetLines,
  TD,
  WARD_PROXY_STARTED,
  wardYaml,
  wrkRun,
  wrkScript,
  x,
  type HttpRow,
  type HttpRun,
  type Hop,
  type PathSetup,
  type Target,
} from './proxy.js';

export interface IngressBenchOptions {
  /** Short phases: a smoke test that the benchmark still runs, not a measurement. */
  quick?: boolean;
  /** Progress lines (not results); the runner sends them to stderr. */
  progress?: (line: string) => void;
}

export type IngressPathName = 'direct' | 'ingress' | 'nginx';

export interface IngressBenchResult {
  bench: 'ingress';
  quick: boolean;
  setup: {
    connections: number;
    rounds: number;
    /** Per round. */
    seconds: { throughput: number; unloaded: number };
    generator: string;
    host: string;
    certificate: string;
    /** Protocol and suite each path negotiated with the check request (Node's TLS client). */
    tls: Partial<Record<'ingress' | 'nginx', string>>;
    wardCli?: string;
    nginx?: string;
    clkTck: number;
    cpus: number;
  };
  /** Why a path was not run. */
  unavailable: Partial<Record<IngressPathName, string>>;
  /** cpuUsPerRequest.hops: ingress → [ward ingress, ward proxy node-b]; nginx → [nginx]; direct → []. */
  throughput: HttpRow<IngressPathName>[];
  unloaded: HttpRow<IngressPathName>[];
  /** RSS after the load. */
  memory: { ingressMiB?: number; wardProxyMiB?: number; nginxMiB?: number };
  /** `ward ingress`'s ward_ingress_*_total counters and the proxy's ward_proxy_*_total at the end, for diagnosis. */
  wardCounters: { process: string; series: Record<string, number> }[];
  /** Ingress over nginx: `${phase}.rps|p50|p99|cpuEdge|cpuPath`. */
  ratios: Record<string, number>;
  targets: Target[];
  belowTarget: boolean;
  misses: string[];
  notMeasured: string[];
  notes: string[];
  seconds: number;
}

interface Plan {
  rounds: number;
  connections: number;
  warmupS: number;
  throughputS: number;
  unloadedS: number;
  maxSeconds: number;
}

// Full: three rounds, about 60 s of load plus ~10 s of setup. wrk takes whole seconds only.
const FULL: Plan = { rounds: 3, connections: 32, warmupS: 2, throughputS: 4, unloadedS: 2, maxSeconds: 300 };
// Quick: about 20 s in all. A shorter warm-up leaves the ingress cold (V8 still compiling, handshakes cut off).
const QUICK: Plan = { ...FULL, rounds: 1, warmupS: 2, throughputS: 2, unloadedS: 1, maxSeconds: 150 };

const TARGET_THROUGHPUT = 0.5;

const HOST = 'bench.test';
/** The external listeners: the ingress's and nginx's (not bench/proxy's 127.0.140.x nor the mesh's). */
const EDGE = { ingress: '127.0.150.1', nginx: '127.0.160.1' } as const;
const PATHS: IngressPathName[] = ['direct', 'ingress', 'nginx'];

/** When set, `ward ingress` and `ward proxy` run under `node --cpu-prof --cpu-prof-dir=$VALUE`. */
const CPU_PROF_ENV = 'WARD_BENCH_INGRESS_CPU_PROF';

const INSTALL_NGINX = 'apt-get update && apt-get install -y nginx';

/** The ingress's TLS 1.3 suite order (ingress/server.ts INGRESS_TLS), given to nginx too. */
const TLS13_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

const INGRESS_YAML = `ingress:
  routes:
    - host: ${HOST}
      paths:
        - {path: /, pathType: Prefix, service: server.bench, port: ${SERVICE_HTTP_PORT}}
`;

/** `ward ingress`'s start-up line. */
const INGRESS_STARTED = /ward ingress: https (?<https>\S+):(?<port>\d+)(?: http \S+)? admin (?<admin>http:\/\/\S+)/;

interface Certificate {
  certFile: string;
  keyFile: string;
  pem: string;
}

/** A self-signed EC P-256 server certificate for HOST (openssl), or why it could not be made. */
async function makeCertificate(children: Children, dir: string): Promise<Certificate | string> {
  const conf = join(dir, 'edge-cert.cnf');
  writeFileSync(
    conf,
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      'x509_extensions = ext',
      '[dn]',
      `CN = ${HOST}`,
      '[ext]',
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature',
      'extendedKeyUsage = serverAuth',
      `subjectAltName = DNS:${HOST}`,
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
  );
  const certFile = join(dir, 'edge.crt');
  const keyFile = join(dir, 'edge.key');
  const r = await runCommand(
    children,
    'openssl',
    ['req', '-x509', '-config', conf, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-sha256'],
    { timeoutMs: 15_000 },
  );
  if (r.code !== 0) return `could not make the certificate for ${HOST} with openssl req: ${r.spawnError?.message ?? r.stderr.trim()}`;
  return { certFile, keyFile, pem: readFileSync(certFile, 'utf8') };
}

/** An HTTPS path to wrk: the URL names HOST (SNI and Host), the script connects to the listener. */
function edgePath(dir: string, name: 'ingress' | 'nginx', address: string, port: number, hops: Hop[]): PathSetup<IngressPathName> {
  const http = { origin: `https://${HOST}:${port}`, path: '/' };
  return { name, hops, http, wrkUrl: `${http.origin}/`, wrkScript: wrkScript(dir, name, http, { host: address, port }) };
}

interface EdgeChain {
  path: PathSetup<IngressPathName>;
  address: string;
  port: number;
}

async function startNginxTls(o: { children: Children; dir: string; backendPort: number; cert: Certificate; progress: (s: string) => void }): Promise<(EdgeChain & { version: string }) | string> {
  const detected = await detectNginx(o.children, INSTALL_NGINX);
  if (typeof detected === 'string') return detected;
  o.progress(`ingress: starting nginx (${detected.version}) terminating TLS 1.3 in front of the backend`);
  const port = await freePort(EDGE.nginx);
  const d = join(o.dir, 'nginx');
  const conf = nginxConf({
    dir: d,
    http: `  upstream backend { server ${ADDR.server}:${o.backendPort}; keepalive 256; keepalive_requests 100000000; keepalive_timeout 600s; }
  server {
    listen ${EDGE.nginx}:${port} ssl;
    server_name ${HOST};
    ssl_certificate ${o.cert.certFile};
    ssl_certificate_key ${o.cert.keyFile};
    ssl_protocols TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites ${TLS13_SUITES};
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $request_id;
    }
  }`,
  });
  const hop = await runNginx({ children: o.children, d, name: 'nginx', conf, host: EDGE.nginx, ports: [port] });
  if (typeof hop === 'string') return hop;
  return { version: detected.version, address: EDGE.nginx, port, path: edgePath(o.dir, 'nginx', EDGE.nginx, port, [hop]) };
}

interface IngressChain extends EdgeChain {
  cli: string;
  ingress: Service;
  proxy: Service;
  admins: { ingress: string; proxy: string };
}

async function startIngress(o: {
  children: Children;
  dir: string;
  backendPort: number;
  sinkPort: number;
  cert: Certificate;
  progress: (s: string) => void;
  notes: string[];
}): Promise<IngressChain | string> {
  const { children, dir } = o;
  const ctl = await startWardControl({
    children,
    dir,
    yaml: wardYaml({ httpPort: o.backendPort, sinkPort: o.sinkPort, extra: INGRESS_YAML }),
    commands: ['proxy', 'ingress'],
    tokens: [['--node', 'node-b'], ['--ingress']],
    progress: o.progress,
    starting: (label) => `ingress: starting ward control, ward proxy node-b and ward ingress (${label})`,
    notes: o.notes,
    tag: 'ingress',
  });
  if (typeof ctl === 'string') return ctl;
  const profDir = process.env[CPU_PROF_ENV];
  const nodeFlags = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
  const proxy = spawnWardProxy(children, ctl, { dir, node: 'node-b', address: ADDR.nodeB, token: ctl.tokens[0], nodeFlags });
  const ingress = new Service('ward ingress', children, ctl.cli.command, [
    ...nodeFlags, ...ctl.cli.prefix, 'ingress', '--bundle', ctl.bundleFile, '--token', ctl.tokens[1], '--trust-domain', TD,
    '--ca', ctl.caUrl, '--discovery', ctl.discoveryUrl, '--state', join(dir, 'ingress-state'),
    '--https', `${EDGE.ingress}:0`, '--no-redirect', '--admin', '127.0.0.1:0', '--cert', `${HOST}=${o.cert.certFile},${o.cert.keyFile}`, '--log-level', 'warn',
  ]);
  // Ready = certificates and the pool's configuration (routes and endpoints), each on its /readyz.
  const [p, i] = await Promise.all([awaitAdminReady(proxy, WARD_PROXY_STARTED), awaitAdminReady(ingress, INGRESS_STARTED)]);
  if (typeof p === 'string') return p;
  if (typeof i === 'string') return i;
  const port = Number(i.match.groups?.port);
  const hops: Hop[] = [
    { label: 'ward ingress', pids: [ingress.pid] },
    { label: 'ward proxy node-b', pids: [proxy.pid] },
  ];
  return { cli: ctl.cli.label, ingress, proxy, admins: { ingress: i.admin, proxy: p.admin }, address: EDGE.ingress, port, path: edgePath(dir, 'ingress', EDGE.ingress, port, hops) };
}

/** Where a path's check request goes; with `tls`, HTTPS with SNI and Host HOST, trusting only `ca`. */
interface CheckTarget {
  address: string;
  port: number;
  tls?: { ca: string };
}

interface CheckResult {
  status: number;
  body: string;
  /** The negotiated protocol and suite (HTTPS only). */
  tls?: string;
}

/** One GET / through a path, bounded. */
async function checkOnce(t: CheckTarget, timeoutMs: number): Promise<CheckResult> {
  const common = { host: t.address, port: t.port, path: '/', method: 'GET', agent: false as const, timeout: timeoutMs };
  const req = t.tls
    ? httpsRequest({ ...common, servername: HOST, ca: t.tls.ca, headers: { host: `${HOST}:${t.port}` } })
    : httpRequest(common);
  req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
  req.end();
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  const sock = res.socket as TLSSocket;
  const tls = t.tls ? `${sock.getProtocol?.() ?? '?'} ${sock.getCipher?.()?.name ?? '?'}` : undefined;
  let body = '';
  res.setEncoding('utf8');
  for await (const chunk of res) body += chunk as string;
  return { status: res.statusCode ?? 0, body: body.slice(0, 300), ...(tls ? { tls } : {}) };
}

/** Retries for a few seconds: endpoints may reach the ingress just after its /readyz turns 200. */
async function check(t: CheckTarget): Promise<CheckResult> {
  const deadline = performance.now() + 8_000;
  for (;;) {
    let last: CheckResult | Error;
    try {
      last = await checkOnce(t, 5_000);
      if (last.status === 200 && last.body === 'ok') return last;
    } catch (err) {
      last = err as Error;
    }
    if (performance.now() > deadline) {
      if (last instanceof Error) throw last;
      return last;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function runIngressBench(opts: IngressBenchOptions = {}): Promise<IngressBenchResult> {
  const plan = opts.quick ? QUICK : FULL;
  const progress = opts.progress ?? (() => undefined);
  const began = performance.now();
  const deadline = began + plan.maxSeconds * 1000;
  const checkDeadline = (): void => {
    if (performance.now() > deadline) throw new Error(`ingress bench exceeded its ${plan.maxSeconds} s bound`);
  };
  const notes: string[] = [];
  const unavailable: IngressBenchResult['unavailable'] = {};
  const children = new Children();
  const dir = mkdtempSync(join(os.tmpdir(), 'ward-bench-ingress-'));
  const release = guardCleanup(children, dir, 'ingress bench');

  try {
    progress(`ingress: starting the backend on ${ADDR.server}`);
    const [clk, wrkCheck, backend] = await Promise.all([
      runCommand(children, 'getconf', ['CLK_TCK'], { timeoutMs: 5_000 }),
      runCommand(children, 'wrk', ['-v'], { timeoutMs: 5_000 }),
      startBackend(children),
    ]);
    const clkTck = Number(clk.stdout.trim()) || 100;
    // HTTPS load needs wrk (see the header): without it every row is skipped, with the command that installs it.
    if (wrkCheck.spawnError) {
      const why = `wrk is not installed (${wrkCheck.spawnError.code}); to run this benchmark: apt-get install -y wrk`;
      unavailable.ingress = unavailable.nginx = why;
      progress(`ingress: skipped: ${why}`);
      const none = PATHS.map((n) => skippedRow(n, 'not run (no wrk)'));
      const result = assemble({ plan, quick: !!opts.quick, clkTck, tls: {}, unavailable, throughput: none, unloaded: none, memory: {}, wardCounters: [], notes });
      result.seconds = (performance.now() - began) / 1000;
      return result;
    }
    const wrkVersion = /^wrk (\S+)/.exec(wrkCheck.stdout + wrkCheck.stderr)?.[1];
    const usPerTick = 1e6 / clkTck;
    const cert = await makeCertificate(children, dir);
    if (typeof cert === 'string') throw new Error(cert);

    const directHttp = { origin: `http://${ADDR.server}:${backend.httpPort}`, path: '/' };
    const direct: PathSetup<IngressPathName> = { name: 'direct', hops: [], http: directHttp, wrkUrl: `${directHttp.origin}/`, wrkScript: wrkScript(dir, 'direct', directHttp) };

    const [nginx, ingress] = await Promise.all([
      startNginxTls({ children, dir, backendPort: backend.httpPort, cert, progress }),
      startIngress({ children, dir, backendPort: backend.httpPort, sinkPort: backend.sinkPort, cert, progress, notes }),
    ]);
    if (typeof nginx === 'string') {
      unavailable.nginx = nginx;
      progress(`ingress: nginx rows skipped: ${nginx}`);
    }
    if (typeof ingress === 'string') {
      unavailable.ingress = ingress;
      progress(`ingress: ingress rows skipped: ${ingress.split('\n')[0]}`);
    }
    checkDeadline();

    // Each path answers correctly before it is timed.
    const tls: IngressBenchResult['setup']['tls'] = {};
    const paths: PathSetup<IngressPathName>[] = [];
    const candidates: [PathSetup<IngressPathName>, CheckTarget][] = [[direct, { address: ADDR.server, port: backend.httpPort }]];
    for (const e of [ingress, nginx]) if (typeof e !== 'string') candidates.push([e.path, { address: e.address, port: e.port, tls: { ca: cert.pem } }]);
    for (const [p, target] of candidates) {
      try {
        const c = await check(target);
        if (c.status !== 200 || c.body !== 'ok') throw new Error(`HTTP ${c.status}: ${c.body.slice(0, 200)}`);
        if (c.tls && (p.name === 'ingress' || p.name === 'nginx')) tls[p.name] = c.tls;
        paths.push(p);
      } catch (err) {
        if (p.name === 'direct') throw new Error(`the backend does not answer: ${(err as Error).message}`);
        unavailable[p.name] = `could not run: a request through ${p.name} failed: ${(err as Error).message}`;
        progress(`ingress: ${unavailable[p.name]}`);
      }
    }
    const skipped = (name: IngressPathName): string | undefined => (paths.some((p) => p.name === name) ? undefined : unavailable[name]);

    // ---- warm-up: JIT, pools and upstream connections, at the throughput phase's concurrency. Not
    // for direct: that is the backend alone, which the other paths' warm-ups warm.
    for (const p of paths.filter((q) => q.name !== 'direct')) {
      checkDeadline();
      progress(`ingress: warm-up ${p.name} (${plan.warmupS} s)`);
      await wrkRun(children, p, backend.pid, usPerTick, plan.connections, plan.warmupS).catch(() => undefined);
    }

    // ---- the phases: `rounds` rounds, every path once per round, the order rotating.
    const roundTag = (round: number): string => (plan.rounds > 1 ? ` (round ${round + 1}/${plan.rounds})` : '');
    const phase = async (name: string, offset: number, connections: number, seconds: number): Promise<HttpRow<IngressPathName>[]> => {
      const runs = new Map<IngressPathName, HttpRun[]>();
      const failed = new Map<IngressPathName, string>();
      for (let round = 0; round < plan.rounds; round++) {
        for (const p of rotate(paths, offset + round)) {
          checkDeadline();
          if (failed.has(p.name)) continue;
          progress(`ingress: ${name} ${p.name}: ${connections} connection${connections === 1 ? '' : 's'}, ${seconds} s (wrk)${roundTag(round)}`);
          try {
            const m = await wrkRun(children, p, backend.pid, usPerTick, connections, seconds);
            runs.set(p.name, [...(runs.get(p.name) ?? []), m]);
          } catch (err) {
            const why = `failed: ${(err as Error).message.split('\n')[0]}`;
            progress(`ingress: ${name} ${p.name}: ${why}`);
            failed.set(p.name, why);
          }
        }
      }
      return PATHS.map((n) => {
        const failure = failed.get(n);
        const r = runs.get(n);
        if (failure) return skippedRow(n, failure);
        return r?.length ? combineHttp(n, r) : skippedRow(n, shortReason(skipped(n) ?? 'not run'));
      });
    };
    const throughput = await phase('throughput', 0, plan.connections, plan.throughputS);
    const unloaded = await phase('unloaded', 1, 1, plan.unloadedS);

    const up = (name: IngressPathName): boolean => !skipped(name);
    const memory: IngressBenchResult['memory'] = {
      ...(typeof ingress !== 'string' && up('ingress') ? { ingressMiB: rssMiB(ingress.ingress.pid), wardProxyMiB: rssMiB(ingress.proxy.pid) } : {}),
      ...(typeof nginx !== 'string' && up('nginx') ? { nginxMiB: nginx.path.hops[0].pids.reduce((n, pid) => n + rssMiB(pid), 0) } : {}),
    };
    const wardCounters =
      typeof ingress === 'string'
        ? []
        : await Promise.all([
            adminCounters(ingress.admins.ingress, 'ward_ingress_').then((series) => ({ process: 'ward ingress', series })),
            adminCounters(ingress.admins.proxy, 'ward_proxy_').then((series) => ({ process: 'ward proxy node-b', series })),
          ]);
    if (typeof ingress !== 'string' && !isRunning(ingress.ingress.proc)) notes.push(`ward ingress exited during the run:\n${ingress.ingress.tail()}`);

    const result = assemble({
      plan,
      quick: !!opts.quick,
      clkTck,
      wrkVersion,
      tls,
      unavailable,
      throughput,
      unloaded,
      memory,
      wardCounters,
      notes,
      wardCli: typeof ingress === 'string' ? undefined : ingress.cli,
      nginxVersion: typeof nginx === 'string' ? undefined : nginx.version,
    });
    result.seconds = (performance.now() - began) / 1000;
    return result;
  } finally {
    progress('ingress: stopping every process');
    await children.stopAll(5_000);
    release();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- ratios and the target --------------------------------------------------------------------

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

function assemble(o: {
  plan: Plan;
  quick: boolean;
  clkTck: number;
  wrkVersion?: string;
  tls: IngressBenchResult['setup']['tls'];
  unavailable: IngressBenchResult['unavailable'];
  throughput: HttpRow<IngressPathName>[];
  unloaded: HttpRow<IngressPathName>[];
  memory: IngressBenchResult['memory'];
  wardCounters: IngressBenchResult['wardCounters'];
  notes: string[];
  wardCli?: string;
  nginxVersion?: string;
}): IngressBenchResult {
  const row = (rows: HttpRow<IngressPathName>[], n: IngressPathName): HttpRow<IngressPathName> | undefined => rows.find((r) => r.path === n && !r.skipped);
  // A row with errors is still shown, but its figures do not count toward the target.
  const clean = (r: HttpRow<IngressPathName> | undefined): HttpRow<IngressPathName> | undefined => (r && r.errors === 0 ? r : undefined);
  const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined && Number.isFinite(a) && Number.isFinite(b) && b > 0 ? a / b : undefined);
  const ratios: Record<string, number> = {};
  const put = (key: string, v: number | undefined): void => {
    if (v !== undefined) ratios[key] = v;
  };
  for (const [label, rows] of [['throughput', o.throughput], ['unloaded', o.unloaded]] as const) {
    const [i, n] = [row(rows, 'ingress'), row(rows, 'nginx')];
    put(`${label}.rps`, ratio(i?.rps, n?.rps));
    put(`${label}.p50`, ratio(i?.latencyMs.p50, n?.latencyMs.p50));
    put(`${label}.p99`, ratio(i?.latencyMs.p99, n?.latencyMs.p99));
    put(`${label}.cpuEdge`, ratio(i?.cpuUsPerRequest.hops[0], n?.cpuUsPerRequest.hops[0]));
    put(`${label}.cpuPath`, ratio(i ? sum(i.cpuUsPerRequest.hops) : undefined, n ? sum(n.cpuUsPerRequest.hops) : undefined));
  }
  const [it, nt] = [clean(row(o.throughput, 'ingress')), clean(row(o.throughput, 'nginx'))];
  const why = (n: IngressPathName): string => shortReason(o.unavailable[n] ?? o.throughput.find((r) => r.path === n)?.skipped ?? 'not measured');
  const base: Omit<Target, 'ratio' | 'pass' | 'note' | 'ward' | 'reference'> = {
    key: 'throughput',
    name: 'HTTPS requests/s through the ingress into the mesh, ingress / nginx terminating TLS',
    limit: TARGET_THROUGHPUT,
    direction: 'min',
    unit: 'req/s',
  };
  const r = ratio(it?.rps, nt?.rps);
  let target: Target;
  if (r !== undefined && it && nt) target = { ...base, ward: it.rps, reference: nt.rps, ratio: r, pass: r >= TARGET_THROUGHPUT };
  else {
    const gone = new Map<string, string[]>();
    for (const [n, v] of [['ingress', it], ['nginx', nt]] as const) {
      if (v !== undefined) continue;
      const reason = row(o.throughput, n) ? 'the row had errors' : why(n);
      gone.set(reason, [...(gone.get(reason) ?? []), n]);
    }
    const note = [...gone].map(([reason, ns]) => `${ns.join(', ')}: ${reason}`).join('; ');
    target = { ...base, ...(it ? { ward: it.rps } : {}), ...(nt ? { reference: nt.rps } : {}), note: `not measured (${note || 'a row had errors'})` };
  }
  const targets = [target];
  const misses = targets.filter((t) => t.pass === false).map((t) => t.key);
  const notMeasured = targets.filter((t) => t.pass === undefined).map((t) => t.key);
  const notes = [...o.notes];
  for (const rows of [o.throughput, o.unloaded]) for (const x of rows) if (!x.skipped && x.errors > 0) notes.push(`${x.path}: ${x.errors} failed request(s) (${x.firstError ?? '?'}); its figures do not count toward the target`);
  const d = row(o.throughput, 'direct');
  const n = row(o.throughput, 'nginx');
  if (d && n && n.rps > 0.8 * d.rps) notes.push(`nginx reached ${Math.round((n.rps / d.rps) * 100)}% of the backend's own rate (direct): the backend, not nginx, may be what limits the nginx row`);
  return {
    bench: 'ingress',
    quick: o.quick,
    setup: {
      connections: o.plan.connections,
      rounds: o.plan.rounds,
      seconds: { throughput: o.plan.throughputS, unloaded: o.plan.unloadedS },
      generator: `wrk${o.wrkVersion ? ` ${o.wrkVersion}` : ''} -t1`,
      host: HOST,
      certificate: `self-signed EC P-256, subjectAltName DNS:${HOST} (openssl)`,
      tls: o.tls,
      ...(o.wardCli ? { wardCli: o.wardCli } : {}),
      ...(o.nginxVersion ? { nginx: o.nginxVersion } : {}),
      clkTck: o.clkTck,
      cpus: os.availableParallelism(),
    },
    unavailable: o.unavailable,
    throughput: o.throughput,
    unloaded: o.unloaded,
    memory: o.memory,
    wardCounters: o.wardCounters,
    ratios,
    targets,
    belowTarget: misses.length > 0 || notMeasured.length > 0,
    misses,
    notMeasured,
    notes,
    seconds: 0,
  };
}

// ---- report -----------------------------------------------------------------------------------

function rowsTable(rows: HttpRow<IngressPathName>[]): string[] {
  const header = ['path', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'CPU µs/req edge', 'mesh', 'path', 'kernel', 'off-main', 'cs/req', 'backend', 'errors'];
  const body = rows.map((r) => {
    if (r.skipped) return [r.path, r.skipped];
    const c = r.cpuUsPerRequest;
    const hops = c.hops;
    return [
      r.path, int(r.rps), f3(r.latencyMs.p50), f3(r.latencyMs.p90), f3(r.latencyMs.p99), f2(r.latencyMs.max),
      hops.length ? f1(hops[0]) : '-', hops.length > 1 ? f1(hops[1]) : '-', hops.length ? f1(sum(hops)) : '-',
      hops.length ? pct(c.sysShare) : '-', hops.length ? pct(c.otherThreadsShare) : '-', hops.length ? f2(c.switchesPerRequest) : '-', f1(c.backend), int(r.errors),
    ];
  });
  // A skipped row's reason may be long: print it after the path, not padded into the table.
  return [...table(header, body.filter((b) => b.length > 2)), ...body.filter((b) => b.length === 2).map(([p, why]) => `${p}: ${why}`)];
}

function ratioLine(r: IngressBenchResult, phase: string): string {
  const k = (s: string): string => x(r.ratios[`${phase}.${s}`]);
  return `  ingress/nginx: req/s ${k('rps')}, p50 ${k('p50')}, p99 ${k('p99')}, CPU/req edge ${k('cpuEdge')}, whole path ${k('cpuPath')}`;
}

/** The unavailable paths grouped by reason: [["ingress, nginx", "wrk is not installed ..."]]. */
function byReason(u: IngressBenchResult['unavailable']): [string, string][] {
  const groups = new Map<string, string[]>();
  for (const [p, why] of Object.entries(u)) if (why) groups.set(why, [...(groups.get(why) ?? []), p]);
  return [...groups].map(([why, paths]) => [paths.join(', '), why]);
}

/** The headline for bench/run.ts. */
export function ingressHeadline(r: IngressBenchResult): string {
  const k = (s: string): string => x(r.ratios[s]);
  const t = r.targets[0];
  const down = byReason(r.unavailable).map(([paths, why]) => `${paths} ${shortReason(why)}`);
  return (
    `ingress/nginx: rps ${t.ratio === undefined ? 'n/a' : x(t.ratio)} (>=${t.limit}), p99 ${k('throughput.p99')}, unloaded p99 ${k('unloaded.p99')}, CPU/req edge ${k('throughput.cpuEdge')}` +
    `${r.misses.length ? ` [missed: ${r.misses.join(', ')}]` : ''}${r.notMeasured.length ? ` [not measured: ${r.notMeasured.join(', ')}]` : ''}${down.length ? ` [${down.join('; ')}]` : ''}`
  );
}

export function formatIngressBench(r: IngressBenchResult): string {
  const s = r.setup;
  const tls = (['ingress', 'nginx'] as const).map((p) => `${p} ${s.tls[p] ?? '-'}`).join(', ');
  const m = r.memory;
  const out: string[] = [
    `ingress: ingress = client → ward ingress (HTTPS) → mTLS → ward proxy node-b (inbound) → backend; nginx = client → nginx (HTTPS) → backend (upstream keep-alive); direct = client → backend (plain HTTP: the backend's ceiling)`,
    `ward: ${s.wardCli ?? '-'}; nginx: ${s.nginx ?? '-'}; load: ${s.generator} to https://${s.host}:PORT/ (SNI and Host ${s.host}, HTTP/1.1 keep-alive); certificate: ${s.certificate}; negotiated: ${tls}`,
    `${s.cpus} cpu(s); CPU from /proc/<pid>/stat (${s.clkTck} ticks/s) per completed request: edge = the process terminating the client's TLS (ward ingress; nginx master + worker), mesh = ward proxy node-b (inbound), path = their sum;`,
    `  kernel = share of the path's CPU in the kernel (stime); off-main = share off the processes' main threads (Node: GC/compiler threads, libuv pool); cs/req = context switches per request per process`,
    '',
    `rounds: ${s.rounds} per phase, every path once per round in a rotating order; rates and percentiles = median over rounds, CPU = summed over rounds / requests summed`,
    '',
    `throughput: ${s.connections} connections, ${s.seconds.throughput} s per round, closed loop (p99 under saturation), after a warm-up`,
    ...rowsTable(r.throughput),
    ratioLine(r, 'throughput'),
    '',
    `unloaded: one connection, one request at a time, ${s.seconds.unloaded} s per round`,
    ...rowsTable(r.unloaded),
    ratioLine(r, 'unloaded'),
    '',
    `memory (RSS after the load): ward ingress ${f1(m.ingressMiB)} MiB, ward proxy node-b ${f1(m.wardProxyMiB)} MiB; nginx (master + worker) ${f1(m.nginxMiB)} MiB`,
    '',
    'target:',
    ...targetLines(r.targets),
  ];
  for (const c of r.wardCounters) {
    const series = Object.entries(c.series).filter(([, v]) => v > 0);
    if (series.length) out.push(`${c.process} counters at the end: ${series.map(([k, v]) => `${k.replace(/^ward_(ingress|proxy)_/, '')} ${int(v)}`).join(', ')}`);
  }
  for (const [paths, why] of byReason(r.unavailable)) out.push(`${paths}: ${why}`);
  for (const n of r.notes) out.push(`note: ${n}`);
  out.push(`${r.seconds.toFixed(1)} s in all`);
  return out.join('\n');
}
