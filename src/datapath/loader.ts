/**
 * Loads bpf/ct_datapath.bpf.c over the maps the daemon pinned: read the daemon's settings
 * (its ctmapd_datapath_config map) -> open -> configure (reuse every pinned map, the
 * ctmapd_ct_stats counters, the ctmapd_ct_events ring and the ctmapd_ct_pressure steps included, write the .rodata settings) -> load. The object never creates a CT
 * map of its own ("no second copy", issue 5): a map the daemon manages is reused from
 * <bpf-root>/tc/globals, and a family the daemon does not manage (--enable-ipv6=false)
 * gets a one-entry placeholder and is switched off in the settings, so its packets pass
 * untracked and are counted as skipped.
 *
 * The per-cluster outer maps (cilium_per_cluster_ct_*) are reused when pinned. Before any
 * cluster has joined, or after CleanupPerClusterCTMaps removed them, each gets a one-slot
 * placeholder, so every cluster id finds no inner map and the program counts
 * cluster_map_missing. A loaded program keeps the outer maps it was loaded with: outer maps
 * the daemon creates afterwards are seen only by a program loaded after them.
 *
 * Attaching the loaded programs to a device is the caller's (src/datapath/attach.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bpfObjectPath } from '../config/paths';
import { CtmapError } from '../errors';
import { BpfObject, BpfObjectMap, BpfProgram } from '../sys/object';
import { globalsDir } from '../maps/cluster-spec';
import { KernelMap, kernelBackend } from '../maps/kernel';
import { openPinned } from '../maps/open';
import type { MapSpec, MapTypeValue } from '../maps/types';
import {
  CT_DATAPATH_CLUSTER_MAPS,
  CT_DATAPATH_FAMILY_MAPS,
  CT_DATAPATH_STATS_MAP,
  CT_EVENTS_RING_MAP,
  CT_PRESSURE_MAP,
  DatapathSettings,
  decodeDatapathSettings,
  encodeDatapathSettings,
  validateDatapathSettings,
} from './settings';
import { datapathSideMapSpecs } from './side-maps';

/** Where `make -C bpf` puts the object. */
export const CT_DATAPATH_OBJECT = bpfObjectPath('ct_datapath.bpf.o');

/** The programs of the object, by hook. */
export const CT_DATAPATH_PROGRAMS = { ingress: 'ct_ingress', egress: 'ct_egress' } as const;

export interface LoadOptions {
  /** bpffs mount point the daemon runs with; its maps are under <bpfRoot>/tc/globals. */
  readonly bpfRoot: string;
  /**
   * Overrides on top of the daemon's settings (those its flags asked for, read from its
   * pinned ctmapd_datapath_config map), e.g. `{ clusterId }` from
   * `ctmap datapath attach --cluster-id`.
   */
  readonly settings?: Partial<DatapathSettings>;
  /** Default CT_DATAPATH_OBJECT. */
  readonly objectPath?: string;
}

/**
 * The loaded datapath object: its two TC programs, verified against the daemon's maps.
 * close() (idempotent) releases the object; programs attached with a link or filter stay
 * attached, held by the kernel.
 */
export class CtDatapath {
  private constructor(
    readonly object: BpfObject,
    readonly ingress: BpfProgram,
    readonly egress: BpfProgram,
    /** Names of the maps reused from the daemon's pins. */
    readonly reusedMaps: readonly string[],
    readonly settings: DatapathSettings,
  ) {}

  /**
   * Reads the daemon's settings from its pinned config map and applies `opts.settings`
   * over them, then opens the object, hands it every map pinned under <bpfRoot>/tc/globals
   * that it declares (the stats map included), writes the settings into .rodata and loads
   * it. Throws CtmapError invalid-argument for settings the program cannot take (a cluster
   * id beyond ClusterIDMax), failed-precondition naming the path when the daemon's side
   * maps or a CT map the settings need is not pinned (the daemon is not running with this
   * bpf-root, or manages other families) or a side map has another layout (daemon and
   * object from different builds), and BpfSyscallError from libbpf (a verifier rejection
   * carries the log tail; EPERM without CAP_BPF).
   */
  static load(opts: LoadOptions): CtDatapath {
    const objectPath = opts.objectPath ?? CT_DATAPATH_OBJECT;
    if (!fs.existsSync(objectPath)) {
      throw new CtmapError('failed-precondition', `datapath object ${objectPath} is missing: run make build (make -C bpf)`);
    }
    const side = datapathSideMapSpecs(opts.bpfRoot);
    const pinned: KernelMap[] = [];
    try {
      const daemon = readDaemonSettings(side.config, opts.bpfRoot);
      const settings: DatapathSettings = { ...daemon, ...opts.settings };
      validateDatapathSettings(settings);
      const stats = openSideMap(side.stats, opts.bpfRoot);
      pinned.push(stats);
      const pressure = openSideMap(side.pressure, opts.bpfRoot);
      pinned.push(pressure);
      const ring = openRingPin(side.events, opts.bpfRoot);
      pinned.push(ring);
      const object = BpfObject.open(objectPath);
      try {
        const reused = reuseDaemonCtMaps(object, settings, opts.bpfRoot, pinned);
        object.map(CT_DATAPATH_STATS_MAP).reuseFd(stats.fd);
        reused.push(CT_DATAPATH_STATS_MAP);
        // Mode none never touches them, but the object declares them: reused all the same,
        // so that no load ever creates a second ring.
        object.map(CT_PRESSURE_MAP).reuseFd(pressure.fd);
        object.map(CT_EVENTS_RING_MAP).reuseFd(ring.fd);
        reused.push(CT_PRESSURE_MAP, CT_EVENTS_RING_MAP);
        // Every value, on every load: the object's .rodata is one zeroed struct
        // ct_datapath_config with no defaults of its own (bpf/ct_datapath.bpf.c), and libbpf
        // refuses (EINVAL) a buffer that is not exactly its size.
        object.map('.rodata').setInitialValue(encodeDatapathSettings(settings));
        const ingress = object.program(CT_DATAPATH_PROGRAMS.ingress);
        const egress = object.program(CT_DATAPATH_PROGRAMS.egress);
        object.load([ingress, egress]);
        return new CtDatapath(object, ingress, egress, reused, settings);
      } catch (err) {
        object.close();
        throw err;
      }
    } finally {
      // libbpf dup'ed what it reuses; the object holds its own copies from here on.
      for (const map of pinned) map.close();
    }
  }

  close(): void {
    this.object.close();
  }
}

/**
 * Hands `object` every CT map (global and per-cluster outer) of the daemon pinned under
 * <bpfRoot>/tc/globals that `settings` need, and one-entry placeholders for the rest: a
 * family switched off, outer maps not pinned yet. Every map opened is pushed onto `pinned`
 * for the caller to close after load (libbpf dups what it reuses). Returns the names
 * reused. Throws failed-precondition naming the maps when an enabled family's global maps
 * are not pinned. Shared by every object that works on the daemon's CT maps (the
 * datapath, fate-sharing: ./fate.ts).
 */
export function reuseDaemonCtMaps(object: BpfObject, settings: DatapathSettings, bpfRoot: string, pinned: KernelMap[]): string[] {
  const dir = globalsDir(bpfRoot);
  const reused: string[] = [];
  const reuse = (name: string): boolean => {
    const map = openPinned(kernelBackend, declaredSpec(object.map(name), path.join(dir, name)))?.map;
    if (!map) return false;
    pinned.push(map);
    object.map(name).reuseFd(map.fd);
    reused.push(name);
    return true;
  };
  // A placeholder is a one-entry map libbpf creates for the object alone.
  const placeholder = (name: string): void => object.map(name).setMaxEntries(1);
  for (const family of ['ipv4', 'ipv6'] as const) {
    const enabled = family === 'ipv4' ? settings.enableIpv4 : settings.enableIpv6;
    const names = CT_DATAPATH_FAMILY_MAPS[family];
    if (!enabled) {
      // Maps the program never touches: the family is switched off in the settings.
      for (const name of [...names, ...CT_DATAPATH_CLUSTER_MAPS[family]]) placeholder(name);
      continue;
    }
    const found = names.filter(reuse);
    if (found.length !== names.length) {
      const missing = names.filter((n) => !found.includes(n));
      throw new CtmapError(
        'failed-precondition',
        `datapath: ${missing.join(', ')} not pinned under ${dir}: start ctmapd with --bpf-root=${bpfRoot} ` + `(and --enable-${family}) first`,
      );
    }
    // The per-cluster outer maps exist once a cluster has joined (and until a cleanup):
    // without them no cluster id finds an inner map, which the program counts.
    for (const name of CT_DATAPATH_CLUSTER_MAPS[family]) if (!reuse(name)) placeholder(name);
  }
  return reused;
}

/**
 * The map the object declares as `m`, pinned at `pinPath`: what a CT or per-cluster map of
 * the daemon is opened with to be reused. Its mismatches are not held against the pin: the
 * daemon's flags size those maps, not the object, and bpf_map__reuse_fd takes the pinned
 * map's attributes, against which the verifier then checks the programs.
 */
function declaredSpec(m: BpfObjectMap, pinPath: string): MapSpec {
  return { name: m.name, type: m.type as MapTypeValue, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries, flags: m.flags, pinPath };
}

/**
 * Opens a side map the daemon pins (side-maps.ts) and checks it has this build's layout.
 * Throws failed-precondition naming the path when it is not pinned or differs.
 */
export function openSideMap(spec: MapSpec, bpfRoot: string): KernelMap {
  const pinned = openPinned(kernelBackend, spec, { expected: 'build', remedy: 'ctmapd and bpf/ are from different builds' });
  if (!pinned) {
    throw new CtmapError(
      'failed-precondition',
      `datapath: ${spec.pinPath} is not pinned: start ctmapd with --bpf-root=${bpfRoot} first (the daemon owns the datapath's side maps)`,
    );
  }
  return pinned.map;
}

/**
 * The settings the daemon wrote into its config map. Throws failed-precondition as
 * openSideMap, and when the map holds no valid settings.
 */
export function readDaemonSettings(spec: MapSpec, bpfRoot: string): DatapathSettings {
  const map = openSideMap(spec, bpfRoot);
  try {
    // An ARRAY's slot 0 always exists: never written, it holds zeros.
    const settings = decodeDatapathSettings(map.lookup(Buffer.alloc(4)) ?? Buffer.alloc(spec.valueSize));
    try {
      // The daemon validated what it wrote: anything else was never written (zeros) or not by it.
      validateDatapathSettings(settings);
    } catch (err) {
      throw new CtmapError('failed-precondition', `datapath: ${spec.pinPath} holds no valid settings (${(err as Error).message}): restart ctmapd`, {
        cause: err,
      });
    }
    return settings;
  } finally {
    map.close();
  }
}

/**
 * Opens the daemon's event ring. Its size is the daemon's flag (--ct-events-ring-size), so
 * only the rest of the spec is checked. Throws failed-precondition as openSideMap.
 */
function openRingPin(spec: MapSpec, bpfRoot: string): KernelMap {
  const pinned = openPinned(kernelBackend, spec);
  if (!pinned) return openSideMap(spec, bpfRoot);
  const differs = pinned.mismatches.filter((m) => !m.startsWith('max_entries'));
  if (differs.length > 0) {
    pinned.map.close();
    return openSideMap(spec, bpfRoot);
  }
  return pinned.map;
}
