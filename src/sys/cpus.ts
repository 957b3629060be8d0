/**
 * The possible CPUs of this machine, with libbpf's meaning: libbpf_num_possible_cpus()
 * counts the CPUs listed in /sys/devices/system/cpu/possible ("0-7", "0-3,8-11"), which is
 * the kernel's num_possible_cpus(), the number of copies in a per-CPU map value. On a
 * sparse mask that count is less than the highest index + 1. No native code here: the
 * memory backend, which must load where libbpf cannot, uses the same numbers.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

const POSSIBLE = '/sys/devices/system/cpu/possible';

/** The CPU indexes of a sysfs CPU list ("0-3,8,10-11"), ascending; undefined when malformed. */
export function parseCpuList(text: string): number[] | undefined {
  const cpus: number[] = [];
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return undefined;
    const first = Number(m[1]);
    const last = Number(m[2] ?? m[1]);
    if (last < first) return undefined;
    for (let c = first; c <= last; c++) cpus.push(c);
  }
  return cpus.sort((a, b) => a - b);
}

let cached: readonly number[] | undefined;

/**
 * The possible CPUs' indexes (cached, as libbpf caches its count). Where sysfs is
 * unreadable (not Linux, a sandbox): 0..n-1 for the CPUs Node sees, since there is then
 * no kernel to disagree with.
 */
export function possibleCpuList(): readonly number[] {
  if (cached) return cached;
  let list: number[] | undefined;
  try {
    list = parseCpuList(fs.readFileSync(POSSIBLE, 'latin1'));
  } catch {
    list = undefined;
  }
  if (!list || list.length === 0) {
    const n = Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
    list = Array.from({ length: n }, (_, i) => i);
  }
  cached = Object.freeze(list);
  return cached;
}

/** libbpf_num_possible_cpus(): how many CPUs are possible (a per-CPU value's copies). */
export function possibleCpus(): number {
  return possibleCpuList().length;
}
