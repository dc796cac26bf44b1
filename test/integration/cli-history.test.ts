import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createCsr, PrivateKey } from '../../core/pki/index.js';
import { ward } from '../helpers/cli.js';

async function stateWithHistory(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-history-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const state = join(dir, 'state');
  expect((await ward(['ca', 'init', '--state', state, '--trust-domain', 'example.org'])).code).toBe(0);
  const issue = (id: string, csr: string) => ward(['ca', 'issue', '--state', state, '--csr', '-', '--id', id, '--json'], { stdin: csr });
  expect((await issue('spiffe://example.org/ns/shop/sa/web', createCsr(PrivateKey.generate()))).code).toBe(0);
  expect((await issue('spiffe://example.org/ns/shop/sa/api', createCsr(PrivateKey.generate()))).code).toBe(0);
  // A CSR asking for a DNS name is refused, and the refusal is audited.
  const refused = await issue('spiffe://example.org/ns/shop/sa/api', createCsr(PrivateKey.generate(), { dnsNames: ['evil.example'] }));
  expect(refused.code).toBe(1);
  return state;
}

describe('ward ca history', () => {
  it('lists every decision newest first, filters by identity and refusals, and reads the inventory', async () => {
    const state = await stateWithHistory();
    const all = await ward(['ca', 'history', '--state', state, '--json']);
    expect(all.code).toBe(0);
    const decisions = JSON.parse(all.stdout) as { decision: string; identity: string; code?: string }[];
    expect(decisions.map((d) => d.decision)).toEqual(['refused', 'issued', 'issued']);
    expect(decisions[0].code).toBe('WARD_PKI_CSR_UNAUTHORIZED');

    const refused = await ward(['ca', 'history', '--state', state, '--refused']);
    expect(refused.stdout).toMatch(/REFUSED {2}WARD_PKI_CSR_UNAUTHORIZED: .*DNS/);
    expect(refused.stdout.trim().split('\n')).toHaveLength(1);

    const web = JSON.parse((await ward(['ca', 'history', '--state', state, '--certificates', '--identity', 'spiffe://example.org/ns/shop/sa/web', '--json'])).stdout) as { identity: string; serial: string }[];
    expect(web).toHaveLength(1);
    expect(web[0].identity).toBe('spiffe://example.org/ns/shop/sa/web');
    expect(web[0].serial).toMatch(/^[0-9a-f]+$/);

    const none = await ward(['ca', 'history', '--state', state, '--identity', 'spiffe://example.org/ns/x/sa/y']);
    expect(none.stdout).toBe('no decisions match\n');
  });

  it('refuses bad flags with usage errors', async () => {
    const state = await stateWithHistory();
    expect((await ward(['ca', 'history', '--state', state, '--limit', '0'])).code).toBe(2);
    expect((await ward(['ca', 'history', '--state', state, '--refused', '--certificates'])).code).toBe(2);
    const bad = await ward(['ca', 'history', '--state', state, '--identity', 'not-an-id']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('WARD_ID_INVALID');
  });
});
