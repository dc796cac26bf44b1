import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { isWardError } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import { DEFAULT_TOKEN_TTL_MS, JoinTokens, MAX_TOKEN_TTL_MS, TOKENS_DIR } from './tokens.js';
import { errorOf } from '../test/helpers/errors.js';

const TD = 'example.org';
const MINUTE = 60_000;

async function setup(clock = new ManualClock(Date.UTC(2026, 0, 1))) {
  const stateDir = await mkdtemp(join(tmpdir(), 'ward-tokens-'));
  onTestFinished(() => rm(stateDir, { recursive: true, force: true }));
  return { stateDir, clock, tokens: new JoinTokens({ stateDir, trustDomain: TD, clock }) };
}


const fileOf = (stateDir: string, token: string) => join(stateDir, TOKENS_DIR, `${createHash('sha256').update(token).digest('hex')}.json`);

describe('JoinTokens', () => {
  it('creates a random, prefixed token bound to a node and an expiry, storing only its hash', async () => {
    const { stateDir, clock, tokens } = await setup();
    const a = await tokens.create('node-1');
    const b = await tokens.create('node-1', 5 * MINUTE);
    expect(a.token).toMatch(/^wardjt_[A-Za-z0-9_-]{43}$/);
    expect(a.token).not.toBe(b.token);
    expect(a.node).toBe('node-1');
    expect(a.expiresAt.getTime()).toBe(clock.now() + DEFAULT_TOKEN_TTL_MS);
    expect(b.expiresAt.getTime()).toBe(clock.now() + 5 * MINUTE);

    const dir = join(stateDir, TOKENS_DIR);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    const names = await readdir(dir);
    expect(names.sort()).toEqual([fileOf(stateDir, a.token), fileOf(stateDir, b.token)].map((p) => p.slice(dir.length + 1)).sort());
    for (const t of [a, b]) {
      const path = fileOf(stateDir, t.token);
      expect((await stat(path)).mode & 0o777).toBe(0o600);
      const text = await readFile(path, 'utf8');
      expect(text).not.toContain(t.token);
      expect(text).not.toContain(t.token.slice(7));
      expect(JSON.parse(text)).toEqual({ node: 'node-1', createdAt: new Date(clock.now()).toISOString(), expiresAt: t.expiresAt.toISOString() });
    }
  });

  it('consumes a token exactly once, returning its node identity', async () => {
    const { stateDir, tokens } = await setup();
    const { token } = await tokens.create('node-1');
    const id = await tokens.consume(token);
    expect(id).toBeInstanceOf(SpiffeId);
    expect(id.toString()).toBe(`spiffe://${TD}/ward/node/node-1`);
    expect(id.nodeName).toBe('node-1');
    const again = await errorOf(tokens.consume(token));
    expect(again.code).toBe('WARD_CA_TOKEN_INVALID');
    expect(again.message).not.toContain(token);
    expect(await readdir(join(stateDir, TOKENS_DIR))).toEqual([]);
  });

  it('lets exactly one of many concurrent consumers win, across instances sharing the directory', async () => {
    const { stateDir, clock, tokens } = await setup();
    // `ward token create` and the running CA server are separate processes sharing the directory.
    const other = new JoinTokens({ stateDir, trustDomain: TD, clock });
    const { token } = await other.create('node-1');
    const results = await Promise.allSettled(Array.from({ length: 16 }, (_, i) => (i % 2 ? other : tokens).consume(token)));
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    for (const r of results) {
      if (r.status === 'rejected') expect(isWardError(r.reason, 'WARD_CA_TOKEN_INVALID')).toBe(true);
    }
  });

  it('refuses an expired token (and uses it up), accepting it until the last millisecond', async () => {
    const { stateDir, clock, tokens } = await setup();
    const live = await tokens.create('node-1', MINUTE);
    const dead = await tokens.create('node-2', MINUTE);
    clock.advance(MINUTE - 1);
    expect((await tokens.consume(live.token)).nodeName).toBe('node-1');
    clock.advance(1);
    const err = await errorOf(tokens.consume(dead.token));
    expect(err.code).toBe('WARD_CA_TOKEN_INVALID');
    expect(err.message).toMatch(/expired/);
    expect(await readdir(join(stateDir, TOKENS_DIR))).toEqual([]);
  });

  it('refuses malformed and unknown tokens with the same code', async () => {
    const { tokens } = await setup();
    await tokens.create('node-1');
    const bad: unknown[] = ['', 'wardjt_', 'wardjt_short', `wardjt_${'A'.repeat(44)}`, `WARDJT_${'A'.repeat(43)}`, `wardjt_${'A'.repeat(42)}=`, `wardjt_${'A'.repeat(42)}/`, ` wardjt_${'A'.repeat(43)}`, `wardjt_${'A'.repeat(43)}\n`, 42, null, undefined, { token: 'x' }];
    for (const t of [...bad, `wardjt_${'A'.repeat(43)}`]) {
      const err = await errorOf(tokens.consume(t as string));
      expect(err.code, String(t)).toBe('WARD_CA_TOKEN_INVALID');
    }
    // A token for another state directory is unknown here.
    const elsewhere = await (await setup()).tokens.create('node-1');
    expect((await errorOf(tokens.consume(elsewhere.token))).code).toBe('WARD_CA_TOKEN_INVALID');
  });

  it('an ingress token joins as spiffe://TD/ns/ward-system/sa/ward-ingress; a record naming any other identity is refused', async () => {
    const { stateDir, tokens } = await setup();
    const t = await tokens.createForIngress();
    expect(t.node).toBe('ingress');
    const id = await tokens.consume(t.token);
    expect(id.toString()).toBe(`spiffe://${TD}/ns/ward-system/sa/ward-ingress`);
    expect(id.isIngress).toBe(true);
    expect(id.nodeName).toBeUndefined();
    for (const identity of [`spiffe://${TD}/ns/shop/sa/web`, `spiffe://other.org/ns/ward-system/sa/ward-ingress`, `spiffe://${TD}/ward/ca`, 'garbage']) {
      const { token } = await tokens.create('node-1');
      await writeFile(fileOf(stateDir, token), JSON.stringify({ node: 'ingress', identity, createdAt: '2026-01-01T00:00:00Z', expiresAt: '2030-01-01T00:00:00Z' }));
      expect((await errorOf(tokens.consume(token))).code, identity).toBe('WARD_CA_TOKEN_INVALID');
    }
  });

  it('refuses a token whose record was tampered with, instead of failing unexpectedly', async () => {
    const { stateDir, tokens } = await setup();
    for (const record of ['not json', '{}', '{"node": 5, "expiresAt": "2030-01-01T00:00:00Z"}', '{"node": "a/b", "expiresAt": "2030-01-01T00:00:00Z"}', '{"node": "n", "expiresAt": "soon"}', 'null']) {
      const { token } = await tokens.create('node-1');
      await writeFile(fileOf(stateDir, token), record);
      const err = await errorOf(tokens.consume(token));
      expect(err.code, record).toBe('WARD_CA_TOKEN_INVALID');
    }
  });

  it('validates the node name and the lifetime at creation', async () => {
    const { stateDir, tokens } = await setup();
    for (const node of ['', 'a/b', '..', '.', 'a b', 'a%2fb', 'x'.repeat(3000)]) {
      expect((await errorOf(tokens.create(node))).code, node).toBe('WARD_ID_INVALID');
    }
    for (const ttl of [0, 999, MAX_TOKEN_TTL_MS + 1, 1.5 * 1000 + 0.5, Number.NaN, Number.POSITIVE_INFINITY, -MINUTE]) {
      expect((await errorOf(tokens.create('node-1', ttl))).code, String(ttl)).toBe('WARD_CONFIG_INVALID');
    }
    await expect(readdir(join(stateDir, TOKENS_DIR))).rejects.toThrow(); // nothing was written
    expect((await tokens.create('node-1', 1000)).node).toBe('node-1');
    expect((await tokens.create('node-1', MAX_TOKEN_TTL_MS)).node).toBe('node-1');
  });

  it('lists outstanding tokens without their secrets and sweeps expired and corrupt records', async () => {
    const { stateDir, clock, tokens } = await setup();
    expect(await tokens.list()).toEqual([]);
    expect(await tokens.sweepExpired()).toBe(0);
    const short = await tokens.create('node-1', MINUTE);
    const long = await tokens.create('node-2', 10 * MINUTE);
    const used = await tokens.create('node-3', 10 * MINUTE);
    await tokens.consume(used.token);
    const listed = await tokens.list();
    expect(listed.sort((x, y) => x.node.localeCompare(y.node))).toEqual([
      { node: 'node-1', expiresAt: short.expiresAt },
      { node: 'node-2', expiresAt: long.expiresAt },
    ]);
    expect(JSON.stringify(listed)).not.toContain('wardjt_');

    await writeFile(join(stateDir, TOKENS_DIR, `${'0'.repeat(64)}.json`), 'garbage');
    clock.advance(MINUTE);
    expect((await tokens.list()).map((t) => t.node)).toEqual(['node-2']);
    expect(await tokens.sweepExpired()).toBe(2); // node-1's expired token and the corrupt record
    expect(await readdir(join(stateDir, TOKENS_DIR))).toEqual([fileOf(stateDir, long.token).split('/').pop()]);
    expect((await tokens.consume(long.token)).nodeName).toBe('node-2');
  });
});
