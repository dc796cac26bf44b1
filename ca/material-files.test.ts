import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { systemClock } from '../core/clock.js';
import { silentLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { tempDir } from '../test/helpers/openssl.js';
import { errorOf } from '../test/helpers/errors.js';
import { CertificateAuthority } from './authority.js';
import { exportCaMaterial, importCaMaterial } from './material-files.js';
import { readState } from './store.js';

describe('CA material as flat files (the Kubernetes Secret ward-ca)', () => {
  it('exports ca.json, roots, issuers and keys only; importing them elsewhere gives the same CA', async () => {
    const a = await tempDir();
    await CertificateAuthority.init({ stateDir: a, trustDomain: 'cluster.local', clock: systemClock });
    const files = await exportCaMaterial(a);
    const names = Object.keys(files).sort();
    expect(names[0]).toBe('ca.json');
    expect(names.filter((n) => n.startsWith('roots.'))).toHaveLength(1);
    expect(names.filter((n) => n.startsWith('issuers.'))).toHaveLength(1);
    expect(names.filter((n) => n.startsWith('keys.'))).toHaveLength(2);
    expect(names).toHaveLength(5);
    for (const n of names) expect(n).toMatch(/^[-._a-zA-Z0-9]+$/); // a valid Secret data key

    const b = await tempDir();
    await importCaMaterial(b, files);
    const keys = await readdir(join(b, 'keys'));
    for (const k of keys) expect((await stat(join(b, 'keys', k))).mode & 0o777).toBe(0o600);
    expect((await stat(b)).mode & 0o777).toBe(0o700);
    const [sa, sb] = [await readState(a), await readState(b)];
    expect(sb).toEqual(sa);
    const open = (stateDir: string) => CertificateAuthority.open({ stateDir, readOnly: true, clock: systemClock, logger: silentLogger(), registry: createRegistry() });
    const [ca, original] = [await open(b), await open(a)];
    try {
      expect(ca.bundle().toPem()).toBe(original.bundle().toPem());
      expect(ca.activeIssuer().cert.fingerprintSha256).toBe(original.activeIssuer().cert.fingerprintSha256);
    } finally {
      await Promise.all([ca.close(), original.close()]);
    }
  });

  it('refuses material without ca.json, with unknown names, path tricks or too many files', async () => {
    const dir = await tempDir();
    const one = Buffer.from('x');
    expect((await errorOf(importCaMaterial(dir, { 'roots.ab.pem': one }))).code).toBe('WARD_CA_STATE_CORRUPT');
    for (const name of ['notes.txt', 'roots.../../etc.pem', `keys.${'a'.repeat(64)}.pem`, `roots.${'A'.repeat(64)}.pem`]) {
      const e = await errorOf(importCaMaterial(dir, { 'ca.json': one, [name]: one }));
      expect(e.code, name).toBe('WARD_CA_STATE_CORRUPT');
      expect(e.message).toMatch(/unexpected file/);
    }
    const many = Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`keys.${i.toString(16).padStart(64, '0')}.key`, one]));
    expect((await errorOf(importCaMaterial(dir, { 'ca.json': one, ...many }))).message).toMatch(/at most 64/);
    expect(await readdir(dir)).toEqual([]);
  });
});
