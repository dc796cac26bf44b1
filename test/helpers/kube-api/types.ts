/** The public shapes of the test Kubernetes API server (re-exported by test/helpers/kube-api.ts). Tests only. */
import type { KubeObject } from './store.js';

export type { KubeObject, KubeObjectMeta } from './store.js';

export type KubeVerb = 'get' | 'list' | 'watch' | 'create' | 'update' | 'patch' | 'delete' | 'deletecollection';

/** One request to a resource path (discovery and other non-resource paths are not recorded). */
export interface KubeRequestRecord {
  method: string;
  verb: KubeVerb;
  /** '' for the core group. */
  group: string;
  version: string;
  /** Plural, e.g. 'pods'. */
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
  userAgent?: string;
  /** The query parameters (labelSelector, resourceVersion, watch, fieldValidation, …). */
  query?: Record<string, string>;
  /** The HTTP status answered (a watch: 200 once its stream started); set when the answer starts. */
  status?: number;
}

export interface TokenInfo {
  audiences: string[];
  user: { username: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
}

export interface KubeApiOptions {
  /** Port on 127.0.0.1; 0 (the default) picks a free one. */
  port?: number;
  /** Interval of BOOKMARK events on watches that ask for them (allowWatchBookmarks=true). Default 1000 ms. */
  bookmarkIntervalMs?: number;
  /** Change events kept for watch resumption; a resourceVersion older than the history is 410 Gone. Default 10 000. */
  historyLimit?: number;
  /** Entries kept in `requests`. Default 10 000. */
  requestLogLimit?: number;
  /** Largest request body accepted (413 above). Default 3 MiB, as the real server. */
  maxBodyBytes?: number;
  /** The API server's own audiences: what a TokenReview without spec.audiences is checked for. */
  apiAudiences?: string[];
  /** Clock for creationTimestamp, deletionTimestamp and ages. Default: the system clock. */
  now?: () => Date;
}

export interface KubeApiServer {
  /** http://127.0.0.1:PORT (plain HTTP, loopback only). */
  readonly url: string;
  readonly port: number;
  /** Every request to a resource path, in arrival order (the last `requestLogLimit`). */
  readonly requests: KubeRequestRecord[];
  /**
   * Direct store access (bypasses HTTP, admission and schema validation; still bumps resourceVersion
   * and notifies watchers). `obj` has apiVersion, kind, metadata.name, and metadata.namespace for
   * namespaced kinds; uid, resourceVersion and creationTimestamp are filled in (a given uid or
   * creationTimestamp is kept), status is kept. Throws (a KubeApiError) when the object exists.
   */
  create<T extends KubeObject>(obj: T): T;
  get(apiVersion: string, kind: string, name: string, namespace?: string): KubeObject | undefined;
  /** Replaces the object, status included; unconditional (metadata.resourceVersion is ignored). */
  update<T extends KubeObject>(obj: T): T;
  /** JSON merge patch (RFC 7386), status included. */
  patch(apiVersion: string, kind: string, name: string, namespace: string | undefined, mergePatch: object): KubeObject;
  /** Removes the object at once (finalizers are not waited for). Throws when it does not exist. */
  delete(apiVersion: string, kind: string, name: string, namespace?: string): void;
  /** Objects of a kind (in one namespace, or all), ordered by namespace and name. */
  list(apiVersion: string, kind: string, namespace?: string): KubeObject[];
  /**
   * TokenReview answers: this token reviews as authenticated with `user` for the requested audiences
   * it has; any other token, or a review none of whose audiences the token has, is not authenticated
   * (the latter with status.error). A review without spec.audiences is for the apiAudiences.
   */
  addToken(token: string, o: TokenInfo): void;
  /** etcd compaction: every resourceVersion older than the current one becomes too old (410 Gone). */
  compact(): void;
  /** Ends every open watch stream now, cleanly (as a server-side watch timeout does). */
  dropWatches(): void;
  /** The next `n` resource requests matching `filter` (default: any) fail with `status` and the real server's Status body. */
  failNext(n: number, status: number, filter?: (r: KubeRequestRecord) => boolean): void;
  /** Number of watch streams open now. */
  readonly openWatches: number;
  /** Resolves with the next request that matches (already recorded ones do not count). */
  nextRequest(filter?: (r: KubeRequestRecord) => boolean): Promise<KubeRequestRecord>;
  /** The current global resourceVersion. */
  readonly resourceVersion: string;
  /** Closes the listener and every connection and stream; the store survives in memory. */
  stop(): Promise<void>;
  /** Listens again on the same port with the same store (an API server restart). */
  restart(): Promise<void>;
  /** stop() and forget everything. Idempotent. */
  close(): Promise<void>;
}
