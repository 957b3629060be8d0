/**
 * Where to write from, and how much, so that filling a fresh kernel LRU map keeps every
 * entry written. Measured on Linux 6.18 (2 possible CPUs), 14/56-byte entries, one
 * UPDATE_BATCH stream into an empty map (test/kernel/map-placement.test.ts repeats it):
 *
 * | map                                | written                 | kept                |
 * |------------------------------------|-------------------------|---------------------|
 * | LRU 32768, one CPU                 | 32768                   | 32768               |
 * | LRU 100000, one CPU                | 100000                  | 99904 (96 evicted)  |
 * | LRU 100000, one CPU                | 99873                   | 99873               |
 * | LRU 1 Mi, thread free to migrate   | 1 Mi                    | 1 Mi - 128 (1 run of 3) |
 * | LRU 32768 NO_COMMON_LRU, one CPU   | 32768                   | 16384               |
 *
 * Why (kernel/bpf/bpf_lru_list.c): a common LRU keeps its free nodes on a global list and
 * hands them to a CPU-local list LOCAL_FREE_TARGET (128) at a time. A refill that finds
 * fewer than 128 on the global list makes up the rest by evicting, even though free nodes
 * may sit on another CPU's local list. Writing from one CPU therefore keeps exactly
 * floor(max / 128) * 128 entries without an eviction; a thread that moves between CPUs
 * strands free nodes and can lose a refill's worth. (Newer kernels lower the target for
 * small maps on many CPUs: clamp(max / possible CPUs / 2, 1, 128); the plan takes the
 * smaller of both bounds.) A BPF_F_NO_COMMON_LRU map gives each possible CPU its own list
 * of max / possible entries and never lends them: it fills only from every CPU in turn.
 */
import * as bpf from '../../sys';
import { possibleCpuList, possibleCpus } from '../../sys/cpus';
import { FillShare, MapFlag, MapSpec, MapType } from '../types';

/** kernel/bpf/bpf_lru_list.h LOCAL_FREE_TARGET: nodes a CPU takes from the global free list at once. */
export const LOCAL_FREE_TARGET = 128;

/** max_entries the kernel reports for `spec` (htab_map_alloc rounds per-CPU LRU maps). */
export function effectiveMaxEntries(spec: MapSpec): number {
  if (spec.type !== MapType.LRU_HASH || !(spec.flags & MapFlag.NO_COMMON_LRU)) return spec.maxEntries;
  const cpus = possibleCpus();
  const up = Math.ceil(spec.maxEntries / cpus) * cpus;
  // The kernel rounds down instead when rounding up would overflow u32.
  return up > 0xffffffff ? Math.floor(spec.maxEntries / cpus) * cpus : up;
}

/**
 * The fill plan of a fresh map (see the module comment): common LRU, one CPU and a
 * multiple of the refill size; per-CPU LRU, each CPU this thread may use, its share each;
 * anything else, max_entries from anywhere.
 */
export function fillPlan(spec: MapSpec): FillShare[] {
  if (spec.type !== MapType.LRU_HASH) return [{ limit: spec.maxEntries }];
  const cpus = possibleCpus();
  const possible = new Set(possibleCpuList());
  const usable = bpf.threadAffinity().filter((c) => possible.has(c));
  if (spec.flags & MapFlag.NO_COMMON_LRU) {
    const share = Math.floor(effectiveMaxEntries(spec) / cpus);
    return usable.map((cpu) => ({ cpu, limit: share }));
  }
  const max = spec.maxEntries;
  const newTarget = Math.min(LOCAL_FREE_TARGET, Math.max(1, Math.floor(Math.floor(max / cpus) / 2)));
  const limit = Math.min(Math.floor(max / LOCAL_FREE_TARGET) * LOCAL_FREE_TARGET, Math.floor(max / newTarget) * newTarget);
  return [{ cpu: usable[0], limit }];
}

/** Restricts the JS thread to `cpu` until the returned function restores its previous CPUs. */
export function onCpu(cpu: number | undefined): () => void {
  if (cpu === undefined) return () => undefined;
  const before = bpf.threadAffinity();
  bpf.setThreadAffinity([cpu]);
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    bpf.setThreadAffinity(before);
  };
}
