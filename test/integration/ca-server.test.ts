/**
 * The CA's HTTPS API on real sockets (127.0.0.1): public routes, join-token bootstrap, node
 * authentication and the authorization hook, CSR policy through the API, hostile requests, the
 * error contract ({error: {code, message}} with the generic text; the detail only in the log),
 * the admin listener, and interop with curl and openssl s_client.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { Agent, request as httpsRequest, type RequestOptions } from 'node:https';
import { connect as tlsConnect, TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { CaServer, CertificateAuthority, assertLoopback, caServerId, clientKey, type CaServerLimits } from '../../ca/index.js';
// Not public: the test reads the issuing key to mint a hostile, validly chained client certificate.
import { keyPath } from '../../ca/store.js';
import { ERROR_CODES, isWardError, type WardErrorCode } from '../../core/errors.js';
import { SpiffeId } from '../../core/identity/index.js';
import { createRegistry } from '../../core/metrics.js';
import {
  LeafSigner,
  createIntermediate,
  PrivateKey,
  TrustBundle,
  checkSvidLeaf,
  createCsr,
  createRoot,
  parseCertificate,
  parseCertificates,
  toPem,
  verifySvid,
} from '../../core/pki/index.js';
import { meshClientOptions, type Credentials } from '../../core/tls/index.js';
import { GrantList, TD, captureLogs, clientOptions, startCa, type CaHarness, type CallResult } from '../helpers/ca.js';
import { openssl, opensslOk, tempDir } from '../helpers/openssl.js';

const run = promisify(execFile);
const CART = SpiffeId.workload(TD, 'shop', 'cart');
const ADMIN = SpiffeId.workload(TD, 'shop', 'admin');
const nodeId = (name: string) => SpiffeId.node(TD, name);

/** The whole error contract: status, code, and exactly the generic text of the code. */
function expectError(r: CallResult, status: number, code: WardErrorCode): void {
  expect({ status: r.status, body: r.json }).toStrictEqual({ status, body: { error: { code, message: ERROR_CODES[code] } } });
  expect(r.headers['content-type']).toBe('application/json');
}

/** The log records of refused API requests with `code` (where the detail goes). */
function refusals(h: CaHarness, code: WardErrorCode): Record<string, unknown>[] {
  return h.logs.records().filter((r) => r.msg === 'CA request refused' && r.code === code);
}

function certOf(r: CallResult) {
  return parseCertificates(r.json.certificate as string);
}

async function verifyIssued(h: CaHarness, r: CallResult, expectedId: SpiffeId): Promise<void> {
  expect(r.status, r.text).toBe(200);
  expect(r.json.id).toBe(expectedId.toString());
  const chain = certOf(r);
  expect(chain[0].uris).toEqual([expectedId.toString()]);
  const leaf = checkSvidLeaf(chain[0], { trustDomain: TD, usage: 'any', expectedId });
  expect(leaf.ok).toBe(true);
  const v = await verifySvid(chain, h.bundle, new Date(h.clock.now()), { expectedId });
  expect(v.ok, v.ok ? '' : v.detail).toBe(true);
  // The bundle in the response is the CA's.
  expect(TrustBundle.fromPem(TD, r.json.bundle).roots.map((c) => c.fingerprintSha256)).toEqual(h.bundle.roots.map((c) => c.fingerprintSha256));
}

function csr(o: { uri?: string; dnsNames?: string[] } = {}): string {
  return createCsr(PrivateKey.generate(), o);
}

/** A TLS connection to the CA as a mesh client (bundle + secure naming), without HTTP on top. */
async function tlsTo(h: CaHarness, creds?: Credentials): Promise<TLSSocket> {
  const socket = tlsConnect({ ...meshClientOptions({ bundle: h.bundle, expectedId: caServerId(TD), creds }), host: '127.0.0.1', port: h.port });
  await once(socket, 'secureConnect');
  return socket;
}

/** Everything the peer sends until it closes the connection (errors such as a reset end it too). */
async function readUntilClosed(socket: TLSSocket): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => undefined);
  await once(socket, 'close');
  return Buffer.concat(chunks).toString('utf8');
}

function statusLine(raw: string): string {
  return raw.split('\r\n', 1)[0];
}

function bodyOf(raw: string): unknown {
  return JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4));
}

function adminGet(h: CaHarness, path: string, method = 'GET'): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: h.adminPort, path, method, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), text }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A certificate for a node identity of TD from a CA the server has never heard of. */
function foreignNodeCreds(h: CaHarness, name: string): Credentials {
  const rootKey = PrivateKey.generate();
  const now = h.clock.now();
  const root = createRoot({ key: rootKey, trustDomain: TD, notBefore: new Date(now - 60_000), notAfter: new Date(now + 3_600_000) });
  const key = PrivateKey.generate();
  const leaf = new LeafSigner({ cert: root, key: rootKey }).sign({
    publicKeyDer: key.publicKeyDer(),
    id: nodeId(name),
    notBefore: new Date(now - 30_000),
    notAfter: new Date(now + 600_000),
  });
  return { id: nodeId(name), chainPem: leaf.pem(), key, bundle: h.bundle };
}

async function opensslCsr(dir: string, name: string, args: string[]): Promise<string> {
  const key = PrivateKey.generate();
  await writeFile(join(dir, `${name}.key`), key.exportPem(), { mode: 0o600 });
  await opensslOk(['req', '-new', '-key', `${name}.key`, '-subj', '/CN=x', ...args, '-out', `${name}.csr`], { cwd: dir });
  return readFile(join(dir, `${name}.csr`), 'utf8');
}

describe('public routes', () => {
  it('serves health without a client certificate', async () => {
    const h = await startCa();
    const r = await h.call('GET', '/v1/health');
    expect(r.status).toBe(200);
    expect(r.json).toEqual({
      status: 'ok',
      trustDomain: TD,
      activeIssuer: h.ca.activeIssuer().cert.fingerprintSha256,
      issuerNotAfter: h.ca.activeIssuer().cert.notAfter.toISOString(),
    });
  });

  it('serves the trust bundle as PEM and as SPIFFE JWKS, both parsing back to the same roots', async () => {
    const h = await startCa();
    const want = h.ca.bundle().roots.map((c) => c.fingerprintSha256);
    const pem = await h.call('GET', '/v1/bundle');
    expect(pem.status).toBe(200);
    expect(pem.headers['content-type']).toBe('application/x-pem-file');
    expect(TrustBundle.fromPem(TD, pem.text).roots.map((c) => c.fingerprintSha256)).toEqual(want);
    for (const r of [await h.call('GET', '/v1/bundle.jwks'), await h.call('GET', '/v1/bundle', { headers: { accept: 'application/json' } })]) {
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.json.keys[0].use).toBe('x509-svid');
      expect(TrustBundle.fromJwks(TD, r.text).roots.map((c) => c.fingerprintSha256)).toEqual(want);
    }
  });

  it('presents spiffe://TD/ward/ca over TLS 1.3, and a client pinning another identity refuses it', async () => {
    const h = await startCa();
    const socket = await tlsTo(h);
    expect(socket.getProtocol()).toBe('TLSv1.3');
    const cert = parseCertificate(socket.getPeerCertificate().raw);
    expect(cert.uris).toEqual([`spiffe://${TD}/ward/ca`]);
    socket.destroy();
    // A client that pins another identity refuses the server (secure naming).
    const pinnedElsewhere = tlsConnect({ ...meshClientOptions({ bundle: h.bundle, expectedId: CART }), host: '127.0.0.1', port: h.port });
    const [err] = (await once(pinnedElsewhere, 'error')) as [Error];
    expect(isWardError(err, 'WARD_PKI_SVID_INVALID')).toBe(true);
  });
});

describe('join tokens', () => {
  it('bootstraps spiffe://TD/ward/node/NAME and is consumed on use', async () => {
    const h = await startCa();
    const { token } = await h.tokens.create('node-1');
    const first = await h.call('POST', '/v1/join', { body: { token, csr: csr() } });
    await verifyIssued(h, first, nodeId('node-1'));
    const again = await h.call('POST', '/v1/join', { body: { token, csr: csr() } });
    expectError(again, 401, 'WARD_CA_TOKEN_INVALID');
    expect(await h.tokens.list()).toEqual([]);
    // The inventory names the token's node as requester; the secret is nowhere in the log.
    const inv = await h.ca.inventory.query({ identity: nodeId('node-1') });
    expect(inv.map((r) => r.requester)).toEqual(['join-token:node-1']);
    expect(h.logs.lines.join('')).not.toContain(token);
    expect(h.logs.lines.join('')).not.toContain('PRIVATE KEY');
    expect(refusals(h, 'WARD_CA_TOKEN_INVALID')[0].err).toMatch(/unknown or already used/);
  });

  it('an ingress token bootstraps the ingress identity, which may renew itself and nothing else', async () => {
    const h = await startCa();
    const ingressId = SpiffeId.ingress(TD);
    const { token } = await h.tokens.createForIngress();
    const key = PrivateKey.generate();
    const joined = await h.call('POST', '/v1/join', { body: { token, csr: createCsr(key) } });
    await verifyIssued(h, joined, ingressId);
    expect((await h.ca.inventory.query({ identity: ingressId })).map((r) => r.requester)).toEqual(['join-token:ingress']);
    const creds: Credentials = { id: ingressId, chainPem: (joined.json as { certificate: string }).certificate, key, bundle: h.ca.bundle() };
    // Its own renewal: allowed without asking the authorizer (the ingress has no node).
    const renewed = await h.call('POST', '/v1/issue', { creds, body: { csr: createCsr(PrivateKey.generate()) } });
    await verifyIssued(h, renewed, ingressId);
    // Anything else: a workload identity, a node identity — refused and audited.
    for (const identity of [SpiffeId.workload(TD, 'shop', 'web'), nodeId('node-1')]) {
      expectError(await h.call('POST', '/v1/issue', { creds, body: { csr: createCsr(PrivateKey.generate()), identity: identity.toString() } }), 403, 'WARD_CA_FORBIDDEN');
    }
    expect(h.authorizer.asked).toEqual([]);
  });

  it('never lets a node proxy obtain the ingress identity, whatever the authorizer says', async () => {
    const h = await startCa();
    h.authorizer.grant(nodeId('node-1'), SpiffeId.ingress(TD));
    const { token } = await h.tokens.create('node-1');
    const key = PrivateKey.generate();
    const joined = await h.call('POST', '/v1/join', { body: { token, csr: createCsr(key) } });
    const creds: Credentials = { id: nodeId('node-1'), chainPem: (joined.json as { certificate: string }).certificate, key, bundle: h.ca.bundle() };
    const r = await h.call('POST', '/v1/issue', { creds, body: { csr: createCsr(PrivateKey.generate()), identity: SpiffeId.ingress(TD).toString() } });
    expectError(r, 403, 'WARD_CA_FORBIDDEN');
  });

  it('refuses an expired token', async () => {
    const h = await startCa();
    const { token } = await h.tokens.create('node-1', 60_000);
    h.clock.advance(60_001);
    expectError(await h.call('POST', '/v1/join', { body: { token, csr: csr() } }), 401, 'WARD_CA_TOKEN_INVALID');
    expect(refusals(h, 'WARD_CA_TOKEN_INVALID')[0].err).toMatch(/expired/);
    expect(h.ca.inventory.counts().total).toBe(1); // the server's own certificate only
  });

  it('lets exactly one of several concurrent joins with the same token succeed', async () => {
    const h = await startCa();
    const { token } = await h.tokens.create('node-1');
    const results = await Promise.all([0, 1, 2, 3].map(() => h.call('POST', '/v1/join', { body: { token, csr: csr() } })));
    expect(results.map((r) => r.status).sort()).toEqual([200, 401, 401, 401]);
    for (const r of results.filter((x) => x.status === 401)) expectError(r, 401, 'WARD_CA_TOKEN_INVALID');
    expect(await h.ca.inventory.query({ identity: nodeId('node-1') })).toHaveLength(1);
  });

  it('refuses malformed and unknown tokens alike, and malformed requests with 400', async () => {
    const h = await startCa();
    for (const token of ['wardjt_short', 'not-a-token', `wardjt_${'A'.repeat(43)}`, `wardjt_${'A'.repeat(42)}!`]) {
      expectError(await h.call('POST', '/v1/join', { body: { token, csr: csr() } }), 401, 'WARD_CA_TOKEN_INVALID');
    }
    expectError(await h.call('POST', '/v1/join', { body: { token: 42, csr: csr() } }), 400, 'WARD_CA_REQUEST_INVALID');
    expectError(await h.call('POST', '/v1/join', { body: { csr: csr() } }), 400, 'WARD_CA_REQUEST_INVALID');
    const { token } = await h.tokens.create('node-1');
    expectError(await h.call('POST', '/v1/join', { body: { token } }), 400, 'WARD_CA_REQUEST_INVALID');
    expect(h.ca.inventory.counts().total).toBe(1);
  });

  it('issues the token\'s node identity, never the one a CSR asks for', async () => {
    const h = await startCa();
    const { token } = await h.tokens.create('node-1');
    const r = await h.call('POST', '/v1/join', { body: { token, csr: csr({ uri: nodeId('node-2').toString() }) } });
    expectError(r, 403, 'WARD_PKI_CSR_UNAUTHORIZED');
    expect(r.text).not.toContain('node-2');
    expect(h.logs.records().some((l) => l.msg === 'certificate refused' && String(l.reason).includes('node-2'))).toBe(true);
    // A token is good for one attempt: a refused join has used it up too.
    expectError(await h.call('POST', '/v1/join', { body: { token, csr: csr() } }), 401, 'WARD_CA_TOKEN_INVALID');
  });
});

describe('issuance with a node certificate', () => {
  it('renews the node\'s own identity', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    const r = await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node });
    await verifyIssued(h, r, nodeId('node-a'));
    // The renewed certificate authenticates in turn.
    const renewed = await h.issue(node);
    await verifyIssued(h, await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: renewed }), nodeId('node-a'));
    expect(h.authorizer.asked).toEqual([]); // no workload identity was asked for
  });

  it('stops renewing a node that left the mesh (the authorizer says so), at its next request', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    expect((await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node })).status).toBe(200);
    h.authorizer.removeNode(node.id);
    const r = await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node });
    expectError(r, 403, 'WARD_CA_FORBIDDEN');
    expect((await h.ca.audit.query({ decision: 'refused', limit: 1 }))[0]).toMatchObject({ identity: node.id.toString(), code: 'WARD_CA_FORBIDDEN' });
  });

  it('issues a workload identity the authorizer allows, carrying exactly that identity and lifetime', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    h.authorizer.grant(node.id, CART);
    const r = await h.call('POST', '/v1/issue', { body: { csr: csr(), identity: CART.toString(), ttl: '10m' }, creds: node });
    await verifyIssued(h, r, CART);
    const leaf = certOf(r)[0];
    expect(leaf.notAfter.getTime() - h.clock.now()).toBeLessThanOrEqual(600_000);
    expect(leaf.notAfter.getTime() - h.clock.now()).toBeGreaterThan(598_000);
    expect(h.authorizer.asked).toEqual([{ node: node.id.toString(), identity: CART.toString() }]);
    const inv = await h.ca.inventory.query({ identity: CART });
    expect(inv.map((i) => [i.requester, i.serial])).toEqual([[node.id.toString(), leaf.serialHex]]);
  });

  it('refuses identities the node may not obtain with 403, without leaking which', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    h.authorizer.grant(nodeId('node-b'), CART); // granted to another node
    const asks = [CART.toString(), ADMIN.toString(), nodeId('node-b').toString(), `spiffe://${TD}`, `spiffe://${TD}/ward/ca`];
    for (const identity of asks) {
      const r = await h.call('POST', '/v1/issue', { body: { csr: csr(), identity }, creds: node });
      expectError(r, 403, 'WARD_CA_FORBIDDEN');
      expect(r.text).not.toContain('node-a');
    }
    // The authorizer is asked about workload identities only; node and CA identities are never grantable.
    expect(h.authorizer.asked.map((a) => a.identity)).toEqual([CART.toString(), ADMIN.toString()]);
    const logged = refusals(h, 'WARD_CA_FORBIDDEN').map((l) => String(l.err));
    expect(logged[0]).toContain(`node ${node.id} may not obtain ${CART}`);
    // Authorization refusals are decisions on issuance: they are audited with the caller.
    const audit = await h.ca.audit.query({ decision: 'refused', requester: node.id.toString() });
    expect(audit.map((a) => [a.identity, a.code])).toEqual(asks.map((i) => [i, 'WARD_CA_FORBIDDEN']).reverse());
    expect(h.ca.inventory.counts().total).toBe(2); // server + node-a
  });

  it('refuses an identity from another trust domain and an invalid SPIFFE ID', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    h.authorizer.grant(node.id, 'spiffe://other.org/ns/shop/sa/cart');
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr(), identity: 'spiffe://other.org/ns/shop/sa/cart' }, creds: node }), 403, 'WARD_CA_FORBIDDEN');
    expect(h.authorizer.asked).toEqual([]);
    for (const identity of ['not a spiffe id', 'spiffe://Example.org/ns/a/sa/b', `spiffe://${TD}/ns/../sa/b`, `spiffe://${TD}/ns/a/sa/b?x=1`]) {
      expectError(await h.call('POST', '/v1/issue', { body: { csr: csr(), identity }, creds: node }), 400, 'WARD_ID_INVALID');
    }
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr(), identity: 'x'.repeat(3000) }, creds: node }), 413, 'WARD_CA_REQUEST_TOO_LARGE');
    expect(h.authorizer.asked).toEqual([]);
  });

  it('requires a client certificate from this CA, of a node', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() } }), 401, 'WARD_CA_UNAUTHENTICATED');
    // Same trust domain, same node name, another CA: OpenSSL's path validation fails, so 401.
    const foreign = foreignNodeCreds(h, 'node-a');
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: foreign }), 401, 'WARD_PKI_CHAIN_INVALID');
    // A CA certificate as the client's leaf, validly chained to the bundle. A leaf must not be a CA;
    // here OpenSSL's purpose check (no digitalSignature for a TLS client) refuses it before the SVID
    // rules are reached.
    const issuerKey = PrivateKey.from(await readFile(keyPath(h.stateDir, h.ca.activeIssuer().cert.fingerprintSha256)));
    const subKey = PrivateKey.generate();
    const now = h.clock.now();
    const subCa = createIntermediate({
      issuer: { cert: h.ca.activeIssuer().cert, key: issuerKey },
      publicKey: subKey.publicKey,
      trustDomain: TD,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 600_000),
    });
    const caAsLeaf: Credentials = { id: node.id, chainPem: subCa.pem + h.ca.activeIssuer().cert.pem, key: subKey, bundle: h.bundle };
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: caAsLeaf }), 401, 'WARD_PKI_CHAIN_INVALID');
    expect(refusals(h, 'WARD_PKI_CHAIN_INVALID').map((l) => String(l.err))).toEqual([
      expect.stringContaining('UNABLE_TO_VERIFY_LEAF_SIGNATURE'),
      expect.stringContaining('INVALID_PURPOSE'),
    ]);
    // A workload certificate (not a node proxy) may not ask for certificates.
    h.authorizer.grant(node.id, CART);
    const workload = await h.issue(node, CART);
    const r = await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: workload });
    expectError(r, 403, 'WARD_CA_FORBIDDEN');
    expect(String(refusals(h, 'WARD_CA_FORBIDDEN')[0].err)).toContain('is not a node proxy');
    expect(h.ca.inventory.counts().total).toBe(3); // server, node-a, cart
  });

  it('answers a failing authorizer with a generic 500 and keeps the detail in the log', async () => {
    class FailingAuthorizer extends GrantList {
      override mayObtain(): boolean {
        throw new Error('source of truth unreachable: dial tcp 10.1.2.3:443 password=hunter2');
      }
    }
    const h = await startCa({ authorizer: new FailingAuthorizer() });
    const node = await h.join('node-a');
    const r = await h.call('POST', '/v1/issue', { body: { csr: csr(), identity: CART.toString() }, creds: node });
    expectError(r, 500, 'WARD_CA_INTERNAL');
    expect(r.text).not.toMatch(/hunter2|10\.1\.2\.3|unreachable/);
    const logged = h.logs.records().filter((l) => l.msg === 'CA request failed');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 50, route: 'issue', code: 'WARD_CA_INTERNAL' });
    expect(String(logged[0].err)).toContain('source of truth unreachable');
    // Node renewal asks the authorizer's other question, which still answers: renewal works.
    await verifyIssued(h, await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node }), node.id);
  });
});

describe('per-client bounds', () => {
  it('counts IPv4 addresses singly and IPv6 by /64', () => {
    expect(clientKey('127.0.0.1')).toBe('127.0.0.1');
    expect(clientKey('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(clientKey('2001:db8:0:1::5')).toBe('2001:db8:0:1::/64');
    expect(clientKey('2001:DB8:0:1:ffff:1:2:3')).toBe('2001:db8:0:1::/64');
    expect(clientKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
  });

  it('refuses connections past the per-client cap while other clients still connect', async () => {
    const h = await startCa({ limits: { maxConnectionsPerClient: 2 } });
    const open = (localAddress: string) => {
      const tcp = netConnect({ host: '127.0.0.1', port: h.port, localAddress });
      const s = tlsConnect({ socket: tcp, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
      onTestFinished(() => void s.destroy());
      s.on('error', () => undefined);
      return s;
    };
    // Settles on the first of handshake done / connection gone (an 'error' always precedes 'close').
    const outcome = (s: TLSSocket) =>
      new Promise<'connected' | 'closed'>((resolve) => {
        s.once('secureConnect', () => resolve('connected'));
        s.once('close', () => resolve('closed'));
      });
    const a1 = open('127.0.0.6');
    expect(await outcome(a1)).toBe('connected');
    const a2 = open('127.0.0.6');
    expect(await outcome(a2)).toBe('connected');
    expect(await outcome(open('127.0.0.6'))).toBe('closed');
    expect(await outcome(open('127.0.0.7'))).toBe('connected');
    // A slot frees when a connection closes.
    a1.destroy();
    await vi.waitFor(async () => {
      const again = open('127.0.0.6');
      const r = await outcome(again);
      again.destroy();
      expect(r).toBe('connected');
    }, { timeout: 5_000, interval: 50 });
  });
});

describe('health', () => {
  it('turns unhealthy (503) once the durable logs fail, instead of answering ok while refusing everything', async () => {
    let failWrites = false;
    const h = await startCa({ hooks: { onStep: (step) => { if (failWrites && step === 'appended') throw new Error('EIO: disk gone'); } } });
    expect((await h.call('GET', '/v1/health')).status).toBe(200);
    const node = await h.join('node-a');
    failWrites = true;
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node }), 500, 'WARD_CA_INTERNAL');
    const health = await h.call('GET', '/v1/health');
    expect(health.status).toBe(503);
    expect(health.text).not.toContain('EIO'); // detail stays in the log
    const admin = await fetch(`http://127.0.0.1:${h.adminPort}/healthz`);
    expect(admin.status).toBe(503);
    expect(await admin.text()).toContain('EIO: disk gone');
  });
});

describe('CSR policy through the API', () => {
  it('refuses CSRs asking for more than the authorized identity (403)', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    const dir = await tempDir();
    const own = node.id.toString();
    const bad = [
      csr({ uri: ADMIN.toString() }),
      csr({ dnsNames: ['evil.example.com'] }),
      await opensslCsr(dir, 'two', ['-addext', `subjectAltName=URI:${own},URI:${ADMIN}`]),
      await opensslCsr(dir, 'ca', ['-addext', 'basicConstraints=critical,CA:TRUE']),
      await opensslCsr(dir, 'ip', ['-addext', `subjectAltName=URI:${own},IP:10.0.0.1`]),
    ];
    for (const c of bad) {
      const r = await h.call('POST', '/v1/issue', { body: { csr: c }, creds: node });
      expectError(r, 403, 'WARD_PKI_CSR_UNAUTHORIZED');
      expect(r.text).not.toContain('admin');
      expect(r.text).not.toContain(c.slice(40, 80));
    }
    // Asking for exactly the authorized identity is fine (openssl-made, too).
    await verifyIssued(h, await h.call('POST', '/v1/issue', { body: { csr: await opensslCsr(dir, 'ok', ['-addext', `subjectAltName=URI:${own}`]) }, creds: node }), node.id);
    const audited = await h.ca.audit.query({ decision: 'refused' });
    expect(audited.map((a) => a.code)).toEqual(bad.map(() => 'WARD_PKI_CSR_UNAUTHORIZED'));
  });

  it('refuses malformed, truncated, forged and non-P-256 CSRs (400) and oversized ones (413)', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    const dir = await tempDir();
    const good = csr();
    const der = Buffer.from(good.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    const flipped = Buffer.from(der);
    flipped[flipped.length - 1] ^= 0x01; // last byte of the signature's S
    const lines = good.trim().split('\n');
    await opensslOk(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rsa.key', '-subj', '/CN=x', '-out', 'rsa.csr'], { cwd: dir });
    const rsa = await readFile(join(dir, 'rsa.csr'), 'utf8');
    const cases: [string, string, WardErrorCode][] = [
      ['flipped signature bit', toPem(flipped, 'CERTIFICATE REQUEST'), 'WARD_PKI_CSR_INVALID'],
      ['truncated DER', toPem(der.subarray(0, der.length - 20), 'CERTIFICATE REQUEST'), 'WARD_PKI_CSR_INVALID'],
      ['truncated PEM (no END line)', lines.slice(0, 3).join('\n'), 'WARD_PKI_PEM_INVALID'],
      ['garbage base64', '-----BEGIN CERTIFICATE REQUEST-----\n!!!*** not base64 ***!!!\n-----END CERTIFICATE REQUEST-----\n', 'WARD_PKI_PEM_INVALID'],
      ['a certificate, not a CSR', node.chainPem.split('-----END CERTIFICATE-----')[0] + '-----END CERTIFICATE-----\n', 'WARD_PKI_PEM_INVALID'],
      ['RSA key', rsa, 'WARD_PKI_CSR_INVALID'],
      ['random bytes', toPem(Buffer.alloc(300, 0x30), 'CERTIFICATE REQUEST'), 'WARD_PKI_CSR_INVALID'],
    ];
    for (const [what, c, code] of cases) {
      const r = await h.call('POST', '/v1/issue', { body: { csr: c }, creds: node });
      expect(r.json?.error?.code, what).toBe(code);
      expectError(r, 400, code);
    }
    const huge = `-----BEGIN CERTIFICATE REQUEST-----\n${'A'.repeat(20_000)}\n-----END CERTIFICATE REQUEST-----\n`;
    expectError(await h.call('POST', '/v1/issue', { body: { csr: huge }, creds: node }), 413, 'WARD_PKI_CSR_TOO_LARGE');
    // Each refusal is audited with its precise reason; the responses carried only the code.
    const audited = await h.ca.audit.query({ decision: 'refused' });
    expect(audited).toHaveLength(cases.length + 1);
    expect(audited.some((a) => /RSA/.test(a.reason ?? ''))).toBe(true);
  });

  it('refuses lifetimes outside 5m..24h and malformed ttl values', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    for (const ttl of ['4m59s', '1m', '24h1s', '30d']) {
      expectError(await h.call('POST', '/v1/issue', { body: { csr: csr(), ttl }, creds: node }), 400, 'WARD_CA_LIFETIME_INVALID');
    }
    for (const ttl of [3600, 'soon', '', '-1h', ['1h']]) {
      expectError(await h.call('POST', '/v1/issue', { body: { csr: csr(), ttl }, creds: node }), 400, 'WARD_CA_REQUEST_INVALID');
    }
    for (const ttl of ['5m', '24h']) {
      const r = await h.call('POST', '/v1/issue', { body: { csr: csr(), ttl }, creds: node });
      await verifyIssued(h, r, node.id);
    }
  });
});

describe('hostile requests', () => {
  it('answers 413 to a declared oversized body without reading it, and keeps serving', async () => {
    const h = await startCa();
    const socket = await tlsTo(h);
    const response = readUntilClosed(socket);
    socket.write('POST /v1/join HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n{"token":');
    const raw = await response;
    expect(statusLine(raw)).toBe('HTTP/1.1 413 Payload Too Large');
    expect(bodyOf(raw)).toStrictEqual({ error: { code: 'WARD_CA_REQUEST_TOO_LARGE', message: ERROR_CODES.WARD_CA_REQUEST_TOO_LARGE } });
    expect(raw.toLowerCase()).toContain('connection: close');
    expect((await h.call('GET', '/v1/health')).status).toBe(200);
  });

  it('answers 413 to an oversized chunked body (no declared length) and keeps serving', async () => {
    const h = await startCa({ limits: { maxBodyBytes: 4096 } });
    const node = await h.join('node-a');
    for (const creds of [undefined, node]) {
      const socket = await tlsTo(h, creds);
      const response = readUntilClosed(socket);
      const path = creds ? '/v1/issue' : '/v1/join';
      socket.write(`POST ${path} HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n`);
      // More than the limit in several chunks, then silence (no terminating chunk): the server must
      // not wait for the end of a body it has already refused.
      for (let i = 0; i < 6; i++) socket.write(`400\r\n${'x'.repeat(0x400)}\r\n`);
      const raw = await response;
      expect(statusLine(raw)).toBe('HTTP/1.1 413 Payload Too Large');
      expect(bodyOf(raw)).toStrictEqual({ error: { code: 'WARD_CA_REQUEST_TOO_LARGE', message: ERROR_CODES.WARD_CA_REQUEST_TOO_LARGE } });
    }
    await verifyIssued(h, await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node }), node.id);
  });

  it('refuses bodies that are not a JSON object of strings (400)', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    const json = { 'content-type': 'application/json' };
    const cases: [string, { body: unknown; headers?: Record<string, string> }][] = [
      ['invalid JSON', { body: '{"csr": ', headers: json }],
      ['empty body', { body: '', headers: json }],
      ['JSON array', { body: '[]', headers: json }],
      ['JSON null', { body: 'null', headers: json }],
      ['JSON string', { body: '"csr"', headers: json }],
      ['csr of wrong type', { body: { csr: 42 } }],
      ['csr as array', { body: { csr: [csr()] } }],
      ['identity of wrong type', { body: { csr: csr(), identity: { uri: CART.toString() } } }],
      ['wrong content-type', { body: JSON.stringify({ csr: csr() }), headers: { 'content-type': 'text/plain' } }],
      ['no content-type', { body: JSON.stringify({ csr: csr() }) }],
      ['deeply nested array', { body: '['.repeat(10_000) + ']'.repeat(10_000), headers: json }],
      ['deeply nested object', { body: '{"csr":'.repeat(3_000) + '1' + '}'.repeat(3_000), headers: json }],
      ['invalid UTF-8', { body: Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]) as unknown as string, headers: json }],
    ];
    for (const [what, c] of cases) {
      const r = await h.call('POST', '/v1/issue', { ...c, creds: node });
      expect(r.json?.error?.code, what).toBe('WARD_CA_REQUEST_INVALID');
      expectError(r, 400, 'WARD_CA_REQUEST_INVALID');
    }
    expect(h.ca.inventory.counts().total).toBe(2);
  });

  it('answers 404 to unknown routes and methods', async () => {
    const h = await startCa();
    for (const [method, path] of [['GET', '/'], ['GET', '/v1/nope'], ['DELETE', '/v1/health'], ['GET', '/v1/issue'], ['PUT', '/v1/join'], ['GET', `/${'a'.repeat(4000)}`]]) {
      const r = await h.call(method, path);
      expectError(r, 404, 'WARD_CA_NOT_FOUND');
      expect(r.text).not.toContain('aaaa');
    }
  });

  it('answers 431 to huge headers and keeps serving', async () => {
    const h = await startCa();
    const r = await h.call('GET', '/v1/health', { headers: { 'x-big': 'a'.repeat(20_000) } });
    expect(r.status).toBe(431);
    expect((await h.call('GET', '/v1/health')).status).toBe(200);
  });

  it('cuts off slow clients (headers, body, handshake) while serving others', async () => {
    const limits: Partial<CaServerLimits> = { headersTimeoutMs: 500, requestTimeoutMs: 1_500 };
    const h = await startCa({ limits });
    const node = await h.join('node-a');
    // Headers that never end.
    const slowHeaders = await tlsTo(h);
    const headersClosed = readUntilClosed(slowHeaders);
    slowHeaders.write('POST /v1/issue HTTP/1.1\r\nhost: ca\r\nx-a: 1\r\n');
    // A body that never completes.
    const slowBody = await tlsTo(h, node);
    const bodyClosed = readUntilClosed(slowBody);
    slowBody.write('POST /v1/issue HTTP/1.1\r\nhost: ca\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"csr":"');
    // A TCP connection that never even starts TLS.
    const silent = netConnect({ host: '127.0.0.1', port: h.port });
    await once(silent, 'connect');
    const silentClosed = once(silent, 'close');
    // Meanwhile other clients are served.
    await verifyIssued(h, await h.call('POST', '/v1/issue', { body: { csr: csr() }, creds: node }), node.id);
    const started = performance.now();
    const [headersRaw, bodyRaw] = await Promise.all([headersClosed, bodyClosed, silentClosed]);
    // Cut off by the server's deadlines, not by the test's timeout.
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(statusLine(headersRaw)).toBe('HTTP/1.1 408 Request Timeout');
    expect(statusLine(bodyRaw)).toBe('HTTP/1.1 408 Request Timeout');
    expect((await h.call('GET', '/v1/health')).status).toBe(200);
  });

  it('closes promptly even with connections stuck before or inside the TLS handshake', async () => {
    const h = await startCa(); // handshake deadline: the default 5s
    const silent = netConnect({ host: '127.0.0.1', port: h.port });
    await once(silent, 'connect');
    const silentClosed = once(silent, 'close');
    const idle = await tlsTo(h); // TLS up, no request
    const idleClosed = readUntilClosed(idle);
    const started = performance.now();
    await h.server.close(200);
    await Promise.all([silentClosed, idleClosed]);
    expect(performance.now() - started).toBeLessThan(3_000);
    await expect(h.call('GET', '/v1/health')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('rate-limits each client on its own: one over its limit gets 429, others are served', async () => {
    const h = await startCa({ limits: { perClientBurst: 3, perClientPerSecond: 1 } });
    // Joins count against the source address 127.0.0.1: two of its three tokens.
    const a = await h.join('node-a');
    const b = await h.join('node-b');
    const issueAs = (creds: Credentials) => h.call('POST', '/v1/issue', { body: { csr: csr() }, creds });
    for (let i = 0; i < 3; i++) expect((await issueAs(a)).status).toBe(200);
    const limited = await issueAs(a);
    expectError(limited, 429, 'WARD_CA_RATE_LIMITED');
    expect(limited.text).not.toContain('node-a');
    expect(String(refusals(h, 'WARD_CA_RATE_LIMITED')[0].err)).toContain(a.id.toString());
    await verifyIssued(h, await issueAs(b), b.id);
    // Unauthenticated routes are limited per source address: 127.0.0.1 has one token left.
    expect((await h.call('GET', '/v1/bundle')).status).toBe(200);
    expectError(await h.call('GET', '/v1/bundle'), 429, 'WARD_CA_RATE_LIMITED');
    expect((await h.call('GET', '/v1/bundle', { localAddress: '127.0.0.2' })).status).toBe(200);
    // Time refills the buckets (the limiter runs on the injected clock).
    h.clock.advance(1_000);
    expect((await issueAs(a)).status).toBe(200);
    expect((await h.call('GET', '/v1/bundle')).status).toBe(200);
  });

  it('limits cheap refusals too: unauthenticated /v1/issue, health and unknown routes count per address', async () => {
    const h = await startCa({ limits: { perClientBurst: 2, perClientPerSecond: 1 } });
    const from = { localAddress: '127.0.0.3' };
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() }, ...from }), 401, 'WARD_CA_UNAUTHENTICATED');
    expect((await h.call('GET', '/v1/health', from)).status).toBe(200);
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() }, ...from }), 429, 'WARD_CA_RATE_LIMITED');
    expectError(await h.call('GET', '/nope', from), 429, 'WARD_CA_RATE_LIMITED');
    expectError(await h.call('GET', '/v1/health', from), 429, 'WARD_CA_RATE_LIMITED');
    expect((await h.call('GET', '/v1/health', { localAddress: '127.0.0.4' })).status).toBe(200);
  });
});

describe('after hostile input', () => {
  it('still issues to good clients, and its state reopens with the refusals and issuances recorded', async () => {
    const h = await startCa({ limits: { maxBodyBytes: 4096 } });
    const node = await h.join('node-a');
    h.authorizer.grant(node.id, CART);
    const bad: [CallResult, number, WardErrorCode][] = [
      [await h.call('POST', '/v1/issue', { body: { csr: csr(), identity: ADMIN.toString() }, creds: node }), 403, 'WARD_CA_FORBIDDEN'],
      [await h.call('POST', '/v1/issue', { body: { csr: csr({ uri: ADMIN.toString() }), identity: CART.toString() }, creds: node }), 403, 'WARD_PKI_CSR_UNAUTHORIZED'],
      [await h.call('POST', '/v1/issue', { body: { csr: 'garbage' }, creds: node }), 400, 'WARD_PKI_PEM_INVALID'],
      [await h.call('POST', '/v1/issue', { body: { csr: csr(), ttl: '1m' }, creds: node }), 400, 'WARD_CA_LIFETIME_INVALID'],
      [await h.call('POST', '/v1/issue', { body: '{', headers: { 'content-type': 'application/json' }, creds: node }), 400, 'WARD_CA_REQUEST_INVALID'],
      [await h.call('POST', '/v1/issue', { body: { csr: 'x'.repeat(5000) }, creds: node }), 413, 'WARD_CA_REQUEST_TOO_LARGE'],
      [await h.call('POST', '/v1/join', { body: { token: 'wardjt_nope', csr: csr() } }), 401, 'WARD_CA_TOKEN_INVALID'],
    ];
    for (const [r, status, code] of bad) expectError(r, status, code);
    const good = await h.call('POST', '/v1/issue', { body: { csr: csr(), identity: CART.toString() }, creds: node });
    await verifyIssued(h, good, CART);
    const serial = certOf(good)[0].serialHex;

    // Every refusal is in the log with its detail.
    for (const [, , code] of bad) expect(refusals(h, code).length, code).toBeGreaterThan(0);

    await h.server.close();
    await h.ca.close();
    const again = await CertificateAuthority.open({ stateDir: h.stateDir, clock: h.clock, logger: captureLogs().logger, registry: createRegistry() });
    try {
      const refused = await again.audit.query({ decision: 'refused', requester: node.id.toString() });
      expect(refused.map((a) => a.code).sort()).toEqual(['WARD_CA_FORBIDDEN', 'WARD_CA_LIFETIME_INVALID', 'WARD_PKI_CSR_UNAUTHORIZED', 'WARD_PKI_PEM_INVALID']);
      const issued = await again.inventory.query({ requester: node.id.toString() });
      expect(issued.map((i) => [i.identity, i.serial])).toEqual([[CART.toString(), serial]]);
      expect((await again.inventory.query({ identity: node.id })).map((i) => i.requester)).toEqual(['join-token:node-a']);
      expect(again.bundle().roots.map((c) => c.fingerprintSha256)).toEqual(h.bundle.roots.map((c) => c.fingerprintSha256));
    } finally {
      await again.close();
    }
  });
});

describe('admin listener', () => {
  it('serves /healthz, /metrics and /v1/status on loopback', async () => {
    const h = await startCa();
    await h.join('node-a');
    expectError(await h.call('POST', '/v1/issue', { body: { csr: csr() } }), 401, 'WARD_CA_UNAUTHENTICATED');
    expect(await adminGet(h, '/healthz')).toMatchObject({ status: 200, text: 'ok\n' });
    const metrics = await adminGet(h, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/^ward_ca_certificates_issued_total 2$/m); // server + node
    expect(metrics.text).toMatch(/^ward_ca_requests_total\{route="join",code="OK"\} 1$/m);
    expect(metrics.text).toMatch(/^ward_ca_requests_total\{route="issue",code="WARD_CA_UNAUTHENTICATED"\} 1$/m);
    const status = await adminGet(h, '/v1/status');
    expect(status.type).toBe('application/json');
    expect(JSON.parse(status.text)).toMatchObject({ trustDomain: TD, counts: { issued: 2, certificates: 2 } });
    expect((await adminGet(h, '/nope')).status).toBe(404);
    expect((await adminGet(h, '/healthz', 'POST')).status).toBe(405);
  });

  it('refuses a non-loopback admin host before listening on anything', async () => {
    const h = await startCa();
    for (const adminHost of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'example.com']) {
      expect(() => assertLoopback(adminHost)).toThrow(expect.objectContaining({ code: 'WARD_CONFIG_INVALID' }));
    }
    for (const adminHost of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) expect(() => assertLoopback(adminHost)).not.toThrow();
    const server = new CaServer({ ca: h.ca, tokens: h.tokens, authorizer: h.authorizer, clock: h.clock, logger: h.logs.logger, registry: createRegistry() });
    const err = await server.listen({ host: '127.0.0.1', port: 0, adminHost: '0.0.0.0', adminPort: 0 }).catch((e: unknown) => e);
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    // Nothing was started, so nothing was issued for it either.
    expect(server.credentials).toBeUndefined();
    await server.close();
  });
});

describe('work done once, not per request', () => {
  /** A request with prepared TLS options (or a keep-alive agent): building them is not counted. */
  function send(h: CaHarness, o: RequestOptions, method: string, path: string, body?: unknown): Promise<{ status: number; text: string; json: any }> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        { ...o, host: '127.0.0.1', port: h.port, method, path, headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {} },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text, json: text.startsWith('{') ? JSON.parse(text) : undefined }));
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  it('encodes the bundle once per bundle, not per request, and serves the new one after a change', async () => {
    const h = await startCa();
    const o = { ...clientOptions(h.bundle), agent: false as const };
    const toPem = vi.spyOn(TrustBundle.prototype, 'toPem');
    const toJwks = vi.spyOn(TrustBundle.prototype, 'toJwks');
    for (let i = 0; i < 3; i++) {
      expect((await send(h, o, 'GET', '/v1/bundle')).text).toBe(h.bundle.toPem());
      expect(TrustBundle.fromJwks(TD, (await send(h, o, 'GET', '/v1/bundle.jwks')).text).roots).toHaveLength(1);
    }
    expect(toPem).toHaveBeenCalledTimes(1 + 3); // the server's one encoding, and the test's three
    expect(toJwks).toHaveBeenCalledTimes(1);
    await h.ca.rotation.prepare('root');
    expect(TrustBundle.fromPem(TD, (await send(h, o, 'GET', '/v1/bundle')).text).roots).toHaveLength(2);
  });

  it('checks a keep-alive client\'s certificate once per connection, and refuses it once it has expired', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    const agent = new Agent({ keepAlive: true, maxSockets: 1, maxCachedSessions: 0 });
    onTestFinished(() => agent.destroy());
    const o = { ...clientOptions(h.bundle, node), agent };
    const renew = () => send(h, o, 'POST', '/v1/issue', { csr: csr() });
    expect((await renew()).status).toBe(200);
    const peerCertificateReads = vi.spyOn(TLSSocket.prototype, 'getPeerCertificate');
    for (let i = 0; i < 3; i++) expect((await renew()).status).toBe(200);
    expect(peerCertificateReads).not.toHaveBeenCalled();
    // The node's certificate (1h) expires while its connection stays open: OpenSSL checked it at
    // the handshake only, so without a check here it could renew itself for ever.
    h.clock.advance(2 * 3_600_000);
    const late = await renew();
    expect({ status: late.status, body: late.json }).toEqual({ status: 401, body: { error: { code: 'WARD_PKI_SVID_INVALID', message: ERROR_CODES.WARD_PKI_SVID_INVALID } } });
  });

  it('/v1/status?latest=N: N is a whole number from 0 to 1000', async () => {
    const h = await startCa();
    expect((await adminGet(h, '/v1/status?latest=3')).status).toBe(200);
    for (const bad of ['x', '-1', '1001', '2.5', '']) expect((await adminGet(h, `/v1/status?latest=${bad}`)).status).toBe(400);
  });
});

describe('interop', () => {
  it('serves curl with a client certificate and openssl s_client verifies the chain', async () => {
    const h = await startCa();
    const node = await h.join('node-a');
    const dir = await tempDir();
    await writeFile(join(dir, 'bundle.pem'), h.bundle.toPem());
    await writeFile(join(dir, 'node.pem'), node.chainPem);
    await writeFile(join(dir, 'node.key'), node.key.exportPem(), { mode: 0o600 });
    await writeFile(join(dir, 'body.json'), JSON.stringify({ csr: csr() }));
    const url = `https://127.0.0.1:${h.port}/v1/issue`;
    const data = ['-H', 'content-type: application/json', '--data', '@body.json'];

    // curl verifies the chain against --cacert, and then the host name against the certificate's
    // DNS/IP SANs. The CA server is named by SPIFFE ID (one URI SAN), which curl cannot check, so
    // chain + host verification fails for a reason that is not an error of the server:
    const strict = await run('curl', ['-sS', '--cacert', 'bundle.pem', '--cert', 'node.pem', '--key', 'node.key', ...data, url], { cwd: dir }).catch((e: { code: number; stderr: string }) => e);
    expect((strict as { code: number }).code).toBe(60);
    expect((strict as { stderr: string }).stderr).toMatch(/common name|subject name|alternative certificate/i);
    // So curl runs with -k, and the server's identity is checked another way: --pinnedpubkey pins
    // the exact public key of the server's certificate (curl aborts on any other key, even with -k),
    // and that certificate chains to the bundle with spiffe://TD/ward/ca (checked by openssl below).
    const pin = `sha256//${createHash('sha256').update(h.server.credentials!.key.publicKeyDer()).digest('base64')}`;
    const ok = await run('curl', ['-sS', '-k', '--pinnedpubkey', pin, '--tlsv1.3', '--cert', 'node.pem', '--key', 'node.key', ...data, url], { cwd: dir });
    const body = JSON.parse(ok.stdout);
    expect(body.id).toBe(node.id.toString());
    const v = await verifySvid(parseCertificates(body.certificate), h.bundle, new Date(h.clock.now()), { expectedId: node.id });
    expect(v.ok).toBe(true);
    // Without the client certificate curl gets the generic 401.
    const anon = await run('curl', ['-sS', '-k', '--pinnedpubkey', pin, '-w', '\n%{http_code}', ...data, url], { cwd: dir });
    const anonStatus = anon.stdout.slice(anon.stdout.lastIndexOf('\n') + 1);
    const anonBody = anon.stdout.slice(0, anon.stdout.lastIndexOf('\n'));
    expect(anonStatus).toBe('401');
    expect(JSON.parse(anonBody)).toStrictEqual({ error: { code: 'WARD_CA_UNAUTHENTICATED', message: ERROR_CODES.WARD_CA_UNAUTHENTICATED } });
    // A wrong pin is refused by curl (so the pin is what authenticates the server above).
    const wrongPin = `sha256//${createHash('sha256').update(PrivateKey.generate().publicKeyDer()).digest('base64')}`;
    const pinned = await run('curl', ['-sS', '-k', '--pinnedpubkey', wrongPin, `https://127.0.0.1:${h.port}/v1/health`], { cwd: dir }).catch((e: { code: number }) => e);
    expect((pinned as { code: number }).code).toBe(90);

    // openssl s_client: the chain the server sends validates against the bundle, over TLS 1.3 only.
    const s = await openssl(['s_client', '-connect', `127.0.0.1:${h.port}`, '-CAfile', 'bundle.pem', '-verify_return_error', '-tls1_3'], { cwd: dir, input: '' });
    expect(s.code).toBe(0);
    expect(s.stdout).toMatch(/Verify return code: 0 \(ok\)/);
    expect(s.stdout).toMatch(/^New, TLSv1\.3, Cipher is /m);
    const tls12 = await openssl(['s_client', '-connect', `127.0.0.1:${h.port}`, '-CAfile', 'bundle.pem', '-tls1_2'], { cwd: dir, input: '' });
    expect(tls12.code).not.toBe(0);
  });
});
