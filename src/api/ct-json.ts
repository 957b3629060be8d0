/**
 * JSON text of ctmap.v1.CtRecord messages straight from their protobuf encoding, for
 * `ctmap ct list -o json|jsonl`: the text is byte for byte what
 * `JSON.stringify(record)` gives for the record as the proto-loader client decodes it
 * (PROTO_LOADER_OPTIONS: snake_case names, 64-bit integers as decimal strings, enums by
 * name, defaults filled in; `union0` a Node Buffer, so `{"type":"Buffer","data":[...]}`),
 * without building the objects.
 *
 * Why: decoding a million records into protobufjs objects and stringifying them takes
 * ~20 s of CPU; walking the bytes once into one output buffer takes a small fraction of
 * that. test/unit/ct-json.test.ts compares the output with the proto-loader path.
 *
 * What the fast path does not handle exactly goes through the proto-loader path instead:
 * a record with a string that is not plain printable ASCII (JSON escaping), a repeated
 * sub-message field (protobuf merges them), a uint32 varint longer than 5 bytes or too many
 * flag names, per record; a malformed batch, as a whole (so that it fails the way the
 * proto-loader decoder fails). MapRef's JSON comes from the proto-loader path, once per
 * distinct map. If the loaded protos' CtRecord, CtKey or CtEntry fields are not the ones
 * this module knows, every record takes the proto-loader path.
 */
import type { PackageDefinition } from '@grpc/proto-loader';
import { DIGITS, DIGIT_COUNT } from './ct-wire';
import { packageDefinition } from './proto';

/** jsonl: each record followed by "\n"; json-array: each record preceded by "\n" (the first) or ",\n". */
export type CtJsonStyle = 'jsonl' | 'json-array';

type Deserialize = (buf: Buffer) => unknown;

const enum F {
  U32,
  U64,
  I64,
  STR,
  BYTES,
  RSTR,
}

/** [name, number, label, type] of each field, in field-number order, as this module emits them. */
const SCHEMA: Readonly<Record<string, ReadonlyArray<readonly [string, number, string, string]>>> = {
  'ctmap.v1.CtRecord': [
    ['map', 1, 'LABEL_OPTIONAL', 'TYPE_MESSAGE'],
    ['key', 2, 'LABEL_OPTIONAL', 'TYPE_MESSAGE'],
    ['entry', 3, 'LABEL_OPTIONAL', 'TYPE_MESSAGE'],
  ],
  'ctmap.v1.CtKey': [
    ['daddr', 1, 'LABEL_OPTIONAL', 'TYPE_STRING'],
    ['saddr', 2, 'LABEL_OPTIONAL', 'TYPE_STRING'],
    ['dport', 3, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['sport', 4, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['nexthdr', 5, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['flags', 6, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
  ],
  'ctmap.v1.CtEntry': [
    ['packets', 1, 'LABEL_OPTIONAL', 'TYPE_UINT64'],
    ['bytes', 2, 'LABEL_OPTIONAL', 'TYPE_UINT64'],
    ['lifetime', 3, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['flags', 4, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['rev_nat', 5, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['nat_port', 6, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['tx_flags_seen', 7, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['rx_flags_seen', 8, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['source_security_id', 9, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['last_tx_report', 10, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['last_rx_report', 11, 'LABEL_OPTIONAL', 'TYPE_UINT32'],
    ['backend_id', 12, 'LABEL_OPTIONAL', 'TYPE_UINT64'],
    ['union0', 13, 'LABEL_OPTIONAL', 'TYPE_BYTES'],
    ['flag_names', 14, 'LABEL_REPEATED', 'TYPE_STRING'],
    ['expires_in_seconds', 15, 'LABEL_OPTIONAL', 'TYPE_INT64'],
  ],
};

const KIND_OF_TYPE: Readonly<Record<string, F>> = {
  TYPE_UINT32: F.U32,
  TYPE_UINT64: F.U64,
  TYPE_INT64: F.I64,
  TYPE_STRING: F.STR,
  TYPE_BYTES: F.BYTES,
};

/** Whether `pd` describes CtRecord, CtKey and CtEntry exactly as SCHEMA does. */
export function schemaMatches(pd: PackageDefinition): boolean {
  for (const [name, fields] of Object.entries(SCHEMA)) {
    const t = (pd[name] as { type?: { field?: Array<Record<string, unknown>>; oneofDecl?: unknown[] } } | undefined)?.type;
    if (!t?.field || t.field.length !== fields.length || (t.oneofDecl?.length ?? 0) !== 0) return false;
    const got = [...t.field].sort((a, b) => Number(a.number) - Number(b.number));
    for (let i = 0; i < fields.length; i++) {
      const g = got[i];
      const [fname, num, label, type] = fields[i];
      if (g.name !== fname || g.number !== num || g.label !== label || g.type !== type || g.proto3Optional === true) return false;
    }
  }
  return true;
}

const ascii = (s: string): Uint8Array => Buffer.from(s, 'latin1');

const KEY_NAMES = SCHEMA['ctmap.v1.CtKey'].map(([n], i) => ascii(`${i === 0 ? '{' : ','}"${n}":`));
const KEY_KINDS = SCHEMA['ctmap.v1.CtKey'].map(([, , , t]) => KIND_OF_TYPE[t]);
/** KEY_KINDS by field number. */
const KEY_KINDS_BY_NUMBER: readonly F[] = [F.U32, ...KEY_KINDS];
/** CtEntry as protobufjs's toObject builds it: repeated fields first, then the rest by number. */
const ENTRY_ORDER = [14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15];
const ENTRY_FIELDS = SCHEMA['ctmap.v1.CtEntry'];
const ENTRY_NAMES: Uint8Array[] = [];
const ENTRY_KINDS: F[] = [];
for (const [name, num, label, type] of ENTRY_FIELDS) {
  ENTRY_NAMES[num] = ascii(`${num === ENTRY_ORDER[0] ? '{' : ','}"${name}":`);
  ENTRY_KINDS[num] = label === 'LABEL_REPEATED' ? F.RSTR : KIND_OF_TYPE[type];
}
const MAP_NAME = ascii('{"map":');
const KEY_NAME = ascii(',"key":');
const ENTRY_NAME = ascii(',"entry":');
const NULL = ascii('null');
const BUFFER_OPEN = ascii('{"type":"Buffer","data":[');
const BUFFER_CLOSE = ascii(']}');
const NEWLINE = ascii('\n');
const COMMA_NEWLINE = ascii(',\n');


const MAX_FLAG_NAMES = 32;
/** Output buffers are allocated this large (a batch of 4096 records is ~2.2 MB of JSON). */
const CHUNK_BYTES = 8 << 20;
/** The record cannot be written exactly by the fast path: take the proto-loader path. */
const SLOW = -1;
/** The batch is malformed: let the proto-loader decoder report it. */
class Malformed extends Error {}

// Varint reader state (module-level: no allocation per read).
let rp = 0;
let vlo = 0;
let vhi = 0;
/** Reads the varint at rp of `b` (before `end`) into vlo/vhi; returns its byte count. */
function varint(b: Buffer, end: number): number {
  if (rp < end && b[rp] < 0x80) {
    vlo = b[rp++];
    vhi = 0;
    return 1;
  }
  const start = rp;
  let lo = 0;
  let hi = 0;
  let shift = 0;
  for (;;) {
    if (rp >= end || rp - start >= 10) throw new Malformed();
    const x = b[rp++];
    if (shift < 28) lo |= (x & 0x7f) << shift;
    else if (shift === 28) {
      lo |= (x & 0x0f) << 28;
      hi = (x & 0x7f) >>> 4;
    } else hi |= (x & 0x7f) << (shift - 32);
    if (x < 0x80) break;
    shift += 7;
  }
  vlo = lo >>> 0;
  vhi = hi >>> 0;
  return rp - start;
}

/** Skips the value of wire type `wt` at rp; Malformed for groups and unknown types. */
function skip(b: Buffer, end: number, wt: number): void {
  if (wt === 0) varint(b, end);
  else if (wt === 1) rp += 8;
  else if (wt === 2) {
    varint(b, end);
    if (vhi !== 0) throw new Malformed();
    rp += vlo;
  } else if (wt === 5) rp += 4;
  else throw new Malformed();
  if (rp > end) throw new Malformed();
}

/** Length of the length-delimited value at rp; rp moves to its first byte. */
function lenValue(b: Buffer, end: number): number {
  varint(b, end);
  if (vhi !== 0 || rp + vlo > end) throw new Malformed();
  return vlo;
}

/** Whether b[s..e) can be written between quotes as is (printable ASCII, no `"` or `\`). */
function plain(b: Buffer, s: number, e: number): boolean {
  for (let i = s; i < e; i++) {
    const c = b[i];
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) return false;
  }
  return true;
}

/**
 * Turns encoded CtRecordBatch messages into JSON text. One instance per output: it counts
 * the records (json-array needs to know the first) and keeps the text until take().
 */
export class CtRecordJson {
  readonly #style: CtJsonStyle;
  readonly #fast: boolean;
  readonly #batchSlow: Deserialize;
  readonly #recordSlow: Deserialize;
  readonly #mapRefSlow: Deserialize;
  /** The text not yet taken is #out[#start, #pos); take() hands it out and moves #start. */
  #out = Buffer.allocUnsafe(CHUNK_BYTES);
  #start = 0;
  #pos = 0;
  #records = 0;
  #fallbacks = 0;
  /** Whether the text since the last take() is all ASCII. */
  #ascii = true;
  #refBytes: Buffer | undefined;
  #refJson: Uint8Array = NULL;

  constructor(style: CtJsonStyle, pd: PackageDefinition = packageDefinition()) {
    this.#style = style;
    const codec = (name: string): Deserialize => {
      const t = pd[name] as { deserialize?: Deserialize } | undefined;
      if (!t?.deserialize) throw new Error(`ct-json: no message type ${name} in the package definition`);
      return t.deserialize;
    };
    this.#batchSlow = codec('ctmap.v1.CtRecordBatch');
    this.#recordSlow = codec('ctmap.v1.CtRecord');
    this.#mapRefSlow = codec('ctmap.v1.MapRef');
    this.#fast = schemaMatches(pd);
  }

  /** Records written so far. */
  get records(): number {
    return this.#records;
  }

  /** Records (and whole batches) that went through the proto-loader path so far. */
  get fallbacks(): number {
    return this.#fallbacks;
  }

  /** Bytes of text waiting for take(). */
  get pending(): number {
    return this.#pos - this.#start;
  }

  /** The text appended since the last take(); the buffer starts over. */
  take(): string {
    // ASCII text (what the fast path writes) decodes faster as latin1, to the same string.
    const s = this.#out.toString(this.#ascii ? 'latin1' : 'utf8', this.#start, this.#pos);
    this.#start = this.#pos;
    this.#ascii = true;
    return s;
  }

  /**
   * The text appended since the last take, as UTF-8 bytes, without a copy: a view of the
   * output buffer, which this instance never writes again (the next text goes after it, or
   * into a new buffer), so it may be queued for writing as it is.
   */
  takeBytes(): Buffer {
    const bytes = this.#out.subarray(this.#start, this.#pos);
    this.#start = this.#pos;
    this.#ascii = true;
    return bytes;
  }

  /** Appends the JSON text of every record of one encoded CtRecordBatch; returns how many. */
  appendBatch(batch: Buffer): number {
    // Offsets from #start: #ensure may move the pending text to a new buffer.
    const startPos = this.#pos - this.#start;
    const startRecords = this.#records;
    if (this.#fast) {
      try {
        this.#fastBatch(batch);
        return this.#records - startRecords;
      } catch {
        // Malformed, or a record the proto-loader path itself rejects: the batch again
        // through that path, which throws the same error the proto-loader client would.
        this.#pos = this.#start + startPos;
        this.#records = startRecords;
      }
    }
    // The proto-loader path for the whole batch (and its error, if it is malformed).
    let records: unknown[];
    try {
      records = (this.#batchSlow(batch) as { records: unknown[] }).records;
    } catch (err) {
      this.#pos = this.#start + startPos;
      throw err;
    }
    this.#fallbacks++;
    for (const r of records) {
      this.#sep();
      this.#text(JSON.stringify(r));
      this.#end();
    }
    return records.length;
  }

  #ensure(n: number): void {
    if (this.#pos + n <= this.#out.length) return;
    // A new buffer (the taken text before #start may still be queued for writing), with the
    // pending text moved to its start.
    const pending = this.#pos - this.#start;
    const next = Buffer.allocUnsafe(Math.max(CHUNK_BYTES, 2 * (pending + n)));
    this.#out.copy(next, 0, this.#start, this.#pos);
    this.#out = next;
    this.#start = 0;
    this.#pos = pending;
  }

  #raw(bytes: Uint8Array): void {
    this.#ensure(bytes.length);
    this.#out.set(bytes, this.#pos);
    this.#pos += bytes.length;
  }

  #text(text: string): void {
    const bytes = Buffer.from(text, 'utf8');
    if (bytes.length !== text.length) this.#ascii = false;
    this.#raw(bytes);
  }

  #sep(): void {
    if (this.#style === 'json-array') this.#raw(this.#records === 0 ? NEWLINE : COMMA_NEWLINE);
  }

  #end(): void {
    if (this.#style === 'jsonl') this.#raw(NEWLINE);
    this.#records++;
  }

  #fastBatch(b: Buffer): void {
    const end = b.length;
    rp = 0;
    while (rp < end) {
      varint(b, end);
      if (vhi !== 0) throw new Malformed();
      if (vlo >>> 3 !== 1) {
        skip(b, end, vlo & 7);
        continue;
      }
      // protobufjs decodes field 1 as a CtRecord whatever its wire type: leave that to it.
      if ((vlo & 7) !== 2) throw new Malformed();
      const len = lenValue(b, end);
      const s = rp;
      rp += len;
      this.#sep();
      // Worst case: the fixed text (< 1 KiB), 4 bytes per byte of union0, 2 per flag-name byte.
      this.#ensure(4 * len + 2048);
      const mark = this.#pos;
      const after = record(b, s, s + len, this.#mapRefCache, this.#out, this.#pos);
      if (after === SLOW) {
        this.#fallbacks++;
        this.#pos = mark;
        this.#text(JSON.stringify(this.#recordSlow(b.subarray(s, s + len))));
      } else this.#pos = after;
      this.#end();
      rp = s + len;
    }
  }

  /** MapRef JSON by its encoding: the last one seen, else the proto-loader path. */
  readonly #mapRefCache = (b: Buffer, s: number, e: number): Uint8Array => {
    const prev = this.#refBytes;
    if (prev && prev.length === e - s) {
      let same = true;
      for (let i = 0; i < prev.length; i++) {
        if (prev[i] !== b[s + i]) {
          same = false;
          break;
        }
      }
      if (same) return this.#refJson;
    }
    const bytes = Buffer.from(b.subarray(s, e));
    let obj: unknown;
    try {
      obj = this.#mapRefSlow(bytes);
    } catch {
      throw new Malformed();
    }
    const json = Buffer.from(JSON.stringify(obj), 'utf8');
    // A MapRef's JSON is short (the record's bound has room for 512 bytes of it) and ASCII.
    if (json.length > 512 || json.some((c) => c > 0x7e)) throw new Malformed();
    this.#refBytes = bytes;
    this.#refJson = json;
    return json;
  };
}

// The record writer's scratch (module-level: one record is parsed at a time, synchronously).
/** Key or entry fields by number: present (for flag_names, how many), lo/hi or start/end. */
const HAS = new Uint8Array(16);
const LO = new Float64Array(16);
const HI = new Float64Array(16);
const NAMES = new Int32Array(MAX_FLAG_NAMES * 2);

// The writers take the output and a position and return the position after what they wrote;
// the caller has ensured the room.

function putBytes(o: Buffer, p: number, bytes: Uint8Array): number {
  const n = bytes.length;
  for (let i = 0; i < n; i++) o[p++] = bytes[i];
  return p;
}

function putSlice(o: Buffer, p: number, b: Buffer, s: number, e: number): number {
  for (let i = s; i < e; i++) o[p++] = b[i];
  return p;
}

/** Writes one record's JSON at p of o; returns its end, or SLOW when the fast path cannot write it exactly. */
function record(b: Buffer, s: number, e: number, mapRef: (b: Buffer, s: number, e: number) => Uint8Array, o: Buffer, p: number): number {
  let mapS = -1;
  let mapE = -1;
  let keyS = -1;
  let keyE = -1;
  let entS = -1;
  let entE = -1;
  rp = s;
  while (rp < e) {
    varint(b, e);
    if (vhi !== 0) throw new Malformed();
    const field = vlo >>> 3;
    const wt = vlo & 7;
    if (field >= 1 && field <= 3) {
      // A sub-message field given twice is merged by protobuf: not this path's job.
      if (wt !== 2) throw new Malformed();
      if ((field === 1 ? mapS : field === 2 ? keyS : entS) >= 0) return SLOW;
      const len = lenValue(b, e);
      if (field === 1) (mapS = rp), (mapE = rp + len);
      else if (field === 2) (keyS = rp), (keyE = rp + len);
      else (entS = rp), (entE = rp + len);
      rp += len;
    } else skip(b, e, wt);
  }
  p = putBytes(o, p, MAP_NAME);
  p = putBytes(o, p, mapS < 0 ? NULL : mapRef(b, mapS, mapE));
  p = putBytes(o, p, KEY_NAME);
  if (keyS < 0) p = putBytes(o, p, NULL);
  else {
    if (fields(b, keyS, keyE, KEY_KINDS_BY_NUMBER, 6) === SLOW) return SLOW;
    for (let f = 1; f <= 6; f++) {
      p = putBytes(o, p, KEY_NAMES[f - 1]);
      p = value(o, p, b, f, KEY_KINDS_BY_NUMBER[f]);
    }
    o[p++] = 0x7d; // }
  }
  p = putBytes(o, p, ENTRY_NAME);
  if (entS < 0) p = putBytes(o, p, NULL);
  else {
    if (fields(b, entS, entE, ENTRY_KINDS, 15) === SLOW) return SLOW;
    for (let i = 0; i < ENTRY_ORDER.length; i++) {
      const f = ENTRY_ORDER[i];
      p = putBytes(o, p, ENTRY_NAMES[f]);
      p = value(o, p, b, f, ENTRY_KINDS[f]);
    }
    o[p++] = 0x7d;
  }
  o[p++] = 0x7d;
  return p;
}

/** Reads the fields of a key or entry (numbers 1..maxField of `kinds`) into HAS/LO/HI/NAMES; SLOW or 0. */
function fields(b: Buffer, s: number, e: number, kinds: readonly F[], maxField: number): number {
  HAS.fill(0);
  let names = 0;
  rp = s;
  while (rp < e) {
    varint(b, e);
    if (vhi !== 0) throw new Malformed();
    const field = vlo >>> 3;
    const wt = vlo & 7;
    if (field < 1 || field > maxField) {
      skip(b, e, wt);
      continue;
    }
    const kind = kinds[field];
    if (kind === F.U32 || kind === F.U64 || kind === F.I64) {
      // protobufjs reads a scalar of another wire type as its own; this path does not.
      if (wt !== 0) return SLOW;
      const n = varint(b, e);
      if (kind === F.U32 && n > 5) return SLOW;
      HAS[field] = 1;
      LO[field] = vlo;
      HI[field] = kind === F.U32 ? 0 : vhi;
    } else {
      if (wt !== 2) return SLOW;
      const len = lenValue(b, e);
      const vs = rp;
      rp += len;
      if (kind !== F.BYTES && !plain(b, vs, rp)) return SLOW;
      if (kind === F.RSTR) {
        if (names === MAX_FLAG_NAMES) return SLOW;
        NAMES[names * 2] = vs;
        NAMES[names * 2 + 1] = rp;
        names++;
        HAS[field] = names;
      } else {
        HAS[field] = 1;
        LO[field] = vs;
        HI[field] = rp;
      }
    }
  }
  return 0;
}

/** Writes field `f`'s value (or its default) as JSON.stringify of proto-loader's object does. */
function value(o: Buffer, p: number, b: Buffer, f: number, kind: F): number {
  const present = HAS[f] !== 0;
  switch (kind) {
    case F.U32:
      return putDec(o, p, present ? LO[f] : 0);
    case F.U64:
    case F.I64:
      o[p++] = 0x22;
      if (!present) o[p++] = 0x30;
      else if (HI[f] === 0) p = putDec(o, p, LO[f]);
      else p = putInt64(o, p, LO[f], HI[f], kind === F.I64);
      o[p++] = 0x22;
      return p;
    case F.STR:
      o[p++] = 0x22;
      if (present) p = putSlice(o, p, b, LO[f], HI[f]);
      o[p++] = 0x22;
      return p;
    case F.BYTES: {
      p = putBytes(o, p, BUFFER_OPEN);
      if (present) {
        const start = LO[f];
        const end = HI[f];
        for (let i = start; i < end; i++) {
          if (i !== start) o[p++] = 0x2c;
          const v = b[i];
          const n = DIGIT_COUNT[v];
          o[p++] = DIGITS[v * 3];
          if (n > 1) o[p++] = DIGITS[v * 3 + 1];
          if (n > 2) o[p++] = DIGITS[v * 3 + 2];
        }
      }
      return putBytes(o, p, BUFFER_CLOSE);
    }
    case F.RSTR: {
      o[p++] = 0x5b; // [
      const n = HAS[f];
      for (let i = 0; i < n; i++) {
        if (i > 0) o[p++] = 0x2c;
        o[p++] = 0x22;
        p = putSlice(o, p, b, NAMES[i * 2], NAMES[i * 2 + 1]);
        o[p++] = 0x22;
      }
      o[p++] = 0x5d; // ]
      return p;
    }
  }
  return p;
}

/** Writes the decimal digits of the integer 0 <= n <= 2^53 at p; returns the end. */
function putDec(o: Buffer, p: number, n: number): number {
  if (n < 10) {
    o[p] = 0x30 + n;
    return p + 1;
  }
  let len: number;
  if (n < 0x80000000) {
    len = n < 100 ? 2 : n < 1000 ? 3 : n < 10000 ? 4 : n < 100000 ? 5 : n < 1000000 ? 6 : n < 10000000 ? 7 : n < 100000000 ? 8 : n < 1000000000 ? 9 : 10;
    let q = p + len;
    let v = n | 0;
    while (v >= 10) {
      const t = (v / 10) | 0;
      o[--q] = 0x30 + v - t * 10;
      v = t;
    }
    o[--q] = 0x30 + v;
  } else {
    len = 1;
    for (let t = n; t >= 10; t = Math.floor(t / 10)) len++;
    let q = p + len;
    while (n >= 10) {
      const d = n % 10;
      o[--q] = 0x30 + d;
      n = (n - d) / 10;
    }
    o[--q] = 0x30 + n;
  }
  return p + len;
}

/** Writes the 64-bit hi:lo as unsigned (or, `signed`, two's complement) decimal at p; returns the end. */
function putInt64(o: Buffer, p: number, lo: number, hi: number, signed: boolean): number {
  if (signed && hi >= 0x80000000) {
    if (hi >= 0xffe00000) {
      o[p++] = 0x2d; // -
      return putDec(o, p, -((hi - 0x100000000) * 0x100000000 + lo));
    }
    return p + o.write(BigInt.asIntN(64, (BigInt(hi) << 32n) | BigInt(lo)).toString(), p, 'latin1');
  }
  if (hi < 0x200000) return putDec(o, p, hi * 0x100000000 + lo);
  return p + o.write(((BigInt(hi) << 32n) | BigInt(lo)).toString(), p, 'latin1');
}
