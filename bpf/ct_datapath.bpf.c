// SPDX-License-Identifier: GPL-2.0-only
/*
 * Cilium's connection tracking as a TC (clsact) program pair, over the very CT maps ctmapd
 * creates and pins (ctmap-facts §1-3). Semantics follow Cilium's bpf/lib/conntrack.h as
 * walked through in seed 002 (ct_lookup4/6, __ct_lookup, ct_create4/6,
 * ct_update_timeout): reverse direction first so REPLY and RELATED take precedence, then
 * the forward direction, then create. It only observes: the verdict is always TC_ACT_UNSPEC,
 * so tc goes on to the next filter on the hook as if this one were not there.
 * A packet is tracked in the global maps, or in a remote cluster's inner maps when a
 * cluster id is configured or carried in skb->mark (ct_cluster_id, ct_process_cluster).
 *
 * Where this deliberately differs from the seed:
 * - ICMP errors are keyed by the addresses of the header they quote, not by the outer
 *   header, so an error sent by a router on the path still finds the flow's RELATED entry.
 *   An error that matches nothing creates nothing (it is not a new flow).
 * - A SYN reopening a closing entry also clears SeenNonSyn and the seen flags, so the
 *   reopened flow gets the SYN timeout until it is established again (newer Cilium does
 *   the same).
 * - Accounting is one packets/bytes pair per entry, as struct ct_entry (Cilium >= 1.13)
 *   has it; direction shows in tx/rx_flags_seen and last_tx/rx_report.
 * - A new flow keeps the RELATED entry its address pair already has, raising only its
 *   lifetime, where Cilium rewrites it (ct_process).
 *
 * CT clock: bpf_ktime_get_ns() / 1e9, CLOCK_MONOTONIC seconds, the clock ctNow() in
 * src/maps/ctmap/format.ts reads through process.hrtime (facts §3), so the GC and the dump
 * agree with what is written here (ct_now reads it once per tick and CPU). Cilium's
 * jiffies-based bpf_mono_now() variant, a different clock, is not used.
 *
 * Headers are read in place when they lie in the skb's linear part (the common case at
 * TC) and copied out with bpf_skb_load_bytes otherwise (ct_hdr), so a packet with its
 * headers in fragments is still tracked, and the common case costs no helper call.
 *
 * Cost (bench/RESULTS.md, "datapath"): every CT map is reached from call sites that see
 * only that map, so the verifier inlines the hash lookups and turns the updates into
 * direct calls; a call site shared by several maps would go through the generic helper
 * and an indirect (retpolined) call. Hence one ct_process instantiation per map pair.
 */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ctmap.h"
#include "ct_events.h"

/*
 * Lifetimes in seconds and the other load-time settings (facts §5). The object carries no
 * values of its own, only zeros: src/datapath/loader.ts writes the whole struct into
 * .rodata before every load (every path that loads this object goes through it), from the
 * settings the daemon derived from ctmapd's flags (src/datapath/settings.ts), whose
 * defaults are Cilium's, written once in src/config/defaults.ts. Service lifetimes are not
 * here: this program does no load balancing, so it never looks up TUPLE_F_SERVICE entries.
 */
const volatile struct ct_datapath_config ctmapd_config = {};

#define CT_CONNECTION_LIFETIME_TCP	(ctmapd_config.lifetime_tcp)
#define CT_CONNECTION_LIFETIME_NONTCP	(ctmapd_config.lifetime_nontcp)
#define CT_SYN_TIMEOUT			(ctmapd_config.syn_timeout)
#define CT_CLOSE_TIMEOUT		(ctmapd_config.close_timeout)
/* --monitor-aggregation-interval: last_{tx,rx}_report is refreshed at most this often. */
#define CT_REPORT_INTERVAL		(ctmapd_config.report_interval)
/* --monitor-aggregation-flags (default "all"): TCP flags recorded in {tx,rx}_flags_seen. */
#define CT_REPORT_FLAGS			(ctmapd_config.report_flags)

/* The daemon's CT maps, global and per cluster (ct_maps.h). */
#include "ct_maps.h"

/*
 * The daemon's ring buffer and fill-up steps (bpf/ct_events.h, src/datapath/side-maps.ts),
 * reused from its pins like the stats map. The ring's size is a placeholder.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} ctmapd_ct_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_pressure_config);
} ctmapd_ct_pressure SEC(".maps");

/* The daemon's counters map (src/datapath/side-maps.ts); the loader requires it pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_datapath_stats);
} ctmapd_ct_stats SEC(".maps");

enum ct_dir {
	CT_EGRESS,
	CT_INGRESS,
};

enum ct_action {
	ACTION_UNSPEC,
	ACTION_CREATE,
	ACTION_CLOSE,
};

/*
 * ICMP and ICMPv6 types (RFC 792, RFC 4443), spelled out because <linux/icmp.h> pulls in
 * libc headers that do not build for -target bpf.
 */
#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11
#define ICMP_PARAMETERPROB	12
#define ICMPV6_DEST_UNREACH	1
#define ICMPV6_PKT_TOOBIG	2
#define ICMPV6_TIME_EXCEED	3
#define ICMPV6_PARAMPROB	4
#define ICMPV6_ECHO_REQUEST	128
#define ICMPV6_ECHO_REPLY	129

/* Low byte of the TCP flags word (byte 13 of the header). */
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

/* What the parser learned about the packet, besides the tuple. */
struct ct_pkt {
	__u32 len;
	__u8 action;
	__u8 tcp_flags;
	bool is_tcp;
};

/*
 * Per-CPU counters need no atomic add: a TC program runs with bottom halves disabled, so
 * nothing else on this CPU writes the copy meanwhile (Cilium counts its per-CPU metrics
 * the same way). The CT entry's packets/bytes, shared by every CPU, stay atomic.
 */
#define STAT_INC(_s, _field)				\
	do {						\
		if (_s)					\
			(_s)->_field++;			\
	} while (0)

static __always_inline struct ct_datapath_stats *stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ctmapd_ct_stats, &zero);
}

#define NSEC_PER_SEC 1000000000ULL
/*
 * How long ct_now trusts seconds read earlier in the same tick: jiffies advance every
 * tick (1-10 ms), and when the CPU keeping time stalls, another takes over after five
 * ticks, so a tick never lasts 50 ms on a working kernel.
 */
#define CT_CLOCK_TICK_SLACK_NS (50 * 1000000ULL)

/* The last reading of the CT clock on this CPU, and the tick it was made in. */
struct ct_clock {
	__u64 jiffies;
	__u32 sec;
	__u32 reusable;
};

/* Private to each loaded object (never pinned): a cache, not state. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_clock);
} ctmapd_ct_clock SEC(".maps");

/*
 * CT clock: CLOCK_MONOTONIC seconds, bpf_ktime_get_ns() / 1e9 (facts §3), read at most
 * once per tick per CPU: bpf_ktime_get_ns costs ~30 ns per call here, a quarter of a hit,
 * while bpf_jiffies64 is inlined to one load (bench/RESULTS.md). Within the tick of the
 * last reading its seconds are reused, unless that reading fell in the last
 * CT_CLOCK_TICK_SLACK_NS of a second: the tick cannot outlast the slack, so a reused value
 * is what bpf_ktime_get_ns() / 1e9 would give now.
 */
static __always_inline __u32 ct_now(void)
{
	struct ct_clock *c;
	__u32 zero = 0;
	__u64 j, ns, sec;

	c = bpf_map_lookup_elem(&ctmapd_ct_clock, &zero);
	j = bpf_jiffies64();
	if (c && c->jiffies == j && c->reusable)
		return c->sec;
	ns = bpf_ktime_get_ns();
	sec = ns / NSEC_PER_SEC;
	if (c) {
		c->jiffies = j;
		c->sec = sec;
		c->reusable = ns - sec * NSEC_PER_SEC < NSEC_PER_SEC - CT_CLOCK_TICK_SLACK_NS;
	}
	return sec;
}

/*
 * --ct-events (ct_events.h). .rodata is frozen at load, so the verifier knows the mode and
 * drops the event code a mode does not use: with none, nothing below touches the ring.
 */
#define CT_EVENTS_ON	(ctmapd_config.events != CT_EVENTS_NONE)
#define CT_EVENTS_FULL	(ctmapd_config.events == CT_EVENTS_ALL)

/* What an event says about where the entry lives; constant per call site. */
struct ct_where {
	__u32 cluster_id;
	bool v6;
	bool tcp;	/* the flow's map is the TCP map */
};

static __always_inline __u8 ct_event_map_of(const struct ct_where *w)
{
	return w->tcp ? CT_EVENT_MAP_TCP : CT_EVENT_MAP_ANY;
}

/* A FILL_UP signal about `w`'s flow map (`any`: its non-TCP map instead). */
static __always_inline void ct_signal_fill_up(const struct ct_where *w, bool any, __u8 reason, struct ct_datapath_stats *st)
{
	st->fill_up_signals++;
	ct_event_fill_up(&ctmapd_ct_events, &st->events, w->v6 ? 6 : 4, any ? CT_EVENT_MAP_ANY : ct_event_map_of(w), reason,
			 w->cluster_id, ct_now());
}

/*
 * Signals one failed insert in CT_FILL_UP_FAILED_STEP per CPU (the first one at once): a
 * map refusing inserts refuses many, and one signal per step says as much.
 */
#define CT_FILL_UP_FAILED_STEP 64

static __always_inline void ct_insert_failed(const struct ct_where *w, bool any, struct ct_datapath_stats *st)
{
	if (!st)
		return;
	st->create_failed++;
	if (CT_EVENTS_ON && (st->create_failed & (CT_FILL_UP_FAILED_STEP - 1)) == 1)
		ct_signal_fill_up(w, any, CT_REASON_INSERT_FAILED, st);
}

/*
 * A flow entry inserted: counted by map kind, and a PRESSURE signal when this CPU's count
 * reaches a multiple of the daemon's step for that map (struct ct_pressure_config).
 */
static __always_inline void ct_count_create(const struct ct_where *w, struct ct_datapath_stats *st)
{
	const struct ct_pressure_config *pc;
	__u32 zero = 0, mask;
	__u64 n;

	if (!st)
		return;
	st->creates++;
	if (w->v6)
		n = w->tcp ? ++st->creates_tcp6 : ++st->creates_any6;
	else
		n = w->tcp ? ++st->creates_tcp4 : ++st->creates_any4;
	if (!CT_EVENTS_ON)
		return;
	pc = bpf_map_lookup_elem(&ctmapd_ct_pressure, &zero);
	if (!pc)
		return;
	if (w->v6)
		mask = w->tcp ? pc->step_mask_tcp6 : pc->step_mask_any6;
	else
		mask = w->tcp ? pc->step_mask_tcp4 : pc->step_mask_any4;
	if (mask && !(n & mask))
		ct_signal_fill_up(w, false, CT_REASON_PRESSURE, st);
}

/* A NEW or CLOSE record (mode all only) of the entry at `key`. */
static __always_inline void ct_emit_entry(const struct ct_where *w, __u8 type, __u8 reason, const void *key, const struct ct_entry *e,
					  struct ct_datapath_stats *st)
{
	if (!CT_EVENTS_FULL || !st)
		return;
	ct_event_entry(&ctmapd_ct_events, &st->events, type, reason, w->v6, ct_event_map_of(w), w->cluster_id, ct_now(), key, e);
}

/* Cilium's ct_entry_alive: a flow is live until both sides have closed. */
static __always_inline bool ct_entry_alive(const struct ct_entry *e)
{
	return !e->rx_closing || !e->tx_closing;
}

/*
 * Sets the expiry to now + lifetime and, per direction, merges the reportable TCP flags;
 * the report time moves only when the interval has passed or a new flag shows up, which
 * is what lets a monitor aggregate per flow instead of per packet.
 */
static __always_inline void __ct_update_timeout(struct ct_entry *e, __u32 lifetime, int dir, __u8 tcp_flags)
{
	__u32 now = ct_now();
	__u8 seen = tcp_flags & CT_REPORT_FLAGS;
	__u8 acc;
	__u32 last;

	e->lifetime = now + lifetime;
	if (dir == CT_INGRESS) {
		acc = e->rx_flags_seen;
		last = e->last_rx_report;
	} else {
		acc = e->tx_flags_seen;
		last = e->last_tx_report;
	}
	seen |= acc;
	if (last + CT_REPORT_INTERVAL < now || acc != seen) {
		if (dir == CT_INGRESS) {
			e->rx_flags_seen = seen;
			e->last_rx_report = now;
		} else {
			e->tx_flags_seen = seen;
			e->last_tx_report = now;
		}
	}
}

/* SYN timeout until a packet without SYN has been seen, then the established lifetime. */
static __always_inline void ct_update_timeout(struct ct_entry *e, const struct ct_pkt *p, int dir)
{
	__u32 lifetime = CT_CONNECTION_LIFETIME_NONTCP;

	if (p->is_tcp) {
		if (!(p->tcp_flags & TCP_SYN))
			e->seen_non_syn = 1;
		lifetime = e->seen_non_syn ? CT_CONNECTION_LIFETIME_TCP : CT_SYN_TIMEOUT;
	}
	__ct_update_timeout(e, lifetime, dir, p->tcp_flags);
}

/*
 * One lookup: refresh, account and apply the packet's action to a found entry. Returns
 * whether the key was found (Cilium's CT_ESTABLISHED; the caller names it by direction).
 */
static __always_inline bool __ct_lookup(void *map, void *tuple, const struct ct_pkt *p, int dir, const struct ct_where *w,
				       struct ct_datapath_stats *st)
{
	struct ct_entry *e;
	bool was_closing;

	STAT_INC(st, lookups);
	e = bpf_map_lookup_elem(map, tuple);
	if (!e)
		return false;

	if (ct_entry_alive(e))
		ct_update_timeout(e, p, dir);
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);

	switch (p->action) {
	case ACTION_CREATE:
		if ((e->rx_closing || e->tx_closing) && (p->tcp_flags & TCP_SYN)) {
			e->rx_closing = 0;
			e->tx_closing = 0;
			e->seen_non_syn = 0;
			e->rx_flags_seen = 0;
			e->tx_flags_seen = 0;
			ct_update_timeout(e, p, dir);
			STAT_INC(st, reopens);
		}
		break;
	case ACTION_CLOSE:
		was_closing = e->rx_closing || e->tx_closing;
		/*
		 * An RST before both sides' SYNs were seen (a refused or aborted handshake)
		 * closes both sides at once, as Cilium does since 1.15 ("RST and have not
		 * seen both SYNs"): nothing will come from the other side to close its half,
		 * and the entry would otherwise sit on the SYN timeout. Anything else closes
		 * the packet's own side (seed 002). flags_seen already holds this packet's flags.
		 */
		if ((p->tcp_flags & TCP_RST) && !((e->tx_flags_seen & TCP_SYN) && (e->rx_flags_seen & TCP_SYN))) {
			e->rx_closing = 1;
			e->tx_closing = 1;
		} else if (dir == CT_INGRESS) {
			e->rx_closing = 1;
		} else {
			e->tx_closing = 1;
		}
		STAT_INC(st, closes);
		if (!ct_entry_alive(e))
			__ct_update_timeout(e, CT_CLOSE_TIMEOUT, dir, p->tcp_flags);
		/*
		 * CLOSE once per flow, at its first FIN or RST, and like Cilium's monitor
		 * reports only for the flags --monitor-aggregation-flags reports.
		 */
		if (!was_closing && (p->tcp_flags & CT_REPORT_FLAGS & (TCP_FIN | TCP_RST)))
			ct_emit_entry(w, CT_EVENT_CLOSE, (p->tcp_flags & CT_REPORT_FLAGS & TCP_RST) ? CT_REASON_RST : CT_REASON_FIN,
				      tuple, e, st);
		break;
	}
	return true;
}

/*
 * A new flow's entry as ct_create fills it: for TCP the first packet counts as a SYN
 * whatever its flags, so a flow picked up mid-stream still starts on the SYN timeout
 * until the next non-SYN packet.
 */
static __always_inline void ct_new_entry(struct ct_entry *e, const struct ct_pkt *p, int dir)
{
	struct ct_pkt first = *p;

	if (p->is_tcp)
		first.tcp_flags |= TCP_SYN;
	ct_update_timeout(e, &first, dir);
	e->packets = 1;
	e->bytes = p->len;
}

static __always_inline void ipv4_ct_tuple_reverse(struct ipv4_ct_tuple *t)
{
	__be32 a = t->saddr;
	__be16 port = t->sport;

	t->saddr = t->daddr;
	t->daddr = a;
	t->sport = t->dport;
	t->dport = port;
	t->flags ^= TUPLE_F_IN;
}

static __always_inline void ipv6_ct_tuple_reverse(struct ipv6_ct_tuple *t)
{
	union v6addr a = t->saddr;
	__be16 port = t->sport;

	t->saddr = t->daddr;
	t->daddr = a;
	t->sport = t->dport;
	t->dport = port;
	t->flags ^= TUPLE_F_IN;
}

/*
 * `len` bytes of the packet at `off`: a pointer into the packet when they are in its
 * linear part, else a copy in `buf` (bpf_skb_load_bytes bounds-checks against the whole
 * skb). NULL when the packet is shorter. `off` must be bounded for the verifier.
 */
static __always_inline void *ct_hdr(struct __sk_buff *skb, __u32 off, __u32 len, void *buf)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	void *at = data + off;

	if (at + len <= data_end)
		return at;
	if (bpf_skb_load_bytes(skb, off, buf, len) < 0)
		return NULL;
	return buf;
}

/* The part both tuples share after the addresses, at offset 8 (v4) or 32 (v6). */
struct ct_tuple_tail {
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));

_Static_assert(__builtin_offsetof(struct ipv4_ct_tuple, dport) == 8, "v4 tail offset");
_Static_assert(__builtin_offsetof(struct ipv6_ct_tuple, dport) == 32, "v6 tail offset");

/*
 * The L4 part of the tuple, shared by both families. On entry the tuple holds the packet's
 * addresses as they are (daddr = destination): the reverse-direction key, which is why the
 * packet's source port goes into dport (Cilium loads both ports into &tuple->dport).
 * For ICMP(v6) errors the tuple gets TUPLE_F_RELATED and `inner` the offset of the quoted
 * IP header. Returns 0, or -1 for a truncated header.
 */
static __always_inline int ct_parse_l4(struct __sk_buff *skb, __u32 off, struct ct_tuple_tail *t,
				       struct ct_pkt *p, __u32 *inner)
{
	__u8 buf[14];
	__u8 *hdr;

	switch (t->nexthdr) {
	case IPPROTO_TCP:
		hdr = ct_hdr(skb, off, 14, buf);
		if (!hdr)
			return -1;
		t->dport = *(__be16 *)&hdr[0];
		t->sport = *(__be16 *)&hdr[2];
		p->is_tcp = true;
		p->tcp_flags = hdr[13];
		p->action = (hdr[13] & (TCP_RST | TCP_FIN)) ? ACTION_CLOSE : ACTION_CREATE;
		return 0;
	case IPPROTO_UDP:
		hdr = ct_hdr(skb, off, 4, buf);
		if (!hdr)
			return -1;
		t->dport = *(__be16 *)&hdr[0];
		t->sport = *(__be16 *)&hdr[2];
		p->action = ACTION_CREATE;
		return 0;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* type, code, checksum, then the echo id (or the error's unused word). */
		hdr = ct_hdr(skb, off, 8, buf);
		if (!hdr)
			return -1;
		t->dport = 0;
		t->sport = 0;
		p->action = ACTION_CREATE;
		if (t->nexthdr == IPPROTO_ICMP) {
			switch (hdr[0]) {
			case ICMP_DEST_UNREACH:
			case ICMP_TIME_EXCEEDED:
			case ICMP_PARAMETERPROB:
				goto related;
			case ICMP_ECHOREPLY:
				t->sport = *(__be16 *)&hdr[4];
				break;
			case ICMP_ECHO:
				t->dport = *(__be16 *)&hdr[4];
				break;
			}
		} else {
			switch (hdr[0]) {
			case ICMPV6_DEST_UNREACH:
			case ICMPV6_PKT_TOOBIG:
			case ICMPV6_TIME_EXCEED:
			case ICMPV6_PARAMPROB:
				goto related;
			case ICMPV6_ECHO_REPLY:
				t->sport = *(__be16 *)&hdr[4];
				break;
			case ICMPV6_ECHO_REQUEST:
				t->dport = *(__be16 *)&hdr[4];
				break;
			}
		}
		return 0;
related:
		t->flags |= TUPLE_F_RELATED;
		p->action = ACTION_UNSPEC;
		*inner = off + 8;
		return 0;
	}
	return -1;
}

/*
 * Reverse first (REPLY, or RELATED for an ICMP error), then forward (ESTABLISHED), then
 * create unless the packet is an ICMP error. `tuple` arrives as the reverse key; `any` and
 * `icmp_proto` are the map and protocol of the flow's RELATED entry. `v6` is a constant in
 * each caller, so the family branches fold away.
 */
static __always_inline void ct_process(void *map, void *any, void *tuple, bool v6, __u32 cluster_id, const struct ct_pkt *p,
				       int dir, struct ct_datapath_stats *st)
{
	struct ct_tuple_tail *t = tuple + (v6 ? 32 : 8);
	struct ct_where w = { .cluster_id = cluster_id, .v6 = v6, .tcp = p->is_tcp };
	struct ct_entry e, *r;
	bool related = t->flags & TUPLE_F_RELATED;

	if (__ct_lookup(map, tuple, p, dir, &w, st)) {
		if (related)
			STAT_INC(st, hits_related);
		else
			STAT_INC(st, hits_reply);
		return;
	}
	if (v6)
		ipv6_ct_tuple_reverse(tuple);
	else
		ipv4_ct_tuple_reverse(tuple);
	if (__ct_lookup(map, tuple, p, dir, &w, st)) {
		if (related)
			STAT_INC(st, hits_related);
		else
			STAT_INC(st, hits_established);
		return;
	}
	if (related) {
		STAT_INC(st, related_misses);
		return;
	}

	/* Zeroed here, not where declared: a hit never needs it. */
	__builtin_memset(&e, 0, sizeof(e));
	ct_new_entry(&e, p, dir);
	if (bpf_map_update_elem(map, tuple, &e, BPF_ANY) < 0) {
		ct_insert_failed(&w, false, st);
		return;
	}
	ct_count_create(&w, st);
	ct_emit_entry(&w, CT_EVENT_NEW, CT_REASON_CREATED, tuple, &e, st);
	/*
	 * The RELATED entry: the flow's addresses and direction, no ports, so that any ICMP
	 * error quoting the flow finds it. SeenNonSyn since ICMP has no SYN. If this insert
	 * fails the flow itself stays tracked; errors about it then go unmatched.
	 */
	t->nexthdr = v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP;
	t->sport = 0;
	t->dport = 0;
	t->flags |= TUPLE_F_RELATED;
	/*
	 * Every flow between the same two addresses shares it. Cilium rewrites it for each
	 * new flow; an entry the pair already has is kept here, its lifetime only raised to
	 * the new flow's: a rewrite costs an LRU allocation per new flow (bench/RESULTS.md),
	 * and would cut short the lifetime an older flow of the pair gave it.
	 */
	r = bpf_map_lookup_elem(any, tuple);
	if (r) {
		if ((__s32)(e.lifetime - r->lifetime) > 0)
			r->lifetime = e.lifetime;
		return;
	}
	e.seen_non_syn = 1;
	if (bpf_map_update_elem(any, tuple, &e, BPF_ANY) < 0)
		ct_insert_failed(&w, true, st);
}

/*
 * ct_process over cluster `cluster_id`'s inner maps, looked up in the outer maps; counts
 * cluster_map_missing (the packet passes untracked) when the cluster has none: it has not
 * joined. TCP and non-TCP packets reach ct_process from separate call sites, one per map
 * pair (see the top of this file).
 */
static __always_inline void ct_process_cluster(void *outer_tcp, void *outer_any, __u32 cluster_id, void *tuple, bool v6,
					       const struct ct_pkt *p, int dir, struct ct_datapath_stats *st)
{
	void *any, *tcp;

	any = bpf_map_lookup_elem(outer_any, &cluster_id);
	if (!any)
		goto missing;
	if (!p->is_tcp) {
		ct_process(any, any, tuple, v6, cluster_id, p, dir, st);
		return;
	}
	tcp = bpf_map_lookup_elem(outer_tcp, &cluster_id);
	if (!tcp)
		goto missing;
	ct_process(tcp, any, tuple, v6, cluster_id, p, dir, st);
	return;
missing:
	STAT_INC(st, cluster_map_missing);
}

/*
 * The cluster whose maps this packet uses: the configured one (ctmap datapath attach
 * --cluster-id), else the id in skb->mark in Cilium's encoding (ctmap.h), else 0, the
 * global maps. The mark is only read, never cleared: this program observes.
 */
static __always_inline __u32 ct_cluster_id(const struct __sk_buff *skb)
{
	__u32 mark, shift, upper;

	if (ctmapd_config.cluster_id)
		return ctmapd_config.cluster_id;
	mark = skb->mark;
	if ((mark & MARK_MAGIC_HOST_MASK) != MARK_MAGIC_CLUSTER_ID)
		return 0;
	/* Cilium: id bits above 7 sit at 8 + IDENTITY_LOCAL_BITS (24 - 8 or 24 - 9 bits). */
	shift = ctmapd_config.cluster_id_max > 0xff ? 8 + 15 : 8 + 16;
	upper = (ctmapd_config.cluster_id_max & ~CLUSTER_ID_LOWER_MASK) << shift;
	return ((mark & CLUSTER_ID_LOWER_MASK) | ((mark & upper) >> shift)) & ctmapd_config.cluster_id_max;
}

static __always_inline void ct4(struct __sk_buff *skb, int dir, __u32 cluster_id, struct ct_datapath_stats *st)
{
	struct ipv4_ct_tuple tuple = {};
	struct ct_pkt p = { .len = skb->len };
	struct iphdr buf, *ip, *q;
	__u32 inner = 0;

	ip = ct_hdr(skb, ETH_HLEN, sizeof(*ip), &buf);
	if (!ip || ip->ihl < 5) {
		STAT_INC(st, malformed);
		return;
	}
	/* Later fragments carry no L4 header to key on. */
	if (ip->frag_off & bpf_htons(0x1fff)) {
		STAT_INC(st, skipped);
		return;
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_ICMP) {
		STAT_INC(st, skipped);
		return;
	}
	tuple.daddr = ip->daddr;
	tuple.saddr = ip->saddr;
	tuple.nexthdr = ip->protocol;
	tuple.flags = dir == CT_INGRESS ? TUPLE_F_OUT : TUPLE_F_IN;
	if (ct_parse_l4(skb, ETH_HLEN + ip->ihl * 4, (void *)&tuple + 8, &p, &inner) < 0) {
		STAT_INC(st, malformed);
		return;
	}
	if (inner) {
		/* The quoted packet went the other way: its source is this packet's destination. */
		q = ct_hdr(skb, inner, sizeof(*q), &buf);
		if (!q || q->version != 4) {
			STAT_INC(st, malformed);
			return;
		}
		tuple.daddr = q->saddr;
		tuple.saddr = q->daddr;
	}
	/* One call site per map pair (top of this file). */
	if (cluster_id)
		ct_process_cluster(&cilium_per_cluster_ct_tcp4, &cilium_per_cluster_ct_any4, cluster_id, &tuple, false, &p, dir, st);
	else if (p.is_tcp)
		ct_process(&cilium_ct4_global, &cilium_ct_any4_global, &tuple, false, 0, &p, dir, st);
	else
		ct_process(&cilium_ct_any4_global, &cilium_ct_any4_global, &tuple, false, 0, &p, dir, st);
}

/* Extension headers skipped before the L4 header; more than this is left untracked. */
#define IPV6_MAX_EXT 4

static __always_inline void ct6(struct __sk_buff *skb, int dir, __u32 cluster_id, struct ct_datapath_stats *st)
{
	struct ipv6_ct_tuple tuple = {};
	struct ct_pkt p = { .len = skb->len };
	struct ipv6hdr buf, *ip, *q;
	__u32 off = ETH_HLEN + sizeof(*ip), inner = 0;
	__u8 nexthdr;
	int i;

	ip = ct_hdr(skb, ETH_HLEN, sizeof(*ip), &buf);
	if (!ip) {
		STAT_INC(st, malformed);
		return;
	}
	__builtin_memcpy(&tuple.daddr, &ip->daddr, sizeof(tuple.daddr));
	__builtin_memcpy(&tuple.saddr, &ip->saddr, sizeof(tuple.saddr));
	nexthdr = ip->nexthdr;
	for (i = 0; i < IPV6_MAX_EXT; i++) {
		__u8 extbuf[4], *ext;

		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING && nexthdr != IPPROTO_DSTOPTS &&
		    nexthdr != IPPROTO_FRAGMENT)
			break;
		ext = ct_hdr(skb, off, sizeof(extbuf), extbuf);
		if (!ext) {
			STAT_INC(st, malformed);
			return;
		}
		if (nexthdr == IPPROTO_FRAGMENT) {
			/* Fragment offset in the top 13 bits of bytes 2-3: only the first has L4. */
			if ((*(__be16 *)&ext[2]) & bpf_htons(0xfff8)) {
				STAT_INC(st, skipped);
				return;
			}
			off += 8;
		} else {
			off += (ext[1] + 1) * 8;
		}
		nexthdr = ext[0];
	}
	if (nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP && nexthdr != IPPROTO_ICMPV6) {
		STAT_INC(st, skipped);
		return;
	}
	tuple.nexthdr = nexthdr;
	tuple.flags = dir == CT_INGRESS ? TUPLE_F_OUT : TUPLE_F_IN;
	if (ct_parse_l4(skb, off, (void *)&tuple + 32, &p, &inner) < 0) {
		STAT_INC(st, malformed);
		return;
	}
	if (inner) {
		q = ct_hdr(skb, inner, sizeof(*q), &buf);
		if (!q || q->version != 6) {
			STAT_INC(st, malformed);
			return;
		}
		__builtin_memcpy(&tuple.daddr, &q->saddr, sizeof(tuple.daddr));
		__builtin_memcpy(&tuple.saddr, &q->daddr, sizeof(tuple.saddr));
	}
	if (cluster_id)
		ct_process_cluster(&cilium_per_cluster_ct_tcp6, &cilium_per_cluster_ct_any6, cluster_id, &tuple, true, &p, dir, st);
	else if (p.is_tcp)
		ct_process(&cilium_ct6_global, &cilium_ct_any6_global, &tuple, true, 0, &p, dir, st);
	else
		ct_process(&cilium_ct_any6_global, &cilium_ct_any6_global, &tuple, true, 0, &p, dir, st);
}

static __always_inline int ct_handle(struct __sk_buff *skb, int dir)
{
	struct ct_datapath_stats *st = stats();
	struct ethhdr buf, *eth;
	__be16 proto;

	STAT_INC(st, packets);
	eth = ct_hdr(skb, 0, sizeof(*eth), &buf);
	if (!eth) {
		STAT_INC(st, malformed);
		return TC_ACT_UNSPEC;
	}
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_IP) && ctmapd_config.enable_ipv4)
		ct4(skb, dir, ct_cluster_id(skb), st);
	else if (proto == bpf_htons(ETH_P_IPV6) && ctmapd_config.enable_ipv6)
		ct6(skb, dir, ct_cluster_id(skb), st);
	else
		STAT_INC(st, skipped);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int ct_egress(struct __sk_buff *skb)
{
	return ct_handle(skb, CT_EGRESS);
}

SEC("tc")
int ct_ingress(struct __sk_buff *skb)
{
	return ct_handle(skb, CT_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
