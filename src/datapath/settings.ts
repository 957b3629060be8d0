/**
 * What bpf/ct_datapath.bpf.c is configured with before load: the map names it declares
 * and the .rodata settings (struct ct_datapath_config) derived from ctmapd's flags. No
 * native code here, so the CLI, the daemon and unprivileged tests can all use it.
 */
import { CT_DATAPATH_CONFIG } from '../maps/ctmap/layout';
import { parseConfig, type Config } from '../server/config';

/** The global CT maps the object declares, by family (facts §1 names). */
export const CT_DATAPATH_FAMILY_MAPS = {
  ipv4: ['cilium_ct4_global', 'cilium_ct_any4_global'],
  ipv6: ['cilium_ct6_global', 'cilium_ct_any6_global'],
} as const;

/**
 * The per-CPU counters map (struct ct_datapath_stats). Reused when pinned, so whoever
 * pinned it reads what the programs count; otherwise the object keeps a private one.
 */
export const CT_DATAPATH_STATS_MAP = 'ctmapd_ct_stats';

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
  readonly enableIpv4: boolean;
  readonly enableIpv6: boolean;
}

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
    enableIpv4: config.enableIpv4,
    enableIpv6: config.enableIpv6,
  };
}

/** The settings of a daemon started without flags (facts §5 defaults, both families). */
export const DEFAULT_DATAPATH_SETTINGS: DatapathSettings = Object.freeze(datapathSettingsFrom(parseConfig([], {})));

/** struct ct_datapath_config as the object's .rodata holds it (little-endian host). */
export function encodeDatapathSettings(s: DatapathSettings): Buffer {
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
  return buf;
}

