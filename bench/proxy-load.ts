/**
 * bench/proxy's Node load generator, a process of its own (forked by bench/proxy.ts with an IPC
 * channel), so its CPU is never counted against the paths and it never shares an event loop with
 * the benchmark's bookkeeping. It runs one command at a time:
 *
 * - `check`: one request; answers the status and body (each path is verified before it is timed).
 * - `rate`: open loop at a fixed rate. Send times are fixed in advance (start + i / rate) and every
 *   latency is measured from the SCHEDULED send time, so a stall delays the requests behind it and
 *   is counted in their latency instead of pausing the load (no coordinated omission). The schedule
 *   is kept by a worker thread that sleeps in Atomics.wait (sub-millisecond wake-ups) and wakes this
 *   thread through a message: libuv timers have 1 ms granularity, about the size of what is being
 *   measured on loopback. How late each send left ("dispatch lag") is reported too, to show the
 *   generator kept up. Requests go through an undici Pool (keep-alive, at most `connections`).
 * - `closed`: `concurrency` loops, each sending its next request when the previous one completes,
 *   for a bounded time and count: with concurrency 1 this is the unloaded path (one connection).
 * - `tunnel`: one TCP connection (after `CONNECT authority` and a 200 when the first hop is an HTTP
 *   proxy), written as fast as the path accepts (honouring backpressure) for a bounded time; the
 *   sink at the end acknowledges every ACK_BYTES (proxy-backend.ts) with its byte count, and the throughput is taken
 *   between the first acknowledgement after the warm-up and the last one.
 *
 * Every command is bounded in time; the process exits when the IPC channel closes.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { Pool } from 'undici';

export interface HttpTarget {
  /** Where connections go: `http://HOST:PORT`. */
  origin: string;
  /** The request target: `/` (origin form) or `http://server.bench:80/` (absolute form, for an HTTP proxy). */
  path: string;
  /** The Host header (the origin's when absent). */
  host?: string;
}

export interface TunnelTarget {
  host: string;
  port: number;
  /** When set, the first hop is an HTTP proxy: `CONNECT <connect> HTTP/1.1` first, then the bytes. */
  connect?: string;
}

/** Milliseconds. */
export interface LatencySummary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export interface CheckResult {
  status: number;
  body: string;
}

export interface RateResult {
  rate: number;
  scheduled: number;
  completed: number;
  errors: number;
  firstError?: string;
  seconds: number;
  achievedRps: number;
  /** From the scheduled send time to the end of the response body. */
  latency: LatencySummary;
  /** From the actual send (the call into the pool) to the end of the response body. */
  service: LatencySummary;
  /** How late each request left against its schedule (the generator's own precision). */
  dispatchLag: LatencySummary;
}

export interface ClosedResult {
  concurrency: number;
  completed: number;
  errors: number;
  firstError?: string;
  seconds: number;
  rps: number;
  latency: LatencySummary;
}

export interface TunnelResult {
  /** Bytes the sink acknowledged in the measured window, over its duration. */
  bytesPerSecond: number;
  windowSeconds: number;
  /** Bytes the sink acknowledged in all (warm-up included). */
  ackedBytes: number;
  sentBytes: number;
  acks: number;
}

export type LoadCommand =
  | { t: 'check'; target: HttpTarget; timeoutMs: number }
  | { t: 'rate'; target: HttpTarget; rate: number; durationMs: number; connections: number }
  | { t: 'closed'; target: HttpTarget; concurrency: number; durationMs: number; maxRequests: number }
  | { t: 'tunnel'; target: TunnelTarget; durationMs: number; warmupMs: number; chunkBytes: number };

export type ToLoad = { id: number; cmd: LoadCommand };
export type FromLoad = { id: number; ok: true; result: unknown } | { id: number; ok: false; message: string };

/** Set by bench/proxy.ts when it forks this file, so importing it elsewhere runs nothing. */
export const LOAD_ROLE_ENV = 'WARD_BENCH_PROXY_LOAD';

/** In-flight requests left at the end of a timed command get this long to finish. */
const DRAIN_MS = 10_000;

const hr0 = process.hrtime.bigint();
/** Milliseconds on the monotonic clock (the same clock in every thread). */
const nowMs = (): number => Number(process.hrtime.bigint() - hr0) / 1e6;

export function summarize(samples: ArrayLike<number>): LatencySummary {
  const s = Float64Array.from(samples).sort();
  const n = s.length;
  if (n === 0) return { count: 0, mean: NaN, p50: NaN, p90: NaN, p99: NaN, p999: NaN, max: NaN };
  // Nearest rank.
  const at = (p: number): number => s[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += s[i];
  return { count: n, mean: sum / n, p50: at(50), p90: at(90), p99: at(99), p999: at(99.9), max: s[n - 1] };
}

// ---- HTTP -------------------------------------------------------------------------------------

const pools = new Map<string, Pool>();

/** One pool per target and size, kept across commands: the warm-up's connections serve the measurement. */
function poolFor(target: HttpTarget, connections: number): Pool {
  const key = `${target.origin} ${target.path} ${connections}`;
  let p = pools.get(key);
  if (!p) {
    p = new Pool(target.origin, {
      connections,
      pipelining: 1,
      keepAliveTimeout: 600_000,
      keepAliveMaxTimeout: 600_000,
      headersTimeout: DRAIN_MS,
      bodyTimeout: DRAIN_MS,
    });
    pools.set(key, p);
  }
  return p;
}

function requestOptions(target: HttpTarget): { path: string; method: 'GET'; headers?: Record<string, string> } {
  return { path: target.path, method: 'GET', ...(target.host ? { headers: { host: target.host } } : {}) };
}

/** One request to the end of its body; rejects on a status other than 200. */
async function fetchOnce(pool: Pool, opts: ReturnType<typeof requestOptions>): Promise<string> {
  const res = await pool.request(opts);
  const body = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${body.slice(0, 200)}`);
  return body;
}

async function check(target: HttpTarget, timeoutMs: number): Promise<CheckResult> {
  const pool = poolFor(target, 1);
  const res = await pool.request({ ...requestOptions(target), headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  return { status: res.statusCode, body: (await res.body.text()).slice(0, 500) };
}

/**
 * The schedule keeper: plain JS (eval, no loader: execArgv []), sleeps in Atomics.wait until each
 * send time and then wakes the main thread. It says 'ready' first and gets its schedule after, so
 * the worker's start-up (tens of ms) is not charged to the first requests as lateness.
 */
const TICKER = `
const { parentPort } = require('node:worker_threads');
const cell = new Int32Array(new SharedArrayBuffer(4));
parentPort.once('message', ({ hr0, startMs, intervalMs, count }) => {
  const now = () => Number(process.hrtime.bigint() - hr0) / 1e6;
  for (let i = 0; i < count; i++) {
    const d = startMs + i * intervalMs - now();
    if (d > 0) Atomics.wait(cell, 0, 0, d);
    parentPort.postMessage(i);
  }
});
parentPort.postMessage('ready');
`;

async function startTicker(): Promise<Worker> {
  const worker = new Worker(TICKER, { eval: true, execArgv: [] });
  worker.unref();
  const [m] = (await Promise.race([once(worker, 'message'), once(worker, 'error').then(([err]) => Promise.reject(err as Error))])) as [unknown];
  if (m !== 'ready') throw new Error(`ticker: unexpected first message ${String(m)}`);
  return worker;
}

async function rate(m: Extract<LoadCommand, { t: 'rate' }>): Promise<RateResult> {
  const pool = poolFor(m.target, m.connections);
  const opts = requestOptions(m.target);
  const total = Math.max(1, Math.round((m.rate * m.durationMs) / 1000));
  const intervalMs = 1000 / m.rate;
  const latency = new Float64Array(total);
  const service = new Float64Array(total);
  const lag = new Float64Array(total);
  let completed = 0;
  let errors = 0;
  let firstError: string | undefined;
  let next = 0;
  let settled = 0;
  const worker = await startTicker();
  const startMs = nowMs() + 5;
  const at = (i: number): number => startMs + i * intervalMs;
  worker.postMessage({ hr0, startMs, intervalMs, count: total });
  try {
    await new Promise<void>((resolve) => {
      const hardStop = setTimeout(resolve, m.durationMs + DRAIN_MS);
      const done = (): void => {
        if (++settled === total) {
          clearTimeout(hardStop);
          resolve();
        }
      };
      const send = (i: number): void => {
        const sent = nowMs();
        lag[i] = sent - at(i);
        fetchOnce(pool, opts).then(
          () => {
            const end = nowMs();
            latency[completed] = end - at(i);
            service[completed] = end - sent;
            completed++;
            done();
          },
          (err: Error) => {
            errors++;
            firstError ??= err.message;
            done();
          },
        );
      };
      worker.on('message', () => {
        const t = nowMs();
        while (next < total && at(next) <= t) send(next++);
      });
      worker.on('error', (err) => {
        firstError ??= `ticker: ${err.message}`;
        clearTimeout(hardStop);
        resolve();
      });
    });
  } finally {
    await worker.terminate();
  }
  const seconds = (at(Math.max(0, next - 1)) - startMs + intervalMs) / 1000;
  return {
    rate: m.rate,
    scheduled: next,
    completed,
    errors: errors + (next - settled),
    ...(firstError !== undefined ? { firstError } : next > settled ? { firstError: `${next - settled} request(s) still open ${DRAIN_MS} ms after the end` } : {}),
    seconds,
    achievedRps: completed / seconds,
    latency: summarize(latency.subarray(0, completed)),
    service: summarize(service.subarray(0, completed)),
    dispatchLag: summarize(lag.subarray(0, next)),
  };
}

async function closed(m: Extract<LoadCommand, { t: 'closed' }>): Promise<ClosedResult> {
  const pool = poolFor(m.target, m.concurrency);
  const opts = requestOptions(m.target);
  const samples: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let started = 0;
  const t0 = nowMs();
  const end = t0 + m.durationMs;
  const loop = async (): Promise<void> => {
    // Errors end a loop's turn but not the loop: a failing path shows as errors, not as a hang.
    while (nowMs() < end && started < m.maxRequests && errors < 1000) {
      started++;
      const s = nowMs();
      try {
        await fetchOnce(pool, opts);
        samples.push(nowMs() - s);
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: m.concurrency }, loop));
  const seconds = (nowMs() - t0) / 1000;
  return {
    concurrency: m.concurrency,
    completed: samples.length,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    seconds,
    rps: samples.length / seconds,
    latency: summarize(samples),
  };
}

// ---- tunnel -----------------------------------------------------------------------------------

/** Sends CONNECT and reads the response head; rejects unless it is a 200 with nothing after it. */
async function connectThrough(sock: Socket, authority: string, timeoutMs: number): Promise<void> {
  sock.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  let head = Buffer.alloc(0);
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    for (;;) {
      const [chunk] = (await once(sock, 'data', { signal: ac.signal })) as [Buffer];
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end >= 0) {
        const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
        if (!/^HTTP\/1\.[01] 200\b/.test(statusLine)) throw new Error(`CONNECT ${authority}: ${head.toString('latin1').slice(0, 300)}`);
        // The sink speaks only after data arrives, so nothing can follow the head yet.
        if (end + 4 !== head.length) throw new Error(`CONNECT ${authority}: unexpected bytes after the response head`);
        return;
      }
      if (head.length > 16_384) throw new Error(`CONNECT ${authority}: response head too large`);
    }
  } catch (err) {
    if (ac.signal.aborted) throw new Error(`CONNECT ${authority}: no response within ${timeoutMs} ms`);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

async function tunnel(m: Extract<LoadCommand, { t: 'tunnel' }>): Promise<TunnelResult> {
  const sock = connect({ host: m.target.host, port: m.target.port, noDelay: true });
  const failed = new Promise<never>((_, reject) => sock.once('error', reject));
  failed.catch(() => undefined);
  try {
    await Promise.race([once(sock, 'connect'), failed]);
    if (m.target.connect) await Promise.race([connectThrough(sock, m.target.connect, 10_000), failed]);
    const chunk = Buffer.alloc(m.chunkBytes, 0x61);
    let sent = 0;
    let acks = 0;
    let acked = 0;
    let pending: Buffer = Buffer.alloc(0);
    let stopped = false;
    const t0 = nowMs();
    let first: { t: number; bytes: number } | undefined;
    let last: { t: number; bytes: number } | undefined;
    sock.on('data', (data: Buffer) => {
      const t = nowMs();
      pending = pending.length ? Buffer.concat([pending, data]) : data;
      let off = 0;
      for (; off + 8 <= pending.length; off += 8) {
        acked = Number(pending.readBigUInt64BE(off));
        acks++;
        if (t - t0 >= m.warmupMs) {
          first ??= { t, bytes: acked };
          last = { t, bytes: acked };
        }
      }
      pending = pending.subarray(off);
    });
    const pump = (): void => {
      while (!stopped) {
        sent += chunk.length;
        if (!sock.write(chunk)) {
          sock.once('drain', pump);
          return;
        }
      }
    };
    pump();
    await Promise.race([new Promise((r) => setTimeout(r, m.warmupMs + m.durationMs)), failed]);
    stopped = true;
    if (!first || !last || last.t === first.t) {
      throw new Error(`tunnel: ${acks} acknowledgement(s) from the sink (${acked} bytes) in ${m.warmupMs + m.durationMs} ms; too few to time`);
    }
    const windowSeconds = (last.t - first.t) / 1000;
    return { bytesPerSecond: (last.bytes - first.bytes) / windowSeconds, windowSeconds, ackedBytes: acked, sentBytes: sent, acks };
  } finally {
    sock.destroy();
  }
}

// ---- the process ------------------------------------------------------------------------------

async function execute(cmd: LoadCommand): Promise<unknown> {
  switch (cmd.t) {
    case 'check':
      return check(cmd.target, cmd.timeoutMs);
    case 'rate':
      return rate(cmd);
    case 'closed':
      return closed(cmd);
    case 'tunnel':
      return tunnel(cmd);
  }
}

function main(): void {
  process.on('message', (m: ToLoad) => {
    execute(m.cmd).then(
      (result) => process.send!({ id: m.id, ok: true, result } satisfies FromLoad),
      (err: Error) => process.send!({ id: m.id, ok: false, message: err?.message ?? String(err) } satisfies FromLoad),
    );
  });
  process.on('disconnect', () => {
    for (const p of pools.values()) void p.destroy().catch(() => undefined);
    process.exit(0);
  });
}

if (process.env[LOAD_ROLE_ENV] === '1' && process.send) main();
