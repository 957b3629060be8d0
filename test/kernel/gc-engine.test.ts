/**
 * The GC engine on real kernel maps: with the in-process re-check (fallback) here; the
 * in-kernel deleter has its own suite run in test/kernel/gc-engine-bpf.test.ts.
 */
import { UserspaceConditionalDeleter } from '../../src/maps/ctmap/gc/userspace-deleter';
import { gcEngineSuite } from '../helpers/gc-suite';
import { kernelTierDecision, privateBpfRoot } from '../helpers/kernel';
import { test } from 'node:test';

if (kernelTierDecision().run) {
  gcEngineSuite('kernel backend, userspace re-check', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
    const { root, cleanup } = privateBpfRoot();
    return { backend: kernelBackend, bpfRoot: root, deleter: () => new UserspaceConditionalDeleter(), cleanup };
  });
} else {
  test('kernel backend: GC engine', (t) => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    (require('../helpers/kernel') as typeof import('../helpers/kernel')).kernelTier(t);
  });
}
