import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { isWardError } from '../core/errors.js';
import {
  ensureStateDir,
  keyPath,
  readKeyFile,
  readState,
  rootCertPath,
  sweepOrphans,
  validateState,
  writeFileDurable,
  writeState,
  type CaStateFile,
} from './store.js';

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-store-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const FP_A = Array.from({ length: 32 }, () => 'AA').join(':');
const FP_B = Array.from({ length: 32 }, () => 'BB').join(':');

function baseState(): CaStateFile {
  return {
    version: 1,
    trustDomain: 'example.org',
    createdAt: '2026-01-01T00:00:00.000Z',
    rootTtlMs: 1e11,
    intermediateTtlMs: 1e10,
    bundleSequence: 1,
    roots: [{ fingerprint: FP_A, state: 'active', origin: 'generated', hasKey: true, addedAt: '2026-01-01T00:00:00.000Z' }],
    issuers: [{ fingerprint: FP_B, root: FP_A, state: 'active', origin: 'generated', addedAt: '2026-01-01T00:00:00.000Z' }],
    rotation: null,
  };
}

describe('writeFileDurable', () => {
  it('replaces content and leaves no temporary file', async () => {
    const dir = await tempDir();
    const p = join(dir, 'f.json');
    await writeFileDurable(p, 'one');
    await writeFileDurable(p, 'two');
    expect(await readFile(p, 'utf8')).toBe('two');
    expect(await readdir(dir)).toEqual(['f.json']);
  });

  it('creates key files 0600 from the first byte (never widened by the umask)', async () => {
    const dir = await tempDir();
    const p = join(dir, 'k.key');
    await writeFileDurable(p, 'secret', { mode: 0o600 });
    expect((await stat(p)).mode & 0o777).toBe(0o600);
  });

  it.each(['tmp-synced', 'renamed'] as const)('a crash after %s leaves the old or the new content, never a torn file', async (step) => {
    const dir = await tempDir();
    const p = join(dir, 'ca.json');
    await writeFileDurable(p, '{"v":1}');
    const crash = new Error('simulated crash');
    await expect(
      writeFileDurable(p, '{"v":2}', {
        hooks: {
          onStep: (s) => {
            if (s === step) throw crash;
          },
        },
      }),
    ).rejects.toBe(crash);
    const content = await readFile(p, 'utf8');
    expect(content).toBe(step === 'tmp-synced' ? '{"v":1}' : '{"v":2}');
    JSON.parse(content);
    // Crashing before the rename leaves a stale tmp file, which the sweep at open removes.
    const leftovers = (await readdir(dir)).filter((n) => n !== 'ca.json');
    expect(leftovers.length).toBe(step === 'tmp-synced' ? 1 : 0);
    await sweepOrphans(dir, undefined);
    expect(await readdir(dir)).toEqual(['ca.json']);
  });
});

describe('readKeyFile', () => {
  it('refuses a key readable by group or other, telling the fix', async () => {
    const dir = await tempDir();
    const p = join(dir, 'k.key');
    await writeFile(p, 'x', { mode: 0o600 });
    expect(await readKeyFile(p)).toBe('x');
    for (const mode of [0o640, 0o604, 0o660, 0o644]) {
      await chmod(p, mode);
      const err = await readKeyFile(p).catch((e: unknown) => e);
      expect(isWardError(err, 'WARD_CA_STATE_PERMISSIONS')).toBe(true);
      expect((err as Error).message).toContain(`chmod 600 ${p}`);
      expect((err as Error).message).toContain(mode.toString(8));
    }
  });

  it('reports a missing key as a corrupt state', async () => {
    const dir = await tempDir();
    const err = await readKeyFile(join(dir, 'nope.key')).catch((e: unknown) => e);
    expect(isWardError(err, 'WARD_CA_STATE_CORRUPT')).toBe(true);
  });
});

describe('state record', () => {
  it('round-trips and is read back validated', async () => {
    const dir = await tempDir();
    await ensureStateDir(dir);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect(await readState(dir)).toBeUndefined();
    await writeState(dir, baseState());
    expect(await readState(dir)).toEqual(baseState());
  });

  it('refuses unreadable or inconsistent records', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'ca.json'), '{"version":1,');
    await expect(readState(dir)).rejects.toMatchObject({ code: 'WARD_CA_STATE_CORRUPT' });
    const bad: Array<[string, (s: CaStateFile) => void]> = [
      ['two active issuers', (s) => s.issuers.push({ ...s.issuers[0], fingerprint: FP_A })],
      ['unknown root', (s) => (s.issuers[0].root = FP_B)],
      ['next without rotation', (s) => s.roots.push({ ...s.roots[0], fingerprint: FP_B, state: 'next' })],
      ['prepared rotation without next issuer', (s) => (s.rotation = { kind: 'intermediate', phase: 'prepared', preparedAt: s.createdAt })],
      ['bad fingerprint', (s) => (s.roots[0].fingerprint = 'zz')],
      ['bad version', (s) => ((s as { version: number }).version = 2)],
    ];
    for (const [what, mutate] of bad) {
      const s = baseState();
      mutate(s);
      expect(() => validateState(dir, s), what).toThrow(expect.objectContaining({ code: 'WARD_CA_STATE_CORRUPT' }));
    }
  });
});

describe('sweepOrphans', () => {
  it('removes certificate and key files the committed state does not reference, and tmp files', async () => {
    const dir = await tempDir();
    await ensureStateDir(dir);
    const state = baseState();
    const stray = Array.from({ length: 32 }, () => 'CC').join(':');
    await writeFile(rootCertPath(dir, FP_A), 'root');
    await writeFile(keyPath(dir, FP_A), 'k', { mode: 0o600 });
    await writeFile(keyPath(dir, FP_B), 'k', { mode: 0o600 });
    await writeFile(keyPath(dir, stray), 'k', { mode: 0o600 });
    await writeFile(rootCertPath(dir, stray), 'x');
    await writeFile(join(dir, '.ca.json.tmp-123-0badc0de'), '{');
    await writeFile(join(dir, 'operator-notes.txt'), 'not ours');
    const removed = await sweepOrphans(dir, state);
    expect(removed.sort()).toEqual([join(dir, '.ca.json.tmp-123-0badc0de'), keyPath(dir, stray), rootCertPath(dir, stray)].sort());
    expect(await readFile(join(dir, 'operator-notes.txt'), 'utf8')).toBe('not ours');
    // A retired issuer keeps its certificate for history but loses its key.
    state.issuers[0].state = 'retired';
    expect(await sweepOrphans(dir, state)).toEqual([keyPath(dir, FP_B)]);
  });
});
