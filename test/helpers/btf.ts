/**
 * Reads struct layouts back from the BTF of a compiled BPF object (via `bpftool -j btf dump`),
 * so tests can compare the TS codecs' offsets with what clang actually laid out, the way
 * Cilium's pkg/alignchecker does.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

export interface BtfField {
  offset: number;
  size: number;
}

export interface BtfBitfield {
  /** Bit offset from the start of the struct (little-endian bit numbering). */
  bitOffset: number;
  bitSize: number;
}

export interface BtfStructLayout {
  size: number;
  /** Byte-addressable members, anonymous struct/union members flattened as C does. */
  fields: Record<string, BtfField>;
  /** Bitfield members, flattened the same way; they have no byte offset of their own. */
  bitfields: Record<string, BtfBitfield>;
}

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
  bitfield_size?: number;
}

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: BtfMember[];
  /** ENUM / ENUM64 constants. */
  values?: { name: string; val: number }[];
}

/** bpftool spells an empty name this way. */
const ANON = '(anon)';
/** Kinds that only qualify or rename another type: size and layout are the target's. */
const ALIAS_KINDS = new Set(['TYPEDEF', 'CONST', 'VOLATILE', 'RESTRICT', 'TYPE_TAG']);
const SIZED_KINDS = new Set(['INT', 'ENUM', 'ENUM64', 'FLOAT', 'STRUCT', 'UNION']);
/** The BPF target is 64-bit whatever the host is. */
const POINTER_SIZE = 8;

const cache = new Map<string, Map<number, BtfType>>();

/**
 * Loads every BTF type of `objPath`, keyed by id. Throws when the object is missing (with
 * the command that builds it) or when bpftool fails.
 */
export function loadBtf(objPath: string): Map<number, BtfType> {
  const cached = cache.get(objPath);
  if (cached) return cached;
  if (!fs.existsSync(objPath)) {
    throw new Error(`${objPath} does not exist: run \`make -C bpf\` first`);
  }
  const out = execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', objPath], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const types = new Map<number, BtfType>();
  for (const t of (JSON.parse(out) as { types: BtfType[] }).types) types.set(t.id, t);
  cache.set(objPath, types);
  return types;
}

function typeById(types: Map<number, BtfType>, id: number): BtfType {
  const t = types.get(id);
  if (!t) throw new Error(`btf: no type with id ${id}`);
  return t;
}

function resolveAlias(types: Map<number, BtfType>, t: BtfType): BtfType {
  while (ALIAS_KINDS.has(t.kind)) t = typeById(types, t.type_id!);
  return t;
}

function byteSize(types: Map<number, BtfType>, id: number): number {
  const t = resolveAlias(types, typeById(types, id));
  if (SIZED_KINDS.has(t.kind)) return t.size!;
  if (t.kind === 'ARRAY') return t.nr_elems! * byteSize(types, t.type_id!);
  if (t.kind === 'PTR') return POINTER_SIZE;
  throw new Error(`btf: type ${t.id} (${t.kind} ${t.name}) has no size`);
}

function collectMembers(
  types: Map<number, BtfType>,
  composite: BtfType,
  baseBits: number,
  out: BtfStructLayout,
): void {
  for (const m of composite.members ?? []) {
    const bits = baseBits + m.bits_offset;
    const target = resolveAlias(types, typeById(types, m.type_id));
    if (m.name === ANON) {
      if (target.kind !== 'STRUCT' && target.kind !== 'UNION') {
        throw new Error(`btf: anonymous member of kind ${target.kind} in ${composite.name}`);
      }
      collectMembers(types, target, bits, out);
      continue;
    }
    if (m.name in out.fields || m.name in out.bitfields) {
      throw new Error(`btf: member ${m.name} appears twice after flattening ${composite.name}`);
    }
    if (m.bitfield_size) {
      out.bitfields[m.name] = { bitOffset: bits, bitSize: m.bitfield_size };
    } else {
      if (bits % 8 !== 0) throw new Error(`btf: member ${m.name} is not byte aligned`);
      out.fields[m.name] = { offset: bits / 8, size: byteSize(types, m.type_id) };
    }
  }
}

/** The BTF types of `objPath` of one of `kinds` named `name`. */
function named(objPath: string, kinds: readonly string[], name: string): BtfType[] {
  return [...loadBtf(objPath).values()].filter((t) => kinds.includes(t.kind) && t.name === name);
}

/** Whether the BTF of `objPath` defines the named struct (or union). */
export function definesStruct(objPath: string, structName: string): boolean {
  return named(objPath, ['STRUCT', 'UNION'], structName).length > 0;
}

/**
 * The constants of the named enum in the BTF of `objPath`, name -> value. Throws if the
 * enum is absent or defined more than once.
 */
export function enumValuesFromBtf(objPath: string, enumName: string): Record<string, number> {
  const matches = named(objPath, ['ENUM', 'ENUM64'], enumName);
  if (matches.length !== 1) {
    throw new Error(`btf: ${matches.length} definitions of enum ${enumName} in ${objPath}`);
  }
  return Object.fromEntries((matches[0].values ?? []).map((v) => [v.name, v.val]));
}

/**
 * Size and member layout of the named struct (or union) in the BTF of `objPath`.
 * Members of anonymous structs/unions are reported as members of the outer struct, since
 * that is how C code names them. Throws if the struct is absent or defined more than once.
 */
export function structLayoutFromBtf(objPath: string, structName: string): BtfStructLayout {
  const types = loadBtf(objPath);
  const matches = named(objPath, ['STRUCT', 'UNION'], structName);
  if (matches.length !== 1) {
    throw new Error(`btf: ${matches.length} definitions of ${structName} in ${objPath}`);
  }
  const layout: BtfStructLayout = { size: matches[0].size!, fields: {}, bitfields: {} };
  collectMembers(types, matches[0], 0, layout);
  return layout;
}
