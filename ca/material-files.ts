/**
 * The CA's material as a flat set of named files — what Kubernetes mode keeps in the Secret
 * `ward-ca` so that a control plane on an emptyDir comes back with the same roots and keys.
 *
 * Material = ca.json + roots/*.pem + issuers/*.pem + keys/*.key (never the inventory, the audit log,
 * tokens or locks: those are the running server's records). Names are flattened for Secret keys
 * (`[-._a-zA-Z0-9]+`): `roots/<stem>.pem` ↔ `roots.<stem>.pem`. Import writes keys 0600 and the
 * rest as the store does, into a directory that holds no CA yet; anything unexpected is refused.
 */
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WardError } from '../core/errors.js';
import { ISSUERS_DIR, KEY_FILE_MODE, KEYS_DIR, PUBLIC_FILE_MODE, ROOTS_DIR, STATE_DIR_MODE, STATE_FILE, writeFileDurable } from './store.js';

const DIRS = [
  { dir: ROOTS_DIR, ext: '.pem', mode: PUBLIC_FILE_MODE },
  { dir: ISSUERS_DIR, ext: '.pem', mode: PUBLIC_FILE_MODE },
  { dir: KEYS_DIR, ext: '.key', mode: KEY_FILE_MODE },
] as const;
/** A file stem in the state directory: a lowercase hex fingerprint. */
const STEM = /^[0-9a-f]{64}$/;
/** More files than this is not a CA (a few roots and intermediates, each with a key). */
const MAX_FILES = 64;

/** Reads the CA material of `stateDir` as flat name → bytes. */
export async function exportCaMaterial(stateDir: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = { [STATE_FILE]: await readFile(join(stateDir, STATE_FILE)) };
  for (const { dir, ext } of DIRS) {
    for (const name of (await readdir(join(stateDir, dir))).sort()) {
      if (!name.endsWith(ext) || !STEM.test(name.slice(0, -ext.length))) continue;
      out[`${dir}.${name}`] = await readFile(join(stateDir, dir, name));
    }
  }
  return out;
}

/** Writes flat material (from exportCaMaterial) into `stateDir`; refuses names it does not know. */
export async function importCaMaterial(stateDir: string, files: Readonly<Record<string, Buffer>>): Promise<void> {
  const names = Object.keys(files);
  if (names.length > MAX_FILES) throw new WardError('WARD_CA_STATE_CORRUPT', `the CA material has ${names.length} files; at most ${MAX_FILES} are expected`);
  if (!files[STATE_FILE]) throw new WardError('WARD_CA_STATE_CORRUPT', `the CA material has no ${STATE_FILE}`);
  const plan: { path: string; data: Buffer; mode: number }[] = [{ path: join(stateDir, STATE_FILE), data: files[STATE_FILE], mode: PUBLIC_FILE_MODE }];
  for (const name of names) {
    if (name === STATE_FILE) continue;
    const d = DIRS.find((x) => name.startsWith(`${x.dir}.`) && name.endsWith(x.ext));
    const stem = d ? name.slice(d.dir.length + 1, -d.ext.length) : '';
    if (!d || !STEM.test(stem)) throw new WardError('WARD_CA_STATE_CORRUPT', `unexpected file ${JSON.stringify(name.slice(0, 80))} in the CA material`);
    plan.push({ path: join(stateDir, d.dir, `${stem}${d.ext}`), data: files[name], mode: d.mode });
  }
  await mkdir(stateDir, { recursive: true, mode: STATE_DIR_MODE });
  for (const { dir } of DIRS) await mkdir(join(stateDir, dir), { recursive: true, mode: STATE_DIR_MODE });
  // Keys and certificates first, ca.json last: a crash in between leaves no state file, so the
  // directory is not mistaken for a complete CA.
  for (const f of plan.slice(1)) await writeFileDurable(f.path, f.data, { mode: f.mode });
  await writeFileDurable(plan[0].path, plan[0].data, { mode: plan[0].mode });
}
