/**
 * A BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux >= 5.8) read from this process without a
 * syscall per record, and a waiter that blocks on it on libuv's pool, never on the event
 * loop. What libbpf's ring_buffer__poll does, in pieces the reader in src/datapath/ puts
 * together:
 *
 * - MappedRing: the kernel's layout (kernel/bpf/ringbuf.c): at offset 0 one page holding
 *   consumer_pos, which only the reader writes (mapped read-write); at one page the
 *   producer page (producer_pos) followed by the data area mapped twice in a row by the
 *   kernel, so a record that wraps around the end is contiguous (mapped read-only: the
 *   kernel refuses writes there). Every record starts with an 8-byte header, u32 len whose
 *   bit 31 says "still being written" (BUSY) and bit 30 "discarded", then u32 pg_off;
 *   records are 8-byte aligned.
 * - EpollWaiter: epoll on the ring's fd (readable when the producer woke it) and on an
 *   eventfd that wake() writes, so stop() can end a wait at once. wait() runs
 *   epoll_wait on a libuv pool thread through koffi's async call, which occupies that
 *   thread for as long as it waits: callers bound the timeout.
 *
 * x86-64 and arm64 both give JS's plain loads here the ordering needed: the kernel
 * publishes producer_pos after the record's header (smp_store_release), and a record
 * whose header is still BUSY is not read.
 */
import koffi from 'koffi';
import { BpfSyscallError, Errno } from './errors';
import { Fd } from './fd';
import { lastErrno, native } from './native';
import type { Ptr } from './libc';

const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x1;
const MAP_FAILED = (1n << 64n) - 1n;
const SC_PAGESIZE = 30;

const RINGBUF_BUSY_BIT = 0x80000000;
const RINGBUF_DISCARD_BIT = 0x40000000;
const RINGBUF_HDR_SZ = 8;

/** The system's page size (sysconf(_SC_PAGESIZE)). */
export function pageSize(): number {
  return native.sysconf(SC_PAGESIZE);
}

let openRings = 0;

/** MappedRings and EpollWaiters not yet closed (leak checks). */
export function openRingCount(): number {
  return openRings;
}

/** One mmap()ed region, unmapped once. */
class Mapping {
  #addr: Ptr | null;
  readonly buffer: Buffer;

  constructor(fd: Fd, readonly length: number, offset: number, writable: boolean) {
    const addr = native.mmap(null, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd.value, offset);
    if (addr === null || addr === MAP_FAILED) throw new BpfSyscallError(`mmap ${fd.what} at ${offset}`, lastErrno());
    this.#addr = addr;
    this.buffer = Buffer.from(koffi.view(addr, length));
  }

  unmap(): void {
    if (this.#addr === null) return;
    native.munmap(this.#addr, this.length);
    this.#addr = null;
  }
}

/**
 * A ring buffer map mapped for reading: drain() hands every complete record to a callback
 * and then moves consumer_pos past them. close() (idempotent) unmaps; the ring's fd stays
 * the caller's.
 */
export class MappedRing {
  readonly #consumer: Mapping;
  readonly #data: Mapping;
  readonly #mask: number;
  readonly #page: number;
  #closed = false;

  /**
   * Maps the ring of `size` bytes (its max_entries) behind `fd`. Throws BpfSyscallError
   * (EINVAL: not a ring buffer or another size; EPERM: a write mapping of the data).
   */
  constructor(fd: Fd, readonly size: number) {
    if (!Number.isInteger(size) || size <= 0 || (size & (size - 1)) !== 0) throw new BpfSyscallError(`ring ${fd.what}: size ${size} is not a power of two`, Errno.EINVAL);
    this.#page = pageSize();
    this.#mask = size - 1;
    this.#consumer = new Mapping(fd, this.#page, 0, true);
    try {
      this.#data = new Mapping(fd, this.#page + 2 * size, this.#page, false);
    } catch (err) {
      this.#consumer.unmap();
      throw err;
    }
    openRings++;
  }

  /** producer_pos: bytes the programs have reserved since the ring was created. */
  get producerPos(): number {
    return Number(this.#data.buffer.readBigUInt64LE(0));
  }

  /** consumer_pos: bytes read so far. */
  get consumerPos(): number {
    return Number(this.#consumer.buffer.readBigUInt64LE(0));
  }

  /**
   * Calls `onRecord` with a view of each complete record's data (valid only during the
   * call: the producer reuses the space once consumer_pos passes it), in ring order, up to
   * the first record still being written; discarded records are skipped. Then publishes
   * the new consumer_pos. At most `max` records (default: all there are). Returns the
   * number of records handed over.
   */
  drain(onRecord: (data: Buffer) => void, max = Infinity): number {
    if (this.#closed) throw new BpfSyscallError('ring: use after close', Errno.EBADF);
    const data = this.#data.buffer;
    const base = this.#page;
    let cons = this.consumerPos;
    const prod = this.producerPos;
    let n = 0;
    try {
      while (cons < prod && n < max) {
        const off = base + (cons & this.#mask);
        const len = data.readUInt32LE(off);
        if (len & RINGBUF_BUSY_BIT) break;
        const bytes = len & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);
        if (!(len & RINGBUF_DISCARD_BIT)) {
          onRecord(data.subarray(off + RINGBUF_HDR_SZ, off + RINGBUF_HDR_SZ + bytes));
          n++;
        }
        cons += (bytes + RINGBUF_HDR_SZ + 7) & ~7;
      }
    } finally {
      this.#consumer.buffer.writeBigUInt64LE(BigInt(cons), 0);
    }
    return n;
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#data.unmap();
    this.#consumer.unmap();
    openRings--;
  }
}

const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLLIN = 0x1;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
/** struct epoll_event: u32 events, u64 data; packed on x86-64 (12 bytes), 16 elsewhere. */
const EPOLL_EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
const MAX_EVENTS = 2;
/** epoll data of the wake eventfd (the ring's is 0). */
const WAKE_TOKEN = 1;

/** What one wait() saw. */
export interface WaitResult {
  /** The ring's fd was readable (the producer woke it). */
  readonly ring: boolean;
  /** wake() was called since the last wait. */
  readonly woken: boolean;
}

/**
 * epoll over a ring buffer's fd and an eventfd of its own. One wait() at a time. close()
 * must not run while a wait() is pending (the pool thread still uses the epoll fd): wake(),
 * await the wait, then close().
 */
export class EpollWaiter {
  readonly #epoll: Fd;
  readonly #wake: Fd;
  readonly #events = Buffer.alloc(EPOLL_EVENT_SIZE * MAX_EVENTS);
  #waiting = false;
  #closed = false;

  /** Throws BpfSyscallError from epoll_create1, eventfd or epoll_ctl. */
  constructor(ringFd: Fd) {
    const ep = native.epollCreate1(EPOLL_CLOEXEC);
    if (ep < 0) throw new BpfSyscallError('epoll_create1', lastErrno());
    this.#epoll = new Fd(ep, 'epoll');
    const ev = native.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ev < 0) {
      const errno = lastErrno();
      this.#epoll.close();
      throw new BpfSyscallError('eventfd', errno);
    }
    this.#wake = new Fd(ev, 'eventfd');
    try {
      this.#add(ringFd.value, 0);
      this.#add(this.#wake.value, WAKE_TOKEN);
    } catch (err) {
      this.#wake.close();
      this.#epoll.close();
      throw err;
    }
    openRings++;
  }

  #add(fd: number, token: number): void {
    const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
    ev.writeUInt32LE(EPOLLIN, 0);
    ev.writeBigUInt64LE(BigInt(token), EPOLL_EVENT_SIZE === 12 ? 4 : 8);
    if (native.epollCtl(this.#epoll.value, EPOLL_CTL_ADD, fd, ev) < 0) throw new BpfSyscallError(`epoll_ctl add ${fd}`, lastErrno());
  }

  /**
   * Waits on a libuv pool thread until the ring is readable, wake() is called, or
   * `timeoutMs` passed (then both are false). An interrupted wait (EINTR) resolves as a
   * timeout. Rejects BpfSyscallError EBUSY when a wait is already pending, EBADF after close.
   */
  wait(timeoutMs: number): Promise<WaitResult> {
    if (this.#closed) return Promise.reject(new BpfSyscallError('epoll: use after close', Errno.EBADF));
    if (this.#waiting) return Promise.reject(new BpfSyscallError('epoll: a wait is pending', Errno.EBUSY));
    this.#waiting = true;
    const events = this.#events;
    return new Promise((resolve, reject) => {
      native.epollWait.async(this.#epoll.value, events, MAX_EVENTS, timeoutMs, (err, ret) => {
        this.#waiting = false;
        if (err) return reject(err);
        let ring = false;
        let woken = false;
        for (let i = 0; i < Math.max(0, ret); i++) {
          const token = Number(events.readBigUInt64LE(i * EPOLL_EVENT_SIZE + (EPOLL_EVENT_SIZE === 12 ? 4 : 8)));
          if (token === WAKE_TOKEN) woken = true;
          else ring = true;
        }
        // Reset the eventfd's counter so the next wait blocks again (non-blocking: EAGAIN when 0).
        if (woken) native.read(this.#wake.value, Buffer.alloc(8), 8);
        resolve({ ring, woken });
      });
    });
  }

  /** Ends the pending (or the next) wait at once. */
  wake(): void {
    if (this.#closed) return;
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n, 0);
    native.write(this.#wake.value, one, 8);
  }

  get waiting(): boolean {
    return this.#waiting;
  }

  /** Closes both fds (idempotent). Throws BpfSyscallError EBUSY while a wait is pending. */
  close(): void {
    if (this.#closed) return;
    if (this.#waiting) throw new BpfSyscallError('epoll: close during a wait (wake() and await it first)', Errno.EBUSY);
    this.#closed = true;
    this.#wake.close();
    this.#epoll.close();
    openRings--;
  }
}
