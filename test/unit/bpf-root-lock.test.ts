/**
 * Issue 12 item 4 on the memory backend: its bpf-root keys the pins of this process, so
 * one owner per root means one daemon per root in the process. A second daemon on a held
 * root is refused before it opens a map (and names the pid); another root, or the same one
 * once the owner stopped, starts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { CtmapError } from '../../src/errors';
import { parseConfig } from '../../src/config/config';
import { startDaemon } from '../../src/daemon/daemon';
import { pinnedPaths as memoryPinnedPaths } from '../../src/maps/memory';
import { lockBpfRoot } from '../../src/maps/root-lock';
import { LogSink, startTestDaemon, tempDir } from '../helpers/grpc';

test('memory backend: a second daemon on a held bpf-root is refused before it opens a map, naming the pid; free again after stop (issue 12 item 4)', async (t) => {
  const sock = tempDir(t);
  const root = `/memory-root-lock-${process.pid}`;
  const flags = ['--backend', 'memory', '--bpf-root', root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096'];
  const first = await startTestDaemon(sock.dir, flags);
  t.after(() => first.stop());
  const pins = memoryPinnedPaths().filter((p) => p.startsWith(`${root}/`));
  assert.ok(pins.length > 0);

  const logs = new LogSink();
  // Bigger maps: had it opened them, it would have migrated the first daemon's.
  const second = parseConfig(['--socket', `${sock.dir}/second.sock`, ...flags.slice(0, 4), '--bpf-ct-global-tcp-max', '8192'], {});
  const starting = startDaemon(second, pino(logs));
  // Should it start after all, it must not outlive the test.
  t.after(async () => (await starting.catch(() => undefined))?.stop(100));
  await assert.rejects(starting, (err: unknown) => {
    assert.ok(err instanceof CtmapError);
    assert.equal(err.code, 'failed-precondition');
    assert.match(err.message, new RegExp(`--bpf-root ${root} is owned by another daemon in this process \\(pid ${process.pid}\\)`));
    return true;
  });
  assert.equal(logs.find(/migrat/), undefined, 'no map touched');
  assert.deepEqual(memoryPinnedPaths().filter((p) => p.startsWith(`${root}/`)), pins);
  assert.equal(first.daemon.tables.active()[0].map.spec.maxEntries, 4096);

  // Another root is another owner's.
  const other = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `${root}-other`]);
  await other.stop();
  await first.stop();
  const again = await startTestDaemon(sock.dir, flags);
  await again.stop();
});

test('memory backend: lockBpfRoot keys the root by its resolved path and release() is idempotent', () => {
  const root = `/memory-root-key-${process.pid}`;
  const lock = lockBpfRoot(`${root}/`, 'memory');
  assert.throws(() => lockBpfRoot(`${root}/x/..`, 'memory'), /is owned by another daemon in this process/);
  lock.release();
  lock.release();
  const again = lockBpfRoot(root, 'memory');
  const third = () => lockBpfRoot(root, 'memory');
  assert.throws(third, CtmapError);
  again.release();
});
