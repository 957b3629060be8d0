/**
 * The SNAT map table (ctmap-facts §1, §4): names and specs of the global NAT maps. Pure
 * functions of the configuration; nothing here touches a backend.
 */
import * as path from 'node:path';
import { MapFlag, MapSpec, MapType } from '../types';
import type { Family } from '../addr';
import { keySize } from '../ctmap/codec';
import { CtMapsConfig } from '../ctmap/spec';
import { clusterInnerSpecFor, clusterOuterSpecFor, globalsDir } from '../cluster-spec';
import { natValueSize } from './codec';

/**
 * What the NAT maps depend on. `natMax` is --bpf-nat-global-max, already defaulted
 * (src/config/config.ts natGlobalMax: 2/3 of the CT maps, within [1024, 16Mi]); the other
 * fields are the CT maps' own, so the daemon can pass `{ ...ctConfig, natMax }`.
 */
export interface NatMapsConfig extends Pick<CtMapsConfig, 'bpfRoot' | 'enableIPv4' | 'enableIPv6' | 'distributedLru' | 'clusterIdMax'> {
  natMax: number;
}

/** Identifies one NAT map: cluster 0 is the global map of the family. */
export interface NatMapRef {
  family: Family;
  clusterId: number;
}

/** `cilium_snat_v4_external` / `cilium_snat_v6_external` (the kernel keeps 15 characters). */
export function natMapName(family: Family): string {
  return family === 'ipv4' ? 'cilium_snat_v4_external' : 'cilium_snat_v6_external';
}

/** A string key for maps keyed by NatMapRef ("ipv4/0"). */
export function natRefKey(ref: NatMapRef): string {
  return `${ref.family}/${ref.clusterId}`;
}

/** A short label for messages and logs ("snat4", "snat6 cluster 3"). */
export function natRefLabel(ref: NatMapRef): string {
  return `snat${ref.family === 'ipv4' ? '4' : '6'}${ref.clusterId ? ` cluster ${ref.clusterId}` : ''}`;
}

/**
 * The spec of the global NAT map of `family`: LRU_HASH, key = the CT tuple (14 / 38 B),
 * value 40 / 56 B, max_entries = cfg.natMax, pinned at <bpf-root>/tc/globals/<name>. Flags
 * as the CT maps: BPF_F_NO_COMMON_LRU with distributed LRU, else 0; never NO_PREALLOC.
 */
export function globalNatMapSpec(cfg: NatMapsConfig, family: Family): MapSpec {
  const name = natMapName(family);
  return {
    name,
    type: MapType.LRU_HASH,
    keySize: keySize(family),
    valueSize: natValueSize(family),
    maxEntries: cfg.natMax,
    flags: cfg.distributedLru ? MapFlag.NO_COMMON_LRU : 0,
    pinPath: path.join(globalsDir(cfg.bpfRoot), name),
  };
}

/** The global NAT maps of the enabled families, IPv4 first. */
export function globalNatMapRefs(cfg: Pick<NatMapsConfig, 'enableIPv4' | 'enableIPv6'>): NatMapRef[] {
  const refs: NatMapRef[] = [];
  if (cfg.enableIPv4) refs.push({ family: 'ipv4', clusterId: 0 });
  if (cfg.enableIPv6) refs.push({ family: 'ipv6', clusterId: 0 });
  return refs;
}

// ---- per-cluster SNAT maps ---------------------------------------------------------------------

/** `cilium_per_cluster_snat_v4_external` / `_v6_external`. */
export function clusterOuterNatMapName(family: Family): string {
  return `cilium_per_cluster_snat_${family === 'ipv4' ? 'v4' : 'v6'}_external`;
}

/** `<outer>_<id>`. */
export function clusterInnerNatMapName(family: Family, clusterId: number): string {
  return `${clusterOuterNatMapName(family)}_${clusterId}`;
}

/** The outer SNAT map of `family` (see clusterOuterSpecFor). */
export function clusterOuterNatMapSpec(cfg: NatMapsConfig, family: Family): MapSpec {
  return clusterOuterSpecFor(globalNatMapSpec(cfg, family), clusterOuterNatMapName(family), cfg.bpfRoot, cfg.clusterIdMax);
}

/** A cluster's inner SNAT map: the global NAT map's spec under the name `<outer>_<id>`. */
export function clusterInnerNatMapSpec(cfg: NatMapsConfig, family: Family, clusterId: number): MapSpec {
  return clusterInnerSpecFor(globalNatMapSpec(cfg, family), clusterInnerNatMapName(family, clusterId), cfg.bpfRoot);
}
