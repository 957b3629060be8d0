/**
 * One owner per bpf-root (issue 12 item 4): two daemons on the same maps would each run
 * their own GC, migrations and datapath reloads over them. The daemon takes this lock
 * before it opens any map and holds it until its teardown has closed them all.
 *
 * Kernel backend: an exclusive flock(2) on the bpf-root directory itself (src/sys/lock.ts),
 * not on a lock file elsewhere, because the directory is visible to exactly those who
 * share the maps: a daemon in a container that has the host's bpffs mounted shares its
 * inode, though it has its own /run (a lock file there would not be seen) and maybe its
 * own network namespace (an abstract unix socket would not be seen either). bpffs holds
 * no regular files, but its directories take flocks. The kernel drops the lock when the
 * holder dies, so no stale lock survives a kill -9; the holder's pid is read from
 * /proc/locks.
 *
 * Memory backend: its bpf-root is only the key of pins inside this process (a second
 * process has maps of its own), so the lock is a set of the roots held in this process.
 */
import * as path from 'node:path';
import { CtmapError } from '../errors';

export interface RootLock {
  readonly root: string;
  /** Drops the lock. Idempotent. */
  release(): void;
}

/** Memory-backend roots owned in this process. */
const memoryRoots = new Set<string>();

/**
 * Makes this process the owner of `root` for `backend` until release(). The kernel root
 * must exist (ensureBpffs first). Throws CtmapError failed-precondition naming --bpf-root
 * and the holder's pid when another daemon holds it (another process, or another daemon
 * started in this one), and what open(2) / flock(2) throw otherwise.
 */
export function lockBpfRoot(root: string, backend: 'kernel' | 'memory'): RootLock {
  if (backend === 'memory') {
    const key = path.resolve(root);
    if (memoryRoots.has(key)) throw ownedBy(root, [process.pid], 'memory');
    memoryRoots.add(key);
    let held = true;
    return {
      root,
      release() {
        if (held) memoryRoots.delete(key);
        held = false;
      },
    };
  }
  // Loaded only here: it binds libc through koffi, which the memory backend does without.
  const sys = require('../sys') as typeof import('../sys');
  const lock = sys.tryLockDir(root);
  if (!lock) throw ownedBy(root, sys.flockHolders(root), 'kernel');
  return { root, release: () => lock.release() };
}

function ownedBy(root: string, pids: readonly number[], backend: 'kernel' | 'memory'): CtmapError {
  const who =
    pids.length === 0
      ? 'a process not visible from this pid namespace'
      : pids.includes(process.pid)
        ? `another daemon in this process (pid ${process.pid})`
        : `pid ${pids.join(', pid ')}`;
  const how = backend === 'kernel' ? `it holds the flock on ${root}` : 'memory backend';
  return new CtmapError('failed-precondition', `--bpf-root ${root} is owned by ${who} (${how}); stop that ctmapd or choose another --bpf-root`);
}
