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
 *
 * Backend-neutral (the MapBackend interface, no libbpf): the memory backend keeps the
 * same maps in process, where nothing counts into them.
 */
import * as path from 'node:path';
import type { Logger } from 'pino';
import { CT_DATAPATH_CONFIG, CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS } from '../maps/ctmap/layout';
import { globalsDir } from '../maps/cluster-spec';
import { openOrCreate } from '../maps/open';
import { BpfMap, MapBackend, MapSpec, MapType } from '../maps/types';
import { CT_DATAPATH_CONFIG_MAP, CT_DATAPATH_STATS_MAP, DatapathSettings, decodeDatapathSettings, encodeDatapathSettings } from './settings';

/** One counter of struct ct_datapath_stats. */
export type DatapathCounter = (typeof CT_DATAPATH_STATS_COUNTERS)[number];

/** The counters summed over every CPU's copy. */
export type DatapathCounters = Readonly<Record<DatapathCounter, bigint>>;

/** The specs of the two side maps under `bpfRoot` (pure). */
export function datapathSideMapSpecs(bpfRoot: string): { stats: MapSpec; config: MapSpec } {
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
  };
}

/**
 * Sums a per-CPU stats value (`value`: every possible CPU's struct ct_datapath_stats, each
 * at a multiple of the 8-byte-rounded struct size) counter by counter.
 */
export function sumDatapathStats(value: Buffer): DatapathCounters {
  const stride = Math.ceil(CT_DATAPATH_STATS.size / 8) * 8;
  const cpus = Math.floor(value.length / stride);
  const out = {} as Record<DatapathCounter, bigint>;
  for (const name of CT_DATAPATH_STATS_COUNTERS) {
    const off = CT_DATAPATH_STATS.fields[name].offset;
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
    const stats = openOrCreate(backend, specs.stats, log).map;
    let config: BpfMap;
    try {
      config = openOrCreate(backend, specs.config, log).map;
    } catch (err) {
      stats.close();
      throw err;
    }
    const self = new DatapathSideMaps(stats, config);
    try {
      const before = config.lookup(SLOT0)!;
      if (!before.equals(value)) {
        const previous = before.every((b) => b === 0) ? undefined : decodeDatapathSettings(before);
        log.info({ previous, settings }, 'datapath settings written (a datapath loaded from now on uses them)');
      }
      config.update(SLOT0, value);
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

  /** The settings the config map holds. */
  settings(): DatapathSettings {
    return decodeDatapathSettings(this.config.lookup(SLOT0)!);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.stats.close();
    this.config.close();
  }
}
