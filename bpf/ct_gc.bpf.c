// SPDX-License-Identifier: GPL-2.0-only
/*
 * In-kernel GC re-check ("compare and delete"): for each GC candidate, look the entry up,
 * keep it if the datapath refreshed it since userspace scanned it, else copy it out and
 * delete it, all inside one BPF_PROG_TEST_RUN call per batch. Cilium deletes one entry
 * per syscall from values it read earlier, so a flow refreshed between the read and the
 * delete is lost (ctmap-facts §6 "known weaknesses", Cilium #46298, #5048). Here the window
 * between check and delete is a few instructions on one CPU instead of a syscall round
 * trip, and the syscall cost is paid once per batch.
 *
 * Why the records are not in the ctx (what the kernel refuses, checked on 6.18):
 * - BPF_PROG_TYPE_SYSCALL takes at most U16_MAX bytes of ctx and copies results back into
 *   ctx_in (ctx_out is EINVAL);
 * - the verifier allows only constant offsets into the ctx ("variable ctx access ...
 *   disallowed"), and no helper accepts the ctx as a memory argument
 *   (bpf_dynptr_from_mem: "R1 type=ctx expected=fp, ..."), so a loop over records stored
 *   in the ctx cannot be written without unrolling it completely.
 * So the ctx carries only the small header (struct ct_gc_args, in ct_gc.h with the other
 * types userspace shares) and the records live in ct_gc_area, a BPF_F_MMAPABLE array the
 * loader maps into its address space: userspace writes keys and modes there, runs the
 * program, and reads statuses and values back with no copy through the syscall at all.
 *
 * How the program reaches the target CT map: through an ARRAY_OF_MAPS per key size
 * (ct_gc_outer4 / ct_gc_outer6); args.slot names the slot the loader pointed at the target.
 * Map-in-map requires the inner map to match the outer's template in type, key and value
 * size and map_flags, so the loader creates the outer maps itself, one pair per (type,
 * flags) of the CT maps, with as many slots as it likes, and hands them in with
 * bpf_map__reuse_fd before load; the definitions below are only what the program is
 * compiled against. A slot is set once per target map and kept: every update of a
 * map-in-map from userspace waits for an RCU grace period (~12 ms measured on 6.18),
 * far more than a whole batch costs, so one shared slot rewritten per call would not do.
 *
 * Sleepable syscall programs may use ARRAY, LRU_HASH, HASH and ARRAY_OF_MAPS (verifier:
 * "Sleepable programs can only use array, hash, ringbuf and local storage maps"), and
 * bpf_loop: the loop is verified once whatever the batch size, then inlined by the verifier.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "ct_gc.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct ct_gc_area);
} ct_gc_area SEC(".maps");

/*
 * Compile-time inner templates; max_entries is not part of map-in-map compatibility.
 * Sizes, not __type(): clang emits only a BTF forward declaration for a struct reached
 * through a pointer member of a pointee struct, and libbpf then cannot size the key.
 */
struct ct_gc_inner4 {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct ipv4_ct_tuple));
	__uint(value_size, sizeof(struct ct_entry));
};

struct ct_gc_inner6 {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(struct ipv6_ct_tuple));
	__uint(value_size, sizeof(struct ct_entry));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ct_gc_inner4);
} ct_gc_outer4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct ct_gc_inner6);
} ct_gc_outer6 SEC(".maps");

/* bpf_loop's callback state, on the program's stack. */
struct gc_loop {
	void *ct;
	struct ct_gc_area *area;
	__u32 time;
	__u32 deleted;
	__u32 missing;
	__u32 refreshed;
	__u32 failed;
	__s32 first_err;
};

static __always_inline long gc_one(__u64 i, struct gc_loop *l, __u32 key_size)
{
	struct ct_gc_area *a = l->area;
	struct ct_entry *e;
	void *key;
	long err;

	/*
	 * bpf_loop never passes i >= count <= CT_GC_MAX_RECS, but the verifier needs the bound
	 * on the register the index is used from. With a u32 index clang 14 checked a
	 * zero-extended copy and indexed with the unchecked original ("R2 unbounded memory
	 * access"); the u64 index and the barrier keep check and use on one register.
	 */
	barrier_var(i);
	if (i >= CT_GC_MAX_RECS)
		return 1;
	key = &a->keys[i * key_size];
	e = bpf_map_lookup_elem(l->ct, key);
	if (!e) {
		a->status[i] = CT_GC_MISSING;
		l->missing++;
		return 0;
	}
	/*
	 * Anything but ALWAYS is treated as EXPIRED_BEFORE: a corrupt mode byte must never
	 * delete a live flow.
	 */
	if (a->mode[i] != CT_GC_ALWAYS && e->lifetime >= l->time) {
		a->status[i] = CT_GC_REFRESHED;
		l->refreshed++;
		return 0;
	}
	/*
	 * Copy before delete: an LRU element goes back to the free list on delete and may be
	 * reused at once. What the datapath writes between this copy and the delete is lost
	 * with the entry, as it would be with any delete.
	 */
	__builtin_memcpy(&a->values[i], e, sizeof(*e));
	err = bpf_map_delete_elem(l->ct, key);
	if (!err) {
		a->status[i] = CT_GC_DELETED;
		l->deleted++;
	} else if (err == -ENOENT) {
		/* Evicted or deleted by someone else between our lookup and delete. */
		a->status[i] = CT_GC_MISSING;
		l->missing++;
	} else {
		/* e.g. a bucket lock that could not be taken: the entry stays, next pass retries. */
		a->status[i] = CT_GC_REFRESHED;
		l->failed++;
		if (!l->first_err)
			l->first_err = err;
	}
	return 0;
}

static long gc4_cb(__u32 i, void *ctx)
{
	return gc_one(i, ctx, sizeof(struct ipv4_ct_tuple));
}

static long gc6_cb(__u32 i, void *ctx)
{
	return gc_one(i, ctx, sizeof(struct ipv6_ct_tuple));
}

/*
 * Returns 0, or a negative errno in retval: -EBADF when args.slot holds no map (or is out
 * of range), -E2BIG when count exceeds the area.
 */
static __always_inline int gc_run(struct ct_gc_args *args, void *outer, void *cb)
{
	struct gc_loop l = {};
	__u32 zero = 0, slot;
	__u32 count = args->count;

	if (count > CT_GC_MAX_RECS)
		return -E2BIG;
	l.area = bpf_map_lookup_elem(&ct_gc_area, &zero);
	if (!l.area)
		return -EFAULT;
	/* Copied to the stack: map keys cannot point into the ctx. */
	slot = args->slot;
	l.ct = bpf_map_lookup_elem(outer, &slot);
	if (!l.ct)
		return -EBADF;
	l.time = args->time;
	bpf_loop(count, cb, &l, 0);
	args->deleted = l.deleted;
	args->missing = l.missing;
	args->refreshed = l.refreshed + l.failed;
	args->failed = l.failed;
	args->first_err = l.first_err;
	return 0;
}

SEC("syscall")
int ct_gc4(struct ct_gc_args *args)
{
	return gc_run(args, &ct_gc_outer4, gc4_cb);
}

SEC("syscall")
int ct_gc6(struct ct_gc_args *args)
{
	return gc_run(args, &ct_gc_outer6, gc6_cb);
}

char LICENSE[] SEC("license") = "GPL";
