/**
 * Issue 5's proof, end to end: `ward up` runs the built-in example mesh (its cwd has no ward.yaml)
 * as real supervised processes on the example's FIXED addresses and ports (127.0.0.1:8443/8444/9443,
 * 127.0.10.x:15000/15008, 127.0.20.x/127.0.30.x:15001 and the apps' ports), and the user-visible
 * promises hold:
 *
 *   1. allowed and denied calls, seen from curl and undici, with the identity the app receives
 *   2. `ward check` green; a node proxy killed → red naming that node; the supervisor restarts it
 *      → green again
 *   3. a workload killed → no GET fails (fail-over to the other replica); it is restarted
 *   4. control plane killed → traffic and deny rules keep working; it is restarted; `ward check`
 *      converges to green
 *   5. SIGTERM → exit 0, nothing left (files, processes, listening ports); `ward down` stops a
 *      second `ward up`, which kept the same root CA
 *
 * Fixed ports mean one mesh per machine: this file is one describe that starts `ward up` once
 * (beforeAll) and runs its tests in order on it, each leaving it serving for the next (the last
 * stops it); a test starts by checking what it needs, so a failure upstream shows there.
 *
 * No sleeps: processes are awaited through their output (the tour, the supervisor's lines) and
 * their exit; the state of other processes is polled with vi.waitFor, always bounded.
 */
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';
import { ProxyAgent, request, type Dispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { exited, stderrMatch, ward, REPO_ROOT } from '../helpers/cli.js';

const execFileP = promisify(execFile);

const WEB_ID = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'http://api.shop:8080';
const WEB = 'http://web.shop:80';
/** Outbound proxies of the example's workloads. */
const OUT = { web1: 'http://127.0.20.1:15001', web2: 'http://127.0.20.2:15001', api1: 'http://127.0.30.1:15001' } as const;
const COMPONENTS = ['control', 'proxy-node-a', 'proxy-node-b', 'ingress', 'web-1', 'web-2', 'api-1', 'api-2'];
const INGRESS_ID = 'spiffe://cluster.local/ns/ward-system/sa/ward-ingress';
/** Every address:port `ward up` listens on for the example. */
const LISTENERS: [string, number][] = [
  ['127.0.0.1', 8443],
  ['127.0.0.1', 8444],
  ['127.0.0.1', 9443],
  ['127.0.10.1', 15000],
  ['127.0.10.1', 15008],
  ['127.0.10.2', 15000],
  ['127.0.10.2', 15008],
  ['127.0.20.1', 15001],
  ['127.0.20.2', 15001],
  ['127.0.30.1', 15001],
  ['127.0.30.2', 15001],
  ['127.0.20.1', 8080],
  ['127.0.20.2', 8080],
  ['127.0.30.1', 9090],
  ['127.0.30.2', 9090],
  ['127.0.0.1', 10443],
  ['127.0.0.1', 10080],
  ['127.0.0.1', 15020],
];
/** Bound on a mesh start: control plane, two proxies with their certificates, four apps. */
const UP_MS = 60_000;
/** Bound on every single request: a hang fails the test instead of hanging it. */
const REQUEST_MS = 10_000;
/**
 * Bound on `ward check` turning green after a restart: a proxy reports each certificate change at
 * once, so this takes seconds; the bound leaves room for one periodic health report (every 30s).
 */
const CONVERGE_MS = 40_000;

type Child = ChildProcessWithoutNullStreams & { output: { stdout: string; stderr: string }; closed: Promise<unknown> };
interface Processes {
  pid: number;
  components: { name: string; pid: number; running: boolean; restarts: number }[];
}
interface Echo {
  workload: string;
  method: string;
  path: string;
  caller: string | null;
}

let tmp: string;
let stateDir: string;
let cwd: string;
let up: Child;
/** Every `ward up` started here, for the cleanup whatever happens. */
const ups: Child[] = [];
let rootFingerprint: string;

// ---- helpers --------------------------------------------------------------------------------

/**
 * `ward up --state DIR` from `cwd` (no ward.yaml there: the built-in example). tsx is passed by
 * absolute URL: `--import tsx` resolves from the cwd, and ward up re-runs its own execArgv for its
 * children. Its own process group (detached), so the cleanup can reach every descendant at once.
 */
function spawnUp(): Child {
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  const child = spawn(process.execPath, ['--import', tsx, join(REPO_ROOT, 'cli/main.ts'), 'up', '--state', stateDir], {
    cwd,
    env: { ...process.env, NODE_OPTIONS: '' },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  }) as Child;
  child.output = { stdout: '', stderr: '' };
  // 'close': exited and its output read to the end.
  child.closed = once(child, 'close');
  child.closed.catch(() => undefined);
  child.stdout.setEncoding('utf8').on('data', (s: string) => (child.output.stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (child.output.stderr += s));
  ups.push(child);
  return child;
}

/** Resolves once `re` matches the child's standard output; rejects if it exits first. */
function stdoutMatch(child: Child, re: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      const m = re.exec(child.output.stdout);
      if (!m) return false;
      child.stdout.off('data', check);
      child.off('close', onExit);
      resolve(m);
      return true;
    };
    const onExit = (code: number | null, signal: string | null) => {
      child.stdout.off('data', check);
      reject(new Error(`ward up exited (${code ?? signal}) before writing ${re}; stderr:\n${child.output.stderr.slice(-4000)}`));
    };
    if (check()) return;
    child.stdout.on('data', check);
    child.once('close', onExit);
  });
}

/** DIR/processes.json (rewritten, through a rename, as components start and exit). */
async function processes(): Promise<Processes> {
  return vi.waitFor(async () => JSON.parse(await readFile(join(stateDir, 'processes.json'), 'utf8')) as Processes, { timeout: 5_000, interval: 50 });
}

/** The pid of a running component, per processes.json. */
async function pidOf(name: string): Promise<number> {
  return vi.waitFor(
    async () => {
      const c = (JSON.parse(await readFile(join(stateDir, 'processes.json'), 'utf8')) as Processes).components.find((x) => x.name === name);
      expect(c?.running, `${name} in processes.json`).toBe(true);
      return c!.pid;
    },
    { timeout: 5_000, interval: 50 },
  );
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/**
 * The processes of process group `pgid` that are not zombies (a zombie is dead, waiting for its
 * parent to collect it), from /proc. Where there is no /proc, whether the group exists at all.
 */
async function liveInGroup(pgid: number): Promise<string[]> {
  if (!existsSync('/proc/self/stat')) return alive(-pgid) ? [`process group ${pgid}`] : [];
  const out: string[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const close = stat.lastIndexOf(')');
    if (close < 0) continue;
    const [state, , pgrp] = stat.slice(close + 2).split(' ');
    if (Number(pgrp) === pgid && state !== 'Z') out.push(`${entry} ${stat.slice(stat.indexOf('(') + 1, close)} (${state})`);
  }
  return out;
}

function connectError(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.setTimeout(2_000, () => s.destroy(new Error('connect timeout')));
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** undici through a workload's outbound proxy, absolute-form (proxyTunnel: false), kept alive. */
const agents = new Map<string, ProxyAgent>();
function agent(proxy: string, tunnel = false): ProxyAgent {
  const key = `${proxy} ${tunnel}`;
  let a = agents.get(key);
  if (!a) {
    a = new ProxyAgent({ uri: proxy, proxyTunnel: tunnel, headersTimeout: REQUEST_MS, bodyTimeout: REQUEST_MS });
    agents.set(key, a);
  }
  return a;
}
async function closeAgents(): Promise<void> {
  const all = [...agents.values()];
  agents.clear();
  await Promise.all(all.map((a) => a.close()));
}

async function call(proxy: string, url: string, o: { method?: string; headers?: Record<string, string>; tunnel?: boolean } = {}): Promise<{ status: number; body: string }> {
  const res = await request(url, { dispatcher: agent(proxy, o.tunnel), method: (o.method ?? 'GET') as Dispatcher.HttpMethod, headers: o.headers, signal: AbortSignal.timeout(REQUEST_MS) });
  return { status: res.statusCode, body: await res.body.text() };
}

/** A GET that must succeed: the app's answer. */
async function echoVia(proxy: string, url: string): Promise<Echo> {
  const r = await call(proxy, url);
  expect(r.status, r.body).toBe(200);
  return JSON.parse(r.body) as Echo;
}

async function curl(args: string[]): Promise<{ status: number; body: string }> {
  const { stdout } = await execFileP('curl', ['-sS', '--max-time', String(REQUEST_MS / 1000), '-o', '-', '-w', '\n%{http_code}', ...args], { timeout: REQUEST_MS + 2_000 });
  const cut = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, cut) };
}

async function activeRoot(): Promise<string> {
  const r = await ward(['ca', 'inspect', '--state', stateDir, '--json']);
  expect(r.code, r.stderr).toBe(0);
  const report = JSON.parse(r.stdout) as { certificates: { role: string; active: boolean; fingerprint: string }[] };
  const roots = report.certificates.filter((c) => c.role === 'root' && c.active);
  expect(roots).toHaveLength(1);
  return roots[0].fingerprint;
}

async function expectCheckGreen(timeout: number): Promise<void> {
  await vi.waitFor(
    async () => {
      const r = await ward(['check']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toContain('Status check results are ✓');
    },
    { timeout, interval: 500 },
  );
}

/** After a stop: every process gone (the group too: no grandchild survives), files removed, ports closed. */
async function expectNothingLeft(child: Child, last: Processes): Promise<void> {
  expect(existsSync(join(stateDir, 'processes.json'))).toBe(false);
  expect(existsSync(join(stateDir, 'processes.json.tmp'))).toBe(false);
  expect(existsSync(join(stateDir, 'up.pid'))).toBe(false);
  expect(last.pid).toBe(child.pid);
  for (const pid of [last.pid, ...last.components.map((c) => c.pid)]) expect(alive(pid), `pid ${pid}`).toBe(false);
  // Its process group too, so nothing it started indirectly survives. Polled, bounded: running from
  // sources, tsx may have started an esbuild service beside a component, which exits (on its
  // parent's exit) just after it.
  await vi.waitFor(async () => expect(await liveInGroup(child.pid!)).toEqual([]), { timeout: 5_000, interval: 50 });
  const refused = await Promise.all(LISTENERS.map(async ([h, p]) => `${h}:${p} ${await connectError(h, p)}`));
  expect(refused).toEqual(LISTENERS.map(([h, p]) => `${h}:${p} ECONNREFUSED`));
}

// ---- the mesh -------------------------------------------------------------------------------

describe('ward up: the built-in example mesh as real processes', () => {
  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'ward-e2e-up-'));
    stateDir = join(tmp, 'state');
    cwd = join(tmp, 'cwd');
    await mkdir(cwd);
    up = spawnUp();
    await stdoutMatch(up, /Ward is up/);
    rootFingerprint = await activeRoot();
  }, UP_MS + 10_000);

  afterAll(async () => {
    await closeAgents();
    for (const c of ups) {
      if (c.exitCode === null && c.signalCode === null) {
        // Its children first (processes.json), in case one left the group; then the whole group.
        const p = await readFile(join(stateDir, 'processes.json'), 'utf8').then((t) => JSON.parse(t) as Processes, () => undefined);
        for (const comp of p?.components ?? []) {
          try {
            if (comp.running) process.kill(comp.pid, 'SIGKILL');
          } catch {
            /* gone already */
          }
        }
      }
      try {
        process.kill(-c.pid!, 'SIGKILL');
      } catch {
        /* the group is empty: nothing left */
      }
    }
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }, 20_000);

  it('started every component from the built-in example and prints the tour', async () => {
    expect(up.output.stdout).toContain('from the built-in example');
    expect(up.output.stdout).toContain(`curl -x ${OUT.web1} ${API}/hello`);
    expect(existsSync(join(cwd, 'ward.yaml'))).toBe(false);
    const p = await processes();
    expect(p.pid).toBe(up.pid);
    expect(p.components.map((c) => c.name).sort()).toEqual([...COMPONENTS].sort());
    for (const c of p.components) expect(c, c.name).toMatchObject({ running: true, restarts: 0 });
    expect((await readFile(join(stateDir, 'up.pid'), 'utf8')).trim()).toBe(String(up.pid));
  });

  it('allows web → api GET with the caller identity, denies POST and api → web (curl and undici)', async () => {
    // curl, as the tour says.
    const got = await curl(['-x', OUT.web1, `${API}/hello`]);
    expect(got.status, got.body).toBe(200);
    expect(JSON.parse(got.body)).toEqual({ workload: 'api-1', method: 'GET', path: '/hello', caller: WEB_ID });
    const posted = await curl(['-x', OUT.web1, '-X', 'POST', `${API}/hello`]);
    expect(posted).toEqual({ status: 403, body: 'ward: denied by authorization policy\n' });
    // web-2, on the other node, is allowed too.
    const fromWeb2 = await curl(['-x', OUT.web2, `${API}/from-web-2`]);
    expect(fromWeb2.status, fromWeb2.body).toBe(200);
    expect(JSON.parse(fromWeb2.body)).toMatchObject({ path: '/from-web-2', caller: WEB_ID });
    // api → web: web accepts only the ingress.
    const apiToWeb = await curl(['-x', OUT.api1, `${WEB}/`]);
    expect(apiToWeb.status, apiToWeb.body).toBe(403);

    // undici, absolute-form through the proxy; a forged identity header is not what the app sees.
    const echo = await call(OUT.web1, `${API}/x?y=1`, { headers: { 'x-ward-source-identity': 'spiffe://cluster.local/ns/shop/sa/admin' } });
    expect(echo.status, echo.body).toBe(200);
    expect(JSON.parse(echo.body)).toEqual({ workload: 'api-1', method: 'GET', path: '/x?y=1', caller: WEB_ID });
    expect((await call(OUT.web1, `${API}/x`, { method: 'HEAD' })).status).toBe(200);
    expect(await call(OUT.web1, `${API}/x`, { method: 'POST' })).toEqual({ status: 403, body: 'ward: denied by authorization policy\n' });
    expect((await call(OUT.web1, `${API}/x`, { method: 'DELETE' })).status).toBe(403);
    expect((await call(OUT.web2, `${API}/x`)).status).toBe(200);
    expect((await call(OUT.api1, `${WEB}/`)).status).toBe(403);
    // undici's default ProxyAgent tunnels (CONNECT): a TCP tunnel cannot match api's GET/HEAD rule,
    // so it is denied (the connection closed) rather than a way around the method rule.
    await expect(call(OUT.web1, `${API}/tunnelled`, { tunnel: true })).rejects.toThrow();
  });

  it('the ingress serves shop.localhost with a certificate from Ward\'s CA, into web across nodes', async () => {
    const bundle = join(stateDir, 'bundle.pem');
    expect(up.output.stdout).toContain(`curl --cacert ${bundle} https://shop.localhost:10443/hello`);
    // As the tour says: trusted with the mesh bundle, routed to web, which sees the ingress identity.
    const seen = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const got = await curl(['--cacert', bundle, '--resolve', 'shop.localhost:10443:127.0.0.1', `https://shop.localhost:10443/hello?i=${i}`]);
      expect(got.status, got.body).toBe(200);
      const echo = JSON.parse(got.body) as Echo;
      expect(echo).toMatchObject({ method: 'GET', path: `/hello?i=${i}`, caller: INGRESS_ID });
      seen.add(echo.workload);
    }
    // Balanced across both web replicas (one per node).
    expect([...seen].sort()).toEqual(['web-1', 'web-2']);
    // Not trusted without Ward's root (an internal name, not for the public internet).
    await expect(curl(['--resolve', 'shop.localhost:10443:127.0.0.1', 'https://shop.localhost:10443/'])).rejects.toThrow(/certificate/i);
    // Plain HTTP redirects.
    const redirect = await execFileP('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{redirect_url}', '--resolve', 'shop.localhost:10080:127.0.0.1', 'http://shop.localhost:10080/a?b=1'], { timeout: REQUEST_MS });
    expect(redirect.stdout).toBe('308 https://shop.localhost:10443/a?b=1');
    // The CA recorded it as an internal-name certificate requested by the ingress.
    const inv = await ward(['ca', 'inspect', '--state', stateDir, '--json', '--latest', '1000']);
    expect(inv.code, inv.stderr).toBe(0);
    expect(inv.stdout).toContain('dns:shop.localhost');
  });

  it('a node proxy killed: ward check fails naming the node, the supervisor restarts it, green again', async () => {
    await expectCheckGreen(CONVERGE_MS);
    const pid = await pidOf('proxy-node-b');
    process.kill(pid, 'SIGKILL');
    // Red while it is down: restarted after 0.5s, it then needs a start-up and a reconnection.
    const red = await vi.waitFor(
      async () => {
        const r = await ward(['check']);
        expect(r.code).toBe(1);
        return r.stdout;
      },
      { timeout: 3_000, interval: 50 },
    );
    expect(red).toMatch(/× every node proxy is connected\n\s+not connected: node-b \(1 of 2 connected\)/);
    expect(red).toMatch(/× every workload has an identity[^\n]*\n\s+without an identity: shop\/web-2 \(node node-b: proxy not connected\), shop\/api-2 \(node node-b: proxy not connected\)/);
    expect(red).not.toMatch(/node-a/);
    // The supervisor says so and restarts it.
    await stderrMatch(up, /× proxy-node-b stopped unexpectedly \(signal SIGKILL\); restarting/);
    const [, newPid] = await stderrMatch(up, /✓ proxy-node-b restarted \(pid (\d+)\)/);
    expect(Number(newPid)).not.toBe(pid);
    // Traffic through the restarted proxy (web-2 is on node-b), then green.
    await vi.waitFor(async () => expect((await call(OUT.web2, `${API}/after-restart`)).status).toBe(200), { timeout: 15_000, interval: 200 });
    await expectCheckGreen(CONVERGE_MS);
    const p = await processes();
    expect(p.components.find((c) => c.name === 'proxy-node-b')).toMatchObject({ pid: Number(newPid), running: true, restarts: 1 });
  }, CONVERGE_MS * 2 + 15_000);

  it('a workload killed: GETs from web-1 fail over to the other replica, none fails; it is restarted', async () => {
    // web-1's proxy prefers the api replica on its own node.
    expect(await echoVia(OUT.web1, `${API}/before`)).toMatchObject({ workload: 'api-1', caller: WEB_ID });
    const pid = await pidOf('api-1');
    process.kill(pid, 'SIGKILL');
    let restarted: string | undefined;
    // Not awaited: the loop below ends once it is seen (or at its deadline).
    stderrMatch(up, /✓ api-1 restarted \(pid (\d+)\)/).then(
      (m) => (restarted = m[1]),
      () => undefined,
    );
    // Bounded load: until the supervisor restarted it (and at least 20 GETs), at most 20s.
    const answers = new Map<string, number>();
    const failures: string[] = [];
    const deadline = Date.now() + 20_000;
    let n = 0;
    while ((restarted === undefined || n < 20) && Date.now() < deadline) {
      n++;
      const r = await call(OUT.web1, `${API}/during-${n}`).catch((err: Error) => ({ status: 0, body: err.message }));
      if (r.status !== 200) failures.push(`${n}: ${r.status} ${r.body}`);
      else {
        const e = JSON.parse(r.body) as Echo;
        expect(e.caller).toBe(WEB_ID);
        answers.set(e.workload, (answers.get(e.workload) ?? 0) + 1);
      }
    }
    expect(failures).toEqual([]);
    expect(restarted, 'the supervisor restarted api-1 within 20s').toBeDefined();
    expect(Number(restarted)).not.toBe(pid);
    expect(answers.get('api-2') ?? 0).toBeGreaterThan(0);
    expect(up.output.stderr).toMatch(/× api-1 stopped unexpectedly \(signal SIGKILL\); restarting/);
    // Listening again (the supervisor reports the spawn, not the listen).
    await vi.waitFor(async () => expect(await connectError('127.0.30.1', 9090)).toBe('connected'), { timeout: 10_000, interval: 100 });
  }, 40_000);

  it('control plane killed: traffic and the deny rule continue; restarted, ward check converges to green', async () => {
    const pid = await pidOf('control');
    process.kill(pid, 'SIGKILL');
    await vi.waitFor(async () => expect(await connectError('127.0.0.1', 9443)).toBe('ECONNREFUSED'), { timeout: 5_000, interval: 20 });
    let served = 0;
    for (let i = 0; i < 3; i++) {
      expect(await echoVia(OUT.web1, `${API}/while-control-is-down`)).toMatchObject({ caller: WEB_ID });
      expect((await call(OUT.web1, `${API}/while-control-is-down`, { method: 'POST' })).status).toBe(403);
      expect((await call(OUT.web2, `${API}/while-control-is-down`)).status).toBe(200);
      served++;
    }
    const st = await ward(['status']);
    // Still down after those requests and `ward status` (the supervisor waits 0.5s, then the control
    // plane needs a start-up): all of them ran without it.
    expect(await connectError('127.0.0.1', 9443)).toBe('ECONNREFUSED');
    expect(served).toBe(3);
    expect(st.code).toBe(1);
    expect(st.stderr).toMatch(/cannot reach the admin endpoint http:\/\/127\.0\.0\.1:9443/);

    await stderrMatch(up, /× control stopped unexpectedly \(signal SIGKILL\); restarting/);
    const restarted = await stderrMatch(up, /✓ control restarted \(pid (\d+)\)/);
    expect(Number(restarted[1])).not.toBe(pid);
    await expectCheckGreen(CONVERGE_MS);
    const status = await ward(['status']);
    expect(status.code, status.stdout + status.stderr).toBe(0);
    expect(status.stdout).toContain('All proxies connected');
    // Same CA state on disk: the restarted control plane serves the same root.
    expect(await activeRoot()).toBe(rootFingerprint);
    expect(up.output.stderr.slice(restarted.index)).toContain('CA opened');
    expect(up.output.stderr.slice(restarted.index)).not.toContain('created a CA');
  }, CONVERGE_MS + 20_000);

  it('SIGTERM stops everything; ward down stops a second ward up, which keeps the same root', async () => {
    // 1. SIGTERM to the first, with idle keep-alive clients on two outbound proxies: they must not
    // hold the drain until a deadline (the proxies' 5s, the supervisor's 10s); it takes under a
    // second here.
    expect((await call(OUT.web1, `${API}/keep-alive`)).status).toBe(200);
    expect((await call(OUT.web2, `${API}/keep-alive`)).status).toBe(200);
    const last = await processes();
    expect(last.components.every((c) => c.running)).toBe(true);
    const signalled = Date.now();
    up.kill('SIGTERM');
    expect(await exited(up), up.output.stderr.slice(-4000)).toBe(0);
    expect(Date.now() - signalled).toBeLessThan(5_000);
    await up.closed;
    await closeAgents();
    expect(up.output.stderr).toContain('ward up: SIGTERM: draining and stopping everything');
    expect(up.output.stderr).toMatch(/ward up: stopped\n$/);
    await expectNothingLeft(up, last);

    // 2. A second one on the same state directory: same root, no new CA; stopped by `ward down`.
    const second = spawnUp();
    await stdoutMatch(second, /Ward is up/);
    expect(second.output.stderr).not.toContain('created a CA');
    expect(await activeRoot()).toBe(rootFingerprint);
    expect(await echoVia(OUT.web1, `${API}/second-run`)).toMatchObject({ caller: WEB_ID });
    await closeAgents();
    const running = await processes();
    expect(running.pid).toBe(second.pid);
    const down = await ward(['down', '--state', stateDir]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stderr).toContain(`ward down: stopped ward up (pid ${second.pid})`);
    expect(await exited(second), second.output.stderr.slice(-4000)).toBe(0);
    await second.closed;
    await expectNothingLeft(second, running);
    // Nothing to stop any more.
    const again = await ward(['down', '--state', stateDir]);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('no "ward up" is running');
  }, 90_000);
});
