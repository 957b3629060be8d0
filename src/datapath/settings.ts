/**
 * What bpf/ct_datapath.bpf.c is configured with before load: the map names it declares
 * and the .rodata settings (struct ct_datapath_config) derived from ctmapd's flags. No
 * native code here, so the CLI, the daemon and unprivileged tests can all use it.
 */
import { invalidArgument } from '../errors';
import { CT_DATAPATH_CONFIG } from '../maps/ctmap/layout';
import { CtEventsModeCode } from '../maps/ctmap/events/layout';
import { clusterOuterMapName } from '../maps/ctmap/spec';
import { CLUSTER_ID_MAX_VALUES } from '../config/defaults';
import type { Config } from '../config/config';
import { CT_TIMEOUT_DEFAULTS, CtEventsMode, DEFAULT_CLUSTER_ID_MAX, DEFAULT_CT_EVENTS, DEFAULT_MONITOR_AGGREGATION_INTERVAL } from '../config/defaults';

/** The global CT maps the object declares, by family (facts §1 names). */
export const CT_DATAPATH_FAMILY_MAPS = {
  ipv4: ['cilium_ct4_global', 'cilium_ct_any4_global'],
  ipv6: ['cilium_ct6_global', 'cilium_ct_any6_global'],
} as const;

/**
 * The per-cluster outer maps (ARRAY_OF_MAPS) the object declares, by family. Reused when
 * the daemon pinned them (some cluster joined); otherwise one empty slot each.
 */
export const CT_DATAPATH_CLUSTER_MAPS = {
  ipv4: [clusterOuterMapName('ipv4', 'tcp'), clusterOuterMapName('ipv4', 'any')],
  ipv6: [clusterOuterMapName('ipv6', 'tcp'), clusterOuterMapName('ipv6', 'any')],
} as const;

/**
 * The per-CPU counters map (PERCPU_ARRAY, one slot, struct ct_datapath_stats): the
 * daemon creates and pins it (side-maps.ts), the loader requires it, so the daemon reads
 * what the programs count.
 */
export const CT_DATAPATH_STATS_MAP = 'ctmapd_ct_stats';

/**
 * The fate-sharing counters map (PERCPU_ARRAY, one slot, struct ct_fate_stats of
 * bpf/ct_fate.h), pinned by the daemon like CT_DATAPATH_STATS_MAP.
 */
export const CT_FATE_STATS_MAP = 'ctmapd_fate_stats';

/**
 * The ring buffer of the datapath's events (bpf/ct_events.h), pinned by the daemon under
 * <bpf-root>/tc/globals; the programs that write into it reuse it from there.
 */
export const CT_EVENTS_RING_MAP = 'ctmapd_ct_events';

/**
 * The daemon's datapath settings (ARRAY, one slot, struct ct_datapath_config), written at
 * every daemon start from its flags: what the loader writes into .rodata, under overrides.
 */
export const CT_DATAPATH_CONFIG_MAP = 'ctmapd_datapath_config';

/** The fill-up steps (ARRAY, one slot, struct ct_pressure_config), written by the daemon. */
export const CT_PRESSURE_MAP = 'ctmapd_ct_pressure';

/** The load-time settings (struct ct_datapath_config), in seconds where a time. */
export interface DatapathSettings {
  readonly lifetimeTcp: number;
  readonly lifetimeNonTcp: number;
  readonly synTimeout: number;
  readonly closeTimeout: number;
  readonly reportInterval: number;
  /** TCP flags recorded in {rx,tx}_flags_seen; Cilium records all (0xff). */
  readonly reportFlags: number;
  /** 0: the global maps (unless skb->mark carries a cluster id); else that cluster's maps. */
  readonly clusterId: number;
  /** ClusterIDMax (--max-connected-clusters, 255 or 511): how a mark's cluster id is read. */
  readonly clusterIdMax: number;
  readonly enableIpv4: boolean;
  readonly enableIpv6: boolean;
  /** --ct-events: what the programs write into the ctmapd_ct_events ring (bpf/ct_events.h). */
  readonly events: CtEventsMode;
}

/** enum ct_events_mode of bpf/ct_events.h, by --ct-events name. */
export const CT_EVENTS_MODE_VALUES: Readonly<Record<CtEventsMode, number>> = Object.freeze({
  none: CtEventsModeCode.NONE,
  signals: CtEventsModeCode.SIGNALS,
  all: CtEventsModeCode.ALL,
});

/** The settings ctmapd's flags ask for (facts §5): the daemon's and the CLI's one source. */
export function datapathSettingsFrom(
  config: Pick<
    Config,
    | 'bpfCtTimeoutRegularTcp'
    | 'bpfCtTimeoutRegularAny'
    | 'bpfCtTimeoutRegularTcpSyn'
    | 'bpfCtTimeoutRegularTcpFin'
    | 'monitorAggregationInterval'
    | 'enableIpv4'
    | 'enableIpv6'
    | 'maxConnectedClusters'
    | 'ctEvents'
  >,
  clusterId = 0,
): DatapathSettings {
  return {
    lifetimeTcp: config.bpfCtTimeoutRegularTcp,
    lifetimeNonTcp: config.bpfCtTimeoutRegularAny,
    synTimeout: config.bpfCtTimeoutRegularTcpSyn,
    closeTimeout: config.bpfCtTimeoutRegularTcpFin,
    reportInterval: config.monitorAggregationInterval,
    reportFlags: 0xff,
    clusterId,
    clusterIdMax: config.maxConnectedClusters,
    enableIpv4: config.enableIpv4,
    enableIpv6: config.enableIpv6,
    events: config.ctEvents,
  };
}

/** The settings of a daemon started without flags (facts §5 defaults, both families). */
export const DEFAULT_DATAPATH_SETTINGS: DatapathSettings = Object.freeze(
  datapathSettingsFrom({
    bpfCtTimeoutRegularTcp: CT_TIMEOUT_DEFAULTS.regularTcp,
    bpfCtTimeoutRegularAny: CT_TIMEOUT_DEFAULTS.regularAny,
    bpfCtTimeoutRegularTcpSyn: CT_TIMEOUT_DEFAULTS.regularTcpSyn,
    bpfCtTimeoutRegularTcpFin: CT_TIMEOUT_DEFAULTS.regularTcpFin,
    monitorAggregationInterval: DEFAULT_MONITOR_AGGREGATION_INTERVAL,
    enableIpv4: true,
    enableIpv6: true,
    maxConnectedClusters: DEFAULT_CLUSTER_ID_MAX,
    ctEvents: DEFAULT_CT_EVENTS,
  }),
);

/**
 * Checks what the C side relies on. Throws CtmapError invalid-argument naming the setting:
 * clusterIdMax not 255 or 511, clusterId outside 0..clusterIdMax, a time or reportFlags
 * that does not fit its field.
 */
export function validateDatapathSettings(s: DatapathSettings): void {
  if (!(CLUSTER_ID_MAX_VALUES as readonly number[]).includes(s.clusterIdMax)) {
    throw invalidArgument('clusterIdMax', `${s.clusterIdMax}: --max-connected-clusters is ${CLUSTER_ID_MAX_VALUES.join(' or ')}`);
  }
  if (!Number.isInteger(s.clusterId) || s.clusterId < 0 || s.clusterId > s.clusterIdMax) {
    throw invalidArgument('cluster-id', `${s.clusterId} is out of range: 1..${s.clusterIdMax} for a cluster (--max-connected-clusters), 0 for the global maps`);
  }
  for (const key of ['lifetimeTcp', 'lifetimeNonTcp', 'synTimeout', 'closeTimeout', 'reportInterval'] as const) {
    const v = s[key];
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw invalidArgument(key, `${v} seconds does not fit a u32`);
  }
  if (!Object.hasOwn(CT_EVENTS_MODE_VALUES, s.events)) {
    throw invalidArgument('events', `${String(s.events)}: --ct-events is ${Object.keys(CT_EVENTS_MODE_VALUES).join(', ')}`);
  }
  if (!Number.isInteger(s.reportFlags) || s.reportFlags < 0 || s.reportFlags > 0xff) {
    throw invalidArgument('reportFlags', `${s.reportFlags} is not a TCP flags byte`);
  }
}

/**
 * skb->mark carrying `clusterId` in Cilium's encoding (format_cluster_id_mark |
 * MARK_MAGIC_CLUSTER_ID; layout in bpf/ctmap.h): bits 0-7 the id's low byte, bits 8-11
 * the magic 0x2, and with ClusterIDMax 511 bit 31 the id's bit 8. Other bits are 0.
 * Throws invalid-argument for an id outside 0..clusterIdMax.
 */
export function clusterIdMark(clusterId: number, clusterIdMax: number): number {
  validateDatapathSettings({ ...DEFAULT_DATAPATH_SETTINGS, clusterId, clusterIdMax });
  const identityLocalBits = clusterIdMax > 0xff ? 15 : 16;
  return ((clusterId & 0xff) | ((clusterId & ~0xff) << (8 + identityLocalBits)) | 0x0200) >>> 0;
}

/** struct ct_datapath_config as the object's .rodata holds it (little-endian host). */
export function encodeDatapathSettings(s: DatapathSettings): Buffer {
  validateDatapathSettings(s);
  const f = CT_DATAPATH_CONFIG.fields;
  const buf = Buffer.alloc(CT_DATAPATH_CONFIG.size);
  buf.writeUInt32LE(s.lifetimeTcp, f.lifetime_tcp.offset);
  buf.writeUInt32LE(s.lifetimeNonTcp, f.lifetime_nontcp.offset);
  buf.writeUInt32LE(s.synTimeout, f.syn_timeout.offset);
  buf.writeUInt32LE(s.closeTimeout, f.close_timeout.offset);
  buf.writeUInt32LE(s.reportInterval, f.report_interval.offset);
  buf.writeUInt32LE(s.clusterId, f.cluster_id.offset);
  buf.writeUInt8(s.reportFlags, f.report_flags.offset);
  buf.writeUInt8(s.enableIpv4 ? 1 : 0, f.enable_ipv4.offset);
  buf.writeUInt8(s.enableIpv6 ? 1 : 0, f.enable_ipv6.offset);
  buf.writeUInt8(CT_EVENTS_MODE_VALUES[s.events], f.events.offset);
  buf.writeUInt32LE(s.clusterIdMax, f.cluster_id_max.offset);
  return buf;
}

/** The inverse of encodeDatapathSettings, for a buffer of CT_DATAPATH_CONFIG.size bytes. */
export function decodeDatapathSettings(buf: Buffer): DatapathSettings {
  const f = CT_DATAPATH_CONFIG.fields;
  return {
    lifetimeTcp: buf.readUInt32LE(f.lifetime_tcp.offset),
    lifetimeNonTcp: buf.readUInt32LE(f.lifetime_nontcp.offset),
    synTimeout: buf.readUInt32LE(f.syn_timeout.offset),
    closeTimeout: buf.readUInt32LE(f.close_timeout.offset),
    reportInterval: buf.readUInt32LE(f.report_interval.offset),
    reportFlags: buf.readUInt8(f.report_flags.offset),
    clusterId: buf.readUInt32LE(f.cluster_id.offset),
    clusterIdMax: buf.readUInt32LE(f.cluster_id_max.offset),
    enableIpv4: buf.readUInt8(f.enable_ipv4.offset) !== 0,
    enableIpv6: buf.readUInt8(f.enable_ipv6.offset) !== 0,
    events: eventsModeOf(buf.readUInt8(f.events.offset)),
  };
}


/** The --ct-events name of an enum ct_events_mode value; an unknown value reads as none. */
function eventsModeOf(value: number): CtEventsMode {
  const found = (Object.keys(CT_EVENTS_MODE_VALUES) as CtEventsMode[]).find((m) => CT_EVENTS_MODE_VALUES[m] === value);
  return found ?? 'none';
}
