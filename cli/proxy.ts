import { access, constants } from 'node:fs/promises';
import { WardError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import { createLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { parseTrustDomain } from '../core/identity/index.js';
import { NodeProxy, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, DEFAULT_ADMIN_PORT, type NodeProxyOptions } from '../proxy/index.js';
import { EXIT_OK, flag, optional, required, type Command } from './command.js';
import { adminAddressArg, hostText, listenError, logLevelArg } from './ca.js';
import { bundleArg, controlPlaneUrls, runUntilSignal, tokenArg } from './member.js';

/** The token may also come from the environment, so that it never shows in `ps`. */
const TOKEN_ENV = 'WARD_PROXY_TOKEN';

const proxy: Command = {
  name: 'proxy',
  summary: 'run a node proxy: mutual TLS between nodes, a certificate per local workload, authorization',
  options: {
    node: { type: 'string' },
    address: { type: 'string' },
    ca: { type: 'string', default: 'https://127.0.0.1:8443' },
    discovery: { type: 'string', default: 'https://127.0.0.1:8444' },
    bundle: { type: 'string' },
    'trust-domain': { type: 'string', default: 'cluster.local' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    'kube-token-file': { type: 'string' },
    'shared-outbound': { type: 'boolean', default: false },
    state: { type: 'string' },
    'inbound-port': { type: 'string', default: String(DEFAULT_INBOUND_PORT) },
    'outbound-port': { type: 'string', default: String(DEFAULT_OUTBOUND_PORT) },
    admin: { type: 'string' },
    ttl: { type: 'string' },
    'default-policy': { type: 'string', default: 'all-authenticated' },
    'cluster-domain': { type: 'string', default: 'cluster.local' },
    'log-level': { type: 'string', default: 'info' },
  },
  help: `Usage: ward proxy --node NAME --address IP --bundle FILE [--token TOKEN | --token-file FILE | --kube-token-file FILE]
                  [--ca URL] [--discovery URL] [--state DIR] [--admin HOST:PORT] [options]

Runs the node proxy of node NAME (DESIGN §5). It joins the mesh with a one-time join token, or in
Kubernetes mode with its projected ServiceAccount token (or reuses the node identity saved in
--state by an earlier run), obtains a certificate for every workload the discovery pool places on
this node (keys are generated here and never leave it), renews them at about half their lifetime,
and then:

  inbound   IP:15008 — mutual TLS 1.3 only. The caller must present a valid SVID of this mesh; every
            request is authorized by policy (403 and a log line naming the policy and rule when
            denied) and forwarded to the local workload with the caller's identity in the
            x-ward-source-identity header (any copy sent by the caller is dropped).
  outbound  <workload address>:15001, one listener per local workload — an HTTP proxy for that
            workload alone: http_proxy=http://<workload address>:15001, then
              curl http://api.shop:8080/items         (absolute-form HTTP/1.1)
              curl --proxytunnel ... / CONNECT api.shop:8080   (any TCP protocol)
            or HTTP/2 with prior knowledge (h2c). Names: <service>.<namespace>[.svc.<cluster-domain>].
            With --shared-outbound (Kubernetes mode, where the proxy on the host network cannot
            bind pod IPs): ONE listener at IP:15001 for every local workload, each told apart by
            its pod IP as the connection's source address; any other source gets 403.
  admin     loopback only: /healthz, /readyz, /metrics, /v1/state (JSON), POST /v1/renew

Flags:
  --node NAME             this node's name, as declared in ward.yaml
  --address IP            this node's address (the inbound listener binds it)
  --bundle FILE           the mesh trust bundle, PEM ("ward ca bundle --state DIR > bundle.pem")
  --trust-domain TD       the mesh trust domain (default cluster.local)
  --token TOKEN           a join token ("ward token create --node NAME"); or set ${TOKEN_ENV}
  --token-file FILE       read the join token from FILE
  --kube-token-file FILE  Kubernetes mode, instead of a join token: the projected ServiceAccount
                          token (audience ward), e.g. /var/run/secrets/ward/token; re-read at every
                          join (the kubelet rotates it) and checked by the CA with TokenReview
  --state DIR             keep the node identity here (key mode 0600), so a restart needs no new token
  --ca URL                the CA (default https://127.0.0.1:8443)
  --discovery URL         the discovery pool (default https://127.0.0.1:8444)
  --inbound-port PORT     default ${DEFAULT_INBOUND_PORT}
  --outbound-port PORT    default ${DEFAULT_OUTBOUND_PORT}
  --shared-outbound       one outbound listener on --address for all local workloads, by source
                          address (Kubernetes mode; relies on the CNI refusing spoofed pod IPs)
  --admin HOST:PORT       loopback only (default: --address when it is loopback, else 127.0.0.1; port ${DEFAULT_ADMIN_PORT})
  --ttl DURATION          requested certificate lifetime (5m..24h; default: the CA's, 1h)
  --default-policy MODE   all-authenticated (default) or deny: the decision when no policy selects a service
  --cluster-domain NAME   default cluster.local
  --log-level LEVEL       trace, debug, info, warn, error, fatal or silent (default info)

Once listening it prints on standard error:
  ward proxy: node NAME inbound HOST:PORT admin http://HOST:PORT
Logs are JSON lines on standard error. SIGINT/SIGTERM drain open requests and stop (exit status 0).

Example:
  ward proxy --node node-a --address 127.0.10.1 --bundle bundle.pem \\
    --token "$(ward token create --state .ward --node node-a)" --state .ward/node-a`,
  async run(args, io) {
    const node = required(args, 'node');
    const address = required(args, 'address');
    const trustDomain = parseTrustDomain(String(args.values['trust-domain']));
    const level = logLevelArg(args);
    const port = (name: string): number => {
      const v = Number(args.values[name]);
      if (!Number.isInteger(v) || v < 0 || v > 65535) throw new WardError('WARD_USAGE', `--${name} must be a port number, got "${String(args.values[name])}"`);
      return v;
    };
    const inboundPort = port('inbound-port');
    const outboundPort = port('outbound-port');
    const admin = optional(args, 'admin') === undefined ? undefined : adminAddressArg(args);
    const mode = String(args.values['default-policy']);
    if (mode !== 'all-authenticated' && mode !== 'deny') throw new WardError('WARD_USAGE', `--default-policy must be all-authenticated or deny, got "${mode}"`);
    const { caUrl, discoveryUrl } = controlPlaneUrls(args);
    const kubeTokenFile = optional(args, 'kube-token-file');
    if (kubeTokenFile !== undefined) {
      if (optional(args, 'token') !== undefined || optional(args, 'token-file') !== undefined || io.env?.[TOKEN_ENV] !== undefined) {
        throw new WardError('WARD_USAGE', `--kube-token-file cannot be combined with --token, --token-file or ${TOKEN_ENV}: give one way of joining`);
      }
      // Checked at start (it is read only when joining, possibly much later).
      await access(kubeTokenFile, constants.R_OK).catch((err: NodeJS.ErrnoException) => {
        throw new WardError('WARD_CONFIG_INVALID', `--kube-token-file ${kubeTokenFile} cannot be read (${err.code ?? err.message})`);
      });
    }
    const token = kubeTokenFile === undefined ? await tokenArg(args, io, TOKEN_ENV) : undefined;
    const bundle = await bundleArg(args, trustDomain);
    const logger = createLogger({ level });
    const options: NodeProxyOptions = {
      node,
      address,
      inboundPort,
      outboundPort,
      sharedOutbound: flag(args, 'shared-outbound'),
      admin,
      caUrl,
      discoveryUrl,
      bundle,
      joinToken: token,
      serviceAccountTokenFile: kubeTokenFile,
      stateDir: optional(args, 'state'),
      ttl: optional(args, 'ttl'),
      clusterDomain: String(args.values['cluster-domain']),
      defaultMode: mode,
      logger,
      registry: createRegistry(),
      clock: systemClock,
    };
    const p = new NodeProxy(options);
    await runUntilSignal({
      name: 'proxy',
      io,
      start: () => p.start().catch((err: unknown) => Promise.reject(listenError(err))),
      readyLine: (a) => `node ${node} inbound ${hostText(a.inbound.address)}:${a.inbound.port} admin http://${hostText(a.admin.address)}:${a.admin.port}`,
      close: () => p.close(),
      flush: () => logger.flush(),
    });
    return EXIT_OK;
  },
};

export const proxyCommands: Command[] = [proxy];
