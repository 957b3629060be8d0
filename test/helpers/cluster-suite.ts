/**
 * Issue 4's per-cluster "must show", through a daemon over gRPC, for either backend. The
 * backend-specific parts (is a map pinned, which map id does an outer slot hold, the id of
 * a pinned map) come from the caller: bpftool and bpffs for the kernel, the pin registry
 * for the memory backend.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ClusterCtMapsClient, clusterCtMapsClient, gcRunnerClient, natMapsClient } from '../../src/api/clients';
import type { MembershipEventMsg } from '../../src/api/cluster-proto';
import { call, collect, ctClient, rejectsWith, startTestDaemon, tempDir } from './grpc';
import { snatPair } from './nat-fixtures';
import { waitUntil } from './wait';

export interface ClusterBackendProbe {
  /** Daemon flags selecting the backend and its bpf-root. */
  readonly flags: string[];
  readonly bpfRoot: string;
  pinned(pinPath: string): boolean;
  /** The map id in slot `id` of the outer map pinned at `outerPin`; undefined when empty. */
  slot(outerPin: string, id: number): number | undefined;
  /** The id of the map pinned at `pin`. */
  mapId(pin: string): number;
}

const V4 = 'FAMILY_IPV4';
const V6 = 'FAMILY_IPV6';
const INNER = (id: number) => [
  `cilium_per_cluster_ct_tcp4_${id}`,
  `cilium_per_cluster_ct_any4_${id}`,
  `cilium_per_cluster_ct_tcp6_${id}`,
  `cilium_per_cluster_ct_any6_${id}`,
];
const OUTER4 = ['cilium_per_cluster_ct_tcp4', 'cilium_per_cluster_ct_any4', 'cilium_per_cluster_snat_v4_external'];
const OUTER6 = ['cilium_per_cluster_ct_tcp6', 'cilium_per_cluster_ct_any6', 'cilium_per_cluster_snat_v6_external'];

/** A WatchMembership subscriber that records every event. */
function watch(client: ClusterCtMapsClient): { events: MembershipEventMsg[]; cancel(): void } {
  const events: MembershipEventMsg[] = [];
  const stream = client.WatchMembership({});
  stream.on('data', (m: MembershipEventMsg) => events.push(m));
  stream.on('error', () => undefined);
  return { events, cancel: () => stream.cancel() };
}

/** The suite's waits: 2 s each. */
const until = (cond: () => boolean, what: string): Promise<void> => waitUntil(cond, what, 2_000, 10);

export async function clusterSuite(t: TestContext, probe: ClusterBackendProbe): Promise<void> {
  const globals = path.join(probe.bpfRoot, 'tc', 'globals');
  const pin = (name: string) => path.join(globals, name);
  const sock = tempDir(t);
  const flags = [...probe.flags, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '2048', '--bpf-nat-global-max', '2048'];
  let d = await startTestDaemon(sock.dir, flags);
  t.after(() => d.stop());
  let cc = clusterCtMapsClient(d.address);
  let ct = ctClient(d.address);
  let gc = gcRunnerClient(d.address);
  t.after(() => (cc.close(), ct.close(), gc.close()));
  const w = watch(cc);
  t.after(() => w.cancel());
  await new Promise((r) => setTimeout(r, 100)); // the watch is in place

  // The outer maps exist from the start, empty.
  for (const name of [...OUTER4, ...OUTER6]) assert.ok(probe.pinned(pin(name)), `${name} pinned at start`);

  // ---- Create(1) and Create(ClusterIDMax): 4 inner CT maps each, slots hold their ids ----
  for (const id of [1, 255]) {
    const res = await call(cc, 'CreateClusterCTMaps', { cluster_id: id });
    assert.equal(res.cluster_id, id);
    assert.deepEqual(res.maps.map((m: any) => m.name).sort(), [...INNER(id), `cilium_per_cluster_snat_v4_external_${id}`, `cilium_per_cluster_snat_v6_external_${id}`].sort());
    for (const m of res.maps) assert.equal(m.pin_path, pin(m.name));
    for (const name of INNER(id)) {
      assert.ok(probe.pinned(pin(name)), `${name} pinned`);
      const outer = name.replace(/_\d+$/, '');
      assert.equal(probe.slot(pin(outer), id), probe.mapId(pin(name)), `${outer}[${id}] holds ${name}`);
    }
    assert.equal(probe.slot(pin('cilium_per_cluster_snat_v4_external'), id), probe.mapId(pin(`cilium_per_cluster_snat_v4_external_${id}`)));
  }
  // Re-create is a no-op: same maps (same ids), no new JOIN.
  const idBefore = probe.mapId(pin(INNER(1)[0]));
  await call(cc, 'CreateClusterCTMaps', { cluster_id: 1 });
  assert.equal(probe.mapId(pin(INNER(1)[0])), idBefore, 're-create keeps the map');
  await until(() => w.events.length >= 2, 'two JOIN events');
  assert.deepEqual(w.events.map((e) => [e.kind, e.cluster_id, e.source]), [['JOIN', 1, 'rpc'], ['JOIN', 255, 'rpc']]);

  const all = await call(cc, 'GetAllClusterCTMaps', {});
  assert.deepEqual(all.clusters.map((c: any) => c.cluster_id), [1, 255]);
  const active = await call(ct, 'ActiveMaps', {});
  assert.ok(active.maps.some((m: any) => m.name === 'cilium_per_cluster_ct_tcp4_255' && m.ref.cluster_id === 255), 'ActiveMaps lists cluster maps');

  // ---- ids 0 and ClusterIDMax+1 are refused on every RPC, and nothing changes ----
  for (const bad of [0, 256]) {
    await rejectsWith(call(cc, 'CreateClusterCTMaps', { cluster_id: bad }), grpc.status.INVALID_ARGUMENT, 'cluster_id');
    await rejectsWith(call(cc, 'DeleteClusterCTMaps', { cluster_id: bad }), grpc.status.INVALID_ARGUMENT, 'cluster_id');
  }
  await rejectsWith(call(ct, 'Count', { maps: [{ family: V4, kind: 'MAP_KIND_TCP', cluster_id: 256 }] }), grpc.status.INVALID_ARGUMENT, 'maps[0].cluster_id');
  assert.ok(!probe.pinned(pin('cilium_per_cluster_ct_tcp4_256')) && !probe.pinned(pin('cilium_per_cluster_ct_tcp4_0')));

  // ---- an entry in cluster 7's TCP4 map lives there, not in the global map ----
  await call(cc, 'CreateClusterCTMaps', { cluster_id: 7 });
  const c7 = { family: V4, kind: 'MAP_KIND_TCP', cluster_id: 7 };
  const g = { family: V4, kind: 'MAP_KIND_TCP', cluster_id: 0 };
  const key = { daddr: '192.0.2.7', saddr: '198.51.100.7', dport: 443, sport: 40007, nexthdr: 6, flags: 0 };
  const alive = { ...key, sport: 40008 };
  await call(ct, 'Update', { records: [{ map: c7, key, entry: { lifetime: 1, packets: '7' } }, { map: c7, key: alive, entry: { lifetime: 0xfffffff0 } }] });
  const dumped = await collect(ct, 'DumpEntries', { maps: [c7] });
  assert.equal(dumped.length, 2);
  assert.ok(dumped.every((r: any) => r.map.cluster_id === 7));
  assert.equal((await collect(ct, 'DumpEntries', { maps: [g] })).length, 0, 'not in the global map');
  const counts = await call(ct, 'Count', { maps: [c7, g] });
  assert.deepEqual(counts.counts.map((c: any) => Number(c.entries)), [2, 0]);
  // The expired entry's SNAT pair lives in cluster 7's NAT map: the GC takes it along.
  const natc = natMapsClient(d.address);
  t.after(() => natc.close());
  const pair = snatPair(key, { addr: '192.0.2.70', port: 61007 });
  const natRec = (r: typeof pair.out) => ({ family: V4, cluster_id: 7, key: r.key, entry: { ...r.entry, created: String(r.entry.created), needs_ct: r.entry.needsCt } });
  await call(natc, 'Update', { records: [natRec(pair.out), natRec(pair.in)] });
  assert.equal((await collect(natc, 'DumpEntries', { family: V4, cluster_id: 0 })).length, 0, 'not in the global NAT map');
  const run = (await collect(gc, 'Run', { family: V4, filter: { remove_expired: true } })).at(-1).stats;
  assert.equal(run.nat_deleted, '2', "the SNAT pair went with its CT entry, from cluster 7's NAT map");
  assert.equal((await collect(natc, 'DumpEntries', { family: V4, cluster_id: 7 })).length, 0);
  const stat7 = run.maps.find((m: any) => m.map.cluster_id === 7 && m.map.kind === 'MAP_KIND_TCP');
  assert.deepEqual([stat7.deleted, stat7.alive], ['1', '1'], 'the GC pass covers cluster 7 and deletes its expired entry');
  assert.equal(run.maps.filter((m: any) => m.map.cluster_id === 0 && Number(m.deleted) > 0).length, 0);

  // ---- leaving drops nothing silently: GC events for its entries, the count in LEAVE ----
  const observe = gc.Observe({ family: V4 });
  const observed: any[] = [];
  observe.on('data', (m: any) => observed.push(m));
  observe.on('error', () => undefined);
  t.after(() => observe.cancel());
  await new Promise((r) => setTimeout(r, 100));
  const del = await call(cc, 'DeleteClusterCTMaps', { cluster_id: 7 });
  assert.deepEqual(del, { deleted: true, dropped_entries: '1' });
  await until(() => observed.length >= 1, 'a GC event for the dropped entry');
  assert.equal(observed[0].record.map.cluster_id, 7);
  assert.equal(observed[0].record.key.sport, alive.sport);
  for (const name of INNER(7)) assert.ok(!probe.pinned(pin(name)), `${name} unpinned`);
  assert.equal(probe.slot(pin('cilium_per_cluster_ct_tcp4'), 7), undefined, 'slot emptied');
  assert.deepEqual(await call(cc, 'DeleteClusterCTMaps', { cluster_id: 7 }), { deleted: false, dropped_entries: '0' }, 'delete again is a no-op');
  await rejectsWith(call(ct, 'Count', { maps: [c7] }), grpc.status.NOT_FOUND);
  await until(() => w.events.some((e) => e.kind === 'LEAVE'), 'a LEAVE event');
  assert.deepEqual(
    w.events.filter((e) => e.cluster_id === 7).map((e) => [e.kind, e.dropped_entries]),
    [['JOIN', '0'], ['LEAVE', '1']],
  );

  // ---- a restart keeps the clusters (pinned) and serves them ----
  await d.stop();
  d = await startTestDaemon(sock.dir, flags);
  cc.close();
  ct.close();
  gc.close();
  cc = clusterCtMapsClient(d.address);
  ct = ctClient(d.address);
  gc = gcRunnerClient(d.address);
  assert.deepEqual((await call(cc, 'GetAllClusterCTMaps', {})).clusters.map((c: any) => c.cluster_id), [1, 255]);
  assert.equal(probe.slot(pin('cilium_per_cluster_ct_any6'), 255), probe.mapId(pin('cilium_per_cluster_ct_any6_255')));

  // ---- Cleanup(ipv4) removes only the v4 maps; then ipv6; then both (nothing left) ----
  const v4Pins = [...OUTER4, ...[1, 255].flatMap((id) => [...INNER(id).slice(0, 2), `cilium_per_cluster_snat_v4_external_${id}`])];
  const v6Pins = [...OUTER6, ...[1, 255].flatMap((id) => [...INNER(id).slice(2), `cilium_per_cluster_snat_v6_external_${id}`])];
  assert.equal((await call(cc, 'CleanupPerClusterCTMaps', { ipv4: true, ipv6: false })).removed, v4Pins.length);
  for (const name of v4Pins) assert.ok(!probe.pinned(pin(name)), `${name} removed`);
  for (const name of v6Pins) assert.ok(probe.pinned(pin(name)), `${name} kept`);
  await rejectsWith(call(ct, 'Count', { maps: [{ family: V4, kind: 'MAP_KIND_TCP', cluster_id: 1 }] }), grpc.status.NOT_FOUND);
  assert.equal((await call(ct, 'Count', { maps: [{ family: V6, kind: 'MAP_KIND_TCP', cluster_id: 1 }] })).counts.length, 1);
  assert.equal((await call(cc, 'CleanupPerClusterCTMaps', { ipv4: false, ipv6: true })).removed, v6Pins.length);
  for (const name of v6Pins) assert.ok(!probe.pinned(pin(name)), `${name} removed`);
  assert.deepEqual((await call(cc, 'GetAllClusterCTMaps', {})).clusters, []);
  // Both: a new cluster brings the outer maps back, then both families go at once.
  await call(cc, 'CreateClusterCTMaps', { cluster_id: 3 });
  assert.ok(probe.pinned(pin('cilium_per_cluster_ct_tcp4')) && probe.pinned(pin(INNER(3)[3])));
  assert.equal(probe.slot(pin('cilium_per_cluster_ct_tcp4'), 3), probe.mapId(pin(INNER(3)[0])));
  assert.equal((await call(cc, 'CleanupPerClusterCTMaps', { ipv4: true, ipv6: true })).removed, 12);
  for (const name of [...OUTER4, ...OUTER6, ...INNER(3)]) assert.ok(!probe.pinned(pin(name)), `${name} removed`);
}
