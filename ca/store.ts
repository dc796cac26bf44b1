/**
 * The CA state directory: layout, the persisted state record, and crash-safe file primitives.
 *
 * Layout (everything below `stateDir`, which is created with mode 0700):
 *
 *   ca.json                 the state record (CaStateFile below): trust domain, every root and issuing
 *                           intermediate with its lifecycle state, and the rotation in progress. It is
 *                           the COMMIT POINT of every multi-file step: material files are written
 *                           first, ca.json last, so a crash in between leaves files that ca.json does
 *                           not name; open() and init() delete those orphans.
 *   roots/<id>.pem          one root certificate
 *   issuers/<id>.pem        an issuing intermediate followed by any further intermediates up to, but
 *                           not including, its root (the chain a workload presents after its leaf)
 *   keys/<id>.key           PKCS#8 private key of a root or intermediate, mode 0600. A root key is
 *                           absent when the operator brought their own intermediate.
 *   inventory.jsonl         one JSON line per issued certificate (append-only, group-committed)
 *   audit.jsonl             one JSON line per issuance decision, issued or refused (same)
 *
 * `<id>` is the certificate's SHA-256 fingerprint as lowercase hex without colons.
 *
 * Durability: whole files are replaced with write-tmp → fsync → rename → fsync(dir), so a reader (or
 * a restart after a crash at any point) sees either the old or the new content, never a torn file.
 * Temporary files are named `.<name>.tmp-<pid>-<random>` and swept at open.
 *
 * One process owns a state directory at a time: nothing here locks against a second CA process
 * (for example two replicas on a shared volume), which would interleave appends and rotations.
 */
import { constants } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, stat, unlink, chmod } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { WardError } from '../core/errors.js';

export const STATE_FILE = 'ca.json';
export const ROOTS_DIR = 'roots';
export const ISSUERS_DIR = 'issuers';
export const KEYS_DIR = 'keys';
export const INVENTORY_FILE = 'inventory.jsonl';
export const AUDIT_FILE = 'audit.jsonl';

export const STATE_DIR_MODE = 0o700;
export const KEY_FILE_MODE = 0o600;
export const PUBLIC_FILE_MODE = 0o644;

/**
 * Crash-injection points for tests. A hook that throws simulates the process dying right after that
 * step: nothing after it runs (the caller sees the exception, the files stay as they are).
 */
export interface StoreHooks {
  onStep?(step: 'tmp-synced' | 'renamed' | 'appended' | 'removed', file: string): void;
}

// ---------------------------------------------------------------------------------------------
// Persisted state record (ca.json)

/**
 * Lifecycle of a root or issuing intermediate:
 *   next      prepared by a rotation; a next root is already in the trust bundle, a next issuer signs nothing
 *   active    the root / issuer that signs now (exactly one of each)
 *   previous  replaced by activate(); a previous root stays in the bundle until retire()
 *   retired   out of the bundle, key deleted; kept in the record for history
 */
export type CaCertState = 'next' | 'active' | 'previous' | 'retired';
/** Who made the material: Ward ('generated') or the operator ('byo', bring your own). */
export type CaOrigin = 'generated' | 'byo';

export interface RootEntry {
  fingerprint: string; // SHA-256, uppercase hex with colons (as Certificate.fingerprintSha256)
  state: CaCertState;
  origin: CaOrigin;
  hasKey: boolean;
  addedAt: string; // ISO
  retiredAt?: string;
}

export interface IssuerEntry {
  fingerprint: string;
  root: string; // fingerprint of the root its chain ends in
  state: CaCertState;
  origin: CaOrigin;
  addedAt: string;
  activatedAt?: string;
  retiredAt?: string;
}

export interface RotationEntry {
  kind: 'intermediate' | 'root';
  phase: 'prepared' | 'activated';
  preparedAt: string;
  activatedAt?: string;
}

export interface CaStateFile {
  version: 1;
  trustDomain: string;
  createdAt: string;
  /** Lifetimes Ward uses when it generates a root / intermediate (chosen at init, reused by rotations). */
  rootTtlMs: number;
  intermediateTtlMs: number;
  /** Increases whenever the set of roots in the trust bundle changes (SPIFFE bundle sequence). */
  bundleSequence: number;
  roots: RootEntry[];
  issuers: IssuerEntry[];
  rotation: RotationEntry | null;
}

/** File-name stem for a certificate: lowercase hex fingerprint without colons. */
export function fileStem(fingerprint: string): string {
  return fingerprint.replace(/:/g, '').toLowerCase();
}

export function rootCertPath(stateDir: string, fp: string): string {
  return join(stateDir, ROOTS_DIR, `${fileStem(fp)}.pem`);
}
export function issuerCertPath(stateDir: string, fp: string): string {
  return join(stateDir, ISSUERS_DIR, `${fileStem(fp)}.pem`);
}
export function keyPath(stateDir: string, fp: string): string {
  return join(stateDir, KEYS_DIR, `${fileStem(fp)}.key`);
}

const CERT_STATES = new Set<CaCertState>(['next', 'active', 'previous', 'retired']);
const FP_RE = /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/;

function corrupt(stateDir: string, detail: string): WardError {
  return new WardError('WARD_CA_STATE_CORRUPT', `${join(stateDir, STATE_FILE)}: ${detail}`);
}

/**
 * Checks the invariants every committed state must hold, so that a hand-edited or damaged ca.json is
 * refused at open with a precise reason instead of misbehaving later.
 */
export function validateState(stateDir: string, raw: unknown): CaStateFile {
  const s = raw as CaStateFile;
  if (typeof s !== 'object' || s === null) throw corrupt(stateDir, 'not a JSON object');
  if (s.version !== 1) throw corrupt(stateDir, `unsupported version ${JSON.stringify(s.version)}`);
  if (typeof s.trustDomain !== 'string' || s.trustDomain === '') throw corrupt(stateDir, 'trustDomain missing');
  if (!Array.isArray(s.roots) || !Array.isArray(s.issuers)) throw corrupt(stateDir, 'roots/issuers missing');
  for (const k of ['rootTtlMs', 'intermediateTtlMs', 'bundleSequence'] as const) {
    if (!Number.isSafeInteger(s[k]) || s[k] < 0) throw corrupt(stateDir, `${k} must be a non-negative integer`);
  }
  for (const e of [...s.roots, ...s.issuers]) {
    if (typeof e?.fingerprint !== 'string' || !FP_RE.test(e.fingerprint)) throw corrupt(stateDir, `bad fingerprint ${JSON.stringify(e?.fingerprint)}`);
    if (!CERT_STATES.has(e.state)) throw corrupt(stateDir, `bad state ${JSON.stringify(e.state)} for ${e.fingerprint}`);
  }
  const rootFps = new Set(s.roots.map((r) => r.fingerprint));
  for (const i of s.issuers) {
    if (!rootFps.has(i.root)) throw corrupt(stateDir, `issuer ${i.fingerprint} names unknown root ${i.root}`);
  }
  const count = (list: { state: CaCertState }[], st: CaCertState) => list.filter((e) => e.state === st).length;
  if (count(s.roots, 'active') !== 1) throw corrupt(stateDir, 'there must be exactly one active root');
  if (count(s.issuers, 'active') !== 1) throw corrupt(stateDir, 'there must be exactly one active issuer');
  const active = s.issuers.find((i) => i.state === 'active')!;
  if (s.roots.find((r) => r.fingerprint === active.root)?.state === 'retired') throw corrupt(stateDir, 'the active issuer chains to a retired root');
  const nextCount = count(s.roots, 'next') + count(s.issuers, 'next');
  const prevCount = count(s.roots, 'previous') + count(s.issuers, 'previous');
  const r = s.rotation;
  if (r === null || r === undefined) {
    if (nextCount + prevCount > 0) throw corrupt(stateDir, 'next/previous certificates but no rotation in progress');
    s.rotation = null;
  } else {
    if (r.kind !== 'intermediate' && r.kind !== 'root') throw corrupt(stateDir, `bad rotation kind ${JSON.stringify(r.kind)}`);
    if (r.phase === 'prepared') {
      if (count(s.issuers, 'next') !== 1 || prevCount !== 0) throw corrupt(stateDir, 'prepared rotation needs exactly one next issuer');
      if (count(s.roots, 'next') !== (r.kind === 'root' ? 1 : 0)) throw corrupt(stateDir, 'prepared rotation has the wrong number of next roots');
    } else if (r.phase === 'activated') {
      if (nextCount !== 0 || count(s.issuers, 'previous') < 1) throw corrupt(stateDir, 'activated rotation needs a previous issuer');
      if (count(s.roots, 'previous') !== (r.kind === 'root' ? 1 : 0)) throw corrupt(stateDir, 'activated rotation has the wrong number of previous roots');
    } else {
      throw corrupt(stateDir, `bad rotation phase ${JSON.stringify((r as RotationEntry).phase)}`);
    }
  }
  return s;
}

export async function readState(stateDir: string): Promise<CaStateFile | undefined> {
  let text: string;
  try {
    text = await readFile(join(stateDir, STATE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new WardError('WARD_CA_STATE_CORRUPT', `cannot read ${join(stateDir, STATE_FILE)}: ${(err as Error).message}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new WardError('WARD_CA_STATE_CORRUPT', `${join(stateDir, STATE_FILE)} is not valid JSON`, { cause });
  }
  return validateState(stateDir, raw);
}

export async function writeState(stateDir: string, state: CaStateFile, hooks?: StoreHooks): Promise<void> {
  await writeFileDurable(join(stateDir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, { mode: PUBLIC_FILE_MODE, hooks });
}

// ---------------------------------------------------------------------------------------------
// File primitives

/** Creates the state directory and its subdirectories with mode 0700 (tightening an existing one). */
export async function ensureStateDir(stateDir: string): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: STATE_DIR_MODE });
  await chmod(stateDir, STATE_DIR_MODE);
  for (const sub of [ROOTS_DIR, ISSUERS_DIR, KEYS_DIR]) {
    await mkdir(join(stateDir, sub), { mode: STATE_DIR_MODE }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await chmod(join(stateDir, sub), STATE_DIR_MODE);
  }
  // The new directory entries themselves must survive a crash.
  await fsyncDir(stateDir);
  await fsyncDir(dirname(stateDir)).catch(() => undefined);
}

/** fsync a directory so that renames/creations/unlinks inside it are durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const TMP_RE = /^\..+\.tmp-\d+-[0-9a-f]{8}$/;

/**
 * Replaces `path` atomically and durably: after it resolves the new content survives a crash, and a
 * crash at any earlier point leaves the previous content intact (plus, at worst, a stale tmp file).
 */
export async function writeFileDurable(
  path: string,
  data: string | Buffer,
  o: { mode?: number; hooks?: StoreHooks } = {},
): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  // 'wx': never follow or reuse an existing file; the mode is applied at creation, so a key is
  // never readable by others even for an instant.
  const fh = await open(tmp, 'wx', o.mode ?? PUBLIC_FILE_MODE);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  o.hooks?.onStep?.('tmp-synced', path);
  await rename(tmp, path);
  o.hooks?.onStep?.('renamed', path);
  await fsyncDir(dir);
}

/** Deletes a file durably (no error when already absent). */
export async function removeFileDurable(path: string, hooks?: StoreHooks): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return;
  }
  hooks?.onStep?.('removed', path);
  await fsyncDir(dirname(path));
}

/**
 * Reads a private key file, refusing it when group or other users have any access: a CA key that
 * others can read must be treated as compromised, so starting anyway would hide the problem.
 * The mode is checked on the opened descriptor, so the file checked is the file read.
 */
export async function readKeyFile(path: string): Promise<string> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new WardError('WARD_CA_STATE_CORRUPT', `cannot read private key file ${path}: ${code ?? (err as Error).message}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new WardError('WARD_CA_STATE_CORRUPT', `private key file ${path} is not a regular file`);
    const perm = st.mode & 0o777;
    if ((perm & 0o077) !== 0) {
      throw new WardError(
        'WARD_CA_STATE_PERMISSIONS',
        `private key file ${path} has mode ${perm.toString(8).padStart(4, '0')}, so group/other users can access it; ` +
          `restrict it with \`chmod 600 ${path}\` (and consider the key compromised if others could read it)`,
      );
    }
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

export async function readTextFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new WardError('WARD_CA_STATE_CORRUPT', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/**
 * Removes what an interrupted step left behind: stale tmp files anywhere in the layout, and
 * certificate/key files that the committed ca.json does not reference. Returns what was removed.
 */
export async function sweepOrphans(stateDir: string, state: CaStateFile | undefined): Promise<string[]> {
  const keep = new Set<string>();
  if (state) {
    for (const r of state.roots) {
      keep.add(rootCertPath(stateDir, r.fingerprint));
      if (r.hasKey && r.state !== 'retired') keep.add(keyPath(stateDir, r.fingerprint));
    }
    for (const i of state.issuers) {
      keep.add(issuerCertPath(stateDir, i.fingerprint));
      if (i.state !== 'retired') keep.add(keyPath(stateDir, i.fingerprint));
    }
  }
  const removed: string[] = [];
  const list = async (dir: string) => (await readdir(dir).catch(() => [] as string[])).map((n) => join(dir, n));
  for (const p of await list(stateDir)) {
    if (TMP_RE.test(basename(p))) removed.push(p);
  }
  for (const sub of [ROOTS_DIR, ISSUERS_DIR, KEYS_DIR]) {
    for (const p of await list(join(stateDir, sub))) {
      const name = basename(p);
      const ours = TMP_RE.test(name) || /^[0-9a-f]{64}\.(pem|key)$/.test(name);
      if (ours && !keep.has(p)) removed.push(p);
    }
  }
  for (const p of removed) await removeFileDurable(p);
  return removed;
}

/** Mode bits of the state directory (for a warning when it is wider than 0700). */
export async function stateDirMode(stateDir: string): Promise<number | undefined> {
  try {
    return (await stat(stateDir)).mode & 0o777;
  } catch {
    return undefined;
  }
}
