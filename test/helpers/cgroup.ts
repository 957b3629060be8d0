/**
 * cgroup2 directories for the tests: a uniquely named cgroup under the cgroup2 mount
 * (found by filesystem type: /sys/fs/cgroup on a unified hierarchy, /sys/fs/cgroup/unified
 * on a hybrid one), processes placed into it through cgroup.procs, and its removal (also
 * on failure: the cleanup kills what is still in it, then removes the directory).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cgroup2Mounts } from '../../src/link/cgroup';

export interface TestCgroup {
  readonly path: string;
  /** Kills the processes still in it, then removes it. Idempotent. */
  cleanup(): Promise<void>;
}

/** The first cgroup2 mount, or undefined (the caller skips or fails loudly). */
export function cgroup2Root(): string | undefined {
  return cgroup2Mounts()[0];
}

/** Creates ctm-<pid>-<random>-<suffix> under the cgroup2 mount; `t` gets the cleanup. */
export function createCgroup(t: { after(fn: () => unknown): void }, suffix: string): TestCgroup {
  const root = cgroup2Root();
  if (!root) throw new Error('cgroup2 is not mounted (no filesystem of type cgroup2 in /proc/self/mountinfo)');
  const dir = path.join(root, `ctm-${process.pid}-${randomBytes(3).toString('hex')}-${suffix}`);
  fs.mkdirSync(dir);
  let done = false;
  const cleanup = async (): Promise<void> => {
    if (done) return;
    for (let i = 0; i < 50; i++) {
      let pids: number[] = [];
      try {
        pids = fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
      } catch {
        done = true;
        return; // already gone
      }
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // exited meanwhile
        }
      }
      try {
        fs.rmdirSync(dir);
        done = true;
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 20)); // EBUSY until the killed ones are reaped
      }
    }
    throw new Error(`cgroup ${dir} could not be removed`);
  };
  t.after(cleanup);
  return { path: dir, cleanup };
}

/**
 * The argv that runs `argv` inside `cgroup`: a shell writes its own pid into cgroup.procs
 * and then execs the command, so the command (same pid) and its children are in it.
 */
export function inCgroup(cgroup: string, argv: readonly string[]): string[] {
  return ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, ...argv];
}
