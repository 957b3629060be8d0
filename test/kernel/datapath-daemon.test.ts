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
import { startTestDaemon, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';

type LoaderModule = typeof import('../../src/datapath/loader');

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
  const bpf = privateBpfRoot();
  t.after(bpf.cleanup);
  const sock = tempDir();
  t.after(sock.cleanup);
  const globals = path.join(bpf.root, 'tc/globals');
  const base = ['--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096'];

  let d = await startTestDaemon(sock.dir, [...base, '--bpf-ct-timeout-regular-any=33', '--max-connected-clusters=511']);
  t.after(() => d.stop());
  const stats = bpftoolJson(['map', 'show', 'pinned', path.join(globals, 'ctmapd_ct_stats')]);
  assert.deepEqual(
    { type: stats.type, key: stats.bytes_key, value: stats.bytes_value, max: stats.max_entries },
    { type: 'percpu_array', key: 4, value: 104, max: 1 },
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
