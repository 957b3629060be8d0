/**
 * ctmap.v1.NATMaps over a real gRPC server in this process (unix socket in a temp dir),
 * next to CTMaps on the same memory-backend tables: Update, DumpEntries, Delete,
 * PurgeOrphanNATEntries and Flush, and every INVALID_ARGUMENT naming its field without writing.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { ctNow } from '../../src/maps/clock';
import type { CtKey } from '../../src/maps/ctmap/codec';
import { memoryBackend } from '../../src/maps/memory';
import type { NatEntry } from '../../src/maps/nat/codec';
import { ctMapsService } from '../../src/server/services/ctmaps';
import { natMapsService } from '../../src/server/services/natmaps';
import { NatMapsClient, natMapsClient } from '../../src/api/clients';
import { parseNatEntry } from '../../src/api/nat-proto';
import { ServerHandle, startServer } from '../../src/server/server';
import { Client, call, collect, ctClient, rejectsWith, tempDir } from '../helpers/grpc';
import { DSR, Tables, dsrKey, keyId, openTables, silentLog, snatPair } from '../helpers/nat-fixtures';

const V4 = 'FAMILY_IPV4';
const V6 = 'FAMILY_IPV6';

const tcp: CtKey = { daddr: '10.0.0.1', saddr: '203.0.113.5', sport: 40000, dport: 443, nexthdr: 6, flags: 0 };
const icmp: CtKey = { daddr: '10.0.0.2', saddr: '203.0.113.6', sport: 0x1234, dport: 0, nexthdr: 1, flags: 0 };
const udpGone: CtKey = { daddr: '10.0.0.3', saddr: '203.0.113.7', sport: 5353, dport: 53, nexthdr: 17, flags: 0 };
const dsr: CtKey = { daddr: '10.0.0.4', saddr: '198.51.100.9', sport: 80, dport: 51000, nexthdr: 6, flags: 0 };
const v6: CtKey = { daddr: 'fd00::1', saddr: '2001:db8::5', sport: 33000, dport: 443, nexthdr: 6, flags: 0 };

function natRecord(family: string, e: { key: CtKey; entry: NatEntry }, cluster_id = 0) {
  return {
    family,
    cluster_id,
    key: e.key,
    entry: { addr: e.entry.addr, port: e.entry.port, created: String(e.entry.created), needs_ct: e.entry.needsCt },
  };
}

function ctRecord(family: string, key: CtKey, flags = 0) {
  return { map: { family, kind: key.nexthdr === 6 ? 'MAP_KIND_TCP' : 'MAP_KIND_ANY', cluster_id: 0 }, key, entry: { lifetime: 1_000_000, flags } };
}

describe('NATMaps over gRPC', () => {
  let tables: Tables;
  let server: ServerHandle;
  let nat: NatMapsClient;
  let ct: Client;
  const sock = tempDir();

  const tcpPair = snatPair(tcp, { addr: '192.0.2.10', port: 61000 }, 1234567890123n);
  const icmpPair = snatPair(icmp, { addr: '192.0.2.10', port: 0x9999 });
  const udpPair = snatPair(udpGone, { addr: '192.0.2.10', port: 61001 });
  const dsrNat = { key: dsrKey(dsr), entry: { addr: '192.0.2.80', port: 8080, created: 5n, needsCt: false } };
  const v6Pair = snatPair(v6, { addr: '2001:db8:ffff::10', port: 62000 });
  const v4Records = [tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in, udpPair.out, udpPair.in, dsrNat].map((e) => natRecord(V4, e));
  const v6Records = [v6Pair.out, v6Pair.in].map((e) => natRecord(V6, e));

  before(async () => {
    tables = openTables(memoryBackend, { size: 8192 });
    const shutdown = new AbortController();
    server = await startServer({
      config: { socket: path.join(sock.dir, 'ctmapd.sock') },
      log: silentLog,
      shutdown,
      services: [
        ctMapsService({ tables: tables.ct, nat: tables.nat, log: silentLog, shutdown: shutdown.signal }),
        natMapsService({ nat: tables.nat, ct: tables.ct, log: silentLog, shutdown: shutdown.signal }),
      ],
    });
    server.markServing();
    nat = natMapsClient(server.addresses[0]);
    ct = ctClient(server.addresses[0]);
  });

  after(async () => {
    nat?.close();
    ct?.close();
    await server?.shutdown(1000);
    tables?.close();
    sock.cleanup();
  });

  const dump = (family: string, cluster_id = 0) => collect(nat, 'DumpEntries', { family, cluster_id });
  const dumpIds = async (family: string) => new Set((await dump(family)).map((r: any) => keyId(r.key)));

  test('Update writes both families; DumpEntries returns every field', async () => {
    await call(ct, 'Update', { records: [ctRecord(V4, tcp), ctRecord(V4, icmp), ctRecord(V4, dsr, DSR), ctRecord(V6, v6)] });
    const res = await call(nat, 'Update', { records: [...v4Records, ...v6Records] });
    assert.equal(res.written, 9);

    const got4 = await dump(V4);
    assert.equal(got4.length, 7);
    const byId = new Map(got4.map((r: any) => [keyId(r.key), r]));
    for (const want of v4Records) {
      const r = byId.get(keyId(want.key));
      assert.ok(r, `dumped ${keyId(want.key)}`);
      // age_seconds is derived from the daemon's CT clock: checked on its own.
      const { age_seconds, ...entry } = r.entry;
      assert.deepEqual({ ...r, entry }, { ...want, key: { ...want.key } }, keyId(want.key));
      const age = ctNow() - Number(want.entry.created);
      assert.ok(Math.abs(Number(age_seconds) - age) <= 1, `age_seconds ${age_seconds} is now - created (${age})`);
    }
    assert.equal(byId.get(keyId(tcpPair.out.key)).entry.created, '1234567890123');
    assert.equal(byId.get(keyId(tcpPair.out.key)).entry.needs_ct, true);
    const got6 = await dump(V6);
    assert.deepEqual(new Set(got6.map((r: any) => keyId(r.key))), new Set(v6Records.map((r) => keyId(r.key))));
    assert.equal(got6[0].family, V6);
  });

  test('CTMaps.ActiveMaps lists the SNAT maps, with entry counts only when asked', async () => {
    const counted = await call(ct, 'ActiveMaps', { with_counts: true });
    const root = tables.root;
    assert.deepEqual(counted.nat_maps, [
      { family: V4, cluster_id: 0, name: 'cilium_snat_v4_external', pin_path: `${root}/tc/globals/cilium_snat_v4_external`, max_entries: 8192, backend: 'memory', entries: '7' },
      { family: V6, cluster_id: 0, name: 'cilium_snat_v6_external', pin_path: `${root}/tc/globals/cilium_snat_v6_external`, max_entries: 8192, backend: 'memory', entries: '2' },
    ]);
    const plain = await call(ct, 'ActiveMaps', {});
    assert.deepEqual(plain.nat_maps.map((m: any) => [m.name, m.entries]), [['cilium_snat_v4_external', '0'], ['cilium_snat_v6_external', '0']]);
  });

  test('a rejected Update names the field and writes nothing', async () => {
    const good = natRecord(V4, { key: { ...tcp, sport: 1 }, entry: { addr: '192.0.2.1', port: 1, created: 0n, needsCt: false } });
    const cases: Array<[object, string]> = [
      [{ ...good, entry: { ...good.entry, port: 65536 } }, 'records[1].entry.port'],
      [{ ...good, key: { ...good.key, dport: 70000 } }, 'records[1].key.dport'],
      [{ ...good, key: { ...good.key, daddr: '10.0.0.300' } }, 'records[1].key.daddr'],
      [{ ...good, key: v6Pair.out.key }, 'records[1].key'],
      [{ ...good, entry: { ...good.entry, addr: '2001:db8::1' } }, 'records[1].entry.addr'],
      [{ ...good, family: 'FAMILY_UNSPECIFIED' }, 'records[1].family'],
      [{ ...good, family: 9 }, 'records[1].family'],
      [{ ...good, cluster_id: 256 }, 'records[1].cluster_id'],
      [{ ...good, entry: null }, 'records[1].entry'],
      [{ ...good, key: null }, 'records[1].key'],
    ];
    const before4 = await dumpIds(V4);
    for (const [bad, field] of cases) {
      await rejectsWith(call(nat, 'Update', { records: [good, bad] }), grpc.status.INVALID_ARGUMENT, field);
    }
    assert.deepEqual(await dumpIds(V4), before4, 'nothing written');
    // A malformed u64 cannot cross the wire (the client's serializer rejects or wraps it);
    // the parser still names the field for in-process callers.
    assert.throws(() => parseNatEntry({ addr: '192.0.2.1', created: 'soon' }, 'records[1].entry'), /records\[1\]\.entry\.created: not an integer/);
  });

  test('DumpEntries: unknown family and cluster ids above ClusterIDMax are INVALID_ARGUMENT; unjoined clusters NOT_FOUND', async () => {
    await rejectsWith(dump('FAMILY_UNSPECIFIED'), grpc.status.INVALID_ARGUMENT, 'family');
    await rejectsWith(dump(V4, 256), grpc.status.INVALID_ARGUMENT, 'cluster_id');
    await rejectsWith(dump(V4, 1), grpc.status.NOT_FOUND);
  });

  test('Delete: bad keys are INVALID_ARGUMENT; reports how many existed', async () => {
    const other = { ...tcp, sport: 2 };
    await rejectsWith(call(nat, 'Delete', { family: V6, cluster_id: 0, keys: [v6Pair.out.key, tcp] }), grpc.status.INVALID_ARGUMENT, 'keys[1]');
    await rejectsWith(call(nat, 'Delete', { family: V6, cluster_id: 0, keys: [{ ...v6, sport: 65536 }] }), grpc.status.INVALID_ARGUMENT, 'keys[0].sport');
    await rejectsWith(call(nat, 'Delete', { family: V4, cluster_id: 0, keys: [{ ...tcp, saddr: 'x' }] }), grpc.status.INVALID_ARGUMENT, 'keys[0].saddr');
    await rejectsWith(call(nat, 'Delete', { family: V4, cluster_id: 256, keys: [tcp] }), grpc.status.INVALID_ARGUMENT, 'cluster_id');
    await rejectsWith(call(nat, 'Delete', { family: V4, cluster_id: 2, keys: [tcp] }), grpc.status.NOT_FOUND);
    await rejectsWith(call(nat, 'Delete', { family: 'FAMILY_UNSPECIFIED', keys: [tcp] }), grpc.status.INVALID_ARGUMENT, 'family');
    assert.equal((await dump(V6)).length, 2, 'nothing deleted');
    const res = await call(nat, 'Delete', { family: V6, cluster_id: 0, keys: [v6Pair.out.key, v6Pair.in.key, { ...v6Pair.in.key, dport: 1 }] });
    assert.equal(res.deleted, 2);
    assert.equal((await dump(V6)).length, 0);
    assert.equal((await call(nat, 'Delete', { family: V4, cluster_id: 0, keys: [other] })).deleted, 0);
  });

  test('PurgeOrphanNATEntries removes the orphan pair and keeps the DSR mapping', async () => {
    await rejectsWith(call(nat, 'PurgeOrphanNATEntries', { family: 'FAMILY_UNSPECIFIED' }), grpc.status.INVALID_ARGUMENT, 'family');
    await rejectsWith(call(nat, 'PurgeOrphanNATEntries', { family: V4, cluster_id: 256 }), grpc.status.INVALID_ARGUMENT, 'cluster_id');
    await rejectsWith(call(nat, 'PurgeOrphanNATEntries', { family: V4, cluster_id: 7 }), grpc.status.NOT_FOUND);
    const res = await call(nat, 'PurgeOrphanNATEntries', { family: V4, cluster_id: 0 });
    assert.deepEqual(res, { ingress_alive: '2', ingress_deleted: '1', egress_alive: '3', egress_deleted: '1' });
    assert.deepEqual(await dumpIds(V4), new Set([tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in, dsrNat].map((e) => keyId(e.key))));
    // After the CT entry of the TCP flow goes (CTMaps.Delete), its pair is an orphan too.
    await call(ct, 'Delete', { map: ctRecord(V4, tcp).map, keys: [tcp] });
    const again = await call(nat, 'PurgeOrphanNATEntries', { family: V4 });
    assert.deepEqual(again, { ingress_alive: '1', ingress_deleted: '1', egress_alive: '2', egress_deleted: '1' });
  });

  test('DumpEntries streams a map of several batches to a slow reader', async () => {
    const many = [];
    for (let i = 0; i < 6000; i++) {
      many.push(natRecord(V4, { key: { ...udpGone, sport: i }, entry: { addr: '192.0.2.12', port: i, created: BigInt(i), needsCt: i % 2 === 0 } }));
    }
    assert.equal((await call(nat, 'Update', { records: many })).written, 6000);
    const stream = nat.DumpEntries({ family: V4, cluster_id: 0 }) as grpc.ClientReadableStream<any>;
    const seen = new Map<string, any>();
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (r) => {
        seen.set(keyId(r.key), r);
        if (seen.size === 10) {
          // Hold the stream: the server must wait for the client, not buffer the whole map.
          stream.pause();
          setTimeout(() => stream.resume(), 200);
        }
      });
      stream.on('error', reject);
      stream.on('end', resolve);
    });
    assert.equal(seen.size, 6000 + 3);
    const r = seen.get(keyId({ ...udpGone, sport: 4321 }));
    assert.deepEqual({ ...r.entry, age_seconds: undefined }, { addr: '192.0.2.12', port: 4321, created: '4321', needs_ct: false, age_seconds: undefined });
  });

  test('Flush: bad input is INVALID_ARGUMENT naming the field or NOT_FOUND, and removes nothing; then it empties the selected maps', async () => {
    await call(nat, 'Update', { records: v6Records });
    const before4 = (await dump(V4)).length;
    assert.ok(before4 > 6000);
    const cases: Array<[object, grpc.status, string | undefined]> = [
      [{ family: 9 }, grpc.status.INVALID_ARGUMENT, 'family'],
      [{ cluster_id: 256 }, grpc.status.INVALID_ARGUMENT, 'cluster_id'],
      [{ cluster_id: 3, all_clusters: true }, grpc.status.INVALID_ARGUMENT, 'cluster_id'],
      [{ family: V4, cluster_id: 3 }, grpc.status.NOT_FOUND, undefined],
      [{ cluster_id: 3 }, grpc.status.NOT_FOUND, undefined],
    ];
    for (const [req, code, field] of cases) await rejectsWith(call(nat, 'Flush', req), code, field);
    assert.equal((await dump(V4)).length, before4, 'nothing removed from the IPv4 map');
    assert.equal((await dump(V6)).length, 2, 'nothing removed from the IPv6 map');

    assert.deepEqual(await call(nat, 'Flush', { family: V6 }), { flushed: '2' });
    assert.equal((await dump(V6)).length, 0);
    assert.equal((await dump(V4)).length, before4, 'the other family is left alone');
    await call(nat, 'Update', { records: v6Records });
    // Unspecified family: both; all_clusters with no cluster joined: the globals.
    assert.deepEqual(await call(nat, 'Flush', { all_clusters: true }), { flushed: String(before4 + 2) });
    assert.equal((await dump(V4)).length + (await dump(V6)).length, 0);
    assert.deepEqual(await call(nat, 'Flush', {}), { flushed: '0' });
  });
});
