/**
 * `ward probe URL`: one GET on a loopback admin endpoint, as a Kubernetes exec probe.
 *
 * Ward's admin endpoints listen on loopback only (they are unauthenticated by design), so the
 * kubelet's httpGet probe, which dials the pod IP, cannot reach them from a pod network. The
 * probe runs inside the container instead: exit 0 on a 2xx answer, 1 on anything else (another
 * status, no answer, a timeout) with the reason on standard error, which the kubelet puts in
 * the pod's events. It reads only the status and a bounded start of the body, and never follows
 * a redirect (a redirect is not "healthy").
 */
import { get } from 'node:http';
import { assertLoopback } from '../core/address.js';
import { WardError } from '../core/errors.js';
import { EXIT_OK, EXIT_PROBLEM, durationFlag, type Command } from './command.js';

/** How much of a failing answer's body goes into the reason (readyz lists its reasons there). */
const MAX_REASON_BYTES = 2048;

/** The URL, checked: plain HTTP (admin endpoints are never TLS) to a loopback host. */
export function probeUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new WardError('WARD_USAGE', `URL must be an absolute http:// URL such as http://127.0.0.1:15000/readyz, got "${text}"`);
  }
  if (url.protocol !== 'http:') throw new WardError('WARD_USAGE', `URL must be http:// (admin endpoints are plain HTTP on loopback), got "${text}"`);
  // WHATWG URL keeps the brackets of an IPv6 literal in `hostname`.
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  try {
    assertLoopback(host);
  } catch {
    throw new WardError('WARD_USAGE', `URL must name a loopback host (127.0.0.0/8, ::1, localhost): admin endpoints are loopback-only; got "${url.hostname}"`);
  }
  return url;
}

/** Why a probe failed before any answer. */
class Unreachable extends Error {}

/**
 * One GET: the status and up to `maxBody` bytes of the body (one line), or Unreachable. node:http
 * rather than fetch: fetch refuses the "bad ports" of browsers (10080, 6000, …) and keeps a pool.
 */
function getOnce(url: URL, timeoutMs: number, timeoutText: string, maxBody: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, headers: { accept: '*/*' } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const done = (): void => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).subarray(0, maxBody).toString('utf8').replace(/\s+/g, ' ').trim();
        resolve({ status: res.statusCode ?? 0, body: text + (size > maxBody ? ' …' : '') });
        res.destroy();
      };
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        size += c.length;
        if (size > maxBody) done(); // enough for the reason; the rest is not read
      });
      res.once('end', done);
      res.once('error', done); // the status is known: a body cut short does not change it
    });
    const timer = setTimeout(() => req.destroy(new Unreachable(`no answer within ${timeoutText}`)), timeoutMs);
    req.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(err instanceof Unreachable ? err : new Unreachable(err.code ? `${err.code} (${err.message})` : err.message));
    });
  });
}

/** The status of one GET to an admin URL; 0 when it does not answer (within timeoutMs). For readiness waits. */
export async function adminStatus(url: string, timeoutMs = 2_000): Promise<number> {
  try {
    return (await getOnce(new URL(url), timeoutMs, `${timeoutMs} ms`, 0)).status;
  } catch {
    return 0;
  }
}

const probe: Command = {
  name: 'probe',
  summary: 'GET a loopback admin endpoint: exit 0 on 2xx (Kubernetes exec probes)',
  options: { timeout: { type: 'string', default: '2s' } },
  positionals: { min: 1, max: 1, name: 'URL' },
  help: `Usage: ward probe URL [--timeout 2s]

Sends one GET to URL, an admin endpoint of a Ward component on this machine, and exits 0 when it
answers 2xx, 1 otherwise (another status, no answer, or no answer within --timeout), with the
reason on standard error. Admin endpoints listen on loopback only, so a Kubernetes httpGet probe
(which dials the pod IP) cannot reach them: run this as an exec probe inside the container.
URL must be plain http:// to a loopback host (127.0.0.0/8, ::1, localhost); anything else is
refused as a usage error (exit 2). Redirects are not followed.

Flags:
  --timeout DURATION   give up after this long (default 2s)

Examples:
  ward probe http://127.0.0.1:15020/readyz     # the ingress is ready
  ward probe http://127.0.0.1:9443/healthz     # the control plane's CA can issue

Exit codes: 0 healthy (2xx) · 1 unhealthy or unreachable · 2 usage error`,
  async run(args, io) {
    const url = probeUrl(args.positionals[0]);
    const timeoutMs = durationFlag(args, 'timeout')!;
    if (timeoutMs <= 0) throw new WardError('WARD_USAGE', '--timeout must be longer than 0s');
    let answer: { status: number; body: string };
    try {
      answer = await getOnce(url, timeoutMs, String(args.values.timeout), MAX_REASON_BYTES);
    } catch (err) {
      io.stderr.write(`ward probe: ${url} unreachable: ${(err as Error).message}\n`);
      return EXIT_PROBLEM;
    }
    if (answer.status >= 200 && answer.status < 300) {
      io.stdout.write(`ward probe: ${url} HTTP ${answer.status}\n`);
      return EXIT_OK;
    }
    io.stderr.write(`ward probe: ${url} answered HTTP ${answer.status}${answer.body ? `: ${answer.body}` : ''}\n`);
    return EXIT_PROBLEM;
  },
};

export const probeCommands: Command[] = [probe];
