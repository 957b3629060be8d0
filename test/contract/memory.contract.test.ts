/**
 * The BpfMap contract against the memory backend. Pins live in the backend's process-wide
 * registry, so every test gets its own fake directory and unpins everything under it after.
 */
import { randomBytes } from 'node:crypto';
import { memoryBackend, pinnedPaths } from '../../src/maps/memory';
import { runContract } from './bpfmap.contract';

runContract('memory', () => {
  const pinDir = `/memory-test/${randomBytes(6).toString('hex')}`;
  return {
    backend: memoryBackend,
    pinDir,
    cleanup(): void {
      for (const p of pinnedPaths()) if (p.startsWith(`${pinDir}/`)) memoryBackend.unpin(p);
    },
  };
});
