export { CertificateAuthority, type InitOptions, type InitResult, type IssueRequest, type IssueResult, type IssuedEvent, type CaMode } from './authority.js';
export { CaServer, caServerId, clientKey, ADMIN_TOKEN_FILE, assertLoopback, DEFAULT_LIMITS, type WorkloadAuthorizer, type CaServerLimits } from './server.js';
export { JoinTokens, DEFAULT_TOKEN_TTL_MS, MAX_TOKEN_TTL_MS } from './tokens.js';
export { describeAuthority, caWarnings, type CaReport, type CaWarning } from './inspect.js';
export { readState } from './store.js';
export { DEFAULT_LEAF_TTL_MS, MIN_LEAF_TTL_MS, MAX_LEAF_TTL_MS } from './issuance-policy.js';
export type { RotationKind, RotationStatus } from './rotation.js';
export { readLock, type LockInfo } from './lock.js';
export { MIN_CA_TTL_MS } from './material.js';
