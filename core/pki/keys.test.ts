import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../logger.js';
import { PrivateKey, splitKeyAndChain } from './keys.js';

describe('PrivateKey', () => {
  it('can never be printed: JSON, inspect, String and template literals all say [redacted]', () => {
    const key = PrivateKey.generate();
    const pem = key.exportPem();
    const body = pem.split('\n')[1]; // a line of the base64 key material
    const renderings = [
      JSON.stringify(key),
      JSON.stringify({ nested: { key } }),
      inspect(key),
      inspect({ deep: { deeper: { key } } }, { depth: 10 }),
      String(key),
      `${key}`,
    ];
    for (const r of renderings) {
      expect(r).toContain('[redacted]');
      expect(r).not.toContain(body);
      expect(r).not.toContain('PRIVATE KEY');
    }
  });

  it('does not leak through the logger either, even when passed by mistake', () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', destination: { write: (s: string) => void lines.push(s) } });
    const key = PrivateKey.generate();
    const pem = key.exportPem();
    log.info({ key, keyPem: pem, privateKey: pem, token: 'wardjt_secret', authorization: 'Bearer abc', nested: { key: pem } }, 'oops');
    log.info({ issuer: { privateKey: key } }, 'nested key object');
    const out = lines.join('');
    expect(lines).toHaveLength(2);
    expect(out).not.toContain('PRIVATE KEY');
    expect(out).not.toContain(pem.split('\n')[1]);
    expect(out).not.toContain('wardjt_secret');
    expect(out).not.toContain('Bearer abc');
    expect(out).toContain('[redacted]');
  });

  it('round-trips through PEM and refuses keys that are not P-256', () => {
    const key = PrivateKey.generate();
    expect(PrivateKey.from(key.exportPem()).publicKeyDer().equals(key.publicKeyDer())).toBe(true);
    expect(() => PrivateKey.from('not a key')).toThrow(expect.objectContaining({ code: 'WARD_PKI_KEY_INVALID' }));
  });
});

describe('splitKeyAndChain', () => {
  it('takes the key out of a chain + key file and leaves the certificates around it', () => {
    const key = PrivateKey.generate();
    const chain = '-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n';
    const split = splitKeyAndChain(chain + key.exportPem());
    expect(split.key.publicKeyDer().equals(key.publicKeyDer())).toBe(true);
    expect(split.chainPem).toBe(chain);
    expect(() => splitKeyAndChain(chain)).toThrow(expect.objectContaining({ code: 'WARD_PKI_PEM_INVALID' }));
  });
});
