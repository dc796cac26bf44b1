import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { EXAMPLE_WARD_YAML, parseWardYaml } from '../../discovery/index.js';
import { ward } from '../helpers/cli.js';

describe('ward init', () => {
  it('writes the example mesh, which parses, and refuses to overwrite without --force', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ward-init-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const out = join(dir, 'ward.yaml');
    const first = await ward(['init', '--out', out]);
    expect(first.code).toBe(0);
    const text = await readFile(out, 'utf8');
    expect(text).toBe(EXAMPLE_WARD_YAML);
    const model = parseWardYaml(text, out);
    expect(model.nodes.map((n) => n.name)).toEqual(['node-a', 'node-b']);

    await writeFile(out, 'edited\n');
    const again = await ward(['init', '--out', out]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('WARD_CONFIG_INVALID');
    expect(await readFile(out, 'utf8')).toBe('edited\n'); // nothing lost
    expect((await ward(['init', '--out', out, '--force'])).code).toBe(0);
    expect(await readFile(out, 'utf8')).toBe(EXAMPLE_WARD_YAML);
    expect((await ward(['init', '--out', '-'])).stdout).toBe(EXAMPLE_WARD_YAML);
  });
});
