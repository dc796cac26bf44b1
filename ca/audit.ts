/**
 * The audit log: one durable record per issuance decision, issued or refused (audit.jsonl).
 *
 * A decision is recorded before the caller learns it: issue() resolves, or rethrows its refusal,
 * only after the record is durable. Memory is bounded as in the inventory: counts by decision and by
 * refusal code (a fixed set: the WARD_* codes) plus a window of the newest records.
 */
import { join } from 'node:path';
import { ERROR_CODES } from '../core/errors.js';
import type { SpiffeId } from '../core/identity/index.js';
import { AppendLog, RecentWindow, queryLimit, queryRecords, type TornTail } from './append-log.js';
import type { LogOptions } from './inventory.js';
import { AUDIT_FILE } from './store.js';

export type AuditDecision = 'issued' | 'refused';

export interface AuditRecord {
  time: string; // ISO 8601
  decision: AuditDecision;
  /** Who asked (the authenticated caller). */
  requester: string;
  /** The identity asked for (the caller's authorized identity). */
  identity: string;
  /** Serial of the issued certificate. */
  serial?: string;
  /** Refusal code (WARD_*). */
  code?: string;
  /** Refusal reason, as precise as the code's message. */
  reason?: string;
}

export interface AuditQuery {
  decision?: AuditDecision;
  identity?: string | SpiffeId;
  requester?: string;
  /** 1..1000, default 100. */
  limit?: number;
}

export interface AuditCounts {
  issued: number;
  refused: number;
  /** Refusals per WARD_* code; codes not in the table are counted under 'other'. */
  refusedByCode: Record<string, number>;
}

/** Longest requester / identity / reason kept in a record, so one request cannot bloat the log. */
export const MAX_AUDIT_FIELD = 512;

export function clip(text: string): string {
  return text.length > MAX_AUDIT_FIELD ? `${text.slice(0, MAX_AUDIT_FIELD)}…` : text;
}

function decodeAudit(raw: unknown): AuditRecord | undefined {
  const r = raw as Record<string, unknown>;
  if (typeof r.time !== 'string' || (r.decision !== 'issued' && r.decision !== 'refused')) return undefined;
  if (typeof r.requester !== 'string' || typeof r.identity !== 'string') return undefined;
  const rec: AuditRecord = { time: r.time, decision: r.decision, requester: r.requester, identity: r.identity };
  if (typeof r.serial === 'string') rec.serial = r.serial;
  if (typeof r.code === 'string') rec.code = r.code;
  if (typeof r.reason === 'string') rec.reason = r.reason;
  return rec;
}

function codeBucket(code: string | undefined): string {
  return code !== undefined && Object.hasOwn(ERROR_CODES, code) ? code : 'other';
}

export class AuditLog {
  readonly path: string;
  /** Set when opening found (and cut off) a record torn by a crash mid-append. */
  readonly torn: TornTail | undefined;
  readonly #log: AppendLog<AuditRecord>;
  readonly #window: RecentWindow<AuditRecord>;
  readonly #counts: { issued: number; refused: number; byCode: Map<string, number> };

  private constructor(
    path: string,
    log: AppendLog<AuditRecord>,
    window: RecentWindow<AuditRecord>,
    counts: { issued: number; refused: number; byCode: Map<string, number> },
    torn: TornTail | undefined,
  ) {
    this.path = path;
    this.#log = log;
    this.#window = window;
    this.#counts = counts;
    this.torn = torn;
  }

  static async open(stateDir: string, o: LogOptions): Promise<AuditLog> {
    const path = join(stateDir, AUDIT_FILE);
    const window = new RecentWindow<AuditRecord>(o.recentWindow);
    const counts = { issued: 0, refused: 0, byCode: new Map<string, number>() };
    const count = (rec: AuditRecord) => {
      if (rec.decision === 'issued') {
        counts.issued++;
      } else {
        counts.refused++;
        const b = codeBucket(rec.code);
        counts.byCode.set(b, (counts.byCode.get(b) ?? 0) + 1);
      }
      window.push(rec);
    };
    const { log, torn } = await AppendLog.open<AuditRecord>(
      path,
      { maxPending: o.maxPending, hooks: o.hooks, readOnly: o.readOnly },
      (raw) => {
        const rec = decodeAudit(raw);
        if (rec) count(rec);
      },
      (records) => {
        for (const rec of records) count(rec);
      },
    );
    return new AuditLog(path, log, window, counts, torn);
  }

  hasRoom(): boolean {
    return this.#log.hasRoom();
  }

  /** Why the log stopped accepting records (a failed write or fsync), if it did. */
  get failure(): Error | undefined {
    return this.#log.failure;
  }

  /** Appends a decision; resolves when it is durable. */
  record(rec: AuditRecord): Promise<void> {
    return this.#log.append(rec);
  }

  /** The newest durable decisions, newest first, optionally filtered. */
  async query(q: AuditQuery = {}): Promise<AuditRecord[]> {
    const limit = queryLimit(q.limit);
    const identity = q.identity === undefined ? undefined : String(q.identity);
    const { decision, requester } = q;
    const match =
      decision === undefined && identity === undefined && requester === undefined
        ? undefined
        : (r: AuditRecord) =>
            (decision === undefined || r.decision === decision) &&
            (identity === undefined || r.identity === identity) &&
            (requester === undefined || r.requester === requester);
    return queryRecords(this.path, this.#window, this.#counts.issued + this.#counts.refused, limit, match, decodeAudit);
  }

  counts(): AuditCounts {
    return { issued: this.#counts.issued, refused: this.#counts.refused, refusedByCode: Object.fromEntries(this.#counts.byCode) };
  }

  flush(): Promise<void> {
    return this.#log.flush();
  }

  close(): Promise<void> {
    return this.#log.close();
  }
}
