/**
 * The life of a pinned map across restarts (issue 6): reuse when compatible, migrate when
 * max_entries or flags change, recreate only when allowed, and finish or undo a migration
 * that a crash interrupted. Cilium removes and recreates a map whose attributes changed and
 * loses every entry (seed 000); Calico migrates (ctmap-facts §8). This does what Calico
 * does, with a commit point that makes every crash recoverable.
 *
 * Pins of one map P (e.g. <bpf-root>/tc/globals/cilium_ct4_global):
 *   P       the live map: what the datapath and every tool open
 *   P_old   the map being migrated away from, pinned a second time
 *   P_new   the new map while it is being filled (never opened by anyone else)
 *
 * Migration steps, and what a kill -9 right after each leaves:
 *
 *   step                                   P      P_old   P_new      next start
 *   0 start                                old    -       -          (nothing to recover)
 *   1 pin old map as P_old                 old    old     -          roll back: unpin P_old
 *   2 create new map, pin as P_new         old    old     new        roll back: unpin P_new, P_old
 *   3 bulk copy old -> new (batches)       old    old     new (part) roll back: unpin P_new, P_old
 *   4 rename(P_new, P)  <- commit point    new    old     -          resume: delta copy, unpin P_old
 *   5 datapath reloader (onto P)           new    old     -          resume: delta copy, unpin P_old
 *   6 delta copy old -> new                new    old     -          resume: delta copy, unpin P_old
 *   7 unpin P_old                          new    -       -          (nothing to recover)
 *
 * So at start, for each map:
 *   - no P_old: P_new alone is a new map that never took over (a recreate cut short, or
 *     leftovers): unpin it. Nothing else to do.
 *   - P_old pinned and P is the same map (same map id): the swap never happened; the old
 *     map is intact and still live. Unpin P_new and P_old: rolled back. The migration then
 *     starts over if the configuration still asks for it.
 *   - P_old pinned and P is another map: the swap happened, and the new map holds the whole
 *     bulk copy (it is only renamed into place once the copy is complete). Call the
 *     reloader, copy from P_old what the new map lacks (the fingerprints of the bulk copy
 *     died with the process, so entries present in both are left as the new map has them),
 *     unpin P_old: resumed.
 *   - P_old pinned and P missing (removed by hand): P_old is the last live map: rename it
 *     back to P and unpin P_new.
 * Every recovery action is itself idempotent, so a crash during recovery recovers the same
 * way. No step ever leaves P absent: a reader always finds the old map or the complete new
 * one. Removing P_old is last, so no entry is ever only in a map nobody can find.
 *
 * A map whose type, key size or value size changed cannot be migrated (the entries do not
 * fit): the start is refused unless allowRecreate (--allow-map-recreate), and then the map
 * is replaced, losing its entries, with a loud warning. Maps that hold only what ctmapd
 * rebuilds at start (the per-cluster ARRAY_OF_MAPS outer maps: their slots are rewritten
 * from the pinned inner maps) are `derived`: replaced, never migrated or refused.
 * A replacement is atomic too: the new map is created as P_new and renamed over P.
 *
 * The memory backend runs the same steps on its in-process pin registry: migration works
 * across daemon restarts inside one process (tests, embedded use); a crash loses the
 * process and every map with it, so there is nothing to recover there.
 */
import type { Logger } from 'pino';
import { CtmapError } from '../errors';
import { CopyStats, DeltaStats, FingerprintLog, RankFn, bulkCopy, deltaCopy, nearCapacity } from './migrate';
import { newPinPath, oldPinPath, openPinned, pinnedMismatch } from './open';

export { newPinPath, oldPinPath } from './open';
import { BpfMap, FillShare, LiveMapInfo, MapBackend, MapSpec } from './types';

/** A map whose pin now holds a new map; the old one is still written by programs holding it. */
export interface SwappedMap {
  readonly name: string;
  readonly pinPath: string;
  /** Kernel map ids (memory backend: table ids). */
  readonly oldId: number;
  readonly newId: number;
}

/**
 * Moves the datapath onto the maps now pinned (issue 6, "keep the old map open until
 * datapath programs reference the new one"). Called after the pins are swapped and before
 * the delta copy, once per start for all migrated and replaced maps (and once more for
 * each map whose migration a crash interrupted after its swap). It must resolve only when
 * no BPF program writes the old maps any more (programs reloaded against the pins, or the
 * new maps placed through outer maps); what the old maps received until then is what the
 * delta copy carries over. A rejection fails the start with the migration past its commit
 * point; the next start calls the reloader again and finishes it.
 */
export interface DatapathReloader {
  reload(maps: readonly SwappedMap[]): Promise<void>;
}

/**
 * The default while ctmapd attaches no datapath of its own: nothing to move. Programs that
 * others loaded keep the maps they hold; the delta copy carries over what they wrote up to
 * the moment it reads the old map.
 */
export const noDatapathReloader: DatapathReloader = {
  async reload(): Promise<void> {
    // No datapath of ours to reload.
  },
};

/** Steps reported to MigrationHooks.step, in order (see the table in the module comment). */
export type MigrationStep =
  | 'start'
  | 'old-pinned'
  | 'new-created'
  | 'copy-batch'
  | 'copied'
  | 'swapped'
  | 'reloaded'
  | 'delta-batch'
  | 'delta-copied'
  | 'done';

/**
 * Test-only observation and pacing: step() is awaited at every step of every migration
 * (and after every batch of the bulk and delta copies), so a test can slow a migration
 * down or stop it at a chosen step and kill the process there.
 */
export interface MigrationHooks {
  step?(step: MigrationStep, map: string): void | Promise<void>;
}

/** What happened to one map at this start. */
export interface MigrationReport {
  readonly name: string;
  readonly pinPath: string;
  /**
   * migrated: entries copied into a map with the new attributes; resumed: a migration cut
   * short after its commit point was finished; rolled-back: one cut short before it was
   * undone (a `migrated` report for the same map usually follows); recreated: replaced,
   * entries dropped (incompatible layout with --allow-map-recreate, or a derived map).
   */
  readonly outcome: 'migrated' | 'resumed' | 'rolled-back' | 'recreated';
  /** What differed ("max_entries 65536 -> 131072", …); empty for resumed / rolled-back. */
  readonly mismatches: readonly string[];
  readonly fromMaxEntries: number;
  readonly toMaxEntries: number;
  readonly fromFlags: number;
  readonly toFlags: number;
  /** Entries the old map held when it was read. */
  readonly entriesSeen: number;
  /** Entries the new map holds from the copy and delta (after a crash: from the delta only). */
  readonly entriesCopied: number;
  /** Entries not carried over: the exact count, lowest lifetime first for a shrink. */
  readonly entriesDropped: number;
  /** Delta copy: entries written, and entries left because the new map had a newer value. */
  readonly deltaWritten: number;
  readonly deltaKeptNewer: number;
  readonly durationMs: number;
}

export interface MapOpenOptions {
  /** How recent an entry is: a map shrunk below its entry count keeps the highest ranks. */
  readonly rank: RankFn;
  /** The map holds only what ctmapd rebuilds at start: replaced on a mismatch, never migrated. */
  readonly derived?: boolean;
}

/** Opens the pinned maps ctmapd owns: what CtTables, NatTables and ClusterCtMaps open through. */
export interface MapOpener {
  open(spec: MapSpec, opts: MapOpenOptions): Promise<BpfMap>;
}

export interface MapLifecycleOptions {
  readonly backend: MapBackend;
  readonly log: Logger;
  /** --allow-map-recreate: replace maps whose layout changed instead of refusing to start. */
  readonly allowRecreate?: boolean;
  readonly reloader?: DatapathReloader;
  readonly hooks?: MigrationHooks;
}

/** A migration past its swap, waiting for complete(). */
interface Pending {
  readonly spec: MapSpec;
  readonly old: BpfMap;
  readonly fresh: BpfMap;
  readonly seen: FingerprintLog;
  readonly plan: FillShare[];
  readonly rank: RankFn;
  readonly copy: CopyStats;
  readonly from: LiveMapInfo;
  readonly mismatches: readonly string[];
  readonly started: bigint;
}

/**
 * Opens every map of one start (see the module comment). Use: open() each map, then
 * complete() once: it runs the datapath reloader for everything swapped and the delta
 * copies, and removes the `_old` pins. If the start fails before complete(), abandon()
 * closes what is held; the pins stay as they are and the next start resumes.
 */
export class MapLifecycle implements MapOpener {
  readonly #backend: MapBackend;
  readonly #log: Logger;
  readonly #allowRecreate: boolean;
  readonly #reloader: DatapathReloader;
  readonly #hooks: MigrationHooks;
  readonly #pending: Pending[] = [];
  /** Replaced maps the reloader must move the datapath onto (no delta: nothing carries over). */
  readonly #replaced: SwappedMap[] = [];
  readonly #reports: MigrationReport[] = [];

  constructor(opts: MapLifecycleOptions) {
    this.#backend = opts.backend;
    this.#log = opts.log.child({ component: 'map-lifecycle' });
    this.#allowRecreate = opts.allowRecreate ?? false;
    this.#reloader = opts.reloader ?? noDatapathReloader;
    this.#hooks = opts.hooks ?? {};
  }

  /** Every migration, recovery and recreation of this start, in order. */
  reports(): readonly MigrationReport[] {
    return this.#reports;
  }

  /**
   * Opens the map pinned at spec.pinPath, after recovering an interrupted migration of it:
   * reused when its attributes match, created when absent, migrated when max_entries or
   * flags differ (returns the new map, pinned at spec.pinPath; the delta copy follows in
   * complete()), replaced when derived. Throws failed-precondition for a map whose type,
   * key or value size differs, unless allowRecreate; and what the backend throws (a
   * migration that fails before its swap is rolled back first). Unpinned specs are created.
   */
  async open(spec: MapSpec, opts: MapOpenOptions): Promise<BpfMap> {
    if (!spec.pinPath) return this.#backend.create(spec);
    await this.#recover(spec, opts);
    const pinned = openPinned(this.#backend, spec);
    if (!pinned) {
      const map = this.#backend.create(spec);
      this.#log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'created map');
      return map;
    }
    const { map: live, info, mismatches } = pinned;
    if (mismatches.length === 0) {
      this.#log.info({ map: spec.name, pin: spec.pinPath, maxEntries: info.maxEntries }, 'reusing pinned map');
      return live;
    }
    if (opts.derived) return this.#replace(spec, live, info, mismatches, true);
    if (info.type !== spec.type || info.keySize !== spec.keySize || info.valueSize !== spec.valueSize) {
      if (!this.#allowRecreate) {
        live.close();
        throw pinnedMismatch(spec, mismatches, {
          expected: 'configuration',
          remedy:
            'entries of another type or key/value size cannot be migrated. ' +
            'Start with --allow-map-recreate to drop its entries and recreate it, or restore the configuration it was made with',
        });
      }
      return this.#replace(spec, live, info, mismatches, false);
    }
    return this.#migrate(spec, live, info, mismatches, opts.rank);
  }

  /**
   * Replaces the map pinned at spec.pinPath with a new, empty one even though its
   * attributes match (a derived map whose hidden attributes are stale: an outer map's inner
   * template). Returns the new map.
   */
  replace(spec: MapSpec, why: string): BpfMap {
    const pinned = openPinned(this.#backend, spec);
    if (!pinned) return this.#backend.create(spec);
    return this.#replace(spec, pinned.map, pinned.info, [why], true);
  }

  /**
   * Finishes this start's migrations: the reloader for every swapped or replaced map, then
   * each delta copy, then the `_old` pins removed and the old maps closed. Throws what the
   * reloader or the backend throws; migrations not finished stay recoverable (their `_old`
   * pin is kept).
   */
  async complete(): Promise<void> {
    const swapped = [
      ...this.#pending.map((p) => ({ name: p.spec.name, pinPath: p.spec.pinPath!, oldId: p.from.id, newId: p.fresh.info().id })),
      ...this.#replaced,
    ];
    if (swapped.length === 0) return;
    await this.#reloader.reload(swapped);
    for (const p of this.#pending) await this.#step('reloaded', p.spec.name);
    this.#replaced.length = 0;
    while (this.#pending.length > 0) {
      const p = this.#pending[0];
      const delta = await deltaCopy({ old: p.old, fresh: p.fresh, backend: this.#backend, plan: p.plan, rank: p.rank, seen: p.seen, onBatch: () => this.#step('delta-batch', p.spec.name) });
      await this.#step('delta-copied', p.spec.name);
      this.#backend.unpin(oldPinPath(p.spec.pinPath!));
      p.old.close();
      this.#pending.shift();
      const report = this.#report(p.spec, 'migrated', p.mismatches, p.from, p.copy, delta, p.started);
      this.#log.info({ ...report, delta }, `map ${p.spec.name} migrated${report.entriesDropped ? `: ${report.entriesDropped} entries dropped (the map is smaller than what it held)` : ': every entry kept'}`);
      await this.#step('done', p.spec.name);
    }
  }

  /** Closes the old maps of migrations not completed (a failed start); their pins stay for the next start. */
  abandon(): void {
    for (const p of this.#pending) p.old.close();
    this.#pending.length = 0;
    this.#replaced.length = 0;
  }

  async #step(step: MigrationStep, map: string): Promise<void> {
    if (step !== 'copy-batch' && step !== 'delta-batch') this.#log.info({ map, step }, 'map migration step');
    await this.#hooks.step?.(step, map);
  }

  /** The recovery half of the state machine (module comment). */
  async #recover(spec: MapSpec, opts: MapOpenOptions): Promise<void> {
    const pin = spec.pinPath!;
    const oldPin = oldPinPath(pin);
    const newPin = newPinPath(pin);
    const oldInfo = this.#backend.pinnedInfo(oldPin);
    if (!oldInfo) {
      if (this.#backend.unpin(newPin)) this.#log.warn({ map: spec.name, pin: newPin }, 'removed a new map that never took over its pin (interrupted start)');
      return;
    }
    const liveInfo = this.#backend.pinnedInfo(pin);
    const started = process.hrtime.bigint();
    if (!liveInfo || liveInfo.id === oldInfo.id) {
      this.#backend.unpin(newPin);
      if (liveInfo) this.#backend.unpin(oldPin);
      else this.#backend.rename(oldPin, pin);
      const none: CopyStats = { seen: 0, copied: 0, dropped: 0 };
      const report = this.#report(spec, 'rolled-back', [], oldInfo, none, undefined, started, oldInfo);
      this.#log.warn({ ...report }, `map ${spec.name}: a migration interrupted before its swap was rolled back; the old map is live with all its entries`);
      return;
    }
    // Past the commit point: the map at P is complete; carry over what it lacks.
    this.#backend.unpin(newPin);
    if (oldInfo.keySize !== liveInfo.keySize || oldInfo.valueSize !== liveInfo.valueSize) {
      // Not a state ctmapd leaves (it migrates only between equal layouts): someone pinned
      // these by hand. Its entries cannot be carried over.
      if (!this.#allowRecreate) {
        throw new CtmapError('failed-precondition', `${oldPin} (key/value ${oldInfo.keySize}/${oldInfo.valueSize} B) cannot be merged into ${pin} (${liveInfo.keySize}/${liveInfo.valueSize} B); remove it, or start with --allow-map-recreate to drop it`);
      }
      this.#backend.unpin(oldPin);
      this.#log.error({ map: spec.name, pin: oldPin }, `WARNING: ${oldPin} has another layout than ${pin}: removed with its entries (--allow-map-recreate)`);
      return;
    }
    const old = this.#backend.open({ ...spec, pinPath: oldPin, maxEntries: oldInfo.maxEntries, flags: oldInfo.flags });
    const fresh = this.#backend.open(spec);
    try {
      if (!old || !fresh) throw new CtmapError('internal', `map ${spec.name}: pins changed during recovery`);
      await this.#reloader.reload([{ name: spec.name, pinPath: pin, oldId: oldInfo.id, newId: liveInfo.id }]);
      const plan = this.#backend.fillPlan({ ...spec, maxEntries: liveInfo.maxEntries, flags: liveInfo.flags });
      const delta = await deltaCopy({ old, fresh, backend: this.#backend, plan, rank: opts.rank, onBatch: () => this.#step('delta-batch', spec.name) });
      this.#backend.unpin(oldPin);
      const copy: CopyStats = { seen: delta.scanned, copied: delta.written, dropped: delta.dropped };
      const report = this.#report(spec, 'resumed', [], oldInfo, copy, delta, started, liveInfo);
      this.#log.warn({ ...report }, `map ${spec.name}: finished a migration interrupted after its swap: ${delta.written} entries copied from the old map, ${delta.dropped} dropped`);
    } finally {
      old?.close();
      fresh?.close();
    }
  }

  /** Steps 1-4 of the module comment; the rest happens in complete(). */
  async #migrate(spec: MapSpec, live: BpfMap, from: LiveMapInfo, mismatches: readonly string[], rank: RankFn): Promise<BpfMap> {
    const pin = spec.pinPath!;
    const started = process.hrtime.bigint();
    this.#log.warn({ map: spec.name, pin, mismatches }, 'pinned map attributes differ from the configuration: migrating its entries into a new map');
    let fresh: BpfMap | undefined;
    let swapped = false;
    try {
      await this.#step('start', spec.name);
      this.#backend.pin(live, oldPinPath(pin));
      await this.#step('old-pinned', spec.name);
      fresh = this.#backend.create({ ...spec, pinPath: newPinPath(pin) });
      await this.#step('new-created', spec.name);
      const plan = this.#backend.fillPlan(spec);
      const seen = new FingerprintLog();
      let copy = await bulkCopy({ src: live, dst: fresh, backend: this.#backend, plan, rank, seen, onBatch: () => this.#step('copy-batch', spec.name) });
      if (nearCapacity(copy.copied, plan)) {
        // Nothing else writes the new map yet: its count says exactly whether the kernel
        // evicted anything the copy wrote (it should not, within the plan).
        const held = fresh.count();
        if (held < copy.copied) {
          this.#log.warn({ map: spec.name, written: copy.copied, held }, 'the kernel evicted entries while the new map was filled');
          copy = { ...copy, copied: held, dropped: copy.seen - held };
        }
      }
      await this.#step('copied', spec.name);
      this.#backend.rename(newPinPath(pin), pin);
      swapped = true;
      await this.#step('swapped', spec.name);
      const reopened = this.#reopenSwapped(spec);
      fresh.close();
      this.#pending.push({ spec, old: live, fresh: reopened, seen, plan, rank, copy, from, mismatches, started });
      return reopened;
    } catch (err) {
      fresh?.close();
      if (!swapped) {
        // Undo steps 1-3: the old map is live and untouched.
        this.#backend.unpin(newPinPath(pin));
        this.#backend.unpin(oldPinPath(pin));
      }
      live.close();
      throw err;
    }
  }

  /**
   * An atomic replacement: a new empty map created as P_new and renamed over P. `derived`:
   * ctmapd refills it (nothing is lost); otherwise every entry of the old map is dropped.
   */
  #replace(spec: MapSpec, live: BpfMap, from: LiveMapInfo, mismatches: readonly string[], derived: boolean): BpfMap {
    const pin = spec.pinPath!;
    const started = process.hrtime.bigint();
    let dropped = 0;
    try {
      if (!derived) dropped = live.count();
      this.#backend.unpin(newPinPath(pin));
      const fresh = this.#backend.create({ ...spec, pinPath: newPinPath(pin) });
      try {
        this.#backend.rename(newPinPath(pin), pin);
      } finally {
        fresh.close();
      }
    } finally {
      live.close();
    }
    const map = this.#reopenSwapped(spec);
    this.#replaced.push({ name: spec.name, pinPath: pin, oldId: from.id, newId: map.info().id });
    const report = this.#report(spec, 'recreated', mismatches, from, { seen: dropped, copied: 0, dropped }, undefined, started);
    if (derived) this.#log.warn({ ...report }, `map ${spec.name} recreated: its slots are rebuilt from the pinned inner maps`);
    else this.#log.error({ ...report }, `WARNING: map ${spec.name} RECREATED because of --allow-map-recreate: ALL ${dropped} ENTRIES ARE LOST`);
    return map;
  }

  /** The map just renamed into spec.pinPath, opened from its pin. */
  #reopenSwapped(spec: MapSpec): BpfMap {
    const map = this.#backend.open(spec);
    if (!map) throw new CtmapError('internal', `map ${spec.name}: ${spec.pinPath} vanished right after the swap`);
    return map;
  }

  #report(
    spec: MapSpec,
    outcome: MigrationReport['outcome'],
    mismatches: readonly string[],
    from: LiveMapInfo,
    copy: CopyStats,
    delta: DeltaStats | undefined,
    started: bigint,
    to?: LiveMapInfo,
  ): MigrationReport {
    const report: MigrationReport = {
      name: spec.name,
      pinPath: spec.pinPath!,
      outcome,
      mismatches,
      fromMaxEntries: from.maxEntries,
      toMaxEntries: to?.maxEntries ?? this.#backend.effectiveMaxEntries(spec),
      fromFlags: from.flags,
      toFlags: to?.flags ?? spec.flags,
      entriesSeen: copy.seen,
      entriesCopied: copy.copied + (outcome === 'migrated' ? (delta?.written ?? 0) : 0),
      entriesDropped: copy.dropped,
      deltaWritten: delta?.written ?? 0,
      deltaKeptNewer: delta?.keptNewer ?? 0,
      durationMs: Number(process.hrtime.bigint() - started) / 1e6,
    };
    this.#reports.push(report);
    return report;
  }
}
