/**
 * Issue 12 item 6, the pruning rule without privileges: records live in directories named
 * after a network namespace's inode; the record of a namespace that does not exist is
 * removed with everything in it (on bpffs: its pins unpinned), records of namespaces that
 * exist are kept, and empty parents go up to <bpf-root>/ctmapd. Here on a plain temp
 * directory (the rule is file operations only; e2e/datapath-prune.test.ts runs it on bpffs
 * with real programs).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { datapathRecordsDir, findNetns, pruneVanishedNamespaces, recordedNamespaces, seesEveryProcess } from '../../src/datapath/records';
import { tempDir } from '../helpers/grpc';

/** An inode no namespace has: nsfs inodes are large (0xf0000000 and up). */
const NO_SUCH_NETNS = 12345;

function record(root: string, netns: number, ifindex: number, names: readonly string[]): string {
  const dir = path.join(datapathRecordsDir(root), `net${netns}`, `if${ifindex}`);
  fs.mkdirSync(dir, { recursive: true });
  for (const n of names) {
    if (n === 'clsact') fs.mkdirSync(path.join(dir, n));
    else fs.writeFileSync(path.join(dir, n), '');
  }
  return dir;
}

test('findNetns: this process\'s namespace is found, a made-up inode is not', () => {
  const own = fs.statSync('/proc/self/ns/net').ino;
  assert.equal(findNetns(own), '/proc/self/ns/net');
  assert.equal(findNetns(NO_SUCH_NETNS), undefined);
});

test('pruneVanishedNamespaces: removes the records of namespaces that are gone, keeps the rest (issue 12 item 6)', (t) => {
  const root = tempDir(t).dir;
  const own = fs.statSync('/proc/self/ns/net').ino;
  const live = record(root, own, 3, ['ingress_h1_p49152', 'egress_h1_p49152']);
  record(root, NO_SUCH_NETNS, 7, ['ingress_h1_p49152', 'egress_h1_p49152', 'clsact']);
  record(root, NO_SUCH_NETNS, 8, ['egress_h2_p49151']);
  assert.deepEqual(recordedNamespaces(root), [NO_SUCH_NETNS, own].sort((a, b) => a - b));

  const r = pruneVanishedNamespaces(root);
  if (!seesEveryProcess()) {
    // Not in the initial pid namespace: a hidden namespace would look gone, so nothing goes.
    assert.ok('refused' in r && /initial pid namespace/.test(r.refused));
    assert.equal(recordedNamespaces(root).length, 2);
    return;
  }
  assert.deepEqual(r, {
    pruned: [
      { netns: NO_SUCH_NETNS, ifindex: 7, pins: ['egress_h1_p49152', 'ingress_h1_p49152'] },
      { netns: NO_SUCH_NETNS, ifindex: 8, pins: ['egress_h2_p49151'] },
    ],
  });
  assert.deepEqual(recordedNamespaces(root), [own]);
  assert.deepEqual(fs.readdirSync(live).sort(), ['egress_h1_p49152', 'ingress_h1_p49152']);
  assert.deepEqual(pruneVanishedNamespaces(root), { pruned: [] }, 'nothing more to prune');

  // The last record gone, the empty <bpf-root>/ctmapd goes too; the root stays.
  fs.rmSync(path.join(datapathRecordsDir(root), `net${own}`), { recursive: true });
  record(root, NO_SUCH_NETNS, 9, []);
  assert.deepEqual(pruneVanishedNamespaces(root), { pruned: [{ netns: NO_SUCH_NETNS, ifindex: 9, pins: [] }] });
  assert.deepEqual(fs.readdirSync(root), []);
  assert.deepEqual(pruneVanishedNamespaces(path.join(root, 'missing')), { pruned: [] });
});
