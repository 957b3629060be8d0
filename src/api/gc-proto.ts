/**
 * The ctmap.v1.GCRunner messages as proto-loader presents them, and their conversions:
 * GCFilter parsing (naming the offending field), the Run stats, and the pre-encoded
 * messages Run and Observe stream (kept records and events straight from the map bytes,
 * see ct-wire.ts).
 */
import { invalidArgument, quote } from '../errors';
import type { Family } from '../maps/addr';
import { ctNow } from '../maps/clock';
import { AddressSet } from '../maps/ctmap/gc/address-match';
import type { GCEvent, GCFilter, GCPassProgress, GCRunResult } from '../maps/ctmap/gc/types';
import type { MapRef } from '../maps/ctmap/spec';
import { CtRecordMsg, DumpFilterMsg, MapRefMsg, mapRefMsg, parseU64 } from './ct-proto';
import { WireWriter, mapRefBody, writeCtRecord } from './ct-wire';

export interface GCFilterMsg {
  remove_expired?: boolean;
  time?: string | number;
  match_ips?: string[];
  emit_kept?: boolean;
}

/** GCRunner.Run request. */
export interface GCRunRequestMsg {
  family?: string | number;
  maps?: MapRefMsg[];
  filter?: GCFilterMsg | null;
  /** Only the flows this keeps are candidates (DumpFilter; all_clusters ignored). */
  flow?: DumpFilterMsg | null;
  /** > 0: progress updates at most this often, ms. */
  progress_interval_ms?: number;
}

/** GCRunUpdate.progress. */
export interface GCRunProgressMsg {
  map: MapRefMsg;
  scanned: string;
  deleted: string;
  maps_done: number;
  maps_total: number;
}

export interface GCMapStatsMsg {
  map: MapRefMsg;
  alive: string;
  deleted: string;
  skipped: string;
  refreshed: string;
}

/** The final message of a Run (uint64 as decimal strings). */
export interface GCRunStatsMsg {
  maps: GCMapStatsMsg[];
  nat_deleted: string;
  duration_ns: string;
}

/** GCRunner.Run stream message; `update` names the field that is set (oneofs: true). */
export interface GCRunUpdateMsg {
  update?: 'kept' | 'stats' | 'progress';
  kept?: CtRecordMsg | null;
  stats?: GCRunStatsMsg | null;
  progress?: GCRunProgressMsg | null;
}

/** GCRunner.Observe request, and GCRunner.Signal's (which needs a family). */
export interface GCFamilyRequestMsg {
  family?: string | number;
}

/** One deleted entry (`record` set) or a notice of `lost` events. */
export interface GCEventMsg {
  record: CtRecordMsg | null;
  sequence: string;
  lost: string;
  family: string;
}

export interface GCFamilyStatusMsg {
  family: string;
  interval_seconds: number;
  last_run_unix_ms: string;
  next_run_unix_ms: string;
  runs: string;
  deleted: string;
  alive: string;
  last_ratio: number;
  last_sequence: string;
  last_pass_reason: string;
  last_signal_source: string;
  signals_api: string;
  signals_insert_failed: string;
  signals_pressure: string;
}

export interface GCStatusResponseMsg {
  families: GCFamilyStatusMsg[];
  fixed_interval: boolean;
  max_interval_seconds: number;
}

const U32_MAX = 0xffffffff;

/**
 * Most addresses one filter.match_ips may list (issue 12, item 7): bounds the set a Run
 * builds (2.1 MiB at most, all IPv6) and the time parsing it takes (~35-110 ms, in slices
 * that let other calls run).
 */
export const MATCH_IPS_MAX = 65_536;

/**
 * Validates a GCFilter message and builds its match_ips set (giving the event loop turns
 * while it works); emitKept is attached by the caller. Rejects with INVALID_ARGUMENT naming
 * the field: filter.match_ips above MATCH_IPS_MAX, filter.match_ips[i] not an address.
 */
export async function parseGCFilter(msg: GCFilterMsg | null | undefined): Promise<GCFilter> {
  const filter: GCFilter = { removeExpired: Boolean(msg?.remove_expired) };
  const time = parseU64(msg?.time, 'filter.time');
  if (time < 0n || time > BigInt(U32_MAX)) throw invalidArgument('filter.time', `must be a CT clock second in 0..${U32_MAX} (0 = now), got ${time}`);
  if (time !== 0n) filter.time = Number(time);
  const ips = msg?.match_ips ?? [];
  if (ips.length > MATCH_IPS_MAX) throw invalidArgument('filter.match_ips', `at most ${MATCH_IPS_MAX} addresses, got ${ips.length}`);
  if (ips.length > 0) {
    filter.matchIPs = await AddressSet.from(ips, (i, ip) => invalidArgument(`filter.match_ips[${i}]`, `not an IP address or CIDR: ${quote(ip)}`));
  }
  return filter;
}

/** How far a pass has got as the GCRunProgress message. */
export function gcRunProgressMsg(p: GCPassProgress): GCRunProgressMsg {
  return { map: mapRefMsg(p.ref as MapRef), scanned: String(p.scanned), deleted: String(p.deleted), maps_done: p.mapsDone, maps_total: p.mapsTotal };
}

/** A pass's result as the GCRunStats message. */
export function gcRunStatsMsg(result: GCRunResult): GCRunStatsMsg {
  return {
    maps: result.maps.map((m) => ({
      map: mapRefMsg(m.ref as MapRef),
      alive: String(m.alive),
      deleted: String(m.deleted),
      skipped: String(m.skipped),
      refreshed: String(m.refreshed),
    })),
    nat_deleted: String(result.natDeleted),
    duration_ns: String(result.durationNs),
  };
}

/** A writer holding the entry at keys[koff..] / values[voff..] as a CtRecord in field 1. */
function recordInField1(family: Family, ref: MapRef, keys: Buffer, koff: number, values: Buffer, voff: number): WireWriter {
  const w = new WireWriter(320);
  const mark = w.beginLen(1);
  writeCtRecord(w, family, mapRefBody(ref), keys, koff, values, voff, ctNow());
  w.endLen(mark);
  return w;
}

/** GCRunUpdate message bytes with `kept` (field 1) set to the entry at keys[koff..] / values[voff..]. */
export function encodeKeptUpdate(ref: MapRef, keys: Buffer, koff: number, values: Buffer, voff: number): Buffer {
  const w = recordInField1(ref.family, ref, keys, koff, values, voff);
  return Buffer.from(w.buf.subarray(0, w.pos));
}

/** GCEvent message bytes: record (field 1), sequence (2), family (4). */
export function encodeGCEvent(e: GCEvent): Buffer {
  const w = recordInField1(e.family, e.ref, e.key, 0, e.entry, 0);
  w.byte(0x10);
  w.varint32(e.sequence);
  w.uintField(4, e.family === 'ipv4' ? 1 : 2);
  return Buffer.from(w.buf.subarray(0, w.pos));
}
