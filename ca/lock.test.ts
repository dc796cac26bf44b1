import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../test/helpers/openssl.js';
import { errorOf } from '../test/helpers/errors.js';
import { StateLock } from './lock.js';

const lockFile = (dir: string) => join(dir, 'ca.lock');
const lockOf = (pid: number) => JSON.stringify({ pid, holder: 'ward control', startedAt: new Date(0).toISOString(), nonce: 'left-behind' }) + '\n';

describe('StateLock: who holds the state directory', () => {
  it('a lock naming THIS process is debris from an earlier life with the same pid (a restarted container: pid 1 again) and is taken over', async () => {
    const dir = await tempDir();
    await writeFile(lockFile(dir), lockOf(process.pid));
    const lock = await StateLock.acquire(dir, 'ward control', new Date());
    expect(JSON.parse(await readFile(lockFile(dir), 'utf8'))).toMatchObject({ pid: process.pid, holder: 'ward control' });
    expect(JSON.parse(await readFile(lockFile(dir), 'utf8')).nonce).not.toBe('left-behind');
    await lock.release();
  });

  it('a lock held by another live process is refused, naming it', async () => {
    const dir = await tempDir();
    const other = spawn(process.execPath, ['-e', 'process.stdin.resume()'], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      await once(other, 'spawn');
      await writeFile(lockFile(dir), lockOf(other.pid!));
      const e = await errorOf(StateLock.acquire(dir, 'ward control', new Date()));
      expect(e.code).toBe('WARD_CA_STATE_LOCKED');
      expect(e.message).toContain(`in use by process ${other.pid}`);
    } finally {
      other.kill('SIGKILL');
      await once(other, 'exit');
    }
  });
});
