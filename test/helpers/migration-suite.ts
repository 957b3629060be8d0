/**
 * Issue 6's migration "must show", through a daemon restarted with new map sizes and flags,
 * for either backend. Entries are written straight into the pinned maps (as the datapath
 * writes them) and read back the same way; what the daemon reports comes over gRPC
 * (ActiveMaps) and from its metrics registry. The backend-specific parts come from the
 * caller: bpftool for the kernel, the pin registry for the memory backend.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import type { TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { BpfMap, MapBackend } from '../../src/maps/types';
import { MapType } from '../../src/maps/types';
import { services } from '../../src/api/proto';
import { Client, TestDaemon, call, ctClient, startTestDaemon, tempDir } from './grpc';
import { KEY4, VALUE, checkEntries, fillEntries, keyOf, latestLifetimes } from './migration';

export interface MigrationBackendProbe {
  readonly backend: MapBackend;
  /** Daemon flags selecting the backend and its bpf-root. */
  readonly flags: string[];
  readonly bpfRoot: string;
  /** max_entries and flags of the map pinned at `pin`, as an independent tool sees them. */
  show(pin: string): { maxEntries: number; flags: number; id: number };
  /** The map id in slot `id` of the outer map pinned at `outerPin`; undefined when empty. */
  slot(outerPin: string, id: number): number | undefined;
}

const NAT4_VALUE = 40;

/** SNAT entry i (struct ipv4_nat_entry): created = i + 1, to 192.0.2.200:<i & 0xffff>. */
function natValueOf(i: number, buf: Buffer = Buffer.alloc(NAT4_VALUE), off = 0): Buffer {
  buf.fill(0, off, off + NAT4_VALUE);
  buf.writeBigUInt64LE(BigInt(i) + 1n, off);
  buf.writeUInt32BE(0xc00002c8, off + 32);
  buf.writeUInt16BE(i & 0xffff, off + 36);
  return buf;
}

function fillNat(map: BpfMap, n: number): void {
  const keys = Buffer.alloc(n * KEY4);
  const values = Buffer.alloc(n * NAT4_VALUE);
  for (let i = 0; i < n; i++) {
    keyOf(i, keys, i * KEY4);
    natValueOf(i, values, i * NAT4_VALUE);
  }
  map.updateBatch(keys, values, n);
}

function natIntact(map: BpfMap, n: number): boolean {
  let count = 0;
  const want = Buffer.alloc(NAT4_VALUE);
  const c = map.cursor();
  try {
    for (let b = c.next(); b; b = c.next()) {
      for (let j = 0; j < b.count; j++) {
        const i = b.keys.readUInt16BE(j * KEY4 + 10) * 65536 + b.keys[j * KEY4 + 3] + b.keys[j * KEY4 + 7] * 256;
        if (natValueOf(i, want).compare(b.values, j * NAT4_VALUE, (j + 1) * NAT4_VALUE) !== 0) return false;
        count++;
      }
    }
  } finally {
    c.close();
  }
  return count === n;
}

export async function migrationSuite(t: TestContext, probe: MigrationBackendProbe): Promise<void> {
  const globals = path.join(probe.bpfRoot, 'tc', 'globals');
  const pin = (name: string) => path.join(globals, name);
  const tcp4 = pin('cilium_ct4_global');
  const inner7 = pin('cilium_per_cluster_ct_tcp4_7');
  const snat4 = pin('cilium_snat_v4_external');
  const sock = tempDir(t);
  const open = (p: string, valueSize = VALUE): BpfMap => {
    const m = probe.backend.open({ name: 'probe', type: MapType.LRU_HASH, keySize: KEY4, valueSize, maxEntries: 1, flags: 0, pinPath: p });
    if (!m) throw new Error(`${p} is not pinned`);
    return m;
  };
  const withMap = <T>(p: string, fn: (m: BpfMap) => T, valueSize = VALUE): T => {
    const m = open(p, valueSize);
    try {
      return fn(m);
    } finally {
      m.close();
    }
  };
  let d: TestDaemon | undefined;
  let client: Client | undefined;
  t.after(async () => {
    client?.close();
    await d?.stop();
  });
  const start = async (tcpMax: number, extra: string[] = []): Promise<any> => {
    client?.close();
    await d?.stop();
    d = await startTestDaemon(sock.dir, [...probe.flags, '--enable-ipv6=false', '--bpf-ct-global-tcp-max', String(tcpMax), '--bpf-ct-global-any-max', '4096', '--bpf-nat-global-max', '8192', ...extra]);
    client = ctClient(d.address);
    return call(client, 'ActiveMaps', { with_counts: true });
  };
  const metric = async (name: string): Promise<string> => (await d!.daemon.metrics.registry.getSingleMetricAsString(name)) ?? '';

  // ---- 64 Ki with 60 k entries, a cluster with 1000, 3000 SNAT entries -------------------
  await start(65536);
  withMap(tcp4, (m) => fillEntries(m, 60_000));
  const cc = new (services().ClusterCTMaps)(d!.address, grpc.credentials.createInsecure()) as unknown as Client;
  await call(cc, 'CreateClusterCTMaps', { cluster_id: 7 });
  cc.close();
  withMap(inner7, (m) => fillEntries(m, 1000));
  withMap(snat4, (m) => fillNat(m, 3000), NAT4_VALUE);
  const before = probe.show(tcp4);
  assert.equal(before.maxEntries, 65536);

  // ---- grow to 128 Ki: all kept, byte-identical, the new max_entries --------------------
  let active = await start(131072);
  assert.equal(probe.show(tcp4).maxEntries, 131072);
  assert.notEqual(probe.show(tcp4).id, before.id, 'a new map');
  assert.deepEqual(withMap(tcp4, (m) => checkEntries(m, 60_000)), { count: 60_000, foreign: 0, wrongValue: 0 });
  assert.deepEqual(withMap(inner7, (m) => checkEntries(m, 1000)), { count: 1000, foreign: 0, wrongValue: 0 }, 'cluster 7 migrated too');
  assert.equal(probe.show(inner7).maxEntries, 131072);
  assert.equal(probe.slot(pin('cilium_per_cluster_ct_tcp4'), 7), probe.show(inner7).id, 'the outer slot holds the new inner map');
  assert.ok(!probe.backend.pinnedInfo(`${tcp4}_old`) && !probe.backend.pinnedInfo(`${tcp4}_new`), 'no _old or _new pin left');
  const info = active.maps.find((m: any) => m.name === 'cilium_ct4_global');
  assert.equal(info.max_entries, 131072);
  assert.equal(info.entries, '60000');
  assert.deepEqual(
    [info.migration.outcome, info.migration.mismatches, info.migration.entries_seen, info.migration.entries_copied, info.migration.entries_dropped],
    ['OUTCOME_MIGRATED', ['max_entries 65536 -> 131072'], '60000', '60000', '0'],
  );
  assert.deepEqual(
    active.migrations.map((m: any) => [m.name, m.outcome]).sort(),
    [
      ['cilium_ct4_global', 'OUTCOME_MIGRATED'],
      ['cilium_per_cluster_ct_tcp4_7', 'OUTCOME_MIGRATED'],
    ],
  );
  assert.match(await metric('ctmapd_map_migrations_total'), /ctmapd_map_migrations_total\{map="cilium_ct4_global",outcome="migrated"\} 1/);

  // ---- shrink to 32 Ki: exactly 32 Ki kept, the latest lifetimes; the drop reported ------
  active = await start(32768);
  assert.equal(probe.show(tcp4).maxEntries, 32768);
  const kept = withMap(tcp4, (m) => checkEntries(m, 60_000, { indexes: true }));
  assert.equal(kept.count, 32768);
  assert.equal(kept.wrongValue, 0);
  assert.deepEqual(kept.indexes, latestLifetimes(60_000, 32768), 'the entries with the latest lifetimes');
  const shrunk = active.maps.find((m: any) => m.name === 'cilium_ct4_global').migration;
  assert.deepEqual([shrunk.entries_seen, shrunk.entries_copied, shrunk.entries_dropped], ['60000', '32768', '27232']);
  assert.deepEqual(withMap(inner7, (m) => checkEntries(m, 1000)), { count: 1000, foreign: 0, wrongValue: 0 });
  const entriesMetric = await metric('ctmapd_map_migration_entries_total');
  assert.match(entriesMetric, /ctmapd_map_migration_entries_total\{map="cilium_ct4_global",status="dropped"\} 27232/);
  assert.match(entriesMetric, /ctmapd_map_migration_entries_total\{map="cilium_ct4_global",status="copied"\} 32768/);

  // ---- flags (distributed LRU) and the SNAT size: migrated; outer maps rebuilt ----------
  const outerBefore = probe.show(pin('cilium_per_cluster_ct_tcp4')).id;
  active = await start(32768, ['--bpf-distributed-lru', '--bpf-nat-global-max', '16384']);
  assert.equal(probe.show(tcp4).flags, 2);
  assert.equal(withMap(tcp4, (m) => checkEntries(m, 60_000)).count, 32768, 'a flags change keeps every entry');
  assert.deepEqual(withMap(inner7, (m) => checkEntries(m, 1000)), { count: 1000, foreign: 0, wrongValue: 0 });
  assert.equal(probe.show(inner7).flags, 2);
  assert.notEqual(probe.show(pin('cilium_per_cluster_ct_tcp4')).id, outerBefore, 'the outer map was rebuilt for the new inner template');
  assert.equal(probe.slot(pin('cilium_per_cluster_ct_tcp4'), 7), probe.show(inner7).id, 'and holds the migrated inner map');
  assert.equal(probe.show(snat4).maxEntries, 16384);
  assert.ok(withMap(snat4, (m) => natIntact(m, 3000), NAT4_VALUE), 'SNAT entries migrated byte for byte');
  const outcomes = new Map(active.migrations.map((m: any) => [m.name, m.outcome]));
  assert.equal(outcomes.get('cilium_ct4_global'), 'OUTCOME_MIGRATED');
  assert.equal(outcomes.get('cilium_snat_v4_external'), 'OUTCOME_MIGRATED');
  assert.equal(outcomes.get('cilium_per_cluster_ct_tcp4'), 'OUTCOME_RECREATED');
  const natReport = active.migrations.find((m: any) => m.name === 'cilium_snat_v4_external');
  assert.deepEqual([natReport.entries_copied, natReport.entries_dropped], ['3000', '0']);
  client?.close();
  client = undefined;
  await d!.stop();
  d = undefined;
}

/**
 * A pinned CT map with another value size: the daemon refuses to start (naming the map,
 * the difference and the flag) and leaves it alone; with --allow-map-recreate it replaces
 * it with an empty map of the configured layout and reports the loss.
 */
export async function recreateSuite(t: TestContext, probe: MigrationBackendProbe): Promise<void> {
  const tcp4 = path.join(probe.bpfRoot, 'tc', 'globals', 'cilium_ct4_global');
  const sock = tempDir(t);
  const foreign = probe.backend.create({ name: 'cilium_ct4_global', type: MapType.LRU_HASH, keySize: KEY4, valueSize: 48, maxEntries: 65536, flags: 0, pinPath: tcp4 });
  const value = Buffer.alloc(48);
  for (let i = 0; i < 100; i++) foreign.update(keyOf(i), value);
  const id = probe.show(tcp4).id;
  foreign.close();
  const flags = [...probe.flags, '--enable-ipv6=false', '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '4096', '--bpf-nat-global-max', '8192'];

  await assert.rejects(startTestDaemon(sock.dir, flags), (err: any) => {
    assert.equal(err.code, 'failed-precondition');
    assert.match(err.message, /cilium_ct4_global/);
    assert.match(err.message, /value_size 48 -> 56/);
    assert.match(err.message, /--allow-map-recreate/);
    return true;
  });
  assert.equal(probe.show(tcp4).id, id, 'the refused map is left as it was');
  assert.ok(!probe.backend.pinnedInfo(`${tcp4}_old`) && !probe.backend.pinnedInfo(`${tcp4}_new`));

  const d = await startTestDaemon(sock.dir, [...flags, '--allow-map-recreate']);
  t.after(() => d.stop());
  const client = ctClient(d.address);
  let active: any;
  try {
    active = await call(client, 'ActiveMaps', { with_counts: true });
  } finally {
    client.close();
  }
  const info = active.maps.find((m: any) => m.name === 'cilium_ct4_global');
  assert.deepEqual([info.value_size, info.entries, info.migration.outcome, info.migration.entries_dropped], [56, '0', 'OUTCOME_RECREATED', '100']);
  assert.notEqual(probe.show(tcp4).id, id);
  const warning = d.logs.lines.find((l) => l.level === 50 && /RECREATED/.test(String(l.msg)));
  assert.ok(warning, 'the loss is logged as an error');
  assert.match(warning.msg, /ALL 100 ENTRIES ARE LOST/);
  await d.stop();
}
