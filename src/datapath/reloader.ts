/**
 * The daemon's DatapathReloader (src/maps/lifecycle.ts): after a migration swapped the
 * pins, every datapath ctmap attached (`ctmap datapath attach`, recorded under
 * <bpf-root>/ctmapd/datapath) is loaded again over the maps now pinned and replaces its
 * own tc filters in place, so no program keeps writing the old maps once the delta copy
 * runs (issue 6: "keep the old map open until datapath programs reference the new one").
 * Cilium instead drops the map and its entries (seed 000).
 *
 * Attachments live in other network namespaces, and a process can only talk tc to its own,
 * so each namespace gets `ctmap datapath reattach` run inside it with
 * `nsenter --net=<namespace>` (only the network namespace changes: bpffs stays visible).
 * A namespace is found by its inode (findNetns in ./records: /run/netns, nsfs mounts, the
 * namespaces of running processes); the daemon prunes the records of vanished ones before
 * it opens its maps, so this rarely meets one.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { CTMAP_BIN } from '../config/paths';
import { CtmapError } from '../errors';
import type { DatapathReloader, SwappedMap } from '../maps/lifecycle';
import { findNetns, recordedNamespaces } from './records';

const run = promisify(execFile);


/**
 * How long the old programs may still be running on another CPU after their filter was
 * replaced: tc frees a replaced program after an RCU grace period, and a packet in flight
 * finishes within microseconds. Waiting this long before the delta copy reads the old maps
 * leaves a wide margin.
 */
const IN_FLIGHT_MS = 50;

export class AttachedDatapathReloader implements DatapathReloader {
  constructor(
    private readonly bpfRoot: string,
    private readonly log: Logger,
  ) {}

  /**
   * Reattaches every recorded datapath, namespace by namespace. Resolves once all have
   * been replaced. A namespace that no longer exists is skipped (its devices, filters and
   * programs went with it). Rejects when a reattach fails: the migration stays past its
   * commit point and the next start retries (lifecycle.ts).
   */
  async reload(maps: readonly SwappedMap[]): Promise<void> {
    const namespaces = recordedNamespaces(this.bpfRoot);
    if (namespaces.length === 0) return;
    const names = maps.map((m) => m.name);
    for (const inode of namespaces) {
      const nsPath = findNetns(inode);
      if (!nsPath) {
        this.log.warn({ netns: inode }, 'datapath reattach: network namespace is gone; its attachments went with it');
        continue;
      }
      try {
        const { stdout } = await run('nsenter', [`--net=${nsPath}`, '--', process.execPath, CTMAP_BIN, 'datapath', 'reattach', '--bpf-root', this.bpfRoot, '--json'], {
          maxBuffer: 16 << 20,
        });
        const results = JSON.parse(stdout) as Array<{ dev: string; hooks: Array<{ direction: string; progId: number }> }>;
        for (const r of results) {
          this.log.info({ netns: nsPath, dev: r.dev, progIds: r.hooks.map((h) => h.progId), maps: names }, 'datapath reattached over the migrated maps');
        }
      } catch (err) {
        const stderr = (err as { stderr?: string }).stderr?.trim();
        throw new CtmapError('internal', `datapath reattach in ${nsPath} failed: ${stderr || String(err)}`, { cause: err });
      }
    }
    await new Promise((resolve) => setTimeout(resolve, IN_FLIGHT_MS));
  }
}
