/**
 * writeAllOrNothing (src/maps/batch-write.ts): a write that fails part way leaves every map
 * as it was before the call, across maps and chunks.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CtmapError } from '../../src/errors';
import { writeAllOrNothing } from '../../src/maps/batch-write';
import { memoryBackend } from '../../src/maps/memory';
import { BpfMap, MapType } from '../../src/maps/types';

function hashMap(maxEntries: number): BpfMap {
  return memoryBackend.create({ name: 'bw_test', type: MapType.HASH, keySize: 4, valueSize: 4, maxEntries, flags: 0 });
}

function packed(pairs: Array<[number, number]>): { keys: Buffer; values: Buffer; count: number } {
  const keys = Buffer.alloc(pairs.length * 4);
  const values = Buffer.alloc(pairs.length * 4);
  pairs.forEach(([k, v], i) => {
    keys.writeUInt32LE(k, i * 4);
    values.writeUInt32LE(v, i * 4);
  });
  return { keys, values, count: pairs.length };
}

function contents(map: BpfMap): Map<number, number> {
  const out = new Map<number, number>();
  const c = map.cursor();
  for (let b = c.next(); b; b = c.next()) for (let i = 0; i < b.count; i++) out.set(b.keys.readUInt32LE(i * 4), b.values.readUInt32LE(i * 4));
  c.close();
  return out;
}

test('writes every group and returns the total', () => {
  const a = hashMap(16);
  const b = hashMap(16);
  assert.equal(writeAllOrNothing([{ map: a, ...packed([[1, 10], [2, 20]]) }, { map: b, ...packed([[3, 30]]) }]), 3);
  assert.deepEqual(contents(a), new Map([[1, 10], [2, 20]]));
  assert.deepEqual(contents(b), new Map([[3, 30]]));
});

test('a failure in a later group or chunk restores every map: old values back, new keys gone', () => {
  const a = hashMap(16);
  const b = hashMap(4);
  writeAllOrNothing([{ map: a, ...packed([[1, 1]]) }, { map: b, ...packed([[7, 7]]) }]);
  const before = [contents(a), contents(b)];
  // b holds at most 4 entries: its 5th new key fails (E2BIG) in the second chunk of 2.
  assert.throws(
    () =>
      writeAllOrNothing(
        [
          { map: a, ...packed([[1, 100], [2, 200], [1, 101]]) },
          { map: b, ...packed([[7, 70], [8, 80], [9, 90], [10, 100], [11, 110]]) },
        ],
        2,
      ),
    (err: unknown) => err instanceof CtmapError && err.code === 'resource-exhausted' && !/rollback failed/.test(err.message),
  );
  assert.deepEqual([contents(a), contents(b)], before);
});

test('a rollback that fails is reported in the rethrown error, keeping its code', () => {
  const a = hashMap(16);
  const broken: BpfMap = Object.assign(Object.create(a) as BpfMap, {
    lookup: a.lookup.bind(a),
    update: a.update.bind(a),
    updateBatch: () => {
      throw new CtmapError('resource-exhausted', 'map update batch: E2BIG');
    },
    deleteBatch: () => {
      throw new CtmapError('permission-denied', 'map delete batch: EPERM');
    },
    delete: () => {
      throw new CtmapError('permission-denied', 'map delete: EPERM');
    },
  });
  assert.throws(
    () => writeAllOrNothing([{ map: broken, ...packed([[1, 1], [2, 2]]) }]),
    (err: unknown) => err instanceof CtmapError && err.code === 'resource-exhausted' && /rollback failed for 2 entries/.test(err.message),
  );
});
