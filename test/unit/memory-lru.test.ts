/**
 * Memory-backend details the shared contract cannot assert because the kernel's LRU is
 * approximate: exact LRU order, collision chains, scale, and the packed, up-front layout.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { BpfSyscallError, Errno } from '../../src/maps/errors';
import { HashTable, MemoryMap, memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { MapFlag, MapSpec, MapType, MapTypeValue, UpdateFlag } from '../../src/maps/types';

const KS = 14;
const VS = 56;

function spec(type: MapTypeValue, maxEntries: number, over: Partial<MapSpec> = {}): MapSpec {
  return { name: 'unit', type, keySize: KS, valueSize: VS, maxEntries, flags: 0, ...over };
}

function create(s: MapSpec): MemoryMap {
  return memoryBackend.create(s) as MemoryMap;
}

function hashTable(m: MemoryMap): HashTable {
  assert.ok(m.table instanceof HashTable);
  return m.table;
}

/** Key for i with the index in the last 4 bytes, so every key differs in its partial tail word. */
function keyOf(i: number, into: Buffer = Buffer.alloc(KS)): Buffer {
  into.fill(0xa5, 0, KS - 4);
  into.writeUInt32LE(i >>> 0, KS - 4);
  return into;
}

function valueOf(i: number, salt = 0, into: Buffer = Buffer.alloc(VS)): Buffer {
  into.fill((i + salt) & 0xff);
  into.writeUInt32LE(i >>> 0, 0);
  into.writeUInt32LE(salt >>> 0, 4);
  return into;
}

function present(m: MemoryMap, i: number): boolean {
  return m.lookup(keyOf(i)) !== undefined;
}

function throwsErrno(fn: () => unknown, errno: number): void {
  assert.throws(fn, (err: unknown) => err instanceof BpfSyscallError && err.errno === errno);
}

describe('memory LRU_HASH: exact LRU order', () => {
  test('with a full map, a lookup of the oldest key saves it from eviction', () => {
    const m = create(spec(MapType.LRU_HASH, 100));
    for (let i = 0; i < 100; i++) m.update(keyOf(i), valueOf(i));
    assert.ok(m.lookup(keyOf(0)));
    m.update(keyOf(100), valueOf(100));
    assert.equal(m.count(), 100);
    assert.ok(present(m, 0), 'looked-up key survived');
    assert.equal(m.lookup(keyOf(1)), undefined, 'next-oldest key was evicted instead');
    m.close();
  });

  test('lookup and update both refresh; batch reads and failed updates do not', () => {
    const m = create(spec(MapType.LRU_HASH, 4));
    for (const i of [0, 1, 2, 3]) m.update(keyOf(i), valueOf(i)); // recency: 3 2 1 0
    m.lookup(keyOf(0)); // 0 3 2 1
    m.update(keyOf(4), valueOf(4)); // evicts 1 -> 4 0 3 2
    assert.deepEqual([0, 1, 2, 3, 4].map((i) => present(m, i)), [true, false, true, true, true]);

    // The presence checks above were lookups too: recency is now 4 3 2 0.
    m.update(keyOf(2), valueOf(2, 1)); // 2 4 3 0
    throwsErrno(() => m.update(keyOf(0), valueOf(0), UpdateFlag.NOEXIST), Errno.EEXIST); // no refresh
    assert.equal(m.lookup(keyOf(99)), undefined); // a miss changes nothing
    const c = m.cursor(1); // batch reads never refresh
    while (c.next());
    c.close();
    m.update(keyOf(5), valueOf(5)); // evicts 0
    assert.equal(m.count(), 4);
    const keys: number[] = [];
    const c2 = m.cursor();
    for (let b = c2.next(); b; b = c2.next()) for (let j = 0; j < b.count; j++) keys.push(b.keys.readUInt32LE(j * KS + KS - 4));
    c2.close();
    assert.deepEqual(keys.sort(), [2, 3, 4, 5]);
    assert.deepEqual(m.lookup(keyOf(2)), valueOf(2, 1));
    m.close();
  });

  test('overfilling keeps exactly the newest maxEntries keys', () => {
    const m = create(spec(MapType.LRU_HASH, 1000));
    for (let i = 0; i < 3000; i++) m.update(keyOf(i), valueOf(i));
    assert.equal(m.count(), 1000);
    for (let i = 0; i < 3000; i++) assert.equal(present(m, i), i >= 2000, `key ${i}`);
    m.close();
  });

  test('NO_COMMON_LRU has the same exact semantics and is reported in info', () => {
    const m = create(spec(MapType.LRU_HASH, 10, { flags: MapFlag.NO_COMMON_LRU }));
    assert.equal(m.info().flags, MapFlag.NO_COMMON_LRU);
    for (let i = 0; i < 25; i++) m.update(keyOf(i), valueOf(i));
    for (let i = 0; i < 25; i++) assert.equal(present(m, i), i >= 15);
    m.close();
  });
});

describe('memory hash tables: collision chains', () => {
  /** `n` keys (by index) that land in `bucket`, searching indexes from `from`. */
  function colliders(t: HashTable, bucket: number, n: number, from = 0): number[] {
    const out: number[] = [];
    const k = Buffer.alloc(KS);
    for (let i = from; out.length < n; i++) if (t.bucketOf(keyOf(i, k)) === bucket) out.push(i);
    return out;
  }

  test('a long chain: insert, look up, delete head/middle/tail, iterate as one batch', () => {
    const m = create(spec(MapType.HASH, 1024));
    const t = hashTable(m);
    assert.equal(t.bucketCount, 1024, 'buckets: a power of two >= maxEntries');
    const bucket = t.bucketOf(keyOf(0));
    const chain = colliders(t, bucket, 20);
    const others = Array.from({ length: 500 }, (_, i) => 1_000_000 + i);
    for (const i of [...chain, ...others]) m.update(keyOf(i), valueOf(i));
    const expectedLen = [...chain, ...others].filter((i) => t.bucketOf(keyOf(i)) === bucket).length;
    assert.ok(expectedLen >= 20);
    assert.equal(t.chainLength(bucket), expectedLen);
    for (const i of [...chain, ...others]) assert.deepEqual(m.lookup(keyOf(i)), valueOf(i), `key ${i}`);

    // New entries go to the chain head: chain[19] is the head, chain[0] the tail.
    const gone = [chain[19], chain[10], chain[0]];
    for (const i of gone) assert.equal(m.delete(keyOf(i)), true);
    assert.equal(t.chainLength(bucket), expectedLen - 3);
    for (const i of chain) assert.equal(present(m, i), !gone.includes(i), `key ${i}`);
    for (const i of gone) m.update(keyOf(i), valueOf(i, 1), UpdateFlag.NOEXIST);
    assert.equal(t.chainLength(bucket), expectedLen);

    // A batch of 1 grows to hold the whole chain rather than split the bucket.
    const batchOf = new Map<number, number>();
    let batchNo = 0;
    const c = m.cursor(1);
    for (let b = c.next(); b; b = c.next(), batchNo++) {
      for (let j = 0; j < b.count; j++) {
        const i = b.keys.readUInt32LE(j * KS + KS - 4);
        assert.ok(!batchOf.has(i), `key ${i} once`);
        batchOf.set(i, batchNo);
      }
    }
    c.close();
    assert.equal(batchOf.size, chain.length + others.length);
    assert.equal(new Set(chain.map((i) => batchOf.get(i))).size, 1, 'the chain came back in one batch');
    m.close();
  });

  test('LRU eviction unlinks entries from the middle and tail of a chain', () => {
    const m = create(spec(MapType.LRU_HASH, 8));
    const t = hashTable(m);
    const bucket = t.bucketOf(keyOf(0));
    const chain = colliders(t, bucket, 14);
    for (const i of chain.slice(0, 12)) m.update(keyOf(i), valueOf(i));
    assert.equal(m.count(), 8);
    assert.equal(t.chainLength(bucket), 8);
    for (const [n, i] of chain.slice(0, 12).entries()) assert.equal(present(m, i), n >= 4, `collider ${n}`);
    // Recency after those lookups: 11 10 ... 4 (4 oldest). Save 4, evict 5 then 6.
    m.lookup(keyOf(chain[4]));
    m.update(keyOf(chain[12]), valueOf(chain[12]));
    m.update(keyOf(chain[13]), valueOf(chain[13]));
    assert.deepEqual(
      chain.map((i) => present(m, i)),
      [false, false, false, false, true, false, false, true, true, true, true, true, true, true],
    );
    assert.equal(t.chainLength(bucket), 8);
    m.close();
  });

  test('keys that differ only in their last byte are distinct', () => {
    const m = create(spec(MapType.HASH, 256));
    const a = keyOf(0x01000000);
    const b = keyOf(0x02000000); // only byte KS-1 differs
    m.update(a, valueOf(1));
    m.update(b, valueOf(2));
    assert.deepEqual(m.lookup(a), valueOf(1));
    assert.deepEqual(m.lookup(b), valueOf(2));
    assert.equal(m.count(), 2);
    m.close();
  });
});

describe('memory hash tables at scale', () => {
  const N = 200_000;

  test(`HASH: ${N} entries insert / lookup / delete stay consistent`, () => {
    const m = create(spec(MapType.HASH, N));
    const k = Buffer.alloc(KS);
    const v = Buffer.alloc(VS);
    const out = Buffer.alloc(VS);
    for (let i = 0; i < N; i++) m.update(keyOf(i, k), valueOf(i, 0, v), UpdateFlag.NOEXIST);
    assert.equal(m.count(), N);
    throwsErrno(() => m.update(keyOf(N, k), valueOf(N, 0, v)), Errno.E2BIG);
    for (let i = 0; i < N; i++) {
      assert.equal(m.lookup(keyOf(i, k), out), out);
      if (!out.equals(valueOf(i, 0, v))) assert.fail(`value of ${i}`);
    }
    for (let i = 0; i < N; i += 2) assert.equal(m.delete(keyOf(i, k)), true);
    assert.equal(m.count(), N / 2);
    for (let i = 0; i < N; i++) if ((m.lookup(keyOf(i, k), out) !== undefined) !== (i % 2 === 1)) assert.fail(`key ${i}`);
    // Freed slots are reused: refill to exactly full with new values.
    for (let i = 0; i < N; i += 2) m.update(keyOf(i, k), valueOf(i, 7, v), UpdateFlag.NOEXIST);
    assert.equal(m.count(), N);
    const seen = new Uint8Array(N);
    const c = m.cursor();
    for (let b = c.next(); b; b = c.next()) {
      for (let j = 0; j < b.count; j++) {
        const i = b.keys.readUInt32LE(j * KS + KS - 4);
        if (seen[i]++ !== 0) assert.fail(`key ${i} twice`);
        if (!b.values.subarray(j * VS, (j + 1) * VS).equals(valueOf(i, i % 2 === 0 ? 7 : 0, v))) assert.fail(`value ${i}`);
      }
    }
    c.close();
    assert.equal(seen.reduce((a, x) => a + x, 0), N);
    const all = Buffer.alloc(N * KS);
    for (let i = 0; i < N; i++) keyOf(i, k).copy(all, i * KS);
    assert.deepEqual(m.deleteBatch(all, N), { deleted: N, missing: 0 });
    assert.equal(m.count(), 0);
    assert.equal(m.cursor().next(), null);
    m.close();
  });

  test(`LRU_HASH: ${2 * N} writes into ${N} slots keep exactly the newest ${N}`, () => {
    const m = create(spec(MapType.LRU_HASH, N));
    const k = Buffer.alloc(KS);
    const v = Buffer.alloc(VS);
    for (let i = 0; i < 2 * N; i++) m.update(keyOf(i, k), valueOf(i, 0, v));
    assert.equal(m.count(), N);
    const out = Buffer.alloc(VS);
    for (let i = 0; i < 2 * N; i++) {
      const hit = m.lookup(keyOf(i, k), out) !== undefined;
      if (hit !== i >= N) assert.fail(`key ${i}: present=${hit}`);
    }
    m.close();
  });
});

describe('memory hash tables: packed, up-front storage', () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;

  /** Memory usage once garbage (e.g. the tables of earlier tests) is really gone: V8 frees
   *  array buffer backing stores after the collection, so collect and yield until stable. */
  async function settled(): Promise<NodeJS.MemoryUsage> {
    let last = process.memoryUsage();
    for (let i = 0; i < 50; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 5));
      const now = process.memoryUsage();
      if (now.arrayBuffers === last.arrayBuffers && Math.abs(now.heapUsed - last.heapUsed) < 64 * 1024) return now;
      last = now;
    }
    return last;
  }

  test('memory is allocated at create(), proportional to maxEntries, and does not grow with entries', async () => {
    const max = 100_000;
    const ab0 = (await settled()).arrayBuffers;
    const m = create(spec(MapType.LRU_HASH, max));
    const t = hashTable(m);
    // keys + values + hashes + chain links + buckets (2^17) + LRU prev/next.
    const expected = max * (KS + VS) + 4 * max + 4 * max + 4 * 131_072 + 8 * max;
    assert.equal(t.byteSize, expected);
    const ab1 = (await settled()).arrayBuffers;
    assert.ok(ab1 - ab0 >= expected, `create() allocated ${ab1 - ab0} bytes, expected >= ${expected}`);

    const twice = create(spec(MapType.LRU_HASH, 2 * max));
    assert.equal(hashTable(twice).byteSize, 2 * expected, 'twice the entries, twice the bytes');
    twice.close();
    const hash = create(spec(MapType.HASH, max));
    assert.equal(hashTable(hash).byteSize, expected - 8 * max, 'plain HASH keeps no LRU list');
    hash.close();

    const k = Buffer.alloc(KS);
    const v = Buffer.alloc(VS);
    const before = await settled();
    for (let i = 0; i < max; i++) m.update(keyOf(i, k), valueOf(i, 0, v));
    const after = await settled();
    assert.equal(m.count(), max);
    assert.ok(after.arrayBuffers - before.arrayBuffers < 64 * 1024, `array buffers grew ${after.arrayBuffers - before.arrayBuffers}`);
    // A JS object per entry would cost >= 16 bytes each; allow noise well below that.
    const heapGrowth = after.heapUsed - before.heapUsed;
    assert.ok(heapGrowth < 4 * max, `heap grew ${heapGrowth} bytes for ${max} entries`);
    m.close();
  });
});

describe('memory backend specifics', () => {
  test('ids are process-unique across maps and handles share their table’s id', () => {
    const pinPath = `/memory-unit/${process.pid}/ids`;
    const a = create(spec(MapType.HASH, 8, { pinPath }));
    const b = create(spec(MapType.HASH, 8));
    const a2 = memoryBackend.open(spec(MapType.HASH, 8, { pinPath }))!;
    assert.notEqual(a.info().id, b.info().id);
    assert.equal(a2.info().id, a.info().id);
    assert.ok(pinnedPaths().includes(pinPath));
    assert.equal(memoryBackend.unpin(pinPath), true);
    assert.ok(!pinnedPaths().includes(pinPath));
    for (const m of [a, b, a2]) m.close();
  });

  test('pin paths are compared after normalisation, like paths on bpffs', () => {
    const m = create(spec(MapType.HASH, 8, { pinPath: `/memory-unit/${process.pid}/norm/m` }));
    assert.ok(memoryBackend.pinnedInfo(`/memory-unit/${process.pid}//norm/./m`));
    assert.equal(memoryBackend.unpin(`/memory-unit/${process.pid}/norm/../norm/m`), true);
    m.close();
  });

  test('HASH_OF_MAPS is not implemented (failed-precondition); ARRAY_OF_MAPS needs a template', () => {
    assert.throws(
      () => create(spec(MapType.HASH_OF_MAPS, 8, { keySize: 4, valueSize: 4 })),
      (err: unknown) => err instanceof BpfSyscallError && err.code === 'failed-precondition',
    );
    assert.throws(
      () => create(spec(MapType.ARRAY_OF_MAPS, 8, { keySize: 4, valueSize: 4 })),
      (err: unknown) => err instanceof BpfSyscallError && err.errno === 9,
    );
  });

  test('an allocation too large for the process is ENOMEM (resource-exhausted), not a crash', () => {
    assert.throws(
      () => create(spec(MapType.HASH, 0xffffffff, { keySize: 512, valueSize: 4096 })),
      (err: unknown) => err instanceof BpfSyscallError && err.errno === Errno.ENOMEM && err.code === 'resource-exhausted',
    );
  });
});
