/**
 * The copy machinery of map migration (src/maps/migrate.ts, issue 6) on the memory backend:
 * fingerprints, the bulk copy and what a smaller map keeps, and the delta copy's decisions
 * when the old map, the new map or both changed after the bulk copy.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { ctEntryRank } from '../../src/maps/ctmap/tables';
import { FingerprintLog, bulkCopy, deltaCopy } from '../../src/maps/migrate';
import { memoryBackend } from '../../src/maps/memory';
import { BpfMap, MapSpec, MapType } from '../../src/maps/types';
import { KEY4, VALUE, checkEntries, fillEntries, keyOf, latestLifetimes, lifetimeOf, valueOf } from '../helpers/migration';

function lru(maxEntries: number): MapSpec {
  return { name: 'mig', type: MapType.LRU_HASH, keySize: KEY4, valueSize: VALUE, maxEntries, flags: 0 };
}

function packed(indexes: number[], salt = 0): { keys: Buffer; values: Buffer } {
  const keys = Buffer.alloc(indexes.length * KEY4);
  const values = Buffer.alloc(indexes.length * VALUE);
  indexes.forEach((i, j) => {
    keyOf(i, keys, j * KEY4);
    valueOf(i, salt, values, j * VALUE);
  });
  return { keys, values };
}

describe('FingerprintLog', () => {
  test('a second pass in the same order matches entry by entry', () => {
    const log = new FingerprintLog();
    const all = packed([...Array(5000).keys()]);
    log.appendBatch(all.keys, all.values, 5000, KEY4, VALUE);
    assert.equal(log.size, 5000);
    const out = new Uint8Array(5000);
    log.matchBatch(all.keys, all.values, 5000, KEY4, VALUE, out);
    assert.equal(out.reduce((n, x) => n + x, 0), 5000);
  });

  test('a changed value, a new entry and a gone entry are told apart, and matching picks up after them', () => {
    const log = new FingerprintLog();
    const first = packed([0, 1, 2, 3, 4, 5, 6, 7]);
    log.appendBatch(first.keys, first.values, 8, KEY4, VALUE);
    // Second pass: 2 changed value, 100 is new, 5 is gone; the rest unchanged and in order.
    const order = [0, 1, 2, 100, 3, 4, 6, 7];
    const second = packed(order);
    valueOf(2, 9, second.values, 2 * VALUE);
    const out = new Uint8Array(order.length);
    log.matchBatch(second.keys, second.values, order.length, KEY4, VALUE, out);
    assert.deepEqual([...out], [1, 1, 0, 0, 1, 1, 1, 1]);
    // Single lookups, from buffers at any alignment, agree with the batch path.
    assert.equal(log.has(keyOf(5), valueOf(5)), true, 'gone from the map, but it was recorded');
    assert.equal(log.has(keyOf(2), valueOf(2, 9)), false);
    const odd = Buffer.alloc(1 + KEY4 + VALUE);
    keyOf(3).copy(odd, 1);
    valueOf(3).copy(odd, 1 + KEY4);
    assert.equal(log.has(odd.subarray(1, 1 + KEY4), odd.subarray(1 + KEY4)), true, 'unaligned buffers');
  });

  test('random entries: no false matches among 200 k unrelated values', () => {
    const log = new FingerprintLog();
    const n = 200_000;
    const keys = randomBytes(n * KEY4);
    const values = randomBytes(n * VALUE);
    log.appendBatch(keys, values, n, KEY4, VALUE);
    const other = randomBytes(n * VALUE);
    const out = new Uint8Array(n);
    log.matchBatch(keys, other, n, KEY4, VALUE, out);
    assert.equal(out.reduce((a, x) => a + x, 0), 0);
  });
});

describe('bulkCopy', () => {
  const open = (max: number): BpfMap => memoryBackend.create(lru(max));

  test('grow: every entry copied byte for byte, every one fingerprinted', async () => {
    const src = open(4096);
    const dst = open(8192);
    fillEntries(src, 3000);
    const seen = new FingerprintLog();
    const stats = await bulkCopy({ src, dst, backend: memoryBackend, plan: memoryBackend.fillPlan(dst.spec), rank: ctEntryRank, seen });
    assert.deepEqual(stats, { seen: 3000, copied: 3000, dropped: 0 });
    assert.deepEqual(checkEntries(dst, 3000), { count: 3000, foreign: 0, wrongValue: 0 });
    assert.equal(seen.size, 3000);
  });

  test('shrink: exactly the new capacity kept, the entries with the latest lifetimes', async () => {
    const src = open(8192);
    const dst = open(2048);
    fillEntries(src, 5000);
    const stats = await bulkCopy({ src, dst, backend: memoryBackend, plan: memoryBackend.fillPlan(dst.spec), rank: ctEntryRank, seen: new FingerprintLog() });
    assert.deepEqual(stats, { seen: 5000, copied: 2048, dropped: 2952 });
    const check = checkEntries(dst, 5000, { indexes: true });
    assert.deepEqual(check.indexes, latestLifetimes(5000, 2048));
    assert.equal(check.wrongValue, 0);
  });

  test('shrink with equal lifetimes at the threshold: still exactly the capacity', async () => {
    const src = open(4096);
    const dst = open(1024);
    fillEntries(src, 3000);
    // Every entry gets one of three lifetimes: the cut falls inside a tie.
    const keys = Buffer.alloc(3000 * KEY4);
    const values = Buffer.alloc(3000 * VALUE);
    for (let i = 0; i < 3000; i++) {
      keyOf(i, keys, i * KEY4);
      valueOf(i, 0, values, i * VALUE).writeUInt32LE(1000 + (i % 3), i * VALUE + 32);
    }
    src.updateBatch(keys, values, 3000);
    const stats = await bulkCopy({ src, dst, backend: memoryBackend, plan: memoryBackend.fillPlan(dst.spec), rank: ctEntryRank, seen: new FingerprintLog() });
    assert.deepEqual(stats, { seen: 3000, copied: 1024, dropped: 1976 });
    assert.equal(dst.count(), 1024);
    // All 1000 entries of the latest lifetime, then 24 of the next.
    const lifetimes = new Map<number, number>();
    const c = dst.cursor();
    for (let b = c.next(); b; b = c.next()) for (let j = 0; j < b.count; j++) lifetimes.set(ctEntryRank(b.values, j * VALUE), (lifetimes.get(ctEntryRank(b.values, j * VALUE)) ?? 0) + 1);
    c.close();
    assert.deepEqual(Object.fromEntries(lifetimes), { 1002: 1000, 1001: 24 });
  });
});

describe('deltaCopy', () => {
  test('after the swap: old changes carried over unless the new map changed since; new entries added; nothing deleted', async () => {
    const old = memoryBackend.create(lru(4096));
    const fresh = memoryBackend.create(lru(8192));
    fillEntries(old, 1000);
    const seen = new FingerprintLog();
    const plan = memoryBackend.fillPlan(fresh.spec);
    await bulkCopy({ src: old, dst: fresh, backend: memoryBackend, plan, rank: ctEntryRank, seen });

    old.update(keyOf(1), valueOf(1, 7)); // changed in old only: carried over
    old.update(keyOf(2), valueOf(2, 7)); // changed in both: the new map's value is newer
    fresh.update(keyOf(2), valueOf(2, 8));
    old.update(keyOf(1000), valueOf(1000, 7)); // created in old after the copy: added
    old.update(keyOf(1001), valueOf(1001, 7)); // created in both: the new map's wins
    fresh.update(keyOf(1001), valueOf(1001, 8));
    old.delete(keyOf(3)); // deleted in old: kept in new (expires there)

    const stats = await deltaCopy({ old, fresh, backend: memoryBackend, plan, rank: ctEntryRank, seen });
    assert.deepEqual(stats, { scanned: 1001, unchanged: 997, written: 2, keptNewer: 2, dropped: 0 });
    const salts = new Map([
      [1, 7],
      [2, 8],
      [1000, 7],
      [1001, 8],
    ]);
    assert.deepEqual(checkEntries(fresh, 1002, { salt: (i) => salts.get(i) ?? 0 }), { count: 1002, foreign: 0, wrongValue: 0 });
  });

  test('after a crash (no fingerprints): entries missing from the new map are added, highest lifetime first, while there is room', async () => {
    const old = memoryBackend.create(lru(8192));
    const fresh = memoryBackend.create(lru(2048));
    fillEntries(old, 3000);
    fillEntries(fresh, 1500); // entries 0..1499, as a bulk copy would have left them
    fresh.update(keyOf(7), valueOf(7, 5)); // changed in the new map: kept
    const stats = await deltaCopy({ old, fresh, backend: memoryBackend, plan: memoryBackend.fillPlan(fresh.spec), rank: ctEntryRank });
    assert.deepEqual(stats, { scanned: 3000, unchanged: 1500, written: 548, keptNewer: 0, dropped: 952 });
    const check = checkEntries(fresh, 3000, { indexes: true, salt: (i) => (i === 7 ? 5 : 0) });
    assert.equal(check.count, 2048);
    assert.equal(check.wrongValue, 0);
    // The 548 added are the latest-lifetime ones among the 1500 missing (1500..2999).
    const want = Array.from({ length: 1500 }, (_, k) => 1500 + k)
      .sort((a, b) => lifetimeOf(b) - lifetimeOf(a))
      .slice(0, 548)
      .sort((a, b) => a - b);
    assert.deepEqual(check.indexes!.filter((i) => i >= 1500), want);
  });
});
