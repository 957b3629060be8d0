/**
 * Attaches the conntrack datapath (ct_ingress / ct_egress of bpf/ct_datapath.bpf.c, loaded
 * by ./loader over the daemon's pinned maps) to a device's clsact hooks, and detaches it
 * again — removing only what it put there (issue 5, item 2; STYLE.md "remove only the
 * hooks you created").
 *
 * Ownership record. tc filters carry no owner, and a detach may run in another process
 * long after the attach, so ownership is written down on bpffs, next to the maps:
 *
 *   <bpf-root>/ctmapd/datapath/net<netns inode>/if<ifindex>/
 *       ingress_h<handle>_p<priority>   the attached ct_ingress program, pinned
 *       egress_h<handle>_p<priority>    the attached ct_egress program, pinned
 *       clsact/                         empty directory: attach created the clsact qdisc
 *       cluster<N>/                     empty directory: attached with --cluster-id N (none: 0)
 *
 * bpffs holds only pins and directories (and refuses names with a dot), so the facts are
 * names: the pin says where the filter was put, the directory says the qdisc is ours.
 * A filter is ours only while the kernel reports, at that handle and priority, the id of
 * the program pinned there: the pin keeps the program (and so its id) alive, so no other
 * program can have that id. Anything else found at that spot is foreign and left alone.
 * The netns inode plus ifindex name a device for as long as its namespace lives; should a
 * later namespace reuse both numbers, the program-id check still tells the stale record
 * apart, and the record is dropped.
 *
 * Handle and priority are left to the kernel on a first attach, so the datapath never
 * collides with a filter already there: the kernel takes 49152 (0xc000), or one below the
 * lowest priority in use above 32768. Filters with the usual explicit low priorities (tc's
 * and Cilium's 1) therefore run first. The programs return TC_ACT_UNSPEC, so a filter
 * behind them still runs: the datapath observes and never ends classification. A repeated
 * attach replaces its own filter in place (BPF_TC_F_REPLACE: no window without
 * conntrack). The qdisc claim is made before any filter is attached and dropped whenever
 * none of the record's filters is left: when in doubt, a qdisc is left behind rather
 * than another tool's removed. Detach removes the qdisc only if the claim holds and
 * neither hook has any filter left.
 *
 * Everything acts in the calling process's network namespace (`ctmap datapath --netns`
 * re-executes itself under nsenter --net for that); bpffs is shared by all of them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CtmapError } from '../errors';
import * as bpf from '../sys';
import {
  TcDirection,
  TcFilterRef,
  ifIndexToName,
  ifNameToIndex,
  tcAttach,
  tcDetach,
  tcHasClsact,
  tcHookCreate,
  tcHookDestroy,
  tcListFilters,
  tcQuery,
} from '../link';
import { CtDatapath } from './loader';
import { datapathRecordsDir, findNetns, removeRecordDir } from './records';
import type { DatapathSettings } from './settings';

export const TC_DIRECTIONS: readonly TcDirection[] = ['ingress', 'egress'];

export { datapathRecordsDir } from './records';

/** The inode of this process's network namespace (what `ls -iL /proc/self/ns/net` shows). */
export function currentNetns(): number {
  return fs.statSync('/proc/self/ns/net').ino;
}

function recordDir(bpfRoot: string, netns: number, ifindex: number): string {
  return path.join(datapathRecordsDir(bpfRoot), `net${netns}`, `if${ifindex}`);
}

const PIN_NAME = /^(ingress|egress)_h(\d+)_p(\d+)$/;
const QDISC_MARK = 'clsact';
/** `cluster<N>`: the cluster id the programs were attached with, so a reattach keeps it. */
const CLUSTER_MARK = /^cluster(\d+)$/;

function pinName(direction: TcDirection, ref: { handle: number; priority: number }): string {
  return `${direction}_h${ref.handle}_p${ref.priority}`;
}

/** One hook the record says ctmap attached. */
export interface OwnedHook {
  readonly direction: TcDirection;
  readonly handle: number;
  readonly priority: number;
  /** Id of the pinned program; 0 when the pin could not be opened. */
  readonly progId: number;
  readonly pin: string;
}

interface OwnershipRecord {
  readonly dir: string;
  readonly exists: boolean;
  readonly hooks: OwnedHook[];
  readonly ownsQdisc: boolean;
  /** The cluster id the programs were attached with (0: the global maps). */
  readonly clusterId: number;
  /** Leftovers of an attach that died between pin and rename. */
  readonly pending: string[];
}

function readRecord(dir: string): OwnershipRecord {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { dir, exists: false, hooks: [], ownsQdisc: false, clusterId: 0, pending: [] };
    throw err;
  }
  const hooks: OwnedHook[] = [];
  const pending: string[] = [];
  for (const name of names) {
    const m = PIN_NAME.exec(name);
    const pin = path.join(dir, name);
    if (m) {
      hooks.push({ direction: m[1] as TcDirection, handle: Number(m[2]), priority: Number(m[3]), progId: pinnedProgId(pin), pin });
    } else if (/^(ingress|egress)_new$/.test(name)) {
      pending.push(pin);
    }
  }
  const cluster = names.map((n) => CLUSTER_MARK.exec(n)).find((m) => m !== null);
  return { dir, exists: true, hooks, ownsQdisc: names.includes(QDISC_MARK), clusterId: cluster ? Number(cluster[1]) : 0, pending };
}

function pinnedProgId(pin: string): number {
  let fd: bpf.Fd | undefined;
  try {
    fd = bpf.objGet(pin);
    return fd ? bpf.progInfo(fd).id : 0;
  } catch {
    return 0;
  } finally {
    fd?.close();
  }
}

/** Whether a filter sits at the hook's handle and priority (asked before bpf_tc_query). */
function filterPresent(ifindex: number, h: { direction: TcDirection; handle: number; priority: number }): boolean {
  return tcListFilters(ifindex, h.direction).some((f) => f.handle === h.handle && f.priority === h.priority);
}

/** What occupies an owned hook's spot now. */
function hookState(ifindex: number, h: OwnedHook): 'ours' | 'gone' | 'foreign' {
  // The dump first: bpf_tc_query on an empty spot makes libbpf print the kernel's complaint.
  if (!filterPresent(ifindex, h)) return 'gone';
  const id = tcQuery(ifindex, h.direction, h.handle, h.priority);
  return id !== undefined && h.progId !== 0 && id === h.progId ? 'ours' : 'foreign';
}

function removeRecord(rec: OwnershipRecord, bpfRoot: string): void {
  removeRecordDir(rec.dir, bpfRoot);
}

function unpinQuiet(pin: string): void {
  try {
    bpf.unpin(pin);
  } catch {
    // best effort: a leftover pin only keeps a program loaded
  }
}

/** The device's ifindex in this namespace; invalid-argument on `dev` when there is none. */
export function requireDevice(dev: string): number {
  const ifindex = ifNameToIndex(dev);
  if (ifindex === undefined) {
    throw new CtmapError('invalid-argument', `no network device "${dev}" in this network namespace`, { field: 'dev' });
  }
  return ifindex;
}

/**
 * Removes this namespace's records of devices that no longer exist: a device takes its
 * qdisc and filters with it, so such a record owns nothing, and its pins only keep the
 * programs loaded. (Interface indexes are allocated cyclically, so a vanished device's
 * index is not handed to a new device at once; and a reused one would still fail the
 * program-id check.) Returns the pruned ifindexes.
 */
function pruneVanishedDevices(bpfRoot: string, netns: number): number[] {
  const nsDir = path.join(datapathRecordsDir(bpfRoot), `net${netns}`);
  let names: string[];
  try {
    names = fs.readdirSync(nsDir);
  } catch {
    return [];
  }
  const pruned: number[] = [];
  for (const name of names) {
    const m = /^if(\d+)$/.exec(name);
    if (!m || ifIndexToName(Number(m[1])) !== undefined) continue;
    removeRecord(readRecord(path.join(nsDir, name)), bpfRoot);
    pruned.push(Number(m[1]));
  }
  return pruned;
}

export interface DatapathTarget {
  /** bpffs mount the daemon runs with (its maps are under <bpfRoot>/tc/globals). */
  readonly bpfRoot: string;
  /** Device name in this process's network namespace. */
  readonly dev: string;
}

export interface AttachOptions extends DatapathTarget {
  /** Overrides of the datapath settings, e.g. { clusterId }. */
  readonly settings?: Partial<DatapathSettings>;
  /** Default: the object `make -C bpf` builds. */
  readonly objectPath?: string;
}

export interface AttachedHook extends TcFilterRef {
  readonly direction: TcDirection;
  /** True when this replaced ctmap's own earlier filter in place. */
  readonly replaced: boolean;
}

export interface AttachResult {
  readonly dev: string;
  readonly ifindex: number;
  readonly netns: number;
  readonly hooks: readonly AttachedHook[];
  /** This call created the clsact qdisc. */
  readonly createdQdisc: boolean;
  /** The record claims the qdisc (created by this or an earlier attach). */
  readonly ownsQdisc: boolean;
  /** An earlier record whose filters were all gone, dropped before attaching. */
  readonly droppedStaleRecord: boolean;
  /** Records of vanished devices in this namespace, removed on the way (their ifindexes). */
  readonly prunedDevices: readonly number[];
  readonly settings: DatapathSettings;
}

/**
 * Loads the datapath over the daemon's maps and attaches ct_ingress / ct_egress to the
 * clsact hooks of `dev` in this network namespace, creating the clsact qdisc if there is
 * none, and records ownership (see the file comment). Attaching again replaces ctmap's
 * own filters in place; records of devices that vanished from this namespace are removed
 * on the way. Throws CtmapError: invalid-argument (field "dev") for an unknown
 * device; failed-precondition when the daemon's maps are not pinned under bpfRoot; and
 * BpfSyscallError from the kernel (EPERM without CAP_BPF / CAP_NET_ADMIN). On failure,
 * what this call attached or created is removed again.
 */
export function attachDatapath(o: AttachOptions): AttachResult {
  const ifindex = requireDevice(o.dev);
  const netns = currentNetns();
  const prunedDevices = pruneVanishedDevices(o.bpfRoot, netns);
  const dir = recordDir(o.bpfRoot, netns, ifindex);
  let rec = readRecord(dir);
  for (const p of rec.pending) unpinQuiet(p);
  const live = new Map<TcDirection, OwnedHook>();
  for (const h of rec.hooks) if (hookState(ifindex, h) === 'ours') live.set(h.direction, h);
  const droppedStaleRecord = rec.exists && live.size === 0;
  if (droppedStaleRecord) {
    removeRecord(rec, o.bpfRoot);
    rec = { dir, exists: false, hooks: [], ownsQdisc: false, clusterId: 0, pending: [] };
  }

  const dp = CtDatapath.load({ bpfRoot: o.bpfRoot, settings: o.settings, objectPath: o.objectPath });
  const hooks: AttachedHook[] = [];
  let createdQdisc = false;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (!tcHasClsact(ifindex)) {
      createdQdisc = tcHookCreate(ifindex);
      // The claim goes down before anything is attached under it.
      if (createdQdisc) fs.mkdirSync(path.join(dir, QDISC_MARK), { recursive: true });
    }
    for (const direction of TC_DIRECTIONS) {
      const prog = direction === 'ingress' ? dp.ingress : dp.egress;
      const old = live.get(direction);
      // Pinned before it is attached, so a crash leaves at worst an unattached pin.
      const pending = path.join(dir, `${direction}_new`);
      unpinQuiet(pending);
      bpf.pinProgram(prog.fd, pending);
      const ref = tcAttach(ifindex, direction, prog.fd, old ? { handle: old.handle, priority: old.priority, replace: true } : {});
      hooks.push({ direction, ...ref, replaced: old !== undefined });
      const final = path.join(dir, pinName(direction, ref));
      fs.renameSync(pending, final); // replaces the old pin when handle and priority are the same
      for (const h of rec.hooks) if (h.direction === direction && h.pin !== final) unpinQuiet(h.pin);
    }
    for (const name of fs.readdirSync(dir)) if (CLUSTER_MARK.test(name)) fs.rmdirSync(path.join(dir, name));
    if (dp.settings.clusterId !== 0) fs.mkdirSync(path.join(dir, `cluster${dp.settings.clusterId}`));
  } catch (err) {
    rollBack(ifindex, dir, hooks, createdQdisc, o.bpfRoot);
    throw err;
  } finally {
    dp.close();
  }
  return {
    dev: o.dev,
    ifindex,
    netns,
    hooks,
    createdQdisc,
    ownsQdisc: createdQdisc || rec.ownsQdisc,
    droppedStaleRecord,
    prunedDevices,
    settings: dp.settings,
  };
}

/** Undoes a failed attach: the filters it newly attached, and the qdisc if it created it. */
function rollBack(ifindex: number, dir: string, hooks: readonly AttachedHook[], createdQdisc: boolean, bpfRoot: string): void {
  try {
    for (const h of hooks) {
      if (h.replaced) continue; // the record still describes it correctly
      tcDetach(ifindex, h.direction, h.handle, h.priority);
      unpinQuiet(path.join(dir, pinName(h.direction, h)));
    }
    for (const d of TC_DIRECTIONS) unpinQuiet(path.join(dir, `${d}_new`));
    if (createdQdisc && TC_DIRECTIONS.every((d) => tcListFilters(ifindex, d).length === 0)) {
      tcHookDestroy(ifindex);
      fs.rmSync(path.join(dir, QDISC_MARK), { recursive: true, force: true });
    }
    const rec = readRecord(dir);
    if (rec.exists && rec.hooks.length === 0) removeRecord(rec, bpfRoot);
  } catch {
    // The original error is what the caller needs to see.
  }
}

export type DetachedHookOutcome =
  /** ctmap's filter was there and is removed. */
  | 'removed'
  /** Nothing at that spot any more (someone removed it, or the qdisc went away). */
  | 'gone'
  /** Another program sits at that spot now: not ctmap's, left in place. */
  | 'foreign';

export interface DetachResult {
  readonly dev: string;
  readonly ifindex: number;
  readonly netns: number;
  /** False: no record of ctmap attaching to this device; nothing was changed. */
  readonly attached: boolean;
  readonly hooks: ReadonlyArray<OwnedHook & { readonly outcome: DetachedHookOutcome }>;
  /**
   * removed: ctmap created it and no filter was left; kept: ctmap created it but other
   * filters remain (`otherFilters`: how many, counted per hook, chain and priority, as
   * `tc filter show` prints `pref N`); not-ours: it was there before ctmap attached; gone:
   * ctmap created it but it had been removed meanwhile.
   */
  readonly qdisc: 'removed' | 'kept' | 'not-ours' | 'gone';
  readonly otherFilters: number;
  /** Records of vanished devices in this namespace, removed on the way (their ifindexes). */
  readonly prunedDevices: readonly number[];
}

/**
 * Removes from `dev` (in this network namespace) exactly the filters the ownership record
 * names and that still run the recorded programs, then the clsact qdisc if attach created
 * it and no other filter is on either hook, then the record. A device ctmap never
 * attached to gives `attached: false` and changes nothing. Throws CtmapError
 * invalid-argument (field "dev") for an unknown device, BpfSyscallError from the kernel.
 * Records of devices that vanished from this namespace are removed on the way.
 * There is no atomic "delete the qdisc if empty": a filter added between the check and
 * the delete goes with the qdisc.
 */
export function detachDatapath(o: DatapathTarget): DetachResult {
  const ifindex = requireDevice(o.dev);
  const netns = currentNetns();
  const prunedDevices = pruneVanishedDevices(o.bpfRoot, netns);
  const rec = readRecord(recordDir(o.bpfRoot, netns, ifindex));
  const base = { dev: o.dev, ifindex, netns, prunedDevices };
  if (!rec.exists) return { ...base, attached: false, hooks: [], qdisc: 'not-ours', otherFilters: 0 };

  const hooks = rec.hooks.map((h) => {
    const state = hookState(ifindex, h);
    if (state === 'ours') tcDetach(ifindex, h.direction, h.handle, h.priority);
    return { ...h, outcome: (state === 'ours' ? 'removed' : state) as DetachedHookOutcome };
  });
  let qdisc: DetachResult['qdisc'] = 'not-ours';
  let otherFilters = 0;
  if (rec.ownsQdisc) {
    if (!tcHasClsact(ifindex)) {
      qdisc = 'gone';
    } else {
      // Counted as classifier instances (chain, priority, protocol): how many entries one
      // filter makes in a dump depends on its kind (u32 adds its hash table).
      otherFilters = TC_DIRECTIONS.map((d) => new Set(tcListFilters(ifindex, d).map((f) => `${f.chain}/${f.priority}/${f.protocol}`)).size).reduce((x, y) => x + y, 0);
      if (otherFilters === 0) {
        tcHookDestroy(ifindex);
        qdisc = 'removed';
      } else {
        qdisc = 'kept';
      }
    }
  }
  for (const p of rec.pending) unpinQuiet(p);
  removeRecord(rec, o.bpfRoot);
  return { ...base, attached: true, hooks, qdisc, otherFilters };
}

/**
 * Loads the datapath again over the maps now pinned and puts it in place of every
 * attachment ctmap recorded in this network namespace (same handle, priority and cluster
 * id: BPF_TC_F_REPLACE, no moment without conntrack). A map migration calls this (through
 * src/datapath/reloader.ts) once the new maps are pinned, so that no program keeps
 * writing the old ones. Records whose filters are all gone or whose device vanished are
 * skipped (attach and detach prune them). Throws what attachDatapath throws; attachments
 * before the failing one stay reattached.
 */
export function reattachDatapaths(bpfRoot: string): AttachResult[] {
  const nsDir = path.join(datapathRecordsDir(bpfRoot), `net${currentNetns()}`);
  let names: string[];
  try {
    names = fs.readdirSync(nsDir).sort();
  } catch {
    return [];
  }
  const out: AttachResult[] = [];
  for (const name of names) {
    const m = /^if(\d+)$/.exec(name);
    if (!m) continue;
    const ifindex = Number(m[1]);
    const dev = ifIndexToName(ifindex);
    const rec = readRecord(path.join(nsDir, name));
    if (dev === undefined || !rec.hooks.some((h) => hookState(ifindex, h) === 'ours')) continue;
    out.push(attachDatapath({ bpfRoot, dev, settings: { clusterId: rec.clusterId } }));
  }
  return out;
}

export interface StatusRecord {
  readonly netns: number;
  /** Name under /run/netns, when the namespace has one. */
  readonly netnsName?: string;
  /** The namespace no longer exists: `ctmap datapath prune` (and every daemon start) removes the record. */
  readonly netnsGone: boolean;
  /** The record is for this process's namespace: dev and hook states are known. */
  readonly here: boolean;
  readonly ifindex: number;
  readonly dev?: string;
  readonly ownsQdisc: boolean;
  readonly clusterId: number;
  readonly hooks: ReadonlyArray<OwnedHook & { readonly state?: 'ours' | 'gone' | 'foreign' }>;
}

/**
 * Every ownership record under <bpfRoot>/ctmapd/datapath. Records of this network
 * namespace come with the device name and whether each filter is still in place; records
 * of other namespaces with the namespace's /run/netns name when it has one, and whether
 * the namespace is gone (its record awaits `ctmap datapath prune`). Throws only
 * for unreadable bpffs directories.
 */
export function datapathStatus(bpfRoot: string): StatusRecord[] {
  const base = datapathRecordsDir(bpfRoot);
  if (!fs.existsSync(base)) return [];
  const here = currentNetns();
  const names = netnsNames();
  const out: StatusRecord[] = [];
  for (const nsDir of fs.readdirSync(base).sort()) {
    const ns = /^net(\d+)$/.exec(nsDir);
    if (!ns) continue;
    const netns = Number(ns[1]);
    const netnsGone = netns !== here && !names.has(netns) && findNetns(netns) === undefined;
    for (const ifDir of fs.readdirSync(path.join(base, nsDir)).sort()) {
      const m = /^if(\d+)$/.exec(ifDir);
      if (!m) continue;
      const ifindex = Number(m[1]);
      const rec = readRecord(path.join(base, nsDir, ifDir));
      const isHere = netns === here;
      out.push({
        netns,
        netnsName: names.get(netns),
        netnsGone,
        here: isHere,
        ifindex,
        dev: isHere ? ifIndexToName(ifindex) : undefined,
        ownsQdisc: rec.ownsQdisc,
        clusterId: rec.clusterId,
        hooks: rec.hooks.map((h) => (isHere ? { ...h, state: ifIndexToName(ifindex) ? hookState(ifindex, h) : 'gone' } : h)),
      });
    }
  }
  return out;
}

/** Inode -> name of the namespaces `ip netns` knows (bind mounts under /run/netns). */
function netnsNames(): Map<number, string> {
  const out = new Map<number, string>();
  try {
    for (const name of fs.readdirSync('/run/netns')) {
      try {
        out.set(fs.statSync(path.join('/run/netns', name)).ino, name);
      } catch {
        // a name being removed
      }
    }
  } catch {
    // no named namespaces
  }
  return out;
}
