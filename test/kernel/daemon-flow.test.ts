/**
 * Issue 2 "must show" on real kernel maps: records written over gRPC are byte-exact in
 * bpftool's dump of the pinned map; every RPC agrees; a restart keeps the entries of an
 * unchanged pinned map; a changed size is logged and migrated (test/kernel/migration.test.ts
 * covers migration in depth).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import { makeRecords, runCtFlow, runDeleteAndFlush } from '../helpers/ct-flow';
import { call, ctClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';

/** Packs a record exactly as facts §2-3 describe, independently of src/maps/ctmap/codec. */
function factsBytes(r: ReturnType<typeof makeRecords>[number]): { key: string; value: string } {
  const k = Buffer.alloc(14);
  const ip4 = (s: string, off: number) => s.split('.').forEach((o, i) => (k[off + i] = Number(o)));
  ip4(r.key.daddr, 0);
  ip4(r.key.saddr, 4);
  k.writeUInt16BE(r.key.dport, 8);
  k.writeUInt16BE(r.key.sport, 10);
  k[12] = r.key.nexthdr;
  k[13] = r.key.flags;
  const v = Buffer.alloc(56);
  const e = r.entry;
  if (e.union0.length) Buffer.from(e.union0).copy(v, 0);
  if (e.backend_id !== '0') v.writeBigUInt64LE(BigInt(e.backend_id), 8);
  v.writeBigUInt64LE(BigInt(e.packets), 16);
  v.writeBigUInt64LE(BigInt(e.bytes), 24);
  v.writeUInt32LE(e.lifetime, 32);
  v.writeUInt16LE(e.flags, 36);
  v.writeUInt16BE(e.rev_nat, 38);
  v.writeUInt16BE(e.nat_port, 40);
  v[42] = e.tx_flags_seen;
  v[43] = e.rx_flags_seen;
  v.writeUInt32LE(e.source_security_id, 44);
  v.writeUInt32LE(e.last_tx_report, 48);
  v.writeUInt32LE(e.last_rx_report, 52);
  return { key: k.toString('hex'), value: v.toString('hex') };
}

function bpftoolDump(pin: string): Map<string, string> {
  const out = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'dump', 'pinned', pin], { maxBuffer: 1 << 26 }).toString()) as Array<{
    key: string[];
    value: string[];
  }>;
  const hex = (a: string[]) => a.map((b) => b.replace(/^0x/, '').padStart(2, '0')).join('');
  return new Map(out.map((e) => [hex(e.key), hex(e.value)]));
}

test('kernel backend: CTMaps flow, bpftool byte-exact, restart keeps entries', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  const sock = tempDir(t);
  const flags = ['--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '32768'];

  let d = await startTestDaemon(sock.dir, flags);
  t.after(() => d.stop());
  let client = ctClient(d.address);
  const records = await runCtFlow(client, 'kernel');

  // bpftool sees exactly the bytes of facts §2-3 in the pinned TCP4 map.
  const pin = path.join(bpf.root, 'tc/globals/cilium_ct4_global');
  const dump = bpftoolDump(pin);
  const tcp4 = records.filter((r) => r.map.family === 'FAMILY_IPV4' && r.map.kind === 'MAP_KIND_TCP');
  assert.equal(dump.size, tcp4.length);
  for (const r of tcp4) {
    const want = factsBytes(r);
    assert.equal(dump.get(want.key), want.value, `bpftool value for ${r.key.daddr}:${r.key.sport}`);
  }
  const show = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', pin]).toString());
  assert.equal(show.type, 'lru_hash');
  assert.equal(show.bytes_key, 14);
  assert.equal(show.bytes_value, 56);
  assert.equal(show.max_entries, 65536);

  // Restart with the same configuration: every entry is still there, byte for byte.
  client.close();
  await d.stop();
  d = await startTestDaemon(sock.dir, flags);
  client = ctClient(d.address);
  assert.ok(d.logs.find(/reusing pinned map/), 'restart reused the pinned maps');
  assert.deepEqual(bpftoolDump(pin), dump);
  const counts = await call(client, 'Count', { maps: [] });
  assert.deepEqual(counts.counts.map((c: any) => c.entries), ['250', '250', '250', '250']);

  await runDeleteAndFlush(client, records);
  client.close();
  await d.stop();

  // A size change is logged with what differs, and the map migrated (issue 6).
  d = await startTestDaemon(sock.dir, [...flags.slice(0, -4), '--bpf-ct-global-tcp-max', '131072', '--bpf-ct-global-any-max', '32768']);
  const warn = d.logs.find(/attributes differ from the configuration: migrating/);
  assert.ok(warn, 'mismatch warning logged');
  assert.deepEqual(warn!.mismatches, ['max_entries 65536 -> 131072']);
  assert.deepEqual(
    d.daemon.migrations.map((m) => [m.name, m.outcome]),
    [['cilium_ct4_global', 'migrated'], ['cilium_ct6_global', 'migrated'], ['cilium_snat_v4_external', 'migrated'], ['cilium_snat_v6_external', 'migrated']],
  );
  assert.equal(JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', pin]).toString()).max_entries, 131072);
  await d.stop();
});
