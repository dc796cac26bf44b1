/**
 * KubeSecretCertificates against the test Kubernetes API server (test/helpers/kube-api.ts) with the
 * real @kubernetes/client-node informer: Secrets listed and watched over HTTP, certificates judged
 * by a real CertificateStore and served in real TLS handshakes on 127.0.0.1 (SNI). Certificates
 * come from a Ward hierarchy minted per run (LeafSigner.signServerName: DNS names, serverAuth).
 * No sleeps: every wait is for an event (the store's loaded/refused, this class's host/synced/
 * retrying, or the API server's nextRequest), bounded by a timeout.
 */
import { EventEmitter, once } from 'node:events';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { Registry } from 'prom-client';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { createLogger } from '../core/logger.js';
import { serveSni, sniClient } from '../test/helpers/sni-client.js';
import { serverNamePki } from '../test/helpers/pki.js';
import { kubeConfigFor, startKubeApi, type KubeApiServer, type KubeRequestRecord } from '../test/helpers/kube-api.js';
import { CertificateStore, type CertificateSource } from './certificates.js';
import { KubeSecretCertificates, TLS_SECRET_FIELD_SELECTOR, type KubeSecretCertificatesOptions, type SecretHostStatus } from './kube-secrets.js';

const NS = 'ward-system';
const SHOP = 'shop.example.com';
const TLS_OPTIONS = { minVersion: 'TLSv1.2' } as const;
const WAIT_MS = 10_000;

const pki = serverNamePki();
type Pair = ReturnType<typeof pki.issue>;

const b64 = (s: string): string => Buffer.from(s).toString('base64');

function tlsSecret(name: string, pair: Pair, o: { namespace?: string; type?: string; data?: Record<string, string> } = {}) {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name, namespace: o.namespace ?? NS },
    type: o.type ?? 'kubernetes.io/tls',
    data: o.data ?? { 'tls.crt': b64(pair.chainPem), 'tls.key': b64(pair.keyPem) },
  };
}

interface Setup {
  api: KubeApiServer;
  store: CertificateStore;
  kube: KubeSecretCertificates;
  registry: Registry;
  logs: Record<string, unknown>[];
  rawLogs: string[];
}

async function setup(o: { api?: KubeApiServer; sources?: CertificateSource[]; kube?: Partial<KubeSecretCertificatesOptions>; before?: (api: KubeApiServer) => void } = {}): Promise<Setup> {
  const api = o.api ?? (await startKubeApi());
  onTestFinished(() => api.close());
  const rawLogs: string[] = [];
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (s: string) => void (rawLogs.push(s), logs.push(JSON.parse(s))) } });
  const registry = new Registry();
  const store = new CertificateStore({ sources: o.sources ?? [], tls: TLS_OPTIONS, logger, registry, watch: false, pollIntervalMs: 0 });
  await store.start();
  onTestFinished(() => store.close());
  o.before?.(api);
  const kube = new KubeSecretCertificates({
    kubeConfig: kubeConfigFor(api),
    namespace: NS,
    store,
    logger,
    registry,
    backoff: { initialMs: 20, maxMs: 80 },
    random: () => 0.5,
    ...o.kube,
  });
  onTestFinished(() => kube.close());
  return { api, store, kube, registry, logs, rawLogs };
}

/** The next event of that name whose arguments satisfy `match` (bounded; no sleeps). */
async function until<T extends unknown[]>(emitter: EventEmitter, event: string, match: (...args: T) => boolean = () => true, ms = WAIT_MS): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out waiting for '${event}'`));
    }, ms);
    const on = (...args: unknown[]) => {
      if (!match(...(args as T))) return;
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(args as T);
    };
    emitter.on(event, on);
  });
}

/** Waits for `host` to reach `state` (now or by a later 'host' event). */
async function hostState(kube: KubeSecretCertificates, host: string, state: SecretHostStatus['state']): Promise<SecretHostStatus> {
  const waiting = until<[SecretHostStatus]>(kube as unknown as EventEmitter, 'host', (s) => s.host === host && s.state === state);
  const now = kube.status().hosts.find((h) => h.host === host);
  if (now?.state === state) {
    waiting.catch(() => undefined);
    return now;
  }
  return (await waiting)[0];
}

const serve = (store: CertificateStore): Promise<number> => serveSni(store.sniCallback(), TLS_OPTIONS);

const { connect, handshake, echo } = sniClient(() => pki.rootPem);

/** The API server's next request matching `filter`, bounded in time. */
async function nextRequest(api: KubeApiServer, filter: (r: KubeRequestRecord) => boolean): Promise<KubeRequestRecord> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for a request (${filter.name})`)), WAIT_MS)));
  try {
    return await Promise.race([api.nextRequest(filter), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Waits until the server has the watch stream open (nextRequest resolves when a request arrives,
 * before its stream is registered, and dropWatches() ends only registered ones). Only polling can
 * tell, hence vi.waitFor with a bound.
 */
async function watchOpen(api: KubeApiServer): Promise<void> {
  await vi.waitFor(() => expect(api.openWatches).toBe(1), { timeout: WAIT_MS, interval: 5 });
}

const secretRequests = (api: KubeApiServer): KubeRequestRecord[] => api.requests.filter((r) => r.resource === 'secrets');
const isList = (r: KubeRequestRecord): boolean => r.resource === 'secrets' && r.verb === 'list';
const isWatch = (r: KubeRequestRecord): boolean => r.resource === 'secrets' && r.verb === 'watch';

/** Every request this class made: Secrets of the ingress's namespace only, list or watch, TLS type only. */
function expectOnlyOwnNamespace(api: KubeApiServer): void {
  expect(api.requests.length).toBeGreaterThan(0);
  for (const r of api.requests) {
    expect({ resource: r.resource, group: r.group, namespace: r.namespace, verb: r.verb, name: r.name, fieldSelector: r.query?.fieldSelector }).toEqual({
      resource: 'secrets',
      group: '',
      namespace: NS,
      verb: expect.stringMatching(/^(list|watch)$/),
      name: undefined,
      fieldSelector: TLS_SECRET_FIELD_SELECTOR,
    });
  }
}

describe('KubeSecretCertificates: serving TLS Secrets', () => {
  it('serves a Secret of its namespace in real handshakes (SNI); waits for the first list; keys never logged', async () => {
    const shop = pki.issue([SHOP]);
    const { api, store, kube, logs, rawLogs } = await setup({ before: (a) => void a.create(tlsSecret('shop-tls', shop)) });
    const port = await serve(store);
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    expect(kube.problems()).toEqual([`no certificate for ${SHOP}: waiting for the first list of TLS Secrets in namespace ${NS}`]);

    const loaded = until(store, 'loaded');
    kube.start();
    expect(await loaded).toEqual([SHOP]);
    expect(await handshake(port, SHOP)).toBe(shop.fingerprint);
    expect(store.select(SHOP)).toMatchObject({ source: `Secret ${NS}/shop-tls`, fingerprint: shop.fingerprint });
    expect(kube.problems()).toEqual([]);
    expect(kube.status()).toEqual({ namespace: NS, synced: true, restarts: 0, hosts: [{ host: SHOP, secret: `${NS}/shop-tls`, state: 'served', fingerprint: shop.fingerprint }] });
    // An unknown name still gets no certificate.
    expect(await handshake(port, 'other.example.com')).toMatch(/^error: /);
    expect(logs.filter((l) => l.msg === 'loaded certificate')).toEqual([expect.objectContaining({ host: SHOP, file: `Secret ${NS}/shop-tls` })]);
    const text = rawLogs.join('');
    expect(text).not.toMatch(/PRIVATE KEY|BEGIN/);
    expect(text).not.toContain(b64(shop.keyPem).slice(0, 40));
    expect(text).not.toContain(b64(shop.chainPem).slice(0, 40));
    expectOnlyOwnNamespace(api);
  });

  it('never reads another namespace: a same-named Secret elsewhere is not served, and every request names the ingress namespace', async () => {
    const elsewhere = pki.issue([SHOP]);
    const { api, store, kube } = await setup({
      before: (a) => {
        a.create(tlsSecret('shop-tls', elsewhere, { namespace: 'default' }));
        a.create(tlsSecret('shop-tls', elsewhere, { namespace: 'kube-system' }));
      },
    });
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    kube.start();
    const missing = await hostState(kube, SHOP, 'missing');
    expect(missing.reason).toBe(`Secret ${NS}/shop-tls not found (a Secret of type kubernetes.io/tls in the ingress's namespace)`);
    expect(store.select(SHOP)).toBeUndefined();
    expect(kube.problems()).toEqual([`no certificate for ${SHOP}: Secret ${NS}/shop-tls not found (a Secret of type kubernetes.io/tls in the ingress's namespace)`]);

    // Changes elsewhere are never seen; the one in the ingress's namespace is.
    const mine = pki.issue([SHOP]);
    api.update(tlsSecret('shop-tls', pki.issue([SHOP]), { namespace: 'default' }));
    const loaded = until(store, 'loaded');
    api.create(tlsSecret('shop-tls', mine));
    await loaded;
    expect(store.select(SHOP)?.fingerprint).toBe(mine.fingerprint);
    expectOnlyOwnNamespace(api);
  });

  it('hot reload: an updated Secret goes to new handshakes; a connection opened before keeps its certificate', async () => {
    const first = pki.issue([SHOP]);
    const { api, store, kube } = await setup({ before: (a) => void a.create(tlsSecret('shop-tls', first)) });
    const port = await serve(store);
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    kube.start();
    await hostState(kube, SHOP, 'served');
    const before = await connect(port, SHOP);
    expect(await echo(before, 'one')).toBe('one');

    const second = pki.issue([SHOP]);
    const loaded = until(store, 'loaded');
    api.update(tlsSecret('shop-tls', second));
    await loaded;
    expect(await handshake(port, SHOP)).toBe(second.fingerprint);
    expect(await echo(before, 'two')).toBe('two');
    expect(before.getPeerCertificate().fingerprint256).toBe(first.fingerprint);
    expect(kube.status().hosts).toEqual([{ host: SHOP, secret: `${NS}/shop-tls`, state: 'served', fingerprint: second.fingerprint }]);
  });

  it('a bad update is refused and the old certificate kept (stale, not a readiness problem); a good one after it is served', async () => {
    const good = pki.issue([SHOP]);
    const { api, store, kube, logs } = await setup({ before: (a) => void a.create(tlsSecret('shop-tls', good)) });
    const port = await serve(store);
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    kube.start();
    await hostState(kube, SHOP, 'served');

    // A certificate for another name: the store refuses it.
    const refused = until(store, 'refused');
    api.update(tlsSecret('shop-tls', pki.issue(['other.example.com'])));
    expect((await refused)[1]).toBe('certificate does not cover shop.example.com; its DNS names: other.example.com');
    const stale = await hostState(kube, SHOP, 'stale');
    expect(stale.reason).toBe(`Secret ${NS}/shop-tls: refused: certificate does not cover shop.example.com; its DNS names: other.example.com; still serving the previous certificate`);
    expect(await handshake(port, SHOP)).toBe(good.fingerprint);
    expect(kube.problems()).toEqual([]);

    // Keys missing, or not base64: judged here, and the old one still serves.
    api.update(tlsSecret('shop-tls', good, { data: { 'tls.crt': b64(good.chainPem) } }));
    expect((await until<[SecretHostStatus]>(kube as unknown as EventEmitter, 'host', (s) => s.reason?.includes('has no tls.key') === true))[0].state).toBe('stale');
    api.update(tlsSecret('shop-tls', good, { data: { 'tls.crt': '%%%', 'tls.key': b64(good.keyPem) } }));
    await until<[SecretHostStatus]>(kube as unknown as EventEmitter, 'host', (s) => s.reason?.includes('tls.crt is not base64') === true);
    expect(await handshake(port, SHOP)).toBe(good.fingerprint);

    const next = pki.issue([SHOP]);
    const loaded = until(store, 'loaded');
    api.update(tlsSecret('shop-tls', next));
    await loaded;
    expect(await hostState(kube, SHOP, 'served')).toMatchObject({ fingerprint: next.fingerprint });
    expect(await handshake(port, SHOP)).toBe(next.fingerprint);
    const warnings = logs.filter((l) => l.component === 'ingress.kube-secrets' && l.level === 40).map((l) => l.reason);
    expect(warnings).toEqual([
      expect.stringMatching(/refused: certificate does not cover/),
      expect.stringMatching(/has no tls\.key \(a kubernetes\.io\/tls Secret holds both, base64\)/),
      expect.stringMatching(/tls\.crt is not base64/),
    ]);
  });

  it('a Secret missing its key, or of another type, is not served: a clear log line and a readiness reason', async () => {
    const pair = pki.issue(['a.example.com']);
    const { store, kube, logs } = await setup({
      before: (a) => {
        a.create(tlsSecret('no-key', pair, { data: { 'tls.crt': b64(pair.chainPem) } }));
        a.create(tlsSecret('opaque', pair, { type: 'Opaque' }));
      },
    });
    kube.setWanted(new Map([['a.example.com', 'no-key'], ['b.example.com', 'opaque'], ['c.example.com', 'Not_A_Name']]));
    kube.start();
    await until(kube as unknown as EventEmitter, 'synced');
    expect(kube.problems()).toEqual([
      `no certificate for a.example.com: Secret ${NS}/no-key: has no tls.key (a kubernetes.io/tls Secret holds both, base64)`,
      // The field selector keeps other types out of the ingress altogether: not found as a TLS Secret.
      `no certificate for b.example.com: Secret ${NS}/opaque not found (a Secret of type kubernetes.io/tls in the ingress's namespace)`,
      'no certificate for c.example.com: the route names a TLS Secret whose name is not a valid Kubernetes name',
    ]);
    expect(store.list()).toEqual([]);
    const lines = logs.filter((l) => l.component === 'ingress.kube-secrets' && l.level === 40).map((l) => [l.host, l.msg]);
    expect(logs.filter((l) => l.host === 'a.example.com' && l.level === 40).map((l) => [l.tlsSecret, l.state])).toEqual([[`${NS}/no-key`, 'invalid']]);
    expect(lines).toEqual([
      // Known at once (setWanted); the others once the Secrets are listed.
      ['c.example.com', 'cannot serve c.example.com from its TLS Secret: the route names a TLS Secret whose name is not a valid Kubernetes name'],
      ['a.example.com', `cannot serve a.example.com from its TLS Secret: Secret ${NS}/no-key: has no tls.key (a kubernetes.io/tls Secret holds both, base64)`],
      ['b.example.com', `cannot serve b.example.com from its TLS Secret: Secret ${NS}/opaque not found (a Secret of type kubernetes.io/tls in the ingress's namespace)`],
    ]);
  });

  it('a deleted Secret stops its host being served and makes it a readiness reason; re-created, it is served again', async () => {
    const pair = pki.issue([SHOP]);
    const { api, store, kube } = await setup({ before: (a) => void a.create(tlsSecret('shop-tls', pair)) });
    const port = await serve(store);
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    kube.start();
    await hostState(kube, SHOP, 'served');

    api.delete('v1', 'Secret', 'shop-tls', NS);
    await hostState(kube, SHOP, 'missing');
    expect(store.select(SHOP)).toBeUndefined();
    expect(await handshake(port, SHOP)).toMatch(/^error: /);
    expect(kube.problems()).toEqual([`no certificate for ${SHOP}: Secret ${NS}/shop-tls not found (a Secret of type kubernetes.io/tls in the ingress's namespace)`]);

    const again = pki.issue([SHOP]);
    api.create(tlsSecret('shop-tls', again));
    await hostState(kube, SHOP, 'served');
    expect(await handshake(port, SHOP)).toBe(again.fingerprint);
  });

  it('a host that goes away and comes back with the same Secret (an Ingress deleted and re-applied) is served again', async () => {
    const shop = pki.issue([SHOP]);
    const { store, kube } = await setup({ before: (api) => api.create(tlsSecret('shop-tls', shop)) });
    const port = await serve(store);
    kube.start();
    await until(kube as unknown as EventEmitter, 'synced');
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    expect(await handshake(port, SHOP)).toBe(shop.fingerprint);
    kube.setWanted(new Map());
    expect(store.served(SHOP)).toBeUndefined();
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    expect((await hostState(kube, SHOP, 'served')).state).toBe('served');
    expect(await handshake(port, SHOP)).toBe(shop.fingerprint);
  });

  it('follows the wanted set: hosts added, removed, moved to another Secret; a static source keeps its host', async () => {
    const a = pki.issue(['a.example.com']);
    const a2 = pki.issue(['a.example.com']);
    const wild = pki.issue(['*.apps.example.com']);
    const { store, kube } = await setup({
      sources: [{ host: 'static.example.com', internal: true }],
      before: (api) => {
        api.create(tlsSecret('a-tls', a));
        api.create(tlsSecret('a2-tls', a2));
        api.create(tlsSecret('wild-tls', wild));
      },
    });
    const port = await serve(store);
    kube.start();
    await until(kube as unknown as EventEmitter, 'synced');
    kube.setWanted(new Map([['a.example.com', 'a-tls'], ['*.apps.example.com', 'wild-tls'], ['static.example.com', 'a-tls'], ['*.com', 'wild-tls']]));
    expect(kube.status().hosts.map((h) => [h.host, h.state, h.reason])).toEqual([
      ['a.example.com', 'served', undefined],
      ['*.apps.example.com', 'served', undefined],
      // An internal-name source: the Secret is not read for it, even before its certificate arrives.
      ['static.example.com', 'static', 'the host is served from a --cert, --pfx or --internal-cert source; its TLS Secret is not read'],
      // A route host the store cannot serve (a wildcard of a top-level domain).
      ['*.com', 'invalid', 'the host cannot have a certificate (a wildcard needs two labels after "*.")'],
    ]);
    expect(kube.problems()).toEqual(['no certificate for *.com: the host cannot have a certificate (a wildcard needs two labels after "*.")']);
    expect(await handshake(port, 'x.apps.example.com')).toBe(wild.fingerprint);

    kube.setWanted(new Map([['a.example.com', 'a2-tls']]));
    expect(store.select('a.example.com')).toMatchObject({ fingerprint: a2.fingerprint, source: `Secret ${NS}/a2-tls` });
    expect(store.select('x.apps.example.com')).toBeUndefined();
    expect(await handshake(port, 'x.apps.example.com')).toMatch(/^error: /);
    expect(kube.status().hosts.map((h) => [h.host, h.state])).toEqual([['a.example.com', 'served']]);
    kube.setWanted(new Map());
    expect(store.list()).toEqual([]);
    expect(kube.problems()).toEqual([]);
  });
});

describe('KubeSecretCertificates: the informer across failures', () => {
  it('a dropped watch resumes from where it was (no relist) and keeps following changes', async () => {
    const pair = pki.issue([SHOP]);
    const { api, store, kube } = await setup({ kube: { minWatchMs: 0 }, before: (a) => void a.create(tlsSecret('shop-tls', pair)) });
    const watching = nextRequest(api, isWatch);
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    kube.start();
    await hostState(kube, SHOP, 'served');
    const first = await watching;
    const lists = api.requests.filter(isList).length;

    const rewatch = nextRequest(api, isWatch);
    await watchOpen(api);
    api.dropWatches();
    const second = await rewatch;
    expect(second.query?.resourceVersion).toBeDefined();
    expect(Number(second.query?.resourceVersion)).toBeGreaterThanOrEqual(Number(first.query?.resourceVersion));
    const next = pki.issue([SHOP]);
    const loaded = until(store, 'loaded');
    api.update(tlsSecret('shop-tls', next));
    await loaded;
    expect(store.select(SHOP)?.fingerprint).toBe(next.fingerprint);
    expect(api.requests.filter(isList).length).toBe(lists);
    expect(kube.status().restarts).toBe(0);
    expectOnlyOwnNamespace(api);
  });

  it('410 on a resumed watch: the informer relists by itself and converges', async () => {
    const a = pki.issue(['a.example.com']);
    const { api, store, kube } = await setup({ kube: { minWatchMs: 0 }, before: (s) => void s.create(tlsSecret('a-tls', a)) });
    const watching = nextRequest(api, isWatch);
    kube.setWanted(new Map([['a.example.com', 'a-tls']]));
    kube.start();
    await hostState(kube, 'a.example.com', 'served');
    await watching;
    const lists = api.requests.filter(isList).length;
    // Move the global resourceVersion past the informer's (an object it does not watch), compact,
    // and end its watch: it resumes from a compacted resourceVersion.
    api.create({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'y', namespace: 'default' } });
    api.compact();
    const relisted = until(kube as unknown as EventEmitter, 'synced');
    await watchOpen(api);
    api.dropWatches();
    await relisted;
    expect(api.requests.filter(isList).length).toBe(lists + 1);
    expect(kube.status().restarts).toBe(0);
    const a2 = pki.issue(['a.example.com']);
    const loaded = until(store, 'loaded');
    api.update(tlsSecret('a-tls', a2));
    await loaded;
    expect(store.select('a.example.com')?.fingerprint).toBe(a2.fingerprint);
  });

  it('failures (500) restart a fresh informer after a capped, fully jittered backoff; certificates in use stay', async () => {
    const pair = pki.issue([SHOP]);
    const { api, store, kube, registry, logs } = await setup({ kube: { minWatchMs: 0 }, before: (a) => void a.create(tlsSecret('shop-tls', pair)) });
    kube.setWanted(new Map([[SHOP, 'shop-tls']]));
    api.failNext(4, 500, isList);
    const delays: number[] = [];
    kube.on('retrying', (r) => delays.push(r.delayMs));
    kube.start();
    await hostState(kube, SHOP, 'served');
    // random() = 0.5 of min(80, 20·2^(n-1)): 10, 20, 40, then capped at 40.
    expect(delays).toEqual([10, 20, 40, 40]);
    expect(kube.status()).toMatchObject({ synced: true, restarts: 4, lastError: expect.stringMatching(/500/) });
    expect(((await registry.getSingleMetric('ward_ingress_secret_watch_restarts_total')?.get())?.values ?? [])[0]?.value).toBe(4);
    expect(logs.filter((l) => l.msg === 'the TLS Secret list/watch failed; certificates in use stay; restarting').map((l) => l.attempt)).toEqual([1, 2, 3, 4]);

    // A failing watch: restarted with a fresh list; the certificate keeps being served meanwhile.
    const restarted = until<[{ attempt: number; delayMs: number; error: string }]>(kube as unknown as EventEmitter, 'retrying');
    const relisted = nextRequest(api, isList);
    const resynced = until(kube as unknown as EventEmitter, 'synced');
    api.failNext(1, 500, isWatch);
    await watchOpen(api);
    api.dropWatches();
    expect((await restarted)[0].error).toMatch(/500/);
    expect(store.select(SHOP)?.fingerprint).toBe(pair.fingerprint);
    await relisted;
    await resynced;
    expect(kube.problems()).toEqual([]);
    expectOnlyOwnNamespace(api);
  });

  it('an API server down keeps the certificates served; once it is back, a delete and an update made meanwhile converge', async () => {
    const a = pki.issue(['a.example.com']);
    const b = pki.issue(['b.example.com']);
    const { api, store, kube } = await setup({
      before: (s) => {
        s.create(tlsSecret('a-tls', a));
        s.create(tlsSecret('b-tls', b));
      },
    });
    const port = await serve(store);
    kube.setWanted(new Map([['a.example.com', 'a-tls'], ['b.example.com', 'b-tls']]));
    kube.start();
    await hostState(kube, 'a.example.com', 'served');
    await hostState(kube, 'b.example.com', 'served');
    const retrying = until(kube as unknown as EventEmitter, 'retrying');
    await api.stop();
    await retrying;
    // Static stability: the cache and what is served survive the outage.
    expect(await handshake(port, 'a.example.com')).toBe(a.fingerprint);
    expect(kube.problems()).toEqual([]);
    const b2 = pki.issue(['b.example.com']);
    api.delete('v1', 'Secret', 'a-tls', NS);
    api.update(tlsSecret('b-tls', b2));
    api.compact();
    const loaded = until(store, 'loaded', (h) => h === 'b.example.com');
    const gone = hostState(kube, 'a.example.com', 'missing');
    await api.restart();
    await loaded;
    await gone;
    expect(await handshake(port, 'b.example.com')).toBe(b2.fingerprint);
    expect(store.select('a.example.com')).toBeUndefined();
    expectOnlyOwnNamespace(api);
  });

  it('a list that gets no answer is aborted at listTimeoutMs (through the request signal) and retried later', async () => {
    // An API server that accepts and never answers.
    const sockets = new Set<Socket>();
    const hung = createNetServer((sock) => void sockets.add(sock));
    hung.listen(0, '127.0.0.1');
    await once(hung, 'listening');
    onTestFinished(() => {
      for (const x of sockets) x.destroy();
      return new Promise<void>((resolve) => hung.close(() => resolve()));
    });
    const store = new CertificateStore({ sources: [], tls: TLS_OPTIONS, logger: createLogger({ level: 'silent' }), watch: false, pollIntervalMs: 0 });
    await store.start();
    onTestFinished(() => store.close());
    const kube = new KubeSecretCertificates({
      kubeConfig: kubeConfigFor({ url: `http://127.0.0.1:${(hung.address() as AddressInfo).port}` }),
      namespace: NS,
      store,
      logger: createLogger({ level: 'silent' }),
      listTimeoutMs: 100,
      backoff: { initialMs: 10_000, maxMs: 10_000 },
    });
    onTestFinished(() => kube.close());
    const retrying = until<[{ error: string }]>(kube as unknown as EventEmitter, 'retrying');
    kube.start();
    expect((await retrying)[0].error).toMatch(/took over 100 ms/);
    expect(sockets.size).toBe(1);
  });

  it('a watch that ends at once, again and again, is a failure with backoff rather than a tight loop', async () => {
    const clock = new ManualClock(Date.now());
    const { api, kube } = await setup({ kube: { clock, minWatchMs: 60_000 } });
    const watching = nextRequest(api, isWatch);
    kube.start();
    await watching;
    const retrying = until<[{ error: string }]>(kube as unknown as EventEmitter, 'retrying');
    await watchOpen(api);
    api.dropWatches();
    expect((await retrying)[0].error).toBe('the watch ended 0 ms after it started');
    await until(kube as unknown as EventEmitter, 'synced');
    expectOnlyOwnNamespace(api);
  });

  it('close() stops everything: no request after it, and it is idempotent', async () => {
    const { api, kube } = await setup();
    const watching = nextRequest(api, isWatch);
    kube.start();
    await watching;
    await kube.close();
    await kube.close();
    // The aborted watch reaches the server asynchronously.
    await vi.waitFor(() => expect(api.openWatches).toBe(0), { timeout: WAIT_MS });
    const count = secretRequests(api).length;
    api.create(tlsSecret('late', pki.issue([SHOP])));
    kube.setWanted(new Map([[SHOP, 'late']]));
    kube.start();
    expect(kube.status().hosts).toEqual([]);
    expect(secretRequests(api).length).toBe(count);
  });

  it('refuses a namespace that is not a namespace name', async () => {
    const api = await startKubeApi();
    onTestFinished(() => api.close());
    const logger = createLogger({ level: 'silent' });
    const store = new CertificateStore({ sources: [], tls: TLS_OPTIONS, logger, watch: false, pollIntervalMs: 0 });
    expect(() => new KubeSecretCertificates({ kubeConfig: kubeConfigFor(api), namespace: '../ward-system', store, logger })).toThrow(/not a valid namespace name/);
  });
});
