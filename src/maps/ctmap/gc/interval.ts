/**
 * The adaptive CT GC interval (facts §6, Cilium's rule): pure arithmetic, no timers, so the
 * scheduler and its tests agree on one definition. All durations are in seconds.
 */

import { GC_INITIAL_INTERVAL_SECONDS, GC_MAX_INTERVAL_SECONDS, GC_MIN_INTERVAL_SECONDS } from '../../../config/defaults';

// Cilium's bounds (config/defaults.ts): the interval before the first pass has taught us
// anything (5 min), the floor (never collect more often than every 10 s, however full the
// maps are) and the default upper bound for LRU maps (12 h: LRU eviction keeps them usable
// between passes).

/** Above this deleted/max_entries ratio the maps filled up too much: shorten the interval. */
const SHRINK_ABOVE = 0.25;
/** Below this ratio the pass was mostly wasted work: lengthen the interval. */
const GROW_BELOW = 0.05;
/** Shrink by at most 90%, so one extreme pass cannot collapse the interval to the floor. */
const MAX_SHRINK_RATIO = 0.9;
const GROWTH = 1.5;

export interface IntervalInput {
  /** The interval in force before this pass ("prev"; also the expected time between passes). */
  readonly previousSeconds: number;
  /** Largest deleted / max_entries over the maps of the pass (GCRunResult.ratio), >= 0. */
  readonly ratio: number;
  /**
   * Only for a pass that a signal started early: seconds from the previous pass to this one.
   * When 0 < elapsed < previousSeconds the ratio is scaled up by previous/elapsed, because
   * the same deletions in less time mean the maps fill faster than the ratio alone says.
   * Omit for periodic passes (a timer firing a few ms early is not an early run).
   */
  readonly elapsedSeconds?: number;
  /** --conntrack-gc-interval: when set, it is the answer and nothing adapts. */
  readonly fixedSeconds?: number;
  /** --conntrack-gc-max-interval; undefined = GC_MAX_INTERVAL_SECONDS. Must be >= 10. */
  readonly maxSeconds?: number;
}

/**
 * The interval to wait after this pass, in whole seconds.
 *
 * fixedSeconds wins when set. Otherwise, with r = ratio (scaled for an early run, see
 * IntervalInput.elapsedSeconds): r > 0.25 -> prev × (1 − min(r, 0.9)), at least 10 s;
 * r < 0.05 -> prev × 1.5; 0.05 <= r <= 0.25 -> prev. The result is rounded to 1 s and
 * never exceeds the max (also when prev itself was above a max lowered since). Example:
 * (60 s, 0.40) -> 36 s. Throws RangeError on a negative or non-finite input, or a max
 * below the 10 s floor.
 */
export function nextInterval(input: IntervalInput): number {
  const { previousSeconds: prev, fixedSeconds, elapsedSeconds } = input;
  if (fixedSeconds !== undefined) {
    requirePositive('fixedSeconds', fixedSeconds);
    return fixedSeconds;
  }
  requirePositive('previousSeconds', prev);
  if (!Number.isFinite(input.ratio) || input.ratio < 0) throw new RangeError(`ratio: want a finite number >= 0, got ${input.ratio}`);
  const max = maxIntervalSeconds(input.maxSeconds);

  let ratio = input.ratio;
  if (elapsedSeconds !== undefined) {
    if (!Number.isFinite(elapsedSeconds) || elapsedSeconds < 0) throw new RangeError(`elapsedSeconds: want a finite number >= 0, got ${elapsedSeconds}`);
    // elapsed 0 would divide by zero; such a pass tells us nothing about the rate.
    if (elapsedSeconds > 0 && elapsedSeconds < prev) ratio *= prev / elapsedSeconds;
  }

  let next: number;
  if (ratio > SHRINK_ABOVE) {
    next = Math.max(Math.round(prev * (1 - Math.min(ratio, MAX_SHRINK_RATIO))), GC_MIN_INTERVAL_SECONDS);
  } else if (ratio < GROW_BELOW) {
    next = Math.round(prev * GROWTH);
  } else {
    next = Math.round(prev);
  }
  return Math.min(next, max);
}

/** The interval of the first pass: the fixed interval, or 5 min capped at the max. Same errors as nextInterval. */
export function initialInterval(opts: { fixedSeconds?: number; maxSeconds?: number } = {}): number {
  if (opts.fixedSeconds !== undefined) {
    requirePositive('fixedSeconds', opts.fixedSeconds);
    return opts.fixedSeconds;
  }
  return Math.min(GC_INITIAL_INTERVAL_SECONDS, maxIntervalSeconds(opts.maxSeconds));
}

/** The effective upper bound: the flag's value, or 12 h. Throws RangeError below the 10 s floor. */
export function maxIntervalSeconds(maxSeconds?: number): number {
  if (maxSeconds === undefined) return GC_MAX_INTERVAL_SECONDS;
  if (!Number.isFinite(maxSeconds) || maxSeconds < GC_MIN_INTERVAL_SECONDS) {
    throw new RangeError(`maxSeconds: want a number >= ${GC_MIN_INTERVAL_SECONDS}, got ${maxSeconds}`);
  }
  return maxSeconds;
}

function requirePositive(name: string, v: number): void {
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${name}: want a finite number > 0, got ${v}`);
}
