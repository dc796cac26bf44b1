import type { IncomingMessage } from 'node:http';

/** A request body passed its size limit; the caller answers 413 and closes. */
export class BodyTooLargeError extends Error {
  constructor(readonly max: number) {
    super(`body exceeds ${max} bytes`);
    this.name = 'BodyTooLargeError';
  }
}

/** The request ended (client gone, deadline passed) before its body was complete. */
export class BodyIncompleteError extends Error {
  constructor() {
    super('the request body ended before it was complete');
    this.name = 'BodyIncompleteError';
  }
}

/**
 * Reads a request body of at most `max` bytes as UTF-8 text. Refuses (BodyTooLargeError) as soon as
 * the limit is passed, without waiting for the rest. Listeners rather than `for await`: leaving an
 * async iterator early destroys the request, and with it the socket, before a refusal could be sent.
 * Each server maps the two errors to its own WARD_* codes.
 */
export function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err?: Error) => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      if (err) reject(err);
      else resolve(Buffer.concat(chunks).toString('utf8'));
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) done(new BodyTooLargeError(max));
      else chunks.push(chunk);
    };
    const onEnd = () => done();
    // 'close' before 'end': the client went away or a deadline cut the request off.
    const onClose = () => done(new BodyIncompleteError());
    if (req.destroyed) return onClose();
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
  });
}
