/**
 * Forwarding one HTTP request to an undici Dispatcher and streaming the answer back, shared by the
 * outbound side (to another node, over mutual TLS) and the inbound side (to the local workload).
 *
 * It uses undici's dispatch handler API directly rather than `request()`: no intermediate Readable
 * per response, and backpressure is explicit — when the downstream socket's buffer is full the
 * upstream is paused, and resumed on 'drain', so a slow client never makes the proxy buffer a body.
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { Dispatcher } from 'undici';

export type DownstreamRequest = IncomingMessage | Http2ServerRequest;
export type DownstreamResponse = ServerResponse | Http2ServerResponse;

/**
 * Hop-by-hop and proxy-only headers: never forwarded (RFC 9110 §7.6.1), in either direction.
 * `host` is set explicitly by the caller.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'http2-settings',
]);

/**
 * The end-to-end headers of a message, as a new object. Also drops every header named in
 * `Connection`, HTTP/2 pseudo-headers, and the names in `strip` (lowercase).
 */
export function endToEndHeaders(headers: IncomingHttpHeaders, strip?: ReadonlySet<string>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const conn = headers.connection;
  const listed = conn ? new Set(String(conn).toLowerCase().split(',').map((s) => s.trim())) : undefined;
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || name.charCodeAt(0) === 58 /* ':' */ || strip?.has(name) || listed?.has(name)) continue;
    const v = headers[name];
    if (v !== undefined) out[name] = v;
  }
  return out;
}

/** Whether a request carries a body (so it cannot be replayed on another endpoint). */
export function hasBody(req: DownstreamRequest): boolean {
  const h = req.headers;
  if (h['transfer-encoding'] !== undefined) return true;
  const cl = h['content-length'];
  if (cl !== undefined && cl !== '0') return true;
  // HTTP/2 has no framing headers: a stream that has not ended may still send DATA.
  return 'stream' in req && !(req as Http2ServerRequest).stream.endAfterHeaders;
}

export interface ForwardOptions {
  method: string;
  /** Origin-form target to send. */
  path: string;
  headers: Record<string, string | string[]>;
  /** Stream the downstream request body (false: send none). */
  body: boolean;
  headersTimeoutMs?: number;
  /** The response status arrived (before it is written downstream). */
  onHeaders?: (status: number) => void;
  /**
   * Return true to discard this response instead of writing it downstream: the request ends with
   * a DiscardedResponse error (started = false), so the caller may answer or retry itself.
   */
  discard?: (status: number, headers: IncomingHttpHeaders) => boolean;
  /** Response headers not to pass on (lowercase), besides the hop-by-hop ones. */
  stripResponse?: ReadonlySet<string>;
  /**
   * Called once: err undefined = the response was fully sent. `started` = the response status was
   * already written downstream (so the caller can no longer answer or retry).
   */
  onDone: (err: Error | undefined, started: boolean) => void;
}

/** The error a request ends with when `discard` refused its response. */
export class DiscardedResponse extends Error {
  readonly status: number;
  constructor(status: number) {
    super(`response ${status} discarded`);
    this.name = 'DiscardedResponse';
    this.status = status;
  }
}

/** Forwards one request; returns an abort function (the downstream went away). */
export function forward(dispatcher: Dispatcher, req: DownstreamRequest, res: DownstreamResponse, o: ForwardOptions): () => void {
  let controller: Dispatcher.DispatchController | undefined;
  let started = false;
  let finished = false;
  let paused = false;
  let cancelled = false;
  const done = (err: Error | undefined): void => {
    if (finished) return;
    finished = true;
    res.off('drain', onDrain);
    o.onDone(err, started);
  };
  const onDrain = (): void => {
    if (paused && controller) {
      paused = false;
      controller.resume();
    }
  };
  const handler: Dispatcher.DispatchHandler = {
    onRequestStart(c) {
      controller = c;
      // The downstream went away while the request waited in the pool's queue: drop it now rather
      // than send it (a client resetting streams in a loop must not fill the queue for everyone).
      if (cancelled) c.abort(new Error('downstream closed'));
    },
    onResponseStart(c, status, headers) {
      controller = c;
      if (status < 200) return; // 1xx: informational, not forwarded (100-continue is handled by Node)
      if (o.discard?.(status, headers)) {
        c.abort(new DiscardedResponse(status));
        return;
      }
      started = true;
      o.onHeaders?.(status);
      const out = endToEndHeaders(headers, o.stripResponse) as OutgoingHttpHeaders;
      try {
        res.writeHead(status, out);
      } catch (err) {
        c.abort(err as Error);
      }
    },
    onResponseData(c, chunk) {
      if (!(res as ServerResponse).write(chunk) && !paused) {
        paused = true;
        c.pause();
        res.once('drain', onDrain);
      }
    },
    onResponseEnd() {
      res.end();
      done(undefined);
    },
    onResponseError(_c, err) {
      done(err);
    },
  };
  dispatcher.dispatch(
    {
      origin: undefined,
      method: o.method as Dispatcher.HttpMethod,
      path: o.path,
      headers: o.headers,
      body: o.body ? (req as unknown as NodeJS.ReadableStream) : null,
      headersTimeout: o.headersTimeoutMs,
    } as Dispatcher.DispatchOptions,
    handler,
  );
  return () => {
    if (finished) return;
    cancelled = true;
    controller?.abort(new Error('downstream closed'));
  };
}
