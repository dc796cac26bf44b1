/**
 * The outbound side. Local mode: one HTTP-proxy listener per local workload (DESIGN §5: "each
 * workload gets its own outbound listener address"), so the listener a connection arrives on says
 * which workload speaks, and that workload's certificate — never another's — is the client
 * certificate toward the destination. Kubernetes mode (the proxy on the host network cannot bind
 * pod IPs): one listener on the node address, and the connection's SOURCE address says which local
 * workload speaks (its pod IP); a connection from an address that is no workload of this node is
 * refused before anything is read. This relies on the cluster network not letting a pod send from
 * another pod's IP (CNI anti-spoofing), as ztunnel's and Linkerd's node-local designs do.
 *
 * Accepted: absolute-form HTTP/1.1 requests (`http_proxy`), origin-form with a mesh Host,
 * `CONNECT host:port` (any TCP protocol, tunnelled over mutual TLS), and HTTP/2 with prior
 * knowledge (h2c; `:authority` names the service). The first bytes of a connection pick the parser.
 *
 * Per request: resolve the mesh name (a map lookup), pick an endpoint (power of two choices over
 * peak-EWMA, locality first), forward on a pooled mTLS connection. A connect/TLS/identity failure
 * ejects the endpoint and tries another (nothing was sent); an idempotent request without a body
 * that failed after sending is retried on another endpoint while the retry budget allows.
 */
import { type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createH2Server, type Http2Server, type ServerHttp2Session } from 'node:http2';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Clock } from '../core/clock.js';
import type { WardErrorCode } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { EndpointSet, RetryBudget } from './balance.js';
import { endToEndHeaders, hasBody, type DownstreamRequest, type DownstreamResponse } from './forward.js';
import type { HeldIdentity } from './identity.js';
import type { MeshView } from './mesh-view.js';
import { sendToService } from './send.js';
import { drainListener, handedOverHttpServer, listenOn } from './listener.js';
import { codeClass, type ProxyMetrics } from './metrics.js';
import { ConnectFailure, type Upstreams } from './upstream.js';

/** What the outbound (and inbound) listeners share with the proxy that runs them. */
export interface DataPlane {
  view(): MeshView;
  identity(identity: string): HeldIdentity | undefined;
  upstreams: Upstreams;
  /** The balancer of a service ("service.namespace"), kept in step with the view. */
  balancer(serviceKey: string): EndpointSet | undefined;
  budget: RetryBudget;
  metrics: ProxyMetrics;
  logger: Logger;
  clock: Clock;
}

export interface OutboundLimits {
  maxConnections: number;
  /**
   * A node-wide listener (by source address): connections one source may hold at once, so that one
   * workload cannot take the listener from the others of its node. Past it: 503, closed.
   */
  maxConnectionsPerSource: number;
  /** Requests in flight on one listener; past it: 503 WARD_PROXY_OVERLOADED. */
  maxPending: number;
  maxHeaderBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  /** Endpoints tried per request, the first included. */
  maxAttempts: number;
}

export const DEFAULT_OUTBOUND_LIMITS: OutboundLimits = Object.freeze({
  maxConnections: 4096,
  maxConnectionsPerSource: 512,
  maxPending: 10_000,
  maxHeaderBytes: 16 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 300_000,
  idleTimeoutMs: 60_000,
  maxAttempts: 3,
});

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0');
/** At most one warn line per this many ms for refused connections (the rest are counted in it). */
const REFUSAL_LOG_MS = 10_000;
const HOST_RE = /^[A-Za-z0-9_.-]+$/;

/** Who speaks on a connection: fixed (a per-workload listener) or looked up by source address. */
export type OutboundCaller =
  | { workload: string; identity: string }
  | { bySourceAddress: (address: string) => { workload: string; identity: string } | undefined };

export class OutboundListener {
  /** The fixed caller of a per-workload listener; '*' for a node-wide listener (by source address). */
  readonly workload: string;
  readonly identity: string;
  readonly #bySource: ((address: string) => { workload: string; identity: string } | undefined) | undefined;
  readonly #dp: DataPlane;
  readonly #limits: OutboundLimits;
  readonly #log: Logger;
  readonly #net: NetServer;
  readonly #http1: HttpServer;
  readonly #http2: Http2Server;
  readonly #sockets = new Set<Socket>();
  /** Node-wide listener: open connections per source address. */
  readonly #perSource = new Map<string, number>();
  /** Refusals not logged yet (at most one warn line per REFUSAL_LOG_MS: the port is reachable cluster-wide). */
  #refusalsUnlogged = 0;
  #refusalLoggedAt = -Infinity;
  readonly #sessions = new Set<ServerHttp2Session>();
  #pending = 0;
  #closing: Promise<void> | undefined;

  constructor(o: OutboundCaller & { dataPlane: DataPlane; limits?: Partial<OutboundLimits> }) {
    if ('bySourceAddress' in o) {
      this.workload = '*';
      this.identity = '*';
      this.#bySource = o.bySourceAddress;
    } else {
      this.workload = o.workload;
      this.identity = o.identity;
    }
    this.#dp = o.dataPlane;
    this.#limits = { ...DEFAULT_OUTBOUND_LIMITS, ...o.limits };
    this.#log = o.dataPlane.logger.child({ component: 'proxy.outbound', workload: this.workload });
    const handler = (req: DownstreamRequest, res: DownstreamResponse): void => this.#onRequest(req, res);
    this.#http1 = handedOverHttpServer({ ...this.#limits, maxHeaders: 200 }, handler as (req: IncomingMessage, res: ServerResponse) => void);
    this.#http1.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#onConnect(req, socket, head));
    this.#http1.on('upgrade', (_req: IncomingMessage, socket: Duplex) => {
      socket.end('HTTP/1.1 501 Not Implemented\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    });
    this.#http2 = createH2Server({ maxSessionMemory: 10, settings: { maxConcurrentStreams: 256, maxHeaderListSize: this.#limits.maxHeaderBytes } }, handler);
    this.#http2.on('session', (session: ServerHttp2Session) => {
      this.#sessions.add(session);
      session.once('close', () => this.#sessions.delete(session));
    });
    // allowHalfOpen: a CONNECT client may finish sending (FIN) and still wait for the answer; the
    // HTTP servers end their sockets themselves, so it changes nothing for plain requests.
    this.#net = createNetServer({ allowHalfOpen: true }, (socket) => this.#onSocket(socket));
    this.#net.maxConnections = this.#limits.maxConnections;
  }

  listen(host: string, port: number): Promise<AddressInfo> {
    return listenOn(this.#net, host, port);
  }

  address(): AddressInfo | undefined {
    return (this.#net.address() as AddressInfo | null) ?? undefined;
  }

  /** Stops accepting, lets requests in flight finish until `graceMs`, then destroys what is left. Idempotent. */
  close(graceMs = 5_000): Promise<void> {
    this.#closing ??= (async () => {
      const drained = drainListener(this.#net, this.#sockets, graceMs);
      // Idle keep-alive connections end now; busy ones after their response (#onRequest); HTTP/2
      // sessions get a GOAWAY and end once their streams are done.
      this.#http1.closeIdleConnections();
      for (const session of this.#sessions) session.close();
      this.#http1.close();
      await drained;
    })();
    return this.#closing;
  }

  /** The workload speaking on `socket` (by its source address for a node-wide listener). */
  #caller(socket: { remoteAddress?: string }): { workload: string; identity: string } | undefined {
    if (!this.#bySource) return this;
    const a = socket.remoteAddress;
    return a === undefined ? undefined : this.#bySource(a.startsWith('::ffff:') ? a.slice(7) : a);
  }

  #onSocket(socket: Socket): void {
    if (this.#bySource) {
      const source = socket.remoteAddress ?? '';
      if (!this.#caller(socket)) {
        // Not a workload of this node: nothing is read, no identity is ever used for it.
        return this.#refuseSocket(socket, 403, 'Forbidden', 'WARD_PROXY_UNKNOWN_WORKLOAD', 'the source address is no workload of this node', source);
      }
      const open = this.#perSource.get(source) ?? 0;
      if (open >= this.#limits.maxConnectionsPerSource) {
        return this.#refuseSocket(socket, 503, 'Service Unavailable', 'WARD_PROXY_OVERLOADED', `this workload holds ${open} connections to the proxy already`, source);
      }
      this.#perSource.set(source, open + 1);
      socket.once('close', () => {
        const n = (this.#perSource.get(source) ?? 1) - 1;
        if (n <= 0) this.#perSource.delete(source);
        else this.#perSource.set(source, n);
      });
    }
    this.#sockets.add(socket);
    this.#dp.metrics.activeConnections.inc({ direction: 'outbound' });
    this.#dp.metrics.connections.inc({ direction: 'outbound', result: 'accepted' });
    socket.once('close', () => {
      this.#sockets.delete(socket);
      this.#dp.metrics.activeConnections.dec({ direction: 'outbound' });
    });
    socket.setNoDelay(true);
    socket.on('error', () => socket.destroy());
    // Idle before the first byte: the HTTP servers' own timeouts start only once they own the socket.
    socket.setTimeout(this.#limits.headersTimeoutMs, () => socket.destroy());
    // A client gone before its first byte: with allowHalfOpen the socket would wait for the timeout.
    const goneEarly = (): void => void socket.destroy();
    socket.once('end', goneEarly);
    socket.once('data', (chunk: Buffer) => {
      socket.off('end', goneEarly);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(chunk);
      const h2 = chunk.length >= H2_PREFACE.length ? chunk.subarray(0, H2_PREFACE.length).equals(H2_PREFACE) : false;
      if (h2) {
        // The HTTP/2 session reads the socket's native handle itself and takes what is already
        // buffered (the unshifted chunk) on the next tick. Resuming here would start a second reader
        // on that handle: the session then fails at once with GOAWAY INTERNAL_ERROR.
        this.#http2.emit('connection', socket);
      } else {
        this.#http1.emit('connection', socket);
        socket.resume();
      }
    });
  }

  /** Answers a connection refused before anything is read, then closes it both ways. */
  #refuseSocket(socket: Socket, status: number, reason: string, code: WardErrorCode, message: string, source: string): void {
    this.#dp.metrics.connections.inc({ direction: 'outbound', result: 'refused' });
    const now = this.#dp.clock.now();
    if (now - this.#refusalLoggedAt >= REFUSAL_LOG_MS) {
      this.#log.warn({ source, code, alsoRefusedSinceLastLine: this.#refusalsUnlogged }, `refused an outbound connection: ${message}`);
      this.#refusalLoggedAt = now;
      this.#refusalsUnlogged = 0;
    } else {
      this.#refusalsUnlogged++;
    }
    socket.on('error', () => socket.destroy());
    const body = `ward: ${message} (${code})\n`;
    // Written, then closed both ways (allowHalfOpen would otherwise wait for the client's FIN).
    socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: text/plain\r\nx-ward-error: ${code}\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`, () => socket.destroy());
  }

  #reject(res: DownstreamResponse, status: number, code: WardErrorCode, message: string): void {
    this.#dp.metrics.requests.inc({ direction: 'outbound', code: codeClass(status) });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = `ward: ${message} (${code})\n`;
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-ward-error': code });
    res.end(body);
  }

  /** The target of a proxy request: authority and origin-form path. */
  #target(req: DownstreamRequest): { host: string; port: number; path: string } | { error: string } {
    const url = req.url ?? '';
    let authority: string;
    let path: string;
    if (url.startsWith('http://')) {
      const slash = url.indexOf('/', 7);
      const q = url.indexOf('?', 7);
      const end = slash === -1 ? (q === -1 ? url.length : q) : q === -1 ? slash : Math.min(slash, q);
      authority = url.slice(7, end);
      path = url.slice(end) || '/';
      if (path.startsWith('?')) path = `/${path}`;
    } else if (url.startsWith('/')) {
      authority = String(req.headers[':authority'] ?? req.headers.host ?? '');
      path = url;
    } else if (url.startsWith('https://')) {
      return { error: 'https:// through the proxy: use CONNECT (the mesh encrypts every hop already; send http:// to a mesh name)' };
    } else {
      return { error: `request target ${JSON.stringify(url.slice(0, 100))} is not a proxy request (absolute-form http:// URL)` };
    }
    const hp = splitHostPort(authority, 80);
    if (!hp) return { error: `bad authority ${JSON.stringify(authority.slice(0, 100))}` };
    return { host: hp.host, port: hp.port, path };
  }

  #onRequest(req: DownstreamRequest, res: DownstreamResponse): void {
    if (this.#closing && 'shouldKeepAlive' in res) (res as ServerResponse).shouldKeepAlive = false;
    const t = this.#target(req);
    if ('error' in t) return this.#reject(res, 400, 'WARD_PROXY_REQUEST_INVALID', t.error);
    const view = this.#dp.view();
    const r = view.resolve(t.host, t.port);
    if (!r.ok) return this.#reject(res, 502, 'WARD_PROXY_UNKNOWN_SERVICE', r.reason);
    const caller = this.#caller(req.socket);
    if (!caller) return this.#reject(res, 403, 'WARD_PROXY_UNKNOWN_WORKLOAD', 'the source address is no longer a workload of this node');
    const source = this.#dp.identity(caller.identity);
    if (!source) return this.#reject(res, 503, 'WARD_PROXY_IDENTITY_UNAVAILABLE', `no valid certificate for ${caller.workload} (${caller.identity}) yet`);
    const set = this.#dp.balancer(r.key);
    if (!set || set.size === 0) return this.#reject(res, 503, 'WARD_PROXY_NO_ENDPOINTS', `service ${r.key} has no endpoints`);
    if (this.#pending >= this.#limits.maxPending) return this.#reject(res, 503, 'WARD_PROXY_OVERLOADED', 'too many requests in flight');
    this.#pending++;
    const method = req.method ?? 'GET';
    const headers = endToEndHeaders(req.headers);
    headers.host = t.port === 80 ? t.host : `${t.host}:${t.port}`;
    sendToService(req, res, {
      serviceKey: r.key,
      set,
      port: r.port,
      source,
      upstreams: this.#dp.upstreams,
      budget: this.#dp.budget,
      method,
      path: t.path,
      headers,
      body: hasBody(req),
      maxAttempts: this.#limits.maxAttempts,
      logger: this.#log,
      onStatus: (status) => this.#dp.metrics.requests.inc({ direction: 'outbound', code: codeClass(status) }),
      onRetry: (result) => this.#dp.metrics.retries.inc({ result }),
      reject: (status, code, message) => this.#reject(res, status, code, message),
      done: () => this.#pending--,
    });
  }

  #onConnect(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refuse = (status: number, code: WardErrorCode, message: string): void => {
      this.#dp.metrics.tunnels.inc({ direction: 'outbound', result: 'refused' });
      const body = `ward: ${message} (${code})\n`;
      socket.end(`HTTP/1.1 ${status} ${status === 502 ? 'Bad Gateway' : status === 400 ? 'Bad Request' : status === 403 ? 'Forbidden' : 'Service Unavailable'}\r\ncontent-type: text/plain\r\nx-ward-error: ${code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    };
    socket.on('error', () => socket.destroy());
    const hp = splitHostPort(req.url ?? '', undefined);
    if (!hp) return refuse(400, 'WARD_PROXY_REQUEST_INVALID', `CONNECT target ${JSON.stringify((req.url ?? '').slice(0, 100))} is not host:port`);
    const view = this.#dp.view();
    const r = view.resolve(hp.host, hp.port);
    if (!r.ok) return refuse(502, 'WARD_PROXY_UNKNOWN_SERVICE', r.reason);
    const caller = this.#caller(socket as Socket);
    if (!caller) return refuse(403, 'WARD_PROXY_UNKNOWN_WORKLOAD', 'the source address is no longer a workload of this node');
    const source = this.#dp.identity(caller.identity);
    if (!source) return refuse(503, 'WARD_PROXY_IDENTITY_UNAVAILABLE', `no valid certificate for ${caller.workload} yet`);
    const set = this.#dp.balancer(r.key);
    if (!set || set.size === 0) return refuse(503, 'WARD_PROXY_NO_ENDPOINTS', `service ${r.key} has no endpoints`);
    const tried = new Set<string>();
    socket.pause();
    const attempt = (n: number): void => {
      const lease = set.pick(tried);
      if (!lease) return n === 1 ? refuse(503, 'WARD_PROXY_NO_ENDPOINTS', `service ${r.key} has no healthy endpoint`) : refuse(502, 'WARD_PROXY_UPSTREAM_FAILED', `every endpoint tried for ${r.key} failed`);
      tried.add(lease.key);
      this.#dp.upstreams.tunnel(source, lease.endpoint, r.port.targetPort).then(
        (up) => {
          if (socket.destroyed) {
            lease.cancel();
            up.destroy();
            return;
          }
          lease.succeed();
          this.#dp.metrics.tunnels.inc({ direction: 'outbound', result: 'established' });
          socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
          if (head.length) up.write(head);
          splice(socket, up);
          socket.resume();
        },
        (err: ConnectFailure) => {
          lease.fail(err.kind ?? 'connect');
          if (n < this.#limits.maxAttempts && !socket.destroyed) return attempt(n + 1);
          refuse(502, 'WARD_PROXY_UPSTREAM_FAILED', `${r.key}: ${err.message}`);
        },
      );
    };
    attempt(1);
  }
}

/** Bytes a tunnel lets queue toward a slow side before it stops reading the other (per direction). */
const TUNNEL_BUFFER_BYTES = 256 * 1024;

/**
 * Joins two sockets both ways. Backpressure with a deeper buffer than pipe(): pipe() pauses the
 * source whenever write() returns false (past 16 KiB), which on a fast tunnel means a pause/resume
 * — two epoll_ctl calls — nearly every chunk; here the source pauses only once TUNNEL_BUFFER_BYTES
 * are queued, and resumes on 'drain'. Half-closes are carried (end → end); an error or close on
 * either end destroys the other, so no half-dead tunnel lingers.
 */
export function splice(a: Duplex, b: Duplex): void {
  flow(a, b);
  flow(b, a);
  const kill = (): void => {
    a.destroy();
    b.destroy();
  };
  a.once('error', kill);
  b.once('error', kill);
  a.once('close', kill);
  b.once('close', kill);
}

function flow(from: Duplex, to: Duplex): void {
  const resume = (): void => {
    from.resume();
  };
  from.on('data', (chunk: Buffer) => {
    to.write(chunk);
    if (to.writableLength > TUNNEL_BUFFER_BYTES) {
      from.pause();
      to.once('drain', resume);
    }
  });
  from.once('end', () => to.end());
}

/** "host:port" / "[v6]:port" / "host" (with a default port) → parts; undefined when malformed. */
export function splitHostPort(authority: string, defaultPort: number | undefined): { host: string; port: number } | undefined {
  if (authority.length === 0 || authority.length > 300) return undefined;
  let host: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close === -1) return undefined;
    host = authority.slice(1, close);
    const rest = authority.slice(close + 1);
    if (rest.length) {
      if (!rest.startsWith(':')) return undefined;
      portText = rest.slice(1);
    }
  } else {
    const colon = authority.lastIndexOf(':');
    if (colon === -1) host = authority;
    else {
      host = authority.slice(0, colon);
      portText = authority.slice(colon + 1);
    }
    // A name or an IPv4 address: no second colon, userinfo, spaces or other delimiters.
    if (!HOST_RE.test(host)) return undefined;
  }
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/.test(portText)) return undefined;
    port = Number(portText);
  }
  if (port === undefined || port < 1 || port > 65535 || host.length === 0) return undefined;
  return { host, port };
}
