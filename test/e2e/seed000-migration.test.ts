/**
 * Issue 6, item 5: seed 000's scenario end to end. Cilium, on a changed
 * --bpf-ct-global-tcp-max, removes the CT map and recreates it ("expect map data loss"):
 * live connections lose their entries and counters. Here: the datapath attached in a
 * namespace pair, a live TCP connection, ctmapd restarted with another TCP map size. The
 * map is migrated, the attached datapath is moved onto the new map (reattached in its
 * namespace by the daemon), the connection keeps working throughout, and its CT entry
 * keeps counting from where it was: its packets and bytes equal what crossed A's link on
 * the connection, before, while ctmapd was down, and after.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import { services } from '../../src/api/proto';
import { cleanupScope, ctmapOk, datapathE2eTier, startDaemonProcess } from '../helpers/datapath-e2e';
import { call, serviceClient, tempDir } from '../helpers/grpc';
import { privateBpfRoot } from '../helpers/kernel';
import { createVethPair, inNetns, waitQuiet } from '../helpers/netns';

const TRAFFIC = path.join(__dirname, '../helpers/netns-traffic.js');
const TCP_PORT = 7101;
const UDP_PORT = 7102;
const LARGE = 131072;

/**
 * Packets and bytes both ways on `dev` in namespace `ns` (/proc/net/dev): with the link
 * quiet, what the connection sent and received. Per skb, as the datapath counts: a
 * GSO super-packet of several TCP segments crosses the veth as one.
 */
function counters(ns: string, dev: string): { packets: number; bytes: number } {
  const line = inNetns(ns, 'cat', ['/proc/net/dev'])
    .split('\n')
    .find((l) => l.trim().startsWith(`${dev}:`))!;
  const f = line.split(':')[1].trim().split(/\s+/).map(Number);
  return { packets: f[1] + f[9], bytes: f[0] + f[8] };
}

/** Lines of a child's stdout, one at a time. */
function lineReader(child: ChildProcess): () => Promise<string> {
  const lines: string[] = [];
  const waiters: Array<(l: string) => void> = [];
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const l = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const w = waiters.shift();
      if (w) w(l);
      else lines.push(l);
    }
  });
  return () =>
    new Promise((resolve, reject) => {
      const l = lines.shift();
      if (l !== undefined) return resolve(l);
      const timer = setTimeout(() => reject(new Error('no line from the traffic process within 10 s')), 10_000);
      waiters.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
}

test('seed 000: a live TCP connection across a TCP map resize and a restart keeps its CT entry and counters', { timeout: 90_000 }, async (t) => {
  if (!datapathE2eTier(t, ['ip', 'tc', 'nsenter', 'bpftool'])) return;
  const scope = cleanupScope(t);
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const socket = path.join(tmp.dir, 'ctmapd.sock');
  const flags = ['--conntrack-gc-interval', '3600', '--enable-ipv6=false'];
  let daemon = await startDaemonProcess(scope, bpf.root, socket, flags);
  const { a, b } = await createVethPair(scope);
  const attached = ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root, '--json']);
  const firstProgs = attached.hooks.map((h: any) => h.progId).sort();

  const procs: ChildProcess[] = [];
  scope.after(() => procs.forEach((p) => p.kill('SIGKILL')));
  const server = spawn('ip', ['netns', 'exec', b.ns, process.execPath, TRAFFIC, JSON.stringify({ mode: 'serve', addresses: [b.ipv4], tcpPort: TCP_PORT, udpPort: UDP_PORT })], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  procs.push(server);
  assert.equal(await lineReader(server)(), 'ready');

  await waitQuiet(a.ns, a.dev);
  const start = counters(a.ns, a.dev);
  const client = spawn('ip', ['netns', 'exec', a.ns, process.execPath, TRAFFIC, JSON.stringify({ mode: 'hold', host: b.ipv4, port: TCP_PORT })], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  procs.push(client);
  const nextLine = lineReader(client);
  const { localPort } = JSON.parse(await nextLine());
  const send = async (n: number): Promise<void> => {
    client.stdin!.write(`send ${n}\n`);
    assert.equal(await nextLine(), `echoed ${n}`, 'the connection works');
  };
  const key = { daddr: a.ipv4, saddr: b.ipv4, sport: localPort, dport: TCP_PORT, nexthdr: 6, flags: 0 };
  const map = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
  /** The entry against what namespace A counted since before the connection. */
  const expectEntry = async (address: string, what: string): Promise<{ packets: number; bytes: number }> => {
    await waitQuiet(a.ns, a.dev);
    const now = counters(a.ns, a.dev);
    const ct = serviceClient(services().CTMaps.service, 'CTMaps', address);
    try {
      const rec = await call<any>(ct, 'Lookup', { map, key });
      const got = { packets: Number(rec.entry.packets), bytes: Number(rec.entry.bytes) };
      assert.deepEqual(got, { packets: now.packets - start.packets, bytes: now.bytes - start.bytes }, `${what}: entry counters = the link's packets and bytes of the connection`);
      return got;
    } finally {
      ct.close();
    }
  };

  await send(1000);
  await send(3000);
  const before = await expectEntry(daemon.address, 'before the restart');
  assert.ok(before.packets >= 6, 'handshake and two exchanges');

  // Restart with a larger TCP map; the connection keeps talking while ctmapd is down
  // (the datapath keeps writing the old map, which stays pinned).
  assert.equal(await daemon.stop(), 0, 'the first daemon stops cleanly');
  await send(2000);
  daemon = await startDaemonProcess(scope, bpf.root, socket, [...flags, '--bpf-ct-global-tcp-max', String(LARGE)]);

  // The map was migrated (not recreated): the new size, and ActiveMaps reports it.
  const show = JSON.parse(spawnSync('bpftool', ['-j', 'map', 'show', 'pinned', path.join(bpf.root, 'tc/globals/cilium_ct4_global')], { encoding: 'utf8' }).stdout);
  assert.equal(show.max_entries, LARGE);
  const ct = serviceClient(services().CTMaps.service, 'CTMaps', daemon.address);
  scope.after(() => ct.close());
  const active = await call<any>(ct, 'ActiveMaps', {});
  const migration = active.migrations.find((m: any) => m.name === 'cilium_ct4_global');
  assert.ok(migration, `a migration of cilium_ct4_global in ${JSON.stringify(active.migrations)}`);
  assert.equal(Number(migration.entries_dropped), 0);
  assert.ok(Number(migration.entries_copied) >= 1);

  // The datapath was moved onto the new map: new programs at the same spot, using its id.
  const status = ctmapOk(['datapath', 'status', '--netns', a.ns, '--bpf-root', bpf.root, '--json']);
  assert.equal(status.length, 1);
  const progs = status[0].hooks.map((h: any) => h.progId).sort();
  assert.notDeepEqual(progs, firstProgs, 'the programs were reloaded');
  for (const h of status[0].hooks) {
    assert.equal(h.state, 'ours');
    const prog = JSON.parse(spawnSync('bpftool', ['-j', 'prog', 'show', 'id', String(h.progId)], { encoding: 'utf8' }).stdout);
    assert.ok(prog.map_ids.includes(show.id), `${h.direction} program uses the new cilium_ct4_global (id ${show.id}): ${prog.map_ids}`);
  }
  assert.match(daemon.log(), /datapath reattached over the migrated maps/);

  // The entry kept everything it counted, including the exchange while ctmapd was down,
  // and goes on counting in the new map.
  const after = await expectEntry(daemon.address, 'after the migration');
  assert.ok(after.packets > before.packets);
  await send(5000);
  await expectEntry(daemon.address, 'traffic after the migration');

  client.stdin!.write('close\n');
  assert.equal(await nextLine(), 'closed');
  await waitQuiet(a.ns, a.dev);
  const closed = await call<any>(ct, 'Lookup', { map, key });
  assert.deepEqual(closed.entry.flag_names ?? flagNamesOf(Number(closed.entry.flags)), ['RxClosing', 'TxClosing', 'SeenNonSyn']);
  await expectEntry(daemon.address, 'after FIN both ways');
  ctmapOk(['datapath', 'detach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root]);
  assert.equal(await daemon.stop(), 0, 'the second daemon stops cleanly');
});

function flagNamesOf(flags: number): string[] {
  return ['RxClosing', 'TxClosing', 'Nat64', 'LBLoopback', 'SeenNonSyn'].filter((_, bit) => flags & (1 << bit));
}
