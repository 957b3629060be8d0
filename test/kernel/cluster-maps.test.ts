/**
 * Per-cluster CT maps on kernel maps (issue 4): pins in bpffs, and the outer maps' slots
 * read back with bpftool, independently of ctmapd's own code.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { clusterSuite } from '../helpers/cluster-suite';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';

function bpftoolJson(args: string[]): any {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }).toString());
}

test('kernel: per-cluster CT maps: create, outer slots, per-cluster entries and GC, leave, restart, cleanup', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  await clusterSuite(t, {
    flags: ['--backend', 'kernel', '--bpf-root', bpf.root],
    bpfRoot: bpf.root,
    pinned: (p) => fs.existsSync(p),
    slot(outerPin, id) {
      const key = [id & 0xff, (id >> 8) & 0xff, 0, 0].map(String);
      let out: { value: string[] };
      try {
        out = bpftoolJson(['map', 'lookup', 'pinned', outerPin, 'key', ...key]);
      } catch {
        return undefined; // bpftool exits non-zero for an empty slot
      }
      return Buffer.from(out.value.map((b) => parseInt(b, 16))).readUInt32LE(0);
    },
    mapId: (p) => bpftoolJson(['map', 'show', 'pinned', p]).id,
  });
});
