/**
 * Kubernetes mode helpers for the composition roots (`ward control --kube`, `ward ingress --kube`):
 * how to reach the API, and the CA material kept in the Secret ward-ca.
 */
// Types only at load time: the client library (~75 MiB) is loaded by the functions below, in
// Kubernetes mode only, so that every other `ward` command starts without it.
import type { KubeConfig, V1ConfigMap, V1Secret } from '@kubernetes/client-node';
import { isLoopback } from '../core/address.js';
import { WardError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { exportCaMaterial, importCaMaterial, readState } from '../ca/index.js';

/** The flags every Kubernetes-mode command takes (spread into its options). */
export const KUBE_OPTIONS = {
  kube: { type: 'boolean', default: false },
  kubeconfig: { type: 'string' },
  'kube-server': { type: 'string' },
  namespace: { type: 'string', default: 'ward-system' },
} as const;

export const KUBE_HELP = `  --kube                  Kubernetes mode: the Kubernetes API is the source of truth (in a pod: the
                          in-cluster ServiceAccount; else --kubeconfig FILE, or --kube-server URL)
  --kubeconfig FILE       a kubeconfig (its current context) instead of the in-cluster config
  --kube-server URL       an API server URL without credentials — plain http only on loopback (tests)
  --namespace NS          Ward's own namespace (default ward-system)`;

/**
 * The Kubernetes API client configuration of --kube: --kube-server URL (no credentials; tests and
 * `kubectl proxy`), --kubeconfig FILE, else the pod's in-cluster configuration (its ServiceAccount
 * token and CA). Plain http only to a loopback address: the Secrets' private keys travel on it.
 * The client library (~75 MiB) is loaded only here, in Kubernetes mode.
 */
export async function kubeConfigArg(server: string | undefined, file: string | undefined, env: NodeJS.ProcessEnv): Promise<KubeConfig> {
  if (server !== undefined && file !== undefined) throw new WardError('WARD_USAGE', 'give either --kube-server URL or --kubeconfig FILE, not both');
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  let what: string;
  if (server !== undefined) {
    let url: URL;
    try {
      url = new URL(server);
    } catch {
      throw new WardError('WARD_USAGE', `--kube-server wants a URL such as https://10.0.0.1:6443, got "${server}"`);
    }
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.username !== '' || url.password !== '' || (url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
      throw new WardError('WARD_USAGE', `--kube-server wants http(s)://HOST[:PORT] with nothing else, got "${server}"`);
    }
    kc.loadFromOptions({
      clusters: [{ name: 'ward', server: url.origin, skipTLSVerify: false }],
      users: [{ name: 'ward' }],
      contexts: [{ name: 'ward', cluster: 'ward', user: 'ward' }],
      currentContext: 'ward',
    });
    what = '--kube-server';
  } else if (file !== undefined) {
    try {
      kc.loadFromFile(file);
    } catch (err) {
      throw new WardError('WARD_CONFIG_INVALID', `--kubeconfig ${file}: ${(err as Error).message}`, { cause: err });
    }
    what = `--kubeconfig ${file}`;
  } else {
    if (!env.KUBERNETES_SERVICE_HOST || !env.KUBERNETES_SERVICE_PORT) {
      throw new WardError('WARD_USAGE', '--kube: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are not set); give --kubeconfig FILE or --kube-server URL');
    }
    kc.loadFromCluster();
    what = 'the in-cluster configuration';
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null) throw new WardError('WARD_CONFIG_INVALID', `${what}: no current cluster`);
  let url: URL;
  try {
    url = new URL(cluster.server);
  } catch {
    throw new WardError('WARD_CONFIG_INVALID', `${what}: the cluster's server "${cluster.server}" is not a URL`);
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (url.protocol === 'http:' && !isLoopback(host)) {
    throw new WardError(server !== undefined ? 'WARD_USAGE' : 'WARD_CONFIG_INVALID', `${what}: plain http to the Kubernetes API is allowed only to a loopback address, not ${url.host} (use https)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new WardError('WARD_CONFIG_INVALID', `${what}: the cluster's server must be http(s), got ${url.protocol}`);
  if (url.protocol === 'http:' && !cluster.skipTLSVerify) {
    // client-node refuses an http:// server unless skipTLSVerify is set (its way of saying plain
    // http is meant); there is no TLS to verify, and the address is loopback (checked above).
    kc.clusters = kc.clusters.map((c) => (c === cluster ? { ...c, skipTLSVerify: true } : c));
  }
  return kc;
}


/** The HTTP status of a client-node API error, when it is one. */
export function kubeStatus(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}

export interface CaSecretOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  /** Secret name (ward-ca). */
  name: string;
  stateDir: string;
  logger: Logger;
}

/**
 * Before the CA opens: when the Secret exists, its material is written into the (empty) state
 * directory — the control plane comes back with the same roots and keys. A state directory that
 * already holds a CA (an emptyDir that survived a container restart) is kept when it is the same
 * CA as the Secret's (same trust domain and creation time): it is the newer of the two (a rotation
 * step whose Secret update had not landed yet) and the caller writes it back. A different CA is
 * refused: two roots for one mesh.
 */
export async function restoreCaFromSecret(o: CaSecretOptions): Promise<'restored' | 'absent' | 'same' | 'local-newer'> {
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const api = o.kubeConfig.makeApiClient(CoreV1Api);
  let secret: V1Secret;
  try {
    secret = await api.readNamespacedSecret({ name: o.name, namespace: o.namespace });
  } catch (err) {
    if (kubeStatus(err) === 404) return 'absent';
    throw new WardError('WARD_KUBE_UNAVAILABLE', `cannot read the CA Secret ${o.namespace}/${o.name}: ${(err as Error).message}`, { cause: err });
  }
  const files: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(secret.data ?? {})) files[k] = Buffer.from(v, 'base64');
  const held = await readState(o.stateDir);
  if (held) {
    const mine = await exportCaMaterial(o.stateDir);
    if (mine['ca.json']?.equals(files['ca.json'] ?? Buffer.alloc(0))) return 'same';
    let theirs: { trustDomain?: unknown; createdAt?: unknown } = {};
    try {
      theirs = JSON.parse((files['ca.json'] ?? Buffer.alloc(0)).toString('utf8')) as typeof theirs;
    } catch {
      // an unreadable Secret is not the same CA
    }
    if (theirs.trustDomain === held.trustDomain && theirs.createdAt === held.createdAt) {
      o.logger.warn({ secret: `${o.namespace}/${o.name}` }, 'the state directory holds a newer state of the same CA than its Secret (an update that had not landed); writing it back');
      return 'local-newer';
    }
    throw new WardError('WARD_CONFIG_INVALID', `${o.stateDir} already holds a CA that is not the one in the Secret ${o.namespace}/${o.name}; empty the directory (the Secret is the CA's home in Kubernetes mode)`);
  }
  await importCaMaterial(o.stateDir, files);
  o.logger.info({ secret: `${o.namespace}/${o.name}`, files: Object.keys(files).length }, 'CA material restored from its Secret');
  return 'restored';
}

/**
 * The CA's material goes into the Secret: created when absent, replaced when it differs, left alone
 * when equal. A create that loses a race (409) re-reads: equal is fine, different is an error (two
 * control planes made two CAs).
 */
export async function saveCaToSecret(o: CaSecretOptions): Promise<void> {
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const api = o.kubeConfig.makeApiClient(CoreV1Api);
  const files = await exportCaMaterial(o.stateDir);
  const data = Object.fromEntries(Object.entries(files).map(([k, v]) => [k, v.toString('base64')]));
  const body: V1Secret = {
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    metadata: { name: o.name, namespace: o.namespace, labels: { 'app.kubernetes.io/name': 'ward-ca', 'app.kubernetes.io/part-of': 'ward' } },
    data,
  };
  const same = (d: Record<string, string> | undefined): boolean => {
    const a = Object.keys(d ?? {}).sort();
    return a.length === Object.keys(data).length && a.every((k) => d![k] === data[k]);
  };
  const where = `${o.namespace}/${o.name}`;
  let existing: V1Secret | undefined;
  try {
    existing = await api.readNamespacedSecret({ name: o.name, namespace: o.namespace });
  } catch (err) {
    if (kubeStatus(err) !== 404) throw new WardError('WARD_KUBE_UNAVAILABLE', `cannot read the CA Secret ${where}: ${(err as Error).message}`, { cause: err });
  }
  if (existing !== undefined && same(existing.data)) return;
  try {
    if (existing === undefined) await api.createNamespacedSecret({ namespace: o.namespace, body });
    else await api.replaceNamespacedSecret({ name: o.name, namespace: o.namespace, body });
  } catch (err) {
    throw new WardError('WARD_KUBE_UNAVAILABLE', `cannot ${existing === undefined ? 'create' : 'update'} the CA Secret ${where}: ${(err as Error).message}`, { cause: err });
  }
  o.logger.info({ secret: where, files: Object.keys(files).length }, existing === undefined ? 'CA material stored in its Secret' : 'CA Secret updated');
}

/**
 * Runs `write` until it succeeds: after a failure, again after a capped, jittered exponential delay
 * (1 s doubling to 30 s), logging each failure. `signal` ends the retries (the process is stopping).
 * Resolves when it succeeded or was stopped; never rejects.
 */
export async function writeUntilDone(what: string, write: () => Promise<void>, o: { logger: Logger; signal: AbortSignal; initialMs?: number; maxMs?: number }): Promise<void> {
  const initial = o.initialMs ?? 1_000;
  const max = o.maxMs ?? 30_000;
  for (let attempt = 0; !o.signal.aborted; attempt++) {
    try {
      await write();
      if (attempt > 0) o.logger.info({ attempts: attempt + 1 }, `${what}: done`);
      return;
    } catch (err) {
      const delay = Math.round(Math.min(max, initial * 2 ** Math.min(attempt, 20)) * (0.5 + Math.random() / 2));
      o.logger.error({ err, retryInMs: delay }, `${what} failed; retrying`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        o.signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
      });
    }
  }
}

/** The ConfigMap (in Ward's namespace) the proxies and the ingress mount as their initial --bundle. */
export const BUNDLE_CONFIGMAP = 'ward-bundle';

/**
 * Publishes the trust bundle as ConfigMap NAMESPACE/ward-bundle (key bundle.pem): created, or
 * replaced when it differs. Public material only. Proxies read it once at start (later bundles come
 * from the discovery pool), so a failure here is logged by the caller and retried on the next change.
 */
export async function publishBundle(o: { kubeConfig: KubeConfig; namespace: string; pem: string; logger: Logger }): Promise<void> {
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const api = o.kubeConfig.makeApiClient(CoreV1Api);
  const body: V1ConfigMap = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: BUNDLE_CONFIGMAP, namespace: o.namespace, labels: { 'app.kubernetes.io/name': BUNDLE_CONFIGMAP, 'app.kubernetes.io/part-of': 'ward' } },
    data: { 'bundle.pem': o.pem },
  };
  let existing: V1ConfigMap | undefined;
  try {
    existing = await api.readNamespacedConfigMap({ name: BUNDLE_CONFIGMAP, namespace: o.namespace });
  } catch (err) {
    if (kubeStatus(err) !== 404) throw new WardError('WARD_KUBE_UNAVAILABLE', `cannot read the ConfigMap ${o.namespace}/${BUNDLE_CONFIGMAP}: ${(err as Error).message}`, { cause: err });
  }
  try {
    if (existing === undefined) await api.createNamespacedConfigMap({ namespace: o.namespace, body });
    else if (existing.data?.['bundle.pem'] !== o.pem) await api.replaceNamespacedConfigMap({ name: BUNDLE_CONFIGMAP, namespace: o.namespace, body });
    else return;
  } catch (err) {
    throw new WardError('WARD_KUBE_UNAVAILABLE', `cannot write the ConfigMap ${o.namespace}/${BUNDLE_CONFIGMAP}: ${(err as Error).message}`, { cause: err });
  }
  o.logger.info({ configMap: `${o.namespace}/${BUNDLE_CONFIGMAP}` }, 'trust bundle published');
}
