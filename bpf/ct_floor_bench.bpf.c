// SPDX-License-Identifier: GPL-2.0-only
/*
 * Bench-only floor for the repeat-creates method (bench/datapath.ts): ct_floor.bpf.c as it
 * is, plus ct_floor_bench_egress, which writes a per-run counter into a SYN's TCP source
 * port exactly as ct_bench_egress (ct_datapath_bench.bpf.c) does before the datapath, then
 * runs the floor. One test run of N repetitions then makes N floor creates back to back,
 * so the datapath's repeat-creates row has a floor measured the same way (issue 13 item 4:
 * "create <= floor + 150 ns" needs a like-for-like floor).
 */
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

#include "ct_floor.bpf.c"

/* SYNs rewritten so far, across test runs (.bss, zero at load). */
static __u32 ct_floor_bench_seq;

SEC("tc")
int ct_floor_bench_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 *tcp = data + ETH_HLEN + sizeof(*ip);
	__be16 port;

	if ((void *)(tcp + 14) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->ihl == 5 &&
	    ip->protocol == IPPROTO_TCP) {
		port = (tcp[13] & 0x02) ? bpf_htons((__u16)ct_floor_bench_seq++) : *(__be16 *)tcp;
		barrier_var(port);
		*(__be16 *)tcp = port;
	}
	return ct_floor_run(skb);
}
