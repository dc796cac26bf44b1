/**
 * bench/proxy: what Ward's node proxy costs on the request path, next to the same path with no
 * proxy and through nginx, all measured in one run on the same machine.
 *
 * Paths (every process is a real one, as a user runs it; traffic stays on 127.0.0.0/8):
 * - direct: client → backend (127.0.130.1).
 * - ward:   client → `ward proxy` node-a (outbound HTTP proxy 127.0.120.1:15001, absolute-form requests,
 *           CONNECT for the tunnel) → mTLS → `ward proxy` node-b (inbound 127.0.110.2:15008) → backend.
 *           A `ward control` (CA + discovery) runs from a ward.yaml written for the run; each proxy
 *           joins with a token from `ward token create`, as in the README.
 * - nginx:  client → nginx-1 (plain HTTP, 127.0.140.1) → mutual TLS 1.3 → nginx-2 (127.0.140.2) → backend,
 *           upstream keep-alive on both hops; the tunnel through both instances' `stream {}` proxies,
 *           also with mutual TLS between them. Two instances with one worker each, so a hop is one
 *           instance (master + worker). Otherwise nginx's defaults (buffers included: the stream
 *           proxy's 16k), plus what parity with Ward needs: TLS 1.3 only, no session resumption,
 *           upstream keep-alive without a request cap. nginx is optional: when it is not installed
 *           the nginx rows are skipped with the command that installs it.
 * Certificates for nginx are minted for the run from a root and intermediate made with core/pki;
 * nginx-2's server certificate is signed with openssl from the same intermediate, because nginx's
 * proxy_ssl_verify insists on a DNS name (it cannot match a SPIFFE URI) and LeafSigner writes URI
 * SANs only. Ward's proxies get theirs from their own CA, as in production.
 *
 * Phases, each in three interleaved rounds (one with --quick) that run every path once, in an order
 * that rotates per round, so the drift of a shared machine hits all paths alike; per path the rates
 * and latency percentiles are the median over rounds, the CPU figures the sum over rounds divided by
 * the requests (or MiB) summed:
 * - throughput: wrk, HTTP/1.1 keep-alive, a fixed number of connections (a Lua script sends the
 *   absolute-form request line to Ward's outbound); a warm-up run first.
 * - fixed rate: 1,000 requests/s open loop from bench/proxy-load.ts (latency from the scheduled send
 *   time, so no coordinated omission); a warm-up at the same rate first.
 * - unloaded: one connection, one request at a time (proxy-load.ts).
 * - tunnel: one TCP stream written as fast as the path takes it, timed by the sink's
 *   acknowledgements; Ward's through CONNECT sink.bench:9000, direct straight to the sink.
 * CPU: utime + stime from /proc/<pid>/stat (all threads) of each hop's processes, read before and
 * after each measured run, divided by the requests completed (or MiB delivered), with the share
 * spent in the kernel (stime: syscalls and the loopback TCP stack) and the share off the processes'
 * main threads ("off-main": for Node, V8's garbage-collector and compiler threads and libuv's pool),
 * and the context switches per request (/proc/<pid>/task/<tid>/status: how often the hop slept and
 * woke, which costs CPU of its own on a VM). The backend's CPU is shown too, as a check that it
 * does the same work on every path.
 * Memory: each `ward proxy`'s RSS after all the load, against an idle `node -e setInterval(...)`'s.
 *
 * Targets (the issue), each a ratio to nginx in the same run: CPU per request per hop ≤ 2.5× (at the
 * fixed rate, where every path does the same work per second); two-hop throughput ≥ 0.5×; latency
 * added per hop unloaded (p50 over direct, / 2) ≤ 1.5×; p99 at 1,000 rps ≤ 1.5×; tunnel ≥ 0.8×; and
 * proxy RSS ≤ 1.5× an empty Node process.
 *
 * Cleanup: every child is tracked and stopped (SIGTERM, then SIGKILL of its process tree) on the way
 * out, on error, and on SIGINT/SIGTERM (which then re-raises); the temp dir goes with it.
 * WARD_BENCH_PROXY_CPU_PROF=DIR runs the two `ward proxy` processes with --cpu-prof into DIR.
 */
import { spawn, fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { SpiffeId } from '../core/identity/index.js';
import { createIntermediate, createRoot, LeafSigner, PrivateKey } from '../core/pki/index.js';
import { BACKEND_ROLE_ENV, type FromBackend, type ToBackend } from './proxy-backend.js';
import {
  LOAD_ROLE_ENV,
  type CheckResult,
  type ClosedResult,
  type FromLoad,
  type HttpTarget,
  type LoadCommand,
  type RateResult,
  type ToLoad,
  type TunnelResult,
  type TunnelTarget,
} from './proxy-load.js';

export interface ProxyBenchOptions {
  /** Short phases: a smoke test that the benchmark still runs, not a measurement. */
  quick?: boolean;
  /** Progress lines (not results); the runner sends them to stderr. */
  progress?: (line: string) => void;
}

export type PathName = 'direct' | 'ward' | 'nginx';

/** One path in one HTTP phase. Latencies in ms; CPU in µs of CPU time per completed request. */
export interface HttpRow<P extends string = PathName> {
  path: P;
  /** Why there is no measurement (the path could not be set up, or this phase failed on it). */
  skipped?: string;
  /** Rounds measured: rates and percentiles are the median over them (max: the largest); CPU is summed over them / requests summed. */
  rounds: number;
  requests: number;
  errors: number;
  firstError?: string;
  rps: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** Fixed-rate phase only: from the actual send, and how late sends left their schedule. */
  serviceP99Ms?: number;
  dispatchLagP99Ms?: number;
  /** Per hop (outbound/first, inbound/second), their mean, and the backend's. */
  cpuUsPerRequest: {
    hops: number[];
    mean: number;
    /** Of the hops' CPU, the share in the kernel (stime). */
    sysShare: number;
    /** Of the hops' CPU, the share outside the processes' main threads (Node: V8's GC and compiler threads, libuv's pool). */
    otherThreadsShare: number;
    /** Context switches (sleeps and wake-ups, all threads) per request, mean over the hops. */
    switchesPerRequest: number;
    backend: number;
  };
}

export interface TunnelRow {
  path: PathName;
  skipped?: string;
  /** Rounds measured (the figures: median MB/s over them; CPU summed over them / MiB summed). */
  rounds: number;
  /** 10^6 bytes per second delivered to the sink. */
  mbPerSecond: number;
  windowSeconds: number;
  /** µs of CPU per MiB delivered, per hop and their mean. */
  cpuUsPerMiB: { hops: number[]; mean: number; sysShare: number; otherThreadsShare: number };
}

export interface Target {
  /** Short name: cpu, throughput, added-latency, p99, tunnel, memory. */
  key: string;
  name: string;
  /** Ward's figure over nginx's (or over the empty Node process's, for memory). */
  ratio?: number;
  limit: number;
  direction: 'max' | 'min';
  ward?: number;
  reference?: number;
  unit: string;
  /** undefined: not measured (see note). */
  pass?: boolean;
  note?: string;
}

export interface ProxyBenchResult {
  bench: 'proxy';
  quick: boolean;
  setup: {
    connections: number;
    rate: number;
    /** Each phase runs every path once per round; `seconds` are per round. */
    rounds: number;
    seconds: { throughput: number; rate: number; unloaded: number; tunnel: number };
    throughputGenerator: string;
    wardCli?: string;
    nginx?: string;
    clkTck: number;
    cpus: number;
  };
  /** Why a path (or its tunnel) was not run: { ward: "could not run: ..." }. */
  unavailable: Partial<Record<PathName | 'nginx-tunnel', string>>;
  throughput: HttpRow[];
  fixedRate: HttpRow[];
  unloaded: HttpRow[];
  /** Unloaded p50 over direct's, divided by the number of hops (2). */
  addedLatencyPerHopMs: Partial<Record<PathName, number>>;
  tunnel: TunnelRow[];
  /** RSS: the empty Node process, each `ward proxy` before the load (ready, one request served) and after it, each nginx instance after it. */
  memory: { emptyNodeMiB: number; wardProxyIdleMiB: number[]; wardProxyMiB: number[]; nginxInstanceMiB: number[] };
  /** Each `ward proxy`'s ward_proxy_*_total counters at the end (its admin /metrics), for diagnosis. */
  wardCounters: { proxy: string; series: Record<string, number> }[];
  ratios: { wardOverDirect: Record<string, number>; wardOverNginx: Record<string, number> };
  targets: Target[];
  /** Some target missed, or could not be measured. */
  belowTarget: boolean;
  /** Keys of the targets measured and missed. */
  misses: string[];
  /** Keys of the targets that could not be measured (a path missing or failing). */
  notMeasured: string[];
  notes: string[];
  seconds: number;
}

/** Durations are per round; each phase runs every path once per round. */
interface Plan {
  rounds: number;
  connections: number;
  warmupS: number;
  throughputS: number;
  rate: number;
  rateWarmupMs: number;
  rateMs: number;
  unloadedWarmupMs: number;
  unloadedMs: number;
  unloadedMax: number;
  tunnelWarmupMs: number;
  tunnelMs: number;
  maxSeconds: number;
}

// Full: three interleaved rounds, about 100 s of phases plus ~10 s of setup. wrk takes whole seconds only.
const FULL: Plan = {
  rounds: 3,
  connections: 32,
  warmupS: 2,
  throughputS: 3,
  rate: 1000,
  rateWarmupMs: 500,
  rateMs: 3_300,
  unloadedWarmupMs: 200,
  unloadedMs: 1_300,
  unloadedMax: 100_000,
  tunnelWarmupMs: 300,
  tunnelMs: 1_700,
  maxSeconds: 420,
};
const QUICK: Plan = {
  ...FULL,
  rounds: 1,
  warmupS: 1,
  throughputS: 1,
  rateWarmupMs: 300,
  rateMs: 1_000,
  unloadedWarmupMs: 200,
  unloadedMs: 800,
  tunnelWarmupMs: 300,
  tunnelMs: 700,
  maxSeconds: 180,
};

const TARGETS = { cpu: 2.5, throughput: 0.5, addedLatency: 1.5, p99: 1.5, tunnel: 0.8, memory: 1.5 } as const;

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const HERE = fileURLToPath(new URL('.', import.meta.url));
export const TD = 'bench.ward.test';
export const MiB = 1024 * 1024;

/**
 * Loopback addresses: the mesh's (ward.yaml) and nginx's. Not the example mesh's (127.0.10.x,
 * 127.0.20.x, 127.0.30.x, what `ward up` and hand-run proxies use): Ward's ports are fixed (15001,
 * 15008), so a proxy someone runs by hand on the same machine would otherwise take them.
 */
export const ADDR = {
  nodeA: '127.0.110.1',
  nodeB: '127.0.110.2',
  client: '127.0.120.1',
  server: '127.0.130.1',
  nginx1: '127.0.140.1',
  nginx2: '127.0.140.2',
} as const;
/** Ward's fixed ports: the outbound listener per workload and the inbound per node. */
const WARD_OUTBOUND_PORT = 15001;
export const SERVICE_HTTP_PORT = 80;
const SERVICE_SINK_PORT = 9000;

/** When set, the `ward proxy` children run under `node --cpu-prof --cpu-prof-dir=$VALUE`. */
const CPU_PROF_ENV = 'WARD_BENCH_PROXY_CPU_PROF';

const INSTALL_NGINX = 'apt-get update && apt-get install -y nginx libnginx-mod-stream';

// ---- processes --------------------------------------------------------------------------------

/** Every process this benchmark started, so that each one is stopped on every way out. */
export class Children {
  readonly #all = new Set<ChildProcess>();

  track<T extends ChildProcess>(c: T): T {
    this.#all.add(c);
    c.once('exit', () => this.#all.delete(c));
    return c;
  }

  /** Synchronous (usable from 'exit' and signal handlers): SIGKILL to each child's process tree. */
  killAllNow(): void {
    for (const c of this.#all) if (c.pid !== undefined) for (const pid of processTree(c.pid).reverse()) safeKill(pid, 'SIGKILL');
    this.#all.clear();
  }

  /** SIGTERM to each, then SIGKILL to the trees of those still running after graceMs. */
  async stopAll(graceMs: number): Promise<void> {
    const alive = [...this.#all].filter(isRunning);
    await Promise.all(alive.map((c) => stopChild(c, graceMs)));
    this.killAllNow();
  }
}

export function isRunning(c: ChildProcess): boolean {
  return c.exitCode === null && c.signalCode === null;
}

function safeKill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

async function stopChild(c: ChildProcess, graceMs: number): Promise<void> {
  if (!isRunning(c) || c.pid === undefined) return;
  // The tree first: nginx's worker would outlive a SIGKILLed master.
  const tree = processTree(c.pid);
  const exited = once(c, 'exit').catch(() => undefined);
  c.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
  clearTimeout(timer);
  for (const pid of tree.reverse()) safeKill(pid, 'SIGKILL');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 1_000))]);
}

/** pid and all its descendants (from /proc/<pid>/task/<tid>/children), parent first. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number, depth: number): void => {
    out.push(p);
    if (depth > 4) return;
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const t of tasks) {
      let kids = '';
      try {
        kids = readFileSync(`/proc/${p}/task/${t}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const k of kids.split(' ').filter(Boolean)) walk(Number(k), depth + 1);
    }
  };
  walk(pid, 0);
  return out;
}

/**
 * utime and stime of a process (all its threads), in clock ticks; zeros when it is gone. With
 * `mainThread`, of its main thread only (/proc/<pid>/task/<pid>/stat).
 */
export function cpuTicks(pid: number, mainThread = false): { user: number; sys: number } {
  try {
    const stat = readFileSync(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: Number(f[11]), sys: Number(f[12]) };
  } catch {
    return { user: 0, sys: 0 };
  }
}

/** Context switches (voluntary + involuntary) of every thread of a process: about how often it slept and woke. */
export function contextSwitches(pid: number): number {
  let n = 0;
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  for (const t of tasks) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      for (const m of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)) n += Number(m[1]);
    } catch {
      // the thread ended
    }
  }
  return n;
}

export function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

const TAIL_BYTES = 16_384;

/** A long-running child whose output is kept (a bounded tail) for error messages and start-up lines. */
export class Service {
  readonly proc: ChildProcess;
  #tail = '';
  #search = '';
  #waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  constructor(
    readonly name: string,
    children: Children,
    command: string,
    args: string[],
    opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
  ) {
    this.proc = children.track(spawn(command, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] }));
    const onData = (d: Buffer): void => {
      const s = d.toString('utf8');
      this.#tail = (this.#tail + s).slice(-TAIL_BYTES);
      if (this.#waiters.length === 0) return;
      this.#search = (this.#search + s).slice(-4 * TAIL_BYTES);
      for (const w of [...this.#waiters]) {
        const m = this.#search.match(w.re);
        if (m) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    };
    this.proc.stdout!.on('data', onData);
    this.proc.stderr!.on('data', onData);
    this.proc.on('error', (err) => (this.#tail += `\n[${name}: ${err.message}]`));
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  tail(lines = 12): string {
    return this.#tail.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** Resolves with the first match of `re` in the output; rejects on exit or after timeoutMs. */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    const already = this.#tail.match(re);
    if (already) return Promise.resolve(already);
    this.#search = this.#tail;
    return new Promise((resolve, reject) => {
      const w = { re, resolve: (m: RegExpMatchArray) => (cleanup(), resolve(m)) };
      const onExit = (code: number | null, signal: string | null): void => {
        cleanup();
        reject(new Error(`${this.name} exited (${code ?? signal}) before printing what was expected:\n${this.tail()}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name} did not print what was expected within ${timeoutMs} ms:\n${this.tail()}`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.proc.off('exit', onExit);
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
      };
      this.#waiters.push(w);
      this.proc.once('exit', onExit);
      if (!isRunning(this.proc)) onExit(this.proc.exitCode, this.proc.signalCode);
    });
  }
}

export interface RunOutput {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Set when the command could not be started at all (e.g. ENOENT). */
  spawnError?: NodeJS.ErrnoException;
}

/** Runs a command to completion, bounded by timeoutMs (then SIGKILL); output capped at 4 MiB. */
export function runCommand(children: Children, command: string, args: string[], opts: { timeoutMs: number; cwd?: string; env?: NodeJS.ProcessEnv }): Promise<RunOutput> {
  return new Promise((resolve) => {
    const c = children.track(spawn(command, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    c.stdout!.on('data', (d: Buffer) => (stdout = (stdout + d.toString('utf8')).slice(-4 * MiB)));
    c.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-4 * MiB)));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${opts.timeoutMs} ms]`;
      if (c.pid !== undefined) for (const pid of processTree(c.pid).reverse()) safeKill(pid, 'SIGKILL');
    }, opts.timeoutMs);
    c.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr, spawnError: err });
    });
    c.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A free TCP port on host (bound and released: another process could take it first, unlikely on these addresses). */
export async function freePort(host: string): Promise<number> {
  const s = createServer();
  s.listen(0, host);
  await once(s, 'listening');
  const { port } = s.address() as { port: number };
  s.close();
  await once(s, 'close');
  return port;
}

/** Resolves once host:port accepts a connection; rejects after timeoutMs. Polls every 50 ms. */
export async function waitForPort(host: string, port: number, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error(`the process meant to listen on ${host}:${port} exited`);
    if (performance.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---- helper processes (IPC) -------------------------------------------------------------------

/** The load generator process (bench/proxy-load.ts): one command at a time. */
class LoadClient {
  readonly #child: ChildProcess;
  #next = 1;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  constructor(children: Children) {
    // Same loader flags (--import tsx) as this process; stdout ignored so --json stays clean.
    this.#child = children.track(
      fork(join(HERE, 'proxy-load.ts'), [], { execArgv: process.execArgv, env: { ...process.env, [LOAD_ROLE_ENV]: '1' }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }),
    );
    this.#child.on('message', (m: FromLoad) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(m.message));
    });
    this.#child.on('exit', (code, signal) => {
      for (const p of this.#pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`the load generator exited (${code ?? signal})`));
      }
      this.#pending.clear();
    });
  }

  run<T>(cmd: LoadCommand, timeoutMs: number): Promise<T> {
    if (!isRunning(this.#child)) return Promise.reject(new Error('the load generator is not running'));
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`load generator: ${cmd.t} gave no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.#child.send({ id, cmd } satisfies ToLoad);
    });
  }
}

export async function startBackend(children: Children): Promise<{ pid: number; httpPort: number; sinkPort: number }> {
  const child = children.track(
    fork(join(HERE, 'proxy-backend.ts'), [], { execArgv: process.execArgv, env: { ...process.env, [BACKEND_ROLE_ENV]: '1' }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }),
  );
  const ready = new Promise<FromBackend>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the backend did not start within 15 s')), 15_000);
    child.once('message', (m: FromBackend) => (clearTimeout(timer), resolve(m)));
    child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`the backend exited (${code})`))));
  });
  child.send({ t: 'start', host: ADDR.server } satisfies ToBackend);
  const m = await ready;
  if (m.t === 'error') throw new Error(`the backend could not listen on ${ADDR.server}: ${m.message}`);
  return { pid: child.pid!, httpPort: m.httpPort, sinkPort: m.sinkPort };
}

// ---- paths ------------------------------------------------------------------------------------

export interface Hop {
  label: string;
  /** The hop's processes (nginx: master + worker), fixed once the hop is up. */
  pids: number[];
}

export interface PathSetup<P extends string = PathName> {
  name: P;
  hops: Hop[];
  http: HttpTarget;
  /** What wrk is pointed at, and its Lua script (absolute-form request for an HTTP proxy). */
  wrkUrl: string;
  wrkScript: string;
  tunnel?: TunnelTarget;
  /** Why the tunnel cannot run on this path. */
  tunnelSkipped?: string;
}

/**
 * wrk's Lua script for a path: the request (and Host header) of `target`, a done() that prints the
 * figures as one JSON line. With `connectTo`, wrk connects there instead of resolving the URL's
 * host, which still names the TLS server (SNI) and the Host header: wrk has no --resolve.
 */
export function wrkScript(dir: string, name: string, target: HttpTarget, connectTo?: { host: string; port: number }): string {
  const file = join(dir, `wrk-${name}.lua`);
  const q = (s: string): string => JSON.stringify(s); // a JSON string is a valid Lua string literal here (ASCII)
  writeFileSync(
    file,
    [
      '-- generated by bench/proxy.ts',
      'wrk.method = "GET"',
      `wrk.path = ${q(target.path)}`,
      ...(target.host ? [`wrk.headers["Host"] = ${q(target.host)}`] : []),
      ...(connectTo ? ['function wrk.resolve(host, service)', `  wrk.addrs = wrk.lookup(${q(connectTo.host)}, ${q(String(connectTo.port))})`, 'end'] : []),
      'function done(summary, latency, requests)',
      '  local e = summary.errors',
      '  io.write(string.format(\'WRKJSON {"requests":%.0f,"durationUs":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f}\\n\',',
      '    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,',
      '    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))',
      'end',
      '',
    ].join('\n'),
  );
  return file;
}

/** A root and intermediate from core/pki (as test/helpers/pki.ts mints them), keeping the intermediate's key for openssl. */
function mintHierarchy(): { bundlePem: string; intermediatePem: string; intermediateKeyPem: string; leaf: (id: SpiffeId) => { chainPem: string; keyPem: string } } {
  const now = Date.now();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 6 * 3_600_000);
  const rootKey = PrivateKey.generate();
  const root = createRoot({ key: rootKey, trustDomain: TD, notBefore, notAfter });
  const intKey = PrivateKey.generate();
  const intermediate = createIntermediate({ issuer: { cert: root, key: rootKey }, publicKey: intKey.publicKey, trustDomain: TD, notBefore, notAfter });
  const signer = new LeafSigner({ cert: intermediate, key: intKey });
  return {
    bundlePem: root.pem,
    intermediatePem: intermediate.pem,
    intermediateKeyPem: intKey.exportPem(),
    leaf(id) {
      const key = PrivateKey.generate();
      const cert = signer.sign({ publicKeyDer: key.publicKeyDer(), id, notBefore, notAfter });
      return { chainPem: cert.pem() + intermediate.pem, keyPem: key.exportPem() };
    },
  };
}

interface NginxChain {
  path: PathSetup;
  version: string;
}

export function nginxConf(o: { dir: string; streamModule?: string; http: string; stream?: string }): string {
  const tmp = join(o.dir, 'tmp');
  return `# generated by bench/proxy.ts
daemon off;
master_process on;
worker_processes 1;
${process.getuid?.() === 0 ? '# as root the worker would switch to nobody, who cannot enter the 0700 temp dir\nuser root root;' : ''}
pid ${o.dir}/nginx.pid;
error_log ${o.dir}/error.log warn;
${o.streamModule ? `load_module ${o.streamModule};` : ''}
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${tmp}/body;
  proxy_temp_path ${tmp}/proxy;
  fastcgi_temp_path ${tmp}/fastcgi;
  uwsgi_temp_path ${tmp}/uwsgi;
  scgi_temp_path ${tmp}/scgi;
  keepalive_timeout 600s;
  keepalive_requests 100000000;
${o.http}
}
${o.stream ? `stream {\n${o.stream}\n}` : ''}
`;
}

/** nginx's version and `nginx -V` output (its configure arguments); or why there is none, with the command that installs it. */
export async function detectNginx(children: Children, install: string): Promise<{ version: string; configure: string } | string> {
  const v = await runCommand(children, 'nginx', ['-V'], { timeoutMs: 10_000 });
  if (v.spawnError) return `nginx is not installed (${v.spawnError.code}); to include the nginx rows run: ${install}`;
  return { version: /nginx version: (\S+)/.exec(v.stderr)?.[1] ?? 'nginx (unknown version)', configure: v.stderr };
}

/**
 * Starts one nginx instance (master + one worker) from `conf` in its own directory `d` (made here,
 * with its temp dirs), after `nginx -t`; resolves with its processes once every port in `ports`
 * on `host` accepts connections and the worker is forked, or with why it could not start.
 */
export async function runNginx(o: { children: Children; d: string; name: string; conf: string; host: string; ports: number[] }): Promise<Hop | string> {
  const { children, d, name } = o;
  mkdirSync(join(d, 'tmp'), { recursive: true, mode: 0o700 });
  writeFileSync(join(d, 'nginx.conf'), o.conf);
  const args = ['-p', d, '-c', join(d, 'nginx.conf'), '-e', join(d, 'error.log')];
  const t = await runCommand(children, 'nginx', ['-t', ...args], { timeoutMs: 15_000 });
  if (t.code !== 0) return `${name}'s configuration was refused (nginx -t): ${t.stderr.trim().split('\n').slice(-3).join(' / ')}`;
  const svc = new Service(name, children, 'nginx', args);
  try {
    for (const port of o.ports) await waitForPort(o.host, port, 10_000, () => isRunning(svc.proc));
  } catch (err) {
    let log = '';
    try {
      log = readFileSync(join(d, 'error.log'), 'utf8').trim().split('\n').slice(-3).join(' / ');
    } catch {
      // no log
    }
    return `${name} did not start: ${(err as Error).message}${log ? `; error.log: ${log}` : ''}${svc.tail() ? `; output: ${svc.tail(3)}` : ''}`;
  }
  // The worker is forked after the listeners are bound; it shows as the master's child.
  const deadline = performance.now() + 5_000;
  let pids = processTree(svc.pid);
  while (pids.length < 2 && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    pids = processTree(svc.pid);
  }
  return { label: name, pids };
}

async function startNginx(o: { children: Children; dir: string; backendPort: number; sinkPort: number; progress: (s: string) => void; notes: string[] }): Promise<NginxChain | string> {
  const { children, dir } = o;
  const detected = await detectNginx(children, INSTALL_NGINX);
  if (typeof detected === 'string') return detected;
  const { version, configure } = detected;
  // The stream module: built in (--with-stream), a dynamic module (--with-stream=dynamic), or absent.
  let streamModule: string | undefined;
  let streamMissing: string | undefined;
  if (/--with-stream=dynamic\b/.test(configure)) {
    const prefix = /--prefix=(\S+)/.exec(configure)?.[1] ?? '/usr/share/nginx';
    streamModule = ['/usr/lib/nginx/modules/ngx_stream_module.so', '/usr/share/nginx/modules/ngx_stream_module.so', join(prefix, 'modules/ngx_stream_module.so')].find((f) => {
      try {
        return statSync(f).isFile();
      } catch {
        return false;
      }
    });
    if (!streamModule) streamMissing = 'the nginx stream module is not installed; for the nginx tunnel row run: apt-get install -y libnginx-mod-stream';
  } else if (!/--with-stream\b/.test(configure)) streamMissing = `${version} is built without the stream module; the nginx tunnel row needs one that has it`;

  o.progress(`proxy: starting two nginx instances (${version}), mutual TLS 1.3 between them`);
  const pki = mintHierarchy();
  const certs = join(dir, 'nginx-certs');
  mkdirSync(certs, { mode: 0o700 });
  const file = (name: string, text: string, mode = 0o644): string => {
    const f = join(certs, name);
    writeFileSync(f, text, { mode });
    return f;
  };
  const bundle = file('bundle.pem', pki.bundlePem);
  const client = pki.leaf(SpiffeId.parse(`spiffe://${TD}/ns/bench/sa/client`));
  const clientCrt = file('client.crt', client.chainPem);
  const clientKey = file('client.key', client.keyPem, 0o600);
  // nginx-2's server certificate: the same SPIFFE ID plus DNS:server.bench, for proxy_ssl_verify (see the header).
  const intCrt = file('intermediate.crt', pki.intermediatePem);
  const intKey = file('intermediate.key', pki.intermediateKeyPem, 0o600);
  const serverKey = file('server.key', PrivateKey.generate().exportPem(), 0o600);
  const ext = file('server.ext', [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth,clientAuth',
    `subjectAltName=URI:spiffe://${TD}/ns/bench/sa/server,DNS:server.bench`,
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid',
    '',
  ].join('\n'));
  const csr = join(certs, 'server.csr');
  const leafPem = join(certs, 'server.leaf.pem');
  for (const args of [
    ['req', '-new', '-key', serverKey, '-subj', '/CN=server.bench', '-out', csr],
    ['x509', '-req', '-in', csr, '-CA', intCrt, '-CAkey', intKey, '-set_serial', `0x${Date.now().toString(16)}`, '-days', '1', '-sha256', '-extfile', ext, '-out', leafPem],
  ]) {
    const r = await runCommand(children, 'openssl', args, { timeoutMs: 15_000 });
    if (r.code !== 0) return `could not mint nginx-2's certificate with openssl ${args[0]}: ${r.spawnError?.message ?? r.stderr.trim()}`;
  }
  const serverCrt = file('server.crt', readFileSync(leafPem, 'utf8') + pki.intermediatePem);
  rmSync(intKey);

  const [p1, t1, p2, t2] = [await freePort(ADDR.nginx1), await freePort(ADDR.nginx1), await freePort(ADDR.nginx2), await freePort(ADDR.nginx2)];
  const clientTls = (p: string): string =>
    [
      `${p}_ssl_certificate ${clientCrt};`,
      `${p}_ssl_certificate_key ${clientKey};`,
      `${p}_ssl_trusted_certificate ${bundle};`,
      `${p}_ssl_verify on;`,
      `${p}_ssl_verify_depth 2;`,
      `${p}_ssl_name server.bench;`,
      `${p}_ssl_protocols TLSv1.3;`,
      // Ward's mesh connections never resume sessions; neither do these (a full handshake per connection).
      `${p}_ssl_session_reuse off;`,
    ].join('\n      ');
  const serverTls = [
    `ssl_certificate ${serverCrt};`,
    `ssl_certificate_key ${serverKey};`,
    'ssl_protocols TLSv1.3;',
    `ssl_client_certificate ${bundle};`,
    'ssl_verify_client on;',
    'ssl_verify_depth 2;',
    'ssl_session_tickets off;',
  ].join('\n    ');
  const upstreamKeepalive = 'keepalive 256; keepalive_requests 100000000; keepalive_timeout 600s;';
  const hop1 = nginxConf({
    dir: join(dir, 'nginx-1'),
    streamModule: streamMissing ? undefined : streamModule,
    http: `  upstream hop2 { server ${ADDR.nginx2}:${p2}; ${upstreamKeepalive} }
  server {
    listen ${ADDR.nginx1}:${p1};
    location / {
      proxy_pass https://hop2;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      ${clientTls('proxy')}
    }
  }`,
    stream: streamMissing ? undefined : `  server {
    listen ${ADDR.nginx1}:${t1};
    proxy_pass ${ADDR.nginx2}:${t2};
    proxy_ssl on;
      ${clientTls('proxy')}
  }`,
  });
  const hop2 = nginxConf({
    dir: join(dir, 'nginx-2'),
    streamModule: streamMissing ? undefined : streamModule,
    http: `  upstream backend { server ${ADDR.server}:${o.backendPort}; ${upstreamKeepalive} }
  server {
    listen ${ADDR.nginx2}:${p2} ssl;
    ${serverTls}
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }`,
    stream: streamMissing ? undefined : `  server {
    listen ${ADDR.nginx2}:${t2} ssl;
    ${serverTls}
    proxy_pass ${ADDR.server}:${o.sinkPort};
  }`,
  });

  const hops: Hop[] = [];
  for (const [i, conf] of [hop1, hop2].entries()) {
    const [host, ports] = i === 0 ? [ADDR.nginx1, [p1, ...(streamMissing ? [] : [t1])]] : [ADDR.nginx2, [p2, ...(streamMissing ? [] : [t2])]];
    const hop = await runNginx({ children, d: join(dir, `nginx-${i + 1}`), name: `nginx-${i + 1}`, conf, host, ports });
    if (typeof hop === 'string') return hop;
    hops.push(hop);
  }
  if (streamMissing) o.notes.push(`nginx tunnel: ${streamMissing}`);
  const http: HttpTarget = { origin: `http://${ADDR.nginx1}:${p1}`, path: '/' };
  return {
    version,
    path: {
      name: 'nginx',
      hops,
      http,
      wrkUrl: `${http.origin}/`,
      wrkScript: wrkScript(dir, 'nginx', http),
      ...(streamMissing ? { tunnelSkipped: streamMissing } : { tunnel: { host: ADDR.nginx1, port: t1 } }),
    },
  };
}

// ---- Ward -------------------------------------------------------------------------------------

export interface WardCli {
  command: string;
  prefix: string[];
  label: string;
}

/** How to run the `ward` command: the build in dist/ when it is current, else through tsx. `tag` prefixes the progress line. */
export async function wardCommand(children: Children, progress: (s: string) => void, notes: string[], tag = 'proxy'): Promise<WardCli> {
  const tsx = { command: process.execPath, prefix: ['--import', 'tsx', join(ROOT, 'cli/main.ts')], label: 'node --import tsx cli/main.ts' };
  const dist = { command: process.execPath, prefix: [join(ROOT, 'dist/cli/main.js')], label: 'node dist/cli/main.js' };
  const newestSource = (): number => {
    let newest = 0;
    const walk = (d: string): void => {
      let entries: string[] = [];
      try {
        entries = readdirSync(d);
      } catch {
        return;
      }
      for (const e of entries) {
        const f = join(d, e);
        const s = statSync(f);
        if (s.isDirectory()) walk(f);
        else if (e.endsWith('.ts') && !e.endsWith('.test.ts')) newest = Math.max(newest, s.mtimeMs);
      }
    };
    for (const d of ['core', 'ca', 'discovery', 'proxy', 'ingress', 'cli']) walk(join(ROOT, d));
    return newest;
  };
  const distTime = (): number => {
    try {
      return statSync(join(ROOT, 'dist/cli/main.js')).mtimeMs;
    } catch {
      return 0;
    }
  };
  if (distTime() >= newestSource()) return dist;
  progress(`${tag}: dist/ is older than the sources; npm run build`);
  const b = await runCommand(children, 'npm', ['run', '-s', 'build'], { timeoutMs: 240_000 });
  if (b.code === 0 && distTime() >= newestSource()) return dist;
  // tsx loads the same code; its loader thread adds some memory to each process (see the memory note).
  notes.push(`ward: npm run build failed, so ward ran through tsx (its loader adds memory): ${(b.stdout + b.stderr).trim().split('\n').slice(0, 3).join(' / ')}`);
  return tsx;
}

/** The bench mesh's ward.yaml; `extra` (top-level YAML, e.g. an `ingress:` section) is appended. */
export function wardYaml(o: { httpPort: number; sinkPort: number; extra?: string }): string {
  return `# generated by bench/proxy.ts
apiVersion: ward.dev/v1alpha1
kind: Mesh
trustDomain: ${TD}

nodes:
  - {name: node-a, address: ${ADDR.nodeA}}
  - {name: node-b, address: ${ADDR.nodeB}}

workloads:
  - {name: client-1, namespace: bench, serviceAccount: client, node: node-a, address: ${ADDR.client}, ports: [8080], labels: {app: client}}
  - {name: server-1, namespace: bench, serviceAccount: server, node: node-b, address: ${ADDR.server}, ports: [${o.httpPort}, ${o.sinkPort}], labels: {app: server}}

services:
  - name: server
    namespace: bench
    ports: [{name: http, port: ${SERVICE_HTTP_PORT}, targetPort: ${o.httpPort}, protocol: http}]
    selector: {app: server}
  - name: sink
    namespace: bench
    ports: [{name: tcp, port: ${SERVICE_SINK_PORT}, targetPort: ${o.sinkPort}, protocol: tcp}]
    selector: {app: server}
${o.extra ? `\n${o.extra}` : ''}`;
}

interface WardChain {
  path: PathSetup;
  proxies: Service[];
  /** Each proxy's admin base URL (same order as proxies). */
  admins: string[];
  cli: string;
}

/** A running `ward control` (from a ward.yaml written for the run), the trust bundle and join tokens. */
export interface WardControl {
  cli: WardCli;
  /** Runs a `ward` subcommand to completion. */
  ward: (args: string[], timeoutMs?: number) => Promise<RunOutput>;
  caUrl: string;
  discoveryUrl: string;
  bundleFile: string;
  /** One join token per entry of `tokens`, in order. */
  tokens: string[];
}

/**
 * Starts `ward control --init` (CA + discovery on loopback, ports chosen by the system) from `yaml`
 * in `dir`, writes the trust bundle and creates the join tokens (`ward token create` arguments, one
 * list per token: ['--node', 'node-a'], ['--ingress']). While the control plane starts, each of
 * `commands` (`ward X --help`) must succeed. Resolves with the control plane, or why it could not run.
 */
export async function startWardControl(o: {
  children: Children;
  dir: string;
  yaml: string;
  commands: string[];
  tokens: string[][];
  progress: (s: string) => void;
  /** The progress line once the command is known, given its label. */
  starting: (cliLabel: string) => string;
  notes: string[];
  tag?: string;
}): Promise<WardControl | string> {
  const { children, dir, progress } = o;
  const cli = await wardCommand(children, progress, o.notes, o.tag);
  const ward = (args: string[], timeoutMs = 30_000): Promise<RunOutput> => runCommand(children, cli.command, [...cli.prefix, ...args], { timeoutMs });
  progress(o.starting(cli.label));
  const state = join(dir, 'ward-state');
  const config = join(dir, 'ward.yaml');
  writeFileSync(config, o.yaml);
  // Each ward invocation takes about a second to load, so what can overlap does: the control plane
  // starts while `X --help` says whether the command exists at all.
  const control = new Service('ward control', children, cli.command, [
    ...cli.prefix, 'control', '--state', state, '--config', config, '--init',
    '--listen', '127.0.0.1:0', '--discovery', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'warn',
  ]);
  const controlUp = control.waitFor(/ward control: CA (https:\/\/\S+)\s+discovery (https:\/\/\S+)\s+admin/, 60_000);
  controlUp.catch(() => undefined);
  const helps = await Promise.all(o.commands.map((c) => ward([c, '--help'])));
  for (const [i, help] of helps.entries()) {
    const c = o.commands[i];
    if (help.code !== 0) return `could not run: \`ward ${c}\` is not available (${cli.label} ${c} --help: ${(help.stderr || help.stdout).trim().split('\n')[0]})`;
  }
  let caUrl: string;
  let discoveryUrl: string;
  try {
    const m = await controlUp;
    [caUrl, discoveryUrl] = [m[1], m[2]];
  } catch (err) {
    return `could not run: ward control did not start: ${(err as Error).message}`;
  }
  // The bundle beside the tokens; the tokens one after the other (each appends to the CA's state).
  const bundleRun = ward(['ca', 'bundle', '--state', state]);
  const tokens: string[] = [];
  for (const args of o.tokens) {
    const tok = await ward(['token', 'create', '--state', state, ...args]);
    if (tok.code !== 0) return `could not run: ward token create ${args.join(' ')}: ${tok.stderr.trim()}`;
    tokens.push(tok.stdout.trim());
  }
  const bundle = await bundleRun;
  if (bundle.code !== 0) return `could not run: ward ca bundle: ${bundle.stderr.trim()}`;
  const bundleFile = join(dir, 'bundle.pem');
  writeFileSync(bundleFile, bundle.stdout);
  return { cli, ward, caUrl, discoveryUrl, bundleFile, tokens };
}

/** Node flags for the `ward proxy` children: --cpu-prof into $WARD_BENCH_PROXY_CPU_PROF when set. */
function wardProxyNodeFlags(): string[] {
  // Node flags, not NODE_OPTIONS (which refuses --cpu-prof); the profile is written on a clean exit (SIGTERM).
  const profDir = process.env[CPU_PROF_ENV];
  return profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
}

/** Starts `ward proxy` for a node of the bench mesh (its state in dir/NODE, admin on its address, port 0). */
export function spawnWardProxy(children: Children, ctl: WardControl, o: { dir: string; node: string; address: string; token: string; nodeFlags?: string[] }): Service {
  const { cli } = ctl;
  return new Service(`ward proxy ${o.node}`, children, cli.command, [
    ...(o.nodeFlags ?? []), ...cli.prefix, 'proxy', '--node', o.node, '--address', o.address, '--trust-domain', TD, '--ca', ctl.caUrl, '--discovery', ctl.discoveryUrl,
    '--bundle', ctl.bundleFile, '--token', o.token, '--state', join(o.dir, o.node), '--admin', `${o.address}:0`, '--log-level', 'warn',
  ]);
}

/**
 * Waits for a Ward process's start-up line (`started`, whose named group `admin` is the admin base
 * URL), then until its admin /readyz answers 200 (bounded poll). Resolves with the admin URL and
 * the line's match, or with why it is not ready.
 */
export async function awaitAdminReady(p: Service, started: RegExp, timeoutMs = 60_000): Promise<{ admin: string; match: RegExpMatchArray } | string> {
  let match: RegExpMatchArray;
  try {
    match = await p.waitFor(started, timeoutMs);
  } catch (err) {
    return `could not run: ${p.name} did not start: ${(err as Error).message}`;
  }
  const admin = match.groups?.admin ?? '';
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const status = await fetch(`${admin}/readyz`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status, () => 0);
    if (status === 200) return { admin, match };
    if (!isRunning(p.proc)) return `could not run: ${p.name} exited before it was ready:\n${p.tail()}`;
    if (performance.now() > deadline) return `could not run: ${p.name}: ${admin}/readyz still ${status || 'unreachable'} after ${timeoutMs / 1000} s:\n${p.tail()}`;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** `ward proxy`'s start-up line. */
export const WARD_PROXY_STARTED = /ward proxy: node \S+ inbound \S+ admin (?<admin>http:\/\/\S+)/;

async function startWard(o: {
  children: Children;
  dir: string;
  backendPort: number;
  sinkPort: number;
  progress: (s: string) => void;
  notes: string[];
}): Promise<WardChain | string> {
  const { children, dir } = o;
  const nodes = [['node-a', ADDR.nodeA], ['node-b', ADDR.nodeB]] as const;
  const ctl = await startWardControl({
    children, dir, yaml: wardYaml({ httpPort: o.backendPort, sinkPort: o.sinkPort }), commands: ['proxy'], tokens: nodes.map(([node]) => ['--node', node]),
    progress: o.progress, starting: (label) => `proxy: starting ward control and two ward proxies (${label})`, notes: o.notes,
  });
  if (typeof ctl === 'string') return ctl;
  // Both proxies start together; each is awaited until its admin /readyz answers 200.
  const nodeFlags = wardProxyNodeFlags();
  const proxies = nodes.map(([node, address], i) => spawnWardProxy(children, ctl, { dir, node, address, token: ctl.tokens[i], nodeFlags }));
  const admins: string[] = [];
  const ready = async (p: Service, i: number): Promise<string | undefined> => {
    // Ready = certificates for its workloads and the pool's configuration.
    const r = await awaitAdminReady(p, WARD_PROXY_STARTED);
    if (typeof r === 'string') return r;
    admins[i] = r.admin;
    return undefined;
  };
  const failure = (await Promise.all(proxies.map(ready))).find((f) => f !== undefined);
  if (failure) return failure;
  const http: HttpTarget = { origin: `http://${ADDR.client}:${WARD_OUTBOUND_PORT}`, path: `http://server.bench:${SERVICE_HTTP_PORT}/`, host: `server.bench:${SERVICE_HTTP_PORT}` };
  return {
    cli: ctl.cli.label,
    proxies,
    admins,
    path: {
      name: 'ward',
      hops: proxies.map((p) => ({ label: p.name, pids: [p.pid] })),
      http,
      wrkUrl: `${http.origin}/`,
      wrkScript: wrkScript(dir, 'ward', http),
      tunnel: { host: ADDR.client, port: WARD_OUTBOUND_PORT, connect: `sink.bench:${SERVICE_SINK_PORT}` },
    },
  };
}

// ---- measurement ------------------------------------------------------------------------------

export interface Sampled<T> {
  r: T;
  /** µs of CPU per hop, of which in the kernel, of which on the processes' main threads, and the backend's, over the run. */
  hopsUs: number[];
  hopsSysUs: number[];
  hopsMainUs: number[];
  /** Context switches per hop (all threads). */
  hopsSwitches: number[];
  backendUs: number;
}

export async function sampled<T>(path: { hops: Hop[] }, backendPid: number, usPerTick: number, fn: () => Promise<T>): Promise<Sampled<T>> {
  const sum = (pids: number[], main: boolean): { user: number; sys: number } =>
    pids.map((pid) => cpuTicks(pid, main)).reduce((a, b) => ({ user: a.user + b.user, sys: a.sys + b.sys }), { user: 0, sys: 0 });
  const ticks = (main: boolean): { user: number; sys: number }[] => [...path.hops.map((h) => sum(h.pids, main)), sum([backendPid], main)];
  const switches = (): number[] => path.hops.map((h) => h.pids.reduce((n, pid) => n + contextSwitches(pid), 0));
  const before = ticks(false);
  const beforeMain = ticks(true);
  const beforeSwitches = switches();
  const r = await fn();
  const after = ticks(false);
  const afterMain = ticks(true);
  const afterSwitches = switches();
  const total = after.map((a, i) => (a.user + a.sys - before[i].user - before[i].sys) * usPerTick);
  const sys = after.map((a, i) => (a.sys - before[i].sys) * usPerTick);
  const main = afterMain.map((a, i) => (a.user + a.sys - beforeMain[i].user - beforeMain[i].sys) * usPerTick);
  return { r, hopsUs: total.slice(0, -1), hopsSysUs: sys.slice(0, -1), hopsMainUs: main.slice(0, -1), hopsSwitches: afterSwitches.map((a, i) => a - beforeSwitches[i]), backendUs: total[total.length - 1] };
}

/** One measured run of one path in one round, before the rounds are combined. */
export interface HttpRun {
  requests: number;
  errors: number;
  firstError?: string;
  rps: number;
  latencyMs: HttpRow['latencyMs'];
  serviceP99Ms?: number;
  dispatchLagP99Ms?: number;
  cpu: Sampled<unknown>;
}

interface TunnelRun {
  mbPerSecond: number;
  windowSeconds: number;
  /** MiB the sink acknowledged in the run (warm-up included, like the CPU). */
  mib: number;
  cpu: Sampled<unknown>;
}

const PATHS = ['direct', 'ward', 'nginx'] as const;

export const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

export function cpuPerRequest(s: Sampled<unknown>, requests: number): HttpRow['cpuUsPerRequest'] {
  const hops = s.hopsUs.map((us) => us / requests);
  const all = s.hopsUs.reduce((a, b) => a + b, 0);
  const sys = s.hopsSysUs.reduce((a, b) => a + b, 0);
  const main = s.hopsMainUs.reduce((a, b) => a + b, 0);
  return {
    hops,
    mean: hops.length ? mean(hops) : 0,
    sysShare: all > 0 ? sys / all : NaN,
    otherThreadsShare: all > 0 ? 1 - main / all : NaN,
    switchesPerRequest: hops.length ? mean(s.hopsSwitches) / requests : NaN,
    backend: s.backendUs / requests,
  };
}

export const NO_LATENCY = { p50: NaN, p90: NaN, p99: NaN, max: NaN };
export const skippedRow = <P extends string>(path: P, why: string): HttpRow<P> => ({
  path, skipped: why, rounds: 0, requests: 0, errors: 0, rps: NaN, latencyMs: NO_LATENCY, cpuUsPerRequest: { hops: [], mean: NaN, sysShare: NaN, otherThreadsShare: NaN, switchesPerRequest: NaN, backend: NaN },
});

export interface WrkOutput {
  requests: number;
  durationUs: number;
  connect: number;
  read: number;
  write: number;
  status: number;
  timeout: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export async function runWrk(children: Children, path: { wrkUrl: string; wrkScript: string }, connections: number, seconds: number): Promise<WrkOutput> {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '-s', path.wrkScript, path.wrkUrl];
  const r = await runCommand(children, 'wrk', args, { timeoutMs: seconds * 1000 + 15_000 });
  const line = r.stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (r.code !== 0 || !line) throw new Error(`wrk ${args.join(' ')} failed (${r.code}): ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
  return JSON.parse(line.slice('WRKJSON '.length)) as WrkOutput;
}

/** One measured wrk run of a path, with the CPU of its hops and of the backend over it. */
export async function wrkRun(children: Children, path: { hops: Hop[]; wrkUrl: string; wrkScript: string }, backendPid: number, usPerTick: number, connections: number, seconds: number): Promise<HttpRun> {
  const s = await sampled(path, backendPid, usPerTick, () => runWrk(children, path, connections, seconds));
  const w = s.r;
  const errors = w.connect + w.read + w.write + w.status + w.timeout;
  return {
    requests: w.requests,
    errors,
    ...(errors ? { firstError: `wrk errors: connect ${w.connect}, read ${w.read}, write ${w.write}, non-2xx ${w.status}, timeout ${w.timeout}` } : {}),
    rps: w.requests / (w.durationUs / 1e6),
    latencyMs: { p50: w.p50 / 1000, p90: w.p90 / 1000, p99: w.p99 / 1000, max: w.max / 1000 },
    cpu: s,
  };
}

export function rotate<T>(xs: T[], k: number): T[] {
  const n = xs.length;
  return xs.map((_, i) => xs[(i + k) % n]);
}

export async function runProxyBench(opts: ProxyBenchOptions = {}): Promise<ProxyBenchResult> {
  const plan = opts.quick ? QUICK : FULL;
  const progress = opts.progress ?? (() => undefined);
  const began = performance.now();
  const deadline = began + plan.maxSeconds * 1000;
  const checkDeadline = (): void => {
    if (performance.now() > deadline) throw new Error(`proxy bench exceeded its ${plan.maxSeconds} s bound`);
  };
  const notes: string[] = [];
  const unavailable: ProxyBenchResult['unavailable'] = {};
  const children = new Children();
  const dir = mkdtempSync(join(os.tmpdir(), 'ward-bench-proxy-'));
  const release = guardCleanup(children, dir, 'proxy bench');

  try {
    // An idle Node process: the memory reference for the proxies.
    const empty = new Service('empty node', children, process.execPath, ['-e', 'setInterval(() => {}, 1e9)']);
    progress(`proxy: starting the backend on ${ADDR.server} and the load generator`);
    const load = new LoadClient(children);
    const [clk, wrkCheck, backend] = await Promise.all([
      runCommand(children, 'getconf', ['CLK_TCK'], { timeoutMs: 5_000 }),
      runCommand(children, 'wrk', ['-v'], { timeoutMs: 5_000 }),
      startBackend(children),
    ]);
    const clkTck = Number(clk.stdout.trim()) || 100;
    const usPerTick = 1e6 / clkTck;
    const direct: PathSetup = (() => {
      const http: HttpTarget = { origin: `http://${ADDR.server}:${backend.httpPort}`, path: '/' };
      return { name: 'direct', hops: [], http, wrkUrl: `${http.origin}/`, wrkScript: wrkScript(dir, 'direct', http), tunnel: { host: ADDR.server, port: backend.sinkPort } };
    })();

    const wrkAvailable = !wrkCheck.spawnError;
    if (!wrkAvailable) notes.push(`wrk is not installed (apt-get install -y wrk): the throughput phase used the Node generator (closed loop), which is slower than wrk`);

    // The two chains start side by side (they share nothing but the backend).
    const [nginx, ward] = await Promise.all([
      startNginx({ children, dir, backendPort: backend.httpPort, sinkPort: backend.sinkPort, progress, notes }),
      startWard({ children, dir, backendPort: backend.httpPort, sinkPort: backend.sinkPort, progress, notes }),
    ]);
    if (typeof nginx === 'string') {
      unavailable.nginx = nginx;
      progress(`proxy: nginx rows skipped: ${nginx}`);
    } else if (nginx.path.tunnelSkipped) unavailable['nginx-tunnel'] = nginx.path.tunnelSkipped;
    checkDeadline();
    if (typeof ward === 'string') {
      unavailable.ward = ward;
      progress(`proxy: ward rows skipped: ${ward.split('\n')[0]}`);
    }

    const candidates: PathSetup[] = [direct, ...(typeof ward === 'string' ? [] : [ward.path]), ...(typeof nginx === 'string' ? [] : [nginx.path])];
    // Each path answers correctly before it is timed.
    const paths: PathSetup[] = [];
    for (const p of candidates) {
      try {
        const c = await load.run<CheckResult>({ t: 'check', target: p.http, timeoutMs: 10_000 }, 15_000);
        if (c.status !== 200 || c.body !== 'ok') throw new Error(`HTTP ${c.status}: ${c.body.slice(0, 200)}`);
        paths.push(p);
      } catch (err) {
        if (p.name === 'direct') throw new Error(`the backend does not answer: ${(err as Error).message}`);
        unavailable[p.name] = `could not run: a request through ${p.name} failed: ${(err as Error).message}`;
        progress(`proxy: ${unavailable[p.name]}`);
      }
    }
    const skipped = (name: PathName): string | undefined => (paths.some((p) => p.name === name) ? undefined : unavailable[name]);

    const wardProxyIdleMiB = typeof ward === 'string' || skipped('ward') ? [] : ward.proxies.map((p) => rssMiB(p.pid));

    // ---- warm-up: JIT, pools and upstream connections, at the throughput phase's concurrency.
    for (const p of paths) {
      checkDeadline();
      progress(`proxy: warm-up ${p.name} (${plan.warmupS} s)`);
      if (wrkAvailable) await runWrk(children, p, plan.connections, plan.warmupS).catch(() => undefined);
      else await load.run<ClosedResult>({ t: 'closed', target: p.http, concurrency: plan.connections, durationMs: plan.warmupS * 1000, maxRequests: 10_000_000 }, plan.warmupS * 1000 + 30_000).catch(() => undefined);
    }

    // ---- the phases: each in `rounds` rounds, every path once per round, the order rotating.
    const roundTag = (round: number): string => (plan.rounds > 1 ? ` (round ${round + 1}/${plan.rounds})` : '');
    const phase = async <M>(name: string, offset: number, fn: (p: PathSetup, round: number) => Promise<M>): Promise<{ runs: Map<PathName, M[]>; failed: Map<PathName, string> }> => {
      const runs = new Map<PathName, M[]>();
      const failed = new Map<PathName, string>();
      for (let round = 0; round < plan.rounds; round++) {
        for (const p of rotate(paths, offset + round)) {
          checkDeadline();
          if (failed.has(p.name)) continue;
          try {
            const m = await fn(p, round);
            runs.set(p.name, [...(runs.get(p.name) ?? []), m]);
          } catch (err) {
            const why = `failed: ${(err as Error).message.split('\n')[0]}`;
            progress(`proxy: ${name} ${p.name}: ${why}`);
            failed.set(p.name, why);
          }
        }
      }
      return { runs, failed };
    };
    const httpRows = (r: { runs: Map<PathName, HttpRun[]>; failed: Map<PathName, string> }): HttpRow[] =>
      PATHS.map((n) => {
        const failure = r.failed.get(n);
        const runs = r.runs.get(n);
        if (failure) return skippedRow(n, failure);
        return runs?.length ? combineHttp(n, runs) : skippedRow(n, shortReason(skipped(n) ?? 'not run'));
      });

    // ---- throughput at a fixed concurrency.
    const throughput = httpRows(
      await phase('throughput', 0, async (p, round): Promise<HttpRun> => {
        progress(`proxy: throughput ${p.name}: ${plan.connections} connections, ${plan.throughputS} s (${wrkAvailable ? 'wrk' : 'node'})${roundTag(round)}`);
        if (wrkAvailable) return wrkRun(children, p, backend.pid, usPerTick, plan.connections, plan.throughputS);
        const s = await sampled(p, backend.pid, usPerTick, () =>
          load.run<ClosedResult>({ t: 'closed', target: p.http, concurrency: plan.connections, durationMs: plan.throughputS * 1000, maxRequests: 10_000_000 }, plan.throughputS * 1000 + 30_000),
        );
        return closedRun(s);
      }),
    );

    // ---- fixed rate, open loop.
    const fixedRate = httpRows(
      await phase('fixed rate', 1, async (p, round): Promise<HttpRun> => {
        progress(`proxy: fixed rate ${p.name}: ${plan.rate} requests/s for ${plan.rateMs / 1000} s after ${plan.rateWarmupMs / 1000} s at that rate${roundTag(round)}`);
        const cmd = (durationMs: number): LoadCommand => ({ t: 'rate', target: p.http, rate: plan.rate, durationMs, connections: plan.connections });
        await load.run<RateResult>(cmd(plan.rateWarmupMs), plan.rateWarmupMs + 30_000);
        const s = await sampled(p, backend.pid, usPerTick, () => load.run<RateResult>(cmd(plan.rateMs), plan.rateMs + 30_000));
        const r = s.r;
        return {
          requests: r.completed,
          errors: r.errors,
          ...(r.firstError !== undefined ? { firstError: r.firstError } : {}),
          rps: r.achievedRps,
          latencyMs: { p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max },
          serviceP99Ms: r.service.p99,
          dispatchLagP99Ms: r.dispatchLag.p99,
          cpu: s,
        };
      }),
    );

    // ---- unloaded: one connection, one request at a time.
    const unloaded = httpRows(
      await phase('unloaded', 2, async (p, round): Promise<HttpRun> => {
        progress(`proxy: unloaded ${p.name}: one connection, ${plan.unloadedMs / 1000} s${roundTag(round)}`);
        const cmd = (durationMs: number): LoadCommand => ({ t: 'closed', target: p.http, concurrency: 1, durationMs, maxRequests: plan.unloadedMax });
        await load.run<ClosedResult>(cmd(plan.unloadedWarmupMs), plan.unloadedWarmupMs + 30_000);
        return closedRun(await sampled(p, backend.pid, usPerTick, () => load.run<ClosedResult>(cmd(plan.unloadedMs), plan.unloadedMs + 30_000)));
      }),
    );
    const addedLatencyPerHopMs: ProxyBenchResult['addedLatencyPerHopMs'] = {};
    const directP50 = unloaded[0].latencyMs.p50;
    for (const row of unloaded.slice(1)) if (!row.skipped) addedLatencyPerHopMs[row.path] = (row.latencyMs.p50 - directP50) / 2;

    // ---- tunnel throughput.
    const tunnelPhase = await phase('tunnel', 3, async (p, round): Promise<TunnelRun> => {
      if (!p.tunnel) throw new Error(p.tunnelSkipped ?? 'no tunnel on this path');
      progress(`proxy: tunnel ${p.name}: one stream, ${plan.tunnelMs / 1000} s${roundTag(round)}`);
      const target = p.tunnel;
      const s = await sampled(p, backend.pid, usPerTick, () =>
        load.run<TunnelResult>({ t: 'tunnel', target, durationMs: plan.tunnelMs, warmupMs: plan.tunnelWarmupMs, chunkBytes: 64 * 1024 }, plan.tunnelWarmupMs + plan.tunnelMs + 30_000),
      );
      return { mbPerSecond: s.r.bytesPerSecond / 1e6, windowSeconds: s.r.windowSeconds, mib: Math.max(1, s.r.ackedBytes) / MiB, cpu: s };
    });
    const tunnel: TunnelRow[] = PATHS.map((n) => {
      const runs = tunnelPhase.runs.get(n);
      const why = tunnelPhase.failed.get(n) ?? (runs?.length ? undefined : shortReason(skipped(n) ?? unavailable['nginx-tunnel'] ?? 'not run'));
      if (why || !runs) return { path: n, skipped: why ?? 'not run', mbPerSecond: NaN, windowSeconds: 0, rounds: 0, cpuUsPerMiB: { hops: [], mean: NaN, sysShare: NaN, otherThreadsShare: NaN } };
      const c = cpuPerRequest(sumSampled(runs.map((r) => r.cpu)), runs.reduce((a, r) => a + r.mib, 0));
      return {
        path: n,
        mbPerSecond: median(runs.map((r) => r.mbPerSecond)),
        windowSeconds: runs.reduce((a, r) => a + r.windowSeconds, 0),
        rounds: runs.length,
        cpuUsPerMiB: { hops: c.hops, mean: c.mean, sysShare: c.sysShare, otherThreadsShare: c.otherThreadsShare },
      };
    });

    // ---- memory, after all the load.
    const memory = {
      emptyNodeMiB: rssMiB(empty.pid),
      wardProxyIdleMiB,
      wardProxyMiB: typeof ward === 'string' || skipped('ward') ? [] : ward.proxies.map((p) => rssMiB(p.pid)),
      nginxInstanceMiB: typeof nginx === 'string' || skipped('nginx') ? [] : nginx.path.hops.map((h) => h.pids.reduce((n, pid) => n + rssMiB(pid), 0)),
    };

    const wardCounters = typeof ward === 'string' ? [] : await Promise.all(ward.proxies.map(async (p, i) => ({ proxy: p.name, series: await proxyCounters(ward.admins[i]) })));

    const result = assemble({
      plan, quick: !!opts.quick, clkTck, wrkAvailable, unavailable, throughput, fixedRate, unloaded, addedLatencyPerHopMs, tunnel, memory, wardCounters, notes,
      wardCli: typeof ward === 'string' ? undefined : ward.cli,
      nginxVersion: typeof nginx === 'string' ? undefined : nginx.version,
    });
    result.seconds = (performance.now() - began) / 1000;
    return result;
  } finally {
    progress('proxy: stopping every process');
    await children.stopAll(5_000);
    release();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Cleanup on every way out of a benchmark: the caller stops `children` and removes `dir` itself on
 * the normal way (finally); this covers process exit and SIGINT/SIGTERM (which it then re-raises).
 * Returns the function that uninstalls the handlers.
 */
export function guardCleanup(children: Children, dir: string, name: string): () => void {
  const cleanupNow = (): void => {
    children.killAllNow();
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    process.stderr.write(`\n${name}: ${signal}: stopping its processes and removing ${dir}\n`);
    cleanupNow();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.kill(process.pid, signal);
  };
  process.on('exit', cleanupNow);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    process.off('exit', cleanupNow);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

/** A reason's first line, capped: the full text is printed once, under the tables. */
export function shortReason(why: string): string {
  const first = why.split('\n')[0].replace(/:$/, '');
  return first.length > 110 ? `${first.slice(0, 107)}...` : first;
}

/** The ward_proxy_*_total series of a proxy's admin /metrics ({} when unreachable). */
async function proxyCounters(admin: string): Promise<Record<string, number>> {
  return adminCounters(admin, 'ward_proxy_');
}

/** The PREFIX*_total series of a Ward process's admin /metrics ({} when unreachable). */
export async function adminCounters(admin: string, prefix: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  try {
    const text = await fetch(`${admin}/metrics`, { signal: AbortSignal.timeout(5_000) }).then((r) => r.text());
    for (const line of text.split('\n')) {
      const m = /^(\w+_total(?:\{[^}]*\})?) (\S+)$/.exec(line);
      if (m && m[1].startsWith(prefix)) out[m[1]] = Number(m[2]);
    }
  } catch {
    // diagnostics only
  }
  return out;
}

function closedRun(s: Sampled<ClosedResult>): HttpRun {
  const r = s.r;
  return {
    requests: r.completed,
    errors: r.errors,
    ...(r.firstError !== undefined ? { firstError: r.firstError } : {}),
    rps: r.rps,
    latencyMs: { p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max },
    cpu: s,
  };
}

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Element-wise sum of CPU samples (rounds of one path). */
export function sumSampled(xs: Sampled<unknown>[]): Sampled<undefined> {
  const add = (pick: (x: Sampled<unknown>) => number[]): number[] => xs.map(pick).reduce((a, b) => a.map((v, i) => v + b[i]));
  return {
    r: undefined,
    hopsUs: add((x) => x.hopsUs),
    hopsSysUs: add((x) => x.hopsSysUs),
    hopsMainUs: add((x) => x.hopsMainUs),
    hopsSwitches: add((x) => x.hopsSwitches),
    backendUs: xs.reduce((a, x) => a + x.backendUs, 0),
  };
}

/** A path's rounds as one row: rates and percentiles are the median over rounds (max: the largest), CPU is summed over rounds / requests summed. */
export function combineHttp<P extends string>(path: P, runs: HttpRun[]): HttpRow<P> {
  const med = (f: (r: HttpRun) => number | undefined): number => median(runs.map((r) => f(r) ?? NaN));
  const requests = runs.reduce((a, r) => a + r.requests, 0);
  const firstError = runs.find((r) => r.firstError !== undefined)?.firstError;
  return {
    path,
    rounds: runs.length,
    requests,
    errors: runs.reduce((a, r) => a + r.errors, 0),
    ...(firstError !== undefined ? { firstError } : {}),
    rps: med((r) => r.rps),
    latencyMs: { p50: med((r) => r.latencyMs.p50), p90: med((r) => r.latencyMs.p90), p99: med((r) => r.latencyMs.p99), max: Math.max(...runs.map((r) => r.latencyMs.max)) },
    ...(runs[0].serviceP99Ms !== undefined ? { serviceP99Ms: med((r) => r.serviceP99Ms) } : {}),
    ...(runs[0].dispatchLagP99Ms !== undefined ? { dispatchLagP99Ms: med((r) => r.dispatchLagP99Ms) } : {}),
    cpuUsPerRequest: cpuPerRequest(sumSampled(runs.map((r) => r.cpu)), Math.max(1, requests)),
  };
}

// ---- targets ----------------------------------------------------------------------------------

function assemble(o: {
  plan: Plan;
  quick: boolean;
  clkTck: number;
  wrkAvailable: boolean;
  unavailable: ProxyBenchResult['unavailable'];
  throughput: HttpRow[];
  fixedRate: HttpRow[];
  unloaded: HttpRow[];
  addedLatencyPerHopMs: ProxyBenchResult['addedLatencyPerHopMs'];
  tunnel: TunnelRow[];
  memory: ProxyBenchResult['memory'];
  wardCounters: ProxyBenchResult['wardCounters'];
  notes: string[];
  wardCli?: string;
  nginxVersion?: string;
}): ProxyBenchResult {
  const row = (rows: HttpRow[], n: PathName): HttpRow | undefined => rows.find((r) => r.path === n && !r.skipped);
  const trow = (n: PathName): TunnelRow | undefined => o.tunnel.find((r) => r.path === n && !r.skipped);
  const why = (n: PathName): string => shortReason(o.unavailable[n] ?? 'not measured');

  // A row with errors is still shown, but its figures do not count toward a target.
  const clean = (r: HttpRow | undefined): HttpRow | undefined => (r && r.errors === 0 ? r : undefined);
  const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined && Number.isFinite(a) && Number.isFinite(b) && b > 0 ? a / b : undefined);

  const wardOverDirect: Record<string, number> = {};
  const wardOverNginx: Record<string, number> = {};
  const put = (into: Record<string, number>, key: string, v: number | undefined): void => {
    if (v !== undefined) into[key] = v;
  };
  for (const [label, rows] of [['throughput', o.throughput], ['fixedRate', o.fixedRate], ['unloaded', o.unloaded]] as const) {
    const [w, d, n] = [row(rows, 'ward'), row(rows, 'direct'), row(rows, 'nginx')];
    if (label !== 'fixedRate') {
      put(wardOverDirect, `${label}.rps`, ratio(w?.rps, d?.rps));
      put(wardOverNginx, `${label}.rps`, ratio(w?.rps, n?.rps));
    }
    for (const q of ['p50', 'p99'] as const) {
      put(wardOverDirect, `${label}.${q}`, ratio(w?.latencyMs[q], d?.latencyMs[q]));
      put(wardOverNginx, `${label}.${q}`, ratio(w?.latencyMs[q], n?.latencyMs[q]));
    }
    put(wardOverNginx, `${label}.cpuPerRequestPerHop`, ratio(w?.cpuUsPerRequest.mean, n?.cpuUsPerRequest.mean));
  }
  put(wardOverNginx, 'unloaded.addedLatencyPerHop', ratio(o.addedLatencyPerHopMs.ward, o.addedLatencyPerHopMs.nginx));
  put(wardOverDirect, 'tunnel.mbPerSecond', ratio(trow('ward')?.mbPerSecond, trow('direct')?.mbPerSecond));
  put(wardOverNginx, 'tunnel.mbPerSecond', ratio(trow('ward')?.mbPerSecond, trow('nginx')?.mbPerSecond));
  put(wardOverNginx, 'tunnel.cpuPerMiBPerHop', ratio(trow('ward')?.cpuUsPerMiB.mean, trow('nginx')?.cpuUsPerMiB.mean));

  const target = (t: Omit<Target, 'ratio' | 'pass' | 'note'>, ward: number | undefined, reference: number | undefined, missing: string): Target => {
    const r = ratio(ward, reference);
    if (r === undefined) return { ...t, ...(ward !== undefined ? { ward } : {}), ...(reference !== undefined ? { reference } : {}), note: missing };
    return { ...t, ward, reference, ratio: r, pass: t.direction === 'max' ? r <= t.limit : r >= t.limit };
  };
  const missingFor = (...needs: { n: PathName; have: unknown }[]): string => {
    const gone = needs.filter((x) => x.have === undefined).map((x) => `${x.n}: ${why(x.n)}`);
    return gone.length ? `not measured (${gone.join('; ')})` : 'not measured (a row had errors)';
  };
  const [wr, nr] = [clean(row(o.fixedRate, 'ward')), clean(row(o.fixedRate, 'nginx'))];
  const [wt, nt] = [clean(row(o.throughput, 'ward')), clean(row(o.throughput, 'nginx'))];
  const [wu, nu, du] = [clean(row(o.unloaded, 'ward')), clean(row(o.unloaded, 'nginx')), clean(row(o.unloaded, 'direct'))];
  // Added latency below a microsecond is noise: clamp the divisor so the ratio stays meaningful.
  const addedWard = wu && du ? o.addedLatencyPerHopMs.ward : undefined;
  const addedNginx = nu && du && o.addedLatencyPerHopMs.nginx !== undefined ? Math.max(0.001, o.addedLatencyPerHopMs.nginx) : undefined;
  const wardMem = o.memory.wardProxyMiB.length ? Math.max(...o.memory.wardProxyMiB) : undefined;
  const targets: Target[] = [
    target({ key: 'cpu', name: 'CPU per request per hop (at the fixed rate), ward / nginx', limit: TARGETS.cpu, direction: 'max', unit: 'µs' }, wr?.cpuUsPerRequest.mean, nr?.cpuUsPerRequest.mean, missingFor({ n: 'ward', have: wr }, { n: 'nginx', have: nr })),
    target({ key: 'throughput', name: 'two-hop throughput, ward / nginx', limit: TARGETS.throughput, direction: 'min', unit: 'req/s' }, wt?.rps, nt?.rps, missingFor({ n: 'ward', have: wt }, { n: 'nginx', have: nt })),
    target({ key: 'added-latency', name: 'latency added per hop, unloaded (p50), ward / nginx', limit: TARGETS.addedLatency, direction: 'max', unit: 'ms' }, addedWard, addedNginx, missingFor({ n: 'ward', have: wu }, { n: 'nginx', have: nu }, { n: 'direct', have: du })),
    target({ key: 'p99', name: `p99 at ${o.plan.rate.toLocaleString('en-US')} requests/s, ward / nginx`, limit: TARGETS.p99, direction: 'max', unit: 'ms' }, wr?.latencyMs.p99, nr?.latencyMs.p99, missingFor({ n: 'ward', have: wr }, { n: 'nginx', have: nr })),
    target({ key: 'tunnel', name: 'tunnel throughput, ward / nginx stream', limit: TARGETS.tunnel, direction: 'min', unit: 'MB/s' }, trow('ward')?.mbPerSecond, trow('nginx')?.mbPerSecond,
      `not measured (${[!trow('ward') && `ward: ${o.tunnel.find((r) => r.path === 'ward')?.skipped ?? why('ward')}`, !trow('nginx') && `nginx: ${o.tunnel.find((r) => r.path === 'nginx')?.skipped ?? why('nginx')}`].filter(Boolean).join('; ')})`),
    target({ key: 'memory', name: 'proxy memory (RSS), ward / empty node', limit: TARGETS.memory, direction: 'max', unit: 'MiB' }, wardMem, o.memory.emptyNodeMiB, `not measured (ward: ${why('ward')})`),
  ];
  const misses = targets.filter((t) => t.pass === false).map((t) => t.key);
  const notMeasured = targets.filter((t) => t.pass === undefined).map((t) => t.key);
  const notes = [...o.notes];
  for (const rows of [o.throughput, o.fixedRate, o.unloaded]) for (const r of rows) if (!r.skipped && r.errors > 0) notes.push(`${r.path}: ${r.errors} failed request(s) (${r.firstError ?? '?'}); its figures do not count toward targets`);
  const lagging = o.fixedRate.filter((r) => !r.skipped && (r.dispatchLagP99Ms ?? 0) > 0.5);
  if (lagging.length) notes.push(`fixed rate: the generator sent late (dispatch lag p99 > 0.5 ms) on ${lagging.map((r) => r.path).join(', ')}: the machine is oversubscribed`);
  return {
    bench: 'proxy',
    quick: o.quick,
    setup: {
      connections: o.plan.connections,
      rate: o.plan.rate,
      rounds: o.plan.rounds,
      seconds: { throughput: o.plan.throughputS, rate: o.plan.rateMs / 1000, unloaded: o.plan.unloadedMs / 1000, tunnel: o.plan.tunnelMs / 1000 },
      throughputGenerator: o.wrkAvailable ? 'wrk -t1' : 'node (closed loop)',
      ...(o.wardCli ? { wardCli: o.wardCli } : {}),
      ...(o.nginxVersion ? { nginx: o.nginxVersion } : {}),
      clkTck: o.clkTck,
      cpus: os.availableParallelism(),
    },
    unavailable: o.unavailable,
    throughput: o.throughput,
    fixedRate: o.fixedRate,
    unloaded: o.unloaded,
    addedLatencyPerHopMs: o.addedLatencyPerHopMs,
    tunnel: o.tunnel,
    memory: o.memory,
    wardCounters: o.wardCounters,
    ratios: { wardOverDirect, wardOverNginx },
    targets,
    belowTarget: misses.length > 0 || notMeasured.length > 0,
    misses,
    notMeasured,
    notes,
    seconds: 0,
  };
}

// ---- report -----------------------------------------------------------------------------------

export const f1 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(1));
export const f2 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(2));
export const f3 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(3));
export const int = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : Math.round(n).toLocaleString('en-US'));
export const x = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : `${n.toFixed(2)}x`);

export function table(header: string[], body: string[][]): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...body.map((b) => (b[c] ?? '').length)));
  const line = (cells: string[]): string => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)];
}

export const pct = (n: number): string => (Number.isFinite(n) ? `${Math.round(n * 100)}%` : '-');
export const cpuCells = (c: HttpRow['cpuUsPerRequest']): string[] => [c.hops.length ? c.hops.map(f1).join(' / ') : '-', c.hops.length ? f1(c.mean) : '-', pct(c.sysShare), pct(c.otherThreadsShare), f2(c.switchesPerRequest), f1(c.backend)];

export function httpTable<P extends string>(rows: HttpRow<P>[], opts: { rate?: boolean; added?: Partial<Record<P, number>> } = {}): string[] {
  const header = [
    'path', opts.rate ? 'achieved req/s' : 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms',
    ...(opts.rate ? ['p99 from send', 'send lag p99'] : []), ...(opts.added ? ['added/hop ms'] : []),
    'CPU µs/req per hop', 'mean/hop', 'kernel', 'off-main', 'cs/req', 'backend', 'errors',
  ];
  const body = rows.map((r) =>
    r.skipped
      ? [r.path, r.skipped]
      : [
          r.path, int(r.rps), f3(r.latencyMs.p50), f3(r.latencyMs.p90), f3(r.latencyMs.p99), f2(r.latencyMs.max),
          ...(opts.rate ? [f3(r.serviceP99Ms), f3(r.dispatchLagP99Ms)] : []), ...(opts.added ? [f3(opts.added[r.path])] : []),
          ...cpuCells(r.cpuUsPerRequest), int(r.errors),
        ],
  );
  // A skipped row's reason may be long: print it after the path, not padded into the table.
  const t = table(header, body.filter((b) => b.length > 2));
  return [...t, ...body.filter((b) => b.length === 2).map(([p, why]) => `${p}: ${why}`)];
}

function ratioLine(r: ProxyBenchResult, phase: string): string {
  const pick = (m: Record<string, number>, k: string): string => x(m[`${phase}.${k}`]);
  const d = r.ratios.wardOverDirect;
  const n = r.ratios.wardOverNginx;
  const rps = phase === 'fixedRate' ? '' : `req/s ${pick(d, 'rps')} / ${pick(n, 'rps')}, `;
  const cpu = `, CPU/req/hop vs nginx ${pick(n, 'cpuPerRequestPerHop')}`;
  return `  ward/direct / ward/nginx: ${rps}p50 ${pick(d, 'p50')} / ${pick(n, 'p50')}, p99 ${pick(d, 'p99')} / ${pick(n, 'p99')}${cpu}`;
}

/** One line per target, each with its verdict. */
export function proxyTargetLines(r: ProxyBenchResult): string[] {
  return targetLines(r.targets);
}

/** One line per target, each with its verdict (PASS, BELOW TARGET or NOT MEASURED) and its figures. */
export function targetLines(targets: Target[]): string[] {
  return targets.map((t) => {
    const verdict = t.pass === undefined ? 'NOT MEASURED' : t.pass ? 'PASS' : 'BELOW TARGET';
    const figures = t.ratio === undefined ? (t.note ?? '') : `${f3(t.ward)} vs ${f3(t.reference)} ${t.unit} = ${x(t.ratio)} (target ${t.direction === 'max' ? '<=' : '>='} ${t.limit}x)`;
    return `  ${verdict.padEnd(12)} ${t.name}: ${figures}`;
  });
}

/** The headline for bench/run.ts: each target's ratio, and which were missed. */
export function proxyHeadline(r: ProxyBenchResult): string {
  const short: Record<string, string> = { cpu: 'cpu/req/hop', throughput: 'rps', 'added-latency': 'added latency/hop', p99: 'p99@1k', tunnel: 'tunnel', memory: 'memory vs empty node' };
  const parts = r.targets.map((t) => `${short[t.key] ?? t.key} ${t.ratio === undefined ? 'n/a' : x(t.ratio)} (${t.direction === 'max' ? '<=' : '>='}${t.limit})`);
  const down = Object.entries(r.unavailable).map(([k, v]) => `${k} ${shortReason(v ?? '')}`);
  const missed = r.misses.length ? ` [missed: ${r.misses.join(', ')}]` : '';
  const unmeasured = r.notMeasured.length ? ` [not measured: ${r.notMeasured.join(', ')}]` : '';
  return `ward/nginx: ${parts.join(', ')}${missed}${unmeasured}${down.length ? ` [${down.join('; ')}]` : ''}`;
}

export function formatProxyBench(r: ProxyBenchResult): string {
  const s = r.setup;
  const out: string[] = [
    `proxy: direct = client → backend; ward = client → ward proxy (outbound) → mTLS → ward proxy (inbound) → backend; nginx = the same two hops through two nginx instances (mutual TLS 1.3, upstream keep-alive)`,
    `ward: ${s.wardCli ?? '-'}; nginx: ${s.nginx ?? '-'}; ${s.cpus} cpu(s); CPU from /proc/<pid>/stat (${s.clkTck} ticks/s), per completed request, per hop (outbound / inbound, nginx-1 / nginx-2);`,
    `  kernel = share of the hops' CPU in the kernel (stime); off-main = share off the processes' main threads (Node: GC/compiler threads, libuv pool); cs/req = context switches per request per hop`,
    '',
    `rounds: ${s.rounds} per phase, every path once per round in a rotating order; rates and percentiles = median over rounds, CPU = summed over rounds / requests summed`,
    '',
    `throughput: HTTP/1.1 keep-alive, ${s.connections} connections, ${s.seconds.throughput} s per round (${s.throughputGenerator}), after a warm-up`,
    ...httpTable(r.throughput),
    ratioLine(r, 'throughput'),
    '',
    `fixed rate: ${s.rate.toLocaleString('en-US')} requests/s open loop for ${s.seconds.rate} s per round (after a warm-up at that rate); latency from the scheduled send time (no coordinated omission)`,
    ...httpTable(r.fixedRate, { rate: true }),
    ratioLine(r, 'fixedRate'),
    '',
    `unloaded: one connection, one request at a time, ${s.seconds.unloaded} s per round; added/hop = (p50 - direct p50) / 2`,
    ...httpTable(r.unloaded, { added: r.addedLatencyPerHopMs }),
    ratioLine(r, 'unloaded'),
    '',
    `tunnel: one TCP stream, ${s.seconds.tunnel} s per round, timed by the sink's acknowledgements (ward: CONNECT sink.bench:${SERVICE_SINK_PORT}; nginx: stream proxies with mutual TLS; direct: to the sink)`,
    ...(() => {
      const body = r.tunnel.map((t) => (t.skipped ? [t.path, t.skipped] : [t.path, f1(t.mbPerSecond), t.cpuUsPerMiB.hops.length ? t.cpuUsPerMiB.hops.map(f1).join(' / ') : '-', t.cpuUsPerMiB.hops.length ? f1(t.cpuUsPerMiB.mean) : '-', pct(t.cpuUsPerMiB.sysShare), pct(t.cpuUsPerMiB.otherThreadsShare)]));
      return [...table(['path', 'MB/s', 'CPU µs/MiB per hop', 'mean/hop', 'kernel', 'off-main'], body.filter((b) => b.length > 2)), ...body.filter((b) => b.length === 2).map(([p, why]) => `${p}: ${why}`)];
    })(),
    `  ward/direct ${x(r.ratios.wardOverDirect['tunnel.mbPerSecond'])}, ward/nginx ${x(r.ratios.wardOverNginx['tunnel.mbPerSecond'])} (CPU/MiB/hop vs nginx ${x(r.ratios.wardOverNginx['tunnel.cpuPerMiBPerHop'])})`,
    '',
    `memory (RSS after the load): ward proxy ${r.memory.wardProxyMiB.length ? r.memory.wardProxyMiB.map(f1).join(' / ') : '-'} MiB (before the load: ${r.memory.wardProxyIdleMiB.length ? r.memory.wardProxyIdleMiB.map(f1).join(' / ') : '-'} MiB); nginx instance (master + worker) ${r.memory.nginxInstanceMiB.length ? r.memory.nginxInstanceMiB.map(f1).join(' / ') : '-'} MiB; empty node ${f1(r.memory.emptyNodeMiB)} MiB`,
    '',
    'targets:',
    ...proxyTargetLines(r),
  ];
  for (const c of r.wardCounters) {
    const series = Object.entries(c.series).filter(([, v]) => v > 0);
    if (series.length) out.push(`${c.proxy} counters at the end: ${series.map(([k, v]) => `${k.replace(/^ward_proxy_/, '')} ${int(v)}`).join(', ')}`);
  }
  for (const [k, v] of Object.entries(r.unavailable)) out.push(`${k}: ${v}`);
  for (const n of r.notes) out.push(`note: ${n}`);
  out.push(`${r.seconds.toFixed(1)} s in all`);
  return out.join('\n');
}
