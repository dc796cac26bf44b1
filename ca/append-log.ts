/**
 * An append-only JSON-lines file with group commit, used by the inventory and the audit log.
 *
 * Why group commit: every issuance must be durable before the caller gets its certificate, but an
 * fsync per record would cap issuance at the disk's sync rate (a few hundred per second). Instead,
 * appends made while a write+fsync is in flight are gathered into the next batch; each batch costs
 * one write and one fdatasync, and every append() promise resolves only once its batch is durable.
 * Under load batches grow, so throughput follows the CPU (signing), not the disk.
 *
 * Ordering: batches are written strictly one after another, in append order; a record is never
 * acknowledged before every record appended before it is durable too.
 *
 * Failure: if a write or fsync fails, the file's durable content is unknown (after a failed fsync
 * Linux may drop the dirty pages and report success later), so the log fails closed: the batch and
 * every later append reject, and the CA must be restarted, which re-reads and repairs the file.
 *
 * Crash recovery (open): a final line without its newline, or a final line that does not parse, is
 * what a crash during an append leaves; it was never acknowledged, so it is truncated away and
 * reported. A bad line followed by good ones is real corruption and refuses to open.
 */
import { constants, createReadStream } from 'node:fs';
import { open, truncate, type FileHandle } from 'node:fs/promises';
import { bug, WardError } from '../core/errors.js';
import { fsyncDir, type StoreHooks } from './store.js';
import { dirname } from 'node:path';

export interface TornTail {
  file: string;
  /** Byte offset where the kept content ends (the file was truncated to this length). */
  offset: number;
  /** Bytes discarded. */
  bytes: number;
}

export interface AppendLogOptions {
  /** Maximum records waiting to be made durable (queued plus in flight). Past it append() sheds. */
  maxPending: number;
  hooks?: StoreHooks;
  /**
   * Replay only: no repair, no file opened for writing, append() is a bug. A read-only open may run
   * beside the writer (the lock holder), so an incomplete last line is the writer's append in
   * progress, not a crash leftover: it is skipped, never truncated.
   */
  readOnly?: boolean;
}

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Every append() caller awaits this promise; the no-op handler only stops a rejection of a batch
  // whose callers have all gone from being reported as unhandled.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

const NEWLINE = 0x0a;

/**
 * Streams the complete lines of a JSONL file to `onRecord`, in order. Returns the byte length of the
 * valid prefix and, when the file ends in a torn record, where it starts. A file that does not exist
 * reads as empty.
 *
 * `strict`: a bad line followed by good lines throws WARD_CA_STATE_CORRUPT (used at open). When not
 * strict (queries racing with appends) bad lines are skipped.
 */
export async function scanJsonl(
  path: string,
  onRecord: (rec: unknown) => void,
  o: { strict: boolean } = { strict: true },
): Promise<{ validLength: number; fileLength: number; tornAt?: number }> {
  let offset = 0; // bytes consumed into complete lines
  let validLength = 0; // end of the last good line
  let badAt: number | undefined; // start of the first bad complete line not yet followed by a good one
  let lineNo = 0;
  let rest: Buffer | undefined;
  const stream = createReadStream(path, { highWaterMark: 256 * 1024 });
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
      let start = 0;
      for (let nl = buf.indexOf(NEWLINE, start); nl !== -1; nl = buf.indexOf(NEWLINE, start)) {
        lineNo++;
        const lineStart = offset;
        offset += nl - start + 1;
        let rec: unknown;
        let ok = true;
        try {
          rec = JSON.parse(buf.toString('utf8', start, nl));
          ok = typeof rec === 'object' && rec !== null;
        } catch {
          ok = false;
        }
        start = nl + 1;
        if (!ok) {
          if (badAt === undefined) badAt = lineStart;
          continue;
        }
        if (badAt !== undefined) {
          if (o.strict) {
            throw new WardError('WARD_CA_STATE_CORRUPT', `${path}: unreadable record before line ${lineNo} (byte ${badAt}) followed by valid records`);
          }
          badAt = undefined;
        }
        onRecord(rec);
        validLength = offset;
      }
      rest = start < buf.length ? buf.subarray(start) : undefined;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { validLength: 0, fileLength: 0 };
    throw err;
  }
  const fileLength = offset + (rest?.length ?? 0);
  const tornAt = validLength < fileLength ? validLength : undefined;
  return { validLength, fileLength, tornAt };
}

export class AppendLog<T> {
  readonly path: string;
  readonly #fh: FileHandle | undefined;
  readonly #maxPending: number;
  readonly #hooks?: StoreHooks;
  readonly #onDurable: (records: T[]) => void;

  #queuedLines: string[] = [];
  #queuedRecords: T[] = [];
  #queued: Deferred | undefined;
  #inFlight = 0;
  #flushing = false;
  #scheduled = false;
  #failure: WardError | undefined;
  #closing: Promise<void> | undefined;
  #idle: Deferred | undefined;

  private constructor(path: string, fh: FileHandle | undefined, o: AppendLogOptions, onDurable: (records: T[]) => void) {
    this.path = path;
    this.#fh = fh;
    this.#maxPending = o.maxPending;
    this.#hooks = o.hooks;
    this.#onDurable = onDurable;
  }

  /**
   * Opens (creating if needed) the log: replays every existing record through `onRecord`, repairs a
   * torn tail, then opens the file for appending. `onDurable` sees each batch after its fsync.
   */
  static async open<T>(
    path: string,
    o: AppendLogOptions,
    onRecord: (rec: unknown) => void,
    onDurable: (records: T[]) => void,
  ): Promise<{ log: AppendLog<T>; torn?: TornTail }> {
    const scan = await scanJsonl(path, onRecord, { strict: true });
    if (o.readOnly) return { log: new AppendLog<T>(path, undefined, o, onDurable) };
    let torn: TornTail | undefined;
    if (scan.tornAt !== undefined) {
      // The torn record was never acknowledged (its batch's fsync had not returned), so dropping it
      // loses nothing a caller was promised, and new appends must not be glued onto it.
      await truncate(path, scan.tornAt);
      torn = { file: path, offset: scan.tornAt, bytes: scan.fileLength - scan.tornAt };
    }
    const fh = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o600);
    try {
      await fh.sync();
      await fsyncDir(dirname(path));
    } catch (err) {
      await fh.close();
      throw err;
    }
    return { log: new AppendLog<T>(path, fh, o, onDurable), torn };
  }

  /** Set once a write or fsync failed: the log then refuses every append until the CA restarts. */
  get failure(): WardError | undefined {
    return this.#failure;
  }

  /** Records queued or being written. */
  get pending(): number {
    return this.#queuedLines.length + this.#inFlight;
  }

  /** Whether `n` more records fit in the queue now. */
  hasRoom(n = 1): boolean {
    return this.pending + n <= this.#maxPending;
  }

  /**
   * Queues one record; resolves once it is durable. Rejects with WARD_CA_RATE_LIMITED when the queue
   * is full (the caller sheds instead of the queue growing), or when the log has failed or closed.
   */
  append(record: T): Promise<void> {
    if (!this.#fh) bug(`append to ${this.path} opened read-only`);
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#closing) return Promise.reject(new WardError('WARD_CA_INTERNAL', `${this.path}: log is closed`));
    if (!this.hasRoom()) {
      return Promise.reject(new WardError('WARD_CA_RATE_LIMITED', 'the CA is overloaded: the durable-write queue is full; retry later'));
    }
    this.#queuedLines.push(`${JSON.stringify(record)}\n`);
    this.#queuedRecords.push(record);
    this.#queued ??= deferred();
    const p = this.#queued.promise;
    if (!this.#flushing && !this.#scheduled) {
      // An idle log starts writing as soon as the current synchronous work yields, rather than
      // waiting a whole event-loop turn: the signing of the requests that follow then overlaps with
      // this write's fsync instead of waiting for it, and they form the next batch.
      this.#scheduled = true;
      queueMicrotask(() => void this.#flush());
    }
    return p;
  }

  async #flush(): Promise<void> {
    this.#scheduled = false;
    if (this.#flushing) return;
    this.#flushing = true;
    while (this.#queuedLines.length > 0 && !this.#failure) {
      const lines = this.#queuedLines;
      const records = this.#queuedRecords;
      const batch = this.#queued!;
      this.#queuedLines = [];
      this.#queuedRecords = [];
      this.#queued = undefined;
      this.#inFlight = lines.length;
      try {
        const buf = Buffer.from(lines.join(''), 'utf8');
        let written = 0;
        while (written < buf.length) {
          const { bytesWritten } = await this.#fh!.write(buf, written, buf.length - written);
          written += bytesWritten;
        }
        this.#hooks?.onStep?.('appended', this.path);
        await this.#fh!.datasync();
      } catch (err) {
        this.#failure =
          err instanceof WardError ? err : new WardError('WARD_CA_INTERNAL', `${this.path}: durable append failed: ${(err as Error).message}`, { cause: err });
        batch.reject(this.#failure);
        // Appends made while this batch was in flight cannot be written after a failure either.
        (this.#queued as Deferred | undefined)?.reject(this.#failure);
        this.#queuedLines = [];
        this.#queuedRecords = [];
        this.#queued = undefined;
        this.#inFlight = 0;
        break;
      }
      this.#inFlight = 0;
      this.#onDurable(records);
      batch.resolve();
    }
    this.#flushing = false;
    this.#idle?.resolve();
    this.#idle = undefined;
  }

  /** Resolves when everything appended so far is durable (or the log has failed). */
  async flush(): Promise<void> {
    if (!this.#flushing && !this.#scheduled) return;
    this.#idle ??= deferred();
    await this.#idle.promise;
  }

  /** Stops accepting appends, makes the queued ones durable, closes the file. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.flush();
      await this.#fh?.close();
    })();
    return this.#closing;
  }
}

/** The newest `capacity` records, in a ring: bounded memory however long the CA runs. */
export class RecentWindow<T> {
  readonly capacity: number;
  readonly #ring: T[] = [];
  #next = 0;

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  get size(): number {
    return this.#ring.length;
  }

  push(rec: T): void {
    if (this.#ring.length < this.capacity) {
      this.#ring.push(rec);
    } else {
      this.#ring[this.#next] = rec;
      this.#next = (this.#next + 1) % this.capacity;
    }
  }

  /** Up to `limit` records matching `match`, newest first. */
  latest(limit: number, match?: (rec: T) => boolean): T[] {
    const out: T[] = [];
    const n = this.#ring.length;
    for (let i = 1; i <= n && out.length < limit; i++) {
      const rec = this.#ring[(this.#next - i + n) % n];
      if (!match || match(rec)) out.push(rec);
    }
    return out;
  }
}

export const DEFAULT_QUERY_LIMIT = 100;
export const MAX_QUERY_LIMIT = 1000;

export function queryLimit(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_QUERY_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_QUERY_LIMIT) {
    throw new WardError('WARD_CA_REQUEST_INVALID', `query limit must be an integer from 1 to ${MAX_QUERY_LIMIT}, got ${String(limit)}`);
  }
  return limit;
}

/**
 * The newest `limit` durable records matching `match`, newest first. Answered from the recent window
 * when it provably holds the answer (no filter, or it still holds every record ever written);
 * otherwise the file is scanned, keeping only `limit` matches in memory.
 */
export async function queryRecords<T>(
  path: string,
  window: RecentWindow<T>,
  totalRecords: number,
  limit: number,
  match: ((rec: T) => boolean) | undefined,
  decode: (raw: unknown) => T | undefined,
): Promise<T[]> {
  if (!match && limit <= window.size) return window.latest(limit);
  if (totalRecords <= window.size) return window.latest(limit, match);
  const ring = new RecentWindow<T>(limit);
  await scanJsonl(
    path,
    (raw) => {
      const rec = decode(raw);
      if (rec !== undefined && (!match || match(rec))) ring.push(rec);
    },
    { strict: false },
  );
  return ring.latest(limit);
}
