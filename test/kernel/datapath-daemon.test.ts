/**
 * The daemon owns the datapath's side maps (issue 5): `ctmapd_ct_stats` (PERCPU_ARRAY) and
 * `ctmapd_datapath_config` (ARRAY) pinned under <bpf-root>/tc/globals, the config written
 * from the daemon's flags at every start; the loader takes its settings from there and
 * counts into the daemon's stats map. Checked with bpftool, independently of ctmapd's code.
 * Kernel tier: root or CAP_BPF, bpftool, and a built bpf/.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { TCP_FLAGS, eth, icmp, ip, quote, tcp, udp } from '../helpers/frames';
import { Client, call, ctClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { clusterIdMark } from '../../src/datapath/settings';
import { CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS, CT_FATE_STATS_COUNTERS } from '../../src/maps/ctmap/layout';
import { services } from '../../src/api/proto';
import { possibleCpus } from '../../src/sys/cpus';

type LoaderModule = typeof import('../../src/datapath/loader');
type BpfModule = typeof import('../../src/sys');

function bpftoolJson(args: string[]): any {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }).toString());
}

/** Slot 0 of a pinned array as bytes (bpftool prints them as hex strings). */
function slot0(pin: string): Buffer {
  const out = bpftoolJson(['map', 'lookup', 'pinned', pin, 'key', '0', '0', '0', '0']);
  return Buffer.from((out.value as string[]).map((b) => parseInt(b, 16)));
}

test('kernel: the daemon pins the datapath side maps; the config follows its flags across restarts; the loader reads it', async (t) => {
  if (!kernelTier(t)) return;
  const { CtDatapath } = require('../../src/datapath/loader') as LoaderModule;
  const bpf = privateBpfRoot(t);
  const sock = tempDir(t);
  const globals = path.join(bpf.root, 'tc/globals');
  const base = ['--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096'];

  let d = await startTestDaemon(sock.dir, [...base, '--bpf-ct-timeout-regular-any=33', '--max-connected-clusters=511']);
  t.after(() => d.stop());
  const stats = bpftoolJson(['map', 'show', 'pinned', path.join(globals, 'ctmapd_ct_stats')]);
  assert.deepEqual(
    { type: stats.type, key: stats.bytes_key, value: stats.bytes_value, max: stats.max_entries },
    { type: 'percpu_array', key: 4, value: CT_DATAPATH_STATS.size, max: 1 },
  );
  const cfgPin = path.join(globals, 'ctmapd_datapath_config');
  const cfg = bpftoolJson(['map', 'show', 'pinned', cfgPin]);
  assert.deepEqual({ type: cfg.type, key: cfg.bytes_key, value: cfg.bytes_value, max: cfg.max_entries }, { type: 'array', key: 4, value: 32, max: 1 });
  // struct ct_datapath_config by offset (bpf/ctmap.h): lifetimes, ids, flags.
  let raw = slot0(cfgPin);
  assert.deepEqual(
    {
      lifetimeTcp: raw.readUInt32LE(0),
      lifetimeNonTcp: raw.readUInt32LE(4),
      syn: raw.readUInt32LE(8),
      close: raw.readUInt32LE(12),
      report: raw.readUInt32LE(16),
      clusterId: raw.readUInt32LE(20),
      reportFlags: raw[24],
      v4: raw[25],
      v6: raw[26],
      clusterIdMax: raw.readUInt32LE(28),
    },
    { lifetimeTcp: 8000, lifetimeNonTcp: 33, syn: 60, close: 10, report: 5, clusterId: 0, reportFlags: 0xff, v4: 1, v6: 1, clusterIdMax: 511 },
  );

  // The loader runs with the daemon's settings, the override on top, and counts into its stats map.
  const dp = CtDatapath.load({ bpfRoot: bpf.root, settings: { clusterId: 300 } });
  try {
    assert.equal(dp.settings.lifetimeNonTcp, 33);
    assert.equal(dp.settings.clusterIdMax, 511);
    assert.equal(dp.settings.clusterId, 300);
    assert.ok(dp.reusedMaps.includes('ctmapd_ct_stats'));
    const users = (bpftoolJson(['prog', 'show']) as Array<{ name: string; map_ids?: number[] }>).filter((p) => p.map_ids?.includes(stats.id));
    assert.deepEqual(users.map((p) => p.name).sort(), ['ct_egress', 'ct_ingress'], `programs using the daemon's stats map (id ${stats.id})`);
  } finally {
    dp.close();
  }

  // A restart with other flags rewrites the config; the stats map (same layout) is kept.
  await d.stop();
  d = await startTestDaemon(sock.dir, [...base, '--bpf-ct-timeout-regular-any=44', '--enable-ipv6=false']);
  raw = slot0(cfgPin);
  assert.deepEqual({ nonTcp: raw.readUInt32LE(4), v6: raw[26], clusterIdMax: raw.readUInt32LE(28) }, { nonTcp: 44, v6: 0, clusterIdMax: 255 });
  const written = d.logs.find(/datapath settings written/);
  assert.ok(written, 'the change is logged');
  assert.equal(written!.previous.lifetimeNonTcp, 33);
  assert.equal(written!.settings.lifetimeNonTcp, 44);
  assert.equal(bpftoolJson(['map', 'show', 'pinned', path.join(globals, 'ctmapd_ct_stats')]).id, stats.id, 'stats map reused');
  await d.stop();
});

/** Every counter, `counts` where given, else 0, as ActiveMaps spells uint64s. */
function expectedStats(counts: Partial<Record<(typeof CT_DATAPATH_STATS_COUNTERS)[number], number>>): Record<string, string> {
  // No fate-sharing is attached here: its counters (fate_*) stay 0 beside the datapath's.
  return Object.fromEntries([...CT_DATAPATH_STATS_COUNTERS.map((n) => [n, String(counts[n] ?? 0)]), ...CT_FATE_STATS_COUNTERS.map((n) => [`fate_${n}`, '0'])]);
}

/** The ctmapd_datapath_conntrack_events_total series of a /metrics body, by event. */
function scrapeEvents(body: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of body.matchAll(/^ctmapd_datapath_conntrack_events_total\{event="(\w+)"\} (\d+)$/gm)) out[m[1]] = m[2];
  // Fate-sharing's series, under the names ActiveMaps gives them.
  for (const m of body.matchAll(/^ctmapd_datapath_fate_events_total\{event="(\w+)"\} (\d+)$/gm)) out[`fate_${m[1]}`] = m[2];
  return out;
}

test('kernel: packets through the datapath over the daemon\'s maps show in ActiveMaps and /metrics, exactly', async (t) => {
  if (!kernelTier(t)) return;
  const { CtDatapath } = require('../../src/datapath/loader') as LoaderModule;
  const bpfm = require('../../src/sys') as BpfModule;
  const bpf = privateBpfRoot(t);
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, [
    '--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096',
    '--metrics-listen', '127.0.0.1:0',
  ]);
  t.after(() => d.stop());
  const client = ctClient(d.address);
  t.after(() => client.close());
  const clusters = new (services().ClusterCTMaps)(d.address, grpc.credentials.createInsecure()) as unknown as Client;
  t.after(() => clusters.close());
  const scrape = async (): Promise<Record<string, string>> => scrapeEvents(await (await fetch(`http://${d.daemon.metricsServer!.address}/metrics`)).text());

  assert.deepEqual((await call(client, 'ActiveMaps', {})).datapath, expectedStats({}), 'a fresh stats map');
  assert.deepEqual(await scrape(), expectedStats({}));

  const dp = CtDatapath.load({ bpfRoot: bpf.root });
  t.after(() => dp.close());
  const run = new bpfm.TestRunContext(bpfm.SK_BUFF_CTX.size, 512);
  t.after(() => run.close());
  const send = (prog: 'egress' | 'ingress', frame: Buffer, mark = 0): void => {
    run.setPacket(frame);
    run.ctx.writeUInt32LE(mark, bpfm.SK_BUFF_CTX.markOffset);
    assert.equal(dp[prog].testRun(run), -1, 'TC_ACT_UNSPEC: the datapath only observes');
  };
  const { SYN, ACK, FIN } = TCP_FLAGS;
  send('egress', ip('192.0.2.1', '192.0.2.2', 6, tcp(40000, 80, SYN))); // new flow: 2 lookups, create
  send('ingress', ip('192.0.2.2', '192.0.2.1', 6, tcp(80, 40000, SYN | ACK))); // reply: 1 lookup
  send('egress', ip('192.0.2.1', '192.0.2.2', 6, tcp(40000, 80, FIN | ACK))); // forward hit, close: 2 lookups
  send('egress', eth(0x0806, Buffer.alloc(28))); // ARP: skipped
  const truncated = ip('192.0.2.1', '192.0.2.2', 6, tcp(1, 2, SYN));
  send('egress', truncated.subarray(0, truncated.length - 10)); // malformed
  const untracked = ip('192.0.2.1', '192.0.2.9', 17, udp(1, 2));
  send('ingress', ip('192.0.2.254', '192.0.2.1', 1, icmp(3, 0, quote(untracked)))); // related miss: 2 lookups
  send('egress', ip('192.0.2.1', '192.0.2.2', 17, udp(5353, 53)), clusterIdMark(9, 255)); // cluster 9 has not joined
  // A cluster joining over gRPC fills a slot of the outer map the loaded program already uses.
  await call(clusters, 'CreateClusterCTMaps', { cluster_id: 7 });
  send('egress', ip('192.0.2.1', '192.0.2.2', 17, udp(5354, 53)), clusterIdMark(7, 255)); // cluster 7: 2 lookups, create
  const rec = await call(client, 'Lookup', {
    map: { family: 'FAMILY_IPV4', kind: 'MAP_KIND_ANY', cluster_id: 7 },
    key: { daddr: '192.0.2.1', saddr: '192.0.2.2', sport: 5354, dport: 53, nexthdr: 17, flags: 0 },
  });
  assert.equal(rec.entry.packets, '1', 'the flow is in cluster 7\'s map');

  const want = expectedStats({
    packets: 8,
    lookups: 9,
    hits_reply: 1,
    hits_established: 1,
    creates: 2,
    creates_tcp4: 1,
    creates_any4: 1, // cluster 7's entry counts with its kind
    closes: 1,
    related_misses: 1,
    skipped: 1,
    malformed: 1,
    cluster_map_missing: 1,
  });
  assert.deepEqual((await call(client, 'ActiveMaps', {})).datapath, want, 'ActiveMaps');
  assert.deepEqual(await scrape(), want, '/metrics');

  // Per CPU (ActiveMaps.per_cpu): one element per possible CPU, adding up to the totals.
  const perCpu = (await call(client, 'ActiveMaps', { per_cpu: true })).datapath_per_cpu as Array<Record<string, string>>;
  assert.equal(perCpu.length, possibleCpus());
  const summed = Object.fromEntries(Object.keys(want).map((k) => [k, String(perCpu.reduce((n, c) => n + BigInt(c[k]!), 0n))]));
  assert.deepEqual(summed, want, 'per-CPU values sum to the total');
  assert.ok(perCpu.some((c) => c.packets !== '0'), 'the test runs counted on some CPU');
});
