import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../core/identity/index.js';
import type { CsrRequest } from '../core/pki/csr.js';
import {
  LEAF_BACKDATE_MS,
  assertIssuerValid,
  checkCsrPolicy,
  leafLifetime,
  leafValidity,
} from './issuance-policy.js';

const ID = SpiffeId.workload('example.org', 'shop', 'cart');

function csr(o: Partial<CsrRequest> = {}): CsrRequest {
  return {
    publicKeyDer: Buffer.alloc(0),
    subject: '',
    uris: [],
    dnsNames: [],
    ipAddresses: [],
    emails: [],
    otherSanCount: 0,
    requestsCa: false,
    requestsKeyCertSign: false,
    ...o,
  };
}

describe('CSR policy', () => {
  it('accepts no SAN, or exactly the authorized URI', () => {
    expect(() => checkCsrPolicy(csr(), ID)).not.toThrow();
    expect(() => checkCsrPolicy(csr({ uris: [ID.toString()], subject: 'CN=ignored' }), ID)).not.toThrow();
  });

  it.each<[string, Partial<CsrRequest>, RegExp]>([
    ['a different identity', { uris: ['spiffe://example.org/ns/shop/sa/admin'] }, /asks for URI SAN "spiffe:\/\/example.org\/ns\/shop\/sa\/admin" but the caller is authorized only for spiffe:\/\/example.org\/ns\/shop\/sa\/cart/],
    ['the identity in another case', { uris: ['spiffe://example.org/ns/shop/sa/CART'] }, /authorized only for/],
    ['several URIs', { uris: [ID.toString(), ID.toString()] }, /2 URI SANs/],
    ['a DNS SAN', { uris: [ID.toString()], dnsNames: ['cart.shop'] }, /1 DNS SAN/],
    ['an IP SAN', { ipAddresses: ['10.0.0.1'] }, /1 IP SAN/],
    ['an email SAN', { emails: ['a@b.c'] }, /1 email SAN/],
    ['another SAN type', { otherSanCount: 2 }, /2 other SAN/],
    ['CA:TRUE', { requestsCa: true, uris: [ID.toString()] }, /CA certificate/],
    ['keyCertSign', { requestsKeyCertSign: true }, /keyCertSign/],
  ])('refuses %s with WARD_PKI_CSR_UNAUTHORIZED and a precise message', (_what, o, message) => {
    let err: unknown;
    try {
      checkCsrPolicy(csr(o), ID);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'WARD_PKI_CSR_UNAUTHORIZED' });
    expect((err as Error).message).toMatch(message);
  });
});

describe('lifetime', () => {
  it('defaults to 1h and accepts 5m..24h', () => {
    expect(leafLifetime(undefined)).toBe(3_600_000);
    expect(leafLifetime(5 * 60_000)).toBe(5 * 60_000);
    expect(leafLifetime(24 * 3_600_000)).toBe(24 * 3_600_000);
  });

  it.each([5 * 60_000 - 1, 24 * 3_600_000 + 1, 0, -1, Number.NaN, 1.5e6 + 0.5])('refuses %s ms with WARD_CA_LIFETIME_INVALID', (ttl) => {
    expect(() => leafLifetime(ttl)).toThrow(expect.objectContaining({ code: 'WARD_CA_LIFETIME_INVALID' }));
  });

  const window = { validFrom: Date.UTC(2026, 0, 1), validUntil: Date.UTC(2027, 0, 1) };

  it('backdates NotBefore 30s and sets NotAfter to now + lifetime, in whole seconds', () => {
    const now = Date.UTC(2026, 5, 1, 12, 0, 0, 789);
    const v = leafValidity(now, 3_600_000, window);
    expect(v.notBefore.getTime()).toBe(Date.UTC(2026, 5, 1, 11, 59, 30));
    expect(v.notAfter.getTime()).toBe(Date.UTC(2026, 5, 1, 13, 0, 0));
    expect(LEAF_BACKDATE_MS).toBe(30_000);
  });

  it('never starts before nor ends after the issuer', () => {
    const early = leafValidity(window.validFrom + 5_000, 3_600_000, window);
    expect(early.notBefore.getTime()).toBe(window.validFrom);
    const late = leafValidity(window.validUntil - 60_000, 3_600_000, window);
    expect(late.notAfter.getTime()).toBe(window.validUntil);
  });

  it('refuses to issue from an issuer that is not valid now', () => {
    expect(() => assertIssuerValid(window, window.validFrom - 1)).toThrow(expect.objectContaining({ code: 'WARD_CA_ISSUER_NOT_VALID' }));
    expect(() => assertIssuerValid(window, window.validUntil + 1)).toThrow(expect.objectContaining({ code: 'WARD_CA_ISSUER_NOT_VALID' }));
    expect(() => assertIssuerValid(window, window.validUntil)).not.toThrow();
  });
});
