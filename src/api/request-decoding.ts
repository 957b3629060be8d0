/**
 * Request decoding as the reference protobuf implementation (the C++ runtime behind protoc
 * and most gRPC servers) decodes, in front of protobufjs (issue 12, defect 12).
 *
 * protobufjs, which proto-loader's deserializers use, differs on valid input:
 * - a 32-bit varint field (int32, uint32, sint32, enum, bool) of 6 to 9 bytes: it reads 5
 *   bytes and skips 5 more, landing in the next field (INTERNAL, or a wrong value); the
 *   reference reads up to 10 bytes and keeps the low 32 bits (bool: any bit set is true);
 * - a known field number with another wire type: it decodes the bytes as the declared
 *   type; the reference treats such a field as unknown and skips it;
 * - a singular message field that occurs twice: it keeps the last; the reference merges
 *   them (the bytes of both, as one message);
 * - a string that is not UTF-8: it substitutes U+FFFD; the reference (proto3) refuses it.
 *
 * canonicalRequest() reads the bytes by the reference's rules and, only when they differ
 * from what protobufjs reads the same way, writes the equivalent canonical encoding:
 * unknown and mistyped fields dropped, 32-bit varints re-encoded from their low 32 bits,
 * repeated singular messages merged, the last of a oneof's fields kept. Bytes the
 * reference refuses (truncated, a varint longer than 10 bytes, a tag past 32 bits or of
 * field 0, wire types 6 and 7, an unmatched end of group, nesting past 100) are refused
 * with a ProtobufWireError. Validation of the decoded request stays where it was (the
 * parse* functions in ct-proto.ts and the others).
 */
import { isUtf8 } from 'node:buffer';
import type * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';
import { servedRoot } from './proto';

/** Bytes the reference parser refuses. grpc-js answers INTERNAL, as reference servers do. */
export class ProtobufWireError extends Error {
  override name = 'ProtobufWireError';
}

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const SGROUP = 3;
const EGROUP = 4;
const I32 = 5;

/** The reference's default recursion limit (nested messages and groups). */
const MAX_DEPTH = 100;

/** How a field's value is read and re-encoded. */
type Kind = 'int32' | 'uint32' | 'bool' | 'int64' | 'i32' | 'i64' | 'string' | 'bytes' | 'message';

interface FieldPlan {
  readonly kind: Kind;
  /** The wire type of one value (packed repeated scalars also arrive as LEN). */
  readonly wire: number;
  readonly repeated: boolean;
  readonly packable: boolean;
  readonly type?: protobuf.Type;
  /** A real oneof (more than one member): only the last member seen counts. */
  readonly oneof?: string;
}

const KINDS: Record<string, Kind> = {
  int32: 'int32',
  uint32: 'uint32',
  sint32: 'uint32', // zigzag is applied to the low 32 bits by both parsers
  bool: 'bool',
  int64: 'int64',
  uint64: 'int64',
  sint64: 'int64',
  fixed32: 'i32',
  sfixed32: 'i32',
  float: 'i32',
  fixed64: 'i64',
  sfixed64: 'i64',
  double: 'i64',
  string: 'string',
  bytes: 'bytes',
};
const WIRE_OF: Record<Kind, number> = { int32: VARINT, uint32: VARINT, bool: VARINT, int64: VARINT, i32: I32, i64: I64, string: LEN, bytes: LEN, message: LEN };

const plans = new WeakMap<protobuf.Type, Map<number, FieldPlan>>();

function planOf(type: protobuf.Type): Map<number, FieldPlan> {
  let plan = plans.get(type);
  if (plan) return plan;
  plan = new Map();
  for (const f of type.fieldsArray) {
    f.resolve();
    // A map field's entries are passed on as they came (no served request has one).
    const kind: Kind | undefined = f.map
      ? 'bytes'
      : f.resolvedType instanceof protobuf.Type
        ? 'message'
        : f.resolvedType instanceof protobuf.Enum
          ? 'int32'
          : KINDS[f.type];
    if (!kind) throw new Error(`request decoding: field ${type.name}.${f.name} of type ${f.type}`);
    const oneof = f.partOf && f.partOf.fieldsArray.length > 1 ? f.partOf.name : undefined;
    plan.set(f.id, {
      kind,
      wire: WIRE_OF[kind],
      repeated: f.repeated,
      packable: f.repeated && WIRE_OF[kind] !== LEN,
      type: kind === 'message' ? (f.resolvedType as protobuf.Type) : undefined,
      oneof,
    });
  }
  plans.set(type, plan);
  return plan;
}

/** A varint as two u32 halves; set by readVarint (no allocation per value). */
let lo = 0;
let hi = 0;

/** Reads a varint at buf[pos] (at most 10 bytes, before `end`) into lo/hi; returns the next position. */
function readVarint(buf: Buffer, pos: number, end: number): number {
  lo = 0;
  hi = 0;
  for (let i = 0; ; i++) {
    if (pos >= end) throw new ProtobufWireError('truncated varint');
    if (i === 10) throw new ProtobufWireError('varint longer than 10 bytes');
    const b = buf[pos++]!;
    const bits = b & 0x7f;
    if (i < 4) lo |= bits << (7 * i);
    else if (i === 4) {
      lo |= bits << 28;
      hi |= bits >>> 4;
    } else hi |= bits << (7 * i - 32);
    if (b < 0x80) break;
  }
  lo >>>= 0;
  hi >>>= 0;
  return pos;
}

/** A length prefix: at most 5 bytes, below 2^31, within `end`. Returns the payload's start; sets lo to its length. */
function readLength(buf: Buffer, pos: number, end: number): number {
  const start = pos;
  pos = readVarint(buf, pos, end);
  if (pos - start > 5 || hi !== 0 || lo >= 0x80000000) throw new ProtobufWireError('invalid length');
  if (pos + lo > end) throw new ProtobufWireError('length past the end of the message');
  return pos;
}

/** Reads a tag (at most 5 bytes, below 2^32, field number >= 1); returns the next position, the tag in lo. */
function readTag(buf: Buffer, pos: number, end: number): number {
  const start = pos;
  pos = readVarint(buf, pos, end);
  if (pos - start > 5 || hi !== 0 || lo >>> 3 === 0) throw new ProtobufWireError('invalid tag');
  return pos;
}

/** Skips one value of wire type `wire` (field `field`) at pos; returns the next position. */
function skipValue(buf: Buffer, pos: number, end: number, wire: number, field: number, depth: number): number {
  switch (wire) {
    case VARINT:
      return readVarint(buf, pos, end);
    case I64:
      if (pos + 8 > end) throw new ProtobufWireError('truncated fixed64');
      return pos + 8;
    case I32:
      if (pos + 4 > end) throw new ProtobufWireError('truncated fixed32');
      return pos + 4;
    case LEN:
      pos = readLength(buf, pos, end);
      return pos + lo;
    case SGROUP: {
      if (depth >= MAX_DEPTH) throw new ProtobufWireError('nested too deep');
      for (;;) {
        if (pos >= end) throw new ProtobufWireError('group without its end');
        pos = readTag(buf, pos, end);
        const t = lo;
        if ((t & 7) === EGROUP) {
          if (t >>> 3 !== field) throw new ProtobufWireError('mismatched end of group');
          return pos;
        }
        pos = skipValue(buf, pos, end, t & 7, t >>> 3, depth + 1);
      }
    }
    case EGROUP:
      throw new ProtobufWireError('end of group without its start');
    default:
      throw new ProtobufWireError(`invalid wire type ${wire}`);
  }
}

// Canonical encodings of the value in lo/hi.
function varintBytes(l: number, h: number): Buffer {
  const out: number[] = [];
  while (h !== 0 || l > 0x7f) {
    out.push((l & 0x7f) | 0x80);
    l = ((l >>> 7) | (h << 25)) >>> 0;
    h >>>= 7;
  }
  out.push(l);
  return Buffer.from(out);
}

function canonicalScalar(kind: Kind): Buffer {
  switch (kind) {
    case 'int32': // the low 32 bits, sign-extended: a negative value is 10 bytes
      return varintBytes(lo, lo & 0x80000000 ? 0xffffffff : 0);
    case 'uint32':
      return varintBytes(lo, 0);
    case 'bool':
      return Buffer.from([lo !== 0 || hi !== 0 ? 1 : 0]);
    default:
      return varintBytes(lo, hi);
  }
}

/** Whether buf[start, end) holds exactly the bytes of `canonical`. */
function same(buf: Buffer, start: number, end: number, canonical: Buffer): boolean {
  if (end - start !== canonical.length) return false;
  for (let i = 0; i < canonical.length; i++) if (buf[start + i] !== canonical[i]) return false;
  return true;
}

function tagBytes(field: number, wire: number): Buffer {
  return varintBytes(((field << 3) | wire) >>> 0, 0);
}

function lengthDelimited(field: number, body: Buffer): Buffer {
  return Buffer.concat([tagBytes(field, LEN), varintBytes(body.length, 0), body]);
}

/** A singular message field seen so far: its piece and the ranges of its bodies, to merge. */
interface MessageParts {
  readonly piece: number;
  /** [start, end) of each body, in order. */
  readonly bodies: number[];
}

/**
 * `bytes` as message `type`, read the way the reference parser reads them, in an encoding
 * protobufjs decodes to the same message: `bytes` itself when it already does (the usual
 * case: nothing is copied), else a canonical re-encoding (see the file comment). Throws
 * ProtobufWireError for bytes the reference parser refuses.
 */
export function canonicalRequest(type: protobuf.Type, bytes: Buffer): Buffer {
  return canonical(type, bytes, 0, bytes.length, 0) ?? bytes;
}

/**
 * buf[from, to) as message `type`: null when protobufjs reads it as the reference does,
 * else the canonical encoding. The output is kept as pieces: buf ranges (starts/ends) and,
 * where a piece had to change, its new bytes (`changed`, null for a dropped piece).
 */
function canonical(type: protobuf.Type, buf: Buffer, from: number, to: number, depth: number): Buffer | null {
  if (depth > MAX_DEPTH) throw new ProtobufWireError('nested too deep');
  const plan = planOf(type);
  const starts: number[] = [];
  const ends: number[] = [];
  let changed: Map<number, Buffer | null> | undefined;
  let dropped = false; // a field left out (unknown, mistyped): the output differs
  let messages: Map<number, MessageParts> | undefined;
  let oneofs: Map<string, { field: number; pieces: number[] }> | undefined;
  const replace = (piece: number, bytes: Buffer | null) => (changed ??= new Map()).set(piece, bytes);
  let pos = from;
  while (pos < to) {
    const start = pos;
    pos = readTag(buf, pos, to);
    const field = lo >>> 3;
    const wire = lo & 7;
    const valueAt = pos;
    const f = plan.get(field);
    const packed = f?.packable === true && wire === LEN;
    if (!f || (wire !== f.wire && !packed)) {
      // Unknown, or known with another wire type: the reference keeps it as an unknown field.
      pos = skipValue(buf, pos, to, wire, field, depth);
      dropped = true;
      continue;
    }
    const piece = starts.length;
    if (f.oneof !== undefined) {
      oneofs ??= new Map();
      const seen = oneofs.get(f.oneof);
      if (seen?.field !== field) {
        for (const p of seen?.pieces ?? []) replace(p, null);
        if (seen) messages?.delete(seen.field);
        oneofs.set(f.oneof, { field, pieces: [piece] });
      } else seen.pieces.push(piece);
    }
    if (f.kind === 'message') {
      pos = readLength(buf, pos, to);
      const bodyStart = pos;
      pos += lo;
      if (!f.repeated) {
        const parts = messages?.get(field);
        if (parts) {
          // Merged into the first occurrence, as the reference merges them.
          parts.bodies.push(bodyStart, pos);
          replace(piece, null);
        } else (messages ??= new Map()).set(field, { piece, bodies: [bodyStart, pos] });
      } else {
        const c = canonical(f.type!, buf, bodyStart, pos, depth + 1);
        if (c) replace(piece, lengthDelimited(field, c));
      }
    } else if (f.kind === 'string' || f.kind === 'bytes') {
      pos = readLength(buf, pos, to);
      if (f.kind === 'string' && !isUtf8(buf.subarray(pos, pos + lo))) throw new ProtobufWireError('string field is not UTF-8');
      pos += lo;
    } else if (packed) {
      pos = readLength(buf, pos, to);
      const last = pos + lo;
      const values: Buffer[] = [];
      let unchanged = true;
      while (pos < last) {
        const at = pos;
        pos = f.wire === VARINT ? readVarint(buf, pos, last) : skipValue(buf, pos, last, f.wire, field, depth);
        const c = f.wire === VARINT ? canonicalScalar(f.kind) : buf.subarray(at, pos);
        unchanged &&= same(buf, at, pos, c);
        values.push(c);
      }
      if (!unchanged) replace(piece, lengthDelimited(field, Buffer.concat(values)));
    } else if (f.wire !== VARINT) {
      pos = skipValue(buf, pos, to, wire, field, depth);
    } else {
      pos = readVarint(buf, pos, to);
      const c = canonicalScalar(f.kind);
      if (!same(buf, valueAt, pos, c)) replace(piece, Buffer.concat([tagBytes(field, VARINT), c]));
    }
    starts.push(start);
    ends.push(pos);
  }
  for (const [field, parts] of messages ?? []) {
    const { bodies } = parts;
    const sub = plan.get(field)!.type!;
    if (bodies.length === 2) {
      const c = canonical(sub, buf, bodies[0]!, bodies[1]!, depth + 1);
      if (c) replace(parts.piece, lengthDelimited(field, c));
    } else {
      const merged = Buffer.concat(bodies.flatMap((b, k) => (k % 2 === 0 ? [buf.subarray(b, bodies[k + 1])] : [])));
      replace(parts.piece, lengthDelimited(field, canonical(sub, merged, 0, merged.length, depth + 1) ?? merged));
    }
  }
  if (!changed && !dropped) return null;
  const out: Buffer[] = [];
  for (let k = 0; k < starts.length; k++) {
    const c = changed?.get(k);
    if (c === undefined) out.push(buf.subarray(starts[k], ends[k]));
    else if (c !== null) out.push(c);
  }
  return Buffer.concat(out);
}

/**
 * A copy of `def` whose request deserializers first pass the bytes through
 * canonicalRequest(), with the request type of each method looked up in `root` by the
 * method's path ("/ctmap.v1.CTMaps/Lookup"; by default every served proto: servedRoot()).
 * Methods `root` does not know are left as they are.
 */
export function decodeRequestsAsReference(def: grpc.ServiceDefinition, root: protobuf.Root = servedRoot()): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(def)) {
    const type = requestType(root, m.path);
    const original = m.requestDeserialize;
    out[name] = type ? { ...m, requestDeserialize: (buf: Buffer) => original(canonicalRequest(type, buf)) } : m;
  }
  return out as grpc.ServiceDefinition;
}

function requestType(root: protobuf.Root, path: string): protobuf.Type | undefined {
  const [, service, method] = path.split('/');
  const svc = root.lookup(service ?? '');
  if (!(svc instanceof protobuf.Service)) return undefined;
  const m = svc.methods[method ?? ''];
  return m ? (m.resolve() as protobuf.Method).resolvedRequestType ?? undefined : undefined;
}
