/**
 * The memory backend's ARRAY (type 2) and PERCPU_ARRAY (type 6): maxEntries fixed,
 * zero-initialised value slots addressed by a u32 key (host byte order, little-endian on
 * the machines ctmapd targets). A per-CPU slot holds one copy per possible CPU, each
 * rounded up to 8 bytes: the layout user space sees from the kernel, stored as it is.
 * Nothing runs "on a CPU" here, so the copies are only ever written from user space.
 */
import { BpfSyscallError, Errno } from '../errors';
import { LiveMapInfo, UpdateFlag, userValueSize } from '../types';
import { BatchStep, MemoryTable, checkUpdateFlags, copyBytes } from './table';

/**
 * An ARRAY or PERCPU_ARRAY table. Contract (kernel arraymap.c): every slot exists from
 * creation and reads as zeros until written; an index >= maxEntries is absent for lookup
 * and E2BIG for update; NOEXIST is always EEXIST; delete is EINVAL and delete batch is
 * ENOTSUPP; count() is maxEntries; a batch read returns slots in index order. Values are
 * `valueBufferSize` bytes (all CPUs' copies for a per-CPU array).
 */
export class ArrayTable implements MemoryTable {
  readonly info: LiveMapInfo;
  readonly valueBufferSize: number;
  readonly supportsDeleteBatch = false;
  /** Bytes preallocated for this table. */
  readonly byteSize: number;
  readonly #vs: number;
  readonly #max: number;
  readonly #values: Buffer;

  /**
   * Allocates maxEntries zeroed values of `possibleCpus` copies for a per-CPU array; the
   * caller has validated info (keySize 4).
   */
  constructor(info: LiveMapInfo, possibleCpus = 1) {
    this.info = info;
    this.valueBufferSize = userValueSize(info.type, info.valueSize, possibleCpus);
    this.#vs = this.valueBufferSize;
    this.#max = info.maxEntries;
    this.#values = Buffer.alloc(info.maxEntries * this.#vs);
    this.byteSize = this.#values.byteLength;
  }

  count(): number {
    return this.#max;
  }

  lookup(key: Buffer, koff: number, out: Buffer, ooff: number): boolean {
    const index = key.readUInt32LE(koff);
    if (index >= this.#max) return false;
    copyBytes(this.#values, index * this.#vs, out, ooff, this.#vs);
    return true;
  }

  update(key: Buffer, koff: number, value: Buffer, voff: number, flags: number): void {
    // Same check order as array_map_update_elem: flags, index, NOEXIST.
    checkUpdateFlags(flags);
    const index = key.readUInt32LE(koff);
    if (index >= this.#max) throw new BpfSyscallError('map update', Errno.E2BIG, `index ${index} >= ${this.#max}`);
    if (flags === UpdateFlag.NOEXIST) throw new BpfSyscallError('map update', Errno.EEXIST);
    copyBytes(value, voff, this.#values, index * this.#vs, this.#vs);
  }

  delete(): boolean {
    throw new BpfSyscallError('map delete', Errno.EINVAL, 'array elements cannot be deleted');
  }

  readBatch(step: BatchStep, keys: Buffer, values: Buffer, capacity: number): void {
    const start = step.pos;
    const end = Math.min(this.#max, start + capacity);
    for (let i = start; i < end; i++) {
      keys.writeUInt32LE(i, (i - start) * 4);
      copyBytes(this.#values, i * this.#vs, values, (i - start) * this.#vs, this.#vs);
    }
    step.pos = end;
    step.count = end - start;
    step.need = 0;
    step.done = end >= this.#max;
  }
}
