/**
 * The CT map type table (ctmap-facts §1): which maps exist, their names and specs.
 * Pure functions of the configuration; nothing here touches a backend.
 */
import * as path from 'node:path';
import { clusterInnerSpecFor, clusterOuterSpecFor, globalsDir } from '../cluster-spec';
import { MapFlag, MapSpec, MapType } from '../types';
import { Family } from '../addr';
import { CT_ENTRY_SIZE, keySize } from './codec';

export type CtKind = 'tcp' | 'any';

/** Identifies one CT map: cluster 0 is the global map of that family and kind. */
export interface MapRef {
  family: Family;
  kind: CtKind;
  clusterId: number;
}

export interface CtMapsConfig {
  bpfRoot: string;
  enableIPv4: boolean;
  enableIPv6: boolean;
  ctTcpMax: number;
  ctAnyMax: number;
  distributedLru: boolean;
  /** ClusterIDMax (--max-connected-clusters); default DEFAULT_CLUSTER_ID_MAX. */
  clusterIdMax?: number;
}

export function globalMapName(family: Family, kind: CtKind): string {
  const v = family === 'ipv4' ? '4' : '6';
  return kind === 'tcp' ? `cilium_ct${v}_global` : `cilium_ct_any${v}_global`;
}


export function refKey(ref: MapRef): string {
  return `${ref.family}/${ref.kind}/${ref.clusterId}`;
}

export function refLabel(ref: MapRef): string {
  return `${ref.kind}${ref.family === 'ipv4' ? '4' : '6'}${ref.clusterId ? ` cluster ${ref.clusterId}` : ''}`;
}

/** The spec of a global CT map under this configuration. */
export function globalCtMapSpec(cfg: CtMapsConfig, family: Family, kind: CtKind): MapSpec {
  const name = globalMapName(family, kind);
  return {
    name,
    type: MapType.LRU_HASH,
    keySize: keySize(family),
    valueSize: CT_ENTRY_SIZE,
    maxEntries: kind === 'tcp' ? cfg.ctTcpMax : cfg.ctAnyMax,
    // Cilium never sets NO_PREALLOC on CT maps: LRU maps are always preallocated.
    flags: cfg.distributedLru ? MapFlag.NO_COMMON_LRU : 0,
    pinPath: path.join(globalsDir(cfg.bpfRoot), name),
  };
}

/** The global maps of the enabled families, TCP first, IPv4 first (Cilium's order). */
export function globalCtMapRefs(cfg: Pick<CtMapsConfig, 'enableIPv4' | 'enableIPv6'>): MapRef[] {
  const refs: MapRef[] = [];
  for (const family of ['ipv4', 'ipv6'] as const) {
    if (family === 'ipv4' ? !cfg.enableIPv4 : !cfg.enableIPv6) continue;
    for (const kind of ['tcp', 'any'] as const) refs.push({ family, kind, clusterId: 0 });
  }
  return refs;
}

// ---- per-cluster CT maps (facts §1; Cilium's PerClusterCTMapper) ----------------------------


/** `cilium_per_cluster_ct_tcp4` … `cilium_per_cluster_ct_any6` (Cilium's ClusterOuterMapName). */
export function clusterOuterMapName(family: Family, kind: CtKind): string {
  return `cilium_per_cluster_ct_${kind}${family === 'ipv4' ? '4' : '6'}`;
}

/** `<outer>_<id>` (Cilium's ClusterInnerMapName). */
export function clusterInnerMapName(family: Family, kind: CtKind, clusterId: number): string {
  return `${clusterOuterMapName(family, kind)}_${clusterId}`;
}


/** The CT outer map of (family, kind). */
export function clusterOuterCtMapSpec(cfg: CtMapsConfig, family: Family, kind: CtKind): MapSpec {
  return clusterOuterSpecFor(globalCtMapSpec(cfg, family, kind), clusterOuterMapName(family, kind), cfg.bpfRoot, cfg.clusterIdMax);
}

/** A cluster's inner CT map of (family, kind). */
export function clusterInnerCtMapSpec(cfg: CtMapsConfig, family: Family, kind: CtKind, clusterId: number): MapSpec {
  return clusterInnerSpecFor(globalCtMapSpec(cfg, family, kind), clusterInnerMapName(family, kind, clusterId), cfg.bpfRoot);
}

