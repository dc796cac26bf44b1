/**
 * Time is injected (SPIRE's lesson): library code asks a Clock, never Date.now(), so tests drive
 * expiry, renewal and rotation on virtual time without sleeping.
 */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock that only moves when told to. For tests and offline evaluation at a fixed instant. */
export class ManualClock implements Clock {
  #now: number;
  constructor(start: number | Date = Date.UTC(2026, 0, 1)) {
    this.#now = typeof start === 'number' ? start : start.getTime();
  }
  now(): number {
    return this.#now;
  }
  set(t: number | Date): void {
    this.#now = typeof t === 'number' ? t : t.getTime();
  }
  advance(ms: number): void {
    this.#now += ms;
  }
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses "90s", "5m", "1h30m", "24h", "30d" into milliseconds. Returns undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  if (typeof text !== 'string' || text.length === 0 || text.length > 32) return undefined;
  const re = /(\d+)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    total += Number(m[1]) * UNITS[m[2]];
    consumed = re.lastIndex;
  }
  if (consumed !== text.length || !Number.isSafeInteger(total)) return undefined;
  return total;
}

/** Formats a duration for humans: "23h 59m", "4m 10s", "-2h 3m" (past). */
export function formatDuration(ms: number): string {
  const sign = ms < 0 ? '-' : '';
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const parts = d > 0 ? [`${d}d`, `${h}h`] : h > 0 ? [`${h}h`, `${m}m`] : m > 0 ? [`${m}m`, `${s}s`] : [`${s}s`];
  return sign + parts.join(' ');
}
