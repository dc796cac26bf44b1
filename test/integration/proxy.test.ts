/**
 * The node proxy end to end (DESIGN §5, §6): a real `ward control` and two real `ward proxy`
 * processes on a private loopback block, with in-process echo apps, driven the way a workload, an
 * operator or an attacker would drive them — node:http, node:http2, curl, raw sockets and raw TLS —
 * and judged by what they see: statuses, bodies, the identity the application receives, log lines
 * and metrics.
 *
 * One mesh serves the whole file (started in beforeAll, closed in afterAll): every test only reads
 * it, so sharing it costs nothing in isolation and saves a control plane and two proxies per test.
 * Failover, a control plane outage and certificate rotation are in proxy-resilience.test.ts.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect as http2Connect } from 'node:http2';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { issuerCertPath, keyPath, STATE_FILE } from '../../ca/store.js';
import { SpiffeId } from '../../core/identity/index.js';
import { createCsr, parseCertificates, PrivateKey, TrustBundle } from '../../core/pki/index.js';
import { keysFromPrivateKey, mint, mintLeaf, type Minted } from '../../core/pki/test-certs.js';
import { meshClientOptions, type Credentials } from '../../core/tls/index.js';
import { call } from '../helpers/ca.js';
import { ward } from '../helpers/cli.js';
import { mintPki } from '../helpers/pki.js';
import { httpCall, IDENTITY_HEADER, startMesh, TD, type MeshSpec, type RunningMesh } from '../helpers/proxy-mesh.js';

const id = (sa: string): SpiffeId => SpiffeId.workload(TD, 'shop', sa);
const WEB = id('web');
const OPS = id('ops');
const API = id('api');
const FILES = id('files');
const PROBE = id('probe');

const policy = (name: string, spec: Record<string, unknown>): Record<string, unknown> => ({
  apiVersion: 'security.ward.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name, namespace: 'shop' },
  spec,
});

/**
 * node-a runs the callers (web, ops), node-b the services. node-c is never started: the test joins
 * as node-c itself to hold a genuine mesh certificate (probe's) for dialing inbound ports directly.
 */
const SPEC: MeshSpec = {
  nodes: [{ name: 'node-a' }, { name: 'node-b' }, { name: 'node-c' }],
  workloads: [
    { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', ports: [8080], labels: { app: 'web' } },
    { name: 'ops-1', namespace: 'shop', serviceAccount: 'ops', node: 'node-a', ports: [8080], labels: { app: 'ops' } },
    { name: 'api-1', namespace: 'shop', serviceAccount: 'api', node: 'node-b', ports: [9090], labels: { app: 'api' } },
    { name: 'files-1', namespace: 'shop', serviceAccount: 'files', node: 'node-b', ports: [9191], labels: { app: 'files' } },
    { name: 'echo-1', namespace: 'shop', serviceAccount: 'echo', node: 'node-b', ports: [7000], labels: { app: 'echo' }, app: 'tcp' },
    { name: 'probe-1', namespace: 'shop', serviceAccount: 'probe', node: 'node-c', ports: [8080], labels: { app: 'probe' }, app: 'none' },
  ],
  services: [
    { name: 'api', namespace: 'shop', ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }], selector: { app: 'api' } },
    { name: 'files', namespace: 'shop', ports: [{ name: 'http', port: 80, targetPort: 9191, protocol: 'http' }], selector: { app: 'files' } },
    { name: 'echo', namespace: 'shop', ports: [{ name: 'tcp', port: 7000, targetPort: 7000, protocol: 'tcp' }], selector: { app: 'echo' } },
    // Selects nothing: a known name with no endpoints.
    { name: 'ghost', namespace: 'shop', ports: [{ name: 'http', port: 8080, targetPort: 8080, protocol: 'http' }], selector: { app: 'ghost' } },
  ],
  policies: [
    policy('api-readers', {
      selector: { service: 'api' },
      action: 'ALLOW',
      rules: [{ from: [{ identities: [WEB.toString()] }], to: [{ methods: ['GET', 'HEAD'] }] }],
    }),
    policy('files-no-admin', {
      selector: { service: 'files' },
      action: 'DENY',
      rules: [{ to: [{ paths: ['/admin', '/admin/*'] }] }],
    }),
    policy('echo-deny-ops', {
      selector: { service: 'echo' },
      action: 'DENY',
      rules: [{ from: [{ identities: [OPS.toString()] }] }],
    }),
  ],
};

const INBOUND_PORT = 15008;
const OUTBOUND_PORT = 15001;
/** Bound on any single exchange: a hang is a failure, never a pass. */
const EXCHANGE_TIMEOUT_MS = 5_000;

let mesh: RunningMesh;
let bundle: TrustBundle;
/** probe-1's certificate, obtained as node-c would: join with a token, then POST /v1/issue. */
let probe: Credentials;

beforeAll(async () => {
  mesh = await startMesh(SPEC, { cleanup: 'manual' });
  await Promise.all([mesh.startProxy('node-a'), mesh.startProxy('node-b')]);
  await mesh.waitReady();
  // Ready means node-a's own workloads are served; the services it calls live on node-b and are
  // published once node-b connected with their certificates. Nothing announces that: poll, bounded.
  await vi.waitFor(
    async () => {
      const st = (await mesh.state('node-a')) as { services: { service: string; endpoints: unknown[] }[] };
      const count = (s: string): number => st.services.find((x) => x.service === s)?.endpoints.length ?? 0;
      expect({ api: count('api.shop'), files: count('files.shop'), echo: count('echo.shop') }).toEqual({ api: 1, files: 1, echo: 1 });
    },
    { timeout: 20_000, interval: 100 },
  );
  bundle = TrustBundle.fromPem(TD, await readFile(mesh.bundleFile, 'utf8'));
  probe = await joinAndIssue('node-c', PROBE);
}, 60_000);

afterAll(async () => {
  await mesh?.close();
});

// ---- helpers -----------------------------------------------------------------------------------

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** What the echo app answers: what it received. */
interface Echoed {
  workload: string;
  method: string;
  url: string;
  identity: string | null;
  body: string;
}

/** One request through a workload's outbound proxy with node:http, which sends `path` byte for byte. */
function viaProxy(workload: string, path: string, o: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: mesh.workloadAddress(workload), port: OUTBOUND_PORT, method: o.method ?? 'GET', path, headers: o.headers, agent: false, timeout: EXCHANGE_TIMEOUT_MS },
      (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (s: string) => (body += s));
        res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.once('error', reject);
      },
    );
    req.once('timeout', () => req.destroy(new Error(`no answer within ${EXCHANGE_TIMEOUT_MS} ms: ${path}`)));
    req.once('error', reject);
    req.end(o.body);
  });
}

/** Writes `bytes` on a fresh TCP connection and collects everything until the peer closes. */
function rawExchange(host: string, port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ host, port });
    const chunks: Buffer[] = [];
    s.setTimeout(EXCHANGE_TIMEOUT_MS, () => s.destroy(new Error(`no close within ${EXCHANGE_TIMEOUT_MS} ms after ${JSON.stringify(bytes.slice(0, 80))}`)));
    s.once('connect', () => s.write(bytes));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('error', reject);
    s.once('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

/** A raw HTTP/1.1 request to a workload's outbound, `target` exactly as written on the request line. */
async function rawViaProxy(workload: string, target: string, host: string): Promise<{ status: number; head: string; body: string }> {
  const text = await rawExchange(mesh.workloadAddress(workload), OUTBOUND_PORT, `GET ${target} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
  const split = text.indexOf('\r\n\r\n');
  return { status: m ? Number(m[1]) : 0, head: text.slice(0, split), body: text.slice(split + 4) };
}

function echoed(a: Answer): Echoed {
  expect(a.headers['content-type'], `not an answer of the echo app: ${a.status} ${a.body}`).toBe('application/json');
  return JSON.parse(a.body) as Echoed;
}

function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '10', ...args], { timeout: 15_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

/** A CONNECT tunnel through a workload's outbound: the proxy's answer head and the open socket. */
async function connectTunnel(workload: string, authority: string): Promise<{ head: string; socket: Socket; rest: Buffer }> {
  const socket = netConnect({ host: mesh.workloadAddress(workload), port: OUTBOUND_PORT });
  socket.setTimeout(EXCHANGE_TIMEOUT_MS, () => socket.destroy(new Error(`tunnel to ${authority}: nothing within ${EXCHANGE_TIMEOUT_MS} ms`)));
  await once(socket, 'connect');
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  let buf = Buffer.alloc(0);
  while (buf.indexOf('\r\n\r\n') === -1) {
    const chunk = await new Promise<Buffer | undefined>((resolve, reject) => {
      const onData = (c: Buffer): void => {
        cleanup();
        resolve(c);
      };
      const onClose = (): void => {
        cleanup();
        resolve(undefined);
      };
      const onError = (e: Error): void => {
        cleanup();
        reject(e);
      };
      const cleanup = (): void => {
        socket.off('data', onData);
        socket.off('close', onClose);
        socket.off('error', onError);
      };
      socket.on('data', onData);
      socket.once('close', onClose);
      socket.once('error', onError);
    });
    if (!chunk) break;
    buf = Buffer.concat([buf, chunk]);
  }
  socket.pause();
  const end = buf.indexOf('\r\n\r\n');
  return { head: buf.subarray(0, end === -1 ? buf.length : end).toString('latin1'), socket, rest: end === -1 ? Buffer.alloc(0) : buf.subarray(end + 4) };
}

/** Reads from a tunnel until `done(data)` holds (resolves what came) or the tunnel closed (resolves what came, closed). */
function readTunnel(socket: Socket, first: Buffer, done: (data: Buffer) => boolean): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    let data = first;
    const finish = (closed: boolean): void => {
      socket.off('data', onData);
      socket.off('close', onClose);
      resolve({ data, closed });
    };
    const onData = (c: Buffer): void => {
      data = Buffer.concat([data, c]);
      if (done(data)) finish(false);
    };
    const onClose = (): void => finish(true);
    socket.on('error', () => undefined);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.resume();
    if (done(data)) finish(false);
  });
}

interface Dial {
  /** The client finished its side of the TLS handshake. */
  secure: boolean;
  error?: Error;
  /** Everything the server sent after the handshake. */
  response: string;
}

/**
 * Dials a node's inbound port directly with node:tls and, once the handshake is done, writes one
 * HTTP request for files.shop. Resolves when the server closes (the request says Connection: close).
 */
function dialInbound(node: string, o: { servername: string; tls: ConnectionOptions; path?: string }): Promise<Dial> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ ...o.tls, host: mesh.nodeAddress(node), port: INBOUND_PORT, servername: o.servername, ALPNProtocols: ['http/1.1'] });
    let secure = false;
    let error: Error | undefined;
    const chunks: Buffer[] = [];
    socket.setTimeout(EXCHANGE_TIMEOUT_MS, () => socket.destroy(new Error(`TIMEOUT: the inbound neither answered nor closed within ${EXCHANGE_TIMEOUT_MS} ms`)));
    socket.once('secureConnect', () => {
      secure = true;
      socket.write(`GET ${o.path ?? '/direct'} HTTP/1.1\r\nHost: files.shop\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (e) => (error ??= e));
    socket.once('close', () => resolve({ secure, error, response: Buffer.concat(chunks).toString('latin1') }));
  });
}

const FILES_SNI = '9191.files-1.shop.ward';

async function metricsText(node: string): Promise<string> {
  const r = await httpCall(`${mesh.adminUrl(node)}/metrics`);
  expect(r.status).toBe(200);
  return r.body;
}

/** The sum of the series of `name` whose labels include `labels`. */
function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(l[1], l[2]);
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[3]);
  }
  return sum;
}

/** Waits (bounded) until the counter of a node grew by at least `by` over `before`. */
async function counterGrew(node: string, name: string, labels: Record<string, string>, before: number, by = 1): Promise<number> {
  let now = before;
  await vi.waitFor(
    async () => {
      now = metricValue(await metricsText(node), name, labels);
      expect(now - before, `${name}${JSON.stringify(labels)}`).toBeGreaterThanOrEqual(by);
    },
    { timeout: 5_000, interval: 50 },
  );
  return now;
}

/** The JSON log records a proxy wrote on standard error. */
function logRecords(node: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of mesh.proxies.get(node)!.output.stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line still being written
    }
  }
  return out;
}

/** Waits (bounded: the log is written asynchronously) for a record of `node` matching `pred`. */
async function logRecord(node: string, what: string, pred: (r: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined;
  await vi.waitFor(
    () => {
      found = logRecords(node).find(pred);
      if (!found) throw new Error(`no log record of ${node}: ${what}\n${mesh.proxies.get(node)!.output.stderr.slice(-2000)}`);
    },
    { timeout: 5_000, interval: 50 },
  );
  return found!;
}

/** Joins as `node` with a fresh token (POST /v1/join with a CSR), then obtains `identity` (POST /v1/issue). */
async function joinAndIssue(node: string, identity: SpiffeId): Promise<Credentials> {
  const t = await ward(['token', 'create', '--state', join(mesh.dir, 'state'), '--node', node]);
  expect(t.code, t.stderr).toBe(0);
  const nodeKey = PrivateKey.generate();
  const joined = await call(mesh.ports.ca, bundle, 'POST', '/v1/join', { body: { token: t.stdout.trim(), csr: createCsr(nodeKey) } });
  expect(joined.status, joined.text).toBe(200);
  const nodeCreds: Credentials = { id: SpiffeId.parse(joined.json.id), chainPem: joined.json.certificate, key: nodeKey, bundle };
  const key = PrivateKey.generate();
  const issued = await call(mesh.ports.ca, bundle, 'POST', '/v1/issue', { body: { csr: createCsr(key), identity: identity.toString() }, creds: nodeCreds });
  expect(issued.status, issued.text).toBe(200);
  expect(issued.json.id).toBe(identity.toString());
  return { id: identity, chainPem: issued.json.certificate, key, bundle };
}

/** The mesh's active issuing CA, read from the control plane's state directory (ca/store.ts layout). */
async function meshIssuer(): Promise<{ issuer: Minted; chainPem: string }> {
  const stateDir = join(mesh.dir, 'state');
  const state = JSON.parse(await readFile(join(stateDir, STATE_FILE), 'utf8')) as { issuers: { fingerprint: string; state: string }[] };
  const active = state.issuers.find((i) => i.state === 'active')!;
  const chainPem = await readFile(issuerCertPath(stateDir, active.fingerprint), 'utf8');
  const key = PrivateKey.from(await readFile(keyPath(stateDir, active.fingerprint), 'utf8'));
  return { issuer: { cert: parseCertificates(chainPem)[0], keys: await keysFromPrivateKey(key) }, chainPem };
}

// ---- tests -------------------------------------------------------------------------------------

describe('HTTP across nodes through the outbound proxy', () => {
  it('absolute-form (node:http): the app on the other node answers and sees the caller identity, not a forged one', async () => {
    const before = mesh.seen.length;
    const r = await viaProxy('web-1', 'http://api.shop:8080/items?page=2', { headers: { [IDENTITY_HEADER]: 'spiffe://cluster.local/ns/shop/sa/admin' } });
    expect(r.status, r.body).toBe(200);
    expect(r.headers['x-served-by']).toBe('api-1');
    expect(echoed(r)).toMatchObject({ workload: 'api-1', method: 'GET', url: '/items?page=2', identity: WEB.toString() });
    // Exactly one copy of the header reached the app: the forged one was dropped, not appended to.
    const seen = mesh.seen.slice(before).filter((s) => s.url === '/items?page=2');
    expect(seen).toHaveLength(1);
    expect(seen[0].headers[IDENTITY_HEADER]).toBe(WEB.toString());
    expect(seen[0].headers.host).toBe('api.shop:8080');

    // The listener a connection arrives on says who speaks: ops-1's outbound presents ops's certificate.
    const ops = await viaProxy('ops-1', 'http://files.shop/whoami');
    expect(echoed(ops)).toMatchObject({ workload: 'files-1', url: '/whoami', identity: OPS.toString() });
  });

  it('curl -x (http_proxy): 200 from the app with the caller identity; a forged header is replaced', async () => {
    const r = await curl(['-i', '-x', mesh.proxyUrl('web-1'), '-H', `${IDENTITY_HEADER}: ${OPS}`, 'http://api.shop:8080/curl?q=1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 200 /);
    const body = JSON.parse(r.stdout.slice(r.stdout.indexOf('\r\n\r\n') + 4)) as Echoed;
    expect(body).toMatchObject({ workload: 'api-1', url: '/curl?q=1', identity: WEB.toString() });
  });

  it.each(['api.shop', 'api.shop.svc', 'api.shop.svc.cluster.local', 'API.SHOP', 'Api.Shop.Svc.Cluster.Local', 'api.shop.svc.cluster.local.'])('the name %s resolves to the api service', async (name) => {
    const r = await viaProxy('web-1', `http://${name}:8080/names`);
    expect(r.status, r.body).toBe(200);
    expect(echoed(r)).toMatchObject({ workload: 'api-1', url: '/names', identity: WEB.toString() });
  });

  it('refuses what it cannot route, with a status and an x-ward-error code, and nothing reaches an app', async () => {
    const before = mesh.seen.length;
    const unknown = await viaProxy('web-1', 'http://nope.shop:8080/x');
    expect(unknown.status).toBe(502);
    expect(unknown.headers['x-ward-error']).toBe('WARD_PROXY_UNKNOWN_SERVICE');
    expect(unknown.body).toContain('nope.shop is not a mesh service');

    const otherNamespace = await viaProxy('web-1', 'http://api.default:8080/x');
    expect(otherNamespace.status).toBe(502);
    expect(otherNamespace.headers['x-ward-error']).toBe('WARD_PROXY_UNKNOWN_SERVICE');

    const port = await viaProxy('web-1', 'http://api.shop:9999/x');
    expect(port.status).toBe(502);
    expect(port.headers['x-ward-error']).toBe('WARD_PROXY_UNKNOWN_SERVICE');
    expect(port.body).toContain('has no port 9999');

    // The target port is not a service port: naming it is a mistake, not a way around the service.
    const targetPort = await viaProxy('web-1', 'http://api.shop:9090/x');
    expect(targetPort.status).toBe(502);

    const empty = await viaProxy('web-1', 'http://ghost.shop:8080/x');
    expect(empty.status).toBe(503);
    expect(empty.headers['x-ward-error']).toBe('WARD_PROXY_NO_ENDPOINTS');

    const tls = await viaProxy('web-1', 'https://api.shop:8080/x');
    expect(tls.status).toBe(400);
    expect(tls.headers['x-ward-error']).toBe('WARD_PROXY_REQUEST_INVALID');
    expect(tls.body).toContain('CONNECT');

    expect(mesh.seen.slice(before)).toEqual([]);
  });
});

describe('HTTP/2 from the workload, and request bodies', () => {
  it('h2c with prior knowledge (node:http2): :authority names the service', async () => {
    const session = http2Connect(mesh.proxyUrl('web-1'));
    try {
      session.on('error', () => undefined);
      const stream = session.request({ ':method': 'GET', ':path': '/h2?x=1', ':authority': 'api.shop:8080', [IDENTITY_HEADER]: OPS.toString() });
      stream.setTimeout(EXCHANGE_TIMEOUT_MS, () => stream.destroy(new Error(`no answer within ${EXCHANGE_TIMEOUT_MS} ms`)));
      const [headers] = (await once(stream, 'response')) as [Record<string, string | number>];
      let body = '';
      stream.setEncoding('utf8').on('data', (s: string) => (body += s));
      await once(stream, 'end');
      expect(headers[':status'], body).toBe(200);
      expect(JSON.parse(body)).toMatchObject({ workload: 'api-1', url: '/h2?x=1', identity: WEB.toString() });

      // A POST with a body on the same session, to a service that allows it.
      const payload = 'h2 body '.repeat(20_000);
      const post = session.request({ ':method': 'POST', ':path': '/upload-h2', ':authority': 'files.shop' });
      post.setTimeout(EXCHANGE_TIMEOUT_MS, () => post.destroy(new Error(`no answer within ${EXCHANGE_TIMEOUT_MS} ms`)));
      post.end(payload);
      const [ph] = (await once(post, 'response')) as [Record<string, string | number>];
      let pbody = '';
      post.setEncoding('utf8').on('data', (s: string) => (pbody += s));
      await once(post, 'end');
      expect(ph[':status']).toBe(200);
      expect(JSON.parse(pbody)).toMatchObject({ workload: 'files-1', method: 'POST', identity: WEB.toString(), body: payload });
    } finally {
      session.close();
    }
  });

  it('curl --http2-prior-knowledge through the outbound', async () => {
    // curl (7.88) ignores prior knowledge with -x ("due to proxy") and speaks HTTP/1.1 to a proxy;
    // --connect-to sends h2c straight to the outbound, with :authority naming the service.
    const r = await curl(['-i', '--http2-prior-knowledge', '--connect-to', `api.shop:8080:${mesh.workloadAddress('web-1')}:${OUTBOUND_PORT}`, 'http://api.shop:8080/curl-h2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^HTTP\/2 200 /);
    const body = JSON.parse(r.stdout.slice(r.stdout.indexOf('\r\n\r\n') + 4)) as Echoed;
    expect(body).toMatchObject({ workload: 'api-1', url: '/curl-h2', identity: WEB.toString() });
  });

  it('a POST body arrives intact (content-length and chunked)', async () => {
    // Printable ASCII (the echo app returns the body inside JSON), well past any single buffer.
    const payload = Array.from({ length: 300_000 }, (_, i) => String.fromCharCode(32 + ((i * 7919) % 95))).join('');
    const sized = await viaProxy('web-1', 'http://files.shop/upload', { method: 'POST', body: payload, headers: { 'content-type': 'text/plain', 'content-length': String(payload.length) } });
    expect(sized.status).toBe(200);
    expect(echoed(sized)).toMatchObject({ workload: 'files-1', method: 'POST', url: '/upload', identity: WEB.toString() });
    expect(echoed(sized).body).toBe(payload);

    const chunked = await viaProxy('web-1', 'http://files.shop/upload-chunked', { method: 'PUT', body: payload, headers: { 'transfer-encoding': 'chunked' } });
    expect(chunked.status).toBe(200);
    expect(echoed(chunked).body).toBe(payload);

    const text = 'curl body: spaces, & symbols = kept; "quotes" too';
    const viaCurl = await curl(['-x', mesh.proxyUrl('web-1'), '--data-binary', text, 'http://files.shop/upload-curl']);
    expect(viaCurl.code, viaCurl.stderr).toBe(0);
    expect(JSON.parse(viaCurl.stdout)).toMatchObject({ workload: 'files-1', method: 'POST', identity: WEB.toString(), body: text });
  });
});

describe('raw TCP across nodes through CONNECT', () => {
  it('a tunnel to a tcp service carries bytes both ways', async () => {
    const t = await connectTunnel('web-1', 'echo.shop:7000');
    try {
      expect(t.head).toMatch(/^HTTP\/1\.1 200 /);
      const data = Buffer.alloc(200_000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 131) & 0xff;
      t.socket.write(data);
      const back = await readTunnel(t.socket, t.rest, (d) => d.length >= data.length);
      expect(back.closed).toBe(false);
      expect(back.data.equals(data)).toBe(true);
    } finally {
      t.socket.destroy();
    }
  });

  it('CONNECT to a name that is not a mesh service is refused', async () => {
    const t = await connectTunnel('web-1', 'nope.shop:7000');
    try {
      expect(t.head).toMatch(/^HTTP\/1\.1 502 /);
      expect(t.head).toContain('x-ward-error: WARD_PROXY_UNKNOWN_SERVICE');
      const after = await readTunnel(t.socket, t.rest, () => false);
      expect(after.closed).toBe(true);
    } finally {
      t.socket.destroy();
    }
    const noPort = await connectTunnel('web-1', 'echo.shop:7001');
    noPort.socket.destroy();
    expect(noPort.head).toMatch(/^HTTP\/1\.1 502 /);
  });

  it('a TCP connection denied by policy is closed before a byte reaches the app, and the log names the policy', async () => {
    const t = await connectTunnel('ops-1', 'echo.shop:7000');
    try {
      // The tunnel to node-b is up (mutual TLS succeeded) before node-b's proxy decides, so the
      // outbound answers 200; the decision shows as the stream closing, never as an echo.
      expect(t.head).toMatch(/^HTTP\/1\.1 200 /);
      t.socket.write('hello from ops\n');
      const back = await readTunnel(t.socket, t.rest, (d) => d.toString().includes('hello from ops'));
      expect(back.closed).toBe(true);
      expect(back.data.toString()).toBe('');
    } finally {
      t.socket.destroy();
    }
    const rec = await logRecord('node-b', 'the TCP denial for ops', (r) => r.msg === 'request denied by authorization policy' && r.protocol === 'tcp' && r.source === OPS.toString());
    expect(rec).toMatchObject({ workload: 'shop/echo-1', port: 7000, reason: 'deny-policy', policy: 'shop/echo-deny-ops', rule: 0 });

    // The same service still works for a caller the policy does not name.
    const ok = await connectTunnel('web-1', 'echo.shop:7000');
    try {
      expect(ok.head).toMatch(/^HTTP\/1\.1 200 /);
      ok.socket.write('ping');
      expect((await readTunnel(ok.socket, ok.rest, (d) => d.length >= 4)).data.toString()).toBe('ping');
    } finally {
      ok.socket.destroy();
    }
  });
});

describe('authorization policy at the inbound proxy', () => {
  it('ALLOW GET from web: GET passes, POST and other callers get 403, and the log says why', async () => {
    const get = await viaProxy('web-1', 'http://api.shop:8080/v1/items');
    expect(get.status).toBe(200);
    expect(echoed(get).identity).toBe(WEB.toString());

    const metricsBefore = metricValue(await metricsText('node-b'), 'ward_proxy_authorization_decisions_total', { decision: 'deny', reason: 'no-allow-match' });
    const before = mesh.seen.length;
    const post = await viaProxy('web-1', 'http://api.shop:8080/v1/items/post-denied', { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    expect(post.status).toBe(403);
    expect(post.body).toBe('ward: denied by authorization policy\n');
    // The caller learns it was denied, not which policy denied it.
    expect(post.body).not.toContain('api-readers');

    const ops = await viaProxy('ops-1', 'http://api.shop:8080/v1/items/ops-denied');
    expect(ops.status).toBe(403);
    expect(mesh.seen.slice(before)).toEqual([]);

    const rec = await logRecord('node-b', 'the POST denial', (r) => r.msg === 'request denied by authorization policy' && r.path === '/v1/items/post-denied');
    expect(rec).toMatchObject({ source: WEB.toString(), workload: 'shop/api-1', method: 'POST', protocol: 'http', reason: 'no-allow-match' });
    expect(rec.allowPolicies).toEqual(['shop/api-readers']);
    const recOps = await logRecord('node-b', 'the ops denial', (r) => r.msg === 'request denied by authorization policy' && r.path === '/v1/items/ops-denied');
    expect(recOps).toMatchObject({ source: OPS.toString(), method: 'GET', reason: 'no-allow-match' });
    await counterGrew('node-b', 'ward_proxy_authorization_decisions_total', { decision: 'deny', reason: 'no-allow-match', protocol: 'http' }, metricsBefore, 2);
  });

  // Each spelling, written raw on the request line to web-1's outbound; every one names /admin.
  it.each([
    ['/admin'],
    ['/admin/'],
    ['/admin/users'],
    ['/x/../admin'],
    ['/./admin'],
    ['//admin'],
    ['/admin/./x'],
    ['/%61dmin'],
    ['/%61%64%6d%69%6e/x'],
    ['/admin#frag'],
    ['/public/%2e%2e/admin'],
    ['/../admin'],
    ['/admin?x=/public'],
  ])('DENY /admin and /admin/*: %s is denied', async (target) => {
    const before = mesh.seen.length;
    const r = await rawViaProxy('web-1', `http://files.shop${target}`, 'files.shop');
    expect(r.status, `${target}\n${r.head}\n${r.body}`).toBe(403);
    expect(r.body).toContain('denied by authorization policy');
    expect(mesh.seen.slice(before)).toEqual([]);
  });

  it('the inbound proxy enforces on its own: the same spellings sent straight to node-b over mutual TLS', async () => {
    // No outbound in between (whose HTTP parser might have tidied the target): probe's own certificate.
    const tls = meshClientOptions({ bundle, expectedId: FILES, creds: probe });
    const status = async (path: string): Promise<string> => {
      const d = await dialInbound('node-b', { servername: FILES_SNI, tls, path });
      return d.response.slice(0, d.response.indexOf('\r\n'));
    };
    for (const path of ['/admin#frag', '/x/../admin', '/%61dmin', '//admin/x']) expect(await status(path), path).toBe('HTTP/1.1 403 Forbidden');
    for (const path of ['/x%2Fadmin', '/x\\admin']) expect(await status(path), path).toBe('HTTP/1.1 400 Bad Request');
    expect(await status('/ADMIN')).toBe('HTTP/1.1 200 OK');
  });

  it('a DENY is logged with its policy and rule, and counted', async () => {
    const before = metricValue(await metricsText('node-b'), 'ward_proxy_authorization_decisions_total', { decision: 'deny', reason: 'deny-policy', protocol: 'http' });
    const r = await rawViaProxy('ops-1', 'http://files.shop/x/../admin/logged', 'files.shop');
    expect(r.status).toBe(403);
    const rec = await logRecord('node-b', 'the DENY of /admin/logged', (x) => x.msg === 'request denied by authorization policy' && x.path === '/admin/logged');
    // The log carries the normalized path: what was decided on, not what was written.
    expect(rec).toMatchObject({ source: OPS.toString(), workload: 'shop/files-1', method: 'GET', reason: 'deny-policy', policy: 'shop/files-no-admin', rule: 0 });
    await counterGrew('node-b', 'ward_proxy_authorization_decisions_total', { decision: 'deny', reason: 'deny-policy', protocol: 'http' }, before);
  });

  it.each([
    ['/x%2Fadmin', 'encoded-slash'],
    ['/x%2fadmin', 'encoded-slash'],
    ['/x%5Cadmin', 'encoded-backslash'],
    ['/x\\admin', 'backslash'],
    ['/%00admin', 'nul-byte'],
    ['/%zzadmin', 'invalid-percent-encoding'],
  ])('%s is refused outright (400, %s)', async (target, reason) => {
    const before = mesh.seen.length;
    const r = await rawViaProxy('web-1', `http://files.shop${target}`, 'files.shop');
    expect(r.status, `${target}\n${r.head}\n${r.body}`).toBe(400);
    expect(r.head.toLowerCase()).toContain('x-ward-error: ward_proxy_request_invalid');
    expect(r.body).toContain(reason);
    expect(mesh.seen.slice(before)).toEqual([]);
  });

  it('paths are case-sensitive (normalize.ts rule 6): /ADMIN is not /admin', async () => {
    const r = await viaProxy('web-1', 'http://files.shop/ADMIN');
    expect(r.status).toBe(200);
    expect(echoed(r).url).toBe('/ADMIN');
    const mixed = await viaProxy('web-1', 'http://files.shop/Admin/x');
    expect(mixed.status).toBe(200);
  });

  it.each([
    ['/x/../ok', '/ok'],
    ['//a///b', '/a/b'],
    ['/a/./b/', '/a/b/'],
    ['/%61pi/%7Euser', '/api/~user'],
    ['/keep%20space', '/keep%20space'],
    ['/lower%3fhex', '/lower%3Fhex'],
    ['/q/../r?x=%2F&y=../z', '/r?x=%2F&y=../z'],
    ['/frag#/../../admin', '/frag'],
  ])('the app receives the normalized path: %s arrives as %s', async (target, expected) => {
    const r = await rawViaProxy('web-1', `http://files.shop${target}`, 'files.shop');
    expect(r.status, `${target}\n${r.head}\n${r.body}`).toBe(200);
    const seen = mesh.seen.filter((s) => s.workload === 'files-1').at(-1);
    expect(seen?.url).toBe(expected);
  });
});

describe('refusals at the inbound port (direct TLS to nodeAddress:15008)', () => {
  it('a genuine mesh certificate gets through: the control for every refusal below', async () => {
    const d = await dialInbound('node-b', { servername: FILES_SNI, tls: meshClientOptions({ bundle, expectedId: FILES, creds: probe }) });
    expect(d.error).toBeUndefined();
    expect(d.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(d.response).toContain(`"identity":"${PROBE}"`);
  });

  it('(a) a client certificate from another CA (same trust domain) never gets an answer', async () => {
    const before = metricValue(await metricsText('node-b'), 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'bad-certificate' });
    const other = mintPki(TD).credentials(WEB);
    const d = await dialInbound('node-b', { servername: FILES_SNI, tls: meshClientOptions({ bundle, expectedId: FILES, creds: other }) });
    expect(d.error?.message ?? '').not.toMatch(/^TIMEOUT/);
    expect(d.response).not.toContain('HTTP/');
    await counterGrew('node-b', 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'bad-certificate' }, before);
    const rec = await logRecord('node-b', 'the other-CA refusal', (r) => r.msg === 'inbound handshake refused' && r.reason === 'bad-certificate');
    expect(rec.err).toMatch(/^client certificate did not verify: /);
  });

  it('(b) secure naming: the client refuses a server that is not the identity it expects', async () => {
    // node-b presents api-1's certificate for this name; a client expecting web must not talk to it.
    const wrong = await dialInbound('node-b', { servername: '9090.api-1.shop.ward', tls: meshClientOptions({ bundle, expectedId: WEB, creds: probe }) });
    expect(wrong.secure).toBe(false);
    expect(wrong.error?.message).toBe(`peer certificate refused (unexpected-identity): the peer is ${API}, but ${WEB} was expected`);
    expect(wrong.response).toBe('');
    // The same name with the right expectation connects (and probe is then refused by api's policy).
    const right = await dialInbound('node-b', { servername: '9090.api-1.shop.ward', tls: meshClientOptions({ bundle, expectedId: API, creds: probe }) });
    expect(right.secure).toBe(true);
    expect(right.response).toMatch(/^HTTP\/1\.1 403 /);
  });

  it('(c) a CA certificate chaining to the mesh root, presented as a client leaf, is refused', async () => {
    const { issuer, chainPem } = await meshIssuer();
    const notBefore = new Date(Date.now() - 60_000);
    const notAfter = new Date(Date.now() + 600_000);
    // Control: a leaf signed with the same material gets through, so the refusal below is about cA.
    const leafKey = PrivateKey.generate();
    const leaf = await mintLeaf(issuer, WEB.toString(), { keys: await keysFromPrivateKey(leafKey), notBefore, notAfter });
    const good = await dialInbound('node-b', { servername: FILES_SNI, tls: meshClientOptions({ bundle, expectedId: FILES, creds: { id: WEB, chainPem: leaf.cert.pem + chainPem, key: leafKey, bundle } }) });
    expect(good.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(good.response).toContain(`"identity":"${WEB}"`);

    const before = metricValue(await metricsText('node-b'), 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'svid' });
    const caKey = PrivateKey.generate();
    const ca = await mint({
      subject: 'CN=not a leaf',
      issuer,
      keys: await keysFromPrivateKey(caKey),
      notBefore,
      notAfter,
      basicConstraints: { ca: true },
      keyUsage: { usages: ['digitalSignature', 'keyCertSign'] },
      extKeyUsage: { usages: ['serverAuth', 'clientAuth'] },
      san: { uris: [WEB.toString()], critical: false },
    });
    const d = await dialInbound('node-b', { servername: FILES_SNI, tls: meshClientOptions({ bundle, expectedId: FILES, creds: { id: WEB, chainPem: ca.cert.pem + chainPem, key: caKey, bundle } }) });
    expect(d.error?.message ?? '').not.toMatch(/^TIMEOUT/);
    expect(d.response).not.toContain('HTTP/');
    await counterGrew('node-b', 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'svid' }, before);
    const rec = await logRecord('node-b', 'the CA-as-leaf refusal', (r) => r.msg === 'inbound connection refused' && r.reason === 'svid');
    expect(rec.err).toMatch(/leaf-is-ca/);
  });

  it('(d) plaintext HTTP to the inbound port gets no HTTP answer and never reaches the app', async () => {
    const before = mesh.seen.length;
    const metric = metricValue(await metricsText('node-b'), 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'not-tls' });
    const text = await rawExchange(mesh.nodeAddress('node-b'), INBOUND_PORT, 'GET /plaintext HTTP/1.1\r\nHost: files.shop\r\nConnection: close\r\n\r\n');
    expect(text).not.toContain('HTTP/');
    expect(mesh.seen.slice(before)).toEqual([]);
    await counterGrew('node-b', 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'not-tls' }, metric);
  });

  it('(e) no client certificate at all is refused', async () => {
    const before = metricValue(await metricsText('node-b'), 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'no-client-certificate' });
    const d = await dialInbound('node-b', { servername: FILES_SNI, tls: meshClientOptions({ bundle, expectedId: FILES }) });
    expect((d.error as { code?: string } | undefined)?.code).toBe('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
    expect(d.response).not.toContain('HTTP/');
    await counterGrew('node-b', 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'no-client-certificate' }, before);
  });

  it('(f) a server name for a workload that is not on that node fails the handshake', async () => {
    const before = metricValue(await metricsText('node-b'), 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'unknown-server-name' });
    // web-1 lives on node-a; node-b must not answer for it (nor for a port web-1 does not listen on).
    for (const servername of ['8080.web-1.shop.ward', '9999.files-1.shop.ward', 'files.shop']) {
      const d = await dialInbound('node-b', { servername, tls: meshClientOptions({ bundle, creds: probe }) });
      expect(d.secure, servername).toBe(false);
      expect(d.error?.message, servername).toBe('Client network socket disconnected before secure TLS connection was established');
      expect(d.response).toBe('');
    }
    await counterGrew('node-b', 'ward_proxy_handshake_failures_total', { direction: 'inbound', reason: 'unknown-server-name' }, before, 3);
  });
});

describe('admin API', () => {
  it('/healthz and /readyz', async () => {
    for (const node of ['node-a', 'node-b']) {
      const h = await httpCall(`${mesh.adminUrl(node)}/healthz`);
      expect(h.status).toBe(200);
      const r = await httpCall(`${mesh.adminUrl(node)}/readyz`);
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body)).toEqual({ ready: true, reasons: [] });
    }
  });

  it('/metrics: requests, decisions (a denial shows as decision="deny"), handshake failures, certificate expiry', async () => {
    const denied = await viaProxy('web-1', 'http://api.shop:8080/metrics-denied', { method: 'DELETE' });
    expect(denied.status).toBe(403);
    await vi.waitFor(
      async () => {
        const b = await metricsText('node-b');
        expect(metricValue(b, 'ward_proxy_authorization_decisions_total', { decision: 'deny' })).toBeGreaterThan(0);
        expect(metricValue(b, 'ward_proxy_authorization_decisions_total', { decision: 'allow' })).toBeGreaterThan(0);
        expect(metricValue(b, 'ward_proxy_requests_total', { direction: 'inbound' })).toBeGreaterThan(0);
      },
      { timeout: 5_000, interval: 50 },
    );
    const a = await metricsText('node-a');
    expect(metricValue(a, 'ward_proxy_requests_total', { direction: 'outbound' })).toBeGreaterThan(0);
    const b = await metricsText('node-b');
    expect(b).toMatch(/^# TYPE ward_proxy_handshake_failures_total counter$/m);
    // One expiry per certificate held: api-1, files-1 and echo-1's workloads, and the node's own.
    for (const identity of [API, FILES, id('echo')]) {
      const v = metricValue(b, 'ward_proxy_certificate_expiry_timestamp_seconds', { identity: identity.toString() });
      expect(v * 1000, identity.toString()).toBeGreaterThan(Date.now());
      expect(v * 1000, identity.toString()).toBeLessThan(Date.now() + 25 * 3_600_000);
    }
  });

  it('/v1/state: versions, endpoints with identities, certificates without keys, policies', async () => {
    const r = await httpCall(`${mesh.adminUrl('node-a')}/v1/state`);
    expect(r.status).toBe(200);
    expect(r.body).not.toContain('PRIVATE KEY');
    const st = JSON.parse(r.body) as {
      node: string;
      configVersion: number;
      acknowledgedVersion: number;
      services: { service: string; endpoints: { address: string; identity: string; workload: string; node: string }[] }[];
      certificates: unknown;
      policies: { policy: string; action: string }[];
      workloads: { workload: string; identity: string }[];
    };
    expect(st.node).toBe('node-a');
    expect(st.configVersion).toBeGreaterThan(0);
    expect(st.acknowledgedVersion).toBeGreaterThan(0);
    expect(st.acknowledgedVersion).toBeLessThanOrEqual(st.configVersion);
    const api = st.services.find((s) => s.service === 'api.shop');
    expect(api?.endpoints).toEqual([expect.objectContaining({ address: `${mesh.nodeAddress('node-b')}:${INBOUND_PORT}`, identity: API.toString(), workload: 'shop/api-1', node: 'node-b' })]);
    expect(st.services.find((s) => s.service === 'ghost.shop')?.endpoints).toEqual([]);
    expect(st.workloads.map((w) => [w.workload, w.identity]).sort()).toEqual([
      ['shop/ops-1', OPS.toString()],
      ['shop/web-1', WEB.toString()],
    ]);
    expect(JSON.stringify(st.certificates)).toContain(WEB.toString());
    expect(JSON.stringify(st.certificates)).toContain(OPS.toString());
    expect(st.policies.map((p) => `${p.policy} ${p.action}`).sort()).toEqual(['shop/api-readers ALLOW', 'shop/echo-deny-ops DENY', 'shop/files-no-admin DENY']);
  });

  it('the admin listener is loopback only: --admin 0.0.0.0:0 is a usage error (exit status 2)', async () => {
    const r = await ward(['proxy', '--node', 'node-a', '--address', mesh.nodeAddress('node-a'), '--bundle', mesh.bundleFile, '--admin', '0.0.0.0:0']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--admin must be a loopback address');
    expect(r.stderr).toContain('0.0.0.0');
  });
});
