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
