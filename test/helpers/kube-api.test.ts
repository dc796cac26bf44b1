/**
 * The test Kubernetes API server against clients nobody here wrote: @kubernetes/client-node 1.4.0
 * (informers, Watch, typed APIs) and kubectl v1.32, plus the protocol details Ward's tests rely on
 * (resourceVersions, 410 Gone, bookmarks, selectors, patches, Status bodies, TokenReview).
 * No sleeps: every wait is for an event, a request or a stream end.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ApiException, AuthenticationV1Api, CoreV1Api, makeInformer, PatchStrategy, setHeaderOptions, Watch,
  type Informer, type KubeConfig, type ObjectCache, type V1Pod,
} from '@kubernetes/client-node';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  kubeConfigFor, runKubectl, startKubeApi, writeKubeconfig, type KubeApiOptions, type KubeApiServer, type KubeObject,
} from './kube-api.js';
import { tempDir } from './openssl.js';

async function apiServer(o: KubeApiOptions = {}): Promise<KubeApiServer> {
  const s = await startKubeApi(o);
  onTestFinished(() => s.close());
  return s;
}

function pod(name: string, labels: Record<string, string> = {}, namespace = 'default', extra: Partial<KubeObject> = {}): KubeObject & V1Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels },
    spec: { containers: [{ name: 'app', image: 'app:1' }] },
    ...extra,
  } as KubeObject & V1Pod;
}

/** Everything an informer reports, as `event name` lines; until() resolves when a line matches. */
class InformerLog {
  readonly lines: string[] = [];
  readonly errors: unknown[] = [];
  readonly #waiters: { match: (l: string) => boolean; resolve: (l: string) => void }[] = [];

  constructor(inf: Informer<V1Pod>) {
    for (const ev of ['add', 'update', 'delete'] as const) inf.on(ev, (o: V1Pod) => this.#push(`${ev} ${o.metadata?.name ?? '?'}`));
    inf.on('connect', () => this.#push('connect'));
    inf.on('error', (e: unknown) => {
      this.errors.push(e);
      this.#push('error');
    });
  }

  #push(line: string): void {
    this.lines.push(line);
    for (let i = 0; i < this.#waiters.length; i++) {
      if (this.#waiters[i].match(line)) {
        this.#waiters.splice(i, 1)[0].resolve(line);
        i--;
      }
    }
  }

  /** The next line (from now on) equal to `line`. */
  next(line: string): Promise<string> {
    return new Promise((resolve) => this.#waiters.push({ match: (l) => l === line, resolve }));
  }

  /** A line equal to `line`, already seen or still to come. */
  until(line: string): Promise<string> {
    return this.lines.includes(line) ? Promise.resolve(line) : this.next(line);
  }

  objects(): string[] {
    return this.lines.filter((l) => /^(add|update|delete) /.test(l));
  }
}

/** A pod informer of the default namespace, stopped when the test ends. */
function podInformer(kc: KubeConfig, labelSelector?: string): { inf: Informer<V1Pod> & ObjectCache<V1Pod>; log: InformerLog } {
  const core = kc.makeApiClient(CoreV1Api);
  const list = () => core.listNamespacedPod(labelSelector === undefined ? { namespace: 'default' } : { namespace: 'default', labelSelector });
  const inf = makeInformer(kc, '/api/v1/namespaces/default/pods', list, labelSelector);
  const log = new InformerLog(inf);
  onTestFinished(() => inf.stop());
  return { inf, log };
}

interface WatchLine { type: string; object: Record<string, unknown> & { metadata?: Record<string, unknown>; code?: number; reason?: string } }

/** A raw watch over fetch: every line, and a promise for the stream's end. */
async function rawWatch(url: string): Promise<{ lines: WatchLine[]; status: number; ended: Promise<void>; next(n: number): Promise<WatchLine[]>; abort(): void }> {
  const ac = new AbortController();
  onTestFinished(() => ac.abort());
  const res = await fetch(url, { signal: ac.signal });
  const lines: WatchLine[] = [];
  const waiters: { n: number; resolve: (l: WatchLine[]) => void }[] = [];
  const ended = (async () => {
    let buf = '';
    const body = res.body;
    if (body === null) return;
    try {
      for await (const chunk of body) {
        buf += Buffer.from(chunk).toString('utf8');
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          lines.push(JSON.parse(buf.slice(0, i)) as WatchLine);
          buf = buf.slice(i + 1);
          for (const w of [...waiters]) if (lines.length >= w.n) waiters.splice(waiters.indexOf(w), 1)[0].resolve(lines.slice(0, w.n));
        }
      }
    } catch {
      // aborted by the test
    }
  })();
  return {
    lines,
    status: res.status,
    ended,
    next: (n) => (lines.length >= n ? Promise.resolve(lines.slice(0, n)) : new Promise((resolve) => waiters.push({ n, resolve }))),
    abort: () => ac.abort(),
  };
}

async function call(s: KubeApiServer, method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; json: Record<string, unknown>; headers: Headers }> {
  const init: RequestInit = { method, headers: { 'Content-Type': contentType } };
  if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
  const res = await fetch(`${s.url}${path}`, init);
  const text = await res.text();
  return { status: res.status, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>), headers: res.headers };
}

describe('with @kubernetes/client-node', () => {
  it('an informer with a label selector gets ADDED/MODIFIED/DELETED for the pods it selects, and only those', async () => {
    const s = await apiServer();
    const kc = kubeConfigFor(s);
    const core = kc.makeApiClient(CoreV1Api);
    s.create(pod('seed', { app: 'web' }));
    const { inf, log } = podInformer(kc, 'app=web');
    await inf.start();
    await log.until('add seed');

    await core.createNamespacedPod({ namespace: 'default', body: pod('a', { app: 'web' }) });
    await core.createNamespacedPod({ namespace: 'default', body: pod('b', { app: 'db' }) });
    await log.until('add a');
    s.patch('v1', 'Pod', 'a', 'default', { status: { phase: 'Running' } });
    await log.until('update a');
    expect(inf.get('a', 'default')?.status?.phase).toBe('Running');
    s.patch('v1', 'Pod', 'a', 'default', { metadata: { labels: { app: 'other' } } }); // stops matching: DELETED
    await log.until('delete a');
    await core.patchNamespacedPod({ name: 'b', namespace: 'default', body: { metadata: { labels: { app: 'web' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    await log.until('add b'); // starts matching: ADDED
    await core.deleteNamespacedPod({ name: 'b', namespace: 'default' });
    await log.until('delete b');

    expect(log.objects()).toEqual(['add seed', 'add a', 'update a', 'delete a', 'add b', 'delete b']);
    const watches = s.requests.filter((r) => r.resource === 'pods' && r.verb === 'watch');
    expect(watches).toHaveLength(1);
    expect(watches[0]).toMatchObject({ method: 'GET', group: '', version: 'v1', namespace: 'default', query: { labelSelector: 'app=web', watch: 'true' } });
    expect(s.requests.find((r) => r.verb === 'list')?.query?.labelSelector).toBe('app=web');
  });

  it('a watch from a resourceVersion streams exactly the changes after it', async () => {
    const s = await apiServer();
    const kc = kubeConfigFor(s);
    s.create(pod('p1'));
    const from = s.resourceVersion;
    s.create(pod('p2'));
    s.patch('v1', 'Pod', 'p1', 'default', { metadata: { labels: { x: 'y' } } });
    s.delete('v1', 'Pod', 'p2', 'default');
    const after = s.resourceVersion;

    const seen: string[] = [];
    let got!: () => void;
    const three = new Promise<void>((r) => (got = r));
    const w = await new Watch(kc).watch('/api/v1/namespaces/default/pods', { resourceVersion: from }, (type, obj: V1Pod) => {
      seen.push(`${type} ${obj.metadata?.name} ${obj.metadata?.resourceVersion}`);
      if (seen.length === 3) got();
    }, () => undefined);
    onTestFinished(() => w.abort());
    await three;
    expect(seen).toEqual([`ADDED p2 ${Number(from) + 1}`, `MODIFIED p1 ${Number(from) + 2}`, `DELETED p2 ${after}`]);
  });

  it('a dropped watch: the informer watches again from its last resourceVersion, without relisting', async () => {
    const s = await apiServer();
    const { inf, log } = podInformer(kubeConfigFor(s));
    s.create(pod('a'));
    await inf.start();
    await log.until('add a');
    const lastSeen = s.resourceVersion;

    const rewatch = s.nextRequest((r) => r.verb === 'watch');
    s.dropWatches(); // what a server-side watch timeout does
    expect((await rewatch).query?.resourceVersion).toBe(lastSeen);
    s.create(pod('b'));
    await log.until('add b');
    expect(log.lines.filter((l) => l === 'connect')).toHaveLength(2);
    expect(log.errors).toEqual([]);
    expect(s.requests.filter((r) => r.verb === 'list')).toHaveLength(1);
  });

  it('compact(): a watch from a compacted resourceVersion gets 410 Expired, and the informer relists', async () => {
    const s = await apiServer();
    const { inf, log } = podInformer(kubeConfigFor(s), 'app=web');
    s.create(pod('a', { app: 'web' }));
    await inf.start();
    await log.until('add a');

    // While the informer is away, a pod goes and one comes, and etcd compacts past its resourceVersion.
    const aborted = log.next('error');
    await inf.stop();
    await aborted; // stop() itself is reported as an 'error' (an AbortError)
    expect((log.errors[0] as Error).name).toBe('AbortError');
    s.delete('v1', 'Pod', 'a', 'default');
    s.create(pod('c', { app: 'web' }));
    s.compact();
    const relisted = s.nextRequest((r) => r.verb === 'list');
    await inf.start(); // resumes the watch from its old resourceVersion: 410 in the stream
    await relisted;
    await log.until('add c');
    await log.until('delete a'); // found out by the relist
    // list, watch, then (after its stop) a watch answered with the 410 ERROR event, then the relist.
    expect(s.requests.slice(0, 4).map((r) => r.verb)).toEqual(['list', 'watch', 'watch', 'list']);

    // The same from a running informer: a change it cannot see moves the store on, compaction, a dropped watch.
    const relistedAgain = s.nextRequest((r) => r.verb === 'list');
    s.create(pod('unseen', { app: 'db' }));
    s.compact();
    s.dropWatches();
    await relistedAgain;
    s.create(pod('d', { app: 'web' }));
    await log.until('add d');
  });

  it('speaks 410 Gone as the real server: an ERROR event with an Expired Status, then the stream ends', async () => {
    const s = await apiServer();
    s.create(pod('a'));
    const old = s.resourceVersion;
    s.create(pod('b'));
    s.compact();
    const w = await rawWatch(`${s.url}/api/v1/namespaces/default/pods?watch=true&resourceVersion=${old}`);
    expect(w.status).toBe(200);
    await w.ended;
    expect(w.lines).toEqual([{
      type: 'ERROR',
      object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${old} (${s.resourceVersion})`, reason: 'Expired', code: 410 },
    }]);
    // From the current version it is fine.
    const ok = await call(s, 'GET', `/api/v1/namespaces/default/pods?resourceVersion=${old}&resourceVersionMatch=NotOlderThan`);
    expect(ok.status).toBe(410);
    expect(ok.json).toMatchObject({ kind: 'Status', reason: 'Expired', code: 410 });
    expect((await call(s, 'GET', `/api/v1/namespaces/default/pods?resourceVersion=${old}`)).status).toBe(200);
    expect((await call(s, 'GET', `/api/v1/namespaces/default/pods?resourceVersion=${s.resourceVersion}&resourceVersionMatch=NotOlderThan`)).status).toBe(200);
  });

  it('list with resourceVersionMatch=Exact serves the state at that version', async () => {
    const s = await apiServer();
    s.create(pod('a'));
    const rv = s.resourceVersion;
    s.create(pod('b'));
    s.patch('v1', 'Pod', 'a', 'default', { metadata: { labels: { v: '2' } } });
    s.delete('v1', 'Pod', 'a', 'default');
    const then = await call(s, 'GET', `/api/v1/namespaces/default/pods?resourceVersion=${rv}&resourceVersionMatch=Exact`);
    expect(then.json.metadata).toEqual({ resourceVersion: rv });
    expect((then.json.items as KubeObject[]).map((p) => [p.metadata.name, p.metadata.labels])).toEqual([['a', {}]]);
    const now = await call(s, 'GET', '/api/v1/namespaces/default/pods');
    expect((now.json.items as KubeObject[]).map((p) => p.metadata.name)).toEqual(['b']);
    expect(now.json).toMatchObject({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: s.resourceVersion } });
    expect((now.json.items as Record<string, unknown>[])[0].kind).toBeUndefined(); // typed list items carry no kind, as on the real server
  });

  it('restart(): the informer errors out (it does not retry), and once restarted sees what changed meanwhile', async () => {
    const s = await apiServer();
    const kc = kubeConfigFor(s);
    const { inf, log } = podInformer(kc);
    s.create(pod('a'));
    await inf.start();
    await log.until('add a');

    const errored = log.next('error');
    await s.stop();
    await errored;
    expect((log.errors[0] as { code?: string }).code).toBe('ECONNREFUSED');
    s.create(pod('b')); // the store (etcd) lives on while the API server is down
    s.delete('v1', 'Pod', 'a', 'default');
    await s.restart();
    expect(s.url).toBe(kc.getCurrentCluster()?.server);

    await inf.start(); // what Ward's informer owner has to do
    await log.until('add b');
    await log.until('delete a');
    const core = kc.makeApiClient(CoreV1Api);
    expect((await core.readNamespacedPod({ name: 'b', namespace: 'default' })).metadata?.name).toBe('b');
  });

  it('failNext(): the client sees the error with the Status the real server sends', async () => {
    const s = await apiServer();
    const kc = kubeConfigFor(s);
    const core = kc.makeApiClient(CoreV1Api);
    s.create(pod('a'));

    s.failNext(1, 429, (r) => r.verb === 'get' && r.name === 'a');
    const e = await core.readNamespacedPod({ name: 'a', namespace: 'default' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiException);
    const err = e as ApiException<string>;
    expect(err.code).toBe(429);
    expect(err.headers['retry-after']).toBe('1');
    expect(JSON.parse(err.body)).toMatchObject({ kind: 'Status', reason: 'TooManyRequests', code: 429, details: { retryAfterSeconds: 1 } });
    expect((await core.readNamespacedPod({ name: 'a', namespace: 'default' })).metadata?.name).toBe('a');

    // An informer whose list fails reports 'error' and stops: no retry of its own.
    const { inf, log } = podInformer(kc);
    s.failNext(1, 500, (r) => r.verb === 'list');
    const errored = log.next('error');
    await inf.start();
    await errored;
    expect((log.errors[0] as ApiException<string>).code).toBe(500);
    expect(s.requests.filter((r) => r.verb === 'list').map((r) => r.status)).toEqual([500]);
    await inf.start();
    await log.until('add a');

    // A watch answered 503 likewise.
    const erroredAgain = log.next('error');
    s.failNext(1, 503, (r) => r.verb === 'watch');
    s.dropWatches();
    await erroredAgain;
    expect((log.errors[1] as { statusCode?: number }).statusCode).toBe(503);
  });

  it('sends BOOKMARK events: one right after the start, then every interval, with the current resourceVersion', async () => {
    const s = await apiServer({ bookmarkIntervalMs: 20 });
    s.create(pod('a'));
    const w = await rawWatch(`${s.url}/api/v1/namespaces/default/pods?watch=1&allowWatchBookmarks=true&resourceVersion=${s.resourceVersion}`);
    const [first] = await w.next(1);
    expect(first).toEqual({ type: 'BOOKMARK', object: { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: s.resourceVersion } } });
    s.create(pod('b'));
    const rv = s.resourceVersion;
    const lines = await w.next(3);
    expect(lines[1]).toMatchObject({ type: 'ADDED', object: { metadata: { name: 'b', resourceVersion: rv } } });
    expect(lines[2]).toEqual({ type: 'BOOKMARK', object: { kind: 'Pod', apiVersion: 'v1', metadata: { resourceVersion: rv } } });

    // Without allowWatchBookmarks there are none; sendInitialEvents ends its replay with the annotated bookmark.
    const initial = await rawWatch(`${s.url}/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan`);
    const [x, y, end] = await initial.next(3);
    expect([x.type, y.type, end.type]).toEqual(['ADDED', 'ADDED', 'BOOKMARK']);
    expect(end.object.metadata).toEqual({ resourceVersion: rv, annotations: { 'k8s.io/initial-events-end': 'true' } });
  });

  it('ends a watch after timeoutSeconds, cleanly', async () => {
    const s = await apiServer();
    const w = await rawWatch(`${s.url}/api/v1/pods?watch=true&timeoutSeconds=1`);
    expect(s.openWatches).toBe(1);
    await w.ended;
    expect(w.lines).toEqual([]);
    expect(s.openWatches).toBe(0);
  });

  it('answers TokenReview through AuthenticationV1Api.createTokenReview', async () => {
    const s = await apiServer();
    const auth = kubeConfigFor(s).makeApiClient(AuthenticationV1Api);
    s.addToken('proxy-token', {
      audiences: ['ward'],
      user: { username: 'system:serviceaccount:ward-system:ward-proxy', uid: 'sa-uid', extra: { 'authentication.kubernetes.io/pod-name': ['ward-proxy-x'], 'authentication.kubernetes.io/pod-uid': ['pod-uid'] } },
    });

    const ok = await auth.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: 'proxy-token', audiences: ['ward'] } } });
    expect(ok.status).toEqual({
      authenticated: true,
      audiences: ['ward'],
      user: {
        username: 'system:serviceaccount:ward-system:ward-proxy',
        uid: 'sa-uid',
        groups: ['system:serviceaccounts', 'system:serviceaccounts:ward-system', 'system:authenticated'],
        extra: { 'authentication.kubernetes.io/pod-name': ['ward-proxy-x'], 'authentication.kubernetes.io/pod-uid': ['pod-uid'] },
      },
    });

    const unknown = await auth.createTokenReview({ body: { spec: { token: 'forged', audiences: ['ward'] } } });
    expect(unknown.status?.authenticated).not.toBe(true);
    expect(unknown.status?.user).toEqual({});

    const otherAudience = await auth.createTokenReview({ body: { spec: { token: 'proxy-token', audiences: ['vault'] } } });
    expect(otherAudience.status?.authenticated).not.toBe(true);
    expect(otherAudience.status?.error).toBe('[invalid bearer token, token audiences ["ward"] is invalid for the target audiences ["vault"]]');
    // No audiences: reviewed for the API server's own audience, which a ward-only token lacks.
    const noAudience = await auth.createTokenReview({ body: { spec: { token: 'proxy-token' } } });
    expect(noAudience.status?.authenticated).not.toBe(true);

    expect(s.requests.filter((r) => r.resource === 'tokenreviews').map((r) => `${r.verb} ${r.group}`)).toEqual(Array(4).fill('create authentication.k8s.io'));
    expect(s.list('authentication.k8s.io/v1', 'TokenReview')).toEqual([]); // never stored
  });

  it('filters list and watch by label selector (=, ==, !=, in, notin, exists, !key) and field selector', async () => {
    const s = await apiServer();
    const core = kubeConfigFor(s).makeApiClient(CoreV1Api);
    s.create(pod('a', { app: 'web', tier: 'front' }, 'default', { spec: { nodeName: 'n1', containers: [] }, status: { phase: 'Running' } }));
    s.create(pod('b', { app: 'web' }, 'default', { spec: { nodeName: 'n2', containers: [] }, status: { phase: 'Pending' } }));
    s.create(pod('c', { app: 'db', tier: 'back' }, 'other', { spec: { nodeName: 'n1', containers: [] }, status: { phase: 'Running' } }));
    s.create(pod('d', {}, 'other'));
    const names = async (labelSelector?: string, fieldSelector?: string): Promise<string[]> => {
      const params: { labelSelector?: string; fieldSelector?: string } = {};
      if (labelSelector !== undefined) params.labelSelector = labelSelector;
      if (fieldSelector !== undefined) params.fieldSelector = fieldSelector;
      return (await core.listPodForAllNamespaces(params)).items.map((p) => p.metadata?.name ?? '');
    };
    expect(await names('app=web')).toEqual(['a', 'b']);
    expect(await names('app==web,tier')).toEqual(['a']);
    expect(await names('app!=web')).toEqual(['c', 'd']);
    expect(await names('app in (db, web),tier notin (front)')).toEqual(['b', 'c']);
    expect(await names('!tier')).toEqual(['b', 'd']);
    expect(await names(undefined, 'spec.nodeName=n1')).toEqual(['a', 'c']);
    expect(await names(undefined, 'status.phase!=Running')).toEqual(['b', 'd']);
    expect(await names('app=web', 'metadata.name=b,metadata.namespace==default')).toEqual(['b']);
    expect((await core.listNamespacedPod({ namespace: 'other', fieldSelector: 'spec.nodeName=n1' })).items.map((p) => p.metadata?.name)).toEqual(['c']);

    const bad = await call(s, 'GET', '/api/v1/pods?fieldSelector=spec.bogus%3Dx');
    expect(bad.status).toBe(400);
    expect(bad.json).toMatchObject({ kind: 'Status', reason: 'BadRequest', message: 'field label not supported: spec.bogus' });
    expect((await call(s, 'GET', '/api/v1/pods?labelSelector=a%20in%20b')).status).toBe(400);

    const w = await rawWatch(`${s.url}/api/v1/pods?watch=1&labelSelector=app%3Dweb&fieldSelector=spec.nodeName%3Dn1`);
    const [initial] = await w.next(1); // no resourceVersion: the current state first, as synthetic ADDED events
    expect(initial).toMatchObject({ type: 'ADDED', object: { metadata: { name: 'a' } } });
    s.patch('v1', 'Pod', 'b', 'default', { spec: { nodeName: 'n1' } }); // now selected
    s.patch('v1', 'Pod', 'c', 'other', { metadata: { labels: { app: 'web' } } }); // now selected
    s.patch('v1', 'Pod', 'd', 'other', { metadata: { labels: { app: 'web' } } }); // no node: still not
    s.patch('v1', 'Pod', 'a', 'default', { metadata: { labels: { app: 'gone' } } }); // no longer selected
    const lines = await w.next(4);
    expect(lines.slice(1).map((l) => `${l.type} ${String(l.object.metadata?.name)}`)).toEqual(['ADDED b', 'ADDED c', 'DELETED a']);
  });

  it('answers errors with the real server\'s Status objects (404, 409 AlreadyExists/Conflict, 422, 405)', async () => {
    const s = await apiServer();
    const core = kubeConfigFor(s).makeApiClient(CoreV1Api);
    const missing = await call(s, 'GET', '/api/v1/namespaces/default/pods/nope');
    expect(missing).toMatchObject({ status: 404, json: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'pods "nope" not found', reason: 'NotFound', details: { name: 'nope', kind: 'pods' }, code: 404 } });
    const missingIng = await call(s, 'GET', '/apis/networking.k8s.io/v1/namespaces/default/ingresses/nope');
    expect(missingIng.json).toMatchObject({ message: 'ingresses.networking.k8s.io "nope" not found', details: { name: 'nope', group: 'networking.k8s.io', kind: 'ingresses' } });

    const created = await core.createNamespacedPod({ namespace: 'default', body: pod('a') });
    expect(created.metadata).toMatchObject({ name: 'a', namespace: 'default', resourceVersion: s.resourceVersion });
    expect(created.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.status).toEqual({ phase: 'Pending' });
    const again = await call(s, 'POST', '/api/v1/namespaces/default/pods', pod('a'));
    expect(again).toMatchObject({ status: 409, json: { reason: 'AlreadyExists', message: 'pods "a" already exists', code: 409 } });

    const stale = { ...created, metadata: { ...created.metadata, resourceVersion: '1', labels: { x: 'y' } } };
    const conflict = await call(s, 'PUT', '/api/v1/namespaces/default/pods/a', stale);
    expect(conflict).toMatchObject({ status: 409, json: { reason: 'Conflict', message: 'Operation cannot be fulfilled on pods "a": the object has been modified; please apply your changes to the latest version and try again' } });
    const fresh = await core.replaceNamespacedPod({ name: 'a', namespace: 'default', body: { ...created, metadata: { ...created.metadata, labels: { x: 'y' } } } });
    expect(fresh.metadata?.labels).toEqual({ x: 'y' });

    const badName = await call(s, 'POST', '/api/v1/namespaces/default/pods', pod('Not_Valid'));
    expect(badName).toMatchObject({ status: 422, json: { reason: 'Invalid', details: { name: 'Not_Valid', kind: 'Pod', causes: [{ reason: 'FieldValueInvalid', field: 'metadata.name' }] } } });
    expect(String(badName.json.message)).toMatch(/^Pod "Not_Valid" is invalid: metadata.name: Invalid value: "Not_Valid": a lowercase RFC 1123 subdomain/);
    const generated = await call(s, 'POST', '/api/v1/namespaces/default/pods', { ...pod(''), metadata: { generateName: 'web-' } });
    expect(generated.status).toBe(201);
    expect((generated.json.metadata as Record<string, unknown>).name).toMatch(/^web-[a-z0-9]{5}$/);
    expect((await call(s, 'POST', '/apis/authentication.k8s.io/v1/tokenreviews', { spec: {} })).status).toBe(422);
    expect((await call(s, 'GET', '/apis/authentication.k8s.io/v1/tokenreviews')).status).toBe(405);
    expect((await call(s, 'GET', '/api/v1/namespaces/default/widgets')).status).toBe(404);
    const wrongNs = await call(s, 'POST', '/api/v1/namespaces/default/pods', pod('x', {}, 'other'));
    expect(wrongNs).toMatchObject({ status: 400, json: { message: 'the namespace of the provided object does not match the namespace sent on the request' } });
  });

  it('applies merge, strategic merge, JSON and apply patches, and keeps status to its subresource', async () => {
    const s = await apiServer();
    s.create(pod('a', { app: 'web' }, 'default', {
      spec: { containers: [{ name: 'app', image: 'app:1', env: [{ name: 'A', value: '1' }] }, { name: 'side', image: 'side:1' }] },
      status: { phase: 'Running' },
    }));
    const path = '/api/v1/namespaces/default/pods/a';
    const merge = await call(s, 'PATCH', path, { metadata: { labels: { app: null, tier: 'front' }, annotations: { n: '1' } } }, 'application/merge-patch+json');
    expect(merge.status).toBe(200);
    expect((merge.json.metadata as KubeObject['metadata']).labels).toEqual({ tier: 'front' });

    const strategic = await call(s, 'PATCH', path, {
      metadata: { labels: { extra: 'x' } },
      spec: { containers: [{ name: 'app', image: 'app:2', env: [{ name: 'B', value: '2' }] }, { name: 'side', $patch: 'delete' }] },
    }, 'application/strategic-merge-patch+json');
    const spec = strategic.json.spec as { containers: { name: string; image: string; env?: unknown[] }[] };
    expect(spec.containers).toEqual([{ name: 'app', image: 'app:2', env: [{ name: 'A', value: '1' }, { name: 'B', value: '2' }] }]);
    expect((strategic.json.metadata as KubeObject['metadata']).labels).toEqual({ tier: 'front', extra: 'x' });

    const json = await call(s, 'PATCH', path, [{ op: 'test', path: '/metadata/labels/tier', value: 'front' }, { op: 'add', path: '/metadata/labels/j', value: 'p' }, { op: 'remove', path: '/metadata/annotations' }], 'application/json-patch+json');
    expect(json.status).toBe(200);
    expect((json.json.metadata as KubeObject['metadata']).labels).toEqual({ tier: 'front', extra: 'x', j: 'p' });
    const failed = await call(s, 'PATCH', path, [{ op: 'test', path: '/metadata/labels/tier', value: 'back' }], 'application/json-patch+json');
    expect(failed.status).toBe(422);

    // Status only through /status; the main resource keeps it.
    const main = await call(s, 'PATCH', path, { status: { phase: 'Failed' } }, 'application/merge-patch+json');
    expect(main.json.status).toEqual({ phase: 'Running' });
    const status = await call(s, 'PATCH', `${path}/status`, { status: { phase: 'Succeeded' }, metadata: { labels: { ignored: 'yes' } } }, 'application/merge-patch+json');
    expect(status.json.status).toEqual({ phase: 'Succeeded' });
    expect((status.json.metadata as KubeObject['metadata']).labels?.ignored).toBeUndefined();
    expect(s.requests.at(-1)).toMatchObject({ verb: 'patch', resource: 'pods', subresource: 'status', name: 'a' });

    // Server-side apply: creates, then merges.
    const cm = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cfg', namespace: 'default' }, data: { a: '1' } };
    const first = await call(s, 'PATCH', '/api/v1/namespaces/default/configmaps/cfg?fieldManager=test', cm, 'application/apply-patch+yaml');
    expect(first.status).toBe(201);
    const second = await call(s, 'PATCH', '/api/v1/namespaces/default/configmaps/cfg?fieldManager=test', 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  b: "2"\n', 'application/apply-patch+yaml');
    expect(second.json.data).toEqual({ a: '1', b: '2' });
    expect((await call(s, 'PATCH', path, {}, 'text/plain')).status).toBe(415);
  });

  it('pages a list with limit and continue, from one consistent snapshot', async () => {
    const s = await apiServer();
    for (const n of ['a', 'b', 'c', 'd', 'e']) s.create(pod(n));
    const p1 = await call(s, 'GET', '/api/v1/namespaces/default/pods?limit=2');
    const meta1 = p1.json.metadata as { continue: string; remainingItemCount: number; resourceVersion: string };
    expect((p1.json.items as KubeObject[]).map((p) => p.metadata.name)).toEqual(['a', 'b']);
    expect(meta1.remainingItemCount).toBe(3);
    s.delete('v1', 'Pod', 'c', 'default'); // after the snapshot: still in the pages
    const p2 = await call(s, 'GET', `/api/v1/namespaces/default/pods?limit=2&continue=${meta1.continue}`);
    expect((p2.json.items as KubeObject[]).map((p) => p.metadata.name)).toEqual(['c', 'd']);
    expect((p2.json.metadata as { resourceVersion: string }).resourceVersion).toBe(meta1.resourceVersion);
    const p3 = await call(s, 'GET', `/api/v1/namespaces/default/pods?limit=2&continue=${(p2.json.metadata as { continue: string }).continue}`);
    expect((p3.json.items as KubeObject[]).map((p) => p.metadata.name)).toEqual(['e']);
    expect((p3.json.metadata as { continue?: string }).continue).toBeUndefined();
    s.compact();
    const expired = await call(s, 'GET', `/api/v1/namespaces/default/pods?limit=2&continue=${meta1.continue}`);
    expect(expired).toMatchObject({ status: 410, json: { reason: 'Expired' } });
  });

  it('gives direct store access that bumps resourceVersions and reaches watchers', async () => {
    const s = await apiServer();
    const w = await rawWatch(`${s.url}/api/v1/namespaces/ward-system/pods?watch=1&resourceVersion=${s.resourceVersion}`);
    const p = s.create(pod('proxy', { 'app.kubernetes.io/name': 'ward-proxy' }, 'ward-system', { status: { phase: 'Running', hostIP: '10.0.0.1' }, metadata: { name: 'proxy', namespace: 'ward-system', uid: 'fixed-uid' } }));
    expect(p.metadata).toMatchObject({ uid: 'fixed-uid', resourceVersion: s.resourceVersion });
    expect(p.metadata.creationTimestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(p.status).toEqual({ phase: 'Running', hostIP: '10.0.0.1' });
    expect(() => s.create(pod('proxy', {}, 'ward-system'))).toThrow('pods "proxy" already exists');
    expect(s.get('v1', 'Pod', 'proxy', 'ward-system')?.metadata.uid).toBe('fixed-uid');
    expect(s.get('v1', 'Pod', 'proxy', 'default')).toBeUndefined();

    const updated = s.update({ ...p, status: { phase: 'Failed' } });
    expect(updated.status).toEqual({ phase: 'Failed' });
    expect(Number(updated.metadata.resourceVersion)).toBe(Number(p.metadata.resourceVersion) + 1);
    s.patch('v1', 'Pod', 'proxy', 'ward-system', { metadata: { labels: { extra: '1' } } });
    s.create({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ward-system' } });
    expect(s.get('v1', 'Namespace', 'ward-system')?.metadata.labels).toEqual({ 'kubernetes.io/metadata.name': 'ward-system' });
    expect(s.list('v1', 'Pod').map((x) => x.metadata.name)).toEqual(['proxy']);
    expect(s.list('v1', 'Pod', 'default')).toEqual([]);
    expect(s.list('v1', 'Namespace').map((x) => x.metadata.name)).toEqual(['default', 'kube-node-lease', 'kube-public', 'kube-system', 'ward-system']);
    s.delete('v1', 'Pod', 'proxy', 'ward-system');
    expect(() => s.delete('v1', 'Pod', 'proxy', 'ward-system')).toThrow('pods "proxy" not found');
    const lines = await w.next(4);
    expect(lines.map((l) => l.type)).toEqual(['ADDED', 'MODIFIED', 'MODIFIED', 'DELETED']);
    expect(lines[3].object.metadata?.resourceVersion).toBe(s.resourceVersion);
    expect(() => s.create({ apiVersion: 'v9', kind: 'Nope', metadata: { name: 'x' } })).toThrow('no matches for kind "Nope" in version "v9"');
  });

  it('keeps an object with finalizers until they are removed', async () => {
    const s = await apiServer();
    s.create({ ...pod('f'), metadata: { name: 'f', namespace: 'default', finalizers: ['ward.dev/test'] } });
    const del = await call(s, 'DELETE', '/api/v1/namespaces/default/pods/f');
    expect(del.status).toBe(202);
    expect((del.json.metadata as KubeObject['metadata']).deletionTimestamp).toBeDefined();
    const current = s.get('v1', 'Pod', 'f', 'default');
    expect(current?.metadata.deletionTimestamp).toBeDefined();
    const gone = await call(s, 'PATCH', '/api/v1/namespaces/default/pods/f', { metadata: { finalizers: null } }, 'application/merge-patch+json');
    expect(gone.status).toBe(200);
    expect(s.get('v1', 'Pod', 'f', 'default')).toBeUndefined();
  });

  it('bounds the request log and the request body', async () => {
    const s = await apiServer({ requestLogLimit: 5, maxBodyBytes: 1024 });
    for (let i = 0; i < 20; i++) await call(s, 'GET', `/api/v1/namespaces/n${i}/pods`);
    expect(s.requests.length).toBeLessThanOrEqual(6);
    expect(s.requests.at(-1)?.namespace).toBe('n19');
    const big = await call(s, 'POST', '/api/v1/namespaces/default/configmaps', { ...pod('x'), kind: 'ConfigMap', data: { a: 'x'.repeat(2048) } });
    expect(big).toMatchObject({ status: 413, json: { reason: 'RequestEntityTooLarge', message: 'Request entity too large: limit is 1024' } });
  });

  it('validates a custom resource against its CRD schema: 422 naming the field, unknown fields pruned, or refused under Strict', async () => {
    const s = await apiServer();
    const policy = (spec: unknown, name = 'p'): object => ({ apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name }, spec });
    const path = '/apis/security.ward.dev/v1alpha1/namespaces/default/authorizationpolicies';
    // Served before any CRD exists (unvalidated).
    expect((await call(s, 'POST', path, policy({ anything: 1 }, 'early'))).status).toBe(201);
    const crd = await call(s, 'POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', smallCrd());
    expect(crd.status).toBe(201);
    expect((crd.json.status as { conditions: { type: string; status: string }[] }).conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['NamesAccepted=True', 'Established=True']);

    const bad = await call(s, 'POST', path, policy({ rules: [{}] }));
    expect(bad).toMatchObject({
      status: 422,
      json: {
        kind: 'Status', reason: 'Invalid', code: 422,
        message: 'AuthorizationPolicy.security.ward.dev "p" is invalid: spec.rules[0].from: Required value',
        details: { name: 'p', group: 'security.ward.dev', kind: 'AuthorizationPolicy', causes: [{ reason: 'FieldValueRequired', message: 'Required value', field: 'spec.rules[0].from' }] },
      },
    });
    const pruned = await call(s, 'POST', path, policy({ rules: [{ from: ['a'], bogus: true }] }));
    expect(pruned.status).toBe(201);
    expect(pruned.json.spec).toEqual({ rules: [{ from: ['a'] }] });
    expect(pruned.headers.get('warning')).toBe('299 - "unknown field \\"spec.rules[0].bogus\\""');
    const strict = await call(s, 'POST', `${path}?fieldValidation=Strict`, policy({ rules: [{ from: ['a'], bogus: true }] }, 'q'));
    expect(strict).toMatchObject({ status: 400, json: { reason: 'BadRequest', message: 'AuthorizationPolicy in version "v1alpha1" cannot be handled as a AuthorizationPolicy: strict decoding error: unknown field "spec.rules[0].bogus"' } });
    const patched = await call(s, 'PATCH', `${path}/p`, { spec: { rules: [{ from: [] }, { from: 5 }] } }, 'application/merge-patch+json');
    expect(patched.status).toBe(422);
    expect(patched.json.message).toBe('AuthorizationPolicy.security.ward.dev "p" is invalid: spec.rules[1].from: Invalid value: "integer": spec.rules[1].from in body must be of type array: "integer"');
    expect((await call(s, 'GET', `${path}/p`)).json.spec).toEqual({ rules: [{ from: ['a'] }] });
    expect(s.get('security.ward.dev/v1alpha1', 'AuthorizationPolicy', 'p', 'default')?.metadata.generation).toBe(1);
  });

  it('serves the discovery documents and /version', async () => {
    const s = await apiServer();
    const api = await call(s, 'GET', '/api');
    expect(api.json).toMatchObject({ kind: 'APIVersions', versions: ['v1'] });
    const groups = (await call(s, 'GET', '/apis')).json.groups as { name: string; preferredVersion: { groupVersion: string } }[];
    expect(groups.map((g) => g.preferredVersion.groupVersion)).toEqual([
      'discovery.k8s.io/v1', 'networking.k8s.io/v1', 'apiextensions.k8s.io/v1', 'authentication.k8s.io/v1', 'security.ward.dev/v1alpha1',
    ]);
    const core = (await call(s, 'GET', '/api/v1')).json.resources as { name: string; namespaced: boolean; kind: string; verbs: string[] }[];
    expect(core.map((r) => r.name)).toEqual(['pods', 'pods/status', 'services', 'services/status', 'namespaces', 'namespaces/status', 'secrets', 'serviceaccounts', 'nodes', 'nodes/status', 'configmaps']);
    const ward = (await call(s, 'GET', '/apis/security.ward.dev/v1alpha1')).json.resources as Record<string, unknown>[];
    expect(ward).toEqual([{ name: 'authorizationpolicies', singularName: 'authorizationpolicy', namespaced: true, kind: 'AuthorizationPolicy', verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'], shortNames: ['wardpolicy'] }]);
    expect((await call(s, 'GET', '/version')).json).toMatchObject({ major: '1', minor: '32' });
    expect((await call(s, 'GET', '/apis/nope.example')).status).toBe(404);
    expect(s.requests).toEqual([]); // only resource requests are recorded
  });
});

function smallCrd(): object {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: 'authorizationpolicies.security.ward.dev' },
    spec: {
      group: 'security.ward.dev',
      scope: 'Namespaced',
      names: { plural: 'authorizationpolicies', singular: 'authorizationpolicy', kind: 'AuthorizationPolicy', listKind: 'AuthorizationPolicyList', shortNames: ['wardpolicy'] },
      versions: [{
        name: 'v1alpha1',
        served: true,
        storage: true,
        schema: {
          openAPIV3Schema: {
            type: 'object',
            required: ['spec'],
            properties: {
              spec: {
                type: 'object',
                required: ['rules'],
                properties: {
                  action: { type: 'string', enum: ['ALLOW', 'DENY'] },
                  rules: {
                    type: 'array',
                    items: { type: 'object', required: ['from'], properties: { from: { type: 'array', items: { type: 'string', minLength: 1 } } } },
                  },
                },
              },
            },
          },
        },
      }],
    },
  };
}

describe('with kubectl', () => {
  async function kubectlFor(s: KubeApiServer): Promise<{ dir: string; kubectl: (...args: string[]) => Promise<{ code: number; stdout: string; stderr: string }> }> {
    const dir = await tempDir('ward-kubectl-');
    const kubeconfig = await writeKubeconfig(s, dir);
    return { dir, kubectl: (...args) => runKubectl(kubeconfig, args) };
  }

  const POD = `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  serviceAccountName: web
  containers:
  - name: web
    image: nginx:1.27
    ports:
    - containerPort: 8080
      name: http
`;
  const SERVICE = `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
`;
  const POLICY = `apiVersion: security.ward.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: allow-client
spec:
  action: ALLOW
  rules:
  - from: ["spiffe://example.org/ns/default/sa/client"]
`;

  it('create -f (pod, service, CRD, AuthorizationPolicy), get -o json, label --overwrite, apply -f, delete', async () => {
    const s = await apiServer();
    const { dir, kubectl } = await kubectlFor(s);
    await writeFile(join(dir, 'pod.yaml'), POD);
    await writeFile(join(dir, 'svc.yaml'), SERVICE);
    await writeFile(join(dir, 'crd.json'), JSON.stringify(smallCrd()));
    await writeFile(join(dir, 'policy.yaml'), POLICY);

    for (const [file, out] of [['pod.yaml', 'pod/web created'], ['svc.yaml', 'service/web created'], ['crd.json', 'customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.ward.dev created'], ['policy.yaml', 'authorizationpolicy.security.ward.dev/allow-client created']]) {
      const r = await kubectl('create', '-f', join(dir, file));
      expect(r, r.stderr).toMatchObject({ code: 0, stdout: `${out}\n` });
    }
    expect(s.requests.filter((r) => r.verb === 'create').map((r) => `${r.resource} ${r.query?.fieldValidation}`)).toEqual([
      'pods Strict', 'services Strict', 'customresourcedefinitions Strict', 'authorizationpolicies Strict',
    ]);
    expect(s.get('v1', 'Service', 'web', 'default')?.spec).toMatchObject({ type: 'ClusterIP', ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }] });

    const got = await kubectl('get', 'pod', 'web', '-o', 'json');
    expect(got.code, got.stderr).toBe(0);
    const podJson = JSON.parse(got.stdout) as KubeObject;
    expect(podJson).toMatchObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web', namespace: 'default', labels: { app: 'web' }, uid: s.get('v1', 'Pod', 'web', 'default')?.metadata.uid } });
    const policies = await kubectl('get', 'wardpolicy', '-o', 'json');
    expect((JSON.parse(policies.stdout) as { items: KubeObject[] }).items.map((i) => i.metadata.name)).toEqual(['allow-client']);
    const table = await kubectl('get', 'pods');
    expect(table.stdout).toMatch(/^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE\nweb\s+0\/1\s+Pending\s+0\s+\d+s\n$/);

    const labelled = await kubectl('label', 'pod', 'web', 'a=b', '--overwrite');
    expect(labelled, labelled.stderr).toMatchObject({ code: 0, stdout: 'pod/web labeled\n' });
    expect(s.get('v1', 'Pod', 'web', 'default')?.metadata.labels).toEqual({ app: 'web', a: 'b' });

    // apply: first on an object kubectl did not create (it takes it over), then a change.
    const applied = await kubectl('apply', '-f', join(dir, 'pod.yaml'));
    expect(applied.code, applied.stderr).toBe(0);
    await writeFile(join(dir, 'pod.yaml'), POD.replace('nginx:1.27', 'nginx:1.28').replace('app: web\n', 'app: web\n    tier: front\n'));
    const changed = await kubectl('apply', '-f', join(dir, 'pod.yaml'));
    expect(changed, changed.stderr).toMatchObject({ code: 0, stdout: 'pod/web configured\n' });
    const live = s.get('v1', 'Pod', 'web', 'default');
    expect(live?.metadata.labels).toEqual({ app: 'web', a: 'b', tier: 'front' });
    expect((live?.spec as { containers: { image: string }[] }).containers.map((c) => c.image)).toEqual(['nginx:1.28']);
    expect(live?.metadata.annotations?.['kubectl.kubernetes.io/last-applied-configuration']).toContain('nginx:1.28');
    await writeFile(join(dir, 'policy.yaml'), POLICY.replace('ALLOW', 'DENY'));
    const appliedPolicy = await kubectl('apply', '-f', join(dir, 'policy.yaml'));
    expect(appliedPolicy.code, appliedPolicy.stderr).toBe(0);
    expect(s.get('security.ward.dev/v1alpha1', 'AuthorizationPolicy', 'allow-client', 'default')?.spec).toMatchObject({ action: 'DENY' });
    const created = await kubectl('apply', '-f', join(dir, 'svc.yaml'), '--server-side');
    expect(created, created.stderr).toMatchObject({ code: 0, stdout: 'service/web serverside-applied\n' });

    const deleted = await kubectl('delete', '-f', join(dir, 'pod.yaml'));
    expect(deleted, deleted.stderr).toMatchObject({ code: 0, stdout: 'pod "web" deleted\n' });
    const deletedPolicy = await kubectl('delete', 'wardpolicy', 'allow-client');
    expect(deletedPolicy.code, deletedPolicy.stderr).toBe(0);
    expect(s.list('v1', 'Pod')).toEqual([]);
    expect(s.list('security.ward.dev/v1alpha1', 'AuthorizationPolicy')).toEqual([]);
    const missing = await kubectl('get', 'pod', 'web');
    expect(missing).toMatchObject({ code: 1, stderr: 'Error from server (NotFound): pods "web" not found\n' });
    expect(s.requests.every((r) => r.userAgent?.startsWith('kubectl/'))).toBe(true);
  });

  it('refuses a malformed AuthorizationPolicy with the schema message, and an unknown field under --validate=strict', async () => {
    const s = await apiServer();
    const { dir, kubectl } = await kubectlFor(s);
    await writeFile(join(dir, 'crd.json'), JSON.stringify(smallCrd()));
    expect((await kubectl('create', '-f', join(dir, 'crd.json'))).code).toBe(0);

    await writeFile(join(dir, 'bad.yaml'), POLICY.replace('ALLOW', 'MAYBE').replace('- from: ["spiffe://example.org/ns/default/sa/client"]', '- {}'));
    const bad = await kubectl('create', '-f', join(dir, 'bad.yaml'));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe('The AuthorizationPolicy "allow-client" is invalid: \n'
      + '* spec.action: Unsupported value: "MAYBE": supported values: "ALLOW", "DENY"\n'
      + '* spec.rules[0].from: Required value\n');

    await writeFile(join(dir, 'unknown.yaml'), POLICY.replace('action: ALLOW', 'action: ALLOW\n  bogus: true'));
    const unknown = await kubectl('create', '-f', join(dir, 'unknown.yaml'));
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('strict decoding error: unknown field "spec.bogus"');
    const lax = await kubectl('create', '-f', join(dir, 'unknown.yaml'), '--validate=false');
    expect(lax.code, lax.stderr).toBe(0);
    expect(s.get('security.ward.dev/v1alpha1', 'AuthorizationPolicy', 'allow-client', 'default')?.spec).toEqual({ action: 'ALLOW', rules: [{ from: ['spiffe://example.org/ns/default/sa/client'] }] });
    expect(await readFile(join(dir, 'kubeconfig'), 'utf8')).toContain(s.url);
  });
});

describe('stop and close', () => {
  it('stop() ends open watches; close() is idempotent and frees the port', async () => {
    const s = await startKubeApi();
    const w = await rawWatch(`${s.url}/api/v1/pods?watch=1`);
    await s.stop();
    await w.ended;
    expect(s.openWatches).toBe(0);
    await s.restart();
    expect((await call(s, 'GET', '/api/v1/pods')).status).toBe(200);
    await s.close();
    await s.close();
    await expect(fetch(`${s.url}/api`)).rejects.toThrow();
    await expect(s.restart()).rejects.toThrow('closed');
    const again = await startKubeApi({ port: s.port });
    onTestFinished(() => again.close());
    expect(again.port).toBe(s.port);
    expect(again.list('v1', 'Pod')).toEqual([]);
  });
});
