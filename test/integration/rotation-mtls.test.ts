/**
 * The root-rotation proof: a mutual-TLS client/server pair keeps renewing and handshaking across a
 * full root rotation (prepare → activate → renew each side → retire) with zero failures, and a
 * connection opened before the rotation keeps working after it.
 *
 * Both members generate their keys locally and renew from the CA with a CSR. The CA's onChange
 * stands in for bundle distribution (discovery pushes it in the real mesh): each member takes the
 * new bundle at once; the server swaps its secure context (server.setSecureContext) on every
 * renewal and bundle change, the client builds each new connection from its current bundle and
 * certificate. Every connection is a full handshake (no session is offered for resumption).
 *
 * Time. The TLS stack checks validity against the real clock, while the CA decides on its injected
 * clock. The CA gets a ManualClock that starts at the real now and stays there while certificates
 * are issued, so every leaf is valid in real time with a realistic lifetime (1 h). The ManualClock
 * is moved forward only at the very end, past the NotAfter of the last old-root leaf, so that the
 * CA itself judges retire() ready (no force). Nothing is issued after that jump: a leaf issued on
 * the advanced clock would not yet be valid for OpenSSL. The alternative — the system clock and
 * retire({ force: true }) — would not show that the CA holds retirement back while old leaves live.
 */
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type DetailedPeerCertificate, type TLSSocket } from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { CertificateAuthority, type IssueResult } from '../../ca/index.js';
import { ManualClock } from '../../core/clock.js';
import { isWardError } from '../../core/errors.js';
import { SpiffeId } from '../../core/identity/index.js';
import { silentLogger } from '../../core/logger.js';
import { createRegistry } from '../../core/metrics.js';
import { createCsr, parseCertificates, PrivateKey, verifySvid, type TrustBundle } from '../../core/pki/index.js';
import { meshClientOptions, meshServerOptions, peerIdentity, type Credentials } from '../../core/tls/index.js';

const TD = 'example.org';
const SERVER_ID = SpiffeId.workload(TD, 'shop', 'api');
const CLIENT_ID = SpiffeId.workload(TD, 'shop', 'web');
const LEAF_TTL_MS = 60 * 60_000;
/** Sequential handshakes in each steady phase, and alongside each rotation step. */
const PER_PHASE = 20;
const PER_STEP = 10;
/** Guard against a hung connection; never reached when the code under test works. */
const IO_TIMEOUT_MS = 10_000;

/** A mesh member: its identity, the bundle it trusts now, and its current leaf (renewed from the CA). */
class Member {
  readonly id: SpiffeId;
  bundle: TrustBundle;
  /** Fingerprint of the root the current leaf chains to (as the member verified it). */
  root = '';
  #leaf: { issued: IssueResult; key: PrivateKey } | undefined;
  #onUpdate: () => void = () => undefined;
  readonly #ca: CertificateAuthority;
  readonly #clock: ManualClock;

  constructor(ca: CertificateAuthority, clock: ManualClock, id: SpiffeId) {
    this.#ca = ca;
    this.#clock = clock;
    this.id = id;
    this.bundle = ca.bundle();
  }

  onUpdate(f: () => void): void {
    this.#onUpdate = f;
  }

  get leaf(): IssueResult {
    if (!this.#leaf) throw new Error('BUG: member has no certificate yet');
    return this.#leaf.issued;
  }

  get creds(): Credentials {
    if (!this.#leaf) throw new Error('BUG: member has no certificate yet');
    return { id: this.id, chainPem: this.#leaf.issued.chainPem, key: this.#leaf.key, bundle: this.bundle };
  }

  /** New key, CSR, issue; the new chain must verify against the bundle held now before it is used. */
  async renew(): Promise<void> {
    const key = PrivateKey.generate();
    const issued = await this.#ca.issue({ csr: createCsr(key, { uri: this.id.toString() }), identity: this.id, requester: `test/${this.id}`, ttlMs: LEAF_TTL_MS });
    const v = await verifySvid(parseCertificates(issued.chainPem), this.bundle, new Date(this.#clock.now()), { expectedId: this.id });
    if (!v.ok) throw new Error(`renewed chain of ${this.id} does not verify against the held bundle: ${v.reason}: ${v.detail}`);
    this.#leaf = { issued, key };
    this.root = v.path[v.path.length - 1].fingerprintSha256;
    this.#onUpdate();
  }

  setBundle(b: TrustBundle): void {
    this.bundle = b;
    this.#onUpdate();
  }
}

/** The root fingerprint at the end of the chain OpenSSL verified (Node completes it from the store). */
function rootOf(cert: DetailedPeerCertificate): string {
  let c = cert;
  while (c.issuerCertificate && c.issuerCertificate.fingerprint256 !== c.fingerprint256) c = c.issuerCertificate;
  return c.fingerprint256;
}

/** Reads newline-terminated lines; next() rejects once the socket errors or closes. */
class LineReader {
  #buf = '';
  #lines: string[] = [];
  #waiting: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
  #ended: Error | undefined;

  constructor(socket: TLSSocket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buf += chunk;
      let i;
      while ((i = this.#buf.indexOf('\n')) >= 0) {
        this.#lines.push(this.#buf.slice(0, i));
        this.#buf = this.#buf.slice(i + 1);
      }
      this.#flush();
    });
    socket.on('error', (err) => this.#end(err));
    socket.on('close', () => this.#end(new Error('connection closed before the expected line')));
  }

  next(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject };
      this.#flush();
    });
  }

  #end(err: Error): void {
    this.#ended ??= err;
    this.#flush();
  }

  #flush(): void {
    const w = this.#waiting;
    if (!w) return;
    if (this.#lines.length > 0) {
      this.#waiting = undefined;
      w.resolve(this.#lines.shift()!);
    } else if (this.#ended) {
      this.#waiting = undefined;
      w.reject(this.#ended);
    }
  }
}

/** What one handshake showed each side. */
interface Seen {
  /** The server identity and root as the client verified them. */
  serverId: string;
  serverRoot: string;
  /** The client identity (peerIdentity) and root as the server verified them. */
  clientId: string;
  clientRoot: string;
}

describe('mutual TLS across a full root rotation', () => {
  it('keeps issuing and handshaking with zero failures; old connections live on; the old root really leaves', async () => {
    // --- the CA, on a ManualClock at the real now (see the header) ---
    const base = await mkdtemp(join(tmpdir(), 'ward-rotation-'));
    onTestFinished(() => rm(base, { recursive: true, force: true }));
    const stateDir = join(base, 'state');
    const clock = new ManualClock(Date.now());
    await CertificateAuthority.init({ stateDir, trustDomain: TD, clock });
    const ca = await CertificateAuthority.open({ stateDir, clock, logger: silentLogger(), registry: createRegistry() });
    onTestFinished(() => ca.close());
    const rootA = ca.bundle().roots[0].fingerprintSha256;

    const serverMember = new Member(ca, clock, SERVER_ID);
    const client = new Member(ca, clock, CLIENT_ID);
    // A peer that gets bundle updates but never renews: it ends up holding only an old-root leaf.
    const stale = new Member(ca, clock, CLIENT_ID);
    await serverMember.renew();
    await client.renew();
    await stale.renew();
    expect([serverMember.root, client.root, stale.root]).toEqual([rootA, rootA, rootA]);
    // The last old-root leaf to expire: what the CA must wait for before the old root may go.
    const oldLeafExpiry = Math.max(...[serverMember, client, stale].map((m) => m.leaf.notAfter.getTime()));
    const unsubscribe = ca.onChange((change) => {
      for (const m of [serverMember, client, stale]) m.setBundle(change.bundle);
    });
    onTestFinished(() => void unsubscribe());

    // --- the server: swaps its secure context on every renewal and bundle change ---
    const serverSockets = new Set<TLSSocket>();
    const serverErrors: string[] = [];
    let contextSwaps = 0;
    const server = createServer(meshServerOptions(serverMember.creds, { requireClientCert: true }), (socket) => {
      let reply: string;
      try {
        const id = peerIdentity(socket, { trustDomain: TD });
        reply = JSON.stringify({ id: id?.toString(), root: rootOf(socket.getPeerCertificate(true)) });
      } catch (err) {
        serverErrors.push(`peerIdentity: ${isWardError(err) ? err.code : ''} ${(err as Error).message}`);
        socket.destroy();
        return;
      }
      socket.write(`${reply}\n`);
      // Echo, for the long-lived connection's round trips.
      socket.on('data', (d) => socket.write(d));
    });
    server.on('secureConnection', (s: TLSSocket) => {
      serverSockets.add(s);
      s.on('close', () => serverSockets.delete(s));
      s.on('error', (err) => serverErrors.push(`server socket: ${err.message}`));
    });
    server.on('tlsClientError', (err, s: TLSSocket) => serverErrors.push(`handshake: ${err.message} (${String(s.authorizationError)})`));
    serverMember.onUpdate(() => {
      server.setSecureContext(meshServerOptions(serverMember.creds, { requireClientCert: true }));
      contextSwaps++;
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const clientSockets = new Set<TLSSocket>();
    onTestFinished(async () => {
      for (const s of [...clientSockets, ...serverSockets]) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    /** A new mutual-TLS connection with `m`'s current bundle and certificate, expecting SERVER_ID. */
    function open(m: Member): { socket: TLSSocket; reader: LineReader; peer: Promise<DetailedPeerCertificate> } {
      const socket = connect({ host: '127.0.0.1', port, ...meshClientOptions({ bundle: m.bundle, expectedId: SERVER_ID, creds: m.creds }) });
      clientSockets.add(socket);
      socket.on('close', () => clientSockets.delete(socket));
      socket.setTimeout(IO_TIMEOUT_MS, () => socket.destroy(new Error('timed out')));
      const reader = new LineReader(socket);
      const peer = new Promise<DetailedPeerCertificate>((resolve) => socket.once('secureConnect', () => resolve(socket.getPeerCertificate(true))));
      return { socket, reader, peer };
    }

    async function handshake(m: Member): Promise<Seen> {
      const { socket, reader, peer } = open(m);
      try {
        // The server's line comes only after it accepted the client certificate (TLS 1.3: the
        // client's handshake completes first, so secureConnect alone proves nothing about that).
        const line = JSON.parse(await reader.next()) as { id: string; root: string };
        const p = await peer;
        return { serverId: p.subjectaltname?.replace(/^URI:/, '') ?? '', serverRoot: rootOf(p), clientId: line.id, clientRoot: line.root };
      } finally {
        socket.end();
      }
    }

    const failures: string[] = [];
    const counts: Record<string, number> = {};
    /** `n` sequential handshakes by the client; each must succeed and show the expected roots (when given). */
    async function handshakes(phase: string, n: number, roots?: { server: string; client: string }): Promise<void> {
      for (let i = 0; i < n; i++) {
        try {
          const seen = await handshake(client);
          const want: Seen = { serverId: SERVER_ID.toString(), serverRoot: roots?.server ?? seen.serverRoot, clientId: CLIENT_ID.toString(), clientRoot: roots?.client ?? seen.clientRoot };
          const wrong = (Object.keys(want) as (keyof Seen)[]).filter((k) => seen[k] !== want[k]);
          if (wrong.length > 0) failures.push(`${phase} #${i}: ${wrong.map((k) => `${k} ${seen[k]}, want ${want[k]}`).join('; ')}`);
          else counts[phase] = (counts[phase] ?? 0) + 1;
        } catch (err) {
          failures.push(`${phase} #${i}: ${(err as Error).message}`);
        }
      }
    }
    /** A rotation step with handshakes running alongside it: the order between them is whatever it is. */
    async function during<T>(phase: string, step: () => Promise<T>): Promise<T> {
      const [r] = await Promise.all([step(), handshakes(phase, PER_STEP)]);
      return r;
    }
    function expectClean(): void {
      expect(failures).toEqual([]);
      expect(serverErrors).toEqual([]);
    }

    // --- the long-lived connection, from before the rotation ---
    const live = open(client);
    // It idles between phases for as long as the rotation takes; the idle guard is for short ones.
    live.socket.setTimeout(0);
    expect(JSON.parse(await live.reader.next())).toEqual({ id: CLIENT_ID.toString(), root: rootA });
    let pings = 0;
    async function liveRoundTrip(): Promise<void> {
      const text = `ping-${++pings}`;
      live.socket.write(`${text}\n`);
      expect(await live.reader.next()).toBe(text);
    }

    // Phase 0: one root, both leaves under it.
    await handshakes('0 before', PER_PHASE, { server: rootA, client: rootA });
    expectClean();

    // Phase 1: prepare('root'): the new root enters the bundle; both sides pick it up at once.
    const prepared = await during('1 prepare', () => ca.rotation.prepare('root'));
    const rootB = prepared.next!.root.fingerprint;
    expect(rootB).not.toBe(rootA);
    expect(new Set(ca.bundle().roots.map((r) => r.fingerprintSha256))).toEqual(new Set([rootA, rootB]));
    for (const m of [serverMember, client, stale]) expect(m.bundle.roots).toHaveLength(2);
    await handshakes('1 prepared', PER_PHASE, { server: rootA, client: rootA });
    await liveRoundTrip();
    expectClean();

    // Phase 2: activate(): issuance switches to the new root's intermediate; leaves unchanged so far.
    const activated = await during('2 activate', () => ca.rotation.activate());
    expect(activated.active.root.fingerprint).toBe(rootB);
    await handshakes('2 activated', PER_PHASE, { server: rootA, client: rootA });
    // The stale peer's old-root leaf is still good while the old root is in the bundle.
    expect((await handshake(stale)).clientRoot).toBe(rootA);
    expectClean();

    // Phase 3: the server renews first: a new-root server leaf meets an old-root client leaf.
    await during('3 server renews', () => serverMember.renew());
    expect(serverMember.root).toBe(rootB);
    await handshakes('3 mixed', PER_PHASE, { server: rootB, client: rootA });
    await liveRoundTrip();
    expectClean();

    // Phase 4: the client renews: both leaves under the new root.
    await during('4 client renews', () => client.renew());
    expect(client.root).toBe(rootB);
    await handshakes('4 both new', PER_PHASE, { server: rootB, client: rootB });
    expectClean();

    // Phase 5: retire. The CA holds it back while any old-root leaf lives (the stale one included)…
    const before = ca.rotation.status();
    expect(before.retireReady).toBe(false);
    expect(before.retireAfter?.getTime()).toBe(oldLeafExpiry);
    const refused = await ca.rotation.retire().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isWardError(refused, 'WARD_CA_ROTATION_INVALID')).toBe(true);
    // …and lets it go once its own clock is past the last of them.
    clock.set(oldLeafExpiry + 1000);
    expect(ca.rotation.status().retireReady).toBe(true);
    const retired = await during('5 retire', () => ca.rotation.retire());
    expect(retired.phase).toBe('idle');
    expect(ca.bundle().roots.map((r) => r.fingerprintSha256)).toEqual([rootB]);
    for (const m of [serverMember, client, stale]) expect(m.bundle.roots.map((r) => r.fingerprintSha256)).toEqual([rootB]);
    await handshakes('5 retired', PER_PHASE, { server: rootB, client: rootB });
    expectClean();

    // The connection opened before the rotation, on old-root leaves at both ends, is untouched.
    await liveRoundTrip();
    expect(live.socket.destroyed).toBe(false);

    // The old root really left: a client holding only an old-root leaf is now refused by the server.
    const serverRefusal = once(server, 'tlsClientError');
    await expect(handshake(stale)).rejects.toThrow();
    const [, refusedSocket] = (await serverRefusal) as [Error, TLSSocket];
    expect(refusedSocket.authorizationError).toMatch(/^UNABLE_TO_GET_ISSUER_CERT/);
    expect(serverErrors).toHaveLength(1);
    serverErrors.length = 0;
    // The refusal is about that leaf alone: the current client still gets through.
    await handshakes('5 after refusal', 1, { server: rootB, client: rootB });
    expectClean();

    expect(counts).toEqual({
      '0 before': PER_PHASE,
      '1 prepare': PER_STEP,
      '1 prepared': PER_PHASE,
      '2 activate': PER_STEP,
      '2 activated': PER_PHASE,
      '3 server renews': PER_STEP,
      '3 mixed': PER_PHASE,
      '4 client renews': PER_STEP,
      '4 both new': PER_PHASE,
      '5 retire': PER_STEP,
      '5 retired': PER_PHASE,
      '5 after refusal': 1,
    });
    // The server's own renewal and the CA's three changes (prepare, activate, retire) each swapped
    // the server's secure context; the client's renewal did not touch it.
    expect(contextSwaps).toBe(4);
  });
});
