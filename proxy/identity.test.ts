/**
 * The node proxy's identity manager against a real CA server (test/helpers/ca.ts) on 127.0.0.1:
 * join, workload issuance and refusal, renewal at half-life, backoff while the CA is down, expiry,
 * the state directory, bundle updates, the secure contexts in a real mutual-TLS handshake, limits.
 *
 * Time: the CA and the manager share one ManualClock, and the manager's timers are FakeTimers on
 * it, fired by hand. The clock starts 45 minutes in the past, so every certificate issued while a
 * test moves it forward (by up to 45 minutes) is also valid on the real clock, which is what the
 * TLS stacks check.
 */
import { once } from 'node:events';
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream';
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { expect, it, onTestFinished, vi } from 'vitest';
import { ManualClock } from '../core/clock.js';
import type { Timers } from '../core/control/index.js';
import { SpiffeId } from '../core/identity/index.js';
import { createRegistry, type Registry } from '../core/metrics.js';
import { PrivateKey, TrustBundle, createRoot, parseCertificates, splitKeyAndChain } from '../core/pki/index.js';
import { meshClientOptions, meshServerOptions, peerIdentity } from '../core/tls/index.js';
import { TD, captureLogs, credentialsFor, startCa, type CaHarness, type LogCapture } from '../test/helpers/ca.js';
import { IdentityManager, NODE_IDENTITY_FILE, type IdentityOptions, type IdentityStatus } from './identity.js';

const NODE = SpiffeId.node(TD, 'n1');
const WEB = SpiffeId.workload(TD, 'shop', 'web');
const API = SpiffeId.workload(TD, 'shop', 'api');
const DB = SpiffeId.workload(TD, 'shop', 'db');
const MINUTE = 60_000;

/** Timers on a ManualClock: nothing fires until advance() moves the clock past it. */
class FakeTimers implements Timers {
  readonly pending = new Map<number, { at: number; fn: () => void }>();
  #next = 1;
  constructor(readonly clock: ManualClock) {}
  set(fn: () => void, ms: number): unknown {
    const handle = this.#next++;
    this.pending.set(handle, { at: this.clock.now() + ms, fn });
    return handle;
  }
  clear(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  /** Moves the clock forward by `ms`, firing every timer that falls due on the way, in order. */
  advance(ms: number): void {
    const to = this.clock.now() + ms;
    for (;;) {
      let first: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.pending) if (e[1].at <= to && (!first || e[1].at < first[1].at)) first = e;
      if (!first) break;
      this.pending.delete(first[0]);
      if (first[1].at > this.clock.now()) this.clock.set(first[1].at);
      first[1].fn();
    }
    this.clock.set(to);
  }
  advanceTo(t: number): void {
    this.advance(t - this.clock.now());
  }
}

/** A TCP relay in front of the CA: 'down' resets every connection, 'hang' accepts and never answers. */
interface Relay {
  port: number;
  mode: 'up' | 'down' | 'hang';
  /** Connections accepted so far. */
  accepted: number;
}

async function relayTo(port: number): Promise<Relay> {
  const sockets = new Set<Socket>();
  const relay: Relay = { port: 0, mode: 'up', accepted: 0 };
  const server = createNetServer((client) => {
    relay.accepted++;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    if (relay.mode === 'down') return void client.resetAndDestroy();
    if (relay.mode === 'hang') return;
    const upstream = netConnect(port, '127.0.0.1');
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    pipeline(client, upstream, client, () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  relay.port = (server.address() as { port: number }).port;
  onTestFinished(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return relay;
}

interface Env {
  h: CaHarness;
  clock: ManualClock;
  timers: FakeTimers;
  logs: LogCapture;
  registry: Registry;
  /** A manager for node n1 with a fresh join token (unless overridden), closed when the test ends. */
  manager(o?: Partial<IdentityOptions> & { port?: number }): Promise<{ mgr: IdentityManager; changes: string[]; losses: string[] }>;
}

async function env(): Promise<Env> {
  const clock = new ManualClock(Date.now() - 45 * MINUTE);
  const h = await startCa({ clock });
  const timers = new FakeTimers(clock);
  const logs = captureLogs();
  const registry = createRegistry();
  return {
    h,
    clock,
    timers,
    logs,
    registry,
    async manager(o = {}) {
      const { port, ...rest } = o;
      const joinToken = 'joinToken' in o ? o.joinToken : (await h.tokens.create('n1')).token;
      const mgr = new IdentityManager({
        caUrl: `https://127.0.0.1:${port ?? h.port}`,
        trustDomain: TD,
        node: 'n1',
        bundle: h.bundle,
        clock,
        timers,
        random: () => 0.5,
        logger: logs.logger,
        registry,
        ...rest,
        joinToken,
      });
      onTestFinished(() => mgr.close());
      const changes: string[] = [];
      const losses: string[] = [];
      mgr.on('change', (id) => changes.push(id));
      mgr.on('lost', (id) => losses.push(id));
      return { mgr, changes, losses };
    },
  };
}

function statusOf(mgr: IdentityManager, id: SpiffeId): IdentityStatus {
  const s = mgr.status().find((x) => x.identity === id.toString());
  if (!s) throw new Error(`no status for ${id}`);
  return s;
}

/** Network round trips finish on real time: poll, with a bound. */
function until(cond: () => boolean, timeout = 10_000): Promise<void> {
  return vi.waitFor(() => expect(cond()).toBe(true), { timeout, interval: 5 });
}

async function tempStateDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-proxy-identity-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'state');
}

it('joins with a token, obtains the granted workload certificates, and marks a refused one failed while the others are fine', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB).grant(NODE, API);
  const { mgr, changes, losses } = await e.manager();
  mgr.setWorkloads([WEB, API, DB]);
  expect(mgr.ready()).toBe(false);
  expect(() => mgr.node()).toThrow(expect.objectContaining({ code: 'WARD_PROXY_IDENTITY_UNAVAILABLE' }));

  await mgr.start();
  expect(mgr.node().id.toString()).toBe(NODE.toString());
  await until(() => mgr.status().every((s) => s.state !== 'pending'));

  // Node first, then workloads sorted.
  expect(mgr.status().map((s) => [s.identity, s.state])).toEqual([
    [NODE.toString(), 'valid'],
    [API.toString(), 'valid'],
    [DB.toString(), 'failed'],
    [WEB.toString(), 'valid'],
  ]);
  const web = mgr.get(WEB.toString())!;
  const [leaf, ...intermediates] = parseCertificates(web.credentials.chainPem);
  expect(leaf.uris).toEqual([WEB.toString()]);
  expect(intermediates.length).toBeGreaterThan(0);
  expect(leaf.publicKeyDer.equals(web.credentials.key.publicKeyDer())).toBe(true);
  expect(web.serial).toBe(leaf.serialHex);
  expect(web.notAfter.getTime() - web.notBefore.getTime()).toBe(60 * MINUTE + 30_000); // the CA default, 30s backdated
  expect(mgr.get(NODE.toString())).toBe(mgr.node());
  expect(mgr.get(DB.toString())).toBeUndefined();
  expect(changes).toEqual(expect.arrayContaining([NODE.toString(), WEB.toString(), API.toString()]));
  expect(changes).toHaveLength(3);
  expect(mgr.ready()).toBe(false);

  // The refusal: logged at warn, kept as lastError, retried with backoff (0.5 × 1s with random 0.5).
  const db = statusOf(mgr, DB);
  expect(db.lastError).toMatch(/WARD_CA_FORBIDDEN/);
  expect(Date.parse(db.renewAt!)).toBe(e.clock.now() + 500);
  const warn = e.logs.records().find((r) => r.identity === DB.toString() && /refused this workload identity/.test(String(r.msg)));
  expect(warn?.level).toBe(40);
  expect(e.h.authorizer.asked).toContainEqual({ node: NODE.toString(), identity: DB.toString() });

  // The pool drops it: ready. Dropping a never-held identity is no loss; dropping a held one is.
  mgr.setWorkloads([WEB, API]);
  expect(mgr.ready()).toBe(true);
  expect(losses).toEqual([]);
  mgr.setWorkloads([WEB]);
  expect(losses).toEqual([API.toString()]);
  expect(mgr.get(API.toString())).toBeUndefined();
  mgr.setWorkloads([WEB]); // idempotent
  expect(changes).toHaveLength(3);

  // Keys were generated here and never logged.
  expect(e.logs.lines.join('')).not.toMatch(/PRIVATE KEY/);
  expect(JSON.stringify(mgr.status())).not.toMatch(/PRIVATE KEY/);
});

it('renews at half of the lifetime with a new serial and a change event (and saves the renewed node identity)', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const stateDir = await tempStateDir();
  const { mgr, changes } = await e.manager({ stateDir });
  await mgr.start();
  mgr.setWorkloads([WEB]);
  await until(() => mgr.ready());
  const node0 = mgr.node();
  const web0 = mgr.get(WEB.toString())!;
  const half = web0.notBefore.getTime() + (web0.notAfter.getTime() - web0.notBefore.getTime()) / 2;
  expect(Date.parse(statusOf(mgr, WEB).renewAt!)).toBe(half);
  expect(Date.parse(statusOf(mgr, NODE).renewAt!)).toBe(node0.notBefore.getTime() + (node0.notAfter.getTime() - node0.notBefore.getTime()) / 2);

  changes.length = 0;
  e.timers.advanceTo(half - 1);
  expect(mgr.status().map((s) => s.renewals)).toEqual([0, 0]);
  e.timers.advanceTo(half);
  await until(() => mgr.status().every((s) => s.renewals === 1));

  const web1 = mgr.get(WEB.toString())!;
  expect(web1.serial).not.toBe(web0.serial);
  expect(web1.context).not.toBe(web0.context);
  expect(web1.notBefore.getTime()).toBe(Math.floor((half - 30_000) / 1000) * 1000);
  expect(mgr.node().serial).not.toBe(node0.serial);
  expect(changes.sort()).toEqual([NODE.toString(), WEB.toString()].sort());
  expect(statusOf(mgr, WEB)).toMatchObject({ state: 'valid', serial: web1.serial, renewals: 1 });
  expect(statusOf(mgr, WEB).lastError).toBeUndefined();

  const saved = await readFile(join(stateDir, NODE_IDENTITY_FILE), 'utf8');
  expect(parseCertificates(splitKeyAndChain(saved).chainPem)[0].serialHex).toBe(mgr.node().serial);
});

it('jitters the renewal within 0.4..0.6 of the lifetime', async () => {
  const e = await env();
  for (const [r, fraction] of [[0, 0.4], [1, 0.6]] as const) {
    const { mgr } = await e.manager({ random: () => r });
    await mgr.start();
    const n = mgr.node();
    const life = n.notAfter.getTime() - n.notBefore.getTime();
    expect(Date.parse(statusOf(mgr, NODE).renewAt!)).toBe(n.notBefore.getTime() + Math.floor(life * fraction));
    await mgr.close();
  }
});

it('keeps serving the old certificate while the CA is down, retries with capped backoff, and renews once it is back', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const relay = await relayTo(e.h.port);
  const { mgr, changes } = await e.manager({ port: relay.port, backoff: { initialMs: 1_000, maxMs: 3_000 } });
  await mgr.start();
  mgr.setWorkloads([WEB]);
  await until(() => mgr.ready());
  const web0 = mgr.get(WEB.toString())!;
  const node0 = mgr.node();
  changes.length = 0;

  relay.mode = 'down';
  e.timers.advanceTo(Date.parse(statusOf(mgr, WEB).renewAt!));
  // Full jitter with random 0.5: 0.5 × min(3s, 1s·2^(n-1)) → 500, 1000, 1500 (capped), 1500.
  for (const delay of [500, 1_000, 1_500, 1_500]) {
    await until(() => [WEB, NODE].every((id) => Date.parse(statusOf(mgr, id).renewAt!) === e.clock.now() + delay));
    expect(mgr.get(WEB.toString())).toBe(web0);
    expect(mgr.node()).toBe(node0);
    expect(statusOf(mgr, WEB)).toMatchObject({ state: 'valid', serial: web0.serial, renewals: 0, lastError: expect.stringMatching(/WARD_CA_UNREACHABLE/) });
    expect(mgr.ready()).toBe(true);
    e.timers.advance(delay);
  }
  expect(changes).toEqual([]);
  expect(e.logs.records().some((r) => r.identity === WEB.toString() && /renewal failed; keeping the still-valid certificate/.test(String(r.msg)))).toBe(true);
  // Last advance fired the fifth attempt while still down; bring the CA back for the sixth.
  await until(() => Date.parse(statusOf(mgr, WEB).renewAt!) === e.clock.now() + 1_500);
  relay.mode = 'up';
  e.timers.advance(1_500);
  await until(() => mgr.status().every((s) => s.renewals === 1));
  expect(mgr.get(WEB.toString())!.serial).not.toBe(web0.serial);
  expect(mgr.node().serial).not.toBe(node0.serial);
  expect(statusOf(mgr, WEB).lastError).toBeUndefined();
  expect(changes.sort()).toEqual([NODE.toString(), WEB.toString()].sort());

  const metrics = await e.registry.getSingleMetricAsString('ward_proxy_certificate_renewals_total');
  expect(metrics).toContain('ward_proxy_certificate_renewals_total{result="failed"} 10');
  expect(metrics).toContain('ward_proxy_certificate_renewals_total{result="ok"} 3'); // web's first issuance, then both renewals
});

it('never lets a backoff step pass expiry without an attempt; a certificate that expires anyway is lost', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const relay = await relayTo(e.h.port);
  const { mgr, losses } = await e.manager({ port: relay.port, backoff: { initialMs: 60 * MINUTE, maxMs: 60 * MINUTE } });
  await mgr.start();
  mgr.setWorkloads([WEB]);
  await until(() => mgr.ready());
  const web0 = mgr.get(WEB.toString())!;

  relay.mode = 'down';
  e.timers.advanceTo(Date.parse(statusOf(mgr, WEB).renewAt!));
  await until(() => statusOf(mgr, WEB).lastError !== undefined);
  // The backoff would wait 30 minutes (0.5 × 1h); the certificate has ~30 left: the retry comes at half of that.
  const left = web0.notAfter.getTime() - e.clock.now();
  expect(Date.parse(statusOf(mgr, WEB).renewAt!)).toBe(e.clock.now() + Math.floor(left / 2));
  expect(mgr.get(WEB.toString())).toBe(web0);

  e.timers.advanceTo(web0.notAfter.getTime() - 1);
  expect(mgr.get(WEB.toString())).toBe(web0);
  expect(losses).toEqual([]);
  e.timers.advanceTo(web0.notAfter.getTime());
  expect(losses.sort()).toEqual([NODE.toString(), WEB.toString()].sort());
  expect(mgr.get(WEB.toString())).toBeUndefined();
  expect(() => mgr.node()).toThrow(expect.objectContaining({ code: 'WARD_PROXY_IDENTITY_UNAVAILABLE' }));
  expect(mgr.ready()).toBe(false);
  expect(statusOf(mgr, WEB)).toMatchObject({ state: 'expired', serial: web0.serial });
  expect(e.logs.records().some((r) => r.level === 50 && r.identity === WEB.toString() && /expired without renewal/.test(String(r.msg)))).toBe(true);
  // Attempts go on (the identity is still wanted).
  await until(() => statusOf(mgr, WEB).renewAt !== undefined && mgr.status().every((s) => Date.parse(s.renewAt!) > e.clock.now()));
});

it('saves the node identity (key file 0600, directory 0700) so a restarted proxy needs no token', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const stateDir = await tempStateDir();
  const first = await e.manager({ stateDir });
  await first.mgr.start();
  const node0 = first.mgr.node();
  const path = join(stateDir, NODE_IDENTITY_FILE);
  expect((await stat(path)).mode & 0o777).toBe(0o600);
  expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
  const saved = await readFile(path, 'utf8');
  expect(splitKeyAndChain(saved).key.publicKeyDer().length).toBeGreaterThan(0);
  expect(parseCertificates(splitKeyAndChain(saved).chainPem)[0].serialHex).toBe(node0.serial);
  await first.mgr.close();

  // Restart without a token: the saved identity is reused and works for mutual TLS with the CA.
  const second = await e.manager({ stateDir, joinToken: undefined });
  await second.mgr.start();
  expect(second.mgr.node().serial).toBe(node0.serial);
  second.mgr.setWorkloads([WEB]);
  await until(() => second.mgr.ready());
  await second.mgr.close();
  expect(await readdir(stateDir)).toEqual([NODE_IDENTITY_FILE]);

  // A key file others can read is not used.
  await chmod(path, 0o644);
  const third = await e.manager({ stateDir, joinToken: undefined });
  await expect(third.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/no join token was given.*readable by other users/) });

  // Garbage (or another CA's identity) is not used either; with a token the proxy joins afresh.
  await writeFile(path, 'not a certificate', { mode: 0o600 });
  await chmod(path, 0o600);
  const fourth = await e.manager({ stateDir, joinToken: undefined });
  await expect(fourth.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/not usable/) });
  const fifth = await e.manager({ stateDir });
  await fifth.mgr.start();
  expect(fifth.mgr.node().serial).not.toBe(node0.serial);
  expect((await stat(path)).mode & 0o777).toBe(0o600);

  // An expired saved identity is refused at load.
  await fifth.mgr.close();
  e.clock.set(fifth.mgr.node().notAfter.getTime() + 1);
  const sixth = await e.manager({ stateDir, joinToken: undefined });
  await expect(sixth.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/not usable.*expired|not usable.*valid/i) });
});

it('falls back to the join token when the CA refuses the saved node certificate as unauthenticated', async () => {
  const e = await env();
  const stateDir = await tempStateDir();
  const first = await e.manager({ stateDir });
  await first.mgr.start();
  const node0 = first.mgr.node();
  await first.mgr.close();

  // The CA's clock is past the saved certificate's expiry, the proxy's is just before it: the proxy
  // loads it as valid, renews at once (past half-life), and the CA answers 401.
  e.clock.set(node0.notAfter.getTime() + 1_000);
  const clock = new ManualClock(node0.notAfter.getTime() - 1);
  const timers = new FakeTimers(clock);
  const { mgr, changes } = await e.manager({ stateDir, clock, timers });
  await mgr.start();
  expect(mgr.node().serial).toBe(node0.serial);
  timers.advance(0);
  await until(() => statusOf(mgr, NODE).renewals === 1);
  expect(mgr.node().serial).not.toBe(node0.serial);
  expect(changes).toEqual([NODE.toString(), NODE.toString()]);
  expect(e.logs.records().some((r) => /joining again with the join token/.test(String(r.msg)))).toBe(true);
  const saved = await readFile(join(stateDir, NODE_IDENTITY_FILE), 'utf8');
  expect(parseCertificates(splitKeyAndChain(saved).chainPem)[0].serialHex).toBe(mgr.node().serial);
});

it('keeps the node certificate when the CA refuses to renew it (node removed), and retries', async () => {
  const e = await env();
  const { mgr } = await e.manager();
  await mgr.start();
  const node0 = mgr.node();
  e.h.authorizer.removeNode(NODE);
  await mgr.renewAll();
  expect(mgr.node()).toBe(node0);
  expect(statusOf(mgr, NODE)).toMatchObject({ state: 'valid', renewals: 0, lastError: expect.stringMatching(/WARD_CA_FORBIDDEN/) });
  expect(Date.parse(statusOf(mgr, NODE).renewAt!)).toBe(e.clock.now() + 500);
});

it('bounds issuance: at most 4 certificate requests in flight, the rest wait their turn', async () => {
  const e = await env();
  const relay = await relayTo(e.h.port);
  const ids = Array.from({ length: 10 }, (_, i) => SpiffeId.workload(TD, 'shop', `w${i}`));
  for (const id of ids) e.h.authorizer.grant(NODE, id);
  const { mgr } = await e.manager({ port: relay.port });
  await mgr.start();
  const accepted = relay.accepted;
  relay.mode = 'hang';
  mgr.setWorkloads(ids);
  await until(() => relay.accepted - accepted === 4);
  // Each request arms its 10 s deadline when it starts: exactly four have started.
  const deadlines = () => [...e.timers.pending.values()].filter((t) => t.at === e.clock.now() + 10_000).length;
  expect(deadlines()).toBe(4);
  expect(mgr.status().filter((s) => s.state === 'pending')).toHaveLength(10);
  // The hung four time out; the CA is back for everyone else.
  relay.mode = 'up';
  e.timers.advance(10_000);
  await until(() => mgr.status().every((s) => s.state !== 'pending'));
  expect(mgr.status().filter((s) => s.state === 'valid')).toHaveLength(7); // node + 6
  expect(mgr.status().filter((s) => s.state === 'failed')).toHaveLength(4);
  e.timers.advance(500);
  await until(() => mgr.ready());
});

it('start() fails with WARD_PROXY_JOIN_FAILED and says why: refused token, no token, another node\'s token, CA unreachable', async () => {
  const e = await env();
  const { token } = await e.h.tokens.create('n1');
  const ok = await e.manager({ joinToken: token });
  await ok.mgr.start();
  const reused = await e.manager({ joinToken: token });
  await expect(reused.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/refused the join token/) });

  const none = await e.manager({ joinToken: undefined });
  await expect(none.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/no join token was given/) });

  const other = await e.manager({ joinToken: (await e.h.tokens.create('n2')).token });
  await expect(other.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/ward\/node\/n2.*another node/) });

  const relay = await relayTo(e.h.port);
  relay.mode = 'down';
  const unused = (await e.h.tokens.create('n1')).token;
  const down = await e.manager({ port: relay.port, joinToken: unused });
  await expect(down.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/could not be reached/) });
  // start() may be tried again; the CA never saw that token, so it is still good.
  relay.mode = 'up';
  await down.mgr.start();
  expect(down.mgr.node().id.toString()).toBe(NODE.toString());
  // A token the CA has answered is never sent again.
  const asked = e.h.logs.lines.length;
  await expect(reused.mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/already answered a join with this token/) });
  expect(e.h.logs.lines.length).toBe(asked);
  expect(e.logs.lines.join('')).not.toContain(token);
});

it('verifies the CA (secure naming) and bounds the answer: an impostor or an oversized body fails the join', async () => {
  const e = await env();
  // A server with a valid mesh certificate that is not the CA's identity.
  const impostor = await credentialsFor(e.h.ca, WEB);
  // The real CA identity, answering far too much.
  const chatty = await credentialsFor(e.h.ca, SpiffeId.fromSegments(TD, 'ward', 'ca'));
  for (const [creds, expected] of [
    [impostor, /could not be reached or verified.*unexpected-identity/],
    [chatty, /exceeds 65536 bytes/],
  ] as const) {
    const server = createHttpsServer(meshServerOptions(creds, { requireClientCert: false }), (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ certificate: 'x'.repeat(70 * 1024) }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const { mgr } = await e.manager({ port: (server.address() as { port: number }).port });
    await expect(mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(expected) });
  }
});

it('times a CA request out after 10s, and close() cancels one in flight', async () => {
  const e = await env();
  const relay = await relayTo(e.h.port);
  relay.mode = 'hang';
  const slow = await e.manager({ port: relay.port });
  const started = slow.mgr.start();
  await until(() => e.timers.pending.size === 1 && relay.accepted === 1);
  e.timers.advance(9_999);
  e.timers.advance(1);
  await expect(started).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/no answer from the CA at 127\.0\.0\.1:\d+ within 10000 ms/) });
  expect(e.timers.pending.size).toBe(0);

  const closing = await e.manager({ port: relay.port });
  const p = closing.mgr.start();
  await until(() => e.timers.pending.size === 1 && relay.accepted === 2);
  await closing.mgr.close();
  await expect(p).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED' });
  expect(e.timers.pending.size).toBe(0);
});

it('setBundle rebuilds every held context with the new bundle and emits change; an equal bundle is ignored', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const { mgr, changes } = await e.manager();
  await mgr.start();
  mgr.setWorkloads([WEB]);
  await until(() => mgr.ready());
  const web0 = mgr.get(WEB.toString())!;
  changes.length = 0;

  mgr.setBundle(TrustBundle.fromPem(TD, e.h.bundle.toPem()));
  expect(changes).toEqual([]);
  expect(mgr.get(WEB.toString())).toBe(web0);

  const now = e.clock.now();
  const newRoot = createRoot({ key: PrivateKey.generate(), trustDomain: TD, commonName: 'next root', notBefore: new Date(now - MINUTE), notAfter: new Date(now + 24 * 60 * MINUTE) });
  const next = e.h.bundle.withRoot(newRoot);
  mgr.setBundle(next);
  expect(changes).toEqual([NODE.toString(), WEB.toString()]);
  expect(mgr.bundle()).toBe(next);
  const web1 = mgr.get(WEB.toString())!;
  expect(web1.context).not.toBe(web0.context);
  expect(web1.credentials.bundle).toBe(next);
  expect(web1.serial).toBe(web0.serial);
  expect(web1.credentials.key).toBe(web0.credentials.key);
  expect(mgr.node().credentials.bundle).toBe(next);

  const foreignRoot = createRoot({ key: PrivateKey.generate(), trustDomain: 'other.org', notBefore: new Date(now - MINUTE), notAfter: new Date(now + MINUTE * 60) });
  expect(() => mgr.setBundle(new TrustBundle('other.org', [foreignRoot]))).toThrow(expect.objectContaining({ code: 'WARD_PKI_BUNDLE_INVALID' }));
});

it('the secure contexts work in a real mutual-TLS handshake: SNI picks the workload certificate, both sides verify', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB).grant(NODE, API);
  const { mgr } = await e.manager();
  await mgr.start();
  mgr.setWorkloads([WEB, API]);
  await until(() => mgr.ready());

  const server = createTlsServer({
    SNICallback: (name, cb) => {
      const held = mgr.get(SpiffeId.workload(TD, 'shop', name).toString());
      cb(held ? null : new Error(`no identity for ${name}`), held?.context);
    },
    requestCert: true,
    rejectUnauthorized: true,
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    socket.on('error', () => undefined);
    socket.end(String(peerIdentity(socket, { trustDomain: TD })));
  });
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as { port: number }).port;

  const handshake = async (source: SpiffeId, sni: string, expected: SpiffeId): Promise<{ peer: string; heard: string }> => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      servername: sni,
      secureContext: mgr.get(source.toString())!.context,
      rejectUnauthorized: true,
      checkServerIdentity: meshClientOptions({ bundle: mgr.bundle(), expectedId: expected }).checkServerIdentity,
    });
    onTestFinished(() => void socket.destroy());
    await once(socket, 'secureConnect');
    expect(socket.getProtocol()).toBe('TLSv1.3');
    const peer = parseCertificates(`-----BEGIN CERTIFICATE-----\n${socket.getPeerCertificate().raw.toString('base64')}\n-----END CERTIFICATE-----\n`)[0].uris[0];
    let heard = '';
    for await (const chunk of socket) heard += String(chunk);
    return { peer, heard };
  };
  expect(await handshake(API, 'web', WEB)).toEqual({ peer: WEB.toString(), heard: API.toString() });
  expect(await handshake(WEB, 'api', API)).toEqual({ peer: API.toString(), heard: WEB.toString() });
  // Secure naming: expecting api while the server presents web fails the handshake.
  await expect(handshake(API, 'web', API)).rejects.toThrow(/unexpected-identity/);

  // After a renewal and a bundle update, the new contexts work too.
  await mgr.renewAll();
  mgr.setBundle(mgr.bundle().withRoot(createRoot({ key: PrivateKey.generate(), trustDomain: TD, notBefore: new Date(e.clock.now() - MINUTE), notAfter: new Date(e.clock.now() + 60 * MINUTE) })));
  expect(await handshake(API, 'web', WEB)).toEqual({ peer: WEB.toString(), heard: API.toString() });
});

it('renewAll renews every held certificate now, and reports it in status and metrics', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const stateDir = await tempStateDir();
  const { mgr, changes } = await e.manager({ stateDir, ttl: '2h' });
  await mgr.start();
  mgr.setWorkloads([WEB]);
  await until(() => mgr.ready());
  const before = mgr.status();
  changes.length = 0;

  await mgr.renewAll();
  const after = mgr.status();
  expect(after.map((s) => s.renewals)).toEqual([1, 1]);
  expect(after[0].serial).not.toBe(before[0].serial);
  expect(after[1].serial).not.toBe(before[1].serial);
  expect(changes.sort()).toEqual([NODE.toString(), WEB.toString()].sort());
  const web = mgr.get(WEB.toString())!;
  expect(web.notAfter.getTime() - web.notBefore.getTime()).toBe(120 * MINUTE + 30_000); // ttl honoured
  const saved = await readFile(join(stateDir, NODE_IDENTITY_FILE), 'utf8');
  expect(parseCertificates(splitKeyAndChain(saved).chainPem)[0].serialHex).toBe(mgr.node().serial);

  const gauge = await e.registry.getSingleMetricAsString('ward_proxy_certificate_expiry_timestamp_seconds');
  expect(gauge).toContain(`ward_proxy_certificate_expiry_timestamp_seconds{identity="${WEB}"} ${web.notAfter.getTime() / 1000}`);
  expect(gauge).toContain(`ward_proxy_certificate_expiry_timestamp_seconds{identity="${NODE}"} ${mgr.node().notAfter.getTime() / 1000}`);
  expect(await e.registry.getSingleMetricAsString('ward_proxy_certificate_renewals_total')).toContain('ward_proxy_certificate_renewals_total{result="ok"} 3');
  // Dropping the workload removes its series (label values stay bounded by the node's workloads).
  mgr.setWorkloads([]);
  expect(await e.registry.getSingleMetricAsString('ward_proxy_certificate_expiry_timestamp_seconds')).not.toContain(WEB.toString());
});

it('close() cancels every timer, is idempotent, and leaves a manager that does nothing more', async () => {
  const e = await env();
  e.h.authorizer.grant(NODE, WEB);
  const { mgr } = await e.manager();
  await mgr.start();
  mgr.setWorkloads([WEB, DB]);
  await until(() => mgr.status().every((s) => s.state !== 'pending'));
  expect(e.timers.pending.size).toBeGreaterThan(0);

  const closed = mgr.close();
  expect(mgr.close()).toBe(closed);
  await closed;
  expect(e.timers.pending.size).toBe(0);
  mgr.setWorkloads([API]);
  await mgr.renewAll();
  expect(e.timers.pending.size).toBe(0);
  await expect(mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED' });
});

it('refuses invalid options at construction', async () => {
  const e = await env();
  const base = { trustDomain: TD, node: 'n1', bundle: e.h.bundle, logger: e.logs.logger };
  for (const bad of [
    { caUrl: 'http://127.0.0.1:1' },
    { caUrl: 'not a url' },
    { caUrl: 'https://127.0.0.1:1', ttl: '1m' },
    { caUrl: 'https://127.0.0.1:1', node: 'a/b' },
    { caUrl: 'https://127.0.0.1:1', trustDomain: 'other.org' },
    { caUrl: 'https://127.0.0.1:1', backoff: { initialMs: 10, maxMs: 1 } },
  ]) {
    expect(() => new IdentityManager({ ...base, ...bad })).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
  }
});

it('joins as the mesh ingress with an ingress token (identity option) and renews that identity', async () => {
  const e = await env();
  const ingress = SpiffeId.ingress(TD);
  const { mgr } = await e.manager({ identity: ingress.toString(), node: 'ingress', joinToken: (await e.h.tokens.createForIngress()).token });
  await mgr.start();
  const first = mgr.node();
  expect(first.id.toString()).toBe(ingress.toString());
  expect(parseCertificates(first.credentials.chainPem)[0].uris).toEqual([ingress.toString()]);
  await mgr.renewAll();
  expect(mgr.node().serial).not.toBe(first.serial);
  expect(mgr.node().id.toString()).toBe(ingress.toString());
  expect(e.h.authorizer.asked).toEqual([]);
});

// --- Kubernetes mode: joining with the projected ServiceAccount token ----------------------------

/** What the stub CA saw on POST /v1/join. */
interface SeenJoin {
  serviceAccountToken?: unknown;
  token?: unknown;
  node?: unknown;
}

/**
 * A stand-in for the CA's mesh API in Kubernetes mode (the real route with a stub attestor is
 * tested in ca/server-attest.test.ts): it presents spiffe://TD/ward/ca, records every join body,
 * answers a join with `refuse` when set, else issues `grant` from the harness CA; renewals
 * (/v1/issue) are answered 401, as the CA does for a lapsed node certificate.
 */
async function attestingCa(e: Env, grant: SpiffeId = NODE): Promise<{ port: number; joins: SeenJoin[]; refuse?: { status: number; code: string } }> {
  const creds = await credentialsFor(e.h.ca, SpiffeId.fromSegments(TD, 'ward', 'ca'));
  const stub: { port: number; joins: SeenJoin[]; refuse?: { status: number; code: string } } = { port: 0, joins: [] };
  const reply = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const server = createHttpsServer(meshServerOptions(creds, { requireClientCert: false }), (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as SeenJoin & { csr: string };
      if (req.url !== '/v1/join') return reply(res, 401, { error: { code: 'WARD_PKI_SVID_INVALID', message: 'x' } });
      stub.joins.push({ serviceAccountToken: body.serviceAccountToken, token: body.token, node: body.node });
      if (stub.refuse) return reply(res, stub.refuse.status, { error: { code: stub.refuse.code, message: 'refused' } });
      e.h.ca.issue({ csr: body.csr, identity: grant, requester: 'stub' }).then(
        (issued) => reply(res, 200, { id: grant.toString(), certificate: issued.chainPem, bundle: e.h.bundle.toPem() }),
        (err: Error) => reply(res, 500, { error: { code: 'WARD_CA_INTERNAL', message: err.message } }),
      );
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
  stub.port = (server.address() as { port: number }).port;
  return stub;
}

async function tokenFile(content: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-proxy-sa-token-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'token');
  await writeFile(file, content);
  return file;
}

const SA_TOKEN_1 = 'eyJhbGciOiJSUzI1NiJ9.c2VydmljZS1hY2NvdW50LTE.c2lnLTE';
const SA_TOKEN_2 = 'eyJhbGciOiJSUzI1NiJ9.c2VydmljZS1hY2NvdW50LTI.c2lnLTI';

it('joins with the ServiceAccount token file, re-reads it at every join, and rejoins with it (not one-time)', async () => {
  const e = await env();
  const ca = await attestingCa(e);
  const file = await tokenFile(`${SA_TOKEN_1}\n`);
  const stateDir = await tempStateDir();
  const { mgr } = await e.manager({ port: ca.port, joinToken: undefined, serviceAccountTokenFile: file, stateDir });
  await mgr.start();
  const first = mgr.node();
  expect(first.id.toString()).toBe(NODE.toString());
  // Trimmed, with the node name; no join token.
  expect(ca.joins).toEqual([{ serviceAccountToken: SA_TOKEN_1, node: 'n1' }]);

  // The kubelet rotated the token; the node certificate is no longer accepted (401): the manager
  // joins again, with the file's new content.
  await writeFile(file, SA_TOKEN_2);
  await mgr.renewAll();
  expect(ca.joins).toEqual([{ serviceAccountToken: SA_TOKEN_1, node: 'n1' }, { serviceAccountToken: SA_TOKEN_2, node: 'n1' }]);
  expect(mgr.node().serial).not.toBe(first.serial);
  expect(statusOf(mgr, NODE)).toMatchObject({ state: 'valid', renewals: 1 });
  expect(e.logs.records().some((r) => /joining again with the ServiceAccount token/.test(String(r.msg)))).toBe(true);
  // And again: nothing is "spent".
  await mgr.renewAll();
  expect(ca.joins).toHaveLength(3);
  await mgr.close();

  // A restart with the state directory needs no token: the file is not even read.
  await rm(file);
  const again = await e.manager({ port: ca.port, joinToken: undefined, serviceAccountTokenFile: file, stateDir });
  await again.mgr.start();
  expect(again.mgr.node().serial).toBe(mgr.node().serial);
  expect(ca.joins).toHaveLength(3);
  expect(e.logs.lines.join('')).not.toContain(SA_TOKEN_1);
  expect(e.logs.lines.join('')).not.toContain(SA_TOKEN_2);
});

it('after a refused ServiceAccount-token join, start() may be called again and reads the file again', async () => {
  const e = await env();
  const ca = await attestingCa(e);
  ca.refuse = { status: 401, code: 'WARD_CA_TOKEN_INVALID' };
  const file = await tokenFile(SA_TOKEN_1);
  const { mgr } = await e.manager({ port: ca.port, joinToken: undefined, serviceAccountTokenFile: file });
  await expect(mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(/did not accept the ServiceAccount token in .*token.*audience "ward"/) });
  ca.refuse = undefined;
  await writeFile(file, SA_TOKEN_2);
  await mgr.start();
  expect(mgr.node().id.toString()).toBe(NODE.toString());
  expect(ca.joins.map((j) => j.serviceAccountToken)).toEqual([SA_TOKEN_1, SA_TOKEN_2]);
});

it.each([
  [403, 'WARD_CA_FORBIDDEN', /refused this pod \(it must be a Running ward-proxy pod on this node/],
  [400, 'WARD_CA_JOIN_UNSUPPORTED', /does not accept ServiceAccount tokens \(it does not run in Kubernetes mode\)/],
  [503, 'WARD_CA_UNAVAILABLE', /could not check the ServiceAccount token with the Kubernetes API/],
])('explains a %i %s answer to a ServiceAccount-token join', async (status, code, expected) => {
  const e = await env();
  const ca = await attestingCa(e);
  ca.refuse = { status, code };
  const { mgr } = await e.manager({ port: ca.port, joinToken: undefined, serviceAccountTokenFile: await tokenFile(SA_TOKEN_1) });
  await expect(mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(expected) });
});

it('fails a ServiceAccount-token join clearly when the file is missing, empty or too large (nothing sent)', async () => {
  const e = await env();
  const ca = await attestingCa(e);
  const empty = await tokenFile(' \n');
  const large = await tokenFile('x'.repeat(16 * 1024 + 1));
  for (const [file, expected] of [
    [join(tmpdir(), 'ward-no-such-dir', 'token'), /cannot read the ServiceAccount token file .*ENOENT/],
    [empty, /the ServiceAccount token file .* is empty/],
    [large, /larger than 16384 bytes/],
  ] as const) {
    const { mgr } = await e.manager({ port: ca.port, joinToken: undefined, serviceAccountTokenFile: file });
    await expect(mgr.start()).rejects.toMatchObject({ code: 'WARD_PROXY_JOIN_FAILED', message: expect.stringMatching(expected) });
  }
  expect(ca.joins).toEqual([]);
});

it('refuses a join token together with a ServiceAccount token file, or an empty file name', async () => {
  const e = await env();
  const base = { caUrl: 'https://127.0.0.1:1', trustDomain: TD, node: 'n1', bundle: e.h.bundle, logger: e.logs.logger };
  expect(() => new IdentityManager({ ...base, joinToken: 't', serviceAccountTokenFile: '/var/run/secrets/ward/token' })).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
  expect(() => new IdentityManager({ ...base, serviceAccountTokenFile: '' })).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
});

it('joins as the ingress with a ServiceAccount token, naming no node', async () => {
  const e = await env();
  const ingress = SpiffeId.ingress(TD);
  const ca = await attestingCa(e, ingress);
  const { mgr } = await e.manager({ port: ca.port, identity: ingress.toString(), node: 'ingress', joinToken: undefined, serviceAccountTokenFile: await tokenFile(SA_TOKEN_1) });
  await mgr.start();
  expect(mgr.node().id.toString()).toBe(ingress.toString());
  expect(ca.joins).toEqual([{ serviceAccountToken: SA_TOKEN_1 }]);
});
