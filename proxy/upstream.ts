/**
 * Connections from this node proxy to other nodes' inbound listeners: mutual TLS 1.3 with the
 * source workload's certificate, the destination workload named in SNI, and the destination's
 * identity checked (secure naming + X.509-SVID rules) before a byte of the request is sent.
 *
 * HTTP goes through one undici Pool per (source certificate, endpoint, SNI): connections are kept
 * alive and reused, so steady traffic pays no handshake per request. The pool key includes the
 * source certificate (the HeldIdentity object: a renewal or a new trust bundle makes a new one), so a renewed certificate gets fresh connections while the old pool
 * is closed gracefully (its in-flight requests finish; nothing is dropped). Every connection uses
 * the one SecureContext built for its certificate (no per-connection context: ~1.5× client CPU).
 *
 * No TLS session resumption: Node skips checkServerIdentity on a resumed session (core/tls).
 */
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { Pool } from './undici-pool.js';
import { SpiffeId } from '../core/identity/index.js';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { meshClientOptions } from '../core/tls/index.js';
import type { TrustBundle } from '../core/pki/index.js';
import type { BalancerEndpoint, FailureKind } from './balance.js';
import type { HeldIdentity } from './identity.js';
import { ALPN_HTTP, ALPN_TCP, sniFor } from './mesh-view.js';

export interface UpstreamLimits {
  connectTimeoutMs: number;
  /** Connections per (source, endpoint) pool. */
  connectionsPerEndpoint: number;
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxResponseHeaderBytes: number;
}

export const DEFAULT_UPSTREAM_LIMITS: UpstreamLimits = Object.freeze({
  connectTimeoutMs: 5_000,
  connectionsPerEndpoint: 256,
  headersTimeoutMs: 30_000,
  bodyTimeoutMs: 300_000,
  keepAliveTimeoutMs: 60_000,
  maxResponseHeaderBytes: 64 * 1024,
});

/** A failure before anything was sent to the endpoint: safe to retry on another one, whatever the method. */
export class ConnectFailure extends Error {
  readonly kind: Exclude<FailureKind, 'response'>;
  constructor(kind: Exclude<FailureKind, 'response'>, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConnectFailure';
    this.kind = kind;
  }
}

/** The failure class of a connection error (bounded set: it labels a metric). */
export function classifyConnectError(err: unknown): Exclude<FailureKind, 'response'> {
  const e = err as { code?: string; message?: string };
  if (e?.code === 'WARD_PKI_SVID_INVALID' || e?.code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'identity';
  const code = e?.code ?? '';
  if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || /CERT|SIGNATURE|ISSUER|SELF_SIGNED|UNABLE_TO/.test(code)) return 'tls';
  return 'connect';
}

interface PoolEntry {
  pool: Pool;
  /** The certificate + context the pool's connections use; a renewal or a new bundle makes a new one. */
  held: HeldIdentity;
  source: string;
}

export interface UpstreamOptions {
  trustDomain: string;
  bundle: () => TrustBundle;
  clock: Clock;
  limits?: Partial<UpstreamLimits>;
  logger: Logger;
  /** Each upstream connection attempt's outcome (metrics). */
  onConnect?: (result: 'ok' | Exclude<FailureKind, 'response'>) => void;
}

export class Upstreams {
  readonly #o: UpstreamOptions;
  readonly #limits: UpstreamLimits;
  readonly #log: Logger;
  readonly #pools = new Map<string, PoolEntry>();
  /** checkServerIdentity per expected identity, built once (meshClientOptions does the SVID checks). */
  readonly #checks = new Map<string, NonNullable<ReturnType<typeof meshClientOptions>['checkServerIdentity']>>();
  #checksBundle: TrustBundle | undefined;
  #closed = false;

  constructor(o: UpstreamOptions) {
    this.#o = o;
    this.#limits = { ...DEFAULT_UPSTREAM_LIMITS, ...o.limits };
    this.#log = o.logger.child({ component: 'proxy.upstream' });
  }

  /** The pool for HTTP from `source` to one workload's target port behind `ep`. */
  pool(source: HeldIdentity, ep: BalancerEndpoint, port: number): Pool {
    const sni = sniFor(ep.workload, port);
    const key = `${source.id} ${ep.address} ${sni} ${ep.identity}`;
    const cur = this.#pools.get(key);
    if (cur && cur.held === source) return cur.pool;
    if (cur) {
      // The source certificate was renewed (or rebuilt for a new bundle): new connections carry the
      // new one; the old pool
      // finishes what it has in flight and closes.
      void cur.pool.close().catch(() => undefined);
    }
    const { host, port: p } = splitAddress(ep.address);
    const pool = new Pool(`http://${host.includes(':') ? `[${host}]` : host}:${p}`, {
      connections: this.#limits.connectionsPerEndpoint,
      pipelining: 1,
      connectTimeout: this.#limits.connectTimeoutMs,
      headersTimeout: this.#limits.headersTimeoutMs,
      bodyTimeout: this.#limits.bodyTimeoutMs,
      keepAliveTimeout: this.#limits.keepAliveTimeoutMs,
      keepAliveMaxTimeout: this.#limits.keepAliveTimeoutMs,
      maxHeaderSize: this.#limits.maxResponseHeaderBytes,
      connect: (_opts, cb) => {
        this.#dial(source, ep, sni, ALPN_HTTP).then(
          (socket) => cb(null, socket),
          (err: unknown) => cb(err as Error, null),
        );
      },
    });
    this.#pools.set(key, { pool, held: source, source: source.id.toString() });
    return pool;
  }

  /** A raw TCP stream to one workload's target port behind `ep` (CONNECT), over mutual TLS. */
  tunnel(source: HeldIdentity, ep: BalancerEndpoint, port: number): Promise<TLSSocket> {
    return this.#dial(source, ep, sniFor(ep.workload, port), ALPN_TCP);
  }

  /** Closes the pools of a source identity that is gone (gracefully). */
  dropSource(identity: string): void {
    for (const [k, e] of this.#pools) {
      if (e.source === identity) {
        this.#pools.delete(k);
        void e.pool.close().catch(() => undefined);
      }
    }
  }

  /** Closes pools of endpoints no longer in `live` (addresses). */
  retainEndpoints(live: ReadonlySet<string>): void {
    for (const [k, e] of this.#pools) {
      const address = k.split(' ')[1];
      if (!live.has(address)) {
        this.#pools.delete(k);
        void e.pool.close().catch(() => undefined);
      }
    }
  }

  get poolCount(): number {
    return this.#pools.size;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((e) => e.pool.destroy().catch(() => undefined)));
  }

  #check(expected: string): NonNullable<ReturnType<typeof meshClientOptions>['checkServerIdentity']> {
    const bundle = this.#o.bundle();
    if (this.#checksBundle !== bundle) {
      this.#checks.clear();
      this.#checksBundle = bundle;
    }
    let fn = this.#checks.get(expected);
    if (!fn) {
      fn = meshClientOptions({ bundle, expectedId: SpiffeId.parse(expected) }).checkServerIdentity!;
      if (this.#checks.size > 4096) this.#checks.clear(); // bounded: identities of the mesh
      this.#checks.set(expected, fn);
    }
    return fn;
  }

  #dial(source: HeldIdentity, ep: BalancerEndpoint, sni: string, alpn: string): Promise<TLSSocket> {
    const { host, port } = splitAddress(ep.address);
    return new Promise((resolve, reject) => {
      let settled = false;
      const socket = tlsConnect({
        host,
        port,
        servername: sni,
        secureContext: source.context,
        ALPNProtocols: [alpn],
        minVersion: 'TLSv1.3',
        rejectUnauthorized: true,
        checkServerIdentity: this.#check(ep.identity),
      });
      const fail = (kind: Exclude<FailureKind, 'response'>, err: unknown): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        this.#o.onConnect?.(kind);
        this.#log.warn({ endpoint: ep.address, workload: ep.workload, expected: ep.identity, kind, err: String((err as Error)?.message ?? err) }, 'upstream connection failed');
        reject(new ConnectFailure(kind, `${kind} failure to ${ep.workload} at ${ep.address}: ${(err as Error)?.message ?? String(err)}`, { cause: err }));
      };
      const timer = setTimeout(() => fail('connect', new Error(`connect timeout after ${this.#limits.connectTimeoutMs} ms`)), this.#limits.connectTimeoutMs);
      socket.once('error', (err) => fail(classifyConnectError(err), err));
      socket.once('secureConnect', () => {
        if (settled) return;
        if (socket.alpnProtocol !== alpn) return fail('tls', new Error(`endpoint did not accept ALPN ${alpn}`));
        settled = true;
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.setNoDelay(true);
        this.#o.onConnect?.('ok');
        // The destination's certificate bounds this connection: once it expires, the connection
        // is closed and the next request dials (and checks) again.
        const notAfter = Date.parse(socket.getPeerCertificate().valid_to);
        if (Number.isFinite(notAfter)) {
          const t = setTimeout(() => socket.destroy(), Math.max(0, Math.min(notAfter - this.#o.clock.now(), 2 ** 31 - 1)));
          t.unref();
          socket.once('close', () => clearTimeout(t));
        }
        resolve(socket);
      });
    });
  }
}

export function splitAddress(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  let host = address.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(address.slice(i + 1)) };
}
