/**
 * The inventory: one durable record per issued certificate (inventory.jsonl in the state dir).
 *
 * Memory stays bounded however many certificates are issued: the inventory keeps counts, a window of
 * the newest records, and per issuer the latest NotAfter of any leaf it signed (the "leaf horizon"
 * that decides when an old root may leave the trust bundle). Everything else is answered by scanning
 * the file. Reopening rebuilds all of it from the file.
 */
import { join } from 'node:path';
import type { SpiffeId } from '../core/identity/index.js';
import { AppendLog, RecentWindow, queryLimit, queryRecords, type TornTail } from './append-log.js';
import { INVENTORY_FILE, type StoreHooks } from './store.js';

export interface InventoryRecord {
  /** Certificate serial number, lowercase hex. */
  serial: string;
  /** The SPIFFE ID in the certificate. */
  identity: string;
  /** Who asked for it (the authenticated caller, e.g. a node proxy's ID). */
  requester: string;
  notBefore: string; // ISO 8601
  notAfter: string;
  issuedAt: string;
  /** SHA-256 fingerprint of the issuing intermediate. */
  issuer: string;
}

export interface InventoryQuery {
  identity?: string | SpiffeId;
  requester?: string;
  /** 1..1000, default 100. */
  limit?: number;
}

export interface InventoryCounts {
  /** Certificates ever recorded. */
  total: number;
  /** Certificates per issuing intermediate (bounded by the number of intermediates). */
  byIssuer: Record<string, number>;
}

export interface LogOptions {
  /** How many of the newest records stay in memory. */
  recentWindow: number;
  /** Bound of the durable-write queue. */
  maxPending: number;
  hooks?: StoreHooks;
  /** Replay only, beside a writer: see AppendLogOptions.readOnly. */
  readOnly?: boolean;
}

function decodeInventory(raw: unknown): InventoryRecord | undefined {
  const r = raw as Record<string, unknown>;
  for (const k of ['serial', 'identity', 'requester', 'notBefore', 'notAfter', 'issuedAt', 'issuer']) {
    if (typeof r[k] !== 'string') return undefined;
  }
  return {
    serial: r.serial as string,
    identity: r.identity as string,
    requester: r.requester as string,
    notBefore: r.notBefore as string,
    notAfter: r.notAfter as string,
    issuedAt: r.issuedAt as string,
    issuer: r.issuer as string,
  };
}

export class CertificateInventory {
  readonly path: string;
  /** Set when opening found (and cut off) a record torn by a crash mid-append. */
  readonly torn: TornTail | undefined;
  readonly #log: AppendLog<InventoryRecord>;
  readonly #window: RecentWindow<InventoryRecord>;
  readonly #byIssuer: Map<string, number>;
  readonly #horizon: Map<string, number>;
  #total: number;

  private constructor(
    path: string,
    log: AppendLog<InventoryRecord>,
    window: RecentWindow<InventoryRecord>,
    state: { total: number; byIssuer: Map<string, number>; horizon: Map<string, number> },
    torn: TornTail | undefined,
  ) {
    this.path = path;
    this.#log = log;
    this.#window = window;
    this.#total = state.total;
    this.#byIssuer = state.byIssuer;
    this.#horizon = state.horizon;
    this.torn = torn;
  }

  static async open(stateDir: string, o: LogOptions): Promise<CertificateInventory> {
    const path = join(stateDir, INVENTORY_FILE);
    const window = new RecentWindow<InventoryRecord>(o.recentWindow);
    const state = { total: 0, byIssuer: new Map<string, number>(), horizon: new Map<string, number>() };
    let self: CertificateInventory | undefined;
    const { log, torn } = await AppendLog.open<InventoryRecord>(
      path,
      { maxPending: o.maxPending, hooks: o.hooks, readOnly: o.readOnly },
      (raw) => {
        const rec = decodeInventory(raw);
        if (!rec) return;
        state.total++;
        state.byIssuer.set(rec.issuer, (state.byIssuer.get(rec.issuer) ?? 0) + 1);
        noteHorizon(state.horizon, rec.issuer, Date.parse(rec.notAfter));
        window.push(rec);
      },
      (records) => self!.#onDurable(records),
    );
    self = new CertificateInventory(path, log, window, state, torn);
    return self;
  }

  #onDurable(records: InventoryRecord[]): void {
    for (const rec of records) {
      this.#total++;
      this.#byIssuer.set(rec.issuer, (this.#byIssuer.get(rec.issuer) ?? 0) + 1);
      this.#window.push(rec);
    }
  }

  /** Whether another record fits in the write queue now (checked before signing, to shed early). */
  hasRoom(): boolean {
    return this.#log.hasRoom();
  }

  /** Why the log stopped accepting records (a failed write or fsync), if it did. */
  get failure(): Error | undefined {
    return this.#log.failure;
  }

  /**
   * Appends a record; resolves when it is durable. The leaf horizon moves immediately, before the
   * write: a leaf that exists (even one whose record is still in flight) must hold back retirement.
   */
  record(rec: InventoryRecord, notAfterMs: number): Promise<void> {
    noteHorizon(this.#horizon, rec.issuer, notAfterMs);
    return this.#log.append(rec);
  }

  /** Latest NotAfter (ms) of any leaf recorded for the issuer, or undefined when it signed none. */
  leafHorizon(issuerFingerprint: string): number | undefined {
    return this.#horizon.get(issuerFingerprint);
  }

  /** The newest durable records, newest first, optionally filtered by identity and/or requester. */
  async query(q: InventoryQuery = {}): Promise<InventoryRecord[]> {
    const limit = queryLimit(q.limit);
    const identity = q.identity === undefined ? undefined : String(q.identity);
    const requester = q.requester;
    const match =
      identity === undefined && requester === undefined
        ? undefined
        : (r: InventoryRecord) => (identity === undefined || r.identity === identity) && (requester === undefined || r.requester === requester);
    return queryRecords(this.path, this.#window, this.#total, limit, match, decodeInventory);
  }

  counts(): InventoryCounts {
    return { total: this.#total, byIssuer: Object.fromEntries(this.#byIssuer) };
  }

  flush(): Promise<void> {
    return this.#log.flush();
  }

  close(): Promise<void> {
    return this.#log.close();
  }
}

function noteHorizon(map: Map<string, number>, issuer: string, notAfter: number): void {
  if (!Number.isFinite(notAfter)) return;
  const prev = map.get(issuer);
  if (prev === undefined || notAfter > prev) map.set(issuer, notAfter);
}
