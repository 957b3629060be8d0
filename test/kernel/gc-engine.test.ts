/**
 * The GC engine on real kernel maps, with both re-checks: in process (the fallback) and in
 * the kernel (bpf/ct_gc.bpf.c through BPF_PROG_TEST_RUN, what the daemon uses).
 */
import { UserspaceConditionalDeleter } from '../../src/maps/ctmap/gc/userspace-deleter';
import { gcEngineSuite } from '../helpers/gc-suite';
import { kernelTierDecision, privateBpfRoot } from '../helpers/kernel';
import { test } from 'node:test';

if (kernelTierDecision().run) {
  gcEngineSuite('kernel backend, userspace re-check', () => {
    const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
    const { root, cleanup } = privateBpfRoot();
    return { backend: kernelBackend, bpfRoot: root, deleter: () => new UserspaceConditionalDeleter(), cleanup };
  });
  gcEngineSuite('kernel backend, in-kernel re-check (ct_gc BPF program)', () => {
    const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
    const { KernelConditionalDeleter } = require('../../src/maps/ctmap/gc/kernel-deleter') as typeof import('../../src/maps/ctmap/gc/kernel-deleter');
    const { root, cleanup } = privateBpfRoot();
    return { backend: kernelBackend, bpfRoot: root, deleter: () => new KernelConditionalDeleter(), cleanup };
  });
} else {
  test('kernel backend: GC engine', (t) => {
    (require('../helpers/kernel') as typeof import('../helpers/kernel')).kernelTier(t);
  });
}
