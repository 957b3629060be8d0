/**
 * Issue 12 item 6: the attachment record of a network namespace that was deleted leaks
 * kernel memory: the namespace takes its devices and filters with it, but the pinned
 * programs of the record keep every map they were loaded with (after a migration, the old
 * CT map with all its entries). `ctmap datapath prune` and every daemon start remove such
 * records and unpin their programs; bpftool then no longer lists the programs or the maps
 * only they held. Records of namespaces that still exist are kept.
 *
 * Namespaces are made by the test (documentation addresses only) and deleted at the end,
 * with the daemon and every pin, also on failure.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../helpers/grpc';
import { cleanupScope, ctmap, ctmapOk, datapathE2eTier, startDaemonProcess } from '../helpers/datapath-e2e';
import { privateBpfRoot } from '../helpers/kernel';
import { createVethPair, run } from '../helpers/netns';
import { waitUntil } from '../helpers/wait';

/** Whether bpftool finds the program or map with this id (`bpftool prog|map show id N`). */
function bpftoolHas(kind: 'prog' | 'map', id: number): boolean {
  return spawnSync('bpftool', [kind, 'show', 'id', String(id)], { encoding: 'utf8' }).status === 0;
}

function bpftoolJson(args: readonly string[]): any {
  return JSON.parse(run('bpftool', ['-j', ...args]));
}

/** Ids of the maps a loaded program uses. */
function progMaps(progId: number): number[] {
  return bpftoolJson(['prog', 'show', 'id', String(progId)]).map_ids ?? [];
}

/** Ids of the maps pinned in a directory. */
function pinnedMapIds(dir: string): Set<number> {
  return new Set(fs.readdirSync(dir).map((n) => bpftoolJson(['map', 'show', 'pinned', path.join(dir, n)]).id as number));
}

const pinNames = (hooks: ReadonlyArray<{ direction: string; handle: number; priority: number }>): string[] =>
  hooks.map((h) => `${h.direction}_h${h.handle}_p${h.priority}`).sort();

test('issue 12 item 6: ctmap datapath prune removes the record of a deleted namespace, and its programs and the maps only they held are freed', { timeout: 90_000 }, async (t) => {
  if (!datapathE2eTier(t, ['ip', 'tc', 'nsenter', 'bpftool'])) return;
  const scope = cleanupScope(t);
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const records = path.join(bpf.root, 'ctmapd/datapath');
  await startDaemonProcess(scope, bpf.root, path.join(tmp.dir, 'ctmapd.sock'), ['--conntrack-gc-interval', '3600']);
  const { a, b } = await createVethPair(scope);
  const gone = ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root, '--json']);
  const kept = ctmapOk(['datapath', 'attach', '--netns', b.ns, '--dev', 'lo', '--bpf-root', bpf.root, '--json']);
  scope.after(() => ctmap(['datapath', 'detach', '--netns', b.ns, '--dev', 'lo', '--bpf-root', bpf.root]));
  const progIds: number[] = gone.hooks.map((h: any) => h.progId);
  // The maps of the programs that nothing else holds: their .rodata and the like.
  const others = new Set([...pinnedMapIds(path.join(bpf.root, 'tc/globals')), ...kept.hooks.flatMap((h: any) => progMaps(h.progId))]);
  const ownMaps = [...new Set(progIds.flatMap(progMaps))].filter((id) => !others.has(id));
  assert.ok(ownMaps.length > 0, 'the programs hold maps of their own');

  run('ip', ['netns', 'del', a.ns]);
  const status = ctmapOk(['datapath', 'status', '--bpf-root', bpf.root, '--json']);
  assert.deepEqual(
    status.map((r: any) => [r.netns, r.netnsGone]).sort(),
    [
      [gone.netns, true],
      [kept.netns, false],
    ].sort(),
  );
  assert.match(ctmapOk(['datapath', 'status', '--bpf-root', bpf.root]), new RegExp(`netns inode ${gone.netns}, NAMESPACE GONE \\(ctmap datapath prune removes the record\\)`));

  const pruned = ctmapOk(['datapath', 'prune', '--bpf-root', bpf.root, '--json']);
  assert.deepEqual(pruned, [{ netns: gone.netns, ifindex: gone.ifindex, pins: pinNames(gone.hooks) }]);
  assert.ok(!fs.existsSync(path.join(records, `net${gone.netns}`)), 'the record is gone');
  assert.deepEqual(fs.readdirSync(path.join(records, `net${kept.netns}`, `if${kept.ifindex}`)).sort(), ['clsact', ...pinNames(kept.hooks)], 'the live namespace keeps its record');
  // Freed once the namespace's own teardown (which drops its filters) has run too.
  await waitUntil(
    () => progIds.every((id) => !bpftoolHas('prog', id)) && ownMaps.every((id) => !bpftoolHas('map', id)),
    `programs ${progIds.join(', ')} and maps ${ownMaps.join(', ')} to be freed`,
    20_000,
    100,
  );
  for (const h of kept.hooks) assert.ok(bpftoolHas('prog', h.progId), `program ${h.progId} of the live namespace stays`);
  assert.match(ctmapOk(['datapath', 'prune', '--bpf-root', bpf.root]), /^nothing to prune: every network namespace with a record under .* still exists/);
});

test('issue 12 item 6: a daemon start prunes the record of a deleted namespace, so the CT map a migration replaced is freed, not held by its programs', { timeout: 90_000 }, async (t) => {
  if (!datapathE2eTier(t, ['ip', 'tc', 'nsenter', 'bpftool'])) return;
  const scope = cleanupScope(t);
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const ct4 = path.join(bpf.root, 'tc/globals/cilium_ct4_global');
  const first = await startDaemonProcess(scope, bpf.root, path.join(tmp.dir, 'a.sock'), ['--conntrack-gc-interval', '3600']);
  const { a } = await createVethPair(scope);
  const att = ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root, '--json']);
  const oldMap: number = bpftoolJson(['map', 'show', 'pinned', ct4]).id;
  for (const h of att.hooks) assert.ok(progMaps(h.progId).includes(oldMap), `program ${h.progId} uses the CT map`);
  assert.equal(await first.stop(), 0);

  run('ip', ['netns', 'del', a.ns]);
  // A bigger TCP map: the start migrates cilium_ct4_global to a new map.
  const second = await startDaemonProcess(scope, bpf.root, path.join(tmp.dir, 'b.sock'), ['--conntrack-gc-interval', '3600', '--bpf-ct-global-tcp-max', '131072']);
  const now = bpftoolJson(['map', 'show', 'pinned', ct4]);
  assert.notEqual(now.id, oldMap, 'migrated to a new map');
  assert.equal(now.max_entries, 131072);
  await waitUntil(
    () => !bpftoolHas('map', oldMap) && att.hooks.every((h: any) => !bpftoolHas('prog', h.progId)),
    `the old CT map ${oldMap} and programs ${att.hooks.map((h: any) => h.progId).join(', ')} to be freed`,
    20_000,
    100,
  );
  const lines = second
    .log()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
  const prunedLine = lines.find((l) => /pruned the datapath record of a network namespace that is gone/.test(l.msg));
  assert.ok(prunedLine, second.log());
  assert.deepEqual([prunedLine.netns, prunedLine.ifindex, prunedLine.unpinned], [att.netns, att.ifindex, pinNames(att.hooks)]);
  assert.ok(!lines.some((l) => /network namespace is gone/.test(l.msg)), 'the reloader met no record of a vanished namespace');
  assert.ok(!fs.existsSync(path.join(bpf.root, 'ctmapd')), 'no record left');
  assert.equal(await second.stop(), 0);
});
