/**
 * Typed, errno-checked wrappers over libbpf. Every function throws BpfSyscallError on
 * failure (see errors.ts for the errno -> code mapping) except where "absent" is a normal
 * answer (lookup, delete, getNextKey, batch end), which is returned instead.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BatchError, BpfSyscallError, Errno, check } from './errors';
import { Fd } from './fd';
import { batchOpts, lastErrno, mapCreateOpts, native } from './native';

export { BatchError, BpfSyscallError, Errno, isErrno } from './errors';
export { Fd, openFdCount } from './fd';


export interface CreateMapParams {
  type: number;
  name: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  /** ARRAY_OF_MAPS / HASH_OF_MAPS: an fd of a map that looks like the inner maps. */
  innerMapFd?: Fd;
}

/** BPF_MAP_CREATE. The kernel keeps at most 15 characters of the name. */
export function createMap(p: CreateMapParams): Fd {
  const opts = mapCreateOpts(p.flags, p.innerMapFd?.value ?? 0);
  const fd = check(`map create ${p.name}`, native.mapCreate(p.type, p.name, p.keySize, p.valueSize, p.maxEntries, opts));
  return new Fd(fd, `map ${p.name}`);
}

/** BPF_OBJ_GET: opens a pinned object. Returns undefined when nothing is pinned at path. */
export function objGet(pinPath: string): Fd | undefined {
  const ret = native.objGet(pinPath);
  if (ret === -Errno.ENOENT) return undefined;
  return new Fd(check(`obj get ${pinPath}`, ret), pinPath);
}

/** BPF_OBJ_PIN, creating parent directories (which must be on bpffs). */
export function objPin(fd: Fd, pinPath: string): void {
  fs.mkdirSync(path.dirname(pinPath), { recursive: true, mode: 0o755 });
  check(`obj pin ${pinPath}`, native.objPin(fd.value, pinPath));
}

/** Removes a pin; false when nothing was pinned there. */
export function unpin(pinPath: string): boolean {
  try {
    fs.unlinkSync(pinPath);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/**
 * Moves a pin with rename(2), replacing whatever is pinned at `to` in one atomic step (bpffs
 * supports rename within one mount): a reader of `to` sees the old object or the new one,
 * never nothing. Throws BpfSyscallError ENOENT when nothing is pinned at `from`.
 */
export function renamePin(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new BpfSyscallError(`rename pin ${from} -> ${to}`, -(e.errno ?? -Errno.EINVAL), e.code);
  }
}

// cpu_set_t of glibc: 1024 bits.
const CPU_SET_BYTES = 128;

/**
 * The CPUs the calling thread may run on (sched_getaffinity(0)), ascending. Throws
 * BpfSyscallError with the errno on failure.
 */
export function threadAffinity(): number[] {
  const mask = Buffer.alloc(CPU_SET_BYTES);
  if (native.schedGetaffinity(0, CPU_SET_BYTES, mask) < 0) throw new BpfSyscallError('sched_getaffinity', lastErrno());
  const cpus: number[] = [];
  for (let i = 0; i < CPU_SET_BYTES * 8; i++) if (mask[i >> 3] & (1 << (i & 7))) cpus.push(i);
  return cpus;
}

/**
 * Restricts the calling thread (for Node: the JS thread, not the libuv pool) to `cpus`
 * (sched_setaffinity(0)). Per-CPU kernel state, such as an LRU map's per-CPU free lists,
 * is then that of those CPUs. Throws BpfSyscallError (EINVAL: no allowed CPU in the set).
 */
export function setThreadAffinity(cpus: readonly number[]): void {
  const mask = Buffer.alloc(CPU_SET_BYTES);
  for (const c of cpus) {
    if (!Number.isInteger(c) || c < 0 || c >= CPU_SET_BYTES * 8) throw new BpfSyscallError(`sched_setaffinity cpu ${c}`, Errno.EINVAL);
    mask[c >> 3] |= 1 << (c & 7);
  }
  if (native.schedSetaffinity(0, CPU_SET_BYTES, mask) < 0) throw new BpfSyscallError(`sched_setaffinity [${cpus.join(',')}]`, lastErrno());
}

export interface MapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

/** BPF_OBJ_GET_INFO_BY_FD for a map (struct bpf_map_info, first 40 bytes used). */
export function mapInfo(fd: Fd): MapInfo {
  const info = Buffer.alloc(96);
  const len = new Uint32Array([info.length]);
  check('map info', native.objGetInfoByFd(fd.value, info, len));
  const nameBytes = info.subarray(24, 40);
  const nul = nameBytes.indexOf(0);
  return {
    type: info.readUInt32LE(0),
    id: info.readUInt32LE(4),
    keySize: info.readUInt32LE(8),
    valueSize: info.readUInt32LE(12),
    maxEntries: info.readUInt32LE(16),
    flags: info.readUInt32LE(20),
    name: nameBytes.subarray(0, nul < 0 ? 16 : nul).toString('latin1'),
  };
}

/** BPF_MAP_LOOKUP_ELEM into `value`; false when the key is absent. */
export function lookup(fd: Fd, key: Buffer, value: Buffer): boolean {
  const ret = native.lookup(fd.value, key, value);
  if (ret === -Errno.ENOENT) return false;
  check('map lookup', ret);
  return true;
}

/** BPF_MAP_UPDATE_ELEM with BPF_ANY / BPF_NOEXIST / BPF_EXIST. */
export function update(fd: Fd, key: Buffer, value: Buffer, flags: number): void {
  check('map update', native.update(fd.value, key, value, flags), undefined);
}

/** BPF_MAP_DELETE_ELEM; false when the key was absent. */
export function deleteElem(fd: Fd, key: Buffer): boolean {
  const ret = native.delete(fd.value, key);
  if (ret === -Errno.ENOENT) return false;
  check('map delete', ret);
  return true;
}

/** BPF_MAP_GET_NEXT_KEY; key null asks for the first key. False at the end. */
export function getNextKey(fd: Fd, key: Buffer | null, next: Buffer): boolean {
  const ret = native.getNextKey(fd.value, key, next);
  if (ret === -Errno.ENOENT) return false;
  check('map get next key', ret);
  return true;
}

export interface BatchLookupResult {
  /** Entries written to keys/values. */
  count: number;
  /** True when the map has no more entries after these. */
  done: boolean;
}

const countCell = new Uint32Array(1);

/**
 * BPF_MAP_LOOKUP_BATCH (or LOOKUP_AND_DELETE_BATCH). `inBatch` null starts at the
 * beginning; `outBatch` receives the token for the next call (copy it to inBatch).
 * ENOENT is the normal end of iteration and is reported as done, possibly with entries.
 * ENOSPC (a hash bucket holds more entries than `capacity`) is thrown with the kernel's
 * "batch too small" meaning, so the caller can grow its buffers and retry.
 */
export function lookupBatch(
  fd: Fd,
  inBatch: Buffer | null,
  outBatch: Buffer,
  keys: Buffer,
  values: Buffer,
  capacity: number,
  andDelete = false,
): BatchLookupResult {
  countCell[0] = capacity;
  const fn = andDelete ? native.lookupAndDeleteBatch : native.lookupBatch;
  const ret = fn(fd.value, inBatch, outBatch, keys, values, countCell, null);
  return lookupBatchResult(andDelete ? 'map lookup and delete batch' : 'map lookup batch', ret, countCell[0]);
}

/** What a lookup batch call's return value means (see lookupBatch); throws for errors. */
function lookupBatchResult(op: string, ret: number, count: number): BatchLookupResult {
  if (ret === -Errno.ENOENT) return { count, done: true };
  if (ret === -Errno.ENOSPC) throw new BpfSyscallError(op, Errno.ENOSPC, 'batch too small?');
  check(op, ret);
  return { count, done: false };
}

/**
 * lookupBatch on a libuv pool thread, so the event loop can encode and send the previous
 * batch meanwhile. `countCell` is the caller's own (calls may overlap). The caller keeps
 * the fd open and the buffers alive until the promise settles.
 */
export function lookupBatchAsync(
  fd: Fd,
  inBatch: Buffer | null,
  outBatch: Buffer,
  keys: Buffer,
  values: Buffer,
  capacity: number,
  countCell: Uint32Array,
): Promise<BatchLookupResult> {
  countCell[0] = capacity;
  return new Promise((resolve, reject) => {
    native.lookupBatch.async(fd.value, inBatch, outBatch, keys, values, countCell, null, (err, ret) => {
      if (err) return reject(err);
      try {
        resolve(lookupBatchResult('map lookup batch', ret, countCell[0]));
      } catch (e) {
        reject(e);
      }
    });
  });
}

const batchOptsByFlags = new Map<number, Buffer>();

/**
 * BPF_MAP_UPDATE_BATCH. On failure the kernel has written the first `processed` entries;
 * the error carries that count.
 */
export function updateBatch(fd: Fd, keys: Buffer, values: Buffer, count: number, elemFlags: number): void {
  // The kernel refuses NOEXIST/EXIST in batches with EINVAL without writing back a count,
  // which would make `processed` a lie: refuse them here instead.
  if (elemFlags !== 0) throw new BatchError('map update batch (only BPF_ANY is supported)', Errno.EINVAL, 0);
  let opts = batchOptsByFlags.get(elemFlags);
  if (!opts) batchOptsByFlags.set(elemFlags, (opts = batchOpts(elemFlags)));
  countCell[0] = count;
  const ret = native.updateBatch(fd.value, keys, values, countCell, opts);
  if (ret < 0) throw new BatchError('map update batch', -ret, countCell[0]);
}

/**
 * BPF_MAP_DELETE_BATCH. Stops at the first key that fails (ENOENT for a key that is
 * already gone); the error carries how many keys before it were deleted.
 */
export function deleteBatch(fd: Fd, keys: Buffer, count: number): void {
  countCell[0] = count;
  const ret = native.deleteBatch(fd.value, keys, countCell, null);
  if (ret < 0) throw new BatchError('map delete batch', -ret, countCell[0]);
}

// BPF objects and programs (libbpf object API, BPF_PROG_TEST_RUN, mmap of map values).
export { BpfObject, BpfObjectMap, BpfProgram, MappedMap, SK_BUFF_CTX, TestRunContext, openObjectCount } from './object';

export interface ProgInfo {
  readonly type: number;
  readonly id: number;
  readonly name: string;
}

/** BPF_OBJ_GET_INFO_BY_FD for a program (struct bpf_prog_info: type, id, name). */
export function progInfo(fd: Fd | number): ProgInfo {
  const info = Buffer.alloc(232);
  const len = new Uint32Array([info.length]);
  check('prog info', native.objGetInfoByFd(typeof fd === 'number' ? fd : fd.value, info, len));
  // name[BPF_OBJ_NAME_LEN] at offset 64 (after tag, lengths, pointers, load time, uid, map ids).
  const nameBytes = info.subarray(64, 80);
  const nul = nameBytes.indexOf(0);
  return { type: info.readUInt32LE(0), id: info.readUInt32LE(4), name: nameBytes.subarray(0, nul < 0 ? 16 : nul).toString('latin1') };
}

/**
 * BPF_OBJ_PIN of a program fd someone else owns (a BpfProgram's): the pin keeps the
 * program loaded after that owner closes it. The parent directory must exist on bpffs.
 * Throws BpfSyscallError (EEXIST: something is pinned there already).
 */
export function pinProgram(progFd: number, pinPath: string): void {
  check(`obj pin ${pinPath}`, native.objPin(progFd, pinPath));
}

// flock(2) on directories: one owner per bpf-root (src/maps/root-lock.ts).
export { DirLock, flockHolders, tryLockDir } from './lock';

// bpf_link: cgroup attachments that live as long as their pin (src/link/cgroup.ts).

const O_RDONLY = 0;
const O_DIRECTORY = 0o200000;
const O_CLOEXEC = 0o2000000;

/**
 * open(path, O_RDONLY | O_DIRECTORY): a directory fd, e.g. of a cgroup, as BPF_LINK_CREATE
 * takes for its target. Throws BpfSyscallError (ENOENT, ENOTDIR) naming the path.
 */
export function openDirectory(dirPath: string): Fd {
  const fd = native.open(dirPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw new BpfSyscallError(`open ${dirPath}`, lastErrno());
  return new Fd(fd, dirPath);
}

/** BPF_LINK_CREATE: attaches `progFd` to `targetFd` at `attachType`; the link is the returned fd. */
export function linkCreate(progFd: number, target: Fd, attachType: number): Fd {
  return new Fd(check(`link create (attach type ${attachType})`, native.linkCreate(progFd, target.value, attachType, null)), `link type ${attachType}`);
}

/** BPF_LINK_UPDATE: the link runs `progFd` from now on, with no moment without a program. */
export function linkUpdate(link: Fd, progFd: number): void {
  check('link update', native.linkUpdate(link.value, progFd, null));
}

/** BPF_LINK_DETACH: detaches the link's program now, whoever else holds the link. */
export function linkDetach(link: Fd): void {
  check('link detach', native.linkDetach(link.value));
}

export interface LinkInfo {
  readonly type: number;
  readonly id: number;
  readonly progId: number;
  /** BPF_LINK_TYPE_CGROUP only: the cgroup's id (its cgroup2 inode); 0 once the cgroup is gone. */
  readonly cgroupId: bigint;
  readonly attachType: number;
}

/** BPF_LINK_TYPE_CGROUP (uapi enum bpf_link_type). */
export const BPF_LINK_TYPE_CGROUP = 3;

/**
 * BPF_OBJ_GET_INFO_BY_FD for a link (struct bpf_link_info: type, id, prog_id, then the
 * per-type union at offset 16; for cgroup links { u64 cgroup_id; u32 attach_type; }).
 */
export function linkInfo(link: Fd): LinkInfo {
  const info = Buffer.alloc(64);
  const len = new Uint32Array([info.length]);
  check('link info', native.objGetInfoByFd(link.value, info, len));
  const type = info.readUInt32LE(0);
  const cgroup = type === BPF_LINK_TYPE_CGROUP;
  return {
    type,
    id: info.readUInt32LE(4),
    progId: info.readUInt32LE(8),
    cgroupId: cgroup ? info.readBigUInt64LE(16) : 0n,
    attachType: cgroup ? info.readUInt32LE(24) : 0,
  };
}

/** BPF_OBJ_PIN of a link (or any object fd this process owns); parent must exist on bpffs. */
export function pinFd(fd: Fd, pinPath: string): void {
  check(`obj pin ${pinPath}`, native.objPin(fd.value, pinPath));
}

export { EpollWaiter, MappedRing, openRingCount, pageSize } from './ringbuf';
export type { WaitResult } from './ringbuf';
