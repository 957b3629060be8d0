// SPDX-License-Identifier: GPL-2.0-only
/*
 * Socket fate-sharing (issue 13 item 1, seed 001): CT entries expire when their socket
 * closes, instead of living out their 8000 s until a GC pass finds them.
 *
 * - sockops ACTIVE/PASSIVE_ESTABLISHED_CB records the TCP socket's 4-tuple in socket
 *   storage and enables STATE_CB for it;
 * - cgroup_skb/egress records a UDP socket's 4-tuple at its first egress packet (a UDP
 *   socket has no establishment; cgroup/connect runs before the source port exists);
 * - cgroup/sock_release (close(), process exit, kill -9) and sockops STATE_CB to
 *   TCP_CLOSE (an RST while the fd is still open) expire the socket's entries.
 *
 * The storage is keyed by socket, not by port: sock_release may not read ctx->src_port.
 *
 * Expire, never delete: the last FIN/ACK packets would re-create a deleted entry (one as a
 * bogus 8000 s entry). Expiring sets both closing bits and lifetime = now + the close
 * timeout, exactly what the datapath does when it sees both FINs; the datapath then
 * refreshes a closing entry only to that same close timeout, and a SYN reopens it as usual.
 *
 * Which keys: bpf/ct_datapath.bpf.c keys a flow by the direction and hook where it saw the
 * first packet (created key = {daddr: first src, saddr: first dst, sport: first sport,
 * dport: first dport, flags: OUT at egress, IN at ingress}), and which side sent first, and
 * on which hook the datapath runs, is not known here. So the candidates are the socket's
 * 4-tuple in both address orders times TUPLE_F_OUT / TUPLE_F_IN, plus the TUPLE_F_SERVICE
 * entry in both orders; those present are expired. They are looked up in the global maps
 * and, when loaded with a cluster id (ctmap fate attach --cluster-id N), in that cluster's
 * inner maps (through the outer maps cilium_per_cluster_ct_*). RELATED entries are shared
 * by every flow of an address pair and are left alone.
 *
 * In --ct-events=all each expired entry is also written to the ring ctmapd_ct_events as a
 * CLOSE record with CT_REASON_SOCKET_CLOSE (bpf/ct_events.h); a failed reserve is counted
 * and carried in `lost` of the next record from that CPU.
 *
 * CT clock: bpf_ktime_get_ns() / 1e9 (facts §3), as ct_datapath.bpf.c's ct_now. A close is
 * rare enough (once per socket) that the datapath's per-tick clock cache is not needed.
 */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ctmap.h"
#include "ct_events.h"
#include "ct_fate.h"

/* Written by src/datapath/fate-loader.ts before load, from the daemon's settings. */
const volatile struct ct_datapath_config ctmapd_config = {};

#define CT_CLOSE_TIMEOUT (ctmapd_config.close_timeout)

/* The daemon's CT maps, reused from its pins (ct_maps.h). */
#include "ct_maps.h"

/* The daemon's counters map (side-maps.ts); the loader requires it pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_fate_stats);
} ctmapd_fate_stats SEC(".maps");

/* The daemon's ring (ct_events.h); a one-page placeholder when it is not pinned yet. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} ctmapd_ct_events SEC(".maps");

/*
 * Records this object could not reserve on each CPU since its last one (carried in the
 * next record's hdr.lost). Not ct_events.h's helpers: those count without atomics, which
 * is right for TC programs (bottom halves disabled, nothing else on the CPU writes the
 * counters meanwhile) but not here, where sock_release runs in process context and a
 * sockops callback (an RST received in softirq) can interrupt it on the same CPU.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ctmapd_fate_lost SEC(".maps");

/* What the socket storage holds: the flow as the socket sees it. */
struct fate_sock {
	union v6addr local;	/* v4: first 4 bytes */
	union v6addr remote;
	__be16 lport;
	__be16 rport;
	__u8 family;		/* 4 or 6 */
	__u8 proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 expired;		/* set once: STATE_CB and sock_release both see a TCP close */
	__u8 pad;
	__u32 cluster_id;	/* the cluster whose maps are searched besides the global ones */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fate_sock);
} ctmapd_fate_socks SEC(".maps");

#define NSEC_PER_SEC 1000000000ULL
/* <sys/socket.h> does not build for -target bpf. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define TCP_CLOSE 7 /* include/net/tcp_states.h */

/*
 * The programs run in process context (sock_release, sockops from a syscall) and in
 * softirq (sockops on a received segment) on the same CPU, so the per-CPU counters are
 * added atomically: a softirq may interrupt a process-context increment.
 */
#define FATE_STAT_ADD(_s, _field, _n)					\
	do {								\
		if (_s)							\
			__sync_fetch_and_add(&(_s)->_field, (_n));	\
	} while (0)

static __always_inline struct ct_fate_stats *fate_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ctmapd_fate_stats, &zero);
}

/*
 * One CLOSE record for an expired entry (mode all). A failed reserve is counted on this
 * CPU and in the stats; the next record that fits carries the count and resets it.
 */
static __always_inline void fate_emit_close(const void *key, __u32 key_size, const struct ct_entry *e, __u8 family,
					    __u8 map, __u32 cluster_id, __u32 now, struct ct_fate_stats *st)
{
	__u32 zero = 0;
	__u64 *lost, n = 0;
	struct ct_event *ev;

	if (ctmapd_config.events != CT_EVENTS_ALL)
		return;
	lost = bpf_map_lookup_elem(&ctmapd_fate_lost, &zero);
	ev = bpf_ringbuf_reserve(&ctmapd_ct_events, sizeof(*ev), 0);
	if (!ev) {
		if (lost)
			__sync_fetch_and_add(lost, 1);
		FATE_STAT_ADD(st, events_lost, 1);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.type = CT_EVENT_CLOSE;
	ev->hdr.family = family;
	ev->hdr.map = map;
	ev->hdr.reason = CT_REASON_SOCKET_CLOSE;
	ev->hdr.cluster_id = cluster_id;
	/*
	 * Take what was counted and subtract exactly that (an add whose result is unused
	 * is the one atomic every BPF target has): a loss counted meanwhile by an interrupting
	 * program stays for the next record.
	 */
	if (lost) {
		n = *lost;
		if (n)
			__sync_fetch_and_add(lost, -n);
	}
	ev->hdr.lost = n > 0xffffffff ? 0xffffffff : n;
	ev->hdr.now = now;
	if (key_size == sizeof(struct ipv4_ct_tuple))
		__builtin_memcpy(&ev->key.v4, key, sizeof(struct ipv4_ct_tuple));
	else
		__builtin_memcpy(&ev->key.v6, key, sizeof(struct ipv6_ct_tuple));
	__builtin_memcpy(&ev->entry, e, sizeof(*e));
	bpf_ringbuf_submit(ev, 0);
}

/*
 * Expires `key` in `map` when it is there: both closing bits, lifetime now + close timeout
 * (one read-modify-write of the flags word, as the datapath's own flag updates). Returns 1
 * when the entry was found.
 */
static __always_inline int fate_expire_key(void *map, const void *key, __u32 key_size, __u8 family, __u8 map_kind,
					   __u32 cluster_id, __u32 now, struct ct_fate_stats *st)
{
	struct ct_entry *e;

	if (!map)
		return 0;
	e = bpf_map_lookup_elem(map, key);
	if (!e)
		return 0;
	e->flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
	e->lifetime = now + CT_CLOSE_TIMEOUT;
	FATE_STAT_ADD(st, expired, 1);
	fate_emit_close(key, key_size, e, family, map_kind, cluster_id, now, st);
	return 1;
}

/*
 * The candidate keys of the socket's flow (file comment). `first_src`/`first_dst` are the
 * two orders; flags OUT and IN of each, then SERVICE. Returns how many flow (non-service)
 * entries were found, over the global map and the cluster's.
 */
#define FATE_EXPIRE_FAMILY(_tuple_t, _fam, _copy)						\
	static __always_inline int fate_expire##_fam(void *global, void *cluster, const struct fate_sock *fs, \
						       __u8 map_kind, __u32 now, struct ct_fate_stats *st) \
	{											\
		_tuple_t t = {};								\
		int found = 0, order, flags;							\
												\
		t.nexthdr = fs->proto;								\
		for (order = 0; order < 2; order++) {						\
			/* order 0: the socket sent first; 1: the peer did. */			\
			if (order == 0) {							\
				_copy(t.daddr, &fs->local);					\
				_copy(t.saddr, &fs->remote);					\
				t.sport = fs->lport;						\
				t.dport = fs->rport;						\
			} else {								\
				_copy(t.daddr, &fs->remote);					\
				_copy(t.saddr, &fs->local);					\
				t.sport = fs->rport;						\
				t.dport = fs->lport;						\
			}									\
			for (flags = 0; flags < 3; flags++) {					\
				int hit;							\
												\
				t.flags = flags == 0 ? TUPLE_F_OUT : flags == 1 ? TUPLE_F_IN : TUPLE_F_SERVICE; \
				hit = fate_expire_key(global, &t, sizeof(t), _fam, map_kind, 0, now, st); \
				hit += fate_expire_key(cluster, &t, sizeof(t), _fam, map_kind, fs->cluster_id, now, st); \
				if (flags != 2)							\
					found += hit;						\
			}									\
		}										\
		return found;									\
	}

/* The tuple is packed: addresses are copied by value, never through a member pointer. */
#define COPY4(_dst, _src) ((_dst) = (_src)->p32[0])
#define COPY6(_dst, _src) __builtin_memcpy(&(_dst), (_src), 16)

FATE_EXPIRE_FAMILY(struct ipv4_ct_tuple, 4, COPY4)
FATE_EXPIRE_FAMILY(struct ipv6_ct_tuple, 6, COPY6)

/*
 * Expires every entry of the recorded socket, once. One call site per map, as in the
 * datapath, so that the verifier can inline each map's lookup.
 */
static __always_inline void fate_close(struct fate_sock *fs)
{
	struct ct_fate_stats *st;
	void *cluster = NULL;
	__u32 now, id;
	int found;

	if (fs->expired || !fs->family)
		return;
	fs->expired = 1;
	st = fate_stats();
	now = bpf_ktime_get_ns() / NSEC_PER_SEC;
	id = fs->cluster_id;
	if (fs->family == 4) {
		if (fs->proto == IPPROTO_TCP) {
			if (id)
				cluster = bpf_map_lookup_elem(&cilium_per_cluster_ct_tcp4, &id);
			found = fate_expire4(&cilium_ct4_global, cluster, fs, CT_EVENT_MAP_TCP, now, st);
		} else {
			if (id)
				cluster = bpf_map_lookup_elem(&cilium_per_cluster_ct_any4, &id);
			found = fate_expire4(&cilium_ct_any4_global, cluster, fs, CT_EVENT_MAP_ANY, now, st);
		}
	} else {
		if (fs->proto == IPPROTO_TCP) {
			if (id)
				cluster = bpf_map_lookup_elem(&cilium_per_cluster_ct_tcp6, &id);
			found = fate_expire6(&cilium_ct6_global, cluster, fs, CT_EVENT_MAP_TCP, now, st);
		} else {
			if (id)
				cluster = bpf_map_lookup_elem(&cilium_per_cluster_ct_any6, &id);
			found = fate_expire6(&cilium_ct_any6_global, cluster, fs, CT_EVENT_MAP_ANY, now, st);
		}
	}
	if (!found)
		FATE_STAT_ADD(st, key_missing, 1);
}

/* An IPv4 address in IPv6 form (::ffff:a.b.c.d): a dual-stack socket's IPv4 flow. */
static __always_inline bool v4_mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* Fills the family's addresses from sockops' u32 arrays; a v4-mapped pair is IPv4. */
static __always_inline void fate_fill_addrs(struct fate_sock *fs, __u32 family, __u32 local4, __u32 remote4,
					    const __u32 local6[4], const __u32 remote6[4])
{
	if (family == AF_INET) {
		fs->family = 4;
		fs->local.p32[0] = local4;
		fs->remote.p32[0] = remote4;
		return;
	}
	if (v4_mapped(local6) && v4_mapped(remote6)) {
		fs->family = 4;
		fs->local.p32[0] = local6[3];
		fs->remote.p32[0] = remote6[3];
		return;
	}
	fs->family = 6;
	__builtin_memcpy(fs->local.p32, local6, 16);
	__builtin_memcpy(fs->remote.p32, remote6, 16);
}

SEC("sockops")
int ct_fate_sockops(struct bpf_sock_ops *skops)
{
	struct fate_sock *fs;
	struct bpf_sock *sk;
	__u32 local6[4], remote6[4];

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (skops->family != AF_INET && skops->family != AF_INET6)
			return 1;
		sk = skops->sk;
		if (!sk)
			return 1;
		fs = bpf_sk_storage_get(&ctmapd_fate_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!fs) {
			FATE_STAT_ADD(fate_stats(), storage_full, 1);
			return 1;
		}
		local6[0] = skops->local_ip6[0];
		local6[1] = skops->local_ip6[1];
		local6[2] = skops->local_ip6[2];
		local6[3] = skops->local_ip6[3];
		remote6[0] = skops->remote_ip6[0];
		remote6[1] = skops->remote_ip6[1];
		remote6[2] = skops->remote_ip6[2];
		remote6[3] = skops->remote_ip6[3];
		fate_fill_addrs(fs, skops->family, skops->local_ip4, skops->remote_ip4, local6, remote6);
		/* local_port is in host order; remote_port holds the network-order port as a u32. */
		fs->lport = bpf_htons((__u16)skops->local_port);
		fs->rport = bpf_htons((__u16)bpf_ntohl(skops->remote_port));
		fs->proto = IPPROTO_TCP;
		fs->expired = 0;
		fs->cluster_id = ctmapd_config.cluster_id;
		FATE_STAT_ADD(fate_stats(), keys_recorded, 1);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[1]: the new state. An RST makes it TCP_CLOSE while the fd is still open. */
		if (skops->args[1] != TCP_CLOSE)
			return 1;
		sk = skops->sk;
		if (!sk)
			return 1;
		fs = bpf_sk_storage_get(&ctmapd_fate_socks, sk, 0, 0);
		if (fs)
			fate_close(fs);
		return 1;
	}
	return 1;
}

/*
 * A UDP socket's first egress packet: its 4-tuple from the packet (an unconnected socket
 * has no peer address of its own). Later packets find the storage and stop there, so a
 * socket that talks to several peers is covered for its first one only (README).
 */
SEC("cgroup_skb/egress")
int ct_fate_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct fate_sock *fs;
	__be16 ports[2];
	__u32 off;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return 1;
	if (bpf_sk_storage_get(&ctmapd_fate_socks, sk, 0, 0))
		return 1;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0 || ip.protocol != IPPROTO_UDP || ip.ihl < 5 ||
		    (ip.frag_off & bpf_htons(0x1fff)))
			return 1;
		off = ip.ihl * 4;
		if (bpf_skb_load_bytes(skb, off & 0x3f, ports, sizeof(ports)) < 0)
			return 1;
		fs = bpf_sk_storage_get(&ctmapd_fate_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!fs)
			goto full;
		fs->family = 4;
		fs->local.p32[0] = ip.saddr;
		fs->remote.p32[0] = ip.daddr;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		/* Extension headers before UDP are not followed: such a socket is not covered. */
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != IPPROTO_UDP)
			return 1;
		if (bpf_skb_load_bytes(skb, sizeof(ip6), ports, sizeof(ports)) < 0)
			return 1;
		fs = bpf_sk_storage_get(&ctmapd_fate_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!fs)
			goto full;
		fs->family = 6;
		__builtin_memcpy(&fs->local, &ip6.saddr, 16);
		__builtin_memcpy(&fs->remote, &ip6.daddr, 16);
	} else {
		return 1;
	}
	fs->lport = ports[0];
	fs->rport = ports[1];
	fs->proto = IPPROTO_UDP;
	fs->expired = 0;
	fs->cluster_id = ctmapd_config.cluster_id;
	FATE_STAT_ADD(fate_stats(), keys_recorded, 1);
	return 1;
full:
	FATE_STAT_ADD(fate_stats(), storage_full, 1);
	return 1;
}

/* close(), process exit, kill -9: TCP and UDP, IPv4 and IPv6. */
SEC("cgroup/sock_release")
int ct_fate_release(struct bpf_sock *ctx)
{
	struct fate_sock *fs;

	fs = bpf_sk_storage_get(&ctmapd_fate_socks, ctx, 0, 0);
	if (fs)
		fate_close(fs);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
