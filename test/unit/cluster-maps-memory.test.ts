/**
 * Per-cluster CT maps on the memory backend (issue 4): the same suite as the kernel tier,
 * with the backend's pin registry standing in for bpffs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { memoryOuterSlot } from '../helpers/memory';
import { services } from '../../src/api/proto';
import { clusterSuite } from '../helpers/cluster-suite';
import { Client, call, rejectsWith, startTestDaemon, tempDir } from '../helpers/grpc';

test('memory: per-cluster CT maps: create, outer slots, per-cluster entries and GC, leave, restart, cleanup', async (t) => {
  const root = `/memory-cluster-${process.pid}`;
  t.after(() => {
    for (const p of pinnedPaths()) if (p.startsWith(`${root}/`)) memoryBackend.unpin(p);
  });
  await clusterSuite(t, {
    flags: ['--backend', 'memory', '--bpf-root', root],
    bpfRoot: root,
    pinned: (p) => memoryBackend.pinnedInfo(p) !== undefined,
    slot: memoryOuterSlot,
    mapId(p) {
      const info = memoryBackend.pinnedInfo(p);
      if (!info) throw new Error(`${p} is not pinned`);
      return info.id;
    },
  });
});

test('memory: --max-connected-clusters=511 sizes the outer maps 512 and takes ids up to 511', async (t) => {
  const root = `/memory-cluster511-${process.pid}`;
  t.after(() => {
    for (const p of pinnedPaths()) if (p.startsWith(`${root}/`)) memoryBackend.unpin(p);
  });
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', root, '--max-connected-clusters', '511', '--bpf-ct-global-tcp-max', '2048', '--bpf-ct-global-any-max', '1024']);
  t.after(() => d.stop());
  const cc = new (services().ClusterCTMaps)(d.address, grpc.credentials.createInsecure()) as unknown as Client;
  t.after(() => cc.close());
  for (const name of ['cilium_per_cluster_ct_tcp4', 'cilium_per_cluster_ct_any6', 'cilium_per_cluster_snat_v4_external']) {
    assert.equal(memoryBackend.pinnedInfo(`${root}/tc/globals/${name}`)?.maxEntries, 512, name);
  }
  assert.equal((await call(cc, 'CreateClusterCTMaps', { cluster_id: 511 })).cluster_id, 511);
  assert.ok(memoryBackend.pinnedInfo(`${root}/tc/globals/cilium_per_cluster_ct_tcp6_511`));
  await rejectsWith(call(cc, 'CreateClusterCTMaps', { cluster_id: 512 }), grpc.status.INVALID_ARGUMENT, 'cluster_id');
});
