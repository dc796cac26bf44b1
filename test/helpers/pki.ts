/**
 * Test (and benchmark) helper: a root → intermediate hierarchy minted per run with core/pki, for
 * code that must not, or need not, run a CertificateAuthority (core/ and discovery/ tests may not
 * import ca/). Valid from a minute ago for an hour, on the real clock, since TLS stacks check
 * validity against it. Tests and benchmarks only.
 */
import { X509Certificate } from 'node:crypto';
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

/**
 * A Ward hierarchy on the real clock (root → intermediate → LeafSigner) issuing what the CA's
 * signServerName issues for the ingress: `issue(names)` gives a chain (leaf + intermediate) and key.
 * For tests of the ingress's certificate store and what feeds it.
 */
export function serverNamePki(trustDomain = 'example.org') {
  const now = Date.now();
  const rootKey = PrivateKey.generate();
  const intKey = PrivateKey.generate();
  const window = { notBefore: new Date(now - DAY_MS), notAfter: new Date(now + 30 * DAY_MS) };
  const root = createRoot({ key: rootKey, trustDomain, ...window });
  const inter = createIntermediate({ issuer: { cert: root, key: rootKey }, publicKey: intKey.publicKey, trustDomain, ...window });
  const signer = new LeafSigner({ cert: inter, key: intKey });
  const issue = (names: string[], o: { from?: number; until?: number } = {}) => {
    const key = PrivateKey.generate();
    const leaf = signer.signServerName({ publicKeyDer: key.publicKeyDer(), dnsNames: names, notBefore: new Date(o.from ?? now - 60_000), notAfter: new Date(o.until ?? now + 3_600_000) });
    return { chainPem: leaf.pem() + inter.pem, keyPem: key.exportPem(), leafPem: leaf.pem(), fingerprint: new X509Certificate(leaf.der).fingerprint256 };
  };
  return { now, root, inter, signer, rootPem: root.pem, issue };
}

const DAY_MS = 86_400_000;
