/**
 * What `ward proxy` and `ward ingress` share as mesh members started from the command line: the
 * control-plane URLs, the bootstrap trust bundle, the join token, and running until a signal.
 */
import { readFile } from 'node:fs/promises';
import { WardError } from '../core/errors.js';
import { TrustBundle } from '../core/pki/index.js';
import { optional, required, type CliIo, type ParsedArgs } from './command.js';

/** --ca and --discovery: https://HOST:PORT. */
export function controlPlaneUrls(args: ParsedArgs): { caUrl: string; discoveryUrl: string } {
  for (const u of ['ca', 'discovery']) {
    const text = String(args.values[u]);
    if (!/^https:\/\/[^/]+\/?$/.test(text)) throw new WardError('WARD_USAGE', `--${u} must be https://HOST:PORT, got "${text}"`);
  }
  return { caUrl: String(args.values.ca), discoveryUrl: String(args.values.discovery) };
}

/** --bundle FILE: the trust anchors to verify the CA with on the first join. */
export async function bundleArg(args: ParsedArgs, trustDomain: string): Promise<TrustBundle> {
  const file = required(args, 'bundle');
  try {
    return TrustBundle.fromPem(trustDomain, await readFile(file, 'utf8'));
  } catch (err) {
    throw new WardError('WARD_CONFIG_INVALID', `--bundle ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** --token, --token-file, or the environment variable `envName` (so it never shows in `ps`). */
export async function tokenArg(args: ParsedArgs, io: CliIo, envName: string): Promise<string | undefined> {
  const file = optional(args, 'token-file');
  if (file) return (await readFile(file, 'utf8')).trim();
  return optional(args, 'token') ?? io.env?.[envName];
}

/**
 * Starts a component, prints its ready line, waits for SIGINT/SIGTERM, then drains: the listeners
 * stop accepting before "draining and stopping" is printed (tests and supervisors rely on it).
 */
export async function runUntilSignal<T>(o: {
  name: string;
  io: CliIo;
  start: () => Promise<T>;
  readyLine: (started: T) => string;
  close: () => Promise<void>;
  flush: () => void;
}): Promise<void> {
  let onSignal: (signal: NodeJS.Signals) => void = () => undefined;
  const stopped = new Promise<NodeJS.Signals>((resolve) => (onSignal = resolve));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const started = await o.start();
    o.io.stderr.write(`ward ${o.name}: ${o.readyLine(started)}\n`);
    const signal = await stopped;
    const closing = o.close();
    o.io.stderr.write(`ward ${o.name}: ${signal}: draining and stopping\n`);
    await closing;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await o.close();
    o.flush();
  }
}
