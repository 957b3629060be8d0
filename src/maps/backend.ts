/**
 * Chooses the map backend. The kernel backend is the product; the memory backend is the
 * fallback only where bpf() is not permitted (`--backend=auto`), and the log says which
 * one runs and why. The kernel module is loaded lazily: importing it loads libbpf.so.1,
 * which a machine without libbpf does not have.
 */
import type { Logger } from 'pino';
import { CtmapError } from '../errors';
import type { BackendChoice } from '../config/config';
import type { MapBackend } from './types';

function loadKernel(): { backend: MapBackend } | { reason: string } {
  try {
    const kernel = require('./kernel') as typeof import('./kernel');
    const probe = kernel.probeKernel();
    return probe.ok ? { backend: kernel.kernelBackend } : { reason: `bpf() not permitted: ${probe.reason}` };
  } catch (err) {
    return { reason: `libbpf could not be loaded: ${err instanceof Error ? err.message : String(err)}` };
  }
}

function memory(): MapBackend {
  return (require('./memory') as typeof import('./memory')).memoryBackend;
}

/** Throws failed-precondition when `kernel` is asked for and bpf() is not usable. */
export function selectBackend(choice: BackendChoice, log: Logger): MapBackend {
  if (choice === 'memory') {
    log.info({ backend: 'memory' }, 'map backend: memory (embedded maps, as asked by --backend=memory)');
    return memory();
  }
  const kernel = loadKernel();
  if ('backend' in kernel) {
    log.info({ backend: 'kernel' }, 'map backend: kernel (real BPF maps pinned in bpffs)');
    return kernel.backend;
  }
  if (choice === 'kernel') throw new CtmapError('failed-precondition', `--backend=kernel: ${kernel.reason}`);
  log.warn({ backend: 'memory', reason: kernel.reason }, 'map backend: memory, because the kernel backend is not usable here');
  return memory();
}
