/**
 * bench/ca: how many certificates the CA issues per second, next to how many ECDSA P-256
 * signatures node:crypto makes per second on the same machine in the same run.
 *
 * Why a ratio: these machines are shared and small, so an absolute rate says more about the
 * neighbours than about Ward. One signature is the floor of what an issuance must cost, so
 * "issuance / raw sign" is the number that tells whether the CA adds much on top (target >= 25%).
 *
 * What is measured:
 * - raw sign (the baseline): crypto.sign('sha256', ~300 bytes, P-256 KeyObject), main thread.
 * - issue, end to end: CertificateAuthority.issue() on a CA in a temp directory: the CSR parsed and
 *   its proof of possession verified, policy checked, the certificate built and signed, and the
 *   inventory and audit records written and fdatasync'ed before the promise resolves. A bounded
 *   number of requests is in flight (as under real load), so the append logs group-commit.
 *   CSRs are generated before timing starts: making them is the client's cost, not the CA's.
 * - components, for diagnosis: parseCsr alone, LeafSigner.sign alone, raw crypto.verify alone,
 *   the P-256 public-key import parseCsr does, and @peculiar/x509's X509CertificateGenerator
 *   building the same leaf (the generic-library reference). issue() itself uses the thread-pool
 *   forms (parseCsrAsync, LeafSigner.signAsync), so those are measured too, with the same number
 *   in flight: what they gain over the synchronous forms is what the other cores contribute.
 *
 * Noise: everything is warmed up first, then measured in interleaved rounds. Each round runs the
 * baseline, issuance, the baseline again, then every component; each ratio is taken against the
 * mean of that round's two baseline runs, and the reported ratio is the median over rounds. Rates
 * are timed with performance.now() (monotonic); the CA itself runs on the system clock.
 */
import 'reflect-metadata';
import { createPublicKey, randomBytes, sign as cryptoSign, verify as cryptoVerify, webcrypto } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as x509 from '@peculiar/x509';
import { CertificateAuthority } from '../ca/index.js';
import { systemClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { silentLogger } from '../core/logger.js';
import { createRegistry } from '../core/metrics.js';
import { createCsr, createIntermediate, createRoot, LeafSigner, parseCertificate, parseCsr, parseCsrAsync, PrivateKey } from '../core/pki/index.js';

export interface CaBenchOptions {
  /** Smaller counts and a single round: a smoke test that the benchmark still runs. */
  quick?: boolean;
  /** Progress lines (not results); the runner sends them to stderr. */
  progress?: (line: string) => void;
}

export interface CaBenchRow {
  name: string;
  /** Median over rounds. */
  opsPerSec: number;
  usPerOp: number;
  /** Median over rounds of (opsPerSec / the raw-sign rate measured in the same round). */
  ratioToRawSign: number;
  /** One rate per round, in round order (raw sign: before and after issuance in each round). */
  samples: number[];
}

export interface CaBenchResult {
  bench: 'ca';
  quick: boolean;
  rounds: number;
  inFlight: number;
  rows: CaBenchRow[];
  /** Median over rounds of (issue rate / that round's raw-sign rate). */
  issuanceRatio: number;
  /** issue / raw sign of each round on its own, to show how noisy the run was. */
  roundRatios: number[];
  target: number;
  belowTarget: boolean;
  /** Median share of issuance time the event loop was busy; below ~1, requests waited on fsync. */
  issueLoopBusy: number;
  /**
   * Cost of one op, in raw signatures (1 / ratio); rawSignUs converts to microseconds on this run.
   * oneCoreCeiling: the best issuance / raw sign possible if parseCsr and LeafSigner.sign ran on
   * one core and nothing else cost anything; past it, only other cores (the thread pool) help.
   */
  breakdown: { rawSignUs: number; issue: number; parseCsr: number; rawVerify: number; keyImport: number; leafSign: number; oneCoreCeiling: number };
  inventory: { records: number; bytes: number };
  setupSeconds: number;
}

const TARGET = 0.25;
const TRUST_DOMAIN = 'bench.ward.test';
const REQUESTER = `spiffe://${TRUST_DOMAIN}/ward/node/bench-node`;
/** Distinct workload identities the CSRs ask for (the CA does not care; the inventory does). */
const IDENTITIES = 64;
/** Size of the buffer the baseline signs: about a Ward leaf's TBSCertificate. */
const TBS_LIKE_BYTES = 300;

interface Plan {
  rounds: number;
  /** Duration of each synchronous measurement in each round. */
  syncMs: number;
  /** Issuances per round, and a cap on the round's duration in case the machine is very slow. */
  issuePerRound: number;
  issueMaxMs: number;
  inFlight: number;
  /** @peculiar/x509 is ~100x slower; a short run with a floor on the count is enough. */
  genericMs: number;
  genericMinOps: number;
  warmupMs: number;
  warmupIssues: number;
}

// Full: 5 rounds of about 9 x 0.25 s plus ~0.5-1 s of issuance, after ~4 s of CSR generation and
// warm-up: 20-30 s in all. Five rounds rather than three because issuance, which uses the disk
// and both cores, swings far more than the baseline on a shared machine, and a median of five
// shrugs off two bad rounds.
const FULL: Plan = { rounds: 5, syncMs: 250, issuePerRound: 1500, issueMaxMs: 4000, inFlight: 64, genericMs: 250, genericMinOps: 20, warmupMs: 150, warmupIssues: 300 };
const QUICK: Plan = { rounds: 1, syncMs: 50, issuePerRound: 200, issueMaxMs: 1000, inFlight: 64, genericMs: 50, genericMinOps: 5, warmupMs: 20, warmupIssues: 64 };

interface Rate {
  ops: number;
  seconds: number;
  /** Share of the time the event loop was busy (issuance only): the rest is waiting for fsync. */
  loopBusy?: number;
}

const perSecond = (r: Rate): number => r.ops / r.seconds;

const RAW_SIGN = 'raw sign';
const ISSUE = 'issue (end to end)';
const LEAF_SIGN = 'LeafSigner.sign';
const RAW_VERIFY = 'raw verify';
const KEY_IMPORT = 'P-256 key import (JWK)';
const PARSE = 'parseCsr';

function push(m: Map<string, number[]>, key: string, ...values: number[]): void {
  const list = m.get(key);
  if (list) list.push(...values);
  else m.set(key, values);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Runs `op` in batches until `durationMs` has passed; reading the clock per batch keeps its cost out. */
function timeSync(durationMs: number, op: (i: number) => void): Rate {
  const start = performance.now();
  let ops = 0;
  let now = start;
  do {
    for (let j = 0; j < 16; j++) op(ops++);
    now = performance.now();
  } while (now - start < durationMs);
  return { ops, seconds: (now - start) / 1000 };
}

/** `inFlight` ops outstanding at any time, started until `durationMs` has passed. */
async function timeConcurrent(durationMs: number, inFlight: number, op: (i: number) => Promise<unknown>): Promise<Rate> {
  const start = performance.now();
  let ops = 0;
  const worker = async (): Promise<void> => {
    while (performance.now() - start < durationMs) await op(ops++);
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return { ops, seconds: (performance.now() - start) / 1000 };
}

/** One awaited op at a time, for at least `durationMs` and at least `minOps` ops. */
async function timeAsync(durationMs: number, minOps: number, op: (i: number) => Promise<unknown>): Promise<Rate> {
  const start = performance.now();
  let ops = 0;
  let now = start;
  while (ops < minOps || now - start < durationMs) {
    await op(ops++);
    now = performance.now();
  }
  return { ops, seconds: (now - start) / 1000 };
}

interface IssueWork {
  csr: string;
  id: SpiffeId;
}

/**
 * Issues work[from..from+count) with `inFlight` requests outstanding at any time (each worker
 * starts its next request as soon as its previous one is durable), stopping early at `maxMs`.
 */
async function timeIssue(ca: CertificateAuthority, work: IssueWork[], from: number, count: number, inFlight: number, maxMs: number): Promise<Rate> {
  const end = Math.min(from + count, work.length);
  let next = from;
  let done = 0;
  const start = performance.now();
  const deadline = start + maxMs;
  const elu = performance.eventLoopUtilization();
  const worker = async (): Promise<void> => {
    while (next < end && performance.now() < deadline) {
      const w = work[next++];
      await ca.issue({ csr: w.csr, identity: w.id, requester: REQUESTER });
      done++;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return { ops: done, seconds: (performance.now() - start) / 1000, loopBusy: performance.eventLoopUtilization(elu).utilization };
}

function randomSerialHex(): string {
  const b = randomBytes(16);
  b[0] = (b[0] & 0x3f) | 0x40; // positive, no leading zero: same rule as Ward's serials
  return b.toString('hex');
}

export async function runCaBench(opts: CaBenchOptions = {}): Promise<CaBenchResult> {
  const plan = opts.quick ? QUICK : FULL;
  const progress = opts.progress ?? (() => undefined);
  const setupStart = performance.now();

  // --- Material, all made before any timing.
  const now = systemClock.now();
  const rootKey = PrivateKey.generate();
  const issuerKey = PrivateKey.generate();
  const root = createRoot({ key: rootKey, trustDomain: TRUST_DOMAIN, notBefore: new Date(now - 60_000), notAfter: new Date(now + 365 * 86_400_000) });
  const issuerCert = createIntermediate({
    issuer: { cert: root, key: rootKey },
    publicKey: issuerKey.publicKey,
    trustDomain: TRUST_DOMAIN,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 180 * 86_400_000),
  });
  const signer = new LeafSigner({ cert: issuerCert, key: issuerKey });
  const leafNotBefore = new Date(now - 60_000);
  const leafNotAfter = new Date(now + 3_600_000);
  const tbsLike = randomBytes(TBS_LIKE_BYTES);
  const tbsSignature = cryptoSign('sha256', tbsLike, { key: issuerKey.keyObject, dsaEncoding: 'der' });

  const ids = Array.from({ length: IDENTITIES }, (_, i) => SpiffeId.workload(TRUST_DOMAIN, 'bench', `svc-${i}`));
  const csrCount = plan.warmupIssues + plan.rounds * plan.issuePerRound;
  progress(`ca: generating ${csrCount} CSRs (client-side cost, not timed)`);
  const work: IssueWork[] = [];
  for (let i = 0; i < csrCount; i++) {
    const id = ids[i % ids.length];
    work.push({ csr: createCsr(PrivateKey.generate(), { uri: id.toString() }), id });
  }
  // The components reuse a slice of the same CSRs: parseCsr caches nothing, so repeats cost the same.
  const pool = work.slice(0, Math.min(work.length, 512));
  const spkis = pool.map((w) => parseCsr(w.csr).publicKeyDer);
  const jwks = spkis.map((spki) => ({
    kty: 'EC',
    crv: 'P-256',
    x: spki.toString('base64url', 27, 59),
    y: spki.toString('base64url', 59, 91),
  }));

  // @peculiar/x509 signs through WebCrypto, so the issuer key is imported there once.
  const generic = {
    signingKey: await webcrypto.subtle.importKey('pkcs8', issuerKey.keyObject.export({ format: 'der', type: 'pkcs8' }), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']),
    issuerName: new x509.X509Certificate(new Uint8Array(issuerCert.der)).subjectName,
    issuerKeyId: issuerCert.subjectKeyId ?? '',
    spkis: spkis.map((s) => new Uint8Array(s)),
  };
  // What a caller of the generic library writes per leaf: the same profile LeafSigner produces.
  const genericLeaf = async (i: number): Promise<unknown> => {
    const spki = generic.spkis[i % generic.spkis.length];
    return x509.X509CertificateGenerator.create({
      serialNumber: randomSerialHex(),
      subject: new x509.Name(''),
      issuer: generic.issuerName,
      notBefore: leafNotBefore,
      notAfter: leafNotAfter,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      publicKey: spki,
      signingKey: generic.signingKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: ids[i % ids.length].toString() }], true),
        await x509.SubjectKeyIdentifierExtension.create(spki),
        new x509.AuthorityKeyIdentifierExtension(generic.issuerKeyId, false),
      ],
    });
  };

  const ops = {
    rawSign: () => void cryptoSign('sha256', tbsLike, { key: issuerKey.keyObject, dsaEncoding: 'der' }),
    parseCsr: (i: number) => void parseCsr(pool[i % pool.length].csr),
    leafSign: (i: number) =>
      void signer.sign({ publicKeyDer: spkis[i % spkis.length], id: ids[i % ids.length], notBefore: leafNotBefore, notAfter: leafNotAfter }),
    rawVerify: () => {
      if (!cryptoVerify('sha256', tbsLike, { key: issuerKey.publicKey, dsaEncoding: 'der' }, tbsSignature)) throw new Error('BUG: baseline signature does not verify');
    },
    keyImport: (i: number) => void createPublicKey({ key: jwks[i % jwks.length], format: 'jwk' }),
    parseCsrAsync: (i: number) => parseCsrAsync(pool[i % pool.length].csr),
    leafSignAsync: (i: number) =>
      signer.signAsync({ publicKeyDer: spkis[i % spkis.length], id: ids[i % ids.length], notBefore: leafNotBefore, notAfter: leafNotAfter }),
  };
  const asyncName = (name: string): string => `${name}Async (${plan.inFlight} in flight)`;

  // --- The CA under test, in a temp dir removed whatever happens.
  const dir = await mkdtemp(join(tmpdir(), 'ward-bench-ca-'));
  let ca: CertificateAuthority | undefined;
  try {
    const stateDir = join(dir, 'state');
    await CertificateAuthority.init({ stateDir, trustDomain: TRUST_DOMAIN, clock: systemClock });
    ca = await CertificateAuthority.open({ stateDir, clock: systemClock, logger: silentLogger(), registry: createRegistry() });

    // --- Warm-up: JIT, lazy init in OpenSSL, the log files' first writes.
    progress('ca: warming up');
    const first = await ca.issue({ csr: work[0].csr, identity: work[0].id, requester: REQUESTER });
    // A benchmark of a CA that issues the wrong thing would be worthless; check one result.
    if (!parseCertificate(first.certPem).uris.includes(work[0].id.toString())) throw new Error('BUG: issued certificate does not carry the requested identity');
    let cursor = 1;
    cursor += (await timeIssue(ca, work, cursor, plan.warmupIssues - 1, plan.inFlight, plan.issueMaxMs)).ops;
    timeSync(plan.warmupMs, ops.rawSign);
    timeSync(plan.warmupMs, ops.parseCsr);
    timeSync(plan.warmupMs, ops.leafSign);
    timeSync(plan.warmupMs, ops.rawVerify);
    timeSync(plan.warmupMs, ops.keyImport);
    await timeConcurrent(plan.warmupMs, plan.inFlight, ops.parseCsrAsync);
    await timeConcurrent(plan.warmupMs, plan.inFlight, ops.leafSignAsync);
    await timeAsync(plan.warmupMs, plan.genericMinOps, genericLeaf);
    const setupSeconds = (performance.now() - setupStart) / 1000;

    // --- Interleaved rounds. Each round brackets issuance between two baseline runs and measures
    // every component right after, so each rate is compared with the signing speed of that moment:
    // on a shared machine the absolute rates swing by 2x between rounds, the ratios much less.
    const samples = new Map<string, number[]>();
    const roundRatios = new Map<string, number[]>();
    const loopBusy: number[] = [];
    for (let round = 0; round < plan.rounds; round++) {
      progress(`ca: round ${round + 1}/${plan.rounds}`);
      const measured: [string, Rate][] = [];
      const before = timeSync(plan.syncMs, ops.rawSign);
      const issued = await timeIssue(ca, work, cursor, plan.issuePerRound, plan.inFlight, plan.issueMaxMs);
      const after = timeSync(plan.syncMs, ops.rawSign);
      cursor += issued.ops;
      loopBusy.push(issued.loopBusy ?? 1);
      measured.push([ISSUE, issued]);
      measured.push([PARSE, timeSync(plan.syncMs, ops.parseCsr)]);
      measured.push([asyncName(PARSE), await timeConcurrent(plan.syncMs, plan.inFlight, ops.parseCsrAsync)]);
      measured.push([LEAF_SIGN, timeSync(plan.syncMs, ops.leafSign)]);
      measured.push([asyncName(LEAF_SIGN), await timeConcurrent(plan.syncMs, plan.inFlight, ops.leafSignAsync)]);
      measured.push([RAW_VERIFY, timeSync(plan.syncMs, ops.rawVerify)]);
      measured.push([KEY_IMPORT, timeSync(plan.syncMs, ops.keyImport)]);
      measured.push(['@peculiar/x509 generator', await timeAsync(plan.genericMs, plan.genericMinOps, genericLeaf)]);
      const baseline = (perSecond(before) + perSecond(after)) / 2;
      push(samples, RAW_SIGN, perSecond(before), perSecond(after));
      push(roundRatios, RAW_SIGN, 1);
      for (const [name, rate] of measured) {
        push(samples, name, perSecond(rate));
        push(roundRatios, name, perSecond(rate) / baseline);
      }
    }

    // issue() resolves only after its inventory record is durable, so the count must match exactly.
    const records = ca.counts().certificates;
    if (records !== cursor) throw new Error(`BUG: ${cursor} certificates issued but the inventory holds ${records}`);
    const bytes = (await stat(ca.inventory.path)).size;

    const rows: CaBenchRow[] = [...samples].map(([name, s]) => {
      const opsPerSec = median(s);
      return { name, opsPerSec, usPerOp: 1e6 / opsPerSec, ratioToRawSign: median(roundRatios.get(name)!), samples: s };
    });
    // Cost of one op in raw signatures (1 / ratio): a unit that survives the machine's noise.
    const cost = (name: string): number => 1 / rows.find((r) => r.name === name)!.ratioToRawSign;
    const issuanceRatio = rows.find((r) => r.name === ISSUE)!.ratioToRawSign;
    return {
      bench: 'ca',
      quick: !!opts.quick,
      rounds: plan.rounds,
      inFlight: plan.inFlight,
      rows,
      issuanceRatio,
      roundRatios: roundRatios.get(ISSUE)!,
      target: TARGET,
      belowTarget: issuanceRatio < TARGET,
      issueLoopBusy: median(loopBusy),
      breakdown: {
        rawSignUs: 1e6 / median(samples.get(RAW_SIGN)!),
        issue: cost(ISSUE),
        parseCsr: cost(PARSE),
        rawVerify: cost(RAW_VERIFY),
        keyImport: cost(KEY_IMPORT),
        leafSign: cost(LEAF_SIGN),
        oneCoreCeiling: 1 / (cost(PARSE) + cost(LEAF_SIGN)),
      },
      inventory: { records, bytes },
      setupSeconds,
    };
  } finally {
    await ca?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;

/** The human-readable report: a table, the headline ratio, and where an issuance's time goes. */
export function formatCaBench(r: CaBenchResult): string {
  const header = ['benchmark', 'ops/s', 'µs/op', 'vs raw sign', 'per round (ops/s)'];
  const body = r.rows.map((row) => [
    row.name,
    Math.round(row.opsPerSec).toLocaleString('en-US'),
    row.usPerOp.toFixed(1),
    pct(row.ratioToRawSign),
    row.samples.map((s) => Math.round(s).toLocaleString('en-US')).join(' / '),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...body.map((b) => b[c].length)));
  const line = (cells: string[]): string => cells.map((cell, c) => (c === 0 || c === 4 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ').trimEnd();
  const b = r.breakdown;
  const signs = (n: number): string => `${n.toFixed(1)} (${(n * b.rawSignUs).toFixed(0)} µs)`;
  const out = [
    `ca: ${r.rounds} round(s), medians; issue with ${r.inFlight} in flight; inventory ${r.inventory.records} records, ${(r.inventory.bytes / 1024).toFixed(0)} KiB written and fsynced`,
    line(header),
    line(widths.map((w) => '-'.repeat(w))),
    ...body.map(line),
    '',
    `cost in raw signs (µs at this run's sign rate): issuance ${signs(b.issue)}; parseCsr ${signs(b.parseCsr)} = raw verify ${b.rawVerify.toFixed(1)} + key import ${b.keyImport.toFixed(1)} + PEM/DER ${(b.parseCsr - b.rawVerify - b.keyImport).toFixed(1)}; LeafSigner.sign ${signs(b.leafSign)}`,
    `one-core ceiling: parseCsr + LeafSigner.sign alone allow at most ${pct(b.oneCoreCeiling)}; beyond that only the thread pool (other cores) helps`,
    `event loop busy ${pct(r.issueLoopBusy)} of the issuance time (idle: every request in flight waiting on the thread pool, for crypto or fsync)`,
    `per-round issuance / raw sign: ${r.roundRatios.map(pct).join(', ')}`,
    `issuance / raw sign = ${pct(r.issuanceRatio)} (target >= ${pct(r.target).replace('.0%', '%')})${r.belowTarget ? '  BELOW TARGET' : ''}`,
  ];
  return out.join('\n');
}
