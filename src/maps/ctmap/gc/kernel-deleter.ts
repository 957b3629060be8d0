/**
 * The GC re-check in the kernel: a ConditionalDeleter that runs bpf/ct_gc.bpf.c through
 * BPF_PROG_TEST_RUN, so each candidate is looked up, re-checked and deleted by one BPF
 * program, one syscall per batch of up to CT_GC_MAX_RECS candidates. An entry the datapath
 * refreshed between ctmapd's scan and this call is kept (Cilium #46298 loses it), and the
 * per-entry syscalls of Cilium's GC (#5048) are gone.
 *
 * Data path of a call: keys and modes are copied into ct_gc_area, an mmap()ed
 * BPF_F_MMAPABLE array shared with the program (the syscall ctx cannot carry the records:
 * see the header of bpf/ct_gc.bpf.c), the ctx carries {count, time, slot} in and counts
 * out, and statuses and deleted values are copied back out of the area (layouts of both in
 * ./layout.ts, from bpf/ct_gc.h). Nothing is allocated per call.
 *
 * Target maps are reached through slots of ARRAY_OF_MAPS maps this module creates, one
 * pair (v4/v6) per (map type, map_flags) of the targets, because map-in-map demands that
 * flags match (BPF_F_NO_COMMON_LRU with --bpf-distributed-lru). Each pair comes with its
 * own load of the object. A target keeps its slot across calls: pointing a slot at a map
 * costs an RCU grace period (~12 ms), paid once per target map, not per call.
 *
 * Needs Linux >= 5.19 (sleepable syscall programs, bpf_loop, mmapable arrays; checked on
 * 6.18) and root or CAP_BPF.
 */
import * as fs from 'node:fs';
import { bpfObjectPath } from '../../../config/paths';
import { CtmapError } from '../../../errors';
import * as bpf from '../../../sys';
import { CT_ENTRY, CT_KEY4, CT_KEY6 } from '../layout';
import { CT_GC_AREA, CT_GC_ARGS, CT_GC_MAX_RECS } from './layout';
import { ConditionalDeleter, DeleteMode, DeleteStatus } from './types';
import { BpfMap, MapType, UpdateFlag } from '../../types';
import { KernelMap } from '../../kernel';

/** Where `make -C bpf` puts the object. */
export const CT_GC_OBJECT = bpfObjectPath('ct_gc.bpf.o');

/** Offsets into the records area and the ctx (bpf/ct_gc.h). */
const AREA = CT_GC_AREA.fields;
const ARGS = CT_GC_ARGS.fields;

/**
 * Target maps one outer map can hold at once (4 global CT maps per family, plus
 * per-cluster ones). Beyond that the least recently used target gives up its slot.
 */
export const CT_GC_SLOTS = 1024;

/** BPF_F_MMAPABLE (uapi linux/bpf.h): the area is mapped into this process. */
const BPF_F_MMAPABLE = 1 << 10;

const VALUE_SIZE = CT_ENTRY.size;

export interface KernelConditionalDeleterOptions {
  /** The compiled BPF object; default CT_GC_OBJECT. */
  objectPath?: string;
  /**
   * (type, flags) of the CT maps to load the program for right away, so that a kernel that
   * refuses it fails the constructor, not the first GC pass. Others load on first use.
   * Default: LRU_HASH without flags.
   */
  preload?: readonly { type: number; flags: number }[];
}

/** One family's half of an Instance: its program, its outer map and who holds which slot. */
interface FamilyPart {
  readonly keySize: number;
  readonly prog: bpf.BpfProgram;
  readonly slots: SlotTable;
}

/** The object loaded for one (type, flags) of target maps. */
interface Instance {
  readonly obj: bpf.BpfObject;
  readonly outers: bpf.Fd[];
  readonly v4: FamilyPart;
  readonly v6: FamilyPart;
}

/**
 * Which target map sits in which slot of one outer map. Map order is use order: the first
 * entry is the least recently used, evicted when every slot is taken.
 */
class SlotTable {
  readonly #byMap = new Map<KernelMap, number>();
  readonly #free: number[] = [];
  readonly #key = Buffer.alloc(4);
  readonly #value = Buffer.alloc(4);

  constructor(
    private readonly outer: bpf.Fd,
    size: number,
  ) {
    for (let s = size - 1; s >= 0; s--) this.#free.push(s);
  }

  /** The slot holding `map`; points a free (or the least recently used) slot at it first. */
  slotFor(map: KernelMap): number {
    const held = this.#byMap.get(map);
    if (held !== undefined) {
      this.#byMap.delete(map);
      this.#byMap.set(map, held);
      return held;
    }
    let slot = this.#free.pop();
    if (slot === undefined) {
      const [oldest, s] = this.#byMap.entries().next().value as [KernelMap, number];
      this.#byMap.delete(oldest);
      slot = s;
    }
    this.#key.writeUInt32LE(slot, 0);
    this.#value.writeUInt32LE(map.fd.value, 0);
    try {
      // The outer map takes its own reference: the slot stays valid even if `map` closes.
      bpf.update(this.outer, this.#key, this.#value, UpdateFlag.ANY);
    } catch (err) {
      this.#free.push(slot);
      throw err;
    }
    this.#byMap.set(map, slot);
    return slot;
  }

  /** Empties the slots of closed maps, so the outer map no longer keeps them alive. */
  releaseClosed(): void {
    for (const [map, slot] of this.#byMap) {
      if (!map.closed) continue;
      this.#byMap.delete(map);
      this.#key.writeUInt32LE(slot, 0);
      bpf.deleteElem(this.outer, this.#key);
      this.#free.push(slot);
    }
  }
}

/**
 * In-kernel compare-and-delete for kernel-backend CT maps (LRU_HASH or HASH, key 14 or 38
 * bytes, value 56). Single-threaded use only, like the rest of the daemon: calls share one
 * records area. close() is idempotent and releases every kernel object this created.
 */
export class KernelConditionalDeleter implements ConditionalDeleter {
  readonly #objectPath: string;
  readonly #areaFd: bpf.Fd;
  readonly #area: bpf.MappedMap;
  readonly #run: bpf.TestRunContext;
  readonly #instances = new Map<string, Instance>();
  /** Target map -> the family part that serves it (its type and flags decide). */
  readonly #targets = new Map<KernelMap, FamilyPart>();
  #closed = false;
  #failedDeletes = 0;
  #lastDeleteErrno = 0;

  /**
   * Creates the records area and loads the program for `opts.preload`. Throws CtmapError
   * failed-precondition when the object file is missing ("run make -C bpf"), does not
   * match this build, or the verifier rejects the program (its log in the message);
   * BpfSyscallError when the kernel refuses a map (permission-denied without CAP_BPF).
   */
  constructor(opts: KernelConditionalDeleterOptions = {}) {
    this.#objectPath = opts.objectPath ?? CT_GC_OBJECT;
    if (!fs.existsSync(this.#objectPath)) {
      throw new CtmapError('failed-precondition', `in-kernel GC: ${this.#objectPath} is missing (run make -C bpf)`);
    }
    const undo: { close(): void }[] = [];
    try {
      this.#areaFd = bpf.createMap({
        type: MapType.ARRAY,
        name: 'ct_gc_area',
        keySize: 4,
        valueSize: CT_GC_AREA.size,
        maxEntries: 1,
        flags: BPF_F_MMAPABLE,
      });
      undo.push(this.#areaFd);
      this.#area = bpf.MappedMap.map(this.#areaFd, CT_GC_AREA.size);
      undo.push(this.#area);
      this.#run = new bpf.TestRunContext(CT_GC_ARGS.size);
      undo.push(this.#run);
      for (const p of opts.preload ?? [{ type: MapType.LRU_HASH, flags: 0 }]) this.#instance(p.type, p.flags);
    } catch (err) {
      for (const inst of this.#instances.values()) closeInstance(inst);
      for (const u of undo.reverse()) u.close();
      throw err;
    }
  }

  /** Deletes that failed in the kernel for another reason than ENOENT (reported REFRESHED). */
  get failedDeletes(): number {
    return this.#failedDeletes;
  }

  /** errno of the last such failure, 0 if none. */
  get lastDeleteErrno(): number {
    return this.#lastDeleteErrno;
  }

  /**
   * ConditionalDeleter.deleteIf, in the kernel: statuses for all `count` candidates, the
   * value at deletion for DELETED ones (other value slots are left untouched). Splits
   * calls larger than CT_GC_MAX_RECS into several runs. Throws CtmapError:
   * invalid-argument for short buffers, a bad mode or time; failed-precondition for a map
   * that is not a kernel CT map; unavailable after close(); BpfSyscallError when the
   * kernel fails a run (runs before it have taken effect and their statuses are written).
   */
  deleteIf(map: BpfMap, keys: Buffer, count: number, modes: Uint8Array, time: number, status: Uint8Array, values: Buffer): void {
    if (this.#closed) throw new CtmapError('unavailable', 'in-kernel GC: deleter closed');
    if (!Number.isInteger(count) || count < 0) throw invalid('count', `${count} is not a count`);
    if (!Number.isInteger(time) || time < 0 || time > 0xffffffff) throw invalid('time', `${time} is not a u32`);
    if (count === 0) return;
    const fam = this.#familyFor(map);
    const ks = fam.keySize;
    if (keys.length < count * ks) throw invalid('keys', `${keys.length} bytes for ${count} keys of ${ks}`);
    if (modes.length < count) throw invalid('modes', `${modes.length} for ${count} candidates`);
    if (status.length < count) throw invalid('status', `${status.length} for ${count} candidates`);
    if (values.length < count * VALUE_SIZE) throw invalid('values', `${values.length} bytes for ${count} values`);
    // Validated before the first run, so a bad request deletes nothing.
    for (let i = 0; i < count; i++) {
      if (modes[i] !== DeleteMode.EXPIRED_BEFORE && modes[i] !== DeleteMode.ALWAYS) throw invalid(`modes[${i}]`, `${modes[i]} is not a DeleteMode`);
    }
    this.#releaseClosed();
    const slot = fam.slots.slotFor(map as KernelMap);

    const area = this.#area.buffer;
    const args = this.#run.ctx;
    for (let off = 0; off < count; off += CT_GC_MAX_RECS) {
      const n = Math.min(CT_GC_MAX_RECS, count - off);
      keys.copy(area, AREA.keys.offset, off * ks, (off + n) * ks);
      area.set(modes.subarray(off, off + n), AREA.mode.offset);
      args.writeUInt32LE(n, ARGS.count.offset);
      args.writeUInt32LE(time, ARGS.time.offset);
      args.writeUInt32LE(slot, ARGS.slot.offset);
      const ret = fam.prog.testRun(this.#run);
      if (ret !== 0) throw new bpf.BpfSyscallError(`in-kernel GC: ${fam.prog.name} on slot ${slot}`, -ret, programErrorHint(ret));
      this.#collect(off, n, status, values);
      const failed = args.readUInt32LE(ARGS.failed.offset);
      if (failed > 0) {
        this.#failedDeletes += failed;
        this.#lastDeleteErrno = -args.readInt32LE(ARGS.first_err.offset);
      }
    }
  }

  /** Copies statuses, and values of the DELETED records in runs, out of the area. */
  #collect(off: number, n: number, status: Uint8Array, values: Buffer): void {
    const area = this.#area.buffer;
    const st = area.subarray(AREA.status.offset, AREA.status.offset + n);
    status.set(st, off);
    // One copy per run of consecutive deletions: a pass that deletes most candidates
    // copies in a few large pieces, and values of kept entries are not overwritten.
    let i = 0;
    while (i < n) {
      if (st[i] !== DeleteStatus.DELETED) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < n && st[j] === DeleteStatus.DELETED) j++;
      area.copy(values, (off + i) * VALUE_SIZE, AREA.values.offset + i * VALUE_SIZE, AREA.values.offset + j * VALUE_SIZE);
      i = j;
    }
  }

  /** The family part for `map`, loading an instance for its (type, flags) when needed. */
  #familyFor(map: BpfMap): FamilyPart {
    if (!(map instanceof KernelMap)) {
      throw new CtmapError('failed-precondition', `in-kernel GC: map ${map.spec.name} is not a kernel map (backend ${map.backend})`);
    }
    if (map.closed) throw new CtmapError('failed-precondition', `in-kernel GC: map ${map.spec.name} is closed`);
    const known = this.#targets.get(map);
    if (known) return known;
    // The live attributes decide, not the spec: they are what map-in-map compares.
    const info = map.info();
    if (info.type !== MapType.LRU_HASH && info.type !== MapType.HASH) {
      throw new CtmapError('failed-precondition', `in-kernel GC: map ${map.spec.name} has type ${info.type}, not a hash or LRU hash`);
    }
    if (info.valueSize !== VALUE_SIZE || (info.keySize !== CT_KEY4.size && info.keySize !== CT_KEY6.size)) {
      throw new CtmapError(
        'failed-precondition',
        `in-kernel GC: map ${map.spec.name} has key/value size ${info.keySize}/${info.valueSize}, not a CT map`,
      );
    }
    const inst = this.#instance(info.type, info.flags);
    const fam = info.keySize === CT_KEY4.size ? inst.v4 : inst.v6;
    this.#targets.set(map, fam);
    return fam;
  }

  #releaseClosed(): void {
    for (const [map, fam] of this.#targets) {
      if (!map.closed) continue;
      fam.slots.releaseClosed();
      this.#targets.delete(map);
    }
  }

  /** The loaded object for targets of this (type, flags); opened and loaded on first use. */
  #instance(type: number, flags: number): Instance {
    const id = `${type}/${flags}`;
    const have = this.#instances.get(id);
    if (have) return have;
    const outers: bpf.Fd[] = [];
    let obj: bpf.BpfObject | undefined;
    try {
      for (const ks of [CT_KEY4.size, CT_KEY6.size]) {
        // The inner template only lends its shape to the outer map; it is closed at once.
        const template = bpf.createMap({ type, name: `ct_gc_tmpl${ks}`, keySize: ks, valueSize: VALUE_SIZE, maxEntries: 1, flags });
        try {
          outers.push(
            bpf.createMap({
              type: MapType.ARRAY_OF_MAPS,
              name: `ct_gc_outer${ks === CT_KEY4.size ? 4 : 6}`,
              keySize: 4,
              valueSize: 4,
              maxEntries: CT_GC_SLOTS,
              flags: 0,
              innerMapFd: template,
            }),
          );
        } finally {
          template.close();
        }
      }
      obj = bpf.BpfObject.open(this.#objectPath);
      const areaMap = obj.map('ct_gc_area');
      if (areaMap.valueSize !== CT_GC_AREA.size) {
        throw new CtmapError(
          'failed-precondition',
          `in-kernel GC: ${this.#objectPath} has a ${areaMap.valueSize}-byte area, this ctmapd expects ${CT_GC_AREA.size} (rebuild: make -C bpf)`,
        );
      }
      areaMap.reuseFd(this.#areaFd);
      obj.map('ct_gc_outer4').reuseFd(outers[0]);
      obj.map('ct_gc_outer6').reuseFd(outers[1]);
      const p4 = obj.program('ct_gc4');
      const p6 = obj.program('ct_gc6');
      try {
        obj.load([p4, p6]);
      } catch (err) {
        // A verifier rejection comes back as EACCES or EINVAL: that is this kernel lacking
        // what the program needs, not a permission problem (EPERM stays what it is).
        if (err instanceof bpf.BpfSyscallError && (err.errno === bpf.Errno.EACCES || err.errno === bpf.Errno.EINVAL)) {
          throw new CtmapError('failed-precondition', `in-kernel GC: the kernel refused ${this.#objectPath}: ${err.message}`, { cause: err });
        }
        throw err;
      }
      const inst: Instance = {
        obj,
        outers,
        v4: { keySize: CT_KEY4.size, prog: p4, slots: new SlotTable(outers[0], CT_GC_SLOTS) },
        v6: { keySize: CT_KEY6.size, prog: p6, slots: new SlotTable(outers[1], CT_GC_SLOTS) },
      };
      this.#instances.set(id, inst);
      return inst;
    } catch (err) {
      obj?.close();
      for (const o of outers) o.close();
      throw err;
    }
  }

  /**
   * Releases the programs, the outer maps (and with them their references to target
   * maps), the area and its mapping. Idempotent; deleteIf afterwards throws unavailable.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const inst of this.#instances.values()) closeInstance(inst);
    this.#instances.clear();
    this.#targets.clear();
    this.#area.close();
    this.#areaFd.close();
    this.#run.close();
  }
}

function closeInstance(inst: Instance): void {
  inst.obj.close();
  for (const o of inst.outers) o.close();
}

function invalid(field: string, problem: string): CtmapError {
  return new CtmapError('invalid-argument', `in-kernel GC: ${field}: ${problem}`, { field });
}

/** What the program's negative return values mean (gc_run in bpf/ct_gc.bpf.c). */
function programErrorHint(ret: number): string {
  switch (-ret) {
    case bpf.Errno.EBADF:
      return 'the outer map slot holds no map';
    case bpf.Errno.E2BIG:
      return 'more records than the area holds';
    default:
      return 'unexpected program return';
  }
}
