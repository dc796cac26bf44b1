/**
 * The process supervisor behind `ward up`: each component is a separate child process; a child that
 * exits without being asked to is reported and restarted with capped exponential backoff (the
 * backoff resets once a child has stayed up for a while); stop() asks every child to drain
 * (SIGTERM), waits up to a deadline, then kills what is left (SIGKILL), so nothing outlives it.
 *
 * Logs: every line a child writes (stdout and stderr) goes, unchanged, to `<logDir>/<name>.log`;
 * the terminal gets a short human-readable line per JSON log record at info or above (and every
 * non-JSON line), prefixed with the child's name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface ChildSpec {
  /** Unique, short: "control", "proxy node-a", "web-1". */
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** Recomputed before each (re)start, e.g. a fresh join token (in `env`: a command line is visible to every local user, an environment only to its owner). */
  prepare?: () => Promise<{ args?: string[]; env?: NodeJS.ProcessEnv } | void>;
}

export interface SupervisorEvents {
  /** A line for the terminal. */
  say: (line: string) => void;
}

export interface ChildState {
  name: string;
  pid: number | undefined;
  running: boolean;
  restarts: number;
  lastExit?: string;
}

const LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };
const BACKOFF = { initialMs: 500, maxMs: 30_000, resetAfterMs: 60_000 };

interface Managed {
  spec: ChildSpec;
  child: ChildProcess | undefined;
  log: WriteStream;
  restarts: number;
  failures: number;
  startedAt: number;
  timer: NodeJS.Timeout | undefined;
  lastExit?: string;
  exited: Promise<void>;
  /** The last RECENT_LINES lines written, for error messages. */
  recent: string[];
}

const RECENT_LINES = 20;

export class Supervisor {
  readonly #logDir: string;
  readonly #say: (line: string) => void;
  readonly #verbose: boolean;
  readonly #children = new Map<string, Managed>();
  #stopping = false;

  readonly #onChange: (() => void) | undefined;

  constructor(o: { logDir: string; say: (line: string) => void; verbose?: boolean; onChange?: () => void }) {
    this.#onChange = o.onChange;
    this.#logDir = o.logDir;
    this.#say = o.say;
    this.#verbose = o.verbose ?? false;
  }

  /** Starts a child (and keeps it running until stop()). Resolves once it is spawned. */
  async start(spec: ChildSpec): Promise<void> {
    if (this.#children.has(spec.name)) throw new Error(`BUG: child ${spec.name} started twice`);
    const file = join(this.#logDir, `${spec.name.replace(/[^A-Za-z0-9_.-]+/g, '-')}.log`);
    const m: Managed = { spec, child: undefined, log: createWriteStream(file, { flags: 'a', mode: 0o600 }), restarts: 0, failures: 0, startedAt: 0, timer: undefined, exited: Promise.resolve(), recent: [] };
    this.#children.set(spec.name, m);
    await this.#spawn(m);
  }

  /** The last lines a child wrote (bounded), for error messages. */
  recentLines(name: string): string[] {
    return [...(this.#children.get(name)?.recent ?? [])];
  }

  states(): ChildState[] {
    return [...this.#children.values()].map((m) => ({
      name: m.spec.name,
      pid: m.child?.pid,
      running: m.child !== undefined && m.child.exitCode === null && m.child.signalCode === null,
      restarts: m.restarts,
      ...(m.lastExit ? { lastExit: m.lastExit } : {}),
    }));
  }

  /** True when a process was started (false: stopping, or prepare failed and a retry is scheduled). */
  async #spawn(m: Managed): Promise<boolean> {
    if (this.#stopping) return false;
    let args = m.spec.args;
    let env = m.spec.env ?? process.env;
    try {
      const p = await m.spec.prepare?.();
      if (p && p.args) args = p.args;
      if (p && p.env) env = p.env;
    } catch (err) {
      this.#say(`× ${m.spec.name}: could not prepare a start: ${(err as Error).message}`);
      // A failed attempt like a start that exited at once: without this, startedAt stays at the last
      // real start and, once that is older than resetAfterMs, the backoff never grows past 0.5s.
      m.startedAt = Date.now();
      this.#scheduleRestart(m, 'prepare failed');
      return false;
    }
    if (this.#stopping) return false;
    const child = spawn(m.spec.command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    m.child = child;
    m.startedAt = Date.now();
    this.#onChange?.();
    let resolveExit!: () => void;
    m.exited = new Promise((r) => (resolveExit = r));
    for (const stream of [child.stdout!, child.stderr!]) {
      const rl = createInterface({ input: stream, crlfDelay: Infinity });
      rl.on('line', (line) => this.#line(m, line));
    }
    child.once('error', (err) => {
      this.#say(`× ${m.spec.name}: could not start (${err.message})`);
    });
    child.once('close', (code, signal) => {
      resolveExit();
      if (m.child !== child) return;
      const how = signal ? `signal ${signal}` : `exit code ${code}`;
      m.lastExit = how;
      this.#onChange?.();
      if (this.#stopping) return;
      this.#say(`× ${m.spec.name} stopped unexpectedly (${how}); restarting`);
      this.#scheduleRestart(m, how);
    });
    // No pid: spawn failed ('error' follows, then 'close', which schedules the next attempt).
    return child.pid !== undefined;
  }

  #scheduleRestart(m: Managed, _why: string): void {
    if (this.#stopping) return;
    if (Date.now() - m.startedAt > BACKOFF.resetAfterMs) m.failures = 0;
    const delay = Math.min(BACKOFF.maxMs, BACKOFF.initialMs * 2 ** m.failures);
    m.failures++;
    m.restarts++;
    if (m.restarts > 1 || delay > BACKOFF.initialMs) this.#say(`  ${m.spec.name}: next start in ${(delay / 1000).toFixed(1)}s (restart ${m.restarts})`);
    m.timer = setTimeout(() => {
      m.timer = undefined;
      void this.#spawn(m).then((started) => {
        if (started && !this.#stopping) this.#say(`✓ ${m.spec.name} restarted (pid ${m.child?.pid})`);
      });
    }, delay);
  }

  #line(m: Managed, line: string): void {
    m.log.write(line + '\n');
    m.recent.push(line);
    if (m.recent.length > RECENT_LINES) m.recent.shift();
    const text = humanLine(line, this.#verbose);
    if (text !== undefined) this.#say(`${m.spec.name.padEnd(14)} ${text}`);
  }

  /** SIGTERM to every child (in the given order of names first, the rest after), SIGKILL past the deadline. */
  async stop(o: { order?: string[][]; graceMs?: number } = {}): Promise<void> {
    this.#stopping = true;
    for (const m of this.#children.values()) if (m.timer) clearTimeout(m.timer);
    const grace = o.graceMs ?? 10_000;
    const named = new Set((o.order ?? []).flat());
    const waves = [...(o.order ?? []), [...this.#children.keys()].filter((n) => !named.has(n))];
    for (const wave of waves) {
      const ms = wave.map((n) => this.#children.get(n)).filter((m): m is Managed => m !== undefined);
      await Promise.all(ms.map((m) => this.#stopOne(m, grace)));
    }
    await Promise.all([...this.#children.values()].map((m) => new Promise<void>((r) => m.log.end(() => r()))));
  }

  async #stopOne(m: Managed, graceMs: number): Promise<void> {
    const c = m.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM');
    const killer = setTimeout(() => c.kill('SIGKILL'), graceMs);
    await m.exited;
    clearTimeout(killer);
  }
}

/** A child's log line for the terminal: pino JSON → "level msg (key=value …)"; undefined = not shown. */
export function humanLine(line: string, verbose: boolean): string | undefined {
  if (!line.startsWith('{')) return line.trim() === '' ? undefined : line;
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const level = typeof rec.level === 'number' ? rec.level : 30;
  if (level < 30 && !verbose) return undefined;
  const name = LEVELS[level] ?? String(level);
  const extras: string[] = [];
  for (const k of ['workload', 'service', 'endpoint', 'reason', 'policy', 'rule', 'source', 'path', 'method', 'err']) {
    const v = rec[k];
    if (v !== undefined && v !== null) extras.push(`${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  }
  return `${name.padEnd(5)} ${String(rec.msg ?? '')}${extras.length ? `  ${extras.join(' ')}` : ''}`;
}
