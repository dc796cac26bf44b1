/**
 * `ward control`: the control plane in one process, like istiod — the certificate authority and the
 * discovery pool side by side, each still its own module (ca/ and discovery/ never import each
 * other; this composition root is the only place that knows both).
 *
 * Wiring (startControl):
 *   ward.yaml ──LocalFileSource──► MeshState ──► DiscoveryServer (--discovery, mTLS, NDJSON push)
 *        │                             ▲    ▲
 *        │ (current accepted model)    │    └── bundle: ca.bundle() at start and on every ca.onChange
 *        ▼                             │
 *   modelAuthorizer ──► CaServer (--listen: join / issue; --admin: /healthz /metrics /v1/status)
 *                           │
 *                  ca.onIssued ──► state.markIssued(identity)   (endpoint publication, DESIGN §3.3)
 *
 * The discovery server presents spiffe://TD/ward/discovery, issued by the CA in-process and renewed
 * at half-life (and at once after a rotation step), like the CA server's own certificate.
 * A configuration whose trust domain differs from the CA's is refused at start
 * (WARD_CONFIG_INVALID); an edit that changes it later is refused too (the last good model stays).
 */
import type { Clock } from '../core/clock.js';
import { systemClock } from '../core/clock.js';
import { WardError } from '../core/errors.js';
import { createLogger, type Logger } from '../core/logger.js';
import { createRegistry, type Registry } from '../core/metrics.js';
import { INGRESS_SERVICE_ACCOUNT, parseTrustDomain } from '../core/identity/index.js';
import { PrivateKey, createCsr } from '../core/pki/index.js';
import type { Credentials } from '../core/tls/index.js';
import { CaServer, CertificateAuthority, JoinTokens, assertLoopback, readState, type CaServerLimits, type InitResult } from '../ca/index.js';
import type { KubeConfig } from '@kubernetes/client-node';
import type { KubeSource, KubeSourceOptions } from '../discovery/kube.js';
import {
  DEFAULT_GRACE_MS,
  DiscoveryServer,
  LocalFileSource,
  MeshState,
  modelAuthorizer,
  type DiscoveryServerLimits,
  type MeshModel,
} from '../discovery/index.js';
import { adminAddressArg, hostPort, hostText, listenError, logLevelArg, reportOf } from './ca.js';
import { EXIT_OK, durationFlag, flag, optional, required, type Command } from './command.js';
import { POLICIES_PATH, policySnapshot } from './policy.js';
import { KUBE_HELP, KUBE_OPTIONS, kubeConfigArg, publishBundle, restoreCaFromSecret, saveCaToSecret, writeUntilDone } from './kube.js';

/** Lifetime of the discovery server's own certificate (renewed at half of it), like the CA server's. */
export const DISCOVERY_CERT_TTL_MS = 3_600_000;
/** Retry delay after a failed renewal of the discovery server's certificate. */
const RENEW_RETRY_MS = 30_000;
/** Recent inventory records replayed at start, so identities issued before a restart publish at once. */
const ISSUED_REPLAY = 1000;

export interface Address {
  host: string;
  port: number;
}

/** Kubernetes mode: the API is the source of truth, TokenReview attests nodes, the CA lives in a Secret. */
export interface KubeControlOptions {
  kubeConfig: KubeConfig;
  /** Ward's own namespace (ward-system): proxy pods, the CA Secret. */
  namespace: string;
  trustDomain: string;
  /** The Secret holding the CA material (ward-ca/ward-ca: its own namespace, readable by the control plane only). */
  caSecret: { namespace: string; name: string };
  /** KubeSource tuning (tests). */
  source?: Partial<Omit<KubeSourceOptions, 'kubeConfig' | 'trustDomain' | 'namespace' | 'logger' | 'registry' | 'clock'>>;
}

export interface StartControlOptions {
  stateDir: string;
  /** Path of ward.yaml (local mode). Exactly one of config and kube. */
  config?: string;
  kube?: KubeControlOptions;
  /** CA mesh API. */
  listen: Address;
  /** Discovery (push) API. */
  discovery: Address;
  /** Admin listener (loopback only); none when absent. */
  admin?: Address;
  /** Create the CA first (in the config's trust domain) when stateDir holds none. */
  init?: boolean;
  /** How long a disconnected node's endpoints stay published (default 30s). */
  graceMs?: number;
  logger: Logger;
  registry?: Registry;
  clock?: Clock;
  /** LocalFileSource tuning (tests). */
  source?: { pollIntervalMs?: number; debounceMs?: number; watch?: boolean };
  caLimits?: Partial<CaServerLimits>;
  discoveryLimits?: Partial<DiscoveryServerLimits>;
  /** Lifetime of the discovery server's certificate (default 1h; 5m..24h). */
  discoveryCertTtlMs?: number;
}

export interface Control {
  trustDomain: string;
  ca: CertificateAuthority;
  tokens: JoinTokens;
  source: LocalFileSource | KubeSource;
  state: MeshState;
  caServer: CaServer;
  discovery: DiscoveryServer;
  /** Bound ports (port 0 in the options picks a free one). */
  ports: { ca: number; discovery: number; admin?: number };
  /** Set when `init` created the CA. */
  created?: InitResult;
  /** What the admin /v1/status route shows under `mesh`. */
  meshStatus(): unknown;
  /** Stops everything: streams, listeners (draining up to graceMs), the watcher, the CA. Idempotent. */
  close(graceMs?: number): Promise<void>;
}

/** Starts the control plane. On a failure, whatever was already started is stopped again. */
export async function startControl(o: StartControlOptions): Promise<Control> {
  const clock = o.clock ?? systemClock;
  const registry = o.registry ?? createRegistry();
  const log = o.logger.child({ component: 'control' });
  if (o.admin) assertLoopback(o.admin.host);
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  const unwind = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        log.error({ err }, 'stopping a control-plane part failed');
      }
    }
  };
  try {
    if ((o.config === undefined) === (o.kube === undefined)) throw new WardError('WARD_CONFIG_INVALID', 'the control plane needs either a ward.yaml (config) or Kubernetes mode (kube), not both');
    const kube = o.kube;
    const what = o.config ?? 'the Kubernetes API';
    // The configuration first: an unreadable ward.yaml, or an API server that cannot be listed, must
    // not create or lock anything.
    // Kubernetes mode loads the Kubernetes client (discovery/kube.ts) here, and only here.
    const kubeParts = kube ? await import('../discovery/kube.js') : undefined;
    const kubeSource = kube && kubeParts ? new kubeParts.KubeSource({ ...kube.source, kubeConfig: kube.kubeConfig, trustDomain: kube.trustDomain, namespace: kube.namespace, logger: o.logger, registry, clock }) : undefined;
    const source: LocalFileSource | KubeSource = kubeSource ?? new LocalFileSource({ file: o.config!, logger: o.logger, registry, clock, ...o.source });
    cleanups.push(() => source.close());
    const initial = await source.start();

    // Kubernetes mode: the CA's home is the Secret; the state directory (an emptyDir) is filled from it.
    const secret = kube ? { kubeConfig: kube.kubeConfig, namespace: kube.caSecret.namespace, name: kube.caSecret.name, stateDir: o.stateDir, logger: log } : undefined;
    if (secret) await restoreCaFromSecret(secret);
    let created: InitResult | undefined;
    if (o.init && !(await readState(o.stateDir))) {
      created = await CertificateAuthority.init({ stateDir: o.stateDir, trustDomain: initial.trustDomain, clock });
      log.info({ stateDir: o.stateDir, trustDomain: created.trustDomain }, 'created a CA');
    }
    const st = await readState(o.stateDir);
    if (!st) throw new WardError('WARD_CA_NOT_INITIALIZED', `${o.stateDir} holds no CA; create one with: ward ca init --state ${o.stateDir} --trust-domain ${initial.trustDomain} (or pass --init)`);
    if (st.trustDomain !== initial.trustDomain) {
      throw new WardError('WARD_CONFIG_INVALID', `${what} declares trust domain ${initial.trustDomain}, but the CA in ${o.stateDir} is for ${st.trustDomain}; they must be the same`);
    }
    const trustDomain = st.trustDomain;

    const ca = await CertificateAuthority.open({ stateDir: o.stateDir, clock, logger: o.logger, registry, holder: 'ward control' });
    cleanups.push(() => ca.close());
    const tokens = new JoinTokens({ stateDir: o.stateDir, trustDomain, clock });

    const state = new MeshState({ model: initial, clock, graceMs: o.graceMs ?? DEFAULT_GRACE_MS });
    cleanups.push(() => state.close());
    state.setBundle(ca.bundle().toPem(), ca.bundleSequence);
    // The model the mesh runs on: the source's last good one, as long as it keeps the CA's trust domain.
    source.on('update', (model: MeshModel) => {
      if (model.trustDomain !== trustDomain) {
        log.error({ source: what, trustDomain: model.trustDomain, ca: trustDomain }, 'configuration change refused: it changes the trust domain, which must stay the CA\'s; keeping the last good configuration');
        return;
      }
      state.setModel(model);
    });
    if (source instanceof LocalFileSource) {
      source.on('rejected', (err) => log.warn({ file: o.config, code: err.code, problems: err.total }, 'ward.yaml edit rejected; the mesh keeps the last good configuration'));
    }

    // Identities issued before a restart and still valid publish their endpoints without waiting for a renewal.
    const now = clock.now();
    for (const r of await ca.inventory.query({ limit: ISSUED_REPLAY })) if (Date.parse(r.notAfter) > now) state.markIssued(r.identity);
    const offIssued = ca.onIssued((r) => state.markIssued(r.id.toString()));
    cleanups.push(offIssued);

    // Discovery's own certificate, from the CA in-process.
    const serverCertTtl = o.discoveryCertTtlMs ?? DISCOVERY_CERT_TTL_MS;
    const issueDiscoveryCreds = async (): Promise<{ creds: Credentials; notAfter: number }> => {
      const key = PrivateKey.generate();
      const id = DiscoveryServer.serverId(trustDomain);
      const issued = await ca.issue({ csr: createCsr(key), identity: id, requester: 'ward control (self)', ttlMs: serverCertTtl });
      return { creds: { id, chainPem: issued.chainPem, key, bundle: ca.bundle() }, notAfter: issued.notAfter.getTime() };
    };
    let discoveryCreds = await issueDiscoveryCreds();
    const discovery = new DiscoveryServer({ state, credentials: discoveryCreds.creds, clock, logger: o.logger, registry, limits: o.discoveryLimits });
    cleanups.push(() => discovery.close());

    let closed = false;
    let renewTimer: NodeJS.Timeout | undefined;
    let refreshing: Promise<void> = Promise.resolve();
    const refreshDiscovery = (): Promise<void> =>
      (refreshing = refreshing.then(async () => {
        if (closed) return;
        discoveryCreds = await issueDiscoveryCreds();
        discovery.setCredentials(discoveryCreds.creds);
        scheduleRenewal();
      }));
    const scheduleRenewal = (delayMs?: number) => {
      if (closed) return;
      clearTimeout(renewTimer);
      const delay = delayMs ?? Math.max(1_000, (discoveryCreds.notAfter - clock.now()) / 2);
      renewTimer = setTimeout(() => {
        refreshDiscovery().catch((err) => {
          log.error({ err }, 'renewing the discovery server certificate failed; retrying');
          scheduleRenewal(RENEW_RETRY_MS);
        });
      }, Math.min(delay, 2 ** 31 - 1));
      renewTimer.unref();
    };
    cleanups.push(async () => {
      closed = true;
      clearTimeout(renewTimer);
      await refreshing.catch(() => undefined);
    });

    const meshStatus = () => {
      if (kubeSource || !(source instanceof LocalFileSource)) return { ...discovery.meshStatus(), kubernetes: kubeSource?.status() };
      const s = source.status();
      return {
        // What `ward status` reads: discovery's MeshStatus (clients, nodes, services, workloads).
        ...discovery.meshStatus(),
        config: {
          file: s.file,
          applied: s.applied,
          rejected: s.rejected,
          ...(s.lastError ? { lastError: s.lastError.message } : {}),
          ...(s.appliedAt !== undefined ? { appliedAt: new Date(s.appliedAt).toISOString() } : {}),
          ...(s.rejectedAt !== undefined ? { rejectedAt: new Date(s.rejectedAt).toISOString() } : {}),
        },
      };
    };

    const caServer = new CaServer({
      ca,
      tokens,
      // Asked at every request, against the model the mesh runs on now: an edit revokes at once.
      // Kubernetes mode: the ingress identity is renewed only while a ward-ingress pod runs.
      authorizer: kubeSource
        ? { ...modelAuthorizer(() => state.model), mayRenewIngress: () => kubeSource.hasRunningPod(INGRESS_SERVICE_ACCOUNT) }
        : modelAuthorizer(() => state.model),
      // Kubernetes mode: joins with a projected ServiceAccount token, checked with TokenReview
      // against the pods the source sees (the pod, its UID, service account and node).
      ...(kube && kubeParts && kubeSource
        ? { attestor: new kubeParts.KubeAttestor({ kubeConfig: kube.kubeConfig, trustDomain, namespace: kube.namespace, pods: kubeSource, logger: o.logger, registry }) }
        : {}),
      clock,
      logger: o.logger,
      registry,
      limits: o.caLimits,
      // The CA's report at the top level (so `ward ca inspect --server` reads it), the pool's beside it.
      status: async (q) => ({ ...(await reportOf(ca, clock.now(), q.latest ?? 10)), mesh: meshStatus() }),
      // What `ward policy explain --server` decides on: the policies and services the mesh runs on now.
      adminRoutes: new Map([[POLICIES_PATH, () => policySnapshot(state.model, state.version)]]),
    });
    let closeGraceMs = 5_000;
    cleanups.push(() => caServer.close(closeGraceMs));

    // Kubernetes mode: the bundle is published for the proxies and the ingress to mount, and after a
    // rotation step the Secret and the bundle follow (one write at a time, in order).
    // Every write is retried until it lands (the API may be briefly unavailable, RBAC not yet
    // propagated): a CA only in the emptyDir would be lost with the pod, and proxies wait for the
    // bundle ConfigMap. Writes run one at a time, in order; stopping ends the retries.
    const stopWrites = new AbortController();
    let savingSecret = Promise.resolve();
    const sync = (pem: string): Promise<void> => {
      if (!kube || !secret) return savingSecret;
      savingSecret = savingSecret
        .then(() => writeUntilDone('storing the CA material in its Secret', () => saveCaToSecret(secret), { logger: log, signal: stopWrites.signal }))
        .then(() => writeUntilDone('publishing the trust bundle ConfigMap', () => publishBundle({ kubeConfig: kube.kubeConfig, namespace: kube.namespace, pem, logger: log }), { logger: log, signal: stopWrites.signal }));
      return savingSecret;
    };
    if (kube) {
      // The first attempt is awaited only briefly: a failure is logged and retried in the background.
      const first = sync(ca.bundle().toPem());
      await Promise.race([first, new Promise((r) => setTimeout(r, 10_000).unref())]);
    }
    const offChange = ca.onChange((change) => {
      void sync(change.bundle.toPem());
      state.setBundle(change.bundle.toPem(), change.bundleSequence);
      caServer.refreshCredentials().catch((err) => log.error({ err }, 'refreshing the CA server credentials failed'));
      refreshDiscovery().catch((err) => {
        log.error({ err }, 'refreshing the discovery server credentials failed; retrying');
        scheduleRenewal(RENEW_RETRY_MS);
      });
    });
    cleanups.push(offChange);
    cleanups.push(() => {
      stopWrites.abort();
      return savingSecret;
    });

    let bound: { port: number; adminPort?: number };
    let discoveryPort: number;
    try {
      bound = await caServer.listen({ host: o.listen.host, port: o.listen.port, ...(o.admin ? { adminHost: o.admin.host, adminPort: o.admin.port } : {}) });
      discoveryPort = (await discovery.listen(o.discovery)).port;
    } catch (err) {
      throw listenError(err);
    }
    scheduleRenewal();
    // Closed first on the way down (close() is idempotent): no model update after stopping began.
    cleanups.push(() => source.close());
    log.info({ trustDomain, ca: bound.port, discovery: discoveryPort, admin: bound.adminPort }, 'control plane running');

    let closing: Promise<void> | undefined;
    return {
      trustDomain,
      ca,
      tokens,
      source,
      state,
      caServer,
      discovery,
      ports: { ca: bound.port, discovery: discoveryPort, ...(bound.adminPort !== undefined ? { admin: bound.adminPort } : {}) },
      ...(created ? { created } : {}),
      meshStatus,
      close(graceMs = 5_000) {
        closeGraceMs = graceMs;
        // In reverse order of start: the watcher stops, the CA server drains in-flight requests,
        // discovery streams end, and the CA (durable logs, lock) closes last.
        closing ??= unwind();
        return closing;
      },
    };
  } catch (err) {
    await unwind();
    throw err;
  }
}

// ------------------------------------------------------------------------------------------------

const control: Command = {
  name: 'control',
  summary: 'run the control plane: the CA and the discovery pool in one process',
  options: {
    state: { type: 'string' },
    config: { type: 'string' },
    listen: { type: 'string', default: '127.0.0.1:8443' },
    discovery: { type: 'string', default: '127.0.0.1:8444' },
    admin: { type: 'string', default: '127.0.0.1:9443' },
    init: { type: 'boolean', default: false },
    grace: { type: 'string', default: '30s' },
    'log-level': { type: 'string', default: 'info' },
    ...KUBE_OPTIONS,
    'trust-domain': { type: 'string', default: 'cluster.local' },
    'ca-secret': { type: 'string', default: 'ward-ca/ward-ca' },
  },
  help: `Usage: ward control --state DIR --config ward.yaml [--listen HOST:PORT] [--discovery HOST:PORT]
                    [--admin HOST:PORT] [--init] [--grace 30s] [--log-level LEVEL]
       ward control --kube --state DIR [--trust-domain TD] [--ca-secret NS/NAME] [--init] [...]

Runs the control plane: the certificate authority and the discovery pool in one process.
ward.yaml is the source of truth: it is watched, a valid edit reaches every connected proxy as an
incremental update, and an invalid one is logged and ignored (the last good configuration keeps
serving). The CA issues a workload certificate to a node only when ward.yaml declares that workload
on that node, so moving or removing a workload revokes it at once.

Listeners:
  --listen     CA API (TLS 1.3, presents spiffe://TD/ward/ca): /v1/health, /v1/bundle,
               /v1/join (join token → node certificate), /v1/issue (node certificate → certificate)
  --discovery  discovery pool (TLS 1.3, client certificate required, presents
               spiffe://TD/ward/discovery): GET /v1/stream, POST /v1/ack — node proxies and the ingress
  --admin      loopback only, plain HTTP: /healthz, /metrics, /v1/status (the CA report, plus "mesh":
               connected proxies, versions, the state of ward.yaml), /v1/policies (the policies and
               services in force, for "ward policy explain --server")

Flags:
  --state DIR            the CA state directory
  --config FILE          ward.yaml (its trustDomain must be the CA's)
  --listen HOST:PORT     CA API address (default 127.0.0.1:8443)
  --discovery HOST:PORT  discovery address (default 127.0.0.1:8444)
  --admin HOST:PORT      admin address, loopback only (default 127.0.0.1:9443)
  --init                 create the CA first, in ward.yaml's trust domain, when DIR holds none
  --grace DURATION       how long a disconnected node's endpoints stay published (default 30s)
  --log-level LEVEL      trace, debug, info, warn, error, fatal or silent (default info)

Kubernetes mode (--kube; docs/kubernetes.md): the Kubernetes API replaces ward.yaml — Pods,
Services, Namespaces, EndpointSlices, Ingresses of class ward and AuthorizationPolicy objects,
watched with informers (relisted after a 410, restarted with backoff after errors). Node proxies
and the ingress join with a projected ServiceAccount token (audience ward) checked by TokenReview:
a node certificate only for the node the token's ward-proxy pod runs on. The CA's material lives in
a Secret (--ca-secret, default ward-ca/ward-ca, in its own namespace so that no other component's
RBAC can read it): restored into --state at start, created there by --init on first start, updated
after every rotation step. The trust bundle is published as the ConfigMap ward-bundle (bundle.pem)
in --namespace for the proxies and the ingress to mount.
${KUBE_HELP}
  --trust-domain TD       the mesh's trust domain in Kubernetes mode (default cluster.local)
  --ca-secret NS/NAME     the CA Secret (default ward-ca/ward-ca)

Port 0 picks a free port; the bound addresses are printed on standard error once every listener is
up ("ward control: CA https://HOST:PORT  discovery https://HOST:PORT  admin http://HOST:PORT").
Logs are JSON lines on standard error. SIGINT/SIGTERM drain and stop with exit status 0.

Join a node:  ward token create --state DIR --node NODE   (while ward control runs)

Example:
  ward control --state .ward --config ward.yaml --init`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const kubeMode = flag(args, 'kube');
    const config = kubeMode ? undefined : required(args, 'config');
    if (kubeMode && optional(args, 'config') !== undefined) throw new WardError('WARD_USAGE', '--config and --kube exclude each other: in Kubernetes mode the API is the source of truth');
    const caSecret = String(args.values['ca-secret']);
    const m = /^([a-z0-9][-a-z0-9]{0,62})\/([a-z0-9][-.a-z0-9]{0,252})$/.exec(caSecret);
    if (kubeMode && !m) throw new WardError('WARD_USAGE', `--ca-secret wants NAMESPACE/NAME, got ${JSON.stringify(caSecret.slice(0, 100))}`);
    const kube = kubeMode
      ? { kubeConfig: await kubeConfigArg(optional(args, 'kube-server'), optional(args, 'kubeconfig'), io.env ?? process.env), namespace: String(args.values.namespace), trustDomain: parseTrustDomain(String(args.values['trust-domain'])), caSecret: { namespace: m![1], name: m![2] } }
      : undefined;
    // Every flag is checked before anything is created, opened or bound.
    const listen = hostPort(String(args.values.listen), '--listen');
    const discovery = hostPort(String(args.values.discovery), '--discovery');
    const admin = adminAddressArg(args);
    const level = logLevelArg(args);
    const graceMs = durationFlag(args, 'grace')!;
    const logger = createLogger({ level });
    // Registered before starting, so a signal during start-up still stops cleanly.
    let onSignal: (signal: NodeJS.Signals) => void = () => undefined;
    const stopped = new Promise<NodeJS.Signals>((resolve) => (onSignal = resolve));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let running: Control | undefined;
    try {
      running = await startControl({ stateDir, ...(kube ? { kube } : { config }), listen, discovery, admin, init: flag(args, 'init'), graceMs, logger });
      if (running.created) io.stderr.write(`ward control: created a CA in ${stateDir} (trust domain ${running.created.trustDomain}, root ${running.created.root.fingerprint})\n`);
      const p = running.ports;
      io.stderr.write(`ward control: CA https://${hostText(listen.host)}:${p.ca}  discovery https://${hostText(discovery.host)}:${p.discovery}  admin http://${hostText(admin.host)}:${p.admin}\n`);
      const signal = await stopped;
      io.stderr.write(`ward control: ${signal}: draining and stopping\n`);
      return EXIT_OK;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      await running?.close();
      logger.flush();
    }
  },
};

export const controlCommands: Command[] = [control];
