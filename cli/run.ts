export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream;
  env: NodeJS.ProcessEnv;
}

export async function run(argv: string[], io: CliIo): Promise<number> {
  io.stdout.write('ward: usage: ward <command>\n');
  return argv.length === 0 ? 2 : 0;
}
