/**
 * Issue 4's resilience proofs for the node proxy, on real processes (test/helpers/proxy-mesh): a
 * `ward control` and one `ward proxy` per node on a private loopback block, in-process echo apps.
 *
 *   1. an endpoint's node killed mid-load (SIGKILL of its proxy) → no failed idempotent request,
 *      the dead endpoint ejected (state, metrics, the pool's status); then an app stopped behind
 *      its live proxy
 *   2. control plane killed → traffic and deny rules keep working; ward.yaml edited while it is
 *      down; restarted → the proxies reconverge without a restart
 *   3. certificates renewed many times under load, then an intermediate CA rotation → zero failures
 *   4. a proxy stopped with SIGTERM and restarted without a token (saved node identity)
 *   5. SIGTERM with a slow request in flight → it completes, then the processes exit 0
 *
 * Routing, policies and refusals are covered by proxy.test.ts.
 *
 * A mesh of real processes takes seconds to start, so each describe starts one (beforeAll) and its
 * tests run on it in order, each leaving it serving for the next (the last may stop it): a test
 * starts by checking what it needs, so a failure upstream shows there rather than as a puzzle.
 *
 * Load is bounded in count and time (Load below): the scenario waits on the load's progress
 * (events), never on the clock, and a load that ends before the scenario's condition fails the test.
 */
import { once } from 'node:events';
import { connect as netConnect, createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type DetailedPeerCertificate } from 'node:tls';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from 'vitest';
import { ward } from '../helpers/cli.js';
import { startMesh, TD, type MeshSpec, type RunningMesh, type StartMeshOptions } from '../helpers/proxy-mesh.js';

const API = 'http://api.shop:8080';
const WEB_ID = `spiffe://${TD}/ns/shop/sa/web`;
const API_ID = `spiffe://${TD}/ns/shop/sa/api`;
/** Bound on every single request (a hung request fails the test instead of hanging it). */
const REQUEST_TIMEOUT_MS = 10_000;
/** Bound on polls of a process's state (no event to await across a process boundary). */
const POLL = { timeout: 15_000, interval: 50 } as const;

const apiService: MeshSpec['services'][number] = {
  name: 'api',
  namespace: 'shop',
  ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }],
  selector: { app: 'api' },
};
const web1 = { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', ports: [8080], labels: { app: 'web' } };

const api = (name: string, node: string): MeshSpec['workloads'][number] => ({ name, namespace: 'shop', serviceAccount: 'api', node, ports: [9090], labels: { app: 'api' } });

/** web-1 on node-a; api-1 and api-3 on node-b, api-2 on node-c: no api endpoint is local to the caller. */
const THREE_NODES: MeshSpec = {
  nodes: [{ name: 'node-a' }, { name: 'node-b' }, { name: 'node-c' }],
  workloads: [web1, api('api-1', 'node-b'), api('api-2', 'node-c'), api('api-3', 'node-b')],
  services: [apiService],
};

const allowWebGet = {
  apiVersion: 'security.ward.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name: 'api-allow-web-get', namespace: 'shop' },
  spec: { selector: { service: 'api' }, action: 'ALLOW', rules: [{ from: [{ identities: [WEB_ID] }], to: [{ methods: ['GET'] }] }] },
};
const denySecret = {
  apiVersion: 'security.ward.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name: 'api-deny-secret', namespace: 'shop' },
  spec: { selector: { service: 'api' }, action: 'DENY', rules: [{ to: [{ paths: ['/secret/*'] }] }] },
};

// ---- helpers -------------------------------------------------------------------------------------

/**
 * A mesh for the tests of a describe (beforeAll; closed by afterAll): every node's proxy started,
 * and node-a routing to every api endpoint.
 */
async function meshUp(spec: MeshSpec, o: StartMeshOptions = {}): Promise<RunningMesh> {
  const mesh = await startMesh(spec, { ...o, cleanup: 'manual' });
  try {
    await Promise.all(spec.nodes.map((n) => mesh.startProxy(n.name)));
    await mesh.waitReady();
    // An endpoint is published once its certificate is issued, independently of node-a's readiness.
    const apis = spec.workloads.filter((w) => w.labels.app === 'api').length;
    await vi.waitFor(async () => expect(endpoints(await mesh.state('node-a'), 'api.shop')).toHaveLength(apis), POLL);
  } catch (err) {
    await mesh.close();
    throw err;
  }
  return mesh;
}

/** Starting a mesh: tsx compiles the sources in every process, slow on a busy machine. */
const MESH_START_MS = 120_000;
/** Per test: the load loops' own bounds (30–60 s) are below it. */
const TEST_MS = 90_000;

interface EndpointDump {
  workload: string;
  node: string;
  ejectedUntil?: string;
  ejections: number;
}

function endpoints(state: Record<string, unknown>, service: string): EndpointDump[] {
  const s = (state.services as { service: string; endpoints: EndpointDump[] }[]).find((x) => x.service === service);
  return s?.endpoints ?? [];
}

interface CertDump {
  identity: string;
  state: string;
  serial?: string;
  renewals: number;
}

function certificates(state: Record<string, unknown>): Map<string, CertDump> {
  return new Map((state.certificates as CertDump[]).map((c) => [c.identity, c]));
}

/** A keep-alive client of a workload's outbound proxy (absolute-form requests), closed at the end of the test. */
function client(mesh: RunningMesh, workload: string, connections = 16): Pool {
  const pool = new Pool(mesh.proxyUrl(workload), { connections, pipelining: 1 });
  onTestFinished(async () => {
    await pool.destroy().catch(() => undefined);
  });
  return pool;
}

interface Answer {
  status: number;
  servedBy?: string;
  error?: string;
  body: string;
}

async function call(pool: Pool, method: string, path: string, body?: string): Promise<Answer> {
  const r = await pool.request({
    method: method as 'GET',
    path: `${API}${path}`,
    ...(body !== undefined ? { body, headers: { 'content-type': 'text/plain' } } : {}),
    headersTimeout: REQUEST_TIMEOUT_MS,
    bodyTimeout: REQUEST_TIMEOUT_MS,
  });
  const text = await r.body.text();
  const served = r.headers['x-served-by'];
  const error = r.headers['x-ward-error'];
  return { status: r.statusCode, body: text, ...(typeof served === 'string' ? { servedBy: served } : {}), ...(typeof error === 'string' ? { error } : {}) };
}

interface Outcome extends Answer {
  n: number;
  startedAt: number;
  endedAt: number;
}

/**
 * `concurrency` clients sending GETs back to back until stop(), or until `maxRequests` were sent
 * or `maxMs` passed (the bounds: a scenario that never completes ends the load, and until() then
 * rejects). A transport error is an outcome with status 0.
 */
class Load {
  readonly outcomes: Outcome[] = [];
  readonly #waiters = new Set<{ pred: (o: readonly Outcome[]) => boolean; resolve: () => void; reject: (e: Error) => void }>();
  readonly #done: Promise<void>;
  #stopped = false;
  #ended = false;

  constructor(pool: Pool, o: { concurrency: number; maxRequests: number; maxMs: number }) {
    const deadline = Date.now() + o.maxMs;
    let sent = 0;
    const worker = async (): Promise<void> => {
      while (!this.#stopped && sent < o.maxRequests && Date.now() < deadline) {
        const n = sent++;
        const startedAt = Date.now();
        let a: Answer;
        try {
          a = await call(pool, 'GET', `/load/${n}`);
        } catch (err) {
          a = { status: 0, body: '', error: (err as Error).message };
        }
        this.outcomes.push({ ...a, n, startedAt, endedAt: Date.now() });
        this.#check();
      }
    };
    this.#done = Promise.all(Array.from({ length: o.concurrency }, worker)).then(() => {
      this.#ended = true;
      for (const w of this.#waiters) w.reject(new Error(`the load ended (${this.outcomes.length} requests, bounds reached) before the awaited condition held`));
      this.#waiters.clear();
    });
    onTestFinished(async () => {
      await this.stop();
    });
  }

  /** Resolves once `pred` holds for the outcomes so far (checked after each one). */
  until(pred: (o: readonly Outcome[]) => boolean): Promise<void> {
    if (pred(this.outcomes)) return Promise.resolve();
    if (this.#ended) return Promise.reject(new Error(`the load already ended (${this.outcomes.length} requests)`));
    return new Promise((resolve, reject) => this.#waiters.add({ pred, resolve, reject }));
  }

  /** Stops sending; resolves when every request in flight has ended. */
  async stop(): Promise<readonly Outcome[]> {
    this.#stopped = true;
    await this.#done;
    return this.outcomes;
  }

  #check(): void {
    for (const w of this.#waiters) {
      if (w.pred(this.outcomes)) {
        this.#waiters.delete(w);
        w.resolve();
      }
    }
  }
}

function failures(outcomes: readonly Outcome[]): string[] {
  return outcomes.filter((o) => o.status !== 200).map((o) => `#${o.n}: ${o.status} ${o.error ?? ''} ${o.body.trim().slice(0, 200)}`);
}

function servedBy(outcomes: readonly Outcome[], workload: string): number {
  return outcomes.filter((o) => o.servedBy === workload).length;
}

/** A Prometheus counter summed over the series matching `labels` (e.g. 'kind="connect"'). */
async function metric(mesh: RunningMesh, node: string, name: string, labels = ''): Promise<number> {
  const r = await fetch(`${mesh.adminUrl(node)}/metrics`);
  const text = await r.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels && !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

async function renew(mesh: RunningMesh, node: string): Promise<void> {
  const r = await fetch(`${mesh.adminUrl(node)}/v1/renew`, { method: 'POST', signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  expect(r.status, await r.text()).toBe(202);
}

/** The pool's view (`ward status --json` against ward control's admin endpoint). */
async function meshStatus(mesh: RunningMesh): Promise<{ nodes: { name: string; connected: boolean }[]; services: { name: string; endpoints: { total: number; healthy: number; ejected: number } }[] }> {
  const r = await ward(['status', '--server', `http://127.0.0.1:${mesh.ports.admin}`, '--json']);
  if (r.stdout === '') throw new Error(`ward status: ${r.stderr}`);
  return JSON.parse(r.stdout) as Awaited<ReturnType<typeof meshStatus>>;
}

/** Whether host:port can be bound now (the port was released). */
async function bindable(host: string, port: number): Promise<boolean> {
  const s = createNetServer();
  s.listen(port, host);
  try {
    await once(s, 'listening');
  } catch {
    return false;
  }
  await new Promise<void>((r) => s.close(() => r()));
  return true;
}

/** A SHA-256 fingerprint as lowercase hex without colons (Node and Ward print them differently). */
const fp = (s: string): string => s.replaceAll(':', '').toLowerCase();

/** SHA-256 fingerprint (lowercase hex) of the CA that issued the certificate node-b presents for api-1. */
async function apiIssuer(mesh: RunningMesh): Promise<string> {
  // No client certificate: the server's chain arrives before it refuses the client (TLS 1.3).
  const socket = tlsConnect({ host: mesh.nodeAddress('node-b'), port: 15008, servername: '9090.api-1.shop.ward', rejectUnauthorized: false, minVersion: 'TLSv1.3', ALPNProtocols: ['http/1.1'] });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  try {
    await once(socket, 'secureConnect');
    const leaf = socket.getPeerCertificate(true) as DetailedPeerCertificate;
    expect(leaf.subjectaltname).toContain(API_ID);
    return fp(leaf.issuerCertificate.fingerprint256);
  } finally {
    // Let the server refuse us (alert "certificate required") and close. Hanging up before it
    // has read our last handshake flight leaves its socket open for good (reported: the proxy
    // then never exits on SIGTERM).
    const bound = setTimeout(() => socket.destroy(), REQUEST_TIMEOUT_MS);
    await closed;
    clearTimeout(bound);
  }
}

// ---- 1. endpoints die mid-load -------------------------------------------------------------------

describe('endpoints die mid-load (web-1 on node-a → api-1, api-3 on node-b, api-2 on node-c)', () => {
  let mesh: RunningMesh;
  // A long grace keeps a dead node's endpoints published: failover is the data plane's alone.
  beforeAll(async () => {
    mesh = await meshUp(THREE_NODES, { grace: '60s' });
  }, MESH_START_MS);
  afterAll(() => mesh?.close());

  it("node-c's proxy SIGKILLed: no GET fails, api-2 is ejected (node-a's state and metrics, the pool's status)", async () => {
    const load = new Load(client(mesh, 'web-1'), { concurrency: 16, maxRequests: 6_000, maxMs: 30_000 });
    await load.until((o) => ['api-1', 'api-2', 'api-3'].every((w) => servedBy(o, w) >= 10));

    await mesh.stopProxy('node-c', 'SIGKILL');
    const killedAt = Date.now();
    // While the load goes on: node-a ejects api-2, shows it in its state, and reports it to the pool.
    await vi.waitFor(async () => {
      const e = endpoints(await mesh.state('node-a'), 'api.shop').find((x) => x.workload === 'shop/api-2');
      expect(e?.ejectedUntil).toBeDefined();
    }, POLL);
    await vi.waitFor(async () => {
      const s = await meshStatus(mesh);
      expect(s.nodes.find((n) => n.name === 'node-c')?.connected).toBe(false);
      expect(s.services.find((x) => x.name === 'api')?.endpoints).toMatchObject({ total: 3, ejected: 1 });
    }, POLL);
    await load.until((o) => o.filter((x) => x.startedAt >= killedAt).length >= 1_000);
    const outcomes = await load.stop();

    // In flight at the kill, or sent on a pooled connection to it: reset after sending, retried
    // (GET) elsewhere. New connections: refused, ejected at once, retried elsewhere.
    expect(failures(outcomes)).toEqual([]);
    const after = outcomes.filter((o) => o.startedAt >= killedAt);
    expect([...new Set(after.map((o) => o.servedBy))].sort()).toEqual(['api-1', 'api-3']);
    // The kind depends on timing: resets on pooled connections ('response', after 5 in a row) or
    // refused dials ('connect').
    expect(await metric(mesh, 'node-a', 'ward_proxy_endpoint_ejections_total')).toBeGreaterThan(0);
    expect(await metric(mesh, 'node-a', 'ward_proxy_retries_total', 'result="retried"')).toBeGreaterThan(0);
  }, TEST_MS);

  it("api-3's app stopped behind node-b's live proxy: only GETs the app had already received fail (502), later ones go to api-1", async () => {
    const load = new Load(client(mesh, 'web-1'), { concurrency: 16, maxRequests: 6_000, maxMs: 30_000 });
    await load.until((o) => servedBy(o, 'api-1') >= 20 && servedBy(o, 'api-3') >= 20);

    const stopping = Date.now();
    await mesh.stopApp('api-3');
    const stoppedAt = Date.now();
    await vi.waitFor(async () => {
      const e = endpoints(await mesh.state('node-a'), 'api.shop').find((x) => x.workload === 'shop/api-3');
      expect(e?.ejectedUntil).toBeDefined();
    }, POLL);
    await load.until((o) => o.filter((x) => x.startedAt >= stoppedAt).length >= 1_000);
    const outcomes = await load.stop();

    // A GET the app had already received when it died fails: node-b's inbound answers 502 (the
    // workload failed the request after getting it) and node-a does not retry a 502 response, even
    // for an idempotent request (reported: a reset between two proxies would have been retried).
    // So only requests in flight at the stop may fail, and only that way.
    const failed = outcomes.filter((o) => o.status !== 200);
    expect(failed.length).toBeLessThanOrEqual(16);
    for (const o of failed) {
      const what = failures([o])[0];
      expect(o.startedAt, what).toBeLessThanOrEqual(stoppedAt);
      expect(o.endedAt, what).toBeGreaterThanOrEqual(stopping);
      expect(o, what).toMatchObject({ status: 502, error: 'WARD_PROXY_UPSTREAM_FAILED' });
      expect(o.body, what).toContain('local workload shop/api-3 failed the request');
    }
    // Every later GET: node-b answers 503 + x-ward-not-forwarded, node-a ejects api-3 and retries on
    // another endpoint (api-2 is still ejected and refused: api-1).
    const after = outcomes.filter((o) => o.startedAt > stoppedAt);
    expect(failures(after)).toEqual([]);
    expect(servedBy(after, 'api-1')).toBe(after.length);
    if (failed.length > 0) console.info(`app stopped mid-load: ${failed.length} GET(s) in flight failed with 502 (not retried)`);
  }, TEST_MS);
});

// ---- 2–5. one mesh: web-1 on node-a → api-1 on node-b, GET only -----------------------------------

describe('control plane, certificates and proxy restarts (web-1 on node-a → api-1 on node-b; api allows GET from web)', () => {
  const spec: MeshSpec = { nodes: [{ name: 'node-a' }, { name: 'node-b' }], workloads: [web1, api('api-1', 'node-b')], services: [apiService], policies: [allowWebGet] };
  const nodes = ['node-a', 'node-b'];
  let mesh: RunningMesh;
  beforeAll(async () => {
    mesh = await meshUp(spec, { echoDelay: true });
  }, MESH_START_MS);
  afterAll(() => mesh?.close());

  it('certificates renewed 10 times on both nodes, then an intermediate CA rotation, under load: zero failed requests', async () => {
    const serials = new Map<string, Set<string>>();
    const record = async (): Promise<void> => {
      for (const n of nodes) {
        for (const c of certificates(await mesh.state(n)).values()) {
          expect(c.state, c.identity).toBe('valid');
          if (!serials.has(c.identity)) serials.set(c.identity, new Set());
          serials.get(c.identity)!.add(c.serial!);
        }
      }
    };
    await record();
    const load = new Load(client(mesh, 'web-1', 8), { concurrency: 8, maxRequests: 30_000, maxMs: 60_000 });
    const more = (k: number): Promise<void> => {
      const from = load.outcomes.length;
      return load.until((o) => o.length >= from + k);
    };
    await more(50);
    const ROUNDS = 10;
    for (let round = 0; round < ROUNDS; round++) {
      await Promise.all(nodes.map((n) => renew(mesh, n)));
      await record();
      await more(10); // traffic on the renewed certificates before the next round
    }

    // Intermediate rotation on the running control plane: `ward ca rotate` finds the server holding
    // the state directory (its lock) and goes through its admin API with <state>/admin.token.
    const issuerBefore = await apiIssuer(mesh);
    const stateDir = join(mesh.dir, 'state');
    const prepared = await ward(['ca', 'rotate', 'prepare', '--state', stateDir, '--json']);
    expect(prepared.code, prepared.stderr).toBe(0);
    await more(10);
    const activated = await ward(['ca', 'rotate', 'activate', '--state', stateDir, '--json']);
    expect(activated.code, activated.stderr).toBe(0);
    const newIssuer = fp((JSON.parse(activated.stdout) as { active: { issuer: { fingerprint: string } } }).active.issuer.fingerprint);
    expect(newIssuer).not.toBe(issuerBefore);
    await more(10);
    await Promise.all(nodes.map((n) => renew(mesh, n)));
    await record();
    await more(50);
    const outcomes = await load.stop();

    expect(failures(outcomes)).toEqual([]);
    expect(servedBy(outcomes, 'api-1')).toBe(outcomes.length);
    // node-a, node-b, web, api: a new serial on every renewal.
    expect([...serials.keys()].sort()).toEqual([API_ID, WEB_ID, `spiffe://${TD}/ward/node/node-a`, `spiffe://${TD}/ward/node/node-b`].sort());
    for (const [id, s] of serials) expect(s.size, id).toBe(ROUNDS + 2);
    for (const n of nodes) for (const c of certificates(await mesh.state(n)).values()) expect(c.renewals, c.identity).toBeGreaterThanOrEqual(ROUNDS + 1);
    // What node-b presents for api-1 now chains to the new intermediate.
    expect(await apiIssuer(mesh)).toBe(newIssuer);
  }, TEST_MS);

  it('control plane SIGKILLed: traffic and deny rules keep working; a ward.yaml edit made meanwhile applies once it is back, without restarting the proxies', async () => {
    const web = client(mesh, 'web-1', 4);
    const expectRules = async (secret: number): Promise<void> => {
      expect(await call(web, 'GET', '/items')).toMatchObject({ status: 200, servedBy: 'api-1' });
      expect((await call(web, 'POST', '/items', 'x')).status).toBe(403);
      expect((await call(web, 'GET', '/secret/x')).status).toBe(secret);
    };
    await expectRules(200);
    const before = new Map<string, number>();
    for (const n of nodes) before.set(n, (await mesh.state(n)).configVersion as number);
    const proxies = new Map(mesh.proxies);

    await mesh.stopControl('SIGKILL');
    await vi.waitFor(async () => {
      for (const n of nodes) expect(((await mesh.state(n)).control as { connected: boolean }).connected).toBe(false);
    }, POLL);
    for (let i = 0; i < 5; i++) await expectRules(200);

    await mesh.writeSpec({ ...spec, policies: [allowWebGet, denySecret] });
    await expectRules(200); // nobody reads the edit yet
    await mesh.startControl();
    // The proxies reconnect on their own (their backoff: up to a few seconds after a short outage).
    await vi.waitFor(async () => {
      for (const n of nodes) {
        const s = await mesh.state(n);
        expect(s.configVersion).toBeGreaterThan(before.get(n)!);
        expect(s.acknowledgedVersion).toBe(s.configVersion);
        expect((s.policies as { policy: string }[]).map((p) => p.policy).sort()).toEqual(['shop/api-allow-web-get', 'shop/api-deny-secret']);
      }
    }, { timeout: 30_000, interval: 100 });
    await expectRules(403);
    for (const [n, c] of proxies) {
      expect(mesh.proxies.get(n)).toBe(c);
      expect(c.exitCode).toBeNull();
    }
  }, TEST_MS);

  it('a proxy SIGTERMed exits 0 and frees its ports; restarted without a token it reuses its saved node identity and serves', async () => {
    expect((await call(client(mesh, 'web-1', 1), 'GET', '/before')).status).toBe(200);
    const nodeId = `spiffe://${TD}/ward/node/node-a`;
    const serial = certificates(await mesh.state('node-a')).get(nodeId)?.serial;
    expect(serial).toBeDefined();

    const old = mesh.proxies.get('node-a')!;
    await mesh.stopProxy('node-a', 'SIGTERM');
    expect(old.exitCode, old.output.stderr.slice(-3000)).toBe(0);
    expect(old.output.stderr).toContain('ward proxy: SIGTERM: draining and stopping');
    const ports: [string, number][] = [
      [mesh.nodeAddress('node-a'), 15008],
      [mesh.nodeAddress('node-a'), 15000],
      [mesh.workloadAddress('web-1'), 15001],
    ];
    for (const [host, port] of ports) expect(await bindable(host, port), `${host}:${port} still bound`).toBe(true);

    const child = await mesh.startProxy('node-a', { token: false });
    expect(child.spawnargs).not.toContain('--token');
    await mesh.waitReady({ nodes: ['node-a'] });
    expect(child.output.stderr).toContain('reusing the saved node identity');
    expect(certificates(await mesh.state('node-a')).get(nodeId)?.serial).toBe(serial);
    await vi.waitFor(async () => expect(endpoints(await mesh.state('node-a'), 'api.shop')).toHaveLength(1), POLL);
    const web = client(mesh, 'web-1', 2);
    for (let i = 0; i < 5; i++) {
      const a = await call(web, 'GET', `/after/${i}`);
      expect(a).toMatchObject({ status: 200, servedBy: 'api-1' });
      expect(JSON.parse(a.body)).toMatchObject({ url: `/after/${i}`, identity: WEB_ID });
    }
  }, TEST_MS);

  it('SIGTERM to both proxies with a slow request in flight: it completes, new connections are refused, both exit 0', async () => {
    await mesh.waitReady({ nodes });
    const web = client(mesh, 'web-1', 2);
    expect((await call(web, 'GET', '/warm')).status).toBe(200);
    const arrived = new Promise<void>((resolve) => {
      const on = (r: { url: string }): void => {
        if (!r.url.startsWith('/slow')) return;
        mesh.appRequests.off('request', on);
        resolve();
      };
      mesh.appRequests.on('request', on);
    });
    const DELAY = 1_500;
    const sent = Date.now();
    const slow = call(web, 'GET', `/slow?delay=${DELAY}`);
    await arrived;

    // Both ends at once: node-a holds the caller's connection, node-b the one to the app.
    const a = mesh.proxies.get('node-a')!;
    const b = mesh.proxies.get('node-b')!;
    const signalled = Date.now();
    const exitAt = new Map<string, number>();
    const stopping = Promise.all(
      nodes.map(async (n) => {
        await mesh.stopProxy(n, 'SIGTERM');
        exitAt.set(n, Date.now());
      }),
    );
    await stderrSeen(a, 'ward proxy: SIGTERM: draining and stopping');
    // Draining: the outbound listener no longer accepts.
    await expect(connectError(mesh.workloadAddress('web-1'), 15001)).resolves.toBe('ECONNREFUSED');

    const answer = await slow;
    const answeredAt = Date.now();
    expect(answer).toMatchObject({ status: 200, servedBy: 'api-1' });
    expect(JSON.parse(answer.body)).toMatchObject({ url: `/slow?delay=${DELAY}`, identity: WEB_ID });
    expect(answeredAt - sent).toBeGreaterThanOrEqual(DELAY);
    await stopping;
    expect(a.exitCode, a.output.stderr.slice(-3000)).toBe(0);
    expect(b.exitCode, b.output.stderr.slice(-3000)).toBe(0);
    console.info(`drain: answered ${answeredAt - signalled} ms after SIGTERM; node-a exited after ${exitAt.get('node-a')! - signalled} ms, node-b after ${exitAt.get('node-b')! - signalled} ms`);
  }, TEST_MS);
});

/** Resolves once `text` appears on the child's standard error. */
function stderrSeen(child: { output: { stderr: string }; stderr: NodeJS.ReadableStream }, text: string): Promise<void> {
  return new Promise((resolve) => {
    const check = (): void => {
      if (!child.output.stderr.includes(text)) return;
      child.stderr.off('data', check);
      resolve();
    };
    child.stderr.on('data', check);
    check();
  });
}

/** The error code of a TCP connection attempt ('connected' if it was accepted). */
function connectError(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}
