/**
 * The kernel backend: real BPF maps, pinned in bpffs. Needs root or CAP_BPF (+CAP_SYS_ADMIN
 * to pin). Batch operations need Linux >= 5.6 for hash maps.
 */
import * as bpf from '../bpf';
import {
  Batch,
  BatchCursor,
  BpfMap,
  DeleteBatchResult,
  LiveMapInfo,
  MapBackend,
  MapSpec,
  MapType,
  UpdateFlag,
  UpdateFlagValue,
} from '../types';

/** Entries per batch syscall by default: large enough that syscall cost is amortised. */
export const DEFAULT_BATCH = 4096;

export class KernelMap implements BpfMap {
  readonly backend = 'kernel' as const;

  constructor(
    readonly spec: MapSpec,
    readonly fd: bpf.Fd,
  ) {}

  get closed(): boolean {
    return this.fd.closed;
  }

  /**
   * The kernel copies exactly key_size / value_size bytes (times count) from or to the
   * pointers it is given: a short buffer would be read or written past its end, so every
   * length is checked here, before the syscall.
   */
  #checkLengths(op: string, keys: Buffer, values: Buffer | undefined, batchCount?: number): void {
    // Single-element operations want exact sizes; batches at least `batchCount` elements.
    const single = batchCount === undefined;
    const count = batchCount ?? 1;
    if (keys.length < count * this.spec.keySize || (single && keys.length !== this.spec.keySize)) {
      throw new bpf.BpfSyscallError(`${op}: key buffer of ${keys.length} bytes for ${count} key(s) of ${this.spec.keySize}`, bpf.Errno.EINVAL);
    }
    if (values && (values.length < count * this.spec.valueSize || (single && values.length !== this.spec.valueSize))) {
      throw new bpf.BpfSyscallError(`${op}: value buffer of ${values.length} bytes for ${count} value(s) of ${this.spec.valueSize}`, bpf.Errno.EINVAL);
    }
  }

  lookup(key: Buffer, out?: Buffer): Buffer | undefined {
    const value = out ?? Buffer.alloc(this.spec.valueSize);
    this.#checkLengths('map lookup', key, value);
    return bpf.lookup(this.fd, key, value) ? value : undefined;
  }

  update(key: Buffer, value: Buffer, flags: UpdateFlagValue = UpdateFlag.ANY): void {
    this.#checkLengths('map update', key, value);
    bpf.update(this.fd, key, value, flags);
  }

  delete(key: Buffer): boolean {
    this.#checkLengths('map delete', key, undefined);
    return bpf.deleteElem(this.fd, key);
  }

  updateBatch(keys: Buffer, values: Buffer, count: number, flags: UpdateFlagValue = UpdateFlag.ANY): void {
    if (count === 0) return;
    this.#checkLengths('map update batch', keys, values, count);
    bpf.updateBatch(this.fd, keys, values, count, flags);
  }

  deleteBatch(keys: Buffer, count: number): DeleteBatchResult {
    // The kernel stops a delete batch at the first missing key; a missing key is normal
    // here (LRU eviction or the datapath got there first), so step over it and go on.
    this.#checkLengths('map delete batch', keys, undefined, count);
    const ks = this.spec.keySize;
    let done = 0;
    let deleted = 0;
    let missing = 0;
    while (done < count) {
      try {
        bpf.deleteBatch(this.fd, keys.subarray(done * ks, count * ks), count - done);
        deleted += count - done;
        done = count;
      } catch (err) {
        if (!(err instanceof bpf.BatchError) || err.errno !== bpf.Errno.ENOENT) throw err;
        deleted += err.processed;
        missing++;
        done += err.processed + 1;
      }
    }
    return { deleted, missing };
  }

  cursor(batchSize = DEFAULT_BATCH): BatchCursor {
    return new KernelCursor(this, batchSize);
  }

  count(): number {
    const cursor = new KernelCursor(this, DEFAULT_BATCH * 4);
    let n = 0;
    try {
      for (let b = cursor.next(); b; b = cursor.next()) n += b.count;
    } finally {
      cursor.close();
    }
    return n;
  }

  info(): LiveMapInfo {
    return bpf.mapInfo(this.fd);
  }

  close(): void {
    this.fd.close();
  }
}

class KernelCursor implements BatchCursor {
  #keys: Buffer;
  #values: Buffer;
  #capacity: number;
  // Batch tokens: hash maps use a u32 bucket index, arrays a key-sized index.
  #inBatch: Buffer;
  #outBatch: Buffer;
  #started = false;
  #done = false;

  constructor(
    private readonly map: KernelMap,
    batchSize: number,
  ) {
    this.#capacity = Math.max(1, batchSize);
    this.#keys = Buffer.allocUnsafe(this.#capacity * map.spec.keySize);
    this.#values = Buffer.allocUnsafe(this.#capacity * map.spec.valueSize);
    const tokenSize = Math.max(8, map.spec.keySize);
    this.#inBatch = Buffer.alloc(tokenSize);
    this.#outBatch = Buffer.alloc(tokenSize);
  }

  next(): Batch | null {
    while (!this.#done) {
      let res: bpf.BatchLookupResult;
      try {
        res = bpf.lookupBatch(
          this.map.fd,
          this.#started ? this.#inBatch : null,
          this.#outBatch,
          this.#keys,
          this.#values,
          this.#capacity,
        );
      } catch (err) {
        if (bpf.isErrno(err, bpf.Errno.ENOSPC)) {
          this.#grow();
          continue;
        }
        throw err;
      }
      this.#started = true;
      this.#outBatch.copy(this.#inBatch);
      if (res.done) this.#done = true;
      if (res.count > 0) {
        return {
          count: res.count,
          keys: this.#keys.subarray(0, res.count * this.map.spec.keySize),
          values: this.#values.subarray(0, res.count * this.map.spec.valueSize),
        };
      }
    }
    return null;
  }

  #grow(): void {
    this.#capacity *= 2;
    this.#keys = Buffer.allocUnsafe(this.#capacity * this.map.spec.keySize);
    this.#values = Buffer.allocUnsafe(this.#capacity * this.map.spec.valueSize);
  }

  close(): void {
    this.#done = true;
  }
}

export const kernelBackend: MapBackend = {
  name: 'kernel',

  open(spec: MapSpec): KernelMap | undefined {
    if (!spec.pinPath) return undefined;
    const fd = bpf.objGet(spec.pinPath);
    return fd && new KernelMap(spec, fd);
  },

  create(spec: MapSpec): KernelMap {
    const fd = createFd(spec);
    try {
      if (spec.pinPath) bpf.objPin(fd, spec.pinPath);
    } catch (err) {
      fd.close();
      throw err;
    }
    return new KernelMap(spec, fd);
  },

  unpin(pinPath: string): boolean {
    return bpf.unpin(pinPath);
  },

  pinnedInfo(pinPath: string): LiveMapInfo | undefined {
    const fd = bpf.objGet(pinPath);
    if (!fd) return undefined;
    try {
      return bpf.mapInfo(fd);
    } finally {
      fd.close();
    }
  },
};

function createFd(spec: MapSpec): bpf.Fd {
  if (spec.type === MapType.ARRAY_OF_MAPS || spec.type === MapType.HASH_OF_MAPS) {
    if (!spec.innerSpec) throw new Error(`map ${spec.name}: map-in-map spec without innerSpec`);
    // The kernel only needs an inner map to learn its shape; it is closed right away.
    const inner = createFd({ ...spec.innerSpec, pinPath: undefined });
    try {
      return bpf.createMap({ ...spec, innerMapFd: inner });
    } finally {
      inner.close();
    }
  }
  return bpf.createMap(spec);
}

/**
 * Whether bpf() is permitted here: creates and closes a one-entry array map.
 * Returns the reason when it is not.
 */
export function probeKernel(): { ok: true } | { ok: false; reason: string } {
  try {
    bpf.createMap({ type: MapType.ARRAY, name: 'ctmapd_probe', keySize: 4, valueSize: 4, maxEntries: 1, flags: 0 }).close();
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
}
