/**
 * Decodes the records of the ctmapd_ct_events ring (bpf/ct_events.h, layouts in
 * src/maps/ctmap/events/layout.ts) into the lifecycle vocabulary: NEW and CLOSE become
 * CtEventInput (src/maps/ctmap/events/types.ts), FILL_UP becomes a FillUpSignal. Pure: no
 * native code, so unprivileged tests cover it. Every enum value maps one to one; a record
 * the decoder does not know (another build's program) is reported as such, never guessed.
 */
import type { Family } from '../maps/addr';
import { CT_ENTRY, CT_KEY4, CT_KEY6 } from '../maps/ctmap/layout';
import { CT_EVENT, CT_EVENT_HEADER, CtEventMapCode, CtEventReasonCode, CtEventTypeCode } from '../maps/ctmap/events/layout';
import type { CtEventInput, CtEventReason } from '../maps/ctmap/events/types';
import type { CtKind } from '../maps/ctmap/spec';

/** Why the datapath asked for an early GC pass. */
export type FillUpReason = 'insert-failed' | 'pressure';

/** A FILL_UP record: the datapath's SIGNAL_CT_FILL_UP. */
export interface FillUpSignal {
  readonly family: Family;
  readonly kind: CtKind;
  readonly clusterId: number;
  readonly reason: FillUpReason;
}

/** One decoded record; `lost` is the writer CPU's losses since its previous record. */
export type RingRecord =
  | { readonly type: 'fill-up'; readonly lost: number; readonly signal: FillUpSignal }
  | { readonly type: 'event'; readonly lost: number; readonly event: CtEventInput }
  | { readonly type: 'unknown'; readonly lost: number; readonly why: string };

const H = CT_EVENT_HEADER.fields;

const FAMILY: Readonly<Record<number, Family>> = { 4: 'ipv4', 6: 'ipv6' };
const KIND: Readonly<Record<number, CtKind>> = { [CtEventMapCode.TCP]: 'tcp', [CtEventMapCode.ANY]: 'any' };
const FILL_UP_REASON: Readonly<Record<number, FillUpReason>> = {
  [CtEventReasonCode.INSERT_FAILED]: 'insert-failed',
  [CtEventReasonCode.PRESSURE]: 'pressure',
};
/** The reasons each entry record type may carry. */
const ENTRY_REASON: Readonly<Record<number, Readonly<Record<number, CtEventReason>>>> = {
  [CtEventTypeCode.NEW]: { [CtEventReasonCode.CREATED]: 'created' },
  [CtEventTypeCode.CLOSE]: { [CtEventReasonCode.FIN]: 'fin', [CtEventReasonCode.RST]: 'rst', [CtEventReasonCode.SOCKET_CLOSE]: 'socket-close' },
};

/**
 * Decodes one record's data (as MappedRing.drain hands it: a view valid during the call).
 * The key and entry of an event are copied out, so the result outlives the ring's space,
 * unless `owned`: `data` is already the caller's copy, and they are views of it.
 */
export function decodeRingRecord(data: Buffer, owned = false): RingRecord {
  if (data.length < CT_EVENT_HEADER.size) return { type: 'unknown', lost: 0, why: `${data.length}-byte record, shorter than its header` };
  const lost = data.readUInt32LE(H.lost.offset);
  const type = data[H.type.offset];
  const family = FAMILY[data[H.family.offset]];
  const kind = KIND[data[H.map.offset]];
  const reasonCode = data[H.reason.offset];
  const clusterId = data.readUInt32LE(H.cluster_id.offset);
  if (!family || !kind) return { type: 'unknown', lost, why: `family ${data[H.family.offset]}, map ${data[H.map.offset]}` };
  if (type === CtEventTypeCode.FILL_UP) {
    const reason = FILL_UP_REASON[reasonCode];
    if (!reason) return { type: 'unknown', lost, why: `fill-up reason ${reasonCode}` };
    return { type: 'fill-up', lost, signal: { family, kind, clusterId, reason } };
  }
  const reason = ENTRY_REASON[type]?.[reasonCode];
  if (!reason) return { type: 'unknown', lost, why: `type ${type}, reason ${reasonCode}` };
  if (data.length < CT_EVENT.size) return { type: 'unknown', lost, why: `${data.length}-byte ${reason} record, want ${CT_EVENT.size}` };
  const keyAt = CT_EVENT.fields.key.offset;
  const keySize = family === 'ipv4' ? CT_KEY4.size : CT_KEY6.size;
  const entryAt = CT_EVENT.fields.entry.offset;
  return {
    type: 'event',
    lost,
    event: {
      kind: type === CtEventTypeCode.NEW ? 'new' : 'close',
      reason,
      ref: { family, kind, clusterId },
      key: owned ? data.subarray(keyAt, keyAt + keySize) : Buffer.from(data.subarray(keyAt, keyAt + keySize)),
      entry: owned ? data.subarray(entryAt, entryAt + CT_ENTRY.size) : Buffer.from(data.subarray(entryAt, entryAt + CT_ENTRY.size)),
    },
  };
}
