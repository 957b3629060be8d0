/**
 * Byte layouts of Cilium's CT key and entry (ctmap-facts §2-3). The codecs read and write
 * through these offsets only, and test/kernel/btf-layout.test.ts checks every size and
 * offset here against the BTF of the object compiled from bpf/ctmap.h, the way Cilium's
 * pkg/alignchecker does.
 */
import type { StructLayout } from '../layout';

/** struct ipv4_ct_tuple (14 bytes, packed). */
export const CT_KEY4: StructLayout = {
  cName: 'ipv4_ct_tuple',
  size: 14,
  fields: {
    daddr: { offset: 0, size: 4 },
    saddr: { offset: 4, size: 4 },
    dport: { offset: 8, size: 2 },
    sport: { offset: 10, size: 2 },
    nexthdr: { offset: 12, size: 1 },
    flags: { offset: 13, size: 1 },
  },
};

/** struct ipv6_ct_tuple (38 bytes, packed). */
export const CT_KEY6: StructLayout = {
  cName: 'ipv6_ct_tuple',
  size: 38,
  fields: {
    daddr: { offset: 0, size: 16 },
    saddr: { offset: 16, size: 16 },
    dport: { offset: 32, size: 2 },
    sport: { offset: 34, size: 2 },
    nexthdr: { offset: 36, size: 1 },
    flags: { offset: 37, size: 1 },
  },
};

/**
 * struct ct_entry (56 bytes). `flags` is the 16-bit word of bitfields starting with
 * rx_closing; the C header names it as an anonymous union member `flags` so that BTF has
 * an offset for it.
 */
export const CT_ENTRY: StructLayout = {
  cName: 'ct_entry',
  size: 56,
  fields: {
    union0: { offset: 0, size: 16 },
    packets: { offset: 16, size: 8 },
    bytes: { offset: 24, size: 8 },
    lifetime: { offset: 32, size: 4 },
    flags: { offset: 36, size: 2 },
    rev_nat_index: { offset: 38, size: 2 },
    nat_port: { offset: 40, size: 2 },
    tx_flags_seen: { offset: 42, size: 1 },
    rx_flags_seen: { offset: 43, size: 1 },
    src_sec_id: { offset: 44, size: 4 },
    last_tx_report: { offset: 48, size: 4 },
    last_rx_report: { offset: 52, size: 4 },
  },
};

/** Counters of struct ct_datapath_stats, in C order; each a u64. */
export const CT_DATAPATH_STATS_COUNTERS = [
  'packets',
  'lookups',
  'hits_reply',
  'hits_related',
  'hits_established',
  'creates',
  'create_failed',
  'closes',
  'reopens',
  'related_misses',
  'skipped',
  'malformed',
  'cluster_map_missing',
  // Issue 13: flow entries inserted by map (the fill-up pressure counters), FILL_UP signals.
  'creates_tcp4',
  'creates_any4',
  'creates_tcp6',
  'creates_any6',
  'fill_up_signals',
  // struct ct_events_cpu `events`, the last member: the ring's per-CPU state.
  'events_sent',
  'events_lost',
  'events_lost_reported',
] as const;

/** The counters that are struct ct_events_cpu's members (sent, lost, lost_reported), in order. */
const EVENTS_CPU_COUNTERS = ['events_sent', 'events_lost', 'events_lost_reported'] as const;

/** Byte offset of each counter in struct ct_datapath_stats: the i-th u64. */
export const CT_DATAPATH_STATS_OFFSETS: Readonly<Record<(typeof CT_DATAPATH_STATS_COUNTERS)[number], number>> = Object.freeze(
  Object.fromEntries(CT_DATAPATH_STATS_COUNTERS.map((name, i) => [name, i * 8])) as Record<(typeof CT_DATAPATH_STATS_COUNTERS)[number], number>,
);

/**
 * struct ct_events_cpu (24 bytes, ctmap.h): a ring writer's per-CPU state, embedded as the
 * last member `events` of struct ct_datapath_stats.
 */
export const CT_EVENTS_CPU: StructLayout = {
  cName: 'ct_events_cpu',
  size: 24,
  fields: { sent: { offset: 0, size: 8 }, lost: { offset: 8, size: 8 }, lost_reported: { offset: 16, size: 8 } },
};

/**
 * struct ct_datapath_stats (168 bytes): the per-CPU value of bpf/ct_datapath.bpf.c's
 * ctmapd_ct_stats map, one u64 counter after the other; its last member is a struct
 * ct_events_cpu whose three u64 are the counters events_sent, events_lost and
 * events_lost_reported (CT_DATAPATH_STATS_OFFSETS has every counter's offset).
 */
export const CT_DATAPATH_STATS: StructLayout = {
  cName: 'ct_datapath_stats',
  size: CT_DATAPATH_STATS_COUNTERS.length * 8,
  fields: {
    ...Object.fromEntries(
      CT_DATAPATH_STATS_COUNTERS.filter((n) => !(EVENTS_CPU_COUNTERS as readonly string[]).includes(n)).map((name) => [name, { offset: CT_DATAPATH_STATS_OFFSETS[name], size: 8 }]),
    ),
    events: { offset: CT_DATAPATH_STATS_OFFSETS.events_sent, size: CT_EVENTS_CPU.size },
  },
};

/** Counters of struct ct_fate_stats (bpf/ct_fate.h), in C order; each a u64. */
export const CT_FATE_STATS_COUNTERS = ['keys_recorded', 'expired', 'storage_full', 'key_missing', 'events_lost'] as const;

/**
 * struct ct_fate_stats (40 bytes): the per-CPU value of map ctmapd_fate_stats, the
 * counters of socket fate-sharing (bpf/ct_fate.bpf.c).
 */
export const CT_FATE_STATS: StructLayout = {
  cName: 'ct_fate_stats',
  size: CT_FATE_STATS_COUNTERS.length * 8,
  fields: Object.fromEntries(CT_FATE_STATS_COUNTERS.map((name, i) => [name, { offset: i * 8, size: 8 }])),
};

/**
 * struct ct_datapath_config (32 bytes): the .rodata of bpf/ct_datapath.bpf.c
 * (`ctmapd_config`), written by src/datapath/ before the object is loaded.
 */
export const CT_DATAPATH_CONFIG: StructLayout = {
  cName: 'ct_datapath_config',
  size: 32,
  fields: {
    lifetime_tcp: { offset: 0, size: 4 },
    lifetime_nontcp: { offset: 4, size: 4 },
    syn_timeout: { offset: 8, size: 4 },
    close_timeout: { offset: 12, size: 4 },
    report_interval: { offset: 16, size: 4 },
    cluster_id: { offset: 20, size: 4 },
    report_flags: { offset: 24, size: 1 },
    enable_ipv4: { offset: 25, size: 1 },
    enable_ipv6: { offset: 26, size: 1 },
    events: { offset: 27, size: 1 },
    cluster_id_max: { offset: 28, size: 4 },
  },
};

/** Offsets inside union0 for service entries: { reserved u64, backend_id u64 }. */
export const CT_ENTRY_BACKEND_ID_OFFSET = 8;

/** Tuple flags (key byte `flags`). */
export const TupleFlag = {
  OUT: 0,
  IN: 1,
  RELATED: 2,
  SERVICE: 4,
} as const;

/** ct_entry.flags bits, in bit order (facts §3). Index = bit number. */
export const CT_ENTRY_FLAG_NAMES = [
  'RxClosing',
  'TxClosing',
  'Nat64',
  'LBLoopback',
  'SeenNonSyn',
  'NodePort',
  'ProxyRedirect',
  'DSRInternal',
  'FromL7LB',
  'Reserved1',
  'FromTunnel',
] as const;

export const CtEntryFlag = {
  RxClosing: 1 << 0,
  TxClosing: 1 << 1,
  Nat64: 1 << 2,
  LBLoopback: 1 << 3,
  SeenNonSyn: 1 << 4,
  NodePort: 1 << 5,
  ProxyRedirect: 1 << 6,
  DSRInternal: 1 << 7,
  FromL7LB: 1 << 8,
  Reserved1: 1 << 9,
  FromTunnel: 1 << 10,
} as const;

export const IPPROTO = {
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  ICMPV6: 58,
} as const;
