// SPDX-License-Identifier: GPL-2.0-only
/*
 * Bench floor (bench/datapath.ts): the least any datapath with Cilium's lookup order has
 * to do for an IPv4 TCP packet on a map like cilium_ct4_global: look the reverse tuple up,
 * then the forward one, and insert the forward tuple when both miss. No parsing beyond
 * fixed offsets (Ethernet + 20-byte IPv4 header), no entry update, accounting, clock,
 * RELATED entry or counters. It is not a datapath: its ns/packet, beside ct_datapath's,
 * shows how much of a hit or a create is the kernel's hash map and LRU work.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ctmap.h"

/* Sized by the bench like the daemon's TCP map before load. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
} ct_floor_ct4 SEC(".maps");

/* The floor's work, shared with the bench build's repeat-creates variant (ct_floor_bench.bpf.c). */
static __always_inline int ct_floor_run(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv4_ct_tuple t = {};
	struct ct_entry e = {};

	if (data + 14 + 20 + 4 > data_end)
		return TC_ACT_OK;
	/* The reverse tuple first, as ct_datapath builds it: packet addresses, ports as read. */
	t.daddr = *(__be32 *)(data + 14 + 16);
	t.saddr = *(__be32 *)(data + 14 + 12);
	t.dport = *(__be16 *)(data + 14 + 20);
	t.sport = *(__be16 *)(data + 14 + 22);
	t.nexthdr = 6;
	t.flags = TUPLE_F_IN;
	if (bpf_map_lookup_elem(&ct_floor_ct4, &t))
		return TC_ACT_OK;
	/* The forward tuple: addresses swapped, ports not (facts §2). */
	t.daddr = *(__be32 *)(data + 14 + 12);
	t.saddr = *(__be32 *)(data + 14 + 16);
	t.dport = *(__be16 *)(data + 14 + 22);
	t.sport = *(__be16 *)(data + 14 + 20);
	t.flags = TUPLE_F_OUT;
	if (bpf_map_lookup_elem(&ct_floor_ct4, &t))
		return TC_ACT_OK;
	e.lifetime = 1;
	bpf_map_update_elem(&ct_floor_ct4, &t, &e, BPF_ANY);
	return TC_ACT_OK;
}

SEC("tc")
int ct_floor(struct __sk_buff *skb)
{
	return ct_floor_run(skb);
}

char LICENSE[] SEC("license") = "GPL";
