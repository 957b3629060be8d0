/**
 * One DumpFilter, four ways (issue 14 item 3): the entries DumpEntries lists and Count
 * counts are exactly those a filtered Delete removes, each published as a DESTROY event
 * (reason delete) to a CTEvents subscriber watching with the same filter, and each taking
 * its SNAT pair with it; entries the filter leaves out, and their SNAT pairs, stay. A
 * filtered Flush likewise removes only what its filter keeps (reason flush). Keys and a
 * filter together are refused. Memory backend, in-process daemon.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import type { CtKey } from '../../src/maps/ctmap/codec';
import { call, collect, ctClient, rejectsWith, serviceClient, startTestDaemon, tempDir, type Client, type TestDaemon } from '../helpers/grpc';
import { keyId, natKeyIds, putCt, putNat, snatPair } from '../helpers/nat-fixtures';

const TCP4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
const SEEN_NON_SYN = 1 << 4;

/** 24 TCP flows 192.0.2.(10+i):(40000+i) -> 198.51.100.(1 + i % 3):443 or :80 (odd i). */
const flows: CtKey[] = Array.from({ length: 24 }, (_, i) => ({
  daddr: `192.0.2.${10 + i}`,
  saddr: `198.51.100.${1 + (i % 3)}`,
  sport: 40000 + i,
  dport: i % 2 ? 80 : 443,
  nexthdr: 6,
  flags: 0,
}));

describe('the same filter through DumpEntries, Count, Delete and CTEvents', () => {
  let d: TestDaemon;
  let ct: Client;
  let events: Client;
  const sock = tempDir();
  const root = tempDir();
  before(async () => {
    d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', root.dir, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096']);
    ct = ctClient(d.address);
    events = serviceClient(services().CTEvents.service, 'CTEvents', d.address);
    putCt(d.daemon.tables, 'ipv4', flows.map((key) => ({ key, flags: SEEN_NON_SYN })));
    putNat(d.daemon.nat, 'ipv4', flows.flatMap((k, i) => { const p = snatPair(k, { addr: '203.0.113.1', port: 20000 + i }); return [p.out, p.in]; }));
  });
  after(async () => {
    ct?.close();
    events?.close();
    await d?.stop();
    sock.cleanup();
    root.cleanup();
  });

  it('Delete by filter removes exactly the listed set, with a DESTROY each and their SNAT pairs', async () => {
    // Flows to 198.51.100.1 on port 443: i % 3 == 0 and i even, i.e. i % 6 == 0.
    const filter = { dst: ['198.51.100.1/32'], dport: 443 };
    const want = flows.filter((_, i) => i % 6 === 0);
    const listed = (await collect(ct, 'DumpEntries', { maps: [TCP4], filter })).map((r) => keyId(r.key)).sort();
    assert.deepEqual(listed, want.map(keyId).sort());
    assert.equal(Number((await call(ct, 'Count', { maps: [TCP4], filter })).counts[0].entries), want.length);

    const got: any[] = [];
    const watch = (events as any).Watch({ filter }) as grpc.ClientReadableStream<any>;
    watch.on('data', (e: any) => got.push(e));
    watch.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 100)); // subscribed
    const natBefore = await natKeyIds(d.daemon.nat, 'ipv4');
    // An entry the filter leaves out goes first: its DESTROY must not reach this subscriber.
    assert.equal((await call(ct, 'Delete', { map: TCP4, keys: [flows[1]] })).deleted, 1);

    assert.equal((await call(ct, 'Delete', { map: TCP4, filter })).deleted, want.length);
    for (let until = Date.now() + 3000; got.length < want.length && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
    watch.cancel();
    assert.deepEqual(got.map((e) => `${e.kind}/${e.reason}`), want.map(() => 'CT_EVENT_KIND_DESTROY/CT_EVENT_REASON_DELETE'));
    assert.deepEqual(got.map((e) => keyId(e.record.key)).sort(), want.map(keyId).sort(), 'the subscriber got exactly the filter\'s entries');

    const left = (await collect(ct, 'DumpEntries', { maps: [TCP4] })).map((r) => keyId(r.key)).sort();
    assert.deepEqual(left, flows.filter((_, i) => i % 6 !== 0 && i !== 1).map(keyId).sort(), 'only those entries are gone');
    const natAfter = await natKeyIds(d.daemon.nat, 'ipv4');
    flows.forEach((k, i) => {
      const p = snatPair(k, { addr: '203.0.113.1', port: 20000 + i });
      for (const side of [p.out, p.in]) {
        assert.ok(natBefore.has(keyId(side.key)));
        if (i === 1) continue; // deleted by key: not a GC pass, its SNAT pair is the purge's
        assert.equal(natAfter.has(keyId(side.key)), i % 6 !== 0, `flow ${i}: SNAT ${keyId(side.key)} ${i % 6 === 0 ? 'removed with its CT entry' : 'kept'}`);
      }
    });
  });

  it('Flush by filter removes only what the filter keeps', async () => {
    const filter = { src: ['192.0.2.16/29'], state: 'FLOW_STATE_ESTABLISHED' }; // 192.0.2.16 .. .23: i = 6 .. 13
    const present = new Set((await collect(ct, 'DumpEntries', { maps: [TCP4] })).map((r) => keyId(r.key)));
    const want = flows.filter((_, i) => i >= 6 && i <= 13 && present.has(keyId(flows[i])));
    assert.equal(Number((await call(ct, 'Flush', { maps: [TCP4], filter })).flushed), want.length);
    const left = new Set((await collect(ct, 'DumpEntries', { maps: [TCP4] })).map((r) => keyId(r.key)));
    for (const k of flows) assert.equal(left.has(keyId(k)), present.has(keyId(k)) && !want.includes(k), keyId(k));
  });

  it('keys and a filter together are INVALID_ARGUMENT naming filter, and change nothing', async () => {
    const before = (await collect(ct, 'DumpEntries', { maps: [TCP4] })).length;
    await rejectsWith(call(ct, 'Delete', { map: TCP4, keys: [flows[1]], filter: { dport: 80 } }), grpc.status.INVALID_ARGUMENT, 'filter');
    await rejectsWith(call(ct, 'Flush', { maps: [TCP4], filter: { src: ['192.0.2.300'] } }), grpc.status.INVALID_ARGUMENT, 'filter.src[0]');
    await rejectsWith(collect(events, 'Watch', { filter: { dst: ['x'] } }), grpc.status.INVALID_ARGUMENT, 'filter.dst[0]');
    assert.equal((await collect(ct, 'DumpEntries', { maps: [TCP4] })).length, before);
  });
});
