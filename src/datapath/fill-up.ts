/**
 * The daemon's half of the fill-up PRESSURE signal (bpf/ct_events.h struct
 * ct_pressure_config): a program signals each time its CPU's create counter for a map
 * reaches a multiple of its step, which says only "look now". Whether the entries created
 * since the family's last GC pass reached --ct-fill-up-share of the map is decided here,
 * from every CPU's counters (creates_<kind><4|6> of ctmapd_ct_stats) minus what they were
 * when that pass started: a per-family baseline instead of an epoch the programs would
 * have to read on every create.
 */
import type { Family } from '../maps/addr';
import type { CtKind } from '../maps/ctmap/spec';
import { CREATES_COUNTER, DatapathCounters, FillUpThresholds } from './side-maps';

export class FillUpPressure {
  readonly #baseline = new Map<Family, DatapathCounters>();

  /**
   * `counters` reads the summed datapath counters (DatapathSideMaps.counters);
   * `thresholds` are the creates per kind that make a fill-up (DatapathSideMaps.thresholds).
   * The baseline of every family starts at the counters as they are now.
   */
  constructor(
    private readonly counters: () => DatapathCounters,
    readonly thresholds: FillUpThresholds,
    families: readonly Family[],
  ) {
    const now = counters();
    for (const f of families) this.#baseline.set(f, now);
  }

  /**
   * A GC pass of `family` starts: creates count from here. At the start, not the end:
   * entries created while the pass ran may not have been seen by it.
   */
  passStarted(family: Family): void {
    this.#baseline.set(family, this.counters());
  }

  /** Entries created in `family`'s maps since its last pass started, by kind. */
  createdSincePass(family: Family, now: DatapathCounters = this.counters()): Record<CtKind, bigint> {
    const base = this.#baseline.get(family) ?? now;
    const c = CREATES_COUNTER[family];
    return { tcp: now[c.tcp] - base[c.tcp], any: now[c.any] - base[c.any] };
  }

  /** Whether the creates in `family`'s `kind` maps since its last pass reached the share. */
  reached(family: Family, kind: CtKind, now?: DatapathCounters): boolean {
    return this.createdSincePass(family, now)[kind] >= BigInt(this.thresholds[kind]);
  }
}
