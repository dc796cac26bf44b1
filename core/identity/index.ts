export { SpiffeId, parseTrustDomain, trustDomainError, pathError, MAX_ID_LENGTH, MAX_TRUST_DOMAIN_LENGTH } from './spiffe-id.js';
