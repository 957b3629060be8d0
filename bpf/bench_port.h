/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The bench builds' packet write (ct_datapath_bench.bpf.c, ct_floor_bench.bpf.c), one
 * copy so that the datapath's repeat-creates row and its floor pay exactly the same:
 * BPF_PROG_TEST_RUN's repeat loop keeps a program's writes, so giving every SYN a per-run
 * counter as its TCP source port makes each repetition a new flow; any other packet gets
 * its own port back, so an ACK stays on its flow. Only IPv4 TCP with a 20-byte IP header
 * (the bench's frames) is rewritten.
 */
#ifndef CTMAPD_BENCH_PORT_H
#define CTMAPD_BENCH_PORT_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

static __always_inline void bench_port_write(struct __sk_buff *skb, __u32 *seq)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 *tcp = data + ETH_HLEN + sizeof(*ip);
	__be16 port;

	if ((void *)(tcp + 14) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP) && ip->ihl == 5 &&
	    ip->protocol == IPPROTO_TCP) {
		/* 0x02: the SYN bit of the TCP flags byte. */
		port = (tcp[13] & 0x02) ? bpf_htons((__u16)(*seq)++) : *(__be16 *)tcp;
		/* So that writing back an unchanged port is not optimised away. */
		barrier_var(port);
		*(__be16 *)tcp = port;
	}
}

#endif /* CTMAPD_BENCH_PORT_H */
