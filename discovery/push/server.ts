/**
 * The discovery server: pushes MeshState to node proxies and the ingress over the protocol of
 * core/protocol/discovery.ts (GET /v1/stream NDJSON, POST /v1/ack).
 *
 * Transport: HTTPS, TLS 1.3, client certificate required (meshServerOptions with
 * requireClientCert), presenting spiffe://TD/ward/discovery. Every request is authenticated with
 * peerIdentity(); only node proxies of nodes declared in the model and the ingress
 * (spiffe://TD/ns/ward-system/sa/ward-ingress) are served, anyone else gets 403 (logged, counted).
 *
 * Health. POST /v1/health (same authentication) hands the client's HealthReport to the
 * HealthAggregator (health.ts): a report speaking for a workload or certificate not declared on the
 * sender's node is refused whole with 403, logged at warn and counted
 * ward_discovery_refused_total{reason="foreign-workload"}. meshStatus() joins the aggregate with the
 * streams' status for the admin endpoint.
 *
 * Slow clients. Frames are never queued per client. A session remembers the version it last sent
 * (what the client holds); when the socket refuses more (write() === false) the session waits for
 * 'drain' and then sends ONE delta coalesced from that version to the current one (or a snapshot
 * when the history no longer covers it). So a stalled client costs O(1) memory plus at most the one
 * frame already handed to the socket, and never delays anyone else.
 *
 * Ordering: a delta's base is always the version of the previous frame on the same stream; a delta
 * empty for the client's view is not sent (the base stays), as the contract requires.
 */
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Clock } from '../../core/clock.js';
import type { Logger } from '../../core/logger.js';
import { SpiffeId } from '../../core/identity/index.js';
import type { WardErrorCode } from '../../core/errors.js';
import { BodyTooLargeError, readBody } from '../../core/http-body.js';
import { meshServerOptions, peerIdentity, type Credentials } from '../../core/tls/index.js';
import { DISCOVERY_PROTOCOL, DISCOVERY_SERVER_PATH, HEARTBEAT_MS, MAX_HEALTH_REPORT_BYTES, type Frame } from '../../core/protocol/index.js';
import { isNodeMember } from '../model.js';
import type { MeshState, View } from './state.js';
import { HealthAggregator, type MeshStatus } from './health.js';

/** The ingress's identity path under the trust domain. */
export const INGRESS_PATH = '/ns/ward-system/sa/ward-ingress';

export interface DiscoveryServerLimits {
  maxAckBytes: number;
  /** Largest POST /v1/health body (413 beyond). */
  maxHealthBytes: number;
  maxHeaderBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  maxConnections: number;
  /** How often an idle stream gets a heartbeat. */
  heartbeatMs: number;
  /** How long close() waits for connections to end before destroying them. */
  closeGraceMs: number;
}

export const DEFAULT_DISCOVERY_LIMITS: DiscoveryServerLimits = {
  maxAckBytes: 16 * 1024,
  maxHealthBytes: MAX_HEALTH_REPORT_BYTES,
  maxHeaderBytes: 16 * 1024,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  maxConnections: 8192,
  heartbeatMs: HEARTBEAT_MS,
  closeGraceMs: 2_000,
};

export interface DiscoveryServerOptions {
  state: MeshState;
  credentials: Credentials;
  clock: Clock;
  logger: Logger;
  registry: Registry;
  limits?: Partial<DiscoveryServerLimits>;
  /** Health report freshness (see health.ts): defaults 60 s stale, 10 min retained. */
  health?: { staleAfterMs?: number; retainMs?: number };
}

export interface ClientStatus {
  identity: string;
  node?: string;
  view: 'node' | 'ingress';
  /** Version of the last frame sent (what the client holds if it applied it); 0 before the first. */
  sentVersion: number;
  /** Last version the client ACKed (0 for none). */
  ackedVersion: number;
  nacks: number;
  /** True while the socket is full and the session waits for 'drain'. */
  stalled: boolean;
  /** Bytes handed to the socket and not yet sent: at most about one frame, never a queue. */
  bufferedBytes: number;
}

const WRITE_CHUNK = 64 * 1024;

/** One open stream. Holds only numbers and the response: never a queue of frames. */
interface Session {
  readonly id: SpiffeId;
  readonly view: View;
  readonly res: ServerResponse;
  /** Version of the last frame written (the delta base for the next); undefined before the first. */
  sent: number | undefined;
  /**
   * The unsent remainder of the frame being written, handed to the socket WRITE_CHUNK bytes at a
   * time (waiting for 'drain' in between): one big write would grow the connection's TLS buffers to
   * the frame's size and keep them that size for the life of the stream (a snapshot of a large mesh
   * is megabytes, times every client). At most one frame, so still no queue.
   */
  rest?: Buffer;
  /** The client certificate's NotAfter (ms): OpenSSL checked it at the handshake only, so a stream
   * outliving it is ended (the client reconnects with its renewed certificate). */
  readonly certNotAfter: number;
  /** Versions up to this one were found empty for this view since `sent` (saves recomputation). */
  checked: number;
  /** Asked-for resume version, used for the first frame only. */
  resume: number;
  stalled: boolean;
  lastWriteAt: number;
  ended: boolean;
}

/** ACK bookkeeping per client identity (bounded: dropped with the identity's last session). */
interface AckRecord {
  acked: number;
  nacks: number;
}

type Refusal = 'no_certificate' | 'bad_certificate' | 'forbidden' | 'tls' | 'foreign-workload';

export class DiscoveryServer {
  readonly #o: DiscoveryServerOptions;
  readonly #limits: DiscoveryServerLimits;
  readonly #log: Logger;
  readonly #sessions = new Set<Session>();
  readonly #acks = new Map<string, AckRecord>();
  readonly #sockets = new Set<Socket>();
  #credentials: Credentials;
  #server?: HttpsServer;
  #unsubscribe?: () => void;
  #heartbeat?: NodeJS.Timeout;
  #closing?: Promise<void>;
  readonly #connected: Gauge;
  readonly #pushes: Counter<'type'>;
  readonly #nacks: Counter;
  readonly #refused: Counter<'reason'>;
  readonly #versionGauge: Gauge;
  readonly #health: HealthAggregator;

  constructor(o: DiscoveryServerOptions) {
    this.#o = o;
    this.#limits = { ...DEFAULT_DISCOVERY_LIMITS, ...o.limits };
    this.#log = o.logger.child({ component: 'discovery.push' });
    this.#credentials = o.credentials;
    const registers = [o.registry];
    this.#connected = new Gauge({ name: 'ward_discovery_connected_clients', help: 'Open discovery streams.', registers });
    this.#pushes = new Counter({ name: 'ward_discovery_pushes_total', help: 'Frames pushed to discovery clients, by frame type.', labelNames: ['type'], registers });
    this.#nacks = new Counter({ name: 'ward_discovery_nacks_total', help: 'Versions rejected (NACKed) by discovery clients.', registers });
    this.#refused = new Counter({ name: 'ward_discovery_refused_total', help: 'Discovery requests or connections refused, by reason.', labelNames: ['reason'], registers });
    this.#versionGauge = new Gauge({ name: 'ward_discovery_version', help: 'Current mesh-wide discovery version.', registers });
    this.#versionGauge.set(o.state.version);
    this.#health = new HealthAggregator({ clock: o.clock, registry: o.registry, ...o.health });
  }

  /** The SPIFFE ID the discovery server presents; clients pin it (secure naming). */
  static serverId(trustDomain: string): SpiffeId {
    return SpiffeId.parse(`spiffe://${trustDomain}${DISCOVERY_SERVER_PATH}`);
  }

  get trustDomain(): string {
    return this.#credentials.bundle.trustDomain;
  }

  async listen(o: { host: string; port: number }): Promise<{ port: number }> {
    if (this.#closing) throw new Error('discovery server is closed');
    if (this.#server) throw new Error('BUG: listen() called twice');
    const server = createHttpsServer(
      {
        ...meshServerOptions(this.#credentials, { requireClientCert: true }),
        maxHeaderSize: this.#limits.maxHeaderBytes,
        headersTimeout: this.#limits.headersTimeoutMs,
        // Applies to receiving the request only: a stream's long response is not cut off by it.
        requestTimeout: this.#limits.requestTimeoutMs,
        connectionsCheckingInterval: Math.max(50, Math.min(1_000, this.#limits.headersTimeoutMs / 4)),
        // Slow-loris before any HTTP: a handshake must finish in time. (A timer on the raw socket
        // would outlive the handshake — the TLS socket is another object — and kill idle streams.)
        handshakeTimeout: this.#limits.headersTimeoutMs,
      },
      (req, res) => this.#handle(req, res),
    );
    server.maxConnections = this.#limits.maxConnections;
    server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
    server.on('tlsClientError', (err: NodeJS.ErrnoException, s: TLSSocket) => {
      // Without a certificate, or with one the bundle does not anchor, OpenSSL refuses the handshake.
      this.#refused.inc({ reason: 'tls' satisfies Refusal });
      this.#log.info({ err: err.message, code: err.code, remote: s.remoteAddress }, 'discovery TLS handshake refused');
      s.destroy();
    });
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      this.#log.debug({ err: err.message, code: err.code }, 'discovery HTTP client error; dropping the connection');
      socket.destroy();
    });
    this.#server = server;
    server.listen(o.port, o.host);
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    this.#unsubscribe = this.#o.state.subscribe((v) => this.#onVersion(v));
    this.#heartbeat = setInterval(() => this.#heartbeatTick(), Math.max(10, Math.floor(this.#limits.heartbeatMs / 3)));
    this.#heartbeat.unref();
    const addr = server.address();
    return { port: typeof addr === 'object' && addr ? addr.port : o.port };
  }

  /** Swaps the presented certificate / trusted bundle; open streams keep their context. */
  setCredentials(creds: Credentials): void {
    this.#credentials = creds;
    this.#server?.setSecureContext(meshServerOptions(creds, { requireClientCert: true }));
  }

  /** Connected clients, for the admin status. */
  status(): { version: number; clients: ClientStatus[] } {
    const clients = [...this.#sessions].map((s) => {
      const ack = this.#acks.get(s.id.toString());
      return {
        identity: s.id.toString(),
        ...(s.view.kind === 'node' ? { node: s.view.node } : {}),
        view: s.view.kind,
        sentVersion: s.sent ?? 0,
        ackedVersion: ack?.acked ?? 0,
        nacks: ack?.nacks ?? 0,
        stalled: s.stalled,
        bufferedBytes: s.res.writableLength + (s.res.socket?.writableLength ?? 0),
      };
    });
    return { version: this.#o.state.version, clients };
  }

  /**
   * The mesh status for the admin endpoint: connected clients and their ACKed versions, nodes
   * with the certificates their proxies hold, services' endpoints by health, workloads.
   */
  meshStatus(): MeshStatus {
    return this.#health.meshStatus(this.#o.state.model, this.status());
  }

  /** Ends every stream and stops listening. Idempotent. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = (async () => {
      this.#unsubscribe?.();
      if (this.#heartbeat) clearInterval(this.#heartbeat);
      for (const s of [...this.#sessions]) this.#end(s);
      const server = this.#server;
      if (!server) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timer = setTimeout(() => {
        server.closeAllConnections();
        for (const s of this.#sockets) s.destroy();
      }, this.#limits.closeGraceMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
    })();
    return this.#closing;
  }

  // ---- requests -----------------------------------------------------------------------------

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?', 1)[0];
    const remote = req.socket.remoteAddress ?? 'unknown';
    try {
      if (req.method === 'GET' && path === '/v1/stream') return this.#stream(req, res, remote);
      if (req.method === 'POST' && path === '/v1/ack') return void this.#ack(req, res, remote).catch((err) => this.#fail(res, 500, 'WARD_DISCOVERY_INTERNAL', err));
      if (req.method === 'POST' && path === '/v1/health') return void this.#healthReport(req, res, remote).catch((err) => this.#fail(res, 500, 'WARD_DISCOVERY_INTERNAL', err));
      req.resume();
      return this.#reply(res, 404, 'WARD_DISCOVERY_NOT_FOUND', 'no such route');
    } catch (err) {
      this.#fail(res, 500, 'WARD_DISCOVERY_INTERNAL', err);
    }
  }

  /** The caller's identity and view, or undefined after answering the refusal. */
  #authorize(req: IncomingMessage, res: ServerResponse, remote: string): { id: SpiffeId; view: View } | undefined {
    let id: SpiffeId | undefined;
    let reason: Refusal | undefined;
    try {
      id = peerIdentity(req.socket as TLSSocket, { trustDomain: this.trustDomain });
      if (!id) reason = 'no_certificate';
    } catch (err) {
      reason = 'bad_certificate';
      this.#log.info({ remote, err: (err as Error).message }, 'discovery client certificate refused');
    }
    if (id) {
      const node = id.nodeName;
      if (node !== undefined && isNodeMember(this.#o.state.model, node)) return { id, view: { kind: 'node', node } };
      if (id.path === INGRESS_PATH) return { id, view: { kind: 'ingress' } };
      reason = 'forbidden';
    }
    this.#refused.inc({ reason: reason! });
    this.#log.warn({ remote, identity: id?.toString(), reason }, 'discovery client refused');
    req.resume();
    res.setHeader('connection', 'close');
    if (reason === 'forbidden') this.#reply(res, 403, 'WARD_DISCOVERY_FORBIDDEN', 'this identity may not use discovery');
    else this.#reply(res, 401, 'WARD_DISCOVERY_UNAUTHENTICATED', 'a valid client certificate is required');
    return undefined;
  }

  #stream(req: IncomingMessage, res: ServerResponse, remote: string): void {
    const who = this.#authorize(req, res, remote);
    if (!who) return;
    const q = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
    const r = Number(q.get('resume') ?? '0');
    const resume = Number.isSafeInteger(r) && r > 0 ? r : 0;
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store', 'x-ward-protocol': DISCOVERY_PROTOCOL });
    res.flushHeaders();
    const certNotAfter = Date.parse((req.socket as TLSSocket).getPeerCertificate(false).valid_to);
    const session: Session = { id: who.id, view: who.view, res, sent: undefined, rest: undefined, certNotAfter, checked: 0, resume, stalled: false, lastWriteAt: this.#o.clock.now(), ended: false };
    this.#sessions.add(session);
    this.#connected.set(this.#sessions.size);
    const key = who.id.toString();
    if (!this.#acks.has(key)) this.#acks.set(key, { acked: 0, nacks: 0 });
    res.on('drain', () => {
      session.stalled = false;
      if (this.#writeRest(session)) this.#push(session);
    });
    res.on('close', () => this.#closed(session));
    this.#log.info({ identity: key, remote, resume }, 'discovery client connected');
    // Connecting publishes the node's endpoints; the resulting version reaches every client, this
    // one included (whose first frame is then the snapshot / resume delta computed in #push).
    if (who.view.kind === 'node') this.#o.state.nodeConnected(who.view.node);
    this.#push(session);
  }

  async #ack(req: IncomingMessage, res: ServerResponse, remote: string): Promise<void> {
    const who = this.#authorize(req, res, remote);
    if (!who) return;
    let body: unknown;
    try {
      const text = await readBody(req, this.#limits.maxAckBytes);
      body = JSON.parse(text);
    } catch (err) {
      res.setHeader('connection', 'close');
      req.resume();
      return this.#reply(res, 400, 'WARD_DISCOVERY_REQUEST_INVALID', `ack body is not valid: ${(err as Error).message}`);
    }
    const a = body as { version?: unknown; ok?: unknown; error?: unknown };
    if (typeof a !== 'object' || a === null || !Number.isSafeInteger(a.version) || (a.version as number) < 0 || typeof a.ok !== 'boolean' || (!a.ok && typeof a.error !== 'string')) {
      return this.#reply(res, 400, 'WARD_DISCOVERY_REQUEST_INVALID', 'ack must be {version, ok, error?}');
    }
    const key = who.id.toString();
    const rec = this.#acks.get(key);
    const version = a.version as number;
    if (a.ok) {
      if (rec && version > rec.acked) rec.acked = version;
      this.#log.debug({ identity: key, version }, 'discovery version ACKed');
    } else {
      if (rec) rec.nacks += 1;
      this.#nacks.inc();
      this.#log.warn({ identity: key, version, error: String(a.error).slice(0, 1024) }, 'discovery version rejected (NACK)');
    }
    res.writeHead(204);
    res.end();
  }

  async #healthReport(req: IncomingMessage, res: ServerResponse, remote: string): Promise<void> {
    const who = this.#authorize(req, res, remote);
    if (!who) return;
    const max = this.#limits.maxHealthBytes;
    let body: unknown;
    try {
      const declared = Number(req.headers['content-length'] ?? '0');
      if (declared > max) throw new BodyTooLargeError(max);
      body = JSON.parse(await readBody(req, max));
    } catch (err) {
      res.setHeader('connection', 'close');
      req.resume();
      if (err instanceof BodyTooLargeError) return this.#reply(res, 413, 'WARD_DISCOVERY_REQUEST_TOO_LARGE', err.message);
      return this.#reply(res, 400, 'WARD_DISCOVERY_REQUEST_INVALID', `health report is not valid JSON: ${(err as Error).message}`);
    }
    const key = who.id.toString();
    const node = who.view.kind === 'node' ? who.view.node : undefined;
    const verdict = this.#health.receive({ identity: key, ...(node !== undefined ? { node } : {}) }, body, this.#o.state.model);
    if (verdict.status === 403) {
      this.#refused.inc({ reason: verdict.reason satisfies Refusal });
      this.#log.warn({ identity: key, remote, reason: verdict.reason, detail: verdict.message }, 'health report refused: it speaks for something outside the client\'s node');
      return this.#reply(res, 403, 'WARD_DISCOVERY_FORBIDDEN', verdict.message);
    }
    if (verdict.status === 400) return this.#reply(res, 400, 'WARD_DISCOVERY_REQUEST_INVALID', verdict.message);
    this.#log.debug({ identity: key }, 'health report accepted');
    res.writeHead(204);
    res.end();
  }

  // ---- pushing ------------------------------------------------------------------------------

  #onVersion(v: number): void {
    this.#versionGauge.set(v);
    for (const s of [...this.#sessions]) this.#push(s);
  }

  /**
   * Brings one session up to date with at most one frame. Cost: the ids touched since the session's
   * last check (not the whole history, not the mesh), except for a snapshot.
   */
  #push(s: Session): void {
    if (s.ended || s.stalled) return;
    const state = this.#o.state;
    if (s.view.kind === 'node' && !isNodeMember(state.model, s.view.node)) {
      this.#log.info({ identity: s.id.toString() }, 'node left the mesh; ending its discovery stream');
      return this.#end(s);
    }
    const current = state.version;
    let frame: Frame | undefined;
    if (s.sent === undefined) {
      const d = s.resume > 0 ? state.deltaSince(s.view, s.resume) : undefined;
      if (d) {
        s.sent = s.resume;
        s.checked = s.resume;
        if (d.upserts.length + d.removals.length > 0) frame = { type: 'delta', version: current, base: s.resume, ...d };
        else {
          // Nothing changed for this client since its resume point: a heartbeat confirms the stream.
          s.checked = current;
          return this.#write(s, { type: 'heartbeat', version: s.sent }, 'heartbeat');
        }
      } else {
        const snap = state.snapshot(s.view);
        frame = { type: 'snapshot', version: snap.version, resources: snap.resources };
      }
    } else {
      if (s.checked >= current) return;
      const d = state.deltaSince(s.view, s.checked);
      if (!d) {
        const snap = state.snapshot(s.view);
        frame = { type: 'snapshot', version: snap.version, resources: snap.resources };
      } else if (d.upserts.length + d.removals.length === 0) {
        s.checked = current;
        return;
      } else {
        frame = { type: 'delta', version: current, base: s.sent, ...d };
      }
    }
    s.sent = current;
    s.checked = current;
    this.#write(s, frame, frame.type);
  }

  #write(s: Session, frame: Frame, type: Frame['type']): void {
    s.rest = Buffer.from(JSON.stringify(frame) + '\n', 'utf8');
    s.lastWriteAt = this.#o.clock.now();
    this.#pushes.inc({ type });
    this.#writeRest(s);
  }

  /**
   * Hands the frame's remainder to the socket until it is all written (true) or the socket is full
   * (false: 'drain' resumes here; nothing else is written meanwhile, and #push then coalesces).
   */
  #writeRest(s: Session): boolean {
    while (s.rest && !s.ended) {
      const chunk = s.rest.length > WRITE_CHUNK ? s.rest.subarray(0, WRITE_CHUNK) : s.rest;
      s.rest = s.rest.length > WRITE_CHUNK ? s.rest.subarray(WRITE_CHUNK) : undefined;
      if (!s.res.write(chunk)) {
        s.stalled = true;
        return false;
      }
    }
    return !s.ended;
  }

  #heartbeatTick(): void {
    const now = this.#o.clock.now();
    for (const s of [...this.#sessions]) {
      if (!s.ended && !(now <= s.certNotAfter)) {
        this.#log.info({ identity: s.id.toString() }, 'client certificate expired during the stream; ending it');
        this.#end(s);
        continue;
      }
      if (s.ended || s.stalled || s.sent === undefined) continue;
      if (now - s.lastWriteAt >= this.#limits.heartbeatMs) this.#write(s, { type: 'heartbeat', version: s.sent }, 'heartbeat');
    }
  }

  /** Sends idle heartbeats now (tests drive the heartbeat with their clock). */
  heartbeat(): void {
    this.#heartbeatTick();
  }

  #end(s: Session): void {
    if (s.ended) return;
    s.ended = true;
    s.res.end();
    this.#closed(s);
  }

  #closed(s: Session): void {
    if (!this.#sessions.delete(s)) return;
    s.ended = true;
    this.#connected.set(this.#sessions.size);
    const key = s.id.toString();
    if (![...this.#sessions].some((o) => o.id.toString() === key)) this.#acks.delete(key);
    if (s.view.kind === 'node') this.#o.state.nodeDisconnected(s.view.node);
    this.#log.info({ identity: key }, 'discovery client disconnected');
  }

  #reply(res: ServerResponse, status: number, code: WardErrorCode, message: string): void {
    if (res.headersSent) return void res.end();
    const text = JSON.stringify({ error: { code, message } }) + '\n';
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }

  #fail(res: ServerResponse, status: number, code: WardErrorCode, err: unknown): void {
    this.#log.error({ err }, 'discovery request failed');
    this.#reply(res, status, code, 'internal error');
  }
}

