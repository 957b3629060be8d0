/**
 * The daemon's teardown stack (src/daemon/teardown.ts): reverse order, async steps awaited
 * one at a time, a failing step logged and passed, the first error rethrown, idempotent.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { CtmapError } from '../../src/errors';
import { Teardown } from '../../src/daemon/teardown';
import { LogSink } from '../helpers/grpc';

function stack() {
  const logs = new LogSink();
  return { logs, teardown: new Teardown(pino({ level: 'debug' }, logs)) };
}

describe('Teardown', () => {
  it('runs the steps last pushed first, each awaited before the next', async () => {
    const { teardown, logs } = stack();
    const ran: string[] = [];
    teardown.push('a', () => void ran.push('a'));
    teardown.push('b', async () => {
      await new Promise((r) => setTimeout(r, 20));
      ran.push('b');
    });
    teardown.push('c', () => void ran.push('c'));
    await teardown.drain();
    assert.deepEqual(ran, ['c', 'b', 'a']);
    assert.deepEqual(logs.lines.filter((l) => l.msg === 'teardown step').map((l) => l.step), ['c', 'b', 'a']);
  });

  it('logs a failing step, runs the rest, then rejects with the first error', async () => {
    const { teardown, logs } = stack();
    const ran: string[] = [];
    const first = new Error('first');
    teardown.push('a', () => void ran.push('a'));
    teardown.push('b', () => {
      throw new Error('second');
    });
    teardown.push('c', () => Promise.reject(first));
    await assert.rejects(teardown.drain(), (err) => err === first);
    assert.deepEqual(ran, ['a']);
    const failed = logs.lines.filter((l) => l.level === 50);
    assert.deepEqual(failed.map((l) => [l.step, l.err.message]), [['c', 'first'], ['b', 'second']]);
  });

  it('drains once: later calls share the promise; a push after the start of the drain is refused', async () => {
    const { teardown } = stack();
    let runs = 0;
    teardown.push('once', () => void runs++);
    const p = teardown.drain();
    assert.strictEqual(teardown.drain(), p);
    await p;
    await teardown.drain();
    assert.equal(runs, 1);
    assert.throws(() => teardown.push('late', () => undefined), (e: CtmapError) => e.code === 'internal' && /late/.test(e.message));
  });

  it('an empty stack drains to nothing', async () => {
    await stack().teardown.drain();
  });
});
