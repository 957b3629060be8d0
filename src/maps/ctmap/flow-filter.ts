/**
 * The flow filter of dumps and counts (DumpFilter in the proto): which CT entries a
 * request selects, judged on the raw key and value bytes as a batch hands them over, with
 * no allocation per entry.
 *
 * Orientation: a key stores the flow `src:sport -> dst:dport` as daddr = src, saddr =
 * dst, sport, dport (addresses swapped, ports not; Cilium prints `daddr:sport ->
 * saddr:dport`, and so does the text dump). `src`, `dst`, `sport` and `dport` here are the
 * flow's, so that a user who reads a line of `ctmap ct list` filters by what they read.
 */
import { invalidArgument, quote } from '../../errors';
import { Family, addressBytes } from '../addr';
import { keyLayout } from './codec';
import { CT_ENTRY, CtEntryFlag, IPPROTO, TupleFlag } from './layout';
import type { AddressMatcher } from './gc/address-match';

export type FlowDirection = 'in' | 'out' | 'service';
export type FlowState = 'established' | 'closing' | 'syn-only' | 'expired';

/** Every set criterion must match (AND); an empty filter matches every entry. */
export interface DumpFilter {
  /** key.nexthdr. */
  nexthdr?: number;
  /** key.flags, exactly. */
  flags?: number;
  /** key.daddr or key.saddr equals this address (text). */
  address?: string;
  /** key.dport or key.sport. */
  port?: number;
  /** The flow's source (key.daddr) is in this set of addresses and CIDRs. */
  src?: AddressMatcher;
  /** The flow's destination (key.saddr) is in this set. */
  dst?: AddressMatcher;
  /** The flow's source port (key.sport). */
  sport?: number;
  /** The flow's destination port (key.dport). */
  dport?: number;
  direction?: FlowDirection;
  /** Judged at `now` (CT clock seconds; required with a state). */
  state?: FlowState;
  now?: number;
}

/** An entry test over key bytes at keys[koff..] and its ct_entry at values[voff..]. */
export type EntryPredicate = (keys: Buffer, koff: number, values: Buffer, voff: number) => boolean;

const E = CT_ENTRY.fields;
const CLOSING = CtEntryFlag.RxClosing | CtEntryFlag.TxClosing;

/**
 * The test of `filter` for entries of `family`: null when no entry of that family can
 * match (an address, CIDR set or family the filter excludes), so a scan can skip the map.
 * Throws invalid-argument naming filter.address for an address that is not one.
 */
export function compileFilter(filter: DumpFilter | undefined, family: Family): EntryPredicate | null {
  if (!filter) return () => true;
  const L = keyLayout(family).fields;
  let addr: Buffer | undefined;
  if (filter.address !== undefined) {
    const parsed = addressBytes(filter.address);
    if (!parsed) throw invalidArgument('filter.address', `not an IP address: ${quote(filter.address)}`);
    if (parsed.family !== family) return null;
    addr = parsed.bytes;
  }
  const src = filter.src ? filter.src.forFamily(family) : undefined;
  const dst = filter.dst ? filter.dst.forFamily(family) : undefined;
  // A set with nothing of this family matches nothing of it.
  if ((filter.src && !src) || (filter.dst && !dst)) return null;
  const { nexthdr, flags, port, sport, dport, direction, state } = filter;
  if (state !== undefined && filter.now === undefined) throw new RangeError('compileFilter: a state filter needs now');
  const now = filter.now ?? 0;
  const alen = family === 'ipv4' ? 4 : 16;
  const D = L.daddr.offset;
  const S = L.saddr.offset;
  return (keys, koff, values, voff) => {
    if (nexthdr !== undefined && keys[koff + L.nexthdr.offset] !== nexthdr) return false;
    const kflags = keys[koff + L.flags.offset];
    if (flags !== undefined && kflags !== flags) return false;
    if (port !== undefined && keys.readUInt16BE(koff + L.dport.offset) !== port && keys.readUInt16BE(koff + L.sport.offset) !== port) return false;
    if (sport !== undefined && keys.readUInt16BE(koff + L.sport.offset) !== sport) return false;
    if (dport !== undefined && keys.readUInt16BE(koff + L.dport.offset) !== dport) return false;
    if (addr && addr.compare(keys, koff + D, koff + D + alen) !== 0 && addr.compare(keys, koff + S, koff + S + alen) !== 0) return false;
    if (src && !src.matches(keys, koff + D)) return false;
    if (dst && !dst.matches(keys, koff + S)) return false;
    if (direction !== undefined && directionOf(kflags) !== direction) return false;
    if (state !== undefined && stateOf(keys[koff + L.nexthdr.offset], values, voff, now) !== state) return false;
    return true;
  };
}

function directionOf(keyFlags: number): FlowDirection {
  if (keyFlags & TupleFlag.SERVICE) return 'service';
  return keyFlags & TupleFlag.IN ? 'in' : 'out';
}

/**
 * An entry's state at `now`: expired once its lifetime is below now (what GC removes);
 * else closing with either closing bit; else syn-only for TCP before SeenNonSyn (the
 * datapath keeps such entries on the SYN timeout); else established.
 */
export function stateOf(nexthdr: number, values: Buffer, voff: number, now: number): FlowState {
  if (values.readUInt32LE(voff + E.lifetime.offset) < now) return 'expired';
  const flags = values.readUInt16LE(voff + E.flags.offset);
  if (flags & CLOSING) return 'closing';
  if (nexthdr === IPPROTO.TCP && !(flags & CtEntryFlag.SeenNonSyn)) return 'syn-only';
  return 'established';
}

