/**
 * `ctmap nat list | flush` and `ctmap maps` against a daemon process (memory backend) with
 * known SNAT entries: every output format parses, the text is `cilium bpf nat list`'s line
 * format, counts are exact per family and cluster. And the consistency of one flow filter
 * across `ct list`, `ct count`, `events` and `ct delete` (issue 14): the entries listed are
 * the ones counted, deleted and reported as DESTROY reason delete, once each, and their
 * SNAT pairs go with them while every other SNAT entry stays. A key Delete (CTMaps.Delete
 * with keys) takes its entries' SNAT pairs too, and reaches the event bus and
 * GCRunner.Observe once per entry.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test, type TestContext } from 'node:test';
import type * as grpc from '@grpc/grpc-js';
import { clusterCtMapsClient, ctEventsClient, ctMapsClient, gcRunnerClient, natMapsClient } from '../../src/api/clients';
import type { CtLifecycleEventMsg } from '../../src/api/events-proto';
import type { GCEventMsg } from '../../src/api/gc-proto';
import { ctNow } from '../../src/maps/clock';
import type { CtKey } from '../../src/maps/ctmap/codec';
import type { NatEntry } from '../../src/maps/nat/codec';
import { runCtmap as ctmap, spawnCtmap } from '../helpers/ctmap-cli';
import { DaemonChild, spawnDaemon } from '../helpers/daemon-process';
import { tempDir } from '../helpers/grpc';
import { keyId, snatPair } from '../helpers/nat-fixtures';
import { waitUntil } from '../helpers/wait';

const V4 = 'FAMILY_IPV4';
const V6 = 'FAMILY_IPV6';
const SEEN_NON_SYN = 1 << 4;
const FAR = 4_000_000_000; // a lifetime no GC pass reaches (CT clock seconds)

const unary = <T>(fn: (cb: (err: grpc.ServiceError | null, res: T) => void) => unknown): Promise<T> =>
  new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));

function ok(args: string[]): string {
  const r = ctmap(args);
  assert.equal(r.status, 0, `ctmap ${args.join(' ')}: ${r.err}`);
  return r.out;
}

function startDaemon(t: TestContext): DaemonChild {
  const dir = tempDir(t);
  const d = spawnDaemon((fn) => t.after(fn), path.join(dir.dir, 'ctmapd.sock'), [
    '--backend', 'memory', '--bpf-root', `/memory-nat-cli-${process.pid}-${Math.random().toString(16).slice(2)}`,
    '--conntrack-gc-interval', '3600', '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096', '--bpf-nat-global-max', '8192',
  ]);
  t.after(() => d.kill9());
  return d;
}

/** A NatRecord message of `e` in the map of (family, cluster). */
function natRecord(family: string, e: { key: CtKey; entry: NatEntry }, cluster_id = 0) {
  return { family, cluster_id, key: e.key, entry: { addr: e.entry.addr, port: e.entry.port, created: String(e.entry.created), needs_ct: e.entry.needsCt } };
}

/** The line `cilium bpf nat list` prints for `e` (IPv4 or, with brackets, IPv6), with AGE where the age goes. */
function ciliumLine(e: { key: CtKey; entry: NatEntry }, v6 = false): string {
  const ep = (a: string, p: number) => (v6 ? `[${a}]:${p}` : `${a}:${p}`);
  const proto = { 6: 'TCP', 17: 'UDP', 1: 'ICMP', 58: 'ICMPv6' }[e.key.nexthdr];
  const inbound = e.key.flags & 1;
  return `${proto} ${inbound ? 'IN' : 'OUT'} ${ep(e.key.saddr, e.key.sport)} -> ${ep(e.key.daddr, e.key.dport)} XLATE_${inbound ? 'DST' : 'SRC'} ${ep(e.entry.addr, e.entry.port)} Created=AGEsec ago NeedsCT=${e.entry.needsCt ? 1 : 0}`;
}

/** `nat list` text lines with their ages checked against `age` (±2 s for the time the test takes) and replaced by AGE. */
/**
 * The lines with their Created=N field checked and blanked: N is the age when the daemon
 * served the call, at least `minAge` (the age at writing) and at most the age now.
 */
function withoutAges(text: string, created: bigint, minAge: number): string[] {
  const maxAge = Math.ceil(ctNow() - Number(created));
  return text
    .trim()
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => {
      const m = /Created=(-?\d+)sec ago/.exec(l);
      assert.ok(m, `a Created field: ${l}`);
      assert.ok(Number(m[1]) >= minAge - 1 && Number(m[1]) <= maxAge + 1, `Created=${m[1]}sec ago is in ${minAge}..${maxAge}: ${l}`);
      return l.replace(m[0], 'Created=AGEsec ago');
    });
}

test('ctmap nat list | flush and ctmap maps: Cilium text, json, jsonl, exact counts per family and cluster', async (t) => {
  const d = startDaemon(t);
  await d.waitFor(/ctmapd serving/);
  const nat = natMapsClient(d.address);
  const clusters = clusterCtMapsClient(d.address);
  t.after(() => [nat, clusters].forEach((c) => c.close()));
  await unary((cb) => clusters.CreateClusterCTMaps({ cluster_id: 5 }, cb));
  const server = ['--server', d.address];

  const created = BigInt(ctNow() - 120);
  const v4 = [
    snatPair({ daddr: '10.0.0.1', saddr: '1.1.1.1', sport: 40000, dport: 80, nexthdr: 6, flags: 0 }, { addr: '192.168.1.1', port: 40000 }, created),
    snatPair({ daddr: '10.0.0.2', saddr: '198.51.100.7', sport: 5353, dport: 53, nexthdr: 17, flags: 0 }, { addr: '192.168.1.1', port: 61001 }, created),
    snatPair({ daddr: '10.0.0.3', saddr: '198.51.100.8', sport: 0x1234, dport: 0, nexthdr: 1, flags: 0 }, { addr: '192.168.1.1', port: 0x4321 }, created),
  ];
  const v6 = [snatPair({ daddr: 'fd00::1', saddr: '2001:db8::5', sport: 33000, dport: 443, nexthdr: 6, flags: 0 }, { addr: '2001:db8:ffff::10', port: 62000 }, created)];
  const c5 = [snatPair({ daddr: '10.5.0.1', saddr: '1.1.1.1', sport: 41000, dport: 443, nexthdr: 6, flags: 0 }, { addr: '192.168.5.1', port: 41000 }, created)];
  const records = [
    ...v4.flatMap((p) => [p.out, p.in]).map((e) => natRecord(V4, e)),
    ...v6.flatMap((p) => [p.out, p.in]).map((e) => natRecord(V6, e)),
    ...c5.flatMap((p) => [p.out, p.in]).map((e) => natRecord(V4, e, 5)),
  ];
  assert.equal((await unary<any>((cb) => nat.Update({ records }, cb))).written, 10);

  // text: Cilium's lines, exactly, for both families' global maps by default.
  const lines4 = v4.flatMap((p) => [ciliumLine(p.out), ciliumLine(p.in)]);
  const lines6 = v6.flatMap((p) => [ciliumLine(p.out, true), ciliumLine(p.in, true)]);
  assert.deepEqual(withoutAges(ok(['nat', 'list', ...server]), created, 120).sort(), [...lines4, ...lines6].sort());
  assert.ok(lines4.includes('TCP OUT 10.0.0.1:40000 -> 1.1.1.1:80 XLATE_SRC 192.168.1.1:40000 Created=AGEsec ago NeedsCT=1'), 'the help text example');
  assert.ok(lines4.includes('TCP IN 1.1.1.1:80 -> 192.168.1.1:40000 XLATE_DST 10.0.0.1:40000 Created=AGEsec ago NeedsCT=0'));
  assert.deepEqual(withoutAges(ok(['nat', 'list', ...server, '-f', 'ipv4']), created, 120).sort(), lines4.sort());
  assert.deepEqual(withoutAges(ok(['nat', 'list', ...server, '--family', 'ipv6']), created, 120).sort(), lines6.sort());
  assert.deepEqual(withoutAges(ok(['nat', 'list', ...server, '--cluster-id', '5']), created, 120).sort(), c5.flatMap((p) => [ciliumLine(p.out), ciliumLine(p.in)]).sort());

  // json (one array) and jsonl (one record per line) parse, with every record once.
  const all = JSON.parse(ok(['nat', 'list', ...server, '--cluster-id', 'all', '-o', 'json'])) as any[];
  assert.equal(all.length, 10);
  assert.deepEqual(new Set(all.map((r) => `${r.family}/${r.cluster_id}/${keyId(r.key)}`)), new Set(records.map((r) => `${r.family}/${r.cluster_id}/${keyId(r.key)}`)));
  const tcpOut = all.find((r) => r.key.saddr === '10.0.0.1' && r.key.flags === 0);
  assert.deepEqual({ ...tcpOut.entry, age_seconds: undefined }, { addr: '192.168.1.1', port: 40000, created: String(created), needs_ct: true, age_seconds: undefined });
  const jsonl = ok(['nat', 'list', ...server, '-f', 'ipv4', '--cluster-id', 'all', '-o', 'jsonl']).trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(jsonl.length, 8);
  assert.ok(jsonl.every((r) => r.family === V4));
  assert.deepEqual(JSON.parse(ok(['nat', 'list', ...server, '-f', 'ipv6', '--cluster-id', '5', '-o', 'json'])), [], "cluster 5's IPv6 map is empty");
  const missing = ctmap(['nat', 'list', ...server, '--cluster-id', '9']);
  assert.equal(missing.status, 1);
  assert.match(missing.err, /no open SNAT maps of any family, cluster 9/);

  // maps: the SNAT maps beside the CT maps, same columns, exact entries; json says which kind.
  const maps = JSON.parse(ok(['maps', ...server, '-o', 'json'])) as Array<{ kind: string; map: string; name: string; entries: number; maxEntries: number; pin: string }>;
  const snat = maps.filter((m) => m.kind === 'snat');
  assert.deepEqual(
    snat.map((m) => [m.map, m.entries, m.maxEntries]),
    [['IPv4 SNAT global', 6, 8192], ['IPv6 SNAT global', 2, 8192], ['IPv4 SNAT cluster 5', 2, 8192], ['IPv6 SNAT cluster 5', 0, 8192]],
  );
  assert.deepEqual(snat.slice(0, 2).map((m) => m.name), ['cilium_snat_v4_external', 'cilium_snat_v6_external']);
  assert.ok(maps.filter((m) => m.kind === 'ct').length >= 8, 'the CT maps are still listed');
  const mapsText = ok(['maps', ...server]);
  assert.match(mapsText, /^IPv4 SNAT global\s+cilium_snat_v4_external\s+6\s+8192\s+0\.1 %\s+\S*cilium_snat_v4_external$/m);
  assert.match(mapsText, /^IPv4 SNAT cluster 5\s+\S+\s+2\s+8192\s+0\.0 %/m);

  // flush: per family, per cluster, then the rest; bad selections change nothing.
  assert.equal(ok(['nat', 'flush', ...server, '-f', 'ipv6']), '2 entries have been removed\n');
  assert.equal(JSON.parse(ok(['nat', 'list', ...server, '--cluster-id', 'all', '-o', 'json'])).length, 8);
  const unjoined = ctmap(['nat', 'flush', ...server, '--cluster-id', '9']);
  assert.equal(unjoined.status, 1);
  assert.match(unjoined.err, /NOT_FOUND/);
  assert.equal(ctmap(['nat', 'flush', ...server, '--cluster-id', 'x']).status, 2);
  assert.deepEqual(JSON.parse(ok(['nat', 'flush', ...server, '--cluster-id', '5', '-o', 'json'])), { flushed: 2 });
  assert.equal(JSON.parse(ok(['nat', 'list', ...server, '-f', 'ipv4', '--cluster-id', 'all', '-o', 'json'])).length, 6, 'the global IPv4 entries stay');
  assert.equal(ok(['nat', 'flush', ...server]), '6 entries have been removed\n');
  assert.equal(ok(['nat', 'flush', ...server, '--cluster-id', 'all']), '0 entries have been removed\n');
  assert.equal(ok(['nat', 'list', ...server, '--cluster-id', 'all']), '');
});

/** A CtKey's identity as every output prints it (CtKey field names). */
const ctId = (k: { daddr: string; saddr: string; sport: number; dport: number; nexthdr: number; flags: number }) => `${k.daddr}|${k.sport}|${k.saddr}|${k.dport}|${k.nexthdr}|${k.flags}`;

test('one filter, one set: ct list, ct count, events and ct delete agree, and the deleted entries take their SNAT pairs', async (t) => {
  const d = startDaemon(t);
  await d.waitFor(/ctmapd serving/);
  const ct = ctMapsClient(d.address);
  const nat = natMapsClient(d.address);
  t.after(() => [ct, nat].forEach((c) => c.close()));
  const server = ['--server', d.address];
  const filter = ['-d', '198.51.100.0/24', '--dport', '443', '--state', 'established'];
  const lifetime = ctNow() + 10_000;

  // 24 egress TCP flows 192.0.2.(i+1):(40000+i) -> dst:dport; the filter keeps those to
  // 198.51.100.0/24, port 443, established (SeenNonSyn, not closing, not expired).
  const flows = Array.from({ length: 24 }, (_, i) => {
    const dst = i % 6 === 5 ? '203.0.113.9' : `198.51.100.${(i % 3) + 1}`;
    const dport = i % 4 === 3 ? 80 : 443;
    const flags = i % 5 === 4 ? 0 : SEEN_NON_SYN; // syn-only when 0
    const key: CtKey = { daddr: `192.0.2.${i + 1}`, saddr: dst, sport: 40000 + i, dport, nexthdr: 6, flags: 0 };
    const keep = dst.startsWith('198.51.100.') && dport === 443 && flags === SEEN_NON_SYN;
    return { key, flags, keep, pair: snatPair(key, { addr: '192.0.2.254', port: 50000 + i }, BigInt(ctNow())) };
  });
  const kept = flows.filter((f) => f.keep);
  assert.ok(kept.length >= 8 && kept.length < 20, `a real selection (${kept.length} of 24)`);
  const map = { family: V4, kind: 'MAP_KIND_TCP', cluster_id: 0 };
  await unary((cb) => ct.Update({ records: flows.map((f) => ({ map, key: f.key, entry: { lifetime, flags: f.flags, packets: '3', bytes: '300' } })) }, cb));
  // Every flow's SNAT pair, and one pair whose CT entry does not exist (it must stay).
  const stray = snatPair({ daddr: '192.0.2.200', saddr: '198.51.100.1', sport: 45000, dport: 443, nexthdr: 6, flags: 0 }, { addr: '192.0.2.254', port: 59999 });
  const natRecords = [...flows.flatMap((f) => [f.pair.out, f.pair.in]), stray.out, stray.in].map((e) => natRecord(V4, e));
  assert.equal((await unary<any>((cb) => nat.Update({ records: natRecords }, cb))).written, 50);

  // Subscribed before the delete: the filtered watcher, and one that sees every DESTROY.
  const watched = spawnCtmap((fn) => t.after(fn), ['events', '--socket', d.address.slice('unix:'.length), '-o', 'json', '--kind', 'destroy', ...filter]);
  const everything = spawnCtmap((fn) => t.after(fn), ['events', '--socket', d.address.slice('unix:'.length), '-o', 'json', '--kind', 'destroy']);
  const probe = { daddr: '192.0.2.250', saddr: '198.51.100.250', sport: 9, dport: 443, nexthdr: 6, flags: 0 };
  await waitUntil(async () => {
    await unary((cb) => ct.Update({ records: [{ map, key: probe, entry: { lifetime, flags: SEEN_NON_SYN } }] }, cb));
    await unary((cb) => ct.Delete({ map, keys: [probe] }, cb));
    return watched.lines().length > 0 && everything.lines().length > 0;
  }, 'both ctmap events processes see the probe', 15_000, 300);
  await new Promise((r) => setTimeout(r, 300)); // the last probe's events arrive
  const skip = { watched: watched.lines().length, everything: everything.lines().length };
  assert.ok([...watched.lines(), ...everything.lines()].every((l) => l.reason === 'delete' && ctId(l.key) === ctId(probe)), 'the probes are key Deletes: DESTROY reason delete');

  const expected = new Set(kept.map((f) => ctId(f.key)));
  const listed = JSON.parse(ok(['ct', 'list', ...server, ...filter, '-o', 'json'])) as any[];
  assert.deepEqual(new Set(listed.map((r) => ctId(r.key))), expected, 'ct list: the filter keeps exactly the expected flows');
  assert.equal(listed.length, kept.length);
  const counted = JSON.parse(ok(['ct', 'count', ...server, ...filter, '-o', 'json']));
  assert.equal(counted.total, kept.length, 'ct count agrees');
  assert.equal(ok(['ct', 'delete', ...server, ...filter]), `${kept.length} flow entries have been deleted\n`);

  await waitUntil(() => watched.lines().length >= skip.watched + kept.length && everything.lines().length >= skip.everything + kept.length, 'the DESTROY events of the delete arrive', 15_000);
  await new Promise((r) => setTimeout(r, 500)); // and nothing more
  for (const [name, w, n] of [['filtered', watched, skip.watched], ['unfiltered', everything, skip.everything]] as const) {
    const got = w.lines().slice(n);
    assert.equal(got.length, kept.length, `${name} watcher: one DESTROY per deleted entry, none twice`);
    assert.ok(got.every((l) => l.kind === 'destroy' && l.reason === 'delete' && l.family === 'ipv4'), `${name}: DESTROY reason delete`);
    assert.deepEqual(new Set(got.map((l) => ctId(l.key))), expected, `${name}: the listed keys exactly`);
    assert.equal(new Set(got.map((l) => l.sequence)).size, kept.length, `${name}: distinct sequence numbers`);
    assert.ok(got.every((l) => l.entry.packets === '3'), `${name}: the entries as they were`);
  }
  watched.child.kill('SIGINT');
  everything.child.kill('SIGINT');
  assert.equal(await watched.exited, 0, watched.err());
  assert.equal(await everything.exited, 0, everything.err());

  // Exactly those gone, the others remain.
  assert.equal(JSON.parse(ok(['ct', 'count', ...server, '-o', 'json'])).total, 24 - kept.length);
  assert.equal(JSON.parse(ok(['ct', 'count', ...server, ...filter, '-o', 'json'])).total, 0);
  const remaining = JSON.parse(ok(['ct', 'list', ...server, '-o', 'json'])) as any[];
  assert.deepEqual(new Set(remaining.map((r) => ctId(r.key))), new Set(flows.filter((f) => !f.keep).map((f) => ctId(f.key))));

  // Their SNAT pairs went with them; every other SNAT entry stays.
  const natLeft = JSON.parse(ok(['nat', 'list', ...server, '-o', 'json'])) as any[];
  const wantNat = [...flows.filter((f) => !f.keep).flatMap((f) => [f.pair.out, f.pair.in]), stray.out, stray.in].map((e) => keyId(e.key));
  assert.deepEqual(new Set(natLeft.map((r) => keyId(r.key))), new Set(wantNat));
  assert.equal(natLeft.length, wantNat.length);
});

test('a key Delete (CTMaps.Delete with keys) takes the SNAT pairs and reaches the event bus and Observe once per entry', async (t) => {
  const d = startDaemon(t);
  await d.waitFor(/ctmapd serving/);
  const ct = ctMapsClient(d.address);
  const nat = natMapsClient(d.address);
  const events = ctEventsClient(d.address);
  const gc = gcRunnerClient(d.address);
  t.after(() => [ct, nat, events, gc].forEach((c) => c.close()));
  const map = { family: V4, kind: 'MAP_KIND_TCP', cluster_id: 0 };
  const bus: CtLifecycleEventMsg[] = [];
  const observed: GCEventMsg[] = [];
  const watch = events.Watch({ family: V4, kinds: ['CT_EVENT_KIND_DESTROY'] });
  watch.on('data', (e: CtLifecycleEventMsg) => bus.push(e));
  watch.on('error', () => undefined); // cancelled at the end
  const observe = gc.Observe({ family: V4 });
  observe.on('data', (e: GCEventMsg) => observed.push(e));
  observe.on('error', () => undefined);
  t.after(() => [watch, observe].forEach((s) => s.cancel()));

  const probe = { daddr: '192.0.2.250', saddr: '198.51.100.250', sport: 9, dport: 443, nexthdr: 6, flags: 0 };
  await waitUntil(async () => {
    await unary((cb) => ct.Update({ records: [{ map, key: probe, entry: { lifetime: FAR } }] }, cb));
    await unary((cb) => ct.Delete({ map, keys: [probe] }, cb));
    return bus.length > 0 && observed.length > 0;
  }, 'both subscribers see the probe', 15_000, 200);
  await new Promise((r) => setTimeout(r, 300));
  const skip = { bus: bus.length, observed: observed.length };
  assert.equal(bus.length, observed.length, 'each probe once on each stream');

  const keys: CtKey[] = [0, 1, 2].map((i) => ({ daddr: `192.0.2.${10 + i}`, saddr: '198.51.100.1', sport: 41000 + i, dport: 443, nexthdr: 6, flags: 0 }));
  const pairs = keys.map((k, i) => snatPair(k, { addr: '192.0.2.254', port: 52000 + i }));
  await unary((cb) => ct.Update({ records: keys.map((key, i) => ({ map, key, entry: { lifetime: FAR, flags: SEEN_NON_SYN, packets: String(i + 1) } })) }, cb));
  await unary((cb) => nat.Update({ records: pairs.flatMap((p) => [p.out, p.in]).map((e) => natRecord(V4, e)) }, cb));

  // Two of the three, and one key that is not there.
  const gone = { ...keys[0], sport: 1 };
  const res = await unary<any>((cb) => ct.Delete({ map, keys: [keys[0], keys[2], gone] }, cb));
  assert.equal(res.deleted, 2);
  await waitUntil(() => bus.length >= skip.bus + 2 && observed.length >= skip.observed + 2, 'the deletions reach both streams');
  await new Promise((r) => setTimeout(r, 500));
  const got = bus.slice(skip.bus);
  assert.equal(got.length, 2, 'one DESTROY per deleted entry, not two');
  assert.ok(got.every((e) => e.kind === 'CT_EVENT_KIND_DESTROY' && e.reason === 'CT_EVENT_REASON_DELETE'));
  assert.deepEqual(got.map((e) => ctId(e.record!.key as any)).sort(), [keys[0], keys[2]].map(ctId).sort());
  assert.deepEqual(got.map((e) => e.record!.entry!.packets).sort(), ['1', '3'], 'the entries as they were deleted');
  const obs = observed.slice(skip.observed);
  assert.equal(obs.length, 2, 'Observe: one event per deleted entry');
  assert.deepEqual(obs.map((e) => ctId(e.record!.key as any)).sort(), [keys[0], keys[2]].map(ctId).sort());
  assert.equal(Number(obs[1].sequence), Number(obs[0].sequence) + 1, 'consecutive GC sequence numbers');

  const left = await new Promise<any[]>((resolve, reject) => {
    const out: any[] = [];
    nat.DumpEntries({ family: V4, cluster_id: 0 }).on('data', (r) => out.push(r)).on('end', () => resolve(out)).on('error', reject);
  });
  assert.deepEqual(new Set(left.map((r) => keyId(r.key))), new Set([pairs[1].out, pairs[1].in].map((e) => keyId(e.key))), "the deleted entries' SNAT pairs are gone, the other pair stays");
});
