/**
 * NAT coupling (Cilium's NatMapNext4/6, facts §6) on the memory backend: which SNAT entries
 * a deleted CT entry takes with it, and the rxjs subscription around it.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { Subject } from 'rxjs';
import { CtmapError } from '../../src/errors';
import type { CtKey } from '../../src/maps/ctmap/codec';
import { GCEventBatch, batchOf, eventsOf } from '../../src/maps/ctmap/gc/events';
import { DeleteStatus } from '../../src/maps/ctmap/gc/types';
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
  const none = new Subject<GCEventBatch>();

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

  /** Records the key counts of deleteBatch calls on the IPv4 NAT map. */
  function spyDeletes(tables: Tables): number[] {
    const map = tables.nat.get('ipv4', 0).map;
    const calls: number[] = [];
    const original = map.deleteBatch.bind(map);
    map.deleteBatch = (keys, count) => {
      calls.push(count);
      return original(keys, count);
    };
    return calls;
  }

  test('one GC batch becomes one batch delete per NAT map, done before the emission returns', async () => {
    const s4 = new Subject<GCEventBatch>();
    const s6 = new Subject<GCEventBatch>();
    const coupling = new NatCoupling(t.nat, [s4, s6], silentLog);
    const calls = spyDeletes(t);
    try {
      // The TCP map's batch, including an entry with no NAT action (flags IN).
      s4.next(batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', { ...tcp, flags: 1 }), gcEvent('ipv4', dsr, DSR)]));
      assert.deepEqual(calls, [3]);
      assert.equal(coupling.deletedTotal, 3);
      s4.next(batchOf([gcEvent('ipv4', icmp)]));
      s6.next(batchOf([gcEvent('ipv6', v6)]));
      assert.deepEqual(calls, [3, 2]);
      assert.equal(coupling.deletedTotal, 7);
      assert.deepEqual(await natKeyIds(t.nat, 'ipv4'), new Set([keyId(udpPair.out.key), keyId(udpPair.in.key)]));
      assert.equal((await natKeyIds(t.nat, 'ipv6')).size, 0);
    } finally {
      coupling.close();
    }
  });

  test('candidates the GC did not delete keep their mappings', async () => {
    const s4 = new Subject<GCEventBatch>();
    const coupling = new NatCoupling(t.nat, s4, silentLog);
    const tcpBatch = batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', dsr, DSR)]);
    tcpBatch.status[0] = DeleteStatus.REFRESHED;
    s4.next({ ...tcpBatch, deleted: 1 });
    const anyBatch = batchOf([gcEvent('ipv4', icmp), gcEvent('ipv4', udp)]);
    anyBatch.status[0] = DeleteStatus.MISSING;
    s4.next({ ...anyBatch, deleted: 1 });
    assert.equal(coupling.deletedTotal, 3);
    const left = await natKeyIds(t.nat, 'ipv4');
    assert.deepEqual(left, new Set([tcpPair.out, tcpPair.in, icmpPair.out, icmpPair.in].map((e) => keyId(e.key))));
    coupling.close();
  });

  test('close() unsubscribes, idempotently', () => {
    const s4 = new Subject<GCEventBatch>();
    const coupling = new NatCoupling(t.nat, s4, silentLog);
    assert.equal(s4.observed, true);
    coupling.close();
    coupling.close();
    assert.equal(s4.observed, false, 'unsubscribed');
    s4.next(batchOf([gcEvent('ipv4', udp)]));
    assert.equal(coupling.deletedTotal, 0);
  });

  test('an empty NAT map is read once per batch: no lookup per deleted entry', () => {
    const empty = openTables(memoryBackend);
    const s4 = new Subject<GCEventBatch>();
    const coupling = new NatCoupling(empty.nat, s4, silentLog);
    const map = empty.nat.get('ipv4', 0).map;
    let lookups = 0;
    const lookup = map.lookup.bind(map);
    map.lookup = (...args: Parameters<typeof lookup>) => (lookups++, lookup(...args));
    try {
      s4.next(batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', { ...tcp, sport: 2 }), gcEvent('ipv4', { ...tcp, sport: 3 })]));
      assert.equal(lookups, 0);
      // Once the map holds a mapping, the next batch looks its entries up and finds it.
      putNat(empty.nat, 'ipv4', [tcpPair.out, tcpPair.in]);
      lookups = 0;
      s4.next(batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', { ...tcp, sport: 2 })]));
      assert.equal(lookups, 2);
      assert.equal(coupling.deletedTotal, 2);
    } finally {
      coupling.close();
      empty.close();
    }
  });

  test('a batch of more than 4096 keys is deleted 4096 at a time', () => {
    const big = openTables(memoryBackend, { size: 16384 });
    const s4 = new Subject<GCEventBatch>();
    const coupling = new NatCoupling(big.nat, s4, silentLog);
    const flows: CtKey[] = [];
    for (let i = 0; i < 2500; i++) flows.push({ ...udp, sport: 10000 + i });
    const pairs = flows.map((k, i) => snatPair(k, { addr: '192.0.2.11', port: 20000 + i }));
    putNat(big.nat, 'ipv4', pairs.flatMap((p) => [p.out, p.in]));
    const calls = spyDeletes(big);
    try {
      s4.next(batchOf(flows.map((k) => gcEvent('ipv4', k))));
      assert.deepEqual(calls, [4096, 904]);
      assert.equal(coupling.deletedTotal, 5000);
      assert.equal(big.nat.get('ipv4', 0).map.count(), 0);
    } finally {
      coupling.close();
      big.close();
    }
  });

  test('a failing lookup is logged and counted; the rest of the batch goes on', () => {
    const s4 = new Subject<GCEventBatch>();
    const lines: string[] = [];
    const log = silentLog.child({});
    log.warn = ((obj: unknown, msg: string) => void lines.push(msg)) as typeof log.warn;
    const coupling = new NatCoupling(t.nat, s4, log);
    const map = t.nat.get('ipv4', 0).map;
    const lookup = map.lookup.bind(map);
    let first = true;
    map.lookup = (...args: Parameters<typeof lookup>) => {
      if (!first) return lookup(...args);
      first = false;
      throw new CtmapError('permission-denied', 'map lookup: EPERM');
    };
    s4.next(batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', dsr, DSR)]));
    s4.next(batchOf([gcEvent('ipv4', udp)]));
    assert.equal(coupling.deletedTotal, 3);
    assert.equal(coupling.errors, 1);
    assert.match(lines[0] ?? '', /could not look up/);
    coupling.close();
  });
});

describe('GC event batches', () => {
  test('eventsOf yields the deleted candidates only, numbered in order, with copies', () => {
    const b = batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', { ...tcp, sport: 2 }), gcEvent('ipv4', dsr, DSR)]);
    b.status[1] = DeleteStatus.MISSING;
    const events = eventsOf({ ...b, deleted: 2, firstSequence: 41 });
    assert.deepEqual(events.map((e) => e.sequence), [41, 42]);
    assert.deepEqual(events[1].key, gcEvent('ipv4', dsr, DSR).key);
    b.keys.fill(0);
    assert.deepEqual(events[0].key, gcEvent('ipv4', tcp).key, 'survives reuse of the batch buffers');
  });

  test('eventsOf with a limit makes only the first deletions (a subscriber with room for no more)', () => {
    const b = batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', { ...tcp, sport: 2 }), gcEvent('ipv4', dsr, DSR)]);
    b.status[0] = DeleteStatus.MISSING;
    const batch = { ...b, deleted: 2, firstSequence: 7 };
    assert.deepEqual(eventsOf(batch, 1).map((e) => [e.sequence, e.key.readUInt16BE(10)]), [[7, 2]]);
    assert.equal(eventsOf(batch, 0).length, 0);
    assert.equal(eventsOf(batch, 5).length, 2);
  });

  test('batchOf refuses events of different maps', () => {
    assert.throws(() => batchOf([gcEvent('ipv4', tcp), gcEvent('ipv4', udp)]), /different maps/);
    assert.throws(() => batchOf([]), /no events/);
  });
});
