/**
 * One writer per state directory.
 *
 * Only the process holding `<state>/ca.lock` may change the CA (issue, rotate, repair a torn log
 * tail, sweep orphans). Without it, `ward ca issue` run beside `ward ca serve` could cut off a record
 * the server was still appending (mistaking it for a crash leftover), and each process would count
 * and time retirements from a partial view. Readers (`ward ca inspect --state`, `ward ca bundle`)
 * open read-only and need no lock; writers beside a running server go through the server's admin
 * API instead (the lock names its address, and `<state>/admin.token` authenticates them).
 *
 * The lock is a file created with O_EXCL holding the owner's pid. A lock whose pid no longer runs
 * (a crash, SIGKILL) is stale and taken over. Pids are only meaningful on this host, which is
 * where a state directory with 0600 keys lives.
 */
import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { WardError } from '../core/errors.js';
import { KEY_FILE_MODE, writeFileDurable } from './store.js';

export const LOCK_FILE = 'ca.lock';

export interface LockInfo {
  pid: number;
  /** What holds it, for the error message: "ward ca serve", "ward ca issue", ... */
  holder: string;
  startedAt: string;
  /** The holder's admin API, when it serves one (writers beside it go through it). */
  adminUrl?: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else — still alive.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The live holder of the lock, or undefined when the directory is free (or the lock is stale). */
export async function readLock(stateDir: string): Promise<LockInfo | undefined> {
  let info: LockInfo;
  try {
    info = JSON.parse(await readFile(join(stateDir, LOCK_FILE), 'utf8')) as LockInfo;
  } catch {
    return undefined;
  }
  return Number.isInteger(info?.pid) && alive(info.pid) ? info : undefined;
}

export class StateLock {
  readonly #path: string;
  #info: LockInfo;
  #released = false;

  private constructor(path: string, info: LockInfo) {
    this.#path = path;
    this.#info = info;
  }

  /** Takes the lock or throws WARD_CA_STATE_LOCKED naming the live holder. */
  static async acquire(stateDir: string, holder: string, now: Date): Promise<StateLock> {
    const path = join(stateDir, LOCK_FILE);
    const info: LockInfo = { pid: process.pid, holder, startedAt: now.toISOString() };
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await open(path, 'wx', KEY_FILE_MODE);
        try {
          await fh.writeFile(JSON.stringify(info) + '\n');
          await fh.sync();
        } finally {
          await fh.close();
        }
        return new StateLock(path, info);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const current = await readLock(stateDir);
      if (current) {
        throw new WardError(
          'WARD_CA_STATE_LOCKED',
          `the CA in ${stateDir} is in use by process ${current.pid} (${current.holder}, since ${current.startedAt})` +
            (current.adminUrl ? `; its admin API is ${current.adminUrl}` : '; stop it first'),
        );
      }
      // Stale (its process is gone): take it over. A racing taker loses at 'wx' above on retry.
      await unlink(path).catch(() => undefined);
    }
    throw new WardError('WARD_CA_STATE_LOCKED', `could not take the lock ${path}: another process keeps taking it`);
  }

  get info(): LockInfo {
    return this.#info;
  }

  /** Records the admin address once the server listens, so other commands can find it. */
  async advertise(adminUrl: string): Promise<void> {
    this.#info = { ...this.#info, adminUrl };
    await writeFileDurable(this.#path, JSON.stringify(this.#info) + '\n', { mode: KEY_FILE_MODE });
  }

  /** Idempotent. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    await unlink(this.#path).catch(() => undefined);
  }
}
