/**
 * The datapath's settings and side maps without privileges: the settings codec and its
 * checks, the mark encoding, the per-CPU stats sum, and the daemon's side maps on the
 * memory backend (same maps and contents as on the kernel: test/kernel/datapath-daemon.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as fs from 'node:fs';
import {
  CT_DATAPATH_CONFIG_MAP,
  CT_DATAPATH_STATS_MAP,
  DEFAULT_DATAPATH_SETTINGS,
  clusterIdMark,
  datapathSettingsFrom,
  decodeDatapathSettings,
  encodeDatapathSettings,
  validateDatapathSettings,
} from '../../src/datapath/settings';
import { datapathSideMapSpecs, datapathStatsPerCpu, fateStatsPerCpu, sumDatapathStats, sumFateStats } from '../../src/datapath/side-maps';
import { CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS, CT_FATE_STATS, CT_FATE_STATS_COUNTERS } from '../../src/maps/ctmap/layout';
import { memoryBackend } from '../../src/maps/memory';
import { parseCpuList, possibleCpus } from '../../src/sys/cpus';
import { MapType } from '../../src/maps/types';
import { parseConfig } from '../../src/config/config';
import { call, ctClient, startTestDaemon, tempDir } from '../helpers/grpc';

test('settings: flags -> struct ct_datapath_config bytes -> settings', () => {
  const s = datapathSettingsFrom(parseConfig(['--bpf-ct-timeout-regular-tcp-fin=7', '--max-connected-clusters=511', '--enable-ipv4=false', '--ct-events=all'], {}), 42);
  const buf = encodeDatapathSettings(s);
  assert.equal(buf.length, 32);
  // Offsets of bpf/ctmap.h (checked against BTF in test/kernel/btf-layout.test.ts).
  assert.deepEqual(
    [buf.readUInt32LE(0), buf.readUInt32LE(4), buf.readUInt32LE(8), buf.readUInt32LE(12), buf.readUInt32LE(16), buf.readUInt32LE(20), buf[24], buf[25], buf[26], buf[27], buf.readUInt32LE(28)],
    [8000, 60, 60, 7, 5, 42, 0xff, 0, 1, 2, 511],
  );
  assert.deepEqual(decodeDatapathSettings(buf), s);
});

test('settings: what the datapath cannot take is invalid-argument naming the setting', () => {
  const bad: Array<[Partial<typeof DEFAULT_DATAPATH_SETTINGS>, RegExp]> = [
    [{ clusterIdMax: 300 }, /^clusterIdMax: 300: --max-connected-clusters is 255 or 511/],
    [{ clusterId: 256 }, /^cluster-id: 256 is out of range: 1\.\.255/],
    [{ clusterId: -1 }, /^cluster-id: -1/],
    [{ clusterId: 1.5 }, /^cluster-id: 1.5/],
    [{ lifetimeTcp: 2 ** 32 }, /^lifetimeTcp: 4294967296 seconds/],
    [{ reportFlags: 256 }, /^reportFlags: 256/],
    [{ events: 'some' as never }, /^events: some: --ct-events is none, signals, all/],
  ];
  for (const [over, re] of bad) {
    assert.throws(
      () => validateDatapathSettings({ ...DEFAULT_DATAPATH_SETTINGS, ...over }),
      (err: any) => err.code === 'invalid-argument' && re.test(err.message),
      JSON.stringify(over),
    );
  }
  validateDatapathSettings({ ...DEFAULT_DATAPATH_SETTINGS, clusterIdMax: 511, clusterId: 511 });
});

test('clusterIdMark encodes as Cilium does (bits spelled out)', () => {
  assert.equal(clusterIdMark(7, 255), 0x0000_0207);
  assert.equal(clusterIdMark(255, 255), 0x0000_02ff);
  assert.equal(clusterIdMark(300, 511), 0x8000_022c, 'id bit 8 in mark bit 31');
  assert.equal(clusterIdMark(44, 511), 0x0000_022c);
  assert.equal(clusterIdMark(511, 511), 0x8000_02ff);
  assert.equal(clusterIdMark(0, 255), 0x0000_0200, 'id 0: the global maps');
  assert.throws(() => clusterIdMark(256, 255), /cluster-id: 256 is out of range/);
});

test('possible CPUs are counted as libbpf counts them: every listed CPU, also on a sparse mask', () => {
  assert.deepEqual(parseCpuList('0'), [0]);
  assert.deepEqual(parseCpuList('0-1\n'), [0, 1]);
  // Sparse masks: libbpf_num_possible_cpus() sums the ranges (3 and 8), not highest + 1.
  assert.deepEqual(parseCpuList('0,2-3'), [0, 2, 3]);
  assert.equal(parseCpuList('0-3,8-11')?.length, 8);
  assert.equal(parseCpuList('x'), undefined);
  assert.equal(parseCpuList('3-1'), undefined);
  assert.equal(possibleCpus(), parseCpuList(fs.readFileSync('/sys/devices/system/cpu/possible', 'latin1'))?.length);
});

test('sumDatapathStats adds every CPU\'s copy, counter by counter', () => {
  const stride = CT_DATAPATH_STATS.size;
  const v = Buffer.alloc(3 * stride);
  CT_DATAPATH_STATS_COUNTERS.forEach((_, i) => {
    for (let c = 0; c < 3; c++) v.writeBigUInt64LE(BigInt((i + 1) * 10 ** c), c * stride + i * 8);
  });
  v.writeBigUInt64LE(2n ** 63n, 8); // lookups on CPU 0: sums must not lose precision
  const sum = sumDatapathStats(v);
  assert.equal(sum.packets, 111n);
  assert.equal(sum.lookups, 2n ** 63n + 20n + 200n);
  assert.equal(sum.cluster_map_missing, 13n * 111n);
  // The ring state is a nested struct in C; its counters are the last three u64.
  assert.equal(sum.events_lost_reported, BigInt(CT_DATAPATH_STATS_COUNTERS.length) * 111n);
});

test('datapathStatsPerCpu: one record per CPU copy, each what that CPU counted, summing to sumDatapathStats', () => {
  const stride = CT_DATAPATH_STATS.size;
  const v = Buffer.alloc(3 * stride);
  CT_DATAPATH_STATS_COUNTERS.forEach((_, i) => {
    for (let c = 0; c < 3; c++) v.writeBigUInt64LE(BigInt((i + 1) * 10 ** c), c * stride + i * 8);
  });
  const per = datapathStatsPerCpu(v);
  assert.equal(per.length, 3);
  assert.deepEqual(per.map((c) => c.packets), [1n, 10n, 100n]);
  assert.deepEqual(per.map((c) => c.lookups), [2n, 20n, 200n]);
  const sum = sumDatapathStats(v);
  for (const name of CT_DATAPATH_STATS_COUNTERS) assert.equal(per.reduce((n, c) => n + c[name], 0n), sum[name], name);

  // struct ct_fate_stats is not a multiple of 8 bytes in every build: each CPU's copy
  // starts at the 8-byte-rounded size, as the kernel lays out per-CPU values.
  const fstride = Math.ceil(CT_FATE_STATS.size / 8) * 8;
  const f = Buffer.alloc(2 * fstride);
  CT_FATE_STATS_COUNTERS.forEach((name, i) => {
    f.writeBigUInt64LE(BigInt(i + 1), CT_FATE_STATS.fields[name].offset);
    f.writeBigUInt64LE(BigInt(100 + i), fstride + CT_FATE_STATS.fields[name].offset);
  });
  const fper = fateStatsPerCpu(f);
  assert.equal(fper.length, 2);
  CT_FATE_STATS_COUNTERS.forEach((name, i) => {
    assert.deepEqual([fper[0]![name], fper[1]![name]], [BigInt(i + 1), BigInt(100 + i)], name);
    assert.equal(sumFateStats(f)[name], BigInt(101 + 2 * i));
  });
});

test('memory backend: the daemon pins both side maps, writes its flags, and rewrites them at a restart', async (t) => {
  const sock = tempDir(t);
  const root = `/memory-test/side-${process.pid}`;
  const specs = datapathSideMapSpecs(root);
  assert.deepEqual([specs.stats.pinPath, specs.config.pinPath], [`${root}/tc/globals/${CT_DATAPATH_STATS_MAP}`, `${root}/tc/globals/${CT_DATAPATH_CONFIG_MAP}`]);
  const flags = ['--backend', 'memory', '--bpf-root', root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096'];
  let d = await startTestDaemon(sock.dir, [...flags, '--bpf-ct-timeout-regular-any=33']);
  t.after(() => d.stop());
  const stats = memoryBackend.open(specs.stats)!;
  const config = memoryBackend.open(specs.config)!;
  t.after(() => {
    stats.close();
    config.close();
  });
  assert.deepEqual(
    { type: stats.info().type, value: stats.info().valueSize, buffer: stats.valueBufferSize, max: stats.info().maxEntries },
    { type: MapType.PERCPU_ARRAY, value: 168, buffer: possibleCpus() * 168, max: 1 },
  );
  assert.deepEqual(stats.lookup(Buffer.alloc(4)), Buffer.alloc(possibleCpus() * 168), 'no datapath counts in memory');
  assert.equal(config.info().type, MapType.ARRAY);
  assert.equal(decodeDatapathSettings(config.lookup(Buffer.alloc(4))!).lifetimeNonTcp, 33);
  assert.deepEqual(d.daemon.datapath.settings(), datapathSettingsFrom(parseConfig([...flags, '--bpf-ct-timeout-regular-any=33'], {})));
  await d.stop();
  d = await startTestDaemon(sock.dir, [...flags, '--bpf-ct-timeout-regular-any=44', '--max-connected-clusters=511']);
  assert.deepEqual(
    { nonTcp: d.daemon.datapath.settings().lifetimeNonTcp, max: d.daemon.datapath.settings().clusterIdMax },
    { nonTcp: 44, max: 511 },
  );
  assert.equal(d.logs.find(/datapath settings written/)?.previous.lifetimeNonTcp, 33);
});

test('memory backend: ActiveMaps and /metrics show the stats map\'s counters, zeros until written', async (t) => {
  const sock = tempDir(t);
  const root = `/memory-test/stats-${process.pid}`;
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096', '--metrics-listen', '127.0.0.1:0']);
  t.after(() => d.stop());
  const client = ctClient(d.address);
  t.after(() => client.close());
  const scrape = async (): Promise<Record<string, string>> => {
    const body = await (await fetch(`http://${d.daemon.metricsServer!.address}/metrics`)).text();
    assert.match(body, /^# TYPE ctmapd_datapath_conntrack_events_total counter$/m);
    const dp = Object.fromEntries([...body.matchAll(/^ctmapd_datapath_conntrack_events_total\{event="(\w+)"\} (\d+)$/gm)].map((m) => [m[1], m[2]]));
    // Fate-sharing's counters: their own series, named fate_<counter> as in ActiveMaps.
    const fate = Object.fromEntries([...body.matchAll(/^ctmapd_datapath_fate_events_total\{event="(\w+)"\} (\d+)$/gm)].map((m) => [`fate_${m[1]}`, m[2]]));
    return { ...dp, ...fate };
  };
  const zeros = Object.fromEntries([...CT_DATAPATH_STATS_COUNTERS, ...CT_FATE_STATS_COUNTERS.map((n) => `fate_${n}`)].map((n) => [n, '0']));
  assert.deepEqual((await call(client, 'ActiveMaps', {})).datapath, zeros);
  assert.deepEqual(await scrape(), zeros);

  // Write per-CPU copies as a datapath would: counter i is (i + 1) on CPU c, times 10^c.
  const stats = memoryBackend.open(datapathSideMapSpecs(root).stats)!;
  t.after(() => stats.close());
  const ncpu = possibleCpus();
  const v = Buffer.alloc(stats.valueBufferSize);
  CT_DATAPATH_STATS_COUNTERS.forEach((_, i) => {
    for (let c = 0; c < ncpu; c++) v.writeBigUInt64LE(BigInt((i + 1) * 10 ** c), c * CT_DATAPATH_STATS.size + i * 8);
  });
  stats.update(Buffer.alloc(4), v);
  // The fate counters map likewise, with other values so that a mix-up of the maps shows.
  const fateStats = memoryBackend.open(datapathSideMapSpecs(root).fateStats)!;
  t.after(() => fateStats.close());
  const fv = Buffer.alloc(fateStats.valueBufferSize);
  CT_FATE_STATS_COUNTERS.forEach((_, i) => {
    for (let c = 0; c < ncpu; c++) fv.writeBigUInt64LE(BigInt((i + 21) * 10 ** c), c * 40 + i * 8);
  });
  fateStats.update(Buffer.alloc(4), fv);
  const ones = (10 ** ncpu - 1) / 9; // 1 + 10 + 100 + ...
  const want = {
    ...Object.fromEntries(CT_DATAPATH_STATS_COUNTERS.map((n, i) => [n, String((i + 1) * ones)])),
    ...Object.fromEntries(CT_FATE_STATS_COUNTERS.map((n, i) => [`fate_${n}`, String((i + 21) * ones)])),
  };
  assert.deepEqual((await call(client, 'ActiveMaps', {})).datapath, want);
  assert.deepEqual(await scrape(), want);

  // per_cpu: element c is CPU c's copy, fate counters included; without it, none.
  const perCpu = await call(client, 'ActiveMaps', { per_cpu: true });
  assert.deepEqual(perCpu.datapath, want);
  assert.equal(perCpu.datapath_per_cpu.length, ncpu);
  perCpu.datapath_per_cpu.forEach((cpu: Record<string, string>, c: number) => {
    assert.deepEqual(cpu, {
      ...Object.fromEntries(CT_DATAPATH_STATS_COUNTERS.map((n, i) => [n, String((i + 1) * 10 ** c)])),
      ...Object.fromEntries(CT_FATE_STATS_COUNTERS.map((n, i) => [`fate_${n}`, String((i + 21) * 10 ** c)])),
    }, `cpu ${c}`);
  });
  assert.deepEqual((await call(client, 'ActiveMaps', {})).datapath_per_cpu, []);
  assert.equal(perCpu.bpf_root, root, "ActiveMaps names the daemon's --bpf-root");
});
