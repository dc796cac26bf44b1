/**
 * LocalFileSource: `ward.yaml` as the discovery pool's source of truth (local mode).
 *
 * start() reads and validates the file (an invalid initial file is an error: the control plane
 * must not start on a configuration it cannot read), then watches it:
 *   - fs.watch on the DIRECTORY, filtered to the file's name. Editors and config tools replace a
 *     file by writing a temporary file and renaming it over the original; a watch on the file
 *     itself follows the old inode and goes deaf after the first such edit.
 *   - a stat poll every `pollIntervalMs` as the fallback for file systems where fs.watch is
 *     silent (network mounts, some container overlays) or after the watcher failed.
 *   - both only schedule a read `debounceMs` after the first notice, and notices arriving in
 *     between join it, so a burst of events (truncate, write, write, rename) is read once, after
 *     the writer is done.
 * A valid change replaces the model and emits 'update' (model, diff). An invalid one is logged at
 * warn, counted, emitted as 'rejected' (ConfigInvalidError with every problem), and the last good
 * model stays current: the mesh keeps running on it until the file is fixed.
 *
 * Ordering: reloads are serialized (at most one in flight; anything that arrives meanwhile asks
 * for exactly one more pass), so models are applied in the order the file took them, and each
 * 'update' diff is against the model the previous 'update' delivered.
 */
import { EventEmitter } from 'node:events';
import { open, stat } from 'node:fs/promises';
import { watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { Counter, type Registry } from 'prom-client';
import { bug } from '../core/errors.js';
import { systemClock, type Clock } from '../core/clock.js';
import { silentLogger, type Logger } from '../core/logger.js';
import { diffModels, type MeshModel, type ModelDiff } from './model.js';
import { ConfigInvalidError, formatIssue, parseWardYaml, WARD_YAML_LIMITS } from './ward-yaml.js';

export interface LocalFileSourceOptions {
  /** Path of ward.yaml. */
  file: string;
  logger?: Logger;
  /** The process registry; when given, reloads are counted in ward_discovery_config_reloads_total. */
  registry?: Registry;
  /** Only for the timestamps in status(). */
  clock?: Clock;
  /** Stat poll interval in ms (fallback to fs.watch); 0 disables polling. Default 2000. */
  pollIntervalMs?: number;
  /** Delay between the first change notice and reading the file (later notices join it). Default 100. */
  debounceMs?: number;
  /** Watch the directory with fs.watch (default true); false leaves only the poll. */
  watch?: boolean;
}

export interface LocalFileSourceEvents {
  /** A valid change was applied. Not emitted when the file changed but the model did not. */
  update: [model: MeshModel, diff: ModelDiff];
  /** A change was refused; current() still returns the last good model. */
  rejected: [error: ConfigInvalidError];
}

export interface LocalFileSourceStatus {
  file: string;
  applied: number;
  rejected: number;
  /** The problem with the file as it is now, when it is invalid (the model is then the last good one). */
  lastError?: ConfigInvalidError;
  appliedAt?: number;
  rejectedAt?: number;
}

const DEFAULT_POLL_MS = 2000;
const DEFAULT_DEBOUNCE_MS = 100;

interface FileSignature {
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

function sameSignature(a: FileSignature | undefined, b: FileSignature | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

export class LocalFileSource extends EventEmitter<LocalFileSourceEvents> {
  readonly file: string;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #pollMs: number;
  readonly #debounceMs: number;
  readonly #useWatch: boolean;
  readonly #reloads: Counter<'result'> | undefined;

  #state: 'new' | 'starting' | 'running' | 'closed' = 'new';
  #model: MeshModel | undefined;
  /** The text last processed (valid or not): an unchanged file is not parsed again. */
  #lastText: string | undefined;
  #lastSig: FileSignature | undefined;
  #lastError: ConfigInvalidError | undefined;
  #applied = 0;
  #rejected = 0;
  #appliedAt: number | undefined;
  #rejectedAt: number | undefined;

  #watcher: FSWatcher | undefined;
  #pollTimer: NodeJS.Timeout | undefined;
  #debounceTimer: NodeJS.Timeout | undefined;
  #pollInFlight = false;
  #inFlight: Promise<void> | undefined;
  #again = false;
  #changedWhileStarting = false;
  #closing: Promise<void> | undefined;

  constructor(opts: LocalFileSourceOptions) {
    super();
    this.file = opts.file;
    this.#log = (opts.logger ?? silentLogger()).child({ component: 'discovery.local-source' });
    this.#clock = opts.clock ?? systemClock;
    this.#pollMs = opts.pollIntervalMs ?? DEFAULT_POLL_MS;
    this.#debounceMs = opts.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.#useWatch = opts.watch ?? true;
    if (opts.registry !== undefined) {
      const name = 'ward_discovery_config_reloads_total';
      this.#reloads =
        (opts.registry.getSingleMetric(name) as Counter<'result'> | undefined) ??
        new Counter({
          name,
          help: 'Changes to the local ward.yaml seen by the discovery pool, by result (applied or rejected)',
          labelNames: ['result'],
          registers: [opts.registry],
        });
    }
  }

  /**
   * Reads and validates the file, then starts watching it. Throws ConfigInvalidError
   * (WARD_CONFIG_INVALID) when the file is unreadable or invalid; nothing is left running then.
   */
  async start(): Promise<MeshModel> {
    if (this.#state !== 'new') bug('LocalFileSource.start() called twice');
    this.#state = 'starting';
    // Watch before the first read: a change made while we read is then seen, not lost.
    this.#startWatching();
    try {
      const { text, sig } = await this.#read();
      const model = parseWardYaml(text, this.file);
      if ((this.#state as string) === 'closed') return model;
      this.#model = model;
      this.#lastText = text;
      this.#lastSig = sig;
      this.#applied++;
      this.#appliedAt = this.#clock.now();
    } catch (err) {
      await this.close();
      throw err;
    }
    this.#state = 'running';
    this.#log.info({ file: this.file, ...summary(this.#model) }, 'loaded ward.yaml');
    if (this.#changedWhileStarting) this.#schedule();
    return this.#model;
  }

  /** The last good model. Throws before start() has succeeded. */
  current(): MeshModel {
    if (this.#model === undefined) bug('LocalFileSource.current() before start() succeeded');
    return this.#model;
  }

  /** How many changes were rejected since start. */
  get rejectedCount(): number {
    return this.#rejected;
  }

  status(): LocalFileSourceStatus {
    return {
      file: this.file,
      applied: this.#applied,
      rejected: this.#rejected,
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
      ...(this.#appliedAt !== undefined ? { appliedAt: this.#appliedAt } : {}),
      ...(this.#rejectedAt !== undefined ? { rejectedAt: this.#rejectedAt } : {}),
    };
  }

  /**
   * Re-reads the file now, as a change notice would (without the debounce). For SIGHUP-style
   * reloads and tests; resolves when that read has been processed.
   */
  async reload(): Promise<void> {
    if (this.#state !== 'running') return;
    this.#kick();
    while (this.#inFlight !== undefined) await this.#inFlight;
  }

  /** Stops watching; waits for a reload in progress. Idempotent. No event is emitted afterwards. */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#state = 'closed';
    clearTimeout(this.#debounceTimer);
    clearInterval(this.#pollTimer);
    this.#watcher?.close();
    this.#watcher = undefined;
    const inFlight = this.#inFlight;
    this.#closing = (inFlight ?? Promise.resolve()).then(() => undefined, () => undefined);
    return this.#closing;
  }

  #startWatching(): void {
    if (this.#useWatch) {
      const dir = path.dirname(path.resolve(this.file));
      const base = path.basename(this.file);
      try {
        const w = watch(dir, { persistent: false }, (_event, filename) => {
          // filename can be null on some platforms: then any event in the directory counts.
          if (filename === null || filename === base) this.#schedule();
        });
        w.on('error', (err) => {
          this.#log.warn({ err, dir }, 'directory watch failed; relying on polling');
          w.close();
          if (this.#watcher === w) this.#watcher = undefined;
        });
        this.#watcher = w;
      } catch (err) {
        this.#log.warn({ err, dir }, 'cannot watch the directory; relying on polling');
      }
    }
    if (this.#pollMs > 0) {
      this.#pollTimer = setInterval(() => void this.#poll(), this.#pollMs);
      this.#pollTimer.unref();
    }
  }

  /** Cheap check: a stat, and a reload only when the file's signature moved. */
  async #poll(): Promise<void> {
    if (this.#state !== 'running' || this.#pollInFlight) return;
    this.#pollInFlight = true;
    try {
      const sig = await signature(this.file);
      if (!sameSignature(sig, this.#lastSig)) this.#schedule();
    } finally {
      this.#pollInFlight = false;
    }
  }

  #schedule(): void {
    if (this.#state === 'starting') {
      this.#changedWhileStarting = true;
      return;
    }
    if (this.#state !== 'running') return;
    // Coalesce, do not postpone: notices that arrive while a read is already scheduled join it.
    // Re-arming the timer on every notice would starve the reload under a steady stream of them
    // (a fast poll, or a process that keeps appending to the file).
    if (this.#debounceTimer !== undefined) return;
    this.#debounceTimer = setTimeout(() => {
      this.#debounceTimer = undefined;
      this.#kick();
    }, this.#debounceMs);
  }

  #kick(): void {
    if (this.#state !== 'running') return;
    if (this.#inFlight !== undefined) {
      this.#again = true;
      return;
    }
    this.#inFlight = (async () => {
      do {
        this.#again = false;
        await this.#reloadOnce();
      } while (this.#again && this.#state === 'running');
    })()
      .catch((err: unknown) => this.#log.error({ err }, 'BUG: reloading ward.yaml failed unexpectedly'))
      .finally(() => {
        this.#inFlight = undefined;
      });
  }

  async #reloadOnce(): Promise<void> {
    let text: string;
    let sig: FileSignature | undefined;
    try {
      ({ text, sig } = await this.#read());
    } catch (err) {
      if (!(err instanceof ConfigInvalidError)) throw err;
      // Report an unreadable file once, not at every notice while it stays unreadable.
      if (this.#lastText === undefined && this.#lastError?.message === err.message) return;
      this.#lastText = undefined;
      this.#lastSig = undefined;
      this.#reject(err);
      return;
    }
    this.#lastSig = sig;
    if (text === this.#lastText) return;
    this.#lastText = text;
    let model: MeshModel;
    try {
      model = parseWardYaml(text, this.file);
    } catch (err) {
      if (!(err instanceof ConfigInvalidError)) throw err;
      this.#reject(err);
      return;
    }
    if (this.#state !== 'running') return;
    const diff = diffModels(this.current(), model);
    this.#lastError = undefined;
    this.#applied++;
    this.#appliedAt = this.#clock.now();
    this.#reloads?.inc({ result: 'applied' });
    if (diff.empty) {
      // Keep the old object: current() changes identity exactly when 'update' is emitted.
      this.#log.info({ file: this.file }, 'ward.yaml changed, the mesh did not');
      return;
    }
    this.#model = model;
    this.#log.info({ file: this.file, ...diffSummary(diff) }, 'applied change to ward.yaml');
    this.#emitSafely('update', model, diff);
  }

  #reject(err: ConfigInvalidError): void {
    if (this.#state !== 'running') return;
    this.#rejected++;
    this.#rejectedAt = this.#clock.now();
    this.#lastError = err;
    this.#reloads?.inc({ result: 'rejected' });
    this.#log.warn(
      { file: this.file, problems: err.total, errors: err.issues.slice(0, 20).map(formatIssue) },
      'rejected change to ward.yaml; keeping the last good configuration',
    );
    this.#emitSafely('rejected', err);
  }

  // A throwing listener is the listener's bug; it must not stop the source from watching.
  #emitSafely<K extends keyof LocalFileSourceEvents>(event: K, ...args: LocalFileSourceEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (err) {
      this.#log.error({ err, event }, 'BUG: a LocalFileSource listener threw');
    }
  }

  /** Reads the file, bounded in size and strict about UTF-8; failures become ConfigInvalidError. */
  async #read(): Promise<{ text: string; sig: FileSignature | undefined }> {
    const fail = (reason: string): ConfigInvalidError =>
      new ConfigInvalidError(this.file, [{ file: this.file, path: '(document)', reason }]);
    let handle;
    try {
      handle = await open(this.file, 'r');
    } catch (err) {
      throw fail(`cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw fail('is not a regular file');
      const max = WARD_YAML_LIMITS.maxBytes;
      if (st.size > max) throw fail(`file is ${st.size} bytes; at most ${max} (1 MiB) are accepted`);
      // Read up to max+1 bytes whatever stat said: the file may be growing under us.
      const buf = Buffer.alloc(max + 1);
      let n = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buf, n, buf.length - n, n);
        if (bytesRead === 0) break;
        n += bytesRead;
        if (n === buf.length) throw fail(`file is over ${max} bytes; at most ${max} (1 MiB) are accepted`);
      }
      let text: string;
      try {
        text = STRICT_UTF8.decode(buf.subarray(0, n));
      } catch {
        throw fail('file is not valid UTF-8');
      }
      return { text, sig: { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs } };
    } catch (err) {
      if (err instanceof ConfigInvalidError) throw err;
      throw fail(`cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    } finally {
      await handle.close();
    }
  }
}

async function signature(file: string): Promise<FileSignature | undefined> {
  try {
    const st = await stat(file);
    return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
  } catch {
    return undefined;
  }
}

function summary(m: MeshModel | undefined): Record<string, number> {
  if (m === undefined) return {};
  return { nodes: m.nodes.length, workloads: m.workloads.length, services: m.services.length, policies: m.policies.length, routes: m.routes.length };
}

function diffSummary(d: ModelDiff): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (d.trustDomainChanged) out.trustDomainChanged = true;
  for (const kind of ['nodes', 'workloads', 'services', 'policies', 'routes'] as const) {
    const k = d[kind];
    const n = k.added.length + k.removed.length + k.changed.length;
    if (n > 0) out[kind] = { added: k.added.length, removed: k.removed.length, changed: k.changed.length };
  }
  return out;
}
