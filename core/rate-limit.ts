import type { Clock } from './clock.js';

/**
 * Per-client token buckets with a bounded number of tracked clients. When the table is full the
 * least recently seen client is forgotten (Map keeps insertion order; a hit re-inserts), so an
 * attacker cycling through source addresses costs memory O(maxClients), never more.
 */
export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #ratePerMs: number;
  readonly #burst: number;
  readonly #maxClients: number;
  readonly #clock: Clock;

  constructor(o: { perSecond: number; burst: number; maxClients?: number; clock: Clock }) {
    this.#ratePerMs = o.perSecond / 1000;
    this.#burst = o.burst;
    this.#maxClients = o.maxClients ?? 10_000;
    this.#clock = o.clock;
  }

  /** Takes one token for `client`; false when the client is over its rate. */
  take(client: string): boolean {
    const now = this.#clock.now();
    let b = this.#buckets.get(client);
    if (b) {
      this.#buckets.delete(client);
      b.tokens = Math.min(this.#burst, b.tokens + (now - b.at) * this.#ratePerMs);
      b.at = now;
    } else {
      if (this.#buckets.size >= this.#maxClients) {
        const oldest = this.#buckets.keys().next().value as string;
        this.#buckets.delete(oldest);
      }
      b = { tokens: this.#burst, at: now };
    }
    this.#buckets.set(client, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  get trackedClients(): number {
    return this.#buckets.size;
  }
}
