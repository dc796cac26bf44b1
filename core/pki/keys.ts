import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { inspect } from 'node:util';
import { WardError } from '../errors.js';

/**
 * An ECDSA P-256 private key. It can never be printed: toJSON(), toString() and util.inspect all
 * return '[redacted]', so a stray log call or JSON.stringify cannot leak it. The PEM is only
 * reachable through the explicit exportPem(), used when writing a 0600 key file.
 */
export class PrivateKey {
  readonly #key: KeyObject;
  readonly publicKey: KeyObject;

  private constructor(key: KeyObject) {
    if (key.type !== 'private' || key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
      throw new WardError('WARD_PKI_KEY_INVALID', 'private key must be ECDSA P-256');
    }
    this.#key = key;
    this.publicKey = createPublicKey(key);
  }

  static generate(): PrivateKey {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    return new PrivateKey(privateKey);
  }

  /** Reads a PEM (PKCS#8 or SEC1 "EC PRIVATE KEY") or a KeyObject. */
  static from(input: string | Buffer | KeyObject): PrivateKey {
    if (typeof input === 'object' && !Buffer.isBuffer(input)) return new PrivateKey(input);
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: input, format: 'pem' });
    } catch (cause) {
      throw new WardError('WARD_PKI_KEY_INVALID', 'private key is not a readable unencrypted PEM key', { cause });
    }
    return new PrivateKey(key);
  }

  /** The underlying KeyObject, for node:crypto sign() and tls.createSecureContext(). */
  get keyObject(): KeyObject {
    return this.#key;
  }

  /** PKCS#8 PEM. Only for writing to a 0600 file or handing to TLS; never log the result. */
  exportPem(): string {
    return this.#key.export({ format: 'pem', type: 'pkcs8' }).toString();
  }

  /** SubjectPublicKeyInfo DER of the public half. */
  publicKeyDer(): Buffer {
    return this.publicKey.export({ format: 'der', type: 'spki' });
  }

  toJSON(): string {
    return '[redacted]';
  }
  toString(): string {
    return '[redacted]';
  }
  [inspect.custom](): string {
    return 'PrivateKey [redacted]';
  }
}

/** The PKCS#8 block label, as exportPem() writes it. */
const KEY_LABEL = 'PRIVATE KEY';
const KEY_BLOCK = new RegExp(`-----BEGIN ${KEY_LABEL}-----[\\s\\S]*?-----END ${KEY_LABEL}-----\\s*`);

/**
 * Splits a "chain + key" PEM file (what a node proxy saves as its identity: certificates, then
 * exportPem()) into the key and the certificate text around it. WARD_PKI_PEM_INVALID without a key.
 */
export function splitKeyAndChain(text: string): { key: PrivateKey; chainPem: string } {
  const block = KEY_BLOCK.exec(text);
  if (!block) throw new WardError('WARD_PKI_PEM_INVALID', 'no private key in the file');
  return { key: PrivateKey.from(block[0]), chainPem: text.slice(0, block.index) + text.slice(block.index + block[0].length) };
}
