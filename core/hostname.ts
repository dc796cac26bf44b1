/**
 * Ingress route hosts: an exact DNS name (`shop.example.com`) or a one-label wildcard
 * (`*.example.com`), lowercase, as Kubernetes Ingress accepts them. The rules live here so that
 * the discovery pool (validating ward.yaml and Ingress objects) and the ingress (validating what it
 * is pushed) accept exactly the same hosts: a host one accepted and the other refused would make
 * the ingress reject every table the pool sends.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { normalizePath } from './policy/index.js';

const HOST_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const MAX_HOST_LENGTH = 253;

function shown(v: string): string {
  return JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v);
}

/** Why `host` is not a valid route host, or undefined when it is one. The reason names the host. */
export function routeHostError(host: string): string | undefined {
  if (host.length === 0) return 'must not be empty';
  if (host.length > MAX_HOST_LENGTH) return `is longer than ${MAX_HOST_LENGTH} characters`;
  if (isIPv4(host) || (isIPv6(host) && !host.includes('%'))) return `${shown(host)} is an IP address; a route host must be a DNS name`;
  const labels = host.split('.');
  const start = labels[0] === '*' ? 1 : 0;
  if (start === 1 && labels.length < 2) return `${shown(host)}: a wildcard host needs a domain after "*." (e.g. *.example.com)`;
  for (let i = start; i < labels.length; i++) {
    if (!HOST_LABEL.test(labels[i])) {
      return `${shown(host)} is not a lowercase DNS name (a wildcard is allowed only as the whole first label, "*.")`;
    }
  }
  return undefined;
}

/**
 * Why `host` cannot have a TLS certificate (from Ward's CA, or served by the ingress), or undefined:
 * a route host whose wildcard, if any, has at least two labels after "*." — a certificate for
 * `*.com` or `*.localhost` would claim a whole top-level domain (public CAs refuse them too). Routes
 * may still use such hosts; they just get no certificate.
 */
export function certificateHostError(host: string): string | undefined {
  const why = routeHostError(host);
  if (why !== undefined) return why;
  if (host.startsWith('*.') && host.split('.').length < 3) return `${shown(host)}: a certificate wildcard needs at least two labels after "*." (*.example.com), else it would claim a whole top-level domain`;
  return undefined;
}

/** Longest route path accepted. */
export const MAX_ROUTE_PATH_LENGTH = 1024;

/**
 * Why `p` cannot be a route path, or undefined: absolute, at most 1024 characters, no whitespace,
 * control characters, "?" or "#" (the query and fragment are split off before matching, so a rule
 * holding one could never match), and already in the normal form core/policy's normalizePath gives
 * requests (the ingress matches normalized paths, so a rule in another spelling could never match).
 * One rule set for ward.yaml, Kubernetes Ingress objects and the ingress's own route table.
 */
export function routePathError(p: string): string | undefined {
  if (!p.startsWith('/')) return `${shown(p)} must start with "/"`;
  if (p.length > MAX_ROUTE_PATH_LENGTH) return `is longer than ${MAX_ROUTE_PATH_LENGTH} characters`;
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f?#]/.test(p)) return `${shown(p)} must not contain whitespace, control characters, "?" or "#"`;
  const n = normalizePath(p);
  if (!n.ok) return `${shown(p)} is not a valid path (${n.reason})`;
  if (n.path !== p) return `${shown(p)} is not in normal form (write ${shown(n.path)})`;
  return undefined;
}
