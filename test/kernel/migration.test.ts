/**
 * Issue 6 on kernel maps: a daemon restarted with a new map size or flags migrates every
 * map it owns (global CT, SNAT, per-cluster inner maps; outer maps rebuilt), checked with
 * bpftool independently of ctmapd's code; a map of another layout is refused, or recreated
 * with --allow-map-recreate. See test/helpers/migration-suite.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import pino from 'pino';
import { assertNoFdLeak, bpfFdCount, kernelTier, privateBpfRoot } from '../helpers/kernel';
import { waitUntil } from '../helpers/wait';
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
  const fds = bpfFdCount();
  await migrationSuite(t, kernelProbe(bpf.root));
  // A stopped daemon closes a map whose batch read (its initial GC pass) is still on a pool
  // thread when that read returns: wait for it, then every fd must be closed.
  await waitUntil(() => bpfFdCount() === fds, 'the daemons\' fds to close', 5_000).catch(() => undefined);
  assertNoFdLeak(fds, 'daemons that migrated');
});

test('kernel: a map of another value size is refused; --allow-map-recreate replaces it and reports the loss', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  const fds = bpfFdCount();
  await recreateSuite(t, kernelProbe(bpf.root));
  await waitUntil(() => bpfFdCount() === fds, 'the daemons\' fds to close', 5_000).catch(() => undefined);
  assertNoFdLeak(fds, 'refused and recreating daemons');
});

test('kernel: a migration failing before its swap is undone at once, closing every fd', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
  const { MapLifecycle } = require('../../src/maps/lifecycle') as typeof import('../../src/maps/lifecycle');
  const { ctEntryRank } = require('../../src/maps/ctmap/tables') as typeof import('../../src/maps/ctmap/tables');
  const { fillEntries, checkEntries } = require('../helpers/migration') as typeof import('../helpers/migration');
  const fds = bpfFdCount();
  const pin = `${bpf.root}/cilium_ct4_global`;
  const spec = (maxEntries: number) => ({ name: 'cilium_ct4_global', type: 9 as const, keySize: 14, valueSize: 56, maxEntries, flags: 0, pinPath: pin });
  const old = kernelBackend.create(spec(16384));
  fillEntries(old, 10_000);
  const id = old.info().id;
  old.close();
  const lc = new MapLifecycle({
    backend: kernelBackend,
    log: pino({ level: 'silent' }),
    hooks: {
      step: (s) => {
        if (s === 'copy-batch') throw new Error('disk on fire');
      },
    },
  });
  await assert.rejects(lc.open(spec(32768), { rank: ctEntryRank }), /disk on fire/);
  assert.equal(kernelBackend.pinnedInfo(pin)?.id, id, 'the old map is still live');
  assert.equal(kernelBackend.pinnedInfo(`${pin}_old`), undefined);
  assert.equal(kernelBackend.pinnedInfo(`${pin}_new`), undefined);
  const again = kernelBackend.open(spec(16384))!;
  assert.deepEqual(checkEntries(again, 10_000), { count: 10_000, foreign: 0, wrongValue: 0 });
  again.close();
  // The copy had the next batch read under way on a pool thread: the old map's fd closes
  // when that read returns.
  await waitUntil(() => bpfFdCount() === fds, 'the read under way to return', 5_000).catch(() => undefined);
  assertNoFdLeak(fds, 'failed migration');
});
