// SPDX-License-Identifier: Apache-2.0
/*
 * ctscan: the C/libbpf baseline the Node map layer is benchmarked against. It creates,
 * fills, scans and empties a pinned TCP4 CT map (key 14 B, value 56 B; ctmap-facts §1-3)
 * with the kernel batch ops, and prints one JSON line per command on stdout.
 *
 *   ctscan create <pin> <max_entries> [flags]
 *   ctscan fill <pin> <n> [seed]
 *   ctscan scan <pin> [batch]
 *   ctscan delete-all <pin> [batch]
 *   ctscan gc <pin> <time> [batch]
 *   ctscan gc-each <pin> <time> [batch]
 *   ctscan gc-after <pin> <time> [batch]
 *   ctscan copy <src-pin> <dst-pin> <max_entries> [batch]
 *
 * gc is a GC pass the plain-libbpf way: walk with LOOKUP_BATCH, collect the entries whose
 * lifetime < time, remove them with one DELETE_BATCH per scanned batch (no re-check: an
 * entry refreshed after the read is deleted anyway). gc-each removes them with one
 * DELETE_ELEM syscall per entry, as Cilium's GC does (Cilium #5048). gc-after scans the
 * whole map first and then deletes all candidates in DELETE_BATCH calls of `batch` keys:
 * the deletes find cold caches, as a delete of a candidate list collected earlier does.
 * All three report the whole pass and the time spent in the delete syscalls alone.
 *
 * copy is a resize the plain-libbpf way, the baseline of ctmapd's map migration: create a
 * map like <src> (type, key/value size, flags) with <max_entries>, pin it at <dst>, then
 * walk <src> with LOOKUP_BATCH and write each batch with UPDATE_BATCH. No pin swap, no
 * delta pass, no CPU placement: the bare kernel work of a copy.
 *
 * The parent directory of <pin> must exist on a bpffs. Errors go to stderr, exit status 1.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <bpf/bpf.h>

#include "ctmap.h"

#define FILL_CHUNK	4096
#define DEFAULT_BATCH	4096
/* Keeps the token buffer valid for any key size the kernel might copy, not only u32. */
#define TOKEN_MAX	64

static const char *prog_op = "ctscan";

static void die(const char *what, int err)
{
	fprintf(stderr, "%s: %s: %s\n", prog_op, what, strerror(err));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: ctscan create <pin> <max_entries> [flags]\n"
		"       ctscan fill <pin> <n> [seed]\n"
		"       ctscan scan <pin> [batch]\n"
		"       ctscan delete-all <pin> [batch]\n"
		"       ctscan gc <pin> <time> [batch]\n"
		"       ctscan gc-each <pin> <time> [batch]\n"
		"       ctscan gc-after <pin> <time> [batch]\n"
		"       ctscan copy <src-pin> <dst-pin> <max_entries> [batch]\n");
	exit(2);
}

static unsigned long long parse_num(const char *s, const char *what)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *s == '\0' || *end != '\0' || *s == '-') {
		fprintf(stderr, "%s: bad %s: %s\n", prog_op, what, s);
		exit(2);
	}
	return v;
}

static __u64 now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* JSON string with the escapes a filesystem path can need. */
static void print_json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = *s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* Refuses maps of another layout: reading them as CT4 records would be garbage. */
static int open_ct4(const char *pin, struct bpf_map_info *info)
{
	__u32 len = sizeof(*info);
	int fd = bpf_obj_get(pin);

	if (fd < 0)
		die("open pinned map", errno);
	memset(info, 0, sizeof(*info));
	if (bpf_obj_get_info_by_fd(fd, info, &len))
		die("map info", errno);
	if (info->key_size != sizeof(struct ipv4_ct_tuple) ||
	    info->value_size != sizeof(struct ct_entry)) {
		fprintf(stderr, "%s: %s: key/value size %u/%u, want %zu/%zu\n", prog_op, pin,
			info->key_size, info->value_size, sizeof(struct ipv4_ct_tuple),
			sizeof(struct ct_entry));
		exit(1);
	}
	return fd;
}

static int cmd_create(const char *pin, __u32 max_entries, __u32 flags)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = flags);
	struct bpf_map_info info;
	__u32 len = sizeof(info);
	int fd;

	/* The kernel rejects names of 16+ bytes; libbpf cuts this one to "cilium_ct4_glob". */
	fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, "cilium_ct4_global",
			    sizeof(struct ipv4_ct_tuple), sizeof(struct ct_entry),
			    max_entries, &opts);
	if (fd < 0)
		die("create map", errno);
	if (bpf_obj_pin(fd, pin))
		die("pin map", errno);
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		die("map info", errno);
	printf("{\"pin\":");
	print_json_str(pin);
	printf(",\"id\":%u,\"name\":\"%s\",\"max_entries\":%u,\"flags\":%u}\n",
	       info.id, info.name, info.max_entries, info.map_flags);
	return 0;
}

/*
 * Each step is a bijection on 32 bits (odd multiply, xor-shift), so distinct indices give
 * distinct outputs: the fill never writes the same key twice.
 */
static __u32 permute32(__u32 x, __u32 seed)
{
	x += seed * 0x9e3779b9u;
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}

static __u64 mix64(__u64 x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/*
 * Index -> key: the 32 permuted bits pick the 192.0.2.x host, the 198.51.100.y host and
 * the client port, so keys are distinct up to 2^32. Direction and service port only
 * decorate; IN entries put the server first, as the datapath stores replies.
 */
static void make_key(__u32 i, __u32 seed, struct ipv4_ct_tuple *k)
{
	static const __u16 ports[] = { 80, 443, 53, 8080, 6443, 22, 3306, 9090 };
	__u32 h = permute32(i, seed);
	__be32 client = htonl(0xc0000200u | (h & 0xff));		/* 192.0.2.0/24 */
	__be32 server = htonl(0xc6336400u | ((h >> 8) & 0xff));	/* 198.51.100.0/24 */
	__u64 r = mix64(((__u64)seed << 32) | i);
	bool in = r & 1;

	k->daddr = in ? server : client;
	k->saddr = in ? client : server;
	k->sport = htons(h >> 16);
	k->dport = htons(ports[(r >> 1) % (sizeof(ports) / sizeof(ports[0]))]);
	k->nexthdr = 6;
	k->flags = in ? TUPLE_F_IN : TUPLE_F_OUT;
}

static void make_entry(__u32 i, __u32 seed, __u32 now_s, struct ct_entry *e)
{
	__u64 r = mix64(mix64(((__u64)seed << 32) | i));

	memset(e, 0, sizeof(*e));
	e->packets = 1 + r % 100000;
	e->bytes = e->packets * (64 + (r >> 20) % 1437);
	/*
	 * Live entries, expiring over the default TCP lifetime (facts §5), an hour from now at
	 * the earliest: the daemon's first GC pass at start-up, and any pass while the bench
	 * runs, must find none of them expired, or the daemon's counts and ctscan's differ.
	 */
	e->lifetime = now_s + 3600 + (r >> 32) % 8000;
	e->flags = (r & (1ull << 60)) ? CT_F_SEEN_NON_SYN : 0;
	e->tx_flags_seen = 0x12;
	e->rx_flags_seen = 0x10;
	e->src_sec_id = (r >> 8) & 0xffff;
	e->last_tx_report = now_s;
	e->last_rx_report = now_s;
}

static int cmd_fill(const char *pin, __u64 n, __u32 seed)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	struct ipv4_ct_tuple *keys = calloc(FILL_CHUNK, sizeof(*keys));
	struct ct_entry *vals = calloc(FILL_CHUNK, sizeof(*vals));
	struct bpf_map_info info;
	__u32 now_s = now_ns() / 1000000000ull;
	__u64 done = 0, start, elapsed = 0;
	int fd = open_ct4(pin, &info);

	if (!keys || !vals)
		die("alloc", ENOMEM);
	if (n > (1ull << 32))
		die("fill", EINVAL);
	while (done < n) {
		__u32 count = n - done < FILL_CHUNK ? n - done : FILL_CHUNK;

		for (__u32 j = 0; j < count; j++) {
			make_key(done + j, seed, &keys[j]);
			make_entry(done + j, seed, now_s, &vals[j]);
		}
		/* Only the syscalls are timed: generating records is not the map's cost. */
		start = now_ns();
		if (bpf_map_update_batch(fd, keys, vals, &count, &opts))
			die("update batch", errno);
		elapsed += now_ns() - start;
		done += count;
	}
	printf("{\"filled\":%" PRIu64 ",\"ns\":%" PRIu64 "}\n", (uint64_t)done, (uint64_t)elapsed);
	free(keys);
	free(vals);
	return 0;
}

/*
 * After a LOOKUP_BATCH (or LOOKUP_AND_DELETE_BATCH) call that returned errno `err` (0,
 * ENOENT or ENOSPC): false at the end of the map; otherwise the cursor moves on (`out`
 * becomes the next `in`) and, when a hash bucket did not fit (ENOSPC), the key and value
 * buffers double. Returns whether to call again.
 */
static bool batch_next(int err, unsigned char *in, const unsigned char *out, bool *first, __u32 *batch,
		       struct ipv4_ct_tuple **keys, struct ct_entry **vals)
{
	if (err == ENOENT)
		return false;
	memcpy(in, out, TOKEN_MAX);
	*first = false;
	if (err == ENOSPC) {
		*batch *= 2;
		*keys = realloc(*keys, *batch * sizeof(**keys));
		*vals = realloc(*vals, *batch * sizeof(**vals));
	}
	return true;
}

/*
 * Walks the whole map with LOOKUP_BATCH (or LOOKUP_AND_DELETE_BATCH), summing packets
 * so the reads cannot be optimised away. ENOSPC means one hash bucket holds more than
 * the buffer: grow and resume from the same token. ENOENT marks the end, possibly with
 * a last partial batch.
 */
static void walk(int fd, __u32 batch, bool del, __u64 *entries, __u64 *sum)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	unsigned char in[TOKEN_MAX], out[TOKEN_MAX];
	struct ipv4_ct_tuple *keys = malloc(batch * sizeof(*keys));
	struct ct_entry *vals = malloc(batch * sizeof(*vals));
	bool first = true;

	*entries = *sum = 0;
	for (;;) {
		__u32 count = batch;
		int err;

		if (!keys || !vals)
			die("alloc", ENOMEM);
		if (del)
			err = bpf_map_lookup_and_delete_batch(fd, first ? NULL : in, out,
							      keys, vals, &count, &opts);
		else
			err = bpf_map_lookup_batch(fd, first ? NULL : in, out,
						   keys, vals, &count, &opts);
		err = err ? errno : 0;
		if (err && err != ENOENT && err != ENOSPC)
			die(del ? "lookup and delete batch" : "lookup batch", err);
		for (__u32 j = 0; j < count; j++)
			*sum += vals[j].packets;
		*entries += count;
		if (!batch_next(err, in, out, &first, &batch, &keys, &vals))
			break;
	}
	free(keys);
	free(vals);
}

static int cmd_walk(const char *pin, __u32 batch, bool del)
{
	struct bpf_map_info info;
	__u64 entries, sum, start, elapsed;
	int fd = open_ct4(pin, &info);

	start = now_ns();
	walk(fd, batch, del, &entries, &sum);
	elapsed = now_ns() - start;
	printf("{\"%s\":%" PRIu64 ",\"ns\":%" PRIu64 ",\"sum\":%" PRIu64 ",\"batch\":%u}\n",
	       del ? "deleted" : "entries", (uint64_t)entries, (uint64_t)elapsed,
	       (uint64_t)sum, batch);
	return 0;
}

/*
 * Deletes `count` keys with DELETE_BATCH, stepping over keys already gone (the kernel
 * stops a delete batch at the first ENOENT; LRU eviction can get there first). Returns
 * the number deleted.
 */
static __u32 delete_keys_batch(int fd, struct ipv4_ct_tuple *keys, __u32 count)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	__u32 done = 0, deleted = 0;

	while (done < count) {
		__u32 n = count - done;

		if (!bpf_map_delete_batch(fd, keys + done, &n, &opts)) {
			deleted += n;
			break;
		}
		if (errno != ENOENT)
			die("delete batch", errno);
		deleted += n;
		done += n + 1;
	}
	return deleted;
}

static __u32 delete_keys_each(int fd, struct ipv4_ct_tuple *keys, __u32 count)
{
	__u32 deleted = 0;

	for (__u32 j = 0; j < count; j++) {
		if (!bpf_map_delete_elem(fd, &keys[j]))
			deleted++;
		else if (errno != ENOENT)
			die("delete", errno);
	}
	return deleted;
}

enum gc_mode { GC_BATCH, GC_EACH, GC_AFTER };

static const char *const gc_mode_names[] = { "batch", "each", "after" };

static int cmd_gc(const char *pin, __u32 time, __u32 batch, enum gc_mode mode)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	unsigned char in[TOKEN_MAX], out[TOKEN_MAX];
	struct ipv4_ct_tuple *keys = malloc(batch * sizeof(*keys));
	struct ct_entry *vals = malloc(batch * sizeof(*vals));
	struct bpf_map_info info;
	__u64 entries = 0, deleted = 0, start, del_ns = 0, t;
	__u32 ncand = 0, del_batch = batch;
	bool first = true;
	int fd = open_ct4(pin, &info);
	/* gc-after keeps every candidate of the pass; the others one scanned batch's worth. */
	__u32 cand_cap = mode == GC_AFTER ? info.max_entries : batch;
	struct ipv4_ct_tuple *cand = malloc(cand_cap * sizeof(*cand));

	start = now_ns();
	for (;;) {
		__u32 count = batch;
		int err;

		if (!keys || !vals || !cand)
			die("alloc", ENOMEM);
		err = bpf_map_lookup_batch(fd, first ? NULL : in, out, keys, vals, &count, &opts);
		err = err ? errno : 0;
		if (err && err != ENOENT && err != ENOSPC)
			die("lookup batch", err);
		if (mode != GC_AFTER)
			ncand = 0;
		for (__u32 j = 0; j < count && ncand < cand_cap; j++)
			if (vals[j].lifetime < time)
				cand[ncand++] = keys[j];
		entries += count;
		if (ncand && mode != GC_AFTER) {
			t = now_ns();
			deleted += mode == GC_EACH ? delete_keys_each(fd, cand, ncand)
						   : delete_keys_batch(fd, cand, ncand);
			del_ns += now_ns() - t;
		}
		if (!batch_next(err, in, out, &first, &batch, &keys, &vals))
			break;
		if (err == ENOSPC && mode != GC_AFTER) {
			cand_cap = batch;
			cand = realloc(cand, cand_cap * sizeof(*cand));
		}
	}
	if (mode == GC_AFTER) {
		t = now_ns();
		for (__u32 b = 0; b < ncand; b += del_batch)
			deleted += delete_keys_batch(fd, cand + b,
						     ncand - b < del_batch ? ncand - b : del_batch);
		del_ns = now_ns() - t;
	}
	t = now_ns() - start;
	printf("{\"entries\":%" PRIu64 ",\"deleted\":%" PRIu64 ",\"ns\":%" PRIu64
	       ",\"delete_ns\":%" PRIu64 ",\"batch\":%u,\"mode\":\"%s\"}\n",
	       (uint64_t)entries, (uint64_t)deleted, (uint64_t)t, (uint64_t)del_ns, batch,
	       gc_mode_names[mode]);
	free(keys);
	free(cand);
	free(vals);
	return 0;
}

/*
 * Creates the destination (timed with the copy: a migration has to create its map too),
 * then copies batch by batch. Prints entries copied, the whole time and the copy alone.
 */
static int cmd_copy(const char *src, const char *dst, __u32 max_entries, __u32 batch)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	unsigned char in[TOKEN_MAX], out[TOKEN_MAX];
	struct ipv4_ct_tuple *keys = malloc(batch * sizeof(*keys));
	struct ct_entry *vals = malloc(batch * sizeof(*vals));
	struct bpf_map_info info;
	__u64 copied = 0, start, copy_start, t;
	bool first = true;
	int sfd = open_ct4(src, &info), dfd;

	start = now_ns();
	{
		LIBBPF_OPTS(bpf_map_create_opts, copts, .map_flags = info.map_flags);

		dfd = bpf_map_create(info.type, info.name, info.key_size, info.value_size,
				     max_entries, &copts);
		if (dfd < 0)
			die("create map", errno);
		if (bpf_obj_pin(dfd, dst))
			die("pin map", errno);
	}
	copy_start = now_ns();
	for (;;) {
		__u32 count = batch;
		int err;

		if (!keys || !vals)
			die("alloc", ENOMEM);
		err = bpf_map_lookup_batch(sfd, first ? NULL : in, out, keys, vals, &count, &opts);
		err = err ? errno : 0;
		if (err && err != ENOENT && err != ENOSPC)
			die("lookup batch", err);
		if (count) {
			__u32 n = count;

			if (bpf_map_update_batch(dfd, keys, vals, &n, &opts))
				die("update batch", errno);
			copied += n;
		}
		if (!batch_next(err, in, out, &first, &batch, &keys, &vals))
			break;
	}
	t = now_ns();
	printf("{\"copied\":%" PRIu64 ",\"ns\":%" PRIu64 ",\"copy_ns\":%" PRIu64 ",\"batch\":%u}\n",
	       (uint64_t)copied, (uint64_t)(t - start), (uint64_t)(t - copy_start), batch);
	free(keys);
	free(vals);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		usage();
	prog_op = argv[1];
	if (!strcmp(argv[1], "create") && (argc == 4 || argc == 5)) {
		__u64 max = parse_num(argv[3], "max_entries");
		__u64 flags = argc == 5 ? parse_num(argv[4], "flags") : 0;

		if (max == 0 || max > UINT32_MAX || flags > UINT32_MAX)
			usage();
		return cmd_create(argv[2], max, flags);
	}
	if (!strcmp(argv[1], "fill") && (argc == 4 || argc == 5))
		return cmd_fill(argv[2], parse_num(argv[3], "n"),
				argc == 5 ? parse_num(argv[4], "seed") : 1);
	if ((!strcmp(argv[1], "scan") || !strcmp(argv[1], "delete-all")) &&
	    (argc == 3 || argc == 4)) {
		__u64 batch = argc == 4 ? parse_num(argv[3], "batch") : DEFAULT_BATCH;

		if (batch == 0 || batch > (1u << 24))
			usage();
		return cmd_walk(argv[2], batch, argv[1][0] == 'd');
	}
	if ((!strcmp(argv[1], "gc") || !strcmp(argv[1], "gc-each") ||
	     !strcmp(argv[1], "gc-after")) && (argc == 4 || argc == 5)) {
		__u64 time = parse_num(argv[3], "time");
		__u64 batch = argc == 5 ? parse_num(argv[4], "batch") : DEFAULT_BATCH;

		if (time > UINT32_MAX || batch == 0 || batch > (1u << 24))
			usage();
		return cmd_gc(argv[2], time, batch,
			      !strcmp(argv[1], "gc") ? GC_BATCH :
			      !strcmp(argv[1], "gc-each") ? GC_EACH : GC_AFTER);
	}
	if (!strcmp(argv[1], "copy") && (argc == 5 || argc == 6)) {
		__u64 max = parse_num(argv[4], "max_entries");
		__u64 batch = argc == 6 ? parse_num(argv[5], "batch") : DEFAULT_BATCH;

		if (max == 0 || max > UINT32_MAX || batch == 0 || batch > (1u << 24))
			usage();
		return cmd_copy(argv[2], argv[3], max, batch);
	}
	usage();
	return 2;
}
