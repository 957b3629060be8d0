/**
 * The datapath's side maps, owned by the daemon and pinned next to the CT maps under
 * <bpf-root>/tc/globals (issue 5):
 *
 * - `ctmapd_ct_stats` (PERCPU_ARRAY, 1 slot, struct ct_datapath_stats): the programs'
 *   counters. The daemon pins it so that every loaded datapath counts into the one map it
 *   reads for ActiveMaps and the metrics.
 * - `ctmapd_datapath_config` (ARRAY, 1 slot, struct ct_datapath_config): the settings the
 *   daemon's flags ask for (datapathSettingsFrom), rewritten at every start, so a
 *   datapath loaded later (ctmap datapath attach) runs with the daemon's timeouts,
 *   families and ClusterIDMax.
 * - `ctmapd_fate_stats` (PERCPU_ARRAY, 1 slot, struct ct_fate_stats of bpf/ct_fate.h): the
 *   counters of socket fate-sharing (bpf/ct_fate.bpf.c, `ctmap fate attach`), likewise
 *   one map for every loaded fate program (issue 13 item 1).
 *
 * Backend-neutral (the MapBackend interface, no libbpf): the memory backend keeps the
 * same maps in process, where nothing counts into them.
 */
import * as path from 'node:path';
import type { Logger } from 'pino';
import { CT_DATAPATH_CONFIG, CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS, CT_FATE_STATS, CT_FATE_STATS_COUNTERS } from '../maps/ctmap/layout';
import { globalsDir } from '../maps/cluster-spec';
import { openOrCreate } from '../maps/open';
import { BpfMap, MapBackend, MapSpec, MapType } from '../maps/types';
import { CT_DATAPATH_CONFIG_MAP, CT_DATAPATH_STATS_MAP, CT_FATE_STATS_MAP, DatapathSettings, decodeDatapathSettings, encodeDatapathSettings } from './settings';

/** One counter of struct ct_datapath_stats. */
export type DatapathCounter = (typeof CT_DATAPATH_STATS_COUNTERS)[number];

/** The counters summed over every CPU's copy. */
export type DatapathCounters = Readonly<Record<DatapathCounter, bigint>>;

/** One counter of struct ct_fate_stats. */
export type FateCounter = (typeof CT_FATE_STATS_COUNTERS)[number];

/** The fate-sharing counters summed over every CPU's copy. */
export type FateCounters = Readonly<Record<FateCounter, bigint>>;

/** The specs of the side maps under `bpfRoot` (pure). */
export function datapathSideMapSpecs(bpfRoot: string): { stats: MapSpec; config: MapSpec; fateStats: MapSpec } {
  const dir = globalsDir(bpfRoot);
  return {
    stats: {
      name: CT_DATAPATH_STATS_MAP,
      type: MapType.PERCPU_ARRAY,
      keySize: 4,
      valueSize: CT_DATAPATH_STATS.size,
      maxEntries: 1,
      flags: 0,
      pinPath: path.join(dir, CT_DATAPATH_STATS_MAP),
    },
    config: {
      name: CT_DATAPATH_CONFIG_MAP,
      type: MapType.ARRAY,
      keySize: 4,
      valueSize: CT_DATAPATH_CONFIG.size,
      maxEntries: 1,
      flags: 0,
      pinPath: path.join(dir, CT_DATAPATH_CONFIG_MAP),
    },
    fateStats: {
      name: CT_FATE_STATS_MAP,
      type: MapType.PERCPU_ARRAY,
      keySize: 4,
      valueSize: CT_FATE_STATS.size,
      maxEntries: 1,
      flags: 0,
      pinPath: path.join(dir, CT_FATE_STATS_MAP),
    },
  };
}

/**
 * Sums a per-CPU stats value (`value`: every possible CPU's struct ct_datapath_stats, each
 * at a multiple of the 8-byte-rounded struct size) counter by counter.
 */
export function sumDatapathStats(value: Buffer): DatapathCounters {
  return sumPerCpu(value, CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS);
}

/** sumDatapathStats for struct ct_fate_stats. */
export function sumFateStats(value: Buffer): FateCounters {
  return sumPerCpu(value, CT_FATE_STATS, CT_FATE_STATS_COUNTERS);
}

function sumPerCpu<N extends string>(value: Buffer, layout: { size: number; fields: Record<string, { offset: number }> }, names: readonly N[]): Record<N, bigint> {
  const stride = Math.ceil(layout.size / 8) * 8;
  const cpus = Math.floor(value.length / stride);
  const out = {} as Record<N, bigint>;
  for (const name of names) {
    const off = layout.fields[name].offset;
    let sum = 0n;
    for (let c = 0; c < cpus; c++) sum += value.readBigUInt64LE(c * stride + off);
    out[name] = sum;
  }
  return out;
}

const SLOT0 = Buffer.alloc(4);

/** The daemon's side maps, open. close() (idempotent) closes them; the pins stay. */
export class DatapathSideMaps {
  #closed = false;

  private constructor(
    readonly stats: BpfMap,
    readonly config: BpfMap,
    readonly fateStats: BpfMap,
  ) {}

  /**
   * Opens (or creates and pins: openOrCreate) both maps under <bpfRoot>/tc/globals and
   * writes `settings` into the config map, logging when they differ from what an earlier
   * start wrote. Counters survive a restart with an unchanged layout; a pinned map of
   * another layout is refused (failed-precondition, see openOrCreate). Throws CtmapError
   * from the backend, or invalid-argument for settings the datapath cannot take.
   */
  static open(backend: MapBackend, bpfRoot: string, settings: DatapathSettings, log: Logger): DatapathSideMaps {
    const value = encodeDatapathSettings(settings);
    const specs = datapathSideMapSpecs(bpfRoot);
    const opened: BpfMap[] = [];
    try {
      for (const spec of [specs.stats, specs.config, specs.fateStats]) opened.push(openOrCreate(backend, spec, log).map);
    } catch (err) {
      for (const m of opened) m.close();
      throw err;
    }
    const self = new DatapathSideMaps(opened[0], opened[1], opened[2]);
    try {
      const before = self.config.lookup(SLOT0)!;
      if (!before.equals(value)) {
        const previous = before.every((b) => b === 0) ? undefined : decodeDatapathSettings(before);
        log.info({ previous, settings }, 'datapath settings written (a datapath loaded from now on uses them)');
      }
      self.config.update(SLOT0, value);
    } catch (err) {
      self.close();
      throw err;
    }
    return self;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The programs' counters summed over the CPUs. Throws CtmapError after close(). */
  counters(): DatapathCounters {
    return sumDatapathStats(this.stats.lookup(SLOT0)!);
  }

  /** The fate-sharing counters summed over the CPUs. Throws CtmapError after close(). */
  fateCounters(): FateCounters {
    return sumFateStats(this.fateStats.lookup(SLOT0)!);
  }

  /** The settings the config map holds. */
  settings(): DatapathSettings {
    return decodeDatapathSettings(this.config.lookup(SLOT0)!);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.stats.close();
    this.config.close();
    this.fateStats.close();
  }
}
