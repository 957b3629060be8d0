/**
 * The daemon's reader of the datapath's event ring (ctmapd_ct_events, bpf/ct_events.h):
 * never polling. It blocks in epoll_wait on libuv's pool (src/sys/ringbuf.ts EpollWaiter),
 * drains every complete record through the mmap()ed ring (no syscall per record), decodes
 * them (./ring-decoder.ts) and emits one RingBatch per drain step on `batches`.
 *
 * Wakeups: the programs suppress them (BPF_RB_NO_WAKEUP) except for FILL_UP signals and
 * every CT_EVENTS_WAKEUP_EVERY-th record of a CPU (bpf/ct_events.h), so the last records
 * of a burst would wait for the next burst. The bounded epoll timeout (`timeoutMs`,
 * default 50 ms) is the backstop that picks them up: an idle reader drains an empty ring
 * 20 times a second, which costs nothing measurable, and no record waits longer.
 *
 * The wait occupies one libuv pool thread (UV_THREADPOOL_SIZE, 4 by default) while it
 * blocks; the GC's async batch lookups share the others.
 *
 * Lifecycle: open() -> start() -> stop() (wakes the pending wait through the eventfd,
 * drains what is left, completes `batches`, unmaps and closes its fds; idempotent).
 */
import { Subject, type Observable } from 'rxjs';
import type { Logger } from 'pino';
import { EpollWaiter, Fd, MappedRing } from '../sys';
import type { CtEventInput } from '../maps/ctmap/events/types';
import { CT_EVENT } from '../maps/ctmap/events/layout';
import { FillUpSignal, decodeRingRecord } from './ring-decoder';

/** What one drain step read. */
export interface RingBatch {
  /** NEW and CLOSE events, in ring order. */
  readonly events: readonly CtEventInput[];
  /** Fill-up signals, in ring order. */
  readonly fillUps: readonly FillUpSignal[];
  /**
   * Records lost before these (the ring was full), as the records reported them in-band:
   * the sum of their writer CPUs' counts (hdr.lost).
   */
  readonly lost: number;
  /** Records this build cannot decode (logged): another build's programs. */
  readonly unknown: number;
}

export interface RingReaderOptions {
  /** The ring map's fd (the caller keeps it and closes it after stop()). */
  readonly fd: Fd;
  /** Its size in bytes (max_entries). */
  readonly size: number;
  readonly log: Logger;
  /** epoll timeout, ms: how long records written without a wakeup may wait. Default 50. */
  readonly timeoutMs?: number;
  /** Records per batch at most (default 4096), so one burst does not become one huge array. */
  readonly maxBatch?: number;
}

const DEFAULT_TIMEOUT_MS = 50;
const DEFAULT_MAX_BATCH = 4096;

export class RingReader {
  readonly #ring: MappedRing;
  readonly #waiter: EpollWaiter;
  readonly #subject = new Subject<RingBatch>();
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #maxBatch: number;
  #loop?: Promise<void>;
  #stopping?: Promise<void>;
  #records = 0;
  #lost = 0;

  private constructor(ring: MappedRing, waiter: EpollWaiter, opts: RingReaderOptions) {
    this.#ring = ring;
    this.#waiter = waiter;
    this.#log = opts.log;
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#maxBatch = opts.maxBatch ?? DEFAULT_MAX_BATCH;
  }

  /** Maps the ring and sets up epoll. Throws BpfSyscallError (mmap, epoll, eventfd). */
  static open(opts: RingReaderOptions): RingReader {
    const ring = new MappedRing(opts.fd, opts.size);
    let waiter: EpollWaiter;
    try {
      waiter = new EpollWaiter(opts.fd);
    } catch (err) {
      ring.close();
      throw err;
    }
    return new RingReader(ring, waiter, opts);
  }

  /** Decoded batches, one per drain step with records; completes at stop(). */
  get batches(): Observable<RingBatch> {
    return this.#subject.asObservable();
  }

  /** Records read and losses reported in-band since open(). */
  get totals(): { readonly records: number; readonly lost: number } {
    return { records: this.#records, lost: this.#lost };
  }

  /** Starts the wait loop. Idempotent; a no-op after stop(). */
  start(): void {
    if (this.#loop || this.#stopping) return;
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    // Records written before start() (or before a restart of the daemon) come first.
    this.#drain();
    while (!this.#stopping) {
      try {
        await this.#waiter.wait(this.#timeoutMs);
      } catch (err) {
        // Not expected (epoll on fds this reader owns); stop reading rather than spin.
        this.#log.error({ err }, 'event ring: epoll_wait failed; the reader stops');
        return;
      }
      this.#drain();
    }
  }

  /** Emits what the ring holds, in batches of at most maxBatch records. */
  #drain(): void {
    for (;;) {
      const events: CtEventInput[] = [];
      const fillUps: FillUpSignal[] = [];
      let lost = 0;
      let unknown = 0;
      // One copy of the batch's records, which its events' keys and entries are views of:
      // two allocations per event cost as much as the rest of the decoding.
      const copy = Buffer.allocUnsafe(this.#maxBatch * CT_EVENT.size);
      let used = 0;
      const n = this.#ring.drain((data) => {
        let r;
        if (data.length <= CT_EVENT.size) {
          data.copy(copy, used);
          r = decodeRingRecord(copy.subarray(used, used + data.length), true);
          used += data.length;
        } else {
          r = decodeRingRecord(data);
        }
        lost += r.lost;
        if (r.type === 'event') events.push(r.event);
        else if (r.type === 'fill-up') fillUps.push(r.signal);
        else {
          unknown++;
          this.#log.warn({ why: r.why }, 'event ring: a record this build cannot decode (ctmapd and bpf/ from different builds?)');
        }
      }, this.#maxBatch);
      if (n === 0) return;
      this.#records += n;
      this.#lost += lost;
      try {
        this.#subject.next({ events, fillUps, lost, unknown });
      } catch (err) {
        // A subscriber's throw must not stop the reader: the ring would fill and lose.
        this.#log.error({ err }, 'event ring: a subscriber threw');
      }
      if (n < this.#maxBatch) return;
    }
  }

  /**
   * Ends the pending wait (eventfd), drains what is left, completes `batches`, then unmaps
   * the ring and closes the epoll and event fds. Idempotent; never rejects.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#waiter.wake();
      await this.#loop;
      if (!this.#ring.closed) this.#drain();
      this.#subject.complete();
      this.#waiter.close();
      this.#ring.close();
    })();
    return this.#stopping;
  }
}
