import { constants } from 'node:crypto';
import type { PeerCertificate, SecureContextOptions, TLSSocket, ConnectionOptions } from 'node:tls';
import { WardError } from '../errors.js';
import type { SpiffeId } from '../identity/index.js';
import type { PrivateKey } from '../pki/keys.js';
import { parseCertificate } from '../pki/certificate.js';
import { checkSvidLeaf } from '../pki/verify.js';
import type { TrustBundle } from '../pki/trust-bundle.js';

/**
 * What a mesh member presents and trusts: its SVID chain, its key, and the trust bundle.
 * Immutable; rotation builds a new one and swaps the secure context (open connections keep theirs).
 */
export interface Credentials {
  readonly id: SpiffeId;
  /** Leaf first, then intermediates (never the root). */
  readonly chainPem: string;
  readonly key: PrivateKey;
  readonly bundle: TrustBundle;
}

/** TLS 1.3 only between mesh members: no downgrade to be negotiated. */
const MESH_TLS = { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' } as const;

/** Options for a mesh server. The peer is verified by OpenSSL against the bundle, then by peerIdentity(). */
export function meshServerOptions(creds: Credentials, opts: { requireClientCert: boolean }): SecureContextOptions & {
  requestCert: boolean;
  rejectUnauthorized: boolean;
} {
  return {
    ...MESH_TLS,
    cert: creds.chainPem,
    key: creds.key.keyObject.export({ format: 'pem', type: 'pkcs8' }),
    ca: creds.bundle.toPem(),
    // No session resumption: Node skips the client's checkServerIdentity (Ward's SVID check and
    // secure naming) on a resumed session, so a client offering a session obtained from this server
    // under one expected identity would accept it under another. Resumption would also let a client
    // in without its certificate being checked against the current bundle. With tickets off, the
    // TLS 1.3 tickets OpenSSL still sends are stateful and, with no session cache on a Node server
    // (no 'resumeSession' listener), never resume. Connections are pooled, so a full handshake per
    // connection is cheap. setSecureContext(meshServerOptions(...)) keeps this on the new context.
    secureOptions: constants.SSL_OP_NO_TICKET,
    requestCert: true,
    // When client certificates are optional (the CA's bootstrap with a join token), OpenSSL must not
    // reject the handshake; the application then requires socket.authorized + peerIdentity().
    rejectUnauthorized: opts.requireClientCert,
  };
}

/**
 * Options for a mesh client that expects the server to be exactly `expectedId` (secure naming).
 * With `creds` absent the client presents no certificate (bootstrap) but still verifies the server.
 * Do not add a `session` to resume (nor let a pool cache sessions, e.g. undici's
 * maxCachedSessions: 0): Node does not call checkServerIdentity on a resumed session, so the SVID
 * and secure-naming checks would be skipped. Mesh servers never resume (see meshServerOptions).
 */
export function meshClientOptions(o: { bundle: TrustBundle; expectedId?: SpiffeId; creds?: Credentials }): ConnectionOptions {
  const { bundle, expectedId, creds } = o;
  return {
    ...MESH_TLS,
    ca: bundle.toPem(),
    ...(creds ? { cert: creds.chainPem, key: creds.key.keyObject.export({ format: 'pem', type: 'pkcs8' }) } : {}),
    rejectUnauthorized: true,
    // Replaces DNS host-name matching: mesh servers are named by SPIFFE ID, not DNS name.
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      const failure = svidFailure(cert, { trustDomain: bundle.trustDomain, usage: 'server', expectedId });
      return failure;
    },
  };
}

function svidFailure(cert: PeerCertificate, o: { trustDomain: string; usage: 'client' | 'server'; expectedId?: SpiffeId }): Error | undefined {
  if (!cert || !cert.raw) return new WardError('WARD_PKI_SVID_INVALID', 'peer presented no certificate');
  let parsed;
  try {
    parsed = parseCertificate(cert.raw);
  } catch (err) {
    return err as Error;
  }
  const r = checkSvidLeaf(parsed, { trustDomain: o.trustDomain, usage: o.usage, expectedId: o.expectedId });
  return r.ok ? undefined : new WardError('WARD_PKI_SVID_INVALID', `peer certificate refused (${r.reason}): ${r.detail}`);
}

/**
 * The verified SPIFFE ID of the peer of a server-side socket, or undefined when the peer presented
 * no certificate. Throws WARD_PKI_SVID_INVALID / WARD_PKI_CHAIN_INVALID when it presented a bad one.
 * Both checks are needed: OpenSSL validated the path (socket.authorized), Ward applies the SVID rules.
 */
export function peerIdentity(socket: TLSSocket, o: { trustDomain: string }): SpiffeId | undefined {
  const cert = socket.getPeerCertificate(false);
  if (!cert || !cert.raw) return undefined;
  if (!socket.authorized) {
    throw new WardError('WARD_PKI_CHAIN_INVALID', `peer certificate did not validate against the trust bundle: ${String(socket.authorizationError)}`);
  }
  const parsed = parseCertificate(cert.raw);
  const r = checkSvidLeaf(parsed, { trustDomain: o.trustDomain, usage: 'client' });
  if (!r.ok) throw new WardError('WARD_PKI_SVID_INVALID', `peer certificate refused (${r.reason}): ${r.detail}`);
  return r.id;
}
