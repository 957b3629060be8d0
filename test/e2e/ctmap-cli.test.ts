/**
 * `ctmap ct list | count | delete | flush` against a daemon process with known entries
 * (memory backend), as an operator runs them: every output format parses, the text is
 * Cilium's line format, the counts are exact, the same filter gives the same set through
 * list, count and delete, `--cluster-id all` reaches the cluster's maps, and `ct list |
 * head -1` ends without a stack trace.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { CTMAP_BIN } from '../../src/config/paths';
import { ctNow } from '../../src/maps/clock';
import { runCtmap as ctmap, startCliDaemon } from '../helpers/ctmap-cli';
import { call } from '../helpers/grpc';

const TCP4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
const SEEN_NON_SYN = 1 << 4;


test('ctmap ct: filters, outputs and exact counts against a daemon', async (t) => {
  const { socket, ct, clusters } = await startCliDaemon(t, 'cli');
  await call(clusters, 'CreateClusterCTMaps', { cluster_id: 5 });
  const lifetime = Math.floor(ctNow()) + 1000;
  // 30 TCP flows 192.0.2.(i+1):(30000+i) -> 198.51.100.(i % 2 + 1):443, half of them syn-only.
  const records = Array.from({ length: 30 }, (_, i) => ({
    map: TCP4,
    key: { daddr: `192.0.2.${i + 1}`, saddr: `198.51.100.${(i % 2) + 1}`, sport: 30000 + i, dport: 443, nexthdr: 6, flags: 0 },
    entry: { lifetime, flags: i < 15 ? SEEN_NON_SYN : 0, packets: String(i + 1), bytes: '100' },
  }));
  records.push({ map: { ...TCP4, cluster_id: 5 }, key: { daddr: '192.0.2.200', saddr: '198.51.100.1', sport: 39999, dport: 443, nexthdr: 6, flags: 0 }, entry: { lifetime, flags: SEEN_NON_SYN, packets: '1', bytes: '1' } });
  assert.equal((await call(ct, 'Update', { records })).written, records.length);
  const server = ['--server', `unix:${socket}`];

  // text: Cilium's line format, flow orientation (src:sport -> dst:dport).
  const text = ctmap(['ct', 'list', ...server, '-f', 'ipv4', '-d', '198.51.100.2']);
  assert.equal(text.status, 0, text.err);
  const lines = text.out.trim().split('\n');
  assert.equal(lines.length, 15);
  for (const l of lines) assert.match(l, /^TCP OUT 192\.0\.2\.\d+:3\d{4} -> 198\.51\.100\.2:443 expires=\d+ \(remaining: \d+ sec\(s\)\) Packets=\d+ Bytes=100 /);

  // json and jsonl parse, with the same records as the filter selects.
  const json = ctmap(['ct', 'list', ...server, '-s', '192.0.2.0/28', '--state', 'established', '-o', 'json']);
  const narrower = JSON.parse(ctmap(['ct', 'list', ...server, '-s', '192.0.2.0/29', '--state', 'established', '-o', 'json']).out);
  assert.equal(narrower.length, 7, '192.0.2.1-7 in the /29');
  assert.equal(json.status, 0, json.err);
  const arr = JSON.parse(json.out) as Array<{ key: { daddr: string } }>;
  assert.deepEqual(arr.map((r) => r.key.daddr).sort(), Array.from({ length: 15 }, (_, i) => `192.0.2.${i + 1}`).sort(), 'the established ones, 192.0.2.1-15, all inside the /28');
  const jsonl = ctmap(['ct', 'list', ...server, '-s', '192.0.2.0/28', '--state', 'established', '-o', 'jsonl']);
  assert.deepEqual(jsonl.out.trim().split('\n').map((l) => JSON.parse(l).key.daddr).sort(), arr.map((r) => r.key.daddr).sort());
  assert.equal(JSON.parse(ctmap(['ct', 'list', ...server, '-s', '203.0.113.0/24', '-o', 'json']).out).length, 0, 'an empty match is an empty array');

  // count: text and json, exact; the cluster's map with --cluster-id all.
  const count = ctmap(['ct', 'count', ...server, '--state', 'syn-only']);
  assert.match(count.out, /^15 flow entries in total$/m, count.out + count.err);
  const all = JSON.parse(ctmap(['ct', 'count', ...server, '--cluster-id', 'all', '--dport', '443', '-o', 'json']).out);
  assert.equal(all.total, 31);
  assert.ok(all.maps.some((m: any) => m.map.cluster_id === 5 && m.entries === 1), JSON.stringify(all));
  assert.equal(JSON.parse(ctmap(['ct', 'count', ...server, '--cluster-id', '5', '-o', 'json']).out).total, 1);

  // delete: the same filter's set, and only it.
  const filter = ['-d', '198.51.100.1', '--state', 'syn-only'];
  const listed = JSON.parse(ctmap(['ct', 'list', ...server, ...filter, '-o', 'json']).out).length;
  const counted = JSON.parse(ctmap(['ct', 'count', ...server, ...filter, '-o', 'json']).out).total;
  const del = ctmap(['ct', 'delete', ...server, ...filter]);
  assert.equal(del.status, 0, del.err);
  assert.equal(listed, 7, 'syn-only flows are i = 15..29; those to 198.51.100.1 the even ones, 16..28');
  assert.equal(counted, listed);
  assert.match(del.out, new RegExp(`^${listed} flow entries have been deleted$`, 'm'));
  assert.equal(JSON.parse(ctmap(['ct', 'count', ...server, '-o', 'json']).out).total, 30 - listed);
  assert.equal(JSON.parse(ctmap(['ct', 'count', ...server, ...filter, '-o', 'json']).out).total, 0);
  const refused = ctmap(['ct', 'delete', ...server]);
  assert.equal(refused.status, 2, 'ct delete without a filter is bad usage');

  // delete and flush print JSON too.
  assert.deepEqual(JSON.parse(ctmap(['ct', 'delete', ...server, '--sport', '30001', '-o', 'json']).out), { deleted: 1 });
  // flush with a filter, then everything.
  assert.deepEqual(JSON.parse(ctmap(['ct', 'flush', ...server, '--sport', '30002', '-o', 'json']).out), { flushed: 1 });
  assert.match(ctmap(['ct', 'flush', ...server, '--sport', '30000']).out, /^1 flow entries have been removed$/m);
  assert.match(ctmap(['ct', 'flush', ...server]).out, new RegExp(`^${30 - listed - 3} flow entries have been removed$`, 'm'));

  // A closed pipe ends the command quietly: enough entries that ctmap is still writing
  // when head has gone.
  const many = Array.from({ length: 4000 }, (_, i) => ({
    map: TCP4,
    key: { daddr: `10.${i >> 8}.${i & 255}.1`, saddr: '198.51.100.9', sport: 1024 + i, dport: 80, nexthdr: 6, flags: 0 },
    entry: { lifetime, flags: SEEN_NON_SYN, packets: '1', bytes: '1' },
  }));
  await call(ct, 'Update', { records: many });
  const piped = spawnSync('sh', ['-c', `"${process.execPath}" "${CTMAP_BIN}" ct list -o jsonl --server unix:${socket} | head -1`], { encoding: 'utf8' });
  assert.equal(piped.stdout.trim().split('\n').length, 1);
  assert.doesNotMatch(piped.stderr, /Error|at /, `no stack trace: ${piped.stderr}`);
});

test('ctmap maps, stats, gc status and cluster list | create | delete', async (t) => {
  const { socket, ct } = await startCliDaemon(t, 'cli2');
  const server = ['--server', socket];
  const lifetime = Math.floor(ctNow()) + 1000;
  const records = Array.from({ length: 41 }, (_, i) => ({
    map: TCP4,
    key: { daddr: `192.0.2.${i + 1}`, saddr: '198.51.100.1', sport: 1000 + i, dport: 80, nexthdr: 6, flags: 0 },
    entry: { lifetime, flags: SEEN_NON_SYN, packets: '1', bytes: '1' },
  }));
  await call(ct, 'Update', { records });
  const ok = (args: string[]): string => {
    const r = ctmap(args);
    assert.equal(r.status, 0, `${args.join(' ')}: ${r.err}`);
    return r.out;
  };

  const maps = JSON.parse(ok(['maps', ...server, '-o', 'json'])) as Array<{ name: string; entries: number; maxEntries: number }>;
  const ct4 = maps.find((m) => m.name === 'cilium_ct4_global');
  assert.deepEqual([ct4?.entries, ct4?.maxEntries], [41, 4096]);
  assert.match(ok(['maps', ...server]), /^IPv4 TCP global\s+cilium_ct4_global\s+41\s+4096\s+1\.0 %/m);

  const stats = JSON.parse(ok(['stats', ...server, '-o', 'json']));
  assert.equal(stats.datapath.creates, 0, 'no datapath on the memory backend: its counters read zero');
  assert.ok(stats.maps.some((m: any) => m.map === 'IPv4 TCP global' && m.entries === 41));

  ok(['gc', 'run', ...server]);
  const status = JSON.parse(ok(['gc', 'status', ...server, '-o', 'json']));
  const v4 = status.families.find((f: any) => f.family === 'FAMILY_IPV4');
  assert.equal(v4.last_pass_reason, 'manual', 'the manual pass is the last run');
  assert.equal(v4.alive, '41');
  assert.match(ok(['gc', 'status', ...server]), /^IPv4\s+\d+ s\s+\S+\s+\S+\s+\d+\s+\d+\s+41\s+manual\s+0\/0\/0$/m);

  // gc run --ip: match_ips, a CIDR too; only those entries go.
  assert.match(ok(['gc', 'run', ...server, '--ip', '192.0.2.0/30']), /deleted 3, alive 38/);
  assert.equal(JSON.parse(ok(['ct', 'count', ...server, '-o', 'json'])).total, 38);

  assert.match(ok(['cluster', 'list', ...server]), /no cluster has joined/);
  assert.match(ok(['cluster', 'create', ...server, '--cluster-id', '9']), /^cluster 9: /);
  assert.deepEqual(JSON.parse(ok(['cluster', 'list', ...server, '-o', 'json'])).map((c: any) => c.clusterId), [9]);
  assert.equal(JSON.parse(ok(['ct', 'count', ...server, '--cluster-id', '9', '-o', 'json'])).total, 0);
  assert.match(ok(['cluster', 'delete', ...server, '--cluster-id', '9']), /^cluster 9: maps deleted, 0 entries with them$/m);
  const created = JSON.parse(ok(['cluster', 'create', ...server, '--cluster-id', '11', '-o', 'json']));
  assert.equal(created.cluster_id, 11);
  assert.ok(created.maps.some((m: { name: string }) => m.name === 'cilium_per_cluster_ct_tcp4_11'), JSON.stringify(created.maps));
  const deleted = JSON.parse(ok(['cluster', 'delete', ...server, '--cluster-id', '11', '-o', 'json']));
  assert.equal(deleted.deleted, true);
  assert.deepEqual(JSON.parse(ok(['cluster', 'list', ...server, '-o', 'json'])), []);
  assert.equal(ctmap(['cluster', 'create', ...server, '--cluster-id', '0']).status, 2, 'cluster 0 is bad usage');
});
