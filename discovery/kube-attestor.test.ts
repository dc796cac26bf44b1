/**
 * KubeAttestor against the test Kubernetes API server (test/helpers/kube-api.ts: real HTTP,
 * TokenReview answered from addToken()) through the real @kubernetes/client-node, with a fake pod
 * cache: every rule of docs/kubernetes.md "Attestation", the codes it refuses with, the API being
 * down, the metric, and that the token never reaches the log.
 */
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { WardError, type WardErrorCode } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import { createRegistry, type Registry } from '../core/metrics.js';
import { captureLogs, type LogCapture } from '../test/helpers/ca.js';
import { kubeConfigFor, startKubeApi, type KubeApiServer, type TokenInfo } from '../test/helpers/kube-api.js';
import { KUBE_API_USAGE } from './kube-api-usage.js';
import { KubeAttestor, MAX_CONCURRENT_TOKEN_REVIEWS, type AttestedPod } from './kube-attestor.js';

const TD = 'cluster.local';
const NS = 'ward-system';
const PROXY_USER = `system:serviceaccount:${NS}:ward-proxy`;
const INGRESS_USER = `system:serviceaccount:${NS}:ward-ingress`;
const POD_NAME = 'authentication.kubernetes.io/pod-name';
const POD_UID = 'authentication.kubernetes.io/pod-uid';

/** Distinct JWT-looking tokens: any copy of one in the log is a leak. */
const token = (name: string): string => `eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.${Buffer.from(name).toString('base64url')}.c2lnbmF0dXJl`;

/** The pod cache double: pods by namespace/name. */
class FakePods {
  readonly #pods = new Map<string, AttestedPod>();
  set(namespace: string, name: string, pod: Partial<AttestedPod> & { uid: string; serviceAccount: string }): this {
    this.#pods.set(`${namespace}/${name}`, { phase: 'Running', labels: {}, ...pod });
    return this;
  }
  delete(namespace: string, name: string): this {
    this.#pods.delete(`${namespace}/${name}`);
    return this;
  }
  pod(namespace: string, name: string): AttestedPod | undefined {
    return this.#pods.get(`${namespace}/${name}`);
  }
}

interface Env {
  api: KubeApiServer;
  pods: FakePods;
  logs: LogCapture;
  registry: Registry;
  attestor: KubeAttestor;
  /** A projected token of `user` bound to pod ward-system/<pod> with `uid`. */
  token(name: string, user: string, pod?: { name: string; uid: string }, audiences?: string[]): string;
  /** The attestation's outcome: the identity, or the refusal's code. */
  outcome(t: string, node?: string): Promise<string>;
  results(): Promise<Record<string, number>>;
}

async function env(): Promise<Env> {
  const api = await startKubeApi();
  onTestFinished(() => api.close());
  const pods = new FakePods()
    .set(NS, 'ward-proxy-abcde', { uid: 'uid-proxy-1', serviceAccount: 'ward-proxy', nodeName: 'node-1', labels: { 'app.kubernetes.io/name': 'ward-proxy' } })
    .set(NS, 'ward-ingress-7f9c', { uid: 'uid-ingress-1', serviceAccount: 'ward-ingress', nodeName: 'node-2', labels: { 'app.kubernetes.io/name': 'ward-ingress' } });
  const logs = captureLogs();
  const registry = createRegistry();
  const attestor = new KubeAttestor({ kubeConfig: kubeConfigFor(api), trustDomain: TD, pods, logger: logs.logger, registry });
  const e: Env = {
    api,
    pods,
    logs,
    registry,
    attestor,
    token(name, user, pod, audiences = ['ward']) {
      const t = token(name);
      const info: TokenInfo = { audiences, user: { username: user, uid: `uid-of-${name}`, groups: ['system:serviceaccounts'] } };
      if (pod) info.user.extra = { [POD_NAME]: [pod.name], [POD_UID]: [pod.uid] };
      api.addToken(t, info);
      return t;
    },
    async outcome(t, node) {
      try {
        return (await attestor.attest(t, node)).toString();
      } catch (err) {
        if (!(err instanceof WardError)) throw err;
        return err.code;
      }
    },
    async results() {
      const m = await registry.getSingleMetric('ward_discovery_kube_attestations_total')!.get();
      return Object.fromEntries(m.values.map((v) => [String(v.labels.result), v.value]));
    },
  };
  // Whatever a test did, no token may be in the log.
  onTestFinished(() => {
    expect(logs.lines.join('')).not.toMatch(/eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ\.[A-Za-z0-9_-]+\.c2lnbmF0dXJl/);
  });
  return e;
}

const PROXY_POD = { name: 'ward-proxy-abcde', uid: 'uid-proxy-1' };
const INGRESS_POD = { name: 'ward-ingress-7f9c', uid: 'uid-ingress-1' };
const NODE_1 = SpiffeId.node(TD, 'node-1').toString();
const INGRESS = SpiffeId.ingress(TD).toString();
const TOKEN_INVALID: WardErrorCode = 'WARD_CA_TOKEN_INVALID';
const FORBIDDEN: WardErrorCode = 'WARD_CA_FORBIDDEN';
const UNAVAILABLE: WardErrorCode = 'WARD_CA_UNAVAILABLE';

describe('KubeAttestor', () => {
  it("attests the ward-proxy pod's token as the node it runs on, named or not", async () => {
    const e = await env();
    const t = e.token('proxy', PROXY_USER, PROXY_POD);
    expect(await e.outcome(t, 'node-1')).toBe(NODE_1);
    expect(await e.outcome(t)).toBe(NODE_1);
    // Through the real client: one TokenReview create each, nothing else.
    expect(e.api.requests.map((r) => [r.verb, r.group, r.resource, r.status])).toEqual(Array(2).fill(['create', 'authentication.k8s.io', 'tokenreviews', 201]));
    expect(await e.results()).toMatchObject({ node: 2 });
    expect(e.logs.records().some((r) => r.msg === 'attested a node proxy' && r.pod === `${NS}/${PROXY_POD.name}` && r.node === 'node-1')).toBe(true);
  });

  it("attests the ward-ingress pod's token as the ingress", async () => {
    const e = await env();
    expect(await e.outcome(e.token('ingress', INGRESS_USER, INGRESS_POD))).toBe(INGRESS);
    expect(await e.results()).toMatchObject({ ingress: 1 });
  });

  it('refuses a token not for audience ward, unknown (forged) or malformed as unauthenticated (401)', async () => {
    const e = await env();
    expect(await e.outcome(e.token('proxy-default-audience', PROXY_USER, PROXY_POD, ['https://kubernetes.default.svc']), 'node-1')).toBe(TOKEN_INVALID);
    expect(await e.outcome(e.token('proxy-other-audience', PROXY_USER, PROXY_POD, ['vault']), 'node-1')).toBe(TOKEN_INVALID);
    expect(await e.outcome(token('forged'), 'node-1')).toBe(TOKEN_INVALID);
    const asked = e.api.requests.length;
    // Not even sent to the API server: empty, not printable ASCII, too long.
    for (const bad of ['', `${token('x')}\n`, 'two words', 'é', 'x'.repeat(16 * 1024 + 1)]) expect(await e.outcome(bad, 'node-1')).toBe(TOKEN_INVALID);
    expect(e.api.requests.length).toBe(asked);
    expect(await e.results()).toEqual({ unauthenticated: 8 });
    expect(e.logs.records().some((r) => r.msg === 'attestation refused: token not authenticated' && /invalid for the target audiences/.test(String(r.apiError)))).toBe(true);
  });

  it("refuses every other service account (403): a workload's, default, ward-proxy elsewhere, the ingress asked to be a node", async () => {
    const e = await env();
    e.pods.set('shop', 'web-1', { uid: 'uid-web-1', serviceAccount: 'web', nodeName: 'node-1' });
    e.pods.set(NS, 'ward-debug', { uid: 'uid-debug', serviceAccount: 'default', nodeName: 'node-1' });
    e.pods.set('shop', 'ward-proxy-fake', { uid: 'uid-fake', serviceAccount: 'ward-proxy', nodeName: 'node-1' });
    expect(await e.outcome(e.token('web', 'system:serviceaccount:shop:web', { name: 'web-1', uid: 'uid-web-1' }), 'node-1')).toBe(FORBIDDEN);
    expect(await e.outcome(e.token('default', `system:serviceaccount:${NS}:default`, { name: 'ward-debug', uid: 'uid-debug' }), 'node-1')).toBe(FORBIDDEN);
    expect(await e.outcome(e.token('proxy-in-shop', 'system:serviceaccount:shop:ward-proxy', { name: 'ward-proxy-fake', uid: 'uid-fake' }), 'node-1')).toBe(FORBIDDEN);
    expect(await e.outcome(e.token('ingress-as-node', INGRESS_USER, INGRESS_POD), 'node-2')).toBe(FORBIDDEN);
    // A user that is no service account at all (e.g. a kubeconfig user's token).
    expect(await e.outcome(e.token('admin', 'kubernetes-admin', PROXY_POD), 'node-1')).toBe(FORBIDDEN);
    expect(await e.results()).toEqual({ forbidden: 5 });
  });

  it('refuses a token bound to no single pod (no pod-name / pod-uid extra)', async () => {
    const e = await env();
    expect(await e.outcome(e.token('legacy', PROXY_USER), 'node-1')).toBe(FORBIDDEN);
    const t = token('two-pods');
    e.api.addToken(t, { audiences: ['ward'], user: { username: PROXY_USER, extra: { [POD_NAME]: [PROXY_POD.name, 'other'], [POD_UID]: [PROXY_POD.uid] } } });
    expect(await e.outcome(t, 'node-1')).toBe(FORBIDDEN);
  });

  it('refuses when the pod is not in the cache, was recreated (other UID), or runs as another service account', async () => {
    const e = await env();
    const t = e.token('proxy', PROXY_USER, PROXY_POD);
    e.pods.set(NS, PROXY_POD.name, { uid: 'uid-proxy-2', serviceAccount: 'ward-proxy', nodeName: 'node-1' });
    expect(await e.outcome(t, 'node-1')).toBe(FORBIDDEN);
    e.pods.set(NS, PROXY_POD.name, { uid: PROXY_POD.uid, serviceAccount: 'ward-ingress', nodeName: 'node-1' });
    expect(await e.outcome(t, 'node-1')).toBe(FORBIDDEN);
    e.pods.delete(NS, PROXY_POD.name);
    expect(await e.outcome(t, 'node-1')).toBe(FORBIDDEN);
    const missing = e.logs.records().find((r) => r.msg === 'attestation refused' && /is not known/.test(String(r.reason)));
    expect(missing).toMatchObject({ username: PROXY_USER, pod: `${NS}/${PROXY_POD.name}`, podUid: PROXY_POD.uid, requestedNode: 'node-1' });
    expect(e.logs.records().some((r) => /has UID "uid-proxy-2", not the token's "uid-proxy-1"/.test(String(r.reason)))).toBe(true);
  });

  it('refuses a pod that is not Running', async () => {
    const e = await env();
    const t = e.token('proxy', PROXY_USER, PROXY_POD);
    for (const phase of ['Pending', 'Succeeded', 'Failed', 'Unknown', undefined]) {
      e.pods.set(NS, PROXY_POD.name, { uid: PROXY_POD.uid, serviceAccount: 'ward-proxy', nodeName: 'node-1', phase, labels: { 'app.kubernetes.io/name': 'ward-proxy' } });
      expect(await e.outcome(t, 'node-1'), String(phase)).toBe(FORBIDDEN);
    }
    e.pods.set(NS, PROXY_POD.name, { uid: PROXY_POD.uid, serviceAccount: 'ward-proxy', nodeName: 'node-1', phase: 'Running', labels: { 'app.kubernetes.io/name': 'ward-proxy' } });
    expect(await e.outcome(t, 'node-1')).toBe(NODE_1);
  });

  it('refuses a ward-proxy pod without the node-proxy label (the model would not count its node either)', async () => {
    const e = await env();
    const t = e.token('proxy', PROXY_USER, PROXY_POD);
    e.pods.set(NS, PROXY_POD.name, { uid: PROXY_POD.uid, serviceAccount: 'ward-proxy', nodeName: 'node-1', labels: { 'app.kubernetes.io/name': 'something-else' } });
    expect(await e.outcome(t, 'node-1')).toBe(FORBIDDEN);
    expect(e.logs.records().some((r) => /lacks the label app\.kubernetes\.io\/name: ward-proxy/.test(String(r.reason)))).toBe(true);
  });

  it(`answers WARD_CA_UNAVAILABLE at once past ${MAX_CONCURRENT_TOKEN_REVIEWS} TokenReviews in flight, and takes joins again as they finish`, async () => {
    // A listener that accepts and never answers: every review stays in flight until its deadline.
    const sockets = new Set<Socket>();
    const hung = createServer((s) => void sockets.add(s));
    hung.listen(0, '127.0.0.1');
    await once(hung, 'listening');
    onTestFinished(() => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => hung.close(() => resolve()));
    });
    const e = await env();
    const attestor = new KubeAttestor({ kubeConfig: kubeConfigFor({ url: `http://127.0.0.1:${(hung.address() as { port: number }).port}` }), trustDomain: TD, pods: e.pods, logger: e.logs.logger, timeoutMs: 1_000 });
    const inFlight = Array.from({ length: MAX_CONCURRENT_TOKEN_REVIEWS }, (_, i) => attestor.attest(token(`proxy-${i}`), 'node-1').catch((err: unknown) => err));
    await expect(attestor.attest(token('one-too-many'), 'node-1')).rejects.toMatchObject({ code: UNAVAILABLE, message: expect.stringMatching(/in flight already/) });
    for (const r of await Promise.all(inFlight)) expect(r).toMatchObject({ code: UNAVAILABLE, message: expect.stringMatching(/no answer within/) });
    // The slots are free again: the next attempt reaches the (hung) API server rather than the cap.
    await expect(attestor.attest(token('after'), 'node-1')).rejects.toMatchObject({ message: expect.stringMatching(/no answer within/) });
  });

  it('refuses a ward-proxy pod on another node than the one named, or on none', async () => {
    const e = await env();
    const t = e.token('proxy', PROXY_USER, PROXY_POD);
    expect(await e.outcome(t, 'node-2')).toBe(FORBIDDEN);
    expect(e.logs.records().some((r) => /runs on node "node-1", not the requested "node-2"/.test(String(r.reason)))).toBe(true);
    e.pods.set(NS, PROXY_POD.name, { uid: PROXY_POD.uid, serviceAccount: 'ward-proxy', nodeName: undefined });
    expect(await e.outcome(t)).toBe(FORBIDDEN);
    // A node name that cannot be a SPIFFE path segment is no identity.
    e.pods.set(NS, PROXY_POD.name, { uid: PROXY_POD.uid, serviceAccount: 'ward-proxy', nodeName: 'node/1' });
    expect(await e.outcome(t)).toBe(FORBIDDEN);
  });

  it('gives no identity while the API fails (503, RBAC 403, down) and attests again once it is back', async () => {
    const e = await env();
    const t = e.token('proxy', PROXY_USER, PROXY_POD);
    e.api.failNext(1, 500);
    expect(await e.outcome(t, 'node-1')).toBe(UNAVAILABLE);
    // The control plane's own credentials refused (RBAC): not the caller's fault either.
    e.api.failNext(1, 403);
    expect(await e.outcome(t, 'node-1')).toBe(UNAVAILABLE);
    await e.api.stop();
    expect(await e.outcome(t, 'node-1')).toBe(UNAVAILABLE);
    await e.api.restart();
    expect(await e.outcome(t, 'node-1')).toBe(NODE_1);
    expect(await e.results()).toEqual({ unavailable: 3, node: 1 });
    const failures = e.logs.records().filter((r) => /TokenReview failed/.test(String(r.msg)));
    expect(failures.map((r) => [r.level, r.status])).toEqual([[50, 500], [50, 403], [50, undefined]]);
  });

  it('gives up on a TokenReview that gets no answer within timeoutMs', async () => {
    // A listener that accepts and never answers (the API server hung).
    const sockets = new Set<Socket>();
    const hung = createServer((s) => void sockets.add(s));
    hung.listen(0, '127.0.0.1');
    await once(hung, 'listening');
    onTestFinished(() => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => hung.close(() => resolve()));
    });
    const url = `http://127.0.0.1:${(hung.address() as { port: number }).port}`;
    const e = await env();
    const attestor = new KubeAttestor({ kubeConfig: kubeConfigFor({ url }), trustDomain: TD, pods: e.pods, logger: e.logs.logger, timeoutMs: 200 });
    await expect(attestor.attest(token('proxy'), 'node-1')).rejects.toMatchObject({ code: UNAVAILABLE, message: expect.stringMatching(/no answer within 200 ms/) });
  });

  it('makes only API calls listed in kube-api-usage.ts', async () => {
    const e = await env();
    await e.outcome(e.token('proxy', PROXY_USER, PROXY_POD), 'node-1');
    await e.outcome(token('forged'));
    expect(e.api.requests.length).toBeGreaterThan(0);
    for (const r of e.api.requests) {
      expect(KUBE_API_USAGE.some((u) => u.component === 'control' && u.group === r.group && u.resource === r.resource && u.verbs.includes(r.verb))).toBe(true);
    }
  });

  it('refuses a bad configuration at construction', async () => {
    const api = await startKubeApi();
    onTestFinished(() => api.close());
    const base = { kubeConfig: kubeConfigFor(api), pods: new FakePods(), logger: captureLogs().logger };
    expect(() => new KubeAttestor({ ...base, trustDomain: 'Not A Domain' })).toThrow(expect.objectContaining({ code: 'WARD_ID_INVALID' }));
    expect(() => new KubeAttestor({ ...base, trustDomain: TD, timeoutMs: 0 })).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
  });

  it('uses another namespace when configured (the pods are looked up there)', async () => {
    const api = await startKubeApi();
    onTestFinished(() => api.close());
    const pods = new FakePods().set('mesh', 'ward-proxy-x', { uid: 'u', serviceAccount: 'ward-proxy', nodeName: 'node-9', labels: { 'app.kubernetes.io/name': 'ward-proxy' } });
    const attestor = new KubeAttestor({ kubeConfig: kubeConfigFor(api), trustDomain: TD, namespace: 'mesh', pods, logger: captureLogs().logger });
    const t = token('mesh-proxy');
    api.addToken(t, { audiences: ['ward'], user: { username: 'system:serviceaccount:mesh:ward-proxy', extra: { [POD_NAME]: ['ward-proxy-x'], [POD_UID]: ['u'] } } });
    expect((await attestor.attest(t, 'node-9')).toString()).toBe(SpiffeId.node(TD, 'node-9').toString());
    const inDefault = token('default-ns-proxy');
    api.addToken(inDefault, { audiences: ['ward'], user: { username: PROXY_USER, extra: { [POD_NAME]: ['ward-proxy-x'], [POD_UID]: ['u'] } } });
    await expect(attestor.attest(inDefault, 'node-9')).rejects.toMatchObject({ code: FORBIDDEN });
  });
});
