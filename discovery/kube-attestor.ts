/**
 * Kubernetes attestation of node proxies and the ingress (docs/kubernetes.md, "Attestation"; DESIGN
 * §3.1): a projected ServiceAccount token (audience `ward`) is checked with a TokenReview, and the
 * pod it was issued for is checked against the control plane's pod cache. The CA's `POST /v1/join`
 * calls attest(); the identity it returns is the only one the CA issues for that join.
 *
 * The rules, all of which must hold (anything else is refused):
 *  1. TokenReview (spec.audiences ["ward"]) says authenticated, and status.audiences holds "ward"
 *     — else WARD_CA_TOKEN_INVALID (401).
 *  2. The user is system:serviceaccount:<namespace>:ward-proxy (→ spiffe://TD/ward/node/<node>) or
 *     …:ward-ingress (→ spiffe://TD/ns/ward-system/sa/ward-ingress), with exactly one
 *     extra["authentication.kubernetes.io/pod-name"] and one …/pod-uid (a bound, projected token).
 *  3. That pod is in the cache, in <namespace>, with that UID (a recreated pod of the same name has
 *     another), that service account, and phase Running.
 *  4. ward-proxy: the pod's spec.nodeName is set and, when the caller names a node, equals it;
 *     ward-ingress: the caller names no node.
 *  Rules 2–4 failing → WARD_CA_FORBIDDEN (403).
 * TokenReview failing (API down, timeout, an error status, the CA's RBAC missing) → WARD_CA_UNAVAILABLE
 * (503): never an identity, and not the caller's fault.
 *
 * The token is a bearer credential: it goes to the API server only, and never into a log line, an
 * error message or a metric label (messages from the API client are scrubbed of it).
 *
 * This file must not import ca/ (layering): KubeAttestor implements the CA's NodeAttestor
 * interface structurally, and the CLI (the composition root) hands one to the other.
 */
import { AuthenticationV1Api, type KubeConfig, type V1TokenReview } from '@kubernetes/client-node';
import { withSignal } from '../core/kube-request.js';
import { Counter, type Registry } from 'prom-client';
import { WardError } from '../core/errors.js';
import { INGRESS_SERVICE_ACCOUNT, SpiffeId, parseTrustDomain } from '../core/identity/index.js';
import type { Logger } from '../core/logger.js';
import { APP_NAME_LABEL, PROXY_APP_NAME } from './kube-model.js';

/** The audience Ward's projected tokens carry (docs/kubernetes.md). */
export const WARD_TOKEN_AUDIENCE = 'ward';
/** Ward's own namespace, where the node proxy and ingress pods run. */
export const DEFAULT_WARD_NAMESPACE = 'ward-system';
/** The node proxy DaemonSet's service account. */
export const PROXY_SERVICE_ACCOUNT = 'ward-proxy';
/** Default deadline of one TokenReview. */
export const DEFAULT_TOKEN_REVIEW_TIMEOUT_MS = 5_000;
/** Longest token sent to the API server; projected tokens are 1–2 KiB. */
export const MAX_SERVICE_ACCOUNT_TOKEN_LENGTH = 16 * 1024;

/**
 * TokenReviews in flight at once, at most. Past it a join is answered 503 WARD_CA_UNAVAILABLE at
 * once (the proxy retries with backoff): joins from many addresses cannot pile work on the API server.
 */
export const MAX_CONCURRENT_TOKEN_REVIEWS = 16;

const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';

/** What the attestor needs to know of a pod (the discovery Kubernetes source's pod cache). */
export interface AttestedPod {
  readonly uid: string;
  /** spec.nodeName; unset until the pod is scheduled. */
  readonly nodeName?: string;
  /** spec.serviceAccountName (or "default"). */
  readonly serviceAccount: string;
  /** status.phase. */
  readonly phase?: string;
  readonly labels: Readonly<Record<string, string>>;
}

/** The pod cache: undefined when no such pod is known. */
export interface AttestationPods {
  pod(namespace: string, name: string): AttestedPod | undefined;
}

export interface KubeAttestorOptions {
  kubeConfig: KubeConfig;
  trustDomain: string;
  /** Ward's namespace (default ward-system). */
  namespace?: string;
  pods: AttestationPods;
  logger: Logger;
  /** When given: ward_discovery_kube_attestations_total{result}. */
  registry?: Registry;
  /** Deadline of one TokenReview (default 5 s). */
  timeoutMs?: number;
}

/** The outcome of one attestation, the metric's `result` label (a fixed set). */
type AttestationResult = 'node' | 'ingress' | 'unauthenticated' | 'forbidden' | 'unavailable';

export class KubeAttestor {
  readonly #api: AuthenticationV1Api;
  readonly #trustDomain: string;
  readonly #namespace: string;
  readonly #pods: AttestationPods;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #attestations: Counter<'result'> | undefined;
  readonly #proxyUser: string;
  readonly #ingressUser: string;
  #reviewing = 0;

  constructor(o: KubeAttestorOptions) {
    this.#trustDomain = parseTrustDomain(o.trustDomain);
    this.#namespace = o.namespace ?? DEFAULT_WARD_NAMESPACE;
    this.#pods = o.pods;
    this.#log = o.logger.child({ component: 'discovery.kube-attestor' });
    this.#timeoutMs = o.timeoutMs ?? DEFAULT_TOKEN_REVIEW_TIMEOUT_MS;
    if (!(Number.isFinite(this.#timeoutMs) && this.#timeoutMs > 0)) {
      throw new WardError('WARD_CONFIG_INVALID', `TokenReview timeout must be a positive number of milliseconds, got ${String(o.timeoutMs)}`);
    }
    this.#proxyUser = `system:serviceaccount:${this.#namespace}:${PROXY_SERVICE_ACCOUNT}`;
    this.#ingressUser = `system:serviceaccount:${this.#namespace}:${INGRESS_SERVICE_ACCOUNT}`;
    this.#api = o.kubeConfig.makeApiClient(AuthenticationV1Api);
    if (o.registry) {
      const name = 'ward_discovery_kube_attestations_total';
      this.#attestations =
        (o.registry.getSingleMetric(name) as Counter<'result'> | undefined) ??
        new Counter({
          name,
          help: 'Kubernetes attestations of ServiceAccount tokens (POST /v1/join), by result: node or ingress (attested), unauthenticated, forbidden, unavailable (TokenReview failed)',
          labelNames: ['result'],
          registers: [o.registry],
        });
    }
  }

  /**
   * The identity the holder of `serviceAccountToken` may join as (see the rules above), or a
   * WardError: WARD_CA_TOKEN_INVALID, WARD_CA_FORBIDDEN or WARD_CA_UNAVAILABLE. `requestedNode` is
   * the node the proxy says it runs on; a ward-proxy pod on another node is refused.
   */
  async attest(serviceAccountToken: string, requestedNode?: string): Promise<SpiffeId> {
    try {
      const id = await this.#attest(serviceAccountToken, requestedNode);
      this.#count(id.isIngress ? 'ingress' : 'node');
      return id;
    } catch (err) {
      const result: AttestationResult | undefined =
        !(err instanceof WardError) ? undefined
        : err.code === 'WARD_CA_TOKEN_INVALID' ? 'unauthenticated'
        : err.code === 'WARD_CA_FORBIDDEN' ? 'forbidden'
        : err.code === 'WARD_CA_UNAVAILABLE' ? 'unavailable'
        : undefined;
      this.#count(result ?? 'unavailable');
      if (result !== undefined) throw err;
      // Unexpected (a bug below): still never an identity, and never the token in the message.
      this.#log.error({ err: scrub(errorText(err), serviceAccountToken) }, 'BUG: attestation failed unexpectedly');
      throw new WardError('WARD_CA_UNAVAILABLE', 'attestation failed unexpectedly; see the attestor log');
    }
  }

  #count(result: AttestationResult): void {
    this.#attestations?.inc({ result });
  }

  async #attest(token: string, requestedNode: string | undefined): Promise<SpiffeId> {
    // Cheap refusals first: a value that cannot be a token is not sent to the API server.
    if (typeof token !== 'string' || token.length === 0 || token.length > MAX_SERVICE_ACCOUNT_TOKEN_LENGTH || !/^[\x21-\x7e]+$/.test(token)) {
      return this.#unauthenticated('the ServiceAccount token is empty, too long or not printable ASCII', {});
    }
    if (this.#reviewing >= MAX_CONCURRENT_TOKEN_REVIEWS) {
      throw new WardError('WARD_CA_UNAVAILABLE', `${MAX_CONCURRENT_TOKEN_REVIEWS} attestations are in flight already; retry later`);
    }
    this.#reviewing++;
    let review: V1TokenReview;
    try {
      review = await this.#review(token);
    } finally {
      this.#reviewing--;
    }
    const status = review.status;
    const user = status?.user;
    const username = typeof user?.username === 'string' ? user.username : undefined;
    if (status?.authenticated !== true) {
      return this.#unauthenticated('TokenReview did not authenticate the token', { apiError: status?.error === undefined ? undefined : scrub(String(status.error), token).slice(0, 300) });
    }
    const audiences = Array.isArray(status.audiences) ? status.audiences : [];
    if (!audiences.includes(WARD_TOKEN_AUDIENCE)) {
      return this.#unauthenticated(`the token is not for audience "${WARD_TOKEN_AUDIENCE}"`, { username, audiences: audiences.slice(0, 10) });
    }
    const kind = username === this.#proxyUser ? 'proxy' : username === this.#ingressUser ? 'ingress' : undefined;
    if (kind === undefined) {
      return this.#forbidden(`user ${quote(username)} is neither ${this.#proxyUser} nor ${this.#ingressUser}`, { username });
    }
    const podName = single(user?.extra?.[POD_NAME_EXTRA]);
    const podUid = single(user?.extra?.[POD_UID_EXTRA]);
    if (podName === undefined || podUid === undefined) {
      return this.#forbidden(`the token of ${username} is not bound to one pod (no single ${POD_NAME_EXTRA} and ${POD_UID_EXTRA})`, { username });
    }
    const fields = { username, pod: `${this.#namespace}/${podName}`, podUid, requestedNode };
    const pod = this.#pods.pod(this.#namespace, podName);
    if (pod === undefined) return this.#forbidden(`pod ${this.#namespace}/${podName} is not known`, fields);
    if (pod.uid !== podUid) return this.#forbidden(`pod ${this.#namespace}/${podName} has UID ${quote(pod.uid)}, not the token's ${quote(podUid)} (recreated?)`, fields);
    const wantSa = kind === 'proxy' ? PROXY_SERVICE_ACCOUNT : INGRESS_SERVICE_ACCOUNT;
    if (pod.serviceAccount !== wantSa) return this.#forbidden(`pod ${this.#namespace}/${podName} runs as service account ${quote(pod.serviceAccount)}, not ${wantSa}`, fields);
    if (pod.phase !== 'Running') return this.#forbidden(`pod ${this.#namespace}/${podName} is ${quote(pod.phase ?? 'in no phase')}, not Running`, fields);
    // The same test the model uses to count a pod as a node proxy: a ward-proxy pod without the label
    // would join, then be refused every renewal and workload certificate (its node is not a member).
    if (kind === 'proxy' && pod.labels[APP_NAME_LABEL] !== PROXY_APP_NAME) {
      return this.#forbidden(`pod ${this.#namespace}/${podName} lacks the label ${APP_NAME_LABEL}: ${PROXY_APP_NAME} that marks node proxies`, fields);
    }
    if (kind === 'ingress') {
      // A caller that names a node asks for a node identity, which the ingress never has.
      if (requestedNode !== undefined) return this.#forbidden(`the ingress's token cannot join as node ${quote(requestedNode)}`, fields);
      const id = SpiffeId.ingress(this.#trustDomain);
      this.#log.info({ ...fields, identity: id.toString() }, 'attested the ingress');
      return id;
    }
    if (pod.nodeName === undefined || pod.nodeName === '') return this.#forbidden(`pod ${this.#namespace}/${podName} is not scheduled on a node`, fields);
    if (requestedNode !== undefined && requestedNode !== pod.nodeName) {
      return this.#forbidden(`pod ${this.#namespace}/${podName} runs on node ${quote(pod.nodeName)}, not the requested ${quote(requestedNode)}`, { ...fields, node: pod.nodeName });
    }
    let id: SpiffeId;
    try {
      id = SpiffeId.node(this.#trustDomain, pod.nodeName);
    } catch (err) {
      return this.#forbidden(`node name ${quote(pod.nodeName)} cannot name a node identity: ${(err as Error).message}`, fields);
    }
    this.#log.info({ ...fields, node: pod.nodeName, identity: id.toString() }, 'attested a node proxy');
    return id;
  }

  /** One TokenReview; any failure of the API (not of the token) is WARD_CA_UNAVAILABLE. */
  async #review(token: string): Promise<V1TokenReview> {
    const body: V1TokenReview = {
      apiVersion: 'authentication.k8s.io/v1',
      kind: 'TokenReview',
      spec: { token, audiences: [WARD_TOKEN_AUDIENCE] },
    };
    const signal = AbortSignal.timeout(this.#timeoutMs);
    try {
      // The deadline rides on the request context: the generated client has no timeout option.
      return await this.#api.createTokenReview({ body }, withSignal(signal));
    } catch (err) {
      const status = typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : undefined;
      const timedOut = signal.aborted;
      // Only the status and a scrubbed message: an API error body could echo the request.
      const detail = timedOut ? `no answer within ${this.#timeoutMs} ms` : status !== undefined ? `HTTP ${status}` : scrub(errorText(err), token).slice(0, 300);
      this.#log.error({ status, timedOut, err: detail }, 'TokenReview failed; refusing the join (the Kubernetes API is unavailable, or the CA may not create tokenreviews)');
      throw new WardError('WARD_CA_UNAVAILABLE', `TokenReview failed: ${detail}`);
    }
  }

  #unauthenticated(why: string, fields: Record<string, unknown>): never {
    this.#log.info({ ...fields, reason: why }, 'attestation refused: token not authenticated');
    throw new WardError('WARD_CA_TOKEN_INVALID', why);
  }

  #forbidden(why: string, fields: Record<string, unknown>): never {
    this.#log.info({ ...fields, reason: why }, 'attestation refused');
    throw new WardError('WARD_CA_FORBIDDEN', why);
  }
}

/** The one value of a TokenReview extra, when there is exactly one non-empty string. */
function single(values: unknown): string | undefined {
  return Array.isArray(values) && values.length === 1 && typeof values[0] === 'string' && values[0] !== '' ? values[0] : undefined;
}

function quote(text: string | undefined): string {
  return JSON.stringify((text ?? '').slice(0, 253));
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `text` without any copy of the token (a library message might quote what it was sent). */
function scrub(text: string, token: string): string {
  return token.length === 0 ? text : text.split(token).join('[redacted]');
}
