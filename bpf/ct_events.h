/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The datapath's channel to the daemon (issue 13, seed 001): one BPF ring buffer per
 * node, `ctmapd_ct_events`, created and pinned by the daemon under <bpf-root>/tc/globals
 * and reused by every program that writes into it (bpf/ct_datapath.bpf.c,
 * bpf/ct_fate.bpf.c). Records, all starting with struct ct_event_header:
 *
 * - CT_EVENT_FILL_UP (header only): Cilium's SIGNAL_CT_FILL_UP. An insert into a CT map
 *   failed (CT_REASON_INSERT_FAILED), or the entries created since the daemon's last GC
 *   pass of the family reached the configured share of the map (CT_REASON_PRESSURE; an LRU
 *   evicts rather than fails, so failures alone say nothing). Sent in modes SIGNALS and ALL.
 * - CT_EVENT_NEW / CT_EVENT_CLOSE (struct ct_event): an entry created, or closing (first
 *   FIN or an RST seen by the datapath, or expired at its socket's close by fate-sharing),
 *   with the entry's key and value as written. Sent in mode ALL only.
 *
 * No loss is silent: a program that cannot reserve a record counts it on its CPU, and the
 * next record it does write from that CPU carries the count in `lost` (and the stats map
 * counts every loss too).
 *
 * The emit helpers below (ct_event_*) take the ring map and the CPU's struct ct_events_cpu,
 * so every program writes records the same way.
 *
 * The layout is checked against BTF like ctmap.h's (test/kernel/btf-layout.test.ts) and
 * decoded in userspace by src/datapath/ (the ring reader).
 */
#ifndef CTMAPD_CT_EVENTS_H
#define CTMAPD_CT_EVENTS_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ctmap.h"

/* Pin name of the ring buffer, and the programs' map name. */
#define CT_EVENTS_MAP ctmapd_ct_events

/* --ct-events: what the programs send (struct ct_datapath_config.events). */
enum ct_events_mode {
	CT_EVENTS_NONE = 0,	/* nothing: the ring is never touched */
	CT_EVENTS_SIGNALS = 1,	/* fill-up signals only (default) */
	CT_EVENTS_ALL = 2,	/* signals, NEW and CLOSE */
};

enum ct_event_type {
	CT_EVENT_FILL_UP = 1,
	CT_EVENT_NEW = 2,
	CT_EVENT_CLOSE = 3,
};

enum ct_event_reason {
	CT_REASON_NONE = 0,
	CT_REASON_INSERT_FAILED = 1,	/* FILL_UP: the kernel refused a CT insert */
	CT_REASON_PRESSURE = 2,		/* FILL_UP: creates since the last pass reached the share */
	CT_REASON_CREATED = 3,		/* NEW */
	CT_REASON_FIN = 4,		/* CLOSE: the flow's first FIN */
	CT_REASON_RST = 5,		/* CLOSE: an RST */
	CT_REASON_SOCKET_CLOSE = 6,	/* CLOSE: fate-sharing expired it at its socket's close */
};

/* Which map of the family the record is about. */
enum ct_event_map {
	CT_EVENT_MAP_TCP = 0,
	CT_EVENT_MAP_ANY = 1,
};

struct ct_event_header {
	__u8 type;		/* enum ct_event_type */
	__u8 family;		/* 4 or 6 */
	__u8 map;		/* enum ct_event_map (FILL_UP: the map that filled) */
	__u8 reason;		/* enum ct_event_reason */
	__u32 cluster_id;	/* 0: the global maps; else that cluster's inner map */
	__u32 lost;		/* records this program could not reserve on this CPU since its last one */
	__u32 now;		/* CT clock seconds when written */
};

/* NEW and CLOSE: the key as the map holds it (v4 in the first 14 bytes), and the value. */
struct ct_event {
	struct ct_event_header hdr;
	union {
		struct ipv4_ct_tuple v4;
		struct ipv6_ct_tuple v6;
		__u8 raw[40];
	} key;
	struct ct_entry entry;
};

/*
 * Fill-up pressure steps (map ctmapd_ct_pressure, ARRAY, one slot), written by the daemon
 * (src/datapath/side-maps.ts) from --ct-fill-up-share, the CT map sizes and the CPU count.
 * A program signals CT_REASON_PRESSURE when its CPU's creates_<map> counter (struct
 * ct_datapath_stats) reaches a multiple of the step (step_mask + 1, a power of two >= 2):
 * once per step, so a flood writes at most one signal per step and CPU. The daemon then
 * sums every CPU's counter, subtracts what it read at the end of the family's last GC pass
 * and asks for an early pass when the difference reached the share. 0: no signals.
 */
struct ct_pressure_config {
	__u32 step_mask_tcp4;
	__u32 step_mask_any4;
	__u32 step_mask_tcp6;
	__u32 step_mask_any6;
};

/*
 * Wakeups: every record is submitted with BPF_RB_NO_WAKEUP (waking the reader per record
 * was 22x slower, the kernel's adaptive wakeup 1.7-5x slower: issue 13), except a FILL_UP
 * signal (rare and urgent) and every CT_EVENTS_WAKEUP_EVERY-th record of a CPU, which force
 * one. The tail of a burst is picked up by the reader's bounded epoll timeout
 * (src/datapath/ring-reader.ts).
 */
#define CT_EVENTS_WAKEUP_EVERY 2048

/*
 * A record of `size` bytes in `ring`, or NULL when the ring is full: the loss is counted
 * on this CPU and reported by its next record. `ring` must be the ring map itself (the
 * helpers are inlined, so the verifier sees the map).
 */
static __always_inline void *ct_event_reserve(void *ring, struct ct_events_cpu *cpu, __u32 size)
{
	void *rec = bpf_ringbuf_reserve(ring, size, 0);

	if (!rec)
		cpu->lost++;
	return rec;
}

/*
 * Submits a record reserved with ct_event_reserve, carrying this CPU's unreported losses
 * in hdr->lost (saturated at 2^32-1: the stats counters keep the exact total). `urgent`
 * forces a wakeup.
 */
static __always_inline void ct_event_submit(struct ct_event_header *hdr, struct ct_events_cpu *cpu, bool urgent)
{
	__u64 lost = cpu->lost - cpu->lost_reported;

	hdr->lost = lost > 0xffffffffULL ? 0xffffffffU : (__u32)lost;
	cpu->lost_reported = cpu->lost;
	cpu->sent++;
	bpf_ringbuf_submit(hdr, urgent || !(cpu->sent & (CT_EVENTS_WAKEUP_EVERY - 1)) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Writes the header fields every record has (not `lost`: ct_event_submit sets it). */
static __always_inline void ct_event_header_fill(struct ct_event_header *hdr, __u8 type, __u8 family, __u8 map, __u8 reason,
						 __u32 cluster_id, __u32 now)
{
	hdr->type = type;
	hdr->family = family;
	hdr->map = map;
	hdr->reason = reason;
	hdr->cluster_id = cluster_id;
	hdr->now = now;
}

/* A FILL_UP signal (header only): urgent, so the scheduler hears of it at once. */
static __always_inline void ct_event_fill_up(void *ring, struct ct_events_cpu *cpu, __u8 family, __u8 map, __u8 reason,
					     __u32 cluster_id, __u32 now)
{
	struct ct_event_header *hdr = ct_event_reserve(ring, cpu, sizeof(*hdr));

	if (!hdr)
		return;
	ct_event_header_fill(hdr, CT_EVENT_FILL_UP, family, map, reason, cluster_id, now);
	ct_event_submit(hdr, cpu, true);
}

/*
 * A NEW or CLOSE record of an entry: its key (`v6`: 38 bytes, else 14; the rest of the key
 * field zeroed, ring memory is not) and value as they are now.
 */
static __always_inline void ct_event_entry(void *ring, struct ct_events_cpu *cpu, __u8 type, __u8 reason, bool v6, __u8 map,
					   __u32 cluster_id, __u32 now, const void *key, const struct ct_entry *entry)
{
	struct ct_event *ev = ct_event_reserve(ring, cpu, sizeof(*ev));

	if (!ev)
		return;
	ct_event_header_fill(&ev->hdr, type, v6 ? 6 : 4, map, reason, cluster_id, now);
	if (v6) {
		__builtin_memcpy(ev->key.raw, key, sizeof(struct ipv6_ct_tuple));
		__builtin_memset(ev->key.raw + sizeof(struct ipv6_ct_tuple), 0, sizeof(ev->key) - sizeof(struct ipv6_ct_tuple));
	} else {
		__builtin_memcpy(ev->key.raw, key, sizeof(struct ipv4_ct_tuple));
		__builtin_memset(ev->key.raw + sizeof(struct ipv4_ct_tuple), 0, sizeof(ev->key) - sizeof(struct ipv4_ct_tuple));
	}
	__builtin_memcpy(&ev->entry, entry, sizeof(*entry));
	ct_event_submit(&ev->hdr, cpu, false);
}

_Static_assert(sizeof(struct ct_event_header) == 16, "ct_event_header size");
_Static_assert(sizeof(struct ct_pressure_config) == 16, "ct_pressure_config size");
_Static_assert(sizeof(struct ct_event) == 112, "ct_event size");
_Static_assert(__builtin_offsetof(struct ct_event, entry) == 56, "ct_event entry offset");

#endif /* CTMAPD_CT_EVENTS_H */
