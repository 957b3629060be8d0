/**
 * ctmap.v1.CTEvents messages (issue 13): the request as proto-loader presents it and its
 * parsing, the enum names of kinds, reasons and loss points, and the stream's messages
 * encoded straight from the events' key and entry bytes (as GCRunner.Observe's are: a
 * CtRecord through protobufjs costs several times more than the wire writer).
 */
import { invalidArgument, quote } from '../errors';
import type { Family } from '../maps/addr';
import type { CtBusItem, CtEventFilter, CtLossPoint } from '../maps/ctmap/events/bus';
import type { CtEventInput, CtEventKind, CtEventReason, CtLifecycleEvent } from '../maps/ctmap/events/types';
import { ctNow } from '../maps/clock';
import { DumpFilter, EntryPredicate, compileFilter } from '../maps/ctmap/flow-filter';
import { CtRecordMsg, DumpFilterMsg, parseDumpFilter, parseOptionalFamily } from './ct-proto';
import { WireWriter, mapRefBody, writeCtRecord } from './ct-wire';

/** WatchCtEventsRequest. */
export interface WatchCtEventsRequestMsg {
  family?: string;
  kinds?: Array<string | number>;
  filter?: DumpFilterMsg | null;
}

/** CtEventsLost. */
export interface CtEventsLostMsg {
  count: string;
  at: string;
  family: string;
}

/** CtLifecycleEvent as proto-loader presents it (a client's view). */
export interface CtLifecycleEventMsg {
  kind: string;
  reason: string;
  family: string;
  record: CtRecordMsg | null;
  sequence: string;
  lost: CtEventsLostMsg | null;
}

/** CtLifecycleEventBatch. */
export interface CtLifecycleEventBatchMsg {
  events: CtLifecycleEventMsg[];
}

/** Enum numbers of CtEventKind. */
export const KIND_NUMBER: Readonly<Record<CtEventKind, number>> = Object.freeze({ new: 1, close: 2, destroy: 3 });
/** Enum names of CtEventKind. */
export const KIND_NAME: Readonly<Record<CtEventKind, string>> = Object.freeze({
  new: 'CT_EVENT_KIND_NEW',
  close: 'CT_EVENT_KIND_CLOSE',
  destroy: 'CT_EVENT_KIND_DESTROY',
});

/** Enum numbers of CtEventReason (proto/ctmap/v1/ctmap.proto). */
export const REASON_NUMBER: Readonly<Record<CtEventReason, number>> = Object.freeze({
  created: 1,
  fin: 2,
  rst: 3,
  'socket-close': 4,
  'gc-expired': 5,
  'gc-filter': 6,
  flush: 7,
  delete: 8,
  'cluster-leave': 9,
});

/** Enum names of CtEventLossPoint. */
export const LOSS_POINT_NAME: Readonly<Record<CtLossPoint, string>> = Object.freeze({
  subscriber: 'CT_EVENT_LOSS_POINT_SUBSCRIBER',
  source: 'CT_EVENT_LOSS_POINT_SOURCE',
});

const KIND_BY_WIRE: Readonly<Record<string, CtEventKind>> = Object.freeze({
  CT_EVENT_KIND_NEW: 'new',
  CT_EVENT_KIND_CLOSE: 'close',
  CT_EVENT_KIND_DESTROY: 'destroy',
  1: 'new',
  2: 'close',
  3: 'destroy',
});

/** The kind a CtEventKind enum name stands for ("CT_EVENT_KIND_CLOSE" -> "close"), for clients. */
export function kindOfName(name: string): CtEventKind | undefined {
  return KIND_BY_WIRE[name];
}

/** The reason a CtEventReason enum name stands for ("CT_EVENT_REASON_GC_EXPIRED" -> "gc-expired"). */
export function reasonOfName(name: string): CtEventReason | undefined {
  const r = name.replace(/^CT_EVENT_REASON_/, '').toLowerCase().replace(/_/g, '-');
  return r in REASON_NUMBER ? (r as CtEventReason) : undefined;
}

/** A WatchCtEventsRequest's filter. INVALID_ARGUMENT naming `family` or `kinds[i]`. */
export async function parseWatchRequest(req: WatchCtEventsRequestMsg | undefined): Promise<CtEventFilter> {
  const family = parseOptionalFamily(req?.family, 'family');
  const kinds = (req?.kinds ?? []).map((k, i) => {
    const kind = KIND_BY_WIRE[String(k)];
    if (!kind) throw invalidArgument(`kinds[${i}]`, `must be CT_EVENT_KIND_NEW, CT_EVENT_KIND_CLOSE or CT_EVENT_KIND_DESTROY, got ${quote(k)}`);
    return kind;
  });
  const filter = await parseDumpFilter(req?.filter, ctNow());
  return { families: family ? [family] : undefined, kinds: kinds.length > 0 ? [...new Set(kinds)] : undefined, match: filter && eventMatcher(filter) };
}

/**
 * The test of a subscription's DumpFilter on each event's key and entry, per family; a
 * state is judged at the CT clock's now when the event passes, so the filter is compiled
 * again when that second changes.
 */
function eventMatcher(filter: DumpFilter): (e: CtEventInput) => boolean {
  let at = -1;
  let tests: Record<Family, EntryPredicate | null> | undefined;
  return (e) => {
    if (filter.state !== undefined) {
      const now = Math.floor(ctNow());
      if (now !== at) {
        at = now;
        tests = undefined;
        filter = { ...filter, now };
      }
    }
    tests ??= { ipv4: compileFilter(filter, 'ipv4'), ipv6: compileFilter(filter, 'ipv6') };
    const test = tests[e.ref.family];
    return test !== null && test(e.key, 0, e.entry, 0);
  };
}

const familyNumber = (f: Family): number => (f === 'ipv4' ? 1 : 2);

/** A varint of a non-negative safe integer (sequence numbers and counts may pass 2^32). */
function varintNumber(w: WireWriter, v: number): void {
  w.varint64(v >>> 0, Math.floor(v / 0x100000000));
}

/** Appends one CtLifecycleEvent body for `e` (`now`: CT clock seconds for expires_in_seconds). */
export function writeLifecycleEvent(w: WireWriter, e: CtLifecycleEvent, now: number): void {
  w.ensure(32);
  w.uintField(1, KIND_NUMBER[e.kind]);
  w.uintField(2, REASON_NUMBER[e.reason]);
  w.uintField(3, familyNumber(e.ref.family));
  const mark = w.beginLen(4);
  writeCtRecord(w, e.ref.family, mapRefBody(e.ref), e.key, 0, e.entry, 0, now);
  w.endLen(mark);
  w.ensure(16);
  w.byte(0x28);
  varintNumber(w, e.sequence);
}

/** Appends one CtLifecycleEvent body holding only the lost notice. */
export function writeLostNotice(w: WireWriter, at: CtLossPoint, family: Family | undefined, count: number): void {
  w.ensure(32);
  const mark = w.beginLen(6);
  w.byte(0x08);
  varintNumber(w, count);
  w.uintField(2, at === 'subscriber' ? 1 : 2);
  if (family) w.uintField(3, familyNumber(family));
  w.endLen(mark);
}

/**
 * One CtLifecycleEventBatch message holding `item` (a batch of events, or one lost notice).
 * A fresh buffer per call: grpc-js may hold a message until the client drains.
 */
export function encodeEventBatch(item: CtBusItem, now: number): Buffer {
  const w = new WireWriter(item.kind === 'events' ? item.events.length * 200 + 64 : 64);
  if (item.kind === 'lost') {
    const mark = w.beginLen(1);
    writeLostNotice(w, item.at, item.family, item.count);
    w.endLen(mark);
  } else {
    for (const e of item.events) {
      w.ensure(8); // beginLen writes its tag and length byte unchecked
      const mark = w.beginLen(1);
      writeLifecycleEvent(w, e, now);
      w.endLen(mark);
    }
  }
  return w.buf.subarray(0, w.pos);
}

/**
 * The CtLifecycleEvent messages of `item`, one per event (or the one lost notice): one
 * buffer for them all, sliced per message.
 */
export function encodeEventMessages(item: CtBusItem, now: number): Buffer[] {
  const w = new WireWriter(item.kind === 'events' ? item.events.length * 200 + 64 : 64);
  if (item.kind === 'lost') {
    writeLostNotice(w, item.at, item.family, item.count);
    return [w.buf.subarray(0, w.pos)];
  }
  const ends: number[] = [];
  for (const e of item.events) {
    writeLifecycleEvent(w, e, now);
    ends.push(w.pos);
  }
  // Sliced only once written: the buffer may have been reallocated while growing.
  let start = 0;
  return ends.map((end) => {
    const m = w.buf.subarray(start, end);
    start = end;
    return m;
  });
}
