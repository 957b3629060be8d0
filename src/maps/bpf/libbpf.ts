/**
 * koffi bindings to libbpf.so.1 — the only place in ctmapd that calls into libbpf or libc
 * (enforced by test/unit/koffi-boundary.test.ts). Everything here is synchronous: each
 * call is one bpf() syscall, short enough for the event loop (a 4096-entry batch lookup
 * takes well under a millisecond).
 *
 * libbpf >= 1.0 returns -errno from its low-level bpf_* wrappers, so no errno TLS read is
 * needed. Targets libbpf 1.1 (Debian 12): bpf_obj_get_info_by_fd, not the 1.2 names.
 */
import koffi from 'koffi';

const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

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

export const native = {
  mapCreate: lib.func(
    'int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const bpf_map_create_opts *opts)',
  ) as (type: number, name: string, k: number, v: number, max: number, opts: object) => number,
  objGet: lib.func('int bpf_obj_get(const char *pathname)') as (path: string) => number,
  numPossibleCpus: lib.func('int libbpf_num_possible_cpus(void)') as () => number,
  objPin: lib.func('int bpf_obj_pin(int fd, const char *pathname)') as (fd: number, path: string) => number,
  objGetInfoByFd: lib.func('int bpf_obj_get_info_by_fd(int fd, void *info, void *info_len)') as (
    fd: number,
    info: Buffer,
    len: Uint32Array,
  ) => number,
  lookup: lib.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)') as (
    fd: number,
    key: Buffer,
    value: Buffer,
  ) => number,
  update: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)') as (
    fd: number,
    key: Buffer,
    value: Buffer,
    flags: number,
  ) => number,
  delete: lib.func('int bpf_map_delete_elem(int fd, const void *key)') as (fd: number, key: Buffer) => number,
  getNextKey: lib.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)') as (
    fd: number,
    key: Buffer | null,
    next: Buffer,
  ) => number,
  lookupBatch: lib.func(
    'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, const void *opts)',
  ) as BatchLookupFn,
  lookupAndDeleteBatch: lib.func(
    'int bpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, const void *opts)',
  ) as BatchLookupFn,
  updateBatch: lib.func(
    'int bpf_map_update_batch(int fd, const void *keys, const void *values, void *count, const void *opts)',
  ) as (fd: number, keys: Buffer, values: Buffer, count: Uint32Array, opts: Buffer) => number,
  deleteBatch: lib.func('int bpf_map_delete_batch(int fd, const void *keys, void *count, const void *opts)') as (
    fd: number,
    keys: Buffer,
    count: Uint32Array,
    opts: Buffer | null,
  ) => number,
  close: libc.func('int close(int fd)') as (fd: number) => number,
  // pid 0 = the calling thread (not the process): only the JS thread is placed, libuv's
  // pool threads keep their own masks. Return -1 and set errno (read with koffi.errno()).
  schedGetaffinity: libc.func('int sched_getaffinity(int pid, size_t cpusetsize, void *mask)') as (
    pid: number,
    size: number,
    mask: Buffer,
  ) => number,
  schedSetaffinity: libc.func('int sched_setaffinity(int pid, size_t cpusetsize, const void *mask)') as (
    pid: number,
    size: number,
    mask: Buffer,
  ) => number,
};

/** errno of the last failed libc call on this thread (libbpf returns -errno itself). */
export function lastErrno(): number {
  return koffi.errno();
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
