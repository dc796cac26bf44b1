import { isWardError } from '../core/errors.js';
import { EXIT_PROBLEM, EXIT_USAGE, EXIT_OK, closest, parseCommandArgs, type CliIo, type Command } from './command.js';
import { caCommands } from './ca.js';
import { caHistoryCommands } from './ca-history.js';
import { certCommands } from './cert.js';
import { controlCommands } from './control.js';
import { proxyCommands } from './proxy.js';
import { ingressCommands } from './ingress.js';
import { echoCommands } from './echo.js';
import { upCommands } from './up.js';
import { statusCommands } from './status.js';
import { checkCommands } from './check.js';
import { initCommands } from './init.js';
import { tokenCommands } from './token.js';
import { policyCommands } from './policy.js';
import { probeCommands } from './probe.js';

export type { CliIo };

const COMMANDS: Command[] = [...upCommands, ...initCommands, ...caCommands, ...caHistoryCommands, ...certCommands, ...tokenCommands, ...controlCommands, ...proxyCommands, ...ingressCommands, ...echoCommands, ...statusCommands, ...checkCommands, ...policyCommands, ...probeCommands];

const VERSION = '0.1.0';

function topHelp(): string {
  const groups = new Map<string, Command[]>();
  for (const c of COMMANDS) {
    const g = c.name.split(' ')[0];
    groups.set(g, [...(groups.get(g) ?? []), c]);
  }
  const lines = [
    'ward — a zero-trust, mTLS-first service mesh with its own SPIFFE certificate authority',
    '',
    'Usage: ward <command> [flags]      ward <command> --help (or ward help <command>) for details',
    '',
    'Commands:',
  ];
  for (const cmds of groups.values()) for (const c of cmds) lines.push(`  ${c.name.padEnd(16)} ${c.summary}`);
  lines.push('', 'Global flags:', '  -h, --help       show help', '  --version        print the version', '');
  lines.push(
    'Get started:',
    '  ward ca init --state .ward --trust-domain example.org    create a CA',
    '  ward ca inspect --state .ward                            see what it holds and what needs attention',
    '  ward ca serve --state .ward                              run it',
    '',
  );
  lines.push('Exit codes: 0 ok · 1 an error, or an inspection found a problem · 2 usage error');
  return lines.join('\n') + '\n';
}

function isGroup(word: string): boolean {
  return COMMANDS.some((c) => c.name.startsWith(`${word} `));
}

function unknownCommand(name: string, io: CliIo): number {
  const groups = [...new Set(COMMANDS.map((c) => c.name.split(' ')[0]))];
  const near = closest(name, COMMANDS.map((c) => c.name)) ?? closest(name.split(' ')[0], groups);
  const group = name.split(' ')[0];
  io.stderr.write(
    `ward: error[WARD_USAGE]: unknown command "${name}"${near ? `; did you mean "ward ${near}"?` : ''}\n` +
      `Run "ward ${isGroup(group) ? `${group} ` : ''}--help" for the list of commands.\n`,
  );
  return EXIT_USAGE;
}

/** `ward help [COMMAND...]`: the same text as `ward [COMMAND...] --help`. */
function help(words: string[], io: CliIo): number {
  if (words.length === 0) {
    io.stdout.write(topHelp());
    return EXIT_OK;
  }
  const cmd = COMMANDS.find((c) => c.name === words.slice(0, 2).join(' ')) ?? COMMANDS.find((c) => c.name === words[0]);
  if (cmd) {
    io.stdout.write(cmd.help.endsWith('\n') ? cmd.help : cmd.help + '\n');
    return EXIT_OK;
  }
  if (isGroup(words[0]) && words.length === 1) {
    io.stdout.write(groupHelp(words[0]));
    return EXIT_OK;
  }
  return unknownCommand(words.slice(0, isGroup(words[0]) ? 2 : 1).join(' '), io);
}

function groupHelp(group: string): string {
  const cmds = COMMANDS.filter((c) => c.name.split(' ')[0] === group);
  return (
    [
      `Usage: ward ${group} <subcommand> [flags]      ward ${group} <subcommand> --help for details`,
      '',
      'Subcommands:',
      ...cmds.map((c) => `  ${c.name.padEnd(16)} ${c.summary}`),
    ].join('\n') + '\n'
  );
}

/** Runs the CLI; returns the exit code. Never throws for operational errors. */
export async function run(argv: string[], io: CliIo): Promise<number> {
  if (argv.length === 0) {
    // Not asking for help is a usage error: the help goes to stderr so nothing lands in a pipe.
    io.stderr.write(topHelp());
    return EXIT_USAGE;
  }
  if (argv[0] === '--help' || argv[0] === '-h') {
    io.stdout.write(topHelp());
    return EXIT_OK;
  }
  if (argv[0] === 'help') return help(argv.slice(1), io);
  if (argv[0] === '--version' || argv[0] === 'version') {
    io.stdout.write(`ward ${VERSION}\n`);
    return EXIT_OK;
  }
  const two = argv.slice(0, 2).join(' ');
  const cmd = COMMANDS.find((c) => c.name === two) ?? COMMANDS.find((c) => c.name === argv[0]);
  if (!cmd) {
    const group = isGroup(argv[0]);
    if (group && argv.length === 1) {
      io.stderr.write(groupHelp(argv[0]));
      return EXIT_USAGE;
    }
    if (group && (argv[1] === '--help' || argv[1] === '-h')) {
      io.stdout.write(groupHelp(argv[0]));
      return EXIT_OK;
    }
    return unknownCommand(argv.slice(0, group ? 2 : 1).join(' '), io);
  }
  const rest = argv.slice(cmd.name.split(' ').length);
  if (rest.includes('--help') || rest.includes('-h')) {
    io.stdout.write(cmd.help.endsWith('\n') ? cmd.help : cmd.help + '\n');
    return EXIT_OK;
  }
  try {
    const args = parseCommandArgs(cmd, rest);
    return await cmd.run(args, io);
  } catch (err) {
    if (isWardError(err)) {
      io.stderr.write(`ward ${cmd.name}: error[${err.code}]: ${err.message}\n`);
      // The command line runs next to the operator, so the underlying cause is worth showing
      // (unlike API responses, which keep it in the log).
      const cause = err.cause instanceof Error ? err.cause.message : undefined;
      if (cause && !err.message.includes(cause)) io.stderr.write(`  caused by: ${cause}\n`);
      if (err.code === 'WARD_USAGE') {
        io.stderr.write(`Run "ward ${cmd.name} --help" for usage.\n`);
        return EXIT_USAGE;
      }
      return EXIT_PROBLEM;
    }
    io.stderr.write(`ward ${cmd.name}: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
    return EXIT_PROBLEM;
  }
}
