/**
 * Probes of the memory backend's pinned maps for the suites that run on both backends
 * (what bpftool reads on the kernel side).
 */
import { memoryBackend } from '../../src/maps/memory';
import { MapType } from '../../src/maps/types';

/** The value of slot `id` of the ARRAY_OF_MAPS pinned at `outerPin` (a map id), or undefined when empty. */
export function memoryOuterSlot(outerPin: string, id: number): number | undefined {
  const outer = memoryBackend.open({ name: 'probe', type: MapType.ARRAY_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, pinPath: outerPin });
  if (!outer) throw new Error(`${outerPin} is not pinned`);
  try {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(id, 0);
    return outer.lookup(key)?.readUInt32LE(0);
  } finally {
    outer.close();
  }
}
