/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Byte layouts of the Cilium CT and NAT maps (ctmap-facts §1-4). This header is the
 * single C source of truth: the BPF objects in bpf/ and the C bench in bench/c include
 * it, and test/kernel/btf-layout.test.ts compares the BTF it produces with the TS
 * layouts in src/maps/ctmap/layout.ts and src/maps/nat/layout.ts.
 *
 * Only <linux/types.h> is included so that the header builds for -target bpf and for
 * the host compiler alike.
 */
#ifndef CTMAPD_CTMAP_H
#define CTMAPD_CTMAP_H

#include <linux/types.h>

/* Key byte `flags` (facts §2). OUT is 0, so it is a value, not a bit. */
#define TUPLE_F_OUT	0
#define TUPLE_F_IN	1
#define TUPLE_F_RELATED	2
#define TUPLE_F_SERVICE	4

/* ct_entry.flags bits, same order as the bitfields below (facts §3). */
#define CT_F_RX_CLOSING		(1 << 0)
#define CT_F_TX_CLOSING		(1 << 1)
#define CT_F_NAT64		(1 << 2)
#define CT_F_LB_LOOPBACK	(1 << 3)
#define CT_F_SEEN_NON_SYN	(1 << 4)
#define CT_F_NODE_PORT		(1 << 5)
#define CT_F_PROXY_REDIRECT	(1 << 6)
#define CT_F_DSR_INTERNAL	(1 << 7)
#define CT_F_FROM_L7LB		(1 << 8)
#define CT_F_RESERVED1		(1 << 9)
#define CT_F_FROM_TUNNEL	(1 << 10)

union v6addr {
	__u8 addr[16];
	__be32 p32[4];
};

/*
 * Keys are packed: the kernel hashes key_size bytes, so implicit padding would both
 * change the size userspace must pass and leave uninitialised bytes in the hash.
 * Addresses are stored swapped relative to the packet, ports are not (Cilium #5848).
 */
struct ipv4_ct_tuple {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));

struct ipv6_ct_tuple {
	union v6addr daddr;
	union v6addr saddr;
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));

/*
 * The first 16 bytes mean different things for egress and service entries. Naming the
 * union (instead of Cilium's anonymous one) gives BTF a member `union0` to check.
 */
union ct_entry_union0 {
	union {
		__be32 v4;
		union v6addr v6;
	} nat_addr;
	struct {
		__u64 reserved;
		__u64 backend_id;
	};
};

struct ct_entry {
	union ct_entry_union0 union0;
	__u64 packets;
	__u64 bytes;
	__u32 lifetime;		/* absolute expiry, CLOCK_MONOTONIC seconds */
	/*
	 * The datapath flips single bits, userspace reads the whole word: the anonymous
	 * union gives both views, and BTF a member `flags` at the word's offset.
	 * Bitfields are allocated from bit 0 on little-endian targets, matching CT_F_*.
	 */
	union {
		__u16 flags;
		struct {
			__u16 rx_closing:1,
			      tx_closing:1,
			      nat64:1,
			      lb_loopback:1,
			      seen_non_syn:1,
			      node_port:1,
			      proxy_redirect:1,
			      dsr_internal:1,
			      from_l7lb:1,
			      reserved1:1,
			      from_tunnel:1,
			      reserved:5;
		};
	};
	__be16 rev_nat_index;
	__be16 nat_port;
	__u8 tx_flags_seen;
	__u8 rx_flags_seen;
	__u32 src_sec_id;
	__u32 last_tx_report;
	__u32 last_rx_report;
};

/* NAT values (facts §4). Padding is spelled out so no byte is left uninitialised. */
struct ipv4_nat_entry {
	__u64 created;
	__u64 needs_ct;
	__u64 pad1;
	__u64 pad2;
	__be32 to_saddr;
	__be16 to_sport;
	__u16 pad3;
};

struct ipv6_nat_entry {
	__u64 created;
	__u64 needs_ct;
	__u64 pad1;
	__u64 pad2;
	union v6addr to_saddr;
	__be16 to_sport;
	__u16 pad3;
	__u32 pad4;
};

/*
 * Per-CPU state of a program that writes into the ring, kept inside its per-CPU counters
 * (struct ct_datapath_stats.events), so that emitting costs no map lookup of its own. Here
 * rather than in ct_events.h (whose helpers use it) because the stats struct embeds it.
 * `lost - lost_reported` is what the next record from this CPU carries in hdr.lost.
 */
struct ct_events_cpu {
	__u64 sent;		/* records submitted */
	__u64 lost;		/* reserves that failed (ring full): records that never existed */
	__u64 lost_reported;	/* of those, carried in a record's hdr.lost */
};

/*
 * Per-CPU counters of bpf/ct_datapath.bpf.c (map ctmapd_ct_stats, one slot). All u64 so
 * userspace can sum the CPUs' copies field by field.
 */
struct ct_datapath_stats {
	__u64 packets;		/* packets the programs ran on */
	__u64 lookups;		/* CT map lookups (reverse and forward count apart) */
	__u64 hits_reply;	/* found in the reverse direction */
	__u64 hits_related;	/* ICMP errors matched to the flow they quote */
	__u64 hits_established;	/* found in the forward direction */
	__u64 creates;		/* new flows inserted */
	__u64 create_failed;	/* LRU insertions the kernel refused (flow not tracked) */
	__u64 closes;		/* RST/FIN seen on a tracked flow */
	__u64 reopens;		/* SYN on a closing entry */
	__u64 related_misses;	/* ICMP errors quoting no tracked flow: nothing created */
	__u64 skipped;		/* not IP, other L4 protocol, or a non-first fragment */
	__u64 malformed;	/* headers shorter than they claim */
	__u64 cluster_map_missing; /* cluster id with no inner map (not joined): untracked */
	/*
	 * Issue 13. Flow entries inserted, by map kind and family (per-cluster maps counted
	 * with their kind): the fill-up pressure counters (struct ct_pressure_config).
	 */
	__u64 creates_tcp4;
	__u64 creates_any4;
	__u64 creates_tcp6;
	__u64 creates_any6;
	__u64 fill_up_signals;	/* FILL_UP records submitted (either reason) */
	/* The ring's per-CPU state: records sent, lost (ring full) and losses carried in-band. */
	struct ct_events_cpu events;
};

/*
 * Load-time settings of bpf/ct_datapath.bpf.c, its only .rodata variable
 * (`ctmapd_config`). The loader (src/datapath/) writes it before load from ctmapd's
 * flags (facts §5), as libbpf-bootstrap does with `const volatile` globals. One struct,
 * so that userspace writes it by layout (checked against BTF) rather than resolving
 * symbols one by one.
 */
struct ct_datapath_config {
	__u32 lifetime_tcp;	/* CT_CONNECTION_LIFETIME_TCP: --bpf-ct-timeout-regular-tcp */
	__u32 lifetime_nontcp;	/* CT_CONNECTION_LIFETIME_NONTCP: --bpf-ct-timeout-regular-any */
	__u32 syn_timeout;	/* CT_SYN_TIMEOUT: --bpf-ct-timeout-regular-tcp-syn */
	__u32 close_timeout;	/* CT_CLOSE_TIMEOUT: --bpf-ct-timeout-regular-tcp-fin */
	__u32 report_interval;	/* CT_REPORT_INTERVAL: --monitor-aggregation-interval */
	__u32 cluster_id;	/* 0: the global maps, unless skb->mark carries a cluster id */
	__u8 report_flags;	/* TCP flags recorded in {rx,tx}_flags_seen (Cilium: all) */
	__u8 enable_ipv4;	/* 0: IPv4 packets pass untracked (the daemon has no v4 maps) */
	__u8 enable_ipv6;	/* 0: likewise for IPv6 */
	__u8 events;		/* enum ct_events_mode (ct_events.h): --ct-events */
	__u32 cluster_id_max;	/* ClusterIDMax: --max-connected-clusters, 255 or 511 */
};

/*
 * Cluster id carried in skb->mark, Cilium's encoding (bpf/lib/clustermesh.h
 * ctx_get_cluster_id_mark, MARK_MAGIC_CLUSTER_ID in bpf/lib/common.h):
 *
 *   bits 8-11  the magic nibble: (mark & MARK_MAGIC_HOST_MASK) == MARK_MAGIC_CLUSTER_ID
 *   bits 0-7   cluster id bits 0-7
 *   bit  31    cluster id bit 8, only with ClusterIDMax 511
 *
 * Cilium puts the id bits above 7 at 8 + IDENTITY_LOCAL_BITS, where the local identity
 * has 24 - cluster_id_bits bits: 16 for ClusterIDMax 255 (no upper bits: the mark's upper
 * half is identity) and 15 for 511 (bit 8 of the id lands on bit 8 + 15 + 8 = 31).
 * Cluster id 0 (or no magic) means the global maps.
 */
#define MARK_MAGIC_HOST_MASK	0x0F00
#define MARK_MAGIC_CLUSTER_ID	0x0200
#define CLUSTER_ID_LOWER_MASK	0x00FF

_Static_assert(sizeof(union v6addr) == 16, "v6addr size");
_Static_assert(sizeof(struct ipv4_ct_tuple) == 14, "ipv4_ct_tuple size");
_Static_assert(sizeof(struct ipv6_ct_tuple) == 38, "ipv6_ct_tuple size");
_Static_assert(sizeof(union ct_entry_union0) == 16, "ct_entry union0 size");
_Static_assert(sizeof(struct ct_entry) == 56, "ct_entry size");
_Static_assert(__builtin_offsetof(struct ct_entry, flags) == 36, "ct_entry flags offset");
_Static_assert(sizeof(struct ipv4_nat_entry) == 40, "ipv4_nat_entry size");
_Static_assert(sizeof(struct ipv6_nat_entry) == 56, "ipv6_nat_entry size");
_Static_assert(sizeof(struct ct_events_cpu) == 24, "ct_events_cpu size");
_Static_assert(sizeof(struct ct_datapath_stats) == 168, "ct_datapath_stats size");
_Static_assert(sizeof(struct ct_datapath_config) == 32, "ct_datapath_config size");
_Static_assert(__builtin_offsetof(struct ct_datapath_stats, cluster_map_missing) == 96, "stats: new counters go last");
_Static_assert(__builtin_offsetof(struct ct_datapath_stats, events) == 144, "stats: the ring state goes last");
_Static_assert(__builtin_offsetof(struct ct_datapath_config, cluster_id_max) == 28, "config: cluster_id_max offset");

#endif /* CTMAPD_CTMAP_H */
