/**
 * Test helper: a CA initialised in a temporary directory, opened and served by a CaServer on
 * 127.0.0.1:0 (admin on 127.0.0.1:0), plus an HTTPS client that verifies the server as a mesh
 * client does (TLS 1.3, the trust bundle, secure naming on spiffe://TD/ward/ca). Everything it
 * creates is closed or removed when the current test finishes. Tests only.
 */
import type { StoreHooks } from '../../ca/store.js';
import { request, type RequestOptions } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';
import { CaServer, CertificateAuthority, JoinTokens, caServerId, type CaServerLimits, type WorkloadAuthorizer } from '../../ca/index.js';
import { ManualClock, systemClock } from '../../core/clock.js';
import { SpiffeId } from '../../core/identity/index.js';
import { createLogger, type Logger } from '../../core/logger.js';
import { createRegistry, type Registry } from '../../core/metrics.js';
import { PrivateKey, createCsr, type TrustBundle } from '../../core/pki/index.js';
import { meshClientOptions, type Credentials } from '../../core/tls/index.js';

export const TD = 'example.org';

/** Every log line as written by pino, for assertions on what reached the log (and what did not). */
export interface LogCapture {
  logger: Logger;
  lines: string[];
  records(): Record<string, unknown>[];
}

export function captureLogs(level = 'debug'): LogCapture {
  const lines: string[] = [];
  const logger = createLogger({ level, destination: { write: (s: string) => void lines.push(s) } });
  return { logger, lines, records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

/**
 * The WorkloadAuthorizer test double: a node may obtain exactly the identities granted to it.
 * Records every question, so a test can tell that the server asked (or did not need to).
 */
export class GrantList implements WorkloadAuthorizer {
  readonly #grants = new Set<string>();
  readonly asked: { node: string; identity: string }[] = [];

  grant(node: SpiffeId | string, identity: SpiffeId | string): this {
    this.#grants.add(`${node} ${identity}`);
    return this;
  }

  mayObtain(node: SpiffeId, identity: SpiffeId): boolean {
    this.asked.push({ node: node.toString(), identity: identity.toString() });
    return this.#grants.has(`${node} ${identity}`);
  }

  readonly #removedNodes = new Set<string>();

  /** The node leaves the mesh: it may no longer renew its own identity. */
  removeNode(node: SpiffeId | string): this {
    this.#removedNodes.add(node.toString());
    return this;
  }

  mayRenewNode(node: SpiffeId): boolean {
    return !this.#removedNodes.has(node.toString());
  }
}

export interface CallOptions {
  /** An object is sent as JSON (content-type application/json); a string or Buffer as is. */
  body?: unknown;
  /** Client credentials to present; none when absent (bootstrap). */
  creds?: Credentials;
  headers?: Record<string, string | number>;
  /** Source address on the loopback network (127.0.0.0/8), to act as a different client. */
  localAddress?: string;
  /** Overrides of the TLS client options (e.g. a certificate from another CA). */
  tls?: Partial<RequestOptions>;
}

export interface CallResult {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** What the mesh client verifies: the bundle's roots and the CA server's SPIFFE ID. */
export function clientOptions(bundle: TrustBundle, creds?: Credentials): RequestOptions {
  return meshClientOptions({ bundle, expectedId: caServerId(bundle.trustDomain), creds }) as RequestOptions;
}

/** One HTTPS request on a fresh connection (agent: false: credentials never leak between calls). */
export function call(port: number, bundle: TrustBundle, method: string, path: string, o: CallOptions = {}): Promise<CallResult> {
  let payload: Buffer | undefined;
  const headers: Record<string, string | number> = {};
  if (o.body !== undefined) {
    if (typeof o.body === 'string' || Buffer.isBuffer(o.body)) {
      payload = Buffer.from(o.body);
    } else {
      payload = Buffer.from(JSON.stringify(o.body));
      headers['content-type'] = 'application/json';
    }
    headers['content-length'] = payload.length;
  }
  Object.assign(headers, o.headers);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        ...clientOptions(bundle, o.creds),
        ...o.tls,
        host: '127.0.0.1',
        port,
        method,
        path,
        headers,
        agent: false,
        localAddress: o.localAddress,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

export interface StartCaOptions {
  /** Store hooks (crash/failure injection) for the CA. */
  hooks?: StoreHooks;
  /** Default: a ManualClock at the real current time (peers' TLS stacks check validity on real time). */
  clock?: ManualClock;
  limits?: Partial<CaServerLimits>;
  /** Grants of the authorizer double (node → identities). */
  authorizer?: GrantList;
}

export interface CaHarness {
  stateDir: string;
  clock: ManualClock;
  registry: Registry;
  logs: LogCapture;
  ca: CertificateAuthority;
  tokens: JoinTokens;
  authorizer: GrantList;
  server: CaServer;
  port: number;
  adminPort: number;
  bundle: TrustBundle;
  call(method: string, path: string, o?: CallOptions): Promise<CallResult>;
  /** Joins as node `name` with a fresh join token; returns the node's credentials. */
  join(name: string): Promise<Credentials>;
  /** Obtains a certificate for `identity` (default: the node's own) with node credentials. */
  issue(creds: Credentials, identity?: SpiffeId): Promise<Credentials>;
}

export async function startCa(o: StartCaOptions = {}): Promise<CaHarness> {
  // One cleanup, in a fixed order (server, then the CA it issues from, then the files), whatever
  // order the test runner gives to separately registered hooks.
  const cleanups: (() => Promise<unknown>)[] = [];
  onTestFinished(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  const dir = await mkdtemp(join(tmpdir(), 'ward-ca-server-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const stateDir = join(dir, 'state');
  const clock = o.clock ?? new ManualClock(Date.now());
  const registry = createRegistry();
  const logs = captureLogs();
  await CertificateAuthority.init({ stateDir, trustDomain: TD, clock });
  const ca = await CertificateAuthority.open({ stateDir, clock, logger: logs.logger, registry, hooks: o.hooks });
  cleanups.push(() => ca.close());
  const tokens = new JoinTokens({ stateDir, trustDomain: TD, clock });
  const authorizer = o.authorizer ?? new GrantList();
  const server = new CaServer({
    ca,
    tokens,
    authorizer,
    clock,
    logger: logs.logger,
    registry,
    limits: o.limits,
    status: async () => ({ trustDomain: ca.trustDomain, counts: ca.counts() }),
  });
  cleanups.push(() => server.close(1_000));
  const { port, adminPort } = await server.listen({ host: '127.0.0.1', port: 0, adminPort: 0 });
  const bundle = ca.bundle();
  const h: CaHarness = {
    stateDir,
    clock,
    registry,
    logs,
    ca,
    tokens,
    authorizer,
    server,
    port,
    adminPort: adminPort!,
    bundle,
    call: (method, path, co) => call(port, bundle, method, path, co),
    async join(name) {
      const { token } = await tokens.create(name);
      const key = PrivateKey.generate();
      const r = await h.call('POST', '/v1/join', { body: { token, csr: createCsr(key) } });
      if (r.status !== 200) throw new Error(`join ${name} failed: ${r.status} ${r.text}`);
      return { id: SpiffeId.parse(r.json.id), chainPem: r.json.certificate, key, bundle };
    },
    async issue(creds, identity) {
      const key = PrivateKey.generate();
      const body: Record<string, string> = { csr: createCsr(key) };
      if (identity) body.identity = identity.toString();
      const r = await h.call('POST', '/v1/issue', { body, creds });
      if (r.status !== 200) throw new Error(`issue ${identity ?? creds.id} failed: ${r.status} ${r.text}`);
      return { id: SpiffeId.parse(r.json.id), chainPem: r.json.certificate, key, bundle };
    },
  };
  return h;
}

/**
 * A CA in its own temp dir on the real clock (TLS stacks check validity against it), closed and
 * removed when the test finishes.
 */
export async function openTestCa(trustDomain = TD): Promise<CertificateAuthority> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-test-ca-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const stateDir = join(dir, 'state');
  await CertificateAuthority.init({ stateDir, trustDomain, clock: systemClock });
  const ca = await CertificateAuthority.open({ stateDir, clock: systemClock, logger: createLogger({ level: 'silent' }), registry: createRegistry() });
  onTestFinished(() => ca.close());
  return ca;
}

/** A member's credentials: the key is generated here and only a CSR goes to the CA. */
export async function credentialsFor(ca: CertificateAuthority, id: SpiffeId, requester = 'test'): Promise<Credentials> {
  const key = PrivateKey.generate();
  const r = await ca.issue({ csr: createCsr(key, { uri: id.toString() }), identity: id, requester });
  return { id, chainPem: r.chainPem, key, bundle: ca.bundle() };
}
