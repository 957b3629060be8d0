/**
 * Internals shared by the memory backend's packed tables (lru-hash.ts, array.ts): the
 * table contract the handle in index.ts drives, and allocation-free byte helpers.
 * Not part of the public surface: import memoryBackend from ./index instead.
 */
import { BpfSyscallError, Errno } from '../errors';
import { LiveMapInfo } from '../types';

/** Reusable in/out state of one batch read (see MemoryTable.readBatch). */
export interface BatchStep {
  /** In: where to resume (bucket or slot index, 0 to start). Out: where the next read resumes. */
  pos: number;
  /** Out: entries copied. */
  count: number;
  /** Out: > 0 when nothing was copied because the next bucket holds `need` entries, more than
   *  the capacity; the caller grows its buffers and calls again with the same `pos`. */
  need: number;
  /** Out: true when there is nothing after this batch. */
  done: boolean;
}

/**
 * One map's storage. Implementations keep every entry in preallocated typed arrays (no JS
 * object per entry) and throw BpfSyscallError with the errno the kernel would return.
 * Sizes of key/value arguments are checked by the handle before a table is called.
 */
export interface MemoryTable {
  readonly info: LiveMapInfo;
  /** Bytes of a value in lookup/update/readBatch buffers: info.valueSize, or one copy per
   *  possible CPU for per-CPU maps (BpfMap.valueBufferSize). */
  readonly valueBufferSize: number;
  /** Copies the value of the key at key[koff, koff+keySize) into out[ooff...]; false when absent. */
  lookup(key: Buffer, koff: number, out: Buffer, ooff: number): boolean;
  /** bpf_map_update_elem semantics, including the errno order of the kernel's checks. */
  update(key: Buffer, koff: number, value: Buffer, voff: number, flags: number): void;
  /** True when the key existed; throws where the kernel refuses deletes (arrays: EINVAL). */
  delete(key: Buffer, koff: number): boolean;
  /** Whether BPF_MAP_DELETE_BATCH exists for this map type (kernel: ENOTSUPP otherwise). */
  readonly supportsDeleteBatch: boolean;
  /** Number of entries, O(1). */
  count(): number;
  /** Copies entries from step.pos on into keys/values, at most `capacity`, never splitting a
   *  hash bucket (BPF_MAP_LOOKUP_BATCH semantics). Does not refresh LRU positions. */
  readBatch(step: BatchStep, keys: Buffer, values: Buffer, capacity: number): void;
}

/** Process-unique map ids, the memory backend's stand-in for kernel map ids. */
let lastId = 0;
export function nextMapId(): number {
  return ++lastId;
}

/** Below this length a JS loop beats Buffer#copy, which allocates a view per call (Node 20). */
const LOOP_COPY_MAX = 128;

/** Copies n bytes src[so...] -> dst[do...] without allocating for small n. */
export function copyBytes(src: Buffer, so: number, dst: Buffer, d: number, n: number): void {
  if (n > LOOP_COPY_MAX) {
    src.copy(dst, d, so, so + n);
    return;
  }
  for (let i = 0; i < n; i++) dst[d + i] = src[so + i];
}

/** Byte equality of a[ao, ao+n) and b[bo, bo+n), without allocating. */
export function bytesEqual(a: Buffer, ao: number, b: Buffer, bo: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (a[ao + i] !== b[bo + i]) return false;
  return true;
}

/** The kernel's check on update flags: anything above BPF_EXIST (BPF_F_LOCK needs a spin lock
 *  in the value, which these maps never have) is EINVAL. */
export function checkUpdateFlags(flags: number): void {
  if (!(flags === 0 || flags === 1 || flags === 2)) {
    throw new BpfSyscallError('map update', Errno.EINVAL, `flags ${flags}`);
  }
}
