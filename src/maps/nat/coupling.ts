/**
 * The NAT side of CT garbage collection (Cilium's NatMapNext4 / NatMapNext6, ctmap-facts
 * §6): every CT entry the GC deletes takes its SNAT mapping with it, so that the datapath's
 * port pool does not fill up with mappings of dead connections.
 *
 * Notation as in the facts: raw key fields {saddr, daddr, sport, dport, nexthdr, flags}
 * exactly as stored. For a deleted CT key K:
 * - no NAT map for the event's family/cluster, or K.flags !== TUPLE_F_OUT: nothing;
 * - the entry has DSRInternal: delete the single key {saddr: K.saddr, daddr: K.daddr,
 *   sport: K.dport, dport: K.sport, nexthdr, flags: OUT} (Cilium's DeleteSwappedMapping);
 * - otherwise N = {saddr: K.daddr, daddr: K.saddr, sport: K.sport, dport: K.dport, nexthdr,
 *   flags: OUT}; look N up (value V); delete N and its IN partner {saddr: N.daddr,
 *   sport: N.dport, daddr: V.addr, dport: V.port, nexthdr, flags: IN}. N absent: nothing.
 *
 * Everything works on raw bytes: an event's key is already the NAT key's byte layout (a
 * NAT key is a CT tuple), so keys are built by copying fields, never by decoding to text.
 */
import type { Logger } from 'pino';
import type { Observable, Subscription } from 'rxjs';
import type { Family } from '../addr';
import { CT_ENTRY_SIZE, keyLayout } from '../ctmap/codec';
import type { GCEventBatch } from '../ctmap/gc/events';
import { DeleteStatus, GCEvent } from '../ctmap/gc/types';
import { CT_ENTRY, CtEntryFlag, TupleFlag } from '../ctmap/layout';
import { natAddrField, natEntryLayout } from './codec';
import type { NatTable, NatTables } from './tables';

/** Keys queued per NAT map before a flush is forced (bounds memory for a large batch). */
const FLUSH_AT = 4096;

/**
 * Computes the NAT keys facts §6 removes for one deleted CT entry and writes them into
 * `out` (room for two keys of the family). For the non-DSR case this looks N up in the NAT
 * map `table` (one lookup; `value` is scratch space of the map's value size). `K` is the
 * CT key, `entry` the CT entry as deleted. Returns the number of keys written (0, 1 or 2).
 * Throws only when the lookup fails for a reason other than "not found".
 */
function mappingKeys(table: NatTable, family: Family, K: Buffer, entry: Buffer, out: Buffer, value: Buffer): number {
  const L = keyLayout(family).fields;
  if (K[L.flags.offset] !== TupleFlag.OUT) return 0;
  const alen = L.daddr.size;
  const ks = keyLayout(family).size;
  const N = out.subarray(0, ks);

  if (entry.readUInt16LE(CT_ENTRY.fields.flags.offset) & CtEntryFlag.DSRInternal) {
    // The swapped mapping: addresses as stored, ports exchanged.
    K.copy(N, L.saddr.offset, L.saddr.offset, L.saddr.offset + alen);
    K.copy(N, L.daddr.offset, L.daddr.offset, L.daddr.offset + alen);
    K.copy(N, L.sport.offset, L.dport.offset, L.dport.offset + 2);
    K.copy(N, L.dport.offset, L.sport.offset, L.sport.offset + 2);
    N[L.nexthdr.offset] = K[L.nexthdr.offset];
    N[L.flags.offset] = TupleFlag.OUT;
    return 1;
  }

  // N: addresses exchanged (undoing the CT key's swap, Cilium #5848), ports as stored.
  K.copy(N, L.saddr.offset, L.daddr.offset, L.daddr.offset + alen);
  K.copy(N, L.daddr.offset, L.saddr.offset, L.saddr.offset + alen);
  K.copy(N, L.sport.offset, L.sport.offset, L.sport.offset + 2);
  K.copy(N, L.dport.offset, L.dport.offset, L.dport.offset + 2);
  N[L.nexthdr.offset] = K[L.nexthdr.offset];
  N[L.flags.offset] = TupleFlag.OUT;
  if (!table.map.lookup(N, value)) return 0;

  const I = out.subarray(ks, 2 * ks);
  const V = natEntryLayout(family).fields;
  N.copy(I, L.saddr.offset, L.daddr.offset, L.daddr.offset + alen);
  N.copy(I, L.sport.offset, L.dport.offset, L.dport.offset + 2);
  value.copy(I, L.daddr.offset, natAddrField(family).offset, natAddrField(family).offset + alen);
  // to_sport and the key's dport are both big-endian: a byte copy.
  value.copy(I, L.dport.offset, V.to_sport.offset, V.to_sport.offset + 2);
  I[L.nexthdr.offset] = K[L.nexthdr.offset];
  I[L.flags.offset] = TupleFlag.IN;
  return 2;
}

/**
 * Observes the GC event streams and removes the SNAT mapping of every deleted CT entry.
 * Construct it after the NAT tables are open; close() it before closing them.
 *
 * Events arrive as one batch per delete step of a pass (GCEventBatch), synchronously,
 * right after the CT entries were deleted. Per batch the coupling:
 * - ignores it when the map has no NAT map (another cluster, a disabled family);
 * - reads the NAT map once and ignores the batch when the map is empty: many nodes hold
 *   few or no SNAT mappings, and one read per batch then replaces one lookup per deleted
 *   entry (a mapping the datapath creates meanwhile is left to the orphan purge);
 * - otherwise looks up N per deleted OUT entry (BPF has no batch lookup by key, and N's
 *   value names the IN partner) and removes all the batch's mappings with batch deletes,
 *   before the emission returns: a pass's NAT deletions are complete when the pass is.
 */
export class NatCoupling {
  #deletedTotal = 0;
  #errors = 0;
  #closed = false;
  readonly #subscriptions: Subscription[];
  readonly #scratch = new Map<Family, { keys: Buffer; value: Buffer; pending: Buffer }>();

  /**
   * `sources`: the GC batch stream(s), e.g. the engine's IPv4 and IPv6 batches. Never
   * throws into the stream: a failing lookup or delete is logged and counted in `errors`.
   */
  constructor(
    private readonly nat: NatTables,
    sources: Observable<GCEventBatch> | readonly Observable<GCEventBatch>[],
    private readonly log: Logger,
  ) {
    const list: readonly Observable<GCEventBatch>[] = Array.isArray(sources) ? sources : [sources as Observable<GCEventBatch>];
    this.#subscriptions = list.map((source) =>
      source.subscribe({
        next: (batch) => this.#onBatch(batch),
        error: (err: unknown) => this.log.error({ err }, 'nat coupling: GC event stream failed; SNAT mappings of deleted CT entries are no longer removed'),
      }),
    );
  }

  /** NAT entries removed so far, counted once the delete ran. */
  get deletedTotal(): number {
    return this.#deletedTotal;
  }

  /** Deleted CT entries whose mapping could not be looked up, and failed batch deletes (logged). */
  get errors(): number {
    return this.#errors;
  }

  /**
   * Removes the SNAT mapping of one deleted CT entry now, per facts §6. Returns the number
   * of NAT entries that existed and were removed: 0, 1 or 2. Throws a CtmapError when the
   * NAT map cannot be read or written (not for absent keys).
   */
  deleteMappingFor(event: GCEvent): number {
    const table = this.nat.find(event.ref.family, event.ref.clusterId);
    if (!table) return 0;
    const scratch = this.#scratchFor(event.ref.family);
    const count = mappingKeys(table, event.ref.family, event.key, event.entry, scratch.keys, scratch.value);
    if (count === 0) return 0;
    const deleted = table.map.deleteBatch(scratch.keys, count).deleted;
    this.#deletedTotal += deleted;
    return deleted;
  }

  /** Stops observing. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#subscriptions) s.unsubscribe();
  }

  #onBatch(batch: GCEventBatch): void {
    if (this.#closed || batch.deleted === 0) return;
    const { family } = batch;
    const table = this.nat.find(family, batch.ref.clusterId);
    if (!table) return;
    try {
      if (isEmpty(table)) return;
    } catch (err) {
      this.#errors += batch.deleted;
      this.log.warn({ err, map: table.map.spec.name, events: batch.deleted }, 'nat coupling: could not read the SNAT map; mappings of these deleted CT entries are left to the orphan purge');
      return;
    }
    const ks = keyLayout(family).size;
    const scratch = this.#scratchFor(family);
    let queued = 0;
    let seq = batch.firstSequence;
    for (let i = 0; i < batch.count; i++) {
      if (batch.status[i] !== DeleteStatus.DELETED) continue;
      const sequence = seq++;
      let count: number;
      try {
        const key = batch.keys.subarray(i * ks, (i + 1) * ks);
        const entry = batch.entries.subarray(i * CT_ENTRY_SIZE, (i + 1) * CT_ENTRY_SIZE);
        count = mappingKeys(table, family, key, entry, scratch.keys, scratch.value);
      } catch (err) {
        this.#errors++;
        this.log.warn({ err, map: batch.ref, sequence }, 'nat coupling: could not look up the SNAT mapping of a deleted CT entry');
        continue;
      }
      if (count === 0) continue;
      scratch.keys.copy(scratch.pending, queued * ks, 0, count * ks);
      queued += count;
      if (queued >= FLUSH_AT) {
        this.#deleteQueued(table, scratch.pending, queued);
        queued = 0;
      }
    }
    this.#deleteQueued(table, scratch.pending, queued);
  }

  #deleteQueued(table: NatTable, keys: Buffer, count: number): void {
    if (count === 0) return;
    try {
      this.#deletedTotal += table.map.deleteBatch(keys, count).deleted;
    } catch (err) {
      this.#errors++;
      this.log.warn({ err, map: table.map.spec.name, keys: count }, 'nat coupling: batch delete of SNAT mappings failed');
    }
  }

  #scratchFor(family: Family): { keys: Buffer; value: Buffer; pending: Buffer } {
    let s = this.#scratch.get(family);
    if (!s) {
      const ks = keyLayout(family).size;
      // Room for FLUSH_AT keys plus the two one more event may add before the flush.
      s = { keys: Buffer.alloc(2 * ks), value: Buffer.alloc(natEntryLayout(family).size), pending: Buffer.alloc((FLUSH_AT + 2) * ks) };
      this.#scratch.set(family, s);
    }
    return s;
  }
}

/** Whether the NAT map holds no entry (one batch read of a single entry). */
function isEmpty(table: NatTable): boolean {
  const c = table.map.cursor(1);
  try {
    return c.next() === null;
  } finally {
    c.close();
  }
}
