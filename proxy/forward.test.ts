/**
 * forward(): one request from a downstream Node HTTP server to an undici Dispatcher and the answer
 * back, on real loopback sockets (an upstream test server, an undici Pool to it, a "proxy" server
 * whose handler calls forward, and a plain client). Also the two header/body predicates it exports.
 */
import { once } from 'node:events';
import { createServer as createHttpServer, get as httpGet, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'undici';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { DiscardedResponse, endToEndHeaders, forward, hasBody, type DownstreamRequest, type ForwardOptions } from './forward.js';

// ---- fixtures ----------------------------------------------------------------------------------

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<number> {
  const server = createHttpServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => {
    server.closeAllConnections();
    server.close();
  });
  return (server.address() as AddressInfo).port;
}

interface Upstream {
  pool: Pool;
  seen: { method: string; url: string; headers: IncomingHttpHeaders; body: string }[];
}

/** An upstream server and an undici Pool to it. `handle` runs once the request body has been read. */
async function startUpstream(handle: (req: IncomingMessage, res: ServerResponse) => void): Promise<Upstream> {
  const seen: Upstream['seen'] = [];
  const port = await listen((req, res) => {
    const s = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: '' };
    seen.push(s);
    req.setEncoding('latin1');
    req.on('data', (c: string) => (s.body += c));
    req.on('end', () => handle(req, res));
  });
  const pool = new Pool(`http://127.0.0.1:${port}`);
  onTestFinished(() => pool.destroy());
  return { pool, seen };
}

interface Done {
  err: Error | undefined;
  started: boolean;
}

/** A "proxy" whose handler forwards every request with `options(req)`; resolves `done` with onDone's arguments. */
async function startProxy(
  upstream: Upstream,
  options: (req: IncomingMessage, res: ServerResponse) => Partial<ForwardOptions> = () => ({}),
  onDone?: (d: Done, res: ServerResponse) => void,
): Promise<{ port: number; done: Promise<Done>; responses: ServerResponse[] }> {
  let resolveDone!: (d: Done) => void;
  const done = new Promise<Done>((r) => (resolveDone = r));
  const responses: ServerResponse[] = [];
  const port = await listen((req, res) => {
    responses.push(res);
    const o = options(req, res);
    const abort = forward(upstream.pool, req, res, {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      headers: endToEndHeaders(req.headers),
      body: hasBody(req),
      ...o,
      onDone: (err, started) => {
        onDone?.({ err, started }, res);
        resolveDone({ err, started });
      },
    });
    res.once('close', () => {
      if (!res.writableFinished) abort();
    });
  });
  return { port, done, responses };
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function send(port: number, o: { method?: string; path?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: o.method ?? 'GET', path: o.path ?? '/', headers: o.headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

// ---- endToEndHeaders ---------------------------------------------------------------------------

describe('endToEndHeaders', () => {
  it('drops hop-by-hop headers, pseudo-headers, Connection-listed names and the strip set; keeps the rest', () => {
    const input: IncomingHttpHeaders = {
      connection: 'Keep-Alive ,  X-Hop-Listed,x-also-listed',
      'keep-alive': 'timeout=5',
      'proxy-connection': 'keep-alive',
      'proxy-authenticate': 'Basic',
      'proxy-authorization': 'Basic c2VjcmV0',
      te: 'trailers',
      trailer: 'x-checksum',
      'transfer-encoding': 'chunked',
      upgrade: 'websocket',
      host: 'api.shop:8080',
      'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA',
      ':method': 'GET',
      ':path': '/x',
      ':authority': 'api.shop:8080',
      ':scheme': 'http',
      'x-hop-listed': 'listed in Connection',
      'x-also-listed': 'listed too',
      'x-ward-source-identity': 'spiffe://evil.test/ns/x/sa/y',
      'content-type': 'application/json',
      'content-length': '12',
      'set-cookie': ['a=1', 'b=2'],
      'x-keep': 'end to end',
    };
    const before = structuredClone(input);
    const out = endToEndHeaders(input, new Set(['x-ward-source-identity']));
    expect(out).toEqual({
      'content-type': 'application/json',
      'content-length': '12',
      'set-cookie': ['a=1', 'b=2'],
      'x-keep': 'end to end',
    });
    // A new object; the input is untouched.
    expect(out).not.toBe(input);
    expect(input).toEqual(before);
  });

  it('without a Connection header or strip set, only the fixed hop-by-hop names go', () => {
    expect(endToEndHeaders({ 'keep-alive': 'x', 'x-a': '1', 'x-b': undefined })).toEqual({ 'x-a': '1' });
  });

  it('a strip set name is compared in lowercase, as Node delivers header names', () => {
    expect(endToEndHeaders({ 'x-secret': 's', 'x-other': 'o' }, new Set(['x-secret']))).toEqual({ 'x-other': 'o' });
  });
});

// ---- hasBody -----------------------------------------------------------------------------------

describe('hasBody', () => {
  const h1 = (headers: IncomingHttpHeaders) => ({ headers }) as unknown as DownstreamRequest;
  const h2 = (headers: IncomingHttpHeaders, endAfterHeaders: boolean) => ({ headers, stream: { endAfterHeaders } }) as unknown as DownstreamRequest;

  it.each([
    ['HTTP/1: no framing headers', h1({}), false],
    ['HTTP/1: content-length 0', h1({ 'content-length': '0' }), false],
    ['HTTP/1: content-length 12', h1({ 'content-length': '12' }), true],
    ['HTTP/1: transfer-encoding chunked', h1({ 'transfer-encoding': 'chunked' }), true],
    ['HTTP/1: transfer-encoding with content-length 0', h1({ 'transfer-encoding': 'chunked', 'content-length': '0' }), true],
    ['HTTP/2: stream ended with the headers', h2({}, true), false],
    ['HTTP/2: stream still open (DATA may follow)', h2({}, false), true],
    ['HTTP/2: content-length 5', h2({ 'content-length': '5' }, false), true],
  ] as const)('%s → %s', (_name, req, want) => {
    expect(hasBody(req)).toBe(want);
  });
});

// ---- forward -----------------------------------------------------------------------------------

describe('forward', () => {
  it('sends method, path, headers and body; returns status, end-to-end headers and body', async () => {
    const statuses: number[] = [];
    const up = await startUpstream((_req, res) => {
      res.writeHead(201, { 'content-type': 'text/plain', connection: 'x-upstream-hop', 'x-upstream-hop': 'secret', 'keep-alive': 'timeout=5', 'x-answer': 'yes' });
      res.end('created');
    });
    const proxy = await startProxy(up, () => ({ onHeaders: (s) => statuses.push(s) }));
    const answer = await send(proxy.port, { method: 'POST', path: '/orders?x=1', headers: { 'content-type': 'text/plain', 'x-client': 'c' }, body: 'qty=4' });
    expect(answer.status).toBe(201);
    expect(answer.body).toBe('created');
    expect(answer.headers['x-answer']).toBe('yes');
    expect(answer.headers).not.toHaveProperty('x-upstream-hop');
    expect(statuses).toEqual([201]);
    expect(up.seen).toEqual([expect.objectContaining({ method: 'POST', url: '/orders?x=1', body: 'qty=4' })]);
    expect(up.seen[0].headers['x-client']).toBe('c');
    expect(await proxy.done).toEqual({ err: undefined, started: true });
  });

  it('body: false sends no body even when the downstream request has one', async () => {
    const up = await startUpstream((_req, res) => res.end('ok'));
    const proxy = await startProxy(up, () => ({ body: false, headers: {} }));
    expect((await send(proxy.port, { method: 'PUT', body: 'ignored' })).status).toBe(200);
    expect(up.seen[0].body).toBe('');
  });

  it('honours backpressure: 8 MiB to a slow reader arrives intact while the proxy buffers little', async () => {
    const SIZE = 8 * 1024 * 1024;
    const pattern = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i++) pattern[i] = i % 251;
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-length': String(SIZE), 'content-type': 'application/octet-stream' });
      let off = 0;
      const pump = (): void => {
        while (off < SIZE) {
          const chunk = pattern.subarray(off, off + 64 * 1024);
          off += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    let refusals = 0;
    let maxBuffered = 0;
    const proxy = await startProxy(up, (_req, res) => {
      // Watch what forward does with the downstream socket: write() === false must stop the flow.
      const write = res.write.bind(res) as (chunk: Buffer) => boolean;
      (res as unknown as { write: (chunk: Buffer) => boolean }).write = (chunk: Buffer) => {
        const ok = write(chunk);
        if (!ok) refusals++;
        maxBuffered = Math.max(maxBuffered, res.writableLength);
        return ok;
      };
      return {};
    });

    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpGet({ host: '127.0.0.1', port: proxy.port, path: '/big', agent: false }, resolve);
      req.on('error', reject);
    });
    onTestFinished(() => void res.destroy());
    // Not reading at all until the proxy has been told to wait.
    res.pause();
    await vi.waitFor(() => expect(refusals).toBeGreaterThan(0), { timeout: 10_000, interval: 5 });

    // Then a slow reader: one chunk per event-loop turn.
    let received = 0;
    let intact = true;
    await pipeline(
      res,
      new Writable({
        highWaterMark: 1024,
        write(chunk: Buffer, _enc, cb) {
          if (intact && !chunk.equals(pattern.subarray(received, received + chunk.length))) intact = false;
          received += chunk.length;
          setImmediate(cb);
        },
      }),
    );
    expect(received).toBe(SIZE);
    expect(intact).toBe(true);
    expect(await proxy.done).toEqual({ err: undefined, started: true });
    // A proxy that ignored write() === false would hold most of the body in memory; one that honours
    // it holds about a high-water mark plus the chunk in hand.
    expect(maxBuffered).toBeLessThan(1024 * 1024);
  });

  it('discard(): the response is dropped, onDone gets a DiscardedResponse (started false) and nothing was written', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(503, { 'x-ward-not-forwarded': '1' });
      res.end('upstream body that must not leak');
    });
    const onHeaders = vi.fn();
    const discarded: { status: number; header: unknown }[] = [];
    let headersSentAtDone: boolean | undefined;
    const proxy = await startProxy(
      up,
      () => ({
        onHeaders,
        discard: (status, headers) => {
          discarded.push({ status, header: headers['x-ward-not-forwarded'] });
          return status === 503 && headers['x-ward-not-forwarded'] === '1';
        },
      }),
      // The caller can still answer itself: nothing went downstream.
      (d, res) => {
        headersSentAtDone = res.headersSent;
        res.writeHead(418, { 'content-type': 'text/plain' });
        res.end('answered by the caller');
      },
    );
    const answer = await send(proxy.port);
    const { err, started } = await proxy.done;
    expect(err).toBeInstanceOf(DiscardedResponse);
    expect((err as DiscardedResponse).status).toBe(503);
    expect(started).toBe(false);
    expect(headersSentAtDone).toBe(false);
    expect(discarded).toEqual([{ status: 503, header: '1' }]);
    expect(onHeaders).not.toHaveBeenCalled();
    expect(answer).toMatchObject({ status: 418, body: 'answered by the caller' });
    expect(answer.headers).not.toHaveProperty('x-ward-not-forwarded');
  });

  it('discard() returning false forwards the response as usual', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(503, { 'x-ward-not-forwarded': '1' });
      res.end('no');
    });
    const proxy = await startProxy(up, () => ({ discard: () => false }));
    expect(await send(proxy.port)).toMatchObject({ status: 503, body: 'no' });
    expect(await proxy.done).toEqual({ err: undefined, started: true });
  });

  it('the downstream going away mid-response aborts the upstream request; onDone reports started', async () => {
    let upstreamClosed!: Promise<unknown>;
    const up = await startUpstream((_req, res) => {
      upstreamClosed = once(res, 'close');
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part;');
      // …and never ends.
    });
    const proxy = await startProxy(up);
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpGet({ host: '127.0.0.1', port: proxy.port, path: '/', agent: false }, resolve);
      req.on('error', reject);
    });
    res.on('error', () => undefined);
    await once(res, 'data');
    res.destroy();
    const { err, started } = await proxy.done;
    expect(err).toBeInstanceOf(Error);
    expect(started).toBe(true);
    await upstreamClosed;
  });

  it('an upstream that cannot be reached → onDone(err, started false), nothing written downstream', async () => {
    // A port that was listening a moment ago and is closed now.
    const port = await (async () => {
      const s = createHttpServer();
      s.listen(0, '127.0.0.1');
      await once(s, 'listening');
      const p = (s.address() as AddressInfo).port;
      s.close();
      await once(s, 'close');
      return p;
    })();
    const pool = new Pool(`http://127.0.0.1:${port}`);
    onTestFinished(() => pool.destroy());
    let headersSentAtDone: boolean | undefined;
    const proxy = await startProxy({ pool, seen: [] }, undefined, (_d, res) => {
      headersSentAtDone = res.headersSent;
      res.writeHead(502);
      res.end('caller answered');
    });
    const answer = await send(proxy.port);
    const { err, started } = await proxy.done;
    expect((err as { code?: string }).code).toBe('ECONNREFUSED');
    expect(started).toBe(false);
    expect(headersSentAtDone).toBe(false);
    expect(answer).toMatchObject({ status: 502, body: 'caller answered' });
  });
});
