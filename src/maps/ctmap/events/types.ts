/**
 * The CT lifecycle event vocabulary (issue 13): what every producer publishes into the one
 * event stream clients watch (CTEvents over gRPC), whatever removed or changed the entry.
 *
 * Producers: the datapath's ring buffer (NEW, CLOSE: bpf/ct_events.h, decoded by the ring
 * reader in src/datapath/), GC passes (DESTROY), the CTMaps Delete and Flush calls, a
 * cluster leaving (its inner maps' entries), and fate-sharing (CLOSE at socket close,
 * through the same ring). They publish CtEventInput batches; the bus gives each event its
 * per-family sequence number and hands subscribers CtLifecycleEvent batches in order.
 */
import type { MapRef } from '../spec';

export type CtEventKind = 'new' | 'close' | 'destroy';

/** Why the event happened; each kind has its own reasons. */
export type CtEventReason =
  // NEW
  | 'created' // the datapath inserted the entry
  // CLOSE
  | 'fin' // the datapath saw the flow's first FIN
  | 'rst' // the datapath saw an RST
  | 'socket-close' // fate-sharing expired the entry when its socket closed
  // DESTROY
  | 'gc-expired' // a GC pass removed it: its lifetime had passed
  | 'gc-filter' // a GC pass removed it by its filter (match_ips, or a time given by the caller)
  | 'flush' // CTMaps.Flush
  | 'delete' // CTMaps.Delete
  | 'cluster-leave'; // its cluster left the mesh, and its inner map went with it

/** One event as a producer publishes it: no sequence number yet. */
export interface CtEventInput {
  readonly kind: CtEventKind;
  readonly reason: CtEventReason;
  readonly ref: MapRef;
  /** The key as the map holds it (14 bytes for IPv4, 38 for IPv6). */
  readonly key: Buffer;
  /** The 56-byte ct_entry as it was when the event happened. */
  readonly entry: Buffer;
}

/** An event as subscribers get it. */
export interface CtLifecycleEvent extends CtEventInput {
  /** Per family, increasing by one per event the bus published (lost ones included). */
  readonly sequence: number;
}
