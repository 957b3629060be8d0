/**
 * NAT coupling (Cilium's NatMapNext4/6, facts §6) on the memory backend: which SNAT entries
 * a deleted CT entry takes with it, and the rxjs subscription around it.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { Subject } from 'rxjs';
import { CtmapError } from '../../src/errors';
import type { CtKey } from '../../src/maps/ctmap/codec';
import type { GCEvent } from '../../src/maps/ctmap/gc/types';
import { memoryBackend } from '../../src/maps/memory';
import { NatCoupling } from '../../src/maps/nat/coupling';
import { DSR, Tables, dsrKey, gcEvent, keyId, natKeyIds, openTables, putNat, silentLog, snatPair } from '../helpers/nat-fixtures';

const tcp: CtKey = { daddr: '10.0.0.1', saddr: '203.0.113.5', sport: 40000, dport: 443, nexthdr: 6, flags: 0 };
const icmp: CtKey = { daddr: '10.0.0.2', saddr: '203.0.113.6', sport: 0x1234, dport: 0, nexthdr: 1, flags: 0 };
const udp: CtKey = { daddr: '10.0.0.3', saddr: '203.0.113.7', sport: 5353, dport: 53, nexthdr: 17, flags: 0 };
const dsr: CtKey = { daddr: '10.0.0.4', saddr: '198.51.100.9', sport: 80, dport: 51000, nexthdr: 6, flags: 0 };

const tcpPair = snatPair(tcp, { addr: '192.0.2.10', port: 61000 });
const icmpPair = snatPair(icmp, { addr: '192.0.2.10', port: 0x9999 });
const udpPair = snatPair(udp, { addr: '192.0.2.10', port: 61001 });
const dsrNat = { key: dsrKey(dsr), entry: { addr: '192.0.2.80', port: 8080, created: 1n, needsCt: false } };

const v6: CtKey = { daddr: 'fd00::1', saddr: '2001:db8::5', sport: 33000, dport: 443, nexthdr: 6, flags: 0 };
const v6Pair = snatPair(v6, { addr: '2001:db8:ffff::10', port: 62000 });

describe('NatCoupling.deleteMappingFor', () => {
  let t: Tables;
  let coupling: NatCoupling;
  const none = new Subject<GCEvent>();

  beforeEach(() => {
    t = openTables(memoryBackend);
    putNat(t.nat, 'ipv4', [tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in, udpPair.out, udpPair.in, dsrNat]);
    putNat(t.nat, 'ipv6', [v6Pair.out, v6Pair.in]);
    coupling = new NatCoupling(t.nat, none, silentLog);
  });
  afterEach(() => {
    coupling.close();
    t.close();
  });

  const remaining = async (family: 'ipv4' | 'ipv6' = 'ipv4') => natKeyIds(t.nat, family);

  test('TCP OUT entry: deletes N and its IN partner', async () => {
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', tcp)), 2);
    const left = await remaining();
    assert.ok(!left.has(keyId(tcpPair.out.key)) && !left.has(keyId(tcpPair.in.key)));
    assert.equal(left.size, 5);
    assert.equal(coupling.deletedTotal, 2);
  });

  test('ICMP entry (any map): deletes its pair, nothing else', async () => {
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', icmp)), 2);
    const left = await remaining();
    assert.deepEqual(left, new Set([tcpPair.out, tcpPair.in, udpPair.out, udpPair.in, dsrNat].map((e) => keyId(e.key))));
  });

  test('DSRInternal entry: deletes only the swapped single key, no lookup of N', async () => {
    // A mapping at N's position must survive: the DSR rule never looks there.
    const decoy = snatPair(dsr, { addr: '192.0.2.99', port: 1 });
    putNat(t.nat, 'ipv4', [decoy.out, decoy.in]);
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', dsr, DSR)), 1);
    const left = await remaining();
    assert.ok(!left.has(keyId(dsrNat.key)));
    assert.ok(left.has(keyId(decoy.out.key)) && left.has(keyId(decoy.in.key)));
  });

  test('the same key without DSRInternal uses N, not the swapped key', async () => {
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', dsr)), 0);
    assert.ok((await remaining()).has(keyId(dsrNat.key)));
  });

  test('IN / RELATED / SERVICE CT keys: no NAT action', async () => {
    for (const flags of [1, 2, 4, 3]) {
      assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', { ...tcp, flags })), 0, `flags ${flags}`);
      assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', { ...dsr, flags }, DSR)), 0, `DSR flags ${flags}`);
    }
    assert.equal((await remaining()).size, 7);
  });

  test('N absent: nothing; IN partner already gone: 1', async () => {
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', { ...tcp, sport: 1 })), 0);
    t.nat.delete('ipv4', 0, [udpPair.in.key]);
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', udp)), 1);
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', udp)), 0);
  });

  test('IPv6: the pair is found through the 16-byte fields', async () => {
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv6', v6)), 2);
    assert.equal((await remaining('ipv6')).size, 0);
    assert.equal((await remaining('ipv4')).size, 7);
  });

  test('no NAT map for the event: another cluster, or a disabled family', async () => {
    assert.equal(coupling.deleteMappingFor(gcEvent('ipv4', tcp, 0, 5)), 0);
    const v4only = openTables(memoryBackend, { ipv6: false });
    const c = new NatCoupling(v4only.nat, none, silentLog);
    try {
      assert.equal(c.deleteMappingFor(gcEvent('ipv6', v6)), 0);
    } finally {
      c.close();
      v4only.close();
    }
    assert.equal((await remaining()).size, 7);
  });
});

describe('NatCoupling subscription', () => {
  let t: Tables;
  beforeEach(() => {
    t = openTables(memoryBackend);
    putNat(t.nat, 'ipv4', [tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in, udpPair.out, udpPair.in, dsrNat]);
    putNat(t.nat, 'ipv6', [v6Pair.out, v6Pair.in]);
  });
  afterEach(() => t.close());

  test('one burst of events becomes one batch delete per NAT map', async () => {
    const s4 = new Subject<GCEvent>();
    const s6 = new Subject<GCEvent>();
    const coupling = new NatCoupling(t.nat, [s4, s6], silentLog);
    const v4map = t.nat.get('ipv4', 0).map;
    const calls: number[] = [];
    const original = v4map.deleteBatch.bind(v4map);
    v4map.deleteBatch = (keys, count) => {
      calls.push(count);
      return original(keys, count);
    };
    try {
      // A pass: events arrive synchronously, including ones with no NAT action.
      s4.next(gcEvent('ipv4', tcp));
      s4.next(gcEvent('ipv4', { ...tcp, flags: 1 }));
      s4.next(gcEvent('ipv4', icmp));
      s4.next(gcEvent('ipv4', dsr, DSR));
      s6.next(gcEvent('ipv6', v6));
      assert.equal(coupling.deletedTotal, 0, 'deletes wait for the end of the burst');
      await Promise.resolve();
      assert.deepEqual(calls, [5]);
      assert.equal(coupling.deletedTotal, 7);
      assert.deepEqual(await natKeyIds(t.nat, 'ipv4'), new Set([keyId(udpPair.out.key), keyId(udpPair.in.key)]));
      assert.equal((await natKeyIds(t.nat, 'ipv6')).size, 0);
    } finally {
      coupling.close();
    }
  });

  test('flush() issues the queued deletes at once; close() unsubscribes', () => {
    const s4 = new Subject<GCEvent>();
    const coupling = new NatCoupling(t.nat, s4, silentLog);
    s4.next(gcEvent('ipv4', tcp));
    assert.equal(coupling.flush(), 2);
    assert.equal(coupling.deletedTotal, 2);
    assert.equal(s4.observed, true);
    coupling.close();
    coupling.close();
    assert.equal(s4.observed, false, 'unsubscribed');
    s4.next(gcEvent('ipv4', udp));
    assert.equal(coupling.flush(), 0);
    assert.equal(coupling.deletedTotal, 2);
  });

  test('close() issues what is still queued', async () => {
    const s4 = new Subject<GCEvent>();
    const coupling = new NatCoupling(t.nat, s4, silentLog);
    s4.next(gcEvent('ipv4', udp));
    coupling.close();
    assert.equal(coupling.deletedTotal, 2);
    await Promise.resolve();
    assert.equal(coupling.deletedTotal, 2, 'the scheduled flush finds nothing left');
  });

  test('a long pass flushes every 4096 keys, without waiting for the burst to end', () => {
    const big = openTables(memoryBackend, { size: 16384 });
    const s4 = new Subject<GCEvent>();
    const coupling = new NatCoupling(big.nat, s4, silentLog);
    const flows: CtKey[] = [];
    for (let i = 0; i < 2500; i++) flows.push({ ...udp, sport: 10000 + i });
    const pairs = flows.map((k, i) => snatPair(k, { addr: '192.0.2.11', port: 20000 + i }));
    putNat(big.nat, 'ipv4', pairs.flatMap((p) => [p.out, p.in]));
    try {
      for (const k of flows) s4.next(gcEvent('ipv4', k));
      assert.equal(coupling.deletedTotal, 4096, 'one forced flush at 4096 keys');
      coupling.flush();
      assert.equal(coupling.deletedTotal, 5000);
      assert.equal(big.nat.get('ipv4', 0).map.count(), 0);
    } finally {
      coupling.close();
      big.close();
    }
  });

  test('a failing lookup is logged and counted; the stream goes on', () => {
    const s4 = new Subject<GCEvent>();
    const lines: string[] = [];
    const log = silentLog.child({});
    log.warn = ((obj: unknown, msg: string) => void lines.push(msg)) as typeof log.warn;
    const coupling = new NatCoupling(t.nat, s4, log);
    const map = t.nat.get('ipv4', 0).map;
    const lookup = map.lookup.bind(map);
    map.lookup = () => {
      throw new CtmapError('permission-denied', 'map lookup: EPERM');
    };
    s4.next(gcEvent('ipv4', tcp));
    map.lookup = lookup;
    s4.next(gcEvent('ipv4', dsr, DSR));
    s4.next(gcEvent('ipv4', udp));
    assert.equal(coupling.flush(), 3);
    assert.equal(coupling.errors, 1);
    assert.match(lines[0] ?? '', /could not look up/);
    coupling.close();
  });
});
