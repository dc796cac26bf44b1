/**
 * One-time join tokens: how a node proxy bootstraps its node identity in local mode.
 *
 * A token is 32 random bytes (base64url, prefixed `wardjt_`), bound at creation to one node name (or
 * to the mesh ingress's identity) and an expiry (default 15m, at most 24h). Only its SHA-256 is stored, one file per token under
 * `<state>/tokens/<sha256>.json` (mode 0600): `ward token create` (a separate process) and the
 * running CA server share the directory without a lock, because consuming a token is a single
 * unlink() — the first caller to unlink wins, so a token can never be used twice, even by two
 * concurrent requests or two CA processes. Lookup is by hash, so there is no timing side channel.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, unlink, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { WardError } from '../core/errors.js';
import type { Clock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { KEY_FILE_MODE, STATE_DIR_MODE, fsyncDir, writeFileDurable, removeFileDurable } from './store.js';

export const TOKENS_DIR = 'tokens';
export const TOKEN_PREFIX = 'wardjt_';
export const DEFAULT_TOKEN_TTL_MS = 15 * 60_000;
export const MAX_TOKEN_TTL_MS = 24 * 3_600_000;
const TOKEN_RE = /^wardjt_[A-Za-z0-9_-]{43}$/;
/** The `node` of an ingress token's record (listed as such by `list()`). */
export const INGRESS_TOKEN_NODE = 'ingress';

interface TokenFile {
  /** The node the token joins as; for the ingress, "ingress" and `identity` set. */
  node: string;
  /** Set for a token that joins as the mesh ingress (its SPIFFE ID). */
  identity?: string;
  createdAt: string;
  expiresAt: string;
}

export interface CreatedToken {
  /** The secret. Shown once to the operator; never stored or logged. */
  token: string;
  node: string;
  expiresAt: Date;
}

function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export class JoinTokens {
  readonly #dir: string;
  readonly #clock: Clock;
  readonly #trustDomain: string;

  constructor(o: { stateDir: string; trustDomain: string; clock: Clock }) {
    this.#dir = join(o.stateDir, TOKENS_DIR);
    this.#clock = o.clock;
    this.#trustDomain = o.trustDomain;
  }

  /** Creates a token for `node`; the node name must make a valid node SPIFFE ID. */
  async create(node: string, ttlMs: number = DEFAULT_TOKEN_TTL_MS): Promise<CreatedToken> {
    SpiffeId.node(this.#trustDomain, node); // validates the name (WARD_ID_INVALID)
    return this.#create({ node }, ttlMs);
  }

  /** Creates a token that joins as the mesh ingress (spiffe://TD/ns/ward-system/sa/ward-ingress). */
  async createForIngress(ttlMs: number = DEFAULT_TOKEN_TTL_MS): Promise<CreatedToken> {
    return this.#create({ node: INGRESS_TOKEN_NODE, identity: SpiffeId.ingress(this.#trustDomain).toString() }, ttlMs);
  }

  async #create(bound: { node: string; identity?: string }, ttlMs: number): Promise<CreatedToken> {
    const { node } = bound;
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 1000 || ttlMs > MAX_TOKEN_TTL_MS) {
      throw new WardError('WARD_CONFIG_INVALID', `join token lifetime must be between 1s and 24h, got ${ttlMs}ms`);
    }
    // mkdir returns the first directory it created: then its parent's entry must be made durable
    // too, or a crash could take the directory, and the token in it, away.
    if (await mkdir(this.#dir, { recursive: true, mode: STATE_DIR_MODE })) await fsyncDir(dirname(this.#dir));
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const now = this.#clock.now();
    const expiresAt = new Date(now + ttlMs);
    const record: TokenFile = { ...bound, createdAt: new Date(now).toISOString(), expiresAt: expiresAt.toISOString() };
    await writeFileDurable(join(this.#dir, `${hashToken(token)}.json`), JSON.stringify(record) + '\n', { mode: KEY_FILE_MODE });
    return { token, node, expiresAt };
  }

  /**
   * Consumes a token and returns the node identity it was bound to. Unknown, malformed, expired and
   * already-used tokens all fail with the same WARD_CA_TOKEN_INVALID (no oracle for guessing).
   */
  async consume(token: string): Promise<SpiffeId> {
    if (typeof token !== 'string' || !TOKEN_RE.test(token)) throw new WardError('WARD_CA_TOKEN_INVALID', 'join token is malformed');
    const path = join(this.#dir, `${hashToken(token)}.json`);
    let record: unknown;
    try {
      record = JSON.parse(await readFile(path, 'utf8'));
    } catch {
      throw new WardError('WARD_CA_TOKEN_INVALID', 'join token is unknown or already used');
    }
    try {
      await unlink(path);
    } catch {
      // Someone else consumed it between our read and our unlink.
      throw new WardError('WARD_CA_TOKEN_INVALID', 'join token is unknown or already used');
    }
    // The removal must survive a crash before the certificate goes out, or the token could be
    // replayed after a restart.
    await fsyncDir(this.#dir);
    const { node, identity, expiresAt } = (record ?? {}) as Partial<TokenFile>;
    if (typeof node !== 'string' || typeof expiresAt !== 'string') throw new WardError('WARD_CA_TOKEN_INVALID', 'join token record is corrupt');
    if (!(Date.parse(expiresAt) > this.#clock.now())) throw new WardError('WARD_CA_TOKEN_INVALID', 'join token has expired');
    if (identity !== undefined) {
      // Only the ingress identity is ever bound to a token this way; anything else is a forged record.
      const id = SpiffeId.tryParse(String(identity));
      if (!id || !id.isIngress || !id.memberOf(this.#trustDomain)) throw new WardError('WARD_CA_TOKEN_INVALID', 'join token record names an identity other than the ingress');
      return id;
    }
    try {
      return SpiffeId.node(this.#trustDomain, node);
    } catch (cause) {
      throw new WardError('WARD_CA_TOKEN_INVALID', 'join token record names an invalid node', { cause });
    }
  }

  /** Deletes expired tokens; returns how many. Run at start and periodically. */
  async sweepExpired(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return 0;
    }
    let removed = 0;
    for (const name of names) {
      if (!name.endsWith('.json')) continue;
      const path = join(this.#dir, name);
      try {
        const rec = JSON.parse(await readFile(path, 'utf8')) as TokenFile;
        if (Date.parse(rec.expiresAt) > this.#clock.now()) continue;
      } catch {
        // unreadable: treat as garbage
      }
      await removeFileDurable(path);
      removed++;
    }
    return removed;
  }

  /** Outstanding (unexpired, unused) tokens: node and expiry only, never the secret. */
  async list(): Promise<{ node: string; expiresAt: Date }[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return [];
    }
    const out: { node: string; expiresAt: Date }[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      try {
        const rec = JSON.parse(await readFile(join(this.#dir, name), 'utf8')) as TokenFile;
        const exp = new Date(rec.expiresAt);
        if (exp.getTime() > this.#clock.now()) out.push({ node: rec.node, expiresAt: exp });
      } catch {
        // skip unreadable entries
      }
    }
    return out;
  }
}
