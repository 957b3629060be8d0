/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The interface of bpf/ct_gc.bpf.c, the in-kernel GC re-check: its ctx (struct
 * ct_gc_args), its records area (struct ct_gc_area) and the per-record mode and status
 * values. This header is their single C source of truth: test/kernel/btf-layout.test.ts
 * compares the BTF it produces (through bpf/ctmap_layout.bpf.c) with the TS layouts in
 * src/maps/ctmap/gc/layout.ts, and the enums' values with DeleteMode and DeleteStatus in
 * src/maps/ctmap/gc/types.ts.
 */
#ifndef CTMAPD_CT_GC_H
#define CTMAPD_CT_GC_H

#include <linux/types.h>

#include "ctmap.h"

/*
 * Records per run. 4096 matches the daemon's scan batch; the area is then exactly 96 pages
 * (4096 * (38 + 1 + 1 + 56) bytes). Larger calls are split by the loader.
 */
#define CT_GC_MAX_RECS 4096

/*
 * ct_gc_area.mode[i] (DeleteMode) and ct_gc_area.status[i] (DeleteStatus). Enums rather
 * than #defines so that their values reach BTF, where the layout test reads them; the area
 * stores them as single bytes.
 */
enum ct_gc_mode {
	CT_GC_EXPIRED_BEFORE = 0,
	CT_GC_ALWAYS = 1,
};

enum ct_gc_status {
	CT_GC_DELETED = 0,
	CT_GC_MISSING = 1,
	CT_GC_REFRESHED = 2,
};

/*
 * The shared records area, as arrays rather than an array of records so that userspace
 * fills and drains it with one copy per field instead of one per record. Keys are packed
 * with a stride of the map's key size (14 or 38), exactly as GC candidates are collected.
 * values[i] is written only for DELETED records.
 */
struct ct_gc_area {
	__u8 keys[CT_GC_MAX_RECS * sizeof(struct ipv6_ct_tuple)];
	__u8 mode[CT_GC_MAX_RECS];
	__u8 status[CT_GC_MAX_RECS];
	struct ct_entry values[CT_GC_MAX_RECS];
};

/*
 * The ctx: the caller fills the first three fields, the program the rest. The kernel
 * copies the whole ctx back to the caller's buffer after the run.
 */
struct ct_gc_args {
	__u32 count;		/* records in the area, <= CT_GC_MAX_RECS */
	__u32 time;		/* EXPIRED_BEFORE threshold: keep when lifetime >= time */
	__u32 slot;		/* outer map slot that holds the target CT map */
	__u32 deleted;
	__u32 missing;
	__u32 refreshed;
	/* Deletes that failed with something other than ENOENT: reported REFRESHED (kept). */
	__u32 failed;
	__s32 first_err;	/* errno of the first such failure, negative; 0 if none */
};

_Static_assert(sizeof(struct ct_gc_area) == 96 * 4096, "ct_gc_area is 96 pages");
_Static_assert(__builtin_offsetof(struct ct_gc_area, values) % 8 == 0, "values aligned");
_Static_assert(sizeof(struct ct_gc_args) == 32, "ct_gc_args size");

#endif /* CTMAPD_CT_GC_H */
