/**
 * Conversions between ctmap.v1 messages (as proto-loader presents them: snake_case,
 * enums as names, 64-bit numbers as decimal strings) and the domain types of
 * src/maps/ctmap. Request parsing validates and names the offending field.
 */
import type { DatapathCounter, DatapathCounters, FateCounter, FateCounters } from '../datapath/side-maps';
import { invalidArgument, quote } from '../errors';
import { CT_DATAPATH_STATS_COUNTERS, CT_FATE_STATS_COUNTERS } from '../maps/ctmap/layout';
import { Family, addressBytes } from '../maps/addr';
import { CtEntry, CtKey, checkUint, entryFlagNames, validateEntry, validateKey } from '../maps/ctmap/codec';
import { DumpFilter, FlowDirection, FlowState } from '../maps/ctmap/flow-filter';
import { AddressSet } from '../maps/ctmap/gc/address-match';
import { CtKind, MapRef } from '../maps/ctmap/spec';
import type { MigrationReport } from '../maps/lifecycle';
import type { BpfMap } from '../maps/types';

export interface MapRefMsg {
  family?: string | number;
  kind?: string | number;
  cluster_id?: number;
}

/** CtKey as proto-loader presents it: the message's fields are the raw key's (snake_case is the same). */
export type CtKeyMsg = CtKey;

export interface CtEntryMsg {
  packets?: string | number;
  bytes?: string | number;
  lifetime?: number;
  flags?: number;
  rev_nat?: number;
  nat_port?: number;
  tx_flags_seen?: number;
  rx_flags_seen?: number;
  source_security_id?: number;
  last_tx_report?: number;
  last_rx_report?: number;
  backend_id?: string | number;
  union0?: Buffer | Uint8Array;
  flag_names?: string[];
  expires_in_seconds?: string | number;
}

export interface CtRecordMsg {
  map?: MapRefMsg | null;
  key?: CtKeyMsg | null;
  entry?: CtEntryMsg | null;
}

export interface DumpFilterMsg {
  nexthdr?: number | null;
  flags?: number | null;
  port?: number | null;
  address?: string;
  src?: string[];
  dst?: string[];
  sport?: number | null;
  dport?: number | null;
  direction?: string;
  state?: string;
  all_clusters?: boolean;
  // proto3 `optional` presence, as proto-loader's oneofs option reports it
  _nexthdr?: string;
  _flags?: string;
  _port?: string;
  _sport?: string;
  _dport?: string;
}

/** CTMaps.Count and Flush requests: the maps to act on (empty = every open global map). */
export interface MapsRequestMsg {
  maps?: MapRefMsg[];
}

/** CTMaps.DumpEntries, DumpEntriesBatched and DumpEntriesWithTimeDiff request. */
export interface DumpEntriesRequestMsg extends MapsRequestMsg {
  filter?: DumpFilterMsg | null;
}

export interface LookupRequestMsg {
  map?: MapRefMsg | null;
  key?: CtKeyMsg | null;
}

export interface UpdateRequestMsg {
  records?: CtRecordMsg[];
}

export interface DeleteRequestMsg {
  map?: MapRefMsg | null;
  keys?: CtKeyMsg[];
  filter?: DumpFilterMsg | null;
}

/** CTMaps.Update response; NATMaps.Update's has the same shape. */
export interface UpdateResponseMsg {
  written: number;
}

/** CTMaps.Delete response; NATMaps.Delete's has the same shape. */
export interface DeleteResponseMsg {
  deleted: number;
}

export interface FlushResponseMsg {
  flushed: string;
}

export interface MapCountMsg {
  map: MapRefMsg;
  entries: string;
}

export interface CountResponseMsg {
  counts: MapCountMsg[];
}

/** A MapMigration message (uint64 as decimal strings, the outcome as its enum name). */
export interface MapMigrationMsg {
  name: string;
  pin_path: string;
  outcome: string;
  mismatches: string[];
  from_max_entries: number;
  to_max_entries: number;
  from_flags: number;
  to_flags: number;
  entries_seen: string;
  entries_copied: string;
  entries_dropped: string;
  delta_written: string;
  delta_kept_newer: string;
  duration_ms: number;
}

export interface MapInfoMsg {
  ref: MapRefMsg;
  name: string;
  pin_path: string;
  max_entries: number;
  key_size: number;
  value_size: number;
  flags: number;
  backend: string;
  entries: string;
  migration: MapMigrationMsg | null;
}

/** The datapath's counters by their C names, uint64 as decimal strings. */
export type DatapathStatsMsg = Record<DatapathCounter | `fate_${FateCounter}`, string>;

export interface ActiveMapsRequestMsg {
  with_counts?: boolean;
  per_cpu?: boolean;
}

/** One open SNAT map (ActiveMapsResponse.nat_maps). */
export interface NatMapInfoMsg {
  family: string;
  cluster_id: number;
  name: string;
  pin_path: string;
  max_entries: number;
  backend: string;
  /** uint64 as a decimal string; "0" unless with_counts. */
  entries: string;
}

export interface ActiveMapsResponseMsg {
  maps: MapInfoMsg[];
  datapath: DatapathStatsMsg | null;
  migrations: MapMigrationMsg[];
  /** Per possible CPU, with per_cpu; else empty. */
  datapath_per_cpu: DatapathStatsMsg[];
  nat_maps: NatMapInfoMsg[];
  bpf_root: string;
}

/** One DumpEntriesBatched message. */
export interface CtRecordBatchMsg {
  records: CtRecordMsg[];
}

/** One DumpEntriesWithTimeDiff message: lines in Cilium's text format (facts §7). */
export interface DumpTextChunkMsg {
  text: string;
}

const FAMILIES: Record<string, Family> = { FAMILY_IPV4: 'ipv4', FAMILY_IPV6: 'ipv6' };
const KINDS: Record<string, CtKind> = { MAP_KIND_TCP: 'tcp', MAP_KIND_ANY: 'any' };

export function familyEnum(f: Family): string {
  return f === 'ipv4' ? 'FAMILY_IPV4' : 'FAMILY_IPV6';
}

export function kindEnum(k: CtKind): string {
  return k === 'tcp' ? 'MAP_KIND_TCP' : 'MAP_KIND_ANY';
}

/** A Family enum that must name one family. */
export function parseFamily(value: unknown, field: string): Family {
  const f = FAMILIES[String(value)];
  if (!f) throw invalidArgument(field, `must be FAMILY_IPV4 or FAMILY_IPV6, got ${quote(value)}`);
  return f;
}

/** A Family enum that may be unspecified (unset, FAMILY_UNSPECIFIED or 0: undefined = both). */
export function parseOptionalFamily(value: unknown, field: string): Family | undefined {
  if (value === undefined || value === 'FAMILY_UNSPECIFIED' || value === 0) return undefined;
  return parseFamily(value, field);
}

export function parseMapRef(msg: MapRefMsg | null | undefined, field: string): MapRef {
  if (!msg) throw invalidArgument(field, 'is required');
  const family = parseFamily(msg.family, `${field}.family`);
  const kind = KINDS[String(msg.kind)];
  if (!kind) throw invalidArgument(`${field}.kind`, `must be MAP_KIND_TCP or MAP_KIND_ANY, got ${quote(msg.kind)}`);
  checkUint(msg.cluster_id ?? 0, 0xffffffff, `${field}.cluster_id`);
  return { family, kind, clusterId: msg.cluster_id ?? 0 };
}

export function mapRefMsg(ref: MapRef): MapRefMsg {
  return { family: familyEnum(ref.family), kind: kindEnum(ref.kind), cluster_id: ref.clusterId };
}

/** Validates a key message; returns the key and its family. */
export function parseKey(msg: CtKeyMsg | null | undefined, field: string): { key: CtKey; family: Family } {
  const family = validateKey(msg, field);
  const m = msg!;
  return { key: { daddr: m.daddr, saddr: m.saddr, dport: m.dport, sport: m.sport, nexthdr: m.nexthdr, flags: m.flags }, family };
}

/** A uint64 field as proto-loader presents it (a decimal string; unset or "" = 0). Throws INVALID_ARGUMENT naming `field`. */
export function parseU64(value: string | number | undefined, field: string): bigint {
  if (value === undefined || value === '') return 0n;
  try {
    return BigInt(value);
  } catch {
    throw invalidArgument(field, `not an integer: ${quote(value)}`);
  }
}

/** Validates an entry message; flag_names and expires_in_seconds are output-only and ignored. */
export function parseEntry(msg: CtEntryMsg | null | undefined, field: string): CtEntry {
  if (!msg) throw invalidArgument(field, 'is required');
  const entry: CtEntry = {
    packets: parseU64(msg.packets, `${field}.packets`),
    bytes: parseU64(msg.bytes, `${field}.bytes`),
    lifetime: msg.lifetime ?? 0,
    flags: msg.flags ?? 0,
    revNat: msg.rev_nat ?? 0,
    natPort: msg.nat_port ?? 0,
    txFlagsSeen: msg.tx_flags_seen ?? 0,
    rxFlagsSeen: msg.rx_flags_seen ?? 0,
    sourceSecurityId: msg.source_security_id ?? 0,
    lastTxReport: msg.last_tx_report ?? 0,
    lastRxReport: msg.last_rx_report ?? 0,
    backendId: parseU64(msg.backend_id, `${field}.backend_id`),
    union0: Buffer.from(msg.union0 ?? Buffer.alloc(0)),
  };
  validateEntry(entry, field);
  return entry;
}

export function entryMsg(e: CtEntry, now: number): CtEntryMsg {
  return {
    packets: e.packets.toString(),
    bytes: e.bytes.toString(),
    lifetime: e.lifetime,
    flags: e.flags,
    rev_nat: e.revNat,
    nat_port: e.natPort,
    tx_flags_seen: e.txFlagsSeen,
    rx_flags_seen: e.rxFlagsSeen,
    source_security_id: e.sourceSecurityId,
    last_tx_report: e.lastTxReport,
    last_rx_report: e.lastRxReport,
    backend_id: e.backendId.toString(),
    union0: e.union0,
    flag_names: entryFlagNames(e.flags),
    expires_in_seconds: String(e.lifetime - now),
  };
}

export function parseMapRefs(list: MapRefMsg[] | undefined, field: string): MapRef[] {
  return (list ?? []).map((m, i) => parseMapRef(m, `${field}[${i}]`));
}

/** The proto's FlowDirection and FlowState names, as DumpFilter takes them. */
const FLOW_DIRECTIONS: Readonly<Record<string, FlowDirection>> = { FLOW_DIRECTION_IN: 'in', FLOW_DIRECTION_OUT: 'out', FLOW_DIRECTION_SERVICE: 'service' };
const FLOW_STATES: Readonly<Record<string, FlowState>> = {
  FLOW_STATE_ESTABLISHED: 'established',
  FLOW_STATE_CLOSING: 'closing',
  FLOW_STATE_SYN_ONLY: 'syn-only',
  FLOW_STATE_EXPIRED: 'expired',
};

/** At most this many src (and dst) addresses or CIDRs in one filter, as GCFilter.match_ips. */
export const FILTER_ADDRESSES_MAX = 65_536;

/**
 * The DumpFilter of a request, validated: INVALID_ARGUMENT naming the field for a number out
 * of range, an address or CIDR that is not one (filter.src[i]), too many of them, or an
 * unknown enum value. `now` (CT clock seconds) judges a state filter. undefined: no filter.
 * `field` is the request's name for the message (GCRunRequest calls it `flow`).
 */
export async function parseDumpFilter(msg: DumpFilterMsg | null | undefined, now: number, field = 'filter'): Promise<DumpFilter | undefined> {
  if (!msg) return undefined;
  const filter: DumpFilter = {};
  // With proto3 `optional`, presence shows as the synthetic oneof `_<name>` naming the field.
  const optional = (name: 'nexthdr' | 'flags' | 'port' | 'sport' | 'dport', max: number): number | undefined => {
    if (msg[`_${name}`] !== name || msg[name] == null) return undefined;
    checkUint(msg[name], max, `${field}.${name}`);
    return msg[name]!;
  };
  filter.nexthdr = optional('nexthdr', 0xff);
  filter.flags = optional('flags', 0xff);
  filter.port = optional('port', 0xffff);
  filter.sport = optional('sport', 0xffff);
  filter.dport = optional('dport', 0xffff);
  if (msg.address) {
    // Checked here, not first by compileFilter, so that the error names this request's field.
    if (!addressBytes(msg.address)) throw invalidArgument(`${field}.address`, `not an IP address: ${quote(msg.address)}`);
    filter.address = msg.address;
  }
  for (const side of ['src', 'dst'] as const) {
    const list = msg[side] ?? [];
    if (list.length === 0) continue;
    if (list.length > FILTER_ADDRESSES_MAX) throw invalidArgument(`${field}.${side}`, `at most ${FILTER_ADDRESSES_MAX} addresses or CIDRs, got ${list.length}`);
    filter[side] = await AddressSet.from(list, (i, text) => invalidArgument(`${field}.${side}[${i}]`, `not an IP address or CIDR: ${quote(text)}`));
  }
  if (msg.direction && msg.direction !== 'FLOW_DIRECTION_UNSPECIFIED') {
    const d = FLOW_DIRECTIONS[msg.direction];
    if (!d) throw invalidArgument(`${field}.direction`, `unknown direction ${quote(String(msg.direction))}`);
    filter.direction = d;
  }
  if (msg.state && msg.state !== 'FLOW_STATE_UNSPECIFIED') {
    const st = FLOW_STATES[msg.state];
    if (!st) throw invalidArgument(`${field}.state`, `unknown state ${quote(String(msg.state))}`);
    filter.state = st;
    filter.now = now;
  }
  for (const k of Object.keys(filter) as Array<keyof DumpFilter>) if (filter[k] === undefined) delete filter[k];
  return filter;
}

/** A MapMigration message. */
export function mapMigrationMsg(r: MigrationReport): MapMigrationMsg {
  return {
    name: r.name,
    pin_path: r.pinPath,
    outcome: `OUTCOME_${r.outcome.toUpperCase().replace('-', '_')}`,
    mismatches: [...r.mismatches],
    from_max_entries: r.fromMaxEntries,
    to_max_entries: r.toMaxEntries,
    from_flags: r.fromFlags,
    to_flags: r.toFlags,
    entries_seen: String(r.entriesSeen),
    entries_copied: String(r.entriesCopied),
    entries_dropped: String(r.entriesDropped),
    delta_written: String(r.deltaWritten),
    delta_kept_newer: String(r.deltaKeptNewer),
    duration_ms: r.durationMs,
  };
}

/**
 * A MapInfo message: `ref` as MapRefMsg (a CT map's, or a NAT map's with kind
 * unspecified); `migration`: what this start did to the map, if anything.
 */
export function mapInfoMsg(ref: MapRefMsg, map: BpfMap, entries?: number, migration?: MigrationReport): MapInfoMsg {
  const spec = map.spec;
  return {
    ref,
    name: spec.name,
    pin_path: spec.pinPath ?? '',
    max_entries: spec.maxEntries,
    key_size: spec.keySize,
    value_size: spec.valueSize,
    flags: spec.flags,
    backend: map.backend,
    entries: String(entries ?? 0),
    migration: migration ? mapMigrationMsg(migration) : null,
  };
}

/** One open SNAT map as ActiveMapsResponse.nat_maps lists it; entries "0" unless counted. */
export function natMapInfoMsg(ref: { family: Family; clusterId: number }, map: BpfMap, entries?: number): NatMapInfoMsg {
  const spec = map.spec;
  return {
    family: familyEnum(ref.family),
    cluster_id: ref.clusterId,
    name: spec.name,
    pin_path: spec.pinPath ?? '',
    max_entries: spec.maxEntries,
    backend: map.backend,
    entries: String(entries ?? 0),
  };
}

/**
 * A DatapathStats message: the datapath's counters, uint64 as decimal strings (the
 * proto-loader `longs: String` convention); field names are the C counter names.
 */
export function datapathStatsMsg(counters: DatapathCounters, fate?: FateCounters): DatapathStatsMsg {
  const out = {} as DatapathStatsMsg;
  for (const name of CT_DATAPATH_STATS_COUNTERS) out[name] = counters[name].toString();
  // Fate-sharing's counters (struct ct_fate_stats) as fate_<name>; 0 without a source.
  for (const name of CT_FATE_STATS_COUNTERS) out[`fate_${name}`] = (fate?.[name] ?? 0n).toString();
  return out;
}
