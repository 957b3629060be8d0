/**
 * The number of possible CPUs, read the way libbpf's libbpf_num_possible_cpus() reads it
 * (/sys/devices/system/cpu/possible, e.g. "0-7" or "0,2-3": highest index + 1), for the
 * memory backend, which must not load libbpf. Per-CPU map values have one copy per
 * possible CPU, so both backends must agree on this number.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

const POSSIBLE = '/sys/devices/system/cpu/possible';

let cached: number | undefined;

/** Parses a sysfs CPU list ("0-3,5"); highest CPU index + 1, or undefined when malformed. */
export function cpuListCount(text: string): number | undefined {
  let max = -1;
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return undefined;
    max = Math.max(max, Number(m[2] ?? m[1]));
  }
  return max + 1;
}

/**
 * Possible CPUs of this machine (cached). Where sysfs is unreadable (not Linux, a
 * sandbox), the CPUs Node sees: there is no kernel to disagree with then.
 */
export function possibleCpus(): number {
  if (cached !== undefined) return cached;
  let n: number | undefined;
  try {
    n = cpuListCount(fs.readFileSync(POSSIBLE, 'latin1'));
  } catch {
    n = undefined;
  }
  cached = n ?? Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
  return cached;
}
