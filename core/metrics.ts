import { Registry } from 'prom-client';

/** One registry per process, passed down from the composition root; never the global default. */
export function createRegistry(): Registry {
  return new Registry();
}
export type { Registry };
