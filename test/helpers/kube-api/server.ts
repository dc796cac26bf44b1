/**
 * The HTTP side of the test Kubernetes API server: routing of /api and /apis paths, list (with
 * selectors, resourceVersion semantics and pagination), watch streams (replay from a
 * resourceVersion, 410 as an ERROR event, bookmarks, timeoutSeconds), create/update/patch/delete,
 * TokenReview, discovery, injected failures, stop and restart. Tests only.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parse as parseYaml } from 'yaml';
import { Cluster, type WriteOptions } from './cluster.js';
import { apiGroup, apiGroupList, apiResourceList, apiVersions, openapiV3Doc, openapiV3Root, SERVER_VERSION, table } from './discovery.js';
import { applyMerge, jsonPatch, mergePatch, strategicMergePatch } from './patch.js';
import { apiVersionOf, typeKey, type ResourceType } from './resources.js';
import { fieldFilter, labelFilter, type ObjectFilter } from './selectors.js';
import {
  KubeApiError, badRequest, expired, failure, injected, methodNotAllowed, notFound, tooLarge, unsupportedMediaType, type KubeStatus,
} from './status.js';
import { objectKey, type ChangeType, type KubeObject } from './store.js';
import type { KubeApiOptions, KubeApiServer, KubeRequestRecord, KubeVerb, TokenInfo } from './types.js';

const MiB = 1024 * 1024;
/** A watcher whose unsent output exceeds this is cut off (the real server drops slow watchers too). */
const WATCH_BUFFER_LIMIT = 16 * MiB;
const DEFAULT_API_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';

interface Route {
  type: ResourceType;
  group: string;
  version: string;
  resource: string;
  namespace?: string;
  name?: string;
  subresource?: string;
  watchPath: boolean;
}

interface FailRule {
  remaining: number;
  status: number;
  filter: (r: KubeRequestRecord) => boolean;
}

interface OpenWatch {
  res: ServerResponse;
  end(): void;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function statusOf(e: unknown): { status: KubeStatus; headers: Record<string, string> } {
  if (e instanceof KubeApiError) return { status: e.status, headers: e.headers };
  return { status: failure(500, 'InternalError', `Internal error occurred: ${e instanceof Error ? e.message : String(e)}`), headers: {} };
}

function notFoundPath(): KubeApiError {
  return new KubeApiError(failure(404, 'NotFound', 'the server could not find the requested resource', {}));
}

function parseRv(v: string | undefined, what = 'resourceVersion'): number | undefined {
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v)) throw badRequest(`${what}: Invalid value: "${v}": must be a non-negative integer`);
  return Number(v);
}

/** Items of a typed built-in list carry no apiVersion/kind (as the real server writes them); custom resources do. */
function listItem(t: ResourceType, o: KubeObject): object {
  if (t.custom) return o;
  const { apiVersion: _a, kind: _k, ...rest } = o;
  return rest;
}

export class TestKubeApiServer implements KubeApiServer {
  readonly requests: KubeRequestRecord[] = [];
  readonly #cluster: Cluster;
  readonly #o: Required<Omit<KubeApiOptions, 'port'>>;
  readonly #tokens = new Map<string, TokenInfo>();
  readonly #failRules: FailRule[] = [];
  readonly #watches = new Set<OpenWatch>();
  readonly #sockets = new Set<Socket>();
  readonly #waiters: { filter: (r: KubeRequestRecord) => boolean; resolve: (r: KubeRequestRecord) => void }[] = [];
  #server: Server | undefined;
  #port: number;
  #closed = false;

  constructor(o: KubeApiOptions = {}) {
    this.#port = o.port ?? 0;
    this.#o = {
      bookmarkIntervalMs: o.bookmarkIntervalMs ?? 1000,
      historyLimit: o.historyLimit ?? 10_000,
      requestLogLimit: o.requestLogLimit ?? 10_000,
      maxBodyBytes: o.maxBodyBytes ?? 3 * MiB,
      apiAudiences: o.apiAudiences ?? [DEFAULT_API_AUDIENCE],
      now: o.now ?? (() => new Date()),
    };
    this.#cluster = new Cluster({ historyLimit: this.#o.historyLimit, now: this.#o.now });
    for (const ns of ['default', 'kube-system', 'kube-public', 'kube-node-lease']) {
      this.#cluster.create(this.#cluster.typeOf('v1', 'Namespace'), { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns }, spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' } }, { admit: false });
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  get port(): number {
    return this.#port;
  }

  get openWatches(): number {
    return this.#watches.size;
  }

  get resourceVersion(): string {
    return String(this.#cluster.store.resourceVersion);
  }

  async listen(): Promise<void> {
    if (this.#closed) throw new Error('the test API server is closed');
    if (this.#server !== undefined) return;
    const server = createServer((req, res) => void this.#handle(req, res));
    server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    server.listen(this.#port, '127.0.0.1');
    await once(server, 'listening');
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('BUG: no TCP address');
    this.#port = addr.port;
    this.#server = server;
  }

  // ---- direct store access -------------------------------------------------------------------

  create<T extends KubeObject>(obj: T): T {
    return this.#cluster.create(this.#cluster.typeOf(obj.apiVersion, obj.kind), obj, { admit: false }).object as T;
  }

  get(apiVersion: string, kind: string, name: string, namespace?: string): KubeObject | undefined {
    const o = this.#cluster.get(this.#cluster.typeOf(apiVersion, kind), namespace, name);
    return o === undefined ? undefined : structuredClone(o);
  }

  update<T extends KubeObject>(obj: T): T {
    return this.#cluster.update(this.#cluster.typeOf(obj.apiVersion, obj.kind), obj, { admit: false }).object as T;
  }

  patch(apiVersion: string, kind: string, name: string, namespace: string | undefined, patch: object): KubeObject {
    const t = this.#cluster.typeOf(apiVersion, kind);
    const current = this.#cluster.mustGet(t, namespace, name);
    const next = mergePatch(current, patch) as KubeObject;
    next.metadata = { ...next.metadata, name };
    if (current.metadata.namespace !== undefined) next.metadata.namespace = current.metadata.namespace;
    return this.#cluster.update(t, next, { admit: false }).object;
  }

  delete(apiVersion: string, kind: string, name: string, namespace?: string): void {
    this.#cluster.delete(this.#cluster.typeOf(apiVersion, kind), namespace, name, { admit: false });
  }

  list(apiVersion: string, kind: string, namespace?: string): KubeObject[] {
    const t = this.#cluster.typeOf(apiVersion, kind);
    return this.#cluster.store.list(typeKey(t), t.namespaced ? namespace : undefined).map((o) => structuredClone(o));
  }

  addToken(token: string, o: TokenInfo): void {
    this.#tokens.set(token, structuredClone(o));
  }

  compact(): void {
    this.#cluster.store.compact();
  }

  dropWatches(): void {
    for (const w of [...this.#watches]) w.end();
  }

  failNext(n: number, status: number, filter: (r: KubeRequestRecord) => boolean = () => true): void {
    if (n > 0) this.#failRules.push({ remaining: n, status, filter });
  }

  nextRequest(filter: (r: KubeRequestRecord) => boolean = () => true): Promise<KubeRequestRecord> {
    return new Promise((resolve) => this.#waiters.push({ filter, resolve }));
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const w of [...this.#watches]) w.end();
    if (server === undefined) return;
    const closed = once(server, 'close');
    server.close();
    server.closeAllConnections();
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.listen();
  }

  async close(): Promise<void> {
    await this.stop();
    this.#closed = true;
    this.#cluster.store.clear();
    this.#tokens.clear();
    this.#failRules.length = 0;
  }

  // ---- HTTP ------------------------------------------------------------------------------------

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? '/', 'http://localhost');
      const segs = url.pathname.split('/').filter((s) => s !== '');
      if (segs[0] !== 'api' && segs[0] !== 'apis') {
        await this.#drain(req);
        return this.#nonResource(url.pathname, res);
      }
      const discovery = this.#discovery(segs);
      if (discovery !== undefined) {
        await this.#drain(req);
        if (discovery === null) throw notFoundPath();
        return this.#json(res, 200, discovery);
      }
      const route = this.#route(segs);
      const query = Object.fromEntries(url.searchParams);
      const verb = this.#verb(req.method ?? 'GET', route, query);
      const record: KubeRequestRecord = { method: req.method ?? 'GET', verb, group: route.group, version: route.version, resource: route.resource, query };
      if (route.subresource !== undefined) record.subresource = route.subresource;
      if (route.namespace !== undefined) record.namespace = route.namespace;
      if (route.name !== undefined) record.name = route.name;
      if (req.headers['user-agent'] !== undefined) record.userAgent = req.headers['user-agent'];
      this.#record(record);
      res.on('finish', () => void (record.status = record.status ?? res.statusCode));
      const body = await this.#readBody(req);
      const rule = this.#failRules.find((r) => r.remaining > 0 && r.filter(record));
      if (rule !== undefined) {
        rule.remaining -= 1;
        if (rule.remaining === 0) this.#failRules.splice(this.#failRules.indexOf(rule), 1);
        throw injected(rule.status);
      }
      await this.#dispatch(req, res, route, verb, query, body, record);
    } catch (e) {
      const { status, headers } = statusOf(e);
      if (!res.headersSent) this.#json(res, status.code, status, headers);
      else res.destroy();
    }
  }

  #record(r: KubeRequestRecord): void {
    this.requests.push(r);
    const limit = this.#o.requestLogLimit;
    if (this.requests.length > limit + Math.ceil(limit / 10)) this.requests.splice(0, this.requests.length - limit);
    for (let i = 0; i < this.#waiters.length; i++) {
      if (this.#waiters[i].filter(r)) {
        this.#waiters.splice(i, 1)[0].resolve(r);
        i--;
      }
    }
  }

  #json(res: ServerResponse, code: number, body: unknown, headers: Record<string, string | string[]> = {}): void {
    const data = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Content-Length': Buffer.byteLength(data), ...headers });
    res.end(data);
  }

  async #drain(req: IncomingMessage): Promise<void> {
    await this.#readBody(req);
  }

  async #readBody(req: IncomingMessage): Promise<Buffer> {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > this.#o.maxBodyBytes) {
      req.resume();
      throw tooLarge(this.#o.maxBodyBytes);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > this.#o.maxBodyBytes) {
        req.resume();
        throw tooLarge(this.#o.maxBodyBytes);
      }
      chunks.push(chunk as Buffer);
    }
    return Buffer.concat(chunks);
  }

  #nonResource(path: string, res: ServerResponse): void {
    if (path === '/version' || path === '/version/') return this.#json(res, 200, SERVER_VERSION);
    if (['/healthz', '/livez', '/readyz'].includes(path)) {
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
      return void res.end('ok');
    }
    if (path === '/openapi/v3' || path === '/openapi/v3/') return this.#json(res, 200, openapiV3Root(this.#cluster.types));
    const gv = /^\/openapi\/v3\/(?:api\/([^/]+)|apis\/([^/]+)\/([^/]+))\/?$/.exec(path);
    if (gv !== null) {
      const doc = gv[1] !== undefined ? openapiV3Doc(this.#cluster.types, '', gv[1]) : openapiV3Doc(this.#cluster.types, gv[2], gv[3]);
      if (doc !== undefined) return this.#json(res, 200, doc);
    }
    // /openapi/v2 is not served (kubectl needs only v3, see discovery.ts).
    throw notFoundPath();
  }

  /** The discovery document for a path, null for a discovery path that does not exist, undefined for a resource path. */
  #discovery(segs: string[]): object | null | undefined {
    const types = this.#cluster.types;
    if (segs[0] === 'api') {
      if (segs.length === 1) return apiVersions(`127.0.0.1:${this.#port}`);
      if (segs.length === 2) return apiResourceList(types, '', segs[1]) ?? null;
      return undefined;
    }
    if (segs.length === 1) return apiGroupList(types);
    if (segs.length === 2) return apiGroup(types, segs[1]) ?? null;
    if (segs.length === 3) return apiResourceList(types, segs[1], segs[2]) ?? null;
    return undefined;
  }

  #route(segs: string[]): Route {
    const core = segs[0] === 'api';
    const group = core ? '' : segs[1];
    const version = core ? segs[1] : segs[2];
    let rest = segs.slice(core ? 2 : 3);
    let watchPath = false;
    if (rest[0] === 'watch') {
      watchPath = true;
      rest = rest.slice(1);
    }
    const find = (resource: string | undefined): ResourceType | undefined =>
      resource === undefined ? undefined : this.#cluster.types.byResource(group, version, resource);
    let namespace: string | undefined;
    let type: ResourceType | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3 && find(rest[2])?.namespaced === true) {
      namespace = rest[1];
      type = find(rest[2]);
      rest = rest.slice(2);
    } else {
      type = find(rest[0]);
      if (type?.namespaced === false && rest.length > 3) type = undefined;
    }
    if (type === undefined || rest.length > 3) throw notFoundPath();
    const route: Route = { type, group, version, resource: type.resource, watchPath };
    if (namespace !== undefined) route.namespace = namespace;
    if (rest[1] !== undefined) route.name = rest[1];
    if (rest[2] !== undefined) {
      if (rest[2] !== 'status' || !type.status) throw notFoundPath();
      route.subresource = rest[2];
    }
    if (route.name !== undefined && type.namespaced && namespace === undefined) throw notFoundPath();
    return route;
  }

  #verb(method: string, route: Route, query: Record<string, string>): KubeVerb {
    const watching = route.watchPath || query.watch === 'true' || query.watch === '1';
    switch (method) {
      case 'GET': return route.name === undefined ? (watching ? 'watch' : 'list') : watching ? 'watch' : 'get';
      case 'POST': return 'create';
      case 'PUT': return 'update';
      case 'PATCH': return 'patch';
      case 'DELETE': return route.name === undefined ? 'deletecollection' : 'delete';
      default: throw methodNotAllowed();
    }
  }

  async #dispatch(req: IncomingMessage, res: ServerResponse, route: Route, verb: KubeVerb, query: Record<string, string>, body: Buffer, record: KubeRequestRecord): Promise<void> {
    const t = route.type;
    const verbAllowed = route.subresource === 'status' ? ['get', 'update', 'patch'].includes(verb) : t.verbs.includes(verb);
    if (!verbAllowed) throw methodNotAllowed();
    if (verb === 'create' && route.name !== undefined) throw methodNotAllowed();
    if ((verb === 'create' || verb === 'deletecollection') && t.namespaced && route.namespace === undefined) throw methodNotAllowed();
    const accept = req.headers.accept ?? '';
    const asTable = /as=Table/.test(accept);
    const write: WriteOptions = { admit: true, dryRun: query.dryRun === 'All' };
    const fv = query.fieldValidation;
    if (fv === 'Strict' || fv === 'Warn' || fv === 'Ignore') write.fieldValidation = fv;
    else if (fv !== undefined && fv !== '') throw badRequest(`fieldValidation parameter unsupported: ${fv}`);
    if (route.subresource === 'status') write.subresource = 'status';

    switch (verb) {
      case 'get': {
        const o = this.#cluster.mustGet(t, route.namespace, route.name ?? '');
        if (asTable) return this.#json(res, 200, table(t, [o], o.metadata.resourceVersion ?? '', query.includeObject, this.#o.now()));
        return this.#json(res, 200, o);
      }
      case 'list':
        return this.#list(res, route, query, asTable);
      case 'watch':
        return this.#watch(res, route, query, asTable, record);
      case 'create': {
        const obj = this.#decode(req, body);
        if (t.kind === 'TokenReview') return this.#tokenReview(res, obj);
        this.#checkIdentity(t, obj, route);
        const r = this.#cluster.create(t, obj, write);
        return this.#json(res, 201, r.object, this.#warnings(r.warnings));
      }
      case 'update': {
        const obj = this.#decode(req, body);
        this.#checkIdentity(t, obj, route);
        const r = this.#cluster.update(t, obj, write);
        return this.#json(res, 200, r.object, this.#warnings(r.warnings));
      }
      case 'patch':
        return this.#patch(req, res, route, body, write, query);
      case 'delete': {
        const opts = body.length > 0 ? this.#decode(req, body) as unknown as Record<string, unknown> : {};
        const pre = isObject(opts.preconditions) ? opts.preconditions : {};
        const precondition: { resourceVersion?: string; uid?: string } = {};
        if (typeof pre.resourceVersion === 'string') precondition.resourceVersion = pre.resourceVersion;
        if (typeof pre.uid === 'string') precondition.uid = pre.uid;
        const dryRun = write.dryRun === true || (Array.isArray(opts.dryRun) && opts.dryRun.includes('All'));
        const r = this.#cluster.delete(t, route.namespace, route.name ?? '', { ...write, dryRun, precondition });
        return this.#json(res, r.gone ? 200 : 202, r.object);
      }
      case 'deletecollection': {
        const filter = this.#filter(t, query);
        const gone: object[] = [];
        for (const o of this.#cluster.store.list(typeKey(t), route.namespace)) {
          if (!filter(o)) continue;
          gone.push(listItem(t, this.#cluster.delete(t, o.metadata.namespace, o.metadata.name ?? '', write).object));
        }
        return this.#json(res, 200, { kind: t.listKind, apiVersion: apiVersionOf(t), metadata: { resourceVersion: this.resourceVersion }, items: gone });
      }
    }
  }

  #warnings(ws: string[]): Record<string, string[]> {
    return ws.length === 0 ? {} : { Warning: ws.map((w) => `299 - ${JSON.stringify(w)}`) };
  }

  #decode(req: IncomingMessage, body: Buffer): KubeObject {
    const ct = (req.headers['content-type'] ?? 'application/json').split(';')[0].trim();
    let v: unknown;
    try {
      if (ct === 'application/yaml' || ct === 'application/apply-patch+yaml') v = parseYaml(body.toString('utf8'));
      else if (ct.includes('json')) v = JSON.parse(body.toString('utf8'));
      else throw unsupportedMediaType(ct);
    } catch (e) {
      if (e instanceof KubeApiError) throw e;
      throw badRequest(`error decoding request body: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (!isObject(v)) throw badRequest('the body of the request must be a JSON object');
    return v as KubeObject;
  }

  /** The URL names the object: a body that says otherwise is refused (as the real server does). */
  #checkIdentity(t: ResourceType, obj: KubeObject, route: Route): void {
    if (obj.apiVersion !== undefined && obj.apiVersion !== apiVersionOf(t)) {
      throw badRequest(`the API version in the data (${String(obj.apiVersion)}) does not match the expected API version (${apiVersionOf(t)})`);
    }
    if (obj.kind !== undefined && obj.kind !== t.kind) throw badRequest(`${String(obj.kind)} in version "${t.version}" cannot be handled as a ${t.kind}: the kind does not match`);
    obj.metadata = isObject(obj.metadata) ? obj.metadata : {};
    if (t.namespaced) {
      if (obj.metadata.namespace !== undefined && obj.metadata.namespace !== '' && obj.metadata.namespace !== route.namespace) {
        throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
      }
      obj.metadata.namespace = route.namespace;
    }
    if (route.name !== undefined) {
      if (obj.metadata.name !== undefined && obj.metadata.name !== route.name) {
        throw badRequest(`the name of the object (${obj.metadata.name}) does not match the name on the URL (${route.name})`);
      }
      obj.metadata.name = route.name;
    }
  }

  #filter(t: ResourceType, query: Record<string, string>): ObjectFilter {
    const labels = labelFilter(query.labelSelector);
    const fields = fieldFilter(query.fieldSelector, t.fields);
    return (o) => labels(o) && fields(o);
  }

  #list(res: ServerResponse, route: Route, query: Record<string, string>, asTable: boolean): void {
    const t = route.type;
    const key = typeKey(t);
    const store = this.#cluster.store;
    const filter = this.#filter(t, query);
    const limit = parseRv(query.limit, 'limit');
    let rv = store.resourceVersion;
    let objects: KubeObject[];
    let start: string | undefined;
    if (query.continue !== undefined && query.continue !== '') {
      let token: { rv?: unknown; start?: unknown };
      try {
        token = JSON.parse(Buffer.from(query.continue, 'base64url').toString('utf8')) as { rv?: unknown; start?: unknown };
      } catch {
        throw badRequest('continue key is not valid: illegal base64 data');
      }
      if (typeof token.rv !== 'number' || typeof token.start !== 'string') throw badRequest('continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)');
      const snap = store.snapshot(key, token.rv, route.namespace);
      if (!Array.isArray(snap)) {
        throw new KubeApiError(expired('The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results.'));
      }
      rv = token.rv;
      objects = snap;
      start = token.start;
    } else {
      const asked = parseRv(query.resourceVersion);
      const match = query.resourceVersionMatch;
      if (match !== undefined && match !== '' && match !== 'NotOlderThan' && match !== 'Exact') throw badRequest(`resourceVersionMatch: Unsupported value: "${match}"`);
      if (match !== undefined && match !== '' && asked === undefined) throw badRequest('resourceVersionMatch is forbidden unless resourceVersion is provided');
      if (asked !== undefined && asked > store.resourceVersion) {
        throw new KubeApiError(failure(504, 'Timeout', `Timeout: Too large resource version: ${asked}, current: ${store.resourceVersion}`, { causes: [{ reason: 'ResourceVersionTooLarge', message: 'Too large resource version' }], retryAfterSeconds: 1 }));
      }
      if (match === 'Exact' && asked !== undefined) {
        const snap = store.snapshot(key, asked, route.namespace);
        if (!Array.isArray(snap)) throw new KubeApiError(snap);
        rv = asked;
        objects = snap;
      } else {
        // NotOlderThan from a compacted version is refused here (the brief of this helper asks for
        // it; a real watch cache would serve the newer state). Without resourceVersionMatch, any
        // version is served the current state, as the real server does.
        if (match === 'NotOlderThan' && asked !== undefined && asked !== 0 && asked < store.minValidResourceVersion) {
          throw new KubeApiError(expired(`too old resource version: ${asked} (${store.minValidResourceVersion})`));
        }
        objects = store.list(key, route.namespace);
      }
    }
    let items = objects.filter(filter);
    if (start !== undefined) items = items.filter((o) => objectKey(o.metadata.namespace, o.metadata.name ?? '') > (start as string));
    const metadata: Record<string, unknown> = { resourceVersion: String(rv) };
    if (limit !== undefined && limit > 0 && items.length > limit) {
      const last = items[limit - 1];
      metadata.continue = Buffer.from(JSON.stringify({ v: 'meta.k8s.io/v1', rv, start: objectKey(last.metadata.namespace, last.metadata.name ?? '') })).toString('base64url');
      if (query.labelSelector === undefined && query.fieldSelector === undefined) metadata.remainingItemCount = items.length - limit;
      items = items.slice(0, limit);
    }
    if (asTable) {
      const tbl = table(t, items, String(rv), query.includeObject, this.#o.now()) as { metadata: Record<string, unknown> };
      tbl.metadata = metadata;
      return this.#json(res, 200, tbl);
    }
    this.#json(res, 200, { kind: t.listKind, apiVersion: apiVersionOf(t), metadata, items: items.map((o) => listItem(t, o)) });
  }

  #watch(res: ServerResponse, route: Route, query: Record<string, string>, asTable: boolean, record: KubeRequestRecord): void {
    const t = route.type;
    const store = this.#cluster.store;
    const selected = this.#filter(t, query);
    const matches = (o: KubeObject): boolean =>
      (route.namespace === undefined || o.metadata.namespace === route.namespace) && (route.name === undefined || o.metadata.name === route.name) && selected(o);
    const asked = parseRv(query.resourceVersion);
    const timeout = parseRv(query.timeoutSeconds, 'timeoutSeconds');
    const bookmarks = query.allowWatchBookmarks === 'true' || query.allowWatchBookmarks === '1';
    const sendInitial = query.sendInitialEvents === 'true';
    const fromState = sendInitial || asked === undefined || asked === 0;

    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    record.status = 200;

    let ended = false;
    const timers: NodeJS.Timeout[] = [];
    let handle: { stop(): void } | undefined;
    const w: OpenWatch = {
      res,
      end: () => {
        if (ended) return;
        ended = true;
        handle?.stop();
        for (const x of timers) clearTimeout(x);
        this.#watches.delete(w);
        res.end();
      },
    };
    const send = (type: ChangeType | 'BOOKMARK' | 'ERROR', object: unknown): void => {
      if (ended) return;
      const obj = asTable && (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED')
        ? table(t, [object as KubeObject], (object as KubeObject).metadata.resourceVersion ?? '', query.includeObject, this.#o.now())
        : object;
      res.write(`${JSON.stringify({ type, object: obj })}\n`);
      if (res.writableLength > WATCH_BUFFER_LIMIT) {
        ended = true;
        handle?.stop();
        this.#watches.delete(w);
        res.destroy();
      }
    };
    const bookmark = (initialEnd = false): void => {
      const metadata: Record<string, unknown> = { resourceVersion: String(store.resourceVersion) };
      if (initialEnd) metadata.annotations = { 'k8s.io/initial-events-end': 'true' };
      send('BOOKMARK', { kind: t.kind, apiVersion: apiVersionOf(t), metadata });
    };
    this.#watches.add(w);
    res.on('close', () => w.end());

    // Replay and registration happen in this one synchronous step (see store.ts on ordering).
    let from = asked ?? 0;
    if (fromState) {
      for (const o of store.list(typeKey(t), route.namespace)) if (matches(o)) send('ADDED', o);
      from = store.resourceVersion;
    }
    const started = store.watch({ key: typeKey(t), matches, send }, from);
    if (!('stop' in started)) {
      send('ERROR', started);
      w.end();
      return;
    }
    handle = started;
    if (sendInitial && bookmarks) bookmark(true);
    else if (bookmarks) bookmark();
    if (bookmarks) {
      const tick = (): void => {
        bookmark();
        timers[0] = setTimeout(tick, this.#o.bookmarkIntervalMs);
      };
      timers[0] = setTimeout(tick, this.#o.bookmarkIntervalMs);
    }
    if (timeout !== undefined && timeout > 0) timers.push(setTimeout(() => w.end(), timeout * 1000));
  }

  #patch(req: IncomingMessage, res: ServerResponse, route: Route, body: Buffer, write: WriteOptions, query: Record<string, string>): void {
    const t = route.type;
    const ct = (req.headers['content-type'] ?? '').split(';')[0].trim();
    const patch = ct === 'application/json-patch+json' ? this.#parseJson(body) : ct === 'application/apply-patch+yaml' ? this.#decode(req, body) : this.#parseJson(body);
    const current = this.#cluster.get(t, route.namespace, route.name ?? '');
    if (ct === 'application/apply-patch+yaml') {
      if (query.fieldManager === undefined || query.fieldManager === '') throw badRequest('PATCH, application/apply-patch+yaml requires fieldManager to be set');
      const applied = patch as KubeObject;
      this.#checkIdentity(t, applied, route);
      if (current === undefined) {
        if (route.subresource === 'status') throw notFound(t.group, t.resource, route.name ?? '');
        const r = this.#cluster.create(t, applied, write);
        return this.#json(res, 201, r.object, this.#warnings(r.warnings));
      }
      const r = this.#cluster.update(t, applyMerge(current, applied) as KubeObject, write);
      return this.#json(res, 200, r.object, this.#warnings(r.warnings));
    }
    if (current === undefined) throw notFound(t.group, t.resource, route.name ?? '');
    let next: unknown;
    switch (ct) {
      case 'application/merge-patch+json': next = mergePatch(current, patch); break;
      case 'application/strategic-merge-patch+json':
        if (t.custom) throw unsupportedMediaType(`${ct} (strategic merge patch is not supported for custom resources)`);
        next = strategicMergePatch(current, patch);
        break;
      case 'application/json-patch+json': next = jsonPatch(current, patch); break;
      default: throw unsupportedMediaType(ct);
    }
    if (!isObject(next)) throw badRequest('the patch does not produce an object');
    const obj = next as KubeObject;
    obj.metadata = isObject(obj.metadata) ? obj.metadata : {};
    if (obj.metadata.name !== current.metadata.name || (t.namespaced && obj.metadata.namespace !== current.metadata.namespace)) {
      throw badRequest('metadata.name and metadata.namespace cannot be changed by a patch');
    }
    const r = this.#cluster.update(t, obj, write);
    this.#json(res, 200, r.object, this.#warnings(r.warnings));
  }

  #parseJson(body: Buffer): unknown {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw badRequest(`error decoding patch: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** authentication.k8s.io/v1 TokenReview: answered from addToken(), never stored. */
  #tokenReview(res: ServerResponse, obj: KubeObject): void {
    const spec = isObject(obj.spec) ? obj.spec : {};
    if (typeof spec.token !== 'string' || spec.token === '') {
      throw new KubeApiError(failure(422, 'Invalid', 'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value', {
        group: 'authentication.k8s.io', kind: 'TokenReview', causes: [{ reason: 'FieldValueRequired', message: 'Required value', field: 'spec.token' }],
      }));
    }
    const requested = Array.isArray(spec.audiences) && spec.audiences.length > 0 ? spec.audiences.map(String) : undefined;
    const wanted = requested ?? this.#o.apiAudiences;
    const info = this.#tokens.get(spec.token);
    // As on the real server, `authenticated: false` is not written (Go omitempty): status.authenticated is absent.
    let status: Record<string, unknown> = { user: {} };
    if (info !== undefined) {
      const common = wanted.filter((a) => info.audiences.includes(a));
      if (common.length === 0) {
        status = { user: {}, error: `[invalid bearer token, token audiences ${JSON.stringify(info.audiences)} is invalid for the target audiences ${JSON.stringify(wanted)}]` };
      } else {
        const user: Record<string, unknown> = { username: info.user.username };
        if (info.user.uid !== undefined) user.uid = info.user.uid;
        user.groups = info.user.groups ?? defaultGroups(info.user.username);
        if (info.user.extra !== undefined) user.extra = info.user.extra;
        status = { authenticated: true, user, audiences: common };
      }
    }
    const spec2: Record<string, unknown> = { token: spec.token };
    if (requested !== undefined) spec2.audiences = requested;
    this.#json(res, 201, { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec: spec2, status });
  }
}

/** The groups the real server gives a ServiceAccount token's user. */
function defaultGroups(username: string): string[] {
  const m = /^system:serviceaccount:([^:]+):[^:]+$/.exec(username);
  if (m === null) return ['system:authenticated'];
  return ['system:serviceaccounts', `system:serviceaccounts:${m[1]}`, 'system:authenticated'];
}
