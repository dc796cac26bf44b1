/**
 * ControlClient: the discovery client the node proxy and the ingress embed (core/protocol/discovery.ts
 * is the contract). It holds one stream to the pool, applies frames in order, validates each
 * version, ACKs or NACKs it, and reconnects with capped, fully jittered exponential backoff.
 *
 * Static stability (DESIGN.md §4): the last good state is never dropped. A disconnect, a refused
 * server, a rejected version or a protocol error leaves `state()` exactly where it was; the caller
 * keeps serving from it while the client converges in the background.
 *
 * Ordering: frames are handled one at a time, in stream order. The stream is read with
 * `for await`, so while a frame is being validated (validate may be async) no further bytes are
 * pulled from the socket: the server is pushed back by TCP instead of a queue growing here.
 * ACKs go out on other connections (the stream's own request is a long-lived GET), through a
 * single bounded queue drained one POST at a time, so the server sees them in version order.
 *
 * Time: every timer (connect/ACK timeout, idle watchdog, backoff) goes through the injected
 * `timers`, and idleness is measured on the injected clock, so tests drive all of it without sleeping.
 */
import { EventEmitter } from 'node:events';
import { Agent, request, type RequestOptions } from 'node:https';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { systemClock, type Clock } from '../clock.js';
import { WardError } from '../errors.js';
import { parseTrustDomain, SpiffeId } from '../identity/index.js';
import type { Logger } from '../logger.js';
import type { AuthorizationPolicy } from '../policy/index.js';
import {
  applyFrame,
  DISCOVERY_SERVER_PATH,
  HEARTBEAT_MS,
  MAX_FRAME_BYTES,
  parseFrame,
  type Ack,
  type Frame,
  type IngressRoute,
  type LocalWorkload,
  type ResourceKind,
  type ServiceEndpoints,
  type TrustBundleResource,
  type ViewState,
} from '../protocol/index.js';
import { meshClientOptions, type Credentials } from '../tls/index.js';

/** The value type of each resource kind (as the pool sends it; shape checks belong in `validate`). */
export interface ResourceValues {
  endpoints: ServiceEndpoints;
  policy: AuthorizationPolicy;
  route: IngressRoute;
  bundle: TrustBundleResource;
  workload: LocalWorkload;
}

/** setTimeout/clearTimeout, injectable so tests fire timers by hand. */
export interface Timers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

export const systemTimers: Timers = {
  set: (fn, ms) => {
    const t = setTimeout(fn, ms);
    // Background reconnection must not keep a process alive on its own; close() is the way out.
    t.unref();
    return t;
  },
  clear: (h) => clearTimeout(h as NodeJS.Timeout),
};

export const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 } as const;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
/** Queued ACKs beyond this are dropped, oldest first (the server counts a missing ACK as unacknowledged, nothing worse). */
export const MAX_PENDING_ACKS = 64;
/** Bytes of a non-200 answer's body kept for the log. */
const MAX_ERROR_BODY_BYTES = 1024;

export interface ControlClientOptions {
  /** https://host:port of the discovery pool. */
  url: string;
  trustDomain: string;
  /** Called at each connect (so a renewed certificate or bundle is used by the next stream). */
  credentials: () => Credentials;
  /** Throw (or reject) to refuse a version: it is NACKed with the error message and the previous state kept. */
  validate?: (next: ViewState, frame: Frame) => void | Promise<void>;
  logger: Logger;
  clock?: Clock;
  backoff?: { initialMs: number; maxMs: number };
  /** In [0, 1); the jitter source. */
  random?: () => number;
  timers?: Timers;
  /** Until the response headers of the stream (and until the 204 of an ACK). */
  connectTimeoutMs?: number;
  /** No bytes on the stream for this long → reconnect. Default 3 × HEARTBEAT_MS. */
  idleTimeoutMs?: number;
}

export interface ControlClientStatus {
  connected: boolean;
  /** Version of the state held (0: none yet). */
  version: number;
  /** Last version the server confirmed a positive ACK for (0: none). */
  ackedVersion: number;
  lastError: string | undefined;
  /** Connection attempts after the first. */
  reconnects: number;
}

export type StreamErrorReason =
  | 'connect' // TLS (including secure naming), TCP, timeout, credentials
  | 'status' // the server answered something else than 200 application/x-ndjson
  | 'protocol' // oversized or malformed frame
  | 'idle' // no bytes for idleTimeoutMs
  | 'resync' // a delta did not apply to the state held: a snapshot is needed
  | 'ended'; // the server ended the stream, or the connection broke once it was open

/** Why a stream ended. Branch on `reason`, not on the message. */
export class ControlStreamError extends Error {
  readonly reason: StreamErrorReason;
  constructor(reason: StreamErrorReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ControlStreamError';
    this.reason = reason;
  }
}

/**
 * `disconnected` follows every failed or ended attempt (also one that never got connected), then
 * `reconnecting` announces the backoff delay. No 'error' event: failures never throw at the caller.
 */
export interface ControlClientEvents {
  connected: [];
  update: [state: ViewState, frame: Frame];
  rejected: [frame: Frame, error: Error];
  disconnected: [error: ControlStreamError];
  reconnecting: [info: { attempt: number; delayMs: number }];
}

export class ControlClient extends EventEmitter<ControlClientEvents> {
  readonly #url: URL;
  readonly #serverId: SpiffeId;
  readonly #trustDomain: string;
  readonly #credentials: () => Credentials;
  readonly #validate: ControlClientOptions['validate'];
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #random: () => number;
  readonly #timers: Timers;
  readonly #connectTimeoutMs: number;
  readonly #idleTimeoutMs: number;
  readonly #agent = new Agent({ keepAlive: true, maxCachedSessions: 0 });
  /** Aborts every in-flight request (stream and ACKs) on close(). */
  readonly #abort = new AbortController();
  /** Every armed timer, so close() can clear them all. */
  readonly #armed = new Set<unknown>();

  #state: ViewState | undefined;
  /** False after a delta failed to apply: the next stream asks for a snapshot. */
  #resume = true;
  #connected = false;
  #ackedVersion = 0;
  #lastError: string | undefined;
  #attempts = 0;
  /** Consecutive failures since the last adopted frame; the backoff exponent. */
  #failures = 0;
  #started = false;
  #closed = false;
  #closing: Promise<void> | undefined;
  #running: Promise<void> | undefined;
  #stream: ClientRequest | undefined;
  /** TLS options of the current stream; its ACKs use the same credentials. */
  #streamTls: RequestOptions | undefined;

  #acks: { ack: Ack; tls: RequestOptions }[] = [];
  #acking: Promise<void> | undefined;

  constructor(o: ControlClientOptions) {
    super();
    let url: URL;
    try {
      url = new URL(o.url);
    } catch {
      throw new WardError('WARD_CONFIG_INVALID', `control client url ${JSON.stringify(o.url)} is not a URL`);
    }
    if (url.protocol !== 'https:') throw new WardError('WARD_CONFIG_INVALID', `control client url ${JSON.stringify(o.url)} must be https://host:port`);
    this.#url = url;
    this.#trustDomain = parseTrustDomain(o.trustDomain);
    this.#serverId = SpiffeId.parse(`spiffe://${this.#trustDomain}${DISCOVERY_SERVER_PATH}`);
    this.#credentials = o.credentials;
    this.#validate = o.validate;
    this.#log = o.logger.child({ component: 'control.client' });
    this.#clock = o.clock ?? systemClock;
    this.#backoff = o.backoff ?? DEFAULT_BACKOFF;
    if (!(this.#backoff.initialMs > 0) || !(this.#backoff.maxMs >= this.#backoff.initialMs)) {
      throw new WardError('WARD_CONFIG_INVALID', `control client backoff needs 0 < initialMs <= maxMs (got ${this.#backoff.initialMs}, ${this.#backoff.maxMs})`);
    }
    this.#random = o.random ?? Math.random;
    this.#timers = o.timers ?? systemTimers;
    this.#connectTimeoutMs = positive('connectTimeoutMs', o.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    this.#idleTimeoutMs = positive('idleTimeoutMs', o.idleTimeoutMs ?? 3 * HEARTBEAT_MS);
  }

  /** Opens the stream; returns at once (progress is reported by events and status()). */
  start(): void {
    if (this.#closed) throw new Error('BUG: ControlClient.start() after close()');
    if (this.#started) return;
    this.#started = true;
    this.#run();
  }

  /** The last good state (kept across disconnects), or undefined before the first snapshot. */
  state(): ViewState | undefined {
    return this.#state;
  }

  status(): ControlClientStatus {
    return {
      connected: this.#connected,
      version: this.#state?.version ?? 0,
      ackedVersion: this.#ackedVersion,
      lastError: this.#lastError,
      reconnects: Math.max(0, this.#attempts - 1),
    };
  }

  /** The values of one kind in the state held (empty before the first snapshot). */
  resources<K extends ResourceKind>(kind: K): ResourceValues[K][] {
    const out: ResourceValues[K][] = [];
    if (!this.#state) return out;
    for (const r of this.#state.resources.values()) if (r.kind === kind) out.push(r.value as ResourceValues[K]);
    return out;
  }

  /** One resource's value by kind and key, or undefined. */
  resource<K extends ResourceKind>(kind: K, key: string): ResourceValues[K] | undefined {
    return this.#state?.resources.get(`${kind} ${key}`)?.value as ResourceValues[K] | undefined;
  }

  /** Stops everything: the stream, queued and in-flight ACKs, every timer. Idempotent; the state stays readable. */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    for (const t of this.#armed) this.#timers.clear(t);
    this.#armed.clear();
    this.#acks = [];
    this.#abort.abort();
    this.#stream?.destroy();
    this.#agent.destroy();
    this.#connected = false;
    this.#closing = Promise.all([this.#running, this.#acking]).then(() => undefined);
    return this.#closing;
  }

  // --- timers -----------------------------------------------------------------------------------

  #arm(fn: () => void, ms: number): unknown {
    const handle: unknown = this.#timers.set(() => {
      this.#armed.delete(handle);
      fn();
    }, ms);
    this.#armed.add(handle);
    return handle;
  }

  #disarm(handle: unknown): void {
    if (handle === undefined || !this.#armed.delete(handle)) return;
    this.#timers.clear(handle);
  }

  // --- the connection loop ----------------------------------------------------------------------

  #run(): void {
    this.#running = this.#connectOnce().catch((err: unknown) => {
      // #connectOnce reports every failure itself; reaching here is a bug in this file.
      this.#log.error({ err }, 'BUG: control client loop failed');
    });
  }

  async #connectOnce(): Promise<void> {
    this.#attempts++;
    let failure: ControlStreamError;
    try {
      await this.#openStream();
      failure = new ControlStreamError('ended', 'the discovery server ended the stream');
    } catch (err) {
      failure = err instanceof ControlStreamError ? err : new ControlStreamError('connect', (err as Error)?.message ?? String(err), { cause: err });
    } finally {
      this.#connected = false;
      this.#stream = undefined;
    }
    if (this.#closed) return;
    this.#lastError = failure.message;
    this.#failures++;
    this.#log.warn({ reason: failure.reason, err: failure.message, version: this.#state?.version ?? 0 }, 'discovery stream lost; keeping the last state');
    this.emit('disconnected', failure);
    if (this.#closed) return; // a listener may close
    // Full jitter (AWS architecture blog): uniform in [0, min(max, initial·2^(n-1))], so a pool
    // restart does not bring every proxy back at the same instant.
    const ceiling = Math.min(this.#backoff.maxMs, this.#backoff.initialMs * 2 ** Math.min(this.#failures - 1, 30));
    const delayMs = Math.floor(this.#random() * ceiling);
    this.emit('reconnecting', { attempt: this.#attempts + 1, delayMs });
    if (this.#closed) return;
    this.#arm(() => {
      if (!this.#closed) this.#run();
    }, delayMs);
  }

  /** One stream: resolves when the server ends it, throws ControlStreamError otherwise. */
  async #openStream(): Promise<void> {
    const creds = this.#credentials();
    if (creds.bundle.trustDomain !== this.#trustDomain) {
      throw new ControlStreamError('connect', `credentials carry a bundle for ${creds.bundle.trustDomain}, not ${this.#trustDomain}`);
    }
    const tls = meshClientOptions({ bundle: creds.bundle, expectedId: this.#serverId, creds }) as RequestOptions;
    this.#streamTls = tls;
    const resume = this.#resume && this.#state ? this.#state.version : 0;
    const path = resume > 0 ? `/v1/stream?resume=${resume}` : '/v1/stream';
    const req = request({
      ...tls,
      host: this.#url.hostname.replace(/^\[|\]$/g, ''),
      port: this.#url.port || 443,
      method: 'GET',
      path,
      headers: { accept: 'application/x-ndjson' },
      agent: this.#agent,
      signal: this.#abort.signal,
    });
    this.#stream = req;
    this.#log.debug({ path }, 'opening discovery stream');

    // Why this side destroyed the request: the stream then errors with a generic "aborted", so the
    // real reason is kept here.
    let abortReason: ControlStreamError | undefined;
    const abort = (e: ControlStreamError): void => {
      abortReason ??= e;
      req.destroy(e);
    };
    let res: IncomingMessage;
    const connectTimer = this.#arm(() => abort(new ControlStreamError('connect', `no answer from the discovery server within ${this.#connectTimeoutMs} ms`)), this.#connectTimeoutMs);
    try {
      res = await new Promise<IncomingMessage>((resolve, reject) => {
        req.once('response', resolve);
        req.once('error', reject);
        req.end();
      });
    } catch (err) {
      throw abortReason ?? asStreamError('connect', err);
    } finally {
      this.#disarm(connectTimer);
    }
    // Errors after the response surface through `res`; keep the request's from being unhandled.
    req.on('error', () => undefined);

    let lastByteAt = this.#clock.now();
    let idleTimer: unknown;
    const watchIdle = (ms: number): void => {
      idleTimer = this.#arm(() => {
        const quiet = this.#clock.now() - lastByteAt;
        if (quiet >= this.#idleTimeoutMs) abort(new ControlStreamError('idle', `no frame or heartbeat for ${quiet} ms`));
        else watchIdle(this.#idleTimeoutMs - quiet);
      }, ms);
    };

    try {
      const type = res.headers['content-type'] ?? '';
      if (res.statusCode !== 200 || !/^application\/x-ndjson\b/i.test(type)) {
        const body = await readSome(res, MAX_ERROR_BODY_BYTES).catch(() => '');
        throw new ControlStreamError('status', `discovery server answered ${res.statusCode} ${type}: ${body}`);
      }
      this.#connected = true;
      this.emit('connected');
      watchIdle(this.#idleTimeoutMs);

      // Bounded line assembly: bytes of the current (incomplete) line, never more than MAX_FRAME_BYTES.
      let parts: Buffer[] = [];
      let partsLength = 0;
      for await (const chunk of res as AsyncIterable<Buffer>) {
        lastByteAt = this.#clock.now();
        let start = 0;
        for (let nl = chunk.indexOf(0x0a, start); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
          const tail = chunk.subarray(start, nl);
          if (partsLength + tail.length > MAX_FRAME_BYTES) throw new ControlStreamError('protocol', `frame longer than ${MAX_FRAME_BYTES} bytes`);
          const line = partsLength === 0 ? tail : Buffer.concat([...parts, tail]);
          parts = [];
          partsLength = 0;
          start = nl + 1;
          await this.#onLine(line);
          if (this.#closed) return;
        }
        if (start < chunk.length) {
          const rest = chunk.subarray(start);
          partsLength += rest.length;
          if (partsLength > MAX_FRAME_BYTES) throw new ControlStreamError('protocol', `frame longer than ${MAX_FRAME_BYTES} bytes`);
          parts.push(rest);
        }
      }
    } catch (err) {
      throw abortReason ?? asStreamError('ended', err);
    } finally {
      this.#disarm(idleTimer);
      // Never hand a socket with a half-read response back to the pool.
      req.destroy();
    }
  }

  async #onLine(bytes: Buffer): Promise<void> {
    let text = bytes.toString('utf8');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    if (text.trim() === '') return;
    let frame: Frame;
    try {
      frame = parseFrame(text);
    } catch (err) {
      throw new ControlStreamError('protocol', `malformed frame: ${(err as Error).message}`, { cause: err });
    }
    if (frame.type === 'heartbeat') return; // it has already fed the idle watchdog

    let next: ViewState;
    try {
      next = applyFrame(this.#state, frame);
    } catch (err) {
      // The delta does not fit what we hold: refuse it and start over from a snapshot (contract).
      this.#reject(frame, err as Error);
      this.#resume = false;
      throw new ControlStreamError('resync', (err as Error).message, { cause: err });
    }
    if (this.#validate) {
      try {
        await this.#validate(next, frame);
      } catch (err) {
        if (this.#closed) return;
        this.#reject(frame, err instanceof Error ? err : new Error(String(err)));
        return;
      }
      if (this.#closed) return;
    }
    this.#state = next;
    this.#resume = true;
    this.#failures = 0;
    this.#log.debug({ version: next.version, type: frame.type, resources: next.resources.size }, 'discovery version adopted');
    try {
      this.emit('update', next, frame);
    } catch (err) {
      // The state is adopted either way; a throwing listener is the caller's bug, not the server's.
      this.#log.error({ err, version: next.version }, 'a control client update listener threw');
    }
    this.#sendAck({ version: next.version, ok: true });
  }

  #reject(frame: Frame, err: Error): void {
    this.#log.warn({ version: frame.version, type: frame.type, err: err.message }, 'discovery version rejected; keeping the previous state');
    try {
      this.emit('rejected', frame, err);
    } catch (listenerErr) {
      this.#log.error({ err: listenerErr, version: frame.version }, 'a control client rejected listener threw');
    }
    this.#sendAck({ version: frame.version, ok: false, error: err.message });
  }

  // --- ACKs -------------------------------------------------------------------------------------

  #sendAck(ack: Ack): void {
    if (this.#closed) return;
    // The ACK goes out with the credentials of the stream that carried the version.
    const tls = this.#streamTls;
    if (!tls) throw new Error('BUG: a frame was handled without a stream');
    this.#acks.push({ ack, tls });
    if (this.#acks.length > MAX_PENDING_ACKS) {
      const dropped = this.#acks.shift();
      this.#log.warn({ version: dropped?.ack.version }, 'ACK queue full; dropping the oldest');
    }
    this.#acking ??= this.#drainAcks().finally(() => {
      this.#acking = undefined;
    });
  }

  async #drainAcks(): Promise<void> {
    for (let item = this.#acks.shift(); item && !this.#closed; item = this.#acks.shift()) {
      try {
        await this.#postAck(item.ack, item.tls);
        if (item.ack.ok && item.ack.version > this.#ackedVersion) this.#ackedVersion = item.ack.version;
      } catch (err) {
        if (this.#closed) return;
        this.#log.warn({ version: item.ack.version, ok: item.ack.ok, err: (err as Error).message }, 'ACK not delivered');
      }
    }
  }

  #postAck(ack: Ack, tls: RequestOptions): Promise<void> {
    const body = JSON.stringify(ack);
    return new Promise<void>((resolve, reject) => {
      const req = request({
        ...tls,
        host: this.#url.hostname.replace(/^\[|\]$/g, ''),
        port: this.#url.port || 443,
        method: 'POST',
        path: '/v1/ack',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        agent: this.#agent,
        signal: this.#abort.signal,
      });
      const timer = this.#arm(() => req.destroy(new Error(`no answer to the ACK within ${this.#connectTimeoutMs} ms`)), this.#connectTimeoutMs);
      req.once('error', (err) => {
        this.#disarm(timer);
        reject(err);
      });
      req.once('response', (res) => {
        res.on('error', () => undefined);
        res.resume();
        res.once('end', () => {
          this.#disarm(timer);
          if (res.statusCode === 204 || res.statusCode === 200) resolve();
          else reject(new Error(`discovery server answered the ACK with ${res.statusCode}`));
        });
      });
      req.end(body);
    });
  }
}

function positive(name: string, v: number): number {
  if (!Number.isFinite(v) || v <= 0) throw new WardError('WARD_CONFIG_INVALID', `control client ${name} must be a positive number of milliseconds (got ${v})`);
  return v;
}

function asStreamError(reason: StreamErrorReason, err: unknown): ControlStreamError {
  if (err instanceof ControlStreamError) return err;
  return new ControlStreamError(reason, (err as Error)?.message ?? String(err), { cause: err });
}

async function readSome(res: IncomingMessage, max: number): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (n < max) parts.push(chunk.subarray(0, max - n));
    n += chunk.length;
    if (n >= max) break;
  }
  return Buffer.concat(parts).toString('utf8').replace(/\s+/g, ' ').trim();
}
