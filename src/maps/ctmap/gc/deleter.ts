/**
 * Chooses the GC re-check (ConditionalDeleter) for a backend: in the kernel
 * (./kernel-deleter.ts, bpf/ct_gc.bpf.c through BPF_PROG_TEST_RUN) for kernel maps, in
 * process (./userspace-deleter.ts) for the memory backend, and in process for kernel maps
 * too, with a warning, when the BPF object cannot be loaded. The kernel deleter is imported
 * only when it is chosen: it loads libbpf, which the memory backend must do without.
 */
import type { Logger } from 'pino';
import type { MapBackend } from '../../types';
import type { ConditionalDeleter } from './types';
import { UserspaceConditionalDeleter } from './userspace-deleter';

/** Never rejects: a kernel deleter that cannot load falls back to the in-process one. */
export async function conditionalDeleter(backend: MapBackend, log: Logger): Promise<ConditionalDeleter> {
  if (backend.name !== 'kernel') return new UserspaceConditionalDeleter();
  try {
    const { KernelConditionalDeleter } = await import('./kernel-deleter');
    const deleter = new KernelConditionalDeleter();
    log.info('gc: candidates are re-checked and deleted in the kernel (ct_gc BPF program)');
    return deleter;
  } catch (err) {
    log.warn({ err }, 'gc: in-kernel re-check unavailable; re-checking in process (a small race window remains)');
    return new UserspaceConditionalDeleter();
  }
}
