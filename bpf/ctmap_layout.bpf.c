// SPDX-License-Identifier: GPL-2.0-only
/*
 * Layout carrier: its only job is to put the structs (and enums) of bpf/'s headers into
 * BTF, the CT and NAT layouts of ctmap.h and the ct_gc program's interface of ct_gc.h,
 * through the definitions below (ct_fate.h's counters, and the datapath's ring records and
 * fill-up steps of ct_events.h), so the layout test (test/kernel/btf-layout.test.ts) can
 * read them back. The no-op program makes it a loadable object, the empty-program
 * baseline for later benches. The real programs live elsewhere.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "ctmap.h"
#include "ct_gc.h"
#include "ct_fate.h"
#include "ct_events.h"

/* Placeholder size: the daemon creates the real maps with their configured sizes. */
#define LAYOUT_MAX_ENTRIES 1024

#define CT_LRU_MAP(_name, _key, _value)			\
	struct {						\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);		\
		__uint(max_entries, LAYOUT_MAX_ENTRIES);	\
		__type(key, _key);				\
		__type(value, _value);				\
	} _name SEC(".maps")

CT_LRU_MAP(cilium_ct4_global, struct ipv4_ct_tuple, struct ct_entry);
CT_LRU_MAP(cilium_ct_any4_global, struct ipv4_ct_tuple, struct ct_entry);
CT_LRU_MAP(cilium_ct6_global, struct ipv6_ct_tuple, struct ct_entry);
CT_LRU_MAP(cilium_ct_any6_global, struct ipv6_ct_tuple, struct ct_entry);
CT_LRU_MAP(cilium_snat_v4_external, struct ipv4_ct_tuple, struct ipv4_nat_entry);
CT_LRU_MAP(cilium_snat_v6_external, struct ipv6_ct_tuple, struct ipv6_nat_entry);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_datapath_stats);
} ctmapd_ct_stats SEC(".maps");

/*
 * Types only reach BTF through a use; these have none here otherwise. The 96-page GC area
 * through a pointer: BTF still gets its full definition, the object no room for it.
 */
struct ct_datapath_config ctmap_layout_config SEC(".data.layout");
struct ct_fate_stats ctmap_layout_fate_stats SEC(".data.layout");
struct ct_gc_args ctmap_layout_gc_args SEC(".data.layout");
struct ct_gc_area *ctmap_layout_gc_area SEC(".data.layout");
enum ct_gc_mode ctmap_layout_gc_mode SEC(".data.layout");
enum ct_gc_status ctmap_layout_gc_status SEC(".data.layout");
struct ct_event ctmap_layout_event SEC(".data.layout");
struct ct_pressure_config ctmap_layout_pressure SEC(".data.layout");
enum ct_events_mode ctmap_layout_events_mode SEC(".data.layout");
enum ct_event_type ctmap_layout_event_type SEC(".data.layout");
enum ct_event_reason ctmap_layout_event_reason SEC(".data.layout");
enum ct_event_map ctmap_layout_event_map SEC(".data.layout");

SEC("tc")
int ctmap_layout_noop(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
