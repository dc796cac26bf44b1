/**
 * `ward status` against a stubbed admin endpoint (node:http on 127.0.0.1:0) serving a fixture built
 * from real HealthAggregator.meshStatus() output on the example mesh.
 */
import { createServer, type Server } from 'node:http';
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../../core/clock.js';
import { isWardError } from '../../core/errors.js';
import { createRegistry } from '../../core/metrics.js';
import { EXAMPLE_WARD_YAML, HealthAggregator, parseWardYaml, type MeshStatus, type StreamClientInfo } from '../../discovery/index.js';
import { parseCommandArgs, type CliIo } from '../../cli/command.js';
import { statusCommands } from '../../cli/status.js';

const model = parseWardYaml(EXAMPLE_WARD_YAML, 'ward.yaml');
const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';
const node = (n: string) => `spiffe://cluster.local/ward/node/${n}`;
const inHours = (h: number) => new Date(Date.now() + h * 3_600_000).toISOString();

/** A real mesh status: both nodes connected and reporting; `mutate` spoils it for a test. */
function fixture(o: { connected?: string[]; unhealthy?: boolean; missingCert?: boolean } = {}): MeshStatus {
  const agg = new HealthAggregator({ clock: new ManualClock(Date.now()), registry: createRegistry() });
  for (const n of ['node-a', 'node-b']) {
    const suffix = n === 'node-a' ? '1' : '2';
    const certs = [{ identity: node(n), notAfter: inHours(24) }, { identity: WEB, notAfter: inHours(1) }];
    if (!(o.missingCert && n === 'node-b')) certs.push({ identity: API, notAfter: inHours(2) });
    const verdict = agg.receive({ identity: node(n), node: n }, {
      node: n,
      ejected: [],
      localWorkloads: [
        { workload: `shop/web-${suffix}`, healthy: true },
        { workload: `shop/api-${suffix}`, healthy: !(o.unhealthy && n === 'node-b'), ...(o.unhealthy && n === 'node-b' ? { reason: 'probe failed' } : {}) },
      ],
      certificates: certs,
    }, model);
    expect(verdict.status).toBe(204);
  }
  const clients: StreamClientInfo[] = (o.connected ?? ['node-a', 'node-b']).map((n) => ({ identity: node(n), node: n, view: 'node', sentVersion: 42, ackedVersion: n === 'node-a' ? 42 : 41, nacks: 0 }));
  return agg.meshStatus(model, { version: 42, clients });
}

/** An admin endpoint answering GET /v1/status with `body`. */
async function adminServer(body: unknown): Promise<string> {
  const server: Server = createServer((req, res) => {
    if (req.url?.startsWith('/v1/status')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onTestFinished(() => new Promise<void>((r) => server.close(() => r())));
  const addr = server.address();
  return `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
}

/** Runs `ward status ARGS` the way cli/run.ts runs a command (help, usage and error handling). */
async function status(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const cmd = statusCommands.find((c) => c.name === 'status')!;
  let stdout = '';
  let stderr = '';
  const out = new PassThrough().on('data', (c: Buffer) => (stdout += c.toString()));
  const err = new PassThrough().on('data', (c: Buffer) => (stderr += c.toString()));
  const io: CliIo = { stdout: out, stderr: err, stdin: Readable.from([]), env: {} };
  let code: number;
  if (argv.includes('--help')) {
    out.write(cmd.help + '\n');
    code = 0;
  } else {
    try {
      code = await cmd.run(parseCommandArgs(cmd, argv), io);
    } catch (e) {
      if (!isWardError(e)) throw e;
      err.write(`ward status: error[${e.code}]: ${e.message}\n`);
      code = e.code === 'WARD_USAGE' ? 2 : 1;
    }
  }
  await new Promise((r) => setImmediate(r));
  return { code, stdout, stderr };
}

describe('ward status', () => {
  it('renders nodes, workloads and services; exit 0 when all is well', async () => {
    const url = await adminServer({ ca: { trustDomain: 'cluster.local' }, mesh: fixture() });
    const r = await status(['--server', url]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Mesh cluster.local  version 42');
    expect(r.stdout).toMatch(/node-a\s+connected\s+42 \/ 42\s+in 1h/);
    expect(r.stdout).toMatch(/node-b\s+connected\s+41 \/ 42 \(behind\)/);
    expect(r.stdout).toMatch(/shop\/web-1\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web\s+node-a\s+healthy\s+in 1h$/m);
    expect(r.stdout).toMatch(/web\.shop\s+2 \/ 2\s+0/);
    expect(r.stdout).toContain('All proxies connected');
  });

  it('--json prints the mesh status as served', async () => {
    const mesh = fixture();
    const url = await adminServer({ mesh });
    const r = await status(['--server', url, '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(mesh);
  });

  it('exit 1 for a disconnected proxy, an unhealthy workload, a missing certificate', async () => {
    const down = await status(['--server', await adminServer({ mesh: fixture({ connected: ['node-a'] }) })]);
    expect(down.code).toBe(1);
    expect(down.stdout).toMatch(/node-b\s+DISCONNECTED/);
    expect(down.stdout).toContain('node node-b: its proxy is not connected');
    expect(down.stdout).toMatch(/web\.shop\s+1 \/ 2/);

    const sick = await status(['--server', await adminServer({ mesh: fixture({ unhealthy: true }) })]);
    expect(sick.code).toBe(1);
    expect(sick.stdout).toMatch(/shop\/api-2 .*UNHEALTHY \(probe failed\)/);

    const noCert = await status(['--server', await adminServer({ mesh: fixture({ missingCert: true }) }), '--json']);
    expect(noCert.code).toBe(1);
    expect((JSON.parse(noCert.stdout) as MeshStatus).workloads.find((w) => w.name === 'api-2')!.certificateNotAfter).toBeUndefined();
  });

  it('says clearly when the server is a bare CA, or cannot be reached; --help and usage', async () => {
    const bare = await status(['--server', await adminServer({ trustDomain: 'cluster.local', roots: [] })]);
    expect(bare.code).toBe(1);
    expect(bare.stderr).toMatch(/bare certificate authority \("ward ca serve"\)/);

    // A port nothing listens on: take one and close it.
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const down = await status(['--server', `http://127.0.0.1:${port}`]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/error\[WARD_CA_UNREACHABLE\]: cannot reach the admin endpoint .*ECONNREFUSED/);

    expect((await status(['--server', 'not a url'])).code).toBe(2);
    expect((await status(['--bogus'])).code).toBe(2);
    const help = await status(['--help']);
    expect(help.stdout).toContain('Usage: ward status');
    expect(help.stdout).toContain('Exit status');
  });
});
