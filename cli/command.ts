import { parseArgs, type ParseArgsConfig } from 'node:util';
import { WardError } from '../core/errors.js';
import { formatDuration, parseDuration } from '../core/clock.js';

export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  env: NodeJS.ProcessEnv;
}

/** Exit codes: 0 ok, 1 something is wrong (an error, or a check/inspection found a problem), 2 usage. */
export const EXIT_OK = 0;
export const EXIT_PROBLEM = 1;
export const EXIT_USAGE = 2;

type Options = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  /** e.g. "ca init" */
  name: string;
  summary: string;
  /** Full help text (usage line, description, flags, examples). */
  help: string;
  options: Options;
  /** Positional arguments allowed (default none); `name` is how usage errors refer to them (e.g. "FILE"). */
  positionals?: { min: number; max: number; name?: string };
  run(args: ParsedArgs, io: CliIo): Promise<number>;
}

export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

export function parseCommandArgs(cmd: Command, argv: string[]): ParsedArgs {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: cmd.options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new WardError('WARD_USAGE', usageMessage(err as NodeJS.ErrnoException, Object.keys(cmd.options)));
  }
  const { min, max, name = 'argument' } = cmd.positionals ?? { min: 0, max: 0 };
  if (parsed.positionals.length < min || parsed.positionals.length > max) {
    throw new WardError('WARD_USAGE', parsed.positionals.length > max ? `unexpected argument "${parsed.positionals[max]}"` : `missing ${name}`);
  }
  return parsed as ParsedArgs;
}

/**
 * node:util parseArgs messages, reworded the way users read them ("unknown flag --x; did you mean
 * --y?"). parseArgs sets a stable `code` per failure, so the branch is on the code, not the text.
 */
function usageMessage(err: NodeJS.ErrnoException, known: string[]): string {
  const text = err.message.replace(/\. To specify.*$/s, '');
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const m = /'(-{1,2}[^']*)'/.exec(text);
    const given = m?.[1] ?? '';
    const near = closest(given.replace(/^-+/, '').replace(/=.*$/, ''), known);
    return `unknown flag ${given || text}${near ? `; did you mean --${near}?` : ''}`;
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    const m = /'(--[^ ']+)/.exec(text);
    if (m && text.includes('argument missing')) return `${m[1]} needs a value`;
    if (m) return `${m[1]} takes no value`;
  }
  return text.charAt(0).toLowerCase() + text.slice(1);
}

/** The candidate within edit distance 2 of `word` (for "did you mean"), if any. */
export function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}

/** A required string flag. */
export function required(args: ParsedArgs, name: string): string {
  const v = args.values[name];
  if (typeof v !== 'string' || v.length === 0) throw new WardError('WARD_USAGE', `--${name} is required`);
  return v;
}

export function optional(args: ParsedArgs, name: string): string | undefined {
  const v = args.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function flag(args: ParsedArgs, name: string): boolean {
  return args.values[name] === true;
}

/** A duration flag ("90s", "15m", "1h", "30d"), or undefined when absent. */
export function durationFlag(args: ParsedArgs, name: string): number | undefined {
  const text = optional(args, name);
  if (text === undefined) return undefined;
  const ms = parseDuration(text);
  if (ms === undefined) throw new WardError('WARD_USAGE', `--${name} must be a duration such as 90s, 15m, 1h or 30d, got "${text}"`);
  return ms;
}

/** A duration for people: "15m", "1h 30m", "365d" (formatDuration without the trailing zero unit). */
export function humanDuration(ms: number): string {
  // Leaf and token lifetimes read better in hours ("24h", not "1d").
  if (ms > 0 && ms <= 24 * 3_600_000 && ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  return formatDuration(ms).replace(/ 0[hms]$/, '');
}

export function writeJson(io: CliIo, value: unknown): void {
  io.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export async function readAll(stream: NodeJS.ReadableStream, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer | string>) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += b.length;
    if (size > max) throw new WardError('WARD_CONFIG_INVALID', `input is larger than ${max} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

export const JSON_FLAG = { json: { type: 'boolean', default: false } } as const;
export const HELP_FLAG = { help: { type: 'boolean', short: 'h', default: false } } as const;
