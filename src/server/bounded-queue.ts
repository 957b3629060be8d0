/**
 * A per-subscriber bounded queue for live event streams. A producer that must never block
 * (the GC engine publishes synchronously) pushes; a consumer drains at the client's pace.
 * When the queue is full new items are dropped and counted, and the consumer is told how
 * many it lost right where the gap is: nothing is lost silently, memory stays bounded.
 */
export type QueueItem<T> = { kind: 'item'; value: T } | { kind: 'lost'; count: number };

export class BoundedQueue<T> {
  readonly #items: T[] = [];
  /** Drops owed before #items[i] (sparse: only where a gap happened). */
  readonly #lostBefore = new Map<T, number>();
  #pendingLost = 0;
  #totalLost = 0;
  #wake: (() => void) | undefined;
  #closed = false;
  /** Resolvers waiting for the consumer to take something (waitForRoom). */
  #takeWaiters: Array<() => void> = [];

  constructor(readonly capacity: number) {
    if (capacity < 1) throw new RangeError('capacity must be >= 1');
  }

  /** Never blocks: queues the item, or counts it as lost when the queue is full. */
  push(value: T): void {
    if (this.#closed) return;
    if (this.#items.length >= this.capacity) {
      this.#pendingLost++;
      this.#totalLost++;
    } else {
      if (this.#pendingLost > 0) {
        this.#lostBefore.set(value, this.#pendingLost);
        this.#pendingLost = 0;
      }
      this.#items.push(value);
    }
    this.#notify();
  }

  get size(): number {
    return this.#items.length;
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
      const head = this.#items[0];
      if (head !== undefined) {
        const lost = this.#lostBefore.get(head);
        if (lost !== undefined) {
          this.#lostBefore.delete(head);
          return { kind: 'lost', count: lost };
        }
        this.#items.shift();
        this.#tookOne();
        return { kind: 'item', value: head };
      }
      if (this.#pendingLost > 0) {
        const count = this.#pendingLost;
        this.#pendingLost = 0;
        return { kind: 'lost', count };
      }
      if (this.#closed) return undefined;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /**
   * Waits until `room` items fit, as long as the consumer keeps taking: returns at once
   * when there is room or the queue is closed, and gives up (returns false) when nothing
   * was taken for `stallMs`. A producer that paces itself with this never overruns a
   * consumer that keeps up, and is never held up for long by one that has stalled.
   */
  async waitForRoom(room: number, stallMs: number): Promise<boolean> {
    while (!this.#closed && this.capacity - this.#items.length < room) {
      const progressed = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          this.#takeWaiters = this.#takeWaiters.filter((w) => w !== onTake);
          resolve(false);
        }, stallMs);
        const onTake = (): void => {
          clearTimeout(timer);
          resolve(true);
        };
        this.#takeWaiters.push(onTake);
      });
      if (!progressed) return false;
    }
    return true;
  }

  #tookOne(): void {
    const waiters = this.#takeWaiters;
    this.#takeWaiters = [];
    for (const w of waiters) w();
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
