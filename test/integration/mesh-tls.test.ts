/**
 * meshServerOptions / meshClientOptions / peerIdentity on real TLS sockets on 127.0.0.1:0, with
 * certificates from a CertificateAuthority in a temporary directory. Each test asserts what a peer
 * sees: the protocol negotiated, the identity the server read off the client, or the refusal.
 *
 * The mesh server used here answers every connection with one JSON line — the client identity
 * peerIdentity() returned, or the WardError it threw — so a client learns the server's verdict
 * over the wire. That matters with TLS 1.3: the client finishes its handshake before the server
 * has checked the client certificate, so only a reply proves the server accepted it.
 */
import { once } from 'node:events';
import { connect, createServer, type ConnectionOptions, type Server, type TLSSocket } from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { isWardError } from '../../core/errors.js';
import { SpiffeId } from '../../core/identity/index.js';
import { meshClientOptions, meshServerOptions, peerIdentity, type Credentials } from '../../core/tls/index.js';
import { mintPki } from '../helpers/pki.js';
import { credentialsFor, openTestCa } from '../helpers/ca.js';

const TD = 'example.org';
const CART = SpiffeId.workload(TD, 'shop', 'cart');
const WEB = SpiffeId.workload(TD, 'shop', 'web');
const API = SpiffeId.workload(TD, 'shop', 'api');
/** Guard against a hung handshake; never reached when the code under test works. */
const IO_TIMEOUT_MS = 10_000;



/** What the server's one-line reply says. */
interface Verdict {
  id?: string;
  code?: string;
  message?: string;
  protocol?: string | null;
}

interface MeshServer {
  server: Server;
  port: number;
  /** Connections that reached the handler (a completed, accepted handshake). */
  readonly replies: number;
}

async function meshServer(creds: Credentials, o: { requireClientCert: boolean; trustDomain?: string }): Promise<MeshServer> {
  const trustDomain = o.trustDomain ?? creds.bundle.trustDomain;
  const sockets = new Set<TLSSocket>();
  let replies = 0;
  const server = createServer(meshServerOptions(creds, { requireClientCert: o.requireClientCert }), (socket) => {
    replies++;
    let verdict: Verdict;
    try {
      const id = peerIdentity(socket, { trustDomain });
      verdict = { id: id?.toString(), protocol: socket.getProtocol() };
    } catch (err) {
      verdict = { code: isWardError(err) ? err.code : 'not-a-ward-error', message: (err as Error).message };
    }
    socket.end(`${JSON.stringify(verdict)}\n`);
  });
  server.on('secureConnection', (s: TLSSocket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    // A client that gives up mid-reply is not this test's concern.
    s.on('error', () => undefined);
  });
  // Refused handshakes surface here; tests that expect one await it with once().
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    get replies() {
      return replies;
    },
  };
}

interface Exchange {
  verdict: Verdict;
  /** The protocol the client negotiated, and the server's SPIFFE ID as the client read it. */
  protocol: string | null;
  serverUri: string | undefined;
  /** Whether the handshake resumed a session, and the last session the server offered. */
  reused: boolean;
  session: Buffer | undefined;
}

/** Connects, waits for the server's verdict line; rejects with the error the client saw. */
function exchange(port: number, options: ConnectionOptions): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ...options });
    onTestFinished(() => void socket.destroy());
    socket.setTimeout(IO_TIMEOUT_MS, () => socket.destroy(new Error('timed out waiting for the server')));
    let data = '';
    let protocol: string | null = null;
    let serverUri: string | undefined;
    let reused = false;
    let session: Buffer | undefined;
    socket.on('secureConnect', () => {
      protocol = socket.getProtocol();
      serverUri = socket.getPeerCertificate().subjectaltname?.replace(/^URI:/, '');
      reused = socket.isSessionReused();
    });
    socket.on('session', (s: Buffer) => {
      session = s;
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      data += chunk;
    });
    socket.on('error', reject);
    socket.on('close', () => {
      const line = data.split('\n')[0];
      if (!line) {
        reject(new Error('connection closed without a reply from the server'));
        return;
      }
      resolve({ verdict: JSON.parse(line) as Verdict, protocol, serverUri, reused, session });
    });
  });
}

/** The error a refused client saw. */
async function refusal(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the connection to be refused');
}

describe('mesh TLS credentials on real sockets', () => {
  it('negotiates TLS 1.3 and the server reads the verified client SPIFFE ID', async () => {
    const ca = await openTestCa();
    const server = await meshServer(await credentialsFor(ca, WEB), { requireClientCert: true });
    const client = await credentialsFor(ca, CART);
    const r = await exchange(server.port, meshClientOptions({ bundle: ca.bundle(), expectedId: WEB, creds: client }));
    expect(r.protocol).toBe('TLSv1.3');
    expect(r.serverUri).toBe(WEB.toString());
    expect(r.verdict).toEqual({ id: CART.toString(), protocol: 'TLSv1.3' });
  });

  it('refuses a TLS 1.2 client', async () => {
    const ca = await openTestCa();
    const server = await meshServer(await credentialsFor(ca, WEB), { requireClientCert: true });
    const client = await credentialsFor(ca, CART);
    const serverSide = once(server.server, 'tlsClientError');
    const err = await refusal(
      exchange(server.port, { ...meshClientOptions({ bundle: ca.bundle(), expectedId: WEB, creds: client }), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }),
    );
    expect(err.code).toBe('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    const [serverErr] = (await serverSide) as [Error & { code?: string }];
    expect(serverErr.code).toBe('ERR_SSL_UNSUPPORTED_PROTOCOL');
  });

  it('secure naming: a client expecting one identity refuses a valid server of the same CA with another', async () => {
    const ca = await openTestCa();
    const server = await meshServer(await credentialsFor(ca, API), { requireClientCert: true });
    const client = await credentialsFor(ca, CART);
    const err = await refusal(exchange(server.port, meshClientOptions({ bundle: ca.bundle(), expectedId: WEB, creds: client })));
    expect(isWardError(err, 'WARD_PKI_SVID_INVALID')).toBe(true);
    expect(err.message).toContain('unexpected-identity');
    expect(err.message).toContain(API.toString());
    // The same server, named correctly, is accepted: the refusal was about the name only.
    const ok = await exchange(server.port, meshClientOptions({ bundle: ca.bundle(), expectedId: API, creds: client }));
    expect(ok.verdict.id).toBe(CART.toString());
  });

  it('secure naming holds when the client offers a session to resume: mesh servers never resume', async () => {
    // Node skips checkServerIdentity on a resumed session; if the server resumed, a session got
    // while expecting API would let the client accept the same server while expecting WEB.
    const ca = await openTestCa();
    const server = await meshServer(await credentialsFor(ca, API), { requireClientCert: true });
    const client = await credentialsFor(ca, CART);
    const first = await exchange(server.port, meshClientOptions({ bundle: ca.bundle(), expectedId: API, creds: client }));
    expect(first.session).toBeDefined();
    const again = await exchange(server.port, { ...meshClientOptions({ bundle: ca.bundle(), expectedId: API, creds: client }), session: first.session });
    expect(again.reused).toBe(false);
    expect(again.verdict.id).toBe(CART.toString());
    const err = await refusal(exchange(server.port, { ...meshClientOptions({ bundle: ca.bundle(), expectedId: WEB, creds: client }), session: first.session }));
    expect(isWardError(err, 'WARD_PKI_SVID_INVALID')).toBe(true);
    expect(err.message).toContain('unexpected-identity');
  });

  it('refuses a server certificate from another CA', async () => {
    const ca = await openTestCa();
    const other = await openTestCa();
    const server = await meshServer(await credentialsFor(other, WEB), { requireClientCert: true });
    const client = await credentialsFor(ca, CART);
    const err = await refusal(exchange(server.port, meshClientOptions({ bundle: ca.bundle(), expectedId: WEB, creds: client })));
    expect(err.code).toBe('UNABLE_TO_GET_ISSUER_CERT_LOCALLY');
  });

  it('refuses a client certificate from another CA, in the handshake or in peerIdentity', async () => {
    const ca = await openTestCa();
    const other = await openTestCa();
    const serverCreds = await credentialsFor(ca, WEB);
    const stranger = await credentialsFor(other, CART);
    const options = meshClientOptions({ bundle: ca.bundle(), expectedId: WEB, creds: stranger });

    const strict = await meshServer(serverCreds, { requireClientCert: true });
    const serverSide = once(strict.server, 'tlsClientError');
    // Node's server refuses a client whose certificate fails verification by destroying the
    // socket, without a TLS alert: the client sees the connection end with no reply, and the
    // connection handler (where peerIdentity runs) is never reached.
    await refusal(exchange(strict.port, options));
    const [, refusedSocket] = (await serverSide) as [Error, TLSSocket];
    expect(refusedSocket.authorizationError).toBe('UNABLE_TO_GET_ISSUER_CERT_LOCALLY');
    expect(strict.replies).toBe(0);

    // Optional client certificates: OpenSSL lets the handshake finish, peerIdentity must not.
    const lenient = await meshServer(serverCreds, { requireClientCert: false });
    const r = await exchange(lenient.port, options);
    expect(r.verdict.code).toBe('WARD_PKI_CHAIN_INVALID');
    expect(r.verdict.id).toBeUndefined();
  });

  it('a client without a certificate: peerIdentity is undefined where optional, refused where required', async () => {
    const ca = await openTestCa();
    const serverCreds = await credentialsFor(ca, WEB);
    const options = meshClientOptions({ bundle: ca.bundle(), expectedId: WEB });

    const lenient = await meshServer(serverCreds, { requireClientCert: false });
    const r = await exchange(lenient.port, options);
    expect(r.serverUri).toBe(WEB.toString());
    expect(r.verdict).toEqual({ protocol: 'TLSv1.3' });

    const strict = await meshServer(serverCreds, { requireClientCert: true });
    const serverSide = once(strict.server, 'tlsClientError');
    const err = await refusal(exchange(strict.port, options));
    expect(err.code).toBe('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
    const [serverErr] = (await serverSide) as [Error & { code?: string }];
    expect(serverErr.code).toBe('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE');
    expect(strict.replies).toBe(0);
  });

  it('refuses a leaf of a foreign trust domain that chains to a trusted root, on either side', async () => {
    // Hand-built, for what the CA refuses to issue: a leaf of another trust domain that still chains
    // to the root of TD's bundle (OpenSSL's path validation passes; only Ward's SVID rules refuse it).
    const pki = mintPki(TD);
    const foreign = pki.credentials(SpiffeId.workload('other.org', 'shop', 'web'));
    const local = pki.credentials(CART);

    // Server side: the client's foreign leaf passes OpenSSL (same root) and peerIdentity refuses it.
    const server = await meshServer(pki.credentials(WEB), { requireClientCert: true });
    const r = await exchange(server.port, meshClientOptions({ bundle: pki.bundle, expectedId: WEB, creds: foreign }));
    expect(r.verdict.code).toBe('WARD_PKI_SVID_INVALID');
    expect(r.verdict.message).toContain('foreign-trust-domain');
    // Control: a leaf of the bundle's own trust domain from the same hierarchy is accepted.
    expect((await exchange(server.port, meshClientOptions({ bundle: pki.bundle, expectedId: WEB, creds: local }))).verdict.id).toBe(CART.toString());

    // Client side: a server presenting the foreign leaf is refused even with no expected identity.
    const foreignServer = await meshServer(foreign, { requireClientCert: true, trustDomain: TD });
    const err = await refusal(exchange(foreignServer.port, meshClientOptions({ bundle: pki.bundle, creds: local })));
    expect(isWardError(err, 'WARD_PKI_SVID_INVALID')).toBe(true);
    expect(err.message).toContain('foreign-trust-domain');
  });
});
