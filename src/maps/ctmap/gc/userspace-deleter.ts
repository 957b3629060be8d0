/**
 * ConditionalDeleter in process: lookup, check, delete per candidate. Exact for the memory
 * backend (nothing else writes its maps between two statements). For kernel maps it is
 * the fallback when the in-kernel deleter (bpf/ct_gc.bpf.c) cannot be loaded: the window
 * between the check and the delete shrinks to one syscall, but does not close.
 */
import { BpfMap } from '../../types';
import { CT_ENTRY_SIZE, entryLifetime } from '../codec';
import { ConditionalDeleter, DeleteMode, DeleteStatus } from './types';

export class UserspaceConditionalDeleter implements ConditionalDeleter {
  deleteIf(map: BpfMap, keys: Buffer, count: number, modes: Uint8Array, time: number, status: Uint8Array, values: Buffer): void {
    const ks = map.spec.keySize;
    for (let i = 0; i < count; i++) {
      const key = keys.subarray(i * ks, (i + 1) * ks);
      const value = values.subarray(i * CT_ENTRY_SIZE, (i + 1) * CT_ENTRY_SIZE);
      if (!map.lookup(key, value)) {
        status[i] = DeleteStatus.MISSING;
      } else if (modes[i] === DeleteMode.EXPIRED_BEFORE && entryLifetime(value, 0) >= time) {
        status[i] = DeleteStatus.REFRESHED;
      } else {
        status[i] = map.delete(key) ? DeleteStatus.DELETED : DeleteStatus.MISSING;
      }
    }
  }

  close(): void {}
}
