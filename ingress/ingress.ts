/**
 * Ingress: the composition of the mesh ingress (`ward ingress`, DESIGN §7).
 *
 *   IdentityManager ── joins with an ingress token as spiffe://TD/ns/ward-system/sa/ward-ingress
 *   ControlClient ──── the pool's ingress view (endpoints, routes, bundle) → MeshView + RouteTable,
 *                      validated whole (a bad version is NACKed; the previous one keeps serving)
 *   CertificateStore ─ external certificates per host (SNI), hot-reloaded
 *   KubeSecretCertificates (Kubernetes mode) ─ the store's dynamic hosts: each route host naming a
 *                      TLS Secret (tlsSecret) gets that Secret of the ingress's own namespace
 *   IngressServer ──── HTTPS (+ HTTP redirect) → route → the mesh via the proxy's sendToService
 *   AdminServer ────── loopback: healthz, readyz, metrics, state
 *
 * Everything reused from the node proxy comes through proxy/index.ts (balancer, upstream mTLS
 * pools, forwarding and retries, identity manager, admin endpoint) — nothing is copied.
 *
 * Kubernetes mode (`kube`): the ingress joins with its projected ServiceAccount token
 * (serviceAccountTokenFile) and takes route hosts' certificates from TLS Secrets. The Kubernetes
 * client (~75 MiB and ~0.6 s to load) is imported only then: kube-secrets.js is loaded in start().
 */
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import { systemClock, type Clock } from '../core/clock.js';
import { ControlClient, type Timers } from '../core/control/index.js';
import { SpiffeId } from '../core/identity/index.js';
import type { Logger } from '../core/logger.js';
import { parseCertificates, type Certificate, type TrustBundle } from '../core/pki/index.js';
import { WardError } from '../core/errors.js';
import { certificateHostError } from '../core/hostname.js';
import type { IngressRoute, ViewState } from '../core/protocol/index.js';
import { AdminServer, EndpointSet, IdentityManager, MeshView, RetryBudget, Upstreams } from '../proxy/index.js';
import { CertificateStore, INTERNAL_SOURCE, type CertificateSource } from './certificates.js';
import type { KubeSecretCertificates } from './kube-secrets.js';
import { IngressMetrics } from './metrics.js';
import { RouteTable, type RouteBackend } from './routes.js';
import { INGRESS_TLS, IngressServer, type IngressLimits } from './server.js';

export interface IngressOptions {
  caUrl: string;
  discoveryUrl: string;
  bundle: TrustBundle;
  joinToken?: string;
  /**
   * Kubernetes mode's join: the projected ServiceAccount token file (audience ward), read afresh at
   * each join; the CA attests it (TokenReview). Instead of joinToken.
   */
  serviceAccountTokenFile?: string;
  /**
   * Kubernetes mode: route hosts whose route names a TLS Secret (tlsSecret) are served with that
   * Secret of `namespace` (the ingress's own, ward-system), listed and watched through kubeConfig.
   * Without it, routes' tlsSecret are ignored (one warning).
   */
  kube?: {
    kubeConfig: KubeConfig;
    namespace: string;
    /** The Secret watch's restart backoff (default kube-secrets DEFAULT_SECRET_WATCH_BACKOFF). */
    backoff?: { initialMs: number; maxMs: number };
  };
  stateDir?: string;
  ttl?: string;
  https: { host: string; port: number };
  /** The plain-HTTP listener that redirects to HTTPS (308); none when absent. */
  http?: { host: string; port: number };
  admin: { host: string; port: number };
  certificates: readonly CertificateSource[];
  /**
   * Hosts served with an internal-name certificate from Ward's CA (obtained and renewed in memory
   * with the ingress identity; the CA grants only route hosts). Trusted only by clients that trust
   * Ward's root: for internal names, never for the public internet.
   */
  internalHosts?: readonly string[];
  /**
   * Every route host with no certificate of its own (no file source, no --internal-cert) is served
   * with an internal-name certificate from Ward's CA, following route changes (added hosts get one,
   * removed hosts are dropped). Local mode only: in Kubernetes mode the routes name TLS Secrets.
   */
  internalForRoutes?: boolean;
  /** Mutual TLS at the edge: host → PEM file of the CA certificates its clients must chain to. */
  clientCaFiles?: ReadonlyMap<string, string>;
  /** Hosts the plain-HTTP listener serves (routed into the mesh) instead of redirecting to HTTPS. */
  plainHosts?: readonly string[];
  defaultBackend?: RouteBackend;
  clusterDomain?: string;
  limits?: Partial<IngressLimits>;
  logger: Logger;
  registry: Registry;
  clock?: Clock;
  timers?: Timers;
  controlBackoff?: { initialMs: number; maxMs: number };
}

/** A pushed state, validated and compiled (#build), ready to apply. */
interface Built {
  view: MeshView;
  routes: RouteTable;
  /** Route host → the TLS Secret its route names (Kubernetes mode). */
  tlsSecrets: ReadonlyMap<string, string>;
}

export interface IngressAddresses {
  https: AddressInfo;
  http?: AddressInfo;
  admin: AddressInfo;
}

export class Ingress {
  readonly #o: IngressOptions;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #identities: IdentityManager;
  readonly #certs: CertificateStore;
  readonly #upstreams: Upstreams;
  readonly #budget: RetryBudget;
  readonly #metrics: IngressMetrics;
  readonly #balancers = new Map<string, EndpointSet>();
  #view: MeshView;
  #routes: RouteTable;
  #candidate: (Built & { version: number }) | undefined;
  #kube: KubeSecretCertificates | undefined;
  #tlsSecrets: ReadonlyMap<string, string> = new Map();
  /** Route hosts already warned about: they cannot have a certificate (internalForRoutes). */
  readonly #noCertificate = new Set<string>();
  #warnedTlsSecrets = false;
  #server: IngressServer | undefined;
  #admin: AdminServer | undefined;
  #control: ControlClient | undefined;
  #addresses: IngressAddresses | undefined;
  #bundlePem: string;
  #closing: Promise<void> | undefined;

  constructor(o: IngressOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: 'ingress' });
    this.#clock = o.clock ?? systemClock;
    const td = o.bundle.trustDomain;
    this.#metrics = new IngressMetrics(o.registry);
    this.#identities = new IdentityManager({
      caUrl: o.caUrl,
      trustDomain: td,
      node: 'ingress',
      identity: SpiffeId.ingress(td).toString(),
      bundle: o.bundle,
      joinToken: o.joinToken,
      serviceAccountTokenFile: o.serviceAccountTokenFile,
      stateDir: o.stateDir,
      ttl: o.ttl,
      clock: this.#clock,
      timers: o.timers,
      logger: o.logger,
      registry: o.registry,
    });
    const internal = (o.internalHosts ?? []).map((host): CertificateSource => ({ host, internal: true }));
    this.#certs = new CertificateStore({ sources: [...o.certificates, ...internal], tls: INGRESS_TLS, clock: this.#clock, logger: o.logger, registry: o.registry, timers: o.timers });
    this.#upstreams = new Upstreams({ trustDomain: td, bundle: () => this.#identities.bundle(), clock: this.#clock, logger: o.logger });
    this.#budget = new RetryBudget({ clock: this.#clock });
    this.#view = MeshView.empty(td, o.clusterDomain);
    this.#routes = new RouteTable([], o.defaultBackend ? { defaultBackend: o.defaultBackend } : undefined);
    this.#bundlePem = o.bundle.toPem();
  }

  async start(): Promise<IngressAddresses> {
    await this.#certs.start();
    await this.#identities.start();
    if (this.#o.internalHosts?.length || this.#o.internalForRoutes) {
      this.#identities.on('change', (name) => {
        const held = this.#identities.serverName(name);
        if (held) this.#certs.provide(held.host, held.chainPem, held.key.exportPem());
      });
      this.#identities.setServerNames(this.#o.internalHosts ?? []);
    }
    this.#admin = new AdminServer({
      source: { ready: () => this.ready(), state: () => this.state(), renewAll: () => this.#identities.renewAll() },
      registry: this.#o.registry,
      logger: this.#o.logger,
    });
    const admin = await this.#admin.listen(this.#o.admin.host, this.#o.admin.port);
    this.#server = new IngressServer({
      dataPlane: {
        routes: () => this.#routes,
        view: () => this.#view,
        identity: () => {
          try {
            return this.#identities.node();
          } catch {
            return undefined;
          }
        },
        balancer: (key) => this.#balancers.get(key),
        upstreams: this.#upstreams,
        budget: this.#budget,
        metrics: this.#metrics,
        logger: this.#o.logger,
      },
      certificates: this.#certs,
      limits: this.#o.limits,
      clientAuth: await this.#clientCas(),
      plainHosts: this.#o.plainHosts,
      clock: this.#clock,
    });
    const listening = await this.#server.listen(this.#o.https, this.#o.http);
    this.#addresses = { ...listening, admin };
    // Started once listening (a failed listen leaves nothing running) and before the first routes.
    const kubeModule = this.#o.kube !== undefined ? await import('./kube-secrets.js') : undefined;
    // (Not when close() came during the import: nothing would stop it.)
    if (this.#o.kube !== undefined && kubeModule !== undefined && this.#closing === undefined) {
      const { KubeSecretCertificates } = kubeModule;
      this.#kube = new KubeSecretCertificates({
        kubeConfig: this.#o.kube.kubeConfig,
        namespace: this.#o.kube.namespace,
        store: this.#certs,
        logger: this.#o.logger,
        registry: this.#o.registry,
        clock: this.#clock,
        timers: this.#o.timers,
        backoff: this.#o.kube.backoff,
      });
      this.#kube.start();
    }
    const td = this.#o.bundle.trustDomain;
    this.#control = new ControlClient({
      url: this.#o.discoveryUrl,
      trustDomain: td,
      credentials: () => this.#identities.node().credentials,
      validate: (next) => {
        this.#candidate = { ...this.#build(next), version: next.version };
      },
      logger: this.#o.logger,
      clock: this.#clock,
      timers: this.#o.timers,
      backoff: this.#o.controlBackoff,
    });
    this.#control.on('update', (state) => {
      const built = this.#candidate?.version === state.version ? this.#candidate : this.#build(state);
      this.#candidate = undefined;
      this.#apply(built);
    });
    this.#control.on('rejected', (frame, err) => this.#log.warn({ version: frame.version, err: err.message }, 'refused a configuration version from the pool; keeping the previous one'));
    this.#control.start();
    this.#log.info({ https: listening.https, http: listening.http, admin }, 'ingress started');
    return this.#addresses;
  }

  /** Reads the client CA files (once, at start): host → CA certificates. */
  async #clientCas(): Promise<Map<string, readonly Certificate[]>> {
    const out = new Map<string, readonly Certificate[]>();
    for (const [host, file] of this.#o.clientCaFiles ?? []) {
      let certs: Certificate[];
      try {
        certs = parseCertificates(await readFile(file, 'utf8'));
      } catch (err) {
        throw new WardError('WARD_CONFIG_INVALID', `client CA for ${host}: ${file}: ${(err as Error).message}`, { cause: err });
      }
      // In Kubernetes mode a host's certificate may come from a Secret later, so it cannot be checked here.
      if (!this.#certs.select(host) && !this.#o.internalHosts?.includes(host.toLowerCase()) && this.#o.kube === undefined) throw new WardError('WARD_CONFIG_INVALID', `client CA for ${host}: no certificate is configured for that host`);
      out.set(host.toLowerCase(), certs);
    }
    return out;
  }

  /**
   * Validates a pushed state whole: endpoints and bundle (MeshView) and the routes (RouteTable).
   * The routes' TLS Secrets are not judged here: a Secret a route names that is missing or unusable
   * makes that host unready, not the whole version refused.
   */
  #build(state: ViewState): Built {
    const view = MeshView.from(state, { trustDomain: this.#o.bundle.trustDomain, clusterDomain: this.#o.clusterDomain });
    const routes: IngressRoute[] = [];
    for (const r of state.resources.values()) if (r.kind === 'route') routes.push(r.value as IngressRoute);
    const table = new RouteTable(routes, this.#o.defaultBackend ? { defaultBackend: this.#o.defaultBackend } : undefined);
    // host → Secret name. Several routes for one host: the first naming a Secret wins (the pool
    // sends one route per host, so this does not happen in practice).
    const tlsSecrets = new Map<string, string>();
    for (const r of routes) {
      if (r.tlsSecret === undefined || tlsSecrets.has(r.host)) continue;
      tlsSecrets.set(r.host, typeof r.tlsSecret === 'string' ? r.tlsSecret : String(r.tlsSecret));
    }
    return { view, routes: table, tlsSecrets };
  }

  #apply({ view, routes, tlsSecrets }: Built): void {
    this.#tlsSecrets = tlsSecrets;
    if (this.#o.internalForRoutes) {
      // Route hosts without a certificate of their own get one from Ward's CA; the set follows the routes.
      // (A host that cannot have a certificate, e.g. *.localhost, is routed but gets none: logged once.)
      const hosts = routes.hosts().filter((h) => {
        const why = certificateHostError(h);
        if (why !== undefined && !this.#noCertificate.has(h)) {
          this.#noCertificate.add(h);
          this.#log.warn({ host: h, reason: why }, 'route host gets no internal-name certificate');
        }
        return why === undefined && !this.#certs.hasStaticSource(h);
      });
      this.#certs.setDynamicHosts(new Map(hosts.map((h) => [h, INTERNAL_SOURCE])));
      this.#identities.setServerNames([...(this.#o.internalHosts ?? []), ...hosts]);
    }
    if (this.#kube !== undefined) {
      this.#kube.setWanted(tlsSecrets);
    } else if (tlsSecrets.size > 0 && !this.#warnedTlsSecrets) {
      this.#warnedTlsSecrets = true;
      this.#log.warn({ hosts: [...tlsSecrets.keys()].slice(0, 20) }, 'routes name TLS Secrets, but the ingress is not in Kubernetes mode (--kube); ignoring them');
    }
    if (view.bundle) {
      const pem = view.bundle.toPem();
      if (pem !== this.#bundlePem) {
        this.#bundlePem = pem;
        this.#identities.setBundle(view.bundle);
      }
    }
    this.#view = view;
    this.#routes = routes;
    const live = new Set<string>();
    for (const [key, s] of view.services) {
      let set = this.#balancers.get(key);
      if (!set) {
        set = new EndpointSet(key, { clock: this.#clock, localNode: '' });
        this.#balancers.set(key, set);
      }
      set.update(s.endpoints);
      for (const e of s.endpoints) live.add(e.address);
    }
    for (const key of [...this.#balancers.keys()]) if (!view.services.has(key)) this.#balancers.delete(key);
    this.#upstreams.retainEndpoints(live);
  }

  ready(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.#view.version === 0) reasons.push('no configuration from the discovery pool yet');
    try {
      this.#identities.node();
    } catch {
      reasons.push('no valid ingress certificate');
    }
    // Hosts served from Secrets (Kubernetes mode) are NOT readiness conditions: an Ingress anywhere
    // in the cluster naming a missing or broken Secret would otherwise take every replica out of
    // service for every host. They show in /v1/state (tlsSecrets) and ward_ingress_tls_secret_problems;
    // readiness waits only for the first list of the Secrets.
    const dynamic = this.#certs.dynamicHosts();
    for (const host of this.#certs.missing()) {
      // Internal names are the operator's own (Ward's CA issues them): a missing one is unreadiness.
      if (!dynamic.has(host) || dynamic.get(host) === INTERNAL_SOURCE) reasons.push(`no certificate yet for ${host} (internal name, from Ward's CA)`);
    }
    if (this.#kube !== undefined && !this.#kube.status().synced) reasons.push(`the TLS Secrets of namespace ${this.#kube.status().namespace} are not listed yet`);
    // A certificate the operator configured (file, internal name) that expired — renewals from
    // Ward's CA failing, or a file nobody replaced — is still served (clients refuse it anyway), but
    // the ingress is not ready with it.
    const now = this.#clock.now();
    for (const c of this.#certs.list()) {
      if ((!dynamic.has(c.host) || dynamic.get(c.host) === INTERNAL_SOURCE) && c.notAfter.getTime() <= now) reasons.push(`the certificate for ${c.host} expired at ${c.notAfter.toISOString()}`);
    }
    return { ready: reasons.length === 0, reasons };
  }

  state(): unknown {
    const control = this.#control?.status();
    return {
      identity: this.#identities.nodeId.toString(),
      configVersion: this.#view.version,
      acknowledgedVersion: control?.ackedVersion ?? 0,
      control: control ?? null,
      listeners: this.#addresses ?? null,
      hosts: this.#routes.hosts(),
      certificates: this.#certs.list().map((c) => ({ host: c.host, subject: c.subject, notAfter: c.notAfter.toISOString(), fingerprint: c.fingerprint, source: c.source })),
      meshCertificate: this.#identities.status(),
      ...(this.#kube !== undefined ? { tlsSecrets: this.#kube.status() } : this.#tlsSecrets.size > 0 ? { tlsSecrets: { ignored: 'not in Kubernetes mode', hosts: [...this.#tlsSecrets.keys()] } } : {}),
      services: [...this.#view.services.keys()].map((key) => ({ service: key, endpoints: (this.#balancers.get(key)?.states() ?? []).map((e) => ({ address: e.endpoint.address, identity: e.endpoint.identity, workload: e.endpoint.workload, ejectedUntil: e.ejectedUntil })) })),
    };
  }

  addresses(): IngressAddresses | undefined {
    return this.#addresses;
  }

  close(graceMs = 5_000): Promise<void> {
    this.#closing ??= (async () => {
      await this.#server?.close(graceMs);
      await Promise.all([this.#control?.close(), this.#upstreams.close(), this.#identities.close(), this.#admin?.close(), this.#kube?.close()]);
      this.#certs.close();
    })();
    return this.#closing;
  }
}
