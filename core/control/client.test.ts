/**
 * ControlClient against a fake discovery server written here (node:https, TLS 1.3, mutual, with
 * certificates minted per run). The fake speaks core/protocol/discovery.ts: it records each stream
 * request (its ?resume= and the client's verified identity) and each ACK, and the test writes frames.
 *
 * Every timer of the client goes through ManualTimers, so backoff, idle and close() are asserted on
 * the timers themselves and nothing sleeps. Connect and idle timeouts get distinctive durations far
 * above the backoff cap, which tells them apart from backoff timers.
 */
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { ManualClock } from '../clock.js';
import { SpiffeId } from '../identity/index.js';
import { silentLogger } from '../logger.js';
import { MAX_FRAME_BYTES, type Ack, type Frame, type Resource, type ViewState } from '../protocol/index.js';
import { meshServerOptions, peerIdentity } from '../tls/index.js';
import { ControlClient, ControlStreamError, type ControlClientOptions, type Timers } from './index.js';
import { mintPki } from '../../test/helpers/pki.js';

const TD = 'example.org';
const DISCOVERY = SpiffeId.parse(`spiffe://${TD}/ward/discovery`);
const NODE = SpiffeId.node(TD, 'n1');
const BACKOFF = { initialMs: 100, maxMs: 1000 };
/** Far above the backoff cap, so a pending timer's duration says what it is. */
const CONNECT_MS = 900_001;
const IDLE_MS = 900_002;
const WAIT = { timeout: 10_000, interval: 5 };

const leaf = mintPki(TD).credentials;

/** Timers that fire only when the test says so. */
class ManualTimers implements Timers {
  #next = 0;
  readonly pending = new Map<number, { fn: () => void; ms: number }>();
  set = (fn: () => void, ms: number): unknown => {
    const id = ++this.#next;
    this.pending.set(id, { fn, ms });
    return id;
  };
  clear = (h: unknown): void => {
    this.pending.delete(h as number);
  };
  /** Durations of pending timers matching `pred`. */
  durations(pred: (ms: number) => boolean = () => true): number[] {
    return [...this.pending.values()].map((t) => t.ms).filter(pred);
  }
  /** Fires the one pending timer matching `pred`; returns its duration. */
  fire(pred: (ms: number) => boolean): number {
    const hits = [...this.pending].filter(([, t]) => pred(t.ms));
    if (hits.length !== 1) throw new Error(`expected one matching timer, found ${hits.length}`);
    const [id, t] = hits[0];
    this.pending.delete(id);
    t.fn();
    return t.ms;
  }
  fireBackoff(): number {
    return this.fire((ms) => ms <= BACKOFF.maxMs);
  }
}

interface StreamRequest {
  resume: string | null;
  peer: string | undefined;
  res: ServerResponse;
  closed: boolean;
}

/** The fake pool. */
class FakeDiscovery {
  readonly streams: StreamRequest[] = [];
  readonly acks: (Ack & { peer?: string })[] = [];
  /** 'unavailable': answer every stream with 503. */
  mode: 'ok' | 'unavailable' = 'ok';
  port = 0;
  constructor(readonly server: Server) {}
  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }
  get last(): StreamRequest {
    return this.streams[this.streams.length - 1];
  }
  send(frame: Frame, s: StreamRequest = this.last): void {
    s.res.write(`${JSON.stringify(frame)}\n`);
  }
}

async function fakeDiscovery(id: SpiffeId = DISCOVERY): Promise<FakeDiscovery> {
  const server = createServer(meshServerOptions(leaf(id), { requireClientCert: true }));
  const fake = new FakeDiscovery(server);
  server.on('request', (req, res) => {
    const peer = peerIdentity(req.socket as TLSSocket, { trustDomain: TD })?.toString();
    const url = new URL(req.url ?? '/', 'https://x');
    if (req.method === 'GET' && url.pathname === '/v1/stream') {
      if (fake.mode === 'unavailable') {
        res.writeHead(503, { 'content-type': 'text/plain' }).end('warming up');
        return;
      }
      const s: StreamRequest = { resume: url.searchParams.get('resume'), peer, res, closed: false };
      res.on('close', () => {
        s.closed = true;
      });
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.flushHeaders();
      fake.streams.push(s);
      return;
    }
    if (req.method === 'POST' && url.pathname === '/v1/ack') {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        fake.acks.push({ ...(JSON.parse(Buffer.concat(parts).toString('utf8')) as Ack), peer });
        res.writeHead(204).end();
      });
      return;
    }
    res.writeHead(404).end();
  });
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  fake.port = (server.address() as { port: number }).port;
  onTestFinished(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return fake;
}

interface Harness {
  client: ControlClient;
  timers: ManualTimers;
  events: { updates: number[]; rejected: { version: number; error: string }[]; disconnected: ControlStreamError[]; delays: number[] };
  credentialCalls: () => number;
}

function newClient(fake: FakeDiscovery, o: Partial<ControlClientOptions> = {}): Harness {
  const timers = new ManualTimers();
  let calls = 0;
  const creds = leaf(NODE);
  const client = new ControlClient({
    url: fake.url,
    trustDomain: TD,
    credentials: () => {
      calls++;
      return creds;
    },
    logger: silentLogger(),
    backoff: BACKOFF,
    random: () => 0.5,
    timers,
    connectTimeoutMs: CONNECT_MS,
    idleTimeoutMs: IDLE_MS,
    ...o,
  });
  const events: Harness['events'] = { updates: [], rejected: [], disconnected: [], delays: [] };
  client.on('update', (s) => events.updates.push(s.version));
  client.on('rejected', (f, e) => events.rejected.push({ version: f.version, error: e.message }));
  client.on('disconnected', (e) => events.disconnected.push(e));
  client.on('reconnecting', (r) => events.delays.push(r.delayMs));
  onTestFinished(() => client.close());
  return { client, timers, events, credentialCalls: () => calls };
}

const ep = (svc: string, port: number): Resource => ({
  kind: 'endpoints',
  key: `${svc}.shop`,
  value: { service: svc, namespace: 'shop', ports: [{ port, targetPort: port, protocol: 'http' }], endpoints: [] },
});
const route = (host: string): Resource => ({ kind: 'route', key: host, value: { host, paths: [] } });

function keys(s: ViewState | undefined): string[] {
  return [...(s?.resources.keys() ?? [])].sort();
}

/** Starts a client and brings it to version 1 (snapshot with cart and web endpoints). */
async function atVersionOne(fake: FakeDiscovery, o: Partial<ControlClientOptions> = {}): Promise<Harness> {
  const h = newClient(fake, o);
  h.client.start();
  await vi.waitFor(() => expect(fake.streams).toHaveLength(1), WAIT);
  fake.send({ type: 'snapshot', version: 1, resources: [ep('cart', 80), ep('web', 8080)] });
  await vi.waitFor(() => expect(fake.acks).toEqual([{ version: 1, ok: true, peer: NODE.toString() }]), WAIT);
  // The client has read the 204 too (so the ACK's timeout timer is gone).
  await vi.waitFor(() => expect(h.client.status().ackedVersion).toBe(1), WAIT);
  return h;
}

describe('ControlClient', () => {
  it('applies a snapshot, reports it, and ACKs it over mTLS', async () => {
    const fake = await fakeDiscovery();
    const { client, events, timers } = await atVersionOne(fake);
    expect(fake.streams[0].resume).toBeNull();
    expect(fake.streams[0].peer).toBe(NODE.toString());
    expect(events.updates).toEqual([1]);
    expect(keys(client.state())).toEqual(['endpoints cart.shop', 'endpoints web.shop']);
    expect(client.resources('endpoints').map((e) => e.service).sort()).toEqual(['cart', 'web']);
    expect(client.resources('route')).toEqual([]);
    expect(client.resource('endpoints', 'web.shop')?.ports[0].port).toBe(8080);
    await vi.waitFor(() => expect(client.status()).toEqual({ connected: true, version: 1, ackedVersion: 1, lastError: undefined, reconnects: 0 }), WAIT);
    // Connected and idle: only the idle watchdog is armed.
    expect(timers.durations()).toEqual([IDLE_MS]);
  });

  it('applies deltas in order and ACKs each', async () => {
    const fake = await fakeDiscovery();
    const { client, events } = await atVersionOne(fake);
    fake.send({ type: 'delta', version: 2, base: 1, upserts: [ep('cart', 81), route('shop.example.com')], removals: [] });
    fake.send({ type: 'heartbeat', version: 2 });
    fake.send({ type: 'delta', version: 5, base: 2, upserts: [], removals: [{ kind: 'endpoints', key: 'web.shop' }] });
    await vi.waitFor(() => expect(fake.acks.map((a) => [a.version, a.ok])).toEqual([[1, true], [2, true], [5, true]]), WAIT);
    expect(events.updates).toEqual([1, 2, 5]);
    expect(keys(client.state())).toEqual(['endpoints cart.shop', 'route shop.example.com']);
    expect(client.resource('endpoints', 'cart.shop')?.ports[0].port).toBe(81);
    expect(client.resources('route')).toEqual([{ host: 'shop.example.com', paths: [] }]);
    await vi.waitFor(() => expect(client.status().ackedVersion).toBe(5), WAIT);
  });

  it('NACKs a version validate() refuses and keeps the previous state', async () => {
    const fake = await fakeDiscovery();
    const seen: number[] = [];
    const { client, events } = await atVersionOne(fake, {
      validate: async (next, frame) => {
        seen.push(frame.version);
        if (next.resources.has('route evil.example.com')) throw new Error('route host not allowed');
      },
    });
    const before = client.state();
    fake.send({ type: 'delta', version: 2, base: 1, upserts: [route('evil.example.com')], removals: [] });
    await vi.waitFor(() => expect(fake.acks.at(-1)).toEqual({ version: 2, ok: false, error: 'route host not allowed', peer: NODE.toString() }), WAIT);
    expect(seen).toEqual([1, 2]);
    expect(events.rejected).toEqual([{ version: 2, error: 'route host not allowed' }]);
    expect(events.updates).toEqual([1]);
    expect(client.state()).toBe(before);
    expect(client.status()).toMatchObject({ connected: true, version: 1, ackedVersion: 1 });
    // A refusal is not a protocol failure: the stream stays up.
    expect(events.disconnected).toEqual([]);
    expect(fake.streams).toHaveLength(1);
  });

  it('NACKs a delta on the wrong base and reconnects without resume for a snapshot', async () => {
    const fake = await fakeDiscovery();
    const { client, events, timers } = await atVersionOne(fake);
    fake.send({ type: 'delta', version: 4, base: 3, upserts: [route('a.example.com')], removals: [] });
    await vi.waitFor(() => expect(events.disconnected.map((e) => e.reason)).toEqual(['resync']), WAIT);
    await vi.waitFor(() => expect(fake.acks.at(-1)).toMatchObject({ version: 4, ok: false }), WAIT);
    expect((fake.acks.at(-1) as { error: string }).error).toMatch(/based on version 3.*holds 1/);
    expect(keys(client.state())).toEqual(['endpoints cart.shop', 'endpoints web.shop']);
    expect(client.status()).toMatchObject({ connected: false, version: 1 });

    timers.fireBackoff();
    await vi.waitFor(() => expect(fake.streams).toHaveLength(2), WAIT);
    expect(fake.streams[1].resume).toBeNull();
    fake.send({ type: 'snapshot', version: 4, resources: [route('a.example.com')] });
    await vi.waitFor(() => expect(fake.acks.at(-1)).toMatchObject({ version: 4, ok: true }), WAIT);
    expect(keys(client.state())).toEqual(['route a.example.com']);
    expect(client.status()).toMatchObject({ connected: true, version: 4, reconnects: 1 });
  });

  it('keeps its state when the server ends the stream, and resumes from the ACKed version', async () => {
    const fake = await fakeDiscovery();
    const { client, events, timers, credentialCalls } = await atVersionOne(fake);
    fake.send({ type: 'delta', version: 2, base: 1, upserts: [route('a.example.com')], removals: [] });
    await vi.waitFor(() => expect(client.status().ackedVersion).toBe(2), WAIT);
    const held = client.state();
    fake.last.res.end();
    await vi.waitFor(() => expect(events.disconnected.map((e) => e.reason)).toEqual(['ended']), WAIT);
    expect(client.state()).toBe(held);
    expect(client.status()).toMatchObject({ connected: false, version: 2, ackedVersion: 2, lastError: 'the discovery server ended the stream' });

    timers.fireBackoff();
    await vi.waitFor(() => expect(fake.streams).toHaveLength(2), WAIT);
    expect(fake.streams[1].resume).toBe('2');
    // Credentials are read at each connect, so a renewed certificate is used by the next stream.
    expect(credentialCalls()).toBe(2);
    fake.send({ type: 'delta', version: 3, base: 2, upserts: [], removals: [{ kind: 'route', key: 'a.example.com' }] });
    await vi.waitFor(() => expect(client.status()).toMatchObject({ connected: true, version: 3, ackedVersion: 3, reconnects: 1 }), WAIT);
    expect(keys(client.state())).toEqual(['endpoints cart.shop', 'endpoints web.shop']);
  });

  it('backs off exponentially with full jitter, capped, and resets after an adopted version', async () => {
    const fake = await fakeDiscovery();
    fake.mode = 'unavailable';
    const { client, events, timers } = newClient(fake);
    client.start();
    for (let i = 0; i < 6; i++) {
      await vi.waitFor(() => expect(events.delays).toHaveLength(i + 1), WAIT);
      expect(timers.durations((ms) => ms <= BACKOFF.maxMs)).toEqual([events.delays[i]]);
      timers.fireBackoff();
    }
    // random() = 0.5 of min(1000, 100·2^n): it doubles, then stays at half the cap.
    expect(events.delays).toEqual([50, 100, 200, 400, 500, 500]);
    expect(events.disconnected.every((e) => e.reason === 'status')).toBe(true);
    expect(client.status().lastError).toMatch(/503.*warming up/);
    expect(client.state()).toBeUndefined();

    fake.mode = 'ok';
    await vi.waitFor(() => expect(fake.streams).toHaveLength(1), WAIT);
    fake.send({ type: 'snapshot', version: 7, resources: [] });
    await vi.waitFor(() => expect(client.status().ackedVersion).toBe(7), WAIT);
    fake.last.res.end();
    await vi.waitFor(() => expect(events.delays).toHaveLength(7), WAIT);
    expect(events.delays[6]).toBe(50);
    expect(client.status().reconnects).toBe(6);
  });

  it('uses the injected jitter source across the whole range', async () => {
    const fake = await fakeDiscovery();
    fake.mode = 'unavailable';
    const draws = [0, 0.999, 0.25];
    const { client, events, timers } = newClient(fake, { random: () => draws.shift() ?? 0 });
    client.start();
    for (let i = 0; i < 3; i++) {
      await vi.waitFor(() => expect(events.delays).toHaveLength(i + 1), WAIT);
      timers.fireBackoff();
    }
    expect(events.delays).toEqual([0, 199, 100]);
  });

  it('refuses a server that does not present the discovery identity, adopting nothing', async () => {
    const fake = await fakeDiscovery(SpiffeId.workload(TD, 'shop', 'cart'));
    const { client, events, timers } = newClient(fake);
    client.start();
    await vi.waitFor(() => expect(events.disconnected).toHaveLength(1), WAIT);
    expect(events.disconnected[0].reason).toBe('connect');
    expect(events.disconnected[0].message).toMatch(/spiffe:\/\/example\.org\/ns\/shop\/sa\/cart/);
    expect(fake.streams).toEqual([]);
    expect(fake.acks).toEqual([]);
    expect(client.state()).toBeUndefined();
    expect(client.status()).toMatchObject({ connected: false, version: 0 });
    // It keeps trying (the pool may be mid-rotation), still refusing.
    timers.fireBackoff();
    await vi.waitFor(() => expect(events.disconnected).toHaveLength(2), WAIT);
    expect(fake.streams).toEqual([]);
  });

  it('treats a line longer than MAX_FRAME_BYTES as a protocol error, without waiting for its end', async () => {
    const fake = await fakeDiscovery();
    const { client, events, timers } = await atVersionOne(fake);
    const first = fake.last;
    // No newline: the client must give up at the bound, not buffer until the line ends.
    first.res.write(Buffer.alloc(MAX_FRAME_BYTES + 1, 0x78));
    await vi.waitFor(() => expect(events.disconnected.map((e) => e.reason)).toEqual(['protocol']), WAIT);
    expect(events.disconnected[0].message).toMatch(/longer than/);
    expect(keys(client.state())).toEqual(['endpoints cart.shop', 'endpoints web.shop']);
    await vi.waitFor(() => expect(first.closed).toBe(true), WAIT);
    timers.fireBackoff();
    await vi.waitFor(() => expect(fake.streams).toHaveLength(2), WAIT);
    expect(fake.streams[1].resume).toBe('1');
  });

  it('treats a malformed frame as a protocol error', async () => {
    const fake = await fakeDiscovery();
    const { client, events } = await atVersionOne(fake);
    fake.last.res.write('{"type":"snapshot","version":-1}\n');
    await vi.waitFor(() => expect(events.disconnected.map((e) => e.reason)).toEqual(['protocol']), WAIT);
    expect(client.status()).toMatchObject({ version: 1, ackedVersion: 1 });
    expect(fake.acks).toHaveLength(1);
  });

  it('reconnects when the stream is idle past idleTimeoutMs (on the injected clock)', async () => {
    const fake = await fakeDiscovery();
    const clock = new ManualClock();
    const { events, timers } = await atVersionOne(fake, { clock });
    clock.advance(IDLE_MS / 2);
    timers.fire((ms) => ms === IDLE_MS);
    // Not idle long enough: the watchdog re-arms for the remainder.
    expect(timers.durations()).toEqual([IDLE_MS / 2]);
    expect(events.disconnected).toEqual([]);
    clock.advance(IDLE_MS / 2);
    timers.fire((ms) => ms === IDLE_MS / 2);
    await vi.waitFor(() => expect(events.disconnected.map((e) => e.reason)).toEqual(['idle']), WAIT);
    await vi.waitFor(() => expect(fake.streams[0].closed).toBe(true), WAIT);
  });

  it('close() stops the stream and every timer, and is idempotent', async () => {
    const fake = await fakeDiscovery();
    const { client, events, timers } = await atVersionOne(fake);
    const held = client.state();
    const closing = client.close();
    expect(client.close()).toBe(closing);
    await closing;
    expect(timers.pending.size).toBe(0);
    await vi.waitFor(() => expect(fake.streams[0].closed).toBe(true), WAIT);
    expect(events.disconnected).toEqual([]);
    expect(client.state()).toBe(held);
    expect(client.status().connected).toBe(false);
    expect(() => client.start()).toThrow(/BUG/);
  });

  it('close() during a backoff wait cancels the reconnection', async () => {
    const fake = await fakeDiscovery();
    fake.mode = 'unavailable';
    const { client, events, timers } = newClient(fake);
    client.start();
    await vi.waitFor(() => expect(events.delays).toHaveLength(1), WAIT);
    expect(timers.pending.size).toBe(1);
    await client.close();
    expect(timers.pending.size).toBe(0);
  });
});
