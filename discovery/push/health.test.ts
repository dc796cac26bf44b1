import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../core/clock.js';
import { createRegistry, type Registry } from '../../core/metrics.js';
import { EXAMPLE_WARD_YAML } from '../example.js';
import { parseWardYaml } from '../ward-yaml.js';
import { HealthAggregator, parseHealthReport, type StreamClientInfo } from './health.js';

const model = parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml');
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';
const NODE_A = 'spiffe://cluster.local/ward/node/node-a';
const NODE_B = 'spiffe://cluster.local/ward/node/node-b';
const INGRESS = 'spiffe://cluster.local/ns/ward-system/sa/ward-ingress';
const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const inHours = (h: number) => new Date(T0 + h * 3_600_000).toISOString();

function setup(o: { staleAfterMs?: number; retainMs?: number } = {}) {
  const clock = new ManualClock(T0);
  const registry = createRegistry();
  const agg = new HealthAggregator({ clock, registry, ...o });
  return { clock, registry, agg };
}

const streams = (...nodes: string[]): StreamClientInfo[] =>
  nodes.map((n) => ({ identity: `spiffe://cluster.local/ward/node/${n}`, node: n, view: 'node', sentVersion: 7, ackedVersion: 7, nacks: 0 }));

const reportA = {
  node: 'node-a',
  ejected: [],
  localWorkloads: [
    { workload: 'shop/web-1', healthy: true },
    { workload: 'shop/api-1', healthy: false, reason: 'readiness probe failed' },
  ],
  certificates: [
    { identity: NODE_A, notAfter: inHours(1) },
    { identity: WEB, notAfter: inHours(2) },
    { identity: API, notAfter: inHours(3) },
  ],
};

async function metric(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getSingleMetric(name)?.get())?.values ?? [];
  return m.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}

describe('HealthAggregator', () => {
  it('keeps a node report and reflects it in the mesh status', async () => {
    const { agg, registry } = setup();
    expect(agg.receive({ identity: NODE_A, node: 'node-a' }, reportA, model)).toEqual({ status: 204 });
    const s = agg.meshStatus(model, { version: 7, clients: streams('node-a') });
    expect(s.version).toBe(7);
    expect(s.trustDomain).toBe('cluster.local');
    expect(s.clients).toEqual([{ identity: NODE_A, node: 'node-a', view: 'node', connected: true, sentVersion: 7, ackedVersion: 7, nacks: 0, lastReport: new Date(T0).toISOString() }]);
    const a = s.nodes.find((n) => n.name === 'node-a')!;
    expect(a).toMatchObject({ connected: true, ackedVersion: 7, soonestExpiry: inHours(1) });
    expect(a.certificates.map((c) => c.identity)).toEqual([API, WEB, NODE_A].sort());
    expect(s.nodes.find((n) => n.name === 'node-b')).toEqual({ name: 'node-b', address: '127.0.10.2', zone: 'zone-b', connected: false, ackedVersion: 0, certificates: [] });
    expect(s.workloads.find((w) => w.name === 'web-1')).toEqual({ name: 'web-1', namespace: 'shop', identity: WEB, node: 'node-a', healthy: true, certificateNotAfter: inHours(2) });
    expect(s.workloads.find((w) => w.name === 'api-1')).toMatchObject({ healthy: false, reason: 'readiness probe failed', certificateNotAfter: inHours(3) });
    expect(s.workloads.find((w) => w.name === 'web-2')).toEqual({ name: 'web-2', namespace: 'shop', identity: WEB, node: 'node-b' });
    expect(s.services).toEqual([
      { name: 'web', namespace: 'shop', endpoints: { total: 2, healthy: 1, ejected: 0 } },
      { name: 'api', namespace: 'shop', endpoints: { total: 2, healthy: 0, ejected: 0 } },
    ]);
    expect(await metric(registry, 'ward_discovery_health_reports_total', { result: 'accepted' })).toBe(1);
  });

  it('refuses a report naming another node, another node\'s workload or a foreign certificate identity', async () => {
    const { agg, registry } = setup();
    const from = { identity: NODE_A, node: 'node-a' };
    const refused = [
      { ...reportA, localWorkloads: [...reportA.localWorkloads, { workload: 'shop/web-2', healthy: false }] },
      { ...reportA, node: 'node-b' },
      { ...reportA, certificates: [{ identity: NODE_B, notAfter: inHours(1) }] },
      { ...reportA, certificates: [{ identity: 'spiffe://cluster.local/ns/other/sa/x', notAfter: inHours(1) }] },
      { ...reportA, localWorkloads: [{ workload: 'shop/nope', healthy: true }] },
    ];
    for (const r of refused) expect(agg.receive(from, r, model)).toMatchObject({ status: 403, reason: 'foreign-workload' });
    // The ingress has no local workloads and holds only its own certificate.
    expect(agg.receive({ identity: INGRESS }, { ...reportA, node: undefined }, model).status).toBe(403);
    expect(agg.receive({ identity: INGRESS }, { ejected: [], localWorkloads: [], certificates: [{ identity: INGRESS, notAfter: inHours(1) }] }, model).status).toBe(204);
    expect(agg.size).toBe(1); // nothing of a refused report is kept
    expect(agg.meshStatus(model, { version: 1, clients: [] }).workloads.every((w) => w.healthy === undefined)).toBe(true);
    expect(await metric(registry, 'ward_discovery_health_reports_total', { result: 'refused' })).toBe(6);
  });

  it('validates the shape', () => {
    const { agg } = setup();
    for (const bad of [null, [], 'x', { ejected: [], localWorkloads: [] }, { ...reportA, localWorkloads: [{ workload: 'shop/web-1', healthy: 'yes' }] }, { ...reportA, certificates: [{ identity: WEB, notAfter: 'soon' }] }, { ...reportA, ejected: [{ address: '', service: 'web.shop' }] }]) {
      expect(agg.receive({ identity: NODE_A, node: 'node-a' }, bad, model).status).toBe(400);
    }
    expect(() => parseHealthReport({ ejected: new Array(10_001).fill({ address: 'a:1', service: 's.n' }), localWorkloads: [], certificates: [] })).toThrow(/more than/);
    expect(parseHealthReport({ ejected: [{ address: '127.0.10.2:15008', service: 'web.shop', until: '2030-01-01T00:00:00Z' }], localWorkloads: [], certificates: [] }).ejected[0].until).toBe('2030-01-01T00:00:00.000Z');
  });

  it('counts ejections in force from fresh reports; stale reports lose health but keep certificates; old ones are dropped', () => {
    const { agg, clock } = setup({ staleAfterMs: 60_000, retainMs: 600_000 });
    agg.receive({ identity: NODE_A, node: 'node-a' }, reportA, model);
    agg.receive({ identity: NODE_B, node: 'node-b' }, {
      node: 'node-b',
      localWorkloads: [{ workload: 'shop/web-2', healthy: true }, { workload: 'shop/api-2', healthy: true }],
      certificates: [{ identity: WEB, notAfter: inHours(1) }],
      // node-b ejects node-a's web endpoint (by address) for 30 s, and api-1 (by workload) until further notice.
      ejected: [
        { address: '127.0.10.1:15008', service: 'web.shop', until: new Date(T0 + 30_000).toISOString() },
        { address: '127.0.10.1:15008', service: 'api.shop', workload: 'shop/api-1' },
      ],
    }, model);
    const svc = () => Object.fromEntries(agg.meshStatus(model, { version: 1, clients: streams('node-a', 'node-b') }).services.map((s) => [s.name, s.endpoints]));
    expect(svc()).toEqual({ web: { total: 2, healthy: 1, ejected: 1 }, api: { total: 2, healthy: 1, ejected: 1 } });
    clock.advance(30_000); // the web ejection ends
    expect(svc()).toEqual({ web: { total: 2, healthy: 2, ejected: 0 }, api: { total: 2, healthy: 1, ejected: 1 } });
    clock.advance(31_000); // both reports stale: health unknown, ejections ignored, certificates kept
    let s = agg.meshStatus(model, { version: 1, clients: streams('node-a', 'node-b') });
    expect(s.services.map((x) => x.endpoints)).toEqual([{ total: 2, healthy: 0, ejected: 0 }, { total: 2, healthy: 0, ejected: 0 }]);
    expect(s.workloads.find((w) => w.name === 'web-1')).toEqual({ name: 'web-1', namespace: 'shop', identity: WEB, node: 'node-a', certificateNotAfter: inHours(2) });
    clock.advance(600_000);
    s = agg.meshStatus(model, { version: 1, clients: [] });
    expect(agg.size).toBe(0);
    expect(s.clients).toEqual([]);
  });

  it('a disconnected reporter is listed as not connected; a node leaving the model drops its report', () => {
    const { agg } = setup();
    agg.receive({ identity: NODE_B, node: 'node-b' }, { ejected: [], localWorkloads: [{ workload: 'shop/web-2', healthy: true }], certificates: [] }, model);
    const s = agg.meshStatus(model, { version: 1, clients: [] });
    expect(s.clients).toMatchObject([{ identity: NODE_B, connected: false, ackedVersion: 0 }]);
    expect(s.services.find((x) => x.name === 'web')!.endpoints.healthy).toBe(0); // node not connected
    const smaller = parseWardYaml(EXAMPLE_WARD_YAML.replace(/\n {2}- \{name: node-b[^\n]*/, '').replace(/\n {2}- \{name: (web|api)-2[^\n]*/g, ''), 'ward.yaml');
    agg.meshStatus(smaller, { version: 2, clients: [] });
    expect(agg.size).toBe(0);
  });
});
