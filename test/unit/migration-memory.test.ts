/**
 * Issue 6's migration suites on the memory backend: its in-process pins survive a daemon
 * restart inside one process, and a migration there behaves as on the kernel (see
 * test/helpers/migration-suite.ts).
 */
import { test } from 'node:test';
import { memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { memoryOuterSlot } from '../helpers/memory';
import { MigrationBackendProbe, migrationSuite, recreateSuite } from '../helpers/migration-suite';

function memoryProbe(t: { after(fn: () => void): void }, name: string): MigrationBackendProbe {
  const root = `/memory-${name}-${process.pid}`;
  t.after(() => {
    for (const p of pinnedPaths()) if (p.startsWith(`${root}/`)) memoryBackend.unpin(p);
  });
  return {
    backend: memoryBackend,
    flags: ['--backend', 'memory', '--bpf-root', root],
    bpfRoot: root,
    show(pin) {
      const info = memoryBackend.pinnedInfo(pin);
      if (!info) throw new Error(`${pin} is not pinned`);
      return { maxEntries: info.maxEntries, flags: info.flags, id: info.id };
    },
    slot: memoryOuterSlot,
  };
}

test('memory: grow keeps 60 k entries byte-identical; shrink keeps the 32 Ki latest; flags and SNAT size migrate', async (t) => {
  await migrationSuite(t, memoryProbe(t, 'migration'));
});

test('memory: a map of another value size is refused; --allow-map-recreate replaces it and reports the loss', async (t) => {
  await recreateSuite(t, memoryProbe(t, 'recreate'));
});
