/**
 * Socket fate-sharing (issue 13 item 1, seed 001): loads bpf/ct_fate.bpf.c over the
 * daemon's CT maps and attaches its three programs to a cgroup with pinned bpf_links, so
 * that the CT entries of a socket in that cgroup expire when the socket closes.
 *
 * Ownership record, like the datapath's (./attach.ts), on bpffs next to the maps:
 *
 *   <bpf-root>/ctmapd/fate/cg<cgroup id>/
 *       sockops        the bpf_link of ct_fate_sockops (BPF_CGROUP_SOCK_OPS), pinned
 *       egress         the bpf_link of ct_fate_egress (BPF_CGROUP_INET_EGRESS)
 *       sock_release   the bpf_link of ct_fate_release (BPF_CGROUP_INET_SOCK_RELEASE)
 *       cluster<N>/    empty directory: attached with --cluster-id N (none: 0)
 *
 * A cgroup id is its cgroup2 inode, what the kernel reports for a cgroup link. A link is
 * ctmap's because ctmap created it and its pin is the reference that keeps it: detach
 * detaches exactly those links (BPF_LINK_DETACH) and unpins them, and other programs on
 * the cgroup (links are multi-attach) are never touched. A link whose cgroup was removed
 * reports cgroup id 0: its record owns nothing and is dropped by the next attach,
 * reattach or detach. Attaching again replaces the programs of ctmap's links in place
 * (BPF_LINK_UPDATE: no moment without fate-sharing); reattach does that for every record,
 * and the daemon's reloader calls it after a map migration (./reloader.ts).
 *
 * The daemon's side maps must be pinned (the settings in ctmapd_datapath_config, the
 * counters map ctmapd_fate_stats). The event ring ctmapd_ct_events is reused when pinned;
 * until the daemon pins it, the object gets a one-page placeholder ring that nothing
 * reads (`eventsRing: 'placeholder'` in the result; the CLI says so).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bpfObjectPath } from '../config/paths';
import { CtmapError } from '../errors';
import { CgroupAttachType, CgroupAttachTypeValue, cgroupId, cgroupLinkCreate, findCgroupById, isCgroup2Dir } from '../link';
import type { KernelMap } from '../maps/kernel';
import { globalsDir } from '../maps/cluster-spec';
import * as bpf from '../sys';
import { BpfObject, BpfProgram } from '../sys/object';
import { openSideMap, readDaemonSettings, reuseDaemonCtMaps } from './loader';
import { removeRecordDir } from './records';
import { CT_EVENTS_RING_MAP, CT_FATE_STATS_MAP, DatapathSettings, encodeDatapathSettings, validateDatapathSettings } from './settings';
import { datapathSideMapSpecs } from './side-maps';

/** Where `make -C bpf` puts the object. */
export const CT_FATE_OBJECT = bpfObjectPath('ct_fate.bpf.o');

/** The hooks, their programs and attach types, in attach order. */
export const FATE_HOOKS = [
  { hook: 'sockops', program: 'ct_fate_sockops', attachType: CgroupAttachType.SOCK_OPS },
  { hook: 'egress', program: 'ct_fate_egress', attachType: CgroupAttachType.INET_EGRESS },
  { hook: 'sock_release', program: 'ct_fate_release', attachType: CgroupAttachType.INET_SOCK_RELEASE },
] as const satisfies ReadonlyArray<{ hook: string; program: string; attachType: CgroupAttachTypeValue }>;

export type FateHook = (typeof FATE_HOOKS)[number]['hook'];

/** The one-page ring the object gets when the daemon has not pinned ctmapd_ct_events. */
const PLACEHOLDER_RING_BYTES = 4096;

/** <bpf-root>/ctmapd/fate: one cg<cgroup id>/ directory per attached cgroup. */
export function fateRecordsDir(bpfRoot: string): string {
  return path.join(bpfRoot, 'ctmapd', 'fate');
}

/** The loaded fate object: its three programs, verified against the daemon's maps. */
export class FateObject {
  private constructor(
    readonly object: BpfObject,
    readonly programs: Readonly<Record<FateHook, BpfProgram>>,
    readonly settings: DatapathSettings,
    /** 'pinned': the daemon's ctmapd_ct_events; 'placeholder': a private one-page ring. */
    readonly eventsRing: 'pinned' | 'placeholder',
  ) {}

  /**
   * Reads the daemon's settings, applies `overrides` ({ clusterId }), reuses the CT maps,
   * the fate counters and the event ring from <bpfRoot>/tc/globals and loads the object.
   * Throws CtmapError failed-precondition (object not built, daemon maps not pinned),
   * invalid-argument (a cluster id beyond ClusterIDMax), BpfSyscallError from libbpf.
   */
  static load(bpfRoot: string, overrides: Partial<DatapathSettings> = {}, objectPath = CT_FATE_OBJECT): FateObject {
    if (!fs.existsSync(objectPath)) {
      throw new CtmapError('failed-precondition', `fate object ${objectPath} is missing: run make build (make -C bpf)`);
    }
    const side = datapathSideMapSpecs(bpfRoot);
    const pinned: KernelMap[] = [];
    let ring: bpf.Fd | undefined;
    try {
      const settings: DatapathSettings = { ...readDaemonSettings(side.config, bpfRoot), ...overrides };
      validateDatapathSettings(settings);
      const stats = openSideMap(side.fateStats, bpfRoot);
      pinned.push(stats);
      const object = BpfObject.open(objectPath);
      try {
        reuseDaemonCtMaps(object, settings, bpfRoot, pinned);
        object.map(CT_FATE_STATS_MAP).reuseFd(stats.fd);
        ring = openEventsRing(bpfRoot);
        if (ring) object.map(CT_EVENTS_RING_MAP).reuseFd(ring);
        else object.map(CT_EVENTS_RING_MAP).setMaxEntries(PLACEHOLDER_RING_BYTES);
        object.map('.rodata').setInitialValue(encodeDatapathSettings(settings));
        const programs = Object.fromEntries(FATE_HOOKS.map((h) => [h.hook, object.program(h.program)])) as Record<FateHook, BpfProgram>;
        object.load(Object.values(programs));
        return new FateObject(object, programs, settings, ring ? 'pinned' : 'placeholder');
      } catch (err) {
        object.close();
        throw err;
      }
    } finally {
      for (const map of pinned) map.close();
      ring?.close();
    }
  }

  close(): void {
    this.object.close();
  }
}

/** BPF_MAP_TYPE_RINGBUF (uapi enum bpf_map_type). */
const BPF_MAP_TYPE_RINGBUF = 27;

/**
 * The daemon's event ring, opened from its pin; undefined when it is not pinned. Its size
 * is the daemon's (--ct-events-ring-size), so only the type is checked. Throws
 * failed-precondition for something else pinned under that name.
 */
function openEventsRing(bpfRoot: string): bpf.Fd | undefined {
  const pin = path.join(globalsDir(bpfRoot), CT_EVENTS_RING_MAP);
  const fd = bpf.objGet(pin);
  if (!fd) return undefined;
  let type: number;
  try {
    type = bpf.mapInfo(fd).type;
  } catch (err) {
    fd.close();
    throw new CtmapError('failed-precondition', `${pin} is not a BPF map: ${(err as Error).message}`, { cause: err });
  }
  if (type !== BPF_MAP_TYPE_RINGBUF) {
    fd.close();
    throw new CtmapError('failed-precondition', `${pin} is a map of type ${type}, not a ring buffer (${BPF_MAP_TYPE_RINGBUF}): ctmapd and bpf/ are from different builds`);
  }
  return fd;
}

const CLUSTER_MARK = /^cluster(\d+)$/;

interface FateRecord {
  readonly dir: string;
  readonly cgroupId: bigint;
  readonly exists: boolean;
  readonly clusterId: number;
  /** Hook -> pin path of the link, for the links the record has. */
  readonly links: Partial<Record<FateHook, string>>;
}

function recordDir(bpfRoot: string, id: bigint): string {
  return path.join(fateRecordsDir(bpfRoot), `cg${id}`);
}

function readRecord(dir: string, id: bigint): FateRecord {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { dir, cgroupId: id, exists: false, clusterId: 0, links: {} };
    throw err;
  }
  const links: Partial<Record<FateHook, string>> = {};
  for (const h of FATE_HOOKS) if (names.includes(h.hook)) links[h.hook] = path.join(dir, h.hook);
  const cluster = names.map((n) => CLUSTER_MARK.exec(n)).find((m) => m !== null);
  return { dir, cgroupId: id, exists: true, clusterId: cluster ? Number(cluster[1]) : 0, links };
}

/** What a recorded link is now: attached to its cgroup, or gone (cgroup removed, detached). */
export interface LinkState {
  readonly hook: FateHook;
  readonly linkId: number;
  readonly progId: number;
  readonly state: 'attached' | 'gone';
}

function linkState(hook: FateHook, pin: string, id: bigint): LinkState {
  let fd: bpf.Fd | undefined;
  try {
    fd = bpf.objGet(pin);
    if (!fd) return { hook, linkId: 0, progId: 0, state: 'gone' };
    const info = bpf.linkInfo(fd);
    const ours = info.type === bpf.BPF_LINK_TYPE_CGROUP && info.cgroupId === id && info.progId !== 0;
    return { hook, linkId: info.id, progId: info.progId, state: ours ? 'attached' : 'gone' };
  } catch {
    return { hook, linkId: 0, progId: 0, state: 'gone' };
  } finally {
    fd?.close();
  }
}

/** A cgroup2 directory's id; invalid-argument naming field "cgroup" for anything else. */
export function requireCgroup(cgroupPath: string): bigint {
  if (!path.isAbsolute(cgroupPath)) throw new CtmapError('invalid-argument', `${cgroupPath}: want an absolute path`, { field: 'cgroup' });
  if (!isCgroup2Dir(cgroupPath)) {
    throw new CtmapError('invalid-argument', `${cgroupPath} is not a cgroup2 directory (cgroup2 is mounted where /proc/self/mountinfo says type cgroup2)`, {
      field: 'cgroup',
    });
  }
  return cgroupId(cgroupPath);
}

export interface FateAttachOptions {
  readonly bpfRoot: string;
  /** A cgroup2 directory: its sockets, and those of its descendants, share their CT entries' fate. */
  readonly cgroup: string;
  /** Also search this cluster's inner maps (0: the global maps only). */
  readonly clusterId?: number;
  readonly objectPath?: string;
}

export interface FateAttachResult {
  readonly cgroup: string;
  readonly cgroupId: string;
  readonly clusterId: number;
  readonly hooks: ReadonlyArray<{ hook: FateHook; linkId: number; progId: number; replaced: boolean }>;
  readonly eventsRing: 'pinned' | 'placeholder';
  readonly settings: DatapathSettings;
}

/**
 * Loads the fate object over the daemon's maps and attaches its programs to `cgroup`
 * (see the file comment): ctmap's live links there get the new programs in place, the
 * missing ones are created and pinned. Throws CtmapError invalid-argument (field
 * "cgroup"), failed-precondition (daemon maps not pinned), BpfSyscallError from the
 * kernel. On failure, links this call created are detached and unpinned again.
 */
export function attachFate(o: FateAttachOptions): FateAttachResult {
  const id = requireCgroup(o.cgroup);
  const dir = recordDir(o.bpfRoot, id);
  const rec = readRecord(dir, id);
  const fate = FateObject.load(o.bpfRoot, { clusterId: o.clusterId ?? 0 }, o.objectPath);
  const created: string[] = [];
  const hooks: Array<FateAttachResult['hooks'][number]> = [];
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const h of FATE_HOOKS) {
      const prog = fate.programs[h.hook];
      const pin = rec.links[h.hook];
      if (pin && linkState(h.hook, pin, id).state === 'attached') {
        const link = bpf.objGet(pin)!;
        try {
          bpf.linkUpdate(link, prog.fd);
          hooks.push({ hook: h.hook, linkId: bpf.linkInfo(link).id, progId: prog.id, replaced: true });
        } finally {
          link.close();
        }
        continue;
      }
      if (pin) bpf.unpin(pin); // a link that no longer attaches anything
      const final = path.join(dir, h.hook);
      const link = cgroupLinkCreate(o.cgroup, prog.fd, h.attachType);
      try {
        bpf.pinFd(link, final);
        created.push(final);
        hooks.push({ hook: h.hook, linkId: bpf.linkInfo(link).id, progId: prog.id, replaced: false });
      } finally {
        // The pin holds the link from here on; without a pin, closing detaches it.
        link.close();
      }
    }
    for (const name of fs.readdirSync(dir)) if (CLUSTER_MARK.test(name)) fs.rmdirSync(path.join(dir, name));
    if (fate.settings.clusterId !== 0) fs.mkdirSync(path.join(dir, `cluster${fate.settings.clusterId}`));
  } catch (err) {
    for (const pin of created) detachPin(pin);
    if (readRecord(dir, id).exists && Object.keys(readRecord(dir, id).links).length === 0) removeRecordDir(dir, o.bpfRoot);
    throw err;
  } finally {
    fate.close();
  }
  return { cgroup: o.cgroup, cgroupId: id.toString(), clusterId: fate.settings.clusterId, hooks, eventsRing: fate.eventsRing, settings: fate.settings };
}

/** Detaches the link pinned at `pin` (whoever else holds it) and unpins it. Best effort. */
function detachPin(pin: string): void {
  try {
    const link = bpf.objGet(pin);
    if (link) {
      try {
        bpf.linkDetach(link);
      } finally {
        link.close();
      }
    }
  } catch {
    // already detached: the unpin below is all that is left
  }
  try {
    bpf.unpin(pin);
  } catch {
    // a leftover pin keeps only the program loaded
  }
}

export interface FateDetachResult {
  readonly cgroup: string;
  readonly cgroupId: string;
  /** False: no record of ctmap attaching to this cgroup; nothing was changed. */
  readonly attached: boolean;
  readonly hooks: ReadonlyArray<LinkState & { readonly outcome: 'removed' | 'gone' }>;
}

/**
 * Detaches ctmap's links from `cgroup` (only those its record names and that still
 * attach to that cgroup) and removes the record. A cgroup ctmap never attached to gives
 * `attached: false`. Throws CtmapError invalid-argument (field "cgroup").
 */
export function detachFate(o: { bpfRoot: string; cgroup: string }): FateDetachResult {
  const id = requireCgroup(o.cgroup);
  const rec = readRecord(recordDir(o.bpfRoot, id), id);
  if (!rec.exists) return { cgroup: o.cgroup, cgroupId: id.toString(), attached: false, hooks: [] };
  const hooks = FATE_HOOKS.filter((h) => rec.links[h.hook]).map((h) => {
    const pin = rec.links[h.hook]!;
    const state = linkState(h.hook, pin, id);
    if (state.state === 'attached') detachPin(pin);
    return { ...state, outcome: state.state === 'attached' ? ('removed' as const) : ('gone' as const) };
  });
  removeRecordDir(rec.dir, o.bpfRoot);
  return { cgroup: o.cgroup, cgroupId: id.toString(), attached: true, hooks };
}

export interface FateStatusRecord {
  readonly cgroupId: string;
  /** Its path under a cgroup2 mount here; undefined when gone (or not visible from here). */
  readonly cgroup?: string;
  readonly clusterId: number;
  readonly hooks: readonly LinkState[];
}

function recordIds(bpfRoot: string): bigint[] {
  try {
    return fs
      .readdirSync(fateRecordsDir(bpfRoot))
      .map((n) => /^cg(\d+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => BigInt(m[1]))
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  } catch {
    return [];
  }
}

/** Every fate record under <bpfRoot>/ctmapd/fate with the state of its links. */
export function fateStatus(bpfRoot: string): FateStatusRecord[] {
  return recordIds(bpfRoot).map((id) => {
    const rec = readRecord(recordDir(bpfRoot, id), id);
    const hooks = FATE_HOOKS.filter((h) => rec.links[h.hook]).map((h) => linkState(h.hook, rec.links[h.hook]!, id));
    const live = hooks.some((h) => h.state === 'attached');
    return { cgroupId: id.toString(), cgroup: live ? findCgroupById(id) : undefined, clusterId: rec.clusterId, hooks };
  });
}

/**
 * Loads the fate object again over the maps now pinned and puts its programs into every
 * recorded cgroup's links (BPF_LINK_UPDATE, same cluster id). Records whose links are all
 * gone (the cgroup was removed) are removed instead: they only kept the old programs, and
 * through them the old maps, alive. A map migration calls this (./reloader.ts) so that no
 * fate program keeps writing the old maps. Returns the cgroups updated and the record
 * ids dropped. Throws what FateObject.load throws.
 */
export function reattachFate(bpfRoot: string, objectPath = CT_FATE_OBJECT): { updated: FateAttachResult[]; dropped: string[] } {
  const updated: FateAttachResult[] = [];
  const dropped: string[] = [];
  const loaded = new Map<number, FateObject>();
  try {
    for (const id of recordIds(bpfRoot)) {
      const rec = readRecord(recordDir(bpfRoot, id), id);
      const live = FATE_HOOKS.filter((h) => rec.links[h.hook] && linkState(h.hook, rec.links[h.hook]!, id).state === 'attached');
      if (live.length === 0) {
        removeRecordDir(rec.dir, bpfRoot);
        dropped.push(id.toString());
        continue;
      }
      // One object per cluster id: its programs may sit in many cgroups' links.
      let fate = loaded.get(rec.clusterId);
      if (!fate) loaded.set(rec.clusterId, (fate = FateObject.load(bpfRoot, { clusterId: rec.clusterId }, objectPath)));
      const hooks: Array<FateAttachResult['hooks'][number]> = [];
      for (const h of live) {
        const link = bpf.objGet(rec.links[h.hook]!)!;
        try {
          bpf.linkUpdate(link, fate.programs[h.hook].fd);
          hooks.push({ hook: h.hook, linkId: bpf.linkInfo(link).id, progId: fate.programs[h.hook].id, replaced: true });
        } finally {
          link.close();
        }
      }
      updated.push({ cgroup: findCgroupById(id) ?? `cgroup id ${id}`, cgroupId: id.toString(), clusterId: rec.clusterId, hooks, eventsRing: fate.eventsRing, settings: fate.settings });
    }
  } finally {
    for (const f of loaded.values()) f.close();
  }
  return { updated, dropped };
}

/** Whether any fate record exists under `bpfRoot` (no libbpf: the reloader's quick check). */
export function hasFateRecords(bpfRoot: string): boolean {
  return recordIds(bpfRoot).length > 0;
}
