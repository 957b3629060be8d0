/**
 * The map-behaviour contract every backend must meet (ARCHITECTURE.md, "contract" tier):
 * one suite, run against the kernel backend (kernel.contract.test.ts) and the memory backend
 * (memory.contract.test.ts). It asserts only what the kernel actually does — where the
 * kernel is approximate (LRU eviction with per-CPU free lists) it asserts the guarantees both
 * backends share, and memory-only exactness lives in test/unit/memory-lru.test.ts.
 *
 * Kernel behaviours checked here that are easy to get wrong:
 * - LRU_HASH evicts in chunks and before it is exactly full (1025 writes into 1024 slots
 *   leave ~897 entries; even exactly maxEntries writes can leave fewer).
 * - A bpf() syscall lookup does not refresh an LRU entry (only BPF-program lookups set the
 *   reference bit); an update does.
 * - BPF_MAP_UPDATE_BATCH accepts no NOEXIST/EXIST (EINVAL, nothing written).
 * - ARRAY: delete is EINVAL, delete batch is ENOTSUPP, update past the end is E2BIG.
 * - PERCPU_ARRAY: user space reads and writes all possible CPUs' copies at once, each
 *   rounded up to 8 bytes; info() still reports the per-CPU value size.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { describe, test } from 'node:test';
import { BatchError, BpfSyscallError, Errno } from '../../src/maps/errors';
import { BpfMap, MapBackend, MapFlag, MapSpec, MapType, MapTypeValue, UpdateFlag } from '../../src/maps/types';

/** What runContract needs from a backend under test; makeBackend is called once per test. */
export interface ContractEnv {
  readonly backend: MapBackend;
  /** A directory (bpffs for the kernel) this test may pin into; the suite pins under it only. */
  readonly pinDir: string;
  /** Removes everything pinned under pinDir. Called after every test, also on failure. */
  cleanup(): void;
  /** Kernel objects currently held open (fds); when given, every test must end where it began. */
  openHandles?(): number;
}

const KEY_SIZE = 14; // struct ipv4_ct_tuple: odd on purpose, so hashes see a partial word
const VALUE_SIZE = 24;

/** Deterministic, distinct key for entry i: the index in bytes 0-3, mixed filler after. */
function keyOf(i: number, ks = KEY_SIZE): Buffer {
  const k = Buffer.alloc(ks);
  k.writeUInt32LE(i >>> 0, 0);
  for (let b = 4; b < ks; b++) k[b] = (Math.imul(i + 1, 2654435761) >>> (b % 24)) & 0xff;
  return k;
}

/** Value for entry i; `salt` distinguishes rewrites of the same key. */
function valueOf(i: number, salt = 0, vs = VALUE_SIZE): Buffer {
  const v = Buffer.alloc(vs);
  for (let b = 0; b < vs; b++) v[b] = (Math.imul(i + 7 * salt + 3, 40503) >>> (b % 16)) & 0xff;
  v.writeUInt32LE(i >>> 0, 0);
  return v;
}

function packed(indexes: number[], of: (i: number) => Buffer): Buffer {
  return Buffer.concat(indexes.map(of));
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

/** Asserts fn throws a BpfSyscallError with this errno (and code, when given). */
function throwsErrno(fn: () => unknown, errno: number, code?: string, what = 'operation'): BpfSyscallError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof BpfSyscallError, `${what}: expected BpfSyscallError errno ${errno}, got ${String(caught)}`);
  assert.equal(caught.errno, errno, `${what}: errno of "${caught.message}"`);
  if (code !== undefined) assert.equal(caught.code, code, `${what}: code of "${caught.message}"`);
  return caught;
}

/** Per-test wrapper: builds specs under the test's pin dir and closes whatever a failing test left open. */
class Harness {
  readonly #maps: BpfMap[] = [];
  #n = 0;
  constructor(readonly env: ContractEnv) {}

  get backend(): MapBackend {
    return this.env.backend;
  }

  spec(type: MapTypeValue, over: Partial<MapSpec> = {}): MapSpec {
    return {
      name: `ct_${++this.#n}`,
      type,
      keySize: type === MapType.ARRAY || type === MapType.PERCPU_ARRAY ? 4 : KEY_SIZE,
      valueSize: VALUE_SIZE,
      maxEntries: 256,
      flags: 0,
      ...over,
    };
  }

  pinPath(leaf: string): string {
    return `${this.env.pinDir}/${leaf}`;
  }

  create(spec: MapSpec): BpfMap {
    return this.#track(this.backend.create(spec));
  }

  open(spec: MapSpec): BpfMap | undefined {
    const m = this.backend.open(spec);
    return m && this.#track(m);
  }

  closeAll(): void {
    for (const m of this.#maps) m.close();
  }

  #track(m: BpfMap): BpfMap {
    this.#maps.push(m);
    return m;
  }
}

/**
 * Registers the contract suite as node:test tests named `<name>: …`. makeBackend is called
 * for every test; its cleanup runs after the test whatever the outcome. When the env reports
 * openHandles, a test that passes but leaves handles open fails (maps must be closed).
 */
export function runContract(name: string, makeBackend: () => ContractEnv): void {
  function it(title: string, body: (h: Harness) => void): void {
    test(title, () => {
      const env = makeBackend();
      const h = new Harness(env);
      try {
        const before = env.openHandles?.();
        body(h);
        if (before !== undefined) assert.equal(env.openHandles!(), before, 'handles left open by the test');
      } finally {
        h.closeAll();
        env.cleanup();
      }
    });
  }

  describe(`${name} backend: BpfMap contract`, () => {
    // ---- lifecycle, pins ------------------------------------------------------------------

    it('create() returns a live map whose info() reports the spec', (h) => {
      for (const [type, flags] of [
        [MapType.HASH, 0],
        [MapType.HASH, MapFlag.NO_PREALLOC],
        [MapType.LRU_HASH, 0],
        [MapType.LRU_HASH, MapFlag.NO_COMMON_LRU],
        [MapType.ARRAY, 0],
        [MapType.PERCPU_ARRAY, 0],
      ] as const) {
        // 512 is a multiple of every plausible CPU count: the kernel rounds NO_COMMON_LRU maps'
        // max_entries up to a multiple of the possible CPUs.
        const spec = h.spec(type, { maxEntries: 512, flags, name: `info_${type}_${flags}` });
        const m = h.create(spec);
        assert.equal(m.backend, h.backend.name);
        assert.equal(m.closed, false);
        assert.equal(m.spec, spec);
        const info = m.info();
        assert.deepEqual(
          { type: info.type, keySize: info.keySize, valueSize: info.valueSize, maxEntries: info.maxEntries, flags: info.flags, name: info.name },
          { type, keySize: spec.keySize, valueSize: VALUE_SIZE, maxEntries: 512, flags, name: spec.name },
        );
        assert.ok(Number.isInteger(info.id) && info.id > 0, `id ${info.id}`);
        m.close();
      }
    });

    it('every map gets its own id', (h) => {
      const a = h.create(h.spec(MapType.HASH));
      const b = h.create(h.spec(MapType.HASH));
      assert.notEqual(a.info().id, b.info().id);
      a.close();
      b.close();
    });

    it('info() keeps the first 15 characters of the name, like the kernel', (h) => {
      const m = h.create(h.spec(MapType.LRU_HASH, { name: 'cilium_ct4_global_extra' }));
      assert.equal(m.info().name, 'cilium_ct4_glob');
      m.close();
    });

    it('open() of a pinned map is another handle onto the same entries', (h) => {
      const spec = h.spec(MapType.LRU_HASH, { pinPath: h.pinPath('shared') });
      const a = h.create(spec);
      a.update(keyOf(1), valueOf(1));
      const b = h.open(spec);
      assert.ok(b, 'open() of a pinned map');
      assert.equal(b.backend, h.backend.name);
      assert.deepEqual(b.lookup(keyOf(1)), valueOf(1));
      b.update(keyOf(2), valueOf(2));
      assert.deepEqual(a.lookup(keyOf(2)), valueOf(2));
      assert.equal(a.info().id, b.info().id);
      assert.equal(a.count(), 2);

      // Closing one handle neither closes the other nor drops the pinned map.
      a.close();
      assert.deepEqual(b.lookup(keyOf(1)), valueOf(1));
      b.close();
      const c = h.open(spec);
      assert.ok(c, 'still pinned after every handle closed');
      assert.equal(c.count(), 2);
      assert.deepEqual(c.lookup(keyOf(2)), valueOf(2));
      c.close();
    });

    it('pinnedInfo() reports the pinned map without keeping it open', (h) => {
      const spec = h.spec(MapType.HASH, { name: 'pinned_info', maxEntries: 300, pinPath: h.pinPath('info') });
      const m = h.create(spec);
      const info = h.backend.pinnedInfo(spec.pinPath!);
      assert.deepEqual(info, m.info());
      m.close();
      assert.deepEqual(h.backend.pinnedInfo(spec.pinPath!), info);
    });

    it('open() reports the pinned map’s attributes, not the caller’s spec', (h) => {
      const spec = h.spec(MapType.LRU_HASH, { name: 'original', pinPath: h.pinPath('attrs') });
      const m = h.create(spec);
      const other = h.open({ ...spec, name: 'other_name', maxEntries: 999 });
      assert.ok(other);
      assert.equal(other.info().name, 'original');
      assert.equal(other.info().maxEntries, spec.maxEntries);
      other.close();
      m.close();
    });

    it('open() and pinnedInfo() of a path with nothing pinned return undefined', (h) => {
      const spec = h.spec(MapType.HASH, { pinPath: h.pinPath('absent') });
      assert.equal(h.open(spec), undefined);
      assert.equal(h.backend.pinnedInfo(spec.pinPath!), undefined);
      assert.equal(h.open({ ...spec, pinPath: undefined }), undefined, 'open() without a pin path');
    });

    it('create() on a taken pin path throws already-exists and leaves the pinned map alone', (h) => {
      const spec = h.spec(MapType.HASH, { pinPath: h.pinPath('taken') });
      const m = h.create(spec);
      m.update(keyOf(7), valueOf(7));
      throwsErrno(() => h.create(spec), Errno.EEXIST, 'already-exists');
      throwsErrno(() => h.create({ ...spec, type: MapType.LRU_HASH }), Errno.EEXIST, 'already-exists');
      const again = h.open(spec);
      assert.ok(again);
      assert.equal(again.info().id, m.info().id);
      assert.deepEqual(again.lookup(keyOf(7)), valueOf(7));
      again.close();
      m.close();
    });

    it('unpin() removes the pin only; open handles keep the map', (h) => {
      const spec = h.spec(MapType.LRU_HASH, { pinPath: h.pinPath('unpin') });
      const m = h.create(spec);
      m.update(keyOf(1), valueOf(1));
      assert.equal(h.backend.unpin(spec.pinPath!), true);
      assert.equal(h.backend.unpin(spec.pinPath!), false, 'second unpin');
      assert.equal(h.open(spec), undefined);
      assert.equal(h.backend.pinnedInfo(spec.pinPath!), undefined);
      // The map lives on through its handle.
      assert.deepEqual(m.lookup(keyOf(1)), valueOf(1));
      m.update(keyOf(2), valueOf(2));
      assert.equal(m.count(), 2);
      // The path is free again: a new, empty map.
      const fresh = h.create(spec);
      assert.equal(fresh.count(), 0);
      assert.notEqual(fresh.info().id, m.info().id);
      fresh.close();
      m.close();
      assert.equal(h.backend.unpin(h.pinPath('never-pinned')), false);
    });

    // Issue 6 (migration) re-pins the live map as <pin>_old and swaps a new map in by rename.
    it('pin() pins an open map at a second path; both paths reach the same entries', (h) => {
      const spec = h.spec(MapType.LRU_HASH, { pinPath: h.pinPath('first') });
      const m = h.create(spec);
      m.update(keyOf(1), valueOf(1));
      h.backend.pin(m, h.pinPath('second'));
      const second = h.open({ ...spec, pinPath: h.pinPath('second') });
      assert.ok(second);
      assert.equal(second.info().id, m.info().id);
      assert.deepEqual(second.lookup(keyOf(1)), valueOf(1));
      throwsErrno(() => h.backend.pin(m, h.pinPath('second')), Errno.EEXIST, 'already-exists', 'pin on a taken path');
      // Unpinning one path keeps the other.
      assert.equal(h.backend.unpin(spec.pinPath!), true);
      assert.equal(h.backend.pinnedInfo(h.pinPath('second'))?.id, m.info().id);
      second.close();
      m.close();
    });

    it('rename() moves a pin, replacing the map pinned at the target in one step', (h) => {
      const live = h.spec(MapType.LRU_HASH, { name: 'live', pinPath: h.pinPath('live') });
      const next = h.spec(MapType.LRU_HASH, { name: 'next', maxEntries: 512, pinPath: h.pinPath('live_new') });
      const a = h.create(live);
      const b = h.create(next);
      b.update(keyOf(2), valueOf(2));
      h.backend.rename(next.pinPath!, live.pinPath!);
      assert.equal(h.backend.pinnedInfo(next.pinPath!), undefined, 'nothing left at the source');
      const now = h.open(live);
      assert.ok(now);
      assert.equal(now.info().id, b.info().id);
      assert.equal(now.info().maxEntries, 512);
      assert.deepEqual(now.lookup(keyOf(2)), valueOf(2));
      // The replaced map lives on through its handle.
      a.update(keyOf(1), valueOf(1));
      assert.deepEqual(a.lookup(keyOf(1)), valueOf(1));
      // Renaming onto a free path works too; renaming nothing is not-found.
      h.backend.rename(live.pinPath!, h.pinPath('elsewhere'));
      assert.equal(h.backend.pinnedInfo(h.pinPath('elsewhere'))?.id, b.info().id);
      throwsErrno(() => h.backend.rename(h.pinPath('absent'), live.pinPath!), Errno.ENOENT, 'not-found', 'rename of nothing');
      now.close();
      a.close();
      b.close();
    });

    // ---- single elements --------------------------------------------------------------------

    for (const type of [MapType.HASH, MapType.LRU_HASH]) {
      const tn = type === MapType.HASH ? 'HASH' : 'LRU_HASH';

      it(`${tn}: lookup/update/delete, absent keys are undefined/false`, (h) => {
        const m = h.create(h.spec(type));
        assert.equal(m.lookup(keyOf(1)), undefined);
        assert.equal(m.delete(keyOf(1)), false);
        m.update(keyOf(1), valueOf(1));
        m.update(keyOf(2), valueOf(2));
        assert.deepEqual(m.lookup(keyOf(1)), valueOf(1));
        const out = Buffer.alloc(VALUE_SIZE, 0xee);
        assert.equal(m.lookup(keyOf(2), out), out, 'lookup into out returns out');
        assert.deepEqual(out, valueOf(2));
        m.update(keyOf(1), valueOf(1, 9));
        assert.deepEqual(m.lookup(keyOf(1)), valueOf(1, 9), 'overwrite');
        assert.equal(m.count(), 2);
        assert.equal(m.delete(keyOf(1)), true);
        assert.equal(m.delete(keyOf(1)), false);
        assert.equal(m.lookup(keyOf(1)), undefined);
        assert.deepEqual(m.lookup(keyOf(2)), valueOf(2));
        assert.equal(m.count(), 1);
        m.close();
      });

      it(`${tn}: update flags NOEXIST / EXIST`, (h) => {
        const m = h.create(h.spec(type));
        m.update(keyOf(1), valueOf(1), UpdateFlag.NOEXIST);
        assert.deepEqual(m.lookup(keyOf(1)), valueOf(1));
        throwsErrno(() => m.update(keyOf(1), valueOf(1, 2), UpdateFlag.NOEXIST), Errno.EEXIST, 'already-exists');
        assert.deepEqual(m.lookup(keyOf(1)), valueOf(1), 'failed NOEXIST left the value');
        throwsErrno(() => m.update(keyOf(2), valueOf(2), UpdateFlag.EXIST), Errno.ENOENT, 'not-found');
        assert.equal(m.lookup(keyOf(2)), undefined, 'failed EXIST created nothing');
        m.update(keyOf(1), valueOf(1, 3), UpdateFlag.EXIST);
        assert.deepEqual(m.lookup(keyOf(1)), valueOf(1, 3));
        m.update(keyOf(1), valueOf(1, 4), UpdateFlag.ANY);
        assert.deepEqual(m.lookup(keyOf(1)), valueOf(1, 4));
        // Above BPF_EXIST (3; 4 is BPF_F_LOCK, which needs a spin lock in the value): EINVAL.
        throwsErrno(() => m.update(keyOf(3), valueOf(3), 3 as never), Errno.EINVAL);
        throwsErrno(() => m.update(keyOf(3), valueOf(3), 4 as never), Errno.EINVAL);
        assert.equal(m.count(), 1);
        m.close();
      });
    }

    it('key and value buffers of the wrong length are rejected with EINVAL', (h) => {
      const m = h.create(h.spec(MapType.HASH));
      // Short buffers are views into a larger allocation: a backend that ignores the
      // length (bpf() reads key_size bytes from the pointer) stays inside owned memory.
      const slab = Buffer.alloc(256);
      const shortKey = slab.subarray(0, KEY_SIZE - 1);
      const longKey = Buffer.alloc(KEY_SIZE + 2);
      const shortValue = slab.subarray(64, 64 + VALUE_SIZE - 1);
      const longValue = Buffer.alloc(VALUE_SIZE + 8);
      throwsErrno(() => m.update(shortKey, valueOf(1)), Errno.EINVAL);
      throwsErrno(() => m.update(longKey, valueOf(1)), Errno.EINVAL);
      throwsErrno(() => m.update(keyOf(1), shortValue), Errno.EINVAL);
      throwsErrno(() => m.update(keyOf(1), longValue), Errno.EINVAL);
      assert.equal(m.count(), 0, 'nothing written');
      m.update(keyOf(1), valueOf(1));
      throwsErrno(() => m.lookup(longKey), Errno.EINVAL);
      throwsErrno(() => m.lookup(shortKey), Errno.EINVAL);
      throwsErrno(() => m.lookup(keyOf(1), Buffer.alloc(256).subarray(0, VALUE_SIZE - 1)), Errno.EINVAL);
      throwsErrno(() => m.delete(longKey), Errno.EINVAL);
      throwsErrno(() => m.delete(shortKey), Errno.EINVAL);
      // Batches: buffers must hold at least `count` keys (and values).
      const three = packed([5, 6, 7], (i) => keyOf(i));
      const threeValues = packed([5, 6, 7], (i) => valueOf(i));
      throwsErrno(() => m.updateBatch(three.subarray(0, 3 * KEY_SIZE - 1), threeValues, 3), Errno.EINVAL);
      throwsErrno(() => m.updateBatch(three, threeValues.subarray(0, 2 * VALUE_SIZE), 3), Errno.EINVAL);
      throwsErrno(() => m.deleteBatch(three.subarray(0, 2 * KEY_SIZE), 3), Errno.EINVAL);
      assert.equal(m.count(), 1);
      m.close();
    });

    // ---- capacity ---------------------------------------------------------------------------

    it('LRU_HASH: writing past maxEntries evicts old entries; the newest half always survives', (h) => {
      const max = 1024;
      for (const extra of [1, 100, max]) {
        const m = h.create(h.spec(MapType.LRU_HASH, { maxEntries: max }));
        const n = max + extra;
        for (let i = 0; i < n; i++) m.update(keyOf(i), valueOf(i));
        const count = m.count();
        assert.ok(count <= max, `count ${count} <= ${max} after ${n} writes`);
        assert.ok(count >= max / 2, `count ${count} >= ${max / 2}`);
        // The kernel's LRU is approximate (per-CPU free lists, evicts in chunks): the last
        // max/2 writes are what both backends guarantee.
        for (let i = n - max / 2; i < n; i++) assert.deepEqual(m.lookup(keyOf(i)), valueOf(i), `recent key ${i}`);
        assert.equal(m.lookup(keyOf(0)), undefined, 'the oldest key was evicted');
        // What survived is intact and counted once.
        const seen = new Set<number>();
        const c = m.cursor(128);
        for (let b = c.next(); b; b = c.next()) {
          for (let j = 0; j < b.count; j++) {
            const i = b.keys.readUInt32LE(j * KEY_SIZE);
            assert.ok(i < n && !seen.has(i), `entry ${i} once`);
            seen.add(i);
            assert.deepEqual(b.values.subarray(j * VALUE_SIZE, (j + 1) * VALUE_SIZE), valueOf(i));
          }
        }
        c.close();
        assert.equal(seen.size, count);
        m.close();
      }
    });

    it('LRU_HASH: an update refreshes an entry, so it outlives older ones', (h) => {
      const max = 1024;
      const m = h.create(h.spec(MapType.LRU_HASH, { maxEntries: max }));
      for (let i = 0; i < max; i++) m.update(keyOf(i), valueOf(i));
      for (let i = 0; i < 10; i++) m.update(keyOf(i), valueOf(i, 1));
      for (let i = max; i < max + max / 4; i++) m.update(keyOf(i), valueOf(i));
      for (let i = 0; i < 10; i++) assert.deepEqual(m.lookup(keyOf(i)), valueOf(i, 1), `refreshed key ${i}`);
      assert.ok(m.count() <= max);
      m.close();
    });

    it('LRU_HASH with NO_COMMON_LRU: accepted, bounded, keeps the newest entry', (h) => {
      const max = 1024;
      const m = h.create(h.spec(MapType.LRU_HASH, { maxEntries: max, flags: MapFlag.NO_COMMON_LRU }));
      assert.equal(m.info().flags, MapFlag.NO_COMMON_LRU);
      for (let i = 0; i < 2 * max; i++) m.update(keyOf(i), valueOf(i));
      // Per-CPU LRU lists: the kernel only guarantees maxEntries/nCPUs per writer CPU.
      const count = m.count();
      assert.ok(count > 0 && count <= max, `count ${count}`);
      assert.deepEqual(m.lookup(keyOf(2 * max - 1)), valueOf(2 * max - 1));
      m.close();
    });

    for (const flags of [0, MapFlag.NO_PREALLOC]) {
      it(`HASH (flags ${flags}): a new key in a full map is resource-exhausted; present keys still update`, (h) => {
        const max = 64;
        const m = h.create(h.spec(MapType.HASH, { maxEntries: max, flags }));
        for (let i = 0; i < max; i++) m.update(keyOf(i), valueOf(i));
        assert.equal(m.count(), max, 'a HASH holds exactly maxEntries');
        throwsErrno(() => m.update(keyOf(max), valueOf(max)), Errno.E2BIG, 'resource-exhausted');
        // Flag checks come before the room check, as in htab_map_update_elem.
        throwsErrno(() => m.update(keyOf(max), valueOf(max), UpdateFlag.EXIST), Errno.ENOENT, 'not-found');
        throwsErrno(() => m.update(keyOf(3), valueOf(3), UpdateFlag.NOEXIST), Errno.EEXIST, 'already-exists');
        m.update(keyOf(3), valueOf(3, 1));
        m.update(keyOf(4), valueOf(4, 1), UpdateFlag.EXIST);
        assert.deepEqual(m.lookup(keyOf(3)), valueOf(3, 1));
        assert.deepEqual(m.lookup(keyOf(4)), valueOf(4, 1));
        assert.equal(m.lookup(keyOf(max)), undefined);
        assert.equal(m.delete(keyOf(0)), true);
        m.update(keyOf(max), valueOf(max));
        assert.equal(m.count(), max);
        for (let i = 1; i <= max; i++) assert.ok(m.lookup(keyOf(i)), `key ${i}`);
        m.close();
      });
    }

    // ---- batches ----------------------------------------------------------------------------

    for (const [type, maxEntries] of [
      [MapType.HASH, 10_000], // exactly full
      [MapType.LRU_HASH, 16_384], // headroom: a kernel LRU may evict before it is exactly full
    ] as const) {
      it(`${type === MapType.HASH ? 'HASH' : 'LRU_HASH'}: updateBatch of 10000 entries, then every cursor batch size returns each entry once with exact bytes`, (h) => {
        const n = 10_000;
        const m = h.create(h.spec(type, { maxEntries }));
        const keys = Buffer.alloc(n * KEY_SIZE);
        const values = Buffer.alloc(n * VALUE_SIZE);
        for (let i = 0; i < n; i++) {
          keyOf(i).copy(keys, i * KEY_SIZE);
          valueOf(i).copy(values, i * VALUE_SIZE);
        }
        m.updateBatch(keys, values, n);
        assert.equal(m.count(), n);
        for (const batchSize of [1, 7, 64, 4096, undefined]) {
          const seen = new Uint8Array(n);
          let total = 0;
          const c = m.cursor(batchSize);
          for (let b = c.next(); b; b = c.next()) {
            assert.ok(b.count > 0, 'batches are never empty');
            assert.equal(b.keys.length, b.count * KEY_SIZE);
            assert.equal(b.values.length, b.count * VALUE_SIZE);
            if (batchSize === 4096) assert.ok(b.count <= 4096);
            for (let j = 0; j < b.count; j++) {
              const i = b.keys.readUInt32LE(j * KEY_SIZE);
              assert.ok(i < n, `key index ${i}`);
              assert.equal(seen[i], 0, `entry ${i} returned twice (batch size ${batchSize})`);
              seen[i] = 1;
              assert.ok(b.keys.subarray(j * KEY_SIZE, (j + 1) * KEY_SIZE).equals(keyOf(i)), `key ${i} bytes`);
              assert.ok(b.values.subarray(j * VALUE_SIZE, (j + 1) * VALUE_SIZE).equals(valueOf(i)), `value ${i} bytes`);
            }
            total += b.count;
          }
          assert.equal(c.next(), null, 'stays at the end');
          c.close();
          assert.equal(total, n, `batch size ${batchSize}`);
        }
        m.close();
      });
    }

    it('cursor over an empty map ends at once; close() is idempotent', (h) => {
      for (const type of [MapType.HASH, MapType.LRU_HASH]) {
        const m = h.create(h.spec(type));
        const c = m.cursor(16);
        assert.equal(c.next(), null);
        c.close();
        c.close();
        assert.equal(c.next(), null, 'next() after close()');
        m.close();
      }
    });

    it('cursor closed early returns nothing more', (h) => {
      const m = h.create(h.spec(MapType.HASH));
      for (let i = 0; i < 100; i++) m.update(keyOf(i), valueOf(i));
      const c = m.cursor(8);
      assert.ok(c.next());
      c.close();
      assert.equal(c.next(), null);
      m.close();
    });

    it('updateBatch stops at the first failure and reports how many entries were written', (h) => {
      const m = h.create(h.spec(MapType.HASH, { maxEntries: 8 }));
      const idx = range(0, 11);
      let caught: unknown;
      try {
        m.updateBatch(packed(idx, (i) => keyOf(i)), packed(idx, (i) => valueOf(i)), idx.length);
      } catch (err) {
        caught = err;
      }
      assert.ok(caught instanceof BatchError, `BatchError, got ${String(caught)}`);
      assert.equal(caught.errno, Errno.E2BIG);
      assert.equal(caught.code, 'resource-exhausted');
      assert.equal(caught.processed, 8);
      assert.equal(m.count(), 8);
      for (let i = 0; i < 8; i++) assert.deepEqual(m.lookup(keyOf(i)), valueOf(i));
      m.close();
    });

    it('updateBatch accepts only flags ANY (kernel batch elem_flags), writing nothing otherwise', (h) => {
      const m = h.create(h.spec(MapType.LRU_HASH));
      m.update(keyOf(2), valueOf(2));
      const idx = range(0, 5);
      for (const flags of [UpdateFlag.NOEXIST, UpdateFlag.EXIST]) {
        const err = throwsErrno(() => m.updateBatch(packed(idx, (i) => keyOf(i)), packed(idx, (i) => valueOf(i, 1)), 5, flags), Errno.EINVAL);
        assert.ok(err instanceof BatchError);
        assert.equal(m.count(), 1);
        assert.deepEqual(m.lookup(keyOf(2)), valueOf(2));
      }
      m.updateBatch(Buffer.alloc(0), Buffer.alloc(0), 0);
      assert.equal(m.count(), 1, 'count 0 is a no-op');
      m.close();
    });

    it('deleteBatch deletes what exists and counts missing keys', (h) => {
      const m = h.create(h.spec(MapType.LRU_HASH));
      for (let i = 0; i < 100; i++) m.update(keyOf(i), valueOf(i));
      // First and last keys missing, missing ones interleaved, one key listed twice.
      const idx = [500, 0, 1, 501, 2, 3, 502, 503, 4, 4, ...range(10, 40), 504, ...range(60, 65), 505];
      const res = m.deleteBatch(packed(idx, (i) => keyOf(i)), idx.length);
      assert.deepEqual(res, { deleted: 5 + 30 + 5, missing: 6 + 1 });
      assert.equal(m.count(), 60);
      for (const i of [0, 4, 10, 39, 60, 64]) assert.equal(m.lookup(keyOf(i)), undefined, `deleted ${i}`);
      for (const i of [5, 9, 40, 59, 65, 99]) assert.deepEqual(m.lookup(keyOf(i)), valueOf(i), `kept ${i}`);
      assert.deepEqual(m.deleteBatch(Buffer.alloc(0), 0), { deleted: 0, missing: 0 });
      const all = range(0, 100);
      assert.deepEqual(m.deleteBatch(packed(all, (i) => keyOf(i)), all.length), { deleted: 60, missing: 40 });
      assert.equal(m.count(), 0);
      m.close();
    });

    it('count() follows inserts, overwrites and deletes', (h) => {
      const m = h.create(h.spec(MapType.HASH, { maxEntries: 1000 }));
      assert.equal(m.count(), 0);
      for (let i = 0; i < 500; i++) m.update(keyOf(i), valueOf(i));
      assert.equal(m.count(), 500);
      for (let i = 0; i < 100; i++) m.update(keyOf(i), valueOf(i, 1));
      assert.equal(m.count(), 500);
      for (let i = 0; i < 500; i += 2) m.delete(keyOf(i));
      assert.equal(m.count(), 250);
      m.close();
    });

    // ---- close ------------------------------------------------------------------------------

    it('close() is idempotent and a closed handle throws EBADF; other handles are unaffected', (h) => {
      const spec = h.spec(MapType.LRU_HASH, { pinPath: h.pinPath('closing') });
      const m = h.create(spec);
      m.update(keyOf(1), valueOf(1));
      const other = h.open(spec)!;
      const c = m.cursor(4);
      m.close();
      m.close();
      assert.equal(m.closed, true);
      const ops: Array<[string, () => unknown]> = [
        ['lookup', () => m.lookup(keyOf(1))],
        ['update', () => m.update(keyOf(2), valueOf(2))],
        ['delete', () => m.delete(keyOf(1))],
        ['updateBatch', () => m.updateBatch(keyOf(3), valueOf(3), 1)],
        ['deleteBatch', () => m.deleteBatch(keyOf(1), 1)],
        ['count', () => m.count()],
        ['info', () => m.info()],
        ['cursor', () => m.cursor().next()],
        ['open cursor', () => c.next()],
      ];
      for (const [what, op] of ops) {
        throwsErrno(op, Errno.EBADF, undefined, `${what} after close`);
      }
      c.close();
      assert.equal(other.closed, false);
      assert.deepEqual(other.lookup(keyOf(1)), valueOf(1));
      assert.equal(other.count(), 1);
      other.close();
    });

    // ---- ARRAY ------------------------------------------------------------------------------

    it('ARRAY: fixed zeroed slots, u32 keys, no deletes', (h) => {
      const max = 8;
      const vs = 12;
      const m = h.create(h.spec(MapType.ARRAY, { maxEntries: max, valueSize: vs, name: 'ct_array' }));
      const idx = (i: number): Buffer => {
        const k = Buffer.alloc(4);
        k.writeUInt32LE(i);
        return k;
      };
      const val = (i: number): Buffer => valueOf(i, 5, vs);
      assert.deepEqual(m.lookup(idx(3)), Buffer.alloc(vs), 'never-written slot reads as zeros');
      assert.equal(m.lookup(idx(max)), undefined, 'index past the end is absent');
      m.update(idx(3), val(3));
      assert.deepEqual(m.lookup(idx(3)), val(3));
      m.update(idx(3), val(4), UpdateFlag.EXIST);
      assert.deepEqual(m.lookup(idx(3)), val(4));
      throwsErrno(() => m.update(idx(5), val(5), UpdateFlag.NOEXIST), Errno.EEXIST, 'already-exists');
      throwsErrno(() => m.update(idx(max), val(1)), Errno.E2BIG, 'resource-exhausted');
      throwsErrno(() => m.delete(idx(3)), Errno.EINVAL);
      throwsErrno(() => m.deleteBatch(idx(3), 1), Errno.ENOTSUPP, 'failed-precondition');
      assert.equal(m.count(), max, 'every slot exists');

      const slots = range(0, max);
      m.updateBatch(packed(slots, idx), packed(slots, val), max);
      const seen: number[] = [];
      const c = m.cursor(3);
      for (let b = c.next(); b; b = c.next()) {
        assert.ok(b.count <= 3);
        for (let j = 0; j < b.count; j++) {
          const i = b.keys.readUInt32LE(j * 4);
          seen.push(i);
          assert.deepEqual(b.values.subarray(j * vs, (j + 1) * vs), val(i));
        }
      }
      c.close();
      assert.deepEqual(seen, slots, 'slots in index order');
      const info = m.info();
      assert.deepEqual([info.type, info.keySize, info.valueSize, info.maxEntries, info.name], [MapType.ARRAY, 4, vs, max, 'ct_array']);
      m.close();
    });

    // ---- PERCPU_ARRAY -------------------------------------------------------------------------

    it('PERCPU_ARRAY: one copy per possible CPU, each rounded up to 8 bytes', (h) => {
      // Read here independently of the backends: "0-1" -> 2, "0,2-3" -> 4.
      const possible = Math.max(
        ...fs
          .readFileSync('/sys/devices/system/cpu/possible', 'latin1')
          .trim()
          .split(',')
          .map((r) => Number(r.split('-').pop()) + 1),
      );
      const max = 4;
      const vs = 12; // not a multiple of 8: each CPU's copy takes 16 bytes
      const stride = 16;
      const m = h.create(h.spec(MapType.PERCPU_ARRAY, { maxEntries: max, valueSize: vs, name: 'ct_percpu' }));
      assert.equal(m.valueBufferSize, possible * stride, 'value buffer: all CPUs');
      const idx = (i: number): Buffer => {
        const k = Buffer.alloc(4);
        k.writeUInt32LE(i);
        return k;
      };
      /** Slot i's value: CPU c's copy holds (i, c) in its 12 bytes, the padding stays zero. */
      const val = (i: number, salt = 0): Buffer => {
        const v = Buffer.alloc(possible * stride);
        for (let c = 0; c < possible; c++) {
          v.writeUInt32LE(i, c * stride);
          v.writeUInt32LE(c, c * stride + 4);
          v.writeUInt32LE(0xc0ffee + salt, c * stride + 8);
        }
        return v;
      };
      assert.deepEqual(m.lookup(idx(1)), Buffer.alloc(possible * stride), 'never-written slot reads as zeros on every CPU');
      assert.equal(m.lookup(idx(max)), undefined, 'index past the end is absent');
      m.update(idx(1), val(1));
      assert.deepEqual(m.lookup(idx(1)), val(1), 'each CPU keeps its own copy');
      const out = Buffer.alloc(possible * stride);
      assert.equal(m.lookup(idx(1), out), out);
      assert.deepEqual(out, val(1));
      throwsErrno(() => m.update(idx(1), Buffer.alloc(vs)), Errno.EINVAL, undefined, 'one CPU\'s value is not a whole value');
      throwsErrno(() => m.lookup(idx(1), Buffer.alloc(vs)), Errno.EINVAL, undefined, 'lookup into one CPU\'s size');
      throwsErrno(() => m.update(idx(2), val(2), UpdateFlag.NOEXIST), Errno.EEXIST, 'already-exists');
      throwsErrno(() => m.update(idx(max), val(1)), Errno.E2BIG, 'resource-exhausted');
      throwsErrno(() => m.delete(idx(1)), Errno.EINVAL);
      assert.equal(m.count(), max, 'every slot exists');

      const slots = range(0, max);
      m.updateBatch(packed(slots, idx), packed(slots, (i) => val(i, 1)), max);
      const seen: number[] = [];
      const c = m.cursor(3);
      for (let b = c.next(); b; b = c.next()) {
        for (let j = 0; j < b.count; j++) {
          const i = b.keys.readUInt32LE(j * 4);
          seen.push(i);
          assert.deepEqual(b.values.subarray(j * m.valueBufferSize, (j + 1) * m.valueBufferSize), val(i, 1), `slot ${i} in a batch`);
        }
      }
      c.close();
      assert.deepEqual(seen, slots, 'slots in index order');
      const info = m.info();
      assert.deepEqual([info.type, info.keySize, info.valueSize, info.maxEntries], [MapType.PERCPU_ARRAY, 4, vs, max], 'info: the per-CPU value size');
      // Reopened through a pin, the same values.
      const pinned = h.create(h.spec(MapType.PERCPU_ARRAY, { maxEntries: 1, valueSize: vs, name: 'ct_percpu_pin', pinPath: h.pinPath('percpu') }));
      pinned.update(idx(0), val(9));
      const again = h.open(h.spec(MapType.PERCPU_ARRAY, { maxEntries: 1, valueSize: vs, name: 'ct_percpu_pin', pinPath: h.pinPath('percpu') }))!;
      assert.equal(again.valueBufferSize, possible * stride);
      assert.deepEqual(again.lookup(idx(0)), val(9));
      for (const x of [m, pinned, again]) x.close();
    });

    it('plain maps: the value buffer is the value size', (h) => {
      for (const type of [MapType.HASH, MapType.LRU_HASH, MapType.ARRAY] as const) {
        const m = h.create(h.spec(type, { valueSize: 12 }));
        assert.equal(m.valueBufferSize, 12, `type ${type}`);
        m.close();
      }
    });

    // ---- ARRAY_OF_MAPS (per-cluster CT maps) ----------------------------------------------------

    /** An outer array of `max` slots whose template is an LRU_HASH like `inner`. */
    const outerSpec = (h: Harness, inner: MapSpec, over: Partial<MapSpec> = {}): MapSpec =>
      h.spec(MapType.ARRAY_OF_MAPS, { keySize: 4, valueSize: 4, maxEntries: 8, innerSpec: { ...inner, pinPath: undefined }, ...over });
    const u32 = (n: number): Buffer => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(n, 0);
      return b;
    };

    it('ARRAY_OF_MAPS: a slot takes a matching map and reads back as its id; delete empties it', (h) => {
      const innerSpec = h.spec(MapType.LRU_HASH, { maxEntries: 1024 });
      const outer = h.create(outerSpec(h, innerSpec, { pinPath: h.pinPath('outer') }));
      // max_entries is not part of map-in-map compatibility: a larger inner map fits.
      const inner = h.create({ ...innerSpec, name: 'inner_1', maxEntries: 2048, pinPath: h.pinPath('outer_1') });
      assert.equal(outer.lookup(u32(1)), undefined, 'slots start empty');
      outer.update(u32(1), u32(inner.outerSlotValue()));
      assert.equal(outer.lookup(u32(1))!.readUInt32LE(0), inner.info().id);
      assert.equal(outer.info().type, MapType.ARRAY_OF_MAPS);
      // The slot holds its own reference: the inner map lives on after close and unpin.
      const id = inner.info().id;
      inner.close();
      h.backend.unpin(h.pinPath('outer_1'));
      assert.equal(outer.lookup(u32(1))!.readUInt32LE(0), id);
      assert.equal(outer.delete(u32(1)), true);
      assert.equal(outer.delete(u32(1)), false, 'already empty');
      assert.equal(outer.lookup(u32(1)), undefined);
      // Reopened through its pin, the outer map shows the same slots.
      const again = h.create({ ...innerSpec, name: 'inner_2' });
      outer.update(u32(7), u32(again.outerSlotValue()));
      const reopened = h.open(outerSpec(h, innerSpec, { pinPath: h.pinPath('outer') }))!;
      assert.equal(reopened.lookup(u32(7))!.readUInt32LE(0), again.info().id);
      for (const m of [outer, again, reopened]) m.close();
    });

    it('ARRAY_OF_MAPS refuses what the kernel refuses', (h) => {
      const innerSpec = h.spec(MapType.LRU_HASH);
      const outer = h.create(outerSpec(h, innerSpec));
      const otherKey = h.create(h.spec(MapType.LRU_HASH, { keySize: 38 }));
      const otherFlags = h.create(h.spec(MapType.LRU_HASH, { maxEntries: 512, flags: MapFlag.NO_COMMON_LRU }));
      const otherType = h.create(h.spec(MapType.HASH));
      const fits = h.create(innerSpec);
      throwsErrno(() => outer.update(u32(0), u32(otherKey.outerSlotValue())), Errno.EINVAL, undefined, 'key size differs');
      throwsErrno(() => outer.update(u32(0), u32(otherFlags.outerSlotValue())), Errno.EINVAL, undefined, 'flags differ');
      throwsErrno(() => outer.update(u32(0), u32(otherType.outerSlotValue())), Errno.EINVAL, undefined, 'type differs');
      throwsErrno(() => outer.update(u32(8), u32(fits.outerSlotValue())), Errno.E2BIG, undefined, 'index past the end');
      throwsErrno(() => outer.update(u32(0), u32(fits.outerSlotValue()), UpdateFlag.NOEXIST), Errno.EINVAL, undefined, 'NOEXIST');
      throwsErrno(() => outer.delete(u32(8)), Errno.E2BIG, undefined, 'delete past the end');
      assert.equal(outer.lookup(u32(0)), undefined, 'nothing was written');
      throwsErrno(() => h.create(h.spec(MapType.ARRAY_OF_MAPS, { keySize: 4, valueSize: 4 })), Errno.EBADF, undefined, 'no template');
      for (const m of [outer, otherKey, otherFlags, otherType, fits]) m.close();
    });

    // ---- create() validation ----------------------------------------------------------------

    it('create() rejects what BPF_MAP_CREATE rejects', (h) => {
      const bad: Array<[string, MapSpec, number]> = [
        ['maxEntries 0', h.spec(MapType.LRU_HASH, { maxEntries: 0 }), Errno.EINVAL],
        ['keySize 0', h.spec(MapType.HASH, { keySize: 0 }), Errno.EINVAL],
        ['valueSize 0', h.spec(MapType.HASH, { valueSize: 0 }), Errno.EINVAL],
        ['ARRAY with 8-byte keys', h.spec(MapType.ARRAY, { keySize: 8 }), Errno.EINVAL],
        ['PERCPU_ARRAY with 8-byte keys', h.spec(MapType.PERCPU_ARRAY, { keySize: 8 }), Errno.EINVAL],
        ['PERCPU_ARRAY with NO_PREALLOC', h.spec(MapType.PERCPU_ARRAY, { flags: MapFlag.NO_PREALLOC }), Errno.EINVAL],
        ['ARRAY with NO_COMMON_LRU', h.spec(MapType.ARRAY, { flags: MapFlag.NO_COMMON_LRU }), Errno.EINVAL],
        ['HASH with NO_COMMON_LRU', h.spec(MapType.HASH, { flags: MapFlag.NO_COMMON_LRU }), Errno.EINVAL],
        ['LRU_HASH with NO_PREALLOC', h.spec(MapType.LRU_HASH, { flags: MapFlag.NO_PREALLOC }), Errno.ENOTSUPP],
        ['name with a dash', h.spec(MapType.HASH, { name: 'bad-name' }), Errno.EINVAL],
      ];
      for (const [what, spec, errno] of bad) {
        throwsErrno(() => h.create(spec), errno, undefined, what);
      }
      // A failed create pins nothing.
      const pinned = h.spec(MapType.HASH, { maxEntries: 0, pinPath: h.pinPath('failed') });
      throwsErrno(() => h.create(pinned), Errno.EINVAL);
      assert.equal(h.backend.pinnedInfo(pinned.pinPath!), undefined);
    });
  });
}
