/**
 * The test API server's "etcd": objects by type, one global resourceVersion counter, a bounded
 * history of change events, and the watchers that follow it. Type-agnostic; the semantics of
 * create/update/delete live in cluster.ts. Tests only.
 *
 * Ordering: every change is applied, appended to the history and delivered to every watcher in one
 * synchronous step, and a new watch replays the history and registers itself in one synchronous
 * step too. So no event can fall between a watch's replay and its live delivery, and every watcher
 * sees every change in resourceVersion order.
 */
import { expired, type KubeStatus } from './status.js';

export interface KubeObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: unknown[];
  [key: string]: unknown;
}

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: KubeObjectMeta;
  [key: string]: unknown;
}

export type ChangeType = 'ADDED' | 'MODIFIED' | 'DELETED';

interface Change {
  rv: number;
  type: ChangeType;
  /** typeKey() of the object's type. */
  key: string;
  /** The object after the change (for DELETED: its last state, with the deletion's resourceVersion). */
  object: KubeObject;
  /** The object before the change (MODIFIED and DELETED). */
  prev?: KubeObject;
}

/** What a watcher is sent. Events are already filtered and translated for it (see deliver()). */
export interface Watcher {
  key: string;
  matches(obj: KubeObject): boolean;
  send(type: ChangeType, obj: KubeObject): void;
}

export function objectKey(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}

function compareObjects(a: KubeObject, b: KubeObject): number {
  const ka = objectKey(a.metadata.namespace, a.metadata.name ?? '');
  const kb = objectKey(b.metadata.namespace, b.metadata.name ?? '');
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

/**
 * What a change looks like to one watcher, as the real watch cache does it: an object that starts
 * matching its selectors is ADDED, one that stops matching is DELETED, one that matches before and
 * after is MODIFIED, and anything else is not sent.
 */
function translate(w: Watcher, c: Change): ChangeType | undefined {
  if (c.key !== w.key) return undefined;
  const now = c.type !== 'DELETED' && w.matches(c.object);
  const before = c.prev !== undefined && w.matches(c.prev);
  if (c.type === 'DELETED') return before ? 'DELETED' : undefined;
  if (now && before) return 'MODIFIED';
  if (now) return 'ADDED';
  if (before) return 'DELETED';
  return undefined;
}

export class Store {
  readonly #objects = new Map<string, Map<string, KubeObject>>();
  readonly #history: Change[] = [];
  readonly #historyLimit: number;
  readonly #watchers = new Set<Watcher>();
  /** The empty store is at resourceVersion 1, so no list ever reports "0" (which means "any"). */
  #rv = 1;
  /** Every resourceVersion below this is too old to watch from (compacted, or history dropped). */
  #minValidRv = 0;

  constructor(historyLimit: number) {
    this.#historyLimit = historyLimit;
  }

  get resourceVersion(): number {
    return this.#rv;
  }

  get minValidResourceVersion(): number {
    return this.#minValidRv;
  }

  get(key: string, namespace: string | undefined, name: string): KubeObject | undefined {
    return this.#objects.get(key)?.get(objectKey(namespace, name));
  }

  /** Current objects of a type (one namespace, or all), ordered by namespace and name like etcd keys. */
  list(key: string, namespace?: string): KubeObject[] {
    const all = [...(this.#objects.get(key)?.values() ?? [])];
    return all.filter((o) => namespace === undefined || o.metadata.namespace === namespace).sort(compareObjects);
  }

  /**
   * The objects of a type as they were at resourceVersion `rv` (rebuilt from the history), or a 410
   * Status when that version is compacted.
   */
  snapshot(key: string, rv: number, namespace?: string): KubeObject[] | KubeStatus {
    if (rv < this.#minValidRv) return expired(`too old resource version: ${rv} (${this.#minValidRv})`);
    const state = new Map(this.#objects.get(key) ?? []);
    for (let i = this.#history.length - 1; i >= 0 && this.#history[i].rv > rv; i--) {
      const c = this.#history[i];
      if (c.key !== key) continue;
      const k = objectKey(c.object.metadata.namespace, c.object.metadata.name ?? '');
      if (c.type === 'ADDED') state.delete(k);
      else if (c.prev !== undefined) state.set(k, c.prev);
    }
    return [...state.values()].filter((o) => namespace === undefined || o.metadata.namespace === namespace).sort(compareObjects);
  }

  /**
   * Applies one change: gives `obj` the next resourceVersion, stores (or removes) it, records it and
   * tells every watcher. `obj` is owned by the store from now on.
   */
  commit(type: ChangeType, key: string, obj: KubeObject): KubeObject {
    const name = obj.metadata.name ?? '';
    let byName = this.#objects.get(key);
    if (byName === undefined) {
      byName = new Map();
      this.#objects.set(key, byName);
    }
    const k = objectKey(obj.metadata.namespace, name);
    const prev = byName.get(k);
    this.#rv += 1;
    obj.metadata.resourceVersion = String(this.#rv);
    if (type === 'DELETED') byName.delete(k);
    else byName.set(k, obj);
    const change: Change = { rv: this.#rv, type, key, object: obj };
    if (prev !== undefined) change.prev = prev;
    this.#history.push(change);
    if (this.#history.length > this.#historyLimit) {
      const dropped = this.#history.splice(0, this.#history.length - this.#historyLimit);
      this.#minValidRv = Math.max(this.#minValidRv, dropped[dropped.length - 1].rv);
    }
    for (const w of [...this.#watchers]) {
      const t = translate(w, change);
      if (t !== undefined) w.send(t, obj);
    }
    return obj;
  }

  /**
   * Starts a watcher after resourceVersion `from`: replays every recorded change after it, then
   * follows live changes. Returns a 410 Status (and registers nothing) when `from` is too old.
   */
  watch(w: Watcher, from: number): { stop(): void } | KubeStatus {
    if (from < this.#minValidRv) return expired(`too old resource version: ${from} (${this.#minValidRv})`);
    for (const c of this.#history) {
      if (c.rv <= from) continue;
      const t = translate(w, c);
      if (t !== undefined) w.send(t, c.object);
    }
    this.#watchers.add(w);
    return { stop: () => void this.#watchers.delete(w) };
  }

  /** etcd compaction at the current revision: every older resourceVersion becomes too old. */
  compact(): void {
    this.#minValidRv = this.#rv;
    this.#history.length = 0;
  }

  clear(): void {
    this.#objects.clear();
    this.#history.length = 0;
    this.#watchers.clear();
  }
}
