/**
 * Per-cluster CT maps on the memory backend (issue 4): the same suite as the kernel tier,
 * with the backend's pin registry standing in for bpffs.
 */
import { test } from 'node:test';
import { memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { MapType } from '../../src/maps/types';
import { clusterSuite } from '../helpers/cluster-suite';

test('memory: per-cluster CT maps: create, outer slots, per-cluster entries and GC, leave, restart, cleanup', async (t) => {
  const root = `/memory-cluster-${process.pid}`;
  t.after(() => {
    for (const p of pinnedPaths()) if (p.startsWith(`${root}/`)) memoryBackend.unpin(p);
  });
  await clusterSuite(t, {
    flags: ['--backend', 'memory', '--bpf-root', root],
    bpfRoot: root,
    pinned: (p) => memoryBackend.pinnedInfo(p) !== undefined,
    slot(outerPin, id) {
      const outer = memoryBackend.open({ name: 'probe', type: MapType.ARRAY_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, pinPath: outerPin });
      if (!outer) throw new Error(`${outerPin} is not pinned`);
      try {
        const key = Buffer.alloc(4);
        key.writeUInt32LE(id, 0);
        return outer.lookup(key)?.readUInt32LE(0);
      } finally {
        outer.close();
      }
    },
    mapId(p) {
      const info = memoryBackend.pinnedInfo(p);
      if (!info) throw new Error(`${p} is not pinned`);
      return info.id;
    },
  });
});
