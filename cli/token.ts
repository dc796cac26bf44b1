import { WardError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { JoinTokens, DEFAULT_TOKEN_TTL_MS, MAX_TOKEN_TTL_MS } from '../ca/index.js';
import { EXIT_OK, JSON_FLAG, durationFlag, flag, humanDuration, optional, required, writeJson, type Command } from './command.js';
import { openStateInfo } from './ca.js';

const create: Command = {
  name: 'token create',
  summary: 'create a one-time join token that bootstraps a node proxy identity',
  options: { state: { type: 'string' }, node: { type: 'string' }, ingress: { type: 'boolean', default: false }, ttl: { type: 'string' }, ...JSON_FLAG },
  help: `Usage: ward token create --state DIR (--node NAME | --ingress) [--ttl 15m] [--json]

Creates a one-time join token for node NAME. A node proxy presents it once to the CA (POST /v1/join)
with a CSR and receives the identity spiffe://<trust-domain>/ward/node/NAME. With --ingress the
token joins as the mesh ingress, spiffe://<trust-domain>/ns/ward-system/sa/ward-ingress (which may
then renew only its own certificate). The token is random
(256 bits), expires (default 15m, at most 24h), is consumed on first use, and is printed only here:
the CA stores only its SHA-256.

Flags:
  --state DIR    the CA state directory (from "ward ca init")
  --node NAME    the node the token is for
  --ingress      a token for the mesh ingress instead of a node
  --ttl DURATION lifetime, e.g. 10m, 1h (default 15m, max 24h)
  --json         machine-readable output

Example:
  ward token create --state .ward --node node-a --ttl 10m`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const ingress = flag(args, 'ingress');
    if (ingress && optional(args, 'node') !== undefined) throw new WardError('WARD_USAGE', '--node and --ingress exclude each other');
    const node = ingress ? undefined : required(args, 'node');
    const ttl = durationFlag(args, 'ttl') ?? DEFAULT_TOKEN_TTL_MS;
    if (ttl < 1000 || ttl > MAX_TOKEN_TTL_MS) throw new WardError('WARD_USAGE', `--ttl must be between 1s and ${humanDuration(MAX_TOKEN_TTL_MS)}, got "${optional(args, 'ttl')}"`);
    const { trustDomain } = await openStateInfo(stateDir);
    const tokens = new JoinTokens({ stateDir, trustDomain, clock: systemClock });
    const t = node === undefined ? await tokens.createForIngress(ttl) : await tokens.create(node, ttl);
    const id = (node === undefined ? SpiffeId.ingress(trustDomain) : SpiffeId.node(trustDomain, node)).toString();
    if (flag(args, 'json')) writeJson(io, { token: t.token, node: t.node, id, expiresAt: t.expiresAt.toISOString() });
    else {
      // Only the token on stdout, so that TOKEN=$(ward token create ...) just works.
      io.stdout.write(`${t.token}\n`);
      io.stderr.write(`join token for ${node === undefined ? 'the ingress' : `node ${node}`} (${id}), valid for ${humanDuration(ttl)} (until ${t.expiresAt.toISOString()}), usable once\n`);
    }
    return EXIT_OK;
  },
};

export const tokenCommands: Command[] = [create];
