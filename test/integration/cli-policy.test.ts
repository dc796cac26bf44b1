/**
 * `ward policy explain` in-process (test/helpers/cli.ts `ward()`): the built-in example mesh, a
 * custom ward.yaml with DENY, AUDIT, paths, a TCP port and two services sharing one target port,
 * usage errors and exit codes, and the live mode against a real `ward control` (startControl on
 * 127.0.0.1:0) answering GET /v1/policies — including an edit of ward.yaml reaching the answer.
 */
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { stringify } from 'yaml';
import { startControl } from '../../cli/control.js';
import { policyCommands } from '../../cli/policy.js';
import { silentLogger } from '../../core/logger.js';
import { EXAMPLE_WARD_YAML } from '../../discovery/index.js';
import { ward } from '../helpers/cli.js';

const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';
const INGRESS = 'spiffe://cluster.local/ns/ward-system/sa/ward-ingress';

const policy = (name: string, spec: unknown) => ({ apiVersion: 'security.ward.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name, namespace: 'prod' }, spec });

/**
 * app:80 → 8080 (http): DENY on /admin and below, ALLOW from namespaces prod and ops.
 * db:5432 (tcp): ALLOW from prod on port 5432; AUDIT of anything from ops.
 * legacy:80 and legacy-alias:8080 both reach target port 7070 of legacy-1; legacy allows prod,
 * legacy-alias only ops, so prod is denied through either name (the proxy requires both).
 * batch:80 → 6060 is selected by no policy (the mesh default decides).
 */
const CUSTOM = {
  apiVersion: 'ward.dev/v1alpha1',
  kind: 'Mesh',
  trustDomain: 'example.org',
  nodes: [{ name: 'node-a', address: '127.0.10.1' }],
  workloads: [
    { name: 'web-1', namespace: 'prod', serviceAccount: 'web', node: 'node-a', address: '127.0.20.1', ports: [8080], labels: { app: 'web' } },
    { name: 'app-1', namespace: 'prod', serviceAccount: 'app', node: 'node-a', address: '127.0.20.2', ports: [8080], labels: { app: 'app' } },
    { name: 'db-1', namespace: 'prod', serviceAccount: 'db', node: 'node-a', address: '127.0.20.3', ports: [5432], labels: { app: 'db' } },
    { name: 'legacy-1', namespace: 'prod', serviceAccount: 'legacy', node: 'node-a', address: '127.0.20.4', ports: [7070], labels: { app: 'legacy' } },
    { name: 'batch-1', namespace: 'prod', serviceAccount: 'batch', node: 'node-a', address: '127.0.20.5', ports: [6060, 6061], labels: { app: 'batch' } },
  ],
  services: [
    { name: 'app', namespace: 'prod', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'http' }], selector: { app: 'app' } },
    { name: 'db', namespace: 'prod', ports: [{ name: 'pg', port: 5432, protocol: 'tcp' }], selector: { app: 'db' } },
    { name: 'legacy', namespace: 'prod', ports: [{ port: 80, targetPort: 7070 }], selector: { app: 'legacy' } },
    { name: 'legacy-alias', namespace: 'prod', ports: [{ port: 8080, targetPort: 7070 }], selector: { app: 'legacy' } },
    { name: 'batch', namespace: 'prod', ports: [{ name: 'http', port: 80, targetPort: 6060 }, { name: 'admin', port: 81, targetPort: 6061 }], selector: { app: 'batch' } },
  ],
  policies: [
    policy('app-deny-admin', { selector: { service: 'app' }, action: 'DENY', rules: [{ to: [{ paths: ['/admin', '/admin/*'] }] }] }),
    policy('app-allow', { selector: { service: 'app' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['prod', 'ops'] }] }] }),
    policy('db-allow', { selector: { service: 'db' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['prod'] }], to: [{ ports: [5432] }] }] }),
    policy('db-audit-ops', { selector: { service: 'db' }, action: 'AUDIT', rules: [{ from: [{ namespaces: ['ops'] }] }] }),
    policy('legacy-allow', { selector: { service: 'legacy' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['prod'] }] }] }),
    policy('legacy-alias-allow', { selector: { service: 'legacy-alias' }, action: 'ALLOW', rules: [{ from: [{ namespaces: ['ops'] }] }] }),
  ],
};

/** A temporary directory removed when the test ends. */
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ward-policy-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function configFile(text: string): Promise<string> {
  const file = join(await tempDir(), 'ward.yaml');
  await writeFile(file, text);
  return file;
}

/** `ward policy explain ARGS --json`, parsed; the exit code beside it. */
async function explainJson(args: string[]): Promise<{ code: number; json: Record<string, any>; stderr: string }> {
  const r = await ward(['policy', 'explain', ...args, '--json']);
  expect(r.stdout, r.stderr).not.toBe('');
  return { code: r.code, json: JSON.parse(r.stdout), stderr: r.stderr };
}

describe('ward policy explain: the built-in example mesh', () => {
  async function example(): Promise<string> {
    return configFile(EXAMPLE_WARD_YAML);
  }

  it('web → api GET is ALLOWED by shop/api-allow-web-get rule 0, printed as YAML (exit 0)', async () => {
    const cfg = await example();
    const r = await ward(['policy', 'explain', '--from', WEB, '--to', 'api.shop:8080', '--method', 'GET', '--path', '/v1/items', '--config', cfg]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toBe('ALLOWED');
    expect(r.stdout).toContain(`GET /v1/items from ${WEB} to api.shop:8080 (http, target port 9090)`);
    expect(r.stdout).toContain('allowed by policy shop/api-allow-web-get, rule 0 (ALLOW):');
    // The rule itself, as YAML.
    expect(r.stdout).toMatch(/from:\n\s+- identities:\n\s+- spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web\n\s+to:\n\s+- methods:\n\s+- GET\n\s+- HEAD/);
    expect(r.stderr).toContain(`policies from ${cfg}`);
  });

  it('web → api POST is DENIED: no-allow-match, naming the ALLOW policy that selects api (exit 1)', async () => {
    const cfg = await example();
    const r = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--method', 'post', '--path', '/v1/items', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n')[0]).toBe('DENIED');
    expect(r.stdout).toContain('ALLOW policies select api.shop and no rule of theirs matches');
    expect(r.stdout).toContain('shop/api-allow-web-get');
    const j = await explainJson(['--from', 'shop/web', '--to', 'api.shop', '--method', 'POST', '--path', '/v1/items', '--config', cfg]);
    expect(j.code).toBe(1);
    expect(j.json).toMatchObject({ allowed: false, reason: 'no-allow-match', candidates: ['shop/api-allow-web-get'], request: { method: 'POST', source: WEB } });
  });

  it('api → web is DENIED (only the ingress may call web: shop/web-allow-ingress); GET / is explained and said so', async () => {
    const cfg = await example();
    const r = await ward(['policy', 'explain', '--from', API, '--to', 'web.shop', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n')[0]).toBe('DENIED');
    expect(r.stdout).toContain('shop/web-allow-ingress');
    expect(r.stdout).toContain('no --method/--path was given: explaining GET /');
  });

  it('the ingress identity → web is ALLOWED by shop/web-allow-ingress (also via the .svc.cluster.local name)', async () => {
    const cfg = await example();
    for (const to of ['web.shop:80', 'web.shop.svc.cluster.local:80', 'WEB.shop.svc.']) {
      const { code, json } = await explainJson(['--from', INGRESS, '--to', to, '--path', '/', '--config', cfg]);
      expect(code, to).toBe(0);
      expect(json).toMatchObject({ allowed: true, reason: 'allow-policy', policy: 'shop/web-allow-ingress', rule: 0 });
    }
    const short = await explainJson(['--from', 'ward-system/ward-ingress', '--to', 'web.shop', '--config', cfg]);
    expect(short.json.request.source).toBe(INGRESS);
    expect(short.json.allowed).toBe(true);
  });

  it('--json has the documented shape', async () => {
    const { code, json } = await explainJson(['--from', 'shop/web', '--to', 'api.shop:8080', '--method', 'GET', '--path', '/v1/items?page=2', '--config', await example()]);
    expect(code).toBe(0);
    expect(json).toEqual({
      allowed: true,
      reason: 'allow-policy',
      policy: 'shop/api-allow-web-get',
      rule: 0,
      request: { source: WEB, service: 'api', namespace: 'shop', port: 8080, targetPort: 9090, protocol: 'http', method: 'GET', path: '/v1/items', pathGiven: '/v1/items?page=2' },
      targets: [{ service: 'api', namespace: 'shop', port: 8080, workloads: ['shop/api-1', 'shop/api-2'], allowed: true, reason: 'allow-policy', policy: 'shop/api-allow-web-get', rule: 0 }],
      defaultPolicy: 'all-authenticated',
      trustDomain: 'cluster.local',
      policiesFrom: expect.stringMatching(/ward\.yaml$/),
      notes: [expect.stringContaining('/v1/items?page=2 is normalized to /v1/items')],
    });
  });

  it('without --config or --server: ./ward.yaml when present, else the built-in example (said on stderr)', async () => {
    const dir = await tempDir();
    const cwd = process.cwd();
    process.chdir(dir);
    onTestFinished(() => process.chdir(cwd));
    const builtIn = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop']);
    expect(builtIn.code).toBe(0);
    expect(builtIn.stderr).toContain('policies from the built-in example mesh');
    // A local ward.yaml in which api has no policy at all: the mesh default decides.
    await writeFile(join(dir, 'ward.yaml'), EXAMPLE_WARD_YAML.replace('selector: {service: api}', 'selector: {service: nothing}'));
    const local = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--method', 'DELETE']);
    expect(local.stderr).toContain('policies from ward.yaml');
    expect(local.code).toBe(0);
    expect(local.stdout).toContain('allowed by the mesh default: no policy selects api.shop');
    const deny = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--default-policy', 'deny', '--json']);
    expect(deny.code).toBe(1);
    expect(JSON.parse(deny.stdout)).toMatchObject({ allowed: false, reason: 'default-deny', defaultPolicy: 'deny' });
  });
});

describe('ward policy explain: DENY, paths, normalization, TCP, shared target ports', () => {
  async function custom(): Promise<string> {
    return configFile(stringify(CUSTOM));
  }

  it('/x/../admin is normalized to /admin and DENIED by prod/app-deny-admin rule 0; the output shows the normalized path', async () => {
    const cfg = await custom();
    const r = await ward(['policy', 'explain', '--from', 'prod/web', '--to', 'app.prod', '--path', '/x/../admin', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n')[0]).toBe('DENIED');
    expect(r.stdout).toContain('path /x/../admin is normalized to /admin');
    expect(r.stdout).toContain('denied by policy prod/app-deny-admin, rule 0 (DENY):');
    expect(r.stdout).toMatch(/- paths:\n\s+- \/admin\n\s+- \/admin\/\*/);
    const { json } = await explainJson(['--from', 'prod/web', '--to', 'app.prod', '--path', '//admin/./users', '--config', cfg]);
    expect(json).toMatchObject({ allowed: false, reason: 'deny-policy', policy: 'prod/app-deny-admin', rule: 0, request: { path: '/admin/users', pathGiven: '//admin/./users' } });
    // The same caller elsewhere on app is allowed (and the DENY does not match /administrator).
    const ok = await explainJson(['--from', 'prod/web', '--to', 'app.prod', '--path', '/administrator', '--config', cfg]);
    expect(ok.code).toBe(0);
    expect(ok.json).toMatchObject({ reason: 'allow-policy', policy: 'prod/app-allow', rule: 0 });
  });

  it('an encoded slash (%2F) is DENIED: the proxy answers 400 before any policy', async () => {
    const cfg = await custom();
    const r = await ward(['policy', 'explain', '--from', 'prod/web', '--to', 'app.prod:80', '--method', 'GET', '--path', '/admin%2Fx', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n')[0]).toBe('DENIED');
    expect(r.stdout).toContain('the proxy answers 400 (encoded-slash)');
    const { json } = await explainJson(['--from', 'prod/web', '--to', 'app.prod:80', '--path', '/a\\b', '--config', cfg]);
    expect(json).toMatchObject({ allowed: false, reason: 'request-refused', refused: 'backslash', targets: [] });
  });

  it('a TCP port is explained as a TCP stream: ALLOW on ports, AUDIT reported; --method on it is a usage error', async () => {
    const cfg = await custom();
    const prod = await ward(['policy', 'explain', '--from', 'prod/app', '--to', 'db.prod', '--config', cfg]);
    expect(prod.code).toBe(0);
    expect(prod.stdout).toContain('TCP stream from spiffe://example.org/ns/prod/sa/app to db.prod:5432 (tcp, target port 5432)');
    expect(prod.stdout).toContain('allowed by policy prod/db-allow, rule 0 (ALLOW)');
    const ops = await explainJson(['--from', 'spiffe://example.org/ns/ops/sa/debug', '--to', 'db.prod:5432', '--config', cfg]);
    expect(ops.code).toBe(1);
    expect(ops.json).toMatchObject({ allowed: false, reason: 'no-allow-match', candidates: ['prod/db-allow'], audit: [{ policy: 'prod/db-audit-ops', rule: 0 }], request: { protocol: 'tcp' } });
    expect(ops.json.request.method).toBeUndefined();
    const human = await ward(['policy', 'explain', '--from', 'ops/debug', '--to', 'db.prod', '--config', cfg]);
    expect(human.stdout).toContain('audit:   matches AUDIT policy prod/db-audit-ops rule 0');
    const bad = await ward(['policy', 'explain', '--from', 'prod/app', '--to', 'db.prod', '--method', 'GET', '--config', cfg]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('port 5432 of db.prod is tcp: --method and --path apply to HTTP requests only');
  });

  it('--tcp explains a CONNECT tunnel to an http port: a path DENY then applies to every stream', async () => {
    const { code, json } = await explainJson(['--from', 'prod/web', '--to', 'app.prod', '--tcp', '--config', await custom()]);
    expect(code).toBe(1);
    expect(json).toMatchObject({ allowed: false, reason: 'deny-policy', policy: 'prod/app-deny-admin', request: { protocol: 'tcp' } });
  });

  it('two services reaching the same target port must both allow, as at the inbound proxy', async () => {
    const cfg = await custom();
    const r = await ward(['policy', 'explain', '--from', 'prod/web', '--to', 'legacy.prod', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n')[0]).toBe('DENIED');
    expect(r.stdout).toContain('legacy.prod:80 alone allows it, but legacy-alias.prod:8080 reaches the same target port 7070');
    expect(r.stdout).toContain('prod/legacy-alias-allow');
    const { json } = await explainJson(['--from', 'prod/web', '--to', 'legacy.prod', '--config', cfg]);
    expect(json).toMatchObject({
      allowed: false,
      reason: 'no-allow-match',
      candidates: ['prod/legacy-alias-allow'],
      decidedBy: { service: 'legacy-alias', namespace: 'prod', port: 8080 },
      targets: [
        { service: 'legacy', port: 80, allowed: true, policy: 'prod/legacy-allow', workloads: ['prod/legacy-1'] },
        { service: 'legacy-alias', port: 8080, allowed: false, reason: 'no-allow-match', workloads: ['prod/legacy-1'] },
      ],
    });
  });

  it('a service with several ports needs one named; a target port is pointed at its service port (exit 2)', async () => {
    const cfg = await custom();
    const several = await ward(['policy', 'explain', '--from', 'prod/web', '--to', 'batch.prod', '--config', cfg]);
    expect(several.code).toBe(2);
    expect(several.stderr).toContain('batch.prod has several ports: name one (batch.prod:PORT) of 80/http "http", 81/http "admin"');
    const target = await ward(['policy', 'explain', '--from', 'prod/web', '--to', 'app.prod:8080', '--config', cfg]);
    expect(target.code).toBe(2);
    expect(target.stderr).toContain('app.prod has no port 8080 (ports: 80/http "http"); 8080 is the target port of service port 80');
    const named = await explainJson(['--from', 'prod/web', '--to', 'batch.prod:81', '--config', cfg]);
    expect(named.code).toBe(0);
    expect(named.json).toMatchObject({ reason: 'default-allow', request: { port: 81, targetPort: 6061 } });
  });
});

describe('ward policy explain: usage and errors', () => {
  it('invalid --from: exit 2 with a clear message', async () => {
    const cfg = await configFile(EXAMPLE_WARD_YAML);
    for (const [from, msg] of [
      ['web', '--from wants a SPIFFE ID (spiffe://cluster.local/ns/NAMESPACE/sa/SERVICE_ACCOUNT) or NAMESPACE/SERVICE_ACCOUNT, got "web"'],
      ['shop/web/x', 'got "shop/web/x"'],
      ['SPIFFE://cluster.local/ns/shop/sa/web', 'scheme must be lowercase'],
      ['spiffe://cluster.local', 'names a trust domain, not a workload'],
      ['shop/we b', '--from wants a SPIFFE ID'],
    ]) {
      const r = await ward(['policy', 'explain', '--from', from, '--to', 'api.shop', '--config', cfg]);
      expect(r.code, from).toBe(2);
      expect(r.stdout, from).toBe('');
      expect(r.stderr, from).toContain(msg);
      expect(r.stderr).toContain('Run "ward policy explain --help" for usage.');
    }
  });

  it('unknown service or malformed --to: exit 2 naming the services that exist', async () => {
    const cfg = await configFile(EXAMPLE_WARD_YAML);
    const unknown = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'db.shop', '--config', cfg]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no service db.shop in the mesh (services: api.shop, web.shop)');
    const malformed = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api', '--config', cfg]);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toContain('--to wants SERVICE.NAMESPACE[:PORT]');
  });

  it('missing flags, a bad --default-policy, --config with --server, a bad method: exit 2', async () => {
    const cfg = await configFile(EXAMPLE_WARD_YAML);
    const cases: [string[], string][] = [
      [['--to', 'api.shop'], '--from is required'],
      [['--from', 'shop/web'], '--to is required'],
      [['--from', 'shop/web', '--to', 'api.shop', '--default-policy', 'allow'], '--default-policy must be all-authenticated or deny'],
      [['--from', 'shop/web', '--to', 'api.shop', '--config', cfg, '--server', 'http://127.0.0.1:1'], '--config and --server are alternatives'],
      [['--from', 'shop/web', '--to', 'api.shop', '--method', 'G T', '--config', cfg], '--method wants an HTTP method token'],
    ];
    for (const [args, msg] of cases) {
      const r = await ward(['policy', 'explain', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain(msg);
    }
  });

  it('a foreign trust domain is DENIED: the proxy refuses it at the handshake', async () => {
    const { code, json } = await explainJson(['--from', 'spiffe://partner.org/ns/shop/sa/web', '--to', 'api.shop', '--config', await configFile(EXAMPLE_WARD_YAML)]);
    expect(code).toBe(1);
    expect(json).toMatchObject({ allowed: false, reason: 'foreign-trust-domain' });
  });

  it('an unreadable or invalid ward.yaml, or an unreachable server: exit 1, nothing on stdout', async () => {
    const missing = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--config', '/nonexistent/ward.yaml']);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr).toContain('cannot read /nonexistent/ward.yaml: ENOENT');
    const invalid = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--config', await configFile('kind: Mesh\nnodes: 3\n')]);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toContain('WARD_CONFIG_INVALID');
    const down = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--server', 'http://127.0.0.1:1']);
    expect(down.code).toBe(1);
    expect(down.stdout).toBe('');
    expect(down.stderr).toContain('WARD_CA_UNREACHABLE');
  });

  it('--help documents every flag, the shorthands and the exit codes; ward --help lists the command', async () => {
    const r = await ward(['policy', 'explain', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: ward policy explain /);
    for (const f of Object.keys(policyCommands[0].options)) expect(r.stdout, `--${f}`).toContain(`--${f}`);
    expect(r.stdout).toContain('NAMESPACE/SERVICE_ACCOUNT');
    expect(r.stdout).toContain('0 allowed, 1 denied');
    expect(r.stdout).toContain('Examples:');
    expect((await ward(['--help'])).stdout).toContain('  policy explain ');
    expect((await ward(['policy', '--help'])).stdout).toContain('policy explain');
  });
});

describe('ward policy explain --server: live from ward control', () => {
  it('decides on the policies the control plane runs now (GET /v1/policies), and follows an edit of ward.yaml', async () => {
    const dir = await tempDir();
    const config = join(dir, 'ward.yaml');
    await writeFile(config, EXAMPLE_WARD_YAML);
    const ctl = await startControl({
      stateDir: join(dir, 'state'),
      config,
      listen: { host: '127.0.0.1', port: 0 },
      discovery: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      init: true,
      logger: silentLogger(),
      source: { debounceMs: 10, pollIntervalMs: 50 },
    });
    onTestFinished(() => ctl.close(1_000));
    const server = `http://127.0.0.1:${ctl.ports.admin}`;

    const raw = await fetch(`${server}/v1/policies`);
    expect(raw.status).toBe(200);
    const snapshot = (await raw.json()) as Record<string, any>;
    expect(snapshot.trustDomain).toBe('cluster.local');
    expect(snapshot.policies.map((p: any) => `${p.metadata.namespace}/${p.metadata.name}`)).toEqual(['shop/api-allow-web-get', 'shop/web-allow-ingress']);
    expect(snapshot.services.find((s: any) => s.name === 'api')).toMatchObject({ namespace: 'shop', workloads: ['shop/api-1', 'shop/api-2'], ports: [{ port: 8080, targetPort: 9090, protocol: 'http' }] });
    expect(JSON.stringify(snapshot)).not.toContain('127.0.20.1'); // no workload addresses

    const get = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop:8080', '--method', 'GET', '--path', '/v1/items', '--server', server]);
    expect(get.code, get.stderr).toBe(0);
    expect(get.stdout.split('\n')[0]).toBe('ALLOWED');
    expect(get.stdout).toContain('allowed by policy shop/api-allow-web-get, rule 0 (ALLOW):');
    expect(get.stderr).toMatch(/policies from the control plane at http:\/\/127\.0\.0\.1:\d+ \(discovery version \d+\)/);
    const post = await explainJson(['--from', 'shop/web', '--to', 'api.shop', '--method', 'POST', '--server', server]);
    expect(post.code).toBe(1);
    expect(post.json).toMatchObject({ allowed: false, reason: 'no-allow-match', candidates: ['shop/api-allow-web-get'], policiesFrom: server });

    // An edit that also allows POST reaches the answer once the control plane has applied it.
    const edited = EXAMPLE_WARD_YAML.replace('methods: [GET, HEAD]', 'methods: [GET, HEAD, POST]');
    expect(edited).not.toBe(EXAMPLE_WARD_YAML);
    await writeFile(join(dir, 'ward.yaml.tmp'), edited);
    await rename(join(dir, 'ward.yaml.tmp'), config);
    await vi.waitFor(
      async () => {
        const r = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--method', 'POST', '--server', server]);
        expect(r.code).toBe(0);
      },
      { timeout: 10_000, interval: 50 },
    );
  });

  it('a bare CA ("ward ca serve") has no /v1/policies: a clear error, exit 1', async () => {
    // Any admin endpoint without the route answers 404; a plain 404 server stands in for it.
    const srv = createServer((_req, res) => res.writeHead(404).end('not found\n'));
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    onTestFinished(() => new Promise<void>((r) => srv.close(() => r())));
    const port = (srv.address() as { port: number }).port;
    const r = await ward(['policy', 'explain', '--from', 'shop/web', '--to', 'api.shop', '--server', `http://127.0.0.1:${port}`]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('serves no /v1/policies');
  });
});
