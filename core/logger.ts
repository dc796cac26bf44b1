import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * The one redaction list, fixed at construction (pino compiles it once). Key material types also
 * return '[redacted]' from toJSON()/inspect, so a mistake cannot leak them through a log call.
 */
export const REDACT_PATHS = [
  'key', 'privateKey', 'private_key', 'keyPem', 'token', 'joinToken', 'password', 'secret',
  '*.key', '*.privateKey', '*.keyPem', '*.token', '*.joinToken', '*.password', '*.secret',
  'authorization', 'headers.authorization', 'req.headers.authorization', 'req.headers.cookie',
];

export interface LoggerOptions {
  level?: string;
  component?: string;
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const base = opts.component ? { component: opts.component } : {};
  return pino(
    {
      level: opts.level ?? 'info',
      base,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination ?? pino.destination({ fd: 2, sync: false }),
  );
}

/** A logger that discards everything; for tests and library defaults. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
