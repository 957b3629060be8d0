/**
 * The memory backend: embedded maps with the kernel's semantics, for machines where bpf()
 * is not permitted and for unprivileged tests. Same BpfMap interface and same errors
 * (BpfSyscallError with the errno the kernel returns) as src/maps/kernel; the contract suite
 * in test/contract/ runs against both.
 *
 * Pins: a process-wide registry path -> table stands in for bpffs, so create() then open()
 * share one table, and a pinned table outlives its handles. ARRAY_OF_MAPS is supported
 * (map-array.ts); HASH_OF_MAPS is not (create throws EOPNOTSUPP). PERCPU_ARRAY keeps one
 * copy of each value per possible CPU (src/sys/cpus.ts), the user-space layout of the
 * kernel's per-CPU maps.
 *
 * Must not import src/sys/index.ts or src/sys/native.ts: this backend has to load where
 * libbpf/koffi cannot.
 */
import * as path from 'node:path';
import { BatchError, BpfSyscallError, Errno } from '../errors';
import {
  Batch,
  BatchCursor,
  BpfMap,
  DeleteBatchResult,
  FillShare,
  LiveMapInfo,
  MapBackend,
  MapFlag,
  MapSpec,
  MapType,
  UpdateFlag,
  UpdateFlagValue,
} from '../types';
import { ArrayTable } from './array';
import { HashTable } from './lru-hash';
import { MapArrayTable } from './map-array';
import { possibleCpus } from '../../sys/cpus';
import { BatchStep, MemoryTable, nextMapId } from './table';

export { ArrayTable } from './array';
export { HashTable } from './lru-hash';

/** Entries per cursor batch by default (same as the kernel backend's DEFAULT_BATCH). */
export const DEFAULT_BATCH = 4096;

/** The kernel keeps BPF_OBJ_NAME_LEN - 1 characters of a map name. */
const NAME_MAX = 15;
/** htab keys live on the BPF stack, so the kernel caps them at MAX_BPF_STACK (E2BIG above). */
const MAX_HASH_KEY = 512;

/**
 * A handle onto a memory table: the memory backend's counterpart of KernelMap's fd.
 * Several handles may share one table (open() of a pinned map). Every method throws
 * BpfSyscallError (EBADF after close(), EINVAL for key/value buffers whose length is not the
 * map's key/value size, otherwise the table's kernel errno).
 */
export class MemoryMap implements BpfMap {
  readonly backend = 'memory' as const;
  #table: MemoryTable | undefined;

  constructor(
    readonly spec: MapSpec,
    table: MemoryTable,
  ) {
    this.#table = table;
  }

  get closed(): boolean {
    return this.#table === undefined;
  }

  /** Per-CPU maps: one copy per possible CPU (this machine's, as the kernel would have it). */
  get valueBufferSize(): number {
    return this.#live().valueBufferSize;
  }

  /** @internal The shared table (tests inspect chains and sizes through it). Throws after close. */
  get table(): MemoryTable {
    return this.#live();
  }

  lookup(key: Buffer, out?: Buffer): Buffer | undefined {
    const t = this.#live();
    checkLength('map lookup', 'key', key, t.info.keySize);
    if (out) checkLength('map lookup', 'value', out, t.valueBufferSize);
    const value = out ?? Buffer.alloc(t.valueBufferSize);
    return t.lookup(key, 0, value, 0) ? value : undefined;
  }

  update(key: Buffer, value: Buffer, flags: UpdateFlagValue = UpdateFlag.ANY): void {
    const t = this.#live();
    checkLength('map update', 'key', key, t.info.keySize);
    checkLength('map update', 'value', value, t.valueBufferSize);
    t.update(key, 0, value, 0, flags);
  }

  delete(key: Buffer): boolean {
    const t = this.#live();
    checkLength('map delete', 'key', key, t.info.keySize);
    return t.delete(key, 0);
  }

  /**
   * BPF_MAP_UPDATE_BATCH semantics: like the kernel, only flags ANY is accepted (its batch
   * elem_flags take BPF_F_LOCK alone), so NOEXIST/EXIST throw EINVAL before anything is
   * written. Otherwise writes entries in order and, at the first failure (E2BIG on a full
   * HASH), throws BatchError whose `processed` counts the entries written before it.
   */
  updateBatch(keys: Buffer, values: Buffer, count: number, flags: UpdateFlagValue = UpdateFlag.ANY): void {
    const t = this.#live();
    if (count === 0) return;
    const ks = t.info.keySize;
    const vs = t.valueBufferSize;
    const op = 'map update batch';
    checkBatch(op, keys, values, count, ks, vs);
    if (flags !== UpdateFlag.ANY) throw new BatchError(op, Errno.EINVAL, 0);
    for (let i = 0; i < count; i++) {
      try {
        t.update(keys, i * ks, values, i * vs, flags);
      } catch (err) {
        if (err instanceof BpfSyscallError) throw new BatchError(op, err.errno, i);
        throw err;
      }
    }
  }

  /**
   * Deletes `count` packed keys; keys already gone count as `missing` (the kernel backend's
   * contract). Arrays throw BatchError ENOTSUPP (failed-precondition), as the kernel does.
   */
  deleteBatch(keys: Buffer, count: number): DeleteBatchResult {
    const t = this.#live();
    if (count === 0) return { deleted: 0, missing: 0 };
    const op = 'map delete batch';
    if (!t.supportsDeleteBatch) throw new BatchError(op, Errno.ENOTSUPP, 0);
    const ks = t.info.keySize;
    checkBatch(op, keys, undefined, count, ks, 0);
    let deleted = 0;
    for (let i = 0; i < count; i++) if (t.delete(keys, i * ks)) deleted++;
    return { deleted, missing: count - deleted };
  }

  /** A cursor in bucket order (slot order for arrays); `batchSize` grows when one hash
   *  bucket holds more entries, instead of failing with ENOSPC as the kernel does. */
  cursor(batchSize = DEFAULT_BATCH): BatchCursor {
    this.#live();
    return new MemoryCursor(this, batchSize);
  }

  /** O(1): the table keeps a counter. Arrays report maxEntries, as a kernel batch scan would. */
  count(): number {
    return this.#live().count();
  }

  info(): LiveMapInfo {
    return this.#live().info;
  }

  /** The table id: what an ARRAY_OF_MAPS slot of this backend takes to hold this map. */
  outerSlotValue(): number {
    return this.#live().info.id;
  }

  /** Idempotent; a pinned table stays in the registry. */
  close(): void {
    this.#table = undefined;
  }

  #live(): MemoryTable {
    const t = this.#table;
    if (!t) throw new BpfSyscallError(`map ${this.spec.name}: use after close`, Errno.EBADF);
    return t;
  }
}

class MemoryCursor implements BatchCursor {
  #capacity: number;
  #keys: Buffer;
  #values: Buffer;
  readonly #step: BatchStep = { pos: 0, count: 0, need: 0, done: false };
  #done = false;

  constructor(
    private readonly map: MemoryMap,
    batchSize: number,
  ) {
    const info = map.info();
    this.#capacity = Number.isFinite(batchSize) ? Math.max(1, Math.floor(batchSize)) : DEFAULT_BATCH;
    this.#keys = Buffer.allocUnsafe(this.#capacity * info.keySize);
    this.#values = Buffer.allocUnsafe(this.#capacity * map.valueBufferSize);
  }

  nextAsync(): Promise<Batch | null> {
    return Promise.resolve(this.next());
  }

  next(): Batch | null {
    while (!this.#done) {
      // Throws EBADF once the map is closed, like a kernel cursor whose fd is gone.
      const t = this.map.table;
      const step = this.#step;
      t.readBatch(step, this.#keys, this.#values, this.#capacity);
      if (step.need > 0) {
        this.#grow(step.need, t);
        continue;
      }
      if (step.done) this.#done = true;
      if (step.count > 0) {
        return {
          count: step.count,
          keys: this.#keys.subarray(0, step.count * t.info.keySize),
          values: this.#values.subarray(0, step.count * t.valueBufferSize),
        };
      }
    }
    return null;
  }

  #grow(need: number, t: MemoryTable): void {
    while (this.#capacity < need) this.#capacity *= 2;
    this.#keys = Buffer.allocUnsafe(this.#capacity * t.info.keySize);
    this.#values = Buffer.allocUnsafe(this.#capacity * t.valueBufferSize);
  }

  close(): void {
    this.#done = true;
  }
}

function checkLength(op: string, what: 'key' | 'value', buf: Buffer, size: number): void {
  if (buf.length !== size) {
    throw new BpfSyscallError(op, Errno.EINVAL, `${what} is ${buf.length} bytes, map ${what} size is ${size}`);
  }
}

function checkBatch(op: string, keys: Buffer, values: Buffer | undefined, count: number, ks: number, vs: number): void {
  if (!Number.isInteger(count) || count < 0) throw new BatchError(op, Errno.EINVAL, 0);
  if (keys.length < count * ks || (values !== undefined && values.length < count * vs)) {
    throw new BatchError(op, Errno.EINVAL, 0);
  }
}

/** Pinned tables by resolved path: the memory backend's bpffs. */
const pins = new Map<string, MemoryTable>();

function pinKey(pinPath: string): string {
  return path.resolve(pinPath);
}

/**
 * Checks a spec the way BPF_MAP_CREATE (and libbpf's name truncation) would and returns the
 * info the map will report. Throws BpfSyscallError: EINVAL for bad sizes, names or flags,
 * E2BIG for hash keys over 512 bytes, ENOTSUPP for LRU_HASH + NO_PREALLOC, EOPNOTSUPP for
 * map-in-map types (not implemented by the memory backend).
 */
function validateSpec(spec: MapSpec): LiveMapInfo {
  const op = `map create ${spec.name}`;
  const fail = (errno: number, hint: string): never => {
    throw new BpfSyscallError(op, errno, hint);
  };
  const name = spec.name.slice(0, NAME_MAX);
  if (!/^[A-Za-z0-9_.]*$/.test(name)) fail(Errno.EINVAL, 'map names may hold only [A-Za-z0-9_.]');
  for (const [field, v] of [
    ['keySize', spec.keySize],
    ['valueSize', spec.valueSize],
    ['maxEntries', spec.maxEntries],
  ] as const) {
    if (!Number.isInteger(v) || v <= 0 || v > 0xffffffff) fail(Errno.EINVAL, `${field} ${v}`);
  }
  const flags = spec.flags;
  if (!Number.isInteger(flags) || flags < 0) fail(Errno.EINVAL, `flags ${flags}`);
  switch (spec.type) {
    case MapType.HASH:
      if (flags & ~MapFlag.NO_PREALLOC) fail(Errno.EINVAL, `flags ${flags}`);
      if (spec.keySize > MAX_HASH_KEY) fail(Errno.E2BIG, `key size ${spec.keySize} > ${MAX_HASH_KEY}`);
      break;
    case MapType.LRU_HASH:
      if (flags & ~(MapFlag.NO_PREALLOC | MapFlag.NO_COMMON_LRU)) fail(Errno.EINVAL, `flags ${flags}`);
      if (flags & MapFlag.NO_PREALLOC) fail(Errno.ENOTSUPP, 'LRU maps are always preallocated');
      if (spec.keySize > MAX_HASH_KEY) fail(Errno.E2BIG, `key size ${spec.keySize} > ${MAX_HASH_KEY}`);
      break;
    case MapType.ARRAY:
    case MapType.PERCPU_ARRAY:
      if (spec.keySize !== 4) fail(Errno.EINVAL, 'array keys are u32');
      if (flags !== 0) fail(Errno.EINVAL, `flags ${flags}`);
      break;
    case MapType.ARRAY_OF_MAPS:
      if (spec.keySize !== 4 || spec.valueSize !== 4) fail(Errno.EINVAL, 'map-in-map keys and values are u32');
      if (flags !== 0) fail(Errno.EINVAL, `flags ${flags}`);
      if (!spec.innerSpec) fail(Errno.EBADF, 'map-in-map needs an inner map template');
      validateSpec(spec.innerSpec!);
      if (spec.innerSpec!.type === MapType.ARRAY_OF_MAPS) fail(Errno.EINVAL, 'map-in-map cannot nest');
      break;
    case MapType.HASH_OF_MAPS:
      fail(Errno.EOPNOTSUPP, 'HASH_OF_MAPS is not implemented by the memory backend');
      break;
    default:
      fail(Errno.EINVAL, `map type ${spec.type as number}`);
  }
  return {
    type: spec.type,
    id: 0,
    keySize: spec.keySize,
    valueSize: spec.valueSize,
    maxEntries: spec.maxEntries,
    flags,
    name,
  };
}

/**
 * Live tables by id, for ARRAY_OF_MAPS slots (the kernel resolves an fd; this backend an
 * id). Weak: a table nobody holds (no handle, pin or slot) goes away as in the kernel.
 */
const tablesById = new Map<number, WeakRef<MemoryTable>>();
const forgetTable = new FinalizationRegistry<number>((id) => tablesById.delete(id));

function tableById(id: number): MemoryTable | undefined {
  return tablesById.get(id)?.deref();
}

function newTable(spec: MapSpec, shape: LiveMapInfo): MemoryTable {
  const info = Object.freeze({ ...shape, id: nextMapId() });
  try {
    const table: MemoryTable =
      spec.type === MapType.ARRAY || spec.type === MapType.PERCPU_ARRAY
        ? new ArrayTable(info, possibleCpus())
        : spec.type === MapType.ARRAY_OF_MAPS
          ? new MapArrayTable(info, spec.innerSpec!, tableById)
          : new HashTable(info);
    tablesById.set(info.id, new WeakRef(table));
    forgetTable.register(table, info.id);
    return table;
  } catch (err) {
    // Typed-array allocation failures surface as RangeError: report them as the kernel's
    // "cannot allocate the map" rather than an internal error.
    if (err instanceof RangeError) throw new BpfSyscallError(`map create ${spec.name}`, Errno.ENOMEM, err.message);
    throw err;
  }
}

/**
 * The memory backend. Contract as MapBackend (src/maps/types.ts), with the registry of
 * pinned tables process-wide: open(spec) returns a new handle onto the table pinned at
 * spec.pinPath (undefined when none); create(spec) throws already-exists (EEXIST) when
 * spec.pinPath is taken, before allocating anything; unpin removes the registry entry only
 * (open handles keep the table); pinnedInfo reports the pinned table's info; pin and
 * rename move registry entries (one synchronous step: atomic for every reader).
 */
export const memoryBackend: MapBackend = {
  name: 'memory',

  open(spec: MapSpec): MemoryMap | undefined {
    if (!spec.pinPath) return undefined;
    const table = pins.get(pinKey(spec.pinPath));
    return table && new MemoryMap(spec, table);
  },

  create(spec: MapSpec): MemoryMap {
    const shape = validateSpec(spec);
    const key = spec.pinPath ? pinKey(spec.pinPath) : undefined;
    if (key !== undefined && pins.has(key)) throw new BpfSyscallError(`obj pin ${spec.pinPath}`, Errno.EEXIST);
    const table = newTable(spec, shape);
    if (key !== undefined) pins.set(key, table);
    return new MemoryMap(spec, table);
  },

  unpin(pinPath: string): boolean {
    return pins.delete(pinKey(pinPath));
  },

  pinnedInfo(pinPath: string): LiveMapInfo | undefined {
    return pins.get(pinKey(pinPath))?.info;
  },

  pin(map: BpfMap, pinPath: string): void {
    if (!(map instanceof MemoryMap)) throw new BpfSyscallError(`obj pin ${pinPath}`, Errno.EINVAL, 'not a memory map');
    const key = pinKey(pinPath);
    if (pins.has(key)) throw new BpfSyscallError(`obj pin ${pinPath}`, Errno.EEXIST);
    pins.set(key, map.table);
  },

  rename(from: string, to: string): void {
    const table = pins.get(pinKey(from));
    if (!table) throw new BpfSyscallError(`rename pin ${from} -> ${to}`, Errno.ENOENT);
    pins.set(pinKey(to), table);
    if (pinKey(to) !== pinKey(from)) pins.delete(pinKey(from));
  },

  /** The memory backend keeps exactly what it is asked for. */
  effectiveMaxEntries(spec: MapSpec): number {
    return spec.maxEntries;
  },

  /** Eviction is exact here (lru-hash.ts): a fresh map holds max_entries, written from anywhere. */
  fillPlan(spec: MapSpec): FillShare[] {
    return [{ limit: spec.maxEntries }];
  },

  /** No per-CPU state: nothing to place. */
  onCpu(): () => void {
    return () => undefined;
  },
};

/** Paths currently pinned in the memory backend (resolved, sorted): for listings and for
 *  tests that clean up everything under their own directory. */
export function pinnedPaths(): string[] {
  return [...pins.keys()].sort();
}
