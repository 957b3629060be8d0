/**
 * Where `ctmap datapath attach` writes its ownership records (see src/datapath/attach.ts),
 * which network namespaces they belong to, whether those still exist, and the pruning of
 * the records whose namespace is gone. Kept apart from attach.ts so that the daemon and
 * `ctmap datapath prune` work on them without loading libbpf: a record is directories and
 * pins, and unlinking a pin on bpffs is an unpin.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** <bpf-root>/ctmapd/datapath: one net<inode>/if<ifindex>/ directory per attachment. */
export function datapathRecordsDir(bpfRoot: string): string {
  return path.join(bpfRoot, 'ctmapd', 'datapath');
}

/** Inodes of the network namespaces that have attachment records, ascending. */
export function recordedNamespaces(bpfRoot: string): number[] {
  try {
    return fs
      .readdirSync(datapathRecordsDir(bpfRoot))
      .map((n) => /^net(\d+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/**
 * Removes a record directory (the pins in it are unpinned with it), then the directories
 * above it while they are empty, up to and including <bpf-root>/ctmapd.
 */
export function removeRecordDir(dir: string, bpfRoot: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  const stop = path.resolve(bpfRoot);
  for (let d = path.dirname(dir); d.startsWith(stop + path.sep) && d !== stop; d = path.dirname(d)) {
    try {
      fs.rmdirSync(d);
    } catch {
      break; // not empty (other records, other pins): leave it
    }
  }
}

/** nsfs bind mounts of network namespaces in a mountinfo file: inode -> mount point. */
function netnsMounts(mountinfo: string): Map<number, string> {
  const out = new Map<number, string>();
  let text: string;
  try {
    text = fs.readFileSync(mountinfo, 'latin1');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    // "36 35 0:4 net:[4026532567] /run/netns/blue rw shared:1 - nsfs nsfs rw": the root
    // of an nsfs mount names the namespace; the mount point has \ooo escapes.
    const f = line.split(' ');
    const m = /^net:\[(\d+)\]$/.exec(f[3] ?? '');
    if (m) out.set(Number(m[1]), f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

/**
 * A path that opens the network namespace with this inode, or undefined when none is
 * found. Looked for, in this order: this process's own namespace, the names under
 * /run/netns (what `ip netns add` bind-mounts), any other nsfs bind mount of a network
 * namespace in this mount namespace or in that of pid 1 (a daemon in a container sees the
 * host's through /proc/1/root), and the namespaces of running processes. A namespace held
 * only by an open fd is not found. The answer is complete only from the initial pid
 * namespace (seesEveryProcess).
 */
export function findNetns(inode: number): string | undefined {
  const candidates: string[] = ['/proc/self/ns/net'];
  try {
    for (const name of fs.readdirSync('/run/netns')) candidates.push(path.join('/run/netns', name));
  } catch {
    // no named namespaces
  }
  const mounted = netnsMounts('/proc/self/mountinfo').get(inode);
  if (mounted !== undefined) candidates.push(mounted);
  const initMounted = netnsMounts('/proc/1/mountinfo').get(inode);
  if (initMounted !== undefined) candidates.push(path.join('/proc/1/root', initMounted));
  try {
    for (const pid of fs.readdirSync('/proc')) if (/^\d+$/.test(pid)) candidates.push(`/proc/${pid}/ns/net`);
  } catch {
    // no procfs
  }
  for (const c of candidates) {
    try {
      if (fs.statSync(c).ino === inode) return c;
    } catch {
      // gone while looking
    }
  }
  return undefined;
}

/** Inode of the initial pid namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h). */
const PROC_PID_INIT_INO = 0xeffffffc;

/**
 * Whether /proc lists every process of the machine here: only in the initial pid
 * namespace. Elsewhere (a container without --pid=host) a namespace whose processes are
 * not visible would look gone to findNetns.
 */
export function seesEveryProcess(): boolean {
  try {
    return fs.statSync('/proc/self/ns/pid').ino === PROC_PID_INIT_INO;
  } catch {
    return false;
  }
}

/** One record removed because its network namespace is gone. */
export interface PrunedRecord {
  readonly netns: number;
  readonly ifindex: number;
  /** The program pins it held (`ingress_h<handle>_p<priority>`, ...), now unpinned. */
  readonly pins: readonly string[];
}

export type PruneResult =
  | { readonly pruned: readonly PrunedRecord[] }
  /** Nothing was removed: this process cannot tell which namespaces are gone. */
  | { readonly pruned: readonly []; readonly refused: string };

/**
 * Removes the records of network namespaces that no longer exist (findNetns finds none;
 * issue 12 item 6). Such a namespace took its devices and tc filters with it, so its
 * records own nothing, but their pins keep the programs loaded and, through them, every
 * map the programs were loaded with: after a migration, the old maps with all their
 * memory. Unpinning drops those last references, and the kernel frees programs and maps.
 * Refuses (`refused` says why, nothing removed) outside the initial pid namespace, where a
 * live namespace could look gone. Throws only for unreadable or unremovable bpffs
 * directories.
 */
export function pruneVanishedNamespaces(bpfRoot: string): PruneResult {
  const namespaces = recordedNamespaces(bpfRoot);
  if (namespaces.length === 0) return { pruned: [] };
  if (!seesEveryProcess()) {
    return {
      pruned: [],
      refused: 'not in the initial pid namespace, so a network namespace whose processes are hidden from here would look gone (run with the host pid namespace, e.g. --pid=host)',
    };
  }
  const pruned: PrunedRecord[] = [];
  for (const netns of namespaces) {
    if (findNetns(netns) !== undefined) continue;
    const nsDir = path.join(datapathRecordsDir(bpfRoot), `net${netns}`);
    for (const name of fs.readdirSync(nsDir).sort()) {
      const m = /^if(\d+)$/.exec(name);
      if (!m) continue;
      const dir = path.join(nsDir, name);
      const pins = fs.readdirSync(dir).filter((n) => /^(ingress|egress)_/.test(n)).sort();
      pruned.push({ netns, ifindex: Number(m[1]), pins });
    }
    removeRecordDir(nsDir, bpfRoot);
  }
  return { pruned };
}
