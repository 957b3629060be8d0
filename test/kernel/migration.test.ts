/**
 * Issue 6 on kernel maps: a daemon restarted with a new map size or flags migrates every
 * map it owns (global CT, SNAT, per-cluster inner maps; outer maps rebuilt), checked with
 * bpftool independently of ctmapd's code; a map of another layout is refused, or recreated
 * with --allow-map-recreate. See test/helpers/migration-suite.ts.
 */
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { MigrationBackendProbe, migrationSuite, recreateSuite } from '../helpers/migration-suite';

function bpftoolJson(args: string[]): any {
  return JSON.parse(execFileSync('bpftool', ['-j', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }).toString());
}

function kernelProbe(root: string): MigrationBackendProbe {
  const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
  return {
    backend: kernelBackend,
    flags: ['--backend', 'kernel', '--bpf-root', root],
    bpfRoot: root,
    show(pin) {
      const s = bpftoolJson(['map', 'show', 'pinned', pin]);
      return { maxEntries: s.max_entries, flags: s.flags, id: s.id };
    },
    slot(outerPin, id) {
      const key = [id & 0xff, (id >> 8) & 0xff, 0, 0].map(String);
      try {
        const out = bpftoolJson(['map', 'lookup', 'pinned', outerPin, 'key', ...key]);
        return Buffer.from((out.value as string[]).map((b) => parseInt(b, 16))).readUInt32LE(0);
      } catch {
        return undefined; // bpftool exits non-zero for an empty slot
      }
    },
  };
}

test('kernel: grow 64 Ki -> 128 Ki keeps 60 k entries byte-identical; shrink to 32 Ki keeps the 32 Ki latest; flags and SNAT size migrate', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  await migrationSuite(t, kernelProbe(bpf.root));
});

test('kernel: a map of another value size is refused; --allow-map-recreate replaces it and reports the loss', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  await recreateSuite(t, kernelProbe(bpf.root));
});
