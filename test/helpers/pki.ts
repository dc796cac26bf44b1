/**
 * Test (and benchmark) helper: a root → intermediate hierarchy minted per run with core/pki, for
 * code that must not, or need not, run a CertificateAuthority (core/ and discovery/ tests may not
 * import ca/). Valid from a minute ago for an hour, on the real clock, since TLS stacks check
 * validity against it. Tests and benchmarks only.
 */
import type { SpiffeId } from '../../core/identity/index.js';
import { createIntermediate, createRoot, LeafSigner, PrivateKey, TrustBundle } from '../../core/pki/index.js';
import type { Credentials } from '../../core/tls/index.js';

export interface TestPki {
  bundle: TrustBundle;
  /** An X.509-SVID for `id` (any trust domain: the hierarchy signs what it is asked to). */
  credentials(id: SpiffeId): Credentials;
}

export function mintPki(trustDomain: string): TestPki {
  const now = Date.now();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 3_600_000);
  const rootKey = PrivateKey.generate();
  const root = createRoot({ key: rootKey, trustDomain, notBefore, notAfter });
  const intKey = PrivateKey.generate();
  const intermediate = createIntermediate({ issuer: { cert: root, key: rootKey }, publicKey: intKey.publicKey, trustDomain, notBefore, notAfter });
  const signer = new LeafSigner({ cert: intermediate, key: intKey });
  const bundle = new TrustBundle(trustDomain, [root]);
  return {
    bundle,
    credentials(id) {
      const key = PrivateKey.generate();
      const cert = signer.sign({ publicKeyDer: key.publicKeyDer(), id, notBefore, notAfter });
      return { id, chainPem: cert.pem() + intermediate.pem, key, bundle };
    },
  };
}
