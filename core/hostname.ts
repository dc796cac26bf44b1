/**
 * Ingress route hosts: an exact DNS name (`shop.example.com`) or a one-label wildcard
 * (`*.example.com`), lowercase, as Kubernetes Ingress accepts them. The rules live here so that
 * the discovery pool (validating ward.yaml and Ingress objects) and the ingress (validating what it
 * is pushed) accept exactly the same hosts: a host one accepted and the other refused would make
 * the ingress reject every table the pool sends.
 */
import { isIPv4, isIPv6 } from 'node:net';

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
