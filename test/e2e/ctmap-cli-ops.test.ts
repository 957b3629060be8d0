/**
 * The operator commands added with the per-CPU counters (issue 14), against a daemon
 * process with known entries (memory backend), as an operator runs them: `ct get` (found
 * and not found, text and json), `gc run` narrowed by a flow filter (exact counts, only the
 * matching expired entries gone, text and json), no progress on a stderr that is no
 * terminal, `cluster watch` seeing a join and a leave (json and text), and `stats` with one
 * per-CPU element per possible CPU whose sum is the total.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { ctNow } from '../../src/maps/clock';
import { possibleCpus } from '../../src/sys/cpus';
import { runCtmap as ctmap, spawnCtmap, startCliDaemon } from '../helpers/ctmap-cli';
import { spawnDaemon } from '../helpers/daemon-process';
import { call, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';

const TCP4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
const SEEN_NON_SYN = 1 << 4;

test('ctmap ct get and gc run with a flow filter', async (t) => {
  const { socket, ct } = await startCliDaemon(t, 'cli-ops');
  const server = ['--server', `unix:${socket}`];
  const lifetime = Math.floor(ctNow()) + 1000;
  // 20 TCP flows 192.0.2.(i+1):(30000+i) -> 198.51.100.1:443; the even ones expired.
  const records = Array.from({ length: 20 }, (_, i) => ({
    map: TCP4,
    key: { daddr: `192.0.2.${i + 1}`, saddr: '198.51.100.1', sport: 30000 + i, dport: 443, nexthdr: 6, flags: 0 },
    entry: { lifetime: i % 2 === 0 ? 1 : lifetime, flags: SEEN_NON_SYN, packets: String(i + 1), bytes: '100' },
  }));
  assert.equal((await call(ct, 'Update', { records })).written, records.length);

  // ct get: the flow as ct list prints it; the line is ct list's.
  const get = ['ct', 'get', ...server, '-s', '192.0.2.4', '-d', '198.51.100.1', '--sport', '30003', '--dport', '443', '-p', 'tcp'];
  const text = ctmap(get);
  assert.equal(text.status, 0, text.err);
  assert.match(text.out, /^TCP OUT 192\.0\.2\.4:30003 -> 198\.51\.100\.1:443 expires=\d+ \(remaining: (99\d|1000) sec\(s\)\) Packets=4 Bytes=100 /);
  assert.equal(text.out.split('\n').length, 2, 'one line');
  const listed = ctmap(['ct', 'list', ...server, '-s', '192.0.2.4']).out;
  assert.equal(text.out.replace(/remaining: \d+/, ''), listed.replace(/remaining: \d+/, ''), "the same line as ct list's");
  const json = ctmap([...get, '-o', 'json']);
  assert.equal(json.status, 0, json.err);
  const rec = JSON.parse(json.out);
  assert.deepEqual([rec.key.daddr, rec.key.saddr, rec.key.sport, rec.key.dport, rec.entry.packets], ['192.0.2.4', '198.51.100.1', 30003, 443, '4']);
  for (const args of [get.map((a) => (a === '30003' ? '30004' : a)), [...get, '--dir', 'in'], [...get, '-o', 'json', '--cluster-id', '0', '-p', 'udp']]) {
    const missing = ctmap(args);
    assert.equal(missing.status, 1, `${args.join(' ')}: ${missing.out}`);
    assert.equal(missing.out, '');
    assert.match(missing.err, /^ctmap: no entry for (OUT|IN) 192\.0\.2\.4:3000[34] -> 198\.51\.100\.1:443 \(proto (6|17)\) in the IPv4 (TCP|any) global map\n$/);
  }

  // gc run narrowed to 192.0.2.0/29 (flows 1..7): only the expired ones of those go (i = 0, 2, 4, 6).
  const run = ctmap(['gc', 'run', ...server, '-f', 'ipv4', '-s', '192.0.2.0/29']);
  assert.equal(run.status, 0, run.err);
  assert.match(run.out, /^IPv4 TCP global\s+deleted 4, alive 16, skipped 0, refreshed 0$/m);
  assert.equal(run.err, '', 'no progress when stderr is no terminal');
  const left = (): string[] => JSON.parse(ctmap(['ct', 'list', ...server, '-o', 'json']).out).map((r: any) => r.key.daddr).sort();
  const all = records.map((r) => r.key.daddr);
  assert.deepEqual(left(), all.filter((_, i) => !(i % 2 === 0 && i < 7)).sort());

  // json, narrowed by port: flow 9 (i = 8, expired) only; an unexpired match stays.
  const byPort = ctmap(['gc', 'run', ...server, '--sport', '30008', '--cluster-id', '0', '-o', 'json']);
  assert.equal(byPort.status, 0, byPort.err);
  assert.equal(byPort.err, '');
  const res = JSON.parse(byPort.out);
  assert.equal(res.deleted, 1);
  assert.equal(res.maps.find((m: any) => m.map.kind === 'MAP_KIND_TCP' && m.map.family === 'FAMILY_IPV4').alive, 15);
  assert.ok(res.maps.every((m: any) => m.map.cluster_id === 0), '--cluster-id 0: the global maps only');
  assert.equal(JSON.parse(ctmap(['gc', 'run', ...server, '--sport', '30009', '-o', 'json']).out).deleted, 0, 'flow 10 is not expired');
  assert.deepEqual(left(), all.filter((_, i) => !(i % 2 === 0 && (i < 7 || i === 8))).sort());

  // A bad filter is the daemon's INVALID_ARGUMENT naming flow.<field>.
  const bad = ctmap(['gc', 'run', ...server, '-s', '192.0.2.999']);
  assert.equal(bad.status, 1);
  assert.match(bad.err, /GCRunner\.Run: INVALID_ARGUMENT: flow\.src\[0\]/);

  // ct list and ct flush on a pipe: no progress either.
  const flush = ctmap(['ct', 'flush', ...server]);
  assert.equal(flush.status, 0);
  assert.equal(flush.err, '');
});

test('ctmap cluster watch sees a join and a leave; stats has the per-CPU counters', async (t) => {
  const { socket, ct, clusters } = await startCliDaemon(t, 'cli-ops2');
  const server = ['--server', socket];

  for (const output of ['json', 'text'] as const) {
    const watch = spawnCtmap((fn) => t.after(fn), ['cluster', 'watch', ...server, '-o', output, '--count', '2']);
    // The watch subscribes when its call starts; give the process the time to get there.
    await new Promise((r) => setTimeout(r, 1500));
    const id = output === 'json' ? 7 : 8;
    await call(clusters, 'CreateClusterCTMaps', { cluster_id: id });
    const lifetime = Math.floor(ctNow()) + 1000;
    await call(ct, 'Update', {
      records: [{ map: { ...TCP4, cluster_id: id }, key: { daddr: '192.0.2.1', saddr: '198.51.100.1', sport: 1, dport: 2, nexthdr: 6, flags: 0 }, entry: { lifetime, flags: SEEN_NON_SYN } }],
    });
    await call(clusters, 'DeleteClusterCTMaps', { cluster_id: id });
    assert.equal(await watch.exited, 0, watch.err());
    const lines = watch.out().trim().split('\n');
    if (output === 'json') {
      assert.deepEqual(lines.map((l) => JSON.parse(l)), [
        { kind: 'join', clusterId: 7, name: '', source: 'rpc', droppedEntries: 0 },
        { kind: 'leave', clusterId: 7, name: '', source: 'rpc', droppedEntries: 1 },
      ]);
    } else {
      assert.deepEqual(lines, ['JOIN cluster 8 via rpc', 'LEAVE cluster 8 via rpc, 1 entries dropped']);
    }
  }

  const stats = ctmap(['stats', ...server, '-o', 'json']);
  assert.equal(stats.status, 0, stats.err);
  const s = JSON.parse(stats.out);
  assert.equal(s.perCpu.length, possibleCpus());
  for (const [name, total] of Object.entries(s.datapath)) {
    assert.equal(s.perCpu.reduce((n: number, cpu: Record<string, number>) => n + cpu[name]!, 0), total, name);
  }
  for (const cpu of s.perCpu) assert.deepEqual(Object.keys(cpu), Object.keys(s.datapath), 'every counter per CPU, fate counters included');
  assert.ok(Object.keys(s.datapath).some((k) => k.startsWith('fate_')));
  assert.ok(Array.isArray(s.maps) && s.maps.length > 0);
  const text = ctmap(['stats', ...server]);
  assert.equal(text.status, 0, text.err);
  const cpuLines = text.out.split('\n').filter((l) => l.startsWith('cpu='));
  assert.equal(cpuLines.length, possibleCpus());
  assert.match(cpuLines[0]!, /^cpu=0 packets=0 lookups=0 .*fate_\w+=0/);
  assert.match(text.out, /^COUNTER\s+TOTAL$/m);
});

test('ctmap fate / datapath status take the bpf-root from the daemon unless one is given', async (t) => {
  // A memory daemon's bpf-root is no bpffs: the default, with a note saying why.
  const { socket } = await startCliDaemon(t, 'cli-ops3');
  const mem = ctmap(['fate', 'status', '--server', socket]);
  assert.equal(mem.status, 0, mem.err);
  assert.match(mem.err, /^ctmap: ctmapd \(unix:.*\) runs the memory backend, whose bpf-root \/memory-cli-ops3-\d+ is no bpffs; using --bpf-root \/sys\/fs\/bpf/);
  assert.match(mem.out, /no records under \/sys\/fs\/bpf\/ctmapd\/fate/);
  // No daemon: the default, with a note.
  const none = ctmap(['datapath', 'status', '--socket', path.join(path.dirname(socket), 'nobody.sock')]);
  assert.equal(none.status, 0, none.err);
  assert.match(none.err, /^ctmap: no answer from ctmapd at unix:.*nobody\.sock for its bpf-root \(UNAVAILABLE/);
  // An explicit one: no question asked.
  const given = ctmap(['fate', 'status', '--server', socket, '--bpf-root', '/sys/fs/bpf']);
  assert.deepEqual([given.status, given.err], [0, '']);

  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  const dir = tempDir(t);
  const ksock = path.join(dir.dir, 'ctmapd.sock');
  const d = spawnDaemon((fn) => t.after(fn), ksock, ['--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096']);
  t.after(() => d.kill9());
  await d.waitFor(/serving/i);
  const asked = ctmap(['fate', 'status', '--socket', ksock]);
  assert.deepEqual([asked.status, asked.err], [0, '']);
  assert.equal(asked.out, `no fate-sharing attached by ctmap (no records under ${bpf.root}/ctmapd/fate)\n`);
  const dp = ctmap(['datapath', 'status', '--server', ksock]);
  assert.deepEqual([dp.status, dp.err], [0, '']);
  assert.equal(dp.out, `no datapath attached by ctmap (no records under ${bpf.root}/ctmapd/datapath)\n`);
});
