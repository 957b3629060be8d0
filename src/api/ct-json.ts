/**
 * JSON text of ctmap.v1.CtRecord messages straight from their protobuf encoding, for
 * `ctmap ct list -o json|jsonl`: the text is byte for byte what
 * `JSON.stringify(record)` gives for the record as the proto-loader client decodes it
 * (PROTO_LOADER_OPTIONS: snake_case names, 64-bit integers as decimal strings, enums by
 * name, defaults filled in; `union0` a Node Buffer, so `{"type":"Buffer","data":[...]}`),
 * without building the objects.
 *
 * Why: decoding a million records into protobufjs objects and stringifying them takes
 * ~20 s of CPU; walking the bytes once into one output buffer takes ~0.7 s. Most of a
 * record's text is constant (names, quotes, the MapRef), so the writer is built around
 * copying that text cheaply (ConstText) and is specialised to CtKey's and CtEntry's
 * fields; bench/RESULTS.md has the measurements. test/unit/ct-json.test.ts compares the
 * output with the proto-loader path.
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

/** CtEntry as protobufjs's toObject builds it: repeated fields first, then the rest by number. */
const ENTRY_ORDER = [14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15];

/**
 * ASCII text the record writer copies into its output eight bytes at a time: as Float64
 * words for DataView.setFloat64, which V8 compiles to one unaligned store, several times
 * faster than a byte loop or Uint8Array.set for pieces this short. The last word is padded
 * with spaces; the writer may store that padding past the text's end, where the next text
 * overwrites it (the output always has room: CtRecordJson's per-record bound).
 */
export class ConstText {
  readonly words: Float64Array;
  readonly length: number;

  constructor(readonly text: string) {
    // Printable ASCII only: eight bytes of 0x20-0x7e are never a NaN (whose top byte
    // would be 0x7f or 0xff), the one double whose bits a store may change.
    if (!/^[\x20-\x7e]*$/.test(text)) throw new Error(`ct-json: constant text must be printable ASCII: ${JSON.stringify(text)}`);
    const bytes = Buffer.alloc(Math.ceil(text.length / 8) * 8, 0x20);
    bytes.write(text, 'latin1');
    this.length = text.length;
    this.words = new Float64Array(bytes.length / 8);
    for (let i = 0; i < this.words.length; i++) this.words[i] = bytes.readDoubleLE(i * 8);
  }
}
const constText = (s: string): ConstText => new ConstText(s);

/**
 * The constant text around a message's values, from SCHEMA's names and kinds: piece i is
 * what comes before the i-th value written (field names, separators, quotes, a Buffer's
 * opening), the last piece what follows the last value. The record writer below writes
 * the fields in this order, piece and value in turn.
 */
function pieces(message: string, order: readonly number[]): ConstText[] {
  const byNumber = new Map(SCHEMA[message].map(([name, num, label, type]) => [num, { name, kind: label === 'LABEL_REPEATED' ? F.RSTR : KIND_OF_TYPE[type] }]));
  const open = (k: F): string => (k === F.STR || k === F.U64 || k === F.I64 ? '"' : k === F.BYTES ? '{"type":"Buffer","data":[' : k === F.RSTR ? '[' : '');
  const close = (k: F): string => (k === F.STR || k === F.U64 || k === F.I64 ? '"' : k === F.BYTES ? ']}' : k === F.RSTR ? ']' : '');
  const out: string[] = [];
  let prev: F | undefined;
  for (const num of order) {
    const { name, kind } = byNumber.get(num)!;
    out.push(`${prev === undefined ? '{' : `${close(prev)},`}"${name}":${open(kind)}`);
    prev = kind;
  }
  out.push(`${close(prev!)}}`);
  return out.map(constText);
}
const KEY_PIECES = pieces('ctmap.v1.CtKey', [1, 2, 3, 4, 5, 6]);
const ENTRY_PIECES = pieces('ctmap.v1.CtEntry', ENTRY_ORDER);
/** What follows the key (or its null) before the entry's text. */
const ENTRY_NAME = constText(',"entry":');
const NULL = constText('null');
/** Between a key and an entry, both present: the key's end, ENTRY_NAME and the entry's opening. */
const KEY_TO_ENTRY = constText(`${KEY_PIECES[6].text}${ENTRY_NAME.text}${ENTRY_PIECES[0].text}`);
/** The record's text before the key's when it has no map. */
const NO_MAP_PREFIX = constText('{"map":null,"key":');
/** Cilium's union0 is 16 bytes, all zero in every entry the datapath writes today. */
const UNION0_BYTES = 16;
/** From union0's name to expires_in_seconds' opening quote, for a union0 of 16 zero bytes. */
const ZERO_UNION0_TO_EXPIRES = constText(`${ENTRY_PIECES[13].text}${Array(UNION0_BYTES).fill('0').join(',')}${ENTRY_PIECES[14].text}`);
const NEWLINE = ascii('\n');
const COMMA_NEWLINE = ascii(',\n');


const MAX_FLAG_NAMES = 32;
/** Output buffers are allocated this large (a batch of 4096 records is ~2.2 MB of JSON). */
const CHUNK_BYTES = 8 << 20;
/** Released buffers kept for reuse at most (the CLI keeps ~8 MiB of output queued). */
const MAX_SPARE_CHUNKS = 3;
const viewOf = (b: Buffer): DataView => new DataView(b.buffer, b.byteOffset, b.length);
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
  #out: Buffer = Buffer.allocUnsafe(CHUNK_BYTES);
  /** #out as a DataView, for the record writer's eight-byte stores. */
  #view = viewOf(this.#out);
  #start = 0;
  #pos = 0;
  #records = 0;
  #fallbacks = 0;
  /** Whether the text since the last take() is all ASCII. */
  #ascii = true;
  /** The buffers takeBytes() has lent views of, with how many are not released yet. */
  readonly #lent = new Map<ArrayBufferLike, { chunk: Buffer; views: number }>();
  /** Buffers of CHUNK_BYTES with no view out, for #ensure to take before allocating. */
  readonly #spare: Buffer[] = [];
  #refBytes: Buffer | undefined;
  /** `{"map":` + the MapRef's JSON + `,"key":`, for #refBytes. */
  #refPrefix: ConstText = NO_MAP_PREFIX;

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
   * output buffer, which this instance does not write again until the view is given back
   * to release() (the next text goes after it, or into another buffer), so it may be
   * queued for writing as it is.
   */
  takeBytes(): Buffer {
    const bytes = this.#out.subarray(this.#start, this.#pos);
    this.#start = this.#pos;
    this.#ascii = true;
    if (bytes.length > 0) {
      const lent = this.#lent.get(this.#out.buffer);
      if (lent) lent.views++;
      else this.#lent.set(this.#out.buffer, { chunk: this.#out, views: 1 });
    }
    return bytes;
  }

  /**
   * Gives back a view from takeBytes() once it has been written: its buffer is written
   * again when no other view of it is out, instead of a new one allocated (at 8 MiB a
   * buffer, allocation drove the GC). A view never given back only costs that.
   */
  release(bytes: Buffer): void {
    const lent = this.#lent.get(bytes.buffer);
    if (!lent || --lent.views > 0) return;
    this.#lent.delete(bytes.buffer);
    if (lent.chunk === this.#out) {
      // The current buffer: its text starts over at the beginning once all of it is taken.
      if (this.#start === this.#pos) this.#start = this.#pos = 0;
    } else if (lent.chunk.length === CHUNK_BYTES && this.#spare.length < MAX_SPARE_CHUNKS) this.#spare.push(lent.chunk);
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
    const size = Math.max(CHUNK_BYTES, 2 * (pending + n));
    const next = (size === CHUNK_BYTES && this.#spare.pop()) || Buffer.allocUnsafe(size);
    this.#out.copy(next, 0, this.#start, this.#pos);
    if (!this.#lent.has(this.#out.buffer) && this.#out.length === CHUNK_BYTES && this.#spare.length < MAX_SPARE_CHUNKS) this.#spare.push(this.#out);
    this.#out = next;
    this.#view = viewOf(next);
    this.#start = 0;
    this.#pos = pending;
  }

  #raw(bytes: Uint8Array): void {
    this.#ensure(bytes.length);
    if (bytes.length > 16) this.#out.set(bytes, this.#pos);
    // Separators and newlines, once a record: a loop costs less than a call to set().
    else for (let i = 0; i < bytes.length; i++) this.#out[this.#pos + i] = bytes[i];
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
      const after = record(b, s, s + len, this.#mapPrefix, this.#out, this.#view, this.#pos);
      if (after === SLOW) {
        this.#fallbacks++;
        this.#pos = mark;
        this.#text(JSON.stringify(this.#recordSlow(b.subarray(s, s + len))));
      } else this.#pos = after;
      this.#end();
      rp = s + len;
    }
  }

  /** The record's text up to its key for a MapRef by its encoding: the last one seen, else from the proto-loader path. */
  readonly #mapPrefix = (b: Buffer, s: number, e: number): ConstText => {
    const prev = this.#refBytes;
    if (prev && prev.length === e - s) {
      let same = true;
      for (let i = 0; i < prev.length; i++) {
        if (prev[i] !== b[s + i]) {
          same = false;
          break;
        }
      }
      if (same) return this.#refPrefix;
    }
    const bytes = Buffer.from(b.subarray(s, e));
    let obj: unknown;
    try {
      obj = this.#mapRefSlow(bytes);
    } catch {
      throw new Malformed();
    }
    const json = JSON.stringify(obj);
    // A MapRef's JSON is short (the record's bound has room for 512 bytes of it) and ASCII.
    if (json.length > 512 || !/^[\x20-\x7e]*$/.test(json)) throw new Malformed();
    const prefix = constText(`{"map":${json},"key":`);
    this.#refBytes = bytes;
    this.#refPrefix = prefix;
    return prefix;
  };
}

// The record writer: one record's fields are read into locals and its text written in one
// pass, field by field in KEY_PIECES/ENTRY_PIECES order. The only module-level state is the
// read position and the varint scratch above, and the flag-name offsets below.

/** Start/end offsets of the entry's flag names (module-level: one record at a time, synchronously). */
const NAMES = new Int32Array(MAX_FLAG_NAMES * 2);

/** The tag at rp: one byte for field numbers up to 15, else the whole varint. */
function tagAt(b: Buffer, end: number): number {
  const x = b[rp];
  if (x < 0x80 && rp < end) {
    rp++;
    return x;
  }
  varint(b, end);
  if (vhi !== 0) throw new Malformed();
  return vlo;
}

/** A uint32 field's varint at rp, as protobufjs reads it (the low 32 bits); SLOW when longer than 5 bytes. */
function u32(b: Buffer, end: number): number {
  const x = b[rp];
  if (x < 0x80 && rp < end) {
    rp++;
    return x;
  }
  return varint(b, end) > 5 ? SLOW : vlo;
}

// The writers take the output and a position and return the position after what they wrote;
// the caller has ensured the room.

function putText(v: DataView, p: number, t: ConstText): number {
  const w = t.words;
  for (let i = 0; i < w.length; i++) v.setFloat64(p + 8 * i, w[i], true);
  return p + t.length;
}

/** Copies b[s..e) as the inside of a JSON string if it needs no escaping (printable ASCII, no `"` or `\`); else SLOW. */
function putPlain(o: Buffer, p: number, b: Buffer, s: number, e: number): number {
  for (let i = s; i < e; i++) {
    const c = b[i];
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) return SLOW;
    o[p++] = c;
  }
  return p;
}

/** Writes one record's JSON at p of o; returns its end, or SLOW when the fast path cannot write it exactly. */
function record(b: Buffer, s: number, e: number, mapPrefix: (b: Buffer, s: number, e: number) => ConstText, o: Buffer, v: DataView, p: number): number {
  let mapS = -1;
  let mapE = -1;
  let keyS = -1;
  let keyE = -1;
  let entS = -1;
  let entE = -1;
  rp = s;
  while (rp < e) {
    const tag = tagAt(b, e);
    const field = tag >>> 3;
    if (field >= 1 && field <= 3) {
      // protobufjs decodes fields 1-3 as sub-messages whatever their wire type: leave that to it.
      if ((tag & 7) !== 2) throw new Malformed();
      // A sub-message field given twice is merged by protobuf: not this path's job.
      if ((field === 1 ? mapS : field === 2 ? keyS : entS) >= 0) return SLOW;
      const len = lenValue(b, e);
      if (field === 1) (mapS = rp), (mapE = rp + len);
      else if (field === 2) (keyS = rp), (keyE = rp + len);
      else (entS = rp), (entE = rp + len);
      rp += len;
    } else skip(b, e, tag & 7);
  }
  p = putText(v, p, mapS < 0 ? NO_MAP_PREFIX : mapPrefix(b, mapS, mapE));
  if (keyS < 0) p = putText(v, p, NULL);
  else if ((p = keyText(b, keyS, keyE, o, v, p)) === SLOW) return SLOW;
  // The key's closing brace, the entry's name and its opening in one piece when both are there.
  if (keyS >= 0 && entS >= 0) p = putText(v, p, KEY_TO_ENTRY);
  else {
    if (keyS >= 0) p = putText(v, p, KEY_PIECES[6]);
    p = putText(v, p, ENTRY_NAME);
    p = entS < 0 ? putText(v, p, NULL) : putText(v, p, ENTRY_PIECES[0]);
  }
  if (entS >= 0 && (p = entryText(b, entS, entE, o, v, p)) === SLOW) return SLOW;
  o[p++] = 0x7d; // }
  return p;
}

/** A CtKey's JSON (every field, defaults for the absent ones) up to its closing brace, at p; SLOW as record(). */
function keyText(b: Buffer, s: number, e: number, o: Buffer, v: DataView, p: number): number {
  let daddrS = 0;
  let daddrE = 0;
  let saddrS = 0;
  let saddrE = 0;
  let dport = 0;
  let sport = 0;
  let nexthdr = 0;
  let flags = 0;
  rp = s;
  while (rp < e) {
    const tag = tagAt(b, e);
    // Tags are (field << 3) | wire type: 2 for the strings, 0 for the varints.
    switch (tag) {
      case (1 << 3) | 2:
        daddrE = lenValue(b, e) + rp;
        daddrS = rp;
        rp = daddrE;
        break;
      case (2 << 3) | 2:
        saddrE = lenValue(b, e) + rp;
        saddrS = rp;
        rp = saddrE;
        break;
      case 3 << 3:
        if ((dport = u32(b, e)) === SLOW) return SLOW;
        break;
      case 4 << 3:
        if ((sport = u32(b, e)) === SLOW) return SLOW;
        break;
      case 5 << 3:
        if ((nexthdr = u32(b, e)) === SLOW) return SLOW;
        break;
      case 6 << 3:
        if ((flags = u32(b, e)) === SLOW) return SLOW;
        break;
      default: {
        // A known field in another wire type: protobufjs reads it as its own type; this path does not.
        const field = tag >>> 3;
        if (field >= 1 && field <= 6) return SLOW;
        skip(b, e, tag & 7);
      }
    }
  }
  p = putText(v, p, KEY_PIECES[0]);
  if ((p = putPlain(o, p, b, daddrS, daddrE)) === SLOW) return SLOW;
  p = putText(v, p, KEY_PIECES[1]);
  if ((p = putPlain(o, p, b, saddrS, saddrE)) === SLOW) return SLOW;
  p = putDec(o, v, putText(v, p, KEY_PIECES[2]), dport);
  p = putDec(o, v, putText(v, p, KEY_PIECES[3]), sport);
  p = putDec(o, v, putText(v, p, KEY_PIECES[4]), nexthdr);
  p = putDec(o, v, putText(v, p, KEY_PIECES[5]), flags);
  return p;
}

/** A CtEntry's JSON (every field, defaults for the absent ones) after its opening `{"flag_names":[`, at p; SLOW as record(). */
function entryText(b: Buffer, s: number, e: number, o: Buffer, v: DataView, p: number): number {
  let names = 0;
  let packetsLo = 0;
  let packetsHi = 0;
  let bytesLo = 0;
  let bytesHi = 0;
  let lifetime = 0;
  let flags = 0;
  let revNat = 0;
  let natPort = 0;
  let txFlagsSeen = 0;
  let rxFlagsSeen = 0;
  let sourceSecurityId = 0;
  let lastTxReport = 0;
  let lastRxReport = 0;
  let backendIdLo = 0;
  let backendIdHi = 0;
  let union0S = 0;
  let union0E = 0;
  let expiresLo = 0;
  let expiresHi = 0;
  rp = s;
  while (rp < e) {
    const tag = tagAt(b, e);
    switch (tag) {
      case 1 << 3:
        varint(b, e);
        (packetsLo = vlo), (packetsHi = vhi);
        break;
      case 2 << 3:
        varint(b, e);
        (bytesLo = vlo), (bytesHi = vhi);
        break;
      case 3 << 3:
        if ((lifetime = u32(b, e)) === SLOW) return SLOW;
        break;
      case 4 << 3:
        if ((flags = u32(b, e)) === SLOW) return SLOW;
        break;
      case 5 << 3:
        if ((revNat = u32(b, e)) === SLOW) return SLOW;
        break;
      case 6 << 3:
        if ((natPort = u32(b, e)) === SLOW) return SLOW;
        break;
      case 7 << 3:
        if ((txFlagsSeen = u32(b, e)) === SLOW) return SLOW;
        break;
      case 8 << 3:
        if ((rxFlagsSeen = u32(b, e)) === SLOW) return SLOW;
        break;
      case 9 << 3:
        if ((sourceSecurityId = u32(b, e)) === SLOW) return SLOW;
        break;
      case 10 << 3:
        if ((lastTxReport = u32(b, e)) === SLOW) return SLOW;
        break;
      case 11 << 3:
        if ((lastRxReport = u32(b, e)) === SLOW) return SLOW;
        break;
      case 12 << 3:
        varint(b, e);
        (backendIdLo = vlo), (backendIdHi = vhi);
        break;
      case (13 << 3) | 2:
        union0E = lenValue(b, e) + rp;
        union0S = rp;
        rp = union0E;
        break;
      case (14 << 3) | 2: {
        if (names === MAX_FLAG_NAMES) return SLOW;
        const len = lenValue(b, e);
        NAMES[names * 2] = rp;
        NAMES[names * 2 + 1] = rp += len;
        names++;
        break;
      }
      case 15 << 3:
        varint(b, e);
        (expiresLo = vlo), (expiresHi = vhi);
        break;
      default: {
        const field = tag >>> 3;
        if (field >= 1 && field <= 15) return SLOW;
        skip(b, e, tag & 7);
      }
    }
  }
  for (let i = 0; i < names; i++) {
    if (i > 0) o[p++] = 0x2c; // ,
    o[p++] = 0x22; // "
    if ((p = putPlain(o, p, b, NAMES[i * 2], NAMES[i * 2 + 1])) === SLOW) return SLOW;
    o[p++] = 0x22;
  }
  p = putU64(o, v, putText(v, p, ENTRY_PIECES[1]), packetsLo, packetsHi, false);
  p = putU64(o, v, putText(v, p, ENTRY_PIECES[2]), bytesLo, bytesHi, false);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[3]), lifetime);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[4]), flags);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[5]), revNat);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[6]), natPort);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[7]), txFlagsSeen);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[8]), rxFlagsSeen);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[9]), sourceSecurityId);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[10]), lastTxReport);
  p = putDec(o, v, putText(v, p, ENTRY_PIECES[11]), lastRxReport);
  p = putU64(o, v, putText(v, p, ENTRY_PIECES[12]), backendIdLo, backendIdHi, false);
  if (union0S + UNION0_BYTES === union0E && allZero(b, union0S, union0E)) p = putText(v, p, ZERO_UNION0_TO_EXPIRES);
  else p = putText(v, putByteList(o, putText(v, p, ENTRY_PIECES[13]), b, union0S, union0E), ENTRY_PIECES[14]);
  p = putU64(o, v, p, expiresLo, expiresHi, true);
  return putText(v, p, ENTRY_PIECES[15]);
}

function allZero(b: Buffer, s: number, e: number): boolean {
  let any = 0;
  for (let i = s; i < e; i++) any |= b[i];
  return any === 0;
}

/** The bytes b[s..e) as comma-separated decimals (a Node Buffer's toJSON data). */
function putByteList(o: Buffer, p: number, b: Buffer, s: number, e: number): number {
  for (let i = s; i < e; i++) {
    if (i !== s) o[p++] = 0x2c;
    const v = b[i];
    const n = DIGIT_COUNT[v];
    o[p++] = DIGITS[v * 3];
    if (n > 1) o[p++] = DIGITS[v * 3 + 1];
    if (n > 2) o[p++] = DIGITS[v * 3 + 2];
  }
  return p;
}

/** The 64-bit varint hi:lo as proto-loader's decimal string (without its quotes): unsigned, or `signed` two's complement. */
function putU64(o: Buffer, v: DataView, p: number, lo: number, hi: number, signed: boolean): number {
  return hi === 0 ? putDec(o, v, p, lo) : putInt64(o, v, p, lo, hi, signed);
}
/** "00".."99" as two ASCII digits in one little-endian uint16, for DataView.setUint16. */
const DIGIT_PAIRS = new Uint16Array(100);
for (let i = 0; i < 100; i++) DIGIT_PAIRS[i] = (0x30 + Math.floor(i / 10)) | ((0x30 + (i % 10)) << 8);

/** Writes the decimal digits of the integer 0 <= n <= 2^53 at p; returns the end. */
function putDec(o: Buffer, v: DataView, p: number, n: number): number {
  if (n < 10) {
    o[p] = 0x30 + n;
    return p + 1;
  }
  if (n < 100) {
    v.setUint16(p, DIGIT_PAIRS[n], true);
    return p + 2;
  }
  let len: number;
  if (n < 0x80000000) {
    len = n < 1000 ? 3 : n < 10000 ? 4 : n < 100000 ? 5 : n < 1000000 ? 6 : n < 10000000 ? 7 : n < 100000000 ? 8 : n < 1000000000 ? 9 : 10;
    // Two digits at a time from the end, then the one or two left.
    let q = p + len;
    let x = n | 0;
    while (x >= 100) {
      const t = (x / 100) | 0;
      q -= 2;
      v.setUint16(q, DIGIT_PAIRS[x - t * 100], true);
      x = t;
    }
    if (x >= 10) v.setUint16(q - 2, DIGIT_PAIRS[x], true);
    else o[q - 1] = 0x30 + x;
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
function putInt64(o: Buffer, v: DataView, p: number, lo: number, hi: number, signed: boolean): number {
  if (signed && hi >= 0x80000000) {
    if (hi >= 0xffe00000) {
      o[p++] = 0x2d; // -
      return putDec(o, v, p, -((hi - 0x100000000) * 0x100000000 + lo));
    }
    return p + o.write(BigInt.asIntN(64, (BigInt(hi) << 32n) | BigInt(lo)).toString(), p, 'latin1');
  }
  if (hi < 0x200000) return putDec(o, v, p, hi * 0x100000000 + lo);
  return p + o.write(((BigInt(hi) << 32n) | BigInt(lo)).toString(), p, 'latin1');
}
