import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { WardError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import { JoinTokens } from '../ca/index.js';
import { EXAMPLE_WARD_YAML, parseWardYaml, type MeshModel } from '../discovery/index.js';
import { EXIT_OK, optional, type CliIo, type Command } from './command.js';
import { logLevelArg } from './ca.js';
import { INGRESS_DEFAULTS } from './ingress.js';
import { adminStatus } from './probe.js';
import { Supervisor } from './supervisor.js';

/** Where `ward up` puts the control plane (the defaults of `ward control`). */
export const UP_PORTS = { ca: 8443, discovery: 8444, admin: 9443 } as const;
/** The ingress under ward up: its own defaults (cli/ingress.ts), on loopback. */
export const UP_INGRESS = INGRESS_DEFAULTS;
const PID_FILE = 'up.pid';
const READY_TIMEOUT_MS = 60_000;

/** argv prefix that runs this same `ward` (also under tsx in development). */
function wardArgv(): { command: string; args: string[] } {
  return { command: process.execPath, args: [...process.execArgv, process.argv[1]] };
}

function fill(arg: string, w: { name: string; namespace: string; address: string; ports: readonly number[] }, proxy: string): string {
  return arg
    .replaceAll('{address}', w.address)
    .replaceAll('{port}', String(w.ports[0] ?? ''))
    .replaceAll('{name}', w.name)
    .replaceAll('{namespace}', w.namespace)
    .replaceAll('{proxy}', proxy);
}

/**
 * Whether `pid` is a running `ward up` — not merely a live process: after a SIGKILLed `ward up`
 * its pid may be reused by anything. Where /proc exists (Linux) the command line must be a ward
 * `up`; elsewhere only liveness can be checked.
 */
async function wardUpRunning(pid: number): Promise<boolean> {
  if (!(await pidAlive(pid))) return false;
  let cmdline: string;
  try {
    cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').join(' ');
  } catch {
    return true;
  }
  return / up( |$)/.test(cmdline) && /ward|main\.(js|ts)/.test(cmdline);
}

async function pidAlive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One `ward up` per state directory: up.pid, created exclusively; a stale one (dead pid) is replaced. */
async function claimPidFile(stateDir: string): Promise<() => Promise<void>> {
  const file = join(stateDir, PID_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(file, 'wx', 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return () => rm(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && (await wardUpRunning(pid))) {
        throw new WardError('WARD_CA_STATE_LOCKED', `ward up is already running for ${stateDir} (pid ${pid}); stop it with "ward down --state ${stateDir}" or Ctrl-C in its terminal`);
      }
      await rm(file, { force: true });
    }
  }
  throw new WardError('WARD_CA_STATE_LOCKED', `could not claim ${file}`);
}


function tcpOpen(host: string, port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ host, port });
    s.setTimeout(1_000, () => s.destroy());
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
    s.once('close', () => res(false));
  });
}

/** Throws when a component exited during start-up: a port in use or a bad flag will not fix itself. */
function failedAtStart(sup: Supervisor, name: string): boolean {
  const st = sup.states().find((c) => c.name === name);
  if (!st || st.restarts === 0) return false;
  const tail = sup.recentLines(name).slice(-8).join('\n    ');
  throw new WardError('WARD_CONFIG_INVALID', `${name} exited while starting (${st.lastExit ?? 'unknown'}); its last output:\n    ${tail}`);
}

/** Polls `check` every 200 ms until it holds or the deadline passes (a CLI waiting on other processes). */
async function until(what: string, check: () => Promise<boolean>, deadline: number, aborted: () => boolean): Promise<void> {
  for (;;) {
    if (aborted()) throw new WardError('WARD_CONFIG_INVALID', 'stopped while starting');
    if (await check()) return;
    if (Date.now() > deadline) throw new WardError('WARD_CONFIG_INVALID', `${what} did not become ready within ${READY_TIMEOUT_MS / 1000}s (see the logs in the state directory)`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** `ward ca bundle --state DIR`, in process. */
async function bundlePem(stateDir: string): Promise<string> {
  const { run } = await import('./run.js');
  const out = new PassThrough();
  const err = new PassThrough();
  let text = '';
  let errText = '';
  out.on('data', (c: Buffer) => (text += c.toString('utf8')));
  err.on('data', (c: Buffer) => (errText += c.toString('utf8')));
  const code = await run(['ca', 'bundle', '--state', stateDir], { stdout: out, stderr: err, stdin: Readable.from([]), env: {} });
  if (code !== 0) throw new WardError('WARD_CA_STATE_CORRUPT', `could not read the trust bundle: ${errText.trim()}`);
  return text;
}

function tour(model: MeshModel, stateDir: string, source: string): string {
  const lines: string[] = [];
  const wl = [...model.workloads];
  lines.push('', `✓ Ward is up — mesh ${model.trustDomain}, from ${source}, state in ${stateDir}`, '');
  lines.push(`  control plane   CA https://127.0.0.1:${UP_PORTS.ca}   discovery https://127.0.0.1:${UP_PORTS.discovery}   admin http://127.0.0.1:${UP_PORTS.admin}`);
  for (const n of model.nodes) {
    const here = wl.filter((w) => w.node === n.name).map((w) => w.name);
    lines.push(`  ${`node ${n.name}`.padEnd(15)} proxy inbound ${n.address}:15008, admin http://${n.address}:15000   workloads: ${here.join(', ') || 'none'}`);
  }
  for (const w of wl) {
    lines.push(`  ${w.name.padEnd(15)} ${w.identity}  app ${w.address}:${w.ports.join(',')}  outbound proxy http://${w.address}:15001`);
  }
  if (model.routes.length > 0) {
    lines.push(`  ${'ingress'.padEnd(15)} https ${UP_INGRESS.https} (http ${UP_INGRESS.http}: 308 to https), admin http://${UP_INGRESS.admin}   hosts: ${model.routes.map((r) => r.host).join(', ') || 'none yet (add ingress.routes to ward.yaml)'}`);
  }
  const svc = [...model.services];
  const from = wl[0];
  // Something to call: a service other than the caller's own (by its app label), else the first.
  const to = svc.find((s) => from && s.name !== (from.labels.app ?? '')) ?? svc[0];
  lines.push('', 'Try:');
  if (from && to && to.ports[0]) {
    const target = `http://${to.name}.${to.namespace}:${to.ports[0].port}`;
    lines.push(`  curl -x http://${from.address}:15001 ${target}/hello              # ${from.name} calls ${to.name}: the app shows the caller identity`);
    lines.push(`  curl -x http://${from.address}:15001 -X POST ${target}/hello      # a request the policies deny: 403`);
    lines.push(`  ward policy explain --from ${from.namespace}/${from.serviceAccount} --to ${to.name}.${to.namespace}:${to.ports[0].port} --method POST --path /hello`);
  }
  const host = model.routes.find((r) => !r.host.startsWith('*.'));
  if (host) {
    const https = `https://${host.host}:${UP_INGRESS.https.split(':')[1]}`;
    const resolve = host.host.endsWith('.localhost') ? '' : ` --resolve ${host.host}:${UP_INGRESS.https.split(':')[1]}:127.0.0.1`;
    lines.push(`  curl --cacert ${join(stateDir, 'bundle.pem')}${resolve} ${https}/hello   # from outside, through the ingress (a certificate from Ward's CA)`);
  }
  const node = model.nodes[0];
  const local = wl.find((w) => w.node === node?.name);
  if (node && local) lines.push(`  ward cert inspect --connect ${node.address}:15008 --servername ${local.ports[0]}.${local.name}.${local.namespace}.ward   # a live workload certificate`);
  lines.push('  ward status          ward check          curl -s http://' + (node?.address ?? '127.0.0.1') + ':15000/v1/state');
  lines.push('', `Logs: ${join(stateDir, 'logs')}/*.log (JSON, one file per component).  Stop: Ctrl-C, or "ward down --state ${stateDir}".`, '');
  return lines.join('\n');
}

const up: Command = {
  name: 'up',
  summary: 'run the whole mesh on this machine: control plane, a node proxy per node, the workloads',
  options: {
    state: { type: 'string', default: '.ward' },
    config: { type: 'string' },
    verbose: { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'info' },
  },
  help: `Usage: ward up [--config ward.yaml] [--state DIR] [--verbose]

Runs the whole mesh on this machine from ward.yaml, each part as its own supervised process:
  - the control plane ("ward control": the CA and the discovery pool) on 127.0.0.1:${UP_PORTS.ca}/${UP_PORTS.discovery}/${UP_PORTS.admin};
  - one node proxy ("ward proxy") per declared node, on the node's loopback address;
  - every workload that has a "command" (argv; {address}, {port}, {name}, {namespace} and {proxy}
    are filled in, "ward" runs this ward; HTTP_PROXY/http_proxy point at its outbound proxy);
  - the mesh ingress ("ward ingress") on https ${UP_INGRESS.https} (http ${UP_INGRESS.http} redirects),
    serving every route host of ward.yaml — also hosts added while it runs — with a certificate from
    Ward's CA for internal names: trusted by clients given DIR/bundle.pem (curl --cacert), not by
    browsers.

Which mesh: --config FILE, else ./ward.yaml when it exists, else the built-in example (two nodes,
web and api with two replicas each running "ward echo", and policies that let web GET api and
deny everything else to api; "ward init" writes it out to edit).

A component that crashes is reported and restarted with backoff; DIR/processes.json lists what
runs (name, pid, restarts). Ctrl-C or SIGTERM (or
"ward down") drains and stops everything; no process or port is left behind. State — the CA keys
(mode 0600), the issued-certificate inventory, the audit log, each node's identity — lives in the
state directory and survives restarts: "ward down" then "ward up" keeps the same root.
Logs: human-readable on the terminal, full JSON per component in DIR/logs/.

Flags:
  --config FILE     ward.yaml to run (watched: edits apply while running)
  --state DIR       state directory (default .ward)
  --verbose         also show debug log lines on the terminal
  --log-level LEVEL log level of the components (default info)`,
  async run(args, io) {
    const stateDir = resolve(String(args.values.state));
    const level = logLevelArg(args);
    const verbose = args.values.verbose === true;
    let configFile = optional(args, 'config');
    let source: string;
    if (configFile) source = configFile;
    else if (existsSync('ward.yaml')) {
      configFile = 'ward.yaml';
      source = 'ward.yaml';
    } else source = 'the built-in example';
    const text = configFile ? await readFile(configFile, 'utf8').catch((err: Error) => {
      throw new WardError('WARD_CONFIG_INVALID', `cannot read ${configFile}: ${err.message}`);
    }) : EXAMPLE_WARD_YAML;
    const model = parseWardYaml(text, configFile ?? 'example ward.yaml');
    // ward up's own components are supervised under these names (and logged to DIR/logs/<name>.log).
    const taken = model.workloads.find((w) => w.command && (w.name === 'control' || w.name === 'ingress' || w.name.startsWith('proxy-')));
    if (taken) throw new WardError('WARD_CONFIG_INVALID', `workload "${taken.name}" has a command, and ward up runs its own components as "control", "ingress" and "proxy-<node>"; rename the workload`);
    await mkdir(join(stateDir, 'logs'), { recursive: true, mode: 0o700 });
    if (!configFile) {
      configFile = join(stateDir, 'example.ward.yaml');
      await writeFile(configFile, EXAMPLE_WARD_YAML, { mode: 0o600 });
    }
    const config = resolve(configFile);
    const release = await claimPidFile(stateDir);
    const say = (line: string): void => void io.stderr.write(line + '\n');
    // processes.json: what runs now (name, pid, restarts), for operators and tests; rewritten on
    // every start and exit of a component, through a rename so a reader never sees half of it.
    const processesFile = join(stateDir, 'processes.json');
    let writing = Promise.resolve();
    const sup: Supervisor = new Supervisor({
      logDir: join(stateDir, 'logs'),
      say,
      verbose,
      onChange: () => {
        const body = JSON.stringify({ pid: process.pid, components: sup.states() }, null, 2) + '\n';
        writing = writing
          .then(async () => {
            await writeFile(`${processesFile}.tmp`, body, { mode: 0o600 });
            await rename(`${processesFile}.tmp`, processesFile);
          })
          .catch(() => undefined);
      },
    });
    let stopping = false;
    let onSignal: (s: NodeJS.Signals) => void = () => undefined;
    const stopped = new Promise<NodeJS.Signals>((r) => (onSignal = r));
    const signalled = (s: NodeJS.Signals): void => {
      stopping = true;
      onSignal(s);
    };
    process.once('SIGINT', signalled);
    process.once('SIGTERM', signalled);
    const ward = wardArgv();
    const deadline = Date.now() + READY_TIMEOUT_MS;
    try {
      say(`ward up: mesh ${model.trustDomain} from ${source}; state in ${stateDir}`);
      // 1. Control plane.
      say('… starting the control plane (CA + discovery pool)');
      await sup.start({
        name: 'control',
        command: ward.command,
        args: [...ward.args, 'control', '--state', stateDir, '--config', config, '--init', '--log-level', level],
      });
      await until('the control plane', async () => (await adminStatus(`http://127.0.0.1:${UP_PORTS.admin}/healthz`)) === 200, deadline, () => stopping || failedAtStart(sup, 'control'));
      say(`✓ control plane: CA https://127.0.0.1:${UP_PORTS.ca}, discovery https://127.0.0.1:${UP_PORTS.discovery}`);
      const bundleFile = join(stateDir, 'bundle.pem');
      await writeFile(bundleFile, await bundlePem(stateDir), { mode: 0o644 });
      const tokens = new JoinTokens({ stateDir, trustDomain: model.trustDomain, clock: systemClock });
      // 2. Node proxies.
      say(`… starting ${model.nodes.length} node prox${model.nodes.length === 1 ? 'y' : 'ies'}`);
      for (const n of model.nodes) {
        const base = [...ward.args, 'proxy', '--node', n.name, '--address', n.address, '--bundle', bundleFile, '--trust-domain', model.trustDomain, '--state', join(stateDir, 'nodes', n.name), '--log-level', level];
        await sup.start({
          name: `proxy-${n.name}`,
          command: ward.command,
          args: base,
          // A fresh one-time token at every start: a proxy with a valid saved identity ignores it
          // (it expires unused), one whose identity expired while it was down joins again. In the
          // environment, not on the command line (which every local user can read).
          prepare: async () => {
            await writeFile(bundleFile, await bundlePem(stateDir), { mode: 0o644 });
            const t = await tokens.create(n.name, 10 * 60_000);
            return { env: { ...process.env, NODE_OPTIONS: '', WARD_PROXY_TOKEN: t.token } };
          },
          env: { ...process.env, NODE_OPTIONS: '' },
        });
      }
      // 2b. The ingress: every route host (now and after edits of ward.yaml) served with an
      // internal-name certificate from Ward's CA (ward.yaml names no certificate files).
      const ingressHosts = model.routes.map((r) => r.host);
      {
        say('… starting the mesh ingress');
        const base = [
          ...ward.args, 'ingress', '--bundle', bundleFile, '--trust-domain', model.trustDomain, '--state', join(stateDir, 'ingress'),
          '--https', UP_INGRESS.https, '--http', UP_INGRESS.http, '--admin', UP_INGRESS.admin, '--log-level', level, '--internal-certs',
        ];
        await sup.start({
          name: 'ingress',
          command: ward.command,
          args: base,
          // Like the proxies: a fresh token at every start, ignored when the saved identity is valid.
          prepare: async () => {
            await writeFile(bundleFile, await bundlePem(stateDir), { mode: 0o644 });
            const t = await tokens.createForIngress(10 * 60_000);
            return { env: { ...process.env, NODE_OPTIONS: '', WARD_INGRESS_TOKEN: t.token } };
          },
          env: { ...process.env, NODE_OPTIONS: '' },
        });
      }
      // 3. Workloads with a command.
      const apps = model.workloads.filter((w) => w.command && w.command.length > 0);
      if (apps.length) say(`… starting ${apps.length} workload${apps.length === 1 ? '' : 's'}`);
      for (const w of apps) {
        const proxy = `http://${w.address}:15001`;
        const argv = w.command!.map((a) => fill(a, w, proxy));
        const [cmd, ...rest] = argv[0] === 'ward' ? [ward.command, ...ward.args, ...argv.slice(1)] : argv;
        await sup.start({
          name: w.name,
          command: cmd,
          args: rest,
          env: { ...process.env, HTTP_PROXY: proxy, http_proxy: proxy, NO_PROXY: '', no_proxy: '', WARD_WORKLOAD: `${w.namespace}/${w.name}`, PORT: String(w.ports[0] ?? '') },
        });
      }
      // 4. Ready: every proxy holds its certificates and config; every app listens.
      for (const n of model.nodes) {
        await until(`node proxy ${n.name}`, async () => (await adminStatus(`http://${n.address}:15000/readyz`)) === 200, deadline, () => stopping || failedAtStart(sup, `proxy-${n.name}`));
        say(`✓ node proxy ${n.name} ready (${n.address})`);
      }
      for (const w of apps) {
        if (w.ports.length === 0) continue;
        await until(`workload ${w.name}`, () => tcpOpen(w.address, w.ports[0]), deadline, () => stopping || failedAtStart(sup, w.name));
      }
      if (apps.length) say(`✓ workloads listening: ${apps.map((w) => w.name).join(', ')}`);
      await until('the ingress', async () => (await adminStatus(`http://${UP_INGRESS.admin}/readyz`)) === 200, deadline, () => stopping || failedAtStart(sup, 'ingress'));
      say(`✓ ingress ready: https ${UP_INGRESS.https}${ingressHosts.length ? ` for ${ingressHosts.join(', ')}` : ' (no routes yet)'}`);
      io.stdout.write(tour(model, stateDir, source) + '\n');
      const signal = await stopped;
      say(`ward up: ${signal}: draining and stopping everything`);
      return EXIT_OK;
    } finally {
      process.off('SIGINT', signalled);
      process.off('SIGTERM', signalled);
      // Workloads first (nothing new starts), then proxies (they drain), then the control plane.
      await sup.stop({ order: [['ingress'], model.workloads.map((w) => w.name), model.nodes.map((n) => `proxy-${n.name}`), ['control']] });
      await writing;
      await rm(processesFile, { force: true });
      await rm(`${processesFile}.tmp`, { force: true });
      await release();
      say('ward up: stopped');
    }
  },
};

const down: Command = {
  name: 'down',
  summary: 'stop a running "ward up" (its state is kept)',
  options: { state: { type: 'string', default: '.ward' } },
  help: `Usage: ward down [--state DIR]

Stops the "ward up" running for state directory DIR (default .ward): it drains and stops every
component, as Ctrl-C in its terminal would, and this command waits until it has. The state — CA
keys, inventory, audit log, node identities — is kept; the next "ward up" uses the same root.`,
  async run(args, io: CliIo) {
    const stateDir = resolve(String(args.values.state));
    const file = join(stateDir, PID_FILE);
    const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0 || !(await wardUpRunning(pid))) {
      io.stderr.write(`ward down: no "ward up" is running for ${stateDir}\n`);
      return EXIT_OK;
    }
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 30_000;
    while (await pidAlive(pid)) {
      if (Date.now() > deadline) throw new WardError('WARD_CONFIG_INVALID', `ward up (pid ${pid}) did not stop within 30s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    io.stderr.write(`ward down: stopped ward up (pid ${pid}); state kept in ${stateDir}\n`);
    return EXIT_OK;
  },
};

export const upCommands: Command[] = [up, down];
