/**
 * Issue 12, defect 10 on kernel maps: a dump whose map is closed between batches (its
 * cluster left) ends with NOT_FOUND naming the map and the cluster, not "use after close:
 * EBADF" (INTERNAL); the read already under way when the map closed (the prefetch, which
 * holds the fd) finishes, no read starts on the closing map, and its fd is closed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CtmapError } from '../../src/errors';
import type { MapRef } from '../../src/maps/ctmap/spec';
import { assertNoFdLeak, bpfFdCount, kernelTier } from '../helpers/kernel';
import { waitUntil } from '../helpers/wait';

test('kernel: a CT dump whose map closes between batches ends NOT_FOUND naming the cluster, fd closed', async (t) => {
  if (!kernelTier(t)) return;
  const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
  const { globalCtMapSpec } = require('../../src/maps/ctmap/spec') as typeof import('../../src/maps/ctmap/spec');
  const { DumpCursor } = require('../../src/maps/ctmap/tables') as typeof import('../../src/maps/ctmap/tables');
  const { CT_ENTRY } = require('../../src/maps/ctmap/layout') as typeof import('../../src/maps/ctmap/layout');

  const baseline = bpfFdCount();
  const cfg = { bpfRoot: '/unused', enableIPv4: true, enableIPv6: false, ctTcpMax: 16384, ctAnyMax: 1024, distributedLru: false };
  const map = kernelBackend.create({ ...globalCtMapSpec(cfg, 'ipv4', 'tcp'), pinPath: undefined });
  try {
    const value = Buffer.alloc(map.valueBufferSize);
    value.writeUInt32LE(0xfffffff0, CT_ENTRY.fields.lifetime.offset);
    for (let i = 0; i < 8000; i++) {
      const key = Buffer.alloc(map.spec.keySize);
      key.writeUInt32BE(0x0a000000 + i, 0);
      map.update(key, value);
    }
    const ref: MapRef = { family: 'ipv4', kind: 'tcp', clusterId: 9 };
    const cursor = new DumpCursor([{ ref, map }], undefined, 1024);
    const first = await cursor.next();
    assert.ok(first && first.count > 0);
    // The next batch is being read on a pool thread now; the cluster leaves meanwhile.
    map.close();
    const rest = async () => {
      while (await cursor.next());
    };
    await assert.rejects(rest(), (err: unknown) => {
      assert.ok(err instanceof CtmapError, String(err));
      assert.equal(err.code, 'not-found', err.message);
      assert.match(err.message, /tcp4 cluster 9 CT map/);
      return true;
    });
    cursor.close();
    // The prefetch under way at the close holds the fd until it is back from the pool.
    await waitUntil(() => map.fd.closed, 'the fd closed once the last read is back', 2000, 5);
  } finally {
    map.close();
  }
  assertNoFdLeak(baseline, 'the dump');
});

test('kernel: a batch cursor reads nothing more once its map is closed, and leaves no rejection unwatched', async (t) => {
  if (!kernelTier(t)) return;
  const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
  const { Errno, isErrno } = require('../../src/maps/errors') as typeof import('../../src/maps/errors');
  const baseline = bpfFdCount();
  const map = kernelBackend.create({ name: 'ctmapd_t_close', type: 1, keySize: 4, valueSize: 4, maxEntries: 8192, flags: 0 });
  const unwatched: unknown[] = [];
  const onUnhandled = (reason: unknown) => unwatched.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    for (let i = 0; i < 4000; i++) map.update(Buffer.from(Uint32Array.of(i).buffer), Buffer.alloc(4));
    const cursor = map.cursor(1024);
    assert.ok(await cursor.nextAsync()); // and the second batch is being prefetched
    map.close();
    // The batch read before the close is handed out; no read starts on the closed map.
    assert.ok(await cursor.nextAsync());
    await new Promise((r) => setImmediate(r));
    assert.ok(map.fd.closed, 'a read still holds the fd');
    await assert.rejects(cursor.nextAsync(), (err: unknown) => isErrno(err, Errno.EBADF));
    cursor.close();
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(unwatched, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
    map.close();
  }
  assertNoFdLeak(baseline, 'the cursor');
});
