/**
 * The inbound side: one mutual-TLS listener per node (ADDRESS:15008) for every local workload.
 *
 * Handshake: the client names the destination workload and port in SNI (mesh-view sniFor); the
 * SNICallback presents that workload's certificate, or fails the handshake when this node holds
 * none (a workload without a certificate gets no traffic — never plaintext). OpenSSL then
 * validates the client chain against the bundle (requestCert + rejectUnauthorized), and Ward applies
 * the X.509-SVID rules (peerIdentity: a CA certificate used as a leaf, two URI SANs, a foreign
 * trust domain are all refused). A connection lives no longer than its peer's certificate.
 *
 * Then by ALPN: 'http/1.1' → each request is normalized once, authorized (DESIGN §6) and forwarded
 * with the normalized target to the local workload, with the verified source identity in
 * x-ward-source-identity (any copy that arrived is dropped); 'ward-tcp' → the stream is authorized
 * as TCP and spliced to the workload's port (denied: closed).
 *
 * Authorization: a workload's target port can be reached through several services; the request is
 * allowed only when it is allowed for every (service, port) that maps to it — a caller cannot pick
 * the service whose policies suit it.
 */
import { type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { constants } from 'node:crypto';
import { createServer as createTlsServer, type SecureContext, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { Pool } from './undici-pool.js';
import type { Logger } from '../core/logger.js';
import type { SpiffeId } from '../core/identity/index.js';
import { normalizeRequest, forwardTarget, type Decision, type DefaultMode, type PolicyRef } from '../core/policy/index.js';
import { peerIdentity } from '../core/tls/index.js';
import type { TrustBundle } from '../core/pki/index.js';
import { endToEndHeaders, forward, hasBody } from './forward.js';
import { ALPN_HTTP, ALPN_TCP, NOT_FORWARDED_HEADER, parseSni, SOURCE_IDENTITY_HEADER, type InboundTarget, type LocalWorkloadView } from './mesh-view.js';
import { codeClass } from './metrics.js';
import type { DataPlane } from './outbound.js';
import { splice } from './outbound.js';
import { drainListener, handedOverHttpServer, listenOn } from './listener.js';

export interface InboundLimits {
  maxConnections: number;
  handshakeTimeoutMs: number;
  maxHeaderBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  /** Connections to one local workload port. */
  connectionsPerWorkload: number;
  connectTimeoutMs: number;
}

export const DEFAULT_INBOUND_LIMITS: InboundLimits = Object.freeze({
  maxConnections: 8192,
  handshakeTimeoutMs: 10_000,
  maxHeaderBytes: 16 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 300_000,
  idleTimeoutMs: 120_000,
  connectionsPerWorkload: 256,
  connectTimeoutMs: 5_000,
});

interface ConnContext {
  peer: SpiffeId;
  workload: LocalWorkloadView;
  port: number;
  /** HTTP requests in progress on the connection (close() ends idle keep-alive connections at once). */
  active: number;
}

const STRIP_INBOUND: ReadonlySet<string> = new Set([SOURCE_IDENTITY_HEADER]);
/**
 * Proxy-to-proxy signals an application must not be able to send: a workload answering 503 +
 * x-ward-not-forwarded (or 502 + x-ward-error) would make calling proxies replay requests.
 */
const STRIP_FROM_APP: ReadonlySet<string> = new Set([NOT_FORWARDED_HEADER, 'x-ward-error']);

export class InboundServer {
  readonly #dp: DataPlane;
  readonly #limits: InboundLimits;
  readonly #log: Logger;
  readonly #defaultMode: DefaultMode;
  readonly #tls: TlsServer;
  readonly #http: HttpServer;
  readonly #contexts = new WeakMap<object, ConnContext>();
  /** Plain-HTTP pools to local workloads, by "address:port". */
  readonly #local = new Map<string, Pool>();
  readonly #sockets = new Set<TLSSocket>();
  readonly #raw = new Set<Socket>();
  #closing: Promise<void> | undefined;

  constructor(o: { dataPlane: DataPlane; bundle: TrustBundle; defaultMode: DefaultMode; limits?: Partial<InboundLimits> }) {
    this.#dp = o.dataPlane;
    this.#limits = { ...DEFAULT_INBOUND_LIMITS, ...o.limits };
    this.#log = o.dataPlane.logger.child({ component: 'proxy.inbound' });
    this.#defaultMode = o.defaultMode;
    this.#tls = createTlsServer({
      ...this.#serverContextOptions(o.bundle),
      requestCert: true,
      rejectUnauthorized: true,
      // A TCP stream's client may half-close and still wait for the answer (see splice).
      allowHalfOpen: true,
      ALPNProtocols: [ALPN_HTTP, ALPN_TCP],
      handshakeTimeout: this.#limits.handshakeTimeoutMs,
      SNICallback: (servername, cb) => this.#sni(servername, cb),
    });
    this.#tls.maxConnections = this.#limits.maxConnections;
    this.#tls.on('secureConnection', (socket: TLSSocket) => this.#onSecure(socket));
    this.#tls.on('tlsClientError', (err: Error & { code?: string }, socket?: TLSSocket) => {
      // A client certificate that does not verify against the bundle is dropped by Node itself after
      // the handshake (rejectUnauthorized): all that arrives here is a generic "socket hang up", and
      // the verification error is on the socket.
      const verifyError = socket?.authorizationError as unknown;
      const reason = verifyError ? 'bad-certificate' : handshakeReason(err);
      this.#dp.metrics.handshakeFailures.inc({ direction: 'inbound', reason });
      this.#log.info({ reason, err: verifyError ? `client certificate did not verify: ${String(verifyError)}` : err.message }, 'inbound handshake refused');
      // Node leaves the socket open after a failed handshake (e.g. its timeout): close it, or a
      // client could leak connections (and hold up shutdown) at will.
      socket?.destroy();
    });
    // Raw connections, handshakes included, so that close() can end those that never finish.
    this.#tls.on('connection', (raw: Socket) => {
      this.#raw.add(raw);
      raw.once('close', () => this.#raw.delete(raw));
    });
    this.#http = handedOverHttpServer({ ...this.#limits, maxHeaders: 200 }, (req, res) => this.#onRequest(req, res));
    this.#http.on('upgrade', (_req: IncomingMessage, socket: TLSSocket) => socket.destroy());
    this.#http.on('connect', (_req: IncomingMessage, socket: TLSSocket) => socket.destroy());
  }

  /** Default context: no certificate (a client without SNI fails the handshake), the bundle for client verification. */
  #serverContextOptions(bundle: TrustBundle): { ca: string; minVersion: 'TLSv1.3'; maxVersion: 'TLSv1.3'; secureOptions: number } {
    return { ca: bundle.toPem(), minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', secureOptions: constants.SSL_OP_NO_TICKET };
  }

  /** A new bundle (root rotation): new handshakes verify clients against it. Open connections keep theirs. */
  setBundle(bundle: TrustBundle): void {
    this.#tls.setSecureContext(this.#serverContextOptions(bundle));
  }

  listen(host: string, port: number): Promise<AddressInfo> {
    return listenOn(this.#tls, host, port);
  }

  address(): AddressInfo | undefined {
    return (this.#tls.address() as AddressInfo | null) ?? undefined;
  }

  /** Drops the pools of local workloads no longer on this node. */
  retainWorkloads(live: ReadonlySet<string>): void {
    for (const [k, pool] of this.#local) {
      if (!live.has(k)) {
        this.#local.delete(k);
        void pool.close().catch(() => undefined);
      }
    }
  }

  close(graceMs = 5_000): Promise<void> {
    this.#closing ??= (async () => {
      // Raw connections, those still in their handshake included: destroying one ends its TLS socket.
      const drained = drainListener(this.#tls, this.#raw, graceMs);
      // Pooled keep-alive connections from other proxies would otherwise hold the drain until the
      // deadline: end the idle ones now, the busy ones after their response (see #onRequest).
      for (const sock of this.#sockets) {
        const ctx = this.#contexts.get(sock);
        if (ctx && ctx.active === 0) sock.end();
      }
      this.#http.close();
      await drained;
      await Promise.all([...this.#local.values()].map((p) => p.destroy().catch(() => undefined)));
      this.#local.clear();
    })();
    return this.#closing;
  }

  #sni(servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void {
    const t = parseSni(servername);
    const w = t && this.#dp.view().workloads.get(t.workload);
    if (!t || !w) return cb(new Error(`no local workload for server name ${JSON.stringify(servername.slice(0, 100))}`));
    if (!w.ports.includes(t.port)) return cb(new Error(`workload ${w.key} does not listen on port ${t.port}`));
    const held = this.#dp.identity(w.identity);
    if (!held) return cb(new Error(`no valid certificate for ${w.key}`));
    cb(null, held.context);
  }

  #onSecure(socket: TLSSocket): void {
    this.#sockets.add(socket);
    this.#dp.metrics.activeConnections.inc({ direction: 'inbound' });
    socket.once('close', () => {
      this.#sockets.delete(socket);
      this.#dp.metrics.activeConnections.dec({ direction: 'inbound' });
    });
    socket.on('error', () => socket.destroy());
    socket.setNoDelay(true);
    let peer: SpiffeId | undefined;
    try {
      peer = peerIdentity(socket, { trustDomain: this.#dp.view().trustDomain });
    } catch (err) {
      this.#refuseConnection(socket, 'svid', (err as Error).message);
      return;
    }
    if (!peer) return this.#refuseConnection(socket, 'no-client-certificate', 'peer presented no certificate');
    const t = parseSni(socket.servername);
    const w = t && this.#dp.view().workloads.get(t.workload);
    if (!t || !w) return this.#refuseConnection(socket, 'unknown-workload', 'destination workload left this node');
    this.#dp.metrics.connections.inc({ direction: 'inbound', result: 'accepted' });
    // A connection lives no longer than the peer's certificate: past it the peer must reconnect
    // (and present a current one). The clock source is the socket's own certificate, not a guess.
    const notAfter = Date.parse(socket.getPeerCertificate().valid_to);
    if (Number.isFinite(notAfter)) {
      const timer = setTimeout(() => socket.destroy(), Math.max(0, Math.min(notAfter - this.#dp.clock.now(), 2 ** 31 - 1)));
      timer.unref();
      socket.once('close', () => clearTimeout(timer));
    }
    const ctx: ConnContext = { peer, workload: w, port: t.port, active: 0 };
    if (socket.alpnProtocol === ALPN_TCP) return this.#onTcp(socket, ctx);
    this.#contexts.set(socket, ctx);
    this.#http.emit('connection', socket);
  }

  #refuseConnection(socket: TLSSocket, reason: string, detail: string): void {
    this.#dp.metrics.handshakeFailures.inc({ direction: 'inbound', reason });
    this.#log.info({ reason, err: detail, remote: socket.remoteAddress }, 'inbound connection refused');
    socket.destroy();
  }

  /** Decides for every (service, port) the target port belongs to; the first denial wins. */
  #authorize(ctx: ConnContext, targets: readonly InboundTarget[], protocol: 'http' | 'tcp', method?: string, path?: string): Decision {
    const view = this.#dp.view();
    const ns = ctx.workload.namespace;
    if (targets.length === 0) {
      // Reachable through no service (e.g. a port no service exposes): only namespace-wide policies apply.
      return view.engine.evaluate({ source: ctx.peer, destination: { namespace: ns, service: '' }, port: ctx.port, protocol, method, path }, this.#defaultMode, view.trustDomain);
    }
    let last: Decision | undefined;
    for (const t of targets) {
      const d = view.engine.evaluate({ source: ctx.peer, destination: { namespace: t.namespace, service: t.service }, port: t.port, protocol, method, path }, this.#defaultMode, view.trustDomain);
      if (!d.allowed) return d;
      last = d;
    }
    return last!;
  }

  #recordDecision(ctx: ConnContext, d: Decision, protocol: 'http' | 'tcp', method?: string, path?: string): void {
    this.#dp.metrics.authz.inc({ decision: d.allowed ? 'allow' : 'deny', reason: d.reason, protocol });
    if (!d.allowed) {
      this.#log.info(
        { source: ctx.peer.toString(), workload: ctx.workload.key, port: ctx.port, protocol, method, path, reason: d.reason, policy: d.policy as PolicyRef | undefined, rule: d.rule, ...(d.candidates ? { allowPolicies: d.candidates } : {}) },
        'request denied by authorization policy',
      );
    } else if (d.audit) {
      this.#log.info({ source: ctx.peer.toString(), workload: ctx.workload.key, method, path, audit: d.audit }, 'request matched an AUDIT policy');
    }
  }

  #onTcp(socket: TLSSocket, ctx: ConnContext): void {
    const targets = this.#dp.view().inboundTargets(ctx.workload.key, ctx.port);
    const d = this.#authorize(ctx, targets, 'tcp');
    this.#recordDecision(ctx, d, 'tcp');
    if (!d.allowed) {
      this.#dp.metrics.tunnels.inc({ direction: 'inbound', result: 'denied' });
      socket.destroy();
      return;
    }
    socket.pause();
    const local = netConnect({ host: ctx.workload.address, port: ctx.port, allowHalfOpen: true });
    local.setTimeout(this.#limits.connectTimeoutMs, () => local.destroy(new Error('connect timeout')));
    local.once('connect', () => {
      local.setTimeout(0);
      local.setNoDelay(true);
      this.#dp.metrics.tunnels.inc({ direction: 'inbound', result: 'established' });
      splice(socket, local);
      socket.resume();
    });
    local.once('error', (err) => {
      this.#dp.metrics.tunnels.inc({ direction: 'inbound', result: 'local-failed' });
      this.#log.warn({ workload: ctx.workload.key, port: ctx.port, err: err.message }, 'local workload refused a stream');
      socket.destroy();
    });
  }

  #reply(res: ServerResponse, status: number, body: string, code?: string, notForwarded = false): void {
    this.#dp.metrics.requests.inc({ direction: 'inbound', code: codeClass(status) });
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      ...(code ? { 'x-ward-error': code } : {}),
      ...(notForwarded ? { [NOT_FORWARDED_HEADER]: '1' } : {}),
    });
    res.end(body);
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const ctx = this.#contexts.get(req.socket);
    if (!ctx) {
      res.destroy();
      return;
    }
    ctx.active++;
    res.once('close', () => {
      ctx.active--;
      if (this.#closing !== undefined && ctx.active === 0) req.socket.end();
    });
    const method = req.method ?? '';
    const n = normalizeRequest({ method, host: req.headers.host, path: req.url, port: ctx.port, protocol: 'http' });
    if (!n.ok) return this.#reply(res, 400, `ward: request refused (${n.reason})\n`, 'WARD_PROXY_REQUEST_INVALID');
    const targets = this.#dp.view().inboundTargets(ctx.workload.key, ctx.port);
    const d = this.#authorize(ctx, targets, 'http', n.request.method, n.request.path);
    this.#recordDecision(ctx, d, 'http', n.request.method, n.request.path);
    // The body names neither policy nor rule: the caller learns it was denied, the log says why.
    if (!d.allowed) return this.#reply(res, 403, 'ward: denied by authorization policy\n');
    const headers = endToEndHeaders(req.headers, STRIP_INBOUND);
    headers.host = req.headers.host ?? `${ctx.workload.address}:${ctx.port}`;
    headers[SOURCE_IDENTITY_HEADER] = ctx.peer.toString();
    const pool = this.#localPool(ctx.workload, ctx.port);
    const abort = forward(pool, req, res, {
      method,
      path: forwardTarget(n.request),
      headers,
      body: hasBody(req),
      stripResponse: STRIP_FROM_APP,
      headersTimeoutMs: this.#limits.requestTimeoutMs,
      onHeaders: (status) => this.#dp.metrics.requests.inc({ direction: 'inbound', code: codeClass(status) }),
      onDone: (err, started) => {
        if (!err) return;
        if (started || res.headersSent) {
          res.destroy();
          return;
        }
        if (res.destroyed) return;
        this.#log.warn({ workload: ctx.workload.key, port: ctx.port, err: err.message }, 'local workload failed a request');
        // 503 + NOT_FORWARDED_HEADER: the workload never got the request (nothing listens, or the
        // connection could not be made), so the calling proxy may send it to another endpoint.
        // 502: it failed after receiving it (nothing may be replayed but idempotent requests).
        if (notReached(err)) return this.#reply(res, 503, `ward: local workload ${ctx.workload.key} is unavailable\n`, 'WARD_PROXY_UPSTREAM_FAILED', true);
        this.#reply(res, 502, `ward: local workload ${ctx.workload.key} failed the request\n`, 'WARD_PROXY_UPSTREAM_FAILED');
      },
    });
    res.once('close', abort);
  }

  #localPool(w: LocalWorkloadView, port: number): Pool {
    const key = `${w.address}:${port}`;
    let pool = this.#local.get(key);
    if (!pool) {
      const host = w.address.includes(':') ? `[${w.address}]` : w.address;
      pool = new Pool(`http://${host}:${port}`, {
        connections: this.#limits.connectionsPerWorkload,
        pipelining: 1,
        connectTimeout: this.#limits.connectTimeoutMs,
        headersTimeout: this.#limits.requestTimeoutMs,
        bodyTimeout: this.#limits.requestTimeoutMs,
        keepAliveTimeout: 30_000,
      });
      this.#local.set(key, pool);
    }
    return pool;
  }
}

/** Whether a failure to reach the local workload happened before it got any byte of the request. */
function notReached(err: Error & { code?: string }): boolean {
  const code = err.code ?? (err.cause as { code?: string } | undefined)?.code;
  return code === 'ECONNREFUSED' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH';
}

/** A bounded reason for a failed inbound handshake (metric label). */
function handshakeReason(err: Error & { code?: string }): string {
  const m = `${err.code ?? ''} ${err.message}`;
  if (/wrong version number|http request|unknown protocol|packet length too long/i.test(m)) return 'not-tls';
  if (/no local workload|does not listen|no valid certificate|callback/i.test(m)) return 'unknown-server-name';
  if (/peer did not return a certificate|certificate required/i.test(m)) return 'no-client-certificate';
  if (/certificate|verify|unknown ca|issuer/i.test(m)) return 'bad-certificate';
  if (/version|protocol/i.test(m)) return 'protocol-version';
  if (/timeout|timed out/i.test(m)) return 'timeout';
  return 'other';
}
