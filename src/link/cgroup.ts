/**
 * cgroup attachments through bpf_link (issue 13 item 1, fate-sharing): a link attaches a
 * program to one cgroup and hook, alongside whatever else is attached there (links are
 * always multi-attach), and lives as long as someone holds it: a pin under the bpf root,
 * so the attachment survives the process that made it. Replacing the program of a link
 * (BPF_LINK_UPDATE) is atomic; detaching a link (BPF_LINK_DETACH) touches no other
 * program of the cgroup. Also: where cgroup2 is mounted, found by filesystem type.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../sys';

/** enum bpf_attach_type values of the hooks fate-sharing uses (uapi linux/bpf.h). */
export const CgroupAttachType = {
  INET_EGRESS: 1,
  SOCK_OPS: 3,
  INET_SOCK_RELEASE: 34,
} as const;
export type CgroupAttachTypeValue = (typeof CgroupAttachType)[keyof typeof CgroupAttachType];

/**
 * The cgroup id of a cgroup2 directory: its inode, what bpf_link_info reports as
 * cgroup_id. Throws the fs error (ENOENT) for a missing path.
 */
export function cgroupId(cgroupPath: string): bigint {
  return fs.statSync(cgroupPath, { bigint: true }).ino;
}

/**
 * The cgroup2 mount points of this mount namespace (filesystem type cgroup2 in
 * /proc/self/mountinfo): /sys/fs/cgroup on a unified hierarchy, /sys/fs/cgroup/unified on
 * a hybrid one. Empty when cgroup2 is not mounted.
 */
export function cgroup2Mounts(mountinfo = '/proc/self/mountinfo'): string[] {
  let text: string;
  try {
    text = fs.readFileSync(mountinfo, 'latin1');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    // "<id> <parent> <dev> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fstype = line.slice(sep + 3).split(' ')[0];
    if (fstype !== 'cgroup2') continue;
    const mountPoint = line.slice(0, sep).split(' ')[4];
    out.push(mountPoint.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

/** Whether `p` lies on a cgroup2 filesystem (statfs magic CGROUP2_SUPER_MAGIC). */
export function isCgroup2Dir(p: string): boolean {
  try {
    return fs.statfsSync(p).type === CGROUP2_SUPER_MAGIC && fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

const CGROUP2_SUPER_MAGIC = 0x63677270;

/**
 * The path of the cgroup with this id under the cgroup2 mounts, walking at most
 * `limit` directories; undefined when not found (gone, or in another cgroup namespace).
 */
export function findCgroupById(id: bigint, limit = 20000): string | undefined {
  let seen = 0;
  for (const root of cgroup2Mounts()) {
    const queue = [root];
    while (queue.length > 0 && seen < limit) {
      const dir = queue.shift()!;
      seen++;
      try {
        if (fs.statSync(dir, { bigint: true }).ino === id) return dir;
        for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) queue.push(path.join(dir, e.name));
      } catch {
        // removed while walking
      }
    }
  }
  return undefined;
}

/**
 * Attaches `progFd` to the cgroup at `cgroupPath` with a new bpf_link and returns the link
 * (the caller pins or closes it; closing the last reference detaches). Throws
 * BpfSyscallError (ENOENT/ENOTDIR for the path, EPERM without CAP_BPF/CAP_NET_ADMIN).
 */
export function cgroupLinkCreate(cgroupPath: string, progFd: number, attachType: CgroupAttachTypeValue): bpf.Fd {
  const dir = bpf.openDirectory(cgroupPath);
  try {
    return bpf.linkCreate(progFd, dir, attachType);
  } finally {
    dir.close();
  }
}
