/**
 * The GC engine: one pass scans each selected CT map in batches, decides per entry from the
 * GCFilter, re-checks every candidate at delete time through a ConditionalDeleter (in the
 * kernel for the kernel backend, so an entry the datapath refreshed since the scan survives:
 * Cilium #46298), deletes in batches (Cilium #5048 deletes one syscall per entry), and
 * publishes every deletion on its family's multicast stream (Observe4/6): as one
 * GCEventBatch per delete step (batches(), what the NAT coupling reads) and, for those who
 * want objects, as one GCEvent per deleted entry (events()). CTMaps.Delete by keys goes
 * through the same stream (deleteKeys).
 */
import { Observable, Subject, mergeMap } from 'rxjs';
import type { Logger } from 'pino';
import { Family } from '../../addr';
import { CT_ENTRY_SIZE, keyLayout } from '../codec';
import { CT_ENTRY } from '../layout';
import { ctNow } from '../../clock';
import { CtTable, ctTableCursor } from '../tables';
import { MapRef } from '../spec';
import { EventLoopBudget } from './event-loop-budget';
import { GCEventBatch, eventsOf } from './events';
import { ConditionalDeleter, DeleteMode, DeleteStatus, GCDestroyReason, GCEvent, GCFilter, GCMapStats, GCPassProgress, GCRunResult } from './types';

/** CT clock value that makes every entry expired: a flush (facts §6). */
export const FLUSH_TIME = 0xffffffff;

/** Entries per scan batch: also the most events one batch publishes at once. */
export const SCAN_BATCH = 4096;

/**
 * Awaited between batches. Live event consumers (Observe streams) use it to hold the pass
 * while they drain, so a consumer that keeps up never loses events; see BoundedQueue.
 */
export type EventPacer = () => Promise<unknown>;

export interface GCRunOptions {
  tables: readonly CtTable[];
  filter: GCFilter;
  /** Stops the pass between batches (client cancel, shutdown). */
  signal?: AbortSignal;
  /** Awaited after each batch: lets a stream flush kept records with flow control. */
  afterBatch?: () => Promise<void>;
  /** Called after each batch, before afterBatch, with how far the pass has got. */
  onProgress?: (progress: GCPassProgress) => void;
  /**
   * Test hook, called between the scan of a batch and the delete of its candidates, with
   * the candidate keys: a test refreshes entries here to drive the race deterministically.
   */
  beforeDelete?: (ref: MapRef, keys: Buffer, count: number) => void;
  /**
   * What the pass is for, as every deletion's lifecycle event reason (issue 13): 'flush'
   * for CTMaps.Flush, 'cluster-leave' for a leaving cluster's maps. Without it each
   * deletion says why it was deleted: gc-filter for a match_ips match or a caller's time
   * other than now, gc-expired otherwise.
   */
  eventReason?: GCDestroyReason;
}

/** The outcome of GCEngine.deleteKeys: candidate i's DeleteStatus, and its entry when DELETED. */
export interface KeyDeletion {
  readonly status: Uint8Array;
  /** Entry i at entries[i*CT_ENTRY_SIZE], as it was at deletion (DELETED only). */
  readonly entries: Buffer;
  readonly deleted: number;
}

/** What a pass has done so far over the maps before the current one (for onProgress). */
interface PassState {
  mapsDone: number;
  readonly mapsTotal: number;
  deletedBefore: number;
}

/** The lifecycle reasons of one pass's deletions, by DeleteMode. */
interface Reasons {
  readonly expired: GCDestroyReason;
  readonly matched: GCDestroyReason;
}

/** deleteKeys' candidates are all ALWAYS; both reasons say 'delete' all the same. */
const DELETE_REASONS: Reasons = { expired: 'delete', matched: 'delete' };

export class GCEngine {
  readonly #subjects: Record<Family, Subject<GCEventBatch>> = { ipv4: new Subject(), ipv6: new Subject() };
  readonly #sequence: Record<Family, number> = { ipv4: 0, ipv6: 0 };
  readonly #pacers = new Set<EventPacer>();

  constructor(
    private readonly deleter: ConditionalDeleter,
    private readonly log: Logger,
  ) {}

  /**
   * Deletions of `family`, live, one batch per delete step (a hot, multicast stream). The
   * batch's buffers are valid only during the emission; see GCEventBatch.
   */
  batches(family: Family): Observable<GCEventBatch> {
    return this.#subjects[family].asObservable();
  }

  /** Deleted entries of `family`, live, one object each (Cilium's Observe4/6). */
  events(family: Family): Observable<GCEvent> {
    return this.batches(family).pipe(mergeMap((batch) => eventsOf(batch)));
  }

  lastSequence(family: Family): number {
    return this.#sequence[family];
  }

  /** Registers a pacer (see EventPacer); returns its removal. */
  addPacer(pacer: EventPacer): () => void {
    this.#pacers.add(pacer);
    return () => this.#pacers.delete(pacer);
  }

  /**
   * One pass over `tables`. Returns exact per-map counts: alive (kept, including refreshed
   * candidates), deleted, skipped (already gone), refreshed. Throws the signal's reason
   * when aborted (entries deleted so far stay deleted and were published). Gives the event
   * loop a turn between batches whenever a budget of work is spent, also where the cursor
   * does not (the memory backend's nextAsync resolves at once).
   */
  async run(opts: GCRunOptions): Promise<GCRunResult> {
    const started = process.hrtime.bigint();
    const now = ctNow();
    const time = opts.filter.time ?? now;
    const reasons: Reasons = {
      expired: opts.eventReason ?? (time === now ? 'gc-expired' : 'gc-filter'),
      matched: opts.eventReason ?? 'gc-filter',
    };
    const budget = new EventLoopBudget();
    const maps: GCMapStats[] = [];
    const pass: PassState = { mapsDone: 0, mapsTotal: opts.tables.length, deletedBefore: 0 };
    for (const table of opts.tables) {
      // A cluster that left while this pass waited for its turn: its maps are gone, and
      // their entries were flushed (and published) by the pass that removed them.
      if (table.map.closed) {
        pass.mapsDone++;
        continue;
      }
      const stats: GCMapStats = { ref: table.ref, alive: 0, deleted: 0, skipped: 0, refreshed: 0, maxEntries: table.map.spec.maxEntries };
      maps.push(stats);
      await this.#collect(table, opts, time, stats, budget, reasons, pass);
      pass.mapsDone++;
      pass.deletedBefore += stats.deleted;
    }
    const ratio = maps.reduce((r, m) => Math.max(r, m.maxEntries ? m.deleted / m.maxEntries : 0), 0);
    return { maps, natDeleted: 0, durationNs: process.hrtime.bigint() - started, ratio };
  }

  async #collect(table: CtTable, opts: GCRunOptions, time: number, stats: GCMapStats, budget: EventLoopBudget, reasons: Reasons, pass: PassState): Promise<void> {
    const { filter } = opts;
    const family = table.ref.family;
    const ks = table.map.spec.keySize;
    const L = keyLayout(family).fields;
    const daddrOffset = L.daddr.offset;
    const saddrOffset = L.saddr.offset;
    // One hash lookup per address (issue 12, item 7), not a scan of the list per entry.
    const matchIPs = filter.matchIPs?.forFamily(family);
    const select = filter.select?.(family) ?? undefined;
    // undefined: no narrowing; null: nothing of this family is a candidate.
    const flow = filter.flow ? filter.flow(family) : undefined;
    let scanned = 0;

    const removeExpired = filter.removeExpired;
    const lifetimeOffset = CT_ENTRY.fields.lifetime.offset;
    const lifetimeAt = (v: Buffer, off: number): number =>
      (v[off + lifetimeOffset] | (v[off + lifetimeOffset + 1] << 8) | (v[off + lifetimeOffset + 2] << 16)) + v[off + lifetimeOffset + 3] * 0x1000000;

    // Candidate buffers, reused across batches (grown when a batch is larger).
    let cap = SCAN_BATCH;
    let candKeys = Buffer.allocUnsafe(cap * ks);
    let candValues = Buffer.allocUnsafe(cap * CT_ENTRY_SIZE);
    let modes = new Uint8Array(cap);
    let status = new Uint8Array(cap);

    // A map closed mid-pass (its cluster left) fails the pass with NOT_FOUND naming it.
    const cursor = ctTableCursor(table, SCAN_BATCH);
    try {
      for (let b = await cursor.nextAsync(); b; b = await cursor.nextAsync()) {
        if (opts.signal?.aborted) throw opts.signal.reason;
        if (this.#pacers.size > 0) await Promise.all([...this.#pacers].map((pace) => pace()));
        if (b.count > cap) {
          cap = b.count;
          candKeys = Buffer.allocUnsafe(cap * ks);
          candValues = Buffer.allocUnsafe(cap * CT_ENTRY_SIZE);
          modes = new Uint8Array(cap);
          status = new Uint8Array(cap);
        }
        let n = 0;
        for (let i = 0; i < b.count; i++) {
          const koff = i * ks;
          const voff = i * CT_ENTRY_SIZE;
          let mode = -1;
          // Outside the pass's flow narrowing: kept, whatever the criteria below would say.
          if (flow === null || (flow && !flow(b.keys, koff, b.values, voff))) mode = -1;
          else if (matchIPs && (matchIPs.matches(b.keys, koff + daddrOffset) || matchIPs.matches(b.keys, koff + saddrOffset))) mode = DeleteMode.ALWAYS;
          else if (select && select(b.keys, koff, b.values, voff)) mode = DeleteMode.ALWAYS;
          else if (removeExpired && lifetimeAt(b.values, voff) < time) mode = DeleteMode.EXPIRED_BEFORE;
          if (mode < 0) {
            stats.alive++;
            filter.emitKept?.(table.ref, b.keys, koff, b.values, voff);
            continue;
          }
          // A byte loop: Buffer.copy costs more than the copy itself for 14-38 bytes.
          for (let j = 0, d = n * ks; j < ks; j++) candKeys[d + j] = b.keys[koff + j];
          modes[n++] = mode;
        }
        if (n > 0) {
          opts.beforeDelete?.(table.ref, candKeys, n);
          this.deleter.deleteIf(table.map, candKeys, n, modes, time, status, candValues);
          this.#settle(table, n, candKeys, candValues, status, stats, filter, modes, reasons);
        }
        scanned += b.count;
        opts.onProgress?.({ ref: table.ref, scanned, deleted: pass.deletedBefore + stats.deleted, mapsDone: pass.mapsDone, mapsTotal: pass.mapsTotal });
        await opts.afterBatch?.();
        if (budget.spent()) await budget.giveTurn();
      }
    } finally {
      cursor.close();
    }
  }

  /** Counts the outcome of each candidate and publishes the deleted ones. */
  #settle(table: CtTable, n: number, keys: Buffer, values: Buffer, status: Uint8Array, stats: GCMapStats, filter: GCFilter, modes: Uint8Array, reasons: Reasons): void {
    const ks = table.map.spec.keySize;
    let deleted = 0;
    for (let i = 0; i < n; i++) {
      switch (status[i]) {
        case DeleteStatus.DELETED:
          deleted++;
          break;
        case DeleteStatus.MISSING:
          stats.skipped++;
          break;
        case DeleteStatus.REFRESHED: {
          stats.refreshed++;
          stats.alive++;
          if (filter.emitKept) {
            const now = table.map.lookup(Buffer.from(keys.subarray(i * ks, (i + 1) * ks)));
            if (now) filter.emitKept(table.ref, keys, i * ks, now, 0);
          }
          break;
        }
        default:
          this.log.error({ status: status[i], map: table.map.spec.name }, 'gc: unknown delete status');
      }
    }
    if (deleted === 0) return;
    stats.deleted += deleted;
    this.#publish(table, n, keys, values, status, deleted, modes, reasons);
  }

  /**
   * Spends `deleted` sequence numbers of the table's family and, when anyone listens,
   * emits the delete step as one GCEventBatch: the one path every deletion takes to the
   * NAT coupling, Observe and the event bus (connectGCToBus).
   */
  #publish(table: CtTable, n: number, keys: Buffer, values: Buffer, status: Uint8Array, deleted: number, modes: Uint8Array, reasons: Reasons): void {
    const family = table.ref.family;
    const firstSequence = this.#sequence[family] + 1;
    this.#sequence[family] += deleted;
    const subject = this.#subjects[family];
    if (subject.observed) {
      subject.next({ family, ref: table.ref, count: n, keys, entries: values, status, deleted, firstSequence, modes, expiredReason: reasons.expired, matchedReason: reasons.matched });
    }
  }

  /**
   * Deletes `count` packed keys of `table` whatever their entries hold, each re-read at its
   * deletion by the same deleter as a pass (in the kernel for kernel maps), so the entries
   * returned are exactly what was deleted: CTMaps.Delete by keys. The deletions are
   * published like a pass's, one GCEventBatch per SCAN_BATCH keys with reason 'delete', so
   * that each deleted entry takes its SNAT mapping with it (NAT coupling), reaches Observe
   * subscribers and becomes a DESTROY event (connectGCToBus): a key Delete is a GC pass
   * that names its candidates (proto CTMaps.Delete). Waits for the pacers before each
   * batch, as a pass does, so a subscriber that keeps up loses nothing. Throws the
   * signal's reason when aborted between batches (keys deleted so far stay deleted and
   * were published), otherwise only on a backend failure.
   */
  async deleteKeys(table: CtTable, keys: Buffer, count: number, signal?: AbortSignal): Promise<KeyDeletion> {
    const status = new Uint8Array(count);
    const entries = Buffer.alloc(count * CT_ENTRY_SIZE);
    const modes = new Uint8Array(count).fill(DeleteMode.ALWAYS);
    const ks = table.map.spec.keySize;
    let deleted = 0;
    for (let off = 0; off < count; off += SCAN_BATCH) {
      if (signal?.aborted) throw signal.reason;
      if (this.#pacers.size > 0) await Promise.all([...this.#pacers].map((pace) => pace()));
      const n = Math.min(SCAN_BATCH, count - off);
      const k = keys.subarray(off * ks, (off + n) * ks);
      const st = status.subarray(off, off + n);
      const v = entries.subarray(off * CT_ENTRY_SIZE, (off + n) * CT_ENTRY_SIZE);
      const m = modes.subarray(off, off + n);
      this.deleter.deleteIf(table.map, k, n, m, 0, st, v);
      let inBatch = 0;
      for (let i = 0; i < n; i++) if (st[i] === DeleteStatus.DELETED) inBatch++;
      if (inBatch === 0) continue;
      deleted += inBatch;
      this.#publish(table, n, k, v, st, inBatch, m, DELETE_REASONS);
    }
    return { status, entries, deleted };
  }

  /** Completes the event streams (subscribers see `complete`). */
  close(): void {
    this.#subjects.ipv4.complete();
    this.#subjects.ipv6.complete();
  }
}
