/**
 * `ward check` (in-process, through run()) against: nothing listening; a stub admin endpoint serving
 * a real CA report, spoiled per test (bare CA, expiring and expired CA certificates, an unhealthy
 * CA); a real control plane in-process with no proxy connected; and a real mesh of `ward control` +
 * `ward proxy` processes (green, a proxy killed, restarted, leaf certificates within --warn-expiry).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from 'vitest';
import { stringify } from 'yaml';
import { startControl, type Control } from '../../cli/control.js';
import { judgeMesh, type CheckReport } from '../../cli/check.js';
import { silentLogger } from '../../core/logger.js';
import type { MeshStatus } from '../../discovery/index.js';
import { ward } from '../helpers/cli.js';
import { startMesh, type MeshSpec, type RunningMesh } from '../helpers/proxy-mesh.js';

const DAY = 86_400_000;
/** Bound on waiting for the pool to see a proxy come or go (stream close, first health report). */
const MESH_WAIT_MS = 15_000;

const MESH_YAML = {
  apiVersion: 'ward.dev/v1alpha1',
  kind: 'Mesh',
  trustDomain: 'cluster.local',
  nodes: [
    { name: 'node-a', address: '127.0.10.1' },
    { name: 'node-b', address: '127.0.10.2' },
  ],
  workloads: [
    { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', address: '127.0.20.1', ports: [8080], labels: { app: 'web' } },
    { name: 'api-1', namespace: 'shop', serviceAccount: 'api', node: 'node-b', address: '127.0.30.1', ports: [9090], labels: { app: 'api' } },
  ],
  services: [{ name: 'api', namespace: 'shop', ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }], selector: { app: 'api' } }],
  policies: [],
};

/** The in-process control plane of the tests below (no proxy ever connects to it). */
let ctl: Control;
let admin: string;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ward-check-'));
  await writeFile(join(dir, 'ward.yaml'), stringify(MESH_YAML));
  ctl = await startControl({
    stateDir: join(dir, 'state'),
    config: join(dir, 'ward.yaml'),
    listen: { host: '127.0.0.1', port: 0 },
    discovery: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    init: true,
    logger: silentLogger(),
    source: { watch: false },
  });
  admin = `http://127.0.0.1:${ctl.ports.admin}`;
});

afterAll(async () => {
  await ctl?.close(500);
  if (dir) await rm(dir, { recursive: true, force: true });
});

function parse(stdout: string): CheckReport {
  return JSON.parse(stdout) as CheckReport;
}

function byName(r: CheckReport, prefix: string) {
  const c = r.checks.find((x) => x.name.startsWith(prefix));
  if (!c) throw new Error(`no check "${prefix}" in ${r.checks.map((x) => x.name).join(' | ')}`);
  return c;
}

/** An admin endpoint answering /v1/status with `status` and /healthz with `health` (200 "ok" by default). */
async function stubAdmin(status: unknown, health: { code: number; text: string } = { code: 200, text: 'ok\n' }): Promise<string> {
  const server: Server = createServer((req, res) => {
    if (req.url?.startsWith('/v1/status')) res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status));
    else if (req.url === '/healthz') res.writeHead(health.code, { 'content-type': 'text/plain' }).end(health.text);
    else res.writeHead(404).end();
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  onTestFinished(() => new Promise<void>((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function realStatus(): Promise<Record<string, unknown> & { certificates: { role: string; state: string; notAfter: string }[] }> {
  const res = await fetch(`${admin}/v1/status`);
  return (await res.json()) as never;
}

describe('ward check: the admin endpoint', () => {
  it('nothing listening: × reachable with a hint, the rest not run, exit 1 (text and --json)', async () => {
    const s = createServer();
    s.listen(0, '127.0.0.1');
    await new Promise((r) => s.once('listening', r));
    const port = (s.address() as AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));

    const r = await ward(['check', '--server', `http://127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('control plane\n-------------\n× the control plane admin endpoint is reachable\n');
    expect(r.stdout).toContain(`cannot reach the admin endpoint http://127.0.0.1:${port}/v1/status`);
    expect(r.stdout).toMatch(/hint: is "ward control" \(or "ward up"\) running, and is --server its --admin address\?/);
    expect(r.stdout).toContain('note: the other checks need the admin endpoint and were not run');
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('Status check results are ×: 1 failed');

    const j = await ward(['check', '--server', `http://127.0.0.1:${port}`, '--json']);
    expect(j.code).toBe(1);
    const report = parse(j.stdout);
    expect(report.ok).toBe(false);
    expect(report.checks).toEqual([
      { group: 'control plane', name: 'the control plane admin endpoint is reachable', status: 'fail', message: expect.stringContaining('cannot reach'), hint: expect.stringContaining('--server') },
    ]);
  });

  it('usage errors exit 2', async () => {
    const bad = await ward(['check', '--warn-expiry', 'soon']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--warn-expiry must be a duration');
    expect((await ward(['check', '--server', 'not a url'])).code).toBe(2);
    expect((await ward(['check', 'extra'])).code).toBe(2);
    const help = await ward(['check', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Usage: ward check [--server URL] [--warn-expiry DURATION]');
    expect((await ward(['--help'])).stdout).toMatch(/\n {2}check {12}/);
  });

  it('a bare CA: CA checks only, the mesh checks skipped with a note', async () => {
    const { mesh: _mesh, ...bare } = await realStatus();
    const r = await ward(['check', '--server', await stubAdmin(bare), '--json']);
    const report = parse(r.stdout);
    expect(report.checks.map((c) => [c.group, c.status])).toEqual([
      ['control plane', 'ok'],
      ['certificate authority', 'ok'],
      ['certificate authority', 'ok'],
      ['certificate authority', 'ok'],
      ['certificate authority', 'ok'],
    ]);
    expect(report.notes.join(' ')).toMatch(/bare certificate authority .*node proxy, workload and service checks were skipped/);
    expect(report.ok).toBe(true);
    expect(r.code).toBe(0);
  });

  it('CA material: ‼ within --warn-ca-expiry, × expired or unhealthy, with rotation hints', async () => {
    const { mesh: _mesh, ...bare } = await realStatus();
    const soon = structuredClone(bare);
    for (const c of soon.certificates) if (c.role === 'root') c.notAfter = new Date(Date.now() + 10 * DAY).toISOString();
    let r = await ward(['check', '--server', await stubAdmin(soon)]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/‼ root certificates are valid for more than 30d\n {4}root [0-9A-F:]+ \(active\) expires in 10d\b/);
    expect(r.stdout).toContain('hint: rotate the root: ward ca rotate prepare --root');
    expect(r.stdout).toContain('✓ intermediate certificates are valid for more than 30d');
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('Status check results are ‼: 1 warning');
    // The CA threshold is its own flag: a shorter one makes the same material pass.
    expect((await ward(['check', '--server', await stubAdmin(soon), '--warn-ca-expiry', '5d'])).code).toBe(0);

    const expired = structuredClone(bare);
    for (const c of expired.certificates) if (c.role === 'intermediate') c.notAfter = new Date(Date.now() - 2 * DAY).toISOString();
    r = await ward(['check', '--server', await stubAdmin(expired, { code: 503, text: 'unavailable: the active issuing CA is not valid now\n' })]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/× the CA can issue certificates\n {4}unhealthy: the active issuing CA is not valid now\n/);
    expect(r.stdout).toMatch(/× intermediate certificates are valid for more than 30d\n {4}intermediate [0-9A-F:]+ \(active\) expired 2d ago/);
    expect(r.stdout).toContain('hint: rotate the intermediate: ward ca rotate prepare');
  });
});

describe('ward check: a control plane with no proxy connected', () => {
  it('× node proxies and workloads, naming them; the control plane and the CA ✓', async () => {
    const r = await ward(['check', '--server', admin]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('✓ the control plane admin endpoint is reachable\n');
    expect(r.stdout).toContain('✓ the CA can issue certificates\n');
    expect(r.stdout).toContain('✓ ward.yaml: the latest edit is in force\n');
    expect(r.stdout).toMatch(/× every node proxy is connected\n {4}not connected: node-a, node-b \(0 of 2 connected\)\n {4}hint: start the proxy on those nodes/);
    expect(r.stdout).toMatch(/× every workload has an identity[^\n]*\n {4}without an identity: shop\/web-1 \(node node-a: proxy not connected\), shop\/api-1 \(node node-b: proxy not connected\)/);
    expect(r.stdout).toMatch(/‼ every service has a healthy endpoint\n {4}no healthy endpoint: api\.shop \(0 of 1 healthy\)/);
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('Status check results are ×: 2 failed, 1 warning');

    const j = parse((await ward(['check', '--server', admin, '--json'])).stdout);
    expect(j.ok).toBe(false);
    expect(new Set(j.checks.map((c) => c.group))).toEqual(new Set(['control plane', 'certificate authority', 'node proxies', 'workloads', 'services']));
    for (const c of j.checks) {
      expect(Object.keys(c).sort()).toEqual(c.status === 'ok' ? ['group', 'message', 'name', 'status'] : ['group', 'hint', 'message', 'name', 'status']);
      expect(['ok', 'warn', 'fail']).toContain(c.status);
    }
    expect(byName(j, 'every node proxy is connected')).toMatchObject({ group: 'node proxies', status: 'fail', message: expect.stringContaining('node-a, node-b') });
  });
});

describe('ward check: the rules the live mesh above does not reach (judgeMesh)', () => {
  it('a lagging proxy with NACKs ×, an expired leaf ×, unhealthy and ejected ‼, a rejected edit and a waiting rotation ‼', async () => {
    const { mesh: _mesh, ...report } = await realStatus();
    const now = Date.now();
    const at = (ms: number) => new Date(now + ms).toISOString();
    const mesh: MeshStatus & { config: Record<string, string> } = {
      trustDomain: 'cluster.local',
      version: 7,
      generatedAt: at(0),
      clients: [
        { identity: 'spiffe://cluster.local/ward/node/node-a', node: 'node-a', view: 'node', connected: true, sentVersion: 7, ackedVersion: 7, nacks: 0 },
        { identity: 'spiffe://cluster.local/ward/node/node-b', node: 'node-b', view: 'node', connected: true, sentVersion: 7, ackedVersion: 5, nacks: 2 },
      ],
      nodes: [
        { name: 'node-a', address: '127.0.10.1', connected: true, ackedVersion: 7, lastReport: at(0), certificates: [{ identity: 'spiffe://cluster.local/ns/shop/sa/web', notAfter: at(-60_000) }] },
        { name: 'node-b', address: '127.0.10.2', connected: true, ackedVersion: 5, lastReport: at(0), certificates: [{ identity: 'spiffe://cluster.local/ns/shop/sa/api', notAfter: at(3_600_000) }] },
      ],
      services: [
        { name: 'api', namespace: 'shop', endpoints: { total: 2, healthy: 1, ejected: 1 } },
        { name: 'ghost', namespace: 'shop', endpoints: { total: 0, healthy: 0, ejected: 0 } },
      ],
      workloads: [
        { name: 'web-1', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/web', node: 'node-a', healthy: true, certificateNotAfter: at(-60_000) },
        { name: 'api-1', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/api', node: 'node-b', healthy: false, reason: 'no valid certificate', certificateNotAfter: at(3_600_000) },
      ],
      config: { file: 'ward.yaml', lastError: 'nodes[1].address: not an IP address', appliedAt: at(-10_000), rejectedAt: at(-5_000) },
    };
    const r = judgeMesh(
      { server: 'http://x', report: { ...report, rotation: { phase: 'activated', kind: 'intermediate', retireReady: true } } as never, health: { ok: true }, mesh },
      now,
      { leafWarnMs: 600_000, caWarnMs: 30 * DAY },
    );
    const got = (prefix: string) => {
      const c = byName(r, prefix);
      return [c.status, c.message];
    };
    expect(r.ok).toBe(false);
    expect(got('ward.yaml')).toEqual(['warn', 'the last edit of ward.yaml was rejected (nodes[1].address: not an IP address); the mesh runs on the last good configuration']);
    expect(got('no rotation step')).toEqual(['warn', 'a rotation of the intermediate is activated and the old material can be retired now']);
    expect(byName(r, 'no rotation step').hint).toContain('ward ca rotate retire');
    expect(got('every node proxy is connected')[0]).toBe('ok');
    expect(got('every connected proxy acknowledged')).toEqual(['fail', 'behind version 7: node-b (at 5, 2 rejected)']);
    expect(got('every connected proxy holds valid certificates')).toEqual(['fail', 'node-a: spiffe://cluster.local/ns/shop/sa/web expired 1m ago']);
    expect(got('every workload has an identity')).toEqual(['fail', 'without an identity: shop/web-1 (certificate expired 1m ago)']);
    expect(got('every workload is healthy')).toEqual(['warn', 'unhealthy: shop/api-1 (no valid certificate)']);
    expect(got('every service has a healthy endpoint')).toEqual(['warn', 'no healthy endpoint: ghost.shop (selects no workload)']);
    expect(got('no endpoint is ejected')).toEqual(['warn', 'ejected by outlier detection: api.shop (1 of 2)']);
  });
});

// ---- a real mesh: ward control + ward proxy processes -------------------------------------------

const SPEC: MeshSpec = {
  nodes: [{ name: 'node-a' }, { name: 'node-b' }],
  workloads: [
    { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', ports: [8080], labels: { app: 'web' } },
    { name: 'api-1', namespace: 'shop', serviceAccount: 'api', node: 'node-b', ports: [9090], labels: { app: 'api' } },
  ],
  services: [{ name: 'api', namespace: 'shop', ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }], selector: { app: 'api' } }],
};

describe('ward check: a running mesh', () => {
  let mesh: RunningMesh;
  let server: string;
  beforeAll(async () => {
    mesh = await startMesh(SPEC, { cleanup: 'manual' });
    await Promise.all([mesh.startProxy('node-a'), mesh.startProxy('node-b')]);
    await mesh.waitReady();
    await nudge();
    server = `http://127.0.0.1:${mesh.ports.admin}`;
  }, 60_000);
  afterAll(async () => {
    await mesh?.close();
  });

  /**
   * A node proxy sends its health report (local workloads, certificates held) when a new view
   * arrives and every 30s, but not when it obtains a certificate; its first report, sent as its
   * view arrives, precedes its workload certificates, so the pool would wait up to 30s to learn of
   * them. Once the proxies are ready, an edit of ward.yaml that reaches every node (a service added
   * or removed: endpoints go to all nodes) makes each report again, at once.
   */
  let nudged = false;
  async function nudge() {
    nudged = !nudged;
    const web = { name: 'web', namespace: 'shop', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' as const }], selector: { app: 'web' } };
    await mesh.writeSpec({ ...SPEC, services: nudged ? [...SPEC.services, web] : SPEC.services });
  }

  /** Runs `ward check` until `expectation` holds (the pool learns of a proxy's stream and report asynchronously). */
  async function checkUntil(args: string[], expectation: (r: { code: number; stdout: string }) => void) {
    let last = { code: -1, stdout: '' };
    await vi.waitFor(
      async () => {
        last = await ward(['check', '--server', server, ...args]);
        expectation(last);
      },
      { timeout: MESH_WAIT_MS, interval: 200 },
    );
    return last;
  }

  it('green; a killed proxy turns it red naming the node; restarted, green again', async () => {
    const green = await checkUntil([], (r) => expect(r.stdout.trimEnd().split('\n').at(-1), r.stdout).toBe('Status check results are ✓'));
    expect(green.code).toBe(0);
    for (const line of ['every node proxy is connected', 'every connected proxy acknowledged the latest version', 'every connected proxy holds valid certificates, none expiring within 10m', 'every workload is healthy', 'every service has a healthy endpoint']) {
      expect(green.stdout).toContain(`✓ ${line}\n`);
    }
    const j = parse((await ward(['check', '--server', server, '--json'])).stdout);
    expect(j).toMatchObject({ ok: true, notes: [] });
    expect(byName(j, 'every connected proxy holds valid certificates').message).toBe('4 certificates held'); // two node SVIDs, two workload SVIDs

    await mesh.stopProxy('node-b');
    const red = await checkUntil([], (r) => expect(r.stdout).toContain('× every node proxy is connected\n    not connected: node-b (1 of 2 connected)\n'));
    expect(red.code).toBe(1);
    expect(red.stdout).toContain('without an identity: shop/api-1 (node node-b: proxy not connected)');
    expect(red.stdout).not.toContain('node-a (');

    await mesh.startProxy('node-b');
    await mesh.waitReady({ nodes: ['node-b'] });
    await nudge();
    const again = await checkUntil([], (r) => expect(r.code, r.stdout).toBe(0));
    expect(again.stdout).toContain('✓ every node proxy is connected\n');
  }, 40_000);

  it('--warn-expiry 2h against 1h leaf certificates: ‼ naming them, exit 1', async () => {
    const r = await checkUntil(['--warn-expiry', '2h'], (x) => expect(x.stdout).toContain('‼ every connected proxy holds valid certificates, none expiring within 2h\n'));
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/node-a: spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web expires in (\d+m|1h)\b/);
    expect(r.stdout).toContain('hint: a proxy renews at about half-life');
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('Status check results are ‼: 1 warning');
    const j = parse((await ward(['check', '--server', server, '--warn-expiry', '2h', '--json'])).stdout);
    expect(j.ok).toBe(false);
    expect(j.checks.filter((c) => c.status !== 'ok').map((c) => [c.group, c.status])).toEqual([['node proxies', 'warn']]);
  });
});
