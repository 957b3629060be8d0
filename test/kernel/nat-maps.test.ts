/**
 * The SNAT maps on real kernel maps: created and pinned with the attributes of facts §1
 * (bpftool map show), a written entry byte-exact with facts §4 in bpftool's dump, the
 * coupling and the orphan purge on real maps, reuse of the pinned maps, and no fd leaks.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import { Subject } from 'rxjs';
import type { CtKey } from '../../src/maps/ctmap/codec';
import { GCEventBatch, batchOf } from '../../src/maps/ctmap/gc/events';
import { NatCoupling } from '../../src/maps/nat/coupling';
import { purgeOrphanNatEntries } from '../../src/maps/nat/purge';
import type { MapBackend } from '../../src/maps/types';
import { assertNoFdLeak, bpfFdCount, kernelTier, privateBpfRoot } from '../helpers/kernel';
import { DSR, dsrKey, gcEvent, keyId, natKeyIds, openTables, putCt, putNat, silentLog, snatPair } from '../helpers/nat-fixtures';

function kernelBackend(): MapBackend {
  return (require('../../src/maps/kernel') as typeof import('../../src/maps/kernel')).kernelBackend;
}

function bpftool(...args: string[]): any {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args], { maxBuffer: 1 << 26 }).toString());
}

function dumpHex(pin: string): Map<string, string> {
  const hex = (a: string[]) => a.map((b) => b.replace(/^0x/, '').padStart(2, '0')).join('');
  return new Map((bpftool('map', 'dump', 'pinned', pin) as Array<{ key: string[]; value: string[] }>).map((e) => [hex(e.key), hex(e.value)]));
}

/** Key and value packed from facts §2 and §4 by hand, independently of src/maps. */
function factsV4(k: CtKey, v: { addr: string; port: number; created: bigint; needsCt: boolean }): { key: string; value: string } {
  const ip = (s: string) => Buffer.from(s.split('.').map(Number));
  const key = Buffer.alloc(14);
  ip(k.daddr).copy(key, 0);
  ip(k.saddr).copy(key, 4);
  key.writeUInt16BE(k.dport, 8);
  key.writeUInt16BE(k.sport, 10);
  key[12] = k.nexthdr;
  key[13] = k.flags;
  const value = Buffer.alloc(40);
  value.writeBigUInt64LE(v.created, 0);
  value.writeBigUInt64LE(v.needsCt ? 1n : 0n, 8);
  ip(v.addr).copy(value, 32);
  value.writeUInt16BE(v.port, 36);
  return { key: key.toString('hex'), value: value.toString('hex') };
}

const tcp: CtKey = { daddr: '10.0.0.1', saddr: '203.0.113.5', sport: 40000, dport: 443, nexthdr: 6, flags: 0 };
const icmp: CtKey = { daddr: '10.0.0.2', saddr: '203.0.113.6', sport: 0x1234, dport: 0, nexthdr: 1, flags: 0 };
const udpGone: CtKey = { daddr: '10.0.0.3', saddr: '203.0.113.7', sport: 5353, dport: 53, nexthdr: 17, flags: 0 };
const dsr: CtKey = { daddr: '10.0.0.4', saddr: '198.51.100.9', sport: 80, dport: 51000, nexthdr: 6, flags: 0 };
const v6: CtKey = { daddr: 'fd00::1', saddr: '2001:db8::5', sport: 33000, dport: 443, nexthdr: 6, flags: 0 };

test('kernel: NAT maps pinned with facts §1 attributes; entries byte-exact; purge and coupling on real maps', async (t) => {
  if (!kernelTier(t)) return;
  const backend = kernelBackend();
  const fds = bpfFdCount();
  const bpf = privateBpfRoot(t);

  let tables = openTables(backend, { root: bpf.root, size: 4096 });
  try {
    const pin4 = path.join(bpf.root, 'tc/globals/cilium_snat_v4_external');
    const pin6 = path.join(bpf.root, 'tc/globals/cilium_snat_v6_external');
    const show4 = bpftool('map', 'show', 'pinned', pin4);
    const show6 = bpftool('map', 'show', 'pinned', pin6);
    assert.deepEqual(
      [show4.type, show4.name, show4.bytes_key, show4.bytes_value, show4.max_entries, show4.flags],
      ['lru_hash', 'cilium_snat_v4_', 14, 40, 4096, 0],
    );
    assert.deepEqual(
      [show6.type, show6.name, show6.bytes_key, show6.bytes_value, show6.max_entries, show6.flags],
      ['lru_hash', 'cilium_snat_v6_', 38, 56, 4096, 0],
    );

    // Written through NatTables, read back by bpftool: the bytes of facts §4.
    const pair = snatPair(tcp, { addr: '192.0.2.10', port: 61000 }, 0x0102030405n);
    putNat(tables.nat, 'ipv4', [pair.out, pair.in]);
    const dump = dumpHex(pin4);
    assert.equal(dump.size, 2);
    for (const e of [pair.out, pair.in]) {
      const want = factsV4(e.key, e.entry);
      assert.equal(dump.get(want.key), want.value, `bpftool value of ${keyId(e.key)}`);
    }
    const out6 = snatPair(v6, { addr: '2001:db8:ffff::10', port: 62000 }).out;
    putNat(tables.nat, 'ipv6', [out6]);
    const [[k6, val6]] = [...dumpHex(pin6)];
    // N = {daddr: 2001:db8::5, saddr: fd00::1, dport 443, sport 33000, TCP, OUT} -> created 1000, needs_ct.
    assert.equal(k6, '20010db8000000000000000000000005' + 'fd000000000000000000000000000001' + '01bb' + '80e8' + '06' + '00');
    assert.equal(val6, 'e803000000000000' + '0100000000000000' + '0'.repeat(32) + '20010db8ffff00000000000000000010' + 'f230' + '0'.repeat(12));

    // Purge: TCP and ICMP pairs alive, the DSR mapping kept, the UDP pair orphaned.
    const icmpPair = snatPair(icmp, { addr: '192.0.2.10', port: 0x9999 });
    const udpPair = snatPair(udpGone, { addr: '192.0.2.10', port: 61001 });
    const dsrNat = { key: dsrKey(dsr), entry: { addr: '192.0.2.80', port: 8080, created: 1n, needsCt: false } };
    putCt(tables.ct, 'ipv4', [{ key: tcp }, { key: icmp }, { key: dsr, flags: DSR }]);
    putNat(tables.nat, 'ipv4', [icmpPair.out, icmpPair.in, udpPair.out, udpPair.in, dsrNat]);
    const ct = (kind: 'tcp' | 'any') => tables.ct.get({ family: 'ipv4', kind, clusterId: 0 }, 'map');
    const stats = await purgeOrphanNatEntries(tables.nat.get('ipv4', 0), ct('tcp'), ct('any'));
    assert.deepEqual(stats, { ingressAlive: 2, ingressDeleted: 1, egressAlive: 3, egressDeleted: 1 });
    assert.equal(dumpHex(pin4).size, 5);

    // Coupling: the GC deleted the TCP and DSR CT entries; their mappings go in one batch.
    const batches = new Subject<GCEventBatch>();
    const coupling = new NatCoupling(tables.nat, batches, silentLog);
    batches.next(batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', dsr, DSR)]));
    assert.equal(coupling.deletedTotal, 3);
    coupling.close();
    assert.deepEqual(await natKeyIds(tables.nat, 'ipv4'), new Set([keyId(icmpPair.out.key), keyId(icmpPair.in.key)]));

    // A restart with the same configuration reuses the pinned maps and their entries.
    tables.close();
    tables = openTables(backend, { root: bpf.root, size: 4096 });
    assert.equal(tables.nat.get('ipv4', 0).map.count(), 2);
    assert.equal(tables.nat.get('ipv6', 0).map.count(), 1);
  } finally {
    tables.close();
  }
  assertNoFdLeak(fds, 'NAT tables');
});

test('kernel: distributed LRU creates the NAT maps with BPF_F_NO_COMMON_LRU', (t) => {
  if (!kernelTier(t)) return;
  const fds = bpfFdCount();
  const bpf = privateBpfRoot(t);
  const tables = openTables(kernelBackend(), { root: bpf.root, size: 8192, ipv4: true, ipv6: false, distributedLru: true });
  try {
    const show = bpftool('map', 'show', 'pinned', path.join(bpf.root, 'tc/globals/cilium_snat_v4_external'));
    assert.deepEqual([show.type, show.max_entries, show.flags], ['lru_hash', 8192, 2]);
    assert.equal(tables.nat.find('ipv6', 0), undefined);
  } finally {
    tables.close();
  }
  assertNoFdLeak(fds, 'NAT tables');
});
