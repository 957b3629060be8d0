/**
 * The ring record decoder without a kernel (the kernel test, test/kernel/ct-events.test.ts,
 * decodes what the datapath really writes): header fields and reasons one to one, the
 * key's length by family, copies by default and views of the caller's copy when `owned`
 * (the reader's one copy per batch), and what it refuses to guess.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeRingRecord } from '../../src/datapath/ring-decoder';
import { CtEventMapCode, CtEventReasonCode, CtEventTypeCode } from '../../src/maps/ctmap/events/layout';

function record(type: number, family: number, map: number, reason: number, o: { clusterId?: number; lost?: number; size?: number } = {}): Buffer {
  const b = Buffer.alloc(o.size ?? 112);
  b[0] = type;
  b[1] = family;
  b[2] = map;
  b[3] = reason;
  b.writeUInt32LE(o.clusterId ?? 0, 4);
  if (b.length >= 12) b.writeUInt32LE(o.lost ?? 0, 8);
  if (b.length >= 112) {
    for (let i = 0; i < 40; i++) b[16 + i] = i + 1; // key bytes 1..40
    b.writeBigUInt64LE(7n, 56 + 16); // entry.packets
  }
  return b;
}

test('NEW and CLOSE records: kind, reason, map, cluster, lost, and the key by family', () => {
  const v4 = decodeRingRecord(record(CtEventTypeCode.NEW, 4, CtEventMapCode.TCP, CtEventReasonCode.CREATED, { lost: 3 }));
  assert.equal(v4.type, 'event');
  assert.equal(v4.lost, 3);
  if (v4.type !== 'event') return;
  assert.deepEqual({ kind: v4.event.kind, reason: v4.event.reason, ref: v4.event.ref }, { kind: 'new', reason: 'created', ref: { family: 'ipv4', kind: 'tcp', clusterId: 0 } });
  assert.equal(v4.event.key.length, 14);
  assert.equal(v4.event.key[13], 14);
  assert.equal(v4.event.entry.length, 56);
  assert.equal(v4.event.entry.readBigUInt64LE(16), 7n);
  for (const [code, reason] of [
    [CtEventReasonCode.FIN, 'fin'],
    [CtEventReasonCode.RST, 'rst'],
    [CtEventReasonCode.SOCKET_CLOSE, 'socket-close'],
  ] as const) {
    const r = decodeRingRecord(record(CtEventTypeCode.CLOSE, 6, CtEventMapCode.ANY, code, { clusterId: 9 }));
    assert.ok(r.type === 'event' && r.event.kind === 'close' && r.event.reason === reason && r.event.key.length === 38, reason);
    assert.deepEqual(r.type === 'event' && r.event.ref, { family: 'ipv6', kind: 'any', clusterId: 9 });
  }
});

test('copies by default; views of the caller\'s own copy when owned', () => {
  const data = record(CtEventTypeCode.NEW, 4, CtEventMapCode.TCP, CtEventReasonCode.CREATED);
  const copied = decodeRingRecord(data);
  const viewed = decodeRingRecord(data, true);
  data[16] = 0xee; // the ring space is reused
  assert.ok(copied.type === 'event' && copied.event.key[0] === 1, 'a copy keeps the bytes as they were');
  assert.ok(viewed.type === 'event' && viewed.event.key[0] === 0xee, 'owned: a view of the caller\'s buffer');
});

test('fill-up signals, and records it does not guess at', () => {
  const f = decodeRingRecord(record(CtEventTypeCode.FILL_UP, 6, CtEventMapCode.TCP, CtEventReasonCode.PRESSURE, { size: 16, clusterId: 2 }));
  assert.deepEqual(f, { type: 'fill-up', lost: 0, signal: { family: 'ipv6', kind: 'tcp', clusterId: 2, reason: 'pressure' } });
  const ins = decodeRingRecord(record(CtEventTypeCode.FILL_UP, 4, CtEventMapCode.ANY, CtEventReasonCode.INSERT_FAILED, { size: 16 }));
  assert.ok(ins.type === 'fill-up' && ins.signal.reason === 'insert-failed' && ins.signal.kind === 'any');
  for (const [what, data] of [
    ['short header', Buffer.alloc(8)],
    ['family 5', record(CtEventTypeCode.NEW, 5, CtEventMapCode.TCP, CtEventReasonCode.CREATED)],
    ['map 7', record(CtEventTypeCode.NEW, 4, 7, CtEventReasonCode.CREATED)],
    ['NEW with a CLOSE reason', record(CtEventTypeCode.NEW, 4, CtEventMapCode.TCP, CtEventReasonCode.FIN)],
    ['type 9', record(9, 4, CtEventMapCode.TCP, CtEventReasonCode.CREATED)],
    ['truncated NEW', record(CtEventTypeCode.NEW, 4, CtEventMapCode.TCP, CtEventReasonCode.CREATED, { size: 60 })],
    ['fill-up with a NEW reason', record(CtEventTypeCode.FILL_UP, 4, CtEventMapCode.TCP, CtEventReasonCode.CREATED, { size: 16 })],
  ] as const) {
    assert.equal(decodeRingRecord(data).type, 'unknown', what);
  }
});
