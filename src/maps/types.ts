/**
 * The map layer's vocabulary: a plain MapSpec describes a map; a live BpfMap owns one
 * (an fd for the kernel backend, a packed table for the memory backend). Kernel-dependent
 * decisions happen only when a spec is turned into a live map (see backend.ts).
 */

/** BPF map types ctmapd uses (values are the kernel's enum bpf_map_type). */
export const MapType = {
  HASH: 1,
  ARRAY: 2,
  PERCPU_ARRAY: 6,
  LRU_HASH: 9,
  ARRAY_OF_MAPS: 12,
  HASH_OF_MAPS: 13,
  RINGBUF: 27,
} as const;
export type MapTypeValue = (typeof MapType)[keyof typeof MapType];

export function mapTypeName(type: number): string {
  for (const [name, value] of Object.entries(MapType)) if (value === type) return name.toLowerCase();
  return `type-${type}`;
}

/** Whether maps of `type` hold one value per possible CPU (BPF_MAP_TYPE_PERCPU_*). */
export function isPerCpuMapType(type: number): boolean {
  return type === MapType.PERCPU_ARRAY;
}

/**
 * Bytes of one value as user space reads and writes it (the kernel's
 * bpf_map_value_size): `valueSize`, or for a per-CPU map one copy per possible CPU, each
 * rounded up to 8 bytes, CPU 0 first.
 */
export function userValueSize(type: number, valueSize: number, possibleCpus: number): number {
  return isPerCpuMapType(type) ? possibleCpus * Math.ceil(valueSize / 8) * 8 : valueSize;
}

/** Map creation flags (enum in uapi linux/bpf.h). */
export const MapFlag = {
  NO_PREALLOC: 1 << 0,
  NO_COMMON_LRU: 1 << 1,
} as const;

/** bpf_map_update_elem flags. */
export const UpdateFlag = {
  ANY: 0,
  NOEXIST: 1,
  EXIST: 2,
} as const;
export type UpdateFlagValue = (typeof UpdateFlag)[keyof typeof UpdateFlag];

/** Plain, deterministic description of a map. Creating a live map from it is the backend's job. */
export interface MapSpec {
  /** Map name as the kernel keeps it (at most 15 characters are stored). */
  readonly name: string;
  readonly type: MapTypeValue;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly flags: number;
  /** For ARRAY_OF_MAPS / HASH_OF_MAPS: the spec every inner map must match. */
  readonly innerSpec?: MapSpec;
  /** Absolute bpffs path the map is pinned at; undefined for an unpinned map. */
  readonly pinPath?: string;
}

/** What the kernel (or the memory backend) reports about a live map. */
export interface LiveMapInfo {
  readonly type: number;
  /** Kernel map id (memory backend: a process-unique id). */
  readonly id: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly flags: number;
  readonly name: string;
}

/**
 * One batch of a cursor. `keys` and `values` are views into buffers the cursor reuses:
 * they are valid until the next call to next() or close(). Entry i's key is
 * keys[i*keySize, (i+1)*keySize).
 */
export interface Batch {
  readonly count: number;
  readonly keys: Buffer;
  readonly values: Buffer;
}

/**
 * Batch iteration with a cursor (kernel: BPF_MAP_LOOKUP_BATCH). Pull-based so that a
 * consumer (e.g. a gRPC stream) reads the next batch only when it is ready for it.
 * Entries inserted or deleted concurrently may or may not be seen, as in the kernel.
 */
export interface BatchCursor {
  /** The next non-empty batch, or null at the end of the map. */
  next(): Batch | null;
  /**
   * Like next(), but the kernel backend reads off the event loop and prefetches the
   * following batch while the caller works on this one (double buffering). The batch stays
   * valid until the next call to nextAsync(). Do not mix with next() on one cursor.
   */
  nextAsync(): Promise<Batch | null>;
  /** Releases the buffers; idempotent. */
  close(): void;
}

/** Result of a batch delete: keys that existed and were removed, and keys already gone. */
export interface DeleteBatchResult {
  readonly deleted: number;
  /** Keys that were not present (already deleted or evicted): not an error. */
  readonly missing: number;
}

/**
 * A live map. Every method throws a CtmapError (see src/maps/errors.ts for the errno
 * mapping): not-found, already-exists, resource-exhausted (full / batch too small),
 * permission-denied, failed-precondition (not supported).
 */
export interface BpfMap {
  readonly spec: MapSpec;
  readonly backend: BackendName;
  /**
   * Bytes of one value in every value buffer this map takes or returns (lookup, update,
   * batches, cursors): spec.valueSize, except for per-CPU maps, whose values are one copy
   * per possible CPU (userValueSize). info().valueSize stays the per-CPU size, as the
   * kernel reports it.
   */
  readonly valueBufferSize: number;
  /** Copies the value of `key` into `out` (or a new buffer); undefined when absent. */
  lookup(key: Buffer, out?: Buffer): Buffer | undefined;
  update(key: Buffer, value: Buffer, flags?: UpdateFlagValue): void;
  /** True when the key existed. */
  delete(key: Buffer): boolean;
  /** Writes `count` packed keys/values. Stops at the first failure and throws; the entries
   *  before it stay written (callers that need all-or-nothing restore them). */
  updateBatch(keys: Buffer, values: Buffer, count: number, flags?: UpdateFlagValue): void;
  /** Deletes `count` packed keys; keys already gone are counted as missing, not an error. */
  deleteBatch(keys: Buffer, count: number): DeleteBatchResult;
  /** A cursor over all entries; `batchSize` is a hint (entries per batch). */
  cursor(batchSize?: number): BatchCursor;
  /** Number of entries (a full batch scan for hash maps: the kernel keeps no counter). */
  count(): number;
  info(): LiveMapInfo;
  /**
   * The u32 an ARRAY_OF_MAPS slot of the same backend is written with to hold this map
   * (kernel: this map's fd; memory: its table id). Reading the slot back gives the map's
   * id (info().id), as in the kernel.
   */
  outerSlotValue(): number;
  /** Idempotent. Closing does not unpin. */
  close(): void;
  readonly closed: boolean;
}

export type BackendName = 'kernel' | 'memory';

/**
 * One part of a plan to fill a fresh, empty map without the backend evicting anything:
 * write at most `limit` new entries with the calling thread placed on `cpu` (undefined:
 * wherever it runs). A kernel LRU map hands out its free slots through per-CPU lists and
 * evicts before it is full when they run dry (see src/maps/kernel/placement.ts), so how
 * many entries fit depends on where they are written from.
 */
export interface FillShare {
  readonly cpu?: number;
  readonly limit: number;
}

/** Creates, opens and removes pinned maps for one backend. */
export interface MapBackend {
  readonly name: BackendName;
  /** Opens the map pinned at spec.pinPath; undefined when nothing is pinned there. */
  open(spec: MapSpec): BpfMap | undefined;
  /** Creates the map, and pins it when spec.pinPath is set (throws already-exists if pinned). */
  create(spec: MapSpec): BpfMap;
  /** Removes the pin (the map lives on while fds or programs hold it). Idempotent: false if absent. */
  unpin(pinPath: string): boolean;
  /** Attributes of the map pinned at pinPath, without keeping it open; undefined if absent. */
  pinnedInfo(pinPath: string): LiveMapInfo | undefined;
  /**
   * Pins an open map of this backend at a second path (it stays pinned where it was).
   * Throws already-exists (EEXIST) when pinPath is taken.
   */
  pin(map: BpfMap, pinPath: string): void;
  /**
   * Moves the pin at `from` to `to` in one atomic step, replacing what `to` held: a reader
   * of `to` finds the old map or the new one, never nothing. Throws not-found (ENOENT)
   * when nothing is pinned at `from`.
   */
  rename(from: string, to: string): void;
  /**
   * max_entries the map created from `spec` will report: the kernel rounds an LRU map with
   * BPF_F_NO_COMMON_LRU to a multiple of the possible CPUs; otherwise spec.maxEntries.
   */
  effectiveMaxEntries(spec: MapSpec): number;
  /**
   * How to fill a fresh map created from `spec` to capacity without evictions: shares
   * whose limits sum to the most entries that can be written without the backend dropping
   * any (may be less than max_entries). Run each share under onCpu(share.cpu).
   */
  fillPlan(spec: MapSpec): FillShare[];
  /**
   * Places the calling thread on `cpu` (undefined: no change) until the returned restore
   * function is called. Throws when the thread cannot be placed there.
   */
  onCpu(cpu: number | undefined): () => void;
}
