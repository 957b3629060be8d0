/**
 * PurgeOrphanNATEntries (facts §6) on the memory backend: a hand-built CT + SNAT state with
 * every case, the four counts exact, and the "lookup error counts as exists" rule.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { CtmapError } from '../../src/errors';
import { CtKey, encodeEntry, encodeKey } from '../../src/maps/ctmap/codec';
import { memoryBackend } from '../../src/maps/memory';
import { purgeOrphanNatEntries } from '../../src/maps/nat/purge';
import type { BpfMap } from '../../src/maps/types';
import { DSR, Tables, dsrKey, keyId, natKeyIds, openTables, putCt, putNat, snatPair } from '../helpers/nat-fixtures';

// Egress CT keys (raw fields) and their SNAT mappings.
const tcp: CtKey = { daddr: '10.0.0.1', saddr: '203.0.113.5', sport: 40000, dport: 443, nexthdr: 6, flags: 0 };
const icmp: CtKey = { daddr: '10.0.0.2', saddr: '203.0.113.6', sport: 0x1234, dport: 0, nexthdr: 1, flags: 0 };
const udpGone: CtKey = { daddr: '10.0.0.3', saddr: '203.0.113.7', sport: 5353, dport: 53, nexthdr: 17, flags: 0 };
const dsr: CtKey = { daddr: '10.0.0.4', saddr: '198.51.100.9', sport: 80, dport: 51000, nexthdr: 6, flags: 0 };
const dsrNoFlag: CtKey = { daddr: '10.0.0.5', saddr: '198.51.100.9', sport: 80, dport: 51001, nexthdr: 6, flags: 0 };
const inOnly: CtKey = { daddr: '10.0.0.6', saddr: '203.0.113.8', sport: 41000, dport: 443, nexthdr: 6, flags: 0 };
const tcpInAny: CtKey = { daddr: '10.0.0.7', saddr: '203.0.113.9', sport: 42000, dport: 443, nexthdr: 6, flags: 0 };

const to = (port: number) => ({ addr: '192.0.2.10', port });
const tcpPair = snatPair(tcp, to(61000));
const icmpPair = snatPair(icmp, to(0x9999));
const udpPair = snatPair(udpGone, to(61001));
const dsrNat = { key: dsrKey(dsr), entry: { addr: '192.0.2.80', port: 8080, created: 1n, needsCt: false } };
const dsrNoFlagNat = { key: dsrKey(dsrNoFlag), entry: { addr: '192.0.2.80', port: 8081, created: 1n, needsCt: false } };
const inOnlyPair = snatPair(inOnly, to(61002));
const tcpInAnyPair = snatPair(tcpInAny, to(61003));

describe('purgeOrphanNatEntries', () => {
  let t: Tables;
  beforeEach(() => {
    t = openTables(memoryBackend);
    putCt(t.ct, 'ipv4', [
      { key: tcp },
      { key: icmp },
      { key: dsr, flags: DSR },
      // The DSR position exists but without DSRInternal: does not keep the swapped key.
      { key: dsrNoFlag },
      // Only the IN-flag twin of inOnly's CT key: a NAT mapping needs the OUT entry.
      { key: { ...inOnly, flags: 1 } },
    ]);
    // A TCP CT entry in the any map: TCP NAT keys are checked against the TCP map only.
    const any = t.ct.get({ family: 'ipv4', kind: 'any', clusterId: 0 }, 'map').map;
    const k = Buffer.alloc(14);
    const v = Buffer.alloc(56);
    encodeKey('ipv4', tcpInAny, k);
    encodeEntry({ lifetime: 1_000_000 }, v);
    any.update(k, v);
    putNat(t.nat, 'ipv4', [
      tcpPair.out, tcpPair.in, // alive
      icmpPair.out, icmpPair.in, // alive (any map)
      udpPair.out, udpPair.in, // orphans: CT entry gone
      dsrNat, // alive: DSR case
      dsrNoFlagNat, // orphan: DSR position without DSRInternal
      inOnlyPair.out, inOnlyPair.in, // orphans: only an IN CT entry
      tcpInAnyPair.out, tcpInAnyPair.in, // orphans: CT entry in the wrong map
    ]);
  });
  afterEach(() => t.close());

  const table = () => t.nat.get('ipv4', 0);
  const ct = (kind: 'tcp' | 'any') => t.ct.get({ family: 'ipv4', kind, clusterId: 0 }, 'map');

  test('the four counts, and exactly the orphans removed', async () => {
    const stats = await purgeOrphanNatEntries(table(), ct('tcp'), ct('any'));
    assert.deepEqual(stats, { ingressAlive: 2, ingressDeleted: 3, egressAlive: 3, egressDeleted: 4 });
    assert.deepEqual(await natKeyIds(t.nat, 'ipv4'), new Set([tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in, dsrNat].map((e) => keyId(e.key))));
    // A second run finds nothing more to do.
    assert.deepEqual(await purgeOrphanNatEntries(table(), ct('tcp'), ct('any')), { ingressAlive: 2, ingressDeleted: 0, egressAlive: 3, egressDeleted: 0 });
  });

  test('deletes in batches, after the dump', async () => {
    const map = table().map;
    const calls: number[] = [];
    let dumpDone = false;
    const cursor = map.cursor.bind(map);
    map.cursor = (n) => {
      const c = cursor(n);
      return {
        next: () => c.next(),
        nextAsync: async () => {
          const b = await c.nextAsync();
          if (!b) dumpDone = true;
          return b;
        },
        close: () => c.close(),
      };
    };
    const del = map.deleteBatch.bind(map);
    map.deleteBatch = (keys, count) => {
      assert.ok(dumpDone, 'no delete before the dump has finished');
      calls.push(count);
      return del(keys, count);
    };
    map.delete = () => assert.fail('single-key delete');
    await purgeOrphanNatEntries(table(), ct('tcp'), ct('any'));
    assert.deepEqual(calls, [3, 4]);
  });

  test('an orphan already gone at delete time is in neither count', async () => {
    const map = table().map;
    const del = map.deleteBatch.bind(map);
    map.deleteBatch = (keys, count) => {
      // LRU eviction races the purge: one of the IN orphans vanishes first.
      map.deleteBatch = del;
      t.nat.delete('ipv4', 0, [udpPair.in.key]);
      return del(keys, count);
    };
    const stats = await purgeOrphanNatEntries(table(), ct('tcp'), ct('any'));
    assert.deepEqual(stats, { ingressAlive: 2, ingressDeleted: 2, egressAlive: 3, egressDeleted: 4 });
  });

  test('a CT lookup error other than not-found counts as "exists"', async () => {
    const failing = (real: BpfMap): BpfMap =>
      Object.assign(Object.create(real) as BpfMap, {
        lookup: () => {
          throw new CtmapError('permission-denied', 'map lookup: EPERM');
        },
      });
    const stats = await purgeOrphanNatEntries(table(), { ref: ct('tcp').ref, map: failing(ct('tcp').map) }, { ref: ct('any').ref, map: failing(ct('any').map) });
    assert.deepEqual(stats, { ingressAlive: 5, ingressDeleted: 0, egressAlive: 7, egressDeleted: 0 });
  });

  test('an aborted signal stops before anything is deleted', async () => {
    const ac = new AbortController();
    ac.abort(new CtmapError('unavailable', 'server is shutting down'));
    await assert.rejects(purgeOrphanNatEntries(table(), ct('tcp'), ct('any'), ac.signal), /shutting down/);
    assert.equal(table().map.count(), 12);
  });

  test('CT maps of the other family are refused', async () => {
    const ct6 = t.ct.get({ family: 'ipv6', kind: 'tcp', clusterId: 0 }, 'map');
    await assert.rejects(purgeOrphanNatEntries(table(), ct6, ct('any')), /ipv6 CT map given for the ipv4 NAT map/);
  });

  test('IPv6', async () => {
    const k6: CtKey = { daddr: 'fd00::1', saddr: '2001:db8::5', sport: 33000, dport: 443, nexthdr: 6, flags: 0 };
    const gone6: CtKey = { ...k6, sport: 33001 };
    const dsr6: CtKey = { daddr: 'fd00::2', saddr: '2001:db8::9', sport: 80, dport: 52000, nexthdr: 17, flags: 0 };
    const p = snatPair(k6, { addr: '2001:db8:ffff::10', port: 62000 });
    const q = snatPair(gone6, { addr: '2001:db8:ffff::10', port: 62001 });
    putCt(t.ct, 'ipv6', [{ key: k6 }, { key: dsr6, flags: DSR }]);
    putNat(t.nat, 'ipv6', [p.out, p.in, q.out, q.in, { key: dsrKey(dsr6), entry: { addr: '2001:db8::80', port: 53, created: 0n, needsCt: false } }]);
    const ct6 = (kind: 'tcp' | 'any') => t.ct.get({ family: 'ipv6', kind, clusterId: 0 }, 'map');
    const stats = await purgeOrphanNatEntries(t.nat.get('ipv6', 0), ct6('tcp'), ct6('any'));
    assert.deepEqual(stats, { ingressAlive: 1, ingressDeleted: 1, egressAlive: 2, egressDeleted: 1 });
  });
});
