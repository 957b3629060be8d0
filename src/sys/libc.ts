/**
 * koffi bindings to libc.so.6, loaded here once: what ctmapd needs of libc beside libbpf
 * (fds, sockets, interface names, mmap, flock, CPU affinity, peer credentials). Kept apart
 * from ./native.ts, which loads libbpf.so.1 as well, so that the few callers that need
 * libc but not libbpf (the unix socket's peer credentials, wanted on the memory backend
 * too) can load it alone. Calls return -1 and set errno (read with lastErrno() of
 * ./native.ts, or koffi.errno()).
 */
import koffi from 'koffi';

/** Opaque pointers, as koffi 3 returns them. */
export type Ptr = bigint;

const libc = koffi.load('libc.so.6');

export const libcFunctions = {
  mmap: libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as (
    addr: null,
    length: number,
    prot: number,
    flags: number,
    fd: number,
    offset: number,
  ) => Ptr | null,
  munmap: libc.func('int munmap(void *addr, size_t length)') as (addr: Ptr, length: number) => number,
  ifNameToIndex: libc.func('unsigned int if_nametoindex(const char *ifname)') as (name: string) => number,
  ifIndexToName: libc.func('const char *if_indextoname(unsigned int ifindex, void *ifname)') as (index: number, buf: Buffer) => string | null,
  socket: libc.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, protocol: number) => number,
  send: libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number,
  recv: libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number,
  // Without O_CREAT the variadic mode argument is never read, so two arguments suffice.
  open: libc.func('int open(const char *path, int flags)') as (path: string, flags: number) => number,
  close: libc.func('int close(int fd)') as (fd: number) => number,
  // Returns -1 and sets errno (read with lastErrno()); see sys/lock.ts.
  flock: libc.func('int flock(int fd, int operation)') as (fd: number, operation: number) => number,
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
  // The event ring reader (./ringbuf.ts): -1 and errno on failure.
  epollCreate1: libc.func('int epoll_create1(int flags)') as (flags: number) => number,
  epollCtl: libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as (epfd: number, op: number, fd: number, event: Buffer) => number,
  epollWait: libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)') as EpollWaitFn,
  eventfd: libc.func('int eventfd(unsigned int initval, int flags)') as (initval: number, flags: number) => number,
  write: libc.func('intptr_t write(int fd, const void *buf, size_t count)') as (fd: number, buf: Buffer, count: number) => number,
  read: libc.func('intptr_t read(int fd, void *buf, size_t count)') as (fd: number, buf: Buffer, count: number) => number,
  sysconf: libc.func('long sysconf(int name)') as (name: number) => number,
  /** fcntl with one int argument (F_SETPIPE_SZ, F_GETPIPE_SZ); the prototype is variadic in C. */
  fcntlInt: libc.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number,
  getsockopt: libc.func('int getsockopt(int fd, int level, int optname, void *optval, void *optlen)') as (
    fd: number,
    level: number,
    name: number,
    value: Buffer,
    len: Buffer,
  ) => number,
};

type EpollWaitFn = {
  (epfd: number, events: Buffer, maxevents: number, timeout: number): number;
  /** koffi: the same call on a libuv pool thread; `events` must stay alive until cb. */
  async(epfd: number, events: Buffer, maxevents: number, timeout: number, cb: (err: unknown, ret: number) => void): void;
};
