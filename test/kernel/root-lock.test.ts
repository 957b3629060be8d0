/**
 * Issue 12 item 4, the kernel side of one owner per bpf-root: an exclusive flock on the
 * bpf-root directory (on bpffs), refused to a second taker in this process and while
 * another process holds it, with that process's pid in the message; dropped by release()
 * and by the holder's death. Every process and directory is removed, also on failure.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { CtmapError } from '../../src/errors';
import { lockBpfRoot } from '../../src/maps/root-lock';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';

type SysModule = typeof import('../../src/sys');

async function until(what: string, ok: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('bpf-root lock: an exclusive flock on the bpffs directory, one owner at a time, the holder named by pid (issue 12 item 4)', async (t) => {
  if (!kernelTier(t)) return;
  const sys = require('../../src/sys') as SysModule;
  const bpf = privateBpfRoot(t);

  const lock = lockBpfRoot(bpf.root, 'kernel');
  assert.deepEqual(sys.flockHolders(bpf.root), [process.pid], '/proc/locks names this process');
  assert.throws(
    () => lockBpfRoot(bpf.root, 'kernel'),
    (err: unknown) => err instanceof CtmapError && err.code === 'failed-precondition' && err.message.includes(`owned by another daemon in this process (pid ${process.pid})`),
  );
  lock.release();
  lock.release();
  assert.deepEqual(sys.flockHolders(bpf.root), []);

  // Another process: flock(1) takes it and becomes its command (--no-fork: no child
  // inherits the lock, so killing the holder frees the root).
  const holder = spawn('flock', ['--nonblock', '--exclusive', '--no-fork', bpf.root, 'sleep', '60'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => holder.on('exit', resolve));
  t.after(() => holder.kill('SIGKILL'));
  await until('flock(1) to take the lock', () => sys.flockHolders(bpf.root).length > 0);
  assert.throws(
    () => lockBpfRoot(bpf.root, 'kernel'),
    (err: unknown) => err instanceof CtmapError && err.message.includes(`--bpf-root ${bpf.root} is owned by pid ${holder.pid} (it holds the flock on ${bpf.root})`),
  );
  // Its death frees the root: no stale lock.
  holder.kill('SIGKILL');
  await exited;
  const after = lockBpfRoot(bpf.root, 'kernel');
  after.release();
});
