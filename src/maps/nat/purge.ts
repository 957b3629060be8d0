/**
 * Orphan SNAT purge (Cilium's PurgeOrphanNATEntries, ctmap-facts §6). NAT entries are
 * normally removed with their CT entry (coupling.ts), but a CT entry can also vanish
 * without a GC event: LRU eviction, or the datapath re-using the slot. The datapath asks
 * for this purge when it runs out of SNAT ports.
 *
 * Raw key fields {saddr, daddr, sport, dport, nexthdr, flags} exactly as stored. The CT map
 * is chosen by the NAT key's nexthdr: TCP -> the TCP map, anything else -> the any map.
 * - IN key I (flags has TUPLE_F_IN) with value V: kept if the CT key {daddr: V.addr,
 *   saddr: I.saddr, sport: V.port, dport: I.sport, nexthdr, flags: OUT} exists.
 * - OUT key O (every other key, as in Cilium, where `flags & TUPLE_F_OUT == TUPLE_F_OUT`
 *   always holds since OUT is 0): kept if the CT key {daddr: O.saddr, saddr: O.daddr,
 *   sport: O.sport, dport: O.dport, nexthdr, flags: OUT} exists, or the CT key
 *   {daddr: O.daddr, saddr: O.saddr, sport: O.dport, dport: O.sport, nexthdr, flags: OUT}
 *   exists and carries DSRInternal.
 * - A CT lookup that fails for a reason other than "not found" counts as "exists": never
 *   delete a mapping on an unreadable CT map.
 */
import { CtmapError } from '../../errors';
import type { Family } from '../addr';
import { keyLayout } from '../ctmap/codec';
import { CT_ENTRY, CtEntryFlag, IPPROTO, TupleFlag } from '../ctmap/layout';
import type { BpfMap } from '../types';
import { natAddrField, natEntryLayout } from './codec';
import { NatTable, natTableCursor } from './tables';

/** Cilium's NatGCStats: entries kept and removed, by direction. */
export interface NatGCStats {
  ingressAlive: number;
  ingressDeleted: number;
  egressAlive: number;
  egressDeleted: number;
}

/** A CT map of the NAT map's family (a CtTable fits). */
export interface CtMapOf {
  readonly ref: { readonly family: Family };
  readonly map: BpfMap;
}

/** Keys per batch delete. */
const DELETE_CHUNK = 8192;

/**
 * Purges the orphan entries of `nat` against the CT maps `ctTcp` and `ctAny` of the same
 * family and cluster (rules in the file comment). The whole NAT map is dumped and every
 * decision taken first; the orphans are then removed with batch deletes once the dump has
 * finished, so deleting never disturbs the iteration.
 *
 * Returns the counts: *Alive = entries kept; *Deleted = orphans that existed at delete time
 * and were removed (an orphan that LRU eviction or the datapath removed meanwhile is in
 * neither count, as in Cilium).
 *
 * `signal` is checked between dump batches: when it is aborted before the deletes begin,
 * nothing is deleted and signal.reason is thrown. Throws INTERNAL for CT maps of another
 * family than the NAT map, NOT_FOUND naming the NAT map when it is closed during the dump
 * (its cluster left), and what the backend throws for the NAT dump or the deletes.
 */
export async function purgeOrphanNatEntries(nat: NatTable, ctTcp: CtMapOf, ctAny: CtMapOf, signal?: AbortSignal): Promise<NatGCStats> {
  const family = nat.ref.family;
  for (const ct of [ctTcp, ctAny]) {
    if (ct.ref.family !== family) throw new CtmapError('internal', `nat purge: ${ct.ref.family} CT map given for the ${family} NAT map`);
  }
  const decide = decider(family, ctTcp.map, ctAny.map);
  const ks = nat.map.spec.keySize;
  const vs = nat.map.spec.valueSize;
  const flagsAt = keyLayout(family).fields.flags.offset;
  const stats: NatGCStats = { ingressAlive: 0, ingressDeleted: 0, egressAlive: 0, egressDeleted: 0 };
  const ingressOrphans = new KeyList(ks);
  const egressOrphans = new KeyList(ks);

  // A map closed mid-purge (its cluster left) fails it with NOT_FOUND naming the map.
  const cursor = natTableCursor(nat);
  try {
    for (let b = await cursor.nextAsync(); b; b = await cursor.nextAsync()) {
      if (signal?.aborted) throw signal.reason;
      for (let i = 0; i < b.count; i++) {
        const koff = i * ks;
        const ingress = (b.keys[koff + flagsAt] & TupleFlag.IN) !== 0;
        const keep = decide(b.keys, koff, b.values, i * vs, ingress);
        if (ingress) {
          if (keep) stats.ingressAlive++;
          else ingressOrphans.push(b.keys, koff);
        } else if (keep) stats.egressAlive++;
        else egressOrphans.push(b.keys, koff);
      }
    }
  } finally {
    cursor.close();
  }
  if (signal?.aborted) throw signal.reason;

  stats.ingressDeleted = deleteAll(nat.map, ingressOrphans);
  stats.egressDeleted = deleteAll(nat.map, egressOrphans);
  return stats;
}

/**
 * Builds the keep/delete decision for one NAT entry at keys[koff] / values[voff]. Reuses
 * one CT key and one CT value buffer for every lookup.
 */
function decider(family: Family, ctTcp: BpfMap, ctAny: BpfMap) {
  const L = keyLayout(family).fields;
  const alen = L.daddr.size;
  const addrAt = natAddrField(family).offset;
  const portAt = natEntryLayout(family).fields.to_sport.offset;
  const ct = Buffer.alloc(keyLayout(family).size);
  const ctValue = Buffer.alloc(CT_ENTRY.size);
  const ctFlagsAt = CT_ENTRY.fields.flags.offset;

  /** True when the CT key in `ct` exists (and, with `dsr`, carries DSRInternal). */
  const exists = (map: BpfMap, dsr: boolean): boolean => {
    try {
      if (!map.lookup(ct, ctValue)) return false;
    } catch {
      return true; // unreadable is not absent (facts §6)
    }
    return !dsr || (ctValue.readUInt16LE(ctFlagsAt) & CtEntryFlag.DSRInternal) !== 0;
  };

  return (keys: Buffer, koff: number, values: Buffer, voff: number, ingress: boolean): boolean => {
    const nexthdr = keys[koff + L.nexthdr.offset];
    const map = nexthdr === IPPROTO.TCP ? ctTcp : ctAny;
    ct[L.nexthdr.offset] = nexthdr;
    ct[L.flags.offset] = TupleFlag.OUT;
    if (ingress) {
      // {daddr: V.addr, saddr: I.saddr, sport: V.port, dport: I.sport}
      values.copy(ct, L.daddr.offset, voff + addrAt, voff + addrAt + alen);
      keys.copy(ct, L.saddr.offset, koff + L.saddr.offset, koff + L.saddr.offset + alen);
      values.copy(ct, L.sport.offset, voff + portAt, voff + portAt + 2); // both big-endian
      keys.copy(ct, L.dport.offset, koff + L.sport.offset, koff + L.sport.offset + 2);
      return exists(map, false);
    }
    // {daddr: O.saddr, saddr: O.daddr, sport: O.sport, dport: O.dport}
    keys.copy(ct, L.daddr.offset, koff + L.saddr.offset, koff + L.saddr.offset + alen);
    keys.copy(ct, L.saddr.offset, koff + L.daddr.offset, koff + L.daddr.offset + alen);
    keys.copy(ct, L.sport.offset, koff + L.sport.offset, koff + L.sport.offset + 2);
    keys.copy(ct, L.dport.offset, koff + L.dport.offset, koff + L.dport.offset + 2);
    if (exists(map, false)) return true;
    // DSR: {daddr: O.daddr, saddr: O.saddr, sport: O.dport, dport: O.sport} with DSRInternal
    keys.copy(ct, L.daddr.offset, koff + L.daddr.offset, koff + L.daddr.offset + alen);
    keys.copy(ct, L.saddr.offset, koff + L.saddr.offset, koff + L.saddr.offset + alen);
    keys.copy(ct, L.sport.offset, koff + L.dport.offset, koff + L.dport.offset + 2);
    keys.copy(ct, L.dport.offset, koff + L.sport.offset, koff + L.sport.offset + 2);
    return exists(map, true);
  };
}

/** A growable packed list of keys (the dump's batch buffers are reused by the cursor). */
class KeyList {
  buf: Buffer;
  count = 0;

  constructor(readonly keySize: number) {
    this.buf = Buffer.alloc(256 * keySize);
  }

  push(src: Buffer, off: number): void {
    const ks = this.keySize;
    if ((this.count + 1) * ks > this.buf.length) {
      const grown = Buffer.alloc(this.buf.length * 2);
      this.buf.copy(grown, 0, 0, this.count * ks);
      this.buf = grown;
    }
    src.copy(this.buf, this.count * ks, off, off + ks);
    this.count++;
  }
}

/** Batch-deletes every key of `list`; returns how many existed. */
function deleteAll(map: BpfMap, list: KeyList): number {
  const ks = list.keySize;
  let deleted = 0;
  for (let off = 0; off < list.count; off += DELETE_CHUNK) {
    const n = Math.min(DELETE_CHUNK, list.count - off);
    deleted += map.deleteBatch(list.buf.subarray(off * ks), n).deleted;
  }
  return deleted;
}
