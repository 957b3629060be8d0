/**
 * The daemon's own producers of CT lifecycle events (issue 13, item 3): GC passes, and
 * through them CTMaps.Flush, a cluster leaving and CTMaps.Delete (a filtered Delete is a
 * pass with reason delete; a key Delete is GCEngine.deleteKeys, which publishes on the
 * same GC stream), so every deletion reaches the bus once, here. The datapath's ring
 * reader publishes NEW / CLOSE itself (src/datapath/).
 */
import type { Subscription } from 'rxjs';
import type { Family } from '../../addr';
import { CT_ENTRY_SIZE, keyLayout } from '../codec';
import type { MapRef } from '../spec';
import { SCAN_BATCH, type GCEngine } from '../gc/engine';
import { destroyReasonOf, type GCEventBatch } from '../gc/events';
import { DeleteStatus } from '../gc/types';
import type { CtEventBus } from './bus';
import type { CtEventInput, CtEventReason } from './types';

/** A subscriber that takes nothing for this long no longer holds GC passes back (as Observe's). */
export const GC_EVENTS_STALL_MS = 100;

/**
 * DESTROY events of the DELETED candidates among the first `count` (key i at
 * keys[i*keySize], entry i at entries[i*CT_ENTRY_SIZE]), in order, with copies of their
 * bytes (one copy per buffer, sliced per event): the caller's buffers may be reused.
 */
export function destroyEvents(
  ref: MapRef,
  count: number,
  keys: Buffer,
  entries: Buffer,
  status: Uint8Array,
  reasonOf: (i: number) => CtEventReason,
): CtEventInput[] {
  const ks = keyLayout(ref.family).size;
  const keyCopy = Buffer.from(keys.subarray(0, count * ks));
  const entryCopy = Buffer.from(entries.subarray(0, count * CT_ENTRY_SIZE));
  const out: CtEventInput[] = [];
  for (let i = 0; i < count; i++) {
    if (status[i] !== DeleteStatus.DELETED) continue;
    out.push({
      kind: 'destroy',
      reason: reasonOf(i),
      ref,
      key: keyCopy.subarray(i * ks, (i + 1) * ks),
      entry: entryCopy.subarray(i * CT_ENTRY_SIZE, (i + 1) * CT_ENTRY_SIZE),
    });
  }
  return out;
}

/** Publishes a GC batch's deletions, or only spends their sequence numbers when nobody listens. */
export function publishGCBatch(bus: CtEventBus, batch: GCEventBatch): void {
  if (!bus.observed) {
    bus.skip(batch.family, batch.deleted);
    return;
  }
  bus.publish(destroyEvents(batch.ref, batch.count, batch.keys, batch.entries, batch.status, (i) => destroyReasonOf(batch, i)));
}

/**
 * Every deletion of a GC pass of `families` becomes a DESTROY event on `bus` (reason from
 * the pass: gc-expired, gc-filter, flush, delete, cluster-leave), and passes wait between batches
 * for bus subscribers that keep up, as they do for Observe subscribers: one that keeps up
 * loses nothing, one that stalls for GC_EVENTS_STALL_MS stops holding passes back and is
 * told what it lost. Returns the disconnection (idempotent).
 */
export function connectGCToBus(engine: GCEngine, families: readonly Family[], bus: CtEventBus): () => void {
  const subs: Subscription[] = families.map((f) => engine.batches(f).subscribe((batch) => publishGCBatch(bus, batch)));
  const removePacer = engine.addPacer(() => bus.waitForRoom(SCAN_BATCH, GC_EVENTS_STALL_MS));
  return () => {
    removePacer();
    for (const s of subs) s.unsubscribe();
  };
}
