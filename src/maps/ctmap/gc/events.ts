/**
 * GC events travel in batches, one per delete step of a pass (up to SCAN_BATCH
 * candidates), and become one GCEvent object per deleted entry only for consumers that ask
 * for objects (Observe streams, tests). The NAT coupling reads a batch's buffers in place:
 * a pass over a node with no SNAT mappings then costs one check per batch instead of one
 * object, one Subject emission and one callback per deleted entry (≈190 ns each, a fifth
 * of a 1 Mi-entry pass).
 */
import type { Family } from '../../addr';
import { CT_ENTRY_SIZE, keyLayout } from '../codec';
import type { MapRef } from '../spec';
import { DeleteMode, DeleteStatus, GCDestroyReason, GCEvent } from './types';

/**
 * The outcome of one delete step. Candidate i has its key at keys[i*keySize] and status
 * status[i]; only DELETED candidates were deleted, and only their entries[i*CT_ENTRY_SIZE]
 * slots hold the value as it was at deletion. The buffers belong to the engine and are
 * reused after the emission returns: a consumer that keeps anything copies it (eventsOf
 * does).
 */
export interface GCEventBatch {
  readonly family: Family;
  readonly ref: MapRef;
  readonly count: number;
  readonly keys: Buffer;
  readonly entries: Buffer;
  readonly status: Uint8Array;
  /** Candidates with status DELETED. */
  readonly deleted: number;
  /** Sequence number of the first deleted candidate; the k-th deleted one has first + k. */
  readonly firstSequence: number;
  /** Candidate i's DeleteMode: why it was a candidate (a filter match, or its lifetime). */
  readonly modes: Uint8Array;
  /** The lifecycle reason of a candidate deleted for its lifetime (mode EXPIRED_BEFORE). */
  readonly expiredReason: GCDestroyReason;
  /** The lifecycle reason of a candidate deleted for a filter match (mode ALWAYS). */
  readonly matchedReason: GCDestroyReason;
}

/** The lifecycle reason of candidate i of `batch` (see GCEventBatch.modes). */
export function destroyReasonOf(batch: GCEventBatch, i: number): GCDestroyReason {
  return batch.modes[i] === DeleteMode.ALWAYS ? batch.matchedReason : batch.expiredReason;
}

/**
 * The batch's deletions as GCEvent objects, in order, with copies of keys and entries; only
 * the first `limit` of them for a consumer with room for no more (a subscriber that fell
 * behind counts the rest as lost without their objects being made).
 */
export function eventsOf(batch: GCEventBatch, limit = batch.deleted): GCEvent[] {
  const n = Math.max(0, Math.min(limit, batch.deleted));
  const events: GCEvent[] = new Array(n);
  if (n === 0) return events;
  const ks = keyLayout(batch.family).size;
  // One copy of each buffer, sliced per event, instead of two allocations per event.
  const keys = Buffer.from(batch.keys.subarray(0, batch.count * ks));
  const entries = Buffer.from(batch.entries.subarray(0, batch.count * CT_ENTRY_SIZE));
  let k = 0;
  for (let i = 0; k < n; i++) {
    if (batch.status[i] !== DeleteStatus.DELETED) continue;
    events[k] = {
      family: batch.family,
      ref: batch.ref,
      sequence: batch.firstSequence + k,
      key: keys.subarray(i * ks, (i + 1) * ks),
      entry: entries.subarray(i * CT_ENTRY_SIZE, (i + 1) * CT_ENTRY_SIZE),
    };
    k++;
  }
  return events;
}

/**
 * A batch holding exactly `events` (all DELETED, all of one map): for producers other than
 * the engine, e.g. tests and tools replaying events. Sequence numbers are taken from the
 * first event.
 */
export function batchOf(events: readonly GCEvent[]): GCEventBatch {
  if (events.length === 0) throw new RangeError('batchOf: no events');
  const { family, ref } = events[0];
  const ks = keyLayout(family).size;
  const keys = Buffer.alloc(events.length * ks);
  const entries = Buffer.alloc(events.length * CT_ENTRY_SIZE);
  events.forEach((e, i) => {
    if (e.family !== family || e.ref.kind !== ref.kind || e.ref.clusterId !== ref.clusterId) throw new RangeError('batchOf: events of different maps');
    e.key.copy(keys, i * ks);
    e.entry.copy(entries, i * CT_ENTRY_SIZE);
  });
  return {
    family,
    ref,
    count: events.length,
    keys,
    entries,
    status: new Uint8Array(events.length).fill(DeleteStatus.DELETED),
    deleted: events.length,
    firstSequence: events[0].sequence,
    modes: new Uint8Array(events.length).fill(DeleteMode.EXPIRED_BEFORE),
    expiredReason: 'gc-expired',
    matchedReason: 'gc-filter',
  };
}
