/**
 * The ctmap.v1.ClusterCTMaps messages as proto-loader presents them, and their
 * conversions: the cluster id of a request (validated, naming the field), a cluster's maps
 * and a membership event as messages.
 */
import type { ClusterMaps } from '../cluster/cluster-maps';
import type { MembershipEvent } from '../cluster/membership';
import { checkUint } from '../maps/ctmap/codec';
import { MapInfoMsg, familyEnum, mapInfoMsg, mapRefMsg } from './ct-proto';

/** CreateClusterCTMaps and DeleteClusterCTMaps request. */
export interface ClusterIdRequestMsg {
  cluster_id?: number;
}

/** One cluster's maps: CT maps by kind, then its NAT map (kind unspecified), per family. */
export interface ClusterMapsMsg {
  cluster_id: number;
  maps: MapInfoMsg[];
}

export interface DeleteClusterCTMapsResponseMsg {
  deleted: boolean;
  dropped_entries: string;
}

export interface GetAllClusterCTMapsResponseMsg {
  clusters: ClusterMapsMsg[];
}

export interface CleanupPerClusterCTMapsRequestMsg {
  ipv4?: boolean;
  ipv6?: boolean;
}

export interface CleanupPerClusterCTMapsResponseMsg {
  removed: number;
}

/** A join or leave, or (only `lost` set) a notice of missed events. */
export interface MembershipEventMsg {
  kind: string;
  cluster_id: number;
  cluster_name: string;
  source: string;
  dropped_entries: string;
  lost: string;
}

/** The cluster id a request names; throws INVALID_ARGUMENT (cluster_id) beyond uint32. */
export function parseClusterId(req: ClusterIdRequestMsg): number {
  const id = req.cluster_id ?? 0;
  checkUint(id, 0xffffffff, 'cluster_id');
  return id;
}

export function clusterMapsMsg(c: ClusterMaps): ClusterMapsMsg {
  const maps: MapInfoMsg[] = [];
  for (const family of ['ipv4', 'ipv6'] as const) {
    for (const ct of c.ct.filter((x) => x.ref.family === family)) maps.push(mapInfoMsg(mapRefMsg(ct.ref), ct.map));
    for (const nat of c.nat.filter((x) => x.family === family)) {
      maps.push(mapInfoMsg({ family: familyEnum(family), kind: 'MAP_KIND_UNSPECIFIED', cluster_id: c.clusterId }, nat.map));
    }
  }
  return { cluster_id: c.clusterId, maps };
}

/** A join or leave as the MembershipEvent message (`lost` left unset). */
export function membershipEventMsg(e: MembershipEvent): Omit<MembershipEventMsg, 'lost'> {
  return {
    kind: e.kind === 'join' ? 'JOIN' : 'LEAVE',
    cluster_id: e.clusterId,
    cluster_name: e.clusterName,
    source: e.via,
    dropped_entries: String(e.dropped),
  };
}
