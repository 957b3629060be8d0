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
import type * as grpc from '@grpc/grpc-js';
import { Family, formatIPv6 } from '../maps/addr';
import { entryFlagNames, keyLayout } from '../maps/ctmap/codec';
import { CT_ENTRY, CT_ENTRY_BACKEND_ID_OFFSET } from '../maps/ctmap/layout';
import type { MapRef } from '../maps/ctmap/spec';

const E = CT_ENTRY.fields;

// Wire types: 0 varint, 2 length-delimited.
const tag = (field: number, wire: number): number => (field << 3) | wire;


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
}

/** "0".."255" as ASCII digits: DIGITS[i*3 ..] holds DIGIT_COUNT[i] bytes (ct-json.ts writes them too). */
export const DIGITS = new Uint8Array(256 * 3);
export const DIGIT_COUNT = new Uint8Array(256);
for (let i = 0; i < 256; i++) {
  const s = String(i);
  DIGIT_COUNT[i] = s.length;
  for (let j = 0; j < s.length; j++) DIGITS[i * 3 + j] = s.charCodeAt(j);
}

// The hot path below writes into the buffer with index arithmetic and inlined varints:
// Buffer.readUInt32LE and small Buffer.copy calls cost more than the encoding itself
// (bench/RESULTS.md, profile notes).

function putVarint32(buf: Buffer, p: number, v: number): number {
  while (v > 0x7f) {
    buf[p++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  buf[p++] = v;
  return p;
}

function putVarint64(buf: Buffer, p: number, lo: number, hi: number): number {
  while (hi !== 0 || lo > 0x7f) {
    buf[p++] = (lo & 0x7f) | 0x80;
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
  }
  buf[p++] = lo;
  return p;
}

/** A varint field, omitted when zero (proto3). */
function putUint(buf: Buffer, p: number, tagByte: number, v: number): number {
  if (v === 0) return p;
  buf[p++] = tagByte;
  return putVarint32(buf, p, v);
}

const u32le = (b: Buffer, o: number): number => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;

/** A little-endian u64 of the map value as a varint field, omitted when zero. */
function putU64(buf: Buffer, p: number, tagByte: number, src: Buffer, o: number): number {
  const lo = u32le(src, o);
  const hi = u32le(src, o + 4);
  if (lo === 0 && hi === 0) return p;
  buf[p++] = tagByte;
  return putVarint64(buf, p, lo, hi);
}

/** An address as a string field (always < 128 bytes: one length byte). */
function putAddress(buf: Buffer, p: number, tagByte: number, family: Family, src: Buffer, off: number): number {
  buf[p++] = tagByte;
  const lenAt = p++;
  if (family === 'ipv6') {
    p += buf.write(formatIPv6(src, off), p, 'latin1');
  } else {
    for (let i = 0; i < 4; i++) {
      if (i !== 0) buf[p++] = 0x2e; // '.'
      const octet = src[off + i];
      const n = DIGIT_COUNT[octet];
      for (let j = 0; j < n; j++) buf[p + j] = DIGITS[octet * 3 + j];
      p += n;
    }
  }
  buf[lenAt] = p - lenAt - 1;
  return p;
}

const flagNamesCache = new Map<number, Uint8Array>();

/** The encoded repeated `flag_names` (field 14) for a flags value, cached per value. */
function flagNamesBytes(flags: number): Uint8Array {
  let b = flagNamesCache.get(flags);
  if (!b) {
    const w = new WireWriter(256);
    for (const name of entryFlagNames(flags)) w.latin1Field(14, name);
    b = Uint8Array.from(w.buf.subarray(0, w.pos));
    flagNamesCache.set(flags, b);
  }
  return b;
}

/** Cached per map under a number (family, kind, cluster id): no key string per record. */
const mapRefBodies = new Map<number, Buffer>();

/** The encoded MapRef message body for a map (field values only; < 128 bytes), cached per map. */
export function mapRefBody(ref: MapRef): Buffer {
  const key = ((ref.family === 'ipv4' ? 0 : 2) + (ref.kind === 'tcp' ? 0 : 1)) * 0x100000000 + ref.clusterId;
  let body = mapRefBodies.get(key);
  if (!body) {
    const w = new WireWriter(16);
    w.uintField(1, ref.family === 'ipv4' ? 1 : 2);
    w.uintField(2, ref.kind === 'tcp' ? 1 : 2);
    w.uintField(3, ref.clusterId);
    body = Buffer.from(w.buf.subarray(0, w.pos));
    mapRefBodies.set(key, body);
  }
  return body;
}

/** Upper bound of one encoded CtRecord (IPv6, every field at its widest, all flags). */
const MAX_RECORD_BYTES = 512;

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
  w.ensure(MAX_RECORD_BYTES);
  const buf = w.buf;
  const K = keyLayout(family).fields;
  let p = w.pos;

  buf[p++] = 0x0a; // map = 1
  buf[p++] = refBody.length;
  for (let i = 0; i < refBody.length; i++) buf[p++] = refBody[i];

  buf[p++] = 0x12; // key = 2 (< 128 bytes even for IPv6)
  const keyLen = p++;
  p = putAddress(buf, p, 0x0a, family, keys, koff + K.daddr.offset);
  p = putAddress(buf, p, 0x12, family, keys, koff + K.saddr.offset);
  p = putUint(buf, p, 0x18, (keys[koff + K.dport.offset] << 8) | keys[koff + K.dport.offset + 1]);
  p = putUint(buf, p, 0x20, (keys[koff + K.sport.offset] << 8) | keys[koff + K.sport.offset + 1]);
  p = putUint(buf, p, 0x28, keys[koff + K.nexthdr.offset]);
  p = putUint(buf, p, 0x30, keys[koff + K.flags.offset]);
  buf[keyLen] = p - keyLen - 1;

  buf[p++] = 0x1a; // entry = 3
  const entryStart = ++p; // one length byte reserved; endLen widens it when needed
  p = putU64(buf, p, 0x08, values, voff + E.packets.offset);
  p = putU64(buf, p, 0x10, values, voff + E.bytes.offset);
  const lifetime = u32le(values, voff + E.lifetime.offset);
  p = putUint(buf, p, 0x18, lifetime);
  const flags = values[voff + E.flags.offset] | (values[voff + E.flags.offset + 1] << 8);
  p = putUint(buf, p, 0x20, flags);
  p = putUint(buf, p, 0x28, (values[voff + E.rev_nat_index.offset] << 8) | values[voff + E.rev_nat_index.offset + 1]);
  p = putUint(buf, p, 0x30, (values[voff + E.nat_port.offset] << 8) | values[voff + E.nat_port.offset + 1]);
  p = putUint(buf, p, 0x38, values[voff + E.tx_flags_seen.offset]);
  p = putUint(buf, p, 0x40, values[voff + E.rx_flags_seen.offset]);
  p = putUint(buf, p, 0x48, u32le(values, voff + E.src_sec_id.offset));
  p = putUint(buf, p, 0x50, u32le(values, voff + E.last_tx_report.offset));
  p = putUint(buf, p, 0x58, u32le(values, voff + E.last_rx_report.offset));
  p = putU64(buf, p, 0x60, values, voff + E.union0.offset + CT_ENTRY_BACKEND_ID_OFFSET);
  // union0 is always sent as its 16 raw bytes, zero or not, as the slow path does.
  buf[p++] = 0x6a;
  buf[p++] = 16;
  for (let i = 0; i < 16; i++) buf[p++] = values[voff + E.union0.offset + i];
  if (flags !== 0) {
    const names = flagNamesBytes(flags);
    for (let i = 0; i < names.length; i++) buf[p++] = names[i];
  }
  const expires = lifetime - now;
  if (expires !== 0) {
    buf[p++] = 0x78;
    // int64 two's complement: a negative value is a 10-byte varint.
    p = putVarint64(buf, p, expires >>> 0, expires < 0 ? 0xffffffff : Math.floor(expires / 0x100000000));
  }
  w.pos = p;
  w.endLen(entryStart);
}

/**
 * A copy of a service definition whose listed methods also accept messages already encoded
 * by this module (a Buffer is sent as is); every other message goes through protobufjs.
 */
export function acceptEncodedResponses(base: grpc.ServiceDefinition, methods: readonly string[]): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = { ...base };
  for (const name of methods) {
    const m = def[name];
    const original = m.responseSerialize;
    def[name] = { ...m, responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : original(v)) };
  }
  return def as grpc.ServiceDefinition;
}
