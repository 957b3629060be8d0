/**
 * Where ctmapd's maps are pinned and how a per-cluster map is made from a global one
 * (Cilium's PerClusterCTMapper and per-cluster SNAT maps): shared by the CT and NAT map
 * tables, src/cluster and the datapath loader. Pure functions of the configuration.
 */
import * as path from 'node:path';
import { invalidArgument } from '../errors';
import { DEFAULT_CLUSTER_ID_MAX } from '../config/defaults';
import { MapSpec, MapType } from './types';

/** Where Cilium pins its global maps: <bpffs>/tc/globals. */
export function globalsDir(bpfRoot: string): string {
  return path.join(bpfRoot, 'tc', 'globals');
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

/**
 * Checks a remote cluster id: 1..clusterIdMax (0 is the global maps, not a cluster).
 * INVALID_ARGUMENT naming `field` otherwise.
 */
export function validateClusterId(id: number, clusterIdMax: number, field: string): void {
  if (!Number.isInteger(id) || id < 1 || id > clusterIdMax) {
    throw invalidArgument(field, `cluster id ${id} is out of range: valid ids are 1..${clusterIdMax} (0 is the global maps; --max-connected-clusters sets the maximum)`);
  }
}
