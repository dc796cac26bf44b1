import { WardError } from '../core/errors.js';
import { SpiffeId } from '../core/identity/index.js';
import { EXIT_OK, JSON_FLAG, flag, optional, required, writeJson, type Command } from './command.js';
import { openCa } from './ca.js';

/** `ward ca history`: the audit log and the inventory, queried (both live in the state directory). */
const history: Command = {
  name: 'ca history',
  summary: 'query the audit log (every decision) or the inventory of issued certificates',
  options: {
    state: { type: 'string' },
    identity: { type: 'string' },
    requester: { type: 'string' },
    refused: { type: 'boolean', default: false },
    certificates: { type: 'boolean', default: false },
    limit: { type: 'string', default: '20' },
    ...JSON_FLAG,
  },
  help: `Usage: ward ca history --state DIR [--identity ID] [--requester WHO] [--refused] [--limit N] [--json]
       ward ca history --state DIR --certificates [--identity ID] [--requester WHO] [--limit N] [--json]

Every issuance decision the CA made, newest first, from its audit log (<state>/audit.jsonl): time,
issued or refused, the identity asked for, who asked, and the serial or the refusal code and reason.
With --certificates, the inventory of issued certificates instead (<state>/inventory.jsonl):
serial, identity, requester, validity and issuing intermediate. Reads the state directory
read-only, so it works while "ward ca serve" runs.

Flags:
  --state DIR          the CA state directory (required)
  --identity ID        only this SPIFFE ID, or dns:HOST (an ingress internal-name certificate)
  --requester WHO      only this requester (a node's SPIFFE ID, "join-token:NODE", "admin:USER")
  --refused            only refusals (audit log)
  --certificates       the inventory of issued certificates instead of the audit log
  --limit N            at most N records, 1..1000 (default 20)
  --json               machine-readable output

Example:
  ward ca history --state .ward --refused --limit 5`,
  async run(args, io) {
    const stateDir = required(args, 'state');
    const limit = Number(optional(args, 'limit'));
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new WardError('WARD_USAGE', `--limit must be a whole number from 1 to 1000, got "${optional(args, 'limit')}"`);
    const idText = optional(args, 'identity');
    // Internal-name certificates (ward ingress --internal-cert) are recorded as "dns:<names>", not
    // as a SPIFFE ID: taken as written, so the records the CA keeps for them can be found.
    const identity = idText === undefined ? undefined : idText.startsWith('dns:') ? idText : SpiffeId.parse(idText).toString();
    const requester = optional(args, 'requester');
    const certificates = flag(args, 'certificates');
    if (certificates && flag(args, 'refused')) throw new WardError('WARD_USAGE', '--refused applies to the audit log; it cannot be combined with --certificates');
    const ca = await openCa(stateDir, { readOnly: true });
    try {
      if (certificates) {
        const recs = await ca.inventory.query({ identity, requester, limit });
        if (flag(args, 'json')) writeJson(io, recs);
        else if (recs.length === 0) io.stdout.write('no certificates match\n');
        else for (const r of recs) io.stdout.write(`${r.issuedAt}  ${r.serial}  ${r.identity}  by ${r.requester}  valid ${r.notBefore} → ${r.notAfter}\n`);
      } else {
        const recs = await ca.audit.query({ identity, requester, limit, ...(flag(args, 'refused') ? { decision: 'refused' as const } : {}) });
        if (flag(args, 'json')) writeJson(io, recs);
        else if (recs.length === 0) io.stdout.write('no decisions match\n');
        else {
          for (const r of recs) {
            const what = r.decision === 'issued' ? `issued   serial ${r.serial}` : `REFUSED  ${r.code}: ${r.reason ?? ''}`;
            io.stdout.write(`${r.time}  ${what}  ${r.identity}  by ${r.requester}\n`);
          }
        }
      }
      return EXIT_OK;
    } finally {
      await ca.close();
    }
  },
};

export const caHistoryCommands: Command[] = [history];
