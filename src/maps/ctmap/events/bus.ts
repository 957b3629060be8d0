/**
 * The CT lifecycle event bus (issue 13, item 3): the one stream every producer publishes
 * into (the datapath's ring reader: NEW / CLOSE; GC passes, CTMaps.Delete and Flush, a
 * cluster leaving: DESTROY) and every client watches (CTEvents over gRPC).
 *
 * Contract:
 * - Every published event gets the next sequence number of its family (1, 2, 3, …), also
 *   when no subscriber sees it (skip() spends numbers without making events), so a gap a
 *   subscriber sees is either a notice it was given or events its kinds filter left out.
 * - Subscribers get batches in publish order per family. Each has a bounded buffer counted
 *   in events; a publish never blocks and never waits for a subscriber: what does not fit
 *   is dropped for that subscriber alone and it is told, at the gap, exactly how many of
 *   the events it asked for it lost (a 'lost' notice, at 'subscriber').
 * - Upstream losses (the datapath ring's in-band count: records the ring could not take)
 *   reach every subscriber of the family, or of every family when the family is unknown,
 *   as a 'lost' notice at 'source', in order with the events around them. Source loss
 *   notices are never dropped (they take no buffer room; consecutive ones add up).
 * - Cheap when nobody listens: `observed` is false and producers skip building events
 *   (they call skip() instead); publish() with no subscriber only counts.
 *
 * rxjs inside: one hot Subject carries sequenced batches and source losses; a subscription
 * is an rxjs subscription that feeds the subscriber's buffer.
 */
import { DEFAULT_CT_EVENTS_BUFFER } from '../../../config/defaults';
import { Subject } from 'rxjs';
import type { Family } from '../../addr';
import type { CtEventInput, CtEventKind, CtLifecycleEvent } from './types';
import { waitWhileConsumerProgresses } from '../../stall-wait';

/** Events buffered per subscriber unless it asks for another bound (--ct-events-buffer's default). */
export const DEFAULT_SUBSCRIBER_BUFFER = DEFAULT_CT_EVENTS_BUFFER;

/** Where events were lost: at this subscriber (it fell behind) or before the bus (the datapath ring). */
export type CtLossPoint = 'subscriber' | 'source';

/** What a subscriber takes: a batch of one family's events, or a loss notice. */
export type CtBusItem =
  | { readonly kind: 'events'; readonly family: Family; readonly events: readonly CtLifecycleEvent[] }
  | {
      readonly kind: 'lost';
      readonly at: CtLossPoint;
      /** undefined: a source loss whose family the source does not know. */
      readonly family: Family | undefined;
      readonly count: number;
    };

/** Which events a subscriber wants. */
export interface CtEventFilter {
  /** Families to receive; undefined or empty = both. */
  readonly families?: readonly Family[];
  /** Kinds to receive; undefined or empty = all. Events left out are neither delivered nor counted as lost. */
  readonly kinds?: readonly CtEventKind[];
  /** Events to receive, tested one by one after families and kinds; left out like those. */
  readonly match?: (event: CtEventInput) => boolean;
}

export interface CtSubscribeOptions extends CtEventFilter {
  /** Events buffered before this subscriber loses some (default DEFAULT_SUBSCRIBER_BUFFER). */
  readonly buffer?: number;
}

/** What travels on the bus's Subject. */
type BusMessage =
  | { readonly kind: 'events'; readonly family: Family; readonly events: readonly CtLifecycleEvent[] }
  | { readonly kind: 'source-loss'; readonly family: Family | undefined; readonly count: number };

export class CtEventBus {
  readonly #subject = new Subject<BusMessage>();
  readonly #sequence: Record<Family, number> = { ipv4: 0, ipv6: 0 };
  readonly #subscriptions = new Set<CtEventSubscription>();
  readonly #sourceLost: Record<Family | 'unknown', number> = { ipv4: 0, ipv6: 0, unknown: 0 };
  #closed = false;

  /** True while at least one subscriber listens: producers build events only then. */
  get observed(): boolean {
    return this.#subscriptions.size > 0;
  }

  /** The sequence number of the family's last published (or skipped) event; 0 before any. */
  lastSequence(family: Family): number {
    return this.#sequence[family];
  }

  /** Source losses reported so far, per family ('unknown': family not known to the source). */
  sourceLost(): Readonly<Record<Family | 'unknown', number>> {
    return { ...this.#sourceLost };
  }

  /**
   * Publishes `events` (any families, any order between families): each gets the next
   * sequence number of its family (ref.family), and subscribers get them in this order per
   * family. Synchronous; never blocks. The inputs' key and entry buffers are kept as they
   * are: a producer hands over buffers it does not reuse.
   */
  publish(events: readonly CtEventInput[]): void {
    if (this.#closed || events.length === 0) return;
    if (!this.observed) {
      for (const e of events) this.#sequence[e.ref.family]++;
      return;
    }
    // One batch per family (most publishes hold one family: then no split is made).
    let v4: CtLifecycleEvent[] | undefined;
    let v6: CtLifecycleEvent[] | undefined;
    for (const e of events) {
      const family = e.ref.family;
      const sequenced: CtLifecycleEvent = { kind: e.kind, reason: e.reason, ref: e.ref, key: e.key, entry: e.entry, sequence: ++this.#sequence[family] };
      if (family === 'ipv4') (v4 ??= []).push(sequenced);
      else (v6 ??= []).push(sequenced);
    }
    if (v4) this.#subject.next({ kind: 'events', family: 'ipv4', events: v4 });
    if (v6) this.#subject.next({ kind: 'events', family: 'ipv6', events: v6 });
  }

  /**
   * Spends `count` sequence numbers of `family` on events a producer did not build because
   * nobody listened (observed was false): a later subscriber's sequence numbers still count
   * every event that happened.
   */
  skip(family: Family, count: number): void {
    if (this.#closed || count <= 0) return;
    this.#sequence[family] += count;
  }

  /**
   * Reports `count` events lost before the bus (the datapath ring's in-band loss count).
   * Every subscriber of `family` (of every family when undefined) is told, in order.
   */
  reportSourceLoss(count: number, family?: Family): void {
    if (this.#closed || !(count > 0)) return;
    this.#sourceLost[family ?? 'unknown'] += count;
    if (this.observed) this.#subject.next({ kind: 'source-loss', family, count });
  }

  /**
   * A new subscriber: gets what is published from now on that passes its filter. Throws
   * RangeError for a buffer that is not an integer >= 1.
   */
  subscribe(opts: CtSubscribeOptions = {}): CtEventSubscription {
    let detach = (): void => undefined;
    const sub = new CtEventSubscription(opts, () => detach());
    if (this.#closed) {
      sub.close();
      return sub;
    }
    const inner = this.#subject.subscribe({ next: (m) => sub.offer(m), complete: () => sub.close() });
    this.#subscriptions.add(sub);
    detach = () => {
      inner.unsubscribe();
      this.#subscriptions.delete(sub);
    };
    return sub;
  }

  /**
   * For a producer that can wait (a GC pass between batches, a bench): resolves once every
   * subscriber that keeps up has room for `events` more. A subscriber that has lost events,
   * or takes nothing for `stallMs`, is not waited for until it has caught up: a stalled
   * client costs a producer one stall period, not one per batch.
   */
  async waitForRoom(events: number, stallMs: number): Promise<void> {
    if (this.#subscriptions.size === 0) return;
    await Promise.all([...this.#subscriptions].map((s) => s.waitForRoom(events, stallMs)));
  }

  /** Ends every subscription (they drain what is buffered) and ignores later publishes. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#subject.complete();
  }
}

/** One buffered thing: a batch of one family's events, or a loss notice. */
type Slot =
  | { kind: 'events'; family: Family; events: readonly CtLifecycleEvent[]; start: number }
  | { kind: 'lost'; at: CtLossPoint; family: Family | undefined; count: number };

/**
 * A subscriber's bounded buffer. Holds batches as they were published (no per-event copy)
 * and counts its bound in events. Not src/server/bounded-queue.ts: that one counts items,
 * not the events inside them, and knows only one kind of loss; this layer may not import
 * the server's anyway.
 */
export class CtEventSubscription {
  readonly capacity: number;
  readonly #families: ReadonlySet<Family> | undefined;
  readonly #kinds: ReadonlySet<CtEventKind> | undefined;
  readonly #match: ((event: CtEventInput) => boolean) | undefined;
  /** A deque: #slots[#head ..] are buffered; compacted when the head passes half. */
  #slots: Slot[] = [];
  #head = 0;
  /** Events buffered (loss notices take no room). */
  #size = 0;
  #totalLost = 0;
  #delivered = 0;
  #closed = false;
  #wake: (() => void) | undefined;
  /** Fell behind (lost events, or a wait gave up on it): waitForRoom does not wait until it has drained. */
  #behind = false;
  #takeWaiters: Array<() => void> = [];

  constructor(
    opts: CtSubscribeOptions,
    private readonly detach: () => void,
  ) {
    const capacity = opts.buffer ?? DEFAULT_SUBSCRIBER_BUFFER;
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`buffer: must be an integer >= 1, got ${capacity}`);
    this.capacity = capacity;
    this.#families = opts.families && opts.families.length > 0 ? new Set(opts.families) : undefined;
    this.#kinds = opts.kinds && opts.kinds.length > 0 ? new Set(opts.kinds) : undefined;
    this.#match = opts.match;
  }

  /** Events this subscriber lost because it fell behind (source losses not included). */
  get totalLost(): number {
    return this.#totalLost;
  }

  /** Events taken so far. */
  get delivered(): number {
    return this.#delivered;
  }

  /** Events buffered now. */
  get size(): number {
    return this.#size;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** @internal The bus hands every message here; the filter, the bound and the loss counts apply. */
  offer(m: BusMessage): void {
    if (this.#closed) return;
    if (m.family !== undefined && this.#families && !this.#families.has(m.family)) return;
    if (m.kind === 'source-loss') {
      this.#addLoss('source', m.family, m.count);
      return;
    }
    let events = m.events;
    if (this.#kinds) {
      const kinds = this.#kinds;
      events = events.filter((e) => kinds.has(e.kind));
      if (events.length === 0) return;
    }
    if (this.#match) {
      events = events.filter(this.#match);
      if (events.length === 0) return;
    }
    const fit = Math.min(events.length, this.capacity - this.#size);
    if (fit > 0) {
      this.#slots.push({ kind: 'events', family: m.family, events: fit === events.length ? events : events.slice(0, fit), start: 0 });
      this.#size += fit;
    }
    if (fit < events.length) {
      this.#totalLost += events.length - fit;
      this.#behind = true;
      this.#addLoss('subscriber', m.family, events.length - fit);
    }
    this.#notify();
  }

  /**
   * A loss notice at the tail: added to a notice of the same point and family among the
   * trailing notices, so that a stalled subscriber's buffer holds a few counters, not one
   * notice per publish.
   */
  #addLoss(at: CtLossPoint, family: Family | undefined, count: number): void {
    for (let i = this.#slots.length - 1; i >= this.#head; i--) {
      const s = this.#slots[i];
      if (s.kind !== 'lost') break;
      if (s.at === at && s.family === family) {
        s.count += count;
        this.#notify();
        return;
      }
    }
    this.#slots.push({ kind: 'lost', at, family, count });
    this.#notify();
  }

  /**
   * The next item: a loss notice, or up to `maxEvents` events of one family (consecutive
   * batches of the same family are joined, a batch longer than that is split). Waits while
   * nothing is buffered; undefined once closed and drained.
   */
  async take(maxEvents = Number.MAX_SAFE_INTEGER): Promise<CtBusItem | undefined> {
    if (!(maxEvents >= 1)) throw new RangeError(`maxEvents: must be >= 1, got ${maxEvents}`);
    for (;;) {
      if (this.#head < this.#slots.length) return this.#takeBuffered(maxEvents);
      if (this.#closed) return undefined;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  #takeBuffered(maxEvents: number): CtBusItem {
    const first = this.#slots[this.#head];
    if (first.kind === 'lost') {
      this.#advance();
      this.#afterTake();
      return { kind: 'lost', at: first.at, family: first.family, count: first.count };
    }
    const family = first.family;
    let out: CtLifecycleEvent[] | undefined;
    let taken = 0;
    while (this.#head < this.#slots.length && taken < maxEvents) {
      const s = this.#slots[this.#head];
      if (s.kind !== 'events' || s.family !== family) break;
      const n = Math.min(s.events.length - s.start, maxEvents - taken);
      // The common case, one whole batch: handed out as published, without a copy.
      if (!out && s.start === 0 && n === s.events.length && !this.#joinsNext(family, n, maxEvents)) {
        this.#advance();
        this.#size -= n;
        this.#delivered += n;
        this.#afterTake();
        return { kind: 'events', family, events: s.events };
      }
      out ??= [];
      for (let i = s.start; i < s.start + n; i++) out.push(s.events[i]);
      taken += n;
      if (s.start + n === s.events.length) this.#advance();
      else s.start += n;
    }
    this.#size -= taken;
    this.#delivered += taken;
    this.#afterTake();
    return { kind: 'events', family, events: out ?? [] };
  }

  /** Whether the slot after the head would be joined to a take of `taken` events so far. */
  #joinsNext(family: Family, taken: number, maxEvents: number): boolean {
    const next = this.#slots[this.#head + 1];
    return taken < maxEvents && next !== undefined && next.kind === 'events' && next.family === family;
  }

  #advance(): void {
    this.#slots[this.#head++] = undefined as unknown as Slot;
    if (this.#head === this.#slots.length) {
      this.#slots = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#slots.length) {
      this.#slots = this.#slots.slice(this.#head);
      this.#head = 0;
    }
  }

  #afterTake(): void {
    if (this.#head >= this.#slots.length) this.#behind = false;
    if (this.#takeWaiters.length > 0) for (const w of [...this.#takeWaiters]) w();
  }

  /** See CtEventBus.waitForRoom: resolves true when `events` fit, false when it gave up on this subscriber. */
  waitForRoom(events: number, stallMs: number): Promise<boolean> {
    const fits = () => this.#closed || this.capacity - this.#size >= Math.min(events, this.capacity);
    if (fits()) return Promise.resolve(true);
    if (this.#behind) return Promise.resolve(false);
    return waitWhileConsumerProgresses({
      fits,
      progress: () => this.#delivered,
      stallMs,
      onTake: (fn) => {
        this.#takeWaiters.push(fn);
        return () => void (this.#takeWaiters = this.#takeWaiters.filter((w) => w !== fn));
      },
      onStall: () => void (this.#behind = true),
    });
  }

  /** Unsubscribes: take() drains what is buffered, then returns undefined. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.detach();
    this.#notify();
    if (this.#takeWaiters.length > 0) for (const w of [...this.#takeWaiters]) w();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
