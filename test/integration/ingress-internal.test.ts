/**
 * `ward ingress --internal-cert HOST` end to end: a host of the ingress routes served with a TLS
 * server certificate from Ward's own CA (an internal name: trusted only by clients that trust the
 * mesh root). A real `ward control`, two real `ward proxy` processes and real `ward ingress`
 * processes on loopback, judged from outside with curl, openssl s_client / x509, node:https and
 * `ward ca history` on the CA's state directory: statuses, the certificate served (subject, issuer,
 * SANs, serial), what the CA recorded and refused, and the ingress's /readyz and /v1/state.
 *
 * One mesh and one ingress (`--internal-cert shop.internal.test`, no file certificate at all) serve
 * the whole file (beforeAll, cleanup 'manual'). The refusal case starts a second ingress of its own
 * and stops it when done. The renewal case changes the certificate served: it runs last.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from 'vitest';
import { ward } from '../helpers/cli.js';
import { openssl } from '../helpers/openssl.js';
import { httpCall, IDENTITY_HEADER, startMesh, TD, type MeshSpec, type RunningIngress, type RunningMesh } from '../helpers/proxy-mesh.js';

const INGRESS_ID = `spiffe://${TD}/ns/ward-system/sa/ward-ingress`;
const HOST = 'shop.internal.test';
/** Not a route host: the CA must refuse it. */
const OTHER = 'other.test';
const INTERNAL_SOURCE = "Ward's CA (internal name)";
/** Bound on any single exchange: a hang is a failure, never a pass. */
const EXCHANGE_TIMEOUT_MS = 10_000;

/** web-1 behind node-a's proxy, web-2 behind node-b's; the ingress is a process of its own. */
const SPEC: MeshSpec = {
  nodes: [{ name: 'node-a' }, { name: 'node-b' }],
  workloads: [
    { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', ports: [8080], labels: { app: 'web' } },
    { name: 'web-2', namespace: 'shop', serviceAccount: 'web', node: 'node-b', ports: [8080], labels: { app: 'web' } },
  ],
  services: [{ name: 'web', namespace: 'shop', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'web' } }],
  policies: [
    {
      apiVersion: 'security.ward.dev/v1alpha1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'web-allow-ingress', namespace: 'shop' },
      spec: { selector: { service: 'web' }, action: 'ALLOW', rules: [{ from: [{ identities: [INGRESS_ID] }] }] },
    },
  ],
  ingress: { routes: [{ host: HOST, paths: [{ path: '/', pathType: 'Prefix', service: 'web.shop', port: 80 }] }] },
};

let mesh: RunningMesh;
let ingress: RunningIngress;
let bundlePem: string;

// ---- clients -----------------------------------------------------------------------------------

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], o: { input?: string } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: EXCHANGE_TIMEOUT_MS, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
    child.stdin?.end(o.input ?? '');
  });
}

/**
 * curl to `ing` as `host` (--resolve to 127.0.0.1). `cacert`: the mesh bundle by default; false for
 * none, so that curl verifies against the system store only. `-w` output follows the body on
 * stdout after a marker line.
 */
async function curl(
  ing: RunningIngress,
  host: string,
  path: string,
  args: string[] = [],
  o: { cacert?: boolean } = {},
): Promise<{ status: number; version: string; body: string; stderr: string; code: number }> {
  const port = ing.https.port;
  const r = await run('curl', [
    '-sS', '--max-time', '8', '--resolve', `${host}:${port}:127.0.0.1`,
    ...(o.cacert === false ? [] : ['--cacert', mesh.bundleFile]),
    '-w', '\n--curl--\n%{http_code} %{http_version}', ...args, `https://${host}:${port}${path}`,
  ]);
  const i = r.stdout.lastIndexOf('\n--curl--\n');
  const info = i === -1 ? '' : r.stdout.slice(i + '\n--curl--\n'.length);
  const [status = '0', version = ''] = info.split(' ');
  return { status: Number(status), version, body: i === -1 ? r.stdout : r.stdout.slice(0, i), stderr: r.stderr, code: r.code };
}

/** Serial (uppercase hex, no leading zeros) and SANs of the certificate a fresh handshake with SNI `servername` gets. */
async function servedCertificate(ing: RunningIngress, servername: string): Promise<{ serial: string; san: string; fingerprint: string }> {
  const socket = tlsConnect({ host: '127.0.0.1', port: ing.https.port, servername, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
  try {
    await once(socket, 'secureConnect');
    const c = socket.getPeerCertificate();
    return { serial: normalSerial(c.serialNumber), san: c.subjectaltname ?? '', fingerprint: c.fingerprint256 };
  } finally {
    socket.destroy();
  }
}

/** Serials as written by the CA (lowercase) and by Node (uppercase, maybe zero-padded) compared alike. */
const normalSerial = (s: string): string => s.toUpperCase().replace(/^0+(?=.)/, '');

interface Readiness {
  status: number;
  ready: boolean;
  reasons: string[];
}

async function readyz(ing: RunningIngress): Promise<Readiness> {
  const r = await httpCall(`${ing.adminUrl}/readyz`);
  const body = JSON.parse(r.body) as { ready: boolean; reasons: string[] };
  return { status: r.status, ready: body.ready, reasons: body.reasons };
}

interface IngressState {
  hosts: string[];
  certificates: { host: string; subject: string; notAfter: string; fingerprint: string; source: string }[];
  meshCertificate: { identity: string; state: string; serial?: string; renewals: number; lastError?: string }[];
  services: { service: string; endpoints: unknown[] }[];
}

const stateOf = async (ing: RunningIngress): Promise<IngressState> => (await ing.state()) as unknown as IngressState;

/** `ward ca history` on the mesh's CA state (read-only, beside the running control plane), as JSON. */
async function caHistory<T>(args: string[]): Promise<T[]> {
  const r = await ward(['ca', 'history', '--state', join(mesh.dir, 'state'), '--limit', '1000', '--json', ...args]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T[];
}

interface InventoryEntry {
  serial: string;
  identity: string;
  requester: string;
  notAfter: string;
}

interface AuditEntry {
  decision: 'issued' | 'refused';
  identity: string;
  requester: string;
  serial?: string;
  code?: string;
  reason?: string;
}

/** Waits (bounded) until the ingress routes to both web endpoints: ready does not include them. */
async function waitForEndpoints(ing: RunningIngress): Promise<void> {
  await vi.waitFor(
    async () => {
      const st = await stateOf(ing);
      expect({ web: st.services.find((s) => s.service === 'web.shop')?.endpoints.length ?? 0, hosts: st.hosts }).toEqual({ web: 2, hosts: [HOST] });
    },
    { timeout: 20_000, interval: 100 },
  );
}

// ---- the mesh and the ingress ------------------------------------------------------------------

beforeAll(async () => {
  mesh = await startMesh(SPEC, { cleanup: 'manual' });
  bundlePem = await readFile(mesh.bundleFile, 'utf8');
  await Promise.all([mesh.startProxy('node-a'), mesh.startProxy('node-b')]);
  // No --cert and no --pfx: the internal name is the only certificate this ingress has.
  ingress = await mesh.startIngress({ extraArgs: ['--internal-cert', HOST] });
  await Promise.all([mesh.waitReady(), ingress.waitReady()]);
  await waitForEndpoints(ingress);
}, 60_000);

afterAll(async () => {
  await mesh?.close();
});

// ---- 1. a route host served with a certificate from Ward's CA -----------------------------------

describe(`--internal-cert ${HOST} (a route host)`, () => {
  it('is ready with nothing missing, and /v1/state lists the certificate as from Ward\'s CA', async () => {
    expect(await readyz(ingress)).toEqual({ status: 200, ready: true, reasons: [] });
    const st = await stateOf(ingress);
    expect(st.certificates).toEqual([expect.objectContaining({ host: HOST, source: INTERNAL_SOURCE })]);
    expect(st.certificates[0]?.subject).toMatch(new RegExp(`CN=${HOST.replaceAll('.', '\\.')}`));
    expect(st.meshCertificate.find((c) => c.identity === HOST)).toMatchObject({ state: 'valid' });
  });

  it('curl --cacert <mesh bundle> is served by the backend over HTTP/1.1 and HTTP/2, with the ingress identity', async () => {
    const h1 = await curl(ingress, HOST, '/internal/h1', ['--http1.1']);
    expect(h1.status, h1.stderr).toBe(200);
    expect(h1.version).toBe('1.1');
    expect(JSON.parse(h1.body)).toMatchObject({ workload: expect.stringMatching(/^web-[12]$/), identity: INGRESS_ID, url: '/internal/h1' });

    const h2 = await curl(ingress, HOST, '/internal/h2', ['--http2']);
    expect(h2.status, h2.stderr).toBe(200);
    expect(h2.version).toBe('2');
    expect(JSON.parse(h2.body)).toMatchObject({ identity: INGRESS_ID, url: '/internal/h2' });
    const seen = mesh.seen.find((s) => s.url === '/internal/h2');
    expect(seen?.headers).toMatchObject({ [IDENTITY_HEADER]: INGRESS_ID, 'x-forwarded-host': HOST, 'x-forwarded-proto': 'https' });
  });

  it('without --cacert (the system trust store only) curl refuses the certificate and nothing reaches the backend', async () => {
    const r = await curl(ingress, HOST, '/internal/untrusted', ['--http1.1'], { cacert: false });
    // 60: CURLE_PEER_FAILED_VERIFICATION.
    expect(r.code, r.stderr).toBe(60);
    expect(r.stderr).toMatch(/SSL certificate problem/);
    expect(mesh.seen.find((s) => s.url === '/internal/untrusted')).toBeUndefined();
  });

  it('openssl: a leaf for the DNS name only (CN and DNS SAN, no URI SAN, serverAuth only), issued by the Ward Intermediate CA, verifying against the bundle', async () => {
    const s = await openssl(
      ['s_client', '-connect', `127.0.0.1:${ingress.https.port}`, '-servername', HOST, '-CAfile', mesh.bundleFile, '-verify_hostname', HOST, '-showcerts'],
      { input: '', timeoutMs: EXCHANGE_TIMEOUT_MS },
    );
    expect(s.code, s.stderr).toBe(0);
    expect(s.stdout).toMatch(/Verify return code: 0 \(ok\)/);
    // Leaf then intermediate: the root is the client's to have.
    const served = [...s.stdout.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => m[0]);
    expect(served).toHaveLength(2);
    const x = await openssl(['x509', '-noout', '-text', '-nameopt', 'RFC2253'], { input: `${served[0]}\n` });
    expect(x.code, x.stderr).toBe(0);
    expect(x.stdout).toMatch(new RegExp(`Subject: CN=${HOST.replaceAll('.', '\\.')}\\s*\\n`));
    // Issued by the intermediate served after it (`ward control --init` names it "Ward intermediate CA <id>").
    const inter = await openssl(['x509', '-noout', '-subject', '-nameopt', 'RFC2253'], { input: `${served[1]}\n` });
    const interSubject = /^subject=(.+)$/m.exec(inter.stdout)?.[1]?.trim();
    expect(interSubject).toMatch(/^CN=Ward intermediate CA\b.*,O=Ward$/i);
    expect(/Issuer: (.+)\n/.exec(x.stdout)?.[1]?.trim()).toBe(interSubject);
    const san = /X509v3 Subject Alternative Name:.*\n\s*(.+)\n/.exec(x.stdout)?.[1]?.trim();
    expect(san).toBe(`DNS:${HOST}`);
    expect(x.stdout).not.toMatch(/URI:/);
    expect(x.stdout).toMatch(/X509v3 Extended Key Usage:\s*\n\s*TLS Web Server Authentication\s*\n/);
    expect(x.stdout).toMatch(/X509v3 Basic Constraints: critical\s*\n\s*CA:FALSE/);
  });

  it('the CA inventory records it as dns:<host>, requested by the ingress identity, with the serial being served', async () => {
    const served = await servedCertificate(ingress, HOST);
    expect(served.san).toBe(`DNS:${HOST}`);
    // Durable before the CA answered, but read from another process: bounded poll.
    await vi.waitFor(
      async () => {
        const certs = await caHistory<InventoryEntry>(['--certificates', '--identity', `dns:${HOST}`]);
        expect(certs.map((c) => ({ identity: c.identity, requester: c.requester, serial: normalSerial(c.serial) }))).toContainEqual({
          identity: `dns:${HOST}`,
          requester: INGRESS_ID,
          serial: served.serial,
        });
      },
      { timeout: 10_000, interval: 200 },
    );
    const issued = await caHistory<AuditEntry>(['--identity', `dns:${HOST}`]);
    expect(issued.find((a) => a.serial !== undefined && normalSerial(a.serial) === served.serial)).toMatchObject({ decision: 'issued', requester: INGRESS_ID });
  });
});

// ---- 2. a name that is not a route host ---------------------------------------------------------

describe(`--internal-cert ${OTHER} (not a route host)`, () => {
  it('the CA refuses it (WARD_CA_FORBIDDEN, audited as dns:<name>), readiness names it; the route host given too is served', async () => {
    const second = await mesh.startIngress({ extraArgs: ['--internal-cert', OTHER, '--internal-cert', HOST] });
    onTestFinished(() => second.stop());
    // Not ready for the one name only: the mesh certificate, the configuration and HOST's arrive.
    await vi.waitFor(
      async () => {
        const r = await readyz(second).catch((err: Error) => ({ status: 0, ready: false, reasons: [err.message] }));
        expect(r).toEqual({ status: 503, ready: false, reasons: [`no certificate yet for ${OTHER} (internal name, from Ward's CA)`] });
      },
      { timeout: 20_000, interval: 100 },
    );
    // ... and it is not for want of asking: the CA said no.
    await vi.waitFor(
      async () => {
        const st = await stateOf(second);
        expect(st.meshCertificate.find((c) => c.identity === OTHER)).toMatchObject({ state: 'failed', lastError: expect.stringMatching(/WARD_CA_FORBIDDEN/) });
      },
      { timeout: 10_000, interval: 100 },
    );
    await vi.waitFor(
      async () => {
        const refused = await caHistory<AuditEntry>(['--refused', '--identity', `dns:${OTHER}`]);
        expect(refused.length).toBeGreaterThan(0);
        expect(refused[0]).toMatchObject({ decision: 'refused', identity: `dns:${OTHER}`, requester: INGRESS_ID, code: 'WARD_CA_FORBIDDEN' });
        expect(refused[0]?.reason).toContain(OTHER);
      },
      { timeout: 10_000, interval: 200 },
    );
    // Nothing was ever issued for it.
    expect(await caHistory<InventoryEntry>(['--certificates', '--identity', `dns:${OTHER}`])).toEqual([]);

    // Only HOST's certificate is served.
    const st = await stateOf(second);
    expect(st.certificates.map((c) => ({ host: c.host, source: c.source }))).toEqual([{ host: HOST, source: INTERNAL_SOURCE }]);
    await waitForEndpoints(second);
    const ok = await curl(second, HOST, '/internal/second-ingress', ['--http1.1']);
    expect(ok.status, ok.stderr).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ identity: INGRESS_ID, url: '/internal/second-ingress' });
    // other.test gets the default (HOST's) certificate, which a verifying client refuses by name.
    const other = await curl(second, OTHER, '/internal/other', ['--http1.1']);
    expect(other.code, other.stderr).toBe(60);
    expect(other.stderr).toMatch(/no alternative certificate subject name matches/);
    expect(mesh.seen.find((s) => s.url === '/internal/other')).toBeUndefined();
  }, 60_000);
});

// ---- 3. renewal (changes the certificate served: keep last) -------------------------------------

describe('renewal', () => {
  it('POST /v1/renew: new handshakes get a new serial (recorded by the CA); a keep-alive connection opened before keeps working', async () => {
    const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: bundlePem, servername: HOST });
    onTestFinished(() => agent.destroy());
    const get = (path: string): Promise<{ status: number; reused: boolean; serial: string }> =>
      new Promise((resolve, reject) => {
        const req = httpsRequest(
          { host: '127.0.0.1', port: ingress.https.port, path, agent, servername: HOST, headers: { host: HOST }, timeout: EXCHANGE_TIMEOUT_MS },
          (res) => {
            const serial = normalSerial((res.socket as TLSSocket).getPeerCertificate().serialNumber);
            res.resume();
            res.once('end', () => resolve({ status: res.statusCode ?? 0, reused: req.reusedSocket, serial }));
          },
        );
        req.once('timeout', () => req.destroy(new Error('timeout')));
        req.once('error', reject);
        req.end();
      });

    const before = await servedCertificate(ingress, HOST);
    const renewalsBefore = (await stateOf(ingress)).meshCertificate.find((c) => c.identity === HOST)?.renewals ?? -1;
    expect(await get('/internal/before-renewal')).toEqual({ status: 200, reused: false, serial: before.serial });

    const renew = await httpCall(`${ingress.adminUrl}/v1/renew`, { method: 'POST', timeoutMs: EXCHANGE_TIMEOUT_MS });
    expect(renew.status, renew.body).toBe(202);

    // The renewal round is over when /v1/renew answers, and the store swaps in the new certificate
    // as it is installed: the very next handshake gets it.
    const after = await servedCertificate(ingress, HOST);
    expect(after.serial).not.toBe(before.serial);
    expect(after.fingerprint).not.toBe(before.fingerprint);
    expect(after.san).toBe(`DNS:${HOST}`);
    const st = await stateOf(ingress);
    expect(st.meshCertificate.find((c) => c.identity === HOST)).toMatchObject({ state: 'valid', renewals: renewalsBefore + 1 });
    expect(st.certificates).toEqual([expect.objectContaining({ host: HOST, source: INTERNAL_SOURCE, fingerprint: expect.any(String) })]);
    expect(await readyz(ingress)).toMatchObject({ status: 200, ready: true });

    // The connection made before the renewal still works, on the certificate it was made with.
    expect(await get('/internal/after-renewal')).toEqual({ status: 200, reused: true, serial: before.serial });
    expect(mesh.seen.find((s) => s.url === '/internal/after-renewal')?.headers[IDENTITY_HEADER]).toBe(INGRESS_ID);

    // A new client verifies the new certificate against the bundle as before.
    const fresh = await curl(ingress, HOST, '/internal/after-renewal-new-connection', ['--http2']);
    expect(fresh.status, fresh.stderr).toBe(200);

    // The CA recorded both, under the same name and requester.
    await vi.waitFor(
      async () => {
        const certs = await caHistory<InventoryEntry>(['--certificates', '--identity', `dns:${HOST}`]);
        const serials = certs.filter((c) => c.requester === INGRESS_ID).map((c) => normalSerial(c.serial));
        expect(serials).toEqual(expect.arrayContaining([before.serial, after.serial]));
      },
      { timeout: 10_000, interval: 200 },
    );
  });
});
