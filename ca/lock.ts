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
 * The lock is a file holding the owner's pid and a random nonce. It appears whole: it is written
 * to a private file first and hard-linked into place (link() fails with EEXIST when a lock exists),
 * so no process ever reads a half-written lock and mistakes it for debris. A lock whose pid no
 * longer runs (a crash, SIGKILL) is stale and taken over. Pids are only meaningful on this host,
 * which is where a state directory with 0600 keys lives.
 *
 * Taking over a stale lock is where two starters race: both read the dead owner's lock, one removes
 * it and takes the lock, and the other's late unlink() would then remove the *new* lock, leaving two
 * writers. So removal is serialized by a claim on that particular stale content
 * (`ca.lock.takeover-<hash>`, created whole, exclusively): only the claim holder may unlink, and
 * only if the lock still holds exactly the content it judged stale. Every lock carries a nonce, so
 * no new lock can have that content.
 */
import { createHash, randomBytes } from 'node:crypto';
import { link, open, readFile, unlink } from 'node:fs/promises';
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
  /** Random per acquisition: no two locks ever have the same content (see the takeover above). */
  nonce?: string;
}

function alive(pid: number): boolean {
  // pid 0 and negative pids address process groups (kill(0) and kill(-1) "succeed"): never a holder.
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
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
  const raw = await readText(join(stateDir, LOCK_FILE)).catch(() => undefined);
  const info = raw === undefined ? undefined : parseLock(raw);
  return info && alive(info.pid) ? info : undefined;
}

function parseLock(raw: string): LockInfo | undefined {
  try {
    const info = JSON.parse(raw) as LockInfo;
    return typeof info === 'object' && info !== null && Number.isSafeInteger(info.pid) ? info : undefined;
  } catch {
    return undefined;
  }
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Creates `path` with `content`, whole and exclusively: written and synced under a private name,
 * then hard-linked into place. Throws EEXIST (from link) when `path` exists.
 */
async function createWhole(path: string, content: string): Promise<void> {
  const tmp = `${path}.${process.pid}-${randomBytes(4).toString('hex')}`;
  const fh = await open(tmp, 'wx', KEY_FILE_MODE);
  try {
    try {
      await fh.writeFile(content);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await link(tmp, path);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/**
 * Removes the lock if it still holds `stale` (content whose owner is gone). Returns without doing
 * anything when another process is removing that same stale lock; the caller then retries.
 */
async function removeStale(path: string, stale: string): Promise<void> {
  const claim = `${path}.takeover-${createHash('sha256').update(stale).digest('hex').slice(0, 16)}`;
  try {
    await createWhole(claim, JSON.stringify({ pid: process.pid }) + '\n');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // Someone holds the claim. If its holder died mid-takeover, clear the claim so the stale lock
    // does not stay forever (racy only if two takers both find that dead claim: a double crash).
    const holder = parseLock((await readText(claim)) ?? '');
    if (!holder || !alive(holder.pid)) await unlink(claim).catch(() => undefined);
    return;
  }
  try {
    if ((await readText(path)) === stale) await unlink(path).catch(() => undefined);
  } finally {
    await unlink(claim).catch(() => undefined);
  }
}

/**
 * Nonces of the locks this process holds now. A lock file naming this process's pid is ours only if
 * its nonce is here; otherwise it is debris from an earlier process that had the same pid (a
 * container restarted after a crash: Node is pid 1 again and the state directory survived).
 * Process-wide on purpose: it mirrors what the pid in the file stands for.
 */
const HELD_NONCES = new Set<string>();

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
    const nonce = randomBytes(12).toString('hex');
    const info: LockInfo = { pid: process.pid, holder, startedAt: now.toISOString(), nonce };
    const content = JSON.stringify(info) + '\n';
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await createWhole(path, content);
        HELD_NONCES.add(nonce);
        return new StateLock(path, info);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const raw = await readText(path);
      if (raw === undefined) continue; // released meanwhile
      const current = parseLock(raw);
      // A lock naming THIS process but not held by it is debris from an earlier life with the same
      // pid (see HELD_NONCES): stale. Without this the control plane would crash-loop after a crash.
      const holderAlive = current !== undefined && (current.pid === process.pid ? current.nonce !== undefined && HELD_NONCES.has(current.nonce) : alive(current.pid));
      if (current && holderAlive) {
        throw new WardError(
          'WARD_CA_STATE_LOCKED',
          `the CA in ${stateDir} is in use by process ${current.pid} (${current.holder}, since ${current.startedAt})` +
            (current.adminUrl ? `; its admin API is ${current.adminUrl}` : '; stop it first'),
        );
      }
      // Stale (its process is gone, or the file is debris): remove exactly that lock, then retry.
      await removeStale(path, raw);
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
    if (this.#info.nonce !== undefined) HELD_NONCES.delete(this.#info.nonce);
    // Only our own lock: never remove one another process holds.
    const current = parseLock((await readText(this.#path).catch(() => undefined)) ?? '');
    if (current?.nonce === this.#info.nonce && current?.pid === this.#info.pid) await unlink(this.#path).catch(() => undefined);
  }
}
