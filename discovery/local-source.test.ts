import { once } from 'node:events';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { describe, expect, it, onTestFinished } from 'vitest';
import { parse, stringify } from 'yaml';
import { isWardError } from '../core/errors.js';
import { EXAMPLE_WARD_YAML } from './example.js';
import { LocalFileSource, type LocalFileSourceEvents, type LocalFileSourceOptions } from './local-source.js';
import type { MeshModel, ModelDiff } from './model.js';
import { ConfigInvalidError } from './ward-yaml.js';

type Doc = Record<string, any>;

function variant(mutate: (d: Doc) => void): string {
  const d = parse(EXAMPLE_WARD_YAML) as Doc;
  mutate(d);
  return stringify(d);
}

const WITH_API_3 = variant((d) => {
  d.workloads.push({ name: 'api-3', namespace: 'shop', serviceAccount: 'api', node: 'node-a', address: '127.0.30.3', ports: [9090], labels: { app: 'api' } });
});
const BAD_PORT = variant((d) => {
  d.workloads[2].ports = [9090, 70000];
});

let seq = 0;
/** Replaces the file the way editors and config tools do: write a temporary file, rename it over. */
async function replaceAtomically(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${seq++}`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

async function setup(opts: Partial<LocalFileSourceOptions> = {}, initial = EXAMPLE_WARD_YAML) {
  const dir = await mkdtemp(path.join(tmpdir(), 'ward-local-source-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'ward.yaml');
  await writeFile(file, initial);
  const logs: Record<string, any>[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void logs.push(JSON.parse(s)) });
  const src = new LocalFileSource({ file, logger, debounceMs: 20, pollIntervalMs: 0, ...opts });
  onTestFinished(() => src.close());
  return { dir, file, src, logs };
}

/** The next event of that name (the watcher is real: bounded by an explicit timeout, no sleeps). */
async function next<K extends keyof LocalFileSourceEvents>(src: LocalFileSource, event: K, ms = 10_000): Promise<LocalFileSourceEvents[K]> {
  return (await once(src, event, { signal: AbortSignal.timeout(ms) })) as LocalFileSourceEvents[K];
}

describe('LocalFileSource: start', () => {
  it('returns the validated model, and current() returns it', async () => {
    const { src } = await setup();
    const m = await src.start();
    expect(m.workloads).toHaveLength(4);
    expect(src.current()).toBe(m);
    expect(src.status()).toMatchObject({ applied: 1, rejected: 0 });
  });

  it('throws WARD_CONFIG_INVALID on an invalid initial file and leaves nothing running', async () => {
    const { src } = await setup({ pollIntervalMs: 10 }, BAD_PORT);
    const err = await src.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    expect((err as ConfigInvalidError).issues[0].path).toBe('workloads[2].ports[1]');
    expect(() => src.current()).toThrow(/BUG/);
  });

  it('throws on a missing file, naming it', async () => {
    const { dir } = await setup();
    const src = new LocalFileSource({ file: path.join(dir, 'absent.yaml'), pollIntervalMs: 0 });
    await expect(src.start()).rejects.toThrow(/absent\.yaml: \(document\): cannot read the file: ENOENT/);
  });
});

describe('LocalFileSource: live changes', () => {
  it('a valid edit in place applies live, with the diff', async () => {
    const { src, file } = await setup();
    const before = await src.start();
    const updated = next(src, 'update');
    await writeFile(file, WITH_API_3);
    const [model, diff] = (await updated) as [MeshModel, ModelDiff];
    expect(diff.workloads).toEqual({ added: ['shop/api-3'], removed: [], changed: [] });
    expect(model.workloads).toHaveLength(5);
    expect(src.current()).toBe(model);
    expect(before.workloads).toHaveLength(4); // the old model is untouched
  });

  it('an invalid edit is rejected and the last good model kept; then a fix applies', async () => {
    const registry = new Registry();
    const { src, file, logs } = await setup({ registry });
    const good = await src.start();

    const rejected = next(src, 'rejected');
    await replaceAtomically(file, BAD_PORT);
    const [err] = await rejected;
    expect(err).toBeInstanceOf(ConfigInvalidError);
    expect(err.issues.map((i) => `${i.path}: ${i.reason}`)).toEqual(['workloads[2].ports[1]: must be a port number 1..65535, got number 70000']);
    expect(src.current()).toBe(good);
    expect(src.rejectedCount).toBe(1);
    expect(src.status().lastError).toBe(err);
    const warn = logs.find((l) => l.level === 40);
    expect(warn).toMatchObject({ component: 'discovery.local-source', problems: 1, msg: expect.stringMatching(/rejected change to ward\.yaml; keeping the last good/) });
    expect(warn?.errors[0]).toMatch(/ward\.yaml: workloads\[2\]\.ports\[1\]: must be a port number/);

    const updated = next(src, 'update');
    await replaceAtomically(file, WITH_API_3);
    const [model, diff] = await updated;
    expect(diff.workloads.added).toEqual(['shop/api-3']); // diffed against the last GOOD model
    expect(src.current()).toBe(model);
    expect(src.status().lastError).toBeUndefined();
    expect(src.rejectedCount).toBe(1);

    const text = await registry.getSingleMetricAsString('ward_discovery_config_reloads_total');
    expect(text).toContain('ward_discovery_config_reloads_total{result="rejected"} 1');
    expect(text).toContain('ward_discovery_config_reloads_total{result="applied"} 1');
  });

  it('rename-replace edits are seen by the directory watch, again and again', async () => {
    const { src, file } = await setup({ pollIntervalMs: 0, watch: true });
    await src.start();
    let u = next(src, 'update');
    await replaceAtomically(file, WITH_API_3);
    expect((await u)[1].workloads.added).toEqual(['shop/api-3']);
    // A watch on the file itself would still follow the replaced inode and miss this one.
    u = next(src, 'update');
    await replaceAtomically(file, EXAMPLE_WARD_YAML);
    expect((await u)[1].workloads.removed).toEqual(['shop/api-3']);
  });

  it('the poll alone sees changes where fs.watch is unavailable', async () => {
    const { src, file } = await setup({ watch: false, pollIntervalMs: 10 });
    await src.start();
    const u = next(src, 'update');
    await replaceAtomically(file, WITH_API_3);
    expect((await u)[1].workloads.added).toEqual(['shop/api-3']);
  });

  it('a deleted file is rejected (last good kept); its return applies', async () => {
    const { src, file } = await setup();
    const good = await src.start();
    const rejected = next(src, 'rejected');
    await rm(file);
    expect((await rejected)[0].issues[0].reason).toBe('cannot read the file: ENOENT');
    expect(src.current()).toBe(good);
    const updated = next(src, 'update');
    await replaceAtomically(file, WITH_API_3);
    await updated;
    expect(src.current().workloads).toHaveLength(5);
  });

  it('a change that leaves the mesh as it was emits nothing', async () => {
    const { src, file } = await setup();
    const good = await src.start();
    let updates = 0;
    src.on('update', () => updates++);
    await replaceAtomically(file, `# a comment only\n${EXAMPLE_WARD_YAML}`);
    await src.reload();
    expect(src.status().applied).toBe(2);
    expect(updates).toBe(0);
    expect(src.current()).toBe(good);
  });

  it('a throwing listener does not stop the source', async () => {
    const { src, file, logs } = await setup();
    await src.start();
    src.on('update', () => {
      throw new Error('listener bug');
    });
    await replaceAtomically(file, WITH_API_3);
    await src.reload();
    expect(src.current().workloads).toHaveLength(5);
    expect(logs.some((l) => l.level === 50 && /listener threw/.test(l.msg))).toBe(true);
  });
});

describe('LocalFileSource: close', () => {
  it('is idempotent and stops all events', async () => {
    const { src, file } = await setup({ pollIntervalMs: 10 });
    await src.start();
    src.on('update', () => expect.fail('update after close'));
    src.on('rejected', () => expect.fail('rejected after close'));
    const a = src.close();
    expect(src.close()).toBe(a);
    await a;
    await replaceAtomically(file, WITH_API_3);
    await src.reload(); // a no-op once closed
    expect(src.current().workloads).toHaveLength(4);
  });
});
