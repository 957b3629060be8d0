/**
 * Issue 4's clustermesh "must show" end to end: a daemon with --clustermesh-config and a
 * real etcd. Writing the cluster config joins (maps appear), changing its id moves the
 * cluster, deleting it leaves (maps gone), the same through the config directory (a file
 * appearing joins, a file removed leaves), WatchMembership shows each event, and at a
 * restart the maps of a cluster no source claims go only after the sources have synced and
 * the reconcile grace period has passed.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { services } from '../../src/api/proto';
import { Client, call, startTestDaemon, tempDir } from '../helpers/grpc';
import { etcdTier, startEtcd } from '../helpers/etcd';
import { waitUntil } from '../helpers/wait';

const until = (cond: () => boolean | Promise<boolean>, what: string): Promise<void> => waitUntil(cond, what, 10_000, 25);

const CLUSTER = 'cluster-east';
const KEY = `cilium/cluster-config/${CLUSTER}`;

test('clustermesh through the daemon: etcd key and config directory drive join, move and leave', async (t) => {
  if (!etcdTier(t)) return;
  const etcd = await startEtcd(t);
  const tmp = tempDir(t);
  const meshDir = path.join(tmp.dir, 'clustermesh');
  fs.mkdirSync(meshDir);
  const root = `/memory-mesh-${process.pid}`;
  t.after(() => {
    for (const p of pinnedPaths()) if (p.startsWith(`${root}/`)) memoryBackend.unpin(p);
  });
  const innerPin = (id: number) => `${root}/tc/globals/cilium_per_cluster_ct_tcp4_${id}`;
  const pinned = (id: number) => memoryBackend.pinnedInfo(innerPin(id)) !== undefined;
  const flags = [
    '--backend', 'memory', '--bpf-root', root,
    '--bpf-ct-global-tcp-max', '2048', '--bpf-ct-global-any-max', '1024',
    '--clustermesh-config', meshDir, '--clustermesh-etcd-grace', '1', '--clustermesh-reconcile-grace', '1',
  ];

  await etcd.put(KEY, JSON.stringify({ id: 5, capabilities: { maxConnectedClusters: 255 } }));
  let d = await startTestDaemon(tmp.dir, flags);
  t.after(() => d.stop());
  let cc = new (services().ClusterCTMaps)(d.address, grpc.credentials.createInsecure()) as unknown as Client;
  t.after(() => cc.close());
  const events: any[] = [];
  const stream = (cc as any).WatchMembership({});
  stream.on('data', (m: any) => events.push([m.kind, m.cluster_id, m.cluster_name, m.source]));
  stream.on('error', () => undefined);
  t.after(() => stream.cancel());
  await new Promise((r) => setTimeout(r, 100));
  const ids = async () => (await call(cc, 'GetAllClusterCTMaps', {})).clusters.map((c: any) => c.cluster_id);

  // A file appearing joins, with the id its etcd holds.
  fs.writeFileSync(path.join(meshDir, CLUSTER), `endpoints:\n- ${etcd.endpoint}\n`);
  await until(async () => (await ids()).includes(5), 'cluster 5 joined from the config directory');
  assert.ok(pinned(5));
  // The id changes in etcd: the cluster moves.
  await etcd.put(KEY, JSON.stringify({ id: 6 }));
  await until(async () => JSON.stringify(await ids()) === '[6]', 'cluster moved to id 6');
  assert.ok(pinned(6) && !pinned(5), 'maps of 5 gone, of 6 there');
  // The key deleted: the cluster leaves.
  await etcd.del(KEY);
  await until(async () => (await ids()).length === 0, 'cluster left on key deletion');
  assert.ok(!pinned(6));
  // Written again: joins again; then the file removed: leaves.
  await etcd.put(KEY, JSON.stringify({ id: 8 }));
  await until(async () => (await ids()).includes(8), 'cluster 8 joined');
  fs.rmSync(path.join(meshDir, CLUSTER));
  await until(async () => (await ids()).length === 0, 'cluster left on file removal');

  await until(() => events.length >= 6, 'six membership events');
  assert.deepEqual(events, [
    ['JOIN', 5, CLUSTER, 'etcd'],
    ['JOIN', 6, CLUSTER, 'etcd'],
    ['LEAVE', 5, CLUSTER, 'etcd'],
    ['LEAVE', 6, CLUSTER, 'etcd'],
    ['JOIN', 8, CLUSTER, 'etcd'],
    ['LEAVE', 8, CLUSTER, 'config-dir'],
  ]);

  // Reconcile at restart: cluster 9 (created by RPC, pinned) is claimed by no source; the
  // file's cluster (id 8 in etcd) is claimed again. 9 stays until the source has synced and
  // the grace period (1 s) has passed, then goes; 8 stays.
  await call(cc, 'CreateClusterCTMaps', { cluster_id: 9 });
  fs.writeFileSync(path.join(meshDir, CLUSTER), `endpoints:\n- ${etcd.endpoint}\n`);
  await until(async () => (await ids()).includes(8), 'cluster 8 joined again');
  stream.cancel();
  cc.close();
  await d.stop();
  const started = Date.now();
  d = await startTestDaemon(tmp.dir, flags);
  cc = new (services().ClusterCTMaps)(d.address, grpc.credentials.createInsecure()) as unknown as Client;
  assert.deepEqual(await ids(), [8, 9], 'both found pinned at start');
  await until(async () => JSON.stringify(await ids()) === '[8]', 'the unclaimed cluster removed by the reconcile');
  assert.ok(Date.now() - started >= 1000, 'not before the grace period');
  assert.ok(!pinned(9) && pinned(8));
  assert.ok(d.logs.find(/reconcile: removed the maps of a cluster no source claims/), 'the removal is logged');
});
