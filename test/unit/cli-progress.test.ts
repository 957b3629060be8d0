/**
 * The `ctmap` progress line (src/cli/progress.ts): on a terminal one line rewritten with
 * \r and cleared at the end, at most every minIntervalMs; nothing at all when stderr is
 * not a terminal.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Progress, progressOf } from '../../src/cli/progress';

function target(isTTY: boolean): { written: string[]; write(t: string): void; isTTY: boolean } {
  const written: string[] = [];
  return { written, write: (t) => void written.push(t), isTTY };
}

test('not a terminal: nothing is ever written', async () => {
  const t = target(false);
  const p = new Progress(t, 0);
  p.update('a', true);
  p.clear();
  const stop = p.elapsed('waiting', 5);
  await new Promise((r) => setTimeout(r, 30));
  stop();
  p.done();
  assert.deepEqual(t.written, []);
  assert.equal(p.active, false);
  // progressOf: an Io without errIsTTY is no terminal.
  const errs: string[] = [];
  const q = progressOf({ err: (s) => void errs.push(s) }, 0);
  q.update('x', true);
  q.done();
  assert.deepEqual(errs, []);
});

test('a terminal: one line rewritten in place, throttled, cleared once at the end', () => {
  const t = target(true);
  let now = 0;
  const p = new Progress(t, 100, () => now);
  p.update('scanned 1');
  now = 50;
  p.update('scanned 2'); // within 100 ms: skipped
  now = 150;
  p.update('scanned 3');
  p.update('scanned 4', true); // forced
  p.done();
  p.done(); // idempotent
  assert.deepEqual(t.written, ['\rscanned 1\x1b[K', '\rscanned 3\x1b[K', '\rscanned 4\x1b[K', '\r\x1b[K']);
});

test('clear() before other output, and nothing to clear when nothing was shown', () => {
  const t = target(true);
  const p = new Progress(t, 0);
  p.clear();
  assert.deepEqual(t.written, []);
  p.update('n=1');
  p.clear();
  p.clear();
  assert.deepEqual(t.written, ['\rn=1\x1b[K', '\r\x1b[K']);
});

test('elapsed(): a line per tick while waiting, the stop clears it', async () => {
  const t = target(true);
  const p = new Progress(t, 1000);
  const stop = p.elapsed('ct flush: waiting for the daemon,', 10);
  await new Promise((r) => setTimeout(r, 45));
  stop();
  const lines = t.written.slice(0, -1);
  assert.ok(lines.length >= 2, `ticks: ${JSON.stringify(t.written)}`);
  for (const l of lines) assert.match(l, /^\rct flush: waiting for the daemon, \d+ s\x1b\[K$/);
  assert.equal(t.written.at(-1), '\r\x1b[K');
  const after = t.written.length;
  await new Promise((r) => setTimeout(r, 25));
  assert.equal(t.written.length, after, 'no tick after the stop');
});
