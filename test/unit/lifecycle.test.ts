/**
 * MapLifecycle (src/maps/lifecycle.ts, issue 6) on the memory backend, whose in-process pin
 * registry outlives a lifecycle object: a "crash" is a lifecycle whose migration hook never
 * returns at a chosen step, abandoned as a killed process would be, followed by a new
 * lifecycle on the same pins. Every step of the state machine is crashed at; the kernel
 * tier does the same with kill -9 (test/e2e/map-lifecycle-process.test.ts).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { CtmapError } from '../../src/errors';
import { ctEntryRank } from '../../src/maps/ctmap/tables';
import { MapLifecycle, MigrationHooks, MigrationStep, SwappedMap, newPinPath, oldPinPath } from '../../src/maps/lifecycle';
import { openOrCreate } from '../../src/maps/open';
import { memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { MapSpec, MapType } from '../../src/maps/types';
import { KEY4, VALUE, checkEntries, fillEntries, keyOf, valueOf } from '../helpers/migration';
import { silentLog } from '../helpers/nat-fixtures';

const rank = { rank: ctEntryRank };

function setup(t: { after(fn: () => void): void }): { pin: string; spec(max: number, valueSize?: number): MapSpec } {
  const dir = `/memory-lifecycle/${randomBytes(6).toString('hex')}`;
  t.after(() => {
    for (const p of pinnedPaths()) if (p.startsWith(`${dir}/`)) memoryBackend.unpin(p);
  });
  const pin = `${dir}/cilium_ct4_global`;
  return { pin, spec: (max, valueSize = VALUE) => ({ name: 'cilium_ct4_global', type: MapType.LRU_HASH, keySize: KEY4, valueSize, maxEntries: max, flags: 0, pinPath: pin }) };
}

function lifecycle(opts: { hooks?: MigrationHooks; allowRecreate?: boolean; reload?: (maps: readonly SwappedMap[]) => Promise<void> } = {}): MapLifecycle {
  return new MapLifecycle({
    backend: memoryBackend,
    log: silentLog,
    hooks: opts.hooks,
    allowRecreate: opts.allowRecreate,
    reloader: opts.reload ? { reload: opts.reload } : undefined,
  });
}

/** Hooks that stop for good the n-th time `step` is reached; `reached` resolves then. */
function crashAt(step: MigrationStep, nth = 1): { hooks: MigrationHooks; reached: Promise<void> } {
  let signal!: () => void;
  const reached = new Promise<void>((r) => (signal = r));
  let left = nth;
  return {
    reached,
    hooks: {
      step: (s) => {
        if (s !== step || --left !== 0) return;
        signal();
        return new Promise<void>(() => undefined);
      },
    },
  };
}

function pins(pin: string): { live: boolean; old: boolean; fresh: boolean } {
  return { live: !!memoryBackend.pinnedInfo(pin), old: !!memoryBackend.pinnedInfo(oldPinPath(pin)), fresh: !!memoryBackend.pinnedInfo(newPinPath(pin)) };
}

describe('MapLifecycle', () => {
  test('creates, reuses, then migrates a grown map: every entry kept, pins clean, report exact', async (t) => {
    const { pin, spec } = setup(t);
    const first = await lifecycle().open(spec(4096), rank);
    fillEntries(first, 3000);
    first.close();
    const again = lifecycle();
    const reused = await again.open(spec(4096), rank);
    await again.complete();
    assert.equal(again.reports().length, 0, 'a compatible map is reused, not migrated');
    reused.close();

    const lc = lifecycle();
    const map = await lc.open(spec(8192), rank);
    await lc.complete();
    assert.equal(map.info().maxEntries, 8192);
    assert.deepEqual(checkEntries(map, 3000), { count: 3000, foreign: 0, wrongValue: 0 });
    assert.deepEqual(pins(pin), { live: true, old: false, fresh: false });
    const [r] = lc.reports();
    assert.deepEqual(
      { outcome: r.outcome, mismatches: r.mismatches, from: r.fromMaxEntries, to: r.toMaxEntries, seen: r.entriesSeen, copied: r.entriesCopied, dropped: r.entriesDropped },
      { outcome: 'migrated', mismatches: ['max_entries 4096 -> 8192'], from: 4096, to: 8192, seen: 3000, copied: 3000, dropped: 0 },
    );
    map.close();
  });

  test('the reloader runs after the swap and before the delta: what the old map got until then is carried over', async (t) => {
    const { pin, spec } = setup(t);
    const old = await lifecycle().open(spec(4096), rank);
    fillEntries(old, 2000);
    const calls: SwappedMap[][] = [];
    const lc = lifecycle({
      reload: async (maps) => {
        calls.push([...maps]);
        // The swap happened: the pin holds the new map, `_old` the old one.
        assert.equal(memoryBackend.pinnedInfo(pin)?.id, maps[0].newId);
        assert.equal(memoryBackend.pinnedInfo(oldPinPath(pin))?.id, maps[0].oldId);
        // The datapath, still on the old map, writes until it is reloaded.
        old.update(keyOf(5), valueOf(5, 3));
        old.update(keyOf(2000), valueOf(2000, 3));
      },
    });
    const map = await lc.open(spec(8192), rank);
    assert.equal(calls.length, 0, 'not before complete()');
    await lc.complete();
    assert.equal(calls.length, 1);
    assert.deepEqual(calls[0].map((m) => [m.name, m.pinPath, m.oldId]), [['cilium_ct4_global', pin, old.info().id]]);
    assert.deepEqual(checkEntries(map, 2001, { salt: (i) => (i === 5 || i === 2000 ? 3 : 0) }), { count: 2001, foreign: 0, wrongValue: 0 });
    assert.equal(lc.reports()[0].deltaWritten, 2);
    old.close();
    map.close();
  });

  test('a changed key or value size is refused, map untouched; with allowRecreate it is replaced and the loss reported', async (t) => {
    const { pin, spec } = setup(t);
    const old = await lifecycle().open(spec(4096, 48), rank);
    const fill = Buffer.alloc(48);
    for (let i = 0; i < 10; i++) old.update(keyOf(i), fill);
    await assert.rejects(lifecycle().open(spec(4096), rank), (err: unknown) => {
      assert.ok(err instanceof CtmapError);
      assert.equal(err.code, 'failed-precondition');
      assert.match(err.message, /value_size 48 -> 56/);
      assert.match(err.message, /--allow-map-recreate/);
      return true;
    });
    assert.equal(memoryBackend.pinnedInfo(pin)?.id, old.info().id);
    assert.equal(old.count(), 10);

    const reloads: SwappedMap[][] = [];
    const lc = lifecycle({ allowRecreate: true, reload: async (maps) => void reloads.push([...maps]) });
    const map = await lc.open(spec(4096), rank);
    await lc.complete();
    assert.equal(map.info().valueSize, 56);
    assert.equal(map.count(), 0);
    assert.deepEqual(pins(pin), { live: true, old: false, fresh: false });
    assert.deepEqual(lc.reports().map((r) => [r.outcome, r.entriesDropped]), [['recreated', 10]]);
    assert.deepEqual(reloads.map((c) => c.map((m) => m.oldId)), [[old.info().id]], 'the datapath is told about the replaced map');
    old.close();
    map.close();
  });

  test('shrink below the entry count keeps the latest lifetimes and reports the exact drop', async (t) => {
    const { spec } = setup(t);
    const old = await lifecycle().open(spec(8192), rank);
    fillEntries(old, 6000);
    old.close();
    const lc = lifecycle();
    const map = await lc.open(spec(2048), rank);
    await lc.complete();
    assert.equal(map.count(), 2048);
    assert.deepEqual(lc.reports().map((r) => [r.entriesSeen, r.entriesCopied, r.entriesDropped]), [[6000, 2048, 3952]]);
    map.close();
  });

  // Where the crash lands, and what the next start must report.
  const crashes: Array<{ step: MigrationStep; nth?: number; inComplete?: boolean; outcomes: string[] }> = [
    { step: 'start', outcomes: ['migrated'] },
    { step: 'old-pinned', outcomes: ['rolled-back', 'migrated'] },
    { step: 'new-created', outcomes: ['rolled-back', 'migrated'] },
    { step: 'copy-batch', nth: 2, outcomes: ['rolled-back', 'migrated'] },
    { step: 'copied', outcomes: ['rolled-back', 'migrated'] },
    { step: 'swapped', outcomes: ['resumed'] },
    { step: 'reloaded', inComplete: true, outcomes: ['resumed'] },
    { step: 'delta-batch', nth: 2, inComplete: true, outcomes: ['resumed'] },
    { step: 'delta-copied', inComplete: true, outcomes: ['resumed'] },
    { step: 'done', inComplete: true, outcomes: [] },
  ];
  for (const c of crashes) {
    test(`crash at ${c.step}${c.nth ? ` (#${c.nth})` : ''}: the next start ends with every entry in the new map (${c.outcomes.join(', ') || 'nothing to recover'})`, async (t) => {
      const { pin, spec } = setup(t);
      const n = 10_000; // three copy batches
      const old = await lifecycle().open(spec(16384), rank);
      fillEntries(old, n);
      const crash = crashAt(c.step, c.nth);
      const doomed = lifecycle({ hooks: crash.hooks });
      void doomed.open(spec(32768), rank).then(() => doomed.complete());
      await crash.reached;
      // The datapath keeps writing the map it holds (the old one) after the crash.
      old.update(keyOf(n), valueOf(n, 1));

      const lc = lifecycle();
      const map = await lc.open(spec(32768), rank);
      await lc.complete();
      assert.deepEqual(pins(pin), { live: true, old: false, fresh: false });
      assert.equal(map.info().maxEntries, 32768);
      const check = checkEntries(map, n + 1, { salt: (i) => (i === n ? 1 : 0) });
      const afterCommit = c.outcomes[0] === 'resumed' || c.step === 'done';
      // Before the commit point the new start copies the old map as it is now; after it,
      // an entry the old map got after the copy is carried over by the resume (or, after
      // 'done', is in the old map only: the migration had finished and the datapath moved).
      const want = c.step === 'done' ? n : n + 1;
      assert.deepEqual(check, { count: want, foreign: 0, wrongValue: 0 }, `after commit: ${afterCommit}`);
      assert.deepEqual(lc.reports().map((r) => r.outcome), c.outcomes);
      old.close();
      map.close();
    });
  }

  test('a crash while resuming resumes again', async (t) => {
    const { pin, spec } = setup(t);
    const old = await lifecycle().open(spec(16384), rank);
    fillEntries(old, 10_000);
    const first = crashAt('swapped');
    const a = lifecycle({ hooks: first.hooks });
    void a.open(spec(32768), rank);
    await first.reached;
    old.update(keyOf(10_000), valueOf(10_000, 1));
    const second = crashAt('delta-batch');
    const b = lifecycle({ hooks: second.hooks });
    void b.open(spec(32768), rank);
    await second.reached;
    assert.deepEqual(pins(pin), { live: true, old: true, fresh: false });

    const lc = lifecycle();
    const map = await lc.open(spec(32768), rank);
    await lc.complete();
    assert.deepEqual(checkEntries(map, 10_001, { salt: (i) => (i === 10_000 ? 1 : 0) }), { count: 10_001, foreign: 0, wrongValue: 0 });
    assert.deepEqual(lc.reports().map((r) => [r.outcome, r.deltaWritten]), [['resumed', 1]]);
    old.close();
    map.close();
  });

  test('a failure before the swap (here: thrown at a copied batch) is undone at once; the old map stays live', async (t) => {
    const { pin, spec } = setup(t);
    const old = await lifecycle().open(spec(16384), rank);
    fillEntries(old, 10_000);
    const failing = lifecycle({
      hooks: {
        step: (s) => {
          if (s === 'copy-batch') throw new Error('disk on fire');
        },
      },
    });
    await assert.rejects(failing.open(spec(32768), rank), /disk on fire/);
    assert.deepEqual(pins(pin), { live: true, old: false, fresh: false });
    assert.equal(memoryBackend.pinnedInfo(pin)?.id, old.info().id);
    assert.deepEqual(checkEntries(old, 10_000), { count: 10_000, foreign: 0, wrongValue: 0 });
    old.close();
  });

  test('a live pin removed by hand mid-migration: the `_old` pin is restored as the live map', async (t) => {
    const { pin, spec } = setup(t);
    const old = await lifecycle().open(spec(4096), rank);
    fillEntries(old, 100);
    memoryBackend.pin(old, oldPinPath(pin));
    memoryBackend.unpin(pin);
    const lc = lifecycle();
    const map = await lc.open(spec(4096), rank);
    await lc.complete();
    assert.equal(map.info().id, old.info().id);
    assert.deepEqual(pins(pin), { live: true, old: false, fresh: false });
    assert.deepEqual(lc.reports().map((r) => r.outcome), ['rolled-back']);
    old.close();
    map.close();
  });

  test('openOrCreate (clusters joining at run time) refuses a mismatched pin and a pending migration instead of recreating', async (t) => {
    const { pin, spec } = setup(t);
    const m = await lifecycle().open(spec(4096), rank);
    fillEntries(m, 10);
    assert.throws(() => openOrCreate(memoryBackend, spec(8192), silentLog), (err: unknown) => err instanceof CtmapError && err.code === 'failed-precondition' && /max_entries 4096 -> 8192/.test(err.message));
    memoryBackend.pin(m, oldPinPath(pin));
    assert.throws(() => openOrCreate(memoryBackend, spec(4096), silentLog), /interrupted migration/);
    memoryBackend.unpin(oldPinPath(pin));
    const again = openOrCreate(memoryBackend, spec(4096), silentLog);
    assert.equal(again.outcome, 'reused');
    assert.equal(again.map.count(), 10);
    again.map.close();
    m.close();
  });
});
