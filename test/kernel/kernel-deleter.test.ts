/**
 * The in-kernel GC re-check (bpf/ct_gc.bpf.c via src/maps/ctmap/gc/kernel-deleter.ts) on
 * real CT maps in a private bpffs directory. The read-then-delete race of Cilium #46298 is
 * driven deterministically: entries are "scanned" (chosen as candidates from the values
 * written), then some are refreshed with a plain update, then deleteIf runs; exactly the
 * refreshed ones must survive. Kernel tier: root or CAP_BPF, and a built bpf/ (make -C bpf).
 * The area and ctx layouts (bpf/ct_gc.h) are checked against BTF by btf-layout.test.ts.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test, TestContext } from 'node:test';
import { assertNoFdLeak, bpfFdCount, kernelTier, kernelTierDecision, privateBpfRoot } from '../helpers/kernel';
import { CT_GC_MAX_RECS } from '../../src/maps/ctmap/gc/layout';
import { DeleteMode, DeleteStatus } from '../../src/maps/ctmap/gc/types';
import { BpfMap, MapFlag, MapType, MapTypeValue } from '../../src/maps/types';

type KernelModule = typeof import('../../src/maps/kernel');
type DeleterModule = typeof import('../../src/maps/ctmap/gc/kernel-deleter');
type BpfModule = typeof import('../../src/sys');

const VS = 56;
const LIFETIME = 32;
/** The "CT clock" of these tests: entries with lifetime < NOW are expired. */
const NOW = 100_000;

type Fam = { name: 'v4' | 'v6'; ks: 14 | 38 };
const FAMILIES: Fam[] = [
  { name: 'v4', ks: 14 },
  { name: 'v6', ks: 38 },
];

/** Distinct key i; `salt` makes a disjoint key space (keys never written). */
function keyOf(f: Fam, i: number, salt = 0): Buffer {
  const k = Buffer.alloc(f.ks);
  k.writeUInt32LE(i >>> 0, 0);
  k.writeUInt32LE(salt, 4);
  for (let b = 8; b < f.ks; b++) k[b] = (Math.imul(i + 17, 2654435761) >>> (b % 24)) & 0xff;
  return k;
}

/** Value i with every byte depending on i and `gen`, lifetime set explicitly. */
function valueOf(i: number, lifetime: number, gen = 0): Buffer {
  const v = Buffer.alloc(VS);
  for (let b = 0; b < VS; b++) v[b] = (Math.imul(i + 31 * gen + 1, 40503) >>> (b % 16)) & 0xff;
  v.writeUInt32LE(lifetime >>> 0, LIFETIME);
  return v;
}

/** Entry i is expired when i is even (lifetime below NOW), alive otherwise. */
function lifetimeOf(i: number): number {
  return i % 2 === 0 ? NOW - 1 - (i % 1000) : NOW + 10 + i;
}

interface Env {
  readonly kernel: KernelModule;
  readonly mod: DeleterModule;
  readonly bpf: BpfModule;
  readonly root: string;
  map(f: Fam, n: number, opts?: { flags?: number; type?: number; maxEntries?: number }): BpfMap;
  deleter(): import('../../src/maps/ctmap/gc/kernel-deleter').KernelConditionalDeleter;
}

let mapSeq = 0;

/**
 * Runs `body` with a private bpffs dir; every map and deleter it makes is closed after,
 * also on failure, and then no bpf fd or BPF object may remain open.
 */
async function withEnv(t: TestContext, body: (env: Env) => void | Promise<void>): Promise<void> {
  if (!kernelTier(t)) return;
  const kernel = require('../../src/maps/kernel') as KernelModule;
  const mod = require('../../src/maps/ctmap/gc/kernel-deleter') as DeleterModule;
  const bpf = require('../../src/sys') as BpfModule;
  const { root, cleanup } = privateBpfRoot();
  const fds = bpfFdCount();
  const objs = bpf.openObjectCount();
  const owned: { close(): void }[] = [];
  const env: Env = {
    kernel,
    mod,
    bpf,
    root,
    map(f, n, opts = {}) {
      const m = kernel.kernelBackend.create({
        name: `gc_${f.name}_${mapSeq++}`,
        type: (opts.type ?? MapType.LRU_HASH) as MapTypeValue,
        keySize: f.ks,
        valueSize: VS,
        // LRU maps evict before they are full: room enough that no test entry is evicted.
        maxEntries: opts.maxEntries ?? Math.max(1024, n * 4),
        flags: opts.flags ?? 0,
        pinPath: path.join(root, `ct_${mapSeq}`),
      });
      owned.push(m);
      const keys = Buffer.concat(Array.from({ length: n }, (_, i) => keyOf(f, i)));
      const values = Buffer.concat(Array.from({ length: n }, (_, i) => valueOf(i, lifetimeOf(i))));
      if (n > 0) m.updateBatch(keys, values, n);
      return m;
    },
    deleter() {
      const d = new mod.KernelConditionalDeleter();
      owned.push(d);
      return d;
    },
  };
  try {
    await body(env);
  } finally {
    for (const o of owned.reverse()) o.close();
    cleanup();
  }
  assertNoFdLeak(fds, t.name);
  assert.equal(bpf.openObjectCount(), objs, `${t.name}: BPF objects, mappings or test-run contexts left open`);
}

/** Packs the candidates' keys and modes the way the GC engine does. */
function candidates(f: Fam, idx: readonly number[], mode: number | ((i: number) => number), salt = 0) {
  const keys = Buffer.concat(idx.map((i) => keyOf(f, i, salt)));
  const modes = Uint8Array.from(idx, (i) => (typeof mode === 'number' ? mode : mode(i)));
  const status = new Uint8Array(idx.length).fill(0xee);
  const values = Buffer.alloc(idx.length * VS, 0xaa);
  return { keys, modes, status, values, count: idx.length };
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

if (!kernelTierDecision().run) {
  test('in-kernel conditional delete', (t) => {
    kernelTier(t);
  });
} else {
  describe('in-kernel conditional delete (ct_gc.bpf.o)', () => {
    for (const f of FAMILIES) {
      test(`${f.name}: EXPIRED_BEFORE keeps exactly the entries refreshed since the scan (Cilium #46298)`, (t) =>
        withEnv(t, (env) => {
          const n = 3000;
          const map = env.map(f, n);
          const d = env.deleter();
          // The "scan": every expired entry is a candidate, with the value it had then.
          const cand = range(n).filter((i) => lifetimeOf(i) < NOW);
          const c = candidates(f, cand, DeleteMode.EXPIRED_BEFORE);
          // The datapath refreshes every 7th candidate before the delete: a plain update.
          const refreshed = new Set(cand.filter((_, j) => j % 7 === 3));
          for (const i of refreshed) map.update(keyOf(f, i), valueOf(i, NOW + 500, 1));

          d.deleteIf(map, c.keys, c.count, c.modes, NOW, c.status, c.values);

          cand.forEach((i, j) => {
            const now = map.lookup(keyOf(f, i));
            const v = c.values.subarray(j * VS, (j + 1) * VS);
            if (refreshed.has(i)) {
              assert.equal(c.status[j], DeleteStatus.REFRESHED, `candidate ${i}: status`);
              assert.deepEqual(now, valueOf(i, NOW + 500, 1), `candidate ${i}: refreshed value kept`);
              assert.ok(v.every((b) => b === 0xaa), `candidate ${i}: value slot of a kept entry untouched`);
            } else {
              assert.equal(c.status[j], DeleteStatus.DELETED, `candidate ${i}: status`);
              assert.equal(now, undefined, `candidate ${i}: gone`);
              assert.deepEqual(v, valueOf(i, lifetimeOf(i)), `candidate ${i}: value copied out byte-exact`);
            }
          });
          // Entries that were never candidates are untouched.
          assert.equal(map.count(), n - cand.length + refreshed.size);
          for (let i = 1; i < n; i += 2) assert.deepEqual(map.lookup(keyOf(f, i)), valueOf(i, lifetimeOf(i)));
        }));

      test(`${f.name}: ALWAYS deletes whatever the lifetime; absent keys are MISSING`, (t) =>
        withEnv(t, (env) => {
          const n = 2000;
          const map = env.map(f, n);
          const d = env.deleter();
          // Live and expired entries, with never-written keys interleaved.
          const idx = range(600).map((j) => j * 3);
          const keys = Buffer.concat(idx.map((i, j) => keyOf(f, i, j % 4 === 1 ? 0xbad : 0)));
          const modes = new Uint8Array(idx.length).fill(DeleteMode.ALWAYS);
          const status = new Uint8Array(idx.length);
          const values = Buffer.alloc(idx.length * VS, 0xaa);

          d.deleteIf(map, keys, idx.length, modes, NOW, status, values);

          idx.forEach((i, j) => {
            if (j % 4 === 1) {
              assert.equal(status[j], DeleteStatus.MISSING, `never-written key ${j}`);
              assert.deepEqual(map.lookup(keyOf(f, i)), valueOf(i, lifetimeOf(i)), `entry ${i} not touched`);
            } else {
              assert.equal(status[j], DeleteStatus.DELETED, `entry ${i} (lifetime ${lifetimeOf(i)})`);
              assert.equal(map.lookup(keyOf(f, i)), undefined);
              assert.deepEqual(values.subarray(j * VS, (j + 1) * VS), valueOf(i, lifetimeOf(i)));
            }
          });
          // A second call on the same keys: everything is gone now.
          d.deleteIf(map, keys, idx.length, modes, NOW, status, values);
          idx.forEach((i, j) => {
            const present = j % 4 === 1;
            assert.equal(status[j], DeleteStatus.MISSING, `second pass, key ${j}`);
            assert.equal(map.lookup(keyOf(f, i)) !== undefined, present);
          });
        }));

      test(`${f.name}: 10k candidates span several program runs`, (t) =>
        withEnv(t, (env) => {
          const n = 10_000;
          const map = env.map(f, n);
          const d = env.deleter();
          assert.ok(n > CT_GC_MAX_RECS * 2, 'more than two runs');
          // Every entry is a candidate: odd ones ALWAYS, even ones EXPIRED_BEFORE, and every
          // 5th of those refreshed, so each run sees all three outcomes and run boundaries
          // show up as misplaced statuses if the offsets are wrong.
          const c = candidates(f, range(n), (i) => (i % 2 ? DeleteMode.ALWAYS : DeleteMode.EXPIRED_BEFORE));
          for (let i = 0; i < n; i += 10) map.update(keyOf(f, i), valueOf(i, NOW + 1));
          for (let i = 4; i < n; i += 10) map.delete(keyOf(f, i));

          d.deleteIf(map, c.keys, c.count, c.modes, NOW, c.status, c.values);

          const counts = [0, 0, 0];
          for (let i = 0; i < n; i++) {
            const want = i % 10 === 0 ? DeleteStatus.REFRESHED : i % 10 === 4 ? DeleteStatus.MISSING : DeleteStatus.DELETED;
            assert.equal(c.status[i], want, `record ${i}`);
            counts[want]++;
            if (want === DeleteStatus.DELETED) assert.deepEqual(c.values.subarray(i * VS, (i + 1) * VS), valueOf(i, lifetimeOf(i)), `value ${i}`);
          }
          assert.equal(map.count(), counts[DeleteStatus.REFRESHED]);
        }));
    }

    test('maps with BPF_F_NO_COMMON_LRU, plain HASH maps and default maps share one deleter', (t) =>
      withEnv(t, (env) => {
        const d = env.deleter();
        const maps = FAMILIES.flatMap((f) => [
          { f, map: env.map(f, 1500, { flags: MapFlag.NO_COMMON_LRU }) },
          { f, map: env.map(f, 1500, { type: MapType.HASH, maxEntries: 4096 }) },
          { f, map: env.map(f, 1500) },
        ]);
        for (const { f, map } of maps) {
          const c = candidates(f, range(1500), DeleteMode.EXPIRED_BEFORE);
          d.deleteIf(map, c.keys, c.count, c.modes, NOW, c.status, c.values);
          for (let i = 0; i < 1500; i++) {
            assert.equal(c.status[i], i % 2 === 0 ? DeleteStatus.DELETED : DeleteStatus.REFRESHED, `${map.spec.name} record ${i}`);
          }
          assert.equal(map.count(), 750, map.spec.name);
        }
      }));

    test('a map closed and replaced gets a fresh slot; calls alternate between maps', (t) =>
      withEnv(t, (env) => {
        const f = FAMILIES[0];
        const d = env.deleter();
        const a = env.map(f, 100);
        const b = env.map(f, 100);
        const all = candidates(f, range(100), DeleteMode.EXPIRED_BEFORE);
        for (const m of [a, b, a, b]) {
          const c = candidates(f, range(100), DeleteMode.EXPIRED_BEFORE);
          d.deleteIf(m, c.keys, c.count, c.modes, NOW, c.status, c.values);
        }
        assert.equal(a.count(), 50);
        assert.equal(b.count(), 50);
        a.close();
        const c2 = env.map(f, 100);
        d.deleteIf(c2, all.keys, all.count, all.modes, NOW, all.status, all.values);
        assert.equal(c2.count(), 50);
        assert.throws(() => d.deleteIf(a, all.keys, all.count, all.modes, NOW, all.status, all.values), { code: 'failed-precondition' });
      }));

    test('bad requests delete nothing; misuse is a typed error', (t) =>
      withEnv(t, (env) => {
        const f = FAMILIES[0];
        const map = env.map(f, 100);
        const d = env.deleter();
        const c = candidates(f, range(100), DeleteMode.ALWAYS);
        c.modes[57] = 7;
        assert.throws(() => d.deleteIf(map, c.keys, c.count, c.modes, NOW, c.status, c.values), { code: 'invalid-argument', field: 'modes[57]' });
        assert.throws(() => d.deleteIf(map, c.keys, c.count, c.modes, 2 ** 32, c.status, c.values), { code: 'invalid-argument', field: 'time' });
        assert.throws(() => d.deleteIf(map, c.keys.subarray(1), c.count, c.modes, NOW, c.status, c.values), { code: 'invalid-argument', field: 'keys' });
        assert.throws(() => d.deleteIf(map, c.keys, c.count, c.modes, NOW, c.status, c.values.subarray(VS)), { code: 'invalid-argument', field: 'values' });
        assert.equal(map.count(), 100, 'nothing deleted');

        const { memoryBackend } = require('../../src/maps/memory') as typeof import('../../src/maps/memory');
        const mem = memoryBackend.create({ name: 'mem', type: MapType.LRU_HASH, keySize: 14, valueSize: VS, maxEntries: 64, flags: 0 });
        try {
          c.modes[57] = DeleteMode.ALWAYS;
          assert.throws(() => d.deleteIf(mem, c.keys, c.count, c.modes, NOW, c.status, c.values), { code: 'failed-precondition' });
        } finally {
          mem.close();
        }
        const nat = env.kernel.kernelBackend.create({ name: 'not_ct', type: MapType.LRU_HASH, keySize: 14, valueSize: 40, maxEntries: 64, flags: 0 });
        try {
          assert.throws(() => d.deleteIf(nat, c.keys, c.count, c.modes, NOW, c.status, c.values), /not a CT map/);
        } finally {
          nat.close();
        }

        d.close();
        d.close();
        assert.throws(() => d.deleteIf(map, c.keys, c.count, c.modes, NOW, c.status, c.values), { code: 'unavailable' });
        assert.equal(map.count(), 100, 'still nothing deleted');
      }));

    test('a missing object says how to build it', (t) =>
      withEnv(t, (env) => {
        assert.throws(
          () => new env.mod.KernelConditionalDeleter({ objectPath: path.join(env.root, 'nope.bpf.o') }),
          (err: Error & { code?: string }) => err.code === 'failed-precondition' && /make -C bpf/.test(err.message),
        );
      }));
  });
}
