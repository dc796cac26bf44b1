/**
 * x509-limbo (C2SP, commit ddc40b4): an external path-validation conformance suite nobody on this
 * project wrote. Every case runs through validatePath — the RFC 5280 layer. (The SVID layer would
 * trivially refuse these DNS-named leaves, so the honest test is on the path layer.)
 *
 * The rule: no case expected FAILURE is accepted, except those in ACCEPTED_FAILURES, each with its
 * reason. Ward may be stricter than a case expects SUCCESS, never looser; those refusals are listed
 * in REFUSED_SUCCESSES with their reasons. Both tables are checked both ways: a listed case that
 * stops behaving as listed fails its test, so the tables cannot go stale.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseCertificate, type Certificate } from './certificate.js';
import { validatePath } from './verify.js';

const LIMBO_JSON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../shared/testdata/x509-limbo/limbo.json');

/** Cases with validation_time null are evaluated at this fixed instant (every such certificate covers it). */
const DEFAULT_VALIDATION_TIME = new Date('2024-01-01T00:00:00Z');
/** Every case, the pathological ones included, must finish well inside this. */
const CASE_TIME_LIMIT_MS = 3000;

interface LimboCase {
  id: string;
  description: string;
  validation_kind: 'SERVER' | 'CLIENT';
  trusted_certs: string[];
  untrusted_intermediates: string[];
  peer_certificate: string;
  validation_time: string | null;
  key_usage: string[] | null;
  extended_key_usage: string[] | null;
  expected_result: 'SUCCESS' | 'FAILURE';
  max_chain_depth: number | null;
}

const HOST_NAME = 'host-name matching (RFC 6125): Ward names peers by SPIFFE ID (URI SAN), never by DNS name, so it does no DNS matching';

/** Cases expected FAILURE that validatePath accepts, and why that is right for Ward. */
const ACCEPTED_FAILURES: Record<string, string> = {
  'webpki::san::mismatch-domain-san': HOST_NAME,
  'webpki::san::mismatch-subdomain-san': HOST_NAME,
  'webpki::san::mismatch-subdomain-apex-san': HOST_NAME,
  'webpki::san::mismatch-apex-subdomain-san': HOST_NAME,
  'webpki::san::wildcard-match-across-labels-san': HOST_NAME,
  'webpki::san::public-suffix-wildcard-san': `${HOST_NAME}; "*.com" is well-formed, only a public-suffix list makes it wrong`,
  'webpki::san::no-san': `${HOST_NAME}; RFC 5280 does not require a SAN (Ward's SVID layer refuses such a leaf: 'no-uri-san')`,
  'webpki::san::san-critical-with-nonempty-subject':
    'CA/B Forum-only rule (BR 7.1.2.7.12); RFC 5280 4.2.1.6 and X.509-SVID allow a critical SAN with a non-empty subject',
  'webpki::eku::ee-without-eku':
    'CA/B Forum-only rule; contradicts rfc5280::eku::ee-without-eku (SUCCESS). RFC 5280 4.2.1.12 and X.509-SVID §4.4 make EKU optional on a leaf',
  'webpki::eku::ee-critical-eku': 'CA/B Forum-only rule (BR 7.1.2.7.6); X.509-SVID §4.4 says a leaf EKU "MAY be marked as critical"',
  'webpki::eku::ee-anyeku':
    'CA/B Forum-only rule (BR 7.1.2.7.10); the leaf also lists serverAuth, which is what is asked for, and RFC 5280 allows anyExtendedKeyUsage beside it',
  'webpki::eku::root-has-eku':
    'CA/B Forum-only rule (BR 7.1.2.1.2); X.509-SVID §4.4 lets signing certificates carry EKU, and this root lists serverAuth, the usage asked for',
};

/** Cases expected SUCCESS that validatePath refuses, and why the stricter verdict is right for Ward. */
const REFUSED_SUCCESSES: Record<string, string> = {
  'webpki::nc::permitted-dns-match-noncritical':
    'RFC 5280 4.2.1.10 requires name constraints to be critical (the CA/B exception is for legacy web clients); the RFC 5280 twin rfc5280::nc::permitted-dns-match-noncritical expects FAILURE',
};

const suite: { testcases: LimboCase[] } = JSON.parse(readFileSync(LIMBO_JSON, 'utf8'));
const cases = suite.testcases;

interface Verdict {
  accepted: boolean;
  reason?: string;
  detail?: string;
  ms: number;
}

/** Runs one case the way a relying party would: parse, build and validate, check the usages asked for. */
async function run(c: LimboCase): Promise<Verdict> {
  const started = performance.now();
  const done = (accepted: boolean, reason?: string, detail?: string): Verdict => ({ accepted, reason, detail, ms: performance.now() - started });
  let leaf: Certificate;
  try {
    leaf = parseCertificate(c.peer_certificate);
  } catch (err) {
    return done(false, 'malformed', `parseCertificate: ${(err as Error).message}`);
  }
  // A trusted or untrusted certificate Ward cannot parse cannot be part of any path: leave it out.
  const parseAll = (pems: string[]): Certificate[] =>
    pems.flatMap((pem) => {
      try {
        return [parseCertificate(pem)];
      } catch {
        return [];
      }
    });
  if ((c.extended_key_usage ?? []).length > 1) throw new Error(`${c.id}: more than one expected EKU is not supported by this harness`);
  const r = await validatePath({
    leaf,
    intermediates: parseAll(c.untrusted_intermediates),
    roots: parseAll(c.trusted_certs),
    at: c.validation_time ? new Date(c.validation_time) : DEFAULT_VALIDATION_TIME,
    maxDepth: c.max_chain_depth ?? undefined,
    extendedKeyUsage: c.extended_key_usage?.[0],
  });
  if (!r.ok) return done(false, r.reason, r.detail);
  // The expected key usage (a webpki relying-party setting) when the leaf restricts its key usage.
  for (const ku of c.key_usage ?? []) {
    if (leaf.keyUsage && !leaf.keyUsage.includes(ku)) return done(false, 'key-usage', `leaf lacks ${ku}`);
  }
  return done(true);
}

const verdicts = new Map<string, Verdict>();
async function verdictOf(c: LimboCase): Promise<Verdict> {
  let v = verdicts.get(c.id);
  if (!v) {
    v = await run(c);
    verdicts.set(c.id, v);
  }
  return v;
}

describe('x509-limbo through validatePath', () => {
  it('loads the whole suite', () => {
    expect(cases.length).toBe(135);
    expect(new Set(cases.map((c) => c.id)).size).toBe(cases.length);
  });

  it('lists every exception with a reason, and only cases that exist with the matching expectation', () => {
    const byId = new Map(cases.map((c) => [c.id, c]));
    for (const [id, reason] of Object.entries(ACCEPTED_FAILURES)) {
      expect(byId.get(id)?.expected_result, id).toBe('FAILURE');
      expect(reason.length, id).toBeGreaterThan(20);
    }
    for (const [id, reason] of Object.entries(REFUSED_SUCCESSES)) {
      expect(byId.get(id)?.expected_result, id).toBe('SUCCESS');
      expect(reason.length, id).toBeGreaterThan(20);
    }
  });

  it.each(cases.map((c) => [c.id, c] as const))('%s', async (id, c) => {
    const v = await verdictOf(c);
    expect(v.ms, `${id} took ${v.ms.toFixed(0)} ms`).toBeLessThan(CASE_TIME_LIMIT_MS);
    if (c.expected_result === 'FAILURE') {
      if (ACCEPTED_FAILURES[id]) {
        // Listed: accepted on purpose. If Ward starts refusing it, the entry must go.
        expect(v.accepted, `${id} is listed in ACCEPTED_FAILURES but was refused (${v.reason}); remove the entry`).toBe(true);
      } else {
        expect(v.accepted, `${id} expects FAILURE but validatePath accepted it: ${c.description}`).toBe(false);
      }
    } else if (REFUSED_SUCCESSES[id]) {
      expect(v.accepted, `${id} is listed in REFUSED_SUCCESSES but was accepted; remove the entry`).toBe(false);
    } else {
      expect(v.accepted, `${id} expects SUCCESS but was refused: ${v.reason}: ${v.detail}`).toBe(true);
    }
  });

  it('summary: refusals of FAILURE cases, acceptances of SUCCESS cases, exceptions with reasons', async () => {
    const rows: Record<string, { total: number; ward_agrees: number; exceptions: number }> = {};
    for (const c of cases) {
      const v = await verdictOf(c);
      const key = `${c.expected_result} ${c.id.split('::')[0]}`;
      rows[key] ??= { total: 0, ward_agrees: 0, exceptions: 0 };
      rows[key].total++;
      if (v.accepted === (c.expected_result === 'SUCCESS')) rows[key].ward_agrees++;
      else rows[key].exceptions++;
    }
    const failures = cases.filter((c) => c.expected_result === 'FAILURE');
    const successes = cases.filter((c) => c.expected_result === 'SUCCESS');
    const refused = failures.filter((c) => !verdicts.get(c.id)!.accepted).length;
    const refusedAtParse = failures.filter((c) => verdicts.get(c.id)!.detail?.startsWith('parseCertificate:')).map((c) => c.id);
    const accepted = successes.filter((c) => verdicts.get(c.id)!.accepted).length;
    const slowest = cases.reduce((a, c) => (verdicts.get(c.id)!.ms > verdicts.get(a.id)!.ms ? c : a));

    console.log(`x509-limbo: FAILURE cases refused ${refused}/${failures.length} (${refusedAtParse.length} already by parseCertificate: ` +
      `${refusedAtParse.join(', ')}); SUCCESS cases accepted ${accepted}/${successes.length}; ` +
      `slowest ${slowest.id} ${verdicts.get(slowest.id)!.ms.toFixed(1)} ms`);
    console.table(rows);
    console.table(Object.entries(ACCEPTED_FAILURES).map(([id, reason]) => ({ 'FAILURE case accepted': id, reason })));
    console.table(Object.entries(REFUSED_SUCCESSES).map(([id, reason]) => ({ 'SUCCESS case refused': id, reason, 'Ward says': verdicts.get(id)!.reason })));

    expect(refused).toBe(failures.length - Object.keys(ACCEPTED_FAILURES).length);
    expect(accepted).toBe(successes.length - Object.keys(REFUSED_SUCCESSES).length);
  });
});
