/**
 * CertificateStore: real certificates minted by `openssl` (Ward's own signer issues URI-SAN SVIDs,
 * and DNS certificates only for internal names: those tests use it), real files, real fs.watch, real
 * TLS handshakes on 127.0.0.1. Validity is judged on a ManualClock; reloads are awaited as events,
 * never slept for.
 */
import { once } from 'node:events';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../core/clock.js';
import type { Timers } from '../core/control/index.js';
import { isWardError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { serveSni, sniClient } from '../test/helpers/sni-client.js';
import { SpiffeId } from '../core/identity/index.js';
import { PrivateKey } from '../core/pki/index.js';
import { opensslOk, tempDir } from '../test/helpers/openssl.js';
import { serverNamePki } from '../test/helpers/pki.js';
import { CertificateStore, INTERNAL_SOURCE, MAX_CERTIFICATE_FILE_BYTES, type CertificateSource, type CertificateStoreEvents, type CertificateStoreOptions } from './certificates.js';

/** A PKCS#8 PEM block whose body is garbage (made from a fresh key, so no key text lives in the source). */
const unreadableKeyPem = (): string => PrivateKey.generate().exportPem().replace(/\n[A-Za-z0-9+/=\n]+\n(?=-----END)/, '\nAAAA\n');

const DAY = 86_400_000;
const TLS = { minVersion: 'TLSv1.2' } as const;

interface Minted {
  cert: string;
  key: string;
  /** SHA-256 fingerprint as Ward and Node print it (uppercase hex with colons). */
  fingerprint: string;
}

let mintDir: string;
let mintSeq = 0;
let caPem: string;
const m = {} as Record<'a1' | 'a2' | 'aShort' | 'wild' | 'other' | 'rsa' | 'clientOnly' | 'viaInter' | 'inter', Minted>;

/** A certificate and key from `openssl req -x509 -CA`, signed by `issuer` (default: the test root). */
async function mint(o: { names: string[]; days?: number; rsa?: boolean; eku?: string; ca?: boolean; issuer?: { cert: string; key: string } }): Promise<Minted> {
  const n = mintSeq++;
  const keyFile = `k${n}.pem`;
  const certFile = `c${n}.pem`;
  const issuer = o.issuer ?? { cert: 'ca.pem', key: 'ca.key' };
  const keyArgs = o.rsa ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
  const ext = o.ca
    ? ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']
    : [
        '-addext', `subjectAltName=${o.names.map((d) => `DNS:${d}`).join(',')}`,
        '-addext', `extendedKeyUsage=${o.eku ?? 'serverAuth'}`,
        '-addext', 'basicConstraints=critical,CA:FALSE',
      ];
  await opensslOk(
    ['req', '-x509', ...keyArgs, '-nodes', '-keyout', keyFile, '-out', certFile, '-CA', issuer.cert, '-CAkey', issuer.key,
      '-days', String(o.days ?? 30), '-subj', `/CN=${o.names[0]}`, ...ext],
    { cwd: mintDir },
  );
  const cert = await readFile(path.join(mintDir, certFile), 'utf8');
  const fp = await opensslOk(['x509', '-in', certFile, '-noout', '-fingerprint', '-sha256'], { cwd: mintDir });
  return { cert, key: await readFile(path.join(mintDir, keyFile), 'utf8'), fingerprint: fp.trim().split('=')[1] };
}

beforeAll(async () => {
  mintDir = await mkdtemp(path.join(tmpdir(), 'ward-ingress-certs-'));
  await opensslOk(
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '365',
      '-subj', '/CN=Ward Ingress Test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    { cwd: mintDir },
  );
  caPem = await readFile(path.join(mintDir, 'ca.pem'), 'utf8');
  const [a1, a2, aShort, wild, other, rsa, clientOnly, inter] = await Promise.all([
    mint({ names: ['a.example.com'] }),
    mint({ names: ['a.example.com'] }),
    mint({ names: ['a.example.com'], days: 1 }),
    mint({ names: ['*.example.com'] }),
    mint({ names: ['other.test'] }),
    mint({ names: ['r.example.com'], rsa: true }),
    mint({ names: ['a.example.com'], eku: 'clientAuth' }),
    mint({ names: ['Ward Ingress Test Intermediate'], ca: true }),
  ]);
  Object.assign(m, { a1, a2, aShort, wild, other, rsa, clientOnly, inter });
  await writeFile(path.join(mintDir, 'inter.pem'), inter.cert);
  await writeFile(path.join(mintDir, 'inter.key'), inter.key);
  m.viaInter = await mint({ names: ['i.example.com'], issuer: { cert: 'inter.pem', key: 'inter.key' } });
}, 60_000);

afterAll(() => rm(mintDir, { recursive: true, force: true }));

let replaceSeq = 0;
/** Replaces a file the way editors, `mv` and cert-manager do: write a temporary file, rename it over. */
async function replaceAtomically(file: string, text: string | Buffer): Promise<void> {
  const tmp = `${file}.tmp-${replaceSeq++}`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

/** Writes `pair` as <name>.crt / <name>.key in dir; returns the PEM source for host. */
async function pemSource(dir: string, host: string, pair: { cert: string; key: string }, name = host.replace('*', '_')): Promise<{ host: string; certFile: string; keyFile: string }> {
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  await writeFile(certFile, pair.cert);
  await writeFile(keyFile, pair.key);
  return { host, certFile, keyFile };
}

/** `openssl pkcs12 -export` of pair (with the CA as an extra certificate); '' is an empty passphrase. */
async function pkcs12(dir: string, pair: Minted, passphrase: string): Promise<string> {
  const n = replaceSeq++;
  await writeFile(path.join(dir, `p${n}.crt`), pair.cert);
  await writeFile(path.join(dir, `p${n}.key`), pair.key);
  await writeFile(path.join(dir, `ca${n}.pem`), caPem);
  const out = path.join(dir, `bundle${n}.p12`);
  await opensslOk(['pkcs12', '-export', '-in', `p${n}.crt`, '-inkey', `p${n}.key`, '-certfile', `ca${n}.pem`, '-out', out, '-passout', `pass:${passphrase}`], { cwd: dir });
  await rm(path.join(dir, `p${n}.key`));
  return out;
}

interface Setup {
  store: CertificateStore;
  clock: ManualClock;
  registry: Registry;
  logs: Record<string, unknown>[];
  rawLogs: string[];
}

function makeStore(sources: CertificateSource[], o: Partial<CertificateStoreOptions> = {}): Setup {
  const clock = new ManualClock(Date.now());
  const registry = new Registry();
  const rawLogs: string[] = [];
  const logs: Record<string, unknown>[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (s: string) => void (rawLogs.push(s), logs.push(JSON.parse(s))) } });
  const store = new CertificateStore({ sources, tls: TLS, clock, logger, registry, watch: false, pollIntervalMs: 0, debounceMs: 10, ...o });
  onTestFinished(() => store.close());
  return { store, clock, registry, logs, rawLogs };
}

/** The next event of that name (bounded by an explicit timeout; no sleeps). */
async function next<K extends keyof CertificateStoreEvents>(store: CertificateStore, event: K, ms = 10_000): Promise<CertificateStoreEvents[K]> {
  return (await once(store, event, { signal: AbortSignal.timeout(ms) })) as CertificateStoreEvents[K];
}

const serve = (store: CertificateStore): Promise<number> => serveSni(store.sniCallback(), TLS);

const { connect, handshake, echo } = sniClient(() => caPem);

async function metric(registry: Registry, name: string): Promise<{ labels: Record<string, unknown>; value: number }[]> {
  return ((await registry.getSingleMetric(name)?.get())?.values ?? []) as { labels: Record<string, unknown>; value: number }[];
}

describe('CertificateStore: SNI selection', () => {
  it('picks the exact host first, then a wildcard covering exactly one label', async () => {
    const dir = await tempDir();
    const { store } = makeStore([await pemSource(dir, 'a.example.com', m.a1), await pemSource(dir, '*.example.com', m.wild)]);
    await store.start();
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);
    expect(store.select('A.Example.COM.')?.host).toBe('a.example.com');
    expect(store.select('b.example.com')).toMatchObject({ host: '*.example.com', fingerprint: m.wild.fingerprint });
    expect(store.select('x.b.example.com')).toBeUndefined();
    expect(store.select('example.com')).toBeUndefined();
    expect(store.select('*.example.com')).toBeUndefined();
    expect(store.select('other.test')).toBeUndefined();
    expect(store.select('')).toBeUndefined();
    expect(store.list().map((c) => c.host)).toEqual(['a.example.com', '*.example.com']);
  });

  it('serves the right certificate per SNI in real handshakes (EC and RSA), and none for an unknown name', async () => {
    const dir = await tempDir();
    const { store, logs } = makeStore([
      await pemSource(dir, 'a.example.com', m.a1),
      await pemSource(dir, '*.example.com', m.wild),
      await pemSource(dir, 'r.example.com', m.rsa),
    ]);
    await store.start();
    const port = await serve(store);
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);
    expect(await handshake(port, 'b.example.com')).toBe(m.wild.fingerprint);
    expect(await handshake(port, 'r.example.com')).toBe(m.rsa.fingerprint);
    // The server has no certificate of its own: an unknown name gets a handshake failure, not some other host's certificate.
    expect(await handshake(port, 'x.b.example.com')).toMatch(/^error: ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE/);
    expect(logs.filter((l) => l.msg === 'loaded certificate').map((l) => l.host)).toEqual(['a.example.com', '*.example.com', 'r.example.com']);
  });

  it('sends the intermediate listed after the leaf (the client trusts only the root)', async () => {
    const dir = await tempDir();
    const { store } = makeStore([await pemSource(dir, 'i.example.com', { cert: m.viaInter.cert + m.inter.cert, key: m.viaInter.key })]);
    await store.start();
    const port = await serve(store);
    expect(await handshake(port, 'i.example.com')).toBe(m.viaInter.fingerprint);
  });

  it('serves an exact host from a wildcard certificate, but a wildcard host only from that wildcard', async () => {
    const dir = await tempDir();
    const { store } = makeStore([await pemSource(dir, 'b.example.com', m.wild)]);
    await store.start();
    expect(store.select('b.example.com')?.fingerprint).toBe(m.wild.fingerprint);

    const { store: s2 } = makeStore([await pemSource(dir, '*.example.com', m.a1)]);
    await expect(s2.start()).rejects.toThrow(/\*\.example\.com: .*_\.example\.com\.crt: certificate does not cover the wildcard \*\.example\.com .*DNS names: a\.example\.com/);
  });
});

describe('CertificateStore: reloading from disk', () => {
  it('picks up an atomic replacement seen by fs.watch; a connection opened before keeps working', async () => {
    const dir = await tempDir();
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store, registry } = makeStore([src], { watch: true });
    await store.start();
    const port = await serve(store);
    const before = await connect(port, 'a.example.com');
    expect(await echo(before, 'one')).toBe('one');

    const loaded = next(store, 'loaded');
    // Key first, then certificate: a pass between the two renames sees a mismatched pair, refuses
    // it, and the second rename brings the pass that loads.
    await replaceAtomically(src.keyFile, m.a2.key);
    await replaceAtomically(src.certFile, m.a2.cert);
    expect(await loaded).toEqual(['a.example.com']);
    // A refused half-pair may precede it; the last word is the full pair.
    await store.reload();

    expect(store.select('a.example.com')?.fingerprint).toBe(m.a2.fingerprint);
    expect(await handshake(port, 'a.example.com')).toBe(m.a2.fingerprint);
    expect(await echo(before, 'two')).toBe('two');
    expect(before.getPeerCertificate().fingerprint256).toBe(m.a1.fingerprint);

    const notAfter = store.select('a.example.com')!.notAfter.getTime();
    expect(await metric(registry, 'ward_ingress_certificate_expiry_timestamp_seconds')).toEqual([
      expect.objectContaining({ labels: { host: 'a.example.com' }, value: Math.floor(notAfter / 1000) }),
    ]);
    expect(await metric(registry, 'ward_ingress_certificate_reloads_total')).toContainEqual(
      expect.objectContaining({ labels: { result: 'loaded' }, value: 1 }),
    );
  });

  it('follows a Kubernetes Secret volume, whose update swaps a ..data symlink and not the files', async () => {
    const dir = await tempDir();
    // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/ (one directory per version).
    const version = async (name: string, pair: Minted): Promise<void> => {
      await mkdir(path.join(dir, name));
      await writeFile(path.join(dir, name, 'tls.crt'), pair.cert);
      await writeFile(path.join(dir, name, 'tls.key'), pair.key);
    };
    await version('..v1', m.a1);
    await symlink('..v1', path.join(dir, '..data'));
    await symlink('..data/tls.crt', path.join(dir, 'tls.crt'));
    await symlink('..data/tls.key', path.join(dir, 'tls.key'));
    const { store } = makeStore([{ host: 'a.example.com', certFile: path.join(dir, 'tls.crt'), keyFile: path.join(dir, 'tls.key') }], { watch: true });
    await store.start();
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);

    const loaded = next(store, 'loaded');
    await version('..v2', m.a2);
    await symlink('..v2', path.join(dir, '..data_tmp'));
    await rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    await loaded;
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a2.fingerprint);
  });

  it('picks up a change through the stat poll alone', async () => {
    const dir = await tempDir();
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store } = makeStore([src], { watch: false, pollIntervalMs: 10 });
    await store.start();
    const loaded = next(store, 'loaded');
    // One rename of a combined file would be atomic; here the pair changes in two steps.
    await replaceAtomically(src.keyFile, m.a2.key);
    await replaceAtomically(src.certFile, m.a2.cert);
    await loaded;
    await store.reload();
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a2.fingerprint);
  });

  it('uses the injected timers, and close() clears them', async () => {
    const dir = await tempDir();
    const pending = new Map<number, { fn: () => void; ms: number }>();
    let id = 0;
    const timers: Timers = {
      set: (fn, ms) => (pending.set(++id, { fn, ms }), id),
      clear: (h) => void pending.delete(h as number),
    };
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store } = makeStore([src], { watch: false, pollIntervalMs: 5000, debounceMs: 250, timers });
    await store.start();
    expect([...pending.values()].map((t) => t.ms)).toEqual([5000]);

    await replaceAtomically(src.keyFile, m.a2.key);
    await replaceAtomically(src.certFile, m.a2.cert);
    const fire = (ms: number): void => {
      const [[k, t]] = [...pending].filter(([, t]) => t.ms === ms);
      pending.delete(k);
      t.fn();
    };
    fire(5000); // the poll: stats the files, sees them moved, arms the debounce
    await expect.poll(() => [...pending.values()].map((t) => t.ms).sort(), { timeout: 5000 }).toEqual([250, 5000]);
    const loaded = next(store, 'loaded');
    fire(250);
    await loaded;
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a2.fingerprint);

    store.close();
    store.close();
    expect(pending.size).toBe(0);
  });

  const badReplacements: { name: string; write: (src: { certFile: string; keyFile: string }, clock: ManualClock) => Promise<void>; file: 'certFile' | 'keyFile'; reason: RegExp }[] = [
    {
      name: 'a key that belongs to another certificate',
      write: (src) => replaceAtomically(src.keyFile, m.other.key),
      file: 'keyFile',
      reason: /^the private key does not match the certificate \(CN=a\.example\.com\)$/,
    },
    {
      name: 'an expired certificate (on the injected clock)',
      write: async (src, clock) => {
        await replaceAtomically(src.keyFile, m.aShort.key);
        await replaceAtomically(src.certFile, m.aShort.cert);
        clock.advance(2 * DAY);
      },
      file: 'certFile',
      reason: /^certificate expired at 20\d\d-/,
    },
    {
      name: 'a certificate for another host',
      write: async (src) => {
        await replaceAtomically(src.keyFile, m.other.key);
        await replaceAtomically(src.certFile, m.other.cert);
      },
      file: 'certFile',
      reason: /^certificate does not cover a\.example\.com; its DNS names: other\.test$/,
    },
    {
      name: 'a client certificate (extendedKeyUsage without serverAuth)',
      write: async (src) => {
        await replaceAtomically(src.keyFile, m.clientOnly.key);
        await replaceAtomically(src.certFile, m.clientOnly.cert);
      },
      file: 'certFile',
      reason: /^certificate is not for TLS servers \(extendedKeyUsage: clientAuth\)$/,
    },
    {
      name: 'a garbage certificate file',
      write: (src) => replaceAtomically(src.certFile, 'this is not a certificate\n'),
      file: 'certFile',
      reason: /^not a PEM certificate chain: /,
    },
    {
      name: 'a garbage key file',
      write: (src) => replaceAtomically(src.keyFile, unreadableKeyPem()),
      file: 'keyFile',
      reason: /^not a readable unencrypted PEM private key/,
    },
    {
      name: 'an oversized certificate file',
      write: (src) => replaceAtomically(src.certFile, Buffer.alloc(MAX_CERTIFICATE_FILE_BYTES + 1, 'A')),
      file: 'certFile',
      reason: /^file is 1048577 bytes; at most 1048576 are accepted$/,
    },
    {
      name: 'a deleted key file',
      write: (src) => rm(src.keyFile),
      file: 'keyFile',
      reason: /^cannot read the file \(ENOENT\)$/,
    },
  ];

  it.each(badReplacements)('refuses $name, logs and counts it, and keeps serving the old certificate', async ({ write, file, reason }) => {
    const dir = await tempDir();
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store, clock, registry, logs, rawLogs } = makeStore([src]);
    await store.start();
    const port = await serve(store);
    const refused: CertificateStoreEvents['refused'][] = [];
    const loaded: string[] = [];
    store.on('refused', (...args) => refused.push(args));
    store.on('loaded', (host) => loaded.push(host));

    await write(src, clock);
    await store.reload();

    expect(loaded).toEqual([]);
    expect(refused).toHaveLength(1);
    expect(refused[0][0]).toBe('a.example.com');
    expect(refused[0][1]).toMatch(reason);
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);

    const warn = logs.filter((l) => l.level === 40);
    expect(warn).toEqual([
      expect.objectContaining({ component: 'ingress.certificates', host: 'a.example.com', file: src[file], reason: refused[0][1], msg: 'refused new certificate; keeping the one in use' }),
    ]);
    expect(rawLogs.join('')).not.toMatch(/PRIVATE KEY|BEGIN/);
    expect(await metric(registry, 'ward_ingress_certificate_reloads_total')).toEqual([expect.objectContaining({ labels: { result: 'refused' }, value: 1 })]);
  });

  it('loads the good pair that follows a refused one', async () => {
    const dir = await tempDir();
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store } = makeStore([src]);
    await store.start();
    await replaceAtomically(src.certFile, m.a2.cert); // new certificate, old key: half a pair
    const refused = next(store, 'refused');
    await store.reload();
    expect((await refused)[1]).toMatch(/does not match/);
    await replaceAtomically(src.keyFile, m.a2.key);
    const loaded = next(store, 'loaded');
    await store.reload();
    await loaded;
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a2.fingerprint);
  });

  it('reload() re-judges refused bytes: a certificate not yet valid is loaded once it is', async () => {
    const dir = await tempDir();
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store, clock } = makeStore([src]);
    await store.start();
    const now = clock.now();
    clock.set(now - DAY);
    await replaceAtomically(src.keyFile, m.a2.key);
    await replaceAtomically(src.certFile, m.a2.cert);
    const refused = next(store, 'refused');
    await store.reload();
    expect((await refused)[1]).toMatch(/^certificate is not valid until /);
    clock.set(now);
    const loaded = next(store, 'loaded');
    await store.reload();
    await loaded;
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a2.fingerprint);
  });

  it('does nothing for unchanged files, and nothing after close()', async () => {
    const dir = await tempDir();
    const src = await pemSource(dir, 'a.example.com', m.a1);
    const { store } = makeStore([src]);
    await store.start();
    const served = store.select('a.example.com');
    const events: string[] = [];
    store.on('loaded', (host) => events.push(`loaded ${host}`));
    store.on('refused', (host) => events.push(`refused ${host}`));
    await store.reload();
    expect(store.select('a.example.com')).toBe(served);
    store.close();
    await replaceAtomically(src.certFile, 'garbage');
    await store.reload();
    expect(store.select('a.example.com')).toBe(served);
    expect(events).toEqual([]);
  });
});

describe('CertificateStore: PKCS#12', () => {
  it('serves a bundle without a passphrase', async () => {
    const dir = await tempDir();
    const pfxFile = await pkcs12(dir, m.a1, '');
    const { store } = makeStore([{ host: 'a.example.com', pfxFile }]);
    await store.start();
    expect(store.select('a.example.com')).toMatchObject({ fingerprint: m.a1.fingerprint, subject: 'CN=a.example.com', source: pfxFile });
    const port = await serve(store);
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);
  });

  it('serves a bundle with a passphrase file (trailing newline ignored) and reloads a replaced bundle', async () => {
    const dir = await tempDir();
    const pfxFile = await pkcs12(dir, m.a1, 's3cret pass');
    const passphraseFile = path.join(dir, 'pass.txt');
    await writeFile(passphraseFile, 's3cret pass\n');
    const { store } = makeStore([{ host: 'a.example.com', pfxFile, passphraseFile }], { watch: true });
    await store.start();
    const port = await serve(store);
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);

    const loaded = next(store, 'loaded');
    await replaceAtomically(pfxFile, await readFile(await pkcs12(dir, m.a2, 's3cret pass')));
    await loaded;
    expect(await handshake(port, 'a.example.com')).toBe(m.a2.fingerprint);
  });

  it('judges the bundle\'s leaf like a PEM one, and refuses a wrong or missing passphrase', async () => {
    const dir = await tempDir();
    const pfxFile = await pkcs12(dir, m.other, 'pw');
    const passphraseFile = path.join(dir, 'pass.txt');
    await writeFile(passphraseFile, 'pw');
    const wrongFile = path.join(dir, 'wrong.txt');
    await writeFile(wrongFile, 'not it');
    const garbage = path.join(dir, 'garbage.p12');
    await writeFile(garbage, 'not a bundle');

    const host = makeStore([{ host: 'a.example.com', pfxFile, passphraseFile }]).store;
    await expect(host.start()).rejects.toThrow(`a.example.com: ${pfxFile}: certificate does not cover a.example.com; its DNS names: other.test`);
    const wrong = makeStore([{ host: 'other.test', pfxFile, passphraseFile: wrongFile }]).store;
    await expect(wrong.start()).rejects.toThrow(`other.test: ${pfxFile}: cannot open the PKCS#12 bundle: wrong passphrase, or the file is corrupt`);
    const missing = makeStore([{ host: 'other.test', pfxFile }]).store;
    await expect(missing.start()).rejects.toThrow(/needs a passphrase \(passphraseFile\)/);
    const junk = makeStore([{ host: 'other.test', pfxFile: garbage }]).store;
    await expect(junk.start()).rejects.toThrow(/garbage\.p12: not a readable PKCS#12 bundle/);
    const ok = makeStore([{ host: 'other.test', pfxFile, passphraseFile }]).store;
    await ok.start();
    expect(ok.select('other.test')?.fingerprint).toBe(m.other.fingerprint);
  });
});

describe('CertificateStore: start and configuration', () => {
  it('fails at start naming host, file and reason of every failing source, and leaves nothing running', async () => {
    const dir = await tempDir();
    const good = await pemSource(dir, 'a.example.com', m.a1);
    const missingKey = { host: 'b.example.com', certFile: good.certFile, keyFile: path.join(dir, 'absent.key') };
    const expired = await pemSource(dir, 'c.example.com', m.aShort);
    const timers: Timers = { set: () => expect.fail('no timer may be left armed'), clear: () => {} };
    const { store, clock } = makeStore([good, missingKey, expired], { timers, pollIntervalMs: 0 });
    clock.advance(2 * DAY);
    const err = await store.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    const message = (err as Error).message;
    expect(message).toContain(`b.example.com: ${missingKey.keyFile}: cannot read the file (ENOENT)`);
    expect(message).toMatch(new RegExp(`c\\.example\\.com: ${expired.certFile.replace(/[.\\/]/g, '\\$&')}: certificate expired at `));
    expect(message).not.toContain('a.example.com:');
    expect(store.list()).toEqual([]);
  });

  it('refuses a chain out of order at start', async () => {
    const dir = await tempDir();
    const reversed = await pemSource(dir, 'i.example.com', { cert: m.inter.cert + m.viaInter.cert, key: m.viaInter.key });
    await expect(makeStore([reversed]).store.start()).rejects.toThrow(
      /the private key belongs to certificate #2 of the chain; the leaf must come first/,
    );
    const unrelated = await pemSource(dir, 'i.example.com', { cert: m.viaInter.cert + m.a1.cert, key: m.viaInter.key }, 'unrelated');
    await expect(makeStore([unrelated]).store.start()).rejects.toThrow(
      /chain out of order: certificate #2 \(CN=a\.example\.com\) did not issue #1 \(CN=i\.example\.com\)/,
    );
  });

  it('refuses invalid and duplicate hosts, and certificate options in tls, at construction', () => {
    const src = { certFile: 'c.pem', keyFile: 'k.pem' };
    for (const host of ['*.com', 'a.*.example.com', '*', '127.0.0.1', '::1', 'bad_host.example.com', '', 'a..b']) {
      let err: unknown;
      try {
        makeStore([{ host, ...src }]);
      } catch (e) {
        err = e;
      }
      expect(isWardError(err, 'WARD_CONFIG_INVALID'), host).toBe(true);
    }
    expect(() => makeStore([{ host: 'A.example.com', ...src }, { host: 'a.example.com.', ...src }])).toThrow(/host "a\.example\.com" is listed twice/);
    expect(() => makeStore([{ host: '*.Example.com', ...src }, { host: '*.example.com', ...src }])).toThrow(/listed twice/);
    expect(() => new CertificateStore({ sources: [], tls: { cert: 'x' }, logger: createLogger({ level: 'silent' }) })).toThrow(/^BUG: /);
  });
});

describe('CertificateStore: internal-name certificates (provide)', () => {
  const HOST = 'svc.internal.example';
  const WILD = '*.apps.internal.example';

  /** A Ward hierarchy (test/helpers/pki serverNamePki), plus an X.509-SVID from the same intermediate. */
  function wardPki() {
    const pki = serverNamePki();
    const svid = () => {
      const key = PrivateKey.generate();
      const leaf = pki.signer.sign({ publicKeyDer: key.publicKeyDer(), id: SpiffeId.workload('example.org', 'shop', 'web'), notBefore: new Date(pki.now - 60_000), notAfter: new Date(pki.now + 3_600_000) });
      return { chainPem: leaf.pem() + pki.inter.pem, keyPem: key.exportPem() };
    };
    return { ...pki, svid };
  }

  /** Fingerprint the client saw verifying against Ward's root (not the test CA), or the handshake error. */
  async function wardHandshake(port: number, servername: string, rootPem: string): Promise<string> {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: rootPem, checkServerIdentity: (_h, cert) => tls.checkServerIdentity(servername, cert) });
    try {
      await once(socket, 'secureConnect');
      return socket.getPeerCertificate().fingerprint256;
    } catch (err) {
      return `error: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    } finally {
      socket.destroy();
    }
  }

  it('starts without the internal certificate, serves nothing for the host until provide(), then serves it; missing() says which', async () => {
    const pki = wardPki();
    const dir = await tempDir();
    const { store, registry, logs, rawLogs } = makeStore([await pemSource(dir, 'a.example.com', m.a1), { host: HOST, internal: true }]);
    expect(store.missing()).toEqual(['a.example.com', HOST]);
    await store.start();
    expect(store.missing()).toEqual([HOST]);
    expect(store.select(HOST)).toBeUndefined();
    expect(store.list().map((c) => c.host)).toEqual(['a.example.com']);
    const port = await serve(store);
    expect(await wardHandshake(port, HOST, pki.root.pem)).toMatch(/^error: ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE/);

    const loaded: string[] = [];
    store.on('loaded', (host) => loaded.push(host));
    const cert = pki.issue([HOST]);
    expect(store.provide(HOST, cert.chainPem, cert.keyPem)).toBe(true);
    expect(loaded).toEqual([HOST]);
    expect(store.missing()).toEqual([]);
    expect(store.select(HOST)).toMatchObject({ host: HOST, fingerprint: cert.fingerprint, subject: `CN=${HOST}`, source: INTERNAL_SOURCE });
    expect(store.select('SVC.Internal.Example.')?.fingerprint).toBe(cert.fingerprint);
    expect(store.list().map((c) => c.host)).toEqual(['a.example.com', HOST]);
    // A real handshake: the client trusts Ward's root and checks the name.
    expect(await wardHandshake(port, HOST, pki.root.pem)).toBe(cert.fingerprint);
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);

    const notAfter = store.select(HOST)!.notAfter.getTime();
    expect(await metric(registry, 'ward_ingress_certificate_expiry_timestamp_seconds')).toContainEqual(
      expect.objectContaining({ labels: { host: HOST }, value: Math.floor(notAfter / 1000) }),
    );
    expect(logs.filter((l) => l.msg === 'loaded certificate' && l.host === HOST)).toEqual([expect.objectContaining({ file: INTERNAL_SOURCE, fingerprint: cert.fingerprint })]);
    expect(rawLogs.join('')).not.toMatch(/PRIVATE KEY|BEGIN/);
  });

  it('start() needs no internal source: a store of internal sources only starts with nothing served, and reload() leaves them be', async () => {
    const pki = wardPki();
    const timers: Timers = { set: () => expect.fail('nothing to watch or poll'), clear: () => {} };
    const { store } = makeStore([{ host: HOST, internal: true }, { host: WILD, internal: true }], { timers, pollIntervalMs: 0, watch: true });
    await store.start();
    expect(store.list()).toEqual([]);
    expect(store.missing()).toEqual([HOST, WILD]);
    const cert = pki.issue([HOST]);
    expect(store.provide(HOST, cert.chainPem, cert.keyPem)).toBe(true);
    const events: string[] = [];
    store.on('loaded', (h) => events.push(`loaded ${h}`));
    store.on('refused', (h) => events.push(`refused ${h}`));
    await store.reload();
    expect(events).toEqual([]);
    expect(store.select(HOST)?.fingerprint).toBe(cert.fingerprint);
    expect(store.missing()).toEqual([WILD]);
  });

  it('renews: a new chain replaces the old for new handshakes, an open connection keeps its own, the same chain again is a no-op', async () => {
    const pki = wardPki();
    const { store } = makeStore([{ host: HOST, internal: true }]);
    await store.start();
    const port = await serve(store);
    const first = pki.issue([HOST]);
    expect(store.provide(HOST, first.chainPem, first.keyPem)).toBe(true);
    const before = tls.connect({ host: '127.0.0.1', port, servername: HOST, ca: pki.root.pem });
    onTestFinished(() => void before.destroy());
    await once(before, 'secureConnect');
    expect(await echo(before, 'one')).toBe('one');

    const loaded: string[] = [];
    store.on('loaded', (h) => loaded.push(h));
    const second = pki.issue([HOST]);
    expect(store.provide(HOST, second.chainPem, second.keyPem)).toBe(true);
    expect(store.provide(HOST, second.chainPem, second.keyPem)).toBe(true);
    expect(loaded).toEqual([HOST]);
    expect(store.select(HOST)?.fingerprint).toBe(second.fingerprint);
    expect(await wardHandshake(port, HOST, pki.root.pem)).toBe(second.fingerprint);
    expect(await echo(before, 'two')).toBe('two');
    expect(before.getPeerCertificate().fingerprint256).toBe(first.fingerprint);
  });

  it('serves a wildcard host from that very wildcard, and refuses a certificate for a single name under it', async () => {
    const pki = wardPki();
    const { store } = makeStore([{ host: WILD, internal: true }]);
    await store.start();
    const port = await serve(store);
    const narrow = pki.issue(['x.apps.internal.example']);
    const refused = next(store, 'refused');
    expect(store.provide(WILD, narrow.chainPem, narrow.keyPem)).toBe(false);
    expect((await refused)[1]).toMatch(/^certificate does not cover the wildcard \*\.apps\.internal\.example .*; its DNS names: x\.apps\.internal\.example$/);
    expect(store.missing()).toEqual([WILD]);
    const wild = pki.issue([WILD]);
    expect(store.provide(WILD, wild.chainPem, wild.keyPem)).toBe(true);
    expect(store.select('x.apps.internal.example')?.fingerprint).toBe(wild.fingerprint);
    expect(store.select('a.b.apps.internal.example')).toBeUndefined();
    expect(await wardHandshake(port, 'y.apps.internal.example', pki.root.pem)).toBe(wild.fingerprint);
  });

  const badProvides: { name: string; make: (pki: ReturnType<typeof wardPki>, clock: ManualClock) => { chainPem: string; keyPem: string }; reason: RegExp }[] = [
    {
      name: 'a key that belongs to another certificate',
      make: (pki) => ({ chainPem: pki.issue([HOST]).chainPem, keyPem: pki.issue([HOST]).keyPem }),
      reason: /^the private key does not match the certificate \(CN=svc\.internal\.example\)$/,
    },
    {
      name: 'an expired certificate (on the injected clock)',
      make: (pki, clock) => {
        const c = pki.issue([HOST], { until: pki.now + 3_600_000 });
        clock.advance(2 * 3_600_000);
        return c;
      },
      reason: /^certificate expired at 20\d\d-/,
    },
    {
      name: 'a certificate not valid yet',
      make: (pki) => pki.issue([HOST], { from: pki.now + 3_600_000, until: pki.now + 7_200_000 }),
      reason: /^certificate is not valid until 20\d\d-/,
    },
    {
      name: 'a certificate for another name',
      make: (pki) => pki.issue(['other.internal.example']),
      reason: /^certificate does not cover svc\.internal\.example; its DNS names: other\.internal\.example$/,
    },
    {
      name: 'an SVID (a URI SAN, no DNS name)',
      make: (pki) => pki.svid(),
      reason: /^certificate does not cover svc\.internal\.example; its DNS names: none$/,
    },
    {
      name: 'a chain with the intermediate first',
      make: (pki) => {
        const c = pki.issue([HOST]);
        return { chainPem: pki.inter.pem + c.leafPem, keyPem: c.keyPem };
      },
      reason: /^the private key belongs to certificate #2 of the chain; the leaf must come first$/,
    },
    {
      name: 'a chain that is not PEM',
      make: (pki) => ({ chainPem: 'not a certificate\n', keyPem: pki.issue([HOST]).keyPem }),
      reason: /^not a PEM certificate chain: /,
    },
    {
      name: 'a key that is not PEM',
      make: (pki) => ({ chainPem: pki.issue([HOST]).chainPem, keyPem: unreadableKeyPem() }),
      reason: /^not a readable unencrypted PEM private key/,
    },
  ];

  it.each(badProvides)('refuses $name: returns false, emits and logs it, counts it, and keeps serving the old certificate', async ({ make, reason }) => {
    const pki = wardPki();
    const { store, clock, registry, logs, rawLogs } = makeStore([{ host: HOST, internal: true }]);
    await store.start();
    const port = await serve(store);
    const good = pki.issue([HOST]);
    expect(store.provide(HOST, good.chainPem, good.keyPem)).toBe(true);
    const refused: CertificateStoreEvents['refused'][] = [];
    const loaded: string[] = [];
    store.on('refused', (...args) => refused.push(args));
    store.on('loaded', (host) => loaded.push(host));

    const bad = make(pki, clock);
    expect(store.provide(HOST, bad.chainPem, bad.keyPem)).toBe(false);

    expect(loaded).toEqual([]);
    expect(refused).toHaveLength(1);
    expect(refused[0][0]).toBe(HOST);
    expect(refused[0][1]).toMatch(reason);
    expect(store.select(HOST)?.fingerprint).toBe(good.fingerprint);
    expect(store.missing()).toEqual([]);
    expect(await wardHandshake(port, HOST, pki.root.pem)).toBe(good.fingerprint);
    expect(logs.filter((l) => l.level === 40)).toEqual([
      expect.objectContaining({ component: 'ingress.certificates', host: HOST, file: INTERNAL_SOURCE, reason: refused[0][1], msg: 'refused new certificate; keeping the one in use' }),
    ]);
    expect(rawLogs.join('')).not.toMatch(/PRIVATE KEY|BEGIN/);
    expect(await metric(registry, 'ward_ingress_certificate_reloads_total')).toContainEqual(expect.objectContaining({ labels: { result: 'refused' }, value: 1 }));
    // The accepted one counted too: a renewal shows in the metric whether it succeeds or fails.
    expect(await metric(registry, 'ward_ingress_certificate_reloads_total')).toContainEqual(expect.objectContaining({ labels: { result: 'loaded' }, value: 1 }));
  });

  it('a refused first certificate leaves the host missing; the good one that follows is served', async () => {
    const pki = wardPki();
    const { store } = makeStore([{ host: HOST, internal: true }]);
    await store.start();
    const wrong = pki.issue(['other.internal.example']);
    const refused = next(store, 'refused');
    expect(store.provide(HOST, wrong.chainPem, wrong.keyPem)).toBe(false);
    expect((await refused)[1]).toMatch(/does not cover/);
    expect(store.select(HOST)).toBeUndefined();
    expect(store.missing()).toEqual([HOST]);
    const good = pki.issue([HOST]);
    expect(store.provide(HOST, good.chainPem, good.keyPem)).toBe(true);
    expect(store.select(HOST)?.fingerprint).toBe(good.fingerprint);
    expect(store.missing()).toEqual([]);
  });

  it('provide() for a host without an internal source is a bug; after close() it installs nothing', async () => {
    const pki = wardPki();
    const dir = await tempDir();
    const { store } = makeStore([await pemSource(dir, 'a.example.com', m.a1), { host: HOST, internal: true }]);
    await store.start();
    const cert = pki.issue([HOST]);
    expect(() => store.provide('a.example.com', cert.chainPem, cert.keyPem)).toThrow(/^BUG: CertificateStore\.provide: no internal or dynamic source for a\.example\.com$/);
    expect(() => store.provide('unknown.internal.example', cert.chainPem, cert.keyPem)).toThrow(/^BUG: /);
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);
    store.close();
    const events: string[] = [];
    store.on('loaded', (h) => events.push(h));
    store.on('refused', (h) => events.push(h));
    expect(store.provide(HOST, cert.chainPem, cert.keyPem)).toBe(false);
    expect(store.select(HOST)).toBeUndefined();
    expect(events).toEqual([]);
  });

  it('refuses internal sources with files, internal: false, and an internal host listed twice, at construction', () => {
    const expectInvalid = (sources: CertificateSource[], message: RegExp) => {
      let err: unknown;
      try {
        makeStore(sources);
      } catch (e) {
        err = e;
      }
      expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
      expect((err as Error).message).toMatch(message);
    };
    expectInvalid([{ host: HOST, internal: true, certFile: 'c.pem', keyFile: 'k.pem' } as unknown as CertificateSource], /an internal source has no files/);
    expectInvalid([{ host: HOST, internal: true, pfxFile: 'b.p12' } as unknown as CertificateSource], /an internal source has no files/);
    expectInvalid([{ host: HOST, internal: false } as unknown as CertificateSource], /internal must be true/);
    expectInvalid([{ host: HOST, internal: true, keyFile: 'k.pem' } as unknown as CertificateSource], /an internal source has no files \(remove keyFile\)/);
    expectInvalid([{ host: HOST, certFile: 'c.pem', keyFile: 'k.pem' }, { host: 'SVC.internal.example.', internal: true }], /host "svc\.internal\.example" is listed twice/);
    expectInvalid([{ host: 'bad_host.example', internal: true }], /is not a DNS name/);
  });
});

describe('CertificateStore: dynamic hosts (setDynamicHosts + provide)', () => {
  const LABEL = 'Secret ward-system/a-tls';

  it('a new host serves nothing until provide(), then serves it with its label as the source', async () => {
    const dir = await tempDir();
    const { store, registry, logs, rawLogs } = makeStore([await pemSource(dir, 'r.example.com', m.rsa)]);
    await store.start();
    const port = await serve(store);
    store.setDynamicHosts(new Map([['a.example.com', LABEL], ['*.example.com', 'Secret ward-system/wild-tls']]));
    expect(store.dynamicHosts()).toEqual(new Map([['a.example.com', LABEL], ['*.example.com', 'Secret ward-system/wild-tls']]));
    expect(store.missing()).toEqual(['a.example.com', '*.example.com']);
    expect(await handshake(port, 'a.example.com')).toMatch(/^error: /);

    const loaded = next(store, 'loaded');
    expect(store.provide('a.example.com', m.a1.cert, m.a1.key)).toBe(true);
    expect(await loaded).toEqual(['a.example.com']);
    expect(store.select('A.Example.Com.')).toMatchObject({ host: 'a.example.com', fingerprint: m.a1.fingerprint, source: LABEL });
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);
    expect(await handshake(port, 'r.example.com')).toBe(m.rsa.fingerprint);
    expect(store.missing()).toEqual(['*.example.com']);
    expect(store.provide('*.example.com', m.wild.cert, m.wild.key)).toBe(true);
    expect(await handshake(port, 'x.example.com')).toBe(m.wild.fingerprint);
    // served() names a source's host exactly: no wildcard stands in for an exact name.
    expect(store.served('*.example.com')?.fingerprint).toBe(m.wild.fingerprint);
    expect(store.served('x.example.com')).toBeUndefined();
    expect(store.select('x.example.com')?.fingerprint).toBe(m.wild.fingerprint);
    expect(store.list().map((c) => [c.host, c.source])).toEqual([
      ['r.example.com', path.join(dir, 'r.example.com.crt')],
      ['a.example.com', LABEL],
      ['*.example.com', 'Secret ward-system/wild-tls'],
    ]);
    expect(logs.filter((l) => l.msg === 'loaded certificate' && l.file === LABEL)).toEqual([expect.objectContaining({ host: 'a.example.com', fingerprint: m.a1.fingerprint })]);
    expect(await metric(registry, 'ward_ingress_certificate_expiry_timestamp_seconds')).toContainEqual(expect.objectContaining({ labels: { host: 'a.example.com' } }));
    expect(rawLogs.join('')).not.toMatch(/PRIVATE KEY|BEGIN/);
  });

  it('judges provided certificates like files: a bad one is refused naming the label, and the one in use stays', async () => {
    const { store, logs } = makeStore([]);
    await store.start();
    const port = await serve(store);
    store.setDynamicHosts(new Map([['a.example.com', LABEL]]));
    const refusedFirst = next(store, 'refused');
    expect(store.provide('a.example.com', m.other.cert, m.other.key)).toBe(false);
    expect(await refusedFirst).toEqual(['a.example.com', 'certificate does not cover a.example.com; its DNS names: other.test']);
    expect(store.missing()).toEqual(['a.example.com']);
    expect(store.provide('a.example.com', m.a1.cert, m.a1.key)).toBe(true);
    const refused = next(store, 'refused');
    expect(store.provide('a.example.com', m.a2.cert, m.a1.key)).toBe(false);
    expect((await refused)[1]).toMatch(/^the private key does not match the certificate/);
    expect(store.provide('a.example.com', m.clientOnly.cert, m.clientOnly.key)).toBe(false);
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);
    expect(await handshake(port, 'a.example.com')).toBe(m.a1.fingerprint);
    expect(logs.filter((l) => l.msg === 'refused new certificate; keeping the one in use').map((l) => [l.host, l.file])).toEqual([
      ['a.example.com', LABEL],
      ['a.example.com', LABEL],
      ['a.example.com', LABEL],
    ]);
  });

  it('a host removed stops being served (an open connection keeps its certificate); a label change forgets the old certificate; the same label keeps it', async () => {
    const { store, registry, logs } = makeStore([]);
    await store.start();
    const port = await serve(store);
    store.setDynamicHosts(new Map([['a.example.com', LABEL], ['other.test', 'Secret ward-system/other-tls']]));
    expect(store.provide('a.example.com', m.a1.cert, m.a1.key)).toBe(true);
    expect(store.provide('other.test', m.other.cert, m.other.key)).toBe(true);
    const open = await connect(port, 'a.example.com');
    expect(await echo(open, 'one')).toBe('one');

    // The same set again (as every pushed configuration version does): nothing changes, nothing is logged.
    const before = logs.length;
    store.setDynamicHosts(new Map([['a.example.com', LABEL], ['other.test', 'Secret ward-system/other-tls']]));
    expect(logs.length).toBe(before);
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);

    store.setDynamicHosts(new Map([['other.test', 'Secret ward-system/renamed-tls']]));
    expect(store.select('a.example.com')).toBeUndefined();
    expect(store.select('other.test')).toBeUndefined();
    expect(store.missing()).toEqual(['other.test']);
    expect(store.dynamicHosts()).toEqual(new Map([['other.test', 'Secret ward-system/renamed-tls']]));
    expect(await handshake(port, 'a.example.com')).toMatch(/^error: /);
    expect(await echo(open, 'two')).toBe('two');
    expect(open.getPeerCertificate().fingerprint256).toBe(m.a1.fingerprint);
    expect((await metric(registry, 'ward_ingress_certificate_expiry_timestamp_seconds')).map((v) => v.labels.host)).toEqual([]);
    expect(logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('stopped serving')).map((l) => [l.host, l.file, l.msg])).toEqual([
      ['a.example.com', LABEL, 'stopped serving certificate: its dynamic source was removed'],
      ['other.test', 'Secret ward-system/other-tls', 'stopped serving certificate: its source changed'],
    ]);
    expect(store.provide('other.test', m.other.cert, m.other.key)).toBe(true);
    expect(store.select('other.test')?.source).toBe('Secret ward-system/renamed-tls');
    expect(() => store.provide('a.example.com', m.a1.cert, m.a1.key)).toThrow(/^BUG: CertificateStore\.provide: no internal or dynamic source for a\.example\.com$/);
  });

  it('leaves hosts of static sources (files, internal names) to them, warning once; ignores invalid hosts; a no-op after close()', async () => {
    const dir = await tempDir();
    const { store, logs } = makeStore([await pemSource(dir, 'a.example.com', m.a1), { host: 'svc.internal.example', internal: true }]);
    await store.start();
    const wanted = new Map([['A.example.com.', LABEL], ['svc.internal.example', 'Secret ward-system/svc'], ['bad_host.example', 'Secret ward-system/x'], ['*.com', 'Secret ward-system/y'], ['other.test', 'Secret ward-system/other-tls']]);
    store.setDynamicHosts(wanted);
    store.setDynamicHosts(wanted);
    expect(store.dynamicHosts()).toEqual(new Map([['other.test', 'Secret ward-system/other-tls']]));
    expect(store.select('a.example.com')).toMatchObject({ fingerprint: m.a1.fingerprint, source: path.join(dir, 'a.example.com.crt') });
    const warnings = logs.filter((l) => l.level === 40).map((l) => [l.host, l.msg]);
    expect(warnings).toEqual([
      ['a.example.com', 'a static certificate source serves this host; ignoring the dynamic one'],
      ['svc.internal.example', 'a static certificate source serves this host; ignoring the dynamic one'],
      ['bad_host.example', expect.stringMatching(/^ignored a dynamic certificate source/)],
      ['*.com', expect.stringMatching(/^ignored a dynamic certificate source/)],
      ['bad_host.example', expect.stringMatching(/^ignored a dynamic certificate source/)],
      ['*.com', expect.stringMatching(/^ignored a dynamic certificate source/)],
    ]);
    expect(store.hasStaticSource('A.EXAMPLE.COM')).toBe(true);
    expect(store.hasStaticSource('svc.internal.example')).toBe(true);
    expect(store.hasStaticSource('other.test')).toBe(false);
    expect(store.served('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);
    expect(store.served('svc.internal.example')).toBeUndefined();
    // provide() for a static file host is still a bug; the internal host still takes its own.
    expect(() => store.provide('a.example.com', m.a2.cert, m.a2.key)).toThrow(/^BUG: /);
    expect(store.select('a.example.com')?.fingerprint).toBe(m.a1.fingerprint);

    store.close();
    store.setDynamicHosts(new Map([['x.example.com', LABEL]]));
    expect(store.dynamicHosts()).toEqual(new Map([['other.test', 'Secret ward-system/other-tls']]));
    expect(store.provide('other.test', m.other.cert, m.other.key)).toBe(false);
  });
});
