import { createPublicKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { isWardError } from '../errors.js';
import { openssl, opensslOk, tempDir, writeFiles } from '../../test/helpers/openssl.js';
import { ECDSA_SHA256_ALG_ID } from './certificate.js';
import { createCsr, MAX_CSR_BYTES, parseCsr, parseCsrAsync } from './csr.js';
import { DerCursor, encodeBitString, encodeOid, readPemBlocks, readWhole, seq, TAG, tlv, toPem } from './der.js';
import { PrivateKey } from './keys.js';
import { expectWardError } from '../../test/helpers/errors.js';


function pemToDer(pem: string): Buffer {
  return readPemBlocks(pem).blocks[0].der;
}

/** Runs `openssl req -new` with a fresh key; returns the CSR PEM and the key's SPKI DER. */
async function opensslCsr(keyArgs: string[], extra: string[] = [], subj = '/CN=x'): Promise<{ pem: string; spki: Buffer; dir: string }> {
  const dir = await tempDir();
  await opensslOk(['req', '-new', ...keyArgs, '-nodes', '-keyout', `${dir}/key.pem`, '-subj', subj, ...extra, '-out', `${dir}/req.pem`]);
  const pem = await readFile(`${dir}/req.pem`, 'utf8');
  const keyPem = await readFile(`${dir}/key.pem`, 'utf8');
  const spki = createPublicKey(keyPem).export({ format: 'der', type: 'spki' });
  return { pem, spki, dir };
}

const P256 = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];

/** Signs a hand-built certificationRequestInfo with `key`, for inputs no tool would produce. */
function handCsr(key: PrivateKey, info: Buffer): Buffer {
  return seq(info, ECDSA_SHA256_ALG_ID, encodeBitString(sign('sha256', info, { key: key.keyObject, dsaEncoding: 'der' })));
}

function infoWithExtensions(key: PrivateKey, attributes: Buffer[]): Buffer {
  return seq(Buffer.from([2, 1, 0]), seq(), key.publicKeyDer(), tlv(0xa0, ...attributes));
}

function extensionRequest(...extensions: Buffer[]): Buffer {
  return seq(encodeOid('1.2.840.113549.1.9.14'), tlv(TAG.SET, seq(...extensions)));
}

function sanExtension(...names: Buffer[]): Buffer {
  return seq(encodeOid('2.5.29.17'), tlv(TAG.OCTET_STRING, seq(...names)));
}

describe('parseCsr', () => {
  it('reads a P-256 CSR made by `openssl req` and reports its subject and key', async () => {
    const { pem, spki } = await opensslCsr(P256);
    const r = parseCsr(pem);
    expect(r.subject).toBe('CN=x');
    expect(r.publicKeyDer.equals(spki)).toBe(true);
    expect(r).toMatchObject({ uris: [], dnsNames: [], ipAddresses: [], emails: [], otherSanCount: 0, requestsCa: false, requestsKeyCertSign: false });
    // Same answer for DER, and for PEM handed over as a Buffer.
    const der = pemToDer(pem);
    expect(parseCsr(der)).toEqual(r);
    expect(parseCsr(Buffer.from(pem))).toEqual(r);
  });

  it('reports every requested SAN, whatever its kind', async () => {
    const san = 'subjectAltName=URI:spiffe://example.org/ns/a/sa/b,URI:spiffe://evil.org/x,DNS:a.example,DNS:b.example,IP:10.1.2.3,IP:fd00::7,email:x@y.z,RID:1.2.3,dirName:dir_sect';
    const dir = await tempDir();
    const f = await writeFiles(dir, {
      'req.cnf': '[req]\ndistinguished_name=dn\n[dn]\n[dir_sect]\nCN=inner\n',
    });
    const { pem } = await opensslCsr(P256, ['-config', f['req.cnf'], '-addext', san]);
    const r = parseCsr(pem);
    expect(r.uris).toEqual(['spiffe://example.org/ns/a/sa/b', 'spiffe://evil.org/x']);
    expect(r.dnsNames).toEqual(['a.example', 'b.example']);
    expect(r.ipAddresses).toEqual(['10.1.2.3', 'fd00::7']);
    expect(r.emails).toEqual(['x@y.z']);
    expect(r.otherSanCount).toBe(2);
    expect(r.requestsCa).toBe(false);
  });

  it('reports a request for CA:TRUE and keyCertSign (the CA refuses; parsing only reports)', async () => {
    const { pem } = await opensslCsr(P256, ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,digitalSignature']);
    const r = parseCsr(pem);
    expect(r.requestsCa).toBe(true);
    expect(r.requestsKeyCertSign).toBe(true);
    const { pem: plain } = await opensslCsr(P256, ['-addext', 'basicConstraints=CA:FALSE', '-addext', 'keyUsage=digitalSignature']);
    expect(parseCsr(plain)).toMatchObject({ requestsCa: false, requestsKeyCertSign: false });
  });

  it('expands a compressed P-256 point into the uncompressed SPKI', async () => {
    const dir = await tempDir();
    await opensslOk(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${dir}/k.pem`]);
    await opensslOk(['ec', '-in', `${dir}/k.pem`, '-conv_form', 'compressed', '-out', `${dir}/kc.pem`]);
    await opensslOk(['req', '-new', '-key', `${dir}/kc.pem`, '-subj', '/CN=c', '-out', `${dir}/req.pem`]);
    const pem = await readFile(`${dir}/req.pem`, 'utf8');
    expect(pemToDer(pem).includes(Buffer.from('032200', 'hex'))).toBe(true); // really compressed on the wire
    const r = parseCsr(pem);
    const expected = PrivateKey.from(await readFile(`${dir}/k.pem`, 'utf8')).publicKeyDer();
    expect(r.publicKeyDer.equals(expected)).toBe(true);
    expect(r.publicKeyDer.length).toBe(91);
  });

  it('refuses a CSR whose signature was tampered with (proof of possession)', async () => {
    const { pem } = await opensslCsr(P256);
    const der = pemToDer(pem);
    // Last byte of the signature (the low byte of s).
    const badSig = Buffer.from(der);
    badSig[badSig.length - 1] ^= 0x01;
    expectWardError(() => parseCsr(badSig), 'WARD_PKI_CSR_INVALID', /proof of possession/);
    expectWardError(() => parseCsr(toPem(badSig, 'CERTIFICATE REQUEST')), 'WARD_PKI_CSR_INVALID', /proof of possession/);
    // Signed content changed: the subject "x" becomes "y".
    const badInfo = Buffer.from(der);
    const cn = badInfo.indexOf(Buffer.from('0c0178', 'hex'));
    expect(cn).toBeGreaterThan(0);
    badInfo[cn + 2] = 0x79;
    expectWardError(() => parseCsr(badInfo), 'WARD_PKI_CSR_INVALID', /signature does not verify/);
    // Someone else's key in an otherwise valid request.
    const other = PrivateKey.generate().publicKeyDer();
    const swapped = Buffer.from(der);
    const at = swapped.indexOf(Buffer.from('034200', 'hex'));
    other.copy(swapped, at + 3, 26);
    expectWardError(() => parseCsr(swapped), 'WARD_PKI_CSR_INVALID', /proof of possession/);
  });

  it('parseCsrAsync (thread-pool verification) accepts and refuses exactly what parseCsr does', async () => {
    const { pem } = await opensslCsr(P256);
    expect((await parseCsrAsync(pem)).publicKeyDer.equals(parseCsr(pem).publicKeyDer)).toBe(true);
    const der = pemToDer(pem);
    const badSig = Buffer.from(der);
    badSig[badSig.length - 1] ^= 0x01;
    await expect(parseCsrAsync(badSig)).rejects.toMatchObject({ code: 'WARD_PKI_CSR_INVALID', message: expect.stringMatching(/proof of possession/) });
    await expect(parseCsrAsync(der.subarray(0, 40))).rejects.toMatchObject({ code: 'WARD_PKI_CSR_INVALID' });
    await expect(parseCsrAsync('x'.repeat(MAX_CSR_BYTES + 1))).rejects.toMatchObject({ code: 'WARD_PKI_CSR_TOO_LARGE' });
  });

  it('refuses a point that is not on the curve', () => {
    const key = PrivateKey.generate();
    const der = Buffer.from(pemToDer(createCsr(key)));
    const at = der.indexOf(Buffer.from('034200', 'hex'));
    der[at + 3 + 64] ^= 0x01; // last byte of y
    expectWardError(() => parseCsr(der), 'WARD_PKI_CSR_INVALID', /not a valid P-256 point/);
  });

  it('refuses RSA, Ed25519, P-384 and secp256k1 keys, and signatures other than ecdsa-with-SHA256', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['-newkey', 'rsa:2048'], /key type RSA is not accepted; only ECDSA P-256/],
      [['-newkey', 'ed25519'], /key type Ed25519 is not accepted/],
      [['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384'], /EC curve P-384 is not accepted; only P-256/],
      [['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp256k1'], /EC curve secp256k1 is not accepted/],
      [[...P256, '-sha384'], /signature algorithm ecdsa-with-SHA384 is not accepted; only ecdsa-with-SHA256/],
    ];
    for (const [args, message] of cases) {
      const { pem } = await opensslCsr(args);
      expectWardError(() => parseCsr(pem), 'WARD_PKI_CSR_INVALID', message);
    }
  });

  it('refuses truncated input at every length, and trailing data', async () => {
    const { pem } = await opensslCsr(P256, ['-addext', 'subjectAltName=URI:spiffe://example.org/a']);
    const der = pemToDer(pem);
    for (let n = 1; n < der.length; n++) expectWardError(() => parseCsr(der.subarray(0, n)), 'WARD_PKI_CSR_INVALID', /malformed CSR/);
    expectWardError(() => parseCsr(Buffer.concat([der, Buffer.from([0x00])])), 'WARD_PKI_CSR_INVALID', /1 bytes of trailing data/);
    expectWardError(() => parseCsr(toPem(Buffer.concat([der, der]), 'CERTIFICATE REQUEST')), 'WARD_PKI_CSR_INVALID', /trailing data/);
    // A PEM cut short.
    expectWardError(() => parseCsr(pem.slice(0, pem.length - 40)), 'WARD_PKI_PEM_INVALID', /no END line/);
  });

  it('refuses oversized input before parsing it', () => {
    const key = PrivateKey.generate();
    const pem = createCsr(key);
    const padded = `${' '.repeat(MAX_CSR_BYTES)}${pem}`;
    expectWardError(() => parseCsr(padded), 'WARD_PKI_CSR_TOO_LARGE', new RegExp(`limit is ${MAX_CSR_BYTES}`));
    expectWardError(() => parseCsr(Buffer.alloc(MAX_CSR_BYTES + 1, 0x30)), 'WARD_PKI_CSR_TOO_LARGE');
    // A huge SAN list inside a validly signed CSR.
    const names = Array.from({ length: 800 }, (_, i) => `host-${i}.example.org`);
    const big = createCsr(key, { dnsNames: names });
    expect(big.length).toBeGreaterThan(MAX_CSR_BYTES);
    expectWardError(() => parseCsr(big), 'WARD_PKI_CSR_TOO_LARGE');
    // Just under the limit is parsed (and refused for what it is, not for its size).
    expectWardError(() => parseCsr(Buffer.alloc(MAX_CSR_BYTES, 0x30)), 'WARD_PKI_CSR_INVALID');
  });

  it('refuses garbage and empty input', () => {
    expectWardError(() => parseCsr(''), 'WARD_PKI_CSR_INVALID', /empty/);
    expectWardError(() => parseCsr(Buffer.alloc(0)), 'WARD_PKI_CSR_INVALID', /empty/);
    expectWardError(() => parseCsr('not a csr'), 'WARD_PKI_PEM_INVALID');
    expectWardError(() => parseCsr(Buffer.from([0x30, 0x80, 0, 0])), 'WARD_PKI_CSR_INVALID', /indefinite/);
    expectWardError(() => parseCsr(undefined as unknown as string), 'WARD_PKI_CSR_INVALID');
    for (let i = 0; i < 2000; i++) {
      const input = Buffer.concat([Buffer.from([0x30]), randomBytes(1 + (i % 600))]);
      expectWardError(() => parseCsr(input), 'WARD_PKI_CSR_INVALID');
    }
  });

  it('never throws anything but a WardError on bit-flipped CSRs', async () => {
    const { pem } = await opensslCsr(P256, ['-addext', 'subjectAltName=URI:spiffe://example.org/a,DNS:x.example']);
    const der = pemToDer(pem);
    for (let i = 0; i < 2000; i++) {
      const input = Buffer.from(der);
      for (let k = 0; k <= i % 3; k++) input[1 + Math.floor(Math.random() * (input.length - 1))] ^= 1 << Math.floor(Math.random() * 8);
      try {
        parseCsr(input);
      } catch (err) {
        if (!isWardError(err, 'WARD_PKI_CSR_INVALID')) throw new Error(`unexpected error for ${input.toString('hex')}`, { cause: err });
      }
    }
  });

  it('refuses PEM with the wrong label, several blocks, text around it or headers', async () => {
    const pem = createCsr(PrivateKey.generate());
    const cases: Array<[string, RegExp]> = [
      [pem.replace(/CERTIFICATE REQUEST/g, 'CERTIFICATE'), /expected a "CERTIFICATE REQUEST" PEM block, found "CERTIFICATE"/],
      [pem.replace(/CERTIFICATE REQUEST/g, 'PRIVATE KEY'), /found "PRIVATE KEY"/],
      [pem + pem, /exactly one PEM block, found 2/],
      [`subject=CN x\n${pem}`, /text outside/],
      [`${pem}trailing words\n`, /text outside/],
      [pem.replace('-----END CERTIFICATE REQUEST-----', '-----END CERTIFICATE-----'), /ends with/],
      [pem.replace(/\n([A-Za-z0-9+/]{4})/, '\n$1*'), /not valid base64/],
    ];
    for (const [input, message] of cases) expectWardError(() => parseCsr(input), 'WARD_PKI_PEM_INVALID', message);
    // The legacy label and CRLF line ends are fine.
    expect(parseCsr(pem.replace(/CERTIFICATE REQUEST/g, 'NEW CERTIFICATE REQUEST').replace(/\n/g, '\r\n')).subject).toBe('');
  });

  it('refuses ambiguous extension requests: two extensionRequest attributes or a repeated extension', () => {
    const key = PrivateKey.generate();
    const uri = (s: string): Buffer => tlv(0x86, Buffer.from(s));
    const good = handCsr(key, infoWithExtensions(key, [extensionRequest(sanExtension(uri('spiffe://example.org/a')))]));
    expect(parseCsr(good).uris).toEqual(['spiffe://example.org/a']);
    const twoAttributes = handCsr(
      key,
      infoWithExtensions(key, [extensionRequest(sanExtension(uri('spiffe://example.org/a'))), extensionRequest(sanExtension(uri('spiffe://example.org/b')))]),
    );
    expectWardError(() => parseCsr(twoAttributes), 'WARD_PKI_CSR_INVALID', /more than one extensionRequest/);
    const twoSans = handCsr(key, infoWithExtensions(key, [extensionRequest(sanExtension(uri('spiffe://example.org/a')), sanExtension(uri('spiffe://example.org/b')))]));
    expectWardError(() => parseCsr(twoSans), 'WARD_PKI_CSR_INVALID', /2\.5\.29\.17 appears twice/);
    const badIp = handCsr(key, infoWithExtensions(key, [extensionRequest(sanExtension(tlv(0x87, Buffer.from([1, 2, 3]))))]));
    expectWardError(() => parseCsr(badIp), 'WARD_PKI_CSR_INVALID', /iPAddress of 3 bytes/);
    const nonAscii = handCsr(key, infoWithExtensions(key, [extensionRequest(sanExtension(tlv(0x82, Buffer.from('bücher.example'))))]));
    expectWardError(() => parseCsr(nonAscii), 'WARD_PKI_CSR_INVALID', /non-ASCII/);
    // Version 2 and an explicit-parameters key are refused too.
    const v2 = handCsr(key, seq(Buffer.from([2, 1, 1]), seq(), key.publicKeyDer(), tlv(0xa0)));
    expectWardError(() => parseCsr(v2), 'WARD_PKI_CSR_INVALID', /version 1/);
  });

  it('refuses a CSR signed by a key other than the one inside', () => {
    const key = PrivateKey.generate();
    const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    const info = infoWithExtensions(key, []);
    const forged = seq(info, ECDSA_SHA256_ALG_ID, encodeBitString(sign('sha256', info, { key: other, dsaEncoding: 'der' })));
    expectWardError(() => parseCsr(forged), 'WARD_PKI_CSR_INVALID', /proof of possession/);
  });
});

describe('createCsr', () => {
  it('makes a CSR that parseCsr and `openssl req -verify` both accept', async () => {
    const key = PrivateKey.generate();
    const pem = createCsr(key, { uri: 'spiffe://example.org/ns/a/sa/b', dnsNames: ['a.example'], commonName: 'node-1' });
    const r = parseCsr(pem);
    expect(r.subject).toBe('CN=node-1');
    expect(r.uris).toEqual(['spiffe://example.org/ns/a/sa/b']);
    expect(r.dnsNames).toEqual(['a.example']);
    expect(r.publicKeyDer.equals(key.publicKeyDer())).toBe(true);
    const dir = await tempDir();
    const f = await writeFiles(dir, { 'req.pem': pem });
    const v = await openssl(['req', '-in', f['req.pem'], '-noout', '-verify', '-text']);
    expect(v.code).toBe(0);
    expect(v.stdout + v.stderr).toMatch(/verify OK/i);
    expect(v.stdout).toMatch(/Subject: CN = node-1/);
    expect(v.stdout).toMatch(/URI:spiffe:\/\/example.org\/ns\/a\/sa\/b, DNS:a.example/);
  });

  it('makes an empty-subject CSR without extensions, and refuses non-ASCII names', () => {
    const key = PrivateKey.generate();
    const der = pemToDer(createCsr(key));
    const outer = readWhole(der, TAG.SEQUENCE, 'csr');
    const info = DerCursor.inside(der, DerCursor.inside(der, outer).next('info'));
    info.next('version');
    const subject = info.next('subject');
    expect(der.subarray(subject.offset, subject.end).equals(Buffer.from([0x30, 0x00]))).toBe(true);
    expect(parseCsr(der)).toMatchObject({ subject: '', uris: [], dnsNames: [] });
    expectWardError(() => createCsr(key, { dnsNames: ['bücher.example'] }), 'WARD_PKI_CSR_INVALID', /not printable ASCII/);
  });
});
