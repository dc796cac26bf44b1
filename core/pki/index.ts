// The PKI surface of the identity kernel. Other folders import PKI only from here.
export { PrivateKey, splitKeyAndChain } from './keys.js';
export {
  Certificate,
  parseCertificate,
  parseCertificates,
  toPem,
  createRoot,
  createIntermediate,
  LeafSigner,
  type Issuer,
  type IssuedCertificate,
  type LeafRequest,
} from './certificate.js';
export { parseCsr, parseCsrAsync, createCsr, MAX_CSR_BYTES, type CsrRequest } from './csr.js';
export {
  validatePath,
  checkSvidLeaf,
  verifySvid,
  DEFAULT_MAX_DEPTH,
  type PathRejectReason,
  type SvidRejectReason,
  type PathResult,
  type SvidLeafResult,
  type VerifyResult,
  type SvidUsage,
} from './verify.js';
export { TrustBundle, MAX_BUNDLE_BYTES, type Jwk, type SpiffeBundleJson } from './trust-bundle.js';
