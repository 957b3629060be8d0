/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The daemon's CT maps as every program that works on them declares them
 * (bpf/ct_datapath.bpf.c, bpf/ct_fate.bpf.c): the four global maps and the four
 * per-cluster outer maps, all reused from the daemon's pins by the loaders
 * (src/datapath/loader.ts reuseDaemonCtMaps). Included once per program object.
 */
#ifndef CTMAPD_CT_MAPS_H
#define CTMAPD_CT_MAPS_H

#include "ctmap.h"

/*
 * No `pinning` attribute: the maps live under <bpffs>/tc/globals/ where the daemon pins
 * them, and the loader hands them in with bpf_map__reuse_fd. With LIBBPF_PIN_BY_NAME,
 * libbpf would pin a map it did not find at its own default path instead.
 * The sizes are placeholders; a reused map keeps its own.
 */
#define CT_MAP(_name, _key, _max)				\
	struct {						\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);		\
		__uint(max_entries, _max);			\
		__type(key, _key);				\
		__type(value, struct ct_entry);			\
	} _name SEC(".maps")

CT_MAP(cilium_ct4_global, struct ipv4_ct_tuple, 524288);
CT_MAP(cilium_ct_any4_global, struct ipv4_ct_tuple, 262144);
CT_MAP(cilium_ct6_global, struct ipv6_ct_tuple, 524288);
CT_MAP(cilium_ct_any6_global, struct ipv6_ct_tuple, 262144);

/*
 * Per-cluster CT maps (Cilium's per_cluster_ct maps): an ARRAY_OF_MAPS per
 * global map, indexed by cluster id, whose slots hold a joined cluster's inner map. The
 * template is the global map's type, key and value: map-in-map checks type, sizes and
 * flags, never max_entries, so the template stays one entry. Reused from the daemon's pins
 * like the global maps; when none is pinned the loader shrinks the outer map to one empty
 * slot, and every cluster id then finds no inner map.
 */
#define CT_INNER_MAP(_key)					\
	struct {						\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);		\
		__uint(max_entries, 1);				\
		__type(key, _key);				\
		__type(value, struct ct_entry);			\
	}

#define CT_OUTER_MAP(_name, _key)				\
	struct {						\
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);	\
		__uint(max_entries, 256);			\
		__type(key, __u32);				\
		__array(values, CT_INNER_MAP(_key));		\
	} _name SEC(".maps")

CT_OUTER_MAP(cilium_per_cluster_ct_tcp4, struct ipv4_ct_tuple);
CT_OUTER_MAP(cilium_per_cluster_ct_any4, struct ipv4_ct_tuple);
CT_OUTER_MAP(cilium_per_cluster_ct_tcp6, struct ipv6_ct_tuple);
CT_OUTER_MAP(cilium_per_cluster_ct_any6, struct ipv6_ct_tuple);

#endif /* CTMAPD_CT_MAPS_H */
