/**
 * koffi bindings to libbpf.so.1, loaded here once, and the one `native` table of every
 * native function ctmapd calls, libc's from ./libc.ts included (test/unit/layering.test.ts
 * keeps koffi inside src/sys/ and each library loaded once). Everything is synchronous unless bound with .async: each call is one
 * syscall, short enough for the event loop (a 4096-entry batch lookup takes well under a
 * millisecond).
 *
 * libbpf >= 1.0 conventions: int-returning APIs return -errno (checked with check() of
 * ./errors); pointer-returning ones return NULL and set errno, read with lastErrno(),
 * which koffi captures right after the call. Pointers are BigInts in koffi 3. Targets
 * libbpf 1.1 (Debian 12): bpf_obj_get_info_by_fd, not the 1.2 names; struct layouts as in
 * its /usr/include/bpf/{bpf,libbpf}.h.
 */
import koffi from 'koffi';
import { Errno } from './errors';
import { type Ptr, libcFunctions } from './libc';

const libbpf = koffi.load('libbpf.so.1');

// struct bpf_map_create_opts (libbpf 1.1 layout; `sz` tells libbpf which fields we know).
const MapCreateOpts = koffi.struct('bpf_map_create_opts', {
  sz: 'size_t',
  btf_fd: 'uint32_t',
  btf_key_type_id: 'uint32_t',
  btf_value_type_id: 'uint32_t',
  btf_vmlinux_value_type_id: 'uint32_t',
  inner_map_fd: 'uint32_t',
  map_flags: 'uint32_t',
  map_extra: 'uint64_t',
  numa_node: 'uint32_t',
  map_ifindex: 'uint32_t',
});
const mapCreateOptsSize = koffi.sizeof(MapCreateOpts);

/** struct bpf_test_run_opts, libbpf 1.1 layout (/usr/include/bpf/bpf.h); `sz` = its size. */
const TestRunOpts = koffi.struct('ctmapd_bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});
/** Sizes and offsets of struct bpf_test_run_opts, for the opts buffer sys/object.ts fills. */
export const TEST_RUN_OPTS = {
  size: koffi.sizeof(TestRunOpts),
  data_in: koffi.offsetof(TestRunOpts, 'data_in'),
  data_size_in: koffi.offsetof(TestRunOpts, 'data_size_in'),
  data_size_out: koffi.offsetof(TestRunOpts, 'data_size_out'),
  ctx_in: koffi.offsetof(TestRunOpts, 'ctx_in'),
  ctx_size_in: koffi.offsetof(TestRunOpts, 'ctx_size_in'),
  retval: koffi.offsetof(TestRunOpts, 'retval'),
  repeat: koffi.offsetof(TestRunOpts, 'repeat'),
  duration: koffi.offsetof(TestRunOpts, 'duration'),
} as const;

/** struct bpf_tc_hook (libbpf.h): sz, ifindex, enum attach_point, parent; padded to 8. */
const TcHook = koffi.struct('ctmapd_bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int',
  parent: 'uint32_t',
});
/** struct bpf_tc_opts (libbpf.h): sz, prog_fd, flags, prog_id, handle, priority; padded to 8. */
const TcOpts = koffi.struct('ctmapd_bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});
/** Sizes and offsets of struct bpf_tc_hook and struct bpf_tc_opts, for src/link/tc.ts. */
export const TC_HOOK = {
  size: koffi.sizeof(TcHook),
  ifindex: koffi.offsetof(TcHook, 'ifindex'),
  attach_point: koffi.offsetof(TcHook, 'attach_point'),
} as const;
export const TC_OPTS = {
  size: koffi.sizeof(TcOpts),
  prog_fd: koffi.offsetof(TcOpts, 'prog_fd'),
  flags: koffi.offsetof(TcOpts, 'flags'),
  prog_id: koffi.offsetof(TcOpts, 'prog_id'),
  handle: koffi.offsetof(TcOpts, 'handle'),
  priority: koffi.offsetof(TcOpts, 'priority'),
} as const;

/** Opaque libbpf pointers (struct bpf_object *, struct bpf_map *, struct bpf_program *). */
export type { Ptr };


export const native = {
  mapCreate: libbpf.func(
    'int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const bpf_map_create_opts *opts)',
  ) as (type: number, name: string, k: number, v: number, max: number, opts: object) => number,
  objGet: libbpf.func('int bpf_obj_get(const char *pathname)') as (path: string) => number,
  objPin: libbpf.func('int bpf_obj_pin(int fd, const char *pathname)') as (fd: number, path: string) => number,
  objGetInfoByFd: libbpf.func('int bpf_obj_get_info_by_fd(int fd, void *info, void *info_len)') as (
    fd: number,
    info: Buffer,
    len: Uint32Array,
  ) => number,
  lookup: libbpf.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)') as (
    fd: number,
    key: Buffer,
    value: Buffer,
  ) => number,
  update: libbpf.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)') as (
    fd: number,
    key: Buffer,
    value: Buffer,
    flags: number,
  ) => number,
  delete: libbpf.func('int bpf_map_delete_elem(int fd, const void *key)') as (fd: number, key: Buffer) => number,
  getNextKey: libbpf.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)') as (
    fd: number,
    key: Buffer | null,
    next: Buffer,
  ) => number,
  lookupBatch: libbpf.func(
    'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, const void *opts)',
  ) as BatchLookupFn,
  lookupAndDeleteBatch: libbpf.func(
    'int bpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, const void *opts)',
  ) as BatchLookupFn,
  updateBatch: libbpf.func(
    'int bpf_map_update_batch(int fd, const void *keys, const void *values, void *count, const void *opts)',
  ) as (fd: number, keys: Buffer, values: Buffer, count: Uint32Array, opts: Buffer) => number,
  deleteBatch: libbpf.func('int bpf_map_delete_batch(int fd, const void *keys, void *count, const void *opts)') as (
    fd: number,
    keys: Buffer,
    count: Uint32Array,
    opts: Buffer | null,
  ) => number,
  // libbpf object API (sys/object.ts)
  objectOpenFile: libbpf.func('void *bpf_object__open_file(const char *path, const void *opts)') as (path: string, opts: null) => Ptr | null,
  objectLoad: libbpf.func('int bpf_object__load(void *obj)') as (obj: Ptr) => number,
  objectClose: libbpf.func('void bpf_object__close(void *obj)') as (obj: Ptr) => void,
  findMap: libbpf.func('void *bpf_object__find_map_by_name(const void *obj, const char *name)') as (obj: Ptr, name: string) => Ptr | null,
  findProgram: libbpf.func('void *bpf_object__find_program_by_name(const void *obj, const char *name)') as (
    obj: Ptr,
    name: string,
  ) => Ptr | null,
  mapReuseFd: libbpf.func('int bpf_map__reuse_fd(void *map, int fd)') as (map: Ptr, fd: number) => number,
  mapSetInitialValue: libbpf.func('int bpf_map__set_initial_value(void *map, const void *data, size_t size)') as (
    map: Ptr,
    data: Buffer,
    size: number,
  ) => number,
  mapSetMaxEntries: libbpf.func('int bpf_map__set_max_entries(void *map, uint32_t max_entries)') as (map: Ptr, max: number) => number,
  mapFd: libbpf.func('int bpf_map__fd(const void *map)') as (map: Ptr) => number,
  mapValueSize: libbpf.func('uint32_t bpf_map__value_size(const void *map)') as (map: Ptr) => number,
  mapKeySize: libbpf.func('uint32_t bpf_map__key_size(const void *map)') as (map: Ptr) => number,
  mapMaxEntries: libbpf.func('uint32_t bpf_map__max_entries(const void *map)') as (map: Ptr) => number,
  mapFlags: libbpf.func('uint32_t bpf_map__map_flags(const void *map)') as (map: Ptr) => number,
  mapType: libbpf.func('int bpf_map__type(const void *map)') as (map: Ptr) => number,
  programFd: libbpf.func('int bpf_program__fd(const void *prog)') as (prog: Ptr) => number,
  programSetAutoload: libbpf.func('int bpf_program__set_autoload(void *prog, bool autoload)') as (prog: Ptr, on: boolean) => number,
  programSetLogBuf: libbpf.func('int bpf_program__set_log_buf(void *prog, void *buf, size_t size)') as (
    prog: Ptr,
    buf: Ptr,
    size: number,
  ) => number,
  testRun: libbpf.func('int bpf_prog_test_run_opts(int prog_fd, void *opts)') as (fd: number, opts: Ptr) => number,
  tcHookCreate: libbpf.func('int bpf_tc_hook_create(void *hook)') as (hook: Buffer) => number,
  tcHookDestroy: libbpf.func('int bpf_tc_hook_destroy(void *hook)') as (hook: Buffer) => number,
  tcAttach: libbpf.func('int bpf_tc_attach(const void *hook, void *opts)') as (hook: Buffer, opts: Buffer) => number,
  tcDetach: libbpf.func('int bpf_tc_detach(const void *hook, const void *opts)') as (hook: Buffer, opts: Buffer) => number,
  tcQuery: libbpf.func('int bpf_tc_query(const void *hook, void *opts)') as (hook: Buffer, opts: Buffer) => number,
  // bpf_link (cgroup attachments: src/link/cgroup.ts). opts NULL: no flags, no replace target.
  linkCreate: libbpf.func('int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts)') as (
    progFd: number,
    targetFd: number,
    attachType: number,
    opts: null,
  ) => number,
  linkUpdate: libbpf.func('int bpf_link_update(int link_fd, int new_prog_fd, const void *opts)') as (linkFd: number, progFd: number, opts: null) => number,
  linkDetach: libbpf.func('int bpf_link_detach(int link_fd)') as (linkFd: number) => number,
  // libc (./libc.ts)
  ...libcFunctions,
};

/**
 * errno of the last failed call on this thread: a libc call, or a libbpf call that returns
 * a pointer (libbpf returns -errno itself from int-returning calls). EINVAL when the
 * failing call left errno 0, so the caller always has an error to report.
 */
export function lastErrno(): number {
  return koffi.errno() || Errno.EINVAL;
}

type BatchLookupFn = {
  (fd: number, inBatch: Buffer | null, outBatch: Buffer, keys: Buffer, values: Buffer, count: Uint32Array, opts: Buffer | null): number;
  /** koffi: the same call on a libuv pool thread; the buffers must stay alive until cb. */
  async(
    fd: number,
    inBatch: Buffer | null,
    outBatch: Buffer,
    keys: Buffer,
    values: Buffer,
    count: Uint32Array,
    opts: Buffer | null,
    cb: (err: unknown, ret: number) => void,
  ): void;
};

export function mapCreateOpts(flags: number, innerMapFd: number): object {
  return {
    sz: mapCreateOptsSize,
    btf_fd: 0,
    btf_key_type_id: 0,
    btf_value_type_id: 0,
    btf_vmlinux_value_type_id: 0,
    inner_map_fd: innerMapFd,
    map_flags: flags,
    map_extra: 0,
    numa_node: 0,
    map_ifindex: 0,
  };
}

/** struct bpf_map_batch_opts { size_t sz; u64 elem_flags; u64 flags; } as raw bytes. */
export function batchOpts(elemFlags: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(24n, 0);
  b.writeBigUInt64LE(BigInt(elemFlags), 8);
  return b;
}
