/**
 * The CT map type table (ctmap-facts §1): which maps exist, their names and specs.
 * Pure functions of the configuration; nothing here touches a backend.
 */
import * as path from 'node:path';
import { invalidArgument } from '../../errors';
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

/** Valid sizes of every CT/NAT map (facts §1). */
export const MIN_MAP_ENTRIES = 1024;
export const MAX_MAP_ENTRIES = 16 * 1024 * 1024;

export const DEFAULT_CT_TCP_MAX = 524288;
export const DEFAULT_CT_ANY_MAX = 262144;

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

/** Where Cilium pins its global maps: <bpffs>/tc/globals. */
export function globalsDir(bpfRoot: string): string {
  return path.join(bpfRoot, 'tc', 'globals');
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

/** --max-connected-clusters: 255 (default) or 511; ClusterIDMax equals it. */
export const CLUSTER_ID_MAX_VALUES = [255, 511] as const;
export const DEFAULT_CLUSTER_ID_MAX = 255;

/** `cilium_per_cluster_ct_tcp4` … `cilium_per_cluster_ct_any6` (Cilium's ClusterOuterMapName). */
export function clusterOuterMapName(family: Family, kind: CtKind): string {
  return `cilium_per_cluster_ct_${kind}${family === 'ipv4' ? '4' : '6'}`;
}

/** `<outer>_<id>` (Cilium's ClusterInnerMapName). */
export function clusterInnerMapName(family: Family, kind: CtKind, clusterId: number): string {
  return `${clusterOuterMapName(family, kind)}_${clusterId}`;
}

/**
 * A per-cluster outer map named `name` whose inner maps look like `global`: ARRAY_OF_MAPS
 * indexed by cluster id, ClusterIDMax+1 slots (slot 0 stays empty: cluster 0 is the
 * global map), its template the global map's spec (map-in-map compares type, key/value
 * size and flags, not max_entries). Shared by the CT and SNAT outer maps.
 */
export function clusterOuterSpecFor(global: MapSpec, name: string, bpfRoot: string, clusterIdMax = DEFAULT_CLUSTER_ID_MAX): MapSpec {
  return {
    name,
    type: MapType.ARRAY_OF_MAPS,
    keySize: 4,
    valueSize: 4,
    maxEntries: clusterIdMax + 1,
    flags: 0,
    innerSpec: { ...global, pinPath: undefined },
    pinPath: path.join(globalsDir(bpfRoot), name),
  };
}

/** A cluster's inner map: `global`'s spec under the name `name` (`<outer>_<id>`). */
export function clusterInnerSpecFor(global: MapSpec, name: string, bpfRoot: string): MapSpec {
  return { ...global, name, pinPath: path.join(globalsDir(bpfRoot), name) };
}

/** The CT outer map of (family, kind). */
export function clusterOuterCtMapSpec(cfg: CtMapsConfig, family: Family, kind: CtKind): MapSpec {
  return clusterOuterSpecFor(globalCtMapSpec(cfg, family, kind), clusterOuterMapName(family, kind), cfg.bpfRoot, cfg.clusterIdMax);
}

/** A cluster's inner CT map of (family, kind). */
export function clusterInnerCtMapSpec(cfg: CtMapsConfig, family: Family, kind: CtKind, clusterId: number): MapSpec {
  return clusterInnerSpecFor(globalCtMapSpec(cfg, family, kind), clusterInnerMapName(family, kind, clusterId), cfg.bpfRoot);
}

/**
 * Checks a remote cluster id: 1..clusterIdMax (0 is the global maps, not a cluster).
 * INVALID_ARGUMENT naming `field` otherwise.
 */
export function validateClusterId(id: number, clusterIdMax: number, field: string): void {
  if (!Number.isInteger(id) || id < 1 || id > clusterIdMax) {
    throw invalidArgument(field, `cluster id ${id} is out of range: valid ids are 1..${clusterIdMax} (0 is the global maps; --max-connected-clusters sets the maximum)`);
  }
}
