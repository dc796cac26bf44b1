/**
 * undici's Pool, loaded alone. The package root also loads fetch, WebSocket, EventSource and their
 * dependencies (about 9 MiB resident that a node proxy never uses), so the proxy requires only the
 * Pool module; types come from the package root (type-only, nothing loaded).
 */
import { createRequire } from 'node:module';
import type { Pool as UndiciPool } from 'undici';

const require = createRequire(import.meta.url);

export const Pool = require('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
export type Pool = UndiciPool;
