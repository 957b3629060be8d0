/** Polling for tests that wait on something asynchronous (streams, watchers, timers). */
import assert from 'node:assert/strict';

/** Polls `cond` every `pollMs`; fails naming `what` when it is still false after `timeoutMs`. */
export async function waitUntil(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000, pollMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
