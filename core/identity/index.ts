export { SpiffeId, parseTrustDomain, trustDomainError, pathError, MAX_ID_LENGTH, MAX_TRUST_DOMAIN_LENGTH, INGRESS_NAMESPACE, INGRESS_SERVICE_ACCOUNT } from './spiffe-id.js';
