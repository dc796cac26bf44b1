/**
 * Sending one HTTP request to a mesh service: pick an endpoint (EndpointSet), forward on the pooled
 * mutual-TLS connection for the source identity (Upstreams), and on failure try another endpoint —
 * at once when nothing reached the destination workload (connect, TLS, identity failure, or a 503
 * with x-ward-not-forwarded), and for replayable requests within the retry budget when it did.
 * Shared by the node proxy's outbound listeners and the ingress, so both balance, fail over and
 * retry exactly alike.
 */
import type { Logger } from '../core/logger.js';
import type { WardErrorCode } from '../core/errors.js';
import type { EndpointLease, EndpointSet, RetryBudget } from './balance.js';
import { DiscardedResponse, forward, type DownstreamRequest, type DownstreamResponse } from './forward.js';
import type { HeldIdentity } from './identity.js';
import { NOT_FORWARDED_HEADER, type ServicePort } from './mesh-view.js';
import { ConnectFailure, type Upstreams } from './upstream.js';

/** Methods that may be replayed (RFC 9110 §9.2.2). */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** Proxy-to-proxy signals that end at the sender (x-ward-error goes on: it explains a 5xx). */
const RESPONSE_STRIP: ReadonlySet<string> = new Set([NOT_FORWARDED_HEADER]);

export interface SendOptions {
  /** "service.namespace", for messages. */
  serviceKey: string;
  set: EndpointSet;
  port: ServicePort;
  source: HeldIdentity;
  upstreams: Upstreams;
  budget: RetryBudget;
  method: string;
  /** Origin-form target. */
  path: string;
  headers: Record<string, string | string[]>;
  /** The downstream request has a body (streamed once: it cannot be replayed). */
  body: boolean;
  maxAttempts: number;
  logger: Logger;
  /** Every response status written downstream (metrics). */
  onStatus?: (status: number) => void;
  onRetry?: (result: 'retried' | 'budget-exhausted') => void;
  /** Answers an error the proxy generates itself (no upstream response was written). */
  reject: (status: number, code: WardErrorCode, message: string) => void;
  /** Called once when the exchange is over, whatever the outcome. */
  done: () => void;
}

/** Sends `req` to the service; the caller has already checked that `set` is not empty. */
export function sendToService(req: DownstreamRequest, res: DownstreamResponse, o: SendOptions): void {
  const replayable = !o.body && IDEMPOTENT_METHODS.has(o.method);
  const tried = new Set<string>();
  let abort: (() => void) | undefined;
  let finished = false;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    o.done();
  };
  // The downstream went away (client closed, HTTP/2 stream reset): not the endpoint's fault, so no
  // failure is counted against it, and nothing is retried.
  let gone = false;
  res.once('close', () => {
    if (!finished) {
      gone = true;
      abort?.();
    }
    finish();
  });
  o.budget.deposit();

  const attempt = (n: number): void => {
    const lease: EndpointLease | undefined = o.set.pick(tried);
    if (!lease) {
      finish();
      return n === 1
        ? o.reject(503, 'WARD_PROXY_NO_ENDPOINTS', `service ${o.serviceKey} has no healthy endpoint (${o.set.size} known, all ejected)`)
        : o.reject(502, 'WARD_PROXY_UPSTREAM_FAILED', `every endpoint tried for ${o.serviceKey} failed`);
    }
    tried.add(lease.key);
    const pool = o.upstreams.pool(o.source, lease.endpoint, o.port.targetPort);
    abort = forward(pool, req, res, {
      method: o.method,
      path: o.path,
      headers: o.headers,
      body: o.body,
      stripResponse: RESPONSE_STRIP,
      // 503 + not-forwarded: the destination's workload never got the request (retry like a
      // connect failure). 502 + WARD_PROXY_UPSTREAM_FAILED: its workload failed mid-request (e.g.
      // killed); a replayable request may go elsewhere, within the retry budget (taken here).
      // Only proxies can send these: the inbound strips x-ward-* from what applications answer.
      discard: (status, h) =>
        n < o.maxAttempts &&
        ((status === 503 && h[NOT_FORWARDED_HEADER] === '1' && !o.body) ||
          (status === 502 && h['x-ward-error'] === 'WARD_PROXY_UPSTREAM_FAILED' && replayable && o.budget.tryWithdraw())),
      onHeaders: (status) => {
        o.onStatus?.(status);
        if (status >= 500) lease.fail('response');
        else lease.succeed();
      },
      onDone: (err, started) => {
        if (!err) return finish();
        if (started) {
          finish();
          res.destroy();
          return;
        }
        if (gone || res.destroyed || res.writableEnded) {
          lease.cancel();
          return finish();
        }
        const cf = (err instanceof ConnectFailure ? err : (err as { cause?: unknown }).cause) as ConnectFailure | undefined;
        const discarded = err instanceof DiscardedResponse ? err : undefined;
        const notForwarded = discarded?.status === 503;
        const before = cf instanceof ConnectFailure || notForwarded;
        lease.fail(cf instanceof ConnectFailure ? cf.kind : notForwarded ? 'connect' : 'response');
        const more = n < o.maxAttempts;
        // Nothing was sent: any request may go to another endpoint. Sent: only a replayable one,
        // within the budget (a discarded 502 already took its retry from the budget).
        const retry = more && (before || discarded !== undefined || (replayable && o.budget.tryWithdraw()));
        if (more && !before && replayable && !retry) o.onRetry?.('budget-exhausted');
        o.logger.debug({ err: err.message, endpoint: lease.endpoint.address, attempt: n, retry }, 'upstream attempt failed');
        if (retry) {
          o.onRetry?.('retried');
          return attempt(n + 1);
        }
        finish();
        if ((err as { code?: string }).code === 'UND_ERR_HEADERS_TIMEOUT') return o.reject(504, 'WARD_PROXY_TIMEOUT', `${o.serviceKey} did not answer in time`);
        o.logger.warn({ service: o.serviceKey, err: err.message }, 'request failed on every endpoint tried');
        return o.reject(502, 'WARD_PROXY_UPSTREAM_FAILED', `${o.serviceKey}: ${err.message}`);
      },
    });
  };
  attempt(1);
}
