/**
 * The BpfMap contract against real kernel maps, each test pinning into its own private
 * bpffs directory (removed afterwards). Kernel tier: needs root or CAP_BPF; skipped with one
 * loud line elsewhere, and a failure when CTMAPD_REQUIRE_KERNEL=1 (see test/helpers/kernel.ts).
 */
import { test } from 'node:test';
import { bpfFdCount, kernelTier, kernelTierDecision, privateBpfRoot } from '../helpers/kernel';
import { runContract } from './bpfmap.contract';

type KernelModule = typeof import('../../src/maps/kernel');

if (kernelTierDecision().run) {
  // Required lazily: loading the kernel backend loads koffi and libbpf.so.1.
  const { kernelBackend } = require('../../src/maps/kernel') as KernelModule;
  runContract(
    'kernel',
    () => {
      const { root, cleanup } = privateBpfRoot();
      return { backend: kernelBackend, pinDir: root, cleanup, openHandles: bpfFdCount };
    },
  );
} else {
  test('kernel backend: BpfMap contract', (t) => {
    kernelTier(t);
  });
}
