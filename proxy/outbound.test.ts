/**
 * The outbound listener, driven in-process on 127.0.0.1 with a fake DataPlane: a real MeshView,
 * real EndpointSets and RetryBudget on a ManualClock, and in place of mutual TLS an `Upstreams`
 * whose pool() is a plain undici Pool to a local HTTP server and whose tunnel() is a TCP socket to a
 * local echo server. What is asserted is what a client sees (status, x-ward-error, bytes) and what
 * the destination receives (method, path, Host, headers, body).
 *
 * Endpoint order: the balancer's random source is fixed at 0, so with equal scores the first
 * endpoint listed is always picked first (p2c ties go to the first candidate); after it fails the
 * other one is the only candidate left.
 */
import { once } from 'node:events';
import { request as httpRequest, createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect as http2Connect } from 'node:http2';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Pool } from 'undici';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { silentLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { applyFrame, type Endpoint, type Resource } from '../core/protocol/index.js';
import { EndpointSet, RetryBudget, type BalancerEndpoint } from './balance.js';
import type { HeldIdentity } from './identity.js';
import { MeshView } from './mesh-view.js';
import { ProxyMetrics } from './metrics.js';
import { OutboundListener, splice, splitHostPort, type DataPlane, type OutboundLimits } from './outbound.js';
import { ConnectFailure, type Upstreams } from './upstream.js';

const TD = 'ward.test';
const WEB_ID = `spiffe://${TD}/ns/shop/sa/web`;

// ---- small socket helpers ---------------------------------------------------------------------

/** Reads from `socket` until `done(text so far)` holds; resolves with the text. */
function readUntil(socket: Duplex, done: (text: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('latin1');
      if (done(text)) {
        cleanup();
        resolve(text);
      }
    };
    const onEnd = (): void => {
      cleanup();
      if (done(text)) resolve(text);
      else reject(new Error(`stream ended after ${JSON.stringify(text)}`));
    };
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', reject);
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', reject);
  });
}

/** A connected (client, server-side) socket pair over loopback TCP. */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = createNetServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
  const [accepted] = (await once(server, 'connection')) as [Socket];
  await once(client, 'connect').catch(() => undefined);
  server.close();
  onTestFinished(() => {
    client.destroy();
    accepted.destroy();
  });
  return [client, accepted];
}

// ---- upstream test servers -------------------------------------------------------------------

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

interface TestServer {
  address: string;
  port: number;
  seen: Seen[];
}

/** A plain HTTP server on 127.0.0.1:0; `handle` answers (default: 200 "hello from <name>"). */
async function startServer(name: string, handle?: (req: IncomingMessage, res: ServerResponse, seen: Seen) => void): Promise<TestServer> {
  const seen: Seen[] = [];
  const server = createHttpServer((req, res) => {
    const s: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: '' };
    seen.push(s);
    if (handle && EARLY in handle) return handle(req, res, s);
    req.setEncoding('utf8');
    req.on('data', (c: string) => (s.body += c));
    req.on('end', () => {
      if (handle) return handle(req, res, s);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`hello from ${name}`);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => {
    server.closeAllConnections();
    server.close();
  });
  const port = (server.address() as AddressInfo).port;
  return { address: `127.0.0.1:${port}`, port, seen };
}

/** Handlers marked with this symbol run as soon as the headers arrive (before the body is read). */
const EARLY = Symbol('early');
function early(fn: (req: IncomingMessage, res: ServerResponse, seen: Seen) => void): typeof fn {
  return Object.assign(fn, { [EARLY]: true });
}

/** Answers 503 + x-ward-not-forwarded: 1, as a destination proxy does when its workload is not listening. */
const notForwarded = (_req: IncomingMessage, res: ServerResponse): void => {
  res.writeHead(503, { 'x-ward-not-forwarded': '1', 'content-type': 'text/plain' });
  res.end('nothing listening');
};

/** Drops the connection once the request has arrived: a failure after sending. */
const reset = early((req: IncomingMessage) => {
  req.socket.destroy();
});

/** A TCP echo server; records the server side of each connection. */
async function startEcho(): Promise<{ address: string; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const server = createNetServer((s) => {
    sockets.push(s);
    s.on('error', () => undefined);
    s.pipe(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, sockets };
}

// ---- the listener under test -------------------------------------------------------------------

function endpointAt(address: string, name: string): Endpoint {
  return { address, identity: `spiffe://${TD}/ns/shop/sa/api`, node: 'node-b', workload: `shop/${name}` };
}

interface HarnessOptions {
  api?: Endpoint[];
  db?: Endpoint[];
  identity?: boolean;
  budget?: { ratio: number; minPerSecond: number };
  limits?: Partial<OutboundLimits>;
  /** A pool for an endpoint other than a plain undici Pool to its address (e.g. one that cannot connect). */
  poolFor?: (ep: BalancerEndpoint) => Pool | undefined;
  /** A node-wide listener (Kubernetes mode): the caller is looked up by source address here. */
  bySource?: Map<string, { workload: string; identity: string }>;
}

interface Harness {
  port: number;
  listener: OutboundListener;
  metrics: ProxyMetrics;
  poolCalls: { source: string; address: string; port: number }[];
  tunnelCalls: { source: string; address: string; port: number }[];
  retries(result: 'retried' | 'budget-exhausted'): Promise<number>;
}

async function startOutbound(o: HarnessOptions = {}): Promise<Harness> {
  const clock = new ManualClock(0);
  const resources: Resource[] = [
    {
      kind: 'endpoints',
      key: 'api.shop',
      value: {
        service: 'api',
        namespace: 'shop',
        ports: [
          { name: 'http', port: 8080, targetPort: 9090, protocol: 'http' },
          { name: 'plain', port: 80, targetPort: 9090, protocol: 'http' },
        ],
        endpoints: o.api ?? [],
      },
    },
    { kind: 'endpoints', key: 'db.shop', value: { service: 'db', namespace: 'shop', ports: [{ port: 5432, targetPort: 15432, protocol: 'tcp' }], endpoints: o.db ?? [] } },
  ];
  const view = MeshView.from(applyFrame(undefined, { type: 'snapshot', version: 1, resources }), { trustDomain: TD });
  const sets = new Map<string, EndpointSet>();
  for (const [key, svc] of view.services) {
    const set = new EndpointSet(key, { clock, localNode: 'node-a', random: () => 0 });
    set.update(svc.endpoints);
    sets.set(key, set);
  }
  const source = { id: SpiffeId.parse(WEB_ID), serial: '01' } as unknown as HeldIdentity;
  const pools = new Map<string, Pool>();
  const poolCalls: Harness['poolCalls'] = [];
  const tunnelCalls: Harness['tunnelCalls'] = [];
  const tunnels: Socket[] = [];
  onTestFinished(async () => {
    for (const t of tunnels) t.destroy();
    await Promise.all([...pools.values()].map((p) => p.destroy()));
  });
  const upstreams = {
    pool(src: HeldIdentity, ep: BalancerEndpoint, port: number): Pool {
      poolCalls.push({ source: src.id.toString(), address: ep.address, port });
      let pool = pools.get(ep.address);
      if (!pool) {
        pool = o.poolFor?.(ep) ?? new Pool(`http://${ep.address}`);
        pools.set(ep.address, pool);
      }
      return pool;
    },
    async tunnel(src: HeldIdentity, ep: BalancerEndpoint, port: number): Promise<Socket> {
      tunnelCalls.push({ source: src.id.toString(), address: ep.address, port });
      const [host, p] = ep.address.split(':');
      const socket = netConnect(Number(p), host);
      tunnels.push(socket);
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', (err) => reject(new ConnectFailure('connect', err.message, { cause: err })));
      });
      return socket;
    },
  } as unknown as Upstreams;
  const registry = createRegistry();
  const metrics = new ProxyMetrics(registry);
  const dataPlane: DataPlane = {
    view: () => view,
    identity: (id) => (o.identity === false || id !== WEB_ID ? undefined : source),
    upstreams,
    balancer: (key) => sets.get(key),
    budget: new RetryBudget({ clock, ...(o.budget ?? {}) }),
    metrics,
    logger: silentLogger(),
    clock,
  };
  const bySource = o.bySource;
  const listener = bySource
    ? new OutboundListener({ bySourceAddress: (a) => bySource.get(a), dataPlane, limits: o.limits })
    : new OutboundListener({ workload: 'shop/web', identity: WEB_ID, dataPlane, limits: o.limits });
  const { port } = await listener.listen('127.0.0.1', 0);
  onTestFinished(() => listener.close(1_000));
  return {
    port,
    listener,
    metrics,
    poolCalls,
    tunnelCalls,
    async retries(result) {
      const m = await metrics.retries.get();
      return m.values.find((v) => v.labels.result === result)?.value ?? 0;
    },
  };
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One HTTP/1.1 request to the listener on its own connection (no agent: nothing lingers). */
function send(port: number, o: { method?: string; path: string; headers?: Record<string, string>; body?: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method: o.method ?? 'GET', path: o.path, headers: o.headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

function expectRefusal(a: Answer, status: number, code: string): void {
  expect(a.status).toBe(status);
  expect(a.headers['x-ward-error']).toBe(code);
  expect(a.body).toMatch(new RegExp(`^ward: .*\\(${code}\\)\\n$`));
}

// ---- splitHostPort, splice ---------------------------------------------------------------------

describe('splitHostPort', () => {
  it.each([
    ['api.shop:8080', 80, { host: 'api.shop', port: 8080 }],
    ['api.shop', 80, { host: 'api.shop', port: 80 }],
    ['api.shop:1', undefined, { host: 'api.shop', port: 1 }],
    ['api.shop:65535', undefined, { host: 'api.shop', port: 65535 }],
    ['10.0.0.1:443', undefined, { host: '10.0.0.1', port: 443 }],
    ['[::1]:8080', 80, { host: '::1', port: 8080 }],
    ['[fd00::1]', 80, { host: 'fd00::1', port: 80 }],
  ] as const)('%j (default %j) → %j', (authority, def, want) => {
    expect(splitHostPort(authority, def)).toEqual(want);
  });

  it.each([
    ['empty', '', 80],
    ['no port and no default', 'api.shop', undefined],
    ['empty port', 'api.shop:', 80],
    ['port 0', 'api.shop:0', 80],
    ['port 65536', 'api.shop:65536', 80],
    ['six-digit port', 'api.shop:100000', 80],
    ['non-numeric port', 'api.shop:http', 80],
    ['signed port', 'api.shop:+80', 80],
    ['port with a space', 'api.shop: 80', 80],
    ['no host', ':8080', 80],
    ['unclosed bracket', '[::1:8080', 80],
    ['junk after the bracket', '[::1]8080', 80],
    ['empty brackets', '[]:8080', 80],
    ['bracketed host without port or default', '[::1]', undefined],
    ['longer than 300 characters', `${'a'.repeat(300)}:80`, 80],
  ] as const)('refuses %s', (_name, authority, def) => {
    expect(splitHostPort(authority, def)).toBeUndefined();
  });
});

describe('splice', () => {
  it('carries bytes both ways', async () => {
    const [c1, s1] = await socketPair();
    const [c2, s2] = await socketPair();
    splice(s1, s2);
    const atC2 = readUntil(c2, (t) => t === 'ping from 1');
    c1.write('ping from 1');
    await atC2;
    const atC1 = readUntil(c1, (t) => t === 'pong from 2');
    c2.write('pong from 2');
    await atC1;
  });

  it('a close on one end destroys the other', async () => {
    const [c1, s1] = await socketPair();
    const [c2, s2] = await socketPair();
    s2.on('error', () => undefined);
    splice(s1, s2);
    const otherClosed = once(s2, 'close');
    const peerSawIt = once(c2, 'close');
    c2.on('error', () => undefined);
    s1.on('error', () => undefined);
    c1.destroy();
    await otherClosed;
    await peerSawIt;
    expect(s1.destroyed && s2.destroyed).toBe(true);
  });

  it('an error on one end destroys the other', async () => {
    const [, s1] = await socketPair();
    const [c2, s2] = await socketPair();
    splice(s1, s2);
    c2.on('error', () => undefined);
    const otherClosed = once(s2, 'close');
    s1.destroy(new Error('boom'));
    await otherClosed;
    expect(s2.destroyed).toBe(true);
    await once(c2, 'close');
  });
});

// ---- the outbound listener: HTTP/1.1 ---------------------------------------------------------

describe('OutboundListener: HTTP/1.1 proxy requests', () => {
  it('forwards an absolute-form GET with the origin-form path and mesh Host, hop-by-hop headers stripped', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    const answer = await send(h.port, {
      path: 'http://api.shop:8080/items/7?color=red',
      headers: {
        host: 'ignored.example',
        connection: 'close, X-Drop-Me',
        'x-drop-me': 'listed in Connection',
        'proxy-authorization': 'Basic c2VjcmV0',
        'keep-alive': 'timeout=5',
        'proxy-connection': 'keep-alive',
        te: 'trailers',
        'x-keep': 'end to end',
      },
    });
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('hello from a');
    expect(a.seen).toHaveLength(1);
    const got = a.seen[0];
    expect(got.method).toBe('GET');
    expect(got.url).toBe('/items/7?color=red');
    expect(got.headers.host).toBe('api.shop:8080');
    expect(got.headers['x-keep']).toBe('end to end');
    for (const name of ['x-drop-me', 'proxy-authorization', 'keep-alive', 'proxy-connection', 'te']) expect(got.headers).not.toHaveProperty(name);
    // The source's own certificate toward the service's target port, on the endpoint picked.
    expect(h.poolCalls).toEqual([{ source: WEB_ID, address: a.address, port: 9090 }]);
  });

  it('port 80 is the default and the Host then carries no port; a query without a path becomes "/?…"', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    expect((await send(h.port, { path: 'http://API.shop.svc.cluster.local?x=1' })).status).toBe(200);
    expect(a.seen[0].url).toBe('/?x=1');
    expect(a.seen[0].headers.host).toBe('API.shop.svc.cluster.local');
  });

  it('accepts an origin-form request with a mesh Host', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    const answer = await send(h.port, { path: '/direct', headers: { host: 'api.shop:8080' } });
    expect(answer.status).toBe(200);
    expect(a.seen[0].url).toBe('/direct');
    expect(a.seen[0].headers.host).toBe('api.shop:8080');
  });

  it('forwards a POST body', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    const answer = await send(h.port, { method: 'POST', path: 'http://api.shop:8080/orders', headers: { 'content-type': 'application/json' }, body: '{"qty":3}' });
    expect(answer.status).toBe(200);
    expect(a.seen[0]).toMatchObject({ method: 'POST', url: '/orders', body: '{"qty":3}' });
  });

  it('an unknown host → 502 WARD_PROXY_UNKNOWN_SERVICE, an unknown port too', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    const unknown = await send(h.port, { path: 'http://nope.shop:8080/' });
    expectRefusal(unknown, 502, 'WARD_PROXY_UNKNOWN_SERVICE');
    expect(unknown.body).toContain('nope.shop is not a mesh service');
    const badPort = await send(h.port, { path: 'http://api.shop:81/' });
    expectRefusal(badPort, 502, 'WARD_PROXY_UNKNOWN_SERVICE');
    expect(badPort.body).toContain('has no port 81');
    expect(a.seen).toHaveLength(0);
  });

  it('no certificate for the workload yet → 503 WARD_PROXY_IDENTITY_UNAVAILABLE', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')], identity: false });
    expectRefusal(await send(h.port, { path: 'http://api.shop:8080/' }), 503, 'WARD_PROXY_IDENTITY_UNAVAILABLE');
    expect(a.seen).toHaveLength(0);
    expect(h.poolCalls).toHaveLength(0);
  });

  it('a service without endpoints → 503 WARD_PROXY_NO_ENDPOINTS', async () => {
    const h = await startOutbound({ api: [] });
    const answer = await send(h.port, { path: 'http://api.shop:8080/' });
    expectRefusal(answer, 503, 'WARD_PROXY_NO_ENDPOINTS');
    expect(answer.body).toContain('api.shop has no endpoints');
  });

  it.each([
    ['https://', 'GET', 'https://api.shop:8080/'],
    ['an asterisk-form target (neither absolute http:// nor a path)', 'OPTIONS', '*'],
    ['a bad authority', 'GET', 'http://api.shop:x/'],
  ])('%s → 400 WARD_PROXY_REQUEST_INVALID', async (_name, method, path) => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    expectRefusal(await send(h.port, { method, path }), 400, 'WARD_PROXY_REQUEST_INVALID');
    expect(a.seen).toHaveLength(0);
  });

  it('an upgrade request is refused with 501', async () => {
    const h = await startOutbound();
    const [status] = await new Promise<[number]>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: h.port, path: 'http://api.shop:8080/ws', headers: { connection: 'upgrade', upgrade: 'websocket' }, agent: false });
      req.on('response', (res) => {
        res.resume();
        resolve([res.statusCode ?? 0]);
      });
      req.on('upgrade', () => reject(new Error('upgraded')));
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(501);
  });
});

describe('OutboundListener: one listener for the node, callers told apart by source address (Kubernetes mode)', () => {
  /** A request from a given loopback source address. */
  const sendFrom = (port: number, localAddress: string, path: string): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path, localAddress, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });

  it("a workload's pod IP speaks with that workload's certificate; any other source is refused before anything is read", async () => {
    const a = await startServer('a');
    const bySource = new Map([['127.0.77.1', { workload: 'shop/web-1', identity: WEB_ID }]]);
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')], bySource });
    const ok = await sendFrom(h.port, '127.0.77.1', 'http://api.shop:8080/x');
    expect(ok.status, ok.body).toBe(200);
    expect(h.poolCalls).toEqual([{ source: WEB_ID, address: a.address, port: 9090 }]);
    // Another address on the node (a pod that is not meshed, or the host itself): 403, nothing forwarded.
    const stranger = await sendFrom(h.port, '127.0.77.2', 'http://api.shop:8080/x');
    expectRefusal(stranger, 403, 'WARD_PROXY_UNKNOWN_WORKLOAD');
    expect(a.seen).toHaveLength(1);
    const refused = (await h.metrics.connections.get()).values.find((v) => v.labels.result === 'refused');
    expect(refused?.value).toBe(1);
  });

  it('a workload that left the node mid-connection is refused on its next request (403), with no identity used', async () => {
    const a = await startServer('a');
    const bySource = new Map([['127.0.77.1', { workload: 'shop/web-1', identity: WEB_ID }]]);
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')], bySource });
    const socket = netConnect({ host: '127.0.0.1', port: h.port, localAddress: '127.0.77.1' });
    onTestFinished(() => void socket.destroy());
    await once(socket, 'connect');
    socket.write('GET http://api.shop:8080/one HTTP/1.1\r\nHost: api.shop:8080\r\n\r\n');
    expect(await readUntil(socket, (t) => t.includes('hello from a'))).toMatch(/^HTTP\/1\.1 200 /);
    bySource.delete('127.0.77.1');
    socket.write('GET http://api.shop:8080/two HTTP/1.1\r\nHost: api.shop:8080\r\n\r\n');
    const second = await readUntil(socket, (t) => t.includes('WARD_PROXY_UNKNOWN_WORKLOAD)\n'));
    expect(second).toMatch(/^HTTP\/1\.1 403 /);
    expect(a.seen.map((r) => r.url)).toEqual(['/one']);
    expect(h.poolCalls).toHaveLength(1);
  });

  it('one workload cannot take the listener from the others: past maxConnectionsPerSource its next connection gets 503, another workload is served', async () => {
    const a = await startServer('a');
    const bySource = new Map([
      ['127.0.77.1', { workload: 'shop/web-1', identity: WEB_ID }],
      ['127.0.77.5', { workload: 'shop/web-2', identity: WEB_ID }],
    ]);
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')], bySource, limits: { maxConnectionsPerSource: 2 } });
    const held: Socket[] = [];
    for (let i = 0; i < 2; i++) {
      const s = netConnect({ host: '127.0.0.1', port: h.port, localAddress: '127.0.77.1' });
      onTestFinished(() => void s.destroy());
      await once(s, 'connect');
      held.push(s);
    }
    // The listener counts a connection once it has accepted it: the third is refused at once.
    await vi.waitFor(async () => {
      const third = await sendFrom(h.port, '127.0.77.1', 'http://api.shop:8080/x');
      expectRefusal(third, 503, 'WARD_PROXY_OVERLOADED');
    }, { timeout: 5_000, interval: 20 });
    const other = await sendFrom(h.port, '127.0.77.5', 'http://api.shop:8080/x');
    expect(other.status, other.body).toBe(200);
    // Closing one frees a slot for that workload again.
    held[0].destroy();
    await vi.waitFor(async () => expect((await sendFrom(h.port, '127.0.77.1', 'http://api.shop:8080/y')).status).toBe(200), { timeout: 5_000, interval: 20 });
  });

  it('CONNECT from an unknown source is refused the same way', async () => {
    const bySource = new Map<string, { workload: string; identity: string }>();
    const h = await startOutbound({ bySource });
    const socket = netConnect({ host: '127.0.0.1', port: h.port, localAddress: '127.0.77.3' });
    onTestFinished(() => void socket.destroy());
    await once(socket, 'connect');
    socket.write('CONNECT db.shop:5432 HTTP/1.1\r\nHost: db.shop:5432\r\n\r\n');
    expect(await readUntil(socket, (t) => t.includes('\r\n\r\n'))).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*x-ward-error: WARD_PROXY_UNKNOWN_WORKLOAD/);
    expect(h.tunnelCalls).toEqual([]);
  });
});

describe('OutboundListener: retries', () => {
  it('a 503 with x-ward-not-forwarded from the first endpoint → the GET is retried on the second', async () => {
    const a = await startServer('a', notForwarded);
    const b = await startServer('b');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a'), endpointAt(b.address, 'api-b')] });
    const answer = await send(h.port, { path: 'http://api.shop:8080/x' });
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('hello from b');
    expect(answer.headers).not.toHaveProperty('x-ward-not-forwarded');
    expect(a.seen.map((s) => s.url)).toEqual(['/x']);
    expect(b.seen.map((s) => s.url)).toEqual(['/x']);
    expect(h.poolCalls.map((c) => c.address)).toEqual([a.address, b.address]);
    expect(await h.retries('retried')).toBe(1);
  });

  it('a POST with a body is not retried on a not-forwarded 503: the 503 reaches the client', async () => {
    const a = await startServer('a', notForwarded);
    const b = await startServer('b');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a'), endpointAt(b.address, 'api-b')] });
    const answer = await send(h.port, { method: 'POST', path: 'http://api.shop:8080/orders', body: 'qty=1' });
    expect(answer.status).toBe(503);
    expect(answer.body).toBe('nothing listening');
    expect(a.seen).toHaveLength(1);
    expect(a.seen[0].body).toBe('qty=1');
    expect(b.seen).toHaveLength(0);
  });

  it('a POST with a body that failed after sending is not retried → 502', async () => {
    const a = await startServer('a', reset);
    const b = await startServer('b');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a'), endpointAt(b.address, 'api-b')] });
    expectRefusal(await send(h.port, { method: 'POST', path: 'http://api.shop:8080/orders', body: 'qty=1' }), 502, 'WARD_PROXY_UPSTREAM_FAILED');
    expect(a.seen).toHaveLength(1);
    expect(b.seen).toHaveLength(0);
  });

  it('a GET that failed after sending is retried on another endpoint while the budget allows', async () => {
    const a = await startServer('a', reset);
    const b = await startServer('b');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a'), endpointAt(b.address, 'api-b')] });
    const answer = await send(h.port, { path: 'http://api.shop:8080/x' });
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('hello from b');
    expect(a.seen).toHaveLength(1);
    expect(await h.retries('retried')).toBe(1);
  });

  it('with the retry budget exhausted, a GET that failed after sending is not retried → 502', async () => {
    const a = await startServer('a', reset);
    const b = await startServer('b');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a'), endpointAt(b.address, 'api-b')], budget: { ratio: 0, minPerSecond: 0 } });
    expectRefusal(await send(h.port, { path: 'http://api.shop:8080/x' }), 502, 'WARD_PROXY_UPSTREAM_FAILED');
    expect(a.seen).toHaveLength(1);
    expect(b.seen).toHaveLength(0);
    expect(await h.retries('budget-exhausted')).toBe(1);
    expect(await h.retries('retried')).toBe(0);
  });

  /** A pool whose every connection attempt fails before anything is sent, as Upstreams reports it. */
  const refusing = (address: string) => (ep: BalancerEndpoint) =>
    ep.address === address
      ? new Pool(`http://${ep.address}`, { connect: (_opts, cb) => cb(new ConnectFailure('connect', `connect failure to ${ep.workload} at ${ep.address}: ECONNREFUSED`), null) })
      : undefined;

  it('a connect failure on the first endpoint → the GET goes to the other one, even with no retry budget', async () => {
    const b = await startServer('b');
    const dead = '127.0.0.1:9';
    const h = await startOutbound({ api: [endpointAt(dead, 'api-a'), endpointAt(b.address, 'api-b')], budget: { ratio: 0, minPerSecond: 0 }, poolFor: refusing(dead) });
    const answer = await send(h.port, { path: 'http://api.shop:8080/x' });
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('hello from b');
    expect(h.poolCalls.map((c) => c.address)).toEqual([dead, b.address]);
  });

  it('a connect failure on the first endpoint → a POST with a body goes to the other one, body intact', async () => {
    const b = await startServer('b');
    const dead = '127.0.0.1:9';
    const h = await startOutbound({ api: [endpointAt(dead, 'api-a'), endpointAt(b.address, 'api-b')], poolFor: refusing(dead) });
    const answer = await send(h.port, { method: 'POST', path: 'http://api.shop:8080/orders', body: 'qty=2' });
    expect(answer.status).toBe(200);
    expect(b.seen).toHaveLength(1);
    expect(b.seen[0]).toMatchObject({ method: 'POST', body: 'qty=2' });
  });

  it('every endpoint failing → 502; the endpoints are then ejected → 503 WARD_PROXY_NO_ENDPOINTS', async () => {
    const d1 = '127.0.0.1:9';
    const d2 = '127.0.0.1:7';
    const pools = (ep: BalancerEndpoint) => refusing(ep.address)(ep);
    const h = await startOutbound({ api: [endpointAt(d1, 'api-a'), endpointAt(d2, 'api-b')], poolFor: pools });
    const first = await send(h.port, { path: 'http://api.shop:8080/x' });
    expectRefusal(first, 502, 'WARD_PROXY_UPSTREAM_FAILED');
    expect(first.body).toContain('every endpoint tried for api.shop failed');
    expect(h.poolCalls.map((c) => c.address)).toEqual([d1, d2]);
    const second = await send(h.port, { path: 'http://api.shop:8080/x' });
    expectRefusal(second, 503, 'WARD_PROXY_NO_ENDPOINTS');
    expect(second.body).toContain('all ejected');
  });
});

describe('OutboundListener: limits', () => {
  it('past maxPending requests in flight → 503 WARD_PROXY_OVERLOADED; the slot is released when the request ends', async () => {
    let hold = true;
    const held: ServerResponse[] = [];
    let arrived!: () => void;
    const firstArrived = new Promise<void>((r) => (arrived = r));
    const a = await startServer('a', (_req, res) => {
      if (!hold) return void res.end('fast');
      held.push(res);
      arrived();
    });
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')], limits: { maxPending: 1 } });
    const slow = send(h.port, { path: 'http://api.shop:8080/slow' });
    await firstArrived;
    expectRefusal(await send(h.port, { path: 'http://api.shop:8080/second' }), 503, 'WARD_PROXY_OVERLOADED');
    expect(a.seen.map((s) => s.url)).toEqual(['/slow']);
    hold = false;
    held[0].end('slow done');
    expect(await slow).toMatchObject({ status: 200, body: 'slow done' });
    expect(await send(h.port, { path: 'http://api.shop:8080/third' })).toMatchObject({ status: 200, body: 'fast' });
  });

  it('a failed request releases its pending slot too', async () => {
    const a = await startServer('a', reset);
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')], limits: { maxPending: 1 } });
    for (let i = 0; i < 3; i++) expectRefusal(await send(h.port, { path: 'http://api.shop:8080/x' }), 502, 'WARD_PROXY_UPSTREAM_FAILED');
  });
});

// ---- CONNECT -----------------------------------------------------------------------------------

/** A raw CONNECT on its own connection; resolves with the socket and the response head (and any bytes after it). */
async function connectTo(port: number, target: string, early = ''): Promise<{ socket: Socket; head: string; rest: string }> {
  const socket = netConnect(port, '127.0.0.1');
  onTestFinished(() => void socket.destroy());
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  socket.write(`CONNECT ${target} HTTP/1.1\r\nhost: ${target}\r\n\r\n${early}`);
  const text = await readUntil(socket, (t) => t.includes('\r\n\r\n'));
  const end = text.indexOf('\r\n\r\n') + 4;
  return { socket, head: text.slice(0, end), rest: text.slice(end) };
}

describe('OutboundListener: CONNECT', () => {
  it('to a resolved service → 200, then bytes flow both ways through the tunnel', async () => {
    const echo = await startEcho();
    const h = await startOutbound({ db: [endpointAt(echo.address, 'db-0')] });
    const { socket, head, rest } = await connectTo(h.port, 'db.shop:5432', 'early bytes;');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    // Bytes sent right behind the CONNECT request (in the same packet) are not lost.
    if (!rest.includes('early bytes;')) await readUntil(socket, (t) => (rest + t).includes('early bytes;'));
    const back = readUntil(socket, (t) => t.includes('select 1;'));
    socket.write('select 1;');
    await back;
    expect(h.tunnelCalls).toEqual([{ source: WEB_ID, address: echo.address, port: 15432 }]);
    // The client leaving tears the upstream down.
    const upstreamClosed = once(echo.sockets[0], 'close');
    socket.destroy();
    await upstreamClosed;
  });

  it('to an unknown service → 502 WARD_PROXY_UNKNOWN_SERVICE and the connection is closed', async () => {
    const h = await startOutbound();
    const { socket, head, rest } = await connectTo(h.port, 'nope.shop:5432');
    expect(head).toMatch(/^HTTP\/1\.1 502 /);
    expect(head).toMatch(/\r\nx-ward-error: WARD_PROXY_UNKNOWN_SERVICE\r\n/);
    // The refusal closes the connection: everything after the head is the body.
    let body = rest;
    socket.setEncoding('latin1');
    socket.on('data', (c: string) => (body += c));
    if (!socket.readableEnded) await once(socket, 'end');
    expect(body).toContain('nope.shop is not a mesh service');
    expect(h.tunnelCalls).toHaveLength(0);
  });

  it('to a service port that does not exist → 502; without a port → 400', async () => {
    const echo = await startEcho();
    const h = await startOutbound({ db: [endpointAt(echo.address, 'db-0')] });
    expect((await connectTo(h.port, 'db.shop:5433')).head).toMatch(/^HTTP\/1\.1 502 [^]*x-ward-error: WARD_PROXY_UNKNOWN_SERVICE/);
    expect((await connectTo(h.port, 'db.shop')).head).toMatch(/^HTTP\/1\.1 400 [^]*x-ward-error: WARD_PROXY_REQUEST_INVALID/);
  });

  // A tunnel client may send its last bytes, then FIN, and wait for the answer (`nc -N`, many
  // one-shot TCP clients): the listener is half-open so the answer still arrives.
  it('a tunnel client that half-closes still gets the answer', async () => {
    const echo = await startEcho();
    const h = await startOutbound({ db: [endpointAt(echo.address, 'db-0')] });
    const { socket, head } = await connectTo(h.port, 'db.shop:5432');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    const answer = readUntil(socket, (t) => t === 'last words');
    socket.end('last words');
    expect(await answer).toBe('last words');
  });

  it('a connect failure on the first endpoint → the tunnel goes to the other one', async () => {
    const echo = await startEcho();
    const closed = createNetServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const deadAddress = `127.0.0.1:${(closed.address() as AddressInfo).port}`;
    closed.close();
    await once(closed, 'close');
    const h = await startOutbound({ db: [endpointAt(deadAddress, 'db-dead'), endpointAt(echo.address, 'db-0')] });
    const { socket, head } = await connectTo(h.port, 'db.shop:5432');
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    expect(h.tunnelCalls.map((c) => c.address)).toEqual([deadAddress, echo.address]);
    const back = readUntil(socket, (t) => t === 'hi');
    socket.write('hi');
    await back;
  });
});

// ---- h2c ---------------------------------------------------------------------------------------

describe('OutboundListener: HTTP/2 with prior knowledge', () => {
  it('answers a request whose :authority names the service', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    const session = http2Connect(`http://127.0.0.1:${h.port}`);
    onTestFinished(() => void session.destroy());
    session.on('error', () => undefined);
    const stream = session.request({ ':method': 'GET', ':path': '/h2/items?x=1', ':authority': 'api.shop:8080', 'x-keep': 'yes' });
    const [headers] = (await once(stream, 'response')) as [Record<string, string | number>];
    let body = '';
    stream.setEncoding('utf8');
    stream.on('data', (c: string) => (body += c));
    await once(stream, 'end');
    expect(headers[':status']).toBe(200);
    expect(body).toBe('hello from a');
    expect(a.seen).toHaveLength(1);
    expect(a.seen[0].url).toBe('/h2/items?x=1');
    expect(a.seen[0].headers.host).toBe('api.shop:8080');
    expect(a.seen[0].headers['x-keep']).toBe('yes');
    expect(Object.keys(a.seen[0].headers).filter((k) => k.startsWith(':'))).toEqual([]);
  });

  it('refuses an unknown :authority with 502 and the error code', async () => {
    const h = await startOutbound();
    const session = http2Connect(`http://127.0.0.1:${h.port}`);
    onTestFinished(() => void session.destroy());
    session.on('error', () => undefined);
    const stream = session.request({ ':method': 'GET', ':path': '/', ':authority': 'nope.shop:8080' });
    const [headers] = (await once(stream, 'response')) as [Record<string, string | number>];
    stream.resume();
    await once(stream, 'end');
    expect(headers[':status']).toBe(502);
    expect(headers['x-ward-error']).toBe('WARD_PROXY_UNKNOWN_SERVICE');
  });

  it('forwards an HTTP/2 request body', async () => {
    const a = await startServer('a');
    const h = await startOutbound({ api: [endpointAt(a.address, 'api-a')] });
    const session = http2Connect(`http://127.0.0.1:${h.port}`);
    onTestFinished(() => void session.destroy());
    session.on('error', () => undefined);
    const stream = session.request({ ':method': 'POST', ':path': '/orders', ':authority': 'api.shop:8080' });
    stream.end('qty=9');
    const [headers] = (await once(stream, 'response')) as [Record<string, string | number>];
    stream.resume();
    await once(stream, 'end');
    expect(headers[':status']).toBe(200);
    expect(a.seen[0]).toMatchObject({ method: 'POST', url: '/orders', body: 'qty=9' });
  });
});
