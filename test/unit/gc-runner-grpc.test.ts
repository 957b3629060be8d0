/**
 * GCRunner over gRPC (memory backend, in-process daemon): Run's counts and kept stream,
 * bad input refused with nothing touched, and Observe with a fast and a deliberately slow
 * subscriber: the fast one gets every event in order, the slow one is told what it lost.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { call, collect, ctClient, rejectsWith, startTestDaemon, tempDir } from '../helpers/grpc';
import { waitUntil } from '../helpers/wait';

/** A GCRunner client; `own` gives it a connection of its own (subscribers are separate processes). */
function gcClient(address: string, own = false): any {
  const Ctor = services().GCRunner;
  return new Ctor(address, grpc.credentials.createInsecure(), own ? { 'grpc.use_local_subchannel_pool': 1 } : {});
}

function records(n: number, expiredEvery: number): object[] {
  const out: object[] = [];
  for (let i = 0; i < n; i++) {
    out.push({
      map: { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' },
      key: { daddr: `192.0.2.${(i % 250) + 1}`, saddr: `198.51.100.${Math.floor(i / 250) % 250 + 1}`, dport: 443, sport: 1024 + (i % 60000), nexthdr: 6, flags: 0 },
      entry: { lifetime: i % expiredEvery === 0 ? 1 : 0xfffffffe, packets: String(i) },
    });
  }
  return out;
}

async function countTcp4(client: any): Promise<number> {
  const res = await call(client, 'Count', { maps: [{ family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' }] });
  return Number(res.counts[0].entries);
}

test('GCRunner over gRPC: Run, emit_kept, bad input, Observe with a slow subscriber', async (t) => {
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-gcrpc-${process.pid}`, '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '4096', '--metrics-listen', '127.0.0.1:0']);
  t.after(() => d.stop());
  const ct = ctClient(d.address);
  const gc = gcClient(d.address);
  t.after(() => (ct.close(), gc.close()));

  // 2000 entries, every 4th expired.
  await call(ct, 'Update', { records: records(2000, 4) });

  // Bad input: refused, naming the field, and no entry touched.
  await rejectsWith(collect(gc, 'Run', { family: 7, filter: { remove_expired: true } }), grpc.status.INVALID_ARGUMENT, 'family');
  await rejectsWith(collect(gc, 'Run', { filter: { remove_expired: true, match_ips: ['192.0.2.1', '192.0.2.x'] } }), grpc.status.INVALID_ARGUMENT, 'filter.match_ips[1]');
  await rejectsWith(collect(gc, 'Run', { filter: { remove_expired: true, time: '4294967296' } }), grpc.status.INVALID_ARGUMENT, 'filter.time');
  await rejectsWith(collect(gc, 'Run', { maps: [{ family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 256 }], filter: { remove_expired: true } }), grpc.status.INVALID_ARGUMENT, 'maps[0].cluster_id');
  await rejectsWith(collect(gc, 'Run', { maps: [{ family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 9 }], filter: { remove_expired: true } }), grpc.status.NOT_FOUND, 'maps[0]');
  await rejectsWith(call(gc, 'Signal', { family: 'FAMILY_UNSPECIFIED' }), grpc.status.INVALID_ARGUMENT, 'family');
  assert.equal(await countTcp4(ct), 2000);

  // Run(remove_expired, emit_kept): exactly the expired go, exactly the rest stream as kept.
  const updates = await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true, emit_kept: true } });
  const stats = updates.at(-1).stats;
  assert.ok(stats, 'stats is the last message');
  const kept = updates.slice(0, -1).map((u: any) => u.kept);
  assert.equal(kept.length, 1500);
  assert.ok(kept.every((r: any) => r.entry.lifetime === 0xfffffffe && Number(r.entry.packets) % 4 !== 0));
  const tcp4 = stats.maps.find((m: any) => m.map.kind === 'MAP_KIND_TCP');
  assert.deepEqual({ alive: tcp4.alive, deleted: tcp4.deleted, skipped: tcp4.skipped }, { alive: '1500', deleted: '500', skipped: '0' });
  assert.equal(stats.maps.length, 2, 'both IPv4 maps collected');
  assert.equal(await countTcp4(ct), 1500);

  // match_ips: entries with 192.0.2.1 on either side go.
  const byIp = (await collect(gc, 'Run', { filter: { match_ips: ['192.0.2.1'] } })).at(-1).stats;
  const hits = records(2000, 4).filter((r: any, i) => i % 4 !== 0 && r.key.daddr === '192.0.2.1').length;
  assert.equal(byIp.maps.reduce((n: number, m: any) => n + Number(m.deleted), 0), hits);

  // Observe: a fast and a paused subscriber, 30000 deletions in one pass.
  await call(ct, 'Flush', {});
  const N = 30000;
  for (let i = 0; i < N; i += 10000) await call(ct, 'Update', { records: records(N, 1).slice(i, i + 10000) });
  const fast: any[] = [];
  const slow: any[] = [];
  // Separate connections: a paused stream holds its connection's HTTP/2 window.
  const fastClient = gcClient(d.address, true);
  const slowClient = gcClient(d.address, true);
  t.after(() => (fastClient.close(), slowClient.close()));
  const fastStream = fastClient.Observe({ family: 'FAMILY_IPV4' });
  const slowStream = slowClient.Observe({});
  t.after(() => (fastStream.cancel(), slowStream.cancel()));
  fastStream.on('data', (m: any) => fast.push(m));
  slowStream.on('data', (m: any) => {
    slow.push(m);
    slowStream.pause(); // read one message, then stall: the server must not buffer without bound
  });
  fastStream.on('error', () => undefined);
  slowStream.on('error', () => undefined);
  await new Promise((r) => setTimeout(r, 200)); // subscriptions in place
  const run = (await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true } })).at(-1).stats;
  assert.equal(Number(run.maps[0].deleted), N);

  const until = (cond: () => boolean, what: string) => waitUntil(cond, what, 15_000, 50);
  await until(() => fast.length >= N, `fast subscriber got ${fast.length}/${N}`);
  assert.equal(fast.length, N);
  assert.ok(fast.every((m) => m.lost === '0' && m.record), 'fast subscriber lost nothing');
  const seqs = fast.map((m) => Number(m.sequence));
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, 'in order, no gaps');
  assert.equal(fast[0].record.key.nexthdr, 6);

  slowStream.removeAllListeners('data');
  slowStream.on('data', (m: any) => slow.push(m));
  slowStream.resume();
  const received = () => slow.filter((m) => m.record).length;
  const lost = () => slow.reduce((n, m) => n + Number(m.lost), 0);
  await until(() => received() + lost() === N, `slow subscriber accounted ${received()} + ${lost()} of ${N}`);
  assert.ok(lost() > 0, 'the slow subscriber was told it lost events');
  assert.ok(received() <= 16384 + 2000, `the server buffered at most its bound (+ what HTTP/2 held): ${received()}`);
  const notice = slow.find((m) => Number(m.lost) > 0);
  assert.equal(notice.record, null, 'a lost notice carries no record');

  // Status: the scheduler's state per family; Signal runs an early pass for one family.
  const before = await call(gc, 'Status', {});
  assert.deepEqual(before.families.map((f: any) => f.family), ['FAMILY_IPV4', 'FAMILY_IPV6']);
  const v4 = before.families[0];
  assert.equal(before.fixed_interval, false);
  assert.equal(before.max_interval_seconds, 43200);
  assert.ok(v4.interval_seconds >= 10 && v4.interval_seconds <= 43200);
  assert.equal(v4.last_sequence, String(d.daemon.gc.engine.lastSequence('ipv4')));
  assert.ok(Number(v4.deleted) >= N, 'Run passes are counted');
  await call(ct, 'Update', { records: records(100, 1) });
  await call(gc, 'Signal', { family: 'FAMILY_IPV4' });
  await until(() => d.daemon.scheduler.status().families[0].runs > Number(v4.runs), 'the signal ran a pass');
  await until(() => d.daemon.scheduler.status().families[0].running === false, 'pass finished');
  assert.equal(await countTcp4(ct), 0, 'the signalled pass removed the expired entries');

  // A real scrape shows Cilium's GC metrics moving.
  const scrape = async () => {
    const res = await fetch(`http://${d.daemon.metricsServer!.address}/metrics`);
    assert.equal(res.status, 200);
    return res.text();
  };
  const value = (text: string, re: RegExp) => Number(text.match(re)?.[1] ?? NaN);
  const m1 = await scrape();
  const runs1 = value(m1, /^cilium_datapath_conntrack_gc_runs_total\{family="ipv4",protocol="TCP",status="completed"\} (\d+)/m);
  assert.ok(runs1 >= 3, `runs_total moved: ${runs1}`);
  assert.match(m1, /^cilium_datapath_conntrack_gc_entries\{family="ipv4",protocol="TCP",status="deleted"\} \d+/m);
  await call(ct, 'Update', { records: records(7, 1) });
  await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true } });
  const m2 = await scrape();
  assert.equal(value(m2, /^cilium_datapath_conntrack_gc_runs_total\{family="ipv4",protocol="TCP",status="completed"\} (\d+)/m), runs1 + 1);
  assert.equal(value(m2, /^cilium_datapath_conntrack_gc_entries\{family="ipv4",protocol="TCP",status="deleted"\} (\d+)/m), 7);
  assert.match(m2, /^process_cpu_user_seconds_total /m);
});

test('GCRunner.Run: flow narrows what the filter removes; bad flow names flow.<field>; progress updates', async (t) => {
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-gcflow-${process.pid}`, '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '4096']);
  t.after(() => d.stop());
  const ct = ctClient(d.address);
  const gc = gcClient(d.address);
  t.after(() => (ct.close(), gc.close()));
  // 2000 entries, every 4th expired; flow source (key.daddr) 192.0.2.1..250.
  const all = records(2000, 4) as any[];
  await call(ct, 'Update', { records: all });

  await rejectsWith(collect(gc, 'Run', { filter: { remove_expired: true }, flow: { src: ['192.0.2.x'] } }), grpc.status.INVALID_ARGUMENT, 'flow.src[0]');
  await rejectsWith(collect(gc, 'Run', { filter: { remove_expired: true }, flow: { address: 'nope' } }), grpc.status.INVALID_ARGUMENT, 'flow.address');
  await rejectsWith(collect(gc, 'Run', { filter: { remove_expired: true }, flow: { direction: 99 } }), grpc.status.INVALID_ARGUMENT, 'flow.direction');
  assert.equal(await countTcp4(ct), 2000);

  // Only the expired entries whose flow source is in 192.0.2.0/28 (.1-.15) go.
  const inFlow = (r: any): boolean => Number(r.key.daddr.split('.')[3]) <= 15;
  const want = all.filter((r, i) => i % 4 === 0 && inFlow(r)).length;
  assert.ok(want > 0 && want < 500);
  const stats = (await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true }, flow: { src: ['192.0.2.0/28'], all_clusters: true } })).at(-1).stats;
  const tcp4 = stats.maps.find((m: any) => m.map.kind === 'MAP_KIND_TCP');
  assert.deepEqual({ deleted: Number(tcp4.deleted), alive: Number(tcp4.alive) }, { deleted: want, alive: 2000 - want });
  const left = await collect(ct, 'DumpEntriesBatched', { maps: [{ family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' }] });
  const keys = new Set(left.flatMap((b: any) => b.records).map((r: any) => `${r.key.daddr}:${r.key.sport}`));
  all.forEach((r, i) => assert.equal(keys.has(`${r.key.daddr}:${r.key.sport}`), !(i % 4 === 0 && inFlow(r)), `entry ${i}`));

  // match_ips is narrowed too: 192.0.2.20 is outside the flow, so nothing goes.
  const none = (await collect(gc, 'Run', { filter: { match_ips: ['192.0.2.20'] }, flow: { src: ['192.0.2.0/28'] } })).at(-1).stats;
  assert.equal(none.maps.reduce((n: number, m: any) => n + Number(m.deleted), 0), 0);

  // Progress: with an interval, updates come between batches (emit_kept makes each batch take
  // well over 1 ms); none without one.
  await call(ct, 'Update', { records: records(20000, 1).map((r: any) => ({ ...r, entry: { ...r.entry, lifetime: 0xfffffffe } })) });
  const withProgress = await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true, emit_kept: true }, progress_interval_ms: 1 });
  const progress = withProgress.filter((u: any) => u.progress).map((u: any) => u.progress);
  assert.ok(progress.length > 0, 'some progress updates');
  assert.equal(withProgress.at(-1).update, 'stats');
  for (const p of progress) {
    assert.equal(p.maps_total, 2);
    assert.ok(p.maps_done < 2 && Number(p.scanned) > 0 && Number(p.deleted) >= 0, JSON.stringify(p));
  }
  const without = await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true, emit_kept: true } });
  assert.equal(without.filter((u: any) => u.progress).length, 0);
});
