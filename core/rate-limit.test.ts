import { describe, expect, it } from 'vitest';
import { ManualClock } from './clock.js';
import { RateLimiter } from './rate-limit.js';

describe('RateLimiter', () => {
  it('allows a burst, then refills at the rate', () => {
    const clock = new ManualClock(0);
    const rl = new RateLimiter({ perSecond: 2, burst: 3, clock });
    expect([rl.take('a'), rl.take('a'), rl.take('a'), rl.take('a')]).toEqual([true, true, true, false]);
    expect(rl.take('b')).toBe(true); // clients are independent
    clock.advance(500);
    expect(rl.take('a')).toBe(true);
    expect(rl.take('a')).toBe(false);
  });

  it('tracks a bounded number of clients', () => {
    const clock = new ManualClock(0);
    const rl = new RateLimiter({ perSecond: 1, burst: 1, maxClients: 100, clock });
    for (let i = 0; i < 10_000; i++) rl.take(`10.0.${i >> 8}.${i & 255}`);
    expect(rl.trackedClients).toBe(100);
  });
});
