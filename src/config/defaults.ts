/**
 * Cilium's defaults and limits, written once: the flag table (./config.ts), the map specs,
 * the datapath settings and through them the BPF programs' .rodata all take them from here.
 */

/** --max-connected-clusters: 255 (default) or 511; ClusterIDMax equals it. */
export const CLUSTER_ID_MAX_VALUES = [255, 511] as const;
export const DEFAULT_CLUSTER_ID_MAX = 255;

/** Valid max_entries of every CT and SNAT map (facts §1): [1024, 16 Mi]. */
export const MAP_SIZE_MIN = 1024;
export const MAP_SIZE_MAX = 16 * 1024 * 1024;

/** --bpf-ct-global-tcp-max and --bpf-ct-global-any-max (Cilium's defaults). */
export const DEFAULT_CT_TCP_MAX = 524288;
export const DEFAULT_CT_ANY_MAX = 262144;

/** Where the daemon pins (bpffs) and listens (unix socket) without flags. */
export const DEFAULT_BPF_ROOT = '/sys/fs/bpf';
export const DEFAULT_SOCKET = '/run/ctmapd/ctmapd.sock';
/**
 * --socket-readonly-mode: owner and group only, like the main socket. A dump shows every
 * connection of the node, so reading is widened on purpose (--socket-readonly-group, or
 * 0666 for every local user), never by default.
 */
export const DEFAULT_SOCKET_READONLY_MODE = 0o660;

/**
 * CT lifetimes in seconds (facts §5, Cilium's --bpf-ct-timeout-* defaults) and
 * --monitor-aggregation-interval. The datapath gets them through its .rodata settings
 * (src/datapath/settings.ts), never from a copy in bpf/.
 */
export const CT_TIMEOUT_DEFAULTS = Object.freeze({
  regularTcp: 8000,
  regularAny: 60,
  serviceTcp: 8000,
  serviceAny: 60,
  serviceTcpGrace: 60,
  regularTcpSyn: 60,
  regularTcpFin: 10,
});
export const DEFAULT_MONITOR_AGGREGATION_INTERVAL = 5;

/**
 * --ct-events (bpf/ct_events.h, enum ct_events_mode): what the datapath writes into its
 * ring buffer. `signals` by default: Cilium's datapath sends SIGNAL_CT_FILL_UP too.
 */
export const CT_EVENTS_MODES = ['none', 'signals', 'all'] as const;
export type CtEventsMode = (typeof CT_EVENTS_MODES)[number];
export const DEFAULT_CT_EVENTS: CtEventsMode = 'signals';
/** --ct-fill-up-share: percent of a map created since the last pass that signals fill-up. */
export const DEFAULT_CT_FILL_UP_SHARE = 50;
/** --ct-events-ring-size: 4 MiB, ~37,000 NEW/CLOSE records of 112 bytes (+8 of header). */
export const DEFAULT_CT_EVENTS_RING_SIZE = 4 << 20;
/**
 * --ct-events-buffer: events per CTEvents subscriber (~100 bytes each held, the events
 * themselves shared between subscribers): 16 GC delete steps, or ~1/8 s of a busy node's
 * NEW/CLOSE rate, before a stalled client starts losing events.
 */
export const DEFAULT_CT_EVENTS_BUFFER = 65536;

/** The adaptive GC interval (facts §6): first pass after 5 min, never below 10 s, at most 12 h. */
export const GC_INITIAL_INTERVAL_SECONDS = 5 * 60;
export const GC_MIN_INTERVAL_SECONDS = 10;
export const GC_MAX_INTERVAL_SECONDS = 12 * 60 * 60;
