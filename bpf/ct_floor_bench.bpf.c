// SPDX-License-Identifier: GPL-2.0-only
/*
 * Bench-only floor for the repeat-creates method (bench/datapath.ts): ct_floor.bpf.c as it
 * is, plus ct_floor_bench_egress, which writes a per-run counter into a SYN's TCP source
 * port exactly as ct_bench_egress (ct_datapath_bench.bpf.c) does before the datapath, then
 * runs the floor. One test run of N repetitions then makes N floor creates back to back,
 * so the datapath's repeat-creates row has a floor measured the same way (issue 13 item 4:
 * "create <= floor + 150 ns" needs a like-for-like floor).
 */

#include "ct_floor.bpf.c"
#include "bench_port.h"

/* SYNs rewritten so far, across test runs (.bss, zero at load). */
static __u32 ct_floor_bench_seq;

SEC("tc")
int ct_floor_bench_egress(struct __sk_buff *skb)
{
	bench_port_write(skb, &ct_floor_bench_seq);
	return ct_floor_run(skb);
}
