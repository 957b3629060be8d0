/**
 * Issue 5, item 2: `ctmap datapath attach / detach / status` and the ownership rule, on a
 * veth device in a namespace of its own, with bin/ctmapd running on a private bpf-root.
 * No traffic here (datapath-netns.test.ts has it): what is checked is which tc objects
 * exist before and after, read with `tc` itself inside the namespace.
 *
 * - a clsact qdisc and filters that were there first survive attach + detach (the
 *   kernel picks a priority that collides with none of them);
 * - attaching again replaces ctmap's own filters in place (same handle and priority, new
 *   program), leaving one pin per hook;
 * - a filter someone else put at ctmap's spot is left alone; one that disappeared is
 *   reported as gone; a record whose filters all vanished is dropped by the next attach;
 * - the qdisc goes only when attach created it and nothing else is attached;
 * - errors name the flag (exit 2) or the missing daemon (exit 1) and leave nothing behind;
 * - the record of a device that vanished is shown as such and pruned by the next attach;
 * - every command closes every bpf fd and object it opened (CTMAP_CHECK_LEAKS=1).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { call, serviceClient, tempDir } from '../helpers/grpc';
import { cleanupScope, ctmap, ctmapOk, datapathE2eTier, startDaemonProcess } from '../helpers/datapath-e2e';
import { privateBpfRoot } from '../helpers/kernel';
import { createVethPair, inNetns } from '../helpers/netns';
import { services } from '../../src/api/proto';

test('ctmap datapath attach/detach: own filters only, in place on re-attach, foreign filters and qdiscs survive', { timeout: 60_000 }, async (t) => {
  if (!datapathE2eTier(t, ['ip', 'tc', 'nsenter'])) return;
  const scope = cleanupScope(t);
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const socket = path.join(tmp.dir, 'ctmapd.sock');
  const daemon = await startDaemonProcess(scope, bpf.root, socket, ['--conntrack-gc-interval', '3600']);
  const { a } = await createVethPair(scope);
  const dev = a.dev;
  const base = ['--netns', a.ns, '--dev', dev, '--bpf-root', bpf.root];
  const attach = (...extra: string[]) => ctmapOk(['datapath', 'attach', ...base, '--json', ...extra]);
  const detach = () => ctmapOk(['datapath', 'detach', ...base, '--json']);
  const tc = (...args: string[]) => inNetns(a.ns, 'tc', args);
  const show = (dir: 'ingress' | 'egress') => tc('filter', 'show', 'dev', dev, dir);
  const hasClsact = () => /qdisc clsact/.test(tc('qdisc', 'show', 'dev', dev));
  const recordDir = () => {
    const ns = fs.readdirSync(path.join(bpf.root, 'ctmapd/datapath'));
    assert.equal(ns.length, 1);
    const ifs = fs.readdirSync(path.join(bpf.root, 'ctmapd/datapath', ns[0]));
    assert.equal(ifs.length, 1);
    return path.join(bpf.root, 'ctmapd/datapath', ns[0], ifs[0]);
  };
  const bpfLine = (dir: 'ingress' | 'egress', h: { handle: number; priority: number; progId: number }) =>
    new RegExp(`pref ${h.priority} bpf chain 0 handle 0x${h.handle.toString(16)} ct_${dir}:\\[${h.progId}\\] direct-action`);
  const foreign = ['protocol', 'ip', 'u32', 'match', 'ip', 'dst', '198.51.100.99/32'];

  // --- 1. a qdisc and a filter that were there first ---
  tc('qdisc', 'add', 'dev', dev, 'clsact');
  tc('filter', 'add', 'dev', dev, 'ingress', 'prio', '100', ...foreign);
  const first = attach();
  assert.equal(first.createdQdisc, false);
  assert.equal(first.ownsQdisc, false);
  const [in1, eg1] = first.hooks;
  assert.deepEqual([in1.direction, eg1.direction], ['ingress', 'egress']);
  // The kernel's choice: 49152, behind the explicit priority 100 (filters run in order).
  assert.equal(in1.priority, 49152);
  assert.equal(eg1.priority, 49152);
  assert.match(show('ingress'), bpfLine('ingress', in1));
  assert.match(show('ingress'), /pref 100 u32/);
  assert.match(show('egress'), bpfLine('egress', eg1));
  assert.deepEqual(fs.readdirSync(recordDir()).sort(), [`egress_h${eg1.handle}_p${eg1.priority}`, `ingress_h${in1.handle}_p${in1.priority}`]);

  // --- 2. attach again: replaced in place ---
  const second = attach();
  for (const [now, before] of [
    [second.hooks[0], in1],
    [second.hooks[1], eg1],
  ]) {
    assert.equal(now.replaced, true);
    assert.equal(now.handle, before.handle);
    assert.equal(now.priority, before.priority);
    assert.notEqual(now.progId, before.progId, 'a newly loaded program');
    assert.match(show(now.direction), bpfLine(now.direction, now));
  }
  assert.equal((show('ingress').match(/ bpf /g) ?? []).length, 2, 'still one bpf filter on ingress (the pref line and the filter line)');
  assert.equal(fs.readdirSync(recordDir()).length, 2, 'one pin per hook, no leftovers');

  // --- status, inside the namespace and from outside ---
  const inside = ctmapOk(['datapath', 'status', '--netns', a.ns, '--bpf-root', bpf.root, '--json']);
  assert.equal(inside.length, 1);
  assert.equal(inside[0].dev, dev);
  assert.equal(inside[0].here, true);
  assert.deepEqual(inside[0].hooks.map((h: any) => h.state), ['ours', 'ours']);
  const outside = ctmapOk(['datapath', 'status', '--bpf-root', bpf.root, '--json']);
  assert.equal(outside[0].netnsName, a.ns);
  assert.equal(outside[0].here, false);
  assert.match(ctmapOk(['datapath', 'status', '--netns', a.ns, '--bpf-root', bpf.root]), new RegExp(`^${dev} \\(ifindex \\d+, this netns\\)\\n  egress  handle 0x1 pref 49152 prog id ${second.hooks[1].progId}: attached`));

  // --- 3. someone else's program at ctmap's egress spot: not touched by detach ---
  const eg2 = second.hooks[1];
  tc('filter', 'replace', 'dev', dev, 'egress', 'protocol', 'all', 'pref', String(eg2.priority), 'handle', `0x${eg2.handle.toString(16)}`, 'bpf', 'bytecode', '1,6 0 0 4294967295,');
  const d1 = detach();
  assert.deepEqual(
    d1.hooks.map((h: any) => [h.direction, h.outcome]).sort(),
    [
      ['egress', 'foreign'],
      ['ingress', 'removed'],
    ],
  );
  assert.equal(d1.qdisc, 'not-ours');
  assert.doesNotMatch(show('ingress'), /ct_ingress/);
  assert.match(show('ingress'), /pref 100 u32/, 'the foreign ingress filter survived');
  assert.match(show('egress'), new RegExp(`pref ${eg2.priority} bpf chain 0 handle 0x1 .*bytecode`), 'the foreign egress filter survived');
  assert.ok(hasClsact(), 'the qdisc ctmap did not create stays');
  assert.ok(!fs.existsSync(path.join(bpf.root, 'ctmapd')), 'record removed');
  assert.match(ctmapOk(['datapath', 'detach', ...base]), /^nothing to detach: ctmap has no datapath attached to vethA \(ifindex \d+, netns ctm-/);

  // --- 4. a device with nothing on it: attach creates the qdisc, detach removes it ---
  tc('qdisc', 'del', 'dev', dev, 'clsact');
  const fresh = attach();
  assert.equal(fresh.createdQdisc, true);
  assert.ok(fs.existsSync(path.join(recordDir(), 'clsact')), 'the claim is recorded');
  // Someone deletes ctmap's ingress filter by hand: detach reports it gone, removes the rest.
  tc('filter', 'del', 'dev', dev, 'ingress', 'pref', String(fresh.hooks[0].priority), 'handle', '0x1', 'bpf');
  const d2 = detach();
  assert.deepEqual(
    d2.hooks.map((h: any) => [h.direction, h.outcome]).sort(),
    [
      ['egress', 'removed'],
      ['ingress', 'gone'],
    ],
  );
  assert.equal(d2.qdisc, 'removed');
  assert.ok(!hasClsact(), 'the qdisc ctmap created is gone');

  // --- 5. the qdisc removed behind ctmap's back: the stale record is dropped on re-attach ---
  attach();
  tc('qdisc', 'del', 'dev', dev, 'clsact');
  const again = attach();
  assert.equal(again.droppedStaleRecord, true);
  assert.equal(again.createdQdisc, true);
  assert.deepEqual(again.hooks.map((h: any) => h.replaced), [false, false]);
  // A filter added later keeps the qdisc ctmap created alive.
  tc('filter', 'add', 'dev', dev, 'egress', 'prio', '200', ...foreign);
  const d3 = detach();
  assert.equal(d3.qdisc, 'kept');
  assert.equal(d3.otherFilters, 1);
  assert.match(show('egress'), /pref 200 u32/);
  assert.doesNotMatch(show('egress') + show('ingress'), /ct_(in|e)gress/);
  tc('qdisc', 'del', 'dev', dev, 'clsact');

  // --- 6. --cluster-id goes into the settings ---
  const clusters = serviceClient(services().ClusterCTMaps.service, 'ClusterCTMaps', daemon.address);
  scope.after(() => clusters.close());
  await call(clusters, 'CreateClusterCTMaps', { cluster_id: 7 });
  const c7 = attach('--cluster-id', '7');
  assert.equal(c7.settings.clusterId, 7);
  assert.match(ctmapOk(['datapath', 'attach', ...base, '--cluster-id', '7']), /tracking into the CT maps of cluster 7/);
  // reattach (what a map migration runs) keeps the spot and the cluster id, with new programs.
  const before = ctmapOk(['datapath', 'status', ...base.filter((a, i) => i < 2 || (i >= 4 && i < 6)), '--json']);
  const re = ctmapOk(['datapath', 'reattach', '--netns', a.ns, '--bpf-root', bpf.root, '--json']);
  assert.equal(re.length, 1);
  assert.equal(re[0].settings.clusterId, 7, 'the cluster id survives a reattach');
  assert.deepEqual(
    re[0].hooks.map((h: any) => [h.direction, h.handle, h.priority, h.replaced]).sort(),
    before[0].hooks.map((h: any) => [h.direction, h.handle, h.priority, true]).sort(),
    'same handle and priority, replaced in place',
  );
  for (const h of re[0].hooks) {
    assert.notEqual(h.progId, before[0].hooks.find((b: any) => b.direction === h.direction).progId, 'a new program');
    assert.match(show(h.direction), bpfLine(h.direction, h));
  }
  assert.match(ctmapOk(['datapath', 'reattach', '--netns', a.ns, '--bpf-root', bpf.root]), /tracking into the CT maps of cluster 7/);
  detach();
  assert.match(ctmapOk(['datapath', 'reattach', '--netns', a.ns, '--bpf-root', bpf.root]), /^nothing to reattach/);

  // --- 7. errors: exit 2 naming the flag, exit 1 without the daemon's maps; nothing left behind ---
  const noDev = ctmap(['datapath', 'attach', '--netns', a.ns, '--dev', 'nosuch0', '--bpf-root', bpf.root]);
  assert.equal(noDev.status, 2);
  assert.match(noDev.stderr, new RegExp(`^ctmap: --dev: no network device "nosuch0" in network namespace ${a.ns}`));
  const noNs = ctmap(['datapath', 'attach', '--netns', `${a.ns}-nosuch`, '--dev', dev, '--bpf-root', bpf.root]);
  assert.equal(noNs.status, 2);
  assert.match(noNs.stderr, /^ctmap: --netns: no network namespace/);
  const badId = ctmap(['datapath', 'attach', ...base, '--cluster-id', '512']);
  assert.equal(badId.status, 2);
  assert.match(badId.stderr, /--cluster-id/);
  const empty = privateBpfRoot(scope);
  const noDaemon = ctmap(['datapath', 'attach', '--netns', a.ns, '--dev', dev, '--bpf-root', empty.root]);
  assert.equal(noDaemon.status, 1);
  assert.doesNotMatch(noDaemon.stderr, /leak/);
  assert.match(noDaemon.stderr, new RegExp(`${empty.root}/tc/globals/\\w+ is not pinned: start ctmapd with --bpf-root=${empty.root} first`));
  assert.deepEqual(fs.readdirSync(empty.root), [], 'no record for a failed attach');
  assert.ok(!hasClsact(), 'no qdisc for a failed attach');
  assert.equal(show('ingress').trim() + show('egress').trim(), '');
  assert.ok(!fs.existsSync(path.join(bpf.root, 'ctmapd')));

  // --- 8. the device vanishes: status says so, the next attach in the namespace prunes it ---
  const last = attach();
  inNetns(a.ns, 'ip', ['link', 'del', dev]);
  const status = ctmapOk(['datapath', 'status', '--netns', a.ns, '--bpf-root', bpf.root, '--json']);
  assert.equal(status.length, 1);
  assert.equal(status[0].ifindex, last.ifindex);
  assert.equal(status[0].dev, undefined);
  assert.deepEqual(status[0].hooks.map((h: any) => h.state), ['gone', 'gone']);
  assert.match(ctmapOk(['datapath', 'status', '--netns', a.ns, '--bpf-root', bpf.root]), /DEVICE GONE/);
  const lo = ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', 'lo', '--bpf-root', bpf.root, '--json']);
  assert.deepEqual(lo.prunedDevices, [last.ifindex]);
  assert.equal(ctmapOk(['datapath', 'detach', '--netns', a.ns, '--dev', 'lo', '--bpf-root', bpf.root, '--json']).qdisc, 'removed');
  assert.ok(!fs.existsSync(path.join(bpf.root, 'ctmapd')), 'nothing left under <bpf-root>/ctmapd');
});
