/**
 * Ward's error contract. Every operational failure is a WardError with a stable `code`
 * (`WARD_<AREA>_<NAME>`); callers branch on the code, never on the message. The list below is
 * the single source of truth: docs/errors.md documents every entry and a test keeps the two in sync.
 */

export const ERROR_CODES = {
  // config / command line
  WARD_CONFIG_INVALID: 'a configuration value or command-line flag is missing or invalid',
  WARD_USAGE: 'the command line could not be understood',
  // identity
  WARD_ID_INVALID: 'a SPIFFE ID or trust domain does not follow the SPIFFE-ID standard',
  // pki: parsing and building
  WARD_PKI_PEM_INVALID: 'PEM input is malformed, truncated or of an unexpected type',
  WARD_PKI_CERT_INVALID: 'a certificate could not be parsed',
  WARD_PKI_KEY_INVALID: 'a private or public key could not be parsed, or is not ECDSA P-256',
  WARD_PKI_KEY_MISMATCH: 'a private key does not belong to the certificate it is paired with',
  WARD_PKI_CSR_INVALID: 'a certificate signing request is malformed or its signature (proof of possession) does not verify',
  WARD_PKI_CSR_TOO_LARGE: 'a certificate signing request exceeds the size limit',
  WARD_PKI_CSR_UNAUTHORIZED: 'a certificate signing request asks for something the caller is not authorized to obtain',
  WARD_PKI_CHAIN_INVALID: 'a certificate chain failed RFC 5280 path validation',
  WARD_PKI_SVID_INVALID: 'a certificate violates the X.509-SVID profile',
  WARD_PKI_BUNDLE_INVALID: 'a trust bundle (PEM or SPIFFE JWKS) is malformed',
  // certificate authority
  WARD_CA_NOT_INITIALIZED: 'the CA state directory holds no CA; run `ward ca init`',
  WARD_CA_ALREADY_INITIALIZED: 'the CA state directory already holds a CA',
  WARD_CA_STATE_CORRUPT: 'a file in the CA state directory is unreadable or inconsistent',
  WARD_CA_STATE_LOCKED: 'another process (a running CA server, or another command) has the CA state directory open for writing',
  WARD_CA_STATE_PERMISSIONS: 'a private key file in the state directory is readable by other users',
  WARD_CA_ISSUER_NOT_VALID: 'the issuing CA is expired or not yet valid, so it refuses to sign',
  WARD_CA_LIFETIME_INVALID: 'a requested certificate lifetime is outside 5m..24h',
  WARD_CA_ROTATION_INVALID: 'a rotation step was asked for in the wrong state',
  WARD_CA_UNAUTHENTICATED: 'the caller presented no valid credential',
  WARD_CA_FORBIDDEN: 'the caller is authenticated but not authorized for this identity',
  WARD_CA_TOKEN_INVALID: 'a join token is unknown, expired or already used, or a ServiceAccount token is not authenticated for audience ward',
  WARD_CA_RATE_LIMITED: 'the caller exceeded its request rate',
  WARD_CA_REQUEST_INVALID: 'an API request is malformed',
  WARD_CA_REQUEST_TOO_LARGE: 'an API request body exceeds the size limit',
  WARD_CA_NOT_FOUND: 'no such API route',
  WARD_CA_INTERNAL: 'the CA failed unexpectedly; details are in its log',
  WARD_CA_UNREACHABLE: 'the CA server could not be reached or answered unexpectedly',
  WARD_CA_UNAVAILABLE: 'the CA cannot decide now because a service it depends on (the Kubernetes API, for TokenReview) is unavailable; retry',
  WARD_CA_JOIN_UNSUPPORTED: 'this CA does not accept that way of joining (a ServiceAccount token needs a CA in Kubernetes mode)',
  // discovery pool
  WARD_DISCOVERY_UNAUTHENTICATED: 'a discovery client presented no valid certificate from this mesh',
  WARD_DISCOVERY_FORBIDDEN: 'this identity may not use the discovery pool, or reported on a workload that is not on its node',
  WARD_DISCOVERY_REQUEST_INVALID: 'a discovery request (ack, health report) is malformed',
  WARD_DISCOVERY_REQUEST_TOO_LARGE: 'a discovery request body exceeds the size limit',
  WARD_DISCOVERY_NOT_FOUND: 'no such discovery route',
  WARD_DISCOVERY_INTERNAL: 'the discovery pool failed unexpectedly; details are in its log',
  // node proxy
  WARD_PROXY_JOIN_FAILED: 'the node proxy could not join the mesh (join token refused, CA unreachable, or its saved node identity unusable)',
  WARD_PROXY_IDENTITY_UNAVAILABLE: 'the node proxy holds no valid certificate for a workload, so it neither sends nor accepts its traffic',
  WARD_KUBE_UNAVAILABLE: 'the Kubernetes API could not be reached or answered with an error',
  WARD_PROXY_UNKNOWN_WORKLOAD: 'an outbound connection came from an address that is no workload of this node (Kubernetes mode: the source pod IP)',
  WARD_PROXY_UNKNOWN_SERVICE: 'an outbound request named a host that is not a mesh service (or a port the service does not expose)',
  WARD_PROXY_NO_ENDPOINTS: 'a mesh service has no healthy, identity-verified endpoint',
  WARD_PROXY_UPSTREAM_FAILED: 'every endpoint tried for a request failed (connect, TLS, identity or reset)',
  WARD_PROXY_REQUEST_INVALID: 'a request through the proxy is malformed or not in proxy form',
  WARD_PROXY_OVERLOADED: 'the proxy is at a connection or pending-request limit and shed the request',
  WARD_PROXY_TIMEOUT: 'an upstream did not answer within the request timeout',
  // inspection
  WARD_INSPECT_CONNECT_FAILED: 'a TLS connection for inspection could not be made',
} as const;

export type WardErrorCode = keyof typeof ERROR_CODES;

export class WardError extends Error {
  readonly code: WardErrorCode;
  constructor(code: WardErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WardError';
    this.code = code;
  }
}

export function isWardError(err: unknown, code?: WardErrorCode): err is WardError {
  return err instanceof WardError && (code === undefined || err.code === code);
}

/** Invariant violations are bugs: they crash rather than being handled. */
export function bug(message: string): never {
  throw new Error(`BUG: ${message}`);
}
