/**
 * Test helper: a Kubernetes API server that speaks the real protocol over plain HTTP on 127.0.0.1,
 * for Ward's Kubernetes-mode tests. The real @kubernetes/client-node (informers, CoreV1Api, …) and
 * the real `kubectl --kubeconfig <writeKubeconfig(…)>` work against it. Tests only.
 *
 * Served: core/v1 pods (+status), services (+status), namespaces (+status), secrets, serviceaccounts,
 * nodes (+status), configmaps; discovery.k8s.io/v1 endpointslices; networking.k8s.io/v1 ingresses
 * (+status), ingressclasses; apiextensions.k8s.io/v1 customresourcedefinitions (+status);
 * authentication.k8s.io/v1 tokenreviews (create); security.ward.dev/v1alpha1 authorizationpolicies
 * (always served; validated against the schema of its CustomResourceDefinition while one exists),
 * and any other type a CustomResourceDefinition defines. The namespaces default, kube-system,
 * kube-public and kube-node-lease exist from the start (creating in a namespace that does not exist
 * is allowed, unlike a real cluster). The layout: kube-api/store.ts (etcd: resourceVersions, history,
 * watchers), cluster.ts (write semantics, CRDs), server.ts (HTTP), and openapi-schema.ts (CRD schemas).
 *
 * ## What @kubernetes/client-node 1.4.0 does (read from its dist/cache.js and dist/watch.js, and
 * ## checked by kube-api.test.ts) — Ward code built on informers must know this
 *
 * makeInformer() returns a ListWatch. `start()` lists, then watches from the list's resourceVersion
 * with no timeoutSeconds and without allowWatchBookmarks; it resolves once the watch request is
 * made, and does NOT reject when the list fails (that is reported as an 'error' event instead).
 * Each event's object (BOOKMARKs too) updates the resourceVersion it resumes from.
 *
 * - Watch stream ends cleanly (server-side watch timeout, dropWatches(), apiserver rolling): it
 *   emits 'connect' and watches again from the last resourceVersion it saw. No relist, no 'error'.
 * - 410 Gone (an ERROR event with code 410 in the stream — what the real server sends — which the
 *   server follows by closing the stream; or an HTTP 410 answer to the watch request): it forgets
 *   its resourceVersion, emits 'connect', RELISTS (emitting 'delete' for objects gone meanwhile,
 *   'add' for new ones and 'update' for changed ones) and watches again. This heals itself.
 * - Any other failure — the list fails (any HTTP error, e.g. 500/429/403), the watch request is
 *   answered with a non-200 status other than 410, or the connection is refused/reset — it emits
 *   'error' and STOPS for good: no retry, no backoff. An API server restart ends up here too (the
 *   stream breaks, the immediate re-watch is refused). So Ward must restart informers itself:
 *   on 'error', call `informer.start()` again after a backoff (start() resumes the watch from the
 *   last resourceVersion; if that is too old by then, the 410 path relists).
 *   The error is an ApiException (`.code` = HTTP status, `.body` the raw Status text for codes the
 *   generated client does not know, e.g. 500) when the list failed, an Error with `.statusCode` when
 *   the watch request was refused, and a node-fetch FetchError (`.code` 'ECONNREFUSED', …) when the
 *   connection failed.
 * - `stop()` ALSO emits 'error' (an AbortError, `name === 'AbortError'`): the owner's restart-on-error
 *   handler must check that it did not stop the informer itself. stop() keeps the cache, and a later
 *   start() resumes from the last resourceVersion.
 * - An ERROR event with a code other than 410 is ignored (the stream's end then re-watches).
 * - There is no client-side timeout on a watch (its 30 s AbortSignal is overwritten in Watch.watch),
 *   so a silently dead connection is never noticed by the informer itself.
 * - 429/503 Retry-After is not honoured anywhere (no retries at all).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { TestKubeApiServer } from './kube-api/server.js';
import type { KubeApiOptions, KubeApiServer } from './kube-api/types.js';

export type { KubeApiOptions, KubeApiServer, KubeObject, KubeObjectMeta, KubeRequestRecord, KubeVerb, TokenInfo } from './kube-api/types.js';
export { KubeApiError, type KubeStatus } from './kube-api/status.js';

/** Starts a server on 127.0.0.1 (port 0 unless given). Close it with close() (e.g. in onTestFinished). */
export async function startKubeApi(o: KubeApiOptions = {}): Promise<KubeApiServer> {
  const server = new TestKubeApiServer(o);
  await server.listen();
  return server;
}

/** A @kubernetes/client-node KubeConfig for the server (plain http, no auth). */
export function kubeConfigFor(server: { url: string }): KubeConfig {
  const kc = new KubeConfig();
  // skipTLSVerify is how client-node 1.4.0 is told that a plain http:// server is intended
  // (without it, createAgent() refuses http URLs).
  kc.loadFromOptions({
    clusters: [{ name: 'ward-test', server: server.url, skipTLSVerify: true }],
    users: [{ name: 'ward-test' }],
    contexts: [{ name: 'ward-test', cluster: 'ward-test', user: 'ward-test', namespace: 'default' }],
    currentContext: 'ward-test',
  });
  return kc;
}

/** Writes a kubeconfig file for kubectl into `dir` and returns its path. */
export async function writeKubeconfig(server: { url: string }, dir: string): Promise<string> {
  const path = join(dir, 'kubeconfig');
  const text = [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: ward-test',
    '  cluster:',
    `    server: ${server.url}`,
    'users:',
    '- name: ward-test',
    '  user: {}',
    'contexts:',
    '- name: ward-test',
    '  context:',
    '    cluster: ward-test',
    '    user: ward-test',
    '    namespace: default',
    'current-context: ward-test',
    '',
  ].join('\n');
  await mkdir(dir, { recursive: true });
  await writeFile(path, text, { mode: 0o600 });
  return path;
}

export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the real kubectl with this kubeconfig (its discovery cache kept next to it, so nothing is
 * written under $HOME). Never throws for a non-zero exit: the result says how it ended.
 */
export function runKubectl(kubeconfig: string, args: string[], o: { input?: string; timeoutMs?: number } = {}): Promise<KubectlResult> {
  const cacheDir = join(kubeconfig, '..', 'kubectl-cache');
  return new Promise((resolve, reject) => {
    const child = execFile('kubectl', ['--kubeconfig', kubeconfig, '--cache-dir', cacheDir, ...args], {
      timeout: o.timeoutMs ?? 20_000,
      env: { ...process.env, KUBECONFIG: kubeconfig, HOME: join(kubeconfig, '..') },
      maxBuffer: 16 * 1024 * 1024,
    }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') return reject(err);
      resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr });
    });
    child.stdin?.end(o.input ?? '');
  });
}
