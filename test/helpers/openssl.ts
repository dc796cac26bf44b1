/**
 * Test helper: runs the `openssl` command line (a verifier nobody here wrote) in a temporary
 * directory that is removed when the test finishes. Tests only.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';

export interface OpensslResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `openssl ...args`; never throws on a non-zero exit (tests assert on `code`). */
export function openssl(args: string[], o: { cwd?: string; input?: string | Buffer; timeoutMs?: number } = {}): Promise<OpensslResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'openssl',
      args,
      { cwd: o.cwd, timeout: o.timeoutMs ?? 20_000, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          reject(err);
          return;
        }
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
    child.stdin?.end(o.input);
  });
}

/** Like openssl() but throws with stderr when the command fails. */
export async function opensslOk(args: string[], o: { cwd?: string; input?: string | Buffer } = {}): Promise<string> {
  const r = await openssl(args, o);
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** A fresh directory under os.tmpdir(), removed (recursively) when the current test finishes. */
export async function tempDir(prefix = 'ward-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `files` (name → contents) into `dir`; returns name → absolute path. */
export async function writeFiles(dir: string, files: Record<string, string | Buffer>): Promise<Record<string, string>> {
  const paths: Record<string, string> = {};
  for (const [name, contents] of Object.entries(files)) {
    paths[name] = join(dir, name);
    await writeFile(paths[name], contents);
  }
  return paths;
}
