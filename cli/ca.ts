import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { userInfo } from 'node:os';
import { ERROR_CODES, WardError, isWardError, type WardErrorCode } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import { createLogger, silentLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { SpiffeId, parseTrustDomain } from '../core/identity/index.js';
import { toPem } from '../core/pki/index.js';
import {
  CertificateAuthority,
  CaServer,
  JoinTokens,
  MAX_LEAF_TTL_MS,
  MIN_LEAF_TTL_MS,
  assertLoopback,
  caWarnings,
  describeAuthority,
  readState,
  readLock,
  ADMIN_TOKEN_FILE,
  MIN_CA_TTL_MS,
  type CaReport,
  type RotationStatus,
  type WorkloadAuthorizer,
} from '../ca/index.js';
import {
  EXIT_OK,
  EXIT_PROBLEM,
  JSON_FLAG,
  durationFlag,
  flag,
  humanDuration,
  optional,
  readAll,
  required,
  writeJson,
  type Command,
  type CliIo,
  type ParsedArgs,
} from './command.js';

const DEFAULT_WARN_WITHIN = '30d';

/** Reads the trust domain of an initialized state directory (no keys are opened). */
export async function openStateInfo(stateDir: string): Promise<{ trustDomain: string }> {
  const st = await readState(stateDir);
  if (!st) throw new WardError('WARD_CA_NOT_INITIALIZED', `${stateDir} holds no CA; create one with: ward ca init --state ${stateDir}`);
  return { trustDomain: st.trustDomain };
}

/**
 * Opens the CA. Readers open read-only (no lock, so they work beside a running server); writers
 * take the state lock, and when a running `ward ca serve` holds it, callers use viaServer() instead.
 */
export async function openCa(stateDir: string, o: { readOnly: true } | { holder: string }): Promise<CertificateAuthority> {
  await openStateInfo(stateDir);
  return CertificateAuthority.open({
    stateDir,
    clock: systemClock,
    logger: silentLogger(),
    registry: createRegistry(),
    ...('readOnly' in o ? { readOnly: true } : { holder: o.holder }),
  });
}

/**
 * Runs a write locally when the state directory is free, or through the admin API of the server
 * that holds it (its address is in the lock, its token in <state>/admin.token).
 */
async function writeCa<T>(stateDir: string, holder: string, local: (ca: CertificateAuthority) => Promise<T>, remote: (call: AdminCall) => Promise<T>): Promise<T> {
  let ca: CertificateAuthority;
  try {
    ca = await openCa(stateDir, { holder });
  } catch (err) {
    if (!isWardError(err, 'WARD_CA_STATE_LOCKED')) throw err;
    const lock = await readLock(stateDir);
    if (!lock?.adminUrl) throw err;
    let token: string;
    try {
      token = (await readFile(join(stateDir, ADMIN_TOKEN_FILE), 'utf8')).trim();
    } catch (cause) {
      throw new WardError('WARD_CA_STATE_LOCKED', `${err.message}, but its admin token ${join(stateDir, ADMIN_TOKEN_FILE)} is not readable`, { cause });
    }
    const adminUrl = lock.adminUrl;
    return remote(async (path, body) => {
      let res: Response;
      try {
        res = await fetch(new URL(path, adminUrl), {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(30_000),
        });
      } catch (cause) {
        throw new WardError('WARD_CA_UNREACHABLE', `the CA server holding ${stateDir} (pid ${lock.pid}) did not answer at ${adminUrl}: ${(cause as Error).message}`, { cause });
      }
      const json = (await res.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
      if (!res.ok) {
        const code = (json.error?.code && json.error.code in ERROR_CODES ? json.error.code : 'WARD_CA_UNREACHABLE') as WardErrorCode;
        throw new WardError(code, json.error?.message ?? `${adminUrl}${path} answered HTTP ${res.status}`);
      }
      return json;
    });
  }
  try {
    return await local(ca);
  } finally {
    await ca.close();
  }
}

type AdminCall = (path: string, body: Record<string, unknown>) => Promise<unknown>;

/** A CSR file's bytes as PEM text (JSON carries text; DER input is wrapped). */
function csrPem(csr: Buffer): string {
  const text = csr.toString('latin1');
  return text.includes('-----BEGIN') ? text : toPem(csr, 'CERTIFICATE REQUEST');
}

async function readFileArg(path: string | undefined, what: string): Promise<string | undefined> {
  if (path === undefined) return undefined;
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new WardError('WARD_CONFIG_INVALID', `cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** A duration flag that must lie within [min, max] (a usage error otherwise, naming the flag). */
function boundedDuration(args: ParsedArgs, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const ms = durationFlag(args, name);
  if (ms !== undefined && (ms < min || ms > max)) {
    const range = max === Number.MAX_SAFE_INTEGER ? `at least ${humanDuration(min)}` : `between ${humanDuration(min)} and ${humanDuration(max)}`;
    throw new WardError('WARD_USAGE', `--${name} must be ${range}, got "${optional(args, name)}"`);
  }
  return ms;
}

/** --trust-domain: a bare name. A SPIFFE URI here is a common slip, worth its own message. */
function trustDomainArg(args: ParsedArgs): string {
  const text = String(args.values['trust-domain']);
  if (text.includes('://')) {
    throw new WardError('WARD_ID_INVALID', `--trust-domain wants a bare trust domain name such as example.org, not a URI ("${text}")`);
  }
  return parseTrustDomain(text);
}

/** Who ran an administrative command, for the inventory and audit log. */
function operator(io: CliIo): string {
  const fromEnv = io.env.USER ?? io.env.LOGNAME ?? io.env.USERNAME;
  if (fromEnv) return fromEnv;
  try {
    return userInfo().username;
  } catch {
    // No passwd entry (e.g. an arbitrary uid in a container).
    return `uid:${process.getuid?.() ?? 'unknown'}`;
  }
}

/** BYO flags come in sets; say which flag is missing before reading any file. */
function checkByoFlags(args: ParsedArgs): void {
  const has = (n: string) => optional(args, n) !== undefined;
  const root = ['root-cert', 'root-key'];
  const int = ['intermediate-cert', 'intermediate-key', 'chain'];
  if (root.some(has) && int.some(has)) throw new WardError('WARD_USAGE', 'bring either a root (--root-cert, --root-key) or an intermediate (--intermediate-cert, --intermediate-key, --chain), not both');
  for (const set of [root, int]) {
    const missing = set.filter((n) => !has(n));
    if (missing.length > 0 && missing.length < set.length) {
      throw new WardError('WARD_USAGE', `${set.map((n) => `--${n}`).join(', ')} go together; missing ${missing.map((n) => `--${n}`).join(', ')}`);
    }
  }
}

/** Reads the BYO material named by the flags (all undefined when none were given). */
async function byoMaterial(args: ParsedArgs): Promise<{ rootCert?: string; rootKey?: string; intermediateCert?: string; intermediateKey?: string; chain?: string }> {
  checkByoFlags(args);
  return {
    rootCert: await readFileArg(optional(args, 'root-cert'), 'root certificate'),
    rootKey: await readFileArg(optional(args, 'root-key'), 'root key'),
    intermediateCert: await readFileArg(optional(args, 'intermediate-cert'), 'intermediate certificate'),
    intermediateKey: await readFileArg(optional(args, 'intermediate-key'), 'intermediate key'),
    chain: await readFileArg(optional(args, 'chain'), 'chain'),
  };
}

const BYO_OPTIONS = {
  'root-cert': { type: 'string' },
  'root-key': { type: 'string' },
  'intermediate-cert': { type: 'string' },
  'intermediate-key': { type: 'string' },
  chain: { type: 'string' },
} as const;

export function hostPort(text: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new WardError('WARD_USAGE', `${what} wants HOST:PORT, got "${text}"`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

// ------------------------------------------------------------------------------------------------

const init: Command = {
  name: 'ca init',
  summary: 'create a CA (root + intermediate) in a state directory, or import your own',
  options: {
    state: { type: 'string' },
    'trust-domain': { type: 'string', default: 'cluster.local' },
    ...BYO_OPTIONS,
    'root-ttl': { type: 'string' },
    'intermediate-ttl': { type: 'string' },
    ...JSON_FLAG,
  },
  help: `Usage: ward ca init --state DIR [--trust-domain TD] [--json]
       ward ca init --state DIR --root-cert FILE --root-key FILE
       ward ca init --state DIR --intermediate-cert FILE --intermediate-key FILE --chain FILE

Creates Ward's certificate authority in DIR (created with mode 0700; private keys 0600): an ECDSA
P-256 root (5 years) and an issuing intermediate (1 year) for the trust domain. Bring your own root
(Ward then creates the intermediate) or your own intermediate (Ward never sees the root key; keep it
offline — root rotation is then yours to do). Refuses to overwrite an existing CA.

Flags:
  --state DIR                the state directory (required)
  --trust-domain TD          SPIFFE trust domain (default cluster.local)
  --root-cert/--root-key     your root certificate and its private key (PEM)
  --intermediate-cert/--intermediate-key/--chain
                             your issuing CA, its key, and its chain up to and including the root
  --root-ttl / --intermediate-ttl  lifetimes of generated CAs (e.g. 1825d, 365d)
  --json                     machine-readable output

Example:
  ward ca init --state .ward --trust-domain example.org && ward ca inspect --state .ward`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const trustDomain = trustDomainArg(args);
    const rootTtlMs = boundedDuration(args, 'root-ttl', MIN_CA_TTL_MS);
    const intermediateTtlMs = boundedDuration(args, 'intermediate-ttl', MIN_CA_TTL_MS);
    const r = await CertificateAuthority.init({ stateDir, trustDomain, clock: systemClock, ...(await byoMaterial(args)), rootTtlMs, intermediateTtlMs });
    if (flag(args, 'json')) {
      writeJson(io, r);
    } else {
      io.stdout.write(
        `✓ CA created in ${stateDir} (trust domain ${r.trustDomain}, ${r.mode})\n` +
          `  root:         ${r.root.fingerprint}  valid until ${r.root.notAfter.toISOString()}\n` +
          `  intermediate: ${r.issuer.fingerprint}  valid until ${r.issuer.notAfter.toISOString()}\n\n` +
          `Next: ward ca inspect --state ${stateDir}    ward ca bundle --state ${stateDir} > bundle.pem\n`,
      );
    }
    return EXIT_OK;
  },
};

function renderReport(r: CaReport, now: number, warnWithinMs: number): string {
  const L: string[] = [];
  L.push(`Trust domain:  ${r.trustDomain}   (mode: ${r.mode}, bundle sequence ${r.bundleSequence})`);
  L.push('');
  L.push('Certificates:');
  for (const c of r.certificates) {
    const left = Date.parse(c.notAfter) - now;
    const tags = [c.state, c.origin, c.active && c.role === 'intermediate' ? 'ACTIVE ISSUER' : '', c.inBundle ? 'in bundle' : ''].filter(Boolean).join(', ');
    L.push(`  ${c.role.padEnd(12)} ${c.fingerprint}`);
    L.push(`               subject ${c.subject || '(empty)'}`);
    L.push(`               valid ${c.notBefore} → ${c.notAfter} (${left > 0 ? `${humanDuration(left)} left` : 'EXPIRED'})  [${tags}]`);
  }
  L.push('');
  L.push(`Rotation:      ${r.rotation.phase}${r.rotation.kind ? ` (${r.rotation.kind})` : ''}${r.rotation.retireAfter ? `, old material retirable after ${r.rotation.retireAfter}` : ''}`);
  const refused = Object.entries(r.counts.refusedByCode).map(([k, v]) => `${k}=${v}`).join(', ');
  L.push(`Issuance:      ${r.counts.issued} issued, ${r.counts.refused} refused${refused ? ` (${refused})` : ''}`);
  if (r.latestIssued.length > 0) {
    L.push('');
    L.push('Latest issued:');
    for (const i of r.latestIssued) L.push(`  ${i.issuedAt}  ${i.identity}  serial ${i.serial.slice(0, 16)}…  by ${i.requester}  until ${i.notAfter}`);
  }
  if (r.latestRefused.length > 0) {
    L.push('');
    L.push('Latest refused:');
    for (const a of r.latestRefused) L.push(`  ${a.time}  ${a.identity}  ${a.code}  by ${a.requester}: ${a.reason ?? ''}`);
  }
  const warnings = caWarnings(r, now, warnWithinMs);
  L.push('');
  if (warnings.length === 0) L.push(`✓ no warnings (expiry threshold ${humanDuration(warnWithinMs)})`);
  for (const w of warnings) L.push(`${w.level === 'error' ? '×' : '‼'} ${w.message}`);
  return L.join('\n') + '\n';
}

/** describeAuthority for `--latest` 0..1000 (the inventory and audit queries take 1..1000). */
export async function reportOf(ca: CertificateAuthority, now: number, latest: number): Promise<CaReport> {
  const r = await describeAuthority(ca, now, Math.max(1, latest));
  return latest === 0 ? { ...r, latestIssued: [], latestRefused: [] } : r;
}

async function fetchReport(server: string, latest: number): Promise<CaReport> {
  let url: URL;
  try {
    url = new URL(`/v1/status?latest=${latest}`, server);
  } catch {
    throw new WardError('WARD_USAGE', `--server wants the CA's admin URL, e.g. http://127.0.0.1:9443, got "${server}"`);
  }
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    throw new WardError('WARD_CA_UNREACHABLE', `cannot reach the CA admin endpoint ${url}: ${(err as Error).message}`, { cause: err });
  }
  if (!res.ok) throw new WardError('WARD_CA_UNREACHABLE', `${url} answered HTTP ${res.status}`);
  const report = (await res.json()) as CaReport;
  // --latest holds whatever the server sent (a server that ignores ?latest= sends its default).
  return { ...report, latestIssued: (report.latestIssued ?? []).slice(0, latest), latestRefused: (report.latestRefused ?? []).slice(0, latest) };
}

const inspect: Command = {
  name: 'ca inspect',
  summary: 'show roots, intermediates, validity, the active issuer, issuance and warnings',
  options: { state: { type: 'string' }, server: { type: 'string' }, 'warn-within': { type: 'string', default: DEFAULT_WARN_WITHIN }, latest: { type: 'string', default: '10' }, ...JSON_FLAG },
  help: `Usage: ward ca inspect --state DIR | --server URL  [--warn-within 30d] [--json]

Shows the CA: every root and intermediate with validity, time left, SHA-256 fingerprint and state
(active, next, previous), which intermediate is issuing, whether a rotation is in progress,
issuance and refusal counts, the latest issuances and refusals, and warnings — anything expired,
not yet valid, or expiring within the threshold.

Flags:
  --state DIR          read the CA state directory
  --server URL         ask a running CA's admin endpoint instead (e.g. http://127.0.0.1:9443)
  --warn-within DUR    warn about material expiring within this (default ${DEFAULT_WARN_WITHIN})
  --latest N           how many recent issuances/refusals to list (default 10)
  --json               machine-readable output (includes "warnings")

Exit status: 0 when nothing needs attention, 1 when a warning or error was found (or on failure).`,
  async run(args, io) {
    const stateDir = optional(args, 'state');
    const server = optional(args, 'server');
    if ((stateDir === undefined) === (server === undefined)) throw new WardError('WARD_USAGE', 'give exactly one of --state DIR or --server URL');
    const warnWithinMs = durationFlag(args, 'warn-within')!;
    const latest = Number(optional(args, 'latest'));
    if (!Number.isInteger(latest) || latest < 0 || latest > 1000) throw new WardError('WARD_USAGE', '--latest must be 0..1000');
    const now = systemClock.now();
    let report: CaReport;
    if (stateDir !== undefined) {
      const ca = await openCa(stateDir, { readOnly: true });
      try {
        report = await reportOf(ca, now, latest);
      } finally {
        await ca.close();
      }
    } else {
      report = await fetchReport(server!, latest);
    }
    const warnings = caWarnings(report, now, warnWithinMs);
    if (flag(args, 'json')) writeJson(io, { ...report, warnings });
    else io.stdout.write(renderReport(report, now, warnWithinMs));
    return warnings.length > 0 ? EXIT_PROBLEM : EXIT_OK;
  },
};

const issue: Command = {
  name: 'ca issue',
  summary: 'issue a workload certificate from a CSR file (administrator issuance)',
  options: { state: { type: 'string' }, csr: { type: 'string' }, id: { type: 'string' }, ttl: { type: 'string' }, out: { type: 'string' }, ...JSON_FLAG },
  help: `Usage: ward ca issue --state DIR --csr FILE|- --id SPIFFE_ID [--ttl 1h] [--out FILE] [--json]

Issues an X.509-SVID for SPIFFE_ID from a PKCS#10 CSR (PEM or DER). The CSR only proves possession
of the key: the identity comes from --id. A CSR that asks for another identity, several URIs, DNS/IP/
email SANs, CA:TRUE or keyCertSign is refused (WARD_PKI_CSR_UNAUTHORIZED). The issuance is recorded
in the inventory and audit log with requester "admin:<user>".

Flags:
  --state DIR     the CA state directory
  --csr FILE      the CSR ("-" for standard input)
  --id ID         the SPIFFE ID to certify, in the CA's trust domain
  --ttl DURATION  lifetime, 5m..24h (default 1h)
  --out FILE      write the chain (leaf + intermediates) here instead of standard output
  --json          print {id, serial, notBefore, notAfter, certificate (the chain), out} as JSON

Example:
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout w.key -subj /CN=w -out w.csr
  ward ca issue --state .ward --csr w.csr --id spiffe://cluster.local/ns/shop/sa/web --out w.pem`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const csrPath = required(args, 'csr');
    const id = SpiffeId.parse(required(args, 'id'));
    const ttlMs = boundedDuration(args, 'ttl', MIN_LEAF_TTL_MS, MAX_LEAF_TTL_MS);
    // The state directory is checked before standard input is read, so a wrong --state fails at
    // once instead of waiting on a terminal.
    const { trustDomain } = await openStateInfo(stateDir);
    if (!id.memberOf(trustDomain)) throw new WardError('WARD_CA_FORBIDDEN', `${id} is outside the CA's trust domain ${trustDomain}`);
    const csr = csrPath === '-' ? await readStdin(io) : await readFile(csrPath).catch((err: NodeJS.ErrnoException) => {
      throw new WardError('WARD_CONFIG_INVALID', `cannot read CSR ${csrPath}: ${err.code ?? err.message}`);
    });
    const requester = `admin:${operator(io)}`;
    const r = await writeCa(
      stateDir,
      'ward ca issue',
      (ca) => ca.issue({ csr, identity: id, requester, ttlMs }),
      async (call) => {
        const j = (await call('/v1/admin/issue', { csr: csrPem(csr), identity: id.toString(), requester, ...(ttlMs !== undefined ? { ttl: `${ttlMs}ms` } : {}) })) as {
          serial: string; notBefore: string; notAfter: string; certificate: string;
        };
        return { id, serialHex: j.serial, notBefore: new Date(j.notBefore), notAfter: new Date(j.notAfter), chainPem: j.certificate };
      },
    );
    {
      const out = optional(args, 'out');
      if (out) {
        await writeFile(out, r.chainPem, { mode: 0o644 }).catch((err: NodeJS.ErrnoException) => {
          throw new WardError('WARD_CONFIG_INVALID', `issued serial ${r.serialHex}, but cannot write ${out}: ${err.code ?? err.message}`);
        });
      }
      if (flag(args, 'json')) {
        writeJson(io, {
          id: r.id.toString(),
          serial: r.serialHex,
          notBefore: r.notBefore.toISOString(),
          notAfter: r.notAfter.toISOString(),
          certificate: r.chainPem,
          ...(out ? { out } : {}),
        });
      }
      else if (out) io.stdout.write(`✓ issued ${r.id} serial ${r.serialHex}, valid until ${r.notAfter.toISOString()} → ${out}\n`);
      else io.stdout.write(r.chainPem);
      return EXIT_OK;
    }
  },
};

async function readStdin(io: CliIo): Promise<Buffer> {
  return readAll(io.stdin, 64 * 1024);
}

const bundle: Command = {
  name: 'ca bundle',
  summary: 'print the trust bundle (PEM or SPIFFE JWKS)',
  options: { state: { type: 'string' }, format: { type: 'string' }, ...JSON_FLAG },
  help: `Usage: ward ca bundle --state DIR [--format pem|jwks] [--json]

Prints the trust bundle: every root peers must trust (two during a root rotation). PEM by default,
or the SPIFFE bundle format (JWKS, with spiffe_sequence) with --format jwks. Safe to share: it
holds no secrets.

Flags:
  --state DIR          the CA state directory (required)
  --format pem|jwks    output format (default pem)
  --json               the same as --format jwks (the SPIFFE bundle is the JSON form)

Examples:
  ward ca bundle --state .ward > bundle.pem && openssl verify -CAfile bundle.pem -untrusted chain.pem leaf.pem
  ward ca bundle --state .ward --format jwks > bundle.spiffe.json`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const given = optional(args, 'format');
    if (flag(args, 'json') && given !== undefined && given !== 'jwks') throw new WardError('WARD_USAGE', `--json prints the JWKS form; it cannot be combined with --format ${given}`);
    const format = flag(args, 'json') ? 'jwks' : (given ?? 'pem');
    if (format !== 'pem' && format !== 'jwks') throw new WardError('WARD_USAGE', `--format must be pem or jwks, got "${format}"`);
    const ca = await openCa(stateDir, { readOnly: true });
    try {
      const b = ca.bundle();
      io.stdout.write(format === 'pem' ? b.toPem() : JSON.stringify(b.toJwks({ sequence: ca.bundleSequence }), null, 2) + '\n');
      return EXIT_OK;
    } finally {
      await ca.close();
    }
  },
};

const ROTATE_STEPS = ['prepare', 'activate', 'retire', 'status'] as const;

/**
 * Rotation refusals are written for the library API ("prepare() first", "prepare('root', { rootCert,
 * rootKey })"); on the command line the same advice reads as the commands and flags to use.
 */
function rotationAdvice(err: WardError): WardError {
  const message = err.message
    .replace(/prepare\('root', \{ rootCert, rootKey \}\)/g, 'ward ca rotate prepare --root --root-cert FILE --root-key FILE')
    .replace(/prepare\('root', \{ intermediateCert, intermediateKey, chain \}\)/g, 'ward ca rotate prepare --root --intermediate-cert FILE --intermediate-key FILE --chain FILE')
    .replace(/prepare\('intermediate', \{ intermediateCert, intermediateKey, chain \}\)/g, 'ward ca rotate prepare --intermediate-cert FILE --intermediate-key FILE --chain FILE')
    .replace(/prepare\('root', \.\.\.\)/g, 'ward ca rotate prepare --root')
    .replace(/\b(prepare|activate|retire)\(\)/g, '"ward ca rotate $1"')
    .replace(/or force it \(/, 'or force it with --force (');
  return message === err.message ? err : new WardError(err.code, message, { cause: err.cause });
}

function renderRotation(st: RotationStatus): string {
  const L: string[] = [];
  L.push(`rotation phase: ${st.phase}${st.kind ? ` (${st.kind})` : ''}`);
  L.push(`  active issuer: ${st.active.issuer.fingerprint} (root ${st.active.root.fingerprint})`);
  if (st.next) L.push(`  prepared:      ${st.next.issuer.fingerprint} (root ${st.next.root.fingerprint})`);
  if (st.previous) L.push(`  previous:      ${st.previous.issuer.fingerprint} (root ${st.previous.root.fingerprint})`);
  L.push(`  bundle roots:  ${st.bundleRoots.length} (sequence ${st.bundleSequence})`);
  if (st.phase === 'prepared') {
    L.push(
      st.kind === 'root'
        ? '  next: distribute the bundle (ward ca bundle) to every peer, then: ward ca rotate activate'
        : '  next: ward ca rotate activate',
    );
  } else if (st.phase === 'activated') {
    L.push(st.retireReady ? '  next: ward ca rotate retire (ready now)' : `  next: ward ca rotate retire, after ${st.retireAfter?.toISOString()} (or --force)`);
  }
  return L.join('\n') + '\n';
}

const rotate: Command = {
  name: 'ca rotate',
  summary: 'rotate the intermediate or the root without downtime: prepare, activate, retire',
  positionals: { min: 1, max: 1, name: 'step (prepare, activate, retire or status)' },
  options: { state: { type: 'string' }, root: { type: 'boolean', default: false }, force: { type: 'boolean', default: false }, ...BYO_OPTIONS, ...JSON_FLAG },
  help: `Usage: ward ca rotate prepare|activate|retire|status --state DIR [--root] [--force] [--json]

Rotates CA material in three steps, each persisted (a restart resumes in the same phase):
  prepare   create a new intermediate (default) or a new root + intermediate (--root). A new root
            enters the trust bundle now, before it signs anything: let the bundle reach every peer.
  activate  switch issuance to the prepared material. Renewals move workloads to it.
  retire    drop the old material (with a root: remove the old root from the bundle). Refused until
            the last leaf the old root anchors has expired, unless --force.
  status    show the phase and what retire waits for.

While "ward ca serve" runs on DIR, each step is carried out by the server (through its admin API),
so the certificate it presents and the bundle it serves follow at once. Preparing with your own
certificate and key files is the exception: stop the server for that step (key files are not sent
over the admin API).

Flags:
  --state DIR          the CA state directory (required)
  --root               prepare: rotate the root (and its intermediate), not just the intermediate
  --force              retire: even while leaves the old root anchors are still valid
  --root-cert FILE --root-key FILE
                       prepare --root: bring your own new root (Ward makes the intermediate)
  --intermediate-cert FILE --intermediate-key FILE --chain FILE
                       prepare: bring your own new intermediate (required when Ward does not hold
                       the root key, i.e. a CA initialized with --intermediate-cert)
  --json               machine-readable output (the rotation status)

Example (root rotation):
  ward ca rotate prepare --root --state .ward   # bundle now holds old + new root
  ward ca rotate activate --state .ward         # new leaves chain to the new root
  ward ca rotate retire --state .ward           # after old leaves expire (1h by default)`,
  async run(args, io) {
    const step = args.positionals[0] as (typeof ROTATE_STEPS)[number];
    if (!ROTATE_STEPS.includes(step)) throw new WardError('WARD_USAGE', `unknown step "${step}"; use prepare, activate, retire or status`);
    const stateDir = required(args, 'state');
    if (flag(args, 'root') && step !== 'prepare') throw new WardError('WARD_USAGE', '--root applies to "ward ca rotate prepare" only');
    if (flag(args, 'force') && step !== 'retire') throw new WardError('WARD_USAGE', '--force applies to "ward ca rotate retire" only');
    const byoGiven = Object.keys(BYO_OPTIONS).some((n) => optional(args, n) !== undefined);
    if (byoGiven && step !== 'prepare') throw new WardError('WARD_USAGE', 'certificate and key files apply to "ward ca rotate prepare" only');
    const material = step === 'prepare' ? await byoMaterial(args) : {};
    const force = flag(args, 'force');
    const kind = flag(args, 'root') ? 'root' : 'intermediate';
    const local = async (ca: CertificateAuthority): Promise<RotationStatus> =>
      step === 'prepare' ? ca.rotation.prepare(kind, material)
      : step === 'activate' ? ca.rotation.activate()
      : step === 'retire' ? ca.rotation.retire({ force })
      : ca.rotation.status();
    let st: RotationStatus;
    try {
      if (step === 'status') {
        const ca = await openCa(stateDir, { readOnly: true });
        try {
          st = await local(ca);
        } finally {
          await ca.close();
        }
      } else {
        st = await writeCa(stateDir, `ward ca rotate ${step}`, local, async (call) => {
          if (byoGiven) throw new WardError('WARD_CA_STATE_LOCKED', `a CA server holds ${stateDir}; stop it to prepare a rotation with your own certificate and key files`);
          return reviveStatus((await call('/v1/admin/rotate', { step, root: kind === 'root', force })) as RotationStatus);
        });
      }
    } catch (err) {
      throw isWardError(err, 'WARD_CA_ROTATION_INVALID') ? rotationAdvice(err) : err;
    }
    if (flag(args, 'json')) writeJson(io, st);
    else io.stdout.write(renderRotation(st));
    return EXIT_OK;
  },
};

/** A rotation status that crossed the admin API as JSON: its dates are strings again. */
function reviveStatus(st: RotationStatus): RotationStatus {
  const date = (v: unknown) => (typeof v === 'string' ? new Date(v) : v) as Date;
  const cert = (c: RotationStatus['active']['issuer']) => ({ ...c, notBefore: date(c.notBefore), notAfter: date(c.notAfter) });
  const pair = (p?: RotationStatus['active']) => (p ? { issuer: cert(p.issuer), root: cert(p.root) } : undefined);
  return {
    ...st,
    preparedAt: st.preparedAt && date(st.preparedAt),
    activatedAt: st.activatedAt && date(st.activatedAt),
    retireAfter: st.retireAfter && date(st.retireAfter),
    active: pair(st.active)!,
    next: pair(st.next),
    previous: pair(st.previous),
  };
}

/** A static authorizer for the standalone CA: `--allow NODE=SPIFFE_ID` pairs. */
export function staticAuthorizer(pairs: string[], trustDomain: string): WorkloadAuthorizer {
  const allowed = new Set<string>();
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new WardError('WARD_USAGE', `--allow wants NODE=SPIFFE_ID, got "${p}"`);
    const node = SpiffeId.node(trustDomain, p.slice(0, eq));
    const id = SpiffeId.parse(p.slice(eq + 1));
    // The CA would refuse it at every request; say so at start instead.
    if (!id.memberOf(trustDomain)) throw new WardError('WARD_USAGE', `--allow ${p}: ${id} is outside the CA's trust domain ${trustDomain}`);
    allowed.add(`${node} ${id}`);
  }
  // Standalone, the CA has no source of truth for node membership: a joined node stays a member.
  return { mayObtain: (node, id) => allowed.has(`${node} ${id}`), mayRenewNode: () => true };
}

const serve: Command = {
  name: 'ca serve',
  summary: 'run the CA alone: the HTTPS issuance API and a loopback admin endpoint',
  options: {
    state: { type: 'string' },
    listen: { type: 'string', default: '127.0.0.1:8443' },
    admin: { type: 'string', default: '127.0.0.1:9443' },
    allow: { type: 'string', multiple: true, default: [] },
    init: { type: 'boolean', default: false },
    'trust-domain': { type: 'string', default: 'cluster.local' },
    'log-level': { type: 'string', default: 'info' },
  },
  help: `Usage: ward ca serve --state DIR [--listen HOST:PORT] [--admin HOST:PORT] [--allow NODE=ID ...]

Runs the certificate authority on its own (ward control runs it together with the discovery pool,
which then decides which node may obtain which workload identity). Mesh API on --listen (TLS 1.3;
the server presents spiffe://TD/ward/ca): GET /v1/health, GET /v1/bundle, POST /v1/join (join token
→ node certificate), POST /v1/issue (node certificate → workload certificate). Admin API on --admin
(plain HTTP, loopback only): /healthz, /metrics, /v1/status.

Flags:
  --state DIR          the CA state directory
  --listen HOST:PORT   mesh API address (default 127.0.0.1:8443)
  --admin HOST:PORT    admin address, loopback only (default 127.0.0.1:9443)
  --allow NODE=ID      let node NODE obtain workload identity ID (repeatable); nodes always renew their own
  --init               create the CA first when DIR holds none (with --trust-domain, default cluster.local)
  --trust-domain TD    trust domain for --init (default cluster.local)
  --log-level LEVEL    trace, debug, info, warn, error, fatal or silent (default info)

Port 0 picks a free port; the bound addresses are printed on standard error once both listeners
are up ("ward ca serve: mesh API https://HOST:PORT  admin http://HOST:PORT"). Logs are JSON lines on
standard error. SIGINT/SIGTERM drain in-flight requests and stop with exit status 0.

The server holds DIR for writing while it runs (DIR/ca.lock). "ward ca issue" and "ward ca rotate"
on DIR then go through its admin API, authenticated by DIR/admin.token (mode 0600, rewritten at each
start): the server's own certificate and the bundle it serves follow each rotation step at once.
"ward ca inspect --state" and "ward ca bundle" read DIR directly.

Example:
  ward ca serve --state .ward --init --trust-domain example.org --allow node-a=spiffe://example.org/ns/shop/sa/web`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    // Every flag is checked before anything is created, opened or bound.
    const listen = hostPort(String(args.values.listen), '--listen');
    const admin = adminAddressArg(args);
    const level = logLevelArg(args);
    const allow = args.values.allow as string[];
    const trustDomain = flag(args, 'init') ? trustDomainArg(args) : undefined;
    if (trustDomain !== undefined && !(await readState(stateDir))) {
      staticAuthorizer(allow, trustDomain); // a bad --allow must not leave a new CA behind
      const r = await CertificateAuthority.init({ stateDir, trustDomain, clock: systemClock });
      io.stderr.write(`ward ca serve: created a CA in ${stateDir} (trust domain ${r.trustDomain}, root ${r.root.fingerprint})\n`);
    }
    const info = await openStateInfo(stateDir);
    const authorizer = staticAuthorizer(allow, info.trustDomain);
    // No component at the root: each part names itself (ca, ca.server) in its child logger.
    const logger = createLogger({ level });
    const registry = createRegistry();
    const ca = await CertificateAuthority.open({ stateDir, clock: systemClock, logger, registry, holder: 'ward ca serve' });
    const tokens = new JoinTokens({ stateDir, trustDomain: info.trustDomain, clock: systemClock });
    const server = new CaServer({ ca, tokens, authorizer, clock: systemClock, logger, registry, status: (q) => reportOf(ca, systemClock.now(), q.latest ?? 10) });
    const unsubscribe = ca.onChange(() => void server.refreshCredentials().catch((err) => logger.error({ err }, 'refreshing server credentials failed')));
    // Registered before listening, so a signal during start-up still stops cleanly.
    let onSignal: (signal: NodeJS.Signals) => void = () => undefined;
    const stopped = new Promise<NodeJS.Signals>((resolve) => (onSignal = resolve));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      let bound: { port: number; adminPort?: number };
      try {
        bound = await server.listen({ host: listen.host, port: listen.port, adminHost: admin.host, adminPort: admin.port });
      } catch (err) {
        throw listenError(err);
      }
      io.stderr.write(`ward ca serve: mesh API https://${hostText(listen.host)}:${bound.port}  admin http://${hostText(admin.host)}:${bound.adminPort}\n`);
      const signal = await stopped;
      io.stderr.write(`ward ca serve: ${signal}: draining and stopping\n`);
      return EXIT_OK;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      unsubscribe();
      await server.close();
      await ca.close();
      logger.flush();
    }
  },
};

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/** --admin HOST:PORT, which must be loopback: the admin API's read routes are unauthenticated. */
export function adminAddressArg(args: ParsedArgs): { host: string; port: number } {
  const admin = hostPort(String(args.values.admin), '--admin');
  try {
    assertLoopback(admin.host);
  } catch {
    throw new WardError('WARD_USAGE', `--admin must be a loopback address (127.0.0.1, ::1, localhost): the admin API is unauthenticated; got "${admin.host}"`);
  }
  return admin;
}

/** --log-level, one of pino's levels. */
export function logLevelArg(args: ParsedArgs): string {
  const level = String(args.values['log-level']);
  if (!LOG_LEVELS.includes(level)) throw new WardError('WARD_USAGE', `--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${level}"`);
  return level;
}


/** IPv6 literals need brackets in a URL. */
export function hostText(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** A listen failure (address in use, not permitted, not local) in the operator's terms. */
export function listenError(err: unknown): unknown {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  const why: Record<string, string> = {
    EADDRINUSE: 'the address is already in use',
    EACCES: 'permission denied (ports below 1024 need privileges)',
    EADDRNOTAVAIL: 'the address is not available on this machine',
    ENOTFOUND: 'the host name does not resolve',
  };
  if (typeof e?.code !== 'string' || !why[e.code]) return err;
  const where = e.address !== undefined ? `${hostText(e.address)}:${e.port}` : 'the requested address';
  return new WardError('WARD_CONFIG_INVALID', `cannot listen on ${where}: ${why[e.code]}`, { cause: err });
}

export const caCommands: Command[] = [init, inspect, issue, bundle, rotate, serve];
