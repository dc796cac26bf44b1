/**
 * `ward ingress` end to end (DESIGN §7, issue 6's proof list): a real `ward control`, two real
 * `ward proxy` processes and a real `ward ingress` on loopback, driven from outside the way a
 * browser, an operator or an attacker would — curl, openssl s_client, sslscan, node:http2 and raw
 * TLS sockets — and judged by what they see: statuses, Location headers, certificates served,
 * protocol versions and suites negotiated, and what the application behind the mesh receives.
 *
 * One mesh and one ingress serve the whole file (beforeAll, cleanup 'manual'). The tests run in
 * order and only the last describe changes shared state: the certificate rotation tests replace
 * a.example.test's files (so every test before them sees its first certificate, serial 1A01).
 *
 * External certificates are minted per run with the openssl CLI: a test CA, RSA and EC leafs with
 * DNS subjectAltNames, one wildcard (*.example.test), one PKCS#12 bundle with a passphrase file.
 *
 * Not covered here: mutual TLS at the edge (`--client-ca`, which landed while this file was written;
 * no test drives it yet) and CA-issued certificates for internal names (not implemented yet).
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { connect as http2Connect } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { opensslOk, openssl } from '../helpers/openssl.js';
import { IDENTITY_HEADER, startMesh, TD, type EchoSeen, type MeshSpec, type RunningIngress, type RunningMesh } from '../helpers/proxy-mesh.js';

const INGRESS_ID = `spiffe://${TD}/ns/ward-system/sa/ward-ingress`;
const WEB_ID = `spiffe://${TD}/ns/shop/sa/web`;
/** The body limit (DEFAULT_INGRESS_LIMITS.maxBodyBytes): `ward ingress` has no flag to lower it. */
const MAX_BODY = 10 * 1024 * 1024;
/** Bound on any single exchange: a hang is a failure, never a pass. */
const EXCHANGE_TIMEOUT_MS = 10_000;

const policy = (name: string, spec: Record<string, unknown>): Record<string, unknown> => ({
  apiVersion: 'security.ward.dev/v1alpha1',
  kind: 'AuthorizationPolicy',
  metadata: { name, namespace: 'shop' },
  spec,
});

const toWeb = (path: string, pathType: 'Exact' | 'Prefix' = 'Prefix') => ({ path, pathType, service: 'web.shop', port: 80 });

/**
 * web-1 sits behind node-a's proxy, locked-1 behind node-b's; the ingress is a process of its own
 * talking to the control plane. web admits the ingress; locked admits only shop/web, so the
 * ingress's requests to it must be denied by locked-1's node proxy.
 */
const SPEC: MeshSpec = {
  nodes: [{ name: 'node-a' }, { name: 'node-b' }],
  workloads: [
    { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', ports: [8080], labels: { app: 'web' } },
    { name: 'locked-1', namespace: 'shop', serviceAccount: 'locked', node: 'node-b', ports: [8080], labels: { app: 'locked' } },
  ],
  services: [
    { name: 'web', namespace: 'shop', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'web' } },
    { name: 'locked', namespace: 'shop', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'locked' } },
  ],
  policies: [
    policy('web-allow-ingress', { selector: { service: 'web' }, action: 'ALLOW', rules: [{ from: [{ identities: [INGRESS_ID] }] }] }),
    policy('locked-allow-web', { selector: { service: 'locked' }, action: 'ALLOW', rules: [{ from: [{ identities: [WEB_ID] }] }] }),
  ],
  ingress: {
    routes: [
      { host: 'a.example.test', paths: [toWeb('/')] },
      { host: 'b.example.test', paths: [toWeb('/')] },
      // Only /api under the wildcard: w.example.test/other is a known host with no route.
      { host: '*.example.test', paths: [toWeb('/api')] },
      { host: 'pfx.example.test', paths: [toWeb('/')] },
      // Mutual TLS at the edge (--client-ca), served by the wildcard certificate.
      { host: 'mtls.example.test', paths: [toWeb('/')] },
      { host: 'locked.example.test', paths: [{ path: '/', pathType: 'Prefix', service: 'locked.shop', port: 80 }] },
    ],
  },
};

interface Pair {
  cert: string;
  key: string;
}

let mesh: RunningMesh;
let ingress: RunningIngress;
let certDir: string;
let caPem: string;
let caFile: string;
/** a.example.test (RSA, so ECDHE-RSA suites apply), b.example.test (EC), *.example.test (EC). */
let a: Pair;
let b: Pair;
let wildcard: Pair;

// ---- certificates (openssl CLI) ----------------------------------------------------------------

async function mintCa(dir: string): Promise<void> {
  await opensslOk([
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.pem'),
    '-subj', '/CN=Ward Test External CA', '-days', '1',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/** A leaf for `dns` signed by the test CA, with the serial given (hex), written as <name>.pem/.key. */
async function mintLeaf(dir: string, name: string, o: { dns: string[]; serial: string; key: 'rsa' | 'ec'; eku?: string }): Promise<Pair> {
  const pair = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  const ext = join(dir, `${name}.ext`);
  await writeFile(ext, `subjectAltName=${o.dns.map((d) => `DNS:${d}`).join(',')}\nextendedKeyUsage=${o.eku ?? 'serverAuth'}\nbasicConstraints=critical,CA:FALSE\n`);
  const keyArgs = o.key === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
  const csr = join(dir, `${name}.csr`);
  await opensslOk(['req', '-new', ...keyArgs, '-nodes', '-keyout', pair.key, '-subj', `/CN=${o.dns[0]}`, '-out', csr]);
  await opensslOk([
    'x509', '-req', '-in', csr, '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca.key'),
    '-set_serial', `0x${o.serial}`, '-days', '1', '-extfile', ext, '-out', pair.cert,
  ]);
  return pair;
}

// ---- clients -----------------------------------------------------------------------------------

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], o: { input?: string; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: o.timeoutMs ?? EXCHANGE_TIMEOUT_MS, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
    child.stdin?.end(o.input ?? '');
  });
}

const httpsPort = (): number => ingress.https.port;

/**
 * curl against the ingress as `host` (--resolve to 127.0.0.1, --cacert the test CA). `-w` output
 * comes after the body on stdout, separated by a marker line.
 */
async function curl(host: string, path: string, args: string[] = [], port = httpsPort(), scheme = 'https'): Promise<{ status: number; body: string; info: string; stderr: string; code: number }> {
  const r = await run('curl', [
    '-sS', '--max-time', '8', '--resolve', `${host}:${port}:127.0.0.1`, '--cacert', caFile,
    '-w', '\n--curl--\n%{http_code} %{http_version} %{redirect_url}', ...args, `${scheme}://${host}:${port}${path}`,
  ]);
  const i = r.stdout.lastIndexOf('\n--curl--\n');
  const info = i === -1 ? '' : r.stdout.slice(i + '\n--curl--\n'.length);
  return { status: Number(info.split(' ')[0] ?? 0), body: i === -1 ? r.stdout : r.stdout.slice(0, i), info, stderr: r.stderr, code: r.code };
}

/** openssl s_client to the ingress with SNI `servername`; stdin closed at once. */
function sClient(servername: string | undefined, args: string[]): Promise<Run> {
  const sni = servername === undefined ? ['-noservername'] : ['-servername', servername];
  return openssl(['s_client', '-connect', `127.0.0.1:${httpsPort()}`, ...sni, '-CAfile', caFile, ...args], { input: '', timeoutMs: EXCHANGE_TIMEOUT_MS });
}

/** The certificate a fresh handshake with SNI `servername` gets: serial (uppercase hex) and DNS names. */
async function servedCertificate(servername: string): Promise<{ serial: string; san: string }> {
  const socket = tlsConnect({ host: '127.0.0.1', port: httpsPort(), servername, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
  try {
    await once(socket, 'secureConnect');
    const c = socket.getPeerCertificate();
    return { serial: c.serialNumber.toUpperCase(), san: c.subjectaltname ?? '' };
  } finally {
    socket.destroy();
  }
}

/**
 * Raw bytes over TLS (HTTP/1.1), for what no well-behaved client sends. Resolves with everything
 * received and whether the server closed the connection: once it did, once `until(received)` holds
 * (when given), or after `waitMs` (a bound: a test expecting a close then sees closed: false).
 */
async function rawTls(
  servername: string,
  write: (socket: TLSSocket) => void | Promise<void>,
  o: { waitMs?: number; until?: (received: string) => boolean } = {},
): Promise<{ received: string; closed: boolean }> {
  const socket = tlsConnect({ host: '127.0.0.1', port: httpsPort(), servername, ca: caPem, ALPNProtocols: ['http/1.1'] });
  let received = '';
  let settle: (closed: boolean) => void = () => undefined;
  const settled = new Promise<boolean>((resolve) => (settle = resolve));
  const timer = setTimeout(() => settle(false), o.waitMs ?? 5_000);
  socket.setEncoding('utf8').on('data', (s: string) => {
    received += s;
    if (o.until?.(received)) settle(false);
  });
  socket.on('error', () => undefined); // a reset after the answer is part of what is observed
  socket.once('close', () => settle(true));
  try {
    await once(socket, 'secureConnect');
    await write(socket);
    const closed = await settled; // before reading `received`: it grows until then
    return { received, closed };
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}

/** Resolves on 'drain' or 'close', whichever comes first (and leaves no listener behind). */
function drainedOrClosed(s: TLSSocket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
  });
}

/** The first request the echo apps saw whose URL is `url` (undefined if none). */
const seenAt = (url: string): EchoSeen | undefined => mesh.seen.find((r) => r.url === url);

/**
 * Proof that the backend saw nothing more on account of `marker`: a sentinel request sent after
 * the exchange must arrive, and nothing whose URL contains `marker` may be among what arrived.
 */
async function expectNothingSmuggled(marker: string): Promise<void> {
  const sentinel = `/sentinel-${marker}`;
  const r = await curl('a.example.test', sentinel, ['--http1.1']);
  expect(r.status).toBe(200);
  expect(seenAt(sentinel)).toBeDefined();
  expect(mesh.seen.filter((s) => s.url.includes(`smuggled-${marker}`))).toEqual([]);
}

// ---- the mesh and the ingress ------------------------------------------------------------------

beforeAll(async () => {
  certDir = await mkdtemp(join(tmpdir(), 'ward-ingress-certs-'));
  await mintCa(certDir);
  caFile = join(certDir, 'ca.pem');
  caPem = await readFile(caFile, 'utf8');
  [a, b, wildcard] = await Promise.all([
    mintLeaf(certDir, 'a', { dns: ['a.example.test'], serial: '1A01', key: 'rsa' }),
    mintLeaf(certDir, 'b', { dns: ['b.example.test'], serial: '1B01', key: 'ec' }),
    mintLeaf(certDir, 'wildcard', { dns: ['*.example.test'], serial: '1C01', key: 'ec' }),
  ]);
  const pfx = await mintLeaf(certDir, 'pfx', { dns: ['pfx.example.test'], serial: '1D01', key: 'ec' });
  await writeFile(join(certDir, 'pfx.pass'), 's3cret passphrase\n');
  await opensslOk([
    'pkcs12', '-export', '-in', pfx.cert, '-inkey', pfx.key, '-certfile', caFile, '-name', 'pfx.example.test',
    '-out', join(certDir, 'pfx.p12'), '-passout', `file:${join(certDir, 'pfx.pass')}`,
  ]);

  mesh = await startMesh(SPEC, { cleanup: 'manual' });
  await Promise.all([mesh.startProxy('node-a'), mesh.startProxy('node-b')]);
  ingress = await mesh.startIngress({
    // b first: the first certificate is the default one (an unknown server name gets it).
    certs: [`b.example.test=${b.cert},${b.key}`, `a.example.test=${a.cert},${a.key}`, `*.example.test=${wildcard.cert},${wildcard.key}`],
    pfx: [`pfx.example.test=${join(certDir, 'pfx.p12')},${join(certDir, 'pfx.pass')}`],
    // Short enough for the slowloris test; no other test sends its headers slowly.
    extraArgs: ['--headers-timeout', '1s', '--client-ca', `mtls.example.test=${caFile}`, '--plain-host', 'b.example.test'],
  });
  await Promise.all([mesh.waitReady(), ingress.waitReady()]);
  // Ready means a mesh certificate and a configuration; the endpoints behind the routes come with
  // the node proxies' reports. Nothing announces them to a test: poll the ingress state, bounded.
  await vi.waitFor(
    async () => {
      const st = (await ingress.state()) as { services: { service: string; endpoints: unknown[] }[]; hosts: string[] };
      const count = (s: string): number => st.services.find((x) => x.service === s)?.endpoints.length ?? 0;
      expect({ web: count('web.shop'), locked: count('locked.shop'), hosts: st.hosts.length }).toEqual({ web: 1, locked: 1, hosts: 6 });
    },
    { timeout: 20_000, interval: 100 },
  );
}, 60_000);

afterAll(async () => {
  await mesh?.close();
  if (certDir) await rm(certDir, { recursive: true, force: true });
});

// ---- 1. into the mesh --------------------------------------------------------------------------

describe('routing into the mesh', () => {
  it('forwards to a service on another node with the ingress identity and fresh forwarding headers; client copies are replaced', async () => {
    const r = await curl('a.example.test', '/hello/1?x=1', [
      '--http1.1',
      '-H', `${IDENTITY_HEADER}: spiffe://${TD}/ns/shop/sa/admin`,
      '-H', 'X-Forwarded-For: 203.0.113.66',
      '-H', 'X-Forwarded-Host: evil.example',
      '-H', 'X-Forwarded-Proto: http',
      '-H', 'X-Request-Id: client-chosen',
    ]);
    expect(r.status, r.stderr).toBe(200);
    const echoed = JSON.parse(r.body) as { workload: string; identity: string; url: string };
    expect(echoed).toMatchObject({ workload: 'web-1', identity: INGRESS_ID, url: '/hello/1?x=1' });
    const seen = seenAt('/hello/1?x=1')!;
    expect(seen.headers).toMatchObject({
      [IDENTITY_HEADER]: INGRESS_ID,
      'x-forwarded-for': '127.0.0.1',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'a.example.test',
      host: `a.example.test:${httpsPort()}`,
    });
    expect(seen.headers['x-request-id']).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  });

  it('HTTP/2 from the outside reaches the same app the same way', async () => {
    const r = await curl('a.example.test', '/hello/h2', ['--http2']);
    expect(r.status, r.stderr).toBe(200);
    expect(r.info.split(' ')[1]).toBe('2');
    expect(JSON.parse(r.body)).toMatchObject({ workload: 'web-1', identity: INGRESS_ID });
    expect(seenAt('/hello/h2')?.headers['x-forwarded-host']).toBe('a.example.test');
  });

  it('destination policies judge the ingress identity: an ALLOW that does not list it → 403, and the app sees nothing', async () => {
    const r = await curl('locked.example.test', '/denied-for-ingress', ['--http1.1', '-D', '-']);
    expect(r.status, r.stderr).toBe(403);
    expect(seenAt('/denied-for-ingress')).toBeUndefined();
  });
});

// ---- 2. host and path checks, redirect, limits -------------------------------------------------

describe('hosts, paths, redirect and limits', () => {
  it('SNI a.example.test with Host b.example.test → 421', async () => {
    const r = await curl('a.example.test', '/misdirected', ['--http1.1', '-H', 'Host: b.example.test']);
    expect(r.status, r.stderr).toBe(421);
    expect(seenAt('/misdirected')).toBeUndefined();
  });

  it('one HTTP/2 connection made for a.example.test, reused for :authority b.example.test → 421 (the first request is served)', async () => {
    const session = http2Connect(`https://127.0.0.1:${httpsPort()}`, { servername: 'a.example.test', ca: caPem });
    session.on('error', () => undefined);
    try {
      const ask = (authority: string, path: string): Promise<{ status: number; body: string }> =>
        new Promise((resolve, reject) => {
          const s = session.request({ ':method': 'GET', ':path': path, ':authority': authority, ':scheme': 'https' });
          s.setTimeout(EXCHANGE_TIMEOUT_MS, () => s.close());
          let status = 0;
          let body = '';
          s.once('response', (h) => (status = Number(h[':status'])));
          s.setEncoding('utf8').on('data', (c: string) => (body += c));
          s.once('end', () => resolve({ status, body }));
          s.once('error', reject);
        });
      const first = await ask('a.example.test', '/h2-first');
      expect(first.status).toBe(200);
      const second = await ask('b.example.test', '/h2-reused');
      expect(second.status).toBe(421);
      expect(seenAt('/h2-reused')).toBeUndefined();
    } finally {
      session.destroy();
    }
  });

  it('HTTP/2 rapid reset (a flood of streams cancelled at once) ends that session only; other clients are served', async () => {
    const attacker = http2Connect(`https://127.0.0.1:${httpsPort()}`, { servername: 'a.example.test', ca: caPem });
    attacker.on('error', () => undefined);
    const ended = new Promise<string>((resolve) => {
      attacker.once('goaway', (code: number) => resolve(`goaway ${code}`));
      attacker.once('close', () => resolve('close'));
    });
    try {
      await once(attacker, 'connect');
      // Bounded: at most 5,000 streams, each reset right after it is opened (CVE-2023-44487).
      for (let i = 0; i < 5_000 && !attacker.closed && !attacker.destroyed; i++) {
        const st = attacker.request({ ':method': 'GET', ':path': `/rapid-${i}`, ':authority': 'a.example.test', ':scheme': 'https' });
        st.on('error', () => undefined);
        st.close(0x8 /* NGHTTP2_CANCEL */);
        if (i % 100 === 99) await new Promise<void>((r) => setImmediate(r)); // let the frames go out
      }
      expect(await ended).toMatch(/^(goaway|close)/);
      // Everyone else is still served.
      const r = await curl('a.example.test', '/after-rapid-reset', ['--http2']);
      expect(r.status, r.stderr).toBe(200);
    } finally {
      attacker.destroy();
    }
  });

  it('an unknown host gets the default certificate (with -k) and 404', async () => {
    const r = await curl('nowhere.test', '/', ['--http1.1', '-k', '-v']);
    expect(r.status, r.stderr).toBe(404);
    expect(r.body).toContain('unknown host');
    // The default certificate is the first configured one: b.example.test's.
    expect(r.stderr).toMatch(/subject: CN=b\.example\.test/);
    expect((await servedCertificate('nowhere.test')).serial).toBe('1B01');
  });

  it('a known host without a route for the path → 404; the wildcard certificate serves it', async () => {
    expect((await curl('w.example.test', '/api/x')).status).toBe(200);
    const r = await curl('w.example.test', '/other');
    expect(r.status, r.stderr).toBe(404);
    expect(r.body).toContain('no route for this path');
    expect(await servedCertificate('w.example.test')).toEqual({ serial: '1C01', san: 'DNS:*.example.test' });
  });

  it('plain HTTP → 308 to https with the same host, path and query', async () => {
    const port = ingress.http!.port;
    const r = await curl('a.example.test', '/x/y?q=1&r=2', [], port, 'http');
    expect(r.status, r.stderr).toBe(308);
    expect(r.info.split(' ')[2]).toBe(`https://a.example.test:${httpsPort()}/x/y?q=1&r=2`);
    // Only hosts the routes know are redirected.
    expect((await curl('nowhere.test', '/', [], port, 'http')).status).toBe(404);
  });

  it('per host: a --plain-host is served on the http listener (into the mesh, X-Forwarded-Proto http), the others are redirected', async () => {
    const port = ingress.http!.port;
    const r = await curl('b.example.test', '/plain-served?x=1', [], port, 'http');
    expect(r.status, r.stderr).toBe(200);
    const seen = seenAt('/plain-served?x=1')!;
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers[IDENTITY_HEADER]).toBe(`spiffe://${TD}/ns/ward-system/sa/ward-ingress`);
    expect((await curl('a.example.test', '/still-redirected', [], port, 'http')).status).toBe(308);
  });

  it('a header block over the limit → 431', async () => {
    const r = await curl('a.example.test', '/huge-header', ['--http1.1', '-H', `X-Big: ${'a'.repeat(20_000)}`]);
    expect(r.status, r.stderr).toBe(431);
    expect(seenAt('/huge-header')).toBeUndefined();
  });

  it(`Content-Length over the body limit (${MAX_BODY} + 1) → 413 before any body is read; the app sees nothing`, async () => {
    const r = await rawTls(
      'a.example.test',
      (s) => void s.write(`POST /too-big-declared HTTP/1.1\r\nHost: a.example.test\r\nContent-Length: ${MAX_BODY + 1}\r\n\r\n`),
      { until: (got) => got.includes('request body too large\n') },
    );
    expect(r.received).toMatch(/^HTTP\/1\.1 413 /);
    expect(seenAt('/too-big-declared')).toBeUndefined();
  });

  it('a chunked body that grows past the limit → 413 (counted as it streams)', async () => {
    const chunk = Buffer.alloc(64 * 1024, 'x');
    const r = await rawTls(
      'a.example.test',
      async (s) => {
        s.write('POST /too-big-chunked HTTP/1.1\r\nHost: a.example.test\r\nTransfer-Encoding: chunked\r\n\r\n');
        // One chunk more than the limit, honouring backpressure; stop once the server answered or closed.
        for (let sent = 0; sent <= MAX_BODY && !s.destroyed && !s.readableEnded; sent += chunk.length) {
          s.write(`${chunk.length.toString(16)}\r\n`);
          s.write(chunk);
          if (!s.write('\r\n')) await drainedOrClosed(s);
        }
      },
      { waitMs: 10_000, until: (got) => got.includes('request body too large\n') },
    );
    expect(r.received).toMatch(/^HTTP\/1\.1 413 /);
  });
});

// ---- 3. request smuggling ----------------------------------------------------------------------

describe('request smuggling', () => {
  const smuggle = async (marker: string, request: string): Promise<void> => {
    const r = await rawTls('a.example.test', (s) => void s.write(request.replaceAll('\n', '\r\n')));
    expect(r.received).toMatch(/^HTTP\/1\.1 400 /);
    expect(r.closed).toBe(true);
    await expectNothingSmuggled(marker);
  };

  it('Content-Length with Transfer-Encoding → 400, closed, nothing smuggled', async () => {
    await smuggle(
      'clte',
      'POST /smuggle-clte HTTP/1.1\nHost: a.example.test\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\n\nGET /smuggled-clte HTTP/1.1\nHost: a.example.test\n\n',
    );
    expect(seenAt('/smuggle-clte')).toBeUndefined();
  });

  it('duplicate Content-Length → 400, closed, nothing smuggled', async () => {
    await smuggle(
      'dupcl',
      'POST /smuggle-dupcl HTTP/1.1\nHost: a.example.test\nContent-Length: 0\nContent-Length: 44\n\nGET /smuggled-dupcl HTTP/1.1\nHost: a.example.test\n\n',
    );
    expect(seenAt('/smuggle-dupcl')).toBeUndefined();
  });

  it('bad chunking → 400, closed, nothing smuggled', async () => {
    await smuggle(
      'chunk',
      'POST /smuggle-chunk HTTP/1.1\nHost: a.example.test\nTransfer-Encoding: chunked\n\n3;\nabc\nzz\nGET /smuggled-chunk HTTP/1.1\nHost: a.example.test\n\n',
    );
  });
});

// ---- 4. slowloris ------------------------------------------------------------------------------

it('slowloris: a connection that never finishes its headers is answered 408 and closed (--headers-timeout 1s)', async () => {
  // Half a request head, then nothing: the ingress must give up on its own after ~1 s (the timeout,
  // checked every second) — the test only awaits the close, bounded by waitMs.
  const r = await rawTls('a.example.test', (socket) => void socket.write('GET /slow HTTP/1.1\r\nHost: a.example.test\r\nx-slow: 1\r\n'), { waitMs: 10_000 });
  expect(r.closed).toBe(true);
  expect(r.received).toMatch(/^HTTP\/1\.1 408 /);
});

// ---- 6. TLS versions, suites, ALPN -------------------------------------------------------------

describe('TLS parameters', () => {
  it('a TLS 1.1 client is refused by the server (protocol version alert)', async () => {
    // @SECLEVEL=0: OpenSSL 3 clients do not offer TLS 1.1 otherwise, and the test would prove nothing.
    const r = await sClient('a.example.test', ['-tls1_1', '-cipher', 'DEFAULT:@SECLEVEL=0']);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/alert protocol version/);
  });

  it('a TLS 1.2 client offering only a CBC suite is refused (handshake failure alert)', async () => {
    const r = await sClient('a.example.test', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-SHA']);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/alert handshake failure/);
  });

  it('TLS 1.2 with an ECDHE-GCM suite is accepted (same certificate, same key type)', async () => {
    const r = await sClient('a.example.test', ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/New, TLSv1\.2, Cipher is ECDHE-RSA-AES128-GCM-SHA256/);
    expect(r.stdout).toMatch(/Verify return code: 0 \(ok\)/);
  });

  it('TLS 1.3 is accepted', async () => {
    const r = await sClient('a.example.test', ['-tls1_3']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/New, TLSv1\.3, Cipher is TLS_/);
  });

  it.each(['TLSv1.3', 'TLSv1.2'] as const)('%s sessions resume (no full handshake), and a resumed connection is still served by SNI == Host', async (version) => {
    const open = async (session?: Buffer): Promise<{ socket: TLSSocket; session: Promise<Buffer> }> => {
      const socket = tlsConnect({ host: '127.0.0.1', port: httpsPort(), servername: 'a.example.test', ca: [await readFile(caFile)], minVersion: version, maxVersion: version, ALPNProtocols: ['http/1.1'], ...(session ? { session } : {}) });
      const got = once(socket, 'session').then(([s]) => s as Buffer);
      await once(socket, 'secureConnect');
      return { socket, session: got };
    };
    const first = await open();
    // A request, so that a TLS 1.3 ticket (sent after the handshake) is surely read.
    first.socket.write('GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n');
    const session = await first.session;
    expect(first.socket.isSessionReused()).toBe(false);
    first.socket.destroy();
    const second = await open(session);
    try {
      expect(second.socket.isSessionReused()).toBe(true);
      second.socket.write('GET / HTTP/1.1\r\nHost: b.example.test\r\nConnection: close\r\n\r\n');
      const [chunk] = (await once(second.socket, 'data')) as [Buffer];
      expect(chunk.toString('latin1')).toMatch(/^HTTP\/1\.1 421 /);
    } finally {
      second.socket.destroy();
    }
  });

  it.each(['h2', 'http/1.1'])('ALPN %s is negotiated', async (proto) => {
    const r = await sClient('a.example.test', ['-alpn', proto]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`ALPN protocol: ${proto}`);
  });
});

// ---- 7. sslscan --------------------------------------------------------------------------------

describe('sslscan', () => {
  // a.example.test has an RSA certificate, b.example.test an EC one: the ECDHE-RSA and ECDHE-ECDSA suites.
  it.each([
    ['a.example.test', 'RSA'],
    ['b.example.test', 'ECDSA'],
  ])('%s: no SSLv2/3, TLS 1.0/1.1; only forward-secret AEAD suites', async (host, auth) => {
    const probe = await run('sslscan', ['--version']).catch((err: Error) => ({ code: -1, stdout: '', stderr: err.message }));
    if (probe.code !== 0) {
      expect.fail(`sslscan is not installed (${probe.stderr.trim()}); install it (apt-get install sslscan) — CI does, in .ci/run`);
    }
    const r = await run('sslscan', ['--no-colour', '--no-heartbleed', '--no-renegotiation', '--no-compression', '--no-fallback', `--sni-name=${host}`, `127.0.0.1:${httpsPort()}`], {
      timeoutMs: 30_000,
    });
    expect(r.code, r.stderr).toBe(0);
    const protocols = Object.fromEntries([...r.stdout.matchAll(/^(SSLv2|SSLv3|TLSv1\.[0-3])\s+(enabled|disabled)/gm)].map((m) => [m[1], m[2]]));
    expect(protocols).toEqual({ SSLv2: 'disabled', SSLv3: 'disabled', 'TLSv1.0': 'disabled', 'TLSv1.1': 'disabled', 'TLSv1.2': 'enabled', 'TLSv1.3': 'enabled' });
    const suites = [...r.stdout.matchAll(/^(?:Preferred|Accepted)\s+(\S+)\s+\d+\s+bits\s+(\S+)/gm)].map((m) => ({ protocol: m[1], name: m[2] }));
    expect(suites.filter((s) => s.protocol === 'TLSv1.2').length).toBeGreaterThan(0);
    expect(suites.filter((s) => s.protocol === 'TLSv1.3').length).toBeGreaterThan(0);
    expect(suites.filter((s) => !['TLSv1.2', 'TLSv1.3'].includes(s.protocol))).toEqual([]);
    // TLS 1.2: (EC)DHE key exchange and an AEAD (GCM, ChaCha20-Poly1305, CCM); TLS 1.3 suites are all both.
    const weak = suites.filter((s) => s.protocol === 'TLSv1.2' && !(/^(ECDHE|DHE)-/.test(s.name) && /GCM|CHACHA20|CCM/.test(s.name)));
    expect(weak, r.stdout).toEqual([]);
    // The scan judged the certificate it was meant to (the suites' authentication matches its key).
    expect(suites.filter((s) => s.protocol === 'TLSv1.2').every((s) => s.name.startsWith(`ECDHE-${auth}-`)), r.stdout).toBe(true);
  }, 40_000);
});

// ---- 8. PKCS#12 --------------------------------------------------------------------------------

describe('PKCS#12', () => {
  it('a host served from a passphrase-protected .p12 bundle', async () => {
    const r = await curl('pfx.example.test', '/from-p12');
    expect(r.status, r.stderr).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ workload: 'web-1', identity: INGRESS_ID });
    expect(await servedCertificate('pfx.example.test')).toEqual({ serial: '1D01', san: 'DNS:pfx.example.test' });
  });
});

// ---- 5. certificate rotation (changes a.example.test: keep last) -------------------------------

describe('certificate rotation', () => {
  it('a certificate replaced on disk is served to new handshakes; a keep-alive connection opened before keeps working', async () => {
    const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: caPem, servername: 'a.example.test' });
    const get = (path: string): Promise<{ status: number; reused: boolean; serial: string }> =>
      new Promise((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port: httpsPort(), path, agent, servername: 'a.example.test', headers: { host: 'a.example.test' }, timeout: EXCHANGE_TIMEOUT_MS }, (res) => {
          const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber.toUpperCase();
          res.resume();
          res.once('end', () => resolve({ status: res.statusCode ?? 0, reused: req.reusedSocket, serial }));
        });
        req.once('timeout', () => req.destroy(new Error('timeout')));
        req.once('error', reject);
        req.end();
      });
    try {
      expect(await get('/before-rotation')).toEqual({ status: 200, reused: false, serial: '1A01' });
      const next = await mintLeaf(certDir, 'a-next', { dns: ['a.example.test'], serial: '1A02', key: 'rsa' });
      // Atomic replacement, as cert-manager and `mv` do: the key first, then the certificate (a pass
      // that catches the pair half replaced refuses it, and the next change loads it).
      await rename(next.key, a.key);
      await rename(next.cert, a.cert);
      await vi.waitFor(async () => expect((await servedCertificate('a.example.test')).serial).toBe('1A02'), { timeout: 10_000, interval: 100 });
      // The connection made before the change still works, on its original certificate.
      expect(await get('/after-rotation')).toEqual({ status: 200, reused: true, serial: '1A01' });
      expect(seenAt('/after-rotation')?.headers[IDENTITY_HEADER]).toBe(INGRESS_ID);
    } finally {
      agent.destroy();
    }
    const r = await curl('a.example.test', '/new-connection');
    expect(r.status, r.stderr).toBe(200);
  });

  it('a bad replacement (a key that does not match) is refused and the certificate in use is still served', async () => {
    const from = ingress.child.output.stderr.length;
    const wrongKey = join(certDir, 'wrong.key');
    await writeFile(wrongKey, await readFile(b.key));
    await rename(wrongKey, a.key);
    // The refusal is logged (warn) with the host; wait for it, bounded.
    await vi.waitFor(
      () => {
        const lines = ingress.child.output.stderr.slice(from).split('\n').filter((l) => l.includes('refused new certificate'));
        expect(lines.some((l) => l.includes('"host":"a.example.test"') && /does not match/.test(l))).toBe(true);
      },
      { timeout: 10_000, interval: 100 },
    );
    expect((await servedCertificate('a.example.test')).serial).toBe('1A02');
    const r = await curl('a.example.test', '/after-bad-replacement');
    expect(r.status, r.stderr).toBe(200);
  });
});

// ---- 9. mutual TLS at the edge ------------------------------------------------------------------

describe('mutual TLS at the edge (--client-ca mtls.example.test=the test CA)', () => {
  it('accepts a client certificate from the configured CA and passes its verified subject on; refuses none, a server-only one and another CA\'s', async () => {
    const alice = await mintLeaf(certDir, 'alice', { dns: ['alice.client.test'], serial: '2A01', key: 'ec', eku: 'clientAuth' });
    const ok = await curl('mtls.example.test', '/edge-ok', ['--cert', alice.cert, '--key', alice.key]);
    expect(ok.status, ok.stderr).toBe(200);
    const seen = seenAt('/edge-ok')!;
    expect(seen.headers['x-forwarded-client-cert']).toMatch(/^Hash=[0-9a-f]{64};Subject="CN=alice\.client\.test"$/);
    expect(seen.headers[IDENTITY_HEADER]).toBe(`spiffe://${TD}/ns/ward-system/sa/ward-ingress`);
    // Over HTTP/2 too.
    expect((await curl('mtls.example.test', '/edge-h2', ['--http2', '--cert', alice.cert, '--key', alice.key])).info).toMatch(/^200 2 /);
    // No certificate; a certificate without clientAuth usage; a forged XFCC header alone.
    const none = await curl('mtls.example.test', '/edge-none', ['-H', 'x-forwarded-client-cert: Hash=00;Subject="CN=admin"']);
    expect(none.status).toBe(403);
    // (Its own pair: a.example.test's files are replaced by the rotation tests.)
    const srv = await mintLeaf(certDir, 'server-only', { dns: ['server-only.client.test'], serial: '2B01', key: 'ec', eku: 'serverAuth' });
    const serverOnly = await curl('mtls.example.test', '/edge-server-only', ['--cert', srv.cert, '--key', srv.key]);
    expect(serverOnly.status).toBe(403);
    // Another CA's client certificate.
    const other = await mkdtemp(join(tmpdir(), 'ward-other-ca-'));
    try {
      await mintCa(other);
      const mallory = await mintLeaf(other, 'mallory', { dns: ['mallory.client.test'], serial: '3A01', key: 'ec', eku: 'clientAuth' });
      expect((await curl('mtls.example.test', '/edge-other-ca', ['--cert', mallory.cert, '--key', mallory.key])).status).toBe(403);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
    for (const url of ['/edge-none', '/edge-server-only', '/edge-other-ca']) expect(seenAt(url), url).toBeUndefined();
    // Hosts without --client-ca do not ask for one.
    expect((await curl('a.example.test', '/edge-not-required')).status).toBe(200);
  });
});
