import { WardError } from '../core/errors.js';
import { certificateHostError } from '../core/hostname.js';
import { systemClock } from '../core/clock.js';
import { createLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { parseTrustDomain } from '../core/identity/index.js';
import { Ingress, type CertificateSource } from '../ingress/index.js';
import { EXIT_OK, durationFlag, optional, type Command } from './command.js';
import { adminAddressArg, hostPort, hostText, listenError, logLevelArg } from './ca.js';
import { bundleArg, controlPlaneUrls, runUntilSignal, tokenArg } from './member.js';
import { kubeConfigArg } from './kube.js';

/** The token may also come from the environment, so that it never shows in `ps`. */
const TOKEN_ENV = 'WARD_INGRESS_TOKEN';

export const INGRESS_DEFAULTS = { https: '127.0.0.1:10443', http: '127.0.0.1:10080', admin: '127.0.0.1:15020' } as const;

/** Kubernetes mode (docs/kubernetes.md): Ward's namespace, and where the projected token is mounted. */
export const KUBE_DEFAULTS = { namespace: 'ward-system', tokenFile: '/var/run/secrets/ward/token' } as const;

const NAMESPACE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** --cert HOST=CERT.pem,KEY.pem and --pfx HOST=BUNDLE.p12[,PASSPHRASE-FILE] → sources. */
function certificateSources(certs: string[], pfxs: string[]): CertificateSource[] {
  const out: CertificateSource[] = [];
  for (const c of certs) {
    const m = /^([^=]+)=([^,]+),(.+)$/.exec(c);
    if (!m) throw new WardError('WARD_USAGE', `--cert wants HOST=CERT.pem,KEY.pem, got "${c}"`);
    out.push({ host: m[1], certFile: m[2], keyFile: m[3] });
  }
  for (const p of pfxs) {
    const m = /^([^=]+)=([^,]+)(?:,(.+))?$/.exec(p);
    if (!m) throw new WardError('WARD_USAGE', `--pfx wants HOST=BUNDLE.p12[,PASSPHRASE-FILE], got "${p}"`);
    out.push(m[3] ? { host: m[1], pfxFile: m[2], passphraseFile: m[3] } : { host: m[1], pfxFile: m[2] });
  }
  return out;
}

const ingress: Command = {
  name: 'ingress',
  summary: 'run the mesh ingress: external TLS termination and routing into the mesh',
  options: {
    bundle: { type: 'string' },
    'trust-domain': { type: 'string', default: 'cluster.local' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    state: { type: 'string' },
    ca: { type: 'string', default: 'https://127.0.0.1:8443' },
    discovery: { type: 'string', default: 'https://127.0.0.1:8444' },
    https: { type: 'string', default: INGRESS_DEFAULTS.https },
    http: { type: 'string', default: INGRESS_DEFAULTS.http },
    'no-redirect': { type: 'boolean', default: false },
    admin: { type: 'string', default: INGRESS_DEFAULTS.admin },
    cert: { type: 'string', multiple: true },
    pfx: { type: 'string', multiple: true },
    'internal-cert': { type: 'string', multiple: true },
    'internal-certs': { type: 'boolean', default: false },
    'client-ca': { type: 'string', multiple: true },
    'plain-host': { type: 'string', multiple: true },
    'default-backend': { type: 'string' },
    'headers-timeout': { type: 'string', default: '10s' },
    'max-body': { type: 'string', default: String(10 * 1024 * 1024) },
    ttl: { type: 'string' },
    'cluster-domain': { type: 'string', default: 'cluster.local' },
    'log-level': { type: 'string', default: 'info' },
    kube: { type: 'boolean', default: false },
    kubeconfig: { type: 'string' },
    'kube-server': { type: 'string' },
    namespace: { type: 'string' },
    'kube-token-file': { type: 'string' },
  },
  help: `Usage: ward ingress --bundle FILE (--cert HOST=CERT,KEY | --pfx HOST=P12[,PASSFILE] | --internal-cert HOST)...
                    [--token TOKEN | --token-file FILE] [--state DIR] [--https HOST:PORT]
                    [--http HOST:PORT | --no-redirect] [--admin HOST:PORT] [options]
       ward ingress --kube --bundle FILE [--namespace NS] [--kube-token-file FILE]
                    [--kubeconfig FILE | --kube-server URL] [options]

Runs the mesh ingress (DESIGN §7), the mesh's front door. It joins with an ingress join token
("ward token create --ingress") as spiffe://<trust-domain>/ns/ward-system/sa/ward-ingress, follows
the routes and endpoints the discovery pool pushes (ward.yaml "ingress.routes"), and:

  https  TLS 1.2 (ECDHE + AEAD suites only) and 1.3, ALPN h2 and http/1.1, a certificate per host
         chosen by SNI (exact or *.wildcard), reloaded when its files change (a bad new certificate
         is refused and the old one kept). SNI and Host must agree (421); unknown host or path: 404.
         Routes follow Kubernetes Ingress semantics (Exact / Prefix by path element, longest match).
         Requests go into the mesh over mutual TLS with the ingress identity, balanced and failing
         over like a node proxy; destination policies see the ingress identity. X-Forwarded-For,
         -Proto, -Host and X-Request-Id are set; client-supplied identity headers are dropped.
  http   redirects to https (308), unless --no-redirect; hosts named with --plain-host are served
         there instead (plain HTTP into the mesh, X-Forwarded-Proto: http) — for hosts that must
         stay reachable without TLS (health checks, legacy clients).
  admin  loopback only: /healthz, /readyz, /metrics, /v1/state.

Kubernetes mode (--kube; docs/kubernetes.md): the ingress runs in the ward-system namespace as the
ServiceAccount ward-ingress. It joins with its projected ServiceAccount token (audience ward; the CA
checks it with a TokenReview) instead of a join token, and takes certificates from TLS Secrets: a
route whose Ingress lists the host under spec.tls is served with that Secret (type kubernetes.io/tls,
data tls.crt and tls.key), read from the ingress's OWN namespace only (--namespace), never from the
Ingress's namespace. The Secrets are listed and watched (only type kubernetes.io/tls); an update is
judged like a file (a bad one is refused, the old certificate kept) and served to new connections.
A Secret that is missing, of another type or without tls.crt/tls.key is logged, and the host is
listed in /readyz and /v1/state. No --cert is needed; --cert, --pfx and --internal-cert still work
and take precedence for their hosts. Without --kube, routes naming Secrets are ignored (one warning).

Flags:
  --bundle FILE           the mesh trust bundle, PEM ("ward ca bundle --state DIR")
  --cert HOST=CERT,KEY    a PEM certificate chain and key for HOST (repeatable)
  --pfx HOST=P12[,PASS]   a PKCS#12 bundle for HOST, with an optional passphrase file (repeatable)
  --internal-cert HOST    serve HOST (a route host) with a certificate from Ward's own CA, obtained
                          and renewed in memory with the ingress identity. For INTERNAL names only:
                          just clients that trust Ward's root accept it (curl --cacert the bundle),
                          never browsers on the public internet — use --cert there (repeatable)
  --internal-certs        the same for EVERY route host without a certificate of its own, following
                          route changes (what "ward up" runs); not with --kube (Secrets there)
  --client-ca HOST=CA.pem mutual TLS at the edge for HOST: clients must present a certificate that
                          chains to these CAs (clientAuth usage); the verified subject and SHA-256
                          go to the backend in x-forwarded-client-cert (Hash=…;Subject="…"); a
                          request without one is answered 403 (repeatable)
  --plain-host HOST       serve HOST on the http listener instead of redirecting it (repeatable)
  --default-backend SERVICE.NAMESPACE:PORT
                          where requests no route matches go (any host); default: 404
  --token TOKEN           an ingress join token; or set ${TOKEN_ENV}; --token-file FILE reads it
  --kube                  Kubernetes mode (above); API access from the pod's in-cluster configuration
  --kubeconfig FILE       Kubernetes mode: API access from this kubeconfig's current context instead
  --kube-server URL       Kubernetes mode: this API server, without credentials (tests, kubectl proxy);
                          plain http only to a loopback address
  --namespace NS          Kubernetes mode: the namespace the TLS Secrets are read from, the ingress's
                          own (default ${KUBE_DEFAULTS.namespace})
  --kube-token-file FILE  join with the projected ServiceAccount token in FILE (audience ward), read
                          afresh at each join; not with --token/--token-file. With --kube and no token
                          given, ${KUBE_DEFAULTS.tokenFile}
  --state DIR             keep the ingress identity here (0600), so a restart needs no new token
  --ca URL, --discovery URL   the control plane (defaults https://127.0.0.1:8443, :8444)
  --https HOST:PORT       default ${INGRESS_DEFAULTS.https}
  --http HOST:PORT        default ${INGRESS_DEFAULTS.http}
  --admin HOST:PORT       loopback only, default ${INGRESS_DEFAULTS.admin}
  --ttl DURATION          requested mesh certificate lifetime (5m..24h)
  --headers-timeout DURATION  a client must send its request headers within this (default 10s;
                          slowloris connections are answered 408 and closed)
  --max-body BYTES        largest request body (default 10485760); larger: 413
  --trust-domain TD, --cluster-domain NAME, --log-level LEVEL

Once listening it prints on standard error:
  ward ingress: https HOST:PORT http HOST:PORT admin http://HOST:PORT`,
  async run(args, io) {
    const trustDomain = parseTrustDomain(String(args.values['trust-domain']));
    const level = logLevelArg(args);
    const https = hostPort(String(args.values.https), '--https');
    const http = args.values['no-redirect'] === true ? undefined : hostPort(String(args.values.http), '--http');
    const admin = adminAddressArg(args);
    const sources = certificateSources((args.values.cert as string[] | undefined) ?? [], (args.values.pfx as string[] | undefined) ?? []);
    const internalHosts = (args.values['internal-cert'] as string[] | undefined) ?? [];
    const kube = args.values.kube === true;
    for (const f of ['kubeconfig', 'kube-server', 'namespace'] as const) {
      if (!kube && optional(args, f) !== undefined) throw new WardError('WARD_USAGE', `--${f} needs --kube`);
    }
    const namespace = optional(args, 'namespace') ?? KUBE_DEFAULTS.namespace;
    if (!NAMESPACE.test(namespace)) throw new WardError('WARD_USAGE', `--namespace wants a namespace name (a DNS label), got "${namespace}"`);
    const internalForRoutes = args.values['internal-certs'] === true;
    if (kube && internalForRoutes) throw new WardError('WARD_USAGE', '--internal-certs is for local mode: in Kubernetes mode route hosts get their certificates from the TLS Secrets their Ingress names');
    if (!kube && !internalForRoutes && sources.length + internalHosts.length === 0) {
      throw new WardError('WARD_USAGE', 'give at least one certificate (--cert HOST=CERT,KEY, --pfx HOST=P12, --internal-cert HOST or --internal-certs), or run in Kubernetes mode (--kube: certificates from TLS Secrets)');
    }
    let kubeTokenFile = optional(args, 'kube-token-file');
    if (kubeTokenFile !== undefined && (optional(args, 'token') !== undefined || optional(args, 'token-file') !== undefined)) {
      throw new WardError('WARD_USAGE', '--kube-token-file joins with a ServiceAccount token; give it or --token/--token-file, not both');
    }
    for (const h of internalHosts) {
      const why = certificateHostError(h);
      if (why !== undefined) throw new WardError('WARD_USAGE', `--internal-cert: the host ${why}`);
    }
    const { caUrl, discoveryUrl } = controlPlaneUrls(args);
    const clientCaFiles = new Map<string, string>();
    for (const c of (args.values['client-ca'] as string[] | undefined) ?? []) {
      const m = /^([^=]+)=(.+)$/.exec(c);
      if (!m) throw new WardError('WARD_USAGE', `--client-ca wants HOST=CA.pem, got "${c}"`);
      clientCaFiles.set(m[1], m[2]);
    }
    const headersTimeoutMs = durationFlag(args, 'headers-timeout')!;
    if (!(headersTimeoutMs >= 100)) throw new WardError('WARD_USAGE', '--headers-timeout must be at least 100ms');
    const maxBodyBytes = Number(args.values['max-body']);
    if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < 0) throw new WardError('WARD_USAGE', `--max-body must be a number of bytes, got "${String(args.values['max-body'])}"`);
    const db = optional(args, 'default-backend');
    let defaultBackend: { service: string; port: number } | undefined;
    if (db !== undefined) {
      const m = /^([a-z0-9-]+\.[a-z0-9-]+):(\d{1,5})$/.exec(db);
      if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new WardError('WARD_USAGE', `--default-backend wants SERVICE.NAMESPACE:PORT (a service port), got "${db}"`);
      defaultBackend = { service: m[1], port: Number(m[2]) };
    }
    // A ServiceAccount token file replaces the join token (also the one in the environment).
    const token = kubeTokenFile === undefined ? await tokenArg(args, io, TOKEN_ENV) : undefined;
    if (kube && token === undefined && kubeTokenFile === undefined) kubeTokenFile = KUBE_DEFAULTS.tokenFile;
    const kubeConfig = kube ? await kubeConfigArg(optional(args, 'kube-server'), optional(args, 'kubeconfig'), io.env) : undefined;
    const bundle = await bundleArg(args, trustDomain);
    const logger = createLogger({ level });
    const ing = new Ingress({
      caUrl,
      discoveryUrl,
      bundle,
      joinToken: token,
      ...(kubeTokenFile !== undefined ? { serviceAccountTokenFile: kubeTokenFile } : {}),
      ...(kubeConfig !== undefined ? { kube: { kubeConfig, namespace } } : {}),
      stateDir: optional(args, 'state'),
      ttl: optional(args, 'ttl'),
      https,
      http,
      admin,
      certificates: sources,
      internalHosts,
      internalForRoutes,
      clientCaFiles,
      plainHosts: (args.values['plain-host'] as string[] | undefined) ?? [],
      limits: { headersTimeoutMs, maxBodyBytes },
      ...(defaultBackend ? { defaultBackend } : {}),
      clusterDomain: String(args.values['cluster-domain']),
      logger,
      registry: createRegistry(),
      clock: systemClock,
    });
    await runUntilSignal({
      name: 'ingress',
      io,
      start: () => ing.start().catch((err: unknown) => Promise.reject(listenError(err))),
      readyLine: (a) => `https ${hostText(a.https.address)}:${a.https.port}${a.http ? ` http ${hostText(a.http.address)}:${a.http.port}` : ''} admin http://${hostText(a.admin.address)}:${a.admin.port}`,
      close: () => ing.close(),
      flush: () => logger.flush(),
    });
    return EXIT_OK;
  },
};

export const ingressCommands: Command[] = [ingress];
