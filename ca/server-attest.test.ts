/**
 * POST /v1/join with a ServiceAccount token (Kubernetes mode, docs/kubernetes.md "Attestation") on
 * real sockets (127.0.0.1), with a stub NodeAttestor: the identity issued is the attestor's alone;
 * its refusals keep their codes (401/403/503) and are audited; a CA without an attestor refuses
 * such joins; the token never reaches a log line, an audit record, the inventory or a response;
 * joins are rate-limited per client address; the join-token path is unchanged beside it.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../core/clock.js';
import { ERROR_CODES, WardError, type WardErrorCode } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import { createRegistry, type Registry } from '../core/metrics.js';
import { PrivateKey, createCsr, parseCertificates, verifySvid } from '../core/pki/index.js';
import type { Credentials } from '../core/tls/index.js';
import { GrantList, TD, call, captureLogs, type CallOptions, type CallResult, type LogCapture } from '../test/helpers/ca.js';
import { CertificateAuthority } from './authority.js';
import { CaServer, type CaServerLimits, type NodeAttestor } from './server.js';
import { AUDIT_FILE, INVENTORY_FILE } from './store.js';
import { JoinTokens } from './tokens.js';

/** Looks like a projected token; any copy of it in logs or records is a leak. */
const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsid2FyZCJdLCJzdWIiOiJwcm94eS1ub2RlLTEifQ.c2lnbmF0dXJlLW9mLW5vZGUtMQ';
const NODE_1 = SpiffeId.node(TD, 'node-1');
const INGRESS = SpiffeId.ingress(TD);
/** The requester of the CA server's own certificate. */
const SELF = 'ward-ca (self)';

/** The attestor double: answers by token, and records what it was asked (the token's presence only). */
class StubAttestor implements NodeAttestor {
  readonly asked: { token: string; node?: string }[] = [];
  readonly #answers = new Map<string, SpiffeId | Error>();

  answer(token: string, outcome: SpiffeId | Error): this {
    this.#answers.set(token, outcome);
    return this;
  }

  async attest(token: string, node?: string): Promise<SpiffeId> {
    this.asked.push(node === undefined ? { token } : { token, node });
    const outcome = this.#answers.get(token) ?? new WardError('WARD_CA_TOKEN_INVALID', 'unknown token');
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }
}

interface Harness {
  stateDir: string;
  ca: CertificateAuthority;
  tokens: JoinTokens;
  logs: LogCapture;
  registry: Registry;
  call(method: string, path: string, o?: CallOptions): Promise<CallResult>;
  /** Everything written where a token must never be: the log, and the audit and inventory files. */
  written(): Promise<string>;
}

async function serve(o: { attestor?: NodeAttestor; limits?: Partial<CaServerLimits> } = {}): Promise<Harness> {
  const cleanups: (() => Promise<unknown>)[] = [];
  onTestFinished(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  const dir = await mkdtemp(join(tmpdir(), 'ward-ca-attest-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const stateDir = join(dir, 'state');
  // Real time, held still: the TLS stacks check validity on the real clock, and the rate limiter
  // refills only when a test moves it.
  const clock = new ManualClock(Date.now());
  const registry = createRegistry();
  const logs = captureLogs();
  await CertificateAuthority.init({ stateDir, trustDomain: TD, clock });
  const ca = await CertificateAuthority.open({ stateDir, clock, logger: logs.logger, registry });
  cleanups.push(() => ca.close());
  const tokens = new JoinTokens({ stateDir, trustDomain: TD, clock });
  const server = new CaServer({ ca, tokens, authorizer: new GrantList(), attestor: o.attestor, clock, logger: logs.logger, registry, limits: o.limits });
  cleanups.push(() => server.close(1_000));
  const { port } = await server.listen({ host: '127.0.0.1', port: 0 });
  const bundle = ca.bundle();
  return {
    stateDir,
    ca,
    tokens,
    logs,
    registry,
    call: (method, path, co) => call(port, bundle, method, path, co),
    async written() {
      const files = await Promise.all([AUDIT_FILE, INVENTORY_FILE].map((f) => readFile(join(stateDir, f), 'utf8').catch(() => '')));
      return [logs.lines.join(''), ...files].join('\n');
    },
  };
}

/** Audit and inventory records of this test's requests (not the server's own certificate). */
async function audited(h: Harness) {
  return (await h.ca.audit.query({})).filter((a) => a.requester !== SELF);
}

async function inventoried(h: Harness) {
  return (await h.ca.inventory.query({})).filter((a) => a.requester !== SELF);
}

function expectError(r: CallResult, status: number, code: WardErrorCode): void {
  expect({ status: r.status, body: r.json }).toStrictEqual({ status, body: { error: { code, message: ERROR_CODES[code] } } });
}

function joinBody(o: { token?: string; node?: string; key?: PrivateKey; uri?: string } = {}): Record<string, string> {
  const body: Record<string, string> = { serviceAccountToken: o.token ?? TOKEN, csr: createCsr(o.key ?? PrivateKey.generate(), o.uri ? { uri: o.uri } : undefined) };
  if (o.node !== undefined) body.node = o.node;
  return body;
}

async function expectIssued(h: Harness, r: CallResult, key: PrivateKey, id: SpiffeId): Promise<Credentials> {
  expect(r.status, r.text).toBe(200);
  expect(r.json.id).toBe(id.toString());
  const chain = parseCertificates(r.json.certificate);
  expect(chain[0].uris).toEqual([id.toString()]);
  expect(chain[0].publicKeyDer.equals(key.publicKeyDer())).toBe(true);
  const v = await verifySvid(chain, h.ca.bundle(), new Date(), { usage: 'any', expectedId: id });
  expect(v.ok).toBe(true);
  return { id, chainPem: r.json.certificate, key, bundle: h.ca.bundle() };
}

describe('POST /v1/join with a ServiceAccount token', () => {
  it('issues the node identity the attestor grants, records it, and the node renews with it', async () => {
    const attestor = new StubAttestor().answer(TOKEN, NODE_1);
    const h = await serve({ attestor });
    const key = PrivateKey.generate();
    const r = await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1', key }) });
    const creds = await expectIssued(h, r, key, NODE_1);
    expect(attestor.asked).toEqual([{ token: TOKEN, node: 'node-1' }]);
    expect((await h.ca.inventory.query({ identity: NODE_1 })).map((x) => x.requester)).toEqual(['serviceaccount-token:node-1']);
    const audit = await h.ca.audit.query({ identity: NODE_1 });
    expect(audit.map((a) => [a.decision, a.requester, a.serial])).toEqual([['issued', 'serviceaccount-token:node-1', r.json.serial]]);
    expect(h.logs.records().some((l) => l.msg === 'node joined with a ServiceAccount token' && l.node === NODE_1.toString())).toBe(true);
    // The node certificate works like one from a join token.
    const renewKey = PrivateKey.generate();
    const renewed = await h.call('POST', '/v1/issue', { body: { csr: createCsr(renewKey) }, creds });
    await expectIssued(h, renewed, renewKey, NODE_1);
    expect(await h.written()).not.toContain(TOKEN);
  });

  it('issues the ingress identity, without a node name', async () => {
    const attestor = new StubAttestor().answer(TOKEN, INGRESS);
    const h = await serve({ attestor });
    const key = PrivateKey.generate();
    await expectIssued(h, await h.call('POST', '/v1/join', { body: joinBody({ key }) }), key, INGRESS);
    expect(attestor.asked).toEqual([{ token: TOKEN }]);
    expect((await h.ca.inventory.query({ identity: INGRESS })).map((x) => x.requester)).toEqual(['serviceaccount-token:ingress']);
  });

  it.each([
    // Tokens nobody vouches for, and an unreachable API, are logged and counted but not audited:
    // anyone who reaches the CA could otherwise fill the durable audit log with them.
    ['an unauthenticated or wrong-audience token', 'WARD_CA_TOKEN_INVALID', 401, false],
    ['an authenticated caller that may not join', 'WARD_CA_FORBIDDEN', 403, true],
    ['the Kubernetes API being down', 'WARD_CA_UNAVAILABLE', 503, false],
  ] as const)('refuses %s with %s (%i), audited only when the caller was authenticated, and issues nothing', async (_what, code, status, isAudited) => {
    const attestor = new StubAttestor().answer(TOKEN, new WardError(code, `refused for a reason the log keeps (${code})`));
    const h = await serve({ attestor });
    expectError(await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }) }), status, code);
    const audit = await audited(h);
    expect(audit).toEqual(
      isAudited
        ? [expect.objectContaining({ decision: 'refused', requester: 'serviceaccount-token from 127.0.0.1', identity: NODE_1.toString(), code, reason: `refused for a reason the log keeps (${code})` })]
        : [],
    );
    expect(await inventoried(h)).toEqual([]);
    // The detail goes to the log (never to the response).
    expect(h.logs.records().some((l) => l.msg === 'CA request refused' || l.msg === 'CA request failed' ? l.code === code && String(l.err).includes('a reason the log keeps') : false)).toBe(true);
    expect(await h.written()).not.toContain(TOKEN);
  });

  it('audits a refusal of a join that names no node, or no valid node name, without inventing an identity', async () => {
    const forbidden = new WardError('WARD_CA_FORBIDDEN', 'not a node proxy');
    const h = await serve({ attestor: new StubAttestor().answer(TOKEN, forbidden) });
    expectError(await h.call('POST', '/v1/join', { body: joinBody() }), 403, 'WARD_CA_FORBIDDEN');
    expectError(await h.call('POST', '/v1/join', { body: joinBody({ node: 'a/b' }) }), 403, 'WARD_CA_FORBIDDEN');
    expect((await audited(h)).map((a) => [a.decision, a.identity, a.code])).toEqual([
      ['refused', 'node "a/b"', 'WARD_CA_FORBIDDEN'],
      ['refused', 'kubernetes attestation', 'WARD_CA_FORBIDDEN'],
    ]);
  });

  it('keeps the token out of logs, audit and response even when the attestor quotes it', async () => {
    const attestor = new StubAttestor().answer(TOKEN, new WardError('WARD_CA_FORBIDDEN', `the token ${TOKEN} is for someone else`)).answer(`${TOKEN}x`, new Error(`crashed on ${TOKEN}x`));
    const h = await serve({ attestor });
    const forbidden = await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }) });
    expectError(forbidden, 403, 'WARD_CA_FORBIDDEN');
    // A bug in the attestor (not a WardError) is a 500 with a generic answer, audited, logged scrubbed.
    const crashed = await h.call('POST', '/v1/join', { body: joinBody({ token: `${TOKEN}x`, node: 'node-1' }) });
    expectError(crashed, 500, 'WARD_CA_INTERNAL');
    // Newest first.
    expect((await audited(h)).map((a) => [a.code, a.reason])).toEqual([
      ['WARD_CA_INTERNAL', 'the attestor failed unexpectedly'],
      ['WARD_CA_FORBIDDEN', 'the token [redacted] is for someone else'],
    ]);
    expect(h.logs.records().some((l) => l.msg === 'BUG: the attestor failed unexpectedly' && String(l.err).includes('crashed on [redacted]'))).toBe(true);
    expect(forbidden.text + crashed.text).not.toContain(TOKEN);
    expect(await h.written()).not.toContain(TOKEN);
  });

  it('issues only node and ingress identities of its trust domain, and only the node named', async () => {
    const attestor = new StubAttestor()
      .answer('workload', SpiffeId.workload(TD, 'shop', 'web'))
      .answer('foreign', SpiffeId.node('other.org', 'node-1'))
      .answer('ca', SpiffeId.fromSegments(TD, 'ward', 'ca'))
      .answer('node-2', SpiffeId.node(TD, 'node-2'))
      .answer('ingress', INGRESS);
    const h = await serve({ attestor });
    for (const token of ['workload', 'foreign', 'ca']) {
      expectError(await h.call('POST', '/v1/join', { body: joinBody({ token, node: 'node-1' }) }), 403, 'WARD_CA_FORBIDDEN');
    }
    // Another node than the one named, or the ingress where a node is named.
    expectError(await h.call('POST', '/v1/join', { body: joinBody({ token: 'node-2', node: 'node-1' }) }), 403, 'WARD_CA_FORBIDDEN');
    expectError(await h.call('POST', '/v1/join', { body: joinBody({ token: 'ingress', node: 'node-1' }) }), 403, 'WARD_CA_FORBIDDEN');
    expect(await inventoried(h)).toEqual([]);
    expect((await audited(h)).map((a) => [a.decision, a.code])).toEqual(Array(5).fill(['refused', 'WARD_CA_FORBIDDEN']));
  });

  it('refuses a CSR that asks for another identity than the attested one (audited by the CA)', async () => {
    const h = await serve({ attestor: new StubAttestor().answer(TOKEN, NODE_1) });
    const r = await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1', uri: SpiffeId.node(TD, 'node-2').toString() }) });
    expectError(r, 403, 'WARD_PKI_CSR_UNAUTHORIZED');
    expect((await audited(h)).map((a) => [a.decision, a.identity, a.code])).toEqual([['refused', NODE_1.toString(), 'WARD_PKI_CSR_UNAUTHORIZED']]);
  });

  it('is refused by a CA without an attestor (local mode), audited', async () => {
    const h = await serve();
    expectError(await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }) }), 400, 'WARD_CA_JOIN_UNSUPPORTED');
    expect((await audited(h)).map((a) => [a.decision, a.code])).toEqual([['refused', 'WARD_CA_JOIN_UNSUPPORTED']]);
    expect(h.logs.records().some((l) => l.msg === 'CA request refused' && String(l.err).includes('without Kubernetes attestation'))).toBe(true);
    expect(await h.written()).not.toContain(TOKEN);
  });

  it('refuses malformed requests before asking the attestor', async () => {
    const attestor = new StubAttestor().answer(TOKEN, NODE_1);
    const h = await serve({ attestor });
    const { token } = await h.tokens.create('node-1');
    const csr = createCsr(PrivateKey.generate());
    for (const body of [
      { serviceAccountToken: TOKEN, token, csr },
      { serviceAccountToken: 42, csr },
      { serviceAccountToken: '', csr },
      { serviceAccountToken: null, csr },
      { serviceAccountToken: TOKEN },
      { serviceAccountToken: TOKEN, csr, node: 7 },
      { serviceAccountToken: TOKEN, csr, node: '' },
    ]) {
      expectError(await h.call('POST', '/v1/join', { body }), 400, 'WARD_CA_REQUEST_INVALID');
    }
    expectError(await h.call('POST', '/v1/join', { body: { serviceAccountToken: TOKEN, csr, node: 'n'.repeat(254) } }), 413, 'WARD_CA_REQUEST_TOO_LARGE');
    expectError(await h.call('POST', '/v1/join', { body: { serviceAccountToken: 'x'.repeat(16 * 1024 + 1), csr } }), 413, 'WARD_CA_REQUEST_TOO_LARGE');
    expect(attestor.asked).toEqual([]);
    // The join token given alongside was not consumed.
    expect((await h.call('POST', '/v1/join', { body: { token, csr } })).status).toBe(200);
  });

  it('rate-limits joins per client address, before the attestor is asked', async () => {
    const attestor = new StubAttestor().answer(TOKEN, NODE_1);
    const h = await serve({ attestor, limits: { perClientBurst: 2, perClientPerSecond: 0.001 } });
    expect((await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }) })).status).toBe(200);
    expect((await h.call('POST', '/v1/join', { body: joinBody({ token: 'forged' }) })).status).toBe(401);
    expectError(await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }) }), 429, 'WARD_CA_RATE_LIMITED');
    expect(attestor.asked).toHaveLength(2);
    // Another client address has its own allowance.
    expect((await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }), localAddress: '127.0.0.2' })).status).toBe(200);
  });

  it('leaves the join-token path as it was on a CA with an attestor', async () => {
    const attestor = new StubAttestor();
    const h = await serve({ attestor });
    const { token } = await h.tokens.create('node-1');
    const key = PrivateKey.generate();
    await expectIssued(h, await h.call('POST', '/v1/join', { body: { token, csr: createCsr(key) } }), key, NODE_1);
    expectError(await h.call('POST', '/v1/join', { body: { token, csr: createCsr(key) } }), 401, 'WARD_CA_TOKEN_INVALID');
    expect(attestor.asked).toEqual([]);
    expect((await inventoried(h)).map((x) => x.requester)).toEqual(['join-token:node-1']);
  });

  it('counts joins by result in ward_ca_requests_total', async () => {
    const h = await serve({ attestor: new StubAttestor().answer(TOKEN, NODE_1) });
    await h.call('POST', '/v1/join', { body: joinBody({ node: 'node-1' }) });
    await h.call('POST', '/v1/join', { body: joinBody({ token: 'forged' }) });
    const text = await h.registry.metrics();
    expect(text).toMatch(/ward_ca_requests_total\{route="join",code="OK"\} 1/);
    expect(text).toMatch(/ward_ca_requests_total\{route="join",code="WARD_CA_TOKEN_INVALID"\} 1/);
  });
});
