/**
 * The discovery pool's answer to the CA's node authorization (DESIGN.md §3.2): a node may obtain a
 * workload identity only when the source of truth declares a workload with that identity on that
 * very node, and may renew its own node identity only while it is a member of the mesh.
 *
 * Structurally the CA's WorkloadAuthorizer (discovery never imports ca/; the composition root
 * wires the two). Every answer is taken from the model current at the time of the question, so
 * moving or removing a workload or a node revokes at once: the next request is refused.
 */
import type { SpiffeId } from '../core/identity/index.js';
import { isNodeMember, mayObtain, type MeshModel } from './model.js';

export interface ModelAuthorizer {
  /** Whether `node` (spiffe://TD/ward/node/N) may obtain workload identity `id` now. */
  mayObtain(node: SpiffeId, id: SpiffeId): boolean;
  /** Whether `node` may renew its own node identity now (its node is declared). */
  mayRenewNode(node: SpiffeId): boolean;
  /** Whether the ingress may obtain an internal-name certificate for `name`: a route host now (exactly; a wildcard host for its wildcard). */
  mayObtainServerName(ingress: SpiffeId, name: string): boolean;
}

export function modelAuthorizer(getModel: () => MeshModel): ModelAuthorizer {
  /** The node's name when `node` is a node identity of the model's trust domain. */
  const nodeName = (model: MeshModel, node: SpiffeId): string | undefined => (node.memberOf(model.trustDomain) ? node.nodeName : undefined);
  return {
    mayObtain(node, id) {
      const model = getModel();
      const name = nodeName(model, node);
      if (name === undefined || !id.memberOf(model.trustDomain)) return false;
      return mayObtain(model, name, id.toString());
    },
    mayRenewNode(node) {
      const model = getModel();
      const name = nodeName(model, node);
      return name !== undefined && isNodeMember(model, name);
    },
    mayObtainServerName(ingress, name) {
      const model = getModel();
      return ingress.isIngress && ingress.memberOf(model.trustDomain) && model.routes.some((r) => r.host === name);
    },
  };
}
