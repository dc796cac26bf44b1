/**
 * `ward control` (startControl) on real sockets at 127.0.0.1: the CA and the discovery pool in one
 * process, driven as node proxies drive them — join with a token, obtain workload certificates
 * under node authorization, stream the mesh with ControlClient — through ward.yaml edits (valid and
 * invalid) and a restart of the control plane on the same state directory and ports.
 */
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { parse, stringify } from 'yaml';
import { CertificateAuthority } from '../../ca/index.js';
import { startControl, type Control, type StartControlOptions } from '../../cli/control.js';
import type { LocalFileSource } from '../../discovery/index.js';
import { ControlClient } from '../../core/control/index.js';
import { systemClock } from '../../core/clock.js';
import { isWardError } from '../../core/errors.js';
import { SpiffeId } from '../../core/identity/index.js';
import { silentLogger } from '../../core/logger.js';
import { createRegistry } from '../../core/metrics.js';
import { PrivateKey, createCsr } from '../../core/pki/index.js';
import type { Credentials } from '../../core/tls/index.js';
import { EXAMPLE_WARD_YAML } from '../../discovery/index.js';
import { call, captureLogs } from '../helpers/ca.js';
import { exited, spawnWard, stderrMatch, ward } from '../helpers/cli.js';
import { controlCommands } from '../../cli/control.js';

const TD = 'cluster.local';
const WEB = SpiffeId.workload(TD, 'shop', 'web');
const API = SpiffeId.workload(TD, 'shop', 'api');
const WAIT_MS = 15_000;

// web-1 on node-a, api-1 on node-b: each node may obtain exactly one of the two identities.
const MESH = {
  apiVersion: 'ward.dev/v1alpha1',
  kind: 'Mesh',
  trustDomain: TD,
  nodes: [
    { name: 'node-a', address: '127.0.10.1' },
    { name: 'node-b', address: '127.0.10.2' },
  ],
  workloads: [
    { name: 'web-1', namespace: 'shop', serviceAccount: 'web', node: 'node-a', address: '127.0.20.1', ports: [8080], labels: { app: 'web' } },
    { name: 'api-1', namespace: 'shop', serviceAccount: 'api', node: 'node-b', address: '127.0.30.1', ports: [9090], labels: { app: 'api' } },
  ],
  services: [
    { name: 'web', namespace: 'shop', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'web' } },
    { name: 'api', namespace: 'shop', ports: [{ name: 'http', port: 8080, targetPort: 9090, protocol: 'http' }], selector: { app: 'api' } },
  ],
  policies: (parse(EXAMPLE_WARD_YAML) as { policies: unknown[] }).policies,
};
type Mesh = typeof MESH;

function meshWith(mutate: (m: Mesh) => void): string {
  const m = structuredClone(MESH);
  mutate(m);
  return stringify(m);
}

interface Env {
  dir: string;
  stateDir: string;
  config: string;
  /** Starts the control plane (port 0 unless given); stopped when the test ends. */
  start(o?: Partial<StartControlOptions>): Promise<Control>;
  /** Replaces ward.yaml atomically (write + rename, as editors do). */
  write(text: string): Promise<void>;
}

async function env(initial = stringify(MESH)): Promise<Env> {
  const cleanups: (() => Promise<unknown>)[] = [];
  onTestFinished(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  const dir = await mkdtemp(join(tmpdir(), 'ward-control-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const stateDir = join(dir, 'state');
  const config = join(dir, 'ward.yaml');
  let n = 0;
  const write = async (text: string) => {
    const tmp = join(dir, `.ward.yaml.${n++}`);
    await writeFile(tmp, text);
    await rename(tmp, config);
  };
  await write(initial);
  return {
    dir,
    stateDir,
    config,
    write,
    async start(o = {}) {
      const ctl = await startControl({
        stateDir,
        config,
        listen: { host: '127.0.0.1', port: 0 },
        discovery: { host: '127.0.0.1', port: 0 },
        admin: { host: '127.0.0.1', port: 0 },
        init: true,
        logger: silentLogger(),
        source: { debounceMs: 10, pollIntervalMs: 100 },
        ...o,
      });
      cleanups.push(() => ctl.close(1_000));
      return ctl;
    },
  };
}

/** A node proxy's credentials from a fresh join token, through the CA API. */
async function joinNode(ctl: Control, node: string): Promise<Credentials> {
  const { token } = await ctl.tokens.create(node);
  const key = PrivateKey.generate();
  const r = await call(ctl.ports.ca, ctl.ca.bundle(), 'POST', '/v1/join', { body: { token, csr: createCsr(key) } });
  expect(r.status, r.text).toBe(200);
  return { id: SpiffeId.parse(r.json.id), chainPem: r.json.certificate, key, bundle: ctl.ca.bundle() };
}

/** POST /v1/issue for `identity` with node credentials: the status and the issued id. */
async function obtain(ctl: Control, creds: Credentials, identity: SpiffeId): Promise<{ status: number; id?: string; code?: string }> {
  const r = await call(ctl.ports.ca, ctl.ca.bundle(), 'POST', '/v1/issue', { body: { csr: createCsr(PrivateKey.generate()), identity: identity.toString() }, creds });
  return { status: r.status, id: r.json?.id, code: r.json?.error?.code };
}

function client(port: () => number, creds: Credentials): ControlClient {
  const c = new ControlClient({
    url: `https://127.0.0.1:${port()}`,
    trustDomain: TD,
    credentials: () => creds,
    logger: silentLogger(),
    backoff: { initialMs: 10, maxMs: 100 },
  });
  onTestFinished(() => c.close());
  c.start();
  return c;
}

/** Resolves once `pred` holds for the client's state (checked now and at every 'update'); bounded. */
function until<T>(c: ControlClient, what: string, pred: () => T | undefined | false): Promise<T> {
  return new Promise((resolve, reject) => {
    const check = () => {
      let v: T | undefined | false;
      try {
        v = pred();
      } catch (err) {
        done();
        return reject(err);
      }
      if (v) {
        done();
        resolve(v);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out waiting for ${what}; client status ${JSON.stringify(c.status())}`));
    }, WAIT_MS);
    const done = () => {
      clearTimeout(timer);
      c.off('update', check);
    };
    c.on('update', check);
    check();
  });
}

const workloadsOf = (c: ControlClient) => c.resources('workload').map((w) => `${w.namespace}/${w.name}`).sort();
const endpointIds = (c: ControlClient, svc: string) => (c.resource('endpoints', svc)?.endpoints ?? []).map((e) => `${e.identity}@${e.node}`);

function adminStatus(port: number): Promise<any> {
  return new Promise((resolve, reject) => {
    httpRequest({ host: '127.0.0.1', port, path: '/v1/status?latest=1', agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve(JSON.parse(text)));
    })
      .on('error', reject)
      .end();
  });
}

describe('ward control', () => {
  it('joins a node, authorizes by ward.yaml, publishes endpoints, follows edits and survives a restart', async () => {
    const e = await env();
    let ctl = await e.start();
    expect(ctl.created?.trustDomain).toBe(TD);
    const ports = { ...ctl.ports };

    // A node proxy joins and streams its view.
    const nodeA = await joinNode(ctl, 'node-a');
    expect(nodeA.id.toString()).toBe(SpiffeId.node(TD, 'node-a').toString());
    const a = client(() => ports.discovery, nodeA);
    await until(a, 'the first snapshot', () => a.state());
    expect(workloadsOf(a)).toEqual(['shop/web-1']);
    expect(a.resources('policy')).toHaveLength(2);
    expect(a.resource('bundle', TD)?.pem).toBe(ctl.ca.bundle().toPem());
    // Connected, but nothing issued yet: no endpoints.
    expect(endpointIds(a, 'web.shop')).toEqual([]);

    // Node authorization: its own workload yes, another node's no (and the refusal is audited).
    expect(await obtain(ctl, nodeA, WEB)).toMatchObject({ status: 200, id: WEB.toString() });
    expect(await obtain(ctl, nodeA, API)).toEqual({ status: 403, id: undefined, code: 'WARD_CA_FORBIDDEN' });
    // web's endpoint appears once its node is connected and its identity issued.
    await until(a, 'the web endpoint', () => endpointIds(a, 'web.shop').length === 1);
    expect(endpointIds(a, 'web.shop')).toEqual([`${WEB}@node-a`]);
    expect(a.resource('endpoints', 'web.shop')?.endpoints[0]).toMatchObject({ address: '127.0.10.1:15008', identity: WEB.toString() });

    // node-b's identity issued while node-b is not connected: api stays unpublished until it connects.
    const nodeB = await joinNode(ctl, 'node-b');
    expect((await obtain(ctl, nodeB, API)).status).toBe(200);
    expect(ctl.state.isPublished('node-b')).toBe(false);
    expect(endpointIds(a, 'api.shop')).toEqual([]);
    const b = client(() => ports.discovery, nodeB);
    await until(a, 'the api endpoint after node-b connected', () => endpointIds(a, 'api.shop').length === 1);
    expect(endpointIds(a, 'api.shop')).toEqual([`${API}@node-b`]);
    await until(b, "node-b's snapshot", () => b.state());
    expect(workloadsOf(b)).toEqual(['shop/api-1']);

    // The admin status carries the CA report and the pool's clients.
    const status = await adminStatus(ports.admin!);
    expect(status.trustDomain).toBe(TD);
    expect(status.mesh.clients.map((c: { node: string }) => c.node).sort()).toEqual(['node-a', 'node-b']);
    expect(status.mesh.config).toMatchObject({ rejected: 0 });

    // Edit: web-1 moves to node-b. node-a gets a delta without it; the CA refuses WEB to node-a now.
    const beforeMove = a.status().version;
    await e.write(meshWith((m) => (m.workloads[0].node = 'node-b')));
    const moved = await until(a, 'the move delta', () => a.status().version > beforeMove && workloadsOf(a).length === 0 && a.state());
    expect(moved.resources.has('workload shop/web-1')).toBe(false);
    await until(b, 'web-1 on node-b', () => workloadsOf(b).includes('shop/web-1'));
    expect(await obtain(ctl, nodeA, WEB)).toMatchObject({ status: 403, code: 'WARD_CA_FORBIDDEN' });
    expect(await obtain(ctl, nodeB, WEB)).toMatchObject({ status: 200 });
    await until(a, 'web endpoint on node-b', () => endpointIds(a, 'web.shop').join() === `${WEB}@node-b`);

    // An invalid edit: rejected; clients keep their state, the CA keeps serving on the last good model.
    const held = a.status().version;
    const rejected = new Promise((resolve) => (ctl.source as LocalFileSource).once('rejected', resolve));
    await e.write(meshWith((m) => (m.workloads[0].node = 'node-zz')));
    const err = await rejected;
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    expect(ctl.state.model.workloads.find((w) => w.name === 'web-1')?.node).toBe('node-b');
    expect(a.status().version).toBe(held);
    expect((await obtain(ctl, nodeB, WEB)).status).toBe(200);
    expect((await obtain(ctl, nodeA, WEB)).status).toBe(403);

    // Restart on the same state directory and ports; meanwhile web-1 moves back to node-a.
    const disconnected = new Promise((resolve) => a.once('disconnected', resolve));
    await ctl.close(1_000);
    await disconnected;
    const whileDown = a.state()!;
    expect(workloadsOf(a)).toEqual([]);
    await e.write(meshWith(() => undefined));
    expect(a.state()).toBe(whileDown); // static stability: nothing dropped while the pool is down
    ctl = await e.start({ listen: { host: '127.0.0.1', port: ports.ca }, discovery: { host: '127.0.0.1', port: ports.discovery }, admin: { host: '127.0.0.1', port: ports.admin! } });
    expect(ctl.created).toBeUndefined();
    expect(ctl.ports).toEqual(ports);
    await until(a, 'convergence after the restart', () => workloadsOf(a).join() === 'shop/web-1' && a.status().connected);
    // Identities issued before the restart still publish (replayed from the inventory); both nodes reconnected.
    await until(a, 'endpoints after the restart', () => endpointIds(a, 'web.shop').join() === `${WEB}@node-a` && endpointIds(a, 'api.shop').join() === `${API}@node-b`);
    await until(b, 'node-b converged', () => !workloadsOf(b).includes('shop/web-1') && b.status().connected);
    expect((await obtain(ctl, nodeA, WEB)).status).toBe(200);
    expect((await obtain(ctl, nodeB, WEB)).status).toBe(403);
  });

  it('refuses to start when ward.yaml and the CA disagree on the trust domain, and leaves nothing running', async () => {
    const e = await env(meshWith((m) => (m.trustDomain = 'other.org')));
    await CertificateAuthority.init({ stateDir: e.stateDir, trustDomain: TD, clock: systemClock });
    const err = await e.start({ init: false }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    expect((err as Error).message).toMatch(/other\.org.*cluster\.local/);
    // The lock was not taken (or was released): the directory can be opened for writing.
    const ca = await CertificateAuthority.open({ stateDir: e.stateDir, clock: systemClock, logger: silentLogger(), registry: createRegistry() });
    await ca.close();
  });

  it('releases everything when a listener cannot bind', async () => {
    const e = await env();
    const first = await e.start();
    const logs = captureLogs();
    const err = await e
      .start({ stateDir: join(e.dir, 'state2'), discovery: { host: '127.0.0.1', port: first.ports.discovery }, logger: logs.logger })
      .then(() => undefined, (x: unknown) => x);
    expect(isWardError(err, 'WARD_CONFIG_INVALID')).toBe(true);
    expect((err as Error).message).toMatch(/already in use/);
    // The second CA (state2) was closed: it can be opened again.
    const ca = await CertificateAuthority.open({ stateDir: join(e.dir, 'state2'), clock: systemClock, logger: silentLogger(), registry: createRegistry() });
    await ca.close();
  });
});

describe('ward control (command line)', () => {
  it('--help documents every flag', async () => {
    const r = await ward(['control', '--help']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toMatch(/^Usage: ward control --state DIR --config ward.yaml/);
    for (const f of Object.keys(controlCommands[0].options)) expect(r.stdout).toContain(`--${f}`);
    expect((await ward(['--help'])).stdout).toMatch(/\n  control +run the control plane/);
  });

  it('refuses bad flags with exit 2 and an invalid ward.yaml with exit 1, creating nothing', async () => {
    const e = await env('kind: Mesh\nnodes: 3\n');
    expect((await ward(['control', '--state', e.stateDir, '--config', e.config, '--admin', '10.0.0.1:9443'])).code).toBe(2);
    expect((await ward(['control', '--state', e.stateDir, '--config', e.config, '--grace', 'soon'])).code).toBe(2);
    const r = await ward(['control', '--state', e.stateDir, '--config', e.config, '--init']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('error[WARD_CONFIG_INVALID]');
    await expect(CertificateAuthority.open({ stateDir: e.stateDir, clock: systemClock, logger: silentLogger(), registry: createRegistry() })).rejects.toMatchObject({ code: 'WARD_CA_NOT_INITIALIZED' });
  });

  it('prints its bound addresses, serves the CA report with the mesh beside it, stops on SIGTERM with exit 0', async () => {
    const e = await env();
    const child = spawnWard(['control', '--state', e.stateDir, '--config', e.config, '--init', '--listen', '127.0.0.1:0', '--discovery', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--log-level', 'warn']);
    const m = await stderrMatch(child, /ward control: CA https:\/\/127\.0\.0\.1:(\d+) {2}discovery https:\/\/127\.0\.0\.1:(\d+) {2}admin http:\/\/127\.0\.0\.1:(\d+)\n/);
    expect(child.output.stderr).toContain(`ward control: created a CA in ${e.stateDir} (trust domain ${TD}`);
    const adminPort = Number(m[3]);
    const status = await adminStatus(adminPort);
    expect(status).toMatchObject({ trustDomain: TD, mesh: { trustDomain: TD, clients: [], config: { applied: 1, rejected: 0 } } });
    // `ward ca inspect --server` reads the same report.
    const r = await ward(['ca', 'inspect', '--server', `http://127.0.0.1:${adminPort}`, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ trustDomain: TD });
    // The discovery port presents spiffe://TD/ward/discovery.
    const tls = await ward(['cert', 'inspect', '--connect', `127.0.0.1:${m[2]}`]);
    expect(tls.stdout).toContain(`spiffe://${TD}/ward/discovery`);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
    expect(child.output.stderr).toContain('ward control: SIGTERM: draining and stopping');
  });
});
