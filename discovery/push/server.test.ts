/**
 * DiscoveryServer on real TLS 1.3 sockets at 127.0.0.1:0, with certificates minted per run from a
 * hand-built hierarchy (discovery must not import ca/, tests included). Clients are a minimal
 * NDJSON reader over https.request with meshClientOptions, applying frames with applyFrame exactly
 * as a real client would (so a wrong delta base fails the test).
 */
import { request } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { ManualClock } from '../../core/clock.js';
import { SpiffeId } from '../../core/identity/index.js';
import { silentLogger } from '../../core/logger.js';
import { createRegistry, type Registry } from '../../core/metrics.js';
import { applyFrame, parseFrame, type Frame, type ServiceEndpoints, type ViewState } from '../../core/protocol/index.js';
import { meshClientOptions, type Credentials } from '../../core/tls/index.js';
import type { MeshModel } from '../model.js';
import { DiscoveryServer } from './server.js';
import { MeshState } from './state.js';
import { mintPki } from '../../test/helpers/pki.js';
import { editedExample, exampleModel, type Doc } from '../../test/helpers/mesh.js';

const TD = 'cluster.local';
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';
const SERVER_ID = DiscoveryServer.serverId(TD);
const INGRESS_ID = SpiffeId.workload(TD, 'ward-system', 'ward-ingress');
const GRACE_MS = 30_000;
const WAIT = { timeout: 10_000, interval: 5 };

const base = exampleModel;


const PKI = mintPki(TD);
const OTHER_CA = mintPki(TD);
const node = (n: string) => PKI.credentials(SpiffeId.node(TD, n));

async function setup(o: { historyLimit?: number; model?: MeshModel } = {}) {
  const clock = new ManualClock(Date.now());
  const registry = createRegistry();
  const state = new MeshState({ model: o.model ?? base, clock, graceMs: GRACE_MS, autoTick: false, historyLimit: o.historyLimit });
  const server = new DiscoveryServer({ state, credentials: PKI.credentials(SERVER_ID), clock, logger: silentLogger(), registry });
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  onTestFinished(async () => {
    await server.close();
    state.close();
  });
  return { clock, registry, state, server, port };
}

/** A discovery client: every frame it received, and the state it holds after applying them. */
class StreamClient {
  readonly frames: Frame[] = [];
  state: ViewState | undefined;
  res?: IncomingMessage;
  error?: Error;
  status?: number;
  ended = false;
  #req;
  #parts: string[] = [];

  constructor(port: number, creds: Credentials | undefined, o: { resume?: number; tls?: Record<string, unknown> } = {}) {
    const q = o.resume ? `?resume=${o.resume}` : '';
    this.#req = request({
      host: '127.0.0.1',
      port,
      path: `/v1/stream${q}`,
      method: 'GET',
      agent: false,
      ...meshClientOptions({ bundle: PKI.bundle, expectedId: SERVER_ID, ...(creds ? { creds } : {}) }),
      ...o.tls,
    });
    this.#req.on('error', (err) => (this.error = err));
    this.#req.on('response', (res) => {
      this.res = res;
      this.status = res.statusCode;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => this.#onData(chunk));
      res.on('end', () => (this.ended = true));
      res.on('error', (err) => (this.error = err));
    });
    this.#req.end();
    onTestFinished(() => void this.#req.destroy());
  }

  #onData(chunk: string): void {
    if (this.status !== 200) return;
    // Only the new chunk is searched for line ends: frames can be megabytes long.
    let start = 0;
    let nl: number;
    while ((nl = chunk.indexOf('\n', start)) >= 0) {
      this.#parts.push(chunk.slice(start, nl));
      const frame = parseFrame(this.#parts.join(''));
      this.#parts = [];
      start = nl + 1;
      this.frames.push(frame);
      this.state = applyFrame(this.state, frame);
    }
    if (start < chunk.length) this.#parts.push(chunk.slice(start));
  }

  close(): void {
    this.#req.destroy();
  }

  endpoints(key: string): string[] {
    const r = this.state?.resources.get(`endpoints ${key}`);
    return r ? (r.value as ServiceEndpoints).endpoints.map((e) => e.workload) : [];
  }

  ids(prefix = ''): string[] {
    return [...(this.state?.resources.keys() ?? [])].filter((k) => k.startsWith(prefix)).sort();
  }
}

async function ack(port: number, creds: Credentials, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const text = JSON.stringify(body);
    const req = request({
      host: '127.0.0.1',
      port,
      path: '/v1/ack',
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
      ...meshClientOptions({ bundle: PKI.bundle, expectedId: SERVER_ID, creds }),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.end(text);
  });
}

/** POSTs a raw body (or JSON) to a route; resolves with the status and the response body. */
async function post(port: number, creds: Credentials, path: string, body: unknown, o: { chunked?: boolean } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const req = request({
      host: '127.0.0.1',
      port,
      path,
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', ...(o.chunked ? {} : { 'content-length': Buffer.byteLength(text) }) },
      ...meshClientOptions({ bundle: PKI.bundle, expectedId: SERVER_ID, creds }),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (data += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: data }));
    });
    req.end(text);
  });
}

async function metric(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getSingleMetric(name)?.get())?.values ?? [];
  return m.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}

const synced = (c: StreamClient, state: MeshState) => vi.waitFor(() => expect(c.state?.version).toBe(state.version), WAIT);

describe('DiscoveryServer', () => {
  it('sends a snapshot on connect, a delta to every client on a model change, and per-node views', async () => {
    const { state, port, server, registry } = await setup();
    state.setBundle(PKI.bundle.toPem(), 1);
    const a = new StreamClient(port, node('node-a'));
    const b = new StreamClient(port, node('node-b'));
    const ing = new StreamClient(port, PKI.credentials(INGRESS_ID));
    for (const c of [a, b, ing]) await synced(c, state);
    expect(a.frames[0].type).toBe('snapshot');
    expect(a.ids('workload')).toEqual(['workload shop/api-1', 'workload shop/web-1']);
    expect(b.ids('workload')).toEqual(['workload shop/api-2', 'workload shop/web-2']);
    expect(ing.ids('workload')).toEqual([]);
    expect(ing.ids('route')).toEqual(['route shop.localhost']);
    expect(a.ids('route')).toEqual([]);
    expect(a.ids('bundle')).toEqual(['bundle cluster.local']);

    // The web service gets a second port: every client's view of web.shop changes.
    const before = state.version;
    state.setModel(editedExample((d) => d.services[0].ports.push({ name: 'alt', port: 81, targetPort: 8080, protocol: 'http' })));
    for (const c of [a, b, ing]) {
      await synced(c, state);
      const last = c.frames.at(-1)!;
      expect(last).toMatchObject({ type: 'delta', base: before, version: state.version });
      expect((c.state!.resources.get('endpoints web.shop')!.value as ServiceEndpoints).ports.map((p) => p.port)).toEqual([80, 81]);
    }
    expect(server.status().clients.map((c) => c.node ?? c.identity).sort()).toEqual(['node-a', 'node-b', INGRESS_ID.toString()].sort());
    expect(await metric(registry, 'ward_discovery_connected_clients')).toBe(3);
    expect(await metric(registry, 'ward_discovery_version')).toBe(state.version);
    expect(await metric(registry, 'ward_discovery_pushes_total', { type: 'delta' })).toBeGreaterThanOrEqual(3);
  });

  it('publishes endpoints only after the node connected and the identity was issued; withdraws them after the grace period', async () => {
    const { state, port, clock, server } = await setup();
    const ing = new StreamClient(port, PKI.credentials(INGRESS_ID));
    await synced(ing, state);
    expect(ing.endpoints('web.shop')).toEqual([]);
    state.markIssued(WEB); // issued, but node-a not connected
    await synced(ing, state);
    expect(ing.endpoints('web.shop')).toEqual([]);
    const a = new StreamClient(port, node('node-a'));
    await synced(a, state);
    await synced(ing, state);
    expect(ing.endpoints('web.shop')).toEqual(['shop/web-1']);
    expect(ing.endpoints('api.shop')).toEqual([]); // api not issued

    a.close();
    await vi.waitFor(() => expect(server.status().clients.some((c) => c.node === 'node-a')).toBe(false), WAIT);
    expect(state.isConnected('node-a')).toBe(false);
    clock.advance(GRACE_MS - 1);
    state.tick();
    expect(state.isPublished('node-a')).toBe(true);
    expect(ing.endpoints('web.shop')).toEqual(['shop/web-1']);
    clock.advance(1);
    state.tick();
    await synced(ing, state);
    expect(ing.endpoints('web.shop')).toEqual([]);
  });

  it('resume: a covered version gets only the delta; one older than the history gets a snapshot', async () => {
    const { state, port } = await setup({ historyLimit: 3 });
    const creds = node('node-a');
    const first = new StreamClient(port, creds);
    await synced(first, state);
    const held = first.state!;
    first.close();
    await vi.waitFor(() => expect(state.isConnected('node-a')).toBe(false), WAIT);
    state.markIssued(API); // api-1 on node-a is still published (grace): a change node-a sees

    const resumed = new StreamClient(port, creds, { resume: held.version });
    // Seed the reader with what the client held, as a resuming client would.
    resumed.state = held;
    await synced(resumed, state);
    expect(resumed.frames[0]).toMatchObject({ type: 'delta', base: held.version });
    expect((resumed.frames[0] as { upserts: unknown[] }).upserts.length).toBeLessThan(held.resources.size);
    expect(resumed.endpoints('api.shop')).toEqual(['shop/api-1']);
    resumed.close();

    for (let i = 1; i <= 4; i++) state.setBundle(`PEM ${i}`, i); // pushes `held` out of the history
    const stale = new StreamClient(port, creds, { resume: held.version });
    await synced(stale, state);
    expect(stale.frames[0].type).toBe('snapshot');
    const unknown = new StreamClient(port, creds, { resume: state.version + 100 });
    await synced(unknown, state);
    expect(unknown.frames[0].type).toBe('snapshot');
  });

  it('a NACK is counted and logged; later versions still flow, and ACKs are recorded', async () => {
    const { state, port, server, registry } = await setup();
    const creds = node('node-a');
    const a = new StreamClient(port, creds);
    await synced(a, state);
    expect(await ack(port, creds, { version: state.version, ok: true })).toBe(204);
    expect(server.status().clients[0].ackedVersion).toBe(state.version);
    expect(await ack(port, creds, { version: state.version, ok: false, error: 'bad policy' })).toBe(204);
    expect(await metric(registry, 'ward_discovery_nacks_total')).toBe(1);
    expect(server.status().clients[0].nacks).toBe(1);
    state.setBundle('PEM', 7);
    await synced(a, state);
    expect(a.state!.resources.get('bundle cluster.local')!.value).toMatchObject({ sequence: 7 });
    expect(await ack(port, creds, { version: 'x', ok: true })).toBe(400);
    expect(await ack(port, PKI.credentials(SpiffeId.workload(TD, 'shop', 'web')), { version: 1, ok: true })).toBe(403);
  });

  it('refuses a client without a certificate, with another CA, a workload identity, or an undeclared node', async () => {
    const { port, registry, server } = await setup();
    const noCert = new StreamClient(port, undefined);
    const foreign = OTHER_CA.credentials(SpiffeId.node(TD, 'node-a'));
    const otherCa = new StreamClient(port, undefined, { tls: { cert: foreign.chainPem, key: foreign.key.keyObject.export({ format: 'pem', type: 'pkcs8' }) } });
    const workload = new StreamClient(port, PKI.credentials(SpiffeId.workload(TD, 'shop', 'web')));
    const stranger = new StreamClient(port, node('node-z'));
    await vi.waitFor(() => {
      expect(noCert.error ?? noCert.status).toBeInstanceOf(Error);
      expect(otherCa.error ?? otherCa.status).toBeInstanceOf(Error);
      expect(workload.status).toBe(403);
      expect(stranger.status).toBe(403);
    }, WAIT);
    for (const c of [noCert, otherCa, workload, stranger]) expect(c.frames).toEqual([]);
    expect(await metric(registry, 'ward_discovery_refused_total', { reason: 'forbidden' })).toBe(2);
    await vi.waitFor(async () => expect(await metric(registry, 'ward_discovery_refused_total', { reason: 'tls' })).toBe(2), WAIT);
    expect(server.status().clients).toEqual([]);
  });

  it('a slow client blocks no one, holds no queue, and gets one coalesced delta when it reads again', async () => {
    const { state, port, server } = await setup();
    const slow = new StreamClient(port, node('node-a'));
    const fast = new StreamClient(port, PKI.credentials(INGRESS_ID));
    await synced(slow, state);
    await synced(fast, state);
    slow.res!.pause();
    const big = 'x'.repeat(1024 * 1024);
    const session = () => server.status().clients.find((c) => c.node === 'node-a')!;
    let i = 0;
    while (!session().stalled && i < 200) {
      state.setBundle(big + i, ++i);
      await new Promise((r) => setImmediate(r));
    }
    expect(session().stalled).toBe(true);
    const framesAtStall = slow.frames.length;
    // Many more versions while it is stalled: the fast client follows every one, the slow session
    // does not grow (at most the one frame handed to the socket when it filled up).
    for (let j = 0; j < 30; j++) {
      state.setBundle(big + `more ${j}`, ++i);
      await synced(fast, state);
    }
    expect(session().stalled).toBe(true);
    expect(session().bufferedBytes).toBeLessThan(2 * big.length + 4096);
    const latest = state.version;

    slow.res!.resume();
    await synced(slow, state);
    expect(slow.state!.version).toBe(latest);
    const after = slow.frames.slice(framesAtStall);
    // What was in flight when it stalled, then ONE delta straight to the latest version.
    const coalesced = after.filter((f) => f.type === 'delta' && f.version === latest);
    expect(coalesced).toHaveLength(1);
    expect(after.length).toBeLessThan(10);
    expect((slow.state!.resources.get('bundle cluster.local')!.value as { sequence: number }).sequence).toBe(i);
    expect(session().stalled).toBe(false);
  });

  it('sends heartbeats on an idle stream, at the version the client holds', async () => {
    const { state, port, server, clock } = await setup();
    const a = new StreamClient(port, node('node-a'));
    await synced(a, state);
    const n = a.frames.length;
    server.heartbeat(); // not idle yet
    clock.advance(15_000);
    server.heartbeat();
    await vi.waitFor(() => expect(a.frames.length).toBe(n + 1), WAIT);
    expect(a.frames.at(-1)).toEqual({ type: 'heartbeat', version: state.version });
  });

  it('ends a stream whose client certificate expires while it is open (OpenSSL checked it at the handshake only)', async () => {
    const { state, port, server, clock } = await setup();
    const a = new StreamClient(port, node('node-a'));
    await synced(a, state);
    clock.advance(3_500_000); // still valid: the leaves live one hour
    server.heartbeat();
    expect(server.status().clients).toHaveLength(1);
    clock.advance(200_000); // past NotAfter
    server.heartbeat();
    await vi.waitFor(() => expect(a.ended).toBe(true), WAIT);
    expect(server.status().clients).toHaveLength(0);
  });

  it('ends the stream of a node removed from the model, and close() ends every stream (idempotent)', async () => {
    const { state, port, server } = await setup();
    const a = new StreamClient(port, node('node-a'));
    const b = new StreamClient(port, node('node-b'));
    await synced(a, state);
    await synced(b, state);
    state.setModel(editedExample((d) => {
      d.nodes.pop();
      d.workloads = d.workloads.filter((w: Doc) => w.node !== 'node-b');
    }));
    await vi.waitFor(() => expect(b.ended).toBe(true), WAIT);
    expect(server.status().clients.map((c) => c.node)).toEqual(['node-a']);
    await Promise.all([server.close(), server.close()]);
    await vi.waitFor(() => expect(a.ended || a.error !== undefined).toBe(true), WAIT);
  });
  it('POST /v1/health: a node\'s report is accepted and shows in meshStatus(); another node\'s workload is refused (403) and counted', async () => {
    const { state, port, server, registry } = await setup();
    const creds = node('node-a');
    const a = new StreamClient(port, creds);
    await synced(a, state);
    expect((await ack(port, creds, { version: state.version, ok: true }))).toBe(204);
    const notAfter = new Date(Date.now() + 3_600_000).toISOString();
    const report = {
      node: 'node-a',
      ejected: [{ address: '127.0.10.2:15008', service: 'api.shop', workload: 'shop/api-2' }],
      localWorkloads: [{ workload: 'shop/web-1', healthy: true }, { workload: 'shop/api-1', healthy: true }],
      certificates: [{ identity: 'spiffe://cluster.local/ward/node/node-a', notAfter }, { identity: WEB, notAfter }, { identity: API, notAfter }],
    };
    expect((await post(port, creds, '/v1/health', report)).status).toBe(204);
    const s = server.meshStatus();
    expect(s.version).toBe(state.version);
    expect(s.clients).toMatchObject([{ identity: 'spiffe://cluster.local/ward/node/node-a', node: 'node-a', connected: true, ackedVersion: state.version }]);
    expect(s.nodes.map((n) => [n.name, n.connected, n.soonestExpiry])).toEqual([['node-a', true, notAfter], ['node-b', false, undefined]]);
    expect(s.workloads.find((w) => w.name === 'web-1')).toMatchObject({ healthy: true, certificateNotAfter: notAfter });
    expect(s.services.find((x) => x.name === 'api')!.endpoints).toEqual({ total: 2, healthy: 1, ejected: 1 });

    // node-a speaking for node-b's workload: refused whole, nothing of it kept.
    const foreign = await post(port, creds, '/v1/health', { ...report, localWorkloads: [{ workload: 'shop/web-2', healthy: false }] });
    expect(foreign.status).toBe(403);
    expect(JSON.parse(foreign.body).error.message).toContain('shop/web-2');
    expect(await metric(registry, 'ward_discovery_refused_total', { reason: 'foreign-workload' })).toBe(1);
    expect(server.meshStatus().workloads.find((w) => w.name === 'web-2')!.healthy).toBeUndefined();
    expect(server.meshStatus().workloads.find((w) => w.name === 'web-1')!.healthy).toBe(true);
    // Not a discovery client at all: 403 before the body is read.
    expect((await post(port, PKI.credentials(SpiffeId.workload(TD, 'shop', 'web')), '/v1/health', report)).status).toBe(403);
  });

  it('POST /v1/health: malformed bodies get 400, oversized ones 413', async () => {
    const { port } = await setup();
    const creds = node('node-b');
    expect((await post(port, creds, '/v1/health', '{not json')).status).toBe(400);
    expect((await post(port, creds, '/v1/health', { ejected: [], localWorkloads: 'x', certificates: [] })).status).toBe(400);
    const big = { ejected: [], localWorkloads: [{ workload: 'shop/web-2', healthy: false, reason: 'x'.repeat(300 * 1024) }], certificates: [] };
    expect((await post(port, creds, '/v1/health', big)).status).toBe(413);
    // Without a content-length (chunked), the body is cut off once it passes the limit.
    expect((await post(port, creds, '/v1/health', JSON.stringify(big), { chunked: true })).status).toBe(413);
    expect((await post(port, creds, '/v1/health', { ejected: [], localWorkloads: [{ workload: 'shop/web-2', healthy: true }], certificates: [] })).status).toBe(204);
  });
});
