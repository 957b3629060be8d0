/**
 * Where `ctmap datapath attach` writes its ownership records (see src/datapath/attach.ts).
 * Kept apart from attach.ts so that the daemon can find them without loading libbpf.
 */
import * as path from 'node:path';

/** <bpf-root>/ctmapd/datapath: one net<inode>/if<ifindex>/ directory per attachment. */
export function datapathRecordsDir(bpfRoot: string): string {
  return path.join(bpfRoot, 'ctmapd', 'datapath');
}
