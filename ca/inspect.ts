/**
 * The CA report behind `ward ca inspect`: the same object whether read from the state directory
 * (`--state`) or from a running CA's admin endpoint (`--server`, GET /v1/status), so both forms print
 * the same thing. Warnings are computed by the reader against its own threshold, from the data here.
 */
import type { CertificateAuthority } from './authority.js';
import type { CaCertSummary, RotationStatus } from './rotation.js';
import type { InventoryRecord } from './inventory.js';
import type { AuditRecord } from './audit.js';
import type { CaCounts } from './authority.js';
import { formatDuration } from '../core/clock.js';

export interface CaCertReport {
  role: 'root' | 'intermediate';
  fingerprint: string;
  subject: string;
  notBefore: string;
  notAfter: string;
  /** lifecycle: active | next (prepared) | previous (rotated out, not retired) */
  state: string;
  origin: 'generated' | 'byo';
  inBundle: boolean;
  active: boolean;
}

export interface CaReport {
  trustDomain: string;
  mode: string;
  generatedAt: string;
  certificates: CaCertReport[];
  activeIssuer: string;
  rotation: { phase: RotationStatus['phase']; kind?: string; retireAfter?: string; retireReady: boolean };
  bundleSequence: number;
  counts: CaCounts;
  latestIssued: InventoryRecord[];
  latestRefused: AuditRecord[];
}

export async function describeAuthority(ca: CertificateAuthority, now: number, latest = 10): Promise<CaReport> {
  const st = ca.rotation.status();
  const bundleRoots = new Set(st.bundleRoots);
  const active = st.active.issuer.fingerprint;
  const certs: CaCertReport[] = [];
  const add = (role: CaCertReport['role'], s: CaCertSummary) => {
    if (certs.some((c) => c.fingerprint === s.fingerprint)) return;
    certs.push({
      role,
      fingerprint: s.fingerprint,
      subject: s.subject,
      notBefore: s.notBefore.toISOString(),
      notAfter: s.notAfter.toISOString(),
      state: s.state,
      origin: s.origin,
      inBundle: role === 'root' && bundleRoots.has(s.fingerprint),
      active: s.fingerprint === active || (role === 'root' && s.fingerprint === st.active.root.fingerprint),
    });
  };
  for (const pair of [st.active, st.next, st.previous]) {
    if (!pair) continue;
    add('root', pair.root);
    add('intermediate', pair.issuer);
  }
  return {
    trustDomain: ca.trustDomain,
    mode: ca.mode,
    generatedAt: new Date(now).toISOString(),
    certificates: certs,
    activeIssuer: active,
    rotation: { phase: st.phase, kind: st.kind, retireAfter: st.retireAfter?.toISOString(), retireReady: st.retireReady },
    bundleSequence: st.bundleSequence,
    counts: ca.counts(),
    latestIssued: await ca.inventory.query({ limit: latest }),
    latestRefused: await ca.audit.query({ decision: 'refused', limit: latest }),
  };
}

export interface CaWarning {
  level: 'warning' | 'error';
  message: string;
}

/** "400d" rather than "400d 0h". */
function roughly(ms: number): string {
  return formatDuration(ms).replace(/ 0[hms]$/, '');
}

/** What deserves an operator's attention: expiry within `warnWithinMs`, expired material, ... */
export function caWarnings(r: CaReport, now: number, warnWithinMs: number): CaWarning[] {
  const out: CaWarning[] = [];
  for (const c of r.certificates) {
    const left = Date.parse(c.notAfter) - now;
    const what = `${c.role} ${c.fingerprint.slice(0, 23)} (${c.state})`;
    if (left <= 0) out.push({ level: 'error', message: `${what} expired at ${c.notAfter}` });
    else if (left < warnWithinMs && c.state !== 'previous') {
      out.push({ level: 'warning', message: `${what} expires at ${c.notAfter}, in ${roughly(left)} (within the ${roughly(warnWithinMs)} warning threshold)` });
    }
    if (Date.parse(c.notBefore) > now) out.push({ level: c.active ? 'error' : 'warning', message: `${what} is not valid until ${c.notBefore}` });
  }
  if (r.rotation.phase === 'activated' && r.rotation.retireReady) {
    out.push({ level: 'warning', message: 'a rotation is activated and the old material can be retired now: `ward ca rotate retire`' });
  }
  return out;
}
