/**
 * The CTMaps flow of issue 2's "must show", run against a live daemon over gRPC:
 * 1000 records across the four global maps -> Count, Lookup, DumpEntries(+Batched),
 * DumpEntriesWithTimeDiff, Delete, Flush agree; bad input changes nothing.
 * Returns the records so kernel tests can compare them with bpftool's view.
 */
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { Client, call, collect, rejectsWith } from './grpc';

export interface FlowRecord {
  map: { family: string; kind: string; cluster_id: number };
  key: { daddr: string; saddr: string; dport: number; sport: number; nexthdr: number; flags: number };
  entry: Record<string, any>;
}

const MAPS = [
  { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' },
  { family: 'FAMILY_IPV4', kind: 'MAP_KIND_ANY' },
  { family: 'FAMILY_IPV6', kind: 'MAP_KIND_TCP' },
  { family: 'FAMILY_IPV6', kind: 'MAP_KIND_ANY' },
];

/** 1000 distinct records, 250 per global map, with every entry field non-trivial. */
export function makeRecords(n = 1000, lifetimeBase = 100000): FlowRecord[] {
  const out: FlowRecord[] = [];
  for (let i = 0; i < n; i++) {
    const m = MAPS[i % 4];
    const v4 = m.family === 'FAMILY_IPV4';
    const tcp = m.kind === 'MAP_KIND_TCP';
    const a = (i % 250) + 1;
    out.push({
      map: { ...m, cluster_id: 0 },
      key: {
        daddr: v4 ? `192.0.2.${a}` : `2001:db8::${a.toString(16)}`,
        saddr: v4 ? `198.51.100.${(i * 7) % 250 + 1}` : `2001:db8:1::${((i * 7) % 250 + 1).toString(16)}`,
        dport: (i * 131) % 65536,
        sport: 1024 + i,
        nexthdr: tcp ? 6 : i % 8 === 1 ? 1 : 17,
        flags: i % 3 === 0 ? 1 : 0,
      },
      entry: {
        packets: String(i + 1),
        bytes: String((i + 1) * 1500 + 0x1_0000_0000),
        lifetime: lifetimeBase + i,
        flags: tcp ? 0x10 | (i % 4 === 0 ? 0x3 : 0) : 0,
        rev_nat: i % 65536,
        nat_port: (40000 + i) % 65536,
        tx_flags_seen: tcp ? 0x12 : 0,
        rx_flags_seen: tcp ? 0x1b : 0,
        source_security_id: 100 + i,
        last_tx_report: lifetimeBase - 50 + i,
        last_rx_report: lifetimeBase - 40 + i,
        backend_id: i % 2 ? String(i) : '0',
        union0: i % 2 ? Buffer.alloc(0) : Buffer.from([192, 0, 2, 9, ...new Array(12).fill(0)]),
      },
    });
  }
  return out;
}

export function recordId(r: { map: { family: string; kind: string }; key: FlowRecord['key'] }): string {
  const k = r.key;
  return `${r.map.family}/${r.map.kind}/${k.daddr}/${k.saddr}/${k.dport}/${k.sport}/${k.nexthdr}/${k.flags}`;
}

/** Compares the fields a client wrote with what the server returned. */
export function assertEntryEqual(got: Record<string, any>, want: Record<string, any>, label: string): void {
  for (const f of ['packets', 'bytes', 'lifetime', 'flags', 'rev_nat', 'nat_port', 'tx_flags_seen', 'rx_flags_seen', 'source_security_id', 'last_tx_report', 'last_rx_report']) {
    assert.equal(String(got[f]), String(want[f]), `${label}: ${f}`);
  }
  const union0 = Buffer.alloc(16);
  if (want.union0?.length) Buffer.from(want.union0).copy(union0);
  if (want.backend_id !== '0') union0.writeBigUInt64LE(BigInt(want.backend_id), 8);
  assert.equal(Buffer.from(got.union0).toString('hex'), union0.toString('hex'), `${label}: union0`);
  assert.equal(String(got.backend_id), String(want.backend_id), `${label}: backend_id`);
}

async function countAll(client: Client): Promise<Map<string, number>> {
  const res = await call(client, 'Count', { maps: [] });
  return new Map(res.counts.map((c: any) => [`${c.map.family}/${c.map.kind}`, Number(c.entries)]));
}

export async function runCtFlow(client: Client, backend: string): Promise<FlowRecord[]> {
  const records = makeRecords();

  // ActiveMaps names the four global maps and the backend.
  const active = await call(client, 'ActiveMaps', { with_counts: true });
  assert.deepEqual(active.maps.map((m: any) => m.name).sort(), ['cilium_ct4_global', 'cilium_ct6_global', 'cilium_ct_any4_global', 'cilium_ct_any6_global']);
  for (const m of active.maps) {
    assert.equal(m.backend, backend);
    assert.equal(m.value_size, 56);
    assert.equal(m.key_size, m.ref.family === 'FAMILY_IPV4' ? 14 : 38);
    assert.equal(m.entries, '0');
  }

  // A batch with one bad record at the end is rejected whole and writes nothing.
  const bad = [...records.slice(0, 10), { ...records[10], key: { ...records[10].key, dport: 70000 } }];
  await rejectsWith(call(client, 'Update', { records: bad }), grpc.status.INVALID_ARGUMENT, 'records[10].key.dport');
  assert.equal([...(await countAll(client)).values()].reduce((a, b) => a + b, 0), 0, 'rejected batch wrote nothing');

  const written = await call(client, 'Update', { records });
  assert.equal(written.written, 1000);

  const counts = await countAll(client);
  for (const m of MAPS) assert.equal(counts.get(`${m.family}/${m.kind}`), 250, `${m.family}/${m.kind} count`);
  const withCounts = await call(client, 'ActiveMaps', { with_counts: true });
  assert.deepEqual(withCounts.maps.map((m: any) => m.entries), ['250', '250', '250', '250']);

  // Lookup returns every field as written, plus the derived ones.
  for (const r of records.filter((_, i) => i % 37 === 0)) {
    const got = await call(client, 'Lookup', { map: r.map, key: r.key });
    assertEntryEqual(got.entry, r.entry, recordId(r));
    assert.deepEqual(got.entry.flag_names, r.entry.flags ? (r.entry.flags & 3 ? ['RxClosing', 'TxClosing', 'SeenNonSyn'] : ['SeenNonSyn']) : []);
  }

  // DumpEntries and DumpEntriesBatched return exactly the written set.
  const want = new Map(records.map((r) => [recordId(r), r]));
  const dumped = await collect(client, 'DumpEntries', { maps: [] });
  assert.equal(dumped.length, 1000);
  for (const d of dumped) {
    const r = want.get(recordId(d));
    assert.ok(r, `unexpected record ${recordId(d)}`);
    assertEntryEqual(d.entry, r.entry, recordId(d));
  }
  const batched = (await collect(client, 'DumpEntriesBatched', { maps: [] })).flatMap((b: any) => b.records);
  assert.deepEqual(new Set(batched.map(recordId)), new Set(want.keys()));

  // Filters: one map, by address on either side, by port, by nexthdr.
  const tcp4 = await collect(client, 'DumpEntries', { maps: [MAPS[0]] });
  assert.equal(tcp4.length, 250);
  const byAddr = await collect(client, 'DumpEntries', { maps: [], filter: { address: '192.0.2.5' } });
  assert.deepEqual(new Set(byAddr.map(recordId)), new Set(records.filter((r) => r.key.daddr === '192.0.2.5' || r.key.saddr === '192.0.2.5').map(recordId)));
  const byPort = await collect(client, 'DumpEntries', { maps: [], filter: { port: 1024 + 17 } });
  assert.deepEqual(new Set(byPort.map(recordId)), new Set(records.filter((r) => r.key.sport === 1041 || r.key.dport === 1041).map(recordId)));
  const icmp = await collect(client, 'DumpEntries', { maps: [], filter: { nexthdr: 1 } });
  assert.equal(icmp.length, records.filter((r) => r.key.nexthdr === 1).length);

  // The text dump has one line per entry in Cilium's format, with the remaining time.
  const text = (await collect(client, 'DumpEntriesWithTimeDiff', { maps: [] })).map((c: any) => c.text).join('');
  const lines = text.split('\n').filter(Boolean);
  assert.equal(lines.length, 1000);
  const r0 = records[0];
  const line0 = lines.find((l) => l.startsWith(`TCP IN ${r0.key.daddr}:${r0.key.sport} -> ${r0.key.saddr}:${r0.key.dport} `));
  assert.ok(line0, 'line for record 0');
  assert.match(line0!, /expires=100000 \(remaining: -?\d+ sec\(s\)\) Packets=1 Bytes=4294968796 RxFlagsSeen=0x1b LastRxReport=99960 TxFlagsSeen=0x12 LastTxReport=99950 Flags=0x0013 \[ RxClosing TxClosing SeenNonSyn \] RevNAT=0 SourceSecurityID=100 BackendID=0 NatPort=40000$/);
  assert.ok(lines.some((l) => l.startsWith('UDP ') && l.includes(' -> [2001:db8:1::')), 'IPv6 lines bracket addresses');

  // Bad input: each names its field and changes nothing.
  await rejectsWith(call(client, 'Lookup', { map: MAPS[0], key: { ...r0.key, daddr: '192.0.2.999' } }), grpc.status.INVALID_ARGUMENT, 'key.daddr');
  await rejectsWith(call(client, 'Lookup', { map: MAPS[0], key: { ...r0.key, saddr: '2001:db8::1' } }), grpc.status.INVALID_ARGUMENT, 'key.saddr');
  await rejectsWith(call(client, 'Lookup', { map: { family: 'FAMILY_IPV6', kind: 'MAP_KIND_TCP' }, key: r0.key }), grpc.status.INVALID_ARGUMENT, 'key');
  await rejectsWith(call(client, 'Lookup', { map: { family: 'FAMILY_UNSPECIFIED', kind: 'MAP_KIND_TCP' }, key: r0.key }), grpc.status.INVALID_ARGUMENT, 'map.family');
  await rejectsWith(call(client, 'Lookup', { map: { family: 'FAMILY_IPV4', kind: 'MAP_KIND_UNSPECIFIED' }, key: r0.key }), grpc.status.INVALID_ARGUMENT, 'map.kind');
  await rejectsWith(call(client, 'Lookup', { map: { family: 7, kind: 'MAP_KIND_TCP' }, key: r0.key }), grpc.status.INVALID_ARGUMENT, 'map.family');
  // 256 is above ClusterIDMax (255); 3 is a valid id of a cluster that has not joined.
  await rejectsWith(call(client, 'Lookup', { map: { ...MAPS[0], cluster_id: 256 }, key: r0.key }), grpc.status.INVALID_ARGUMENT, 'map.cluster_id');
  await rejectsWith(call(client, 'Lookup', { map: { ...MAPS[0], cluster_id: 3 }, key: r0.key }), grpc.status.NOT_FOUND, 'map');
  await rejectsWith(call(client, 'Lookup', { map: MAPS[0], key: { ...r0.key, sport: 1 } }), grpc.status.NOT_FOUND, 'key');
  await rejectsWith(call(client, 'Update', { records: [{ ...records[1], key: { ...records[1].key, nexthdr: 256 } }] }), grpc.status.INVALID_ARGUMENT, 'records[0].key.nexthdr');
  await rejectsWith(call(client, 'Update', { records: [{ ...records[1], key: { ...records[1].key, flags: 256 } }] }), grpc.status.INVALID_ARGUMENT, 'records[0].key.flags');
  await rejectsWith(call(client, 'Update', { records: [{ ...records[0], map: MAPS[1] }] }), grpc.status.INVALID_ARGUMENT, 'records[0].key.nexthdr');
  await rejectsWith(call(client, 'Update', { records: [{ ...records[0], map: MAPS[2] }] }), grpc.status.INVALID_ARGUMENT, 'records[0].key');
  await rejectsWith(call(client, 'Update', { records: [{ ...records[0], entry: { ...records[0].entry, flags: 70000 } }] }), grpc.status.INVALID_ARGUMENT, 'records[0].entry.flags');
  await rejectsWith(call(client, 'Delete', { map: MAPS[0], keys: [r0.key, { ...r0.key, dport: -1 }] }), grpc.status.INVALID_ARGUMENT, 'keys[1].dport');
  await rejectsWith(collect(client, 'DumpEntries', { maps: [], filter: { address: 'not-an-ip' } }), grpc.status.INVALID_ARGUMENT, 'filter.address');
  assert.equal([...(await countAll(client)).values()].reduce((a, b) => a + b, 0), 1000, 'bad requests changed nothing');
  const still = await call(client, 'Lookup', { map: r0.map, key: r0.key });
  assertEntryEqual(still.entry, r0.entry, 'record 0 after bad requests');

  // Update replaces: a second write of record 0 with new counters wins.
  const replaced = { ...r0, entry: { ...r0.entry, packets: '999' } };
  await call(client, 'Update', { records: [replaced] });
  assert.equal((await call(client, 'Lookup', { map: r0.map, key: r0.key })).entry.packets, '999');
  await call(client, 'Update', { records: [r0] });

  return records;
}

/** Delete and Flush: counts agree before and after. Leaves the maps empty. */
export async function runDeleteAndFlush(client: Client, records: FlowRecord[]): Promise<void> {
  const tcp4 = records.filter((r) => r.map.family === 'FAMILY_IPV4' && r.map.kind === 'MAP_KIND_TCP');
  const victims = tcp4.slice(0, 100).map((r) => r.key);
  const del = await call(client, 'Delete', { map: tcp4[0].map, keys: [...victims, { ...victims[0], sport: 9 }] });
  assert.equal(del.deleted, 100);
  const again = await call(client, 'Delete', { map: tcp4[0].map, keys: victims });
  assert.equal(again.deleted, 0);
  await rejectsWith(call(client, 'Lookup', { map: tcp4[0].map, key: victims[5] }), grpc.status.NOT_FOUND);
  const counts = await countAll(client);
  assert.equal(counts.get('FAMILY_IPV4/MAP_KIND_TCP'), 150);

  const flushedOne = await call(client, 'Flush', { maps: [{ family: 'FAMILY_IPV6', kind: 'MAP_KIND_ANY' }] });
  assert.equal(flushedOne.flushed, '250');
  const flushed = await call(client, 'Flush', { maps: [] });
  assert.equal(flushed.flushed, String(150 + 250 + 250));
  assert.equal([...(await countAll(client)).values()].reduce((a, b) => a + b, 0), 0);
  assert.equal((await collect(client, 'DumpEntries', { maps: [] })).length, 0);
}
