/**
 * The `ward` command line as a user meets it: help texts, exit codes (0 ok, 1 problem, 2 usage),
 * WARD_* codes in errors, files and modes on disk, and interop with openssl. Most tests run the CLI
 * in-process through run(argv, io); a few spawn it for what only a process shows (main.ts exit
 * status, `ca serve` bound ports and SIGTERM).
 */
import { once } from 'node:events';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { caCommands } from '../../cli/ca.js';
import { certCommands } from '../../cli/cert.js';
import { tokenCommands } from '../../cli/token.js';
import { SpiffeId } from '../../core/identity/index.js';
import { LeafSigner, PrivateKey, createRoot, parseCertificates } from '../../core/pki/index.js';
import { exited, spawnWard, stderrMatch, ward } from '../helpers/cli.js';
import { openssl, opensslOk, tempDir } from '../helpers/openssl.js';

const TD = 'example.org';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const ALL_COMMANDS = [...caCommands, ...certCommands, ...tokenCommands];

interface InitJson {
  trustDomain: string;
  mode: string;
  root: { fingerprint: string };
  issuer: { fingerprint: string; notAfter: string };
  bundlePem: string;
}

/** A fresh CA in a temp dir (removed when the test finishes). */
async function newCa(td = TD): Promise<{ dir: string; state: string; init: InitJson }> {
  const dir = await tempDir('ward-cli-');
  const state = join(dir, 'state');
  const r = await ward(['ca', 'init', '--state', state, '--trust-domain', td, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return { dir, state, init: JSON.parse(r.stdout) as InitJson };
}

/** A CSR made by openssl (a client nobody here wrote); returns its path and PEM. */
async function opensslCsr(dir: string, name: string, extra: string[] = []): Promise<{ path: string; pem: string; key: string }> {
  const path = join(dir, `${name}.csr`);
  const key = join(dir, `${name}.key`);
  await opensslOk(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', `/CN=${name}`, ...extra, '-out', path]);
  return { path, key, pem: await readFile(path, 'utf8') };
}

/** Issues a workload certificate through the CLI; returns the chain file and its PEM. */
async function issued(dir: string, state: string, id = WEB): Promise<{ chain: string; pem: string; key: string }> {
  const csr = await opensslCsr(dir, `w${Math.random().toString(16).slice(2, 8)}`);
  const chain = `${csr.path}.pem`;
  const r = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', id, '--out', chain]);
  expect(r.code, r.stderr).toBe(0);
  return { chain, key: csr.key, pem: await readFile(chain, 'utf8') };
}

/** A loopback port that was free a moment ago (bound, read, closed): nothing listens there. */
async function freePort(): Promise<number> {
  const probe = createNetServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/** A root CA made by openssl (EC P-256, CA:TRUE, keyCertSign): the operator's own root. */
async function opensslRoot(dir: string, name: string, o: { key?: string } = {}): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.pem`);
  await opensslOk(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', key]);
  await opensslOk(['req', '-x509', '-new', '-key', o.key ?? key, '-subj', `/O=Example/CN=${name}`, '-days', '3650',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', cert]);
  return { cert, key };
}

/** An intermediate signed by an openssl root (pathlen 0, keyCertSign): the operator's issuing CA. */
async function opensslIntermediate(dir: string, name: string, root: { cert: string; key: string }): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.pem`);
  const ext = join(dir, `${name}.ext`);
  await writeFile(ext, 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n');
  await opensslOk(['ecparam', '-genkey', '-name', 'prime256v1', '-noout', '-out', key]);
  await opensslOk(['req', '-new', '-key', key, '-subj', `/O=Example/CN=${name}`, '-out', csr]);
  await opensslOk(['x509', '-req', '-in', csr, '-CA', root.cert, '-CAkey', root.key, '-set_serial', `0x${Math.random().toString(16).slice(2, 10)}`, '-days', '365', '-extfile', ext, '-out', cert]);
  return { cert, key };
}

function pemCount(text: string): number {
  return text.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
}

// ------------------------------------------------------------------------------------------------

describe('help and usage', () => {
  it('ward --help lists every command and the exit codes; "ward help" and -h say the same', async () => {
    const r = await ward(['--help']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    for (const c of ALL_COMMANDS) expect(r.stdout).toContain(`  ${c.name} `);
    expect(r.stdout).toMatch(/Exit codes: 0 ok .* 1 .* 2 usage error/);
    expect((await ward(['-h'])).stdout).toBe(r.stdout);
    expect((await ward(['help'])).stdout).toBe(r.stdout);
    expect(await ward(['--version'])).toMatchObject({ code: 0, stdout: 'ward 0.1.0\n' });
  });

  it('ward with no command is a usage error: help on stderr, nothing on stdout, exit 2', async () => {
    const r = await ward([]);
    expect(r).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toContain('Usage: ward <command>');
  });

  it('ward ca --help lists the ca subcommands (exit 0); bare "ward ca" is a usage error (exit 2)', async () => {
    const r = await ward(['ca', '--help']);
    expect(r.code).toBe(0);
    for (const c of caCommands) expect(r.stdout).toContain(c.name);
    expect(r.stdout).not.toContain('token create');
    expect((await ward(['help', 'ca'])).stdout).toBe(r.stdout);
    const bare = await ward(['ca']);
    expect(bare).toMatchObject({ code: 2, stdout: '' });
    expect(bare.stderr).toContain('Subcommands:');
  });

  it.each(ALL_COMMANDS.map((c) => [c.name, c] as const))('ward %s --help: exit 0, usage line, every flag documented', async (name, cmd) => {
    const r = await ward([...name.split(' '), '--help']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(new RegExp(`^Usage: ward ${name}`));
    for (const flag of Object.keys(cmd.options)) expect(r.stdout, `--${flag} in "ward ${name} --help"`).toContain(`--${flag}`);
    // Every command that prints data has a machine-readable form (ca serve only runs).
    if (name !== 'ca serve') expect(Object.keys(cmd.options)).toContain('json');
    // -h anywhere after the command, and "ward help CMD", print the same text.
    expect((await ward([...name.split(' '), '--state', 'x', '-h'])).stdout).toBe(r.stdout);
    expect((await ward(['help', ...name.split(' ')])).stdout).toBe(r.stdout);
  });

  it('unknown commands exit 2 with a suggestion', async () => {
    const r = await ward(['ca', 'inspct']);
    expect(r).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toContain('error[WARD_USAGE]: unknown command "ca inspct"; did you mean "ward ca inspect"?');
    const top = await ward(['frobnicate']);
    expect(top.code).toBe(2);
    expect(top.stderr).toContain('unknown command "frobnicate"');
    expect(top.stderr).toContain('Run "ward --help"');
  });

  it('unknown flags, flags without values and stray arguments exit 2 and point at --help', async () => {
    const unknown = await ward(['ca', 'init', '--stat', 'x']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('error[WARD_USAGE]: unknown flag --stat; did you mean --state?');
    expect(unknown.stderr).toContain('Run "ward ca init --help" for usage.');
    const noValue = await ward(['ca', 'init', '--state']);
    expect(noValue.code).toBe(2);
    expect(noValue.stderr).toContain('--state needs a value');
    const stray = await ward(['ca', 'init', '--state', 'x', 'extra']);
    expect(stray.code).toBe(2);
    expect(stray.stderr).toContain('unexpected argument "extra"');
    const noStep = await ward(['ca', 'rotate', '--state', 'x']);
    expect(noStep.code).toBe(2);
    expect(noStep.stderr).toContain('missing step');
  });

  it.each([
    [['ca', 'init'], '--state is required'],
    [['ca', 'issue', '--state', 's', '--id', WEB], '--csr is required'],
    [['ca', 'bundle'], '--state is required'],
    [['token', 'create', '--state', 's'], '--node is required'],
    [['ca', 'inspect'], 'give exactly one of --state DIR or --server URL'],
    [['cert', 'inspect'], 'give exactly one of FILE, - or --connect HOST:PORT'],
  ])('missing required flag: ward %j → exit 2', async (argv, message) => {
    const r = await ward(argv);
    expect(r).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toContain(`error[WARD_USAGE]: ${message}`);
  });

  it('the real binary sets its exit status (spawned: --help → 0, unknown command → 2)', async () => {
    const help = spawnWard(['--help']);
    const bad = spawnWard(['nope']);
    expect(await exited(help)).toBe(0);
    expect(help.output.stdout).toContain('ca init');
    expect(await exited(bad)).toBe(2);
    expect(bad.output.stderr).toContain('unknown command "nope"');
  });
});

// ------------------------------------------------------------------------------------------------

describe('ca init', () => {
  it('creates the CA: state dir 0700, key files 0600, human summary', async () => {
    const dir = await tempDir('ward-cli-');
    const state = join(dir, 'state');
    const r = await ward(['ca', 'init', '--state', state, '--trust-domain', TD]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`✓ CA created in ${state} (trust domain ${TD}, generated)`);
    expect(r.stdout).toMatch(/root: +([0-9A-F]{2}:){31}[0-9A-F]{2} +valid until /);
    expect((await stat(state)).mode & 0o777).toBe(0o700);
    const keys: string[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const e of await readdir(d, { withFileTypes: true })) {
        if (e.isDirectory()) await walk(join(d, e.name));
        else if (e.name.endsWith('.key')) keys.push(join(d, e.name));
      }
    };
    await walk(state);
    expect(keys).toHaveLength(2); // root and intermediate
    for (const k of keys) expect((await stat(k)).mode & 0o777, k).toBe(0o600);
  });

  it('--json reports mode, fingerprints and the bundle', async () => {
    const { init } = await newCa();
    expect(init).toMatchObject({ trustDomain: TD, mode: 'generated' });
    const [root] = parseCertificates(init.bundlePem);
    expect(root.fingerprintSha256).toBe(init.root.fingerprint);
    expect(root.uris).toEqual([`spiffe://${TD}`]);
  });

  it('refuses to initialize twice (exit 1, WARD_CA_ALREADY_INITIALIZED) and keeps the first CA', async () => {
    const { state, init } = await newCa();
    const again = await ward(['ca', 'init', '--state', state, '--trust-domain', TD]);
    expect(again).toMatchObject({ code: 1, stdout: '' });
    expect(again.stderr).toContain('error[WARD_CA_ALREADY_INITIALIZED]');
    const bundle = await ward(['ca', 'bundle', '--state', state]);
    expect(bundle.stdout).toBe(init.bundlePem);
  });

  it.each([
    ['Bad_TD', 'lowercase'],
    ['spiffe://example.org', 'bare trust domain name'],
  ])('refuses the trust domain %j with WARD_ID_INVALID (exit 1) and creates nothing', async (td, hint) => {
    const dir = await tempDir('ward-cli-');
    const r = await ward(['ca', 'init', '--state', join(dir, 's'), '--trust-domain', td]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('error[WARD_ID_INVALID]');
    expect(r.stderr).toContain(hint);
    expect(await readdir(dir)).toEqual([]);
  });

  it('checks lifetimes and BYO flag sets before touching anything (exit 2)', async () => {
    const dir = await tempDir('ward-cli-');
    const ttl = await ward(['ca', 'init', '--state', join(dir, 's'), '--root-ttl', '1h']);
    expect(ttl.code).toBe(2);
    expect(ttl.stderr).toContain('--root-ttl must be at least 2d, got "1h"');
    const half = await ward(['ca', 'init', '--state', join(dir, 's'), '--root-cert', join(dir, 'r.pem')]);
    expect(half.code).toBe(2);
    expect(half.stderr).toContain('missing --root-key');
    expect(await readdir(dir)).toEqual([]);
  });

  it('brings your own root (openssl-made): Ward makes the intermediate under it', async () => {
    const dir = await tempDir('ward-cli-');
    const { cert, key } = await opensslRoot(dir, 'root');
    const state = join(dir, 'state');
    const r = await ward(['ca', 'init', '--state', state, '--trust-domain', TD, '--root-cert', cert, '--root-key', key, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const init = JSON.parse(r.stdout) as InitJson;
    expect(init.mode).toBe('byo-root');
    // The fingerprint Ward reports is the one openssl computes for the operator's file.
    const fp = await opensslOk(['x509', '-in', cert, '-noout', '-fingerprint', '-sha256']);
    expect(fp.trim().split('=')[1]).toBe(init.root.fingerprint);
    // Leaves chain to the operator's root, as openssl sees it.
    const leaf = await issued(dir, state);
    const v = await openssl(['verify', '-CAfile', cert, '-untrusted', leaf.chain, leaf.chain]);
    expect(v.stdout + v.stderr).toContain(': OK');
  });

  it('refuses a BYO root whose key does not match (exit 1, WARD_PKI_KEY_MISMATCH) and creates nothing', async () => {
    const dir = await tempDir('ward-cli-');
    const { cert } = await opensslRoot(dir, 'root');
    const other = await opensslRoot(dir, 'other');
    const state = join(dir, 'state');
    const r = await ward(['ca', 'init', '--state', state, '--trust-domain', TD, '--root-cert', cert, '--root-key', other.key]);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain('error[WARD_PKI_KEY_MISMATCH]');
    const inspect = await ward(['ca', 'inspect', '--state', state]);
    expect(inspect.stderr).toContain('WARD_CA_NOT_INITIALIZED');
  });
});

describe('ca inspect', () => {
  it('text: roots, intermediates, fingerprints, active issuer, counts, latest issuances; exit 0', async () => {
    const { dir, state, init } = await newCa();
    await issued(dir, state);
    const refused = await ward(['ca', 'issue', '--state', state, '--csr', (await opensslCsr(dir, 'dns', ['-addext', 'subjectAltName=DNS:web.example'])).path, '--id', WEB]);
    expect(refused.code).toBe(1);
    const r = await ward(['ca', 'inspect', '--state', state]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`Trust domain:  ${TD}   (mode: generated, bundle sequence 1)`);
    expect(r.stdout).toMatch(new RegExp(`root +${init.root.fingerprint}`));
    expect(r.stdout).toMatch(new RegExp(`intermediate ${init.issuer.fingerprint}`));
    expect(r.stdout).toMatch(/\[active, generated, ACTIVE ISSUER\]/);
    expect(r.stdout).toMatch(/\[active, generated, in bundle\]/);
    expect(r.stdout).toContain('Rotation:      idle');
    expect(r.stdout).toContain('Issuance:      1 issued, 1 refused (WARD_PKI_CSR_UNAUTHORIZED=1)');
    expect(r.stdout).toMatch(new RegExp(`Latest issued:\\n  \\S+  ${WEB}  serial [0-9a-f]{16}…  by admin:tester`));
    expect(r.stdout).toContain('Latest refused:');
    expect(r.stdout).toContain('✓ no warnings (expiry threshold 30d)');
  });

  it('--json: the same report as data, with warnings', async () => {
    const { dir, state, init } = await newCa();
    await issued(dir, state);
    const r = await ward(['ca', 'inspect', '--state', state, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({
      trustDomain: TD,
      mode: 'generated',
      activeIssuer: init.issuer.fingerprint,
      rotation: { phase: 'idle', retireReady: false },
      bundleSequence: 1,
      counts: { issued: 1, refused: 0, certificates: 1 },
      warnings: [],
    });
    expect(j.certificates).toEqual([
      expect.objectContaining({ role: 'root', fingerprint: init.root.fingerprint, state: 'active', inBundle: true, active: true }),
      expect.objectContaining({ role: 'intermediate', fingerprint: init.issuer.fingerprint, state: 'active', inBundle: false, active: true }),
    ]);
    expect(j.latestIssued).toEqual([expect.objectContaining({ identity: WEB, requester: 'admin:tester', issuer: init.issuer.fingerprint })]);
  });

  it('--warn-within 400d: the one-year intermediate needs attention → exit 1 with the warning', async () => {
    const { state, init } = await newCa();
    const r = await ward(['ca', 'inspect', '--state', state, '--warn-within', '400d']);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`‼ intermediate ${init.issuer.fingerprint.slice(0, 23)} (active) expires at ${init.issuer.notAfter}`);
    expect(r.stdout).toContain('(within the 400d warning threshold)');
    expect(r.stdout).not.toContain('‼ root');
    const j = JSON.parse((await ward(['ca', 'inspect', '--state', state, '--warn-within', '400d', '--json'])).stdout);
    expect(j.warnings).toEqual([{ level: 'warning', message: expect.stringContaining('intermediate') }]);
    const bad = await ward(['ca', 'inspect', '--state', state, '--warn-within', 'soon']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--warn-within must be a duration');
  });

  it('--server: an unreachable CA is WARD_CA_UNREACHABLE (exit 1); a bad URL is a usage error', async () => {
    const port = await freePort();
    const r = await ward(['ca', 'inspect', '--server', `http://127.0.0.1:${port}`]);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain(`error[WARD_CA_UNREACHABLE]: cannot reach the CA admin endpoint http://127.0.0.1:${port}/v1/status`);
    const url = await ward(['ca', 'inspect', '--server', 'not a url']);
    expect(url.code).toBe(2);
    expect(url.stderr).toContain("--server wants the CA's admin URL");
  });

  it('a directory without a CA: WARD_CA_NOT_INITIALIZED, exit 1, and how to create one', async () => {
    const dir = await tempDir('ward-cli-');
    const r = await ward(['ca', 'inspect', '--state', dir]);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain('error[WARD_CA_NOT_INITIALIZED]');
    expect(r.stderr).toContain(`ward ca init --state ${dir}`);
  });
});

// ------------------------------------------------------------------------------------------------

describe('ca issue', () => {
  it('issues from an openssl CSR: the chain on stdout, verified by openssl against the bundle', async () => {
    const { dir, state, init } = await newCa();
    const csr = await opensslCsr(dir, 'web');
    const r = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', WEB, '--ttl', '2h']);
    expect(r.code, r.stderr).toBe(0);
    const chain = parseCertificates(r.stdout);
    expect(chain).toHaveLength(2);
    expect(chain[0].uris).toEqual([WEB]);
    expect(chain[0].notAfter.getTime() - chain[0].notBefore.getTime()).toBeGreaterThan(2 * 3_600_000 - 60_000);
    expect(chain[1].fingerprintSha256).toBe(init.issuer.fingerprint);
    const files = { chain: join(dir, 'chain.pem'), bundle: join(dir, 'bundle.pem') };
    await writeFile(files.chain, r.stdout);
    await writeFile(files.bundle, init.bundlePem);
    const v = await openssl(['verify', '-CAfile', files.bundle, '-untrusted', files.chain, files.chain]);
    expect(v.stdout).toContain(': OK');
    // The certified key is the CSR's.
    const pub = await opensslOk(['pkey', '-in', csr.key, '-pubout']);
    const leafPub = await opensslOk(['x509', '-noout', '-pubkey'], { input: r.stdout });
    expect(leafPub).toBe(pub);
  });

  it('--out writes the chain and says so; --json prints the details', async () => {
    const { dir, state } = await newCa();
    const csr = await opensslCsr(dir, 'web');
    const out = join(dir, 'web.pem');
    const r = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', WEB, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^✓ issued ${WEB} serial [0-9a-f]+, valid until \\S+ → ${out}\\n$`));
    expect(pemCount(await readFile(out, 'utf8'))).toBe(2);
    const j = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', WEB, '--json']);
    expect(j.code, j.stderr).toBe(0);
    const body = JSON.parse(j.stdout);
    expect(body).toEqual({ id: WEB, serial: expect.stringMatching(/^[0-9a-f]+$/), notBefore: expect.any(String), notAfter: expect.any(String), certificate: expect.any(String) });
    expect(parseCertificates(body.certificate)[0].serialHex).toBe(body.serial);
    expect(Date.parse(body.notAfter) - Date.parse(body.notBefore)).toBeGreaterThan(3_500_000);
  });

  it('reads the CSR from standard input with "-"', async () => {
    const { dir, state } = await newCa();
    const csr = await opensslCsr(dir, 'web');
    const r = await ward(['ca', 'issue', '--state', state, '--csr', '-', '--id', WEB], { stdin: csr.pem });
    expect(r.code, r.stderr).toBe(0);
    expect(parseCertificates(r.stdout)[0].uris).toEqual([WEB]);
  });

  it('refuses a CSR asking for a DNS SAN: WARD_PKI_CSR_UNAUTHORIZED, exit 1, nothing on stdout, audited', async () => {
    const { dir, state } = await newCa();
    const csr = await opensslCsr(dir, 'dns', ['-addext', 'subjectAltName=DNS:web.example']);
    const r = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', WEB]);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain('error[WARD_PKI_CSR_UNAUTHORIZED]');
    expect(r.stderr).toContain('DNS');
    const j = JSON.parse((await ward(['ca', 'inspect', '--state', state, '--json'])).stdout);
    expect(j.counts).toMatchObject({ issued: 0, refused: 1, refusedByCode: { WARD_PKI_CSR_UNAUTHORIZED: 1 } });
  });

  it('refuses an identity outside the trust domain, and a malformed one', async () => {
    const { dir, state } = await newCa();
    const csr = await opensslCsr(dir, 'web');
    const foreign = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', 'spiffe://other.org/ns/shop/sa/web']);
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toContain('error[WARD_CA_FORBIDDEN]');
    expect(foreign.stderr).toContain(`outside the CA's trust domain ${TD}`);
    const malformed = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', 'web']);
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toContain('error[WARD_ID_INVALID]');
  });

  it('input errors: missing CSR file, a key instead of a CSR, a lifetime out of range', async () => {
    const { dir, state } = await newCa();
    const csr = await opensslCsr(dir, 'web');
    const missing = await ward(['ca', 'issue', '--state', state, '--csr', join(dir, 'nope.csr'), '--id', WEB]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/error\[WARD_CONFIG_INVALID\]: cannot read CSR .*nope\.csr: ENOENT/);
    const key = await ward(['ca', 'issue', '--state', state, '--csr', csr.key, '--id', WEB]);
    expect(key.code).toBe(1);
    expect(key.stderr).toContain('error[WARD_PKI_PEM_INVALID]');
    const ttl = await ward(['ca', 'issue', '--state', state, '--csr', csr.path, '--id', WEB, '--ttl', '48h']);
    expect(ttl.code).toBe(2);
    expect(ttl.stderr).toContain('--ttl must be between 5m and 24h, got "48h"');
  });
});

// ------------------------------------------------------------------------------------------------

describe('ca bundle and ca rotate', () => {
  it('prints the bundle as PEM and as SPIFFE JWKS (--format jwks, --json)', async () => {
    const { state, init } = await newCa();
    const pem = await ward(['ca', 'bundle', '--state', state]);
    expect(pem).toMatchObject({ code: 0, stdout: init.bundlePem });
    const jwks = await ward(['ca', 'bundle', '--state', state, '--format', 'jwks']);
    expect(jwks.code).toBe(0);
    const j = JSON.parse(jwks.stdout);
    expect(j).toMatchObject({ spiffe_sequence: 1, keys: [{ kty: 'EC', crv: 'P-256', use: 'x509-svid' }] });
    expect(Buffer.from(j.keys[0].x5c[0], 'base64').equals(parseCertificates(init.bundlePem)[0].der)).toBe(true);
    expect((await ward(['ca', 'bundle', '--state', state, '--json'])).stdout).toBe(jwks.stdout);
    const bad = await ward(['ca', 'bundle', '--state', state, '--format', 'der']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--format must be pem or jwks, got "der"');
  });

  it('root rotation: prepare --root (bundle holds 2 roots) → activate → retire refused while old leaves live → --force', async () => {
    const { dir, state, init } = await newCa();
    await issued(dir, state); // a leaf under the old root holds retire back

    const prep = await ward(['ca', 'rotate', 'prepare', '--root', '--state', state]);
    expect(prep.code, prep.stderr).toBe(0);
    expect(prep.stdout).toContain('rotation phase: prepared (root)');
    expect(prep.stdout).toContain('bundle roots:  2 (sequence 2)');
    expect(prep.stdout).toContain('ward ca rotate activate');
    const twoRoots = (await ward(['ca', 'bundle', '--state', state])).stdout;
    expect(pemCount(twoRoots)).toBe(2);
    expect(JSON.parse((await ward(['ca', 'bundle', '--state', state, '--json'])).stdout)).toMatchObject({ spiffe_sequence: 2, keys: [{}, {}] });
    const st = JSON.parse((await ward(['ca', 'rotate', 'status', '--state', state, '--json'])).stdout);
    expect(st).toMatchObject({ phase: 'prepared', kind: 'root', active: { issuer: { fingerprint: init.issuer.fingerprint } } });
    const newRoot = st.next.root.fingerprint as string;

    const act = await ward(['ca', 'rotate', 'activate', '--state', state]);
    expect(act.code, act.stderr).toBe(0);
    expect(act.stdout).toContain('rotation phase: activated (root)');
    const leaf = await issued(dir, state);
    expect(parseCertificates(leaf.pem)[1].issuer).not.toBe(parseCertificates(init.bundlePem)[0].subject);
    expect(pemCount((await ward(['ca', 'bundle', '--state', state])).stdout)).toBe(2);

    const retire = await ward(['ca', 'rotate', 'retire', '--state', state]);
    expect(retire).toMatchObject({ code: 1, stdout: '' });
    expect(retire.stderr).toContain('error[WARD_CA_ROTATION_INVALID]');
    expect(retire.stderr).toContain('--force');
    const status = await ward(['ca', 'rotate', 'status', '--state', state]);
    expect(status.stdout).toMatch(/next: ward ca rotate retire, after \S+ \(or --force\)/);

    const forced = await ward(['ca', 'rotate', 'retire', '--force', '--state', state, '--json']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ phase: 'idle', bundleRoots: [newRoot], bundleSequence: 3 });
    const after = parseCertificates((await ward(['ca', 'bundle', '--state', state])).stdout);
    expect(after.map((c) => c.fingerprintSha256)).toEqual([newRoot]);
  });

  it('a BYO root is rotated with the operator\'s next root (--root-cert/--root-key), never one of Ward\'s', async () => {
    const dir = await tempDir('ward-cli-');
    const first = await opensslRoot(dir, 'root-2026');
    const state = join(dir, 'state');
    expect((await ward(['ca', 'init', '--state', state, '--trust-domain', TD, '--root-cert', first.cert, '--root-key', first.key])).code).toBe(0);
    const refused = await ward(['ca', 'rotate', 'prepare', '--root', '--state', state]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('error[WARD_CA_ROTATION_INVALID]');
    expect(refused.stderr).toContain('ward ca rotate prepare --root --root-cert FILE --root-key FILE');
    expect(refused.stderr).not.toMatch(/prepare\(/);
    const next = await opensslRoot(dir, 'root-2031');
    const half = await ward(['ca', 'rotate', 'prepare', '--root', '--root-cert', next.cert, '--state', state]);
    expect(half.code).toBe(2);
    expect(half.stderr).toContain('missing --root-key');
    const ok = await ward(['ca', 'rotate', 'prepare', '--root', '--root-cert', next.cert, '--root-key', next.key, '--state', state, '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    const fp = (await opensslOk(['x509', '-in', next.cert, '-noout', '-fingerprint', '-sha256'])).trim().split('=')[1];
    expect(JSON.parse(ok.stdout)).toMatchObject({ phase: 'prepared', kind: 'root', next: { root: { fingerprint: fp, origin: 'byo' } } });
    expect(pemCount((await ward(['ca', 'bundle', '--state', state])).stdout)).toBe(2);
  });

  it('a BYO intermediate (Ward never sees the root key): init, then rotation only with the operator\'s next intermediate', async () => {
    const dir = await tempDir('ward-cli-');
    const root = await opensslRoot(dir, 'offline-root');
    const first = await opensslIntermediate(dir, 'issuing-1', root);
    const state = join(dir, 'state');
    const init = await ward(['ca', 'init', '--state', state, '--trust-domain', TD, '--intermediate-cert', first.cert, '--intermediate-key', first.key, '--chain', root.cert, '--json']);
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ mode: 'byo-intermediate' });
    const leaf = await issued(dir, state);
    const v = await openssl(['verify', '-CAfile', root.cert, '-untrusted', leaf.chain, leaf.chain]);
    expect(v.stdout).toContain(': OK');

    const refused = await ward(['ca', 'rotate', 'prepare', '--state', state]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('ward ca rotate prepare --intermediate-cert FILE --intermediate-key FILE --chain FILE');
    const second = await opensslIntermediate(dir, 'issuing-2', root);
    const prep = await ward(['ca', 'rotate', 'prepare', '--intermediate-cert', second.cert, '--intermediate-key', second.key, '--chain', root.cert, '--state', state]);
    expect(prep.code, prep.stderr).toBe(0);
    expect(prep.stdout).toContain('rotation phase: prepared (intermediate)');
    expect(prep.stdout).toContain('bundle roots:  1');
  });

  it('steps in the wrong phase exit 1 with the command to run, in CLI terms', async () => {
    const { state } = await newCa();
    const r = await ward(['ca', 'rotate', 'activate', '--state', state]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('error[WARD_CA_ROTATION_INVALID]: nothing to activate: rotation phase is idle; "ward ca rotate prepare" first');
    const step = await ward(['ca', 'rotate', 'begin', '--state', state]);
    expect(step.code).toBe(2);
    expect(step.stderr).toContain('unknown step "begin"');
    const force = await ward(['ca', 'rotate', 'prepare', '--force', '--state', state]);
    expect(force.code).toBe(2);
    expect(force.stderr).toContain('--force applies to "ward ca rotate retire" only');
  });
});

// ------------------------------------------------------------------------------------------------

describe('cert inspect', () => {
  it('a Ward leaf: fields, the SPIFFE ID decoded, "✓ valid SVID", exit 0', async () => {
    const { dir, state } = await newCa();
    const { chain } = await issued(dir, state);
    const r = await ward(['cert', 'inspect', chain]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('Certificate 1 of 2 (leaf):');
    expect(r.stdout).toContain('  Subject:             (empty)');
    expect(r.stdout).toContain(`  Subject Alt Names:   URI:${WEB} [critical]`);
    expect(r.stdout).toContain(`  SPIFFE ID:           ${WEB}`);
    expect(r.stdout).toContain(`trust domain ${TD}, namespace shop, service account web`);
    expect(r.stdout).toContain('  Key Usage:           digitalSignature [critical]');
    expect(r.stdout).toContain('  Extended Key Usage:  serverAuth, clientAuth');
    expect(r.stdout).toContain('  Basic Constraints:   CA:FALSE');
    expect(r.stdout).toContain(`X.509-SVID: ✓ valid SVID for ${WEB}`);
    expect(r.stdout).not.toContain('Bundle:');
  });

  it('--bundle: ✓ against its own CA (exit 0), × against another CA (exit 1)', async () => {
    const a = await newCa();
    const b = await newCa();
    const { chain } = await issued(a.dir, a.state);
    const own = join(a.dir, 'bundle.pem');
    const other = join(a.dir, 'other.pem');
    await writeFile(own, a.init.bundlePem);
    await writeFile(other, b.init.bundlePem);
    const ok = await ward(['cert', 'inspect', chain, '--bundle', own]);
    expect(ok.code, ok.stdout).toBe(0);
    expect(ok.stdout).toContain('Bundle:     ✓ chains to a trusted root (3 certificates)');
    const bad = await ward(['cert', 'inspect', chain, '--bundle', other]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toContain(`X.509-SVID: ✓ valid SVID for ${WEB}`);
    expect(bad.stdout).toMatch(/Bundle: +× does not validate \(no-path\)/);
  });

  it('--bundle of roots that name no trust domain (an operator\'s root): --trust-domain is required, never guessed', async () => {
    const dir = await tempDir('ward-cli-');
    const root = await opensslRoot(dir, 'root');
    const state = join(dir, 'state');
    expect((await ward(['ca', 'init', '--state', state, '--trust-domain', TD, '--root-cert', root.cert, '--root-key', root.key])).code).toBe(0);
    const { chain } = await issued(dir, state);
    const bundle = join(dir, 'bundle.pem');
    await writeFile(bundle, (await ward(['ca', 'bundle', '--state', state])).stdout);
    const guessed = await ward(['cert', 'inspect', chain, '--bundle', bundle]);
    expect(guessed.code).toBe(2);
    expect(guessed.stderr).toContain('--trust-domain is required: the roots in --bundle');
    expect(guessed.stdout).not.toContain('foreign-trust-domain');
    const given = await ward(['cert', 'inspect', chain, '--bundle', bundle, '--trust-domain', TD]);
    expect(given.code, given.stdout).toBe(0);
    expect(given.stdout).toContain('Bundle:     ✓ chains to a trusted root (3 certificates)');
  });

  it('a root certificate is not a leaf SVID: ×, exit 1', async () => {
    const { dir, init } = await newCa();
    const root = join(dir, 'root.pem');
    await writeFile(root, init.bundlePem);
    const r = await ward(['cert', 'inspect', root]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('Certificate:\n');
    expect(r.stdout).toContain('  Basic Constraints:   CA:TRUE');
    expect(r.stdout).toMatch(/X.509-SVID: × not a valid leaf SVID \(leaf-is-ca\)/);
  });

  it('an expired leaf is not "✓ valid", even without a bundle', async () => {
    const dir = await tempDir('ward-cli-');
    const key = PrivateKey.generate();
    const day = 86_400_000;
    const now = Date.now();
    const root = createRoot({ key, trustDomain: TD, notBefore: new Date(now - 10 * day), notAfter: new Date(now + 10 * day) });
    const leaf = new LeafSigner({ cert: root, key }).sign({
      publicKeyDer: PrivateKey.generate().publicKeyDer(),
      id: SpiffeId.parse(WEB),
      notBefore: new Date(now - 3 * day),
      notAfter: new Date(now - 2 * day),
    });
    const file = join(dir, 'old.pem');
    await writeFile(file, leaf.pem());
    const r = await ward(['cert', 'inspect', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/Not After: .*\(EXPIRED 2d 0h ago\)/);
    expect(r.stdout).toContain('X.509-SVID: × not valid now (expired)');
    const j = JSON.parse((await ward(['cert', 'inspect', file, '--json'])).stdout);
    expect(j).toMatchObject({ ok: false, verdict: { svid: { ok: false, reason: 'expired', id: WEB } }, certificates: [{ expired: true }] });
  });

  it('--json shape', async () => {
    const { dir, state, init } = await newCa();
    const { chain } = await issued(dir, state);
    const bundle = join(dir, 'bundle.pem');
    await writeFile(bundle, init.bundlePem);
    const r = await ward(['cert', 'inspect', chain, '--bundle', bundle, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ok).toBe(true);
    expect(j.certificates).toHaveLength(2);
    expect(j.certificates[0]).toMatchObject({
      subject: '',
      isCa: false,
      expired: false,
      keyType: 'ECDSA P-256',
      signatureAlgorithm: 'ecdsa-with-SHA256',
      keyUsage: ['digitalSignature'],
      extKeyUsage: ['serverAuth', 'clientAuth'],
      sans: { uris: [WEB], dnsNames: [], critical: true },
      spiffeId: { id: WEB, trustDomain: TD, path: '/ns/shop/sa/web', namespace: 'shop', serviceAccount: 'web' },
      fingerprintSha256: expect.stringMatching(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/),
    });
    expect(j.certificates[1]).toMatchObject({ isCa: true, fingerprintSha256: init.issuer.fingerprint });
    expect(j.verdict).toEqual({ svid: { ok: true, id: WEB }, bundle: { ok: true, path: [j.certificates[0].fingerprintSha256, init.issuer.fingerprint, init.root.fingerprint] } });
  });

  it('reads standard input ("-") and DER files', async () => {
    const { dir, state } = await newCa();
    const { chain, pem } = await issued(dir, state);
    const stdin = await ward(['cert', 'inspect', '-'], { stdin: pem });
    expect(stdin.code, stdin.stderr).toBe(0);
    expect(stdin.stdout).toContain('Certificate 1 of 2 (leaf):');
    const der = join(dir, 'leaf.der');
    await opensslOk(['x509', '-in', chain, '-outform', 'DER', '-out', der]);
    const fromDer = await ward(['cert', 'inspect', der]);
    expect(fromDer.code, fromDer.stderr).toBe(0);
    expect(fromDer.stdout).toContain('Certificate:\n');
    expect(fromDer.stdout).toContain(`X.509-SVID: ✓ valid SVID for ${WEB}`);
    const derStdin = await ward(['cert', 'inspect', '-'], { stdin: await readFile(der) });
    expect(derStdin.code, derStdin.stderr).toBe(0);
  });

  it('garbage, empty, missing and non-certificate input: a clear error, exit 1', async () => {
    const dir = await tempDir('ward-cli-');
    const files = { garbage: join(dir, 'garbage.pem'), empty: join(dir, 'empty.pem'), key: join(dir, 'k.pem') };
    await writeFile(files.garbage, 'this is not a certificate\n');
    await writeFile(files.empty, '');
    await writeFile(files.key, PrivateKey.generate().exportPem());
    const cases: [string, string][] = [
      [files.garbage, `error[WARD_PKI_CERT_INVALID]: ${files.garbage} holds neither PEM certificates nor a DER certificate`],
      [files.empty, `error[WARD_PKI_CERT_INVALID]: ${files.empty} is empty`],
      [files.key, `error[WARD_PKI_PEM_INVALID]: ${files.key}: `],
      [join(dir, 'nope.pem'), 'error[WARD_CONFIG_INVALID]: cannot read'],
    ];
    for (const [file, message] of cases) {
      const r = await ward(['cert', 'inspect', file]);
      expect(r, file).toMatchObject({ code: 1, stdout: '' });
      expect(r.stderr).toContain(message);
      expect(r.stderr).not.toContain('unexpected error');
    }
  });

  it('--connect: inspects the chain a TLS server presents (exit 0), verified with --bundle', async () => {
    const { dir, state, init } = await newCa();
    const { pem, key } = await issued(dir, state);
    const server = createTlsServer({ cert: pem, key: await readFile(key) }, (s) => s.end());
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const target = `127.0.0.1:${(server.address() as { port: number }).port}`;
    const r = await ward(['cert', 'inspect', '--connect', target]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('Certificate 1 of 2 (leaf):');
    expect(r.stdout).toContain('Certificate 2 of 2:');
    expect(r.stdout).toContain(`X.509-SVID: ✓ valid SVID for ${WEB}`);
    const bundle = join(dir, 'bundle.pem');
    await writeFile(bundle, init.bundlePem);
    const j = JSON.parse((await ward(['cert', 'inspect', '--connect', target, '--bundle', bundle, '--json'])).stdout);
    expect(j).toMatchObject({ ok: true, verdict: { bundle: { ok: true } } });
    expect(j.certificates).toHaveLength(2);
  });

  it('--connect to a closed port: WARD_INSPECT_CONNECT_FAILED, exit 1', async () => {
    const port = await freePort();
    const r = await ward(['cert', 'inspect', '--connect', `127.0.0.1:${port}`]);
    expect(r).toMatchObject({ code: 1, stdout: '' });
    expect(r.stderr).toContain(`error[WARD_INSPECT_CONNECT_FAILED]: cannot complete a TLS handshake with 127.0.0.1:${port}`);
    expect(r.stderr).toContain('ECONNREFUSED');
    const usage = await ward(['cert', 'inspect', '--connect', 'no-port']);
    expect(usage.code).toBe(2);
  });
});

// ------------------------------------------------------------------------------------------------

describe('token create', () => {
  it('prints only the token on stdout (the rest on stderr); --json gives node, id and expiry', async () => {
    const { state } = await newCa();
    const r = await ward(['token', 'create', '--state', state, '--node', 'node-a', '--ttl', '10m']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^wardjt_[A-Za-z0-9_-]{43}\n$/);
    expect(r.stderr).toContain(`join token for node node-a (spiffe://${TD}/ward/node/node-a), valid for 10m`);
    const before = Date.now();
    const j = await ward(['token', 'create', '--state', state, '--node', 'node-a', '--json']);
    expect(j.code, j.stderr).toBe(0);
    const body = JSON.parse(j.stdout);
    expect(body).toEqual({ token: expect.stringMatching(/^wardjt_/), node: 'node-a', id: `spiffe://${TD}/ward/node/node-a`, expiresAt: expect.any(String) });
    expect(Date.parse(body.expiresAt) - before).toBeGreaterThan(14 * 60_000);
    expect(Date.parse(body.expiresAt) - before).toBeLessThanOrEqual(15 * 60_000 + 5_000);
    // Only hashes are stored, one 0600 file per token.
    const files = await readdir(join(state, 'tokens'));
    expect(files).toHaveLength(2);
    for (const f of files) expect((await stat(join(state, 'tokens', f))).mode & 0o777).toBe(0o600);
    expect((await Promise.all(files.map((f) => readFile(join(state, 'tokens', f), 'utf8')))).join('')).not.toContain(body.token);
  });

  it.each([['5x'], ['48h'], ['0s']])('--ttl %s is a usage error (exit 2)', async (ttl) => {
    const { state } = await newCa();
    const r = await ward(['token', 'create', '--state', state, '--node', 'node-a', '--ttl', ttl]);
    expect(r).toMatchObject({ code: 2, stdout: '' });
    expect(r.stderr).toContain('--ttl must be');
  });

  it('a bad node name or a directory without a CA exits 1 with its code', async () => {
    const { state } = await newCa();
    const name = await ward(['token', 'create', '--state', state, '--node', 'a/b']);
    expect(name.code).toBe(1);
    expect(name.stderr).toContain('error[WARD_ID_INVALID]');
    const dir = await tempDir('ward-cli-');
    const none = await ward(['token', 'create', '--state', dir, '--node', 'node-a']);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('error[WARD_CA_NOT_INITIALIZED]');
  });
});

// ------------------------------------------------------------------------------------------------

describe('ca serve', () => {
  it('serves on ephemeral ports, answers "ca inspect --server", follows "ca rotate", stops on SIGTERM with exit 0', async () => {
    const { state, init } = await newCa();
    const child = spawnWard(['ca', 'serve', '--state', state, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'warn']);
    const m = await stderrMatch(child, /ward ca serve: mesh API https:\/\/127\.0\.0\.1:(\d+) {2}admin http:\/\/127\.0\.0\.1:(\d+)\n/);
    const [meshPort, adminPort] = [Number(m[1]), Number(m[2])];
    expect(meshPort).toBeGreaterThan(0);
    expect(adminPort).toBeGreaterThan(0);

    const r = await ward(['ca', 'inspect', '--server', `http://127.0.0.1:${adminPort}`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ trustDomain: TD, activeIssuer: init.issuer.fingerprint, warnings: [] });
    // The server's own certificate (spiffe://TD/ward/ca) is an issuance the report counts.
    expect(j.counts.issued).toBeGreaterThanOrEqual(1);
    // And the mesh port presents a Ward SVID, as cert inspect sees it.
    const tls = await ward(['cert', 'inspect', '--connect', `127.0.0.1:${meshPort}`]);
    expect(tls.code, tls.stderr).toBe(0);
    expect(tls.stdout).toContain(`X.509-SVID: ✓ valid SVID for spiffe://${TD}/ward/ca`);

    // A rotation committed by another command is picked up by the running server: its report and
    // the certificate it presents follow (the watch is asynchronous, so this one waits by polling).
    expect((await ward(['ca', 'rotate', 'prepare', '--state', state])).code).toBe(0);
    const activated = JSON.parse((await ward(['ca', 'rotate', 'activate', '--state', state, '--json'])).stdout);
    const newIssuer = activated.active.issuer.fingerprint as string;
    expect(newIssuer).not.toBe(init.issuer.fingerprint);
    await vi.waitFor(
      async () => {
        const report = JSON.parse((await ward(['ca', 'inspect', '--server', `http://127.0.0.1:${adminPort}`, '--json'])).stdout);
        expect(report).toMatchObject({ activeIssuer: newIssuer, rotation: { phase: 'activated' } });
        const presented = JSON.parse((await ward(['cert', 'inspect', '--connect', `127.0.0.1:${meshPort}`, '--json'])).stdout);
        expect(presented.certificates[1].fingerprintSha256).toBe(newIssuer);
      },
      { timeout: 15_000, interval: 50 },
    );

    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    expect(child.output.stderr).toContain('ward ca serve: SIGTERM: draining and stopping');
  });

  it('"ca inspect --server --latest N" lists N recent issuances, as "--state" does', async () => {
    const { dir, state } = await newCa();
    const child = spawnWard(['ca', 'serve', '--state', state, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'warn']);
    const m = await stderrMatch(child, /admin http:\/\/127\.0\.0\.1:(\d+)\n/);
    const server = `http://127.0.0.1:${m[1]}`;
    await issued(dir, state); // through the server's admin API: it holds the state directory
    await issued(dir, state);
    const latest = async (n: string) => {
      const r = await ward(['ca', 'inspect', '--server', server, '--latest', n, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { latestIssued: unknown[]; counts: { issued: number } };
    };
    const two = await latest('2');
    expect(two.counts.issued).toBe(3); // the server's own certificate, and the two above
    expect(two.latestIssued).toHaveLength(2);
    expect((await latest('0')).latestIssued).toEqual([]);
    const local = await ward(['ca', 'inspect', '--state', state, '--latest', '0', '--json']);
    expect(local.code, local.stderr).toBe(0);
    expect(JSON.parse(local.stdout).latestIssued).toEqual([]);
    const text = await ward(['ca', 'inspect', '--server', server, '--latest', '1']);
    expect(text.stdout.split('Latest issued:\n')[1]?.split('\n\n')[0].split('\n')).toHaveLength(1);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
  });

  it('flag and listen errors stop it cleanly: non-loopback admin (exit 2), port in use (exit 1)', async () => {
    const { state } = await newCa();
    const signalListeners = process.listenerCount('SIGTERM') + process.listenerCount('SIGINT');
    const admin = await ward(['ca', 'serve', '--state', state, '--listen', '127.0.0.1:0', '--admin', '0.0.0.0:0']);
    expect(admin.code).toBe(2);
    expect(admin.stderr).toContain('--admin must be a loopback address');
    const allow = await ward(['ca', 'serve', '--state', state, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--allow', 'node-a=spiffe://other.org/x']);
    expect(allow.code).toBe(2);
    expect(allow.stderr).toContain(`outside the CA's trust domain ${TD}`);
    const busy = createNetServer();
    busy.listen(0, '127.0.0.1');
    await once(busy, 'listening');
    onTestFinished(() => new Promise<void>((resolve) => busy.close(() => resolve())));
    const port = (busy.address() as { port: number }).port;
    const r = await ward(['ca', 'serve', '--state', state, '--listen', `127.0.0.1:${port}`, '--admin', '127.0.0.1:0', '--log-level', 'silent']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error[WARD_CONFIG_INVALID]: cannot listen on 127.0.0.1:${port}: the address is already in use`);
    expect(r.stderr).not.toContain('unexpected error');
    // Nothing was left behind: the signal handlers it installed are gone.
    expect(process.listenerCount('SIGTERM') + process.listenerCount('SIGINT')).toBe(signalListeners);
  });
});
