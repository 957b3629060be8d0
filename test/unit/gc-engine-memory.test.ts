import { memoryBackend } from '../../src/maps/memory';
import { UserspaceConditionalDeleter } from '../../src/maps/ctmap/gc/userspace-deleter';
import { gcEngineSuite } from '../helpers/gc-suite';

let n = 0;
gcEngineSuite('memory backend', () => {
  const root = `/memory-gc-${process.pid}-${n++}`;
  return {
    backend: memoryBackend,
    bpfRoot: root,
    deleter: () => new UserspaceConditionalDeleter(),
    cleanup: () => {
      for (const name of ['cilium_ct4_global', 'cilium_ct_any4_global', 'cilium_ct6_global', 'cilium_ct_any6_global']) memoryBackend.unpin(`${root}/tc/globals/${name}`);
    },
  };
});
