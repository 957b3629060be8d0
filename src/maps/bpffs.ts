/**
 * bpffs checks. Pins only survive the process on a bpf filesystem, so a kernel-backend
 * daemon refuses a bpf-root elsewhere; a missing directory under bpffs is created, and an
 * empty or missing one elsewhere is mounted, as Cilium's agent does for /sys/fs/bpf.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { CtmapError } from '../errors';

/** statfs(2) f_type of bpffs (BPF_FS_MAGIC). */
export const BPF_FS_MAGIC = 0xcafe4a11;

export function isBpffs(dir: string): boolean {
  try {
    return fs.statfsSync(dir).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/** `dir` or its nearest ancestor that exists. */
function nearestExisting(dir: string): string {
  let d = path.resolve(dir);
  while (!fs.existsSync(d) && path.dirname(d) !== d) d = path.dirname(d);
  return d;
}

/**
 * Makes sure `root` is on bpffs (issue 6, item 4): a missing `root` whose nearest existing
 * ancestor is on bpffs is created there as a plain directory (issue 12, item 5: a bpffs
 * mounted on it would be a second, separate filesystem, private to this mount namespace
 * in a container, so the host would not see the pins and the next container would start
 * with empty maps). Otherwise bpffs is mounted on it when it is missing or an empty
 * directory, as Cilium's agent does for /sys/fs/bpf. Throws failed-precondition, naming
 * --bpf-root and what to do, when `root` is a non-empty directory on another filesystem
 * (its pins would not outlive the process, and mounting over it would hide its files) or
 * when mounting is not permitted (not root / no CAP_SYS_ADMIN).
 */
export function ensureBpffs(root: string, log: Logger): void {
  if (isBpffs(root)) return;
  if (!fs.existsSync(root)) {
    const parent = nearestExisting(path.dirname(root));
    if (isBpffs(parent)) {
      fs.mkdirSync(root, { recursive: true, mode: 0o755 });
      log.info({ bpfRoot: root, bpffs: parent }, 'created --bpf-root as a directory on the bpffs it lies in (nothing mounted)');
      return;
    }
  }
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });
  if (fs.readdirSync(root).length > 0) {
    throw new CtmapError('failed-precondition', `--bpf-root ${root} is not on a bpf filesystem and is not empty; mount bpffs there (mount -t bpf bpf ${root}) or choose another --bpf-root`);
  }
  try {
    execFileSync('mount', ['-t', 'bpf', 'bpf', root], { stdio: 'pipe' });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new CtmapError('failed-precondition', `--bpf-root ${root} is not on a bpf filesystem and mounting one failed: ${stderr || String(err)}`);
  }
  if (!isBpffs(root)) throw new CtmapError('failed-precondition', `--bpf-root ${root}: mounted bpffs but statfs does not report it`);
  log.info({ bpfRoot: root }, 'mounted bpffs');
}

/**
 * Makes sure the pin directory `dir` (under a bpf-root already checked by ensureBpffs)
 * exists and is on bpffs too: something else mounted there would take pins it cannot
 * keep. Throws failed-precondition naming the directory.
 */
export function ensurePinDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (!isBpffs(dir)) throw new CtmapError('failed-precondition', `pin directory ${dir} is not on a bpf filesystem (another filesystem is mounted there); unmount it or choose another --bpf-root`);
}
