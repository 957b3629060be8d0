/**
 * The ctmap.v1 NAT messages (NatEntry, NatRecord, the NATMaps requests and responses) as
 * proto-loader presents them, and their conversions to and from the domain types of
 * src/maps/nat. Request parsing validates and names the offending field.
 */
import { invalidArgument } from '../errors';
import type { Family } from '../maps/addr';
import { checkUint } from '../maps/ctmap/codec';
import type { NatEntry } from '../maps/nat/codec';
import type { NatGCStats } from '../maps/nat/purge';
import { CtKeyMsg, parseFamily, parseOptionalFamily, parseU64 } from './ct-proto';

/** NatEntry as proto-loader presents it (created as a decimal string). */
export interface NatEntryMsg {
  addr?: string;
  port?: number;
  created?: string | number;
  needs_ct?: boolean;
  /** Output only: CT clock now minus created (int64 as a decimal string). */
  age_seconds?: string | number;
}

/** NatRecord as proto-loader presents it. */
export interface NatRecordMsg {
  family?: string | number;
  cluster_id?: number;
  key?: CtKeyMsg | null;
  entry?: NatEntryMsg | null;
}

/** The `family` and `cluster_id` fields by which NATMaps requests name one NAT map. */
export interface NatMapSelectorMsg {
  family?: string | number;
  cluster_id?: number;
}

export interface NatUpdateRequestMsg {
  records?: NatRecordMsg[];
}

export interface NatDeleteRequestMsg extends NatMapSelectorMsg {
  keys?: CtKeyMsg[];
}

/** NATMaps.Flush request: family unspecified = every enabled one. */
export interface NatFlushRequestMsg {
  family?: string | number;
  cluster_id?: number;
  all_clusters?: boolean;
}

export interface NatFlushResponseMsg {
  /** uint64 as a decimal string. */
  flushed: string;
}

export interface PurgeOrphanNATEntriesResponseMsg {
  ingress_alive: string;
  ingress_deleted: string;
  egress_alive: string;
  egress_deleted: string;
}

/**
 * The NAT map a request names by `family` and `cluster_id` (field names prefixed by
 * `prefix`, e.g. "records[2]."). Throws INVALID_ARGUMENT for an unspecified family or a
 * cluster id beyond uint32; whether the map exists is NatTables.get's question.
 */
export function parseNatMapSelector(req: NatMapSelectorMsg, prefix = ''): { family: Family; clusterId: number } {
  const family = parseFamily(req.family, `${prefix}family`);
  checkUint(req.cluster_id ?? 0, 0xffffffff, `${prefix}cluster_id`);
  return { family, clusterId: req.cluster_id ?? 0 };
}

/**
 * NATMaps.Flush's selection. Throws INVALID_ARGUMENT naming `family` (not a Family),
 * `cluster_id` (beyond uint32, or given with all_clusters); which maps exist is
 * NatTables.selectForFlush's question.
 */
export function parseNatFlushRequest(req: NatFlushRequestMsg): { family?: Family; clusterId: number; allClusters: boolean } {
  const family = parseOptionalFamily(req.family, 'family');
  const clusterId = req.cluster_id ?? 0;
  checkUint(clusterId, 0xffffffff, 'cluster_id');
  const allClusters = req.all_clusters === true;
  if (allClusters && clusterId !== 0) throw invalidArgument('cluster_id', `cluster ${clusterId} with all_clusters: give one or the other`);
  return { family, clusterId, allClusters };
}

/** Parses a NatEntry message; range and family checks are NatTables.update's (validateNatEntry). */
export function parseNatEntry(msg: NatEntryMsg | null | undefined, field: string): NatEntry {
  if (!msg) throw invalidArgument(field, 'is required');
  const created = parseU64(msg.created, `${field}.created`);
  return { addr: msg.addr ?? '', port: msg.port ?? 0, created, needsCt: msg.needs_ct === true };
}

/**
 * A NatEntry as the NatEntry message (created as a decimal string, as longs: String); with
 * `now` (CT clock seconds) also its age_seconds.
 */
export function natEntryMsg(e: NatEntry, now?: number): NatEntryMsg {
  const msg: NatEntryMsg = { addr: e.addr, port: e.port, created: e.created.toString(), needs_ct: e.needsCt };
  if (now !== undefined) msg.age_seconds = (BigInt(now) - e.created).toString();
  return msg;
}

/** An orphan purge's counts as the PurgeOrphanNATEntries response. */
export function natPurgeMsg(stats: NatGCStats): PurgeOrphanNATEntriesResponseMsg {
  return {
    ingress_alive: String(stats.ingressAlive),
    ingress_deleted: String(stats.ingressDeleted),
    egress_alive: String(stats.egressAlive),
    egress_deleted: String(stats.egressDeleted),
  };
}
