/**
 * A per-subscriber bounded queue for live event streams. A producer that must never block
 * (the GC engine publishes synchronously) pushes; a consumer drains at the client's pace.
 * When the queue is full new items are dropped and counted, and the consumer is told how
 * many it lost right where the gap is: nothing is lost silently, memory stays bounded.
 *
 * A producer may also pace itself with waitForRoom. Once a consumer has fallen behind (it
 * lost items, or a wait gave up on it), waitForRoom no longer waits for it until it has
 * drained its queue: a stalled subscriber costs the producer one stall period at most, not
 * one per batch for as long as it stays connected (issue 12, item 8).
 */
import { waitWhileConsumerProgresses } from '../maps/stall-wait';

export type QueueItem<T> = { kind: 'item'; value: T } | { kind: 'lost'; count: number };

export class BoundedQueue<T> {
  /**
   * A ring of `capacity` slots: items live at #head .. #head+#size (mod capacity). An
   * Array with shift() costs O(size) per take once V8 gives up on its fast path, which made
   * a full 16 Ki queue the most expensive part of an Observe stream.
   */
  readonly #ring: (T | undefined)[];
  /** Drops owed before the item in slot i (only where a gap happened; 0 elsewhere). */
  readonly #lostBefore: Uint32Array;
  #head = 0;
  #size = 0;
  #pendingLost = 0;
  #totalLost = 0;
  /** Items taken so far: progress, as waitForRoom sees it. */
  #taken = 0;
  /** Fell behind (dropped items, or a wait gave up): waitForRoom returns at once until drained. */
  #behind = false;
  #wake: (() => void) | undefined;
  #closed = false;
  /** Called after every take and on close (waitForRoom). */
  #takeWaiters: Array<() => void> = [];

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be an integer >= 1');
    this.#ring = new Array(capacity);
    this.#lostBefore = new Uint32Array(capacity);
  }

  /** Never blocks: queues the item, or counts it as lost when the queue is full. */
  push(value: T): void {
    if (this.#closed) return;
    if (this.#size >= this.capacity) {
      this.#pendingLost++;
      this.#totalLost++;
      this.#behind = true;
    } else {
      const slot = (this.#head + this.#size) % this.capacity;
      this.#ring[slot] = value;
      // Capped: a gap of more than 2^32-1 drops is reported in more than one notice.
      this.#lostBefore[slot] = Math.min(this.#pendingLost, 0xffffffff);
      this.#pendingLost -= this.#lostBefore[slot];
      this.#size++;
    }
    this.#notify();
  }

  /**
   * Counts `count` more items as lost, as that many pushes onto a full queue would, for a
   * producer that knows they would not fit and does not make them (see room).
   */
  drop(count: number): void {
    if (this.#closed || count <= 0) return;
    this.#pendingLost += count;
    this.#totalLost += count;
    this.#behind = true;
    this.#notify();
  }

  get size(): number {
    return this.#size;
  }

  /** How many pushes fit before items are dropped. */
  get room(): number {
    return this.capacity - this.#size;
  }

  get totalLost(): number {
    return this.#totalLost;
  }

  /**
   * The next thing to deliver: a lost-count notice first when items were dropped before
   * the next item (or at the tail), then the item. Waits while empty; undefined once
   * closed and drained.
   */
  async take(): Promise<QueueItem<T> | undefined> {
    for (;;) {
      if (this.#size > 0) {
        const slot = this.#head;
        const lost = this.#lostBefore[slot];
        if (lost > 0) {
          this.#lostBefore[slot] = 0;
          return { kind: 'lost', count: lost };
        }
        const value = this.#ring[slot] as T;
        this.#ring[slot] = undefined;
        this.#head = (slot + 1) % this.capacity;
        this.#size--;
        this.#taken++;
        this.#caughtUp();
        this.#tookOne();
        return { kind: 'item', value };
      }
      if (this.#pendingLost > 0) {
        const count = this.#pendingLost;
        this.#pendingLost = 0;
        this.#caughtUp();
        return { kind: 'lost', count };
      }
      if (this.#closed) return undefined;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /**
   * Waits until `room` items fit, as long as the consumer keeps taking: returns true at
   * once when there is room or the queue is closed, and false when nothing was taken for
   * a whole stall period (detected within stallMs to 2*stallMs). Returns false at once
   * while the consumer is behind: from a drop or a wait that gave up until it has taken
   * everything queued, lost-count notices included. A producer that paces itself with this
   * never overruns a consumer that keeps up, and is held up by one that has stalled for
   * one stall period, not once per call.
   */
  waitForRoom(room: number, stallMs: number): Promise<boolean> {
    const fits = () => this.#closed || this.capacity - this.#size >= Math.min(room, this.capacity);
    if (fits()) return Promise.resolve(true);
    if (this.#behind) return Promise.resolve(false);
    return waitWhileConsumerProgresses({
      fits,
      progress: () => this.#taken,
      stallMs,
      onTake: (fn) => {
        this.#takeWaiters.push(fn);
        return () => void (this.#takeWaiters = this.#takeWaiters.filter((w) => w !== fn));
      },
      onStall: () => void (this.#behind = true),
    });
  }

  /** After a take: an empty queue with no loss left to report means the consumer caught up. */
  #caughtUp(): void {
    if (this.#size === 0 && this.#pendingLost === 0) this.#behind = false;
  }

  #tookOne(): void {
    if (this.#takeWaiters.length === 0) return;
    for (const w of [...this.#takeWaiters]) w();
  }

  /** Ends the queue: take() drains what is queued, then returns undefined. */
  close(): void {
    this.#closed = true;
    this.#notify();
    this.#tookOne();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
