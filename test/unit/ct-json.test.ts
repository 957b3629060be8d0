import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Family } from '../../src/maps/addr';
import { CT_ENTRY_SIZE, keySize } from '../../src/maps/ctmap/codec';
import { ConstText, CtJsonStyle, CtRecordJson, schemaMatches } from '../../src/api/ct-json';
import { WireWriter, mapRefBody, writeCtRecord } from '../../src/api/ct-wire';
import { packageDefinition, services } from '../../src/api/proto';

// A small deterministic PRNG so failures reproduce.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s;
  };
}

const batchMethod = services().CTMaps.service.DumpEntriesBatched;

/** What `ctmap ct list` printed before ct-json: JSON.stringify of the proto-loader records. */
function reference(batches: readonly Buffer[], style: CtJsonStyle): string {
  let text = '';
  let n = 0;
  for (const b of batches) {
    for (const r of (batchMethod.responseDeserialize(b) as { records: unknown[] }).records) {
      text += style === 'jsonl' ? `${JSON.stringify(r)}\n` : `${n === 0 ? '\n' : ',\n'}${JSON.stringify(r)}`;
      n++;
    }
  }
  return text;
}

function fast(batches: readonly Buffer[], style: CtJsonStyle, j = new CtRecordJson(style)): string {
  let text = '';
  for (const b of batches) {
    j.appendBatch(b);
    text += j.take();
  }
  return text;
}

/** One CtRecordBatch of `records` (each an encoded CtRecord body). */
function batchOf(records: readonly Buffer[]): Buffer {
  const w = new WireWriter(64);
  for (const r of records) {
    w.ensure(r.length + 16); // WireWriter's byte() and varint writes do not grow the buffer
    const mark = w.beginLen(1);
    r.copy(w.buf, w.pos);
    w.pos += r.length;
    w.endLen(mark);
  }
  return Buffer.from(w.buf.subarray(0, w.pos));
}

function randomRecord(family: Family, clusterId: number, next: () => number, now: number, n: number): Buffer {
  const key = Buffer.alloc(keySize(family));
  const value = Buffer.alloc(CT_ENTRY_SIZE);
  for (let i = 0; i < key.length; i++) key[i] = next() & 0xff;
  for (let i = 0; i < value.length; i++) value[i] = next() & 0xff;
  const mode = next() % 5;
  if (mode === 0) value.fill(0);
  if (mode === 1) value.fill(0xff);
  if (mode === 2) key.fill(0, key.length - 6);
  // Lifetimes around `now` so expires_in_seconds takes both signs, and zero.
  if (mode === 3) value.writeUInt32LE((now + ((n % 3) - 1) * 17 * n) >>> 0, 32);
  const w = new WireWriter(64);
  writeCtRecord(w, family, mapRefBody({ family, kind: n % 2 ? 'tcp' : 'any', clusterId }), key, 0, value, 0, now);
  return Buffer.from(w.buf.subarray(0, w.pos));
}

test('the fast path writes what JSON.stringify of the proto-loader records gives, byte for byte (jsonl and json)', () => {
  const next = rng(7);
  const batches: Buffer[] = [];
  for (const now of [0, 123456, 0xfffffff0]) {
    for (const family of ['ipv4', 'ipv6'] as const) {
      for (const clusterId of [0, 7, 511]) {
        const recs: Buffer[] = [];
        for (let n = 0; n < 300; n++) recs.push(randomRecord(family, clusterId, next, now, n));
        batches.push(batchOf(recs));
      }
    }
  }
  const j = new CtRecordJson('jsonl');
  assert.equal(fast(batches, 'jsonl', j), reference(batches, 'jsonl'));
  assert.equal(j.records, batches.length * 300);
  assert.equal(j.fallbacks, 0, 'every record the server encodes takes the fast path');
  assert.equal(fast(batches, 'json-array'), reference(batches, 'json-array'));
});

/** Hand-made records the server does not send but a valid encoding may hold. */
function oddRecords(): Buffer[] {
  const w = (build: (w: WireWriter) => void): Buffer => {
    const x = new WireWriter(1024);
    build(x);
    return Buffer.from(x.buf.subarray(0, x.pos));
  };
  /** A length-delimited field: a sub-message's body, or a string's UTF-8. */
  const sub = (x: WireWriter, field: number, body: Buffer) => {
    x.ensure(body.length + 16);
    x.varint32((field << 3) | 2);
    x.varint32(body.length);
    x.ensure(body.length);
    body.copy(x.buf, x.pos);
    x.pos += body.length;
  };
  const str = (x: WireWriter, field: number, s: string) => sub(x, field, Buffer.from(s, 'utf8'));
  const u64 = (x: WireWriter, field: number, lo: number, hi: number) => {
    x.ensure(16);
    x.varint32(field << 3);
    x.varint64(lo, hi);
  };
  const ref = mapRefBody({ family: 'ipv6', kind: 'any', clusterId: 3 });
  return [
    w(() => {}), // every field absent: map, key and entry null
    w((x) => sub(x, 1, ref)), // map only
    w((x) => {
      sub(x, 2, w(() => {})); // an empty key and an empty entry: every default
      sub(x, 3, w(() => {}));
    }),
    w((x) => {
      sub(x, 1, ref);
      sub(x, 2, w((k) => (str(k, 1, '10.0.0.1'), str(k, 2, 'a"b\\c'), k.uintField(3, 80)))); // needs escaping
    }),
    w((x) => sub(x, 2, w((k) => (str(k, 1, 'ünï'), k.uintField(6, 255))))), // not ASCII
    w((x) => sub(x, 2, w((k) => (str(k, 1, 'x\n'), k.uintField(3, 0xffffffff))))), // a control byte
    w((x) =>
      sub(
        x,
        3,
        w((e) => {
          u64(e, 1, 0xffffffff, 0xffffffff); // 2^64-1: beyond 2^53
          u64(e, 2, 0, 0x200000); // 2^53
          u64(e, 12, 1, 0x1fffff); // < 2^53
          u64(e, 15, 0, 0x80000000); // int64 min
          str(e, 14, 'A');
          str(e, 14, 'B');
          str(e, 13, '\u0001\u00ff'); // union0 of 3 bytes (utf8 of U+00FF is 2)
        }),
      ),
    ),
    w((x) => sub(x, 3, w((e) => (u64(e, 15, 0xfffffffb, 0xffffffff), u64(e, 15, 5, 0))))), // duplicates: the last wins
    w((x) => sub(x, 3, w((e) => u64(e, 15, 0x12345678, 0xffdfffff)))), // negative beyond -2^53
    w((x) => sub(x, 3, w((e) => u64(e, 15, 0, 0xffe00000)))), // -2^53 exactly
    w((x) => {
      u64(x, 9, 42, 0); // unknown fields at every level are skipped
      sub(x, 2, w((k) => (u64(k, 20, 1, 0), str(k, 21, 'zz'), k.uintField(4, 443))));
      sub(x, 3, w((e) => (e.varint32((17 << 3) | 5), e.byte(1), e.byte(2), e.byte(3), e.byte(4), e.uintField(3, 9))));
    }),
    w((x) => (sub(x, 1, ref), sub(x, 1, mapRefBody({ family: 'ipv4', kind: 'tcp', clusterId: 0 })))), // a sub-message twice: merged
    w((x) => sub(x, 2, w((k) => (k.byte(3 << 3), k.varint64(7, 1))))), // uint32 from a 6-byte varint: low 32 bits
    w((x) => sub(x, 3, w((e) => { for (let i = 0; i < 40; i++) str(e, 14, `F${i}`); }))), // more flag names than the scratch
  ];
}

test('odd but valid encodings: fast where it can be exact, the proto-loader path where not; same text', () => {
  const recs = oddRecords();
  const batches = [batchOf(recs), batchOf(recs.slice(3)), batchOf([recs[1], recs[1]])];
  assert.equal(fast(batches, 'jsonl'), reference(batches, 'jsonl'));
  assert.equal(fast(batches, 'json-array'), reference(batches, 'json-array'));
  // Other top-level fields of a batch are skipped, as protobufjs does.
  const extra = Buffer.concat([Buffer.from([0x10, 0x05]), batchOf([recs[2]]), Buffer.from([0x1a, 0x01, 0x00])]);
  assert.equal(fast([extra], 'jsonl'), reference([extra], 'jsonl'));
});

test('an empty batch writes nothing; a malformed batch fails as the proto-loader decoder does', () => {
  const j = new CtRecordJson('jsonl');
  assert.equal(j.appendBatch(Buffer.alloc(0)), 0);
  assert.equal(j.take(), '');
  const good = batchOf([randomRecord('ipv4', 0, rng(1), 0, 0)]);
  // A uint32 field sent as fixed32: protobufjs reads a varint there and then trips over the rest.
  const fixed32 = batchOf([Buffer.from([0x1a, 0x05, (3 << 3) | 5, 1, 0, 0, 0])]);
  for (const bad of [good.subarray(0, good.length - 3), Buffer.from([0x0a, 0x05, 0x12]), Buffer.from([0x08]), Buffer.concat([good, fixed32])]) {
    let expected: unknown;
    try {
      batchMethod.responseDeserialize(bad);
    } catch (err) {
      expected = err;
    }
    assert.ok(expected instanceof Error, 'the reference rejects it');
    assert.throws(() => j.appendBatch(bad), { message: (expected as Error).message });
    assert.equal(j.pending, 0, 'nothing of a failed batch is kept');
  }
});

test('a CtEntry of other fields than this module knows: every record goes through the proto-loader path', () => {
  const pd = packageDefinition();
  assert.equal(schemaMatches(pd), true, 'the fast path is on for the protos as built');
  const entry = pd['ctmap.v1.CtEntry'] as { type: { field: Array<Record<string, unknown>> } };
  const changed = {
    ...pd,
    'ctmap.v1.CtEntry': { ...entry, type: { ...entry.type, field: [...entry.type.field, { ...entry.type.field[0], name: 'more', number: 16 }] } },
  } as unknown as typeof pd;
  assert.equal(schemaMatches(changed), false);
  const next = rng(3);
  const batches = [batchOf(Array.from({ length: 50 }, (_, n) => randomRecord('ipv4', 0, next, 99, n)))];
  assert.equal(fast(batches, 'jsonl', new CtRecordJson('jsonl', changed)), reference(batches, 'jsonl'));
});

test('takeBytes views stay as written until released; a released buffer is written again instead of a new one', () => {
  const next = rng(11);
  const batch = batchOf(Array.from({ length: 2000 }, (_, n) => randomRecord('ipv4', 0, next, 99, n)));
  const expected = reference([batch], 'jsonl');
  const j = new CtRecordJson('jsonl');
  // Held views (queued for writing, not yet written): later text must go elsewhere.
  const held: Buffer[] = [];
  for (let i = 0; i < 12; i++) {
    j.appendBatch(batch);
    held.push(j.takeBytes());
  }
  for (const v of held) assert.equal(v.toString('latin1'), expected, 'a held view is never overwritten');
  const heldBuffers = new Set(held.map((v) => v.buffer));
  assert.ok(heldBuffers.size > 1, 'more text than one buffer holds: it went on in new buffers');
  // Released (written): the buffers are reused, and what comes out is still exact.
  for (const v of held) j.release(v);
  const reused = new Set<ArrayBufferLike>();
  for (let i = 0; i < 12; i++) {
    j.appendBatch(batch);
    const v = j.takeBytes();
    assert.equal(v.toString('latin1'), expected);
    reused.add(v.buffer);
    j.release(v);
  }
  assert.equal(reused.size, 1, 'each view released before the next batch: one buffer throughout');
  assert.ok(heldBuffers.has([...reused][0]), 'that buffer is one of the released ones, not a new allocation');
  // Releasing a view twice, or one that is not this instance's, changes nothing.
  const v = (j.appendBatch(batch), j.takeBytes());
  j.release(v);
  j.release(v);
  j.release(Buffer.from('x'));
  j.appendBatch(batch);
  assert.equal(j.take(), expected);
});

test('constant text is printable ASCII or refused', () => {
  assert.throws(() => new ConstText('a\nb'), /printable ASCII/);
  assert.throws(() => new ConstText('ü'), /printable ASCII/);
  const t = new ConstText('{"abc":"');
  assert.equal(t.length, 8);
  assert.equal(t.words.length, 1);
});
