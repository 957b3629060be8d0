/**
 * The memory backend's ARRAY_OF_MAPS (type 12): a fixed number of slots, each empty or
 * holding a reference to an inner table, with the kernel's user-space view: a slot is
 * written with the inner map's handle value (the kernel takes an fd; here the table id,
 * see BpfMap.outerSlotValue) and reads back as the inner map's id.
 */
import { BpfSyscallError, Errno } from '../errors';
import { LiveMapInfo, UpdateFlag } from '../types';
import { BatchStep, MemoryTable, checkUpdateFlags } from './table';

/** The attributes map-in-map compares (kernel bpf_map_meta_equal; max_entries is not one). */
export interface InnerShape {
  readonly type: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly flags: number;
}

/**
 * An ARRAY_OF_MAPS table. Contract (kernel arraymap.c, fd_array ops, map_in_map.c):
 * update takes BPF_ANY only (EINVAL otherwise), E2BIG for an index >= maxEntries, EBADF when
 * the value names no live map, EINVAL when the inner map's type, key size, value size or
 * flags differ from the template's; lookup returns the inner map's id, absent for an empty
 * slot; delete empties a slot (false when already empty, E2BIG past the end). The slot
 * keeps its inner table alive, like the kernel's reference, after every handle is closed
 * and the pin removed.
 */
export class MapArrayTable implements MemoryTable {
  readonly supportsDeleteBatch = true;
  readonly valueBufferSize = 4;
  readonly #slots: (MemoryTable | undefined)[];
  #used = 0;

  constructor(
    readonly info: LiveMapInfo,
    private readonly inner: InnerShape,
    /** The live table with this id, if any (the backend's id registry). */
    private readonly resolve: (id: number) => MemoryTable | undefined,
  ) {
    if (info.keySize !== 4 || info.valueSize !== 4) throw new BpfSyscallError('map create', Errno.EINVAL, 'map-in-map keys and values are u32');
    this.#slots = new Array(info.maxEntries);
  }

  count(): number {
    return this.#used;
  }

  lookup(key: Buffer, koff: number, out: Buffer, ooff: number): boolean {
    const t = this.#slots[key.readUInt32LE(koff)];
    if (!t) return false;
    out.writeUInt32LE(t.info.id, ooff);
    return true;
  }

  update(key: Buffer, koff: number, value: Buffer, voff: number, flags: number): void {
    checkUpdateFlags(flags);
    if (flags !== UpdateFlag.ANY) throw new BpfSyscallError('map update', Errno.EINVAL, 'map-in-map slots take BPF_ANY only');
    const index = key.readUInt32LE(koff);
    if (index >= this.info.maxEntries) throw new BpfSyscallError('map update', Errno.E2BIG, `index ${index} >= ${this.info.maxEntries}`);
    const t = this.resolve(value.readUInt32LE(voff));
    if (!t) throw new BpfSyscallError('map update', Errno.EBADF, `no live map ${value.readUInt32LE(voff)}`);
    const s = t.info;
    const i = this.inner;
    if (s.type !== i.type || s.keySize !== i.keySize || s.valueSize !== i.valueSize || s.flags !== i.flags) {
      throw new BpfSyscallError(
        'map update',
        Errno.EINVAL,
        `inner map ${s.name} (type ${s.type}, ${s.keySize}/${s.valueSize} B, flags ${s.flags}) does not match the template (type ${i.type}, ${i.keySize}/${i.valueSize} B, flags ${i.flags})`,
      );
    }
    if (!this.#slots[index]) this.#used++;
    this.#slots[index] = t;
  }

  delete(key: Buffer, koff: number): boolean {
    const index = key.readUInt32LE(koff);
    if (index >= this.info.maxEntries) throw new BpfSyscallError('map delete', Errno.E2BIG, `index ${index} >= ${this.info.maxEntries}`);
    if (!this.#slots[index]) return false;
    this.#slots[index] = undefined;
    this.#used--;
    return true;
  }

  /** Occupied slots in index order, each with its inner map's id. */
  readBatch(step: BatchStep, keys: Buffer, values: Buffer, capacity: number): void {
    let n = 0;
    let i = step.pos;
    for (; i < this.info.maxEntries && n < capacity; i++) {
      const t = this.#slots[i];
      if (!t) continue;
      keys.writeUInt32LE(i, n * 4);
      values.writeUInt32LE(t.info.id, n * 4);
      n++;
    }
    step.pos = i;
    step.count = n;
    step.need = 0;
    step.done = i >= this.info.maxEntries;
  }
}
