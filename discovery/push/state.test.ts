import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../core/clock.js';
import { applyFrame, type Resource, type ServiceEndpoints, type ViewState } from '../../core/protocol/index.js';
import { MeshState, type View } from './state.js';
import { editedExample, exampleModel } from '../../test/helpers/mesh.js';

const base = exampleModel;
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';
const NODE_A: View = { kind: 'node', node: 'node-a' };
const NODE_B: View = { kind: 'node', node: 'node-b' };
const INGRESS: View = { kind: 'ingress' };

function newState(o: { graceMs?: number; historyLimit?: number } = {}) {
  const clock = new ManualClock(1_000_000);
  const state = new MeshState({ model: base, clock, autoTick: false, firstVersion: 1, ...o });
  return { clock, state };
}

function endpointsIn(resources: Iterable<Resource>, key: string): string[] {
  for (const r of resources) {
    if (r.kind === 'endpoints' && r.key === key) return (r.value as ServiceEndpoints).endpoints.map((e) => `${e.workload}@${e.node}=${e.identity}`);
  }
  return [];
}

/** A client following the state from a snapshot through deltas must always equal a fresh snapshot. */
function follow(state: MeshState, view: View, from: ViewState): ViewState {
  const d = state.deltaSince(view, from.version);
  expect(d).toBeDefined();
  return applyFrame(from, { type: 'delta', version: state.version, base: from.version, ...d! });
}

function asState(snap: { version: number; resources: Resource[] }): ViewState {
  return applyFrame(undefined, { type: 'snapshot', ...snap });
}

describe('MeshState', () => {
  it('publishes an endpoint only once its node is connected and its identity issued', () => {
    const { state } = newState();
    expect(endpointsIn(state.snapshot(NODE_A).resources, 'web.shop')).toEqual([]);
    state.nodeConnected('node-a');
    expect(endpointsIn(state.snapshot(NODE_A).resources, 'web.shop')).toEqual([]);
    state.markIssued(WEB);
    expect(endpointsIn(state.snapshot(NODE_A).resources, 'web.shop')).toEqual([`shop/web-1@node-a=${WEB}`]);
    state.nodeConnected('node-b');
    expect(endpointsIn(state.snapshot(NODE_B).resources, 'web.shop')).toEqual([`shop/web-1@node-a=${WEB}`, `shop/web-2@node-b=${WEB}`]);
    const ep = state.snapshot(INGRESS).resources.find((r) => r.key === 'web.shop')!.value as ServiceEndpoints;
    expect(ep.endpoints[0]).toEqual({ address: '127.0.10.1:15008', identity: WEB, node: 'node-a', zone: 'zone-a', workload: 'shop/web-1' });
    expect(ep.ports).toEqual([{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }]);
  });

  it('views: workloads only of the own node; routes only for the ingress; policies not for the ingress', () => {
    const { state } = newState();
    state.setBundle('PEM', 1);
    const kinds = (v: View) => state.snapshot(v).resources.map((r) => `${r.kind} ${r.key}`).sort();
    expect(kinds(NODE_A)).toEqual([
      'bundle cluster.local',
      'endpoints api.shop',
      'endpoints web.shop',
      'policy shop/api-allow-web-get',
      'policy shop/web-allow-ingress',
      'workload shop/api-1',
      'workload shop/web-1',
    ]);
    expect(kinds(NODE_B).filter((k) => k.startsWith('workload'))).toEqual(['workload shop/api-2', 'workload shop/web-2']);
    expect(kinds(INGRESS)).toEqual(['bundle cluster.local', 'endpoints api.shop', 'endpoints web.shop', 'route shop.localhost']);
  });

  it('withdraws a disconnected node after the grace period, not before; a reconnect cancels it', () => {
    const { state, clock } = newState({ graceMs: 10_000 });
    state.nodeConnected('node-a');
    state.markIssued(WEB);
    state.nodeDisconnected('node-a');
    clock.advance(9_999);
    state.tick();
    expect(endpointsIn(state.snapshot(INGRESS).resources, 'web.shop')).toHaveLength(1);
    clock.advance(1);
    state.tick();
    expect(endpointsIn(state.snapshot(INGRESS).resources, 'web.shop')).toEqual([]);

    state.nodeConnected('node-a');
    state.nodeDisconnected('node-a');
    clock.advance(5_000);
    state.nodeConnected('node-a');
    clock.advance(60_000);
    state.tick();
    expect(endpointsIn(state.snapshot(INGRESS).resources, 'web.shop')).toHaveLength(1);
  });

  it('one version per change; deltas followed from any version equal a fresh snapshot', () => {
    const { state } = newState();
    const v0 = state.version;
    const s0 = { a: asState(state.snapshot(NODE_A)), b: asState(state.snapshot(NODE_B)), i: asState(state.snapshot(INGRESS)) };
    state.nodeConnected('node-a');
    state.nodeConnected('node-b');
    state.markIssued(WEB);
    state.markIssued(API);
    state.markIssued(API); // no change: no version
    expect(state.version).toBe(v0 + 2); // connecting with nothing issued publishes nothing: no version
    // api-1 moves to node-b with new labels; a policy is removed; a route added.
    state.setModel(
      editedExample((d) => {
        d.workloads[2].node = 'node-b';
        d.workloads[2].labels = { app: 'api', v: '2' };
        d.policies.pop();
        d.ingress.routes.push({ host: 'api.localhost', paths: [{ path: '/', pathType: 'Prefix', service: 'api.shop', port: 8080 }] });
      }),
    );
    for (const [view, s] of [[NODE_A, s0.a], [NODE_B, s0.b], [INGRESS, s0.i]] as const) {
      const followed = follow(state, view, s);
      const fresh = asState(state.snapshot(view));
      expect([...followed.resources.values()].sort((x, y) => (x.kind + x.key < y.kind + y.key ? -1 : 1))).toEqual(
        [...fresh.resources.values()].sort((x, y) => (x.kind + x.key < y.kind + y.key ? -1 : 1)),
      );
    }
    // node-a no longer holds api-1's workload resource: the delta removed it.
    const a = follow(state, NODE_A, s0.a);
    expect([...a.resources.keys()].filter((k) => k.startsWith('workload'))).toEqual(['workload shop/web-1']);
  });

  it('a change costs in proportion: an unrelated workload change touches only its own resources', () => {
    const { state } = newState();
    state.nodeConnected('node-a');
    state.nodeConnected('node-b');
    state.markIssued(WEB);
    const before = state.version;
    state.setModel(editedExample((d) => (d.workloads[2].address = '127.0.30.9'))); // api-1: no api identity issued yet
    expect(state.version).toBe(before + 1);
    const d = state.deltaSince(NODE_A, before)!;
    expect(d.upserts.map((r) => `${r.kind} ${r.key}`)).toEqual(['workload shop/api-1']);
    expect(state.deltaSince(NODE_B, before)).toEqual({ upserts: [], removals: [] });
  });

  it('a version older than the bounded history, or unknown, gets no delta (snapshot)', () => {
    const { state } = newState({ historyLimit: 2 });
    const v = state.version;
    state.nodeConnected('node-a');
    state.markIssued(WEB);
    state.markIssued(API);
    state.setBundle('PEM', 1);
    expect(state.historyLength).toBe(2);
    expect(state.deltaSince(NODE_A, v)).toBeUndefined();
    expect(state.deltaSince(NODE_A, state.version + 5)).toBeUndefined();
    expect(state.deltaSince(NODE_A, state.version - 2)).toBeDefined();
    expect(state.deltaSince(NODE_A, state.version)).toEqual({ upserts: [], removals: [] });
  });
});
