import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { AppendLog, RecentWindow, queryLimit, queryRecords, scanJsonl } from './append-log.js';

async function tempFile(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-log-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'log.jsonl');
}

interface Rec {
  n: number;
}

async function openLog(path: string, o: { maxPending?: number; onStep?: (step: string) => void } = {}) {
  const replayed: unknown[] = [];
  const durable: Rec[] = [];
  const { log, torn } = await AppendLog.open<Rec>(
    path,
    { maxPending: o.maxPending ?? 10_000, hooks: o.onStep ? { onStep: o.onStep } : undefined },
    (r) => replayed.push(r),
    (batch) => durable.push(...batch),
  );
  onTestFinished(() => log.close());
  return { log, torn, replayed, durable };
}

describe('AppendLog group commit', () => {
  it('makes concurrent appends durable in few batches, in order', async () => {
    const path = await tempFile();
    let batches = 0;
    const { log, durable } = await openLog(path, { onStep: (s) => s === 'appended' && batches++ });
    const all = Array.from({ length: 1000 }, (_, n) => log.append({ n }));
    await Promise.all(all);
    expect(batches).toBeGreaterThan(0);
    expect(batches).toBeLessThan(10);
    const lines = (await readFile(path, 'utf8')).trim().split('\n');
    expect(lines.map((l) => (JSON.parse(l) as Rec).n)).toEqual(Array.from({ length: 1000 }, (_, n) => n));
    expect(durable.map((r) => r.n)).toEqual(Array.from({ length: 1000 }, (_, n) => n));
  });

  it('acknowledges a record only after its batch is written (nothing before the write step)', async () => {
    const path = await tempFile();
    const seen: string[] = [];
    const { log } = await openLog(path, { onStep: () => seen.push('write') });
    const p = log.append({ n: 1 }).then(() => seen.push('ack'));
    await p;
    expect(seen).toEqual(['write', 'ack']);
  });

  it('sheds with WARD_CA_RATE_LIMITED instead of growing past its bound', async () => {
    const path = await tempFile();
    const { log } = await openLog(path, { maxPending: 3 });
    const results = await Promise.allSettled(Array.from({ length: 5 }, (_, n) => log.append({ n })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(rejected).toHaveLength(2);
    expect(rejected[0].reason).toMatchObject({ code: 'WARD_CA_RATE_LIMITED' });
    await log.append({ n: 9 }); // room again once the batch is durable
  });

  it('fails closed after a failed write: the batch and every later append reject', async () => {
    const path = await tempFile();
    let fail = true;
    const { log } = await openLog(path, {
      onStep: () => {
        if (fail) throw new Error('EIO: simulated');
      },
    });
    await expect(log.append({ n: 1 })).rejects.toMatchObject({ code: 'WARD_CA_INTERNAL' });
    fail = false;
    await expect(log.append({ n: 2 })).rejects.toMatchObject({ code: 'WARD_CA_INTERNAL' });
  });

  it('close() is idempotent, flushes pending appends, and refuses new ones', async () => {
    const path = await tempFile();
    const { log } = await openLog(path);
    const pending = log.append({ n: 1 });
    const c1 = log.close();
    const c2 = log.close();
    expect(c1).toBe(c2);
    await c1;
    await pending;
    expect(await readFile(path, 'utf8')).toBe('{"n":1}\n');
    await expect(log.append({ n: 2 })).rejects.toThrow(/closed/);
  });
});

describe('AppendLog recovery', () => {
  it('replays records and cuts off a torn final record, then appends cleanly', async () => {
    const path = await tempFile();
    await writeFile(path, '{"n":1}\n{"n":2}\n{"n":3');
    const { log, torn, replayed } = await openLog(path);
    expect(replayed).toEqual([{ n: 1 }, { n: 2 }]);
    expect(torn).toEqual({ file: path, offset: 16, bytes: 6 });
    await log.append({ n: 4 });
    expect(await readFile(path, 'utf8')).toBe('{"n":1}\n{"n":2}\n{"n":4}\n');
  });

  it('treats an unparseable final line as torn too', async () => {
    const path = await tempFile();
    await writeFile(path, '{"n":1}\n{"n":\u0000\u0000\n');
    const { torn, replayed } = await openLog(path);
    expect(replayed).toEqual([{ n: 1 }]);
    expect(torn?.offset).toBe(8);
  });

  it('refuses a bad record followed by good ones (real corruption, not a crash)', async () => {
    const path = await tempFile();
    await writeFile(path, '{"n":1}\ngarbage\n{"n":3}\n');
    await expect(AppendLog.open(path, { maxPending: 10 }, () => undefined, () => undefined)).rejects.toMatchObject({ code: 'WARD_CA_STATE_CORRUPT' });
  });

  it('scans records split across read chunks', async () => {
    const path = await tempFile();
    const big = 'x'.repeat(300 * 1024);
    await writeFile(path, `{"a":"${big}"}\n{"n":2}\n`);
    const got: unknown[] = [];
    const r = await scanJsonl(path, (rec) => got.push(rec));
    expect(got).toHaveLength(2);
    expect(r.tornAt).toBeUndefined();
  });
});

describe('RecentWindow and queries', () => {
  it('keeps only the newest records, newest first', () => {
    const w = new RecentWindow<number>(3);
    for (let i = 1; i <= 5; i++) w.push(i);
    expect(w.size).toBe(3);
    expect(w.latest(10)).toEqual([5, 4, 3]);
    expect(w.latest(10, (n) => n % 2 === 1)).toEqual([5, 3]);
  });

  it('answers from the file when the window no longer holds every record', async () => {
    const path = await tempFile();
    const w = new RecentWindow<Rec>(2);
    for (let n = 0; n < 10; n++) {
      await appendFile(path, `${JSON.stringify({ n })}\n`);
      w.push({ n });
    }
    const decode = (r: unknown) => r as Rec;
    expect(await queryRecords(path, w, 10, 2, undefined, decode)).toEqual([{ n: 9 }, { n: 8 }]);
    expect(await queryRecords(path, w, 10, 3, (r) => r.n % 3 === 0, decode)).toEqual([{ n: 9 }, { n: 6 }, { n: 3 }]);
    expect(await queryRecords(path, w, 10, 5, undefined, decode)).toHaveLength(5);
  });

  it('validates the limit', () => {
    expect(queryLimit(undefined)).toBe(100);
    for (const bad of [0, -1, 1.5, 1001]) expect(() => queryLimit(bad)).toThrow(expect.objectContaining({ code: 'WARD_CA_REQUEST_INVALID' }));
  });
});
