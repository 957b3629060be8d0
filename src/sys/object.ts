/**
 * BPF objects and programs over the part of libbpf's object API ctmapd needs (open an ELF
 * object, hand it maps the daemon created, load it, run a program with BPF_PROG_TEST_RUN)
 * and mmap() of BPF_F_MMAPABLE maps; the bindings are in ./native.ts.
 *
 * libbpf >= 1.0 conventions: pointer-returning APIs return NULL and set errno (lastErrno());
 * int-returning ones return -errno (check()). Memory libbpf or the kernel reads after the call
 * that handed it over (log buffers, the test-run ctx whose address sits inside the opts
 * struct) comes from koffi.alloc: a Node Buffer passed as a pointer is only valid during
 * the call it is passed to.
 */
import koffi from 'koffi';
import { BpfSyscallError, Errno, check } from './errors';
import type { Fd } from './fd';
import { Ptr, TEST_RUN_OPTS, lastErrno, native } from './native';




/**
 * struct __sk_buff (uapi linux/bpf.h, 192 bytes since Linux 5.x): the test-run ctx of a
 * SEC("tc") program. The kernel takes from it only `mark`, `priority`, `ifindex`, `cb`,
 * `tstamp`, `wire_len`, `gso_*` and `hwtstamp`; every other byte must be zero (EINVAL).
 */
export const SK_BUFF_CTX = { size: 192, markOffset: 8 } as const;

const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x1;
const MAP_FAILED = (1n << 64n) - 1n;

/** Verifier log kept per program for a failed load (the tail is what explains it). */
const LOG_SIZE = 1 << 20;
const LOG_TAIL = 4000;

let openObjects = 0;

/** BpfObjects and BPF-side memory (mmaps, test-run contexts) not yet closed: leak checks. */
export function openObjectCount(): number {
  return openObjects;
}

/** Unmanaged memory with a Buffer view; `buffer` must not be used after free(). */
class NativeMemory {
  #ptr: Ptr | null;
  readonly buffer: Buffer;

  constructor(readonly size: number) {
    this.#ptr = koffi.alloc('uint8_t', size) as Ptr;
    this.buffer = Buffer.from(koffi.view(this.#ptr, size));
    this.buffer.fill(0);
  }

  get ptr(): Ptr {
    if (this.#ptr === null) throw new BpfSyscallError('native memory: use after free', Errno.EFAULT);
    return this.#ptr;
  }

  free(): void {
    if (this.#ptr === null) return;
    koffi.free(this.#ptr);
    this.#ptr = null;
  }
}

/** A map of an opened, possibly not yet loaded, BpfObject (owned by the object). */
export class BpfObjectMap {
  constructor(
    private readonly obj: BpfObject,
    readonly name: string,
    private readonly ptr: Ptr,
  ) {}

  get type(): number {
    this.obj.checkOpen();
    return native.mapType(this.ptr);
  }
  get keySize(): number {
    this.obj.checkOpen();
    return native.mapKeySize(this.ptr);
  }
  get valueSize(): number {
    this.obj.checkOpen();
    return native.mapValueSize(this.ptr);
  }
  get maxEntries(): number {
    this.obj.checkOpen();
    return native.mapMaxEntries(this.ptr);
  }
  get flags(): number {
    this.obj.checkOpen();
    return native.mapFlags(this.ptr);
  }

  /**
   * bpf_map__reuse_fd: before load, makes the object use this existing map instead of
   * creating one (libbpf dups the fd, so `fd` stays the caller's to close). The program is
   * then verified against the given map's attributes. Throws BpfSyscallError.
   */
  reuseFd(fd: Fd): void {
    this.obj.checkOpen();
    check(`bpf map reuse fd ${this.name}`, native.mapReuseFd(this.ptr, fd.value));
  }

  /**
   * bpf_map__set_initial_value: before load, the contents of a global-data map (the
   * object's `.rodata`, found as map(".rodata")); libbpf copies `data` at once. Throws
   * BpfSyscallError EINVAL when the size differs from the section's, EBUSY after load.
   */
  setInitialValue(data: Buffer): void {
    this.obj.checkOpen();
    check(`bpf map set initial value ${this.name}`, native.mapSetInitialValue(this.ptr, data, data.length));
  }

  /** bpf_map__set_max_entries: before load, the size of a map the object will create. */
  setMaxEntries(maxEntries: number): void {
    this.obj.checkOpen();
    check(`bpf map set max entries ${this.name}`, native.mapSetMaxEntries(this.ptr, maxEntries));
  }

  /** The map's fd after load (owned by the object: do not close it). Throws before load. */
  get fd(): number {
    this.obj.checkOpen();
    return check(`bpf map fd ${this.name}`, native.mapFd(this.ptr));
  }
}

/** A program of a BpfObject. Its fd belongs to the object and dies with it. */
export class BpfProgram {
  constructor(
    private readonly obj: BpfObject,
    readonly name: string,
    readonly ptr: Ptr,
  ) {}

  /** Before load: whether this program is loaded with the object (default: yes). */
  setAutoload(on: boolean): void {
    this.obj.checkOpen();
    check(`bpf program set autoload ${this.name}`, native.programSetAutoload(this.ptr, on));
  }

  /** The program fd after load. Throws BpfSyscallError before load or after close. */
  get fd(): number {
    this.obj.checkOpen();
    return check(`bpf program fd ${this.name}`, native.programFd(this.ptr));
  }

  /**
   * The program's kernel id (struct bpf_prog_info.id), as bpftool names it
   * (`bpftool prog dump xlated id N`). Throws BpfSyscallError before load.
   */
  get id(): number {
    const info = Buffer.alloc(8); // struct bpf_prog_info: u32 type, u32 id, ...
    check(`bpf prog info ${this.name}`, native.objGetInfoByFd(this.fd, info, new Uint32Array([info.length])));
    return info.readUInt32LE(4);
  }

  /**
   * BPF_PROG_TEST_RUN with `run.ctx` as ctx_in (for BPF_PROG_TYPE_SYSCALL the kernel copies
   * the ctx back there, ctx_out being refused; for SEC("tc") it is a struct __sk_buff,
   * SK_BUFF_CTX, only read) and, for packet programs, the packet set with run.setPacket as
   * data_in, `run.repeat` times (run.duration then has the kernel's timing). Returns the program's return value as a signed 32-bit
   * number. Throws BpfSyscallError when the syscall fails (EINVAL: ctx too small for what
   * the program reads, or larger than the kernel's U16_MAX limit; a tc program's packet
   * shorter than an Ethernet header).
   */
  testRun(run: TestRunContext): number {
    const fd = this.fd;
    check(`bpf prog test run ${this.name}`, native.testRun(fd, run.optsPtr));
    return run.opts.readInt32LE(TEST_RUN_OPTS.retval);
  }
}

/**
 * Reusable BPF_PROG_TEST_RUN arguments: the libbpf opts struct, a ctx of `ctxSize` bytes
 * and room for a packet of up to `dataCapacity` bytes (data_in, for packet programs such
 * as SEC("tc")), all in one unmanaged allocation so that the pointers stored in the opts
 * stay valid; `ctx` is the caller's view to fill before and read after a run, `data` the
 * view to write a packet into (then setPacketLength). close() is idempotent; `ctx` and
 * `data` must not be touched afterwards.
 */
export class TestRunContext {
  readonly #mem: NativeMemory;
  #closed = false;
  readonly ctx: Buffer;
  readonly data: Buffer;
  readonly opts: Buffer;

  constructor(
    readonly ctxSize: number,
    readonly dataCapacity = 0,
  ) {
    // The syscall program ctx limit; larger sizes fail in the kernel with EINVAL anyway.
    if (!Number.isInteger(ctxSize) || ctxSize < 0 || ctxSize > 0xffff) {
      throw new BpfSyscallError(`test run ctx of ${ctxSize} bytes (at most 65535)`, Errno.EINVAL);
    }
    // data_size_in is a u32; the kernel refuses packets beyond a page minus headroom anyway.
    if (!Number.isInteger(dataCapacity) || dataCapacity < 0 || dataCapacity > 0xffff) {
      throw new BpfSyscallError(`test run packet of ${dataCapacity} bytes (at most 65535)`, Errno.EINVAL);
    }
    this.#mem = new NativeMemory(TEST_RUN_OPTS.size + ctxSize + dataCapacity);
    this.opts = this.#mem.buffer.subarray(0, TEST_RUN_OPTS.size);
    this.ctx = this.#mem.buffer.subarray(TEST_RUN_OPTS.size, TEST_RUN_OPTS.size + ctxSize);
    this.data = this.#mem.buffer.subarray(TEST_RUN_OPTS.size + ctxSize);
    this.opts.writeBigUInt64LE(BigInt(TEST_RUN_OPTS.size), 0);
    if (ctxSize > 0) this.opts.writeBigUInt64LE(this.#mem.ptr + BigInt(TEST_RUN_OPTS.size), TEST_RUN_OPTS.ctx_in);
    this.opts.writeUInt32LE(ctxSize, TEST_RUN_OPTS.ctx_size_in);
    if (dataCapacity > 0) this.opts.writeBigUInt64LE(this.#mem.ptr + BigInt(TEST_RUN_OPTS.size + ctxSize), TEST_RUN_OPTS.data_in);
    openObjects++;
  }

  /** How many bytes of `data` the next run passes as the packet (data_size_in). */
  setPacketLength(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.dataCapacity) {
      throw new BpfSyscallError(`test run packet of ${length} bytes (capacity ${this.dataCapacity})`, Errno.EINVAL);
    }
    this.opts.writeUInt32LE(length, TEST_RUN_OPTS.data_size_in);
    // libbpf writes the last run's output size back into the opts; left there, it would cap
    // the next run's output and a longer packet would fail with ENOSPC.
    this.opts.writeUInt32LE(0, TEST_RUN_OPTS.data_size_out);
  }

  /**
   * How many times the next runs execute the program back to back (BPF_PROG_TEST_RUN
   * `repeat`; 0 and 1 both mean once). The same packet and ctx go in every time, so a
   * program that writes state sees its own writes from the second run on.
   */
  set repeat(n: number) {
    if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw new BpfSyscallError(`test run repeat ${n}`, Errno.EINVAL);
    this.opts.writeInt32LE(n, TEST_RUN_OPTS.repeat);
  }

  get repeat(): number {
    return this.opts.readInt32LE(TEST_RUN_OPTS.repeat);
  }

  /**
   * The kernel's timing of the last run: nanoseconds per repetition, averaged (the kernel
   * divides the time of the whole loop by `repeat`; time spent rescheduling excluded),
   * capped at 2^32-1. It includes the kernel's loop overhead (bh disable/enable, the
   * ktime reads), so compare it with an empty program's figure taken the same way.
   */
  get duration(): number {
    return this.opts.readUInt32LE(TEST_RUN_OPTS.duration);
  }

  /** Copies `packet` into `data` and sets its length. */
  setPacket(packet: Buffer): void {
    this.setPacketLength(packet.length);
    packet.copy(this.data);
  }

  get optsPtr(): Ptr {
    return this.#mem.ptr;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#mem.free();
    openObjects--;
  }
}

/**
 * A libbpf bpf_object: open -> configure (reuseFd, setAutoload) -> load -> run, closed in
 * one place. close() is idempotent and closes every fd the object holds (its programs and
 * the maps it created or dup'ed); maps passed to reuseFd stay open for their owner.
 */
export class BpfObject {
  #ptr: Ptr | null;
  readonly #logs: NativeMemory[] = [];

  private constructor(
    readonly path: string,
    ptr: Ptr,
  ) {
    this.#ptr = ptr;
    openObjects++;
  }

  /**
   * bpf_object__open_file: parses the ELF object; creates nothing in the kernel yet.
   * Throws BpfSyscallError with the errno (ENOENT: no such file; EINVAL/ENOEXEC: not a
   * BPF object libbpf understands).
   */
  static open(path: string): BpfObject {
    const ptr = native.objectOpenFile(path, null);
    if (ptr === null || ptr === 0n) throw new BpfSyscallError(`bpf object open ${path}`, lastErrno());
    return new BpfObject(path, ptr);
  }

  /** Throws unless the object is open (for the map and program handles). */
  checkOpen(): Ptr {
    if (this.#ptr === null) throw new BpfSyscallError(`bpf object ${this.path}: use after close`, Errno.EBADF);
    return this.#ptr;
  }

  get closed(): boolean {
    return this.#ptr === null;
  }

  /** The map named `name` (the C variable name). Throws not-found when there is none. */
  map(name: string): BpfObjectMap {
    const ptr = native.findMap(this.checkOpen(), name);
    if (ptr === null || ptr === 0n) throw new BpfSyscallError(`bpf object ${this.path}: map ${name}`, Errno.ENOENT);
    return new BpfObjectMap(this, name, ptr);
  }

  /** The program named `name` (the C function name). Throws not-found when there is none. */
  program(name: string): BpfProgram {
    const ptr = native.findProgram(this.checkOpen(), name);
    if (ptr === null || ptr === 0n) throw new BpfSyscallError(`bpf object ${this.path}: program ${name}`, Errno.ENOENT);
    return new BpfProgram(this, name, ptr);
  }

  /**
   * bpf_object__load: creates the maps not reused, loads and verifies the programs set to
   * autoload. On a verifier rejection the error message ends with the tail of the
   * verifier log of `logPrograms` (libbpf requests the log only when a load fails).
   * Throws BpfSyscallError: EACCES or EINVAL from the verifier (note: EACCES maps to the
   * permission-denied code; callers that know better re-code it), EPERM without CAP_BPF.
   */
  load(logPrograms: readonly BpfProgram[] = []): void {
    const obj = this.checkOpen();
    const logs = logPrograms.map((p) => {
      const mem = new NativeMemory(LOG_SIZE);
      this.#logs.push(mem);
      check(`bpf program set log buf ${p.name}`, native.programSetLogBuf(p.ptr, mem.ptr, LOG_SIZE));
      return { name: p.name, mem };
    });
    const ret = native.objectLoad(obj);
    try {
      if (ret < 0) {
        const log = logs
          .map(({ name, mem }) => {
            const nul = mem.buffer.indexOf(0);
            const text = mem.buffer.subarray(0, nul < 0 ? LOG_SIZE : nul).toString('utf8').trimEnd();
            return text ? `\n--- verifier log of ${name} (tail) ---\n${text.slice(-LOG_TAIL)}` : '';
          })
          .join('');
        throw new BpfSyscallError(`bpf object load ${this.path}${log}`, -ret);
      }
    } finally {
      // libbpf forgets the buffers once load returns; free them now rather than at close.
      for (const { mem } of logs) mem.free();
    }
  }

  close(): void {
    if (this.#ptr === null) return;
    native.objectClose(this.#ptr);
    this.#ptr = null;
    for (const mem of this.#logs) mem.free();
    openObjects--;
  }
}

/**
 * A BPF_F_MMAPABLE array map mapped into this process (MAP_SHARED): `buffer` reads and
 * writes the map's values directly, with no syscall. close() unmaps (idempotent); the
 * buffer must not be touched afterwards (it would fault). The mapping keeps the map alive
 * on its own, so the map's fd may be closed before or after.
 */
export class MappedMap {
  #addr: Ptr | null;
  readonly buffer: Buffer;

  private constructor(
    addr: Ptr,
    readonly length: number,
  ) {
    this.#addr = addr;
    this.buffer = Buffer.from(koffi.view(addr, length));
    openObjects++;
  }

  /**
   * mmap()s the first `length` bytes of the map's value area (an ARRAY map created with
   * BPF_F_MMAPABLE; Linux >= 5.5). Throws BpfSyscallError: EINVAL for a map that is not
   * mmapable or a length beyond its values, EPERM for a frozen/read-only map.
   */
  static map(fd: Fd, length: number, writable = true): MappedMap {
    const prot = PROT_READ | (writable ? PROT_WRITE : 0);
    const addr = native.mmap(null, length, prot, MAP_SHARED, fd.value, 0);
    if (addr === null || addr === MAP_FAILED) throw new BpfSyscallError(`mmap ${fd.what}`, lastErrno());
    return new MappedMap(addr, length);
  }

  get closed(): boolean {
    return this.#addr === null;
  }

  close(): void {
    if (this.#addr === null) return;
    native.munmap(this.#addr, this.length);
    this.#addr = null;
    openObjects--;
  }
}
