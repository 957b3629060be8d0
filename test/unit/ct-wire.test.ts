import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Family } from '../../src/maps/addr';
import { CT_ENTRY_SIZE, decodeEntry, decodeKey, keySize } from '../../src/maps/ctmap/codec';
import { MapRef } from '../../src/maps/ctmap/spec';
import { entryMsg, mapRefMsg } from '../../src/api/ct-proto';
import { WireWriter, mapRefBody, writeCtRecord } from '../../src/api/ct-wire';
import { services } from '../../src/api/proto';

// A small deterministic PRNG so failures reproduce.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s;
  };
}

function randomRaw(family: Family, next: () => number): { key: Buffer; value: Buffer } {
  const key = Buffer.alloc(keySize(family));
  const value = Buffer.alloc(CT_ENTRY_SIZE);
  for (let i = 0; i < key.length; i++) key[i] = next() & 0xff;
  for (let i = 0; i < value.length; i++) value[i] = next() & 0xff;
  // Exercise zero-suppression and the varint extremes too.
  const mode = next() % 4;
  if (mode === 0) value.fill(0);
  if (mode === 1) value.fill(0xff);
  if (mode === 2) key.fill(0, key.length - 6);
  return { key, value };
}

test('fast CtRecord encoding decodes exactly like the protobufjs encoding of the same record', () => {
  const method = services().CTMaps.service.DumpEntries;
  const next = rng(42);
  const now = 123456;
  for (const family of ['ipv4', 'ipv6'] as const) {
    for (const clusterId of [0, 7]) {
      const ref: MapRef = { family, kind: 'any', clusterId };
      const body = mapRefBody(ref);
      for (let n = 0; n < 500; n++) {
        const { key, value } = randomRaw(family, next);
        // Lifetimes around `now` so expires_in_seconds takes both signs.
        if (n % 3 === 0) value.writeUInt32LE(now + (n % 2 ? 17 : -17) * n, 32);
        const w = new WireWriter(64);
        writeCtRecord(w, family, body, key, 0, value, 0, now);
        const fast = method.responseDeserialize(Buffer.from(w.buf.subarray(0, w.pos)));
        const slowObj = { map: mapRefMsg(ref), key: decodeKey(family, key), entry: entryMsg(decodeEntry(value), now) };
        const slow = method.responseDeserialize(method.responseSerialize(slowObj));
        assert.deepEqual(fast, slow, `${family} record ${n}`);
      }
    }
  }
});

test('nested lengths over 127 bytes are re-encoded correctly (many flag names)', () => {
  const method = services().CTMaps.service.DumpEntries;
  const key = Buffer.alloc(38, 0xab);
  const value = Buffer.alloc(56, 0xff); // all flags set: a long flag_names list
  const w = new WireWriter(8);
  writeCtRecord(w, 'ipv6', mapRefBody({ family: 'ipv6', kind: 'tcp', clusterId: 0 }), key, 0, value, 0, 0);
  const decoded = method.responseDeserialize(Buffer.from(w.buf.subarray(0, w.pos))) as { entry: { flag_names: string[]; packets: string } };
  assert.equal(decoded.entry.flag_names.length, 11);
  assert.equal(decoded.entry.packets, '18446744073709551615');
});
