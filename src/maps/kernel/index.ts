/**
 * The kernel backend: real BPF maps, pinned in bpffs. Needs root or CAP_BPF (+CAP_SYS_ADMIN
 * to pin). Batch operations need Linux >= 5.6 for hash maps.
 */
import * as bpf from '../../sys';
import { possibleCpus } from '../../sys/cpus';
import { effectiveMaxEntries, fillPlan, onCpu } from './placement';
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
  userValueSize,
} from '../types';

/** Entries per batch syscall by default: large enough that syscall cost is amortised. */
export const DEFAULT_BATCH = 4096;

export class KernelMap implements BpfMap {
  readonly backend = 'kernel' as const;
  readonly valueBufferSize: number;

  constructor(
    readonly spec: MapSpec,
    readonly fd: bpf.Fd,
  ) {
    this.valueBufferSize = userValueSize(spec.type, spec.valueSize, possibleCpus());
  }

  #inflight = 0;
  #closeRequested = false;

  get closed(): boolean {
    return this.fd.closed || this.#closeRequested;
  }

  /**
   * Keeps the fd open until the returned release is called: an async batch read on a pool
   * thread must never run on an fd number that close() has already recycled.
   */
  holdFd(): () => void {
    this.#inflight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.#inflight === 0 && this.#closeRequested) this.fd.close();
    };
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
    const vs = this.valueBufferSize;
    if (values && (values.length < count * vs || (single && values.length !== vs))) {
      throw new bpf.BpfSyscallError(`${op}: value buffer of ${values.length} bytes for ${count} value(s) of ${vs}`, bpf.Errno.EINVAL);
    }
  }

  lookup(key: Buffer, out?: Buffer): Buffer | undefined {
    const value = out ?? Buffer.alloc(this.valueBufferSize);
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

  outerSlotValue(): number {
    if (this.closed) throw new bpf.BpfSyscallError(`map ${this.spec.name}: use after close`, bpf.Errno.EBADF);
    return this.fd.value;
  }

  close(): void {
    this.#closeRequested = true;
    if (this.#inflight === 0) this.fd.close();
  }
}

/** One set of batch buffers: keys, values and the kernel's resume token. */
interface BatchSlot {
  keys: Buffer;
  values: Buffer;
  capacity: number;
  // Batch tokens: hash maps use a u32 bucket index, arrays a key-sized index.
  outBatch: Buffer;
  countCell: Uint32Array;
}

class KernelCursor implements BatchCursor {
  readonly #slots: BatchSlot[];
  #current = 0;
  /** The token of the last finished call: where the next call resumes. */
  #resume: Buffer | null = null;
  #done = false;
  /** nextAsync(): the read already under way for the slot after #current. */
  #pending: Promise<bpf.BatchLookupResult> | undefined;

  constructor(
    private readonly map: KernelMap,
    batchSize: number,
  ) {
    const capacity = Math.max(1, batchSize);
    const tokenSize = Math.max(8, map.spec.keySize);
    const slot = (): BatchSlot => ({
      keys: Buffer.allocUnsafe(capacity * map.spec.keySize),
      values: Buffer.allocUnsafe(capacity * map.valueBufferSize),
      capacity,
      outBatch: Buffer.alloc(tokenSize),
      countCell: new Uint32Array(1),
    });
    this.#slots = [slot(), slot()];
  }

  #batch(slot: BatchSlot, count: number): Batch {
    return {
      count,
      keys: slot.keys.subarray(0, count * this.map.spec.keySize),
      values: slot.values.subarray(0, count * this.map.valueBufferSize),
    };
  }

  /** Records a finished call: the next one resumes from its token. */
  #advance(slot: BatchSlot, res: bpf.BatchLookupResult): void {
    this.#resume = slot.outBatch;
    if (res.done) this.#done = true;
  }

  #grow(slot: BatchSlot): void {
    slot.capacity *= 2;
    slot.keys = Buffer.allocUnsafe(slot.capacity * this.map.spec.keySize);
    slot.values = Buffer.allocUnsafe(slot.capacity * this.map.valueBufferSize);
  }

  next(): Batch | null {
    const slot = this.#slots[0];
    while (!this.#done) {
      let res: bpf.BatchLookupResult;
      try {
        res = bpf.lookupBatch(this.map.fd, this.#resume, slot.outBatch, slot.keys, slot.values, slot.capacity);
      } catch (err) {
        if (bpf.isErrno(err, bpf.Errno.ENOSPC)) {
          this.#grow(slot);
          continue;
        }
        throw err;
      }
      // The next call writes its token into outBatch while reading #resume: keep a copy.
      this.#advance(slot, res);
      this.#resume = Buffer.from(slot.outBatch);
      if (res.count > 0) return this.#batch(slot, res.count);
    }
    return null;
  }

  /**
   * Starts reading into `slot` from the current resume token, off the event loop. Rejects
   * with EBADF once the map is closed, also while holdFd() keeps its fd open for a read
   * already under way: that fd serves those reads only.
   */
  #read(slot: BatchSlot): Promise<bpf.BatchLookupResult> {
    if (this.map.closed) return Promise.reject(new bpf.BpfSyscallError(`map ${this.map.spec.name}: use after close`, bpf.Errno.EBADF));
    const release = this.map.holdFd();
    return bpf
      .lookupBatchAsync(this.map.fd, this.#resume, slot.outBatch, slot.keys, slot.values, slot.capacity, slot.countCell)
      .finally(release);
  }

  async nextAsync(): Promise<Batch | null> {
    for (;;) {
      if (this.#done && !this.#pending) return null;
      const slot = this.#slots[this.#current];
      let res: bpf.BatchLookupResult;
      try {
        res = await (this.#pending ?? this.#read(slot));
      } catch (err) {
        this.#pending = undefined;
        if (bpf.isErrno(err, bpf.Errno.ENOSPC)) {
          this.#grow(slot);
          continue;
        }
        throw err;
      }
      this.#pending = undefined;
      this.#advance(slot, res);
      // Prefetch into the other slot while the caller handles this one; not from a closed
      // map (the next call reports that, instead of a rejection nobody waits for yet).
      this.#current ^= 1;
      if (!this.#done && !this.map.closed) this.#pending = this.#read(this.#slots[this.#current]);
      if (res.count > 0) return this.#batch(slot, res.count);
    }
  }

  close(): void {
    this.#done = true;
    // A prefetch still under way finishes on its own; its result is dropped.
    this.#pending?.catch(() => undefined);
    this.#pending = undefined;
  }
}

/** The kernel backend: its maps are KernelMaps (their fd, for what hands maps to libbpf). */
export interface KernelBackend extends MapBackend {
  open(spec: MapSpec): KernelMap | undefined;
  create(spec: MapSpec): KernelMap;
}

export const kernelBackend: KernelBackend = {
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

  pin(map: BpfMap, pinPath: string): void {
    if (!(map instanceof KernelMap)) throw new bpf.BpfSyscallError(`obj pin ${pinPath}`, bpf.Errno.EINVAL, 'not a kernel map');
    bpf.objPin(map.fd, pinPath);
  },

  rename(from: string, to: string): void {
    bpf.renamePin(from, to);
  },

  effectiveMaxEntries,
  fillPlan,
  onCpu,
};

function createFd(spec: MapSpec): bpf.Fd {
  if (spec.type === MapType.ARRAY_OF_MAPS || spec.type === MapType.HASH_OF_MAPS) {
    // What the kernel says to a map-in-map create without a usable inner_map_fd.
    if (!spec.innerSpec) throw new bpf.BpfSyscallError(`map create ${spec.name}`, bpf.Errno.EBADF, 'map-in-map needs an inner map template (innerSpec)');
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
