/**
 * Per-request options for @kubernetes/client-node's generated APIs that carry an AbortSignal: the
 * generated clients have no timeout option, so a deadline (or a close) rides on the request context
 * through a middleware. One helper for every Kubernetes call Ward makes with a deadline.
 *
 * Imported only by the Kubernetes-mode modules (it loads the client library).
 */
import { Observable, type ConfigurationOptions } from '@kubernetes/client-node';

export function withSignal(signal: AbortSignal): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (context) => {
          context.setSignal(signal);
          return new Observable(Promise.resolve(context));
        },
        post: (context) => new Observable(Promise.resolve(context)),
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}
