/**
 * The CT clock: the seconds the datapath writes into ct_entry.lifetime (bpf_ktime_get_ns()
 * / 1e9, CLOCK_MONOTONIC), read the same way here so that GC and formatting compare with
 * what the kernel wrote.
 */

/** CT clock: CLOCK_MONOTONIC seconds, the clock bpf_ktime_get_ns() reads. */
export function ctNow(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}
