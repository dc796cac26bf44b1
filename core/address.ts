import { isIP } from 'node:net';
import { WardError } from './errors.js';

/** Whether `host` is this machine only: 127.0.0.0/8, ::1 or localhost. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

/** Admin endpoints are unauthenticated by design, so they may only ever face this machine. */
export function assertLoopback(host: string): void {
  if (!isLoopback(host)) throw new WardError('WARD_CONFIG_INVALID', `admin listener must bind a loopback address, not ${host}`);
}
