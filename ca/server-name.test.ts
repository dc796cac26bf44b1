/**
 * Internal-name certificates: CertificateAuthority.issueServerName (DNS names, serverAuth only,
 * recorded and audited as `dns:<names>`), and POST /v1/issue with `dnsNames` on real sockets
 * (127.0.0.1): only the ingress, only for hosts the authorizer says are route hosts, anything else
 * refused whole with 403 and audited.
 */
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { ERROR_CODES, type WardErrorCode } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import { createRegistry, type Registry } from '../core/metrics.js';
import { createCsr, parseCertificate, parseCertificates, PrivateKey, TrustBundle, validatePath, verifySvid } from '../core/pki/index.js';
import type { Credentials } from '../core/tls/index.js';
import { errorOf } from '../test/helpers/errors.js';
import { captureLogs, GrantList, startCa, TD, type CaHarness, type CallResult, type LogCapture } from '../test/helpers/ca.js';
import { opensslOk, tempDir, writeFiles } from '../test/helpers/openssl.js';
import { CertificateAuthority } from './authority.js';
import { MAX_SERVER_NAMES } from './issuance-policy.js';

const HOUR = 3_600_000;
const INGRESS = SpiffeId.ingress(TD);
const SHOP = 'shop.example.com';
const APPS = '*.apps.example.com';

// ---------------------------------------------------------------------------------------------
// CertificateAuthority.issueServerName

interface Env {
  ca: CertificateAuthority;
  clock: ManualClock;
  registry: Registry;
  logs: LogCapture;
  dir: string;
}

async function newCa(): Promise<Env> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-ca-server-name-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const stateDir = join(dir, 'state');
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const registry = createRegistry();
  const logs = captureLogs();
  await CertificateAuthority.init({ stateDir, trustDomain: TD, clock });
  const ca = await CertificateAuthority.open({ stateDir, clock, logger: logs.logger, registry });
  onTestFinished(() => ca.close());
  return { ca, clock, registry, logs, dir };
}

/** `openssl req -new` with the given -addext values: CSR shapes Ward's own createCsr cannot make. */
async function opensslCsr(dir: string, addext: string[]): Promise<string> {
  const key = PrivateKey.generate();
  const f = await writeFiles(dir, { 'k.pem': key.exportPem() });
  const args = ['req', '-new', '-key', f['k.pem'], '-subj', '/CN=x'];
  for (const x of addext) args.push('-addext', x);
  return opensslOk(args, { cwd: dir });
}

describe('CertificateAuthority.issueServerName', () => {
  it('issues a serverAuth DNS certificate for the CSR key, chained to the bundle, recorded and audited as dns:<names>', async () => {
    const { ca, clock, registry } = await newCa();
    const key = PrivateKey.generate();
    const now = clock.now();
    const r = await ca.issueServerName({ csr: createCsr(key), dnsNames: [SHOP, APPS], requester: INGRESS.toString() });
    expect(r.dnsNames).toEqual([SHOP, APPS]);
    expect('id' in r).toBe(false);
    // Default lifetime 1h, backdated 30s, like every leaf.
    expect(r.notBefore.getTime()).toBe(now - 30_000);
    expect(r.notAfter.getTime()).toBe(now + HOUR);

    const leaf = parseCertificate(r.certPem);
    expect(leaf.serialHex).toBe(r.serialHex);
    expect(leaf.dnsNames).toEqual([SHOP, APPS]);
    expect(leaf.uris).toEqual([]);
    expect(leaf.subject).toBe(`CN=${SHOP}`);
    expect(leaf.extKeyUsage).toEqual(['serverAuth']);
    expect(leaf.isCa).toBe(false);
    expect(leaf.publicKeyDer.equals(key.publicKeyDer())).toBe(true);
    expect(leaf.notAfter.getTime()).toBe(r.notAfter.getTime());

    // chainPem: the leaf, then the active issuer's chain; it validates for serverAuth, never as an SVID.
    const chain = parseCertificates(r.chainPem);
    expect(chain.map((c) => c.fingerprintSha256)).toEqual([leaf, ...ca.activeIssuer().chain].map((c) => c.fingerprintSha256));
    const [, ...intermediates] = chain;
    const path = await validatePath({ leaf, intermediates, roots: [...ca.bundle().roots], at: new Date(now), extendedKeyUsage: 'serverAuth' });
    expect(path.ok).toBe(true);
    expect(await verifySvid(chain, ca.bundle(), new Date(now))).toMatchObject({ ok: false, reason: 'no-uri-san' });

    const identity = `dns:${SHOP},${APPS}`;
    const fp = ca.activeIssuer().cert.fingerprintSha256;
    expect(await ca.inventory.query({ identity })).toEqual([
      {
        serial: r.serialHex,
        identity,
        requester: INGRESS.toString(),
        notBefore: r.notBefore.toISOString(),
        notAfter: r.notAfter.toISOString(),
        issuedAt: new Date(now).toISOString(),
        issuer: fp,
      },
    ]);
    expect(await ca.audit.query({ limit: 1 })).toEqual([
      { time: new Date(now).toISOString(), decision: 'issued', requester: INGRESS.toString(), identity, serial: r.serialHex },
    ]);
    expect(ca.counts()).toMatchObject({ issued: 1, refused: 0, certificates: 1 });
    expect(await registry.getSingleMetricAsString('ward_ca_certificates_issued_total')).toMatch(/^ward_ca_certificates_issued_total 1$/m);
  });

  it('is verified by openssl as a TLS server certificate for its names against the bundle, and not as a client one', async () => {
    const { ca, clock } = await newCa();
    const r = await ca.issueServerName({ csr: createCsr(PrivateKey.generate()), dnsNames: [SHOP], requester: INGRESS.toString() });
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'bundle.pem': ca.bundle().toPem(), 'chain.pem': r.chainPem, 'leaf.pem': r.certPem });
    const at = String(Math.floor(clock.now() / 1000));
    const verify = (...extra: string[]) => opensslOk(['verify', '-attime', at, '-CAfile', f['bundle.pem'], '-untrusted', f['chain.pem'], ...extra, f['leaf.pem']]);
    expect(await verify('-purpose', 'sslserver', '-verify_hostname', SHOP)).toContain(`${f['leaf.pem']}: OK`);
    await expect(verify('-purpose', 'sslclient')).rejects.toThrow(/unsuitable certificate purpose/);
    await expect(verify('-purpose', 'sslserver', '-verify_hostname', 'other.example.com')).rejects.toThrow(/hostname mismatch/);
  });

  it('accepts a CSR that asks for no SAN or for some of the names, honours the lifetime, and clamps to the issuer', async () => {
    const { ca, clock } = await newCa();
    for (const csr of [createCsr(PrivateKey.generate(), { dnsNames: [SHOP] }), createCsr(PrivateKey.generate(), { dnsNames: [APPS, SHOP], commonName: SHOP })]) {
      const r = await ca.issueServerName({ csr, dnsNames: [SHOP, APPS], requester: INGRESS.toString(), ttlMs: 10 * 60_000 });
      expect(parseCertificate(r.certPem).dnsNames).toEqual([SHOP, APPS]);
      expect(r.notAfter.getTime()).toBe(clock.now() + 10 * 60_000);
    }
    const issuerEnd = ca.activeIssuer().cert.notAfter.getTime();
    clock.set(issuerEnd - 10 * 60_000);
    const late = await ca.issueServerName({ csr: createCsr(PrivateKey.generate()), dnsNames: [SHOP], requester: INGRESS.toString(), ttlMs: 2 * HOUR });
    expect(late.notAfter.getTime()).toBe(issuerEnd);
    clock.set(issuerEnd + 1000);
    const expired = await errorOf(ca.issueServerName({ csr: createCsr(PrivateKey.generate()), dnsNames: [SHOP], requester: INGRESS.toString() }));
    expect(expired.code).toBe('WARD_CA_ISSUER_NOT_VALID');
    expect(await ca.inventory.query({ identity: `dns:${SHOP},${APPS}` })).toHaveLength(2);
    expect(await ca.inventory.query({ identity: `dns:${SHOP}` })).toEqual([expect.objectContaining({ serial: late.serialHex })]);
  });

  it('takes exactly MAX_SERVER_NAMES (16) names, and never reports to onIssued (not a mesh identity)', async () => {
    const { ca } = await newCa();
    expect(MAX_SERVER_NAMES).toBe(16);
    const seen: string[] = [];
    ca.onIssued((e) => seen.push(e.serialHex));
    const names = Array.from({ length: 16 }, (_, i) => `h${i}.example.com`);
    const r = await ca.issueServerName({ csr: createCsr(PrivateKey.generate()), dnsNames: names, requester: INGRESS.toString() });
    expect(parseCertificate(r.certPem).dnsNames).toEqual(names);
    expect(await ca.inventory.query({ identity: `dns:${names.join(',')}` })).toHaveLength(1);
    expect(seen).toEqual([]);
  });

  const seventeen = Array.from({ length: 17 }, (_, i) => `h${i}.example.com`);
  it.each<[string, { dnsNames: unknown; csr?: string | ((dir: string) => Promise<string>); ttlMs?: number; requester?: string }, WardErrorCode, RegExp, string]>([
    ['no names', { dnsNames: [] }, 'WARD_CA_REQUEST_INVALID', /1 to 16 DNS names/, 'dns:'],
    ['17 names', { dnsNames: seventeen }, 'WARD_CA_REQUEST_INVALID', /1 to 16 DNS names/, `dns:${seventeen.join(',')}`],
    ['names that are not a list', { dnsNames: SHOP }, 'WARD_CA_REQUEST_INVALID', /list of 1 to 16/, 'dns:?'],
    ['a name that is not a string', { dnsNames: [SHOP, 42] }, 'WARD_CA_REQUEST_INVALID', /must hold strings/, `dns:${SHOP},42`],
    ['a duplicate name', { dnsNames: [SHOP, APPS, SHOP] }, 'WARD_CA_REQUEST_INVALID', /listed twice/, `dns:${SHOP},${APPS},${SHOP}`],
    ['an uppercase name', { dnsNames: ['Shop.example.com'] }, 'WARD_CA_REQUEST_INVALID', /not a lowercase DNS name/, 'dns:Shop.example.com'],
    ['a wildcard over a top-level domain', { dnsNames: ['*.localhost'] }, 'WARD_CA_REQUEST_INVALID', /at least two labels after/, 'dns:*.localhost'],
    ['a wildcard inside a name', { dnsNames: ['a.*.example.com'] }, 'WARD_CA_REQUEST_INVALID', /wildcard is allowed only as the whole first label/, 'dns:a.*.example.com'],
    ['an IP address', { dnsNames: ['10.0.0.1'] }, 'WARD_CA_REQUEST_INVALID', /is an IP address/, 'dns:10.0.0.1'],
    ['an empty name', { dnsNames: [''] }, 'WARD_CA_REQUEST_INVALID', /must not be empty/, 'dns:'],
    ['a CSR asking for a URI SAN', { dnsNames: [SHOP], csr: createCsr(PrivateKey.generate(), { uri: INGRESS.toString(), dnsNames: [SHOP] }) }, 'WARD_PKI_CSR_UNAUTHORIZED', /URI, IP, email or other SAN/, `dns:${SHOP}`],
    ['a CSR asking for another DNS name', { dnsNames: [SHOP], csr: createCsr(PrivateKey.generate(), { dnsNames: [SHOP, 'bank.example.com'] }) }, 'WARD_PKI_CSR_UNAUTHORIZED', /DNS name "bank\.example\.com", which is not among the names requested/, `dns:${SHOP}`],
    ['a CSR asking for a name in another case', { dnsNames: [SHOP], csr: createCsr(PrivateKey.generate(), { dnsNames: ['SHOP.example.com'] }) }, 'WARD_PKI_CSR_UNAUTHORIZED', /not among the names requested/, `dns:${SHOP}`],
    ['a CSR asking for an IP SAN', { dnsNames: [SHOP], csr: (dir) => opensslCsr(dir, [`subjectAltName=DNS:${SHOP},IP:10.1.2.3`]) }, 'WARD_PKI_CSR_UNAUTHORIZED', /URI, IP, email or other SAN/, `dns:${SHOP}`],
    ['a CSR asking for a CA certificate', { dnsNames: [SHOP], csr: (dir) => opensslCsr(dir, ['basicConstraints=critical,CA:TRUE']) }, 'WARD_PKI_CSR_UNAUTHORIZED', /CA certificate/, `dns:${SHOP}`],
    ['a CSR asking for keyCertSign', { dnsNames: [SHOP], csr: (dir) => opensslCsr(dir, ['keyUsage=critical,digitalSignature,keyCertSign']) }, 'WARD_PKI_CSR_UNAUTHORIZED', /keyCertSign/, `dns:${SHOP}`],
    ['a CSR that is not one', { dnsNames: [SHOP], csr: 'not a csr' }, 'WARD_PKI_PEM_INVALID', /./, `dns:${SHOP}`],
    ['a lifetime over 24h', { dnsNames: [SHOP], ttlMs: 25 * HOUR }, 'WARD_CA_LIFETIME_INVALID', /5m to 24h/, `dns:${SHOP}`],
  ])('refuses %s, audits the refusal with its code and counts it', async (_what, o, code, message, identity) => {
    const { ca, registry } = await newCa();
    const dir = await tempDir();
    const csr = typeof o.csr === 'function' ? await o.csr(dir) : (o.csr ?? createCsr(PrivateKey.generate()));
    const err = await errorOf(ca.issueServerName({ csr, dnsNames: o.dnsNames as string[], requester: INGRESS.toString(), ttlMs: o.ttlMs }));
    if (code === 'WARD_PKI_PEM_INVALID') expect(['WARD_PKI_PEM_INVALID', 'WARD_PKI_CSR_INVALID']).toContain(err.code);
    else expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    const [rec] = await ca.audit.query({ limit: 1 });
    expect(rec).toMatchObject({ decision: 'refused', code: err.code, identity, requester: INGRESS.toString() });
    expect(rec.serial).toBeUndefined();
    expect(ca.counts()).toMatchObject({ issued: 0, refused: 1, certificates: 0 });
    expect(await registry.getSingleMetricAsString('ward_ca_certificates_refused_total')).toContain(`ward_ca_certificates_refused_total{reason="${err.code}"} 1`);
  });

  it('refuses a request without a requester, and logs refusals without key material', async () => {
    const { ca, logs } = await newCa();
    const err = await errorOf(ca.issueServerName({ csr: createCsr(PrivateKey.generate()), dnsNames: [SHOP], requester: '' }));
    expect(err.code).toBe('WARD_CA_REQUEST_INVALID');
    expect((await ca.audit.query({ limit: 1 }))[0]).toMatchObject({ decision: 'refused', code: 'WARD_CA_REQUEST_INVALID', identity: `dns:${SHOP}` });
    await errorOf(ca.issueServerName({ csr: createCsr(PrivateKey.generate(), { dnsNames: ['bank.example.com'] }), dnsNames: [SHOP], requester: INGRESS.toString() }));
    const refused = logs.records().filter((r) => r.msg === 'certificate refused');
    expect(refused.map((r) => [r.code, r.identity])).toEqual([
      ['WARD_CA_REQUEST_INVALID', `dns:${SHOP}`],
      ['WARD_PKI_CSR_UNAUTHORIZED', `dns:${SHOP}`],
    ]);
    expect(logs.lines.join('')).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE REQUEST/);
  });
});

// ---------------------------------------------------------------------------------------------
// POST /v1/issue with dnsNames

/** The GrantList double, plus the ingress's route hosts: mayObtainServerName answers from `hosts`. */
class RouteHosts extends GrantList {
  readonly hosts = new Set<string>();
  readonly askedNames: { ingress: string; name: string }[] = [];

  constructor(...hosts: string[]) {
    super();
    for (const h of hosts) this.hosts.add(h);
  }

  mayObtainServerName(ingress: SpiffeId, name: string): boolean {
    this.askedNames.push({ ingress: ingress.toString(), name });
    return ingress.isIngress && this.hosts.has(name);
  }
}

/** The whole error contract: status, code, and exactly the generic text of the code. */
function expectError(r: CallResult, status: number, code: WardErrorCode): void {
  expect({ status: r.status, body: r.json }).toStrictEqual({ status, body: { error: { code, message: ERROR_CODES[code] } } });
}

/** The ingress joins with an ingress token; returns its credentials. */
async function joinIngress(h: CaHarness): Promise<Credentials> {
  const { token } = await h.tokens.createForIngress();
  const key = PrivateKey.generate();
  const r = await h.call('POST', '/v1/join', { body: { token, csr: createCsr(key) } });
  expect(r.status, r.text).toBe(200);
  return { id: INGRESS, chainPem: r.json.certificate, key, bundle: h.bundle };
}

function askNames(h: CaHarness, creds: Credentials, dnsNames: unknown, key = PrivateKey.generate(), extra: Record<string, unknown> = {}): Promise<CallResult> {
  return h.call('POST', '/v1/issue', { creds, body: { csr: createCsr(key), dnsNames, ...extra } });
}

/** Inventory records of internal-name certificates (identity dns:…). */
async function dnsRecords(h: CaHarness) {
  return (await h.ca.inventory.query({ limit: 1000 })).filter((r) => r.identity.startsWith('dns:'));
}

describe('POST /v1/issue with dnsNames', () => {
  it('issues the ingress a certificate for a route host: 200, the chain for its key, recorded under dns:<host>', async () => {
    const h = await startCa({ authorizer: new RouteHosts(SHOP, APPS) });
    const ingress = await joinIngress(h);
    const key = PrivateKey.generate();
    const r = await askNames(h, ingress, [SHOP], key, { ttl: '10m' });
    expect(r.status, r.text).toBe(200);
    expect(Object.keys(r.json).sort()).toEqual(['bundle', 'certificate', 'dnsNames', 'notAfter', 'notBefore', 'serial']);
    expect(r.json.dnsNames).toEqual([SHOP]);

    const chain = parseCertificates(r.json.certificate);
    const [leaf, ...intermediates] = chain;
    expect(leaf.dnsNames).toEqual([SHOP]);
    expect(leaf.uris).toEqual([]);
    expect(leaf.extKeyUsage).toEqual(['serverAuth']);
    expect(leaf.serialHex).toBe(r.json.serial);
    expect(leaf.notAfter.toISOString()).toBe(r.json.notAfter);
    expect(leaf.notBefore.toISOString()).toBe(r.json.notBefore);
    expect(leaf.notAfter.getTime() - h.clock.now()).toBeLessThanOrEqual(600_000);
    expect(leaf.notAfter.getTime() - h.clock.now()).toBeGreaterThan(598_000);
    expect(leaf.publicKeyDer.equals(key.publicKeyDer())).toBe(true);
    const path = await validatePath({ leaf, intermediates, roots: [...h.bundle.roots], at: new Date(h.clock.now()), extendedKeyUsage: 'serverAuth' });
    expect(path.ok).toBe(true);
    expect(TrustBundle.fromPem(TD, r.json.bundle).roots.map((c) => c.fingerprintSha256)).toEqual(h.bundle.roots.map((c) => c.fingerprintSha256));

    const authorizer = h.authorizer as RouteHosts;
    expect(authorizer.askedNames).toEqual([{ ingress: INGRESS.toString(), name: SHOP }]);
    expect(authorizer.asked).toEqual([]); // no workload identity was asked about
    expect(await dnsRecords(h)).toEqual([expect.objectContaining({ identity: `dns:${SHOP}`, requester: INGRESS.toString(), serial: leaf.serialHex })]);
    expect((await h.ca.audit.query({ decision: 'issued', limit: 1 }))[0]).toMatchObject({ identity: `dns:${SHOP}`, requester: INGRESS.toString(), serial: leaf.serialHex });
  });

  it('the certificate serves TLS on loopback to a client that trusts the bundle, for that name only', async () => {
    const h = await startCa({ authorizer: new RouteHosts(SHOP) });
    const ingress = await joinIngress(h);
    const key = PrivateKey.generate();
    const r = await askNames(h, ingress, [SHOP], key);
    expect(r.status, r.text).toBe(200);
    const server = tls.createServer({ key: key.exportPem(), cert: r.json.certificate, minVersion: 'TLSv1.3' }, (s) => s.end('hello'));
    server.on('tlsClientError', () => {});
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    onTestFinished(async () => {
      server.close();
      await once(server, 'close');
    });
    const port = (server.address() as AddressInfo).port;
    const connect = async (servername: string): Promise<string> => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: h.bundle.toPem() });
      try {
        await once(socket, 'secureConnect');
        const [data] = (await once(socket, 'data')) as [Buffer];
        return data.toString();
      } catch (err) {
        return `error: ${(err as NodeJS.ErrnoException).code}`;
      } finally {
        socket.destroy();
      }
    };
    expect(await connect(SHOP)).toBe('hello');
    expect(await connect('other.example.com')).toBe('error: ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('refuses the ingress a host that is not a route host with 403, audited, and refuses a mixed list whole', async () => {
    const h = await startCa({ authorizer: new RouteHosts(SHOP) });
    const ingress = await joinIngress(h);
    const evil = await askNames(h, ingress, ['bank.example.com']);
    expectError(evil, 403, 'WARD_CA_FORBIDDEN');
    expect(evil.text).not.toContain('bank');
    const mixed = await askNames(h, ingress, [SHOP, 'bank.example.com']);
    expectError(mixed, 403, 'WARD_CA_FORBIDDEN');

    expect(await dnsRecords(h)).toEqual([]);
    const audit = await h.ca.audit.query({ decision: 'refused', requester: INGRESS.toString() });
    expect(audit.map((a) => [a.identity, a.code])).toEqual([
      [`dns:${SHOP},bank.example.com`, 'WARD_CA_FORBIDDEN'],
      ['dns:bank.example.com', 'WARD_CA_FORBIDDEN'],
    ]);
    // The detail (which name) goes to the log, never to the response.
    const logged = h.logs.records().filter((l) => l.msg === 'CA request refused' && l.code === 'WARD_CA_FORBIDDEN');
    expect(logged.map((l) => String(l.err))).toEqual(['"bank.example.com" is not a host of the ingress routes', '"bank.example.com" is not a host of the ingress routes']);
    expect(h.ca.counts()).toMatchObject({ refused: 2, refusedByCode: { WARD_CA_FORBIDDEN: 2 } });
  });

  it('refuses a node proxy asking for DNS names (even a route host) with 403, without asking the authorizer', async () => {
    const h = await startCa({ authorizer: new RouteHosts(SHOP) });
    const node = await h.join('node-a');
    const r = await askNames(h, node, [SHOP]);
    expectError(r, 403, 'WARD_CA_FORBIDDEN');
    expect((h.authorizer as RouteHosts).askedNames).toEqual([]);
    expect(await dnsRecords(h)).toEqual([]);
    expect((await h.ca.audit.query({ decision: 'refused', limit: 1 }))[0]).toMatchObject({
      requester: node.id.toString(),
      identity: `dns:${SHOP}`,
      code: 'WARD_CA_FORBIDDEN',
    });
    expect(h.logs.records().some((l) => l.msg === 'CA request refused' && String(l.err).includes('is not the ingress'))).toBe(true);
    // The same node still obtains its own identity: the refusal is about DNS names only.
    expect((await h.call('POST', '/v1/issue', { creds: node, body: { csr: createCsr(PrivateKey.generate()) } })).status).toBe(200);
  });

  it('refuses every name when the authorizer has no mayObtainServerName (403, audited)', async () => {
    const h = await startCa(); // the plain GrantList: no answer about server names
    expect('mayObtainServerName' in h.authorizer).toBe(false);
    const ingress = await joinIngress(h);
    expectError(await askNames(h, ingress, [SHOP]), 403, 'WARD_CA_FORBIDDEN');
    expect(await dnsRecords(h)).toEqual([]);
    expect((await h.ca.audit.query({ decision: 'refused', limit: 1 }))[0]).toMatchObject({ requester: INGRESS.toString(), identity: `dns:${SHOP}`, code: 'WARD_CA_FORBIDDEN' });
    // The ingress still renews its own identity.
    const renewed = await h.call('POST', '/v1/issue', { creds: ingress, body: { csr: createCsr(PrivateKey.generate()) } });
    expect(renewed.status, renewed.text).toBe(200);
    expect(renewed.json.id).toBe(INGRESS.toString());
  });

  it('refuses malformed dnsNames with 400 and a CSR asking for more than the names with 403', async () => {
    const h = await startCa({ authorizer: new RouteHosts(SHOP, 'Shop.example.com') });
    const ingress = await joinIngress(h);
    for (const dnsNames of [SHOP, { 0: SHOP }, [SHOP, 42], Array.from({ length: 17 }, () => SHOP), [`${'a'.repeat(250)}.com`]]) {
      expectError(await askNames(h, ingress, dnsNames), 400, 'WARD_CA_REQUEST_INVALID');
    }
    // Shapes the API passes on are judged by the CA (and audited there).
    expectError(await askNames(h, ingress, []), 400, 'WARD_CA_REQUEST_INVALID');
    expectError(await askNames(h, ingress, ['Shop.example.com']), 400, 'WARD_CA_REQUEST_INVALID');
    expectError(await askNames(h, ingress, [SHOP, SHOP]), 400, 'WARD_CA_REQUEST_INVALID');
    const greedy = await h.call('POST', '/v1/issue', { creds: ingress, body: { csr: createCsr(PrivateKey.generate(), { dnsNames: [SHOP, 'bank.example.com'] }), dnsNames: [SHOP] } });
    expectError(greedy, 403, 'WARD_PKI_CSR_UNAUTHORIZED');
    // identity and dnsNames together: ambiguous, refused before anything is judged (not audited).
    const both = await h.call('POST', '/v1/issue', { creds: ingress, body: { csr: createCsr(PrivateKey.generate()), dnsNames: [SHOP], identity: INGRESS.toString() } });
    expectError(both, 400, 'WARD_CA_REQUEST_INVALID');
    expectError(await askNames(h, ingress, [SHOP], PrivateKey.generate(), { ttl: '48h' }), 400, 'WARD_CA_LIFETIME_INVALID');
    expect(await dnsRecords(h)).toEqual([]);
    const audited = await h.ca.audit.query({ decision: 'refused', requester: INGRESS.toString() });
    expect(audited.map((a) => [a.identity, a.code]).reverse()).toEqual([
      ['dns:', 'WARD_CA_REQUEST_INVALID'],
      ['dns:Shop.example.com', 'WARD_CA_REQUEST_INVALID'],
      [`dns:${SHOP},${SHOP}`, 'WARD_CA_REQUEST_INVALID'],
      [`dns:${SHOP}`, 'WARD_PKI_CSR_UNAUTHORIZED'],
      [`dns:${SHOP}`, 'WARD_CA_LIFETIME_INVALID'],
    ]);
  });
});
