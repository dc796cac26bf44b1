/**
 * KubeSource against the test API server (test/helpers/kube-api.ts), which speaks the real
 * protocol to the real @kubernetes/client-node informers. Time that the source controls (debounce,
 * backoff, start deadline) runs on ManualTimers below: a test fires a timer when it chooses, so it
 * can also show that nothing happens before (no restart before its backoff, no tight loop).
 * Everything else is awaited as an event: a request arriving at the server, a timer being set.
 */
import { EventEmitter, once } from 'node:events';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { ManualClock } from '../core/clock.js';
import type { Timers } from '../core/control/index.js';
import { isWardError } from '../core/errors.js';
import { kubeConfigFor, startKubeApi, type KubeApiServer, type KubeObject, type KubeRequestRecord } from '../test/helpers/kube-api.js';
import { KUBE_API_USAGE } from './kube-api-usage.js';
import type { AttestationPods } from './kube-attestor.js';
import type { KubeProblem } from './kube-model.js';
import { KubeSource, type KubeSourceOptions } from './kube-source.js';
import type { MeshModel, ModelDiff } from './model.js';

const TD = 'cluster.local';
const DEBOUNCE_MS = 25;
const START_TIMEOUT_MS = 20_000;
const BACKOFF = { initialMs: 1000, maxMs: 8000 };
/** With random() = 0.5 the n-th consecutive restart waits 500, 1000, 2000, 4000, 4000… ms. */
const BACKOFF_DELAYS = new Set([500, 1000, 2000, 4000]);
const isBackoff = (ms: number): boolean => BACKOFF_DELAYS.has(ms);
const isDebounce = (ms: number): boolean => ms === DEBOUNCE_MS;
const RESOURCES = ['pods', 'services', 'namespaces', 'endpointslices', 'ingresses', 'authorizationpolicies'];

// ---- timers the test fires ----------------------------------------------------------------------

interface PendingTimer {
  id: number;
  ms: number;
  fn: () => void;
}

class ManualTimers implements Timers {
  readonly pending = new Map<number, PendingTimer>();
  readonly #events = new EventEmitter();
  #seq = 0;

  set(fn: () => void, ms: number): unknown {
    const id = ++this.#seq;
    this.pending.set(id, { id, ms, fn });
    this.#events.emit('set');
    return id;
  }

  clear(handle: unknown): void {
    this.pending.delete(handle as number);
  }

  find(pred: (ms: number) => boolean): PendingTimer[] {
    return [...this.pending.values()].filter((t) => pred(t.ms));
  }

  /** Waits until at least `n` timers matching `pred` are pending; returns them. */
  async waitFor(pred: (ms: number) => boolean, n = 1): Promise<PendingTimer[]> {
    const signal = AbortSignal.timeout(10_000);
    for (;;) {
      const found = this.find(pred);
      if (found.length >= n) return found;
      await once(this.#events, 'set', { signal });
    }
  }

  fire(t: PendingTimer): void {
    if (!this.pending.delete(t.id)) return;
    t.fn();
  }
}

// ---- the cluster --------------------------------------------------------------------------------

function namespace(name: string, labels: Record<string, string> = {}): KubeObject {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } };
}

function proxyPod(node: string, hostIP: string): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `ward-proxy-${node}`, namespace: 'ward-system', labels: { 'app.kubernetes.io/name': 'ward-proxy' } },
    spec: { nodeName: node, serviceAccountName: 'ward-proxy', hostNetwork: true, containers: [{ name: 'proxy', image: 'ward' }] },
    status: { phase: 'Running', hostIP, podIP: hostIP, conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

function appPod(name: string, ip: string, o: { app?: string; node?: string; labels?: Record<string, string>; ready?: boolean } = {}): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'shop', labels: { app: o.app ?? 'web', ...o.labels } },
    spec: { nodeName: o.node ?? 'node-a', serviceAccountName: o.app ?? 'web', containers: [{ name: 'app', image: 'app', ports: [{ name: 'http', containerPort: 8080 }] }] },
    status: { phase: 'Running', podIP: ip, hostIP: '10.0.0.1', conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }] },
  };
}

function service(name: string): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace: 'shop' },
    spec: { selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }] },
  };
}

function policy(name: string): KubeObject {
  return {
    apiVersion: 'security.ward.dev/v1alpha1',
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace: 'shop' },
    spec: { selector: { service: 'web' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['shop'] }] }] },
  };
}

function seed(api: KubeApiServer): void {
  api.create(namespace('ward-system'));
  api.create(namespace('shop', { 'ward.dev/mesh': 'enabled' }));
  api.create(proxyPod('node-a', '10.0.0.1'));
  api.create(proxyPod('node-b', '10.0.0.2'));
  api.create(appPod('web-1', '10.1.0.1'));
  api.create(service('web'));
  api.create({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'Ingress',
    metadata: { name: 'shop', namespace: 'shop' },
    spec: {
      ingressClassName: 'ward',
      tls: [{ hosts: ['shop.example.com'], secretName: 'shop-tls' }],
      rules: [{ host: 'shop.example.com', http: { paths: [{ path: '/', pathType: 'Prefix', backend: { service: { name: 'web', port: { number: 80 } } } }] } }],
    },
  });
}

// ---- the source ---------------------------------------------------------------------------------

interface Harness {
  api: KubeApiServer;
  src: KubeSource;
  timers: ManualTimers;
  clock: ManualClock;
  registry: Registry;
  logs: Record<string, any>[];
  updates: [MeshModel, ModelDiff][];
  problems: KubeProblem[];
}

async function setup(o: { seed?: boolean; options?: Partial<KubeSourceOptions>; api?: KubeApiServer } = {}): Promise<Harness> {
  const api = o.api ?? (await startKubeApi());
  onTestFinished(() => api.close());
  if (o.seed !== false) seed(api);
  const timers = new ManualTimers();
  const clock = new ManualClock();
  const registry = new Registry();
  const logs: Record<string, any>[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void logs.push(JSON.parse(s)) });
  const src = new KubeSource({
    kubeConfig: kubeConfigFor(api),
    trustDomain: TD,
    logger,
    registry,
    clock,
    timers,
    backoff: BACKOFF,
    debounceMs: DEBOUNCE_MS,
    startTimeoutMs: START_TIMEOUT_MS,
    random: () => 0.5,
    ...o.options,
  });
  onTestFinished(() => src.close());
  const updates: [MeshModel, ModelDiff][] = [];
  const problems: KubeProblem[] = [];
  src.on('update', (m, d) => void updates.push([m, d]));
  src.on('problem', (p) => void problems.push(p));
  return { api, src, timers, clock, registry, logs, updates, problems };
}

/** Fires the debounce the change scheduled; returns the updates it emitted (0 or 1). */
async function settle(h: Harness): Promise<[MeshModel, ModelDiff][]> {
  const before = h.updates.length;
  const [t] = await h.timers.waitFor(isDebounce);
  h.timers.fire(t);
  return h.updates.slice(before);
}

const keys = (d: ModelDiff, kind: 'nodes' | 'workloads' | 'services' | 'policies' | 'routes') => ({ ...d[kind] });

/** Resolves when every resource has been listed and then watched again after `since` requests. */
async function relistedAll(api: KubeApiServer, since: number): Promise<void> {
  await vi.waitFor(
    () => {
      const recent = api.requests.slice(since);
      for (const r of RESOURCES) {
        const lastList = recent.findLastIndex((q) => q.resource === r && q.verb === 'list');
        const watchAfter = recent.findIndex((q, i) => i > lastList && q.resource === r && q.verb === 'watch' && q.status === 200);
        if (lastList === -1 || watchAfter === -1) throw new Error(`${r} not relisted and watched yet`);
      }
    },
    { timeout: 10_000, interval: 5 },
  );
}

/** Resolves once a watch of every resource is open. */
async function watching(api: KubeApiServer): Promise<void> {
  await vi.waitFor(() => expect(api.openWatches).toBe(RESOURCES.length), { timeout: 10_000, interval: 5 });
}

function usageAllows(r: KubeRequestRecord): boolean {
  return KUBE_API_USAGE.some((u) => u.component === 'control' && u.group === r.group && u.resource === r.resource && u.verbs.includes(r.verb) && u.scope === 'cluster');
}

// ---- tests --------------------------------------------------------------------------------------

describe('KubeSource: initial sync', () => {
  it('lists every resource, resolves with the model, and serves pods to attestation', async () => {
    const h = await setup();
    const model = await h.src.start();
    expect(model.nodes).toEqual([
      { name: 'node-a', address: '10.0.0.1' },
      { name: 'node-b', address: '10.0.0.2' },
    ]);
    expect(model.workloads).toEqual([
      {
        name: 'web-1',
        namespace: 'shop',
        serviceAccount: 'web',
        node: 'node-a',
        address: '10.1.0.1',
        ports: [8080],
        labels: { app: 'web' },
        identity: 'spiffe://cluster.local/ns/shop/sa/web',
      },
    ]);
    expect(model.services).toEqual([{ name: 'web', namespace: 'shop', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }] }]);
    expect(model.routes).toEqual([{ host: 'shop.example.com', tlsSecret: 'shop-tls', paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] }]);
    expect(h.src.current()).toBe(model);

    const uid = (h.api.get('v1', 'Pod', 'ward-proxy-node-a', 'ward-system')!.metadata as { uid: string }).uid;
    expect(h.src.pod('ward-system', 'ward-proxy-node-a')).toEqual({
      uid,
      nodeName: 'node-a',
      serviceAccount: 'ward-proxy',
      phase: 'Running',
      labels: { 'app.kubernetes.io/name': 'ward-proxy' },
    });
    expect(h.src.pod('ward-system', 'nope')).toBeUndefined();
    const forAttestation: AttestationPods = h.src; // the attestor's interface, checked by the compiler
    expect(forAttestation.pod('shop', 'web-1')?.serviceAccount).toBe('web');

    const st = h.src.status();
    expect(st.synced).toBe(true);
    expect(st.informers.map((i) => [i.resource, i.state, i.synced, i.restarts])).toEqual(RESOURCES.map((r) => [r, 'running', true, 0]));
    expect(st.informers.find((i) => i.resource === 'pods')!.objects).toBe(3);
    expect(st.informers.every((i) => /^[0-9]+$/.test(i.resourceVersion))).toBe(true);
    const objects = await h.registry.getSingleMetric('ward_discovery_kube_objects')!.get();
    expect(objects.values.find((v) => v.labels.resource === 'pods')!.value).toBe(3);
    expect(h.updates).toEqual([]);
  });

  it('asks the server to end watches (timeoutSeconds) and for bookmarks; only calls KUBE_API_USAGE lists', async () => {
    const h = await setup();
    await h.src.start();
    // start() resolves once every list is in the cache; the watches open right after.
    await watching(h.api);
    const watches = h.api.requests.filter((r) => r.verb === 'watch');
    expect(watches.map((r) => r.resource).sort()).toEqual([...RESOURCES].sort());
    for (const w of watches) {
      expect(Number(w.query?.timeoutSeconds)).toBeGreaterThanOrEqual(300);
      expect(Number(w.query?.timeoutSeconds)).toBeLessThan(600);
      expect(w.query?.allowWatchBookmarks).toBe('true');
    }
    expect(h.api.requests.filter((r) => !usageAllows(r))).toEqual([]);
  });
});

describe('KubeSource: changes', () => {
  it('a pod created, labelled, opted out and deleted: one update each, with exactly that diff', async () => {
    const h = await setup();
    await h.src.start();
    await watching(h.api);

    h.api.create(appPod('web-2', '10.1.0.2', { node: 'node-b' }));
    let ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'workloads')).toEqual({ added: ['shop/web-2'], removed: [], changed: [] });
    expect(ups[0][1].services).toEqual({ added: [], removed: [], changed: [] });
    expect(ups[0][0].workloads.map((w) => `${w.name}@${w.node}`)).toEqual(['web-1@node-a', 'web-2@node-b']);
    expect(h.src.current()).toBe(ups[0][0]);

    h.api.patch('v1', 'Pod', 'web-2', 'shop', { metadata: { labels: { tier: 'front' } } });
    ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'workloads')).toEqual({ added: [], removed: [], changed: ['shop/web-2'] });
    expect(ups[0][0].workloads[1].labels).toEqual({ app: 'web', tier: 'front' });

    h.api.patch('v1', 'Pod', 'web-2', 'shop', { metadata: { labels: { 'ward.dev/mesh': 'disabled' } } });
    ups = await settle(h);
    expect(keys(ups[0][1], 'workloads')).toEqual({ added: [], removed: ['shop/web-2'], changed: [] });

    h.api.delete('v1', 'Pod', 'web-1', 'shop');
    ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'workloads')).toEqual({ added: [], removed: ['shop/web-1'], changed: [] });
    expect(ups[0][0].workloads).toEqual([]);
    expect(h.updates).toHaveLength(4);
  });

  it('a pod that only becomes unready, or changes in a way the model ignores, emits nothing or exactly its change', async () => {
    const h = await setup();
    await h.src.start();
    await watching(h.api);
    h.api.patch('v1', 'Pod', 'web-1', 'shop', { metadata: { annotations: { note: 'ignored by the model' } } });
    expect(await settle(h)).toEqual([]);
    h.api.patch('v1', 'Pod', 'web-1', 'shop', { status: { conditions: [{ type: 'Ready', status: 'False' }] } });
    const ups = await settle(h);
    expect(keys(ups[0][1], 'workloads')).toEqual({ added: [], removed: ['shop/web-1'], changed: [] });
  });

  it('a policy added → update; an invalid one → a problem (logged, counted, emitted once), no update', async () => {
    const h = await setup();
    await h.src.start();
    await watching(h.api);

    h.api.create(policy('web-readers'));
    const ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'policies')).toEqual({ added: ['shop/web-readers'], removed: [], changed: [] });
    expect(ups[0][0].policies[0].spec).toEqual({ selector: { service: 'web' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['shop'] }] }] });

    const bad = policy('bad');
    (bad.spec as Record<string, unknown>).action = 'PERMIT';
    h.api.create(bad);
    expect(await settle(h)).toEqual([]);
    expect(h.problems).toEqual([{ kind: 'AuthorizationPolicy', ref: 'shop/bad', reason: expect.stringContaining('"PERMIT" is not one of ALLOW, DENY, AUDIT') }]);
    expect(h.src.status().problems).toBe(1);
    expect((await h.registry.getSingleMetric('ward_discovery_kube_problems')!.get()).values[0].value).toBe(1);
    expect(h.logs.filter((l) => l.msg === 'Kubernetes object left out of the mesh model').map((l) => l.ref)).toEqual(['shop/bad']);

    // Another change rebuilds the model: the same problem is not reported again.
    h.api.create(appPod('web-2', '10.1.0.2'));
    await settle(h);
    expect(h.problems).toHaveLength(1);

    h.api.delete('security.ward.dev/v1alpha1', 'AuthorizationPolicy', 'bad', 'shop');
    expect(await settle(h)).toEqual([]);
    expect(h.src.status().problems).toBe(0);
  });

  it('changes arriving within the debounce make one update', async () => {
    const h = await setup();
    await h.src.start();
    await watching(h.api);
    h.api.create(appPod('web-2', '10.1.0.2'));
    h.api.create(appPod('web-3', '10.1.0.3'));
    h.api.create(policy('web-readers'));
    await vi.waitFor(() => expect(h.src.pod('shop', 'web-3')).toBeDefined(), { timeout: 10_000, interval: 5 });
    await vi.waitFor(() => expect(h.src.status().informers.find((i) => i.resource === 'authorizationpolicies')!.objects).toBe(1), { timeout: 10_000, interval: 5 });
    expect(h.timers.find(isDebounce)).toHaveLength(1);
    const ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'workloads').added).toEqual(['shop/web-2', 'shop/web-3']);
    expect(keys(ups[0][1], 'policies').added).toEqual(['shop/web-readers']);
  });
});

describe('KubeSource: watches that end, expire, or lose the server', () => {
  it('compact() + dropWatches(): every informer relists (410), nothing changed so nothing is emitted; later changes are seen', async () => {
    const h = await setup({ api: await startKubeApi({ bookmarkIntervalMs: 3_600_000 }) });
    const model = await h.src.start();
    await watching(h.api);
    h.clock.advance(60_000); // the watches have been up a minute: their end is not a flap
    // Move the server's resourceVersion past every informer's (a write nobody here watches), then
    // compact: resuming from those versions is now 410 Gone.
    h.api.create({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'unrelated', namespace: 'shop' }, data: {} });
    const since = h.api.requests.length;
    h.api.compact();
    h.api.dropWatches();
    await relistedAll(h.api, since);
    await watching(h.api);
    expect(h.timers.find(isDebounce)).toEqual([]);
    expect(h.timers.find(isBackoff)).toEqual([]);
    expect(h.updates).toEqual([]);
    expect(h.src.current()).toBe(model);
    expect(h.src.status().informers.map((i) => i.restarts)).toEqual([0, 0, 0, 0, 0, 0]);

    h.api.create(appPod('web-2', '10.1.0.2'));
    const ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'workloads').added).toEqual(['shop/web-2']);
  });

  it.each([
    ['resumes from its resourceVersion', false],
    ['relists when the server compacted meanwhile', true],
  ])('API server restart with changes made while it was down: keeps the last model, restarts each informer once after its backoff, converges (%s)', async (_how, compact) => {
    const h = await setup();
    const model = await h.src.start();
    await watching(h.api);
    h.clock.advance(60_000);
    await h.api.stop();
    const backoffs = await h.timers.waitFor(isBackoff, RESOURCES.length);
    expect(backoffs.map((t) => t.ms)).toEqual(RESOURCES.map(() => 500));
    expect(h.src.status().informers.map((i) => i.state)).toEqual(RESOURCES.map(() => 'backoff'));
    expect(h.src.current()).toBe(model); // the last good model while the API is away

    h.api.delete('v1', 'Pod', 'web-1', 'shop');
    h.api.create(appPod('web-2', '10.1.0.2', { node: 'node-b' }));
    if (compact) h.api.compact();
    await h.api.restart();
    const since = h.api.requests.length;
    for (const t of backoffs) h.timers.fire(t);
    await vi.waitFor(() => expect([h.src.pod('shop', 'web-1'), h.src.pod('shop', 'web-2')?.nodeName]).toEqual([undefined, 'node-b']), { timeout: 10_000, interval: 5 });
    const ups = await settle(h);
    expect(ups).toHaveLength(1);
    expect(keys(ups[0][1], 'workloads')).toEqual({ added: ['shop/web-2'], removed: ['shop/web-1'], changed: [] });

    await watching(h.api);
    const lists = h.api.requests.slice(since).filter((r) => r.verb === 'list').length;
    expect(lists).toBe(compact ? RESOURCES.length : 0);
    expect(h.src.status().informers.map((i) => [i.state, i.restarts])).toEqual(RESOURCES.map(() => ['running', 1]));
    const restarts = await h.registry.getSingleMetric('ward_discovery_kube_restarts_total')!.get();
    expect(restarts.values.map((v) => [v.labels.resource, v.value]).sort()).toEqual([...RESOURCES].sort().map((r) => [r, 1]));
    const restartLogs = h.logs.filter((l) => l.msg.startsWith('Kubernetes informer stopped'));
    expect(restartLogs.map((l) => l.resource).sort()).toEqual([...RESOURCES].sort());
    expect(h.timers.find(isBackoff)).toEqual([]);
  });

  it('failNext(3, 500) on the pods list: each retry waits for its growing backoff (no tight loop), then start() resolves', async () => {
    const h = await setup();
    const podLists = (): KubeRequestRecord[] => h.api.requests.filter((r) => r.resource === 'pods' && r.verb === 'list');
    h.api.failNext(3, 500, (r) => r.resource === 'pods' && r.verb === 'list');
    let resolved = false;
    const started = h.src.start().then((m) => ((resolved = true), m));
    const delays: number[] = [];
    for (let n = 1; n <= 3; n++) {
      const [t] = await h.timers.waitFor(isBackoff);
      delays.push(t.ms);
      expect(podLists()).toHaveLength(n); // nothing retries until the backoff has passed
      expect(resolved).toBe(false);
      h.timers.fire(t);
    }
    const model = await started;
    expect(delays).toEqual([500, 1000, 2000]);
    expect(podLists()).toHaveLength(4);
    expect(model.workloads.map((w) => w.name)).toEqual(['web-1']);
    const pods = h.src.status().informers.find((i) => i.resource === 'pods')!;
    expect(pods).toMatchObject({ state: 'running', synced: true, restarts: 3, lastError: { message: expect.stringContaining('500') } });
    expect(h.logs.filter((l) => l.msg.startsWith('Kubernetes informer stopped')).map((l) => [l.resource, l.status, l.delayMs])).toEqual([
      ['pods', 500, 500],
      ['pods', 500, 1000],
      ['pods', 500, 2000],
    ]);
    expect(h.timers.find(isBackoff)).toEqual([]);

    // A watch that then stays up longer than the backoff ceiling resets it: the next outage
    // starts again from the shortest delay.
    await watching(h.api);
    h.clock.advance(BACKOFF.maxMs);
    await h.api.stop();
    const again = await h.timers.waitFor(isBackoff, RESOURCES.length);
    expect(again.map((t) => t.ms)).toEqual(RESOURCES.map(() => 500));
  });

  it('a server that ends every watch right after it opens: after five in a row the informer backs off', async () => {
    const h = await setup({ api: await startKubeApi({ bookmarkIntervalMs: 3_600_000 }) });
    await h.src.start();
    await watching(h.api);
    // The clock stands still: every watch ends within MIN_WATCH_MS of opening.
    for (let i = 0; i < 5; i++) {
      const since = h.api.requests.length;
      h.api.dropWatches();
      if (i < 4) {
        await vi.waitFor(() => expect(h.api.requests.slice(since).filter((r) => r.verb === 'watch' && r.status === 200)).toHaveLength(RESOURCES.length), {
          timeout: 10_000,
          interval: 5,
        });
      }
    }
    const backoffs = await h.timers.waitFor(isBackoff, RESOURCES.length);
    expect(backoffs.map((t) => t.ms)).toEqual(RESOURCES.map(() => 500));
    expect(h.src.status().informers.every((i) => i.state === 'backoff' && /keeps ending/.test(i.lastError?.message ?? ''))).toBe(true);
    expect(h.api.openWatches).toBe(0);
    for (const t of backoffs) h.timers.fire(t);
    await watching(h.api);
    h.api.create(appPod('web-2', '10.1.0.2'));
    expect(keys((await settle(h))[0][1], 'workloads').added).toEqual(['shop/web-2']);
  });
});

describe('KubeSource: lifecycle', () => {
  it('start() rejects with WARD_KUBE_UNAVAILABLE when the API cannot be reached within startTimeoutMs, and leaves nothing running', async () => {
    const gone = await startKubeApi();
    const kubeConfig = kubeConfigFor(gone);
    await gone.close();
    const h = await setup({ options: { kubeConfig } });
    const started = h.src.start();
    started.catch(() => undefined);
    await h.timers.waitFor(isBackoff, RESOURCES.length); // every list refused once
    const [deadline] = h.timers.find((ms) => ms === START_TIMEOUT_MS);
    h.timers.fire(deadline);
    const err = await started.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isWardError(err, 'WARD_KUBE_UNAVAILABLE')).toBe(true);
    expect((err as Error).message).toMatch(/did not answer within 20000 ms: could not list pods \(.*ECONNREFUSED.*\), services/);
    expect(h.src.status().informers.every((i) => i.state === 'closed')).toBe(true);
    expect(h.timers.find((ms) => isBackoff(ms) || isDebounce(ms))).toEqual([]);
  });

  it('close() stops every watch and timer, emits nothing afterwards, and is idempotent', async () => {
    const h = await setup();
    await h.src.start();
    await watching(h.api);
    h.api.create(appPod('web-2', '10.1.0.2'));
    await h.timers.waitFor(isDebounce);
    const closing = h.src.close();
    expect(h.src.close()).toBe(closing);
    await closing;
    expect(h.timers.find(isDebounce)).toEqual([]);
    await vi.waitFor(() => expect(h.api.openWatches).toBe(0), { timeout: 10_000, interval: 5 });
    h.api.create(appPod('web-3', '10.1.0.3'));
    h.api.dropWatches();
    expect(h.updates).toEqual([]);
    expect(h.src.status().informers.every((i) => i.state === 'closed')).toBe(true);
  });

  it('close() during start() rejects it', async () => {
    const h = await setup();
    const started = h.src.start();
    await h.src.close();
    await expect(started).rejects.toMatchObject({ code: 'WARD_KUBE_UNAVAILABLE' });
  });

  it('every request the source made is one KUBE_API_USAGE grants the control plane', async () => {
    const h = await setup();
    h.api.failNext(1, 500, (r) => r.resource === 'services' && r.verb === 'list');
    const started = h.src.start();
    h.timers.fire((await h.timers.waitFor(isBackoff))[0]);
    await started;
    await watching(h.api);
    h.api.create(appPod('web-2', '10.1.0.2'));
    await settle(h);
    h.api.dropWatches();
    await watching(h.api);
    expect(h.api.requests.length).toBeGreaterThan(12);
    expect(h.api.requests.filter((r) => !usageAllows(r))).toEqual([]);
    expect(new Set(h.api.requests.map((r) => `${r.group}/${r.resource} ${r.verb}`))).toEqual(
      new Set(RESOURCES.flatMap((r) => {
        const group = r === 'endpointslices' ? 'discovery.k8s.io' : r === 'ingresses' ? 'networking.k8s.io' : r === 'authorizationpolicies' ? 'security.ward.dev' : '';
        return [`${group}/${r} list`, `${group}/${r} watch`];
      })),
    );
  });
});
