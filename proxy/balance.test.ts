import { describe, expect, it } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { EndpointSet, RetryBudget, type BalancerEndpoint, type BalancerOptions, type EndpointLease, type FailureKind } from './balance.js';

/** A small deterministic PRNG (mulberry32), so distribution tests are repeatable. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let nextIp = 1;
function ep(name: string, node = 'node-b', zone?: string, identity = `spiffe://ward.test/ns/shop/sa/${name}`): BalancerEndpoint {
  return { address: `10.0.0.${nextIp++}:15008`, identity, node, zone, workload: `shop/${name}` };
}
const keyOf = (e: BalancerEndpoint) => `${e.address} ${e.identity} ${e.workload}`;

function setup(endpoints: BalancerEndpoint[], o: Partial<BalancerOptions> = {}) {
  const clock = new ManualClock(0);
  const set = new EndpointSet('shop.cart', { clock, localNode: 'node-a', localZone: 'zone-1', random: seeded(42), ...o });
  set.update(endpoints);
  const state = (e: BalancerEndpoint) => set.states().find((s) => s.key === keyOf(e))!;
  /** Leases `e` specifically (every other endpoint excluded). */
  const leaseOf = (e: BalancerEndpoint): EndpointLease => {
    const others = new Set(set.states().map((s) => s.key).filter((k) => k !== keyOf(e)));
    const lease = set.pick(others);
    expect(lease?.key).toBe(keyOf(e));
    return lease!;
  };
  /** One successful request to `e` taking `ms` on the clock. */
  const serve = (e: BalancerEndpoint, ms: number) => {
    const lease = leaseOf(e);
    clock.advance(ms);
    lease.succeed();
  };
  const failOn = (e: BalancerEndpoint, kind: FailureKind) => leaseOf(e).fail(kind);
  /** Which endpoint names `count` picks go to (each lease released at once). */
  const tally = (count: number, exclude?: ReadonlySet<string>) => {
    const byKey = new Map<string, number>();
    for (let i = 0; i < count; i++) {
      const lease = set.pick(exclude)!;
      byKey.set(lease.endpoint.workload, (byKey.get(lease.endpoint.workload) ?? 0) + 1);
      lease.cancel();
    }
    return Object.fromEntries(byKey);
  };
  return { clock, set, state, leaseOf, serve, failOn, tally };
}

describe('EndpointSet: membership', () => {
  it('answers undefined at once when it has no endpoints', () => {
    const { set } = setup([]);
    expect(set.size).toBe(0);
    expect(set.available()).toBe(0);
    expect(set.pick()).toBeUndefined();
  });

  it('ignores endpoints without an identity to verify, and duplicates', () => {
    const a = ep('a');
    const { set } = setup([a, ep('anon', 'node-b', undefined, ''), { ...a }]);
    expect(set.size).toBe(1);
    expect(set.states().map((s) => s.key)).toEqual([keyOf(a)]);
    set.update([ep('anon2', 'node-b', undefined, '')]);
    expect(set.size).toBe(0);
    expect(set.pick()).toBeUndefined();
  });

  it('keys endpoints by address, identity and workload', () => {
    const a = ep('a');
    const { set } = setup([a]);
    const lease = set.pick()!;
    expect(lease.key).toBe(`${a.address} spiffe://ward.test/ns/shop/sa/a shop/a`);
    expect(lease.endpoint).toEqual(a);
  });

  it('update() keeps the stats, pending count and ejection of surviving endpoints and drops removed ones', () => {
    const a = ep('a');
    const b = ep('b');
    const c = ep('c');
    const { set, state, serve, leaseOf, failOn, clock } = setup([a, b, c]);
    serve(a, 40);
    const held = leaseOf(a);
    failOn(b, 'connect');
    const before = { a: state(a), b: state(b) };

    // Same keys, new objects; a moved zone (node/zone are not part of the key).
    const a2 = { ...a, zone: 'zone-1' };
    set.update([a2, { ...b }, ep('d')]);
    expect(set.size).toBe(3);
    expect(state(a)).toMatchObject({ ewmaMs: before.a.ewmaMs, pending: 1, tier: 'zone', endpoint: a2 });
    expect(state(b)).toMatchObject({ ejectedUntil: before.b.ejectedUntil, ejections: 1, consecutiveFailures: 1 });
    expect(set.states().some((s) => s.key === keyOf(c))).toBe(false);
    held.succeed();
    expect(state(a).pending).toBe(0);

    // A lease on a removed endpoint may still finish; it changes nothing and notifies nobody.
    const onD = leaseOf(set.states().find((s) => s.endpoint.workload === 'shop/d')!.endpoint);
    let ejected = 0;
    set.onEject = () => ejected++;
    set.update([a2, b]);
    onD.fail('connect');
    expect(ejected).toBe(0);

    // An endpoint that comes back starts afresh.
    clock.advance(1);
    set.update([a2, b, c]);
    expect(state(c)).toMatchObject({ pending: 0, ewmaMs: 1, ejections: 0, consecutiveFailures: 0 });
  });
});

describe('EndpointSet: power of two choices over peak-EWMA', () => {
  it('prefers the endpoint with the lower latency score', () => {
    const fast = ep('fast');
    const mid = ep('mid');
    const slow = ep('slow');
    const { set, serve, tally } = setup([fast, slow]);
    serve(fast, 10);
    serve(slow, 100);
    // With two endpoints both are always the candidates: the cheaper always wins.
    expect(tally(200)).toEqual({ 'shop/fast': 200 });

    // With three, the slowest never wins a comparison; the fastest wins whenever drawn (2/3).
    set.update([fast, mid, slow]);
    serve(mid, 50);
    const t = tally(3000);
    expect(t['shop/slow']).toBeUndefined();
    expect(t['shop/fast']).toBeGreaterThan(1800);
    expect(t['shop/fast']).toBeLessThan(2200);
  });

  it('takes a slow sample at once (peak) and lets it decay with later faster samples', () => {
    const a = ep('a');
    const { state, serve, clock } = setup([a], { decayMs: 10_000 });
    serve(a, 10);
    expect(state(a).ewmaMs).toBe(10);
    serve(a, 500);
    expect(state(a).ewmaMs).toBe(500); // no averaging on the way up

    // 10 s (one time constant) later a 10 ms sample: cost·e⁻¹ + 10·(1 − e⁻¹).
    clock.advance(10_000 - 10);
    serve(a, 10);
    const w = Math.exp(-1);
    expect(state(a).ewmaMs).toBeCloseTo(500 * w + 10 * (1 - w), 6);

    // A faster sample right after the last one barely moves it.
    const before = state(a).ewmaMs;
    serve(a, 1);
    expect(state(a).ewmaMs).toBeLessThan(before);
    expect(state(a).ewmaMs).toBeGreaterThan(before * 0.99);
  });

  it('relaxes a stale peak toward the default so a once-slow endpoint is tried again', () => {
    const fast = ep('fast');
    const slow = ep('slow');
    const { set, state, serve, clock } = setup([fast, slow], { decayMs: 10_000, defaultRttMs: 1 });
    serve(slow, 1000);
    const peakAt = clock.now();
    clock.advance(10_000);
    expect(state(slow).ewmaMs).toBeCloseTo(1 + 999 * Math.exp(-1), 6);
    // One request a second, all to the 20 ms endpoint while the slow one's peak is fresh. With no
    // relaxation it would never be chosen again, having no way to produce a better sample.
    let firstSlowPick: number | undefined;
    while (firstSlowPick === undefined && clock.now() - peakAt < 120_000) {
      clock.advance(1_000);
      const lease = set.pick()!;
      if (lease.key === keyOf(slow)) firstSlowPick = clock.now() - peakAt;
      clock.advance(20);
      lease.succeed();
    }
    // 1 + 999·e^(−t/10 s) falls below fast's ≈ 18 ms after about 41 s.
    expect(firstSlowPick).toBeGreaterThan(38_000);
    expect(firstSlowPick).toBeLessThan(46_000);
  });

  it('counts pending requests in the score', () => {
    const a = ep('a');
    const b = ep('b');
    const { set, serve, state } = setup([a, b]);
    serve(a, 10);
    serve(b, 25);
    // a: 10 × (0 + 1) = 10 < b: 25 → a; then a: 10 × 2 = 20 < 25 → a; then a: 30 > 25 → b.
    const l1 = set.pick()!;
    const l2 = set.pick()!;
    const l3 = set.pick()!;
    expect([l1, l2, l3].map((l) => l.endpoint.workload)).toEqual(['shop/a', 'shop/a', 'shop/b']);
    expect(state(a).pending).toBe(2);
    expect(state(b).pending).toBe(1);
    l1.cancel();
    l2.cancel();
    l3.cancel();
    expect(state(a).pending).toBe(0);
    expect(set.pick()!.endpoint.workload).toBe('shop/a');
  });

  it('spreads traffic between two equal endpoints', () => {
    const a = ep('a');
    const b = ep('b');
    const { set, clock } = setup([a, b]);
    const counts = { 'shop/a': 0, 'shop/b': 0 } as Record<string, number>;
    for (let i = 0; i < 2000; i++) {
      const lease = set.pick()!;
      counts[lease.endpoint.workload]++;
      clock.advance(5);
      lease.succeed();
    }
    expect(counts['shop/a']).toBeGreaterThan(800);
    expect(counts['shop/b']).toBeGreaterThan(800);

    // Requests held open alternate between them through the pending count.
    const held = Array.from({ length: 10 }, () => set.pick()!);
    const onA = held.filter((l) => l.endpoint.workload === 'shop/a').length;
    expect(onA).toBe(5);
  });
});

describe('EndpointSet: locality', () => {
  const onNode = ep('on-node', 'node-a', 'zone-1');
  const inZone = ep('in-zone', 'node-b', 'zone-1');
  const inZone2 = ep('in-zone-2', 'node-c', 'zone-1');
  const remote = ep('remote', 'node-d', 'zone-2');
  const noZone = ep('no-zone', 'node-e');

  it('assigns tiers: same node, same zone, anywhere', () => {
    const { set } = setup([onNode, inZone, remote, noZone]);
    expect(Object.fromEntries(set.states().map((s) => [s.endpoint.workload, s.tier]))).toEqual({
      'shop/on-node': 'node',
      'shop/in-zone': 'zone',
      'shop/remote': 'any',
      'shop/no-zone': 'any',
    });
    // Without a local zone nothing is "same zone".
    const clock = new ManualClock(0);
    const zoneless = new EndpointSet('x', { clock, localNode: 'node-a' });
    zoneless.update([inZone, noZone]);
    expect(zoneless.states().map((s) => s.tier)).toEqual(['any', 'any']);
  });

  it('prefers the node, then the zone, even over faster remote endpoints', () => {
    const { serve, tally } = setup([remote, inZone, onNode]);
    serve(remote, 1);
    serve(inZone, 50);
    serve(onNode, 500);
    expect(tally(20)).toEqual({ 'shop/on-node': 20 });
  });

  it('fails over to the next tier when the local ones are ejected', () => {
    const { set, failOn, tally, clock } = setup([remote, inZone, inZone2, onNode]);
    failOn(onNode, 'connect');
    const t = tally(200);
    expect(Object.keys(t).sort()).toEqual(['shop/in-zone', 'shop/in-zone-2']);
    failOn(inZone, 'tls');
    failOn(inZone2, 'identity');
    expect(tally(10)).toEqual({ 'shop/remote': 10 });
    failOn(remote, 'connect');
    expect(set.available()).toBe(0);
    expect(set.pick()).toBeUndefined(); // all ejected: the caller answers a fast 503

    // Ejections end with the clock, and the node tier wins again.
    clock.advance(1_000);
    expect(set.available()).toBe(4);
    expect(tally(10)).toEqual({ 'shop/on-node': 10 });
  });

  it('fails over to the next tier when the local ones were already tried', () => {
    const { set, tally } = setup([remote, inZone, onNode]);
    expect(tally(10, new Set([keyOf(onNode)]))).toEqual({ 'shop/in-zone': 10 });
    expect(tally(10, new Set([keyOf(onNode), keyOf(inZone)]))).toEqual({ 'shop/remote': 10 });
    expect(set.pick(new Set([keyOf(onNode), keyOf(inZone), keyOf(remote)]))).toBeUndefined();
    expect(set.available()).toBe(3); // excluding is per request, not an ejection
  });
});

describe('EndpointSet: exclude', () => {
  it('never picks an excluded endpoint, and retries walk through all of them', () => {
    const eps = [ep('a'), ep('b'), ep('c'), ep('d')];
    const { set } = setup(eps);
    const tried = new Set<string>();
    for (let i = 0; i < eps.length; i++) {
      const lease = set.pick(tried)!;
      expect(tried.has(lease.key)).toBe(false);
      tried.add(lease.key);
      lease.fail('response');
    }
    expect(tried.size).toBe(4);
    expect(set.pick(tried)).toBeUndefined();
  });
});

describe('EndpointSet: ejection', () => {
  it.each(['connect', 'tls', 'identity'] as const)('ejects at once on a %s failure', (kind) => {
    const a = ep('a');
    const b = ep('b');
    const { set, failOn, state, tally } = setup([a, b]);
    failOn(a, kind);
    expect(state(a)).toMatchObject({ ejectedUntil: 1_000, ejections: 1, consecutiveFailures: 1 });
    expect(set.available()).toBe(1);
    expect(tally(20)).toEqual({ 'shop/b': 20 });
  });

  it("ejects on 'response' failures only after N consecutive ones", () => {
    const a = ep('a');
    const { set, failOn, serve, state } = setup([a], { ejection: { consecutiveFailures: 3 } });
    failOn(a, 'response');
    failOn(a, 'response');
    serve(a, 1); // a success breaks the run
    expect(state(a).consecutiveFailures).toBe(0);
    failOn(a, 'response');
    failOn(a, 'response');
    expect(state(a).ejectedUntil).toBeUndefined();
    expect(set.available()).toBe(1);
    failOn(a, 'response');
    expect(state(a)).toMatchObject({ consecutiveFailures: 3, ejections: 1 });
    expect(set.available()).toBe(0);
    expect(set.pick()).toBeUndefined();
  });

  it('defaults to 5 consecutive response failures', () => {
    const a = ep('a');
    const { set, failOn } = setup([a]);
    for (let i = 0; i < 4; i++) failOn(a, 'response');
    expect(set.available()).toBe(1);
    failOn(a, 'response');
    expect(set.available()).toBe(0);
  });

  it('backs off exponentially up to the cap, and a success resets the exponent', () => {
    const a = ep('a');
    const { failOn, serve, state, clock } = setup([a], { ejection: { baseMs: 1_000, maxMs: 10_000 } });
    const durations: number[] = [];
    for (let i = 0; i < 6; i++) {
      const start = clock.now();
      failOn(a, 'connect');
      const until = state(a).ejectedUntil!;
      durations.push(until - start);
      clock.set(until); // available again exactly when the clock reaches ejectedUntil
    }
    expect(durations).toEqual([1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    expect(state(a).ejections).toBe(6);

    serve(a, 3);
    const start = clock.now();
    failOn(a, 'connect');
    expect(state(a).ejectedUntil! - start).toBe(1_000);
  });

  it('ends an ejection when the clock passes it, without timers', () => {
    const a = ep('a');
    const { set, failOn, state, clock } = setup([a]);
    failOn(a, 'connect');
    clock.advance(999);
    expect(set.available()).toBe(0);
    expect(set.pick()).toBeUndefined();
    clock.advance(1);
    expect(set.available()).toBe(1);
    expect(state(a).ejectedUntil).toBeUndefined();
    expect(set.pick()?.key).toBe(keyOf(a));
  });

  it('puts a returning endpoint on probation: one more failure ejects it for twice as long', () => {
    const a = ep('a');
    const { failOn, state, clock } = setup([a], { ejection: { consecutiveFailures: 2 } });
    failOn(a, 'response');
    failOn(a, 'response');
    expect(state(a).ejectedUntil).toBe(1_000);
    clock.advance(1_000);
    failOn(a, 'response');
    expect(state(a).ejectedUntil).toBe(1_000 + 2_000);
  });

  it('does not stretch an ejection for requests that were in flight when it began', () => {
    const a = ep('a');
    const b = ep('b');
    const { set, leaseOf, state, clock } = setup([a, b]);
    const inFlight = [leaseOf(a), leaseOf(a), leaseOf(a)];
    inFlight[0].fail('connect');
    clock.advance(10);
    inFlight[1].fail('connect');
    inFlight[2].fail('response');
    expect(state(a)).toMatchObject({ ejectedUntil: 1_000, ejections: 1, consecutiveFailures: 3, pending: 0 });
    expect(set.available()).toBe(1);
  });

  it('reports every ejection to onEject', () => {
    const a = ep('a');
    const { set, failOn, clock } = setup([a], { ejection: { consecutiveFailures: 2 } });
    const seen: unknown[] = [];
    set.onEject = (e) => seen.push(e);
    failOn(a, 'tls');
    clock.advance(1_000);
    failOn(a, 'response');
    expect(seen).toEqual([
      { key: keyOf(a), endpoint: a, until: 1_000, kind: 'tls' },
      { key: keyOf(a), endpoint: a, until: 3_000, kind: 'response' },
    ]);
  });

  it("lets a slow failed response raise the estimate but never a fast one lower it", () => {
    const a = ep('a');
    const { leaseOf, serve, state, clock } = setup([a]);
    serve(a, 50);
    const fast = leaseOf(a);
    clock.advance(2);
    fast.fail('response');
    expect(state(a).ewmaMs).toBeCloseTo(50, 1); // only the relaxation of 2 ms
    const slow = leaseOf(a);
    clock.advance(30_000); // a timeout
    slow.fail('response');
    expect(state(a).ewmaMs).toBe(30_000);
  });
});

describe('EndpointLease', () => {
  it('takes exactly one outcome; later calls are ignored', () => {
    const a = ep('a');
    const { set, leaseOf, state, clock } = setup([a], { ejection: { consecutiveFailures: 1 } });
    let ejections = 0;
    set.onEject = () => ejections++;

    const ok = leaseOf(a);
    expect(state(a).pending).toBe(1);
    clock.advance(40);
    ok.succeed();
    ok.succeed();
    ok.fail('connect');
    ok.cancel();
    expect(state(a)).toMatchObject({ pending: 0, ewmaMs: 40, consecutiveFailures: 0, ejections: 0 });
    expect(ejections).toBe(0);

    const gone = leaseOf(a);
    clock.advance(5_000);
    gone.cancel(); // no sample: a client that went away says nothing about the endpoint
    gone.succeed();
    gone.fail('response');
    expect(state(a)).toMatchObject({ pending: 0, consecutiveFailures: 0, ejections: 0 });
    expect(state(a).ewmaMs).toBeLessThan(40);

    const bad = leaseOf(a);
    bad.fail('response');
    bad.fail('response');
    bad.succeed();
    expect(state(a)).toMatchObject({ pending: 0, consecutiveFailures: 1, ejections: 1 });
    expect(ejections).toBe(1);
  });
});

describe('EndpointSet: options', () => {
  it('rejects nonsensical options as bugs', () => {
    const clock = new ManualClock(0);
    expect(() => new EndpointSet('x', { clock, localNode: 'n', decayMs: 0 })).toThrow(/BUG/);
    expect(() => new EndpointSet('x', { clock, localNode: 'n', ejection: { consecutiveFailures: 0 } })).toThrow(/BUG/);
    expect(() => new EndpointSet('x', { clock, localNode: 'n', ejection: { baseMs: 5_000, maxMs: 1_000 } })).toThrow(/BUG/);
    expect(() => new RetryBudget({ clock, ratio: -1 })).toThrow(/BUG/);
  });
});

describe('RetryBudget', () => {
  it('allows minPerSecond × ttl seconds of retries with no traffic at all', () => {
    const clock = new ManualClock(0);
    const budget = new RetryBudget({ clock, minPerSecond: 2, ttlMs: 5_000, ratio: 0.2 });
    const granted = Array.from({ length: 12 }, () => budget.tryWithdraw()).filter(Boolean).length;
    expect(granted).toBe(10);
    expect(budget.tryWithdraw()).toBe(false);
  });

  it('allows ratio × requests on top of the minimum', () => {
    const clock = new ManualClock(0);
    const budget = new RetryBudget({ clock, minPerSecond: 0, ratio: 0.2 });
    expect(budget.tryWithdraw()).toBe(false);
    for (let i = 0; i < 15; i++) budget.deposit();
    expect([budget.tryWithdraw(), budget.tryWithdraw(), budget.tryWithdraw(), budget.tryWithdraw()]).toEqual([true, true, true, false]);
    for (let i = 0; i < 5; i++) budget.deposit();
    expect(budget.tryWithdraw()).toBe(true);
    expect(budget.tryWithdraw()).toBe(false);
  });

  it('uses the defaults: ratio 0.2, 10 per second, 10 s window', () => {
    const clock = new ManualClock(0);
    const budget = new RetryBudget({ clock });
    for (let i = 0; i < 100; i++) budget.deposit();
    let granted = 0;
    while (budget.tryWithdraw()) granted++;
    expect(granted).toBe(10 * 10 + 20);
  });

  it('forgets requests and retries older than the window', () => {
    const clock = new ManualClock(0);
    const budget = new RetryBudget({ clock, minPerSecond: 0, ratio: 0.5, ttlMs: 10_000 });
    for (let i = 0; i < 10; i++) budget.deposit();
    clock.advance(5_000);
    for (let i = 0; i < 4; i++) expect(budget.tryWithdraw()).toBe(true); // 5 allowed, 4 taken
    clock.advance(5_000); // the deposits (t = 0) have aged out; the retries (t = 5 s) have not
    for (let i = 0; i < 10; i++) budget.deposit();
    expect(budget.tryWithdraw()).toBe(true);
    expect(budget.tryWithdraw()).toBe(false); // 5 allowed by the new deposits, 4 + 1 taken
    clock.advance(5_000); // the retries age out too
    expect([budget.tryWithdraw(), budget.tryWithdraw(), budget.tryWithdraw()]).toEqual([true, true, true]);
  });

  it('keeps a fixed amount of state whatever the traffic', () => {
    const clock = new ManualClock(0);
    const budget = new RetryBudget({ clock, minPerSecond: 0, ratio: 1 });
    for (let s = 0; s < 1_000; s++) {
      clock.advance(1_000);
      for (let i = 0; i < 10; i++) budget.deposit();
    }
    // Only the last 10 s count: 100 deposits → 100 retries at ratio 1.
    let granted = 0;
    while (budget.tryWithdraw()) granted++;
    expect(granted).toBe(100);
  });
});
