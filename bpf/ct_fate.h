/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Counters of bpf/ct_fate.bpf.c, socket fate-sharing (issue 13 item 1, seed 001): the
 * per-CPU value of map ctmapd_fate_stats, which the daemon creates and pins under
 * <bpf-root>/tc/globals next to ctmapd_ct_stats (src/datapath/side-maps.ts), so every
 * loaded fate program counts into the one map ActiveMaps and the metrics read. All u64, so
 * userspace sums the CPUs' copies field by field. Checked against BTF like ctmap.h's
 * (test/kernel/btf-layout.test.ts; TS layout CT_FATE_STATS in src/maps/ctmap/layout.ts).
 */
#ifndef CTMAPD_CT_FATE_H
#define CTMAPD_CT_FATE_H

#include <linux/types.h>

struct ct_fate_stats {
	__u64 keys_recorded;	/* sockets whose CT keys were recorded in socket storage */
	__u64 expired;		/* CT entries expired at their socket's close */
	__u64 storage_full;	/* bpf_sk_storage_get(F_CREATE) failed: that socket is not covered */
	__u64 key_missing;	/* a socket closed and none of its flow's entries was present any more */
	__u64 events_lost;	/* CLOSE records the ring could not take (mode all) */
};

_Static_assert(sizeof(struct ct_fate_stats) == 40, "ct_fate_stats size");

#endif /* CTMAPD_CT_FATE_H */
