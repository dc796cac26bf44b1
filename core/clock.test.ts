import { describe, expect, it } from 'vitest';
import { ManualClock, formatDuration, parseDuration } from './clock.js';

describe('parseDuration', () => {
  it('parses units and compounds', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('250ms')).toBe(250);
  });
  it('rejects malformed input', () => {
    for (const bad of ['', '1', 'h', '1x', '-1h', '1h ', ' 1h', '1.5h']) expect(parseDuration(bad)).toBeUndefined();
  });
});

describe('formatDuration', () => {
  it('formats for humans', () => {
    expect(formatDuration(3_600_000 * 25)).toBe('1d 1h');
    expect(formatDuration(-125_000)).toBe('-2m 5s');
  });
});

describe('ManualClock', () => {
  it('moves only when told', () => {
    const c = new ManualClock(1000);
    c.advance(500);
    expect(c.now()).toBe(1500);
  });
});
