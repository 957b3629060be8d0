/**
 * The periodic CT GC scheduler: one adaptive timer per family (facts §6), early passes on
 * the datapath's fill-up signal, and never two passes over one family at once.
 *
 * Each family owns its due time. Cilium #40820: one shared timer was reset by an
 * IPv4-only signal pass, so under a steady stream of IPv4 signals the IPv6 maps were never
 * collected. Here a pass of one family only ever touches that family's timer, so the
 * other family's schedule is exactly what it would have been without the signals.
 *
 * The scheduler does no GC itself: the injected runPass does (the daemon passes a closure
 * over GCRunner.run with removeExpired), and the injected clock makes it testable in
 * virtual time.
 */
import type { Logger } from 'pino';
import { CtmapError } from '../../../errors';
import type { Family } from '../../addr';
import { initialInterval, maxIntervalSeconds, nextInterval } from './interval';
import type { GCRunResult } from './types';

/**
 * Why a pass ran: the first pass at start(), a due timer, a signal(), or (counted with
 * recordExternalPass, never run by the scheduler) a manual pass, GCRunner.Run.
 */
export type GCPassReason = 'periodic' | 'signal' | 'initial' | 'manual';

/**
 * Who asked for an early pass: a GCRunner.Signal call, or the datapath's fill-up signal
 * (src/datapath/ring-decoder.ts FillUpReason: an insert failed, or the creates since the
 * family's last pass reached --ct-fill-up-share of a map).
 */
export type GCSignalSource = 'api' | 'insert-failed' | 'pressure';
export const GC_SIGNAL_SOURCES: readonly GCSignalSource[] = ['api', 'insert-failed', 'pressure'];

/** What signal() did with the request. */
export type GCSignalOutcome =
  | 'started' // a signal pass for the family was started
  | 'coalesced' // a pass of the family is pending or running (or start() will run one): it serves the signal
  | 'disabled' // the scheduler does not manage this family
  | 'stopped'; // stop() was called

/** Time and timers, injectable so tests run in virtual time. */
export interface SchedulerClock {
  /** Milliseconds since the Unix epoch; must never go backwards. */
  now(): number;
  /** Calls fn once after delayMs (at most 2^31-1; the scheduler splits longer waits). */
  setTimer(fn: () => void, delayMs: number): unknown;
  /** Cancels a timer from setTimer; a handle that already fired or was cleared is a no-op. */
  clearTimer(handle: unknown): void;
}

/**
 * The real clock. now() is monotonic (performance.now() from the process's time origin), so
 * a wall-clock step cannot shorten or stretch an interval; it reads as Unix ms, drifting
 * from the wall clock only by whatever NTP slewed since start. Timers are unref'd: a pending
 * GC never keeps the process alive on its own.
 */
export const systemClock: SchedulerClock = {
  now: () => performance.timeOrigin + performance.now(),
  setTimer: (fn, delayMs) => setTimeout(fn, delayMs).unref(),
  clearTimer: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** setTimeout's largest delay (~24.8 days); a longer fixed interval is waited in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface GCSchedulerOptions {
  /** The enabled families; each gets its own schedule. */
  readonly families: readonly Family[];
  /**
   * One GC pass over every map of `family`. Its result's `ratio` drives the interval. A
   * rejection is logged and the family retried at its current interval. `signal` is aborted
   * by stop({ abort: true }); honouring it is optional.
   */
  readonly runPass: (family: Family, reason: GCPassReason, signal: AbortSignal) => Promise<GCRunResult>;
  /**
   * Runs after a pass that served a signal (the orphan NAT purge, Cilium's
   * PurgeOrphanNATEntries), before the family is rescheduled; errors are logged.
   */
  readonly afterSignal?: (family: Family, signal: AbortSignal) => unknown;
  readonly log: Logger;
  /** Default systemClock. */
  readonly clock?: SchedulerClock;
  /** --conntrack-gc-interval, seconds: a fixed interval, no adaptation. */
  readonly fixedIntervalSeconds?: number;
  /** --conntrack-gc-max-interval, seconds (>= 10); default 12 h. */
  readonly maxIntervalSeconds?: number;
}

/** Scheduler state of one family (the shape of GCFamilyStatus in the proto). */
export interface GCFamilySchedule {
  readonly family: Family;
  /** The interval in force, whole seconds. */
  readonly intervalSeconds: number;
  /** When the last scheduled pass finished (Unix ms, successful or not); 0 = none yet. */
  readonly lastRunUnixMs: number;
  /** When the next periodic pass is due (Unix ms); 0 while a pass runs, before start() and after stop(). */
  readonly nextRunUnixMs: number;
  /** A pass (or its afterSignal hook) is in progress. */
  readonly running: boolean;
  /** Passes that finished (scheduled ones, failed ones, and those given to recordExternalPass). */
  readonly runs: number;
  /** Scheduled passes that failed. */
  readonly failures: number;
  /** Entries deleted by all counted passes. */
  readonly deleted: number;
  /** Entries kept by the last counted pass (summed over its maps). */
  readonly alive: number;
  /** The last counted pass's ratio (max deleted / max_entries). */
  readonly lastRatio: number;
  /** Why the last scheduled pass of the family ran; undefined before the first. */
  readonly lastPassReason?: GCPassReason;
  /** What asked for the last signal pass (the first signal it served); undefined before one. */
  readonly lastSignalSource?: GCSignalSource;
  /** Signals received, by source (coalesced ones included; not those refused after stop). */
  readonly signals: Readonly<Record<GCSignalSource, number>>;
}

export interface GCSchedulerStatus {
  readonly families: GCFamilySchedule[];
  /** --conntrack-gc-interval is set: the interval never adapts. */
  readonly fixedInterval: boolean;
  /** The adaptive interval's upper bound, seconds. */
  readonly maxIntervalSeconds: number;
}

interface FamilyState {
  readonly family: Family;
  intervalSeconds: number;
  /** Clock ms the last scheduled pass finished: the anchor of its due time and of the early-run correction. */
  lastEndMs?: number;
  /** Clock ms the next periodic pass is due; undefined while a pass is in progress. */
  dueMs?: number;
  timer?: unknown;
  /** The pass in progress, from launch until its afterSignal hook is done; never rejects. */
  busy?: Promise<void>;
  /** A signal is waiting for the current (or, before start, the initial) pass: run afterSignal after it. */
  signalled: boolean;
  /** The afterSignal hook is running (a signal now is served by it). */
  inHook: boolean;
  runs: number;
  failures: number;
  deleted: number;
  alive: number;
  lastRatio: number;
  lastPassReason?: GCPassReason;
  lastSignalSource?: GCSignalSource;
  /** Source of the first signal since the last signal pass started. */
  pendingSource?: GCSignalSource;
  signals: Record<GCSignalSource, number>;
}

/**
 * Runs GC passes per family on the adaptive interval. Lifecycle: construct -> start() ->
 * signal() any number of times -> stop(). Never rejects or throws from a timer: every
 * failure of runPass or afterSignal is logged. Passes of different families may overlap
 * (they cover different maps); two passes of one family never do.
 */
export class GCScheduler {
  readonly #opts: GCSchedulerOptions;
  readonly #clock: SchedulerClock;
  readonly #maxSeconds: number;
  readonly #states = new Map<Family, FamilyState>();
  readonly #abort = new AbortController();
  #started = false;
  #stopping?: Promise<void>;

  /** Throws RangeError on an invalid interval option (the config validates them first). */
  constructor(opts: GCSchedulerOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#maxSeconds = maxIntervalSeconds(opts.maxIntervalSeconds);
    const first = initialInterval({ fixedSeconds: opts.fixedIntervalSeconds, maxSeconds: opts.maxIntervalSeconds });
    for (const family of opts.families) {
      this.#states.set(family, {
        family,
        intervalSeconds: first,
        signalled: false,
        inHook: false,
        runs: 0,
        failures: 0,
        deleted: 0,
        alive: 0,
        lastRatio: 0,
        signals: { api: 0, 'insert-failed': 0, pressure: 0 },
      });
    }
  }

  /** Starts an 'initial' pass for every family right away. Idempotent; throws after stop(). */
  start(): void {
    if (this.#stopping) throw new Error('gc scheduler: start after stop');
    if (this.#started) return;
    this.#started = true;
    for (const st of this.#states.values()) this.#launch(st, 'initial');
  }

  /**
   * Asks for an early pass of `family` only (the datapath's "map filling up" signal). The
   * pass starts on a later tick, never inside this call; once it is done, afterSignal runs.
   * A signal that arrives while a pass of the family is pending or running (its hook
   * included) is served by that pass. The other family's schedule is never touched.
   * `source` (default 'api') is counted in the family's status.
   */
  signal(family: Family, source: GCSignalSource = 'api'): GCSignalOutcome {
    const st = this.#states.get(family);
    if (!st) return 'disabled';
    if (this.#stopping) return 'stopped';
    st.signals[source]++;
    st.pendingSource ??= source;
    if (!this.#started || st.busy) {
      // The pending initial pass, or the running one, serves it and its hook runs
      // afterwards; a signal during the hook itself is served by that hook.
      if (!st.inHook) st.signalled = true;
      return 'coalesced';
    }
    this.#launch(st, 'signal');
    return 'started';
  }

  /**
   * Counts a pass run outside the schedule (a GCRunner.Run request) in the family's status:
   * runs, deleted, alive, lastRatio, its end as the last run and 'manual' as the last pass
   * reason. The schedule itself is left alone: the next periodic pass stays due when it
   * was. Unknown family: no-op.
   */
  recordExternalPass(family: Family, result: GCRunResult): void {
    const st = this.#states.get(family);
    if (!st) return;
    count(st, result);
    st.lastEndMs = this.#clock.now();
    st.lastPassReason = 'manual';
  }

  /** A snapshot of every family's schedule and counters, in the order of options.families. */
  status(): GCSchedulerStatus {
    const families = [...this.#states.values()].map((st) => ({
      family: st.family,
      intervalSeconds: st.intervalSeconds,
      lastRunUnixMs: st.lastEndMs === undefined ? 0 : Math.round(st.lastEndMs),
      nextRunUnixMs: st.dueMs === undefined || this.#stopping ? 0 : Math.round(st.dueMs),
      running: st.busy !== undefined,
      runs: st.runs,
      failures: st.failures,
      deleted: st.deleted,
      alive: st.alive,
      lastRatio: st.lastRatio,
      lastPassReason: st.lastPassReason,
      lastSignalSource: st.lastSignalSource,
      signals: { ...st.signals },
    }));
    return { families, fixedInterval: this.#opts.fixedIntervalSeconds !== undefined, maxIntervalSeconds: this.#maxSeconds };
  }

  /**
   * Cancels every timer and resolves once the passes in progress (and their hooks) are
   * done; no pass starts afterwards. With abort, the AbortSignal given to runPass and
   * afterSignal is aborted so a long pass can end early. Idempotent; never rejects.
   */
  stop(opts: { abort?: boolean } = {}): Promise<void> {
    if (opts.abort) this.#abort.abort(new CtmapError('unavailable', 'gc scheduler stopping'));
    if (!this.#stopping) {
      for (const st of this.#states.values()) this.#disarm(st);
      const running = [...this.#states.values()].map((st) => st.busy);
      this.#stopping = Promise.all(running).then(() => undefined);
    }
    return this.#stopping;
  }

  #launch(st: FamilyState, reason: GCPassReason): void {
    this.#disarm(st);
    if (reason === 'signal') {
      st.signalled = true;
      st.lastSignalSource = st.pendingSource;
    }
    st.pendingSource = undefined;
    st.lastPassReason = reason;
    st.busy = this.#pass(st, reason);
  }

  async #pass(st: FamilyState, reason: GCPassReason): Promise<void> {
    // Start on a later tick: signal() is called from RPC handlers, which must not run the
    // synchronous part of a GC pass inline.
    await Promise.resolve();
    const { family } = st;
    const log = this.#opts.log;
    if (this.#stopping) {
      st.busy = undefined;
      st.signalled = false;
      return;
    }
    const startMs = this.#clock.now();
    let endMs = startMs;
    try {
      const previous = st.intervalSeconds;
      // The early-run correction compares the time since this family's own last pass with
      // the interval that was in force; only a signal makes a pass early.
      const elapsedSeconds = reason === 'signal' && st.lastEndMs !== undefined ? (startMs - st.lastEndMs) / 1000 : undefined;
      let result: GCRunResult | undefined;
      try {
        result = await this.#opts.runPass(family, reason, this.#abort.signal);
      } catch (err) {
        st.failures++;
        log.error({ err, family, reason, intervalSeconds: previous }, 'ct gc pass failed; retrying at the current interval');
      }
      endMs = this.#clock.now();
      st.lastEndMs = endMs;
      if (result) {
        count(st, result);
        this.#adapt(st, result, elapsedSeconds, reason, endMs - startMs);
      } else {
        st.runs++;
      }
      if (st.signalled) await this.#afterSignal(st);
    } catch (err) {
      // Only a malformed result gets here; the family must still be rescheduled.
      log.error({ err, family, reason }, 'ct gc: cannot account for a pass; keeping the interval');
    } finally {
      st.busy = undefined;
      st.signalled = false;
      if (!this.#stopping) this.#arm(st, endMs + st.intervalSeconds * 1000);
    }
  }

  async #afterSignal(st: FamilyState): Promise<void> {
    st.signalled = false;
    if (!this.#opts.afterSignal || this.#stopping) return;
    st.inHook = true;
    try {
      await this.#opts.afterSignal(st.family, this.#abort.signal);
    } catch (err) {
      this.#opts.log.error({ err, family: st.family }, 'ct gc: after-signal hook failed');
    } finally {
      st.inHook = false;
    }
  }

  #adapt(st: FamilyState, result: GCRunResult, elapsedSeconds: number | undefined, reason: GCPassReason, durationMs: number): void {
    const log = this.#opts.log;
    const previous = st.intervalSeconds;
    try {
      st.intervalSeconds = nextInterval({
        previousSeconds: previous,
        ratio: result.ratio,
        elapsedSeconds,
        fixedSeconds: this.#opts.fixedIntervalSeconds,
        maxSeconds: this.#opts.maxIntervalSeconds,
      });
    } catch (err) {
      // A malformed ratio from runPass: keep the interval rather than stop collecting.
      log.error({ err, family: st.family, ratio: result.ratio }, 'ct gc: cannot adapt the interval; keeping it');
    }
    const fields = { family: st.family, reason, ratio: result.ratio, deleted: sum(result, 'deleted'), alive: sum(result, 'alive'), durationMs, intervalSeconds: st.intervalSeconds };
    if (st.intervalSeconds !== previous) log.info({ ...fields, previousIntervalSeconds: previous }, 'ct gc interval recalculated');
    else log.debug(fields, 'ct gc pass done');
  }

  /** (Re)arms the family's timer for dueMs, in steps of at most MAX_TIMER_MS. */
  #arm(st: FamilyState, dueMs: number): void {
    this.#disarm(st);
    st.dueMs = dueMs;
    const delay = Math.min(Math.max(0, dueMs - this.#clock.now()), MAX_TIMER_MS);
    st.timer = this.#clock.setTimer(() => this.#onTimer(st), delay);
  }

  #disarm(st: FamilyState): void {
    if (st.timer !== undefined) this.#clock.clearTimer(st.timer);
    st.timer = undefined;
    st.dueMs = undefined;
  }

  #onTimer(st: FamilyState): void {
    st.timer = undefined;
    if (this.#stopping || st.busy || st.dueMs === undefined) return;
    if (this.#clock.now() < st.dueMs) return this.#arm(st, st.dueMs); // a step of a long wait
    this.#launch(st, 'periodic');
  }
}

function count(st: FamilyState, result: GCRunResult): void {
  st.runs++;
  st.deleted += sum(result, 'deleted');
  st.alive = sum(result, 'alive');
  st.lastRatio = result.ratio;
}

function sum(result: GCRunResult, field: 'alive' | 'deleted'): number {
  return result.maps.reduce((n, m) => n + m[field], 0);
}
