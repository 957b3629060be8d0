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
 * The layout is checked against BTF like ctmap.h's (test/kernel/btf-layout.test.ts) and
 * decoded in userspace by src/datapath/ (the ring reader).
 */
#ifndef CTMAPD_CT_EVENTS_H
#define CTMAPD_CT_EVENTS_H

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

_Static_assert(sizeof(struct ct_event_header) == 16, "ct_event_header size");
_Static_assert(sizeof(struct ct_event) == 112, "ct_event size");
_Static_assert(__builtin_offsetof(struct ct_event, entry) == 56, "ct_event entry offset");

#endif /* CTMAPD_CT_EVENTS_H */
