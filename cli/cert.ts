import { readFile } from 'node:fs/promises';
import { connect, type PeerCertificate, type DetailedPeerCertificate } from 'node:tls';
import { once } from 'node:events';
import { WardError } from '../core/errors.js';
import { formatDuration, systemClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { parseCertificates, parseCertificate, checkSvidLeaf, verifySvid, TrustBundle, type Certificate } from '../core/pki/index.js';
import { EXIT_OK, EXIT_PROBLEM, JSON_FLAG, durationFlag, flag, optional, readAll, writeJson, type Command, type ParsedArgs, type CliIo } from './command.js';

const MAX_INPUT = 1024 * 1024;

/** Everything `ward cert inspect` says about one certificate; the JSON form is this object. */
export interface CertificateReport {
  subject: string;
  issuer: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  timeLeft: string;
  expired: boolean;
  keyType: string;
  signatureAlgorithm: string;
  isCa: boolean;
  pathLen?: number;
  keyUsage: string[];
  keyUsageCritical: boolean;
  extKeyUsage: string[];
  sans: { uris: string[]; dnsNames: string[]; ipAddresses: string[]; emails: string[]; critical: boolean };
  spiffeId?: { id: string; trustDomain: string; path: string; namespace?: string; serviceAccount?: string; node?: string };
  subjectKeyId?: string;
  authorityKeyId?: string;
  fingerprintSha256: string;
}

export interface InspectVerdict {
  svid: { ok: boolean; reason?: string; detail?: string; id?: string };
  bundle?: { ok: boolean; reason?: string; detail?: string; path?: string[] };
}

export function describeCertificate(c: Certificate, now: number): CertificateReport {
  const id = c.uris.length === 1 ? SpiffeId.tryParse(c.uris[0]) : undefined;
  const key = c.publicKey.asymmetricKeyDetails;
  return {
    subject: c.subject,
    issuer: c.issuer,
    serial: c.serialHex,
    notBefore: c.notBefore.toISOString(),
    notAfter: c.notAfter.toISOString(),
    timeLeft: formatDuration(c.notAfter.getTime() - now),
    expired: c.notAfter.getTime() <= now,
    keyType: c.publicKey.asymmetricKeyType === 'ec' ? `ECDSA ${key?.namedCurve === 'prime256v1' ? 'P-256' : key?.namedCurve}` : `${c.publicKey.asymmetricKeyType?.toUpperCase()}${key?.modulusLength ? ` ${key.modulusLength}` : ''}`,
    signatureAlgorithm: c.signatureAlgorithm,
    isCa: c.isCa,
    ...(c.pathLen !== undefined ? { pathLen: c.pathLen } : {}),
    keyUsage: c.keyUsage ?? [],
    keyUsageCritical: c.keyUsageCritical,
    extKeyUsage: c.extKeyUsage ?? [],
    sans: { uris: c.uris, dnsNames: c.dnsNames, ipAddresses: c.ipAddresses, emails: c.emails, critical: c.sanCritical },
    ...(id
      ? {
          spiffeId: {
            id: id.toString(),
            trustDomain: id.trustDomain,
            path: id.path,
            ...(id.workload ?? {}),
            ...(id.nodeName ? { node: id.nodeName } : {}),
          },
        }
      : {}),
    ...(c.subjectKeyId ? { subjectKeyId: c.subjectKeyId } : {}),
    ...(c.authorityKeyId ? { authorityKeyId: c.authorityKeyId } : {}),
    fingerprintSha256: c.fingerprintSha256,
  };
}

export function renderCertificate(r: CertificateReport, title: string): string {
  const L: string[] = [];
  L.push(`${title}`);
  L.push(`  Subject:             ${r.subject || '(empty)'}`);
  L.push(`  Issuer:              ${r.issuer || '(empty)'}`);
  L.push(`  Serial:              ${r.serial}`);
  L.push(`  Validity:`);
  L.push(`    Not Before:        ${r.notBefore}`);
  L.push(`    Not After:         ${r.notAfter}  (${r.expired ? `EXPIRED ${r.timeLeft.replace(/^-/, '')} ago` : `${r.timeLeft} left`})`);
  L.push(`  Public Key:          ${r.keyType}`);
  L.push(`  Signature:           ${r.signatureAlgorithm}`);
  L.push(`  Basic Constraints:   CA:${r.isCa ? 'TRUE' : 'FALSE'}${r.pathLen !== undefined ? `, pathlen:${r.pathLen}` : ''}`);
  L.push(`  Key Usage:           ${r.keyUsage.join(', ') || '(none)'}${r.keyUsageCritical ? ' [critical]' : ''}`);
  L.push(`  Extended Key Usage:  ${r.extKeyUsage.join(', ') || '(none)'}`);
  const sans = [
    ...r.sans.uris.map((u) => `URI:${u}`),
    ...r.sans.dnsNames.map((d) => `DNS:${d}`),
    ...r.sans.ipAddresses.map((i) => `IP:${i}`),
    ...r.sans.emails.map((e) => `email:${e}`),
  ];
  L.push(`  Subject Alt Names:   ${sans.join(', ') || '(none)'}${r.sans.critical ? ' [critical]' : ''}`);
  if (r.spiffeId) {
    const s = r.spiffeId;
    const parts = [`trust domain ${s.trustDomain}`];
    if (s.namespace) parts.push(`namespace ${s.namespace}`, `service account ${s.serviceAccount}`);
    else if (s.node) parts.push(`node proxy ${s.node}`);
    else parts.push(`path ${s.path || '(none)'}`);
    L.push(`  SPIFFE ID:           ${s.id}`);
    L.push(`                       ${parts.join(', ')}`);
  }
  if (r.subjectKeyId) L.push(`  Subject Key ID:      ${r.subjectKeyId}`);
  if (r.authorityKeyId) L.push(`  Authority Key ID:    ${r.authorityKeyId}`);
  L.push(`  SHA-256 Fingerprint: ${r.fingerprintSha256}`);
  return L.join('\n') + '\n';
}

/** The SVID verdict on the leaf, chain[0] (a CA certificate there is refused: leaf-is-ca). */
export async function judge(chain: Certificate[], bundle: TrustBundle | undefined, now: number): Promise<InspectVerdict> {
  const leaf = chain[0];
  const svid = checkSvidLeaf(leaf, { usage: 'any' });
  const verdict: InspectVerdict = { svid: svid.ok ? { ok: true, id: svid.id.toString() } : { ok: false, reason: svid.reason, detail: svid.detail } };
  // The profile check is timeless; "valid SVID" must also mean valid now, bundle or not.
  if (svid.ok && leaf.notAfter.getTime() <= now) {
    verdict.svid = { ok: false, reason: 'expired', detail: `the certificate for ${svid.id} expired at ${leaf.notAfter.toISOString()}`, id: svid.id.toString() };
  } else if (svid.ok && leaf.notBefore.getTime() > now) {
    verdict.svid = { ok: false, reason: 'not-yet-valid', detail: `the certificate for ${svid.id} is not valid before ${leaf.notBefore.toISOString()}`, id: svid.id.toString() };
  }
  if (bundle) {
    const r = await verifySvid(chain, bundle, new Date(now), { usage: 'any' });
    verdict.bundle = r.ok ? { ok: true, path: r.path.map((c) => c.fingerprintSha256) } : { ok: false, reason: r.reason, detail: r.detail };
  }
  return verdict;
}

/** Reads FILE or standard input ("-"), size-bounded. */
async function readInput(path: string, io: CliIo): Promise<Buffer> {
  if (path === '-') return readAll(io.stdin, MAX_INPUT);
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw new WardError('WARD_CONFIG_INVALID', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (buf.length > MAX_INPUT) throw new WardError('WARD_CONFIG_INVALID', `${path} is larger than ${MAX_INPUT} bytes`);
  return buf;
}

function inputName(path: string): string {
  return path === '-' ? 'standard input' : path;
}

/** Every certificate in PEM input, or the one certificate of DER input; `name` is for messages. */
function certificatesOf(input: Buffer, name: string): Certificate[] {
  if (input.length === 0) throw new WardError('WARD_PKI_CERT_INVALID', `${name} is empty`);
  try {
    if (input.includes('-----BEGIN')) return parseCertificates(input.toString('utf8'));
  } catch (err) {
    // Name the input: "no CERTIFICATE PEM block found" alone does not say which file was meant.
    if (err instanceof WardError) throw new WardError(err.code, `${name}: ${err.message}`, { cause: err.cause });
    throw err;
  }
  try {
    return [parseCertificate(input)];
  } catch {
    // Input that is not PEM and not DER is most often the wrong file: the parser's detail would not help.
    throw new WardError('WARD_PKI_CERT_INVALID', `${name} holds neither PEM certificates nor a DER certificate`);
  }
}

export async function loadBundleFile(path: string, io: CliIo, trustDomain?: string): Promise<TrustBundle> {
  const input = await readInput(path, io);
  const text = input.toString('utf8');
  if (text.trimStart().startsWith('{')) {
    if (!trustDomain) throw new WardError('WARD_USAGE', '--trust-domain is required with a JWKS bundle');
    return TrustBundle.fromJwks(trustDomain, text);
  }
  const roots = certificatesOf(input, `--bundle ${inputName(path)}`);
  // The trust domain is the bundle's, never a guess: a root brought by the operator usually carries
  // no SPIFFE ID, and judging the leaf against a made-up one would report "foreign-trust-domain".
  const td = trustDomain ?? roots.flatMap((r) => r.uris.map((u) => SpiffeId.tryParse(u))).find((x) => x)?.trustDomain;
  if (td === undefined) {
    throw new WardError('WARD_USAGE', `--trust-domain is required: the roots in --bundle ${inputName(path)} name no trust domain (no spiffe:// URI SAN)`);
  }
  try {
    // PEM goes through fromPem, which also refuses a bundle file carrying anything but certificates.
    return input.includes('-----BEGIN') ? TrustBundle.fromPem(td, text) : new TrustBundle(td, roots);
  } catch (err) {
    if (err instanceof WardError) throw new WardError(err.code, `--bundle ${inputName(path)}: ${err.message}`, { cause: err.cause });
    throw err;
  }
}

/** Fetches the chain a TLS server presents (no verification: this is inspection, not trust). */
async function fetchChain(target: string, servername: string | undefined, timeoutMs: number): Promise<Certificate[]> {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(target);
  if (!m) throw new WardError('WARD_USAGE', `--connect wants HOST:PORT, got "${target}"`);
  const host = m[1] ?? m[2];
  const port = Number(m[3]);
  const socket = connect({ host, port, servername: servername ?? (/^[\d.]+$|:/.test(host) ? undefined : host), rejectUnauthorized: false, minVersion: 'TLSv1.2' });
  const timer = setTimeout(() => socket.destroy(new Error(`timed out after ${timeoutMs}ms`)), timeoutMs);
  try {
    await once(socket, 'secureConnect');
    const out: Certificate[] = [];
    let c: DetailedPeerCertificate | PeerCertificate | undefined = socket.getPeerCertificate(true);
    const seen = new Set<string>();
    while (c && c.raw && !seen.has(c.fingerprint256)) {
      seen.add(c.fingerprint256);
      out.push(parseCertificate(c.raw));
      c = (c as DetailedPeerCertificate).issuerCertificate;
    }
    if (out.length === 0) throw new WardError('WARD_INSPECT_CONNECT_FAILED', `${target} presented no certificate`);
    return out;
  } catch (err) {
    if (err instanceof WardError) throw err;
    throw new WardError('WARD_INSPECT_CONNECT_FAILED', `cannot complete a TLS handshake with ${target}: ${(err as Error).message}`, { cause: err });
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}

const inspect: Command = {
  name: 'cert inspect',
  summary: 'print a certificate or chain and judge it against the X.509-SVID rules',
  positionals: { min: 0, max: 1 },
  options: {
    connect: { type: 'string' },
    servername: { type: 'string' },
    bundle: { type: 'string' },
    'trust-domain': { type: 'string' },
    timeout: { type: 'string', default: '10s' },
    ...JSON_FLAG,
  },
  help: `Usage: ward cert inspect FILE|-  [--bundle FILE] [--json]
       ward cert inspect --connect HOST:PORT [--servername NAME] [--bundle FILE] [--json]

Prints every certificate in a PEM file (or DER, or standard input with "-"), or the chain a TLS
server presents: subject, issuer, serial, validity and time left, key type, SANs with the SPIFFE ID
decoded, key usage, extended key usage, basic constraints, key identifiers and SHA-256 fingerprint.
Then judges the first certificate against the X.509-SVID leaf rules and, with --bundle, validates the
chain against a trust bundle (RFC 5280 path validation plus the SVID rules).

Flags:
  --connect HOST:PORT   inspect what a TLS server presents (nothing is trusted by connecting)
  --servername NAME     SNI to send with --connect
  --bundle FILE         trust bundle: PEM roots (e.g. from "ward ca bundle") or SPIFFE JWKS
  --trust-domain TD     the bundle's trust domain: required for a JWKS bundle, and for PEM roots
                        that name none (e.g. your own root); otherwise read from the roots
  --timeout DURATION    handshake timeout for --connect, e.g. 5s (default 10s)
  --json                machine-readable output

Exit status: 0 when the leaf is a valid SVID, valid now (and chains to the bundle when given), 1 otherwise.

Examples:
  ward cert inspect svid.pem --bundle bundle.pem
  ward cert inspect --connect 127.0.0.1:8443 --bundle bundle.pem --json`,
  async run(args: ParsedArgs, io: CliIo): Promise<number> {
    const target = optional(args, 'connect');
    const file = args.positionals[0];
    if ((target === undefined) === (file === undefined)) throw new WardError('WARD_USAGE', 'give exactly one of FILE, - or --connect HOST:PORT');
    const bundlePath = optional(args, 'bundle');
    if (file === '-' && bundlePath === '-') throw new WardError('WARD_USAGE', 'standard input can feed FILE or --bundle, not both');
    const timeout = durationFlag(args, 'timeout')!;
    if (timeout <= 0) throw new WardError('WARD_USAGE', '--timeout must be more than 0s');
    const chain = target !== undefined ? await fetchChain(target, optional(args, 'servername'), timeout) : certificatesOf(await readInput(file, io), inputName(file));
    const bundle = bundlePath ? await loadBundleFile(bundlePath, io, optional(args, 'trust-domain')) : undefined;
    const now = systemClock.now();
    const reports = chain.map((c) => describeCertificate(c, now));
    const verdict = await judge(chain, bundle, now);
    const ok = verdict.svid.ok && (verdict.bundle?.ok ?? true);
    if (flag(args, 'json')) {
      writeJson(io, { certificates: reports, verdict, ok });
    } else {
      reports.forEach((r, i) => io.stdout.write(renderCertificate(r, chain.length > 1 ? `Certificate ${i + 1} of ${chain.length}${i === 0 ? ' (leaf)' : ''}:` : 'Certificate:') + '\n'));
      io.stdout.write(
        verdict.svid.ok
          ? `X.509-SVID: ✓ valid SVID for ${verdict.svid.id}\n`
          : verdict.svid.id
            ? `X.509-SVID: × not valid now (${verdict.svid.reason}): ${verdict.svid.detail}\n`
            : `X.509-SVID: × not a valid leaf SVID (${verdict.svid.reason}): ${verdict.svid.detail}\n`,
      );
      if (verdict.bundle) {
        io.stdout.write(
          verdict.bundle.ok
            ? `Bundle:     ✓ chains to a trusted root (${verdict.bundle.path!.length} certificates)\n`
            : `Bundle:     × does not validate (${verdict.bundle.reason}): ${verdict.bundle.detail}\n`,
        );
      }
    }
    return ok ? EXIT_OK : EXIT_PROBLEM;
  },
};

export const certCommands: Command[] = [inspect];
