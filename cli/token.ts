import { WardError } from '../core/errors.js';
import { systemClock } from '../core/clock.js';
import { SpiffeId } from '../core/identity/index.js';
import { JoinTokens, DEFAULT_TOKEN_TTL_MS, MAX_TOKEN_TTL_MS } from '../ca/index.js';
import { EXIT_OK, JSON_FLAG, durationFlag, flag, humanDuration, optional, required, writeJson, type Command } from './command.js';
import { openStateInfo } from './ca.js';

const create: Command = {
  name: 'token create',
  summary: 'create a one-time join token that bootstraps a node proxy identity',
  options: { state: { type: 'string' }, node: { type: 'string' }, ttl: { type: 'string' }, ...JSON_FLAG },
  help: `Usage: ward token create --state DIR --node NAME [--ttl 15m] [--json]

Creates a one-time join token for node NAME. A node proxy presents it once to the CA (POST /v1/join)
with a CSR and receives the identity spiffe://<trust-domain>/ward/node/NAME. The token is random
(256 bits), expires (default 15m, at most 24h), is consumed on first use, and is printed only here:
the CA stores only its SHA-256.

Flags:
  --state DIR    the CA state directory (from "ward ca init")
  --node NAME    the node the token is for
  --ttl DURATION lifetime, e.g. 10m, 1h (default 15m, max 24h)
  --json         machine-readable output

Example:
  ward token create --state .ward --node node-a --ttl 10m`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const node = required(args, 'node');
    const ttl = durationFlag(args, 'ttl') ?? DEFAULT_TOKEN_TTL_MS;
    if (ttl < 1000 || ttl > MAX_TOKEN_TTL_MS) throw new WardError('WARD_USAGE', `--ttl must be between 1s and ${humanDuration(MAX_TOKEN_TTL_MS)}, got "${optional(args, 'ttl')}"`);
    const { trustDomain } = await openStateInfo(stateDir);
    const tokens = new JoinTokens({ stateDir, trustDomain, clock: systemClock });
    const t = await tokens.create(node, ttl);
    const id = SpiffeId.node(trustDomain, node).toString();
    if (flag(args, 'json')) writeJson(io, { token: t.token, node: t.node, id, expiresAt: t.expiresAt.toISOString() });
    else {
      // Only the token on stdout, so that TOKEN=$(ward token create ...) just works.
      io.stdout.write(`${t.token}\n`);
      io.stderr.write(`join token for node ${node} (${id}), valid for ${humanDuration(ttl)} (until ${t.expiresAt.toISOString()}), usable once\n`);
    }
    return EXIT_OK;
  },
};

export const tokenCommands: Command[] = [create];
