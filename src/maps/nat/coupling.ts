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
import type { Family } from '../ctmap/addr';
import { keyLayout } from '../ctmap/codec';
import type { GCEvent } from '../ctmap/gc/types';
import { CT_ENTRY, CtEntryFlag, TupleFlag } from '../ctmap/layout';
import { natAddrField, natEntryLayout } from './codec';
import type { NatTable, NatTables } from './tables';

/** Keys queued per NAT map before a flush is forced (bounds memory during a long pass). */
const FLUSH_AT = 4096;

/**
 * Computes the NAT keys facts §6 removes for one deleted CT entry and writes them into
 * `out` (room for two keys of the family). For the non-DSR case this looks N up in the NAT
 * map (one lookup; `value` is scratch space of the map's value size). Returns the NAT map
 * and the number of keys written (0, 1 or 2), or undefined when the event concerns no NAT
 * map. Throws only when the lookup fails for a reason other than "not found".
 */
function mappingKeys(nat: NatTables, event: GCEvent, out: Buffer, value: Buffer): { table: NatTable; count: number } | undefined {
  const { family, clusterId } = event.ref;
  const table = nat.find(family, clusterId);
  if (!table) return undefined;
  const L = keyLayout(family).fields;
  const K = event.key;
  if (K[L.flags.offset] !== TupleFlag.OUT) return { table, count: 0 };
  const alen = L.daddr.size;
  const ks = keyLayout(family).size;
  const N = out.subarray(0, ks);

  if (event.entry.readUInt16LE(CT_ENTRY.fields.flags.offset) & CtEntryFlag.DSRInternal) {
    // The swapped mapping: addresses as stored, ports exchanged.
    K.copy(N, L.saddr.offset, L.saddr.offset, L.saddr.offset + alen);
    K.copy(N, L.daddr.offset, L.daddr.offset, L.daddr.offset + alen);
    K.copy(N, L.sport.offset, L.dport.offset, L.dport.offset + 2);
    K.copy(N, L.dport.offset, L.sport.offset, L.sport.offset + 2);
    N[L.nexthdr.offset] = K[L.nexthdr.offset];
    N[L.flags.offset] = TupleFlag.OUT;
    return { table, count: 1 };
  }

  // N: addresses exchanged (undoing the CT key's swap, Cilium #5848), ports as stored.
  K.copy(N, L.saddr.offset, L.daddr.offset, L.daddr.offset + alen);
  K.copy(N, L.daddr.offset, L.saddr.offset, L.saddr.offset + alen);
  K.copy(N, L.sport.offset, L.sport.offset, L.sport.offset + 2);
  K.copy(N, L.dport.offset, L.dport.offset, L.dport.offset + 2);
  N[L.nexthdr.offset] = K[L.nexthdr.offset];
  N[L.flags.offset] = TupleFlag.OUT;
  if (!table.map.lookup(N, value)) return { table, count: 0 };

  const I = out.subarray(ks, 2 * ks);
  const V = natEntryLayout(family).fields;
  N.copy(I, L.saddr.offset, L.daddr.offset, L.daddr.offset + alen);
  N.copy(I, L.sport.offset, L.dport.offset, L.dport.offset + 2);
  value.copy(I, L.daddr.offset, natAddrField(family).offset, natAddrField(family).offset + alen);
  // to_sport and the key's dport are both big-endian: a byte copy.
  value.copy(I, L.dport.offset, V.to_sport.offset, V.to_sport.offset + 2);
  I[L.nexthdr.offset] = K[L.nexthdr.offset];
  I[L.flags.offset] = TupleFlag.IN;
  return { table, count: 2 };
}

/** Keys queued for one NAT map. */
interface Pending {
  keys: Buffer;
  count: number;
}

/**
 * Subscribes to the GC event streams and removes the SNAT mapping of every deleted CT
 * entry. Construct it after the NAT tables are open; close() it before closing them.
 *
 * Batching: events of a GC pass arrive synchronously, one by one. The lookup of N has to
 * happen per event (BPF has no batch lookup by key, and N's value names the IN partner),
 * but the deletes are queued per NAT map and issued as one batch delete when the burst
 * ends (the next microtask) or when FLUSH_AT keys are queued, instead of one or two
 * delete syscalls per event. The mapping's lookup and its delete are thus at most one
 * burst apart; call flush() to make them happen now.
 */
export class NatCoupling {
  #deletedTotal = 0;
  #errors = 0;
  #closed = false;
  #flushScheduled = false;
  readonly #subscriptions: Subscription[];
  readonly #pending = new Map<NatTable, Pending>();
  readonly #scratch = new Map<Family, { keys: Buffer; value: Buffer }>();
  /**
   * NAT maps found empty during the current burst of events. Many nodes hold few or no
   * SNAT entries: one read per map per burst then replaces one lookup syscall per deleted
   * CT entry. A mapping the datapath creates within the burst is left to the orphan purge.
   */
  readonly #emptyThisBurst = new Map<NatTable, boolean>();

  /**
   * `sources`: the GC event stream(s), e.g. the engine's IPv4 and IPv6 subjects. Events of
   * maps without a NAT map (another cluster, a disabled family) are ignored. Never throws
   * into the stream: a failing lookup or delete is logged and counted in `errors`.
   */
  constructor(
    private readonly nat: NatTables,
    sources: Observable<GCEvent> | readonly Observable<GCEvent>[],
    private readonly log: Logger,
  ) {
    const list: readonly Observable<GCEvent>[] = Array.isArray(sources) ? sources : [sources as Observable<GCEvent>];
    this.#subscriptions = list.map((source) =>
      source.subscribe({
        next: (event) => this.#onEvent(event),
        error: (err: unknown) => this.log.error({ err }, 'nat coupling: GC event stream failed; SNAT mappings of deleted CT entries are no longer removed'),
      }),
    );
  }

  /** NAT entries removed so far (batched and direct deletes), counted once the delete ran. */
  get deletedTotal(): number {
    return this.#deletedTotal;
  }

  /** Events whose mapping could not be looked up or deleted (logged). */
  get errors(): number {
    return this.#errors;
  }

  /**
   * Removes the SNAT mapping of one deleted CT entry now (no queueing), per facts §6.
   * Returns the number of NAT entries that existed and were removed: 0, 1 or 2. Throws a
   * CtmapError when the NAT map cannot be read or written (not for absent keys).
   */
  deleteMappingFor(event: GCEvent): number {
    const scratch = this.#scratchFor(event.ref.family);
    const keys = mappingKeys(this.nat, event, scratch.keys, scratch.value);
    if (!keys || keys.count === 0) return 0;
    const deleted = keys.table.map.deleteBatch(scratch.keys, keys.count).deleted;
    this.#deletedTotal += deleted;
    return deleted;
  }

  /**
   * Issues the queued deletes now. Returns the number of NAT entries they removed. Call it
   * at the end of a pass to have `deletedTotal` include that pass. Never throws (failures
   * are logged and counted in `errors`).
   */
  flush(): number {
    this.#emptyThisBurst.clear();
    let deleted = 0;
    for (const [table, p] of this.#pending) deleted += this.#flushTable(table, p);
    this.#pending.clear();
    return deleted;
  }

  /** Stops observing and issues what is queued. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#subscriptions) s.unsubscribe();
    this.flush();
  }

  #onEvent(event: GCEvent): void {
    if (this.#closed) return;
    try {
      const table = this.nat.find(event.ref.family, event.ref.clusterId);
      if (!table || this.#isEmpty(table)) return;
      const scratch = this.#scratchFor(event.ref.family);
      const keys = mappingKeys(this.nat, event, scratch.keys, scratch.value);
      if (!keys || keys.count === 0) return;
      const ks = keys.table.map.spec.keySize;
      let p = this.#pending.get(keys.table);
      if (!p) {
        p = { keys: Buffer.alloc(64 * ks), count: 0 };
        this.#pending.set(keys.table, p);
      }
      if ((p.count + keys.count) * ks > p.keys.length) {
        const grown = Buffer.alloc(Math.max(p.keys.length * 2, (p.count + keys.count) * ks));
        p.keys.copy(grown, 0, 0, p.count * ks);
        p.keys = grown;
      }
      scratch.keys.copy(p.keys, p.count * ks, 0, keys.count * ks);
      p.count += keys.count;
      if (p.count >= FLUSH_AT) {
        this.#flushTable(keys.table, p);
        this.#pending.delete(keys.table);
      } else {
        this.#scheduleFlush();
      }
    } catch (err) {
      this.#errors++;
      this.log.warn({ err, map: event.ref, sequence: event.sequence }, 'nat coupling: could not look up the SNAT mapping of a deleted CT entry');
    }
  }

  #isEmpty(table: NatTable): boolean {
    let empty = this.#emptyThisBurst.get(table);
    if (empty === undefined) {
      const c = table.map.cursor(1);
      try {
        empty = c.next() === null;
      } finally {
        c.close();
      }
      this.#emptyThisBurst.set(table, empty);
      this.#scheduleFlush(); // ends the burst, and with it this answer
    }
    return empty;
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.flush();
    });
  }

  #flushTable(table: NatTable, p: Pending): number {
    if (p.count === 0) return 0;
    try {
      const { deleted } = table.map.deleteBatch(p.keys, p.count);
      this.#deletedTotal += deleted;
      return deleted;
    } catch (err) {
      this.#errors++;
      this.log.warn({ err, map: table.map.spec.name, keys: p.count }, 'nat coupling: batch delete of SNAT mappings failed');
      return 0;
    } finally {
      p.count = 0;
    }
  }

  #scratchFor(family: Family): { keys: Buffer; value: Buffer } {
    let s = this.#scratch.get(family);
    if (!s) {
      s = { keys: Buffer.alloc(2 * keyLayout(family).size), value: Buffer.alloc(natEntryLayout(family).size) };
      this.#scratch.set(family, s);
    }
    return s;
  }
}
