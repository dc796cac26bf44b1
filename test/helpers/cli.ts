/**
 * Test helper: runs the `ward` command line in-process through `run(argv, io)` with captured
 * streams (fast), or as a child process for what only a real process shows (exit status set by
 * main.ts, signal handling of long-running commands). Child processes are killed when the current
 * test finishes, whatever its outcome. Tests only.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { onTestFinished } from 'vitest';
import { run } from '../../cli/run.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI_MAIN = fileURLToPath(new URL('../../cli/main.ts', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function collect(stream: PassThrough): () => string {
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return () => Buffer.concat(chunks).toString('utf8');
}

/** `ward ...argv` in this process. `stdin` feeds standard input (empty by default). */
export async function ward(argv: string[], o: { stdin?: string | Buffer; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out = collect(stdout);
  const err = collect(stderr);
  const stdin = Readable.from(o.stdin === undefined ? [] : [Buffer.from(o.stdin)]);
  const code = await run(argv, { stdout, stderr, stdin, env: o.env ?? { USER: 'tester' } });
  return { code, stdout: out(), stderr: err() };
}

export type WardChild = ChildProcessWithoutNullStreams & { output: { stdout: string; stderr: string } };

/**
 * spawnWard without the per-test cleanup: for processes started in beforeAll and stopped by the
 * caller (in afterAll). Output is collected in `output`.
 */
export function spawnWardUnmanaged(argv: string[]): WardChild {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI_MAIN, ...argv], {
    cwd: REPO_ROOT,
    env: { ...process.env, NODE_OPTIONS: '' },
    stdio: ['pipe', 'pipe', 'pipe'],
  }) as WardChild;
  child.output = { stdout: '', stderr: '' };
  child.stdout.setEncoding('utf8').on('data', (s: string) => (child.output.stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (child.output.stderr += s));
  return child;
}

/**
 * `ward ...argv` as a child process (node + tsx on the TypeScript sources, so no build is needed).
 * Killed with SIGKILL when the test finishes if it is still running.
 */
export function spawnWard(argv: string[]): WardChild {
  const child = spawnWardUnmanaged(argv);
  onTestFinished(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return child;
}

/** Resolves with the exit code (or the signal name) once the child has exited. */
export async function exited(child: ChildProcessWithoutNullStreams): Promise<number | string> {
  if (child.exitCode !== null) return child.exitCode;
  if (child.signalCode !== null) return child.signalCode;
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  return code ?? signal ?? -1;
}

/**
 * Resolves with the first match of `re` in the child's standard error, as soon as it is written.
 * Rejects if the child exits first (with what it wrote, for the failure message).
 */
export function stderrMatch(child: ChildProcessWithoutNullStreams & { output: { stderr: string } }, re: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = re.exec(child.output.stderr);
      if (!m) return false;
      child.stderr.off('data', onData);
      child.off('close', onExit);
      resolve(m);
      return true;
    };
    // Registered after spawnWard's own listener, so output.stderr already holds this chunk.
    const onData = () => void check();
    const onExit = (code: number | null) => {
      child.stderr.off('data', onData);
      reject(new Error(`ward exited (${code}) before writing ${re}; stderr:\n${child.output.stderr}`));
    };
    if (check()) return;
    child.stderr.on('data', onData);
    child.once('close', onExit);
  });
}
