/**
 * Issue 3 "must show", NAT part, through the daemon on kernel maps: a GC pass that deletes
 * expired TCP, ICMP and DSR CT entries removes their SNAT pairs (and reports how many),
 * leaves unrelated NAT entries alone, and PurgeOrphanNATEntries reports exact counts. And
 * a key Delete (CTMaps.Delete with keys, through the in-kernel deleter) takes its SNAT
 * pairs too and reaches Observe once per entry (issue 14).
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { gcRunnerClient, natMapsClient } from '../../src/api/clients';
import { call, collect, ctClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { dsrKey, keyId, snatPair } from '../helpers/nat-fixtures';
import type { CtKey } from '../../src/maps/ctmap/codec';

const V4 = 'FAMILY_IPV4';

/** A daemon on kernel maps in a private bpf-root (IPv4 only), with CTMaps, GCRunner and NATMaps clients; all stopped after the test. */
async function startKernelDaemon(t: TestContext) {
  const bpf = privateBpfRoot(t);
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '8192', '--bpf-ct-global-any-max', '8192', '--enable-ipv6=false']);
  t.after(() => d.stop());
  const ct = ctClient(d.address);
  const gc = gcRunnerClient(d.address);
  const natc = natMapsClient(d.address);
  t.after(() => (ct.close(), gc.close(), natc.close()));
  return { ct, gc, natc };
}

function ctRecord(key: CtKey, lifetime: number, flags = 0): object {
  return { map: { family: V4, kind: key.nexthdr === 6 ? 'MAP_KIND_TCP' : 'MAP_KIND_ANY' }, key, entry: { lifetime, flags, packets: '1' } };
}

function natRecord(r: { key: CtKey; entry: { addr: string; port: number; created: bigint; needsCt: boolean } }): object {
  return { family: V4, cluster_id: 0, key: r.key, entry: { addr: r.entry.addr, port: r.entry.port, created: String(r.entry.created), needs_ct: r.entry.needsCt } };
}

test('GC removes the SNAT pairs of deleted CT entries; orphan purge counts exactly (kernel)', async (t) => {
  if (!kernelTier(t)) return;
  const { ct, gc, natc } = await startKernelDaemon(t);

  // Egress CT keys (flags OUT) as Cilium stores them: daddr holds the flow's source.
  const tcp: CtKey = { daddr: '192.0.2.10', saddr: '198.51.100.1', sport: 40000, dport: 443, nexthdr: 6, flags: 0 };
  const icmp: CtKey = { daddr: '192.0.2.11', saddr: '198.51.100.2', sport: 0, dport: 77, nexthdr: 1, flags: 0 };
  const dsr: CtKey = { daddr: '192.0.2.12', saddr: '198.51.100.3', sport: 8080, dport: 50000, nexthdr: 6, flags: 0 };
  const alive: CtKey = { daddr: '192.0.2.13', saddr: '198.51.100.4', sport: 40001, dport: 443, nexthdr: 6, flags: 0 };
  const tcpPair = snatPair(tcp, { addr: '192.0.2.200', port: 61000 });
  const icmpPair = snatPair(icmp, { addr: '192.0.2.200', port: 61001 });
  const alivePair = snatPair(alive, { addr: '192.0.2.200', port: 61002 });
  const dsrNat = { key: dsrKey(dsr), entry: { addr: '192.0.2.201', port: 80, created: 5n, needsCt: false } };
  // An orphan OUT and an orphan IN entry (no CT partner) for the purge.
  const orphan = snatPair({ daddr: '192.0.2.14', saddr: '198.51.100.5', sport: 40002, dport: 22, nexthdr: 6, flags: 0 }, { addr: '192.0.2.200', port: 61003 });

  await call(ct, 'Update', { records: [ctRecord(tcp, 1), ctRecord(icmp, 1), ctRecord(dsr, 1, 1 << 7), ctRecord(alive, 0xfffffff0)] });
  await call(natc, 'Update', {
    records: [tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in, alivePair.out, alivePair.in, dsrNat, orphan.out, orphan.in].map(natRecord),
  });

  const stats = (await collect(gc, 'Run', { family: V4, filter: { remove_expired: true } })).at(-1).stats;
  assert.equal(stats.maps.reduce((n: number, m: any) => n + Number(m.deleted), 0), 3, 'three expired CT entries');
  assert.equal(stats.nat_deleted, '5', 'two pairs and the DSR mapping');

  const left = new Set((await collect(natc, 'DumpEntries', { family: V4, cluster_id: 0 })).map((r: any) => keyId(r.key)));
  assert.deepEqual(left, new Set([alivePair.out, alivePair.in, orphan.out, orphan.in].map((r) => keyId(r.key))));

  const purge = await call(natc, 'PurgeOrphanNATEntries', { family: V4, cluster_id: 0 });
  assert.deepEqual(purge, { ingress_alive: '1', ingress_deleted: '1', egress_alive: '1', egress_deleted: '1' });
  const after = new Set((await collect(natc, 'DumpEntries', { family: V4, cluster_id: 0 })).map((r: any) => keyId(r.key)));
  assert.deepEqual(after, new Set([alivePair.out, alivePair.in].map((r) => keyId(r.key))));

  // Flush is a GC pass with time 2^32-1 (Cilium's Flush): the live entry goes, is published
  // to Observe subscribers, and takes its SNAT pair with it.
  const observe = gc.Observe({ family: V4 });
  const observed = new Promise<any>((resolve, reject) => {
    observe.once('data', resolve);
    observe.once('error', reject);
  });
  observe.on('error', () => undefined);
  t.after(() => observe.cancel());
  await new Promise((r) => setTimeout(r, 200)); // subscription in place
  const flushed = await call(ct, 'Flush', { maps: [{ family: V4, kind: 'MAP_KIND_TCP' }] });
  assert.equal(flushed.flushed, '1');
  const event = await Promise.race([observed, new Promise((_, reject) => setTimeout(() => reject(new Error('no GC event within 5 s of the flush')), 5000).unref())]) as any;
  assert.equal(event.record.key.daddr, alive.daddr, 'an Observe subscriber saw the flushed entry');
  assert.equal((await collect(natc, 'DumpEntries', { family: V4, cluster_id: 0 })).length, 0, 'the SNAT pair went with it');
});

test('a key Delete takes the SNAT pairs (and the DSR mapping) and reaches Observe once per entry (kernel)', async (t) => {
  if (!kernelTier(t)) return;
  const { ct, gc, natc } = await startKernelDaemon(t);

  const tcp: CtKey = { daddr: '192.0.2.20', saddr: '198.51.100.1', sport: 40000, dport: 443, nexthdr: 6, flags: 0 };
  const dsr: CtKey = { daddr: '192.0.2.21', saddr: '198.51.100.3', sport: 8080, dport: 50000, nexthdr: 6, flags: 0 };
  const kept: CtKey = { daddr: '192.0.2.22', saddr: '198.51.100.4', sport: 40001, dport: 443, nexthdr: 6, flags: 0 };
  const tcpPair = snatPair(tcp, { addr: '192.0.2.200', port: 61000 });
  const keptPair = snatPair(kept, { addr: '192.0.2.200', port: 61002 });
  const dsrNat = { key: dsrKey(dsr), entry: { addr: '192.0.2.201', port: 80, created: 5n, needsCt: false } };
  await call(ct, 'Update', { records: [ctRecord(tcp, 0xfffffff0), ctRecord(dsr, 0xfffffff0, 1 << 7), ctRecord(kept, 0xfffffff0)] });
  await call(natc, 'Update', { records: [tcpPair.out, tcpPair.in, keptPair.out, keptPair.in, dsrNat].map(natRecord) });

  const events: any[] = [];
  const observe = gc.Observe({ family: V4 });
  observe.on('data', (e) => events.push(e));
  observe.on('error', () => undefined);
  t.after(() => observe.cancel());
  await new Promise((r) => setTimeout(r, 300)); // subscription in place

  const res = await call(ct, 'Delete', { map: { family: V4, kind: 'MAP_KIND_TCP' }, keys: [tcp, dsr] });
  assert.equal(res.deleted, 2);
  const deadline = Date.now() + 5000;
  while (events.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300)); // nothing more arrives
  assert.deepEqual(events.map((e) => e.record.key.daddr).sort(), [tcp.daddr, dsr.daddr], 'Observe: each deleted entry once');
  const left = new Set((await collect(natc, 'DumpEntries', { family: V4, cluster_id: 0 })).map((r: any) => keyId(r.key)));
  assert.deepEqual(left, new Set([keptPair.out, keptPair.in].map((r) => keyId(r.key))), 'the pair and the DSR mapping went; the other pair stays');
});
