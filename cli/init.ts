import { writeFile } from 'node:fs/promises';
import { WardError } from '../core/errors.js';
import { EXAMPLE_WARD_YAML } from '../discovery/index.js';
import { EXIT_OK, flag, optional, type Command } from './command.js';

const init: Command = {
  name: 'init',
  summary: 'write the built-in example mesh (ward.yaml) to start from',
  options: { out: { type: 'string', default: 'ward.yaml' }, force: { type: 'boolean', default: false } },
  help: `Usage: ward init [--out ward.yaml] [--force]

Writes the built-in example mesh: two nodes, a "web" and an "api" service with two replicas each
spread over both nodes, and policies that let web call api with GET and deny everything else to
api. Edit it, then run the control plane on it:

  ward control --state .ward --config ward.yaml --init

Flags:
  --out FILE   where to write it (default ward.yaml; "-" for standard output)
  --force      overwrite an existing file`,
  async run(args, io) {
    const out = optional(args, 'out') ?? 'ward.yaml';
    if (out === '-') {
      io.stdout.write(EXAMPLE_WARD_YAML);
      return EXIT_OK;
    }
    try {
      await writeFile(out, EXAMPLE_WARD_YAML, { flag: flag(args, 'force') ? 'w' : 'wx', mode: 0o644 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new WardError('WARD_CONFIG_INVALID', `${out} already exists; pass --force to overwrite it`);
      throw new WardError('WARD_CONFIG_INVALID', `cannot write ${out}: ${code ?? (err as Error).message}`);
    }
    io.stderr.write(`wrote the example mesh to ${out}; next: ward control --state .ward --config ${out} --init\n`);
    return EXIT_OK;
  },
};

export const initCommands: Command[] = [init];
