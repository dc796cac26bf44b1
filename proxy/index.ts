/**
 * The node proxy's public surface (DESIGN §5). The CLI composes NodeProxy; the ingress reuses the
 * balancer, the upstream mTLS pools and the request forwarding (it must not copy them).
 */
export { NodeProxy, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, DEFAULT_ADMIN_PORT, type NodeProxyOptions, type ProxyAddresses } from './proxy.js';
export { EndpointSet, RetryBudget, type BalancerEndpoint, type BalancerOptions, type EndpointLease, type EndpointState, type FailureKind } from './balance.js';
export { IdentityManager, type HeldIdentity, type IdentityOptions, type IdentityStatus } from './identity.js';
export { Upstreams, ConnectFailure, DEFAULT_UPSTREAM_LIMITS, type UpstreamLimits, type UpstreamOptions } from './upstream.js';
export { forward, endToEndHeaders, hasBody, DiscardedResponse, type ForwardOptions, type DownstreamRequest, type DownstreamResponse } from './forward.js';
export { sendToService, IDEMPOTENT_METHODS, type SendOptions } from './send.js';
export { ProxyMetrics, codeClass } from './metrics.js';
export { AdminServer, type AdminSource } from './admin.js';
export { listenOn, drainListener, handedOverHttpServer } from './listener.js';
export { MeshView, sniFor, parseSni, SOURCE_IDENTITY_HEADER, DEFAULT_CLUSTER_DOMAIN, type InboundTarget, type Resolution } from './mesh-view.js';
