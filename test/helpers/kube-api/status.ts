/**
 * meta/v1 Status objects as the real API server writes them (code, reason, message wording,
 * details), and the error that carries one out of the store to the HTTP layer. Tests only.
 */

export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
  retryAfterSeconds?: number;
}

export interface KubeStatus {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Failure' | 'Success';
  message?: string;
  reason?: string;
  details?: StatusDetails;
  code: number;
}

/** Thrown by the store and the request handlers; the HTTP layer writes `status` with `status.code`. */
export class KubeApiError extends Error {
  constructor(readonly status: KubeStatus, readonly headers: Record<string, string> = {}) {
    super(status.message ?? status.reason ?? `HTTP ${status.code}`);
    this.name = 'KubeApiError';
  }
}

export function failure(code: number, reason: string, message: string, details?: StatusDetails): KubeStatus {
  const s: KubeStatus = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
  if (details !== undefined) s.details = details;
  return s;
}

/** `pods` or `ingresses.networking.k8s.io`: how the server names a resource in messages. */
export function qualifiedResource(group: string, resource: string): string {
  return group === '' ? resource : `${resource}.${group}`;
}

/** `Pod` or `AuthorizationPolicy.security.ward.dev`: how the server names a kind in 422 messages. */
export function qualifiedKind(group: string, kind: string): string {
  return group === '' ? kind : `${kind}.${group}`;
}

function resourceDetails(group: string, resource: string, name: string): StatusDetails {
  return group === '' ? { name, kind: resource } : { name, group, kind: resource };
}

export function notFound(group: string, resource: string, name: string): KubeApiError {
  return new KubeApiError(failure(404, 'NotFound', `${qualifiedResource(group, resource)} "${name}" not found`, resourceDetails(group, resource, name)));
}

export function alreadyExists(group: string, resource: string, name: string): KubeApiError {
  return new KubeApiError(failure(409, 'AlreadyExists', `${qualifiedResource(group, resource)} "${name}" already exists`, resourceDetails(group, resource, name)));
}

export function conflict(group: string, resource: string, name: string): KubeApiError {
  return new KubeApiError(failure(409, 'Conflict',
    `Operation cannot be fulfilled on ${qualifiedResource(group, resource)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
    resourceDetails(group, resource, name)));
}

export function badRequest(message: string): KubeApiError {
  return new KubeApiError(failure(400, 'BadRequest', message));
}

export function methodNotAllowed(): KubeApiError {
  return new KubeApiError(failure(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource'));
}

export function unsupportedMediaType(contentType: string): KubeApiError {
  return new KubeApiError(failure(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got ${contentType}`));
}

/** A 422 with one cause per field error, message as `Kind.group "name" is invalid: a: m` or `…: [a: m, b: n]`. */
export function invalid(group: string, kind: string, name: string, causes: { reason: string; field: string; message: string }[]): KubeApiError {
  const parts = causes.map((c) => `${c.field}: ${c.message}`);
  const list = parts.length === 1 ? parts[0] : `[${parts.join(', ')}]`;
  const details: StatusDetails = { name, kind, causes: causes.map((c) => ({ reason: c.reason, message: c.message, field: c.field })) };
  if (group !== '') details.group = group;
  return new KubeApiError(failure(422, 'Invalid', `${qualifiedKind(group, kind)} "${name}" is invalid: ${list}`, details));
}

/** 410 Gone for a resourceVersion older than the compaction point. */
export function expired(message: string): KubeStatus {
  return failure(410, 'Expired', message);
}

export function tooLarge(limit: number): KubeApiError {
  return new KubeApiError(failure(413, 'RequestEntityTooLarge', `Request entity too large: limit is ${limit}`));
}

/** What failNext() answers: the Status the real server sends for that code, with its retry hint. */
export function injected(code: number): KubeApiError {
  switch (code) {
    case 429:
      return new KubeApiError(failure(429, 'TooManyRequests', 'Too many requests, please try again later.', { retryAfterSeconds: 1 }), { 'Retry-After': '1' });
    case 500:
      return new KubeApiError(failure(500, 'InternalError', 'Internal error occurred: injected failure', { causes: [{ message: 'injected failure' }] }));
    case 503:
      return new KubeApiError(failure(503, 'ServiceUnavailable', 'the server is currently unable to handle the request', { retryAfterSeconds: 1 }), { 'Retry-After': '1' });
    case 504:
      return new KubeApiError(failure(504, 'Timeout', 'the server was unable to return a response in the time allotted, but may still be processing the request', { retryAfterSeconds: 1 }));
    case 401:
      return new KubeApiError(failure(401, 'Unauthorized', 'Unauthorized'));
    case 403:
      return new KubeApiError(failure(403, 'Forbidden', 'forbidden: injected failure'));
    case 404:
      return new KubeApiError(failure(404, 'NotFound', 'the server could not find the requested resource'));
    case 409:
      return new KubeApiError(failure(409, 'Conflict', 'Operation cannot be fulfilled: injected failure'));
    case 410:
      return new KubeApiError(failure(410, 'Expired', 'too old resource version'));
    default:
      return new KubeApiError(failure(code, code >= 500 ? 'InternalError' : 'BadRequest', `injected failure (HTTP ${code})`));
  }
}
