/** Test helper: assert that code fails with a WardError of a given code. Tests only. */
import { expect } from 'vitest';
import { isWardError, type WardErrorCode } from '../../core/errors.js';

/** The WardError `p` rejects with; fails the test when it resolves or rejects with anything else. */
export async function errorOf(p: Promise<unknown>): Promise<{ code: WardErrorCode; message: string }> {
  try {
    await p;
  } catch (err) {
    if (isWardError(err)) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/** Asserts that `fn` throws a WardError with `code` (and a message matching `message`). */
export function expectWardError(fn: () => unknown, code: WardErrorCode, message?: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'expected a WardError').toBeDefined();
  if (!isWardError(caught, code)) throw new Error(`expected ${code}, got ${String(caught)}`, { cause: caught });
  if (message) expect(caught.message).toMatch(message);
}
