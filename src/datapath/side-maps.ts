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
 *   one map for every loaded fate program.
 * - `ctmapd_ct_events` (RINGBUF, --ct-events-ring-size bytes; kernel backend only): the
 *   datapath's records for the daemon (bpf/ct_events.h), read by ./ring-reader.ts. Its
 *   contents are transient, so a pin of another size (the flag changed) is replaced, not
 *   refused; a datapath loaded earlier keeps writing into the old ring until it is loaded
 *   again (`ctmap datapath reattach`), which is logged.
 * - `ctmapd_ct_pressure` (ARRAY, 1 slot, struct ct_pressure_config): the per-CPU step at
 *   which the programs send a fill-up PRESSURE signal, from --ct-fill-up-share, the CT map
 *   sizes and the CPU count (fillUpSteps), rewritten at every start.
 *
 * Backend-neutral (the MapBackend interface, no libbpf): the memory backend keeps the
 * same maps in process, where nothing counts into them (and has no ring).
 */
import * as path from 'node:path';
import type { Logger } from 'pino';
import { CT_DATAPATH_CONFIG, CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS, CT_DATAPATH_STATS_OFFSETS, CT_FATE_STATS, CT_FATE_STATS_COUNTERS } from '../maps/ctmap/layout';
import { globalsDir } from '../maps/cluster-spec';
import { openOrCreate, openPinned } from '../maps/open';
import { BpfMap, MapBackend, MapSpec, MapType } from '../maps/types';
import { CT_PRESSURE_CONFIG } from '../maps/ctmap/events/layout';
import type { CtKind } from '../maps/ctmap/spec';
import type { Family } from '../maps/addr';
import { invalidArgument } from '../errors';
import type { Config } from '../config/config';
import { DEFAULT_CT_ANY_MAX, DEFAULT_CT_EVENTS_RING_SIZE, DEFAULT_CT_FILL_UP_SHARE, DEFAULT_CT_TCP_MAX } from '../config/defaults';
import { possibleCpus } from '../sys/cpus';
import type { Fd } from '../sys/fd';
import {
  CT_DATAPATH_CONFIG_MAP,
  CT_DATAPATH_STATS_MAP,
  CT_EVENTS_RING_MAP,
  CT_FATE_STATS_MAP,
  CT_PRESSURE_MAP,
  DatapathSettings,
  decodeDatapathSettings,
  encodeDatapathSettings,
} from './settings';

/** One counter of struct ct_datapath_stats. */
export type DatapathCounter = (typeof CT_DATAPATH_STATS_COUNTERS)[number];

/** The counters summed over every CPU's copy. */
export type DatapathCounters = Readonly<Record<DatapathCounter, bigint>>;

/** One counter of struct ct_fate_stats. */
export type FateCounter = (typeof CT_FATE_STATS_COUNTERS)[number];

/** The fate-sharing counters summed over every CPU's copy. */
export type FateCounters = Readonly<Record<FateCounter, bigint>>;

/** What the event ring and the fill-up steps are made from (the daemon's flags). */
export interface EventSideMapOptions {
  /** --ct-events-ring-size: bytes, a power of two of at least a page. */
  readonly ringSize: number;
  /** --ct-fill-up-share: percent (1..100) of a map created since its last pass that signals. */
  readonly fillUpShare: number;
  /** max_entries of the TCP and non-TCP CT maps (--bpf-ct-global-tcp-max / -any-max). */
  readonly ctTcpMax: number;
  readonly ctAnyMax: number;
  /** Possible CPUs: each has its own create counters. */
  readonly cpus: number;
}

/** The options ctmapd's flags ask for (the daemon's and the bench's one source). */
export function eventSideMapOptionsFrom(
  config: Pick<Config, 'ctEventsRingSize' | 'ctFillUpShare' | 'bpfCtGlobalTcpMax' | 'bpfCtGlobalAnyMax'>,
  cpus = possibleCpus(),
): EventSideMapOptions {
  return { ringSize: config.ctEventsRingSize, fillUpShare: config.ctFillUpShare, ctTcpMax: config.bpfCtGlobalTcpMax, ctAnyMax: config.bpfCtGlobalAnyMax, cpus };
}

/** A daemon started without flags. */
const DEFAULT_EVENT_OPTIONS: Omit<EventSideMapOptions, 'cpus'> = Object.freeze({
  ringSize: DEFAULT_CT_EVENTS_RING_SIZE,
  fillUpShare: DEFAULT_CT_FILL_UP_SHARE,
  ctTcpMax: DEFAULT_CT_TCP_MAX,
  ctAnyMax: DEFAULT_CT_ANY_MAX,
});
const DEFAULT_RING_SIZE = DEFAULT_CT_EVENTS_RING_SIZE;

/**
 * The specs of the side maps under `bpfRoot` (pure); the ring gets `ringSize` bytes
 * (default --ct-events-ring-size's default).
 */
export function datapathSideMapSpecs(
  bpfRoot: string,
  ringSize = DEFAULT_RING_SIZE,
): { stats: MapSpec; config: MapSpec; fateStats: MapSpec; events: MapSpec; pressure: MapSpec } {
  const dir = globalsDir(bpfRoot);
  return {
    fateStats: {
      name: CT_FATE_STATS_MAP,
      type: MapType.PERCPU_ARRAY,
      keySize: 4,
      valueSize: CT_FATE_STATS.size,
      maxEntries: 1,
      flags: 0,
      pinPath: path.join(dir, CT_FATE_STATS_MAP),
    },
    events: {
      name: CT_EVENTS_RING_MAP,
      type: MapType.RINGBUF,
      keySize: 0,
      valueSize: 0,
      maxEntries: ringSize,
      flags: 0,
      pinPath: path.join(dir, CT_EVENTS_RING_MAP),
    },
    pressure: {
      name: CT_PRESSURE_MAP,
      type: MapType.ARRAY,
      keySize: 4,
      valueSize: CT_PRESSURE_CONFIG.size,
      maxEntries: 1,
      flags: 0,
      pinPath: path.join(dir, CT_PRESSURE_MAP),
    },
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
  return sumCounters(datapathStatsPerCpu(value), CT_DATAPATH_STATS_COUNTERS);
}

/** sumDatapathStats for struct ct_fate_stats. */
export function sumFateStats(value: Buffer): FateCounters {
  return sumCounters(fateStatsPerCpu(value), CT_FATE_STATS_COUNTERS);
}

/**
 * The same value CPU by CPU: element i is CPU i's copy (what sumDatapathStats adds up), one
 * per possible CPU the value holds.
 */
export function datapathStatsPerCpu(value: Buffer): DatapathCounters[] {
  return decodePerCpu(value, CT_DATAPATH_STATS.size, CT_DATAPATH_STATS_COUNTERS, (name) => CT_DATAPATH_STATS_OFFSETS[name]);
}

/** datapathStatsPerCpu for struct ct_fate_stats. */
export function fateStatsPerCpu(value: Buffer): FateCounters[] {
  return decodePerCpu(value, CT_FATE_STATS.size, CT_FATE_STATS_COUNTERS, (name) => CT_FATE_STATS.fields[name].offset);
}

/** The one decoder of a per-CPU value: the kernel rounds each CPU's copy up to 8 bytes. */
function decodePerCpu<N extends string>(value: Buffer, size: number, names: readonly N[], offsetOf: (name: N) => number): Array<Record<N, bigint>> {
  const stride = Math.ceil(size / 8) * 8;
  const cpus = Math.floor(value.length / stride);
  const out: Array<Record<N, bigint>> = [];
  for (let c = 0; c < cpus; c++) {
    const one = {} as Record<N, bigint>;
    for (const name of names) one[name] = value.readBigUInt64LE(c * stride + offsetOf(name));
    out.push(one);
  }
  return out;
}

function sumCounters<N extends string>(perCpu: ReadonlyArray<Record<N, bigint>>, names: readonly N[]): Record<N, bigint> {
  const out = {} as Record<N, bigint>;
  for (const name of names) out[name] = perCpu.reduce<bigint>((sum, c) => sum + c[name], 0n);
  return out;
}

/**
 * How many creates one CPU makes between two PRESSURE signals, for a map of `maxEntries`:
 * the largest power of two <= share / (cpus * 8), at least 2. After the entries created since
 * the last pass reached the share (`threshold`), the next signal comes within
 * cpus * step <= threshold / 8 more creates: some CPU reaches its next multiple by then.
 * Throws invalid-argument naming the option for values out of range.
 */
export function fillUpStep(maxEntries: number, sharePercent: number, cpus: number): { step: number; threshold: number } {
  if (!Number.isInteger(sharePercent) || sharePercent < 1 || sharePercent > 100) throw invalidArgument('ct-fill-up-share', `${sharePercent}: a percent, 1..100`);
  if (!Number.isInteger(cpus) || cpus < 1) throw invalidArgument('cpus', `${cpus}`);
  if (!Number.isInteger(maxEntries) || maxEntries < 1) throw invalidArgument('maxEntries', `${maxEntries}`);
  const threshold = Math.max(1, Math.floor((maxEntries * sharePercent) / 100));
  let step = 2;
  while (step * 2 <= threshold / (cpus * 8)) step *= 2;
  return { step, threshold };
}

/** The fill-up share threshold of each CT map kind: creates since the last pass that ask for one. */
export type FillUpThresholds = Readonly<Record<CtKind, number>>;

/** struct ct_pressure_config for these options (the same steps for both families). */
export function encodePressureConfig(o: EventSideMapOptions): Buffer {
  const f = CT_PRESSURE_CONFIG.fields;
  const buf = Buffer.alloc(CT_PRESSURE_CONFIG.size);
  const tcp = fillUpStep(o.ctTcpMax, o.fillUpShare, o.cpus).step - 1;
  const any = fillUpStep(o.ctAnyMax, o.fillUpShare, o.cpus).step - 1;
  buf.writeUInt32LE(tcp, f.step_mask_tcp4.offset);
  buf.writeUInt32LE(any, f.step_mask_any4.offset);
  buf.writeUInt32LE(tcp, f.step_mask_tcp6.offset);
  buf.writeUInt32LE(any, f.step_mask_any6.offset);
  return buf;
}

/** The counters that count a family's flow entries, by kind. */
export const CREATES_COUNTER: Readonly<Record<Family, Readonly<Record<CtKind, DatapathCounter>>>> = Object.freeze({
  ipv4: { tcp: 'creates_tcp4', any: 'creates_any4' },
  ipv6: { tcp: 'creates_tcp6', any: 'creates_any6' },
});

const SLOT0 = Buffer.alloc(4);

/** The daemon's side maps, open. close() (idempotent) closes them; the pins stay. */
export class DatapathSideMaps {
  #closed = false;

  private constructor(
    readonly stats: BpfMap,
    readonly config: BpfMap,
    readonly fateStats: BpfMap,
    readonly pressure: BpfMap,
    /** The event ring (kernel backend only). */
    readonly events: BpfMap | undefined,
    /** Creates since the last pass that make a fill-up, by kind (the share of each map). */
    readonly thresholds: FillUpThresholds,
  ) {}

  /**
   * Opens (or creates and pins: openOrCreate) the side maps under <bpfRoot>/tc/globals
   * (the ring on the kernel backend only, replaced when its size changed: openRing),
   * writes `settings` into the config map, logging when they differ from what an earlier
   * start wrote, and the fill-up steps `events` asks for (default: the flags' defaults)
   * into the pressure map. Counters survive a restart with an unchanged layout; a pinned map of
   * another layout is refused (failed-precondition, see openOrCreate). Throws CtmapError
   * from the backend, or invalid-argument for settings the datapath cannot take.
   */
  static open(
    backend: MapBackend,
    bpfRoot: string,
    settings: DatapathSettings,
    log: Logger,
    events: EventSideMapOptions = { ...DEFAULT_EVENT_OPTIONS, cpus: possibleCpus() },
  ): DatapathSideMaps {
    const value = encodeDatapathSettings(settings);
    const pressureValue = encodePressureConfig(events);
    const specs = datapathSideMapSpecs(bpfRoot, events.ringSize);
    const opened: BpfMap[] = [];
    let self: DatapathSideMaps;
    try {
      const stats = openOrCreate(backend, specs.stats, log).map;
      opened.push(stats);
      const config = openOrCreate(backend, specs.config, log).map;
      opened.push(config);
      const fateStats = openOrCreate(backend, specs.fateStats, log).map;
      opened.push(fateStats);
      const pressure = openOrCreate(backend, specs.pressure, log).map;
      opened.push(pressure);
      const ring = backend.name === 'kernel' ? openRing(backend, specs.events, log) : undefined;
      if (ring) opened.push(ring);
      const thresholds = {
        tcp: fillUpStep(events.ctTcpMax, events.fillUpShare, events.cpus).threshold,
        any: fillUpStep(events.ctAnyMax, events.fillUpShare, events.cpus).threshold,
      };
      self = new DatapathSideMaps(stats, config, fateStats, pressure, ring, thresholds);
    } catch (err) {
      for (const m of opened) m.close();
      throw err;
    }
    try {
      self.pressure.update(SLOT0, pressureValue);
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

  /** The programs' counters per possible CPU (element i: CPU i). Throws CtmapError after close(). */
  countersPerCpu(): DatapathCounters[] {
    return datapathStatsPerCpu(this.stats.lookup(SLOT0)!);
  }

  /** The fate-sharing counters per possible CPU. Throws CtmapError after close(). */
  fateCountersPerCpu(): FateCounters[] {
    return fateStatsPerCpu(this.fateStats.lookup(SLOT0)!);
  }

  /**
   * The event ring's fd and size (kernel backend only; undefined on memory): what
   * RingReader.open takes. The fd stays this object's, closed by close().
   */
  eventRing(): { fd: Fd; size: number } | undefined {
    // Duck-typed: importing KernelMap would load libbpf, which this module must not need.
    const ring = this.events as (BpfMap & { readonly fd?: Fd }) | undefined;
    if (!ring?.fd) return undefined;
    return { fd: ring.fd, size: ring.spec.maxEntries };
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
    this.pressure.close();
    this.events?.close();
  }
}

/**
 * Opens the pinned ring, or creates it; a pinned ring of another size is unpinned and
 * replaced (its records are transient), with a warning naming what still writes to it.
 */
function openRing(backend: MapBackend, spec: MapSpec, log: Logger): BpfMap {
  const pinned = openPinned(backend, spec);
  if (pinned && pinned.mismatches.length === 0) return pinned.map;
  if (pinned) {
    pinned.map.close();
    backend.unpin(spec.pinPath!);
    log.warn(
      { map: spec.name, pin: spec.pinPath, differs: pinned.mismatches },
      'event ring replaced: datapaths loaded before keep writing into the old ring until reloaded (ctmap datapath reattach)',
    );
  }
  return openOrCreate(backend, spec, log).map;
}
