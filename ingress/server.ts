/**
 * The ingress's external listeners (DESIGN §7): HTTPS (TLS 1.2/1.3, ALPN h2 and http/1.1, a
 * certificate per host by SNI) and plain HTTP that redirects to HTTPS (308).
 *
 * One TLS server accepts; after the handshake the socket goes to an HTTP/2 or an HTTP/1.1 server by
 * ALPN (as the proxy's inbound does), so both protocols share one request handler:
 *   1. SNI and Host must name the same host (421 otherwise — also for a request that HTTP/2
 *      connection reuse sends on a connection opened for another host);
 *   2. the path is normalized once (core/policy normalizeRequest, as the proxies do; refused → 400);
 *   3. the route table (Kubernetes Ingress semantics) picks the backend (unknown host or no route →
 *      404);
 *   4. client-supplied identity and forwarding headers are dropped; X-Forwarded-For/-Proto/-Host and
 *      a request id are set; the request goes into the mesh over mutual TLS with the ingress's
 *      identity through the proxy's sendToService (same balancing, failover and retries).
 * Limits: header size and count (431), body size (413, also for chunked bodies: counted as they
 * stream), header/request/idle timeouts, connections; llhttp's strict parsing answers request
 * smuggling inputs (CL+TE, duplicate Content-Length, bad chunking) with 400 and closes.
 */
import { randomUUID } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createH2Server, type Http2Server, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import { Transform } from 'node:stream';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { systemClock, type Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { parseCertificate, validatePath, type Certificate } from '../core/pki/index.js';
import { normalizeRequest, forwardTarget } from '../core/policy/index.js';
import type { WardErrorCode } from '../core/errors.js';
import {
  endToEndHeaders,
  drainListener,
  handedOverHttpServer,
  hasBody,
  listenOn,
  sendToService,
  SOURCE_IDENTITY_HEADER,
  type EndpointSet,
  type HeldIdentity,
  type MeshView,
  type RetryBudget,
  type Upstreams,
} from '../proxy/index.js';
import type { CertificateStore } from './certificates.js';
import type { IngressMetrics } from './metrics.js';
import type { RouteTable } from './routes.js';

export interface IngressLimits {
  maxConnections: number;
  maxHeaderBytes: number;
  maxHeaders: number;
  maxBodyBytes: number;
  handshakeTimeoutMs: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  maxAttempts: number;
  /** HTTP/2: concurrent streams per connection. */
  maxConcurrentStreams: number;
}

export const DEFAULT_INGRESS_LIMITS: IngressLimits = Object.freeze({
  maxConnections: 10_000,
  maxHeaderBytes: 16 * 1024,
  maxHeaders: 100,
  maxBodyBytes: 10 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  idleTimeoutMs: 60_000,
  maxAttempts: 3,
  maxConcurrentStreams: 100,
});

/**
 * TLS 1.2 only with ECDHE and AEAD (GCM, ChaCha20-Poly1305); TLS 1.3's suites are all AEAD with
 * (EC)DHE. No CBC, no static RSA, no SHA-1 MACs.
 */
export const INGRESS_TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/** The TLS settings every host's context is built with (the CertificateStore applies them). */
export const INGRESS_TLS = Object.freeze({
  minVersion: 'TLSv1.2' as const,
  maxVersion: 'TLSv1.3' as const,
  ciphers: `TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:${INGRESS_TLS12_CIPHERS}`,
  honorCipherOrder: true,
  ecdhCurve: 'X25519:P-256:P-384',
});

/** Headers a client may never set on the way into the mesh: identity, and what the ingress sets itself. */
const STRIP_FROM_CLIENT: ReadonlySet<string> = new Set([
  SOURCE_IDENTITY_HEADER,
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'x-forwarded-client-cert',
  'x-request-id',
  'forwarded',
]);

/** What the listeners need from the ingress that runs them (current configuration and identity). */
export interface IngressDataPlane {
  routes(): RouteTable;
  view(): MeshView;
  identity(): HeldIdentity | undefined;
  balancer(serviceKey: string): EndpointSet | undefined;
  upstreams: Upstreams;
  budget: RetryBudget;
  metrics: IngressMetrics;
  logger: Logger;
}

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

export class IngressServer {
  readonly #dp: IngressDataPlane;
  readonly #limits: IngressLimits;
  readonly #log: Logger;
  readonly #tls: TlsServer;
  readonly #h1: HttpServer;
  readonly #h2: Http2Server;
  readonly #redirect: HttpServer;
  readonly #sockets = new Set<Socket>();
  readonly #sessions = new Set<ServerHttp2Session>();
  #httpsPort = 443;
  #httpPort = 80;
  /** Hosts the plain-HTTP listener serves instead of redirecting (lowercase). */
  readonly #plainHosts: ReadonlySet<string>;
  /** Hosts that require a client certificate → the CA certificates it must chain to. */
  readonly #clientAuth: ReadonlyMap<string, readonly Certificate[]>;
  readonly #clock: Clock;

  #closing: Promise<void> | undefined;

  constructor(o: { dataPlane: IngressDataPlane; certificates: CertificateStore; limits?: Partial<IngressLimits>; clientAuth?: ReadonlyMap<string, readonly Certificate[]>; plainHosts?: readonly string[]; clock?: Clock }) {
    this.#dp = o.dataPlane;
    this.#clientAuth = o.clientAuth ?? new Map();
    this.#plainHosts = new Set([...(o.plainHosts ?? [])].map((h) => h.toLowerCase()));
    this.#clock = o.clock ?? systemClock;
    this.#limits = { ...DEFAULT_INGRESS_LIMITS, ...o.limits };
    this.#log = o.dataPlane.logger.child({ component: 'ingress.server' });
    const handler = (req: Req, res: Res): void => this.#onRequest(req, res);
    this.#tls = createTlsServer({
      ...INGRESS_TLS,
      ALPNProtocols: ['h2', 'http/1.1'],
      // Mutual TLS at the edge, for the hosts configured with a client CA: the certificate is asked
      // for (only then) and verified after the handshake by Ward's path validator against that
      // host's CA — per host, which OpenSSL's one verify store per server could not do.
      requestCert: (o.clientAuth?.size ?? 0) > 0,
      rejectUnauthorized: false,
      // An unknown (or absent) server name gets the first configured certificate, like nginx's
      // default server: the request then reaches the routing step and is answered 404 (or 421),
      // instead of failing in the handshake with nothing to tell the client.
      SNICallback: (servername, cb) => cb(null, (o.certificates.select(servername) ?? o.certificates.list()[0])?.context),
      handshakeTimeout: this.#limits.handshakeTimeoutMs,
    });
    this.#tls.maxConnections = this.#limits.maxConnections;
    this.#tls.on('connection', (raw: Socket) => {
      this.#sockets.add(raw);
      raw.once('close', () => this.#sockets.delete(raw));
    });
    this.#tls.on('tlsClientError', (err: Error & { code?: string }, socket?: TLSSocket) => {
      this.#dp.metrics.handshakeFailures.inc({ reason: handshakeReason(err) });
      this.#log.debug({ err: err.message }, 'TLS handshake failed');
      socket?.destroy();
    });
    this.#tls.on('secureConnection', (socket: TLSSocket) => {
      this.#dp.metrics.handshakes.inc({ protocol: String(socket.getProtocol() ?? 'unknown') });
      socket.setNoDelay(true);
      const hand = (): void => {
        if (socket.destroyed) return;
        if (socket.alpnProtocol === 'h2') this.#h2.emit('connection', socket);
        else this.#h1.emit('connection', socket);
      };
      const sni = typeof socket.servername === 'string' ? socket.servername.toLowerCase() : '';
      const roots = this.#clientAuth.get(sni);
      if (!roots) return hand();
      // Verified once per connection, before any request is read (the socket waits paused).
      socket.pause();
      this.#verifyClient(socket, roots).then(
        (r) => {
          (socket as unknown as Record<symbol, unknown>)[CLIENT_CERT] = r;
          hand();
          socket.resume();
        },
        (err: Error) => {
          (socket as unknown as Record<symbol, unknown>)[CLIENT_CERT] = err;
          hand();
          socket.resume();
        },
      );
    });
    this.#h1 = handedOverHttpServer(this.#limits, handler as (req: IncomingMessage, res: ServerResponse) => void);
    this.#h1.on('upgrade', (_req: IncomingMessage, socket: Socket) => socket.destroy());
    this.#h1.on('connect', (_req: IncomingMessage, socket: Socket) => socket.destroy());
    this.#h2 = createH2Server(
      {
        maxSessionMemory: 10,
        maxHeaderListPairs: this.#limits.maxHeaders,
        // Abusive peers (rapid reset, floods of invalid frames or refused streams) lose their own
        // session; Node closes it, other clients are not affected.
        maxSessionInvalidFrames: 100,
        maxSessionRejectedStreams: 100,
        settings: { maxConcurrentStreams: this.#limits.maxConcurrentStreams, maxHeaderListSize: this.#limits.maxHeaderBytes },
      },
      handler,
    );
    this.#h2.on('session', (session: ServerHttp2Session) => {
      this.#sessions.add(session);
      session.setTimeout(this.#limits.idleTimeoutMs, () => session.close());
      session.once('close', () => this.#sessions.delete(session));
    });
    this.#redirect = createHttpServer({ maxHeaderSize: 8 * 1024, headersTimeout: 5_000, requestTimeout: 10_000, connectionsCheckingInterval: 1_000 }, (req, res) => this.#onPlainHttp(req, res));
  }

  async listen(https: { host: string; port: number }, http?: { host: string; port: number }): Promise<{ https: AddressInfo; http?: AddressInfo }> {
    const tls = await listenOn(this.#tls, https.host, https.port);
    this.#httpsPort = tls.port;
    const plain = http ? await listenOn(this.#redirect, http.host, http.port) : undefined;
    if (plain) this.#httpPort = plain.port;
    return { https: tls, ...(plain ? { http: plain } : {}) };
  }

  close(graceMs = 5_000): Promise<void> {
    this.#closing ??= (async () => {
      const drained = drainListener(this.#tls, this.#sockets, graceMs);
      if (this.#redirect.listening) {
        this.#redirect.closeAllConnections();
        this.#redirect.close();
      }
      this.#h1.closeIdleConnections();
      for (const s of this.#sessions) s.close();
      this.#h1.close();
      await drained;
    })();
    return this.#closing;
  }

  async #verifyClient(socket: TLSSocket, roots: readonly Certificate[]): Promise<{ subject: string; fingerprint: string } | Error> {
    const peer = socket.getPeerCertificate(true);
    if (!peer || !peer.raw) return new Error('no client certificate was presented');
    const chain: Certificate[] = [];
    const seen = new Set<string>();
    for (let c: typeof peer | undefined = peer; c && c.raw && !seen.has(c.fingerprint256); c = c.issuerCertificate as typeof peer | undefined) {
      seen.add(c.fingerprint256);
      chain.push(parseCertificate(c.raw));
      if (chain.length > 10) break;
    }
    const [leaf, ...intermediates] = chain;
    const r = await validatePath({ leaf, intermediates, roots: [...roots], at: new Date(this.#clock.now()), extendedKeyUsage: 'clientAuth' });
    if (!r.ok) return new Error(`client certificate refused (${r.reason}): ${r.detail}`);
    return { subject: leaf.subject, fingerprint: leaf.fingerprintSha256 };
  }

  #reply(res: Res, status: number, host: string, route: string, message: string, code?: WardErrorCode): void {
    this.#dp.metrics.requests.inc({ host, route, code: String(status) });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = `${message}\n`;
    // After a 413 the rest of the body is not worth reading: close instead of draining it.
    const close = status === 413 && 'shouldKeepAlive' in res ? { connection: 'close' } : {};
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), ...close, ...(code ? { 'x-ward-error': code } : {}) });
    res.end(body);
  }

  /** Plain HTTP: 308 to the same host and target on HTTPS (only hosts the routes know). */
  #onPlainHttp(req: IncomingMessage, res: ServerResponse): void {
    const host = hostOnly(req.headers.host);
    const routes = this.#dp.routes();
    // Hosts configured for plain HTTP are served on this listener (no TLS, so no SNI to agree with
    // and no client certificate); every other known host is redirected.
    if (host && this.#plainHosts.has(host)) return this.#onRequest(req, res, true);
    if (!host || !routes.hasHost(host)) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
      res.end('unknown host\n');
      return;
    }
    const n = normalizeRequest({ method: req.method, host, path: req.url, port: 80, protocol: 'http' });
    const target = n.ok ? forwardTarget(n.request) : '/';
    const port = this.#httpsPort === 443 ? '' : `:${this.#httpsPort}`;
    res.writeHead(308, { location: `https://${host}${port}${target}`, 'content-length': 0 });
    res.end();
  }

  #onRequest(req: Req, res: Res, plain = false): void {
    const socket = (req as IncomingMessage).socket as TLSSocket;
    const authority = (req.headers[':authority'] as string | undefined) ?? req.headers.host;
    const host = hostOnly(authority);
    const sni = typeof socket.servername === 'string' ? socket.servername.toLowerCase() : undefined;
    const routes = this.#dp.routes();
    const hostLabel = host && routes.hasHost(host) ? host : 'unknown';
    // SNI selected the certificate; Host selects the route. They must agree, or a client could use
    // a connection (and certificate, and client-certificate check) made for one host to reach
    // another — HTTP/2 connection reuse does exactly that across hosts sharing a certificate.
    if (!plain && (!host || !sni || host !== sni)) return this.#reply(res, 421, hostLabel, 'none', 'misdirected request: the TLS server name and the Host header differ');
    let clientCert: { subject: string; fingerprint: string } | undefined;
    if (!host) return this.#reply(res, 400, hostLabel, 'none', 'no Host header');
    if (this.#clientAuth.has(host)) {
      // A symbol property rather than a WeakMap: for HTTP/2, req.socket is a Proxy of the TLS socket.
      const v = (socket as unknown as Record<symbol, { subject: string; fingerprint: string } | Error | undefined>)[CLIENT_CERT];
      if (!v || v instanceof Error) {
        this.#log.info({ host, reason: v ? v.message : 'not verified' }, 'client certificate required');
        return this.#reply(res, 403, hostLabel, 'none', 'a valid client certificate is required for this host');
      }
      clientCert = v;
    }
    const method = req.method ?? 'GET';
    const n = normalizeRequest({ method, host, path: req.url, port: plain ? this.#httpPort : this.#httpsPort, protocol: 'http' });
    if (!n.ok) return this.#reply(res, 400, hostLabel, 'none', `bad request (${n.reason})`, 'WARD_PROXY_REQUEST_INVALID');
    const match = routes.match(host, n.request.path!);
    if (!match) return this.#reply(res, 404, hostLabel, 'none', routes.hasHost(host) ? 'no route for this path' : 'unknown host');
    const routeLabel = `${match.pathType} ${match.path || '(default)'}`;
    const [svcName, svcNs] = splitService(match.backend.service);
    const r = this.#dp.view().resolve(`${svcName}.${svcNs}`, match.backend.port);
    if (!r.ok) return this.#reply(res, 503, hostLabel, routeLabel, 'the route\'s service is not in the mesh', 'WARD_PROXY_UNKNOWN_SERVICE');
    const set = this.#dp.balancer(r.key);
    if (!set || set.size === 0) return this.#reply(res, 503, hostLabel, routeLabel, 'no endpoints', 'WARD_PROXY_NO_ENDPOINTS');
    const source = this.#dp.identity();
    if (!source) return this.#reply(res, 503, hostLabel, routeLabel, 'the ingress has no certificate yet', 'WARD_PROXY_IDENTITY_UNAVAILABLE');
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > this.#limits.maxBodyBytes) return this.#reply(res, 413, hostLabel, routeLabel, 'request body too large');
    const headers = endToEndHeaders(req.headers, STRIP_FROM_CLIENT);
    headers.host = authority ?? host;
    headers['x-forwarded-for'] = socket.remoteAddress ?? '';
    headers['x-forwarded-proto'] = plain ? 'http' : 'https';
    headers['x-forwarded-host'] = host;
    headers['x-request-id'] = randomUUID();
    // The verified external client, Envoy's XFCC style (the client's own copy was dropped above).
    if (clientCert) headers['x-forwarded-client-cert'] = `Hash=${clientCert.fingerprint.replaceAll(':', '').toLowerCase()};Subject=${JSON.stringify(clientCert.subject)}`;
    const body = hasBody(req);
    // Bodies are counted as they stream (chunked ones have no length up front): past the limit the
    // request is cut off and, if nothing was answered yet, answered 413.
    let source$: Req = req;
    if (body) {
      let seen = 0;
      const limit = this.#limits.maxBodyBytes;
      const counter = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          seen += chunk.length;
          if (seen > limit) return cb(new BodyTooLarge());
          cb(null, chunk);
        },
      });
      counter.once('error', () => {
        this.#reply(res, 413, hostLabel, routeLabel, 'request body too large');
        req.destroy();
      });
      req.pipe(counter);
      source$ = counter as unknown as Req;
    }
    sendToService(source$, res, {
      serviceKey: r.key,
      set,
      port: r.port,
      source,
      upstreams: this.#dp.upstreams,
      budget: this.#dp.budget,
      method,
      path: forwardTarget(n.request),
      headers,
      body,
      maxAttempts: this.#limits.maxAttempts,
      logger: this.#log,
      onStatus: (status) => this.#dp.metrics.requests.inc({ host: hostLabel, route: routeLabel, code: String(status) }),
      reject: (status, code, message) => this.#reply(res, status, hostLabel, routeLabel, message, code),
      done: () => undefined,
    });
  }
}

class BodyTooLarge extends Error {}

/** On a TLS socket of a host with client auth: its verified client certificate, or why not. */
const CLIENT_CERT = Symbol('ward.ingress.clientCertificate');

/** "Host:port" / "[v6]:port" → lowercase host without port or trailing dot; undefined when absent. */
export function hostOnly(authority: string | undefined): string | undefined {
  if (!authority) return undefined;
  let h = authority.toLowerCase();
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1) || undefined;
  const colon = h.lastIndexOf(':');
  if (colon !== -1) h = h.slice(0, colon);
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h || undefined;
}

function splitService(key: string): [string, string] {
  const dot = key.indexOf('.');
  return [key.slice(0, dot), key.slice(dot + 1)];
}

/** A bounded reason for a failed external handshake (metric label). */
function handshakeReason(err: Error & { code?: string }): string {
  const m = `${err.code ?? ''} ${err.message}`;
  if (/unsupported protocol|version/i.test(m)) return 'protocol-version';
  if (/no shared cipher|cipher/i.test(m)) return 'no-shared-cipher';
  if (/wrong version number|http request|unknown protocol/i.test(m)) return 'not-tls';
  if (/certificate|verify/i.test(m)) return 'bad-certificate';
  if (/servername|SNI|callback/i.test(m)) return 'unknown-server-name';
  if (/timeout|timed out/i.test(m)) return 'timeout';
  return 'other';
}
