/**
 * Protobuf wire encoding of ctmap.v1.CtRecord straight from raw BPF key/value bytes.
 *
 * Why: a dump of a million entries through protobufjs builds millions of JS objects and
 * strings; encoding from the map's bytes into one buffer per batch is several times
 * faster and allocation-free per entry. test/unit/ct-wire.test.ts decodes the output with
 * the proto-loader (protobufjs) deserializer and compares it with the slow path.
 *
 * Field numbers are those of proto/ctmap/v1/ctmap.proto; proto3 zero values are omitted,
 * as protobufjs does.
 */
import { Family, formatIPv6 } from '../maps/ctmap/addr';
import { entryFlagNames, keyLayout } from '../maps/ctmap/codec';
import { CT_ENTRY, CT_ENTRY_BACKEND_ID_OFFSET } from '../maps/ctmap/layout';
import { MapRef } from '../maps/ctmap/spec';

const E = CT_ENTRY.fields;

// Wire types: 0 varint, 2 length-delimited.
const tag = (field: number, wire: number): number => (field << 3) | wire;

/** "0".."255" as ASCII bytes, for IPv4 text without string building. */
const DECIMAL = Array.from({ length: 256 }, (_, i) => Buffer.from(String(i), 'latin1'));

/** A growable output buffer with varint and nested-message helpers. */
export class WireWriter {
  buf: Buffer;
  pos = 0;

  constructor(initial = 1 << 16) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  byte(b: number): void {
    this.buf[this.pos++] = b;
  }

  /** Unsigned varint of a number < 2^32. */
  varint32(v: number): void {
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  /** Unsigned varint of the 64-bit value hi:lo (two u32 halves). */
  varint64(lo: number, hi: number): void {
    while (hi !== 0 || lo > 0x7f) {
      this.buf[this.pos++] = (lo & 0x7f) | 0x80;
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.buf[this.pos++] = lo;
  }

  uintField(field: number, v: number): void {
    if (v === 0) return;
    this.byte(tag(field, 0));
    this.varint32(v);
  }

  /** Starts a length-delimited field; returns the mark to pass to endLen. */
  beginLen(field: number): number {
    this.byte(tag(field, 2));
    this.pos++; // one length byte reserved: most sub-messages here are < 128 bytes
    return this.pos;
  }

  endLen(mark: number): void {
    const len = this.pos - mark;
    if (len < 0x80) {
      this.buf[mark - 1] = len;
      return;
    }
    // Longer than one varint byte: move the body right to make room for the length.
    const extra = len < 0x4000 ? 1 : len < 0x200000 ? 2 : 3;
    this.ensure(extra);
    this.buf.copyWithin(mark + extra, mark, this.pos);
    let p = mark - 1;
    let v = len;
    while (v > 0x7f) {
      this.buf[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[p] = v;
    this.pos += extra;
  }

  latin1Field(field: number, s: string): void {
    this.byte(tag(field, 2));
    this.varint32(s.length);
    this.pos += this.buf.write(s, this.pos, 'latin1');
  }

  take(): Buffer {
    const out = this.buf.subarray(0, this.pos);
    this.buf = Buffer.allocUnsafe(this.buf.length);
    this.pos = 0;
    return out;
  }
}

/** Writes an address as a length-delimited string field. */
function addressField(w: WireWriter, field: number, family: Family, src: Buffer, off: number): void {
  if (family === 'ipv6') {
    w.latin1Field(field, formatIPv6(src, off));
    return;
  }
  const mark = w.beginLen(field);
  for (let i = 0; i < 4; i++) {
    if (i) w.byte(0x2e); // '.'
    const d = DECIMAL[src[off + i]];
    for (let j = 0; j < d.length; j++) w.byte(d[j]);
  }
  w.endLen(mark);
}

const flagNamesCache = new Map<number, Buffer>();

/** The encoded repeated `flag_names` (field 14) for a flags value, cached per value. */
function flagNamesBytes(flags: number): Buffer {
  let b = flagNamesCache.get(flags);
  if (!b) {
    const w = new WireWriter(256);
    for (const name of entryFlagNames(flags)) w.latin1Field(14, name);
    b = Buffer.from(w.take());
    flagNamesCache.set(flags, b);
  }
  return b;
}

/** The encoded MapRef message body for a map (field values only). */
export function mapRefBody(ref: MapRef): Buffer {
  const w = new WireWriter(16);
  w.uintField(1, ref.family === 'ipv4' ? 1 : 2);
  w.uintField(2, ref.kind === 'tcp' ? 1 : 2);
  w.uintField(3, ref.clusterId);
  return Buffer.from(w.take());
}

/**
 * Appends one CtRecord message body (map, key, entry fields) for the entry at
 * keys[koff..] / values[voff..]. `now` (CT clock seconds) fills expires_in_seconds.
 */
export function writeCtRecord(
  w: WireWriter,
  family: Family,
  refBody: Buffer,
  keys: Buffer,
  koff: number,
  values: Buffer,
  voff: number,
  now: number,
): void {
  w.ensure(512);
  const L = keyLayout(family).fields;

  let mark = w.beginLen(1);
  w.pos += refBody.copy(w.buf, w.pos);
  w.endLen(mark);

  mark = w.beginLen(2);
  addressField(w, 1, family, keys, koff + L.daddr.offset);
  addressField(w, 2, family, keys, koff + L.saddr.offset);
  w.uintField(3, keys.readUInt16BE(koff + L.dport.offset));
  w.uintField(4, keys.readUInt16BE(koff + L.sport.offset));
  w.uintField(5, keys[koff + L.nexthdr.offset]);
  w.uintField(6, keys[koff + L.flags.offset]);
  w.endLen(mark);

  mark = w.beginLen(3);
  u64Field(w, 1, values, voff + E.packets.offset);
  u64Field(w, 2, values, voff + E.bytes.offset);
  const lifetime = values.readUInt32LE(voff + E.lifetime.offset);
  w.uintField(3, lifetime);
  const flags = values.readUInt16LE(voff + E.flags.offset);
  w.uintField(4, flags);
  w.uintField(5, values.readUInt16BE(voff + E.rev_nat_index.offset));
  w.uintField(6, values.readUInt16BE(voff + E.nat_port.offset));
  w.uintField(7, values[voff + E.tx_flags_seen.offset]);
  w.uintField(8, values[voff + E.rx_flags_seen.offset]);
  w.uintField(9, values.readUInt32LE(voff + E.src_sec_id.offset));
  w.uintField(10, values.readUInt32LE(voff + E.last_tx_report.offset));
  w.uintField(11, values.readUInt32LE(voff + E.last_rx_report.offset));
  u64Field(w, 12, values, voff + E.union0.offset + CT_ENTRY_BACKEND_ID_OFFSET);
  // union0 is always sent as its 16 raw bytes, zero or not, as the slow path does.
  w.byte(tag(13, 2));
  w.byte(16);
  w.pos += values.copy(w.buf, w.pos, voff + E.union0.offset, voff + E.union0.offset + 16);
  if (flags !== 0) w.pos += flagNamesBytes(flags).copy(w.buf, w.pos);
  const expires = lifetime - now;
  if (expires !== 0) {
    w.byte(tag(15, 0));
    // int64 two's complement: a negative value is a 10-byte varint.
    w.varint64(expires >>> 0, expires < 0 ? 0xffffffff : Math.floor(expires / 0x100000000));
  }
  w.endLen(mark);
}

function u64Field(w: WireWriter, field: number, src: Buffer, off: number): void {
  const lo = src.readUInt32LE(off);
  const hi = src.readUInt32LE(off + 4);
  if (lo === 0 && hi === 0) return;
  w.byte(tag(field, 0));
  w.varint64(lo, hi);
}
