/**
 * `npm run bench`: runs every benchmark in bench/ and prints each one's table, then a summary.
 *
 *   npm run bench [-- --quick] [-- --json]
 *
 * --quick  smaller counts and one round: a smoke test that the benchmarks still run, not a measurement.
 * --json   stdout is one JSON document with every result; the human report goes to stderr
 *          (use `npm run -s bench -- --json` so npm adds no banner to stdout).
 *
 * Benchmarks compare against baselines measured side by side in the same run and report ratios;
 * absolute rates on shared machines are noise. Missing a target is reported ("BELOW TARGET") but
 * is not a failure: the exit code is 0 unless a benchmark could not run at all.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { formatCaBench, runCaBench } from './ca.js';
import { formatDiscoveryBench, runDiscoveryBench } from './discovery.js';
import { formatIngressBench, ingressHeadline, runIngressBench } from './ingress.js';
import { formatProxyBench, proxyHeadline, runProxyBench } from './proxy.js';

interface Benchmark {
  name: string;
  /** Runs the benchmark; returns its report for humans, its headline and its JSON result. */
  run(o: { quick: boolean; progress: (line: string) => void }): Promise<{ report: string; headline: string; belowTarget: boolean; json: unknown }>;
}

const BENCHMARKS: Benchmark[] = [
  {
    name: 'ca',
    async run(o) {
      const r = await runCaBench(o);
      const headline = `issuance / raw sign = ${(r.issuanceRatio * 100).toFixed(1)}% (target >= ${r.target * 100}%)`;
      return { report: formatCaBench(r), headline, belowTarget: r.belowTarget, json: r };
    },
  },
  {
    name: 'discovery',
    async run(o) {
      const r = await runDiscoveryBench(o);
      // Three targets; the runner's BELOW TARGET suffix then means "at least one missed" (see r.misses).
      const headline =
        `p99 change latency = ${r.p99LatencyMs.toFixed(1)} ms (target < ${r.latencyTargetMs} ms), bytes per change 10k/1k = ${r.bytesRatio.toFixed(3)} (target ~1), ` +
        `pool memory = ${r.poolMiB.toFixed(1)} MiB (target < ${r.memoryTargetMiB} MiB)${r.misses.length ? ` [missed: ${r.misses.join(', ')}]` : ''}`;
      return { report: formatDiscoveryBench(r), headline, belowTarget: r.belowTarget, json: r };
    },
  },
  {
    name: 'proxy',
    async run(o) {
      const r = await runProxyBench(o);
      return { report: formatProxyBench(r), headline: proxyHeadline(r), belowTarget: r.belowTarget, json: r };
    },
  },
  {
    name: 'ingress',
    async run(o) {
      const r = await runIngressBench(o);
      return { report: formatIngressBench(r), headline: ingressHeadline(r), belowTarget: r.belowTarget, json: r };
    },
  },
];

const USAGE = `usage: npm run bench [-- --quick] [-- --json] [-- --only NAME] (NAME: ${BENCHMARKS.map((b) => b.name).join(', ')}; repeatable)`;

let args: { quick: boolean; json: boolean; only: string[] };
try {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      only: { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const only = values.only ?? [];
  const unknown = only.filter((n) => !BENCHMARKS.some((b) => b.name === n));
  if (unknown.length) throw new Error(`unknown benchmark ${unknown.join(', ')}`);
  args = { quick: !!values.quick, json: !!values.json, only };
} catch (err) {
  console.error(`${(err as Error).message}\n${USAGE}`);
  process.exit(2);
}

// With --json, stdout carries only the JSON document, so everything for humans goes to stderr.
const say = args.json ? (s: string) => console.error(s) : (s: string) => console.log(s);
const progress = (s: string): void => console.error(`  … ${s}`);

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
say(`ward bench${args.quick ? ' (quick: smoke test, numbers not meaningful)' : ''}: node ${process.version}, ${os.availableParallelism()} cpu(s), ${cpu}`);

const results: Record<string, unknown> = {};
const summary: string[] = [];
let failed = false;
for (const b of BENCHMARKS) {
  if (args.only.length > 0 && !args.only.includes(b.name)) continue;
  say(`\n== ${b.name}`);
  try {
    const r = await b.run({ quick: args.quick, progress });
    say(r.report);
    results[b.name] = r.json;
    summary.push(`${b.name}: ${r.headline}${r.belowTarget ? '  BELOW TARGET' : '  ok'}`);
  } catch (err) {
    failed = true;
    console.error(`${b.name}: the benchmark failed to run:`, err);
    summary.push(`${b.name}: FAILED (see above)`);
  }
}

say('\n== summary');
for (const s of summary) say(s);
if (args.json) {
  console.log(JSON.stringify({ node: process.version, cpus: os.availableParallelism(), cpu, quick: args.quick, results }, null, 2));
}
process.exitCode = failed ? 1 : 0;
