/**
 * The CA's network face.
 *
 * Mesh API (HTTPS, TLS 1.3 only, client certificates requested but optional at the TLS layer):
 *   GET  /v1/health        public  — liveness + active issuer summary
 *   GET  /v1/bundle        public  — trust bundle, PEM (or SPIFFE JWKS with `Accept: application/json`
 *                                    or /v1/bundle.jwks)
 *   POST /v1/join          join token — {token, csr} → node SVID spiffe://TD/ward/node/<node of token>
 *                          or Kubernetes — {serviceAccountToken, csr, node?} → the identity the
 *                                    NodeAttestor grants (a node's, or the ingress's); see attestor
 *   POST /v1/issue         node SVID  — {csr, identity?, ttl?} → SVID for the node itself (renewal) or
 *                                    for a workload identity the WorkloadAuthorizer allows on that node
 * Client certificates are optional at the TLS layer only because a joining node has none yet; every
 * authenticated route requires socket.authorized (OpenSSL path validation against the bundle) AND the
 * X.509-SVID rules (peerIdentity). The server itself presents spiffe://TD/ward/ca.
 *
 * Admin API (plain HTTP, loopback only): /healthz, /metrics, /v1/status (what `ward ca inspect
 * --server` shows). It never listens on a non-loopback address.
 *
 * Errors: a JSON body {error: {code, message}} with the generic description of the code; the detail
 * goes to the log only (internal detail never reaches a response).
 */
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createHttpServer, STATUS_CODES, type IncomingMessage, type ServerResponse, type Server as HttpServer } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { once } from 'node:events';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import { Counter, type Registry } from 'prom-client';
import { ERROR_CODES, WardError, isWardError, type WardErrorCode } from '../core/errors.js';
import { parseDuration, type Clock } from '../core/clock.js';
import { MAX_SERVER_NAMES } from './issuance-policy.js';
import type { Logger } from '../core/logger.js';
import { SpiffeId } from '../core/identity/index.js';
import { PrivateKey, createCsr, type TrustBundle } from '../core/pki/index.js';
import { meshServerOptions, peerIdentity, type Credentials } from '../core/tls/index.js';
import { RateLimiter } from '../core/rate-limit.js';
import { BodyTooLargeError, readBody } from '../core/http-body.js';
import { assertLoopback } from '../core/address.js';
import type { CertificateAuthority } from './authority.js';
import { clip } from './audit.js';
import type { JoinTokens } from './tokens.js';
import { KEY_FILE_MODE, removeFileDurable, writeFileDurable } from './store.js';

const TOKEN_SWEEP_MS = 10 * 60_000;

/** Longest ServiceAccount token accepted on POST /v1/join; projected tokens are 1–2 KiB. */
const MAX_SERVICE_ACCOUNT_TOKEN = 16 * 1024;
/** Longest node name accepted on POST /v1/join (a Kubernetes node name is a DNS subdomain). */
const MAX_NODE_NAME = 253;

/** Where the running server leaves its admin token for the operator's commands (mode 0600). */
export const ADMIN_TOKEN_FILE = 'admin.token';

/**
 * Decides what a node may obtain: the discovery pool supplies the real answers from the source of
 * truth. Both are asked at every request, so removing a node or moving a workload takes effect at
 * its next renewal.
 */
export interface WorkloadAuthorizer {
  /** May this authenticated node obtain this workload identity (a workload declared on it)? */
  mayObtain(node: SpiffeId, identity: SpiffeId): boolean | Promise<boolean>;
  /** May this node renew its own node identity (is it still a member of the mesh)? */
  mayRenewNode(node: SpiffeId): boolean | Promise<boolean>;
  /**
   * May the ingress obtain an internal-name (DNS) server certificate for this name: is it a host
   * of the ingress routes now? Without this method no internal-name certificate is ever issued.
   */
  mayObtainServerName?(ingress: SpiffeId, name: string): boolean | Promise<boolean>;
  /**
   * May the ingress renew its identity (and obtain internal-name certificates) now? Kubernetes mode:
   * only while a ward-ingress pod runs, as a node renews only while its proxy pod runs. Absent: yes.
   */
  mayRenewIngress?(ingress: SpiffeId): boolean | Promise<boolean>;
}

/**
 * Kubernetes mode: who may join with a ServiceAccount token (discovery's KubeAttestor implements it,
 * docs/kubernetes.md "Attestation"). The identity it returns is the one issued; nothing the
 * request or its CSR says can change it.
 */
export interface NodeAttestor {
  /**
   * The identity the token's holder may join as: a node identity or the ingress's. Throws a
   * WardError: WARD_CA_TOKEN_INVALID for a token that is not authenticated (or not for Ward's
   * audience), WARD_CA_FORBIDDEN for an authenticated caller that may not join (as `requestedNode`),
   * WARD_CA_UNAVAILABLE when it cannot tell now (the Kubernetes API is down).
   * The token is a bearer credential: never put it in a message.
   */
  attest(serviceAccountToken: string, requestedNode?: string): Promise<SpiffeId>;
}

export interface CaServerLimits {
  /** Largest accepted request body. CSRs are a few hundred bytes; anything near this is hostile. */
  maxBodyBytes: number;
  maxHeaderBytes: number;
  /** Whole-request deadline (slow bodies are cut off). */
  requestTimeoutMs: number;
  /** Deadline for the request headers, and for the TLS handshake before them (slow-loris). */
  headersTimeoutMs: number;
  maxConnections: number;
  /** Open connections one client (one IPv4 address or IPv6 /64) may hold, so one host cannot take them all. */
  maxConnectionsPerClient: number;
  /** Per authenticated node, and per source address for unauthenticated routes. */
  perClientPerSecond: number;
  perClientBurst: number;
  /** Lifetime of the server's own certificate; renewed at half of it. */
  serverCertTtlMs: number;
}

export const DEFAULT_LIMITS: CaServerLimits = {
  maxBodyBytes: 32 * 1024,
  maxHeaderBytes: 16 * 1024,
  requestTimeoutMs: 10_000,
  headersTimeoutMs: 5_000,
  maxConnections: 4096,
  maxConnectionsPerClient: 64,
  perClientPerSecond: 50,
  perClientBurst: 100,
  // As short as a workload leaf: a root retirement waits for the last leaf the old root anchors,
  // this one included. Renewed at half-life.
  serverCertTtlMs: 3_600_000,
};

/** The SPIFFE ID the CA server presents; clients pin it (secure naming). */
export function caServerId(trustDomain: string): SpiffeId {
  return SpiffeId.fromSegments(trustDomain, 'ward', 'ca');
}

const STATUS_BY_CODE: Partial<Record<WardErrorCode, number>> = {
  WARD_CA_REQUEST_INVALID: 400,
  WARD_PKI_CSR_INVALID: 400,
  WARD_PKI_PEM_INVALID: 400,
  WARD_ID_INVALID: 400,
  WARD_CA_LIFETIME_INVALID: 400,
  WARD_CA_REQUEST_TOO_LARGE: 413,
  WARD_PKI_CSR_TOO_LARGE: 413,
  WARD_CA_UNAUTHENTICATED: 401,
  WARD_CA_TOKEN_INVALID: 401,
  WARD_PKI_SVID_INVALID: 401,
  WARD_PKI_CHAIN_INVALID: 401,
  WARD_CA_FORBIDDEN: 403,
  WARD_PKI_CSR_UNAUTHORIZED: 403,
  WARD_CA_RATE_LIMITED: 429,
  WARD_CA_NOT_FOUND: 404,
  WARD_CA_ISSUER_NOT_VALID: 503,
  WARD_CA_UNAVAILABLE: 503,
  WARD_CA_JOIN_UNSUPPORTED: 400,
};

/** What an attestor may refuse with; anything else it throws is a bug (500, logged). */
const ATTESTATION_CODES: ReadonlySet<WardErrorCode> = new Set<WardErrorCode>(['WARD_CA_TOKEN_INVALID', 'WARD_CA_FORBIDDEN', 'WARD_CA_UNAVAILABLE']);

type Route = 'health' | 'bundle' | 'join' | 'issue' | 'unknown';

export interface CaServerOptions {
  ca: CertificateAuthority;
  tokens: JoinTokens;
  authorizer: WorkloadAuthorizer;
  /**
   * Kubernetes mode: POST /v1/join with a ServiceAccount token is decided by this attestor. Without
   * one such joins are refused (WARD_CA_JOIN_UNSUPPORTED); join tokens work either way.
   */
  attestor?: NodeAttestor;
  clock: Clock;
  logger: Logger;
  registry: Registry;
  limits?: Partial<CaServerLimits>;
  /**
   * What the admin /v1/status route returns (the same report as `ward ca inspect --state`);
   * `latest` is the route's `?latest=N` (0..1000), how many recent records to list.
   */
  status?: (q: { latest?: number }) => Promise<unknown>;
  /**
   * More read-only JSON routes on the admin port (GET path → body), composed by the caller
   * (`ward control` serves /v1/policies for `ward policy explain`); the CA knows nothing of them.
   */
  adminRoutes?: ReadonlyMap<string, () => unknown>;
}

export class CaServer {
  readonly #o: CaServerOptions;
  readonly #limits: CaServerLimits;
  readonly #log: Logger;
  readonly #limiter: RateLimiter;
  readonly #requests: Counter<'route' | 'code'>;
  #server?: HttpsServer;
  #admin?: HttpServer;
  /** Raw connections, including those still in the TLS handshake (node:http does not track those). */
  readonly #sockets = new Set<Socket>();
  /** Open connections per client key; entries leave with their last connection, so it stays bounded. */
  readonly #perClient = new Map<string, number>();
  #renewTimer?: NodeJS.Timeout;
  #closed = false;
  #credentials?: Credentials;
  #credentialsNotAfter = 0;
  #adminTokenDigest: Buffer | undefined;
  #sweepTimer?: NodeJS.Timeout;
  /**
   * The verified identity of each connection's client certificate, and when that certificate
   * expires. A TLS 1.3 connection's peer certificate never changes (no renegotiation), so it is
   * parsed and checked once per connection, not once per request on a keep-alive connection.
   */
  readonly #peers = new WeakMap<object, { id: SpiffeId; notAfter: number }>();
  /** The bundle's encodings, made once per bundle (the CA hands out a new object on each change). */
  #bundleCache?: { bundle: TrustBundle; pem: string; jwks: string };

  constructor(o: CaServerOptions) {
    this.#o = o;
    this.#limits = { ...DEFAULT_LIMITS, ...o.limits };
    this.#log = o.logger.child({ component: 'ca.server' });
    this.#limiter = new RateLimiter({ perSecond: this.#limits.perClientPerSecond, burst: this.#limits.perClientBurst, clock: o.clock });
    this.#requests = new Counter({
      name: 'ward_ca_requests_total',
      help: 'CA API requests by route and result code (OK or a WARD_* code).',
      labelNames: ['route', 'code'],
      registers: [o.registry],
    });
  }

  /** The credentials the server presents now (for tests and the admin status). */
  get credentials(): Credentials | undefined {
    return this.#credentials;
  }

  /**
   * Issues the server's own certificate from the active issuer and swaps the secure context, with
   * the current trust bundle. Call after a rotation step; existing connections keep their context.
   */
  async refreshCredentials(): Promise<void> {
    const { ca } = this.#o;
    const key = PrivateKey.generate();
    const id = caServerId(ca.trustDomain);
    const issued = await ca.issue({ csr: createCsr(key), identity: id, requester: 'ward-ca (self)', ttlMs: this.#limits.serverCertTtlMs });
    this.#credentials = { id, chainPem: issued.chainPem, key, bundle: ca.bundle() };
    this.#credentialsNotAfter = issued.notAfter.getTime();
    if (this.#server) this.#server.setSecureContext(meshServerOptions(this.#credentials, { requireClientCert: false }));
  }

  /** Starts the mesh listener (and the admin listener when adminPort is given). */
  async listen(o: { host: string; port: number; adminHost?: string; adminPort?: number }): Promise<{ port: number; adminPort?: number }> {
    if (this.#closed) throw new WardError('WARD_CA_INTERNAL', 'server is closed');
    // Checked before anything starts: a refused configuration must not leave a listener behind.
    if (o.adminPort !== undefined) assertLoopback(o.adminHost ?? '127.0.0.1');
    await this.refreshCredentials();
    const creds = this.#credentials!;
    const server = createHttpsServer(
      {
        ...meshServerOptions(creds, { requireClientCert: false }),
        maxHeaderSize: this.#limits.maxHeaderBytes,
        requestTimeout: this.#limits.requestTimeoutMs,
        headersTimeout: this.#limits.headersTimeoutMs,
        // node:http enforces the two timeouts above only when it sweeps its connections, every
        // 30s by default; sweep often enough that the deadlines mean what they say.
        connectionsCheckingInterval: Math.max(50, Math.min(1_000, this.#limits.headersTimeoutMs / 4)),
        // node:http starts tracking a connection only once TLS is up; before that, a client that
        // connects and never finishes its handshake would hold a socket for 120s (the default).
        handshakeTimeout: this.#limits.headersTimeoutMs,
        keepAliveTimeout: 5_000,
      },
      (req, res) => {
        this.#handle(req, res).catch((err: unknown) => {
          // #handle answers every failure itself; reaching here is a bug, but one request must not
          // take the CA down (an unhandled rejection ends the process).
          this.#log.error({ err }, 'BUG: CA request handler failed');
          res.destroy();
        });
      },
    );
    server.maxConnections = this.#limits.maxConnections;
    server.on('connection', (socket: Socket) => {
      const client = clientKey(socket.remoteAddress ?? 'unknown');
      const open = (this.#perClient.get(client) ?? 0) + 1;
      if (open > this.#limits.maxConnectionsPerClient) {
        this.#log.info({ client }, 'connection refused: too many open connections from this client');
        socket.destroy();
        return;
      }
      this.#perClient.set(client, open);
      this.#sockets.add(socket);
      socket.once('close', () => {
        this.#sockets.delete(socket);
        const left = (this.#perClient.get(client) ?? 1) - 1;
        if (left > 0) this.#perClient.set(client, left);
        else this.#perClient.delete(client);
      });
    });
    // node:https passes TLS handshake failures ('tlsClientError') on to 'clientError' as well.
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.#clientError(err, socket));
    this.#server = server;
    server.listen(o.port, o.host);
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    let adminPort: number | undefined;
    if (o.adminPort !== undefined) {
      const host = o.adminHost ?? '127.0.0.1';
      const admin = createHttpServer({ maxHeaderSize: 8192, requestTimeout: 5_000, connectionsCheckingInterval: 1_000 }, (req, res) => void this.#handleAdmin(req, res));
      this.#admin = admin;
      admin.listen(o.adminPort, host);
      await once(admin, 'listening');
      adminPort = (admin.address() as { port: number }).port;
      await this.#publishAdmin(`http://${host.includes(':') ? `[${host}]` : host}:${adminPort}`);
    }
    this.#scheduleRenewal();
    this.#sweepTokens();
    this.#sweepTimer = setInterval(() => this.#sweepTokens(), TOKEN_SWEEP_MS).unref();
    this.#log.info({ port, adminPort, id: creds.id.toString() }, 'CA server listening');
    return { port, adminPort };
  }

  /** Expired join tokens are deleted (unused ones would otherwise pile up in <state>/tokens). */
  #sweepTokens(): void {
    this.#o.tokens.sweepExpired().then(
      (n) => n > 0 && this.#log.info({ removed: n }, 'removed expired join tokens'),
      (err) => this.#log.warn({ err }, 'sweeping expired join tokens failed'),
    );
  }

  #scheduleRenewal(): void {
    if (this.#closed) return;
    // Renew at half of the remaining lifetime: the server cert can never lapse while it runs.
    const delay = Math.max(1_000, (this.#credentialsNotAfter - this.#o.clock.now()) / 2);
    this.#renewTimer = setTimeout(() => {
      this.refreshCredentials().then(
        () => this.#scheduleRenewal(),
        (err) => {
          this.#log.error({ err }, 'renewing the CA server certificate failed; retrying');
          this.#renewTimer = setTimeout(() => this.#scheduleRenewal(), 30_000).unref();
        },
      );
    }, Math.min(delay, 2 ** 31 - 1)).unref();
  }

  /** Stops accepting, lets in-flight requests finish up to `graceMs`, then forces. Idempotent. */
  async close(graceMs = 5_000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#renewTimer);
    clearInterval(this.#sweepTimer);
    await Promise.all([
      this.#server ? closeServer(this.#server, graceMs, this.#sockets) : undefined,
      this.#admin ? closeServer(this.#admin, graceMs, new Set()) : undefined,
    ]);
    if (this.#adminTokenDigest) await removeFileDurable(join(this.#o.ca.stateDir, ADMIN_TOKEN_FILE)).catch(() => undefined);
  }

  /**
   * A client's fault below the routes, always the client's problem: logged at debug, connection
   * dropped. HTTP-level faults found by node:http (headers too large, malformed request, header or
   * request deadline passed) are first answered as node:http itself would (431 / 408 / 400, when no
   * response has started on the connection). A TLS failure (handshake error or deadline) has no
   * HTTP to answer in.
   */
  #clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const httpFault = typeof err.code === 'string' && (err.code.startsWith('HPE_') || err.code === 'ERR_HTTP_REQUEST_TIMEOUT');
    if (!httpFault) {
      this.#log.debug({ err: err.message, code: err.code }, 'TLS handshake failed');
      socket.destroy();
      return;
    }
    this.#log.debug({ err: err.message, code: err.code }, 'HTTP client error; dropping the connection');
    const inFlight = (socket as Duplex & { _httpMessage?: ServerResponse })._httpMessage;
    if (socket.writable && !inFlight?.headersSent) {
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
      socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`);
    }
    // destroySoon: close once the answer is flushed (destroy() could drop it).
    const s = socket as Duplex & { destroySoon?: () => void };
    if (typeof s.destroySoon === 'function') s.destroySoon();
    else socket.destroy();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '/';
    const path = url.split('?', 1)[0];
    // Read now: once a request is aborted, req.socket is null.
    const remote = req.socket.remoteAddress ?? 'unknown';
    const route: Route =
      req.method === 'GET' && path === '/v1/health' ? 'health'
      : req.method === 'GET' && (path === '/v1/bundle' || path === '/v1/bundle.jwks') ? 'bundle'
      : req.method === 'POST' && path === '/v1/join' ? 'join'
      : req.method === 'POST' && path === '/v1/issue' ? 'issue'
      : 'unknown';
    try {
      // Every request is rate-limited: by source address until the caller is authenticated (cheap
      // refusals included, so they cannot be repeated without bound), then by its SPIFFE ID.
      if (route !== 'issue') this.#limit(`addr:${clientKey(remote)}`);
      if (route === 'health') {
        const health = this.#o.ca.health();
        return this.#reply(res, route, health.ok ? 200 : 503, this.#health(health));
      }
      if (route === 'bundle') {
        const bundle = this.#encodedBundle();
        if (path === '/v1/bundle.jwks' || /application\/json/.test(req.headers.accept ?? '')) return this.#replyText(res, route, 200, bundle.jwks, 'application/json');
        return this.#replyText(res, route, 200, bundle.pem, 'application/x-pem-file');
      }
      if (route === 'join') {
        const body = await this.#readJson(req);
        if (body.serviceAccountToken !== undefined) return await this.#joinAttested(res, route, remote, body);
        const token = stringField(body, 'token', 128);
        const csr = stringField(body, 'csr', this.#limits.maxBodyBytes);
        const nodeId = await this.#o.tokens.consume(token);
        const issued = await this.#o.ca.issue({ csr, identity: nodeId, requester: `join-token:${nodeId.nodeName ?? 'ingress'}` });
        this.#log.info({ node: nodeId.toString(), serial: issued.serialHex }, nodeId.isIngress ? 'the ingress joined with a join token' : 'node joined with a join token');
        return this.#reply(res, route, 200, this.#issuedBody(issued));
      }
      if (route === 'issue') {
        let caller: SpiffeId;
        try {
          caller = this.#authenticate(req);
        } catch (err) {
          this.#limit(`addr:${clientKey(remote)}`);
          throw err;
        }
        this.#limit(`id:${caller.toString()}`);
        // Node proxies obtain their own and their workloads' identities; the ingress only renews its own.
        if (caller.nodeName === undefined && !caller.isIngress) throw new WardError('WARD_CA_FORBIDDEN', `caller ${caller} is not a node proxy or the ingress`);
        const body = await this.#readJson(req);
        const csr = stringField(body, 'csr', this.#limits.maxBodyBytes);
        const ttlMs = body.ttl === undefined ? undefined : parseTtl(body.ttl);
        if (body.dnsNames !== undefined) {
          if (body.identity !== undefined) throw new WardError('WARD_CA_REQUEST_INVALID', 'give either identity or dnsNames, not both');
          return this.#reply(res, route, 200, await this.#issueServerName(caller, csr, body.dnsNames, ttlMs));
        }
        const identity = body.identity === undefined ? caller : SpiffeId.parse(stringField(body, 'identity', 2048));
        if (!identity.memberOf(this.#o.ca.trustDomain)) {
          throw await this.#audited(caller, identity, new WardError('WARD_CA_FORBIDDEN', `identity ${identity} is outside trust domain ${this.#o.ca.trustDomain}`));
        }
        // Only workload identities are grantable: another node's identity, the CA's own or the bare
        // trust domain never are, whatever the authorizer would say.
        const allowed = caller.isIngress
          ? identity.equals(caller) && (await this.#ingressMayRenew(caller))
          : identity.equals(caller)
            ? await this.#o.authorizer.mayRenewNode(caller)
            : identity.workload !== undefined && !identity.isIngress && (await this.#o.authorizer.mayObtain(caller, identity));
        if (!allowed) {
          throw await this.#audited(caller, identity, new WardError('WARD_CA_FORBIDDEN', `node ${caller} may not obtain ${identity}`));
        }
        const issued = await this.#o.ca.issue({ csr, identity, requester: caller.toString(), ttlMs });
        return this.#reply(res, route, 200, this.#issuedBody(issued));
      }
      throw new WardError('WARD_CA_NOT_FOUND', `no route ${req.method} ${path.slice(0, 100)}`);
    } catch (err) {
      this.#fail(req, res, route, remote, err);
    }
  }

  /**
   * POST /v1/join with a ServiceAccount token (Kubernetes mode): the attestor decides who the caller
   * is, and that identity alone is issued (ca.issue audits the issuance, or its refusal of the CSR).
   * Every refusal here is audited too, with the client's address as requester, since nobody is
   * authenticated yet. The token goes to the attestor and nowhere else: not in a log line, an audit
   * record or a response (a message that quotes it anyway is scrubbed).
   */
  async #joinAttested(res: ServerResponse, route: Route, remote: string, body: Record<string, unknown>): Promise<void> {
    if (body.token !== undefined) throw new WardError('WARD_CA_REQUEST_INVALID', 'give either token or serviceAccountToken, not both');
    const saToken = stringField(body, 'serviceAccountToken', MAX_SERVICE_ACCOUNT_TOKEN);
    const csr = stringField(body, 'csr', this.#limits.maxBodyBytes);
    const node = body.node === undefined ? undefined : stringField(body, 'node', MAX_NODE_NAME);
    const td = this.#o.ca.trustDomain;
    const requester = `serviceaccount-token from ${clientKey(remote)}`;
    // What the caller asked for, for the audit record of a refusal: the node it names, if any.
    const asked = node === undefined ? 'kubernetes attestation' : nodeLabel(td, node);
    const refuse = async (code: WardErrorCode, why: string): Promise<never> => {
      const err = new WardError(code, scrub(why, saToken));
      // A token nobody vouches for (forged, garbage, another audience) is not a decision about a known
      // caller, and anyone who can reach the API could write the durable audit log full with them: it
      // is logged and counted (ward_ca_requests_total{route="join",code}), like a refused join token.
      // Authenticated callers refused (a wrong service account, pod or node) are audited.
      if (code === 'WARD_CA_TOKEN_INVALID' || code === 'WARD_CA_UNAVAILABLE') throw err;
      throw await this.#audited(requester, asked, err);
    };
    const attestor = this.#o.attestor;
    if (!attestor) return refuse('WARD_CA_JOIN_UNSUPPORTED', 'a ServiceAccount token was presented, but this CA runs without Kubernetes attestation; join with a join token');
    let id: SpiffeId;
    try {
      id = await attestor.attest(saToken, node);
    } catch (err) {
      if (isWardError(err) && ATTESTATION_CODES.has(err.code)) return refuse(err.code, err.message);
      this.#log.error({ err: scrub(err instanceof Error ? (err.stack ?? err.message) : String(err), saToken) }, 'BUG: the attestor failed unexpectedly');
      return refuse('WARD_CA_INTERNAL', 'the attestor failed unexpectedly');
    }
    // The attestor is trusted to decide, but only node and ingress identities of this trust domain
    // are ever obtained by joining, and never another node than the one the caller names.
    if (!(id instanceof SpiffeId) || !id.memberOf(td) || (id.nodeName === undefined && !id.isIngress)) {
      this.#log.error({ identity: String(id) }, 'BUG: the attestor granted an identity that is not a node or the ingress of this trust domain');
      return refuse('WARD_CA_FORBIDDEN', `the attestor granted ${String(id)}, which cannot be obtained by joining`);
    }
    if (node !== undefined && id.nodeName !== node) {
      return refuse('WARD_CA_FORBIDDEN', `the token is for ${id.nodeName === undefined ? id.toString() : `node ${JSON.stringify(id.nodeName)}`}, not node ${JSON.stringify(node)}`);
    }
    const issued = await this.#o.ca.issue({ csr, identity: id, requester: `serviceaccount-token:${id.nodeName ?? 'ingress'}` });
    this.#log.info({ node: id.toString(), serial: issued.serialHex, client: clientKey(remote) }, id.isIngress ? 'the ingress joined with a ServiceAccount token' : 'node joined with a ServiceAccount token');
    return this.#reply(res, route, 200, this.#issuedBody(issued));
  }

  /**
   * Records an authorization refusal in the CA's audit log, as issue() does for its own refusals:
   * a node asking for an identity it may not have is a decision on issuance, and the one most
   * worth finding later. Returns the error to throw.
   */
  async #audited(caller: SpiffeId | string, identity: SpiffeId | string, err: WardError): Promise<WardError> {
    try {
      await this.#o.ca.audit.record({
        time: new Date(this.#o.clock.now()).toISOString(),
        decision: 'refused',
        requester: clip(caller.toString()),
        identity: clip(identity.toString()),
        code: err.code,
        reason: clip(err.message),
      });
    } catch (auditErr) {
      this.#log.error({ err: auditErr, code: err.code }, 'could not audit a refusal durably');
    }
    return err;
  }

  #health(health: ReturnType<CertificateAuthority['health']>): unknown {
    const issuer = this.#o.ca.activeIssuer().cert;
    // The reason stays in the log: the mesh API never shows internal detail.
    if (!health.ok) this.#log.error({ reason: health.reason }, 'CA unhealthy');
    return { status: health.ok ? 'ok' : 'unavailable', trustDomain: this.#o.ca.trustDomain, activeIssuer: issuer.fingerprintSha256, issuerNotAfter: issuer.notAfter.toISOString() };
  }

  /**
   * POST /v1/issue with `dnsNames`: an internal-name server certificate (CertificateAuthority.
   * issueServerName), only for the ingress and only for names that are route hosts now; anything
   * else is refused whole (and audited), so a compromised node can never obtain a DNS certificate.
   */
  async #issueServerName(caller: SpiffeId, csr: string, dnsNames: unknown, ttlMs: number | undefined): Promise<unknown> {
    const names = Array.isArray(dnsNames) && dnsNames.length <= MAX_SERVER_NAMES && dnsNames.every((n) => typeof n === 'string' && n.length <= 253) ? (dnsNames as string[]) : undefined;
    if (names === undefined) throw new WardError('WARD_CA_REQUEST_INVALID', `dnsNames must be a list of at most ${MAX_SERVER_NAMES} DNS names`);
    const label = `dns:${names.join(',')}`;
    const deny = async (why: string): Promise<never> => {
      throw await this.#audited(caller, label, new WardError('WARD_CA_FORBIDDEN', why));
    };
    if (!caller.isIngress) return deny(`caller ${caller} is not the ingress; only the ingress obtains internal-name certificates`);
    if (!(await this.#ingressMayRenew(caller))) return deny('no ingress pod runs now; the ingress identity is not renewed');
    const may = this.#o.authorizer.mayObtainServerName;
    for (const name of names) {
      if (!may || !(await may.call(this.#o.authorizer, caller, name))) return deny(`${JSON.stringify(name)} is not a host of the ingress routes`);
    }
    const issued = await this.#o.ca.issueServerName({ csr, dnsNames: names, requester: caller.toString(), ttlMs });
    return {
      dnsNames: issued.dnsNames,
      serial: issued.serialHex,
      notBefore: issued.notBefore.toISOString(),
      notAfter: issued.notAfter.toISOString(),
      certificate: issued.chainPem,
      bundle: this.#encodedBundle().pem,
    };
  }

  async #ingressMayRenew(caller: SpiffeId): Promise<boolean> {
    const may = this.#o.authorizer.mayRenewIngress;
    return may === undefined ? true : await may.call(this.#o.authorizer, caller);
  }

  #issuedBody(issued: { chainPem: string; serialHex: string; notBefore: Date; notAfter: Date; id: SpiffeId }): unknown {
    return {
      id: issued.id.toString(),
      serial: issued.serialHex,
      notBefore: issued.notBefore.toISOString(),
      notAfter: issued.notAfter.toISOString(),
      certificate: issued.chainPem,
      bundle: this.#encodedBundle().pem,
    };
  }

  #encodedBundle(): { pem: string; jwks: string } {
    const bundle = this.#o.ca.bundle();
    if (this.#bundleCache?.bundle !== bundle) {
      this.#bundleCache = { bundle, pem: bundle.toPem(), jwks: JSON.stringify(bundle.toJwks()) + '\n' };
    }
    return this.#bundleCache;
  }

  #authenticate(req: IncomingMessage): SpiffeId {
    const socket = req.socket as TLSSocket;
    let peer = this.#peers.get(socket);
    if (!peer) {
      const id = peerIdentity(socket, { trustDomain: this.#o.ca.trustDomain });
      if (!id) throw new WardError('WARD_CA_UNAUTHENTICATED', 'no client certificate presented');
      peer = { id, notAfter: Date.parse(socket.getPeerCertificate(false).valid_to) };
      this.#peers.set(socket, peer);
    }
    // OpenSSL checked validity at the handshake only; a keep-alive connection can outlive the
    // certificate, and an expired one must not keep renewing itself.
    if (!(this.#o.clock.now() <= peer.notAfter)) throw new WardError('WARD_PKI_SVID_INVALID', `the client certificate of ${peer.id} has expired`);
    return peer.id;
  }

  #limit(client: string): void {
    if (!this.#limiter.take(client)) throw new WardError('WARD_CA_RATE_LIMITED', `client ${client} is over its rate limit`);
  }

  async #readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
    const max = this.#limits.maxBodyBytes;
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (declared > max) throw new WardError('WARD_CA_REQUEST_TOO_LARGE', `declared body of ${declared} bytes exceeds ${max}`);
    if (!/^application\/json\b/.test(req.headers['content-type'] ?? '')) {
      throw new WardError('WARD_CA_REQUEST_INVALID', 'content-type must be application/json');
    }
    let text: string;
    try {
      text = await readBody(req, max);
    } catch (err) {
      if (err instanceof BodyTooLargeError) throw new WardError('WARD_CA_REQUEST_TOO_LARGE', err.message, { cause: err });
      throw new WardError('WARD_CA_REQUEST_INVALID', (err as Error).message, { cause: err });
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (cause) {
      throw new WardError('WARD_CA_REQUEST_INVALID', 'body is not valid JSON', { cause });
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new WardError('WARD_CA_REQUEST_INVALID', 'body must be a JSON object');
    return body as Record<string, unknown>;
  }

  #fail(req: IncomingMessage, res: ServerResponse, route: Route, remote: string, err: unknown): void {
    const code: WardErrorCode = isWardError(err) && STATUS_BY_CODE[err.code] ? err.code : 'WARD_CA_INTERNAL';
    const status = STATUS_BY_CODE[code] ?? 500;
    const detail = { route, code, remote, err: err instanceof Error ? err.message : String(err) };
    if (status >= 500) this.#log.error({ ...detail, stack: err instanceof Error ? err.stack : undefined }, 'CA request failed');
    else this.#log.info(detail, 'CA request refused');
    if (!req.complete) {
      // The rest of the body (too large, or never read because the request was refused first) is
      // not wanted: node:http closes the connection once the answer is flushed, and meanwhile the
      // arriving bytes are discarded rather than left unread, since closing a socket with unread
      // data makes the kernel send a reset that can destroy the answer before the client reads it.
      res.setHeader('connection', 'close');
      req.resume();
    }
    this.#reply(res, route, status, { error: { code, message: ERROR_CODES[code] } }, code);
  }

  #reply(res: ServerResponse, route: Route, status: number, body: unknown, code = 'OK'): void {
    this.#replyText(res, route, status, JSON.stringify(body) + '\n', 'application/json', code);
  }

  #replyText(res: ServerResponse, route: Route, status: number, text: string, type: string, code = 'OK'): void {
    this.#requests.inc({ route, code });
    if (res.headersSent) return;
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }

  /**
   * Makes the admin API's write routes usable by the operator's other commands: a fresh random token
   * in <state>/admin.token (0600, so exactly the users who could edit the state directory can use
   * it) and the admin URL in the state lock, where `ward ca issue` / `ward ca rotate` look when they
   * find the directory held by this server.
   */
  async #publishAdmin(url: string): Promise<void> {
    const token = randomBytes(32).toString('base64url');
    await writeFileDurable(join(this.#o.ca.stateDir, ADMIN_TOKEN_FILE), token + '\n', { mode: KEY_FILE_MODE });
    this.#adminTokenDigest = createHash('sha256').update(token).digest();
    await this.#o.ca.lock?.advertise(url);
  }

  #adminAuthorized(req: IncomingMessage): boolean {
    const m = /^Bearer ([A-Za-z0-9_-]{1,128})$/.exec(req.headers.authorization ?? '');
    if (!m || !this.#adminTokenDigest) return false;
    return timingSafeEqual(createHash('sha256').update(m[1]).digest(), this.#adminTokenDigest);
  }

  /**
   * Operator writes on the admin port (token in <state>/admin.token): the same operations as the
   * CLI run on the state directory, done by the process that holds it. The caller is the operator,
   * so refusals carry their full message (unlike the mesh API's generic ones).
   */
  async #handleAdminWrite(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (!this.#adminAuthorized(req)) {
      return plain(res, 401, JSON.stringify({ error: { code: 'WARD_CA_UNAUTHENTICATED', message: 'admin token missing or wrong (see <state>/admin.token)' } }) + '\n', 'application/json');
    }
    try {
      const body = await this.#readJson(req);
      let result: unknown;
      if (path === '/v1/admin/issue') {
        const ttlMs = body.ttl === undefined ? undefined : parseTtl(body.ttl);
        const r = await this.#o.ca.issue({ csr: stringField(body, 'csr', this.#limits.maxBodyBytes), identity: stringField(body, 'identity', 2048), requester: stringField(body, 'requester', 256), ttlMs });
        result = { id: r.id.toString(), serial: r.serialHex, notBefore: r.notBefore.toISOString(), notAfter: r.notAfter.toISOString(), certificate: r.chainPem };
      } else {
        const step = stringField(body, 'step', 16);
        const rot = this.#o.ca.rotation;
        result =
          step === 'prepare' ? await rot.prepare(body.root === true ? 'root' : 'intermediate')
          : step === 'activate' ? await rot.activate()
          : step === 'retire' ? await rot.retire({ force: body.force === true })
          : step === 'status' ? rot.status()
          : (() => { throw new WardError('WARD_CA_REQUEST_INVALID', `unknown rotation step "${step}"`); })();
      }
      this.#log.info({ op: path, by: 'admin' }, 'admin operation done');
      return plain(res, 200, JSON.stringify(result) + '\n', 'application/json');
    } catch (err) {
      const code: WardErrorCode = isWardError(err) ? err.code : 'WARD_CA_INTERNAL';
      const message = isWardError(err) ? err.message : ERROR_CODES.WARD_CA_INTERNAL;
      if (!isWardError(err)) this.#log.error({ err }, 'admin operation failed');
      return plain(res, STATUS_BY_CODE[code] ?? (code === 'WARD_CA_INTERNAL' ? 500 : 400), JSON.stringify({ error: { code, message } }) + '\n', 'application/json');
    }
  }

  async #handleAdmin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?', 1)[0];
    try {
      if (req.method === 'POST' && (path === '/v1/admin/issue' || path === '/v1/admin/rotate')) return await this.#handleAdminWrite(req, res, path);
      if (req.method !== 'GET') return plain(res, 405, 'method not allowed\n');
      if (path === '/healthz') {
        // The admin port is the operator's: the reason is shown.
        const health = this.#o.ca.health();
        return health.ok ? plain(res, 200, 'ok\n') : plain(res, 503, `unavailable: ${health.reason}\n`);
      }
      if (path === '/metrics') return plain(res, 200, await this.#o.registry.metrics(), this.#o.registry.contentType);
      if (path === '/v1/status' && this.#o.status) {
        const given = new URLSearchParams((req.url ?? '').split('?')[1] ?? '').get('latest');
        const latest = given === null ? undefined : Number(given);
        if (latest !== undefined && (given === '' || !Number.isInteger(latest) || latest < 0 || latest > 1000)) {
          return plain(res, 400, 'latest must be a whole number from 0 to 1000\n');
        }
        const text = JSON.stringify(await this.#o.status(latest === undefined ? {} : { latest }), null, 2) + '\n';
        return plain(res, 200, text, 'application/json');
      }
      const route = this.#o.adminRoutes?.get(path);
      if (route) return plain(res, 200, JSON.stringify(await route(), null, 2) + '\n', 'application/json');
      return plain(res, 404, 'not found\n');
    } catch (err) {
      this.#log.error({ err }, 'admin request failed');
      plain(res, 500, 'internal error\n');
    }
  }
}

function plain(res: ServerResponse, status: number, text: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** The node identity a join names, or the name quoted when it cannot be one (for the audit log). */
function nodeLabel(trustDomain: string, node: string): string {
  try {
    return SpiffeId.node(trustDomain, node).toString();
  } catch {
    return `node ${JSON.stringify(node)}`;
  }
}

/** `text` without any copy of `secret` (a message that quotes a credential must not carry it on). */
function scrub(text: string, secret: string): string {
  return secret.length === 0 ? text : text.split(secret).join('[redacted]');
}

function stringField(body: Record<string, unknown>, name: string, max: number): string {
  const v = body[name];
  if (typeof v !== 'string' || v.length === 0) throw new WardError('WARD_CA_REQUEST_INVALID', `field "${name}" must be a non-empty string`);
  if (v.length > max) throw new WardError('WARD_CA_REQUEST_TOO_LARGE', `field "${name}" is longer than ${max}`);
  return v;
}

function parseTtl(v: unknown): number {
  const ms = typeof v === 'string' ? parseDuration(v) : undefined;
  if (ms === undefined) throw new WardError('WARD_CA_REQUEST_INVALID', 'field "ttl" must be a duration such as "1h"');
  return ms;
}

/**
 * The unit a per-client limit counts: an IPv4 address, or an IPv6 /64 (one host usually holds a
 * whole /64, so per-address buckets would let it multiply its allowance at will).
 */
export function clientKey(address: string): string {
  const v4 = /^(?:::ffff:)?(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (v4) return v4[1];
  if (isIP(address) !== 6) return address;
  const [head, tail = ''] = address.split('%')[0].split('::');
  const left = head ? head.split(':') : [];
  const right = address.includes('::') && tail ? tail.split(':') : [];
  const groups = [...left, ...Array(8 - left.length - right.length).fill('0'), ...right];
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

async function closeServer(server: HttpServer | HttpsServer, graceMs: number, sockets: Set<Socket>): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  const timer = setTimeout(() => {
    server.closeAllConnections();
    // Connections node:http does not know of yet (still in the TLS handshake).
    for (const s of sockets) s.destroy();
  }, graceMs);
  timer.unref();
  await closed;
  clearTimeout(timer);
}
