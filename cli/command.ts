import { parseArgs, type ParseArgsConfig } from 'node:util';
import { WardError } from '../core/errors.js';

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
  /** Positional arguments allowed (default none). */
  positionals?: { min: number; max: number };
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
    throw new WardError('WARD_USAGE', `${(err as Error).message.replace(/\. To specify.*$/s, '')}`);
  }
  const { min, max } = cmd.positionals ?? { min: 0, max: 0 };
  if (parsed.positionals.length < min || parsed.positionals.length > max) {
    throw new WardError('WARD_USAGE', parsed.positionals.length > max ? `unexpected argument "${parsed.positionals[max]}"` : 'missing argument');
  }
  return parsed as ParsedArgs;
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
