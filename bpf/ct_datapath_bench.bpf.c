// SPDX-License-Identifier: GPL-2.0-only
/*
 * Bench-only build of the datapath (bpf/.output/ct_datapath_bench.bpf.o, used by
 * bench/datapath.ts, loaded by the daemon's loader like the production object):
 * ct_datapath.bpf.c as it is, plus ct_bench_egress, which writes the TCP source port in
 * the packet and then runs ct_egress's path (ct_handle):
 *
 * - a SYN gets a per-run counter as its port. BPF_PROG_TEST_RUN's repeat loop runs the
 *   program again and again on one skb and keeps its writes, so every repetition of a SYN
 *   is a new flow: creates measured back to back, as a busy NIC queue delivers them,
 *   rather than one syscall per packet. Within 65,536 consecutive runs the ports differ;
 *   the bench changes the source address between test runs.
 * - any other packet gets its own port back, so an ACK stays on its flow: beside ct_egress
 *   on the same packet it shows what the write itself costs.
 *
 * Only IPv4 TCP with a 20-byte IP header is rewritten (the bench's frames); any other
 * packet reaches ct_handle as it is. Nothing here goes to .rodata: the loader writes the
 * object's .rodata as exactly one struct ct_datapath_config.
 */
#include "ct_datapath.bpf.c"
#include "bench_port.h"

/* SYNs rewritten so far, across test runs (.bss, zero at load). */
static __u32 ct_bench_seq;

SEC("tc")
int ct_bench_egress(struct __sk_buff *skb)
{
	bench_port_write(skb, &ct_bench_seq);
	return ct_handle(skb, CT_EGRESS);
}
